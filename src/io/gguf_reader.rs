//! A validating GGUF reader: metadata and tensor directory parsed once, every length and
//! offset checked against the file before anything is allocated, one tensor's bytes read
//! at a time.
//!
//! GGUF (llama.cpp's format, ggml `docs/gguf.md`) is a little-endian header — magic
//! `GGUF`, version (2 or 3), tensor count, metadata count — then the metadata key/value
//! pairs, one tensor-info record per tensor (name, rank, dims innermost first, GGML type
//! id, offset into the data section), and the data section, which starts at the next
//! multiple of `general.alignment` (default 32).
//!
//! candle's own [`gguf_file`](candle_core::quantized::gguf_file) reader trusts the
//! file: a huge string or array length in a corrupt header makes it allocate that much,
//! and tensor bounds are checked only when read. This reader refuses such files with a
//! named error ([`Error::Truncated`], [`Error::Corrupt`], [`Error::Unsupported`]) and never
//! panics: every count is checked against the bytes that remain, every size is computed
//! with checked arithmetic, every tensor must lie inside the data section, aligned, and
//! not overlap another.
//!
//! Metadata values use candle's [`Value`], so code written against candle's reader reads
//! them the same way. Tensors come out as candle [`QTensor`]s (any type candle decodes),
//! as f32 [`Tensor`]s (dequantized, checked finite), or — for the formats our kernels
//! hold exactly — as raw Q8_0 / Q4_0 / Q4_1 codes and scales ([`GgufFile::q8_0_blocks`],
//! [`GgufFile::q4_0_blocks`], [`GgufFile::q4_1_blocks`]).
//!
//! ```
//! use candle_compress::io::gguf::{write_gguf, GgufTensor, GgufType};
//! use candle_compress::io::gguf_reader::GgufFile;
//! use candle_core::quantized::gguf_file::Value;
//! use candle_core::{Device, Tensor};
//!
//! let w = Tensor::randn(0f32, 1., (4, 64), &Device::Cpu)?;
//! let mut bytes = Vec::new();
//! let meta = [("general.name".to_string(), Value::String("demo".into()))];
//! write_gguf(&mut bytes, &meta, &[GgufTensor::float("w", &w, GgufType::F32)?])?;
//!
//! let file = GgufFile::from_bytes(bytes)?;
//! assert_eq!(file.metadata_str("general.name")?, "demo");
//! let back = file.tensor_f32("w")?;
//! assert_eq!(back.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
//! assert!(GgufFile::from_bytes(b"GGUF".to_vec()).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;

use crate::error::{Error, Result};

const GGUF_MAGIC: u32 = 0x4655_4747; // "GGUF" as a little-endian u32
const DEFAULT_ALIGNMENT: u64 = 32;
/// The largest rank GGML supports.
const MAX_DIMS: usize = 4;
/// Longest key, tensor name or string value accepted (GGUF names are at most 64 bytes;
/// strings such as chat templates stay far below this).
const MAX_STRING: u64 = 1 << 24;
/// Deepest nesting of metadata arrays accepted.
const MAX_ARRAY_DEPTH: usize = 4;

/// One tensor's directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// Row-major shape (outermost first, the reverse of the on-disk order).
    pub shape: Vec<usize>,
    /// The GGML type.
    pub dtype: GgmlDType,
    /// Absolute byte offset of the tensor's data in the file.
    pub offset: u64,
    /// Byte length of the tensor's data.
    pub size: usize,
}

enum Source {
    Bytes(Vec<u8>),
    File(Mutex<File>),
}

/// An opened, validated GGUF file (see the [module docs](self)).
pub struct GgufFile {
    version: u32,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, GgufTensorInfo>,
    /// Tensor names in file order.
    order: Vec<String>,
    source: Source,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.order.len())
            .finish()
    }
}

/// A bounded little-endian cursor over the header: every read first checks that the
/// bytes exist, so a corrupt count fails before any allocation.
struct Header<R: Read> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Header<R> {
    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    fn need(&self, n: u64, what: &str) -> Result<()> {
        if n > self.remaining() {
            return Err(Error::Truncated {
                what: format!("GGUF {what}"),
                needed: usize::try_from(n).unwrap_or(usize::MAX),
                available: usize::try_from(self.remaining()).unwrap_or(usize::MAX),
            });
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        self.need(N as u64, what)?;
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        if n > MAX_STRING {
            return Err(corrupt(
                what,
                format!("string length {n} exceeds {MAX_STRING}"),
            ));
        }
        self.need(n, what)?;
        let mut b = vec![0u8; n as usize];
        self.inner.read_exact(&mut b)?;
        self.pos += n;
        String::from_utf8(b).map_err(|_| corrupt(what, "string is not UTF-8"))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.bytes(key)?)),
            1 => Value::I8(i8::from_le_bytes(self.bytes(key)?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.bytes(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes(key)?)),
            7 => match u8::from_le_bytes(self.bytes(key)?) {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(corrupt(key, format!("bool byte {b}"))),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(corrupt(key, "metadata arrays nested too deeply"));
                }
                let elem_ty = self.u32(key)?;
                let n = self.u64(key)?;
                // Every element takes at least one byte (strings at least 8): a count the
                // remaining bytes cannot hold is refused before allocating.
                let min = min_value_size(elem_ty).ok_or_else(|| bad_value_type(key, elem_ty))?;
                self.need(n.saturating_mul(min), key)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.bytes(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes(key)?)),
            other => return Err(bad_value_type(key, other)),
        })
    }
}

fn min_value_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8..=12 => 8,
        _ => return None,
    })
}

fn bad_value_type(key: &str, ty: u32) -> Error {
    corrupt(key, format!("unknown metadata value type {ty}"))
}

fn corrupt(what: &str, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: format!("GGUF {what}"),
        reason: reason.into(),
    }
}

/// The GGML type of a type id, for the types candle can decode.
fn ggml_type(id: u32, name: &str) -> Result<GgmlDType> {
    Ok(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        other => {
            return Err(Error::Unsupported {
                what: "GGUF tensor type",
                found: format!("{other} (tensor {name})"),
                supported: "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K".into(),
            })
        }
    })
}

impl GgufFile {
    /// Opens and validates the file at `path`; tensor data is read later, one tensor at
    /// a time.
    ///
    /// # Errors
    /// I/O errors; [`Error::Corrupt`] for a wrong magic, bad strings, unknown value types,
    /// duplicate names, a bad alignment or tensor bounds; [`Error::Truncated`] when the
    /// header or a tensor runs past the end; [`Error::Unsupported`] for another version
    /// or a tensor type candle cannot decode.
    ///
    /// ```
    /// use candle_compress::io::gguf_reader::GgufFile;
    /// assert!(GgufFile::open("/nonexistent.gguf").is_err());
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let mut file = File::open(path.as_ref())?;
        let len = file.metadata()?.len();
        let (version, metadata, tensors, order) = {
            let mut header = Header {
                inner: std::io::BufReader::with_capacity(1 << 16, &mut file),
                pos: 0,
                len,
            };
            parse(&mut header)?
        };
        Ok(Self {
            version,
            metadata,
            tensors,
            order,
            source: Source::File(Mutex::new(file)),
        })
    }

    /// Parses and validates a GGUF file held in memory.
    ///
    /// # Errors
    /// As [`GgufFile::open`] (without file I/O).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let (version, metadata, tensors, order) = parse(&mut Header {
            inner: bytes.as_slice(),
            pos: 0,
            len: bytes.len() as u64,
        })?;
        Ok(Self {
            version,
            metadata,
            tensors,
            order,
            source: Source::Bytes(bytes),
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata entries.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// Metadata entry `key`.
    ///
    /// # Errors
    /// [`Error::Missing`] when absent.
    pub fn metadata_value(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| Error::Missing {
            what: "GGUF metadata key",
            name: key.to_string(),
        })
    }

    /// Metadata entry `key` as a string.
    ///
    /// # Errors
    /// [`Error::Missing`] when absent, [`Error::Corrupt`] when it is not a string.
    pub fn metadata_str(&self, key: &str) -> Result<&str> {
        match self.metadata_value(key)? {
            Value::String(s) => Ok(s),
            other => Err(corrupt(key, format!("expected a string, found {other:?}"))),
        }
    }

    /// Metadata entry `key` as an unsigned integer (any integer type, non-negative).
    ///
    /// # Errors
    /// [`Error::Missing`] when absent, [`Error::Corrupt`] when it is not a non-negative
    /// integer.
    pub fn metadata_u64(&self, key: &str) -> Result<u64> {
        let v = self.metadata_value(key)?;
        let n: Option<u64> = match *v {
            Value::U8(x) => Some(x.into()),
            Value::U16(x) => Some(x.into()),
            Value::U32(x) => Some(x.into()),
            Value::U64(x) => Some(x),
            Value::I8(x) => u64::try_from(x).ok(),
            Value::I16(x) => u64::try_from(x).ok(),
            Value::I32(x) => u64::try_from(x).ok(),
            Value::I64(x) => u64::try_from(x).ok(),
            _ => None,
        };
        n.ok_or_else(|| corrupt(key, format!("expected a non-negative integer, found {v:?}")))
    }

    /// Metadata entry `key` as a finite float (F32 or F64).
    ///
    /// # Errors
    /// [`Error::Missing`] when absent, [`Error::Corrupt`] when it is not a finite float.
    pub fn metadata_f64(&self, key: &str) -> Result<f64> {
        let v = self.metadata_value(key)?;
        let x = match *v {
            Value::F32(x) => f64::from(x),
            Value::F64(x) => x,
            _ => return Err(corrupt(key, format!("expected a float, found {v:?}"))),
        };
        if !x.is_finite() {
            return Err(corrupt(key, format!("non-finite value {x}")));
        }
        Ok(x)
    }

    /// Metadata entry `key` as an array of strings.
    ///
    /// # Errors
    /// [`Error::Missing`] when absent, [`Error::Corrupt`] when it is not an array of
    /// strings.
    pub fn metadata_strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.metadata_value(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    other => Err(corrupt(key, format!("expected strings, found {other:?}"))),
                })
                .collect(),
            other => Err(corrupt(key, format!("expected an array, found {other:?}"))),
        }
    }

    /// Tensor names in file order.
    pub fn tensor_names(&self) -> &[String] {
        &self.order
    }

    /// The directory entry of tensor `name`, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.get(name)
    }

    fn info(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor_info(name).ok_or_else(|| Error::Missing {
            what: "GGUF tensor",
            name: name.to_string(),
        })
    }

    /// The raw bytes of tensor `name` (GGML blocks, row-major).
    ///
    /// # Errors
    /// [`Error::Missing`] when absent; I/O errors (for example a file shortened since it
    /// was opened).
    pub fn tensor_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let info = self.info(name)?;
        // Bounds were validated at open time; offset + size fits the file.
        let start = usize::try_from(info.offset)
            .map_err(|_| corrupt(name, "offset does not fit in memory"))?;
        match &self.source {
            Source::Bytes(b) => Ok(b[start..start + info.size].to_vec()),
            Source::File(f) => {
                let mut f = f
                    .lock()
                    .map_err(|_| Error::invalid("GGUF file", "a reader thread panicked"))?;
                f.seek(SeekFrom::Start(info.offset))?;
                let mut buf = vec![0u8; info.size];
                f.read_exact(&mut buf)?;
                Ok(buf)
            }
        }
    }

    /// Tensor `name` as a candle [`QTensor`] on the CPU, in its stored type.
    ///
    /// # Errors
    /// As [`GgufFile::tensor_bytes`]; candle errors.
    pub fn qtensor(&self, name: &str) -> Result<QTensor> {
        let info = self.info(name)?;
        let raw = self.tensor_bytes(name)?;
        Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
            info.dtype,
            &raw,
            info.shape.clone(),
            &Device::Cpu,
        )?)
    }

    /// Tensor `name` dequantized to an f32 [`Tensor`] on the CPU.
    ///
    /// # Errors
    /// As [`GgufFile::qtensor`]; [`Error::NonFinite`] when a stored value or scale
    /// decodes to NaN or ±Inf.
    pub fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let t = self.qtensor(name)?.dequantize(&Device::Cpu)?;
        let flat = t.flatten_all()?.to_vec1::<f32>()?;
        crate::input::check_finite(&flat, "GGUF tensor values")?;
        Ok(t)
    }

    /// Tensor `name`, stored as Q8_0, as its codes (row-major, `i8` in `[-128, 127]`) and
    /// one f16 scale per 32 consecutive values of a row: value = `code · scale`.
    ///
    /// # Errors
    /// [`Error::Missing`]; [`Error::Unsupported`] when the tensor is not Q8_0;
    /// [`Error::NonFinite`] for a NaN/Inf scale.
    pub fn q8_0_blocks(&self, name: &str) -> Result<(Vec<i8>, Vec<f16>)> {
        let raw = self.typed_bytes(name, GgmlDType::Q8_0)?;
        let mut codes = Vec::with_capacity(raw.len() / 34 * 32);
        let mut scales = Vec::with_capacity(raw.len() / 34);
        for block in raw.chunks_exact(34) {
            scales.push(f16::from_le_bytes([block[0], block[1]]));
            codes.extend(block[2..].iter().map(|&b| b as i8));
        }
        check_scales(&scales)?;
        Ok((codes, scales))
    }

    /// Tensor `name`, stored as Q4_0, as its codes (row-major, in `[-8, 7]`) and one f16
    /// scale per 32 consecutive values of a row: value = `code · scale`.
    ///
    /// # Errors
    /// As [`GgufFile::q8_0_blocks`], for Q4_0.
    pub fn q4_0_blocks(&self, name: &str) -> Result<(Vec<i8>, Vec<f16>)> {
        let raw = self.typed_bytes(name, GgmlDType::Q4_0)?;
        let mut codes = vec![0i8; raw.len() / 18 * 32];
        let mut scales = Vec::with_capacity(raw.len() / 18);
        for (block, out) in raw.chunks_exact(18).zip(codes.chunks_exact_mut(32)) {
            scales.push(f16::from_le_bytes([block[0], block[1]]));
            for (j, &b) in block[2..].iter().enumerate() {
                out[j] = (b & 0x0f) as i8 - 8;
                out[j + 16] = (b >> 4) as i8 - 8;
            }
        }
        check_scales(&scales)?;
        Ok((codes, scales))
    }

    /// Tensor `name`, stored as Q4_1, as its codes (row-major, `q` in `[0, 15]`) and, per
    /// 32 consecutive values of a row, the f16 scale `d` and minimum `m`:
    /// value = `q · d + m`.
    ///
    /// # Errors
    /// As [`GgufFile::q8_0_blocks`], for Q4_1 (a NaN/Inf `d` or `m` is non-finite).
    ///
    /// ```
    /// use candle_compress::io::gguf_reader::GgufFile;
    /// use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    /// use candle_core::{Device, Tensor};
    /// let w = Tensor::arange(0f32, 64., &Device::Cpu)?.reshape((1, 64))?;
    /// let q = QTensor::quantize(&w, GgmlDType::Q4_1)?;
    /// let mut bytes = std::io::Cursor::new(Vec::new());
    /// gguf_file::write(&mut bytes, &[], &[("w", &q)])?;
    /// let file = GgufFile::from_bytes(bytes.into_inner())?;
    /// let (codes, d, m) = file.q4_1_blocks("w")?;
    /// assert_eq!((codes.len(), d.len(), m.len()), (64, 2, 2));
    /// assert_eq!((codes[0], codes[31]), (0, 15));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn q4_1_blocks(&self, name: &str) -> Result<(Vec<u8>, Vec<f16>, Vec<f16>)> {
        let raw = self.typed_bytes(name, GgmlDType::Q4_1)?;
        let mut codes = vec![0u8; raw.len() / 20 * 32];
        let mut d = Vec::with_capacity(raw.len() / 20);
        let mut m = Vec::with_capacity(raw.len() / 20);
        for (block, out) in raw.chunks_exact(20).zip(codes.chunks_exact_mut(32)) {
            d.push(f16::from_le_bytes([block[0], block[1]]));
            m.push(f16::from_le_bytes([block[2], block[3]]));
            for (j, &b) in block[4..].iter().enumerate() {
                out[j] = b & 0x0f;
                out[j + 16] = b >> 4;
            }
        }
        check_scales(&d)?;
        check_scales(&m)?;
        Ok((codes, d, m))
    }

    fn typed_bytes(&self, name: &str, want: GgmlDType) -> Result<Vec<u8>> {
        let info = self.info(name)?;
        if info.dtype != want {
            return Err(Error::Unsupported {
                what: "GGUF tensor type for this read",
                found: format!("{:?} (tensor {name})", info.dtype),
                supported: format!("{want:?}"),
            });
        }
        self.tensor_bytes(name)
    }
}

fn check_scales(scales: &[f16]) -> Result<()> {
    if let Some(i) = scales.iter().position(|s| !s.is_finite()) {
        return Err(Error::NonFinite {
            op: "GGUF block scales",
            value: scales[i].to_f32(),
            index: i,
        });
    }
    Ok(())
}

type Parsed = (
    u32,
    HashMap<String, Value>,
    HashMap<String, GgufTensorInfo>,
    Vec<String>,
);

fn parse<R: Read>(h: &mut Header<R>) -> Result<Parsed> {
    let magic = h.u32("magic")?;
    if magic != GGUF_MAGIC {
        return Err(corrupt(
            "magic",
            format!("expected \"GGUF\", found {:?}", magic.to_le_bytes()),
        ));
    }
    let version = h.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(Error::Unsupported {
            what: "GGUF version",
            found: version.to_string(),
            supported: "2, 3".into(),
        });
    }
    let n_tensors = h.u64("tensor count")?;
    let n_kv = h.u64("metadata count")?;
    // A key/value pair takes at least 13 bytes, a tensor-info record at least 24.
    h.need(n_kv.saturating_mul(13), "metadata")?;
    let mut metadata = HashMap::new();
    for _ in 0..n_kv {
        let key = h.string("metadata key")?;
        let ty = h.u32(&key)?;
        let value = h.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(corrupt("metadata", format!("duplicate key {key}")));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => u64::from(*a),
        Some(other) => {
            return Err(corrupt(
                "general.alignment",
                format!("must be a power-of-two u32, found {other:?}"),
            ))
        }
    };
    h.need(n_tensors.saturating_mul(24), "tensor infos")?;
    let mut raw_infos = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = h.string("tensor name")?;
        let n_dims = h.u32(&name)? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(corrupt(
                &name,
                format!("rank {n_dims} outside 1..={MAX_DIMS}"),
            ));
        }
        let mut shape = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = h.u64(&name)?;
            let d = usize::try_from(d).map_err(|_| corrupt(&name, "dimension overflows"))?;
            if d == 0 {
                return Err(corrupt(&name, "zero dimension"));
            }
            shape.push(d);
        }
        shape.reverse();
        let dtype = ggml_type(h.u32(&name)?, &name)?;
        let offset = h.u64(&name)?;
        raw_infos.push((name, shape, dtype, offset));
    }
    let data_start = h
        .pos
        .checked_next_multiple_of(alignment)
        .unwrap_or(u64::MAX);
    let file_len = h.len;
    let mut tensors = HashMap::new();
    let mut order = Vec::with_capacity(raw_infos.len());
    let mut ranges = Vec::with_capacity(raw_infos.len());
    for (name, shape, dtype, rel) in raw_infos {
        let elems = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| corrupt(&name, "element count overflows"))?;
        let block = dtype.block_size();
        if shape[shape.len() - 1] % block != 0 {
            return Err(corrupt(
                &name,
                format!(
                    "innermost dimension {} is not a multiple of the {dtype:?} block {block}",
                    shape[shape.len() - 1]
                ),
            ));
        }
        let size = (elems / block)
            .checked_mul(dtype.type_size())
            .ok_or_else(|| corrupt(&name, "byte size overflows"))?;
        if rel % alignment != 0 {
            return Err(corrupt(
                &name,
                format!("offset {rel} is not a multiple of the alignment {alignment}"),
            ));
        }
        let offset = data_start
            .checked_add(rel)
            .ok_or_else(|| corrupt(&name, "offset overflows"))?;
        let end = offset
            .checked_add(size as u64)
            .ok_or_else(|| corrupt(&name, "offset overflows"))?;
        if end > file_len {
            return Err(Error::Truncated {
                what: format!("GGUF tensor {name} (offset {rel})"),
                needed: usize::try_from(end).unwrap_or(usize::MAX),
                available: usize::try_from(file_len).unwrap_or(usize::MAX),
            });
        }
        ranges.push((offset, end, name.clone()));
        let info = GgufTensorInfo {
            shape,
            dtype,
            offset,
            size,
        };
        if tensors.insert(name.clone(), info).is_some() {
            return Err(corrupt("tensor infos", format!("duplicate tensor {name}")));
        }
        order.push(name);
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(corrupt(
                "tensor data",
                format!("tensors {} and {} overlap", pair[0].2, pair[1].2),
            ));
        }
    }
    Ok((version, metadata, tensors, order))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::{write_gguf, GgufTensor, GgufType};

    #[test]
    fn reads_back_q4_0_codes() -> Result<()> {
        let q: Vec<i8> = (0..64).map(|i| (i % 16) as i8 - 8).collect();
        let s = [f16::from_f32(0.25), f16::from_f32(-1.5)];
        let mut bytes = Vec::new();
        write_gguf(&mut bytes, &[], &[GgufTensor::q4_0("w", &[1, 64], &q, &s)?])?;
        let f = GgufFile::from_bytes(bytes)?;
        assert_eq!(f.q4_0_blocks("w")?, (q, s.to_vec()));
        assert!(f.q8_0_blocks("w").is_err());
        assert_eq!(
            f.tensor_info("w").map(|i| i.dtype),
            GgufType::Q4_0.ggml_dtype()
        );
        Ok(())
    }

    #[test]
    fn every_prefix_is_refused() -> Result<()> {
        let t = Tensor::ones((2, 32), candle_core::DType::F32, &Device::Cpu)?;
        let mut bytes = Vec::new();
        write_gguf(
            &mut bytes,
            &[],
            &[GgufTensor::float("w", &t, GgufType::F32)?],
        )?;
        for n in 0..bytes.len() {
            assert!(
                GgufFile::from_bytes(bytes[..n].to_vec()).is_err(),
                "prefix {n}"
            );
        }
        Ok(())
    }
}
