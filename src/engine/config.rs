//! The JSON given to `sdxl_create`.

use std::path::PathBuf;

use candle_core::{DType, Device};
use serde::Deserialize;

use crate::api::Limits;
use crate::error::{Error, FieldError, Result};
use crate::rng::NormalKernel;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// "cpu", "cuda", "cuda:N" or "auto" (the first CUDA device when built with CUDA, else CPU).
    pub device: String,
    /// Compute dtype of UNet and text encoders: "float32", "float16", "bfloat16".
    pub dtype: String,
    /// VAE dtype; SDXL's VAE overflows in float16 unless it is an fp16-fix VAE.
    pub vae_dtype: String,
    pub models_dir: Option<PathBuf>,
    /// Every saved image stays under this folder.
    pub output_dir: PathBuf,
    pub limits: Limits,
    /// Which build of torch's CPU normal kernel the noise reproduces: "vectorized"
    /// (torch on AVX2/AVX-512 x86-64, the default) or "scalar" (torch's plain build).
    pub torch_cpu_kernel: String,
    /// Loaded models kept resident at once (least recently used are dropped first).
    pub max_loaded_models: usize,
    /// Device memory a request's activations may use (GiB); a request estimated above it
    /// is refused with OUT_OF_MEMORY before it starts. None: no limit.
    pub max_memory_gb: Option<f64>,
    /// Default for requests that don't set `precision.cpu_offload`: keep the text encoders
    /// and the VAE in host memory, on the device only while they run.
    pub cpu_offload: bool,
    /// Seconds a request may run when it does not set `metadata.timeout`; None: no limit. The
    /// clock starts when the request leaves the queue (see `Engine::handle_json`).
    pub timeout_s: Option<f64>,
    /// Requests name models, VAEs, ControlNets, LoRAs and upscalers by name only, found under
    /// `models_dir`: a path (absolute, or with `..`) or a name that resolves elsewhere is
    /// refused at its field. Off by default: the seed accepted paths. Links the operator puts
    /// inside `models_dir` are followed (shared model stores are often mounted that way).
    pub models_dir_only: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            dtype: "float16".into(),
            vae_dtype: "float32".into(),
            models_dir: None,
            output_dir: PathBuf::from("."),
            limits: Limits::default(),
            torch_cpu_kernel: "vectorized".into(),
            max_loaded_models: 2,
            max_memory_gb: None,
            cpu_offload: false,
            timeout_s: None,
            models_dir_only: false,
        }
    }
}

pub fn parse_dtype(field: &str, name: &str) -> Result<DType> {
    match name {
        "float32" | "fp32" | "f32" => Ok(DType::F32),
        "float16" | "fp16" | "f16" => Ok(DType::F16),
        "bfloat16" | "bf16" => Ok(DType::BF16),
        other => Err(Error::Validation(vec![FieldError::new(field, format!("unknown dtype '{other}' (expected float32, float16 or bfloat16)"))])),
    }
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "other",
    }
}

impl EngineConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text)).map_err(|err| {
            if err.inner().is_syntax() || err.inner().is_eof() {
                return Error::InvalidJson(err.inner().to_string());
            }
            let path = err.path().to_string();
            Error::Validation(vec![FieldError::new(if path == "." { "config".to_string() } else { path }, err.inner().to_string())])
        })
    }

    pub fn device(&self) -> Result<Device> {
        let spec = self.device.trim().to_ascii_lowercase();
        match spec.as_str() {
            "cpu" => Ok(Device::Cpu),
            "auto" => {
                crate::engine::memory::before_opening_cuda();
                let device = Device::cuda_if_available(0).unwrap_or(Device::Cpu);
                crate::engine::memory::configure_device(&device)?;
                Ok(device)
            }
            _ => {
                let ordinal = match spec.strip_prefix("cuda") {
                    Some("") => 0,
                    Some(rest) => rest
                        .strip_prefix(':')
                        .and_then(|n| n.parse::<usize>().ok())
                        .ok_or_else(|| Error::validation("device", format!("'{}' is not cpu, auto, cuda or cuda:N", self.device)))?,
                    None => return Err(Error::validation("device", format!("'{}' is not cpu, auto, cuda or cuda:N", self.device))),
                };
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Device(format!("device '{}' asked for, but this build has no CUDA support", self.device)));
                }
                crate::engine::memory::before_opening_cuda();
                let device = Device::new_cuda(ordinal).map_err(|e| Error::Device(format!("cannot open {}: {e}", self.device)))?;
                crate::engine::memory::configure_device(&device)?;
                Ok(device)
            }
        }
    }

    /// Everything that can be judged from the config alone, before a device is opened.
    pub fn check(&self) -> Result<()> {
        let mut errors = self.limits.check();
        if let Some(budget) = self.max_memory_gb {
            if !(budget.is_finite() && budget > 0.0) {
                errors.push(FieldError::new("max_memory_gb", format!("{budget} must be a finite number of GiB above 0")));
            }
        }
        if let Some(timeout) = self.timeout_s.filter(|t| !(*t > 0.0 && t.is_finite())) {
            errors.push(FieldError::new("timeout_s", format!("{timeout} must be a finite number of seconds above 0")));
        }
        if self.models_dir_only && self.models_dir.is_none() {
            errors.push(FieldError::new("models_dir_only", "needs a models_dir to find names in"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(errors))
        }
    }

    pub fn noise_kernel(&self) -> Result<NormalKernel> {
        match self.torch_cpu_kernel.as_str() {
            "vectorized" => Ok(NormalKernel::Vectorized),
            "scalar" => Ok(NormalKernel::Scalar),
            other => Err(Error::validation("torch_cpu_kernel", format!("'{other}' is not vectorized or scalar"))),
        }
    }
}
