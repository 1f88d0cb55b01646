//! KDPM2DiscreteScheduler (diffusers `scheduling_k_dpm_2_discrete.py`, k-diffusion's
//! `sample_dpm_2`): each step evaluates the model again at the log-midpoint σ_mid of σ_i and
//! σ_{i+1}, so the timestep list interleaves [t0, t_mid1, t1, t_mid2, t2, …]. Two model calls
//! per step; the last step is a plain Euler step to σ = 0.

use candle_core::Tensor;

use super::noise_schedule::{
    euler_family_init_noise_sigma, euler_family_schedule, interpolated_timesteps, karras_denoised, karras_derivative,
    log_interpolated_sigmas, scale, scale_to_unit_variance, KarrasTimesteps, PredictionType,
};
use super::{NoiseSource, Scheduler, SchedulerConfig};
use crate::error::Result;

pub struct Kdpm2Discrete {
    timesteps: Vec<f64>,
    /// σ_k for model call i: [σ0, σ1, σ1, …, σ_n(=0), σ_n, σ_n] like diffusers' `self.sigmas`.
    sigmas: Vec<f32>,
    /// The log-midpoints, interleaved the same way (`self.sigmas_interpol`).
    sigmas_interpol: Vec<f32>,
    prediction_type: PredictionType,
    init_noise_sigma: f64,
    /// The sample at the start of the step while its midpoint evaluation is pending.
    step_start_sample: Option<Tensor>,
}

/// [v0, v1, …, v_n] → [v0, v1, v1, …, v_n, v_n, v_n] (`cat([v[:1], v[1:].repeat_interleave(2), v[-1:]])`).
pub(super) fn repeat_after_first<T: Copy>(values: &[T]) -> Vec<T> {
    let mut repeated = vec![values[0]];
    for &value in &values[1..] {
        repeated.extend([value, value]);
    }
    repeated.push(values[values.len() - 1]);
    repeated
}

/// [t0, a1, b1, a2, b2, …]: the first timestep, then each interpolated timestep before the
/// step's own (`cat([timesteps[:1], stack((interpol, timesteps[1:]), -1).flatten()])`).
pub(super) fn interleave_timesteps(timesteps: &[f64], interpolated: &[f64]) -> Vec<f64> {
    let mut interleaved = vec![timesteps[0]];
    for (mid, &t) in interpolated.iter().zip(&timesteps[1..]) {
        interleaved.extend([*mid, t]);
    }
    interleaved
}

impl Kdpm2Discrete {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let prediction_type = PredictionType::parse(&config.prediction_type)?;
        let schedule = euler_family_schedule(config, steps, KarrasTimesteps::Rounded)?;
        let mut sigmas: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(0.0);
        // sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp(): the midpoint of σ_k and σ_{k−1}.
        let previous: Vec<f32> =
            std::iter::once(sigmas[sigmas.len() - 1]).chain(sigmas[..sigmas.len() - 1].iter().copied()).collect();
        let interpol = log_interpolated_sigmas(&sigmas, &previous);
        let interpolated_timesteps = interpolated_timesteps(config, &interpol[1..interpol.len() - 1])?;
        let sigmas_interleaved = repeat_after_first(&sigmas);
        Ok(Self {
            timesteps: interleave_timesteps(&schedule.timesteps, &interpolated_timesteps),
            init_noise_sigma: euler_family_init_noise_sigma(config, &sigmas_interleaved),
            sigmas: sigmas_interleaved,
            sigmas_interpol: repeat_after_first(&interpol),
            prediction_type,
            step_start_sample: None,
        })
    }

    /// Interleaved per model call (float32), as diffusers' `scheduler.sigmas`.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for Kdpm2Discrete {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor> {
        let sigma = if self.step_start_sample.is_none() { self.sigmas[index] } else { self.sigmas_interpol[index] };
        scale_to_unit_variance(sample, sigma)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        match self.step_start_sample.take() {
            None => {
                // Euler half-step from σ to the midpoint σ_mid.
                let (sigma, sigma_mid) = (self.sigmas[index], self.sigmas_interpol[index + 1]);
                let denoised = karras_denoised(self.prediction_type, model_output, sample, sigma)?;
                let derivative = karras_derivative(sample, &denoised, sigma)?;
                self.step_start_sample = Some(sample.clone());
                Ok((sample + scale(&derivative, sigma_mid - sigma)?)?)
            }
            Some(start) => {
                // The whole step from σ to σ_next with the derivative at the midpoint.
                let (sigma, sigma_mid, sigma_next) =
                    (self.sigmas[index - 1], self.sigmas_interpol[index], self.sigmas[index]);
                let denoised = karras_denoised(self.prediction_type, model_output, sample, sigma_mid)?;
                let derivative = karras_derivative(sample, &denoised, sigma_mid)?;
                Ok((start + scale(&derivative, sigma_next - sigma)?)?)
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
