//! Stress: 8 threads at once (more than the cores, so they are preempted and migrate
//! between cores mid-product) run AMX-driver GEMMs on varied shapes for a few seconds,
//! every result compared bit for bit with the scalar kernel. On the hardware path this
//! checks that tile state survives context switches and that every rayon worker loads its
//! own tile configuration; the emulated path (per-thread tile state, tile instructions
//! without a configuration panic) checks the driver's discipline on any machine.
//!
//! `AMX_STRESS_SECS` sets the duration per kernel set (default 3).

use std::time::{Duration, Instant};

use candle_compress::kernels::detect::report_skipped;
use candle_compress::kernels::gemm::{GemmKernels, PackedW4, PackedW8};
use candle_compress::kernels::Isa;

mod common;

use common::compare::bits;
use common::rng::XorShift64Star;

/// One thread's loop until `deadline`; returns the number of products checked.
fn hammer(kern: GemmKernels, seed: u64, deadline: Instant) -> usize {
    let scalar = GemmKernels::for_isa(Isa::Scalar).unwrap();
    let mut rng = XorShift64Star(seed);
    let mut done = 0;
    while Instant::now() < deadline || done < 4 {
        let rows = 16 + rng.below(80);
        let n = 1 + rng.below(100);
        let k = 1 + rng.below(700);
        let qx: Vec<i8> = (0..rows * k).map(|_| rng.next_u64() as i8).collect();
        let xs: Vec<f32> = (0..rows).map(|i| 0.01 * (i % 13) as f32 + 0.001).collect();
        let (mut got, mut want) = (vec![0f32; rows * n], vec![0f32; rows * n]);
        if done % 2 == 0 {
            let w: Vec<i8> = (0..n * k).map(|_| rng.next_u64() as i8).collect();
            let ws: Vec<f32> = (0..n).map(|o| 0.002 * (o % 5) as f32 + 1e-4).collect();
            let p = PackedW8::pack(&w, &ws, n, k).unwrap();
            kern.matmul_w8a8(&qx, &xs, rows, &p, None, &mut got)
                .unwrap();
            scalar
                .matmul_w8a8(&qx, &xs, rows, &p, None, &mut want)
                .unwrap();
        } else {
            let group = [32, 64, 128][rng.below(3)];
            let w: Vec<i8> = (0..n * k)
                .map(|_| (rng.next_u64() % 16) as i8 - 8)
                .collect();
            let ws: Vec<f32> = (0..n * k.div_ceil(group))
                .map(|i| 0.01 * (i % 9) as f32)
                .collect();
            let p = PackedW4::pack(&w, &ws, n, k, group).unwrap();
            let bias: Vec<f32> = (0..n).map(|o| o as f32 * 0.5).collect();
            kern.matmul_w4a8(&qx, &xs, rows, &p, Some(&bias), &mut got)
                .unwrap();
            scalar
                .matmul_w4a8(&qx, &xs, rows, &p, Some(&bias), &mut want)
                .unwrap();
        }
        assert_eq!(
            bits(&got),
            bits(&want),
            "{} rows={rows} n={n} k={k}",
            kern.name()
        );
        done += 1;
    }
    done
}

fn stress(kern: GemmKernels) {
    let secs: f64 = std::env::var("AMX_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let counts: Vec<usize> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|t| s.spawn(move || hammer(kern, 0x57e5 + t, deadline)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "amx stress {}: 8 threads on {} cores, {secs} s, {} products checked ({counts:?})",
        kern.name(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        counts.iter().sum::<usize>()
    );
}

#[test]
fn amx_emulated_tiles_survive_eight_oversubscribed_threads() {
    stress(GemmKernels::amx_emulated());
}

#[test]
fn amx_tiles_survive_eight_oversubscribed_threads() {
    match GemmKernels::amx_tiles() {
        Ok(k) => stress(k),
        Err(_) => report_skipped(Isa::Amx, "amx_tiles_survive_eight_oversubscribed_threads"),
    }
}
