//! The check made before a command writes anything: the output may not be a directory
//! nor an existing file (without `--force`). (Inputs that already hold compressed values
//! are refused by the library's conversions.)

use std::path::Path;

use candle_compress::Result;

use crate::failure::invalid;

/// Refuses an output path that is a directory, or that exists unless `force` is set.
pub(crate) fn check_output(path: &Path, force: bool) -> Result<()> {
    if path.is_dir() {
        return Err(invalid(
            "output",
            format!("{} is a directory; give a file name", path.display()),
        ));
    }
    if path.exists() && !force {
        return Err(invalid(
            "output",
            format!(
                "{} exists; refusing to overwrite it (use --force)",
                path.display()
            ),
        ));
    }
    Ok(())
}
