//! DPMSolverMultistepScheduler (diffusers `scheduling_dpmsolver_multistep.py`), the seed's
//! default: DPM-Solver++ (and its SDE variant) of order 1–2 with the midpoint solver,
//! `lower_order_final`, final sigma zero, optional Karras sigmas.

use candle_core::Tensor;

use super::euler_discrete::PredictionType;
use super::noise_schedule::{alphas_cumprod, interpolate, karras_sigmas, round_half_even, sigma_to_t, training_sigmas};
use super::{NoiseSource, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Algorithm {
    DpmSolverPlusPlus,
    SdeDpmSolverPlusPlus,
}

pub struct DpmSolverMultistep {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    algorithm: Algorithm,
    solver_order: usize,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_is_zero: bool,
    /// Converted (x0) model outputs of the last `solver_order` steps, newest last.
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
}

impl DpmSolverMultistep {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        if config.solver_type != "midpoint" && config.solver_type != "heun" {
            return Err(Error::Unsupported(format!("solver_type '{}'", config.solver_type)));
        }
        if config.solver_order > 2 {
            return Err(Error::Unsupported("DPM-Solver++ of order 3 (use solver_order 1 or 2)".into()));
        }
        let algorithm = match config.algorithm_type.as_str() {
            "dpmsolver++" => Algorithm::DpmSolverPlusPlus,
            "sde-dpmsolver++" => Algorithm::SdeDpmSolverPlusPlus,
            other => return Err(Error::Unsupported(format!("DPM-Solver algorithm_type '{other}'"))),
        };
        let ac = alphas_cumprod(config)?;
        let table = training_sigmas(&ac);
        let train = config.num_train_timesteps;
        // lambda_min_clipped defaults to -inf, so the last usable timestep is num_train_timesteps.
        let last_timestep = train;
        let mut timesteps: Vec<f64> = match config.timestep_spacing.as_str() {
            "linspace" => (0..=steps)
                .map(|i| round_half_even((last_timestep - 1) as f64 * i as f64 / steps as f64))
                .rev()
                .take(steps)
                .collect(),
            "leading" => {
                let ratio = last_timestep / (steps + 1);
                (0..=steps).rev().take(steps).map(|i| (i * ratio + config.steps_offset) as f64).collect()
            }
            "trailing" => {
                let ratio = train as f64 / steps as f64;
                let mut values = Vec::new();
                let mut t = last_timestep as f64;
                while t > 0.0 {
                    values.push(round_half_even(t) - 1.0);
                    t -= ratio;
                }
                values
            }
            other => return Err(Error::Unsupported(format!("timestep_spacing '{other}'"))),
        };
        let mut sigmas: Vec<f64>;
        if config.use_karras_sigmas {
            let log_sigmas: Vec<f32> = table.iter().map(|s| s.ln()).collect();
            sigmas = karras_sigmas(table[train - 1] as f64, table[0] as f64, steps);
            timesteps = sigmas.iter().map(|&s| round_half_even(sigma_to_t(s, &log_sigmas))).collect();
        } else {
            sigmas = timesteps.iter().map(|&t| interpolate(&table, t)).collect();
        }
        let final_sigmas_type = config.final_sigmas_type.as_deref().unwrap_or("zero");
        let last = match final_sigmas_type {
            "zero" => 0.0,
            "sigma_min" => table[0] as f64,
            other => return Err(Error::Unsupported(format!("final_sigmas_type '{other}'"))),
        };
        sigmas.push(last);
        Ok(Self {
            timesteps,
            sigmas: sigmas.into_iter().map(|s| s as f32).collect(),
            prediction_type: PredictionType::parse(&config.prediction_type)?,
            algorithm,
            solver_order: config.solver_order.max(1),
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            final_sigma_is_zero: final_sigmas_type == "zero",
            model_outputs: vec![None; config.solver_order.max(1)],
            lower_order_nums: 0,
        })
    }

    /// (α_t, σ_t) of the VP form for a Karras-style sigma (`_sigma_to_alpha_sigma_t`).
    fn alpha_sigma(sigma: f32) -> (f32, f32) {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }

    fn lambda(alpha: f32, sigma: f32) -> f32 {
        alpha.ln() - sigma.ln()
    }

    /// The data prediction x0 DPM-Solver++ works with (`convert_model_output`).
    fn convert_model_output(&self, model_output: &Tensor, sample: &Tensor, index: usize) -> Result<Tensor> {
        let (alpha_t, sigma_t) = Self::alpha_sigma(self.sigmas[index]);
        Ok(match self.prediction_type {
            PredictionType::Epsilon => ((sample - (model_output * sigma_t as f64)?)? / alpha_t as f64)?,
            PredictionType::VPrediction => ((sample * alpha_t as f64)? - (model_output * sigma_t as f64)?)?,
        })
    }

    fn first_order_update(&self, x0: &Tensor, sample: &Tensor, index: usize, noise: Option<&Tensor>) -> Result<Tensor> {
        let (alpha_t, sigma_t) = Self::alpha_sigma(self.sigmas[index + 1]);
        let (alpha_s, sigma_s) = Self::alpha_sigma(self.sigmas[index]);
        let h = Self::lambda(alpha_t, sigma_t) - Self::lambda(alpha_s, sigma_s);
        Ok(match (self.algorithm, noise) {
            (Algorithm::SdeDpmSolverPlusPlus, Some(noise)) => {
                let decay = (-h).exp();
                let a = sigma_t / sigma_s * decay;
                let b = alpha_t * (1.0 - (-2.0 * h).exp());
                let c = sigma_t * (1.0 - (-2.0 * h).exp()).sqrt();
                (((sample * a as f64)? + (x0 * b as f64)?)? + (noise * c as f64)?)?
            }
            _ => {
                let a = sigma_t / sigma_s;
                let b = alpha_t * ((-h).exp() - 1.0);
                ((sample * a as f64)? - (x0 * b as f64)?)?
            }
        })
    }

    fn second_order_update(&self, sample: &Tensor, index: usize, noise: Option<&Tensor>) -> Result<Tensor> {
        let (Some(m0), Some(m1)) = (&self.model_outputs[self.solver_order - 1], &self.model_outputs[self.solver_order - 2]) else {
            return Err(Error::Internal("DPM-Solver second order without history".into()));
        };
        let (alpha_t, sigma_t) = Self::alpha_sigma(self.sigmas[index + 1]);
        let (alpha_s0, sigma_s0) = Self::alpha_sigma(self.sigmas[index]);
        let (alpha_s1, sigma_s1) = Self::alpha_sigma(self.sigmas[index - 1]);
        let lambda_t = Self::lambda(alpha_t, sigma_t);
        let lambda_s0 = Self::lambda(alpha_s0, sigma_s0);
        let lambda_s1 = Self::lambda(alpha_s1, sigma_s1);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let r0 = h_0 / h;
        let d0 = m0;
        let d1 = ((m0 - m1)? * (1.0 / r0) as f64)?;
        Ok(match (self.algorithm, noise) {
            (Algorithm::SdeDpmSolverPlusPlus, Some(noise)) => {
                let a = sigma_t / sigma_s0 * (-h).exp();
                let b = alpha_t * (1.0 - (-2.0 * h).exp());
                let c = sigma_t * (1.0 - (-2.0 * h).exp()).sqrt();
                ((((sample * a as f64)? + (d0 * b as f64)?)? + (d1 * (0.5 * b) as f64)?)? + (noise * c as f64)?)?
            }
            _ => {
                let a = sigma_t / sigma_s0;
                let b = alpha_t * ((-h).exp() - 1.0);
                (((sample * a as f64)? - (d0 * b as f64)?)? - (d1 * (0.5 * b) as f64)?)?
            }
        })
    }
}

impl Scheduler for DpmSolverMultistep {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _index: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(&mut self, model_output: &Tensor, index: usize, sample: &Tensor, noise: &mut dyn NoiseSource) -> Result<Tensor> {
        let steps = self.timesteps.len();
        let lower_order_final = index == steps - 1
            && (self.euler_at_final || (self.lower_order_final && steps < 15) || self.final_sigma_is_zero);
        let lower_order_second = index + 2 == steps && self.lower_order_final && steps < 15;
        let x0 = self.convert_model_output(model_output, sample, index)?;
        self.model_outputs.rotate_left(1);
        let newest = self.model_outputs.len() - 1;
        self.model_outputs[newest] = Some(x0.clone());
        let step_noise = match self.algorithm {
            Algorithm::SdeDpmSolverPlusPlus => Some(noise.sample_like(model_output)?),
            Algorithm::DpmSolverPlusPlus => None,
        };
        let prev = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order_update(&x0, sample, index, step_noise.as_ref())?
        } else {
            let _ = lower_order_second; // order 2 is the highest we run, so "second" needs no downgrade
            self.second_order_update(sample, index, step_noise.as_ref())?
        };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        let (alpha_t, sigma_t) = Self::alpha_sigma(self.sigmas[index]);
        Ok(((original * alpha_t as f64)? + (noise * sigma_t as f64)?)?)
    }
}
