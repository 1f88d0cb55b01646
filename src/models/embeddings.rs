//! Sinusoidal timestep features and the MLP that embeds them (diffusers `embeddings.py`:
//! `get_timestep_embedding`, `Timesteps`, `TimestepEmbedding`).

use candle_core::{DType, Tensor};
use candle_nn::{Module, VarBuilder};

use super::patchable::{self, PatchableLinear};

use crate::error::Result;

/// `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift)`, float32 as torch.
pub fn timestep_features(timesteps: &Tensor, dim: usize, flip_sin_to_cos: bool, freq_shift: f64) -> Result<Tensor> {
    let half = dim / 2;
    let log_max_period = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (log_max_period * i as f32 / (half as f32 - freq_shift as f32)).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), timesteps.device())?;
    let args = timesteps.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let features = if flip_sin_to_cos { Tensor::cat(&[cos, sin], 1)? } else { Tensor::cat(&[sin, cos], 1)? };
    if dim % 2 == 1 {
        return Ok(features.pad_with_zeros(1, 0, 1)?);
    }
    Ok(features)
}

/// `TimestepEmbedding`: linear_1 → SiLU → linear_2.
pub struct TimestepEmbedding {
    linear_1: PatchableLinear,
    linear_2: PatchableLinear,
}

impl TimestepEmbedding {
    pub fn new(vb: VarBuilder, in_channels: usize, time_embed_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: patchable::linear(in_channels, time_embed_dim, vb.pp("linear_1"))?,
            linear_2: patchable::linear(time_embed_dim, time_embed_dim, vb.pp("linear_2"))?,
        })
    }

    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        Ok(self.linear_2.forward(&self.linear_1.forward(features)?.silu()?)?)
    }
}
