//! Real-ESRGAN upscaling against a plain PyTorch RRDBNet with `RealESRGANer`'s pre/post
//! processing (tools/reference/make_esrgan_references.py): `.pth` (params_ema / params) and
//! safetensors weights, ×4 and ×2 (pixel unshuffle, mod padding), pre-padding, tiling, the
//! Lanczos4 `outscale`, a pickle that would run code, and the engine's `output.upscale`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::*;
use sdxl::loader::esrgan::load_upscaler;
use sdxl::pipeline::upscale::{upscale_with_network, UpscaleSettings};
use serde_json::{json, Value};

static CPU: Device = Device::Cpu;

fn esrgan(file: &str) -> PathBuf {
    fixtures().join("esrgan").join(file)
}

fn refs() -> HashMap<String, Tensor> {
    reference("esrgan")
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("reference/esrgan_cases.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["cases"].as_array().unwrap().clone()
}

fn rgb(t: &Tensor) -> image::RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    image::RgbImage::from_raw(w as u32, h as u32, t.to_dtype(DType::U8).unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap()
}

fn pixel_diff(a: &image::RgbImage, b: &image::RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let diffs: Vec<u8> = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).collect();
    (*diffs.iter().max().unwrap(), diffs.iter().filter(|&&d| d > 0).count())
}

fn run(case: &Value, weights: &PathBuf) -> image::RgbImage {
    let r = refs();
    let name = case["name"].as_str().unwrap();
    let input = match r.get(&format!("{name}/input")) {
        Some(cropped) => rgb(cropped),
        None => image::open(esrgan("input_48x40.png")).unwrap().to_rgb8(),
    };
    let net = load_upscaler(weights, &CPU, DType::F32).expect("the tiny RRDBNet loads");
    let settings = UpscaleSettings {
        tile: case["tile"].as_u64().unwrap() as u32,
        tile_pad: case["tile_pad"].as_u64().unwrap() as u32,
        pre_pad: case["pre_pad"].as_u64().unwrap() as u32,
        outscale: case["outscale"].as_f64().unwrap_or(case["netscale"].as_f64().unwrap()),
    };
    upscale_with_network(&net.network, &input, &settings, &CPU, DType::F32).expect("upscales")
}

#[test]
fn every_case_equals_real_esrgan() {
    let r = refs();
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let weights = fixtures().join("..").join("..").join(case["weights"].as_str().unwrap());
        let ours = run(&case, &weights);
        let expected = rgb(tensor(&r, &format!("{name}/out")));
        let (max, count) = pixel_diff(&ours, &expected);
        assert!(max <= 1, "{name}: uint8 max diff {max} ({count} values differ)");
    }
}

#[test]
fn tiling_with_enough_padding_changes_nothing_beyond_one_level() {
    let cases = cases();
    let case = |name: &str| cases.iter().find(|c| c["name"] == name).unwrap().clone();
    let tiled = run(&case("x4_tiled_prepad10"), &esrgan("tiny_x4plus.pth"));
    let untiled = run(&case("x4_prepad10"), &esrgan("tiny_x4plus.pth"));
    let (max, _) = pixel_diff(&tiled, &untiled);
    assert!(max <= 1, "tile 16 / pad 10 against untiled: {max}");
}

#[test]
fn safetensors_weights_give_the_pth_image() {
    let cases = cases();
    let case = cases.iter().find(|c| c["name"] == "x4").unwrap();
    let from_pth = run(case, &esrgan("tiny_x4plus.pth"));
    let from_safetensors = run(case, &esrgan("tiny_x4plus.safetensors"));
    assert_eq!(from_pth, from_safetensors);
    let net = load_upscaler(&esrgan("tiny_x2plus.pth"), &CPU, DType::F32).unwrap();
    let config = net.network.config();
    assert_eq!((config.scale, config.in_channels, config.num_block, config.num_feat, config.num_grow_ch), (2, 12, 2, 8, 4), "architecture read from the weights");
}

#[test]
fn a_pickle_that_would_run_code_is_refused_and_runs_nothing() {
    let marker = PathBuf::from("/tmp/sdxl_native_esrgan_pwned");
    let _ = std::fs::remove_file(&marker);
    let error = load_upscaler(&esrgan("malicious.pth"), &CPU, DType::F32).err().expect("refused").to_string();
    assert!(error.contains("posix.system") || error.contains("system"), "{error}");
    assert!(!marker.exists(), "the pickle's code ran");
    let error = load_upscaler(&esrgan("not_esrgan.pth"), &CPU, DType::F32).err().expect("not an RRDBNet").to_string();
    assert!(error.contains("not an RRDBNet"), "{error}");
}

#[test]
fn the_engine_upscales_generated_images_and_names_missing_models() {
    let output = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    std::fs::create_dir(models.path().join("upscalers")).unwrap();
    std::fs::copy(esrgan("tiny_x2plus.pth"), models.path().join("upscalers/RealESRGAN_x2plus.pth")).unwrap();
    let config = json!({"device": "cpu", "output_dir": output.path(), "models_dir": models.path(), "limits": {"min_size": 64}});
    let engine = sdxl::Engine::from_json(&config.to_string()).unwrap();
    let base = json!({"prompt": "a lighthouse", "models": {"base": "builtin:tiny"}, "dimensions": {"width": 64, "height": 64},
        "hyperparameters": {"num_inference_steps": 2, "seed": 3}, "scheduler": "EulerDiscreteScheduler"});
    let plain: Value = serde_json::from_str(&engine.handle_json(&base.to_string())).unwrap();
    assert_eq!(plain["success"], true, "{plain}");
    let plain_image = image::open(plain["data"]["generated_images"][0]["path"].as_str().unwrap()).unwrap().to_rgb8();

    // The default model for factor 2 is <models_dir>/upscalers/RealESRGAN_x2plus.pth.
    let mut request = base.clone();
    request["output"] = json!({"upscale": {"enabled": true, "factor": 2}});
    let response: Value = serde_json::from_str(&engine.handle_json(&request.to_string())).unwrap();
    assert_eq!(response["success"], true, "{response}");
    assert_eq!(response["data"]["generated_images"][0]["width"], 128);
    assert!(response["data"]["processing_metrics"]["stage_times"]["upscale"].as_f64().unwrap() > 0.0);
    let upscaled = image::open(response["data"]["generated_images"][0]["path"].as_str().unwrap()).unwrap().to_rgb8();
    // The same as upscaling the plain image directly (pre_pad 10, tile 512: one tile).
    let net = load_upscaler(&esrgan("tiny_x2plus.pth"), &CPU, DType::F32).unwrap();
    let settings = UpscaleSettings { tile: 512, tile_pad: 16, pre_pad: 10, outscale: 2.0 };
    assert_eq!(upscaled, upscale_with_network(&net.network, &plain_image, &settings, &CPU, DType::F32).unwrap());
    assert_eq!(engine.status()["loaded_upscalers"].as_array().unwrap().len(), 1);

    // Lanczos needs no model.
    request["output"] = json!({"upscale": {"enabled": true, "factor": 4, "method": "lanczos"}});
    let response: Value = serde_json::from_str(&engine.handle_json(&request.to_string())).unwrap();
    assert_eq!(response["data"]["generated_images"][0]["width"], 256, "{response}");

    // Factor 4 has no model here: the error lists the paths tried, at its field.
    request["output"] = json!({"upscale": {"enabled": true, "factor": 4}});
    let response: Value = serde_json::from_str(&engine.handle_json(&request.to_string())).unwrap();
    assert_eq!(response["field_errors"][0]["field"], "output.upscale.model", "{response}");
    assert!(response["field_errors"][0]["message"].as_str().unwrap().contains("RealESRGAN_x4plus.pth"), "{response}");
}
