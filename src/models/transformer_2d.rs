//! `Transformer2DModel` with `BasicTransformerBlock`s (diffusers `transformer_2d.py`,
//! `attention.py`): self-attention, cross-attention on the text embeddings, GEGLU feed-forward.

use candle_core::Tensor;
use candle_nn::{LayerNorm, Module, VarBuilder};

use super::patchable::{self, PatchableConv2d, PatchableLinear};
use crate::error::Result;
use crate::ops::{self, profile, GroupNorm};

/// diffusers `Attention` as the UNet uses it: bias-free q/k/v, biased output projection.
pub struct Attention {
    to_q: PatchableLinear,
    to_k: PatchableLinear,
    to_v: PatchableLinear,
    to_out: PatchableLinear,
    heads: usize,
}

impl Attention {
    pub fn new(vb: VarBuilder, query_dim: usize, context_dim: usize, heads: usize, head_dim: usize) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: patchable::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: patchable::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: patchable::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: patchable::linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
        })
    }

    pub fn forward(&self, hidden: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(hidden);
        let q = self.to_q.forward(hidden)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        let out = ops::attention(&q, &k, &v, self.heads)?;
        Ok(self.to_out.forward(&out)?)
    }
}

/// `FeedForward` with the GEGLU activation: proj → (h, gate) → h · gelu(gate) → linear.
struct FeedForward {
    geglu_proj: PatchableLinear,
    out: PatchableLinear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            geglu_proj: patchable::linear(dim, inner * 2, vb.pp("net.0.proj"))?,
            out: patchable::linear(inner, dim, vb.pp("net.2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = ops::geglu(&self.geglu_proj.forward(x)?)?;
        Ok(self.out.forward(&gated)?)
    }
}

struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(vb: VarBuilder, dim: usize, heads: usize, head_dim: usize, context_dim: usize) -> Result<Self> {
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = (self.attn1.forward(&ops::layer_norm(&self.norm1, x)?, None)? + x)?;
        let x = (self.attn2.forward(&ops::layer_norm(&self.norm2, &x)?, Some(context))? + &x)?;
        Ok((self.ff.forward(&ops::layer_norm(&self.norm3, &x)?)? + &x)?)
    }
}

enum Projection {
    Linear(PatchableLinear),
    Conv(PatchableConv2d),
}

pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

pub struct Transformer2DConfig {
    pub channels: usize,
    pub heads: usize,
    pub depth: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub use_linear_projection: bool,
}

impl Transformer2DModel {
    pub fn new(vb: VarBuilder, config: &Transformer2DConfig) -> Result<Self> {
        let channels = config.channels;
        let head_dim = channels / config.heads;
        let inner = head_dim * config.heads;
        let projection = |name: &str, from: usize, to: usize| -> Result<Projection> {
            Ok(if config.use_linear_projection {
                Projection::Linear(patchable::linear(from, to, vb.pp(name))?)
            } else {
                Projection::Conv(patchable::conv2d(from, to, 1, Default::default(), vb.pp(name))?)
            })
        };
        let blocks = (0..config.depth)
            .map(|i| {
                BasicTransformerBlock::new(vb.pp(format!("transformer_blocks.{i}")), inner, config.heads, head_dim, config.context_dim)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::new(config.groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: projection("proj_in", channels, inner)?,
            blocks,
            proj_out: projection("proj_out", inner, channels)?,
        })
    }

    pub fn forward(&self, input: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = input.dims4()?;
        let normed = self.norm.forward(input)?;
        let to_tokens = |x: &Tensor| -> Result<Tensor> {
            let c = x.dim(1)?;
            profile::timed(profile::Category::Layout, x.device(), || Ok(x.permute((0, 2, 3, 1))?.reshape((batch, height * width, c))?))
        };
        let mut tokens = match &self.proj_in {
            Projection::Linear(proj) => proj.forward(&to_tokens(&normed)?)?,
            Projection::Conv(proj) => to_tokens(&proj.forward(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let to_image = |x: &Tensor| -> Result<Tensor> {
            let c = x.dim(2)?;
            profile::timed(profile::Category::Layout, x.device(), || Ok(x.reshape((batch, height, width, c))?.permute((0, 3, 1, 2))?.contiguous()?))
        };
        let output = match &self.proj_out {
            Projection::Linear(proj) => to_image(&proj.forward(&tokens)?)?,
            Projection::Conv(proj) => proj.forward(&to_image(&tokens)?)?,
        };
        debug_assert_eq!(output.dim(1)?, channels);
        Ok((output + input)?)
    }
}
