//! PNG files remember how they were made: A1111's `parameters` chunk (read back by a PNG
//! library and parsed with A1111's rules) and the request chunk, which regenerates the same
//! file byte for byte.

mod common;

use common::fixtures;
use sdxl::image::metadata::{parse_settings_line, read_png_text, Parameters, PARAMETERS_KEY, REQUEST_KEY};
use serde_json::{json, Value};

fn chunk(bytes: &[u8], key: &str) -> Option<String> {
    read_png_text(bytes).unwrap().into_iter().find(|(k, _)| k == key).map(|(_, text)| text)
}

#[test]
fn a1111_settings_lines_parse_with_the_formats_rules() {
    let line = r#"Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 1024x1024, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Lora hashes: "a: 1234, b: 5678", Version: v1.9.4"#;
    let pairs = parse_settings_line(line);
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(pairs.len(), 10, "{pairs:?}");
    assert_eq!(get("Sampler"), Some("DPM++ 2M"));
    assert_eq!(get("Size"), Some("1024x1024"));
    assert_eq!(get("Lora hashes"), Some("a: 1234, b: 5678"), "a quoted value is taken whole");
    assert_eq!(get("Version"), Some("v1.9.4"));
    // What we write parses back to what we meant.
    let parameters = Parameters {
        prompt: "a lighthouse, (stormy sea:1.2)".into(),
        negative_prompt: Some("blurry".into()),
        loras: vec![("detail".into(), 0.8)],
        steps: 30,
        sampler: "Euler a".into(),
        schedule_type: None,
        cfg_scale: 7.0,
        seed: 42,
        width: 1024,
        height: 768,
        model: "sd_xl_base_1.0".into(),
        model_hash: Some("31e35c80fc".into()),
        denoising_strength: Some(0.6),
        extra: vec![("ControlNet 0".into(), "Module: canny, Model: cn, Weight: 0.7".into())],
    };
    let text = parameters.to_a1111();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "a lighthouse, (stormy sea:1.2) <lora:detail:0.8>");
    assert_eq!(lines[1], "Negative prompt: blurry");
    assert_eq!(
        lines[2],
        r#"Steps: 30, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 1024x768, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.6, ControlNet 0: "Module: canny, Model: cn, Weight: 0.7""#
    );
    let pairs = parse_settings_line(lines[2]);
    assert_eq!(pairs.last().unwrap(), &("ControlNet 0".to_string(), "Module: canny, Model: cn, Weight: 0.7".to_string()));
}

#[test]
fn every_png_has_both_chunks_and_its_request_makes_the_same_file() {
    let output = tempfile::tempdir().unwrap();
    let config = json!({"device": "cpu", "output_dir": output.path(), "limits": {"min_size": 64}});
    let engine = sdxl::Engine::from_json(&config.to_string()).unwrap();
    let lora = fixtures().join("lora/tiny_lora_peft.safetensors");
    let request = json!({
        "prompt": "a lighthouse at dawn", "negative_prompt": "blurry",
        "models": {"base": fixtures().join("tiny-sdxl.safetensors").display().to_string()},
        "lora": {"enabled": true, "models": [{"name": lora.display().to_string(), "weight": 0.8}]},
        "dimensions": {"width": 64, "height": 64}, "batch": {"size": 2},
        "hyperparameters": {"num_inference_steps": 3, "guidance_scale": 5.0, "seed": -1},
        "scheduler": "DPMSolverMultistepScheduler", "scheduler_options": {"use_karras_sigmas": true},
    });
    // The single file needs the tiny config: load it ahead with its config folder.
    let load = json!({"base": fixtures().join("tiny-sdxl.safetensors").display().to_string(), "config": fixtures().join("tiny-sdxl").display().to_string()});
    engine.load_model_json(&load.to_string()).expect("tiny single file loads with its config");
    let response: Value = serde_json::from_str(&engine.handle_json(&request.to_string())).unwrap();
    assert_eq!(response["success"], true, "{response}");
    let second = response["data"]["generated_images"][1].clone();
    let path = second["path"].as_str().unwrap();
    let bytes = std::fs::read(path).unwrap();
    let parameters = chunk(&bytes, PARAMETERS_KEY).expect("parameters chunk");
    let lines: Vec<&str> = parameters.lines().collect();
    assert_eq!(lines[0], "a lighthouse at dawn <lora:tiny_lora_peft:0.8>", "{parameters}");
    assert_eq!(lines[1], "Negative prompt: blurry");
    let settings = parse_settings_line(lines[2]);
    let get = |key: &str| settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(get("Steps"), "3");
    assert_eq!(get("Sampler"), "DPM++ 2M");
    assert_eq!(get("Schedule type"), "Karras");
    assert_eq!(get("CFG scale"), "5");
    assert_eq!(get("Seed"), second["seed"].to_string(), "image 1's own seed");
    assert_eq!(get("Size"), "64x64");
    assert_eq!(get("Model"), "tiny-sdxl");
    // AutoV2: the first 10 hex digits of the file's SHA-256 (`sha256sum tests/fixtures/tiny-sdxl.safetensors`).
    assert_eq!(get("Model hash"), "b352771321");
    assert!(get("Version").starts_with("sdxl-native "), "{parameters}");

    // The request chunk runs again to the same file, byte for byte (the random seed is resolved in it).
    let replay = chunk(&bytes, REQUEST_KEY).expect("request chunk");
    let replayed: Value = serde_json::from_str(&engine.handle_json(&replay)).unwrap();
    assert_eq!(replayed["success"], true, "{replayed}");
    let again = std::fs::read(replayed["data"]["generated_images"][1]["path"].as_str().unwrap()).unwrap();
    assert!(again == bytes, "the replayed PNG differs from the original");

    // JPEG carries no text (documented).
    let mut jpeg = request.clone();
    jpeg["output"] = json!({"format": "jpeg"});
    jpeg["batch"] = json!({"size": 1});
    let response: Value = serde_json::from_str(&engine.handle_json(&jpeg.to_string())).unwrap();
    assert_eq!(response["success"], true, "{response}");
}

#[test]
fn return_images_gives_the_files_bytes_and_writes_nothing() {
    use base64::Engine as _;
    let output = tempfile::tempdir().unwrap();
    let config = json!({"device": "cpu", "output_dir": output.path(), "limits": {"min_size": 64}});
    let engine = sdxl::Engine::from_json(&config.to_string()).unwrap();
    let request = json!({"prompt": "a red cube", "models": {"base": "builtin:tiny"}, "dimensions": {"width": 64, "height": 64},
        "hyperparameters": {"num_inference_steps": 2, "seed": 5}, "scheduler": "EulerDiscreteScheduler", "output": {"save_path": "files"}});
    let written: Value = serde_json::from_str(&engine.handle_json(&request.to_string())).unwrap();
    let file = std::fs::read(written["data"]["generated_images"][0]["path"].as_str().unwrap()).unwrap();
    for format in ["png", "jpeg", "webp"] {
        let mut returned = request.clone();
        returned["output"] = json!({"save_path": "returned", "return_images": true, "format": format});
        let response: Value = serde_json::from_str(&engine.handle_json(&returned.to_string())).unwrap();
        assert_eq!(response["success"], true, "{response}");
        let image = &response["data"]["generated_images"][0];
        assert!(image["path"].is_null(), "{image}");
        assert_eq!(image["format"], format);
        let bytes = base64::engine::general_purpose::STANDARD.decode(image["data"].as_str().unwrap()).unwrap();
        let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (64, 64));
        if format == "png" {
            // The same bytes the file holds (metadata included: the request differs only in output).
            let pixels = image::load_from_memory(&file).unwrap().to_rgb8();
            assert_eq!(decoded, pixels, "returned PNG pixels differ from the written file's");
        }
    }
    assert!(!output.path().join("returned").exists(), "return_images wrote a file");
}

/// A request whose second file cannot be written (a directory stands at its name), and one
/// whose disk is full (its temporary file is /dev/full): clear errors, no temporary file left,
/// and the image already written is named.
#[test]
fn write_faults_leave_no_partial_file_and_name_what_was_written() {
    let output = tempfile::tempdir().unwrap();
    let config = json!({"device": "cpu", "output_dir": output.path(), "limits": {"min_size": 64}});
    let engine = sdxl::Engine::from_json(&config.to_string()).unwrap();
    let request = |id: &str, batch: u32| {
        json!({"prompt": "a red cube", "models": {"base": "builtin:tiny"}, "dimensions": {"width": 64, "height": 64}, "batch": {"size": batch},
            "hyperparameters": {"num_inference_steps": 1, "seed": 5}, "scheduler": "EulerDiscreteScheduler",
            "output": {"save_path": "faults"}, "metadata": {"request_id": id}})
        .to_string()
    };
    let dir = output.path().join("faults");
    std::fs::create_dir_all(dir.join("blocked_1_6.png")).unwrap();
    let response: Value = serde_json::from_str(&engine.handle_json(&request("blocked", 2))).unwrap();
    assert_eq!(response["success"], false);
    assert_eq!(response["error_code"], "IO_ERROR", "{response}");
    let message = response["error"].as_str().unwrap();
    assert!(message.contains("blocked_1_6.png") && message.contains("already written by this request") && message.contains("blocked_0_5.png"), "{message}");
    assert!(dir.join("blocked_0_5.png").is_file(), "the first image stays");

    // A full disk: the temporary file the engine writes is /dev/full (ENOSPC on write).
    let temp = dir.join(format!(".full_0_5.png.{}.tmp", std::process::id()));
    std::os::unix::fs::symlink("/dev/full", &temp).unwrap();
    let response: Value = serde_json::from_str(&engine.handle_json(&request("full", 1))).unwrap();
    assert_eq!(response["success"], false, "{response}");
    assert!(response["error"].as_str().unwrap().contains("full_0_5.png"), "{response}");
    assert!(!dir.join("full_0_5.png").exists(), "no partial image under the final name");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // The engine still works after both.
    let response: Value = serde_json::from_str(&engine.handle_json(&request("after", 1))).unwrap();
    assert_eq!(response["success"], true, "{response}");
}

#[test]
fn webp_is_lossy_at_the_requested_quality_or_lossless() {
    use base64::Engine as _;
    let output = tempfile::tempdir().unwrap();
    let config = json!({"device": "cpu", "output_dir": output.path(), "limits": {"min_size": 64}});
    let engine = sdxl::Engine::from_json(&config.to_string()).unwrap();
    let run = |output: Value| -> (Vec<u8>, Value) {
        let request = json!({"prompt": "a red cube", "models": {"base": "builtin:tiny"}, "dimensions": {"width": 128, "height": 128},
            "hyperparameters": {"num_inference_steps": 2, "seed": 5}, "scheduler": "EulerDiscreteScheduler", "output": output});
        let response: Value = serde_json::from_str(&engine.handle_json(&request.to_string())).unwrap();
        assert_eq!(response["success"], true, "{response}");
        let data = response["data"]["generated_images"][0]["data"].as_str().unwrap();
        (base64::engine::general_purpose::STANDARD.decode(data).unwrap(), response)
    };
    let (png, _) = run(json!({"return_images": true}));
    let pixels = image::load_from_memory(&png).unwrap().to_rgb8();
    let (low, _) = run(json!({"return_images": true, "format": "webp", "quality": 20}));
    let (high, _) = run(json!({"return_images": true, "format": "webp", "quality": 95}));
    let (lossless, response) = run(json!({"return_images": true, "format": "webp", "lossless": true}));
    assert!(response["warnings"].as_array().unwrap().iter().all(|w| !w.as_str().unwrap().contains("output.quality")), "{response}");
    assert!(low.len() < high.len(), "quality 20 ({} bytes) should be smaller than 95 ({} bytes)", low.len(), high.len());
    let decode = |bytes: &[u8]| image::load_from_memory(bytes).unwrap().to_rgb8();
    let error = |a: &image::RgbImage| a.as_raw().iter().zip(pixels.as_raw()).map(|(x, y)| x.abs_diff(*y) as u64).sum::<u64>();
    assert!(error(&decode(&low)) > error(&decode(&high)), "lower quality should lose more");
    assert!(error(&decode(&high)) > 0, "lossy WebP");
    assert_eq!(decode(&lossless), pixels, "lossless WebP keeps every pixel");
}
