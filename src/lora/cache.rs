//! Finding LoRA files by name, and a small LRU of parsed files so that switching between a few
//! adapters never re-reads them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::loader::lora::{read_lora_file, LoraFile};

/// How many parsed LoRA files stay cached (their tensors live on the CPU, in the file's dtype).
pub(crate) const DEFAULT_CAPACITY: usize = 8;

/// `name` as an existing path; `models_dir/loras/<name>.safetensors`; `models_dir/<name>.safetensors`
/// (a name that already ends in `.safetensors` is also tried as is in both folders).
pub fn resolve_lora_path(name: &str, models_dir: Option<&Path>) -> Result<PathBuf> {
    let direct = PathBuf::from(name);
    if direct.is_file() {
        return Ok(direct);
    }
    let mut tried = vec![direct.display().to_string()];
    if let Some(dir) = models_dir {
        let file_name = if name.ends_with(".safetensors") { name.to_string() } else { format!("{name}.safetensors") };
        for candidate in [dir.join("loras").join(&file_name), dir.join(&file_name)] {
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(candidate.display().to_string());
        }
    }
    Err(Error::ModelNotFound(format!(
        "no LoRA file '{name}': looked for {}{}",
        tried.join(", "),
        if models_dir.is_none() { " (no models_dir configured)" } else { "" }
    )))
}

pub struct CachedLora {
    /// Path, size and modification time: a file rewritten in place gets a new id.
    pub id: String,
    pub file: LoraFile,
}

pub struct LoraCache {
    capacity: usize,
    /// Least recently used first.
    entries: Mutex<Vec<Arc<CachedLora>>>,
}

impl Default for LoraCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl LoraCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: Mutex::new(Vec::new()) }
    }

    fn file_id(path: &Path) -> Result<String> {
        let canonical = path.canonicalize().map_err(|e| Error::ModelLoad(format!("{}: {e}", path.display())))?;
        let meta = std::fs::metadata(&canonical).map_err(|e| Error::ModelLoad(format!("{}: {e}", path.display())))?;
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
        Ok(format!("{}|{}|{modified}", canonical.display(), meta.len()))
    }

    /// The parsed file, read only when it is not cached (or changed on disk since).
    pub fn get_or_read(&self, path: &Path) -> Result<Arc<CachedLora>> {
        let id = Self::file_id(path)?;
        {
            let mut entries = self.entries.lock();
            if let Some(position) = entries.iter().position(|entry| entry.id == id) {
                let entry = entries.remove(position);
                entries.push(entry.clone());
                return Ok(entry);
            }
        }
        let entry = Arc::new(CachedLora { file: read_lora_file(path)?, id });
        let mut entries = self.entries.lock();
        entries.retain(|cached| cached.id != entry.id);
        entries.push(entry.clone());
        while entries.len() > self.capacity {
            entries.remove(0);
        }
        Ok(entry)
    }

    /// The cached files' paths, least recently used first.
    pub fn paths(&self) -> Vec<String> {
        // The id is "path|size|mtime": the path is everything before the last two fields.
        self.entries.lock().iter().map(|entry| entry.id.rsplitn(3, '|').last().unwrap_or(&entry.id).to_string()).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
