//! The UNet's down, mid and up blocks (diffusers `unet_2d_blocks.py`): `DownBlock2D`,
//! `CrossAttnDownBlock2D`, `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`, `UpBlock2D`.
//! A down block with no transformer depth is a plain `DownBlock2D`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use super::transformer_2d::{Transformer2DConfig, Transformer2DModel};
use crate::error::Result;

/// What every block needs to know about its attention layers.
#[derive(Clone, Copy)]
pub struct AttentionSpec {
    pub heads: usize,
    pub depth: usize,
    pub context_dim: usize,
    pub use_linear_projection: bool,
}

pub struct BlockSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub temb_channels: usize,
    pub num_layers: usize,
    pub groups: usize,
    pub eps: f64,
    /// None: no transformers (`DownBlock2D` / `UpBlock2D`).
    pub attention: Option<AttentionSpec>,
}

fn transformer(vb: VarBuilder, channels: usize, groups: usize, attention: AttentionSpec) -> Result<Transformer2DModel> {
    Transformer2DModel::new(
        vb,
        &Transformer2DConfig {
            channels,
            heads: attention.heads,
            depth: attention.depth,
            context_dim: attention.context_dim,
            groups,
            use_linear_projection: attention.use_linear_projection,
        },
    )
}

pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub fn new(vb: VarBuilder, spec: &BlockSpec, add_downsample: bool) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..spec.num_layers {
            let in_channels = if i == 0 { spec.in_channels } else { spec.out_channels };
            resnets.push(ResnetBlock2D::new(
                vb.pp(format!("resnets.{i}")),
                in_channels,
                spec.out_channels,
                Some(spec.temb_channels),
                spec.groups,
                spec.eps,
            )?);
            if let Some(attention) = spec.attention {
                attentions.push(transformer(vb.pp(format!("attentions.{i}")), spec.out_channels, spec.groups, attention)?);
            }
        }
        let downsampler =
            if add_downsample { Some(Downsample2D::new(vb.pp("downsamplers.0"), spec.out_channels, false)?) } else { None };
        Ok(Self { resnets, attentions, downsampler })
    }

    /// Returns the block output and every intermediate state the up path concatenates.
    pub fn forward(&self, input: &Tensor, temb: &Tensor, context: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let mut hidden = input.clone();
        let mut skips = Vec::new();
        for (i, resnet) in self.resnets.iter().enumerate() {
            hidden = resnet.forward(&hidden, Some(temb))?;
            if let Some(attention) = self.attentions.get(i) {
                hidden = attention.forward(&hidden, context)?;
            }
            skips.push(hidden.clone());
        }
        if let Some(downsampler) = &self.downsampler {
            hidden = downsampler.forward(&hidden)?;
            skips.push(hidden.clone());
        }
        Ok((hidden, skips))
    }
}

pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, channels: usize, temb_channels: usize, groups: usize, eps: f64, attention: AttentionSpec) -> Result<Self> {
        let resnet = |i: usize| ResnetBlock2D::new(vb.pp(format!("resnets.{i}")), channels, channels, Some(temb_channels), groups, eps);
        Ok(Self {
            resnets: vec![resnet(0)?, resnet(1)?],
            attentions: vec![transformer(vb.pp("attentions.0"), channels, groups, attention)?],
        })
    }

    pub fn forward(&self, input: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut hidden = self.resnets[0].forward(input, Some(temb))?;
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            hidden = attention.forward(&hidden, context)?;
            hidden = resnet.forward(&hidden, Some(temb))?;
        }
        Ok(hidden)
    }
}

pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// `spec.in_channels` is the channel count of the deepest skip this block consumes,
    /// `prev_output_channels` what the previous up block (or the mid block) produced.
    pub fn new(vb: VarBuilder, spec: &BlockSpec, prev_output_channels: usize, add_upsample: bool) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..spec.num_layers {
            let skip_channels = if i == spec.num_layers - 1 { spec.in_channels } else { spec.out_channels };
            let resnet_in = if i == 0 { prev_output_channels } else { spec.out_channels };
            resnets.push(ResnetBlock2D::new(
                vb.pp(format!("resnets.{i}")),
                resnet_in + skip_channels,
                spec.out_channels,
                Some(spec.temb_channels),
                spec.groups,
                spec.eps,
            )?);
            if let Some(attention) = spec.attention {
                attentions.push(transformer(vb.pp(format!("attentions.{i}")), spec.out_channels, spec.groups, attention)?);
            }
        }
        let upsampler = if add_upsample { Some(Upsample2D::new(vb.pp("upsamplers.0"), spec.out_channels)?) } else { None };
        Ok(Self { resnets, attentions, upsampler })
    }

    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` are consumed last-first; `upsample_size` forces the output size when the
    /// latent was not divisible by the UNet's overall down factor.
    pub fn forward(
        &self,
        input: &Tensor,
        skips: &mut Vec<Tensor>,
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut hidden = input.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().ok_or_else(|| crate::error::Error::Internal("UNet skip connections exhausted".into()))?;
            hidden = Tensor::cat(&[&hidden, &skip], 1)?;
            hidden = resnet.forward(&hidden, Some(temb))?;
            if let Some(attention) = self.attentions.get(i) {
                hidden = attention.forward(&hidden, context)?;
            }
        }
        if let Some(upsampler) = &self.upsampler {
            hidden = upsampler.forward(&hidden, upsample_size)?;
        }
        Ok(hidden)
    }
}
