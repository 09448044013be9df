//! The per-activation conversion kernels, single thread, in bytes of f32 input per second:
//! the GEMM's fused row quantization (`kernels::gemm`, what every `QuantLinear` call runs
//! on its input) on every kernel set this CPU has, beside candle's own activation
//! quantization for `QMatMul` (`BlockQ8_0::from_float`, the GGML Q8_0 blocks its quantized
//! matmul feeds the weights); and the f32 ⇄ f16 conversions of the F16 activation codec
//! (`kernels::halfconv`) beside the `half` crate's slice conversions, which candle uses.
//!
//! Shapes: one decode row of SmolLM2 (576), a 128-token prompt of its MLP input (1536)
//! and 512 rows of a 4096-wide layer (8 MiB, beyond L2).
//!
//! Run: `cargo bench --bench activation_kernels -- --warm-up-time 1 --measurement-time 3`

use candle_compress::kernels::gemm::GemmKernels;
use candle_compress::kernels::halfconv;
use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use half::slice::HalfFloatSliceExt;

const SHAPES: [(usize, usize); 3] = [(1, 576), (128, 1536), (512, 4096)];

/// Activation-like values: uniform in [-4, 4) with a few outliers per row.
fn activations(rows: usize, cols: usize) -> Vec<f32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..rows * cols)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0;
            if i % 97 == 0 {
                v * 16.0
            } else {
                v
            }
        })
        .collect()
}

fn bench_row_quant(c: &mut Criterion) {
    let mut g = c.benchmark_group("quantize_rows_i8");
    for (rows, cols) in SHAPES {
        let x = activations(rows, cols);
        let smooth: Vec<f32> = (0..cols).map(|c| 0.5 + (c % 7) as f32 * 0.25).collect();
        let label = format!("{rows}x{cols}");
        g.throughput(Throughput::Bytes(4 * x.len() as u64));
        let (mut q, mut scales) = (vec![0i8; x.len()], vec![0f32; rows]);
        for k in GemmKernels::available() {
            g.bench_function(BenchmarkId::new(k.name(), &label), |b| {
                b.iter(|| {
                    k.quantize_rows_i8(black_box(&x), cols, None, &mut q, &mut scales)
                        .unwrap()
                })
            });
            g.bench_function(
                BenchmarkId::new(format!("{}_smooth", k.name()), &label),
                |b| {
                    b.iter(|| {
                        k.quantize_rows_i8(black_box(&x), cols, Some(&smooth), &mut q, &mut scales)
                            .unwrap()
                    })
                },
            );
        }
        let mut blocks = vec![BlockQ8_0::zeros(); x.len() / 32];
        g.bench_function(BenchmarkId::new("candle_q8_0", &label), |b| {
            b.iter(|| BlockQ8_0::from_float(black_box(&x), &mut blocks))
        });
    }
    g.finish();
}

fn bench_halfconv(c: &mut Criterion) {
    let mut g = c.benchmark_group("f32_f16_round_trip");
    for (rows, cols) in SHAPES {
        let x = activations(rows, cols);
        let label = format!("{rows}x{cols}");
        g.throughput(Throughput::Bytes(4 * x.len() as u64));
        let (mut bytes, mut back) = (vec![0u8; 2 * x.len()], vec![0f32; x.len()]);
        g.bench_function(BenchmarkId::new("ours", &label), |b| {
            b.iter(|| {
                halfconv::f32_to_f16_le(black_box(&x), &mut bytes).unwrap();
                halfconv::f16_le_to_f32(black_box(&bytes), &mut back).unwrap();
            })
        });
        let mut h = vec![f16::ZERO; x.len()];
        g.bench_function(BenchmarkId::new("half_crate", &label), |b| {
            b.iter(|| {
                h.convert_from_f32_slice(black_box(&x));
                black_box(&h).convert_to_f32_slice(&mut back);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_row_quant, bench_halfconv);
criterion_main!(benches);
