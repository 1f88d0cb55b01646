//! LMSDiscreteScheduler (diffusers `scheduling_lms_discrete.py`): the linear multistep method
//! of k-diffusion's `sample_lms`, order 4 (diffusers' `step(order=4)` default, which the
//! pipeline never changes). Each coefficient is ∫ of a Lagrange basis polynomial over
//! [σ_i, σ_{i+1}], which diffusers integrates with `scipy.integrate.quad`; we run QUADPACK's
//! 21-point Gauss–Kronrod rule, the first (and, for these cubics, accepted) estimate of quad.

use std::collections::VecDeque;

use candle_core::Tensor;

use super::noise_schedule::{
    euler_family_init_noise_sigma, euler_family_schedule, final_sigma, karras_denoised, karras_derivative, scale,
    scale_to_unit_variance, KarrasTimesteps, PredictionType,
};
use super::{NoiseSource, Scheduler, SchedulerConfig};
use crate::error::Result;

/// diffusers' default `order` argument of `LMSDiscreteScheduler.step`.
const LMS_ORDER: usize = 4;

pub struct LmsDiscrete {
    timesteps: Vec<f64>,
    /// One per step plus the final one (float32).
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    init_noise_sigma: f64,
    /// (sample − x0)/σ of the last `LMS_ORDER` steps, newest first.
    derivatives: VecDeque<Tensor>,
}

/// Abscissae of QUADPACK's 21-point Kronrod rule on [−1, 1] (`dqk21` `xgk`): the odd entries
/// (1-based even) are the 10-point Gauss nodes, the last is the centre.
const KRONROD_21_NODES: [f64; 11] = [
    0.995657163025808080735527280689003,
    0.973906528517171720077964012084452,
    0.930157491355708226001207180059508,
    0.865063366688984510732096688423493,
    0.780817726586416897063717578345042,
    0.679409568299024406234327365114874,
    0.562757134668604683339000099272694,
    0.433395394129247190799265943165784,
    0.294392862701460198131126603103866,
    0.148874338981631210884826001129720,
    0.000000000000000000000000000000000,
];

/// Weights of the 21-point Kronrod rule (`dqk21` `wgk`).
const KRONROD_21_WEIGHTS: [f64; 11] = [
    0.011694638867371874278064396062192,
    0.032558162307964727478818972459390,
    0.054755896574351996031381300244580,
    0.075039674810919952767043140916190,
    0.093125454583697605535065465083366,
    0.109387158802297641899210590325805,
    0.123491976262065851077982247809437,
    0.134709217311473325928054001771707,
    0.142775938577060080797094273138717,
    0.147739104901338491374841515972068,
    0.149445554002916905664936468389821,
];

/// ∫_a^b f by QUADPACK's `dqk21`, summing in its order (centre, the Gauss nodes, then the
/// Kronrod-only nodes). Exact for polynomials up to degree 31.
fn gauss_kronrod_21(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    let centre = 0.5 * (a + b);
    let half_length = 0.5 * (b - a);
    let mut sum = KRONROD_21_WEIGHTS[10] * f(centre);
    for j in (1..10).step_by(2).chain((0..10).step_by(2)) {
        let offset = half_length * KRONROD_21_NODES[j];
        sum += KRONROD_21_WEIGHTS[j] * (f(centre - offset) + f(centre + offset));
    }
    sum * half_length
}

impl LmsDiscrete {
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
            derivatives: VecDeque::with_capacity(LMS_ORDER),
        })
    }

    /// `get_lms_coefficient(order, t, current_order)`: ∫_{σ_t}^{σ_{t+1}} Π_{k≠j} (τ − σ_{t−k})/(σ_{t−j} − σ_{t−k}) dτ.
    /// diffusers evaluates the product on float32 tensors (τ rounded to float32), quad in float64.
    fn lms_coefficient(&self, order: usize, t: usize, current_order: usize) -> f64 {
        let sigmas = &self.sigmas;
        let basis = |tau: f64| -> f64 {
            let tau = tau as f32;
            let mut product = 1.0f32;
            for k in (0..order).filter(|&k| k != current_order) {
                product *= (tau - sigmas[t - k]) / (sigmas[t - current_order] - sigmas[t - k]);
            }
            product as f64
        };
        gauss_kronrod_21(basis, sigmas[t] as f64, sigmas[t + 1] as f64)
    }

    /// One per step plus the final one (float32), as diffusers' `scheduler.sigmas`.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for LmsDiscrete {
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
        self.derivatives.push_front(karras_derivative(sample, &denoised, sigma)?);
        self.derivatives.truncate(LMS_ORDER);
        // As diffusers: the order follows the step index even when an img2img start left fewer
        // derivatives (zip() then drops the coefficients without one).
        let order = (index + 1).min(LMS_ORDER);
        // sample + Σ_j coeff_j · derivative_j, newest derivative first, summed left to right.
        let mut update: Option<Tensor> = None;
        for (current_order, derivative) in self.derivatives.iter().take(order).enumerate() {
            let term = scale(derivative, self.lms_coefficient(order, index, current_order) as f32)?;
            update = Some(match update {
                None => term,
                Some(sum) => (sum + term)?,
            });
        }
        match update {
            Some(update) => Ok((sample + update)?),
            None => Ok(sample.clone()),
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        Ok((original + scale(noise, self.sigmas[index])?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_kronrod_21_integrates_cubics_exactly_in_either_direction() {
        let cubic = |x: f64| 2.0 * x * x * x - x + 0.5;
        // ∫_0^2 (2x³ − x + 1/2) dx = 8 − 2 + 1 = 7
        assert!((gauss_kronrod_21(cubic, 0.0, 2.0) - 7.0).abs() < 1e-13);
        assert!((gauss_kronrod_21(cubic, 2.0, 0.0) + 7.0).abs() < 1e-13);
    }
}
