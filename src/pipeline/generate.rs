//! txt2img and img2img (diffusers `StableDiffusionXLPipeline.__call__` and
//! `StableDiffusionXLImg2ImgPipeline.__call__`): conditioning, initial latents, the
//! denoising loop (once, for every sampler and for both base and refiner), the refiner
//! hand-off, VAE decode.

use std::time::Instant;

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use super::noise::PerImageNoise;
use super::progress::{ProgressEvent, ProgressObserver, Stage};
use super::text_conditioning::{encode_conditioning, Conditioning};
use crate::api::validate::{GenerationPlan, RefinerMode, RefinerPlan};
use crate::api::StageTimes;
use crate::error::{Error, Result};
use crate::loader::vae::VaeModel;
use crate::loader::SdxlModel;
use crate::models::offload::{OnDevice, Placement};
use crate::models::unet_2d_condition::AdditionalResiduals;
use crate::models::{AutoencoderKL, ControlNetModel, UNetConditioning, VaeTiling};
use crate::rng::NormalKernel;
use crate::schedulers::{build_scheduler, Scheduler};

pub struct GeneratedBatch {
    pub images: Vec<image::RgbImage>,
    pub seeds: Vec<u64>,
    pub stage_times: StageTimes,
    pub model_calls: u32,
    /// Denoising steps actually run by the base (img2img runs `steps × strength` of them,
    /// the ensemble's base stops at `denoising_start`).
    pub steps_run: u32,
    /// Steps the refiner ran (0 without one).
    pub refiner_steps_run: u32,
    /// What the run did differently from what was asked (a half-precision decode redone in float32).
    pub warnings: Vec<String>,
}

/// Everything the pipeline computes on the way, for parity tests against diffusers.
#[derive(Default)]
pub struct Intermediates {
    pub prompt_embeds: Option<Tensor>,
    pub negative_prompt_embeds: Option<Tensor>,
    pub pooled_prompt_embeds: Option<Tensor>,
    pub negative_pooled_prompt_embeds: Option<Tensor>,
    pub add_time_ids: Option<Tensor>,
    pub initial_noise: Option<Tensor>,
    pub image_latents: Option<Tensor>,
    pub latents_after_first_step: Option<Tensor>,
    pub final_latents: Option<Tensor>,
    pub timesteps: Vec<f64>,
    /// The refiner stage: what the base handed over, its conditioning and its steps.
    pub handover_latents: Option<Tensor>,
    pub refiner: Option<Box<Intermediates>>,
}

pub struct RunContext<'a> {
    pub device: &'a Device,
    pub noise_kernel: NormalKernel,
    pub progress: &'a mut dyn ProgressObserver,
    pub started: Instant,
}

impl RunContext<'_> {
    fn report(&mut self, stage: Stage, image_index: u32, step: u32, total_steps: u32, model_calls: u32) -> Result<()> {
        let event = ProgressEvent { stage, image_index, step, total_steps, model_calls, elapsed_ms: self.started.elapsed().as_millis() as u64 };
        if self.progress.on_progress(&event) {
            Ok(())
        } else {
            Err(Error::Cancelled)
        }
    }
}

/// The VAE a request encodes and decodes with: the base model's own, or `models.vae`, in the
/// dtype the request asked for.
pub struct VaeChoice<'a> {
    pub network: &'a Placement<AutoencoderKL>,
    pub dtype: DType,
    /// Some: decode (and encode) tile by tile when the image is larger than one tile.
    pub tiling: Option<VaeTiling>,
    /// The same VAE in float32, for a half-precision pass that overflowed (loaded on demand).
    pub float32: Option<&'a dyn Fn() -> Result<std::sync::Arc<VaeModel>>>,
}

impl<'a> VaeChoice<'a> {
    /// The base model's own VAE as it was loaded, untiled.
    pub fn of(model: &'a SdxlModel) -> Self {
        Self { network: &model.vae, dtype: model.vae_dtype, tiling: None, float32: None }
    }
}

/// One ControlNet of a request (diffusers `StableDiffusionXLControlNetPipeline`, guess mode
/// off): its network, its control image, its scale and the part of the steps it guides.
pub struct ControlGuidance<'a> {
    pub network: &'a Placement<ControlNetModel>,
    /// (1, 3, H, W) float32 in [0, 1] at the output size (`image::control::control_tensor`).
    pub image: Tensor,
    pub conditioning_scale: f64,
    /// diffusers' `control_guidance_start` / `_end`: fractions of the denoising steps.
    pub guidance_start: f64,
    pub guidance_end: f64,
}

/// The networks one request runs.
pub struct PipelineModels<'a> {
    pub base: &'a SdxlModel,
    /// Required when the plan names a refiner.
    pub refiner: Option<&'a SdxlModel>,
    pub vae: VaeChoice<'a>,
    /// Their residuals add up (diffusers' `MultiControlNetModel`); they guide the base only.
    pub controlnets: Vec<ControlGuidance<'a>>,
}

impl<'a> PipelineModels<'a> {
    pub fn base_only(model: &'a SdxlModel) -> Self {
        Self { base: model, refiner: None, vae: VaeChoice::of(model), controlnets: Vec::new() }
    }
}

/// A ControlNet on the device for the whole loop, its control image in the UNet's rows.
struct ActiveControl<'a> {
    network: OnDevice<'a, ControlNetModel>,
    image: Tensor,
    guidance: &'a ControlGuidance<'a>,
}

impl ActiveControl<'_> {
    /// diffusers' `controlnet_keep` for step `position` of `steps`: 1 inside
    /// [guidance_start, guidance_end] of the steps, 0 outside.
    fn keep(&self, position: usize, steps: usize) -> f64 {
        let (before, after) = (position as f64 / steps as f64, (position + 1) as f64 / steps as f64);
        if before < self.guidance.guidance_start || after > self.guidance.guidance_end {
            0.0
        } else {
            1.0
        }
    }
}

/// Brings each ControlNet onto the device and lays its control image out as the UNet's rows:
/// the image per batch entry, twice under CFG.
fn activate_controls<'a>(controls: &'a [ControlGuidance<'a>], plan: &GenerationPlan, dtype: DType) -> Result<Vec<ActiveControl<'a>>> {
    let batch = plan.batch_size as usize;
    let rows = if plan.guidance_scale > 1.0 { 2 * batch } else { batch };
    controls
        .iter()
        .map(|guidance| {
            let image = guidance.image.repeat((rows, 1, 1, 1))?.to_dtype(dtype)?;
            Ok(ActiveControl { network: guidance.network.on_device()?, image, guidance })
        })
        .collect()
}

/// The first denoising index img2img starts at (`get_timesteps` in diffusers).
pub fn img2img_start_index(steps: usize, strength: f64, order: usize) -> usize {
    let init_timestep = ((steps as f64 * strength) as usize).min(steps);
    steps.saturating_sub(init_timestep) * order
}

/// diffusers' `discrete_timestep_cutoff`: the training timestep at `fraction` of the schedule.
fn timestep_cutoff(fraction: f64, num_train_timesteps: usize) -> f64 {
    (num_train_timesteps as f64 - fraction * num_train_timesteps as f64).round()
}

/// Where the ensemble's base stops (`denoising_end` in `StableDiffusionXLPipeline`): it keeps
/// the timesteps at or above the cutoff.
pub fn denoising_end_index(timesteps: &[f64], denoising_end: f64, num_train_timesteps: usize) -> usize {
    let cutoff = timestep_cutoff(denoising_end, num_train_timesteps);
    timesteps.iter().filter(|&&t| t >= cutoff).count()
}

/// Where the ensemble's refiner starts (`get_timesteps` with `denoising_start` in
/// `StableDiffusionXLImg2ImgPipeline`): the timesteps below the cutoff, plus one for a
/// second-order scheduler whose count is even (so a step's two halves stay together).
pub fn denoising_start_index(timesteps: &[f64], denoising_start: f64, num_train_timesteps: usize, order: usize) -> usize {
    let cutoff = timestep_cutoff(denoising_start, num_train_timesteps);
    let mut remaining = timesteps.iter().filter(|&&t| t < cutoff).count();
    if order == 2 && remaining % 2 == 0 {
        remaining += 1;
    }
    timesteps.len().saturating_sub(remaining)
}

/// Text embeddings, pooled embeddings and time ids of one stage, rows [negative; positive]
/// under CFG, repeated per image.
struct StageConditioning {
    hidden_states: Tensor,
    pooled: Tensor,
    time_ids: Tensor,
}

/// Which micro-conditioning the stage's UNet takes (diffusers `_get_add_time_ids`).
enum TimeIds {
    /// original size, crop top-left, target size.
    Sizes,
    /// original size, crop top-left, aesthetic score (positive rows) / negative score.
    Aesthetic { score: f64, negative_score: f64 },
}

fn time_ids(plan: &GenerationPlan, kind: &TimeIds, batch: usize, guidance: bool, device: &Device) -> Result<Tensor> {
    let micro = &plan.micro_conditioning;
    let row = |last: Vec<f64>| -> Vec<f32> {
        let mut ids = vec![micro.original_size[0] as f64, micro.original_size[1] as f64, micro.crops_coords_top_left[0] as f64, micro.crops_coords_top_left[1] as f64];
        ids.extend(last);
        ids.into_iter().map(|v| v as f32).collect()
    };
    let (positive, negative) = match kind {
        TimeIds::Sizes => {
            let ids = row(vec![micro.target_size[0] as f64, micro.target_size[1] as f64]);
            (ids.clone(), ids)
        }
        TimeIds::Aesthetic { score, negative_score } => (row(vec![*score]), row(vec![*negative_score])),
    };
    let repeat = |ids: &[f32]| -> Result<Tensor> { Ok(Tensor::new(ids, device)?.unsqueeze(0)?.repeat((batch, 1))?) };
    if guidance {
        Ok(Tensor::cat(&[&repeat(&negative)?, &repeat(&positive)?], 0)?)
    } else {
        repeat(&positive)
    }
}

fn condition(model: &SdxlModel, plan: &GenerationPlan, kind: TimeIds, device: &Device, record: Option<&mut Intermediates>) -> Result<StageConditioning> {
    let batch = plan.batch_size as usize;
    let guidance = plan.guidance_scale > 1.0;
    let Conditioning { positive, negative } =
        encode_conditioning(model, &plan.prompt, plan.negative_prompt.as_deref(), guidance, plan.prompt_truncation, plan.max_prompt_windows, device)?;
    let repeat = |t: &Tensor| -> Result<Tensor> {
        let mut dims = vec![batch];
        dims.extend(std::iter::repeat(1).take(t.rank() - 1));
        Ok(t.repeat(dims.as_slice())?)
    };
    let mut hidden_states = repeat(&positive.hidden_states)?;
    let mut pooled = repeat(&positive.pooled)?;
    if let Some(negative) = &negative {
        hidden_states = Tensor::cat(&[&repeat(&negative.hidden_states)?, &hidden_states], 0)?;
        pooled = Tensor::cat(&[&repeat(&negative.pooled)?, &pooled], 0)?;
    }
    let time_ids = time_ids(plan, &kind, batch, guidance, device)?;
    if let Some(record) = record {
        let rows = time_ids.dim(0)?;
        record.prompt_embeds = Some(positive.hidden_states.clone());
        record.pooled_prompt_embeds = Some(positive.pooled.clone());
        record.negative_prompt_embeds = negative.as_ref().map(|n| n.hidden_states.clone());
        record.negative_pooled_prompt_embeds = negative.as_ref().map(|n| n.pooled.clone());
        record.add_time_ids = Some(time_ids.narrow(0, rows - batch, batch)?);
    }
    Ok(StageConditioning { hidden_states: hidden_states.to_dtype(model.dtype)?, pooled: pooled.to_dtype(model.dtype)?, time_ids })
}

/// One stage of denoising: a UNet, its conditioning and its scheduler over a range of the
/// scheduler's timesteps.
struct DenoisingStage<'a> {
    model: &'a SdxlModel,
    conditioning: &'a StageConditioning,
    stage: Stage,
    controls: &'a [ActiveControl<'a>],
}

impl DenoisingStage<'_> {
    /// Runs `range` of `scheduler`'s timesteps from `latents`. Returns the latents, the UNet
    /// calls and the steps made.
    fn run(
        &self,
        plan: &GenerationPlan,
        scheduler: &mut dyn Scheduler,
        range: Range<usize>,
        mut latents: Tensor,
        noise: &mut PerImageNoise,
        ctx: &mut RunContext,
        mut record: Option<&mut Intermediates>,
    ) -> Result<(Tensor, u32, u32)> {
        let batch = plan.batch_size as usize;
        let guidance = plan.guidance_scale > 1.0;
        let order = scheduler.order();
        let timesteps: Vec<f64> = scheduler.timesteps()[range.clone()].to_vec();
        if let Some(record) = record.as_deref_mut() {
            record.timesteps = timesteps.clone();
        }
        let total_steps = range.len().div_ceil(order) as u32;
        let conditioning = UNetConditioning {
            encoder_hidden_states: &self.conditioning.hidden_states,
            text_embeds: &self.conditioning.pooled,
            time_ids: &self.conditioning.time_ids,
        };
        let mut model_calls = 0u32;
        for (index, &timestep) in range.clone().zip(&timesteps) {
            ctx.report(self.stage, 0, (model_calls / order as u32).min(total_steps), total_steps, model_calls)?;
            let model_input = if guidance { Tensor::cat(&[&latents, &latents], 0)? } else { latents.clone() };
            let model_input = scheduler.scale_model_input(&model_input, index)?.to_dtype(self.model.dtype)?;
            // The ControlNets see exactly the UNet's inputs; one whose share of the steps is over
            // (or whose scale is 0) adds nothing, so it does not run.
            let mut residuals: Option<AdditionalResiduals> = None;
            for control in self.controls {
                let scale = control.guidance.conditioning_scale * control.keep(index - range.start, range.len());
                if scale == 0.0 {
                    continue;
                }
                let these = control.network.forward(&model_input, timestep, &conditioning, &control.image, scale)?;
                residuals = Some(match residuals {
                    Some(sum) => sum.add(&these)?,
                    None => these,
                });
            }
            let noise_pred = self.model.unet.forward_with_additional_residuals(&model_input, timestep, &conditioning, residuals.as_ref())?.to_dtype(DType::F32)?;
            model_calls += 1;
            let noise_pred = if guidance {
                let uncond = noise_pred.narrow(0, 0, batch)?;
                let text = noise_pred.narrow(0, batch, batch)?;
                (&uncond + ((text - &uncond)? * plan.guidance_scale)?)?
            } else {
                noise_pred
            };
            latents = scheduler.step(&noise_pred, index, &latents, noise)?;
            if index == range.start {
                if let Some(record) = record.as_deref_mut() {
                    record.latents_after_first_step = Some(latents.clone());
                }
            }
        }
        ctx.report(self.stage, 0, total_steps, total_steps, model_calls)?;
        if let Some(record) = record.as_deref_mut() {
            record.final_latents = Some(latents.clone());
        }
        Ok((latents, model_calls, total_steps))
    }
}

pub fn generate(
    models: &PipelineModels,
    plan: &GenerationPlan,
    init_image: Option<&image::RgbImage>,
    ctx: &mut RunContext,
    mut intermediates: Option<&mut Intermediates>,
) -> Result<GeneratedBatch> {
    let model = models.base;
    let device = ctx.device;
    let batch = plan.batch_size as usize;
    let mut stage_times = StageTimes::default();
    let mut warnings = Vec::new();
    let vae_config = models.vae.network.network().config().clone();
    let factor = vae_config.downscale_factor();
    let (latent_h, latent_w) = (plan.height as usize / factor, plan.width as usize / factor);
    let latent_channels = model.unet.config().in_channels;

    // Text conditioning, repeated per image; CFG puts the negative half first.
    let stage_start = Instant::now();
    ctx.report(Stage::Encode, 0, 0, plan.steps, 0)?;
    let base_conditioning = condition(model, plan, TimeIds::Sizes, device, intermediates.as_deref_mut())?;
    stage_times.text_encode = stage_start.elapsed().as_secs_f64();

    // Scheduler and initial latents.
    let overrides = plan.scheduler_overrides.clone();
    let mut scheduler: Box<dyn Scheduler> = build_scheduler(plan.scheduler, &model.scheduler_config, &overrides, plan.steps as usize)?;
    let seeds: Vec<u64> = (0..batch as u64).map(|i| plan.seed.wrapping_add(i)).collect();
    let mut noise = PerImageNoise::new(&seeds, ctx.noise_kernel, device);
    let latent_dims = [latent_channels, latent_h, latent_w];
    let (latents, start_index) = match init_image {
        None => {
            let initial = noise.randn(&latent_dims)?;
            if let Some(record) = intermediates.as_deref_mut() {
                record.initial_noise = Some(initial.clone());
            }
            ((initial * scheduler.init_noise_sigma())?, 0)
        }
        Some(image) => {
            let encode_start = Instant::now();
            let pixels = crate::image::rgb_to_tensor(image, device)?;
            let (mean, std) = encode_image(&models.vae, &pixels, &mut warnings)?;
            // Each image's stream first samples its latent, then draws its noise (diffusers' order).
            let sample_noise = noise.randn(&latent_dims)?;
            let mut image_latents = Vec::with_capacity(batch);
            for i in 0..batch {
                image_latents.push((&mean + (&std * sample_noise.narrow(0, i, 1)?)?)?);
            }
            let image_latents = (Tensor::cat(&image_latents, 0)? * vae_config.scaling_factor)?;
            let start_noise = noise.randn(&latent_dims)?;
            let start = img2img_start_index(plan.steps as usize, plan.strength, scheduler.order());
            if start >= scheduler.timesteps().len() {
                return Err(Error::validation("hyperparameters.strength", "strength leaves no denoising step"));
            }
            let noised = scheduler.add_noise(&image_latents, &start_noise, start)?;
            if let Some(record) = intermediates.as_deref_mut() {
                record.image_latents = Some(image_latents.clone());
                record.initial_noise = Some(noised.clone());
            }
            stage_times.text_encode += encode_start.elapsed().as_secs_f64();
            (noised, start)
        }
    };

    // The base's denoising: all of it, or up to the ensemble's hand-over point.
    let denoise_start = Instant::now();
    let end_index = match &plan.refiner {
        Some(RefinerPlan { mode: RefinerMode::Ensemble, denoising_start, .. }) => {
            denoising_end_index(scheduler.timesteps(), *denoising_start, model.scheduler_config.num_train_timesteps)
        }
        _ => scheduler.timesteps().len(),
    };
    if end_index <= start_index {
        return Err(Error::validation("refiner.denoising_start", "the base gets no denoising step before the hand-over; raise denoising_start or the steps"));
    }
    let controls = activate_controls(&models.controlnets, plan, model.dtype)?;
    let base_stage = DenoisingStage { model, conditioning: &base_conditioning, stage: Stage::Denoise, controls: &controls };
    let (mut latents, mut model_calls, steps_run) =
        base_stage.run(plan, scheduler.as_mut(), start_index..end_index, latents, &mut noise, ctx, intermediates.as_deref_mut())?;
    drop(controls);
    stage_times.denoise = denoise_start.elapsed().as_secs_f64();

    // The refiner finishes from the base's latents (never decoded in between).
    let mut refiner_steps_run = 0;
    if let Some(refiner_plan) = &plan.refiner {
        let refiner = models.refiner.ok_or_else(|| Error::Internal("the plan names a refiner the engine did not load".into()))?;
        let refine_start = Instant::now();
        let mut record = intermediates.as_deref_mut().map(|record| {
            record.handover_latents = Some(latents.clone());
            record.refiner.insert(Box::default()).as_mut()
        });
        ctx.report(Stage::Refine, 0, 0, plan.steps, model_calls)?;
        let aesthetic = TimeIds::Aesthetic { score: refiner_plan.aesthetic_score, negative_score: refiner_plan.negative_aesthetic_score };
        let kind = if refiner.requires_aesthetics_score { aesthetic } else { TimeIds::Sizes };
        let refiner_conditioning = condition(refiner, plan, kind, device, record.as_deref_mut())?;
        // Its own scheduler instance, built from the same settings over the same step count.
        let mut refiner_scheduler = build_scheduler(plan.scheduler, &refiner.scheduler_config, &overrides, plan.steps as usize)?;
        let order = refiner_scheduler.order();
        let start = match refiner_plan.mode {
            RefinerMode::Ensemble => {
                denoising_start_index(refiner_scheduler.timesteps(), refiner_plan.denoising_start, refiner.scheduler_config.num_train_timesteps, order)
            }
            RefinerMode::Img2Img => img2img_start_index(plan.steps as usize, refiner_plan.strength, order),
        };
        let total = refiner_scheduler.timesteps().len();
        if start >= total {
            let field = if refiner_plan.mode == RefinerMode::Ensemble { "refiner.denoising_start" } else { "refiner.strength" };
            return Err(Error::validation(field, "leaves the refiner no denoising step; lower denoising_start or raise strength or the steps"));
        }
        if refiner_plan.mode == RefinerMode::Img2Img {
            // diffusers' img2img given latents: no VAE encode, fresh noise at the start timestep.
            let start_noise = noise.randn(&latent_dims)?;
            latents = refiner_scheduler.add_noise(&latents, &start_noise, start)?;
            if let Some(record) = record.as_deref_mut() {
                record.initial_noise = Some(latents.clone());
            }
        }
        let refiner_stage = DenoisingStage { model: refiner, conditioning: &refiner_conditioning, stage: Stage::Refine, controls: &[] };
        let (refined, calls, steps) = refiner_stage.run(plan, refiner_scheduler.as_mut(), start..total, latents, &mut noise, ctx, record)?;
        latents = refined;
        model_calls += calls;
        refiner_steps_run = steps;
        stage_times.refine = refine_start.elapsed().as_secs_f64();
    }

    // Decode one image at a time: the VAE at full resolution dominates peak memory.
    let decode_start = Instant::now();
    let mut images = Vec::with_capacity(batch);
    let total_steps = steps_run + refiner_steps_run;
    let mut decoder = Decoder::new(&models.vae)?;
    for i in 0..batch {
        ctx.report(Stage::Decode, i as u32, total_steps, total_steps, model_calls)?;
        let latent = (latents.narrow(0, i, 1)? / vae_config.scaling_factor)?;
        let decoded = decoder.decode(&latent, i, &mut warnings)?;
        images.push(crate::image::tensor_to_rgb(&decoded)?);
    }
    drop(decoder);
    stage_times.decode = decode_start.elapsed().as_secs_f64();
    Ok(GeneratedBatch { images, seeds, stage_times, model_calls, steps_run, refiner_steps_run, warnings })
}

/// Decodes unscaled latents (batch, channels, h, w) one image at a time as a request does:
/// tiled when the choice says so, redone in float32 when half precision overflows. Returns
/// float32 images in [-1, 1] (not clamped).
pub fn decode_latents(vae: &VaeChoice, latents: &Tensor, warnings: &mut Vec<String>) -> Result<Vec<Tensor>> {
    let mut decoder = Decoder::new(vae)?;
    (0..latents.dim(0)?).map(|i| Ok(decoder.decode(&latents.narrow(0, i, 1)?, i, warnings)?.to_dtype(DType::F32)?)).collect()
}

/// A half-precision pass gave NaN or infinity somewhere (it overflowed).
fn overflowed(output: &Tensor) -> Result<bool> {
    Ok(!output.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?.is_finite())
}

fn dtype_label(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Encodes pixels in [-1, 1] to the latent distribution's (mean, std) in float32, redone in
/// float32 when a half-precision encode overflows.
fn encode_image(vae: &VaeChoice, pixels: &Tensor, warnings: &mut Vec<String>) -> Result<(Tensor, Tensor)> {
    let encode = |network: &AutoencoderKL, dtype: DType| -> Result<(Tensor, Tensor)> {
        let pixels = pixels.to_dtype(dtype)?;
        let distribution = match &vae.tiling {
            Some(tiling) => network.tiled_encode(&pixels, tiling)?,
            None => network.encode(&pixels)?,
        };
        Ok((distribution.mean.to_dtype(DType::F32)?, distribution.std.to_dtype(DType::F32)?))
    };
    let (mean, std) = encode(&*vae.network.on_device()?, vae.dtype)?;
    if vae.dtype == DType::F32 || !(overflowed(&mean)? || overflowed(&std)?) {
        return Ok((mean, std));
    }
    let float32 = vae.float32.ok_or_else(|| Error::Internal(format!("the {} VAE encode overflowed and no float32 VAE is at hand", dtype_label(vae.dtype))))?()?;
    warnings.push(format!("the {} VAE encode of init_image overflowed (NaN/inf); it was redone in float32", dtype_label(vae.dtype)));
    let network = float32.network.on_device()?;
    encode(&network, DType::F32)
}

/// Decodes latents image by image; a half-precision decode that overflows is redone in
/// float32 (and the rest of the batch decodes in float32), with a warning.
struct Decoder<'a> {
    choice: &'a VaeChoice<'a>,
    /// On the device for the whole batch (an offloaded VAE is uploaded once).
    network: crate::models::offload::OnDevice<'a, AutoencoderKL>,
    /// The float32 VAE once a half-precision decode has overflowed.
    float32: Option<std::sync::Arc<VaeModel>>,
}

impl<'a> Decoder<'a> {
    fn new(choice: &'a VaeChoice<'a>) -> Result<Self> {
        Ok(Self { choice, network: choice.network.on_device()?, float32: None })
    }

    fn run(network: &AutoencoderKL, latent: &Tensor, dtype: DType, tiling: Option<&VaeTiling>) -> Result<Tensor> {
        let latent = latent.to_dtype(dtype)?;
        match tiling {
            Some(tiling) => network.tiled_decode(&latent, tiling),
            None => network.decode(&latent),
        }
    }

    fn decode(&mut self, latent: &Tensor, index: usize, warnings: &mut Vec<String>) -> Result<Tensor> {
        let tiling = self.choice.tiling.as_ref();
        if let Some(float32) = &self.float32 {
            return Self::run(&*float32.network.on_device()?, latent, DType::F32, tiling);
        }
        let decoded = Self::run(&self.network, latent, self.choice.dtype, tiling)?;
        if self.choice.dtype == DType::F32 || !overflowed(&decoded)? {
            return Ok(decoded);
        }
        let load = self.choice.float32.ok_or_else(|| Error::Internal(format!("the {} VAE decode overflowed and no float32 VAE is at hand", dtype_label(self.choice.dtype))))?;
        let float32 = load()?;
        warnings.push(format!(
            "the {} VAE decode of image {index} overflowed (NaN/inf); it and the rest of the batch were decoded in float32 (use a VAE made for half precision, such as sdxl-vae-fp16-fix, or precision.vae_dtype float32)",
            dtype_label(self.choice.dtype)
        ));
        let decoded = Self::run(&*float32.network.on_device()?, latent, DType::F32, tiling)?;
        self.float32 = Some(float32);
        Ok(decoded)
    }
}
