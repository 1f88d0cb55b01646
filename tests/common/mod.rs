//! Shared helpers of the integration tests: fixture paths, reference tensors, comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use sdxl::api::{parse_request, plan_request, Limits};
use sdxl::loader::{self, LoadOptions, ModelRole, SdxlModel};
use sdxl::pipeline::{generate, GeneratedBatch, Intermediates, NoProgress, PipelineModels, RunContext};
use sdxl::rng::NormalKernel;
use serde_json::{json, Value};

/// The committed fixtures; `SDXL_FIXTURES` points elsewhere (the GPU machine's copy).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("SDXL_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

pub fn reference(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join("reference").join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn tensor<'a>(refs: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    refs.get(key).unwrap_or_else(|| panic!("reference has no {key}"))
}

pub fn cpu_options() -> LoadOptions<'static> {
    static CPU: Device = Device::Cpu;
    LoadOptions { role: ModelRole::Base, share_text_encoder_2_with: None, device: &CPU, dtype: DType::F32, vae_dtype: DType::F32, config_dir: None, cpu_offload: false }
}

pub fn tiny_folder_model() -> SdxlModel {
    loader::load_diffusers_folder(&fixtures().join("tiny-sdxl"), &cpu_options()).expect("tiny diffusers folder loads")
}

pub fn tiny_single_file_model() -> SdxlModel {
    let config = fixtures().join("tiny-sdxl");
    let options = LoadOptions { config_dir: Some(config.as_path()), ..cpu_options() };
    loader::load_single_file(&fixtures().join("tiny-sdxl.safetensors"), &options).expect("tiny single file loads")
}

/// Largest absolute difference, with a message naming both tensors' shapes on mismatch.
pub fn max_abs_diff(actual: &Tensor, expected: &Tensor) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "shape mismatch");
    let a = actual.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let e = expected.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter().zip(&e).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tolerance: f32) {
    let diff = max_abs_diff(actual, expected);
    assert!(diff <= tolerance, "{what}: max |diff| = {diff:e} > {tolerance:e} (reference max |x| = {:e})", max_abs(expected));
}

pub fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("reference/cases.json")).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    value["cases"].as_array().unwrap().clone()
}

pub fn case(name: &str) -> Value {
    cases().into_iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no case {name}"))
}

/// Runs one reference case through the same request → plan → pipeline path the engine uses.
pub fn run_case(model: &SdxlModel, case: &Value, device: &Device) -> (Vec<image::RgbImage>, Intermediates) {
    let mut request = json!({
        "prompt": case["prompt"],
        "models": {"base": "tiny"},
        "hyperparameters": {
            "num_inference_steps": case["steps"], "guidance_scale": case["guidance_scale"],
            "seed": case["seed"], "strength": case.get("strength").cloned().unwrap_or(json!(0.8)),
        },
        "dimensions": {"width": case["width"], "height": case["height"]},
        "batch": {"size": case["batch"]},
        "scheduler": case["scheduler"],
    });
    // diffusers encodes "" as text and gives zeros only for None: the request carries the
    // case's exact value (absent for None) so the API's own rule is what is tested.
    if let Some(negative) = case["negative_prompt"].as_str() {
        request["negative_prompt"] = json!(negative);
    }
    for key in ["original_size", "crops_coords_top_left", "target_size"] {
        if let Some(value) = case.get(key) {
            request[key] = value.clone();
        }
    }
    let init_image = case.get("init_image").and_then(|v| v.as_str()).map(|file| {
        request["init_image"] = json!(fixtures().join("reference").join(file).display().to_string());
        image::open(fixtures().join("reference").join(file)).unwrap().to_rgb8()
    });
    let (batch, intermediates) = run_request(&PipelineModels::base_only(model), request, init_image.as_ref(), device);
    (batch.images, intermediates)
}

/// Plans `request` as the engine does and runs it on `models`, recording the intermediates.
pub fn run_request(models: &PipelineModels, request: Value, init_image: Option<&image::RgbImage>, device: &Device) -> (GeneratedBatch, Intermediates) {
    let parsed = parse_request(request).expect("reference case is a valid request");
    let plan = plan_request(&parsed, "parity".into(), &Limits { min_size: 64, ..Limits::default() }, || unreachable!()).expect("valid plan");
    let mut intermediates = Intermediates::default();
    let mut progress = NoProgress;
    let mut ctx = RunContext { device, noise_kernel: NormalKernel::Vectorized, progress: &mut progress, started: Instant::now() };
    let batch = generate(models, &plan, init_image, &mut ctx, Some(&mut intermediates)).expect("generation runs");
    (batch, intermediates)
}

pub fn image_tensor(images: &[image::RgbImage]) -> Tensor {
    let (w, h) = images[0].dimensions();
    let bytes: Vec<u8> = images.iter().flat_map(|i| i.as_raw().iter().copied()).collect();
    Tensor::from_vec(bytes, (images.len(), h as usize, w as usize, 3), &Device::Cpu).unwrap()
}

pub fn max_pixel_diff(actual: &Tensor, expected: &Tensor) -> (u8, usize) {
    let a = actual.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let e = expected.to_dtype(DType::U8).unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_eq!(a.len(), e.len());
    let diffs: Vec<u8> = a.iter().zip(&e).map(|(x, y)| x.abs_diff(*y)).collect();
    (*diffs.iter().max().unwrap(), diffs.iter().filter(|&&d| d > 0).count())
}


/// Adds `extra`'s fields to `request`; an object field present in both is merged one level
/// deep (so `{"models": {"refiner": ..}}` keeps `models.base`).
pub fn merge(request: &mut Value, extra: Value) {
    if let (Value::Object(request), Value::Object(extra)) = (request, extra) {
        for (key, value) in extra {
            match (request.get_mut(&key), value) {
                (Some(Value::Object(existing)), Value::Object(more)) => existing.extend(more),
                (_, value) => {
                    request.insert(key, value);
                }
            }
        }
    }
}

/// Copies a fixture folder (a model folder to break or delete) recursively.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
