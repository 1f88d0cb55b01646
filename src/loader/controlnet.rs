//! ControlNet weights: a diffusers folder (`config.json` + `diffusion_pytorch_model[.fp16].safetensors`)
//! or one `.safetensors` in diffusers key layout, as most SDXL ControlNets are published. A lone
//! file's config is its folder's `config.json` when there is one, else the base UNet's with
//! what differs read from the weights (conditioning embedding widths, transformer depths).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};

use super::safetensors_file::SafetensorsFile;
use super::weights::WeightSet;
use super::{folder_files, place_network, refuse_pickle_checkpoint, resolve_model, ModelLocation};
use crate::error::{Error, Result};
use crate::models::offload::Placement;
use crate::models::unet_2d_condition::PerBlock;
use crate::models::{ControlNetConfig, ControlNetModel, UNetConfig};

/// A ControlNet ready to run, with what its weights take.
pub struct LoadedControlNet {
    pub network: Placement<ControlNetModel>,
    pub dtype: DType,
    pub description: String,
    pub weight_bytes: u64,
    pub device_weight_bytes: u64,
    pub host_weight_bytes: u64,
}

pub struct ControlNetLoadOptions<'a> {
    pub device: &'a Device,
    pub dtype: DType,
    pub cpu_offload: bool,
}

/// A ControlNet name: as a model name resolves (path, `<models_dir>/<name>[.safetensors]`),
/// then under `<models_dir>/controlnet/`. No name: `<models_dir>/controlnet/<type>` (folder or
/// `.safetensors`), the seed's convention.
pub fn resolve_controlnet(name: Option<&str>, kind: &str, models_dir: Option<&Path>) -> Result<ModelLocation> {
    let folder = models_dir.map(|dir| dir.join("controlnet"));
    let wanted = name.unwrap_or(kind);
    let in_folder = || match &folder {
        Some(dir) if dir.is_dir() => resolve_model(wanted, Some(dir)).ok(),
        _ => None,
    };
    match name {
        Some(name) => resolve_model(name, models_dir).or_else(|first| in_folder().ok_or(first)),
        None => in_folder().ok_or_else(|| {
            Error::ModelNotFound(format!(
                "no ControlNet model named and no default for type '{kind}': looked for {}",
                folder.map_or("<models_dir>/controlnet/ (no models_dir configured)".to_string(), |dir| format!("{0}/{kind}/ and {0}/{kind}.safetensors", dir.display()))
            ))
        }),
    }
}

/// Loads a ControlNet and checks that its residuals fit `unet` (same widths, levels and
/// blocks per level) before reading any weight.
pub fn load_controlnet(location: &ModelLocation, unet: &UNetConfig, options: &ControlNetLoadOptions) -> Result<LoadedControlNet> {
    let (files, config, origin): (Vec<Arc<SafetensorsFile>>, ControlNetConfig, String) = match location {
        ModelLocation::DiffusersFolder(dir) => {
            let config = read_config(&dir.join("config.json"))?;
            (folder_files(dir, "diffusion_pytorch_model")?, config, format!("ControlNet folder {}", dir.display()))
        }
        ModelLocation::SingleFile(path) => {
            refuse_pickle_checkpoint(path)?;
            let file = Arc::new(SafetensorsFile::open(path)?);
            if !file.names().any(|name| name.starts_with("controlnet_cond_embedding.")) {
                return Err(Error::ModelLoad(format!("{} is not a ControlNet in diffusers layout (no controlnet_cond_embedding.* keys)", path.display())));
            }
            let beside = path.with_file_name("config.json");
            let config = if beside.is_file() { read_config(&beside)? } else { config_from_weights(&file, unet)? };
            (vec![file], config, format!("ControlNet file {}", path.display()))
        }
        _ => return Err(Error::ModelLoad("a built-in model is not a ControlNet".into())),
    };
    check_fits(&config, unet)?;
    let weight_bytes = files.iter().map(|f| f.data_len() as u64).sum();
    let weights = Arc::new(WeightSet::with_prefix(files, "", "controlnet")).into_backend();
    let build_config = config.clone();
    let build: crate::models::offload::NetworkBuilder<ControlNetModel> = Box::new(move |vb| ControlNetModel::new(vb, &build_config));
    let placed = place_network(weights, "", "controlnet", options.dtype, options.device, options.cpu_offload, build)?;
    Ok(LoadedControlNet {
        network: placed.network,
        dtype: options.dtype,
        description: origin,
        weight_bytes,
        device_weight_bytes: placed.device_weight_bytes,
        host_weight_bytes: placed.host_weight_bytes,
    })
}

fn read_config(path: &PathBuf) -> Result<ControlNetConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::ModelLoad(format!("{}: {e}", path.display())))?;
    ControlNetConfig::from_json(&text).map_err(|e| Error::ModelLoad(format!("{}: {e}", path.display())))
}

/// The residuals of a ControlNet go into the UNet's skips: the same widths, levels, blocks
/// per level and latent channels, and the same conditioning inputs.
pub fn check_fits(config: &ControlNetConfig, unet: &UNetConfig) -> Result<()> {
    let control = &config.unet;
    let mismatch = |what: &str, ours: String, theirs: String| Err(Error::ModelLoad(format!("the ControlNet's {what} {ours} do not fit the base UNet's {theirs}")));
    if control.block_out_channels != unet.block_out_channels {
        return mismatch("block_out_channels", format!("{:?}", control.block_out_channels), format!("{:?}", unet.block_out_channels));
    }
    if control.layers_per_block != unet.layers_per_block || control.in_channels != unet.in_channels {
        return mismatch("layers_per_block / in_channels", format!("{} / {}", control.layers_per_block, control.in_channels), format!("{} / {}", unet.layers_per_block, unet.in_channels));
    }
    if control.cross_attention_dim != unet.cross_attention_dim || control.projection_class_embeddings_input_dim != unet.projection_class_embeddings_input_dim {
        return mismatch(
            "cross_attention_dim / projection_class_embeddings_input_dim",
            format!("{} / {:?}", control.cross_attention_dim, control.projection_class_embeddings_input_dim),
            format!("{} / {:?}", unet.cross_attention_dim, unet.projection_class_embeddings_input_dim),
        );
    }
    Ok(())
}

/// A lone file's config: the base UNet's, with the conditioning embedding's widths and each
/// level's transformer depth read from the weights (the "small"/"mid" SDXL ControlNets are
/// shallower than the UNet).
fn config_from_weights(file: &SafetensorsFile, unet: &UNetConfig) -> Result<ControlNetConfig> {
    let shape = |name: &str| file.shape(name).map(<[usize]>::to_vec);
    let first = shape("controlnet_cond_embedding.conv_in.weight").ok_or_else(|| Error::ModelLoad("ControlNet file lacks controlnet_cond_embedding.conv_in.weight".into()))?;
    let mut widths = vec![first[0]];
    let mut block = 1;
    while let Some(stride_conv) = shape(&format!("controlnet_cond_embedding.blocks.{block}.weight")) {
        widths.push(stride_conv[0]);
        block += 2;
    }
    let levels = unet.block_out_channels.len();
    let depths: Vec<usize> = (0..levels)
        .map(|level| {
            let prefix = format!("down_blocks.{level}.attentions.0.transformer_blocks.");
            let count = file.names().filter_map(|name| name.strip_prefix(&prefix)).filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok()).max().map_or(0, |last| last + 1);
            count.max(1)
        })
        .collect();
    let mut config = ControlNetConfig { unet: unet.clone(), conditioning_channels: first[1], conditioning_embedding_out_channels: widths, ..ControlNetConfig::default() };
    config.unet.transformer_layers_per_block = PerBlock::Each(depths);
    Ok(config)
}
