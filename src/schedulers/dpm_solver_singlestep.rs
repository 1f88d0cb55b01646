//! DPMSolverSinglestepScheduler (diffusers `scheduling_dpmsolver_singlestep.py`): DPM-Solver++
//! (or its SDE variant) of order 1–3 where each higher-order update restarts from the sample at
//! the beginning of its group of steps (`order_list` such as [1, 2, 1, 2, …, 1, 1]).
//!
//! diffusers ignores `timestep_spacing` for this scheduler: its timesteps are always
//! `linspace(0, 999, steps + 1).round()[::-1][:-1]`; so do we.

use candle_core::Tensor;

use super::dpm_solver_multistep::{
    dpm_solver_first_order_update, dpm_solver_second_order_update, DpmAlgorithm, DpmSolverType, VpPoint,
};
use super::noise_schedule::{
    final_sigma, linear_combination, solver_schedule, vp_denoised, KarrasTimesteps, PredictionType,
};
use super::{NoiseSource, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};

pub struct DpmSolverSinglestep {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    algorithm: DpmAlgorithm,
    solver_type: DpmSolverType,
    /// The order of each step's update (`get_order_list`).
    order_list: Vec<usize>,
    /// Converted (x0) model outputs of the last `solver_order` steps, newest last.
    model_outputs: Vec<Option<Tensor>>,
    /// The sample at the start of the current group of steps, where every update starts.
    group_start_sample: Option<Tensor>,
}

/// `get_order_list`: the order of each step. With `final_sigmas_type` "zero" diffusers forces
/// `lower_order_final` on in `set_timesteps`, and every SDXL config has that final sigma.
fn order_list(steps: usize, solver_order: usize, lower_order_final: bool, final_sigma_is_zero: bool) -> Vec<usize> {
    let repeat = |pattern: &[usize], times: usize| -> Vec<usize> {
        pattern.iter().copied().cycle().take(pattern.len() * times).collect()
    };
    let mut orders = if lower_order_final {
        match solver_order {
            3 => {
                let mut orders = repeat(&[1, 2, 3], (steps / 3).saturating_sub(if steps % 3 == 0 { 1 } else { 0 }));
                orders.extend_from_slice(match steps % 3 {
                    0 => &[1, 2, 1][..],
                    1 => &[1][..],
                    _ => &[1, 2][..],
                });
                orders
            }
            2 => {
                if steps % 2 == 0 {
                    let mut orders = repeat(&[1, 2], (steps / 2).saturating_sub(1));
                    orders.extend_from_slice(&[1, 1]);
                    orders
                } else {
                    let mut orders = repeat(&[1, 2], steps / 2);
                    orders.push(1);
                    orders
                }
            }
            _ => vec![1; steps],
        }
    } else {
        match solver_order {
            3 => repeat(&[1, 2, 3], steps / 3),
            2 => repeat(&[1, 2], steps / 2),
            _ => vec![1; steps],
        }
    };
    if final_sigma_is_zero {
        if let Some(last) = orders.last_mut() {
            *last = 1;
        }
    }
    orders
}

impl DpmSolverSinglestep {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        if !(1..=3).contains(&config.solver_order) {
            return Err(Error::Unsupported(format!(
                "DPM-Solver++ solver_order {} (expected 1, 2 or 3)",
                config.solver_order
            )));
        }
        let schedule = solver_schedule(config, "linspace", steps, KarrasTimesteps::Rounded)?;
        let mut sigmas: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(final_sigma(config)?);
        let final_sigma_is_zero = config.final_sigmas_type.as_deref().unwrap_or("zero") == "zero";
        // set_timesteps turns lower_order_final on for uneven step counts and for a zero final sigma.
        let lower_order_final = config.lower_order_final || steps % config.solver_order != 0 || final_sigma_is_zero;
        Ok(Self {
            timesteps: schedule.timesteps,
            sigmas,
            prediction_type: PredictionType::parse(&config.prediction_type)?,
            algorithm: DpmAlgorithm::parse(&config.algorithm_type)?,
            solver_type: DpmSolverType::parse(&config.solver_type)?,
            order_list: order_list(steps, config.solver_order, lower_order_final, final_sigma_is_zero),
            model_outputs: vec![None; config.solver_order],
            group_start_sample: None,
        })
    }

    fn history(&self, back: usize) -> Result<&Tensor> {
        self.model_outputs[self.model_outputs.len() - 1 - back]
            .as_ref()
            .ok_or_else(|| Error::Internal("DPM-Solver singlestep update without history".into()))
    }

    /// `singlestep_dpm_solver_second_order_update`: from the sample at s1 (one step back),
    /// using the x0 predictions at s1 and s0.
    fn second_order_update(&self, sample: &Tensor, index: usize, noise: Option<&Tensor>) -> Result<Tensor> {
        let (m0, m1) = (self.history(0)?, self.history(1)?);
        let t = VpPoint::at(self.sigmas[index + 1]);
        let s0 = VpPoint::at(self.sigmas[index]);
        let s1 = VpPoint::at(self.sigmas[index - 1]);
        let r0 = (s0.lambda - s1.lambda) / (t.lambda - s1.lambda);
        let d1 = ((m0 - m1)? * (1.0 / r0) as f64)?;
        dpm_solver_second_order_update(self.algorithm, self.solver_type, sample, s1, t, m1, &d1, noise)
    }

    /// `singlestep_dpm_solver_third_order_update`: from the sample at s2 (two steps back).
    fn third_order_update(&self, sample: &Tensor, index: usize, noise: Option<&Tensor>) -> Result<Tensor> {
        let (m0, m1, m2) = (self.history(0)?, self.history(1)?, self.history(2)?);
        let t = VpPoint::at(self.sigmas[index + 1]);
        let s0 = VpPoint::at(self.sigmas[index]);
        let s1 = VpPoint::at(self.sigmas[index - 1]);
        let s2 = VpPoint::at(self.sigmas[index - 2]);
        let h = t.lambda - s2.lambda;
        let r0 = (s0.lambda - s2.lambda) / h;
        let r1 = (s1.lambda - s2.lambda) / h;
        let d0 = m2;
        let d1_0 = ((m1 - m2)? * (1.0 / r1) as f64)?;
        let d1_1 = ((m0 - m2)? * (1.0 / r0) as f64)?;
        // Heun: D1 = (r0·D1_0 − r1·D1_1)/(r0 − r1), D2 = 2(D1_1 − D1_0)/(r0 − r1)
        let heun_terms = || -> Result<(Tensor, Tensor)> {
            let d1 =
                (((&d1_0 * r0 as f64)? - (&d1_1 * r1 as f64)?)?.broadcast_div(&Tensor::new(r0 - r1, d1_0.device())?))?;
            let d2 = (((&d1_1 - &d1_0)? * 2.0)?.broadcast_div(&Tensor::new(r0 - r1, d1_0.device())?))?;
            Ok((d1, d2))
        };
        match (self.algorithm, noise) {
            (DpmAlgorithm::DpmSolverPlusPlus, _) => {
                let e = (-h).exp();
                let base = [(t.sigma / s2.sigma, sample), (-(t.alpha * (e - 1.0)), d0)];
                match self.solver_type {
                    DpmSolverType::Midpoint => {
                        linear_combination(&[base[0], base[1], (t.alpha * ((e - 1.0) / h + 1.0), &d1_1)])
                    }
                    DpmSolverType::Heun => {
                        let (d1, d2) = heun_terms()?;
                        linear_combination(&[
                            base[0],
                            base[1],
                            (t.alpha * ((e - 1.0) / h + 1.0), &d1),
                            (-(t.alpha * ((e - 1.0 + h) / (h * h) - 0.5)), &d2),
                        ])
                    }
                }
            }
            (DpmAlgorithm::SdeDpmSolverPlusPlus, Some(noise)) => {
                let decay = (-2.0 * h).exp();
                let base = [(t.sigma / s2.sigma * (-h).exp(), sample), (t.alpha * (1.0 - decay), d0)];
                let noise_term = (t.sigma * (1.0 - decay).sqrt(), noise);
                let d1_coefficient = t.alpha * ((1.0 - decay) / (-2.0 * h) + 1.0);
                match self.solver_type {
                    DpmSolverType::Midpoint => {
                        linear_combination(&[base[0], base[1], (d1_coefficient, &d1_1), noise_term])
                    }
                    DpmSolverType::Heun => {
                        let (d1, d2) = heun_terms()?;
                        let minus_two_h = -2.0 * h;
                        let d2_coefficient =
                            t.alpha * ((1.0 - decay + minus_two_h) / (minus_two_h * minus_two_h) - 0.5);
                        linear_combination(&[
                            base[0],
                            base[1],
                            (d1_coefficient, &d1),
                            (d2_coefficient, &d2),
                            noise_term,
                        ])
                    }
                }
            }
            (DpmAlgorithm::SdeDpmSolverPlusPlus, None) => {
                Err(Error::Internal("SDE-DPM-Solver++ step without noise".into()))
            }
        }
    }

    /// One per step plus the final one (float32), as diffusers' `scheduler.sigmas`.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for DpmSolverSinglestep {
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
        let source = VpPoint::at(self.sigmas[index]);
        let x0 = vp_denoised(self.prediction_type, model_output, sample, source.alpha, source.sigma)?;
        self.model_outputs.rotate_left(1);
        let newest = self.model_outputs.len() - 1;
        self.model_outputs[newest] = Some(x0.clone());
        let step_noise = if self.algorithm.is_stochastic() { Some(noise.sample_like(model_output)?) } else { None };
        // Lower the order while the history is short (img2img starting mid-group).
        let mut order = self.order_list.get(index).copied().unwrap_or(1);
        while order > 1 && self.model_outputs[self.model_outputs.len() - order].is_none() {
            order -= 1;
        }
        if order == 1 {
            self.group_start_sample = Some(sample.clone());
        }
        let start = self.group_start_sample.clone().unwrap_or_else(|| sample.clone());
        match order {
            1 => {
                let target = VpPoint::at(self.sigmas[index + 1]);
                dpm_solver_first_order_update(self.algorithm, &x0, &start, source, target, step_noise.as_ref())
            }
            2 => self.second_order_update(&start, index, step_noise.as_ref()),
            _ => self.third_order_update(&start, index, step_noise.as_ref()),
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        let point = VpPoint::at(self.sigmas[index]);
        linear_combination(&[(point.alpha, original), (point.sigma, noise)])
    }
}
