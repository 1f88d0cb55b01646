//! The engine's queue: `metadata.priority` orders waiting requests, `cancel_request` reaches
//! exactly one request (running or queued) and never the next one, and every request field
//! is either honoured or answered with a warning that names it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sdxl::pipeline::Stage;
use sdxl::Engine;
use serde_json::{json, Value};

fn engine(tag: &str) -> Arc<Engine> {
    let output = std::env::temp_dir().join(format!("sdxl-queue-{tag}-{}", std::process::id()));
    Arc::new(Engine::from_json(&json!({"device": "cpu", "output_dir": output, "limits": {"min_size": 32}}).to_string()).unwrap())
}

/// The cheapest real request: builtin:tiny, 32×32, one step, no classifier-free guidance.
fn request(request_id: &str, extra: Value) -> String {
    let mut request = json!({
        "prompt": "a lighthouse", "models": {"base": "builtin:tiny"},
        "dimensions": {"width": 32, "height": 32},
        "hyperparameters": {"num_inference_steps": 1, "seed": 5, "guidance_scale": 1.0},
        "scheduler": "EulerDiscreteScheduler",
        "metadata": {"request_id": request_id},
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut request, extra) {
        base.extend(extra);
    }
    request.to_string()
}

fn respond(engine: &Engine, text: &str) -> Value {
    serde_json::from_str(&engine.handle_json(text)).unwrap()
}

/// Sends `text` to the engine from a new thread; join it for the response.
fn in_thread(engine: &Arc<Engine>, text: String) -> std::thread::JoinHandle<Value> {
    let engine = engine.clone();
    std::thread::spawn(move || respond(&engine, &text))
}

fn queue(engine: &Engine) -> Value {
    engine.status()["queue"].clone()
}

/// Polls the status until `ready` holds (10 s at most).
fn wait_until(engine: &Engine, what: &str, ready: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready(&queue(engine)) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}: queue {}", queue(engine));
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Holds the request with id `held` at its first denoising step until `release` is set, and
/// records the order in which requests start (their encode stage).
fn hold_and_record(engine: &Engine, held: &'static str, release: Arc<AtomicBool>) -> Arc<Mutex<Vec<String>>> {
    let started = Arc::new(Mutex::new(Vec::new()));
    let log = started.clone();
    engine.set_progress_callback(Some(Box::new(move |id, event| {
        if event.stage == Stage::Encode {
            log.lock().unwrap().push(id.to_string());
        }
        if id == held && event.stage == Stage::Denoise {
            while !release.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        true
    })));
    started
}

#[test]
fn queued_requests_run_high_then_normal_then_low_first_come_first_served_within_a_level() {
    let engine = engine("priority");
    let release = Arc::new(AtomicBool::new(false));
    let started = hold_and_record(&engine, "blocker", release.clone());
    let blocker = in_thread(&engine, request("blocker", json!({})));
    wait_until(&engine, "the blocker to run", |queue| queue["running"] == "blocker");

    // Submitted one after the other while the blocker runs; `None` is a request naming no priority.
    let submissions = [("low-1", Some("low")), ("normal-1", Some("normal")), ("high-1", Some("high")), ("default-1", None), ("low-2", Some("low")), ("high-2", Some("high"))];
    let mut threads = Vec::new();
    for (count, (id, priority)) in submissions.into_iter().enumerate() {
        let metadata = match priority {
            Some(priority) => json!({"metadata": {"request_id": id, "priority": priority, "tags": [id]}}),
            None => json!({}),
        };
        threads.push(in_thread(&engine, request(id, metadata)));
        wait_until(&engine, id, |queue| queue["waiting"].as_array().is_some_and(|waiting| waiting.len() == count + 1));
    }
    let expected = ["high-1", "high-2", "normal-1", "default-1", "low-1", "low-2"];
    assert_eq!(queue(&engine)["waiting"], json!(expected), "the queue's order while the blocker runs");

    release.store(true, Ordering::SeqCst);
    assert_eq!(blocker.join().unwrap()["success"], true);
    for (thread, (id, priority)) in threads.into_iter().zip(submissions) {
        let response = thread.join().unwrap();
        assert_eq!(response["success"], true, "{id}: {response}");
        assert_eq!(response["data"]["metadata"]["priority"], priority.unwrap_or("normal"), "{id}: {response}");
    }
    let order = started.lock().unwrap().clone();
    assert_eq!(order[1..], expected, "run order after the blocker: {order:?}");
}

#[test]
fn cancel_request_ends_a_queued_request_at_once_and_leaves_the_running_one() {
    let engine = engine("cancel-queued");
    let release = Arc::new(AtomicBool::new(false));
    let started = hold_and_record(&engine, "running", release.clone());
    let running = in_thread(&engine, request("running", json!({})));
    wait_until(&engine, "the first request to run", |queue| queue["running"] == "running");
    let queued = in_thread(&engine, request("queued", json!({})));
    wait_until(&engine, "the second request to queue", |queue| queue["waiting"] == json!(["queued"]));

    assert!(engine.cancel_request("queued"), "the queued request was not found");
    let cancelled = queued.join().unwrap();
    assert_eq!(cancelled["error_code"], "CANCELLED", "{cancelled}");
    assert_eq!(queue(&engine)["running"], "running", "the running request stopped too");
    release.store(true, Ordering::SeqCst);
    let finished = running.join().unwrap();
    assert_eq!(finished["success"], true, "the running request was hit by the other's cancel: {finished}");
    assert_eq!(*started.lock().unwrap(), ["running"], "the cancelled request started running");
    assert!(!engine.cancel_request("running"), "a finished request is still found");
}

#[test]
fn cancel_request_stops_the_running_request_within_a_step() {
    let engine = engine("cancel-running");
    let cancelling = engine.clone();
    engine.set_progress_callback(Some(Box::new(move |id, event| {
        if event.stage == Stage::Denoise && event.step == 1 {
            assert!(cancelling.cancel_request(id));
        }
        true
    })));
    let response = respond(&engine, &request("long", json!({"hyperparameters": {"num_inference_steps": 100, "seed": 1}})));
    assert_eq!(response["error_code"], "CANCELLED", "{response}");
    engine.set_progress_callback(None);
    assert_eq!(respond(&engine, &request("next", json!({})))["success"], true, "the engine serves the next request");
}

/// A cancel of request A sent at once, mid-run, or after A returned (when B, the next request,
/// is starting) never stops B: 300 races on one engine.
#[test]
fn a_cancel_of_one_request_never_reaches_the_next() {
    let engine = engine("race");
    let a_running = Arc::new(AtomicBool::new(false));
    let flag = a_running.clone();
    engine.set_progress_callback(Some(Box::new(move |id, _| {
        if id.starts_with('a') {
            flag.store(true, Ordering::SeqCst);
        }
        true
    })));
    let mut a_cancelled = 0;
    for race in 0..300 {
        a_running.store(false, Ordering::SeqCst);
        let (a_id, b_id) = (format!("a-{race}"), format!("b-{race}"));
        let a_returned = Arc::new(AtomicBool::new(false));
        let worker = {
            let (engine, a_returned, a_id, b_id) = (engine.clone(), a_returned.clone(), a_id.clone(), b_id.clone());
            std::thread::spawn(move || {
                let a = respond(&engine, &request(&a_id, json!({})));
                a_returned.store(true, Ordering::SeqCst);
                (a, respond(&engine, &request(&b_id, json!({}))))
            })
        };
        match race % 3 {
            0 => {}
            1 => {
                while !a_running.load(Ordering::SeqCst) && !a_returned.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
            }
            _ => {
                while !a_returned.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
            }
        }
        let found = engine.cancel_request(&a_id);
        let (a, b) = worker.join().unwrap();
        assert_eq!(b["success"], true, "race {race}: the cancel of {a_id} reached {b_id}: {b}");
        if race % 3 == 2 {
            assert!(!found, "race {race}: A had returned, yet its cancel found it");
        }
        if a["success"] != true {
            assert_eq!(a["error_code"], "CANCELLED", "race {race}: {a}");
            a_cancelled += 1;
        }
    }
    assert!(a_cancelled > 0, "no cancel ever landed: the race was not exercised");
}

#[test]
fn ignored_fields_are_named_in_warnings_and_tags_are_echoed() {
    let engine = engine("fields");
    let response = respond(
        &engine,
        &request(
            "fields",
            json!({
                "precision": {"vae_dtype": "float16", "attention_slicing": true, "vae_slicing": false},
                "batch": {"size": 2, "parallel": false},
                "output": {"format": "webp", "quality": 80, "lossless": true},
                "metadata": {"request_id": "fields", "priority": "high", "tags": ["enhanced_sdxl", "c_sharp_service"]},
            }),
        ),
    );
    assert_eq!(response["success"], true, "{response}");
    let warnings: Vec<String> = serde_json::from_value(response["warnings"].clone()).unwrap();
    for (field, says) in [
        ("precision.vae_dtype float16", "decodes in float32"),
        ("precision.attention_slicing", "query chunks"),
        ("precision.vae_slicing", "one image at a time"),
        ("batch.parallel", "together as one batch"),
        ("output.quality 80", "lossless"),
    ] {
        assert!(warnings.iter().any(|w| w.starts_with(field) && w.contains(says)), "no warning naming {field} ({says}): {warnings:#?}");
    }
    assert_eq!(response["data"]["metadata"], json!({"priority": "high", "tags": ["enhanced_sdxl", "c_sharp_service"]}), "{response}");

    // What the engine does anyway, or what changes nothing here, is honoured quietly.
    let quiet = respond(
        &engine,
        &request(
            "quiet",
            json!({
                "precision": {"dtype": "float16", "vae_dtype": "float32", "vae_slicing": true},
                "batch": {"size": 1, "parallel": false},
                "output": {"format": "jpeg", "quality": 80},
            }),
        ),
    );
    assert_eq!(quiet["success"], true, "{quiet}");
    let warnings: Vec<String> = serde_json::from_value(quiet["warnings"].clone()).unwrap();
    for field in ["precision.", "batch.parallel", "output.quality"] {
        assert!(!warnings.iter().any(|w| w.starts_with(field)), "a warning for {field} that was honoured: {warnings:#?}");
    }
    assert_eq!(quiet["data"]["metadata"], json!({"priority": "normal", "tags": []}), "{quiet}");
}
