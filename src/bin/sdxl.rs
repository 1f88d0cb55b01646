//! The `sdxl` command line: a thin client of the same engine the C ABI serves.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sdxl::{Engine, EngineConfig};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "sdxl", version, about = "Stable Diffusion XL, equal to diffusers, in-process")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt.
    Generate(GenerateArgs),
    /// Run a raw request JSON file through exactly the path of `sdxl_generate_json`; print the response.
    Request {
        /// The request (or envelope) JSON file.
        #[arg(required_unless_present = "from_image")]
        file: Option<PathBuf>,
        /// Run again the request a PNG written by this library remembers (its `sdxl_request` chunk).
        #[arg(long, conflicts_with = "file")]
        from_image: Option<PathBuf>,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

#[derive(Args)]
struct EngineArgs {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// float32, float16 or bfloat16 (CPU always computes in float32).
    #[arg(long, default_value = "float16")]
    dtype: String,
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Root folder every saved image stays under (request mode).
    #[arg(long, default_value = ".")]
    output_dir: PathBuf,
    /// Allow sizes below SDXL's 256 minimum (useful with tiny models).
    #[arg(long)]
    min_size: Option<u32>,
    /// Reproduce the noise of torch's non-vectorised CPU build instead of its AVX2/AVX-512 one.
    #[arg(long)]
    scalar_noise: bool,
    /// Requests name models, VAEs, ControlNets, LoRAs and upscalers under --models-dir only, never by path.
    #[arg(long, requires = "models_dir")]
    models_dir_only: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Model name, path to a .safetensors checkpoint or diffusers folder; default: the built-in demo model.
    #[arg(long, default_value = "builtin:tiny")]
    model: String,
    /// Diffusers folder whose configs describe a single-file checkpoint of non-SDXL size.
    #[arg(long)]
    model_config: Option<PathBuf>,
    #[arg(long)]
    width: Option<u32>,
    #[arg(long)]
    height: Option<u32>,
    #[arg(long)]
    steps: Option<u32>,
    #[arg(long)]
    guidance: Option<f64>,
    /// -1 picks a random seed (reported).
    #[arg(long, default_value_t = -1)]
    seed: i64,
    #[arg(long)]
    scheduler: Option<String>,
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// img2img source image.
    #[arg(long)]
    init_image: Option<PathBuf>,
    #[arg(long)]
    strength: Option<f64>,
    /// Output file; its extension picks png, jpg or webp. Batches add _1, _2, … before it.
    #[arg(long, default_value = "out.png")]
    out: PathBuf,
    #[arg(long)]
    quality: Option<u32>,
    /// A LoRA to apply, `path:weight` (weight −2…2, default 1); a name is looked up under
    /// `<models-dir>/loras/` and `<models-dir>/`. Repeat for several.
    #[arg(long = "lora", value_name = "PATH:WEIGHT")]
    loras: Vec<String>,
    /// Give up after this many seconds of running (queue wait excluded); default: no limit.
    #[arg(long)]
    timeout: Option<f64>,
    /// An SDXL refiner (folder or single file) that finishes the base's image.
    #[arg(long)]
    refiner: Option<String>,
    /// ensemble (the refiner runs the last part of the schedule) or img2img (it refines the finished latents).
    #[arg(long, requires = "refiner")]
    refiner_mode: Option<String>,
    /// Ensemble: the fraction of the schedule the base runs (default 0.8).
    #[arg(long, requires = "refiner")]
    refiner_start: Option<f64>,
    /// img2img: how far the refiner re-noises the base's latents (default 0.3).
    #[arg(long, requires = "refiner")]
    refiner_strength: Option<f64>,
    /// A custom VAE: folder, diffusers-layout or original-layout .safetensors (e.g. sdxl-vae-fp16-fix).
    #[arg(long)]
    vae: Option<String>,
    /// float32, float16 or bfloat16 for the VAE of this request (half precision falls back to float32 on overflow).
    #[arg(long)]
    vae_dtype: Option<String>,
    /// true, false or auto (tile when the whole decode would not fit the memory budget).
    #[arg(long)]
    vae_tiling: Option<String>,
    /// VAE tile size in pixels (default: the VAE's sample_size, 1024 for SDXL).
    #[arg(long)]
    vae_tile_size: Option<u32>,
    /// A ControlNet (folder or diffusers-layout .safetensors); repeat for several, each with
    /// its own --control-image (and optionally --control-scale, --control-type, --canny).
    #[arg(long = "controlnet", value_name = "MODEL")]
    controlnets: Vec<String>,
    /// The control image of the ControlNet at the same position.
    #[arg(long = "control-image", value_name = "FILE")]
    control_images: Vec<PathBuf>,
    /// conditioning_scale of the ControlNet at the same position (default 1.0).
    #[arg(long = "control-scale", value_name = "SCALE")]
    control_scales: Vec<f64>,
    /// Its type (canny, depth, pose, scribble, normal, seg, lineart; default canny).
    #[arg(long = "control-type", value_name = "TYPE")]
    control_types: Vec<String>,
    /// Detect canny edges in the control images (thresholds 100/200) instead of using them as given.
    #[arg(long)]
    canny: bool,
    /// Upscale the images ×2 or ×4 after decoding (Real-ESRGAN; default model
    /// <models-dir>/upscalers/RealESRGAN_x{N}plus.pth).
    #[arg(long, value_name = "FACTOR")]
    upscale: Option<u32>,
    /// The upscaler: a Real-ESRGAN .pth/.safetensors, or "lanczos" for plain resampling.
    #[arg(long, value_name = "MODEL", requires = "upscale")]
    upscaler: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// `path:weight`, split at the last colon only when what follows is a number
/// (so `C:\loras\x.safetensors` stays a path).
fn parse_lora_arg(arg: &str) -> Value {
    match arg.rsplit_once(':') {
        Some((path, weight)) if !path.is_empty() => match weight.trim().parse::<f64>() {
            Ok(weight) => json!({"name": path, "weight": weight}),
            Err(_) => json!({"name": arg, "weight": 1.0}),
        },
        _ => json!({"name": arg, "weight": 1.0}),
    }
}

fn engine_config(args: &EngineArgs, output_dir: &Path) -> EngineConfig {
    let mut config = EngineConfig {
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        models_dir: args.models_dir.clone(),
        output_dir: output_dir.to_path_buf(),
        torch_cpu_kernel: if args.scalar_noise { "scalar".into() } else { "vectorized".into() },
        models_dir_only: args.models_dir_only,
        ..Default::default()
    };
    if let Some(min) = args.min_size {
        config.limits.min_size = min;
    }
    config
}

fn attach_progress_bar(engine: &Engine) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("{msg:>8} [{bar:30}] {pos}/{len} steps {elapsed_precise}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let handle = bar.clone();
    engine.set_progress_callback(Some(Box::new(move |_, event| {
        handle.set_length(event.total_steps as u64);
        handle.set_position(event.step as u64);
        handle.set_message(event.stage.name());
        true
    })));
    bar
}

fn print_response(response: &str) -> ExitCode {
    println!("{response}");
    let success = serde_json::from_str::<Value>(response).ok().and_then(|v| v["success"].as_bool()).unwrap_or(false);
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_generate(args: GenerateArgs) -> Result<ExitCode, String> {
    let out_dir = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let extension = args.out.extension().and_then(|e| e.to_str()).unwrap_or("png").to_ascii_lowercase();
    let builtin = args.model == "builtin:tiny";
    let mut config = engine_config(&args.engine, &out_dir);
    if builtin && args.engine.min_size.is_none() {
        config.limits.min_size = 64;
    }
    let engine = Engine::new(config).map_err(|e| e.to_string())?;
    if builtin {
        eprintln!("sdxl: no --model given: using the built-in tiny demo model (random weights, no download)");
    }
    if let Some(dir) = &args.model_config {
        let load = json!({"base": args.model, "config": dir}).to_string();
        engine.load_model_json(&load).map_err(|e| e.to_string())?;
    }
    let default_size = if builtin { 256 } else { 1024 };
    let mut hyper = json!({"seed": args.seed});
    if let Some(steps) = args.steps {
        hyper["num_inference_steps"] = json!(steps);
    }
    if let Some(guidance) = args.guidance {
        hyper["guidance_scale"] = json!(guidance);
    }
    if let Some(strength) = args.strength {
        hyper["strength"] = json!(strength);
    }
    let mut request = json!({
        "prompt": args.prompt,
        "models": {"base": args.model},
        "hyperparameters": hyper,
        "dimensions": {"width": args.width.unwrap_or(default_size), "height": args.height.unwrap_or(default_size)},
        "batch": {"size": args.batch},
        "output": {"format": extension, "save_path": "."},
    });
    if let Some(negative) = args.negative_prompt {
        request["negative_prompt"] = json!(negative);
    }
    if let Some(scheduler) = args.scheduler {
        request["scheduler"] = json!(scheduler);
    }
    if let Some(quality) = args.quality {
        request["output"]["quality"] = json!(quality);
    }
    if let Some(init) = &args.init_image {
        request["init_image"] = json!(init.display().to_string());
    }
    if !args.loras.is_empty() {
        let models: Vec<Value> = args.loras.iter().map(|arg| parse_lora_arg(arg)).collect();
        request["lora"] = json!({"enabled": true, "models": models});
    }
    if let Some(timeout) = args.timeout {
        request["metadata"] = json!({"timeout": timeout});
    }
    if let Some(refiner) = &args.refiner {
        request["models"]["refiner"] = json!(refiner);
        let mut options = json!({});
        for (key, value) in [("mode", args.refiner_mode.clone().map(Value::from)), ("denoising_start", args.refiner_start.map(Value::from)), ("strength", args.refiner_strength.map(Value::from))] {
            if let Some(value) = value {
                options[key] = value;
            }
        }
        request["refiner"] = options;
    }
    if let Some(vae) = &args.vae {
        request["models"]["vae"] = json!(vae);
    }
    let mut precision = json!({});
    if let Some(dtype) = &args.vae_dtype {
        precision["vae_dtype"] = json!(dtype);
    }
    if let Some(tiling) = &args.vae_tiling {
        precision["vae_tiling"] = match tiling.as_str() {
            "true" => json!(true),
            "false" => json!(false),
            other => json!(other),
        };
    }
    if let Some(size) = args.vae_tile_size {
        precision["vae_tile_size"] = json!(size);
    }
    if precision.as_object().is_some_and(|p| !p.is_empty()) {
        request["precision"] = precision;
    }
    if let Some(factor) = args.upscale {
        let mut upscale = json!({"enabled": true, "factor": factor});
        match args.upscaler.as_deref() {
            Some("lanczos") => upscale["method"] = json!("lanczos"),
            Some(model) => upscale["model"] = json!(model),
            None => {}
        }
        request["output"]["upscale"] = upscale;
    }
    if args.controlnets.len() != args.control_images.len() {
        return Err(format!("{} --controlnet but {} --control-image: give one control image per ControlNet", args.controlnets.len(), args.control_images.len()));
    }
    if !args.controlnets.is_empty() {
        let entries: Vec<Value> = args
            .controlnets
            .iter()
            .enumerate()
            .map(|(index, model)| {
                json!({
                    "enabled": true,
                    "model": model,
                    "type": args.control_types.get(index).cloned().unwrap_or_else(|| "canny".into()),
                    "conditioning_scale": args.control_scales.get(index).copied().unwrap_or(1.0),
                    "control_image": args.control_images[index].display().to_string(),
                    "preprocessor": {"enabled": args.canny},
                })
            })
            .collect();
        request["controlnet"] = Value::Array(entries);
    }
    if builtin && args.steps.is_none() {
        request["hyperparameters"]["num_inference_steps"] = json!(10);
    }
    let bar = attach_progress_bar(&engine);
    let response = engine.handle_json(&request.to_string());
    bar.finish_and_clear();
    let parsed: Value = serde_json::from_str(&response).map_err(|e| e.to_string())?;
    if parsed["success"].as_bool() != Some(true) {
        return Err(format!("{}", parsed["error"].as_str().unwrap_or("generation failed")));
    }
    for warning in parsed["warnings"].as_array().into_iter().flatten() {
        eprintln!("sdxl: warning: {}", warning.as_str().unwrap_or_default());
    }
    let images = parsed["data"]["generated_images"].as_array().cloned().unwrap_or_default();
    for (index, image) in images.iter().enumerate() {
        let written = PathBuf::from(image["path"].as_str().unwrap_or_default());
        let target = if images.len() == 1 {
            args.out.clone()
        } else {
            let stem = args.out.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
            out_dir.join(format!("{stem}_{index}.{extension}"))
        };
        std::fs::rename(&written, &target).map_err(|e| format!("cannot move {} to {}: {e}", written.display(), target.display()))?;
        eprintln!("sdxl: wrote {} (seed {}, {}x{})", target.display(), image["seed"], image["width"], image["height"]);
    }
    let metrics = &parsed["data"]["processing_metrics"];
    eprintln!("sdxl: {:.2} s total on {}", metrics["total_time"].as_f64().unwrap_or(0.0), metrics["device_name"].as_str().unwrap_or("?"));
    Ok(ExitCode::SUCCESS)
}

/// The request a PNG of ours carries in its `sdxl_request` text chunk.
fn request_from_image(png: &Path) -> Result<String, String> {
    let bytes = std::fs::read(png).map_err(|e| format!("{}: {e}", png.display()))?;
    let chunks = sdxl::image::metadata::read_png_text(&bytes).map_err(|e| format!("{}: {e}", png.display()))?;
    chunks
        .into_iter()
        .find(|(key, _)| key == sdxl::image::metadata::REQUEST_KEY)
        .map(|(_, text)| text)
        .ok_or_else(|| format!("{} has no {} chunk (it was not written by sdxl-native, or not as PNG)", png.display(), sdxl::image::metadata::REQUEST_KEY))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => run_generate(args),
        Command::Request { file, from_image, engine } => (|| {
            let text = match (&file, &from_image) {
                (_, Some(png)) => request_from_image(png)?,
                (Some(file), None) => std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?,
                (None, None) => return Err("give a request file or --from-image".to_string()),
            };
            let engine = Engine::new(engine_config(&engine, &engine.output_dir)).map_err(|e| e.to_string())?;
            let bar = attach_progress_bar(&engine);
            let response = engine.handle_json(&text);
            bar.finish_and_clear();
            Ok(print_response(&response))
        })(),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("sdxl: error: {message}");
            ExitCode::FAILURE
        }
    }
}
