//! What a request names must exist before the engine loads, evicts or encodes anything for it:
//! a base model (and refiner) that is not cached must resolve to a file or folder, a custom
//! VAE and every ControlNet likewise, and every LoRA name to a file. Each failure names its field, and nothing cached is touched.

use std::path::Path;

use crate::api::validate::GenerationPlan;
use crate::error::{Error, FieldError, Result};

/// `cached` says whether a model of that name is resident (it is used even if its files have
/// since moved).
pub fn check_names_resolve(plan: &GenerationPlan, models_dir: Option<&Path>, cached: impl Fn(&str) -> bool) -> Result<()> {
    if !cached(&plan.base_model) {
        crate::loader::resolve_model(&plan.base_model, models_dir)?;
    }
    let named = |field: &str, err: Error| {
        let detail = match err {
            Error::ModelNotFound(text) | Error::Io(text) | Error::ModelLoad(text) => text,
            other => other.to_string(),
        };
        FieldError::new(field, detail)
    };
    let mut missing = Vec::new();
    if let Some(refiner) = plan.refiner.as_ref().filter(|refiner| !cached(&refiner.model)) {
        if let Err(err) = crate::loader::resolve_model(&refiner.model, models_dir) {
            missing.push(named("models.refiner", err));
        }
    }
    if let Some(vae) = &plan.vae.model {
        if let Err(err) = crate::loader::vae::resolve_vae(vae, models_dir) {
            missing.push(named("models.vae", err));
        }
    }
    for control in &plan.controlnets {
        if let Err(err) = crate::loader::controlnet::resolve_controlnet(control.model.as_deref(), control.kind.name(), models_dir) {
            missing.push(named(&format!("{}.model", control.field), err));
        }
    }
    if let Some(upscale) = plan.upscale.as_ref().filter(|u| u.method == crate::api::validate::UpscaleMethod::RealEsrgan) {
        if let Err(err) = crate::loader::esrgan::resolve_upscaler(upscale.model.as_deref(), upscale.factor, models_dir) {
            missing.push(named("output.upscale.model", err));
        }
    }
    missing.extend(plan
        .loras
        .iter()
        .enumerate()
        .filter_map(|(index, lora)| {
            crate::lora::resolve_lora_path(&lora.name, models_dir).err().map(|err| named(&format!("lora.models[{index}].name"), err))
        }));
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Validation(missing))
    }
}
