//! Packed weight layouts shared by every kernel (scalar, AVX2, AVX-VNNI, AVX-512 VNNI).
//!
//! Output channels are grouped in *panels* of [`NR`] = 16 channels. Inside a panel the
//! input dimension is cut in *k4 steps* of 4 consecutive inputs; one k4 step of one panel
//! is 16 channels × 4 inputs, stored channel-major:
//!
//! ```text
//! byte (j*4 + kk) of step t of panel p  =  w[p*16 + j, t*4 + kk]        (j < 16, kk < 4)
//! ```
//!
//! so one 64-byte line is exactly one `vpdpbusd` zmm operand (16 i32 lanes, each the dot
//! product of 4 consecutive inputs), two ymm operands for the 256-bit kernels (channels
//! 0..8 then 8..16), and — because `vpmaddubsw` + `vpmaddwd` also sum 4 consecutive bytes
//! into one i32 lane — the AVX2 operand too. One layout, every ISA: a packed matrix can
//! be run by any kernel. Missing channels (out not a multiple of 16) and inputs (in not a
//! multiple of 4, or of the int4 group) are zero padding, which adds nothing to any dot
//! product.
//!
//! Int4 ([`PackedW4`]) uses the same element order with two weights per byte: a k4 step
//! is 32 bytes, byte `b` holds element `b` in its low nibble and element `b + 32` in its
//! high nibble (so the low nibbles are channels 0..8 and the high nibbles channels
//! 8..16, each already in the 8-bit layout above). Nibbles store `w + 8` (0..=15).

use super::K_BLOCK;
use crate::kernels::error::{checked_mul, expect_len, KernelError};

/// Output channels per panel (16 i32 lanes of a zmm register).
pub(crate) const NR: usize = 16;

/// One 64-byte, 64-byte-aligned line of packed weights (one k4 step of an int8 panel,
/// two k4 steps of an int4 panel).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line(pub(crate) [u8; 64]);

const _: () = assert!(std::mem::size_of::<Line>() == 64 && std::mem::align_of::<Line>() == 64);

fn lines_as_bytes(lines: &[Line]) -> &[u8] {
    // SAFETY: `Line` is `repr(C)` over `[u8; 64]` with no padding (size asserted above), so
    // a slice of lines is a valid, initialised byte slice of 64× the length.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), lines.len() * 64) }
}

fn lines_as_bytes_mut(lines: &mut [Line]) -> &mut [u8] {
    // SAFETY: as in `lines_as_bytes`; every byte pattern is a valid `u8`.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), lines.len() * 64) }
}

/// Zeroed scratch bytes that start on a 64-byte boundary (whole [`Line`]s): the tile
/// and vector loads of the AMX driver read its activation and tail buffers row by row, and
/// a row that starts off a cache line costs two line reads instead of one.
pub(crate) struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes (rounded up to whole lines inside; only `len` are exposed).
    pub(crate) fn zeroed(len: usize) -> AlignedBytes {
        AlignedBytes {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &lines_as_bytes(&self.lines)[..self.len]
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut lines_as_bytes_mut(&mut self.lines)[..self.len]
    }

    /// The whole lines as i32 values (the AMX driver's C tiles are stored here).
    pub(crate) fn as_i32(&self) -> &[i32] {
        // SAFETY: the lines are 64-byte aligned (so 4-byte aligned), initialised, and
        // every 4-byte pattern is a valid i32; the length is whole lines / 4.
        unsafe {
            std::slice::from_raw_parts(self.lines.as_ptr().cast::<i32>(), self.lines.len() * 16)
        }
    }
}

/// Int8 weights `[out, in]` with one f32 scale per output channel, packed once into the
/// panel layout every kernel reads (see the module docs of [`crate::kernels::gemm`]).
///
/// Besides the weights it holds, per output channel and per block of
/// [`K_BLOCK`](super::K_BLOCK) inputs, `Σ_k w[o, k]`: the VNNI kernels feed activations as
/// `qx + 128` (u8) and subtract `128 · Σ_k w[o, k]` to get the exact signed dot product.
///
/// ```
/// use candle_compress::kernels::gemm::PackedW8;
/// let w: Vec<i8> = (0..3 * 5).map(|i| (i as i8) - 7).collect(); // 3 outputs, 5 inputs
/// let p = PackedW8::pack(&w, &[0.5, 1.0, 2.0], 3, 5).unwrap();
/// assert_eq!((p.out_features(), p.in_features()), (3, 5));
/// assert_eq!(p.weights(), w);
/// assert_eq!(p.scales(), &[0.5, 1.0, 2.0]);
/// assert!(p.size_bytes() >= 3 * 5 + 3 * 4);
/// ```
#[derive(Clone)]
pub struct PackedW8 {
    out: usize,
    inp: usize,
    /// Number of k4 steps: `inp.div_ceil(4)`.
    k4: usize,
    panels: usize,
    /// `panels * k4` lines, panel-major.
    data: Vec<Line>,
    /// Per-output scales, `out` of them.
    scales: Vec<f32>,
    /// `kblocks * panels * NR` sums `Σ_{k in block} w[o, k]` (0 for padding channels).
    colsums: Vec<i32>,
    /// Whether any weight is -128 (the AVX2 sign trick needs weights in [-127, 127]).
    has_min: bool,
}

impl std::fmt::Debug for PackedW8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedW8")
            .field("out_features", &self.out)
            .field("in_features", &self.inp)
            .field("size_bytes", &self.size_bytes())
            .finish_non_exhaustive()
    }
}

impl PackedW8 {
    /// Packs row-major int8 weights `w` (`out` rows of `inp` values) with per-output
    /// `scales`.
    ///
    /// Any i8 value is accepted. Weights equal to -128 (which symmetric quantization never
    /// produces) are exact on every ISA, but on an AVX2-only CPU such a matrix runs on the
    /// scalar kernel because the AVX2 sign trick needs weights in [-127, 127].
    ///
    /// # Errors
    /// [`KernelError::Length`] if `w.len() != out * inp` or `scales.len() != out`,
    /// [`KernelError::Overflow`] if `out * inp` overflows.
    ///
    /// ```
    /// use candle_compress::kernels::gemm::PackedW8;
    /// let e = PackedW8::pack(&[1, 2, 3], &[1.0], 2, 2).unwrap_err();
    /// assert_eq!(e.to_string(), "PackedW8::pack: w has 3 elements, need out × inp = 2 × 2 = 4");
    /// ```
    pub fn pack(w: &[i8], scales: &[f32], out: usize, inp: usize) -> Result<PackedW8, KernelError> {
        const OP: &str = "PackedW8::pack";
        let need = checked_mul(OP, "out × inp", out, inp)?;
        expect_len(OP, "w", w.len(), need, || {
            format!("out × inp = {out} × {inp}")
        })?;
        expect_len(OP, "scales", scales.len(), out, || "out".into())?;
        let k4 = inp.div_ceil(4);
        let panels = out.div_ceil(NR);
        let kblocks = kblocks(inp);
        let mut data = vec![Line([0; 64]); panels * k4];
        let mut colsums = vec![0i32; kblocks * panels * NR];
        let bytes = lines_as_bytes_mut(&mut data);
        for (o, row) in w.chunks_exact(inp.max(1)).take(out).enumerate() {
            let (p, j) = (o / NR, o % NR);
            let base = p * k4 * 64 + j * 4;
            for (k, &v) in row.iter().enumerate() {
                bytes[base + (k / 4) * 64 + k % 4] = v as u8;
                colsums[(k / K_BLOCK) * panels * NR + o] += i32::from(v);
            }
        }
        let has_min = w.contains(&i8::MIN);
        Ok(PackedW8 {
            out,
            inp,
            k4,
            panels,
            data,
            scales: scales.to_vec(),
            colsums,
            has_min,
        })
    }

    /// Output channels (rows of the weight matrix).
    pub fn out_features(&self) -> usize {
        self.out
    }

    /// Input features (columns of the weight matrix).
    pub fn in_features(&self) -> usize {
        self.inp
    }

    /// Bytes this value really holds on the heap: packed weights including the zero
    /// padding of the panel layout, the f32 scales and the i32 per-channel sums.
    pub fn size_bytes(&self) -> usize {
        self.data.len() * 64 + self.scales.len() * 4 + self.colsums.len() * 4
    }

    /// The weights unpacked to row-major `[out, in]`.
    pub fn weights(&self) -> Vec<i8> {
        let mut w = Vec::with_capacity(self.out * self.inp);
        for o in 0..self.out {
            w.extend((0..self.inp).map(|k| self.get(o, k)));
        }
        w
    }

    /// Per-output-channel scales (`out` of them).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The weight at output `o`, input `k` (no bounds check beyond the slice's).
    #[inline]
    pub(crate) fn get(&self, o: usize, k: usize) -> i8 {
        self.bytes()[(o / NR) * self.k4 * 64 + (k / 4) * 64 + (o % NR) * 4 + k % 4] as i8
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        lines_as_bytes(&self.data)
    }
    pub(crate) fn k4(&self) -> usize {
        self.k4
    }
    pub(crate) fn panels(&self) -> usize {
        self.panels
    }
    /// `Σ_{k in block kb} w[o, k]` for the padded channel index `o`.
    pub(crate) fn colsums(&self, kb: usize) -> &[i32] {
        &self.colsums[kb * self.panels * NR..(kb + 1) * self.panels * NR]
    }
    pub(crate) fn has_min(&self) -> bool {
        self.has_min
    }
}

/// Number of [`K_BLOCK`] blocks the input dimension is cut into (at least 1).
pub(crate) fn kblocks(inp: usize) -> usize {
    inp.div_ceil(K_BLOCK).max(1)
}

/// Int4 weights `[out, in]` (values in [-8, 7]) with one f32 scale per output channel and
/// group of `group` consecutive inputs, packed two per byte into the panel layout.
///
/// ```
/// use candle_compress::kernels::gemm::PackedW4;
/// let w: Vec<i8> = (0..2 * 40).map(|i| (i % 16) as i8 - 8).collect(); // 2 outputs, 40 inputs
/// let scales = vec![0.1f32; 2 * 2]; // group 32: 2 groups per row (the last one short)
/// let p = PackedW4::pack(&w, &scales, 2, 40, 32).unwrap();
/// assert_eq!((p.out_features(), p.in_features(), p.group()), (2, 40, 32));
/// assert_eq!(p.weights(), w);
/// ```
#[derive(Clone)]
pub struct PackedW4 {
    out: usize,
    inp: usize,
    group: usize,
    groups: usize,
    /// k4 steps per panel: `groups * group / 4` (always even).
    k4: usize,
    panels: usize,
    /// `panels * k4 / 2` lines, panel-major; each line holds two k4 steps.
    data: Vec<Line>,
    /// Row-major `[out, groups]`.
    scales: Vec<f32>,
    /// `[panels, groups, NR]` (0 for padding channels): the kernels' view of `scales`.
    panel_scales: Vec<f32>,
    /// Per-group offsets of asymmetric weights, row-major `[out, groups]`.
    offsets: Option<Vec<f32>>,
    /// The same offsets `[groups, out]`: the epilogue's view (contiguous over channels).
    offsets_t: Option<Vec<f32>>,
}

impl std::fmt::Debug for PackedW4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedW4")
            .field("out_features", &self.out)
            .field("in_features", &self.inp)
            .field("group", &self.group)
            .field("offsets", &self.offsets.is_some())
            .field("size_bytes", &self.size_bytes())
            .finish_non_exhaustive()
    }
}

impl PackedW4 {
    /// Packs row-major int4 weights `w` (one value in [-8, 7] per i8, `out` rows of `inp`)
    /// with `scales` row-major `[out, inp.div_ceil(group)]`; the last group of a row may
    /// be short.
    ///
    /// # Errors
    /// [`KernelError::InvalidArgument`] if `group` is 0 or not a multiple of 8 (32, 64 and
    /// 128 are the usual choices) or a weight is outside [-8, 7] (naming the first);
    /// [`KernelError::Length`] if `w.len() != out * inp` or
    /// `scales.len() != out * inp.div_ceil(group)`; [`KernelError::Overflow`] if one of
    /// those sizes, or the packed size (rows padded to whole groups), overflows.
    ///
    /// ```
    /// use candle_compress::kernels::gemm::PackedW4;
    /// let e = PackedW4::pack(&[0; 80], &[0.1; 3], 2, 40, 32).unwrap_err();
    /// assert_eq!(
    ///     e.to_string(),
    ///     "PackedW4::pack: scales has 3 elements, need out × ⌈inp / group⌉ = 2 × ⌈40 / 32⌉ = 4"
    /// );
    /// ```
    pub fn pack(
        w: &[i8],
        scales: &[f32],
        out: usize,
        inp: usize,
        group: usize,
    ) -> Result<PackedW4, KernelError> {
        Self::pack_impl("PackedW4::pack", w, scales, None, out, inp, group)
    }

    /// Packs asymmetric int4 weights: as [`PackedW4::pack`], plus one f32 offset per
    /// output channel and group, `offsets` row-major `[out, inp.div_ceil(group)]` like
    /// `scales`. The code `w[o, k]` (in [-8, 7]) of group `g` stands for the value
    /// `scales[o, g]·w[o, k] + offsets[o, g]`, and
    /// the matrix products add `Σ_g offsets[o, g]·S_g` (`S_g` the sum of the row's
    /// activations in group `g`) as the module docs of [`crate::kernels::gemm`] specify.
    ///
    /// # Errors
    /// As [`PackedW4::pack`] (under the name `PackedW4::pack_asym`), and
    /// [`KernelError::Length`] if `offsets.len() != scales.len()`.
    ///
    /// ```
    /// use candle_compress::kernels::gemm::{matmul_w4a8, PackedW4};
    /// // 1 output, 8 inputs, one group: w = 0.5·c + 2 with c = [-8, 7, 0, 0, 0, 0, 0, 1].
    /// let c = [-8i8, 7, 0, 0, 0, 0, 0, 1];
    /// let p = PackedW4::pack_asym(&c, &[0.5], &[2.0], 1, 8, 8).unwrap();
    /// assert_eq!(p.offsets(), Some(&[2.0f32][..]));
    /// let mut out = [0f32; 1];
    /// matmul_w4a8(&[1; 8], &[1.0], 1, &p, None, &mut out).unwrap();
    /// // Σ w = 0.5·(-8 + 7 + 1) + 8·2 = 16
    /// assert_eq!(out, [16.0]);
    /// let e = PackedW4::pack_asym(&c, &[0.5], &[], 1, 8, 8).unwrap_err();
    /// assert_eq!(e.to_string(), "PackedW4::pack_asym: offsets has 0 elements, need scales.len() = 1");
    /// ```
    pub fn pack_asym(
        w: &[i8],
        scales: &[f32],
        offsets: &[f32],
        out: usize,
        inp: usize,
        group: usize,
    ) -> Result<PackedW4, KernelError> {
        Self::pack_impl(
            "PackedW4::pack_asym",
            w,
            scales,
            Some(offsets),
            out,
            inp,
            group,
        )
    }

    fn pack_impl(
        op: &'static str,
        w: &[i8],
        scales: &[f32],
        offsets: Option<&[f32]>,
        out: usize,
        inp: usize,
        group: usize,
    ) -> Result<PackedW4, KernelError> {
        if group == 0 || !group.is_multiple_of(8) {
            return Err(KernelError::invalid(
                op,
                "group",
                format!("must be a positive multiple of 8, found {group}"),
            ));
        }
        let need = checked_mul(op, "out × inp", out, inp)?;
        expect_len(op, "w", w.len(), need, || {
            format!("out × inp = {out} × {inp}")
        })?;
        let groups = inp.div_ceil(group);
        let need = checked_mul(op, "out × ⌈inp / group⌉", out, groups)?;
        expect_len(op, "scales", scales.len(), need, || {
            format!("out × ⌈inp / group⌉ = {out} × ⌈{inp} / {group}⌉")
        })?;
        if let Some(m) = offsets {
            expect_len(op, "offsets", m.len(), scales.len(), || {
                "scales.len()".into()
            })?;
        }
        if let Some(i) = w.iter().position(|v| !(-8..=7).contains(v)) {
            return Err(KernelError::invalid(
                op,
                "w",
                format!("w[{i}] is {}; int4 weights must lie in [-8, 7]", w[i]),
            ));
        }
        let panels = out.div_ceil(NR);
        // Each row is padded to whole groups: `groups * group` inputs, `k4` steps of 4.
        let k4 = checked_mul(op, "⌈inp / group⌉ × group", groups, group)? / 4;
        let steps = checked_mul(op, "panels × k4 steps", panels, k4)?;
        let size = checked_mul(op, "panels × k4 steps × 32 bytes", steps, 32)?;
        // A group far larger than `inp` pads every row to it: refuse a buffer that cannot
        // be allocated instead of aborting.
        let mut data = Vec::new();
        if data.try_reserve_exact(steps / 2).is_err() {
            return Err(KernelError::invalid(
                op,
                "group",
                format!(
                    "{group} pads each of the {out} rows of {inp} inputs to whole groups: \
                     {size} bytes of packed weights cannot be allocated"
                ),
            ));
        }
        data.resize(steps / 2, Line([0x88; 64]));
        let bytes = lines_as_bytes_mut(&mut data);
        for (o, row) in w.chunks_exact(inp.max(1)).take(out).enumerate() {
            let (p, j) = (o / NR, o % NR);
            for (k, &v) in row.iter().enumerate() {
                let e = j * 4 + k % 4; // element within the k4 step
                let at = p * k4 * 32 + (k / 4) * 32 + e % 32;
                let nib = (v + 8) as u8;
                bytes[at] = if e < 32 {
                    (bytes[at] & 0xF0) | nib
                } else {
                    (bytes[at] & 0x0F) | (nib << 4)
                };
            }
        }
        let mut panel_scales = vec![0f32; panels * groups * NR];
        for o in 0..out {
            for g in 0..groups {
                panel_scales[((o / NR) * groups + g) * NR + o % NR] = scales[o * groups + g];
            }
        }
        Ok(PackedW4 {
            out,
            inp,
            group,
            groups,
            k4,
            panels,
            data,
            scales: scales.to_vec(),
            panel_scales,
            offsets: offsets.map(<[f32]>::to_vec),
            offsets_t: offsets.map(|m| transpose(m, out, groups)),
        })
    }

    /// Output channels.
    pub fn out_features(&self) -> usize {
        self.out
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.inp
    }

    /// Inputs per scale group.
    pub fn group(&self) -> usize {
        self.group
    }

    /// Bytes this value really holds on the heap: packed nibbles including the zero
    /// padding of the panel layout, the row-major scales and the kernels' copy of them,
    /// and the offsets (row-major and the kernels' copy) of asymmetric weights.
    pub fn size_bytes(&self) -> usize {
        let offsets =
            self.offsets.as_ref().map_or(0, Vec::len) + self.offsets_t.as_ref().map_or(0, Vec::len);
        self.data.len() * 64 + (self.scales.len() + self.panel_scales.len() + offsets) * 4
    }

    /// The weights unpacked to row-major `[out, in]`, one value in [-8, 7] per i8.
    pub fn weights(&self) -> Vec<i8> {
        let mut w = Vec::with_capacity(self.out * self.inp);
        for o in 0..self.out {
            w.extend((0..self.inp).map(|k| self.get(o, k)));
        }
        w
    }

    /// Scales, row-major `[out, in.div_ceil(group)]`.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Per-group offsets of asymmetric weights ([`PackedW4::pack_asym`]), row-major
    /// `[out, in.div_ceil(group)]`; `None` for symmetric weights.
    pub fn offsets(&self) -> Option<&[f32]> {
        self.offsets.as_deref()
    }

    /// The offsets `[groups, out]` (the epilogue's layout), if any.
    pub(crate) fn offsets_t(&self) -> Option<&[f32]> {
        self.offsets_t.as_deref()
    }

    /// The weight at output `o`, input `k` (padding reads as 0).
    #[inline]
    pub(crate) fn get(&self, o: usize, k: usize) -> i8 {
        let e = (o % NR) * 4 + k % 4;
        let b = self.bytes()[(o / NR) * self.k4 * 32 + (k / 4) * 32 + e % 32];
        let nib = if e < 32 { b & 0x0F } else { b >> 4 };
        nib as i8 - 8
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        lines_as_bytes(&self.data)
    }
    pub(crate) fn k4(&self) -> usize {
        self.k4
    }
    pub(crate) fn panels(&self) -> usize {
        self.panels
    }
    pub(crate) fn groups(&self) -> usize {
        self.groups
    }
    /// `[panels, groups, NR]` scales.
    pub(crate) fn panel_scales(&self) -> &[f32] {
        &self.panel_scales
    }
}

/// Row-major `[rows, cols]` to `[cols, rows]`.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for (r, row) in m.chunks_exact(cols.max(1)).take(rows).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}
