//! DDIMScheduler (diffusers `scheduling_ddim.py`): works on ᾱ_t of integer timesteps,
//! deterministic for `eta = 0`; `eta > 0` adds σ_t(η)·z noise each step (the pipeline passes
//! `eta` and the generator to `step`). `set_alpha_to_one` picks ᾱ after the last step
//! (SDXL's config says false: ᾱ_0).

use candle_core::Tensor;

use super::noise_schedule::{
    alphas_cumprod, linear_combination, numpy_linspace, round_half_even, spaced_timesteps, vp_denoised, PredictionType,
};
use super::{NoiseSource, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};

pub struct Ddim {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    /// ᾱ used for the step past the last timestep (1 or ᾱ_0).
    final_alpha_cumprod: f32,
    /// `num_train_timesteps // num_inference_steps`: how far back each step looks.
    step_ratio: usize,
    prediction_type: PredictionType,
    eta: f32,
    clip_sample_range: Option<f32>,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        let train = config.num_train_timesteps;
        if steps == 0 || steps > train {
            return Err(Error::Unsupported(format!("DDIM with {steps} steps (expected 1 to {train})")));
        }
        let timesteps = match config.timestep_spacing.as_str() {
            // DDIM rounds its linspace to integers: np.linspace(0, train - 1, steps).round()[::-1]
            "linspace" => {
                numpy_linspace(0.0, (train - 1) as f64, steps).into_iter().rev().map(round_half_even).collect()
            }
            _ => spaced_timesteps(config, steps)?,
        };
        let alphas_cumprod = alphas_cumprod(config)?;
        Ok(Self {
            timesteps,
            final_alpha_cumprod: if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] },
            alphas_cumprod,
            step_ratio: train / steps,
            prediction_type: PredictionType::parse(&config.prediction_type)?,
            eta: config.eta as f32,
            clip_sample_range: config.clip_sample.then_some(config.clip_sample_range as f32),
        })
    }

    fn alpha_cumprod_at(&self, timestep: i64) -> f32 {
        if timestep >= 0 {
            self.alphas_cumprod[(timestep as usize).min(self.alphas_cumprod.len() - 1)]
        } else {
            self.final_alpha_cumprod
        }
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _index: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let timestep = self.timesteps[index] as i64;
        let prev_timestep = timestep - self.step_ratio as i64;
        let alpha_prod_t = self.alpha_cumprod_at(timestep);
        let alpha_prod_t_prev = self.alpha_cumprod_at(prev_timestep);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let (sqrt_alpha, sqrt_beta) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
        let mut pred_original_sample = vp_denoised(self.prediction_type, model_output, sample, sqrt_alpha, sqrt_beta)?;
        let pred_epsilon = match self.prediction_type {
            PredictionType::Epsilon => model_output.clone(),
            // √ᾱ·v + √(1−ᾱ)·x
            PredictionType::VPrediction => linear_combination(&[(sqrt_alpha, model_output), (sqrt_beta, sample)])?,
        };
        if let Some(range) = self.clip_sample_range {
            pred_original_sample = pred_original_sample.clamp(-range, range)?;
        }
        // σ_t(η) = η·sqrt((1 − ᾱ_prev)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_prev))  (`_get_variance`)
        let variance = (1.0 - alpha_prod_t_prev) / beta_prod_t * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta * variance.sqrt();
        let direction = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let prev_sample =
            linear_combination(&[(alpha_prod_t_prev.sqrt(), &pred_original_sample), (direction, &pred_epsilon)])?;
        if self.eta > 0.0 {
            let variance_noise = noise.sample_like(model_output)?;
            return linear_combination(&[(1.0, &prev_sample), (std_dev_t, &variance_noise)]);
        }
        Ok(prev_sample)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        let alpha_prod = self.alpha_cumprod_at(self.timesteps[index] as i64);
        linear_combination(&[(alpha_prod.sqrt(), original), (((1.0 - alpha_prod).sqrt()), noise)])
    }
}
