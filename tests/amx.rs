//! The AMX kernels against the scalar reference, bit for bit, over the grid:
//! in_features 1, 7, 31, 33, 63, 64, 65, 127, 4095 and K_BLOCK + 1; out_features 1, 3, 16,
//! 17, 33, 70; rows 1, 3, 15, 16, 17, 31, 32, 33, 128; with and without bias; W8A8 and
//! W4A8 with groups 32, 64 and 128.
//!
//! Every kernel set runs the same AMX driver: `amx-emulated` (scalar tile emulation,
//! portable helpers: any CPU), `amx-emulated-avx512` (the emulation with the hardware
//! table's AVX-512 helpers), `amx-tiles` and `amx` (the `asm!` tiles; on CPUs without AMX
//! these print `SKIPPED`).

use candle_compress::kernels::detect::report_skipped;
use candle_compress::kernels::gemm::{
    GemmKernels, PackedW4, PackedW8, AMX_MIN_ROWS, AMX_MIN_ROWS_W4, K_BLOCK,
};
use candle_compress::kernels::Isa;

mod common;

use common::compare::bits;
use common::kernels::scalar;
use common::rng::XorShift64Star;

const INS: [usize; 9] = [1, 7, 31, 33, 63, 64, 65, 127, 4095];
const OUTS: [usize; 6] = [1, 3, 16, 17, 33, 70];
const ROWS: [usize; 9] = [1, 3, 15, 16, 17, 31, 32, 33, 128];

/// The AMX-driver kernel sets this machine runs; prints what it cannot.
fn amx_kernels(test: &str) -> Vec<GemmKernels> {
    let mut v = vec![GemmKernels::amx_emulated()];
    match GemmKernels::amx_emulated_avx512() {
        Ok(k) => v.push(k),
        Err(_) => report_skipped(Isa::Avx512Vnni, &format!("{test} (amx-emulated-avx512)")),
    }
    match (GemmKernels::amx_tiles(), GemmKernels::for_isa(Isa::Amx)) {
        (Ok(t), Ok(a)) => v.extend([t, a]),
        _ => report_skipped(Isa::Amx, &format!("{test} (asm! tiles: amx-tiles, amx)")),
    }
    v
}

/// Activations and weights: random, or the extremes (-128 activations × ±127/-128
/// weights) that push every i32 block sum to its bound.
fn data(
    rng: &mut XorShift64Star,
    extreme: bool,
    rows: usize,
    n: usize,
    k: usize,
) -> (Vec<i8>, Vec<i8>) {
    if extreme {
        (
            vec![-128; rows * k],
            (0..n * k).map(|i| [127, -128, 127][i % 3]).collect(),
        )
    } else {
        (
            (0..rows * k).map(|_| rng.i8()).collect(),
            (0..n * k).map(|_| rng.i8()).collect(),
        )
    }
}

fn check_w8(
    kernels: &[GemmKernels],
    rng: &mut XorShift64Star,
    k: usize,
    n: usize,
    rows: usize,
    extreme: bool,
) {
    let (qx, w) = data(rng, extreme, rows, n, k);
    let ws: Vec<f32> = (0..n).map(|_| rng.f32().abs() * 0.01 + 1e-4).collect();
    let xs: Vec<f32> = (0..rows).map(|_| rng.f32().abs() * 0.1).collect();
    let b: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
    let p = PackedW8::pack(&w, &ws, n, k).unwrap();
    for bias in [None, Some(&b[..])] {
        let mut want = vec![0f32; rows * n];
        scalar()
            .matmul_w8a8(&qx, &xs, rows, &p, bias, &mut want)
            .unwrap();
        for kern in kernels {
            let mut got = vec![f32::NAN; rows * n];
            kern.matmul_w8a8(&qx, &xs, rows, &p, bias, &mut got)
                .unwrap();
            assert_eq!(
                bits(&got),
                bits(&want),
                "{} W8A8 k={k} n={n} rows={rows} bias={} extreme={extreme}",
                kern.name(),
                bias.is_some()
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_w4(
    kernels: &[GemmKernels],
    rng: &mut XorShift64Star,
    group: usize,
    k: usize,
    n: usize,
    rows: usize,
) {
    let qx: Vec<i8> = (0..rows * k).map(|_| rng.i8()).collect();
    let w: Vec<i8> = (0..n * k).map(|_| rng.i4()).collect();
    let groups = k.div_ceil(group);
    let ws: Vec<f32> = (0..n * groups).map(|_| rng.f32() * 0.02).collect();
    let xs: Vec<f32> = (0..rows).map(|_| rng.f32().abs() * 0.1).collect();
    let b: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
    let p = PackedW4::pack(&w, &ws, n, k, group).unwrap();
    for bias in [None, Some(&b[..])] {
        let mut want = vec![0f32; rows * n];
        scalar()
            .matmul_w4a8(&qx, &xs, rows, &p, bias, &mut want)
            .unwrap();
        for kern in kernels {
            let mut got = vec![f32::NAN; rows * n];
            kern.matmul_w4a8(&qx, &xs, rows, &p, bias, &mut got)
                .unwrap();
            assert_eq!(
                bits(&got),
                bits(&want),
                "{} W4A8 g{group} k={k} n={n} rows={rows} bias={}",
                kern.name(),
                bias.is_some()
            );
        }
    }
}

#[test]
fn amx_w8a8_equals_scalar_on_the_grid() {
    let kernels = amx_kernels("amx_w8a8_equals_scalar_on_the_grid");
    let mut rng = XorShift64Star(0x5eed_0a3e);
    for &k in &INS {
        for &n in &OUTS {
            for &rows in &ROWS {
                check_w8(&kernels, &mut rng, k, n, rows, false);
            }
            // the extremes on a subset of rows (every K tail and channel tail)
            for rows in [1, 17, 33] {
                check_w8(&kernels, &mut rng, k, n, rows, true);
            }
        }
    }
}

/// Above K_BLOCK the i32 block sums are added in i64: every rows and out value of the
/// grid appears (each rows value paired with one out value), random and extreme data.
#[test]
fn amx_w8a8_above_k_block_is_exact() {
    let kernels = amx_kernels("amx_w8a8_above_k_block_is_exact");
    let mut rng = XorShift64Star(0xb10c);
    let k = K_BLOCK + 1;
    for (i, &rows) in ROWS.iter().enumerate() {
        let n = OUTS[i % OUTS.len()];
        check_w8(&kernels, &mut rng, k, n, rows, false);
    }
    for (rows, n) in [(17, 3), (3, 70)] {
        check_w8(&kernels, &mut rng, k, n, rows, true);
    }
    // 3 full blocks plus a tail chunk
    check_w8(&kernels, &mut rng, 3 * K_BLOCK + 5, 17, 17, true);
}

fn w4_grid(group: usize, seed: u64) {
    let kernels = amx_kernels(&format!("amx_w4a8_g{group}_equals_scalar_on_the_grid"));
    let mut rng = XorShift64Star(seed);
    for &k in &INS {
        for &n in &OUTS {
            for &rows in &ROWS {
                check_w4(&kernels, &mut rng, group, k, n, rows);
            }
        }
    }
    let k = K_BLOCK + 1;
    for (i, &rows) in ROWS.iter().enumerate().step_by(2) {
        check_w4(&kernels, &mut rng, group, k, OUTS[i % OUTS.len()], rows);
    }
}

#[test]
fn amx_w4a8_g32_equals_scalar_on_the_grid() {
    w4_grid(32, 32);
}

#[test]
fn amx_w4a8_g64_equals_scalar_on_the_grid() {
    w4_grid(64, 64);
}

#[test]
fn amx_w4a8_g128_equals_scalar_on_the_grid() {
    w4_grid(128, 128);
}

/// Groups whose tile K is not 64 or 32 bytes (8, 40, 96) take other tile shapes.
#[test]
fn amx_w4a8_odd_groups_equal_scalar() {
    let kernels = amx_kernels("amx_w4a8_odd_groups_equal_scalar");
    let mut rng = XorShift64Star(8);
    for group in [8, 40, 96] {
        for (k, n, rows) in [(1, 1, 1), (100, 17, 33), (383, 33, 16), (97, 70, 3)] {
            check_w4(&kernels, &mut rng, group, k, n, rows);
        }
    }
}

/// The AMX table runs VNNI below AMX_MIN_ROWS and tiles from there: the same bits.
#[test]
fn amx_dispatch_by_rows_names_the_isa() {
    let emu = GemmKernels::amx_emulated();
    assert_eq!(emu.isa_for_rows(1), Isa::Scalar);
    match GemmKernels::for_isa(Isa::Amx) {
        Ok(k) => {
            assert_eq!(k.isa_for_rows(AMX_MIN_ROWS - 1), Isa::Avx512Vnni);
            assert_eq!(k.isa_for_rows(AMX_MIN_ROWS), Isa::Amx);
            assert_eq!(k.isa_for_rows_w4(AMX_MIN_ROWS_W4 - 1), Isa::Avx512Vnni);
            assert_eq!(k.isa_for_rows_w4(AMX_MIN_ROWS_W4), Isa::Amx);
            assert_eq!(k.name(), "amx");
        }
        Err(e) => {
            assert_eq!(e.isa, Isa::Amx);
            report_skipped(Isa::Amx, "amx_dispatch_by_rows_names_the_isa");
        }
    }
    assert!(
        !GemmKernels::available().contains(&emu),
        "the emulation is never a production kernel set"
    );
}

/// Multi-threaded: the tile configuration is loaded by every rayon worker (the emulation
/// panics on a tile instruction without one), and results do not depend on the threads.
/// The first shape is above the parallel threshold (tasks of whole tile blocks); the
/// second below it, where a call on a rayon worker shares the panels evenly between the
/// threads, so task boundaries fall inside panel groups.
#[test]
fn amx_results_do_not_depend_on_thread_count() {
    let kernels = amx_kernels("amx_results_do_not_depend_on_thread_count");
    for (rows, n, k) in [(64, 96, 1100), (16, 70, 300)] {
        amx_thread_count_case(&kernels, rows, n, k);
    }
}

fn amx_thread_count_case(kernels: &[GemmKernels], rows: usize, n: usize, k: usize) {
    let mut rng = XorShift64Star(3);
    let (qx, w) = data(&mut rng, false, rows, n, k);
    let ws: Vec<f32> = (0..n).map(|_| rng.f32().abs() * 0.01).collect();
    let xs: Vec<f32> = (0..rows).map(|_| rng.f32().abs()).collect();
    let p = PackedW8::pack(&w, &ws, n, k).unwrap();
    let w4: Vec<i8> = (0..n * k).map(|_| rng.i4()).collect();
    let p4 = PackedW4::pack(&w4, &vec![0.01; n * k.div_ceil(32)], n, k, 32).unwrap();
    let mut want = vec![0f32; rows * n];
    let mut want4 = vec![0f32; rows * n];
    scalar()
        .matmul_w8a8(&qx, &xs, rows, &p, None, &mut want)
        .unwrap();
    scalar()
        .matmul_w4a8(&qx, &xs, rows, &p4, None, &mut want4)
        .unwrap();
    for threads in [1, 3, 8] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for kern in kernels {
            let mut got = vec![0f32; rows * n];
            pool.install(|| {
                kern.matmul_w8a8(&qx, &xs, rows, &p, None, &mut got)
                    .unwrap()
            });
            assert_eq!(
                bits(&got),
                bits(&want),
                "{} threads={threads} {rows}x{n}x{k}",
                kern.name()
            );
            pool.install(|| {
                kern.matmul_w4a8(&qx, &xs, rows, &p4, None, &mut got)
                    .unwrap()
            });
            assert_eq!(
                bits(&got),
                bits(&want4),
                "{} W4 threads={threads} {rows}x{n}x{k}",
                kern.name()
            );
        }
    }
}
