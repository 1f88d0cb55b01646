//! What a PNG remembers of how it was made: a `parameters` text chunk in the AUTOMATIC1111
//! format (prompt, `Negative prompt:`, then `Steps: …, Sampler: …, CFG scale: …, Seed: …,
//! Size: …, Model: …`, LoRAs as `<lora:name:weight>` in the prompt), which image browsers,
//! Civitai and other tools read, and the full request JSON in an `sdxl_request` chunk, from
//! which `sdxl request --from-image` runs the same request again.

use std::io::Cursor;

use crate::error::{Error, Result};

/// The `parameters` chunk's key (A1111's), and ours for the request.
pub const PARAMETERS_KEY: &str = "parameters";
pub const REQUEST_KEY: &str = "sdxl_request";

/// One image's generation settings, as A1111 writes them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parameters {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// (name, weight), written into the prompt as `<lora:name:weight>`.
    pub loras: Vec<(String, f64)>,
    pub steps: u32,
    /// A1111's sampler name (`DPM++ 2M`, `Euler a`, …) and schedule type (`Karras`).
    pub sampler: String,
    pub schedule_type: Option<String>,
    pub cfg_scale: f64,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub model: String,
    pub model_hash: Option<String>,
    pub denoising_strength: Option<f64>,
    /// Further `key: value` pairs in order (refiner, VAE, ControlNet, upscale, version).
    pub extra: Vec<(String, String)>,
}

/// A1111 quotes a value holding a comma, colon or quote as a JSON string.
fn quote(value: &str) -> String {
    if value.contains([',', ':', '"']) {
        serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
    } else {
        value.to_string()
    }
}

/// A number as A1111 prints Python floats: 7.0 → `7`, 7.5 → `7.5`.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

impl Parameters {
    /// The chunk text: prompt line(s), `Negative prompt:` line, settings line.
    pub fn to_a1111(&self) -> String {
        let mut prompt = self.prompt.clone();
        for (name, weight) in &self.loras {
            prompt.push_str(&format!(" <lora:{name}:{}>", number(*weight)));
        }
        let mut lines = vec![prompt];
        if let Some(negative) = self.negative_prompt.as_deref().filter(|n| !n.is_empty()) {
            lines.push(format!("Negative prompt: {negative}"));
        }
        let mut fields: Vec<(String, String)> = vec![
            ("Steps".into(), self.steps.to_string()),
            ("Sampler".into(), self.sampler.clone()),
        ];
        if let Some(schedule) = &self.schedule_type {
            fields.push(("Schedule type".into(), schedule.clone()));
        }
        fields.push(("CFG scale".into(), number(self.cfg_scale)));
        fields.push(("Seed".into(), self.seed.to_string()));
        fields.push(("Size".into(), format!("{}x{}", self.width, self.height)));
        if let Some(hash) = &self.model_hash {
            fields.push(("Model hash".into(), hash.clone()));
        }
        fields.push(("Model".into(), self.model.clone()));
        if let Some(strength) = self.denoising_strength {
            fields.push(("Denoising strength".into(), number(strength)));
        }
        fields.extend(self.extra.iter().cloned());
        lines.push(fields.iter().map(|(key, value)| format!("{key}: {}", quote(value))).collect::<Vec<_>>().join(", "));
        lines.join("\n")
    }
}

/// Splits an A1111 settings line into `(key, value)` pairs the way A1111's
/// `parse_generation_parameters` does: `key: value` separated by `, `, a value in double quotes
/// taken whole (JSON-unescaped).
pub fn parse_settings_line(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once(": ") else { break };
        let key = key.trim().to_string();
        let (value, remaining) = if after.starts_with('"') {
            // A quoted value: up to the closing quote that is not escaped.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices().skip(1) {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            match end {
                Some(end) => (serde_json::from_str::<String>(&after[..=end]).unwrap_or_else(|_| after[1..end].to_string()), &after[end + 1..]),
                None => (after.to_string(), ""),
            }
        } else {
            match after.find(", ") {
                Some(comma) => (after[..comma].to_string(), &after[comma..]),
                None => (after.to_string(), ""),
            }
        };
        pairs.push((key, value));
        rest = remaining.trim_start_matches(',').trim_start();
    }
    pairs
}

/// Encodes `image` as PNG with the given text chunks (tEXt when Latin-1, iTXt otherwise, as
/// A1111 does).
pub fn encode_png(image: &image::RgbImage, chunks: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(Cursor::new(&mut bytes), image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, text) in chunks {
            let latin1 = text.chars().all(|c| (c as u32) < 256);
            let added = if latin1 { encoder.add_text_chunk(key.to_string(), text.to_string()) } else { encoder.add_itxt_chunk(key.to_string(), text.to_string()) };
            added.map_err(|e| Error::Io(format!("png text chunk {key}: {e}")))?;
        }
        let mut writer = encoder.write_header().map_err(|e| Error::Io(format!("png encode: {e}")))?;
        writer.write_image_data(image.as_raw()).map_err(|e| Error::Io(format!("png encode: {e}")))?;
        writer.finish().map_err(|e| Error::Io(format!("png encode: {e}")))?;
    }
    Ok(bytes)
}

/// The text chunks of a PNG file (tEXt, zTXt, iTXt), by key.
pub fn read_png_text(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let decoder = png::Decoder::new(Cursor::new(bytes));
    let reader = decoder.read_info().map_err(|e| Error::validation("image", format!("not a readable PNG: {e}")))?;
    let info = reader.info();
    let mut chunks: Vec<(String, String)> = info.uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect();
    for compressed in &info.compressed_latin1_text {
        if let Ok(text) = compressed.get_text() {
            chunks.push((compressed.keyword.clone(), text));
        }
    }
    for international in &info.utf8_text {
        if let Ok(text) = international.get_text() {
            chunks.push((international.keyword.clone(), text));
        }
    }
    Ok(chunks)
}
