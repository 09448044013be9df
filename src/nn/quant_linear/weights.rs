//! The packed integer weights of a layer ([`PackedWeights`]) and how float weights become
//! them: int8 per output channel, symmetric int4 groups, asymmetric int4 groups (the rules
//! in the module docs). Also the asymmetric group parameters GPTQ shares.

use std::sync::Arc;

use rayon::prelude::*;

use super::config::{QuantConfig, WeightQuant};
use super::rows::quantize_rows;
use crate::error::{Error, Result};
use crate::kernels::gemm::{PackedW4, PackedW8};

/// The packed integer weights, shared between clones.
#[derive(Clone)]
pub(super) enum PackedWeights {
    W8(Arc<PackedW8>),
    W4(Arc<PackedW4>),
}

/// Quantizes and packs row-major `w` (`[out, inp]`), scaled column-wise by `smooth` first.
pub(super) fn quantize_weights(
    w: &[f32],
    out: usize,
    inp: usize,
    smooth: Option<&[f32]>,
    config: &QuantConfig,
) -> Result<PackedWeights> {
    let n = out * inp;
    let bad = |i: usize| {
        let value = w.get(i).copied().unwrap_or(f32::NAN);
        Error::NonFinite {
            op: "QuantLinear weight",
            index: i,
            value: match smooth {
                Some(s) if value.is_finite() => value * s[i % inp],
                _ => value,
            },
        }
    };
    match config.weights {
        WeightQuant::Int8PerChannel => {
            let mut q = vec![0i8; n];
            let mut scales = vec![0f32; out];
            quantize_rows(w, inp, smooth, &mut q, &mut scales).map_err(|e| e.or_non_finite(bad))?;
            Ok(PackedWeights::W8(Arc::new(PackedW8::pack(
                &q, &scales, out, inp,
            )?)))
        }
        WeightQuant::Int4Grouped { group } | WeightQuant::Int4GroupedAsym { group } => {
            let asym = config.weights.has_offsets();
            let mut q = vec![0i8; n];
            let groups = config.scales_per_row(inp);
            let mut scales = vec![0f32; out * groups];
            // Written only in the asymmetric mode.
            let mut offsets = vec![0f32; out * groups];
            let first_bad = w
                .par_chunks(inp)
                .zip(q.par_chunks_mut(inp))
                .zip(scales.par_chunks_mut(groups))
                .zip(offsets.par_chunks_mut(groups))
                .enumerate()
                .filter_map(|(row, (((wr, qr), sr), mr))| {
                    let res = if asym {
                        quantize_row_int4_asym(wr, smooth, group, qr, sr, mr)
                    } else {
                        quantize_row_int4(wr, smooth, group, qr, sr)
                    };
                    res.err().map(|c| row * inp + c)
                })
                .min();
            if let Some(i) = first_bad {
                return Err(bad(i));
            }
            let packed = if asym {
                PackedW4::pack_asym(&q, &scales, &offsets, out, inp, group)?
            } else {
                PackedW4::pack(&q, &scales, out, inp, group)?
            };
            Ok(PackedWeights::W4(Arc::new(packed)))
        }
    }
}

/// `y = w · smooth` of one group into `y` (same length as `wg`); the column of the first
/// non-finite value.
fn smoothed_group(
    wg: &[f32],
    smooth: Option<&[f32]>,
    start: usize,
    y: &mut [f32],
) -> std::result::Result<(), usize> {
    match smooth {
        Some(s) => {
            let sg = &s[start..start + wg.len()];
            y.iter_mut()
                .zip(wg.iter().zip(sg))
                .for_each(|(d, (v, k))| *d = v * k);
        }
        None => y.copy_from_slice(wg),
    }
    match y.iter().position(|v| !v.is_finite()) {
        Some(c) => Err(start + c),
        None => Ok(()),
    }
}

/// Asymmetric int4 quantization of one weight row, per group (the module docs' rule):
/// `scale = (max − min) / 15`, `offset = min + 8·scale` (f64, rounded to f32),
/// `q = clamp(round_half_away((y − offset) / scale), −8, 7)`; a constant group gets
/// `scale = 0`, `offset = y`, codes 0. Returns the column of the first non-finite `y`.
fn quantize_row_int4_asym(
    w: &[f32],
    smooth: Option<&[f32]>,
    group: usize,
    q: &mut [i8],
    scales: &mut [f32],
    offsets: &mut [f32],
) -> std::result::Result<(), usize> {
    let mut y = vec![0f32; group];
    for (g, (((wg, qg), scale), offset)) in w
        .chunks(group)
        .zip(q.chunks_mut(group))
        .zip(scales.iter_mut())
        .zip(offsets.iter_mut())
        .enumerate()
    {
        let y = &mut y[..wg.len()];
        smoothed_group(wg, smooth, g * group, y)?;
        let (lo, hi) = y
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        let (s, m) = asym_params(lo, hi);
        (*scale, *offset) = (s, m);
        if s == 0.0 {
            qg.fill(0);
        } else {
            let (s, m) = (f64::from(s), f64::from(m));
            for (qv, &v) in qg.iter_mut().zip(y.iter()) {
                *qv = ((f64::from(v) - m) / s).round().clamp(-8.0, 7.0) as i8;
            }
        }
    }
    Ok(())
}

/// Scale and offset of a group with finite range `[lo, hi]`: `((hi − lo) / 15,
/// lo + 8·scale)` in f64, rounded to f32; `(0, lo)` for a constant group.
pub(crate) fn asym_params(lo: f32, hi: f32) -> (f32, f32) {
    let s = ((f64::from(hi) - f64::from(lo)) / 15.0) as f32;
    if s == 0.0 {
        return (0.0, lo);
    }
    (s, (f64::from(lo) + 8.0 * f64::from(s)) as f32)
}

/// Symmetric int4 quantization of one weight row, per group: `scale = amax / 7`,
/// `q = round_half_away(y / scale)` clamped to `[-7, 7]`, `y = w · smooth`. Returns the
/// column of the first non-finite `y`.
fn quantize_row_int4(
    w: &[f32],
    smooth: Option<&[f32]>,
    group: usize,
    q: &mut [i8],
    scales: &mut [f32],
) -> std::result::Result<(), usize> {
    let mut y = vec![0f32; group];
    for (g, ((wg, qg), scale)) in w
        .chunks(group)
        .zip(q.chunks_mut(group))
        .zip(scales.iter_mut())
        .enumerate()
    {
        let y = &mut y[..wg.len()];
        match smooth {
            Some(s) => {
                let sg = &s[g * group..g * group + wg.len()];
                y.iter_mut()
                    .zip(wg.iter().zip(sg))
                    .for_each(|(d, (v, k))| *d = v * k);
            }
            None => y.copy_from_slice(wg),
        }
        if let Some(c) = y.iter().position(|v| !v.is_finite()) {
            return Err(g * group + c);
        }
        let amax = y.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 7.0;
        *scale = d;
        if d == 0.0 {
            qg.fill(0);
        } else {
            for (qv, v) in qg.iter_mut().zip(y.iter()) {
                *qv = (v / d).round().clamp(-7.0, 7.0) as i8;
            }
        }
    }
    Ok(())
}
