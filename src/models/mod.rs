//! The networks of SDXL, one per file, named after diffusers' modules so weights map one-to-one.

pub mod attention;
pub mod autoencoder_kl;
pub mod clip_text;
pub mod controlnet;
pub mod embeddings;
pub mod esrgan;
pub mod offload;
pub mod patchable;
pub mod resnet;
pub mod transformer_2d;
pub mod unet_2d_condition;
pub mod unet_blocks;
pub mod vae_tiling;

pub use autoencoder_kl::{AutoencoderKL, VaeConfig};
pub use clip_text::{ClipTextConfig, ClipTextTransformer};
pub use controlnet::{ControlNetConfig, ControlNetModel};
pub use unet_2d_condition::{UNet2DConditionModel, UNetConditioning, UNetConfig};
pub use vae_tiling::VaeTiling;
