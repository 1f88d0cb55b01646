//! What can be judged from the request alone is judged before any model is loaded, evicted or
//! any prompt encoded (issue 12, item 4).

use sdxl::Engine;
use serde_json::{json, Value};

fn engine(dir: &std::path::Path, max_loaded_models: usize) -> Engine {
    let config = json!({"device": "cpu", "output_dir": dir, "models_dir": dir, "limits": {"min_size": 64}, "max_loaded_models": max_loaded_models});
    Engine::from_json(&config.to_string()).expect("engine")
}

fn respond(engine: &Engine, data: Value) -> Value {
    let message = json!({"message_type": "inference_request", "data": data});
    serde_json::from_str(&engine.handle_json(&message.to_string())).expect("JSON response")
}

fn loaded(engine: &Engine) -> Vec<String> {
    let status: Value = serde_json::from_str(&engine.handle_json(r#"{"message_type":"status_request"}"#)).unwrap();
    status["data"]["loaded_models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap_or_default().to_string()).collect()
}

fn tiny(extra: Value) -> Value {
    let mut request = json!({"prompt": "a lighthouse", "models": {"base": "builtin:tiny"}, "dimensions": {"width": 64, "height": 64},
        "hyperparameters": {"num_inference_steps": 2, "seed": 1}, "scheduler": "EulerDiscreteScheduler"});
    for (key, value) in extra.as_object().unwrap() {
        request[key] = value.clone();
    }
    request
}

#[test]
fn a_scheduler_option_the_scheduler_lacks_is_refused_before_the_model_is_looked_up() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 2);
    let response = respond(&engine, tiny(json!({"models": {"base": "no-such-model"}, "scheduler": "EulerAncestralDiscreteScheduler",
        "scheduler_options": {"use_karras_sigmas": true}})));
    assert_eq!(response["error_code"], "VALIDATION_ERROR", "{response}");
    assert_eq!(response["field_errors"][0]["field"], "scheduler_options", "{response}");
    assert!(loaded(&engine).is_empty());
}

#[test]
fn names_that_do_not_resolve_fail_before_anything_is_loaded_or_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 1);
    assert_eq!(respond(&engine, tiny(json!({})))["success"], true);
    assert_eq!(loaded(&engine), ["builtin:tiny"]);

    // A base model that is nowhere: MODEL_NOT_FOUND, and the cached model stays (with one slot,
    // a load would have evicted it first).
    let response = respond(&engine, tiny(json!({"models": {"base": "missing-model"}})));
    assert_eq!(response["error_code"], "MODEL_NOT_FOUND", "{response}");
    assert_eq!(loaded(&engine), ["builtin:tiny"]);

    // A LoRA that is nowhere: its field, before the model is touched.
    let response = respond(&engine, tiny(json!({"lora": {"enabled": true, "models": [{"name": "missing-lora", "weight": 0.5}]}})));
    assert_eq!(response["error_code"], "VALIDATION_ERROR", "{response}");
    assert_eq!(response["field_errors"][0]["field"], "lora.models[0].name", "{response}");
    assert_eq!(loaded(&engine), ["builtin:tiny"]);
}

#[test]
fn prompts_beyond_the_window_limit_are_refused_quickly_at_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 2);
    // A megabyte: refused by size before tokenizing.
    let started = std::time::Instant::now();
    let response = respond(&engine, tiny(json!({"prompt": "a ".repeat(500_000)})));
    assert_eq!(response["error_code"], "VALIDATION_ERROR", "{}", &response.to_string()[..300]);
    assert_eq!(response["field_errors"][0]["field"], "prompt");
    assert!(started.elapsed().as_secs_f64() < 5.0, "refused in {:?}", started.elapsed());
    // 17 windows of real tokens (the default limit is 16): refused after tokenizing, at its field.
    let words = "lighthouse ".repeat(75 * 17);
    let response = respond(&engine, tiny(json!({"negative_prompt": words})));
    assert_eq!(response["error_code"], "VALIDATION_ERROR", "{}", &response.to_string()[..300]);
    assert_eq!(response["field_errors"][0]["field"], "negative_prompt");
    // 3 windows are fine.
    assert_eq!(respond(&engine, tiny(json!({"prompt": "lighthouse ".repeat(200)})))["success"], true);
}

#[test]
fn a_model_load_names_its_refiner_and_vae_and_loads_them() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 3);
    // Names that resolve to nothing are refused at their field before anything loads.
    for (data, field) in [(json!({"base": "builtin:tiny", "refiner": "sd_xl_refiner_1.0"}), "refiner"), (json!({"base": "builtin:tiny", "vae": "sdxl-vae-fp16-fix"}), "vae")] {
        let message = json!({"message_type": "model_load_request", "data": data});
        let response: Value = serde_json::from_str(&engine.handle_json(&message.to_string())).unwrap();
        assert_eq!(response["error_code"], "VALIDATION_ERROR", "{response}");
        assert_eq!(response["field_errors"][0]["field"], field, "{response}");
    }
    assert!(loaded(&engine).is_empty());
    // The tiny refiner fits the built-in tiny base (the same OpenCLIP widths); both load ahead.
    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let data = json!({"base": "builtin:tiny", "refiner": fixtures.join("tiny-sdxl-refiner"), "vae": fixtures.join("tiny-vae-fp16-fix")});
    let response: Value = serde_json::from_str(&engine.handle_json(&json!({"message_type": "model_load_request", "data": data}).to_string())).unwrap();
    assert_eq!(response["success"], true, "{response}");
    let status = engine.status();
    let roles: Vec<&str> = status["loaded_models"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles.len(), 2, "{status}");
    assert!(roles.contains(&"base") && roles.contains(&"refiner"), "{status}");
    assert_eq!(status["loaded_vaes"].as_array().unwrap().len(), 1, "{status}");
}
