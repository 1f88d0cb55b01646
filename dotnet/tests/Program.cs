// Test entry point: `mono tests.exe [name-filter ...]`; the exit code is the number of failures.

using System;

namespace DeviceOperations.Sdxl.Tests
{
    public static class Program
    {
        public static int Main(string[] args)
        {
            var runner = new TestRunner();
            TransformerTests.Register(runner);
            ValidationTests.Register(runner);
            ResponseTests.Register(runner);
            AbiTests.Register(runner);
            EndToEndTests.Register(runner);
            int failures;
            try
            {
                failures = runner.Run(args);
            }
            finally
            {
                EndToEndTests.Cleanup();
            }
            return Math.Min(failures, 125);
        }
    }
}
