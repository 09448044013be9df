//! Activation codec throughput, single thread, in bytes of f32 input per second.
//!
//! `f16/ours` is `ActivationCodec::F16` encode + decode (chunked `half` slice conversions,
//! F16C at run time, with full validation); `f16/seed` is the per-element scalar loop the
//! seed libraries used (`to_vec1`, then `f16::from_f32` / `to_f32` element by element into
//! growing vectors), measured in the same run. `f16/ours_reused_buffer` encodes with
//! `encode_into` into one reused buffer. The other codecs are listed for reference.
//!
//! Run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`

use candle_compress::codec::ActivationCodec;
use candle_core::{Device, Tensor};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;

/// The seed-style encoder: one element at a time, pushing into a growing buffer.
fn seed_encode(t: &Tensor) -> Vec<u8> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut out = Vec::new();
    for x in v {
        out.extend_from_slice(&f16::from_f32(x).to_le_bytes());
    }
    out
}

/// The seed-style decoder.
fn seed_decode(bytes: &[u8], dims: &[usize]) -> Tensor {
    let mut v = Vec::new();
    for c in bytes.chunks(2) {
        v.push(f16::from_le_bytes([c[0], c[1]]).to_f32());
    }
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn activation(rows: usize, cols: usize) -> Tensor {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

fn bench_f16(c: &mut Criterion) {
    let mut g = c.benchmark_group("f16_encode_decode");
    // 64 KiB (L2-resident), 4 MiB (an activation of 256 tokens x 4096 hidden) and 32 MiB.
    for (rows, cols) in [(4usize, 4096usize), (256, 4096), (2048, 4096)] {
        let t = activation(rows, cols);
        let n = rows * cols;
        g.throughput(Throughput::Bytes(4 * n as u64));
        let label = format!("{rows}x{cols}");
        g.bench_with_input(BenchmarkId::new("ours", &label), &t, |b, t| {
            b.iter(|| {
                let bytes = ActivationCodec::F16.encode(black_box(t)).unwrap();
                ActivationCodec::decode(black_box(&bytes), &Device::Cpu).unwrap()
            })
        });
        // The sender side reusing its buffer (`encode_into`); decode still allocates.
        let mut buf = Vec::new();
        g.bench_with_input(
            BenchmarkId::new("ours_reused_buffer", &label),
            &t,
            |b, t| {
                b.iter(|| {
                    ActivationCodec::F16
                        .encode_into(black_box(t), &mut buf)
                        .unwrap();
                    ActivationCodec::decode(black_box(&buf), &Device::Cpu).unwrap()
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("seed", &label), &t, |b, t| {
            b.iter(|| {
                let bytes = seed_encode(black_box(t));
                seed_decode(black_box(&bytes), &[rows, cols])
            })
        });
    }
    g.finish();
}

fn bench_other_codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec_encode_decode_256x4096");
    let t = activation(256, 4096);
    g.throughput(Throughput::Bytes(4 * 256 * 4096));
    for codec in [
        ActivationCodec::None,
        ActivationCodec::BF16,
        ActivationCodec::Int8PerRow,
        ActivationCodec::SparseColumns { keep: 512 },
        ActivationCodec::SparseColumnsF16 { keep: 512 },
    ] {
        g.bench_with_input(BenchmarkId::from_parameter(codec), &t, |b, t| {
            b.iter(|| {
                let bytes = codec.encode(black_box(t)).unwrap();
                ActivationCodec::decode(black_box(&bytes), &Device::Cpu).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_f16, bench_other_codecs
}
criterion_main!(benches);
