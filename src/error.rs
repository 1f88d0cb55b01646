//! One error type for the whole library. Every variant has a stable numeric code
//! and a stable name; both travel unchanged through the C ABI and into .NET.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// A pointer or string handed over the C ABI was NULL or not UTF-8.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request or config text is not JSON, or not the JSON we expect.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The request parsed but broke a rule; every offending field path is listed.
    #[error("validation failed: {}", .0.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))]
    Validation(Vec<FieldError>),
    #[error("model not found locally: {0}")]
    ModelNotFound(String),
    /// The weight files exist but could not be read as the model they claim to be.
    #[error("failed to load model weights: {0}")]
    ModelLoad(String),
    #[error("no model loaded: {0}")]
    NoModelLoaded(String),
    #[error("device error: {0}")]
    Device(String),
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    #[error("cancelled")]
    Cancelled,
    #[error("timed out after {0} s (counted from when the request left the queue: model load, LoRA, encoding, denoising and decoding; checked at every step)")]
    Timeout(f64),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Request fields asking for a feature this build does not have, by JSON path; the same
    /// code as `Unsupported`.
    #[error("unsupported: {}", .0.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))]
    UnsupportedFeatures(Vec<FieldError>),
    /// A bug: a panic caught at the ABI boundary or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One validation failure, addressed by the JSON path of the field (`dimensions.width`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl Error {
    /// The stable numeric code: 0 is success, errors are negative. Never renumber.
    pub fn code(&self) -> i32 {
        match self {
            Error::InvalidArgument(_) => -1,
            Error::InvalidJson(_) => -2,
            Error::Validation(_) => -3,
            Error::ModelNotFound(_) => -4,
            Error::ModelLoad(_) => -5,
            Error::NoModelLoaded(_) => -6,
            Error::Device(_) => -7,
            Error::OutOfMemory(_) => -8,
            Error::Cancelled => -9,
            Error::Timeout(_) => -10,
            Error::Io(_) => -11,
            Error::Unsupported(_) | Error::UnsupportedFeatures(_) => -12,
            Error::Internal(_) => -13,
        }
    }

    /// The stable name of the code, as it appears in `error_code` of a response.
    pub fn code_name(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::InvalidJson(_) => "INVALID_JSON",
            Error::Validation(_) => "VALIDATION_ERROR",
            Error::ModelNotFound(_) => "MODEL_NOT_FOUND",
            Error::ModelLoad(_) => "MODEL_LOAD_ERROR",
            Error::NoModelLoaded(_) => "NO_MODEL_LOADED",
            Error::Device(_) => "DEVICE_ERROR",
            Error::OutOfMemory(_) => "OUT_OF_MEMORY",
            Error::Cancelled => "CANCELLED",
            Error::Timeout(_) => "TIMEOUT",
            Error::Io(_) => "IO_ERROR",
            Error::Unsupported(_) | Error::UnsupportedFeatures(_) => "UNSUPPORTED",
            Error::Internal(_) => "INTERNAL_ERROR",
        }
    }

    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            Error::Validation(fields) | Error::UnsupportedFeatures(fields) => fields,
            _ => &[],
        }
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Validation(vec![FieldError::new(field, message)])
    }
}

impl From<candle_core::Error> for Error {
    fn from(err: candle_core::Error) -> Self {
        // candle appends a backtrace to some errors; the host wants the message.
        let full = err.to_string();
        let text = full.lines().next().unwrap_or_default().trim().to_string();
        // candle reports CUDA allocation failures as text only; recognise them so the
        // host sees OUT_OF_MEMORY rather than a generic device error.
        if text.contains("OUT_OF_MEMORY") || text.contains("out of memory") {
            Error::OutOfMemory(text)
        } else {
            Error::Device(text)
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Io(err.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The text of a panic's payload (`panic!` with a literal or with a formatted message).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
