//! Quantize / dequantize throughput of every scheme, side by side with candle's Q8_0.
//!
//! 16M f32 values (64 MiB), one thread (rayon's global pool is built with 1 thread, and
//! candle's `QTensor::quantize` / `dequantize` are single threaded on CPU). Throughput is
//! GB/s of the f32 *input* (4 bytes per value) for quantize and of the f32 *output* (the
//! same size) for dequantize, so the two sides are directly comparable.
//!
//! Measured:
//! - `candle_q8_0`: `QTensor::quantize(&t, GgmlDType::Q8_0)` / `qt.dequantize(&Device::Cpu)`;
//! - `kernel_<isa>_b<block>`: `kernels::blockwise` on plain slices into preallocated
//!   buffers, for the scalar reference and every SIMD kernel this CPU runs;
//! - `<scheme>`: every scheme through the public `Compressor` API (`Scheme::compress` on a
//!   `Tensor` → compressed value; `decompress` → `Tensor`), allocations included, as a user
//!   sees it.
//!
//! Run: `cargo bench --bench quantizers -- --warm-up-time 1 --measurement-time 3`.
//! After criterion's output, a markdown table gives GB/s and the ratio to candle Q8_0 for
//! every benchmark of this run (read back from criterion's `estimates.json`, mean time).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use candle_compress::kernels::blockwise::{
    dequantize_affine_to_vec, dequantize_i8_blocks_on, dequantize_i8_blocks_to_vec,
    dequantize_u4_lut_to_vec, kernel_isa, quantize_i8_blocks_on,
};
use candle_compress::kernels::{active_isa, Isa};
use candle_compress::quant::nf4::NF4_CODE_BOOK;
use candle_compress::quant::{Affine, Nf4, SymmetricInt4};
use candle_compress::{Compressed, Compressor, Scheme};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use criterion::{BenchmarkGroup, Criterion, Throughput};
use half::f16;

/// Values per benchmark input (16M f32 = 64 MiB, far beyond every cache).
const N: usize = 16 << 20;
/// The schemes measured through the public API.
const SCHEMES: [&str; 6] = [
    "int8:64",
    "int8:32",
    "affine4:64",
    "affine8:64",
    "int4:64",
    "nf4:64",
];

/// Deterministic, roughly normal values (sum of four uniforms), a few outliers.
fn weights(n: usize) -> Vec<f32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n)
        .map(|i| {
            let g = uniform() + uniform() + uniform() + uniform();
            if i % 4099 == 0 {
                g * 8.0
            } else {
                g * 0.05
            }
        })
        .collect()
}

/// SIMD kernels this CPU can run, best first, with a name for benchmark ids.
fn simd_isas() -> Vec<(Isa, &'static str)> {
    let probe = |isa| {
        dequantize_i8_blocks_on(isa, &[0], &[f16::ONE], 1, &mut [0.0])
            .expect("valid lengths")
            .is_some()
    };
    [(Isa::Avx512Vnni, "avx512"), (Isa::Avx2, "avx2")]
        .into_iter()
        .filter(|&(isa, _)| probe(isa))
        .collect()
}

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group.sample_size(10);
    group.throughput(Throughput::Bytes((N * 4) as u64));
}

fn bench_quantize(c: &mut Criterion, x: &[f32], t: &Tensor) {
    let mut group = c.benchmark_group("quantize");
    configure(&mut group);
    group.bench_function("candle_q8_0", |b| {
        b.iter(|| QTensor::quantize(black_box(t), GgmlDType::Q8_0).expect("candle quantize"))
    });
    let mut q = vec![0i8; N];
    let mut kernels = vec![(Isa::Scalar, "scalar")];
    kernels.extend(simd_isas());
    for (isa, name) in kernels {
        for block in [32, 64] {
            let mut scales = vec![f16::ZERO; N.div_ceil(block)];
            group.bench_function(format!("kernel_{name}_b{block}"), |b| {
                b.iter(|| {
                    quantize_i8_blocks_on(isa, black_box(x), block, &mut q, &mut scales)
                        .expect("finite input")
                        .expect("kernel available")
                })
            });
        }
    }
    for scheme in SCHEMES {
        let s: Scheme = scheme.parse().expect("scheme name");
        group.bench_function(scheme_id(scheme), |b| {
            b.iter(|| s.compress(black_box(t)).expect("compress"))
        });
    }
    group.finish();
}

fn bench_dequantize(c: &mut Criterion, x: &[f32], t: &Tensor) {
    let mut group = c.benchmark_group("dequantize");
    configure(&mut group);
    let qt = QTensor::quantize(t, GgmlDType::Q8_0).expect("candle quantize");
    group.bench_function("candle_q8_0", |b| {
        b.iter(|| {
            black_box(&qt)
                .dequantize(&Device::Cpu)
                .expect("candle dequantize")
        })
    });
    drop(qt);
    let mut out = vec![0f32; N];
    let mut kernels = vec![(Isa::Scalar, "scalar")];
    kernels.extend(simd_isas());
    for block in [32, 64] {
        let mut q = vec![0i8; N];
        let mut scales = vec![f16::ZERO; N.div_ceil(block)];
        quantize_i8_blocks_on(Isa::Scalar, x, block, &mut q, &mut scales)
            .expect("finite input")
            .expect("scalar kernel");
        for &(isa, name) in &kernels {
            group.bench_function(format!("kernel_{name}_b{block}"), |b| {
                b.iter(|| {
                    dequantize_i8_blocks_on(isa, black_box(&q), &scales, block, &mut out)
                        .expect("valid lengths")
                        .expect("kernel available")
                })
            });
        }
    }
    drop(out);
    // What a `decompress` returning a Tensor costs with the kernels' own output allocation.
    for block in [32, 64] {
        let mut q = vec![0i8; N];
        let mut scales = vec![f16::ZERO; N.div_ceil(block)];
        quantize_i8_blocks_on(Isa::Scalar, x, block, &mut q, &mut scales)
            .expect("finite input")
            .expect("scalar kernel");
        group.bench_function(format!("to_tensor_b{block}"), |b| {
            b.iter(|| {
                let v =
                    dequantize_i8_blocks_to_vec(black_box(&q), &scales, block).expect("lengths");
                Tensor::from_vec(v, t.shape(), &Device::Cpu).expect("tensor")
            })
        });
    }
    // The 4-bit table kernel on the NF4 and int4 schemes' own compressed data, with the
    // Tensor built like their `decompress` does (checked bit-identical first).
    let nf4 = Nf4::new(64)
        .expect("nf4")
        .compress(t)
        .expect("nf4 compress");
    let nf4_decode = || {
        let v = dequantize_u4_lut_to_vec(nf4.packed(), &NF4_CODE_BOOK, nf4.absmax(), 64, N)
            .expect("lengths");
        Tensor::from_vec(v, t.shape(), &Device::Cpu).expect("tensor")
    };
    assert_same_values(&nf4_decode(), &nf4.decompress(&Device::Cpu).expect("nf4"));
    group.bench_function("u4_kernel_nf4_64", |b| b.iter(nf4_decode));
    drop(nf4);
    let int4 = SymmetricInt4::new(64)
        .expect("int4")
        .compress(t)
        .expect("int4 compress");
    let int4_lut: [f32; 16] = std::array::from_fn(|k| k as f32 - 8.0);
    let int4_decode = || {
        let scales: Vec<f32> = int4.scales().iter().map(|s| s.to_f32()).collect();
        let v =
            dequantize_u4_lut_to_vec(int4.packed(), &int4_lut, &scales, 64, N).expect("lengths");
        Tensor::from_vec(v, t.shape(), &Device::Cpu).expect("tensor")
    };
    assert_same_values(
        &int4_decode(),
        &int4.decompress(&Device::Cpu).expect("int4"),
    );
    group.bench_function("u4_kernel_int4_64", |b| b.iter(int4_decode));
    drop(int4);
    for bits in [4u8, 8] {
        let aff = Affine::new(bits, 64)
            .expect("affine")
            .compress(t)
            .expect("affine compress");
        let decode = || {
            let (codes, zp, sc) = (aff.codes(), aff.zero_points(), aff.scales());
            let v = dequantize_affine_to_vec(codes, bits, zp, sc, 64, N).expect("lengths");
            Tensor::from_vec(v, t.shape(), &Device::Cpu).expect("tensor")
        };
        assert_same_values(&decode(), &aff.decompress(&Device::Cpu).expect("affine"));
        group.bench_function(format!("affine_kernel_affine{bits}_64"), |b| b.iter(decode));
    }
    for scheme in SCHEMES {
        let s: Scheme = scheme.parse().expect("scheme name");
        let compressed = s.compress(t).expect("compress");
        group.bench_function(scheme_id(scheme), |b| {
            b.iter(|| {
                s.decompress(black_box(&compressed), &Device::Cpu)
                    .expect("decompress")
            })
        });
    }
    group.finish();
}

/// Panics unless both tensors hold the same f32 bits (a bench must not time wrong code).
fn assert_same_values(a: &Tensor, b: &Tensor) {
    let bits = |t: &Tensor| -> Vec<u32> {
        let v = t
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("f32 values");
        v.iter().map(|f| f.to_bits()).collect()
    };
    assert!(bits(a) == bits(b), "kernel and scheme decode differ");
}

/// `int8:64` → `int8_64` (criterion ids become directory names).
fn scheme_id(scheme: &str) -> String {
    scheme.replace(':', "_")
}

/// Where criterion writes its results (same rule as criterion 0.5).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion")
}

/// Mean time in ns of `group/id` if criterion wrote it during this run.
fn mean_ns(group: &str, id: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_home()
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    if !fresh {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn print_summary(since: SystemTime) {
    let mut ids = vec!["candle_q8_0".to_string()];
    for (_, name) in std::iter::once((Isa::Scalar, "scalar")).chain(simd_isas()) {
        ids.push(format!("kernel_{name}_b32"));
        ids.push(format!("kernel_{name}_b64"));
    }
    ids.extend(
        [
            "to_tensor_b32",
            "to_tensor_b64",
            "u4_kernel_nf4_64",
            "u4_kernel_int4_64",
            "affine_kernel_affine4_64",
            "affine_kernel_affine8_64",
        ]
        .map(String::from),
    );
    ids.extend(SCHEMES.iter().map(|s| scheme_id(s)));
    let gbs = |ns: Option<f64>| ns.map(|ns| (N * 4) as f64 / ns);
    println!();
    println!(
        "### quantizers: GB/s of f32 ({N} values, 1 thread), ratio to candle Q8_0 in this run"
    );
    println!();
    println!("| implementation | quantize GB/s | × candle | dequantize GB/s | × candle |");
    println!("|---|---:|---:|---:|---:|");
    let base_q = gbs(mean_ns("quantize", "candle_q8_0", since));
    let base_d = gbs(mean_ns("dequantize", "candle_q8_0", since));
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let ratio = |v: Option<f64>, base: Option<f64>| match (v, base) {
        (Some(v), Some(b)) => format!("{:.2}×", v / b),
        _ => "-".to_string(),
    };
    for id in ids {
        let qv = gbs(mean_ns("quantize", &id, since));
        let dv = gbs(mean_ns("dequantize", &id, since));
        if qv.is_none() && dv.is_none() {
            continue;
        }
        println!(
            "| {id} | {} | {} | {} | {} |",
            cell(qv),
            ratio(qv, base_q),
            cell(dv),
            ratio(dv, base_d)
        );
    }
}

fn main() {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .expect("rayon global pool not yet built");
    println!(
        "quantizers bench: CPU ISA {}, blockwise kernels {}, {N} f32 values, 1 thread",
        active_isa(),
        kernel_isa()
    );
    let since = SystemTime::now() - Duration::from_secs(1);
    let x = weights(N);
    let t = Tensor::from_slice(&x, (N / 4096, 4096), &Device::Cpu).expect("tensor");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_quantize(&mut c, &x, &t);
    bench_dequantize(&mut c, &x, &t);
    c.final_summary();
    print_summary(since);
}
