//! Faults around a running engine (issue 16): files that change under it, a full disk, a
//! cancel during a load, callbacks that panic. Each ends in a documented response and leaves
//! the engine serving (docs/RELIABILITY.md).
//! Also covered elsewhere: an unwritable output mid-batch and `/dev/full` (tests/metadata.rs),
//! `sdxl_free` from another thread during a request (tests/c/free_while_running.c).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use sdxl::Engine;
use serde_json::{json, Value};

fn engine(output: &Path) -> Engine {
    let config = json!({"device": "cpu", "output_dir": output, "limits": {"min_size": 64}});
    Engine::from_json(&config.to_string()).expect("engine")
}

fn request(model: &Value, id: &str, extra: Value) -> String {
    let mut data = json!({"prompt": "a lighthouse", "models": {"base": model}, "dimensions": {"width": 64, "height": 64},
        "hyperparameters": {"num_inference_steps": 2, "seed": 7}, "scheduler": "EulerDiscreteScheduler",
        "metadata": {"request_id": id}, "output": {"return_images": true}});
    common::merge(&mut data, extra);
    json!({"message_type": "inference_request", "data": data}).to_string()
}

fn respond(engine: &Engine, text: &str) -> Value {
    serde_json::from_str(&engine.handle_json(text)).expect("JSON response")
}

fn image_bytes(response: &Value) -> Vec<u8> {
    assert_eq!(response["success"], true, "{response}");
    let data = response["data"]["generated_images"][0]["data"].as_str().expect("returned image");
    let png = base64::engine::general_purpose::STANDARD.decode(data).unwrap();
    image::load_from_memory(&png).unwrap().to_rgb8().into_raw()
}

#[test]
fn model_files_deleted_or_rewritten_after_loading_leave_the_cached_model_serving() {
    let scratch = tempfile::tempdir().unwrap();
    let folder = scratch.path().join("tiny-sdxl");
    common::copy_dir(&common::fixtures().join("tiny-sdxl"), &folder);
    let single = scratch.path().join("tiny-sdxl.safetensors");
    std::fs::copy(common::fixtures().join("tiny-sdxl.safetensors"), &single).unwrap();
    let engine = engine(scratch.path());
    let folder_name = json!(folder);
    let single_name = json!(single);
    // The tiny single file needs its config folder (it is not SDXL-sized): loaded ahead with it.
    let load = json!({"message_type": "model_load_request", "data": {"base": single, "config": common::fixtures().join("tiny-sdxl")}});
    assert_eq!(respond(&engine, &load.to_string())["success"], true);
    let before_folder = image_bytes(&respond(&engine, &request(&folder_name, "before-folder", json!({}))));
    let before_single = image_bytes(&respond(&engine, &request(&single_name, "before-single", json!({}))));

    // The folder is deleted and the single file truncated in place: the weights are in memory.
    std::fs::remove_dir_all(&folder).unwrap();
    std::fs::OpenOptions::new().write(true).open(&single).unwrap().set_len(100).unwrap();
    assert_eq!(image_bytes(&respond(&engine, &request(&folder_name, "after-folder", json!({})))), before_folder);
    assert_eq!(image_bytes(&respond(&engine, &request(&single_name, "after-single", json!({})))), before_single);

    // A new engine meets the files as they are now: each a clean error with its code.
    let fresh = self::engine(scratch.path());
    let gone = respond(&fresh, &request(&folder_name, "gone", json!({})));
    assert_eq!(gone["error_code"], "MODEL_NOT_FOUND", "{gone}");
    let load = json!({"message_type": "model_load_request", "data": {"base": single, "config": common::fixtures().join("tiny-sdxl")}});
    let cut = respond(&fresh, &load.to_string());
    assert_eq!(cut["error_code"], "MODEL_LOAD_ERROR", "{cut}");
    assert!(cut["error"].as_str().unwrap().contains("tiny-sdxl.safetensors"), "{cut}");
    assert_eq!(respond(&fresh, &request(&json!("builtin:tiny"), "still", json!({})))["success"], true);
}

#[test]
fn a_cancel_during_a_model_load_lets_the_load_finish_and_ends_the_request_cancelled() {
    let _sink = log_sink_lock();
    let scratch = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(scratch.path()));
    let model = json!(common::fixtures().join("tiny-sdxl"));
    // The engine logs "loading model" on the request's thread as the load starts: the cancel is
    // sent from there, so it lands while the model loads, never before or after.
    let cancelled = Arc::new(AtomicBool::new(false));
    let (canceller, flag) = (engine.clone(), cancelled.clone());
    // This test's request runs on this thread; other tests' loads log too.
    let this_thread = std::thread::current().id();
    sdxl::engine::logging::set_sink(
        Some(Box::new(move |_level, _target, message| {
            if message.contains("loading model") && std::thread::current().id() == this_thread {
                flag.store(canceller.cancel_request("cancel-during-load"), Ordering::SeqCst);
            }
        })),
        2,
    );
    let text = request(&model, "cancel-during-load", json!({"hyperparameters": {"num_inference_steps": 50}}));
    let response = respond(&engine, &text);
    sdxl::engine::logging::set_sink(None, 0);
    assert!(cancelled.load(Ordering::SeqCst), "the cancel found no running request: {response}");
    assert_eq!(response["error_code"], "CANCELLED", "{response}");
    // The load that had started completed: the model is cached and serves the next request.
    let status: Value = serde_json::from_str(&engine.handle_json(r#"{"message_type":"status_request"}"#)).unwrap();
    let loaded = status["data"]["loaded_models"].to_string();
    assert!(loaded.contains("tiny-sdxl"), "{loaded}");
    assert_eq!(respond(&engine, &request(&model, "next", json!({})))["success"], true);
}

/// The log sink is the process's: tests that set one take turns.
fn log_sink_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOG_SINK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOG_SINK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn a_panicking_progress_callback_stops_its_request_with_internal_error_and_nothing_else() {
    let scratch = tempfile::tempdir().unwrap();
    let engine = engine(scratch.path());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    engine.set_progress_callback(Some(Box::new(move |_id: &str, event: &sdxl::pipeline::ProgressEvent| {
        counter.fetch_add(1, Ordering::SeqCst);
        if event.step == 1 {
            panic!("host bug at step {}", event.step);
        }
        true
    })));
    let response = respond(&engine, &request(&json!("builtin:tiny"), "panicky", json!({})));
    assert_eq!(response["error_code"], "INTERNAL_ERROR", "{response}");
    assert!(response["error"].as_str().unwrap().contains("progress callback panicked (host bug at step 1)"), "{response}");
    assert!(calls.load(Ordering::SeqCst) >= 2);
    engine.set_progress_callback(None);
    assert_eq!(respond(&engine, &request(&json!("builtin:tiny"), "after", json!({})))["success"], true);
}

#[test]
fn a_panicking_log_sink_loses_its_line_and_the_request_succeeds() {
    let _sink = log_sink_lock();
    let scratch = tempfile::tempdir().unwrap();
    let engine = engine(scratch.path());
    let lines = Arc::new(AtomicUsize::new(0));
    let seen = lines.clone();
    sdxl::engine::logging::set_sink(
        Some(Box::new(move |_level, _target, _message| {
            seen.fetch_add(1, Ordering::SeqCst);
            panic!("log sink bug");
        })),
        4,
    );
    // A warning is logged for the ignored field, and loading logs at info.
    let response = respond(&engine, &request(&json!("builtin:tiny"), "logged", json!({"output": {"return_images": true, "quality": 50}})));
    sdxl::engine::logging::set_sink(None, 0);
    assert_eq!(response["success"], true, "{response}");
    assert!(lines.load(Ordering::SeqCst) > 0, "the sink was never called");
}

/// Mounts a 256 KiB tmpfs when the test may (root with mount rights, as in CI's container);
/// returns false where it may not.
fn mount_tiny_tmpfs(at: &Path) -> bool {
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(at)
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn a_disk_that_fills_mid_batch_names_what_was_written_and_leaves_no_partial_file() {
    let scratch = tempfile::tempdir().unwrap();
    let disk = scratch.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    if !mount_tiny_tmpfs(&disk) {
        // Without mount rights the same ENOSPC comes from /dev/full (tests/metadata.rs).
        eprintln!("no mount rights here: the full-disk case runs through /dev/full in tests/metadata.rs");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&disk);
    let engine = engine(&disk);
    // 128² images take up to 49 KiB each as PNG: a few fit in 256 KiB, a batch of 9 does not.
    let text = request(&json!("builtin:tiny"), "fills", json!({"dimensions": {"width": 128, "height": 128}, "batch": {"size": 9}, "output": {"return_images": false, "save_path": "."}}));
    check_full_disk(&engine, &disk, respond(&engine, &text));
}

fn check_full_disk(engine: &Engine, disk: &Path, response: Value) {
    assert_eq!(response["error_code"], "IO_ERROR", "{response}");
    let message = response["error"].as_str().unwrap();
    assert!(message.contains("No space left on device"), "{message}");
    let written: Vec<String> = std::fs::read_dir(disk).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(written.iter().all(|name| !name.ends_with(".tmp")), "temporary files left: {written:?}");
    for name in &written {
        assert!(message.contains(name.as_str()), "{name} was written but the error does not list it: {message}");
        image::open(disk.join(name)).expect("every file left is a whole image");
    }
    assert!(!written.is_empty(), "the first images fit: {message}");
    // Room again: the engine serves.
    for name in &written {
        std::fs::remove_file(disk.join(name)).unwrap();
    }
    let again = respond(engine, &request(&json!("builtin:tiny"), "room", json!({"output": {"return_images": false, "save_path": "."}})));
    assert_eq!(again["success"], true, "{again}");
}

#[test]
fn cancelling_every_request_of_a_busy_engine_leaves_it_consistent() {
    let scratch = tempfile::tempdir().unwrap();
    let engine = Arc::new(engine(scratch.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let canceller = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                engine.cancel();
                std::thread::yield_now();
            }
        })
    };
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..20 {
        let response = respond(&engine, &request(&json!("builtin:tiny"), &format!("storm-{i}"), json!({})));
        let outcome = if response["success"] == true { "success".to_string() } else { response["error_code"].as_str().unwrap().to_string() };
        *outcomes.entry(outcome).or_default() += 1;
    }
    stop.store(true, Ordering::SeqCst);
    canceller.join().unwrap();
    assert!(outcomes.keys().all(|k| k == "success" || k == "CANCELLED"), "{outcomes:?}");
    assert_eq!(respond(&engine, &request(&json!("builtin:tiny"), "calm", json!({})))["success"], true);
}
