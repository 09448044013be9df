//! QuantLinear (W8A8, W4A8) side by side with candle's f32 `candle_nn::Linear` and candle's
//! `QMatMul` (Q8_0, Q4_0), on the LLM-sized shapes of issue 4, at 1 and 2 threads. A sixth
//! entry, `kernels_w8a8`, calls the W8A8 kernels directly on preallocated buffers: the
//! floor against which QuantLinear's own overhead (tensor plumbing, allocation) shows.
//!
//! ```text
//! cargo bench --bench quant_linear                         # everything, then the table
//! cargo bench --bench quant_linear -- '4096x4096/b1/'      # a criterion filter
//! QL_BENCH_THREADS=1 cargo bench --bench quant_linear      # one thread count only
//! QL_BENCH_SUMMARY=only cargo bench --bench quant_linear   # reprint the last run's table
//! QL_BENCH_STAT=median cargo bench --bench quant_linear    # medians instead of fastest
//! ```
//!
//! # Threads
//!
//! candle's f32 matmul (the `gemm` crate) runs on the *current* rayon pool with as many
//! tasks as `candle_core::utils::get_num_threads()` says, which reads `RAYON_NUM_THREADS`
//! at each call; candle's quantized matmul runs on its own barrier pool whose size is
//! fixed at first use from `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS`; our kernels run on
//! the current rayon pool. A thread count can therefore only be changed per process. The
//! bench re-runs itself once per thread count (`QL_BENCH_THREADS`, default `1,2`) with
//! `RAYON_NUM_THREADS = CANDLE_NUM_THREADS = n`, and each child builds an explicit
//! `n`-thread rayon pool and `install`s every measurement in it (once per criterion
//! sample, timed inside the pool), so every implementation uses the same `n`.
//!
//! # Summary
//!
//! After the runs the parent reads criterion's results for every benchmark written during
//! this invocation — the fastest sample (`sample.json`, default) or criterion's median
//! (`estimates.json`, with `QL_BENCH_STAT=median`) — and prints a markdown table of ratios to the
//! f32 Linear (the README table), the issue's targets, the speed-up over `QMatMul` Q8_0,
//! QuantLinear's time against the bare kernels', the 2-thread scaling at batch 128 and the
//! batch-1 int8 weight bandwidth.
//!
//! # AMX
//!
//! On a CPU with AMX the default kernels are the AMX ones (tiles from
//! `gemm::AMX_MIN_ROWS` rows, VNNI below). The bench then runs a second child per thread
//! count with `CANDLE_COMPRESS_ISA=avx512-vnni` (group `quant_linear_t{n}_vnni`, only our
//! implementations) and prints the AMX rows beside the forced-VNNI rows; every table row
//! names the ISA that computed it. Without AMX only the VNNI side exists and the summary
//! says so.
//!
//! Timings are short (0.5 s warm-up, 2 s measurement, 10 flat samples; override with
//! criterion's `--warm-up-time` / `--measurement-time` / `--sample-size`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use candle_compress::kernels;
use candle_compress::kernels::gemm::{self, GemmKernels, PackedW8};
use candle_compress::nn::{QuantConfig, QuantLinear};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{black_box, Criterion, SamplingMode};

const SHAPES: [(usize, usize); 5] = [
    (4096, 4096),
    (4096, 11008),
    (11008, 4096),
    (384, 1536),
    (1536, 384),
];
const BATCHES: [usize; 4] = [1, 8, 32, 128];
/// Our implementations, re-run in the forced-VNNI child on AMX machines.
const OURS: [&str; 3] = ["ql_w8a8", "ql_w4a8", "kernels_w8a8"];
/// The `CANDLE_COMPRESS_ISA` value of the forced-VNNI child, and its group suffix.
const FORCED_ISA: &str = "avx512-vnni";
/// W4A8 group used in the bench.
const W4_GROUP: usize = 128;

/// Issue 4 targets (ratio f32 Linear / W8A8, 1 thread) for an AVX-512 VNNI machine.
fn target(inp: usize, out: usize, batch: usize) -> Option<f64> {
    let row = match (inp, out) {
        (4096, 4096) => [10.8, 11.0, 7.6],
        (4096, 11008) => [4.6, 7.9, 5.9],
        (11008, 4096) => [5.3, 11.3, 7.5],
        (384, 1536) => [2.8, 10.6, 7.2],
        (1536, 384) => [2.6, 12.3, 7.4],
        _ => return None,
    };
    let i = [1, 8, 128].iter().position(|&b| b == batch)?;
    Some(row[i])
}

fn bench_id(inp: usize, out: usize, batch: usize, imp: &str) -> String {
    format!("{inp}x{out}/b{batch}/{imp}")
}

fn group_name(threads: usize) -> String {
    format!("quant_linear_t{threads}")
}

/// The group of the forced-VNNI child.
fn forced_group_name(threads: usize) -> String {
    format!("quant_linear_t{threads}_vnni")
}

/// Whether this machine runs the AMX kernels by default (then the forced-VNNI child runs).
fn amx_active() -> bool {
    kernels::active_isa() == kernels::Isa::Amx
}

fn main() {
    let criterion_home = criterion_home();
    if let Ok(t) = std::env::var("QL_BENCH_CHILD") {
        let threads: usize = t.parse().expect("QL_BENCH_CHILD is a thread count");
        let forced = std::env::var("QL_BENCH_FORCED").is_ok();
        run_child(threads, forced);
        return;
    }
    let thread_counts: Vec<usize> = std::env::var("QL_BENCH_THREADS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    let summary_only = std::env::var("QL_BENCH_SUMMARY").as_deref() == Ok("only");
    let start = SystemTime::now();
    if !summary_only {
        let exe = std::env::current_exe().expect("current exe");
        for &threads in &thread_counts {
            for forced in [false, true] {
                if forced && !amx_active() {
                    continue;
                }
                let mut cmd = Command::new(&exe);
                cmd.args(std::env::args_os().skip(1))
                    .env("QL_BENCH_CHILD", threads.to_string())
                    .env("RAYON_NUM_THREADS", threads.to_string())
                    .env("CANDLE_NUM_THREADS", threads.to_string())
                    .env("CRITERION_HOME", &criterion_home);
                if forced {
                    cmd.env("QL_BENCH_FORCED", "1")
                        .env(kernels::ISA_ENV, FORCED_ISA);
                }
                let status = cmd.status().expect("spawn bench child");
                assert!(
                    status.success(),
                    "bench child for {threads} thread(s) (forced VNNI: {forced}) failed: {status}"
                );
            }
        }
    }
    // In summary-only mode every stored result counts; otherwise only this run's.
    let since = if summary_only {
        SystemTime::UNIX_EPOCH
    } else {
        start
    };
    print_summary(&criterion_home, &thread_counts, since);
}

/// Where criterion writes: `$CRITERION_HOME`, else `<target>/criterion` (the bench
/// executable lives in `<target>/<profile>/deps/`), as criterion itself decides.
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Path::new(&dir).join("criterion");
    }
    let exe = std::env::current_exe().expect("current exe");
    match exe.ancestors().nth(3) {
        Some(target) => target.join("criterion"),
        None => PathBuf::from("target/criterion"),
    }
}

fn run_child(threads: usize, forced: bool) {
    let kernels = GemmKernels::active();
    println!(
        "quant_linear bench: {threads} thread(s){}; CPU ISA {}; gemm kernels {} ({}); candle get_num_threads() = {}",
        if forced { " [CANDLE_COMPRESS_ISA forced]" } else { "" },
        kernels::active_isa(),
        kernels.name(),
        kernels.isa(),
        candle_core::utils::get_num_threads(),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .configure_from_args();
    bench_all(&mut c, threads, &pool, forced);
    c.final_summary();
}

/// The five implementations of one `[out, in]` layer, built from the same f32 weights.
struct Layers {
    lin: candle_nn::Linear,
    w8: QuantLinear,
    w4: QuantLinear,
    q8: QMatMul,
    q4: QMatMul,
    bias: Tensor,
    /// The W8A8 layer's own packed weights and bias, for calling the kernels directly.
    raw_w8: PackedW8,
    raw_bias: Vec<f32>,
}

impl Layers {
    fn new(inp: usize, out: usize) -> Layers {
        let dev = Device::Cpu;
        let w = (Tensor::randn(0f32, 1., (out, inp), &dev).unwrap() * 0.02).unwrap();
        let bias = (Tensor::randn(0f32, 1., out, &dev).unwrap() * 0.02).unwrap();
        let lin = candle_nn::Linear::new(w.clone(), Some(bias.clone()));
        let w8 = QuantLinear::from_linear(&lin, &QuantConfig::w8a8()).unwrap();
        let w4 = QuantLinear::from_linear(&lin, &QuantConfig::w4a8(W4_GROUP).unwrap()).unwrap();
        let q8 = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
        let q4 = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q4_0).unwrap()).unwrap();
        let raw_w8 = PackedW8::pack(&w8.weights_i8(), w8.weight_scales(), out, inp).unwrap();
        let raw_bias = bias.to_vec1().unwrap();
        Layers {
            lin,
            w8,
            w4,
            q8,
            q4,
            bias,
            raw_w8,
            raw_bias,
        }
    }

    /// The kernels QuantLinear W8A8 runs, called directly on preallocated buffers: the
    /// floor QuantLinear's own overhead (tensor plumbing, allocation) is measured against.
    fn raw_w8a8(&self, x: &[f32], rows: usize, buf: &mut RawBuffers) {
        let inp = self.raw_w8.in_features();
        gemm::quantize_rows_i8(x, inp, None, &mut buf.qx, &mut buf.scales).unwrap();
        let bias = Some(&self.raw_bias[..]);
        gemm::matmul_w8a8(&buf.qx, &buf.scales, rows, &self.raw_w8, bias, &mut buf.out).unwrap();
    }

    /// One forward pass of implementation `imp`: every one computes `x·Wᵀ + b` (QMatMul
    /// has no bias, so it is added as candle's quantized Linear does).
    fn forward(&self, imp: &str, x: &Tensor) -> Tensor {
        match imp {
            "linear_f32" => self.lin.forward(x).unwrap(),
            "ql_w8a8" => self.w8.forward(x).unwrap(),
            "ql_w4a8" => self.w4.forward(x).unwrap(),
            "qmatmul_q8_0" => self
                .q8
                .forward(x)
                .unwrap()
                .broadcast_add(&self.bias)
                .unwrap(),
            "qmatmul_q4_0" => self
                .q4
                .forward(x)
                .unwrap()
                .broadcast_add(&self.bias)
                .unwrap(),
            other => unreachable!("unknown implementation {other}"),
        }
    }
}

const IMPLS: [&str; 6] = [
    "linear_f32",
    "ql_w8a8",
    "ql_w4a8",
    "qmatmul_q8_0",
    "qmatmul_q4_0",
    "kernels_w8a8",
];

/// Preallocated buffers of the direct kernel calls.
struct RawBuffers {
    qx: Vec<i8>,
    scales: Vec<f32>,
    out: Vec<f32>,
}

fn bench_all(c: &mut Criterion, threads: usize, pool: &rayon::ThreadPool, forced: bool) {
    let mut group = c.benchmark_group(if forced {
        forced_group_name(threads)
    } else {
        group_name(threads)
    });
    group.sampling_mode(SamplingMode::Flat);
    for &(inp, out) in &SHAPES {
        // Built on first use: criterion only calls the routines of benchmarks that pass
        // its filter, so a filtered run does not quantize the shapes it skips.
        let layers: OnceLock<Layers> = OnceLock::new();
        for &batch in &BATCHES {
            let x = Tensor::randn(0f32, 1., (batch, inp), &Device::Cpu).unwrap();
            let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            for imp in IMPLS {
                if forced && !OURS.contains(&imp) {
                    continue;
                }
                group.bench_function(bench_id(inp, out, batch, imp), |bencher| {
                    let l = layers.get_or_init(|| Layers::new(inp, out));
                    // One `install` per sample (criterion is not `Send`), timed inside the
                    // pool so the hop into it is not measured.
                    if imp == "kernels_w8a8" {
                        let mut buf = RawBuffers {
                            qx: vec![0; batch * inp],
                            scales: vec![0.0; batch],
                            out: vec![0.0; batch * out],
                        };
                        bencher.iter_custom(|iters| {
                            pool.install(|| {
                                let start = Instant::now();
                                for _ in 0..iters {
                                    l.raw_w8a8(&xv, batch, &mut buf);
                                    black_box(&buf.out);
                                }
                                start.elapsed()
                            })
                        })
                    } else {
                        bencher.iter_custom(|iters| {
                            pool.install(|| {
                                let start = Instant::now();
                                for _ in 0..iters {
                                    black_box(l.forward(imp, &x));
                                }
                                start.elapsed()
                            })
                        })
                    }
                });
            }
        }
    }
    group.finish();
}

/// The statistic the summary uses: `min` (default) is the fastest of criterion's samples
/// (each the mean of many iterations): on a shared machine the least disturbed one, as
/// `timeit` recommends; `median` is criterion's median estimate.
fn stat_is_min() -> bool {
    std::env::var("QL_BENCH_STAT").as_deref() != Ok("median")
}

/// Time in ns of one iteration of a benchmark (see [`stat_is_min`]), if it was written at
/// or after `since`.
fn time_ns(home: &Path, group: &str, id: &str, since: SystemTime) -> Option<f64> {
    let dir = home.join(group).join(id.replace('/', "_")).join("new");
    let read = |file: &str| -> Option<serde_json::Value> {
        let path = dir.join(file);
        let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
        if modified < since {
            return None;
        }
        serde_json::from_slice(&std::fs::read(&path).ok()?).ok()
    };
    if stat_is_min() {
        let sample = read("sample.json")?;
        let iters = sample["iters"].as_array()?;
        let times = sample["times"].as_array()?;
        iters
            .iter()
            .zip(times)
            .filter_map(|(n, t)| Some(t.as_f64()? / n.as_f64()?))
            .reduce(f64::min)
    } else {
        read("estimates.json")?["median"]["point_estimate"].as_f64()
    }
}

fn print_summary(home: &Path, thread_counts: &[usize], since: SystemTime) {
    let t = |threads: usize, inp, out, batch, imp| {
        time_ns(
            home,
            &group_name(threads),
            &bench_id(inp, out, batch, imp),
            since,
        )
    };
    let tf = |threads: usize, inp, out, batch, imp| {
        time_ns(
            home,
            &forced_group_name(threads),
            &bench_id(inp, out, batch, imp),
            since,
        )
    };
    let active = GemmKernels::active();
    let fmt_ratio = |num: Option<f64>, den: Option<f64>| match (num, den) {
        (Some(n), Some(d)) if d > 0.0 => format!("{:.2}", n / d),
        _ => "-".into(),
    };
    println!();
    println!(
        "## QuantLinear vs candle (ISA {}, gemm kernels {}; criterion {} from {})",
        kernels::active_isa(),
        GemmKernels::active().name(),
        if stat_is_min() {
            "fastest samples"
        } else {
            "medians"
        },
        home.display()
    );
    // The core's int8 and f32 peaks bound every ratio: at 100% of the int8 peak W8A8 would
    // take `ops / int8 peak`, so `Linear time / that` is the highest ratio possible.
    let peaks = kernels::peak::measure();
    println!();
    println!(
        "Core peaks (kernels::peak, {} probe): int8 {:.0} GOPS, f32 FMA {:.0} GFLOPS, quotient {:.2}. \
         `ceiling` = Linear f32 time / (2·b·in·out / int8 peak): the W8A8 ratio at 100% of the int8 peak; \
         `% peak` = W8A8's share of it (batch ≥ 8; batch 1 is memory bound).",
        peaks.isa,
        peaks.int8_gops,
        peaks.f32_gflops,
        peaks.ratio()
    );
    // On AMX machines `peaks` is the tdpbssd probe; rows computed by VNNI use its peak.
    let vnni_gops = if peaks.isa == kernels::Isa::Amx {
        kernels::peak::int8_peak_gops(kernels::Isa::Avx512Vnni).unwrap_or(0.0)
    } else {
        peaks.int8_gops
    };
    let peak_of = |isa: kernels::Isa| {
        if isa == peaks.isa {
            peaks.int8_gops
        } else {
            vnni_gops
        }
    };
    println!();
    if amx_active() {
        println!(
            "AMX: each cell has an `amx` row (default kernels; {} below {} rows, W4A8 below \
             {}; the ISA column names the W8A8 one) and an `avx512-vnni (forced)` row \
             ({}={FORCED_ISA}); VNNI int8 peak {vnni_gops:.0} GOPS.",
            kernels::Isa::Avx512Vnni,
            gemm::AMX_MIN_ROWS,
            gemm::AMX_MIN_ROWS_W4,
            kernels::ISA_ENV,
        );
    } else {
        println!(
            "AMX: this CPU has no usable AMX (active ISA {}), so only the VNNI side is measured; \
             on an AMX CPU every cell also gets an `{FORCED_ISA} (forced)` row beside the `amx` row.",
            kernels::active_isa()
        );
    }
    for &threads in thread_counts {
        println!();
        println!("### {threads} thread(s): ratio = candle f32 Linear time / implementation time (higher is faster)");
        println!();
        println!("| in×out | batch | ISA | Linear f32 ms | W8A8 ms | **W8A8** | target | ceiling | % peak | W4A8 g{W4_GROUP} | QMatMul Q8_0 | QMatMul Q4_0 | W8A8 vs Q8_0 | bare-kernel time / W8A8 time |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for &(inp, out) in &SHAPES {
            for &batch in &BATCHES {
                let lin = t(threads, inp, out, batch, "linear_f32");
                let w8 = t(threads, inp, out, batch, "ql_w8a8");
                if lin.is_none() && w8.is_none() {
                    continue;
                }
                let ms = |v: Option<f64>| v.map_or("-".into(), |ns| format!("{:.3}", ns / 1e6));
                let tgt = if threads == 1 {
                    target(inp, out, batch).map_or("-".into(), |v| format!("{v}"))
                } else {
                    "".into()
                };
                // ns at the int8 peak (of the row's ISA) of `threads` cores
                let cells = |isa: kernels::Isa, w8: Option<f64>| {
                    let gops = peak_of(isa);
                    let ideal = (2 * batch * inp * out) as f64 / (gops * threads as f64);
                    if batch >= 8 && gops > 0.0 {
                        (
                            fmt_ratio(lin, Some(ideal)),
                            w8.map_or("-".into(), |w| format!("{:.0}%", 100.0 * ideal / w)),
                        )
                    } else {
                        ("-".into(), "-".into())
                    }
                };
                let isa = active.isa_for_rows(batch);
                let (ceiling, share) = cells(isa, w8);
                println!(
                    "| {inp}×{out} | {batch} | {isa} | {} | {} | **{}** | {tgt} | {ceiling} | {share} | {} | {} | {} | {} | {} |",
                    ms(lin),
                    ms(w8),
                    fmt_ratio(lin, w8),
                    fmt_ratio(lin, t(threads, inp, out, batch, "ql_w4a8")),
                    fmt_ratio(lin, t(threads, inp, out, batch, "qmatmul_q8_0")),
                    fmt_ratio(lin, t(threads, inp, out, batch, "qmatmul_q4_0")),
                    fmt_ratio(t(threads, inp, out, batch, "qmatmul_q8_0"), w8),
                    fmt_ratio(t(threads, inp, out, batch, "kernels_w8a8"), w8),
                );
                let fw8 = tf(threads, inp, out, batch, "ql_w8a8");
                if fw8.is_some() {
                    let (ceiling, share) = cells(kernels::Isa::Avx512Vnni, fw8);
                    println!(
                        "| {inp}×{out} | {batch} | {FORCED_ISA} (forced) | {} | {} | **{}** | | {ceiling} | {share} | {} | | | {} | {} |",
                        ms(lin),
                        ms(fw8),
                        fmt_ratio(lin, fw8),
                        fmt_ratio(lin, tf(threads, inp, out, batch, "ql_w4a8")),
                        fmt_ratio(t(threads, inp, out, batch, "qmatmul_q8_0"), fw8),
                        fmt_ratio(tf(threads, inp, out, batch, "kernels_w8a8"), fw8),
                    );
                }
            }
        }
    }
    if thread_counts.contains(&1) && thread_counts.contains(&2) {
        println!();
        println!("### 2-thread scaling at batch 128 (time at 1 thread / time at 2 threads)");
        println!();
        println!("| in×out | W8A8 | W4A8 | Linear f32 | QMatMul Q8_0 |");
        println!("|---|---|---|---|---|");
        for &(inp, out) in &SHAPES {
            let s = |imp| fmt_ratio(t(1, inp, out, 128, imp), t(2, inp, out, 128, imp));
            println!(
                "| {inp}×{out} | {} | {} | {} | {} |",
                s("ql_w8a8"),
                s("ql_w4a8"),
                s("linear_f32"),
                s("qmatmul_q8_0")
            );
        }
    }
    println!();
    println!("### Batch 1: int8 weight bytes streamed per second (W8A8)");
    println!();
    println!(
        "| in×out | weight MiB | {} |",
        thread_counts
            .iter()
            .map(|n| format!("{n} thread(s) GB/s"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|---|{}", "---|".repeat(thread_counts.len()));
    for &(inp, out) in &SHAPES {
        let bytes = (inp * out) as f64;
        let cols: Vec<String> = thread_counts
            .iter()
            .map(|&n| {
                t(n, inp, out, 1, "ql_w8a8").map_or("-".into(), |ns| format!("{:.1}", bytes / ns))
            })
            .collect();
        println!(
            "| {inp}×{out} | {:.1} | {} |",
            bytes / (1 << 20) as f64,
            cols.join(" | ")
        );
    }
}
