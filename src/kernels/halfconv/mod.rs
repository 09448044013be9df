//! f32 ⇄ IEEE binary16 (f16) conversion to and from little-endian bytes, with a
//! non-finite check fused in: the activation codec's hot loop.
//!
//! Safe entry points check slice lengths (a [`KernelError`] on a mismatch, never a panic)
//! and run the kernel for this process's ISA
//! ([`kernel_isa`], detected once and cached): F16C + AVX2 (`vcvtps2ph` / `vcvtph2ps`) on
//! x86_64, `fcvtn` / `fcvtl` on aarch64, otherwise the scalar twin in `scalar.rs`, which is
//! the definition of correct and is compared bit for bit with every SIMD version in the
//! tests. The SIMD conversions are one algorithm over the crate's vector trait
//! (`generic.rs`), instantiated for AVX2 (8 lanes), AVX-512 (16 lanes, reachable with
//! [`f32_to_f16_le_on`] / [`f16_le_to_f32_on`]) and NEON (4 lanes).
//!
//! Rounding is to nearest even, exactly `half::f16::from_f32`. Reading bytes directly
//! (rather than `&[f16]`) lets the codec convert straight between a tensor's f32 storage
//! and an unaligned wire buffer with no intermediate copy.
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

#[cfg(target_arch = "aarch64")]
use super::detect::Neon;
use super::detect::{active_isa, Isa};
#[cfg(target_arch = "x86_64")]
use super::detect::{Avx2, Avx512Vnni};
use super::error::{checked_mul, expect_len, KernelError};

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod generic;
mod scalar;

/// AVX2 + F16C: 8 lanes.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::__m256;

    use crate::kernels::detect::Avx2;

    // An `Avx2` token proves AVX2 + FMA + F16C, which cover every `__m256` operation.
    super::generic::halfconv_kernels!(Avx2, __m256, "avx2,fma,f16c");
}

/// AVX-512 F/BW: 16 lanes.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use core::arch::x86_64::__m512;

    use crate::kernels::detect::Avx512Vnni;

    // An `Avx512Vnni` token proves AVX-512 F/BW/VL, which cover every `__m512` operation.
    super::generic::halfconv_kernels!(Avx512Vnni, __m512, "avx512f,avx512bw,avx512vl");
}

/// NEON: 4 lanes.
#[cfg(target_arch = "aarch64")]
mod neon {
    use core::arch::aarch64::float32x4_t;

    use crate::kernels::detect::Neon;

    // A `Neon` token proves Advanced SIMD, which covers every `float32x4_t` operation.
    super::generic::halfconv_kernels!(Neon, float32x4_t, "neon");
}

/// Converts `x` to f16 (round to nearest even) and writes each as 2 little-endian bytes.
///
/// Length: `out.len() == 2 * x.len()`.
///
/// # Errors
/// [`KernelError::Length`] when `out` has the wrong length (nothing written);
/// [`KernelError::NonFinite`] with the index of the first element whose f16 is not finite:
/// a NaN/±Inf input, or a finite one that rounds beyond ±65504. `out` is then unspecified.
///
/// ```
/// use candle_compress::kernels::halfconv::{f16_le_to_f32, f32_to_f16_le};
/// let x = [1.0f32, -2.5, 65504.0];
/// let mut bytes = [0u8; 6];
/// f32_to_f16_le(&x, &mut bytes).unwrap();
/// assert_eq!(bytes[..2], [0x00, 0x3c]); // 1.0 = 0x3c00
/// let mut back = [0f32; 3];
/// f16_le_to_f32(&bytes, &mut back).unwrap();
/// assert_eq!(back, x);
/// let e = f32_to_f16_le(&[0.0, 1e6], &mut bytes[..4]).unwrap_err();
/// assert_eq!(e.non_finite_index(), Some(1));
/// assert!(f32_to_f16_le(&x, &mut bytes[..5]).is_err());
/// ```
pub fn f32_to_f16_le(x: &[f32], out: &mut [u8]) -> Result<(), KernelError> {
    const OP: &str = "f32_to_f16_le";
    check_lengths(OP, x.len(), ("out", out.len()))?;
    f32_to_f16_unchecked_on(kernel_isa(), x, out)
        .unwrap_or_else(|| scalar::f32_to_f16_le(x, out))
        .map_err(|index| not_f16(OP, index))
}

/// Reads little-endian f16 bytes into f32 (exact).
///
/// Length: `bytes.len() == 2 * out.len()`.
///
/// # Errors
/// [`KernelError::Length`] when `bytes` has the wrong length (nothing written);
/// [`KernelError::NonFinite`] with the index of the first NaN/±Inf f16 (exponent field all
/// ones); `out` is then unspecified.
pub fn f16_le_to_f32(bytes: &[u8], out: &mut [f32]) -> Result<(), KernelError> {
    const OP: &str = "f16_le_to_f32";
    check_lengths(OP, out.len(), ("bytes", bytes.len()))?;
    f16_to_f32_unchecked_on(kernel_isa(), bytes, out)
        .unwrap_or_else(|| scalar::f16_le_to_f32(bytes, out))
        .map_err(|index| non_finite_f16(OP, index))
}

/// The instruction set these kernels run on in this process: [`Isa::Avx2`] on any x86_64
/// CPU with AVX2 + F16C (AVX-512 ones included: the conversion is memory-bound at 8 lanes),
/// [`Isa::Neon`] on aarch64, otherwise [`Isa::Scalar`].
pub fn kernel_isa() -> Isa {
    match active_isa() {
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni | Isa::Amx => Isa::Avx2,
        Isa::Neon => Isa::Neon,
        Isa::Scalar => Isa::Scalar,
    }
}

/// [`f32_to_f16_le`] on a chosen instruction set, for tests and benchmarks. `Ok(None)`
/// (nothing written) when this CPU lacks `isa` or there is no kernel for it.
///
/// # Errors
/// As [`f32_to_f16_le`]; the length error whether or not the CPU has `isa`.
pub fn f32_to_f16_le_on(isa: Isa, x: &[f32], out: &mut [u8]) -> Result<Option<()>, KernelError> {
    const OP: &str = "f32_to_f16_le_on";
    check_lengths(OP, x.len(), ("out", out.len()))?;
    f32_to_f16_unchecked_on(isa, x, out)
        .transpose()
        .map_err(|index| not_f16(OP, index))
}

/// [`f16_le_to_f32`] on a chosen instruction set; `Ok(None)` (nothing written) when this
/// CPU lacks `isa` or there is no kernel for it.
///
/// # Errors
/// As [`f16_le_to_f32`]; the length error whether or not the CPU has `isa`.
pub fn f16_le_to_f32_on(
    isa: Isa,
    bytes: &[u8],
    out: &mut [f32],
) -> Result<Option<()>, KernelError> {
    const OP: &str = "f16_le_to_f32_on";
    check_lengths(OP, out.len(), ("bytes", bytes.len()))?;
    f16_to_f32_unchecked_on(isa, bytes, out)
        .transpose()
        .map_err(|index| non_finite_f16(OP, index))
}

fn not_f16(op: &'static str, index: usize) -> KernelError {
    KernelError::NonFinite {
        op,
        what: "f16 (a NaN/±Inf input or one beyond ±65504)",
        index,
    }
}

fn non_finite_f16(op: &'static str, index: usize) -> KernelError {
    KernelError::NonFinite {
        op,
        what: "f16 value",
        index,
    }
}

fn f32_to_f16_unchecked_on(isa: Isa, x: &[f32], out: &mut [u8]) -> Option<Result<(), usize>> {
    match isa {
        Isa::Scalar => Some(scalar::f32_to_f16_le(x, out)),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Avx2::detect().map(|cpu| avx2::f32_to_f16_le(cpu, x, out)),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => Avx512Vnni::detect().map(|cpu| avx512::f32_to_f16_le(cpu, x, out)),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Neon::detect().map(|cpu| neon::f32_to_f16_le(cpu, x, out)),
        _ => None,
    }
}

fn f16_to_f32_unchecked_on(isa: Isa, bytes: &[u8], out: &mut [f32]) -> Option<Result<(), usize>> {
    match isa {
        Isa::Scalar => Some(scalar::f16_le_to_f32(bytes, out)),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Avx2::detect().map(|cpu| avx2::f16_le_to_f32(cpu, bytes, out)),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => Avx512Vnni::detect().map(|cpu| avx512::f16_le_to_f32(cpu, bytes, out)),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Neon::detect().map(|cpu| neon::f16_le_to_f32(cpu, bytes, out)),
        _ => None,
    }
}

/// Two bytes per value: the byte slice `(name, len)` against `values` f32s.
fn check_lengths(
    op: &'static str,
    values: usize,
    (name, bytes): (&'static str, usize),
) -> Result<(), KernelError> {
    let need = checked_mul(op, "2 bytes × values", 2, values)?;
    expect_len(op, name, bytes, need, || {
        format!("2 bytes per value × {values}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::detect::report_skipped;
    use half::f16;

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// Values that exercise rounding: random bit patterns in the f16 range (normals,
    /// subnormals, ties), exact halfway cases, the range limits and zeros.
    fn test_values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        let special = [
            0.0f32,
            -0.0,
            65504.0,
            -65504.0,
            65519.99,
            6.0e-8,
            -5.96e-8,
            2.98e-8,
            1.0 + 1.0 / 2048.0, // exact tie between two f16 values
            1.0 + 3.0 / 2048.0,
        ];
        (0..n)
            .map(|i| {
                let r = xorshift(&mut s);
                match r % 4 {
                    0 => special[(r >> 8) as usize % special.len()],
                    1 => f32::from_bits(((r >> 32) as u32 & 0x8fff_ffff) | 0x3000_0000),
                    _ => {
                        ((r >> 11) as f32 / (1u64 << 53) as f32 - 0.5)
                            * 2.0f32.powi((i % 30) as i32 - 15)
                    }
                }
            })
            .collect()
    }

    fn reference_encode(x: &[f32]) -> Vec<u8> {
        x.iter()
            .flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes())
            .collect()
    }

    #[test]
    fn scalar_matches_half() {
        let x = test_values(4096, 7);
        let mut out = vec![0u8; 2 * x.len()];
        scalar::f32_to_f16_le(&x, &mut out).unwrap();
        assert_eq!(out, reference_encode(&x));
        let mut back = vec![0f32; x.len()];
        scalar::f16_le_to_f32(&out, &mut back).unwrap();
        for (b, h) in back.iter().zip(out.chunks_exact(2)) {
            assert_eq!(
                b.to_bits(),
                f16::from_le_bytes([h[0], h[1]]).to_f32().to_bits()
            );
        }
    }

    /// The SIMD instruction sets this CPU runs the conversions on; prints `SKIPPED` for
    /// the others.
    fn simd_isas(test: &str) -> Vec<Isa> {
        [Isa::Avx2, Isa::Avx512Vnni, Isa::Neon]
            .into_iter()
            .filter(|&isa| {
                let ok = f32_to_f16_le_on(isa, &[], &mut []) == Ok(Some(()));
                if !ok {
                    report_skipped(isa, test);
                }
                ok
            })
            .collect()
    }

    /// Both directions of `x` on `isa` against the scalar twin: results, bytes, bits.
    fn assert_same_as_scalar(isa: Isa, x: &[f32], boff: usize, what: &str) {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let len = x.len();
        let mut want = vec![0u8; 2 * len + boff];
        let mut got = vec![0xaau8; 2 * len + boff];
        let rs = scalar::f32_to_f16_le(x, &mut want[boff..]);
        let rv = f32_to_f16_le_on(isa, x, &mut got[boff..]);
        let rv = rv.map(|done| done.expect("detected"));
        let rv = rv.map_err(|e| e.non_finite_index().unwrap());
        assert_eq!(rs, rv, "{isa} {what}");
        if rs.is_ok() {
            assert_eq!(want[boff..], got[boff..], "{isa} {what}");
        }
        let bytes = &want[boff..];
        let mut back_s = vec![0f32; len];
        let mut back_v = vec![1f32; len];
        let bs = scalar::f16_le_to_f32(bytes, &mut back_s);
        let bv = f16_le_to_f32_on(isa, bytes, &mut back_v);
        let bv = bv.map(|done| done.expect("detected"));
        assert_eq!(
            bs,
            bv.map_err(|e| e.non_finite_index().unwrap()),
            "{isa} {what}"
        );
        if bs.is_ok() {
            assert_eq!(bits(&back_s), bits(&back_v), "{isa} {what}");
        }
    }

    #[test]
    fn simd_matches_scalar_at_every_length_and_offset() {
        let isas = simd_isas("halfconv::simd_matches_scalar_at_every_length_and_offset");
        let all = test_values(3 * 64 + 8, 11);
        // Element offsets shift the f32 source's alignment; `boff` makes the byte buffer odd.
        for &isa in &isas {
            for offset in 0..3 {
                for boff in 0..2 {
                    for len in 0..=(3 * 64 + 1) {
                        let x = &all[offset..offset + len];
                        assert_same_as_scalar(isa, x, boff, &format!("len {len} off {offset}"));
                    }
                }
            }
        }
    }

    /// Edge values on every ISA: rounding ties, the f16 range limits (65504 stays, 65520
    /// overflows), subnormals, signed zeros, and NaN/±Inf in both directions (the decode
    /// side sees every f16 exponent-all-ones pattern kind too).
    #[test]
    fn simd_matches_scalar_on_edge_values() {
        let isas = simd_isas("halfconv::simd_matches_scalar_on_edge_values");
        let edges = [
            0.0f32,
            -0.0,
            65504.0,
            -65504.0,
            65519.996,
            -65519.996,
            5.960_464_5e-8, // smallest f16 subnormal
            2.980_232_2e-8, // half of it: a tie that rounds to even (0)
            2.980_232_4e-8, // just above: rounds up
            6.097_555e-5,   // largest f16 subnormal
            6.103_515_6e-5, // smallest f16 normal
            1.0 + 1.0 / 2048.0,
            -(1.0 + 3.0 / 2048.0),
            2048.0 + 1.0, // tie at ulp 2
            1e-30,
            -1e-30,
        ];
        let bad = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            65520.0,
            -65520.0,
            1e30,
        ];
        for &isa in &isas {
            for len in [0usize, 1, 7, 8, 15, 16, 17, 33, 64, 65, 129] {
                let x: Vec<f32> = (0..len).map(|i| edges[i % edges.len()]).collect();
                assert_same_as_scalar(isa, &x, 0, &format!("edges len {len}"));
                for (k, &b) in bad.iter().enumerate() {
                    if len == 0 {
                        continue;
                    }
                    let mut x = x.clone();
                    let at = (k * 7 + len / 2) % len;
                    x[at] = b;
                    assert_same_as_scalar(isa, &x, 1, &format!("{b} at {at} of {len}"));
                }
            }
            // Every finite f16 bit pattern decodes like the scalar twin (the non-finite
            // ones are errors, tested above and below).
            let patterns: Vec<u16> = (0..=u16::MAX).collect();
            for chunk in patterns.chunks(4096) {
                let finite: Vec<u8> = chunk
                    .iter()
                    .filter(|&&h| h & 0x7c00 != 0x7c00)
                    .flat_map(|h| h.to_le_bytes())
                    .collect();
                let n = finite.len() / 2;
                let (mut s, mut v) = (vec![0f32; n], vec![1f32; n]);
                scalar::f16_le_to_f32(&finite, &mut s).unwrap();
                f16_le_to_f32_on(isa, &finite, &mut v).unwrap().unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&s), bits(&v), "{isa}");
            }
        }
    }

    #[test]
    fn non_finite_index_is_the_first_at_every_position() {
        let mut isas = simd_isas("halfconv::non_finite_index_is_the_first_at_every_position");
        isas.insert(0, Isa::Scalar);
        let n = 2 * 64 + 5;
        for bad_at in 0..n {
            for bad in [f32::NAN, f32::INFINITY, -f32::INFINITY, 65520.0, -1e30] {
                let mut x = test_values(n, bad_at as u64 + 3);
                x[bad_at] = bad;
                if bad_at + 7 < n {
                    x[bad_at + 7] = f32::NAN; // a later one must not be reported
                }
                for &isa in &isas {
                    let mut out = vec![0u8; 2 * n];
                    let r = f32_to_f16_le_on(isa, &x, &mut out);
                    assert_eq!(
                        r.map_err(|e| e.non_finite_index()),
                        Err(Some(bad_at)),
                        "{isa} {bad}"
                    );
                }
                let mut bytes = reference_encode(&test_values(n, 5));
                let inf = if bad.is_nan() { 0x7e00u16 } else { 0xfc00 };
                bytes[2 * bad_at..2 * bad_at + 2].copy_from_slice(&inf.to_le_bytes());
                for &isa in &isas {
                    let mut out = vec![0f32; n];
                    let r = f16_le_to_f32_on(isa, &bytes, &mut out);
                    assert_eq!(
                        r.map_err(|e| e.non_finite_index()),
                        Err(Some(bad_at)),
                        "{isa}"
                    );
                }
            }
        }
    }

    #[test]
    fn length_mismatches_are_errors_not_panics() {
        let mut bytes = [0xaau8; 3];
        assert_eq!(
            f32_to_f16_le(&[1.0, 2.0], &mut bytes)
                .unwrap_err()
                .to_string(),
            "f32_to_f16_le: out has 3 elements, need 2 bytes per value × 2 = 4"
        );
        assert_eq!(bytes, [0xaa; 3]);
        assert_eq!(
            f32_to_f16_le_on(Isa::Scalar, &[1.0], &mut bytes)
                .unwrap_err()
                .to_string(),
            "f32_to_f16_le_on: out has 3 elements, need 2 bytes per value × 1 = 2"
        );
        let mut out = [7f32; 2];
        assert_eq!(
            f16_le_to_f32(&bytes, &mut out).unwrap_err().to_string(),
            "f16_le_to_f32: bytes has 3 elements, need 2 bytes per value × 2 = 4"
        );
        assert_eq!(
            f16_le_to_f32_on(Isa::Avx2, &bytes[..1], &mut out)
                .unwrap_err()
                .to_string(),
            "f16_le_to_f32_on: bytes has 1 elements, need 2 bytes per value × 2 = 4"
        );
        assert_eq!(out, [7.0; 2]);
        assert_eq!(
            f32_to_f16_le(&[1.0, 1e6], &mut [0u8; 4])
                .unwrap_err()
                .to_string(),
            "f32_to_f16_le: non-finite f16 (a NaN/±Inf input or one beyond ±65504) at flat \
             index 1"
        );
    }

    #[test]
    fn kernel_isa_is_available() {
        let x = [1.0f32; 40];
        let mut out = [0u8; 80];
        assert_eq!(f32_to_f16_le_on(kernel_isa(), &x, &mut out), Ok(Some(())));
    }
}
