//! txt2img and img2img (diffusers `StableDiffusionXLPipeline.__call__` and
//! `StableDiffusionXLImg2ImgPipeline.__call__`): conditioning, initial latents, the
//! denoising loop (once, for every sampler), VAE decode.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::noise::PerImageNoise;
use super::progress::{ProgressEvent, ProgressObserver, Stage};
use super::text_conditioning::{encode_conditioning, Conditioning};
use crate::api::validate::GenerationPlan;
use crate::api::StageTimes;
use crate::error::{Error, Result};
use crate::loader::SdxlModel;
use crate::models::UNetConditioning;
use crate::rng::NormalKernel;
use crate::schedulers::{build_scheduler, Scheduler};

pub struct GeneratedBatch {
    pub images: Vec<image::RgbImage>,
    pub seeds: Vec<u64>,
    pub stage_times: StageTimes,
    pub model_calls: u32,
    /// Denoising steps actually run (img2img runs `steps × strength` of them).
    pub steps_run: u32,
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

/// The first denoising index img2img starts at (`get_timesteps` in diffusers).
pub fn img2img_start_index(steps: usize, strength: f64, order: usize) -> usize {
    let init_timestep = ((steps as f64 * strength) as usize).min(steps);
    steps.saturating_sub(init_timestep) * order
}

fn time_ids(plan: &GenerationPlan, rows: usize, device: &Device) -> Result<Tensor> {
    let micro = &plan.micro_conditioning;
    let ids = [
        micro.original_size[0], micro.original_size[1],
        micro.crops_coords_top_left[0], micro.crops_coords_top_left[1],
        micro.target_size[0], micro.target_size[1],
    ]
    .map(|v| v as f32);
    Ok(Tensor::new(&ids, device)?.unsqueeze(0)?.repeat((rows, 1))?)
}

pub fn generate(
    model: &SdxlModel,
    plan: &GenerationPlan,
    init_image: Option<&image::RgbImage>,
    ctx: &mut RunContext,
    mut intermediates: Option<&mut Intermediates>,
) -> Result<GeneratedBatch> {
    let device = ctx.device;
    let batch = plan.batch_size as usize;
    let guidance = plan.guidance_scale > 1.0;
    let mut stage_times = StageTimes::default();
    let factor = model.vae.network().config().downscale_factor();
    let (latent_h, latent_w) = (plan.height as usize / factor, plan.width as usize / factor);
    let latent_channels = model.unet.config().in_channels;

    // Text conditioning, repeated per image; CFG puts the negative half first.
    let stage_start = Instant::now();
    ctx.report(Stage::Encode, 0, 0, plan.steps, 0)?;
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
    let rows = if guidance { 2 * batch } else { batch };
    let add_time_ids = time_ids(plan, rows, device)?;
    let hidden_states = hidden_states.to_dtype(model.dtype)?;
    let pooled = pooled.to_dtype(model.dtype)?;
    if let Some(record) = intermediates.as_deref_mut() {
        record.prompt_embeds = Some(positive.hidden_states.clone());
        record.pooled_prompt_embeds = Some(positive.pooled.clone());
        record.negative_prompt_embeds = negative.as_ref().map(|n| n.hidden_states.clone());
        record.negative_pooled_prompt_embeds = negative.as_ref().map(|n| n.pooled.clone());
        record.add_time_ids = Some(add_time_ids.narrow(0, rows - batch, batch)?);
    }
    stage_times.text_encode = stage_start.elapsed().as_secs_f64();

    // Scheduler and initial latents.
    let overrides = plan.scheduler_overrides.clone();
    let mut scheduler: Box<dyn Scheduler> = build_scheduler(plan.scheduler, &model.scheduler_config, &overrides, plan.steps as usize)?;
    let seeds: Vec<u64> = (0..batch as u64).map(|i| plan.seed.wrapping_add(i)).collect();
    let mut noise = PerImageNoise::new(&seeds, ctx.noise_kernel, device);
    let latent_dims = [latent_channels, latent_h, latent_w];
    let (mut latents, start_index) = match init_image {
        None => {
            let initial = noise.randn(&latent_dims)?;
            if let Some(record) = intermediates.as_deref_mut() {
                record.initial_noise = Some(initial.clone());
            }
            ((initial * scheduler.init_noise_sigma())?, 0)
        }
        Some(image) => {
            let encode_start = Instant::now();
            let pixels = crate::image::rgb_to_tensor(image, device)?.to_dtype(model.vae_dtype)?;
            let distribution = model.vae.on_device()?.encode(&pixels)?;
            // Each image's stream first samples its latent, then draws its noise (diffusers' order).
            let mut image_latents = Vec::with_capacity(batch);
            let sample_noise = noise.randn(&latent_dims)?.to_dtype(model.vae_dtype)?;
            for i in 0..batch {
                image_latents.push(distribution.sample(&sample_noise.narrow(0, i, 1)?)?);
            }
            let image_latents = (Tensor::cat(&image_latents, 0)? * model.vae.network().config().scaling_factor)?.to_dtype(DType::F32)?;
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

    // The denoising loop.
    let denoise_start = Instant::now();
    let timesteps: Vec<f64> = scheduler.timesteps().to_vec();
    if let Some(record) = intermediates.as_deref_mut() {
        record.timesteps = timesteps[start_index..].to_vec();
    }
    let order = scheduler.order();
    let total_steps = ((timesteps.len() - start_index) / order) as u32;
    let conditioning = UNetConditioning { encoder_hidden_states: &hidden_states, text_embeds: &pooled, time_ids: &add_time_ids };
    let mut model_calls = 0u32;
    for (index, &timestep) in timesteps.iter().enumerate().skip(start_index) {
        ctx.report(Stage::Denoise, 0, (model_calls / order as u32).min(total_steps), total_steps, model_calls)?;
        let model_input = if guidance { Tensor::cat(&[&latents, &latents], 0)? } else { latents.clone() };
        let model_input = scheduler.scale_model_input(&model_input, index)?.to_dtype(model.dtype)?;
        let noise_pred = model.unet.forward(&model_input, timestep, &conditioning)?.to_dtype(DType::F32)?;
        model_calls += 1;
        let noise_pred = if guidance {
            let uncond = noise_pred.narrow(0, 0, batch)?;
            let text = noise_pred.narrow(0, batch, batch)?;
            (&uncond + ((text - &uncond)? * plan.guidance_scale)?)?
        } else {
            noise_pred
        };
        latents = scheduler.step(&noise_pred, index, &latents, &mut noise)?;
        if index == start_index {
            if let Some(record) = intermediates.as_deref_mut() {
                record.latents_after_first_step = Some(latents.clone());
            }
        }
    }
    ctx.report(Stage::Denoise, 0, total_steps, total_steps, model_calls)?;
    if let Some(record) = intermediates.as_deref_mut() {
        record.final_latents = Some(latents.clone());
    }
    stage_times.denoise = denoise_start.elapsed().as_secs_f64();

    // Decode one image at a time: the VAE at full resolution dominates peak memory.
    let decode_start = Instant::now();
    let mut images = Vec::with_capacity(batch);
    let vae = model.vae.on_device()?;
    for i in 0..batch {
        ctx.report(Stage::Decode, i as u32, total_steps, total_steps, model_calls)?;
        let latent = (latents.narrow(0, i, 1)? / model.vae.network().config().scaling_factor)?.to_dtype(model.vae_dtype)?;
        let decoded = vae.decode(&latent)?;
        images.push(crate::image::tensor_to_rgb(&decoded)?);
    }
    stage_times.decode = decode_start.elapsed().as_secs_f64();
    Ok(GeneratedBatch { images, seeds, stage_times, model_calls, steps_run: total_steps })
}
