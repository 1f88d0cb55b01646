//! HeunDiscreteScheduler (diffusers `scheduling_heun_discrete.py`): Heun's second-order method
//! (Karras et al. 2022, Algorithm 1), two model calls per step. As in diffusers, the timestep
//! list repeats every timestep after the first ([t0, t1, t1, t2, t2, …]) and the last step is a
//! plain Euler step to σ = 0.

use candle_core::Tensor;

use super::noise_schedule::{
    euler_family_init_noise_sigma, euler_family_schedule, karras_denoised, karras_derivative, scale,
    scale_to_unit_variance, KarrasTimesteps, PredictionType,
};
use super::{NoiseSource, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};

/// What the first (Euler) half of a step leaves for the second (trapezoidal) half.
struct FirstHalf {
    derivative: Tensor,
    dt: f32,
    sample: Tensor,
}

pub struct HeunDiscrete {
    /// [t0, t1, t1, …, t_{n−1}, t_{n−1}]: one per model call.
    timesteps: Vec<f64>,
    /// [σ0, σ1, σ1, …, σ_{n−1}, σ_{n−1}, 0], indexed like diffusers' `self.sigmas`.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    clip_sample_range: Option<f32>,
    init_noise_sigma: f64,
    first_half: Option<FirstHalf>,
}

/// [v0, v1, …, v_last] → [v0, v1, v1, …, v_{last−1}, v_{last−1}, v_last]
/// (`torch.cat([v[:1], v[1:-1].repeat_interleave(2), v[-1:]])`).
fn repeat_inner<T: Copy>(values: &[T]) -> Vec<T> {
    let mut repeated = vec![values[0]];
    for &value in &values[1..values.len() - 1] {
        repeated.extend([value, value]);
    }
    repeated.push(values[values.len() - 1]);
    repeated
}

impl HeunDiscrete {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let prediction_type = PredictionType::parse(&config.prediction_type)?;
        let schedule = euler_family_schedule(config, steps, KarrasTimesteps::Fractional)?;
        let mut sigmas: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(0.0);
        let sigmas = repeat_inner(&sigmas);
        // timesteps: cat([t[:1], t[1:].repeat_interleave(2)])
        let mut timesteps = vec![schedule.timesteps[0]];
        for &t in &schedule.timesteps[1..] {
            timesteps.extend([t, t]);
        }
        Ok(Self {
            timesteps,
            init_noise_sigma: euler_family_init_noise_sigma(config, &sigmas),
            sigmas,
            prediction_type,
            clip_sample_range: config.clip_sample.then_some(config.clip_sample_range as f32),
            first_half: None,
        })
    }

    /// One per model call plus the final one (float32), as diffusers' `scheduler.sigmas`.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for HeunDiscrete {
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        match self.first_half.take() {
            None => {
                // Euler step from σ_i to σ_{i+1}, remembered for the correction.
                let (sigma, sigma_next) = (self.sigmas[index], self.sigmas[index + 1]);
                let mut denoised = karras_denoised(self.prediction_type, model_output, sample, sigma)?;
                if let Some(range) = self.clip_sample_range {
                    denoised = denoised.clamp(-range, range)?;
                }
                let derivative = karras_derivative(sample, &denoised, sigma)?;
                let dt = sigma_next - sigma;
                let prev_sample = (sample + scale(&derivative, dt)?)?;
                self.first_half = Some(FirstHalf { derivative, dt, sample: sample.clone() });
                Ok(prev_sample)
            }
            Some(first) => {
                // Trapezoid: the mean of the derivatives at both ends, from the stored sample.
                if index == 0 {
                    return Err(Error::Internal("Heun correction at the first timestep".into()));
                }
                let sigma_next = self.sigmas[index];
                let mut denoised = karras_denoised(self.prediction_type, model_output, sample, sigma_next)?;
                if let Some(range) = self.clip_sample_range {
                    denoised = denoised.clamp(-range, range)?;
                }
                let derivative = karras_derivative(sample, &denoised, sigma_next)?;
                let derivative = ((first.derivative + derivative)? * 0.5)?;
                Ok((first.sample + scale(&derivative, first.dt)?)?)
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
