// The hand-written JSON reader (dotnet/src/Json.cs) against RFC 8259: escapes, nesting,
// the number grammar, and what it must refuse.

using System;
using System.Collections.Generic;
using System.Linq;

namespace DeviceOperations.Sdxl.Tests
{
    internal static class JsonTests
    {
        private static object Member(string json, string name)
        {
            return Json.Get(Json.ParseObject(json), name);
        }

        public static void Register(TestRunner runner)
        {
            runner.Add("json_reader_decodes_unicode_escapes_and_surrogate_pairs", () =>
            {
                Assert.Equal("caf\u00e9", Member("{\"s\":\"caf\\u00e9\"}", "s"), "\\u00e9");
                Assert.Equal("caf\u00e9", Member("{\"s\":\"caf\\u00E9\"}", "s"), "upper-case hex");
                Assert.Equal("\U0001F600", Member("{\"s\":\"\\ud83d\\ude00\"}", "s"), "surrogate pair");
                Assert.Equal("\u65e5\u672c", Member("{\"s\":\"\u65e5\u672c\"}", "s"), "raw non-ASCII text");
                Assert.Equal("a\"b\\c/d\b\f\n\r\t\u0000", Member("{\"s\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u0000\"}", "s"), "every short escape");
                Assert.Equal("k\u00e9y", Json.ParseObject("{\"k\\u00e9y\":1}").Keys.Single(), "escaped member name");
                Assert.Throws<FormatException>(() => Json.Parse("\"\\u12\""), "short \\u escape");
                Assert.Throws<FormatException>(() => Json.Parse("\"\\u12g4\""), "non-hex \\u escape");
                Assert.Throws<FormatException>(() => Json.Parse("\"\\x41\""), "unknown escape");
                Assert.Throws<FormatException>(() => Json.Parse("\"a\nb\""), "raw control character");
                Assert.Throws<FormatException>(() => Json.Parse("\"abc"), "unterminated string");
            });

            runner.Add("json_reader_builds_nested_objects_and_arrays", () =>
            {
                var root = Json.ParseObject(" {\n \"a\" : [ 1 , [ 2 , [ ] ] , { \"b\" : { \"c\" : [ true , false , null ] } } ] , \"d\" : { } } ");
                var a = Json.GetArray(root, "a");
                Assert.Equal(3, a.Count, "a.length");
                Assert.Equal((object)1L, a[0], "a[0]");
                var inner = (List<object>)a[1];
                Assert.Equal((object)2L, inner[0], "a[1][0]");
                Assert.Equal(0, ((List<object>)inner[1]).Count, "a[1][1] is empty");
                var c = Json.GetArray(Json.GetObject((Dictionary<string, object>)a[2], "b"), "c");
                Assert.SequenceEqual(new object[] { true, false, null }, c, "a[2].b.c");
                Assert.Equal(0, Json.GetObject(root, "d").Count, "d is empty");

                var deep = new string('[', 200) + new string(']', 200);
                Assert.True(Json.Parse(deep) is List<object>, "200 levels parse");
                var tooDeep = new string('[', 300) + new string(']', 300);
                Assert.Contains("nested too deeply", Assert.Throws<FormatException>(() => Json.Parse(tooDeep), "300 levels").Message, "depth error");
                Assert.Throws<FormatException>(() => Json.Parse("[1,]"), "trailing comma in an array");
                Assert.Throws<FormatException>(() => Json.Parse("[1 2]"), "missing comma");
                Assert.Throws<FormatException>(() => Json.Parse("{\"a\" 1}"), "missing colon");
                Assert.Throws<FormatException>(() => Json.Parse("{a:1}"), "unquoted name");
                Assert.Throws<FormatException>(() => Json.Parse("[1"), "unterminated array");
                Assert.Throws<FormatException>(() => Json.Parse(""), "empty input");
                Assert.Throws<FormatException>(() => Json.ParseObject("[]"), "ParseObject of an array");
            });

            runner.Add("json_reader_numbers_follow_the_rfc_grammar_including_exponents", () =>
            {
                var cases = new[]
                {
                    new object[] { "0", 0L },
                    new object[] { "-0", 0L },
                    new object[] { "42", 42L },
                    new object[] { "-17", -17L },
                    new object[] { "9223372036854775807", long.MaxValue },
                    new object[] { "-9223372036854775808", long.MinValue },
                    new object[] { "18446744073709551615", ulong.MaxValue },
                    new object[] { "18446744073709551616", 18446744073709551616.0 },
                    new object[] { "1.5", 1.5 },
                    new object[] { "-0.25", -0.25 },
                    new object[] { "1e3", 1000.0 },
                    new object[] { "1E3", 1000.0 },
                    new object[] { "2.5e+2", 250.0 },
                    new object[] { "-2.5E-3", -0.0025 },
                    new object[] { "0e0", 0.0 },
                    new object[] { "6.02214076e23", 6.02214076e23 },
                    new object[] { "1e-400", 0.0 },
                };
                foreach (var c in cases)
                {
                    var text = (string)c[0];
                    var value = Json.Parse(text);
                    Assert.Equal(c[1].GetType(), value == null ? null : value.GetType(), "type of " + text);
                    Assert.Equal(c[1], value, "value of " + text);
                    Assert.Equal(c[1], Json.Get(Json.ParseObject("{\"n\":" + text + "}"), "n"), "value of " + text + " as a member");
                }
                Assert.Equal(1000L, Json.GetLong(Json.ParseObject("{\"n\":1e3}"), "n").Value, "GetLong of 1e3");
                Assert.Equal(7.0, Json.GetDouble(Json.ParseObject("{\"n\":7}"), "n").Value, "GetDouble of 7");

                foreach (var bad in new[] { "01", "-01", "1.", ".5", "+1", "-", "1e", "1e+", "1.e3", "--1", "1-2", "0x10", "1.2.3", "NaN", "Infinity", "1e400", "-1e400" })
                {
                    Assert.Throws<FormatException>(() => Json.Parse(bad), "'" + bad + "' must be refused");
                }
            });

            runner.Add("json_writer_output_reads_back_unchanged", () =>
            {
                var value = new JsonObject()
                    .Add("text", "\u0001\u001f\"\\/\u2028\u2029\U0001F600 caf\u00e9")
                    .Add("numbers", new object[] { 0, -1, long.MaxValue, 0.1, 1e300, -2.5e-8, float.MaxValue })
                    .Add("nested", new JsonObject().Add("empty", new object[0]).Add("flag", false).Add("omitted", null))
                    .Add("map", new Dictionary<string, object> { { "k", new List<object> { "v", 1L } } });
                var json = value.ToString();
                var back = Json.ParseObject(json);
                Assert.Equal((string)value["text"], Json.GetString(back, "text"), "text (" + json + ")");
                var numbers = Json.GetArray(back, "numbers");
                Assert.SequenceEqual(new object[] { 0L, -1L, long.MaxValue, 0.1, 1e300, -2.5e-8, (double)float.MaxValue }, numbers, "numbers (" + json + ")");
                Assert.Missing(Json.GetObject(back, "nested"), "omitted", "null members are omitted");
                Assert.Equal(false, Json.GetBool(Json.GetObject(back, "nested"), "flag", true), "flag");
                Assert.SequenceEqual(new object[] { "v", 1L }, Json.GetArray(Json.GetObject(back, "map"), "k"), "dictionary member");
            });

            runner.Add("json_writer_refuses_nan_and_infinity_instead_of_writing_null", () =>
            {
                // null would mean "use the default" to the engine (guidance 7.5, no memory budget).
                foreach (var number in new object[] { double.NaN, double.PositiveInfinity, double.NegativeInfinity, float.NaN, float.PositiveInfinity })
                {
                    Assert.Throws<ArgumentException>(() => Json.Write(number), Assert.Show(number) + " alone");
                    Assert.Throws<ArgumentException>(() => new JsonObject().Add("guidance_scale", number).ToString(), Assert.Show(number) + " as a member");
                }
                Assert.Equal("{\"g\":7.5}", new JsonObject().Add("g", 7.5).ToString(), "a finite number");

                // The engine config too: refused before sdxl_create, with the field, instead of "no budget".
                var ex = Assert.Throws<SdxlException>(() => SdxlEngine.Create(new SdxlEngineConfig { Device = "cpu", MaxMemoryGb = double.NaN }), "MaxMemoryGb = NaN");
                Assert.Equal(SdxlErrorCode.Validation, ex.Code, "code (" + ex.Message + ")");
                Assert.SequenceEqual(new[] { "max_memory_gb" }, ex.FieldErrors.Select(e => e.Field), "fields");
                ex = Assert.Throws<SdxlException>(() => SdxlEngine.Create(new SdxlEngineConfig { Limits = new SdxlLimits { MaxGuidance = double.PositiveInfinity } }), "MaxGuidance = infinity");
                Assert.SequenceEqual(new[] { "limits.max_guidance" }, ex.FieldErrors.Select(e => e.Field), "limit fields");
            });

            runner.Add("models_dir_only_reaches_the_engine_config_and_needs_a_models_dir", () =>
            {
                var json = Json.ParseObject(new SdxlEngineConfig { ModelsDir = "/models", ModelsDirOnly = true }.ToJson());
                Assert.Equal(true, Json.GetBool(json, "models_dir_only", false), "models_dir_only in " + Assert.Show(json.Keys));
                Assert.Missing(Json.ParseObject(new SdxlEngineConfig().ToJson()), "models_dir_only", "unset: the engine's default");
                var ex = Assert.Throws<SdxlException>(() => SdxlEngine.Create(new SdxlEngineConfig { Device = "cpu", ModelsDirOnly = true }), "ModelsDirOnly without ModelsDir");
                Assert.Equal(SdxlErrorCode.Validation, ex.Code, "code (" + ex.Message + ")");
                Assert.True(ex.Message.Contains("models_dir_only"), "the message names the field: " + ex.Message);
            });

            runner.Add("json_reader_accessors_refuse_numbers_they_would_narrow", () =>
            {
                Func<string, Dictionary<string, object>> obj = n => Json.ParseObject("{\"n\":" + n + "}");
                Assert.Throws<FormatException>(() => Json.GetInt(obj("4294967297"), "n"), "4294967297 as an int (was 1)");
                Assert.Throws<FormatException>(() => Json.GetInt(obj("2147483648"), "n"), "2^31 as an int");
                Assert.Throws<FormatException>(() => Json.GetInt(obj("1.9"), "n"), "1.9 as an int (was 1)");
                Assert.Throws<FormatException>(() => Json.GetLong(obj("1.9"), "n"), "1.9 as a long (was 1)");
                Assert.Throws<FormatException>(() => Json.GetLong(obj("-0.5"), "n"), "-0.5 as a long");
                Assert.Throws<FormatException>(() => Json.GetLong(obj("9223372036854775808"), "n"), "2^63 (a ulong) as a long");
                Assert.Throws<FormatException>(() => Json.GetLong(obj("9.223372036854775808e18"), "n"), "2^63 as a double (was long.MinValue)");
                Assert.Throws<FormatException>(() => Json.GetLong(obj("-1e19"), "n"), "-1e19 as a long");
                Assert.Throws<FormatException>(() => Json.GetLong(obj("18446744073709551616"), "n"), "2^64 as a long");
                var message = Assert.Throws<FormatException>(() => Json.GetInt(obj("4294967297"), "n"), "message").Message;
                Assert.Contains("'n'", message, "the message names the member");
                Assert.Contains("4294967297", message, "the message shows the number");

                Assert.Equal(long.MinValue, Json.GetLong(obj("-9223372036854775808"), "n").Value, "long.MinValue");
                Assert.Equal(long.MinValue, Json.GetLong(obj("-9.223372036854775808e18"), "n").Value, "-2^63 as a double is exact");
                Assert.Equal(long.MaxValue, Json.GetLong(obj("9223372036854775807"), "n").Value, "long.MaxValue");
                Assert.Equal(int.MaxValue, Json.GetInt(obj("2147483647"), "n").Value, "int.MaxValue");
                Assert.Equal(int.MinValue, Json.GetInt(obj("-2147483648"), "n").Value, "int.MinValue");
                Assert.Equal(1000, Json.GetInt(obj("1e3"), "n").Value, "1e3 is an integer");
                Assert.Equal(null, Json.GetLong(obj("\"12\""), "n"), "a string is not a number (fallback)");
                Assert.Equal(null, Json.GetInt(obj("null"), "n"), "null (fallback)");
                Assert.Equal(null, Json.GetInt(Json.ParseObject("{}"), "n"), "missing (fallback)");

                // Through the response handler: an error, not a wrapped width.
                var handler = new EnhancedResponseHandler();
                foreach (var bad in new[] { "\"width\":4294967297", "\"width\":1.9", "\"seed\":9223372036854775808" })
                {
                    var good = bad.StartsWith("\"width\"") ? "\"width\":1024" : "\"seed\":42";
                    var json = ResponseTests.SuccessJson.Replace(good, bad);
                    Assert.True(json != ResponseTests.SuccessJson, "the fixture has " + good);
                    var response = handler.HandleEnhancedResponse(json, "r-1");
                    Assert.Equal(false, response.Success, "Success with " + bad);
                    Assert.Equal("INVALID_JSON", response.ErrorCode, "ErrorCode with " + bad + " (" + response.Error + ")");
                    Assert.Contains(bad.Substring(bad.IndexOf(':') + 1), response.Error, "the error shows the number");
                    Assert.Equal(0, response.Images.Count, "no images with a wrapped value");
                }
                var wrongCode = handler.HandleEnhancedResponse(ResponseTests.ValidationJson.Replace("\"error_number\":-3", "\"error_number\":4294967293"), "r-2");
                Assert.Equal("INVALID_JSON", wrongCode.ErrorCode, "an error_number past int (was -3)");
            });

            runner.Add("json_reader_nesting_limit_is_the_readmes_256_levels", () =>
            {
                var readme = System.IO.File.ReadAllText(System.IO.Path.Combine(System.IO.Path.Combine(AbiTests.RepoRoot(), "dotnet"), "README.md"));
                Assert.Contains("nesting depth \u2264 256", readme, "dotnet/README.md states the limit");
                Assert.True(Json.Parse(new string('[', 256) + new string(']', 256)) is List<object>, "256 nested arrays parse");
                Assert.Contains("nested too deeply", Assert.Throws<FormatException>(() => Json.Parse(new string('[', 257) + new string(']', 257)), "257 nested arrays").Message, "depth error");
                var objects = new System.Text.StringBuilder();
                for (var i = 0; i < 256; i++)
                {
                    objects.Append("{\"a\":");
                }
                objects.Append("[1]");
                var closing = new string('}', 256);
                Assert.Contains("nested too deeply", Assert.Throws<FormatException>(() => Json.Parse(objects + closing), "256 objects around an array").Message, "257 levels of objects and arrays");
                var deepest = objects.ToString().Replace("[1]", "1");
                Assert.True(Json.Parse(deepest + closing) is Dictionary<string, object>, "256 nested objects around a number parse");
            });
        }
    }
}
