//! CLIP byte-level BPE (49408 tokens) and SDXL's padding rules. The vocabulary is
//! embedded (single-file checkpoints ship none); a diffusers folder's own
//! `tokenizer/` and `tokenizer_2/` take precedence when present.

pub mod prompt_weighting;

use std::io::Read;
use std::path::Path;

use crate::api::validate::PromptTruncation;
use crate::error::{Error, Result};
pub use prompt_weighting::{parse_weighted_prompt, WeightedSegment};

/// Tokens per CLIP window, including the start and end tokens.
pub(crate) const CONTEXT_LENGTH: usize = 77;
/// Prompt tokens per window.
pub(crate) const CHUNK_TOKENS: usize = CONTEXT_LENGTH - 2;

static EMBEDDED_TOKENIZER_GZ: &[u8] = include_bytes!("../../assets/clip_tokenizer.json.gz");

/// One 77-token window as the text encoders receive it, with a weight per token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenWindow {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl ClipTokenizer {
    /// The embedded OpenAI CLIP vocabulary; `pad_token` is `<|endoftext|>` for SDXL's
    /// first encoder and `!` for the second.
    pub fn embedded(pad_token: &str) -> Result<Self> {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(EMBEDDED_TOKENIZER_GZ)
            .read_to_end(&mut json)
            .map_err(|e| Error::Internal(format!("embedded tokenizer is corrupt: {e}")))?;
        Self::from_tokenizer_json(&json, pad_token)
    }

    pub fn from_tokenizer_json(json: &[u8], pad_token: &str) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| Error::ModelLoad(format!("tokenizer.json: {e}")))?;
        // transformers registers the pad token as a special token: with SDXL's second
        // tokenizer a literal "!" in a prompt becomes its own token (id 0), never merged.
        inner
            .add_special_tokens(vec![tokenizers::AddedToken::from(pad_token, true)])
            .map_err(|e| Error::ModelLoad(format!("tokenizer: cannot register pad token {pad_token}: {e}")))?;
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| Error::ModelLoad(format!("tokenizer has no '{token}' token")))
        };
        Ok(Self { bos: id("<|startoftext|>")?, eos: id("<|endoftext|>")?, pad: id(pad_token)?, inner })
    }

    /// A diffusers `tokenizer*/` folder: its `tokenizer.json` when present, otherwise the
    /// embedded pipeline with the folder's `vocab.json` and `merges.txt` spliced in.
    pub fn from_folder(folder: &Path, default_pad: &str) -> Result<Self> {
        let pad = read_pad_token(folder).unwrap_or_else(|| default_pad.to_string());
        let tokenizer_json = folder.join("tokenizer.json");
        if tokenizer_json.exists() {
            return Self::from_tokenizer_json(&std::fs::read(&tokenizer_json)?, &pad);
        }
        let vocab = std::fs::read_to_string(folder.join("vocab.json"))
            .map_err(|e| Error::ModelLoad(format!("{}: {e}", folder.join("vocab.json").display())))?;
        let merges = std::fs::read_to_string(folder.join("merges.txt"))
            .map_err(|e| Error::ModelLoad(format!("{}: {e}", folder.join("merges.txt").display())))?;
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(EMBEDDED_TOKENIZER_GZ)
            .read_to_end(&mut json)
            .map_err(|e| Error::Internal(format!("embedded tokenizer is corrupt: {e}")))?;
        let mut template: serde_json::Value = serde_json::from_slice(&json).map_err(|e| Error::Internal(e.to_string()))?;
        let vocab: serde_json::Value =
            serde_json::from_str(&vocab).map_err(|e| Error::ModelLoad(format!("vocab.json: {e}")))?;
        let merges: Vec<serde_json::Value> = merges
            .lines()
            .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
            .map(|line| serde_json::Value::String(line.to_string()))
            .collect();
        template["model"]["vocab"] = vocab;
        template["model"]["merges"] = serde_json::Value::Array(merges);
        let json = serde_json::to_vec(&template).map_err(|e| Error::Internal(e.to_string()))?;
        Self::from_tokenizer_json(&json, &pad)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// BPE ids of a text without start/end tokens.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| Error::Internal(format!("tokenizer: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The windows a prompt becomes. `Diffusers`: one window, truncated, as the SDXL
    /// pipeline's `tokenizer(..., max_length=77, truncation=True)`. `Chunked`: emphasis
    /// syntax parsed, then as many 75-token windows as the prompt needs (A1111 style).
    pub fn windows(&self, prompt: &str, truncation: PromptTruncation) -> Result<Vec<TokenWindow>> {
        let (tokens, weights): (Vec<u32>, Vec<f32>) = match truncation {
            PromptTruncation::Diffusers => {
                let tokens = self.encode_plain(prompt)?;
                let n = tokens.len();
                (tokens, vec![1.0; n])
            }
            PromptTruncation::Chunked => {
                let mut tokens = Vec::new();
                let mut weights = Vec::new();
                for segment in parse_weighted_prompt(prompt) {
                    let ids = self.encode_plain(&segment.text)?;
                    weights.extend(std::iter::repeat(segment.weight).take(ids.len()));
                    tokens.extend(ids);
                }
                (tokens, weights)
            }
        };
        let chunks: Vec<(&[u32], &[f32])> = if tokens.is_empty() {
            vec![(&[][..], &[][..])]
        } else if truncation == PromptTruncation::Diffusers {
            let n = tokens.len().min(CHUNK_TOKENS);
            vec![(&tokens[..n], &weights[..n])]
        } else {
            tokens.chunks(CHUNK_TOKENS).zip(weights.chunks(CHUNK_TOKENS)).collect()
        };
        Ok(chunks
            .into_iter()
            .map(|(ids, w)| {
                let mut window = Vec::with_capacity(CONTEXT_LENGTH);
                let mut window_weights = Vec::with_capacity(CONTEXT_LENGTH);
                window.push(self.bos);
                window_weights.push(1.0);
                window.extend_from_slice(ids);
                window_weights.extend_from_slice(w);
                window.push(self.eos);
                window_weights.push(1.0);
                window.resize(CONTEXT_LENGTH, self.pad);
                window_weights.resize(CONTEXT_LENGTH, 1.0);
                TokenWindow { ids: window, weights: window_weights }
            })
            .collect())
    }
}

fn read_pad_token(folder: &Path) -> Option<String> {
    let text = std::fs::read_to_string(folder.join("special_tokens_map.json"))
        .or_else(|_| std::fs::read_to_string(folder.join("tokenizer_config.json")))
        .ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    match &value["pad_token"] {
        serde_json::Value::String(pad) => Some(pad.clone()),
        serde_json::Value::Object(object) => object.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}
