//! Hostile inputs (issue 16): each becomes a specific error response, never a panic, an abort
//! or an allocation the input does not justify, and the engine serves the next request.
//! docs/RELIABILITY.md lists every case with its error code.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use sdxl::loader::safetensors_file::SafetensorsFile;
use sdxl::Engine;
use serde_json::{json, Value};

fn engine_with(dir: &Path, extra: Value) -> Engine {
    let mut config = json!({"device": "cpu", "output_dir": dir.join("out"), "models_dir": dir.join("models"), "limits": {"min_size": 64}});
    common::merge(&mut config, extra);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    Engine::from_json(&config.to_string()).expect("engine")
}

fn respond_text(engine: &Engine, text: &str) -> Value {
    serde_json::from_str(&engine.handle_json(text)).expect("every answer is JSON")
}

fn respond(engine: &Engine, data: &Value) -> Value {
    respond_text(engine, &json!({"message_type": "inference_request", "data": data}).to_string())
}

/// A request that succeeds quickly on the built-in tiny model.
fn tiny() -> Value {
    json!({"prompt": "a lighthouse", "models": {"base": "builtin:tiny"}, "dimensions": {"width": 64, "height": 64},
        "hyperparameters": {"num_inference_steps": 1, "seed": 1}, "scheduler": "EulerDiscreteScheduler"})
}

fn with(path: &str, value: Value) -> Value {
    let mut request = tiny();
    set(&mut request, path, value);
    request
}

/// Sets `path` (`a.b[0].c`) in `target`, creating objects and one-element arrays on the way.
fn set(target: &mut Value, path: &str, value: Value) {
    let mut node = target;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (key, indexed) = match part.strip_suffix("[0]") {
            Some(key) => (key, true),
            None => (*part, false),
        };
        let last = i + 1 == parts.len();
        let slot = node.as_object_mut().expect("an object on the path").entry(key.to_string()).or_insert(Value::Null);
        node = if indexed {
            if !slot.is_array() || slot.as_array().unwrap().is_empty() {
                *slot = json!([{}]);
            }
            &mut slot.as_array_mut().unwrap()[0]
        } else {
            slot
        };
        if last {
            *node = value;
            return;
        }
        if !node.is_object() {
            *node = json!({});
        }
    }
}

/// What switches on the part of the request a numeric field belongs to, so its value is read:
/// a ControlNet with its control image, an enabled upscale, a named refiner, a named LoRA.
fn with_its_section_on(path: &str, value: Value) -> Value {
    let mut request = tiny();
    let entry = path.split('.').next().unwrap();
    if entry.starts_with("controlnet") {
        set(&mut request, &format!("{entry}.control_image"), json!("control.png"));
        if path.contains(".preprocessor.") {
            set(&mut request, &format!("{entry}.preprocessor.enabled"), json!(true));
        }
    } else if path.starts_with("output.upscale.") {
        set(&mut request, "output.upscale.enabled", json!(true));
    } else if path.starts_with("refiner.") {
        set(&mut request, "models.refiner", json!("builtin:sdxl-refiner-random"));
    } else if path.starts_with("lora.models[0].") {
        set(&mut request, "lora.models[0].name", json!("style"));
    } else if path.starts_with("precision.vae_tile") {
        set(&mut request, "precision.vae_tiling", json!(true));
    }
    set(&mut request, path, value);
    request
}

fn fields(response: &Value) -> Vec<String> {
    response["field_errors"].as_array().map(|errors| errors.iter().map(|e| e["field"].as_str().unwrap_or_default().to_string()).collect()).unwrap_or_default()
}

fn assert_refused(response: &Value, code: &str, field: Option<&str>, what: &str) {
    assert_eq!(response["success"], false, "{what}: {response}");
    assert_eq!(response["error_code"], code, "{what}: {}", truncated(response));
    if let Some(field) = field {
        assert!(fields(response).iter().any(|f| f == field), "{what}: no error at {field}: {}", truncated(response));
    }
}

fn truncated(response: &Value) -> String {
    response.to_string().chars().take(600).collect()
}

fn assert_still_serving(engine: &Engine) {
    let response = respond(engine, &tiny());
    assert_eq!(response["success"], true, "the engine must keep serving: {response}");
}

#[test]
fn oversized_and_deeply_nested_json_is_refused_before_it_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), json!({}));
    let huge = format!("{{\"message_type\":\"inference_request\",\"data\":{{\"prompt\":\"{}\"}}}}", "a".repeat(100 * 1024 * 1024));
    assert_refused(&respond_text(&engine, &huge), "INVALID_JSON", None, "100 MB");
    drop(huge);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_refused(&respond_text(&engine, &deep), "INVALID_JSON", None, "100 000-deep arrays");
    let deep_objects = format!("{{\"message_type\":\"inference_request\",\"data\":{}1{}}}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    assert_refused(&respond_text(&engine, &deep_objects), "INVALID_JSON", None, "100 000-deep objects");
    assert_still_serving(&engine);
}

/// Every numeric field of the request schema, found by walking it.
fn numeric_fields() -> Vec<(String, bool)> {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/enhanced_request_schema.json")).unwrap()).unwrap();
    let definitions = schema["$defs"].clone();
    let mut found = Vec::new();
    fn walk(node: &Value, path: String, definitions: &Value, depth: usize, found: &mut Vec<(String, bool)>) {
        if depth > 12 {
            return;
        }
        if let Some(reference) = node["$ref"].as_str() {
            let name = reference.rsplit('/').next().unwrap();
            return walk(&definitions[name], path, definitions, depth + 1, found);
        }
        let types: Vec<&str> = match &node["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if types.contains(&"integer") || types.contains(&"number") {
            found.push((path.clone(), types.contains(&"integer")));
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            for option in node[key].as_array().into_iter().flatten() {
                walk(option, path.clone(), definitions, depth + 1, found);
            }
        }
        for (name, property) in node["properties"].as_object().into_iter().flatten() {
            walk(property, if path.is_empty() { name.clone() } else { format!("{path}.{name}") }, definitions, depth + 1, found);
        }
        if node.get("items").is_some() {
            walk(&node["items"], format!("{path}[0]"), definitions, depth + 1, found);
        }
    }
    walk(&schema, String::new(), &definitions, 0, &mut found);
    found.sort();
    found.dedup();
    found
}

#[test]
fn nan_infinity_huge_and_negative_numbers_in_every_numeric_field_are_refused_at_that_field() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), json!({}));
    let numeric = numeric_fields();
    assert!(numeric.len() >= 25, "the schema walk found only {numeric:?}");
    for (path, integer) in &numeric {
        // JSON has no NaN or Infinity: the text is not JSON, whichever field it is in.
        for literal in ["NaN", "Infinity", "-Infinity", "1e400"] {
            let text = with_its_section_on(path, json!("PLACEHOLDER")).to_string().replace("\"PLACEHOLDER\"", literal);
            let text = format!("{{\"message_type\":\"inference_request\",\"data\":{text}}}");
            assert_refused(&respond_text(&engine, &text), "INVALID_JSON", None, &format!("{path} = {literal}"));
        }
        // Finite but out of every range: refused at the field (or its list entry), never run.
        let top = path.split(['.', '[']).next().unwrap();
        let mut hostile = vec![json!(1e308), json!(-1e308), json!(u64::MAX), json!(-9_223_372_036_854_775_808i64)];
        if *integer {
            hostile.push(json!(2.5));
        }
        for value in hostile {
            let response = respond(&engine, &with_its_section_on(path, value.clone()));
            let what = format!("{path} = {value}");
            // A timeout of 10³⁰⁸ s is a valid "no limit" (the schema has no maximum).
            if path == "metadata.timeout" && value.as_f64().is_some_and(|v| v > 0.0) {
                assert_eq!(response["success"], true, "{what}: {}", truncated(&response));
                continue;
            }
            assert_eq!(response["success"], false, "{what}: {}", truncated(&response));
            let code = response["error_code"].as_str().unwrap_or_default();
            assert!(matches!(code, "VALIDATION_ERROR" | "UNSUPPORTED"), "{what}: {}", truncated(&response));
            assert!(fields(&response).iter().any(|f| f.starts_with(top)), "{what}: no error under {top}: {}", truncated(&response));
        }
    }
    assert_still_serving(&engine);
}

#[test]
fn sizes_0_1_2049_and_a_billion_are_refused_at_their_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), json!({}));
    for size in [0i64, 1, 2, 2049, 1_000_000_000, -64] {
        for field in ["dimensions.width", "dimensions.height"] {
            assert_refused(&respond(&engine, &with(field, json!(size))), "VALIDATION_ERROR", Some(field), &format!("{field} = {size}"));
        }
    }
}

#[test]
fn nul_bytes_inside_strings_are_text_or_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), json!({}));
    // In the prompt a NUL is just a character the tokenizer drops.
    assert_eq!(respond(&engine, &with("prompt", json!("a light\u{0}house")))["success"], true);
    // In a request id it never reaches a file name.
    let mut request = tiny();
    common::merge(&mut request, json!({"metadata": {"request_id": "evil\u{0}/../../id"}}));
    let response = respond(&engine, &request);
    assert_eq!(response["success"], true, "{response}");
    let path = PathBuf::from(response["data"]["generated_images"][0]["path"].as_str().unwrap());
    assert!(path.starts_with(dir.path().join("out")) && path.is_file(), "{}", path.display());
    // In paths and names it is refused where it stands.
    assert_refused(&respond(&engine, &with("output.save_path", json!("a\u{0}b"))), "VALIDATION_ERROR", Some("output.save_path"), "NUL in save_path");
    let response = respond(&engine, &with("models.base", json!("builtin:tiny\u{0}")));
    assert_refused(&response, "MODEL_NOT_FOUND", None, "NUL in a model name");
    assert_refused(&respond(&engine, &with("lora.models[0]", json!({"name": "x\u{0}y", "weight": 1.0}))), "VALIDATION_ERROR", Some("lora.models[0].name"), "NUL in a LoRA name");
}

#[test]
fn a_symbolic_link_out_of_output_dir_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), json!({}));
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("out/escape")).unwrap();
    for save_path in ["escape", "escape/deeper/still"] {
        let response = respond(&engine, &with("output.save_path", json!(save_path)));
        assert_refused(&response, "VALIDATION_ERROR", Some("output.save_path"), save_path);
        assert!(response["field_errors"][0]["message"].as_str().unwrap().contains("symbolic link"), "{response}");
    }
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing may be written outside output_dir");
    for save_path in ["../up", "/abs", "a/../../up"] {
        assert_refused(&respond(&engine, &with("output.save_path", json!(save_path))), "VALIDATION_ERROR", Some("output.save_path"), save_path);
    }
    // A link that stays inside output_dir is fine.
    std::fs::create_dir_all(dir.path().join("out/real")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("out/real"), dir.path().join("out/inside")).unwrap();
    assert_eq!(respond(&engine, &with("output.save_path", json!("inside")))["success"], true);
}

#[test]
fn with_models_dir_only_names_cannot_reach_outside_models_dir() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = common::fixtures();
    let lora = fixtures.join("lora/tiny_lora_kohya.safetensors");
    // Without the option, paths are names (the seed's behaviour); with it, every kind of name
    // is refused at its field when it is a path or leads elsewhere.
    let open = engine_with(dir.path(), json!({}));
    assert_eq!(respond(&open, &with("models.base", json!(fixtures.join("tiny-sdxl"))))["success"], true);
    let closed = engine_with(dir.path(), json!({"models_dir_only": true}));
    std::os::unix::fs::symlink(fixtures.join("tiny-sdxl"), dir.path().join("models/linked-by-the-operator")).unwrap();
    let cases = [
        ("models.base", with("models.base", json!(fixtures.join("tiny-sdxl")))),
        ("models.base", with("models.base", json!("../../tiny-sdxl"))),
        ("models.vae", with("models.vae", json!(fixtures.join("tiny-vae-fp16-fix")))),
        ("lora.models[0].name", with("lora.models[0]", json!({"name": lora, "weight": 1.0}))),
        ("lora.models[0].name", with("lora.models[0]", json!({"name": "../x", "weight": 1.0}))),
    ];
    for (field, request) in cases {
        let response = respond(&closed, &request);
        assert_refused(&response, "VALIDATION_ERROR", Some(field), &format!("{field} in {request}"));
    }
    let message = json!({"message_type": "model_load_request", "data": {"base": fixtures.join("tiny-sdxl")}}).to_string();
    assert_refused(&respond_text(&closed, &message), "VALIDATION_ERROR", Some("base"), "a model_load_request with a path");
    // The operator's link inside models_dir is followed; built-in names are names.
    assert_eq!(respond(&closed, &with("models.base", json!("linked-by-the-operator")))["success"], true);
    assert_still_serving(&closed);
    assert!(Engine::from_json(r#"{"device":"cpu","models_dir_only":true}"#).is_err(), "models_dir_only needs a models_dir");
}

/// A safetensors file from a header (as JSON text) and data bytes.
fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
    path
}

fn open_error(path: &Path) -> String {
    match SafetensorsFile::open(path) {
        Ok(_) => panic!("{} was accepted", path.display()),
        Err(err) => {
            assert_eq!(err.code(), sdxl::ffi::SDXL_ERR_MODEL_LOAD, "{err}");
            err.to_string()
        }
    }
}

#[test]
fn malformed_safetensors_files_are_refused_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("past-end", safetensors_bytes(r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0; 8]), "accounts for"),
        ("overlapping", safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, &[0; 12]), "header"),
        ("gap", safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, &[0; 8]), "header"),
        ("wrong-size-for-dtype", safetensors_bytes(r#"{"a":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}}"#, &[0; 16]), "header"),
        ("unknown-dtype", safetensors_bytes(r#"{"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}}"#, &[0; 16]), "header"),
        ("overflowing-shape", safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#, &[0; 16]), "header"),
        ("not-json", safetensors_bytes("{nope", &[]), "header"),
        ("empty", Vec::new(), "too short"),
    ];
    for (name, bytes, expected) in cases {
        let path = write_file(dir.path(), &format!("{name}.safetensors"), &bytes);
        let message = open_error(&path);
        assert!(message.contains(expected), "{name}: {message}");
        // The bytes-in-memory reader refuses the same files.
        assert!(SafetensorsFile::from_bytes(bytes, name.into()).is_err(), "{name}");
    }
    // A 2 GB header length is refused before anything is allocated for it.
    let mut claims_2gb = (2u64 << 30).to_le_bytes().to_vec();
    claims_2gb.extend_from_slice(b"{}");
    let message = open_error(&write_file(dir.path(), "2gb-header.safetensors", &claims_2gb));
    assert!(message.contains("exceeds"), "{message}");
    let mut claims_past_end = 1000u64.to_le_bytes().to_vec();
    claims_past_end.extend_from_slice(b"{}");
    assert!(open_error(&write_file(dir.path(), "short-header.safetensors", &claims_past_end)).contains("past the end"));
}

#[test]
fn a_file_truncated_inside_a_tensor_or_after_it_was_opened_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(common::fixtures().join("lora/tiny_lora_kohya.safetensors")).unwrap();
    // Cut inside the last tensor: the header no longer matches the file.
    let cut = write_file(dir.path(), "cut.safetensors", &original[..original.len() - 7]);
    assert!(open_error(&cut).contains("truncated"));
    // Opened whole, then truncated in place by another writer (as `cp` over it does): a mapped
    // file would raise SIGBUS here; the read comes back short and names the tensor.
    let path = write_file(dir.path(), "changing.safetensors", &original);
    let file = SafetensorsFile::open(&path).unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(64).unwrap();
    let names: Vec<String> = file.names().cloned().collect();
    let failures: Vec<String> = names.iter().filter_map(|name| file.load(name, &candle_core::Device::Cpu).err()).map(|e| e.to_string()).collect();
    assert_eq!(failures.len(), names.len(), "every tensor lies past the new end");
    assert!(failures[0].contains("changed or truncated"), "{}", failures[0]);
    // Replaced by rename (how model stores update): the open file keeps its old contents.
    let path = write_file(dir.path(), "replaced.safetensors", &original);
    let file = SafetensorsFile::open(&path).unwrap();
    let other = write_file(dir.path(), "other.safetensors", b"not a model");
    std::fs::rename(&other, &path).unwrap();
    for name in file.names() {
        file.load(name, &candle_core::Device::Cpu).expect("the opened file is still whole");
    }
}

#[test]
fn a_lora_file_truncated_on_disk_is_refused_at_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), json!({}));
    let original = std::fs::read(common::fixtures().join("lora/tiny_lora_kohya.safetensors")).unwrap();
    let path = write_file(&dir.path().join("models"), "cut.safetensors", &original[..original.len() / 2]);
    let mut request = tiny();
    common::merge(&mut request, json!({"models": {"base": common::fixtures().join("tiny-sdxl")}, "lora": {"models": [{"name": path, "weight": 1.0}]}}));
    // LoRA files are read while the request is checked, before it waits for the engine.
    let response = respond(&engine, &request);
    assert_refused(&response, "VALIDATION_ERROR", Some("lora.models[0].name"), "a truncated LoRA");
    assert!(response["error"].as_str().unwrap().contains("cut.safetensors is not a valid safetensors file"), "{response}");
    assert_still_serving(&engine);
}

/// A PNG header claiming `width × height`, with no pixel data.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut crc = flate2::Crc::new();
    crc.update(&ihdr);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc.sum().to_be_bytes());
    png.extend_from_slice(b"\0\0\0\0IEND\xaeB`\x82");
    png
}

#[test]
fn images_claiming_huge_sizes_are_refused_before_their_pixels_are_allocated() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), json!({}));
    for (width, height) in [(100_000, 100_000), (8193, 1), (1, 1_000_000)] {
        let data = base64::engine::general_purpose::STANDARD.encode(png_claiming(width, height));
        let mut request = with("init_image", json!(data));
        set(&mut request, "hyperparameters.num_inference_steps", json!(2));
        let response = respond(&engine, &request);
        assert_refused(&response, "VALIDATION_ERROR", Some("init_image"), &format!("{width}x{height}"));
        assert!(response["field_errors"][0]["message"].as_str().unwrap().contains("at most 8192 pixels per side"), "{response}");
    }
    // A control image of extreme aspect ratio whose canny resolution would scale it past the
    // bound (1×4000 at resolution 2048 would be 2048×8 192 000): refused at its field.
    let thin = image::RgbImage::from_pixel(1, 4000, image::Rgb([200, 10, 10]));
    let path = dir.path().join("thin.png");
    thin.save(&path).unwrap();
    let mut warnings = Vec::new();
    let canny = sdxl::image::canny::CannySettings { low_threshold: 100.0, high_threshold: 200.0, resolution: Some(2048) };
    let err = sdxl::image::control::prepare_control_image("controlnet.control_image", path.to_str().unwrap(), Some(&canny), 64, 64, &mut warnings).unwrap_err();
    assert!(err.to_string().contains("over 8192 pixels per side"), "{err}");
    assert_eq!(err.code(), sdxl::ffi::SDXL_ERR_VALIDATION);
}
