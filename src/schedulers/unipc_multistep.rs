//! UniPCMultistepScheduler (diffusers `scheduling_unipc_multistep.py`): the UniPC
//! predictor–corrector (Zhao et al. 2023) on data predictions (`predict_x0`), B(h) of the
//! `bh2` variant (or `bh1`), orders 1–3, `lower_order_final`, no disabled correctors.
//! Each step first corrects the previous step's result with the new model output (UniC),
//! then predicts the next sample (UniP).

use candle_core::Tensor;

use super::dpm_solver_multistep::VpPoint;
use super::noise_schedule::{
    divide, final_sigma, linear_combination, solver_schedule, vp_denoised, KarrasTimesteps, PredictionType,
};
use super::{NoiseSource, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};

/// `solver_type`: B(h) = h (bh1) or e^h − 1 (bh2). diffusers maps the DPM-Solver names
/// (midpoint, heun, logrho) to bh2.
#[derive(Debug, Clone, Copy, PartialEq)]
enum UniPcVariant {
    Bh1,
    Bh2,
}

pub struct UniPcMultistep {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    variant: UniPcVariant,
    solver_order: usize,
    lower_order_final: bool,
    /// Converted (x0) model outputs of the last `solver_order` steps, newest last.
    model_outputs: Vec<Option<Tensor>>,
    lower_order_nums: usize,
    /// The sample the previous prediction started from, and that prediction's order.
    last_sample: Option<Tensor>,
    last_order: usize,
}

/// Solves the small dense system `matrix · x = rhs` in float32 as `torch.linalg.solve` does on
/// x86 (LAPACK `sgesv` from MKL): LU with partial pivoting, the column scaled by the pivot's
/// reciprocal, fused multiply-adds in the updates, back substitution multiplying by the
/// diagonal's reciprocal (the combination that reproduces torch's last bits on UniPC's systems).
fn solve_linear_system(mut matrix: Vec<Vec<f32>>, mut rhs: Vec<f32>) -> Result<Vec<f32>> {
    let n = rhs.len();
    for column in 0..n {
        let pivot_row =
            (column..n).fold(
                column,
                |best, row| if matrix[row][column].abs() > matrix[best][column].abs() { row } else { best },
            );
        if matrix[pivot_row][column] == 0.0 {
            return Err(Error::Internal("UniPC coefficient system is singular".into()));
        }
        matrix.swap(column, pivot_row);
        rhs.swap(column, pivot_row);
        let reciprocal = 1.0 / matrix[column][column];
        for row in column + 1..n {
            matrix[row][column] *= reciprocal;
            for k in column + 1..n {
                matrix[row][k] = (-matrix[row][column]).mul_add(matrix[column][k], matrix[row][k]);
            }
        }
    }
    for column in 0..n {
        for row in column + 1..n {
            rhs[row] = (-matrix[row][column]).mul_add(rhs[column], rhs[row]);
        }
    }
    for column in (0..n).rev() {
        rhs[column] *= 1.0 / matrix[column][column];
        for row in 0..column {
            rhs[row] = (-rhs[column]).mul_add(matrix[row][column], rhs[row]);
        }
    }
    Ok(rhs)
}

/// The coefficients both UniPC updates share, from step size h (`multistep_uni_p_bh_update`
/// and `multistep_uni_c_bh_update`): h·φ₁ = e^{−h} − 1, B(h), the powers of the ratios r_k
/// (with r = 1 appended) as R, and b_i = h·φ_{i}·i!/B(h).
struct UniPcCoefficients {
    h_phi_1: f32,
    b_h: f32,
    r_matrix: Vec<Vec<f32>>,
    b: Vec<f32>,
}

/// e^x − 1 rounded correctly to float32, as torch's `expm1` gives it (glibc's `expm1f` is off
/// by one ulp for some of UniPC's step sizes, e.g. x = −0.5077839).
fn expm1_f32(x: f32) -> f32 {
    (x as f64).exp_m1() as f32
}

impl UniPcCoefficients {
    fn new(variant: UniPcVariant, h: f32, ratios: &[f32], order: usize) -> Self {
        let hh = -h; // predict_x0
        let h_phi_1 = expm1_f32(hh);
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let b_h = match variant {
            UniPcVariant::Bh1 => hh,
            UniPcVariant::Bh2 => expm1_f32(hh),
        };
        let mut rks = ratios.to_vec();
        rks.push(1.0);
        let mut factorial = 1u64;
        let mut r_matrix = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            r_matrix.push(rks.iter().map(|&rk| rk.powi(i as i32 - 1)).collect());
            b.push(h_phi_k * factorial as f32 / b_h);
            factorial *= i as u64 + 1;
            h_phi_k = h_phi_k / hh - (1.0 / factorial as f64) as f32;
        }
        Self { h_phi_1, b_h, r_matrix, b }
    }
}

impl UniPcMultistep {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        if !(1..=3).contains(&config.solver_order) {
            return Err(Error::Unsupported(format!("UniPC solver_order {} (expected 1, 2 or 3)", config.solver_order)));
        }
        let variant = match config.solver_type.as_str() {
            "bh1" => UniPcVariant::Bh1,
            "bh2" | "midpoint" | "heun" | "logrho" => UniPcVariant::Bh2,
            other => return Err(Error::Unsupported(format!("UniPC solver_type '{other}' (expected bh1 or bh2)"))),
        };
        let schedule = solver_schedule(config, &config.timestep_spacing, steps, KarrasTimesteps::Rounded)?;
        let mut sigmas: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
        // With Karras sigmas "sigma_min" ends on the last Karras sigma rather than σ of timestep 0.
        let last = match (config.use_karras_sigmas, config.final_sigmas_type.as_deref()) {
            (true, Some("sigma_min")) => sigmas[sigmas.len() - 1],
            _ => final_sigma(config)?,
        };
        sigmas.push(last);
        Ok(Self {
            timesteps: schedule.timesteps,
            sigmas,
            prediction_type: PredictionType::parse(&config.prediction_type)?,
            variant,
            solver_order: config.solver_order,
            lower_order_final: config.lower_order_final,
            model_outputs: vec![None; config.solver_order],
            lower_order_nums: 0,
            last_sample: None,
            last_order: 1,
        })
    }

    /// The converted model output `back` steps before the newest.
    fn history(&self, back: usize) -> Result<&Tensor> {
        self.model_outputs[self.solver_order - 1 - back]
            .as_ref()
            .ok_or_else(|| Error::Internal("UniPC higher-order update without history".into()))
    }

    /// Ratios r_k = (λ_{s_k} − λ_{s0})/h and the differences D1_k = (m_k − m0)/r_k of the
    /// `order − 1` older outputs; `sigma_index(k)` is the sigma index of history entry k.
    fn differences(
        &self,
        order: usize,
        h: f32,
        s0: VpPoint,
        sigma_index: impl Fn(usize) -> usize,
    ) -> Result<(Vec<f32>, Vec<Tensor>)> {
        let m0 = self.history(0)?;
        let mut ratios = Vec::with_capacity(order);
        let mut differences = Vec::with_capacity(order);
        for i in 1..order {
            let si = VpPoint::at(self.sigmas[sigma_index(i)]);
            let rk = (si.lambda - s0.lambda) / h;
            differences.push(divide(&(self.history(i)? - m0)?, rk)?);
            ratios.push(rk);
        }
        Ok((ratios, differences))
    }

    /// UniP (`multistep_uni_p_bh_update`): predicts the sample at step `index + 1`.
    fn predict(&self, sample: &Tensor, index: usize, order: usize) -> Result<Tensor> {
        let m0 = self.history(0)?;
        let t = VpPoint::at(self.sigmas[index + 1]);
        let s0 = VpPoint::at(self.sigmas[index]);
        let h = t.lambda - s0.lambda;
        let (ratios, differences) = self.differences(order, h, s0, |i| index - i)?;
        let c = UniPcCoefficients::new(self.variant, h, &ratios, order);
        let x_t = linear_combination(&[(t.sigma / s0.sigma, sample), (-(t.alpha * c.h_phi_1), m0)])?;
        if differences.is_empty() {
            return Ok(x_t);
        }
        let rhos = if order == 2 {
            vec![0.5]
        } else {
            let reduced: Vec<Vec<f32>> = c.r_matrix[..order - 1].iter().map(|row| row[..order - 1].to_vec()).collect();
            solve_linear_system(reduced, c.b[..order - 1].to_vec())?
        };
        let terms: Vec<(f32, &Tensor)> = rhos.iter().copied().zip(differences.iter()).collect();
        let predicted_residual = linear_combination(&terms)?;
        linear_combination(&[(1.0, &x_t), (-(t.alpha * c.b_h), &predicted_residual)])
    }

    /// UniC (`multistep_uni_c_bh_update`): corrects the sample at `index` (predicted from
    /// `last_sample` at `index − 1`) with the model output `this_x0` evaluated on it.
    fn correct(&self, this_x0: &Tensor, last_sample: &Tensor, index: usize, order: usize) -> Result<Tensor> {
        let m0 = self.history(0)?;
        let t = VpPoint::at(self.sigmas[index]);
        let s0 = VpPoint::at(self.sigmas[index - 1]);
        let h = t.lambda - s0.lambda;
        let (ratios, differences) = self.differences(order, h, s0, |i| index - (i + 1))?;
        let c = UniPcCoefficients::new(self.variant, h, &ratios, order);
        let rhos = if order == 1 { vec![0.5] } else { solve_linear_system(c.r_matrix, c.b)? };
        let x_t = linear_combination(&[(t.sigma / s0.sigma, last_sample), (-(t.alpha * c.h_phi_1), m0)])?;
        let newest_difference = (this_x0 - m0)?;
        let last_rho = rhos[rhos.len() - 1];
        let correction = if differences.is_empty() {
            linear_combination(&[(last_rho, &newest_difference)])?
        } else {
            let mut terms: Vec<(f32, &Tensor)> =
                rhos[..rhos.len() - 1].iter().copied().zip(differences.iter()).collect();
            let corrected_residual = linear_combination(&terms)?;
            terms = vec![(1.0, &corrected_residual), (last_rho, &newest_difference)];
            linear_combination(&terms)?
        };
        linear_combination(&[(1.0, &x_t), (-(t.alpha * c.b_h), &correction)])
    }

    /// One per step plus the final one (float32), as diffusers' `scheduler.sigmas`.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for UniPcMultistep {
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let point = VpPoint::at(self.sigmas[index]);
        let x0 = vp_denoised(self.prediction_type, model_output, sample, point.alpha, point.sigma)?;
        let sample = match (&self.last_sample, index) {
            (Some(last_sample), 1..) => self.correct(&x0, last_sample, index, self.last_order)?,
            _ => sample.clone(),
        };
        self.model_outputs.rotate_left(1);
        let newest = self.model_outputs.len() - 1;
        self.model_outputs[newest] = Some(x0);
        let steps = self.timesteps.len();
        let order = if self.lower_order_final { self.solver_order.min(steps - index) } else { self.solver_order };
        let order = order.min(self.lower_order_nums + 1);
        let prev_sample = self.predict(&sample, index, order)?;
        self.last_sample = Some(sample);
        self.last_order = order;
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        Ok(prev_sample)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        let point = VpPoint::at(self.sigmas[index]);
        linear_combination(&[(point.alpha, original), (point.sigma, noise)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_systems_are_solved_with_pivoting() {
        // [[0.5, 1, 0], [1, 1, 1], [2, 0, 1]] · [1, 2, 3] = [2.5, 6, 5]: the first column pivots on row 3.
        let matrix = vec![vec![0.5, 1.0, 0.0], vec![1.0, 1.0, 1.0], vec![2.0, 0.0, 1.0]];
        let solution = solve_linear_system(matrix, vec![2.5, 6.0, 5.0]).unwrap();
        for (got, want) in solution.iter().zip([1.0f32, 2.0, 3.0]) {
            assert!((got - want).abs() < 1e-6, "{solution:?}");
        }
        assert!(solve_linear_system(vec![vec![1.0, 1.0], vec![1.0, 1.0]], vec![1.0, 2.0]).is_err());
    }
}
