//! The blockwise kernels against their definitions (candle's Q8_0 formula and bytes, the
//! decoders' formulas) and every SIMD kernel against the scalar one at every tail length,
//! block size and extreme value; argument errors for every entry point.

use half::f16;

use super::*;
use crate::kernels::error::KernelError;

/// candle's `BlockQ8_0::from_float`, transcribed, generalised to any block size.
fn reference(x: &[f32], block: usize) -> (Vec<i8>, Vec<f16>) {
    let mut q = Vec::new();
    let mut s = Vec::new();
    for xs in x.chunks(block) {
        let mut amax = 0f32;
        for &v in xs {
            amax = amax.max(v.abs())
        }
        let d = amax / ((1 << 7) - 1) as f32;
        let id = if d != 0f32 { 1. / d } else { 0. };
        s.push(f16::from_f32(d));
        q.extend(xs.iter().map(|&v| f32::round(v * id) as i8));
    }
    (q, s)
}

fn quantize(x: &[f32], block: usize) -> Result<(Vec<i8>, Vec<f16>), usize> {
    let mut q = vec![0i8; x.len()];
    let mut s = vec![f16::ZERO; x.len().div_ceil(block)];
    quantize_i8_blocks(x, block, &mut q, &mut s)
        .map_err(|e| e.non_finite_index().expect("lengths are right"))?;
    Ok((q, s))
}

/// Deterministic values in roughly [-scale, scale] (xorshift; no extra dependency).
fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

#[test]
fn matches_candle_formula_for_all_block_sizes() {
    for &block in &[1usize, 3, 7, 8, 16, 31, 32, 33, 64, 65, 256] {
        for n in [0usize, 1, 2, 31, 32, 33, 100, 513] {
            let x = pseudo_random(n, (block * 1000 + n) as u64, 3.0);
            assert_eq!(
                quantize(&x, block),
                Ok(reference(&x, block)),
                "block {block} n {n}"
            );
        }
    }
}

#[test]
fn block_32_gives_candle_q8_0_bytes() -> candle_core::Result<()> {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    let mut x = pseudo_random(32 * 40, 11, 4.0);
    x[32..64].iter_mut().for_each(|v| *v = 0.0);
    x[64] = 127.0 * 0.5; // ties at .5 boundaries
    let t = Tensor::from_vec(x.clone(), x.len(), &Device::Cpu)?;
    let qt = QTensor::quantize(&t, GgmlDType::Q8_0)?;
    let (q, s) = quantize(&x, 32).unwrap();
    let mut ours = Vec::new();
    for (qb, d) in q.chunks(32).zip(&s) {
        ours.extend_from_slice(&d.to_le_bytes());
        ours.extend(qb.iter().map(|&v| v as u8));
    }
    assert_eq!(&*qt.data()?, &ours[..]);
    let theirs = qt.dequantize(&Device::Cpu)?.to_vec1::<f32>()?;
    let mut back = vec![0f32; x.len()];
    dequantize_i8_blocks(&q, &s, 32, &mut back).unwrap();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&back), bits(&theirs));
    Ok(())
}

#[test]
fn ties_round_half_away_from_zero() {
    // amax 127 -> d = 1, id = 1: q = round(x) exactly.
    let x = [
        127.0f32, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 0.49999997,
    ];
    let (q, s) = quantize(&x, x.len()).unwrap();
    assert_eq!(q, [127, 1, -1, 2, -2, 3, -3, 127, -127, 0]);
    assert_eq!(s[0], f16::ONE);
}

#[test]
fn zero_blocks_and_tiny_scales() {
    let (q, s) = quantize(&[0.0, -0.0, 0.0, 5.0], 3).unwrap();
    assert_eq!(q, [0, 0, 0, 127]);
    assert_eq!(s[0].to_bits(), 0);
    // Subnormal amax: d underflows or 1/d overflows; still candle's bits.
    for amax in [1e-45f32, 1e-40, 3e-39, 1.2e-38, 1e-30] {
        let x = [amax, -amax, amax / 2.0, 0.0, -amax * 0.7];
        assert_eq!(quantize(&x, 5), Ok(reference(&x, 5)), "amax {amax:e}");
    }
    // Huge values near and beyond f16's range.
    let x = [f32::MAX, -f32::MAX / 3.0, 65504.0 * 127.0, 1.0];
    assert_eq!(quantize(&x, 2), Ok(reference(&x, 2)));
}

#[test]
fn first_non_finite_index_is_reported() {
    for (pos, bad) in [
        (0usize, f32::NAN),
        (5, f32::INFINITY),
        (9, f32::NEG_INFINITY),
    ] {
        let mut x = pseudo_random(12, 7, 1.0);
        x[pos] = bad;
        x[11] = f32::NAN;
        for block in [1, 4, 32] {
            assert_eq!(quantize(&x, block), Err(pos), "pos {pos} block {block}");
        }
    }
}

#[test]
fn dequantize_multiplies_by_f16_scale() {
    let x = pseudo_random(200, 3, 10.0);
    for block in [1usize, 7, 32, 64, 256] {
        let (q, s) = quantize(&x, block).unwrap();
        let mut out = vec![f32::NAN; x.len()];
        dequantize_i8_blocks(&q, &s, block, &mut out).unwrap();
        for (i, (&o, &v)) in out.iter().zip(&q).enumerate() {
            assert_eq!(o.to_bits(), (v as f32 * s[i / block].to_f32()).to_bits());
        }
    }
}

const BLOCKS: [usize; 11] = [1, 3, 7, 8, 16, 31, 32, 33, 64, 65, 256];

/// The SIMD instruction sets with blockwise kernels, with their vector width in f32.
const SIMD: [(Isa, usize); 3] = [(Isa::Avx2, 8), (Isa::Avx512Vnni, 16), (Isa::Neon, 4)];

/// Runs `isa` and scalar on `x`, asserting identical q bytes, scale bits and
/// dequantized bits (or the same error index). Returns false if the CPU lacks `isa`.
fn same_as_scalar(isa: Isa, x: &[f32], block: usize, what: &str) -> bool {
    let nb = x.len().div_ceil(block);
    let (mut q0, mut s0) = (vec![0i8; x.len()], vec![f16::ZERO; nb]);
    let (mut q1, mut s1) = (vec![0i8; x.len()], vec![f16::ZERO; nb]);
    let r0 = quantize_i8_blocks_on(Isa::Scalar, x, block, &mut q0, &mut s0)
        .map(|done| done.expect("the scalar kernel always runs"));
    let r1 = match quantize_i8_blocks_on(isa, x, block, &mut q1, &mut s1) {
        Ok(None) => return false,
        r => r.map(|_| ()),
    };
    assert_eq!(r1, r0, "{isa} {what}: result, block {block}, n {}", x.len());
    if r0.is_err() {
        return true;
    }
    assert_eq!(q1, q0, "{isa} {what}: q, block {block}, n {}", x.len());
    let bits = |s: &[f16]| s.iter().map(|h| h.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&s1),
        bits(&s0),
        "{isa} {what}: scales, block {block}, n {}",
        x.len()
    );
    let (mut o0, mut o1) = (vec![0f32; x.len()], vec![1f32; x.len()]);
    dequantize_i8_blocks_on(Isa::Scalar, &q0, &s0, block, &mut o0)
        .unwrap()
        .unwrap();
    dequantize_i8_blocks_on(isa, &q0, &s0, block, &mut o1)
        .unwrap()
        .unwrap();
    let fbits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        fbits(&o1),
        fbits(&o0),
        "{isa} {what}: dequantized, block {block}"
    );
    true
}

/// Inputs of length `n` that exercise every path, named for failure messages.
fn edge_inputs(n: usize, block: usize) -> Vec<(&'static str, Vec<f32>)> {
    let rnd = pseudo_random(n, (n * 7919 + block) as u64, 3.0);
    let mut v = vec![("random", rnd.clone()), ("zeros", vec![0.0; n])];
    v.push((
        "signed zeros",
        (0..n)
            .map(|i| if i % 2 == 0 { -0.0 } else { 0.0 })
            .collect(),
    ));
    // amax = 127·2^e makes d = 2^e and id = 2^-e exact: x = (k + 0.5)·2^e are exact ties.
    for e in [-3i32, 0, 5] {
        let p = 2f32.powi(e);
        let ties = (0..n)
            .map(|i| match i % block {
                0 => 127.0 * p * if i % 2 == 0 { 1.0 } else { -1.0 },
                j => ((j * 97 % 254) as f32 - 127.0 + 0.5) * p,
            })
            .collect::<Vec<f32>>();
        // One ulp either side of each tie (toward and away from zero).
        let near = ties
            .iter()
            .enumerate()
            .map(|(i, &t)| match i % 3 {
                _ if i % block == 0 => t,
                0 => t.next_down(),
                1 => t.next_up(),
                _ => t,
            })
            .collect();
        v.push(("ties", ties));
        v.push(("next to ties", near));
        // Just below k + 0.5 where adding 0.5 would round up (k = 0) or cross a binade.
        let below = (0..n)
            .map(|i| match i % block {
                0 => 127.0 * p,
                j => {
                    let k = [0.0f32, 1.0, 3.0, 7.0, 15.0, 31.0, 63.0, 126.0][j % 8];
                    let sign = if (j / 8) % 2 == 0 { 1.0 } else { -1.0 };
                    sign * ((k + 0.5) * p).next_down()
                }
            })
            .collect();
        v.push(("just below halves", below));
    }
    v.push((
        "plus minus amax",
        (0..n)
            .map(|i| if i % 3 == 0 { -2.5 } else { 2.5 })
            .collect(),
    ));
    // Scales that are subnormal in f32 (scalar fallback), subnormal in f16, and large.
    for (name, scale) in [
        ("f32-subnormal scale", 1e-38f32),
        ("tiny scale", 3e-39),
        ("denormal inputs", 1e-40),
        ("f16-subnormal scale", 1e-4),
        ("near f16 max", 65504.0 * 127.0),
        ("f16 overflow", 65520.0 * 127.0),
        ("huge", f32::MAX),
    ] {
        v.push((name, rnd.iter().map(|r| r / 3.0 * scale).collect()));
    }
    // Blocks alternating between normal and f32-subnormal scales.
    v.push((
        "mixed scales",
        rnd.iter()
            .enumerate()
            .map(|(i, r)| if (i / block) & 1 == 0 { *r } else { r * 1e-38 })
            .collect(),
    ));
    v
}

#[test]
fn simd_matches_scalar_at_every_length_and_block() {
    for (isa, lanes) in SIMD {
        for &block in &BLOCKS {
            for n in (0..=2 * lanes + 1).chain([block * 17 + 5, 4 * 256 + 3]) {
                for (what, x) in edge_inputs(n, block) {
                    if !same_as_scalar(isa, &x, block, what) {
                        crate::kernels::detect::report_skipped(
                            isa,
                            "blockwise simd_matches_scalar",
                        );
                        return;
                    }
                }
            }
        }
    }
}

#[test]
fn simd_reports_the_same_first_non_finite_index() {
    for (isa, lanes) in SIMD {
        for &block in &BLOCKS {
            let n = 3 * block.max(2 * lanes) + 1;
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
                for pos in [0, 1, lanes - 1, lanes, block, n / 2, n - 1] {
                    let mut x = pseudo_random(n, pos as u64, 2.0);
                    x[pos] = bad;
                    if pos + 3 < n {
                        x[pos + 3] = f32::NAN;
                    }
                    if !same_as_scalar(isa, &x, block, "non-finite") {
                        crate::kernels::detect::report_skipped(isa, "blockwise non_finite");
                        return;
                    }
                    let mut q = vec![0i8; n];
                    let mut s = vec![f16::ZERO; n.div_ceil(block)];
                    assert_eq!(
                        quantize_i8_blocks_on(isa, &x, block, &mut q, &mut s)
                            .map_err(|e| e.non_finite_index()),
                        Err(Some(pos))
                    );
                }
            }
        }
    }
}

#[test]
fn simd_scales_match_half_from_f32_over_the_f32_range() {
    // Block 1: every value is its own block, so each gives one d = |x|/127 -> f16.
    let mut x: Vec<f32> = (0..0x7f80_0000u32)
        .step_by(1021)
        .map(f32::from_bits)
        .collect();
    // f16 rounding ties: d exactly halfway between neighbouring f16 values.
    for h in 0..0x7bffu16 {
        let mid = (f16::from_bits(h).to_f32() + f16::from_bits(h + 1).to_f32()) / 2.0;
        x.push(mid * 127.0);
        x.push(-mid * 127.0);
    }
    for (isa, _) in SIMD {
        if !same_as_scalar(isa, &x, 1, "scale sweep") {
            crate::kernels::detect::report_skipped(isa, "blockwise scale sweep");
        }
    }
}

#[test]
fn simd_dequantize_matches_scalar_for_any_codes_and_scales() {
    let scales_pool = [
        0.0f32,
        -0.0,
        1.0,
        -3.5,
        6e-8,
        1e-5,
        65504.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    for (isa, lanes) in SIMD {
        for &block in &BLOCKS {
            for n in (0..=2 * lanes + 1).chain([block * 19 + 3]) {
                let q: Vec<i8> = (0..n).map(|i| (i as i32 * 37 - 128) as i8).collect();
                let s: Vec<f16> = (0..n.div_ceil(block))
                    .map(|b| f16::from_f32(scales_pool[b % scales_pool.len()]))
                    .chain(std::iter::once(f16::NAN))
                    .take(n.div_ceil(block))
                    .collect();
                let (mut o0, mut o1) = (vec![0f32; n], vec![1f32; n]);
                dequantize_i8_blocks_on(Isa::Scalar, &q, &s, block, &mut o0)
                    .unwrap()
                    .unwrap();
                if dequantize_i8_blocks_on(isa, &q, &s, block, &mut o1)
                    .unwrap()
                    .is_none()
                {
                    crate::kernels::detect::report_skipped(isa, "blockwise dequantize");
                    break;
                }
                for (a, b) in o0.iter().zip(&o1) {
                    assert!(
                        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                        "{isa} block {block}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn to_vec_matches_in_place_dequantization() {
    for n in [0usize, 5, 1 << 21] {
        let x = pseudo_random(n, n as u64, 4.0);
        let (q, s) = quantize(&x, 64).unwrap();
        let mut out = vec![0f32; n];
        dequantize_i8_blocks(&q, &s, 64, &mut out).unwrap();
        assert_eq!(dequantize_i8_blocks_to_vec(&q, &s, 64), Ok(out));
    }
}

#[test]
fn u4_lut_simd_matches_scalar() {
    let nf4_like: [f32; 16] = std::array::from_fn(|k| (k as f32 - 7.0) / 8.0 + 0.013 * k as f32);
    let int4: [f32; 16] = std::array::from_fn(|k| k as f32 - 8.0);
    let mut wild = int4;
    wild[3] = f32::NAN;
    wild[12] = f32::INFINITY;
    wild[15] = -0.0;
    let scales_pool = [0.37f32, -2.5, 0.0, 1e-40, 3.0e38, f32::NAN, 1.0];
    for (isa, lanes) in SIMD {
        for group in [1usize, 2, 3, 7, 8, 16, 31, 32, 33, 64, 65, 256] {
            for n in (0..=4 * lanes + 1).chain([group * 9 + 1, 1000]) {
                let packed: Vec<u8> = (0..n.div_ceil(2)).map(|i| (i * 151 + n) as u8).collect();
                let scales: Vec<f32> = (0..n.div_ceil(group))
                    .map(|g| scales_pool[(g + n) % scales_pool.len()])
                    .collect();
                for lut in [&nf4_like, &int4, &wild] {
                    let (mut o0, mut o1) = (vec![0f32; n], vec![1f32; n]);
                    dequantize_u4_lut_on(Isa::Scalar, &packed, lut, &scales, group, &mut o0)
                        .unwrap()
                        .unwrap();
                    if dequantize_u4_lut_on(isa, &packed, lut, &scales, group, &mut o1)
                        .unwrap()
                        .is_none()
                    {
                        crate::kernels::detect::report_skipped(isa, "blockwise u4_lut");
                        return;
                    }
                    for (i, (a, b)) in o0.iter().zip(&o1).enumerate() {
                        assert!(
                            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                            "{isa} group {group} n {n} i {i}: {a} vs {b}"
                        );
                    }
                    // The definition itself, written out once more.
                    for (i, &a) in o0.iter().enumerate() {
                        let code = (packed[i / 2] >> (4 * (i % 2))) & 15;
                        let want = lut[code as usize] * scales[i / group];
                        assert!(a.to_bits() == want.to_bits() || (a.is_nan() && want.is_nan()));
                    }
                }
            }
        }
    }
}

#[test]
fn u4_lut_to_vec_matches() {
    let lut: [f32; 16] = std::array::from_fn(|k| k as f32 * 0.25);
    let n: usize = (5 << 20) + 3;
    let packed: Vec<u8> = (0..n.div_ceil(2)).map(|i| (i * 7) as u8).collect();
    let scales: Vec<f32> = (0..n.div_ceil(64)).map(|g| g as f32).collect();
    let mut out = vec![0f32; n];
    dequantize_u4_lut(&packed, &lut, &scales, 64, &mut out).unwrap();
    assert_eq!(
        dequantize_u4_lut_to_vec(&packed, &lut, &scales, 64, n),
        Ok(out)
    );
}

#[test]
fn affine_simd_matches_scalar() {
    let pool = [
        (0.0f32, 0.01f32),
        (-1.5, 0.013),
        (-f32::MAX, f32::MAX / 100.0), // clamps at the top
        (f32::MAX, -f32::MAX / 100.0),
        (1e-40, 1e-42), // subnormal results
        (-0.0, 0.0),
        (f32::NAN, 1.0),
        (0.5, f32::INFINITY),
    ];
    for (isa, lanes) in SIMD {
        for bits in [4u8, 8] {
            for group in [1usize, 2, 3, 7, 8, 16, 31, 32, 33, 64, 65, 256] {
                for n in (0..=4 * lanes + 1).chain([group * 9 + 1, 1000]) {
                    let len = if bits == 8 { n } else { n.div_ceil(2) };
                    let codes: Vec<u8> = (0..len).map(|i| (i * 151 + n) as u8).collect();
                    let groups = n.div_ceil(group);
                    let zp: Vec<f32> = (0..groups).map(|g| pool[(g + n) % pool.len()].0).collect();
                    let sc: Vec<f32> = (0..groups).map(|g| pool[(g + n) % pool.len()].1).collect();
                    let (mut o0, mut o1) = (vec![0f32; n], vec![1f32; n]);
                    dequantize_affine_on(Isa::Scalar, &codes, bits, &zp, &sc, group, &mut o0)
                        .unwrap()
                        .unwrap();
                    if dequantize_affine_on(isa, &codes, bits, &zp, &sc, group, &mut o1)
                        .unwrap()
                        .is_none()
                    {
                        crate::kernels::detect::report_skipped(isa, "blockwise affine");
                        return;
                    }
                    for (i, (a, b)) in o0.iter().zip(&o1).enumerate() {
                        assert!(
                            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                            "{isa} bits {bits} group {group} n {n} i {i}: {a} vs {b}"
                        );
                        let q = if bits == 8 {
                            codes[i]
                        } else {
                            (codes[i / 2] >> (4 * (i % 2))) & 15
                        };
                        let (m, s) = (zp[i / group], sc[i / group]);
                        let want = (f64::from(m) + f64::from(q) * f64::from(s))
                            .clamp(-f64::from(f32::MAX), f64::from(f32::MAX))
                            as f32;
                        assert!(a.to_bits() == want.to_bits() || (a.is_nan() && want.is_nan()));
                    }
                }
            }
        }
    }
}

#[test]
fn dispatch_uses_the_best_kernel() {
    let isa = kernel_isa();
    eprintln!("blockwise kernels run on {isa}");
    let x = pseudo_random(1000, 5, 1.0);
    let mut q = vec![0i8; 1000];
    let mut s = vec![f16::ZERO; 16];
    assert_eq!(
        quantize_i8_blocks_on(isa, &x, 64, &mut q, &mut s),
        Ok(Some(()))
    );
    assert_eq!(quantize(&x, 64), Ok((q, s)));
}

/// The message of the error `r` holds (panics if `r` is `Ok`: a test failure).
fn message<T: std::fmt::Debug>(r: Result<T, KernelError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn int8_length_mismatches_are_errors_not_panics() {
    let x = [1.0f32; 5];
    let (mut q, mut s) = ([0i8; 5], [f16::ZERO; 3]);
    assert_eq!(
        message(quantize_i8_blocks(&x, 2, &mut q, &mut s[..2])),
        "quantize_i8_blocks: scales has 2 elements, need one per block of 2 over 5 \
         values: ⌈5 / 2⌉ = 3"
    );
    assert_eq!(
        message(quantize_i8_blocks(&x, 2, &mut q[..4], &mut s)),
        "quantize_i8_blocks: q has 4 elements, need x.len() = 5"
    );
    assert_eq!(
        message(quantize_i8_blocks(&x, 0, &mut q, &mut s)),
        "quantize_i8_blocks: invalid block: must be at least 1, found 0"
    );
    assert_eq!(
        message(quantize_i8_blocks_on(
            Isa::Scalar,
            &x,
            2,
            &mut q,
            &mut s[..1]
        )),
        "quantize_i8_blocks_on: scales has 1 elements, need one per block of 2 over 5 \
         values: ⌈5 / 2⌉ = 3"
    );
    // Nothing was written by the refused calls.
    assert_eq!(q, [0; 5]);
    let mut out = [0f32; 4];
    assert_eq!(
        message(dequantize_i8_blocks(&q, &s, 2, &mut out)),
        "dequantize_i8_blocks: out has 4 elements, need q.len() = 5"
    );
    assert_eq!(
        message(dequantize_i8_blocks(&q, &s[..2], 2, &mut [0f32; 5])),
        "dequantize_i8_blocks: scales has 2 elements, need one per block of 2 over 5 \
         values: ⌈5 / 2⌉ = 3"
    );
    assert_eq!(
        message(dequantize_i8_blocks_on(Isa::Avx2, &q, &s, 0, &mut out)),
        "dequantize_i8_blocks_on: invalid block: must be at least 1, found 0"
    );
    assert_eq!(
        message(dequantize_i8_blocks_to_vec(&q, &s, 3)),
        "dequantize_i8_blocks_to_vec: scales has 3 elements, need one per block of 3 \
         over 5 values: ⌈5 / 3⌉ = 2"
    );
    assert!(dequantize_i8_blocks_to_vec(&q, &s, 0).is_err());
}

#[test]
fn u4_length_mismatches_are_errors_not_panics() {
    let lut = [1f32; 16];
    let mut out = [0f32; 5];
    assert_eq!(
        message(dequantize_u4_lut(&[0; 2], &lut, &[1.0; 3], 2, &mut out)),
        "dequantize_u4_lut: packed has 2 elements, need 5 codes two per byte: ⌈5 / 2⌉ = 3"
    );
    assert_eq!(
        message(dequantize_u4_lut(&[0; 3], &lut, &[1.0; 2], 2, &mut out)),
        "dequantize_u4_lut: scales has 2 elements, need one per group of 2 over 5 \
         values: ⌈5 / 2⌉ = 3"
    );
    assert_eq!(
        message(dequantize_u4_lut(&[0; 3], &lut, &[1.0; 3], 0, &mut out)),
        "dequantize_u4_lut: invalid group: must be at least 1, found 0"
    );
    assert!(dequantize_u4_lut_on(Isa::Scalar, &[0; 4], &lut, &[1.0; 3], 2, &mut out).is_err());
    assert_eq!(out, [0.0; 5]);
    // A count no buffer can back is refused before anything is allocated.
    assert_eq!(
        message(dequantize_u4_lut_to_vec(
            &[0; 3],
            &lut,
            &[1.0; 3],
            2,
            usize::MAX
        )),
        format!(
            "dequantize_u4_lut_to_vec: packed has 3 elements, need {n} codes two per \
             byte: ⌈{n} / 2⌉ = {}",
            usize::MAX / 2 + 1,
            n = usize::MAX
        )
    );
}

#[test]
fn affine_argument_errors_are_errors_not_panics() {
    let mut out = [0f32; 5];
    assert_eq!(
        message(dequantize_affine(&[0; 5], 3, &[0.0], &[1.0], 8, &mut out)),
        "dequantize_affine: invalid bits: must be 4 or 8, found 3"
    );
    assert_eq!(
        message(dequantize_affine(&[0; 5], 8, &[0.0], &[1.0], 0, &mut out)),
        "dequantize_affine: invalid group: must be at least 1, found 0"
    );
    assert_eq!(
        message(dequantize_affine(&[0; 5], 4, &[0.0], &[1.0], 8, &mut out)),
        "dequantize_affine: codes has 5 elements, need 5 4-bit codes two per byte: \
         ⌈5 / 2⌉ = 3"
    );
    assert_eq!(
        message(dequantize_affine(&[0; 4], 8, &[0.0], &[1.0], 8, &mut out)),
        "dequantize_affine: codes has 4 elements, need one byte per 8-bit code = 5"
    );
    assert_eq!(
        message(dequantize_affine(
            &[0; 5],
            8,
            &[0.0; 2],
            &[1.0],
            8,
            &mut out
        )),
        "dequantize_affine: zero_points has 2 elements, need one per group of 8 over 5 \
         values: ⌈5 / 8⌉ = 1"
    );
    assert_eq!(
        message(dequantize_affine_on(
            Isa::Scalar,
            &[0; 5],
            8,
            &[0.0],
            &[],
            8,
            &mut out
        )),
        "dequantize_affine_on: scales has 0 elements, need one per group of 8 over 5 \
         values: ⌈5 / 8⌉ = 1"
    );
    assert_eq!(out, [0.0; 5]);
    assert!(dequantize_affine_to_vec(&[0; 5], 8, &[0.0], &[1.0], 8, usize::MAX).is_err());
    assert_eq!(
        dequantize_affine_to_vec(&[2], 8, &[1.0], &[0.5], 8, 1),
        Ok(vec![2.0])
    );
}
