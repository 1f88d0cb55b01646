//! Weight files → networks: diffusers folders (plain, fp16 variant, sharded), single-file
//! SGM checkpoints, and the built-in demo model. Model names resolve as the seed's
//! `_resolve_model_path` did, minus the hub: nothing is ever downloaded.

pub mod builtin;
pub mod controlnet;
pub mod esrgan;
pub mod lora;
pub mod safetensors_file;
pub mod single_file;
pub mod vae;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::models::offload::{NetworkBuilder, Placement};
use crate::models::patchable::{collect_layers, LayerRegistry};
use crate::models::{AutoencoderKL, ClipTextConfig, ClipTextTransformer, UNet2DConditionModel, UNetConfig, VaeConfig};
use crate::schedulers::SchedulerConfig;
use crate::tokenizer::ClipTokenizer;
use safetensors_file::SafetensorsFile;
use weights::{model_load_error, CountingBackend, WeightSet};

/// Where a model name points.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelLocation {
    Builtin,
    BuiltinSdxlRandom,
    BuiltinSdxlRefinerRandom,
    DiffusersFolder(PathBuf),
    SingleFile(PathBuf),
}

impl ModelLocation {
    /// The file or folder, for models that have one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ModelLocation::DiffusersFolder(path) | ModelLocation::SingleFile(path) => Some(path),
            _ => None,
        }
    }
}

/// `name` as given; an existing path; `models_dir/<name>.safetensors`; `models_dir/<name>/`.
pub fn resolve_model(name: &str, models_dir: Option<&Path>) -> Result<ModelLocation> {
    if name == builtin::BUILTIN_TINY {
        return Ok(ModelLocation::Builtin);
    }
    if name == builtin::BUILTIN_SDXL_RANDOM {
        return Ok(ModelLocation::BuiltinSdxlRandom);
    }
    if name == builtin::BUILTIN_SDXL_REFINER_RANDOM {
        return Ok(ModelLocation::BuiltinSdxlRefinerRandom);
    }
    let classify = |path: PathBuf| -> Option<ModelLocation> {
        if path.is_dir() {
            Some(ModelLocation::DiffusersFolder(path))
        } else if path.is_file() {
            Some(ModelLocation::SingleFile(path))
        } else {
            None
        }
    };
    if let Some(found) = classify(PathBuf::from(name)) {
        return Ok(found);
    }
    if let Some(dir) = models_dir {
        // `.ckpt` is looked up as the seed's worker did, so the user learns how to convert it
        // instead of hearing that nothing was found.
        for candidate in [dir.join(format!("{name}.safetensors")), dir.join(name), dir.join(format!("{name}.ckpt"))] {
            if let Some(found) = classify(candidate) {
                return Ok(found);
            }
        }
    }
    Err(Error::ModelNotFound(format!(
        "'{name}' is not a file or folder, and not {}<name>.safetensors or a diffusers folder there (models are never downloaded)",
        models_dir.map(|d| format!("{}/", d.display())).unwrap_or_else(|| "in models_dir (none configured): ".into())
    )))
}

/// PyTorch checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`: a zip archive or a bare pickle) are
/// refused, not unpickled: loading a pickle can run arbitrary code, and SDXL checkpoints are
/// published as safetensors. The message says how to convert one.
fn refuse_pickle_checkpoint(path: &Path) -> Result<()> {
    use std::io::Read;
    // A safetensors file starts with its header's length (8 bytes) and then '{'.
    let mut head = [0u8; 9];
    let read = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    let safetensors = read == 9 && head[8] == b'{';
    let zip = read >= 4 && head[..4] == *b"PK\x03\x04";
    let pickle = read >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]);
    if !safetensors && (zip || pickle) {
        return Err(Error::Unsupported(format!(
            "{} is a PyTorch pickle checkpoint; this library loads safetensors only (unpickling can run code). \
             Convert it once: python -c \"import torch, safetensors.torch as st; sd = torch.load('{name}', map_location='cpu', weights_only=True); \
             sd = sd.get('state_dict', sd); st.save_file({{k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}}, '{stem}.safetensors')\"",
            path.display(),
            name = path.display(),
            stem = path.with_extension("").display(),
        )));
    }
    Ok(())
}

/// What a model folder or checkpoint holds: SDXL's base, or its refiner (OpenCLIP encoder
/// only, aesthetic-score conditioning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelRole {
    Base,
    Refiner,
}

impl ModelRole {
    pub fn name(self) -> &'static str {
        match self {
            ModelRole::Base => "base",
            ModelRole::Refiner => "refiner",
        }
    }
}

/// Everything a txt2img/img2img run needs, loaded once and reused across requests.
pub struct SdxlModel {
    pub role: ModelRole,
    pub unet: UNet2DConditionModel,
    /// CLIP ViT-L; the refiner has none.
    pub text_encoder: Option<Placement<ClipTextTransformer>>,
    /// OpenCLIP bigG; shared between a base and its refiner when their weights are the same.
    pub text_encoder_2: Arc<Placement<ClipTextTransformer>>,
    pub vae: Placement<AutoencoderKL>,
    pub tokenizer: Option<ClipTokenizer>,
    pub tokenizer_2: ClipTokenizer,
    pub scheduler_config: SchedulerConfig,
    /// diffusers' pipeline option: an empty negative prompt becomes zero embeddings.
    pub force_zeros_for_empty_prompt: bool,
    /// The refiner's time ids end with an aesthetic score instead of the target size.
    pub requires_aesthetics_score: bool,
    /// Where the weights came from, so a VAE in another dtype can be loaded from the same place.
    pub location: ModelLocation,
    pub config_dir: Option<PathBuf>,
    /// The second encoder's stored weights, to recognise a refiner that shares them.
    text_encoder_2_weights: EncoderWeights,
    pub dtype: DType,
    pub vae_dtype: DType,
    pub description: String,
    pub weight_bytes: u64,
    /// Bytes of weights resident on the compute device, and kept in host memory (offloaded).
    pub device_weight_bytes: u64,
    pub host_weight_bytes: u64,
    /// Text encoders and VAE stay in host memory between uses (`precision.cpu_offload`).
    pub cpu_offload: bool,
    /// The layers LoRA adapters patch, and which adapters are fused in now.
    pub adapters: crate::lora::ModelAdapters,
}

pub struct LoadOptions<'a> {
    /// What the caller needs: a base named as the refiner (or the reverse) is refused before
    /// any weight is read.
    pub role: ModelRole,
    /// A loaded base whose OpenCLIP encoder a refiner reuses when the weights are the same.
    pub share_text_encoder_2_with: Option<&'a SdxlModel>,
    pub device: &'a Device,
    pub dtype: DType,
    pub vae_dtype: DType,
    /// A diffusers folder whose `*/config.json` describe a single-file checkpoint
    /// (as diffusers' `from_single_file(config=...)`), for non-standard sizes.
    pub config_dir: Option<&'a Path>,
    /// Keep the text encoders and the VAE in host memory, on the device only while they run.
    pub cpu_offload: bool,
}

/// The device memory a model's weights will take once loaded, from the file headers alone
/// (nothing is read), so the engine can make room before loading. Offloaded networks count
/// nothing: they live in host memory.
pub fn estimate_device_weight_bytes(location: &ModelLocation, options: &LoadOptions) -> Result<u64> {
    let (dtype, vae_dtype) = (options.dtype.size_in_bytes() as u64, options.vae_dtype.size_in_bytes() as u64);
    let elements = |file: &SafetensorsFile, name: &str| file.shape(name).map_or(0, |shape| shape.iter().product::<usize>() as u64);
    let offloaded = |component: &str| options.cpu_offload && component != "unet";
    match location {
        // A few megabytes: too small to plan for.
        ModelLocation::Builtin => Ok(0),
        ModelLocation::BuiltinSdxlRandom | ModelLocation::BuiltinSdxlRefinerRandom => {
            // Parameter counts of SDXL base's (refiner's) UNet, CLIP ViT-L, OpenCLIP bigG and VAE.
            let refiner = *location == ModelLocation::BuiltinSdxlRefinerRandom;
            let parts = [
                ("unet", if refiner { 2_260_000_000u64 } else { 2_567_463_684 }, dtype),
                ("text_encoder", if refiner { 0 } else { 123_060_480 }, dtype),
                ("text_encoder_2", 694_659_840, dtype),
                ("vae", 83_653_863, vae_dtype),
            ];
            Ok(parts.iter().filter(|(component, ..)| !offloaded(component)).map(|(_, count, size)| count * size).sum())
        }
        ModelLocation::DiffusersFolder(dir) => {
            let mut total = 0;
            for (component, stem, size) in [("unet", "diffusion_pytorch_model", dtype), ("text_encoder", "model", dtype), ("text_encoder_2", "model", dtype), ("vae", "diffusion_pytorch_model", vae_dtype)] {
                // A refiner folder has no first text encoder.
                if offloaded(component) || (component == "text_encoder" && !dir.join(component).is_dir()) {
                    continue;
                }
                for file in component_files(dir, component, stem)? {
                    total += file.names().map(|name| elements(&file, name)).sum::<u64>() * size;
                }
            }
            Ok(total)
        }
        ModelLocation::SingleFile(path) => {
            let file = SafetensorsFile::open(path)?;
            Ok(file
                .names()
                .map(|name| {
                    let (component, size) = match name {
                        n if n.starts_with("model.diffusion_model.") => ("unet", dtype),
                        n if n.starts_with("first_stage_model.") => ("vae", vae_dtype),
                        _ => ("text_encoder", dtype),
                    };
                    if offloaded(component) { 0 } else { elements(&file, name) * size }
                })
                .sum())
        }
    }
}

/// The first `digits` hex digits of a file's SHA-256 (AUTOMATIC1111's AutoV2 model hash is 10).
pub fn file_sha256_prefix(path: &Path, digits: usize) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex[..digits.min(hex.len())].to_string())
}

/// About how many parameters a VAE of this config has, from SDXL's VAE (83.7 M at widths
/// 128/256/512/512), scaled by the squared widths: enough to make room before loading one.
pub fn vae_parameter_count(config: &VaeConfig) -> u64 {
    let squares = |widths: &[usize]| widths.iter().map(|&w| (w * w) as u64).sum::<u64>().max(1);
    83_653_863u64.saturating_mul(squares(&config.block_out_channels)) / squares(&[128, 256, 512, 512])
}

pub fn load_model(location: &ModelLocation, options: &LoadOptions) -> Result<SdxlModel> {
    match location {
        ModelLocation::Builtin => load_builtin(options),
        ModelLocation::BuiltinSdxlRandom => load_sdxl_random(options),
        ModelLocation::BuiltinSdxlRefinerRandom => load_generated(
            published_configs(single_file::CheckpointKind::SdxlRefiner),
            builtin::device_random_weights,
            options,
            "built-in full-size SDXL refiner with random weights (benchmarks)",
            ModelLocation::BuiltinSdxlRefinerRandom,
        ),
        ModelLocation::DiffusersFolder(dir) => load_diffusers_folder(dir, options),
        ModelLocation::SingleFile(path) => load_single_file(path, options),
    }
}

struct Configs {
    unet: UNetConfig,
    /// None for the refiner.
    text_encoder: Option<ClipTextConfig>,
    text_encoder_2: ClipTextConfig,
    vae: VaeConfig,
    scheduler: SchedulerConfig,
    force_zeros: bool,
    requires_aesthetics_score: bool,
}

impl Configs {
    fn role(&self) -> ModelRole {
        if self.text_encoder.is_some() { ModelRole::Base } else { ModelRole::Refiner }
    }

    /// Refuses a base given as the refiner and the reverse, naming what the files hold.
    fn check_role(&self, expected: ModelRole, origin: &str) -> Result<()> {
        match (self.role(), expected) {
            (found, wanted) if found == wanted => Ok(()),
            (ModelRole::Refiner, _) => Err(Error::ModelLoad(format!("{origin} is an SDXL refiner (no CLIP ViT-L text encoder); name it in models.refiner, not as the base model"))),
            (ModelRole::Base, _) => Err(Error::ModelLoad(format!("{origin} is an SDXL base model, not a refiner (it has two text encoders and no aesthetic-score conditioning)"))),
        }
    }
}

fn read_configs(dir: &Path) -> Result<Configs> {
    let read = |component: &str, file: &str| -> Result<String> {
        let path = dir.join(component).join(file);
        std::fs::read_to_string(&path).map_err(|e| Error::ModelLoad(format!("{}: {e}", path.display())))
    };
    let (force_zeros, requires_aesthetics_score) = match std::fs::read_to_string(dir.join("model_index.json")) {
        Ok(text) => {
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::ModelLoad(format!("model_index.json: {e}")))?;
            if let Some(class) = index["_class_name"].as_str() {
                if !class.contains("XL") {
                    return Err(Error::ModelLoad(format!("{} holds a {class}, not an SDXL pipeline", dir.display())));
                }
            }
            // diffusers' pipeline defaults when the index does not say.
            (index["force_zeros_for_empty_prompt"].as_bool().unwrap_or(true), index["requires_aesthetics_score"].as_bool().unwrap_or(false))
        }
        Err(_) => (true, false),
    };
    let scheduler = match read("scheduler", "scheduler_config.json") {
        Ok(text) => SchedulerConfig::from_json(&text)?,
        Err(_) => SchedulerConfig::default(),
    };
    // The refiner's folder has no text_encoder/ (its model_index lists it as null).
    let text_encoder = if dir.join("text_encoder").is_dir() {
        Some(ClipTextConfig::from_json(&read("text_encoder", "config.json")?, "text_encoder")?)
    } else {
        None
    };
    Ok(Configs {
        unet: UNetConfig::from_json(&read("unet", "config.json")?)?,
        text_encoder,
        text_encoder_2: ClipTextConfig::from_json(&read("text_encoder_2", "config.json")?, "text_encoder_2")?,
        vae: VaeConfig::from_json(&read("vae", "config.json")?)?,
        scheduler,
        force_zeros,
        requires_aesthetics_score,
    })
}

/// The safetensors files of one diffusers component: sharded index, fp16 variant or plain.
fn component_files(dir: &Path, component: &str, stem: &str) -> Result<Vec<Arc<SafetensorsFile>>> {
    let folder = dir.join(component);
    if !folder.is_dir() {
        return Err(Error::ModelLoad(format!("{} has no {component}/ folder", dir.display())));
    }
    for index_name in [format!("{stem}.safetensors.index.json"), format!("{stem}.safetensors.index.fp16.json"), format!("{stem}.fp16.safetensors.index.json")] {
        let index_path = folder.join(&index_name);
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)?;
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::ModelLoad(format!("{}: {e}", index_path.display())))?;
            let mut shards: Vec<String> = index["weight_map"]
                .as_object()
                .ok_or_else(|| Error::ModelLoad(format!("{}: no weight_map", index_path.display())))?
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            shards.sort();
            shards.dedup();
            return shards.iter().map(|shard| Ok(Arc::new(SafetensorsFile::open(&folder.join(shard))?))).collect();
        }
    }
    for file in [format!("{stem}.safetensors"), format!("{stem}.fp16.safetensors")] {
        let path = folder.join(&file);
        if path.exists() {
            return Ok(vec![Arc::new(SafetensorsFile::open(&path)?)]);
        }
    }
    Err(Error::ModelLoad(format!("{} has no {stem}.safetensors (or .fp16 / sharded variant)", folder.display())))
}

/// The safetensors files of a component folder given by its own path (a VAE or ControlNet
/// folder), as [`component_files`] finds them.
fn folder_files(folder: &Path, stem: &str) -> Result<Vec<Arc<SafetensorsFile>>> {
    let parent = folder.parent().unwrap_or(folder);
    let component = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    component_files(parent, &component, stem)
}

/// A network loaded on its own (a VAE or a ControlNet) and the bytes its weights take on the
/// device and in host memory (`cpu_offload` keeps them on the host).
pub(crate) struct PlacedNetwork<T> {
    pub network: Placement<T>,
    pub device_weight_bytes: u64,
    pub host_weight_bytes: u64,
}

/// Builds a network on its own, resident or offloaded, counting what its weights take.
fn place_network<T>(weights: Box<dyn SimpleBackend>, root: &str, label: &str, dtype: DType, device: &Device, cpu_offload: bool, build: NetworkBuilder<T>) -> Result<PlacedNetwork<T>> {
    let counted = Arc::new(AtomicU64::new(0));
    let weights: Box<dyn SimpleBackend> = Box::new(CountingBackend::new(weights, counted.clone()));
    let (network, _) = if cpu_offload {
        Placement::offloaded(weights, root, dtype, device, build)
    } else {
        Placement::resident(weights, root, dtype, device, build)
    }
    .map_err(|e| model_load_error(e, label))?;
    let bytes = counted.load(Ordering::Relaxed);
    let (device_weight_bytes, host_weight_bytes) = if cpu_offload { (0, bytes) } else { (bytes, 0) };
    Ok(PlacedNetwork { network, device_weight_bytes, host_weight_bytes })
}

fn total_bytes(files: &[Arc<SafetensorsFile>]) -> u64 {
    files.iter().map(|f| f.data_len() as u64).sum()
}

struct Networks {
    unet: UNet2DConditionModel,
    text_encoder: Option<Placement<ClipTextTransformer>>,
    text_encoder_2: Arc<Placement<ClipTextTransformer>>,
    vae: Placement<AutoencoderKL>,
    adapters: crate::lora::ModelAdapters,
    device_weight_bytes: u64,
    host_weight_bytes: u64,
}

/// Where one network's weights come from: a backend, the builder prefix it is read under, and
/// the dtype it computes in.
struct NetworkSource {
    weights: Box<dyn SimpleBackend>,
    root: &'static str,
    dtype: DType,
}

impl NetworkSource {
    fn new(weights: Box<dyn SimpleBackend>, root: &'static str, dtype: DType) -> Self {
        Self { weights, root, dtype }
    }

    fn counted(self, bytes: &Arc<AtomicU64>) -> Self {
        Self { weights: Box::new(CountingBackend::new(self.weights, bytes.clone())), ..self }
    }

    fn var_builder(self, device: &Device) -> VarBuilder<'static> {
        crate::models::offload::var_builder(self.weights, self.root, self.dtype, device)
    }

    /// Builds a network that `cpu_offload` may keep in host memory.
    fn place<T>(self, options: &LoadOptions, build: NetworkBuilder<T>) -> Result<(Placement<T>, LayerRegistry)> {
        if options.cpu_offload {
            Placement::offloaded(self.weights, self.root, self.dtype, options.device, build)
        } else {
            Placement::resident(self.weights, self.root, self.dtype, options.device, build)
        }
    }
}

/// The weights of each network: the first encoder's only for a base, the second encoder's
/// either to build or already built (shared with the base a refiner belongs to).
struct Sources {
    unet: NetworkSource,
    text_encoder: Option<NetworkSource>,
    text_encoder_2: SecondEncoder,
    vae: NetworkSource,
}

enum SecondEncoder {
    Build(NetworkSource),
    Shared(Arc<Placement<ClipTextTransformer>>),
}

fn build_networks(configs: &Configs, sources: Sources, options: &LoadOptions) -> Result<Networks> {
    // Inconsistent configs are refused before any weight is read.
    check_conditioning_dims(configs)?;
    let (device_bytes, host_bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let offloadable_bytes = if options.cpu_offload { &host_bytes } else { &device_bytes };
    let unet_source = sources.unet.counted(&device_bytes);
    // The UNet's and encoders' linear/conv layers register by name so LoRAs can patch them.
    let unet_root = unet_source.root;
    let unet_vb = unet_source.var_builder(options.device);
    let (unet, unet_layers) =
        collect_layers(unet_root, || UNet2DConditionModel::new(unet_vb, &configs.unet)).map_err(|e| model_load_error(e, "unet"))?;
    let text_encoder = |config: &ClipTextConfig, with_projection: bool| -> NetworkBuilder<ClipTextTransformer> {
        let config = config.clone();
        Box::new(move |vb| ClipTextTransformer::new(vb, &config, with_projection))
    };
    let (te, te_layers) = match (sources.text_encoder, &configs.text_encoder) {
        (Some(source), Some(config)) => {
            let (te, layers) = source.counted(offloadable_bytes).place(options, text_encoder(config, false)).map_err(|e| model_load_error(e, "text_encoder"))?;
            (Some(te), layers)
        }
        _ => (None, LayerRegistry::default()),
    };
    let (te2, te2_layers) = match sources.text_encoder_2 {
        SecondEncoder::Build(source) => {
            let (te2, layers) = source
                .counted(offloadable_bytes)
                .place(options, text_encoder(&configs.text_encoder_2, true))
                .map_err(|e| model_load_error(e, "text_encoder_2"))?;
            (Arc::new(te2), layers)
        }
        // The base owns the shared encoder's LoRA layers; the refiner patches none.
        SecondEncoder::Shared(te2) => (te2, LayerRegistry::default()),
    };
    let vae_config = configs.vae.clone();
    let (vae, _) = sources
        .vae
        .counted(offloadable_bytes)
        .place(options, Box::new(move |vb| AutoencoderKL::new(vb, &vae_config)))
        .map_err(|e| model_load_error(e, "vae"))?;
    let adapters = crate::lora::ModelAdapters::new(unet_layers, te_layers, te2_layers, &configs.unet);
    Ok(Networks {
        unet,
        text_encoder: te,
        text_encoder_2: te2,
        vae,
        adapters,
        device_weight_bytes: device_bytes.load(Ordering::Relaxed),
        host_weight_bytes: host_bytes.load(Ordering::Relaxed),
    })
}

/// The UNet's cross-attention and add_embedding widths must match the encoders', and its
/// VAE's latent channels the UNet's.
fn check_conditioning_dims(configs: &Configs) -> Result<()> {
    let first_width = configs.text_encoder.as_ref().map_or(0, |te| te.hidden_size);
    let context = first_width + configs.text_encoder_2.hidden_size;
    if configs.unet.cross_attention_dim != context {
        return Err(Error::ModelLoad(format!(
            "UNet cross_attention_dim {} ≠ text encoders' {}",
            configs.unet.cross_attention_dim,
            if configs.text_encoder.is_some() { format!("{first_width} + {}", configs.text_encoder_2.hidden_size) } else { configs.text_encoder_2.hidden_size.to_string() }
        )));
    }
    // Original size, crop and target size (base) or aesthetic score (refiner): two values each but the score.
    let time_ids = if configs.requires_aesthetics_score { 5 } else { 6 };
    let text_time = configs.text_encoder_2.projection_dim + time_ids * configs.unet.addition_time_embed_dim();
    if configs.unet.projection_class_embeddings_input_dim != Some(text_time) {
        return Err(Error::ModelLoad(format!(
            "UNet projection_class_embeddings_input_dim {:?} ≠ pooled {} + {time_ids} time ids × {}{}",
            configs.unet.projection_class_embeddings_input_dim,
            configs.text_encoder_2.projection_dim,
            configs.unet.addition_time_embed_dim(),
            if configs.requires_aesthetics_score { " (requires_aesthetics_score)" } else { "" }
        )));
    }
    check_latent_channels(&configs.vae, &configs.unet)
}

/// A VAE fits a UNet when its latents are what the UNet denoises.
pub fn check_latent_channels(vae: &VaeConfig, unet: &UNetConfig) -> Result<()> {
    if vae.latent_channels != unet.in_channels {
        return Err(Error::ModelLoad(format!("the VAE's latent_channels {} ≠ the UNet's in_channels {}", vae.latent_channels, unet.in_channels)));
    }
    Ok(())
}

/// Where a model's second encoder is stored, to tell whether a refiner's is the same.
#[derive(Clone)]
struct EncoderWeights {
    files: Vec<Arc<SafetensorsFile>>,
    /// The key prefix in front of the encoder's names (a checkpoint's embedder prefix).
    prefix: String,
    fingerprint: Arc<std::sync::OnceLock<Option<u64>>>,
}

impl EncoderWeights {
    fn new(files: Vec<Arc<SafetensorsFile>>, prefix: &str) -> Self {
        Self { files, prefix: prefix.to_string(), fingerprint: Arc::default() }
    }

    fn none() -> Self {
        Self::new(Vec::new(), "")
    }

    /// A hash of every stored tensor (name after the prefix, dtype, shape, bytes); None for
    /// generated weights. Computed once, the first time a refiner asks (about a second for
    /// bigG's 1.4 GB).
    fn fingerprint(&self) -> Option<u64> {
        *self.fingerprint.get_or_init(|| {
            use std::hash::{Hash, Hasher};
            if self.files.is_empty() {
                return None;
            }
            let mut names: Vec<(&str, &SafetensorsFile)> = self
                .files
                .iter()
                .flat_map(|file| file.names().filter_map(|name| name.strip_prefix(self.prefix.as_str())).map(move |name| (name, &**file)))
                .collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            for (name, file) in names {
                let (dtype, shape, bytes) = file.raw(&format!("{}{name}", self.prefix)).ok()?;
                // transformers 4 and 5 name CLIPTextModel's weights with and without `text_model.`.
                name.strip_prefix("text_model.").unwrap_or(name).hash(&mut hasher);
                (dtype, shape).hash(&mut hasher);
                hasher.write(&bytes);
            }
            Some(hasher.finish())
        })
    }
}

/// The base's OpenCLIP encoder when a refiner's stored encoder weights are the same (same
/// files, or the same tensors byte for byte) and placed the same way.
fn shared_text_encoder_2(options: &LoadOptions, refiner_weights: &EncoderWeights) -> Option<Arc<Placement<ClipTextTransformer>>> {
    let base = options.share_text_encoder_2_with?;
    if base.cpu_offload != options.cpu_offload || base.dtype != options.dtype {
        return None;
    }
    let same = base.text_encoder_2_weights.fingerprint().is_some() && base.text_encoder_2_weights.fingerprint() == refiner_weights.fingerprint();
    same.then(|| base.text_encoder_2.clone())
}

struct Assembly {
    configs: Configs,
    networks: Networks,
    tokenizers: (Option<ClipTokenizer>, ClipTokenizer),
    description: String,
    weight_bytes: u64,
    location: ModelLocation,
    text_encoder_2_weights: EncoderWeights,
}

fn assemble(parts: Assembly, options: &LoadOptions) -> SdxlModel {
    let Assembly { configs, networks, tokenizers, description, weight_bytes, location, text_encoder_2_weights } = parts;
    let Networks { unet, text_encoder, text_encoder_2, vae, adapters, device_weight_bytes, host_weight_bytes } = networks;
    SdxlModel {
        role: configs.role(),
        unet,
        text_encoder,
        text_encoder_2,
        vae,
        tokenizer: tokenizers.0,
        tokenizer_2: tokenizers.1,
        scheduler_config: configs.scheduler,
        force_zeros_for_empty_prompt: configs.force_zeros,
        requires_aesthetics_score: configs.requires_aesthetics_score,
        location,
        config_dir: options.config_dir.map(Path::to_path_buf),
        text_encoder_2_weights,
        dtype: options.dtype,
        vae_dtype: options.vae_dtype,
        description,
        weight_bytes,
        device_weight_bytes,
        host_weight_bytes,
        cpu_offload: options.cpu_offload,
        adapters,
    }
}

fn embedded_tokenizers(role: ModelRole) -> Result<(Option<ClipTokenizer>, ClipTokenizer)> {
    let first = match role {
        ModelRole::Base => Some(ClipTokenizer::embedded("<|endoftext|>")?),
        ModelRole::Refiner => None,
    };
    Ok((first, ClipTokenizer::embedded("!")?))
}

/// The folder's tokenizers when it has them (a refiner folder has only `tokenizer_2/`),
/// else the embedded ones.
fn folder_tokenizers(dir: Option<&Path>, role: ModelRole) -> Result<(Option<ClipTokenizer>, ClipTokenizer)> {
    let Some(dir) = dir else { return embedded_tokenizers(role) };
    let first_wanted = role == ModelRole::Base;
    if !dir.join("tokenizer_2").is_dir() || (first_wanted && !dir.join("tokenizer").is_dir()) {
        return embedded_tokenizers(role);
    }
    let first = if first_wanted { Some(ClipTokenizer::from_folder(&dir.join("tokenizer"), "<|endoftext|>")?) } else { None };
    Ok((first, ClipTokenizer::from_folder(&dir.join("tokenizer_2"), "!")?))
}

/// transformers ≥ 5 saves `CLIPTextModel` without the `text_model.` prefix that SDXL's
/// published folders (and transformers 4) use; both layouts load.
fn text_encoder_weights(files: Vec<Arc<SafetensorsFile>>, label: &str) -> WeightSet {
    let prefixed = files.iter().any(|file| file.names().any(|name| name.starts_with("text_model.")));
    if prefixed {
        return WeightSet::with_prefix(files, "", label);
    }
    let map: weights::KeyMap = Arc::new(|name: &str| Some(weights::Source::Key(name.strip_prefix("text_model.").unwrap_or(name).to_string())));
    WeightSet::new(files, map, label)
}

/// The second encoder: the base's when the weights are the same, else built from `weights`.
fn second_encoder(options: &LoadOptions, stored: &EncoderWeights, weights: impl FnOnce() -> Box<dyn SimpleBackend>) -> SecondEncoder {
    match options.role {
        ModelRole::Refiner => match shared_text_encoder_2(options, stored) {
            Some(shared) => SecondEncoder::Shared(shared),
            None => SecondEncoder::Build(NetworkSource::new(weights(), "", options.dtype)),
        },
        ModelRole::Base => SecondEncoder::Build(NetworkSource::new(weights(), "", options.dtype)),
    }
}

pub fn load_diffusers_folder(dir: &Path, options: &LoadOptions) -> Result<SdxlModel> {
    let configs = read_configs(dir)?;
    configs.check_role(options.role, &dir.display().to_string())?;
    let unet_files = component_files(dir, "unet", "diffusion_pytorch_model")?;
    let te_files = match configs.role() {
        ModelRole::Base => component_files(dir, "text_encoder", "model")?,
        ModelRole::Refiner => Vec::new(),
    };
    let te2_files = component_files(dir, "text_encoder_2", "model")?;
    let vae_files = component_files(dir, "vae", "diffusion_pytorch_model")?;
    let bytes = total_bytes(&unet_files) + total_bytes(&te_files) + total_bytes(&te2_files) + total_bytes(&vae_files);
    let (dtype, vae_dtype) = (options.dtype, options.vae_dtype);
    let te2_stored = EncoderWeights::new(te2_files.clone(), "");
    let sources = Sources {
        unet: NetworkSource::new(Arc::new(WeightSet::with_prefix(unet_files, "", "unet")).into_backend(), "", dtype),
        text_encoder: (!te_files.is_empty()).then(|| NetworkSource::new(Arc::new(text_encoder_weights(te_files, "text_encoder")).into_backend(), "", dtype)),
        text_encoder_2: second_encoder(options, &te2_stored, || Arc::new(text_encoder_weights(te2_files, "text_encoder_2")).into_backend()),
        vae: NetworkSource::new(Arc::new(WeightSet::with_prefix(vae_files, "", "vae")).into_backend(), "", vae_dtype),
    };
    let networks = build_networks(&configs, sources, options)?;
    let tokenizers = folder_tokenizers(Some(dir), configs.role())?;
    let parts = Assembly {
        configs,
        networks,
        tokenizers,
        description: format!("diffusers folder {}", dir.display()),
        weight_bytes: bytes,
        location: ModelLocation::DiffusersFolder(dir.to_path_buf()),
        text_encoder_2_weights: te2_stored,
    };
    Ok(assemble(parts, options))
}

/// The configs a single-file checkpoint of `kind` is read with when no config folder is given.
fn published_configs(kind: single_file::CheckpointKind) -> Configs {
    let refiner = kind == single_file::CheckpointKind::SdxlRefiner;
    Configs {
        unet: if refiner { UNetConfig::sdxl_refiner() } else { UNetConfig::sdxl_base() },
        text_encoder: (!refiner).then(ClipTextConfig::vit_l),
        text_encoder_2: ClipTextConfig::big_g(),
        vae: VaeConfig::sdxl(),
        scheduler: SchedulerConfig::default(),
        // stabilityai/stable-diffusion-xl-refiner-1.0's model_index.json says false / true.
        force_zeros: !refiner,
        requires_aesthetics_score: refiner,
    }
}

pub fn load_single_file(path: &Path, options: &LoadOptions) -> Result<SdxlModel> {
    use single_file::CheckpointKind;
    refuse_pickle_checkpoint(path)?;
    let file = Arc::new(SafetensorsFile::open(path)?);
    let origin = path.display().to_string();
    let kind = single_file::detect_kind(file.names());
    match (kind, options.role) {
        (CheckpointKind::SdxlRefiner, ModelRole::Refiner) => {}
        (CheckpointKind::SdxlBase, ModelRole::Refiner) => {
            return Err(Error::ModelLoad(format!("{origin} is an SDXL base checkpoint, not a refiner (it has two text encoders)")));
        }
        _ => single_file::require_sdxl_base(file.names(), &origin)?,
    }
    let configs = match options.config_dir {
        Some(dir) => read_configs(dir)?,
        None => published_configs(kind),
    };
    configs.check_role(options.role, &origin)?;
    let layout = single_file::UNetLayout::of(&configs.unet);
    let files = vec![file.clone()];
    let (dtype, vae_dtype) = (options.dtype, options.vae_dtype);
    let weights = |map, label: &str| Arc::new(WeightSet::new(files.clone(), map, label)).into_backend();
    let te2_prefix = if kind == CheckpointKind::SdxlRefiner { single_file::REFINER_TEXT_ENCODER_2_PREFIX } else { single_file::TEXT_ENCODER_2_PREFIX };
    let te2_stored = EncoderWeights::new(files.clone(), te2_prefix);
    let sources = Sources {
        unet: NetworkSource::new(weights(single_file::unet_map(layout), "unet"), "", dtype),
        text_encoder: configs.text_encoder.is_some().then(|| NetworkSource::new(weights(single_file::text_encoder_map(), "text_encoder"), "", dtype)),
        text_encoder_2: second_encoder(options, &te2_stored, || weights(single_file::text_encoder_2_map(te2_prefix), "text_encoder_2")),
        vae: NetworkSource::new(weights(single_file::vae_map(single_file::VAE_PREFIX, configs.vae.block_out_channels.len()), "vae"), "", vae_dtype),
    };
    let networks = build_networks(&configs, sources, options)?;
    let tokenizers = folder_tokenizers(options.config_dir, configs.role())?;
    let kind_name = if kind == CheckpointKind::SdxlRefiner { "single-file refiner checkpoint" } else { "single-file checkpoint" };
    let parts = Assembly {
        configs,
        networks,
        tokenizers,
        description: format!("{kind_name} {origin}"),
        weight_bytes: file.data_len() as u64,
        location: ModelLocation::SingleFile(path.to_path_buf()),
        text_encoder_2_weights: te2_stored,
    };
    Ok(assemble(parts, options))
}

/// Both built-in models: configs from presets, weights from a generator instead of files.
fn load_generated(
    configs: Configs,
    weights: fn() -> Box<dyn SimpleBackend>,
    options: &LoadOptions,
    description: &str,
    location: ModelLocation,
) -> Result<SdxlModel> {
    configs.check_role(options.role, description)?;
    let sources = Sources {
        unet: NetworkSource::new(weights(), "unet", options.dtype),
        text_encoder: configs.text_encoder.is_some().then(|| NetworkSource::new(weights(), "text_encoder", options.dtype)),
        text_encoder_2: SecondEncoder::Build(NetworkSource::new(weights(), "text_encoder_2", options.dtype)),
        vae: NetworkSource::new(weights(), "vae", options.vae_dtype),
    };
    let networks = build_networks(&configs, sources, options)?;
    let tokenizers = embedded_tokenizers(configs.role())?;
    let parts = Assembly {
        configs,
        networks,
        tokenizers,
        description: description.into(),
        weight_bytes: 0,
        location,
        text_encoder_2_weights: EncoderWeights::none(),
    };
    Ok(assemble(parts, options))
}

fn builtin_configs() -> Configs {
    Configs {
        unet: UNetConfig::tiny(),
        text_encoder: Some(ClipTextConfig::tiny_first()),
        text_encoder_2: ClipTextConfig::tiny_second(),
        vae: VaeConfig::tiny(),
        scheduler: SchedulerConfig::default(),
        force_zeros: true,
        requires_aesthetics_score: false,
    }
}

pub fn load_builtin(options: &LoadOptions) -> Result<SdxlModel> {
    load_generated(builtin_configs(), builtin::builtin_weights, options, "built-in tiny demo model (random weights)", ModelLocation::Builtin)
}

/// Full-size SDXL base with random weights drawn on the device (benchmarks, no files).
pub fn load_sdxl_random(options: &LoadOptions) -> Result<SdxlModel> {
    load_generated(
        published_configs(single_file::CheckpointKind::SdxlBase),
        builtin::device_random_weights,
        options,
        "built-in full-size SDXL with random weights (benchmarks)",
        ModelLocation::BuiltinSdxlRandom,
    )
}
