//! Multi-head scaled dot-product attention shared by CLIP, the UNet transformers and
//! the VAE's mid-block attention. float32 inputs are computed in float32 (torch's SDPA
//! math path); half-precision inputs stay in half precision for the matmuls, as torch's
//! fused SDPA kernels do (they accumulate in float32), which halves the score buffers.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// `softmax(q kᵀ / sqrt(d) + mask) v` for (batch, tokens, heads × head_dim) inputs.
pub fn multi_head_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, mask: Option<&Tensor>) -> Result<Tensor> {
    let (batch, q_len, inner) = q.dims3()?;
    let kv_len = k.dim(1)?;
    let head_dim = inner / heads;
    let in_dtype = q.dtype();
    let compute_dtype = if in_dtype == DType::F32 || in_dtype == DType::F64 || q.device().is_cpu() { DType::F32 } else { in_dtype };
    let split = |x: &Tensor, len: usize| -> Result<Tensor> {
        Ok(x.reshape((batch, len, heads, head_dim))?.transpose(1, 2)?.contiguous()?.to_dtype(compute_dtype)?)
    };
    let q = split(q, q_len)?;
    let k = split(k, kv_len)?;
    let v = split(v, kv_len)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let q = if compute_dtype == DType::F32 { q } else { (q * scale)? };
    let mut scores = q.matmul(&k.t()?)?;
    if compute_dtype == DType::F32 {
        scores = (scores * scale)?;
    }
    if let Some(mask) = mask {
        scores = scores.broadcast_add(&mask.to_dtype(compute_dtype)?)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v)?.to_dtype(in_dtype)?;
    Ok(out.transpose(1, 2)?.reshape((batch, q_len, inner))?)
}

/// The additive causal mask CLIP's text transformer uses (−inf above the diagonal).
pub fn causal_mask(len: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mut values = vec![0f32; len * len];
    for i in 0..len {
        for value in &mut values[i * len + i + 1..(i + 1) * len] {
            *value = f32::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(values, (len, len), device)?)
}
