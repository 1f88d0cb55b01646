//! DPMSolverMultistepScheduler (diffusers `scheduling_dpmsolver_multistep.py`), the seed's
//! default: DPM-Solver++ and its SDE variant, orders 1–3, midpoint or Heun solver,
//! `lower_order_final`, `euler_at_final`, final sigma zero or σ_min, optional Karras sigmas.
//! The first-order update is shared with DPMSolverSinglestep.

use candle_core::Tensor;

use super::noise_schedule::{
    final_sigma, half_log_snr, linear_combination, solver_schedule, vp_alpha_sigma, vp_denoised, KarrasTimesteps,
    PredictionType,
};
use super::{NoiseSource, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};

/// `algorithm_type`: the data-prediction solvers diffusers recommends (the noise-prediction
/// `dpmsolver`/`sde-dpmsolver` are deprecated there and not offered here).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DpmAlgorithm {
    DpmSolverPlusPlus,
    SdeDpmSolverPlusPlus,
}

impl DpmAlgorithm {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "dpmsolver++" => Ok(DpmAlgorithm::DpmSolverPlusPlus),
            "sde-dpmsolver++" => Ok(DpmAlgorithm::SdeDpmSolverPlusPlus),
            other => Err(Error::Unsupported(format!(
                "DPM-Solver algorithm_type '{other}' (expected dpmsolver++ or sde-dpmsolver++)"
            ))),
        }
    }

    pub fn is_stochastic(self) -> bool {
        self == DpmAlgorithm::SdeDpmSolverPlusPlus
    }
}

/// `solver_type` of the second/third-order updates. diffusers maps the UniPC names
/// (logrho, bh1, bh2) to midpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DpmSolverType {
    Midpoint,
    Heun,
}

impl DpmSolverType {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "midpoint" | "logrho" | "bh1" | "bh2" => Ok(DpmSolverType::Midpoint),
            "heun" => Ok(DpmSolverType::Heun),
            other => Err(Error::Unsupported(format!("DPM-Solver solver_type '{other}' (expected midpoint or heun)"))),
        }
    }
}

/// α, σ and λ of one Karras sigma in the VP form.
#[derive(Debug, Clone, Copy)]
pub struct VpPoint {
    pub alpha: f32,
    pub sigma: f32,
    pub lambda: f32,
}

impl VpPoint {
    pub fn at(karras_sigma: f32) -> Self {
        let (alpha, sigma) = vp_alpha_sigma(karras_sigma);
        Self { alpha, sigma, lambda: half_log_snr(alpha, sigma) }
    }
}

/// `dpm_solver_first_order_update` (DPM-Solver++(1), i.e. DDIM in λ; SDE variant adds noise),
/// from `source` to `target`.
pub fn dpm_solver_first_order_update(
    algorithm: DpmAlgorithm,
    x0: &Tensor,
    sample: &Tensor,
    source: VpPoint,
    target: VpPoint,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let h = target.lambda - source.lambda;
    match (algorithm, noise) {
        // σ_t/σ_s·e^{−h}·x + α_t(1 − e^{−2h})·x0 + σ_t·sqrt(1 − e^{−2h})·z
        (DpmAlgorithm::SdeDpmSolverPlusPlus, Some(noise)) => {
            let decay = (-2.0 * h).exp();
            linear_combination(&[
                (target.sigma / source.sigma * (-h).exp(), sample),
                (target.alpha * (1.0 - decay), x0),
                (target.sigma * (1.0 - decay).sqrt(), noise),
            ])
        }
        (DpmAlgorithm::SdeDpmSolverPlusPlus, None) => {
            Err(Error::Internal("SDE-DPM-Solver++ step without noise".into()))
        }
        // σ_t/σ_s·x − α_t(e^{−h} − 1)·x0
        (DpmAlgorithm::DpmSolverPlusPlus, _) => {
            linear_combination(&[(target.sigma / source.sigma, sample), (-(target.alpha * ((-h).exp() - 1.0)), x0)])
        }
    }
}

/// The second-order DPM-Solver++ update from the sample at `source` to `target`, given the
/// first-order term `d0` and the divided difference `d1` (diffusers'
/// `multistep_dpm_solver_second_order_update` and `singlestep_dpm_solver_second_order_update`
/// share it; they differ in which point is the source and how d0/d1 are formed).
pub fn dpm_solver_second_order_update(
    algorithm: DpmAlgorithm,
    solver_type: DpmSolverType,
    sample: &Tensor,
    source: VpPoint,
    target: VpPoint,
    d0: &Tensor,
    d1: &Tensor,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let (t, h) = (target, target.lambda - source.lambda);
    match (algorithm, noise) {
        (DpmAlgorithm::DpmSolverPlusPlus, _) => {
            let b = t.alpha * ((-h).exp() - 1.0);
            let d1_coefficient = match solver_type {
                DpmSolverType::Midpoint => -(0.5 * b),
                DpmSolverType::Heun => t.alpha * (((-h).exp() - 1.0) / h + 1.0),
            };
            linear_combination(&[(t.sigma / source.sigma, sample), (-b, d0), (d1_coefficient, d1)])
        }
        (DpmAlgorithm::SdeDpmSolverPlusPlus, Some(noise)) => {
            let decay = (-2.0 * h).exp();
            let b = t.alpha * (1.0 - decay);
            let d1_coefficient = match solver_type {
                DpmSolverType::Midpoint => 0.5 * b,
                DpmSolverType::Heun => t.alpha * ((1.0 - decay) / (-2.0 * h) + 1.0),
            };
            linear_combination(&[
                (t.sigma / source.sigma * (-h).exp(), sample),
                (b, d0),
                (d1_coefficient, d1),
                (t.sigma * (1.0 - decay).sqrt(), noise),
            ])
        }
        (DpmAlgorithm::SdeDpmSolverPlusPlus, None) => Err(Error::Internal("SDE-DPM-Solver++ step without noise".into())),
    }
}

pub struct DpmSolverMultistep {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    algorithm: DpmAlgorithm,
    solver_type: DpmSolverType,
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
        if !(1..=3).contains(&config.solver_order) {
            return Err(Error::Unsupported(format!(
                "DPM-Solver++ solver_order {} (expected 1, 2 or 3)",
                config.solver_order
            )));
        }
        // `set_timesteps` rounds Karras timesteps except for the cosine schedule.
        let rounding = if config.beta_schedule == "squaredcos_cap_v2" {
            KarrasTimesteps::Fractional
        } else {
            KarrasTimesteps::Rounded
        };
        let schedule = solver_schedule(config, &config.timestep_spacing, steps, rounding)?;
        let mut sigmas: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        sigmas.push(final_sigma(config)?);
        Ok(Self {
            // torch.from_numpy(timesteps).to(int64) truncates fractional (cosine Karras) timesteps.
            timesteps: schedule.timesteps.iter().map(|t| t.trunc()).collect(),
            sigmas,
            prediction_type: PredictionType::parse(&config.prediction_type)?,
            algorithm: DpmAlgorithm::parse(&config.algorithm_type)?,
            solver_type: DpmSolverType::parse(&config.solver_type)?,
            solver_order: config.solver_order,
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            final_sigma_is_zero: config.final_sigmas_type.as_deref().unwrap_or("zero") == "zero",
            model_outputs: vec![None; config.solver_order],
            lower_order_nums: 0,
        })
    }

    fn history(&self, back: usize) -> Result<&Tensor> {
        self.model_outputs[self.solver_order - 1 - back]
            .as_ref()
            .ok_or_else(|| Error::Internal("DPM-Solver higher-order step without history".into()))
    }

    /// `multistep_dpm_solver_second_order_update`.
    fn second_order_update(&self, sample: &Tensor, index: usize, noise: Option<&Tensor>) -> Result<Tensor> {
        let (m0, m1) = (self.history(0)?, self.history(1)?);
        let t = VpPoint::at(self.sigmas[index + 1]);
        let s0 = VpPoint::at(self.sigmas[index]);
        let s1 = VpPoint::at(self.sigmas[index - 1]);
        let r0 = (s0.lambda - s1.lambda) / (t.lambda - s0.lambda);
        let d1 = ((m0 - m1)? * (1.0 / r0) as f64)?;
        dpm_solver_second_order_update(self.algorithm, self.solver_type, sample, s0, t, m0, &d1, noise)
    }

    /// `multistep_dpm_solver_third_order_update` (the same formula for both solver types).
    fn third_order_update(&self, sample: &Tensor, index: usize, noise: Option<&Tensor>) -> Result<Tensor> {
        let (m0, m1, m2) = (self.history(0)?, self.history(1)?, self.history(2)?);
        let t = VpPoint::at(self.sigmas[index + 1]);
        let s0 = VpPoint::at(self.sigmas[index]);
        let s1 = VpPoint::at(self.sigmas[index - 1]);
        let s2 = VpPoint::at(self.sigmas[index - 2]);
        let h = t.lambda - s0.lambda;
        let r0 = (s0.lambda - s1.lambda) / h;
        let r1 = (s1.lambda - s2.lambda) / h;
        let d0 = m0;
        let d1_0 = ((m0 - m1)? * (1.0 / r0) as f64)?;
        let d1_1 = ((m1 - m2)? * (1.0 / r1) as f64)?;
        let d1_difference = (&d1_0 - &d1_1)?;
        // D1 = D1_0 + r0/(r0 + r1)·(D1_0 − D1_1); D2 = 1/(r0 + r1)·(D1_0 − D1_1)
        let d1 = (&d1_0 + (&d1_difference * (r0 / (r0 + r1)) as f64)?)?;
        let d2 = (&d1_difference * (1.0 / (r0 + r1)) as f64)?;
        match (self.algorithm, noise) {
            (DpmAlgorithm::DpmSolverPlusPlus, _) => {
                let e = (-h).exp();
                linear_combination(&[
                    (t.sigma / s0.sigma, sample),
                    (-(t.alpha * (e - 1.0)), d0),
                    (t.alpha * ((e - 1.0) / h + 1.0), &d1),
                    (-(t.alpha * ((e - 1.0 + h) / (h * h) - 0.5)), &d2),
                ])
            }
            (DpmAlgorithm::SdeDpmSolverPlusPlus, Some(noise)) => {
                let decay = (-2.0 * h).exp();
                let two_h = 2.0 * h;
                linear_combination(&[
                    (t.sigma / s0.sigma * (-h).exp(), sample),
                    (t.alpha * (1.0 - decay), d0),
                    (t.alpha * ((1.0 - decay) / (-2.0 * h) + 1.0), &d1),
                    (t.alpha * ((1.0 - decay - two_h) / (two_h * two_h) - 0.5), &d2),
                    (t.sigma * (1.0 - decay).sqrt(), noise),
                ])
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

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let steps = self.timesteps.len();
        let lower_order_final = index == steps - 1
            && (self.euler_at_final || (self.lower_order_final && steps < 15) || self.final_sigma_is_zero);
        let lower_order_second = index + 2 == steps && self.lower_order_final && steps < 15;
        let source = VpPoint::at(self.sigmas[index]);
        let x0 = vp_denoised(self.prediction_type, model_output, sample, source.alpha, source.sigma)?;
        self.model_outputs.rotate_left(1);
        let newest = self.model_outputs.len() - 1;
        self.model_outputs[newest] = Some(x0.clone());
        // diffusers draws the SDE noise on every step, before choosing the order.
        let step_noise = if self.algorithm.is_stochastic() { Some(noise.sample_like(model_output)?) } else { None };
        let prev = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            let target = VpPoint::at(self.sigmas[index + 1]);
            dpm_solver_first_order_update(self.algorithm, &x0, sample, source, target, step_noise.as_ref())?
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order_update(sample, index, step_noise.as_ref())?
        } else {
            self.third_order_update(sample, index, step_noise.as_ref())?
        };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        Ok(prev)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        let point = VpPoint::at(self.sigmas[index]);
        linear_combination(&[(point.alpha, original), (point.sigma, noise)])
    }
}
