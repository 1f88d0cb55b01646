//! EulerAncestralDiscreteScheduler (diffusers `scheduling_euler_ancestral_discrete.py`):
//! an Euler step down to σ_down followed by fresh noise of σ_up, drawn on every step.
//! diffusers 0.42.1 gives this scheduler no Karras sigmas.

use candle_core::Tensor;

use super::noise_schedule::{
    euler_family_init_noise_sigma, euler_family_schedule, karras_denoised, karras_derivative, linear_combination,
    scale, scale_to_unit_variance, KarrasTimesteps, PredictionType,
};
use super::{NoiseSource, Scheduler, SchedulerConfig};
use crate::error::Result;

pub struct EulerAncestralDiscrete {
    timesteps: Vec<f64>,
    /// One per step plus the final zero (float32).
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    init_noise_sigma: f64,
}

impl EulerAncestralDiscrete {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let prediction_type = PredictionType::parse(&config.prediction_type)?;
        // No use_karras_sigmas and no final_sigmas_type in this scheduler's config.
        let plain = SchedulerConfig { use_karras_sigmas: false, ..config.clone() };
        let schedule = euler_family_schedule(&plain, steps, KarrasTimesteps::Fractional)?;
        let mut sigmas: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(0.0);
        Ok(Self {
            timesteps: schedule.timesteps,
            init_noise_sigma: euler_family_init_noise_sigma(config, &sigmas),
            sigmas,
            prediction_type,
        })
    }

    /// One per step plus the final zero (float32), as diffusers' `scheduler.sigmas`.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

/// (σ_up, σ_down) of an ancestral step from σ_from to σ_to (k-diffusion's `get_ancestral_step`
/// with η = 1, as written in diffusers' `step`): σ_up² = σ_to²(σ_from² − σ_to²)/σ_from²,
/// σ_down² = σ_to² − σ_up².
fn ancestral_split(sigma_from: f32, sigma_to: f32) -> (f32, f32) {
    let sigma_up =
        (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from)).sqrt();
    let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
    (sigma_up, sigma_down)
}

impl Scheduler for EulerAncestralDiscrete {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor> {
        scale_to_unit_variance(sample, self.sigmas[index])
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[index];
        let denoised = karras_denoised(self.prediction_type, model_output, sample, sigma)?;
        let (sigma_up, sigma_down) = ancestral_split(sigma, self.sigmas[index + 1]);
        let derivative = karras_derivative(sample, &denoised, sigma)?;
        let prev_sample = (sample + scale(&derivative, sigma_down - sigma)?)?;
        let step_noise = noise.sample_like(model_output)?;
        linear_combination(&[(1.0, &prev_sample), (sigma_up, &step_noise)])
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        Ok((original + scale(noise, self.sigmas[index])?)?)
    }
}
