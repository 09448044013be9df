//! Kernel-level timings of `kernels::gemm` beside candle's f32 `Linear`, same process,
//! same shapes as the targets. A plain timing harness (10th percentile of repeated runs: robust on a shared machine)
//! so that one run prints every ratio; `benches/quant_linear.rs` measures the public
//! `QuantLinear` with criterion.
//!
//! Run single threaded (candle reads `RAYON_NUM_THREADS` too):
//! `RAYON_NUM_THREADS=1 cargo bench --bench gemm_kernels`
//! Optional filter: `cargo bench --bench gemm_kernels -- 4096x4096`.
//!
//! Columns: candle f32 `Linear::forward` time; ours = `quantize_rows_i8` + `matmul_w8a8`
//! (what `QuantLinear` runs per call, buffers preallocated); the ratio candle / ours;
//! GOPS (2·b·in·out / time of the matmul alone) and int8 weight GB/s (in·out bytes / time
//! of the matmul alone) for every SIMD kernel set this CPU runs; W4A8 (group 64) on the
//! active kernels.

use std::hint::black_box;
use std::time::{Duration, Instant};

use candle_compress::kernels::gemm::{GemmKernels, PackedW4, PackedW8};
use candle_core::{Device, Module, Tensor};

fn p10_time(mut f: impl FnMut()) -> Duration {
    f();
    let budget = Duration::from_millis(300);
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 5 || (start.elapsed() < budget && times.len() < 2000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 10]
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let kernels: Vec<GemmKernels> = GemmKernels::available();
    let active = GemmKernels::active();
    println!(
        "gemm kernels: active {} (available: {}), rayon threads {}",
        active.name(),
        kernels
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", "),
        rayon::current_num_threads()
    );
    // The core's peaks: what each kernel set's GOPS should be read against.
    let f32_peak = candle_compress::kernels::peak::f32_peak_gflops();
    let mut peaks = Vec::new();
    for k in kernels.iter().filter(|k| k.name() != "scalar") {
        let g = candle_compress::kernels::peak::int8_peak_gops(k.isa());
        peaks.push(format!(
            "{} {}",
            k.name(),
            g.map_or("-".into(), |g| format!("{g:.0} GOPS"))
        ));
    }
    println!(
        "core peaks (kernels::peak): f32 FMA {}; int8 {}",
        f32_peak.map_or("-".into(), |g| format!("{g:.0} GFLOPS")),
        peaks.join(", ")
    );
    if GemmKernels::amx_tiles().is_err() {
        println!(
            "amx / amx-tiles: SKIPPED, this CPU has no usable AMX (active ISA {}); no tdpbssd probe",
            candle_compress::kernels::active_isa()
        );
    }
    let mut header =
        String::from("| in×out | b | candle f32 | ours (quant+matmul) | ratio | W4A8 g64 ratio |");
    for k in kernels.iter().filter(|k| k.name() != "scalar") {
        header += &format!(" {} GOPS (GB/s) |", k.name());
    }
    println!("{header}");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (inp, out) in [
        (4096usize, 4096usize),
        (4096, 11008),
        (11008, 4096),
        (384, 1536),
        (1536, 384),
    ] {
        let wf: Vec<f32> = (0..inp * out).map(|_| rng.f32()).collect();
        let w_t = Tensor::from_vec(wf.clone(), (out, inp), &Device::Cpu).unwrap();
        let lin = candle_nn::Linear::new(w_t, None);
        // per-output symmetric int8 / per-group int4 weights
        let mut w8 = vec![0i8; inp * out];
        let mut s8 = vec![0f32; out];
        let mut w4 = vec![0i8; inp * out];
        let groups = inp.div_ceil(64);
        let mut s4 = vec![0f32; out * groups];
        for o in 0..out {
            let row = &wf[o * inp..(o + 1) * inp];
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            s8[o] = amax / 127.0;
            for k in 0..inp {
                w8[o * inp + k] = (row[k] / s8[o]).round() as i8;
            }
            for g in 0..groups {
                let r = &row[g * 64..((g + 1) * 64).min(inp)];
                let gmax = r.iter().fold(0f32, |m, v| m.max(v.abs()));
                s4[o * groups + g] = gmax / 7.0;
                for (k, v) in r.iter().enumerate() {
                    w4[o * inp + g * 64 + k] =
                        (v / s4[o * groups + g]).round().clamp(-8.0, 7.0) as i8;
                }
            }
        }
        let p8 = PackedW8::pack(&w8, &s8, out, inp).unwrap();
        let p4 = PackedW4::pack(&w4, &s4, out, inp, 64).unwrap();
        for b in [1usize, 8, 128] {
            let label = format!("{inp}x{out}");
            if !filter.is_empty() && !filter.iter().any(|f| label.contains(f.as_str())) {
                continue;
            }
            let xf: Vec<f32> = (0..b * inp).map(|_| rng.f32()).collect();
            let x_t = Tensor::from_vec(xf.clone(), (b, inp), &Device::Cpu).unwrap();
            let t_candle = p10_time(|| {
                black_box(lin.forward(black_box(&x_t)).unwrap());
            });
            let mut q = vec![0i8; b * inp];
            let mut xs = vec![0f32; b];
            let mut y = vec![0f32; b * out];
            let t_ours = p10_time(|| {
                active
                    .quantize_rows_i8(black_box(&xf), inp, None, &mut q, &mut xs)
                    .unwrap();
                active.matmul_w8a8(&q, &xs, b, &p8, None, &mut y).unwrap();
                black_box(&y);
            });
            let t_w4 = p10_time(|| {
                active
                    .quantize_rows_i8(black_box(&xf), inp, None, &mut q, &mut xs)
                    .unwrap();
                active.matmul_w4a8(&q, &xs, b, &p4, None, &mut y).unwrap();
                black_box(&y);
            });
            let mut line = format!(
                "| {label} | {b} | {:.3} ms | {:.3} ms | {:.2} | {:.2} |",
                t_candle.as_secs_f64() * 1e3,
                t_ours.as_secs_f64() * 1e3,
                t_candle.as_secs_f64() / t_ours.as_secs_f64(),
                t_candle.as_secs_f64() / t_w4.as_secs_f64(),
            );
            for k in kernels.iter().filter(|k| k.name() != "scalar") {
                let t = p10_time(|| {
                    k.matmul_w8a8(black_box(&q), &xs, b, &p8, None, &mut y)
                        .unwrap();
                    black_box(&y);
                })
                .as_secs_f64();
                line += &format!(
                    " {:.0} ({:.1}) |",
                    2.0 * (b * inp * out) as f64 / t / 1e9,
                    (inp * out) as f64 / t / 1e9
                );
            }
            println!("{line}");
        }
    }
}
