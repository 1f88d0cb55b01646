//! Where a network's weights live between requests. `precision.cpu_offload` keeps the text
//! encoders and the VAE in host memory and builds each on the compute device only while it
//! runs (diffusers' `enable_model_cpu_offload`, at the granularity of one network).
//!
//! An offloaded network is built once on the host; every tensor its builders asked for is kept
//! by name (the same storage the host network holds, so nothing is stored twice). To run, the
//! network is built again from those tensors on the compute device; its patchable layers are
//! the host network's own (`patchable::rebuild_with_layers`) with their current weights
//! uploaded, so LoRA patches fused on the host apply on the device too. Dropping the
//! [`OnDevice`] frees the device copy.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use parking_lot::Mutex;

use super::patchable::{collect_layers, rebuild_with_layers, LayerRegistry, PatchableWeight};
use crate::error::Result;

/// Builds the network from a `VarBuilder` (the same builder the loader used).
pub type NetworkBuilder<T> = Box<dyn Fn(VarBuilder) -> Result<T> + Send + Sync>;

pub enum Placement<T> {
    /// Built on the compute device once, at load.
    Resident(T),
    /// Kept in host memory; built on the compute device for each use.
    Offloaded(OffloadedNetwork<T>),
}

pub struct OffloadedNetwork<T> {
    on_host: T,
    tensors: Arc<HashMap<String, Tensor>>,
    layers: LayerRegistry,
    root: String,
    dtype: DType,
    device: Device,
    build: NetworkBuilder<T>,
}

impl<T> Placement<T> {
    /// Builds the network on the compute device, once. Returns its patchable layers.
    pub fn resident(source: Box<dyn SimpleBackend>, root: &str, dtype: DType, device: &Device, build: NetworkBuilder<T>) -> Result<(Self, LayerRegistry)> {
        let vb = var_builder(source, root, dtype, device);
        let (network, layers) = collect_layers(root, || build(vb))?;
        Ok((Self::Resident(network), layers))
    }

    /// Builds the network on the host, keeping what it loaded for later device builds.
    /// `root` is the builder prefix the loader uses for it. Returns its patchable layers,
    /// which live on the host (LoRA patches them there).
    pub fn offloaded(source: Box<dyn SimpleBackend>, root: &str, dtype: DType, device: &Device, build: NetworkBuilder<T>) -> Result<(Self, LayerRegistry)> {
        let recorder = Arc::new(Recorder { source, loaded: Mutex::new(HashMap::new()) });
        let vb = var_builder(Box::new(SharedRecorder(recorder.clone())), root, dtype, &Device::Cpu);
        let (on_host, layers) = collect_layers(root, || build(vb))?;
        let tensors = std::mem::take(&mut *recorder.loaded.lock());
        let offloaded = OffloadedNetwork {
            on_host,
            tensors: Arc::new(tensors),
            layers: layers.clone(),
            root: root.to_string(),
            dtype,
            device: device.clone(),
            build,
        };
        Ok((Self::Offloaded(offloaded), layers))
    }

    /// The network for its configuration and structure. Offloaded, it is the host copy: run it
    /// through [`Self::on_device`].
    pub fn network(&self) -> &T {
        match self {
            Self::Resident(network) => network,
            Self::Offloaded(offloaded) => &offloaded.on_host,
        }
    }

    pub fn is_offloaded(&self) -> bool {
        matches!(self, Self::Offloaded(_))
    }

    /// The network on the compute device: the resident one, or a device build of the host copy
    /// that lives as long as the returned value.
    pub fn on_device(&self) -> Result<OnDevice<'_, T>> {
        match self {
            Self::Resident(network) => Ok(OnDevice::Resident(network)),
            Self::Offloaded(offloaded) => offloaded.build_on_device(),
        }
    }
}

impl<T> OffloadedNetwork<T> {
    fn build_on_device(&self) -> Result<OnDevice<'_, T>> {
        // Released on every path out, including a failed upload or build.
        let uploaded = UploadedLayers(&self.layers);
        for (_, layer) in self.layers.iter() {
            layer.upload(&self.device)?;
        }
        let backend = HostTensors { tensors: self.tensors.clone(), layers: self.layers.clone(), root: self.root.clone() };
        let vb = var_builder(Box::new(backend), &self.root, self.dtype, &self.device);
        let network = rebuild_with_layers(&self.root, &self.layers, || (self.build)(vb))?;
        Ok(OnDevice::Built { network, _uploaded: uploaded })
    }
}

/// A builder over `backend` that reads the network under `root` (none when empty).
pub(crate) fn var_builder(backend: Box<dyn SimpleBackend>, root: &str, dtype: DType, device: &Device) -> VarBuilder<'static> {
    let vb = VarBuilder::from_backend(backend, dtype, device.clone());
    if root.is_empty() {
        vb
    } else {
        vb.pp(root)
    }
}

/// A network ready on the compute device.
pub enum OnDevice<'a, T> {
    Resident(&'a T),
    Built { network: T, _uploaded: UploadedLayers<'a> },
}

impl<T> Deref for OnDevice<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Self::Resident(network) => network,
            Self::Built { network, .. } => network,
        }
    }
}

/// Frees the device copies of an offloaded network's patchable weights when dropped.
pub struct UploadedLayers<'a>(&'a LayerRegistry);

impl Drop for UploadedLayers<'_> {
    fn drop(&mut self) {
        for (_, layer) in self.0.iter() {
            layer.release_upload();
        }
    }
}

/// Loads from `source` on the host and keeps every tensor by name.
struct Recorder {
    source: Box<dyn SimpleBackend>,
    loaded: Mutex<HashMap<String, Tensor>>,
}

struct SharedRecorder(Arc<Recorder>);

impl SimpleBackend for SharedRecorder {
    fn get(&self, shape: Shape, name: &str, hint: Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.0.source.get(shape, name, hint, dtype, device)?;
        self.0.loaded.lock().insert(name.to_string(), tensor.clone());
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.0.source.get_unchecked(name, dtype, device)?;
        self.0.loaded.lock().insert(name.to_string(), tensor.clone());
        Ok(tensor)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.source.contains_tensor(name)
    }
}

/// Serves a device build from the host tensors: patchable weights are the uploaded copies
/// (the layer itself is reused, so these only satisfy the builder), the rest is copied over.
struct HostTensors {
    tensors: Arc<HashMap<String, Tensor>>,
    layers: LayerRegistry,
    root: String,
}

impl HostTensors {
    fn patchable_layer(&self, name: &str) -> Option<&Arc<PatchableWeight>> {
        let relative = if self.root.is_empty() { Some(name) } else { name.strip_prefix(&self.root).and_then(|rest| rest.strip_prefix('.')) };
        relative.and_then(|relative| relative.strip_suffix(".weight")).and_then(|layer| self.layers.get(layer))
    }

    fn host_tensor(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| candle_core::Error::Msg(format!("offloaded network has no tensor {name}")))
    }
}

impl SimpleBackend for HostTensors {
    fn get(&self, shape: Shape, name: &str, _hint: Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        if self.patchable_layer(name).is_some() {
            // The builder discards this tensor (the registered layer is reused): don't copy it.
            return Tensor::zeros((), dtype, device)?.broadcast_as(shape);
        }
        let tensor = self.host_tensor(name)?;
        if tensor.shape() != &shape {
            candle_core::bail!("offloaded tensor {name} has shape {:?}, the builder expects {:?}", tensor.dims(), shape.dims());
        }
        tensor.to_device(device)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.host_tensor(name)?.to_device(device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}
