//! Which per-request `scheduler_options` each scheduler honours, as diffusers 0.42.1 defines
//! them. An option a request sets explicitly that the chosen scheduler lacks is an
//! `Error::Unsupported`; the same value coming from a model's scheduler_config.json is ignored,
//! as diffusers' `from_config` ignores keys a scheduler does not know.

use super::{SchedulerKind, SchedulerOverrides};
use crate::error::{Error, Result};

/// Schedulers whose `set_timesteps` can use Karras sigmas (`use_karras_sigmas`).
pub fn supports_karras_sigmas(kind: SchedulerKind) -> bool {
    !matches!(kind, SchedulerKind::EulerAncestralDiscrete | SchedulerKind::Ddim)
}

/// Schedulers that read `timestep_spacing` (DPMSolverSinglestep always spaces linearly).
pub fn supports_timestep_spacing(kind: SchedulerKind) -> bool {
    kind != SchedulerKind::DpmSolverSinglestep
}

/// Schedulers with a `solver_order`.
pub fn supports_solver_order(kind: SchedulerKind) -> bool {
    matches!(
        kind,
        SchedulerKind::DpmSolverMultistep | SchedulerKind::DpmSolverSinglestep | SchedulerKind::UniPcMultistep
    )
}

/// Schedulers with DPM-Solver's `algorithm_type`.
pub fn supports_algorithm_type(kind: SchedulerKind) -> bool {
    matches!(kind, SchedulerKind::DpmSolverMultistep | SchedulerKind::DpmSolverSinglestep)
}

/// Rejects explicitly requested options the scheduler cannot honour (a value equal to what the
/// scheduler does anyway, such as `use_karras_sigmas: false`, is accepted), and a run of no steps.
pub fn reject_unhonoured_options(kind: SchedulerKind, requested: &SchedulerOverrides, steps: usize) -> Result<()> {
    let class = kind.class_name();
    if steps == 0 {
        return Err(Error::Unsupported(format!("{class} with 0 inference steps")));
    }
    let refuse =
        |what: String| Err(Error::Unsupported(format!("{class} {what} (diffusers has no such option for it)")));
    if requested.use_karras_sigmas == Some(true) && !supports_karras_sigmas(kind) {
        return refuse("cannot use Karras sigmas".into());
    }
    if let Some(spacing) = &requested.timestep_spacing {
        if !supports_timestep_spacing(kind) && spacing != "linspace" {
            return refuse(format!("always spaces its timesteps linearly; timestep_spacing '{spacing}' cannot apply"));
        }
    }
    if let Some(order) = requested.solver_order {
        if !supports_solver_order(kind) {
            return refuse(format!("has no solver_order (asked for {order})"));
        }
    }
    if let Some(algorithm) = &requested.algorithm_type {
        if !supports_algorithm_type(kind) && algorithm != "dpmsolver++" {
            return refuse(format!("has no algorithm_type '{algorithm}'"));
        }
    }
    if let Some(eta) = requested.eta {
        if eta != 0.0 && kind != SchedulerKind::Ddim {
            return refuse(format!("has no eta (asked for {eta}); only DDIMScheduler takes eta"));
        }
    }
    Ok(())
}
