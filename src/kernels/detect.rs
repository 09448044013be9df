//! Run-time CPU feature detection, done once and cached.
//!
//! The first call to [`features`] probes the CPU (`is_x86_feature_detected!` /
//! `is_aarch64_feature_detected!`), logs the result with `tracing::debug!` and stores it
//! in a `OnceLock`; every later call is a load. Kernels are compiled for every ISA with
//! `#[target_feature]` and chosen here, so a plain `cargo build` (no
//! `-C target-cpu=native`) runs the fast path.
//!
//! Holding a token ([`Avx2`], [`Avx512Vnni`], [`AvxVnni`], [`Neon`]) proves the check was
//! done: the tokens can only be made by `detect()`, which returns `None` on a CPU that
//! lacks the features, so the safe wrappers that take a token may call
//! `#[target_feature]` code.

use std::sync::OnceLock;

/// The instruction set the integer kernels run on, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust: the reference implementation.
    Scalar,
    /// aarch64 NEON.
    Neon,
    /// x86_64 AVX2 + FMA + F16C: the x86 baseline.
    Avx2,
    /// x86_64 AVX2 plus AVX-VNNI (`vpdpbusd` on 256-bit registers, VEX encoded).
    AvxVnni,
    /// x86_64 AVX-512 F/BW/VL + VNNI (`vpdpbusd` on 512-bit registers).
    Avx512Vnni,
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isa::Scalar => "scalar",
            Isa::Neon => "neon",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512Vnni => "avx512-vnni",
        })
    }
}

/// The CPU features the kernels care about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// AVX2, FMA and F16C together (every AVX2 CPU we target has all three).
    pub avx2: bool,
    /// AVX-VNNI (VEX-encoded `vpdpbusd` on ymm).
    pub avx_vnni: bool,
    /// AVX-512 F, BW, VL and VNNI together.
    pub avx512_vnni: bool,
    /// aarch64 NEON.
    pub neon: bool,
}

impl CpuFeatures {
    /// The best ISA these features allow.
    pub fn best_isa(&self) -> Isa {
        if self.avx512_vnni {
            Isa::Avx512Vnni
        } else if self.avx_vnni {
            Isa::AvxVnni
        } else if self.avx2 {
            Isa::Avx2
        } else if self.neon {
            Isa::Neon
        } else {
            Isa::Scalar
        }
    }
}

static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();

/// The CPU's features, detected on first use and cached.
pub fn features() -> &'static CpuFeatures {
    FEATURES.get_or_init(|| {
        let f = probe();
        tracing::debug!(features = ?f, isa = %f.best_isa(), "candle-compress kernels selected");
        f
    })
}

/// The ISA the kernels run on for this process.
pub fn active_isa() -> Isa {
    features().best_isa()
}

#[cfg(target_arch = "x86_64")]
fn probe() -> CpuFeatures {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    CpuFeatures {
        avx2,
        avx_vnni: avx2 && is_x86_feature_detected!("avxvnni"),
        avx512_vnni: avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni"),
        neon: false,
    }
}

#[cfg(target_arch = "aarch64")]
fn probe() -> CpuFeatures {
    CpuFeatures {
        neon: std::arch::is_aarch64_feature_detected!("neon"),
        ..CpuFeatures::default()
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn probe() -> CpuFeatures {
    CpuFeatures::default()
}

macro_rules! token {
    ($(#[$doc:meta])* $name:ident, $field:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name(());

        impl $name {
            /// Returns the token when this CPU has the features, `None` otherwise.
            pub fn detect() -> Option<Self> {
                features().$field.then_some(Self(()))
            }
        }
    };
}

token!(
    /// Proof that the CPU has AVX2 + FMA + F16C.
    Avx2, avx2
);
token!(
    /// Proof that the CPU has AVX2 and AVX-VNNI.
    AvxVnni, avx_vnni
);
token!(
    /// Proof that the CPU has AVX-512 F/BW/VL/VNNI (and AVX2).
    Avx512Vnni, avx512_vnni
);
token!(
    /// Proof that the CPU has aarch64 NEON (Advanced SIMD); never made on other
    /// architectures.
    Neon, neon
);

/// Prints that a test of `isa` was skipped because this CPU lacks it. Tests of an ISA the
/// machine lacks call this instead of silently passing.
///
/// It writes to the stderr handle directly rather than through `eprintln!`, which the test
/// harness captures and hides for passing tests: a plain `cargo test` shows the line.
pub fn report_skipped(isa: Isa, test: &str) {
    use std::io::Write;
    let line = format!(
        "SKIPPED {test}: this CPU has no {isa} (active ISA: {})\n",
        active_isa()
    );
    // A failed write to stderr has nowhere better to be reported.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_is_cached_and_consistent() {
        let a = features() as *const CpuFeatures;
        let b = features() as *const CpuFeatures;
        assert_eq!(a, b);
        let f = features();
        assert_eq!(Avx2::detect().is_some(), f.avx2);
        assert_eq!(Avx512Vnni::detect().is_some(), f.avx512_vnni);
        assert_eq!(AvxVnni::detect().is_some(), f.avx_vnni);
        assert_eq!(Neon::detect().is_some(), f.neon);
        if cfg!(target_arch = "aarch64") {
            assert!(f.neon, "every aarch64 CPU has NEON");
        } else {
            assert!(!f.neon, "NEON is an aarch64 feature");
        }
        if f.avx512_vnni || f.avx_vnni {
            assert!(f.avx2, "VNNI tokens imply AVX2");
        }
        eprintln!("active ISA: {}", active_isa());
    }

    #[test]
    fn best_isa_prefers_widest() {
        let f = CpuFeatures {
            avx2: true,
            avx_vnni: true,
            avx512_vnni: true,
            neon: false,
        };
        assert_eq!(f.best_isa(), Isa::Avx512Vnni);
        assert_eq!(CpuFeatures::default().best_isa(), Isa::Scalar);
    }
}
