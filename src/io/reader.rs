//! A validating, lazy reader of safetensors files: parses and checks the header once,
//! then reads one tensor's bytes at a time.
//!
//! [`SafetensorsReader::open`] reads only the 8-byte length prefix and the JSON header;
//! [`SafetensorsReader::read`] then reads exactly the bytes of the tensor asked for, with
//! positioned reads, so loading one tensor of a large file does not read the others and
//! the process never holds more than that tensor. [`SafetensorsReader::from_bytes`]
//! works on any byte container instead — a `Vec<u8>`, or a `memmap2::Mmap` the caller
//! mapped (mapping a file needs an unchecked block in Rust because another process may
//! change the file; this crate leaves that decision to the caller and keeps such blocks
//! inside `kernels` only).
//!
//! Every check is made before any allocation sized by the file: the header length is
//! capped ([`MAX_HEADER_SIZE`]) and must lie inside the file, tensor offsets must be in
//! order, cover the data section exactly and agree with dtype × shape (computed with
//! overflow checks, by the `safetensors` crate's own `Metadata::new`).
//!
//! ```
//! use candle_compress::io::reader::SafetensorsReader;
//! use safetensors::tensor::{Dtype, TensorView};
//!
//! let data = [1u8, 2, 3, 4];
//! let view = TensorView::new(Dtype::U8, vec![4], &data)?;
//! let bytes = safetensors::serialize([("t", view)], None)?;
//! let reader = SafetensorsReader::from_bytes(bytes)?;
//! let t = reader.read("t")?;
//! assert_eq!((t.dtype, t.shape.as_slice(), &*t.data), (Dtype::U8, &[4usize][..], &data[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

use safetensors::tensor::{Dtype, Metadata, TensorInfo};

use crate::error::{Error, Result};

/// The largest JSON header accepted, in bytes. The same cap as the `safetensors` crate
/// (100 MB): a header is a few hundred bytes per tensor, so this allows hundreds of
/// thousands of tensors while refusing a corrupt length prefix before allocating.
pub const MAX_HEADER_SIZE: usize = 100_000_000;

/// Bytes of the little-endian `u64` header-length prefix.
const PREFIX: usize = 8;

/// Where the file's bytes come from.
enum Source {
    /// A file read with seek + read of exactly the requested range.
    File { file: Mutex<File>, len: u64 },
    /// Bytes in memory (or a caller's memory map).
    Bytes(Box<dyn AsRef<[u8]> + Send + Sync>),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::File { len, .. } => *len,
            Source::Bytes(b) => AsRef::<[u8]>::as_ref(&**b).len() as u64,
        }
    }

    /// Reads `len` bytes at `offset`; the caller has checked the range lies in the file,
    /// and a file that shrank since is reported as truncated.
    fn read_at(&self, offset: u64, len: usize, what: &str) -> Result<Cow<'_, [u8]>> {
        let truncated = |available: u64| Error::Truncated {
            what: what.to_string(),
            needed: len,
            available: usize::try_from(available).unwrap_or(usize::MAX),
        };
        match self {
            Source::Bytes(b) => {
                let bytes: &[u8] = AsRef::<[u8]>::as_ref(&**b);
                let start = usize::try_from(offset).map_err(|_| truncated(0))?;
                let end = start.checked_add(len).ok_or_else(|| truncated(0))?;
                bytes
                    .get(start..end)
                    .map(Cow::Borrowed)
                    .ok_or_else(|| truncated(bytes.len().saturating_sub(start) as u64))
            }
            Source::File { file, len: flen } => {
                if offset.saturating_add(len as u64) > *flen {
                    return Err(truncated(flen.saturating_sub(offset)));
                }
                let mut buf = vec![0u8; len];
                let mut f = file
                    .lock()
                    .map_err(|_| Error::invalid("file", "a previous read panicked"))?;
                f.seek(SeekFrom::Start(offset))?;
                f.read_exact(&mut buf).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        truncated(0)
                    } else {
                        Error::Io(e)
                    }
                })?;
                Ok(Cow::Owned(buf))
            }
        }
    }
}

/// One tensor's raw contents: dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor<'a> {
    /// The safetensors dtype.
    pub dtype: Dtype,
    /// The shape, row-major.
    pub shape: Vec<usize>,
    /// The bytes, exactly `elements × dtype size` long (borrowed from an in-memory source,
    /// owned when read from a file).
    pub data: Cow<'a, [u8]>,
}

/// A parsed and validated safetensors file whose tensors are read on demand.
pub struct SafetensorsReader {
    source: Source,
    metadata: Metadata,
    /// Offset of the data section from the start of the file.
    data_start: u64,
}

impl fmt::Debug for SafetensorsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsReader")
            .field("tensors", &self.metadata.tensors().len())
            .field("data_start", &self.data_start)
            .field("len", &self.source.len())
            .finish()
    }
}

impl SafetensorsReader {
    /// Opens `path`, reading and validating its header only.
    ///
    /// # Errors
    /// I/O errors; [`Error::Truncated`] when the file is shorter than its header or data
    /// section claims; [`Error::Corrupt`] for an oversized or malformed header, offsets out
    /// of order, sizes disagreeing with dtype × shape, or trailing bytes.
    ///
    /// ```
    /// use candle_compress::io::reader::SafetensorsReader;
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("empty.safetensors");
    /// let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// safetensors::serialize_to_file(none, None, &path)?;
    /// assert!(SafetensorsReader::open(&path)?.names().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let label = path.display().to_string();
        let file = File::open(path)
            .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{label}: {e}"))))?;
        let len = file.metadata()?.len();
        Self::parse(
            Source::File {
                file: Mutex::new(file),
                len,
            },
            &label,
        )
    }

    /// Parses a whole file held in memory: a `Vec<u8>`, a `&'static [u8]`, or a memory
    /// map (`memmap2::Mmap` implements `AsRef<[u8]>`).
    ///
    /// # Errors
    /// As [`SafetensorsReader::open`].
    ///
    /// ```
    /// use candle_compress::io::reader::SafetensorsReader;
    /// let err = SafetensorsReader::from_bytes(vec![1u8, 2, 3]).unwrap_err();
    /// assert!(err.to_string().contains("truncated"));
    /// ```
    pub fn from_bytes(bytes: impl AsRef<[u8]> + Send + Sync + 'static) -> Result<Self> {
        Self::parse(Source::Bytes(Box::new(bytes)), "in-memory bytes")
    }

    /// Parses the header of `source`; `label` (the file's path) starts every message, and
    /// a file that cannot be a safetensors file at all says so.
    fn parse(source: Source, label: &str) -> Result<Self> {
        let file_len = source.len();
        if file_len < PREFIX as u64 {
            return Err(Error::Truncated {
                what: format!(
                    "{label}: not a safetensors file (shorter than the 8-byte header length)"
                ),
                needed: PREFIX,
                available: file_len as usize,
            });
        }
        let prefix = source.read_at(0, PREFIX, &format!("{label}: safetensors header length"))?;
        let Ok(prefix) = <[u8; PREFIX]>::try_from(&prefix[..]) else {
            return Err(Error::Corrupt {
                what: format!("{label}: safetensors header length"),
                reason: "not 8 bytes".into(),
            });
        };
        let n = u64::from_le_bytes(prefix);
        if n > MAX_HEADER_SIZE as u64 {
            return Err(Error::Corrupt {
                what: label.to_string(),
                reason: format!(
                    "not a safetensors file: it starts with \"{}\", not a header length \
                     (a safetensors file starts with its JSON header's length, at most \
                     {MAX_HEADER_SIZE} bytes)",
                    prefix.escape_ascii()
                ),
            });
        }
        let n = n as usize;
        let available = file_len.saturating_sub(PREFIX as u64);
        if n as u64 > available {
            return Err(Error::Truncated {
                what: format!(
                    "{label}: safetensors header (its length prefix points past the end of \
                     the file: truncated, or not a safetensors file)"
                ),
                needed: n,
                available: usize::try_from(available).unwrap_or(usize::MAX),
            });
        }
        let header = source.read_at(PREFIX as u64, n, &format!("{label}: safetensors header"))?;
        let metadata = parse_header(&header).map_err(|e| match e {
            Error::Corrupt { what, reason } => Error::Corrupt {
                what: format!("{label}: {what}"),
                reason: format!("not a safetensors file ({reason})"),
            },
            other => other,
        })?;
        let data_start = (PREFIX + n) as u64;
        let data_len = metadata.data_len() as u64;
        let have = file_len - data_start;
        if data_len > have {
            return Err(Error::Truncated {
                what: format!("{label}: safetensors data section"),
                needed: usize::try_from(data_len).unwrap_or(usize::MAX),
                available: usize::try_from(have).unwrap_or(usize::MAX),
            });
        }
        if data_len < have {
            return Err(Error::Corrupt {
                what: format!("{label}: safetensors data section"),
                reason: format!("{} bytes after the last tensor", have - data_len),
            });
        }
        Ok(Self {
            source,
            metadata,
            data_start,
        })
    }

    /// Tensor names, in the order their data is stored.
    ///
    /// ```
    /// # use candle_compress::io::reader::SafetensorsReader;
    /// # use safetensors::tensor::{Dtype, TensorView};
    /// # let d = [0u8; 2];
    /// # let b = safetensors::serialize([("b", TensorView::new(Dtype::U8, vec![1], &d[..1])?), ("a", TensorView::new(Dtype::U8, vec![1], &d[1..])?)], None)?;
    /// let reader = SafetensorsReader::from_bytes(b)?;
    /// assert_eq!(reader.names(), vec!["a".to_string(), "b".to_string()]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    /// The header entry (dtype, shape, offsets) of `name`, if present.
    ///
    /// ```
    /// # use candle_compress::io::reader::SafetensorsReader;
    /// # use safetensors::tensor::{Dtype, TensorView};
    /// # let d = [0u8; 4];
    /// # let b = safetensors::serialize([("t", TensorView::new(Dtype::F32, vec![1], &d)?)], None)?;
    /// let reader = SafetensorsReader::from_bytes(b)?;
    /// assert_eq!(reader.info("t").map(|i| i.dtype), Some(Dtype::F32));
    /// assert!(reader.info("u").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    /// The `__metadata__` string map, if the file has one.
    ///
    /// ```
    /// # use candle_compress::io::reader::SafetensorsReader;
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let meta = std::collections::HashMap::from([("k".to_string(), "v".to_string())]);
    /// # let b = safetensors::serialize(none, Some(meta))?;
    /// let reader = SafetensorsReader::from_bytes(b)?;
    /// assert_eq!(reader.metadata().and_then(|m| m.get("k")).map(String::as_str), Some("v"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    /// Size of the whole file in bytes.
    ///
    /// ```
    /// # use candle_compress::io::reader::SafetensorsReader;
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let b = safetensors::serialize(none, None)?;
    /// # let n = b.len() as u64;
    /// let reader = SafetensorsReader::from_bytes(b)?;
    /// assert_eq!(reader.file_len(), n);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn file_len(&self) -> u64 {
        self.source.len()
    }

    /// Reads one tensor's bytes (and nothing else).
    ///
    /// # Errors
    /// [`Error::Missing`] when there is no tensor `name`; [`Error::Truncated`] when the file
    /// shrank since it was opened; I/O errors.
    ///
    /// ```
    /// # use candle_compress::io::reader::SafetensorsReader;
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let b = safetensors::serialize(none, None)?;
    /// let reader = SafetensorsReader::from_bytes(b)?;
    /// assert!(reader.read("nope").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(&self, name: &str) -> Result<RawTensor<'_>> {
        let info = self.info(name).ok_or_else(|| Error::Missing {
            what: "tensor",
            name: name.to_string(),
        })?;
        let (start, end) = info.data_offsets;
        let data = self
            .source
            .read_at(self.data_start + start as u64, end - start, name)?;
        Ok(RawTensor {
            dtype: info.dtype,
            shape: info.shape.clone(),
            data,
        })
    }
}

impl SafetensorsReader {
    /// Reads tensor `name` as a candle CPU tensor in its own dtype (F32 through
    /// [`SafetensorsReader::read_f32`], which makes no second copy of the bytes).
    ///
    /// # Errors
    /// [`Error::Missing`] when there is no tensor `name`; [`Error::Unsupported`] for
    /// dtypes candle cannot hold (I8, I16, BOOL, ...); I/O errors.
    ///
    /// ```
    /// use candle_compress::io::reader::SafetensorsReader;
    /// use safetensors::tensor::{Dtype, TensorView};
    /// let data = vec![7u8, 9];
    /// let bytes = safetensors::serialize([("t", TensorView::new(Dtype::U8, vec![2], &data)?)], None)?;
    /// let t = SafetensorsReader::from_bytes(bytes)?.read_tensor("t")?;
    /// assert_eq!(t.to_vec1::<u8>()?, vec![7, 9]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_tensor(&self, name: &str) -> Result<candle_core::Tensor> {
        use candle_core::{Device, Tensor};
        let dtype = self
            .info(name)
            .ok_or_else(|| Error::Missing {
                what: "tensor",
                name: name.to_string(),
            })?
            .dtype;
        if dtype == Dtype::F32 {
            let (shape, values) = self.read_f32(name)?;
            return Ok(Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        let candle = crate::io::safetensors::plain_candle_dtype(dtype, name)?;
        let raw = self.read(name)?;
        Ok(Tensor::from_raw_buffer(
            &raw.data,
            candle,
            &raw.shape,
            &Device::Cpu,
        )?)
    }

    /// Reads float tensor `name` (F32, F16, BF16 or F64) straight into row-major `f32`
    /// values, converting in chunks of at most [`READ_CHUNK`] bytes, so the only large
    /// allocation is the returned vector (no second copy of the raw bytes).
    ///
    /// # Errors
    /// [`Error::Missing`] when there is no tensor `name`; [`Error::UnsupportedDType`]-like
    /// [`Error::MetadataMismatch`] for non-float dtypes; I/O errors.
    ///
    /// ```
    /// use candle_compress::io::reader::SafetensorsReader;
    /// use safetensors::tensor::{Dtype, TensorView};
    /// let data: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    /// let bytes = safetensors::serialize([("t", TensorView::new(Dtype::F32, vec![2], &data)?)], None)?;
    /// let (shape, values) = SafetensorsReader::from_bytes(bytes)?.read_f32("t")?;
    /// assert_eq!((shape, values), (vec![2], vec![1.5, -2.0]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.info(name).ok_or_else(|| Error::Missing {
            what: "tensor",
            name: name.to_string(),
        })?;
        let width = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F64 => 8,
            other => {
                return Err(Error::metadata(
                    format!("{name} dtype"),
                    "F32, F16, BF16 or F64",
                    format!("{other:?}"),
                ))
            }
        };
        let (start, end) = info.data_offsets;
        let mut values = Vec::with_capacity((end - start) / width);
        let step = READ_CHUNK - READ_CHUNK % width;
        let mut offset = start;
        while offset < end {
            let len = step.min(end - offset);
            let chunk = self
                .source
                .read_at(self.data_start + offset as u64, len, name)?;
            match info.dtype {
                Dtype::F32 => values.extend(
                    chunk
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                ),
                Dtype::F16 => values.extend(
                    chunk
                        .chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
                ),
                Dtype::BF16 => values.extend(
                    chunk
                        .chunks_exact(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
                ),
                _ => values.extend(chunk.chunks_exact(8).map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })),
            }
            offset += len;
        }
        Ok((info.shape.clone(), values))
    }
}

/// Bytes read per step by [`SafetensorsReader::read_f32`] (4 MiB: large enough for
/// sequential-read speed, small next to any tensor worth streaming).
pub const READ_CHUNK: usize = 4 << 20;

/// Parses the JSON header into validated `Metadata` (offsets contiguous from 0, sizes
/// matching dtype × shape with overflow checks).
fn parse_header(bytes: &[u8]) -> Result<Metadata> {
    let corrupt = |reason: String| Error::Corrupt {
        what: "safetensors header".into(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| corrupt(format!("not UTF-8: {e}")))?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| corrupt(format!("not a JSON object: {e}")))?;
    let mut user = None;
    let mut tensors = Vec::with_capacity(map.len());
    for (name, value) in map {
        if name == "__metadata__" {
            let m: HashMap<String, String> = serde_json::from_value(value)
                .map_err(|e| corrupt(format!("__metadata__ is not a string map: {e}")))?;
            user = Some(m);
        } else {
            let info: TensorInfo = serde_json::from_value(value)
                .map_err(|e| corrupt(format!("entry {name:?}: {e}")))?;
            tensors.push((name, info));
        }
    }
    tensors.sort_by_key(|(_, info)| info.data_offsets);
    Metadata::new(user, tensors).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn sample() -> Vec<u8> {
        let a = [1u8, 2, 3, 4];
        let b = [9u8; 8];
        safetensors::serialize(
            [
                ("a", TensorView::new(Dtype::U8, vec![2, 2], &a).unwrap()),
                ("b", TensorView::new(Dtype::F32, vec![2], &b).unwrap()),
            ],
            None,
        )
        .unwrap()
    }

    #[test]
    fn file_and_bytes_sources_agree() -> Result<()> {
        let bytes = sample();
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.safetensors");
        std::fs::write(&path, &bytes)?;
        let from_file = SafetensorsReader::open(&path)?;
        let from_mem = SafetensorsReader::from_bytes(bytes)?;
        for name in ["a", "b"] {
            assert_eq!(from_file.read(name)?, from_mem.read(name)?);
        }
        assert_eq!(from_mem.read("b")?.data.len(), 8);
        Ok(())
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            assert!(
                SafetensorsReader::from_bytes(bytes[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            SafetensorsReader::from_bytes(longer),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn header_length_past_end_is_truncated() {
        let mut bytes = sample();
        let len = bytes.len() as u64;
        bytes[..8].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(
            SafetensorsReader::from_bytes(bytes.clone()),
            Err(Error::Truncated { .. })
        ));
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            SafetensorsReader::from_bytes(bytes),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn size_disagreeing_with_shape_is_corrupt() {
        let header = br#"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 8]);
        let err = SafetensorsReader::from_bytes(bytes).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
}
