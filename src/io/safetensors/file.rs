//! [`CompressedFile`]: a file of our format opened through the validating
//! [`SafetensorsReader`], its manifest checked against the header (every part listed by
//! [`parts`] present with its dtype and shape), tensors read and decoded on demand.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use candle_core::{Device, Shape, Tensor};
use safetensors::tensor::Dtype;

use super::format::{parts, plain_candle_dtype, LayerEntry, Layout, TensorEntry};
use super::manifest::Manifest;
use crate::compressor::Compressed;
use crate::error::{Error, Result};
use crate::io::part_writer::Slot;
use crate::io::reader::{RawTensor, SafetensorsReader};
use crate::io::{bytes_to_f16, bytes_to_f32, bytes_to_i8};
use crate::nn::{QuantLinear, QuantLinearParts};
use crate::quant::{
    checked_elem_count, AffineTensor, BlockwiseInt8Tensor, Nf4Tensor, SymmetricInt4Tensor,
};
use crate::scheme::{CompressedTensor, Scheme};

/// One item of a loaded file.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// A compressed tensor (decompress it with [`Compressed::decompress`]).
    Compressed(CompressedTensor),
    /// A quantized linear layer.
    QuantLinear(QuantLinear),
    /// An uncompressed tensor.
    Plain(Tensor),
}

/// What an item of the file is, from the header alone (see [`CompressedFile::items`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ItemKind {
    /// A compressed tensor.
    Compressed(TensorEntry),
    /// A quantized linear layer.
    QuantLinear(LayerEntry),
    /// A plain tensor of this safetensors dtype and shape.
    Plain {
        /// Its dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<usize>,
    },
}

/// One item of the file, as listed by [`CompressedFile::items`].
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Name (or layer prefix).
    pub name: String,
    /// What it is.
    pub kind: ItemKind,
    /// Bytes it occupies in the file's data section (all its parts).
    pub stored_bytes: usize,
}

/// An opened compressed file: header and manifest validated, tensors read on demand.
///
/// Opening reads only the header; [`CompressedFile::load_tensor`] reads only the parts of
/// the tensor asked for (see [`SafetensorsReader`]). A safetensors file without the
/// `candle-compress` format key opens too: all its tensors are plain.
#[derive(Debug)]
pub struct CompressedFile {
    reader: SafetensorsReader,
    manifest: Manifest,
    plain: Vec<String>,
}

impl CompressedFile {
    /// Opens and validates `path` (header and manifest only).
    ///
    /// # Errors
    /// The reader's errors ([`SafetensorsReader::open`]); [`Error::Unsupported`] for
    /// another format version or an unknown scheme; [`Error::Corrupt`] for a malformed
    /// manifest; [`Error::Missing`] for a missing part (e.g. a scale tensor);
    /// [`Error::MetadataMismatch`] for a part whose dtype or size disagrees with shape ×
    /// scheme.
    ///
    /// ```
    /// use candle_compress::io::safetensors::CompressedFile;
    /// assert!(CompressedFile::open("/nonexistent.safetensors").is_err());
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_reader(SafetensorsReader::open(path)?)
    }

    /// Opens a file held in memory (a `Vec<u8>` or a caller's memory map).
    ///
    /// # Errors
    /// As [`CompressedFile::open`].
    ///
    /// ```
    /// use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let bytes = CompressedWriter::new().to_bytes()?;
    /// assert!(CompressedFile::from_bytes(bytes)?.items().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_bytes(bytes: impl AsRef<[u8]> + Send + Sync + 'static) -> Result<Self> {
        Self::from_reader(SafetensorsReader::from_bytes(bytes)?)
    }

    fn from_reader(reader: SafetensorsReader) -> Result<Self> {
        let manifest = Manifest::from_metadata(reader.metadata())?;
        let file = Self {
            reader,
            manifest,
            plain: Vec::new(),
        };
        file.check_parts()
    }

    /// Checks every manifest entry's parts (see [`parts`]) against the header and lists
    /// the plain tensors: the stored tensors no entry owns.
    fn check_parts(mut self) -> Result<Self> {
        let layouts = self
            .manifest
            .tensors
            .iter()
            .map(|(name, e)| (name, Layout::Tensor(e)))
            .chain(
                self.manifest
                    .layers
                    .iter()
                    .map(|(name, l)| (name, Layout::Layer(l))),
            );
        let mut owned = HashSet::new();
        for (name, layout) in layouts {
            for spec in parts(name, layout)? {
                self.check_part(&spec.slot)?;
                owned.insert(spec.slot.name);
            }
        }
        self.plain = self
            .reader
            .names()
            .into_iter()
            .filter(|n| !owned.contains(n))
            .collect();
        Ok(self)
    }

    /// Checks the stored tensor `slot.name` has the slot's dtype, element count and shape.
    fn check_part(&self, slot: &Slot) -> Result<()> {
        let full = slot.name.as_str();
        let info = self.reader.info(full).ok_or_else(|| Error::Missing {
            what: "part tensor",
            name: full.to_string(),
        })?;
        if info.dtype != slot.dtype {
            return Err(Error::metadata(
                format!("{full} dtype"),
                format!("{:?}", slot.dtype),
                format!("{:?}", info.dtype),
            ));
        }
        let count = checked_elem_count(&slot.shape, full)?;
        let found = checked_elem_count(&info.shape, full)?;
        if found != count {
            return Err(Error::metadata(
                format!("{full} element count (shape × scheme)"),
                count,
                found,
            ));
        }
        if info.shape != slot.shape {
            return Err(Error::metadata(
                format!("{full} shape (the manifest entry's layout)"),
                format!("{:?}", slot.shape),
                format!("{:?}", info.shape),
            ));
        }
        Ok(())
    }

    /// Every item of the file — compressed tensors, quantized layers and plain tensors —
    /// sorted by name, from the header alone.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter, ItemKind};
    /// let mut w = CompressedWriter::new();
    /// w.add_plain("b", &candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu)?)?;
    /// let file = CompressedFile::from_bytes(w.to_bytes()?)?;
    /// let items = file.items();
    /// assert_eq!((items[0].name.as_str(), items[0].stored_bytes), ("b", 8));
    /// assert!(matches!(items[0].kind, ItemKind::Plain { .. }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn items(&self) -> Vec<Item> {
        let bytes_of = |full: &str| {
            self.reader
                .info(full)
                .map_or(0, |i| i.data_offsets.1 - i.data_offsets.0)
        };
        // The parts were listed without error when the file was opened.
        let stored = |name: &str, layout| {
            parts(name, layout)
                .unwrap_or_default()
                .iter()
                .map(|s| bytes_of(&s.slot.name))
                .sum()
        };
        let mut items = Vec::new();
        for (name, e) in &self.manifest.tensors {
            items.push(Item {
                name: name.clone(),
                kind: ItemKind::Compressed(e.clone()),
                stored_bytes: stored(name, Layout::Tensor(e)),
            });
        }
        for (name, l) in &self.manifest.layers {
            items.push(Item {
                name: name.clone(),
                kind: ItemKind::QuantLinear(l.clone()),
                stored_bytes: stored(name, Layout::Layer(l)),
            });
        }
        for name in &self.plain {
            if let Some(info) = self.reader.info(name) {
                items.push(Item {
                    name: name.clone(),
                    kind: ItemKind::Plain {
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                    },
                    stored_bytes: bytes_of(name),
                });
            }
        }
        items.sort_by(|a, b| a.name.cmp(&b.name));
        items
    }

    /// The underlying safetensors reader.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let file = CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?;
    /// assert_eq!(file.reader().metadata().unwrap()["format"], "candle-compress");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reader(&self) -> &SafetensorsReader {
        &self.reader
    }

    /// The manifest entry of compressed tensor `name`, if it is one.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let file = CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?;
    /// assert!(file.tensor_entry("w").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tensor_entry(&self, name: &str) -> Option<&TensorEntry> {
        self.manifest.tensors.get(name)
    }

    /// The manifest entry of the quantized layer at `prefix`, if there is one.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let file = CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?;
    /// assert!(file.layer_entry("fc1").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn layer_entry(&self, prefix: &str) -> Option<&LayerEntry> {
        self.manifest.layers.get(prefix)
    }

    /// Whether `name` is a plain (uncompressed) tensor of the file.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// # let mut w = CompressedWriter::new();
    /// # w.add_plain("b", &candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu)?)?;
    /// let file = CompressedFile::from_bytes(w.to_bytes()?)?;
    /// assert!(file.is_plain("b"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_plain(&self, name: &str) -> bool {
        self.plain.iter().any(|p| p == name)
    }

    fn part(&self, name: &str, suffix: &str) -> Result<RawTensor<'_>> {
        self.reader.read(&format!("{name}.{suffix}"))
    }

    /// Reads compressed tensor `name` (only its parts), validated by the type's
    /// `from_parts`.
    ///
    /// # Errors
    /// [`Error::Missing`] when `name` is not a compressed tensor; the type's `from_parts`
    /// errors for corrupt contents (e.g. a negative scale).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// use candle_compress::{quant::Affine, Compressed, Compressor};
    /// let t = candle_core::Tensor::randn(0f32, 1., 100, &candle_core::Device::Cpu)?;
    /// let c = Affine::new(4, 32)?.compress(&t)?;
    /// let mut w = CompressedWriter::new();
    /// w.add_compressed("t", &c.clone().into())?;
    /// let file = CompressedFile::from_bytes(w.to_bytes()?)?;
    /// assert_eq!(file.load_compressed("t")?.size_bytes(), c.size_bytes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_compressed(&self, name: &str) -> Result<CompressedTensor> {
        let e = self
            .manifest
            .tensors
            .get(name)
            .ok_or_else(|| Error::Missing {
                what: "compressed tensor",
                name: name.to_string(),
            })?;
        let shape = Shape::from(e.shape.clone());
        let block = e.scheme.block_size();
        Ok(match e.scheme {
            Scheme::Int8 { .. } => {
                let q = bytes_to_i8(&self.part(name, "q")?.data);
                let s = bytes_to_f16(&self.part(name, "scales")?.data);
                BlockwiseInt8Tensor::from_parts(shape, e.dtype, block, q, s)?.into()
            }
            Scheme::Int4 { .. } => {
                let p = self.part(name, "packed")?.data.into_owned();
                let s = bytes_to_f16(&self.part(name, "scales")?.data);
                SymmetricInt4Tensor::from_parts(shape, e.dtype, block, p, s)?.into()
            }
            Scheme::Affine8 { .. } | Scheme::Affine4 { .. } => {
                let c = self.part(name, "codes")?.data.into_owned();
                let s = bytes_to_f32(&self.part(name, "scales")?.data);
                let z = bytes_to_f32(&self.part(name, "zero_points")?.data);
                let bits = e.scheme.code_bits();
                AffineTensor::from_parts(shape, e.dtype, bits, block, c, s, z)?.into()
            }
            Scheme::Nf4 { .. } => {
                let p = self.part(name, "packed")?.data.into_owned();
                let a = bytes_to_f32(&self.part(name, "absmax")?.data);
                Nf4Tensor::from_parts(shape, e.dtype, block, p, a)?.into()
            }
        })
    }

    /// Reads plain tensor `name` onto `device` in its stored dtype.
    ///
    /// # Errors
    /// [`Error::Missing`] when `name` is not a plain tensor; [`Error::Unsupported`] for a
    /// dtype candle lacks (e.g. a stray I8 tensor).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let b = candle_core::Tensor::new(&[1f32, 2.], &candle_core::Device::Cpu)?;
    /// let mut w = CompressedWriter::new();
    /// w.add_plain("b", &b)?;
    /// let file = CompressedFile::from_bytes(w.to_bytes()?)?;
    /// assert_eq!(file.load_plain("b", &candle_core::Device::Cpu)?.to_vec1::<f32>()?, vec![1., 2.]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_plain(&self, name: &str, device: &Device) -> Result<Tensor> {
        if !self.is_plain(name) {
            return Err(Error::Missing {
                what: "plain tensor",
                name: name.to_string(),
            });
        }
        let raw = self.reader.read(name)?;
        let dtype = plain_candle_dtype(raw.dtype, name)?;
        Ok(Tensor::from_raw_buffer(
            &raw.data, dtype, &raw.shape, device,
        )?)
    }

    /// Reads the quantized layer stored at `prefix`.
    ///
    /// # Errors
    /// [`Error::Missing`] when there is no layer at `prefix`; [`QuantLinear::from_parts`]
    /// errors for corrupt contents.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// use candle_compress::nn::{QuantConfig, QuantLinear};
    /// let w = candle_core::Tensor::randn(0f32, 1., (4, 64), &candle_core::Device::Cpu)?;
    /// let layer = QuantLinear::new(&w, None, &QuantConfig::w4a8(32)?)?;
    /// let mut writer = CompressedWriter::new();
    /// writer.add_quant_linear("fc", &layer)?;
    /// let file = CompressedFile::from_bytes(writer.to_bytes()?)?;
    /// assert_eq!(file.load_quant_linear("fc")?.to_parts(), layer.to_parts());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_quant_linear(&self, prefix: &str) -> Result<QuantLinear> {
        let l = self
            .manifest
            .layers
            .get(prefix)
            .ok_or_else(|| Error::Missing {
                what: "quantized layer",
                name: prefix.to_string(),
            })?;
        let raw = self.part(prefix, "weight")?;
        let weights = match l.config.weights().int4_group() {
            Some(_) => {
                let row_bytes = l.in_features.div_ceil(2);
                let mut w = Vec::with_capacity(l.out_features * l.in_features);
                for row in raw.data.chunks(row_bytes.max(1)) {
                    let codes = row
                        .iter()
                        .flat_map(|b| [(b & 0x0F) as i8 - 8, (b >> 4) as i8 - 8])
                        .take(l.in_features);
                    w.extend(codes);
                }
                w
            }
            _ => bytes_to_i8(&raw.data),
        };
        let scales = bytes_to_f32(&self.part(prefix, "weight_scale")?.data);
        let offsets = if l.config.weights().has_offsets() {
            Some(bytes_to_f32(&self.part(prefix, "weight_offset")?.data))
        } else {
            None
        };
        let bias = if l.bias {
            Some(bytes_to_f32(&self.part(prefix, "bias")?.data))
        } else {
            None
        };
        let smooth = if l.smooth {
            Some(bytes_to_f32(&self.part(prefix, "smooth")?.data))
        } else {
            None
        };
        QuantLinear::from_parts(QuantLinearParts {
            out_features: l.out_features,
            in_features: l.in_features,
            weights,
            scales,
            offsets,
            bias,
            smooth,
            config: l.config,
        })
    }

    /// Reads tensor `name` as a float tensor on `device`: a compressed tensor is
    /// decompressed (to its original dtype), a plain one returned as stored. Only the
    /// bytes of `name` are read.
    ///
    /// # Errors
    /// [`Error::Missing`] when the file has no tensor `name`; decoding errors as
    /// [`CompressedFile::load_compressed`] and [`CompressedFile::load_plain`].
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let file = CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?;
    /// assert!(file.load_tensor("nope", &candle_core::Device::Cpu).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        if self.manifest.tensors.contains_key(name) {
            self.load_compressed(name)?.decompress(device)
        } else {
            self.load_plain(name, device)
        }
    }

    /// Reads every item of the file.
    ///
    /// # Errors
    /// The first error of [`CompressedFile::load_compressed`],
    /// [`CompressedFile::load_quant_linear`] or [`CompressedFile::load_plain`].
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let file = CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?;
    /// assert!(file.load_all(&candle_core::Device::Cpu)?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_all(&self, device: &Device) -> Result<BTreeMap<String, Loaded>> {
        let mut out = BTreeMap::new();
        for name in self.manifest.tensors.keys() {
            out.insert(
                name.clone(),
                Loaded::Compressed(self.load_compressed(name)?),
            );
        }
        for name in self.manifest.layers.keys() {
            out.insert(
                name.clone(),
                Loaded::QuantLinear(self.load_quant_linear(name)?),
            );
        }
        for name in &self.plain {
            out.insert(name.clone(), Loaded::Plain(self.load_plain(name, device)?));
        }
        Ok(out)
    }
}

/// Loads every item of the file at `path` (plain tensors on the CPU).
///
/// # Errors
/// As [`CompressedFile::open`] and [`CompressedFile::load_all`].
///
/// ```
/// use candle_compress::io::safetensors::{load, CompressedWriter};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("e.safetensors");
/// CompressedWriter::new().write(&path)?;
/// assert!(load(&path)?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load(path: impl AsRef<Path>) -> Result<BTreeMap<String, Loaded>> {
    CompressedFile::open(path)?.load_all(&Device::Cpu)
}
