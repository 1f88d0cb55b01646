//! KDPM2AncestralDiscreteScheduler (diffusers `scheduling_k_dpm_2_ancestral_discrete.py`,
//! k-diffusion's `sample_dpm_2_ancestral`): DPM2 towards σ_down through the log-midpoint of σ
//! and σ_down, then fresh noise of σ_up, drawn once per step (after the midpoint evaluation).
//! Two model calls per step.

use candle_core::Tensor;

use super::k_dpm_2_discrete::{interleave_timesteps, repeat_after_first};
use super::noise_schedule::{
    euler_family_init_noise_sigma, euler_family_schedule, interpolated_timesteps, karras_denoised, karras_derivative,
    linear_combination, log_interpolated_sigmas, scale, scale_to_unit_variance, KarrasTimesteps, PredictionType,
};
use super::{NoiseSource, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};

pub struct Kdpm2AncestralDiscrete {
    timesteps: Vec<f64>,
    /// Per model call, interleaved like diffusers' tables ([x0, x1, x1, …, x_n, x_n, x_n]).
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    prediction_type: PredictionType,
    init_noise_sigma: f64,
    /// The sample at the start of the step while its midpoint evaluation is pending.
    step_start_sample: Option<Tensor>,
}

impl Kdpm2AncestralDiscrete {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let prediction_type = PredictionType::parse(&config.prediction_type)?;
        let schedule = euler_family_schedule(config, steps, KarrasTimesteps::Rounded)?;
        let mut sigmas: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(0.0);
        let count = sigmas.len();
        // σ_next = sigmas.roll(-1) with the last set to 0; σ_up² = σ_next²(σ² − σ_next²)/σ²;
        // σ_down² = σ_next² − σ_up² with the last set to 0 (float32, as torch).
        let sigmas_next: Vec<f32> = (0..count).map(|k| if k + 1 < count { sigmas[k + 1] } else { 0.0 }).collect();
        let sigmas_up: Vec<f32> = sigmas
            .iter()
            .zip(&sigmas_next)
            .map(|(&s, &next)| (next * next * (s * s - next * next) / (s * s)).sqrt())
            .collect();
        let mut sigmas_down: Vec<f32> =
            sigmas_next.iter().zip(&sigmas_up).map(|(&next, &up)| (next * next - up * up).sqrt()).collect();
        sigmas_down[count - 1] = 0.0;
        let mut interpol = log_interpolated_sigmas(&sigmas, &sigmas_down);
        interpol[count.saturating_sub(2)..].iter_mut().for_each(|s| *s = 0.0);
        // timesteps_interpol[:-2]: the midpoint of every step but the last.
        let interpolated = interpolated_timesteps(config, &interpol[..count.saturating_sub(2)])?;
        let sigmas_interleaved = repeat_after_first(&sigmas);
        Ok(Self {
            timesteps: interleave_timesteps(&schedule.timesteps, &interpolated),
            init_noise_sigma: euler_family_init_noise_sigma(config, &sigmas_interleaved),
            sigmas: sigmas_interleaved,
            sigmas_interpol: repeat_after_first(&interpol),
            sigmas_up: repeat_after_first(&sigmas_up),
            sigmas_down: repeat_after_first(&sigmas_down),
            prediction_type,
            step_start_sample: None,
        })
    }

    /// Interleaved per model call (float32), as diffusers' `scheduler.sigmas`.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for Kdpm2AncestralDiscrete {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor> {
        let sigma = match (&self.step_start_sample, index) {
            (None, _) => self.sigmas[index],
            (Some(_), 0) => return Err(Error::Internal("KDPM2 ancestral midpoint at the first timestep".into())),
            (Some(_), _) => self.sigmas_interpol[index - 1],
        };
        scale_to_unit_variance(sample, sigma)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        match self.step_start_sample.take() {
            None => {
                // Euler half-step from σ to the midpoint σ_mid.
                let (sigma, sigma_mid) = (self.sigmas[index], self.sigmas_interpol[index]);
                let denoised = karras_denoised(self.prediction_type, model_output, sample, sigma)?;
                let derivative = karras_derivative(sample, &denoised, sigma)?;
                self.step_start_sample = Some(sample.clone());
                Ok((sample + scale(&derivative, sigma_mid - sigma)?)?)
            }
            Some(start) => {
                if index == 0 {
                    return Err(Error::Internal("KDPM2 ancestral midpoint at the first timestep".into()));
                }
                // From σ to σ_down with the midpoint derivative, then noise of σ_up.
                let previous = index - 1;
                let (sigma, sigma_mid) = (self.sigmas[previous], self.sigmas_interpol[previous]);
                let (sigma_up, sigma_down) = (self.sigmas_up[previous], self.sigmas_down[previous]);
                let denoised = karras_denoised(self.prediction_type, model_output, sample, sigma_mid)?;
                let derivative = karras_derivative(sample, &denoised, sigma_mid)?;
                let prev_sample = (start + scale(&derivative, sigma_down - sigma)?)?;
                let step_noise = noise.sample_like(model_output)?;
                linear_combination(&[(1.0, &prev_sample), (sigma_up, &step_noise)])
            }
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        Ok((original + scale(noise, self.sigmas[index])?)?)
    }

    fn order(&self) -> usize {
        2
    }
}
