// The one path from native failures to SdxlException, and the SafeHandle owning an engine.

using System;
using System.Collections.Generic;
using System.Collections.ObjectModel;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading;
using DeviceOperations.Sdxl.Native;

[assembly: InternalsVisibleTo("tests")]
[assembly: InternalsVisibleTo("DeviceOperations.Sdxl.Tests")]

namespace DeviceOperations.Sdxl
{
    /// <summary>The native error codes (SDXL_ERR_*) and their stable names (the `error_code`
    /// strings of response JSON). The numbers travel unchanged from Rust.</summary>
    public static class SdxlErrorCode
    {
        public const int Ok = SdxlNative.SDXL_OK;
        public const int InvalidArgument = SdxlNative.SDXL_ERR_INVALID_ARGUMENT;
        public const int InvalidJson = SdxlNative.SDXL_ERR_INVALID_JSON;
        public const int Validation = SdxlNative.SDXL_ERR_VALIDATION;
        public const int ModelNotFound = SdxlNative.SDXL_ERR_MODEL_NOT_FOUND;
        public const int ModelLoad = SdxlNative.SDXL_ERR_MODEL_LOAD;
        public const int NoModelLoaded = SdxlNative.SDXL_ERR_NO_MODEL_LOADED;
        public const int Device = SdxlNative.SDXL_ERR_DEVICE;
        public const int OutOfMemory = SdxlNative.SDXL_ERR_OUT_OF_MEMORY;
        public const int Cancelled = SdxlNative.SDXL_ERR_CANCELLED;
        public const int Timeout = SdxlNative.SDXL_ERR_TIMEOUT;
        public const int Io = SdxlNative.SDXL_ERR_IO;
        public const int Unsupported = SdxlNative.SDXL_ERR_UNSUPPORTED;
        public const int Internal = SdxlNative.SDXL_ERR_INTERNAL;

        // Number, name, and the prefix of the Rust error's Display text (src/error.rs).
        private static readonly string[][] Table =
        {
            new[] { "-1", "INVALID_ARGUMENT", "invalid argument:" },
            new[] { "-2", "INVALID_JSON", "invalid JSON:" },
            new[] { "-3", "VALIDATION_ERROR", "validation failed:" },
            new[] { "-4", "MODEL_NOT_FOUND", "model not found" },
            new[] { "-5", "MODEL_LOAD_ERROR", "failed to load model" },
            new[] { "-6", "NO_MODEL_LOADED", "no model loaded" },
            new[] { "-7", "DEVICE_ERROR", "device error:" },
            new[] { "-8", "OUT_OF_MEMORY", "out of memory" },
            new[] { "-9", "CANCELLED", "cancelled" },
            new[] { "-10", "TIMEOUT", "timed out" },
            new[] { "-11", "IO_ERROR", "I/O error:" },
            new[] { "-12", "UNSUPPORTED", "unsupported:" },
            new[] { "-13", "INTERNAL_ERROR", "internal error:" },
        };

        /// <summary>"VALIDATION_ERROR" for -3, "OK" for 0, "UNKNOWN" otherwise.</summary>
        public static string Name(int code)
        {
            if (code == Ok)
            {
                return "OK";
            }
            foreach (var row in Table)
            {
                if (row[0] == code.ToString(System.Globalization.CultureInfo.InvariantCulture))
                {
                    return row[1];
                }
            }
            return "UNKNOWN";
        }

        /// <summary>The number for a name ("CANCELLED" → -9); Internal when unknown.</summary>
        public static int FromName(string name)
        {
            foreach (var row in Table)
            {
                if (string.Equals(row[1], name, StringComparison.Ordinal))
                {
                    return int.Parse(row[0], System.Globalization.CultureInfo.InvariantCulture);
                }
            }
            return Internal;
        }

        /// <summary>Fallback for libraries older than sdxl_last_error_code: the code is
        /// recovered from the message's prefix (the Rust error's Display).</summary>
        internal static int FromMessage(string message)
        {
            if (!string.IsNullOrEmpty(message))
            {
                foreach (var row in Table)
                {
                    if (message.StartsWith(row[2], StringComparison.Ordinal))
                    {
                        return int.Parse(row[0], System.Globalization.CultureInfo.InvariantCulture);
                    }
                }
            }
            return Internal;
        }
    }

    /// <summary>One validation failure: the JSON path of the field and what is wrong.</summary>
    public sealed class SdxlFieldError
    {
        public SdxlFieldError(string field, string message)
        {
            Field = field ?? string.Empty;
            Message = message ?? string.Empty;
        }

        public string Field { get; private set; }
        public string Message { get; private set; }

        public override string ToString()
        {
            return Field + ": " + Message;
        }
    }

    /// <summary>Every native failure, with the native code (SDXL_ERR_*), its name and, for
    /// validation failures, the offending fields.</summary>
    [Serializable]
    public class SdxlException : Exception
    {
        private static readonly IReadOnlyList<SdxlFieldError> NoFieldErrors = new ReadOnlyCollection<SdxlFieldError>(new List<SdxlFieldError>());

        public SdxlException(int code, string message)
            : this(code, message, null, null)
        {
        }

        public SdxlException(int code, string message, IList<SdxlFieldError> fieldErrors, Exception inner)
            : base(message, inner)
        {
            Code = code;
            CodeName = SdxlErrorCode.Name(code);
            FieldErrors = fieldErrors == null || fieldErrors.Count == 0
                ? NoFieldErrors
                : new ReadOnlyCollection<SdxlFieldError>(new List<SdxlFieldError>(fieldErrors));
        }

        /// <summary>The native code, e.g. -3 (SDXL_ERR_VALIDATION).</summary>
        public int Code { get; private set; }

        /// <summary>The stable name, e.g. "VALIDATION_ERROR".</summary>
        public string CodeName { get; private set; }

        public IReadOnlyList<SdxlFieldError> FieldErrors { get; private set; }
    }

    /// <summary>The one place native results become exceptions. Must run on the thread that
    /// made the native call: sdxl_last_error() is per thread.</summary>
    internal static class NativeResult
    {
        /// <summary>Throws SdxlException for a negative SDXL_ERR_* code.</summary>
        public static void Check(int code, string operation)
        {
            if (code >= SdxlErrorCode.Ok)
            {
                return;
            }
            throw Failure(code, operation);
        }

        /// <summary>Throws SdxlException when a native function returned NULL.</summary>
        public static IntPtr CheckPointer(IntPtr pointer, string operation)
        {
            if (pointer != IntPtr.Zero)
            {
                return pointer;
            }
            var message = SdxlNative.LastError();
            var code = SdxlNative.sdxl_last_error_code();
            throw Failure(code != SdxlErrorCode.Ok ? code : SdxlErrorCode.FromMessage(message), operation, message);
        }

        /// <summary>Takes ownership of a returned string (NULL → SdxlException).</summary>
        public static string TakeString(IntPtr pointer, string operation)
        {
            return SdxlNative.TakeString(CheckPointer(pointer, operation));
        }

        public static SdxlException Failure(int code, string operation)
        {
            return Failure(code, operation, SdxlNative.LastError());
        }

        private static SdxlException Failure(int code, string operation, string nativeMessage)
        {
            var detail = string.IsNullOrEmpty(nativeMessage) ? SdxlErrorCode.Name(code) : nativeMessage;
            return new SdxlException(code, operation + " failed: " + detail);
        }

        /// <summary>A response's failure as an exception (EnhancedSDXLResponse.EnsureSuccess).</summary>
        public static SdxlException FromResponse(EnhancedSDXLResponse response)
        {
            var code = response.ErrorNumber ?? SdxlErrorCode.FromName(response.ErrorCode);
            return new SdxlException(code, response.Error ?? SdxlErrorCode.Name(code), response.FieldErrors, null);
        }

        /// <summary>Runs a native call after SdxlNativeLibrary.EnsureLoaded (which must run
        /// before the method holding the P/Invoke is first compiled: call sites pass a lambda),
        /// turning a missing libsdxl into an SdxlException that lists every path tried.</summary>
        public static T Invoke<T>(Func<T> call)
        {
            try
            {
                SdxlNativeLibrary.EnsureLoaded();
            }
            catch (DllNotFoundException ex)
            {
                // SDXL_NATIVE_LIBRARY is set and does not load: the message lists it.
                throw new SdxlException(SdxlErrorCode.Internal, ex.Message, null, ex);
            }
            try
            {
                return call();
            }
            catch (DllNotFoundException ex)
            {
                throw new SdxlException(SdxlErrorCode.Internal, SdxlNativeLibrary.DescribeFailure(ex.Message), null, ex);
            }
            catch (EntryPointNotFoundException ex)
            {
                throw new SdxlException(SdxlErrorCode.Internal,
                    "libsdxl was found (" + SdxlNativeLibrary.Binding + ") but lacks an export this binding needs (" + ex.Message + "); the library is older than the binding", null, ex);
            }
        }
    }

    /// <summary>Owns one native engine (SdxlEngine*); ReleaseHandle calls sdxl_free once no
    /// call holds a reference (DangerousAddRef), so freeing never races a running request.</summary>
    public sealed class SdxlEngineHandle : SafeHandle
    {
        // Engines created and not yet freed, process-wide (for leak checks and tests).
        private static int s_openCount;
        private int _counted;
        private int _disposeRequested;

        public SdxlEngineHandle()
            : base(IntPtr.Zero, true)
        {
        }

        internal SdxlEngineHandle(IntPtr engine)
            : base(IntPtr.Zero, true)
        {
            SetHandle(engine);
            if (engine != IntPtr.Zero)
            {
                _counted = 1;
                Interlocked.Increment(ref s_openCount);
            }
        }

        /// <summary>Native engines this process created whose sdxl_free has not run yet
        /// (by Dispose, or by the finalizer for an engine never disposed).</summary>
        public static int OpenCount
        {
            get { return Volatile.Read(ref s_openCount); }
        }

        public override bool IsInvalid
        {
            get { return handle == IntPtr.Zero; }
        }

        /// <summary>The progress callback registered with this engine: referenced here so the GC
        /// keeps it alive until sdxl_free has run, however late the release happens.</summary>
        internal SdxlNative.SdxlProgressCallback ProgressCallback { get; set; }

        protected override bool ReleaseHandle()
        {
            SdxlNative.sdxl_free(handle);
            ProgressCallback = null;
            if (Interlocked.Exchange(ref _counted, 0) == 1)
            {
                Interlocked.Decrement(ref s_openCount);
            }
            return true;
        }

        /// <summary>True once Dispose (or the finalizer) ran. SafeHandle only refuses new
        /// references once the last one is released (IsClosed), so a call holding the handle
        /// would otherwise let new calls in after Dispose.</summary>
        public bool IsDisposeRequested
        {
            get { return Volatile.Read(ref _disposeRequested) != 0; }
        }

        protected override void Dispose(bool disposing)
        {
            Interlocked.Exchange(ref _disposeRequested, 1);
            base.Dispose(disposing);
        }

        /// <summary>Holds a reference for the duration of one native call; refused
        /// (ObjectDisposedException) after Dispose unless evenWhileDisposing (sdxl_cancel for
        /// a request still running).</summary>
        internal Lease Acquire(bool evenWhileDisposing = false)
        {
            if (!evenWhileDisposing && IsDisposeRequested)
            {
                throw new ObjectDisposedException("SdxlEngine", "the engine has been disposed");
            }
            return new Lease(this);
        }

        internal struct Lease : IDisposable
        {
            private readonly SdxlEngineHandle _owner;
            private bool _added;

            public Lease(SdxlEngineHandle owner)
            {
                _owner = owner;
                _added = false;
                try
                {
                    owner.DangerousAddRef(ref _added);
                }
                catch (ObjectDisposedException)
                {
                    throw new ObjectDisposedException("SdxlEngine", "the engine has been disposed");
                }
            }

            public IntPtr Pointer
            {
                get { return _owner.DangerousGetHandle(); }
            }

            public void Dispose()
            {
                if (_added)
                {
                    _added = false;
                    _owner.DangerousRelease();
                }
            }
        }
    }
}
