//! Samplers, one per file behind the `Scheduler` trait, all built from one
//! `SchedulerConfig` (diffusers' `scheduler_config.json`) plus per-request overrides.
//! Shared math (beta schedules, timestep spacing, sigma tables, Karras) is in `noise_schedule.rs`.

pub mod capabilities;
pub mod ddim;
pub mod dpm_solver_multistep;
pub mod dpm_solver_singlestep;
pub mod euler_ancestral_discrete;
pub mod euler_discrete;
pub mod heun_discrete;
pub mod k_dpm_2_ancestral_discrete;
pub mod k_dpm_2_discrete;
pub mod lms_discrete;
pub mod noise_schedule;
pub mod unipc_multistep;

use candle_core::Tensor;
use serde::Deserialize;

use crate::api::request::SchedulerOptions;
use crate::error::{Error, FieldError, Result};

/// The ten schedulers of the seed's scheduler_manager, by diffusers class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulerKind {
    #[default]
    DpmSolverMultistep,
    DpmSolverSinglestep,
    Ddim,
    EulerDiscrete,
    EulerAncestralDiscrete,
    HeunDiscrete,
    Kdpm2Discrete,
    Kdpm2AncestralDiscrete,
    LmsDiscrete,
    UniPcMultistep,
}

/// (kind, diffusers class name, C# enum name, friendly aliases).
const SCHEDULER_NAMES: [(SchedulerKind, &str, &str, &[&str]); 10] = [
    (SchedulerKind::DpmSolverMultistep, "DPMSolverMultistepScheduler", "DPMSolverMultistep", &["dpm++2m", "dpm++ 2m", "dpmpp_2m", "dpm++2m karras", "dpm++ 2m karras", "dpm++2m sde", "dpm++ 2m sde", "dpm++2m sde karras"]),
    (SchedulerKind::DpmSolverSinglestep, "DPMSolverSinglestepScheduler", "DPMSolverSinglestep", &["dpm++2s", "dpm++ 2s", "dpmpp_2s"]),
    (SchedulerKind::Ddim, "DDIMScheduler", "DDIM", &["ddim"]),
    (SchedulerKind::EulerDiscrete, "EulerDiscreteScheduler", "EulerDiscrete", &["euler", "euler karras"]),
    (SchedulerKind::EulerAncestralDiscrete, "EulerAncestralDiscreteScheduler", "EulerAncestral", &["euler_a", "euler a", "euler ancestral"]),
    (SchedulerKind::HeunDiscrete, "HeunDiscreteScheduler", "HeunDiscrete", &["heun"]),
    (SchedulerKind::Kdpm2Discrete, "KDPM2DiscreteScheduler", "KDPM2Discrete", &["dpm2", "kdpm2"]),
    (SchedulerKind::Kdpm2AncestralDiscrete, "KDPM2AncestralDiscreteScheduler", "KDPM2Ancestral", &["dpm2_a", "dpm2 a", "kdpm2_a"]),
    (SchedulerKind::LmsDiscrete, "LMSDiscreteScheduler", "LMSDiscrete", &["lms"]),
    (SchedulerKind::UniPcMultistep, "UniPCMultistepScheduler", "UniPCMultistep", &["unipc", "uni_pc"]),
];

impl SchedulerKind {
    /// Accepts the diffusers class name, the C# enum name or a friendly alias (any case).
    pub fn from_name(name: &str) -> std::result::Result<Self, String> {
        let wanted = name.trim().to_ascii_lowercase();
        for (kind, class, enum_name, aliases) in SCHEDULER_NAMES {
            if class.eq_ignore_ascii_case(&wanted)
                || enum_name.eq_ignore_ascii_case(&wanted)
                || aliases.iter().any(|a| *a == wanted)
            {
                return Ok(kind);
            }
        }
        let valid: Vec<&str> = SCHEDULER_NAMES.iter().map(|(_, class, _, _)| *class).collect();
        Err(format!("unknown scheduler '{name}'; valid: {}", valid.join(", ")))
    }

    /// Overrides a friendly alias implies (`dpm++2m karras` turns Karras sigmas on).
    pub fn alias_overrides(name: &str) -> SchedulerOverrides {
        let lower = name.to_ascii_lowercase();
        SchedulerOverrides {
            use_karras_sigmas: lower.contains("karras").then_some(true),
            algorithm_type: lower.contains("sde").then(|| "sde-dpmsolver++".to_string()),
            ..Default::default()
        }
    }

    /// The AUTOMATIC1111 sampler name and schedule type for image metadata (`Sampler: DPM++ 2M,
    /// Schedule type: Karras`).
    pub fn a1111_name(self, karras: bool, algorithm_type: Option<&str>) -> (&'static str, Option<&'static str>) {
        let sampler = match self {
            SchedulerKind::DpmSolverMultistep if algorithm_type.is_some_and(|a| a.starts_with("sde")) => "DPM++ 2M SDE",
            SchedulerKind::DpmSolverMultistep => "DPM++ 2M",
            SchedulerKind::DpmSolverSinglestep => "DPM++ 2S",
            SchedulerKind::Ddim => "DDIM",
            SchedulerKind::EulerDiscrete => "Euler",
            SchedulerKind::EulerAncestralDiscrete => "Euler a",
            SchedulerKind::HeunDiscrete => "Heun",
            SchedulerKind::Kdpm2Discrete => "DPM2",
            SchedulerKind::Kdpm2AncestralDiscrete => "DPM2 a",
            SchedulerKind::LmsDiscrete => "LMS",
            SchedulerKind::UniPcMultistep => "UniPC",
        };
        (sampler, karras.then_some("Karras"))
    }

    pub fn class_name(self) -> &'static str {
        SCHEDULER_NAMES.iter().find(|(kind, ..)| *kind == self).map(|(_, class, ..)| *class).unwrap_or("?")
    }
}

/// diffusers' scheduler_config.json fields we honour; defaults are SDXL base's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub steps_offset: usize,
    pub timestep_spacing: String,
    pub prediction_type: String,
    pub use_karras_sigmas: bool,
    pub interpolation_type: String,
    pub final_sigmas_type: Option<String>,
    pub solver_order: usize,
    pub algorithm_type: String,
    pub solver_type: String,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub eta: f64,
    /// DDIM: ᾱ after the last step is 1 (true) or ᾱ_0 (false, SDXL's config).
    pub set_alpha_to_one: bool,
    /// DDIM and Heun: clamp the predicted x0 to ±`clip_sample_range`.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            steps_offset: 1,
            timestep_spacing: "leading".into(),
            prediction_type: "epsilon".into(),
            use_karras_sigmas: false,
            interpolation_type: "linear".into(),
            final_sigmas_type: None,
            solver_order: 2,
            algorithm_type: "dpmsolver++".into(),
            solver_type: "midpoint".into(),
            lower_order_final: true,
            euler_at_final: false,
            eta: 0.0,
            set_alpha_to_one: false,
            clip_sample: false,
            clip_sample_range: 1.0,
        }
    }
}

impl SchedulerConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::ModelLoad(format!("scheduler_config.json: {e}")))
    }

    fn with_overrides(&self, overrides: &SchedulerOverrides) -> Self {
        let mut config = self.clone();
        if let Some(v) = overrides.use_karras_sigmas {
            config.use_karras_sigmas = v;
        }
        if let Some(v) = &overrides.timestep_spacing {
            config.timestep_spacing = v.clone();
        }
        if let Some(v) = &overrides.prediction_type {
            config.prediction_type = v.clone();
        }
        if let Some(v) = &overrides.algorithm_type {
            config.algorithm_type = v.clone();
        }
        if let Some(v) = overrides.solver_order {
            config.solver_order = v;
        }
        if let Some(v) = overrides.eta {
            config.eta = v;
        }
        config
    }
}

/// Per-request `scheduler_options`, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerOverrides {
    pub use_karras_sigmas: Option<bool>,
    pub timestep_spacing: Option<String>,
    pub prediction_type: Option<String>,
    pub algorithm_type: Option<String>,
    pub solver_order: Option<usize>,
    pub eta: Option<f64>,
}

impl SchedulerOverrides {
    pub fn from_request(options: &SchedulerOptions, errors: &mut Vec<FieldError>) -> Self {
        let mut check = |field: &str, value: &Option<String>, allowed: &[&str]| -> Option<String> {
            let value = value.clone()?;
            if allowed.contains(&value.as_str()) {
                Some(value)
            } else {
                errors.push(FieldError::new(
                    format!("scheduler_options.{field}"),
                    format!("unknown value '{value}' (expected one of {})", allowed.join(", ")),
                ));
                None
            }
        };
        let timestep_spacing = check("timestep_spacing", &options.timestep_spacing, &["leading", "linspace", "trailing"]);
        let prediction_type = check("prediction_type", &options.prediction_type, &["epsilon", "v_prediction"]);
        let algorithm_type = check("algorithm_type", &options.algorithm_type, &["dpmsolver++", "sde-dpmsolver++"]);
        let solver_order = options.solver_order.and_then(|order| {
            if (1..=3).contains(&order) {
                Some(order as usize)
            } else {
                errors.push(FieldError::new("scheduler_options.solver_order", format!("Invalid solver_order: {order}. Must be 1-3")));
                None
            }
        });
        let eta = options.eta.and_then(|eta| {
            if (0.0..=1.0).contains(&eta) {
                Some(eta)
            } else {
                errors.push(FieldError::new("scheduler_options.eta", format!("Invalid eta: {eta}. Must be 0-1")));
                None
            }
        });
        Self { use_karras_sigmas: options.use_karras_sigmas, timestep_spacing, prediction_type, algorithm_type, solver_order, eta }
    }

    /// Request options win over what a scheduler alias implied.
    pub fn or(self, fallback: SchedulerOverrides) -> SchedulerOverrides {
        SchedulerOverrides {
            use_karras_sigmas: self.use_karras_sigmas.or(fallback.use_karras_sigmas),
            timestep_spacing: self.timestep_spacing.or(fallback.timestep_spacing),
            prediction_type: self.prediction_type.or(fallback.prediction_type),
            algorithm_type: self.algorithm_type.or(fallback.algorithm_type),
            solver_order: self.solver_order.or(fallback.solver_order),
            eta: self.eta.or(fallback.eta),
        }
    }
}

/// Draws standard-normal noise shaped like the latents, from each image's own stream
/// (image i of the batch from generator i), as diffusers does with a list of generators.
pub trait NoiseSource {
    fn sample_like(&mut self, latents: &Tensor) -> Result<Tensor>;
}

/// One sampler. The pipeline calls, for each entry `i` of `timesteps()`:
/// `scale_model_input(x, i)`, the UNet at `timesteps()[i]`, then `step(eps, i, x)`.
pub trait Scheduler: Send {
    /// The timestep passed to the UNet for each model call.
    fn timesteps(&self) -> &[f64];
    /// What the initial standard-normal noise is multiplied by.
    fn init_noise_sigma(&self) -> f64;
    fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor>;
    fn step(&mut self, model_output: &Tensor, index: usize, sample: &Tensor, noise: &mut dyn NoiseSource) -> Result<Tensor>;
    /// Noises clean latents to the level of model call `index` (img2img start).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor>;
    /// Model calls per denoising step (2 for Heun and KDPM2).
    fn order(&self) -> usize {
        1
    }
}

/// Builds the scheduler a plan asks for, over the model's scheduler config.
pub fn build_scheduler(
    kind: SchedulerKind,
    base_config: &SchedulerConfig,
    overrides: &SchedulerOverrides,
    num_inference_steps: usize,
) -> Result<Box<dyn Scheduler>> {
    let config = base_config.with_overrides(overrides);
    capabilities::reject_unhonoured_options(kind, overrides, num_inference_steps)?;
    match kind {
        SchedulerKind::EulerDiscrete => Ok(Box::new(euler_discrete::EulerDiscrete::new(&config, num_inference_steps)?)),
        SchedulerKind::DpmSolverMultistep => {
            Ok(Box::new(dpm_solver_multistep::DpmSolverMultistep::new(&config, num_inference_steps)?))
        }
        SchedulerKind::DpmSolverSinglestep => {
            Ok(Box::new(dpm_solver_singlestep::DpmSolverSinglestep::new(&config, num_inference_steps)?))
        }
        SchedulerKind::Ddim => Ok(Box::new(ddim::Ddim::new(&config, num_inference_steps)?)),
        SchedulerKind::EulerAncestralDiscrete => {
            Ok(Box::new(euler_ancestral_discrete::EulerAncestralDiscrete::new(&config, num_inference_steps)?))
        }
        SchedulerKind::HeunDiscrete => Ok(Box::new(heun_discrete::HeunDiscrete::new(&config, num_inference_steps)?)),
        SchedulerKind::Kdpm2Discrete => {
            Ok(Box::new(k_dpm_2_discrete::Kdpm2Discrete::new(&config, num_inference_steps)?))
        }
        SchedulerKind::Kdpm2AncestralDiscrete => {
            Ok(Box::new(k_dpm_2_ancestral_discrete::Kdpm2AncestralDiscrete::new(&config, num_inference_steps)?))
        }
        SchedulerKind::LmsDiscrete => Ok(Box::new(lms_discrete::LmsDiscrete::new(&config, num_inference_steps)?)),
        SchedulerKind::UniPcMultistep => {
            Ok(Box::new(unipc_multistep::UniPcMultistep::new(&config, num_inference_steps)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_enum_and_alias_name_resolves() {
        for (kind, class, enum_name, aliases) in SCHEDULER_NAMES {
            assert_eq!(SchedulerKind::from_name(class), Ok(kind));
            assert_eq!(SchedulerKind::from_name(enum_name), Ok(kind));
            assert_eq!(SchedulerKind::from_name(&class.to_lowercase()), Ok(kind));
            for alias in aliases {
                assert_eq!(SchedulerKind::from_name(alias), Ok(kind), "{alias}");
            }
        }
        let err = SchedulerKind::from_name("PNDM").unwrap_err();
        assert!(err.contains("DPMSolverMultistepScheduler") && err.contains("UniPCMultistepScheduler"), "{err}");
    }

    #[test]
    fn karras_alias_turns_on_karras_sigmas() {
        assert_eq!(SchedulerKind::alias_overrides("dpm++2m karras").use_karras_sigmas, Some(true));
        assert_eq!(SchedulerKind::alias_overrides("dpm++2m").use_karras_sigmas, None);
    }
}
