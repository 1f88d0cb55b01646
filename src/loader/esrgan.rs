//! Real-ESRGAN weights (RRDBNet) as users download them: PyTorch `.pth` files holding
//! `{"params_ema": state_dict}` or `{"params": state_dict}` (as `RealESRGANer` picks), or
//! safetensors. A `.pth` is a pickle: it is read by candle's pickle reader, which interprets
//! the opcodes into plain values and never imports or calls anything, and before that every
//! global the pickle names is checked against the handful a tensor checkpoint needs, so a file
//! that would run code under `torch.load` is refused by name.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::safetensors_file::SafetensorsFile;
use crate::error::{Error, Result};
use crate::models::esrgan::{RrdbConfig, RrdbNet};

/// An upscaler ready to run.
pub struct LoadedUpscaler {
    pub network: RrdbNet,
    pub description: String,
    pub weight_bytes: u64,
    pub device_weight_bytes: u64,
}

/// The globals a state-dict pickle written by `torch.save` uses; anything else is refused.
const ALLOWED_GLOBALS: [(&str, &str); 6] = [
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "FloatStorage"),
    ("torch", "HalfStorage"),
];

/// `models.upscale` name: as given (a path), under `<models_dir>/upscalers/`, or the default
/// `<models_dir>/upscalers/RealESRGAN_x{factor}plus.pth`. The error lists every path tried.
pub fn resolve_upscaler(name: Option<&str>, factor: u32, models_dir: Option<&Path>) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let folder = models_dir.map(|dir| dir.join("upscalers"));
    let candidates: Vec<PathBuf> = match name {
        Some(name) => {
            let mut list = vec![PathBuf::from(name)];
            if let Some(dir) = &folder {
                for extension in ["", ".pth", ".safetensors"] {
                    list.push(dir.join(format!("{name}{extension}")));
                }
            }
            list
        }
        None => match &folder {
            Some(dir) => vec![dir.join(format!("RealESRGAN_x{factor}plus.pth")), dir.join(format!("RealESRGAN_x{factor}plus.safetensors"))],
            None => Vec::new(),
        },
    };
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    Err(Error::ModelNotFound(if tried.is_empty() {
        format!("no upscaler model named and no models_dir to find RealESRGAN_x{factor}plus.pth in")
    } else {
        format!("no upscaler model at {}", tried.join(", "))
    }))
}

pub fn load_upscaler(path: &Path, device: &Device, dtype: DType) -> Result<LoadedUpscaler> {
    let origin = path.display().to_string();
    let tensors = if path.extension().is_some_and(|e| e == "safetensors") {
        let file = SafetensorsFile::open(path)?;
        let names: Vec<String> = file.names().cloned().collect();
        names.into_iter().map(|name| Ok((name.clone(), file.load(&name, &Device::Cpu)?))).collect::<Result<HashMap<_, _>>>()?
    } else {
        read_pth_state_dict(path)?
    };
    let config = config_from_weights(&tensors, &origin)?;
    let weight_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let device_weight_bytes = tensors.values().map(|t| (t.elem_count() * dtype.size_in_bytes()) as u64).sum();
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    let network = RrdbNet::new(vb, &config).map_err(|e| Error::ModelLoad(format!("{origin}: {e}")))?;
    let description = format!("RRDBNet ×{} ({} blocks, {} features) from {origin}", config.scale, config.num_block, config.num_feat);
    Ok(LoadedUpscaler { network, description, weight_bytes, device_weight_bytes })
}

/// The state dict of a `.pth`: `params_ema` if the file has it, else `params`, else the
/// top-level dict itself (RealESRGANer's choice, extended to bare state dicts).
fn read_pth_state_dict(path: &Path) -> Result<HashMap<String, Tensor>> {
    let origin = path.display().to_string();
    check_pickle_globals(path)?;
    let read = |key: Option<&str>| candle_core::pickle::read_all_with_key(path, key);
    let tensors = read(Some("params_ema")).or_else(|_| read(Some("params"))).or_else(|_| read(None)).map_err(|e| Error::ModelLoad(format!("{origin}: {e}")))?;
    if tensors.is_empty() {
        return Err(Error::ModelLoad(format!("{origin} holds no tensors (expected a Real-ESRGAN state dict under params_ema or params)")));
    }
    Ok(tensors.into_iter().collect())
}

/// Reads every `data.pkl` of the zip into candle's pickle values and refuses any global that
/// is not one a tensor state dict needs (`os.system`, `builtins.eval`, … would run code in
/// `torch.load` without `weights_only`).
fn check_pickle_globals(path: &Path) -> Result<()> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::ModelLoad(format!("{origin}: {e}")))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| Error::ModelLoad(format!("{origin} is not a PyTorch zip checkpoint (torch.save's format since 1.6): {e}")))?;
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|name| name.ok().map(|name| name.into_owned()))
        .filter(|name| name.ends_with("data.pkl"))
        .collect();
    if names.is_empty() {
        return Err(Error::ModelLoad(format!("{origin} has no data.pkl: not a PyTorch checkpoint")));
    }
    for name in names {
        let mut bytes = Vec::new();
        archive
            .by_name(&name)
            .and_then(|mut entry| entry.read_to_end(&mut bytes).map_err(Into::into))
            .map_err(|e| Error::ModelLoad(format!("{origin}: {name}: {e}")))?;
        let mut stack = Stack::empty();
        stack.read_loop(&mut std::io::Cursor::new(bytes)).map_err(|e| Error::ModelLoad(format!("{origin}: {name}: {e}")))?;
        let object = stack.finalize().map_err(|e| Error::ModelLoad(format!("{origin}: {name}: {e}")))?;
        if let Some((module, class)) = foreign_global(&object) {
            return Err(Error::Unsupported(format!(
                "{origin} refers to {module}.{class}, which a tensor checkpoint does not use: refused (loading it with torch.load would run that code)"
            )));
        }
    }
    Ok(())
}

fn foreign_global(object: &Object) -> Option<(String, String)> {
    match object {
        Object::Class { module_name, class_name } => {
            let allowed = ALLOWED_GLOBALS.iter().any(|(m, c)| m == module_name && c == class_name)
                || (module_name == "torch" && class_name.ends_with("Storage"));
            (!allowed).then(|| (module_name.clone(), class_name.clone()))
        }
        Object::Tuple(items) | Object::List(items) => items.iter().find_map(foreign_global),
        Object::Dict(pairs) => pairs.iter().find_map(|(k, v)| foreign_global(k).or_else(|| foreign_global(v))),
        Object::Reduce { callable, args } | Object::Build { callable, args } => foreign_global(callable).or_else(|| foreign_global(args)),
        Object::PersistentLoad(inner) => foreign_global(inner),
        _ => None,
    }
}

/// The architecture from the weights' shapes: feature width and input channels from
/// `conv_first`, growth from the first dense block, the block count from `body.N`.
fn config_from_weights(tensors: &HashMap<String, Tensor>, origin: &str) -> Result<RrdbConfig> {
    let shape = |name: &str| tensors.get(name).map(|t| t.dims().to_vec());
    let first = shape("conv_first.weight").ok_or_else(|| Error::ModelLoad(format!("{origin} is not an RRDBNet (Real-ESRGAN) model: no conv_first.weight")))?;
    let last = shape("conv_last.weight").ok_or_else(|| Error::ModelLoad(format!("{origin} is not an RRDBNet (Real-ESRGAN) model: no conv_last.weight")))?;
    let grow = shape("body.0.rdb1.conv1.weight").ok_or_else(|| Error::ModelLoad(format!("{origin}: no body.0.rdb1.conv1.weight")))?;
    if first.len() != 4 || last.len() != 4 || grow.len() != 4 {
        return Err(Error::ModelLoad(format!("{origin}: RRDBNet convolution weights must be 4-D")));
    }
    let num_block = (0..).take_while(|i| tensors.contains_key(&format!("body.{i}.rdb1.conv1.weight"))).count();
    Ok(RrdbConfig {
        in_channels: first[1],
        out_channels: last[0],
        num_feat: first[0],
        num_block,
        num_grow_ch: grow[0],
        scale: RrdbConfig::scale_for_input_channels(first[1]).map_err(|e| Error::ModelLoad(format!("{origin}: {e}")))?,
    })
}
