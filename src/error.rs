//! The crate's error type.
//!
//! Every fallible public function returns [`Result<T>`]. Variants name what was expected
//! and what was found, so a message is enough to fix the call. Inside candle traits
//! (`Module`, `CustomOp1`) an [`Error`] converts into [`candle_core::Error`] with `?`.

use candle_core::DType;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in candle-compress.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor (or slice) has the wrong shape or length.
    #[error("{what}: expected shape {expected}, found {found}")]
    ShapeMismatch {
        /// What was being checked, e.g. `"QuantLinear input"`.
        what: String,
        /// The expected shape or length, formatted.
        expected: String,
        /// The shape or length that was found, formatted.
        found: String,
    },

    /// A tensor has a dtype the operation does not accept.
    #[error("{op}: unsupported dtype {found:?}, expected {expected}")]
    UnsupportedDType {
        /// The operation that refused the dtype.
        op: &'static str,
        /// The accepted dtypes, e.g. `"F32, F16, BF16 or F64"`.
        expected: &'static str,
        /// The dtype that was passed.
        found: DType,
    },

    /// An input holds NaN or ±Inf. The crate's one policy: refuse, naming the first bad
    /// element by its flat (row-major) index.
    #[error("{op}: non-finite value {value} at flat index {index}")]
    NonFinite {
        /// The operation that found the value.
        op: &'static str,
        /// Flat row-major index of the first non-finite element.
        index: usize,
        /// The offending value.
        value: f32,
    },

    /// A parameter is out of its valid range (block size 0, α outside [0, 1], …).
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// The parameter's name.
        name: &'static str,
        /// Why it was refused, including the value found.
        reason: String,
    },

    /// A compressed value does not match the metadata it is used with (decompressing with a
    /// different block size, parts whose lengths disagree, …).
    #[error("metadata mismatch in {what}: expected {expected}, found {found}")]
    MetadataMismatch {
        /// The value or field being checked.
        what: String,
        /// What the metadata says.
        expected: String,
        /// What the value holds.
        found: String,
    },

    /// Bytes ended before a complete value could be read.
    #[error("truncated {what}: needed {needed} bytes, only {available} available")]
    Truncated {
        /// What was being read.
        what: String,
        /// Bytes required.
        needed: usize,
        /// Bytes present.
        available: usize,
    },

    /// Bytes are present but do not form a valid value.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What was being decoded.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A format, scheme or version this build does not know.
    #[error("unsupported {what}: {found} (supported: {supported})")]
    Unsupported {
        /// What kind of thing, e.g. `"codec version"`.
        what: &'static str,
        /// The value found.
        found: String,
        /// The values this build supports.
        supported: String,
    },

    /// A named tensor, scale or entry is missing.
    #[error("missing {what}: {name}")]
    Missing {
        /// What kind of thing, e.g. `"tensor"`.
        what: &'static str,
        /// Its name.
        name: String,
    },

    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),

    /// An error from the `safetensors` crate.
    #[error(transparent)]
    Safetensors(#[from] safetensors::SafeTensorError),

    /// A JSON (de)serialization error.
    #[error(transparent)]
    Json(#[from] serde_json::Error),

    /// A matrix that must be symmetric positive definite is not (numerically), e.g. a
    /// calibration Gram matrix `H` whose Cholesky factorization fails after dampening.
    #[error("{what} is not positive definite: {reason}")]
    NotPositiveDefinite {
        /// The matrix, e.g. `"GPTQ Hessian (H + λI)"`.
        what: String,
        /// Where the factorization failed, with the pivot found.
        reason: String,
    },

    /// A finite value that the target dtype cannot hold (an F64 `1e39` read as f32, an
    /// `1e5` stored as F16): refused rather than turned into ±Inf.
    #[error("{op}: value {} at flat index {index} is out of {target} range (max ±{})", Num(*.value), Num(*.max))]
    OutOfRange {
        /// The operation that found the value.
        op: &'static str,
        /// Flat row-major index of the first such element.
        index: usize,
        /// The offending value.
        value: f64,
        /// The dtype it does not fit, e.g. `"f32"` or `"F16"`.
        target: &'static str,
        /// The largest finite magnitude of `target`.
        max: f64,
    },

    /// A kernel entry point ([`crate::kernels`]) refused its arguments or data: a slice
    /// length that does not match the sizes given, a size that overflows, a parameter out
    /// of range, a non-finite value. The message names the function and both lengths.
    #[error(transparent)]
    Kernel(#[from] crate::kernels::KernelError),

    /// A size computed from a shape (element count, bytes, a counter) does not fit.
    #[error("{what}: size of {shape} overflows usize")]
    SizeOverflow {
        /// What was being sized, e.g. `"Scheme::compressed_size_bytes"`.
        what: String,
        /// The shape (or count) it was computed from, formatted.
        shape: String,
    },

    /// Another error, with the file (and tensor) it happened in put in front of its
    /// message: what the file-to-file conversions of [`crate::convert`] return, so one
    /// line says where. [`Error::root`] gives the error inside.
    #[error("{what}: {source}")]
    Within {
        /// Where, e.g. `"model.safetensors: tensor fc1.weight"`.
        what: String,
        /// What went wrong there.
        source: Box<Error>,
    },
}

impl Error {
    /// This error with `what` (a file, a tensor) put in front of its message, as
    /// [`Error::Within`].
    ///
    /// ```
    /// use candle_compress::Error;
    /// let e = Error::Missing { what: "tensor", name: "fc.weight".into() }.within("model.safetensors");
    /// assert_eq!(e.to_string(), "model.safetensors: missing tensor: fc.weight");
    /// assert!(matches!(e.root(), Error::Missing { .. }));
    /// ```
    pub fn within(self, what: impl std::fmt::Display) -> Self {
        Error::Within {
            what: what.to_string(),
            source: Box::new(self),
        }
    }

    /// The error under any [`Error::Within`] context: what kind of failure it was.
    pub fn root(&self) -> &Error {
        let mut e = self;
        while let Error::Within { source, .. } = e {
            e = source;
        }
        e
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::ShapeMismatch`].
    pub(crate) fn shape(
        what: impl Into<String>,
        expected: impl std::fmt::Debug,
        found: impl std::fmt::Debug,
    ) -> Self {
        Error::ShapeMismatch {
            what: what.into(),
            expected: format!("{expected:?}"),
            found: format!("{found:?}"),
        }
    }

    /// Shorthand for [`Error::MetadataMismatch`].
    pub(crate) fn metadata(
        what: impl Into<String>,
        expected: impl std::fmt::Display,
        found: impl std::fmt::Display,
    ) -> Self {
        Error::MetadataMismatch {
            what: what.into(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

impl From<Error> for candle_core::Error {
    /// Wraps without capturing a backtrace (`candle_core::Error::wrap` adds one when
    /// `RUST_BACKTRACE` is set, which changes the message): an error returned through a
    /// `Module` reads the same either way.
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(inner) => inner,
            other => candle_core::Error::Wrapped(Box::new(other)),
        }
    }
}

/// Formats a number for a message: plain for ordinary magnitudes (`0.25`, `65504`), with an
/// exponent for large and tiny ones (`1e30`, `-2.5e-12`) so they stay readable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Num<T>(pub T);

macro_rules! num_display {
    ($t:ty) => {
        impl std::fmt::Display for Num<$t> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let v = self.0;
                let a = v.abs();
                if v == 0.0 || !v.is_finite() || (1e-4..1e9).contains(&a) {
                    write!(f, "{v}")
                } else {
                    write!(f, "{v:e}")
                }
            }
        }
    };
}
num_display!(f32);
num_display!(f64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_expected_and_found() {
        let e = Error::shape("QuantLinear input", [4usize, 8], [4usize, 7]);
        assert_eq!(
            e.to_string(),
            "QuantLinear input: expected shape [4, 8], found [4, 7]"
        );
        let e = Error::NonFinite {
            op: "BlockwiseInt8::compress",
            index: 17,
            value: f32::NAN,
        };
        assert!(e.to_string().contains("flat index 17"));
    }

    #[test]
    fn numbers_print_with_an_exponent_when_large_or_tiny() {
        assert_eq!(Num(-1e30f32).to_string(), "-1e30");
        assert_eq!(Num(1e-30f32).to_string(), "1e-30");
        assert_eq!(Num(3.4028235e38f32).to_string(), "3.4028235e38");
        assert_eq!(Num(65504f32).to_string(), "65504");
        assert_eq!(Num(0.25f64).to_string(), "0.25");
        assert_eq!(Num(f32::INFINITY).to_string(), "inf");
        assert_eq!(Num(0f64).to_string(), "0");
    }

    #[test]
    fn converts_into_candle_error_and_back() {
        let ours = Error::invalid("block_size", "must be at least 1, found 0");
        let theirs: candle_core::Error = ours.into();
        assert!(theirs.to_string().contains("block_size"));
        let candle_err = candle_core::Error::Msg("boom".into());
        let back: Error = candle_err.into();
        let again: candle_core::Error = back.into();
        assert!(matches!(again, candle_core::Error::Msg(_)));
    }
}
