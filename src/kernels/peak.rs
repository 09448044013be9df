//! Probes of one core's arithmetic peaks: how many int8 multiply-adds per second the
//! instruction our W8A8 kernels use can retire, and how many f32 FMAs (what candle's f32
//! matmul is built on). Their quotient bounds the speed-up any int8 kernel can have over
//! an f32 one on this machine, so the benches print it beside the measured ratios.
//!
//! Each probe runs independent chains of the instruction on registers only (no memory
//! traffic) for a fixed count and times them: a few tens of milliseconds. Operations count
//! as 2 per multiply-add (GOPS, GFLOPS), as for matmuls.

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

/// Measures the peaks on the calling thread (best of three runs each, ~0.1 s in all).
pub fn measure() -> Peaks {
    let f = features();
    let isa = f.best_isa();
    #[cfg(target_arch = "x86_64")]
    {
        let best = |probe: &dyn Fn() -> f64| (0..3).map(|_| probe()).fold(0f64, f64::max);
        let int8_gops = match isa {
            // SAFETY: AVX-512 VNNI was detected.
            Isa::Avx512Vnni => best(&|| unsafe { x86::vnni_zmm(ITERS) }),
            // SAFETY: AVX-VNNI was detected.
            Isa::AvxVnni => best(&|| unsafe { x86::vnni_ymm_vex(ITERS) }),
            // SAFETY: AVX2 was detected.
            Isa::Avx2 => best(&|| unsafe { x86::maddubs_sign(ITERS) }),
            _ => 0.0,
        };
        let mut f32_gflops = 0.0;
        if f.avx2 {
            // SAFETY: AVX2 + FMA were detected (`avx2` stands for AVX2 + FMA + F16C).
            f32_gflops = best(&|| unsafe { x86::fma_ymm(ITERS) });
        }
        if f.avx512_vnni {
            // SAFETY: AVX-512 F was detected.
            f32_gflops = f64::max(f32_gflops, best(&|| unsafe { x86::fma_zmm(ITERS) }));
        }
        Peaks {
            isa,
            int8_gops,
            f32_gflops,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Peaks {
            isa,
            int8_gops: 0.0,
            f32_gflops: 0.0,
        }
    }
}

/// Seconds to GOPS for `ops` operations.
fn gops(ops: usize, t: Instant) -> f64 {
    ops as f64 / t.elapsed().as_secs_f64() / 1e9
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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

    /// The AVX2 kernel's exact step (`vpsignb`, `vpmaddubsw`, `vpmaddwd`, `vpaddd`) on 8
    /// chains: 32 multiply-adds per step.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn maddubs_sign(iters: usize) -> f64 {
        let x = _mm256_set1_epi8(black_box(-3));
        let ax = _mm256_abs_epi8(x);
        let ones = _mm256_set1_epi16(1);
        let w = [
            _mm256_set1_epi8(black_box(5)),
            _mm256_set1_epi8(black_box(7)),
        ];
        let mut acc = [_mm256_setzero_si256(); 8];
        let t = Instant::now();
        for _ in 0..iters {
            for (i, v) in acc.iter_mut().enumerate() {
                let p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w[i & 1], x));
                *v = _mm256_add_epi32(*v, _mm256_madd_epi16(p, ones));
            }
        }
        black_box(&acc);
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

    /// The probes run and report positive, finite rates (their values are the machine's,
    /// so nothing else about them can be asserted).
    #[test]
    fn probes_report_positive_rates() {
        let p = measure();
        assert!(p.int8_gops.is_finite() && p.int8_gops > 0.0, "{p:?}");
        assert!(p.f32_gflops.is_finite() && p.f32_gflops >= 0.0, "{p:?}");
        if cfg!(target_arch = "x86_64") && features().avx2 {
            assert!(p.f32_gflops > 0.0 && p.ratio() > 0.0, "{p:?}");
        }
    }
}
