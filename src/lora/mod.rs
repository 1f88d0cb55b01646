//! Applying and removing LoRA adapters on a resident model.
//!
//! # Fused, not unfused
//! An adapter can run *unfused* (every patched layer computes `W x + s · up(down(x))` at every
//! step, as PEFT does before `fuse_lora`) or *fused* (`W' = W + s · up @ down` once, then plain
//! layers). We fuse: the denoising loop then costs exactly what it costs without LoRA (an
//! unfused rank-32 SDXL LoRA adds two skinny matmuls to ~700 layers, for every step and CFG row),
//! and switching adapters is paid once per change of the adapter set, not per step. The price is
//! memory: a patched layer holds its fused weight besides the loaded one, which is kept so that
//! removal is exact (the loaded tensor is put back, bit for bit; subtracting the delta again
//! would not be). Timings: `benches/lora.rs` (CPU) and [`measure_apply_and_restore`] (GPU bench).
//!
//! The fused weight is computed in float32 from the *loaded* weight and every active adapter's
//! delta, then cast to the model dtype, so a layer's weight depends only on the adapter set, never
//! on the order requests came in: activating {x} after {x, y} gives the weight {x} gave before.

pub mod cache;
pub mod layers;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use parking_lot::Mutex;
use serde::Serialize;

use crate::api::validate::LoraRequest;
use crate::error::{Error, FieldError, Result};
use crate::loader::lora::{LoraFile, LoraFormat, Network};
use crate::models::patchable::{LayerRegistry, PatchableWeight};
use crate::models::UNetConfig;
pub use cache::{resolve_lora_path, CachedLora, LoraCache};
pub use layers::PatchableLayers;

/// One layer's low-rank update, resolved against a model.
pub struct LayerDelta {
    pub network: Network,
    pub layer: Arc<PatchableWeight>,
    /// (rank, …) and (out, rank, …), as stored (CPU, file dtype); moved to the device when fused.
    pub down: Tensor,
    pub up: Tensor,
    /// alpha / rank: the request's weight times this scales `up @ down`.
    pub scale_per_unit_weight: f64,
}

/// A LoRA file matched to the layers of one model.
pub struct Adapter {
    /// Identity of the file contents (path, size, modification time): equal ids, equal deltas.
    pub id: String,
    pub origin: String,
    pub format: LoraFormat,
    pub deltas: Vec<LayerDelta>,
}

/// What changed when an adapter set was activated.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivationReport {
    pub layers_patched: usize,
    pub layers_restored: usize,
    pub elapsed: Duration,
}

type LayerKey = (Network, String);
/// Which adapters (by id) at which weights (bits) a layer's current weight was fused from.
type Signature = Vec<(String, u64)>;
/// Per layer to patch: the layer, its (delta, weight) contributions in request order, their signature.
type Plan<'a> = BTreeMap<LayerKey, (Arc<PatchableWeight>, Vec<(&'a LayerDelta, f64)>, Signature)>;

#[derive(Default)]
struct ActiveSet {
    layers: HashMap<LayerKey, (Arc<PatchableWeight>, Signature)>,
}

/// The patchable layers of a loaded model and the adapter set fused into them now.
pub struct ModelAdapters {
    layers: PatchableLayers,
    active: Mutex<ActiveSet>,
}

impl ModelAdapters {
    pub fn new(unet: LayerRegistry, text_encoder: LayerRegistry, text_encoder_2: LayerRegistry, unet_config: &UNetConfig) -> Self {
        Self { layers: PatchableLayers::new(unet, text_encoder, text_encoder_2, unet_config), active: Mutex::new(ActiveSet::default()) }
    }

    pub fn layers(&self) -> &PatchableLayers {
        &self.layers
    }

    /// Bytes the fused copies of patched layers hold now, (device, host): counted in the
    /// engine's memory budget and status until the adapter set changes.
    pub fn fused_bytes(&self, device: &candle_core::Device) -> (u64, u64) {
        [Network::Unet, Network::TextEncoder, Network::TextEncoder2].iter().fold((0, 0), |(device_bytes, host), network| {
            let (d, h) = self.layers.registry(*network).patched_bytes(device);
            (device_bytes + d, host + h)
        })
    }

    /// Number of layers whose weight is patched now.
    pub fn patched_layers(&self) -> usize {
        self.active.lock().layers.len()
    }

    /// Matches every module of `file` to a layer of this model and checks its shapes. Every key
    /// must land: a file with keys this model has no layer for is refused, not partly applied.
    pub fn resolve(&self, file: &LoraFile, id: String) -> Result<Adapter> {
        let mut unmatched: Vec<String> = file.unrecognised.clone();
        let mut unmatched_keys = file.unrecognised.len();
        let mut mismatched = Vec::new();
        let mut deltas = Vec::new();
        for module in &file.modules {
            let Some(layer) = self.layers.lookup(module.network, &module.layer) else {
                unmatched.push(module.stem.clone());
                unmatched_keys += module.keys;
                continue;
            };
            if let Err(message) = check_fits(module.down.dims(), module.up.dims(), layer.original().dims()) {
                mismatched.push(format!("{} → {} {}: {message}", module.stem, module.network.name(), layer.name()));
                continue;
            }
            deltas.push(LayerDelta {
                network: module.network,
                layer: layer.clone(),
                down: module.down.clone(),
                up: module.up.clone(),
                scale_per_unit_weight: module.scale_per_unit_weight(),
            });
        }
        if !unmatched.is_empty() {
            let hint = if deltas.is_empty() || unmatched.len() * 2 > file.modules.len() + file.unrecognised.len() {
                " (is it a LoRA for another architecture, e.g. SD 1.x/2.x, SD3 or Flux, or a LyCORIS/LoHa/DoRA variant?)"
            } else {
                ""
            };
            return Err(Error::ModelLoad(format!(
                "{}: {unmatched_keys} of {} keys match no layer of this SDXL model{hint}, e.g. {}",
                file.origin,
                file.key_count,
                unmatched.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if !mismatched.is_empty() {
            return Err(Error::ModelLoad(format!(
                "{}: {} of its layers {} shapes this model does not (was the LoRA made for another architecture or model size?), e.g. {}",
                file.origin,
                mismatched.len(),
                if mismatched.len() == 1 { "has" } else { "have" },
                mismatched.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            )));
        }
        Ok(Adapter { id, origin: file.origin.clone(), format: file.format, deltas })
    }

    /// Makes the fused adapter set equal to `wanted` (adapter, weight), touching only layers whose
    /// set of contributions changed; `&[]` restores every patched layer to its loaded weight.
    /// On failure (a device error mid-way) every layer goes back to its loaded weight.
    pub fn activate(&self, wanted: &[(Arc<Adapter>, f64)]) -> Result<ActivationReport> {
        let started = Instant::now();
        let mut plan: Plan = BTreeMap::new();
        for (adapter, weight) in wanted {
            if *weight == 0.0 {
                continue;
            }
            for delta in &adapter.deltas {
                let entry = plan
                    .entry((delta.network, delta.layer.name().to_string()))
                    .or_insert_with(|| (delta.layer.clone(), Vec::new(), Vec::new()));
                entry.1.push((delta, *weight));
                entry.2.push((adapter.id.clone(), weight.to_bits()));
            }
        }
        let mut active = self.active.lock();
        let mut report = ActivationReport::default();
        let result = (|| -> Result<()> {
            for (key, (layer, _)) in &active.layers {
                if !plan.contains_key(key) {
                    layer.restore();
                    report.layers_restored += 1;
                }
            }
            for (key, (layer, contributions, signature)) in &plan {
                if active.layers.get(key).map(|(_, current)| current) != Some(signature) {
                    layer.set(fused_weight(layer.original(), contributions)?)?;
                    report.layers_patched += 1;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                active.layers = plan.into_iter().map(|(key, (layer, _, signature))| (key, (layer, signature))).collect();
                report.elapsed = started.elapsed();
                Ok(report)
            }
            Err(err) => {
                for (layer, ..) in active.layers.values() {
                    layer.restore();
                }
                for (layer, ..) in plan.values() {
                    layer.restore();
                }
                active.layers.clear();
                Err(err)
            }
        }
    }
}

/// `W + Σ weight · scale · up @ down` in float32, cast back to W's dtype (peft's `merge`:
/// `base_layer.weight.data += (B @ A) * scaling`, convolutions flattened to (out, in·kh·kw)).
fn fused_weight(original: &Tensor, contributions: &[(&LayerDelta, f64)]) -> Result<Tensor> {
    let device = original.device();
    let out = original.dim(0)?;
    let rest = original.elem_count() / out;
    let mut fused = original.to_dtype(DType::F32)?.reshape((out, rest))?;
    for (delta, weight) in contributions {
        let rank = delta.down.dim(0)?;
        let up = delta.up.to_device(device)?.to_dtype(DType::F32)?.reshape((out, rank))?;
        let down = delta.down.to_device(device)?.to_dtype(DType::F32)?.reshape((rank, rest))?;
        fused = (fused + (up.matmul(&down)? * (weight * delta.scale_per_unit_weight))?)?;
    }
    Ok(fused.reshape(original.shape())?.to_dtype(original.dtype())?)
}

/// Whether down (rank, in[, kh, kw]) and up (out, rank[, 1, 1]) update a weight (out, in[, kh, kw]).
fn check_fits(down: &[usize], up: &[usize], weight: &[usize]) -> std::result::Result<(), String> {
    let out = weight[0];
    let per_output: usize = weight[1..].iter().product();
    let down_per_rank: usize = down[1..].iter().product();
    let spatial_ok = down.len() == 2 || weight.len() == 2 || down[2..] == weight[2..];
    if up[0] != out || down[1] != weight[1] || down_per_rank != per_output || !spatial_ok {
        return Err(format!("LoRA down {down:?} / up {up:?} cannot update a weight of shape {weight:?}"));
    }
    Ok(())
}

/// A LoRA as it went into an image, reported in `model_info.loaded_loras`.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedLora {
    pub name: String,
    pub path: String,
    pub weight: f64,
    pub format: &'static str,
    pub layers: usize,
}

/// Makes `adapters` fuse exactly the request's LoRAs. Every LoRA is found, read (through the
/// cache) and matched before any weight changes; problems come back as validation errors on
/// `lora.models[i].name`, all of them at once.
pub fn apply_request(adapters: &ModelAdapters, cache: &LoraCache, loras: &[LoraRequest], models_dir: Option<&Path>) -> Result<(Vec<LoadedLora>, ActivationReport)> {
    let mut errors = Vec::new();
    let mut wanted = Vec::new();
    let mut loaded = Vec::new();
    for (index, request) in loras.iter().enumerate() {
        let field = format!("lora.models[{index}].name");
        let resolved = resolve_lora_path(&request.name, models_dir).and_then(|path| {
            let cached = cache.get_or_read(&path)?;
            let adapter = adapters.resolve(&cached.file, cached.id.clone())?;
            Ok((path, adapter))
        });
        match resolved {
            Ok((path, adapter)) => {
                loaded.push(LoadedLora {
                    name: request.name.clone(),
                    path: path.display().to_string(),
                    weight: request.weight,
                    format: adapter.format.name(),
                    layers: adapter.deltas.len(),
                });
                wanted.push((Arc::new(adapter), request.weight));
            }
            Err(err) => errors.push(FieldError::new(field, detail(err))),
        }
    }
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let report = adapters.activate(&wanted)?;
    Ok((loaded, report))
}

fn detail(err: Error) -> String {
    match err {
        Error::ModelLoad(text) | Error::ModelNotFound(text) | Error::Io(text) => text,
        other => other.to_string(),
    }
}

/// A random rank-`rank` adapter on every attention projection of the UNet (to_q/k/v/out.0) and
/// of both text encoders (q/k/v/out_proj): the layers a typical SDXL character/style LoRA trains.
/// For benchmarks of apply/restore cost at full size.
pub fn synthetic_attention_adapter(adapters: &ModelAdapters, rank: usize) -> Result<Adapter> {
    let mut deltas = Vec::new();
    for network in [Network::Unet, Network::TextEncoder, Network::TextEncoder2] {
        for (name, layer) in adapters.layers().registry(network).iter() {
            let attention = [".to_q", ".to_k", ".to_v", ".to_out.0", ".q_proj", ".k_proj", ".v_proj", ".out_proj"];
            if !attention.iter().any(|suffix| name.ends_with(suffix)) {
                continue;
            }
            let (out, input) = layer.original().dims2()?;
            let device = layer.original().device();
            let std = 1.0 / (input as f64).sqrt();
            deltas.push(LayerDelta {
                network,
                layer: layer.clone(),
                down: Tensor::randn(0f32, std as f32, (rank, input), device)?,
                up: Tensor::randn(0f32, 0.01, (out, rank), device)?,
                scale_per_unit_weight: 1.0,
            });
        }
    }
    Ok(Adapter { id: format!("synthetic-attention-rank{rank}"), origin: "synthetic".into(), format: LoraFormat::Peft, deltas })
}

/// Fuses [`synthetic_attention_adapter`] at weight 0.8 and restores the loaded weights, timing
/// each with the device synchronised: (apply, restore, layers patched).
pub fn measure_apply_and_restore(adapters: &ModelAdapters, rank: usize) -> Result<(Duration, Duration, usize)> {
    let adapter = Arc::new(synthetic_attention_adapter(adapters, rank)?);
    let device = adapter.deltas.first().map(|d| d.layer.original().device().clone());
    let sync = || -> Result<()> {
        if let Some(device) = &device {
            device.synchronize()?;
        }
        Ok(())
    };
    sync()?;
    let started = Instant::now();
    let report = adapters.activate(&[(adapter, 0.8)])?;
    sync()?;
    let apply = started.elapsed();
    let started = Instant::now();
    adapters.activate(&[])?;
    sync()?;
    Ok((apply, started.elapsed(), report.layers_patched))
}
