//! The one guard every export runs in: panics are caught and become errors, the
//! thread's last error is recorded, and C strings are checked before use.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use crate::error::{Error, Result};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static LAST_ERROR_CODE: Cell<i32> = const { Cell::new(0) };
}

pub fn set_last_error(code: i32, message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = text);
    LAST_ERROR_CODE.with(|slot| slot.set(code));
}

pub fn clear_last_error() {
    LAST_ERROR.with(|slot| *slot.borrow_mut() = CString::default());
    LAST_ERROR_CODE.with(|slot| slot.set(0));
}

pub fn last_error_code() -> i32 {
    LAST_ERROR_CODE.with(|slot| slot.get())
}

/// Pointer to this thread's last error text; valid until this thread's next call.
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ptr())
}

thread_local! {
    static INSIDE_GUARD: Cell<bool> = const { Cell::new(false) };
}

/// Exports running now, on any thread: a panic on a thread the library started for a call
/// (candle's worker threads, the kernel-compile threads) happens while one runs.
static ACTIVE_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Panics inside an export must not print to the host's stderr: their message goes to the
/// log callback and the last error. Panics elsewhere in the process keep the previous hook.
fn install_quiet_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !INSIDE_GUARD.with(|inside| inside.get()) && ACTIVE_CALLS.load(Ordering::SeqCst) == 0 {
                previous(info);
                return;
            }
            let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            let payload = crate::error::panic_message(info.payload());
            tracing::error!("panic{location}: {payload}");
        }));
    });
}

/// Runs `body`; on error or panic records the last error and returns `on_error(code)`.
pub fn guard<T>(on_error: impl FnOnce(&Error) -> T, body: impl FnOnce() -> Result<T>) -> T {
    clear_last_error();
    let err = match catch_quietly(body) {
        Ok(Ok(value)) => return value,
        Ok(Err(err)) => err,
        Err(payload) => {
            let text = crate::error::panic_message(payload.as_ref());
            Error::Internal(format!("panic caught at the C ABI boundary: {text}"))
        }
    };
    set_last_error(err.code(), &err.to_string());
    on_error(&err)
}

/// For the exports that cannot fail and must not touch the last error (`sdxl_last_error`,
/// `sdxl_version`, `sdxl_string_free`): a panic still never unwinds into the host; it gives
/// `fallback`.
pub fn guard_infallible<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_quietly(body).unwrap_or(fallback)
}

/// Runs `body` as an export: a panic is caught, and its message goes to the log instead of
/// the host's stderr (the hook checks the marks set here).
fn catch_quietly<T>(body: impl FnOnce() -> T) -> std::thread::Result<T> {
    install_quiet_panic_hook();
    let was_inside = INSIDE_GUARD.with(|inside| inside.replace(true));
    ACTIVE_CALLS.fetch_add(1, Ordering::SeqCst);
    let outcome = catch_unwind(AssertUnwindSafe(body));
    ACTIVE_CALLS.fetch_sub(1, Ordering::SeqCst);
    INSIDE_GUARD.with(|inside| inside.set(was_inside));
    outcome
}

/// Borrows a C string argument: NULL and invalid UTF-8 are errors naming the argument.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that outlives the call.
pub unsafe fn borrow_str<'a>(ptr: *const c_char, argument: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::InvalidArgument(format!("{argument} is NULL")));
    }
    CStr::from_ptr(ptr).to_str().map_err(|e| Error::InvalidArgument(format!("{argument} is not valid UTF-8: {e}")))
}

/// Hands a Rust string to C; the host frees it with `sdxl_string_free`.
pub fn to_c_string(text: String) -> *mut c_char {
    CString::new(text.replace('\0', "\\u0000")).map(CString::into_raw).unwrap_or(std::ptr::null_mut())
}
