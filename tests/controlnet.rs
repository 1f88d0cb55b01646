//! ControlNet against diffusers 0.42.1 (tools/reference/make_controlnet_references.py): the
//! model alone, one and two ControlNets, a guidance window, ControlNet with img2img and
//! without CFG, the control image's resize, the canny preprocessor against OpenCV, and the
//! errors a request can make.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::*;
use sdxl::loader::controlnet::{check_fits, load_controlnet, ControlNetLoadOptions, LoadedControlNet};
use sdxl::loader::ModelLocation;
use sdxl::models::{UNetConditioning, UNetConfig};
use sdxl::pipeline::{ControlGuidance, PipelineModels};
use serde_json::{json, Value};

static CPU: Device = Device::Cpu;

fn refs() -> HashMap<String, Tensor> {
    reference("controlnet")
}

fn case(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join("reference/controlnet_cases.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap()
}

fn controlnet(location: ModelLocation) -> LoadedControlNet {
    let options = ControlNetLoadOptions { device: &CPU, dtype: DType::F32, cpu_offload: false };
    load_controlnet(&location, &UNetConfig::tiny(), &options).expect("the tiny ControlNet loads")
}

fn canny_folder() -> ModelLocation {
    ModelLocation::DiffusersFolder(fixtures().join("tiny-controlnet-canny"))
}

fn control_image(file: &str) -> Tensor {
    let path = fixtures().join("reference").join(file);
    let mut warnings = Vec::new();
    let image = sdxl::image::control::prepare_control_image("control_image", path.to_str().unwrap(), None, 128, 128, &mut warnings).unwrap();
    sdxl::image::control::control_tensor(&image, &CPU).unwrap()
}

fn direct_residuals(net: &LoadedControlNet, scale: f64) -> (Vec<Tensor>, Tensor) {
    let r = refs();
    let t = |key: &str| tensor(&r, &format!("direct/{key}")).clone();
    let (hidden, text, ids) = (t("encoder_hidden_states"), t("text_embeds"), t("time_ids"));
    let cond = UNetConditioning { encoder_hidden_states: &hidden, text_embeds: &text, time_ids: &ids };
    let control = tensor(&r, "one_canny_07/step0_controlnet_cond").clone();
    let residuals = net.network.on_device().unwrap().forward(&t("sample"), 500.0, &cond, &control, scale).unwrap();
    (residuals.down, residuals.mid)
}

#[test]
fn the_controlnet_alone_gives_diffusers_residuals_from_folder_and_single_file() {
    let r = refs();
    for location in [canny_folder(), ModelLocation::SingleFile(fixtures().join("tiny-controlnet-canny.safetensors"))] {
        let net = controlnet(location.clone());
        let (down, mid) = direct_residuals(&net, 1.0);
        assert_eq!(down.len(), 9, "one residual per UNet skip");
        for (index, residual) in down.iter().enumerate() {
            assert_close(&format!("{location:?} down residual {index}"), residual, tensor(&r, &format!("direct/down_res_{index}")), 2e-4);
        }
        assert_close(&format!("{location:?} mid residual"), &mid, tensor(&r, "direct/mid_res"), 2e-4);
        // conditioning_scale multiplies every residual.
        let (half_down, _) = direct_residuals(&net, 0.5);
        assert_close("scale 0.5", &half_down[4], &(tensor(&r, "direct/down_res_4") * 0.5).unwrap(), 2e-4);
    }
}

fn guidance<'a>(net: &'a LoadedControlNet, file: &str, scale: f64, start: f64, end: f64) -> ControlGuidance<'a> {
    ControlGuidance { network: &net.network, image: control_image(file), conditioning_scale: scale, guidance_start: start, guidance_end: end }
}

fn request(case: &Value) -> Value {
    let mut request = json!({
        "prompt": case["prompt"], "models": {"base": "tiny"},
        "hyperparameters": {"num_inference_steps": case["steps"], "guidance_scale": case["guidance_scale"], "seed": case["seed"]},
        "dimensions": {"width": case["width"], "height": case["height"]}, "scheduler": "EulerDiscreteScheduler",
    });
    if let Some(negative) = case["negative_prompt"].as_str() {
        request["negative_prompt"] = json!(negative);
    }
    request
}

fn check_case(name: &str, controls: Vec<ControlGuidance>, init: Option<&image::RgbImage>, extra: Value) {
    let base = tiny_folder_model();
    let case = case(name);
    let r = refs();
    let mut request = request(&case);
    merge(&mut request, extra);
    let models = PipelineModels { base: &base, refiner: None, vae: sdxl::pipeline::VaeChoice::of(&base), controlnets: controls };
    let (batch, record) = run_request(&models, request, init, &CPU);
    let timesteps: Vec<f32> = record.timesteps.iter().map(|&t| t as f32).collect();
    assert_eq!(timesteps, tensor(&r, &format!("{name}/timesteps")).to_vec1::<f32>().unwrap(), "{name}: timesteps");
    assert_close(&format!("{name}: final latents"), record.final_latents.as_ref().unwrap(), tensor(&r, &format!("{name}/final_latents")), 5e-4);
    let (max, count) = max_pixel_diff(&image_tensor(&batch.images), tensor(&r, &format!("{name}/image")));
    assert!(max <= 2, "{name}: uint8 max diff {max} ({count} values differ)");
}

#[test]
fn one_controlnet_at_07_matches_diffusers() {
    let net = controlnet(canny_folder());
    check_case("one_canny_07", vec![guidance(&net, "control_canny_128.png", 0.7, 0.0, 1.0)], None, json!({}));
}

#[test]
fn two_controlnets_add_their_scaled_residuals_as_diffusers() {
    let canny = controlnet(canny_folder());
    let depth = controlnet(ModelLocation::DiffusersFolder(fixtures().join("tiny-controlnet-depth")));
    let controls = vec![guidance(&canny, "control_canny_128.png", 0.5, 0.0, 1.0), guidance(&depth, "control_depth_128.png", 0.8, 0.0, 1.0)];
    check_case("two_controlnets", controls, None, json!({}));
}

#[test]
fn guidance_end_keeps_the_controlnet_for_half_the_steps_as_diffusers() {
    let net = controlnet(canny_folder());
    check_case("guidance_end_05", vec![guidance(&net, "control_canny_128.png", 1.0, 0.0, 0.5)], None, json!({}));
}

#[test]
fn controlnet_with_img2img_and_without_cfg_match_diffusers() {
    let net = controlnet(canny_folder());
    let source = fixtures().join("reference/canny_source_128.png");
    let init = image::open(&source).unwrap().to_rgb8();
    let extra = json!({"init_image": source.display().to_string(), "hyperparameters": {"strength": 0.6}});
    check_case("img2img_canny", vec![guidance(&net, "control_canny_128.png", 0.8, 0.0, 1.0)], Some(&init), extra);
    check_case("nocfg_canny", vec![guidance(&net, "control_canny_128.png", 1.0, 0.0, 1.0)], None, json!({}));
}

#[test]
fn a_control_image_of_another_size_is_resized_as_diffusers_does() {
    let r = refs();
    let resized = control_image("control_canny_96x80.png");
    assert_close("Pillow Lanczos resize to 128x128", &resized, tensor(&r, "resize/control_tensor"), 0.0);
}

fn gray_image(t: &Tensor) -> image::GrayImage {
    let (h, w) = t.dims2().unwrap();
    image::GrayImage::from_raw(w as u32, h as u32, t.to_dtype(DType::U8).unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap()
}

#[test]
fn canny_edges_equal_opencv() {
    let r = refs();
    let source = image::open(fixtures().join("reference/init_256.png")).unwrap().to_rgb8();
    let gray = sdxl::image::canny::rgb_to_gray(&source);
    assert_eq!(gray, gray_image(tensor(&r, "canny/gray_256")), "cv2.cvtColor(RGB2GRAY)");
    for (key, low, high) in [("canny/opencv_edges_256", 100.0, 200.0), ("canny/opencv_edges_256_50_150", 50.0, 150.0)] {
        let edges = sdxl::image::canny::canny(&gray, low, high);
        let expected = gray_image(tensor(&r, key));
        let differing = edges.pixels().zip(expected.pixels()).filter(|(a, b)| a != b).count();
        let edge_count = expected.pixels().filter(|p| p.0[0] == 255).count();
        assert_eq!(differing, 0, "{key}: {differing} of {} pixels differ from cv2.Canny ({edge_count} edge pixels)", 256 * 256);
    }
    // The control image of the reference cases is the same detection at 128².
    let small = image::open(fixtures().join("reference/canny_source_128.png")).unwrap().to_rgb8();
    let control = sdxl::image::canny::canny_control_image(&small, 100.0, 200.0);
    let expected = image::open(fixtures().join("reference/control_canny_128.png")).unwrap().to_rgb8();
    assert_eq!(control, expected, "control_canny_128.png");
}

#[test]
fn a_controlnet_that_does_not_fit_the_unet_is_refused() {
    let net = controlnet(canny_folder());
    let error = check_fits(net.network.network().config(), &UNetConfig::sdxl_base()).err().expect("tiny widths do not fit SDXL's UNet").to_string();
    assert!(error.contains("block_out_channels"), "{error}");
    let options = ControlNetLoadOptions { device: &CPU, dtype: DType::F32, cpu_offload: false };
    let error = load_controlnet(&canny_folder(), &UNetConfig::sdxl_base(), &options).err().expect("refused before loading").to_string();
    assert!(error.contains("do not fit"), "{error}");
}

fn plan_error(controlnet: Value) -> sdxl::Error {
    let parsed = sdxl::api::parse_request(json!({"prompt": "a cat", "models": {"base": "m"}, "controlnet": controlnet})).expect("parses");
    sdxl::api::plan_request(&parsed, "r".into(), &sdxl::api::Limits::default(), || 0).err().expect("refused")
}

#[test]
fn controlnet_request_errors_name_their_fields() {
    let fields = |error: &sdxl::Error| error.field_errors().iter().map(|f| f.field.clone()).collect::<Vec<_>>();
    let error = plan_error(json!({"enabled": true, "type": "canny"}));
    assert_eq!(fields(&error), ["controlnet.control_image"], "{error}");
    let error = plan_error(json!([{"enabled": true, "control_image": "a.png", "conditioning_scale": 2.5}]));
    assert_eq!(fields(&error), ["controlnet[0].conditioning_scale"], "{error}");
    let error = plan_error(json!({"control_image": "a.png", "guidance_start": 0.6, "guidance_end": 0.4}));
    assert_eq!(fields(&error), ["controlnet.guidance_start"], "{error}");
    let error = plan_error(json!([{"enabled": false}, {"control_image": "d.png", "type": "depth", "preprocessor": {"enabled": true}}]));
    assert_eq!(fields(&error), ["controlnet[1].preprocessor"], "{error}");
    assert_eq!(error.code_name(), "UNSUPPORTED", "{error}");
    let error = plan_error(json!({"control_image": "a.png", "type": "sketch"}));
    assert_eq!(fields(&error), ["controlnet.type"], "{error}");
}

#[test]
fn the_engine_runs_controlnets_from_models_dir_and_reports_them() {
    let output = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    std::fs::create_dir(models.path().join("controlnet")).unwrap();
    std::os::unix::fs::symlink(fixtures().join("tiny-sdxl"), models.path().join("base")).unwrap();
    // The default for a type is <models_dir>/controlnet/<type>.
    std::os::unix::fs::symlink(fixtures().join("tiny-controlnet-canny"), models.path().join("controlnet/canny")).unwrap();
    let config = json!({"device": "cpu", "output_dir": output.path(), "models_dir": models.path(), "limits": {"min_size": 64}});
    let engine = sdxl::Engine::from_json(&config.to_string()).unwrap();
    let source: PathBuf = fixtures().join("reference/canny_source_128.png");
    let case = case("one_canny_07");
    let mut req = request(&case);
    req["models"]["base"] = json!("base");
    req["controlnet"] = json!({"enabled": true, "type": "canny", "conditioning_scale": 0.7, "control_image": source.display().to_string(),
        "preprocessor": {"enabled": true, "low_threshold": 100, "high_threshold": 200}});
    let response: Value = serde_json::from_str(&engine.handle_json(&req.to_string())).unwrap();
    assert_eq!(response["success"], true, "{response}");
    // Canny on the source gives control_canny_128.png, so the image is the reference's.
    let path = response["data"]["generated_images"][0]["path"].as_str().unwrap();
    let written = image::open(path).unwrap().to_rgb8();
    let (max, count) = max_pixel_diff(&image_tensor(&[written]), tensor(&refs(), "one_canny_07/image"));
    assert!(max <= 2, "engine + canny preprocessor: uint8 max diff {max} ({count})");
    let info = &response["data"]["processing_metrics"]["model_info"]["controlnets"];
    assert_eq!(info[0]["type"], "canny", "{info}");
    assert_eq!(info[0]["conditioning_scale"], 0.7);
    assert_eq!(engine.status()["loaded_controlnets"].as_array().unwrap().len(), 1);
    let pixels = |response: &Value| image::open(response["data"]["generated_images"][0]["path"].as_str().unwrap()).unwrap().to_rgb8();
    let first = pixels(&response);

    // cpu_offload builds the ControlNet from host weights for the request: the same image.
    let mut offloaded = req.clone();
    offloaded["precision"] = json!({"cpu_offload": true});
    let response: Value = serde_json::from_str(&engine.handle_json(&offloaded.to_string())).unwrap();
    assert_eq!(response["success"], true, "{response}");
    assert_eq!(pixels(&response), first, "cpu_offload changed the ControlNet image");
    assert!(engine.status()["loaded_controlnets"].as_array().unwrap().iter().any(|c| c["cpu_offload"] == true && c["host_weight_bytes"].as_u64() > Some(0)));

    // A LoRA patches the UNet under the ControlNet's guidance: the image changes, the request works.
    let mut with_lora = req.clone();
    with_lora["lora"] = json!({"enabled": true, "models": [{"name": fixtures().join("lora/tiny_lora_peft.safetensors").display().to_string(), "weight": 1.0}]});
    let response: Value = serde_json::from_str(&engine.handle_json(&with_lora.to_string())).unwrap();
    assert_eq!(response["success"], true, "{response}");
    assert_ne!(pixels(&response), first, "the LoRA changed nothing");

    // An unreadable control image is a validation error at its field.
    let mut bad = req.clone();
    bad["controlnet"]["control_image"] = json!(models.path().join("missing.png").display().to_string());
    let response: Value = serde_json::from_str(&engine.handle_json(&bad.to_string())).unwrap();
    assert_eq!(response["error_code"], "VALIDATION_ERROR", "{response}");
    assert_eq!(response["field_errors"][0]["field"], "controlnet.control_image", "{response}");
    // A type with no ControlNet in models_dir names the model field.
    let mut missing = req.clone();
    missing["controlnet"] = json!({"enabled": true, "type": "depth", "control_image": source.display().to_string()});
    let response: Value = serde_json::from_str(&engine.handle_json(&missing.to_string())).unwrap();
    assert_eq!(response["field_errors"][0]["field"], "controlnet.model", "{response}");
}
