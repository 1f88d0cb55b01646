//! A VAE on its own: a custom VAE (`models.vae`) from a folder or a single file in any of the
//! three layouts VAEs are published in, or a model's own VAE in another dtype
//! (`precision.vae_dtype`, and the float32 retry of a half-precision decode that overflowed).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::var_builder::SimpleBackend;

use super::safetensors_file::SafetensorsFile;
use super::weights::WeightSet;
use super::{builtin, folder_files, place_network, refuse_pickle_checkpoint, resolve_model, single_file, ModelLocation};
use crate::error::{Error, Result};
use crate::models::offload::Placement;
use crate::models::{AutoencoderKL, UNetConfig, VaeConfig};

/// A VAE ready to encode and decode, with what its weights take.
pub struct VaeModel {
    pub network: Placement<AutoencoderKL>,
    pub dtype: DType,
    pub description: String,
    pub weight_bytes: u64,
    pub device_weight_bytes: u64,
    pub host_weight_bytes: u64,
}

pub struct VaeLoadOptions<'a> {
    pub device: &'a Device,
    pub dtype: DType,
    pub cpu_offload: bool,
}

/// A `models.vae` name: as a model name resolves, then `<models_dir>/vae/<name>(.safetensors)`.
pub fn resolve_vae(name: &str, models_dir: Option<&Path>) -> Result<ModelLocation> {
    let in_vae_folder = models_dir.map(|dir| dir.join("vae"));
    resolve_model(name, models_dir).or_else(|first| match &in_vae_folder {
        Some(dir) if dir.is_dir() => resolve_model(name, Some(dir)).map_err(|_| first),
        _ => Err(first),
    })
}

/// How a VAE file names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VaeFileLayout {
    /// `encoder.down_blocks.0.resnets.0…`, as diffusers saves `AutoencoderKL`.
    Diffusers,
    /// `encoder.down.0.block.0…`, as `sdxl_vae.safetensors` is published.
    Original,
    /// The original names under `first_stage_model.`: a whole checkpoint, or a VAE cut from one.
    Checkpoint,
}

fn detect_layout(file: &SafetensorsFile) -> Option<VaeFileLayout> {
    let has = |prefix: &str| file.names().any(|name| name.starts_with(prefix));
    if has(single_file::VAE_PREFIX) {
        Some(VaeFileLayout::Checkpoint)
    } else if has("encoder.down_blocks.") || has("decoder.up_blocks.") {
        Some(VaeFileLayout::Diffusers)
    } else if has("encoder.down.") || has("decoder.up.") {
        Some(VaeFileLayout::Original)
    } else {
        None
    }
}

/// Loads a VAE from `location`: a VAE folder (`config.json` + weights), a pipeline folder's
/// `vae/`, a single file (its architecture is `fallback_config`, the base model's VAE config,
/// since a file carries no config), or a built-in model's. The VAE must produce the latents
/// `unet` denoises; that is checked before any weight is read.
pub fn load_vae(location: &ModelLocation, fallback_config: &VaeConfig, unet: &UNetConfig, options: &VaeLoadOptions) -> Result<VaeModel> {
    let (config, weights, description, weight_bytes): (VaeConfig, Box<dyn SimpleBackend>, String, u64) = match location {
        ModelLocation::Builtin => (VaeConfig::tiny(), builtin::builtin_weights(), "built-in tiny demo model's VAE".into(), 0),
        ModelLocation::BuiltinSdxlRandom | ModelLocation::BuiltinSdxlRefinerRandom => (VaeConfig::sdxl(), builtin::device_random_weights(), "built-in full-size SDXL's VAE (random weights)".into(), 0),
        ModelLocation::DiffusersFolder(dir) => {
            let folder = vae_folder(dir)?;
            let text = std::fs::read_to_string(folder.join("config.json")).map_err(|e| Error::ModelLoad(format!("{}: {e}", folder.join("config.json").display())))?;
            let config = VaeConfig::from_json(&text)?;
            super::check_latent_channels(&config, unet)?;
            let files = folder_files(&folder, "diffusion_pytorch_model")?;
            let bytes = files.iter().map(|f| f.data_len() as u64).sum();
            (config, Arc::new(WeightSet::with_prefix(files, "", "vae")).into_backend(), format!("VAE folder {}", folder.display()), bytes)
        }
        ModelLocation::SingleFile(path) => {
            refuse_pickle_checkpoint(path)?;
            let file = Arc::new(SafetensorsFile::open(path)?);
            let config = fallback_config.clone();
            super::check_latent_channels(&config, unet)?;
            let levels = config.block_out_channels.len();
            let (map, layout_name) = match detect_layout(&file) {
                Some(VaeFileLayout::Diffusers) => (None, "diffusers layout"),
                Some(VaeFileLayout::Original) => (Some(single_file::vae_map("", levels)), "original layout"),
                Some(VaeFileLayout::Checkpoint) => (Some(single_file::vae_map(single_file::VAE_PREFIX, levels)), "checkpoint layout"),
                None => {
                    return Err(Error::ModelLoad(format!(
                        "{} is not a VAE: no encoder.down_blocks / encoder.down / first_stage_model keys",
                        path.display()
                    )))
                }
            };
            let bytes = file.data_len() as u64;
            let set = match map {
                Some(map) => WeightSet::new(vec![file], map, "vae"),
                None => WeightSet::with_prefix(vec![file], "", "vae"),
            };
            (config, Arc::new(set).into_backend(), format!("VAE file {} ({layout_name})", path.display()), bytes)
        }
    };
    let root = match location {
        ModelLocation::Builtin | ModelLocation::BuiltinSdxlRandom | ModelLocation::BuiltinSdxlRefinerRandom => "vae",
        _ => "",
    };
    let build_config = config.clone();
    let build: crate::models::offload::NetworkBuilder<AutoencoderKL> = Box::new(move |vb| AutoencoderKL::new(vb, &build_config));
    let placed = place_network(weights, root, "vae", options.dtype, options.device, options.cpu_offload, build)?;
    Ok(VaeModel {
        network: placed.network,
        dtype: options.dtype,
        description,
        weight_bytes,
        device_weight_bytes: placed.device_weight_bytes,
        host_weight_bytes: placed.host_weight_bytes,
    })
}

/// A VAE folder has `config.json`; a pipeline folder has it under `vae/`.
fn vae_folder(dir: &Path) -> Result<PathBuf> {
    if dir.join("config.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    if dir.join("vae").join("config.json").is_file() {
        return Ok(dir.join("vae"));
    }
    Err(Error::ModelLoad(format!("{} has no config.json and no vae/config.json: not a VAE folder", dir.display())))
}
