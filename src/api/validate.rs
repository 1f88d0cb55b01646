//! Defaults and validation: turns a `GenerationRequest` into a `GenerationPlan`
//! the pipeline can run without further checks. Defaults and ranges are the seed's
//! (EnhancedRequestTransformer, enhanced_sdxl_worker `_validate_enhanced_request`);
//! every failure names its JSON field path.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::request::GenerationRequest;
use crate::error::{Error, FieldError, Result};
use crate::schedulers::{SchedulerKind, SchedulerOverrides};

/// The seed's validation ranges; an engine may override them (tiny test models
/// are useful at sizes below SDXL's 256 minimum).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub min_size: u32,
    pub max_size: u32,
    pub size_multiple: u32,
    pub min_steps: u32,
    pub max_steps: u32,
    pub min_guidance: f64,
    pub max_guidance: f64,
    pub max_batch: u32,
    pub max_lora_weight: f64,
    /// 75-token windows a prompt (or negative prompt) may take in chunked mode.
    pub max_prompt_windows: u32,
}

/// The largest `limits.max_size` an engine accepts: beyond it no GPU holds even one image's
/// activations, and the size arithmetic of the memory estimate stays far from u64 overflow.
pub(crate) const LARGEST_MAX_SIZE: u32 = 16384;
pub(crate) const LARGEST_MAX_BATCH: u32 = 64;
pub(crate) const LARGEST_MAX_STEPS: u32 = 1000;

impl Limits {
    /// The engine config's limits are consistent and usable (checked at `sdxl_create`): a
    /// `size_multiple` of 0 would divide by zero in every request, a `max_size` beyond
    /// [`LARGEST_MAX_SIZE`] would let requests past the memory estimate.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| errors.push(FieldError::new(format!("limits.{field}"), message));
        // The VAE maps 8 pixels to one latent cell: sizes must stay multiples of 8.
        if self.size_multiple == 0 || self.size_multiple % 8 != 0 || self.size_multiple > 64 {
            fail("size_multiple", format!("{} must be a multiple of 8 up to 64", self.size_multiple));
        }
        if self.min_size == 0 {
            fail("min_size", "must be at least 1".into());
        }
        if self.max_size > LARGEST_MAX_SIZE {
            fail("max_size", format!("{} is above the largest supported size {LARGEST_MAX_SIZE}", self.max_size));
        }
        if self.min_size > self.max_size {
            fail("min_size", format!("{} is above max_size {}", self.min_size, self.max_size));
        }
        if self.min_steps == 0 || self.min_steps > self.max_steps || self.max_steps > LARGEST_MAX_STEPS {
            fail("max_steps", format!("steps {}..{} must satisfy 1 <= min_steps <= max_steps <= {LARGEST_MAX_STEPS}", self.min_steps, self.max_steps));
        }
        if !(self.min_guidance.is_finite() && self.max_guidance.is_finite() && self.min_guidance >= 0.0 && self.min_guidance <= self.max_guidance) {
            fail("max_guidance", format!("guidance {}..{} must be finite with 0 <= min_guidance <= max_guidance", self.min_guidance, self.max_guidance));
        }
        if self.max_batch == 0 || self.max_batch > LARGEST_MAX_BATCH {
            fail("max_batch", format!("{} must be 1..{LARGEST_MAX_BATCH}", self.max_batch));
        }
        if self.max_prompt_windows == 0 || self.max_prompt_windows > 1024 {
            fail("max_prompt_windows", format!("{} must be 1..1024", self.max_prompt_windows));
        }
        if !(self.max_lora_weight.is_finite() && self.max_lora_weight >= 0.0) {
            fail("max_lora_weight", format!("{} must be a finite number >= 0", self.max_lora_weight));
        }
        errors
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            min_size: 256,
            max_size: 2048,
            size_multiple: 8,
            min_steps: 1,
            max_steps: 150,
            min_guidance: 1.0,
            max_guidance: 30.0,
            max_batch: 9,
            max_lora_weight: 2.0,
            max_prompt_windows: 16,
        }
    }
}

pub(crate) const DEFAULT_STEPS: u32 = 25;
pub(crate) const DEFAULT_GUIDANCE: f64 = 7.5;
pub(crate) const DEFAULT_STRENGTH: f64 = 0.8;
pub(crate) const DEFAULT_SIZE: u32 = 1024;
pub(crate) const DEFAULT_QUALITY: u8 = 95;
pub(crate) const DEFAULT_SAVE_PATH: &str = "outputs/";
/// Largest |weight| of a `(text:weight)` emphasis (nested parentheses multiply): beyond it
/// scaled float16 embeddings overflow, and a non-finite weight makes NaN latents, a black image.
pub(crate) const MAX_EMPHASIS_WEIGHT: f32 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Webp => "webp",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Webp => "webp",
        }
    }
    fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "png" => Some(ImageFormat::Png),
            "jpeg" | "jpg" => Some(ImageFormat::Jpeg),
            "webp" => Some(ImageFormat::Webp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptTruncation {
    /// 75-token windows concatenated, `(word:1.2)` emphasis honoured.
    Chunked,
    /// Exactly diffusers: one 77-token window, longer prompts truncated, no emphasis syntax.
    Diffusers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RngKind {
    /// `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`.
    TorchCpu,
}

/// SDXL's micro-conditioning `(original_size, crops_coords_top_left, target_size)`, (height, width) order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MicroConditioning {
    pub original_size: [u32; 2],
    pub crops_coords_top_left: [u32; 2],
    pub target_size: [u32; 2],
}

/// How the refiner finishes the base's image (diffusers' two recipes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefinerMode {
    /// Ensemble of expert denoisers: the base stops at `denoising_start` of the schedule and
    /// the refiner runs the rest of the same schedule on the base's latents.
    Ensemble,
    /// The base runs every step; the refiner re-noises its latents by `strength` and denoises.
    Img2Img,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefinerPlan {
    pub model: String,
    pub mode: RefinerMode,
    pub denoising_start: f64,
    pub strength: f64,
    pub aesthetic_score: f64,
    pub negative_aesthetic_score: f64,
}

pub(crate) const DEFAULT_REFINER_START: f64 = 0.8;
pub(crate) const DEFAULT_REFINER_STRENGTH: f64 = 0.3;
pub(crate) const DEFAULT_AESTHETIC_SCORE: f64 = 6.0;
pub(crate) const DEFAULT_NEGATIVE_AESTHETIC_SCORE: f64 = 2.5;
pub(crate) const DEFAULT_TILE_OVERLAP: f64 = 0.25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TilingChoice {
    Off,
    On,
    /// Tile only when the whole decode would not fit the memory budget.
    Auto,
}

/// Which VAE encodes and decodes, in which dtype, and whether it tiles.
#[derive(Debug, Clone, PartialEq)]
pub struct VaePlan {
    /// `models.vae`; None: the base model's own VAE.
    pub model: Option<String>,
    /// `precision.vae_dtype`; None: the engine's.
    pub dtype: Option<String>,
    pub tiling: TilingChoice,
    /// Pixels; None: the VAE's `sample_size`.
    pub tile_size: Option<u32>,
    pub tile_overlap: f64,
}

/// The seed's ControlNet types. Only canny has a preprocessor here; the others take an
/// already-processed control image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    Canny,
    Depth,
    Pose,
    Scribble,
    Normal,
    Seg,
    Lineart,
}

impl ControlKind {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "canny" => Self::Canny,
            "depth" => Self::Depth,
            "pose" => Self::Pose,
            "scribble" => Self::Scribble,
            "normal" => Self::Normal,
            "seg" => Self::Seg,
            "lineart" => Self::Lineart,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Canny => "canny",
            Self::Depth => "depth",
            Self::Pose => "pose",
            Self::Scribble => "scribble",
            Self::Normal => "normal",
            Self::Seg => "seg",
            Self::Lineart => "lineart",
        }
    }
}

pub use crate::image::canny::CannySettings;

pub(crate) const DEFAULT_CANNY_LOW: f64 = 100.0;
pub(crate) const DEFAULT_CANNY_HIGH: f64 = 200.0;

/// One enabled ControlNet, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetPlan {
    /// `controlnet` or `controlnet[i]`: where errors about it point.
    pub field: String,
    /// None: `<models_dir>/controlnet/<type>`.
    pub model: Option<String>,
    pub kind: ControlKind,
    pub conditioning_scale: f64,
    pub control_image: String,
    pub guidance_start: f64,
    pub guidance_end: f64,
    /// Some: detect canny edges in the control image first.
    pub canny: Option<CannySettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpscaleMethod {
    /// Real-ESRGAN (RRDBNet) as `RealESRGANer.enhance`, then Lanczos4 to the factor if needed.
    RealEsrgan,
    /// Pillow's Lanczos resampling, no model.
    Lanczos,
}

/// `output.upscale`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct UpscalePlan {
    pub method: UpscaleMethod,
    pub factor: u32,
    /// None: `<models_dir>/upscalers/RealESRGAN_x{factor}plus.pth`.
    pub model: Option<String>,
    /// Input pixels per tile (0: whole image).
    pub tile: u32,
    pub tile_pad: u32,
}

pub(crate) const DEFAULT_UPSCALE_TILE: i64 = 512;
pub(crate) const DEFAULT_UPSCALE_TILE_PAD: i64 = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct LoraRequest {
    pub name: String,
    pub weight: f64,
}

/// A validated request with every default filled in.
#[derive(Debug, Clone)]
pub struct GenerationPlan {
    pub request_id: String,
    pub prompt: String,
    /// None: zeros when the model says `force_zeros_for_empty_prompt`; any string ("" too) is text.
    pub negative_prompt: Option<String>,
    pub base_model: String,
    pub refiner: Option<RefinerPlan>,
    pub vae: VaePlan,
    /// Enabled ControlNets, in request order (their residuals add up).
    pub controlnets: Vec<ControlNetPlan>,
    pub upscale: Option<UpscalePlan>,
    pub steps: u32,
    pub guidance_scale: f64,
    /// The first image's seed; image i uses `seed + i`.
    pub seed: u64,
    pub strength: f64,
    pub width: u32,
    pub height: u32,
    pub scheduler: SchedulerKind,
    pub scheduler_overrides: SchedulerOverrides,
    pub loras: Vec<LoraRequest>,
    pub format: ImageFormat,
    pub quality: u8,
    /// `output.lossless` (WebP).
    pub lossless: bool,
    /// Relative to the engine's output_dir; proven not to escape it.
    pub save_dir: PathBuf,
    /// `output.return_images`: the encoded images go back in the response, no file is written.
    pub return_images: bool,
    pub batch_size: u32,
    pub init_image: Option<String>,
    pub micro_conditioning: MicroConditioning,
    pub rng: RngKind,
    pub prompt_truncation: PromptTruncation,
    /// `metadata.timeout`: None means the engine config's `timeout_s`, or no timeout.
    pub timeout_s: Option<f64>,
    /// From `limits.max_prompt_windows` (checked once the prompt is tokenized).
    pub max_prompt_windows: usize,
    pub warnings: Vec<String>,
}

/// Parses the (normalised) `data` object, reporting type errors with their field path.
pub fn parse_request(data: serde_json::Value) -> Result<GenerationRequest> {
    serde_path_to_error::deserialize(data).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        let field = if path == "." { unknown_field_path(&message) } else { path };
        Error::Validation(vec![FieldError::new(field, message)])
    })
}

fn unknown_field_path(message: &str) -> String {
    // serde reports an unknown top-level field with an empty path; name the field itself.
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string)
        .unwrap_or_else(|| "data".into())
}

pub fn plan_request(
    request: &GenerationRequest,
    request_id: String,
    limits: &Limits,
    random_seed: impl FnOnce() -> u64,
) -> Result<GenerationPlan> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    // Features this build does not have: answered UNSUPPORTED, unless the request also has
    // real errors (then everything is listed under VALIDATION_ERROR).
    let mut unsupported = Vec::new();

    let prompt = request.prompt.clone().unwrap_or_default();
    if prompt.trim().is_empty() {
        errors.push(FieldError::new("prompt", "Prompt is required and cannot be empty"));
    }

    let models = request.models.clone().unwrap_or_default();
    let base_model = models.base.clone().or_else(|| request.model_name.clone()).unwrap_or_default();
    if base_model.trim().is_empty() {
        errors.push(FieldError::new("models.base", "Base model is required"));
    }
    let refiner = plan_refiner(request, &models, &mut errors, &mut warnings);

    let dimensions = request.dimensions.clone().unwrap_or_default();
    let width = check_dimension("dimensions.width", dimensions.width, limits, &mut errors);
    let height = check_dimension("dimensions.height", dimensions.height, limits, &mut errors);

    let hyper = request.hyperparameters.clone().unwrap_or_default();
    let steps = hyper.num_inference_steps.unwrap_or(DEFAULT_STEPS as i64);
    if steps < limits.min_steps as i64 || steps > limits.max_steps as i64 {
        errors.push(FieldError::new(
            "hyperparameters.num_inference_steps",
            format!("Invalid steps: {steps}. Must be {}-{}", limits.min_steps, limits.max_steps),
        ));
    }
    let guidance_scale = hyper.guidance_scale.unwrap_or(DEFAULT_GUIDANCE);
    if !(guidance_scale >= limits.min_guidance && guidance_scale <= limits.max_guidance) {
        errors.push(FieldError::new(
            "hyperparameters.guidance_scale",
            format!(
                "Invalid guidance scale: {guidance_scale}. Must be {:.1}-{:.1}",
                limits.min_guidance, limits.max_guidance
            ),
        ));
    }
    let strength = hyper.strength.unwrap_or(DEFAULT_STRENGTH);
    if !(strength > 0.0 && strength <= 1.0) {
        errors.push(FieldError::new(
            "hyperparameters.strength",
            format!("Invalid strength: {strength}. Must be in (0, 1]"),
        ));
    } else if request.init_image.is_some() && ((steps as f64 * strength) as i64) < 1 {
        errors.push(FieldError::new(
            "hyperparameters.strength",
            format!("strength {strength} with {steps} steps leaves no denoising step (steps × strength must be ≥ 1)"),
        ));
    }
    let seed = match hyper.seed.unwrap_or(-1) {
        -1 => random_seed(),
        seed if seed >= 0 => seed as u64,
        seed => {
            errors.push(FieldError::new(
                "hyperparameters.seed",
                format!("Invalid seed: {seed}. Must be -1 (random) or a non-negative integer"),
            ));
            0
        }
    };

    let scheduler_name = request.scheduler.clone().unwrap_or_else(|| "DPMSolverMultistepScheduler".into());
    let scheduler = match SchedulerKind::from_name(&scheduler_name) {
        Ok(kind) => kind,
        Err(message) => {
            errors.push(FieldError::new("scheduler", message));
            SchedulerKind::default()
        }
    };
    // Explicit scheduler_options win over what an alias like "dpm++2m karras" implies.
    let scheduler_overrides = match &request.scheduler_options {
        None => SchedulerOverrides::default(),
        Some(options) => SchedulerOverrides::from_request(options, &mut errors),
    }
    .or(SchedulerKind::alias_overrides(&scheduler_name));
    // Judged here, before any model is loaded: an option the chosen scheduler has no use for.
    if let Err(error) = crate::schedulers::capabilities::reject_unhonoured_options(scheduler, &scheduler_overrides, 1) {
        let message = error.to_string();
        errors.push(FieldError::new("scheduler_options", message.strip_prefix("unsupported: ").unwrap_or(&message).to_string()));
    }

    // Which files the names mean and whether they fit the model is checked when they are
    // applied (crate::lora::apply_request), with the same field paths.
    let mut loras = Vec::new();
    if let Some(lora) = &request.lora {
        let models = lora.models.clone().unwrap_or_default();
        let enabled = lora.enabled.unwrap_or(!models.is_empty());
        for (index, model) in models.iter().enumerate() {
            let name = model.name.clone().unwrap_or_default();
            if name.trim().is_empty() {
                errors.push(FieldError::new(format!("lora.models[{index}].name"), "LoRA ModelPath cannot be empty"));
            }
            let weight = model.weight.unwrap_or(1.0);
            if !(weight >= -limits.max_lora_weight && weight <= limits.max_lora_weight) {
                errors.push(FieldError::new(
                    format!("lora.models[{index}].weight"),
                    format!("LoRA weight {weight} must be between {:.1} and {:.1}", -limits.max_lora_weight, limits.max_lora_weight),
                ));
            }
            if enabled {
                loras.push(LoraRequest { name, weight });
            }
        }
    }
    let controlnets = match &request.controlnet {
        Some(spec) => plan_controlnets(spec, &mut errors, &mut unsupported),
        None => Vec::new(),
    };

    let output = request.output.clone().unwrap_or_default();
    let format_name = output.format.clone().unwrap_or_else(|| "png".into());
    let format = ImageFormat::parse(&format_name).unwrap_or_else(|| {
        errors.push(FieldError::new(
            "output.format",
            format!("unknown output format '{format_name}' (expected png, jpeg or webp)"),
        ));
        ImageFormat::Png
    });
    let quality = output.quality.unwrap_or(DEFAULT_QUALITY as i64);
    if !(1..=100).contains(&quality) {
        errors.push(FieldError::new("output.quality", format!("Invalid quality: {quality}. Must be 1-100")));
    }
    let save_path = output.save_path.clone().unwrap_or_else(|| DEFAULT_SAVE_PATH.into());
    let save_dir = match relative_save_dir(&save_path) {
        Ok(dir) => dir,
        Err(message) => {
            errors.push(FieldError::new("output.save_path", message));
            PathBuf::new()
        }
    };
    let upscale = output.upscale.as_ref().and_then(|upscale| plan_upscale(upscale, &mut errors));

    let batch_size = request.batch.as_ref().and_then(|b| b.size).unwrap_or(1);
    if batch_size < 1 || batch_size > limits.max_batch as i64 {
        errors.push(FieldError::new(
            "batch.size",
            format!("Invalid batch size: {batch_size}. Must be 1-{}", limits.max_batch),
        ));
    }

    if let Some(precision) = &request.precision {
        for (field, value) in [("precision.dtype", &precision.dtype), ("precision.vae_dtype", &precision.vae_dtype)] {
            if let Some(value) = value {
                if !matches!(value.as_str(), "float32" | "float16" | "bfloat16") {
                    errors.push(FieldError::new(field, format!("unknown dtype '{value}' (expected float32, float16 or bfloat16)")));
                }
            }
        }
    }
    let vae = plan_vae(request, &models, &mut errors);

    let rng = match request.rng.as_deref().unwrap_or("torch_cpu") {
        "torch_cpu" => RngKind::TorchCpu,
        other => {
            errors.push(FieldError::new("rng", format!("unknown rng '{other}' (expected torch_cpu)")));
            RngKind::TorchCpu
        }
    };
    let prompt_truncation = match request.prompt_truncation.as_deref().unwrap_or("chunked") {
        "chunked" => PromptTruncation::Chunked,
        "diffusers" => PromptTruncation::Diffusers,
        other => {
            errors.push(FieldError::new(
                "prompt_truncation",
                format!("unknown prompt_truncation '{other}' (expected chunked or diffusers)"),
            ));
            PromptTruncation::Chunked
        }
    };
    // Only chunked prompts have windows and emphasis; diffusers' mode truncates at 77 tokens.
    if prompt_truncation == PromptTruncation::Chunked {
        // Tokens are at least one byte each (most are several): a text longer than this cannot
        // fit the window limit, and is refused before the tokenizer spends seconds on it.
        let max_prompt_bytes = limits.max_prompt_windows as usize * 75 * 64;
        for (field, text) in [("prompt", prompt.as_str()), ("negative_prompt", request.negative_prompt.as_deref().unwrap_or_default())] {
            if text.len() > max_prompt_bytes {
                errors.push(FieldError::new(
                    field,
                    format!("{} bytes is longer than limits.max_prompt_windows ({}) windows of 75 tokens can hold", text.len(), limits.max_prompt_windows),
                ));
            }
            if let Some(weight) = crate::tokenizer::parse_weighted_prompt(text).into_iter().map(|s| s.weight).find(|w| !(w.is_finite() && w.abs() <= MAX_EMPHASIS_WEIGHT)) {
                errors.push(FieldError::new(
                    field,
                    format!("emphasis weight {weight} is out of range: (text:weight) takes a finite weight within ±{MAX_EMPHASIS_WEIGHT}"),
                ));
            }
        }
    }

    let size = [height, width];
    let mut micro = MicroConditioning { original_size: size, crops_coords_top_left: [0, 0], target_size: size };
    for (field, value, slot) in [
        ("original_size", request.original_size, &mut micro.original_size),
        ("crops_coords_top_left", request.crops_coords_top_left, &mut micro.crops_coords_top_left),
        ("target_size", request.target_size, &mut micro.target_size),
    ] {
        if let Some(value) = value {
            if field != "crops_coords_top_left" && (value[0] == 0 || value[1] == 0) {
                errors.push(FieldError::new(field, "sizes must be positive [height, width]"));
            }
            *slot = value;
        }
    }

    let metadata = request.metadata.clone().unwrap_or_default();
    let timeout_s = metadata.timeout;
    if let Some(timeout_s) = timeout_s.filter(|t| !(*t > 0.0 && t.is_finite())) {
        errors.push(FieldError::new("metadata.timeout", format!("Invalid timeout: {timeout_s}. Must be > 0 seconds")));
    }
    if let Some(priority) = &metadata.priority {
        if !matches!(priority.as_str(), "low" | "normal" | "high") {
            errors.push(FieldError::new("metadata.priority", format!("unknown priority '{priority}' (expected low, normal or high)")));
        }
    }
    if let Some(init_image) = &request.init_image {
        if init_image.trim().is_empty() {
            errors.push(FieldError::new("init_image", "init_image must be a path or base64 data when given"));
        }
    }
    if request.worker_type.as_deref().is_some_and(|w| w != "sdxl_worker" && w != "enhanced_sdxl_worker") {
        warnings.push(format!(
            "worker_type '{}' ignored: one pipeline serves every request",
            request.worker_type.as_deref().unwrap_or_default()
        ));
    }

    if !errors.is_empty() {
        errors.extend(unsupported);
        return Err(Error::Validation(errors));
    }
    if !unsupported.is_empty() {
        return Err(Error::UnsupportedFeatures(unsupported));
    }
    Ok(GenerationPlan {
        request_id,
        prompt,
        negative_prompt: request.negative_prompt.clone(),
        base_model,
        refiner,
        vae,
        controlnets,
        upscale,
        steps: steps as u32,
        guidance_scale,
        seed,
        strength,
        width,
        height,
        scheduler,
        scheduler_overrides,
        loras,
        format,
        quality: quality as u8,
        lossless: output.lossless.unwrap_or(false),
        save_dir,
        return_images: output.return_images.unwrap_or(false),
        batch_size: batch_size as u32,
        init_image: request.init_image.clone(),
        micro_conditioning: micro,
        rng,
        prompt_truncation,
        timeout_s,
        max_prompt_windows: limits.max_prompt_windows as usize,
        warnings,
    })
}

fn plan_upscale(upscale: &super::request::UpscaleConfig, errors: &mut Vec<FieldError>) -> Option<UpscalePlan> {
    if !upscale.enabled.unwrap_or(false) {
        return None;
    }
    let mut fail = |name: &str, message: String| errors.push(FieldError::new(format!("output.upscale.{name}"), message));
    let method = match upscale.method.as_deref().unwrap_or("realesrgan") {
        "realesrgan" => UpscaleMethod::RealEsrgan,
        "lanczos" => UpscaleMethod::Lanczos,
        other => {
            fail("method", format!("unknown upscale method '{other}' (expected realesrgan or lanczos)"));
            UpscaleMethod::RealEsrgan
        }
    };
    let factor = upscale.factor.unwrap_or(4);
    if factor != 2 && factor != 4 {
        fail("factor", format!("Invalid factor: {factor}. Must be 2 or 4"));
    }
    let tile = upscale.tile.unwrap_or(DEFAULT_UPSCALE_TILE);
    if tile != 0 && !(32..=4096).contains(&tile) {
        fail("tile", format!("Invalid tile: {tile}. Must be 0 (no tiling) or 32-4096 pixels"));
    }
    let tile_pad = upscale.tile_pad.unwrap_or(DEFAULT_UPSCALE_TILE_PAD);
    if !(0..=256).contains(&tile_pad) {
        fail("tile_pad", format!("Invalid tile_pad: {tile_pad}. Must be 0-256 pixels"));
    }
    if upscale.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
        fail("model", "must be an upscaler path or name when given".into());
    }
    Some(UpscalePlan {
        method,
        factor: factor.clamp(1, 4) as u32,
        model: upscale.model.clone().filter(|m| !m.trim().is_empty()),
        tile: tile.clamp(0, 4096) as u32,
        tile_pad: tile_pad.clamp(0, 256) as u32,
    })
}

fn plan_controlnets(spec: &super::request::ControlNetSpec, errors: &mut Vec<FieldError>, unsupported: &mut Vec<FieldError>) -> Vec<ControlNetPlan> {
    let many = matches!(spec, super::request::ControlNetSpec::Many(_));
    let mut plans = Vec::new();
    for (index, entry) in spec.entries().iter().enumerate() {
        let field = if many { format!("controlnet[{index}]") } else { "controlnet".to_string() };
        // An entry is on when it says so, or (saying nothing) when it brings a control image.
        if !entry.enabled.unwrap_or(entry.control_image.is_some()) {
            continue;
        }
        let mut fail = |name: &str, message: String| errors.push(FieldError::new(format!("{field}.{name}"), message));
        let kind_name = entry.kind.clone().unwrap_or_else(|| "canny".into());
        let kind = ControlKind::parse(&kind_name).unwrap_or_else(|| {
            fail("type", format!("unknown ControlNet type '{kind_name}' (expected canny, depth, pose, scribble, normal, seg or lineart)"));
            ControlKind::Canny
        });
        let conditioning_scale = entry.conditioning_scale.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&conditioning_scale) {
            fail("conditioning_scale", format!("Invalid conditioning scale: {conditioning_scale}. Must be 0-2"));
        }
        let control_image = entry.control_image.clone().unwrap_or_default();
        if control_image.trim().is_empty() {
            fail("control_image", "a ControlNet needs a control image (a path or base64 data)".into());
        }
        let (guidance_start, guidance_end) = (entry.guidance_start.unwrap_or(0.0), entry.guidance_end.unwrap_or(1.0));
        for (name, value) in [("guidance_start", guidance_start), ("guidance_end", guidance_end)] {
            if !(0.0..=1.0).contains(&value) {
                fail(name, format!("Invalid {name}: {value}. Must be 0-1"));
            }
        }
        if guidance_start >= guidance_end {
            fail("guidance_start", format!("guidance_start {guidance_start} must be below guidance_end {guidance_end}"));
        }
        if entry.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            fail("model", "must be a ControlNet path or name when given".into());
        }
        let preprocessor = entry.preprocessor.clone().unwrap_or_default();
        let mut canny = None;
        if preprocessor.enabled.unwrap_or(false) {
            if kind != ControlKind::Canny {
                unsupported.push(FieldError::new(
                    format!("{field}.preprocessor"),
                    format!("the {} preprocessor needs a model this build does not ship; send an already-processed control image with preprocessor.enabled false", kind.name()),
                ));
            } else {
                let (low, high) = (preprocessor.low_threshold.unwrap_or(DEFAULT_CANNY_LOW), preprocessor.high_threshold.unwrap_or(DEFAULT_CANNY_HIGH));
                if !(low.is_finite() && high.is_finite() && low >= 0.0 && low <= high && high <= 10_000.0) {
                    fail("preprocessor.low_threshold", format!("thresholds {low} / {high} must satisfy 0 <= low_threshold <= high_threshold <= 10000"));
                }
                let resolution = match preprocessor.resolution {
                    None => None,
                    Some(r) if (64..=4096).contains(&r) => Some(r as u32),
                    Some(r) => {
                        fail("preprocessor.resolution", format!("Invalid resolution: {r}. Must be 64-4096"));
                        None
                    }
                };
                canny = Some(CannySettings { low_threshold: low as f32, high_threshold: high as f32, resolution });
            }
        }
        plans.push(ControlNetPlan {
            field,
            model: entry.model.clone().filter(|m| !m.trim().is_empty()),
            kind,
            conditioning_scale,
            control_image,
            guidance_start,
            guidance_end,
            canny,
        });
    }
    plans
}

fn plan_refiner(request: &GenerationRequest, models: &super::request::Models, errors: &mut Vec<FieldError>, warnings: &mut Vec<String>) -> Option<RefinerPlan> {
    let options = request.refiner.clone().unwrap_or_default();
    let Some(model) = models.refiner.clone().filter(|r| !r.trim().is_empty()) else {
        if request.refiner.is_some() {
            warnings.push("refiner options ignored: the request names no models.refiner".into());
        }
        return None;
    };
    let mode = match options.mode.as_deref().unwrap_or("ensemble") {
        "ensemble" => RefinerMode::Ensemble,
        "img2img" => RefinerMode::Img2Img,
        other => {
            errors.push(FieldError::new("refiner.mode", format!("unknown refiner mode '{other}' (expected ensemble or img2img)")));
            RefinerMode::Ensemble
        }
    };
    let denoising_start = options.denoising_start.unwrap_or(DEFAULT_REFINER_START);
    if !(denoising_start > 0.0 && denoising_start < 1.0) {
        errors.push(FieldError::new("refiner.denoising_start", format!("Invalid denoising_start: {denoising_start}. Must be in (0, 1)")));
    }
    let strength = options.strength.unwrap_or(DEFAULT_REFINER_STRENGTH);
    if !(strength > 0.0 && strength <= 1.0) {
        errors.push(FieldError::new("refiner.strength", format!("Invalid strength: {strength}. Must be in (0, 1]")));
    }
    let aesthetic_score = options.aesthetic_score.unwrap_or(DEFAULT_AESTHETIC_SCORE);
    let negative_aesthetic_score = options.negative_aesthetic_score.unwrap_or(DEFAULT_NEGATIVE_AESTHETIC_SCORE);
    for (field, value) in [("refiner.aesthetic_score", aesthetic_score), ("refiner.negative_aesthetic_score", negative_aesthetic_score)] {
        // The score is a micro-conditioning input like a size: finite, and within what the
        // refiner was trained on (LAION aesthetic scores run 0..10).
        if !(value.is_finite() && (0.0..=10.0).contains(&value)) {
            errors.push(FieldError::new(field, format!("Invalid score: {value}. Must be 0-10")));
        }
    }
    Some(RefinerPlan { model, mode, denoising_start, strength, aesthetic_score, negative_aesthetic_score })
}

fn plan_vae(request: &GenerationRequest, models: &super::request::Models, errors: &mut Vec<FieldError>) -> VaePlan {
    use super::request::BoolOrAuto;
    let precision = request.precision.clone().unwrap_or_default();
    let tiling = match &precision.vae_tiling {
        None => TilingChoice::Auto,
        Some(BoolOrAuto::Bool(true)) => TilingChoice::On,
        Some(BoolOrAuto::Bool(false)) => TilingChoice::Off,
        Some(BoolOrAuto::Text(text)) if text == "auto" => TilingChoice::Auto,
        Some(BoolOrAuto::Text(text)) => {
            errors.push(FieldError::new("precision.vae_tiling", format!("'{text}' is not true, false or \"auto\"")));
            TilingChoice::Auto
        }
    };
    let tile_size = match precision.vae_tile_size {
        None => None,
        Some(size) if (64..=4096).contains(&size) && size % 8 == 0 => Some(size as u32),
        Some(size) => {
            errors.push(FieldError::new("precision.vae_tile_size", format!("Invalid tile size: {size}. Must be 64-4096 pixels and divisible by 8")));
            None
        }
    };
    let tile_overlap = precision.vae_tile_overlap.unwrap_or(DEFAULT_TILE_OVERLAP);
    if !(0.0..0.5).contains(&tile_overlap) {
        errors.push(FieldError::new("precision.vae_tile_overlap", format!("Invalid tile overlap: {tile_overlap}. Must be in [0, 0.5)")));
    } else if let Some(size) = tile_size {
        let tiling = crate::models::VaeTiling { tile_size: size as usize, overlap: tile_overlap };
        if let Err(message) = tiling.check(8) {
            errors.push(FieldError::new("precision.vae_tile_size", message));
        }
    }
    VaePlan {
        model: models.vae.clone().filter(|v| !v.trim().is_empty()),
        dtype: precision.vae_dtype.clone(),
        tiling,
        tile_size,
        tile_overlap,
    }
}

fn check_dimension(field: &str, value: Option<i64>, limits: &Limits, errors: &mut Vec<FieldError>) -> u32 {
    let value = value.unwrap_or(DEFAULT_SIZE as i64);
    let in_range = value >= limits.min_size as i64 && value <= limits.max_size as i64;
    if !in_range || value % limits.size_multiple as i64 != 0 {
        let name = if field.ends_with("width") { "Width" } else { "Height" };
        errors.push(FieldError::new(
            field,
            format!(
                "{name} must be between {} and {} and divisible by {} (got {value})",
                limits.min_size, limits.max_size, limits.size_multiple
            ),
        ));
        return limits.min_size;
    }
    value as u32
}

/// The seed saved under a relative `save_path`; we keep every file under the engine's
/// output_dir, so absolute paths and `..` are refused rather than resolved.
fn relative_save_dir(save_path: &str) -> std::result::Result<PathBuf, String> {
    let path = Path::new(save_path);
    if save_path.chars().any(char::is_control) {
        return Err(format!("save_path {save_path:?} contains control characters"));
    }
    if path.is_absolute() || save_path.starts_with('\\') || save_path.contains(':') {
        return Err(format!("save_path '{save_path}' must be relative to the engine's output_dir"));
    }
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            _ => return Err(format!("save_path '{save_path}' must not leave the engine's output_dir")),
        }
    }
    Ok(clean)
}
