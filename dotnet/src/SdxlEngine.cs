// One native engine (one device, its loaded models, its request queue) behind a SafeHandle.
// Native calls block, so every call runs on Task.Run. Requests on one engine run one at a
// time inside libsdxl; progress goes through one progress callback registered for the
// engine's lifetime. A CancellationToken reaches only its own request: through
// sdxl_cancel_request with the request's id, and through the progress callback, which refuses
// to continue a request whose token is cancelled. sdxl_cancel (whatever runs now) is never used.

using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using System.Threading;
using System.Threading.Tasks;
using DeviceOperations.Sdxl.Native;

namespace DeviceOperations.Sdxl
{
    /// <summary>What SdxlNativeService sends requests to: one engine or a pool of them.</summary>
    public interface ISdxlGenerator
    {
        /// <summary>Runs one request JSON (envelope or bare) and returns the response JSON.
        /// Throws OperationCanceledException when cancellationToken cancels the request.</summary>
        Task<string> GenerateJsonAsync(string requestJson, IProgress<SdxlProgress> progress, CancellationToken cancellationToken);
    }

    public sealed class SdxlEngine : ISdxlGenerator, IDisposable
    {
        /// <summary>Progress and cancellation state of one request in flight.</summary>
        private sealed class RequestState
        {
            /// <summary>The id the request JSON names (null when it names none).</summary>
            public string RequestId;
            /// <summary>The id the engine reported in progress: the engine's own when the JSON
            /// named none.</summary>
            public volatile string NativeRequestId;
            public IProgress<SdxlProgress> Progress;
            public CancellationToken Token;
            public volatile bool Cancelled;
        }

        // The callback runs on the thread that called sdxl_generate_json (libsdxl runs the
        // request on the caller's thread), so the thread's current request is found here;
        // the request-id map is the fallback should the library ever call from elsewhere.
        [ThreadStatic]
        private static RequestState t_current;

        private readonly SdxlEngineHandle _handle;
        private readonly SdxlNative.SdxlProgressCallback _progressCallback;
        private readonly ConcurrentDictionary<string, RequestState> _inFlight = new ConcurrentDictionary<string, RequestState>(StringComparer.Ordinal);
        // How many requests in flight name each id (under _idLock). A cancel by id is sent only
        // while the id is this request's alone; a request counts itself before it reaches the
        // engine, so another's cancel by id can never reach it.
        private readonly Dictionary<string, int> _idsInFlight = new Dictionary<string, int>(StringComparer.Ordinal);
        private readonly object _idLock = new object();
        private readonly EnhancedRequestTransformer _transformer = new EnhancedRequestTransformer();
        private readonly EnhancedResponseHandler _responseHandler = new EnhancedResponseHandler();
        private int _busy;

        private SdxlEngine(SdxlEngineHandle handle, SdxlEngineConfig config)
        {
            _handle = handle;
            Config = config;
            _progressCallback = OnNativeProgress;
            // The handle holds the delegate too, so it outlives a deferred sdxl_free.
            _handle.ProgressCallback = _progressCallback;
            using (var lease = _handle.Acquire())
            {
                NativeResult.Check(SdxlNative.sdxl_set_progress_callback(lease.Pointer, _progressCallback, IntPtr.Zero), "sdxl_set_progress_callback");
            }
        }

        /// <summary>The configuration the engine was created with (null for defaults).</summary>
        public SdxlEngineConfig Config { get; private set; }

        /// <summary>Requests currently submitted to this engine (running or queued).</summary>
        public int PendingRequests
        {
            get { return Volatile.Read(ref _busy); }
        }

        public SdxlEngineHandle Handle
        {
            get { return _handle; }
        }

        /// <summary>The version of the libsdxl actually loaded.</summary>
        public static string NativeVersion
        {
            get { return NativeResult.Invoke(() => SdxlNative.PtrToStringUtf8(SdxlNative.sdxl_version())); }
        }

        /// <summary>Creates an engine; throws SdxlException (e.g. VALIDATION_ERROR for a bad
        /// config, DEVICE_ERROR for a missing GPU).</summary>
        public static SdxlEngine Create(SdxlEngineConfig config)
        {
            var nonFinite = config == null ? new List<SdxlFieldError>() : config.NonFiniteNumbers();
            if (nonFinite.Count > 0)
            {
                throw new SdxlException(SdxlErrorCode.Validation, "validation failed: " + string.Join("; ", nonFinite), nonFinite, null);
            }
            var json = config == null ? string.Empty : config.ToJson();
            return NativeResult.Invoke(() =>
            {
                var pointer = NativeResult.CheckPointer(SdxlNative.sdxl_create(SdxlNative.ToUtf8Z(json)), "sdxl_create");
                var handle = new SdxlEngineHandle(pointer);
                try
                {
                    return new SdxlEngine(handle, config);
                }
                catch
                {
                    handle.Dispose();
                    throw;
                }
            });
        }

        /// <summary>Loads a model and keeps it resident ("builtin:tiny", a diffusers folder,
        /// a .safetensors file or a name under models_dir). Not interruptible once started.</summary>
        public Task LoadModelAsync(string baseModel, CancellationToken cancellationToken = default(CancellationToken))
        {
            if (string.IsNullOrWhiteSpace(baseModel))
            {
                throw new ArgumentException("a model name or path is required", "baseModel");
            }
            var json = new JsonObject().Add("base", baseModel).ToString();
            return Task.Run(() =>
            {
                using (var lease = _handle.Acquire())
                {
                    NativeResult.Check(SdxlNative.sdxl_load_model(lease.Pointer, SdxlNative.ToUtf8Z(json)), "sdxl_load_model(" + baseModel + ")");
                }
            }, cancellationToken);
        }

        /// <summary>Generates images for the seed's request, after the seed's ValidateRequest
        /// checks (the same as SdxlNativeService: a failure is returned, not sent). Request failures (validation, a
        /// missing model, out of memory) come back as Success=false with ErrorCode and
        /// FieldErrors. Cancelling cancellationToken (before or during the request) throws
        /// OperationCanceledException whose InnerException is the native CANCELLED
        /// SdxlException when the request had started; the engine serves the next request
        /// normally. A disposed engine throws ObjectDisposedException, a missing libsdxl
        /// SdxlException. Progress is reported synchronously on the native thread, in order
        /// (encode, denoise 0..N, decode, save); Progress&lt;T&gt; re-posts each report to its
        /// SynchronizationContext (the thread pool when none), which can reorder them, so
        /// pass an IProgress that handles reports inline when order matters.</summary>
        public async Task<EnhancedSDXLResponse> GenerateAsync(EnhancedSDXLRequest request, IProgress<SdxlProgress> progress = null, CancellationToken cancellationToken = default(CancellationToken))
        {
            if (request == null)
            {
                throw new ArgumentNullException("request");
            }
            var requestId = Guid.NewGuid().ToString();
            // The same checks and failure as SdxlNativeService.SendEnhancedCommandAsync.
            var rejected = _transformer.ValidationFailure(request, requestId);
            if (rejected != null)
            {
                return rejected;
            }
            var json = _transformer.TransformEnhancedSDXLRequest(request, requestId);
            var responseJson = await RunAsync(json, requestId, progress, cancellationToken).ConfigureAwait(false);
            return _responseHandler.HandleEnhancedResponse(responseJson, requestId);
        }

        /// <summary>Runs a raw request JSON (an inference_request / status_request /
        /// model_load_request envelope, or a bare request) and returns the response JSON;
        /// cancellation throws OperationCanceledException as GenerateAsync does.</summary>
        public Task<string> GenerateJsonAsync(string requestJson, CancellationToken cancellationToken = default(CancellationToken))
        {
            return GenerateJsonAsync(requestJson, null, cancellationToken);
        }

        public Task<string> GenerateJsonAsync(string requestJson, IProgress<SdxlProgress> progress, CancellationToken cancellationToken)
        {
            if (requestJson == null)
            {
                throw new ArgumentNullException("requestJson");
            }
            return RunAsync(requestJson, FindRequestId(requestJson), progress, cancellationToken);
        }

        /// <summary>The engine's status (device, loaded models, requests served, last error).</summary>
        public Task<SdxlEngineStatus> GetStatusAsync(CancellationToken cancellationToken = default(CancellationToken))
        {
            return Task.Run(() =>
            {
                string json;
                using (var lease = _handle.Acquire())
                {
                    json = NativeResult.TakeString(SdxlNative.sdxl_status_json(lease.Pointer), "sdxl_status_json");
                }
                var root = Json.ParseObject(json);
                var models = new List<string>();
                foreach (var item in Json.GetArray(root, "loaded_models") ?? new List<object>())
                {
                    var name = Json.GetString(item as Dictionary<string, object>, "name");
                    if (name != null)
                    {
                        models.Add(name);
                    }
                }
                var upscalers = new List<string>();
                foreach (var item in Json.GetArray(root, "loaded_upscalers") ?? new List<object>())
                {
                    var source = Json.GetString(item as Dictionary<string, object>, "source");
                    if (source != null)
                    {
                        upscalers.Add(source);
                    }
                }
                return new SdxlEngineStatus
                {
                    Version = Json.GetString(root, "version"),
                    DeviceName = Json.GetString(root, "device_name"),
                    Dtype = Json.GetString(root, "dtype"),
                    LoadedModels = models,
                    LoadedUpscalers = upscalers,
                    RequestsServed = Json.GetLong(root, "requests_served") ?? 0,
                    LastError = Json.GetString(root, "last_error"),
                    RawJson = json,
                };
            }, cancellationToken);
        }

        /// <summary>Refuses new calls at once (ObjectDisposedException); sdxl_free runs now, or
        /// when the request still running releases the handle. An engine never disposed is
        /// freed by the handle's finalizer.</summary>
        public void Dispose()
        {
            _handle.Dispose();
        }

        /// <summary>Submits one request. A token cancelled before submission, or one that
        /// stops the request while it runs, ends the task as cancelled
        /// (OperationCanceledException, with the native CANCELLED error as the inner
        /// SdxlException); any other outcome, failures included, is the response JSON.</summary>
        private async Task<string> RunAsync(string json, string requestId, IProgress<SdxlProgress> progress, CancellationToken cancellationToken)
        {
            if (_handle.IsDisposeRequested)
            {
                throw new ObjectDisposedException("SdxlEngine");
            }
            cancellationToken.ThrowIfCancellationRequested();
            var state = new RequestState { RequestId = requestId, Progress = progress, Token = cancellationToken };
            Interlocked.Increment(ref _busy);
            string responseJson;
            try
            {
                responseJson = await Task.Run(() => RunNative(json, state)).ConfigureAwait(false);
            }
            finally
            {
                Interlocked.Decrement(ref _busy);
            }
            string nativeError;
            if (cancellationToken.IsCancellationRequested && IsCancelledResponse(responseJson, out nativeError))
            {
                // A request that finished before the cancel arrived keeps its result.
                var inner = new SdxlException(SdxlErrorCode.Cancelled, nativeError ?? "cancelled");
                throw new OperationCanceledException("The SDXL request " + (requestId ?? string.Empty) + " was cancelled", inner, cancellationToken);
            }
            return responseJson;
        }

        /// <summary>The blocking native call, on a pool thread.</summary>
        private string RunNative(string json, RequestState state)
        {
            var registered = state.RequestId != null && _inFlight.TryAdd(state.RequestId, state);
            if (state.RequestId != null)
            {
                lock (_idLock)
                {
                    int count;
                    _idsInFlight.TryGetValue(state.RequestId, out count);
                    _idsInFlight[state.RequestId] = count + 1;
                }
            }
            try
            {
                using (state.Token.Register(() => Cancel(state)))
                {
                    var bytes = SdxlNative.ToUtf8Z(json);
                    using (var lease = _handle.Acquire())
                    {
                        t_current = state;
                        try
                        {
                            return NativeResult.TakeString(SdxlNative.sdxl_generate_json(lease.Pointer, bytes), "sdxl_generate_json");
                        }
                        finally
                        {
                            t_current = null;
                        }
                    }
                }
            }
            finally
            {
                if (registered)
                {
                    RequestState removed;
                    _inFlight.TryRemove(state.RequestId, out removed);
                }
                if (state.RequestId != null)
                {
                    lock (_idLock)
                    {
                        var count = _idsInFlight[state.RequestId] - 1;
                        if (count == 0)
                        {
                            _idsInFlight.Remove(state.RequestId);
                        }
                        else
                        {
                            _idsInFlight[state.RequestId] = count;
                        }
                    }
                }
            }
        }

        private static bool IsCancelledResponse(string responseJson, out string error)
        {
            error = null;
            try
            {
                var root = Json.ParseObject(responseJson ?? string.Empty);
                error = Json.GetString(root, "error");
                return !Json.GetBool(root, "success", false)
                    && string.Equals(Json.GetString(root, "error_code"), SdxlErrorCode.Name(SdxlErrorCode.Cancelled), StringComparison.Ordinal);
            }
            catch (FormatException)
            {
                return false;
            }
        }

        /// <summary>CancellationToken → the request. The progress callback refuses to continue
        /// once the token is cancelled; sdxl_cancel_request stops the request sooner (within a
        /// step) and ends it at once while it is still queued. It names this request's id, so a
        /// cancel that arrives after the request ended finds nothing (SDXL_REQUEST_NOT_FOUND)
        /// and never reaches the next request.</summary>
        private void Cancel(RequestState state)
        {
            state.Cancelled = true;
            // An id the JSON named may be shared with another request in flight (then only the
            // progress callback cancels); an id the engine made up (learned from progress) is unique.
            var requestId = state.RequestId ?? state.NativeRequestId;
            if (requestId == null)
            {
                return;
            }
            try
            {
                using (var lease = _handle.Acquire(true))
                {
                    lock (_idLock)
                    {
                        int count;
                        if (state.RequestId == null || (_idsInFlight.TryGetValue(requestId, out count) && count == 1))
                        {
                            SdxlNative.sdxl_cancel_request(lease.Pointer, SdxlNative.ToUtf8Z(requestId));
                        }
                    }
                }
            }
            catch (ObjectDisposedException)
            {
                // The engine is gone; nothing to cancel.
            }
        }

        /// <summary>Native → managed progress. Must never throw into native code.</summary>
        private bool OnNativeProgress(IntPtr progressPointer, IntPtr userData)
        {
            try
            {
                if (progressPointer == IntPtr.Zero)
                {
                    return true;
                }
                var raw = (SdxlNative.SdxlProgress)Marshal.PtrToStructure(progressPointer, typeof(SdxlNative.SdxlProgress));
                var requestId = SdxlNative.PtrToStringUtf8(raw.request_id);
                var state = t_current;
                if (state == null && requestId != null)
                {
                    _inFlight.TryGetValue(requestId, out state);
                }
                if (state == null)
                {
                    return true;
                }
                if (state.NativeRequestId == null)
                {
                    state.NativeRequestId = requestId;
                }
                if (state.Cancelled || state.Token.IsCancellationRequested)
                {
                    return false;
                }
                if (state.Progress != null)
                {
                    state.Progress.Report(new SdxlProgress
                    {
                        RequestId = requestId,
                        Stage = (SdxlStage)raw.stage,
                        ImageIndex = (int)raw.image_index,
                        Step = (int)raw.step,
                        TotalSteps = (int)raw.total_steps,
                        ModelCalls = (int)raw.model_calls,
                        Elapsed = TimeSpan.FromMilliseconds(raw.elapsed_ms),
                    });
                }
                // A handler may have cancelled the token while reporting.
                return !(state.Cancelled || state.Token.IsCancellationRequested);
            }
            catch (Exception)
            {
                // An exception in a progress handler must not unwind through native frames.
                return true;
            }
        }

        /// <summary>The request id of a raw request JSON, when it names one.</summary>
        private static string FindRequestId(string requestJson)
        {
            try
            {
                var root = Json.ParseObject(requestJson);
                var id = Json.GetString(root, "request_id");
                if (id == null)
                {
                    // As the engine reads it: data.metadata of an envelope, metadata of a bare request.
                    var data = Json.GetObject(root, "data") ?? root;
                    id = Json.GetString(Json.GetObject(data, "metadata"), "request_id");
                }
                return id;
            }
            catch (FormatException)
            {
                return null;
            }
        }
    }
}
