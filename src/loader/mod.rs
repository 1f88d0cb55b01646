//! Weight files → networks: diffusers folders (plain, fp16 variant, sharded), single-file
//! SGM checkpoints, and the built-in demo model. Model names resolve as the seed's
//! `_resolve_model_path` did, minus the hub: nothing is ever downloaded.

pub mod builtin;
pub mod lora;
pub mod safetensors_file;
pub mod single_file;
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
    DiffusersFolder(PathBuf),
    SingleFile(PathBuf),
}

/// `name` as given; an existing path; `models_dir/<name>.safetensors`; `models_dir/<name>/`.
pub fn resolve_model(name: &str, models_dir: Option<&Path>) -> Result<ModelLocation> {
    if name == builtin::BUILTIN_TINY {
        return Ok(ModelLocation::Builtin);
    }
    if name == builtin::BUILTIN_SDXL_RANDOM {
        return Ok(ModelLocation::BuiltinSdxlRandom);
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

/// Everything a txt2img/img2img run needs, loaded once and reused across requests.
pub struct SdxlModel {
    pub unet: UNet2DConditionModel,
    pub text_encoder: Placement<ClipTextTransformer>,
    pub text_encoder_2: Placement<ClipTextTransformer>,
    pub vae: Placement<AutoencoderKL>,
    pub tokenizer: ClipTokenizer,
    pub tokenizer_2: ClipTokenizer,
    pub scheduler_config: SchedulerConfig,
    /// diffusers' pipeline option: an empty negative prompt becomes zero embeddings.
    pub force_zeros_for_empty_prompt: bool,
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
        ModelLocation::BuiltinSdxlRandom => {
            // Parameter counts of SDXL base's UNet, CLIP ViT-L, OpenCLIP bigG and VAE.
            let parts = [("unet", 2_567_463_684u64, dtype), ("text_encoder", 123_060_480, dtype), ("text_encoder_2", 694_659_840, dtype), ("vae", 83_653_863, vae_dtype)];
            Ok(parts.iter().filter(|(component, ..)| !offloaded(component)).map(|(_, count, size)| count * size).sum())
        }
        ModelLocation::DiffusersFolder(dir) => {
            let mut total = 0;
            for (component, stem, size) in [("unet", "diffusion_pytorch_model", dtype), ("text_encoder", "model", dtype), ("text_encoder_2", "model", dtype), ("vae", "diffusion_pytorch_model", vae_dtype)] {
                if offloaded(component) {
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

pub fn load_model(location: &ModelLocation, options: &LoadOptions) -> Result<SdxlModel> {
    match location {
        ModelLocation::Builtin => load_builtin(options),
        ModelLocation::BuiltinSdxlRandom => load_sdxl_random(options),
        ModelLocation::DiffusersFolder(dir) => load_diffusers_folder(dir, options),
        ModelLocation::SingleFile(path) => load_single_file(path, options),
    }
}

struct Configs {
    unet: UNetConfig,
    text_encoder: ClipTextConfig,
    text_encoder_2: ClipTextConfig,
    vae: VaeConfig,
    scheduler: SchedulerConfig,
    force_zeros: bool,
}

fn read_configs(dir: &Path) -> Result<Configs> {
    let read = |component: &str, file: &str| -> Result<String> {
        let path = dir.join(component).join(file);
        std::fs::read_to_string(&path).map_err(|e| Error::ModelLoad(format!("{}: {e}", path.display())))
    };
    let force_zeros = match std::fs::read_to_string(dir.join("model_index.json")) {
        Ok(text) => {
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::ModelLoad(format!("model_index.json: {e}")))?;
            if let Some(class) = index["_class_name"].as_str() {
                if !class.contains("XL") {
                    return Err(Error::ModelLoad(format!("{} holds a {class}, not an SDXL pipeline", dir.display())));
                }
            }
            index["force_zeros_for_empty_prompt"].as_bool().unwrap_or(true)
        }
        Err(_) => true,
    };
    let scheduler = match read("scheduler", "scheduler_config.json") {
        Ok(text) => SchedulerConfig::from_json(&text)?,
        Err(_) => SchedulerConfig::default(),
    };
    Ok(Configs {
        unet: UNetConfig::from_json(&read("unet", "config.json")?)?,
        text_encoder: ClipTextConfig::from_json(&read("text_encoder", "config.json")?, "text_encoder")?,
        text_encoder_2: ClipTextConfig::from_json(&read("text_encoder_2", "config.json")?, "text_encoder_2")?,
        vae: VaeConfig::from_json(&read("vae", "config.json")?)?,
        scheduler,
        force_zeros,
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

fn total_bytes(files: &[Arc<SafetensorsFile>]) -> u64 {
    files.iter().map(|f| f.data_len() as u64).sum()
}

struct Networks {
    unet: UNet2DConditionModel,
    text_encoder: Placement<ClipTextTransformer>,
    text_encoder_2: Placement<ClipTextTransformer>,
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

fn build_networks(configs: &Configs, sources: [NetworkSource; 4], options: &LoadOptions) -> Result<Networks> {
    // Inconsistent configs are refused before any weight is read.
    check_conditioning_dims(configs)?;
    let (device_bytes, host_bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let offloadable_bytes = if options.cpu_offload { &host_bytes } else { &device_bytes };
    let [unet_source, te_source, te2_source, vae_source] = sources;
    let unet_source = unet_source.counted(&device_bytes);
    let (te_source, te2_source, vae_source) =
        (te_source.counted(offloadable_bytes), te2_source.counted(offloadable_bytes), vae_source.counted(offloadable_bytes));
    // The UNet's and encoders' linear/conv layers register by name so LoRAs can patch them.
    let unet_root = unet_source.root;
    let unet_vb = unet_source.var_builder(options.device);
    let (unet, unet_layers) =
        collect_layers(unet_root, || UNet2DConditionModel::new(unet_vb, &configs.unet)).map_err(|e| model_load_error(e, "unet"))?;
    let text_encoder = |config: &ClipTextConfig, with_projection: bool| -> NetworkBuilder<ClipTextTransformer> {
        let config = config.clone();
        Box::new(move |vb| ClipTextTransformer::new(vb, &config, with_projection))
    };
    let (te, te_layers) = te_source.place(options, text_encoder(&configs.text_encoder, false)).map_err(|e| model_load_error(e, "text_encoder"))?;
    let (te2, te2_layers) =
        te2_source.place(options, text_encoder(&configs.text_encoder_2, true)).map_err(|e| model_load_error(e, "text_encoder_2"))?;
    let vae_config = configs.vae.clone();
    let (vae, _) = vae_source.place(options, Box::new(move |vb| AutoencoderKL::new(vb, &vae_config))).map_err(|e| model_load_error(e, "vae"))?;
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

/// The UNet's cross-attention and add_embedding widths must match the encoders'.
fn check_conditioning_dims(configs: &Configs) -> Result<()> {
    let context = configs.text_encoder.hidden_size + configs.text_encoder_2.hidden_size;
    if configs.unet.cross_attention_dim != context {
        return Err(Error::ModelLoad(format!(
            "UNet cross_attention_dim {} ≠ text encoders' {} + {}",
            configs.unet.cross_attention_dim, configs.text_encoder.hidden_size, configs.text_encoder_2.hidden_size
        )));
    }
    let text_time = configs.text_encoder_2.projection_dim + 6 * configs.unet.addition_time_embed_dim();
    if configs.unet.projection_class_embeddings_input_dim != Some(text_time) {
        return Err(Error::ModelLoad(format!(
            "UNet projection_class_embeddings_input_dim {:?} ≠ pooled {} + 6 × {}",
            configs.unet.projection_class_embeddings_input_dim,
            configs.text_encoder_2.projection_dim,
            configs.unet.addition_time_embed_dim()
        )));
    }
    Ok(())
}

fn assemble(
    configs: Configs,
    networks: Networks,
    tokenizers: (ClipTokenizer, ClipTokenizer),
    options: &LoadOptions,
    description: String,
    weight_bytes: u64,
) -> SdxlModel {
    let Networks { unet, text_encoder, text_encoder_2, vae, adapters, device_weight_bytes, host_weight_bytes } = networks;
    SdxlModel {
        unet,
        text_encoder,
        text_encoder_2,
        vae,
        tokenizer: tokenizers.0,
        tokenizer_2: tokenizers.1,
        scheduler_config: configs.scheduler,
        force_zeros_for_empty_prompt: configs.force_zeros,
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

fn embedded_tokenizers() -> Result<(ClipTokenizer, ClipTokenizer)> {
    Ok((ClipTokenizer::embedded("<|endoftext|>")?, ClipTokenizer::embedded("!")?))
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

pub fn load_diffusers_folder(dir: &Path, options: &LoadOptions) -> Result<SdxlModel> {
    let configs = read_configs(dir)?;
    let unet_files = component_files(dir, "unet", "diffusion_pytorch_model")?;
    let te_files = component_files(dir, "text_encoder", "model")?;
    let te2_files = component_files(dir, "text_encoder_2", "model")?;
    let vae_files = component_files(dir, "vae", "diffusion_pytorch_model")?;
    let bytes = total_bytes(&unet_files) + total_bytes(&te_files) + total_bytes(&te2_files) + total_bytes(&vae_files);
    let (dtype, vae_dtype) = (options.dtype, options.vae_dtype);
    let sources = [
        NetworkSource::new(Arc::new(WeightSet::with_prefix(unet_files, "", "unet")).into_backend(), "", dtype),
        NetworkSource::new(Arc::new(text_encoder_weights(te_files, "text_encoder")).into_backend(), "", dtype),
        NetworkSource::new(Arc::new(text_encoder_weights(te2_files, "text_encoder_2")).into_backend(), "", dtype),
        NetworkSource::new(Arc::new(WeightSet::with_prefix(vae_files, "", "vae")).into_backend(), "", vae_dtype),
    ];
    let networks = build_networks(&configs, sources, options)?;
    let tokenizers = match (dir.join("tokenizer").is_dir(), dir.join("tokenizer_2").is_dir()) {
        (true, true) => (
            ClipTokenizer::from_folder(&dir.join("tokenizer"), "<|endoftext|>")?,
            ClipTokenizer::from_folder(&dir.join("tokenizer_2"), "!")?,
        ),
        _ => embedded_tokenizers()?,
    };
    Ok(assemble(configs, networks, tokenizers, options, format!("diffusers folder {}", dir.display()), bytes))
}

pub fn load_single_file(path: &Path, options: &LoadOptions) -> Result<SdxlModel> {
    refuse_pickle_checkpoint(path)?;
    let file = Arc::new(SafetensorsFile::open(path)?);
    single_file::require_sdxl_base(file.names(), &path.display().to_string())?;
    let configs = match options.config_dir {
        Some(dir) => read_configs(dir)?,
        None => Configs {
            unet: UNetConfig::sdxl_base(),
            text_encoder: ClipTextConfig::vit_l(),
            text_encoder_2: ClipTextConfig::big_g(),
            vae: VaeConfig::sdxl(),
            scheduler: SchedulerConfig::default(),
            force_zeros: true,
        },
    };
    let layout = single_file::UNetLayout::of(&configs.unet);
    let files = vec![file.clone()];
    let (dtype, vae_dtype) = (options.dtype, options.vae_dtype);
    let weights = |map, label: &str| Arc::new(WeightSet::new(files.clone(), map, label)).into_backend();
    let sources = [
        NetworkSource::new(weights(single_file::unet_map(layout), "unet"), "", dtype),
        NetworkSource::new(weights(single_file::text_encoder_map(), "text_encoder"), "", dtype),
        NetworkSource::new(weights(single_file::text_encoder_2_map(), "text_encoder_2"), "", dtype),
        NetworkSource::new(weights(single_file::vae_map(configs.vae.block_out_channels.len()), "vae"), "", vae_dtype),
    ];
    let networks = build_networks(&configs, sources, options)?;
    let tokenizers = match options.config_dir {
        Some(dir) if dir.join("tokenizer").is_dir() && dir.join("tokenizer_2").is_dir() => (
            ClipTokenizer::from_folder(&dir.join("tokenizer"), "<|endoftext|>")?,
            ClipTokenizer::from_folder(&dir.join("tokenizer_2"), "!")?,
        ),
        _ => embedded_tokenizers()?,
    };
    let bytes = file.data_len() as u64;
    Ok(assemble(configs, networks, tokenizers, options, format!("single-file checkpoint {}", path.display()), bytes))
}

/// Both built-in models: configs from presets, weights from a generator instead of files.
fn load_generated(
    configs: Configs,
    weights: fn() -> Box<dyn SimpleBackend>,
    options: &LoadOptions,
    description: &str,
) -> Result<SdxlModel> {
    let sources = [
        NetworkSource::new(weights(), "unet", options.dtype),
        NetworkSource::new(weights(), "text_encoder", options.dtype),
        NetworkSource::new(weights(), "text_encoder_2", options.dtype),
        NetworkSource::new(weights(), "vae", options.vae_dtype),
    ];
    let networks = build_networks(&configs, sources, options)?;
    Ok(assemble(configs, networks, embedded_tokenizers()?, options, description.into(), 0))
}

pub fn load_builtin(options: &LoadOptions) -> Result<SdxlModel> {
    let configs = Configs {
        unet: UNetConfig::tiny(),
        text_encoder: ClipTextConfig::tiny_first(),
        text_encoder_2: ClipTextConfig::tiny_second(),
        vae: VaeConfig::tiny(),
        scheduler: SchedulerConfig::default(),
        force_zeros: true,
    };
    load_generated(configs, builtin::builtin_weights, options, "built-in tiny demo model (random weights)")
}

/// Full-size SDXL base with random weights drawn on the device (benchmarks, no files).
pub fn load_sdxl_random(options: &LoadOptions) -> Result<SdxlModel> {
    let configs = Configs {
        unet: UNetConfig::sdxl_base(),
        text_encoder: ClipTextConfig::vit_l(),
        text_encoder_2: ClipTextConfig::big_g(),
        vae: VaeConfig::sdxl(),
        scheduler: SchedulerConfig::default(),
        force_zeros: true,
    };
    load_generated(configs, builtin::device_random_weights, options, "built-in full-size SDXL with random weights (benchmarks)")
}
