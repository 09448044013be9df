//! [`StreamingWriter`]: a file written item by item, declared up front as
//! [`PlannedItem`]s, through the part-by-part writer every file of the crate goes through.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::Tensor;
use safetensors::tensor::Dtype;
use serde_json::Value;

use super::encode::{self, NamedParts};
use super::format::{parts, LayerEntry, Layout, PartSpec, TensorEntry};
use super::manifest::{layer_value, tensor_value, Manifest};
use crate::error::{Error, Result};
use crate::io::part_writer::{PartWriter, Slot};
use crate::nn::QuantLinear;
use crate::scheme::CompressedTensor;

/// What one item of a [`StreamingWriter`] file will be, declared before any data is
/// written (the safetensors header, which comes first, needs every size).
#[derive(Debug, Clone, PartialEq)]
pub enum PlannedItem {
    /// A compressed tensor of this scheme, original shape and dtype.
    Compressed(TensorEntry),
    /// A quantized linear layer.
    QuantLinear(LayerEntry),
    /// An uncompressed tensor given as raw bytes.
    Raw {
        /// Its safetensors dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<usize>,
    },
}

impl PlannedItem {
    /// The layout this item will have (the input of [`parts`]).
    fn layout(&self) -> Layout<'_> {
        match self {
            PlannedItem::Compressed(e) => Layout::Tensor(e),
            PlannedItem::QuantLinear(l) => Layout::Layer(l),
            PlannedItem::Raw { dtype, shape } => Layout::Plain {
                dtype: *dtype,
                shape,
            },
        }
    }
}

/// Writes a candle-compress file item by item without holding the output in memory:
/// the items are declared up front ([`PlannedItem`]), the header is written, then each
/// item's bytes are written as soon as the caller has them, in the declared order. Peak
/// memory is one item, whatever the file size. The file is a temporary sibling renamed
/// into place by [`StreamingWriter::finish`]; dropping the writer unfinished deletes it.
///
/// Items are laid out in the declared order, so multi-byte parts may start at offsets
/// that are not multiples of their size (readers of this crate copy values out).
///
/// ```
/// use candle_compress::io::safetensors::{CompressedFile, PlannedItem, StreamingWriter, TensorEntry};
/// use candle_compress::scheme::Scheme;
/// use candle_compress::Compressor;
/// use candle_core::{DType, Device, Tensor};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("s.safetensors");
/// let scheme: Scheme = "int8:32".parse()?;
/// let plan = vec![(
///     "w".to_string(),
///     PlannedItem::Compressed(TensorEntry { scheme, shape: vec![4, 32], dtype: DType::F32 }),
/// )];
/// let mut w = StreamingWriter::create(&path, plan, Default::default())?;
/// let t = Tensor::randn(0f32, 1., (4, 32), &Device::Cpu)?;
/// w.write_compressed("w", &scheme.compress(&t)?)?;
/// w.finish()?;
/// assert!(CompressedFile::open(&path)?.tensor_entry("w").is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct StreamingWriter {
    out: PartWriter,
    /// Declared items, in order: name, stored manifest entry (`null` for raw tensors) and
    /// parts.
    items: Vec<(String, Value, Vec<PartSpec>)>,
    next: usize,
}

impl StreamingWriter {
    /// Declares the items (in write order), writes the header and returns the writer.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for duplicate names or reserved metadata keys;
    /// [`Error::Corrupt`] for sizes that overflow; [`Error::UnsupportedDType`] for a
    /// compressed tensor of a non-float original dtype; I/O errors creating the
    /// temporary file.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::StreamingWriter;
    /// let dir = tempfile::tempdir()?;
    /// let w = StreamingWriter::create(dir.path().join("e.safetensors"), vec![], Default::default())?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(
        path: impl AsRef<Path>,
        plan: Vec<(String, PlannedItem)>,
        extra_metadata: HashMap<String, String>,
    ) -> Result<Self> {
        let mut manifest = Manifest::default();
        let mut slots = Vec::new();
        let mut items = Vec::new();
        let mut seen = HashSet::new();
        for (name, item) in plan {
            let specs = parts(&name, item.layout())?;
            let entry = match item {
                PlannedItem::Compressed(e) => {
                    let v = tensor_value(&e)?;
                    manifest.tensors.insert(name.clone(), e);
                    v
                }
                PlannedItem::QuantLinear(l) => {
                    let v = layer_value(&l)?;
                    manifest.layers.insert(name.clone(), l);
                    v
                }
                PlannedItem::Raw { .. } => Value::Null,
            };
            for spec in &specs {
                if !seen.insert(spec.slot.name.clone()) {
                    return Err(Error::invalid(
                        "tensor name",
                        format!("{} is planned twice", spec.slot.name),
                    ));
                }
                slots.push(spec.slot.clone());
            }
            items.push((name, entry, specs));
        }
        let metadata = manifest.metadata(extra_metadata)?;
        Ok(Self {
            out: PartWriter::create(path.as_ref(), &slots, metadata)?,
            items,
            next: 0,
        })
    }

    /// Checks that `name` is the next declared item with this entry and these parts
    /// (full name, dtype, shape, bytes), then writes the parts' bytes.
    fn write_item(
        &mut self,
        name: &str,
        entry: &Value,
        parts: &[(&str, Dtype, &[usize], &[u8])],
    ) -> Result<()> {
        let Some((planned_name, planned_entry, planned)) = self.items.get(self.next) else {
            return Err(Error::invalid(
                "streamed item",
                format!("{name}: all declared items were already written"),
            ));
        };
        if planned_name != name || planned_entry != entry || planned.len() != parts.len() {
            return Err(Error::metadata(
                format!("streamed item {name}"),
                format!("{planned_name} {planned_entry}"),
                format!("{name} {entry}"),
            ));
        }
        for (spec, (got, d, s, data)) in planned.iter().zip(parts) {
            let Slot {
                name: full,
                dtype,
                shape,
                len,
            } = &spec.slot;
            if full != got || dtype != d || shape.as_slice() != *s || *len != data.len() {
                return Err(Error::metadata(
                    format!("streamed part {got}"),
                    format!("{full} {dtype:?} {shape:?} {len} bytes"),
                    format!("{got} {d:?} {s:?} {} bytes", data.len()),
                ));
            }
        }
        for (full, _, _, data) in parts {
            self.out.write_part(full, data)?;
        }
        self.next += 1;
        Ok(())
    }

    /// Writes encoded parts as item `name` with manifest entry `entry`.
    fn write_parts(&mut self, name: &str, entry: &Value, parts: &NamedParts) -> Result<()> {
        let views: Vec<_> = parts
            .iter()
            .map(|(n, p)| (n.as_str(), p.dtype, p.shape.as_slice(), p.data.as_slice()))
            .collect();
        self.write_item(name, entry, &views)
    }

    /// Writes the next declared item, a compressed tensor.
    ///
    /// # Errors
    /// [`Error::MetadataMismatch`] when `name`, scheme, shape or dtype differ from the
    /// next declared item; I/O errors.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::StreamingWriter;
    /// use candle_compress::{scheme::Scheme, Compressor};
    /// let dir = tempfile::tempdir()?;
    /// let mut w = StreamingWriter::create(dir.path().join("e.safetensors"), vec![], Default::default())?;
    /// let t = candle_core::Tensor::zeros(8, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    /// assert!(w.write_compressed("t", &"nf4".parse::<Scheme>()?.compress(&t)?).is_err()); // not declared
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_compressed(&mut self, name: &str, value: &CompressedTensor) -> Result<()> {
        let (entry, parts) = encode::compressed(name, value)?;
        self.write_parts(name, &tensor_value(&entry)?, &parts)
    }

    /// Writes the next declared item, a quantized layer.
    ///
    /// # Errors
    /// As [`StreamingWriter::write_compressed`].
    ///
    /// ```
    /// # use candle_compress::io::safetensors::StreamingWriter;
    /// use candle_compress::nn::{QuantConfig, QuantLinear};
    /// let dir = tempfile::tempdir()?;
    /// let mut w = StreamingWriter::create(dir.path().join("e.safetensors"), vec![], Default::default())?;
    /// let weight = candle_core::Tensor::ones((2, 8), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    /// assert!(w.write_quant_linear("fc", &QuantLinear::new(&weight, None, &QuantConfig::w8a8())?).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_quant_linear(&mut self, prefix: &str, layer: &QuantLinear) -> Result<()> {
        let (entry, parts) = encode::layer(prefix, layer)?;
        self.write_parts(prefix, &layer_value(&entry)?, &parts)
    }

    /// Writes the next declared item, an uncompressed tensor's raw bytes.
    ///
    /// # Errors
    /// As [`StreamingWriter::write_compressed`] (here: name, dtype, shape and length).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{PlannedItem, StreamingWriter};
    /// use safetensors::tensor::Dtype;
    /// let dir = tempfile::tempdir()?;
    /// let plan = vec![("b".to_string(), PlannedItem::Raw { dtype: Dtype::U8, shape: vec![2] })];
    /// let mut w = StreamingWriter::create(dir.path().join("r.safetensors"), plan, Default::default())?;
    /// assert!(w.write_raw("b", Dtype::U8, &[2], &[1, 2, 3]).is_err()); // 3 bytes for 2
    /// w.write_raw("b", Dtype::U8, &[2], &[1, 2])?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_raw(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        data: &[u8],
    ) -> Result<()> {
        self.write_item(name, &Value::Null, &[(name, dtype, shape, data)])
    }

    /// Writes the next declared item, an uncompressed candle tensor (declared as
    /// [`PlannedItem::Raw`] with its safetensors dtype and shape).
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for dtypes the format has no plain layout for; as
    /// [`StreamingWriter::write_raw`].
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{PlannedItem, StreamingWriter};
    /// use safetensors::tensor::Dtype;
    /// let dir = tempfile::tempdir()?;
    /// let plan = vec![("b".to_string(), PlannedItem::Raw { dtype: Dtype::F32, shape: vec![2] })];
    /// let mut w = StreamingWriter::create(dir.path().join("p.safetensors"), plan, Default::default())?;
    /// w.write_plain("b", &candle_core::Tensor::new(&[1f32, 2.], &candle_core::Device::Cpu)?)?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_plain(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        let part = encode::plain(tensor)?;
        self.write_raw(name, part.dtype, &part.shape, &part.data)
    }

    /// Bytes of tensor data written so far.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::StreamingWriter;
    /// let dir = tempfile::tempdir()?;
    /// let w = StreamingWriter::create(dir.path().join("e.safetensors"), vec![], Default::default())?;
    /// assert_eq!(w.data_bytes(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn data_bytes(&self) -> usize {
        self.out.data_bytes()
    }

    /// Checks every declared item was written, syncs the file and renames it into place.
    ///
    /// # Errors
    /// [`Error::Missing`] naming the first item not written; I/O errors.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{PlannedItem, StreamingWriter};
    /// let dir = tempfile::tempdir()?;
    /// let plan = vec![("b".to_string(), PlannedItem::Raw { dtype: safetensors::tensor::Dtype::U8, shape: vec![1] })];
    /// let w = StreamingWriter::create(dir.path().join("r.safetensors"), plan, Default::default())?;
    /// assert!(w.finish().is_err());
    /// assert_eq!(std::fs::read_dir(dir.path())?.count(), 0); // nothing left behind
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn finish(self) -> Result<()> {
        if let Some((name, _, _)) = self.items.get(self.next) {
            return Err(Error::Missing {
                what: "streamed item (declared, never written)",
                name: name.clone(),
            });
        }
        self.out.finish()
    }
}
