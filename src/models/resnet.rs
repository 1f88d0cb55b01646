//! `ResnetBlock2D`, `Downsample2D` and `Upsample2D` (diffusers `resnet.py`,
//! `downsampling.py`, `upsampling.py`), shared by the UNet and the VAE.

use candle_core::Tensor;
use candle_nn::{Conv2dConfig, Module, VarBuilder};

use super::patchable::{self, PatchableConv2d, PatchableLinear};

use crate::error::Result;
use crate::ops::GroupNorm;

pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: PatchableConv2d,
    time_emb_proj: Option<PatchableLinear>,
    norm2: GroupNorm,
    conv2: PatchableConv2d,
    conv_shortcut: Option<PatchableConv2d>,
}

pub fn conv3x3(vb: VarBuilder, in_channels: usize, out_channels: usize, stride: usize, padding: usize) -> Result<PatchableConv2d> {
    let config = Conv2dConfig { padding, stride, ..Default::default() };
    patchable::conv2d(in_channels, out_channels, 3, config, vb)
}

pub fn conv1x1(vb: VarBuilder, in_channels: usize, out_channels: usize) -> Result<PatchableConv2d> {
    patchable::conv2d(in_channels, out_channels, 1, Default::default(), vb)
}

impl ResnetBlock2D {
    /// `temb_channels` is None for the VAE, whose resnets take no time embedding.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(groups, in_channels, eps, vb.pp("norm1"))?,
            conv1: conv3x3(vb.pp("conv1"), in_channels, out_channels, 1, 1)?,
            time_emb_proj: match temb_channels {
                Some(t) => Some(patchable::linear(t, out_channels, vb.pp("time_emb_proj"))?),
                None => None,
            },
            norm2: GroupNorm::new(groups, out_channels, eps, vb.pp("norm2"))?,
            conv2: conv3x3(vb.pp("conv2"), out_channels, out_channels, 1, 1)?,
            conv_shortcut: if in_channels != out_channels {
                Some(conv1x1(vb.pp("conv_shortcut"), in_channels, out_channels)?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, input: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let mut hidden = self.conv1.forward(&self.norm1.forward_silu(input)?)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let time = proj.forward(&temb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
            hidden = hidden.broadcast_add(&time)?;
        }
        let hidden = self.conv2.forward(&self.norm2.forward_silu(&hidden)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(input)?,
            None => input.clone(),
        };
        Ok((shortcut + hidden)?)
    }
}

/// Stride-2 3×3 convolution. The VAE encoder's variant has `padding=0` and pads the
/// right and bottom edges by one first (diffusers `Downsample2D` with padding 0).
pub struct Downsample2D {
    conv: PatchableConv2d,
    asymmetric_padding: bool,
}

impl Downsample2D {
    pub fn new(vb: VarBuilder, channels: usize, asymmetric_padding: bool) -> Result<Self> {
        let padding = if asymmetric_padding { 0 } else { 1 };
        Ok(Self { conv: conv3x3(vb.pp("conv"), channels, channels, 2, padding)?, asymmetric_padding })
    }

    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        if self.asymmetric_padding {
            let padded = input.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            return Ok(self.conv.forward(&padded)?);
        }
        Ok(self.conv.forward(input)?)
    }
}

/// Nearest-neighbour ×2 (or to an explicit size, for latents not divisible by the
/// UNet's total down factor) followed by a 3×3 convolution.
pub struct Upsample2D {
    conv: PatchableConv2d,
}

impl Upsample2D {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self { conv: conv3x3(vb.pp("conv"), channels, channels, 1, 1)? })
    }

    pub fn forward(&self, input: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = input.dims4()?;
        let (target_h, target_w) = size.unwrap_or((2 * h, 2 * w));
        let upsampled = if target_h == 2 * h && target_w == 2 * w {
            input.upsample_nearest2d(target_h, target_w)?
        } else {
            nearest_resize(input, target_h, target_w)?
        };
        Ok(self.conv.forward(&upsampled)?)
    }
}

/// torch's `interpolate(mode="nearest", size=...)`: source index = floor(dst × in / out).
fn nearest_resize(input: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = input.dims4()?;
    let rows: Vec<u32> = (0..out_h).map(|i| ((i as f64 * h as f64 / out_h as f64).floor() as usize).min(h - 1) as u32).collect();
    let cols: Vec<u32> = (0..out_w).map(|j| ((j as f64 * w as f64 / out_w as f64).floor() as usize).min(w - 1) as u32).collect();
    let rows = Tensor::from_vec(rows, out_h, input.device())?;
    let cols = Tensor::from_vec(cols, out_w, input.device())?;
    Ok(input.index_select(&rows, 2)?.index_select(&cols, 3)?)
}
