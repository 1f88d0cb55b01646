//! Prompts → what the UNet is conditioned on (diffusers `StableDiffusionXLPipeline.encode_prompt`):
//! both encoders' penultimate hidden states concatenated on the channel axis, and the
//! second encoder's pooled embedding. Long prompts become several 77-token windows
//! concatenated on the token axis; emphasis weights scale token states, mean-preserving.

use candle_core::{DType, Device, Tensor};

use crate::api::validate::PromptTruncation;
use crate::error::Result;
use crate::loader::SdxlModel;
use crate::models::ClipTextTransformer;
use crate::tokenizer::TokenWindow;

pub struct PromptEmbeddings {
    /// (1, 77 × windows, hidden_1 + hidden_2)
    pub hidden_states: Tensor,
    /// (1, projection_dim)
    pub pooled: Tensor,
}

/// A prompt tokenized for both encoders (same tokens, different padding).
struct TokenizedPrompt {
    windows_1: Vec<TokenWindow>,
    windows_2: Vec<TokenWindow>,
}

fn tokenize(model: &SdxlModel, prompt: &str, truncation: PromptTruncation) -> Result<TokenizedPrompt> {
    Ok(TokenizedPrompt {
        windows_1: model.tokenizer.windows(prompt, truncation)?,
        windows_2: model.tokenizer_2.windows(prompt, truncation)?,
    })
}

/// Encodes a tokenized prompt into `windows` windows (at least as many as it has; the
/// rest are empty-prompt windows, so positive and negative line up for CFG).
fn encode_windows(
    model: &SdxlModel,
    encoders: (&ClipTextTransformer, &ClipTextTransformer),
    mut prompt: TokenizedPrompt,
    windows: usize,
    truncation: PromptTruncation,
    device: &Device,
) -> Result<PromptEmbeddings> {
    if prompt.windows_1.len() < windows {
        let empty = tokenize(model, "", truncation)?;
        while prompt.windows_1.len() < windows {
            prompt.windows_1.extend(empty.windows_1.iter().cloned());
            prompt.windows_2.extend(empty.windows_2.iter().cloned());
        }
    }
    let mut states = Vec::new();
    let mut pooled = None;
    for (window_1, window_2) in prompt.windows_1.iter().zip(&prompt.windows_2) {
        let ids_1 = Tensor::new(window_1.ids.as_slice(), device)?.unsqueeze(0)?;
        let ids_2 = Tensor::new(window_2.ids.as_slice(), device)?.unsqueeze(0)?;
        let out_1 = encoders.0.forward(&ids_1)?;
        let out_2 = encoders.1.forward(&ids_2)?;
        let joined = Tensor::cat(&[&out_1.penultimate_hidden_states, &out_2.penultimate_hidden_states], 2)?;
        states.push(apply_emphasis(&joined, window_1)?);
        if pooled.is_none() {
            // As A1111 and sd.cpp: the pooled embedding comes from the first window.
            pooled = out_2.pooled;
        }
    }
    let pooled = pooled.ok_or_else(|| crate::error::Error::Internal("second text encoder gave no pooled output".into()))?;
    Ok(PromptEmbeddings { hidden_states: Tensor::cat(&states, 1)?, pooled })
}

/// A1111's emphasis: scale each token's state by its weight, then restore the mean.
fn apply_emphasis(states: &Tensor, window: &TokenWindow) -> Result<Tensor> {
    if window.weights.iter().all(|&w| w == 1.0) {
        return Ok(states.clone());
    }
    let original_mean = states.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()?;
    let weights = Tensor::new(window.weights.as_slice(), states.device())?.to_dtype(states.dtype())?.reshape((1, window.weights.len(), 1))?;
    let weighted = states.broadcast_mul(&weights)?;
    let new_mean = weighted.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()?;
    if new_mean == 0.0 {
        return Ok(weighted);
    }
    Ok((weighted * (original_mean / new_mean) as f64)?)
}

/// Positive and negative conditioning for one request (batch of 1; the caller repeats).
pub struct Conditioning {
    pub positive: PromptEmbeddings,
    /// None without classifier-free guidance.
    pub negative: Option<PromptEmbeddings>,
}

pub fn encode_conditioning(
    model: &SdxlModel,
    prompt: &str,
    negative_prompt: Option<&str>,
    guidance: bool,
    truncation: PromptTruncation,
    max_windows: usize,
    device: &Device,
) -> Result<Conditioning> {
    // diffusers zeroes the negative only when none was given at all; "" is encoded like a prompt.
    let zero_negative = negative_prompt.is_none() && model.force_zeros_for_empty_prompt;
    let positive_tokens = tokenize(model, prompt, truncation)?;
    let negative_tokens = if guidance && !zero_negative { Some(tokenize(model, negative_prompt.unwrap_or(""), truncation)?) } else { None };
    // Every window is a text-encoder pass and 77 more keys in every cross-attention of every
    // step: a prompt of a megabyte would run for minutes without a step to cancel at.
    for (field, tokens) in [("prompt", Some(&positive_tokens)), ("negative_prompt", negative_tokens.as_ref())] {
        if let Some(count) = tokens.map(|t| t.windows_1.len()).filter(|&count| count > max_windows) {
            return Err(crate::error::Error::validation(
                field,
                format!("{count} windows of 75 tokens is more than limits.max_prompt_windows ({max_windows}); shorten it or raise the limit"),
            ));
        }
    }
    let windows = positive_tokens.windows_1.len().max(negative_tokens.as_ref().map_or(0, |n| n.windows_1.len()));
    // Offloaded encoders come onto the device here and leave it when this function returns.
    let (text_encoder, text_encoder_2) = (model.text_encoder.on_device()?, model.text_encoder_2.on_device()?);
    let encoders = (&*text_encoder, &*text_encoder_2);
    let positive = encode_windows(model, encoders, positive_tokens, windows, truncation, device)?;
    let negative = match negative_tokens {
        Some(tokens) => Some(encode_windows(model, encoders, tokens, windows, truncation, device)?),
        None if guidance => {
            Some(PromptEmbeddings { hidden_states: positive.hidden_states.zeros_like()?, pooled: positive.pooled.zeros_like()? })
        }
        None => None,
    };
    Ok(Conditioning { positive, negative })
}
