//! The response contract: the seed's `WorkerResponse` as transformed for C#
//! (`request_id, success, data, error, warnings, execution_time, timestamp`), plus
//! a stable `error_code` and the field paths of validation failures.

use serde::{Deserialize, Serialize};

use crate::error::{Error, FieldError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GeneratedImage {
    /// Where the file was written; null with `output.return_images` (nothing is written).
    pub path: Option<String>,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub format: String,
    /// With `output.return_images`: the encoded file (png/jpeg/webp, metadata included), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// Per-stage wall times in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StageTimes {
    pub text_encode: f64,
    pub denoise: f64,
    /// The refiner's denoising (0 without a refiner).
    #[serde(default)]
    pub refine: f64,
    pub decode: f64,
    /// `output.upscale` (0 without it).
    #[serde(default)]
    pub upscale: f64,
    pub save: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessingMetrics {
    pub total_time: f64,
    pub inference_time: f64,
    pub device_name: String,
    /// Bytes held by loaded models on the device.
    pub memory_used: u64,
    pub model_info: serde_json::Value,
    pub stage_times: StageTimes,
    pub unet_calls: u64,
    /// Denoising steps actually run (img2img runs fewer than requested) per second of denoising.
    pub iterations_per_second: f64,
    /// The request's own peak, as `peak_memory_measure` names it: on CUDA the high-water mark of
    /// this engine's device memory pool during the request (this process's allocations, cached
    /// weights included, other processes not); on CPU the process's resident set, sampled.
    pub peak_memory_bytes: u64,
    /// `device_pool_allocated` (CUDA) or `process_resident_set` (CPU).
    #[serde(default)]
    pub peak_memory_measure: String,
}

/// The request's `metadata` as the engine served it: the priority it queued at and its tags,
/// echoed so a host can match responses to its own bookkeeping.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServedMetadata {
    /// "high", "normal" (also when the request named none) or "low".
    pub priority: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerationData {
    pub generated_images: Vec<GeneratedImage>,
    pub processing_metrics: ProcessingMetrics,
    #[serde(default)]
    pub metadata: ServedMetadata,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response<T> {
    pub request_id: String,
    pub success: bool,
    pub data: Option<T>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    /// The same code as a number (what `sdxl_load_model` returns).
    pub error_number: Option<i32>,
    pub field_errors: Vec<FieldError>,
    pub warnings: Vec<String>,
    pub execution_time: f64,
    pub timestamp: f64,
}

impl<'de> Deserialize<'de> for FieldError {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            field: String,
            message: String,
        }
        let raw = Raw::deserialize(deserializer)?;
        Ok(FieldError { field: raw.field, message: raw.message })
    }
}

pub fn now_timestamp() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl<T: Serialize> Response<T> {
    pub fn success(request_id: String, data: T, warnings: Vec<String>, execution_time: f64) -> Self {
        Self {
            request_id,
            success: true,
            data: Some(data),
            error: None,
            error_code: None,
            error_number: None,
            field_errors: Vec::new(),
            warnings,
            execution_time,
            timestamp: now_timestamp(),
        }
    }

    pub fn failure(request_id: String, error: &Error, warnings: Vec<String>, execution_time: f64) -> Self {
        Self {
            request_id,
            success: false,
            data: None,
            error: Some(error.to_string()),
            error_code: Some(error.code_name().to_string()),
            error_number: Some(error.code()),
            field_errors: error.field_errors().to_vec(),
            warnings,
            execution_time,
            timestamp: now_timestamp(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"request_id":"","success":false,"data":null,"error":"response serialisation failed: {e}","error_code":"INTERNAL_ERROR","error_number":-13,"field_errors":[],"warnings":[],"execution_time":0.0,"timestamp":0.0}}"#)
        })
    }
}
