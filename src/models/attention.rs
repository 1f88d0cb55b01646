//! Multi-head scaled dot-product attention shared by CLIP, the UNet transformers and
//! the VAE's mid-block attention. float32 inputs are computed in float32 (torch's SDPA
//! math path); half-precision inputs stay in half precision for the matmuls, as torch's
//! fused SDPA kernels do (they accumulate in float32), which halves the score buffers.

use candle_core::{DType, Tensor};

use crate::error::Result;

pub(crate) const SCORE_CHUNK_BYTES: usize = 256 << 20;

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
    let mask = match mask {
        Some(mask) => Some(mask.to_dtype(compute_dtype)?),
        None => None,
    };
    let kt = k.t()?;
    // Each query row's softmax is independent, so long sequences (the VAE's 16384-token
    // attention at 1024², the UNet's 4096-token level) run in query chunks whose score
    // matrices stay under SCORE_CHUNK_BYTES instead of materialising all of them at once.
    let score_bytes = batch * heads * q_len * kv_len * compute_dtype.size_in_bytes();
    let chunks = score_bytes.div_ceil(SCORE_CHUNK_BYTES).clamp(1, q_len);
    let rows_per_chunk = q_len.div_ceil(chunks);
    let mut outputs = Vec::with_capacity(chunks);
    let mut start = 0;
    while start < q_len {
        let rows = rows_per_chunk.min(q_len - start);
        let q_rows = if chunks == 1 { q.clone() } else { q.narrow(2, start, rows)? };
        let mut scores = q_rows.matmul(&kt)?;
        if compute_dtype == DType::F32 {
            scores = (scores * scale)?;
        }
        if let Some(mask) = &mask {
            let mask_rows = if chunks == 1 { mask.clone() } else { mask.narrow(0, start, rows)? };
            scores = scores.broadcast_add(&mask_rows)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        outputs.push(probs.matmul(&v)?);
        start += rows;
    }
    let out = if outputs.len() == 1 { outputs.remove(0) } else { Tensor::cat(&outputs, 2)? };
    let out = out.to_dtype(in_dtype)?;
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
