//! Every way a weight folder or checkpoint can be wrong gives a clear error, never a panic.

mod common;

use std::path::Path;

use common::*;
use sdxl::loader::{self, resolve_model, ModelLocation};
use sdxl::Error;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sdxl-loader-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn load_folder_error(dir: &Path) -> Error {
    match loader::load_diffusers_folder(dir, &cpu_options()) {
        Ok(_) => panic!("{} loaded although broken", dir.display()),
        Err(err) => err,
    }
}

#[test]
fn missing_component_folder_is_named() {
    let dir = scratch("missing");
    copy_dir(&fixtures().join("tiny-sdxl"), &dir);
    std::fs::remove_dir_all(dir.join("vae")).unwrap();
    let err = load_folder_error(&dir);
    assert_eq!(err.code_name(), "MODEL_LOAD_ERROR");
    assert!(err.to_string().contains("vae"), "{err}");
}

#[test]
fn truncated_safetensors_is_rejected_as_invalid() {
    let err = loader::load_single_file(&fixtures().join("truncated.safetensors"), &cpu_options()).err().expect("error");
    assert_eq!(err.code_name(), "MODEL_LOAD_ERROR", "{err}");
    assert!(err.to_string().contains("not a valid safetensors file"), "{err}");

    let dir = scratch("truncated");
    copy_dir(&fixtures().join("tiny-sdxl"), &dir);
    let unet = dir.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&unet).unwrap();
    std::fs::write(&unet, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_folder_error(&dir);
    assert!(err.to_string().contains("diffusion_pytorch_model.safetensors"), "{err}");
}

#[test]
fn weights_of_the_wrong_shape_name_the_tensor() {
    let dir = scratch("shapes");
    copy_dir(&fixtures().join("tiny-sdxl"), &dir);
    // Claim wider blocks than the stored weights have.
    let config_path = dir.join("unet/config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["block_out_channels"] = serde_json::json!([32, 64, 64]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = load_folder_error(&dir);
    let text = err.to_string();
    assert!(text.contains("shape") && text.contains("unet"), "{text}");
}

#[test]
fn a_non_sdxl_checkpoint_is_refused_by_name() {
    let err = loader::load_single_file(&fixtures().join("not-sdxl.safetensors"), &cpu_options()).err().expect("error");
    assert!(err.to_string().contains("not SDXL") || err.to_string().contains("Stable Diffusion 1"), "{err}");
}

#[test]
fn garbage_bytes_never_panic_the_safetensors_reader() {
    use sdxl::loader::safetensors_file::SafetensorsFile;
    let valid = std::fs::read(fixtures().join("not-sdxl.safetensors")).unwrap();
    let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0; 7], vec![255; 64], b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}".to_vec()];
    for cut in [1, 8, 9, valid.len() / 3, valid.len() - 1] {
        inputs.push(valid[..cut].to_vec());
    }
    let mut header_len_lie = valid.clone();
    header_len_lie[0] = 0xff;
    inputs.push(header_len_lie);
    for (i, bytes) in inputs.into_iter().enumerate() {
        let result = SafetensorsFile::from_bytes(bytes, format!("input {i}"));
        assert!(result.is_err(), "input {i} was accepted");
    }
}

#[test]
fn model_names_resolve_like_the_seed_and_never_reach_the_network() {
    let fixtures = fixtures();
    assert_eq!(resolve_model("builtin:tiny", None).unwrap(), ModelLocation::Builtin);
    // The seed's order: an existing path, then models_dir/<name>.safetensors, then models_dir/<name>/.
    let folder = fixtures.join("tiny-sdxl");
    assert_eq!(resolve_model(folder.to_str().unwrap(), None).unwrap(), ModelLocation::DiffusersFolder(folder.clone()));
    assert_eq!(resolve_model("tiny-sdxl", Some(&fixtures)).unwrap(), ModelLocation::SingleFile(fixtures.join("tiny-sdxl.safetensors")));
    assert_eq!(resolve_model("reference", Some(&fixtures)).unwrap(), ModelLocation::DiffusersFolder(fixtures.join("reference")));
    let err = resolve_model("stabilityai/stable-diffusion-xl-base-1.0", Some(&fixtures)).unwrap_err();
    assert_eq!(err.code_name(), "MODEL_NOT_FOUND");
    assert!(err.to_string().contains("never downloaded"), "{err}");
}

#[test]
fn text_encoders_saved_without_the_text_model_prefix_load_too() {
    use sdxl::loader::safetensors_file::SafetensorsFile;
    let dir = scratch("unprefixed");
    copy_dir(&fixtures().join("tiny-sdxl"), &dir);
    let path = dir.join("text_encoder/model.safetensors");
    let file = SafetensorsFile::open(&path).unwrap();
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = file
        .names()
        .map(|name| (name.strip_prefix("text_model.").unwrap_or(name).to_string(), file.load(name, &candle_core::Device::Cpu).unwrap()))
        .collect();
    drop(file);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    loader::load_diffusers_folder(&dir, &cpu_options()).expect("transformers 5 layout loads");
}

#[test]
fn pickle_checkpoints_are_refused_with_how_to_convert_them() {
    let dir = tempfile::tempdir().unwrap();
    // A zip archive (torch.save's format since 1.6) and a bare protocol-2 pickle.
    for (name, bytes) in [("model.ckpt", b"PK\x03\x04rest-of-a-zip".to_vec()), ("old.pt", vec![0x80, 0x02, b'}', b'q', 0x00, b'.'])] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let error = match sdxl::loader::load_single_file(&path, &common::cpu_options()) {
            Ok(_) => panic!("{name} loaded"),
            Err(error) => error,
        };
        assert_eq!(error.code_name(), "UNSUPPORTED", "{name}: {error}");
        let message = error.to_string();
        assert!(message.contains("safetensors") && message.contains("weights_only=True"), "{name}: {message}");
    }
    // models_dir/<name>.ckpt is found (and refused), as the seed's worker resolved it.
    std::fs::write(dir.path().join("legacy.ckpt"), b"PK\x03\x04zip").unwrap();
    let location = sdxl::loader::resolve_model("legacy", Some(dir.path())).expect("found");
    assert_eq!(location, sdxl::loader::ModelLocation::SingleFile(dir.path().join("legacy.ckpt")));
}
