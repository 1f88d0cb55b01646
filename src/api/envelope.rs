//! The seed's message envelope (`message_type`, `request_id`, `data`) and its
//! legacy normalisation (`_normalize_request_format` in enhanced_orchestrator.py).

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// What a JSON text sent to `sdxl_generate_json` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Inference { request_id: Option<String>, data: Value },
    Status { request_id: Option<String> },
    ModelLoad { request_id: Option<String>, data: Value },
    /// Debug builds only: panics inside the engine so tests can prove the ABI guard holds.
    DebugPanic,
}

/// Bounds the work a hostile host can cause before validation even starts.
pub(crate) const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

pub fn parse_message(text: &str) -> Result<Message> {
    if text.len() > MAX_REQUEST_BYTES {
        return Err(Error::InvalidJson(format!(
            "request is {} bytes, more than the {} allowed",
            text.len(),
            MAX_REQUEST_BYTES
        )));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| Error::InvalidJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(Error::InvalidJson("the request must be a JSON object".into()));
    };
    let request_id = match object.get("request_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(other) => Some(other.to_string()),
    };
    let Some(message_type) = object.get("message_type") else {
        // A bare `data` object, possibly with the legacy flat fields.
        let mut data = object;
        data.remove("request_id");
        return Ok(Message::Inference { request_id, data: Value::Object(data) });
    };
    let data = match object.get("data") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Object(data)) => Value::Object(data.clone()),
        Some(_) => return Err(Error::validation("data", "must be an object")),
    };
    match message_type.as_str() {
        Some("inference_request") => Ok(Message::Inference { request_id, data }),
        Some("status_request") => Ok(Message::Status { request_id }),
        Some("model_load_request") => Ok(Message::ModelLoad { request_id, data }),
        Some("debug_panic") if cfg!(debug_assertions) => Ok(Message::DebugPanic),
        Some(other) => Err(Error::validation(
            "message_type",
            format!(
                "unknown message type: {other} (expected inference_request, status_request or model_load_request)"
            ),
        )),
        None => Err(Error::validation("message_type", "must be a string")),
    }
}

const LEGACY_HYPERPARAMETERS: [&str; 4] = ["guidance_scale", "num_inference_steps", "seed", "strength"];

/// Moves the seed's legacy flat fields into their nested homes, as the seed's
/// orchestrator did: flat `model_name` becomes `models.base` (unless `models` is given),
/// flat hyperparameters and `width`/`height` override nested ones.
pub fn normalize_legacy_fields(data: Value) -> Value {
    let Value::Object(mut data) = data else { return data };
    if let Some(model_name) = data.get("model_name").cloned() {
        if !data.contains_key("models") {
            let mut models = Map::new();
            models.insert("base".into(), model_name);
            data.insert("models".into(), Value::Object(models));
        }
    }
    move_flat_fields(&mut data, &LEGACY_HYPERPARAMETERS, "hyperparameters");
    move_flat_fields(&mut data, &["width", "height"], "dimensions");
    Value::Object(data)
}

fn move_flat_fields(data: &mut Map<String, Value>, names: &[&str], into: &str) {
    let moved: Vec<(String, Value)> = names
        .iter()
        .filter_map(|name| data.remove(*name).map(|value| (name.to_string(), value)))
        .collect();
    if moved.is_empty() {
        return;
    }
    let target = data.entry(into.to_string()).or_insert_with(|| Value::Object(Map::new()));
    if !target.is_object() {
        // Leave the malformed nested value for validation to report; the flat values win.
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (name, value) in moved {
            target.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_bare_data_and_legacy_fields_are_recognised() {
        let enveloped = parse_message(r#"{"message_type":"inference_request","request_id":"r1","data":{"prompt":"x"}}"#).unwrap();
        assert_eq!(enveloped, Message::Inference { request_id: Some("r1".into()), data: json!({"prompt":"x"}) });
        let bare = parse_message(r#"{"prompt":"x","request_id":"r2"}"#).unwrap();
        assert_eq!(bare, Message::Inference { request_id: Some("r2".into()), data: json!({"prompt":"x"}) });
        assert_eq!(parse_message(r#"{"message_type":"status_request"}"#).unwrap(), Message::Status { request_id: None });
        let unknown = parse_message(r#"{"message_type":"reboot"}"#).unwrap_err();
        assert_eq!(unknown.field_errors()[0].field, "message_type");
    }

    #[test]
    fn legacy_flat_fields_move_into_nested_objects_and_override() {
        let data = json!({
            "prompt": "p", "model_name": "m", "width": 512, "height": 768,
            "guidance_scale": 5.0, "num_inference_steps": 10, "seed": 3, "strength": 0.5,
            "hyperparameters": {"guidance_scale": 9.0}
        });
        let normalized = normalize_legacy_fields(data);
        assert_eq!(normalized["models"]["base"], "m");
        assert_eq!(normalized["dimensions"], json!({"width": 512, "height": 768}));
        assert_eq!(
            normalized["hyperparameters"],
            json!({"guidance_scale": 5.0, "num_inference_steps": 10, "seed": 3, "strength": 0.5})
        );
        assert!(normalized.get("width").is_none());
    }

    #[test]
    fn explicit_models_win_over_legacy_model_name() {
        let normalized = normalize_legacy_fields(json!({"model_name": "old", "models": {"base": "new"}}));
        assert_eq!(normalized["models"]["base"], "new");
    }

    #[test]
    fn non_object_and_oversized_requests_are_rejected() {
        assert_eq!(parse_message("[1,2]").unwrap_err().code(), -2);
        assert_eq!(parse_message("{").unwrap_err().code(), -2);
        let huge = format!("{{\"prompt\":\"{}\"}}", "a".repeat(MAX_REQUEST_BYTES));
        assert_eq!(parse_message(&huge).unwrap_err().code(), -2);
    }
}
