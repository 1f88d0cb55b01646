//! The CLIP text transformer (transformers `CLIPTextModel` / `CLIPTextModelWithProjection`):
//! SDXL reads the penultimate layer's hidden states of both encoders, and the second
//! encoder's final-layer-normed EOS token projected by `text_projection` (the pooled embedding).

use candle_core::{DType, IndexOp, Tensor};
use candle_nn::{Embedding, LayerNorm, Module, VarBuilder};
use serde::Deserialize;

use super::attention::{causal_mask, multi_head_attention};
use super::patchable::{self, PatchableLinear};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    QuickGelu,
    Gelu,
}

/// `text_encoder*/config.json`; defaults are SDXL's first encoder (CLIP ViT-L/14).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub projection_dim: usize,
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self::vit_l()
    }
}

impl ClipTextConfig {
    pub fn vit_l() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            projection_dim: 768,
            eos_token_id: 49407,
        }
    }

    /// OpenCLIP ViT-bigG/14, SDXL's second encoder.
    pub fn big_g() -> Self {
        Self {
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            hidden_act: Activation::Gelu,
            projection_dim: 1280,
            ..Self::vit_l()
        }
    }

    pub fn tiny_first() -> Self {
        Self { hidden_size: 8, intermediate_size: 32, num_hidden_layers: 3, num_attention_heads: 2, projection_dim: 8, ..Self::vit_l() }
    }

    pub fn tiny_second() -> Self {
        Self { hidden_size: 12, intermediate_size: 48, num_hidden_layers: 11, num_attention_heads: 2, projection_dim: 10, ..Self::big_g() }
    }

    pub fn from_json(text: &str, what: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text).map_err(|e| Error::ModelLoad(format!("{what}/config.json: {e}")))?;
        if config.num_hidden_layers < 2 || config.num_attention_heads == 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(Error::ModelLoad(format!("{what}/config.json: an SDXL text encoder needs ≥ 2 layers and hidden_size divisible by the heads")));
        }
        Ok(config)
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: PatchableLinear,
    k_proj: PatchableLinear,
    v_proj: PatchableLinear,
    out_proj: PatchableLinear,
    layer_norm2: LayerNorm,
    fc1: PatchableLinear,
    fc2: PatchableLinear,
    heads: usize,
    activation: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let d = config.hidden_size;
        let attn = vb.pp("self_attn");
        Ok(Self {
            layer_norm1: candle_nn::layer_norm(d, config.layer_norm_eps, vb.pp("layer_norm1"))?,
            q_proj: patchable::linear(d, d, attn.pp("q_proj"))?,
            k_proj: patchable::linear(d, d, attn.pp("k_proj"))?,
            v_proj: patchable::linear(d, d, attn.pp("v_proj"))?,
            out_proj: patchable::linear(d, d, attn.pp("out_proj"))?,
            layer_norm2: candle_nn::layer_norm(d, config.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: patchable::linear(d, config.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: patchable::linear(config.intermediate_size, d, vb.pp("mlp.fc2"))?,
            heads: config.num_attention_heads,
            activation: config.hidden_act,
        })
    }

    fn forward(&self, hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let normed = self.layer_norm1.forward(hidden)?;
        let attended = multi_head_attention(
            &self.q_proj.forward(&normed)?,
            &self.k_proj.forward(&normed)?,
            &self.v_proj.forward(&normed)?,
            self.heads,
            Some(mask),
        )?;
        let hidden = (hidden + self.out_proj.forward(&attended)?)?;
        let inner = self.fc1.forward(&self.layer_norm2.forward(&hidden)?)?;
        let inner = match self.activation {
            Activation::QuickGelu => (&inner * candle_nn::ops::sigmoid(&(&inner * 1.702)?)?)?,
            Activation::Gelu => inner.gelu_erf()?,
        };
        Ok((hidden + self.fc2.forward(&inner)?)?)
    }
}

pub struct ClipTextOutput {
    /// `hidden_states[-2]`: the output of the second-to-last layer, not layer-normed.
    pub penultimate_hidden_states: Tensor,
    /// `text_embeds`: final-layer-normed EOS state through `text_projection` (None without projection).
    pub pooled: Option<Tensor>,
}

pub struct ClipTextTransformer {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<PatchableLinear>,
    config: ClipTextConfig,
}

impl ClipTextTransformer {
    /// `vb` is the encoder's root (`text_model.*` and, with `with_projection`, `text_projection`).
    pub fn new(vb: VarBuilder, config: &ClipTextConfig, with_projection: bool) -> Result<Self> {
        let text = vb.pp("text_model");
        let d = config.hidden_size;
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(text.pp(format!("encoder.layers.{i}")), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_embedding: candle_nn::embedding(config.vocab_size, d, text.pp("embeddings.token_embedding"))?,
            position_embedding: candle_nn::embedding(config.max_position_embeddings, d, text.pp("embeddings.position_embedding"))?,
            layers,
            final_layer_norm: candle_nn::layer_norm(d, config.layer_norm_eps, text.pp("final_layer_norm"))?,
            text_projection: if with_projection {
                Some(patchable::linear_no_bias(d, config.projection_dim, vb.pp("text_projection"))?)
            } else {
                None
            },
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// `input_ids`: (batch, ≤ max_position_embeddings) u32 token ids.
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        let (_, len) = input_ids.dims2()?;
        if len > self.config.max_position_embeddings {
            return Err(Error::Internal(format!("{len} tokens exceed CLIP's {} positions", self.config.max_position_embeddings)));
        }
        let device = input_ids.device();
        let positions = Tensor::arange(0u32, len as u32, device)?;
        let mut hidden = self
            .token_embedding
            .forward(input_ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(len, device)?;
        let needs_last_layer = self.text_projection.is_some();
        let run_layers = if needs_last_layer { self.layers.len() } else { self.layers.len() - 1 };
        let mut penultimate = None;
        for (i, layer) in self.layers[..run_layers].iter().enumerate() {
            hidden = layer.forward(&hidden, &mask)?;
            if i + 2 == self.layers.len() {
                penultimate = Some(hidden.clone());
            }
        }
        let penultimate_hidden_states = penultimate.ok_or_else(|| Error::Internal("CLIP with fewer than 2 layers".into()))?;
        let pooled = match &self.text_projection {
            None => None,
            Some(projection) => {
                let last = self.final_layer_norm.forward(&hidden)?;
                let ids = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
                let rows = ids
                    .iter()
                    .enumerate()
                    .map(|(b, row)| last.i((b, pooled_position(row, self.config.eos_token_id))))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(projection.forward(&Tensor::stack(&rows, 0)?)?)
            }
        };
        Ok(ClipTextOutput { penultimate_hidden_states, pooled })
    }
}

/// The token whose final hidden state is pooled, as transformers' `CLIPTextTransformer.forward`
/// picks it. Configs saved with CLIP's legacy ids (`eos_token_id: 2`, as stabilityai's SDXL
/// folders have) take `argmax(input_ids)`: the first `<|endoftext|>`, the highest id in the
/// vocabulary. Other configs take the first id equal to `eos_token_id`, and a row without one
/// gives position 0 (the argmax of an all-false mask), not the last.
pub(crate) fn pooled_position(ids: &[u32], eos_token_id: u32) -> usize {
    const LEGACY_EOS_TOKEN_ID: u32 = 2;
    if eos_token_id == LEGACY_EOS_TOKEN_ID {
        // torch.argmax returns the first of equal maxima.
        let max = ids.iter().copied().max().unwrap_or(0);
        return ids.iter().position(|&id| id == max).unwrap_or(0);
    }
    ids.iter().position(|&id| id == eos_token_id).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::pooled_position;

    const BOS: u32 = 49406;
    const EOS: u32 = 49407;

    #[test]
    fn legacy_eos_id_pools_at_the_first_highest_id_as_transformers_does() {
        // tokenizer (pad = <|endoftext|>): the first of the equal maxima.
        assert_eq!(pooled_position(&[BOS, 320, 1929, EOS, EOS, EOS], 2), 3);
        // tokenizer_2 (pad = "!", id 0); a literal "#" (id 2) in the prompt is not the pooled token.
        assert_eq!(pooled_position(&[BOS, 2, 1929, EOS, 0, 0], 2), 3);
    }

    #[test]
    fn configured_eos_id_pools_at_its_first_occurrence_or_at_zero() {
        assert_eq!(pooled_position(&[BOS, 320, EOS, EOS], EOS), 2);
        // torch.argmax over an all-false mask is 0, not the last position.
        assert_eq!(pooled_position(&[BOS, 320, 321], EOS), 0);
    }
}
