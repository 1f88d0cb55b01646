//! What a request names must exist before the engine loads, evicts or encodes anything for it:
//! a base model (and refiner) that is not cached must resolve to a file or folder, a custom
//! VAE and every ControlNet likewise, and every LoRA name to a file. Each failure names its field, and nothing cached is touched.

use std::path::{Component, Path};

use crate::api::validate::GenerationPlan;
use crate::error::{Error, FieldError, Result};

/// Where requests may take their weights from.
#[derive(Clone, Copy)]
pub struct NamePolicy<'a> {
    pub models_dir: Option<&'a Path>,
    /// `models_dir_only`: names are names under `models_dir`, never paths.
    pub models_dir_only: bool,
}

impl NamePolicy<'_> {
    /// Refuses, under `models_dir_only`, a name that is a path or that resolved outside
    /// `models_dir` (e.g. relative to the working directory). Built-in names are names.
    pub fn check(&self, field: &str, name: &str, resolved: Option<&Path>) -> std::result::Result<(), FieldError> {
        let Some(dir) = self.models_dir.filter(|_| self.models_dir_only) else { return Ok(()) };
        let plain = Path::new(name).components().all(|part| matches!(part, Component::Normal(_))) && !name.contains('\\');
        if !plain {
            return Err(FieldError::new(field, format!("'{name}' is a path; this engine takes model names under models_dir only (models_dir_only)")));
        }
        match resolved {
            Some(path) if !path.starts_with(dir) => {
                Err(FieldError::new(field, format!("'{name}' resolves to {}, outside models_dir (models_dir_only)", path.display())))
            }
            _ => Ok(()),
        }
    }
}

/// `cached` says whether a model of that name is resident (it is used even if its files have
/// since moved).
pub fn check_names_resolve(plan: &GenerationPlan, policy: NamePolicy, cached: impl Fn(&str) -> bool) -> Result<()> {
    let models_dir = policy.models_dir;
    let mut confined = Vec::new();
    let mut confine = |field: &str, name: &str, resolved: Option<&Path>| {
        if let Err(err) = policy.check(field, name, resolved) {
            confined.push(err);
        }
    };
    // A path where a name is expected is refused as such, before it is looked up.
    policy.check("models.base", &plan.base_model, None).map_err(|err| Error::Validation(vec![err]))?;
    if !cached(&plan.base_model) {
        let location = crate::loader::resolve_model(&plan.base_model, models_dir)?;
        confine("models.base", &plan.base_model, location.path());
    }
    let named = |field: &str, err: Error| {
        let detail = match err {
            Error::ModelNotFound(text) | Error::Io(text) | Error::ModelLoad(text) => text,
            other => other.to_string(),
        };
        FieldError::new(field, detail)
    };
    let mut missing = Vec::new();
    if let Some(refiner) = &plan.refiner {
        if cached(&refiner.model) {
            confine("models.refiner", &refiner.model, None);
        } else {
            match crate::loader::resolve_model(&refiner.model, models_dir) {
                Ok(location) => confine("models.refiner", &refiner.model, location.path()),
                Err(err) => missing.push(named("models.refiner", err)),
            }
        }
    }
    if let Some(vae) = &plan.vae.model {
        match crate::loader::vae::resolve_vae(vae, models_dir) {
            Ok(location) => confine("models.vae", vae, location.path()),
            Err(err) => missing.push(named("models.vae", err)),
        }
    }
    for control in &plan.controlnets {
        let field = format!("{}.model", control.field);
        match crate::loader::controlnet::resolve_controlnet(control.model.as_deref(), control.kind.name(), models_dir) {
            Ok(location) => confine(&field, control.model.as_deref().unwrap_or(control.kind.name()), location.path()),
            Err(err) => missing.push(named(&field, err)),
        }
    }
    if let Some(upscale) = plan.upscale.as_ref().filter(|u| u.method == crate::api::validate::UpscaleMethod::RealEsrgan) {
        match crate::loader::esrgan::resolve_upscaler(upscale.model.as_deref(), upscale.factor, models_dir) {
            Ok(path) => confine("output.upscale.model", upscale.model.as_deref().unwrap_or("RealESRGAN"), Some(&path)),
            Err(err) => missing.push(named("output.upscale.model", err)),
        }
    }
    for (index, lora) in plan.loras.iter().enumerate() {
        let field = format!("lora.models[{index}].name");
        match crate::lora::resolve_lora_path(&lora.name, models_dir) {
            Ok(path) => confine(&field, &lora.name, Some(&path)),
            Err(err) => missing.push(named(&field, err)),
        }
    }
    missing.extend(confined);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Validation(missing))
    }
}
