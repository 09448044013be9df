//! Seeded pseudo-random generators, so every failure reproduces from its seed.
//!
//! Three distinct generators live here because the tests were written against each of
//! them and their expected behaviour (tolerances tuned on the data, pinned cases) depends
//! on the exact numbers: they are not interchangeable. Each struct holds its raw state;
//! constructing it as `Gen(seed)` uses the seed as that state unchanged.

use std::f64::consts::TAU;

/// 2^24: the number of values a 24-bit fraction can take.
const TWO_POW_24: f32 = (1u64 << 24) as f32;
/// 2^53: the number of values a 53-bit fraction can take.
const TWO_POW_53: f64 = (1u64 << 53) as f64;

/// Maps the top 24 bits of `x` to `[-1, 1)` in steps of 2^-23; exact in f32.
fn signed_unit_f32(x: u64) -> f32 {
    ((x >> 40) as f32 / TWO_POW_24) * 2.0 - 1.0
}

/// Maps the top 53 bits of `x` to the open interval `(0, 1)` (midpoints of the 2^53
/// steps), so the result can go straight into `ln`.
fn open_unit_f64(x: u64) -> f64 {
    ((x >> 11) as f64 + 0.5) / TWO_POW_53
}

/// One standard-normal sample from two uniforms by Box–Muller (the cosine branch).
/// `u` must be in `(0, 1]` for a finite result.
pub fn box_muller(u: f64, v: f64) -> f32 {
    ((-2.0 * u.ln()).sqrt() * (TAU * v).cos()) as f32
}

/// xorshift64* (Vigna): shifts 12, 25, 27, output multiplied by `0x2545_F491_4F6C_DD1D`.
/// A zero state stays zero: seed it with a non-zero value or use [`Self::from_seed`].
pub struct XorShift64Star(pub u64);

impl XorShift64Star {
    /// Starts from `seed · 0x9E37_79B9_7F4A_7C15`, forced odd, so small and zero seeds give
    /// unrelated, non-zero streams; [`uniform`] and [`gaussian`] start here.
    pub fn from_seed(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Any i8, -128 included (the top byte).
    pub fn i8(&mut self) -> i8 {
        (self.next_u64() >> 56) as u8 as i8
    }

    /// An int4 code in `[-8, 7]` (the top four bits).
    pub fn i4(&mut self) -> i8 {
        (self.next_u64() >> 60) as i8 - 8
    }

    /// In `[lo, hi]`; both must fit in i8.
    pub fn range(&mut self, lo: i32, hi: i32) -> i8 {
        (lo + (self.next_u64() % (hi - lo + 1) as u64) as i32) as i8
    }

    /// In `[0, n)`; `n` must be non-zero.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// In `[-1, 1)`.
    pub fn f32(&mut self) -> f32 {
        signed_unit_f32(self.next_u64())
    }

    /// In `(0, 1)`.
    pub fn open_unit_f64(&mut self) -> f64 {
        open_unit_f64(self.next_u64())
    }

    /// Standard normal, from two [`Self::open_unit_f64`] draws.
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.open_unit_f64(), self.open_unit_f64());
        box_muller(u, v)
    }
}

/// `n` values in `[-1, 1)` from [`XorShift64Star::from_seed`]`(seed)`.
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = XorShift64Star::from_seed(seed);
    (0..n).map(|_| rng.f32()).collect()
}

/// `n` standard-normal values from [`XorShift64Star::from_seed`]`(seed)`.
pub fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = XorShift64Star::from_seed(seed);
    (0..n).map(|_| rng.normal()).collect()
}

/// xorshift64 (Marsaglia): shifts 13, 7, 17; the state is the output. A zero state stays
/// zero, so seed it with a non-zero value.
pub struct XorShift64(pub u64);

impl XorShift64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// In `[-1, 1)`.
    pub fn f32(&mut self) -> f32 {
        signed_unit_f32(self.next_u64())
    }

    /// In `(0, 1)`.
    pub fn open_unit_f64(&mut self) -> f64 {
        open_unit_f64(self.next_u64())
    }

    /// Standard normal, from two [`Self::open_unit_f64`] draws.
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.open_unit_f64(), self.open_unit_f64());
        box_muller(u, v)
    }
}

/// splitmix64 (Steele, Lea, Flood): any seed, zero included, gives a full-period stream.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `[-1, 1)`.
    pub fn f32(&mut self) -> f32 {
        signed_unit_f32(self.next_u64())
    }

    /// In `[0, 1)` (0 included: callers that take a logarithm clamp it).
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / TWO_POW_53
    }

    /// Standard normal; the first uniform is clamped to at least 1e-12 so `ln` stays
    /// finite.
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit_f64().max(1e-12), self.unit_f64());
        box_muller(u, v)
    }
}
