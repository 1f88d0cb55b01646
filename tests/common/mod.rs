//! Shared helpers of the integration tests: fixture paths, reference tensors, comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use sdxl::loader::{self, LoadOptions, SdxlModel};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
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
    LoadOptions { device: &CPU, dtype: DType::F32, vae_dtype: DType::F32, config_dir: None }
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
