//! The decoder's f32 operations around its linears on our kernels
//! (`candle_compress::kernels::act`), as in-place candle ops on tensors the decoder has
//! just produced (no output allocation):
//!
//! - [`silu_mul`]: SwiGLU's `silu(gate) · up`, written into `gate`;
//! - [`causal_softmax`]: the attention's scale, causal mask and softmax in one pass over
//!   the score matrix, so no mask tensor and no scaled copy are built;
//! - [`attend`]: the whole attention of a few queries (a decode step) over the KV cache's
//!   strided views, in one pass without matmul calls: a generic GEMM's set-up costs more
//!   than the few thousand multiply-adds of a one-token step.

use candle_compress::kernels::act::{attend_rows, silu_mul_in_place, softmax_rows, KvLayout};
use candle_core::{CpuStorage, CustomOp3, InplaceOp1, InplaceOp2, Layout, Result, Shape, Tensor};

/// The f32 slice of a contiguous CPU storage, or an error naming `op`.
fn f32_slice<'a>(op: &str, s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: the tensor is not contiguous")))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{op}: the tensor is not f32"),
    }
}

struct SiluMul;

impl InplaceOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu_mul"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "silu_mul: gate {:?} and up {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let gate = f32_slice("silu_mul", s1, l1)?;
        let (a, b) = l2
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("silu_mul: up is not contiguous".into()))?;
        let up = match s2 {
            CpuStorage::F32(v) => &v[a..b],
            _ => candle_core::bail!("silu_mul: up is not f32"),
        };
        silu_mul_in_place(gate, up).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

/// `gate ← silu(gate) · up` in place; returns `gate`. Both contiguous f32 of one shape;
/// `gate` must not share its storage with another live tensor (it is a linear's fresh
/// output here).
pub fn silu_mul(gate: Tensor, up: &Tensor) -> Result<Tensor> {
    gate.inplace_op2(up, &SiluMul)?;
    Ok(gate)
}

/// Scale, causal limit and softmax of attention score rows in place.
struct CausalSoftmax<'a> {
    scale: f32,
    /// Columns each row (over all heads) may use.
    limits: &'a [usize],
}

impl InplaceOp1 for CausalSoftmax<'_> {
    fn name(&self) -> &'static str {
        "causal_softmax"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let cols = l.dims().last().copied().unwrap_or(1);
        let scores = f32_slice("causal_softmax", s, l)?;
        softmax_rows(scores, cols, self.limits, self.scale)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

/// Softmax of `scores` `[heads, rep · c, kv_len]` (the `rep` query heads of one KV head
/// stacked, `c` queries each) scaled by `scale`, where query `i` of the chunk sees the
/// first `first + i + 1` keys (`first` = the keys before the chunk's first query) and
/// the rest become exact zeros. In place; returns `scores` (a fresh matmul output).
pub fn causal_softmax(scores: Tensor, scale: f32, rep: usize, first: usize) -> Result<Tensor> {
    let (heads, rows, kv_len) = scores.dims3()?;
    if rep == 0 || rows % rep != 0 {
        candle_core::bail!("causal_softmax: {rows} rows are not {rep} heads of queries");
    }
    let c = rows / rep;
    let limits: Vec<usize> = (0..heads * rows)
        .map(|r| (first + r % c + 1).min(kv_len))
        .collect();
    scores.inplace_op1(&CausalSoftmax {
        scale,
        limits: &limits,
    })?;
    Ok(scores)
}

/// `softmax(q·kᵀ·scale, causal) · v` of a few queries; see [`attend`].
struct Attend {
    scale: f32,
    rep: usize,
    first: usize,
}

/// The f32 data of `s` from a layout's start, with the layout's (heads, rows) strides:
/// the last dimension must be contiguous.
fn strided<'a>(what: &str, s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], [usize; 2])> {
    let v = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("attend: {what} is not f32"),
    };
    match l.stride() {
        [sh, sr, 1] => Ok((&v[l.start_offset()..], [*sh, *sr])),
        st => candle_core::bail!("attend: {what} has strides {st:?}, need a contiguous last dim"),
    }
}

impl CustomOp3 for Attend {
    fn name(&self) -> &'static str {
        "attend"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (heads, rows, hd) = lq.shape().dims3()?;
        let (kh, kv_len, khd) = lk.shape().dims3()?;
        if (kh, khd) != (heads, hd) || lv.shape().dims3()? != (kh, kv_len, khd) {
            candle_core::bail!(
                "attend: q {:?}, k {:?}, v {:?} do not fit",
                lq.dims(),
                lk.dims(),
                lv.dims()
            );
        }
        if self.rep == 0 || rows % self.rep != 0 {
            candle_core::bail!("attend: {rows} rows are not {} heads of queries", self.rep);
        }
        let q = match (sq, lq.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("attend: q is not contiguous f32"),
        };
        let (keys, [kh_s, kr]) = strided("k", sk, lk)?;
        let (values, [vh, vr]) = strided("v", sv, lv)?;
        if (kh_s, kr) != (vh, vr) {
            candle_core::bail!("attend: k and v have different strides");
        }
        let kv = KvLayout {
            heads,
            len: kv_len,
            head_stride: kh_s,
            row_stride: kr,
        };
        let c = rows / self.rep;
        let limits: Vec<usize> = (0..heads * rows)
            .map(|r| (self.first + r % c + 1).min(kv_len))
            .collect();
        let mut out = vec![0f32; heads * rows * hd];
        attend_rows(q, hd, keys, values, kv, &limits, self.scale, &mut out)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((CpuStorage::F32(out), Shape::from((heads, rows, hd))))
    }
}

/// Attention of the queries `q` (`[heads, rep · c, hd]`: the `rep` query heads of each
/// KV head stacked, `c` queries each, contiguous) over `k`, `v` (`[heads, kv_len, hd]`,
/// the same strides with a contiguous last dimension, such as the KV cache's views):
/// query `i` of the chunk sees the first `first + i + 1` keys, scores scaled by
/// `scale`. Returns `[heads, rep · c, hd]`: the function of [`causal_softmax`] between
/// two matmuls (its sums in another order), in one pass for the few queries of a decode
/// step.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    rep: usize,
    first: usize,
) -> Result<Tensor> {
    q.apply_op3_no_bwd(k, v, &Attend { scale, rep, first })
}
