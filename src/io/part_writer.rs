//! [`PartWriter`]: the one safetensors writer under every file this crate writes. The
//! tensors (*slots*: name, dtype, shape, byte length) are declared up front, because the
//! header comes first and holds every offset; the header is written, then each tensor's
//! bytes in the declared order, so peak memory is one tensor whatever the file size.
//!
//! The header is what the `safetensors` crate writes for the same tensors in the same
//! order (its `Metadata` serialised as JSON, padded with spaces to a multiple of 8), so
//! files are byte-for-byte those of `safetensors::serialize` when the slots are in its
//! order ([`sort_for_alignment`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, TensorInfo};

use super::part::Part;
use super::reader::MAX_HEADER_SIZE;
use crate::error::{Error, Result};

/// One tensor's entry in a safetensors header: its name, dtype, shape and byte length.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Slot {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub len: usize,
}

/// Orders in-memory parts as the `safetensors` crate does: by decreasing dtype alignment,
/// then by name, so every tensor starts aligned for its dtype.
pub(crate) fn sort_for_alignment(parts: &mut [(&str, &Part)]) {
    parts.sort_by(|(ln, l), (rn, r)| r.dtype.cmp(&l.dtype).then(ln.cmp(rn)));
}

/// The header (without its 8-byte length prefix) of a file holding `slots` in this order,
/// with `metadata` as its `__metadata__`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a header over [`MAX_HEADER_SIZE`] or data offsets that
/// overflow; errors of the `safetensors` crate's `Metadata::new` (a length disagreeing
/// with dtype × shape).
pub(crate) fn header(slots: &[Slot], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut infos = Vec::with_capacity(slots.len());
    let mut offset = 0usize;
    for s in slots {
        let end = offset
            .checked_add(s.len)
            .ok_or_else(|| Error::invalid("safetensors data offsets", "overflow usize"))?;
        infos.push((
            s.name.clone(),
            TensorInfo {
                dtype: s.dtype,
                shape: s.shape.clone(),
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }
    let header = Metadata::new(Some(metadata), infos)?;
    let mut header = serde_json::to_string(&header)?.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    if header.len() > MAX_HEADER_SIZE {
        return Err(Error::invalid(
            "safetensors header",
            format!(
                "{} bytes exceeds the maximum {MAX_HEADER_SIZE}",
                header.len()
            ),
        ));
    }
    Ok(header)
}

/// A whole file of in-memory `parts` (laid out in the given order) as bytes.
///
/// # Errors
/// As [`header`].
pub(crate) fn to_bytes(
    parts: &[(&str, &Part)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let slots: Vec<Slot> = parts.iter().map(|(n, p)| p.slot(n)).collect();
    let header = header(&slots, metadata)?;
    let data: usize = parts.iter().map(|(_, p)| p.data.len()).sum();
    let mut out = Vec::with_capacity(8 + header.len() + data);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, p) in parts {
        out.extend_from_slice(&p.data);
    }
    Ok(out)
}

/// Writes a safetensors file slot by slot into a temporary sibling of the target, renamed
/// into place by [`PartWriter::finish`]; dropping the writer unfinished deletes it.
#[derive(Debug)]
pub(crate) struct PartWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    /// Declared names and byte lengths, in order.
    slots: Vec<(String, usize)>,
    next: usize,
    written: usize,
}

impl PartWriter {
    /// Builds the header of `slots` (see [`header`]), creates the temporary file and
    /// writes the length prefix and header.
    ///
    /// # Errors
    /// As [`header`]; I/O errors creating or writing the temporary file.
    pub fn create(path: &Path, slots: &[Slot], metadata: HashMap<String, String>) -> Result<Self> {
        let header = header(slots, metadata)?;
        let tmp = super::temp_sibling(path)?;
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let mut writer = Self {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            path: path.to_path_buf(),
            slots: slots.iter().map(|s| (s.name.clone(), s.len)).collect(),
            next: 0,
            written: 0,
        };
        let out = writer.out_mut()?;
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        Ok(writer)
    }

    fn out_mut(&mut self) -> Result<&mut BufWriter<File>> {
        self.out
            .as_mut()
            .ok_or_else(|| Error::invalid("writer", "closed"))
    }

    /// Writes the bytes of the next declared slot.
    ///
    /// # Errors
    /// [`Error::MetadataMismatch`] when `name` is not the next slot or `data` is not its
    /// declared length (nothing is written then); I/O errors.
    pub fn write_part(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some((planned, len)) = self.slots.get(self.next) else {
            return Err(Error::invalid(
                "streamed part",
                format!("{name}: all declared parts were already written"),
            ));
        };
        if planned != name || *len != data.len() {
            return Err(Error::metadata(
                format!("streamed part {name}"),
                format!("{planned} {len} bytes"),
                format!("{name} {} bytes", data.len()),
            ));
        }
        self.out_mut()?.write_all(data)?;
        self.written += data.len();
        self.next += 1;
        Ok(())
    }

    /// Bytes of tensor data written so far.
    pub fn data_bytes(&self) -> usize {
        self.written
    }

    /// Checks every slot was written, syncs the file and renames it into place.
    ///
    /// # Errors
    /// [`Error::Missing`] naming the first slot not written; I/O errors (the temporary
    /// file is removed then).
    pub fn finish(mut self) -> Result<()> {
        if let Some((name, _)) = self.slots.get(self.next) {
            return Err(Error::Missing {
                what: "safetensors part (declared, never written)",
                name: name.clone(),
            });
        }
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::invalid("writer", "closed"))?;
        let result = (|| {
            let file = out.into_inner().map_err(|e| Error::Io(e.into_error()))?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.tmp, &self.path)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        // Unfinished (an error, or finish() not called): remove the temporary file.
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(String, Part)> {
        vec![
            ("b".into(), Part::f32(vec![2], &[1.0, -2.0])),
            ("a".into(), Part::i8(vec![3], &[1, -1, 7])),
            ("c".into(), Part::f32(vec![1], &[0.5])),
        ]
    }

    #[test]
    fn bytes_are_those_of_the_safetensors_crate() -> Result<()> {
        let parts = sample();
        let mut views: Vec<(&str, &Part)> = parts.iter().map(|(n, p)| (n.as_str(), p)).collect();
        sort_for_alignment(&mut views);
        let ours = to_bytes(&views, HashMap::from([("k".into(), "v".into())]))?;
        let theirs = safetensors::serialize(
            parts.iter().map(|(n, p)| (n.as_str(), p)),
            Some(HashMap::from([("k".into(), "v".into())])),
        )?;
        assert_eq!(ours, theirs);
        Ok(())
    }

    #[test]
    fn streamed_file_equals_the_in_memory_bytes_and_checks_order() -> Result<()> {
        let parts = sample();
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("p.safetensors");
        let slots: Vec<Slot> = parts.iter().map(|(n, p)| p.slot(n)).collect();
        let mut w = PartWriter::create(&path, &slots, HashMap::new())?;
        assert!(w.write_part("a", &parts[1].1.data).is_err()); // not the next slot
        assert!(w.write_part("b", &[0; 3]).is_err()); // wrong length
        for (n, p) in &parts {
            w.write_part(n, &p.data)?;
        }
        assert_eq!(w.data_bytes(), 15);
        w.finish()?;
        let views: Vec<(&str, &Part)> = parts.iter().map(|(n, p)| (n.as_str(), p)).collect();
        assert_eq!(std::fs::read(&path)?, to_bytes(&views, HashMap::new())?);

        let w = PartWriter::create(&dir.path().join("q.safetensors"), &slots, HashMap::new())?;
        assert!(matches!(w.finish(), Err(Error::Missing { .. })));
        assert_eq!(
            std::fs::read_dir(dir.path())?.count(),
            1,
            "temporary file removed"
        );
        Ok(())
    }
}
