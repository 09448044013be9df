//! Scalar twin against f64, every SIMD kernel against the scalar twin bit for bit (every
//! tail length 0..=33, long rows, extremes), and the entry points' argument errors.

use super::*;
use crate::kernels::detect::report_skipped;

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// `n` values: mostly in `[-span, span]`, with the extremes mixed in.
fn values(n: usize, span: f32, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let special = [
        0.0f32,
        -0.0,
        1e-40,
        -1e-40,
        -87.0,
        -87.000_01,
        88.0,
        88.000_01,
        -104.0,
        200.0,
        -1e30,
        1e30,
        f32::MAX,
        f32::MIN,
        0.5 * std::f32::consts::LN_2,
        -0.5 * std::f32::consts::LN_2,
    ];
    (0..n)
        .map(|_| {
            let r = xorshift(&mut s);
            if r.is_multiple_of(7) {
                special[(r >> 8) as usize % special.len()]
            } else {
                ((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * span
            }
        })
        .collect()
}

/// The SIMD ISAs this module has, each with whether this CPU runs it (a skipped one is
/// reported, never passed silently).
fn simd_isas(test: &str) -> Vec<Isa> {
    [Isa::Avx2, Isa::Avx512Vnni, Isa::Neon]
        .into_iter()
        .filter(|&isa| {
            let ok = available(isa);
            if !ok {
                report_skipped(isa, test);
            }
            ok
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Bits, with every NaN the same (NaN payloads are not part of the contract).
fn bits_nan_eq(v: &[f32]) -> Vec<u32> {
    v.iter()
        .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
        .collect()
}

/// Distance in ulp between an f32 and the exact value (f64).
fn ulp_error(got: f32, exact: f64) -> f64 {
    let e = exact as f32;
    let ulp = (f32::from_bits(e.to_bits() + 1) - e) as f64;
    (got as f64 - exact).abs() / ulp
}

#[test]
fn exp_is_within_two_ulp_of_f64_and_handles_extremes() {
    let (mut max_ulp, mut max_rel) = (0f64, 0f64);
    let mut check = |x: f32| {
        let got = scalar::exp(x);
        let exact = (x as f64).exp();
        max_ulp = max_ulp.max(ulp_error(got, exact));
        max_rel = max_rel.max((got as f64 - exact).abs() / exact);
    };
    let n = 1 << 21;
    for i in 0..=n {
        check(-87.0 + 175.0 * i as f32 / n as f32);
    }
    for x in values(1 << 16, 1.0, 5) {
        if (-87.0..=88.0).contains(&x) {
            check(x);
        }
    }
    let line = format!(
        "act::exp vs f64 on [-87, 88]: max {max_ulp:.3} ulp, max relative error {max_rel:.3e}\n"
    );
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    assert!(max_ulp <= 2.0, "{line}");
    for x in [-87.000_01f32, -100.0, -1e30, f32::MIN, f32::NEG_INFINITY] {
        assert_eq!(scalar::exp(x).to_bits(), 0, "exp({x})");
    }
    let top = scalar::exp(88.0);
    assert!(top.is_finite() && top > 1e38);
    for x in [88.5f32, 1e30, f32::MAX, f32::INFINITY] {
        assert_eq!(scalar::exp(x), top, "exp({x})");
    }
    assert!(scalar::exp(f32::NAN).is_nan());
    assert_eq!(scalar::exp(0.0), 1.0);
    assert_eq!(scalar::exp(-0.0), 1.0);
}

#[test]
fn simd_exp_matches_scalar_bit_for_bit() {
    let isas = simd_isas("act::simd_exp_matches_scalar_bit_for_bit");
    let mut all = values(4096, 100.0, 11);
    all.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN]);
    let lens = (0..=33).chain([64, 100, 1000, all.len()]);
    for len in lens {
        for off in [0, 1, 3] {
            let Some(x) = all.get(off..off + len) else {
                continue;
            };
            let want: Vec<f32> = x.iter().map(|&v| scalar::exp(v)).collect();
            for &isa in &isas {
                let mut got = x.to_vec();
                assert_eq!(exp_in_place_on(isa, &mut got), Ok(Some(())));
                assert_eq!(bits_nan_eq(&got), bits_nan_eq(&want), "{isa} len {len}");
            }
        }
    }
}

#[test]
fn silu_mul_scalar_is_accurate_and_finite() {
    let g = values(20_000, 30.0, 3);
    let u = values(20_000, 4.0, 4);
    let mut max_rel = 0f64;
    for (&gv, &uv) in g.iter().zip(&u) {
        let got = scalar::silu_mul(gv, uv);
        let (gd, ud) = (gv as f64, uv as f64);
        if (gd * ud).abs() < f32::MAX as f64 / 2.0 {
            assert!(got.is_finite(), "silu_mul({gv}, {uv}) = {got}");
        }
        if gd.abs() < 80.0 && ud.abs() < 1e30 {
            let exact = gd / (1.0 + (-gd).exp()) * ud;
            if exact.abs() > 1e-30 {
                max_rel = max_rel.max((got as f64 - exact).abs() / exact.abs());
            }
        }
    }
    assert!(max_rel < 2e-6, "max relative error {max_rel:e}");
    assert_eq!(scalar::silu_mul(0.0, 5.0), 0.0);
    assert_eq!(scalar::silu_mul(100.0, 2.0), 200.0);
    assert!(scalar::silu_mul(-1e30, 1.0).abs() < 1e-8);
    assert!(scalar::silu_mul(f32::NAN, 1.0).is_nan());
}

#[test]
fn simd_silu_mul_matches_scalar_at_every_tail_length() {
    let isas = simd_isas("act::simd_silu_mul_matches_scalar_at_every_tail_length");
    let g = values(3000, 40.0, 21);
    let mut u = values(3000, 3.0, 22);
    u[7] = f32::NAN;
    u[8] = f32::INFINITY;
    for len in (0..=33).chain([48, 257, 3000]) {
        for off in [0, 2] {
            let Some(gs) = g.get(off..off + len) else {
                continue;
            };
            let us = &u[off..off + len];
            let mut want = gs.to_vec();
            scalar::silu_mul_in_place(&mut want, us);
            for &isa in &isas {
                let mut got = gs.to_vec();
                assert_eq!(silu_mul_in_place_on(isa, &mut got, us), Ok(Some(())));
                assert_eq!(bits_nan_eq(&got), bits_nan_eq(&want), "{isa} len {len}");
            }
        }
    }
}

#[test]
fn silu_mul_parallel_split_changes_nothing() {
    let n = 5 * PAR_CHUNK + 13;
    let g = values(n, 20.0, 31);
    let u = values(n, 2.0, 32);
    let mut whole = g.clone();
    silu_mul_in_place(&mut whole, &u).unwrap();
    let mut serial = g.clone();
    for (gc, uc) in serial.chunks_mut(1000).zip(u.chunks(1000)) {
        silu_mul_in_place(gc, uc).unwrap();
    }
    assert_eq!(bits(&whole), bits(&serial));
}

/// Softmax in f64 of `row[..len] · scale`.
fn softmax_f64(row: &[f32], len: usize, scale: f32) -> Vec<f64> {
    let z: Vec<f64> = row[..len].iter().map(|&x| (x * scale) as f64).collect();
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|&v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[test]
fn softmax_scalar_matches_f64_and_writes_exact_zeros() {
    for cols in [1usize, 5, 16, 17, 64, 130] {
        let x = values(cols, 12.0, cols as u64)
            .into_iter()
            .map(|v| v.clamp(-1e4, 1e4))
            .collect::<Vec<_>>();
        for len in [0, 1, cols / 2, cols] {
            let mut row = x.clone();
            let sum = scalar::softmax_row(&mut row, len, 0.125);
            assert!(sum.is_finite() && sum >= 1.0);
            assert!(
                row[len..].iter().all(|v| v.to_bits() == 0),
                "zeros after {len}"
            );
            let want = softmax_f64(&x, len, 0.125);
            for (j, (&got, &w)) in row.iter().zip(&want).enumerate() {
                assert!(
                    (got as f64 - w).abs() <= 1e-6 * w.max(1e-30) + 1e-9,
                    "col {j}"
                );
            }
        }
    }
    // −∞ entries (masked positions) get exactly 0.
    let mut row = [1.0f32, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY];
    scalar::softmax_row(&mut row, 4, 1.0);
    assert_eq!(row, [0.5, 0.0, 0.5, 0.0]);
}

#[test]
fn simd_softmax_matches_scalar_at_every_length() {
    let isas = simd_isas("act::simd_softmax_matches_scalar_at_every_length");
    for cols in (0..=33).chain([63, 64, 65, 200, 513]) {
        let mut x = values(cols * 3 + 40, 20.0, 7 + cols as u64);
        // Large magnitudes, −∞ (masked) and ties in some rows.
        for (i, v) in x.iter_mut().enumerate() {
            match i % 29 {
                3 => *v = f32::NEG_INFINITY,
                5 => *v = 1e30,
                11 => *v = -1e30,
                _ => *v = v.clamp(-1e6, 1e6),
            }
        }
        let limits: Vec<usize> = (0..=cols).collect();
        let rows = limits.len();
        for scale in [1.0f32, 0.125, -0.5] {
            let base: Vec<f32> = (0..rows * cols).map(|i| x[i % x.len()]).collect();
            let mut want = base.clone();
            let mut want_bad = Vec::new();
            for (r, row) in want.chunks_mut(cols.max(1)).enumerate().take(rows) {
                if cols > 0 && !scalar::softmax_row(row, limits[r], scale).is_finite() {
                    want_bad.push(r);
                }
            }
            for &isa in &isas {
                let mut got = base.clone();
                let r = softmax_rows_on(isa, &mut got, cols, &limits, scale);
                let first_bad = want_bad.first().map(|r| r * cols);
                assert_eq!(
                    r.map_err(|e| e.non_finite_index()),
                    match first_bad {
                        None => Ok(Some(())),
                        Some(i) => Err(Some(i)),
                    },
                    "{isa} cols {cols}"
                );
                assert_eq!(
                    bits_nan_eq(&got),
                    bits_nan_eq(&want),
                    "{isa} cols {cols} scale {scale}"
                );
            }
        }
    }
}

#[test]
fn softmax_reports_the_first_bad_row_and_ignores_unused_columns() {
    let cols = 20;
    let mut isas = simd_isas("act::softmax_reports_the_first_bad_row_and_ignores_unused_columns");
    isas.push(Isa::Scalar);
    for isa in isas {
        let mut s = values(4 * cols, 3.0, 9);
        s[cols + 15] = f32::NAN; // row 1 uses 10 columns: ignored
        s[2 * cols + 3] = f32::INFINITY; // row 2: reported
        s[3 * cols + 1] = f32::NAN; // row 3: bad too, but not the first
        let r = softmax_rows_on(isa, &mut s, cols, &[cols, 10, cols, cols], 1.0);
        assert_eq!(r.unwrap_err().non_finite_index(), Some(2 * cols), "{isa}");
        assert!(s[cols + 10..2 * cols].iter().all(|v| v.to_bits() == 0));
        let sum: f32 = s[..cols].iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
        let mut only_masked = [f32::NEG_INFINITY; 4];
        let r = softmax_rows_on(isa, &mut only_masked, 4, &[4], 1.0);
        assert_eq!(r.unwrap_err().non_finite_index(), Some(0), "{isa}");
    }
}

#[test]
fn softmax_parallel_split_changes_nothing() {
    let (rows, cols) = (70, 1000);
    let x = values(rows * cols, 10.0, 41);
    let limits: Vec<usize> = (0..rows).map(|r| (r * 37) % (cols + 1)).collect();
    let mut whole = x.clone();
    softmax_rows(&mut whole, cols, &limits, 0.3).unwrap();
    let mut serial = x.clone();
    for (row, &l) in serial.chunks_mut(cols).zip(&limits) {
        softmax_rows(row, cols, &[l], 0.3).unwrap();
    }
    assert_eq!(bits(&whole), bits(&serial));
}

#[test]
fn argument_errors_are_errors_not_panics() {
    let mut g = [1.0f32; 3];
    assert_eq!(
        silu_mul_in_place(&mut g, &[1.0; 2])
            .unwrap_err()
            .to_string(),
        "silu_mul_in_place: up has 2 elements, need gate.len() = 3"
    );
    assert!(silu_mul_in_place_on(Isa::Avx512Vnni, &mut g, &[1.0; 4]).is_err());
    assert_eq!(g, [1.0; 3]);
    let mut s = [2.0f32; 6];
    assert_eq!(
        softmax_rows(&mut s, 4, &[1, 1], 1.0)
            .unwrap_err()
            .to_string(),
        "softmax_rows: scores has 6 elements, need rows × cols = 2 × 4 = 8"
    );
    assert_eq!(
        softmax_rows(&mut s, 3, &[1, 4], 1.0)
            .unwrap_err()
            .to_string(),
        "softmax_rows: invalid limits: row 1 uses 4 columns of 3"
    );
    assert_eq!(
        softmax_rows_on(Isa::Avx2, &mut s, 3, &[1, 1], f32::NAN)
            .unwrap_err()
            .to_string(),
        "softmax_rows_on: invalid scale: must be finite, found NaN"
    );
    assert!(matches!(
        softmax_rows(&mut s, usize::MAX, &[0, 0], 1.0),
        Err(KernelError::Overflow { .. })
    ));
    assert_eq!(s, [2.0; 6]);
    assert_eq!(softmax_rows(&mut [], 0, &[0, 0], 1.0), Ok(()));
    assert_eq!(softmax_rows(&mut [], 5, &[], 1.0), Ok(()));
}

#[test]
fn kernel_isa_is_available() {
    let isa = kernel_isa();
    assert!(available(isa), "{isa}");
    assert_eq!(exp_in_place_on(isa, &mut [1.0]), Ok(Some(())));
}

/// A KV cache `[heads, cap, d]` of random values, its layout with `len` positions.
fn kv_case(
    heads: usize,
    cap: usize,
    len: usize,
    d: usize,
    seed: u64,
) -> (Vec<f32>, Vec<f32>, KvLayout) {
    let keys = values(heads * cap * d, 2.0, seed)
        .into_iter()
        .map(|x| x.clamp(-3.0, 3.0))
        .collect();
    let vals = values(heads * cap * d, 5.0, seed + 1)
        .into_iter()
        .map(|x| x.clamp(-10.0, 10.0))
        .collect();
    let kv = KvLayout {
        heads,
        len,
        head_stride: cap * d,
        row_stride: d,
    };
    (keys, vals, kv)
}

/// Checks `out` against an f64 evaluation of causal attention: row `r` reads KV head
/// `r / per` of a cache with `cap` positions and sees its first `limits[r]` keys.
#[allow(clippy::too_many_arguments)]
fn assert_matches_f64(
    q: &[f32],
    keys: &[f32],
    vals: &[f32],
    limits: &[usize],
    per: usize,
    cap: usize,
    d: usize,
    scale: f64,
    out: &[f32],
) {
    for (r, &lim) in limits.iter().enumerate() {
        let base = r / per * cap * d;
        let s: Vec<f64> = (0..lim)
            .map(|j| {
                let dot: f64 = (0..d)
                    .map(|i| q[r * d + i] as f64 * keys[base + j * d + i] as f64)
                    .sum();
                dot * scale
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for i in 0..d {
            let want: f64 = (0..lim)
                .map(|j| e[j] / z * vals[base + j * d + i] as f64)
                .sum();
            let got = out[r * d + i] as f64;
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "row {r} el {i}: {got} vs {want}"
            );
        }
    }
}

/// The scalar twin against an f64 evaluation of the same formula.
#[test]
fn attend_scalar_matches_f64() {
    let (heads, per, cap, len, d) = (3, 2, 40, 37, 64);
    let (keys, vals, kv) = kv_case(heads, cap, len, d, 5);
    let q: Vec<f32> = values(heads * per * d, 1.0, 9)
        .into_iter()
        .map(|x| x.clamp(-1.0, 1.0))
        .collect();
    let limits: Vec<usize> = (0..heads * per).map(|r| len - r).collect();
    let mut out = vec![0f32; q.len()];
    attend_rows_on(
        Isa::Scalar,
        &q,
        d,
        &keys,
        &vals,
        kv,
        &limits,
        0.125,
        &mut out,
    )
    .unwrap()
    .unwrap();
    assert_matches_f64(&q, &keys, &vals, &limits, per, cap, d, 0.125, &out);
}

/// Every SIMD ISA gives the scalar twin's bits: widths around the vector lengths (4, 8,
/// 16) and the register blocks of the value sums (up to 8 registers, then a second
/// block), every cache length 0..=33 and long ones, strided heads, grouped queries, rows
/// that see nothing.
#[test]
fn simd_attend_matches_scalar_bit_for_bit() {
    let isas = simd_isas("simd_attend_matches_scalar_bit_for_bit");
    for d in [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65, 100, 129] {
        for len in (0..=33).chain([100, 257]) {
            let (heads, per) = (if len % 2 == 0 { 3 } else { 1 }, 2);
            let cap = len + 3;
            let (keys, vals, kv) = kv_case(heads, cap, len, d, (d * 1000 + len) as u64);
            // Mostly finite scores; every fifth length keeps the extremes (±1e30, MAX).
            let q: Vec<f32> = values(heads * per * d, 1.0, len as u64 + 77)
                .into_iter()
                .map(|x| if len % 5 == 0 { x } else { x.clamp(-1.0, 1.0) })
                .collect();
            let limits: Vec<usize> = (0..heads * per)
                .map(|r| len.saturating_sub(r % 3))
                .collect();
            let mut want = vec![0f32; q.len()];
            let scalar = attend_rows_on(
                Isa::Scalar,
                &q,
                d,
                &keys,
                &vals,
                kv,
                &limits,
                0.3,
                &mut want,
            );
            for &isa in &isas {
                let mut got = vec![0f32; q.len()];
                let r = attend_rows_on(isa, &q, d, &keys, &vals, kv, &limits, 0.3, &mut got);
                assert_eq!(r.is_ok(), scalar.is_ok(), "{isa:?} d={d} len={len}");
                if len % 5 != 0 {
                    assert!(r.is_ok(), "{isa:?} d={d} len={len}: {r:?}");
                }
                assert_eq!(
                    bits_nan_eq(&got),
                    bits_nan_eq(&want),
                    "{isa:?} d={d} len={len}"
                );
            }
        }
    }
}

/// Splitting rows over threads changes no bit; a non-finite key is reported with the
/// first affected row.
#[test]
fn attend_parallel_split_and_bad_rows() {
    let (heads, per, cap, len, d) = (3, 3, 600, 512, 64);
    let (mut keys, vals, kv) = kv_case(heads, cap, len, d, 11);
    let q: Vec<f32> = values(heads * per * d, 1.0, 12)
        .into_iter()
        .map(|x| x.clamp(-1.0, 1.0))
        .collect();
    let limits = vec![len; heads * per];
    let run = |threads: usize, keys: &[f32]| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut out = vec![0f32; q.len()];
            let r = attend_rows(&q, d, keys, &vals, kv, &limits, 0.125, &mut out);
            (r, bits(&out))
        })
    };
    let (r1, b1) = run(1, &keys);
    r1.unwrap();
    for t in [2, 3, 8] {
        let (r, b) = run(t, &keys);
        r.unwrap();
        assert_eq!(b, b1, "threads={t}");
    }
    keys[cap * d + 5 * d] = f32::NAN; // head 1, position 5
    for t in [1, 3] {
        let e = run(t, &keys).0.unwrap_err();
        assert_eq!(e.non_finite_index(), Some(per * d), "threads={t}");
    }
}

#[test]
fn attend_argument_errors() {
    let kv = KvLayout {
        heads: 1,
        len: 2,
        head_stride: 8,
        row_stride: 4,
    };
    let (k, v) = ([0f32; 8], [0f32; 8]);
    let mut out = [0f32; 4];
    let q = [0f32; 4];
    let ok = attend_rows(&q, 4, &k, &v, kv, &[2], 1.0, &mut out);
    assert!(ok.is_ok());
    assert!(
        attend_rows(&q, 0, &k, &v, kv, &[2], 1.0, &mut out).is_err(),
        "d = 0"
    );
    assert!(
        attend_rows(&q, 4, &k, &v, kv, &[3], 1.0, &mut out).is_err(),
        "limit"
    );
    assert!(
        attend_rows(&q, 4, &k[..7], &v, kv, &[2], 1.0, &mut out).is_err(),
        "short keys"
    );
    assert!(
        attend_rows(&q, 4, &k, &v[..5], kv, &[2], 1.0, &mut out).is_err(),
        "short values"
    );
    assert!(
        attend_rows(&q[..3], 4, &k, &v, kv, &[2], 1.0, &mut out).is_err(),
        "q length"
    );
    assert!(
        attend_rows(&q, 4, &k, &v, kv, &[2], f32::NAN, &mut out).is_err(),
        "scale"
    );
    let two = KvLayout { heads: 2, ..kv };
    let e = attend_rows(&q, 4, &k, &v, two, &[2], 1.0, &mut out).unwrap_err();
    assert!(e.to_string().contains("KV heads"), "{e}");
    let huge = KvLayout {
        row_stride: usize::MAX,
        ..kv
    };
    assert!(
        attend_rows(&q, 4, &k, &v, huge, &[2], 1.0, &mut out).is_err(),
        "overflow"
    );
}

/// Causal limits of `heads × per` query rows, `per = rep · c` per KV head: query head
/// `h` of a KV head, query `i` sees `past + i + 1` keys (capped at `len`); with `holes`,
/// every seventh row sees nothing.
fn causal_limits(
    heads: usize,
    rep: usize,
    c: usize,
    past: usize,
    len: usize,
    holes: bool,
) -> Vec<usize> {
    (0..heads * rep * c)
        .map(|r| {
            if holes && r % 7 == 3 {
                0
            } else {
                (past + r % c + 1).min(len)
            }
        })
        .collect()
}

/// The blocked scalar twin against an f64 evaluation of the same formula.
#[test]
fn attend_blocked_scalar_matches_f64() {
    let (heads, rep, c, d) = (2, 3, 5, 48);
    let (past, cap) = (31, 40);
    let len = past + c;
    let (keys, vals, kv) = kv_case(heads, cap, len, d, 15);
    let q: Vec<f32> = values(heads * rep * c * d, 1.0, 19)
        .into_iter()
        .map(|x| x.clamp(-1.0, 1.0))
        .collect();
    let limits = causal_limits(heads, rep, c, past, len, true);
    let mut out = vec![0f32; q.len()];
    attend_blocked_on(
        Isa::Scalar,
        &q,
        d,
        &keys,
        &vals,
        kv,
        &limits,
        0.125,
        &mut out,
    )
    .unwrap()
    .unwrap();
    assert_matches_f64(&q, &keys, &vals, &limits, rep * c, cap, d, 0.125, &out);
}

/// Every SIMD ISA gives the blocked scalar twin's bits: widths that are and are not whole
/// vectors (1 to 8 vectors: every value tile), rows per KV head around the block sizes
/// (32 and 64) and the score tiles, causal limits with and without a cached past, rows
/// that see nothing, extremes; and the per-row kernel agrees to within rounding.
#[test]
fn simd_attend_blocked_matches_scalar_bit_for_bit() {
    let isas = simd_isas("simd_attend_blocked_matches_scalar_bit_for_bit");
    let mut case = 0u64;
    for d in [1, 7, 8, 16, 24, 32, 48, 64, 80, 128] {
        for (rep, c) in [
            (1, 1),
            (3, 1),
            (1, 5),
            (2, 9),
            (1, 17),
            (3, 11),
            (1, 31),
            (1, 32),
            (1, 33),
            (2, 32),
            (1, 63),
            (1, 64),
            (1, 65),
            (3, 40),
            (1, 130),
        ] {
            case += 1;
            let heads = 1 + (case % 3) as usize;
            let past = [0, 1, 7, 20][(case % 4) as usize];
            let len = past + c;
            let (keys, vals, kv) = kv_case(heads, len + 2, len, d, case * 31);
            let extremes = case.is_multiple_of(9);
            let q: Vec<f32> = values(heads * rep * c * d, 1.0, case + 5)
                .into_iter()
                .map(|x| if extremes { x } else { x.clamp(-1.0, 1.0) })
                .collect();
            let limits = causal_limits(heads, rep, c, past, len, case.is_multiple_of(2));
            let run = |isa: Isa| {
                let mut out = vec![0f32; q.len()];
                let r = attend_blocked_on(isa, &q, d, &keys, &vals, kv, &limits, 0.3, &mut out);
                (r, out)
            };
            let (scalar, want) = run(Isa::Scalar);
            let what = format!("d={d} rep={rep} c={c} heads={heads} past={past}");
            if !extremes {
                scalar.as_ref().expect(&what);
                let mut rows = vec![0f32; q.len()];
                attend_rows(&q, d, &keys, &vals, kv, &limits, 0.3, &mut rows).unwrap();
                for (i, (&a, &b)) in want.iter().zip(&rows).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-5 * (1.0 + b.abs()),
                        "{what} [{i}]: {a} vs {b}"
                    );
                }
            }
            for &isa in &isas {
                let (r, got) = run(isa);
                assert_eq!(r.is_ok(), scalar.is_ok(), "{isa:?} {what}");
                assert_eq!(
                    r.as_ref().err().and_then(|e| e.non_finite_index()),
                    scalar.as_ref().err().and_then(|e| e.non_finite_index()),
                    "{isa:?} {what}"
                );
                assert_eq!(bits_nan_eq(&got), bits_nan_eq(&want), "{isa:?} {what}");
            }
        }
    }
}

/// Splitting the blocks over threads changes no bit; a non-finite key is reported with
/// the first row that sees it, on every ISA.
#[test]
fn attend_blocked_parallel_split_and_bad_rows() {
    let (heads, rep, c, cap, d) = (3, 3, 100, 260, 64);
    let past = 150;
    let len = past + c;
    let (mut keys, vals, kv) = kv_case(heads, cap, len, d, 21);
    let q: Vec<f32> = values(heads * rep * c * d, 1.0, 22)
        .into_iter()
        .map(|x| x.clamp(-1.0, 1.0))
        .collect();
    let limits = causal_limits(heads, rep, c, past, len, false);
    let run = |threads: usize, isa: Isa, keys: &[f32]| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut out = vec![0f32; q.len()];
            let r = attend_blocked_on(isa, &q, d, keys, &vals, kv, &limits, 0.125, &mut out);
            (r.map(|x| x.is_some()), bits(&out))
        })
    };
    let (r1, b1) = run(1, Isa::Scalar, &keys);
    assert_eq!(r1, Ok(true));
    let mut isas = simd_isas("attend_blocked_parallel_split_and_bad_rows");
    isas.push(Isa::Scalar);
    for &isa in &isas {
        for t in [1, 2, 3, 8] {
            let (r, b) = run(t, isa, &keys);
            assert_eq!(r, Ok(true));
            assert_eq!(b, b1, "{isa:?} threads={t}");
        }
    }
    // Head 1, position past + 10: the first row of head 1 that sees it is query 10 of
    // its first query head.
    keys[cap * d + (past + 10) * d + 5] = f32::NAN;
    for &isa in &isas {
        for t in [1, 3] {
            let e = run(t, isa, &keys).0.unwrap_err();
            assert_eq!(
                e.non_finite_index(),
                Some((rep * c + 10) * d),
                "{isa:?} threads={t}"
            );
        }
    }
}

#[test]
fn attend_blocked_argument_errors() {
    let kv = KvLayout {
        heads: 1,
        len: 2,
        head_stride: 8,
        row_stride: 4,
    };
    let (k, v) = ([0f32; 8], [0f32; 8]);
    let mut out = [0f32; 4];
    let q = [0f32; 4];
    assert!(attend_blocked(&q, 4, &k, &v, kv, &[2], 1.0, &mut out).is_ok());
    for (what, r) in [
        (
            "d = 0",
            attend_blocked(&q, 0, &k, &v, kv, &[2], 1.0, &mut out),
        ),
        (
            "limit",
            attend_blocked(&q, 4, &k, &v, kv, &[3], 1.0, &mut out),
        ),
        (
            "short keys",
            attend_blocked(&q, 4, &k[..7], &v, kv, &[2], 1.0, &mut out),
        ),
        (
            "q length",
            attend_blocked(&q[..3], 4, &k, &v, kv, &[2], 1.0, &mut out),
        ),
        (
            "scale",
            attend_blocked(&q, 4, &k, &v, kv, &[2], f32::INFINITY, &mut out),
        ),
    ] {
        assert!(r.is_err(), "{what}");
    }
    let two = KvLayout { heads: 2, ..kv };
    assert!(attend_blocked(&q, 4, &k, &v, two, &[2], 1.0, &mut out).is_err());
}
