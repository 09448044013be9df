//! The one error type of the kernel entry points.
//!
//! Every public kernel function checks its arguments (slice lengths against the sizes the
//! other arguments imply, parameter ranges) before any kernel runs and returns a
//! [`KernelError`] instead of panicking. The checks are a few comparisons per call, never
//! per element (except where the contract is about the values themselves, e.g. int4
//! weights in [-8, 7]), and sizes computed from the arguments use checked arithmetic.
//! A [`KernelError`] converts into [`crate::Error`] with `?`.

/// Why a kernel entry point refused its arguments or its data.
///
/// ```
/// use candle_compress::kernels::gemm::quantize_rows_i8;
/// let (mut q, mut s) = ([0i8; 5], [0f32; 2]);
/// let e = quantize_rows_i8(&[0.0; 5], 3, None, &mut q, &mut s).unwrap_err();
/// assert_eq!(
///     e.to_string(),
///     "quantize_rows_i8: x has 5 elements, need rows × cols = 2 × 3 = 6"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A slice's length does not match what the other arguments imply.
    #[error("{op}: {arg} has {found} elements, need {need}")]
    Length {
        /// The entry point, e.g. `"matmul_w8a8"`.
        op: &'static str,
        /// The argument whose length is wrong, e.g. `"qx"`.
        arg: &'static str,
        /// Its length.
        found: usize,
        /// The length it must have and where that comes from, e.g.
        /// `"rows × in_features = 3 × 4 = 12"`.
        need: String,
    },

    /// A size computed from the arguments (e.g. `rows × in_features`) does not fit in
    /// `usize`.
    #[error("{op}: {what} overflows usize")]
    Overflow {
        /// The entry point.
        op: &'static str,
        /// The product and its factors, e.g. `"rows × in_features = 18446744073709551615 × 4"`.
        what: String,
    },

    /// A parameter or value outside its valid range (block size 0, `bits` not 4 or 8, an
    /// int4 weight outside [-8, 7], a negative scale, …).
    #[error("{op}: invalid {name}: {reason}")]
    InvalidArgument {
        /// The entry point.
        op: &'static str,
        /// The parameter, e.g. `"group"`.
        name: &'static str,
        /// Why it was refused, including the value found.
        reason: String,
    },

    /// A NaN or ±Inf: in the input, or produced from finite input (an overflowing
    /// `x · smooth` product, a finite f32 that rounds beyond ±65504 in f16). The outputs
    /// are then unspecified.
    #[error("{op}: non-finite {what} at flat index {index}")]
    NonFinite {
        /// The entry point.
        op: &'static str,
        /// What was not finite, e.g. `"value"` or `"f16 (NaN, ±Inf or beyond ±65504)"`.
        what: &'static str,
        /// Flat index (into the input slice) of the first such element.
        index: usize,
    },
}

impl KernelError {
    /// The flat index of the first non-finite element for [`KernelError::NonFinite`],
    /// `None` for the argument errors.
    pub fn non_finite_index(&self) -> Option<usize> {
        match self {
            KernelError::NonFinite { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// The same error with a [`KernelError::NonFinite`] index moved by `by` (for callers
    /// that run a kernel on a chunk starting at flat index `by`).
    pub(crate) fn offset(self, by: usize) -> Self {
        match self {
            KernelError::NonFinite { op, what, index } => KernelError::NonFinite {
                op,
                what,
                index: index + by,
            },
            other => other,
        }
    }

    /// Into [`crate::Error`], a [`KernelError::NonFinite`] through `non_finite` (the
    /// caller's own [`crate::Error::NonFinite`], naming its operation and the value).
    pub(crate) fn or_non_finite(
        self,
        non_finite: impl FnOnce(usize) -> crate::Error,
    ) -> crate::Error {
        match self.non_finite_index() {
            Some(index) => non_finite(index),
            None => self.into(),
        }
    }

    pub(crate) fn invalid(op: &'static str, name: &'static str, reason: String) -> Self {
        KernelError::InvalidArgument { op, name, reason }
    }
}

/// `Err(Length)` unless `found == need`; `how` describes `need` (formatted only on error).
#[inline]
pub(crate) fn expect_len(
    op: &'static str,
    arg: &'static str,
    found: usize,
    need: usize,
    how: impl FnOnce() -> String,
) -> Result<(), KernelError> {
    if found == need {
        return Ok(());
    }
    Err(KernelError::Length {
        op,
        arg,
        found,
        need: format!("{} = {need}", how()),
    })
}

/// `a × b`, or `Err(Overflow)` naming the product (`names`, e.g. `"rows × cols"`).
#[inline]
pub(crate) fn checked_mul(
    op: &'static str,
    names: &'static str,
    a: usize,
    b: usize,
) -> Result<usize, KernelError> {
    a.checked_mul(b).ok_or_else(|| KernelError::Overflow {
        op,
        what: format!("{names} = {a} × {b}"),
    })
}

/// `Err(InvalidArgument)` unless `size >= 1` (block and group sizes).
#[inline]
pub(crate) fn expect_positive(
    op: &'static str,
    name: &'static str,
    size: usize,
) -> Result<(), KernelError> {
    if size >= 1 {
        return Ok(());
    }
    Err(KernelError::invalid(
        op,
        name,
        "must be at least 1, found 0".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_function_and_both_lengths() {
        let e = expect_len("matmul_w8a8", "qx", 10, 12, || {
            "rows × in_features = 3 × 4".into()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "matmul_w8a8: qx has 10 elements, need rows × in_features = 3 × 4 = 12"
        );
        let e = checked_mul("matmul_w8a8", "rows × in_features", usize::MAX, 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "matmul_w8a8: rows × in_features = {} × 4 overflows usize",
                usize::MAX
            )
        );
        assert_eq!(checked_mul("m", "a × b", 3, 4), Ok(12));
        let e = expect_positive("dequantize_u4_lut", "group", 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "dequantize_u4_lut: invalid group: must be at least 1, found 0"
        );
        assert_eq!(e.non_finite_index(), None);
    }

    #[test]
    fn non_finite_index_moves_with_the_chunk() {
        let e = KernelError::NonFinite {
            op: "quantize_rows_i8",
            what: "value",
            index: 3,
        };
        assert_eq!(e.non_finite_index(), Some(3));
        assert_eq!(e.clone().offset(10).non_finite_index(), Some(13));
        assert_eq!(
            e.to_string(),
            "quantize_rows_i8: non-finite value at flat index 3"
        );
    }

    #[test]
    fn converts_into_the_crate_error() {
        let e = KernelError::invalid("PackedW4::pack", "group", "found 12".into());
        let ours: crate::Error = e.clone().into();
        assert_eq!(ours.to_string(), e.to_string());
        assert!(matches!(ours, crate::Error::Kernel(ref k) if *k == e));
        let theirs: candle_core::Error = ours.into();
        assert!(theirs.to_string().contains("PackedW4::pack: invalid group"));
    }
}
