// A tiny named-test harness (no NUnit offline with mcs): tests register by name, run in
// order, print PASS/FAIL with timings; the last line is "N passed, N failed" and the exit
// code is the number of failures.

using System;
using System.Collections;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Linq;
using System.Threading.Tasks;

namespace DeviceOperations.Sdxl.Tests
{
    public sealed class TestFailure : Exception
    {
        public TestFailure(string message)
            : base(message)
        {
        }
    }

    public sealed class TestSkipped : Exception
    {
        public TestSkipped(string message)
            : base(message)
        {
        }
    }

    public sealed class TestRunner
    {
        private sealed class TestCase
        {
            public string Name;
            public Func<Task> Body;
        }

        private readonly List<TestCase> _tests = new List<TestCase>();

        public void Add(string name, Action body)
        {
            _tests.Add(new TestCase { Name = name, Body = () => { body(); return Task.FromResult(0); } });
        }

        public void AddAsync(string name, Func<Task> body)
        {
            _tests.Add(new TestCase { Name = name, Body = body });
        }

        /// <summary>Runs the tests whose names contain any filter (all when none), then
        /// cleanup (its failure counts as one), then prints the summary; returns failures.</summary>
        public int Run(string[] filters, Action cleanup)
        {
            var selected = _tests.Where(t => filters.Length == 0 || filters.Any(f => t.Name.Contains(f))).ToList();
            int passed = 0, failed = 0, skipped = 0;
            var failures = new List<string>();
            foreach (var test in selected)
            {
                var watch = Stopwatch.StartNew();
                try
                {
                    test.Body().GetAwaiter().GetResult();
                    passed++;
                    Console.WriteLine("PASS {0} ({1} ms)", test.Name, watch.ElapsedMilliseconds);
                }
                catch (TestSkipped ex)
                {
                    skipped++;
                    Console.WriteLine("SKIP {0}: {1}", test.Name, ex.Message);
                }
                catch (Exception ex)
                {
                    failed++;
                    var message = ex is TestFailure ? ex.Message : ex.ToString();
                    failures.Add(test.Name);
                    Console.WriteLine("FAIL {0} ({1} ms): {2}", test.Name, watch.ElapsedMilliseconds, message);
                }
            }
            try
            {
                cleanup();
            }
            catch (Exception ex)
            {
                failed++;
                failures.Add("cleanup");
                Console.WriteLine("FAIL cleanup: {0}", ex);
            }
            Console.WriteLine();
            foreach (var name in failures)
            {
                Console.WriteLine("  failed: " + name);
            }
            Console.WriteLine("{0} skipped, {1} selected of {2}", skipped, selected.Count, _tests.Count);
            // The last line, which CI reads.
            Console.WriteLine("{0} passed, {1} failed", passed, failed);
            return failed;
        }
    }

    public static class Assert
    {
        public static void True(bool condition, string message)
        {
            if (!condition)
            {
                throw new TestFailure(message);
            }
        }

        public static void Equal<T>(T expected, T actual, string what)
        {
            if (!EqualityComparer<T>.Default.Equals(expected, actual))
            {
                throw new TestFailure(what + ": expected " + Show(expected) + ", got " + Show(actual));
            }
        }

        public static void Near(double expected, double actual, double tolerance, string what)
        {
            if (Math.Abs(expected - actual) > tolerance)
            {
                throw new TestFailure(what + ": expected " + Show(expected) + " ± " + Show(tolerance) + ", got " + Show(actual));
            }
        }

        public static void SequenceEqual<T>(IEnumerable<T> expected, IEnumerable<T> actual, string what)
        {
            var e = expected == null ? null : expected.ToList();
            var a = actual == null ? null : actual.ToList();
            if (e == null || a == null ? e != a : !e.SequenceEqual(a))
            {
                throw new TestFailure(what + ": expected [" + Join(e) + "], got [" + Join(a) + "]");
            }
        }

        public static void Contains(string needle, string haystack, string what)
        {
            if (haystack == null || !haystack.Contains(needle))
            {
                throw new TestFailure(what + ": expected text containing " + Show(needle) + ", got " + Show(haystack));
            }
        }

        public static void Missing(IDictionary<string, object> obj, string key, string what)
        {
            if (obj != null && obj.ContainsKey(key))
            {
                throw new TestFailure(what + ": expected no '" + key + "' member, got " + Show(obj[key]));
            }
        }

        public static TException Throws<TException>(Action action, string what) where TException : Exception
        {
            try
            {
                action();
            }
            catch (TException ex)
            {
                return ex;
            }
            catch (Exception ex)
            {
                throw new TestFailure(what + ": expected " + typeof(TException).Name + ", got " + ex.GetType().Name + ": " + ex.Message);
            }
            throw new TestFailure(what + ": expected " + typeof(TException).Name + ", nothing was thrown");
        }

        public static string Show(object value)
        {
            if (value == null)
            {
                return "null";
            }
            if (value is string)
            {
                return "\"" + value + "\"";
            }
            if (value is double)
            {
                return ((double)value).ToString("R", CultureInfo.InvariantCulture);
            }
            var sequence = value as IEnumerable;
            if (sequence != null)
            {
                return "[" + string.Join(", ", sequence.Cast<object>().Select(Show)) + "]";
            }
            return Convert.ToString(value, CultureInfo.InvariantCulture);
        }

        private static string Join<T>(IEnumerable<T> items)
        {
            return items == null ? "null" : string.Join(", ", items.Select(i => Show(i)));
        }
    }
}
