//! Integer GEMM / GEMV for quantized linear layers: fused per-row int8 activation
//! quantization, W8A8 (int8 weights × int8 activations) and W4A8 (int4 weights in groups
//! × int8 activations), with exact integer accumulation.
//!
//! # Numerics (identical on every ISA, test-checked bit for bit)
//!
//! **Row quantization** ([`quantize_rows_i8`]), per row `t` of `x` (`cols` values):
//!
//! ```text
//! y[c]  = x[c] * smooth[c]            (f32 multiply; y = x without smoothing)
//! amax  = max_c |y[c]|                scale[t] = amax / 127          (f32 division)
//! q[c]  = 0                                            if scale == 0
//!       = clamp(round_half_away(y[c] / scale), -127, 127)   otherwise (f32 division)
//! ```
//!
//! [`quantize_rows_i8_with_scales`] skips the `amax` pass and uses the given scale.
//! Non-finite policy: [`KernelError::NonFinite`] with the flat index into `x` of the first
//! element whose `y` is NaN or ±Inf (a non-finite `x`, a non-finite `smooth[c]`, or an
//! overflowing product); `q` and `scales` are then unspecified.
//!
//! Every entry point (the free functions, the [`GemmKernels`] methods, the `pack`
//! constructors) checks its lengths first and returns a [`KernelError`] on a mismatch
//! (never panics); the checks are a few comparisons per call.
//!
//! **W8A8** ([`matmul_w8a8`]), for row `t` and output `o`:
//!
//! ```text
//! acc      = Σ_k qx[t,k] · w[o,k]                  exact integer (any in_features)
//! out[t,o] = (acc as f32) * (x_scales[t] * w.scales[o]) + bias[o]
//! ```
//!
//! evaluated exactly in that order with separate f32 roundings (no fused multiply-add;
//! `acc as f32` rounds to nearest-even; without bias there is no `+ 0.0`). The kernels
//! accumulate in i32 within blocks of [`K_BLOCK`] inputs (`|Σ| ≤ 65536·128·128 = 2^30`
//! cannot overflow) and add the blocks in i64, so `acc` is exact for any `in_features`.
//!
//! **W4A8** ([`matmul_w4a8`]), with `G = in.div_ceil(group)` groups (the last may be short):
//!
//! ```text
//! acc_g    = Σ_{k in group g} qx[t,k] · w[o,k]      exact i32
//! sum      = 0.0;  for g in 0..G { sum = sum + (acc_g as f32) * w.scales[o,g] }   (in g order)
//! out[t,o] = sum * x_scales[t] + bias[o]
//! ```
//!
//! **Asymmetric W4A8** (weights packed with [`PackedW4::pack_asym`]: the code `c` of group
//! `g` stands for `s[o,g]·c + m[o,g]`) adds the offsets' share before the epilogue:
//!
//! ```text
//! S_g      = Σ_{k in group g} qx[t,k]                exact i32 (the short last group: its real columns)
//! off      = 0.0;  for g in 0..G { off = off + (S_g as f32) * m[o,g] }            (in g order)
//! out[t,o] = (sum + off) * x_scales[t] + bias[o]
//! ```
//!
//! `off` comes from one routine shared by every path; without offsets nothing changes.
//!
//! Both epilogues are single shared functions used by every ISA, so the outputs do not
//! depend on the ISA, the tile shapes or the number of threads.
//!
//! # Kernels
//!
//! Weights are packed once ([`PackedW8::pack`], [`PackedW4::pack`]) into panels of 16
//! output channels × steps of 4 consecutive inputs — the `vpdpbusd` operand layout, which
//! also serves the 256-bit kernels. [`GemmKernels`] is the run-time dispatch: a
//! reference to one ISA module's static kernel table (`table.rs`), detected once, cached,
//! logged with `tracing`; the free functions use [`GemmKernels::active`], and tests or
//! benches pick an ISA with [`GemmKernels::for_isa`].
//!
//! | kernels | ISA | W8A8 dot product | tile (rows × channels) |
//! |---|---|---|---|
//! | `avx512-vnni` | AVX-512 F/BW/VL + VNNI | `vpdpbusd` zmm, `qx + 128` as u8, `- 128·Σw` | 8 × 48 (W4: 6 × 32; 1–2 rows: low and high nibbles in separate sums, no unpacking shuffle) |
//! | `avx-vnni` | AVX2 + AVX-VNNI | `vpdpbusd` ymm (VEX) | 6 × 16 (W4: 2 × 16) |
//! | `avx512-vnni-ymm` | AVX-512 VNNI + VL | the `avx-vnni` tiles with EVEX `vpdpbusd` | 6 × 16 |
//! | `avx2` | AVX2 + FMA | `vpmaddubsw` (`abs(qx)` × sign-moved `w`) + `vpmaddwd` | 4 × 16 (W4: 2 × 16) |
//! | `neon` | aarch64 NEON | `ld4` + `smlal`/`smlal2` by lane on i16 (raw i8 `qx`) | 4 × 16 |
//! | `scalar` | any | i64 loops, the reference | — |
//!
//! The row quantization is one algorithm over the crate's f32 vector trait
//! (`row_quant.rs`), instantiated for ymm (every x86 set but the zmm ones), zmm
//! (`avx512-vnni` and the AMX sets) and NEON.
//!
//! Edge tiles (fewer rows or panels) are separate monomorphised kernels from a table. A
//! panel group's weights stay in L2 while all row blocks stream past them; batch 1 reads
//! every weight byte once. Work above ~4M multiply-adds is split into rayon tasks over
//! panel groups (and row blocks when there are few panels), about four per thread. A
//! call made on a rayon worker (inside `ThreadPool::install`) splits from ~64K
//! multiply-adds, one task per thread with every row, so a decoder's one-token GEMVs use
//! every thread; from outside the pool small work stays on the calling thread.
//! On aarch64 the `neon` kernels use baseline Advanced SIMD only (no `sdot`: its
//! intrinsics are not stable in the supported Rust versions).
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use std::sync::OnceLock;

use super::detect::Isa;
use super::error::{checked_mul, expect_len, KernelError};
use amx_driver::AmxKernels;
use table::{AmxUse, Table};

// Expands `(mr, np)` to the monomorphised microkernel.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! tile_table {
    ($f:ident, $ty:ty, $mr:expr, $np:expr; $($m:literal)*; $($n:literal)*) => {{
        tile_table!(@rows $f, $ty, $mr, $np; [$($m)*]; [$($n)*])
    }};
    (@rows $f:ident, $ty:ty, $mr:expr, $np:expr; [$($m:literal)*]; $ns:tt) => {
        match $mr {
            $( $m => tile_table!(@cols $f, $ty, $m, $np; $ns), )*
            _ => unreachable!("tile rows out of range"),
        }
    };
    (@cols $f:ident, $ty:ty, $m:literal, $np:expr; [$($n:literal)*]) => {
        match $np {
            $( $n => $f::<$m, $n> as $ty, )*
            _ => unreachable!("tile panels out of range"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod amx;
mod amx_driver;
mod amx_emu;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avxvnni;
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
mod driver;
#[cfg(target_arch = "aarch64")]
mod neon;
mod offsets;
mod pack;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod row_quant;
mod scalar;
mod table;
#[cfg(target_arch = "x86_64")]
mod ymm;

pub use pack::{PackedW4, PackedW8};

/// Inputs per exact-i32 accumulation block of the W8A8 kernels. Blocks are added in i64.
///
/// With `|qx|, |qw| ≤ 128` a block's dot product is at most `65536 · 128 · 128 = 2^30` in
/// magnitude, so it fits i32 even when a kernel's intermediate `Σ (qx + 128) · qw` wraps
/// (wrapping arithmetic is exact modulo 2^32).
pub const K_BLOCK: usize = 65536;

/// Rows from which the AMX kernels ([`Isa::Amx`]) run W8A8 on tiles; smaller batches
/// (GEMV, decoding) run the AVX-512 VNNI kernels, which stream the weights as fast and do
/// not pad rows to a 16-row tile. The outputs are bit-identical either way. Measured on a
/// Xeon (1 thread, 4096×4096 and 384×1536): tiles and VNNI tie at 16 rows, tiles win from
/// 24 (4096×4096: 1.20 against 1.45 ms), VNNI wins at 12.
pub const AMX_MIN_ROWS: usize = 16;

/// Rows from which the AMX kernels run W4A8 on tiles. Each panel pair is unpacked to s8
/// and every group's sums pass through memory, costs that only enough row blocks amortize:
/// measured on a Xeon (1 thread), VNNI W4A8 ties or wins up to 48 rows (4096×4096 at 48
/// rows: 2.18 ms against 3.16 ms), the two tie at 64 and tiles win at 128 (4096×11008:
/// 15.8 against 22.9 ms).
pub const AMX_MIN_ROWS_W4: usize = 64;

/// The W8A8 float epilogue shared by every kernel:
/// `acc * (x_scale * w_scale) + bias`, each operation rounded separately.
#[inline(always)]
pub(crate) fn finish_w8(acc: f32, x_scale: f32, w_scale: f32, bias: Option<f32>) -> f32 {
    let v = acc * (x_scale * w_scale);
    match bias {
        Some(b) => v + b,
        None => v,
    }
}

/// The W4A8 float epilogue shared by every kernel: `sum * x_scale + bias`.
#[inline(always)]
pub(crate) fn finish_w4(sum: f32, x_scale: f32, bias: Option<f32>) -> f32 {
    let v = sum * x_scale;
    match bias {
        Some(b) => v + b,
        None => v,
    }
}

/// The requested kernel set needs CPU features this machine lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsaUnavailable {
    /// The ISA that was asked for.
    pub isa: Isa,
}

impl std::fmt::Display for IsaUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "gemm kernels for {} are not available on this CPU",
            self.isa
        )
    }
}

impl std::error::Error for IsaUnavailable {}

/// A set of integer GEMM kernels for one ISA. Holding one proves the CPU supports it.
///
/// ```
/// use candle_compress::kernels::gemm::GemmKernels;
/// use candle_compress::kernels::Isa;
/// let k = GemmKernels::active();
/// println!("gemm kernels: {}", k.name());
/// assert!(GemmKernels::for_isa(Isa::Scalar).is_ok());
/// ```
#[derive(Clone, Copy)]
pub struct GemmKernels {
    table: &'static Table,
}

impl std::fmt::Debug for GemmKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GemmKernels")
            .field(&self.table.name)
            .finish()
    }
}

/// Two values are equal when they run the same kernel set.
impl PartialEq for GemmKernels {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.table, other.table)
    }
}

impl Eq for GemmKernels {}

static ACTIVE: OnceLock<GemmKernels> = OnceLock::new();

impl GemmKernels {
    /// The best kernels for this CPU, chosen once (from
    /// [`active_isa`](crate::kernels::active_isa)) and cached; the choice is logged with
    /// `tracing::debug!`.
    pub fn active() -> GemmKernels {
        *ACTIVE.get_or_init(|| {
            let isa = super::detect::active_isa();
            let k = GemmKernels::for_isa(isa).unwrap_or(GemmKernels {
                table: &scalar::TABLE,
            });
            tracing::debug!(isa = %k.isa(), kernels = k.name(), "candle-compress gemm kernels selected");
            k
        })
    }

    /// The kernels for `isa`, or `Err` when this CPU (or this build's target) lacks it.
    pub fn for_isa(isa: Isa) -> Result<GemmKernels, IsaUnavailable> {
        #[cfg(target_arch = "x86_64")]
        use super::detect::{Amx, Avx2, Avx512Vnni, AvxVnni};
        let table: Option<&'static Table> = match isa {
            Isa::Scalar => Some(&scalar::TABLE),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Avx2::detect().map(|_| &avx2::TABLE),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => AvxVnni::detect().map(|_| &avxvnni::TABLE_VEX),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Avx512Vnni::detect().map(|_| &avx512::TABLE),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => super::detect::Neon::detect().map(|_| &neon::TABLE),
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => Amx::detect().map(|_| &amx::TABLE),
            _ => None,
        };
        table
            .map(|table| GemmKernels { table })
            .ok_or(IsaUnavailable { isa })
    }

    /// The AVX-VNNI (ymm) tiles run with the EVEX-encoded `vpdpbusd` of AVX-512 VNNI + VL:
    /// the same code path as [`Isa::AvxVnni`], runnable (and tested) on AVX-512 machines.
    /// `Err` without AVX-512 VNNI. [`GemmKernels::isa`] reports [`Isa::Avx512Vnni`].
    pub fn avx512_ymm() -> Result<GemmKernels, IsaUnavailable> {
        #[cfg(target_arch = "x86_64")]
        if super::detect::Avx512Vnni::detect().is_some() {
            return Ok(GemmKernels {
                table: &avxvnni::TABLE_EVEX,
            });
        }
        Err(IsaUnavailable {
            isa: Isa::Avx512Vnni,
        })
    }

    /// The AMX tile kernels for every row count (no switch to VNNI below
    /// [`AMX_MIN_ROWS`]): for tests and benches of the tile path itself. `Err` without a
    /// usable AMX ([`Isa::Amx`]); [`GemmKernels::isa`] reports [`Isa::Amx`].
    pub fn amx_tiles() -> Result<GemmKernels, IsaUnavailable> {
        #[cfg(target_arch = "x86_64")]
        if super::detect::Amx::detect().is_some() {
            return Ok(GemmKernels {
                table: &amx::TABLE_TILES,
            });
        }
        Err(IsaUnavailable { isa: Isa::Amx })
    }

    /// The AMX driver (tiling, K padding and tails, groups, epilogue) running on a scalar
    /// emulation of the tile instructions instead of the `asm!` blocks, with portable
    /// helpers: runs on any CPU, as slow as the scalar kernel. A test oracle that proves
    /// the AMX path's logic bit for bit where there is no AMX; never selected by
    /// [`GemmKernels::active`]. [`GemmKernels::isa`] reports [`Isa::Scalar`].
    ///
    /// ```
    /// use candle_compress::kernels::gemm::{GemmKernels, PackedW8};
    /// use candle_compress::kernels::Isa;
    /// let w = PackedW8::pack(&[1, 2, 3, -1, -2, -3], &[0.5, 0.25], 2, 3).unwrap();
    /// let (mut a, mut b) = ([0f32; 2], [0f32; 2]);
    /// GemmKernels::amx_emulated().matmul_w8a8(&[10, 20, 30], &[0.1], 1, &w, None, &mut a).unwrap();
    /// GemmKernels::for_isa(Isa::Scalar).unwrap().matmul_w8a8(&[10, 20, 30], &[0.1], 1, &w, None, &mut b).unwrap();
    /// assert_eq!(a, b);
    /// ```
    pub fn amx_emulated() -> GemmKernels {
        GemmKernels {
            table: &amx_emu::TABLE,
        }
    }

    /// The AMX driver on the emulated tiles with the real AMX table's AVX-512 helpers
    /// (int4 unpacking, group combine, W8 epilogue): everything the hardware path runs
    /// except its `asm!` blocks. `Err` without AVX-512 VNNI; [`GemmKernels::isa`] reports
    /// [`Isa::Avx512Vnni`].
    pub fn amx_emulated_avx512() -> Result<GemmKernels, IsaUnavailable> {
        #[cfg(target_arch = "x86_64")]
        if super::detect::Avx512Vnni::detect().is_some() {
            return Ok(GemmKernels {
                table: &amx_emu::TABLE_AVX512,
            });
        }
        Err(IsaUnavailable {
            isa: Isa::Avx512Vnni,
        })
    }

    /// Every kernel set this CPU can run (the scalar reference first), excluding the
    /// emulated AMX sets (slow test oracles).
    pub fn available() -> Vec<GemmKernels> {
        let mut v: Vec<GemmKernels> = [
            Isa::Scalar,
            Isa::Neon,
            Isa::Avx2,
            Isa::AvxVnni,
            Isa::Avx512Vnni,
            Isa::Amx,
        ]
        .into_iter()
        .filter_map(|isa| GemmKernels::for_isa(isa).ok())
        .collect();
        v.extend(GemmKernels::avx512_ymm());
        v.extend(GemmKernels::amx_tiles());
        v
    }

    /// The ISA whose instructions compute a `rows`-row matrix product on these kernels:
    /// [`GemmKernels::isa`], except that the AMX kernels run AVX-512 VNNI below
    /// [`AMX_MIN_ROWS`] rows (benches print it per row).
    pub fn isa_for_rows(&self, rows: usize) -> Isa {
        self.isa_from(rows, AMX_MIN_ROWS)
    }

    /// [`GemmKernels::isa_for_rows`] for W4A8, whose AMX threshold is
    /// [`AMX_MIN_ROWS_W4`].
    pub fn isa_for_rows_w4(&self, rows: usize) -> Isa {
        self.isa_from(rows, AMX_MIN_ROWS_W4)
    }

    fn isa_from(&self, rows: usize, min_rows: usize) -> Isa {
        match self.table.amx {
            Some(AmxUse {
                below: Some(isa), ..
            }) if rows < min_rows => isa,
            _ => self.table.isa,
        }
    }

    /// The AMX tile entry points these kernels use for `rows` rows, if any (from
    /// `min_rows` rows when the set switches to other kernels below that).
    fn amx_for(&self, rows: usize, min_rows: usize) -> Option<&'static AmxKernels> {
        let amx = self.table.amx.as_ref()?;
        (amx.below.is_none() || rows >= min_rows).then_some(amx.kernels)
    }

    /// The ISA these kernels need.
    pub fn isa(&self) -> Isa {
        self.table.isa
    }

    /// A short name for logs and benchmark labels.
    pub fn name(&self) -> &'static str {
        self.table.name
    }

    /// [`quantize_rows_i8`] on these kernels.
    ///
    /// # Errors
    /// As [`quantize_rows_i8`].
    pub fn quantize_rows_i8(
        &self,
        x: &[f32],
        cols: usize,
        smooth: Option<&[f32]>,
        q: &mut [i8],
        scales: &mut [f32],
    ) -> Result<(), KernelError> {
        const OP: &str = "quantize_rows_i8";
        check_rows(OP, x.len(), cols, smooth, q.len(), scales.len())?;
        if cols == 0 {
            scales.fill(0.0);
            return Ok(());
        }
        // SAFETY: the table's features were detected when `self` was made (see
        // `table.rs`); lengths were checked above and `cols > 0`.
        let res = unsafe { (self.table.rows.quantize)(x, cols, smooth, q, scales) };
        res.map_err(|index| non_finite(OP, index))
    }

    /// [`quantize_rows_i8_with_scales`] on these kernels.
    ///
    /// # Errors
    /// As [`quantize_rows_i8_with_scales`].
    pub fn quantize_rows_i8_with_scales(
        &self,
        x: &[f32],
        cols: usize,
        smooth: Option<&[f32]>,
        scales: &[f32],
        q: &mut [i8],
    ) -> Result<(), KernelError> {
        const OP: &str = "quantize_rows_i8_with_scales";
        check_rows(OP, x.len(), cols, smooth, q.len(), scales.len())?;
        if let Some(i) = scales.iter().position(|s| !(s.is_finite() && *s >= 0.0)) {
            return Err(KernelError::invalid(
                OP,
                "scales",
                format!(
                    "scales[{i}] is {}; every scale must be finite and >= 0",
                    scales[i]
                ),
            ));
        }
        if cols == 0 {
            return Ok(());
        }
        // SAFETY: the table's features were detected when `self` was made; lengths and
        // scales were checked above and `cols > 0`.
        let res = unsafe { (self.table.rows.with_scales)(x, cols, smooth, scales, q) };
        res.map_err(|index| non_finite(OP, index))
    }

    /// [`matmul_w8a8`] on these kernels.
    ///
    /// # Errors
    /// As [`matmul_w8a8`].
    pub fn matmul_w8a8(
        &self,
        qx: &[i8],
        x_scales: &[f32],
        rows: usize,
        w: &PackedW8,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let dims = (w.in_features(), w.out_features());
        if !check_matmul("matmul_w8a8", qx, x_scales, rows, dims, bias, out)? {
            return Ok(());
        }
        if let Some(t) = self.amx_for(rows, AMX_MIN_ROWS) {
            // SAFETY: the table's features (AMX with its OS permission, or AVX-512 for
            // the emulation's helpers, or none for the portable emulation) were detected
            // when `self` was made; lengths were checked above.
            unsafe { amx_driver::matmul_w8a8(t, qx, x_scales, rows, w, bias, out.as_mut_ptr()) };
            return Ok(());
        }
        match self.table.w8 {
            // SAFETY: the kernel family's features were detected when `self` was made;
            // lengths were checked above; it takes every weight when `full_range`.
            Some(k) if k.full_range || !w.has_min() => unsafe {
                driver::matmul_w8a8(k, qx, x_scales, rows, w, bias, out.as_mut_ptr())
            },
            _ => scalar::matmul_w8a8(qx, x_scales, rows, w, bias, out),
        }
        Ok(())
    }

    /// [`matmul_w4a8`] on these kernels.
    ///
    /// # Errors
    /// As [`matmul_w4a8`].
    pub fn matmul_w4a8(
        &self,
        qx: &[i8],
        x_scales: &[f32],
        rows: usize,
        w: &PackedW4,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let dims = (w.in_features(), w.out_features());
        if !check_matmul("matmul_w4a8", qx, x_scales, rows, dims, bias, out)? {
            return Ok(());
        }
        if let Some(t) = self.amx_for(rows, AMX_MIN_ROWS_W4) {
            // SAFETY: as in `matmul_w8a8`.
            unsafe { amx_driver::matmul_w4a8(t, qx, x_scales, rows, w, bias, out.as_mut_ptr()) };
            return Ok(());
        }
        match self.table.w4 {
            // SAFETY: as in `matmul_w8a8`.
            Some(k) => unsafe {
                driver::matmul_w4a8(k, qx, x_scales, rows, w, bias, out.as_mut_ptr())
            },
            None => scalar::matmul_w4a8(qx, x_scales, rows, w, bias, out),
        }
        Ok(())
    }
}

/// The `tdpbssd` peak (GOPS) of the calling thread's core over `iters` rounds of 6
/// independent tile products, or `None` without a usable AMX (`kernels::peak`'s probe).
pub(crate) fn amx_peak_gops(iters: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if super::detect::Amx::detect().is_some() {
        // SAFETY: AMX (with the OS permission) was detected.
        return Some(unsafe { amx::tdpbssd_peak_gops(iters) });
    }
    let _ = iters;
    None
}

/// The length rules of the row quantization: `x` is `rows × cols` (`rows` =
/// `scales.len()`), `q` as long as `x`, `smooth` one factor per column.
fn check_rows(
    op: &'static str,
    x: usize,
    cols: usize,
    smooth: Option<&[f32]>,
    q: usize,
    rows: usize,
) -> Result<(), KernelError> {
    let need = checked_mul(op, "rows × cols", rows, cols)?;
    expect_len(op, "x", x, need, || {
        format!("rows × cols = {rows} × {cols}")
    })?;
    expect_len(op, "q", q, x, || "x.len()".into())?;
    if let Some(s) = smooth {
        expect_len(op, "smooth", s.len(), cols, || "cols".into())?;
    }
    Ok(())
}

/// The length rules of the matrix products: `qx` is `rows × in_features`, one activation
/// scale per row, `out` is `rows × out_features`, one bias per output (`dims` is
/// `(in_features, out_features)`). `Ok(false)` when there is nothing to compute (no rows
/// or no outputs).
fn check_matmul(
    op: &'static str,
    qx: &[i8],
    x_scales: &[f32],
    rows: usize,
    (inp, n): (usize, usize),
    bias: Option<&[f32]>,
    out: &[f32],
) -> Result<bool, KernelError> {
    let need = checked_mul(op, "rows × in_features", rows, inp)?;
    expect_len(op, "qx", qx.len(), need, || {
        format!("rows × in_features = {rows} × {inp}")
    })?;
    expect_len(op, "x_scales", x_scales.len(), rows, || "rows".into())?;
    let need = checked_mul(op, "rows × out_features", rows, n)?;
    expect_len(op, "out", out.len(), need, || {
        format!("rows × out_features = {rows} × {n}")
    })?;
    if let Some(b) = bias {
        expect_len(op, "bias", b.len(), n, || "out_features".into())?;
    }
    Ok(rows > 0 && n > 0)
}

fn non_finite(op: &'static str, index: usize) -> KernelError {
    KernelError::NonFinite {
        op,
        what: "value (of x, or of x × smooth)",
        index,
    }
}

/// Fused per-row dynamic int8 quantization (see the module docs for the exact formula).
///
/// `x` holds `scales.len()` rows of `cols` values; `smooth` (length `cols`) multiplies
/// each column first (SmoothQuant); `q` (same length as `x`) gets the int8 values and
/// `scales[t] = max|y| / 127`.
///
/// # Errors
/// [`KernelError::Length`] (nothing written) if `x.len() != scales.len() * cols`,
/// `q.len() != x.len()` or `smooth.len() != cols`; [`KernelError::Overflow`] if
/// `scales.len() * cols` overflows; [`KernelError::NonFinite`] with the flat index into `x`
/// of the first element whose smoothed value is NaN or ±Inf (`q` and `scales` are then
/// unspecified).
///
/// ```
/// use candle_compress::kernels::gemm::quantize_rows_i8;
/// let x = [1.0f32, -2.0, 0.5, 0.0, 0.0, 0.0];
/// let (mut q, mut s) = ([0i8; 6], [0f32; 2]);
/// quantize_rows_i8(&x, 3, None, &mut q, &mut s).unwrap();
/// assert_eq!(q, [64, -127, 32, 0, 0, 0]); // 1/(2/127) = 63.5 rounds away to 64
/// assert_eq!(s, [2.0 / 127.0, 0.0]);
/// let e = quantize_rows_i8(&[0.0, f32::INFINITY], 2, None, &mut q[..2], &mut s[..1]);
/// assert_eq!(e.unwrap_err().non_finite_index(), Some(1));
/// ```
pub fn quantize_rows_i8(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    q: &mut [i8],
    scales: &mut [f32],
) -> Result<(), KernelError> {
    GemmKernels::active().quantize_rows_i8(x, cols, smooth, q, scales)
}

/// Per-row int8 quantization with given scales (static or percentile calibration):
/// `q = clamp(round_half_away(y / scale), -127, 127)`, `q = 0` where `scale == 0`.
///
/// # Errors
/// As [`quantize_rows_i8`], and [`KernelError::InvalidArgument`] (nothing written) if a
/// scale is negative or not finite.
///
/// ```
/// use candle_compress::kernels::gemm::quantize_rows_i8_with_scales;
/// let mut q = [0i8; 3];
/// quantize_rows_i8_with_scales(&[0.25, -3.0, 0.0], 3, Some(&[2.0, 1.0, 1.0]), &[0.01], &mut q).unwrap();
/// assert_eq!(q, [50, -127, 0]);
/// ```
pub fn quantize_rows_i8_with_scales(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    scales: &[f32],
    q: &mut [i8],
) -> Result<(), KernelError> {
    GemmKernels::active().quantize_rows_i8_with_scales(x, cols, smooth, scales, q)
}

/// W8A8 matrix product: `out[t*out_features + o] = (acc as f32) * (x_scales[t] *
/// w.scales()[o]) + bias[o]` with `acc = Σ_k qx[t,k]·w[o,k]` exact (see the module docs).
///
/// `qx` is row-major `[rows, in_features]`. Multi-threaded with rayon (the global pool,
/// so `RAYON_NUM_THREADS` is honoured) when the work is large; the result does not depend
/// on the ISA or the thread count.
///
/// # Errors
/// [`KernelError::Length`] (nothing written) if `qx.len() != rows * in_features`,
/// `x_scales.len() != rows`, `out.len() != rows * out_features` or
/// `bias.len() != out_features`; [`KernelError::Overflow`] if one of those products
/// overflows.
///
/// ```
/// use candle_compress::kernels::gemm::{matmul_w8a8, PackedW8};
/// let w = PackedW8::pack(&[1, 2, 3, -1, -2, -3], &[0.5, 0.25], 2, 3).unwrap();
/// let mut out = [0f32; 2];
/// matmul_w8a8(&[10, 20, 30], &[0.1], 1, &w, Some(&[1.0, 0.0]), &mut out).unwrap();
/// // acc = [140, -140]
/// assert_eq!(out, [140.0 * (0.1f32 * 0.5) + 1.0, -140.0 * (0.1f32 * 0.25)]);
/// let e = matmul_w8a8(&[10, 20], &[0.1], 1, &w, None, &mut out).unwrap_err();
/// assert_eq!(e.to_string(), "matmul_w8a8: qx has 2 elements, need rows × in_features = 1 × 3 = 3");
/// ```
pub fn matmul_w8a8(
    qx: &[i8],
    x_scales: &[f32],
    rows: usize,
    w: &PackedW8,
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    GemmKernels::active().matmul_w8a8(qx, x_scales, rows, w, bias, out)
}

/// W4A8 matrix product with per-group weight scales:
/// `out[t,o] = (Σ_g (acc_g as f32) * w.scales[o,g]) * x_scales[t] + bias[o]`, the sum taken
/// in group order starting from 0.0 (see the module docs).
///
/// # Errors
/// As [`matmul_w8a8`].
///
/// ```
/// use candle_compress::kernels::gemm::{matmul_w4a8, PackedW4};
/// let w: Vec<i8> = (0..16).map(|k| if k < 8 { 1 } else { -2 }).collect(); // 1 output, 16 inputs
/// let p = PackedW4::pack(&w, &[0.5, 0.25], 1, 16, 8).unwrap();
/// let mut out = [0f32; 1];
/// matmul_w4a8(&[3; 16], &[2.0], 1, &p, None, &mut out).unwrap();
/// // acc_0 = 24, acc_1 = -48: (24*0.5 + -48*0.25) * 2 = 0
/// assert_eq!(out, [0.0]);
/// ```
pub fn matmul_w4a8(
    qx: &[i8],
    x_scales: &[f32],
    rows: usize,
    w: &PackedW4,
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    GemmKernels::active().matmul_w4a8(qx, x_scales, rows, w, bias, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_w8(
        qx: &[i8],
        xs: &[f32],
        rows: usize,
        w: &[i8],
        ws: &[f32],
        n: usize,
        b: Option<&[f32]>,
    ) -> Vec<f32> {
        let k = w.len() / n.max(1);
        let mut out = vec![0f32; rows * n];
        for t in 0..rows {
            for o in 0..n {
                let acc: i64 = (0..k)
                    .map(|i| i64::from(qx[t * k + i]) * i64::from(w[o * k + i]))
                    .sum();
                let v = acc as f32 * (xs[t] * ws[o]);
                out[t * n + o] = match b {
                    Some(b) => v + b[o],
                    None => v,
                };
            }
        }
        out
    }

    #[test]
    fn pack_roundtrip_and_sizes() {
        for (n, k) in [(1, 1), (3, 7), (17, 33), (16, 4), (0, 5), (4, 0)] {
            let w: Vec<i8> = (0..n * k).map(|i| (i * 37 % 256) as u8 as i8).collect();
            let s: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
            let p = PackedW8::pack(&w, &s, n, k).unwrap();
            assert_eq!(p.weights(), w);
            assert_eq!(p.scales(), &s[..]);
            assert_eq!(
                p.size_bytes(),
                n.div_ceil(16) * k.div_ceil(4) * 64 + n * 4 + n.div_ceil(16) * 16 * 4
            );
        }
        let w4: Vec<i8> = (0..5 * 70).map(|i| (i % 16) as i8 - 8).collect();
        let p4 = PackedW4::pack(&w4, &[1.0; 5 * 3], 5, 70, 32).unwrap();
        assert_eq!(p4.weights(), w4);
    }

    #[test]
    fn scalar_w8a8_matches_naive() {
        let (rows, n, k) = (3, 19, 37);
        let w: Vec<i8> = (0..n * k)
            .map(|i| ((i * 7919) % 255) as i32 as i8)
            .collect();
        let qx: Vec<i8> = (0..rows * k)
            .map(|i| ((i * 104729) % 256) as u8 as i8)
            .collect();
        let ws: Vec<f32> = (0..n).map(|i| 0.01 * (i as f32 + 1.0)).collect();
        let xs = [0.5f32, 0.03, 1.7];
        let b: Vec<f32> = (0..n).map(|i| i as f32 - 3.0).collect();
        let p = PackedW8::pack(&w, &ws, n, k).unwrap();
        let mut out = vec![0f32; rows * n];
        let sk = GemmKernels::for_isa(Isa::Scalar).unwrap();
        sk.matmul_w8a8(&qx, &xs, rows, &p, Some(&b), &mut out)
            .unwrap();
        assert_eq!(out, naive_w8(&qx, &xs, rows, &w, &ws, n, Some(&b)));
        sk.matmul_w8a8(&qx, &xs, rows, &p, None, &mut out).unwrap();
        assert_eq!(out, naive_w8(&qx, &xs, rows, &w, &ws, n, None));
    }

    #[test]
    fn row_quant_rounding_and_errors() {
        let sk = GemmKernels::for_isa(Isa::Scalar).unwrap();
        let x = [127.0f32, 0.5, -0.5, 1.5, -2.5, 126.5];
        let (mut q, mut s) = ([0i8; 6], [0f32; 1]);
        sk.quantize_rows_i8(&x, 6, None, &mut q, &mut s).unwrap();
        assert_eq!(s[0], 1.0);
        assert_eq!(q, [127, 1, -1, 2, -3, 127]);
        let x = [1.0f32, 2.0, 3.0, f32::NAN, 1.0, 1.0];
        let mut s2 = [0f32; 2];
        let nf = |r: Result<(), KernelError>| r.map_err(|e| e.non_finite_index());
        assert_eq!(
            nf(sk.quantize_rows_i8(&x, 3, None, &mut q, &mut s2)),
            Err(Some(3))
        );
        let big = [f32::MAX, 1.0];
        let mut q2 = [0i8; 2];
        let mut s1 = [0f32; 1];
        assert_eq!(
            nf(sk.quantize_rows_i8(&big, 2, Some(&[2.0, 1.0]), &mut q2, &mut s1)),
            Err(Some(0))
        );
        assert_eq!(sk.quantize_rows_i8(&[], 0, None, &mut [], &mut s1), Ok(()));
        assert_eq!(s1, [0.0]);
    }

    /// The message of the error `r` holds (panics if `r` is `Ok`: a test failure).
    fn message(r: Result<(), KernelError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn row_quantization_length_mismatches_are_errors_not_panics() {
        let x = [1.0f32; 6];
        let (mut q, mut s) = ([0i8; 6], [0f32; 2]);
        for k in GemmKernels::available() {
            assert_eq!(
                message(k.quantize_rows_i8(&x[..5], 3, None, &mut q[..5], &mut s)),
                "quantize_rows_i8: x has 5 elements, need rows × cols = 2 × 3 = 6"
            );
            assert_eq!(
                message(k.quantize_rows_i8(&x, 3, None, &mut q[..4], &mut s)),
                "quantize_rows_i8: q has 4 elements, need x.len() = 6"
            );
            assert_eq!(
                message(k.quantize_rows_i8(&x, 3, Some(&[1.0; 2]), &mut q, &mut s)),
                "quantize_rows_i8: smooth has 2 elements, need cols = 3"
            );
            // rows × cols overflows: an error, not a wrapped product that might match.
            assert_eq!(
                message(k.quantize_rows_i8(&x, usize::MAX, None, &mut q, &mut s)),
                format!(
                    "quantize_rows_i8: rows × cols = 2 × {} overflows usize",
                    usize::MAX
                )
            );
            assert_eq!(
                message(k.quantize_rows_i8_with_scales(&x, 3, None, &[1.0; 3], &mut q)),
                "quantize_rows_i8_with_scales: x has 6 elements, need rows × cols = 3 × 3 = 9"
            );
            assert_eq!(
                message(k.quantize_rows_i8_with_scales(&x, 3, None, &[1.0, -0.5], &mut q)),
                "quantize_rows_i8_with_scales: invalid scales: scales[1] is -0.5; every scale \
                 must be finite and >= 0"
            );
            assert!(k
                .quantize_rows_i8_with_scales(&x, 3, None, &[f32::NAN, 1.0], &mut q)
                .is_err());
            assert!(k
                .quantize_rows_i8_with_scales(&x, usize::MAX, None, &[1.0; 2], &mut q)
                .is_err());
        }
        // Refused calls write nothing.
        assert_eq!((q, s), ([0; 6], [0.0; 2]));
        assert_eq!(
            message(quantize_rows_i8(&x, 4, None, &mut q, &mut s)),
            "quantize_rows_i8: x has 6 elements, need rows × cols = 2 × 4 = 8"
        );
        assert!(quantize_rows_i8_with_scales(&x, 2, None, &[1.0; 2], &mut q).is_err());
    }

    #[test]
    fn matmul_length_mismatches_are_errors_not_panics() {
        // 2 outputs, 3 inputs.
        let w8 = PackedW8::pack(&[1, 2, 3, -1, -2, -3], &[0.5, 0.25], 2, 3).unwrap();
        let w4 = PackedW4::pack(&[1, 2, 3, -1, -2, -3], &[0.5, 0.25], 2, 3, 8).unwrap();
        let qx = [1i8; 6];
        let mut out = [7f32; 4];
        for k in GemmKernels::available()
            .into_iter()
            .chain([GemmKernels::amx_emulated()])
        {
            for op in ["matmul_w8a8", "matmul_w4a8"] {
                let run =
                    |qx: &[i8], xs: &[f32], rows: usize, b: Option<&[f32]>, out: &mut [f32]| {
                        if op == "matmul_w8a8" {
                            k.matmul_w8a8(qx, xs, rows, &w8, b, out)
                        } else {
                            k.matmul_w4a8(qx, xs, rows, &w4, b, out)
                        }
                    };
                assert_eq!(
                    message(run(&qx[..5], &[1.0; 2], 2, None, &mut out)),
                    format!("{op}: qx has 5 elements, need rows × in_features = 2 × 3 = 6")
                );
                assert_eq!(
                    message(run(&qx, &[1.0; 3], 2, None, &mut out)),
                    format!("{op}: x_scales has 3 elements, need rows = 2")
                );
                assert_eq!(
                    message(run(&qx, &[1.0; 2], 2, None, &mut out[..3])),
                    format!("{op}: out has 3 elements, need rows × out_features = 2 × 2 = 4")
                );
                assert_eq!(
                    message(run(&qx, &[1.0; 2], 2, Some(&[0.0; 3]), &mut out)),
                    format!("{op}: bias has 3 elements, need out_features = 2")
                );
                // rows × in_features overflows: refused before any product is formed.
                assert_eq!(
                    message(run(&qx, &[1.0; 2], usize::MAX, None, &mut out)),
                    format!(
                        "{op}: rows × in_features = {} × 3 overflows usize",
                        usize::MAX
                    )
                );
                // 0 rows with 0-length slices is fine; a huge row count with empty
                // weights still needs consistent slices.
                assert_eq!(run(&[], &[], 0, None, &mut []), Ok(()));
            }
        }
        assert_eq!(out, [7.0; 4]);
        // The free functions check the same way.
        assert!(matmul_w8a8(&qx, &[1.0; 2], 3, &w8, None, &mut out).is_err());
        assert!(matmul_w4a8(&qx, &[1.0; 2], 2, &w4, None, &mut out[..1]).is_err());
        // A product that overflows only on the output side: in_features = 0.
        let empty_in = PackedW8::pack(&[], &[1.0; 2], 2, 0).unwrap();
        assert_eq!(
            message(matmul_w8a8(&[], &[], usize::MAX, &empty_in, None, &mut out)),
            format!(
                "matmul_w8a8: x_scales has 0 elements, need rows = {}",
                usize::MAX
            )
        );
    }

    #[test]
    fn pack_argument_errors_are_errors_not_panics() {
        let e = PackedW8::pack(&[1; 5], &[1.0; 2], 2, 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PackedW8::pack: w has 5 elements, need out × inp = 2 × 3 = 6"
        );
        let e = PackedW8::pack(&[1; 6], &[1.0; 3], 2, 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PackedW8::pack: scales has 3 elements, need out = 2"
        );
        let e = PackedW8::pack(&[1; 6], &[1.0; 2], 2, usize::MAX).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "PackedW8::pack: out × inp = 2 × {} overflows usize",
                usize::MAX
            )
        );
        for group in [0, 12] {
            let e = PackedW4::pack(&[1; 6], &[1.0; 2], 2, 3, group).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("PackedW4::pack: invalid group: must be a positive multiple of 8, found {group}")
            );
        }
        let e = PackedW4::pack(&[1; 5], &[1.0; 2], 2, 3, 8).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PackedW4::pack: w has 5 elements, need out × inp = 2 × 3 = 6"
        );
        let e = PackedW4::pack(&[1; 6], &[1.0; 1], 2, 3, 8).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PackedW4::pack: scales has 1 elements, need out × ⌈inp / group⌉ = 2 × ⌈3 / 8⌉ = 2"
        );
        let e = PackedW4::pack(&[1, 2, 8, 0, 0, -9], &[1.0; 2], 2, 3, 8).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PackedW4::pack: invalid w: w[2] is 8; int4 weights must lie in [-8, 7]"
        );
        let e = PackedW4::pack(&[1; 6], &[1.0; 2], usize::MAX, 3, 8).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "PackedW4::pack: out × inp = {} × 3 overflows usize",
                usize::MAX
            )
        );
        // A group that pads a row beyond usize bytes is refused rather than wrapped, and
        // one whose padded buffer cannot be allocated is refused rather than aborting.
        let e = PackedW4::pack(&[1], &[1.0], 1, 1, usize::MAX - 7).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "PackedW4::pack: panels × k4 steps × 32 bytes = {} × 32 overflows usize",
                (usize::MAX - 7) / 4
            )
        );
        let e = PackedW4::pack(&[1], &[1.0], 1, 1, 1 << 60).unwrap_err();
        assert!(e.to_string().contains("cannot be allocated"), "{e}");
    }

    #[test]
    fn unavailable_isa_is_an_error() {
        let e = GemmKernels::for_isa(Isa::Neon);
        if cfg!(not(target_arch = "aarch64")) {
            assert_eq!(e, Err(IsaUnavailable { isa: Isa::Neon }));
        }
        assert!(GemmKernels::available().contains(&GemmKernels::active()));
    }
}
