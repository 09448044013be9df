//! The decoder's f32 operations around its linears on our kernels
//! (`candle_compress::kernels::act`), as in-place candle ops on tensors the decoder has
//! just produced (no output allocation):
//!
//! - [`silu_mul`]: SwiGLU's `silu(gate) · up`, written into `gate`;
//! - [`add_in_place`]: the residual stream's `x + y`, written into `x`;
//! - [`attend`]: the whole attention over the KV cache's strided views in one fused pass
//!   without matmul calls: row by row for a decode step's few queries (a generic GEMM's
//!   set-up costs more than the few thousand multiply-adds of a one-token step), with the
//!   query rows of a KV head in register blocks for a prompt's many (no score tensor, no
//!   mask, every key and value load shared by a block of rows).

use candle_compress::kernels::act::{attend_blocked, attend_rows, silu_mul_in_place, KvLayout};
use candle_core::{CpuStorage, CustomOp3, InplaceOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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
        let (gate, up) = pair("silu_mul", s1, l1, s2, l2)?;
        silu_mul_in_place(gate, up).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

/// The f32 data of an in-place op's two operands: the first written, the second read;
/// both contiguous, of one shape.
fn pair<'a>(
    op: &str,
    s1: &'a mut CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> Result<(&'a mut [f32], &'a [f32])> {
    if l1.shape() != l2.shape() {
        candle_core::bail!("{op}: {:?} and {:?} differ", l1.shape(), l2.shape());
    }
    let x = f32_slice(op, s1, l1)?;
    let (a, b) = l2
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: the operand is not contiguous")))?;
    match s2 {
        CpuStorage::F32(v) => Ok((x, &v[a..b])),
        _ => candle_core::bail!("{op}: the operand is not f32"),
    }
}

struct AddInPlace;

impl InplaceOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        "add_in_place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (x, y) = pair("add_in_place", s1, l1, s2, l2)?;
        x.par_chunks_mut(ADD_CHUNK)
            .zip(y.par_chunks(ADD_CHUNK))
            .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(x, &y)| *x += y));
        Ok(())
    }
}

/// Elements per rayon task of [`add_in_place`].
const ADD_CHUNK: usize = 32 * 1024;

/// `x ← x + y` in place (the residual stream); returns `x`. Both contiguous f32 of one
/// shape; `x` must not share its storage with another live tensor. Why not `x + y`:
/// candle's element-wise ops split large tensors over a thread pool of their own beside
/// rayon's, and on a machine with as many threads as cores the two pools' waiting
/// threads take turns with the working ones; this runs on the caller's rayon pool.
pub fn add_in_place(x: Tensor, y: &Tensor) -> Result<Tensor> {
    x.inplace_op2(y, &AddInPlace)?;
    Ok(x)
}

/// `gate ← silu(gate) · up` in place; returns `gate`. Both contiguous f32 of one shape;
/// `gate` must not share its storage with another live tensor (it is a linear's fresh
/// output here).
pub fn silu_mul(gate: Tensor, up: &Tensor) -> Result<Tensor> {
    gate.inplace_op2(up, &SiluMul)?;
    Ok(gate)
}

/// `softmax(q·kᵀ·scale, causal) · v`; see [`attend`].
struct Attend {
    scale: f32,
    rep: usize,
    first: usize,
    /// `attend_blocked` (many rows) rather than `attend_rows` (a few).
    blocked: bool,
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
        let run = if self.blocked {
            attend_blocked
        } else {
            attend_rows
        };
        run(q, hd, keys, values, kv, &limits, self.scale, &mut out)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((CpuStorage::F32(out), Shape::from((heads, rows, hd))))
    }
}

/// Attention of the queries `q` (`[heads, rep · c, hd]`: the `rep` query heads of each
/// KV head stacked, `c` queries each, contiguous) over `k`, `v` (`[heads, kv_len, hd]`,
/// the same strides with a contiguous last dimension, such as the KV cache's views):
/// query `i` of the chunk sees the first `first + i + 1` keys, scores scaled by
/// `scale`. Returns `[heads, rep · c, hd]`: `softmax(q·kᵀ·scale, causal) · v` in one
/// fused kernel over the cache: `attend_rows` (row by row) for up to
/// [`ATTEND_MAX_QUERIES`] queries, a decode step; `attend_blocked` (query rows in register
/// blocks; its sums in another order, so the last bits differ) for a prompt.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    rep: usize,
    first: usize,
) -> Result<Tensor> {
    let c = q.dim(1)? / rep.max(1);
    let op = Attend {
        scale,
        rep,
        first,
        blocked: c > ATTEND_MAX_QUERIES,
    };
    q.apply_op3_no_bwd(k, v, &op)
}

/// Up to this many queries per query head (a decode step, a short continuation) the
/// attention runs row by row; longer runs of queries in register blocks.
pub const ATTEND_MAX_QUERIES: usize = 8;
