//! Causal attention of a prompt over a KV cache, f32, on SmolLM2-135M's shape (3 KV heads,
//! 3 query heads each, head width 64), in one run beside candle's way of writing it:
//!
//! - `ours_blocked`: `kernels::act::attend_blocked` (the query rows of a KV head in
//!   register blocks; what `examples/llm` runs for a prompt);
//! - `ours_rows`: `kernels::act::attend_rows` (row by row; what it runs for a decode step);
//! - `candle`: `q·kᵀ` (`Tensor::matmul`, the three query heads of a KV head folded into
//!   rows), `· scale + mask`, `candle_nn::ops::softmax_last_dim`, `· v` — the candle-
//!   transformers idiom, with the mask tensor built outside the timed loop.
//!
//! Prompts of 16, 128 and 512 tokens after an empty cache, on 1 and 2 threads (ours in a
//! rayon pool of that size; candle's matmul reads `RAYON_NUM_THREADS` at each call, set
//! here to the same number). Throughput is in multiply-adds of the causal triangle
//! (`2 · Σ limits · d`).
//!
//! Run: `cargo bench --bench attention -- --warm-up-time 1 --measurement-time 3`

use candle_compress::kernels::act::{attend_blocked, attend_rows, KvLayout};
use candle_core::{DType, Device, Tensor};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const KV_HEADS: usize = 3;
const REP: usize = 3;
const D: usize = 64;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

fn bench_prompt(c: &mut Criterion) {
    let mut g = c.benchmark_group("prompt_attention");
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        for t in [16usize, 128, 512] {
            let rows = KV_HEADS * REP * t;
            let q = values(rows * D, 1);
            let keys = values(KV_HEADS * t * D, 2);
            let vals = values(KV_HEADS * t * D, 3);
            let kv = KvLayout {
                heads: KV_HEADS,
                len: t,
                head_stride: t * D,
                row_stride: D,
            };
            let limits: Vec<usize> = (0..rows).map(|r| r % t + 1).collect();
            let macs: usize = limits.iter().sum::<usize>() * 2 * D;
            g.throughput(Throughput::Elements(macs as u64));
            let label = format!("{t}tok_{threads}t");
            let mut out = vec![0f32; rows * D];
            g.bench_function(BenchmarkId::new("ours_blocked", &label), |b| {
                b.iter(|| {
                    pool.install(|| {
                        attend_blocked(&q, D, &keys, &vals, kv, &limits, 0.125, &mut out)
                    })
                    .unwrap();
                    black_box(&out);
                })
            });
            g.bench_function(BenchmarkId::new("ours_rows", &label), |b| {
                b.iter(|| {
                    pool.install(|| attend_rows(&q, D, &keys, &vals, kv, &limits, 0.125, &mut out))
                        .unwrap();
                    black_box(&out);
                })
            });
            let dev = Device::Cpu;
            let qt = Tensor::from_slice(&q, (KV_HEADS, REP * t, D), &dev).unwrap();
            let kt = Tensor::from_slice(&keys, (KV_HEADS, t, D), &dev).unwrap();
            let vt = Tensor::from_slice(&vals, (KV_HEADS, t, D), &dev).unwrap();
            let mask: Vec<f32> = (0..REP * t * t)
                .map(|i| {
                    let (r, j) = ((i / t) % t, i % t);
                    if j > r {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (1, REP * t, t), &dev).unwrap();
            g.bench_function(BenchmarkId::new("candle", &label), |b| {
                b.iter(|| {
                    let s = qt.matmul(&kt.t().unwrap()).unwrap();
                    let s = (s * 0.125).unwrap().broadcast_add(&mask).unwrap();
                    let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
                    black_box(p.matmul(&vt).unwrap().to_dtype(DType::F32).unwrap())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_prompt);
criterion_main!(benches);
