//! The request contract: the `data` object of the seed's `inference_request`
//! (as produced by the C# EnhancedRequestTransformer), plus our optional extensions.
//! Every field is optional here; defaults and validation live in `validate.rs`.
//! Unknown fields are rejected (with their path) so a typo never silently changes an image.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenerationRequest {
    /// Informational in the seed: which Python worker would have served it.
    pub worker_type: Option<String>,
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    /// Legacy single-model field; normalised into `models.base`.
    pub model_name: Option<String>,
    pub hyperparameters: Option<Hyperparameters>,
    pub dimensions: Option<Dimensions>,
    pub scheduler: Option<String>,
    pub scheduler_options: Option<SchedulerOptions>,
    pub models: Option<Models>,
    pub lora: Option<LoraConfig>,
    pub controlnet: Option<serde_json::Value>,
    pub output: Option<OutputConfig>,
    pub batch: Option<BatchConfig>,
    pub precision: Option<PrecisionConfig>,
    pub metadata: Option<Metadata>,
    /// img2img: a file path or a base64 (optionally `data:` URI) encoded image.
    pub init_image: Option<String>,
    /// SDXL micro-conditioning; defaults as diffusers: original = target = output size, crops (0, 0).
    pub original_size: Option<[u32; 2]>,
    pub crops_coords_top_left: Option<[u32; 2]>,
    pub target_size: Option<[u32; 2]>,
    /// Initial-noise generator: "torch_cpu" reproduces `torch.randn` with a CPU generator.
    pub rng: Option<String>,
    /// "chunked" (default: 75-token windows, emphasis weights) or "diffusers" (truncate at 77).
    pub prompt_truncation: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hyperparameters {
    pub num_inference_steps: Option<i64>,
    pub guidance_scale: Option<f64>,
    pub seed: Option<i64>,
    pub strength: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dimensions {
    pub width: Option<i64>,
    pub height: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchedulerOptions {
    pub use_karras_sigmas: Option<bool>,
    pub timestep_spacing: Option<String>,
    pub prediction_type: Option<String>,
    pub algorithm_type: Option<String>,
    pub solver_order: Option<i64>,
    pub eta: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Models {
    #[serde(rename = "base")]
    pub base: Option<String>,
    pub refiner: Option<String>,
    pub vae: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub enabled: Option<bool>,
    pub models: Option<Vec<LoraModel>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraModel {
    pub name: Option<String>,
    pub weight: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub format: Option<String>,
    pub quality: Option<i64>,
    pub save_path: Option<String>,
    pub upscale: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub size: Option<i64>,
    pub parallel: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrecisionConfig {
    pub dtype: Option<String>,
    pub vae_dtype: Option<String>,
    pub cpu_offload: Option<bool>,
    pub attention_slicing: Option<bool>,
    pub vae_slicing: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub request_id: Option<String>,
    pub priority: Option<String>,
    pub timeout: Option<f64>,
    pub tags: Option<Vec<String>>,
}
