//! The GPU bench and GPU parity check, one binary shipped to the GPU machine.
//!
//! `gpu_bench parity`: the tiny fixtures' cases on cuda:0 in float32, float16 and bfloat16,
//! reporting uint8 max diff against diffusers (SDXL_FIXTURES points at the fixtures).
//! `gpu_bench bench [steps]`: full-size SDXL (random weights drawn on the GPU, no files):
//! text encode, one UNet step (CFG batch 2) at 1024², VAE decode 1024², a whole 1024²
//! generation, first-request latency. `gpu_bench compare DIR`: full-size parity with the
//! random SDXL diffusers_bench.py saved. Prints one JSON object per line.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use sdxl::api::{parse_request, plan_request, Limits};
use sdxl::loader::{self, LoadOptions};
use sdxl::models::UNetConditioning;
use sdxl::pipeline::text_conditioning::encode_conditioning;
use sdxl::pipeline::{generate, NoProgress, RunContext};
use sdxl::rng::NormalKernel;
use serde_json::json;

fn parity(device: &Device) -> sdxl::Result<()> {
    for (dtype, vae_dtype) in [(DType::F32, DType::F32), (DType::F16, DType::F32), (DType::BF16, DType::F32)] {
        let options = LoadOptions { device, dtype, vae_dtype, config_dir: None, cpu_offload: false };
        let model = loader::load_diffusers_folder(&common::fixtures().join("tiny-sdxl"), &options)?;
        for case in common::cases() {
            let name = case["name"].as_str().unwrap_or("?").to_string();
            let refs = common::reference(&name);
            let (images, got) = common::run_case(&model, &case, device);
            let (max_diff, differing) = common::max_pixel_diff(&common::image_tensor(&images), common::tensor(&refs, "image"));
            let latent_diff = common::max_abs_diff(&got.final_latents.unwrap().to_device(&Device::Cpu)?, common::tensor(&refs, "final_latents"));
            println!("{}", json!({"kind": "parity", "dtype": format!("{dtype:?}"), "case": name, "uint8_max_diff": max_diff, "differing_values": differing, "final_latents_max_abs_diff": latent_diff}));
        }
    }
    Ok(())
}

fn seconds_since(start: Instant, device: &Device) -> sdxl::Result<f64> {
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64())
}

fn bench(device: &Device, steps: u32) -> sdxl::Result<()> {
    let load_start = Instant::now();
    let options = LoadOptions { device, dtype: DType::F16, vae_dtype: DType::F32, config_dir: None, cpu_offload: false };
    let model = loader::load_sdxl_random(&options)?;
    println!("{}", json!({"kind": "load_random_weights_s", "value": seconds_since(load_start, device)?}));

    let prompt = "a photograph of an astronaut riding a horse on mars, highly detailed";
    let mut encode_times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let cond = encode_conditioning(&model, prompt, Some("blurry"), true, sdxl::api::validate::PromptTruncation::Chunked, device)?;
        cond.positive.hidden_states.sum_all()?;
        encode_times.push(seconds_since(start, device)? * 1000.0);
    }
    println!("{}", json!({"kind": "text_encode_ms", "values": encode_times}));

    // LoRA swap cost: a rank-32 adapter on every attention projection of the UNet, fused
    // into the float16 weights, then restored (three times: the first includes kernel warm-up).
    for _ in 0..3 {
        let (apply, restore, layers) = sdxl::lora::measure_apply_and_restore(&model.adapters, 32)?;
        println!("{}", json!({"kind": "lora_rank32_all_attention", "layers": layers, "apply_ms": apply.as_secs_f64() * 1000.0, "restore_ms": restore.as_secs_f64() * 1000.0}));
    }

    let latents = Tensor::randn(0f32, 1.0, (2, 4, 128, 128), device)?.to_dtype(DType::F16)?;
    let context = Tensor::randn(0f32, 1.0, (2, 77, 2048), device)?.to_dtype(DType::F16)?;
    let pooled = Tensor::randn(0f32, 1.0, (2, 1280), device)?.to_dtype(DType::F16)?;
    let time_ids = Tensor::new(&[[1024f32, 1024., 0., 0., 1024., 1024.], [1024., 1024., 0., 0., 1024., 1024.]], device)?;
    let cond = UNetConditioning { encoder_hidden_states: &context, text_embeds: &pooled, time_ids: &time_ids };
    let mut unet_times = Vec::new();
    for i in 0..8 {
        let start = Instant::now();
        let out = model.unet.forward(&latents, 500.0, &cond)?;
        drop(out);
        let ms = seconds_since(start, device)? * 1000.0;
        if i >= 2 {
            unet_times.push(ms);
        }
    }
    println!("{}", json!({"kind": "unet_step_cfg_1024_ms", "values": unet_times}));

    let latent = Tensor::randn(0f32, 1.0, (1, 4, 128, 128), device)?;
    let mut vae_times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        model.vae.on_device()?.decode(&latent)?;
        vae_times.push(seconds_since(start, device)? * 1000.0);
    }
    println!("{}", json!({"kind": "vae_decode_1024_ms", "values": vae_times}));

    for (label, scheduler) in [("first_request_s", "EulerDiscreteScheduler"), ("e2e_1024_s", "EulerDiscreteScheduler"), ("e2e_1024_dpmpp2m_s", "DPMSolverMultistepScheduler")] {
        let request = json!({"prompt": prompt, "models": {"base": "builtin:sdxl-random"}, "hyperparameters": {"num_inference_steps": steps, "seed": 1}, "dimensions": {"width": 1024, "height": 1024}, "scheduler": scheduler});
        let plan = plan_request(&parse_request(request)?, "bench".into(), &Limits::default(), || 0)?;
        let mut progress = NoProgress;
        let start = Instant::now();
        let mut ctx = RunContext { device, noise_kernel: NormalKernel::Vectorized, progress: &mut progress, started: start };
        let batch = generate(&model, &plan, None, &mut ctx, None)?;
        println!("{}", json!({"kind": label, "steps": steps, "value": seconds_since(start, device)?, "stages": batch.stage_times}));
    }
    Ok(())
}

/// Full-size parity: the random SDXL that diffusers_bench.py saved, one UNet call and a
/// 4-step 512² generation, compared with diffusers' outputs on the same inputs.
fn compare(device: &Device, dir: &std::path::Path) -> sdxl::Result<()> {
    let refs = candle_core::safetensors::load(dir.join("reference.safetensors"), device)?;
    let get = |k: &str| refs.get(k).cloned().ok_or_else(|| sdxl::Error::Internal(format!("reference lacks {k}")));
    for (dtype, key) in [(DType::F32, "noise_pred_f32"), (DType::F16, "noise_pred_f16")] {
        let start = Instant::now();
        let model = loader::load_diffusers_folder(dir, &LoadOptions { device, dtype, vae_dtype: DType::F32, config_dir: None, cpu_offload: false })?;
        let load_s = seconds_since(start, device)?;
        let (context, pooled, ids) = (get("encoder_hidden_states")?.to_dtype(dtype)?, get("text_embeds")?.to_dtype(dtype)?, get("time_ids")?);
        let cond = UNetConditioning { encoder_hidden_states: &context, text_embeds: &pooled, time_ids: &ids };
        let ours = model.unet.forward(&get("sample")?.to_dtype(dtype)?, 500.0, &cond)?.to_dtype(DType::F32)?;
        let theirs = get(key)?;
        let rel = ((&ours - &theirs)?.sqr()?.sum_all()?.sqrt()? / theirs.sqr()?.sum_all()?.sqrt()?)?.to_scalar::<f32>()?;
        let max_abs = (&ours - &theirs)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        println!("{}", json!({"kind": "full_size_unet_parity", "dtype": format!("{dtype:?}"), "relative_l2_error": rel, "max_abs_diff": max_abs, "folder_load_s": load_s}));
        if dtype == DType::F32 {
            let request = json!({"prompt": "a photograph of an astronaut riding a horse on mars, highly detailed", "models": {"base": "x"},
                "hyperparameters": {"num_inference_steps": 4, "guidance_scale": 5.0, "seed": 7}, "dimensions": {"width": 512, "height": 512}, "scheduler": "EulerDiscreteScheduler"});
            let plan = plan_request(&parse_request(request)?, "compare".into(), &Limits::default(), || 0)?;
            let mut progress = NoProgress;
            let mut ctx = RunContext { device, noise_kernel: NormalKernel::Vectorized, progress: &mut progress, started: Instant::now() };
            let batch = generate(&model, &plan, None, &mut ctx, None)?;
            let (max_diff, differing) = common::max_pixel_diff(&common::image_tensor(&batch.images), &get("image_f32")?.to_device(&Device::Cpu)?);
            println!("{}", json!({"kind": "full_size_4_step_512_parity_f32", "uint8_max_diff": max_diff, "differing_values": differing, "of": 512 * 512 * 3}));
        }
    }
    Ok(())
}

/// Out-of-memory handling on a real GPU: a request the admission check refuses (estimate
/// over free memory), one that really runs out of device memory (admission disabled by an
/// absurd explicit budget), and a normal request on the same engine afterwards.
fn oom(_device: &Device) -> sdxl::Result<()> {
    let request = |size: u32, batch: u32| {
        json!({"prompt": "a lighthouse", "models": {"base": "builtin:sdxl-random"}, "dimensions": {"width": size, "height": size},
               "batch": {"size": batch}, "hyperparameters": {"num_inference_steps": 2, "seed": 1}, "output": {"save_path": "oom"}}).to_string()
    };
    let limits = json!({"max_size": 8192, "max_batch": 32});
    for (label, config) in [
        ("admission", json!({"device": "cuda:0", "output_dir": "/tmp/sdxl-oom", "limits": limits})),
        ("real_oom", json!({"device": "cuda:0", "output_dir": "/tmp/sdxl-oom", "limits": limits, "max_memory_gb": 100000.0})),
    ] {
        let engine = sdxl::Engine::from_json(&config.to_string())?;
        let clock = Instant::now();
        engine.set_progress_callback(Some(Box::new(move |_, event| {
            eprintln!("{:8.2}s {:?} step {}/{} calls {}", clock.elapsed().as_secs_f64(), event.stage, event.step, event.total_steps, event.model_calls);
            true
        })));
        // With admission off, 8192² batch 16 (and 24) does not run out of memory on an H200:
        // chunked attention keeps it under 135 GB and its first step computes for hours. Batch
        // 32 (64 rows with CFG) exhausts memory in the first down block, seconds in.
        let requests = match label {
            "admission" => vec![("8192x8192_batch16", request(8192, 16)), ("1024x1024_batch1_after", request(1024, 1))],
            _ => vec![("8192x8192_batch32", request(8192, 32)), ("1024x1024_batch1_after", request(1024, 1))],
        };
        for (what, text) in requests {
            let start = Instant::now();
            eprintln!("{label} {what}: device memory (free, total) before = {:?}", sdxl::engine::memory::device_memory(_device));
            let response: serde_json::Value = serde_json::from_str(&engine.handle_json(&text)).unwrap_or_default();
            println!("{}", json!({"kind": "oom", "engine": label, "request": what, "success": response["success"], "error_code": response["error_code"],
                "error": response["error"].as_str().map(|e| e.chars().take(400).collect::<String>()), "seconds": start.elapsed().as_secs_f64(),
                "free_after": sdxl::engine::memory::device_memory(_device).map(|(free, _)| free),
                "peak_memory_bytes": response["data"]["processing_metrics"]["peak_memory_bytes"]}));
        }
    }
    Ok(())
}

/// `precision.cpu_offload` on the full-size model: one 1024² request (after a warm-up), its
/// peak device memory, stage times and the weights the status reports on device and host.
/// Run once per placement, each in its own process, so the peaks don't mix.
fn offload(device: &Device, cpu_offload: bool) -> sdxl::Result<()> {
    let engine = sdxl::Engine::from_json(&json!({"device": "cuda:0", "output_dir": "/tmp/sdxl-offload"}).to_string())?;
    let request = |seed: u64| {
        json!({"prompt": "a lighthouse", "models": {"base": "builtin:sdxl-random"}, "dimensions": {"width": 1024, "height": 1024},
               "hyperparameters": {"num_inference_steps": 10, "seed": seed}, "precision": {"cpu_offload": cpu_offload},
               "output": {"save_path": if cpu_offload { "offloaded" } else { "resident" }}})
        .to_string()
    };
    // builtin:sdxl-random draws its weights with the generator of the device they are built on,
    // so offloaded networks get other random values; builtin:tiny (weights from a CPU stream by
    // name) is what shows the two placements give the same image on the GPU.
    let tiny = json!({"prompt": "a lighthouse", "models": {"base": "builtin:tiny"}, "dimensions": {"width": 256, "height": 256},
        "hyperparameters": {"num_inference_steps": 4, "seed": 3}, "precision": {"cpu_offload": cpu_offload},
        "output": {"save_path": if cpu_offload { "tiny-offloaded" } else { "tiny-resident" }}});
    let response: serde_json::Value = serde_json::from_str(&engine.handle_json(&tiny.to_string())).unwrap_or_default();
    println!("{}", json!({"kind": "offload_tiny", "cpu_offload": cpu_offload, "success": response["success"], "error": response["error"]}));
    for (what, seed) in [("warm_up", 1), ("measured", 2)] {
        let response: serde_json::Value = serde_json::from_str(&engine.handle_json(&request(seed))).unwrap_or_default();
        let status = engine.status();
        let model = status["loaded_models"].as_array().and_then(|models| models.iter().find(|m| m["name"] == "builtin:sdxl-random")).cloned().unwrap_or_default();
        println!("{}", json!({"kind": "offload", "cpu_offload": cpu_offload, "run": what, "success": response["success"], "error": response["error"],
            "total_s": response["data"]["processing_metrics"]["total_time"], "stage_times": response["data"]["processing_metrics"]["stage_times"],
            "peak_memory_bytes": response["data"]["processing_metrics"]["peak_memory_bytes"],
            "device_weight_bytes": model["device_weight_bytes"], "host_weight_bytes": model["host_weight_bytes"],
            "image": response["data"]["generated_images"][0]["path"],
            "device_free_after": sdxl::engine::memory::device_memory(device).map(|(free, _)| free)}));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let device = match Device::new_cuda(0) {
        Ok(device) => device,
        Err(err) => {
            eprintln!("gpu_bench: no CUDA device: {err}");
            std::process::exit(2);
        }
    };
    let result = match args.get(1).map(String::as_str) {
        Some("parity") => parity(&device),
        Some("bench") => bench(&device, args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30)),
        Some("oom") => oom(&device),
        Some("offload") => offload(&device, args.get(2).map(String::as_str) == Some("on")),
        Some("compare") => compare(&device, std::path::Path::new(args.get(2).map(String::as_str).unwrap_or("/tmp/sdxl-random"))),
        _ => {
            eprintln!("usage: gpu_bench parity | bench [steps] | compare DIR | oom | offload on|off");
            std::process::exit(2);
        }
    };
    if let Err(err) = result {
        eprintln!("gpu_bench: {err}");
        std::process::exit(1);
    }
}
