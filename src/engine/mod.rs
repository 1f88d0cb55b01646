//! The engine behind a handle: device, model cache, request dispatch, progress and
//! cancellation. One engine serialises its device work through a priority queue; it is safe
//! to call from many threads.

pub mod config;
pub mod logging;
pub mod memory;
pub mod preflight;
pub mod request_queue;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::api::validate::GenerationPlan;
use crate::api::request::GenerationRequest;
use crate::api::{self, GeneratedImage, GenerationData, Message, ProcessingMetrics, Response, ServedMetadata};
use crate::error::{Error, Result};
use crate::api::validate::TilingChoice;
use crate::loader::controlnet::LoadedControlNet;
use crate::loader::esrgan::LoadedUpscaler;
use crate::loader::vae::{VaeLoadOptions, VaeModel};
use crate::loader::{self, LoadOptions, ModelRole, SdxlModel};
use crate::models::VaeTiling;
use crate::pipeline::{self, PipelineModels, ProgressEvent, ProgressObserver, RunContext, Stage, VaeChoice};
use crate::rng::NormalKernel;
pub use config::EngineConfig;
pub use request_queue::Priority;
use request_queue::{RequestQueue, Ticket};

/// A host's progress callback: returns false to cancel.
pub type ProgressCallback = Box<dyn FnMut(&str, &ProgressEvent) -> bool + Send>;

/// A cached model: the name it was asked for, the config folder it was loaded with, and
/// whether it serves as a base or a refiner.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ModelKey {
    name: String,
    config_dir: Option<String>,
    role: ModelRole,
}

struct LoadedModel {
    model: Arc<SdxlModel>,
    last_used: u64,
}

/// A network cached beside the models: a VAE on its own (`models.vae` by name, or a model's
/// VAE in another dtype) or a ControlNet.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SideKey {
    kind: SideKind,
    /// The `models.vae` name, `vae of <model name>`, or the ControlNet's path.
    source: String,
    dtype: DType,
    cpu_offload: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum SideKind {
    Vae,
    ControlNet,
    Upscaler,
}

#[derive(Clone)]
enum SideNetwork {
    Vae(Arc<VaeModel>),
    ControlNet(Arc<LoadedControlNet>),
    Upscaler(Arc<LoadedUpscaler>),
}

impl SideNetwork {
    /// (description, file bytes, device bytes, host bytes)
    fn footprint(&self) -> (&str, u64, u64, u64) {
        match self {
            Self::Vae(vae) => (&vae.description, vae.weight_bytes, vae.device_weight_bytes, vae.host_weight_bytes),
            Self::ControlNet(net) => (&net.description, net.weight_bytes, net.device_weight_bytes, net.host_weight_bytes),
            Self::Upscaler(net) => (&net.description, net.weight_bytes, net.device_weight_bytes, 0),
        }
    }
}

struct LoadedSide {
    network: SideNetwork,
    last_used: u64,
}

pub struct Engine {
    config: EngineConfig,
    device: Device,
    dtype: DType,
    vae_dtype: DType,
    noise_kernel: NormalKernel,
    /// Warnings every response carries (e.g. dtype downgraded on CPU).
    engine_warnings: Vec<String>,
    models: Mutex<HashMap<ModelKey, LoadedModel>>,
    side_networks: Mutex<HashMap<SideKey, LoadedSide>>,
    /// AutoV2 hashes of single-file checkpoints, for PNG metadata (hashing 7 GB takes seconds).
    model_hashes: Mutex<HashMap<PathBuf, String>>,
    /// Parsed LoRA files, shared by every model (adapters are matched to a model when applied).
    loras: crate::lora::LoraCache,
    /// Serialises device work: one request (or model load) runs at a time, the others wait
    /// in priority order; each holds a ticket with its own cancel flag.
    queue: RequestQueue,
    progress: Mutex<Option<ProgressCallback>>,
    requests_served: AtomicU64,
    use_counter: AtomicU64,
    last_error: Mutex<Option<String>>,
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // splitmix64 of the clock: distinct seeds for back-to-back requests.
    let mut z = (nanos as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) & 0xffff_ffff
}

fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("req-{:x}-{}", nanos, COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Self> {
        config.check()?;
        let device = config.device()?;
        let mut engine_warnings = Vec::new();
        let mut dtype = config::parse_dtype("dtype", &config.dtype)?;
        let mut vae_dtype = config::parse_dtype("vae_dtype", &config.vae_dtype)?;
        if device.is_cpu() && (dtype != DType::F32 || vae_dtype != DType::F32) {
            engine_warnings.push(format!(
                "computing in float32 on CPU (asked for {} / VAE {}): candle's CPU half-precision kernels are slower or missing",
                config.dtype, config.vae_dtype
            ));
            dtype = DType::F32;
            vae_dtype = DType::F32;
        }
        if config.max_loaded_models == 0 {
            return Err(Error::validation("max_loaded_models", "must be at least 1"));
        }
        std::fs::create_dir_all(&config.output_dir)
            .map_err(|e| Error::validation("output_dir", format!("cannot create {}: {e}", config.output_dir.display())))?;
        Ok(Self {
            noise_kernel: config.noise_kernel()?,
            config,
            device,
            dtype,
            vae_dtype,
            engine_warnings,
            models: Mutex::new(HashMap::new()),
            side_networks: Mutex::new(HashMap::new()),
            model_hashes: Mutex::new(HashMap::new()),
            loras: crate::lora::LoraCache::default(),
            queue: RequestQueue::default(),
            progress: Mutex::new(None),
            requests_served: AtomicU64::new(0),
            use_counter: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    pub fn from_json(config_json: &str) -> Result<Self> {
        Self::new(EngineConfig::from_json(config_json)?)
    }

    pub fn device_name(&self) -> String {
        match &self.device {
            Device::Cpu => "cpu".into(),
            other => match other.location() {
                candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
                location => format!("{location:?}"),
            },
        }
    }

    pub fn set_progress_callback(&self, callback: Option<ProgressCallback>) {
        *self.progress.lock() = callback;
    }

    /// Cancels the request in flight (if any); the next request runs normally. A request
    /// still queued is not touched: see [`Engine::cancel_request`] to aim at one request.
    pub fn cancel(&self) {
        self.queue.cancel_running();
    }

    /// Cancels the request with this id, whether it runs now (it stops within one step) or
    /// still waits (it ends at once with `CANCELLED`, without running). False when no request
    /// with that id is queued or running: it finished, or never came; nothing is cancelled.
    /// Requests sharing an id are all cancelled.
    pub fn cancel_request(&self, request_id: &str) -> bool {
        self.queue.cancel_request(request_id)
    }

    /// Cancels the running request and every queued one, and makes later requests end with
    /// `CANCELLED` at once: the engine is about to be freed. Requests in flight still return
    /// their responses; the caller waits for them before dropping the engine.
    pub fn shut_down(&self) {
        self.queue.close();
    }

    /// Loads (or finds cached) the model a name resolves to, as a base or a refiner.
    /// `cpu_offload` is the placement wanted; a cached model placed otherwise is loaded again.
    /// A refiner's `base` stays cached while it loads and lends it its OpenCLIP encoder when
    /// the weights are the same. Before loading, least recently used models are evicted until
    /// the new weights fit the memory budget.
    fn model(&self, name: &str, config_dir: Option<&str>, cpu_offload: bool, role: ModelRole, base: Option<&Arc<SdxlModel>>) -> Result<Arc<SdxlModel>> {
        let stamp = self.use_counter.fetch_add(1, Ordering::Relaxed);
        let mut key = ModelKey { name: name.to_string(), config_dir: config_dir.map(str::to_string), role };
        {
            let mut models = self.models.lock();
            // A request names only the model; it uses whatever config it was loaded with.
            let found = if models.contains_key(&key) || config_dir.is_some() {
                Some(key.clone())
            } else {
                models.keys().find(|k| k.name == name && k.role == role).cloned()
            };
            if let Some(found) = found {
                match models.get_mut(&found) {
                    Some(entry) if entry.model.cpu_offload == cpu_offload => {
                        entry.last_used = stamp;
                        return Ok(entry.model.clone());
                    }
                    Some(_) => {
                        tracing::info!(model = name, cpu_offload, "reloading the model with the other cpu_offload placement");
                        models.remove(&found);
                        key = found;
                    }
                    None => {}
                }
            }
        }
        let field = match role {
            ModelRole::Base => "models.base",
            ModelRole::Refiner => "models.refiner",
        };
        let location = loader::resolve_model(name, self.config.models_dir.as_deref())?;
        let config_path = key.config_dir.as_ref().map(PathBuf::from);
        if let Some(dir) = &config_path {
            if !dir.is_dir() {
                return Err(Error::validation("config", format!("{} is not a folder", dir.display())));
            }
        }
        let options = LoadOptions {
            role,
            share_text_encoder_2_with: base.map(|base| &**base),
            device: &self.device,
            dtype: self.dtype,
            vae_dtype: self.vae_dtype,
            config_dir: config_path.as_deref(),
            cpu_offload,
        };
        while self.models.lock().len() >= self.config.max_loaded_models && self.evict_least_recently_used(base) {}
        let needed = loader::estimate_device_weight_bytes(&location, &options)?;
        if let Err(available) = self.make_room(needed, base) {
            return Err(Error::OutOfMemory(format!(
                "loading {name} needs about {} for its weights, more than the {available} even with no other model loaded; use a smaller dtype or precision.cpu_offload",
                memory::gib(needed)
            )));
        }
        tracing::info!(model = name, role = role.name(), "loading model");
        let model = Arc::new(loader::load_model(&location, &options).map_err(|err| name_the_field(err, field))?);
        self.models.lock().insert(key, LoadedModel { model: model.clone(), last_used: stamp });
        Ok(model)
    }

    /// Loads (or finds cached) a VAE on its own: `models.vae` (`custom`), or `model`'s own
    /// VAE in another dtype. Counted and evicted like models.
    fn vae_model(&self, custom: Option<&str>, model_name: &str, model: &Arc<SdxlModel>, dtype: DType, cpu_offload: bool) -> Result<Arc<VaeModel>> {
        let stamp = self.use_counter.fetch_add(1, Ordering::Relaxed);
        let source = match custom {
            Some(name) => name.to_string(),
            None => format!("vae of {model_name}"),
        };
        let key = SideKey { kind: SideKind::Vae, source, dtype, cpu_offload };
        if let Some(SideNetwork::Vae(vae)) = self.cached_side_network(&key, stamp) {
            return Ok(vae);
        }
        let location = match custom {
            Some(name) => loader::vae::resolve_vae(name, self.config.models_dir.as_deref()).map_err(|err| name_the_field(err, "models.vae"))?,
            None => model.location.clone(),
        };
        let fallback_config = model.vae.network().config().clone();
        // A VAE is a few hundred megabytes: its estimate is its base VAE's parameter count.
        let needed = crate::loader::vae_parameter_count(&fallback_config) * dtype.size_in_bytes() as u64;
        if let Err(available) = self.make_room(if cpu_offload { 0 } else { needed }, Some(model)) {
            return Err(Error::OutOfMemory(format!("loading the VAE {} needs about {}, more than the {available}", key.source, memory::gib(needed))));
        }
        tracing::info!(vae = key.source.as_str(), "loading VAE");
        let options = VaeLoadOptions { device: &self.device, dtype, cpu_offload };
        let vae = Arc::new(loader::vae::load_vae(&location, &fallback_config, model.unet.config(), &options).map_err(|err| name_the_field(err, "models.vae"))?);
        self.side_networks.lock().insert(key, LoadedSide { network: SideNetwork::Vae(vae.clone()), last_used: stamp });
        Ok(vae)
    }

    fn cached_side_network(&self, key: &SideKey, stamp: u64) -> Option<SideNetwork> {
        let mut side = self.side_networks.lock();
        let entry = side.get_mut(key)?;
        entry.last_used = stamp;
        Some(entry.network.clone())
    }

    /// Loads (or finds cached) the ControlNet one request entry names; `field` is the entry's
    /// path for errors. It must fit `base`'s UNet.
    fn controlnet(&self, plan: &api::validate::ControlNetPlan, base: &Arc<SdxlModel>, cpu_offload: bool) -> Result<Arc<LoadedControlNet>> {
        let stamp = self.use_counter.fetch_add(1, Ordering::Relaxed);
        let field = format!("{}.model", plan.field);
        let location = loader::controlnet::resolve_controlnet(plan.model.as_deref(), plan.kind.name(), self.config.models_dir.as_deref())
            .map_err(|err| name_the_field(err, &field))?;
        let source = match &location {
            loader::ModelLocation::DiffusersFolder(path) | loader::ModelLocation::SingleFile(path) => path.display().to_string(),
            _ => plan.model.clone().unwrap_or_default(),
        };
        let key = SideKey { kind: SideKind::ControlNet, source, dtype: base.dtype, cpu_offload };
        if let Some(SideNetwork::ControlNet(net)) = self.cached_side_network(&key, stamp) {
            // A cached ControlNet fitted the UNet it was loaded for; this base may differ.
            loader::controlnet::check_fits(net.network.network().config(), base.unet.config()).map_err(|err| name_the_field(err, &field))?;
            return Ok(net);
        }
        if !cpu_offload {
            // An SDXL ControlNet is the UNet's encoder half: about a third of its weights.
            if let Err(available) = self.make_room(base.device_weight_bytes / 3, Some(base)) {
                return Err(Error::OutOfMemory(format!("loading the ControlNet {} needs about {}, more than the {available}", key.source, memory::gib(base.device_weight_bytes / 3))));
            }
        }
        tracing::info!(controlnet = key.source.as_str(), "loading ControlNet");
        let options = loader::controlnet::ControlNetLoadOptions { device: &self.device, dtype: base.dtype, cpu_offload };
        let net = Arc::new(loader::controlnet::load_controlnet(&location, base.unet.config(), &options).map_err(|err| name_the_field(err, &field))?);
        self.side_networks.lock().insert(key, LoadedSide { network: SideNetwork::ControlNet(net.clone()), last_used: stamp });
        Ok(net)
    }

    /// One image's settings in AUTOMATIC1111's terms, for its PNG's `parameters` chunk.
    fn a1111_parameters(&self, models: &PipelineModels, plan: &GenerationPlan, seed: u64) -> crate::image::metadata::Parameters {
        let stem = |name: &str| std::path::Path::new(name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| name.to_string());
        let karras = plan.scheduler_overrides.use_karras_sigmas.unwrap_or(models.base.scheduler_config.use_karras_sigmas);
        let algorithm = plan.scheduler_overrides.algorithm_type.as_deref().unwrap_or(&models.base.scheduler_config.algorithm_type);
        let (sampler, schedule) = plan.scheduler.a1111_name(karras, Some(algorithm));
        let mut extra = Vec::new();
        if let Some(refiner) = &plan.refiner {
            extra.push(("Refiner".to_string(), stem(&refiner.model)));
            match refiner.mode {
                api::validate::RefinerMode::Ensemble => extra.push(("Refiner switch at".to_string(), refiner.denoising_start.to_string())),
                api::validate::RefinerMode::Img2Img => extra.push(("Refiner strength".to_string(), refiner.strength.to_string())),
            }
        }
        if let Some(vae) = &plan.vae.model {
            extra.push(("VAE".to_string(), stem(vae)));
        }
        for (index, control) in plan.controlnets.iter().enumerate() {
            let model = control.model.as_deref().map(stem).unwrap_or_else(|| control.kind.name().to_string());
            extra.push((
                format!("ControlNet {index}"),
                format!("Module: {}, Model: {model}, Weight: {}, Guidance Start: {}, Guidance End: {}", if control.canny.is_some() { "canny" } else { "none" }, control.conditioning_scale, control.guidance_start, control.guidance_end),
            ));
        }
        if let Some(upscale) = &plan.upscale {
            let upscaler = match upscale.method {
                api::validate::UpscaleMethod::Lanczos => "Lanczos".to_string(),
                api::validate::UpscaleMethod::RealEsrgan => upscale.model.as_deref().map(stem).unwrap_or_else(|| format!("RealESRGAN_x{}plus", upscale.factor)),
            };
            extra.push(("Upscale".to_string(), upscale.factor.to_string()));
            extra.push(("Upscaler".to_string(), upscaler));
        }
        extra.push(("Version".to_string(), format!("sdxl-native {}", crate::VERSION)));
        crate::image::metadata::Parameters {
            prompt: plan.prompt.clone(),
            negative_prompt: plan.negative_prompt.clone(),
            loras: plan.loras.iter().map(|lora| (stem(&lora.name), lora.weight)).collect(),
            steps: plan.steps,
            sampler: sampler.to_string(),
            schedule_type: schedule.map(str::to_string),
            cfg_scale: plan.guidance_scale,
            seed,
            width: plan.width,
            height: plan.height,
            model: stem(&plan.base_model),
            model_hash: self.model_hash(&models.base.location),
            denoising_strength: plan.init_image.as_ref().map(|_| plan.strength),
            extra,
        }
    }

    /// AUTOMATIC1111's "Model hash" (AutoV2: the first 10 hex digits of the file's SHA-256) of
    /// a single-file checkpoint, computed once per file; None for folders and built-ins.
    fn model_hash(&self, location: &loader::ModelLocation) -> Option<String> {
        let loader::ModelLocation::SingleFile(path) = location else { return None };
        if let Some(hash) = self.model_hashes.lock().get(path) {
            return Some(hash.clone());
        }
        let hash = loader::file_sha256_prefix(path, 10).ok()?;
        self.model_hashes.lock().insert(path.clone(), hash.clone());
        Some(hash)
    }

    /// Upscales every image of the batch (`output.upscale`), reporting stage `upscale` per image.
    fn upscale_batch(&self, upscale: &api::validate::UpscalePlan, batch: &mut pipeline::GeneratedBatch, ctx: &mut RunContext, dtype: DType) -> Result<()> {
        let network = match upscale.method {
            api::validate::UpscaleMethod::RealEsrgan => Some(self.upscaler(upscale, dtype)?),
            api::validate::UpscaleMethod::Lanczos => None,
        };
        let settings = pipeline::upscale::UpscaleSettings {
            tile: upscale.tile,
            tile_pad: upscale.tile_pad,
            pre_pad: pipeline::upscale::DEFAULT_PRE_PAD,
            outscale: upscale.factor as f64,
        };
        let total = batch.images.len() as u32;
        for (index, image) in batch.images.iter_mut().enumerate() {
            let event = ProgressEvent { stage: Stage::Upscale, image_index: index as u32, step: index as u32, total_steps: total, model_calls: batch.model_calls, elapsed_ms: ctx.started.elapsed().as_millis() as u64 };
            if !ctx.progress.on_progress(&event) {
                return Err(Error::Cancelled);
            }
            *image = match &network {
                Some(upscaler) => pipeline::upscale::upscale_with_network(&upscaler.network, image, &settings, &self.device, dtype)?,
                None => crate::image::resize::lanczos_resize(image, image.width() * upscale.factor, image.height() * upscale.factor),
            };
        }
        Ok(())
    }

    /// Loads (or finds cached) the Real-ESRGAN model of `output.upscale`.
    fn upscaler(&self, upscale: &api::validate::UpscalePlan, dtype: DType) -> Result<Arc<LoadedUpscaler>> {
        let stamp = self.use_counter.fetch_add(1, Ordering::Relaxed);
        let path = loader::esrgan::resolve_upscaler(upscale.model.as_deref(), upscale.factor, self.config.models_dir.as_deref())
            .map_err(|err| name_the_field(err, "output.upscale.model"))?;
        let key = SideKey { kind: SideKind::Upscaler, source: path.display().to_string(), dtype, cpu_offload: false };
        if let Some(SideNetwork::Upscaler(net)) = self.cached_side_network(&key, stamp) {
            return Ok(net);
        }
        tracing::info!(upscaler = key.source.as_str(), "loading upscaler");
        let net = Arc::new(loader::esrgan::load_upscaler(&path, &self.device, dtype).map_err(|err| name_the_field(err, "output.upscale.model"))?);
        if let Err(available) = self.make_room(net.device_weight_bytes, None) {
            return Err(Error::OutOfMemory(format!("the upscaler {} needs about {}, more than the {available}", key.source, memory::gib(net.device_weight_bytes))));
        }
        self.side_networks.lock().insert(key, LoadedSide { network: SideNetwork::Upscaler(net.clone()), last_used: stamp });
        Ok(net)
    }

    /// Drops the least recently used cached model, VAE or ControlNet other than `keep` (and
    /// refiners sharing a dropped base's encoder); false if none was left.
    fn evict_least_recently_used(&self, keep: Option<&Arc<SdxlModel>>) -> bool {
        let mut models = self.models.lock();
        let mut side = self.side_networks.lock();
        let model_victim = models
            .iter()
            .filter(|(_, entry)| keep.is_none_or(|keep| !Arc::ptr_eq(&entry.model, keep)))
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(key, entry)| (key.clone(), entry.last_used));
        let side_victim = side.iter().min_by_key(|(_, entry)| entry.last_used).map(|(key, entry)| (key.clone(), entry.last_used));
        match (model_victim, side_victim) {
            (Some((_, model_used)), Some((key, side_used))) if side_used < model_used => {
                tracing::info!(network = key.source.as_str(), "evicting a cached VAE or ControlNet");
                side.remove(&key);
                true
            }
            (None, Some((key, _))) => {
                tracing::info!(network = key.source.as_str(), "evicting a cached VAE or ControlNet");
                side.remove(&key);
                true
            }
            (Some((key, _)), _) => {
                tracing::info!(model = key.name.as_str(), "evicting a cached model");
                if let Some(evicted) = models.remove(&key) {
                    // A refiner holding the evicted base's encoder would keep its memory alive unseen.
                    let sharing: Vec<ModelKey> = models
                        .iter()
                        .filter(|(_, entry)| Arc::ptr_eq(&entry.model.text_encoder_2, &evicted.model.text_encoder_2))
                        .filter(|(_, entry)| keep.is_none_or(|keep| !Arc::ptr_eq(&entry.model, keep)))
                        .map(|(key, _)| key.clone())
                        .collect();
                    for key in sharing {
                        models.remove(&key);
                    }
                }
                true
            }
            (None, None) => false,
        }
    }

    /// Device bytes the cached models' weights hold.
    fn resident_weight_bytes(&self) -> u64 {
        // Fused LoRA copies stay resident until the adapter set changes: they count too.
        let models: u64 = self.models.lock().values().map(|entry| entry.model.device_weight_bytes + entry.model.adapters.fused_bytes(&self.device).0).sum();
        models + self.side_networks.lock().values().map(|entry| entry.network.footprint().2).sum::<u64>()
    }

    /// What the engine may still allocate: the budget (`max_memory_gb`) less the cached
    /// weights, or on a GPU with no budget the free memory less headroom. None: no limit known
    /// (CPU without a budget).
    fn available_bytes(&self) -> Option<u64> {
        if let Some(budget_gb) = self.config.max_memory_gb {
            return Some(memory::gib_to_bytes(budget_gb).saturating_sub(self.resident_weight_bytes()));
        }
        memory::device_memory(&self.device).map(|(free, _)| free.saturating_sub(memory::DEVICE_HEADROOM_BYTES))
    }

    /// Evicts cached models other than `keep`, least recently used first, until `needed` bytes
    /// are available. Err: what is available after evicting everything it could, described.
    fn make_room(&self, needed: u64, keep: Option<&Arc<SdxlModel>>) -> std::result::Result<(), String> {
        let describe = |available: u64| match self.config.max_memory_gb {
            Some(budget_gb) => format!("{} left of max_memory_gb {budget_gb}", memory::gib(available)),
            None => format!("{} free on {}", memory::gib(available), self.device_name()),
        };
        let Some(mut available) = self.available_bytes() else { return Ok(()) };
        while needed > available && self.evict_least_recently_used(keep) {
            // Evicted weights go back to the driver only once the pool is trimmed.
            if let Err(err) = memory::release_device_memory(&self.device) {
                tracing::warn!(error = %err, "could not release device memory after evicting a model");
            }
            available = self.available_bytes().unwrap_or(available);
        }
        if needed > available {
            return Err(describe(available));
        }
        Ok(())
    }

    /// The resident model a name was loaded as (with no `config`), if it is loaded.
    pub fn resident_model(&self, name: &str) -> Option<Arc<SdxlModel>> {
        self.models.lock().get(&ModelKey { name: name.to_string(), config_dir: None, role: ModelRole::Base }).map(|entry| entry.model.clone())
    }

    /// `{"base": ..., "vae": ..., "refiner": ..., "config": ...}` or `{"model_name": ...}`.
    /// Waits its turn in the queue at normal priority.
    pub fn load_model_json(&self, model_json: &str) -> Result<String> {
        self.load_model_for(None, model_json)
    }

    /// `load_model_json` for a `model_load_request` with an id, which `cancel_request` can
    /// cancel while it waits (a load that has started is never interrupted).
    fn load_model_for(&self, request_id: Option<&str>, model_json: &str) -> Result<String> {
        let value: Value = serde_json::from_str(model_json).map_err(|e| Error::InvalidJson(e.to_string()))?;
        let Value::Object(fields) = &value else {
            return Err(Error::InvalidJson("the model description must be a JSON object".into()));
        };
        for key in fields.keys() {
            if !matches!(key.as_str(), "base" | "model_name" | "refiner" | "vae" | "controlnet" | "config") {
                return Err(Error::validation(key.clone(), "unknown field (expected base, model_name, refiner, vae, controlnet, config)"));
            }
        }
        let text = |key: &str| -> Result<Option<String>> {
            match fields.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(Error::validation(key, "must be a non-empty string")),
            }
        };
        let name = text("base")?.or(text("model_name")?).ok_or_else(|| Error::validation("base", "Model name is required"))?;
        let (refiner, vae) = (text("refiner")?, text("vae")?);
        // Every name resolves before anything is loaded or evicted, as for a request.
        let models_dir = self.config.models_dir.as_deref();
        let policy = self.name_policy();
        let mut missing = Vec::new();
        // The base's own lookup comes later (a cached name needs none); under models_dir_only
        // a path, or a name found elsewhere, is refused here.
        if policy.models_dir_only {
            let base_location = loader::resolve_model(&name, models_dir).ok();
            missing.extend(policy.check("base", &name, base_location.as_ref().and_then(|location| location.path())).err());
        }
        match refiner.as_deref().map(|name| loader::resolve_model(name, models_dir)) {
            Some(Err(err)) => missing.push(crate::error::FieldError::new("refiner", err.to_string())),
            Some(Ok(location)) => missing.extend(policy.check("refiner", refiner.as_deref().unwrap_or_default(), location.path()).err()),
            None => {}
        }
        match vae.as_deref().map(|name| loader::vae::resolve_vae(name, models_dir)) {
            Some(Err(err)) => missing.push(crate::error::FieldError::new("vae", err.to_string())),
            Some(Ok(location)) => missing.extend(policy.check("vae", vae.as_deref().unwrap_or_default(), location.path()).err()),
            None => {}
        }
        // "controlnet": a name or path, or an array of them (loaded with the base's dtype).
        let controlnets: Vec<(String, String)> = match fields.get("controlnet") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(name)) => vec![("controlnet".to_string(), name.clone())],
            Some(Value::Array(names)) => names
                .iter()
                .enumerate()
                .map(|(index, name)| match name.as_str() {
                    Some(name) if !name.trim().is_empty() => Ok((format!("controlnet[{index}]"), name.to_string())),
                    _ => Err(Error::validation(format!("controlnet[{index}]"), "must be a ControlNet name or path")),
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(Error::validation("controlnet", "must be a ControlNet name or path, or an array of them")),
        };
        for (field, name) in &controlnets {
            match loader::controlnet::resolve_controlnet(Some(name), "canny", models_dir) {
                Ok(location) => missing.extend(policy.check(field, name, location.path()).err()),
                Err(err) => missing.push(crate::error::FieldError::new(field.clone(), err.to_string())),
            }
        }
        if !missing.is_empty() {
            return Err(Error::Validation(missing));
        }
        let ticket = self.queue.ticket(request_id)?;
        ticket.wait_for_turn(Priority::Normal)?;
        let offload = self.config.cpu_offload;
        let base = self.model(&name, text("config")?.as_deref(), offload, ModelRole::Base, None)?;
        if let Some(refiner) = &refiner {
            self.model(refiner, None, offload, ModelRole::Refiner, Some(&base))?;
        }
        if let Some(vae) = &vae {
            self.vae_model(Some(vae), &name, &base, self.vae_dtype, offload)?;
        }
        for (field, controlnet) in controlnets {
            let plan = api::validate::ControlNetPlan {
                field,
                model: Some(controlnet),
                kind: api::validate::ControlKind::Canny,
                conditioning_scale: 1.0,
                control_image: String::new(),
                guidance_start: 0.0,
                guidance_end: 1.0,
                canny: None,
            };
            self.controlnet(&plan, &base, offload)?;
        }
        Ok(name)
    }

    /// One JSON message in, one JSON response out (never fails: errors become responses).
    pub fn handle_json(&self, text: &str) -> String {
        let started = Instant::now();
        let message = match api::parse_message(text) {
            Ok(message) => message,
            Err(err) => return self.failure(new_request_id(), &err, Vec::new(), started),
        };
        match message {
            Message::Status { request_id } => {
                let status = self.status();
                Response::success(request_id.unwrap_or_else(new_request_id), status, Vec::new(), started.elapsed().as_secs_f64()).to_json()
            }
            Message::ModelLoad { request_id, data } => {
                let request_id = request_id.unwrap_or_else(new_request_id);
                match self.load_model_for(Some(&request_id), &data.to_string()) {
                    Ok(name) => Response::success(request_id, json!({"model_loaded": name}), Vec::new(), started.elapsed().as_secs_f64()).to_json(),
                    Err(err) => self.failure(request_id, &err, Vec::new(), started),
                }
            }
            Message::DebugPanic => panic!("debug_panic message: a deliberate panic to prove the ABI guard"),
            Message::Inference { request_id, data } => {
                let metadata_id = data.get("metadata").and_then(|m| m.get("request_id")).and_then(|v| v.as_str()).map(str::to_string);
                let request_id = request_id.or(metadata_id).unwrap_or_else(new_request_id);
                let mut warnings = self.engine_warnings.clone();
                // The ticket exists from here on, so a cancel aimed at this id while the
                // request is still being checked is not lost.
                let result = self.queue.ticket(Some(&request_id)).and_then(|ticket| self.run_inference(&ticket, &request_id, data, &mut warnings, started));
                match result {
                    Ok(data) => {
                        self.requests_served.fetch_add(1, Ordering::Relaxed);
                        Response::success(request_id, data, warnings, started.elapsed().as_secs_f64()).to_json()
                    }
                    Err(err) => self.failure(request_id, &err, warnings, started),
                }
            }
        }
    }

    fn name_policy(&self) -> preflight::NamePolicy<'_> {
        preflight::NamePolicy { models_dir: self.config.models_dir.as_deref(), models_dir_only: self.config.models_dir_only }
    }

    fn failure(&self, request_id: String, err: &Error, warnings: Vec<String>, started: Instant) -> String {
        *self.last_error.lock() = Some(err.to_string());
        Response::<Value>::failure(request_id, err, warnings, started.elapsed().as_secs_f64()).to_json()
    }

    fn run_inference(&self, ticket: &Ticket, request_id: &str, data: Value, warnings: &mut Vec<String>, started: Instant) -> Result<GenerationData> {
        let data = api::normalize_legacy_fields(data);
        let request = api::parse_request(data)?;
        let mut plan = api::plan_request(&request, request_id.to_string(), &self.config.limits, random_seed)?;
        preflight::check_names_resolve(&plan, self.name_policy(), |name| self.models.lock().keys().any(|key| key.name == name))?;
        if !plan.return_images {
            crate::image::save::confined_dir(&self.config.output_dir, &plan.save_dir)?;
        }
        warnings.append(&mut plan.warnings);
        warnings.extend(self.fields_not_honoured(&request, &plan)?);
        let replay = replay_json(&request, &plan)?;
        let metadata = request.metadata.clone().unwrap_or_default();
        let priority = Priority::from_name(metadata.priority.as_deref());
        let served = ServedMetadata { priority: priority.name().to_string(), tags: metadata.tags.unwrap_or_default() };
        let init_image = match &plan.init_image {
            Some(source) => Some(crate::image::load_init_image(source, plan.width, plan.height, warnings)?),
            None => None,
        };
        // Control images (and their canny edges) are made before the request waits its turn.
        let control_images = plan
            .controlnets
            .iter()
            .map(|control| {
                let field = format!("{}.control_image", control.field);
                let image = crate::image::control::prepare_control_image(&field, &control.control_image, control.canny.as_ref(), plan.width, plan.height, warnings)?;
                crate::image::control::control_tensor(&image, &self.device)
            })
            .collect::<Result<Vec<_>>>()?;
        // Wait behind the request in flight and every better-placed one; a cancel aimed at any
        // of them cannot reach this one (each ticket has its own flag).
        ticket.wait_for_turn(priority)?;
        // The timeout's clock starts here: time spent queued behind other requests is not the
        // request's own.
        let running_since = Instant::now();
        let cpu_offload = request.precision.as_ref().and_then(|p| p.cpu_offload).unwrap_or(self.config.cpu_offload);
        if cpu_offload && self.device.is_cpu() {
            warnings.push("precision.cpu_offload saves nothing on the CPU device (host and device memory are the same)".into());
        }
        let model = self.model(&plan.base_model, None, cpu_offload, ModelRole::Base, None)?;
        let refiner = match &plan.refiner {
            Some(refiner) => Some(self.model(&refiner.model, None, cpu_offload, ModelRole::Refiner, Some(&model))?),
            None => None,
        };
        let vae = self.request_vae(&plan, &model, cpu_offload)?;
        let vae_config = vae.as_ref().map_or_else(|| model.vae.network().config(), |vae| vae.network.network().config()).clone();
        let vae_dtype = vae.as_ref().map_or(model.vae_dtype, |vae| vae.dtype);
        let tiling = self.vae_tiling(&plan, &vae_config, vae_dtype)?;
        self.admit(&model, refiner.as_ref(), &plan, &vae_config, vae_dtype, tiling.as_ref())?;
        if model.description.starts_with("built-in") {
            warnings.push("used the built-in tiny demo model (random weights): images are noise-like patterns, not pictures".into());
        }
        // The resident model fuses exactly this request's LoRAs (only changed layers are touched).
        let (loaded_loras, lora_report) = crate::lora::apply_request(&model.adapters, &self.loras, &plan.loras, self.config.models_dir.as_deref())?;
        if lora_report.layers_patched + lora_report.layers_restored > 0 {
            tracing::info!(patched = lora_report.layers_patched, restored = lora_report.layers_restored, ms = lora_report.elapsed.as_millis() as u64, "LoRA adapters changed");
        }
        let float32_vae = || self.vae_model(plan.vae.model.as_deref(), &plan.base_model, &model, DType::F32, cpu_offload);
        let vae_choice = match &vae {
            Some(vae) => VaeChoice { network: &vae.network, dtype: vae.dtype, tiling, float32: Some(&float32_vae) },
            None => VaeChoice { network: &model.vae, dtype: model.vae_dtype, tiling, float32: Some(&float32_vae) },
        };
        let controlnets = plan
            .controlnets
            .iter()
            .map(|control| self.controlnet(control, &model, cpu_offload))
            .collect::<Result<Vec<_>>>()?;
        let guidance = plan
            .controlnets
            .iter()
            .zip(&controlnets)
            .zip(control_images)
            .map(|((control, net), image)| pipeline::ControlGuidance {
                network: &net.network,
                image,
                conditioning_scale: control.conditioning_scale,
                guidance_start: control.guidance_start,
                guidance_end: control.guidance_end,
            })
            .collect();
        let models = PipelineModels { base: &model, refiner: refiner.as_deref(), vae: vae_choice, controlnets: guidance };
        let run = RunRecord { replay: &replay, loaded_loras: &loaded_loras, served, started, running_since };
        let result = self.generate_with_model(&models, &plan, init_image.as_ref(), run, ticket.cancel_flag(), warnings);
        // The failed request's tensors are dropped by now; its queued work and cached blocks are not.
        if let Err(Error::OutOfMemory(message)) = &result {
            let released = match memory::release_device_memory(&self.device) {
                Ok(Some(free)) => format!("; its device memory was released ({} free now) and the engine is ready", memory::gib(free)),
                Ok(None) => String::new(),
                Err(err) => format!("; releasing its device memory failed too: {err}"),
            };
            return Err(Error::OutOfMemory(format!("{message}{released}")));
        }
        result
    }

    /// The VAE a request asked for when it is not the base model's own as loaded: `models.vae`,
    /// or the base's VAE in the `precision.vae_dtype` the request asked for. None: the base's.
    fn request_vae(&self, plan: &GenerationPlan, model: &Arc<SdxlModel>, cpu_offload: bool) -> Result<Option<Arc<VaeModel>>> {
        // The CPU computes in float32 whatever is asked (the engine's warning says so).
        let dtype = match &plan.vae.dtype {
            Some(name) if !self.device.is_cpu() => config::parse_dtype("precision.vae_dtype", name)?,
            _ => self.vae_dtype,
        };
        match &plan.vae.model {
            Some(name) => Ok(Some(self.vae_model(Some(name), &plan.base_model, model, dtype, cpu_offload)?)),
            None if dtype != model.vae_dtype => Ok(Some(self.vae_model(None, &plan.base_model, model, dtype, cpu_offload)?)),
            None => Ok(None),
        }
    }

    /// Whether the VAE tiles: as asked, or ("auto") when decoding the whole image at once
    /// would not fit what the memory budget leaves.
    fn vae_tiling(&self, plan: &GenerationPlan, vae: &crate::models::VaeConfig, dtype: DType) -> Result<Option<VaeTiling>> {
        let tiling = VaeTiling { tile_size: plan.vae.tile_size.map_or(vae.sample_size, |size| size as usize), overlap: plan.vae.tile_overlap };
        let wanted = match plan.vae.tiling {
            TilingChoice::Off => false,
            TilingChoice::On => true,
            TilingChoice::Auto => {
                let whole = memory::estimate_vae_bytes(vae, dtype, plan.height as u64, plan.width as u64);
                self.available_bytes().is_some_and(|available| whole > available)
            }
        };
        if !wanted {
            return Ok(None);
        }
        tiling.check(vae.downscale_factor()).map_err(|message| Error::validation("precision.vae_tile_size", message))?;
        Ok(Some(tiling))
    }

    fn generate_with_model(
        &self,
        models: &PipelineModels,
        plan: &GenerationPlan,
        init_image: Option<&image::RgbImage>,
        run: RunRecord,
        cancelled: &AtomicBool,
        warnings: &mut Vec<String>,
    ) -> Result<GenerationData> {
        let RunRecord { replay, loaded_loras, served, started, running_since } = run;
        let model = models.base;
        let deadline_s = plan.timeout_s.or(self.config.timeout_s).unwrap_or(f64::INFINITY);
        let peak_memory_measure = memory::start_request_peak(&self.device);
        // The device pool keeps its own high-water mark; only the resident set needs sampling.
        let sampled_peak = (peak_memory_measure == memory::PEAK_OF_PROCESS_RESIDENT_SET).then_some(0);
        let callback_panic = Mutex::new(None);
        let mut observer =
            EngineObserver { engine: self, request_id: &plan.request_id, cancelled, deadline_s, started: running_since, sampled_peak, callback_panic: &callback_panic };
        let mut ctx = RunContext { device: &self.device, noise_kernel: self.noise_kernel, progress: &mut observer, started };
        // A stop asked by the progress callback, the clock or a panicking callback.
        let why_stopped = |err: Error| match err {
            Error::Cancelled if running_since.elapsed().as_secs_f64() > deadline_s => Error::Timeout(deadline_s),
            Error::Cancelled => match callback_panic.lock().take() {
                Some(message) => Error::Internal(format!("the progress callback panicked ({message}); the request was stopped")),
                None => Error::Cancelled,
            },
            other => other,
        };
        let mut batch = pipeline::generate(models, plan, init_image, &mut ctx, None).map_err(why_stopped)?;
        warnings.append(&mut batch.warnings);
        if let Some(upscale) = &plan.upscale {
            let upscale_start = Instant::now();
            self.upscale_batch(upscale, &mut batch, &mut ctx, model.dtype).map_err(why_stopped)?;
            batch.stage_times.upscale = upscale_start.elapsed().as_secs_f64();
        }

        let save_start = Instant::now();
        let dir = crate::image::save::confined_dir(&self.config.output_dir, &plan.save_dir)?;
        let mut generated = Vec::new();
        for (index, (image, seed)) in batch.images.iter().zip(&batch.seeds).enumerate() {
            ctx.progress.on_progress(&ProgressEvent {
                stage: Stage::Save,
                image_index: index as u32,
                step: plan.steps,
                total_steps: plan.steps,
                model_calls: batch.model_calls,
                elapsed_ms: started.elapsed().as_millis() as u64,
            });
            let bytes = match plan.format {
                // PNG remembers how it was made: A1111's parameters and the request to replay.
                api::ImageFormat::Png => {
                    let parameters = self.a1111_parameters(models, plan, *seed).to_a1111();
                    let chunks = [(crate::image::metadata::PARAMETERS_KEY, parameters.as_str()), (crate::image::metadata::REQUEST_KEY, replay)];
                    crate::image::metadata::encode_png(image, &chunks)?
                }
                _ => crate::image::save::encode(image, plan.format, plan.quality, plan.lossless)?,
            };
            let (path, data) = if plan.return_images {
                use base64::Engine as _;
                (None, Some(base64::engine::general_purpose::STANDARD.encode(&bytes)))
            } else {
                let name = crate::image::save::file_name(&plan.request_id, index, *seed, plan.format);
                match crate::image::save::write_atomically(&dir, &name, &bytes) {
                    Ok(path) => (Some(path.display().to_string()), None),
                    // The files written before this one are complete: say where they are.
                    Err(err) => {
                        let written: Vec<&str> = generated.iter().filter_map(|image: &GeneratedImage| image.path.as_deref()).collect();
                        return Err(match (err, written.is_empty()) {
                            (err, true) => err,
                            (Error::Io(message), false) => Error::Io(format!("{message}; already written by this request: {}", written.join(", "))),
                            (other, false) => other,
                        });
                    }
                }
            };
            generated.push(GeneratedImage {
                path,
                seed: *seed,
                width: image.width(),
                height: image.height(),
                format: plan.format.name().to_string(),
                data,
            });
        }
        drop(ctx);
        let peak_memory_bytes = match observer.sampled_peak {
            Some(sampled) => sampled,
            None => memory::request_peak(&self.device).unwrap_or_else(|| memory::memory_in_use(&self.device)),
        };
        let mut stage_times = batch.stage_times.clone();
        stage_times.save = save_start.elapsed().as_secs_f64();
        let inference_time = stage_times.text_encode + stage_times.denoise + stage_times.refine + stage_times.decode + stage_times.upscale;
        Ok(GenerationData {
            generated_images: generated,
            processing_metrics: ProcessingMetrics {
                total_time: started.elapsed().as_secs_f64(),
                inference_time,
                device_name: self.device_name(),
                memory_used: self.resident_weight_bytes(),
                model_info: json!({
                    "base_model": plan.base_model,
                    "description": model.description,
                    "refiner_model": plan.refiner.as_ref().map(|refiner| refiner.model.clone()),
                    "refiner_description": models.refiner.map(|refiner| refiner.description.clone()),
                    "refiner_mode": plan.refiner.as_ref().map(|refiner| match refiner.mode {
                        api::validate::RefinerMode::Ensemble => "ensemble",
                        api::validate::RefinerMode::Img2Img => "img2img",
                    }),
                    "refiner_steps": batch.refiner_steps_run,
                    "vae": plan.vae.model,
                    "upscale": plan.upscale.as_ref().map(|upscale| json!({
                        "method": match upscale.method { api::validate::UpscaleMethod::RealEsrgan => "realesrgan", api::validate::UpscaleMethod::Lanczos => "lanczos" },
                        "factor": upscale.factor,
                        "model": upscale.model,
                        "tile": upscale.tile,
                        "tile_pad": upscale.tile_pad,
                    })),
                    "controlnets": plan.controlnets.iter().map(|control| json!({
                        "type": control.kind.name(),
                        "model": control.model,
                        "conditioning_scale": control.conditioning_scale,
                        "guidance_start": control.guidance_start,
                        "guidance_end": control.guidance_end,
                        "canny": control.canny.map(|c| json!({"low_threshold": c.low_threshold, "high_threshold": c.high_threshold, "resolution": c.resolution})),
                    })).collect::<Vec<_>>(),
                    "vae_tiling": models.vae.tiling.map(|tiling| json!({"tile_size": tiling.tile_size, "overlap": tiling.overlap})),
                    "loaded_loras": loaded_loras,
                    "scheduler": plan.scheduler.class_name(),
                    "dtype": config::dtype_name(model.dtype),
                    "vae_dtype": config::dtype_name(models.vae.dtype),
                    "cpu_offload": model.cpu_offload,
                }),
                iterations_per_second: if stage_times.denoise + stage_times.refine > 0.0 {
                    (batch.steps_run + batch.refiner_steps_run) as f64 / (stage_times.denoise + stage_times.refine)
                } else {
                    0.0
                },
                peak_memory_bytes,
                peak_memory_measure: peak_memory_measure.to_string(),
                unet_calls: batch.model_calls as u64,
                stage_times,
            },
            metadata: served,
        })
    }

    /// Warnings naming each request field this engine accepts but does not act on, with
    /// what it did instead (fields it honours, or that change nothing here, stay quiet).
    fn fields_not_honoured(&self, request: &GenerationRequest, plan: &GenerationPlan) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        if let Some(precision) = &request.precision {
            // The compute dtype is fixed when the engine is created (every cached model is
            // loaded in it); asking for the engine's own dtype is a no-op. A dtype the engine
            // config asked for but the CPU downgraded is already explained by the engine's warning.
            if let Some(requested) = &precision.dtype {
                if config::parse_dtype("precision.dtype", requested)? != self.dtype && *requested != self.config.dtype {
                    warnings.push(format!(
                        "precision.dtype {requested} ignored: this engine computes in {} (set by the engine config at sdxl_create)",
                        config::dtype_name(self.dtype)
                    ));
                }
            }
            // The VAE's dtype is honoured per request on a GPU (engine::request_vae); the CPU
            // decodes in float32.
            if let Some(requested) = &precision.vae_dtype {
                if self.device.is_cpu() && config::parse_dtype("precision.vae_dtype", requested)? != DType::F32 && *requested != self.config.vae_dtype {
                    warnings.push(format!("precision.vae_dtype {requested} ignored: this engine decodes in float32 on the CPU"));
                }
            }
            // Attention is always chunked by query rows once its scores would pass
            // models::attention::SCORE_CHUNK_BYTES, whatever the request says.
            if let Some(slicing) = precision.attention_slicing {
                warnings.push(format!(
                    "precision.attention_slicing {slicing} ignored: the engine manages attention memory itself (attention runs in query chunks once its scores pass 256 MiB)"
                ));
            }
            // pipeline::generate decodes one image at a time, which is what vae_slicing asks for.
            if precision.vae_slicing == Some(false) {
                warnings.push(
                    "precision.vae_slicing false ignored: the VAE always decodes a batch one image at a time, its large convolutions in row bands".to_string(),
                );
            }
        }
        // Running a batch together gives the same images as one at a time (image i uses seed + i).
        if request.batch.as_ref().and_then(|batch| batch.parallel) == Some(false) && plan.batch_size > 1 {
            warnings.push(format!("batch.parallel false ignored: the {} images of a batch always run together as one batch", plan.batch_size));
        }
        let output = request.output.clone().unwrap_or_default();
        if plan.format == api::ImageFormat::Webp && plan.lossless {
            if let Some(quality) = output.quality {
                warnings.push(format!("output.quality {quality} ignored: output.lossless writes lossless WebP"));
            }
        }
        if plan.format != api::ImageFormat::Webp && output.lossless.is_some() {
            warnings.push(format!("output.lossless ignored: it applies to WebP, not {}", plan.format.name()));
        }
        Ok(warnings)
    }

    /// Refuses a request whose estimated activations cannot fit in what the budget (or the
    /// free device memory) leaves, even after evicting every other cached model, least
    /// recently used first. The refiner runs after the base, so the larger of the two counts.
    fn admit(
        &self,
        model: &Arc<SdxlModel>,
        refiner: Option<&Arc<SdxlModel>>,
        plan: &GenerationPlan,
        vae: &crate::models::VaeConfig,
        vae_dtype: DType,
        tiling: Option<&VaeTiling>,
    ) -> Result<()> {
        let denoise = memory::estimate_denoise_bytes(model, plan).max(refiner.map_or(0, |refiner| memory::estimate_denoise_bytes(refiner, plan)));
        let (height, width) = (plan.height as u64, plan.width as u64);
        let decode = match tiling {
            Some(tiling) => memory::estimate_tiled_vae_bytes(vae, vae_dtype, tiling.tile_size as u64, height, width),
            None => memory::estimate_vae_bytes(vae, vae_dtype, height, width),
        };
        // The loop's activations are freed before the decode: the peak is the larger.
        let needed = denoise.max(decode);
        // The refiner must stay too: evicting it would only load it again.
        let keep = refiner.unwrap_or(model);
        self.make_room(needed, Some(keep)).map_err(|available| {
            Error::OutOfMemory(format!(
                "this request needs about {} of activations ({}x{}, batch {}), more than the {available}; lower the size or batch{}",
                memory::gib(needed),
                plan.width,
                plan.height,
                plan.batch_size,
                if tiling.is_none() { ", or set precision.vae_tiling" } else { "" }
            ))
        })
    }

    fn side_status(&self, kind: SideKind) -> Vec<Value> {
        self.side_networks
            .lock()
            .iter()
            .filter(|(key, _)| key.kind == kind)
            .map(|(key, entry)| {
                let (description, weight_bytes, device_weight_bytes, host_weight_bytes) = entry.network.footprint();
                json!({
                    "source": key.source,
                    "description": description,
                    "dtype": config::dtype_name(key.dtype),
                    "weight_bytes": weight_bytes,
                    "device_weight_bytes": device_weight_bytes,
                    "host_weight_bytes": host_weight_bytes,
                    "cpu_offload": key.cpu_offload,
                })
            })
            .collect()
    }

    pub fn status(&self) -> Value {
        let models: Vec<Value> = self
            .models
            .lock()
            .iter()
            .map(|(key, entry)| {
                let (fused_device, fused_host) = entry.model.adapters.fused_bytes(&self.device);
                json!({
                    "name": key.name,
                    "role": key.role.name(),
                    "config": key.config_dir,
                    "description": entry.model.description,
                    "dtype": config::dtype_name(entry.model.dtype),
                    "vae_dtype": config::dtype_name(entry.model.vae_dtype),
                    "weight_bytes": entry.model.weight_bytes,
                    "device_weight_bytes": entry.model.device_weight_bytes,
                    "lora_fused_device_bytes": fused_device,
                    "lora_fused_host_bytes": fused_host,
                    "host_weight_bytes": entry.model.host_weight_bytes,
                    "cpu_offload": entry.model.cpu_offload,
                })
            })
            .collect();
        let device_memory = memory::device_memory(&self.device);
        let queue = self.queue.snapshot();
        json!({
            "orchestrator_status": "running",
            "version": crate::VERSION,
            "device_name": self.device_name(),
            "dtype": config::dtype_name(self.dtype),
            "loaded_models": models,
            "loaded_vaes": self.side_status(SideKind::Vae),
            "loaded_controlnets": self.side_status(SideKind::ControlNet),
            "loaded_upscalers": self.side_status(SideKind::Upscaler),
            "cached_loras": self.loras.paths(),
            "memory": {
                "device_total_bytes": device_memory.map(|(_, total)| total),
                "device_free_bytes": device_memory.map(|(free, _)| free),
                "weights_on_device_bytes": self.resident_weight_bytes(),
                "weights_on_host_bytes": self.models.lock().values().map(|entry| entry.model.host_weight_bytes).sum::<u64>()
                    + self.side_networks.lock().values().map(|entry| entry.network.footprint().3).sum::<u64>(),
                "budget_bytes": self.config.max_memory_gb.map(memory::gib_to_bytes),
            },
            "requests_served": self.requests_served.load(Ordering::Relaxed),
            // Ids in the order they run ("" for a model load without one).
            "queue": {"running": queue.running, "waiting": queue.waiting},
            "last_error": *self.last_error.lock(),
            "message_handlers": ["inference_request", "model_load_request", "status_request"],
        })
    }
}

/// What a request's run needs besides its plan and models.
struct RunRecord<'a> {
    /// The request as it would run again (seed resolved), for PNG metadata.
    replay: &'a str,
    loaded_loras: &'a [crate::lora::LoadedLora],
    served: ServedMetadata,
    started: Instant,
    running_since: Instant,
}

/// The request with its seed resolved and nulls left out: what `sdxl request --from-image`
/// runs again to make the same image.
fn replay_json(request: &GenerationRequest, plan: &GenerationPlan) -> Result<String> {
    let mut replay = request.clone();
    replay.hyperparameters.get_or_insert_with(Default::default).seed = Some(plan.seed as i64);
    fn without_nulls(value: Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, without_nulls(v))).collect()),
            Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
            other => other,
        }
    }
    let value = serde_json::to_value(&replay).map_err(|e| Error::Internal(format!("request to JSON: {e}")))?;
    Ok(without_nulls(value).to_string())
}

/// Says which request field a model-loading failure concerns (the base, the refiner, the VAE).
fn name_the_field(err: Error, field: &str) -> Error {
    match err {
        Error::ModelLoad(text) => Error::ModelLoad(format!("{field}: {text}")),
        Error::ModelNotFound(text) => Error::ModelNotFound(format!("{field}: {text}")),
        other => other,
    }
}

/// Bridges pipeline progress to the host callback, the request's cancel flag and the timeout.
struct EngineObserver<'a> {
    engine: &'a Engine,
    request_id: &'a str,
    /// This request's own flag: set by `cancel_request(id)`, `cancel()` while it runs, or shut down.
    cancelled: &'a AtomicBool,
    deadline_s: f64,
    started: Instant,
    /// Highest resident set seen at a progress event; None when the device pool measures the peak.
    sampled_peak: Option<u64>,
    /// The message of a host progress callback that panicked: the request stops, and its
    /// response says why instead of "cancelled".
    callback_panic: &'a Mutex<Option<String>>,
}

impl ProgressObserver for EngineObserver<'_> {
    fn on_progress(&mut self, event: &ProgressEvent) -> bool {
        // On a GPU the host runs ahead of the device; waiting here keeps it at most one step
        // ahead, so a cancel or an out-of-memory error leaves at most one step of queued work.
        if !self.engine.device.is_cpu() && self.engine.device.synchronize().is_err() {
            return false;
        }
        if let Some(peak) = self.sampled_peak.as_mut() {
            *peak = (*peak).max(memory::memory_in_use(&self.engine.device));
        }
        if self.cancelled.load(Ordering::SeqCst) {
            return false;
        }
        if self.started.elapsed().as_secs_f64() > self.deadline_s {
            return false;
        }
        let mut callback = self.engine.progress.lock();
        let Some(callback) = callback.as_mut() else { return true };
        // A panic must not unwind through the pipeline (nor, through the C ABI, into the host).
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(self.request_id, event))) {
            Ok(go_on) => go_on,
            Err(payload) => {
                *self.callback_panic.lock() = Some(crate::error::panic_message(payload.as_ref()));
                false
            }
        }
    }
}
