//! The engine at run time: progress, cancellation (callback and cross-thread), timeouts,
//! status, logs, and many threads sharing one engine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sdxl::pipeline::Stage;
use sdxl::Engine;
use serde_json::{json, Value};

fn engine(tag: &str) -> Engine {
    let output = std::env::temp_dir().join(format!("sdxl-runtime-{tag}-{}", std::process::id()));
    Engine::from_json(&json!({"device": "cpu", "output_dir": output, "limits": {"min_size": 64}}).to_string()).unwrap()
}

fn request(steps: u32, extra: Value) -> String {
    let mut request = json!({
        "prompt": "a lighthouse", "models": {"base": "builtin:tiny"},
        "dimensions": {"width": 64, "height": 64},
        "hyperparameters": {"num_inference_steps": steps, "seed": 5},
        "scheduler": "EulerDiscreteScheduler",
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut request, extra) {
        base.extend(extra);
    }
    request.to_string()
}

fn respond(engine: &Engine, text: &str) -> Value {
    serde_json::from_str(&engine.handle_json(text)).unwrap()
}

#[test]
fn progress_reports_every_stage_and_step_in_order() {
    let engine = engine("progress");
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    engine.set_progress_callback(Some(Box::new(move |id, event| {
        sink.lock().unwrap().push((id.to_string(), event.stage, event.step, event.total_steps));
        true
    })));
    let response = respond(&engine, &request(3, json!({"metadata": {"request_id": "progress-1"}})));
    assert_eq!(response["success"], true, "{response}");
    let events = events.lock().unwrap();
    assert!(events.iter().all(|(id, ..)| id == "progress-1"));
    let stages: Vec<Stage> = events.iter().map(|e| e.1).collect();
    assert_eq!(stages.first(), Some(&Stage::Encode));
    assert_eq!(stages.last(), Some(&Stage::Save));
    let denoise_steps: Vec<u32> = events.iter().filter(|e| e.1 == Stage::Denoise).map(|e| e.2).collect();
    assert_eq!(denoise_steps, vec![0, 1, 2, 3], "{events:?}");
    assert!(events.iter().filter(|e| e.1 == Stage::Denoise).all(|e| e.3 == 3));
}

#[test]
fn a_callback_returning_false_cancels_and_the_engine_serves_the_next_request() {
    let engine = engine("cancel-callback");
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    engine.set_progress_callback(Some(Box::new(move |_, event| {
        counter.fetch_add(1, Ordering::SeqCst);
        !(event.stage == Stage::Denoise && event.step >= 1)
    })));
    let response = respond(&engine, &request(20, json!({})));
    assert_eq!(response["error_code"], "CANCELLED", "{response}");
    assert!(calls.load(Ordering::SeqCst) <= 4, "cancelled within one step: {} callbacks", calls.load(Ordering::SeqCst));
    engine.set_progress_callback(None);
    let next = respond(&engine, &request(2, json!({})));
    assert_eq!(next["success"], true, "{next}");
}

#[test]
fn cancel_from_another_thread_stops_the_request_in_flight() {
    let engine = Arc::new(engine("cancel-thread"));
    let started = Arc::new(std::sync::Barrier::new(2));
    let gate = started.clone();
    let once = AtomicUsize::new(0);
    engine.set_progress_callback(Some(Box::new(move |_, event| {
        if event.stage == Stage::Denoise && once.fetch_add(1, Ordering::SeqCst) == 0 {
            gate.wait();
        }
        true
    })));
    let canceller = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            started.wait();
            engine.cancel();
        })
    };
    let response = respond(&engine, &request(150, json!({})));
    canceller.join().unwrap();
    assert_eq!(response["error_code"], "CANCELLED", "{response}");
}

#[test]
fn metadata_timeout_is_enforced() {
    let engine = engine("timeout");
    let response = respond(&engine, &request(150, json!({"metadata": {"timeout": 0.05}})));
    assert_eq!(response["error_code"], "TIMEOUT", "{response}");
    assert!(response["error"].as_str().unwrap_or_default().contains("left the queue"), "the error says what the clock covers: {response}");
}

#[test]
fn without_a_timeout_nothing_is_cut_short_and_the_engine_default_applies() {
    // No default timeout: a request with none runs to the end however long it takes.
    let engine = engine("no-timeout");
    assert_eq!(respond(&engine, &request(3, json!({})))["success"], true);
    // An engine-wide timeout applies to requests that set none, and a request's own wins.
    let dir = tempfile::tempdir().unwrap();
    let config = json!({"device": "cpu", "output_dir": dir.path(), "limits": {"min_size": 64}, "timeout_s": 0.05});
    let engine = Engine::from_json(&config.to_string()).expect("engine");
    let response = respond(&engine, &request(150, json!({})));
    assert_eq!(response["error_code"], "TIMEOUT", "{response}");
    assert_eq!(respond(&engine, &request(2, json!({"metadata": {"timeout": 600}})))["success"], true);
}

#[test]
fn status_reports_models_requests_and_version() {
    let engine = engine("status");
    assert_eq!(respond(&engine, &request(1, json!({})))["success"], true);
    let status = respond(&engine, r#"{"message_type":"status_request","request_id":"s1"}"#);
    assert_eq!(status["request_id"], "s1");
    let data = &status["data"];
    assert_eq!(data["requests_served"], 1);
    assert_eq!(data["device_name"], "cpu");
    assert_eq!(data["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(data["loaded_models"][0]["name"], "builtin:tiny");
    let weights = data["loaded_models"][0]["device_weight_bytes"].as_u64().unwrap();
    assert!(weights > 1 << 20, "{data}");
    assert_eq!(data["memory"]["weights_on_device_bytes"], weights, "{data}");
    assert_eq!(data["memory"]["budget_bytes"], Value::Null, "{data}");
    assert_eq!(data["cached_loras"], json!([]), "{data}");
}

#[test]
fn many_threads_share_one_engine_safely() {
    let engine = Arc::new(engine("threads"));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let engine = engine.clone();
            std::thread::spawn(move || respond(&engine, &request(2, json!({"hyperparameters": {"num_inference_steps": 2, "seed": i}}))))
        })
        .collect();
    let mut seeds: Vec<u64> = handles
        .into_iter()
        .map(|h| {
            let response = h.join().unwrap();
            assert_eq!(response["success"], true, "{response}");
            response["data"]["generated_images"][0]["seed"].as_u64().unwrap()
        })
        .collect();
    seeds.sort();
    assert_eq!(seeds, vec![0, 1, 2, 3]);
}

#[test]
fn log_lines_reach_the_host_callback() {
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    sdxl::engine::logging::set_sink(Some(Box::new(move |_, _, message| sink.lock().unwrap().push(message.to_string()))), 2);
    let engine = engine("logs");
    assert_eq!(respond(&engine, &request(1, json!({})))["success"], true);
    sdxl::engine::logging::set_sink(None, 2);
    let lines = lines.lock().unwrap();
    assert!(lines.iter().any(|l| l.contains("loading model")), "{lines:?}");
}

#[test]
fn a_request_over_the_memory_budget_is_refused_before_it_runs() {
    let output = std::env::temp_dir().join(format!("sdxl-runtime-memory-{}", std::process::id()));
    let engine = Engine::from_json(&json!({"device": "cpu", "output_dir": output, "limits": {"min_size": 64}, "max_memory_gb": 0.001}).to_string()).unwrap();
    let response = respond(&engine, &request(2, json!({"dimensions": {"width": 512, "height": 512}})));
    assert_eq!(response["error_code"], "OUT_OF_MEMORY", "{response}");
    assert!(response["error"].as_str().unwrap().contains("needs about"), "{response}");
    let small = Engine::from_json(&json!({"device": "cpu", "output_dir": output, "limits": {"min_size": 64}, "max_memory_gb": 1.0}).to_string()).unwrap();
    assert_eq!(respond(&small, &request(1, json!({})))["success"], true);
}

#[test]
fn every_response_reports_the_peak_memory_of_the_request() {
    let engine = engine("peak-memory");
    let response = respond(&engine, &request(2, json!({})));
    let peak = response["data"]["processing_metrics"]["peak_memory_bytes"].as_u64().unwrap();
    // On CPU this is the resident set: at least the tiny model and the runtime.
    assert!(peak > 10 << 20, "peak {peak} bytes");
}

#[test]
fn a_model_loaded_with_a_config_folder_serves_requests_that_name_it() {
    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let engine = engine("config-load");
    let checkpoint = fixtures.join("tiny-sdxl.safetensors");
    engine
        .load_model_json(&json!({"base": checkpoint, "config": fixtures.join("tiny-sdxl")}).to_string())
        .expect("the tiny single file loads with its config folder");
    let mut body: Value = serde_json::from_str(&request(1, json!({}))).unwrap();
    body["models"]["base"] = json!(checkpoint);
    let response = respond(&engine, &body.to_string());
    assert_eq!(response["success"], true, "{response}");
}

#[test]
fn engine_configs_that_would_break_later_requests_are_refused_at_create() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    for (config, field) in [
        (serde_json::json!({"device": "cpu", "output_dir": out, "limits": {"size_multiple": 0}}), "limits.size_multiple"),
        (serde_json::json!({"device": "cpu", "output_dir": out, "limits": {"size_multiple": 12}}), "limits.size_multiple"),
        (serde_json::json!({"device": "cpu", "output_dir": out, "limits": {"min_size": 0}}), "limits.min_size"),
        (serde_json::json!({"device": "cpu", "output_dir": out, "limits": {"min_size": 512, "max_size": 256}}), "limits.min_size"),
        (serde_json::json!({"device": "cpu", "output_dir": out, "limits": {"max_size": 4_000_000_000u64}}), "limits.max_size"),
        (serde_json::json!({"device": "cpu", "output_dir": out, "limits": {"max_batch": 0}}), "limits.max_batch"),
        (serde_json::json!({"device": "cpu", "output_dir": out, "limits": {"max_steps": 0}}), "limits.max_steps"),
        (serde_json::json!({"device": "cpu", "output_dir": out, "limits": {"max_lora_weight": -1.0}}), "limits.max_lora_weight"),
        (serde_json::json!({"device": "cpu", "output_dir": out, "max_memory_gb": -1.0}), "max_memory_gb"),
        (serde_json::json!({"device": "cpu", "output_dir": out, "max_memory_gb": 0.0}), "max_memory_gb"),
    ] {
        let error = match sdxl::Engine::from_json(&config.to_string()) {
            Ok(_) => panic!("{config} was accepted"),
            Err(error) => error,
        };
        assert_eq!(error.code_name(), "VALIDATION_ERROR", "{config}: {error}");
        assert!(error.field_errors().iter().any(|f| f.field == field), "{config}: expected {field} in {error}");
    }
    // NaN cannot be written in JSON; the same check guards configs built in code.
    let mut config = sdxl::EngineConfig { device: "cpu".into(), output_dir: dir.path().into(), ..Default::default() };
    config.max_memory_gb = Some(f64::NAN);
    assert!(sdxl::Engine::new(config.clone()).is_err(), "a NaN budget is refused");
    config.max_memory_gb = None;
    config.limits.min_guidance = f64::NAN;
    assert!(sdxl::Engine::new(config).is_err(), "a NaN guidance limit is refused");
}
