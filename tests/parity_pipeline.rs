//! End-to-end parity with diffusers' StableDiffusionXL(Img2Img)Pipeline on the tiny
//! model: every intermediate and the final uint8 image, from the diffusers folder and
//! from the single-file checkpoint of the same weights.

mod common;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use common::*;
use sdxl::api::{parse_request, plan_request, Limits};
use sdxl::loader::SdxlModel;
use sdxl::pipeline::{generate, Intermediates, NoProgress, RunContext};
use sdxl::rng::NormalKernel;
use serde_json::{json, Value};

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("reference/cases.json")).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    value["cases"].as_array().unwrap().clone()
}

fn case(name: &str) -> Value {
    cases().into_iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no case {name}"))
}

/// Runs one reference case through the same request → plan → pipeline path the engine uses.
fn run_case(model: &SdxlModel, case: &Value) -> (Vec<image::RgbImage>, Intermediates) {
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
    for key in ["original_size", "crops_coords_top_left", "target_size"] {
        if let Some(value) = case.get(key) {
            request[key] = value.clone();
        }
    }
    let init_image = case.get("init_image").and_then(|v| v.as_str()).map(|file| {
        request["init_image"] = json!(fixtures().join("reference").join(file).display().to_string());
        image::open(fixtures().join("reference").join(file)).unwrap().to_rgb8()
    });
    let parsed = parse_request(request).expect("reference case is a valid request");
    let mut plan = plan_request(&parsed, "parity".into(), &Limits::default(), || unreachable!()).expect("valid plan");
    // The API maps "" and absent alike to zeros; diffusers distinguishes them, so the
    // pipeline does too and the test passes the case's exact value.
    plan.negative_prompt = case["negative_prompt"].as_str().map(str::to_string);
    let mut intermediates = Intermediates::default();
    let mut progress = NoProgress;
    let mut ctx = RunContext { device: &Device::Cpu, noise_kernel: NormalKernel::Vectorized, progress: &mut progress, started: Instant::now() };
    let batch = generate(model, &plan, init_image.as_ref(), &mut ctx, Some(&mut intermediates)).expect("generation runs");
    (batch.images, intermediates)
}

fn image_tensor(images: &[image::RgbImage]) -> Tensor {
    let (w, h) = images[0].dimensions();
    let bytes: Vec<u8> = images.iter().flat_map(|i| i.as_raw().iter().copied()).collect();
    Tensor::from_vec(bytes, (images.len(), h as usize, w as usize, 3), &Device::Cpu).unwrap()
}

fn max_pixel_diff(actual: &Tensor, expected: &Tensor) -> (u8, usize) {
    let a = actual.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let e = expected.to_dtype(DType::U8).unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_eq!(a.len(), e.len());
    let diffs: Vec<u8> = a.iter().zip(&e).map(|(x, y)| x.abs_diff(*y)).collect();
    (*diffs.iter().max().unwrap(), diffs.iter().filter(|&&d| d > 0).count())
}

fn check_case(model: &SdxlModel, name: &str) {
    let case = case(name);
    let refs = reference(name);
    let (images, got) = run_case(model, &case);
    let batch = case["batch"].as_u64().unwrap() as usize;
    let prompt_embeds = tensor(&refs, "prompt_embeds");
    assert_close(&format!("{name} prompt_embeds"), got.prompt_embeds.as_ref().unwrap(), &prompt_embeds.narrow(0, 0, 1).unwrap(), 1e-4);
    assert_close(&format!("{name} pooled"), got.pooled_prompt_embeds.as_ref().unwrap(), &tensor(&refs, "pooled_prompt_embeds").narrow(0, 0, 1).unwrap(), 1e-4);
    if let Some(negative) = refs.get("negative_prompt_embeds") {
        assert_close(&format!("{name} negative_prompt_embeds"), got.negative_prompt_embeds.as_ref().unwrap(), &negative.narrow(0, 0, 1).unwrap(), 1e-4);
        assert_close(&format!("{name} negative pooled"), got.negative_pooled_prompt_embeds.as_ref().unwrap(), &tensor(&refs, "negative_pooled_prompt_embeds").narrow(0, 0, 1).unwrap(), 1e-4);
    }
    assert_close(&format!("{name} add_time_ids"), got.add_time_ids.as_ref().unwrap(), tensor(&refs, "add_time_ids"), 0.0);
    let timesteps = tensor(&refs, "timesteps").to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(got.timesteps, timesteps, "{name} timesteps");
    if case["pipeline"] == "img2img" {
        assert_close(&format!("{name} image_latents"), got.image_latents.as_ref().unwrap(), tensor(&refs, "image_latents"), 1e-4);
        assert_close(&format!("{name} noised start"), got.initial_noise.as_ref().unwrap(), tensor(&refs, "initial_latents"), 1e-4);
    } else {
        // The noise itself must be bit-identical to torch's generator.
        assert_close(&format!("{name} initial latents"), got.initial_noise.as_ref().unwrap(), tensor(&refs, "initial_latents"), 0.0);
    }
    assert_close(&format!("{name} latents after step 1"), got.latents_after_first_step.as_ref().unwrap(), tensor(&refs, "latents_step1"), 1e-4);
    assert_close(&format!("{name} final latents"), got.final_latents.as_ref().unwrap(), tensor(&refs, "final_latents"), 1e-3);
    assert_eq!(images.len(), batch);
    let (max_diff, differing) = max_pixel_diff(&image_tensor(&images), tensor(&refs, "image"));
    eprintln!(
        "{name}: uint8 max diff {max_diff} ({differing} values differ), final latents max |diff| {:e}",
        max_abs_diff(got.final_latents.as_ref().unwrap(), tensor(&refs, "final_latents"))
    );
    assert!(max_diff <= 2, "{name}: uint8 max diff {max_diff} > 2 ({differing} values differ)");
}

#[test]
fn txt2img_with_and_without_guidance_equals_diffusers() {
    let model = tiny_folder_model();
    for name in ["txt2img_cfg", "txt2img_nocfg"] {
        check_case(&model, name);
    }
}

#[test]
fn non_square_with_negative_prompt_equals_diffusers() {
    check_case(&tiny_folder_model(), "txt2img_nonsquare_negative");
}

#[test]
fn batch_of_two_uses_seed_plus_index_like_diffusers_generator_lists() {
    check_case(&tiny_folder_model(), "txt2img_batch2");
}

#[test]
fn img2img_equals_diffusers() {
    check_case(&tiny_folder_model(), "img2img");
}

#[test]
fn micro_conditioning_equals_diffusers() {
    check_case(&tiny_folder_model(), "txt2img_micro");
}

#[test]
fn single_file_checkpoint_gives_the_same_images_as_diffusers() {
    let model = tiny_single_file_model();
    for name in ["txt2img_cfg", "txt2img_nonsquare_negative", "img2img"] {
        check_case(&model, name);
    }
}

#[test]
fn the_json_entry_point_writes_diffusers_images_to_disk() {
    let case = case("txt2img_batch2");
    let refs = reference("txt2img_batch2");
    let output = std::env::temp_dir().join(format!("sdxl-parity-json-{}", std::process::id()));
    let config = json!({"device": "cpu", "output_dir": output, "dtype": "float32"});
    let engine = sdxl::Engine::from_json(&config.to_string()).unwrap();
    let request = json!({
        "message_type": "inference_request",
        "request_id": "parity-json",
        "data": {
            "prompt": case["prompt"],
            "models": {"base": fixtures().join("tiny-sdxl")},
            "hyperparameters": {"num_inference_steps": case["steps"], "guidance_scale": case["guidance_scale"], "seed": case["seed"]},
            "dimensions": {"width": case["width"], "height": case["height"]},
            "batch": {"size": case["batch"]},
            "scheduler": "EulerDiscrete",
            "output": {"format": "png", "save_path": "parity"}
        }
    });
    let response: Value = serde_json::from_str(&engine.handle_json(&request.to_string())).unwrap();
    assert_eq!(response["success"], true, "{response}");
    let images: Vec<image::RgbImage> = response["data"]["generated_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| image::open(entry["path"].as_str().unwrap()).unwrap().to_rgb8())
        .collect();
    let (max_diff, differing) = max_pixel_diff(&image_tensor(&images), tensor(&refs, "image"));
    assert!(max_diff <= 2, "PNG files differ from diffusers by up to {max_diff} ({differing} values)");
    assert_eq!(response["data"]["generated_images"][1]["seed"], 101);
    let _ = std::fs::remove_dir_all(output);
}
