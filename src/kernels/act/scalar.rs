//! Portable activation kernels: the definition of correct for the SIMD ones (`generic.rs`,
//! `rows.rs` and `blocked.rs` on AVX2, AVX-512 and NEON).
//!
//! Every SIMD kernel performs exactly the operations written here, in the same order
//! (`f32::mul_add` where the SIMD code uses FMA, the same clamps, the same lane layout
//! of the softmax reductions), so the results agree bit for bit.

/// Inputs below this give `exp = 0` (the true value is below 1.7e-38, at most the
/// smallest normal f32 times 1.4); it also keeps `2^n` a normal number.
pub(crate) const EXP_LO: f32 = -87.0;
/// Inputs above this are clamped to it: `exp` stays finite (about 1.65e38).
pub(crate) const EXP_HI: f32 = 88.0;
/// `log2(e)`.
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in two (Cephes): `LN2_HI` has few mantissa bits, so `n · LN2_HI` is exact.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
/// `ln 2 − LN2_HI`.
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// Minimax coefficients of `(e^r − 1 − r) / r²` on `|r| ≤ ln2 / 2` (Cephes `expf`),
/// highest degree first.
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// Lanes of the softmax reductions: element `j` of a row goes to accumulator `j % 16`, and
/// the 16 accumulators are combined by halves (`i` with `i + 8`, then `i + 4`, `i + 2`,
/// `i + 1`), the order of one AVX-512 vector, two AVX2 vectors or four NEON vectors.
pub(crate) const LANES: usize = 16;

/// `if a > b { a } else { b }`: the `maxps` rule (the second operand when either is NaN).
#[inline(always)]
pub(crate) fn max_op(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `if a < b { a } else { b }`: the `minps` rule.
#[inline(always)]
fn min_op(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

/// `e^x`: range reduction `x = n·ln2 + r` (`n` rounded to nearest even, `r` by two FMAs),
/// a degree-7 polynomial for `e^r`, then `· 2^n` built from the exponent bits.
///
/// `x < EXP_LO` (and `−∞`) gives `+0`; `x > EXP_HI` (and `+∞`) gives `exp(EXP_HI)`; NaN
/// gives NaN. Within 2 ulp of the true value elsewhere (tested against f64).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let xc = min_op(EXP_HI, max_op(EXP_LO, x));
    let n = (xc * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, xc);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p.mul_add(r, *c);
    }
    let z = r * r;
    let y = p.mul_add(z, r) + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let e = y * scale;
    if x < EXP_LO {
        0.0
    } else {
        e
    }
}

/// `g · σ(g) · u` computed as `(g / (1 + e^−g)) · u`.
#[inline(always)]
pub(crate) fn silu_mul(g: f32, u: f32) -> f32 {
    let e = exp(-g);
    (g / (1.0 + e)) * u
}

/// See [`super::silu_mul_in_place`]; lengths already checked.
pub(crate) fn silu_mul_in_place(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu_mul(*g, u);
    }
}

/// Combines 16 lane accumulators by halves (see [`LANES`]).
pub(crate) fn reduce(mut acc: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut half = LANES / 2;
    while half >= 1 {
        for i in 0..half {
            acc[i] = op(acc[i], acc[i + half]);
        }
        half /= 2;
    }
    acc[0]
}

/// Softmax of `row[..len]` scaled by `scale`, exact zeros in `row[len..]`; returns the sum
/// of the exponentials (not finite when the row held NaN or +∞, or only −∞).
/// `len == 0` writes zeros and returns 1.
pub(crate) fn softmax_row(row: &mut [f32], len: usize, scale: f32) -> f32 {
    let (live, dead) = row.split_at_mut(len);
    dead.fill(0.0);
    if live.is_empty() {
        return 1.0;
    }
    let mut acc = [f32::NEG_INFINITY; LANES];
    for (j, &x) in live.iter().enumerate() {
        acc[j % LANES] = max_op(acc[j % LANES], x * scale);
    }
    let m = reduce(acc, max_op);
    let mut acc = [0f32; LANES];
    for (j, x) in live.iter_mut().enumerate() {
        let e = exp(*x * scale - m);
        *x = e;
        acc[j % LANES] += e;
    }
    let sum = reduce(acc, |a, b| a + b);
    let inv = 1.0 / sum;
    for x in live.iter_mut() {
        *x *= inv;
    }
    sum
}

/// `Σ a_i · b_i` in [`LANES`] partial sums (element `i` in sum `i % 16`, each a chain of
/// `mul_add` in increasing `i`), combined by halves. `a.len() == b.len()`.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        acc[i % LANES] = x.mul_add(y, acc[i % LANES]);
    }
    reduce(acc, |x, y| x + y)
}

/// One query row's attention operands (see [`super::attend_rows`]): row `j` of the keys
/// is `keys[j · stride..][..d]` (`d = q.len()`), the same for values.
pub(crate) struct AttendRow<'a> {
    pub q: &'a [f32],
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub stride: usize,
    pub scale: f32,
}

/// One query row's attention: `scores[j] = q·k_j` for `j < scores.len()`, the scaled
/// softmax of those, then `out = Σ_j p_j · v_j` (`out.len() = d`) as one `mul_add` chain
/// per element in increasing `j` from 0. Returns the softmax's sum (not finite when the
/// scores were not).
pub(crate) fn attend_row(a: &AttendRow, scores: &mut [f32], out: &mut [f32]) -> f32 {
    let (d, len) = (a.q.len(), scores.len());
    for (j, s) in scores.iter_mut().enumerate() {
        *s = dot(a.q, &a.keys[j * a.stride..][..d]);
    }
    let sum = softmax_row(scores, len, a.scale);
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&a.values[j * a.stride..][..d]) {
            *o = p.mul_add(x, *o);
        }
    }
    sum
}

/// One query row's attention in the order of the blocked kernels (`blocked.rs`, see
/// [`super::attend_blocked`]): `scores[j] = q·k_j` as one `mul_add` chain in increasing
/// element order from 0; `m = max_j scale·s_j` (the `maxps` rule, increasing `j` from
/// −∞); `e_j = exp(scale·s_j − m)` (left in `scores`) summed in one chain in increasing
/// `j` from 0; `out = (Σ_j e_j · v_j) · (1 / sum)` with one `mul_add` chain per element
/// in increasing `j` from 0. Returns the sum (not finite when the scores were not; 0 for
/// an empty row, whose output is zeros).
pub(crate) fn attend_row_chained(a: &AttendRow, scores: &mut [f32], out: &mut [f32]) -> f32 {
    let d = a.q.len();
    for (j, s) in scores.iter_mut().enumerate() {
        let k = &a.keys[j * a.stride..][..d];
        *s =
            a.q.iter()
                .zip(k)
                .fold(0.0, |acc, (&x, &y)| x.mul_add(y, acc));
    }
    let m = scores
        .iter()
        .fold(f32::NEG_INFINITY, |m, &s| max_op(m, s * a.scale));
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = exp(*s * a.scale - m);
        sum += *s;
    }
    out.fill(0.0);
    for (j, &e) in scores.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&a.values[j * a.stride..][..d]) {
            *o = e.mul_add(x, *o);
        }
    }
    let inv = if scores.is_empty() { 0.0 } else { 1.0 / sum };
    for o in out.iter_mut() {
        *o *= inv;
    }
    sum
}
