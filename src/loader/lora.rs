//! LoRA weight files → low-rank factors per layer, in the two layouts SDXL LoRAs ship in:
//!
//! - kohya (sd-scripts, A1111, Civitai): `lora_unet_<layer>.lora_down.weight` / `.lora_up.weight` /
//!   `.alpha`, `lora_te1_*` and `lora_te2_*` for the text encoders. SDXL files name UNet layers by
//!   the original SGM layout with `.` turned into `_` (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`);
//!   some use diffusers names the same way (`lora_unet_down_blocks_1_...`). Text encoders use HF names.
//! - diffusers / PEFT: `unet.<diffusers name>.lora_A.weight` / `lora_B.weight` (optionally
//!   `lora_A.<adapter>.weight`, or the older `lora.down` / `lora_linear_layer.down`),
//!   `text_encoder.*`, `text_encoder_2.*`; alpha from the adapter config diffusers stores in the
//!   header (`lora_adapter_metadata`: `<prefix>.lora_alpha`, `alpha_pattern`, `use_rslora`) or `*.alpha` keys.
//!
//! This module only reads and groups; which model layer a name means is decided in `crate::lora`,
//! against the layers the loaded model registered.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::safetensors_file::SafetensorsFile;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    Kohya,
    Peft,
}

impl LoraFormat {
    pub fn name(self) -> &'static str {
        match self {
            LoraFormat::Kohya => "kohya",
            LoraFormat::Peft => "peft",
        }
    }
}

/// Which network of the pipeline a LoRA module patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Network {
    Unet,
    TextEncoder,
    TextEncoder2,
}

impl Network {
    pub fn name(self) -> &'static str {
        match self {
            Network::Unet => "unet",
            Network::TextEncoder => "text_encoder",
            Network::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// A layer as the file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerName {
    /// kohya: the name after `lora_unet_` / `lora_te1_` / `lora_te2_`, dots turned into underscores.
    Kohya(String),
    /// diffusers / PEFT: the module's dotted name inside its network.
    Diffusers(String),
}

/// One adapted layer: `W' = W + scale · up @ down`, with `scale = weight · alpha / rank`.
pub struct LoraModule {
    pub network: Network,
    pub layer: LayerName,
    /// The file's name for this layer (the key stem), for messages.
    pub stem: String,
    /// How many keys of the file this module consists of (down, up, alpha).
    pub keys: usize,
    /// (rank, in[, kh, kw]) in the file's dtype, on the CPU.
    pub down: Tensor,
    /// (out, rank[, 1, 1]).
    pub up: Tensor,
    pub alpha: Option<f64>,
    /// rsLoRA: the scale is alpha / √rank instead of alpha / rank.
    pub rank_stabilized: bool,
}

impl LoraModule {
    pub fn rank(&self) -> usize {
        self.down.dims().first().copied().unwrap_or(0)
    }

    /// alpha / rank (alpha absent → 1), the factor the request's weight multiplies.
    pub fn scale_per_unit_weight(&self) -> f64 {
        let rank = self.rank() as f64;
        let alpha = self.alpha.unwrap_or(rank);
        if self.rank_stabilized {
            alpha / rank.sqrt()
        } else {
            alpha / rank
        }
    }
}

pub struct LoraFile {
    pub origin: String,
    pub format: LoraFormat,
    pub modules: Vec<LoraModule>,
    /// Keys that belong to no LoRA module this reader knows (LyCORIS, DoRA, bias terms, other models).
    pub unrecognised: Vec<String>,
    pub key_count: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Down,
    Up,
    Alpha,
}

fn kohya_part(key: &str) -> Option<(&str, Part)> {
    let (stem, suffix) = key.split_once('.')?;
    let part = match suffix {
        "lora_down.weight" => Part::Down,
        "lora_up.weight" => Part::Up,
        "alpha" => Part::Alpha,
        _ => return None,
    };
    Some((stem, part))
}

fn peft_part(key: &str) -> Option<(&str, Part)> {
    const SUFFIXES: [(&str, Part); 9] = [
        (".lora_A.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        (".lora.down.weight", Part::Down),
        (".lora.up.weight", Part::Up),
        (".lora_linear_layer.down.weight", Part::Down),
        (".lora_linear_layer.up.weight", Part::Up),
        (".lora_down.weight", Part::Down),
        (".lora_up.weight", Part::Up),
        (".alpha", Part::Alpha),
    ];
    if let Some(found) = SUFFIXES.iter().find_map(|(suffix, part)| key.strip_suffix(suffix).map(|stem| (stem, *part))) {
        return Some(found);
    }
    // PEFT with the adapter's name inside: `<module>.lora_A.<adapter>.weight`.
    let rest = key.strip_suffix(".weight")?;
    let (head, _adapter) = rest.rsplit_once('.')?;
    if let Some(stem) = head.strip_suffix(".lora_A") {
        return Some((stem, Part::Down));
    }
    head.strip_suffix(".lora_B").map(|stem| (stem, Part::Up))
}

/// Splits a key into (network, layer, stem, part); None when it is no LoRA key we know.
fn classify(key: &str) -> Option<(Network, LayerName, String, Part)> {
    if key.starts_with("lora_") {
        let (stem, part) = kohya_part(key)?;
        for (prefix, network) in [("lora_unet_", Network::Unet), ("lora_te1_", Network::TextEncoder), ("lora_te2_", Network::TextEncoder2)] {
            if let Some(layer) = stem.strip_prefix(prefix) {
                return Some((network, LayerName::Kohya(layer.to_string()), stem.to_string(), part));
            }
        }
        return None;
    }
    let (stem, part) = peft_part(key)?;
    for (prefix, network) in [("text_encoder_2.", Network::TextEncoder2), ("text_encoder.", Network::TextEncoder), ("unet.", Network::Unet)] {
        if let Some(layer) = stem.strip_prefix(prefix) {
            return Some((network, LayerName::Diffusers(layer.to_string()), stem.to_string(), part));
        }
    }
    None
}

/// SD 1.x/2.x kohya files name their single text encoder `lora_te_`; SDXL's are `lora_te1_`/`lora_te2_`.
fn other_architecture(file: &SafetensorsFile) -> Option<String> {
    let legacy_te = file.names().filter(|k| k.starts_with("lora_te_")).count();
    if legacy_te > 0 {
        return Some(format!(
            "is a LoRA for Stable Diffusion 1.x/2.x, not SDXL: {legacy_te} of its keys are lora_te_* (one text encoder), SDXL LoRAs have lora_te1_*/lora_te2_*"
        ));
    }
    None
}

/// diffusers' `lora_adapter_metadata`: the PEFT `LoraConfig` of each network, keys prefixed
/// with the network (`unet.lora_alpha`, `text_encoder.alpha_pattern`, ...).
struct AdapterConfig {
    values: serde_json::Map<String, Value>,
}

impl AdapterConfig {
    fn read(file: &SafetensorsFile) -> Result<Self> {
        let values = match file.metadata("lora_adapter_metadata") {
            None => Default::default(),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(values)) => values,
                _ => return Err(Error::ModelLoad(format!("{}: lora_adapter_metadata is not a JSON object", file.origin))),
            },
        };
        Ok(Self { values })
    }

    fn get(&self, network: Network, field: &str) -> Option<&Value> {
        self.values.get(&format!("{}.{field}", network.name()))
    }

    /// PEFT's alpha for a module: `alpha_pattern` (matched as a dotted-name suffix) over `lora_alpha`.
    fn alpha(&self, network: Network, layer: &str) -> Option<f64> {
        if let Some(Value::Object(patterns)) = self.get(network, "alpha_pattern") {
            let found = patterns
                .iter()
                .find(|(pattern, _)| layer == pattern.as_str() || layer.ends_with(&format!(".{pattern}")))
                .and_then(|(_, alpha)| alpha.as_f64());
            if found.is_some() {
                return found;
            }
        }
        self.get(network, "lora_alpha").and_then(Value::as_f64)
    }

    fn flag(&self, network: Network, field: &str) -> bool {
        self.get(network, field).and_then(Value::as_bool).unwrap_or(false)
    }
}

pub fn read_lora_file(path: &Path) -> Result<LoraFile> {
    let file = SafetensorsFile::open(path)?;
    parse_lora(&file)
}

/// Groups a file's keys into modules and checks each one's shapes; loads every tensor (to the
/// CPU), so a truncated file fails here rather than halfway through applying it.
pub fn parse_lora(file: &SafetensorsFile) -> Result<LoraFile> {
    let origin = &file.origin;
    if let Some(reason) = other_architecture(file) {
        return Err(Error::ModelLoad(format!("{origin} {reason}")));
    }
    let config = AdapterConfig::read(file)?;
    let mut grouped: BTreeMap<String, (Network, LayerName, HashMap<u8, String>)> = BTreeMap::new();
    let mut unrecognised = Vec::new();
    let (mut kohya, mut peft) = (0usize, 0usize);
    let mut keys: Vec<&String> = file.names().collect();
    keys.sort();
    for key in &keys {
        match classify(key) {
            Some((network, layer, stem, part)) => {
                match layer {
                    LayerName::Kohya(_) => kohya += 1,
                    LayerName::Diffusers(_) => peft += 1,
                }
                let entry = grouped.entry(stem).or_insert_with(|| (network, layer, HashMap::new()));
                entry.2.insert(part as u8, key.to_string());
            }
            None => unrecognised.push(key.to_string()),
        }
    }
    if grouped.is_empty() {
        return Err(Error::ModelLoad(format!(
            "{origin} holds no LoRA weights ({} keys, none like lora_unet_*.lora_down.weight or unet.*.lora_A.weight{})",
            keys.len(),
            keys.first().map(|k| format!("; first key: {k}")).unwrap_or_default()
        )));
    }
    let load = |key: &str| -> Result<Tensor> { file.load(key, &Device::Cpu) };
    let mut modules = Vec::new();
    for (stem, (network, layer, parts)) in grouped {
        let (Some(down_key), Some(up_key)) = (parts.get(&(Part::Down as u8)), parts.get(&(Part::Up as u8))) else {
            let has = if parts.contains_key(&(Part::Down as u8)) { "a down" } else if parts.contains_key(&(Part::Up as u8)) { "an up" } else { "only an alpha" };
            return Err(Error::ModelLoad(format!("{origin}: {stem} has {has} matrix but not both down (lora_A) and up (lora_B)")));
        };
        let down = load(down_key)?;
        let up = load(up_key)?;
        check_factor_shapes(origin, &stem, &down, &up)?;
        let stored_alpha = match parts.get(&(Part::Alpha as u8)) {
            Some(key) => {
                let alpha = load(key)?;
                if alpha.elem_count() != 1 {
                    return Err(Error::ModelLoad(format!("{origin}: {key} must be a single number, has shape {:?}", alpha.dims())));
                }
                Some(alpha.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0])
            }
            None => None,
        };
        let (alpha, rank_stabilized) = match &layer {
            LayerName::Kohya(_) => (stored_alpha, false),
            LayerName::Diffusers(name) => {
                if config.flag(network, "use_dora") {
                    return Err(Error::ModelLoad(format!("{origin}: DoRA adapters (use_dora) are not supported")));
                }
                (config.alpha(network, name).or(stored_alpha), config.flag(network, "use_rslora"))
            }
        };
        if let Some(alpha) = alpha {
            if !alpha.is_finite() {
                return Err(Error::ModelLoad(format!("{origin}: {stem} has alpha {alpha}")));
            }
        }
        modules.push(LoraModule { network, layer, stem, keys: parts.len(), down, up, alpha, rank_stabilized });
    }
    Ok(LoraFile {
        origin: origin.clone(),
        format: if kohya >= peft { LoraFormat::Kohya } else { LoraFormat::Peft },
        modules,
        unrecognised,
        key_count: keys.len(),
    })
}

fn check_factor_shapes(origin: &str, stem: &str, down: &Tensor, up: &Tensor) -> Result<()> {
    let (d, u) = (down.dims(), up.dims());
    let ok = matches!(d.len(), 2 | 4)
        && matches!(u.len(), 2 | 4)
        && d[0] > 0
        && u[1] == d[0]
        && u[2..].iter().all(|&k| k == 1)
        && d.iter().chain(u).all(|&n| n > 0);
    if !ok {
        return Err(Error::ModelLoad(format!(
            "{origin}: {stem} has down {d:?} and up {u:?}; a LoRA needs down (rank, in[, kh, kw]) and up (out, rank[, 1, 1]) of the same rank"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_both_layouts_are_classified() {
        let (network, layer, stem, part) = classify("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight").unwrap();
        assert_eq!(network, Network::Unet);
        assert_eq!(layer, LayerName::Kohya("input_blocks_4_1_transformer_blocks_0_attn1_to_q".into()));
        assert_eq!(stem, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q");
        assert!(part == Part::Down);
        let (network, layer, _, part) = classify("text_encoder_2.text_model.encoder.layers.3.self_attn.q_proj.lora_B.default.weight").unwrap();
        assert_eq!(network, Network::TextEncoder2);
        assert_eq!(layer, LayerName::Diffusers("text_model.encoder.layers.3.self_attn.q_proj".into()));
        assert!(part == Part::Up);
        let (_, layer, _, part) = classify("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.weight").unwrap();
        assert_eq!(layer, LayerName::Diffusers("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0".into()));
        assert!(part == Part::Down);
        assert!(classify("lora_unet_input_blocks_1_0_in_layers_2.hada_w1_a").is_none());
        assert!(classify("unet.conv_in.weight").is_none());
    }
}
