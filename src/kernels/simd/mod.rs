//! A vector of f32 lanes: the operations the kernels written once per algorithm (not once
//! per register width) are built from, implemented for each ISA's register.
//!
//! An algorithm is a generic `#[inline(always)] unsafe fn` over [`F32Vector`] (see
//! `blockwise/generic.rs`); each ISA instantiates it inside a `#[target_feature]` function,
//! so after inlining every operation below compiles to the instruction it names, in a
//! function that has the features enabled. The methods are `unsafe` only because of those
//! features: every memory access goes through a bounds-checked slice.
//!
//! Implemented for `__m256` (AVX2 + F16C, and FMA for [`F32Vector::mul_add`]; 8 lanes) and
//! `__m512` (AVX-512 F/BW, 16 lanes) in `x86.rs`, and for NEON's `float32x4_t` (4 lanes) in
//! `neon.rs`. Where an aarch64 instruction's rule differs from the x86 one the trait states
//! (`maxps` on NaN, the out-of-range conversion, ordered compares), the NEON impl spells
//! the x86 rule out, so the generic algorithms and their scalar twins agree on every ISA.
//! The operations are chosen so that one generic algorithm gives the same bits on every
//! ISA: IEEE lane arithmetic, exact conversions, and comparisons and rounding that are
//! defined per lane.

/// The largest f32 below 0.5: `trunc(v + copysign(HALF_DOWN, v))` rounds half away from
/// zero (see [`F32Vector::round_half_away`]).
const HALF_DOWN: f32 = 0.499_999_97;

/// The widest [`F32Vector::LANES`] (`__m512`), for stack buffers of one vector.
const MAX_LANES: usize = 16;

/// A vector of [`F32Vector::LANES`] f32 lanes with its i32 and mask companions.
///
/// Every method is `unsafe` for one reason: the CPU must have the implementing ISA's
/// features (callers are `#[target_feature]` functions reached through a detection token).
/// Slice arguments are read or written at `[i..i + LANES]` (or the stated width) and
/// panic when that range is out of bounds, like slice indexing.
pub(crate) trait F32Vector: Copy {
    /// f32 lanes per vector.
    const LANES: usize;
    /// [`Self::LANES`] i32 lanes.
    type I32: Copy;
    /// One boolean per lane, from a comparison.
    type Mask: Copy;

    /// Every lane `v`.
    ///
    /// # Safety
    /// The CPU must have the implementing ISA's features (for every method of the trait).
    unsafe fn splat(v: f32) -> Self;
    /// Loads `x[i..i + LANES]`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn load(x: &[f32], i: usize) -> Self;
    /// Stores the lanes into `out[i..i + LANES]`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn store(self, out: &mut [f32], i: usize);
    /// Loads `x[i..i + n]` (`n <= LANES`) into lanes `0..n`, `+0.0` in the others: a
    /// row's last, partial vector. Reads no element outside `x[i..i + n]` (masked loads
    /// on x86, a copy through a stack buffer on NEON), so the row may end anywhere.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn load_partial(x: &[f32], i: usize, n: usize) -> Self;
    /// Stores lanes `0..n` (`n <= LANES`) into `out[i..i + n]`, writing nothing else.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn store_partial(self, out: &mut [f32], i: usize, n: usize);
    /// Loads `q[i..i + LANES]` converted to f32 (exact).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn load_i8(q: &[i8], i: usize) -> Self;
    /// Loads the little-endian f16 values in `bytes[2·i..2·(i + LANES)]` converted to f32
    /// (exact, like `f32::from(half::f16)`; NaN payloads kept). Bytes, not `&[u16]`: the
    /// half-precision codec reads an unaligned wire buffer (`halfconv`).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn load_f16_le(bytes: &[u8], i: usize) -> Self;
    /// Stores the lanes rounded to f16 (nearest even, like `half::f16::from_f32`; beyond
    /// ±65504 they become ±Inf, NaN stays NaN) as little-endian bytes into
    /// `out[2·i..2·(i + LANES)]`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn store_f16_le(self, out: &mut [u8], i: usize);
    /// [`F32Vector::load_f16_le`] from the f16 bit patterns `h[i..i + LANES]` (a group's
    /// scales: one vector per group, so the byte copy costs nothing measurable).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    #[inline(always)]
    unsafe fn load_f16(h: &[u16], i: usize) -> Self {
        const { assert!(Self::LANES <= MAX_LANES) };
        let mut bytes = [0u8; 2 * MAX_LANES];
        for (b, v) in bytes.chunks_exact_mut(2).zip(&h[i..i + Self::LANES]) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        // SAFETY: the caller guarantees the features of `Self`'s ISA.
        unsafe { Self::load_f16_le(&bytes[..2 * Self::LANES], 0) }
    }
    /// [`F32Vector::store_f16_le`] into the f16 bit patterns `out[i..i + LANES]`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    #[inline(always)]
    unsafe fn store_f16(self, out: &mut [u16], i: usize) {
        const { assert!(Self::LANES <= MAX_LANES) };
        let mut bytes = [0u8; 2 * MAX_LANES];
        // SAFETY: the caller guarantees the features of `Self`'s ISA.
        unsafe { self.store_f16_le(&mut bytes[..2 * Self::LANES], 0) };
        for (o, b) in out[i..i + Self::LANES]
            .iter_mut()
            .zip(bytes.chunks_exact(2))
        {
            *o = u16::from_le_bytes([b[0], b[1]]);
        }
    }

    /// Clears the sign bit of every lane (`f32::abs`, NaN stays NaN).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn abs(self) -> Self;
    /// Keeps only the sign bit of every lane (`-0.0` or `+0.0`).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn sign(self) -> Self;
    /// Bitwise or.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn or(self, other: Self) -> Self;
    /// Lane-wise maximum of the bit patterns read as i32. On sign-cleared lanes
    /// ([`F32Vector::abs`]) this is the f32 maximum with NaN above +Inf, whatever the
    /// operand order (unlike `maxps`).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn max_bits(self, other: Self) -> Self;
    /// The largest lane bit pattern read as i32, returned as u32 (the lanes are expected
    /// to be sign-cleared, so the value is their [`F32Vector::max_bits`] maximum).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn reduce_max_bits(self) -> u32;
    /// The lanes' sum by halves: lane `k` plus lane `k + LANES/2` for each `k` below
    /// `LANES/2`, then the same on those, down to one (IEEE `+` at each step). This is the
    /// order of the scalar twins' lane reductions (`act::scalar::reduce`).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn reduce_add(self) -> f32;
    /// The lanes' maximum by halves, in the order of [`F32Vector::reduce_add`], each step
    /// `F32Vector::max(lane k, lane k + half)` (the `maxps` rule: the upper lane when
    /// either is NaN).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn reduce_max(self) -> f32;

    /// Lane-wise IEEE `+`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn add(self, other: Self) -> Self;
    /// Lane-wise IEEE `·` (never fused with a following add).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn mul(self, other: Self) -> Self;
    /// Lane-wise IEEE `/`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn div(self, other: Self) -> Self;
    /// Lane-wise IEEE `−`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn sub(self, other: Self) -> Self;
    /// Lane-wise `self · a + b` with one rounding (FMA, like `f32::mul_add`).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    /// Lane-wise `if self > other { self } else { other }` (the `maxps` rule: `other` when
    /// either is NaN).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn max(self, other: Self) -> Self;
    /// Lane-wise `if self < other { self } else { other }` (the `minps` rule: `other` when
    /// either is NaN).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn min(self, other: Self) -> Self;
    /// Rounds each lane to the nearest integer, ties to even (`f32::round_ties_even`; NaN
    /// and infinities unchanged).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn round_even(self) -> Self;
    /// Rounds each lane toward zero (`f32::trunc`; NaN and infinities unchanged).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn trunc(self) -> Self;
    /// `2^n` for lanes holding an integer `n` in `-126..=127` (built from the exponent
    /// bits: `((n + 127) << 23)`); other lanes give unspecified bits.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn pow2(self) -> Self;
    /// `self` in the lanes where `m` is true, `other` elsewhere.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self;
    /// Converts to i32 rounding toward zero; lanes outside the i32 range and NaN give
    /// `i32::MIN` (the x86 "integer indefinite").
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn trunc_i32(self) -> Self::I32;

    /// `self != other` per lane, false when either is NaN.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn ne(self, other: Self) -> Self::Mask;
    /// `self < other` per lane, false when either is NaN.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn lt(self, other: Self) -> Self::Mask;
    /// The lanes where `m` is true, `+0.0` elsewhere.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn zero_unless(self, m: Self::Mask) -> Self;
    /// `m` as bits: bit `j` is lane `j`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn mask_bits(m: Self::Mask) -> u32;
    /// True in lanes `0..n` (`n <= LANES`), false in the others: the lanes of
    /// [`F32Vector::load_partial`] that hold elements.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn first_lanes(n: usize) -> Self::Mask;

    /// Stores i32 lanes in `[-128, 127]` as i8 into `out[i..i + LANES]` (exact in that
    /// range; outside it the ISAs differ).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn store_i8(v: Self::I32, out: &mut [i8], i: usize);
    /// Stores four vectors of i32 lanes in `[-128, 127]` as i8, `v[k]` into
    /// `out[i + k·LANES..]`, `4·LANES` bytes in all (the fast form of four
    /// [`F32Vector::store_i8`]).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn store_i8x4(v: [Self::I32; 4], out: &mut [i8], i: usize);

    /// Rounds each lane half away from zero (`f32::round`) and converts to i32:
    /// `trunc(v + copysign(0.49999997, v))`.
    ///
    /// Exact for `|v| < 2^23` (outside that range the ISAs may differ: NEON overrides this
    /// with `fcvtas`, which rounds half away directly). Below 0.5 the sum stays below 1 (at
    /// most `1 - 2^-24`); at 0.5 it is `1 - 2^-25`, a tie that rounds to even, 1.0; from 0.5
    /// up the fraction `f` of `v` is a multiple of `ulp(v) >= 2^-24`, so `f + 0.49999997`
    /// is below `1 - ulp/2` when `f < 0.5` and at least `1 - 2^-25` (rounding to 1) when
    /// `f >= 0.5`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    #[inline(always)]
    unsafe fn round_half_away(self) -> Self::I32 {
        // SAFETY: the caller guarantees the features of `Self`'s ISA.
        unsafe { self.add(self.sign().or(Self::splat(HALF_DOWN))).trunc_i32() }
    }
}

/// Emits, in the invoking module, one safe entry point per listed kernel: a function
/// taking the ISA's detection token (`$token`) and the kernel's arguments, around a
/// `#[target_feature(enable = $feat)]` function that calls `$kernel` (a generic algorithm
/// instantiated for the ISA's vector type, e.g. `super::generic::exp_in_place::<__m256>`).
///
/// The invoking module vouches that holding `$token` proves every feature in `$feat`, and
/// that `$feat` covers the operations of the vector type the kernels are instantiated for.
macro_rules! target_feature_entries {
    ($token:ty, $feat:literal; $(
        $(#[$doc:meta])*
        $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $kernel:path;
    )*) => {$(
        $(#[$doc])*
        pub(crate) fn $name(_cpu: $token, $($arg: $ty),*) $(-> $ret)? {
            /// # Safety
            /// The CPU must have the enabled features; arguments as checked by the caller.
            #[target_feature(enable = $feat)]
            unsafe fn kernel($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: the enabled features cover the vector type's operations (see
                // the macro).
                unsafe { $kernel($($arg),*) }
            }
            // SAFETY: the token proves the features `kernel` enables (see the macro).
            unsafe { kernel($($arg),*) }
        }
    )*};
}
pub(crate) use target_feature_entries;

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;
