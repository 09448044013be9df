//! Saving, loading and exchanging compressed tensors and quantized models.
//!
//! - [`reader`]: a validating, lazy safetensors reader (header checked once, one tensor's
//!   bytes read at a time) — the base of every loader here.
//! - [`safetensors`]: compressed tensors, quantized layers and plain tensors in one
//!   `.safetensors` file (layout documented there), loaded whole or one tensor at a time.
//! - [`loader`]: [`QuantLoader`](loader::QuantLoader), a `VarBuilder`-style loader with
//!   `pp(prefix)` scoping for quantized models (our files, float checkpoints quantized on
//!   load, compressed-tensors checkpoints).
//! - [`compressed_tensors`]: the `int-quantized` (W8A8) and `pack-quantized` (W4 groups)
//!   layouts of compressed-tensors, with their `config.json` `quantization_config`.
//! - [`gguf`]: export of Q8_0 / Q4_0 tensors to GGUF files that candle and llama.cpp read.
//! - [`gguf_reader`]: a validating GGUF reader (metadata, tensor directory, one tensor at
//!   a time); [`gguf_loader`]: [`QuantLoader::from_gguf`](loader::QuantLoader::from_gguf),
//!   GGUF weights into `QuantLinear`s on load.
//!
//! Writers never leave a half-written file under the target name: they write a temporary
//! file in the same directory and rename it into place; [`remove_temp_files`] removes
//! those of unfinished writes when a signal ends the process.

pub mod compressed_tensors;
pub mod gguf;
pub mod gguf_loader;
pub mod gguf_reader;
pub mod loader;
mod part;
mod part_writer;
pub mod reader;
pub mod safetensors;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use part_writer::PartWriter;

/// Runs `write` on a fresh temporary file beside `path`, syncs it and renames it over
/// `path`. On any error the temporary file is removed and `path` is untouched.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    let tmp = temp_sibling(path)?;
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A name for a temporary file in `path`'s directory: hidden, and unique to this process
/// and moment, so concurrent writers never collide.
pub(crate) fn temp_sibling(path: &Path) -> Result<PathBuf> {
    let Some(file_name) = path.file_name() else {
        return Err(Error::invalid(
            "output path",
            format!("{} has no file name", path.display()),
        ));
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp_name = format!(
        ".{}.{}.{nanos}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    );
    let tmp = path.with_file_name(tmp_name);
    let mut pending = PENDING_TEMP_FILES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Now and then forget the temporary files that are gone (renamed or removed), so the
    // list stays short in long-running processes. (A name is pushed before its file is
    // created, so pruning on every call could drop a write that is about to start.)
    if pending.len() >= 64 {
        pending.retain(|p| p.exists());
    }
    pending.push(tmp.clone());
    Ok(tmp)
}

/// The temporary files the writers of this module have named in this process; entries
/// whose file is gone are dropped on the next write.
static PENDING_TEMP_FILES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes the temporary files of writes still in progress in this process and returns
/// how many it removed.
///
/// Writers clean up after themselves on errors and when dropped, but a process ended by
/// a signal (Ctrl-C, `SIGTERM`) runs no destructors: call this from your signal handler
/// before exiting so no hidden `.NAME.PID.NANOS.tmp` file is left beside the output (the
/// `candle-compress` CLI does). Finished outputs are never touched: they are already
/// renamed into place.
///
/// ```
/// // Nothing is being written, so nothing is removed.
/// assert_eq!(candle_compress::io::remove_temp_files(), 0);
/// ```
pub fn remove_temp_files() -> usize {
    let mut pending = PENDING_TEMP_FILES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pending
        .drain(..)
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

/// Writes in-memory parts as a safetensors file at `path` through a [`PartWriter`]
/// (a temporary sibling renamed into place, so a failure leaves nothing at `path`).
/// Tensors are laid out like the `safetensors` crate does: by decreasing dtype alignment,
/// then by name, so every tensor starts aligned for its dtype.
///
/// # Errors
/// As [`PartWriter::create`] and [`PartWriter::finish`].
pub(crate) fn write_safetensors(
    path: &Path,
    mut parts: Vec<(&str, &part::Part)>,
    metadata: std::collections::HashMap<String, String>,
) -> Result<()> {
    part_writer::sort_for_alignment(&mut parts);
    let slots: Vec<part_writer::Slot> = parts.iter().map(|(n, p)| p.slot(n)).collect();
    let mut writer = PartWriter::create(path, &slots, metadata)?;
    for (name, p) in &parts {
        writer.write_part(name, &p.data)?;
    }
    writer.finish()
}

/// Little-endian bytes → `i8` values (one per byte).
pub(crate) fn bytes_to_i8(b: &[u8]) -> Vec<i8> {
    b.iter().map(|&x| x as i8).collect()
}

/// Little-endian bytes → `f16` values (a trailing odd byte is ignored; callers validated
/// the length against the header).
pub(crate) fn bytes_to_f16(b: &[u8]) -> Vec<half::f16> {
    b.chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Little-endian bytes → `f32` values.
pub(crate) fn bytes_to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing_behind() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out.bin");
        std::fs::write(&path, b"old")?;
        let err = write_atomically(&path, |f| {
            use std::io::Write;
            f.write_all(b"partial")?;
            Err(Error::invalid("test", "fails midway"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path)?, b"old");
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        write_atomically(&path, |f| {
            use std::io::Write;
            f.write_all(b"new")?;
            Ok(())
        })?;
        assert_eq!(std::fs::read(&path)?, b"new");
        Ok(())
    }
}
