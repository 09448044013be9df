//! [`CtCheckpoint`]: an opened compressed-tensors checkpoint (one file, a directory, or
//! shards with an index) with its parsed `quantization_config`, and access to its stored
//! tensors. Loading a layer from them is in `layer.rs`.

use std::path::Path;

use candle_core::{Device, Tensor};
use safetensors::tensor::Dtype;
use serde_json::Value;

use super::config::{parse_quantization_config, read_config, GroupArgs, ParsedConfig};
use super::shards::{Shards, SHARD_INDEX_NAME};
use crate::error::{Error, Result};
use crate::io::reader::SafetensorsReader;
use crate::io::{bytes_to_f16, bytes_to_f32};

/// An opened compressed-tensors checkpoint: one safetensors file, or the shards listed
/// by a `model.safetensors.index.json`, with the `quantization_config` of its config.
#[derive(Debug)]
pub struct CtCheckpoint {
    pub(super) shards: Shards,
    format: String,
    pub(super) groups: Vec<GroupArgs>,
    ignore: Vec<String>,
    pub(super) clamped: std::sync::atomic::AtomicUsize,
}

impl CtCheckpoint {
    /// Opens `safetensors_path` (header only) and reads `quantization_config` from the
    /// `config.json` at `config_path`.
    ///
    /// # Errors
    /// Reader errors; [`Error::Missing`] when the config has no `quantization_config`;
    /// [`Error::Unsupported`] for another `quant_method`, a format other than
    /// `int-quantized` / `pack-quantized` / `mixed-precision`, or asymmetric / non-int /
    /// actorder weights; [`Error::Corrupt`] for a malformed config.
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::CtCheckpoint;
    /// assert!(CtCheckpoint::open("/nonexistent.safetensors", "/nonexistent.json").is_err());
    /// ```
    pub fn open(safetensors_path: impl AsRef<Path>, config_path: impl AsRef<Path>) -> Result<Self> {
        let config = read_config(config_path.as_ref())?;
        Self::from_parts(SafetensorsReader::open(safetensors_path)?, &config)
    }

    /// Opens a checkpoint directory as transformers lays it out: `config.json` and either
    /// one `model.safetensors` or a sharded checkpoint ([`SHARD_INDEX_NAME`] and the
    /// shards it lists).
    ///
    /// # Errors
    /// As [`CtCheckpoint::open`] and [`CtCheckpoint::open_sharded`]; [`Error::Missing`]
    /// when the directory holds neither `model.safetensors` nor an index.
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::CtCheckpoint;
    /// assert!(CtCheckpoint::open_dir("/nonexistent-checkpoint").is_err());
    /// ```
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = dir.join("config.json");
        let index = dir.join(SHARD_INDEX_NAME);
        let single = dir.join("model.safetensors");
        if index.exists() {
            Self::open_sharded(index, config)
        } else if single.exists() {
            Self::open(single, config)
        } else {
            Err(Error::Missing {
                what: "checkpoint file",
                name: format!(
                    "{} or {} in {}",
                    "model.safetensors",
                    SHARD_INDEX_NAME,
                    dir.display()
                ),
            })
        }
    }

    /// Opens a sharded checkpoint: the index at `index_path` (`{"metadata": {..},
    /// "weight_map": {tensor: shard file}}`), every shard it lists (file names in the
    /// index's directory; headers only), and the config.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for an index that is not such an object, a shard name that is a
    /// path (`/`, `\`, `..`), a tensor listed for a shard that lacks it, or a tensor held
    /// by two shards; reader and config errors as [`CtCheckpoint::open`], naming the
    /// shard file.
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::CtCheckpoint;
    /// assert!(CtCheckpoint::open_sharded("/no/model.safetensors.index.json", "/no/config.json").is_err());
    /// ```
    pub fn open_sharded(
        index_path: impl AsRef<Path>,
        config_path: impl AsRef<Path>,
    ) -> Result<Self> {
        let index_path = index_path.as_ref();
        let config = read_config(config_path.as_ref())?;
        Self::from_shards(Shards::from_index(index_path)?, &config)
    }

    /// Builds a checkpoint from an opened reader and the parsed `config.json` (or the
    /// `quantization_config` object itself).
    ///
    /// # Errors
    /// As [`CtCheckpoint::open`].
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// use candle_compress::io::reader::SafetensorsReader;
    /// let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// let reader = SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert_eq!(ckpt.format(), "int-quantized");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_parts(reader: SafetensorsReader, config: &Value) -> Result<Self> {
        Self::from_shards(Shards::single(reader), config)
    }

    /// [`CtCheckpoint::from_parts`] with the `config.json` given as its bytes.
    ///
    /// # Errors
    /// [`Error::Json`] when the bytes are not JSON; as [`CtCheckpoint::open`] otherwise.
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::CtCheckpoint;
    /// use candle_compress::io::reader::SafetensorsReader;
    /// let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// let bytes = safetensors::serialize(none, None)?;
    /// let err = CtCheckpoint::from_config_bytes(SafetensorsReader::from_bytes(bytes)?, b"{oops").unwrap_err();
    /// assert!(matches!(err, candle_compress::Error::Json(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_config_bytes(reader: SafetensorsReader, config_json: &[u8]) -> Result<Self> {
        let config: Value = serde_json::from_slice(config_json)?;
        Self::from_parts(reader, &config)
    }

    fn from_shards(shards: Shards, config: &Value) -> Result<Self> {
        let ParsedConfig {
            format,
            groups,
            ignore,
        } = parse_quantization_config(config)?;
        Ok(Self {
            shards,
            format,
            groups,
            ignore,
            clamped: Default::default(),
        })
    }

    /// The checkpoint's `format`.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::PackQuantized { group: 64 }, &[]))?;
    /// assert_eq!(ckpt.format(), "pack-quantized");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn format(&self) -> &str {
        &self.format
    }

    /// The layers listed in `ignore`.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &["lm_head".into()]))?;
    /// assert_eq!(ckpt.ignored(), &["lm_head".to_string()]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ignored(&self) -> &[String] {
        &self.ignore
    }

    /// The reader of the first (for a single file: the only) safetensors file. For a
    /// sharded checkpoint use [`CtCheckpoint::names`] and [`CtCheckpoint::info`], which
    /// span every shard.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert!(ckpt.reader().names().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reader(&self) -> &SafetensorsReader {
        &self.shards.readers[0]
    }

    /// Number of safetensors files (1, or the shard count).
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert_eq!(ckpt.shard_count(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shard_count(&self) -> usize {
        self.shards.readers.len()
    }

    /// Every tensor name of the checkpoint (all shards), sorted.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert!(ckpt.names().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn names(&self) -> Vec<String> {
        self.shards.names()
    }

    /// The header entry of tensor `name`, whichever shard holds it.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert!(ckpt.info("fc.weight").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn info(&self, name: &str) -> Option<&safetensors::tensor::TensorInfo> {
        self.shards.info(name)
    }

    /// Int8 codes of `-128` loaded as `-127` so far, over every layer loaded from this
    /// checkpoint (see [`CtLayerReport::clamped_codes`](super::CtLayerReport::clamped_codes)).
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert_eq!(ckpt.clamped_codes(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clamped_codes(&self) -> usize {
        self.clamped.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn read_float(&self, name: &str) -> Result<Vec<f32>> {
        let raw = self.shards.read(name)?;
        Ok(match raw.dtype {
            Dtype::F32 => bytes_to_f32(&raw.data),
            Dtype::F16 => bytes_to_f16(&raw.data).iter().map(|v| v.to_f32()).collect(),
            Dtype::BF16 => raw
                .data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::metadata(
                    format!("{name} dtype"),
                    "F32, F16 or BF16",
                    format!("{other:?}"),
                ))
            }
        })
    }

    pub(super) fn expect_shape(
        &self,
        name: &str,
        dtype: Option<Dtype>,
        shape: &[usize],
    ) -> Result<()> {
        let info = self.shards.info(name).ok_or_else(|| Error::Missing {
            what: "tensor",
            name: name.to_string(),
        })?;
        if let Some(d) = dtype {
            if info.dtype != d {
                return Err(Error::metadata(
                    format!("{name} dtype"),
                    format!("{d:?}"),
                    format!("{:?}", info.dtype),
                ));
            }
        }
        if info.shape != shape {
            return Err(Error::shape(name.to_string(), shape, &info.shape));
        }
        Ok(())
    }

    /// Reads a float tensor of the checkpoint (an ignored layer's weight, a norm, …).
    ///
    /// # Errors
    /// [`Error::Missing`] when absent; [`Error::MetadataMismatch`] for a non-float dtype.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert!(ckpt.load_float("norm", &candle_core::Device::Cpu).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_float(&self, name: &str, device: &Device) -> Result<Tensor> {
        let shape = self
            .shards
            .info(name)
            .ok_or_else(|| Error::Missing {
                what: "tensor",
                name: name.to_string(),
            })?
            .shape
            .clone();
        let values = self.read_float(name)?;
        Ok(Tensor::from_vec(values, shape, device)?)
    }
}
