// What ships and how it is tested: the package refuses to build without libsdxl, build outputs
// stay out of git, and tools/dotnet_test.sh runs against any library SDXL_NATIVE_LIBRARY names.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Xml;

namespace DeviceOperations.Sdxl.Tests
{
    internal static class PackagingTests
    {
        private static string RepoPath(params string[] parts)
        {
            return parts.Aggregate(AbiTests.RepoRoot(), Path.Combine);
        }

        private static string Attribute(XmlElement element, string name)
        {
            return element.HasAttribute(name) ? element.GetAttribute(name) : string.Empty;
        }

        private static string NoSpaces(string text)
        {
            return new string(text.Where(c => !char.IsWhiteSpace(c)).ToArray());
        }

        /// <summary>Runs a program; returns (exit code, stdout + stderr). env values of null unset.</summary>
        private static KeyValuePair<int, string> Run(string file, string arguments, IDictionary<string, string> env)
        {
            var start = new ProcessStartInfo(file, arguments)
            {
                UseShellExecute = false,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                WorkingDirectory = AbiTests.RepoRoot(),
            };
            foreach (var pair in env)
            {
                start.EnvironmentVariables.Remove(pair.Key);
                if (pair.Value != null)
                {
                    start.EnvironmentVariables[pair.Key] = pair.Value;
                }
            }
            using (var process = Process.Start(start))
            {
                var stderr = process.StandardError.ReadToEndAsync();
                var stdout = process.StandardOutput.ReadToEnd();
                if (!process.WaitForExit(60000))
                {
                    process.Kill();
                    throw new TestFailure(file + " " + arguments + " did not exit: " + stdout);
                }
                return new KeyValuePair<int, string>(process.ExitCode, stdout + stderr.Result);
            }
        }

        /// <summary>A program's full path from PATH, or null.</summary>
        private static string Which(string name)
        {
            foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(Path.PathSeparator))
            {
                var candidate = Path.Combine(dir, name);
                if (dir.Length > 0 && File.Exists(candidate))
                {
                    return candidate;
                }
            }
            return null;
        }

        public static void Register(TestRunner runner)
        {
            runner.Add("packaging_pack_without_the_native_library_fails_with_a_message", () =>
            {
                var document = new XmlDocument();
                document.Load(RepoPath("dotnet", "src", "DeviceOperations.Sdxl.csproj"));
                // A target that runs before dotnet pack writes the .nuspec/.nupkg ...
                var targets = document.GetElementsByTagName("Target").Cast<XmlElement>()
                    .Where(t => Attribute(t, "BeforeTargets").Split(';').Select(x => x.Trim()).Contains("GenerateNuspec")).ToList();
                Assert.Equal(1, targets.Count, "targets with BeforeTargets=GenerateNuspec");
                var target = targets[0];
                Assert.True(Attribute(target, "Condition") == string.Empty || Attribute(target, "Condition").Contains("'$(SdxlAllowManagedOnlyPackage)' != 'true'"),
                    "only an explicit opt-out skips the check: " + Attribute(target, "Condition"));
                // ... and stops with an Error when SdxlNativeDir has no libsdxl.so.
                var errors = target.GetElementsByTagName("Error").Cast<XmlElement>()
                    .Where(e => NoSpaces(Attribute(e, "Condition")) == "!Exists('$(SdxlNativeDir)libsdxl.so')").ToList();
                Assert.Equal(1, errors.Count, "Error tasks conditioned on the missing libsdxl.so");
                var text = Attribute(errors[0], "Text");
                Assert.Contains("$(SdxlNativeDir)libsdxl.so", text, "the message names the path looked at");
                Assert.Contains("-p:SdxlNativeDir=", text, "the message says how to point at the library");
                // The library that is there is still packed where .NET's host finds it.
                var packed = document.GetElementsByTagName("None").Cast<XmlElement>()
                    .Where(n => Attribute(n, "Include") == "$(SdxlNativeDir)libsdxl.so" && Attribute(n, "PackagePath") == "runtimes/linux-x64/native/").ToList();
                Assert.Equal(1, packed.Count, "libsdxl.so packed under runtimes/linux-x64/native/");
            });

            runner.Add("packaging_dotnet_bin_and_obj_folders_are_ignored_by_git", () =>
            {
                if (!Directory.Exists(RepoPath(".git")) && !File.Exists(RepoPath(".git")))
                {
                    throw new TestSkipped("not a git work tree");
                }
                var git = Which("git");
                if (git == null)
                {
                    throw new TestSkipped("no git");
                }
                foreach (var path in new[]
                {
                    "dotnet/src/bin/Release/DeviceOperations.Sdxl.1.0.0.nupkg",
                    "dotnet/src/obj/project.assets.json",
                    "dotnet/tests/bin/Debug/net8.0/DeviceOperations.Sdxl.Tests.dll",
                    "dotnet/tests/obj/Debug/net8.0/DeviceOperations.Sdxl.Tests.AssemblyInfo.cs",
                })
                {
                    var result = Run(git, "check-ignore -q \"" + path + "\"", new Dictionary<string, string>());
                    Assert.Equal(0, result.Key, "git check-ignore " + path + " (0: ignored) " + result.Value);
                }
                var source = Run(git, "check-ignore -q dotnet/src/SdxlEngine.cs", new Dictionary<string, string>());
                Assert.Equal(1, source.Key, "sources are not ignored " + source.Value);
            });

            runner.Add("packaging_test_script_runs_against_SDXL_NATIVE_LIBRARY_without_cargo_or_a_debug_build", () =>
            {
                var bash = File.Exists("/bin/bash") ? "/bin/bash" : Which("bash");
                var dirname = Which("dirname");
                var basename = Which("basename");
                if (bash == null || dirname == null || basename == null)
                {
                    throw new TestSkipped("needs bash, dirname and basename");
                }
                var script = RepoPath("tools", "dotnet_test.sh");
                var temp = Path.Combine(Path.GetTempPath(), "sdxl-script-" + Guid.NewGuid().ToString("N").Substring(0, 8));
                var bin = Path.Combine(temp, "bin");
                var libraries = Path.Combine(temp, "lib");
                Directory.CreateDirectory(bin);
                Directory.CreateDirectory(libraries);
                try
                {
                    // A PATH without cargo, mcs or mono: the script may use none of them to find the library.
                    foreach (var tool in new[] { dirname, basename })
                    {
                        File.Copy(tool, Path.Combine(bin, Path.GetFileName(tool)));
                    }
                    var library = Path.Combine(libraries, "libsdxl-cuda.so");
                    File.WriteAllText(library, "stands in for a release or CUDA build");
                    File.WriteAllText(Path.Combine(libraries, "libsdxl.so"), "the same, under the default name");
                    Func<string, Dictionary<string, string>> env = value => new Dictionary<string, string>
                    {
                        { "PATH", bin },
                        { "SDXL_NATIVE_LIBRARY", value },
                        { "SDXL_NO_CARGO", null },
                    };

                    var file = Run(bash, "\"" + script + "\" --print-library", env(library));
                    Assert.Equal(0, file.Key, "exit code with SDXL_NATIVE_LIBRARY=<file> (" + file.Value.Trim() + ")");
                    Assert.Equal(library, file.Value.Trim(), "the library used");

                    var folder = Run(bash, "\"" + script + "\" --print-library", env(libraries));
                    Assert.Equal(0, folder.Key, "exit code with SDXL_NATIVE_LIBRARY=<folder> (" + folder.Value.Trim() + ")");
                    Assert.Equal(Path.Combine(libraries, "libsdxl.so"), folder.Value.Trim(), "the library in the folder");

                    var missing = Path.Combine(libraries, "absent.so");
                    var absent = Run(bash, "\"" + script + "\" --print-library", env(missing));
                    Assert.Equal(2, absent.Key, "exit code for a missing library (" + absent.Value.Trim() + ")");
                    Assert.Contains("SDXL_NATIVE_LIBRARY=" + missing, absent.Value, "the message names the variable");
                }
                finally
                {
                    Directory.Delete(temp, true);
                }
            });
        }
    }
}
