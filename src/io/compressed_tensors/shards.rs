//! Where each tensor of a checkpoint lives: [`Shards`] holds one reader per safetensors
//! file (a single file, or the shards a [`SHARD_INDEX_NAME`] lists) and the shard of each
//! tensor, so the rest of the reader asks for tensors by name only.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::reader::{RawTensor, SafetensorsReader};

/// The file name of the index of a sharded checkpoint, as transformers and llm-compressor
/// write it.
pub const SHARD_INDEX_NAME: &str = "model.safetensors.index.json";

/// Where a tensor of the checkpoint lives: one reader per safetensors file (one, or the
/// shards of `model.safetensors.index.json`) and the shard holding each tensor.
#[derive(Debug)]
pub(super) struct Shards {
    pub(super) readers: Vec<SafetensorsReader>,
    /// Tensor name → index into `readers` (only for sharded checkpoints).
    index: std::collections::HashMap<String, usize>,
}

impl Shards {
    pub(super) fn single(reader: SafetensorsReader) -> Self {
        Self {
            readers: vec![reader],
            index: Default::default(),
        }
    }

    /// Opens the index at `index_path` (`{"metadata": {..}, "weight_map": {tensor: shard
    /// file}}`) and every shard it lists (file names in the index's directory; headers
    /// only).
    ///
    /// # Errors
    /// As [`CtCheckpoint::open_sharded`](super::CtCheckpoint::open_sharded) for the index
    /// and shards.
    pub(super) fn from_index(index_path: &Path) -> Result<Self> {
        let text = std::fs::read(index_path).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", index_path.display()),
            ))
        })?;
        let bad = |reason: String| Error::Corrupt {
            what: format!("shard index {}", index_path.display()),
            reason,
        };
        let index: Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut files: Vec<String> = Vec::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("{tensor}: the shard is not a string")))?;
            if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
                return Err(bad(format!("{tensor}: shard {file:?} is not a file name")));
            }
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
        }
        files.sort();
        let mut readers = Vec::with_capacity(files.len());
        let mut where_is = std::collections::HashMap::new();
        for (i, file) in files.iter().enumerate() {
            let reader = SafetensorsReader::open(dir.join(file))?;
            for name in reader.names() {
                if let Some(j) = where_is.insert(name.clone(), i) {
                    return Err(bad(format!(
                        "tensor {name} is in two shards, {} and {file}",
                        files[j]
                    )));
                }
            }
            readers.push(reader);
        }
        for (tensor, file) in map {
            let listed = file.as_str().unwrap_or_default();
            let holder = where_is.get(tensor).map(|&i| files[i].as_str());
            if holder != Some(listed) {
                return Err(bad(format!(
                    "the index puts {tensor} in {listed}, which does not hold it"
                )));
            }
        }
        Ok(Shards {
            readers,
            index: where_is,
        })
    }

    fn reader_of(&self, name: &str) -> Option<&SafetensorsReader> {
        if self.readers.len() == 1 {
            return self.readers.first();
        }
        self.index.get(name).and_then(|&i| self.readers.get(i))
    }

    pub(super) fn info(&self, name: &str) -> Option<&safetensors::tensor::TensorInfo> {
        self.reader_of(name).and_then(|r| r.info(name))
    }

    pub(super) fn read(&self, name: &str) -> Result<RawTensor<'_>> {
        match self.reader_of(name) {
            Some(r) => r.read(name),
            None => Err(Error::Missing {
                what: "tensor",
                name: name.to_string(),
            }),
        }
    }

    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.readers.iter().flat_map(|r| r.names()).collect();
        names.sort();
        names
    }
}
