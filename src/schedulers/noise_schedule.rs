//! The math every sampler shares, reproducing diffusers' float32/float64 mix:
//! betas and ᾱ in float32 as torch computes them, timesteps and sigma interpolation
//! in float64 as numpy does, final tables in float32, and per-step scalars in float32
//! (diffusers keeps them as 0-d float32 tensors).

use candle_core::Tensor;

use super::SchedulerConfig;
use crate::error::{Error, FieldError, Result};

// ---------------------------------------------------------------------------------------------
// The training noise schedule
// ---------------------------------------------------------------------------------------------

/// `torch.linspace(start, end, steps, dtype=float32)` (ATen's CPU `linspace_kernel`: the first
/// half counts up from `start`, the second down from `end`; x86 builds of torch fuse
/// `start + step * i` into one fused multiply-add, which all 1000 SDXL betas confirm).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - i - 1) as f32, end) })
        .collect()
}

/// ᾱ_t: `alphas_cumprod` of diffusers' schedulers (float32).
pub fn alphas_cumprod(config: &SchedulerConfig) -> Result<Vec<f32>> {
    let n = config.num_train_timesteps;
    if n < 2 {
        return Err(Error::ModelLoad("scheduler num_train_timesteps must be at least 2".into()));
    }
    let betas: Vec<f32> = match config.beta_schedule.as_str() {
        "linear" => linspace_f32(config.beta_start as f32, config.beta_end as f32, n),
        // beta_start ** 0.5 is taken in float64 by Python, then torch casts the ends to float32.
        "scaled_linear" => linspace_f32(config.beta_start.sqrt() as f32, config.beta_end.sqrt() as f32, n)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        "squaredcos_cap_v2" => {
            // betas_for_alpha_bar with the cosine alpha_bar, computed in float64 then cast.
            let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
            (0..n)
                .map(|i| {
                    let t1 = i as f64 / n as f64;
                    let t2 = (i + 1) as f64 / n as f64;
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                })
                .collect()
        }
        other => return Err(Error::ModelLoad(format!("unsupported beta_schedule '{other}'"))),
    };
    // torch.cumprod of float32 on the CPU accumulates in float64 (acc_type), casting each output.
    let mut product = 1.0f64;
    Ok(betas
        .iter()
        .map(|beta| {
            product *= (1.0 - beta) as f64;
            product as f32
        })
        .collect())
}

/// σ_t = sqrt((1 − ᾱ_t) / ᾱ_t) for every training timestep (float32, as torch).
pub fn training_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|a| ((1.0 - a) / a).sqrt()).collect()
}

/// `np.log` of the training sigmas, kept in float32 as numpy does for a float32 array.
pub fn log_training_sigmas(training_sigmas: &[f32]) -> Vec<f32> {
    training_sigmas.iter().map(|s| s.ln()).collect()
}

// ---------------------------------------------------------------------------------------------
// numpy's rounding of ranges
// ---------------------------------------------------------------------------------------------

/// `np.linspace(start, stop, num)` in float64: `i * ((stop - start) / (num - 1)) + start`,
/// the last value set to `stop` exactly (numpy/_core/function_base.py).
pub fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    values[num - 1] = stop;
    values
}

/// `np.arange(start, stop, step)` in float64: numpy fills `start + i * delta` where
/// `delta = (start + step) - start`, which can differ from `step` in the last bit.
pub fn numpy_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let second = start + step;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// numpy's `round` (half to even).
pub fn round_half_even(x: f64) -> f64 {
    let rounded = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        rounded
    }
}

/// `np.interp(t, arange(len(table)), table)` in float64.
pub fn interpolate(table: &[f32], t: f64) -> f64 {
    let last = table.len() - 1;
    if t <= 0.0 {
        return table[0] as f64;
    }
    if t >= last as f64 {
        return table[last] as f64;
    }
    let low = t.floor() as usize;
    let frac = t - low as f64;
    let (a, b) = (table[low] as f64, table[low + 1] as f64);
    if frac == 0.0 {
        a
    } else {
        a + (b - a) * frac
    }
}

// ---------------------------------------------------------------------------------------------
// Timestep spacing
// ---------------------------------------------------------------------------------------------

fn unknown_spacing(spacing: &str) -> Error {
    Error::Validation(vec![FieldError::new(
        "scheduler_options.timestep_spacing",
        format!("'{spacing}' is not supported (expected linspace, leading or trailing)"),
    )])
}

/// One timestep per step, descending, as the Euler family's `set_timesteps` spaces them
/// (EulerDiscrete, EulerAncestral, Heun, KDPM2, KDPM2Ancestral, LMS; float32 values).
/// DDIM uses the same leading and trailing spacing.
pub fn spaced_timesteps(config: &SchedulerConfig, steps: usize) -> Result<Vec<f64>> {
    let train = config.num_train_timesteps;
    Ok(match config.timestep_spacing.as_str() {
        // np.linspace(0, train - 1, steps, dtype=np.float32)[::-1]
        "linspace" => {
            numpy_linspace(0.0, (train - 1) as f64, steps).into_iter().rev().map(|t| t as f32 as f64).collect()
        }
        // (np.arange(0, steps) * (train // steps)).round()[::-1] + steps_offset
        "leading" => {
            let ratio = train / steps;
            (0..steps).rev().map(|i| (i * ratio) as f64 + config.steps_offset as f64).collect()
        }
        // np.arange(train, 0, -train / steps).round() - 1
        "trailing" => numpy_arange(train as f64, 0.0, -(train as f64 / steps as f64))
            .into_iter()
            .map(|t| round_half_even(t) - 1.0)
            .collect(),
        other => return Err(unknown_spacing(other)),
    })
}

/// Integer timesteps of the multistep solvers (DPMSolverMultistep, UniPCMultistep; with
/// `linspace`, also DPMSolverSinglestep): spaced over `steps + 1` points, the last dropped.
/// `lambda_min_clipped` is -inf in every SDXL config, so the last usable timestep is
/// `num_train_timesteps` (scheduling_dpmsolver_multistep.py, `set_timesteps`).
pub fn solver_timesteps(config: &SchedulerConfig, spacing: &str, steps: usize) -> Result<Vec<f64>> {
    let train = config.num_train_timesteps;
    Ok(match spacing {
        // np.linspace(0, train - 1, steps + 1).round()[::-1][:-1]
        "linspace" => numpy_linspace(0.0, (train - 1) as f64, steps + 1)
            .into_iter()
            .rev()
            .take(steps)
            .map(round_half_even)
            .collect(),
        // (np.arange(0, steps + 1) * (train // (steps + 1))).round()[::-1][:-1] + steps_offset
        "leading" => {
            let ratio = train / (steps + 1);
            (0..=steps).rev().take(steps).map(|i| (i * ratio + config.steps_offset) as f64).collect()
        }
        // np.arange(train, 0, -train / steps).round() - 1
        "trailing" => numpy_arange(train as f64, 0.0, -(train as f64 / steps as f64))
            .into_iter()
            .map(|t| round_half_even(t) - 1.0)
            .collect(),
        other => return Err(unknown_spacing(other)),
    })
}

// ---------------------------------------------------------------------------------------------
// Sigma schedules
// ---------------------------------------------------------------------------------------------

/// Karras et al. (2022) sigmas, `_convert_to_karras` (float64, rho = 7).
pub fn karras_sigmas(sigma_max: f64, sigma_min: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    numpy_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// `_sigma_to_t`: the fractional training timestep whose log-sigma matches.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // cumsum(dists >= 0).argmax(): the last log-sigma at or below log_sigma (the table rises).
    let at_or_below = log_sigmas.iter().filter(|&&ls| log_sigma - ls as f64 >= 0.0).count();
    let low_idx = at_or_below.saturating_sub(1).min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx] as f64;
    let high = log_sigmas[high_idx] as f64;
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// `_sigma_to_t` as KDPM2 runs it on a float32 torch tensor: the same search, then the
/// weights and the blend in float32 (numpy's `log`/`maximum` hand torch tensors back).
pub fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f32 {
    let log_sigma = sigma.max(1e-10).ln();
    let at_or_below = log_sigmas.iter().filter(|&&ls| log_sigma - ls >= 0.0).count();
    let low_idx = at_or_below.saturating_sub(1).min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f32 + w * high_idx as f32
}

/// exp(lerp(ln a, ln b, 0.5)) elementwise in float32: the log-midpoints KDPM2 evaluates at
/// (`a.log().lerp(b.log(), 0.5).exp()`; ATen's lerp at weight 0.5 is `end − (end − start)·0.5`).
pub fn log_interpolated_sigmas(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter()
        .zip(b)
        .map(|(a, b)| {
            let (start, end) = (a.ln(), b.ln());
            (end - (end - start) * 0.5).exp()
        })
        .collect()
}

/// The fractional training timesteps of interpolated sigmas (KDPM2's `timesteps_interpol`,
/// float32 values).
pub fn interpolated_timesteps(config: &SchedulerConfig, sigmas: &[f32]) -> Result<Vec<f64>> {
    let log_sigmas = log_training_sigmas(&training_sigmas(&alphas_cumprod(config)?));
    Ok(sigmas.iter().map(|&s| sigma_to_t_f32(s, &log_sigmas) as f64).collect())
}

/// Whether timesteps recovered from Karras sigmas are rounded to integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KarrasTimesteps {
    Fractional,
    Rounded,
}

/// Timesteps (as float32 values, the UNet's input) and their sigmas (float64, before the
/// final sigma is appended and the table is cast to float32).
#[derive(Debug, Clone)]
pub struct SigmaSchedule {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
}

/// The Euler family's schedule (`set_timesteps` of EulerDiscrete, Heun, KDPM2, KDPM2Ancestral,
/// LMS): spaced timesteps, sigmas interpolated in the training table, or Karras sigmas
/// between the first and last of those with timesteps recovered by `_sigma_to_t`.
pub fn euler_family_schedule(
    config: &SchedulerConfig,
    steps: usize,
    karras_timesteps: KarrasTimesteps,
) -> Result<SigmaSchedule> {
    let table = training_sigmas(&alphas_cumprod(config)?);
    let timesteps = spaced_timesteps(config, steps)?;
    let sigmas: Vec<f64> = timesteps.iter().map(|&t| interpolate(&table, t)).collect();
    if !config.use_karras_sigmas {
        return Ok(SigmaSchedule { timesteps, sigmas });
    }
    let log_sigmas = log_training_sigmas(&table);
    let sigmas = karras_sigmas(sigmas[0], sigmas[sigmas.len() - 1], steps);
    let timesteps = sigmas
        .iter()
        .map(|&s| {
            let t = sigma_to_t(s, &log_sigmas);
            match karras_timesteps {
                KarrasTimesteps::Fractional => t as f32 as f64,
                KarrasTimesteps::Rounded => round_half_even(t),
            }
        })
        .collect();
    Ok(SigmaSchedule { timesteps, sigmas })
}

/// The multistep solvers' schedule (DPMSolverMultistep, DPMSolverSinglestep, UniPCMultistep):
/// integer timesteps with interpolated sigmas, or Karras sigmas over the whole training range
/// (σ_max = σ_999, σ_min = σ_0) with timesteps recovered by `_sigma_to_t`.
pub fn solver_schedule(
    config: &SchedulerConfig,
    spacing: &str,
    steps: usize,
    karras_timesteps: KarrasTimesteps,
) -> Result<SigmaSchedule> {
    let table = training_sigmas(&alphas_cumprod(config)?);
    let timesteps = solver_timesteps(config, spacing, steps)?;
    if !config.use_karras_sigmas {
        let sigmas = timesteps.iter().map(|&t| interpolate(&table, t)).collect();
        return Ok(SigmaSchedule { timesteps, sigmas });
    }
    let log_sigmas = log_training_sigmas(&table);
    let sigmas = karras_sigmas(table[table.len() - 1] as f64, table[0] as f64, steps);
    let timesteps = sigmas
        .iter()
        .map(|&s| {
            let t = sigma_to_t(s, &log_sigmas);
            match karras_timesteps {
                KarrasTimesteps::Fractional => t,
                KarrasTimesteps::Rounded => round_half_even(t),
            }
        })
        .collect();
    Ok(SigmaSchedule { timesteps, sigmas })
}

/// The sigma after the last step: `final_sigmas_type` "zero" (every SDXL default) or
/// "sigma_min" (σ of training timestep 0).
pub fn final_sigma(config: &SchedulerConfig) -> Result<f32> {
    match config.final_sigmas_type.as_deref().unwrap_or("zero") {
        "zero" => Ok(0.0),
        "sigma_min" => Ok(training_sigmas(&alphas_cumprod(config)?)[0]),
        other => Err(Error::Unsupported(format!("final_sigmas_type '{other}' (expected zero or sigma_min)"))),
    }
}

/// `init_noise_sigma` of the Euler family: σ_max for linspace/trailing spacing,
/// sqrt(σ_max² + 1) for leading (float32).
pub fn euler_family_init_noise_sigma(config: &SchedulerConfig, sigmas: &[f32]) -> f64 {
    let max_sigma = sigmas.iter().cloned().fold(0.0f32, f32::max);
    let value = if matches!(config.timestep_spacing.as_str(), "linspace" | "trailing") {
        max_sigma
    } else {
        (max_sigma * max_sigma + 1.0).sqrt()
    };
    value as f64
}

// ---------------------------------------------------------------------------------------------
// Variance-preserving (VP) form of a sigma
// ---------------------------------------------------------------------------------------------

/// (α_t, σ_t) of x_t = α_t·x0 + σ_t·ε for a Karras sigma: α_t = 1/sqrt(σ² + 1), σ_t = σ·α_t
/// (`_sigma_to_alpha_sigma_t`, float32).
pub fn vp_alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ_t = log α_t − log σ_t, the half log-SNR the DPM-Solver and UniPC steps are written in.
pub fn half_log_snr(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

// ---------------------------------------------------------------------------------------------
// What the model predicts, and tensor arithmetic rounded as torch rounds it
// ---------------------------------------------------------------------------------------------

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
            other => Err(Error::Unsupported(format!("prediction_type '{other}' (expected epsilon or v_prediction)"))),
        }
    }
}

/// `tensor * scalar` with the scalar in float32 (exact: candle multiplies by it as f32).
pub fn scale(tensor: &Tensor, factor: f32) -> Result<Tensor> {
    Ok(tensor.affine(factor as f64, 0.0)?)
}

/// `tensor / scalar` as a true float32 division, as torch divides by a 0-d tensor
/// (candle's `tensor / f64` multiplies by the reciprocal, a last-bit difference).
pub fn divide(tensor: &Tensor, divisor: f32) -> Result<Tensor> {
    let divisor = Tensor::new(divisor, tensor.device())?.to_dtype(tensor.dtype())?;
    Ok(tensor.broadcast_div(&divisor)?)
}

/// The Euler family's `scale_model_input`: x / sqrt(σ² + 1).
pub fn scale_to_unit_variance(sample: &Tensor, sigma: f32) -> Result<Tensor> {
    divide(sample, (sigma * sigma + 1.0).sqrt())
}

/// x0 predicted by a Karras-form (x = x0 + σ·ε) sampler from the model output
/// (`pred_original_sample` in EulerDiscrete/Heun/KDPM2/LMS `step`).
pub fn karras_denoised(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    Ok(match prediction {
        PredictionType::Epsilon => (sample - scale(model_output, sigma)?)?,
        // model_output * (-σ / sqrt(σ² + 1)) + sample / (σ² + 1)
        PredictionType::VPrediction => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            (scale(model_output, c_out)? + divide(sample, sigma * sigma + 1.0)?)?
        }
    })
}

/// x0 predicted by a VP-form (x = α·x0 + σ·ε) sampler: DDIM, and the DPM-Solver/UniPC
/// `convert_model_output` with `predict_x0`.
pub fn vp_denoised(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    alpha: f32,
    sigma: f32,
) -> Result<Tensor> {
    Ok(match prediction {
        // (sample - σ·ε) / α
        PredictionType::Epsilon => divide(&(sample - scale(model_output, sigma)?)?, alpha)?,
        // α·sample - σ·v
        PredictionType::VPrediction => (scale(sample, alpha)? - scale(model_output, sigma)?)?,
    })
}

/// (sample − x0) / σ: the probability-flow ODE's derivative in the Karras form.
pub fn karras_derivative(sample: &Tensor, denoised: &Tensor, sigma: f32) -> Result<Tensor> {
    divide(&(sample - denoised)?, sigma)
}

/// Σ cᵢ·tᵢ accumulated left to right, the way diffusers' update formulas evaluate
/// (`a * x - b * y` is `a·x + (−b)·y` exactly in IEEE arithmetic).
pub fn linear_combination(terms: &[(f32, &Tensor)]) -> Result<Tensor> {
    let mut terms = terms.iter();
    let Some((first_coefficient, first)) = terms.next() else {
        return Err(Error::Internal("linear_combination of no terms".into()));
    };
    let mut sum = scale(first, *first_coefficient)?;
    for (coefficient, tensor) in terms {
        sum = (sum + scale(tensor, *coefficient)?)?;
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdxl_leading_timesteps_match_diffusers() {
        let config = SchedulerConfig::default();
        assert_eq!(spaced_timesteps(&config, 5).unwrap(), vec![801.0, 601.0, 401.0, 201.0, 1.0]);
        let trailing = SchedulerConfig { timestep_spacing: "trailing".into(), ..Default::default() };
        assert_eq!(spaced_timesteps(&trailing, 4).unwrap(), vec![999.0, 749.0, 499.0, 249.0]);
    }

    #[test]
    fn solver_timesteps_round_numpy_linspace_like_diffusers() {
        let config = SchedulerConfig::default();
        let linspace = solver_timesteps(&config, "linspace", 10).unwrap();
        assert_eq!(linspace, vec![999.0, 899.0, 799.0, 699.0, 599.0, 500.0, 400.0, 300.0, 200.0, 100.0]);
        assert_eq!(solver_timesteps(&config, "leading", 4).unwrap(), vec![801.0, 601.0, 401.0, 201.0]);
        assert_eq!(solver_timesteps(&config, "trailing", 3).unwrap(), vec![999.0, 666.0, 332.0]);
    }

    #[test]
    fn numpy_arange_steps_from_the_rounded_second_value() {
        // np.arange(1000, 0, -1000/3): delta = (1000 - 333.33…) - 1000, not -333.33… itself.
        let values = numpy_arange(1000.0, 0.0, -1000.0 / 3.0);
        assert_eq!(values.len(), 3);
        assert_eq!(values[2], 1000.0 + 2.0 * ((1000.0 - 1000.0 / 3.0) - 1000.0));
    }

    #[test]
    fn alphas_cumprod_is_monotone_and_matches_known_sdxl_values() {
        let ac = alphas_cumprod(&SchedulerConfig::default()).unwrap();
        assert!((ac[0] - 0.99915).abs() < 1e-6, "{}", ac[0]);
        assert!((ac[999] - 0.0046).abs() < 1e-4, "{}", ac[999]);
        let sigmas = training_sigmas(&ac);
        assert!((sigmas[999] - 14.6146).abs() < 1e-3, "{}", sigmas[999]);
    }
}
