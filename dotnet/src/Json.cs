// A small JSON writer and reader, so the library needs nothing beyond the base class
// library (no Newtonsoft, no System.Text.Json on netstandard2.0/Mono). Why not
// DataContractJsonSerializer: see dotnet/README.md ("JSON").
// Writer: ordered objects (JsonObject), null members omitted unless asked for; NaN and
// infinity are refused (ArgumentException), never written as null.
// Reader (RFC 8259, strict): objects become Dictionary<string, object>, arrays List<object>,
// numbers long (ulong past long.MaxValue) or double, plus string, bool and null.

using System;
using System.Collections;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace DeviceOperations.Sdxl
{
    /// <summary>An ordered JSON object under construction.</summary>
    internal sealed class JsonObject : IEnumerable<KeyValuePair<string, object>>
    {
        private readonly List<KeyValuePair<string, object>> _members = new List<KeyValuePair<string, object>>();

        /// <summary>Adds a member; a null value is omitted (the Rust side treats absent and
        /// null alike, but absent keeps the wire format minimal).</summary>
        public JsonObject Add(string name, object value)
        {
            if (value != null)
            {
                _members.Add(new KeyValuePair<string, object>(name, value));
            }
            return this;
        }

        public object this[string name]
        {
            get
            {
                foreach (var member in _members)
                {
                    if (member.Key == name)
                    {
                        return member.Value;
                    }
                }
                return null;
            }
        }

        public IEnumerator<KeyValuePair<string, object>> GetEnumerator()
        {
            return _members.GetEnumerator();
        }

        IEnumerator IEnumerable.GetEnumerator()
        {
            return GetEnumerator();
        }

        public override string ToString()
        {
            return Json.Write(this);
        }
    }

    internal static class Json
    {
        public static string Write(object value)
        {
            var builder = new StringBuilder();
            WriteValue(builder, value);
            return builder.ToString();
        }

        private static void WriteValue(StringBuilder builder, object value)
        {
            if (value == null)
            {
                builder.Append("null");
                return;
            }
            var text = value as string;
            if (text != null)
            {
                WriteString(builder, text);
                return;
            }
            if (value is bool)
            {
                builder.Append((bool)value ? "true" : "false");
                return;
            }
            if (value is double || value is float)
            {
                var number = Convert.ToDouble(value, CultureInfo.InvariantCulture);
                if (double.IsNaN(number) || double.IsInfinity(number))
                {
                    // JSON has no NaN or infinity, and writing null would let the engine
                    // silently use its default: callers validate numbers before writing.
                    throw new ArgumentException("JSON has no " + number.ToString(CultureInfo.InvariantCulture) + " (a number must be finite)");
                }
                builder.Append(number.ToString("R", CultureInfo.InvariantCulture));
                return;
            }
            if (value is int || value is long || value is uint || value is ulong || value is short || value is ushort || value is byte || value is sbyte || value is decimal)
            {
                builder.Append(Convert.ToString(value, CultureInfo.InvariantCulture));
                return;
            }
            var obj = value as JsonObject;
            if (obj != null)
            {
                WriteMembers(builder, obj);
                return;
            }
            var dictionary = value as IDictionary<string, object>;
            if (dictionary != null)
            {
                WriteMembers(builder, dictionary);
                return;
            }
            var sequence = value as IEnumerable;
            if (sequence != null)
            {
                builder.Append('[');
                var first = true;
                foreach (var item in sequence)
                {
                    if (!first)
                    {
                        builder.Append(',');
                    }
                    first = false;
                    WriteValue(builder, item);
                }
                builder.Append(']');
                return;
            }
            throw new ArgumentException("cannot write a " + value.GetType().FullName + " as JSON");
        }

        private static void WriteMembers(StringBuilder builder, IEnumerable<KeyValuePair<string, object>> members)
        {
            builder.Append('{');
            var first = true;
            foreach (var member in members)
            {
                if (!first)
                {
                    builder.Append(',');
                }
                first = false;
                WriteString(builder, member.Key);
                builder.Append(':');
                WriteValue(builder, member.Value);
            }
            builder.Append('}');
        }

        /// <summary>RFC 8259 string escaping: quote, backslash and every control character.</summary>
        public static void WriteString(StringBuilder builder, string text)
        {
            builder.Append('"');
            foreach (var c in text)
            {
                switch (c)
                {
                    case '"': builder.Append("\\\""); break;
                    case '\\': builder.Append("\\\\"); break;
                    case '\n': builder.Append("\\n"); break;
                    case '\r': builder.Append("\\r"); break;
                    case '\t': builder.Append("\\t"); break;
                    case '\b': builder.Append("\\b"); break;
                    case '\f': builder.Append("\\f"); break;
                    default:
                        // Also escape U+2028/2029 so the text stays valid in JavaScript hosts.
                        if (c < 0x20 || c == '\u2028' || c == '\u2029')
                        {
                            builder.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                        }
                        else
                        {
                            builder.Append(c);
                        }
                        break;
                }
            }
            builder.Append('"');
        }

        /// <summary>Parses one JSON value; throws FormatException with the offset on bad input.</summary>
        public static object Parse(string text)
        {
            if (text == null)
            {
                throw new ArgumentNullException("text");
            }
            var reader = new Reader(text);
            reader.SkipWhitespace();
            var value = reader.ReadValue(0);
            reader.SkipWhitespace();
            if (!reader.AtEnd)
            {
                throw reader.Error("unexpected text after the JSON value");
            }
            return value;
        }

        public static Dictionary<string, object> ParseObject(string text)
        {
            var value = Parse(text) as Dictionary<string, object>;
            if (value == null)
            {
                throw new FormatException("expected a JSON object");
            }
            return value;
        }

        // Typed accessors for parsed objects: a missing, null or non-numeric member gives the
        // fallback; a number the requested type cannot hold exactly (1.9 as an integer,
        // 4294967297 as an int, 2^63 as a long) throws FormatException instead of wrapping.

        public static object Get(IDictionary<string, object> obj, string name)
        {
            object value;
            return obj != null && obj.TryGetValue(name, out value) ? value : null;
        }

        public static string GetString(IDictionary<string, object> obj, string name)
        {
            return Get(obj, name) as string;
        }

        public static bool GetBool(IDictionary<string, object> obj, string name, bool fallback)
        {
            var value = Get(obj, name);
            return value is bool ? (bool)value : fallback;
        }

        public static double? GetDouble(IDictionary<string, object> obj, string name)
        {
            var value = Get(obj, name);
            if (value is long)
            {
                return (long)value;
            }
            if (value is double)
            {
                return (double)value;
            }
            if (value is ulong)
            {
                return (ulong)value;
            }
            return null;
        }

        public static long? GetLong(IDictionary<string, object> obj, string name)
        {
            var value = Get(obj, name);
            if (value is long)
            {
                return (long)value;
            }
            if (value is ulong)
            {
                var large = (ulong)value;
                if (large > long.MaxValue)
                {
                    throw NotRepresentable(name, value, "a 64-bit integer");
                }
                return (long)large;
            }
            if (value is double)
            {
                // [-2^63, 2^63): (double)long.MaxValue is 2^63 itself, which a cast wraps to long.MinValue.
                var number = (double)value;
                if (Math.Floor(number) != number || number < -9223372036854775808.0 || number >= 9223372036854775808.0)
                {
                    throw NotRepresentable(name, value, "a 64-bit integer");
                }
                return (long)number;
            }
            return null;
        }

        public static int? GetInt(IDictionary<string, object> obj, string name)
        {
            var value = GetLong(obj, name);
            if (!value.HasValue)
            {
                return null;
            }
            if (value.Value < int.MinValue || value.Value > int.MaxValue)
            {
                throw NotRepresentable(name, Get(obj, name), "a 32-bit integer");
            }
            return (int)value.Value;
        }

        private static FormatException NotRepresentable(string name, object value, string what)
        {
            var text = value is double
                ? ((double)value).ToString("R", CultureInfo.InvariantCulture)
                : Convert.ToString(value, CultureInfo.InvariantCulture);
            return new FormatException("member '" + name + "': " + text + " is not " + what);
        }

        public static Dictionary<string, object> GetObject(IDictionary<string, object> obj, string name)
        {
            return Get(obj, name) as Dictionary<string, object>;
        }

        public static List<object> GetArray(IDictionary<string, object> obj, string name)
        {
            return Get(obj, name) as List<object>;
        }

        private sealed class Reader
        {
            /// <summary>At most this many nested objects/arrays (dotnet/README.md, "JSON").</summary>
            private const int MaxDepth = 256;
            private readonly string _text;
            private int _position;

            public Reader(string text)
            {
                _text = text;
            }

            public bool AtEnd
            {
                get { return _position >= _text.Length; }
            }

            public FormatException Error(string message)
            {
                return new FormatException("invalid JSON at offset " + _position.ToString(CultureInfo.InvariantCulture) + ": " + message);
            }

            public void SkipWhitespace()
            {
                while (_position < _text.Length)
                {
                    var c = _text[_position];
                    if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
                    {
                        break;
                    }
                    _position++;
                }
            }

            /// <summary>depth: how many objects/arrays enclose this value.</summary>
            public object ReadValue(int depth)
            {
                if (AtEnd)
                {
                    throw Error("unexpected end of input");
                }
                var c = _text[_position];
                switch (c)
                {
                    case '{': return ReadObject(depth);
                    case '[': return ReadArray(depth);
                    case '"': return ReadString();
                    case 't': ExpectWord("true"); return true;
                    case 'f': ExpectWord("false"); return false;
                    case 'n': ExpectWord("null"); return null;
                    default:
                        if (c == '-' || (c >= '0' && c <= '9'))
                        {
                            return ReadNumber();
                        }
                        throw Error("unexpected character '" + c + "'");
                }
            }

            /// <summary>An object or array enclosed by depth others is level depth + 1.</summary>
            private void CheckDepth(int depth)
            {
                if (depth >= MaxDepth)
                {
                    throw Error("nested too deeply (more than " + MaxDepth.ToString(CultureInfo.InvariantCulture) + " levels)");
                }
            }

            private void ExpectWord(string word)
            {
                if (string.CompareOrdinal(_text, _position, word, 0, word.Length) != 0)
                {
                    throw Error("expected " + word);
                }
                _position += word.Length;
            }

            private void Expect(char c)
            {
                if (AtEnd || _text[_position] != c)
                {
                    throw Error("expected '" + c + "'");
                }
                _position++;
            }

            private Dictionary<string, object> ReadObject(int depth)
            {
                var result = new Dictionary<string, object>(StringComparer.Ordinal);
                CheckDepth(depth);
                Expect('{');
                SkipWhitespace();
                if (!AtEnd && _text[_position] == '}')
                {
                    _position++;
                    return result;
                }
                while (true)
                {
                    SkipWhitespace();
                    if (AtEnd || _text[_position] != '"')
                    {
                        throw Error("expected a member name");
                    }
                    var name = ReadString();
                    SkipWhitespace();
                    Expect(':');
                    SkipWhitespace();
                    result[name] = ReadValue(depth + 1);
                    SkipWhitespace();
                    if (AtEnd)
                    {
                        throw Error("unterminated object");
                    }
                    if (_text[_position] == ',')
                    {
                        _position++;
                        continue;
                    }
                    Expect('}');
                    return result;
                }
            }

            private List<object> ReadArray(int depth)
            {
                var result = new List<object>();
                CheckDepth(depth);
                Expect('[');
                SkipWhitespace();
                if (!AtEnd && _text[_position] == ']')
                {
                    _position++;
                    return result;
                }
                while (true)
                {
                    SkipWhitespace();
                    result.Add(ReadValue(depth + 1));
                    SkipWhitespace();
                    if (AtEnd)
                    {
                        throw Error("unterminated array");
                    }
                    if (_text[_position] == ',')
                    {
                        _position++;
                        continue;
                    }
                    Expect(']');
                    return result;
                }
            }

            private string ReadString()
            {
                Expect('"');
                var builder = new StringBuilder();
                while (true)
                {
                    if (AtEnd)
                    {
                        throw Error("unterminated string");
                    }
                    var c = _text[_position++];
                    if (c == '"')
                    {
                        return builder.ToString();
                    }
                    if (c != '\\')
                    {
                        if (c < 0x20)
                        {
                            throw Error("control character in string");
                        }
                        builder.Append(c);
                        continue;
                    }
                    if (AtEnd)
                    {
                        throw Error("unterminated escape");
                    }
                    var escape = _text[_position++];
                    switch (escape)
                    {
                        case '"': builder.Append('"'); break;
                        case '\\': builder.Append('\\'); break;
                        case '/': builder.Append('/'); break;
                        case 'b': builder.Append('\b'); break;
                        case 'f': builder.Append('\f'); break;
                        case 'n': builder.Append('\n'); break;
                        case 'r': builder.Append('\r'); break;
                        case 't': builder.Append('\t'); break;
                        case 'u':
                            if (_position + 4 > _text.Length)
                            {
                                throw Error("short \\u escape");
                            }
                            int code;
                            if (!int.TryParse(_text.Substring(_position, 4), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out code))
                            {
                                throw Error("bad \\u escape");
                            }
                            builder.Append((char)code);
                            _position += 4;
                            break;
                        default:
                            throw Error("unknown escape '\\" + escape + "'");
                    }
                }
            }

            /// <summary>RFC 8259's grammar exactly: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?.
            /// Integers become long (ulong above long.MaxValue), the rest double; a number
            /// beyond double's range is an error (runtimes differ on parsing it as infinity).</summary>
            private object ReadNumber()
            {
                var start = _position;
                var isInteger = true;
                if (Peek() == '-')
                {
                    _position++;
                }
                if (Peek() == '0')
                {
                    _position++;
                    if (IsDigit(Peek()))
                    {
                        throw Error("leading zero in a number");
                    }
                }
                else if (!ReadDigits())
                {
                    throw Error("expected a digit");
                }
                if (Peek() == '.')
                {
                    isInteger = false;
                    _position++;
                    if (!ReadDigits())
                    {
                        throw Error("expected a digit after the decimal point");
                    }
                }
                if (Peek() == 'e' || Peek() == 'E')
                {
                    isInteger = false;
                    _position++;
                    if (Peek() == '+' || Peek() == '-')
                    {
                        _position++;
                    }
                    if (!ReadDigits())
                    {
                        throw Error("expected a digit in the exponent");
                    }
                }
                var token = _text.Substring(start, _position - start);
                if (isInteger)
                {
                    long integer;
                    if (long.TryParse(token, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out integer))
                    {
                        return integer;
                    }
                    ulong large;
                    if (ulong.TryParse(token, NumberStyles.None, CultureInfo.InvariantCulture, out large))
                    {
                        return large;
                    }
                }
                double number;
                if (double.TryParse(token, NumberStyles.Float, CultureInfo.InvariantCulture, out number) && !double.IsInfinity(number))
                {
                    return number;
                }
                _position = start;
                throw Error("number out of range '" + token + "'");
            }

            private char Peek()
            {
                return _position < _text.Length ? _text[_position] : '\0';
            }

            private static bool IsDigit(char c)
            {
                return c >= '0' && c <= '9';
            }

            /// <summary>Consumes [0-9]*; false when there was none.</summary>
            private bool ReadDigits()
            {
                var start = _position;
                while (IsDigit(Peek()))
                {
                    _position++;
                }
                return _position > start;
            }
        }
    }
}
