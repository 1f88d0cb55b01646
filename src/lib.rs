//! sdxl-native: Stable Diffusion XL in-process, equal to diffusers, behind a C ABI.
//!
//! The path of one request: `ffi` (C ABI) → `engine` (model cache, dispatch) → `api`
//! (JSON contract, validation) → `lora` (the request's adapters fused into the resident model)
//! → `pipeline` (conditioning, denoising, decoding) over `models` (the networks), `loader`
//! (weight files), `schedulers`, `tokenizer`, `rng`, `image`. `ops` picks each op's kernel
//! by device: our fused CUDA kernels (`cuda`) or plain candle.

pub mod api;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod image;
pub mod loader;
pub mod lora;
pub mod models;
pub mod ops;
pub mod pipeline;
pub mod rng;
pub mod schedulers;
pub mod tokenizer;

pub use engine::{Engine, EngineConfig};
pub use error::{Error, Result};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
