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
    /// How `models.refiner` finishes the image (issue 14's contract).
    pub refiner: Option<RefinerOptions>,
    pub lora: Option<LoraConfig>,
    /// The seed's object, or an array of them (several ControlNets).
    pub controlnet: Option<ControlNetSpec>,
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

/// `refiner`: diffusers' two ways of using the SDXL refiner.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RefinerOptions {
    /// "ensemble" (default: the refiner finishes the base's schedule) or "img2img".
    pub mode: Option<String>,
    /// Ensemble: the fraction of the schedule the base runs before handing over.
    pub denoising_start: Option<f64>,
    /// img2img: how much of the refiner's schedule re-noises the base's latents.
    pub strength: Option<f64>,
    pub aesthetic_score: Option<f64>,
    pub negative_aesthetic_score: Option<f64>,
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
    pub upscale: Option<UpscaleConfig>,
    /// Put each encoded image in the response (base64) instead of writing a file.
    pub return_images: Option<bool>,
    /// WebP only: lossless instead of lossy at `quality`.
    pub lossless: Option<bool>,
}

/// `controlnet`: one object (the seed's shape) or an array of them. Deserialised by hand so
/// a wrong field inside keeps its own error and path (an untagged enum would only say that
/// nothing matched).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ControlNetSpec {
    One(ControlNetConfig),
    Many(Vec<ControlNetConfig>),
}

impl ControlNetSpec {
    pub fn entries(&self) -> &[ControlNetConfig] {
        match self {
            ControlNetSpec::One(one) => std::slice::from_ref(one),
            ControlNetSpec::Many(many) => many,
        }
    }
}

impl<'de> Deserialize<'de> for ControlNetSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> serde::de::Visitor<'de> for SpecVisitor {
            type Value = ControlNetSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a ControlNet object or an array of them")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                ControlNetConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ControlNetSpec::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<ControlNetConfig>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(ControlNetSpec::Many)
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

/// One ControlNet (the seed's controlnet_worker options, issue 13's contract).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlNetConfig {
    pub enabled: Option<bool>,
    pub model: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub conditioning_scale: Option<f64>,
    pub control_image: Option<String>,
    pub guidance_start: Option<f64>,
    pub guidance_end: Option<f64>,
    pub preprocessor: Option<PreprocessorConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PreprocessorConfig {
    pub enabled: Option<bool>,
    pub resolution: Option<i64>,
    pub low_threshold: Option<f64>,
    pub high_threshold: Option<f64>,
}

/// `output.upscale` (the seed's upscaler_worker options, issue 15's contract).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpscaleConfig {
    pub enabled: Option<bool>,
    pub factor: Option<i64>,
    pub method: Option<String>,
    pub model: Option<String>,
    pub tile: Option<i64>,
    pub tile_pad: Option<i64>,
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
    /// true, false or "auto" (tile when the whole decode would not fit the memory budget).
    pub vae_tiling: Option<BoolOrAuto>,
    /// Tile size in pixels (diffusers' `tile_sample_min_size`; default the VAE's `sample_size`).
    pub vae_tile_size: Option<i64>,
    /// Fraction of a tile that overlaps its neighbour (diffusers' `tile_overlap_factor`, 0.25).
    pub vae_tile_overlap: Option<f64>,
}

/// A switch that also takes "auto".
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum BoolOrAuto {
    Bool(bool),
    Text(String),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub request_id: Option<String>,
    pub priority: Option<String>,
    pub timeout: Option<f64>,
    pub tags: Option<Vec<String>>,
}
