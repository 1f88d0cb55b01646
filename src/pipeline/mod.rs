//! The generation pipeline: text conditioning, noise, the denoising loop, decoding.

pub mod generate;
pub mod noise;
pub mod progress;
pub mod text_conditioning;
pub mod upscale;

pub use generate::{decode_latents, generate, ControlGuidance, GeneratedBatch, Intermediates, PipelineModels, RunContext, VaeChoice};
pub use progress::{NoProgress, ProgressEvent, ProgressObserver, Stage};
