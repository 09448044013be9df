//! Run-time CPU feature detection, done once and cached.
//!
//! The first call to [`features`] probes the CPU (`is_x86_feature_detected!` /
//! `is_aarch64_feature_detected!`), logs the result with `tracing::debug!` and stores it
//! in a `OnceLock`; every later call is a load. Kernels are compiled for every ISA with
//! `#[target_feature]` and chosen here, so a plain `cargo build` (no
//! `-C target-cpu=native`) runs the fast path.
//!
//! AMX (Intel Advanced Matrix Extensions, Xeon 4th generation and later) needs three
//! checks: CPUID leaf 7 EDX bits 24 (AMX-TILE) and 25 (AMX-INT8), XCR0 bits 17/18 (the OS
//! saves tile state, read with `xgetbv`), and Linux's permission for this process to use
//! the 8 KiB tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`,
//! confirmed with `ARCH_GET_XCOMP_PERM`). Any failure leaves [`CpuFeatures::amx`] false
//! (logged with `tracing::debug!`) and the VNNI kernels run.
//!
//! The environment variable [`ISA_ENV`] (`CANDLE_COMPRESS_ISA=avx512-vnni`, `avx2`,
//! `scalar`, ...) lowers [`active_isa`] for the whole process (users, side-by-side
//! benches); it never raises it above what the CPU has (the best available ISA not above
//! the request runs, with a warning), and an unknown value is ignored with a warning.
//!
//! Holding a token ([`Avx2`], [`Avx512Vnni`], [`AvxVnni`], [`Amx`], [`Neon`]) proves the check was
//! done: the tokens can only be made by `detect()`, which returns `None` on a CPU that
//! lacks the features, so the safe wrappers that take a token may call
//! `#[target_feature]` code.

use std::sync::OnceLock;

/// The instruction set the integer kernels run on, declared worst first: `Ord` follows
/// the declaration, so `a > b` means `a` is the faster path.
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
    /// x86_64 AMX-TILE + AMX-INT8 (`tdpbssd` on 16 × 64-byte tiles), with AVX-512 VNNI for
    /// small batches and the epilogue.
    Amx,
}

impl Isa {
    /// Every ISA, worst first (the order of the enum).
    pub const ALL: [Isa; 6] = [
        Isa::Scalar,
        Isa::Neon,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512Vnni,
        Isa::Amx,
    ];
}

/// An [`Isa`] name that is not one of `scalar`, `neon`, `avx2`, `avx-vnni`, `avx512-vnni`,
/// `amx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownIsa(pub String);

impl std::fmt::Display for UnknownIsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown ISA {:?} (expected one of scalar, neon, avx2, avx-vnni, avx512-vnni, amx)",
            self.0
        )
    }
}

impl std::error::Error for UnknownIsa {}

impl std::str::FromStr for Isa {
    type Err = UnknownIsa;

    /// Parses the names [`Isa`]'s `Display` prints (ASCII case and surrounding spaces
    /// ignored).
    ///
    /// ```
    /// use candle_compress::kernels::Isa;
    /// assert_eq!("AVX512-VNNI".parse::<Isa>(), Ok(Isa::Avx512Vnni));
    /// assert!("sse2".parse::<Isa>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Isa, UnknownIsa> {
        let t = s.trim().to_ascii_lowercase();
        Isa::ALL
            .into_iter()
            .find(|isa| isa.to_string() == t)
            .ok_or_else(|| UnknownIsa(s.to_string()))
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isa::Scalar => "scalar",
            Isa::Neon => "neon",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Amx => "amx",
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
    /// AMX-TILE and AMX-INT8, enabled by the OS (XCR0) and permitted for this process
    /// (Linux `arch_prctl`), on a CPU that also has `avx512_vnni`.
    pub amx: bool,
}

impl CpuFeatures {
    /// The best ISA these features allow.
    pub fn best_isa(&self) -> Isa {
        if self.amx && self.avx512_vnni {
            Isa::Amx
        } else if self.avx512_vnni {
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

    /// Whether these features can run `isa`'s kernels.
    pub fn supports(&self, isa: Isa) -> bool {
        match isa {
            Isa::Scalar => true,
            Isa::Neon => self.neon,
            Isa::Avx2 => self.avx2,
            Isa::AvxVnni => self.avx_vnni,
            Isa::Avx512Vnni => self.avx512_vnni,
            Isa::Amx => self.amx && self.avx512_vnni,
        }
    }

    /// The best ISA these features support that is not above `requested` (the rule of
    /// [`ISA_ENV`]): `requested` itself when supported, else the next lower supported one.
    pub fn capped_isa(&self, requested: Isa) -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|&isa| isa <= requested && isa <= self.best_isa() && self.supports(isa))
            .unwrap_or(Isa::Scalar)
    }

    /// The ISA a process with these features runs when [`ISA_ENV`] holds `request`
    /// (`None`: unset), and the warning to log when the request cannot be honoured as
    /// written (unknown name, or an ISA this CPU lacks).
    ///
    /// ```
    /// use candle_compress::kernels::{CpuFeatures, Isa};
    /// let f = CpuFeatures { avx2: true, avx512_vnni: true, ..CpuFeatures::default() };
    /// assert_eq!(f.isa_for_request(Some("avx2")), (Isa::Avx2, None));
    /// assert_eq!(f.isa_for_request(None), (Isa::Avx512Vnni, None));
    /// let (isa, warning) = f.isa_for_request(Some("amx")); // never above the CPU
    /// assert_eq!(isa, Isa::Avx512Vnni);
    /// assert!(warning.is_some());
    /// assert_eq!(f.isa_for_request(Some("fast")).0, Isa::Avx512Vnni); // unknown: ignored
    /// ```
    pub fn isa_for_request(&self, request: Option<&str>) -> (Isa, Option<String>) {
        let best = self.best_isa();
        let Some(req) = request else {
            return (best, None);
        };
        match req.parse::<Isa>() {
            Err(e) => (
                best,
                Some(format!("{ISA_ENV}: {e}; ignored, running {best}")),
            ),
            Ok(isa) => {
                let got = self.capped_isa(isa);
                let warning = (got != isa).then(|| {
                    format!("{ISA_ENV}={isa}: this CPU lacks {isa} (best: {best}); running {got}")
                });
                (got, warning)
            }
        }
    }
}

/// The environment variable that lowers [`active_isa`] (read once, at the first call).
pub const ISA_ENV: &str = "CANDLE_COMPRESS_ISA";

static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
static ACTIVE: OnceLock<Isa> = OnceLock::new();

/// The CPU's features, detected on first use and cached.
pub fn features() -> &'static CpuFeatures {
    FEATURES.get_or_init(|| {
        let f = probe();
        tracing::debug!(features = ?f, isa = %f.best_isa(), "candle-compress kernels selected");
        f
    })
}

/// The ISA the kernels run on for this process: the best the CPU has, lowered by
/// [`ISA_ENV`] when set (read once and cached, like the detection).
pub fn active_isa() -> Isa {
    *ACTIVE.get_or_init(|| {
        let request = std::env::var(ISA_ENV).ok();
        let (isa, warning) = features().isa_for_request(request.as_deref());
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        tracing::debug!(isa = %isa, request = ?request, "candle-compress active ISA");
        isa
    })
}

#[cfg(target_arch = "x86_64")]
fn probe() -> CpuFeatures {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let mut f = CpuFeatures {
        avx2,
        avx_vnni: avx2 && is_x86_feature_detected!("avxvnni"),
        avx512_vnni: avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni"),
        neon: false,
        amx: false,
    };
    f.amx = f.avx512_vnni
        && match amx::usable() {
            Ok(()) => true,
            Err(why) => {
                tracing::debug!("AMX not used (VNNI kernels run instead): {why}");
                false
            }
        };
    f
}

/// AMX detection: CPUID, XCR0, then the Linux permission for the tile data state.
#[cfg(target_arch = "x86_64")]
mod amx {
    /// XSTATE component of the tile configuration (XCR0 bit 17).
    const XTILECFG: u32 = 17;
    /// XSTATE component of the 8 KiB tile data (XCR0 bit 18); also the feature number
    /// `arch_prctl(ARCH_REQ_XCOMP_PERM)` asks for.
    const XTILEDATA: u32 = 18;

    /// `Ok` when this process may execute AMX-TILE and AMX-INT8 instructions.
    pub(super) fn usable() -> Result<(), String> {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // `__cpuid*` became safe functions in recent Rust; older supported versions need
        // the block. SAFETY: CPUID exists on every x86_64 CPU.
        #[allow(unused_unsafe)]
        let (max_leaf, l1, l7) = unsafe { (__cpuid(0).eax, __cpuid(1), __cpuid_count(7, 0)) };
        if max_leaf < 7 {
            return Err("CPUID has no leaf 7".into());
        }
        let (tile, int8) = ((l7.edx >> 24) & 1 == 1, (l7.edx >> 25) & 1 == 1);
        if !(tile && int8) {
            return Err(format!(
                "CPUID.7.0:EDX lacks AMX-TILE/AMX-INT8 (tile {tile}, int8 {int8})"
            ));
        }
        if (l1.ecx >> 27) & 1 == 0 {
            return Err("the OS has not enabled XSAVE (CPUID.1:ECX.OSXSAVE = 0)".into());
        }
        let xcr0 = xgetbv0();
        let need = (1u64 << XTILECFG) | (1u64 << XTILEDATA);
        if xcr0 & need != need {
            return Err(format!(
                "XCR0 = {xcr0:#x} lacks the tile state bits 17/18 (OS or hypervisor without AMX)"
            ));
        }
        permission()
    }

    /// XCR0 (`xgetbv` with ECX = 0); the caller checked CPUID.1:ECX.OSXSAVE.
    fn xgetbv0() -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: `xgetbv` with ECX = 0 is valid when OSXSAVE is set (checked by the only
        // caller); it reads a register, touches no memory and no flags.
        unsafe {
            core::arch::asm!(
                "xgetbv",
                in("ecx") 0u32,
                out("eax") lo,
                out("edx") hi,
                options(nomem, nostack, preserves_flags),
            );
        }
        (u64::from(hi) << 32) | u64::from(lo)
    }

    #[cfg(target_os = "linux")]
    fn permission() -> Result<(), String> {
        /// `ARCH_GET_XCOMP_PERM` and `ARCH_REQ_XCOMP_PERM` from `<asm/prctl.h>`.
        const ARCH_GET_XCOMP_PERM: usize = 0x1022;
        const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
        let ret = arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA as usize);
        if ret != 0 {
            return Err(format!(
                "arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) failed: errno {} (kernel before 5.16 or permission refused)",
                -ret
            ));
        }
        let mut perm: u64 = 0;
        let ret = arch_prctl(ARCH_GET_XCOMP_PERM, std::ptr::addr_of_mut!(perm) as usize);
        if ret != 0 {
            return Err(format!(
                "arch_prctl(ARCH_GET_XCOMP_PERM) failed: errno {}",
                -ret
            ));
        }
        if perm & (1 << XTILEDATA) == 0 {
            return Err(format!(
                "ARCH_GET_XCOMP_PERM = {perm:#x} does not include XTILEDATA"
            ));
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn permission() -> Result<(), String> {
        Err("AMX tile state permission is only requested on Linux".into())
    }

    /// `arch_prctl(code, arg)` through the raw system call (no libc dependency, as in
    /// `kernels::hugepage`); returns 0 or `-errno`.
    #[cfg(target_os = "linux")]
    fn arch_prctl(code: usize, arg: usize) -> isize {
        const SYS_ARCH_PRCTL: isize = 158;
        let ret: isize;
        // SAFETY: the two XCOMP_PERM codes either set a per-process permission flag
        // (REQ, `arg` a feature number) or write one u64 to `arg` (GET, a pointer to a
        // live local); neither changes memory the program owns otherwise. x86_64 Linux
        // system call ABI: number in rax, arguments in rdi/rsi, rcx and r11 clobbered;
        // no stack use.
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") code,
                in("rsi") arg,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack, preserves_flags),
            );
        }
        ret
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
    /// Proof that this process may run AMX-TILE/AMX-INT8 (CPUID, XCR0 and the Linux
    /// permission all checked) on a CPU with AVX-512 VNNI.
    Amx, amx
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
        assert_eq!(Amx::detect().is_some(), f.amx);
        if f.amx {
            assert!(f.avx512_vnni, "the AMX path needs AVX-512 VNNI too");
        }
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
            amx: false,
        };
        assert_eq!(f.best_isa(), Isa::Avx512Vnni);
        assert_eq!(CpuFeatures { amx: true, ..f }.best_isa(), Isa::Amx);
        assert_eq!(CpuFeatures::default().best_isa(), Isa::Scalar);
    }

    #[test]
    fn isa_names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(isa.to_string().parse::<Isa>(), Ok(isa));
            assert_eq!(
                format!(" {} ", isa.to_string().to_uppercase()).parse::<Isa>(),
                Ok(isa)
            );
        }
        assert_eq!("avx512".parse::<Isa>(), Err(UnknownIsa("avx512".into())));
    }

    #[test]
    fn env_request_lowers_but_never_raises() {
        let amx = CpuFeatures {
            avx2: true,
            avx_vnni: true,
            avx512_vnni: true,
            neon: false,
            amx: true,
        };
        let zen4 = CpuFeatures {
            amx: false,
            avx_vnni: false,
            ..amx
        };
        let plain = CpuFeatures {
            avx2: true,
            ..CpuFeatures::default()
        };
        for (f, req, want, warns) in [
            (amx, None, Isa::Amx, false),
            (amx, Some("avx512-vnni"), Isa::Avx512Vnni, false),
            (amx, Some("avx-vnni"), Isa::AvxVnni, false),
            (amx, Some("avx2"), Isa::Avx2, false),
            (amx, Some("scalar"), Isa::Scalar, false),
            (amx, Some("amx"), Isa::Amx, false),
            (zen4, Some("amx"), Isa::Avx512Vnni, true),
            (zen4, Some("avx-vnni"), Isa::Avx2, true),
            (zen4, Some("neon"), Isa::Scalar, true),
            (zen4, Some("bogus"), Isa::Avx512Vnni, true),
            (zen4, Some(""), Isa::Avx512Vnni, true),
            (plain, Some("avx512-vnni"), Isa::Avx2, true),
            (CpuFeatures::default(), Some("avx2"), Isa::Scalar, true),
        ] {
            let (got, warning) = f.isa_for_request(req);
            assert_eq!(got, want, "{f:?} {req:?}");
            assert_eq!(warning.is_some(), warns, "{req:?}: {warning:?}");
            assert!(f.supports(got) && got <= f.best_isa());
        }
        // amx without AVX-512 VNNI is not a usable AMX path
        let odd = CpuFeatures { amx: true, ..plain };
        assert_eq!(odd.best_isa(), Isa::Avx2);
        assert!(!odd.supports(Isa::Amx));
    }

    #[test]
    fn active_isa_is_supported_and_cached() {
        let isa = active_isa();
        assert!(features().supports(isa) && isa <= features().best_isa());
        assert_eq!(active_isa(), isa);
        let (want, _) = features().isa_for_request(std::env::var(ISA_ENV).ok().as_deref());
        assert_eq!(isa, want);
    }
}
