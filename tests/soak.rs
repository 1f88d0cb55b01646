//! Soak (issue 16): one engine under 8 threads × 50 mixed requests — schedulers, LoRA on and
//! off, img2img, cancels and invalid requests mixed in — then two engines in parallel. Every
//! image equals the one a single thread makes for the same request, every refusal has its
//! code, and the resident set stays flat after warm-up. One test: it reads the process's RSS,
//! which tests running beside it would move.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sdxl::Engine;
use serde_json::{json, Value};

const THREADS: usize = 8;
const WARM_UP_PER_THREAD: usize = 10;
const PER_THREAD: usize = 50;

fn engine(tag: &str, dir: &std::path::Path) -> Engine {
    let config = json!({"device": "cpu", "output_dir": dir.join(tag), "limits": {"min_size": 64}});
    Engine::from_json(&config.to_string()).expect("engine")
}

/// What a request of the mix is, and what its response must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Scheduler(&'static str),
    Lora(&'static str, u32),
    Img2Img,
    Cancelled,
    Invalid,
}

const KINDS: [Kind; 9] = [
    Kind::Scheduler("EulerDiscreteScheduler"),
    Kind::Scheduler("DPMSolverMultistepScheduler"),
    Kind::Scheduler("EulerAncestralDiscreteScheduler"),
    Kind::Scheduler("HeunDiscreteScheduler"),
    Kind::Lora("tiny_lora_kohya", 8),
    Kind::Lora("tiny_lora_peft", 5),
    Kind::Img2Img,
    Kind::Cancelled,
    Kind::Invalid,
];

const SEEDS: u64 = 3;

/// The request for the `n`-th slot of the mix: its kind, its seed, and its JSON.
fn mixed_request(n: usize, id: &str) -> (Kind, u64, String) {
    let kind = KINDS[n % KINDS.len()];
    let seed = (n / KINDS.len()) as u64 % SEEDS;
    (kind, seed, request_of(kind, seed, id))
}

fn request_of(kind: Kind, seed: u64, id: &str) -> String {
    let fixtures = common::fixtures();
    let mut data = json!({"prompt": "a lighthouse at dusk", "models": {"base": fixtures.join("tiny-sdxl")}, "dimensions": {"width": 64, "height": 64},
        "hyperparameters": {"num_inference_steps": 2, "seed": seed}, "scheduler": "EulerDiscreteScheduler",
        "metadata": {"request_id": id}, "output": {"return_images": true}});
    match kind {
        Kind::Scheduler(name) => common::merge(&mut data, json!({"scheduler": name})),
        Kind::Lora(name, tenths) => common::merge(
            &mut data,
            json!({"lora": {"models": [{"name": fixtures.join(format!("lora/{name}.safetensors")), "weight": tenths as f64 / 10.0}]}}),
        ),
        Kind::Img2Img => common::merge(&mut data, json!({"init_image": fixtures.join("esrgan/input_48x40.png"), "hyperparameters": {"num_inference_steps": 4, "seed": seed, "strength": 0.6}})),
        // Long enough that the cancel lands while it runs.
        Kind::Cancelled => common::merge(&mut data, json!({"hyperparameters": {"num_inference_steps": 150, "seed": seed}})),
        Kind::Invalid => common::merge(&mut data, json!({"hyperparameters": {"num_inference_steps": 0, "seed": seed}})),
    }
    json!({"message_type": "inference_request", "data": data}).to_string()
}

fn respond(engine: &Engine, text: &str) -> Value {
    serde_json::from_str(&engine.handle_json(text)).expect("JSON response")
}

fn pixels(response: &Value) -> Vec<u8> {
    use base64::Engine as _;
    let data = response["data"]["generated_images"][0]["data"].as_str().unwrap_or_else(|| panic!("no image: {response}"));
    let png = base64::engine::general_purpose::STANDARD.decode(data).unwrap();
    image::load_from_memory(&png).unwrap().to_rgb8().into_raw()
}

/// Sends one request of the mix; a `Cancelled` one is cancelled by id from another thread as
/// soon as the engine knows it.
fn run_one(engine: &Arc<Engine>, n: usize, id: &str) -> (Kind, u64, Value) {
    let (kind, seed, text) = mixed_request(n, id);
    if kind != Kind::Cancelled {
        return (kind, seed, respond(engine, &text));
    }
    let done = Arc::new(AtomicBool::new(false));
    let canceller = {
        let (engine, done, id) = (engine.clone(), done.clone(), id.to_string());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) && !engine.cancel_request(&id) {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let response = respond(engine, &text);
    done.store(true, Ordering::SeqCst);
    canceller.join().unwrap();
    (kind, seed, response)
}

/// Checks a response against the single-threaded reference of its kind and seed.
fn check(kind: Kind, seed: u64, response: &Value, reference: &HashMap<(Kind, u64), Vec<u8>>) {
    match kind {
        Kind::Cancelled => assert_eq!(response["error_code"], "CANCELLED", "{kind:?}: {response}"),
        Kind::Invalid => {
            assert_eq!(response["error_code"], "VALIDATION_ERROR", "{response}");
            assert_eq!(response["field_errors"][0]["field"], "hyperparameters.num_inference_steps", "{response}");
        }
        _ => {
            assert_eq!(response["success"], true, "{kind:?} seed {seed}: {response}");
            assert!(pixels(response) == reference[&(kind, seed)], "{kind:?} seed {seed}: the image differs from the single-threaded one");
        }
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// `THREADS` threads, each sending `per_thread` requests of the mix (slots interleaved, so
/// neighbours in the queue differ), all checked.
fn hammer(engine: &Arc<Engine>, tag: &str, first_slot: usize, per_thread: usize, reference: &Arc<HashMap<(Kind, u64), Vec<u8>>>) -> usize {
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (engine, reference, tag) = (engine.clone(), reference.clone(), tag.to_string());
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let n = first_slot + i * THREADS + thread;
                    let (kind, seed, response) = run_one(&engine, n, &format!("{tag}-{n}"));
                    check(kind, seed, &response, &reference);
                }
                per_thread
            })
        })
        .collect();
    handles.into_iter().map(|handle| handle.join().expect("a soak thread failed")).sum()
}

#[test]
fn eight_threads_of_mixed_requests_and_two_engines_give_single_threaded_results_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let single = engine("reference", dir.path());
    let mut reference = HashMap::new();
    for kind in KINDS.iter().filter(|kind| !matches!(kind, Kind::Cancelled | Kind::Invalid)) {
        for seed in 0..SEEDS {
            let response = respond(&single, &request_of(*kind, seed, &format!("reference-{kind:?}-{seed}")));
            assert_eq!(response["success"], true, "{response}");
            reference.insert((*kind, seed), pixels(&response));
        }
    }
    drop(single);
    let reference = Arc::new(reference);

    let engine = Arc::new(engine("soak", dir.path()));
    let warm_up = hammer(&engine, "warm", 0, WARM_UP_PER_THREAD, &reference);
    let after_warm_up = resident_bytes();
    let soaked = hammer(&engine, "soak", THREADS * WARM_UP_PER_THREAD, PER_THREAD, &reference);
    let after_soak = resident_bytes();
    assert_eq!(warm_up + soaked, THREADS * (WARM_UP_PER_THREAD + PER_THREAD));
    eprintln!("RSS after warm-up {} MiB, after {} more requests {} MiB", after_warm_up >> 20, soaked, after_soak >> 20);
    assert!(
        after_soak as f64 <= after_warm_up as f64 * 1.05,
        "resident memory grew {:.1} % over {soaked} requests ({} → {} MiB)",
        (after_soak as f64 / after_warm_up as f64 - 1.0) * 100.0,
        after_warm_up >> 20,
        after_soak >> 20
    );
    drop(engine);

    // Two engines side by side, each under four threads of the mix.
    let pair: Vec<Arc<Engine>> = (0..2).map(|i| Arc::new(self::engine(&format!("pair-{i}"), dir.path()))).collect();
    let handles: Vec<_> = pair
        .iter()
        .enumerate()
        .flat_map(|(index, engine)| {
            let reference = reference.clone();
            (0..THREADS / 2).map(move |thread| {
                let (engine, reference) = (engine.clone(), reference.clone());
                std::thread::spawn(move || {
                    for i in 0..KINDS.len() * SEEDS as usize {
                        let n = i * THREADS / 2 + thread;
                        let (kind, seed, response) = run_one(&engine, n, &format!("pair-{index}-{n}"));
                        check(kind, seed, &response, &reference);
                    }
                })
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a pair thread failed");
    }
}
