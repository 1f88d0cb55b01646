//! The engine under load: many threads on one engine, two engines side by side, the LRU
//! model cache, a leak check over 200 generations, and recovery from OUT_OF_MEMORY.
//!
//! Every engine test here holds `SERIAL`: the leak test reads this process's RSS, which
//! other tests running beside it would move, and the machine has few cores to share.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use sdxl::Engine;
use serde_json::{json, Value};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn output_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sdxl-stress-{tag}-{}", std::process::id()))
}

fn engine_with(tag: &str, extra: Value) -> Engine {
    let mut config = json!({"device": "cpu", "output_dir": output_dir(tag), "limits": {"min_size": 64}});
    if let (Value::Object(base), Value::Object(extra)) = (&mut config, extra) {
        base.extend(extra);
    }
    Engine::from_json(&config.to_string()).unwrap()
}

const PROMPTS: [&str; 3] = ["a lighthouse", "a red fox in snow", "an old map"];

/// A 64×64 request; the prompt varies with the seed so text encoding differs too.
fn request(model: &str, seed: u64, steps: u32) -> String {
    json!({
        "prompt": PROMPTS[(seed % PROMPTS.len() as u64) as usize], "models": {"base": model},
        "dimensions": {"width": 64, "height": 64},
        "hyperparameters": {"num_inference_steps": steps, "seed": seed},
        "scheduler": "EulerDiscreteScheduler",
    })
    .to_string()
}

fn respond(engine: &Engine, text: &str) -> Value {
    serde_json::from_str(&engine.handle_json(text)).unwrap()
}

/// The decoded RGB pixels of the one image a successful response saved.
fn pixels(response: &Value) -> Vec<u8> {
    assert_eq!(response["success"], true, "{response}");
    let path = response["data"]["generated_images"][0]["path"].as_str().unwrap();
    image::open(path).unwrap_or_else(|e| panic!("{path}: {e}")).to_rgb8().into_raw()
}

fn generate(engine: &Engine, model: &str, seed: u64, steps: u32) -> Vec<u8> {
    pixels(&respond(engine, &request(model, seed, steps)))
}

/// How many bytes two images differ in, and the first differing byte (for failure messages).
fn difference(a: &[u8], b: &[u8]) -> String {
    let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
    let first = a.iter().zip(b).position(|(x, y)| x != y);
    format!("{differing} of {} bytes differ (lengths {} / {}), first at {first:?}", a.len(), a.len(), b.len())
}

fn tiny_diffusers_folder() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sdxl").display().to_string()
}

#[test]
fn eight_threads_of_25_requests_give_the_single_threaded_images() {
    let _serial = serial();
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 25;
    let started = Instant::now();
    let reference_engine = engine_with("threads-reference", json!({}));
    let reference: Vec<Vec<u8>> = (0..THREADS * PER_THREAD).map(|seed| generate(&reference_engine, "builtin:tiny", seed, 1)).collect();
    let single_threaded = started.elapsed();

    let engine = Arc::new(engine_with("threads", json!({})));
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                // Interleaved seeds, so neighbouring requests in the queue come from different threads.
                (0..PER_THREAD).map(|i| i * THREADS + thread).map(|seed| (seed, respond(&engine, &request("builtin:tiny", seed, 1)))).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut served = 0;
    for handle in handles {
        for (seed, response) in handle.join().unwrap() {
            let image = pixels(&response);
            assert_eq!(response["data"]["generated_images"][0]["seed"], seed, "{response}");
            assert!(image == reference[seed as usize], "seed {seed}: threaded image differs from single-threaded: {}", difference(&image, &reference[seed as usize]));
            served += 1;
        }
    }
    assert_eq!(served, THREADS * PER_THREAD);
    let status = respond(&engine, r#"{"message_type":"status_request"}"#);
    assert_eq!(status["data"]["requests_served"], THREADS * PER_THREAD, "{status}");
    eprintln!("200 requests: single-threaded {single_threaded:?}, 8 threads {:?}", started.elapsed());
    for tag in ["threads-reference", "threads"] {
        let _ = std::fs::remove_dir_all(output_dir(tag));
    }
}

#[test]
fn two_engines_run_in_parallel_and_match_one_engine() {
    let _serial = serial();
    const PER_ENGINE: u64 = 12;
    let reference_engine = engine_with("pair-reference", json!({}));
    let reference: Vec<Vec<u8>> = (0..2 * PER_ENGINE).map(|seed| generate(&reference_engine, "builtin:tiny", seed, 2)).collect();

    // Each engine records when each of its requests ran (first to last progress event):
    // overlapping spans prove the engines do not share one process-wide lock.
    let epoch = Instant::now();
    let runs: Vec<_> = (0..2u64)
        .map(|index| {
            let engine = engine_with(&format!("pair-{index}"), json!({}));
            let spans = Arc::new(Mutex::new(Vec::<(String, f64, f64)>::new()));
            let sink = spans.clone();
            engine.set_progress_callback(Some(Box::new(move |id, _| {
                let now = epoch.elapsed().as_secs_f64();
                let mut spans = sink.lock().unwrap();
                match spans.last_mut() {
                    Some((last, _, end)) if last == id => *end = now,
                    _ => spans.push((id.to_string(), now, now)),
                }
                true
            })));
            let thread = std::thread::spawn(move || {
                (0..PER_ENGINE).map(|i| 2 * i + index).map(|seed| (seed, generate(&engine, "builtin:tiny", seed, 2))).collect::<Vec<_>>()
            });
            (thread, spans)
        })
        .collect();
    let mut spans = Vec::new();
    for (thread, engine_spans) in runs {
        for (seed, image) in thread.join().unwrap() {
            assert!(image == reference[seed as usize], "seed {seed}: image from a parallel engine differs: {}", difference(&image, &reference[seed as usize]));
        }
        spans.push(engine_spans.lock().unwrap().clone());
    }
    let overlapping = spans[0].iter().filter(|(_, start, end)| spans[1].iter().any(|(_, s, e)| s < end && start < e)).count();
    assert!(overlapping > 0, "no request of engine 0 overlapped one of engine 1: {spans:?}");
}

#[test]
fn a_one_model_cache_evicts_the_least_recently_used_and_reloads_it() {
    let _serial = serial();
    let engine = engine_with("lru", json!({"max_loaded_models": 1}));
    let folder = tiny_diffusers_folder();
    let loaded = |engine: &Engine| -> Vec<String> {
        let status = respond(engine, r#"{"message_type":"status_request"}"#);
        status["data"]["loaded_models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect()
    };

    let first = generate(&engine, "builtin:tiny", 7, 1);
    assert_eq!(loaded(&engine), vec!["builtin:tiny".to_string()]);
    let folder_image = generate(&engine, &folder, 7, 1);
    assert_eq!(loaded(&engine), vec![folder.clone()], "loading the folder model must evict builtin:tiny");
    assert!(engine.resident_model("builtin:tiny").is_none());

    let again = generate(&engine, "builtin:tiny", 7, 1);
    assert_eq!(loaded(&engine), vec!["builtin:tiny".to_string()], "builtin:tiny reloads on demand and evicts the folder model");
    assert!(again == first, "builtin:tiny after a reload gives another image: {}", difference(&again, &first));
    assert!(folder_image != first, "the two models gave the same image; the test would not notice a wrong model");

    // model_load_request goes through the same cache.
    let response = respond(&engine, &json!({"message_type": "model_load_request", "data": {"base": folder}}).to_string());
    assert_eq!(response["success"], true, "{response}");
    assert_eq!(loaded(&engine), vec![folder.clone()]);
}

/// Resident set size of this process in bytes (Linux: /proc/self/statm, second field, in pages).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page_size
}

#[test]
fn resident_memory_stays_flat_over_200_generations() {
    let _serial = serial();
    const WARM_UP: u64 = 10;
    const TOTAL: u64 = 200;
    let engine = engine_with("leak", json!({}));
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut baseline = 0;
    for seed in 0..TOTAL {
        let response = respond(&engine, &request("builtin:tiny", seed, 1));
        assert_eq!(response["success"], true, "{response}");
        // The saved files are not the engine's memory; keep the temp folder small.
        let _ = std::fs::remove_file(response["data"]["generated_images"][0]["path"].as_str().unwrap());
        if seed + 1 == WARM_UP {
            baseline = resident_bytes();
        }
        if seed + 1 >= WARM_UP && (seed + 1) % 10 == 0 {
            samples.push(resident_bytes());
        }
    }
    let max = *samples.iter().max().unwrap();
    let min = *samples.iter().min().unwrap();
    let growth = max as f64 / baseline as f64 - 1.0;
    let shrink = 1.0 - min as f64 / baseline as f64;
    let mib = |b: u64| format!("{:.1}", b as f64 / (1 << 20) as f64);
    eprintln!(
        "RSS over {TOTAL} generations in {:?}: baseline {} MiB, min {} MiB, max {} MiB",
        started.elapsed(),
        mib(baseline),
        mib(min),
        mib(max)
    );
    assert!(
        growth <= 0.05 && shrink <= 0.05,
        "RSS left ±5% of {} MiB after warm-up: samples every 10 requests (MiB) {:?}",
        mib(baseline),
        samples.iter().map(|&b| mib(b)).collect::<Vec<_>>()
    );
}

#[test]
fn an_out_of_memory_refusal_leaves_the_engine_generating() {
    let _serial = serial();
    // A budget the 64×64 request fits and the 512×512 one does not.
    let engine = engine_with("oom", json!({"max_memory_gb": 0.02}));
    let before = generate(&engine, "builtin:tiny", 3, 1);
    let big = json!({
        "prompt": "a lighthouse", "models": {"base": "builtin:tiny"},
        "dimensions": {"width": 512, "height": 512}, "hyperparameters": {"num_inference_steps": 1, "seed": 3},
    });
    let refused = respond(&engine, &big.to_string());
    assert_eq!(refused["error_code"], "OUT_OF_MEMORY", "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("needs about"), "the refusal carries the estimate: {refused}");
    let status = respond(&engine, r#"{"message_type":"status_request"}"#);
    assert!(status["data"]["last_error"].as_str().unwrap_or("").contains("out of memory"), "{status}");
    let after = generate(&engine, "builtin:tiny", 3, 1);
    assert!(after == before, "the image after the refusal differs: {}", difference(&after, &before));
}

#[test]
fn candle_out_of_memory_text_maps_to_out_of_memory() {
    // cudarc's allocation failure as candle 0.11 prints it, and the driver's own name for it.
    for text in ["DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")", "CUDA_ERROR_OUT_OF_MEMORY", "cuda: out of memory"] {
        let err = sdxl::Error::from(candle_core::Error::Msg(text.to_string()));
        assert_eq!(err.code_name(), "OUT_OF_MEMORY", "{text} became {err:?}");
        assert_eq!(err.code(), -8);
    }
    let other = sdxl::Error::from(candle_core::Error::Msg("shape mismatch in matmul".into()));
    assert_eq!(other.code_name(), "DEVICE_ERROR", "{other:?}");
}

/// The cached models a status request lists, with the device bytes of their weights.
fn cached_models(engine: &Engine) -> Vec<(String, u64)> {
    let status = respond(engine, r#"{"message_type":"status_request"}"#);
    status["data"]["loaded_models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["device_weight_bytes"].as_u64().unwrap()))
        .collect()
}

const GIB: f64 = (1u64 << 30) as f64;

#[test]
fn a_memory_budget_evicts_the_least_recently_used_model_before_loading_another() {
    let _serial = serial();
    let folder = tiny_diffusers_folder();
    let probe = engine_with("budget-probe", json!({"max_loaded_models": 4}));
    generate(&probe, "builtin:tiny", 1, 1);
    generate(&probe, &folder, 1, 1);
    let bytes_of = |name: &str| cached_models(&probe).into_iter().find(|(n, _)| n == name).map(|(_, b)| b).unwrap();
    let (tiny_bytes, folder_bytes) = (bytes_of("builtin:tiny"), bytes_of(&folder));
    assert!(tiny_bytes > 1 << 20 && folder_bytes > 1 << 20, "weights {tiny_bytes} / {folder_bytes} bytes");

    // The engine's own activation estimate for the 64² request, on either model.
    let limits = sdxl::api::Limits { min_size: 64, ..Default::default() };
    let activations = [("builtin:tiny", 7), (folder.as_str(), 7)]
        .iter()
        .map(|(name, seed)| {
            let parsed = sdxl::api::parse_request(serde_json::from_str(&request(name, *seed, 1)).unwrap()).unwrap();
            let plan = sdxl::api::plan_request(&parsed, "estimate".into(), &limits, || 0).unwrap();
            sdxl::engine::memory::estimate_request_bytes(&probe.resident_model(name).unwrap(), &plan)
        })
        .max()
        .unwrap();
    // Room for either model and the request, not for both models: the count limit (4) never bites.
    let budget = tiny_bytes.max(folder_bytes) + activations + tiny_bytes.min(folder_bytes) / 2;
    eprintln!("weights: builtin:tiny {tiny_bytes}, folder {folder_bytes}; activations {activations}; budget {budget}");
    let engine = engine_with("budget", json!({"max_loaded_models": 4, "max_memory_gb": budget as f64 / GIB}));
    let first = generate(&engine, "builtin:tiny", 7, 1);
    generate(&engine, &folder, 7, 1);
    assert_eq!(cached_models(&engine), vec![(folder.clone(), folder_bytes)], "loading the folder model must evict builtin:tiny to stay in {budget} bytes");
    let again = generate(&engine, "builtin:tiny", 7, 1);
    assert_eq!(cached_models(&engine), vec![("builtin:tiny".to_string(), tiny_bytes)]);
    assert!(again == first, "builtin:tiny after its eviction gives another image: {}", difference(&again, &first));

    // A model whose weights alone exceed the budget is refused before anything is read.
    let small = engine_with("budget-small", json!({"max_memory_gb": (folder_bytes / 2) as f64 / GIB}));
    let refused = respond(&small, &request(&folder, 1, 1));
    assert_eq!(refused["error_code"], "OUT_OF_MEMORY", "{refused}");
    let message = refused["error"].as_str().unwrap();
    assert!(message.contains("loading") && message.contains("needs about"), "{message}");
    assert!(cached_models(&small).is_empty(), "a refused load must leave nothing cached");
}

#[test]
fn cpu_offload_keeps_weights_on_the_host_and_gives_the_resident_image() {
    let _serial = serial();
    let engine = engine_with("offload", json!({}));
    let offloaded_request = |model: &str, seed: u64| {
        let mut request: Value = serde_json::from_str(&request(model, seed, 2)).unwrap();
        request["precision"] = json!({"cpu_offload": true});
        request.to_string()
    };
    let folder = tiny_diffusers_folder();
    for model in ["builtin:tiny", folder.as_str()] {
        let resident = generate(&engine, model, 5, 2);
        let resident_bytes = cached_models(&engine).into_iter().find(|(n, _)| n == model).unwrap().1;
        let response = respond(&engine, &offloaded_request(model, 5));
        let offloaded = pixels(&response);
        assert!(offloaded == resident, "{model}: offloaded image differs: {}", difference(&offloaded, &resident));
        let warnings = response["warnings"].to_string();
        assert!(warnings.contains("cpu_offload"), "the CPU run must say offload saves nothing here: {warnings}");
        let status = respond(&engine, r#"{"message_type":"status_request"}"#);
        let entry = status["data"]["loaded_models"].as_array().unwrap().iter().find(|m| m["name"] == model).unwrap().clone();
        assert_eq!(entry["cpu_offload"], true, "{entry}");
        let (device, host) = (entry["device_weight_bytes"].as_u64().unwrap(), entry["host_weight_bytes"].as_u64().unwrap());
        // The UNet stays on the device; encoders and VAE move to the host, nothing is stored twice.
        assert!(host > 0 && device < resident_bytes, "device {device}, host {host}, resident {resident_bytes}");
        assert_eq!(device + host, resident_bytes, "offloaded weights must add up to the resident ones");
        // Offloaded again (cached), then back to resident: the same pixels each time.
        assert!(pixels(&respond(&engine, &offloaded_request(model, 5))) == resident);
        assert!(generate(&engine, model, 5, 2) == resident);
    }
}
