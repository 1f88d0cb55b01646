//! The fuzz targets' bodies: every parser that a request or a weight file reaches, driven by
//! arbitrary bytes. Each returns normally for any input; an `Err` is the expected outcome of
//! bad bytes, a panic, an abort or an allocation out of proportion to the input is a bug.
//!
//! `fuzz_targets/*.rs` hand these to libFuzzer (`cargo +nightly fuzz run <target>`), and
//! `tests/fuzz_regressions.rs` replays the committed seeds and every input that once crashed
//! through the same functions on stable Rust, so a fixed crash stays fixed in `cargo test`.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use candle_core::{DType, Device};
use once_cell::sync::Lazy;
use sdxl::api::validate::PromptTruncation;
use sdxl::api::{normalize_legacy_fields, parse_message, parse_request, plan_request, Limits, Message};
use sdxl::loader::safetensors_file::SafetensorsFile;
use sdxl::loader::single_file::{self, UNetLayout};
use sdxl::loader::{LoadOptions, ModelLocation, ModelRole, SdxlModel};
use sdxl::models::UNetConfig;
use sdxl::tokenizer::ClipTokenizer;

/// `sdxl_generate_json`'s path up to the model: envelope, legacy field names, typed parse,
/// validation and plan, and the check that every name resolves (there is no models folder,
/// so only paths and built-in names can).
pub fn request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(Message::Inference { data, .. }) = parse_message(text) else { return };
    let Ok(request) = parse_request(normalize_legacy_fields(data)) else { return };
    let Ok(plan) = plan_request(&request, "fuzz".into(), &Limits::default(), || 42) else { return };
    let _ = sdxl::engine::preflight::check_names_resolve(&plan, sdxl::engine::preflight::NamePolicy { models_dir: None, models_dir_only: false }, |_| false);
}

/// The header, the tensor table and every tensor of a `.safetensors` file held in memory.
pub fn safetensors_file(data: &[u8]) {
    let Ok(file) = SafetensorsFile::from_bytes(data.to_vec(), "fuzz.safetensors".into()) else { return };
    let names: Vec<String> = file.names().cloned().collect();
    for name in names {
        let _ = file.load(&name, &Device::Cpu);
        let _ = file.raw(&name);
        let _ = file.shape(&name);
    }
}

/// Single-file checkpoint key conversion: each input line is a key of an original (SGM or
/// LDM) checkpoint; it is classified and mapped to diffusers names as the loader does.
pub fn single_file_keys(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let keys: Vec<String> = text.lines().map(str::to_string).collect();
    let _ = single_file::detect_kind(keys.iter());
    let _ = single_file::require_sdxl_base(keys.iter(), "fuzz.safetensors");
    let layouts = [UNetLayout::of(&UNetConfig::sdxl_base()), UNetLayout::of(&UNetConfig::sdxl_refiner()), UNetLayout::of(&UNetConfig::tiny())];
    for key in &keys {
        for layout in &layouts {
            let _ = single_file::unet_key(key, layout);
        }
    }
    let maps = [single_file::text_encoder_map(), single_file::text_encoder_2_map(single_file::TEXT_ENCODER_2_PREFIX), single_file::vae_map(single_file::VAE_PREFIX, 4)];
    for map in &maps {
        for key in &keys {
            let _ = map(key);
        }
    }
}

/// The tiny SDXL fixture (stabilityai's configs, shrunk): the committed LoRA, ControlNet and
/// VAE fixtures, which seed the corpora, fit it.
static TINY_MODEL: Lazy<SdxlModel> = Lazy::new(|| {
    let device = Device::Cpu;
    let options = LoadOptions {
        role: ModelRole::Base,
        share_text_encoder_2_with: None,
        device: &device,
        dtype: DType::F32,
        vae_dtype: DType::F32,
        config_dir: None,
        cpu_offload: false,
    };
    // SDXL_FUZZ_FIXTURES: where the fixtures are when the binary runs on another machine.
    // Otherwise the repository's, above this crate (fuzz/) or the crate itself (the replay test).
    let fixtures = std::env::var_os("SDXL_FUZZ_FIXTURES").map(PathBuf::from).unwrap_or_else(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest.ancestors().map(|dir| dir.join("tests/fixtures")).find(|dir| dir.is_dir()).unwrap_or_else(|| manifest.join("../tests/fixtures"))
    });
    let folder = fixtures.join("tiny-sdxl");
    sdxl::loader::load_diffusers_folder(&folder, &options).expect("the tiny-sdxl fixture loads")
});

/// A LoRA file (kohya or PEFT names, alphas, adapter config in the metadata): parsed, then
/// matched against a model's layers with every shape checked.
pub fn lora_file(data: &[u8]) {
    let Ok(file) = SafetensorsFile::from_bytes(data.to_vec(), "fuzz-lora.safetensors".into()) else { return };
    let Ok(lora) = sdxl::loader::lora::parse_lora(&file) else { return };
    let _ = TINY_MODEL.adapters.resolve(&lora, "fuzz".into());
}

static TOKENIZERS: Lazy<[ClipTokenizer; 2]> =
    Lazy::new(|| [ClipTokenizer::embedded("<|endoftext|>").expect("embedded tokenizer"), ClipTokenizer::embedded("!").expect("embedded tokenizer")]);

/// The emphasis parser (`(word:1.2)`, `[word]`, escapes) and the embedded CLIP tokenizer with
/// both encoders' padding, in 75-token windows, truncated and not.
pub fn prompt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = sdxl::tokenizer::parse_weighted_prompt(text);
    for tokenizer in TOKENIZERS.iter() {
        let _ = tokenizer.windows(text, PromptTruncation::Chunked);
        let _ = tokenizer.windows(text, PromptTruncation::Diffusers);
    }
}

/// Init and control images as a request carries them (base64), decoded, resized to the
/// request's size and, for control images, turned into canny edges.
pub fn image_decode(data: &[u8]) {
    let source = base64::engine::general_purpose::STANDARD.encode(data);
    let mut warnings = Vec::new();
    let _ = sdxl::image::load_init_image(&source, 64, 48, &mut warnings);
    let canny = sdxl::image::canny::CannySettings { low_threshold: 100.0, high_threshold: 200.0, resolution: Some(40) };
    let _ = sdxl::image::control::prepare_control_image("controlnet.control_image", &source, Some(&canny), 32, 32, &mut warnings);
}

/// A scratch file per target and process: the file loaders take paths.
fn scratch_file(target: &str, extension: &str, data: &[u8]) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sdxl-fuzz-{}-{target}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("model.{extension}"));
    std::fs::File::create(&path).and_then(|mut file| file.write_all(data)).ok()?;
    Some(path)
}

/// A lone ControlNet `.safetensors`: its configuration is read from the weights' shapes
/// (no config.json beside it), checked against the UNet, and the network built.
pub fn controlnet_file(data: &[u8]) {
    let Some(path) = scratch_file("controlnet", "safetensors", data) else { return };
    let options = sdxl::loader::controlnet::ControlNetLoadOptions { device: &Device::Cpu, dtype: DType::F32, cpu_offload: false };
    let _ = sdxl::loader::controlnet::load_controlnet(&ModelLocation::SingleFile(path), TINY_MODEL.unet.config(), &options);
}

/// A lone VAE `.safetensors` in any of the three layouts.
pub fn vae_file(data: &[u8]) {
    let Some(path) = scratch_file("vae", "safetensors", data) else { return };
    let options = sdxl::loader::vae::VaeLoadOptions { device: &Device::Cpu, dtype: DType::F32, cpu_offload: false };
    let _ = sdxl::loader::vae::load_vae(&ModelLocation::SingleFile(path), TINY_MODEL.vae.network().config(), TINY_MODEL.unet.config(), &options);
}

/// A Real-ESRGAN `.pth`: a zip whose pickle is checked for foreign globals before candle's
/// pickle reader rebuilds the tensors.
pub fn pth_pickle(data: &[u8]) {
    let Some(path) = scratch_file("pth", "pth", data) else { return };
    let _ = sdxl::loader::esrgan::load_upscaler(&path, &Device::Cpu, DType::F32);
}

/// `sdxl request --from-image`: a PNG's text chunks, the A1111 settings line and the embedded
/// request, which goes down the request path.
pub fn png_metadata(data: &[u8]) {
    let Ok(chunks) = sdxl::image::metadata::read_png_text(data) else { return };
    for (key, text) in &chunks {
        match key.as_str() {
            "parameters" => {
                for line in text.lines() {
                    let _ = sdxl::image::metadata::parse_settings_line(line);
                }
            }
            "sdxl_request" => request(text.as_bytes()),
            _ => {}
        }
    }
}

/// The committed inputs of one target: its seed corpus and the inputs that once crashed.
pub fn committed_inputs(fuzz_dir: &Path, target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(fuzz_dir.join(kind).join(target)) {
            files.extend(entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).filter(|path| path.is_file()));
        }
    }
    files.sort();
    files
}

/// Every target by name, for the replay test.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("request", request),
    ("safetensors_file", safetensors_file),
    ("single_file_keys", single_file_keys),
    ("lora_file", lora_file),
    ("prompt", prompt),
    ("image_decode", image_decode),
    ("controlnet_file", controlnet_file),
    ("vae_file", vae_file),
    ("pth_pickle", pth_pickle),
    ("png_metadata", png_metadata),
];
