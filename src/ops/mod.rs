//! The operations the networks are made of where the fast way differs by device: on CUDA our
//! fused kernels (`crate::cuda`), elsewhere the plain candle ops the CPU parity was proven
//! with. Model files call these and never mention a device.
//!
//! `set_fused_kernels(false)` makes CUDA take the plain candle path too, so the GPU bench can
//! check each kernel against it in one process; `profile` times each kind of op.

pub mod profile;

use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "cuda")]
use candle_core::DType;
#[cfg(feature = "cuda")]
use candle_core::Device;
use candle_core::{Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::error::Result;
use profile::{timed, Category};

static FUSED_KERNELS: AtomicBool = AtomicBool::new(true);

/// Whether CUDA tensors use our fused kernels (default) or candle's plain ops.
pub fn set_fused_kernels(enabled: bool) {
    FUSED_KERNELS.store(enabled, Ordering::Relaxed);
}

pub fn fused_kernels() -> bool {
    FUSED_KERNELS.load(Ordering::Relaxed)
}

#[cfg(feature = "cuda")]
fn fused_on(device: &Device) -> bool {
    device.is_cuda() && fused_kernels()
}

/// `nn.GroupNorm` (diffusers' resnets, transformers, VAE), optionally followed by SiLU.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct GroupNorm {
    plain: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
        let plain = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(Self { plain, weight, bias, groups, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }

    /// GroupNorm then SiLU, the pair every resnet and output head runs.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        timed(Category::GroupNorm, x.device(), || {
            #[cfg(feature = "cuda")]
            if fused_on(x.device()) && x.dtype() == self.weight.dtype() {
                let op = crate::cuda::GroupNormSilu { groups: self.groups, eps: self.eps as f32, silu };
                return Ok(x.contiguous()?.apply_op3_no_bwd(&self.weight, &self.bias, &op)?);
            }
            let normed = self.plain.forward(x)?;
            Ok(if silu { normed.silu()? } else { normed })
        })
    }
}

/// Multi-head attention without a mask for `(batch, tokens, heads · head_dim)` projections.
/// On CUDA with head_dim 64 in float16/bfloat16 (all of the SDXL UNet), one fused kernel
/// reads the projections in place; otherwise `models::attention::multi_head_attention`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    timed(Category::Attention, q.device(), || {
        #[cfg(feature = "cuda")]
        if fused_on(q.device()) && matches!(q.dtype(), DType::F16 | DType::BF16) {
            let (batch, q_len, inner) = q.dims3()?;
            let kv_len = k.dim(1)?;
            if inner == heads * crate::cuda::ATTENTION_HEAD_DIM && k.dtype() == q.dtype() && v.dtype() == q.dtype() {
                let head_dim = inner / heads;
                let split = |x: &Tensor, len: usize| x.contiguous()?.reshape((batch, len, heads, head_dim));
                let op = crate::cuda::FlashAttention { scale: 1.0 / (head_dim as f32).sqrt() };
                let out = split(q, q_len)?.apply_op3_no_bwd(&split(k, kv_len)?, &split(v, kv_len)?, &op)?;
                return Ok(out.reshape((batch, q_len, inner))?);
            }
        }
        crate::models::attention::multi_head_attention(q, k, v, heads, None)
    })
}

/// diffusers' GEGLU on a projection whose last dim is `[hidden | gate]`: hidden · gelu_erf(gate).
pub fn geglu(projected: &Tensor) -> Result<Tensor> {
    timed(Category::Geglu, projected.device(), || {
        #[cfg(feature = "cuda")]
        if fused_on(projected.device()) {
            return Ok(projected.contiguous()?.apply_op1_no_bwd(&crate::cuda::Geglu)?);
        }
        let halves = projected.chunk(2, D::Minus1)?;
        // diffusers' GELU here is the exact (erf) one, not the tanh approximation.
        Ok((&halves[0] * halves[1].gelu_erf()?)?)
    })
}

/// `conv2d(x, weight) + bias` through cuDNN with a cached algorithm per shape (CUDA builds
/// with the `cudnn` feature). None: this device or build runs candle's convolution instead.
pub fn cudnn_conv2d(x: &Tensor, weight: &Tensor, bias: &Tensor, padding: usize, stride: usize) -> Option<candle_core::Result<Tensor>> {
    #[cfg(feature = "cudnn")]
    if fused_on(x.device()) && x.dtype() == weight.dtype() && bias.dtype() == weight.dtype() {
        let op = crate::cuda::Convolution { padding, stride };
        let run = || x.contiguous()?.apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op);
        return Some(run());
    }
    let _ = (x, weight, bias, padding, stride);
    None
}

/// `nn.Linear` over the last dim: on CUDA in float16/bfloat16 one cuBLASLt GEMM with the bias
/// in its epilogue, elsewhere candle's `Linear` (GEMM, then a broadcast add).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    timed(Category::Linear, x.device(), || {
        #[cfg(feature = "cuda")]
        if fused_on(x.device()) && matches!(x.dtype(), DType::F16 | DType::BF16) && weight.dtype() == x.dtype() && bias.is_none_or(|b| b.dtype() == x.dtype()) {
            let mut dims = x.dims().to_vec();
            let inner = dims.pop().unwrap_or(0);
            let rows: usize = dims.iter().product();
            let flat = x.contiguous()?.reshape((rows, inner))?;
            let out = match bias {
                Some(bias) => flat.apply_op3_no_bwd(weight, bias, &crate::cuda::Linear)?,
                None => flat.apply_op2_no_bwd(weight, &crate::cuda::LinearNoBias)?,
            };
            dims.push(weight.dim(0)?);
            return out.reshape(dims);
        }
        candle_nn::Linear::new(weight.clone(), bias.cloned()).forward(x)
    })
}

/// LayerNorm (candle's fused kernel on every device), timed.
pub fn layer_norm(norm: &candle_nn::LayerNorm, x: &Tensor) -> Result<Tensor> {
    timed(Category::LayerNorm, x.device(), || Ok(norm.forward(x)?))
}
