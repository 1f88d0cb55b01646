//! One `.safetensors` file, its header parsed and checked once. Every check a malformed file
//! could fail happens here, so it can be fuzzed.
//!
//! A file on disk is read with positioned reads, tensor by tensor, never memory-mapped: a
//! mapped file that another process truncates or rewrites in place while it loads would kill
//! the host with SIGBUS, where a read just comes back short and becomes an error.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::tensor::{Metadata, TensorInfo, TensorView};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// safetensors' own bound on the header (its `MAX_HEADER_SIZE`): a length field beyond it is
/// refused before anything is allocated for it.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Where the tensor data lies: a file read on demand, or bytes in memory (tests, fuzzing,
/// built-in data).
enum WeightBytes {
    File(File),
    Owned(Vec<u8>),
}

pub struct SafetensorsFile {
    /// Where the bytes came from, for error messages.
    pub origin: String,
    bytes: WeightBytes,
    data_start: u64,
    /// Bytes of tensor data, as the header accounts for them (and as the file had when opened).
    data_len: u64,
    tensors: HashMap<String, TensorInfo>,
    /// The header's free-form `__metadata__` (diffusers keeps LoRA adapter configs there).
    user_metadata: HashMap<String, String>,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::ModelLoad(format!("{origin}: {e}")))?;
        let invalid = |reason: String| Error::ModelLoad(format!("{origin} is not a valid safetensors file: {reason}"));
        let file_len = file.metadata().map_err(|e| Error::ModelLoad(format!("{origin}: {e}")))?.len();
        let mut length_field = [0u8; 8];
        file.read_exact_at(&mut length_field, 0).map_err(|_| invalid(format!("{file_len} bytes, too short for the header length")))?;
        let header_len = u64::from_le_bytes(length_field);
        if header_len > MAX_HEADER_BYTES {
            return Err(invalid(format!("header length {header_len} exceeds safetensors' limit of {MAX_HEADER_BYTES} bytes")));
        }
        if 8 + header_len > file_len {
            return Err(invalid(format!("header length {header_len} runs past the end of the {file_len}-byte file")));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8).map_err(|e| Error::ModelLoad(format!("{origin}: {e}")))?;
        // Metadata's own deserializer runs safetensors' checks: offsets in order, contiguous,
        // each the size its dtype and shape need, without overflow.
        let metadata: Metadata = serde_json::from_slice(&header).map_err(|e| invalid(format!("header: {e}")))?;
        let data_len = metadata.tensors().values().map(|info| info.data_offsets.1 as u64).max().unwrap_or(0);
        if 8 + header_len + data_len != file_len {
            return Err(invalid(format!(
                "the header accounts for {} bytes but the file has {file_len} (truncated, or not one safetensors file)",
                8 + header_len + data_len
            )));
        }
        Ok(Self::from_parts(WeightBytes::File(file), origin, 8 + header_len, data_len, &metadata))
    }

    pub fn from_bytes(bytes: Vec<u8>, origin: String) -> Result<Self> {
        let (header_len, metadata): (usize, Metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| Error::ModelLoad(format!("{origin} is not a valid safetensors file: {e}")))?;
        let data_start = 8 + header_len as u64;
        let data_len = bytes.len() as u64 - data_start;
        Ok(Self::from_parts(WeightBytes::Owned(bytes), origin, data_start, data_len, &metadata))
    }

    fn from_parts(bytes: WeightBytes, origin: String, data_start: u64, data_len: u64, metadata: &Metadata) -> Self {
        let tensors = metadata.tensors().into_iter().map(|(name, info)| (name, info.clone())).collect();
        let user_metadata = metadata.metadata().clone().unwrap_or_default();
        Self { origin, bytes, data_start, data_len, tensors, user_metadata }
    }

    /// A tensor's stored bytes: borrowed from memory, or read from the file (an error if the
    /// file has shrunk since it was opened).
    fn stored_bytes(&self, name: &str, info: &TensorInfo) -> Result<Cow<'_, [u8]>> {
        let (start, end) = info.data_offsets;
        match &self.bytes {
            WeightBytes::Owned(bytes) => {
                let range = self.data_start as usize + start..self.data_start as usize + end;
                bytes.get(range).map(Cow::Borrowed).ok_or_else(|| Error::ModelLoad(format!("{}: tensor {name} lies outside the file", self.origin)))
            }
            WeightBytes::File(file) => {
                let mut data = vec![0u8; end - start];
                file.read_exact_at(&mut data, self.data_start + start as u64).map_err(|e| {
                    Error::ModelLoad(format!("{}: tensor {name} could not be read ({e}): was the file changed or truncated while loading?", self.origin))
                })?;
                Ok(Cow::Owned(data))
            }
        }
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
        let data = self.stored_bytes(name, info)?;
        let view = TensorView::new(info.dtype, info.shape.clone(), &*data)
            .map_err(|e| Error::ModelLoad(format!("{}: tensor {name}: {e}", self.origin)))?;
        view.load(device).map_err(|e| Error::ModelLoad(format!("{}: tensor {name}: {e}", self.origin)))
    }

    /// A tensor's stored bytes with its dtype and shape, as they lie in the file.
    pub fn raw(&self, name: &str) -> Result<(String, &[usize], Cow<'_, [u8]>)> {
        let info = self.tensors.get(name).ok_or_else(|| Error::ModelLoad(format!("{}: missing tensor {name}", self.origin)))?;
        Ok((format!("{:?}", info.dtype), info.shape.as_slice(), self.stored_bytes(name, info)?))
    }

    /// Total bytes of tensor data.
    pub fn data_len(&self) -> usize {
        self.data_len as usize
    }
}
