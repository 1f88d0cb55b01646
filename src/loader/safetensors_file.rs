//! One `.safetensors` file as bytes (memory-mapped or owned), its header parsed once.
//! Every check a malformed file could fail happens here, on bytes, so it can be fuzzed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::tensor::{Metadata, TensorInfo, TensorView};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// Bytes of a weight file: a read-only memory map, so a multi-gigabyte checkpoint is
/// never copied whole into RAM, or an owned buffer (tests, fuzzing, built-in data).
pub enum WeightBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for WeightBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            WeightBytes::Mapped(map) => map,
            WeightBytes::Owned(bytes) => bytes,
        }
    }
}

pub struct SafetensorsFile {
    /// Where the bytes came from, for error messages.
    pub origin: String,
    bytes: Arc<WeightBytes>,
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
    /// The header's free-form `__metadata__` (diffusers keeps LoRA adapter configs there).
    user_metadata: HashMap<String, String>,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::ModelLoad(format!("{}: {e}", path.display())))?;
        // SAFETY: the map is read-only and private to this process; a host that truncates a
        // weight file while it is loaded is outside what any loader can defend against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::ModelLoad(format!("{}: {e}", path.display())))?;
        Self::from_bytes(WeightBytes::Mapped(map), path.display().to_string())
    }

    pub fn from_bytes(bytes: WeightBytes, origin: String) -> Result<Self> {
        let (header_len, metadata): (usize, Metadata) = SafeTensors::read_metadata(bytes.as_ref())
            .map_err(|e| Error::ModelLoad(format!("{origin} is not a valid safetensors file: {e}")))?;
        let tensors = metadata.tensors().into_iter().map(|(name, info)| (name, info.clone())).collect();
        let user_metadata = metadata.metadata().clone().unwrap_or_default();
        Ok(Self { origin, bytes: Arc::new(bytes), data_start: 8 + header_len, tensors, user_metadata })
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A value of the header's `__metadata__` map.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.user_metadata.get(key).map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|info| info.shape.as_slice())
    }

    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::ModelLoad(format!("{}: missing tensor {name}", self.origin)))?;
        let (start, end) = info.data_offsets;
        let data = self
            .bytes
            .as_ref()
            .as_ref()
            .get(self.data_start + start..self.data_start + end)
            .ok_or_else(|| Error::ModelLoad(format!("{}: tensor {name} lies outside the file", self.origin)))?;
        let view = TensorView::new(info.dtype, info.shape.clone(), data)
            .map_err(|e| Error::ModelLoad(format!("{}: tensor {name}: {e}", self.origin)))?;
        view.load(device).map_err(|e| Error::ModelLoad(format!("{}: tensor {name}: {e}", self.origin)))
    }

    /// A tensor's stored bytes with its dtype and shape, as they lie in the file.
    pub fn raw(&self, name: &str) -> Option<(String, &[usize], &[u8])> {
        let info = self.tensors.get(name)?;
        let (start, end) = info.data_offsets;
        let data = self.bytes.as_ref().as_ref().get(self.data_start + start..self.data_start + end)?;
        Some((format!("{:?}", info.dtype), info.shape.as_slice(), data))
    }

    /// Total bytes of tensor data.
    pub fn data_len(&self) -> usize {
        self.bytes.as_ref().as_ref().len().saturating_sub(self.data_start)
    }
}
