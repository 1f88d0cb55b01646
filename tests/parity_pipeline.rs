//! End-to-end parity with diffusers' StableDiffusionXL(Img2Img)Pipeline on the tiny
//! model: every intermediate and the final uint8 image, from the diffusers folder and
//! from the single-file checkpoint of the same weights.

mod common;

use candle_core::{DType, Device};
use common::*;
use sdxl::loader::SdxlModel;
use serde_json::{json, Value};

fn check_case(model: &SdxlModel, name: &str) {
    let case = case(name);
    let refs = reference(name);
    let (images, got) = run_case(model, &case, &Device::Cpu);
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
