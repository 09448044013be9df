//! [`QuantLinear`]: a drop-in replacement for [`candle_nn::Linear`] that stores integer
//! weights and runs an integer matmul (W8A8 or W4A8) on CPU.
//!
//! ```
//! use candle_core::{Device, Module, Tensor};
//! use candle_compress::nn::{QuantConfig, QuantLinear};
//!
//! let w = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &Device::Cpu)?;
//! let b = Tensor::new(&[0.5f32, 0., -0.5], &Device::Cpu)?;
//! let lin = candle_nn::Linear::new(w, Some(b));
//! let q = QuantLinear::from_linear(&lin, &QuantConfig::w8a8())?;
//! let xs = Tensor::new(&[[10f32, 100.]], &Device::Cpu)?;
//! let ys = q.forward(&xs)?.to_vec2::<f32>()?;
//! // f32 Linear gives [[210.5, 430.0, 649.5]]; int8 is within a fraction of a percent.
//! for (y, want) in ys[0].iter().zip([210.5f32, 430., 649.5]) {
//!     assert!((y - want).abs() < 0.01 * want.abs());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Numerics
//!
//! **Weights, int8 (W8A8).** Symmetric, one scale per output channel (row of the
//! `[out, in]` weight): `sw[o] = amax_k |w[o,k]| / 127`, `qw = round_half_away(w / sw)`,
//! clamped to `[-127, 127]`; a zero row gets `sw = 0` and zero codes. This is the same
//! fused kernel (`kernels::gemm::quantize_rows_i8`) that quantizes activations.
//!
//! **Weights, int4 (W4A8).** Symmetric, one scale per group of `group` consecutive input
//! columns of an output row: `sw[o,g] = amax_group |w| / 7`,
//! `qw = round_half_away(w / sw)` clamped to `[-7, 7]` (the code −8 is never produced,
//! so the range stays symmetric and the largest weight of each group is exact); a zero
//! group gets `sw = 0`. [`QuantLinear::from_parts`] accepts any code in `[-8, 7]` and
//! any finite group scale, negative ones included (llama.cpp's Q4_0 files have them).
//!
//! **Weights, asymmetric int4 (W4A8, [`WeightQuant::Int4GroupedAsym`]).** One scale and
//! one offset per group: the code `c ∈ [-8, 7]` stands for `sw[o,g]·c + m[o,g]`. Round to
//! nearest over the group's range `[min, max]`: `sw = (max − min) / 15`,
//! `m = min + 8·sw`, `c = clamp(round_half_away((w − m) / sw), −8, 7)`, so `min` and `max`
//! map to the codes −8 and 7 (up to rounding); the scale and offset are computed in f64
//! and rounded to f32, the codes from those f32 values in f64 (so a range wider than
//! `f32::MAX` still gives finite parameters). A constant group gets `sw = 0` and
//! `m` = that value (exact), with codes 0. This is the layout of GGUF's Q4_1
//! (`w = d·q + m`, `q ∈ [0, 15]`: `c = q − 8`, `m' = m + 8d`), which therefore loads
//! without requantization. Non-finite weights are refused as for the other modes.
//!
//! **Activations, int8.** Chosen by [`ActivationQuant`]: per token (one scale per row of
//! the flattened `[rows, in]` input, `sx[t] = amax_k |x[t,k]| / 127`, the default), per
//! tensor (one `sx = amax / 127` for the whole input of the call), or a static scale from
//! calibration (`qx = clamp(round_half_away(x / sx), -127, 127)`, so values beyond
//! `127·sx` saturate), or not at all ([`ActivationQuant::Float`]: weight-only, the
//! dequantized weights times the float input). Quantization is one fused pass of the GEMM's row quantization (per tensor
//! adds a second pass when the batch has more than one row), split over rayon by rows for
//! large inputs.
//!
//! **Output.** The integer accumulator `acc[t,o] = Σ_k qx[t,k]·qw[o,k]` is exact (i32,
//! blocked into wider accumulators when `in_features` could overflow i32), and the float
//! epilogue is the one the GEMM kernels implement: for W8A8
//! `y[t,o] = acc[t,o] as f32 · (sx[t] · sw[o]) + b[o]`, for W4A8 one integer accumulator
//! per group, combined in f32 with the group scales. The same bits come out on every ISA.
//!
//! # Smoothing (SmoothQuant)
//!
//! A layer may carry a per-input-channel smoothing vector `s` (length `in_features`, every
//! entry finite and `> 0`). [`QuantLinear::from_linear_smoothed`] multiplies column `k` of
//! the weight by `s[k]` *before* quantizing it, and the forward pass multiplies input
//! column `k` by `1 / s[k]` inside the fused activation-quantization step (the kernel's
//! `smooth` argument: no extra pass, no extra tensor). In exact arithmetic
//! `(x / s) · (W·diag(s))ᵀ = x · Wᵀ`, so the layer computes the same function as the
//! original Linear while activation outliers move into the (per-channel scaled) weights.
//! Use it where no norm precedes the layer to fold `1/s` into; where a norm does precede
//! it, fold `1/s` into the norm instead and build the layer with
//! [`QuantLinear::from_linear`] on the already-scaled weights. A static activation scale
//! (see [`ActivationQuant::Static`]) applies to the *smoothed* activations `x / s`.
//!
//! # Errors and non-finite input
//!
//! Every entry point returns [`crate::Result`] and never panics on user data. Inputs with
//! NaN or ±Inf are refused with [`Error::NonFinite`] naming the first bad element by its
//! flat row-major index in the input tensor (the crate's one policy). Through
//! [`candle_core::Module::forward`] the same error arrives as a [`candle_core::Error`]
//! wrapping ours (`candle_core::Error::Wrapped`, inside `WithBacktrace` when backtraces
//! are enabled; the message is identical); call
//! [`QuantLinear::try_forward`] to receive the typed [`Error`] instead.
//!
//! [`Error`]: crate::Error
//! [`Error::NonFinite`]: crate::Error::NonFinite

mod config;
mod forward;
mod layer;
mod parts;
mod rows;
mod weights;

pub use config::{ActivationQuant, QuantConfig, WeightQuant, INT4_GROUPS};
pub use forward::QuantizedActivations;
pub use layer::QuantLinear;
pub use parts::QuantLinearParts;
pub(crate) use weights::asym_params;
