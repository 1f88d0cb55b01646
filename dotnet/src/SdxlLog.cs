// The library's log lines (sdxl_set_log_callback), forwarded to a .NET handler. The library
// never writes to stdout/stderr itself; without a handler its logs are dropped.

using System;
using DeviceOperations.Sdxl.Native;

namespace DeviceOperations.Sdxl
{
    public enum SdxlLogLevel
    {
        Error = 0,
        Warn = 1,
        Info = 2,
        Debug = 3,
        Trace = 4,
    }

    public static class SdxlLog
    {
        private static readonly object Gate = new object();
        // Static: the native side may call it at any time, from any thread, until replaced.
        private static SdxlNative.SdxlLogCallback _callback;
        private static Action<SdxlLogLevel, string, string> _handler;
        // Replaced delegates are kept: a line already being logged on another thread may still
        // call the old one after the swap. A handful of delegates per process at most.
        private static readonly System.Collections.Generic.List<SdxlNative.SdxlLogCallback> Retired = new System.Collections.Generic.List<SdxlNative.SdxlLogCallback>();

        /// <summary>Forwards log lines at maxLevel and more severe to handler(level, target,
        /// message), for every engine in the process; null stops forwarding. The handler runs
        /// on library threads: keep it quick and thread-safe. Its exceptions are swallowed.</summary>
        public static void SetHandler(Action<SdxlLogLevel, string, string> handler, SdxlLogLevel maxLevel = SdxlLogLevel.Info)
        {
            lock (Gate)
            {
                var callback = handler == null ? null : new SdxlNative.SdxlLogCallback(OnNativeLog);
                _handler = handler;
                NativeResult.Invoke(() =>
                {
                    NativeResult.Check(SdxlNative.sdxl_set_log_callback(callback, (uint)maxLevel, IntPtr.Zero), "sdxl_set_log_callback");
                    return 0;
                });
                if (_callback != null)
                {
                    Retired.Add(_callback);
                }
                _callback = callback;
            }
        }

        private static void OnNativeLog(uint level, IntPtr target, IntPtr message, IntPtr userData)
        {
            try
            {
                var handler = _handler;
                if (handler != null)
                {
                    handler((SdxlLogLevel)level, SdxlNative.PtrToStringUtf8(target), SdxlNative.PtrToStringUtf8(message));
                }
            }
            catch (Exception)
            {
                // Never unwind into native code.
            }
        }
    }
}
