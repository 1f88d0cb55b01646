//! `AutoencoderKL` (diffusers `autoencoder_kl.py`, `vae.py`): the encoder that turns an
//! image into a latent distribution and the decoder that turns latents into pixels.

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};
use serde::Deserialize;

use super::attention::multi_head_attention;
use super::patchable::PatchableConv2d;
use super::resnet::{conv1x1, conv3x3, Downsample2D, ResnetBlock2D, Upsample2D};
use crate::error::{Error, Result};
use crate::ops::GroupNorm;

/// `vae/config.json`; defaults are SDXL's VAE.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub force_upcast: bool,
    pub mid_block_add_attention: bool,
    /// The image size the VAE was trained on: diffusers' default tile size for tiling.
    pub sample_size: usize,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self::sdxl()
    }
}

impl VaeConfig {
    pub fn sdxl() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            scaling_factor: 0.13025,
            force_upcast: true,
            mid_block_add_attention: true,
            sample_size: 1024,
        }
    }

    pub fn tiny() -> Self {
        Self { block_out_channels: vec![8, 16, 16, 16], layers_per_block: 2, norm_num_groups: 4, ..Self::sdxl() }
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text).map_err(|e| Error::ModelLoad(format!("vae/config.json: {e}")))?;
        if config.block_out_channels.is_empty() || config.norm_num_groups == 0 {
            return Err(Error::ModelLoad("vae/config.json: empty block_out_channels or zero norm_num_groups".into()));
        }
        Ok(config)
    }

    /// Pixels per latent cell along each axis: 2^(levels − 1), 8 for SDXL.
    pub fn downscale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

const VAE_EPS: f64 = 1e-6;

/// The single-head self-attention of the VAE's mid block (`Attention` with group norm
/// and a residual connection).
struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl VaeAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::new(groups, channels, VAE_EPS, vb.pp("group_norm"))?,
            to_q: candle_nn::linear(channels, channels, vb.pp("to_q"))?,
            to_k: candle_nn::linear(channels, channels, vb.pp("to_k"))?,
            to_v: candle_nn::linear(channels, channels, vb.pp("to_v"))?,
            to_out: candle_nn::linear(channels, channels, vb.pp("to_out.0"))?,
        })
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = input.dims4()?;
        let tokens = self
            .group_norm
            .forward(input)?
            .reshape((batch, channels, height * width))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        let attended = self.to_out.forward(&multi_head_attention(&q, &k, &v, 1, None)?)?;
        let image = attended.transpose(1, 2)?.reshape((batch, channels, height, width))?;
        Ok((image + input)?)
    }
}

struct VaeMidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Option<VaeAttention>,
}

impl VaeMidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize, with_attention: bool) -> Result<Self> {
        let resnet = |i: usize| ResnetBlock2D::new(vb.pp(format!("resnets.{i}")), channels, channels, None, groups, VAE_EPS);
        Ok(Self {
            resnets: [resnet(0)?, resnet(1)?],
            attention: if with_attention { Some(VaeAttention::new(vb.pp("attentions.0"), channels, groups)?) } else { None },
        })
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let mut hidden = self.resnets[0].forward(input, None)?;
        if let Some(attention) = &self.attention {
            hidden = attention.forward(&hidden)?;
        }
        self.resnets[1].forward(&hidden, None)
    }
}

pub struct Encoder {
    conv_in: PatchableConv2d,
    down_blocks: Vec<(Vec<ResnetBlock2D>, Option<Downsample2D>)>,
    mid_block: VaeMidBlock,
    conv_norm_out: GroupNorm,
    conv_out: PatchableConv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let channels = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let mut down_blocks = Vec::new();
        let mut output_channels = channels[0];
        for (i, &block_channels) in channels.iter().enumerate() {
            let input_channels = output_channels;
            output_channels = block_channels;
            let vb_block = vb.pp(format!("down_blocks.{i}"));
            let resnets = (0..config.layers_per_block)
                .map(|j| {
                    let in_channels = if j == 0 { input_channels } else { output_channels };
                    ResnetBlock2D::new(vb_block.pp(format!("resnets.{j}")), in_channels, output_channels, None, groups, VAE_EPS)
                })
                .collect::<Result<Vec<_>>>()?;
            let downsampler = if i + 1 < channels.len() {
                Some(Downsample2D::new(vb_block.pp("downsamplers.0"), output_channels, true)?)
            } else {
                None
            };
            down_blocks.push((resnets, downsampler));
        }
        let last = *channels.last().unwrap_or(&0);
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), config.in_channels, channels[0], 1, 1)?,
            down_blocks,
            mid_block: VaeMidBlock::new(vb.pp("mid_block"), last, groups, config.mid_block_add_attention)?,
            conv_norm_out: GroupNorm::new(groups, last, VAE_EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(vb.pp("conv_out"), last, 2 * config.latent_channels, 1, 1)?,
        })
    }

    fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let mut hidden = self.conv_in.forward(image)?;
        for (resnets, downsampler) in &self.down_blocks {
            for resnet in resnets {
                hidden = resnet.forward(&hidden, None)?;
            }
            if let Some(downsampler) = downsampler {
                hidden = downsampler.forward(&hidden)?;
            }
        }
        hidden = self.mid_block.forward(&hidden)?;
        Ok(self.conv_out.forward(&self.conv_norm_out.forward_silu(&hidden)?)?)
    }
}

pub struct Decoder {
    conv_in: PatchableConv2d,
    mid_block: VaeMidBlock,
    up_blocks: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    conv_norm_out: GroupNorm,
    conv_out: PatchableConv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let reversed: Vec<usize> = config.block_out_channels.iter().rev().cloned().collect();
        let groups = config.norm_num_groups;
        let mut up_blocks = Vec::new();
        let mut output_channels = reversed[0];
        for (i, &block_channels) in reversed.iter().enumerate() {
            let prev_output_channels = output_channels;
            output_channels = block_channels;
            let vb_block = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..config.layers_per_block + 1)
                .map(|j| {
                    let in_channels = if j == 0 { prev_output_channels } else { output_channels };
                    ResnetBlock2D::new(vb_block.pp(format!("resnets.{j}")), in_channels, output_channels, None, groups, VAE_EPS)
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if i + 1 < reversed.len() {
                Some(Upsample2D::new(vb_block.pp("upsamplers.0"), output_channels)?)
            } else {
                None
            };
            up_blocks.push((resnets, upsampler));
        }
        let first = config.block_out_channels[0];
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), config.latent_channels, reversed[0], 1, 1)?,
            mid_block: VaeMidBlock::new(vb.pp("mid_block"), reversed[0], groups, config.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: GroupNorm::new(groups, first, VAE_EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(vb.pp("conv_out"), first, config.out_channels, 1, 1)?,
        })
    }

    fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        let mut hidden = self.mid_block.forward(&self.conv_in.forward(latents)?)?;
        for (resnets, upsampler) in &self.up_blocks {
            for resnet in resnets {
                hidden = resnet.forward(&hidden, None)?;
            }
            if let Some(upsampler) = upsampler {
                hidden = upsampler.forward(&hidden, None)?;
            }
        }
        Ok(self.conv_out.forward(&self.conv_norm_out.forward_silu(&hidden)?)?)
    }
}

/// The diagonal Gaussian the encoder outputs.
pub struct LatentDistribution {
    pub mean: Tensor,
    pub std: Tensor,
}

impl LatentDistribution {
    /// `mean + std · noise`, the noise drawn by the caller from the image's own stream.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        Ok((&self.mean + (&self.std * noise)?)?)
    }
}

pub struct AutoencoderKL {
    config: VaeConfig,
    encoder: Encoder,
    quant_conv: PatchableConv2d,
    post_quant_conv: PatchableConv2d,
    decoder: Decoder,
}

impl AutoencoderKL {
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let latent = config.latent_channels;
        Ok(Self {
            config: config.clone(),
            encoder: Encoder::new(vb.pp("encoder"), config)?,
            quant_conv: conv1x1(vb.pp("quant_conv"), 2 * latent, 2 * latent)?,
            post_quant_conv: conv1x1(vb.pp("post_quant_conv"), latent, latent)?,
            decoder: Decoder::new(vb.pp("decoder"), config)?,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Image in [-1, 1], (batch, 3, H, W) → latent distribution (unscaled).
    pub fn encode(&self, image: &Tensor) -> Result<LatentDistribution> {
        LatentDistribution::from_moments(&self.encode_moments(image)?)
    }

    /// The encoder's output: mean and log-variance stacked on the channel axis.
    pub(crate) fn encode_moments(&self, image: &Tensor) -> Result<Tensor> {
        Ok(self.quant_conv.forward(&self.encoder.forward(image)?)?)
    }

    /// Unscaled latents → image in [-1, 1] (not clamped).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decoder.forward(&self.post_quant_conv.forward(latents)?)
    }
}

impl LatentDistribution {
    /// diffusers' `DiagonalGaussianDistribution`: log-variance clamped to [-30, 20].
    pub(crate) fn from_moments(moments: &Tensor) -> Result<Self> {
        let halves = moments.chunk(2, 1)?;
        let logvar = halves[1].clamp(-30f32, 20f32)?;
        Ok(LatentDistribution { mean: halves[0].clone(), std: (logvar * 0.5)?.exp()? })
    }
}
