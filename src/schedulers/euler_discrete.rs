//! EulerDiscreteScheduler (diffusers `scheduling_euler_discrete.py`), the scheduler SDXL
//! base ships with; deterministic (`s_churn = 0`), epsilon or v-prediction, optional Karras sigmas.

use candle_core::Tensor;

use super::noise_schedule::{
    euler_family_init_noise_sigma, euler_family_schedule, final_sigma, karras_denoised, karras_derivative, scale,
    scale_to_unit_variance, KarrasTimesteps, PredictionType,
};
use super::{NoiseSource, Scheduler, SchedulerConfig};
use crate::error::Result;

pub struct EulerDiscrete {
    timesteps: Vec<f64>,
    /// One per step plus the final one, float32 as diffusers keeps them.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    init_noise_sigma: f64,
}

impl EulerDiscrete {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let prediction_type = PredictionType::parse(&config.prediction_type)?;
        let schedule = euler_family_schedule(config, steps, KarrasTimesteps::Fractional)?;
        let mut sigmas: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(final_sigma(config)?);
        Ok(Self {
            timesteps: schedule.timesteps,
            init_noise_sigma: euler_family_init_noise_sigma(config, &sigmas),
            sigmas,
            prediction_type,
        })
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for EulerDiscrete {
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
        let sigma = self.sigmas[index];
        let denoised = karras_denoised(self.prediction_type, model_output, sample, sigma)?;
        let derivative = karras_derivative(sample, &denoised, sigma)?;
        let dt = self.sigmas[index + 1] - sigma;
        Ok((sample + scale(&derivative, dt)?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        Ok((original + scale(noise, self.sigmas[index])?)?)
    }
}
