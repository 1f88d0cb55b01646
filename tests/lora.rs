//! LoRA adapters against diffusers (`tools/reference/make_lora_references.py`): the same tiny
//! LoRA in kohya and PEFT layout, alone at weights 0.8 and −1.0 and together with a second one,
//! all through `Engine::handle_json` on the tiny diffusers folder; adapters swapped between
//! requests on one resident model with the weights restored bit for bit; and the refusals.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use sdxl::loader::safetensors_file::SafetensorsFile;
use sdxl::Engine;
use serde_json::{json, Value};

fn lora_fixture(name: &str) -> PathBuf {
    fixtures().join("lora").join(format!("{name}.safetensors"))
}

fn tiny_model_path() -> String {
    fixtures().join("tiny-sdxl").display().to_string()
}

/// The generation settings the references were made with (stored in the reference file).
fn reference_run() -> Value {
    let file = SafetensorsFile::open(&fixtures().join("reference/lora.safetensors")).expect("lora reference");
    serde_json::from_str(file.metadata("cases").expect("cases metadata")).unwrap()
}

fn new_engine(tag: &str) -> (Engine, tempfile::TempDir) {
    let output = tempfile::Builder::new().prefix(&format!("sdxl-lora-{tag}-")).tempdir().unwrap();
    let config = json!({"device": "cpu", "output_dir": output.path(), "models_dir": fixtures().join("lora"), "limits": {"min_size": 64}});
    (Engine::from_json(&config.to_string()).unwrap(), output)
}

fn request(loras: &[(&str, f64)]) -> String {
    let run = reference_run();
    let mut request = json!({
        "prompt": run["prompt"],
        "models": {"base": tiny_model_path()},
        "dimensions": {"width": run["width"], "height": run["height"]},
        "hyperparameters": {"num_inference_steps": run["num_inference_steps"], "guidance_scale": run["guidance_scale"], "seed": run["seed"]},
        "scheduler": run["scheduler"],
    });
    assert!(run["negative_prompt"].is_null(), "the references use negative_prompt=None (the API's default)");
    if !loras.is_empty() {
        let models: Vec<Value> = loras.iter().map(|(name, weight)| json!({"name": name, "weight": weight})).collect();
        request["lora"] = json!({"enabled": true, "models": models});
    }
    request.to_string()
}

fn respond(engine: &Engine, text: &str) -> Value {
    serde_json::from_str(&engine.handle_json(text)).unwrap()
}

/// Runs a request that must succeed; returns its image as (1, H, W, 3) u8 and the response.
fn generate(engine: &Engine, loras: &[(&str, f64)]) -> (Tensor, Value) {
    let response = respond(engine, &request(loras));
    assert_eq!(response["success"], true, "{loras:?}: {response}");
    let path = response["data"]["generated_images"][0]["path"].as_str().unwrap().to_string();
    let image = image::open(&path).unwrap().to_rgb8();
    (image_tensor(&[image]), response)
}

/// A request that must fail validation at `field`; returns that field's message.
fn refused_at(engine: &Engine, loras: &[(&str, f64)], field: &str) -> String {
    let response = respond(engine, &request(loras));
    assert_eq!(response["success"], false, "{loras:?} was accepted: {response}");
    assert_eq!(response["error_code"], "VALIDATION_ERROR", "{response}");
    let fields = response["field_errors"].as_array().cloned().unwrap_or_default();
    let hit = fields.iter().find(|f| f["field"] == field).unwrap_or_else(|| panic!("no error at {field}: {response}"));
    let message = hit["message"].as_str().unwrap().to_string();
    eprintln!("{field}: {message}");
    message
}

fn assert_image_close(what: &str, actual: &Tensor, expected: &Tensor) -> u8 {
    let (max_diff, differing) = max_pixel_diff(actual, expected);
    eprintln!("{what}: uint8 max diff {max_diff} ({differing} values differ)");
    assert!(max_diff <= 2, "{what}: uint8 max diff {max_diff} > 2 ({differing} values differ)");
    max_diff
}

fn checksum(engine: &Engine) -> u64 {
    engine.resident_model(&tiny_model_path()).expect("model resident").adapters.layers().checksum().unwrap()
}

#[test]
fn kohya_and_peft_lora_give_the_same_image_and_equal_diffusers() {
    let refs = reference("lora");
    let (engine, _out) = new_engine("formats");
    let (plain, _) = generate(&engine, &[]);
    assert_image_close("no LoRA", &plain, tensor(&refs, "none"));
    for (weight, key) in [(0.8, "x_0.8"), (-1.0, "x_-1.0")] {
        let (peft, response) = generate(&engine, &[("tiny_lora_peft", weight)]);
        let (kohya, _) = generate(&engine, &[(lora_fixture("tiny_lora_kohya").to_str().unwrap(), weight)]);
        let (same, differing) = max_pixel_diff(&kohya, &peft);
        assert_eq!(same, 0, "kohya and PEFT files differ at weight {weight}: max diff {same} ({differing} values)");
        assert_image_close(&format!("LoRA at {weight} (PEFT)"), &peft, tensor(&refs, key));
        assert_image_close(&format!("LoRA at {weight} (kohya)"), &kohya, tensor(&refs, key));
        let (effect, _) = max_pixel_diff(&peft, tensor(&refs, "none"));
        assert!(effect > 20, "the LoRA at {weight} barely changed the image (max diff {effect})");
        let loaded = &response["data"]["processing_metrics"]["model_info"]["loaded_loras"];
        assert_eq!(loaded[0]["name"], "tiny_lora_peft", "{loaded}");
        assert_eq!(loaded[0]["format"], "peft", "{loaded}");
        assert_eq!(loaded[0]["layers"], 15, "{loaded}");
        assert_eq!(loaded[0]["weight"], weight, "{loaded}");
    }
}

#[test]
fn two_loras_at_once_equal_diffusers_set_adapters() {
    let refs = reference("lora");
    let (engine, _out) = new_engine("two");
    // x from its kohya file (proven equal to the PEFT one above), y in PEFT layout.
    let (image, response) = generate(&engine, &[("tiny_lora_kohya", 0.7), ("tiny_lora_second", 0.5)]);
    assert_image_close("x 0.7 + y 0.5", &image, tensor(&refs, "xy_0.7_0.5"));
    let loaded = response["data"]["processing_metrics"]["model_info"]["loaded_loras"].as_array().unwrap().clone();
    assert_eq!(loaded.iter().map(|l| l["format"].as_str().unwrap()).collect::<Vec<_>>(), ["kohya", "peft"]);
}

#[test]
fn adapters_swap_between_requests_and_removal_restores_every_weight_bit_for_bit() {
    let (engine, _out) = new_engine("swap");
    let (fresh, _fresh_out) = new_engine("swap-fresh");
    let (never_loaded, _) = generate(&fresh, &[]);

    engine.load_model_json(&json!({"base": tiny_model_path()}).to_string()).expect("tiny model loads");
    let original = checksum(&engine);
    let (a, _) = generate(&engine, &[("tiny_lora_peft", 0.8)]);
    let with_x = checksum(&engine);
    assert_ne!(with_x, original, "applying the LoRA changed no weight");
    let model = engine.resident_model(&tiny_model_path()).unwrap();
    assert_eq!(model.adapters.patched_layers(), 15);

    let (b, response) = generate(&engine, &[]);
    assert_eq!(checksum(&engine), original, "weights after removing the LoRA differ from the loaded ones");
    assert_eq!(model.adapters.patched_layers(), 0);
    assert_eq!(response["data"]["processing_metrics"]["model_info"]["loaded_loras"], json!([]));
    let (diff, differing) = max_pixel_diff(&b, &never_loaded);
    assert_eq!(diff, 0, "request B (no LoRA) differs from an engine that never loaded one: max diff {diff} ({differing} values)");

    let (c, _) = generate(&engine, &[("tiny_lora_peft", 0.8)]);
    assert_eq!(checksum(&engine), with_x, "re-applying the LoRA gave different weights");
    let (diff, differing) = max_pixel_diff(&c, &a);
    assert_eq!(diff, 0, "request C (LoRA again) differs from request A: max diff {diff} ({differing} values)");

    // Adding a second adapter and taking the first away again touches only what changed,
    // and the weights depend only on the adapter set, not on the order of requests.
    generate(&engine, &[("tiny_lora_peft", 0.8), ("tiny_lora_second", 0.5)]);
    generate(&engine, &[("tiny_lora_peft", 0.8)]);
    assert_eq!(checksum(&engine), with_x);
}

/// Writes `tensors` (plus the fixture's tensors unless `replace_all`) as a new LoRA file.
fn write_lora(dir: &Path, name: &str, base: Option<&str>, extra: Vec<(&str, Tensor)>) -> String {
    let mut tensors: HashMap<String, Tensor> = match base {
        Some(base) => candle_core::safetensors::load(lora_fixture(base), &Device::Cpu).unwrap(),
        None => HashMap::new(),
    };
    for (key, tensor) in extra {
        tensors.insert(key.to_string(), tensor);
    }
    let path = dir.join(format!("{name}.safetensors"));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path.display().to_string()
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F16, &Device::Cpu).unwrap()
}

#[test]
fn unusable_loras_are_refused_with_their_field_path_and_leave_the_model_unchanged() {
    let (engine, out) = new_engine("errors");
    let dir = out.path();
    generate(&engine, &[]);
    let original = checksum(&engine);

    let unknown = write_lora(
        dir,
        "unknown_keys",
        Some("tiny_lora_peft"),
        vec![
            ("unet.down_blocks.7.attentions.0.proj_in.lora_A.weight", zeros(&[4, 32])),
            ("unet.down_blocks.7.attentions.0.proj_in.lora_B.weight", zeros(&[32, 4])),
            ("lora_unet_input_blocks_1_0_in_layers_2.hada_w1_a", zeros(&[4, 4])),
        ],
    );
    let message = refused_at(&engine, &[("tiny_lora_peft", 0.5), (&unknown, 1.0)], "lora.models[1].name");
    assert!(message.contains("3 of 33 keys match no layer"), "{message}");
    assert!(message.contains("unet.down_blocks.7.attentions.0.proj_in"), "{message}");

    let wrong_shape = write_lora(
        dir,
        "wrong_shape",
        Some("tiny_lora_kohya"),
        vec![("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight", zeros(&[4, 320]))],
    );
    let message = refused_at(&engine, &[(&wrong_shape, 1.0)], "lora.models[0].name");
    assert!(message.contains("shapes") && message.contains("[4, 320]") && message.contains("attn1.to_q"), "{message}");

    // Cut inside the header (the PEFT file's header holds the adapter config) and inside the data.
    let bytes = std::fs::read(lora_fixture("tiny_lora_peft")).unwrap();
    for (label, keep) in [("header", bytes.len() * 6 / 10), ("data", bytes.len() - 64)] {
        let truncated = dir.join(format!("truncated_{label}.safetensors"));
        std::fs::write(&truncated, &bytes[..keep]).unwrap();
        let message = refused_at(&engine, &[(truncated.to_str().unwrap(), 1.0)], "lora.models[0].name");
        assert!(message.contains("truncated_") && (message.contains("outside the file") || message.contains("not a valid safetensors")), "{label}: {message}");
    }

    let message = refused_at(&engine, &[("tiny_lora_peft", 2.5)], "lora.models[0].weight");
    assert!(message.contains("2.5") && message.contains("-2.0 and 2.0"), "{message}");

    // SD 1.5 LoRAs: a single text encoder (lora_te_*), and UNet layers SDXL does not have
    // (SD 1.5's first down block has attention) with 320-wide shapes.
    let sd15_te = write_lora(
        dir,
        "sd15_te",
        None,
        vec![
            ("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", zeros(&[4, 768])),
            ("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", zeros(&[768, 4])),
        ],
    );
    let message = refused_at(&engine, &[(&sd15_te, 1.0)], "lora.models[0].name");
    assert!(message.contains("Stable Diffusion 1.x/2.x"), "{message}");
    let sd15_unet = write_lora(
        dir,
        "sd15_unet",
        None,
        vec![
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight", zeros(&[4, 320])),
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight", zeros(&[320, 4])),
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha", Tensor::new(4f32, &Device::Cpu).unwrap()),
        ],
    );
    let message = refused_at(&engine, &[(&sd15_unet, 1.0)], "lora.models[0].name");
    assert!(message.contains("3 of 3 keys match no layer") && message.contains("another architecture"), "{message}");

    let message = refused_at(&engine, &[("no_such_lora", 1.0)], "lora.models[0].name");
    assert!(message.contains("no LoRA file 'no_such_lora'") && message.contains("loras"), "{message}");

    assert_eq!(checksum(&engine), original, "a refused LoRA changed the weights");
    let (after, _) = generate(&engine, &[]);
    let (first, _) = generate(&engine, &[]);
    assert_eq!(max_pixel_diff(&after, &first).0, 0);
}

#[test]
fn kohya_and_peft_names_land_on_the_same_layers_of_a_single_file_checkpoint() {
    // A single-file model registers its layers under diffusers names too (the loader maps
    // names on lookup), so LoRAs apply to it exactly as to a diffusers folder.
    let model = tiny_single_file_model();
    let targets = |name: &str| {
        let file = sdxl::loader::lora::read_lora_file(&lora_fixture(name)).unwrap();
        let adapter = model.adapters.resolve(&file, name.into()).unwrap();
        let mut layers: Vec<String> = adapter.deltas.iter().map(|d| format!("{}:{}", d.network.name(), d.layer.name())).collect();
        layers.sort();
        layers
    };
    let kohya = targets("tiny_lora_kohya");
    assert_eq!(kohya.len(), 15);
    assert_eq!(kohya, targets("tiny_lora_peft"));
    assert!(kohya.contains(&"unet:down_blocks.0.resnets.1.conv1".to_string()), "{kohya:?}");
    assert!(kohya.contains(&"text_encoder_2:text_model.encoder.layers.9.self_attn.out_proj".to_string()), "{kohya:?}");
}

#[test]
fn parsed_files_are_cached_least_recently_used_first_and_reread_when_changed() {
    let dir = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let path = dir.path().join(format!("{name}.safetensors"));
        std::fs::copy(lora_fixture("tiny_lora_second"), &path).unwrap();
        path
    };
    let (a, b, c) = (copy("a"), copy("b"), copy("c"));
    let cache = sdxl::lora::LoraCache::new(2);
    let first_a = cache.get_or_read(&a).unwrap();
    let first_b = cache.get_or_read(&b).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first_a, &cache.get_or_read(&a).unwrap()), "a cached file was read again");
    cache.get_or_read(&c).unwrap(); // evicts b, the least recently used
    assert_eq!(cache.len(), 2);
    assert!(std::sync::Arc::ptr_eq(&first_a, &cache.get_or_read(&a).unwrap()));
    assert!(!std::sync::Arc::ptr_eq(&first_b, &cache.get_or_read(&b).unwrap()), "b should have been evicted");
    // A file rewritten in place is a different adapter.
    std::fs::copy(lora_fixture("tiny_lora_peft"), &a).unwrap();
    let rewritten = cache.get_or_read(&a).unwrap();
    assert_ne!(rewritten.id, first_a.id);
    assert_eq!(rewritten.file.modules.len(), 15);
}

#[test]
fn loras_fused_into_offloaded_text_encoders_equal_diffusers() {
    let refs = reference("lora");
    let (engine, _out) = new_engine("offload");
    let offloaded = |loras: &[(&str, f64)]| {
        let mut request: Value = serde_json::from_str(&request(loras)).unwrap();
        request["precision"] = json!({"cpu_offload": true});
        let response = respond(&engine, &request.to_string());
        assert_eq!(response["success"], true, "{loras:?}: {response}");
        assert_eq!(response["data"]["processing_metrics"]["model_info"]["cpu_offload"], true, "{response}");
        image_tensor(&[image::open(response["data"]["generated_images"][0]["path"].as_str().unwrap()).unwrap().to_rgb8()])
    };
    assert_image_close("offloaded, no LoRA", &offloaded(&[]), tensor(&refs, "none"));
    let pristine = checksum(&engine);
    // Both text encoders are patched on their host copies; the device builds use the patches.
    assert_image_close("offloaded, x 0.7 + y 0.5", &offloaded(&[("tiny_lora_kohya", 0.7), ("tiny_lora_second", 0.5)]), tensor(&refs, "xy_0.7_0.5"));
    assert_image_close("offloaded, x 0.8", &offloaded(&[("tiny_lora_peft", 0.8)]), tensor(&refs, "x_0.8"));
    assert_ne!(checksum(&engine), pristine, "the adapters changed no weight");
    assert_image_close("offloaded, no LoRA after removal", &offloaded(&[]), tensor(&refs, "none"));
    assert_eq!(checksum(&engine), pristine, "removing the adapters did not restore every weight bit for bit");
    let status = respond(&engine, r#"{"message_type":"status_request"}"#);
    let cached = status["data"]["cached_loras"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect::<Vec<_>>();
    for name in ["tiny_lora_kohya", "tiny_lora_second", "tiny_lora_peft"] {
        assert!(cached.iter().any(|path| path.ends_with(&format!("{name}.safetensors"))), "status lists no cached {name}: {cached:?}");
    }
}
