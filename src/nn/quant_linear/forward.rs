//! The forward pass of a [`QuantLinear`]: input checks, fused activation quantization,
//! the integer matmul and its epilogue, the weight-only path, and the candle glue
//! ([`candle_core::Module`] through a `CustomOp1`, with typed errors kept) plus the
//! per-thread scratch buffers a call reuses.

use std::cell::{Cell, RefCell};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use half::slice::HalfFloatSliceExt;

use super::config::ActivationQuant;
use super::layer::QuantLinear;
use super::rows::{quantize_rows, quantize_rows_with_scales};
use super::weights::PackedWeights;
use crate::error::{Error, Result};
use crate::input::with_f32_slice;
use crate::kernels::gemm;

/// Int8 activations and their scales, exactly as the forward pass feeds them to the
/// integer matmul (see [`QuantLinear::quantize_activations`]).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedActivations {
    /// Codes, row-major `[rows, cols]`.
    pub values: Vec<i8>,
    /// One scale per row (`x ≈ q · scale`); all equal in per-tensor and static modes.
    pub scales: Vec<f32>,
    /// Rows: the product of the input's leading dims.
    pub rows: usize,
    /// Columns: `in_features`.
    pub cols: usize,
}

impl QuantLinear {
    /// Runs the layer, returning this crate's typed [`Error`] (the [`candle_core::Module`]
    /// implementation calls this and converts the error).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a rank-0 input or a last dim other than
    /// `in_features`; [`Error::UnsupportedDType`] for integer dtypes;
    /// [`Error::Unsupported`] for a tensor not on the CPU; [`Error::NonFinite`] for
    /// NaN/Inf in the input (flat row-major index) or, with smoothing, an input whose
    /// smoothed value overflows. An input with zero rows gives an empty output
    /// `[.., out_features]`.
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x.dims(), x.dtype())?;
        if !x.device().is_cpu() {
            return Err(Error::Unsupported {
                what: "QuantLinear device",
                found: format!("{:?}", x.device().location()),
                supported: "cpu".into(),
            });
        }
        if self.config.activations == ActivationQuant::Float {
            return self.forward_weight_only(x);
        }
        // The op reads contiguous storage; a strided view is copied once (in its dtype).
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        let op = ForwardOp {
            layer: self,
            error: RefCell::new(None),
        };
        match x.apply_op1_no_bwd(&op) {
            Ok(y) => Ok(y),
            Err(e) => Err(op.error.into_inner().unwrap_or(Error::Candle(e))),
        }
    }

    /// Quantizes `x` (`[.., in_features]`) exactly as [`QuantLinear::try_forward`] does
    /// before the integer matmul, including smoothing: for inspection, calibration checks
    /// and tests.
    ///
    /// # Errors
    /// As [`QuantLinear::try_forward`]; [`Error::Unsupported`] for a weight-only layer
    /// ([`ActivationQuant::Float`]), whose activations are never quantized.
    pub fn quantize_activations(&self, x: &Tensor) -> Result<QuantizedActivations> {
        self.check_input(x.dims(), x.dtype())?;
        let cols = self.in_features;
        let rows = x.elem_count() / cols;
        with_f32_slice(x, "QuantLinear::quantize_activations", |xs| {
            let mut values = vec![0i8; xs.len()];
            let mut scales = vec![0f32; rows];
            self.quantize_into(xs, &mut values, &mut scales)?;
            Ok(QuantizedActivations {
                values,
                scales,
                rows,
                cols,
            })
        })
    }

    /// The weights dequantized ([`QuantLinear::dequantized_weights`]) and transposed:
    /// row-major `[in, out]`.
    fn dequantized_weights_t(&self) -> Vec<f32> {
        let (out, inp) = (self.out_features, self.in_features);
        let w = self.dequantized_weights();
        let mut wt = vec![0f32; out * inp];
        for (o, row) in w.chunks_exact(inp).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                wt[k * out + o] = v;
            }
        }
        wt
    }

    /// [`ActivationQuant::Float`]: `x · (q · s)ᵀ + b` in f32, output in the input dtype.
    fn forward_weight_only(&self, x: &Tensor) -> Result<Tensor> {
        let (inp, out) = (self.in_features, self.out_features);
        let rows = x.elem_count() / inp;
        let mut out_dims = x.dims().to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = out;
        }
        let dev = x.device();
        if rows == 0 {
            return Ok(Tensor::zeros(out_dims, x.dtype(), dev)?);
        }
        let xf = x.to_dtype(DType::F32)?.reshape((rows, inp))?;
        with_f32_slice(&xf, "QuantLinear::forward", |v| {
            crate::input::check_finite(v, "QuantLinear::forward")
        })?;
        let xf = match self.inv_smooth.as_deref() {
            Some(inv) => {
                let xs = xf.broadcast_mul(&Tensor::from_slice(inv, inp, dev)?)?;
                with_f32_slice(&xs, "QuantLinear::forward", |v| {
                    crate::input::check_finite(v, "QuantLinear::forward")
                })?;
                xs
            }
            None => xf,
        };
        let w = Tensor::from_vec(self.dequantized_weights_t(), (inp, out), dev)?;
        let mut y = xf.matmul(&w)?;
        if let Some(b) = self.bias.as_deref() {
            y = y.broadcast_add(&Tensor::from_slice(b, out, dev)?)?;
        }
        Ok(y.reshape(out_dims)?.to_dtype(x.dtype())?)
    }

    fn check_input(&self, dims: &[usize], dtype: DType) -> Result<()> {
        crate::input::ensure_float(dtype, "QuantLinear::forward")?;
        match dims.last() {
            Some(&k) if k == self.in_features => Ok(()),
            _ => Err(Error::shape(
                "QuantLinear input",
                format!("[.., {}]", self.in_features),
                dims,
            )),
        }
    }

    /// Quantizes row-major `x` (`rows × in_features`) into `q` and per-row `scales`.
    fn quantize_into(&self, x: &[f32], q: &mut [i8], scales: &mut [f32]) -> Result<()> {
        let cols = self.in_features;
        let smooth = self.inv_smooth.as_deref();
        let res = match self.config.activations {
            ActivationQuant::Float => {
                return Err(Error::Unsupported {
                    what: "activation quantization",
                    found: "a weight-only layer (ActivationQuant::Float)".into(),
                    supported: "PerToken, PerTensor or Static layers".into(),
                })
            }
            ActivationQuant::PerToken => quantize_rows(x, cols, smooth, q, scales),
            ActivationQuant::Static { scale } => {
                scales.fill(scale);
                quantize_rows_with_scales(x, cols, smooth, scales, q)
            }
            // Per-row scales first; the tensor's scale is their maximum, which equals
            // `max|y| / 127` exactly (correctly rounded division is monotonic). Rows
            // quantized with another scale are then redone with the shared one.
            ActivationQuant::PerTensor => {
                quantize_rows(x, cols, smooth, q, scales).and_then(|()| {
                    let scale = scales.iter().fold(0f32, |m, &s| m.max(s));
                    if scales.iter().all(|&s| s == scale) {
                        return Ok(());
                    }
                    scales.fill(scale);
                    quantize_rows_with_scales(x, cols, smooth, scales, q)
                })
            }
        };
        res.map_err(|e| e.or_non_finite(|i| non_finite(x, smooth, i)))
    }

    /// The forward pass on row-major f32 input: quantize, integer matmul, epilogue.
    /// `out` holds `rows × out_features` values, `x` `rows × in_features`.
    fn forward_f32(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let rows = x.len() / self.in_features;
        if rows == 0 {
            return Ok(());
        }
        let mut scales = vec![0f32; rows];
        with_scratch(&SCRATCH_I8, x.len(), |qx| {
            self.quantize_into(x, qx, &mut scales)?;
            let bias = self.bias.as_deref();
            match &self.weights {
                PackedWeights::W8(w) => gemm::matmul_w8a8(qx, &scales, rows, w, bias, out)?,
                PackedWeights::W4(w) => gemm::matmul_w4a8(qx, &scales, rows, w, bias, out)?,
            }
            Ok(())
        })
    }

    /// Half-precision (or f64) input: widened into a reused f32 buffer, run in f32, the
    /// output narrowed once into the returned vector.
    fn forward_converted<T: Copy + Default>(
        &self,
        x: &[T],
        widen: impl Fn(&[T], &mut [f32]),
        narrow: impl Fn(&[f32], &mut [T]),
    ) -> Result<Vec<T>> {
        let n_out = x.len() / self.in_features * self.out_features;
        let mut out = vec![T::default(); n_out];
        with_scratch(&SCRATCH_F32, x.len() + n_out, |buf| {
            let (xf, yf) = buf.split_at_mut(x.len());
            widen(x, xf);
            self.forward_f32(xf, yf)?;
            narrow(yf, &mut out);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`CustomOp1::cpu_fwd`] body with typed errors.
    fn cpu_forward(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        self.check_input(dims, storage.dtype())?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_features;
        }
        let out_shape = Shape::from(out_dims);
        // `try_forward` only passes contiguous tensors.
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(Error::invalid(
                "QuantLinear input layout",
                format!(
                    "expected a contiguous layout, found strides {:?}",
                    layout.stride()
                ),
            ));
        };
        let n_out = (end - start) / self.in_features * self.out_features;
        let out = match storage {
            CpuStorage::F32(all) => {
                let mut out = vec![0f32; n_out];
                self.forward_f32(&all[start..end], &mut out)?;
                CpuStorage::F32(out)
            }
            CpuStorage::F16(all) => CpuStorage::F16(self.forward_converted(
                &all[start..end],
                |x, xf| x.convert_to_f32_slice(xf),
                |yf, y| y.convert_from_f32_slice(yf),
            )?),
            CpuStorage::BF16(all) => CpuStorage::BF16(self.forward_converted(
                &all[start..end],
                |x, xf| x.convert_to_f32_slice(xf),
                |yf, y| y.convert_from_f32_slice(yf),
            )?),
            CpuStorage::F64(all) => CpuStorage::F64(self.forward_converted(
                &all[start..end],
                |x, xf| xf.iter_mut().zip(x).for_each(|(d, &v)| *d = v as f32),
                |yf, y| y.iter_mut().zip(yf).for_each(|(d, &v)| *d = f64::from(v)),
            )?),
            other => {
                return Err(Error::UnsupportedDType {
                    op: "QuantLinear::forward",
                    expected: crate::input::FLOAT_DTYPES,
                    found: other.dtype(),
                })
            }
        };
        Ok((out, out_shape))
    }
}

impl candle_core::Module for QuantLinear {
    /// Runs [`QuantLinear::try_forward`]; errors arrive as [`candle_core::Error`] wrapping
    /// this crate's [`Error`] (same message).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.try_forward(x).map_err(candle_core::Error::from)
    }
}

/// The candle graph node of one forward call. `cpu_fwd` must return a candle error; the
/// typed error is parked in `error` so [`QuantLinear::try_forward`] can return it as is.
struct ForwardOp<'a> {
    layer: &'a QuantLinear,
    error: RefCell<Option<Error>>,
}

impl CustomOp1 for ForwardOp<'_> {
    fn name(&self) -> &'static str {
        "quant-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.layer.cpu_forward(storage, layout).map_err(|e| {
            let wrapped = candle_core::Error::Msg(e.to_string());
            *self.error.borrow_mut() = Some(e);
            wrapped
        })
    }
}

thread_local! {
    /// Reused int8 activation buffer: quantized inputs of a call are dead once the matmul
    /// returns, and a fresh multi-MiB allocation per call costs page faults comparable to
    /// the quantization itself. Taken out of the cell while in use, so a nested call on
    /// this thread (rayon work stealing) simply allocates its own.
    static SCRATCH_I8: Cell<Vec<i8>> = const { Cell::new(Vec::new()) };
    /// Reused f32 buffer for widened F16/BF16/F64 inputs and the f32 output before it is
    /// narrowed back (same discipline as `SCRATCH_I8`).
    static SCRATCH_F32: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Buffers above this many bytes are not kept between calls (a one-off huge batch should
/// not pin its memory for the life of the thread).
const SCRATCH_KEEP_MAX_BYTES: usize = 64 << 20;

/// Runs `f` on `len` elements of this thread's scratch buffer `cell` (contents
/// unspecified: `f` must write before it reads).
fn with_scratch<T: Copy + Default + 'static, R>(
    cell: &'static std::thread::LocalKey<Cell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> Result<R>,
) -> Result<R> {
    let mut buf = cell.with(Cell::take);
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    let r = f(&mut buf[..len]);
    if buf.len() * std::mem::size_of::<T>() <= SCRATCH_KEEP_MAX_BYTES {
        cell.with(|c| c.set(buf));
    }
    r
}

/// Builds the [`Error::NonFinite`] for flat index `i` of the input.
fn non_finite(x: &[f32], smooth: Option<&[f32]>, i: usize) -> Error {
    let value = x.get(i).copied().unwrap_or(f32::NAN);
    let value = match smooth {
        // The input itself is finite: its smoothed value overflowed; report that.
        Some(s) if value.is_finite() => value * s[i % s.len()],
        _ => value,
    };
    Error::NonFinite {
        op: "QuantLinear::forward",
        index: i,
        value,
    }
}
