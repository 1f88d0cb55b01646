//! `ControlNetModel` for SDXL (diffusers `models/controlnets/controlnet.py`): a copy of the
//! UNet's encoder half (time and text-time embedding, down blocks, mid block) whose input is
//! the latents plus an embedding of the control image, and whose outputs, through zero-initialised
//! 1×1 convolutions, are residuals added to the UNet's skips and mid block.

use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};
use serde::Deserialize;

use super::patchable::PatchableConv2d;
use super::resnet::{conv1x1, conv3x3};
use super::unet_2d_condition::{build_encoder, AdditionalResiduals, TimeTextEmbedding, UNetConditioning, UNetConfig, UNetEncoder};
use crate::error::{Error, Result};

/// `controlnet/config.json`: the UNet fields it shares (same names) plus its own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ControlNetConfig {
    #[serde(flatten)]
    pub unet: UNetConfig,
    pub conditioning_channels: usize,
    pub conditioning_embedding_out_channels: Vec<usize>,
    /// "rgb" or "bgr": the order the control image's channels are given in.
    pub controlnet_conditioning_channel_order: String,
    /// Residuals averaged over the image (shuffle-style ControlNets).
    pub global_pool_conditions: bool,
}

impl Default for ControlNetConfig {
    fn default() -> Self {
        Self {
            unet: UNetConfig::sdxl_base(),
            conditioning_channels: 3,
            conditioning_embedding_out_channels: vec![16, 32, 96, 256],
            controlnet_conditioning_channel_order: "rgb".into(),
            global_pool_conditions: false,
        }
    }
}

impl ControlNetConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let mut config: Self = serde_json::from_str(text).map_err(|e| Error::ModelLoad(format!("controlnet config.json: {e}")))?;
        // A ControlNet has no up blocks; the UNet checks want them mirrored from the down blocks.
        config.unet.up_block_types = config.unet.down_block_types.iter().rev().map(|kind| kind.replace("Down", "Up")).collect();
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        self.unet.check()?;
        if self.conditioning_embedding_out_channels.is_empty() || self.conditioning_channels == 0 {
            return Err(Error::ModelLoad("controlnet config.json: empty conditioning_embedding_out_channels or zero conditioning_channels".into()));
        }
        if !matches!(self.controlnet_conditioning_channel_order.as_str(), "rgb" | "bgr") {
            return Err(Error::ModelLoad(format!(
                "controlnet config.json: controlnet_conditioning_channel_order {:?} (expected rgb or bgr)",
                self.controlnet_conditioning_channel_order
            )));
        }
        Ok(())
    }

    /// Pixels per latent cell the conditioning embedding reduces the control image by.
    pub fn downscale_factor(&self) -> usize {
        1 << (self.conditioning_embedding_out_channels.len() - 1)
    }
}

/// `ControlNetConditioningEmbedding`: the control image to the UNet's first feature width at
/// latent resolution (3×3 convolutions, every second one of stride 2, SiLU between).
struct ConditioningEmbedding {
    conv_in: PatchableConv2d,
    blocks: Vec<PatchableConv2d>,
    conv_out: PatchableConv2d,
}

impl ConditioningEmbedding {
    fn new(vb: VarBuilder, config: &ControlNetConfig, out_channels: usize) -> Result<Self> {
        let widths = &config.conditioning_embedding_out_channels;
        let mut blocks = Vec::new();
        for (i, pair) in widths.windows(2).enumerate() {
            blocks.push(conv3x3(vb.pp(format!("blocks.{}", 2 * i)), pair[0], pair[0], 1, 1)?);
            blocks.push(conv3x3(vb.pp(format!("blocks.{}", 2 * i + 1)), pair[0], pair[1], 2, 1)?);
        }
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), config.conditioning_channels, widths[0], 1, 1)?,
            blocks,
            conv_out: conv3x3(vb.pp("conv_out"), widths[widths.len() - 1], out_channels, 1, 1)?,
        })
    }

    fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let mut embedding = candle_nn::ops::silu(&self.conv_in.forward(image)?)?;
        for block in &self.blocks {
            embedding = candle_nn::ops::silu(&block.forward(&embedding)?)?;
        }
        Ok(self.conv_out.forward(&embedding)?)
    }
}

pub struct ControlNetModel {
    config: ControlNetConfig,
    embedding: TimeTextEmbedding,
    encoder: UNetEncoder,
    cond_embedding: ConditioningEmbedding,
    /// One zero convolution per UNet skip, then the mid block's.
    down_projections: Vec<PatchableConv2d>,
    mid_projection: PatchableConv2d,
}

impl ControlNetModel {
    pub fn new(vb: VarBuilder, config: &ControlNetConfig) -> Result<Self> {
        config.check()?;
        let unet = &config.unet;
        let encoder = build_encoder(&vb, unet)?;
        let mut down_projections = Vec::new();
        for (index, channels) in encoder.skip_channels(unet).into_iter().enumerate() {
            down_projections.push(conv1x1(vb.pp(format!("controlnet_down_blocks.{index}")), channels, channels)?);
        }
        let last = unet.block_out_channels[unet.block_out_channels.len() - 1];
        Ok(Self {
            config: config.clone(),
            embedding: TimeTextEmbedding::new(&vb, unet)?,
            cond_embedding: ConditioningEmbedding::new(vb.pp("controlnet_cond_embedding"), config, unet.block_out_channels[0])?,
            encoder,
            down_projections,
            mid_projection: conv1x1(vb.pp("controlnet_mid_block"), last, last)?,
        })
    }

    pub fn config(&self) -> &ControlNetConfig {
        &self.config
    }

    /// The residuals for one denoising call: `sample` and `cond` exactly as the UNet gets them
    /// (CFG rows included), `control` the control image in [0, 1], (rows, 3, H, W) at the
    /// output size, in the model's dtype. Every residual is multiplied by `scale`.
    pub fn forward(&self, sample: &Tensor, timestep: f64, cond: &UNetConditioning, control: &Tensor, scale: f64) -> Result<AdditionalResiduals> {
        let control = match self.config.controlnet_conditioning_channel_order.as_str() {
            "bgr" => Tensor::cat(&[control.narrow(1, 2, 1)?, control.narrow(1, 1, 1)?, control.narrow(1, 0, 1)?], 1)?,
            _ => control.clone(),
        };
        let emb = self.embedding.forward(sample, timestep, cond)?;
        let hidden = (self.encoder.conv_in.forward(sample)? + self.cond_embedding.forward(&control)?)?;
        let (mid, skips) = self.encoder.forward(hidden, &emb, cond.encoder_hidden_states)?;
        if skips.len() != self.down_projections.len() {
            return Err(Error::Internal(format!("{} ControlNet skips for {} zero convolutions", skips.len(), self.down_projections.len())));
        }
        let finish = |residual: Tensor| -> Result<Tensor> {
            let residual = (residual * scale)?;
            if self.config.global_pool_conditions {
                Ok(residual.mean_keepdim(2)?.mean_keepdim(3)?)
            } else {
                Ok(residual)
            }
        };
        let down = skips.iter().zip(&self.down_projections).map(|(skip, projection)| finish(projection.forward(skip)?)).collect::<Result<Vec<_>>>()?;
        let mid = finish(self.mid_projection.forward(&mid)?)?;
        Ok(AdditionalResiduals { down, mid })
    }
}

impl AdditionalResiduals {
    /// Adds another ControlNet's residuals (diffusers' `MultiControlNetModel` sums them).
    pub fn add(self, other: &AdditionalResiduals) -> Result<Self> {
        if self.down.len() != other.down.len() {
            return Err(Error::Internal(format!("{} and {} ControlNet residuals", self.down.len(), other.down.len())));
        }
        let down = self.down.iter().zip(&other.down).map(|(a, b)| Ok((a + b)?)).collect::<Result<Vec<_>>>()?;
        Ok(Self { down, mid: (&self.mid + &other.mid)? })
    }
}
