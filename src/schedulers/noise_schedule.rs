//! The math every sampler shares, reproducing diffusers' float32/float64 mix:
//! betas and ᾱ in float32 as torch computes them, timesteps and sigma interpolation
//! in float64 as numpy does, final tables in float32.

use super::SchedulerConfig;
use crate::error::{Error, Result};

/// `torch.linspace(start, end, steps, dtype=float32)` (ATen's CPU linspace kernel:
/// the first half counts up from `start`, the second down from `end`).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 })
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
        "scaled_linear" => linspace_f32((config.beta_start as f32).sqrt(), (config.beta_end as f32).sqrt(), n)
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
    let mut product = 1.0f32;
    Ok(betas
        .iter()
        .map(|beta| {
            product *= 1.0 - beta;
            product
        })
        .collect())
}

/// σ_t = sqrt((1 − ᾱ_t) / ᾱ_t) for every training timestep (float32, as torch).
pub fn training_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|a| ((1.0 - a) / a).sqrt()).collect()
}

/// Timesteps for Euler-family schedulers (`EulerDiscreteScheduler.set_timesteps`):
/// one per step, descending, as float.
pub fn spaced_timesteps(config: &SchedulerConfig, steps: usize) -> Result<Vec<f64>> {
    let train = config.num_train_timesteps;
    let timesteps: Vec<f64> = match config.timestep_spacing.as_str() {
        "linspace" => {
            // np.linspace(0, train-1, steps, dtype=float32)
            let end = (train - 1) as f64;
            (0..steps)
                .rev()
                .map(|i| if steps == 1 { 0.0 } else { ((end * i as f64) / (steps - 1) as f64) as f32 as f64 })
                .collect()
        }
        "leading" => {
            let ratio = train / steps;
            (0..steps).rev().map(|i| (i * ratio) as f64 + config.steps_offset as f64).collect()
        }
        "trailing" => {
            let ratio = train as f64 / steps as f64;
            let mut values = Vec::new();
            let mut t = train as f64;
            while t > 0.0 {
                values.push(round_half_even(t) - 1.0);
                t -= ratio;
            }
            values
        }
        other => {
            return Err(Error::Validation(vec![crate::error::FieldError::new(
                "scheduler_options.timestep_spacing",
                format!("'{other}' is not supported (expected linspace, leading or trailing)"),
            )]))
        }
    };
    Ok(timesteps)
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

/// Karras et al. (2022) sigmas, `_convert_to_karras` (float64, rho = 7).
pub fn karras_sigmas(sigma_max: f64, sigma_min: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    (0..steps)
        .map(|i| {
            let ramp = if steps == 1 { 0.0 } else { i as f64 / (steps - 1) as f64 };
            (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho)
        })
        .collect()
}

/// `_sigma_to_t`: the fractional training timestep whose log-sigma matches.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let count_at_or_below = log_sigmas.iter().filter(|&&ls| log_sigma - ls as f64 >= 0.0).count();
    // cumsum(dists >= 0).argmax(): index of the last log-sigma ≤ log_sigma (first index of the max count).
    let low_idx = if count_at_or_below == 0 {
        0
    } else {
        let mut running = 0;
        let mut idx = 0;
        for (i, &ls) in log_sigmas.iter().enumerate() {
            if log_sigma - ls as f64 >= 0.0 {
                running += 1;
                if running == count_at_or_below {
                    idx = i;
                    break;
                }
            }
        }
        idx
    }
    .min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx] as f64;
    let high = log_sigmas[high_idx] as f64;
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
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
    fn alphas_cumprod_is_monotone_and_matches_known_sdxl_values() {
        let ac = alphas_cumprod(&SchedulerConfig::default()).unwrap();
        assert!((ac[0] - 0.99915).abs() < 1e-6, "{}", ac[0]);
        assert!((ac[999] - 0.0046). abs() < 1e-4, "{}", ac[999]);
        let sigmas = training_sigmas(&ac);
        assert!((sigmas[999] - 14.6146).abs() < 1e-3, "{}", sigmas[999]);
    }
}
