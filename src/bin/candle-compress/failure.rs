//! How a command fails: [`Failure`], one line naming the file (and tensor: the library's
//! conversions put them in front of the message) plus a stable `kind` for `--json`.
//! Every subcommand returns a [`CliResult`]; `main` turns a failure into stderr (or a
//! JSON error object) and exit code 1.

use candle_compress::Error;

/// An [`Error::InvalidArgument`] (the library's constructor is crate-private).
pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        name,
        reason: reason.into(),
    }
}

/// A failed command as the CLI reports it: one line naming the file (and the tensor, where
/// one is concerned) and what went wrong, plus a stable `kind` for `--json` consumers.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

pub(crate) type CliResult<T> = std::result::Result<T, Failure>;

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let kind = match e.root() {
            Error::ShapeMismatch { .. } => "shape_mismatch",
            Error::UnsupportedDType { .. } => "unsupported_dtype",
            Error::NonFinite { .. } => "non_finite",
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::MetadataMismatch { .. } => "metadata_mismatch",
            Error::Truncated { .. } => "truncated",
            Error::Corrupt { .. } => "corrupt",
            Error::Unsupported { .. } => "unsupported",
            Error::Missing { .. } => "missing",
            Error::OutOfRange { .. } => "out_of_range",
            Error::SizeOverflow { .. } => "size_overflow",
            Error::Io(_) => "io",
            Error::Json(_) => "json",
            Error::Safetensors(_) => "safetensors",
            _ => "error",
        };
        Failure {
            kind,
            message: e.to_string().replace('\n', " "),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e).into()
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e).into()
    }
}

impl From<candle_core::Error> for Failure {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(e).into()
    }
}
