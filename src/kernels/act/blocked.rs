//! The attention of many query rows at once ([`super::attend_blocked`]), written once over
//! [`F32Vector`] and instantiated per ISA in `avx2.rs` (8 lanes), `avx512.rs` (16) and
//! `neon.rs` (4).
//!
//! Why: a prompt's attention is two matrix products per head (`q·kᵀ`, then `p·v`) around
//! a causal softmax. Done one query row at a time ([`super::attend_rows`]) every key and
//! value row is read once per query row, and the per-score dot products end in a
//! horizontal sum; the work is then bound by the cache, not the multiply-adds. Here a
//! *block* of up to `4 · LANES` consecutive query rows of one KV head keeps its rows in
//! the vector lanes, so each key or value element read feeds a whole register of rows:
//!
//! 1. the block's queries are transposed into `qt[i][r]` (`d × width`, zero lanes past
//!    the last row);
//! 2. the scores `st[j][r] = q_r·k_j`, for the keys below the block's largest causal
//!    limit, in tiles of `RK` keys × `NB` vectors of rows: per query element, `NB` loads
//!    of `qt`, `RK` broadcast key elements, `RK · NB` FMAs into registers;
//! 3. the softmax runs down the columns (a maximum pass, then the exponentials and their
//!    sum): a lane is a row, its causal limit a lane mask;
//! 4. `out_r = (Σ_j e[j][r] · v_j) / sum_r` in tiles of `R` rows × `NV` vectors of the
//!    value rows: per key, `NV` loads and `R` broadcast exponentials; each output is
//!    scaled by `1 / sum` once at the end.
//!
//! Every lane performs exactly the operations of `scalar::attend_row_chained` in its
//! order (one FMA chain per score from element 0, one chain per output element from key
//! 0, then one multiply; lanes past a row's limit masked out or skipped), so the bits are the scalar twin's
//! whatever the block, tile size, ISA or thread. The callers guarantee `d` is a multiple
//! of `LANES` and every limit is below `2^24` (the lane masks compare positions as f32).
//!
//! Every function here is `#[inline(always)]` and `unsafe` only for the CPU features of
//! its vector type; the `#[target_feature]` entry points in `avx2.rs`, `avx512.rs` and
//! `neon.rs` are where it is compiled. Slice accesses are bounds-checked.

use super::generic::exp;
use crate::kernels::simd::F32Vector;

/// The rows of one block: consecutive query rows that share a KV head.
pub(crate) struct Block<'a> {
    /// The rows' queries, `[rows, d]` row-major.
    pub q: &'a [f32],
    /// Query (key, value) width.
    pub d: usize,
    /// The KV head's keys: key `j` is `keys[j · stride..][..d]`.
    pub keys: &'a [f32],
    /// The KV head's values, laid out as the keys.
    pub values: &'a [f32],
    /// Floats between key (value) rows.
    pub stride: usize,
    /// Keys each row sees (`rows = limits.len() ≤ 4 · LANES`).
    pub limits: &'a [usize],
    /// Score scale.
    pub scale: f32,
}

/// Buffers of one block, kept across the blocks a thread runs (grown, never shrunk or
/// cleared: every element a block reads it has written first).
#[derive(Default)]
pub(crate) struct Scratch {
    qt: Vec<f32>,
    st: Vec<f32>,
    /// Per lane: the causal limit (as f32), the scores' maximum, the softmax's sum.
    lim: Vec<f32>,
    max: Vec<f32>,
    sums: Vec<f32>,
}

/// The first `n` elements of `v`, grown if shorter.
fn prefix(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// The block's attention into `out` (`[rows, d]`); the block-relative index of the first
/// row whose softmax sum is not finite (that row's output is then unspecified).
///
/// # Safety
/// The CPU must have `V`'s features. (`b.d % V::LANES == 0`, `rows ≤ 4 · V::LANES` and
/// limits below `2^24` are the callers' contract; a violation panics or gives wrong
/// bits, never reads out of bounds.)
#[inline(always)]
pub(crate) unsafe fn attend_block<V: F32Vector>(
    b: &Block,
    s: &mut Scratch,
    out: &mut [f32],
) -> Option<usize> {
    let (l, d, rows) = (V::LANES, b.d, b.limits.len());
    debug_assert!(rows <= 4 * l && d % l == 0 && out.len() == rows * d);
    let nb = rows.div_ceil(l);
    let w = nb * l;
    let kmax = b.limits.iter().copied().max().unwrap_or(0);
    let qt = prefix(&mut s.qt, d * w);
    if rows < w {
        qt.fill(0.0);
    }
    for (r, qr) in b.q.chunks_exact(d).enumerate() {
        for (i, &x) in qr.iter().enumerate() {
            qt[i * w + r] = x;
        }
    }
    let lim = prefix(&mut s.lim, w);
    for (r, x) in lim.iter_mut().enumerate() {
        *x = b.limits.get(r).map_or(0.0, |&n| n as f32);
    }
    let st = prefix(&mut s.st, kmax * w);
    let (max, sums) = (prefix(&mut s.max, w), prefix(&mut s.sums, w));
    // SAFETY: `V`'s features (caller).
    unsafe {
        scores::<V>(b, nb, kmax, qt, st);
        max_columns::<V>(b.scale, w, kmax, lim, st, max);
        exp_columns::<V>(b.scale, w, kmax, lim, max, st, sums);
        weighted_values::<V>(b, w, st, sums, out);
    }
    sums[..rows].iter().position(|x| !x.is_finite())
}

/// `st[j · w + r] = q_r·k_j` for `j < kmax` (`w = nb · LANES`), in register tiles sized
/// for the ISA's register file (32 vector registers for 16 lanes, 16 for 8).
#[inline(always)]
unsafe fn scores<V: F32Vector>(b: &Block, nb: usize, kmax: usize, qt: &[f32], st: &mut [f32]) {
    let wide = V::LANES >= 16;
    // SAFETY: `V`'s features (caller).
    unsafe {
        match (nb, wide) {
            (4, true) => score_tiles::<V, 4, 6>(b, kmax, qt, st),
            (3, true) => score_tiles::<V, 3, 8>(b, kmax, qt, st),
            (2, true) => score_tiles::<V, 2, 12>(b, kmax, qt, st),
            (_, true) => score_tiles::<V, 1, 12>(b, kmax, qt, st),
            (4, false) => score_tiles::<V, 4, 3>(b, kmax, qt, st),
            (3, false) => score_tiles::<V, 3, 4>(b, kmax, qt, st),
            (2, false) => score_tiles::<V, 2, 6>(b, kmax, qt, st),
            (_, false) => score_tiles::<V, 1, 8>(b, kmax, qt, st),
        }
    }
}

/// [`scores`] with `NB` vectors of rows: tiles of `RK` keys, then single keys.
#[inline(always)]
unsafe fn score_tiles<V: F32Vector, const NB: usize, const RK: usize>(
    b: &Block,
    kmax: usize,
    qt: &[f32],
    st: &mut [f32],
) {
    let mut j0 = 0;
    // SAFETY: `V`'s features (caller).
    unsafe {
        while j0 + RK <= kmax {
            score_tile::<V, NB, RK>(b, j0, qt, st);
            j0 += RK;
        }
        while j0 < kmax {
            score_tile::<V, NB, 1>(b, j0, qt, st);
            j0 += 1;
        }
    }
}

/// The scores of keys `j0..j0 + RK` for the `NB · LANES` lanes of rows.
#[inline(always)]
unsafe fn score_tile<V: F32Vector, const NB: usize, const RK: usize>(
    b: &Block,
    j0: usize,
    qt: &[f32],
    st: &mut [f32],
) {
    let (l, d) = (V::LANES, b.d);
    let w = NB * l;
    let keys: [&[f32]; RK] = core::array::from_fn(|a| &b.keys[(j0 + a) * b.stride..][..d]);
    // SAFETY: `V`'s features (caller), as for every unsafe block below.
    let zero = unsafe { V::splat(0.0) };
    let mut acc = [[zero; NB]; RK];
    for i in 0..d {
        let row = &qt[i * w..(i + 1) * w];
        // SAFETY: as above.
        let q: [V; NB] = core::array::from_fn(|k| unsafe { V::load(row, k * l) });
        for a in 0..RK {
            // SAFETY: as above.
            let kb = unsafe { V::splat(keys[a][i]) };
            for k in 0..NB {
                // SAFETY: as above.
                acc[a][k] = unsafe { kb.mul_add(q[k], acc[a][k]) };
            }
        }
    }
    for (a, acc) in acc.iter().enumerate() {
        for (k, v) in acc.iter().enumerate() {
            // SAFETY: as above.
            unsafe { v.store(st, (j0 + a) * w + k * l) };
        }
    }
}

/// Each lane's `max_{j < limit} scale · s_j` (from −∞, increasing `j`) into `max`.
#[inline(always)]
unsafe fn max_columns<V: F32Vector>(
    scale: f32,
    w: usize,
    kmax: usize,
    lim: &[f32],
    st: &[f32],
    max: &mut [f32],
) {
    // SAFETY: `V`'s features (caller).
    unsafe {
        let sc = V::splat(scale);
        for c in (0..w).step_by(V::LANES) {
            let (limit, mut m) = (V::load(lim, c), V::splat(f32::NEG_INFINITY));
            for j in 0..kmax {
                let x = V::load(st, j * w + c).mul(sc);
                m = V::select(V::splat(j as f32).lt(limit), m.max(x), m);
            }
            m.store(max, c);
        }
    }
}

/// `e = exp(scale · s − max)` down each lane's column of `st` (`kmax` keys), in place,
/// `+0` from the lane's limit on; the lanes' sums (from 0, increasing `j`) into `sums`.
#[inline(always)]
unsafe fn exp_columns<V: F32Vector>(
    scale: f32,
    w: usize,
    kmax: usize,
    lim: &[f32],
    max: &[f32],
    st: &mut [f32],
    sums: &mut [f32],
) {
    let l = V::LANES;
    // SAFETY: `V`'s features (caller).
    unsafe {
        let (sc, one, zero) = (V::splat(scale), V::splat(1.0), V::splat(0.0));
        for c in (0..w).step_by(l) {
            let (limit, m) = (V::load(lim, c), V::load(max, c));
            let (mut sum, mut j) = (zero, zero);
            for at in (c..kmax * w).step_by(w) {
                let e = exp(V::load(st, at).mul(sc).sub(m));
                let e = e.zero_unless(j.lt(limit));
                e.store(st, at);
                sum = sum.add(e);
                j = j.add(one);
            }
            sum.store(sums, c);
        }
    }
}

/// `out_r = (Σ_{j < limit_r} e[j][r] · v_j) · (1 / sum_r)` for the block's rows (zeros
/// for a row that sees nothing), `d` in chunks of `NV` vectors, rows in tiles of `R`.
#[inline(always)]
unsafe fn weighted_values<V: F32Vector>(
    b: &Block,
    w: usize,
    st: &[f32],
    sums: &[f32],
    out: &mut [f32],
) {
    let (vecs, wide) = (b.d / V::LANES, V::LANES >= 16);
    let t = Values { b, w, st, sums };
    let mut c = 0;
    while c < vecs {
        let n = match vecs - c {
            4.. => 4,
            2 | 3 => 2,
            _ => 1,
        };
        // SAFETY: `V`'s features (caller).
        unsafe {
            match (n, wide) {
                (4, true) => value_rows::<V, 4, 6>(&t, c, out),
                (2, true) => value_rows::<V, 2, 8>(&t, c, out),
                (_, true) => value_rows::<V, 1, 8>(&t, c, out),
                (4, false) => value_rows::<V, 4, 3>(&t, c, out),
                (2, false) => value_rows::<V, 2, 4>(&t, c, out),
                (_, false) => value_rows::<V, 1, 8>(&t, c, out),
            }
        }
        c += n;
    }
}

/// What the value tiles read: the block, the exponentials `st` (`w` lanes a key) and the
/// rows' sums.
struct Values<'a> {
    b: &'a Block<'a>,
    w: usize,
    st: &'a [f32],
    sums: &'a [f32],
}

/// [`weighted_values`] for vectors `c..c + NV` of every row: tiles of `R` rows, then
/// single rows.
#[inline(always)]
unsafe fn value_rows<V: F32Vector, const NV: usize, const R: usize>(
    t: &Values,
    c: usize,
    out: &mut [f32],
) {
    let rows = t.b.limits.len();
    let mut r0 = 0;
    // SAFETY: `V`'s features (caller).
    unsafe {
        while r0 + R <= rows {
            value_tile::<V, NV, R>(t, c, r0, out);
            r0 += R;
        }
        while r0 < rows {
            value_tile::<V, NV, 1>(t, c, r0, out);
            r0 += 1;
        }
    }
}

/// Vectors `c..c + NV` of rows `r0..r0 + R`: the keys every one of these rows sees run
/// unmasked, the few beyond the smallest limit row by row; then `· (1 / sum)`.
#[inline(always)]
unsafe fn value_tile<V: F32Vector, const NV: usize, const R: usize>(
    t: &Values,
    c: usize,
    r0: usize,
    out: &mut [f32],
) {
    let (l, b, w) = (V::LANES, t.b, t.w);
    let (d, e0) = (b.d, c * l);
    let limits: [usize; R] = core::array::from_fn(|a| b.limits[r0 + a]);
    let lo = limits.iter().copied().min().unwrap_or(0);
    let hi = limits.iter().copied().max().unwrap_or(0);
    // SAFETY: `V`'s features (caller), as for every unsafe block below.
    let zero = unsafe { V::splat(0.0) };
    let mut acc = [[zero; NV]; R];
    for j in 0..hi {
        let vrow = &b.values[j * b.stride + e0..][..NV * l];
        let e = &t.st[j * w + r0..][..R];
        // SAFETY: as above.
        let v: [V; NV] = core::array::from_fn(|k| unsafe { V::load(vrow, k * l) });
        for a in 0..R {
            if j >= lo && j >= limits[a] {
                continue;
            }
            // SAFETY: as above.
            unsafe {
                let eb = V::splat(e[a]);
                for k in 0..NV {
                    acc[a][k] = eb.mul_add(v[k], acc[a][k]);
                }
            }
        }
    }
    for (a, acc) in acc.iter().enumerate() {
        let inv = if limits[a] == 0 {
            0.0
        } else {
            1.0 / t.sums[r0 + a]
        };
        for (k, v) in acc.iter().enumerate() {
            // SAFETY: as above.
            unsafe { v.mul(V::splat(inv)).store(out, (r0 + a) * d + e0 + k * l) };
        }
    }
}
