//! The request/response contract of the seed, one test per rule: every validation
//! failure names its field (`field_errors[].field` of the response JSON), legacy flat
//! fields and envelopes are understood, defaults are the seed's, and images are written
//! atomically under `<request_id>_<index>_<seed>.<ext>`. Requests go through
//! `Engine::handle_json`, exactly the path of `sdxl_generate_json`.

use std::path::Path;

use sdxl::api::{normalize_legacy_fields, parse_request, plan_request, ImageFormat, Limits};
use sdxl::schedulers::SchedulerKind;
use sdxl::Engine;
use serde_json::{json, Value};

/// An engine with the seed's limits (SDXL sizes, 256 to 2048).
fn seed_limits_engine(output_dir: &Path) -> Engine {
    Engine::from_json(&json!({"device": "cpu", "output_dir": output_dir}).to_string()).expect("engine")
}

/// An engine that also accepts 64x64, so builtin:tiny runs in a fraction of a second.
fn tiny_engine(output_dir: &Path) -> Engine {
    Engine::from_json(&json!({"device": "cpu", "output_dir": output_dir, "limits": {"min_size": 64}}).to_string())
        .expect("engine")
}

fn respond(engine: &Engine, request: &Value) -> Value {
    let response = engine.handle_json(&request.to_string());
    serde_json::from_str(&response).unwrap_or_else(|e| panic!("response is not JSON ({e}): {response}"))
}

/// A valid request at the seed's limits; tests break one rule of it at a time.
fn valid_request() -> Value {
    json!({
        "prompt": "a lighthouse at dawn",
        "models": {"base": "builtin:tiny"},
        "dimensions": {"width": 256, "height": 256},
        "hyperparameters": {"num_inference_steps": 2, "seed": 1},
    })
}

/// `valid_request()` with `path` (dotted, `[i]` for array items) set to `value`.
fn with(path: &str, value: Value) -> Value {
    let mut request = valid_request();
    set_path(&mut request, path, value);
    request
}

fn set_path(target: &mut Value, path: &str, value: Value) {
    let mut slot = target;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last {
            slot[*part] = value;
            return;
        }
        if slot.get(*part).is_none() {
            slot[*part] = json!({});
        }
        slot = &mut slot[*part];
    }
}

/// Asserts the request fails validation and one of its field errors names `field`;
/// returns that error's message.
fn assert_rejected_at(request: &Value, field: &str) -> String {
    let dir = tempfile::tempdir().expect("temporary folder");
    let response = respond(&seed_limits_engine(dir.path()), request);
    assert_eq!(response["success"], false, "accepted: {request}");
    assert_eq!(response["error_code"], "VALIDATION_ERROR", "{response}");
    let errors = response["field_errors"].as_array().cloned().unwrap_or_default();
    let fields: Vec<&str> = errors.iter().filter_map(|e| e["field"].as_str()).collect();
    let error = errors
        .iter()
        .find(|e| e["field"] == field)
        .unwrap_or_else(|| panic!("no field error at {field} for {request}; fields were {fields:?}"));
    let message = error["message"].as_str().unwrap_or_default().to_string();
    assert!(!message.is_empty(), "empty message at {field}");
    message
}

#[test]
fn the_valid_request_used_below_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let response = respond(&seed_limits_engine(dir.path()), &valid_request());
    assert_eq!(response["success"], true, "{response}");
}

#[test]
fn empty_or_whitespace_prompt_is_rejected_at_prompt() {
    for prompt in [json!(""), json!("   \t\n"), Value::Null] {
        assert_rejected_at(&with("prompt", prompt), "prompt");
    }
    let mut absent = valid_request();
    absent.as_object_mut().unwrap().remove("prompt");
    assert_rejected_at(&absent, "prompt");
}

#[test]
fn missing_base_model_is_rejected_at_models_base() {
    for models in [json!({}), json!({"base": ""}), json!({"base": "  "}), json!({"base": null}), Value::Null] {
        assert_rejected_at(&with("models", models), "models.base");
    }
}

#[test]
fn width_outside_256_2048_or_not_a_multiple_of_8_is_rejected_at_dimensions_width() {
    for width in [250, 2056, 260] {
        let message = assert_rejected_at(&with("dimensions.width", json!(width)), "dimensions.width");
        assert!(message.contains("256") && message.contains("2048") && message.contains('8'), "{message}");
    }
}

#[test]
fn height_outside_256_2048_or_not_a_multiple_of_8_is_rejected_at_dimensions_height() {
    for height in [250, 2056, 260] {
        assert_rejected_at(&with("dimensions.height", json!(height)), "dimensions.height");
    }
}

#[test]
fn steps_outside_1_150_are_rejected_at_num_inference_steps() {
    for steps in [0, 151] {
        assert_rejected_at(&with("hyperparameters.num_inference_steps", json!(steps)), "hyperparameters.num_inference_steps");
    }
}

#[test]
fn guidance_outside_1_30_is_rejected_at_guidance_scale() {
    for guidance in [0.5, 31.0] {
        assert_rejected_at(&with("hyperparameters.guidance_scale", json!(guidance)), "hyperparameters.guidance_scale");
    }
}

#[test]
fn lora_weight_beyond_2_is_rejected_at_its_index() {
    let request = with("lora", json!({"enabled": true, "models": [{"name": "style", "weight": 2.5}]}));
    let message = assert_rejected_at(&request, "lora.models[0].weight");
    assert!(message.contains("2.5"), "{message}");
}

#[test]
fn empty_lora_name_is_rejected_at_its_index() {
    let request = with("lora", json!({"enabled": true, "models": [{"name": "ok", "weight": 1.0}, {"name": "", "weight": 1.0}]}));
    assert_rejected_at(&request, "lora.models[1].name");
    let request = with("lora", json!({"enabled": true, "models": [{"name": " ", "weight": 0.5}]}));
    assert_rejected_at(&request, "lora.models[0].name");
}

#[test]
fn batch_size_outside_1_9_is_rejected_at_batch_size() {
    for size in [0, 10] {
        assert_rejected_at(&with("batch", json!({"size": size})), "batch.size");
    }
}

#[test]
fn quality_outside_1_100_is_rejected_at_output_quality() {
    for quality in [0, 101] {
        assert_rejected_at(&with("output", json!({"quality": quality})), "output.quality");
    }
}

#[test]
fn unknown_scheduler_is_rejected_and_the_message_lists_valid_names() {
    let message = assert_rejected_at(&with("scheduler", json!("TurboSampler")), "scheduler");
    for name in ["DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DDIMScheduler", "UniPCMultistepScheduler"] {
        assert!(message.contains(name), "the message does not list {name}: {message}");
    }
}

#[test]
fn scheduler_class_enum_and_alias_names_are_all_accepted() {
    let limits = Limits::default();
    for (name, kind) in [
        ("EulerDiscreteScheduler", SchedulerKind::EulerDiscrete),
        ("EulerAncestral", SchedulerKind::EulerAncestralDiscrete),
        ("dpm++2m karras", SchedulerKind::DpmSolverMultistep),
        ("euler_a", SchedulerKind::EulerAncestralDiscrete),
        ("ddimscheduler", SchedulerKind::Ddim),
    ] {
        let request = parse_request(with("scheduler", json!(name))).expect("parses");
        let plan = plan_request(&request, "r".into(), &limits, || 0).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(plan.scheduler, kind, "{name}");
    }
}

#[test]
fn unknown_output_format_is_rejected_at_output_format() {
    let message = assert_rejected_at(&with("output", json!({"format": "gif"})), "output.format");
    assert!(message.contains("gif"), "{message}");
}

#[test]
fn unknown_top_level_field_is_rejected_with_its_name() {
    let message = assert_rejected_at(&with("colour", json!("red")), "colour");
    assert!(message.contains("colour"), "{message}");
}

#[test]
fn unknown_nested_field_is_rejected_with_its_path() {
    for (path, field) in [
        ("dimensions.depth", "dimensions.depth"),
        ("hyperparameters.cfg", "hyperparameters.cfg"),
        ("output.compression", "output.compression"),
        ("metadata.owner", "metadata.owner"),
    ] {
        let message = assert_rejected_at(&with(path, json!(1)), field);
        let name = field.rsplit('.').next().unwrap();
        assert!(message.contains(name), "{message}");
    }
    let request = with("lora", json!({"enabled": false, "models": [{"name": "x", "scale": 1.0}]}));
    assert_rejected_at(&request, "lora.models[0].scale");
}

#[test]
fn wrong_types_are_rejected_with_their_path() {
    assert_rejected_at(&with("dimensions.width", json!("wide")), "dimensions.width");
    assert_rejected_at(&with("hyperparameters.seed", json!(1.5)), "hyperparameters.seed");
    assert_rejected_at(&with("prompt", json!(["a", "b"])), "prompt");
}

#[test]
fn save_path_escaping_the_output_dir_is_rejected_at_output_save_path() {
    for save_path in ["../x", "/etc", "a/../../b", "C:\\temp", "\\\\server\\share"] {
        assert_rejected_at(&with("output", json!({"save_path": save_path})), "output.save_path");
    }
}

#[test]
fn legacy_flat_fields_are_moved_into_their_nested_homes() {
    let legacy = json!({
        "prompt": "p", "model_name": "builtin:tiny", "width": 512, "height": 768,
        "guidance_scale": 5.0, "num_inference_steps": 10, "seed": 7, "strength": 0.5,
    });
    let request = parse_request(normalize_legacy_fields(legacy)).expect("normalised request parses");
    let plan = plan_request(&request, "legacy".into(), &Limits::default(), || unreachable!("seed given")).expect("valid");
    assert_eq!(plan.base_model, "builtin:tiny");
    assert_eq!((plan.width, plan.height), (512, 768));
    assert_eq!(plan.guidance_scale, 5.0);
    assert_eq!(plan.steps, 10);
    assert_eq!(plan.seed, 7);
    assert_eq!(plan.strength, 0.5);

    // And end to end: a bare legacy request through the engine.
    let dir = tempfile::tempdir().unwrap();
    let response = respond(
        &tiny_engine(dir.path()),
        &json!({"prompt": "p", "model_name": "builtin:tiny", "width": 64, "height": 72, "num_inference_steps": 2, "seed": 7, "request_id": "legacy-1"}),
    );
    assert_eq!(response["success"], true, "{response}");
    assert_eq!(response["request_id"], "legacy-1");
    let image = &response["data"]["generated_images"][0];
    assert_eq!((image["width"].as_u64(), image["height"].as_u64(), image["seed"].as_u64()), (Some(64), Some(72), Some(7)), "{image}");
}

/// What the seed's C# EnhancedRequestTransformer sends, sized for builtin:tiny.
fn seed_envelope(request_id: &str) -> Value {
    json!({
        "message_type": "inference_request",
        "request_id": request_id,
        "data": {
            "worker_type": "sdxl_worker",
            "prompt": "a cat",
            "negative_prompt": "",
            "model_name": "builtin:tiny",
            "hyperparameters": {"num_inference_steps": 2, "guidance_scale": 7.5, "seed": 42, "strength": 0.8},
            "dimensions": {"width": 64, "height": 64},
            "scheduler": "DPMSolverMultistepScheduler",
            "models": {"base": "builtin:tiny", "refiner": null, "vae": null},
            "lora": {"enabled": false, "models": []},
            "controlnet": {"enabled": false},
            "output": {"format": "png", "quality": 95, "save_path": "outputs/", "upscale": {"enabled": false}},
            "batch": {"size": 1, "parallel": false},
            "precision": {"dtype": "float16", "vae_dtype": "float32", "cpu_offload": false, "attention_slicing": true, "vae_slicing": true},
            "metadata": {"request_id": request_id, "priority": "normal", "timeout": 300, "tags": ["enhanced_sdxl", "c_sharp_service"]}
        }
    })
}

#[test]
fn the_seeds_envelope_is_served_and_its_request_id_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let response = respond(&tiny_engine(dir.path()), &seed_envelope("seed-req-1"));
    assert_eq!(response["success"], true, "{response}");
    assert_eq!(response["request_id"], "seed-req-1");
    for key in ["data", "error", "error_code", "warnings", "execution_time", "timestamp", "field_errors"] {
        assert!(response.get(key).is_some(), "response lacks {key}: {response}");
    }
    let path = response["data"]["generated_images"][0]["path"].as_str().expect("path");
    let name = Path::new(path).file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(name, "seed-req-1_0_42.png");
    assert!(Path::new(path).starts_with(dir.path().join("outputs")), "{path}");
}

#[test]
fn metadata_request_id_is_used_when_the_envelope_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut envelope = seed_envelope("from-metadata");
    envelope.as_object_mut().unwrap().remove("request_id");
    let response = respond(&tiny_engine(dir.path()), &envelope);
    assert_eq!(response["request_id"], "from-metadata", "{response}");
}

#[test]
fn status_and_model_load_requests_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path());
    let status = respond(&engine, &json!({"message_type": "status_request", "request_id": "s-1"}));
    assert_eq!(status["success"], true, "{status}");
    assert_eq!(status["request_id"], "s-1");
    assert_eq!(status["data"]["orchestrator_status"], "running");
    assert_eq!(status["data"]["version"], env!("CARGO_PKG_VERSION"));

    let load = respond(&engine, &json!({"message_type": "model_load_request", "request_id": "m-1", "data": {"base": "builtin:tiny"}}));
    assert_eq!(load["success"], true, "{load}");
    assert_eq!(load["request_id"], "m-1");
    assert_eq!(load["data"]["model_loaded"], "builtin:tiny");

    let missing = respond(&engine, &json!({"message_type": "model_load_request", "data": {"base": "no-such-model"}}));
    assert_eq!(missing["error_code"], "MODEL_NOT_FOUND", "{missing}");
    let status = respond(&engine, &json!({"message_type": "status_request"}));
    let loaded: Vec<&str> = status["data"]["loaded_models"].as_array().unwrap().iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(loaded, ["builtin:tiny"], "{status}");
}

#[test]
fn defaults_are_the_seeds() {
    let request = parse_request(json!({"prompt": "p", "models": {"base": "m"}})).expect("parses");
    let plan = plan_request(&request, "d".into(), &Limits::default(), || 99).expect("valid");
    assert_eq!(plan.steps, 25);
    assert_eq!(plan.guidance_scale, 7.5);
    assert_eq!((plan.width, plan.height), (1024, 1024));
    assert_eq!(plan.scheduler, SchedulerKind::DpmSolverMultistep);
    assert_eq!(plan.scheduler.class_name(), "DPMSolverMultistepScheduler");
    assert_eq!(plan.format, ImageFormat::Png);
    assert_eq!(plan.quality, 95);
    assert_eq!(plan.batch_size, 1);
    assert_eq!(plan.strength, 0.8);
    assert_eq!(plan.save_dir, Path::new("outputs"));
    assert_eq!(plan.seed, 99, "no seed means a random one");
    assert_eq!(plan.negative_prompt, None);
}

#[test]
fn seed_minus_one_draws_a_random_seed_and_reports_it() {
    let request = parse_request(with("hyperparameters.seed", json!(-1))).expect("parses");
    let plan = plan_request(&request, "r".into(), &Limits::default(), || 123_456).expect("valid");
    assert_eq!(plan.seed, 123_456);
    assert_rejected_at(&with("hyperparameters.seed", json!(-2)), "hyperparameters.seed");

    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path());
    let mut seeds = Vec::new();
    for id in ["random-a", "random-b"] {
        let mut request = with("dimensions", json!({"width": 64, "height": 64}));
        request["hyperparameters"]["seed"] = json!(-1);
        request["request_id"] = json!(id);
        let response = respond(&engine, &request);
        assert_eq!(response["success"], true, "{response}");
        let image = &response["data"]["generated_images"][0];
        let seed = image["seed"].as_u64().expect("the seed actually used is reported");
        let name = Path::new(image["path"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("{id}_0_{seed}.png"), "the file name carries the seed used");
        seeds.push(seed);
    }
    assert_ne!(seeds[0], seeds[1], "two random seeds in a row were equal");
}

#[test]
fn images_are_written_atomically_as_request_id_index_seed_for_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path());
    for (format, extension, magic) in [
        ("png", "png", &b"\x89PNG\r\n\x1a\n"[..]),
        ("jpeg", "jpg", &b"\xff\xd8\xff"[..]),
        ("webp", "webp", &b"RIFF"[..]),
    ] {
        let mut request = with("dimensions", json!({"width": 64, "height": 64}));
        request["hyperparameters"]["seed"] = json!(10);
        request["batch"] = json!({"size": 2});
        request["output"] = json!({"format": format, "quality": 80, "save_path": format!("by-format/{format}")});
        request["request_id"] = json!(format!("fmt-{format}"));
        let response = respond(&engine, &request);
        assert_eq!(response["success"], true, "{format}: {response}");
        let images = response["data"]["generated_images"].as_array().expect("images");
        assert_eq!(images.len(), 2, "{format}: {response}");
        let folder = dir.path().join("by-format").join(format);
        for (index, image) in images.iter().enumerate() {
            let seed = 10 + index as u64;
            assert_eq!(image["seed"], seed, "image {index} uses seed + index");
            assert_eq!(image["format"], format);
            let path = Path::new(image["path"].as_str().unwrap());
            assert_eq!(path, folder.join(format!("fmt-{format}_{index}_{seed}.{extension}")));
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(bytes.starts_with(magic), "{} does not start with the {format} signature", path.display());
        }
        // Atomic writes leave no temporary files behind.
        let mut names: Vec<String> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, [format!("fmt-{format}_0_10.{extension}"), format!("fmt-{format}_1_11.{extension}")], "{format}");
    }
}

#[test]
fn every_failure_has_the_seeds_response_shape() {
    let dir = tempfile::tempdir().unwrap();
    let response = respond(&seed_limits_engine(dir.path()), &with("dimensions.width", json!(250)));
    assert_eq!(response["success"], false);
    assert!(response["data"].is_null());
    assert!(response["error"].as_str().is_some_and(|e| e.contains("dimensions.width")), "{response}");
    assert_eq!(response["error_number"], -3);
    assert!(response["request_id"].as_str().is_some_and(|id| !id.is_empty()), "a generated request id: {response}");
}

#[test]
fn scheduler_aliases_imply_their_options_unless_the_request_sets_them() {
    let plan_for = |request: Value| plan_request(&parse_request(request).unwrap(), "r".into(), &Limits::default(), || 0).unwrap();
    let karras = plan_for(with("scheduler", json!("dpm++2m karras")));
    assert_eq!(karras.scheduler, SchedulerKind::DpmSolverMultistep);
    assert_eq!(karras.scheduler_overrides.use_karras_sigmas, Some(true));
    let mut explicit = with("scheduler", json!("dpm++2m karras"));
    explicit["scheduler_options"] = json!({"use_karras_sigmas": false});
    assert_eq!(plan_for(explicit).scheduler_overrides.use_karras_sigmas, Some(false));
}

#[test]
fn an_empty_negative_prompt_is_text_and_an_absent_or_null_one_is_none() {
    // diffusers encodes negative_prompt="" as text; only None gets zero embeddings
    // (force_zeros_for_empty_prompt). The seed's C# client sends "" when the user gave none.
    let plan_for = |request: Value| plan_request(&parse_request(request).expect("parses"), "n".into(), &Limits::default(), || 1).expect("valid");
    assert_eq!(plan_for(json!({"prompt": "p", "models": {"base": "m"}, "negative_prompt": ""})).negative_prompt.as_deref(), Some(""));
    assert_eq!(plan_for(json!({"prompt": "p", "models": {"base": "m"}, "negative_prompt": null})).negative_prompt, None);
    assert_eq!(plan_for(json!({"prompt": "p", "models": {"base": "m"}})).negative_prompt, None);
}

#[test]
fn emphasis_weights_must_be_finite_and_bounded() {
    let plan = |prompt: &str, negative: Option<&str>| {
        let mut request = json!({"prompt": prompt, "models": {"base": "m"}});
        if let Some(negative) = negative {
            request["negative_prompt"] = json!(negative);
        }
        plan_request(&parse_request(request).expect("parses"), "w".into(), &Limits::default(), || 1)
    };
    for (prompt, negative, field) in [
        ("a (cat:inf)", None, "prompt"),
        ("a (cat:nan)", None, "prompt"),
        ("a (cat:1e30)", None, "prompt"),
        ("a cat", Some("(blurry:-inf)"), "negative_prompt"),
    ] {
        let err = plan(prompt, negative).expect_err(prompt).to_string();
        assert!(err.contains(field) && err.contains("emphasis weight"), "{prompt} / {negative:?}: {err}");
    }
    let deep = format!("{}cat{}", "(".repeat(1000), ")".repeat(1000));
    assert!(plan(&deep, None).is_err(), "1.1^1000 overflows");
    assert!(plan("a (cat:1.5) [dog] (bird:-0.5)", Some("(blurry:2)")).is_ok());
}

#[test]
fn controlnet_and_upscale_are_typed_and_reject_unknown_fields() {
    let parse = |extra: Value| {
        let mut request = json!({"prompt": "p", "models": {"base": "m"}});
        for (key, value) in extra.as_object().unwrap() {
            request[key] = value.clone();
        }
        parse_request(request)
    };
    for (what, extra, path) in [
        ("string for a bool", json!({"controlnet": {"enabled": "true"}}), "controlnet.enabled"),
        ("misspelt key", json!({"controlnet": {"enabled": true, "conditioning_sclae": 0.5}}), "conditioning_sclae"),
        ("misspelt key in an array entry", json!({"controlnet": [{"enabled": false}, {"contol_image": "x.png"}]}), "contol_image"),
        ("preprocessor threshold as text", json!({"controlnet": {"preprocessor": {"low_threshold": "low"}}}), "low_threshold"),
        ("upscale string for a bool", json!({"output": {"upscale": {"enabled": "yes"}}}), "output.upscale.enabled"),
        ("upscale misspelt key", json!({"output": {"upscale": {"enabled": false, "factr": 2}}}), "factr"),
    ] {
        let error = parse(extra).expect_err(what).to_string();
        assert!(error.contains(path), "{what}: {error}");
    }
    // The seed's disabled objects and a full, disabled ControlNet list parse.
    parse(json!({"controlnet": {"enabled": false}, "output": {"upscale": {"enabled": false}}})).expect("seed's disabled objects");
    parse(json!({"controlnet": [{"enabled": false, "model": "cn", "type": "canny", "conditioning_scale": 0.7, "control_image": "e.png",
        "guidance_start": 0.0, "guidance_end": 1.0, "preprocessor": {"enabled": true, "resolution": 512, "low_threshold": 100, "high_threshold": 200}}]}))
    .expect("issue 13's full object");
}
