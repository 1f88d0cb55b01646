//! A set of weight files seen through a name map, handed to the model builders as a
//! candle `VarBuilder`. The builders ask for diffusers names; the map says where each
//! lives (which file, which key, whether it is a slice of a fused tensor or needs a reshape).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::safetensors_file::SafetensorsFile;
use crate::error::{Error, Result};

/// How a requested (diffusers-named) tensor is produced from stored tensors.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A stored tensor, reshaped to the requested shape when the element count matches
    /// (the LDM VAE stores attention projections as 1×1 convolutions).
    Key(String),
    /// Rows `part·n .. (part+1)·n` of a fused tensor (OpenCLIP `in_proj_weight` holds q, k, v).
    Chunk { key: String, part: usize, parts: usize },
    /// The transpose of a stored 2-D tensor (OpenCLIP `text_projection`).
    Transposed(String),
}

impl Source {
    /// The stored tensor this source reads.
    pub fn key(&self) -> &str {
        match self {
            Source::Key(key) | Source::Transposed(key) | Source::Chunk { key, .. } => key,
        }
    }
}

pub type KeyMap = Arc<dyn Fn(&str) -> Option<Source> + Send + Sync>;

/// Files of one model component plus the name map.
pub struct WeightSet {
    files: Vec<Arc<SafetensorsFile>>,
    index: HashMap<String, usize>,
    map: KeyMap,
    label: String,
}

impl WeightSet {
    pub fn new(files: Vec<Arc<SafetensorsFile>>, map: KeyMap, label: impl Into<String>) -> Self {
        let mut index = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.names() {
                index.insert(name.clone(), i);
            }
        }
        Self { files, index, map, label: label.into() }
    }

    /// Identity map: the files already use diffusers names under `prefix`.
    pub fn with_prefix(files: Vec<Arc<SafetensorsFile>>, prefix: &str, label: impl Into<String>) -> Self {
        let prefix = prefix.to_string();
        Self::new(files, Arc::new(move |name: &str| Some(Source::Key(format!("{prefix}{name}")))), label)
    }

    fn stored(&self, key: &str, device: &Device) -> Result<Tensor> {
        let file = self
            .index
            .get(key)
            .ok_or_else(|| Error::ModelLoad(format!("{}: missing weight {key}", self.label)))?;
        self.files[*file].load(key, device)
    }

    pub fn contains_stored(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn get(&self, name: &str, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let source = (self.map)(name).ok_or_else(|| Error::ModelLoad(format!("{}: no mapping for weight {name}", self.label)))?;
        let tensor = match &source {
            Source::Key(key) => {
                let tensor = self.stored(key, device)?;
                if tensor.dims() != shape.dims() && tensor.elem_count() == shape.elem_count() && tensor.rank() == 4 {
                    tensor.reshape(shape)?
                } else {
                    tensor
                }
            }
            Source::Chunk { key, part, parts } => {
                let tensor = self.stored(key, device)?;
                let rows = tensor.dim(0)? / parts;
                tensor.narrow(0, part * rows, rows)?
            }
            Source::Transposed(key) => self.stored(key, device)?.t()?.contiguous()?,
        };
        if tensor.dims() != shape.dims() {
            return Err(Error::ModelLoad(format!(
                "{}: weight {name} has shape {:?}, the model expects {:?} (is this checkpoint the architecture its config says?)",
                self.label,
                tensor.dims(),
                shape.dims()
            )));
        }
        Ok(tensor.to_dtype(dtype)?)
    }

    pub fn contains(&self, name: &str) -> bool {
        (self.map)(name).is_some_and(|source| self.contains_stored(source.key()))
    }

    pub fn into_var_builder(self: Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(self.into_backend(), dtype, device.clone())
    }

    pub fn into_backend(self: Arc<Self>) -> Box<dyn SimpleBackend> {
        Box::new(WeightBackend(self))
    }
}

struct WeightBackend(Arc<WeightSet>);

impl SimpleBackend for WeightBackend {
    fn get(&self, shape: Shape, name: &str, _hint: candle_nn::Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.0.get(name, &shape, dtype, device).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let source = (self.0.map)(name).ok_or_else(|| candle_core::Error::Msg(format!("no mapping for {name}")))?;
        self.0.stored(source.key(), device).and_then(|t| Ok(t.to_dtype(dtype)?)).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// candle wraps backend errors in its own; recover ours so the host sees MODEL_LOAD_ERROR.
pub fn model_load_error(err: Error, component: &str) -> Error {
    match err {
        Error::Device(text) => Error::ModelLoad(format!("{component}: {text}")),
        other => other,
    }
}

/// Passes weights through and adds up the bytes of every tensor handed out, so the engine
/// knows what a loaded network really holds (in its compute dtype, on its device).
pub struct CountingBackend {
    inner: Box<dyn SimpleBackend>,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl CountingBackend {
    pub fn new(inner: Box<dyn SimpleBackend>, bytes: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self { inner, bytes }
    }

    fn count(&self, tensor: candle_core::Result<Tensor>) -> candle_core::Result<Tensor> {
        if let Ok(tensor) = &tensor {
            let bytes = (tensor.elem_count() * tensor.dtype().size_in_bytes()) as u64;
            self.bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        tensor
    }
}

impl SimpleBackend for CountingBackend {
    fn get(&self, shape: Shape, name: &str, hint: candle_nn::Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.count(self.inner.get(shape, name, hint, dtype, device))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.count(self.inner.get_unchecked(name, dtype, device))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}
