// Test entry point: `mono tests.exe [name-filter ...]`. The last line printed is
// "N passed, N failed"; the exit code is the number of failures (capped at 125).
// `tests.exe --probe-native` is the child process of the native-library tests.

using System;

namespace DeviceOperations.Sdxl.Tests
{
    public static class Program
    {
        public static int Main(string[] args)
        {
            if (args.Length == 1 && args[0] == NativeLibraryTests.ProbeArgument)
            {
                return NativeLibraryTests.ProbeChild();
            }
            var runner = new TestRunner();
            TransformerTests.Register(runner);
            ValidationTests.Register(runner);
            ResponseTests.Register(runner);
            JsonTests.Register(runner);
            AbiTests.Register(runner);
            NativeLibraryTests.Register(runner);
            PackagingTests.Register(runner);
            EndToEndTests.Register(runner);
            CancellationTests.Register(runner);
            ReliabilityTests.Register(runner);
            var failures = runner.Run(args, EndToEndTests.Cleanup);
            return Math.Min(failures, 125);
        }
    }
}
