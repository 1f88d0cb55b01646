// SdxlNativeLibrary.cs: finds libsdxl and makes every [DllImport("sdxl")] of SdxlNative bind
// to it. Call EnsureLoaded() before the first SdxlNative call (the .NET library does).
//
// Order (the first that loads wins):
//   1. SDXL_NATIVE_LIBRARY: the full path of the library (a folder holding it also works).
//      When set, nothing else is tried: an override that silently lost to another copy
//      would hide which library is running.
//   2. runtimes/<rid>/native/<file> next to this assembly, then next to the application
//      (the NuGet layout; <file> is libsdxl.so, sdxl.dll or libsdxl.dylib).
//   3. <file> next to this assembly, then next to the application.
//   4. The runtime's default DllImport search (LD_LIBRARY_PATH, the system paths, a Mono
//      <dllmap>, .NET's deps.json); failures there are reported with steps 1-3 listed.
//
// Binding: on net8.0 NativeLibrary.SetDllImportResolver hands the loaded handle to the
// runtime. netstandard2.0 has no NativeLibrary API, so the library is preloaded (dlopen with
// RTLD_NOW | RTLD_GLOBAL, LoadLibraryW on Windows) and then:
//   - Mono: mono_dllmap_insert maps "sdxl" to the loaded path. The preload alone is not
//     enough: libsdxl has no SONAME, so glibc does not match dlopen("libsdxl.so") to a copy
//     loaded by full path. Mono resolves a P/Invoke when it compiles the calling method,
//     so the map must be in place before any method that calls SdxlNative is first run.
//   - CoreCLR running the netstandard2.0 build (.NET 6/7): SetDllImportResolver through
//     reflection.
//   - Windows: LoadLibrary reuses an already-loaded module by file name, so the preload binds.
//
// C# 7.2: must build with Mono's mcs and with the .NET 8 SDK.

using System;
using System.Collections.Generic;
using System.IO;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;

namespace DeviceOperations.Sdxl.Native
{
    /// <summary>The outcome of one search for libsdxl.</summary>
    public sealed class SdxlNativeProbe
    {
        internal SdxlNativeProbe(string loadedPath, IntPtr handle, IList<string> tried)
        {
            LoadedPath = loadedPath;
            Handle = handle;
            Tried = new List<string>(tried).AsReadOnly();
        }

        /// <summary>The full path that loaded; null when nothing did (the default search is left).</summary>
        public string LoadedPath { get; private set; }

        /// <summary>The OS handle (dlopen / LoadLibrary / NativeLibrary.Load); zero when nothing loaded.</summary>
        public IntPtr Handle { get; private set; }

        /// <summary>Every location tried, in order, as "path: why it failed" (or "path: loaded").</summary>
        public IReadOnlyList<string> Tried { get; private set; }
    }

    public static class SdxlNativeLibrary
    {
        /// <summary>The environment variable naming the library's full path.</summary>
        public const string PathVariable = "SDXL_NATIVE_LIBRARY";

        private static readonly object Gate = new object();
        private static SdxlNativeProbe s_probe;
        private static string s_binding = "not loaded yet";

        /// <summary>"linux-x64", "win-x64", "osx-arm64", ...: the runtimes/ folder searched.</summary>
        public static string RuntimeIdentifier
        {
            get
            {
                string arch;
                switch (RuntimeInformation.ProcessArchitecture)
                {
                    case Architecture.X64: arch = "x64"; break;
                    case Architecture.X86: arch = "x86"; break;
                    case Architecture.Arm64: arch = "arm64"; break;
                    case Architecture.Arm: arch = "arm"; break;
                    default: arch = RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant(); break;
                }
                return OperatingSystemPrefix + "-" + arch;
            }
        }

        /// <summary>libsdxl.so on Linux, sdxl.dll on Windows, libsdxl.dylib on macOS.</summary>
        public static string FileName
        {
            get
            {
                switch (OperatingSystemPrefix)
                {
                    case "win": return SdxlNative.LibraryName + ".dll";
                    case "osx": return "lib" + SdxlNative.LibraryName + ".dylib";
                    default: return "lib" + SdxlNative.LibraryName + ".so";
                }
            }
        }

        /// <summary>The path EnsureLoaded loaded; null before it ran or when the default search is used.</summary>
        public static string LoadedPath
        {
            get
            {
                lock (Gate)
                {
                    return s_probe == null ? null : s_probe.LoadedPath;
                }
            }
        }

        /// <summary>How [DllImport("sdxl")] was bound ("mono dllmap", "NativeLibrary resolver", ...).</summary>
        public static string Binding
        {
            get
            {
                lock (Gate)
                {
                    return s_binding;
                }
            }
        }

        private static string OperatingSystemPrefix
        {
            get
            {
                if (RuntimeInformation.IsOSPlatform(OSPlatform.Windows))
                {
                    return "win";
                }
                if (RuntimeInformation.IsOSPlatform(OSPlatform.OSX))
                {
                    return "osx";
                }
                return "linux";
            }
        }

        /// <summary>Finds and loads libsdxl once per process and binds SdxlNative to it.
        /// Throws DllNotFoundException, listing what was tried, when SDXL_NATIVE_LIBRARY is set
        /// but does not load. When nothing loads and no override is set, returns and leaves the
        /// runtime's default search to the first P/Invoke (see DescribeFailure).</summary>
        public static void EnsureLoaded()
        {
            lock (Gate)
            {
                if (s_probe != null)
                {
                    return;
                }
                var probe = Probe(Environment.GetEnvironmentVariable(PathVariable), SearchDirectories());
                if (probe.LoadedPath != null)
                {
                    s_binding = Bind(probe);
                }
                else
                {
                    s_binding = "default DllImport search";
                }
                s_probe = probe;
            }
        }

        /// <summary>The folders searched: this assembly's and the application's, in that order.</summary>
        public static IList<string> SearchDirectories()
        {
            var directories = new List<string>();
            string assemblyDirectory = null;
            try
            {
                var location = typeof(SdxlNativeLibrary).Assembly.Location;
                if (!string.IsNullOrEmpty(location))
                {
                    assemblyDirectory = Path.GetDirectoryName(location);
                }
            }
            catch (NotSupportedException)
            {
                // Dynamic or single-file assemblies have no location.
            }
            foreach (var directory in new[] { assemblyDirectory, AppDomain.CurrentDomain.BaseDirectory })
            {
                if (string.IsNullOrEmpty(directory))
                {
                    continue;
                }
                var full = Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
                if (!directories.Contains(full))
                {
                    directories.Add(full);
                }
            }
            return directories;
        }

        /// <summary>The candidate paths, in the order they are tried (the override alone when set).</summary>
        public static IList<string> CandidatePaths(string overridePath, IEnumerable<string> directories)
        {
            var candidates = new List<string>();
            if (!string.IsNullOrEmpty(overridePath))
            {
                candidates.Add(Directory.Exists(overridePath) ? Path.Combine(overridePath, FileName) : overridePath);
                return candidates;
            }
            var list = new List<string>(directories ?? new string[0]);
            foreach (var directory in list)
            {
                candidates.Add(Path.Combine(Path.Combine(Path.Combine(Path.Combine(directory, "runtimes"), RuntimeIdentifier), "native"), FileName));
            }
            foreach (var directory in list)
            {
                candidates.Add(Path.Combine(directory, FileName));
            }
            return candidates;
        }

        /// <summary>Tries the candidates without binding anything (EnsureLoaded's search, for
        /// diagnostics and tests). Throws DllNotFoundException when an override fails.</summary>
        public static SdxlNativeProbe Probe(string overridePath, IEnumerable<string> directories)
        {
            var tried = new List<string>();
            foreach (var candidate in CandidatePaths(overridePath, directories))
            {
                var label = string.IsNullOrEmpty(overridePath) ? candidate : PathVariable + "=" + candidate;
                if (!File.Exists(candidate))
                {
                    tried.Add(label + ": no such file");
                    continue;
                }
                var full = Path.GetFullPath(candidate);
                string error;
                var handle = Load(full, out error);
                if (handle != IntPtr.Zero)
                {
                    tried.Add(label + ": loaded");
                    return new SdxlNativeProbe(full, handle, tried);
                }
                tried.Add(label + ": " + error);
            }
            if (!string.IsNullOrEmpty(overridePath))
            {
                throw new DllNotFoundException(Describe(tried, PathVariable + " is set, so no other location was tried; unset it to search the default locations"));
            }
            return new SdxlNativeProbe(null, IntPtr.Zero, tried);
        }

        /// <summary>The message for a failed default search: every location tried, then the
        /// runtime's own error.</summary>
        public static string DescribeFailure(string loaderMessage)
        {
            IList<string> tried;
            lock (Gate)
            {
                tried = s_probe != null
                    ? new List<string>(s_probe.Tried)
                    : new List<string>(CandidatePaths(null, SearchDirectories()));
            }
            var pathVariable = OperatingSystemPrefix == "win" ? "PATH" : OperatingSystemPrefix == "osx" ? "DYLD_LIBRARY_PATH" : "LD_LIBRARY_PATH";
            var searchPath = Environment.GetEnvironmentVariable(pathVariable);
            tried.Add("default DllImport search for '" + SdxlNative.LibraryName + "' (" + FileName + " on " + pathVariable + "=" +
                (string.IsNullOrEmpty(searchPath) ? "<unset>" : searchPath) + ", the system library paths, a Mono <dllmap dll=\"sdxl\">): " + loaderMessage);
            return Describe(tried, "set " + PathVariable + " to the library's full path, or ship it as runtimes/" + RuntimeIdentifier + "/native/" + FileName + " next to the application");
        }

        private static string Describe(IList<string> tried, string hint)
        {
            var message = new StringBuilder("libsdxl (" + FileName + ") could not be loaded. Tried, in order:");
            foreach (var line in tried)
            {
                message.Append("\n  ").Append(line);
            }
            message.Append("\n(").Append(hint).Append(')');
            return message.ToString();
        }

        // Loading -------------------------------------------------------------------------

        private static IntPtr Load(string path, out string error)
        {
            error = null;
#if NET5_0_OR_GREATER
            try
            {
                return NativeLibrary.Load(path);
            }
            catch (DllNotFoundException ex)
            {
                error = ex.Message;
            }
            catch (BadImageFormatException ex)
            {
                error = ex.Message;
            }
            return IntPtr.Zero;
#else
            try
            {
                return OperatingSystemPrefix == "win" ? LoadWindows(path, out error) : LoadUnix(path, out error);
            }
            catch (DllNotFoundException ex)
            {
                error = "the platform loader is unavailable: " + ex.Message;
            }
            catch (EntryPointNotFoundException ex)
            {
                error = "the platform loader is unavailable: " + ex.Message;
            }
            return IntPtr.Zero;
#endif
        }

#if !NET5_0_OR_GREATER
        private const int RTLD_NOW = 2;
        private const int RTLD_GLOBAL = 0x100;

        private static IntPtr LoadUnix(string path, out string error)
        {
            // glibc >= 2.34 has dlopen in libc too; libdl.so.2 still exists as a shim, and
            // older glibc has it only there. macOS maps "libc" to libSystem under Mono.
            try
            {
                return DlOpenLibdl(path, out error);
            }
            catch (DllNotFoundException)
            {
                return DlOpenLibc(path, out error);
            }
            catch (EntryPointNotFoundException)
            {
                return DlOpenLibc(path, out error);
            }
        }

        // Each P/Invoke is called from its own non-inlined method: Mono resolves a DllImport
        // when it compiles the caller, and a missing libdl must stay catchable here.
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static IntPtr DlOpenLibdl(string path, out string error)
        {
            var handle = Libdl.dlopen(SdxlNative.ToUtf8Z(path), RTLD_NOW | RTLD_GLOBAL);
            error = handle == IntPtr.Zero ? (SdxlNative.PtrToStringUtf8(Libdl.dlerror()) ?? "dlopen failed") : null;
            return handle;
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private static IntPtr DlOpenLibc(string path, out string error)
        {
            var handle = Libc.dlopen(SdxlNative.ToUtf8Z(path), RTLD_NOW | RTLD_GLOBAL);
            error = handle == IntPtr.Zero ? (SdxlNative.PtrToStringUtf8(Libc.dlerror()) ?? "dlopen failed") : null;
            return handle;
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private static IntPtr LoadWindows(string path, out string error)
        {
            var handle = Kernel32.LoadLibraryW(path);
            error = handle == IntPtr.Zero ? new System.ComponentModel.Win32Exception(Marshal.GetLastWin32Error()).Message : null;
            return handle;
        }
#endif

        // Binding -------------------------------------------------------------------------

        private static string Bind(SdxlNativeProbe probe)
        {
#if NET5_0_OR_GREATER
            try
            {
                NativeLibrary.SetDllImportResolver(typeof(SdxlNativeLibrary).Assembly, ResolveDllImport);
                return "NativeLibrary resolver (" + probe.LoadedPath + ")";
            }
            catch (InvalidOperationException)
            {
                // The application registered its own resolver for this assembly; it decides.
                return "the application's DllImport resolver (" + probe.LoadedPath + " preloaded)";
            }
#else
            if (Type.GetType("Mono.Runtime") != null)
            {
                try
                {
                    MonoDllMap(probe.LoadedPath);
                    return "mono dllmap (" + probe.LoadedPath + ")";
                }
                catch (EntryPointNotFoundException)
                {
                    // An embedded Mono without the export: the default search decides.
                }
                catch (DllNotFoundException)
                {
                }
                return "preloaded " + probe.LoadedPath + " (mono_dllmap_insert unavailable)";
            }
            if (TryRegisterCoreClrResolver())
            {
                return "NativeLibrary resolver via reflection (" + probe.LoadedPath + ")";
            }
            return "preloaded " + probe.LoadedPath;
#endif
        }

        /// <summary>Hands the loaded library to the runtime for "sdxl"; anything else gets
        /// the default search (IntPtr.Zero).</summary>
        private static IntPtr ResolveDllImport(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
        {
            if (!string.Equals(libraryName, SdxlNative.LibraryName, StringComparison.Ordinal))
            {
                return IntPtr.Zero;
            }
            lock (Gate)
            {
                return s_probe == null ? IntPtr.Zero : s_probe.Handle;
            }
        }

#if !NET5_0_OR_GREATER
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void MonoDllMap(string path)
        {
            MonoRuntime.mono_dllmap_insert(IntPtr.Zero, SdxlNative.ToUtf8Z(SdxlNative.LibraryName), null, SdxlNative.ToUtf8Z(path), null);
        }

        /// <summary>.NET Core 3.0+ running this netstandard2.0 build: the same resolver as
        /// net8.0, registered through reflection.</summary>
        private static bool TryRegisterCoreClrResolver()
        {
            var coreLibrary = typeof(object).Assembly;
            var nativeLibrary = coreLibrary.GetType("System.Runtime.InteropServices.NativeLibrary", false);
            var resolverType = coreLibrary.GetType("System.Runtime.InteropServices.DllImportResolver", false);
            if (nativeLibrary == null || resolverType == null)
            {
                return false;
            }
            var register = nativeLibrary.GetMethod("SetDllImportResolver", BindingFlags.Public | BindingFlags.Static, null, new[] { typeof(Assembly), resolverType }, null);
            var target = typeof(SdxlNativeLibrary).GetMethod("ResolveDllImport", BindingFlags.NonPublic | BindingFlags.Static);
            if (register == null || target == null)
            {
                return false;
            }
            try
            {
                register.Invoke(null, new object[] { typeof(SdxlNativeLibrary).Assembly, Delegate.CreateDelegate(resolverType, target) });
                return true;
            }
            catch (TargetInvocationException)
            {
                // InvalidOperationException: the application already registered a resolver.
                return false;
            }
            catch (ArgumentException)
            {
                return false;
            }
        }

        private static class Libdl
        {
            [DllImport("libdl.so.2", CallingConvention = CallingConvention.Cdecl)]
            public static extern IntPtr dlopen(byte[] fileName, int flags);

            [DllImport("libdl.so.2", CallingConvention = CallingConvention.Cdecl)]
            public static extern IntPtr dlerror();
        }

        private static class Libc
        {
            [DllImport("libc", CallingConvention = CallingConvention.Cdecl)]
            public static extern IntPtr dlopen(byte[] fileName, int flags);

            [DllImport("libc", CallingConvention = CallingConvention.Cdecl)]
            public static extern IntPtr dlerror();
        }

        private static class Kernel32
        {
            [DllImport("kernel32", CharSet = CharSet.Unicode, SetLastError = true)]
            public static extern IntPtr LoadLibraryW(string fileName);
        }

        private static class MonoRuntime
        {
            /// <summary>Exported by the Mono runtime; a null image means the global map.</summary>
            [DllImport("__Internal", CallingConvention = CallingConvention.Cdecl)]
            public static extern void mono_dllmap_insert(IntPtr image, byte[] dll, byte[] func, byte[] targetDll, byte[] targetFunc);
        }
#endif
    }
}
