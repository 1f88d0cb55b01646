//! Linear and convolution layers whose weight can be swapped while the model stays resident,
//! so LoRA adapters are fused into the weights and taken out again without reloading
//! (see `crate::lora`). Each layer keeps the tensor it was loaded with; restoring puts that
//! same tensor back, so a restored model is bit-identical to a freshly loaded one.
//!
//! While a network is built inside [`collect_layers`], every patchable layer registers
//! itself under its diffusers name (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`),
//! read from the `VarBuilder` prefix. Networks built outside it (the VAE) just aren't registered.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::Hasher;
use std::sync::Arc;

use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::ops::profile::{self, Category};

/// One layer's weight: the loaded tensor and the one forward passes use now.
pub struct PatchableWeight {
    name: String,
    original: Tensor,
    current: RwLock<Tensor>,
    /// While a network kept in host memory runs (`models::offload`): `current` copied to the
    /// compute device. Patching always works on the host tensors.
    uploaded: RwLock<Option<Tensor>>,
}

impl PatchableWeight {
    fn new(name: String, weight: Tensor) -> Self {
        Self { name, current: RwLock::new(weight.clone()), original: weight, uploaded: RwLock::new(None) }
    }

    /// Copies the current weight to `device` for the forward passes until [`Self::release_upload`].
    pub fn upload(&self, device: &candle_core::Device) -> Result<()> {
        let on_device = self.current.read().to_device(device)?;
        *self.uploaded.write() = Some(on_device);
        Ok(())
    }

    pub fn release_upload(&self) {
        *self.uploaded.write() = None;
    }

    /// The tensor forward passes use: the uploaded copy while there is one.
    fn forward_weight(&self) -> Tensor {
        if let Some(uploaded) = self.uploaded.read().as_ref() {
            return uploaded.clone();
        }
        self.current()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The weight as loaded, never modified.
    pub fn original(&self) -> &Tensor {
        &self.original
    }

    /// The weight forward passes use now (a cheap handle clone).
    pub fn current(&self) -> Tensor {
        self.current.read().clone()
    }

    /// Replaces the weight forward passes use; `weight` must have the original's shape and dtype.
    pub fn set(&self, weight: Tensor) -> Result<()> {
        if weight.dims() != self.original.dims() || weight.dtype() != self.original.dtype() {
            return Err(Error::Internal(format!(
                "{}: patched weight {:?} {:?} does not match the loaded {:?} {:?}",
                self.name,
                weight.dims(),
                weight.dtype(),
                self.original.dims(),
                self.original.dtype()
            )));
        }
        *self.current.write() = weight;
        Ok(())
    }

    /// Puts the loaded tensor back (the same storage, so bit-identical).
    pub fn restore(&self) {
        *self.current.write() = self.original.clone();
    }

    pub fn is_patched(&self) -> bool {
        self.current.read().id() != self.original.id()
    }
}

/// The patchable layers of one network, by diffusers name (sorted, so checksums are stable).
#[derive(Default, Clone)]
pub struct LayerRegistry {
    layers: BTreeMap<String, Arc<PatchableWeight>>,
}

impl LayerRegistry {
    pub fn get(&self, name: &str) -> Option<&Arc<PatchableWeight>> {
        self.layers.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<PatchableWeight>)> {
        self.layers.iter()
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Bytes held by patched weights on top of the loaded ones (a fused LoRA keeps a copy of
    /// every layer it changed until the adapter set changes): (on `device`, elsewhere: the
    /// host copies of networks kept in host memory).
    pub fn patched_bytes(&self, device: &candle_core::Device) -> (u64, u64) {
        let (mut device_bytes, mut host) = (0u64, 0u64);
        for layer in self.layers.values().filter(|layer| layer.is_patched()) {
            let current = layer.current();
            let bytes = (current.elem_count() * current.dtype().size_in_bytes()) as u64;
            if !current.device().same_device(device) {
                host += bytes;
            } else {
                device_bytes += bytes;
            }
        }
        (device_bytes, host)
    }

    /// FNV-1a over every layer's name and current weight bits: equal checksums before and
    /// after an apply/restore cycle prove the weights came back bit for bit.
    pub fn checksum(&self) -> Result<u64> {
        let mut hasher = Fnv1a::default();
        for (name, layer) in &self.layers {
            hasher.write(name.as_bytes());
            let weight = layer.current();
            hasher.write(format!("{:?}{:?}", weight.dtype(), weight.dims()).as_bytes());
            // Widening to f32 is exact for f16/bf16, so equal bits in ⇔ equal bits out.
            for value in weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
                hasher.write(&value.to_bits().to_le_bytes());
            }
        }
        Ok(hasher.finish())
    }
}

#[derive(Default)]
struct Fnv1a(Option<u64>);

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0.unwrap_or(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = self.finish();
        for &byte in bytes {
            hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = Some(hash);
    }
}

struct Collector {
    root: String,
    layers: BTreeMap<String, Arc<PatchableWeight>>,
    /// When a network is rebuilt on another device: its layers keep their identity (and patches).
    reuse: Option<LayerRegistry>,
}

thread_local! {
    static COLLECTOR: RefCell<Option<Collector>> = const { RefCell::new(None) };
}

/// Builds a network and returns it with the registry of its patchable layers. `root` is the
/// builder's prefix for the network (`""` for a diffusers folder, `"unet"` for the built-in
/// model), stripped from the registered names.
pub fn collect_layers<T>(root: &str, build: impl FnOnce() -> Result<T>) -> Result<(T, LayerRegistry)> {
    collect(Collector { root: root.to_string(), layers: BTreeMap::new(), reuse: None }, build)
}

/// Builds a network again (on another device) whose layers are `layers`: each patchable layer
/// is the registered one, not a new one, so LoRA patches made on it carry over.
pub fn rebuild_with_layers<T>(root: &str, layers: &LayerRegistry, build: impl FnOnce() -> Result<T>) -> Result<T> {
    let collector = Collector { root: root.to_string(), layers: BTreeMap::new(), reuse: Some(layers.clone()) };
    Ok(collect(collector, build)?.0)
}

fn collect<T>(collector: Collector, build: impl FnOnce() -> Result<T>) -> Result<(T, LayerRegistry)> {
    let previous = COLLECTOR.with(|c| c.borrow_mut().replace(collector));
    let built = build();
    let collected = COLLECTOR.with(|c| std::mem::replace(&mut *c.borrow_mut(), previous));
    let layers = collected.map(|c| c.layers).unwrap_or_default();
    Ok((built?, LayerRegistry { layers }))
}

fn register(prefix: String, weight: Tensor) -> Arc<PatchableWeight> {
    COLLECTOR.with(|c| {
        let mut collector = c.borrow_mut();
        let name = match collector.as_ref() {
            Some(collector) if !collector.root.is_empty() => {
                prefix.strip_prefix(&format!("{}.", collector.root)).map(str::to_string).unwrap_or(prefix)
            }
            _ => prefix,
        };
        if let Some(existing) = collector.as_ref().and_then(|c| c.reuse.as_ref()).and_then(|reuse| reuse.get(&name)) {
            return existing.clone();
        }
        let layer = Arc::new(PatchableWeight::new(name.clone(), weight));
        if let Some(collector) = collector.as_mut() {
            collector.layers.insert(name, layer.clone());
        }
        layer
    })
}

/// `nn.Linear` whose weight can be patched.
pub struct PatchableLinear {
    weight: Arc<PatchableWeight>,
    bias: Option<Tensor>,
}

impl PatchableLinear {
    fn from_candle(layer: candle_nn::Linear, prefix: String) -> Self {
        Self { bias: layer.bias().cloned(), weight: register(prefix, layer.weight().clone()) }
    }
}

impl Module for PatchableLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Same kernels as candle's Linear: the wrapper only decides which weight it sees.
        crate::ops::linear(x, &self.weight.forward_weight(), self.bias.as_ref())
    }
}

/// `candle_nn::linear` (same weight names and init hints), patchable.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<PatchableLinear> {
    let prefix = vb.prefix();
    Ok(PatchableLinear::from_candle(candle_nn::linear(in_dim, out_dim, vb)?, prefix))
}

pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<PatchableLinear> {
    let prefix = vb.prefix();
    Ok(PatchableLinear::from_candle(candle_nn::linear_no_bias(in_dim, out_dim, vb)?, prefix))
}

/// `nn.Conv2d` whose weight can be patched.
pub struct PatchableConv2d {
    weight: Arc<PatchableWeight>,
    bias: Option<Tensor>,
    config: Conv2dConfig,
}

/// candle convolves through an im2col buffer of Cin·k²·H·W elements: 4.8 GB for the SDXL
/// VAE's 128-channel 1024² layers. Above this size the output is computed in horizontal
/// bands (each with its own, smaller buffer); every output value is the same dot product.
const IM2COL_BAND_BYTES: usize = 256 << 20;

impl Module for PatchableConv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let category = if self.config.stride == 1 && self.weight.original.dim(2)? == 1 { Category::Conv1x1 } else { Category::Conv3x3 };
        profile::timed(category, x.device(), || {
            // cuDNN needs no im2col buffer, so no bands either.
            if let (Some(bias), 1, 1) = (&self.bias, self.config.dilation, self.config.groups) {
                if let Some(result) = crate::ops::cudnn_conv2d(x, &self.weight.forward_weight(), bias, self.config.padding, self.config.stride) {
                    return result;
                }
            }
            self.forward_in_bands(x, IM2COL_BAND_BYTES)
        })
    }
}

impl PatchableConv2d {
    /// The weight forward passes use now.
    pub fn weight_tensor(&self) -> Tensor {
        self.weight.forward_weight()
    }

    pub fn bias_tensor(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    fn forward_in_bands(&self, x: &Tensor, band_bytes: usize) -> candle_core::Result<Tensor> {
        let weight = self.weight.forward_weight();
        let conv = |config: Conv2dConfig, input: &Tensor| candle_nn::Conv2d::new(weight.clone(), self.bias.clone(), config).forward(input);
        let (batch, in_channels, height, width) = x.dims4()?;
        let kernel = weight.dim(2)?;
        let c = self.config;
        if kernel == 1 || c.stride != 1 || c.dilation != 1 || c.groups != 1 {
            return conv(c, x);
        }
        let out_height = (height + 2 * c.padding + 1).saturating_sub(kernel);
        let out_width = (width + 2 * c.padding + 1).saturating_sub(kernel);
        let buffer = batch * in_channels * kernel * kernel * out_height * out_width * x.dtype().size_in_bytes();
        if buffer <= band_bytes || out_height < 2 {
            return conv(c, x);
        }
        let bands = buffer.div_ceil(band_bytes).min(out_height);
        let rows_per_band = out_height.div_ceil(bands);
        let padded = x.pad_with_zeros(2, c.padding, c.padding)?.pad_with_zeros(3, c.padding, c.padding)?;
        let unpadded = Conv2dConfig { padding: 0, ..c };
        let mut outputs = Vec::with_capacity(bands);
        let mut start = 0;
        while start < out_height {
            let rows = rows_per_band.min(out_height - start);
            outputs.push(conv(unpadded, &padded.narrow(2, start, rows + kernel - 1)?)?);
            start += rows;
        }
        Tensor::cat(&outputs, 2)
    }
}

/// `candle_nn::conv2d` (same weight names and init hints), patchable.
pub fn conv2d(in_channels: usize, out_channels: usize, kernel: usize, config: Conv2dConfig, vb: VarBuilder) -> Result<PatchableConv2d> {
    let prefix = vb.prefix();
    let layer = candle_nn::conv2d(in_channels, out_channels, kernel, config, vb)?;
    Ok(PatchableConv2d { bias: layer.bias().cloned(), config, weight: register(prefix, layer.weight().clone()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn banded_convolution_equals_the_whole_one() {
        let device = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (5, 3, 3, 3), &device).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 5, &device).unwrap();
        let conv = PatchableConv2d {
            weight: Arc::new(PatchableWeight::new("w".into(), weight)),
            bias: Some(bias),
            config: Conv2dConfig { padding: 1, ..Default::default() },
        };
        let x = Tensor::randn(0f32, 1.0, (2, 3, 17, 9), &device).unwrap();
        let whole = conv.forward_in_bands(&x, usize::MAX).unwrap();
        let banded = conv.forward_in_bands(&x, 1000).unwrap();
        let diff = (whole - banded).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn registers_by_name_and_restores_the_same_storage() {
        let mut tensors = std::collections::HashMap::new();
        tensors.insert("unet.proj.weight".to_string(), Tensor::ones((3, 2), DType::F32, &Device::Cpu).unwrap());
        tensors.insert("unet.proj.bias".to_string(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let (layer, registry) = collect_layers("unet", || linear(2, 3, vb.pp("unet").pp("proj"))).unwrap();
        let weight = registry.get("proj").expect("registered without the root prefix");
        let before = registry.checksum().unwrap();
        weight.set((weight.original() * 2.0).unwrap()).unwrap();
        assert!(weight.is_patched());
        let x = Tensor::ones((1, 2), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(layer.forward(&x).unwrap().to_vec2::<f32>().unwrap(), vec![vec![4f32, 4., 4.]]);
        assert_ne!(registry.checksum().unwrap(), before);
        weight.restore();
        assert!(!weight.is_patched());
        assert_eq!(registry.checksum().unwrap(), before);
    }
}
