//! CPU benchmarks on the tiny fixture model, so regressions show without a GPU:
//! tokenizer, text encoding, one UNet step (CFG batch 2), VAE decode, and a whole
//! `sdxl_generate_json` call through the C ABI (FFI and JSON overhead included).

use std::ffi::CString;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use sdxl::api::validate::PromptTruncation;
use sdxl::loader::{self, LoadOptions};
use sdxl::models::UNetConditioning;
use sdxl::pipeline::text_conditioning::encode_conditioning;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tiny_model() -> loader::SdxlModel {
    let options = LoadOptions { role: sdxl::loader::ModelRole::Base, share_text_encoder_2_with: None, device: &Device::Cpu, dtype: DType::F32, vae_dtype: DType::F32, config_dir: None, cpu_offload: false };
    loader::load_diffusers_folder(&fixtures().join("tiny-sdxl"), &options).expect("tiny model")
}

fn components(c: &mut Criterion) {
    let model = tiny_model();
    let prompt = "a photograph of an astronaut riding a horse, (highly detailed:1.2), 35mm film";
    c.bench_function("tokenize_prompt_both_encoders", |b| {
        b.iter(|| {
            model.tokenizer.windows(prompt, PromptTruncation::Chunked).unwrap();
            model.tokenizer_2.windows(prompt, PromptTruncation::Chunked).unwrap();
        })
    });
    c.bench_function("encode_prompt_and_negative", |b| {
        b.iter(|| encode_conditioning(&model, prompt, Some("blurry"), true, PromptTruncation::Chunked, 16, &Device::Cpu).unwrap())
    });
    let sample = Tensor::randn(0f32, 1.0, (2, 4, 32, 32), &Device::Cpu).unwrap();
    let context = Tensor::randn(0f32, 1.0, (2, 77, 20), &Device::Cpu).unwrap();
    let pooled = Tensor::randn(0f32, 1.0, (2, 10), &Device::Cpu).unwrap();
    let time_ids = Tensor::new(&[[256f32, 256., 0., 0., 256., 256.], [256., 256., 0., 0., 256., 256.]], &Device::Cpu).unwrap();
    let cond = UNetConditioning { encoder_hidden_states: &context, text_embeds: &pooled, time_ids: &time_ids };
    c.bench_function("unet_step_cfg_256px", |b| b.iter(|| model.unet.forward(&sample, 500.0, &cond).unwrap()));
    let latent = Tensor::randn(0f32, 1.0, (1, 4, 32, 32), &Device::Cpu).unwrap();
    c.bench_function("vae_decode_256px", |b| b.iter(|| model.vae.on_device().unwrap().decode(&latent).unwrap()));
}

fn generate_json(c: &mut Criterion) {
    let output = std::env::temp_dir().join("sdxl-bench-output");
    let config = CString::new(format!(r#"{{"device":"cpu","output_dir":{:?},"limits":{{"min_size":64}}}}"#, output.display().to_string())).unwrap();
    let engine = unsafe { sdxl::ffi::sdxl_create(config.as_ptr()) };
    assert!(!engine.is_null());
    let request = CString::new(format!(
        r#"{{"prompt":"a cat","models":{{"base":{:?}}},"dimensions":{{"width":128,"height":128}},"hyperparameters":{{"num_inference_steps":4,"seed":1}},"scheduler":"EulerDiscreteScheduler"}}"#,
        fixtures().join("tiny-sdxl").display().to_string()
    ))
    .unwrap();
    let mut group = c.benchmark_group("ffi");
    group.sample_size(10);
    group.bench_function("sdxl_generate_json_4_steps_128px", |b| {
        b.iter(|| unsafe {
            let response = sdxl::ffi::sdxl_generate_json(engine, request.as_ptr());
            assert!(!response.is_null());
            sdxl::ffi::sdxl_string_free(response);
        })
    });
    group.finish();
    unsafe { sdxl::ffi::sdxl_free(engine) };
}

criterion_group!(benches, components, generate_json);
criterion_main!(benches);
