//! The C ABI: every `extern "C"` function of libsdxl, nothing else. `include/sdxl.h`
//! is generated from this module by cbindgen; ownership and thread rules are
//! documented above each function and travel into the header.

mod guard;

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::engine::{Engine, ProgressCallback};
use crate::error::Error;
use crate::pipeline::ProgressEvent;
use guard::{borrow_str, guard, guard_infallible, last_error_code, last_error_ptr, to_c_string};

/// Operation succeeded.
pub const SDXL_OK: i32 = 0;
/// A pointer was NULL or a string not UTF-8.
pub const SDXL_ERR_INVALID_ARGUMENT: i32 = -1;
/// The text is not JSON, or not a JSON object.
pub const SDXL_ERR_INVALID_JSON: i32 = -2;
/// The request broke a rule; the response lists the fields.
pub const SDXL_ERR_VALIDATION: i32 = -3;
/// No file or folder for the model name (nothing is ever downloaded).
pub const SDXL_ERR_MODEL_NOT_FOUND: i32 = -4;
/// The weights exist but are not a readable SDXL model.
pub const SDXL_ERR_MODEL_LOAD: i32 = -5;
/// No model is loaded for this request.
pub const SDXL_ERR_NO_MODEL_LOADED: i32 = -6;
/// The device failed (CUDA error, unavailable device).
pub const SDXL_ERR_DEVICE: i32 = -7;
/// The device ran out of memory; the engine stays usable.
pub const SDXL_ERR_OUT_OF_MEMORY: i32 = -8;
/// Cancelled by sdxl_cancel_request, sdxl_cancel, a progress callback returning false, or sdxl_free.
pub const SDXL_ERR_CANCELLED: i32 = -9;
/// The request ran past its metadata.timeout.
pub const SDXL_ERR_TIMEOUT: i32 = -10;
/// Reading an input or writing an image failed.
pub const SDXL_ERR_IO: i32 = -11;
/// A feature this build does not have.
pub const SDXL_ERR_UNSUPPORTED: i32 = -12;
/// A bug, including a panic caught at the boundary.
pub const SDXL_ERR_INTERNAL: i32 = -13;
/// Not an error: `sdxl_cancel_request` found no running or queued request with that id
/// (it already finished, or never reached the engine), so nothing was cancelled.
pub const SDXL_REQUEST_NOT_FOUND: i32 = 1;

/// An engine: one device, its loaded models, its request queue. Opaque.
pub struct SdxlEngine {
    engine: Engine,
    calls: Arc<CallsInFlight>,
}

/// Counts the calls running on one engine, so `sdxl_free` can wait for them. Shared through
/// an `Arc`: the last call to leave still touches the count after the engine may be gone.
#[derive(Default)]
struct CallsInFlight {
    count: Mutex<usize>,
    all_left: Condvar,
}

/// Held for the duration of one call on an engine.
struct CallInFlight(Arc<CallsInFlight>);

impl CallsInFlight {
    fn enter(self: &Arc<Self>) -> CallInFlight {
        *self.count.lock() += 1;
        CallInFlight(self.clone())
    }

    fn wait_until_none(&self) {
        let mut count = self.count.lock();
        while *count > 0 {
            self.all_left.wait(&mut count);
        }
    }
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        let mut count = self.0.count.lock();
        *count -= 1;
        if *count == 0 {
            self.0.all_left.notify_all();
        }
    }
}

impl SdxlEngine {
    /// The engine behind a host's pointer, registered as in use until the guard drops.
    ///
    /// # Safety
    /// `engine` is NULL or a live pointer from `sdxl_create` (not yet passed to `sdxl_free`).
    unsafe fn enter<'a>(engine: *const SdxlEngine) -> crate::error::Result<(&'a Engine, CallInFlight)> {
        let handle = engine.as_ref().ok_or_else(|| Error::InvalidArgument("engine is NULL".into()))?;
        Ok((&handle.engine, handle.calls.enter()))
    }
}

/// One progress report, valid only during the callback.
#[repr(C)]
pub struct SdxlProgress {
    /// The request's id (UTF-8, NUL-terminated).
    pub request_id: *const c_char,
    /// 0 encode, 1 denoise, 2 decode, 3 upscale, 4 save, 5 refine (the refiner's steps, counted
    /// from 0 to its own total).
    pub stage: i32,
    pub image_index: u32,
    pub step: u32,
    pub total_steps: u32,
    /// UNet evaluations so far (two per step for second-order samplers).
    pub model_calls: u32,
    pub elapsed_ms: u64,
}

/// Called from the thread running the request. Return false to cancel it. Must not call
/// `sdxl_set_progress_callback` itself (the engine holds the callback while calling it).
pub type SdxlProgressCallback = Option<unsafe extern "C" fn(progress: *const SdxlProgress, user_data: *mut c_void) -> bool>;

/// Creates an engine from a JSON config (NULL or "" for defaults): `device` ("cpu",
/// "cuda:N", "auto"), `dtype`, `vae_dtype`, `models_dir`, `output_dir`, `limits`,
/// `torch_cpu_kernel`, `max_loaded_models`, `max_memory_gb` (budget for cached weights plus
/// a request's activations; default: the device's free memory less headroom), `cpu_offload`
/// (default placement for requests that don't set `precision.cpu_offload`), `timeout_s`
/// (seconds a request may run when it sets no `metadata.timeout`; default: no limit).
/// Limits and budgets are checked here: NULL with `sdxl_last_error()` naming the field for a
/// config later requests could not run with (e.g. `limits.size_multiple` 0, a negative budget).
/// Returns NULL on failure; `sdxl_last_error()` says why. Free with `sdxl_free`.
/// Thread safety: may be called from any thread.
#[no_mangle]
pub unsafe extern "C" fn sdxl_create(config_json: *const c_char) -> *mut SdxlEngine {
    guard(
        |_| std::ptr::null_mut(),
        || {
            let config = if config_json.is_null() { "" } else { borrow_str(config_json, "config_json")? };
            let engine = Engine::from_json(config)?;
            Ok(Box::into_raw(Box::new(SdxlEngine { engine, calls: Arc::default() })))
        },
    )
}

/// Loads a model and keeps it resident: `{"base": "name or path"}` (also `"model_name"`,
/// and `"config"`: a diffusers folder describing a single-file checkpoint of unusual size).
/// Returns `SDXL_OK` (0) or a negative `SDXL_ERR_*` code; `sdxl_last_error()` says why.
/// Thread safety: safe to call concurrently with other calls on the same engine; it queues
/// at normal priority behind the request in flight, like a request.
#[no_mangle]
pub unsafe extern "C" fn sdxl_load_model(engine: *mut SdxlEngine, model_json: *const c_char) -> i32 {
    guard(
        |err| err.code(),
        || {
            let (engine, _call) = SdxlEngine::enter(engine)?;
            let model_json = borrow_str(model_json, "model_json")?;
            engine.load_model_json(model_json)?;
            Ok(SDXL_OK)
        },
    )
}

/// Runs one request and returns the response JSON (success or error, in the seed's shape).
/// Accepts an `inference_request`, `status_request` or `model_load_request` envelope, a bare
/// request object, or the seed's legacy flat fields. Returns NULL only when `engine` is NULL.
/// The caller owns the returned string and frees it with `sdxl_string_free`.
/// The request's id is the envelope's `request_id`, else `metadata.request_id`, else one the
/// engine makes up; it is what `sdxl_cancel_request` and the progress callback use.
/// Thread safety: safe from many threads; requests on one engine run one at a time. Waiting
/// requests run in `metadata.priority` order (high, normal, low), first come first served
/// within a level; a request's own time limit starts when it leaves the queue.
#[no_mangle]
pub unsafe extern "C" fn sdxl_generate_json(engine: *mut SdxlEngine, request_json: *const c_char) -> *mut c_char {
    guard(
        |err| {
            if engine.is_null() {
                std::ptr::null_mut()
            } else {
                to_c_string(crate::api::Response::<serde_json::Value>::failure(String::new(), err, Vec::new(), 0.0).to_json())
            }
        },
        || {
            let (engine, _call) = SdxlEngine::enter(engine)?;
            let request_json = borrow_str(request_json, "request_json")?;
            Ok(to_c_string(engine.handle_json(request_json)))
        },
    )
}

/// The engine's status as JSON (device, loaded models, requests served, last error,
/// version). NULL only when `engine` is NULL. Free with `sdxl_string_free`.
/// Thread safety: safe from any thread, also while a request runs.
#[no_mangle]
pub unsafe extern "C" fn sdxl_status_json(engine: *const SdxlEngine) -> *mut c_char {
    guard(
        |_| std::ptr::null_mut(),
        || {
            let (engine, _call) = SdxlEngine::enter(engine)?;
            Ok(to_c_string(engine.status().to_string()))
        },
    )
}

/// Asks the request in flight on this engine to stop; it returns `CANCELLED` within one
/// denoising step. No effect when idle, and none on queued requests. Whatever runs when the
/// call arrives is cancelled, which may already be the next request: to cancel one request
/// only, use `sdxl_cancel_request`. Thread safety: meant to be called from another thread.
#[no_mangle]
pub unsafe extern "C" fn sdxl_cancel(engine: *const SdxlEngine) -> i32 {
    guard(
        |err| err.code(),
        || {
            let (engine, _call) = SdxlEngine::enter(engine)?;
            engine.cancel();
            Ok(SDXL_OK)
        },
    )
}

/// Cancels exactly the request with this id (see `sdxl_generate_json` for where the id comes
/// from) and nothing else. A running request returns `CANCELLED` within one denoising step; a
/// queued one (or one still being checked) returns `CANCELLED` at once, without running; a
/// model load that has started is not interrupted. Returns `SDXL_OK` (0) when such a request
/// was running or queued, `SDXL_REQUEST_NOT_FOUND` (1, not an error: `sdxl_last_error()` stays
/// "") when none was, e.g. it already finished, so a late cancel never reaches another
/// request. Requests sharing an id are all cancelled: give each its own. `SDXL_ERR_INVALID_ARGUMENT`
/// for a NULL engine or a NULL / non-UTF-8 id.
/// Thread safety: meant to be called from any thread, also from a progress callback.
#[no_mangle]
pub unsafe extern "C" fn sdxl_cancel_request(engine: *const SdxlEngine, request_id: *const c_char) -> i32 {
    guard(
        |err| err.code(),
        || {
            let (engine, _call) = SdxlEngine::enter(engine)?;
            let request_id = borrow_str(request_id, "request_id")?;
            Ok(if engine.cancel_request(request_id) { SDXL_OK } else { SDXL_REQUEST_NOT_FOUND })
        },
    )
}

struct HostCallback {
    callback: unsafe extern "C" fn(*const SdxlProgress, *mut c_void) -> bool,
    user_data: *mut c_void,
}

// SAFETY: the host promises (in the header) that callback and user_data may be used from
// the thread running a request.
unsafe impl Send for HostCallback {}

impl HostCallback {
    /// # Safety
    /// As the host promised when registering the callback.
    unsafe fn call(&self, progress: &SdxlProgress) -> bool {
        (self.callback)(progress, self.user_data)
    }
}

/// Sets (or, with a NULL callback, clears) the engine's progress callback. `user_data` is
/// passed back untouched and must stay valid until the callback is replaced or the engine freed.
/// The callback runs on the thread executing the request; returning false cancels it.
#[no_mangle]
pub unsafe extern "C" fn sdxl_set_progress_callback(engine: *mut SdxlEngine, callback: SdxlProgressCallback, user_data: *mut c_void) -> i32 {
    guard(
        |err| err.code(),
        || {
            let (engine, _call) = SdxlEngine::enter(engine)?;
            let boxed: Option<ProgressCallback> = callback.map(|callback| {
                let host = HostCallback { callback, user_data };
                Box::new(move |request_id: &str, event: &ProgressEvent| {
                    let id = std::ffi::CString::new(request_id).unwrap_or_default();
                    let progress = SdxlProgress {
                        request_id: id.as_ptr(),
                        stage: event.stage as i32,
                        image_index: event.image_index,
                        step: event.step,
                        total_steps: event.total_steps,
                        model_calls: event.model_calls,
                        elapsed_ms: event.elapsed_ms,
                    };
                    // SAFETY: the host registered this function for exactly this call.
                    unsafe { host.call(&progress) }
                }) as ProgressCallback
            });
            engine.set_progress_callback(boxed);
            Ok(SDXL_OK)
        },
    )
}

/// Receives one log line: level (0 error, 1 warn, 2 info, 3 debug, 4 trace), target and
/// message (UTF-8, valid only during the call). May be called from any thread. Must not
/// call `sdxl_set_log_callback` itself.
pub type SdxlLogCallback = Option<unsafe extern "C" fn(level: u32, target: *const c_char, message: *const c_char, user_data: *mut c_void)>;

struct HostLogger {
    callback: unsafe extern "C" fn(u32, *const c_char, *const c_char, *mut c_void),
    user_data: *mut c_void,
}

// SAFETY: the host promises (in the header) the callback is callable from any thread.
unsafe impl Send for HostLogger {}
unsafe impl Sync for HostLogger {}

impl HostLogger {
    fn log(&self, level: u32, target: &str, message: &str) {
        let target = std::ffi::CString::new(target.replace('\0', " ")).unwrap_or_default();
        let message = std::ffi::CString::new(message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: as registered by the host.
        unsafe { (self.callback)(level, target.as_ptr(), message.as_ptr(), self.user_data) }
    }
}

/// Forwards the library's log lines at `max_level` and more severe (0 error to 4 trace) to
/// `callback`, for every engine of the process; NULL stops forwarding. The library never
/// writes to stdout/stderr itself. `user_data` must stay valid until the callback is replaced.
/// Thread safety: may be called from any thread; the callback may run on any thread.
#[no_mangle]
pub unsafe extern "C" fn sdxl_set_log_callback(callback: SdxlLogCallback, max_level: u32, user_data: *mut c_void) -> i32 {
    guard(
        |err| err.code(),
        || {
            let sink = callback.map(|callback| {
                let logger = HostLogger { callback, user_data };
                Box::new(move |level: u32, target: &str, message: &str| logger.log(level, target, message)) as crate::engine::logging::LogSink
            });
            crate::engine::logging::set_sink(sink, max_level);
            Ok(SDXL_OK)
        },
    )
}

/// Frees an engine and every model it holds. NULL is ignored.
/// Thread safety: may be called while other threads are inside calls on this engine. The
/// running request and every queued one are cancelled (their `sdxl_generate_json` returns a
/// `CANCELLED` response; a model load that has started runs to its end), and `sdxl_free`
/// waits until every call on the engine has returned before it frees: about one denoising
/// step, plus whatever load is under way. The host must not start a new call on the engine
/// once it has called `sdxl_free` (the pointer may already dangle), nor call `sdxl_free` from
/// a progress callback of the same engine (it would wait for itself).
#[no_mangle]
pub unsafe extern "C" fn sdxl_free(engine: *mut SdxlEngine) {
    guard(
        |_| (),
        || {
            if let Some(handle) = engine.as_ref() {
                handle.engine.shut_down();
                handle.calls.wait_until_none();
                drop(Box::from_raw(engine));
            }
            Ok(())
        },
    )
}

/// Frees a string returned by this library. NULL is ignored. Never pass other strings.
#[no_mangle]
pub unsafe extern "C" fn sdxl_string_free(text: *mut c_char) {
    guard_infallible((), || {
        if !text.is_null() {
            drop(std::ffi::CString::from_raw(text));
        }
    })
}

/// The calling thread's last error message ("" if the last call succeeded). Owned by the
/// library; valid until the next call on this thread. Never NULL.
#[no_mangle]
pub extern "C" fn sdxl_last_error() -> *const c_char {
    guard_infallible(EMPTY.as_ptr() as *const c_char, last_error_ptr)
}

/// What `sdxl_last_error` returns if reading the message itself failed.
const EMPTY: &[u8] = b"\0";

/// The calling thread's last error code (`SDXL_OK` if the last call succeeded), the
/// number matching `sdxl_last_error()`'s text, e.g. why `sdxl_create` returned NULL.
#[no_mangle]
pub extern "C" fn sdxl_last_error_code() -> i32 {
    guard_infallible(SDXL_ERR_INTERNAL, last_error_code)
}

/// The version of the library actually loaded, e.g. "0.1.0". Static; never NULL.
#[no_mangle]
pub extern "C" fn sdxl_version() -> *const c_char {
    guard_infallible(EMPTY.as_ptr() as *const c_char, || concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char)
}
