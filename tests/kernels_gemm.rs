//! Every SIMD gemm kernel against the scalar reference (bit-exact), and the scalar
//! reference against naive i64 arithmetic written here.

use candle_compress::kernels::detect::report_skipped;
use candle_compress::kernels::gemm::{GemmKernels, PackedW4, PackedW8, K_BLOCK};
use candle_compress::kernels::{Isa, KernelError};

mod common;

use common::compare::bits;
use common::kernels::scalar;
use common::rng::XorShift64Star;

/// The SIMD kernel sets this CPU runs; prints what is skipped.
fn simd_kernels(test: &str) -> Vec<GemmKernels> {
    for isa in [Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni, Isa::Neon] {
        if GemmKernels::for_isa(isa).is_err() {
            report_skipped(isa, test);
        }
    }
    if GemmKernels::avx512_ymm().is_err() {
        report_skipped(Isa::Avx512Vnni, &format!("{test} (ymm EVEX tiles)"));
    }
    let v: Vec<_> = GemmKernels::available()
        .into_iter()
        .filter(|k| k.isa() != Isa::Scalar)
        .collect();
    for k in &v {
        eprintln!("{test}: testing {}", k.name());
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn naive_w8(
    qx: &[i8],
    xs: &[f32],
    rows: usize,
    w: &[i8],
    ws: &[f32],
    n: usize,
    k: usize,
    b: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    for t in 0..rows {
        for o in 0..n {
            let mut acc = 0i64;
            for i in 0..k {
                acc += i64::from(qx[t * k + i]) * i64::from(w[o * k + i]);
            }
            let v = acc as f32 * (xs[t] * ws[o]);
            out[t * n + o] = if let Some(b) = b { v + b[o] } else { v };
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn naive_w4(
    qx: &[i8],
    xs: &[f32],
    rows: usize,
    w: &[i8],
    ws: &[f32],
    n: usize,
    k: usize,
    group: usize,
    b: Option<&[f32]>,
) -> Vec<f32> {
    let groups = k.div_ceil(group);
    let mut out = vec![0f32; rows * n];
    for t in 0..rows {
        for o in 0..n {
            let mut sum = 0f32;
            for g in 0..groups {
                let mut acc = 0i32;
                for i in g * group..((g + 1) * group).min(k) {
                    acc += i32::from(qx[t * k + i]) * i32::from(w[o * k + i]);
                }
                sum += acc as f32 * ws[o * groups + g];
            }
            let v = sum * xs[t];
            out[t * n + o] = if let Some(b) = b { v + b[o] } else { v };
        }
    }
    out
}

/// A row quantization result with the error reduced to its non-finite index.
fn nf(r: Result<(), KernelError>) -> Result<(), Option<usize>> {
    r.map_err(|e| e.non_finite_index())
}

#[derive(Clone, Copy, Debug)]
enum Fill {
    Random,
    Zeros,
    /// activations -128, weights 127 / -127 alternating.
    Extreme,
    /// activations ±127, -128, weights -127.
    Extreme2,
}

fn make(
    rng: &mut XorShift64Star,
    fill: Fill,
    rows: usize,
    n: usize,
    k: usize,
) -> (Vec<i8>, Vec<i8>) {
    match fill {
        Fill::Random => (
            (0..rows * k).map(|_| rng.i8()).collect(),
            (0..n * k).map(|_| rng.range(-127, 127)).collect(),
        ),
        Fill::Zeros => (vec![0; rows * k], vec![0; n * k]),
        Fill::Extreme => (
            vec![-128; rows * k],
            (0..n * k)
                .map(|i| if i % 3 == 0 { -127 } else { 127 })
                .collect(),
        ),
        Fill::Extreme2 => (
            (0..rows * k).map(|i| [127, -127, -128][i % 3]).collect(),
            vec![-127; n * k],
        ),
    }
}

#[test]
fn w8a8_simd_equals_scalar_all_shapes() {
    let kernels = simd_kernels("w8a8_simd_equals_scalar_all_shapes");
    let mut rng = XorShift64Star(0x1234_5678_9abc_def1);
    for &k in &[1usize, 7, 31, 33, 63, 65, 4095] {
        for &n in &[1usize, 3, 16, 33, 70] {
            // 8 and 23 rows reach the 7- and 8-row tiles (23 runs as 8 + 8 + 7)
            for &rows in &[1usize, 3, 8, 17, 23] {
                for fill in [Fill::Random, Fill::Zeros, Fill::Extreme, Fill::Extreme2] {
                    if !matches!(fill, Fill::Random) && k == 4095 && rows >= 17 {
                        continue;
                    }
                    let (qx, w) = make(&mut rng, fill, rows, n, k);
                    let ws: Vec<f32> = (0..n).map(|_| rng.f32().abs() * 0.01 + 1e-4).collect();
                    let xs: Vec<f32> = (0..rows).map(|_| rng.f32().abs() * 0.1).collect();
                    let b: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
                    let p = PackedW8::pack(&w, &ws, n, k).unwrap();
                    let bias = if rows == 3 { None } else { Some(&b[..]) };
                    let mut want = vec![0f32; rows * n];
                    scalar()
                        .matmul_w8a8(&qx, &xs, rows, &p, bias, &mut want)
                        .unwrap();
                    assert_eq!(
                        bits(&want),
                        bits(&naive_w8(&qx, &xs, rows, &w, &ws, n, k, bias)),
                        "scalar vs naive k={k} n={n} rows={rows} {fill:?}"
                    );
                    for kern in &kernels {
                        let mut got = vec![f32::NAN; rows * n];
                        kern.matmul_w8a8(&qx, &xs, rows, &p, bias, &mut got)
                            .unwrap();
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{} k={k} n={n} rows={rows} {fill:?}",
                            kern.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn w8a8_weights_of_minus_128_stay_exact() {
    let kernels = simd_kernels("w8a8_weights_of_minus_128_stay_exact");
    let mut rng = XorShift64Star(77);
    for &(rows, n, k) in &[(1usize, 3usize, 65usize), (3, 17, 33), (17, 20, 130)] {
        let qx: Vec<i8> = (0..rows * k)
            .map(|i| if i % 2 == 0 { -128 } else { rng.i8() })
            .collect();
        let w: Vec<i8> = (0..n * k)
            .map(|i| if i % 3 == 0 { -128 } else { rng.i8() })
            .collect();
        let ws = vec![0.5f32; n];
        let xs = vec![0.25f32; rows];
        let p = PackedW8::pack(&w, &ws, n, k).unwrap();
        let want = naive_w8(&qx, &xs, rows, &w, &ws, n, k, None);
        for kern in std::iter::once(scalar()).chain(kernels.iter().copied()) {
            let mut got = vec![0f32; rows * n];
            kern.matmul_w8a8(&qx, &xs, rows, &p, None, &mut got)
                .unwrap();
            assert_eq!(bits(&got), bits(&want), "{}", kern.name());
        }
    }
}

/// in_features beyond i32 range at full scale: the blocked accumulation must stay exact.
#[test]
fn w8a8_huge_in_features_is_exact() {
    let kernels = simd_kernels("w8a8_huge_in_features_is_exact");
    for &k in &[140_001usize, 3 * K_BLOCK, 270_003] {
        let (rows, n) = (3, 3);
        // Row 0 × channel 0: 127·127 per term (> 2^31 in total); row 1 × channel 1:
        // -128·127; row 2: mixed signs so blocks cancel partially.
        let mut qx = vec![0i8; rows * k];
        let mut w = vec![0i8; n * k];
        for i in 0..k {
            qx[i] = 127;
            qx[k + i] = -128;
            qx[2 * k + i] = if i < k / 2 { 127 } else { -128 };
            w[i] = 127;
            w[k + i] = 127;
            w[2 * k + i] = if i % 2 == 0 { -127 } else { 127 };
        }
        let acc00 = 127i64 * 127 * k as i64;
        assert!(acc00 > i64::from(i32::MAX), "the test must overflow i32");
        let ws = vec![1.0f32; n];
        let xs = vec![1.0f32; rows];
        let p = PackedW8::pack(&w, &ws, n, k).unwrap();
        let want = naive_w8(&qx, &xs, rows, &w, &ws, n, k, None);
        assert_eq!(want[0], acc00 as f32);
        assert_eq!(want[n + 1], (-128i64 * 127 * k as i64) as f32);
        for kern in std::iter::once(scalar()).chain(kernels.iter().copied()) {
            let mut got = vec![0f32; rows * n];
            kern.matmul_w8a8(&qx, &xs, rows, &p, None, &mut got)
                .unwrap();
            assert_eq!(bits(&got), bits(&want), "{} k={k}", kern.name());
        }
    }
}

/// Every kernel set's row quantizations of `x` (computed scales, then `given` ones)
/// against the scalar twin's codes, scales and given-scale codes in `want`.
fn assert_rows_match(
    kernels: &[GemmKernels],
    x: &[f32],
    cols: usize,
    sm: Option<&[f32]>,
    given: &[f32],
    (q0, s0, g0): (&[i8], &[f32], &[i8]),
) {
    let rows = given.len();
    for kern in kernels {
        let (mut q, mut s) = (vec![9i8; rows * cols], vec![9f32; rows]);
        kern.quantize_rows_i8(x, cols, sm, &mut q, &mut s).unwrap();
        assert_eq!(q, q0, "{} cols={cols}", kern.name());
        assert_eq!(bits(&s), bits(s0), "{} cols={cols}", kern.name());
        let mut g = vec![9i8; rows * cols];
        kern.quantize_rows_i8_with_scales(x, cols, sm, given, &mut g)
            .unwrap();
        assert_eq!(g, g0, "{} cols={cols} (given scales)", kern.name());
    }
}

#[test]
fn w4a8_simd_equals_scalar_all_shapes() {
    let kernels = simd_kernels("w4a8_simd_equals_scalar_all_shapes");
    let mut rng = XorShift64Star(0xfeed_beef);
    for &group in &[32usize, 64, 128, 8] {
        for &k in &[1usize, 7, 31, 33, 63, 65, 4095] {
            for &n in &[1usize, 3, 17, 33] {
                for &rows in &[1usize, 2, 3, 17] {
                    for extreme in [false, true] {
                        let qx: Vec<i8> = (0..rows * k)
                            .map(|i| {
                                if extreme {
                                    [-128, 127, -127][i % 3]
                                } else {
                                    rng.i8()
                                }
                            })
                            .collect();
                        let w: Vec<i8> = (0..n * k)
                            .map(|i| {
                                if extreme {
                                    [-8, 7][i % 2]
                                } else {
                                    rng.range(-8, 7)
                                }
                            })
                            .collect();
                        let groups = k.div_ceil(group);
                        let ws: Vec<f32> = (0..n * groups).map(|_| rng.f32() * 0.1).collect();
                        let xs: Vec<f32> = (0..rows).map(|_| rng.f32().abs()).collect();
                        let b: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
                        let bias = if rows == 3 { None } else { Some(&b[..]) };
                        let p = PackedW4::pack(&w, &ws, n, k, group).unwrap();
                        let mut want = vec![0f32; rows * n];
                        scalar()
                            .matmul_w4a8(&qx, &xs, rows, &p, bias, &mut want)
                            .unwrap();
                        assert_eq!(
                            bits(&want),
                            bits(&naive_w4(&qx, &xs, rows, &w, &ws, n, k, group, bias)),
                            "scalar vs naive g={group} k={k} n={n} rows={rows}"
                        );
                        for kern in &kernels {
                            let mut got = vec![f32::NAN; rows * n];
                            kern.matmul_w4a8(&qx, &xs, rows, &p, bias, &mut got)
                                .unwrap();
                            assert_eq!(
                                bits(&got),
                                bits(&want),
                                "{} g={group} k={k} n={n} rows={rows}",
                                kern.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Groups longer than 65 536 inputs: the few-row AVX-512 W4 tile sums its high nibbles
/// times 16 in chunks of that length, so its chunk boundary must be exact. Extreme codes
/// (`w = 7`, i.e. nibble 15, and `qx = ±127, -128`) make every partial sum as large as
/// it gets; rows 1 and 2 run the few-row tile, 3 the general one.
#[test]
fn w4a8_groups_longer_than_a_chunk_stay_exact() {
    let kernels = simd_kernels("w4a8_groups_longer_than_a_chunk_stay_exact");
    let (group, n) = (2 * 65536 + 8192, 3);
    let k = group + 40;
    let w: Vec<i8> = (0..n * k)
        .map(|i| if i % 5 == 0 { -8 } else { 7 })
        .collect();
    let ws = vec![0.5f32; n * 2];
    let p = PackedW4::pack(&w, &ws, n, k, group).unwrap();
    for rows in [1usize, 2, 3] {
        let qx: Vec<i8> = (0..rows * k).map(|i| [-128, 127, -127][i % 3]).collect();
        let xs = vec![0.25f32; rows];
        let mut want = vec![0f32; rows * n];
        scalar()
            .matmul_w4a8(&qx, &xs, rows, &p, None, &mut want)
            .unwrap();
        for kern in &kernels {
            let mut got = vec![f32::NAN; rows * n];
            kern.matmul_w4a8(&qx, &xs, rows, &p, None, &mut got)
                .unwrap();
            assert_eq!(bits(&got), bits(&want), "{} rows={rows}", kern.name());
        }
    }
}

/// Same bits for 1, 2, 3 and 8 threads: above the parallel threshold (tasks of whole
/// panel groups and row blocks), and below it, where a call on a rayon worker shares the
/// panels evenly between the threads (a GEMV, and a few rows over 5 panels).
#[test]
fn results_do_not_depend_on_thread_count() {
    let kernels = simd_kernels("results_do_not_depend_on_thread_count");
    // 11M MACs: above the threshold; 300K and 70K: below it, above the on-worker one.
    for (rows, n, k) in [(37, 300, 1000), (1, 300, 1000), (3, 70, 333)] {
        thread_count_case(&kernels, rows, n, k);
    }
}

fn thread_count_case(kernels: &[GemmKernels], rows: usize, n: usize, k: usize) {
    let mut rng = XorShift64Star(99);
    let qx: Vec<i8> = (0..rows * k).map(|_| rng.i8()).collect();
    let w8: Vec<i8> = (0..n * k).map(|_| rng.range(-127, 127)).collect();
    let w4: Vec<i8> = (0..n * k).map(|_| rng.range(-8, 7)).collect();
    let ws: Vec<f32> = (0..n * k.div_ceil(64)).map(|_| rng.f32()).collect();
    let xs: Vec<f32> = (0..rows).map(|_| rng.f32()).collect();
    let p8 = PackedW8::pack(&w8, &ws[..n], n, k).unwrap();
    let p4 = PackedW4::pack(&w4, &ws, n, k, 64).unwrap();
    let run = |threads: usize, kern: GemmKernels| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (mut a, mut b) = (vec![0f32; rows * n], vec![0f32; rows * n]);
            kern.matmul_w8a8(&qx, &xs, rows, &p8, None, &mut a).unwrap();
            kern.matmul_w4a8(&qx, &xs, rows, &p4, None, &mut b).unwrap();
            (bits(&a), bits(&b))
        })
    };
    let want = run(1, scalar());
    for &kern in kernels {
        for threads in [1, 2, 3, 8] {
            assert_eq!(
                run(threads, kern),
                want,
                "{} threads={threads} {rows}x{n}x{k}",
                kern.name()
            );
        }
    }
}

fn row_inputs(rng: &mut XorShift64Star, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| match i % 7 {
            // exact halves after scaling: ties must round away from zero
            0 => (rng.range(-127, 127) as f32) + 0.5,
            1 => -0.0,
            _ => rng.f32() * 10.0,
        })
        .collect()
}

#[test]
fn row_quantization_simd_equals_scalar_at_every_tail() {
    let kernels = simd_kernels("row_quantization_simd_equals_scalar_at_every_tail");
    let mut rng = XorShift64Star(2024);
    let mut lens: Vec<usize> = (1..=40).collect();
    lens.extend([63, 64, 65, 127, 128, 129, 191, 257, 4095]);
    for &cols in &lens {
        for rows in [1usize, 3] {
            let x = row_inputs(&mut rng, rows, cols);
            let smooth: Vec<f32> = (0..cols).map(|_| rng.f32().abs() + 0.5).collect();
            for sm in [None, Some(&smooth[..])] {
                let (mut q0, mut s0) = (vec![0i8; rows * cols], vec![0f32; rows]);
                scalar()
                    .quantize_rows_i8(&x, cols, sm, &mut q0, &mut s0)
                    .unwrap();
                // scalar vs the formula written out here
                for t in 0..rows {
                    let y: Vec<f32> = (0..cols)
                        .map(|c| x[t * cols + c] * sm.map_or(1.0, |s| s[c]))
                        .collect();
                    let amax = y.iter().fold(0f32, |m, v| m.max(v.abs()));
                    assert_eq!(s0[t].to_bits(), (amax / 127.0).to_bits());
                    for c in 0..cols {
                        let e = if s0[t] == 0.0 {
                            0
                        } else {
                            (y[c] / s0[t]).round().clamp(-127.0, 127.0) as i8
                        };
                        assert_eq!(q0[t * cols + c], e);
                    }
                }
                let given: Vec<f32> = (0..rows)
                    .map(|t| if t == 1 { 0.0 } else { 0.01 + t as f32 })
                    .collect();
                let mut g0 = vec![0i8; rows * cols];
                scalar()
                    .quantize_rows_i8_with_scales(&x, cols, sm, &given, &mut g0)
                    .unwrap();
                assert_rows_match(&kernels, &x, cols, sm, &given, (&q0, &s0, &g0));
            }
        }
    }
    // all zeros -> scale 0, q 0
    for kern in std::iter::once(scalar()).chain(kernels) {
        let (mut q, mut s) = (vec![5i8; 70], vec![5f32; 2]);
        kern.quantize_rows_i8(&[0.0; 70], 35, None, &mut q, &mut s)
            .unwrap();
        assert!(
            q.iter().all(|&v| v == 0) && s == [0.0, 0.0],
            "{}",
            kern.name()
        );
    }
}

#[test]
fn row_quantization_reports_first_non_finite_index() {
    let kernels = simd_kernels("row_quantization_reports_first_non_finite_index");
    let mut rng = XorShift64Star(5);
    for &cols in &[1usize, 7, 8, 9, 16, 17, 33, 100, 130] {
        let rows = 3;
        for bad_at in (0..rows * cols).step_by(cols.div_ceil(3).max(1)) {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x: Vec<f32> = (0..rows * cols).map(|_| rng.f32()).collect();
                x[bad_at] = bad;
                if bad_at + 5 < x.len() {
                    x[bad_at + 5] = f32::NAN; // a later one must not be reported
                }
                for kern in std::iter::once(scalar()).chain(kernels.iter().copied()) {
                    let (mut q, mut s) = (vec![0i8; rows * cols], vec![0f32; rows]);
                    assert_eq!(
                        nf(kern.quantize_rows_i8(&x, cols, None, &mut q, &mut s)),
                        Err(Some(bad_at)),
                        "{}",
                        kern.name()
                    );
                    assert_eq!(
                        nf(kern.quantize_rows_i8_with_scales(&x, cols, None, &[1.0; 3], &mut q)),
                        Err(Some(bad_at)),
                        "{}",
                        kern.name()
                    );
                }
            }
        }
        // overflow of x * smooth is non-finite too
        let mut x = vec![1.0f32; rows * cols];
        x[cols + cols / 2] = 3e38;
        let smooth = vec![10.0f32; cols];
        for kern in std::iter::once(scalar()).chain(kernels.iter().copied()) {
            let (mut q, mut s) = (vec![0i8; rows * cols], vec![0f32; rows]);
            assert_eq!(
                nf(kern.quantize_rows_i8(&x, cols, Some(&smooth), &mut q, &mut s)),
                Err(Some(cols + cols / 2)),
                "{}",
                kern.name()
            );
        }
    }
}

#[test]
fn avx_vnni_ymm_kernels_run_or_report_skipped() {
    match GemmKernels::for_isa(Isa::AvxVnni) {
        Err(_) => report_skipped(Isa::AvxVnni, "avx_vnni_ymm_kernels_run_or_report_skipped"),
        Ok(k) => {
            let w: Vec<i8> = (0..33 * 65).map(|i| (i % 255) as u8 as i8).collect();
            let qx: Vec<i8> = (0..3 * 65).map(|i| (i * 7 % 256) as u8 as i8).collect();
            let p = PackedW8::pack(&w, &[1.0; 33], 33, 65).unwrap();
            let (mut a, mut b) = (vec![0f32; 99], vec![0f32; 99]);
            k.matmul_w8a8(&qx, &[1.0; 3], 3, &p, None, &mut a).unwrap();
            scalar()
                .matmul_w8a8(&qx, &[1.0; 3], 3, &p, None, &mut b)
                .unwrap();
            assert_eq!(bits(&a), bits(&b));
        }
    }
}

/// Every aarch64 CPU has NEON, so there the NEON kernels must be the active ones (and the
/// comparisons above ran them); elsewhere this reports the skip.
#[test]
fn neon_kernels_are_active_on_aarch64_or_report_skipped() {
    let test = "neon_kernels_are_active_on_aarch64_or_report_skipped";
    match GemmKernels::for_isa(Isa::Neon) {
        Err(_) => {
            if cfg!(target_arch = "aarch64") {
                panic!("every aarch64 CPU has NEON");
            }
            report_skipped(Isa::Neon, test);
        }
        Ok(k) => {
            assert_eq!((k.isa(), k.name()), (Isa::Neon, "neon"));
            assert_eq!(GemmKernels::active(), k);
            assert!(GemmKernels::available().contains(&k));
            // 5 rows × 33 channels × 70 inputs: a 4-row and a 1-row tile, 3 panels (the
            // last one short), a partial k4 step; W4 group 32 with a short last group.
            let (rows, n, k_in) = (5, 33, 70);
            let w: Vec<i8> = (0..n * k_in).map(|i| (i * 37 % 256) as u8 as i8).collect();
            let qx: Vec<i8> = (0..rows * k_in)
                .map(|i| (i * 11 % 256) as u8 as i8)
                .collect();
            let p = PackedW8::pack(&w, &vec![0.5; n], n, k_in).unwrap();
            let (mut a, mut b) = (vec![0f32; rows * n], vec![0f32; rows * n]);
            k.matmul_w8a8(&qx, &[1.0; 5], rows, &p, None, &mut a)
                .unwrap();
            scalar()
                .matmul_w8a8(&qx, &[1.0; 5], rows, &p, None, &mut b)
                .unwrap();
            assert_eq!(bits(&a), bits(&b));
            let w4: Vec<i8> = w.iter().map(|&v| v >> 4).collect();
            let s4: Vec<f32> = (0..n * 3).map(|i| 0.01 * i as f32 - 0.3).collect();
            let p4 = PackedW4::pack(&w4, &s4, n, k_in, 32).unwrap();
            k.matmul_w4a8(&qx, &[0.5; 5], rows, &p4, None, &mut a)
                .unwrap();
            scalar()
                .matmul_w4a8(&qx, &[0.5; 5], rows, &p4, None, &mut b)
                .unwrap();
            assert_eq!(bits(&a), bits(&b));
        }
    }
}

/// Degenerate sizes: no inputs (every dot product is 0), no outputs, no rows.
#[test]
fn zero_sizes_are_handled() {
    for kern in GemmKernels::available() {
        let p8 = PackedW8::pack(&[], &[2.0, 3.0], 2, 0).unwrap();
        let mut out = vec![f32::NAN; 6];
        kern.matmul_w8a8(&[], &[1.0; 3], 3, &p8, Some(&[1.0, -1.0]), &mut out)
            .unwrap();
        assert_eq!(out, [1.0, -1.0, 1.0, -1.0, 1.0, -1.0], "{}", kern.name());
        let p4 = PackedW4::pack(&[], &[], 2, 0, 32).unwrap();
        kern.matmul_w4a8(&[], &[1.0; 3], 3, &p4, None, &mut out)
            .unwrap();
        assert!(out.iter().all(|&v| v == 0.0), "{}", kern.name());
        let empty = PackedW8::pack(&[], &[], 0, 5).unwrap();
        kern.matmul_w8a8(&[1; 10], &[1.0; 2], 2, &empty, None, &mut [])
            .unwrap();
        let p8 = PackedW8::pack(&[1; 10], &[1.0; 2], 2, 5).unwrap();
        kern.matmul_w8a8(&[], &[], 0, &p8, None, &mut []).unwrap();
        let (mut q, mut s) = (vec![], vec![]);
        kern.quantize_rows_i8(&[], 7, None, &mut q, &mut s).unwrap();
    }
}

/// Extreme magnitudes: subnormal rows (tiny or zero scales), rows reaching f32::MAX, and
/// static scales far too small (everything clamps) give the scalar bits on every ISA.
#[test]
fn row_quantization_extreme_magnitudes() {
    let kernels = simd_kernels("row_quantization_extreme_magnitudes");
    let cols = 37;
    let mut rng = XorShift64Star(31337);
    let rows: Vec<Vec<f32>> = vec![
        (0..cols).map(|i| f32::from_bits(i as u32 * 3)).collect(), // subnormals
        (0..cols)
            .map(|i| -f32::from_bits(1 + (i as u32 % 2)))
            .collect(), // ±min subnormal
        (0..cols)
            .map(|i| if i == 5 { f32::MAX } else { rng.f32() * 1e38 })
            .collect(),
        (0..cols)
            .map(|i| {
                if i == 36 {
                    -f32::MAX
                } else {
                    f32::MIN_POSITIVE * i as f32
                }
            })
            .collect(),
        (0..cols).map(|i| (i as f32 - 18.0) * 0.5).collect(), // exact ties
    ];
    let x: Vec<f32> = rows.concat();
    let n = rows.len();
    let (mut q0, mut s0) = (vec![0i8; n * cols], vec![0f32; n]);
    scalar()
        .quantize_rows_i8(&x, cols, None, &mut q0, &mut s0)
        .unwrap();
    let given = [1e-30f32, 0.0, 1e30, f32::MIN_POSITIVE, 1.0];
    let mut g0 = vec![0i8; n * cols];
    scalar()
        .quantize_rows_i8_with_scales(&x, cols, None, &given, &mut g0)
        .unwrap();
    assert!(
        g0[..cols].iter().all(|&v| v == 0),
        "subnormal x / 1e-30 rounds to 0"
    );
    assert_eq!(
        &g0[4 * cols..4 * cols + 3],
        &[-9, -9, -8],
        "-8.5 rounds away from zero"
    );
    for kern in &kernels {
        let (mut q, mut s) = (vec![0i8; n * cols], vec![0f32; n]);
        kern.quantize_rows_i8(&x, cols, None, &mut q, &mut s)
            .unwrap();
        assert_eq!(q, q0, "{}", kern.name());
        assert_eq!(bits(&s), bits(&s0), "{}", kern.name());
        let mut g = vec![0i8; n * cols];
        kern.quantize_rows_i8_with_scales(&x, cols, None, &given, &mut g)
            .unwrap();
        assert_eq!(g, g0, "{}", kern.name());
    }
}

/// Values whose `y / s` lies within a few ulps of a half-integer, on both sides: the
/// SIMD row quantizers may multiply by `1/s` instead of dividing only where that cannot
/// change the rounding, so they must still equal the scalar division here.
#[test]
fn row_quantization_near_half_integers_matches_division() {
    let kernels = simd_kernels("row_quantization_near_half_integers_matches_division");
    let mut rng = XorShift64Star(77);
    let cols = 200;
    for _ in 0..400 {
        // amax over 60 binades (normal scales), set by element 0
        let amax = 2f32.powi(rng.range(-30, 30) as i32) * (1.0 + rng.f32().abs());
        let s = amax / 127.0;
        let mut x = vec![amax; cols];
        for v in x.iter_mut().skip(1) {
            let k = rng.range(-127, 126) as f32 + 0.5;
            let ulps = rng.range(-4, 4) as i32;
            let t = k * s;
            *v = f32::from_bits((t.to_bits() as i32 + ulps) as u32);
        }
        let smooth = vec![1.0f32; cols];
        for sm in [None, Some(&smooth[..])] {
            let (mut q0, mut s0) = (vec![0i8; cols], vec![0f32; 1]);
            scalar()
                .quantize_rows_i8(&x, cols, sm, &mut q0, &mut s0)
                .unwrap();
            for kern in &kernels {
                let (mut q, mut s1) = (vec![0i8; cols], vec![0f32; 1]);
                kern.quantize_rows_i8(&x, cols, sm, &mut q, &mut s1)
                    .unwrap();
                assert_eq!(q, q0, "{} amax={amax}", kern.name());
            }
        }
    }
}

/// The vector widths' edges (0, 1, 7, 8, 15, 16, 17, 33, ... columns: empty rows, tails
/// alone, one vector ± 1 of each ISA, a 4-vector step ± 1) with exact ties (`s = 1`),
/// magnitudes around `2^23`, `2^24` and `f32::MAX` under given scales that push `y / s`
/// far past ±127 or to ±Inf, and a NaN/±Inf at every position: every ISA equals the
/// scalar twin bit for bit, errors included.
#[test]
fn row_quantization_edge_lengths_every_isa() {
    let kernels = simd_kernels("row_quantization_edge_lengths_every_isa");
    let big = [
        8_388_607.5f32,
        8_388_608.0,
        16_777_215.0,
        16_777_216.0,
        3e38,
        f32::MAX,
    ];
    for cols in [0usize, 1, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129] {
        let rows = 3;
        // Row 0: amax 127 (s = 1), k + 0.5 ties of both signs; row 1: large magnitudes;
        // row 2: tiny values.
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let c = i % cols.max(1);
                match i / cols.max(1) {
                    0 if c == 0 => 127.0,
                    0 => (c as f32 % 127.0 - 63.0) + 0.5,
                    1 => big[c % big.len()] * if c % 2 == 0 { 1.0 } else { -1.0 },
                    _ => f32::from_bits(c as u32 + 1) * if c % 3 == 0 { -1.0 } else { 1.0 },
                }
            })
            .collect();
        let smooth: Vec<f32> = (0..cols)
            .map(|c| if c % 4 == 0 { 1.0 } else { 0.5 })
            .collect();
        let given = [1.0f32, 1e-30, f32::MIN_POSITIVE];
        for sm in [None, Some(&smooth[..])] {
            let (mut q0, mut s0) = (vec![0i8; rows * cols], vec![0f32; rows]);
            scalar()
                .quantize_rows_i8(&x, cols, sm, &mut q0, &mut s0)
                .unwrap();
            let mut g0 = vec![0i8; rows * cols];
            scalar()
                .quantize_rows_i8_with_scales(&x, cols, sm, &given, &mut g0)
                .unwrap();
            assert_rows_match(&kernels, &x, cols, sm, &given, (&q0, &s0, &g0));
        }
        for at in 0..rows * cols {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x = x.clone();
                x[at] = bad;
                for kern in std::iter::once(scalar()).chain(kernels.iter().copied()) {
                    let (mut q, mut s) = (vec![0i8; rows * cols], vec![0f32; rows]);
                    let r = nf(kern.quantize_rows_i8(&x, cols, None, &mut q, &mut s));
                    assert_eq!(r, Err(Some(at)), "{} cols={cols}", kern.name());
                    let r = nf(kern.quantize_rows_i8_with_scales(&x, cols, None, &given, &mut q));
                    assert_eq!(r, Err(Some(at)), "{} cols={cols} (given)", kern.name());
                }
            }
        }
    }
}
