//! The f32 element-wise and row operations around an LLM's linear layers: `exp`, SwiGLU's
//! `silu(gate) · up`, a row softmax with a causal limit per row (attention scores), and
//! the whole attention of a few query rows over a KV cache ([`attend_rows`]) or of a
//! prompt's many rows ([`attend_blocked`]).
//!
//! Why: in a decoder whose linears run on the integer kernels, these operations are what
//! is left of a prefill's time; candle's CPU versions call a scalar `expf` per element
//! and the attention needs a separate mask tensor and scale pass. Here `exp` is a
//! polynomial with range reduction written once for every ISA, and the softmax takes the
//! causal limit and the scale as arguments. A decode step's attention (one query per
//! head against a few hundred cached keys) is a few thousand multiply-adds per head:
//! [`attend_rows`] does it in one pass over the cache, where two generic matmul calls
//! cost more in set-up than in arithmetic.
//!
//! Accuracy: [`exp_in_place`] is within 2 ulp of the true `e^x` for `x` in
//! `[-87, 88]` (tested against f64 on 2 million points: at most 1.002 ulp, relative
//! error at most 8.4e-8); below −87 (and for −∞) it gives exactly `+0`, above
//! 88 (and for +∞) it gives `exp(88) ≈ 1.65e38`, never an infinity; NaN stays NaN.
//!
//! Safe entry points check their arguments ([`KernelError`], never a panic) and run the
//! kernel for this process's ISA ([`kernel_isa`], detected once and cached): AVX-512F on
//! CPUs with the AVX-512 kernels, AVX2 + FMA on other x86_64 CPUs, NEON on aarch64,
//! otherwise the scalar twin in `scalar.rs`. Each SIMD kernel is written once over the
//! `F32Vector` trait (`generic.rs`: `exp` and the element-wise loops; `rows.rs`: the row
//! softmax and [`attend_rows`]' per-row kernel; `blocked.rs`: [`attend_blocked`]) and
//! instantiated for `__m512`, `__m256` and `float32x4_t` by `avx512.rs`, `avx2.rs` and
//! `neon.rs`. `scalar.rs` is the definition of correct: the SIMD versions perform the
//! same operations in the same order (FMA where the scalar code calls `f32::mul_add`, the
//! same 16-lane partial sums in the softmax and the dot products, as one, two or four
//! vectors) and are tested against it bit for bit. The `*_on(isa, ..)` forms run a chosen
//! ISA (`Ok(None)` when the CPU lacks it) for tests and benchmarks. Large inputs are split
//! over rayon's threads; each element's (each row's) result does not depend on the split.
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use rayon::prelude::*;

#[cfg(target_arch = "aarch64")]
use super::detect::Neon;
use super::detect::{active_isa, Isa};
#[cfg(target_arch = "x86_64")]
use super::detect::{Avx2, Avx512Vnni};
use super::error::{checked_mul, expect_len, KernelError};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod blocked;
mod generic;
#[cfg(target_arch = "aarch64")]
mod neon;
mod rows;
mod scalar;

/// Elements per rayon task of the element-wise kernels (and the least work per task of
/// the softmax and of the attention): below about this, waking a thread costs more than
/// the work.
const PAR_CHUNK: usize = 16 * 1024;

/// The instruction set these kernels run on in this process: [`Isa::Avx512Vnni`] (its
/// AVX-512F part) when that is the active ISA or AMX is, [`Isa::Avx2`] on other x86_64
/// CPUs with AVX2, [`Isa::Neon`] on aarch64, otherwise [`Isa::Scalar`].
pub fn kernel_isa() -> Isa {
    match active_isa() {
        Isa::Avx512Vnni | Isa::Amx => Isa::Avx512Vnni,
        Isa::Avx2 | Isa::AvxVnni => Isa::Avx2,
        Isa::Neon => Isa::Neon,
        Isa::Scalar => Isa::Scalar,
    }
}

/// `gate[i] = silu(gate[i]) · up[i]` with `silu(g) = g · σ(g) = g / (1 + e^−g)`: the
/// SwiGLU product of an LLM's MLP, in place in the gate projection's output.
///
/// Length: `up.len() == gate.len()`. Finite inputs give a finite output unless `g · u`
/// itself is beyond the f32 range (`silu(g) ≈ g` for large `g`); for
/// `g < −88` the result is `g / (1 + exp(88)) · u` (magnitude below `|g·u| · 6e-39`)
/// where the exact one is smaller still. NaN in gives NaN out.
///
/// # Errors
/// [`KernelError::Length`] when the lengths differ (nothing written).
///
/// ```
/// use candle_compress::kernels::act::silu_mul_in_place;
/// let mut gate = [0.0f32, 1.0, -1.0, 20.0];
/// silu_mul_in_place(&mut gate, &[1.0, 2.0, 1.0, 0.5]).unwrap();
/// assert_eq!(gate[0], 0.0);
/// assert!((gate[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
/// assert!((gate[2] + 1.0 / (1.0 + 1.0f32.exp())).abs() < 1e-6);
/// assert!((gate[3] - 10.0).abs() < 1e-5);
/// assert!(silu_mul_in_place(&mut gate, &[1.0]).is_err());
/// ```
pub fn silu_mul_in_place(gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
    check_silu("silu_mul_in_place", gate, up)?;
    run_silu(kernel_isa(), gate, up);
    Ok(())
}

/// [`silu_mul_in_place`] on a chosen instruction set; `Ok(None)` (nothing written) when
/// this CPU lacks `isa` or there is no kernel for it.
///
/// # Errors
/// As [`silu_mul_in_place`], whether or not the CPU has `isa`.
pub fn silu_mul_in_place_on(
    isa: Isa,
    gate: &mut [f32],
    up: &[f32],
) -> Result<Option<()>, KernelError> {
    check_silu("silu_mul_in_place_on", gate, up)?;
    if !available(isa) {
        return Ok(None);
    }
    run_silu(isa, gate, up);
    Ok(Some(()))
}

/// `x[i] = e^x[i]` (see the module docs for its accuracy and range). Never fails; it
/// returns `Result` like every kernel entry point.
///
/// # Errors
/// None at present (no argument can be wrong).
///
/// ```
/// use candle_compress::kernels::act::exp_in_place;
/// let mut x = [0.0f32, 1.0, -200.0, f32::NEG_INFINITY, 1e30];
/// exp_in_place(&mut x).unwrap();
/// assert_eq!(x[0], 1.0);
/// assert!((x[1] - std::f32::consts::E).abs() < 1e-6);
/// assert_eq!(&x[2..4], &[0.0, 0.0]);
/// assert!(x[4].is_finite());
/// ```
pub fn exp_in_place(x: &mut [f32]) -> Result<(), KernelError> {
    run_exp(kernel_isa(), x);
    Ok(())
}

/// [`exp_in_place`] on a chosen instruction set; `Ok(None)` (nothing written) when this
/// CPU lacks `isa` or there is no kernel for it.
///
/// # Errors
/// None at present.
pub fn exp_in_place_on(isa: Isa, x: &mut [f32]) -> Result<Option<()>, KernelError> {
    if !available(isa) {
        return Ok(None);
    }
    run_exp(isa, x);
    Ok(Some(()))
}

/// Softmax of each row of a row-major `[rows, cols]` score buffer, where row `r` uses only
/// its first `limits[r]` columns (`rows = limits.len()`): in place,
/// `p_j = e^(s·x_j − m) / Σ_k e^(s·x_k − m)` for `j < limits[r]` (`s = scale`,
/// `m = max_k s·x_k`), and exact zeros from column `limits[r]` on. A causal attention
/// passes `limits[r] = past + r + 1` (query `r` sees the cached keys and itself) and
/// `scale = 1/√head_dim`, and needs neither a mask tensor nor a scale pass. A row with
/// `limits[r] == 0` becomes all zeros.
///
/// The sum is accumulated in 16 fixed partial sums (element `j` in sum `j % 16`), so the
/// result is the same on every ISA and every thread count.
///
/// # Errors
/// [`KernelError::Length`] when `scores.len() != limits.len() × cols` and
/// [`KernelError::InvalidArgument`] for a limit above `cols` or a non-finite `scale`
/// (nothing written); [`KernelError::NonFinite`] when a row's used columns hold a NaN or
/// +∞ (or only −∞), with the flat index of that row's first element: that row is then
/// unspecified (the other rows are computed).
///
/// ```
/// use candle_compress::kernels::act::softmax_rows;
/// // Two rows of three columns: the first may see one column, the second all three.
/// let mut s = [5.0f32, 7.0, 9.0, 0.0, 0.0, 2.0f32.ln() * 2.0];
/// softmax_rows(&mut s, 3, &[1, 3], 0.5).unwrap();
/// assert_eq!(&s[..3], &[1.0, 0.0, 0.0]);
/// assert!((s[3] - 0.25).abs() < 1e-6 && (s[4] - 0.25).abs() < 1e-6);
/// assert!((s[5] - 0.5).abs() < 1e-6);
/// assert!(softmax_rows(&mut s, 3, &[4, 1], 1.0).is_err()); // a limit beyond cols
/// ```
pub fn softmax_rows(
    scores: &mut [f32],
    cols: usize,
    limits: &[usize],
    scale: f32,
) -> Result<(), KernelError> {
    const OP: &str = "softmax_rows";
    check_softmax(OP, scores, cols, limits, scale)?;
    run_softmax(OP, kernel_isa(), scores, cols, limits, scale)
}

/// [`softmax_rows`] on a chosen instruction set; `Ok(None)` (nothing written) when this
/// CPU lacks `isa` or there is no kernel for it.
///
/// # Errors
/// As [`softmax_rows`]; the argument errors whether or not the CPU has `isa`.
pub fn softmax_rows_on(
    isa: Isa,
    scores: &mut [f32],
    cols: usize,
    limits: &[usize],
    scale: f32,
) -> Result<Option<()>, KernelError> {
    const OP: &str = "softmax_rows_on";
    check_softmax(OP, scores, cols, limits, scale)?;
    if !available(isa) {
        return Ok(None);
    }
    run_softmax(OP, isa, scores, cols, limits, scale).map(Some)
}

/// Where the keys (or values) of an attention's KV heads are: row `j` of head `h` is the
/// `d` floats from `h · head_stride + j · row_stride` (`d` = the query width). A KV cache
/// `[heads, capacity, d]` of which `len` positions are filled is
/// `KvLayout { heads, len, head_stride: capacity · d, row_stride: d }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// KV heads.
    pub heads: usize,
    /// Rows (positions) per head.
    pub len: usize,
    /// Floats between heads.
    pub head_stride: usize,
    /// Floats between rows of a head.
    pub row_stride: usize,
}

/// Causal scaled dot-product attention of query rows over a KV cache, fused:
/// for query row `r`, `out[r] = Σ_{j < limits[r]} p_j · v_j` with
/// `p = softmax(scale · q[r]·k_j)` over those keys (the softmax of [`softmax_rows`]).
///
/// `q` and `out` are row-major `[rows, d]` with `rows = limits.len()`; the rows are the
/// query heads in KV-head order, `rows / kv.heads` consecutive rows per KV head (grouped
/// query attention: the query heads of one KV head, each with its queries). `keys` and
/// `values` are laid out as `kv` says. Rows are shared between rayon's threads when the
/// work is large; each row's result is the same on every ISA and thread count (fixed
/// 16-lane sums for the dot products, one FMA chain per output element).
///
/// # Errors
/// [`KernelError::Length`] / [`KernelError::InvalidArgument`] (nothing written) when
/// `q.len() != rows × d` or `out.len()` differs from it, `d == 0`, `rows` is not a
/// multiple of `kv.heads`, a limit exceeds `kv.len`, a key or value row lies outside its
/// slice, or `scale` is not finite; [`KernelError::NonFinite`] when a row's scores are
/// (a NaN or ±∞ input, or a dot product beyond the f32 range), with the flat index of
/// that row in `out` (that row is then unspecified).
///
/// ```
/// use candle_compress::kernels::act::{attend_rows, KvLayout};
/// // One KV head with two positions of width 2; one query that sees both.
/// let keys = [1.0f32, 0.0, 0.0, 1.0];
/// let values = [10.0f32, 0.0, 0.0, 20.0];
/// let kv = KvLayout { heads: 1, len: 2, head_stride: 4, row_stride: 2 };
/// let mut out = [0.0f32; 2];
/// attend_rows(&[0.0, 0.0], 2, &keys, &values, kv, &[2], 1.0, &mut out).unwrap();
/// assert_eq!(out, [5.0, 10.0]); // equal scores: the mean of the two values
/// attend_rows(&[0.0, 0.0], 2, &keys, &values, kv, &[1], 1.0, &mut out).unwrap();
/// assert_eq!(out, [10.0, 0.0]); // the first position only
/// assert!(attend_rows(&[0.0; 2], 2, &keys, &values, kv, &[3], 1.0, &mut out).is_err());
/// ```
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(
    q: &[f32],
    d: usize,
    keys: &[f32],
    values: &[f32],
    kv: KvLayout,
    limits: &[usize],
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let a = Attention {
        q,
        d,
        keys,
        values,
        kv,
        limits,
        scale,
    };
    attend_entry("attend_rows", None, &a, out, run_attend).map(|_| ())
}

/// [`attend_rows`] on a chosen instruction set; `Ok(None)` (nothing written) when this
/// CPU lacks `isa` or there is no kernel for it.
///
/// # Errors
/// As [`attend_rows`]; the argument errors whether or not the CPU has `isa`.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows_on(
    isa: Isa,
    q: &[f32],
    d: usize,
    keys: &[f32],
    values: &[f32],
    kv: KvLayout,
    limits: &[usize],
    scale: f32,
    out: &mut [f32],
) -> Result<Option<()>, KernelError> {
    let a = Attention {
        q,
        d,
        keys,
        values,
        kv,
        limits,
        scale,
    };
    attend_entry("attend_rows_on", Some(isa), &a, out, run_attend)
}

/// The function of [`attend_rows`] computed for many query rows at once, as a prompt's
/// attention needs: the rows of one KV head go through in blocks whose rows share every
/// key and value load (see `blocked.rs`), so the work runs at the multiply-add rate
/// where [`attend_rows`] is bound by reading the cache once per row.
///
/// Same arguments, contract and errors as [`attend_rows`]. The sums run in another
/// order: each score is one FMA chain over the elements, the softmax's sum one chain over
/// the keys (see `scalar::attend_row_chained`), so the results differ from
/// [`attend_rows`]' in the last bits, and are the same on every ISA, thread count and
/// block split. Scratch memory per thread: about `(limit + d) × 64` floats. Best for
/// tens of rows or more per KV head; for a decode step's few rows [`attend_rows`] is
/// faster.
///
/// # Errors
/// As [`attend_rows`].
///
/// ```
/// use candle_compress::kernels::act::{attend_blocked, KvLayout};
/// // One KV head with two positions of width 2; two causal queries.
/// let keys = [1.0f32, 0.0, 0.0, 1.0];
/// let values = [10.0f32, 0.0, 0.0, 20.0];
/// let kv = KvLayout { heads: 1, len: 2, head_stride: 4, row_stride: 2 };
/// let mut out = [0.0f32; 4];
/// attend_blocked(&[0.0; 4], 2, &keys, &values, kv, &[1, 2], 1.0, &mut out).unwrap();
/// assert_eq!(out, [10.0, 0.0, 5.0, 10.0]);
/// assert!(attend_blocked(&[0.0; 4], 2, &keys, &values, kv, &[1, 3], 1.0, &mut out).is_err());
/// ```
#[allow(clippy::too_many_arguments)]
pub fn attend_blocked(
    q: &[f32],
    d: usize,
    keys: &[f32],
    values: &[f32],
    kv: KvLayout,
    limits: &[usize],
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let a = Attention {
        q,
        d,
        keys,
        values,
        kv,
        limits,
        scale,
    };
    attend_entry("attend_blocked", None, &a, out, run_blocked).map(|_| ())
}

/// [`attend_blocked`] on a chosen instruction set; `Ok(None)` (nothing written) when this
/// CPU lacks `isa` or there is no kernel for it.
///
/// # Errors
/// As [`attend_blocked`]; the argument errors whether or not the CPU has `isa`.
#[allow(clippy::too_many_arguments)]
pub fn attend_blocked_on(
    isa: Isa,
    q: &[f32],
    d: usize,
    keys: &[f32],
    values: &[f32],
    kv: KvLayout,
    limits: &[usize],
    scale: f32,
    out: &mut [f32],
) -> Result<Option<()>, KernelError> {
    let a = Attention {
        q,
        d,
        keys,
        values,
        kv,
        limits,
        scale,
    };
    attend_entry("attend_blocked_on", Some(isa), &a, out, run_blocked)
}

/// The arguments of [`attend_rows`] and [`attend_blocked`].
#[derive(Clone, Copy)]
struct Attention<'a> {
    q: &'a [f32],
    d: usize,
    keys: &'a [f32],
    values: &'a [f32],
    kv: KvLayout,
    limits: &'a [usize],
    scale: f32,
}

/// The entry path of both attention kernels: checks the arguments (whether or not the
/// CPU has `isa`), then runs `run` on `isa` (`None`: this process's [`kernel_isa`]) and
/// turns the first non-finite row it reports into [`KernelError::NonFinite`]; `Ok(None)`,
/// nothing written, when the CPU lacks a requested `isa`.
fn attend_entry(
    op: &'static str,
    isa: Option<Isa>,
    a: &Attention,
    out: &mut [f32],
    run: fn(Isa, &Attention, &mut [f32]) -> Option<usize>,
) -> Result<Option<()>, KernelError> {
    check_attend(op, a, out)?;
    let isa = match isa {
        None => kernel_isa(),
        Some(isa) if available(isa) => isa,
        Some(_) => return Ok(None),
    };
    match run(isa, a, out) {
        None => Ok(Some(())),
        Some(r) => Err(KernelError::NonFinite {
            op,
            what: "attention score (from a NaN or infinite input, or beyond the f32 range) in the row starting",
            index: r * a.d,
        }),
    }
}

/// Query rows per block of [`attend_blocked`] on `isa`: four vectors of lanes.
fn block_rows(isa: Isa) -> usize {
    match isa {
        Isa::Neon => 16,
        Isa::Avx2 => 32,
        _ => 64,
    }
}

/// One block of [`attend_blocked`] (rows `r0..`, one KV head) on `isa` (available,
/// checked by the callers); the flat row index of its first non-finite row. Widths that
/// are not whole vectors and positions from `2^24` on take the scalar twin.
fn attend_block(
    isa: Isa,
    b: &blocked::Block,
    scratch: &mut (blocked::Scratch, Vec<f32>),
    out: &mut [f32],
) -> Option<usize> {
    let long = b.limits.iter().any(|&n| n >= 1 << 24);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if b.d.is_multiple_of(16) && !long => {
            if let Some(cpu) = Avx512Vnni::detect() {
                return avx512::attend_block(cpu, b, &mut scratch.0, out);
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if b.d.is_multiple_of(8) && !long => {
            if let Some(cpu) = Avx2::detect() {
                return avx2::attend_block(cpu, b, &mut scratch.0, out);
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if b.d.is_multiple_of(4) && !long => {
            if let Some(cpu) = Neon::detect() {
                return neon::attend_block(cpu, b, &mut scratch.0, out);
            }
        }
        _ => {}
    }
    let scores = &mut scratch.1;
    let mut bad = None;
    for (r, (o, &len)) in out.chunks_mut(b.d).zip(b.limits).enumerate() {
        let row = scalar::AttendRow {
            q: &b.q[r * b.d..(r + 1) * b.d],
            keys: b.keys,
            values: b.values,
            stride: b.stride,
            scale: b.scale,
        };
        scores.resize(len, 0.0);
        let sum = scalar::attend_row_chained(&row, scores, o);
        if bad.is_none() && !sum.is_finite() {
            bad = Some(r);
        }
    }
    bad
}

/// Runs the blocks of [`attend_blocked`] (arguments checked): each KV head's rows in
/// blocks of [`block_rows`], the blocks shared between rayon's threads when the work is
/// at least [`PAR_CHUNK`] multiply-adds per thread; returns the first non-finite row.
fn run_blocked(isa: Isa, a: &Attention, out: &mut [f32]) -> Option<usize> {
    let (rows, d) = (a.limits.len(), a.d);
    if rows == 0 {
        return None;
    }
    let per_head = rows / a.kv.heads;
    let width = block_rows(isa);
    let blocks: Vec<(usize, &mut [f32])> = out
        .chunks_mut(per_head * d)
        .enumerate()
        .flat_map(|(h, oh)| {
            oh.chunks_mut(width * d)
                .enumerate()
                .map(move |(i, ob)| (h * per_head + i * width, ob))
        })
        .collect();
    let one = |scratch: &mut (blocked::Scratch, Vec<f32>), (r0, ob): (usize, &mut [f32])| {
        let n = ob.len() / d;
        let base = (r0 / per_head) * a.kv.head_stride;
        let b = blocked::Block {
            q: &a.q[r0 * d..(r0 + n) * d],
            d,
            keys: &a.keys[base.min(a.keys.len())..],
            values: &a.values[base.min(a.values.len())..],
            stride: a.kv.row_stride,
            limits: &a.limits[r0..r0 + n],
            scale: a.scale,
        };
        attend_block(isa, &b, scratch, ob).map(|r| r0 + r)
    };
    let work = a.limits.iter().sum::<usize>().saturating_mul(2 * d);
    if work < 2 * PAR_CHUNK || rayon::current_num_threads() < 2 || blocks.len() < 2 {
        let mut scratch = Default::default();
        blocks
            .into_iter()
            .filter_map(|blk| one(&mut scratch, blk))
            .min()
    } else {
        blocks
            .into_par_iter()
            .map_init(Default::default, one)
            .flatten()
            .min()
    }
}

fn check_attend(op: &'static str, a: &Attention, out: &[f32]) -> Result<(), KernelError> {
    let Attention {
        q,
        d,
        keys,
        values,
        kv,
        limits,
        scale,
    } = *a;
    if d == 0 {
        return Err(KernelError::invalid(op, "d", "must be at least 1".into()));
    }
    let rows = limits.len();
    let need = checked_mul(op, "rows × d", rows, d)?;
    expect_len(op, "q", q.len(), need, || {
        format!("rows × d = {rows} × {d}")
    })?;
    expect_len(op, "out", out.len(), need, || {
        format!("rows × d = {rows} × {d}")
    })?;
    if rows > 0 && (kv.heads == 0 || !rows.is_multiple_of(kv.heads)) {
        return Err(KernelError::invalid(
            op,
            "kv.heads",
            format!(
                "{rows} query rows are not a whole number per each of {} KV heads",
                kv.heads
            ),
        ));
    }
    check_limits(op, limits, kv.len, "positions")?;
    if kv.heads > 0 && kv.len > 0 {
        // The last float any row reads: head heads-1, row len-1, element d-1.
        let last = checked_mul(op, "head offset", kv.heads - 1, kv.head_stride)?
            .checked_add(checked_mul(op, "row offset", kv.len - 1, kv.row_stride)?)
            .and_then(|x| x.checked_add(d))
            .ok_or_else(|| KernelError::invalid(op, "kv", "offsets overflow usize".into()))?;
        for (name, len) in [("keys", keys.len()), ("values", values.len())] {
            if len < last {
                return Err(KernelError::invalid(
                    op,
                    name,
                    format!("{len} floats, the layout {kv:?} with d = {d} reads {last}"),
                ));
            }
        }
    }
    check_scale(op, scale)
}

/// One query row's attention on `isa` (available, checked by the callers); the softmax's
/// sum.
fn attend_row(isa: Isa, a: &scalar::AttendRow, scores: &mut [f32], out: &mut [f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => match Avx512Vnni::detect() {
            Some(cpu) => avx512::attend_row(cpu, a, scores, out),
            None => scalar::attend_row(a, scores, out),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match Avx2::detect() {
            Some(cpu) => avx2::attend_row(cpu, a, scores, out),
            None => scalar::attend_row(a, scores, out),
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => match Neon::detect() {
            Some(cpu) => neon::attend_row(cpu, a, scores, out),
            None => scalar::attend_row(a, scores, out),
        },
        _ => scalar::attend_row(a, scores, out),
    }
}

/// Runs the rows of [`attend_rows`] (arguments checked), in parallel when the work is
/// at least [`PAR_CHUNK`] multiply-adds per thread; returns the first non-finite row.
fn run_attend(isa: Isa, a: &Attention, out: &mut [f32]) -> Option<usize> {
    let Attention {
        q,
        d,
        keys,
        values,
        kv,
        limits,
        scale,
    } = *a;
    let rows = limits.len();
    if rows == 0 {
        return None;
    }
    let per_head = rows / kv.heads;
    let one = |r: usize, o: &mut [f32], scores: &mut Vec<f32>| -> Option<usize> {
        let len = limits[r];
        let h = r / per_head;
        let base = h * kv.head_stride;
        let row = scalar::AttendRow {
            q: &q[r * d..(r + 1) * d],
            keys: &keys[base.min(keys.len())..],
            values: &values[base.min(values.len())..],
            stride: kv.row_stride,
            scale,
        };
        scores.resize(len, 0.0);
        let sum = attend_row(isa, &row, scores, o);
        (!sum.is_finite()).then_some(r)
    };
    let work = limits.iter().sum::<usize>().saturating_mul(2 * d);
    if work < 2 * PAR_CHUNK || rayon::current_num_threads() < 2 {
        let mut scores = Vec::new();
        out.chunks_mut(d)
            .enumerate()
            .filter_map(|(r, o)| one(r, o, &mut scores))
            .min()
    } else {
        out.par_chunks_mut(d)
            .enumerate()
            .map_init(Vec::new, |scores, (r, o)| one(r, o, scores))
            .flatten()
            .min()
    }
}

fn check_silu(op: &'static str, gate: &[f32], up: &[f32]) -> Result<(), KernelError> {
    expect_len(op, "up", up.len(), gate.len(), || "gate.len()".into())
}

fn check_softmax(
    op: &'static str,
    scores: &[f32],
    cols: usize,
    limits: &[usize],
    scale: f32,
) -> Result<(), KernelError> {
    let need = checked_mul(op, "rows × cols", limits.len(), cols)?;
    expect_len(op, "scores", scores.len(), need, || {
        format!("rows × cols = {} × {cols}", limits.len())
    })?;
    check_limits(op, limits, cols, "columns")?;
    check_scale(op, scale)
}

/// Every causal limit is at most `bound` (the row's `what`: columns, cached positions).
fn check_limits(
    op: &'static str,
    limits: &[usize],
    bound: usize,
    what: &str,
) -> Result<(), KernelError> {
    match limits.iter().enumerate().find(|(_, &l)| l > bound) {
        Some((r, &l)) => Err(KernelError::invalid(
            op,
            "limits",
            format!("row {r} uses {l} {what} of {bound}"),
        )),
        None => Ok(()),
    }
}

/// The softmax scale is finite.
fn check_scale(op: &'static str, scale: f32) -> Result<(), KernelError> {
    if scale.is_finite() {
        Ok(())
    } else {
        Err(KernelError::invalid(
            op,
            "scale",
            format!("must be finite, found {scale}"),
        ))
    }
}

/// Whether this CPU runs `isa`'s kernels here.
fn available(isa: Isa) -> bool {
    match isa {
        Isa::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Avx2::detect().is_some(),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => Avx512Vnni::detect().is_some(),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Neon::detect().is_some(),
        _ => false,
    }
}

/// One chunk of [`silu_mul_in_place`] on `isa` (available, checked by the callers).
fn silu_chunk(isa: Isa, gate: &mut [f32], up: &[f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => match Avx512Vnni::detect() {
            Some(cpu) => avx512::silu_mul_in_place(cpu, gate, up),
            None => scalar::silu_mul_in_place(gate, up),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match Avx2::detect() {
            Some(cpu) => avx2::silu_mul_in_place(cpu, gate, up),
            None => scalar::silu_mul_in_place(gate, up),
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => match Neon::detect() {
            Some(cpu) => neon::silu_mul_in_place(cpu, gate, up),
            None => scalar::silu_mul_in_place(gate, up),
        },
        _ => scalar::silu_mul_in_place(gate, up),
    }
}

fn run_silu(isa: Isa, gate: &mut [f32], up: &[f32]) {
    if gate.len() < 2 * PAR_CHUNK {
        return silu_chunk(isa, gate, up);
    }
    gate.par_chunks_mut(PAR_CHUNK)
        .zip(up.par_chunks(PAR_CHUNK))
        .for_each(|(g, u)| silu_chunk(isa, g, u));
}

/// [`exp_in_place`] on `isa` (available, checked by the callers); one thread (it serves
/// tests and benchmarks of the `exp` itself).
fn run_exp(isa: Isa, x: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => match Avx512Vnni::detect() {
            Some(cpu) => avx512::exp_in_place(cpu, x),
            None => x.iter_mut().for_each(|v| *v = scalar::exp(*v)),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match Avx2::detect() {
            Some(cpu) => avx2::exp_in_place(cpu, x),
            None => x.iter_mut().for_each(|v| *v = scalar::exp(*v)),
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => match Neon::detect() {
            Some(cpu) => neon::exp_in_place(cpu, x),
            None => x.iter_mut().for_each(|v| *v = scalar::exp(*v)),
        },
        _ => x.iter_mut().for_each(|v| *v = scalar::exp(*v)),
    }
}

/// The softmax of one row on `isa` (available, checked by the callers); its sum.
fn softmax_row(isa: Isa, row: &mut [f32], len: usize, scale: f32) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => match Avx512Vnni::detect() {
            Some(cpu) => avx512::softmax_row(cpu, row, len, scale),
            None => scalar::softmax_row(row, len, scale),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match Avx2::detect() {
            Some(cpu) => avx2::softmax_row(cpu, row, len, scale),
            None => scalar::softmax_row(row, len, scale),
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => match Neon::detect() {
            Some(cpu) => neon::softmax_row(cpu, row, len, scale),
            None => scalar::softmax_row(row, len, scale),
        },
        _ => scalar::softmax_row(row, len, scale),
    }
}

/// Runs the rows (in parallel when there is enough work); the first row whose sum is not
/// finite is reported.
fn run_softmax(
    op: &'static str,
    isa: Isa,
    scores: &mut [f32],
    cols: usize,
    limits: &[usize],
    scale: f32,
) -> Result<(), KernelError> {
    if cols == 0 || limits.is_empty() {
        return Ok(());
    }
    let one = |(r, (row, &len)): (usize, (&mut [f32], &usize))| -> Option<usize> {
        let sum = softmax_row(isa, row, len, scale);
        (!sum.is_finite()).then_some(r)
    };
    let bad = if scores.len() < 2 * PAR_CHUNK {
        scores
            .chunks_mut(cols)
            .zip(limits)
            .enumerate()
            .filter_map(one)
            .min()
    } else {
        let per_task = PAR_CHUNK.div_ceil(cols);
        scores
            .par_chunks_mut(cols)
            .zip(limits.par_iter())
            .enumerate()
            .with_min_len(per_task)
            .filter_map(one)
            .min()
    };
    match bad {
        None => Ok(()),
        Some(r) => Err(KernelError::NonFinite {
            op,
            what: "score (NaN or +Inf, or a row of only -Inf) in the row starting",
            index: r * cols,
        }),
    }
}

#[cfg(test)]
mod tests;
