//! `UNet2DConditionModel` as SDXL configures it (diffusers `unet_2d_condition.py`):
//! time embedding plus the "text_time" `add_embedding` of pooled text and micro-conditioning
//! ids, down/mid/up blocks with per-level transformer depth, and optional additional
//! residuals (ControlNet) added to the skips and the mid block.

use candle_core::{DType, Tensor};
use candle_nn::{Module, VarBuilder};
use serde::Deserialize;

use super::embeddings::{timestep_features, TimestepEmbedding};
use super::patchable::PatchableConv2d;
use super::resnet::conv3x3;
use super::unet_blocks::{AttentionSpec, BlockSpec, DownBlock, MidBlock, UpBlock};
use crate::error::{Error, Result};
use crate::ops::GroupNorm;

/// A config value diffusers lets be a scalar or one value per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    pub fn for_block(&self, index: usize, blocks: usize) -> Result<usize> {
        match self {
            PerBlock::One(value) => Ok(*value),
            PerBlock::Each(values) if values.len() == blocks => Ok(values[index]),
            PerBlock::Each(values) => Err(Error::ModelLoad(format!(
                "UNet config lists {} values where {blocks} blocks exist",
                values.len()
            ))),
        }
    }
}

/// The fields of `unet/config.json` SDXL uses; defaults are SDXL base 1.0's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub layers_per_block: usize,
    pub attention_head_dim: PerBlock,
    pub num_attention_heads: Option<PerBlock>,
    pub transformer_layers_per_block: PerBlock,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub addition_embed_type: Option<String>,
    pub addition_time_embed_dim: Option<usize>,
    pub projection_class_embeddings_input_dim: Option<usize>,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub sample_size: usize,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self::sdxl_base()
    }
}

impl UNetConfig {
    pub fn sdxl_base() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280],
            down_block_types: vec!["DownBlock2D".into(), "CrossAttnDownBlock2D".into(), "CrossAttnDownBlock2D".into()],
            up_block_types: vec!["CrossAttnUpBlock2D".into(), "CrossAttnUpBlock2D".into(), "UpBlock2D".into()],
            layers_per_block: 2,
            attention_head_dim: PerBlock::Each(vec![5, 10, 20]),
            num_attention_heads: None,
            transformer_layers_per_block: PerBlock::Each(vec![1, 2, 10]),
            cross_attention_dim: 2048,
            use_linear_projection: true,
            addition_embed_type: Some("text_time".into()),
            addition_time_embed_dim: Some(256),
            projection_class_embeddings_input_dim: Some(2816),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            sample_size: 128,
        }
    }

    /// stabilityai/stable-diffusion-xl-refiner-1.0's `unet/config.json`: four levels,
    /// cross-attention over the OpenCLIP encoder only, five time ids (the aesthetic score
    /// replaces the target size).
    pub fn sdxl_refiner() -> Self {
        Self {
            block_out_channels: vec![384, 768, 1536, 1536],
            down_block_types: vec!["DownBlock2D".into(), "CrossAttnDownBlock2D".into(), "CrossAttnDownBlock2D".into(), "DownBlock2D".into()],
            up_block_types: vec!["UpBlock2D".into(), "CrossAttnUpBlock2D".into(), "CrossAttnUpBlock2D".into(), "UpBlock2D".into()],
            attention_head_dim: PerBlock::Each(vec![6, 12, 24, 24]),
            transformer_layers_per_block: PerBlock::One(4),
            cross_attention_dim: 1280,
            projection_class_embeddings_input_dim: Some(2560),
            ..Self::sdxl_base()
        }
    }

    /// The built-in demo model and the test fixtures: SDXL's structure, tiny widths.
    pub fn tiny() -> Self {
        Self {
            block_out_channels: vec![16, 32, 32],
            attention_head_dim: PerBlock::Each(vec![2, 2, 4]),
            transformer_layers_per_block: PerBlock::Each(vec![1, 1, 2]),
            cross_attention_dim: 20,
            addition_time_embed_dim: Some(8),
            projection_class_embeddings_input_dim: Some(6 * 8 + 10),
            norm_num_groups: 8,
            sample_size: 32,
            ..Self::sdxl_base()
        }
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text).map_err(|e| Error::ModelLoad(format!("unet/config.json: {e}")))?;
        config.check()?;
        Ok(config)
    }

    pub(crate) fn check(&self) -> Result<()> {
        let blocks = self.block_out_channels.len();
        if blocks == 0 || self.down_block_types.len() != blocks || self.up_block_types.len() != blocks {
            return Err(Error::ModelLoad("UNet config: block_out_channels, down_block_types and up_block_types must have the same non-zero length".into()));
        }
        if self.addition_embed_type.as_deref() != Some("text_time") {
            return Err(Error::ModelLoad(format!(
                "UNet config: addition_embed_type is {:?}; an SDXL UNet uses \"text_time\"",
                self.addition_embed_type
            )));
        }
        for kind in self.down_block_types.iter().chain(&self.up_block_types) {
            if !matches!(kind.as_str(), "DownBlock2D" | "CrossAttnDownBlock2D" | "UpBlock2D" | "CrossAttnUpBlock2D") {
                return Err(Error::ModelLoad(format!("UNet config: unsupported block type {kind}")));
            }
        }
        if self.norm_num_groups == 0 || self.block_out_channels.iter().any(|c| c % self.norm_num_groups != 0) {
            return Err(Error::ModelLoad("UNet config: every block width must be divisible by norm_num_groups".into()));
        }
        Ok(())
    }

    fn heads(&self, index: usize) -> Result<usize> {
        // diffusers' historical naming: SDXL's `attention_head_dim` is the number of heads.
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).for_block(index, self.block_out_channels.len())
    }

    pub fn addition_time_embed_dim(&self) -> usize {
        self.addition_time_embed_dim.unwrap_or(256)
    }
}

/// ControlNet's outputs, added to the UNet's skips and mid block.
pub struct AdditionalResiduals {
    pub down: Vec<Tensor>,
    pub mid: Tensor,
}

/// The conditioning SDXL's UNet takes besides the latents and timestep.
pub struct UNetConditioning<'a> {
    /// (batch, tokens, cross_attention_dim): both text encoders' penultimate states.
    pub encoder_hidden_states: &'a Tensor,
    /// (batch, projection_dim): the second encoder's pooled, projected output.
    pub text_embeds: &'a Tensor,
    /// (batch, 6): original size, crop top-left, target size.
    pub time_ids: &'a Tensor,
}

/// The timestep embedding plus the "text_time" embedding of the pooled text and the time
/// ids: what every resnet of the UNet (and of a ControlNet) is conditioned on.
pub(crate) struct TimeTextEmbedding {
    time_embedding: TimestepEmbedding,
    add_embedding: TimestepEmbedding,
    time_channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    addition_time_embed_dim: usize,
}

impl TimeTextEmbedding {
    pub(crate) fn new(vb: &VarBuilder, config: &UNetConfig) -> Result<Self> {
        let time_channels = config.block_out_channels[0];
        let time_embed_dim = time_channels * 4;
        let text_time_dim = config
            .projection_class_embeddings_input_dim
            .ok_or_else(|| Error::ModelLoad("UNet config lacks projection_class_embeddings_input_dim".into()))?;
        Ok(Self {
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), time_channels, time_embed_dim)?,
            add_embedding: TimestepEmbedding::new(vb.pp("add_embedding"), text_time_dim, time_embed_dim)?,
            time_channels,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
            addition_time_embed_dim: config.addition_time_embed_dim(),
        })
    }

    pub(crate) fn forward(&self, sample: &Tensor, timestep: f64, cond: &UNetConditioning) -> Result<Tensor> {
        let (batch, device, dtype) = (sample.dim(0)?, sample.device(), sample.dtype());
        let timesteps = Tensor::full(timestep as f32, batch, device)?;
        let time_features = timestep_features(&timesteps, self.time_channels, self.flip_sin_to_cos, self.freq_shift)?;
        let emb = self.time_embedding.forward(&time_features.to_dtype(dtype)?)?;
        let time_ids = cond.time_ids.to_dtype(DType::F32)?.flatten_all()?;
        let time_id_features = timestep_features(&time_ids, self.addition_time_embed_dim, true, 0.0)?.reshape((cond.text_embeds.dim(0)?, ()))?;
        let text_time = Tensor::cat(&[&cond.text_embeds.to_dtype(dtype)?, &time_id_features.to_dtype(dtype)?], 1)?;
        Ok((emb + self.add_embedding.forward(&text_time)?)?)
    }
}

/// The UNet's encoder half: `conv_in`, the down blocks and the mid block. A ControlNet has
/// the same (its weights start as a copy of the UNet's).
pub(crate) struct UNetEncoder {
    pub(crate) conv_in: PatchableConv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
}

impl UNetEncoder {
    /// From `conv_in`'s output: the mid block's output and every skip (conv_in's output first,
    /// then each down block's resnets and downsampler).
    pub(crate) fn forward(&self, mut hidden: Tensor, emb: &Tensor, context: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let mut skips = vec![hidden.clone()];
        for block in &self.down_blocks {
            let (out, block_skips) = block.forward(&hidden, emb, context)?;
            hidden = out;
            skips.extend(block_skips);
        }
        Ok((self.mid_block.forward(&hidden, emb, context)?, skips))
    }

    /// Channels of each skip, in the order `forward` returns them.
    pub(crate) fn skip_channels(&self, config: &UNetConfig) -> Vec<usize> {
        let channels = &config.block_out_channels;
        let mut widths = vec![channels[0]];
        for (level, &width) in channels.iter().enumerate() {
            widths.extend(std::iter::repeat(width).take(config.layers_per_block));
            if level + 1 < channels.len() {
                widths.push(width);
            }
        }
        widths
    }
}

/// How each level's transformers are shaped (None: a level without cross-attention).
fn attention_spec(config: &UNetConfig, level: usize, cross: bool) -> Result<Option<AttentionSpec>> {
    if !cross {
        return Ok(None);
    }
    Ok(Some(AttentionSpec {
        heads: config.heads(level)?,
        depth: config.transformer_layers_per_block.for_block(level, config.block_out_channels.len())?,
        context_dim: config.cross_attention_dim,
        use_linear_projection: config.use_linear_projection,
    }))
}

pub(crate) fn build_encoder(vb: &VarBuilder, config: &UNetConfig) -> Result<UNetEncoder> {
    let channels = &config.block_out_channels;
    let blocks = channels.len();
    let time_embed_dim = channels[0] * 4;
    let mut down_blocks = Vec::new();
    let mut output_channels = channels[0];
    for (i, kind) in config.down_block_types.iter().enumerate() {
        let input_channels = output_channels;
        output_channels = channels[i];
        let spec = BlockSpec {
            in_channels: input_channels,
            out_channels: output_channels,
            temb_channels: time_embed_dim,
            num_layers: config.layers_per_block,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            attention: attention_spec(config, i, kind == "CrossAttnDownBlock2D")?,
        };
        down_blocks.push(DownBlock::new(vb.pp(format!("down_blocks.{i}")), &spec, i + 1 < blocks)?);
    }
    let mid_attention = attention_spec(config, blocks - 1, true)?.ok_or_else(|| Error::Internal("mid block without attention".into()))?;
    let mid_block = MidBlock::new(vb.pp("mid_block"), channels[blocks - 1], time_embed_dim, config.norm_num_groups, config.norm_eps, mid_attention)?;
    Ok(UNetEncoder { conv_in: conv3x3(vb.pp("conv_in"), config.in_channels, channels[0], 1, 1)?, down_blocks, mid_block })
}

pub struct UNet2DConditionModel {
    config: UNetConfig,
    embedding: TimeTextEmbedding,
    encoder: UNetEncoder,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: PatchableConv2d,
}

impl UNet2DConditionModel {
    pub fn new(vb: VarBuilder, config: &UNetConfig) -> Result<Self> {
        config.check()?;
        let channels = &config.block_out_channels;
        let blocks = channels.len();
        let time_embed_dim = channels[0] * 4;
        let embedding = TimeTextEmbedding::new(&vb, config)?;
        let encoder = build_encoder(&vb, config)?;
        let reversed: Vec<usize> = channels.iter().rev().cloned().collect();
        let mut up_blocks = Vec::new();
        let mut prev_output = reversed[0];
        for (i, kind) in config.up_block_types.iter().enumerate() {
            let out_channels = reversed[i];
            let in_channels = reversed[(i + 1).min(blocks - 1)];
            let level = blocks - 1 - i;
            let spec = BlockSpec {
                in_channels,
                out_channels,
                temb_channels: time_embed_dim,
                num_layers: config.layers_per_block + 1,
                groups: config.norm_num_groups,
                eps: config.norm_eps,
                attention: attention_spec(config, level, kind == "CrossAttnUpBlock2D")?,
            };
            up_blocks.push(UpBlock::new(vb.pp(format!("up_blocks.{i}")), &spec, prev_output, i + 1 < blocks)?);
            prev_output = out_channels;
        }
        Ok(Self {
            config: config.clone(),
            embedding,
            encoder,
            up_blocks,
            conv_norm_out: GroupNorm::new(config.norm_num_groups, channels[0], config.norm_eps, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(vb.pp("conv_out"), channels[0], config.out_channels, 1, 1)?,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    pub fn forward(&self, sample: &Tensor, timestep: f64, cond: &UNetConditioning) -> Result<Tensor> {
        self.forward_with_additional_residuals(sample, timestep, cond, None)
    }

    pub fn forward_with_additional_residuals(
        &self,
        sample: &Tensor,
        timestep: f64,
        cond: &UNetConditioning,
        residuals: Option<&AdditionalResiduals>,
    ) -> Result<Tensor> {
        let emb = self.embedding.forward(sample, timestep, cond)?;
        let context = cond.encoder_hidden_states;
        let (mut hidden, mut skips) = self.encoder.forward(self.encoder.conv_in.forward(sample)?, &emb, context)?;
        if let Some(residuals) = residuals {
            if residuals.down.len() != skips.len() {
                return Err(Error::Internal(format!(
                    "{} down residuals for {} UNet skips",
                    residuals.down.len(),
                    skips.len()
                )));
            }
            for (skip, residual) in skips.iter_mut().zip(&residuals.down) {
                *skip = (&*skip + residual)?;
            }
            hidden = (hidden + &residuals.mid)?;
        }

        // Up-sampling must land on the skip's size when the latent is not a multiple
        // of 2^(levels-1) (diffusers `forward_upsample_size`).
        let levels = self.up_blocks.len();
        for (i, block) in self.up_blocks.iter().enumerate() {
            let remaining = skips.len() - block.num_skips();
            let upsample_size = if i + 1 < levels {
                let (_, _, h, w) = skips[remaining - 1].dims4()?;
                Some((h, w))
            } else {
                None
            };
            let mut block_skips = skips.split_off(remaining);
            hidden = block.forward(&hidden, &mut block_skips, &emb, context, upsample_size)?;
        }
        let hidden = self.conv_norm_out.forward_silu(&hidden)?;
        Ok(self.conv_out.forward(&hidden)?)
    }
}
