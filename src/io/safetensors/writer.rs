//! [`CompressedWriter`]: compressed tensors, quantized layers and plain tensors collected
//! in memory and written as one file; [`save`], its one-call form.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;
use safetensors::tensor::Dtype;

use super::encode::{self, NamedParts};
use super::format::check_free_key;
use super::manifest::Manifest;
use crate::error::{Error, Result};
use crate::io::part::Part;
use crate::io::part_writer::{self, sort_for_alignment};
use crate::nn::QuantLinear;
use crate::scheme::CompressedTensor;

/// Collects compressed tensors, quantized layers and plain tensors, encodes each as it is
/// added (so the caller may drop the original right away), and writes one `.safetensors`
/// file in the layout of the [module docs](crate::io::safetensors).
///
/// Parts are laid out as the `safetensors` crate lays them out (by decreasing dtype
/// alignment, then by name) and written by the same part-by-part writer as
/// [`StreamingWriter`](crate::io::safetensors::StreamingWriter).
#[derive(Debug, Default)]
pub struct CompressedWriter {
    parts: BTreeMap<String, Part>,
    manifest: Manifest,
    extra: HashMap<String, String>,
}

impl CompressedWriter {
    /// An empty writer.
    ///
    /// ```
    /// let w = candle_compress::io::safetensors::CompressedWriter::new();
    /// assert_eq!(w.len(), 0);
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored safetensors tensors so far (parts and plain tensors).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// let mut w = CompressedWriter::new();
    /// w.add_plain("b", &candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu)?)?;
    /// assert_eq!(w.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// True when nothing was added.
    ///
    /// ```
    /// assert!(candle_compress::io::safetensors::CompressedWriter::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Bytes of tensor data added so far (what the file's data section will hold).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// let mut w = CompressedWriter::new();
    /// w.add_plain("b", &candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu)?)?;
    /// assert_eq!(w.data_bytes(), 12);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn data_bytes(&self) -> usize {
        self.parts.values().map(|p| p.data.len()).sum()
    }

    fn insert_parts(&mut self, parts: NamedParts) -> Result<()> {
        if let Some((full, _)) = parts.iter().find(|(n, _)| self.parts.contains_key(n)) {
            return Err(Error::invalid(
                "tensor name",
                format!("{full} is already in the file"),
            ));
        }
        self.parts.extend(parts);
        Ok(())
    }

    fn check_new_name(&self, name: &str) -> Result<()> {
        if name.is_empty() || name == "__metadata__" {
            return Err(Error::invalid(
                "tensor name",
                format!("{name:?} is not a valid tensor name"),
            ));
        }
        if self.parts.contains_key(name) || self.manifest.contains(name) {
            return Err(Error::invalid(
                "tensor name",
                format!("{name} is already in the file"),
            ));
        }
        Ok(())
    }

    /// Adds a compressed tensor under `name` (its parts are stored as `name.<part>`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `name` or one of its part names is already used.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// use candle_compress::{quant::Nf4, Compressor};
    /// let t = candle_core::Tensor::randn(0f32, 1., 128, &candle_core::Device::Cpu)?;
    /// let mut w = CompressedWriter::new();
    /// w.add_compressed("t", &Nf4::new(64)?.compress(&t)?.into())?;
    /// assert_eq!(w.len(), 2); // t.packed, t.absmax
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_compressed(&mut self, name: &str, value: &CompressedTensor) -> Result<()> {
        self.check_new_name(name)?;
        let (entry, parts) = encode::compressed(name, value)?;
        self.insert_parts(parts)?;
        self.manifest.tensors.insert(name.to_string(), entry);
        Ok(())
    }

    /// Adds a [`QuantLinear`] under `prefix` (`prefix.weight`, `prefix.weight_scale`,
    /// optional `prefix.bias`, `prefix.smooth`), loadable with
    /// [`QuantLoader`](crate::io::loader::QuantLoader).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a name is already used.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// use candle_compress::nn::{QuantConfig, QuantLinear};
    /// let w = candle_core::Tensor::randn(0f32, 1., (4, 32), &candle_core::Device::Cpu)?;
    /// let layer = QuantLinear::new(&w, None, &QuantConfig::w8a8())?;
    /// let mut writer = CompressedWriter::new();
    /// writer.add_quant_linear("fc1", &layer)?;
    /// assert_eq!(writer.len(), 2); // fc1.weight, fc1.weight_scale
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_quant_linear(&mut self, prefix: &str, layer: &QuantLinear) -> Result<()> {
        self.check_new_name(prefix)?;
        let (entry, parts) = encode::layer(prefix, layer)?;
        self.insert_parts(parts)?;
        self.manifest.layers.insert(prefix.to_string(), entry);
        Ok(())
    }

    /// Adds an uncompressed tensor (dtype U8, U32, I64, F16, BF16, F32 or F64, any layout).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `name` is used; [`Error::UnsupportedDType`] for
    /// other dtypes.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// let b = candle_core::Tensor::new(&[1f32, 2.], &candle_core::Device::Cpu)?;
    /// let mut w = CompressedWriter::new();
    /// w.add_plain("bias", &b)?;
    /// assert!(w.add_plain("bias", &b).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_plain(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        self.check_new_name(name)?;
        self.parts.insert(name.to_string(), encode::plain(tensor)?);
        Ok(())
    }

    /// Adds an uncompressed tensor given as raw little-endian bytes in any safetensors
    /// dtype (for passing tensors through unchanged, without a candle round trip).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `name` is used; [`Error::ShapeMismatch`] when
    /// `data.len()` is not `shape`'s element count × the dtype's size.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// use safetensors::tensor::Dtype;
    /// let mut w = CompressedWriter::new();
    /// w.add_raw("ids", Dtype::I8, &[3], vec![1, 2, 3])?;
    /// assert!(w.add_raw("x", Dtype::F32, &[2], vec![0; 7]).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_raw(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        data: Vec<u8>,
    ) -> Result<()> {
        self.check_new_name(name)?;
        let bits = crate::quant::checked_elem_count(shape, name)?
            .checked_mul(dtype.bitsize())
            .ok_or_else(|| Error::invalid("tensor shape", format!("{name}: size overflows")))?;
        if bits % 8 != 0 || bits / 8 != data.len() {
            return Err(Error::shape(
                format!("{name} bytes"),
                bits.div_ceil(8),
                data.len(),
            ));
        }
        self.parts.insert(
            name.to_string(),
            Part {
                dtype,
                shape: shape.to_vec(),
                data,
            },
        );
        Ok(())
    }

    /// Adds a free-form metadata entry (kept by every safetensors reader).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for the keys this format reserves ([`KEY_FORMAT`](super::KEY_FORMAT),
    /// [`KEY_VERSION`](super::KEY_VERSION), [`KEY_TENSORS`](super::KEY_TENSORS), [`KEY_LAYERS`](super::KEY_LAYERS)).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// let mut w = CompressedWriter::new();
    /// w.add_metadata("source", "demo")?;
    /// assert!(w.add_metadata("format", "x").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_metadata(&mut self, key: &str, value: &str) -> Result<()> {
        check_free_key(key)?;
        self.extra.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// The parts in file order (as the `safetensors` crate orders them).
    fn ordered_parts(&self) -> Vec<(&str, &Part)> {
        let mut parts: Vec<(&str, &Part)> =
            self.parts.iter().map(|(k, v)| (k.as_str(), v)).collect();
        sort_for_alignment(&mut parts);
        parts
    }

    /// Serializes the whole file to bytes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a header over the safetensors size limit.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// let bytes = CompressedWriter::new().to_bytes()?;
    /// let st = safetensors::SafeTensors::deserialize(&bytes)?;
    /// assert!(st.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        part_writer::to_bytes(
            &self.ordered_parts(),
            self.manifest.metadata(self.extra.clone())?,
        )
    }

    /// Writes the file at `path`, streaming tensor data, through a temporary file in the
    /// same directory renamed into place (a failure never leaves a partial file at `path`).
    ///
    /// # Errors
    /// I/O errors; [`Error::InvalidArgument`] for a header over the safetensors size
    /// limit.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// let dir = tempfile::tempdir()?;
    /// CompressedWriter::new().write(dir.path().join("empty.safetensors"))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::write_safetensors(
            path.as_ref(),
            self.ordered_parts(),
            self.manifest.metadata(self.extra.clone())?,
        )
    }
}

/// Saves compressed tensors and plain tensors to one file (see [`CompressedWriter`] for
/// more control, e.g. quantized layers).
///
/// # Errors
/// As [`CompressedWriter::add_compressed`], [`CompressedWriter::add_plain`] and
/// [`CompressedWriter::write`].
///
/// ```
/// use std::collections::HashMap;
/// use candle_compress::io::safetensors::{load, save, Loaded};
/// use candle_compress::quant::BlockwiseInt8;
/// use candle_compress::Compressor;
/// use candle_core::{Device, Tensor};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("t.safetensors");
/// let x = Tensor::randn(0f32, 1., (4, 64), &Device::Cpu)?;
/// let compressed = HashMap::from([("x".to_string(), BlockwiseInt8::new(64)?.compress(&x)?.into())]);
/// save(&path, &compressed, &HashMap::new())?;
/// let back = load(&path)?;
/// assert!(matches!(back["x"], Loaded::Compressed(_)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn save(
    path: impl AsRef<Path>,
    compressed: &HashMap<String, CompressedTensor>,
    plain: &HashMap<String, Tensor>,
) -> Result<()> {
    let mut w = CompressedWriter::new();
    for (name, value) in compressed {
        w.add_compressed(name, value)?;
    }
    for (name, t) in plain {
        w.add_plain(name, t)?;
    }
    w.write(path)
}
