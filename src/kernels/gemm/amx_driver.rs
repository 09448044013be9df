//! The AMX GEMM driver: activation padding, the loop over 32 × 32 output blocks, the
//! K blocking, the per-thread tile configuration and the epilogues. It runs on an
//! [`AmxKernels`] table: the real `asm!` microkernels (`amx.rs`) or the scalar emulation
//! of the same tile operations (`amx_emu.rs`), so every line here is tested bit for bit
//! against the scalar kernel on any CPU.
//!
//! # Tile plan (the same for every microkernel)
//!
//! ```text
//! tmm0 C(0,0)  tmm1 C(0,1)      C: 16 rows × 16 i32 (64 bytes), accumulators
//! tmm2 C(1,0)  tmm3 C(1,1)
//! tmm4 A rows 0..16             A: 16 rows × kt bytes of activations (s8)
//! tmm5 A rows 16..32
//! tmm6 B panel 0                B: kt/4 rows × 64 bytes = one panel's kt/4 k4 lines (s8)
//! tmm7 B panel 1
//! ```
//!
//! `tdpbssd C(i,j), A(i), B(j)` adds `Σ_k A[m][4k+q]·B[k][4n+q]` (s8 × s8 → i32): with
//! the panel layout (16 channels × 4 inputs per 64-byte line) a run of `kt/4` lines of a
//! panel *is* the B tile, so W8 weights are read in place. Activations are copied once
//! per call into whole A tiles (16 rows × `kt` bytes, contiguous, 64-byte aligned: see
//! `prep_a`), so every tile load reads one contiguous kilobyte. Microkernels cover 1–2 row
//! tiles × 1–2 panels, start from zero or from the C tiles a previous call stored (the
//! W8 tail chunk), and store C into a `[32][LDC]` i32 buffer. They are software pipelined
//! (`amx.rs`).
//!
//! # Exactness
//!
//! - **W8A8:** `kt = 64`. Rows are padded to a multiple of 16 and each row's inputs to a
//!   multiple of 64 with zeros; the last, partial K chunk of each panel is copied to a
//!   zero-padded 1 KiB tail tile (so no read passes the weights' end). Zero products add
//!   nothing, so the sums are exactly `Σ qx·w` (no `+128` shift: `tdpbssd` is signed ×
//!   signed). Sums are kept per [`K_BLOCK`] (≤ 2^30 in magnitude, exact in i32) and added
//!   in i64 across blocks, as on every ISA; the float epilogue is the shared `finish_w8`.
//! - **W4A8:** each panel pair is unpacked to s8 (`nibble - 8`) once per task into a
//!   buffer of the W8 layout; `kt` is the largest multiple of 4 dividing the group and at
//!   most 64, so chunks never straddle a group. The group-wise microkernels run up to
//!   [`GROUP_BATCH`] groups per call, each group's i32 sums starting from zero and stored
//!   to its own C area (one `asm!` block, pipelined across group ends); the sums are then
//!   combined in f32 in group order (`sum = sum + acc·scale`, held in registers over the
//!   groups), then `finish_w4`: the scalar reference's operations in its order.
//!
//! # Threads
//!
//! The tile configuration is per thread. Every rayon task loads it (`configure`) before
//! its first tile instruction and releases the tile state (`release`, `tilerelease` on
//! hardware) when its tile work ends, so a worker never relies on a configuration left by
//! someone else and the OS need not save 8 KiB of tile data for idle threads.

use super::driver::{
    epilogue_w8, finish_w8_generic, plan, run_tasks, store_row, OutPtr, W8Finish, W8FinishFn, LDC,
    MR_MAX,
};
use super::offsets::{finish_row_w4, group_sums, offset_row};
use super::pack::{AlignedBytes, PackedW4, PackedW8, NR};
use super::K_BLOCK;

/// Rows of an A / C tile.
pub(crate) const TILE_ROWS: usize = 16;
/// Row tiles × panels of the largest microkernel (2 × 2 = 32 rows × 32 channels).
pub(crate) const MT: usize = 2;
/// Panels of the largest microkernel.
pub(crate) const NT: usize = 2;
/// Rows of the largest microkernel.
const BLOCK_ROWS: usize = MT * TILE_ROWS;
/// k4 steps per full W8 chunk (64 inputs).
const CHUNK_K4: usize = 16;
/// Bytes of one full B tile (16 lines of 64 bytes); tail tiles are this size.
pub(crate) const B_TILE_BYTES: usize = CHUNK_K4 * 64;
/// Bytes between C rows in the C buffer (`LDC` i32).
pub(crate) const C_STRIDE: usize = LDC * 4;
/// The C buffer of one microkernel: `[BLOCK_ROWS][LDC]` i32, 64-byte aligned.
#[repr(C, align(64))]
pub(crate) struct CBuf(pub(crate) [i32; BLOCK_ROWS * LDC]);

/// The 64-byte operand of `ldtilecfg` (palette 1).
///
/// ```text
/// byte 0: palette (1)   byte 1: start_row (0)   bytes 2..16: 0
/// bytes 16 + 2t: colsb of tile t (u16 LE)      byte 48 + t: rows of tile t   (t < 8)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub(crate) struct TileConfig(pub(crate) [u8; 64]);

impl TileConfig {
    /// The configuration of the tile plan for `kt` bytes of K per `tdpbssd`
    /// (`4 ≤ kt ≤ 64`, a multiple of 4).
    pub(crate) fn new(kt: usize) -> TileConfig {
        assert!(
            kt.is_multiple_of(4) && (4..=64).contains(&kt),
            "tile K {kt} bytes"
        );
        let mut b = [0u8; 64];
        b[0] = 1;
        let mut set = |t: usize, rows: usize, colsb: usize| {
            b[16 + 2 * t..18 + 2 * t].copy_from_slice(&(colsb as u16).to_le_bytes());
            b[48 + t] = rows as u8;
        };
        for t in 0..4 {
            set(t, TILE_ROWS, 64); // C: 16 rows × 16 i32
        }
        set(4, TILE_ROWS, kt); // A
        set(5, TILE_ROWS, kt);
        set(6, kt / 4, 64); // B
        set(7, kt / 4, 64);
        TileConfig(b)
    }

    /// Rows of tile `t < 16` (0 when unconfigured).
    pub(crate) fn rows(&self, t: usize) -> usize {
        usize::from(self.0[48 + t])
    }

    /// Bytes per row of tile `t < 16` (0 when unconfigured).
    pub(crate) fn colsb(&self, t: usize) -> usize {
        usize::from(u16::from_le_bytes([self.0[16 + 2 * t], self.0[17 + 2 * t]]))
    }
}

/// Operands of one microkernel call: `mt` row tiles × `nt` panels over `chunks ≥ 1` K
/// chunks, results stored to `c`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct TileArgs {
    /// Row tile 0's A tile of the first chunk.
    pub a: *const u8,
    /// Bytes between the rows of an A tile.
    pub lda: usize,
    /// Bytes from row tile 0's A tile to row tile 1's (same chunk).
    pub a_tile: usize,
    /// Panel 0's B tile of the first chunk (lines of 64 bytes, consecutive).
    pub b: *const u8,
    /// Bytes from panel 0's B tile to panel 1's (same chunk).
    pub ldp: usize,
    /// Chunks read from `a` and `b` (at least 1).
    pub chunks: usize,
    /// Bytes `a` advances per chunk.
    pub a_step: usize,
    /// Bytes `b` advances per chunk (`kt / 4` lines = `16 · kt`).
    pub b_step: usize,
    /// Start from the C tiles stored at `c` (a previous call's sums) instead of zero.
    pub acc: bool,
    /// C tile (i, j) is stored at `c + i·16·C_STRIDE + j·64` bytes, rows `C_STRIDE` apart.
    pub c: *mut i32,
}

/// One microkernel: zero (or load) the C tiles, accumulate every chunk, store C.
pub(crate) type TileFn = unsafe fn(&TileArgs);

/// One ISA's (or the emulation's) AMX entry points: the shape a per-ISA dispatch table
/// takes (one static of this type per backend).
pub(crate) struct AmxKernels {
    /// Loads a tile configuration on the calling thread (`ldtilecfg`).
    pub configure: unsafe fn(&TileConfig),
    /// Releases the calling thread's tile state (`tilerelease`).
    pub release: unsafe fn(),
    /// The microkernel for `mt` row tiles × `nt` panels (`1 ≤ mt, nt ≤ 2`).
    pub tile: fn(usize, usize) -> TileFn,
    /// Unpacks `src.len() / 32` int4 k4 steps (32 nibble bytes each) into as many s8 lines
    /// of 64 bytes in `dst` (`nibble - 8`): see [`unpack_w4_generic`].
    pub unpack_w4: unsafe fn(&[u8], &mut [u8]),
    /// The W4A8 group-wise microkernel for `mt` row tiles × `nt` panels (see
    /// [`GroupArgs`]).
    pub group: fn(usize, usize) -> GroupFn,
    /// Every group's sums of one block combined in f32 in group order: see
    /// [`combine_groups_generic`] (same arguments, same results).
    pub combine_groups: CombineFn,
    /// The W8 epilogue of single-block tiles (`None`: the portable one).
    pub finish_w8: Option<W8FinishFn>,
}

/// Portable int4 unpacking, the definition the SIMD versions must equal.
#[inline(always)]
pub(crate) fn unpack_w4_generic(src: &[u8], dst: &mut [u8]) {
    for (s, d) in src.chunks_exact(32).zip(dst.chunks_exact_mut(64)) {
        let (lo, hi) = d.split_at_mut(32);
        for ((&b, l), h) in s.iter().zip(lo).zip(hi) {
            *l = ((b & 0x0F) as i8 - 8) as u8;
            *h = ((b >> 4) as i8 - 8) as u8;
        }
    }
}

/// Bytes of one group's C tiles in a [`GroupArgs`] buffer: 4 tiles of 16 rows × 64 bytes.
pub(crate) const GROUP_C_BYTES: usize = 4 * B_TILE_BYTES;
/// i32 values of one group's C tiles.
pub(crate) const GROUP_C: usize = GROUP_C_BYTES / 4;

/// Operands of one group-wise (W4A8) microkernel call: `mt` row tiles × `nt` panels over
/// `groups · group_chunks` consecutive K chunks; the sums of each run of `group_chunks`
/// chunks start from zero and are stored apart.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct GroupArgs {
    /// Row tile 0's A tile of the first chunk.
    pub a: *const u8,
    /// Bytes between the rows of an A tile (`kt`).
    pub lda: usize,
    /// Bytes from row tile 0's A tile to row tile 1's (same chunk).
    pub a_tile: usize,
    /// Panel 0's B tile of the first chunk.
    pub b: *const u8,
    /// Bytes from panel 0's B tile to panel 1's (same chunk).
    pub ldp: usize,
    /// Bytes both `a` and `b` advance per chunk (`16 · kt`: an A tile, and `kt / 4` lines).
    pub step: usize,
    /// Chunks per group (at least 1).
    pub group_chunks: usize,
    /// Groups (at least 1: with no input the driver makes no call).
    pub groups: usize,
    /// Group `g`'s C tile (i, j) is stored at `c + g·GROUP_C_BYTES + (2i + j)·1024`
    /// bytes, 16 rows of 64 bytes (tiles of absent row tiles or panels are not written).
    pub c: *mut i32,
}

/// One group-wise microkernel.
pub(crate) type GroupFn = unsafe fn(&GroupArgs);

/// A group combine: `(c, scales, stride, groups, rows, nt, sums)` as
/// [`combine_groups_generic`] takes them.
pub(crate) type CombineFn = unsafe fn(&[i32], &[f32], usize, usize, usize, usize, &mut [f32]);

/// Portable group combine: for `r < rows`, `j < 16·nt`, adds to `sums[r·32 + j]`, group
/// by group in order, `c_g[r][j] as f32 · scales[(j/16)·groups + g][j % 16]` (a separate
/// f32 multiply and add: the scalar reference's `sum += acc as f32 * scale`, so starting
/// from zero and calling it on consecutive runs of groups gives the reference's sums).
/// `c` holds `groups` areas of [`GROUP_C`] values laid out as [`GroupArgs`] stores them;
/// `scales` the `nt` panels' scales of these groups, panel `q`'s at `q·stride`.
#[inline(always)]
pub(crate) fn combine_groups_generic(
    c: &[i32],
    scales: &[f32],
    stride: usize,
    groups: usize,
    rows: usize,
    nt: usize,
    sums: &mut [f32],
) {
    for r in 0..rows {
        for q in 0..nt {
            let at = (2 * (r / TILE_ROWS) + q) * 256 + (r % TILE_ROWS) * NR;
            let dst = &mut sums[r * BLOCK_ROWS + q * NR..][..NR];
            for g in 0..groups {
                let cg = &c[g * GROUP_C + at..][..NR];
                let sg = &scales[q * stride + g * NR..][..NR];
                for ((d, &a), &w) in dst.iter_mut().zip(cg).zip(sg) {
                    *d += a as f32 * w;
                }
            }
        }
    }
}

/// Groups per group-wise microkernel call: their C tiles (`8 · 4 KiB`) stay in L1 until
/// they are combined.
const GROUP_BATCH: usize = 8;

/// The largest multiple of 4 that divides `group` and is at most 64: the K bytes of one
/// W4 `tdpbssd`, so that a chunk never straddles two groups.
pub(crate) fn w4_tile_k(group: usize) -> usize {
    (1..=16)
        .rev()
        .map(|q| q * 4)
        .find(|kt| group.is_multiple_of(*kt))
        .expect("4 divides every W4 group (a multiple of 8)")
}

/// Activations packed as whole A tiles: row tile `rt` (rows `16·rt..16·rt + 16`, padded
/// with zero rows), K chunk `c` (inputs `kt·c..kt·c + kt`, padded with zero inputs up to
/// `kp`, a multiple of `kt`) is the `16 × kt`-byte block at `(rt·(kp/kt) + c)·16·kt`,
/// rows `kt` bytes apart.
///
/// Each tile load then reads one contiguous run (a K step of the microkernel advances by
/// one tile): the hardware prefetchers see one stream per row tile instead of 16 strided
/// ones, and no two rows of a tile compete for the same L1 set.
fn prep_a(qx: &[i8], rows: usize, k: usize, kp: usize, kt: usize) -> AlignedBytes {
    debug_assert!(kp >= k && kp.is_multiple_of(kt));
    let chunks = kp / kt;
    let tile = TILE_ROWS * kt;
    let mut a = AlignedBytes::zeroed(rows.next_multiple_of(TILE_ROWS) * kp);
    let dst = a.bytes_mut();
    if k > 0 {
        for (r, src) in qx.chunks_exact(k).take(rows).enumerate() {
            let base = (r / TILE_ROWS) * chunks * tile + (r % TILE_ROWS) * kt;
            for (c, part) in src.chunks(kt).enumerate() {
                let d = &mut dst[base + c * tile..][..part.len()];
                for (d, &s) in d.iter_mut().zip(part) {
                    *d = s as u8;
                }
            }
        }
    }
    a
}

/// Loads the tile configuration on the calling thread and releases the tile state when
/// dropped (also on unwinding), so every task's tile work is bracketed.
struct TileScope<'a>(&'a AmxKernels);

impl<'a> TileScope<'a> {
    /// # Safety
    /// The CPU (or emulation) must support `kern`.
    unsafe fn new(kern: &'a AmxKernels, cfg: &TileConfig) -> Self {
        // SAFETY: forwarded contract; `cfg` is a valid palette-1 configuration.
        unsafe { (kern.configure)(cfg) };
        TileScope(kern)
    }
}

impl Drop for TileScope<'_> {
    fn drop(&mut self) {
        // SAFETY: the scope was created with a supported table.
        unsafe { (self.0.release)() };
    }
}

/// The microkernel for the block at rows `r0..r1` (at most 32) × `nt` panels.
fn block_kernel(kern: &AmxKernels, rows: usize, nt: usize) -> TileFn {
    (kern.tile)(rows.div_ceil(TILE_ROWS), nt)
}

/// W8A8 on AMX tiles; same results as `scalar::matmul_w8a8`.
///
/// # Safety
/// The CPU (or emulation) must support `kern`; `out` must be valid for
/// `rows · out_features` float writes (it may be uninitialized: every element is written
/// exactly once) and not accessed elsewhere meanwhile.
pub(crate) unsafe fn matmul_w8a8(
    kern: &AmxKernels,
    qx: &[i8],
    x_scales: &[f32],
    rows: usize,
    w: &PackedW8,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    let (n, k, k4, panels) = (w.out_features(), w.in_features(), w.k4(), w.panels());
    let kp = k4.next_multiple_of(CHUNK_K4) * 4;
    let a = prep_a(qx, rows, k, kp, 64);
    let a = a.bytes();
    let a_tile = kp * TILE_ROWS;
    let bytes = w.bytes();
    let panel_bytes = k4 * 64;
    // The last, partial chunk of every panel, zero padded to a whole B tile.
    let full_k4 = k4 / CHUNK_K4 * CHUNK_K4;
    let tails = if k4 > full_k4 {
        let mut t = AlignedBytes::zeroed(panels.next_multiple_of(NT) * B_TILE_BYTES);
        let tb = t.bytes_mut();
        for p in 0..panels {
            let src = &bytes[p * panel_bytes + full_k4 * 64..(p + 1) * panel_bytes];
            tb[p * B_TILE_BYTES..p * B_TILE_BYTES + src.len()].copy_from_slice(src);
        }
        t
    } else {
        AlignedBytes::zeroed(0)
    };
    let tails = tails.bytes();
    let kblocks = super::pack::kblocks(k);
    let block_k4 = K_BLOCK / 4;
    let cfg = TileConfig::new(64);
    let out_ptr = OutPtr(out);
    let tasks = plan(rows, panels, BLOCK_ROWS, NT, rows * n * k);
    run_tasks(&tasks, |task| {
        let mut c = CBuf([0; BLOCK_ROWS * LDC]);
        let mut c64 = vec![0i64; if kblocks > 1 { BLOCK_ROWS * LDC } else { 0 }];
        // SAFETY: the caller guarantees `kern` runs on this CPU.
        let _scope = unsafe { TileScope::new(kern, &cfg) };
        for p0 in (task.p0..task.p1).step_by(NT) {
            let nt = NT.min(task.p1 - p0);
            let o0 = p0 * NR;
            let cols = (n - o0).min(nt * NR);
            for r0 in (task.r0..task.r1).step_by(BLOCK_ROWS) {
                let mr = BLOCK_ROWS.min(task.r1 - r0);
                let f = block_kernel(kern, mr, nt);
                for kb in 0..kblocks {
                    let s0 = kb * block_k4;
                    let steps = (k4 - s0).min(block_k4);
                    let (full, has_tail) = (steps / CHUNK_K4, !steps.is_multiple_of(CHUNK_K4));
                    let args = TileArgs {
                        a: a[r0 * kp + s0 / CHUNK_K4 * B_TILE_BYTES..].as_ptr(),
                        lda: 64,
                        a_tile,
                        b: bytes[p0 * panel_bytes + s0 * 64..].as_ptr(),
                        ldp: panel_bytes,
                        chunks: full,
                        a_step: B_TILE_BYTES,
                        b_step: B_TILE_BYTES,
                        acc: false,
                        c: c.0.as_mut_ptr(),
                    };
                    if full > 0 {
                        // SAFETY: A: the block's row tiles (inside the packed, padded
                        // activations), `full` tiles from chunk `s0/16`; B: `nt` panels of
                        // `full·16` lines from step `s0` (full chunks end at or before
                        // `k4`); C: the whole `c` buffer. The caller guarantees the CPU
                        // support; `_scope` loaded the configuration on this thread.
                        unsafe { f(&args) };
                    }
                    if has_tail {
                        let tail = TileArgs {
                            a: args.a.wrapping_add(full * B_TILE_BYTES),
                            b: tails[p0 * B_TILE_BYTES..].as_ptr(),
                            ldp: B_TILE_BYTES,
                            chunks: 1,
                            acc: full > 0,
                            ..args
                        };
                        // SAFETY: as above, for the A tile after the full chunks (the
                        // activations are padded to whole chunks) and the `nt` zero-padded
                        // tail tiles inside `tails`; with `acc`, C holds the sums the call
                        // above stored.
                        unsafe { f(&tail) };
                    }
                    if kblocks > 1 {
                        for r in 0..mr {
                            for j in 0..cols {
                                let v = i64::from(c.0[r * LDC + j]);
                                let d = &mut c64[r * LDC + j];
                                *d = if kb == 0 { v } else { *d + v };
                            }
                        }
                    }
                }
                if kblocks == 1 {
                    for rc in (0..mr).step_by(MR_MAX) {
                        let m = MR_MAX.min(mr - rc);
                        let t0 = r0 + rc;
                        let fin = W8Finish {
                            c: c.0[rc * LDC..].as_ptr(),
                            mr: m,
                            cols,
                            colsums: None,
                            xs: x_scales[t0..t0 + m].as_ptr(),
                            ws: w.scales()[o0..o0 + cols].as_ptr(),
                            bias: bias.map(|b| b[o0..o0 + cols].as_ptr()),
                            // SAFETY: `t0 < rows`, `o0 < n`: an element of `out`.
                            out: unsafe { out_ptr.get().add(t0 * n + o0) },
                            ldo: n,
                        };
                        // SAFETY: `c` holds `(rc + MR_MAX)·LDC ≤ 32·LDC` values from
                        // `rc·LDC`; the other pointers cover `m` rows × `cols` columns;
                        // output rows `t0..t0+m`, columns `o0..o0+cols` belong to this task
                        // only; the epilogue's CPU features come with the table.
                        unsafe { kern.finish_w8.unwrap_or(finish_w8_generic)(&fin) };
                    }
                } else {
                    let ws = &w.scales()[o0..o0 + cols];
                    let bs = bias.map(|b| &b[o0..o0 + cols]);
                    let mut tmp = [0f32; LDC];
                    for r in 0..mr {
                        let t = r0 + r;
                        let acc = c64[r * LDC..r * LDC + cols].iter().map(|&v| v as f32);
                        epilogue_w8(&mut tmp[..cols], acc, x_scales[t], ws, bs);
                        // SAFETY: an in-bounds range of `out` that only this task writes.
                        unsafe { store_row(out_ptr.get().add(t * n + o0), &tmp[..cols]) };
                    }
                }
            }
        }
    });
}

/// W4A8 on AMX tiles; same results as `scalar::matmul_w4a8`.
///
/// # Safety
/// As [`matmul_w8a8`].
pub(crate) unsafe fn matmul_w4a8(
    kern: &AmxKernels,
    qx: &[i8],
    x_scales: &[f32],
    rows: usize,
    w: &PackedW4,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    let (n, k, k4, groups, group, panels) = (
        w.out_features(),
        w.in_features(),
        w.k4(),
        w.groups(),
        w.group(),
        w.panels(),
    );
    // k4 = groups·group/4: already whole groups, so whole chunks of `kt`.
    let kp = k4 * 4;
    let kt = w4_tile_k(group);
    let a = prep_a(qx, rows, k, kp, kt);
    let a = a.bytes();
    let bytes = w.bytes();
    let pscales = w.panel_scales();
    let offsets_t = w.offsets_t();
    // S_g per row and group, only when there are offsets to multiply.
    let mut xsum = Vec::new();
    if offsets_t.is_some() && k > 0 {
        xsum = vec![0i32; rows * groups];
        for (xs, xr) in xsum.chunks_exact_mut(groups).zip(qx.chunks_exact(k)) {
            group_sums(xr, group, xs);
        }
    }
    let cfg = TileConfig::new(kt);
    let out_ptr = OutPtr(out);
    let tasks = plan(rows, panels, BLOCK_ROWS, NT, rows * n * k);
    run_tasks(&tasks, |task| {
        let mut cg = AlignedBytes::zeroed(groups.min(GROUP_BATCH) * GROUP_C_BYTES);
        let mut unpacked = AlignedBytes::zeroed(NT * k4 * 64);
        let unpacked = unpacked.bytes_mut();
        let mut sums = [0f32; BLOCK_ROWS * BLOCK_ROWS];
        // SAFETY: the caller guarantees `kern` runs on this CPU.
        let _scope = unsafe { TileScope::new(kern, &cfg) };
        for p0 in (task.p0..task.p1).step_by(NT) {
            let nt = NT.min(task.p1 - p0);
            let o0 = p0 * NR;
            let cols = (n - o0).min(nt * NR);
            // SAFETY: `nt` panels of `k4·32` nibble bytes into `nt·k4` lines; the table's
            // CPU features are guaranteed by the caller.
            unsafe {
                (kern.unpack_w4)(
                    &bytes[p0 * k4 * 32..(p0 + nt) * k4 * 32],
                    &mut unpacked[..nt * k4 * 64],
                )
            };
            let s = &pscales[p0 * groups * NR..(p0 + nt) * groups * NR];
            for r0 in (task.r0..task.r1).step_by(BLOCK_ROWS) {
                let mr = BLOCK_ROWS.min(task.r1 - r0);
                let (mt, gpc) = (mr.div_ceil(TILE_ROWS), group / kt);
                sums.fill(0.0);
                for g0 in (0..groups).step_by(GROUP_BATCH) {
                    let gn = GROUP_BATCH.min(groups - g0);
                    let args = GroupArgs {
                        a: a[r0 * kp + g0 * group * TILE_ROWS..].as_ptr(),
                        lda: kt,
                        a_tile: kp * TILE_ROWS,
                        b: unpacked[g0 * group * 16..].as_ptr(),
                        ldp: k4 * 64,
                        step: kt * TILE_ROWS,
                        group_chunks: gpc,
                        groups: gn,
                        c: cg.bytes_mut().as_mut_ptr().cast(),
                    };
                    // SAFETY: A: `mt` padded row tiles, the `gn·gpc` tiles from group `g0`
                    // (inside the packed row); B: `nt` unpacked panels, the lines of groups
                    // `g0..g0+gn`; C: `gn` areas of `cg`, 64-byte aligned. The
                    // configuration was loaded on this thread by `_scope`.
                    unsafe { (kern.group)(mt, nt)(&args) };
                    // SAFETY: `cg` holds the `gn` groups' C; the scales of panel `q` and
                    // group `g0 + g` are at `q·groups·16 + g·16` of the slice; `sums` is
                    // 32 × 32; the table's CPU features are guaranteed by the caller.
                    unsafe {
                        (kern.combine_groups)(
                            cg.as_i32(),
                            &s[g0 * NR..],
                            groups * NR,
                            gn,
                            mr,
                            nt,
                            &mut sums,
                        )
                    };
                }
                let bs = bias.map(|b| &b[o0..o0 + cols]);
                let mut tmp = [0f32; BLOCK_ROWS];
                let mut off = [0f32; BLOCK_ROWS];
                for r in 0..mr {
                    let t = r0 + r;
                    let srow = &sums[r * BLOCK_ROWS..r * BLOCK_ROWS + cols];
                    let dst = &mut tmp[..cols];
                    let off = offsets_t.map(|m| {
                        let off = &mut off[..cols];
                        offset_row(&xsum[t * groups..(t + 1) * groups], m, n, o0, off);
                        &*off
                    });
                    finish_row_w4(dst, srow, off, x_scales[t], bs);
                    // SAFETY: an in-bounds range of `out` that only this task writes.
                    unsafe { store_row(out_ptr.get().add(t * n + o0), dst) };
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_config_layout() {
        let c = TileConfig::new(64);
        assert_eq!((c.0[0], c.0[1]), (1, 0));
        assert!(c.0[2..16].iter().all(|&b| b == 0));
        for t in 0..8 {
            assert_eq!((c.rows(t), c.colsb(t)), (16, 64), "tile {t}");
        }
        assert!(c.0[32..48].iter().all(|&b| b == 0) && c.0[56..].iter().all(|&b| b == 0));
        let c = TileConfig::new(32);
        assert_eq!((c.rows(4), c.colsb(4)), (16, 32));
        assert_eq!((c.rows(6), c.colsb(6)), (8, 64));
        assert_eq!((c.rows(0), c.colsb(0)), (16, 64));
        assert_eq!(c.0[16..18], [64, 0]);
    }

    #[test]
    fn w4_tile_k_divides_the_group() {
        for (g, kt) in [
            (8, 8),
            (16, 16),
            (32, 32),
            (40, 40),
            (64, 64),
            (96, 48),
            (128, 64),
        ] {
            assert_eq!(w4_tile_k(g), kt, "group {g}");
        }
        for g in (8..=1024).step_by(8) {
            let kt = w4_tile_k(g);
            assert!(g.is_multiple_of(kt) && kt.is_multiple_of(4) && kt <= 64);
        }
    }

    #[test]
    fn unpack_matches_packed_weights() {
        let (n, k) = (20, 70);
        let w: Vec<i8> = (0..n * k).map(|i| ((i * 7) % 16) as i8 - 8).collect();
        let p = PackedW4::pack(&w, &vec![1.0; n * 3], n, k, 32).unwrap();
        let mut dst = vec![0u8; p.panels() * p.k4() * 64];
        unpack_w4_generic(p.bytes(), &mut dst);
        for o in 0..n {
            for kk in 0..p.k4() * 4 {
                let got = dst[(o / NR) * p.k4() * 64 + (kk / 4) * 64 + (o % NR) * 4 + kk % 4] as i8;
                let want = if kk < k { w[o * k + kk] } else { 0 };
                assert_eq!(got, want, "o={o} k={kk}");
            }
        }
    }
}
