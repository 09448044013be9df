//! Probes of one core's arithmetic peaks: how many int8 multiply-adds per second the
//! instruction our W8A8 kernels use can retire, and how many f32 FMAs (what candle's f32
//! matmul is built on). Their quotient bounds the speed-up any int8 kernel can have over
//! an f32 one on this machine, so the benches print it beside the measured ratios.
//!
//! Each probe runs independent chains of the instruction on registers only (no memory
//! traffic) for a fixed count and times them: a few tens of milliseconds. Operations count
//! as 2 per multiply-add (GOPS, GFLOPS), as for matmuls. On AMX CPUs the int8 probe of
//! [`Isa::Amx`] runs `tdpbssd` on 6 independent 16 × 16 i32 accumulator tiles.

#[cfg(target_arch = "x86_64")]
use std::time::Instant;

use super::detect::{features, Isa};

/// Peak rates of the calling thread's core, measured by [`measure`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peaks {
    /// The instruction set of the int8 probe (the one the W8A8 kernels use here).
    pub isa: Isa,
    /// int8 × int8 → i32 multiply-adds, 2 operations each, per second / 1e9 (0 when the
    /// probe has no SIMD int8 instruction for this CPU: scalar and NEON kernels).
    pub int8_gops: f64,
    /// f32 fused multiply-adds, 2 operations each, per second / 1e9 (0 when the CPU has
    /// no SIMD FMA the probe knows).
    pub f32_gflops: f64,
}

impl Peaks {
    /// `int8_gops / f32_gflops`: the largest time ratio an int8 matmul can reach over an
    /// f32 matmul running at the f32 peak (0 when either rate is unknown).
    pub fn ratio(&self) -> f64 {
        if self.f32_gflops > 0.0 && self.int8_gops > 0.0 {
            self.int8_gops / self.f32_gflops
        } else {
            0.0
        }
    }
}

/// Iterations of each probe loop (each iteration retires 8–24 instructions).
const ITERS: usize = 2_000_000;

/// Best of three runs of `probe`.
fn best(probe: &dyn Fn() -> f64) -> f64 {
    (0..3).map(|_| probe()).fold(0f64, f64::max)
}

/// The int8 multiply-add peak (GOPS) of `isa`'s W8A8 instruction mix on the calling
/// thread's core, or `None` when this CPU lacks `isa` or the probe has no code for it
/// (scalar, NEON).
pub fn int8_peak_gops(isa: Isa) -> Option<f64> {
    let f = features();
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 VNNI was detected.
        Isa::Avx512Vnni if f.avx512_vnni => Some(best(&|| unsafe { x86::vnni_zmm(ITERS) })),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-VNNI was detected.
        Isa::AvxVnni if f.avx_vnni => Some(best(&|| unsafe { x86::vnni_ymm_vex(ITERS) })),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 was detected.
        Isa::Avx2 if f.avx2 => Some(best(&|| unsafe { x86::maddubs_sign(ITERS) })),
        // `tdpbssd` has ~16× the work of one `vpdpbusd` round: fewer rounds.
        Isa::Amx if f.amx => Some(best(&|| {
            super::gemm::amx_peak_gops(ITERS / 8).unwrap_or(0.0)
        })),
        _ => None,
    }
}

/// The f32 FMA peak (GFLOPS) of the calling thread's core: the faster of ymm and (with
/// AVX-512) zmm chains; `None` without AVX2 + FMA.
pub fn f32_peak_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let f = features();
        if !f.avx2 {
            return None;
        }
        // SAFETY: AVX2 + FMA were detected (`avx2` stands for AVX2 + FMA + F16C).
        let ymm = best(&|| unsafe { x86::fma_ymm(ITERS) });
        if !f.avx512_vnni {
            return Some(ymm);
        }
        // SAFETY: AVX-512 F was detected.
        Some(ymm.max(best(&|| unsafe { x86::fma_zmm(ITERS) })))
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Measures both peaks for the best ISA of this CPU (~0.1 s; on AMX CPUs the int8 probe
/// is the `tdpbssd` one: [`int8_peak_gops`] with [`Isa::Avx512Vnni`] gives the VNNI peak).
pub fn measure() -> Peaks {
    let isa = features().best_isa();
    Peaks {
        isa,
        int8_gops: int8_peak_gops(isa).unwrap_or(0.0),
        f32_gflops: f32_peak_gflops().unwrap_or(0.0),
    }
}

/// Seconds to GOPS for `ops` operations.
#[cfg(target_arch = "x86_64")]
fn gops(ops: usize, t: Instant) -> f64 {
    ops as f64 / t.elapsed().as_secs_f64() / 1e9
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::hint::black_box;
    use std::time::Instant;

    use super::gops;

    /// 24 chains of `vpdpbusd zmm` (64 multiply-adds each).
    ///
    /// # Safety
    /// AVX-512 F and VNNI must be available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn vnni_zmm(iters: usize) -> f64 {
        let (a, b) = (_mm512_set1_epi8(1), _mm512_set1_epi8(black_box(2)));
        let mut acc = [_mm512_setzero_si512(); 24];
        let t = Instant::now();
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        black_box(&acc);
        gops(iters * 24 * 64 * 2, t)
    }

    /// 12 chains of VEX `vpdpbusd ymm` (32 multiply-adds each).
    ///
    /// # Safety
    /// AVX-VNNI must be available.
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn vnni_ymm_vex(iters: usize) -> f64 {
        let (a, b) = (_mm256_set1_epi8(1), _mm256_set1_epi8(black_box(2)));
        let mut acc = [_mm256_setzero_si256(); 12];
        let t = Instant::now();
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_dpbusd_avx_epi32(*v, a, b);
            }
        }
        black_box(&acc);
        gops(iters * 12 * 32 * 2, t)
    }

    /// The AVX2 kernel's step in its 4-row × 2-vector shape: per row `vpabsb`, per pair
    /// `vpsignb`, `vpmaddubsw`, `vpmaddwd`, `vpaddd` (32 multiply-adds). An empty `asm!`
    /// makes the operands opaque each iteration, so nothing is hoisted out of the loop
    /// (unlike the accumulate-into-itself chains of the other probes, these products do
    /// not depend on the accumulators).
    ///
    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn maddubs_sign(iters: usize) -> f64 {
        let mut x = [_mm256_set1_epi8(black_box(-3)); 4];
        let mut w = [
            _mm256_set1_epi8(black_box(5)),
            _mm256_set1_epi8(black_box(7)),
        ];
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 8];
        let t = Instant::now();
        for _ in 0..iters {
            for v in x.iter_mut() {
                // SAFETY: an empty template: no instruction runs, the register is kept.
                unsafe {
                    asm!(
                        "/* {0} */",
                        inout(ymm_reg) * v,
                        options(pure, nomem, nostack)
                    )
                };
            }
            for v in w.iter_mut() {
                // SAFETY: as above.
                unsafe {
                    asm!(
                        "/* {0} */",
                        inout(ymm_reg) * v,
                        options(pure, nomem, nostack)
                    )
                };
            }
            for (r, xr) in x.iter().enumerate() {
                let ax = _mm256_abs_epi8(*xr);
                for (p, wp) in w.iter().enumerate() {
                    let pairs = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(*wp, *xr));
                    acc[r * 2 + p] =
                        _mm256_add_epi32(acc[r * 2 + p], _mm256_madd_epi16(pairs, ones));
                }
            }
        }
        // Reduced by value: a reference to `acc` would keep it in memory inside the loop.
        black_box(
            acc.iter()
                .fold(_mm256_setzero_si256(), |s, &v| _mm256_add_epi32(s, v)),
        );
        gops(iters * 8 * 32 * 2, t)
    }

    /// 12 chains of `vfmadd ymm` (8 f32 FMAs each).
    ///
    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma_ymm(iters: usize) -> f64 {
        let (a, b) = (_mm256_set1_ps(black_box(0.999)), _mm256_set1_ps(1e-3));
        let mut acc = [_mm256_setzero_ps(); 12];
        let t = Instant::now();
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        black_box(&acc);
        gops(iters * 12 * 8 * 2, t)
    }

    /// 24 chains of `vfmadd zmm` (16 f32 FMAs each): twice the ymm rate on cores with
    /// two 512-bit FMA units, the same on cores that split zmm (Zen 4).
    ///
    /// # Safety
    /// AVX-512 F must be available.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma_zmm(iters: usize) -> f64 {
        let (a, b) = (_mm512_set1_ps(black_box(0.999)), _mm512_set1_ps(1e-3));
        let mut acc = [_mm512_setzero_ps(); 24];
        let t = Instant::now();
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        black_box(&acc);
        gops(iters * 24 * 16 * 2, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::detect::report_skipped;

    /// The probes run and report positive, finite rates for the ISAs this CPU has and
    /// `None` for the others (the values are the machine's, so nothing more about them
    /// can be asserted).
    #[test]
    fn probes_report_positive_rates() {
        let f = features();
        if !f.amx {
            report_skipped(
                Isa::Amx,
                "peak::probes_report_positive_rates (tdpbssd probe)",
            );
        }
        for (isa, has) in [
            (Isa::Amx, f.amx),
            (Isa::Avx512Vnni, f.avx512_vnni),
            (Isa::AvxVnni, f.avx_vnni),
            (Isa::Avx2, f.avx2),
            (Isa::Neon, false),
            (Isa::Scalar, false),
        ] {
            let has = has && cfg!(target_arch = "x86_64");
            match int8_peak_gops(isa) {
                Some(g) => assert!(has && g.is_finite() && g > 0.0, "{isa}: {g}"),
                None => assert!(!has, "{isa} is available but was not probed"),
            }
        }
        let p = measure();
        assert_eq!(
            f32_peak_gflops().is_some(),
            cfg!(target_arch = "x86_64") && f.avx2
        );
        if f.avx2 && cfg!(target_arch = "x86_64") {
            assert!(
                p.f32_gflops > 0.0 && p.int8_gops > 0.0 && p.ratio() > 0.0,
                "{p:?}"
            );
        } else {
            assert_eq!(p.ratio(), 0.0);
        }
    }
}
