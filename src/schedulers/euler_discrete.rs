//! EulerDiscreteScheduler (diffusers `scheduling_euler_discrete.py`), the scheduler SDXL
//! base ships with; deterministic (`s_churn = 0`), epsilon or v-prediction, optional Karras sigmas.

use candle_core::Tensor;

use super::noise_schedule::{alphas_cumprod, interpolate, karras_sigmas, sigma_to_t, spaced_timesteps, training_sigmas};
use super::{NoiseSource, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};

pub struct EulerDiscrete {
    timesteps: Vec<f64>,
    /// One per step plus the final one, float32 as diffusers keeps them.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    init_noise_sigma: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
}

impl PredictionType {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "epsilon" => Ok(PredictionType::Epsilon),
            "v_prediction" => Ok(PredictionType::VPrediction),
            other => Err(Error::Unsupported(format!("prediction_type '{other}'"))),
        }
    }
}

impl EulerDiscrete {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let ac = alphas_cumprod(config)?;
        let table = training_sigmas(&ac);
        let mut timesteps = spaced_timesteps(config, steps)?;
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interpolate(&table, t)).collect();
        if config.use_karras_sigmas {
            let log_sigmas: Vec<f32> = table.iter().map(|s| s.ln()).collect();
            sigmas = karras_sigmas(sigmas[0], sigmas[sigmas.len() - 1], steps);
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64).collect();
        }
        let last = match config.final_sigmas_type.as_deref().unwrap_or("zero") {
            "zero" => 0.0,
            "sigma_min" => table[0] as f64,
            other => return Err(Error::Unsupported(format!("final_sigmas_type '{other}'"))),
        };
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(last as f32);
        let max_sigma = sigmas.iter().cloned().fold(0.0f32, f32::max);
        let init_noise_sigma = if matches!(config.timestep_spacing.as_str(), "linspace" | "trailing") {
            max_sigma
        } else {
            (max_sigma * max_sigma + 1.0).sqrt()
        };
        Ok(Self {
            timesteps,
            sigmas,
            prediction_type: PredictionType::parse(&config.prediction_type)?,
            init_noise_sigma: init_noise_sigma as f64,
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
        let sigma = self.sigmas[index];
        Ok((sample / ((sigma * sigma + 1.0).sqrt() as f64))?)
    }

    fn step(&mut self, model_output: &Tensor, index: usize, sample: &Tensor, _noise: &mut dyn NoiseSource) -> Result<Tensor> {
        let sigma = self.sigmas[index];
        let pred_original_sample = match self.prediction_type {
            PredictionType::Epsilon => (sample - (model_output * sigma as f64)?)?,
            PredictionType::VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                ((model_output * c_out as f64)? + (sample / (sigma * sigma + 1.0) as f64)?)?
            }
        };
        let derivative = ((sample - &pred_original_sample)? / sigma as f64)?;
        let dt = self.sigmas[index + 1] - sigma;
        Ok((sample + (derivative * dt as f64)?)?)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        Ok((original + (noise * self.sigmas[index] as f64)?)?)
    }
}
