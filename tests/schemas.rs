//! schemas/enhanced_request_schema.json and schemas/enhanced_response_schema.json say
//! exactly what the engine accepts and returns: every example in schemas/examples/
//! validates, the request schema's verdict equals `parse_request` + `plan_request`
//! (with `Limits::default()`) over a corpus of good and bad requests, and responses the
//! engine really produces (builtin:tiny) validate against the response schema.

use std::path::{Path, PathBuf};

use jsonschema::Validator;
use sdxl::api::{normalize_legacy_fields, parse_message, parse_request, plan_request, Limits, Message, Response};
use sdxl::Engine;
use serde_json::{json, Value};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn schema(name: &str) -> Value {
    read_json(&repo_path(&format!("schemas/{name}")))
}

fn validator(schema: &Value) -> Validator {
    jsonschema::draft202012::new(schema).unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

fn request_validator() -> Validator {
    validator(&schema("enhanced_request_schema.json"))
}

fn response_validator() -> Validator {
    validator(&schema("enhanced_response_schema.json"))
}

/// Every schema error for `instance`, one per line, with its JSON pointer.
fn schema_errors(validator: &Validator, instance: &Value) -> String {
    validator.iter_errors(instance).map(|e| format!("  at '{}': {e}", e.instance_path)).collect::<Vec<_>>().join("\n")
}

fn assert_valid(validator: &Validator, instance: &Value, what: &str) {
    let errors = schema_errors(validator, instance);
    assert!(errors.is_empty(), "{what} does not match the schema:\n{errors}\n{instance:#}");
}

/// What the engine says about a request `data` object: Ok or the field errors.
fn engine_verdict(data: &Value) -> Result<(), String> {
    let request = parse_request(data.clone()).map_err(|e| e.to_string())?;
    plan_request(&request, "corpus".into(), &Limits::default(), || 1).map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn both_schemas_are_valid_draft_2020_12() {
    for name in ["enhanced_request_schema.json", "enhanced_response_schema.json"] {
        let schema = schema(name);
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema", "{name}");
        if let Err(error) = jsonschema::meta::validate(&schema) {
            panic!("{name} is not a valid JSON Schema: {error}");
        }
        validator(&schema);
    }
}

fn examples(prefix: &str) -> Vec<(String, Value)> {
    let mut found: Vec<(String, Value)> = std::fs::read_dir(repo_path("schemas/examples"))
        .expect("schemas/examples")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".json")))
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), read_json(&path)))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!found.is_empty(), "no schemas/examples/{prefix}*.json");
    found
}

#[test]
fn every_example_request_validates_and_the_engine_accepts_it() {
    let validator = request_validator();
    let mut inference = 0;
    for (name, example) in examples("request_") {
        let message = parse_message(&example.to_string()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let Message::Inference { data, .. } = message else {
            continue; // status and model-load envelopes carry no request data
        };
        // Exactly what the engine does before parsing: legacy flat fields move to their homes.
        let data = normalize_legacy_fields(data);
        assert_valid(&validator, &data, &name);
        if let Err(error) = engine_verdict(&data) {
            panic!("{name} validates against the schema but the engine refuses it: {error}");
        }
        inference += 1;
    }
    assert!(inference >= 3, "only {inference} inference examples");
}

/// The good examples also run through the real engine (`handle_json`, the path of
/// `sdxl_generate_json`): every field as written, except what needs a real checkpoint and a
/// GPU's time: the model (the tiny diffusers folder, a real loader path), the size (64²),
/// the step count (2) and the init image (a real PNG written here).
#[test]
fn every_good_example_succeeds_through_the_real_engine() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let checkpoint = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sdxl");
    let init = dir.path().join("init.png");
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])).save(&init).expect("init image");
    let config = json!({"device": "cpu", "output_dir": dir.path(), "limits": {"min_size": 64}});
    let engine = Engine::from_json(&config.to_string()).expect("engine");
    let mut ran = 0;
    for (name, mut example) in examples("request_") {
        let data = if example.get("data").is_some() { &mut example["data"] } else if example.get("message_type").is_some() { continue } else { &mut example };
        if data.get("prompt").is_none() {
            continue; // status and model-load envelopes
        }
        for key in ["model_name"] {
            if data.get(key).is_some() {
                data[key] = json!(checkpoint);
            }
        }
        if data.get("model_name").is_none() || data.get("models").is_some() {
            data["models"]["base"] = json!(checkpoint);
        }
        data["dimensions"] = json!({"width": 64, "height": 64});
        for key in ["original_size", "target_size"] {
            if data.get(key).is_some() {
                data[key] = json!([64, 64]);
            }
        }
        if data.get("hyperparameters").is_some() {
            data["hyperparameters"]["num_inference_steps"] = json!(2);
            if data.get("init_image").is_some() {
                data["hyperparameters"]["num_inference_steps"] = json!(4);
            }
        }
        for key in ["width", "height"] {
            if data.get(key).is_some() {
                data[key] = json!(64);
            }
        }
        if data.get("num_inference_steps").is_some() {
            data["num_inference_steps"] = json!(2);
        }
        if data.get("init_image").is_some() {
            data["init_image"] = json!(init);
        }
        let response = respond(&engine, &example);
        assert_eq!(response["success"], true, "{name}: {response}");
        ran += 1;
    }
    assert!(ran >= 3, "only {ran} examples ran");
}

#[test]
fn every_example_response_validates_and_deserialises() {
    let validator = response_validator();
    for (name, example) in examples("response_") {
        assert_valid(&validator, &example, &name);
        let parsed: Response<Value> = serde_json::from_value(example.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(serde_json::to_value(&parsed).unwrap(), example, "{name} does not round-trip through api::Response");
    }
}

/// Requests the engine accepts with `Limits::default()`.
fn good_requests() -> Vec<(&'static str, Value)> {
    let base = |extra: Value| {
        let mut request = json!({"prompt": "a cat", "models": {"base": "sd_xl_base_1.0"}});
        for (key, value) in extra.as_object().cloned().unwrap_or_default() {
            request[key] = value;
        }
        request
    };
    vec![
        ("minimal", base(json!({}))),
        ("legacy model_name only", json!({"prompt": "a cat", "model_name": "m"})),
        ("models.base null falls back to model_name", json!({"prompt": "a cat", "model_name": "m", "models": {"base": null}})),
        ("models.base wins over model_name", json!({"prompt": "a cat", "model_name": "", "models": {"base": "m"}})),
        (
            "every optional object null",
            base(json!({"worker_type": null, "negative_prompt": null, "hyperparameters": null, "dimensions": null, "scheduler": null,
                "scheduler_options": null, "lora": null, "controlnet": null, "output": null, "batch": null, "precision": null,
                "metadata": null, "init_image": null, "original_size": null, "crops_coords_top_left": null, "target_size": null,
                "rng": null, "prompt_truncation": null})),
        ),
        ("size bounds", base(json!({"dimensions": {"width": 256, "height": 2048}}))),
        ("SDXL landscape bucket", base(json!({"dimensions": {"width": 1216, "height": 832}}))),
        ("step and guidance bounds", base(json!({"hyperparameters": {"num_inference_steps": 1, "guidance_scale": 30}}))),
        ("other bounds", base(json!({"hyperparameters": {"num_inference_steps": 150, "guidance_scale": 1.0, "seed": 0, "strength": 1.0}}))),
        ("random seed", base(json!({"hyperparameters": {"seed": -1}}))),
        ("seed beyond u32", base(json!({"hyperparameters": {"seed": 4_294_967_296_u64}}))),
        ("disabled LoRA list", base(json!({"lora": {"enabled": false, "models": [{"name": "style", "weight": 2.0}]}}))),
        ("enabled but empty LoRA list", base(json!({"lora": {"enabled": true, "models": []}}))),
        ("LoRA adapters", base(json!({"lora": {"enabled": true, "models": [{"name": "style", "weight": 0.8}, {"name": "detail", "weight": -2.0}]}}))),
        ("LoRA enabled by default when listed", base(json!({"lora": {"models": [{"name": "style"}]}}))),
        ("output jpg any case", base(json!({"output": {"format": "JPG", "quality": 1, "save_path": "a/b/./c"}}))),
        ("output webp", base(json!({"output": {"format": "WebP", "quality": 100, "save_path": ""}}))),
        ("dots inside a folder name", base(json!({"output": {"save_path": "renders/v1..2/...x"}}))),
        (
            "scheduler options",
            base(json!({"scheduler": "DPMSolverMultistepScheduler", "scheduler_options": {"use_karras_sigmas": true,
                "timestep_spacing": "trailing", "prediction_type": "v_prediction", "algorithm_type": "sde-dpmsolver++",
                "solver_order": 3}})),
        ),
        ("scheduler alias", base(json!({"scheduler": "euler_a"}))),
        ("precision", base(json!({"precision": {"dtype": "bfloat16", "vae_dtype": "float32", "cpu_offload": true}}))),
        ("metadata", base(json!({"metadata": {"request_id": "r", "priority": "high", "timeout": 0.5, "tags": ["a", "b"]}}))),
        ("disabled ControlNet in the seed's shape", base(json!({"controlnet": {"enabled": false, "type": "canny", "conditioning_scale": 1.0}}))),
        ("disabled upscale", base(json!({"output": {"upscale": {"enabled": false, "factor": 2}}}))),
        ("img2img", base(json!({"init_image": "in.png", "hyperparameters": {"strength": 0.3, "num_inference_steps": 10}}))),
        ("micro-conditioning", base(json!({"original_size": [4096, 4096], "crops_coords_top_left": [0, 128], "target_size": [1024, 1024]}))),
        ("rng and truncation", base(json!({"rng": "torch_cpu", "prompt_truncation": "diffusers"}))),
        ("blank refiner and blank VAE", base(json!({"models": {"base": "b", "refiner": "", "vae": " "}}))),
        ("unknown worker type is only a warning", base(json!({"worker_type": "gpu_worker_7"}))),
    ]
}

/// Requests the engine refuses with `Limits::default()`.
fn bad_requests() -> Vec<(&'static str, Value)> {
    let base = |extra: Value| {
        let mut request = json!({"prompt": "a cat", "models": {"base": "sd_xl_base_1.0"}});
        for (key, value) in extra.as_object().cloned().unwrap_or_default() {
            request[key] = value;
        }
        request
    };
    vec![
        ("no prompt", json!({"models": {"base": "m"}})),
        ("whitespace prompt", base(json!({"prompt": " \t "}))),
        ("prompt not a string", base(json!({"prompt": 5}))),
        ("no model", json!({"prompt": "a cat"})),
        ("blank base model", json!({"prompt": "a cat", "models": {"base": ""}})),
        ("blank base beats model_name", json!({"prompt": "a cat", "model_name": "m", "models": {"base": " "}})),
        ("width 250", base(json!({"dimensions": {"width": 250}}))),
        ("width 2056", base(json!({"dimensions": {"width": 2056}}))),
        ("width 260", base(json!({"dimensions": {"width": 260}}))),
        ("height 0", base(json!({"dimensions": {"height": 0}}))),
        ("steps 0", base(json!({"hyperparameters": {"num_inference_steps": 0}}))),
        ("steps 151", base(json!({"hyperparameters": {"num_inference_steps": 151}}))),
        ("steps as text", base(json!({"hyperparameters": {"num_inference_steps": "ten"}}))),
        ("guidance 0.5", base(json!({"hyperparameters": {"guidance_scale": 0.5}}))),
        ("guidance 31", base(json!({"hyperparameters": {"guidance_scale": 31}}))),
        ("strength 0", base(json!({"hyperparameters": {"strength": 0}}))),
        ("strength 1.5", base(json!({"hyperparameters": {"strength": 1.5}}))),
        ("seed -2", base(json!({"hyperparameters": {"seed": -2}}))),
        ("batch 0", base(json!({"batch": {"size": 0}}))),
        ("batch 10", base(json!({"batch": {"size": 10}}))),
        ("quality 0", base(json!({"output": {"quality": 0}}))),
        ("quality 101", base(json!({"output": {"quality": 101}}))),
        ("format gif", base(json!({"output": {"format": "gif"}}))),
        ("save_path ../x", base(json!({"output": {"save_path": "../x"}}))),
        ("save_path /etc", base(json!({"output": {"save_path": "/etc"}}))),
        ("save_path a/../b", base(json!({"output": {"save_path": "a/../b"}}))),
        ("save_path a/..", base(json!({"output": {"save_path": "a/.."}}))),
        ("save_path with a drive", base(json!({"output": {"save_path": "C:\\temp"}}))),
        ("save_path UNC", base(json!({"output": {"save_path": "\\\\server\\share"}}))),
        ("unknown top-level field", base(json!({"colour": "red"}))),
        ("unknown nested field", base(json!({"dimensions": {"width": 1024, "depth": 3}}))),
        ("unknown LoRA field", base(json!({"lora": {"enabled": false, "models": [{"name": "x", "scale": 1}]}}))),
        ("legacy flat width is not part of data", base(json!({"width": 1024}))),
        ("LoRA weight 2.5 even when disabled", base(json!({"lora": {"enabled": false, "models": [{"name": "s", "weight": 2.5}]}}))),
        ("LoRA without a name", base(json!({"lora": {"enabled": false, "models": [{"weight": 1.0}]}}))),
        ("dtype alias fp16", base(json!({"precision": {"dtype": "fp16"}}))),
        ("timeout 0", base(json!({"metadata": {"timeout": 0}}))),
        ("priority urgent", base(json!({"metadata": {"priority": "urgent"}}))),
        ("tags not strings", base(json!({"metadata": {"tags": [1]}}))),
        ("solver_order 4", base(json!({"scheduler_options": {"solver_order": 4}}))),
        ("timestep_spacing foo", base(json!({"scheduler_options": {"timestep_spacing": "foo"}}))),
        ("eta 2", base(json!({"scheduler_options": {"eta": 2}}))),
        ("rng cuda", base(json!({"rng": "cuda"}))),
        ("prompt_truncation none", base(json!({"prompt_truncation": "none"}))),
        ("zero original_size", base(json!({"original_size": [0, 1024]}))),
        ("three-element target_size", base(json!({"target_size": [1, 2, 3]}))),
        ("negative crop", base(json!({"crops_coords_top_left": [-1, 0]}))),
        ("blank init_image", base(json!({"init_image": "  "}))),
        ("data not an object", json!(["a cat"])),
    ]
}

#[test]
fn request_schema_verdict_equals_the_engines_over_the_corpus() {
    let validator = request_validator();
    let good = good_requests();
    let bad = bad_requests();
    assert!(good.len() + bad.len() >= 25, "the corpus is too small");
    let mut disagreements = Vec::new();
    for (label, request, expected) in good.iter().map(|(l, r)| (l, r, true)).chain(bad.iter().map(|(l, r)| (l, r, false))) {
        let engine = engine_verdict(request);
        assert_eq!(engine.is_ok(), expected, "corpus entry '{label}' is filed wrongly: engine says {engine:?} for {request}");
        let schema_ok = validator.is_valid(request);
        if schema_ok != expected {
            let why = if schema_ok { "the schema accepts it".to_string() } else { format!("the schema refuses it:\n{}", schema_errors(&validator, request)) };
            disagreements.push(format!("'{label}': engine {engine:?}, but {why}\n    {request}"));
        }
    }
    assert!(disagreements.is_empty(), "schema and engine disagree on {} requests:\n{}", disagreements.len(), disagreements.join("\n"));
}

/// Rules the schema cannot (or deliberately does not) express. Each entry must still
/// disagree exactly as documented; if one starts agreeing, move it into the corpus.
#[test]
fn documented_exceptions_still_differ_as_documented() {
    let validator = request_validator();
    let base = json!({"prompt": "a cat", "models": {"base": "m"}});
    let with = |key: &str, value: Value| {
        let mut request = base.clone();
        request[key] = value;
        request
    };
    // (rule, request, the schema's verdict (None: depends on the validator), the engine's verdict)
    let exceptions: Vec<(&str, Value, Option<bool>, bool)> = vec![
        (
            "scheduler names: class names, C# enum names and aliases, matched case-insensitively after trimming; \
             the schema keeps a plain string (listing them would duplicate src/schedulers and still miss case variants)",
            with("scheduler", json!("TurboSampler")),
            Some(true),
            false,
        ),
        (
            "scheduler_options a scheduler cannot honour (eta outside DDIM, Karras sigmas for Euler ancestral or DDIM, \
             solver_order outside DPM-Solver/UniPC): a rule between two fields, refused at scheduler_options",
            {
                let mut request = with("scheduler", json!("DPMSolverMultistepScheduler"));
                request["scheduler_options"] = json!({"eta": 1.0});
                request
            },
            Some(true),
            false,
        ),
        (
            "integers: JSON Schema 2020-12 counts 25.0 as an integer, serde's i64 does not; the jsonschema \
             crate happens to refuse it like serde, validators that follow the spec (Python, .NET) accept it",
            with("hyperparameters", json!({"num_inference_steps": 25.0})),
            None,
            false,
        ),
        (
            "img2img needs steps x strength >= 1, a product of two fields",
            json!({"prompt": "a cat", "models": {"base": "m"}, "init_image": "in.png", "hyperparameters": {"num_inference_steps": 25, "strength": 0.01}}),
            Some(true),
            false,
        ),
    ];
    for (rule, request, schema_says, engine_says) in exceptions {
        let engine = engine_verdict(&request);
        if let Some(schema_says) = schema_says {
            assert_eq!(validator.is_valid(&request), schema_says, "{rule}: schema verdict changed for {request}");
        }
        assert_eq!(engine.is_ok(), engine_says, "{rule}: engine verdict changed for {request}: {engine:?}");
    }
}

/// Features of the seed's contract that a build may not support yet: the schema accepts
/// them, the engine either accepts them or refuses them with a field error at `field`.
#[test]
fn features_a_build_may_lack_are_in_the_schema_and_refused_by_field() {
    let validator = request_validator();
    let base = json!({"prompt": "a cat", "models": {"base": "m"}});
    let cases = [
        ("output.upscale", json!({"prompt": "a cat", "models": {"base": "m"}, "output": {"upscale": {"enabled": true, "factor": 2, "method": "realesrgan"}}})),
    ];
    assert!(validator.is_valid(&base));
    for (field, request) in cases {
        assert_valid(&validator, &request, field);
        let request_struct = parse_request(request.clone()).expect("parses");
        match plan_request(&request_struct, "f".into(), &Limits::default(), || 1) {
            Ok(_) => {}
            Err(error) => {
                let fields: Vec<&str> = error.field_errors().iter().map(|f| f.field.as_str()).collect();
                assert_eq!(fields, [field], "{request}: {error}");
                assert_eq!(error.code_name(), "UNSUPPORTED", "a feature this build lacks is not a validation error: {error}");
            }
        }
    }
}

/// Runs one message through the engine (the path of `sdxl_generate_json`).
fn respond(engine: &Engine, message: &Value) -> Value {
    serde_json::from_str(&engine.handle_json(&message.to_string())).expect("the engine answers JSON")
}

#[test]
fn responses_the_engine_really_produces_validate() {
    let validator = response_validator();
    let dir = tempfile::tempdir().expect("temporary folder");
    let config = json!({"device": "cpu", "output_dir": dir.path(), "limits": {"min_size": 64}});
    let engine = Engine::from_json(&config.to_string()).expect("engine");
    let tiny = |format: &str, batch: u32| {
        json!({"message_type": "inference_request", "request_id": format!("schema-{format}"), "data": {
            "prompt": "a cat", "models": {"base": "builtin:tiny"}, "dimensions": {"width": 64, "height": 64},
            "hyperparameters": {"num_inference_steps": 2, "seed": 3}, "scheduler": "EulerDiscreteScheduler",
            "batch": {"size": batch}, "output": {"format": format}}})
    };

    let mut produced: Vec<(&str, Value)> = vec![
        ("png batch of 2", respond(&engine, &tiny("png", 2))),
        ("jpeg", respond(&engine, &tiny("jpeg", 1))),
        ("webp", respond(&engine, &tiny("webp", 1))),
        ("status", respond(&engine, &json!({"message_type": "status_request", "request_id": "s"}))),
        ("model load", respond(&engine, &json!({"message_type": "model_load_request", "data": {"base": "builtin:tiny"}}))),
        ("validation error", respond(&engine, &json!({"prompt": "", "dimensions": {"width": 63}, "colour": 1}))),
        ("invalid JSON", serde_json::from_str(&engine.handle_json("{oops")).unwrap()),
        ("model not found", respond(&engine, &json!({"message_type": "model_load_request", "data": {"base": "no-such-model"}}))),
    ];
    engine.set_progress_callback(Some(Box::new(|_, _| false)));
    produced.push(("cancelled", respond(&engine, &tiny("png", 1))));
    engine.set_progress_callback(None);
    if cfg!(debug_assertions) {
        produced.push(("internal error", internal_error_through_the_c_abi(dir.path())));
    }

    let expected_success = |what: &str| !matches!(what, "validation error" | "invalid JSON" | "model not found" | "cancelled" | "internal error");
    for (what, response) in &produced {
        assert_eq!(response["success"], expected_success(what), "{what}: {response}");
        assert_valid(&validator, response, what);
    }
    assert_eq!(produced.iter().find(|(w, _)| *w == "cancelled").unwrap().1["error_code"], "CANCELLED");

    // sdxl_status_json's object is the status_request's data.
    let schema = schema("enhanced_response_schema.json");
    let status_schema = json!({"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/status_data"});
    assert_valid(&self::validator(&status_schema), &engine.status(), "Engine::status()");
}

/// A panic inside the engine, caught by the C ABI's guard (debug builds only).
fn internal_error_through_the_c_abi(output_dir: &Path) -> Value {
    use std::ffi::{CStr, CString};
    let config = CString::new(json!({"device": "cpu", "output_dir": output_dir}).to_string()).unwrap();
    let request = CString::new(r#"{"message_type":"debug_panic"}"#).unwrap();
    unsafe {
        let engine = sdxl::ffi::sdxl_create(config.as_ptr());
        assert!(!engine.is_null());
        let response = sdxl::ffi::sdxl_generate_json(engine, request.as_ptr());
        assert!(!response.is_null());
        let text = CStr::from_ptr(response).to_string_lossy().into_owned();
        sdxl::ffi::sdxl_string_free(response);
        sdxl::ffi::sdxl_free(engine);
        serde_json::from_str(&text).expect("JSON")
    }
}
