//! The GPU bench and GPU parity check, one binary shipped to the GPU machine.
//!
//! `gpu_bench parity`: the tiny fixtures' cases on cuda:0 in float32, float16 and bfloat16,
//! reporting uint8 max diff against diffusers (SDXL_FIXTURES points at the fixtures).
//! `gpu_bench bench [steps]`: full-size SDXL (random weights drawn on the GPU, no files):
//! text encode, one UNet step (CFG batch 2) at 1024², VAE decode 1024², a whole 1024²
//! generation, first-request latency. `gpu_bench compare DIR`: full-size parity with the
//! random SDXL diffusers_bench.py saved. `gpu_bench kernels`: each fused CUDA kernel against the
//! plain candle path on random inputs at SDXL's shapes (error and time). `gpu_bench profile`:
//! one UNet step and one VAE decode, fused kernels on and off, timed and broken down by kind
//! of op. `gpu_bench large`: the refiner (1024² ensemble) and 2048² with the VAE whole, tiled
//! and "auto" under a budget, through the engine (times, peak memory). Prints one JSON object per line.

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

/// The refiner's ensemble case and the tiled txt2img case of the tiny fixtures, on the GPU.
fn refiner_and_tiling_parity(device: &Device, model: &sdxl::loader::SdxlModel, dtype: DType) -> sdxl::Result<()> {
    let fixtures = common::fixtures();
    let options = LoadOptions { role: sdxl::loader::ModelRole::Refiner, share_text_encoder_2_with: Some(model), device, dtype, vae_dtype: DType::F32, config_dir: None, cpu_offload: false };
    let refiner = loader::load_diffusers_folder(&fixtures.join("tiny-sdxl-refiner"), &options)?;
    let references = common::reference("refiner");
    let image = |key: &str| references.get(key).cloned().ok_or_else(|| sdxl::Error::Internal(format!("no {key}")));
    let request = json!({"prompt": "a lighthouse on a cliff at dawn", "models": {"base": "tiny", "refiner": "tiny-refiner"}, "refiner": {"denoising_start": 0.8},
        "hyperparameters": {"num_inference_steps": 10, "guidance_scale": 5.0, "seed": 5}, "dimensions": {"width": 128, "height": 128}, "scheduler": "EulerDiscreteScheduler"});
    let models = sdxl::pipeline::PipelineModels { base: model, refiner: Some(&refiner), vae: sdxl::pipeline::VaeChoice::of(model), controlnets: Vec::new() };
    let (batch, _) = common::run_request(&models, request, None, device);
    let (max_diff, differing) = common::max_pixel_diff(&common::image_tensor(&batch.images), &image("ensemble_euler/image")?);
    println!("{}", json!({"kind": "parity", "dtype": format!("{dtype:?}"), "case": "refiner_ensemble_euler", "uint8_max_diff": max_diff, "differing_values": differing}));
    // One ControlNet at 0.7 (the tiny canny fixture) on the same base.
    let controlnet_refs = common::reference("controlnet");
    let options = sdxl::loader::controlnet::ControlNetLoadOptions { device, dtype, cpu_offload: false };
    let net = sdxl::loader::controlnet::load_controlnet(&sdxl::loader::ModelLocation::DiffusersFolder(fixtures.join("tiny-controlnet-canny")), model.unet.config(), &options)?;
    let edges = image::open(fixtures.join("reference/control_canny_128.png")).map_err(|e| sdxl::Error::Internal(e.to_string()))?.to_rgb8();
    let control = sdxl::pipeline::ControlGuidance {
        network: &net.network,
        image: sdxl::image::control::control_tensor(&edges, device)?,
        conditioning_scale: 0.7,
        guidance_start: 0.0,
        guidance_end: 1.0,
    };
    let request = json!({"prompt": "a house by the sea", "models": {"base": "tiny"}, "hyperparameters": {"num_inference_steps": 5, "guidance_scale": 6.0, "seed": 4},
        "dimensions": {"width": 128, "height": 128}, "scheduler": "EulerDiscreteScheduler"});
    let models = sdxl::pipeline::PipelineModels { base: model, refiner: None, vae: sdxl::pipeline::VaeChoice::of(model), controlnets: vec![control] };
    let (batch, _) = common::run_request(&models, request, None, device);
    let expected = controlnet_refs.get("one_canny_07/image").cloned().ok_or_else(|| sdxl::Error::Internal("no one_canny_07/image".into()))?;
    let (max_diff, differing) = common::max_pixel_diff(&common::image_tensor(&batch.images), &expected);
    println!("{}", json!({"kind": "parity", "dtype": format!("{dtype:?}"), "case": "controlnet_one_canny_07", "uint8_max_diff": max_diff, "differing_values": differing}));
    let tiled = common::reference("vae_custom");
    let tiling = sdxl::models::VaeTiling { tile_size: 64, overlap: 0.25 };
    let request = json!({"prompt": "a castle on a hill at sunset", "models": {"base": "tiny"}, "precision": {"vae_tiling": true, "vae_tile_size": 64},
        "hyperparameters": {"num_inference_steps": 3, "guidance_scale": 5.0, "seed": 11}, "dimensions": {"width": 192, "height": 256}, "scheduler": "EulerDiscreteScheduler"});
    let models = sdxl::pipeline::PipelineModels { base: model, refiner: None, vae: sdxl::pipeline::VaeChoice { tiling: Some(tiling), ..sdxl::pipeline::VaeChoice::of(model) }, controlnets: Vec::new() };
    let (batch, _) = common::run_request(&models, request, None, device);
    let expected = tiled.get("tiled_txt2img/image").cloned().ok_or_else(|| sdxl::Error::Internal("no tiled_txt2img/image".into()))?;
    let (max_diff, differing) = common::max_pixel_diff(&common::image_tensor(&batch.images), &expected);
    println!("{}", json!({"kind": "parity", "dtype": format!("{dtype:?}"), "case": "tiled_txt2img", "uint8_max_diff": max_diff, "differing_values": differing}));
    Ok(())
}

/// The ×4 Real-ESRGAN fixture on the GPU against PyTorch's output (whole image, no pre-pad).
fn upscale_parity(device: &Device, dtype: DType) -> sdxl::Result<()> {
    let fixtures = common::fixtures();
    let net = sdxl::loader::esrgan::load_upscaler(&fixtures.join("esrgan/tiny_x4plus.pth"), device, dtype)?;
    let input = image::open(fixtures.join("esrgan/input_48x40.png")).map_err(|e| sdxl::Error::Internal(e.to_string()))?.to_rgb8();
    let settings = sdxl::pipeline::upscale::UpscaleSettings { tile: 0, tile_pad: 10, pre_pad: 0, outscale: 4.0 };
    let ours = sdxl::pipeline::upscale::upscale_with_network(&net.network, &input, &settings, device, dtype)?;
    let expected = common::reference("esrgan").get("x4/out").cloned().ok_or_else(|| sdxl::Error::Internal("no x4/out".into()))?;
    let ours = Tensor::from_vec(ours.into_raw(), expected.dims(), &Device::Cpu)?;
    let (max_diff, differing) = common::max_pixel_diff(&ours, &expected);
    println!("{}", json!({"kind": "parity", "dtype": format!("{dtype:?}"), "case": "realesrgan_x4", "uint8_max_diff": max_diff, "differing_values": differing}));
    Ok(())
}

fn parity(device: &Device) -> sdxl::Result<()> {
    upscale_parity(device, DType::F32)?;
    upscale_parity(device, DType::F16)?;
    for (dtype, vae_dtype) in [(DType::F32, DType::F32), (DType::F16, DType::F32), (DType::BF16, DType::F32)] {
        let options = LoadOptions { role: sdxl::loader::ModelRole::Base, share_text_encoder_2_with: None, device, dtype, vae_dtype, config_dir: None, cpu_offload: false };
        let model = loader::load_diffusers_folder(&common::fixtures().join("tiny-sdxl"), &options)?;
        if dtype != DType::BF16 {
            refiner_and_tiling_parity(device, &model, dtype)?;
        }
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
    let options = LoadOptions { role: sdxl::loader::ModelRole::Base, share_text_encoder_2_with: None, device, dtype: DType::F16, vae_dtype: DType::F32, config_dir: None, cpu_offload: false };
    let model = loader::load_sdxl_random(&options)?;
    println!("{}", json!({"kind": "load_random_weights_s", "value": seconds_since(load_start, device)?}));

    let prompt = "a photograph of an astronaut riding a horse on mars, highly detailed";
    let mut encode_times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let cond = encode_conditioning(&model, prompt, Some("blurry"), true, sdxl::api::validate::PromptTruncation::Chunked, 16, device)?;
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
        let batch = generate(&sdxl::pipeline::PipelineModels::base_only(&model), &plan, None, &mut ctx, None)?;
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
        let model = loader::load_diffusers_folder(dir, &LoadOptions { role: sdxl::loader::ModelRole::Base, share_text_encoder_2_with: None, device, dtype, vae_dtype: DType::F32, config_dir: None, cpu_offload: false })?;
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
            let batch = generate(&sdxl::pipeline::PipelineModels::base_only(&model), &plan, None, &mut ctx, None)?;
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

/// Large images and the refiner through the engine, full-size random weights, float16:
/// a 1024² ensemble with the refiner, and 2048² with the VAE decoding whole, tiled, and
/// "auto" under a memory budget. Reports times, stage times, peak memory and whether it tiled.
fn large(_device: &Device) -> sdxl::Result<()> {
    let run = |label: &str, budget_gb: Option<f64>, size: u32, steps: u32, extra: serde_json::Value| {
        let mut config = json!({"device": "cuda:0", "output_dir": "/tmp/sdxl-large", "dtype": "float16", "limits": {"max_size": 2048}});
        if let Some(budget) = budget_gb {
            config["max_memory_gb"] = json!(budget);
        }
        let engine = match sdxl::Engine::from_json(&config.to_string()) {
            Ok(engine) => engine,
            Err(err) => return println!("{}", json!({"kind": "large", "run": label, "error": err.to_string()})),
        };
        let mut request = json!({"prompt": "a lighthouse on a cliff at dawn, highly detailed", "models": {"base": "builtin:sdxl-random"},
            "dimensions": {"width": size, "height": size}, "hyperparameters": {"num_inference_steps": steps, "seed": 1}, "scheduler": "EulerDiscreteScheduler",
            "output": {"save_path": label}});
        common::merge(&mut request, extra);
        // The first request compiles nothing (the device opened compiled candle's kernels) but
        // draws the random weights; the second is the measurement.
        for attempt in ["warm_up", "measured"] {
            let response: serde_json::Value = serde_json::from_str(&engine.handle_json(&request.to_string())).unwrap_or_default();
            let metrics = &response["data"]["processing_metrics"];
            println!("{}", json!({"kind": "large", "run": label, "attempt": attempt, "size": size, "steps": steps, "budget_gb": budget_gb,
                "success": response["success"], "error": response["error"], "warnings": response["warnings"],
                "total_s": metrics["total_time"], "stage_times": metrics["stage_times"], "peak_memory_bytes": metrics["peak_memory_bytes"],
                "weights_bytes": metrics["memory_used"], "vae_tiling": metrics["model_info"]["vae_tiling"], "refiner_steps": metrics["model_info"]["refiner_steps"],
                "image_size": [response["data"]["generated_images"][0]["width"].clone(), response["data"]["generated_images"][0]["height"].clone()]}));
        }
    };
    // A full-size RealESRGAN_x4plus (23 blocks, 64 features, growth 32) with random weights, as a
    // file the engine loads like a downloaded one.
    let upscaler = std::path::Path::new("/tmp/RealESRGAN_x4plus_random.safetensors");
    {
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let config = sdxl::models::esrgan::RrdbConfig { in_channels: 3, out_channels: 3, num_feat: 64, num_block: 23, num_grow_ch: 32, scale: 4 };
        sdxl::models::esrgan::RrdbNet::new(vb, &config)?;
        varmap.save(upscaler)?;
    }
    run("upscale_x4_1024_tile512", None, 1024, 30, json!({"output": {"upscale": {"enabled": true, "factor": 4, "model": upscaler.display().to_string(), "tile": 512, "tile_pad": 16}}}));
    run("refiner_ensemble_1024", None, 1024, 30, json!({"models": {"refiner": "builtin:sdxl-refiner-random"}, "refiner": {"denoising_start": 0.8}}));
    run("base_only_1024", None, 1024, 30, json!({}));
    run("2048_whole_decode", None, 2048, 10, json!({"precision": {"vae_tiling": false}}));
    run("2048_tiled_decode", None, 2048, 10, json!({"precision": {"vae_tiling": true}}));
    run("2048_auto_budget_12gb", Some(12.0), 2048, 10, json!({"precision": {"vae_tiling": "auto"}}));
    run("2048_tiled_cpu_offload", None, 2048, 10, json!({"precision": {"vae_tiling": true, "cpu_offload": true}}));
    run("1024_cpu_offload", None, 1024, 30, json!({"precision": {"cpu_offload": true}}));
    Ok(())
}

/// Median of `runs` timed calls of `f` (after two warm-up calls), in milliseconds.
fn median_ms(device: &Device, runs: usize, mut f: impl FnMut() -> sdxl::Result<Tensor>) -> sdxl::Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        drop(f()?);
        times.push(seconds_since(start, device)? * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// ‖a − b‖ / ‖b‖ and max |a − b| in float32.
fn errors(fused: &Tensor, plain: &Tensor) -> sdxl::Result<(f32, f32)> {
    let (a, b) = (fused.to_dtype(DType::F32)?, plain.to_dtype(DType::F32)?);
    let diff = (&a - &b)?;
    let relative = (diff.sqr()?.sum_all()?.sqrt()? / b.sqr()?.sum_all()?.sqrt()?)?.to_scalar::<f32>()?;
    let max_abs = diff.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok((relative, max_abs))
}

/// Runs `f` with the fused kernels and with candle's plain ops; prints error and both times.
fn compare_kernel(device: &Device, what: &str, f: impl Fn() -> sdxl::Result<Tensor>) -> sdxl::Result<()> {
    sdxl::ops::set_fused_kernels(true);
    let fused = f()?;
    let fused_ms = median_ms(device, 20, &f)?;
    sdxl::ops::set_fused_kernels(false);
    let plain = f()?;
    let plain_ms = median_ms(device, 20, &f)?;
    sdxl::ops::set_fused_kernels(true);
    let (relative, max_abs) = errors(&fused, &plain)?;
    let finite = fused.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?.is_finite();
    println!("{}", json!({"kind": "kernel", "op": what, "dtype": format!("{:?}", fused.dtype()), "relative_l2_vs_plain": relative, "max_abs_vs_plain": max_abs,
        "finite": finite, "fused_ms": fused_ms, "plain_ms": plain_ms}));
    Ok(())
}

/// Each fused kernel against candle's plain path, on fresh random inputs at SDXL's shapes
/// (and awkward ones: token counts that are not multiples of the kernels' tiles).
fn kernels(device: &Device) -> sdxl::Result<()> {
    let randn = |shape: &[usize], dtype: DType| -> sdxl::Result<Tensor> { Ok(Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype)?) };
    for (shape, groups, dtype, eps) in [
        (vec![2, 320, 128, 128], 32, DType::F16, 1e-5),
        (vec![2, 1280, 32, 32], 32, DType::F16, 1e-5),
        (vec![2, 640, 64, 64], 32, DType::BF16, 1e-5),
        (vec![1, 128, 1024, 1024], 32, DType::F32, 1e-6),
        (vec![1, 512, 128, 128], 32, DType::F32, 1e-6),
        (vec![3, 24, 7, 5], 8, DType::F16, 1e-5),
    ] {
        let channels = shape[1];
        // Shifted input: a mean far from 0 is what breaks a naive E[x²] − E[x]² variance.
        let x = randn(&shape, DType::F32)?.affine(3.0, 5.0)?.to_dtype(dtype)?;
        let mut tensors = std::collections::HashMap::new();
        tensors.insert("weight".to_string(), randn(&[channels], DType::F32)?.affine(0.1, 1.0)?);
        tensors.insert("bias".to_string(), (randn(&[channels], DType::F32)? * 0.1)?);
        let vb = candle_nn::VarBuilder::from_tensors(tensors, dtype, device);
        let norm = sdxl::ops::GroupNorm::new(groups, channels, eps, vb)?;
        compare_kernel(device, &format!("group_norm_silu {shape:?}"), || norm.forward_silu(&x))?;
        compare_kernel(device, &format!("group_norm {shape:?}"), || norm.forward(&x))?;
    }
    for (batch, q_len, kv_len, heads, dtype) in [
        (2, 4096, 4096, 10, DType::F16),
        (2, 1024, 1024, 20, DType::F16),
        (2, 4096, 77, 10, DType::F16),
        (2, 1024, 77, 20, DType::F16),
        (1, 100, 77, 3, DType::F16),
        (2, 1030, 129, 4, DType::BF16),
    ] {
        let q = randn(&[batch, q_len, heads * 64], dtype)?;
        let k = randn(&[batch, kv_len, heads * 64], dtype)?;
        let v = randn(&[batch, kv_len, heads * 64], dtype)?;
        compare_kernel(device, &format!("attention b{batch} q{q_len} kv{kv_len} h{heads}"), || sdxl::ops::attention(&q, &k, &v, heads))?;
    }
    for (input, out_channels, kernel, stride, dtype) in [
        (vec![2, 320, 128, 128], 320, 3, 1, DType::F16),
        (vec![2, 640, 64, 64], 640, 3, 1, DType::F16),
        (vec![2, 2560, 32, 32], 1280, 3, 1, DType::F16),
        (vec![2, 640, 64, 64], 320, 1, 1, DType::F16),
        (vec![2, 320, 128, 128], 320, 3, 2, DType::F16),
        (vec![2, 4, 128, 128], 320, 3, 1, DType::F16),
        (vec![1, 128, 1024, 1024], 128, 3, 1, DType::F32),
        (vec![1, 512, 128, 128], 512, 3, 1, DType::F32),
        (vec![1, 256, 512, 512], 128, 1, 1, DType::F32),
        (vec![3, 5, 9, 7], 6, 3, 1, DType::BF16),
    ] {
        let in_channels = input[1];
        let mut tensors = std::collections::HashMap::new();
        let fan_in = (in_channels * kernel * kernel) as f64;
        tensors.insert("weight".to_string(), (randn(&[out_channels, in_channels, kernel, kernel], DType::F32)? / fan_in.sqrt())?);
        tensors.insert("bias".to_string(), (randn(&[out_channels], DType::F32)? * 0.1)?);
        let vb = candle_nn::VarBuilder::from_tensors(tensors, dtype, device);
        let config = candle_nn::Conv2dConfig { padding: kernel / 2, stride, ..Default::default() };
        let conv = sdxl::models::patchable::conv2d(in_channels, out_channels, kernel, config, vb)?;
        let x = randn(&input, dtype)?;
        compare_kernel(device, &format!("conv{kernel}x{kernel}/{stride} {input:?} -> {out_channels}"), || Ok(candle_core::Module::forward(&conv, &x)?))?;
        // candle's own half-precision convolution accumulates in half precision: measure ours
        // against float32 math on the same (rounded) inputs instead.
        if dtype != DType::F32 {
            let fused = candle_core::Module::forward(&conv, &x)?;
            sdxl::ops::set_fused_kernels(false);
            let weight = conv.weight_tensor().to_dtype(DType::F32)?;
            let bias = conv.bias_tensor().map(|b| b.to_dtype(DType::F32)).transpose()?;
            let reference = x.to_dtype(DType::F32)?.conv2d(&weight, kernel / 2, stride, 1, 1)?;
            let reference = match bias {
                Some(bias) => reference.broadcast_add(&bias.reshape((1, out_channels, 1, 1))?)?,
                None => reference,
            };
            sdxl::ops::set_fused_kernels(true);
            let (relative, max_abs) = errors(&fused, &reference)?;
            println!("{}", json!({"kind": "kernel_vs_f32", "op": format!("conv{kernel}x{kernel}/{stride} {input:?} -> {out_channels}"), "dtype": format!("{dtype:?}"), "relative_l2_vs_f32": relative, "max_abs_vs_f32": max_abs}));
        }
    }
    for (rows, inner, out, dtype) in [(2048, 1280, 1280, DType::F16), (2048, 1280, 10240, DType::F16), (2048, 5120, 1280, DType::F16), (8192, 640, 640, DType::F16), (8192, 640, 5120, DType::F16), (8192, 2560, 640, DType::F16), (154, 2048, 1280, DType::F16), (78, 9, 5, DType::BF16)] {
        let x = randn(&[2, rows / 2, inner], dtype)?;
        let weight = (randn(&[out, inner], DType::F32)? / (inner as f64).sqrt())?.to_dtype(dtype)?;
        let bias = randn(&[out], dtype)?;
        compare_kernel(device, &format!("linear [{rows}, {inner}] -> {out}"), || Ok(sdxl::ops::linear(&x, &weight, Some(&bias))?))?;
        let flat = x.reshape((rows, inner))?;
        let gemm_ms = median_ms(device, 20, || Ok(flat.matmul(&weight.t()?)?))?;
        println!("{}", json!({"kind": "gemm_only", "op": format!("candle matmul [{rows}, {inner}] x [{inner}, {out}]"), "ms": gemm_ms, "tflops": 2.0 * (rows * inner * out) as f64 / gemm_ms / 1e9}));
    }
    for (shape, dtype) in [(vec![2, 4096, 2 * 2560], DType::F16), (vec![2, 1024, 2 * 5120], DType::F16), (vec![3, 7, 2 * 9], DType::BF16)] {
        let x = randn(&shape, dtype)?;
        compare_kernel(device, &format!("geglu {shape:?}"), || sdxl::ops::geglu(&x))?;
    }
    Ok(())
}

/// One UNet step (CFG batch 2, 1024²) and one VAE decode (1024², float32), with the fused
/// kernels and without: median times, the host's enqueue time (how long the CPU takes to
/// launch the step: if it is close to the step time, the step is launch-bound), and the time by
/// kind of op.
fn profile(device: &Device) -> sdxl::Result<()> {
    let options = LoadOptions { role: sdxl::loader::ModelRole::Base, share_text_encoder_2_with: None, device, dtype: DType::F16, vae_dtype: DType::F32, config_dir: None, cpu_offload: false };
    let model = loader::load_sdxl_random(&options)?;
    let latents = Tensor::randn(0f32, 1.0, (2, 4, 128, 128), device)?.to_dtype(DType::F16)?;
    let context = Tensor::randn(0f32, 1.0, (2, 77, 2048), device)?.to_dtype(DType::F16)?;
    let pooled = Tensor::randn(0f32, 1.0, (2, 1280), device)?.to_dtype(DType::F16)?;
    let time_ids = Tensor::new(&[[1024f32, 1024., 0., 0., 1024., 1024.], [1024., 1024., 0., 0., 1024., 1024.]], device)?;
    let cond = UNetConditioning { encoder_hidden_states: &context, text_embeds: &pooled, time_ids: &time_ids };
    let vae_latent = Tensor::randn(0f32, 1.0, (1, 4, 128, 128), device)?;
    let vae = model.vae.on_device()?;
    let mut outputs = Vec::new();
    for fused in [true, false] {
        sdxl::ops::set_fused_kernels(fused);
        let unet_ms = median_ms(device, 6, || Ok(model.unet.forward(&latents, 500.0, &cond)?))?;
        device.synchronize()?;
        let start = Instant::now();
        let out = model.unet.forward(&latents, 500.0, &cond)?;
        let enqueue_ms = start.elapsed().as_secs_f64() * 1000.0;
        device.synchronize()?;
        outputs.push(out.to_dtype(DType::F32)?);
        let vae_ms = median_ms(device, 3, || Ok(vae.decode(&vae_latent)?))?;
        println!("{}", json!({"kind": "profile_times", "fused_kernels": fused, "unet_step_ms": unet_ms, "unet_enqueue_ms": enqueue_ms, "vae_decode_ms": vae_ms}));
        for (what, run) in [("unet_step", 0), ("vae_decode", 1)] {
            sdxl::ops::profile::enable(true);
            let start = Instant::now();
            if run == 0 {
                model.unet.forward(&latents, 500.0, &cond)?;
            } else {
                vae.decode(&vae_latent)?;
            }
            let total = seconds_since(start, device)? * 1000.0;
            let report = sdxl::ops::profile::report();
            sdxl::ops::profile::enable(false);
            let timed: f64 = report.iter().map(|(_, _, t)| t.as_secs_f64() * 1000.0).sum();
            let rows: Vec<_> = report.iter().map(|(c, n, t)| json!({"op": c.name(), "calls": n, "ms": t.as_secs_f64() * 1000.0})).collect();
            println!("{}", json!({"kind": "profile", "fused_kernels": fused, "pass": what, "total_ms_synchronised": total, "other_ms": total - timed, "ops": rows}));
        }
    }
    sdxl::ops::set_fused_kernels(true);
    let (relative, max_abs) = errors(&outputs[0], &outputs[1])?;
    println!("{}", json!({"kind": "unet_fused_vs_plain", "relative_l2": relative, "max_abs": max_abs}));
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    sdxl::engine::memory::before_opening_cuda();
    let opened = Instant::now();
    let device = match Device::new_cuda(0) {
        Ok(device) => device,
        Err(err) => {
            eprintln!("gpu_bench: no CUDA device: {err}");
            std::process::exit(2);
        }
    };
    // As the engine does for every CUDA device it opens.
    if let Err(err) = sdxl::engine::memory::configure_device(&device) {
        eprintln!("gpu_bench: {err}");
        std::process::exit(2);
    }
    println!("{}", json!({"kind": "device_ready_s", "value": opened.elapsed().as_secs_f64(), "note": "includes compiling candle's PTX (cached by the driver after the first run on a machine)"}));
    let result = match args.get(1).map(String::as_str) {
        Some("parity") => parity(&device),
        Some("bench") => bench(&device, args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30)),
        Some("oom") => oom(&device),
        Some("offload") => offload(&device, args.get(2).map(String::as_str) == Some("on")),
        Some("large") => large(&device),
        Some("kernels") => kernels(&device),
        Some("profile") => profile(&device),
        Some("compare") => compare(&device, std::path::Path::new(args.get(2).map(String::as_str).unwrap_or("/tmp/sdxl-random"))),
        _ => {
            eprintln!("usage: gpu_bench parity | bench [steps] | kernels | profile | compare DIR | oom | offload on|off | large");
            std::process::exit(2);
        }
    };
    if let Err(err) = result {
        eprintln!("gpu_bench: {err}");
        std::process::exit(1);
    }
}
