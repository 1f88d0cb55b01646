//! Numbers in a response and the status say what they measure (issue 12, items 12 and 13).

mod common;

use common::fixtures;
use sdxl::Engine;
use serde_json::{json, Value};

fn respond(engine: &Engine, data: Value) -> Value {
    let message = json!({"message_type": "inference_request", "data": data});
    serde_json::from_str(&engine.handle_json(&message.to_string())).expect("JSON response")
}

fn status(engine: &Engine) -> Value {
    serde_json::from_str(&engine.handle_json(r#"{"message_type":"status_request"}"#)).unwrap()
}

#[test]
fn iterations_per_second_counts_the_steps_img2img_really_runs() {
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("init.png");
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 90])).save(&init).unwrap();
    let engine = Engine::from_json(&json!({"device": "cpu", "output_dir": dir.path(), "limits": {"min_size": 64}}).to_string()).unwrap();
    let response = respond(&engine, json!({"prompt": "a lighthouse", "models": {"base": "builtin:tiny"}, "dimensions": {"width": 64, "height": 64},
        "hyperparameters": {"num_inference_steps": 10, "strength": 0.5, "seed": 1}, "scheduler": "EulerDiscreteScheduler", "init_image": init}));
    assert_eq!(response["success"], true, "{response}");
    let metrics = &response["data"]["processing_metrics"];
    let steps_run = metrics["iterations_per_second"].as_f64().unwrap() * metrics["stage_times"]["denoise"].as_f64().unwrap();
    assert!((steps_run - 5.0).abs() < 1e-6, "10 steps at strength 0.5 run 5, the metric implies {steps_run}: {metrics}");
    assert_eq!(metrics["peak_memory_measure"], "process_resident_set", "{metrics}");
    assert!(metrics["peak_memory_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn fused_lora_copies_count_in_the_status_and_the_engines_memory_until_the_adapters_change() {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({"device": "cpu", "output_dir": dir.path(), "models_dir": fixtures().join("lora"), "limits": {"min_size": 64}});
    let engine = Engine::from_json(&config.to_string()).unwrap();
    let request = |loras: Value| {
        json!({"prompt": "a lighthouse", "models": {"base": fixtures().join("tiny-sdxl")}, "dimensions": {"width": 64, "height": 64},
            "hyperparameters": {"num_inference_steps": 1, "seed": 1}, "scheduler": "EulerDiscreteScheduler", "lora": loras})
    };
    let plain = respond(&engine, request(json!({"enabled": false})));
    assert_eq!(plain["success"], true, "{plain}");
    let weights_only = plain["data"]["processing_metrics"]["memory_used"].as_u64().unwrap();
    assert_eq!(status(&engine)["data"]["loaded_models"][0]["lora_fused_device_bytes"], 0);

    let fused = respond(&engine, request(json!({"enabled": true, "models": [{"name": "tiny_lora_peft", "weight": 0.8}]})));
    assert_eq!(fused["success"], true, "{fused}");
    let fused_bytes = status(&engine)["data"]["loaded_models"][0]["lora_fused_device_bytes"].as_u64().unwrap();
    assert!(fused_bytes > 0, "a fused adapter keeps copies of the layers it changed");
    assert_eq!(fused["data"]["processing_metrics"]["memory_used"].as_u64().unwrap(), weights_only + fused_bytes, "memory_used counts the fused copies");

    // The next request without adapters restores the loaded weights: the copies are gone.
    respond(&engine, request(json!({"enabled": false})));
    assert_eq!(status(&engine)["data"]["loaded_models"][0]["lora_fused_device_bytes"], 0);
}

#[test]
fn the_memory_estimate_counts_prompt_windows() {
    let model = common::tiny_folder_model();
    let plan = |prompt: String| {
        let request = sdxl::api::parse_request(json!({"prompt": prompt, "models": {"base": "m"}})).unwrap();
        sdxl::api::plan_request(&request, "e".into(), &sdxl::api::Limits::default(), || 1).unwrap()
    };
    // The denoising loop's share: the text context lives there (the decode does not see it).
    let short = sdxl::engine::memory::estimate_denoise_bytes(&model, &plan("a lighthouse".into()));
    let long = sdxl::engine::memory::estimate_denoise_bytes(&model, &plan("lighthouse ".repeat(100)));
    let longest = sdxl::engine::memory::estimate_denoise_bytes(&model, &plan("lighthouse ".repeat(1000)));
    assert!(short < long && long < longest, "estimates {short} < {long} < {longest}");
}
