//! What crosses the boundary: request and response JSON, defaults, validation.

pub mod envelope;
pub mod request;
pub mod response;
pub mod validate;

pub use envelope::{normalize_legacy_fields, parse_message, Message};
pub use request::GenerationRequest;
pub use response::{GeneratedImage, GenerationData, ProcessingMetrics, Response, ServedMetadata, StageTimes};
pub use validate::{parse_request, plan_request, GenerationPlan, ImageFormat, Limits};
