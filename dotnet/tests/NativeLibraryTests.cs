// Finding libsdxl (bindings/csharp/SdxlNativeLibrary.cs): the search order, the error that
// lists every path tried, and, in child processes (a process binds "sdxl" once), the
// override, the runtimes/<rid>/native layout and the default search end to end.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Reflection;
using System.Runtime.InteropServices;
using DeviceOperations.Sdxl.Native;

namespace DeviceOperations.Sdxl.Tests
{
    internal static class NativeLibraryTests
    {
        public const string ProbeArgument = "--probe-native";

        /// <summary>The child's side: load libsdxl the way the library does, say what happened.</summary>
        public static int ProbeChild()
        {
            try
            {
                var version = SdxlEngine.NativeVersion;
                Console.WriteLine("loaded " + version + " from " + (SdxlNativeLibrary.LoadedPath ?? "<default search>") + " via " + SdxlNativeLibrary.Binding);
                return 0;
            }
            catch (SdxlException ex)
            {
                Console.WriteLine("error: " + ex.Message);
                return 3;
            }
        }

        /// <summary>The library under test: SDXL_NATIVE_LIBRARY (a file or its folder, as
        /// tools/dotnet_test.sh sets it), else the debug build.</summary>
        internal static string BuiltLibrary()
        {
            var path = Environment.GetEnvironmentVariable(SdxlNativeLibrary.PathVariable);
            if (string.IsNullOrEmpty(path))
            {
                path = Path.Combine(Path.Combine(Path.Combine(AbiTests.RepoRoot(), "target"), "debug"), SdxlNativeLibrary.FileName);
            }
            else if (Directory.Exists(path))
            {
                path = Path.Combine(path, SdxlNativeLibrary.FileName);
            }
            if (!File.Exists(path))
            {
                throw new TestSkipped(path + " not built");
            }
            return path;
        }

        private static string NewTempDirectory(string tag)
        {
            var dir = Path.Combine(Path.GetTempPath(), "sdxl-" + tag + "-" + Guid.NewGuid().ToString("N").Substring(0, 8));
            Directory.CreateDirectory(dir);
            return dir;
        }

        /// <summary>Runs this test program in ProbeArgument mode from appDirectory (default: where
        /// it is) with SDXL_NATIVE_LIBRARY and LD_LIBRARY_PATH as given (null: unset).</summary>
        private static KeyValuePair<int, string> RunChild(string appDirectory, string nativeLibrary, string ldLibraryPath)
        {
            if (Environment.GetEnvironmentVariable("SDXL_SKIP_E2E") == "1")
            {
                throw new TestSkipped("SDXL_SKIP_E2E=1");
            }
            var entry = Assembly.GetEntryAssembly().Location;
            var directory = appDirectory ?? Path.GetDirectoryName(entry);
            var host = Process.GetCurrentProcess().MainModule.FileName;
            var hostName = Path.GetFileNameWithoutExtension(host).ToLowerInvariant();
            var start = new ProcessStartInfo
            {
                UseShellExecute = false,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                WorkingDirectory = directory,
            };
            if (hostName.StartsWith("mono") || hostName == "dotnet")
            {
                start.FileName = host;
                start.Arguments = "\"" + Path.Combine(directory, Path.GetFileName(entry)) + "\" " + ProbeArgument;
            }
            else
            {
                // An apphost: the copy in appDirectory.
                start.FileName = Path.Combine(directory, Path.GetFileName(host));
                start.Arguments = ProbeArgument;
            }
            start.EnvironmentVariables.Remove(SdxlNativeLibrary.PathVariable);
            start.EnvironmentVariables.Remove("LD_LIBRARY_PATH");
            if (nativeLibrary != null)
            {
                start.EnvironmentVariables[SdxlNativeLibrary.PathVariable] = nativeLibrary;
            }
            if (ldLibraryPath != null)
            {
                start.EnvironmentVariables["LD_LIBRARY_PATH"] = ldLibraryPath;
            }
            using (var process = Process.Start(start))
            {
                var stderr = process.StandardError.ReadToEndAsync();
                var stdout = process.StandardOutput.ReadToEnd();
                if (!process.WaitForExit(120000))
                {
                    process.Kill();
                    throw new TestFailure("the probe child did not exit: " + stdout);
                }
                return new KeyValuePair<int, string>(process.ExitCode, stdout + stderr.Result);
            }
        }

        /// <summary>A copy of the test program (assemblies only, no libsdxl) in a new folder.</summary>
        private static string CopyOfTheApplication()
        {
            var source = Path.GetDirectoryName(Assembly.GetEntryAssembly().Location);
            var target = NewTempDirectory("app");
            foreach (var file in Directory.GetFiles(source))
            {
                var name = Path.GetFileName(file);
                if (!name.StartsWith("libsdxl", StringComparison.Ordinal) && !name.StartsWith("sdxl.", StringComparison.Ordinal))
                {
                    File.Copy(file, Path.Combine(target, name));
                }
            }
            return target;
        }

        /// <summary>A symlink (the debug library is hundreds of MB), or a copy where ln fails.</summary>
        private static void LinkOrCopy(string source, string target)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(target));
            try
            {
                using (var ln = Process.Start(new ProcessStartInfo("ln", "-s \"" + source + "\" \"" + target + "\"") { UseShellExecute = false }))
                {
                    ln.WaitForExit();
                    if (ln.ExitCode == 0)
                    {
                        return;
                    }
                }
            }
            catch (System.ComponentModel.Win32Exception)
            {
                // No ln on this system.
            }
            File.Copy(source, target);
        }

        public static void Register(TestRunner runner)
        {
            runner.Add("native_library_search_order_is_runtimes_then_the_folder_itself", () =>
            {
                var rid = SdxlNativeLibrary.RuntimeIdentifier;
                var file = SdxlNativeLibrary.FileName;
                if (RuntimeInformation.IsOSPlatform(OSPlatform.Linux) && RuntimeInformation.ProcessArchitecture == Architecture.X64)
                {
                    Assert.Equal("linux-x64", rid, "RID");
                    Assert.Equal("libsdxl.so", file, "file name");
                }
                var a = Path.Combine(Path.GetTempPath(), "a");
                var b = Path.Combine(Path.GetTempPath(), "b");
                Func<string, string> runtimes = d => Path.Combine(Path.Combine(Path.Combine(Path.Combine(d, "runtimes"), rid), "native"), file);
                Assert.SequenceEqual(new[] { runtimes(a), runtimes(b), Path.Combine(a, file), Path.Combine(b, file) },
                    SdxlNativeLibrary.CandidatePaths(null, new[] { a, b }), "candidates without an override");
                Assert.SequenceEqual(new[] { "/opt/sdxl/libsdxl-cuda.so" },
                    SdxlNativeLibrary.CandidatePaths("/opt/sdxl/libsdxl-cuda.so", new[] { a, b }), "an override is the only candidate");
                var folder = NewTempDirectory("override");
                try
                {
                    Assert.SequenceEqual(new[] { Path.Combine(folder, file) }, SdxlNativeLibrary.CandidatePaths(folder, new[] { a }), "an override naming a folder");
                }
                finally
                {
                    Directory.Delete(folder, true);
                }
                var assemblyDirectory = Path.GetDirectoryName(typeof(SdxlNativeLibrary).Assembly.Location);
                Assert.Equal(Path.GetFullPath(assemblyDirectory), SdxlNativeLibrary.SearchDirectories().First(), "the library's own folder is searched first");
            });

            runner.Add("native_library_bogus_override_fails_listing_the_path_tried", () =>
            {
                var bogus = Path.Combine(Path.Combine(Path.GetTempPath(), "no-such-sdxl-dir"), "libsdxl.so");
                var ex = Assert.Throws<DllNotFoundException>(() => SdxlNativeLibrary.Probe(bogus, new[] { Path.GetTempPath() }), "bogus override");
                Assert.Contains(SdxlNativeLibrary.PathVariable + "=" + bogus + ": no such file", ex.Message, "the override and why it failed");
                Assert.Contains("no other location was tried", ex.Message, "an override does not fall back");

                // A file that exists but is not a library: the loader's own reason is kept.
                var folder = NewTempDirectory("notalib");
                try
                {
                    var fake = Path.Combine(folder, "libsdxl.so");
                    File.WriteAllText(fake, "not an ELF file");
                    ex = Assert.Throws<DllNotFoundException>(() => SdxlNativeLibrary.Probe(fake, new string[0]), "a text file as the override");
                    Assert.Contains(SdxlNativeLibrary.PathVariable + "=" + fake + ": ", ex.Message, "the path tried");
                    Assert.True(!ex.Message.Contains(": no such file") && !ex.Message.Contains(": loaded"), "the loader's error is reported: " + ex.Message);
                }
                finally
                {
                    Directory.Delete(folder, true);
                }
            });

            runner.Add("native_library_probe_reports_every_location_when_nothing_is_there", () =>
            {
                var empty = NewTempDirectory("empty");
                try
                {
                    var probe = SdxlNativeLibrary.Probe(null, new[] { empty });
                    Assert.Equal(null, probe.LoadedPath, "nothing loads");
                    Assert.SequenceEqual(SdxlNativeLibrary.CandidatePaths(null, new[] { empty }).Select(p => p + ": no such file"), probe.Tried, "tried");
                }
                finally
                {
                    Directory.Delete(empty, true);
                }
            });

            runner.Add("native_library_probe_loads_the_built_library_from_an_override", () =>
            {
                var built = BuiltLibrary();
                var probe = SdxlNativeLibrary.Probe(built, new string[0]);
                Assert.Equal(Path.GetFullPath(built), probe.LoadedPath, "loaded path");
                Assert.True(probe.Handle != IntPtr.Zero, "a handle");
                Assert.SequenceEqual(new[] { SdxlNativeLibrary.PathVariable + "=" + built + ": loaded" }, probe.Tried, "tried");
            });

            runner.Add("native_library_env_override_binds_dllimport_in_a_fresh_process", () =>
            {
                var built = BuiltLibrary();
                var result = RunChild(null, built, null);
                Assert.Equal(0, result.Key, "exit code (" + result.Value + ")");
                Assert.Contains("loaded " + SdxlEngine.NativeVersion + " from " + Path.GetFullPath(built), result.Value, "child output");
            });

            runner.Add("native_library_bogus_env_override_fails_in_a_fresh_process_listing_it", () =>
            {
                BuiltLibrary();
                var result = RunChild(null, "/nonexistent/sdxl/libsdxl.so", Path.GetDirectoryName(BuiltLibrary()));
                Assert.Equal(3, result.Key, "exit code (" + result.Value + ")");
                Assert.Contains(SdxlNativeLibrary.PathVariable + "=/nonexistent/sdxl/libsdxl.so: no such file", result.Value, "child output");
                Assert.True(!result.Value.Contains("loaded "), "a bad override must not fall back to LD_LIBRARY_PATH: " + result.Value);
            });

            runner.Add("native_library_runtimes_layout_next_to_the_application_is_found", () =>
            {
                var built = BuiltLibrary();
                var app = CopyOfTheApplication();
                try
                {
                    var bundled = Path.Combine(Path.Combine(Path.Combine(Path.Combine(app, "runtimes"), SdxlNativeLibrary.RuntimeIdentifier), "native"), SdxlNativeLibrary.FileName);
                    LinkOrCopy(built, bundled);
                    var result = RunChild(app, null, null);
                    Assert.Equal(0, result.Key, "exit code (" + result.Value + ")");
                    Assert.Contains("from " + bundled, result.Value, "child output");
                }
                finally
                {
                    Directory.Delete(app, true);
                }
            });

            runner.Add("native_library_missing_everywhere_lists_every_path_tried", () =>
            {
                BuiltLibrary();
                var app = CopyOfTheApplication();
                try
                {
                    var result = RunChild(app, null, null);
                    Assert.Equal(3, result.Key, "exit code (" + result.Value + ")");
                    var runtimesPath = Path.Combine(Path.Combine(Path.Combine(Path.Combine(app, "runtimes"), SdxlNativeLibrary.RuntimeIdentifier), "native"), SdxlNativeLibrary.FileName);
                    Assert.Contains(runtimesPath + ": no such file", result.Value, "runtimes/<rid>/native tried");
                    Assert.Contains(Path.Combine(app, SdxlNativeLibrary.FileName) + ": no such file", result.Value, "the application folder tried");
                    Assert.Contains("default DllImport search for 'sdxl'", result.Value, "the default search tried");
                    Assert.Contains("LD_LIBRARY_PATH=<unset>", result.Value, "the loader path shown");
                }
                finally
                {
                    Directory.Delete(app, true);
                }
            });

            runner.Add("native_library_default_search_uses_ld_library_path", () =>
            {
                var built = BuiltLibrary();
                var app = CopyOfTheApplication();
                // The library under test may have another name (SDXL_NATIVE_LIBRARY): the loader looks for libsdxl.so.
                var folder = NewTempDirectory("ldpath");
                try
                {
                    LinkOrCopy(built, Path.Combine(folder, SdxlNativeLibrary.FileName));
                    var result = RunChild(app, null, folder);
                    Assert.Equal(0, result.Key, "exit code (" + result.Value + ")");
                    Assert.Contains("from <default search> via default DllImport search", result.Value, "child output");
                }
                finally
                {
                    Directory.Delete(app, true);
                    Directory.Delete(folder, true);
                }
            });
        }
    }
}
