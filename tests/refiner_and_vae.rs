//! The refiner (ensemble and img2img hand-off), custom VAEs (folder, diffusers-layout and
//! original-layout files) and VAE tiling against diffusers 0.42.1
//! (tools/reference/make_refiner_vae_references.py), plus the float32 retry of an overflowing
//! half-precision VAE and the errors for models that do not fit.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::*;
use sdxl::loader::vae::{load_vae, VaeLoadOptions, VaeModel};
use sdxl::loader::{self, LoadOptions, ModelLocation, ModelRole, SdxlModel};
use sdxl::models::VaeTiling;
use sdxl::pipeline::{decode_latents, PipelineModels, VaeChoice};
use serde_json::{json, Value};

static CPU: Device = Device::Cpu;

fn cases(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("reference").join(file)).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["cases"].as_array().unwrap().clone()
}

fn case(file: &str, name: &str) -> Value {
    cases(file).into_iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no case {name}"))
}

/// The keys of one case in a `<case>/<key>` reference file.
fn case_tensors(file: &str, name: &str) -> std::collections::HashMap<String, Tensor> {
    reference(file)
        .into_iter()
        .filter_map(|(key, value)| key.strip_prefix(&format!("{name}/")).map(|rest| (rest.to_string(), value)))
        .collect()
}

fn refiner_for(base: &SdxlModel, location: &ModelLocation, config_dir: Option<&std::path::Path>) -> SdxlModel {
    let options = LoadOptions { role: ModelRole::Refiner, share_text_encoder_2_with: Some(base), config_dir, ..cpu_options() };
    loader::load_model(location, &options).expect("the tiny refiner loads")
}

fn refiner_folder() -> ModelLocation {
    ModelLocation::DiffusersFolder(fixtures().join("tiny-sdxl-refiner"))
}

fn vae_options(dtype: DType) -> VaeLoadOptions<'static> {
    VaeLoadOptions { device: &CPU, dtype, cpu_offload: false }
}

fn request_of(case: &Value, extra: Value) -> Value {
    let mut request = json!({
        "prompt": case["prompt"],
        "models": {"base": "tiny"},
        "hyperparameters": {"num_inference_steps": case["steps"], "guidance_scale": case["guidance_scale"], "seed": case["seed"]},
        "dimensions": {"width": case["width"], "height": case["height"]},
        "batch": {"size": case["batch"]},
        "scheduler": case["scheduler"],
    });
    if let Some(negative) = case["negative_prompt"].as_str() {
        request["negative_prompt"] = json!(negative);
    }
    merge(&mut request, extra);
    request
}

fn assert_image(name: &str, images: &[image::RgbImage], expected: &Tensor, tolerance: u8) {
    let (max, count) = max_pixel_diff(&image_tensor(images), expected);
    assert!(max <= tolerance, "{name}: uint8 max diff {max} ({count} values differ) > {tolerance}");
}

fn run_refiner_case(name: &str, refiner: &SdxlModel, base: &SdxlModel) {
    let case = case("refiner_cases.json", name);
    let refs = case_tensors("refiner", name);
    let refiner_options = match case["refiner"]["strength"].as_f64() {
        Some(strength) => json!({"mode": "img2img", "strength": strength}),
        None => json!({"mode": "ensemble", "denoising_start": case["denoising_start"]}),
    };
    let request = request_of(&case, json!({"models": {"refiner": "tiny-refiner"}, "refiner": refiner_options}));
    let models = PipelineModels { base, refiner: Some(refiner), vae: VaeChoice::of(base), controlnets: Vec::new() };
    let (batch, record) = run_request(&models, request, None, &CPU);
    assert_eq!(record.timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(), tensor(&refs, "base_timesteps").to_vec1::<f32>().unwrap(), "{name}: base timesteps");
    assert_close(&format!("{name}: hand-over latents"), record.handover_latents.as_ref().unwrap(), tensor(&refs, "base_latents"), 2e-4);
    let stage = record.refiner.as_ref().expect("the refiner stage was recorded");
    assert_eq!(stage.timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(), tensor(&refs, "refiner_timesteps").to_vec1::<f32>().unwrap(), "{name}: refiner timesteps");
    let b = case["batch"].as_u64().unwrap() as usize;
    let first = |t: &Tensor| t.narrow(0, 0, 1).unwrap();
    assert_close(&format!("{name}: refiner prompt_embeds (bigG only)"), stage.prompt_embeds.as_ref().unwrap(), &first(tensor(&refs, "prompt_embeds")), 1e-5);
    assert_close(&format!("{name}: refiner pooled"), stage.pooled_prompt_embeds.as_ref().unwrap(), &first(tensor(&refs, "pooled_prompt_embeds")), 1e-5);
    // force_zeros_for_empty_prompt is false in the refiner's model_index: None is encoded as "".
    assert_close(&format!("{name}: refiner negative embeds"), stage.negative_prompt_embeds.as_ref().unwrap(), &first(tensor(&refs, "negative_prompt_embeds")), 1e-5);
    assert_close(&format!("{name}: refiner add_time_ids (aesthetic score)"), stage.add_time_ids.as_ref().unwrap(), tensor(&refs, "add_time_ids"), 0.0);
    assert_eq!(stage.add_time_ids.as_ref().unwrap().dims(), &[b, 5]);
    assert_close(&format!("{name}: refiner first step"), stage.latents_after_first_step.as_ref().unwrap(), tensor(&refs, "latents_step1"), 2e-4);
    assert_close(&format!("{name}: final latents"), stage.final_latents.as_ref().unwrap(), tensor(&refs, "final_latents"), 2e-4);
    assert_image(name, &batch.images, tensor(&refs, "image"), 2);
    assert!(batch.refiner_steps_run > 0 && batch.steps_run > 0, "{name}: both stages ran");
}

#[test]
fn refiner_ensemble_and_img2img_match_diffusers() {
    let base = tiny_folder_model();
    let refiner = refiner_for(&base, &refiner_folder(), None);
    assert_eq!(refiner.role, ModelRole::Refiner);
    assert!(refiner.text_encoder.is_none() && refiner.requires_aesthetics_score && !refiner.force_zeros_for_empty_prompt);
    assert!(Arc::ptr_eq(&base.text_encoder_2, &refiner.text_encoder_2), "the refiner reuses the base's identical bigG encoder");
    for name in ["ensemble_euler", "ensemble_dpmpp2m", "img2img_strength03", "ensemble_batch2"] {
        run_refiner_case(name, &refiner, &base);
    }
}

#[test]
fn single_file_refiner_gives_the_folder_refiners_image() {
    let base = tiny_folder_model();
    let config = fixtures().join("tiny-sdxl-refiner");
    let refiner = refiner_for(&base, &ModelLocation::SingleFile(fixtures().join("tiny-sdxl-refiner.safetensors")), Some(&config));
    assert!(refiner.description.contains("refiner"), "{}", refiner.description);
    // A different key layout (OpenCLIP names) is different stored bytes: the encoder is its own.
    run_refiner_case("ensemble_euler", &refiner, &base);
}

#[test]
fn a_base_model_is_refused_as_the_refiner_and_a_refiner_as_the_base() {
    let base = tiny_folder_model();
    let options = LoadOptions { role: ModelRole::Refiner, share_text_encoder_2_with: Some(&base), ..cpu_options() };
    let error = loader::load_model(&ModelLocation::DiffusersFolder(fixtures().join("tiny-sdxl")), &options).err().expect("a base is not a refiner").to_string();
    assert!(error.contains("not a refiner"), "{error}");
    let error = loader::load_model(&ModelLocation::SingleFile(fixtures().join("tiny-sdxl.safetensors")), &options).err().expect("a base file is not a refiner").to_string();
    assert!(error.contains("not a refiner"), "{error}");
    let error = loader::load_model(&refiner_folder(), &cpu_options()).err().expect("a refiner is not a base").to_string();
    assert!(error.contains("models.refiner"), "{error}");
}

fn custom_vae(location: ModelLocation, base: &SdxlModel) -> VaeModel {
    load_vae(&location, base.vae.network().config(), base.unet.config(), &vae_options(DType::F32)).expect("the custom VAE loads")
}

#[test]
fn custom_vae_from_folder_and_from_files_matches_diffusers() {
    let base = tiny_folder_model();
    let folder = custom_vae(ModelLocation::DiffusersFolder(fixtures().join("tiny-vae-fp16-fix")), &base);
    let original = custom_vae(ModelLocation::SingleFile(fixtures().join("tiny-vae-fp16-fix.safetensors")), &base);
    assert!(original.description.contains("original layout"), "{}", original.description);
    assert!(!folder.network.network().config().force_upcast, "the fp16-fix config is read from the folder");
    let txt2img = case("vae_custom_cases.json", "custom_vae_txt2img");
    let refs = case_tensors("vae_custom", "custom_vae_txt2img");
    for vae in [&folder, &original] {
        let models = PipelineModels { base: &base, refiner: None, vae: VaeChoice { network: &vae.network, dtype: DType::F32, tiling: None, float32: None }, controlnets: Vec::new() };
        let (batch, record) = run_request(&models, request_of(&txt2img, json!({"models": {"vae": "fp16-fix"}})), None, &CPU);
        assert_close(&format!("custom VAE ({}) final latents", vae.description), record.final_latents.as_ref().unwrap(), tensor(&refs, "final_latents"), 2e-4);
        assert_image(&format!("custom VAE txt2img ({})", vae.description), &batch.images, tensor(&refs, "image"), 2);
    }
    let img2img = case("vae_custom_cases.json", "custom_vae_img2img");
    let refs = case_tensors("vae_custom", "custom_vae_img2img");
    let init_path = fixtures().join("reference/init_256.png");
    let init = image::open(&init_path).unwrap().to_rgb8();
    let models = PipelineModels { base: &base, refiner: None, vae: VaeChoice { network: &original.network, dtype: DType::F32, tiling: None, float32: None }, controlnets: Vec::new() };
    let extra = json!({"init_image": init_path.display().to_string(), "hyperparameters": {"strength": img2img["strength"]}});
    let (batch, record) = run_request(&models, request_of(&img2img, extra), Some(&init), &CPU);
    assert_close("custom VAE img2img image latents (encode)", record.image_latents.as_ref().unwrap(), tensor(&refs, "image_latents"), 2e-4);
    assert_image("custom VAE img2img", &batch.images, tensor(&refs, "image"), 2);
}

#[test]
fn a_vae_whose_latents_do_not_fit_the_unet_is_refused_before_loading() {
    let base = tiny_folder_model();
    let dir = tempfile::tempdir().unwrap();
    let vae_dir = dir.path().join("vae16");
    std::fs::create_dir(&vae_dir).unwrap();
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny-vae-fp16-fix/config.json")).unwrap()).unwrap();
    config["latent_channels"] = json!(16);
    std::fs::write(vae_dir.join("config.json"), config.to_string()).unwrap();
    // No weights at all: the config alone must be enough to refuse it.
    let error = load_vae(&ModelLocation::DiffusersFolder(vae_dir), base.vae.network().config(), base.unet.config(), &vae_options(DType::F32))
        .err()
        .expect("16 latent channels do not fit a 4-channel UNet")
        .to_string();
    assert!(error.contains("latent_channels 16") && error.contains("in_channels 4"), "{error}");
}

fn tiling_of(case: &Value) -> VaeTiling {
    VaeTiling { tile_size: case["tile"]["tile_sample_min_size"].as_u64().unwrap() as usize, overlap: case["tile"]["tile_overlap_factor"].as_f64().unwrap() }
}

#[test]
fn tiled_decode_and_encode_blend_as_diffusers() {
    let base = tiny_folder_model();
    let vae = base.vae.on_device().unwrap();
    let decode_case = case("vae_custom_cases.json", "tiled_decode");
    let refs = case_tensors("vae_custom", "tiled_decode");
    let tiling = tiling_of(&decode_case);
    tiling.check(8).expect("the reference's tile settings stitch");
    let tiled = vae.tiled_decode(tensor(&refs, "latent"), &tiling).unwrap();
    assert_close("tiled decode", &tiled, tensor(&refs, "tiled_decoded"), 5e-4);
    assert_close("untiled decode", &vae.decode(tensor(&refs, "latent")).unwrap(), tensor(&refs, "untiled_decoded"), 5e-4);
    let encode_refs = case_tensors("vae_custom", "tiled_encode");
    let init = image::open(fixtures().join("reference/init_256.png")).unwrap().to_rgb8();
    let pixels = sdxl::image::rgb_to_tensor(&init, &CPU).unwrap();
    let distribution = vae.tiled_encode(&pixels, &tiling).unwrap();
    assert_close("tiled encode mean", &distribution.mean, tensor(&encode_refs, "tiled_mean"), 5e-4);
    assert_close("tiled encode std", &distribution.std, tensor(&encode_refs, "tiled_std"), 5e-4);
}

#[test]
fn tiled_txt2img_matches_diffusers() {
    let base = tiny_folder_model();
    let case = case("vae_custom_cases.json", "tiled_txt2img");
    let refs = case_tensors("vae_custom", "tiled_txt2img");
    let tiling = tiling_of(&case);
    let models = PipelineModels { base: &base, refiner: None, vae: VaeChoice { network: &base.vae, dtype: DType::F32, tiling: Some(tiling), float32: None }, controlnets: Vec::new() };
    let request = request_of(&case, json!({"precision": {"vae_tiling": true, "vae_tile_size": tiling.tile_size, "vae_tile_overlap": tiling.overlap}}));
    let (batch, _) = run_request(&models, request, None, &CPU);
    assert_image("tiled txt2img", &batch.images, tensor(&refs, "image"), 2);
}

#[test]
fn an_overflowing_half_precision_decode_is_redone_in_float32_with_a_warning() {
    let base = tiny_folder_model();
    let folder = ModelLocation::DiffusersFolder(fixtures().join("tiny-sdxl"));
    let half = load_vae(&folder, base.vae.network().config(), base.unet.config(), &vae_options(DType::F16)).expect("float16 VAE loads");
    let full = Arc::new(load_vae(&folder, base.vae.network().config(), base.unet.config(), &vae_options(DType::F32)).expect("float32 VAE loads"));
    // Latents far outside what a UNet produces: the first convolution passes float16's 65504.
    let latents = (Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &CPU).unwrap() * 3.0e4).unwrap();
    let half_alone = half.network.network().decode(&latents.to_dtype(DType::F16).unwrap()).unwrap();
    let sum = half_alone.to_dtype(DType::F32).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(!sum.is_finite(), "the float16 decode overflows on its own (sum {sum})");
    let float32 = || -> sdxl::Result<Arc<VaeModel>> { Ok(full.clone()) };
    let choice = VaeChoice { network: &half.network, dtype: DType::F16, tiling: None, float32: Some(&float32) };
    let mut warnings = Vec::new();
    let decoded = decode_latents(&choice, &latents, &mut warnings).expect("the retry decodes");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("overflowed") && warnings[0].contains("float32"), "{}", warnings[0]);
    let expected = full.network.network().decode(&latents).unwrap();
    assert_close("float32 retry", &decoded[0], &expected, 0.0);
}

#[test]
fn refiner_and_tiling_options_are_validated_with_their_paths() {
    let limits = sdxl::api::Limits::default();
    for (extra, field) in [
        (json!({"models": {"base": "b", "refiner": "r"}, "refiner": {"denoising_start": 1.0}}), "refiner.denoising_start"),
        (json!({"models": {"base": "b", "refiner": "r"}, "refiner": {"denoising_start": 0.0}}), "refiner.denoising_start"),
        (json!({"models": {"base": "b", "refiner": "r"}, "refiner": {"mode": "cascade"}}), "refiner.mode"),
        (json!({"models": {"base": "b", "refiner": "r"}, "refiner": {"strength": 1.5}}), "refiner.strength"),
        (json!({"models": {"base": "b", "refiner": "r"}, "refiner": {"aesthetic_score": f64::MAX}}), "refiner.aesthetic_score"),
        (json!({"models": {"base": "b"}, "precision": {"vae_tiling": "sometimes"}}), "precision.vae_tiling"),
        (json!({"models": {"base": "b"}, "precision": {"vae_tile_size": 100}}), "precision.vae_tile_size"),
        (json!({"models": {"base": "b"}, "precision": {"vae_tile_overlap": 0.5}}), "precision.vae_tile_overlap"),
        (json!({"models": {"base": "b"}, "precision": {"vae_tile_size": 72, "vae_tile_overlap": 0.3}}), "precision.vae_tile_size"),
    ] {
        let mut request = json!({"prompt": "a cat"});
        request.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let parsed = sdxl::api::parse_request(request.clone()).expect("parses");
        match sdxl::api::plan_request(&parsed, "r".into(), &limits, || 0) {
            Err(sdxl::Error::Validation(errors)) => assert!(errors.iter().any(|e| e.field == field), "{request}: {errors:?}"),
            other => panic!("{request}: expected a validation error on {field}, got {:?}", other.map(|p| p.refiner)),
        }
    }
}

#[test]
fn the_engine_runs_a_refiner_with_a_custom_vae_and_reports_them() {
    let output = tempfile::tempdir().unwrap();
    // Folders in models_dir: `tiny-sdxl` there would be the single file first.
    let models = tempfile::tempdir().unwrap();
    std::fs::create_dir(models.path().join("vae")).unwrap();
    for (link, target) in [("base", "tiny-sdxl"), ("tiny-sdxl-refiner", "tiny-sdxl-refiner"), ("vae/tiny-vae-fp16-fix", "tiny-vae-fp16-fix")] {
        std::os::unix::fs::symlink(fixtures().join(target), models.path().join(link)).unwrap();
    }
    let config = json!({"device": "cpu", "output_dir": output.path(), "models_dir": models.path(), "limits": {"min_size": 64}});
    let engine = sdxl::Engine::from_json(&config.to_string()).unwrap();
    let case = case("refiner_cases.json", "ensemble_euler");
    let mut request = request_of(&case, json!({"models": {"refiner": "tiny-sdxl-refiner", "vae": "tiny-vae-fp16-fix"}, "refiner": {"denoising_start": 0.8}}));
    request["models"]["base"] = json!("base");
    let response: Value = serde_json::from_str(&engine.handle_json(&request.to_string())).unwrap();
    assert_eq!(response["success"], true, "{response}");
    let info = &response["data"]["processing_metrics"]["model_info"];
    assert_eq!(info["refiner_model"], "tiny-sdxl-refiner", "{info}");
    assert_eq!(info["refiner_mode"], "ensemble");
    assert_eq!(info["vae"], "tiny-vae-fp16-fix");
    assert_eq!(info["refiner_steps"], 2, "{info}");
    assert!(response["data"]["processing_metrics"]["stage_times"]["refine"].as_f64().unwrap() > 0.0);
    let status = engine.status();
    let roles: Vec<&str> = status["loaded_models"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert!(roles.contains(&"base") && roles.contains(&"refiner"), "{status}");
    assert_eq!(status["loaded_vaes"].as_array().unwrap().len(), 1, "{status}");

    // A base model named as the refiner is a load error that names the field.
    let mut wrong = request.clone();
    wrong["models"]["refiner"] = json!("base");
    let response: Value = serde_json::from_str(&engine.handle_json(&wrong.to_string())).unwrap();
    assert_eq!(response["success"], false);
    assert_eq!(response["error_code"], "MODEL_LOAD_ERROR", "{response}");
    let message = response["error"].as_str().unwrap();
    assert!(message.contains("models.refiner") && message.contains("not a refiner"), "{response}");
}
