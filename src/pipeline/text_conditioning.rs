//! Prompts → what the UNet is conditioned on (diffusers `StableDiffusionXLPipeline.encode_prompt`):
//! both encoders' penultimate hidden states concatenated on the channel axis (the refiner has
//! only the second encoder, and uses its states alone), and the second encoder's pooled
//! embedding. Long prompts become several 77-token windows
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

/// A prompt tokenized for both encoders (same tokens, different padding); the first is
/// absent for the refiner.
struct TokenizedPrompt {
    windows_1: Option<Vec<TokenWindow>>,
    windows_2: Vec<TokenWindow>,
}

impl TokenizedPrompt {
    /// Windows the prompt takes (the first tokenizer's count, as the two are encoded in pairs).
    fn windows(&self) -> usize {
        self.windows_1.as_ref().map_or(self.windows_2.len(), Vec::len)
    }
}

fn tokenize(model: &SdxlModel, prompt: &str, truncation: PromptTruncation) -> Result<TokenizedPrompt> {
    Ok(TokenizedPrompt {
        windows_1: model.tokenizer.as_ref().map(|tokenizer| tokenizer.windows(prompt, truncation)).transpose()?,
        windows_2: model.tokenizer_2.windows(prompt, truncation)?,
    })
}

/// Encodes a tokenized prompt into `windows` windows (at least as many as it has; the
/// rest are empty-prompt windows, so positive and negative line up for CFG).
fn encode_windows(
    model: &SdxlModel,
    encoders: (Option<&ClipTextTransformer>, &ClipTextTransformer),
    mut prompt: TokenizedPrompt,
    windows: usize,
    truncation: PromptTruncation,
    device: &Device,
) -> Result<PromptEmbeddings> {
    if prompt.windows() < windows {
        let empty = tokenize(model, "", truncation)?;
        while prompt.windows() < windows {
            if let (Some(padded), Some(empty)) = (prompt.windows_1.as_mut(), empty.windows_1.as_ref()) {
                padded.extend(empty.iter().cloned());
            }
            prompt.windows_2.extend(empty.windows_2.iter().cloned());
        }
    }
    let mut states = Vec::new();
    let mut pooled = None;
    for (index, window_2) in prompt.windows_2.iter().enumerate().take(prompt.windows()) {
        let ids_2 = Tensor::new(window_2.ids.as_slice(), device)?.unsqueeze(0)?;
        let out_2 = encoders.1.forward(&ids_2)?;
        let first = match (encoders.0, prompt.windows_1.as_ref().and_then(|w| w.get(index))) {
            (Some(encoder), Some(window_1)) => {
                let ids_1 = Tensor::new(window_1.ids.as_slice(), device)?.unsqueeze(0)?;
                Some((encoder.forward(&ids_1)?.penultimate_hidden_states, window_1))
            }
            _ => None,
        };
        // The emphasis weights are the first tokenizer's when there is one (the two agree
        // except where tokenizer_2 splits a `!` off).
        let joined = match &first {
            Some((states_1, window_1)) => apply_emphasis(&Tensor::cat(&[states_1, &out_2.penultimate_hidden_states], 2)?, window_1)?,
            None => apply_emphasis(&out_2.penultimate_hidden_states, window_2)?,
        };
        states.push(joined);
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
        if let Some(count) = tokens.map(TokenizedPrompt::windows).filter(|&count| count > max_windows) {
            return Err(crate::error::Error::validation(
                field,
                format!("{count} windows of 75 tokens is more than limits.max_prompt_windows ({max_windows}); shorten it or raise the limit"),
            ));
        }
    }
    let windows = positive_tokens.windows().max(negative_tokens.as_ref().map_or(0, TokenizedPrompt::windows));
    // Offloaded encoders come onto the device here and leave it when this function returns.
    let text_encoder = model.text_encoder.as_ref().map(|encoder| encoder.on_device()).transpose()?;
    let text_encoder_2 = model.text_encoder_2.on_device()?;
    let encoders = (text_encoder.as_deref(), &*text_encoder_2);
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
