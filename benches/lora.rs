//! LoRA apply/restore cost on the CPU (fused adapters: this is the whole per-switch cost; the
//! denoising steps cost what they cost without LoRA). Full-size SDXL at rank 32 on a GPU is
//! measured by `sdxl::lora::measure_apply_and_restore` from the GPU bench.
//!
//! - the tiny fixture LoRA on the tiny model: read + parse + match (a cache miss), apply, restore;
//! - one SDXL-width transformer (1280 channels, 20 heads, cross-attention 2048, depth 1) with a
//!   rank-32 adapter on its 8 attention projections: the unit SDXL's ~70 UNet transformer
//!   blocks repeat, to extrapolate a full SDXL attention LoRA on this CPU.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion};
use sdxl::loader::lora::read_lora_file;
use sdxl::loader::{self, LoadOptions};
use sdxl::lora::{synthetic_attention_adapter, Adapter, ModelAdapters};
use sdxl::models::patchable::{collect_layers, LayerRegistry};
use sdxl::models::transformer_2d::{Transformer2DConfig, Transformer2DModel};
use sdxl::models::UNetConfig;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Times `activate(set)` only; `undo` runs between samples, untimed.
fn time_switch(adapters: &ModelAdapters, set: &[(Arc<Adapter>, f64)], undo: &[(Arc<Adapter>, f64)], iterations: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        let started = Instant::now();
        adapters.activate(set).unwrap();
        total += started.elapsed();
        adapters.activate(undo).unwrap();
    }
    total
}

fn bench_adapter(c: &mut Criterion, label: &str, adapters: &ModelAdapters, adapter: Adapter) {
    let set = [(Arc::new(adapter), 0.8)];
    c.bench_function(&format!("lora_apply_{label}"), |b| b.iter_custom(|n| time_switch(adapters, &set, &[], n)));
    c.bench_function(&format!("lora_restore_{label}"), |b| b.iter_custom(|n| time_switch(adapters, &[], &set, n)));
}

fn tiny(c: &mut Criterion) {
    let options = LoadOptions { role: sdxl::loader::ModelRole::Base, share_text_encoder_2_with: None, device: &Device::Cpu, dtype: DType::F32, vae_dtype: DType::F32, config_dir: None, cpu_offload: false };
    let model = loader::load_diffusers_folder(&fixtures().join("tiny-sdxl"), &options).expect("tiny model");
    let path = fixtures().join("lora/tiny_lora_kohya.safetensors");
    c.bench_function("lora_read_and_match_tiny_kohya_file", |b| {
        b.iter(|| model.adapters.resolve(&read_lora_file(&path).unwrap(), "bench".into()).unwrap())
    });
    let adapter = model.adapters.resolve(&read_lora_file(&path).unwrap(), "tiny".into()).unwrap();
    bench_adapter(c, "tiny_fixture_15_layers", &model.adapters, adapter);
}

fn sdxl_block(c: &mut Criterion) {
    let vb = sdxl::loader::builtin::device_random_var_builder(DType::F32, &Device::Cpu);
    let config = Transformer2DConfig { channels: 1280, heads: 20, depth: 1, context_dim: 2048, groups: 32, use_linear_projection: true };
    let (_block, registry) = collect_layers("", || Transformer2DModel::new(vb.clone(), &config)).unwrap();
    let adapters = ModelAdapters::new(registry, LayerRegistry::default(), LayerRegistry::default(), &UNetConfig::sdxl_base());
    let adapter = synthetic_attention_adapter(&adapters, 32).unwrap();
    assert_eq!(adapter.deltas.len(), 8);
    let mut group = c.benchmark_group("sdxl_width");
    group.sample_size(20);
    let set = [(Arc::new(adapter), 0.8)];
    group.bench_function("lora_apply_rank32_one_1280_transformer_block", |b| b.iter_custom(|n| time_switch(&adapters, &set, &[], n)));
    group.bench_function("lora_restore_rank32_one_1280_transformer_block", |b| b.iter_custom(|n| time_switch(&adapters, &[], &set, n)));
    group.finish();
}

criterion_group!(benches, tiny, sdxl_block);
criterion_main!(benches);
