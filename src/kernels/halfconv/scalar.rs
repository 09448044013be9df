//! Portable f32 ⇄ f16 conversions: the definition of correct for this family.
//!
//! Element by element with `half`'s exact conversions (round to nearest even). The
//! non-finite check looks at the f16 result: its exponent field is all ones exactly when
//! the input was NaN/±Inf or rounded beyond ±65504.

use half::f16;

const F16_EXP_MASK: u16 = 0x7c00;

/// See [`super::f32_to_f16_le`]; lengths already checked by the caller.
pub(crate) fn f32_to_f16_le(x: &[f32], out: &mut [u8]) -> Result<(), usize> {
    for (i, (&v, d)) in x.iter().zip(out.chunks_exact_mut(2)).enumerate() {
        let bits = f16::from_f32(v).to_bits();
        if bits & F16_EXP_MASK == F16_EXP_MASK {
            return Err(i);
        }
        d.copy_from_slice(&bits.to_le_bytes());
    }
    Ok(())
}

/// See [`super::f16_le_to_f32`]; lengths already checked by the caller.
pub(crate) fn f16_le_to_f32(bytes: &[u8], out: &mut [f32]) -> Result<(), usize> {
    for (i, (s, o)) in bytes.chunks_exact(2).zip(out.iter_mut()).enumerate() {
        let bits = u16::from_le_bytes([s[0], s[1]]);
        if bits & F16_EXP_MASK == F16_EXP_MASK {
            return Err(i);
        }
        *o = f16::from_bits(bits).to_f32();
    }
    Ok(())
}
