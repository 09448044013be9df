//! Asymmetric W4A8 (per-group offsets, `PackedW4::pack_asym`): every SIMD kernel and the
//! AMX driver (emulated tiles here; the `asm!` tiles where the CPU has AMX) against the
//! scalar reference bit for bit, the scalar reference against the formula written here,
//! and the whole product against an f32 oracle of the dequantized operands.
//!
//! Grid: in_features 1, 7, 31, 33, 63, 64, 65, 127 (and 4095 for a few shapes); out
//! 1, 3, 16, 17, 33, 70; rows 1, 3, 15, 16, 17, 31, 32, 33, 128; groups 32, 64, 128;
//! bias on and off; random, extreme and zero offsets.

use candle_compress::kernels::detect::report_skipped;
use candle_compress::kernels::gemm::{GemmKernels, PackedW4};
use candle_compress::kernels::Isa;

mod common;

use common::compare::bits;
use common::kernels::scalar;
use common::rng::XorShift64Star;

const INS: [usize; 8] = [1, 7, 31, 33, 63, 64, 65, 127];
const OUTS: [usize; 6] = [1, 3, 16, 17, 33, 70];
const ROWS: [usize; 9] = [1, 3, 15, 16, 17, 31, 32, 33, 128];

/// Every kernel set but the scalar reference: the SIMD paths this CPU runs and the AMX
/// driver on every table it can run; prints what is skipped.
fn kernels(test: &str) -> Vec<GemmKernels> {
    for isa in [
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512Vnni,
        Isa::Neon,
        Isa::Amx,
    ] {
        if GemmKernels::for_isa(isa).is_err() {
            report_skipped(isa, test);
        }
    }
    let mut v: Vec<GemmKernels> = GemmKernels::available()
        .into_iter()
        .filter(|k| k.isa() != Isa::Scalar)
        .collect();
    if GemmKernels::avx512_ymm().is_err() {
        report_skipped(Isa::Avx512Vnni, &format!("{test} (ymm EVEX tiles)"));
    }
    v.push(GemmKernels::amx_emulated());
    match GemmKernels::amx_emulated_avx512() {
        Ok(k) => v.push(k),
        Err(_) => report_skipped(Isa::Avx512Vnni, &format!("{test} (amx-emulated-avx512)")),
    }
    for k in &v {
        eprintln!("{test}: testing {}", k.name());
    }
    v
}

/// The contract written out: per group `acc_g` exact, `sum` and `off` accumulated from
/// 0.0 in group order, `out = (sum + off) · xs + b`.
#[allow(clippy::too_many_arguments)]
fn naive(
    qx: &[i8],
    xs: &[f32],
    rows: usize,
    w: &[i8],
    ws: &[f32],
    wm: &[f32],
    n: usize,
    k: usize,
    group: usize,
    b: Option<&[f32]>,
) -> Vec<f32> {
    let groups = k.div_ceil(group);
    let mut out = vec![0f32; rows * n];
    for t in 0..rows {
        for o in 0..n {
            let (mut sum, mut off) = (0f32, 0f32);
            for g in 0..groups {
                let (mut acc, mut sx) = (0i32, 0i32);
                for i in g * group..((g + 1) * group).min(k) {
                    acc += i32::from(qx[t * k + i]) * i32::from(w[o * k + i]);
                    sx += i32::from(qx[t * k + i]);
                }
                sum += acc as f32 * ws[o * groups + g];
                off += sx as f32 * wm[o * groups + g];
            }
            let v = (sum + off) * xs[t];
            out[t * n + o] = if let Some(b) = b { v + b[o] } else { v };
        }
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum Offsets {
    Random,
    /// ±1e30 and ±f32::MAX / 2^13: the offset products dwarf (or overflow) the sums.
    Extreme,
    Zero,
}

struct Case {
    qx: Vec<i8>,
    w: Vec<i8>,
    ws: Vec<f32>,
    wm: Vec<f32>,
    xs: Vec<f32>,
    b: Vec<f32>,
}

fn case(
    rng: &mut XorShift64Star,
    offsets: Offsets,
    group: usize,
    k: usize,
    n: usize,
    rows: usize,
) -> Case {
    let groups = k.div_ceil(group);
    let extreme_acts = matches!(offsets, Offsets::Extreme);
    Case {
        qx: (0..rows * k)
            .map(|i| {
                if extreme_acts {
                    [-128, 127, -127][i % 3]
                } else {
                    rng.i8()
                }
            })
            .collect(),
        w: (0..n * k).map(|_| rng.i4()).collect(),
        ws: (0..n * groups).map(|_| rng.f32() * 0.02).collect(),
        wm: (0..n * groups)
            .map(|i| match offsets {
                Offsets::Random => rng.f32() * 0.05,
                Offsets::Extreme => [1e30, -1e30, f32::MAX / 8192.0, -f32::MAX / 8192.0][i % 4],
                Offsets::Zero => 0.0,
            })
            .collect(),
        xs: (0..rows).map(|_| rng.f32().abs() * 0.1).collect(),
        b: (0..n).map(|_| rng.f32()).collect(),
    }
}

#[allow(clippy::too_many_arguments)]
fn check(
    kernels: &[GemmKernels],
    rng: &mut XorShift64Star,
    offsets: Offsets,
    group: usize,
    k: usize,
    n: usize,
    rows: usize,
) {
    let c = case(rng, offsets, group, k, n, rows);
    let p = PackedW4::pack_asym(&c.w, &c.ws, &c.wm, n, k, group).unwrap();
    assert_eq!(p.offsets(), Some(&c.wm[..]));
    for bias in [None, Some(&c.b[..])] {
        let mut want = vec![0f32; rows * n];
        scalar()
            .matmul_w4a8(&c.qx, &c.xs, rows, &p, bias, &mut want)
            .unwrap();
        let what = format!(
            "g{group} k={k} n={n} rows={rows} bias={} offsets={offsets:?}",
            bias.is_some()
        );
        assert_eq!(
            bits(&want),
            bits(&naive(
                &c.qx, &c.xs, rows, &c.w, &c.ws, &c.wm, n, k, group, bias
            )),
            "scalar vs the formula, {what}"
        );
        for kern in kernels {
            let mut got = vec![f32::NAN; rows * n];
            kern.matmul_w4a8(&c.qx, &c.xs, rows, &p, bias, &mut got)
                .unwrap();
            assert_eq!(bits(&got), bits(&want), "{} {what}", kern.name());
        }
    }
}

fn grid(group: usize, seed: u64) {
    let test = format!("w4a8_asym_g{group}_equals_scalar_on_the_grid");
    let kernels = kernels(&test);
    let mut rng = XorShift64Star(seed);
    for &k in &INS {
        for &n in &OUTS {
            for (i, &rows) in ROWS.iter().enumerate() {
                let offsets = [Offsets::Random, Offsets::Extreme, Offsets::Random][i % 3];
                check(&kernels, &mut rng, offsets, group, k, n, rows);
            }
        }
    }
    for (n, rows) in [(3, 1), (17, 16), (70, 65), (33, 128)] {
        check(&kernels, &mut rng, Offsets::Random, group, 4095, n, rows);
    }
}

#[test]
fn w4a8_asym_g32_equals_scalar_on_the_grid() {
    grid(32, 0x32);
}

#[test]
fn w4a8_asym_g64_equals_scalar_on_the_grid() {
    grid(64, 0x64);
}

#[test]
fn w4a8_asym_g128_equals_scalar_on_the_grid() {
    grid(128, 0x128);
}

/// Groups that are not 32/64/128 (8, 40, 96) run other AMX tile shapes; offsets of 0
/// give the symmetric product (`sum + 0.0`).
#[test]
fn w4a8_asym_odd_groups_and_zero_offsets() {
    let kernels = kernels("w4a8_asym_odd_groups_and_zero_offsets");
    let mut rng = XorShift64Star(8);
    for group in [8, 40, 96] {
        for (k, n, rows) in [(1, 1, 1), (100, 17, 33), (383, 33, 16), (97, 70, 64)] {
            check(&kernels, &mut rng, Offsets::Random, group, k, n, rows);
            check(&kernels, &mut rng, Offsets::Extreme, group, k, n, rows);
        }
    }
    let c = case(&mut rng, Offsets::Zero, 32, 100, 17, 5);
    let asym = PackedW4::pack_asym(&c.w, &c.ws, &c.wm, 17, 100, 32).unwrap();
    let sym = PackedW4::pack(&c.w, &c.ws, 17, 100, 32).unwrap();
    assert_eq!(sym.offsets(), None);
    for kern in kernels.iter().chain([&scalar()]) {
        let (mut a, mut s) = (vec![0f32; 5 * 17], vec![0f32; 5 * 17]);
        kern.matmul_w4a8(&c.qx, &c.xs, 5, &asym, Some(&c.b), &mut a)
            .unwrap();
        kern.matmul_w4a8(&c.qx, &c.xs, 5, &sym, Some(&c.b), &mut s)
            .unwrap();
        // Equal as numbers (a -0.0 sum becomes +0.0 after adding a zero offset).
        assert_eq!(a, s, "{}", kern.name());
    }
}

/// The integer product against f32 math on the dequantized operands
/// (`(s·c + m) · (qx · xs)`, summed in f64): the kernels' only errors are the f32
/// roundings of the epilogue.
#[test]
fn w4a8_asym_matches_the_f32_oracle() {
    let mut rng = XorShift64Star(77);
    for (group, k, n, rows) in [(32, 576, 17, 5), (64, 1536, 33, 3), (128, 65, 16, 2)] {
        let c = case(&mut rng, Offsets::Random, group, k, n, rows);
        let groups = k.div_ceil(group);
        let p = PackedW4::pack_asym(&c.w, &c.ws, &c.wm, n, k, group).unwrap();
        let mut got = vec![0f32; rows * n];
        GemmKernels::active()
            .matmul_w4a8(&c.qx, &c.xs, rows, &p, Some(&c.b), &mut got)
            .unwrap();
        for t in 0..rows {
            for o in 0..n {
                let (mut y, mut mag) = (0f64, 0f64);
                for i in 0..k {
                    let g = o * groups + i / group;
                    let w = f64::from(f32::from(c.w[o * k + i]) * c.ws[g] + c.wm[g]);
                    let x = f64::from(c.qx[t * k + i]) * f64::from(c.xs[t]);
                    y += w * x;
                    mag += (w * x).abs();
                }
                y += f64::from(c.b[o]);
                let e = (f64::from(got[t * n + o]) - y).abs();
                assert!(
                    e <= 1e-5 * (mag + f64::from(c.b[o].abs())) + 1e-30,
                    "g{group} k={k} t={t} o={o}: {} vs {y} (|Σ| {mag})",
                    got[t * n + o]
                );
            }
        }
    }
}

/// Same bits for 1, 2, 3 and 8 threads: above the parallel threshold, and below it (a
/// GEMV), where a call on a rayon worker shares the panels evenly between the threads.
#[test]
fn w4a8_asym_results_do_not_depend_on_thread_count() {
    let kernels = kernels("w4a8_asym_results_do_not_depend_on_thread_count");
    for (rows, n, k) in [(70, 300, 1000), (1, 300, 1000)] {
        asym_thread_count_case(&kernels, rows, n, k);
    }
}

fn asym_thread_count_case(kernels: &[GemmKernels], rows: usize, n: usize, k: usize) {
    let mut rng = XorShift64Star(99);
    let c = case(&mut rng, Offsets::Random, 64, k, n, rows);
    let p = PackedW4::pack_asym(&c.w, &c.ws, &c.wm, n, k, 64).unwrap();
    let run = |threads: usize, kern: GemmKernels| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut out = vec![0f32; rows * n];
            kern.matmul_w4a8(&c.qx, &c.xs, rows, &p, Some(&c.b), &mut out)
                .unwrap();
            bits(&out)
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

#[test]
fn pack_asym_checks_its_arguments() {
    let w = [1i8; 6];
    let e = PackedW4::pack_asym(&w, &[1.0; 2], &[0.0; 3], 2, 3, 8).unwrap_err();
    assert_eq!(
        e.to_string(),
        "PackedW4::pack_asym: offsets has 3 elements, need scales.len() = 2"
    );
    let e = PackedW4::pack_asym(&w, &[1.0; 2], &[0.0; 2], 2, 3, 12).unwrap_err();
    assert_eq!(
        e.to_string(),
        "PackedW4::pack_asym: invalid group: must be a positive multiple of 8, found 12"
    );
    let e = PackedW4::pack_asym(&[9; 6], &[1.0; 2], &[0.0; 2], 2, 3, 8).unwrap_err();
    assert!(e.to_string().contains("w[0] is 9"), "{e}");
    let p = PackedW4::pack_asym(&w, &[1.0; 2], &[0.5, -0.5], 2, 3, 8).unwrap();
    let sym = PackedW4::pack(&w, &[1.0; 2], 2, 3, 8).unwrap();
    // Two more f32 per group: the row-major offsets and the kernels' [groups][out] copy.
    assert_eq!(p.size_bytes(), sym.size_bytes() + 2 * 2 * 4);
    assert_eq!(p.weights(), w);
    assert!(format!("{p:?}").contains("offsets: true"), "{p:?}");
}
