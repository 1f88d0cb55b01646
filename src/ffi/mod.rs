//! The C ABI: every `extern "C"` function of libsdxl, nothing else. `include/sdxl.h`
//! is generated from this module by cbindgen; ownership and thread rules are
//! documented above each function and travel into the header.

mod guard;

use std::ffi::{c_char, c_void};

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
/// Cancelled by sdxl_cancel or a progress callback returning false.
pub const SDXL_ERR_CANCELLED: i32 = -9;
/// The request ran past its metadata.timeout.
pub const SDXL_ERR_TIMEOUT: i32 = -10;
/// Reading an input or writing an image failed.
pub const SDXL_ERR_IO: i32 = -11;
/// A feature this build does not have.
pub const SDXL_ERR_UNSUPPORTED: i32 = -12;
/// A bug, including a panic caught at the boundary.
pub const SDXL_ERR_INTERNAL: i32 = -13;

/// An engine: one device, its loaded models, its request queue. Opaque.
pub struct SdxlEngine {
    engine: Engine,
}

/// One progress report, valid only during the callback.
#[repr(C)]
pub struct SdxlProgress {
    /// The request's id (UTF-8, NUL-terminated).
    pub request_id: *const c_char,
    /// 0 encode, 1 denoise, 2 decode, 3 upscale, 4 save.
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
            Ok(Box::into_raw(Box::new(SdxlEngine { engine })))
        },
    )
}

/// Loads a model and keeps it resident: `{"base": "name or path"}` (also `"model_name"`,
/// and `"config"`: a diffusers folder describing a single-file checkpoint of unusual size).
/// Returns `SDXL_OK` (0) or a negative `SDXL_ERR_*` code; `sdxl_last_error()` says why.
/// Thread safety: safe to call concurrently with other calls on the same engine; it waits
/// for the request in flight.
#[no_mangle]
pub unsafe extern "C" fn sdxl_load_model(engine: *mut SdxlEngine, model_json: *const c_char) -> i32 {
    guard(
        |err| err.code(),
        || {
            let engine = engine.as_ref().ok_or_else(|| Error::InvalidArgument("engine is NULL".into()))?;
            let model_json = borrow_str(model_json, "model_json")?;
            engine.engine.load_model_json(model_json)?;
            Ok(SDXL_OK)
        },
    )
}

/// Runs one request and returns the response JSON (success or error, in the seed's shape).
/// Accepts an `inference_request`, `status_request` or `model_load_request` envelope, a bare
/// request object, or the seed's legacy flat fields. Returns NULL only when `engine` is NULL.
/// The caller owns the returned string and frees it with `sdxl_string_free`.
/// Thread safety: safe from many threads; requests on one engine run one at a time, in order.
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
            let engine = engine.as_ref().ok_or_else(|| Error::InvalidArgument("engine is NULL".into()))?;
            let request_json = borrow_str(request_json, "request_json")?;
            Ok(to_c_string(engine.engine.handle_json(request_json)))
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
            let engine = engine.as_ref().ok_or_else(|| Error::InvalidArgument("engine is NULL".into()))?;
            Ok(to_c_string(engine.engine.status().to_string()))
        },
    )
}

/// Asks the request in flight on this engine to stop; it returns `CANCELLED` within one
/// denoising step. No effect when idle. Thread safety: meant to be called from another thread.
#[no_mangle]
pub unsafe extern "C" fn sdxl_cancel(engine: *const SdxlEngine) -> i32 {
    guard(
        |err| err.code(),
        || {
            let engine = engine.as_ref().ok_or_else(|| Error::InvalidArgument("engine is NULL".into()))?;
            engine.engine.cancel();
            Ok(SDXL_OK)
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
            let engine = engine.as_ref().ok_or_else(|| Error::InvalidArgument("engine is NULL".into()))?;
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
            engine.engine.set_progress_callback(boxed);
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

/// Frees an engine and every model it holds. NULL is ignored. Must not race with other
/// calls on the same engine: the host stops issuing calls, then frees.
#[no_mangle]
pub unsafe extern "C" fn sdxl_free(engine: *mut SdxlEngine) {
    guard(
        |_| (),
        || {
            if !engine.is_null() {
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
