//! The ISA-independent part of the SIMD GEMM: activation preparation, the loop over
//! register tiles, the i64 combination of [`K_BLOCK`] blocks, the float epilogue and the
//! split into rayon tasks. ISA files only provide microkernels ([`W8Kernel`],
//! [`W4Kernel`]): one per register-tile shape, edge tiles from the same table.
//!
//! Loop order (per task): panel groups of `np` panels (`np·16` output channels, whose
//! weights — at most `4·16·in` bytes, 704 KiB for in = 11008 — stay in L2 while) × row
//! blocks of `mr` rows stream past them. Each weight load feeds `mr` rows and each
//! activation broadcast `np` vectors. No `kc` blocking: per step the tile reads
//! `np·64` weight bytes from L2 and `mr·4` activation bytes, well inside L2 bandwidth,
//! and batch 1 (GEMV) streams every weight byte exactly once.

use rayon::prelude::*;

use super::offsets::{finish_row_w4, group_sums, offset_row};
use super::pack::{PackedW4, PackedW8, NR};
use super::{finish_w8, K_BLOCK};

/// Rows of the largest microkernel tile any ISA uses.
pub(crate) const MR_MAX: usize = 8;
/// Columns (output channels) of the tile buffer: up to 4 panels.
pub(crate) const LDC: usize = 64;
/// A tile's results, row-major `[MR_MAX][LDC]`.
pub(crate) type CTile<T> = [T; MR_MAX * LDC];

/// Operands of one W8 tile: `mr` activation rows × `np` weight panels over `k4` steps.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    /// Activation row 0 at the first input of the range (4 bytes per k4 step).
    pub a: *const u8,
    /// Bytes between activation rows.
    pub lda: usize,
    /// Panel 0 at the first k4 step of the range.
    pub b: *const u8,
    /// Bytes between panels.
    pub ldb: usize,
    /// Number of k4 steps.
    pub k4: usize,
}

/// Operands of one W4 tile: every group of the row.
#[derive(Clone, Copy)]
pub(crate) struct W4Tile {
    /// `a`, `lda`, `ldb` as for W8 (`ldb` = `k4 · 32` bytes of nibbles per panel); `k4`
    /// is the number of k4 steps per group.
    pub t: Tile,
    /// Scales of panel 0, group 0: `[groups][16]` per panel.
    pub scales: *const f32,
    /// Floats between panels' scales (`groups · 16`).
    pub ldscale: usize,
    /// `8 · Σ_{k in g} qx[r, k]` for row 0, group 0 (`groups` per row; read by the x86
    /// microkernels only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub xcorr: *const i32,
    /// Number of groups.
    pub groups: usize,
}

/// A W8 microkernel: writes the exact i32 (wrapping) sums `Σ a·b` of an
/// `mr × np·16` tile into `c[r * LDC + p * 16 + j]`.
pub(crate) type W8TileFn = unsafe fn(&Tile, &mut CTile<i32>);
/// A W4 microkernel: writes `Σ_g (acc_g as f32) * scale[o, g]` (in group order, from 0.0)
/// of an `mr × np·16` tile into `c[r * LDC + p * 16 + j]`.
pub(crate) type W4TileFn = unsafe fn(&W4Tile, &mut CTile<f32>);

/// Operands of the float epilogue of one W8 tile whose sums fit one [`K_BLOCK`]:
/// `out[r, j] = finish_w8((c[r, j] - 128·colsums[j]) as f32, xs[r], ws[j], bias[j])`
/// (the subtraction only for shifted kernels, wrapping), for `r < mr`, `j < cols`.
#[derive(Clone, Copy)]
pub(crate) struct W8Finish {
    /// The tile's i32 sums, row-major with stride [`LDC`] (a whole [`CTile`]).
    pub c: *const i32,
    /// Rows of the tile.
    pub mr: usize,
    /// Valid columns, `1..=LDC`.
    pub cols: usize,
    /// `Σ w` of the tile's columns (`cols` values) for shifted kernels, else `None`.
    pub colsums: Option<*const i32>,
    /// Activation scales of the tile's rows (`mr` values).
    pub xs: *const f32,
    /// Weight scales of the tile's columns (`cols` values).
    pub ws: *const f32,
    /// Bias of the tile's columns (`cols` values), if any.
    pub bias: Option<*const f32>,
    /// Output element (row 0, column 0) of the tile; rows `ldo` floats apart.
    pub out: *mut f32,
    /// Floats between output rows.
    pub ldo: usize,
}

/// A vectorized W8 epilogue: must give exactly the results of [`finish_w8_generic`].
pub(crate) type W8FinishFn = unsafe fn(&W8Finish);

/// A W8 microkernel family of one ISA.
pub(crate) struct W8Kernel {
    /// Largest tile: rows, panels.
    pub mr: usize,
    /// Largest tile: panels.
    pub np: usize,
    /// Activations are fed as `qx ^ 0x80` (= `qx + 128` as u8) and the kernel's sums are
    /// `Σ (qx + 128)·w`: the driver subtracts `128 · Σ w`. Otherwise activations are fed
    /// as the raw i8 bytes.
    pub shifted: bool,
    /// The kernels take weights of -128 (the AVX2 sign trick needs [-127, 127]; weights
    /// with a -128 run the scalar kernel there).
    pub full_range: bool,
    /// The microkernel for an `mr × np` tile (`1 ≤ mr ≤ self.mr`, `1 ≤ np ≤ self.np`).
    pub tile: fn(usize, usize) -> W8TileFn,
    /// The ISA's epilogue for single-block tiles; `None` runs [`finish_w8_generic`]. With
    /// short rows (in = 384) the epilogue is a fifth of the work, so it must be as wide
    /// as the microkernel.
    pub finish: Option<W8FinishFn>,
}

/// A W4 microkernel family of one ISA (activations always raw i8).
pub(crate) struct W4Kernel {
    /// Largest tile rows.
    pub mr: usize,
    /// Largest tile panels.
    pub np: usize,
    /// The microkernel for an `mr × np` tile.
    pub tile: fn(usize, usize) -> W4TileFn,
}

/// Work (multiply-adds) below which a call from outside the rayon pool runs on the
/// calling thread: handing work to the pool from outside injects it and puts the caller
/// to sleep until a worker finishes, two wake-ups that cost tens of microseconds on a
/// busy machine or a VM, the time of ~4M multiply-adds.
pub(crate) const PAR_MIN_MACS: usize = 1 << 22;

/// The same threshold for a call made on a rayon worker (inside `ThreadPool::install`,
/// `rayon::scope`, a parallel iterator): there a split is a push onto the worker's own
/// deque that a spinning sibling steals within about a microsecond, so a decoder's
/// one-token GEMVs (0.1–1M multiply-adds) gain from every thread.
pub(crate) const PAR_MIN_MACS_ON_WORKER: usize = 1 << 16;

/// The output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint elements of `out` (distinct (row, channel) ranges) and the
// slice outlives the parallel loop, so sharing the pointer is sound.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// A task: panels `p0..p1` × rows `r0..r1`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Task {
    pub(crate) p0: usize,
    pub(crate) p1: usize,
    pub(crate) r0: usize,
    pub(crate) r1: usize,
}

/// Splits the (panel, row) grid into tasks. Large work: whole panel groups, whole row
/// blocks, about four tasks per thread. Work below [`PAR_MIN_MACS`] that is still worth
/// splitting (on a rayon worker, see [`PAR_MIN_MACS_ON_WORKER`]): one task per thread,
/// the panels shared evenly (boundaries need not fall on panel groups; the drivers run an
/// edge tile there) and every row in each, so each weight byte is read once. A single
/// task when the work is small or there is one thread.
pub(crate) fn plan(rows: usize, panels: usize, mr: usize, np: usize, macs: usize) -> Vec<Task> {
    let threads = rayon::current_num_threads();
    let min = if rayon::current_thread_index().is_some() {
        PAR_MIN_MACS_ON_WORKER
    } else {
        PAR_MIN_MACS
    };
    if threads <= 1 || macs < min || panels == 0 || rows == 0 {
        return vec![Task {
            p0: 0,
            p1: panels,
            r0: 0,
            r1: rows,
        }];
    }
    if macs < PAR_MIN_MACS {
        let tp = threads.min(panels);
        return (0..tp)
            .map(|i| Task {
                p0: i * panels / tp,
                p1: (i + 1) * panels / tp,
                r0: 0,
                r1: rows,
            })
            .collect();
    }
    let target = threads * 4;
    let n_pg = panels.div_ceil(np);
    let n_rb = rows.div_ceil(mr);
    let tp = n_pg.min(target);
    let tr = n_rb.min(target.div_ceil(tp));
    let (pg_per, rb_per) = (n_pg.div_ceil(tp), n_rb.div_ceil(tr));
    let mut tasks = Vec::with_capacity(tp * tr);
    for pg in (0..n_pg).step_by(pg_per) {
        for rb in (0..n_rb).step_by(rb_per) {
            tasks.push(Task {
                p0: pg * np,
                p1: ((pg + pg_per) * np).min(panels),
                r0: rb * mr,
                r1: ((rb + rb_per) * mr).min(rows),
            });
        }
    }
    tasks
}

/// Rows per tile when `rows` are cut into the fewest tiles of at most `mr` rows, sized
/// evenly (8 rows with `mr = 6` run as 2 × 4 rather than 6 + 2).
fn balanced_rows(rows: usize, mr: usize) -> usize {
    if rows == 0 {
        return 1;
    }
    rows.div_ceil(rows.div_ceil(mr))
}

/// `dst[j] = finish_w8(acc[j], x_scale, ws[j], bias[j])`, written as straight loops over
/// slices so the compiler vectorizes them (same IEEE operations, no contraction).
#[inline(always)]
pub(crate) fn epilogue_w8(
    dst: &mut [f32],
    acc: impl Iterator<Item = f32>,
    x_scale: f32,
    ws: &[f32],
    bias: Option<&[f32]>,
) {
    match bias {
        Some(bs) => {
            for (((d, a), &s), &b) in dst.iter_mut().zip(acc).zip(ws).zip(bs) {
                *d = finish_w8(a, x_scale, s, Some(b));
            }
        }
        None => {
            for ((d, a), &s) in dst.iter_mut().zip(acc).zip(ws) {
                *d = finish_w8(a, x_scale, s, None);
            }
        }
    }
}

/// The portable W8 epilogue of one single-block tile (the contract of [`W8Finish`]).
///
/// # Safety
/// The pointers must be valid for the lengths [`W8Finish`] documents, and no other
/// reference to the output elements may exist during the call.
pub(crate) unsafe fn finish_w8_generic(f: &W8Finish) {
    // SAFETY: lengths as documented on `W8Finish`, vouched for by the caller.
    let (c, xs, ws, cs, bias) = unsafe {
        (
            std::slice::from_raw_parts(f.c, MR_MAX * LDC),
            std::slice::from_raw_parts(f.xs, f.mr),
            std::slice::from_raw_parts(f.ws, f.cols),
            f.colsums.map(|p| std::slice::from_raw_parts(p, f.cols)),
            f.bias.map(|p| std::slice::from_raw_parts(p, f.cols)),
        )
    };
    let mut tmp = [0f32; LDC];
    for (r, &x_scale) in xs.iter().enumerate() {
        let dst = &mut tmp[..f.cols];
        let row = &c[r * LDC..r * LDC + f.cols];
        match cs {
            Some(cs) => {
                let acc = row
                    .iter()
                    .zip(cs)
                    .map(|(&a, &s)| a.wrapping_sub(s.wrapping_mul(128)) as f32);
                epilogue_w8(dst, acc, x_scale, ws, bias);
            }
            None => epilogue_w8(dst, row.iter().map(|&a| a as f32), x_scale, ws, bias),
        }
        // SAFETY: row `r < mr` of the output tile, `cols` floats, exclusively ours.
        unsafe { store_row(f.out.add(r * f.ldo), dst) };
    }
}

/// Copies a finished tile row to the output. The output is only ever written through
/// raw pointers (never borrowed as a slice), so it may start uninitialized.
///
/// # Safety
/// `dst` must be valid for `vals.len()` float writes that nothing else accesses.
#[inline(always)]
pub(crate) unsafe fn store_row(dst: *mut f32, vals: &[f32]) {
    // SAFETY: forwarded contract; `vals` is a distinct (stack) buffer.
    unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), dst, vals.len()) };
}

pub(crate) fn run_tasks(tasks: &[Task], f: impl Fn(Task) + Sync + Send) {
    if tasks.len() <= 1 {
        tasks.iter().for_each(|&t| f(t));
    } else {
        tasks.par_iter().for_each(|&t| f(t));
    }
}

/// Copies `rows × k` activations into rows of `kp ≥ k` bytes, padding with `pad`.
fn prep_activations(qx: &[i8], rows: usize, k: usize, kp: usize, xor: u8) -> Vec<u8> {
    let mut a = vec![xor; rows * kp];
    if k > 0 {
        for (dst, src) in a.chunks_exact_mut(kp).zip(qx.chunks_exact(k)) {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = (s as u8) ^ xor;
            }
        }
    }
    a
}

/// W8A8 on a SIMD microkernel family; same results as `scalar::matmul_w8a8`.
///
/// # Safety
/// The CPU must support the instructions of `kern`'s microkernels; `out` must be valid
/// for `rows · out_features` float writes (it may be uninitialized: every element is
/// written exactly once, through raw pointers) and not accessed elsewhere meanwhile.
pub(crate) unsafe fn matmul_w8a8(
    kern: &W8Kernel,
    qx: &[i8],
    x_scales: &[f32],
    rows: usize,
    w: &PackedW8,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    let (n, k, k4) = (w.out_features(), w.in_features(), w.k4());
    let kp = k4 * 4;
    let a = prep_activations(qx, rows, k, kp, if kern.shifted { 0x80 } else { 0 });
    let kblocks = super::pack::kblocks(k);
    let bytes = w.bytes();
    let out_ptr = OutPtr(out);
    let tasks = plan(rows, w.panels(), kern.mr, kern.np, rows * n * k);
    run_tasks(&tasks, |task| {
        let mut c = [0i32; MR_MAX * LDC];
        let mut c64 = [0i64; MR_MAX * LDC];
        let mr_eff = balanced_rows(task.r1 - task.r0, kern.mr);
        for p0 in (task.p0..task.p1).step_by(kern.np) {
            let np = kern.np.min(task.p1 - p0);
            let cols = (n - p0 * NR).min(np * NR);
            for r0 in (task.r0..task.r1).step_by(mr_eff) {
                let mr = mr_eff.min(task.r1 - r0);
                let f = (kern.tile)(mr, np);
                let o0 = p0 * NR;
                let tile_at = |kb: usize| {
                    let s4 = kb * (K_BLOCK / 4);
                    Tile {
                        a: a[r0 * kp + s4 * 4..].as_ptr(),
                        lda: kp,
                        b: bytes[p0 * k4 * 64 + s4 * 64..].as_ptr(),
                        ldb: k4 * 64,
                        k4: (k4 - s4).min(K_BLOCK / 4),
                    }
                };
                if kblocks == 1 {
                    // SAFETY: the tile reads `mr` rows of `a` (each `kp` bytes) and `np`
                    // panels of `k4*64` bytes — inside `a` and `bytes` since
                    // `r0 + mr ≤ rows` and `p0 + np ≤ panels`; `c` holds MR_MAX×LDC
                    // values with `mr ≤ MR_MAX`, `np*16 ≤ LDC`; the caller guarantees the
                    // CPU features.
                    unsafe { f(&tile_at(0), &mut c) };
                    let fin = W8Finish {
                        c: c.as_ptr(),
                        mr,
                        cols,
                        colsums: kern.shifted.then(|| w.colsums(0)[o0..o0 + cols].as_ptr()),
                        xs: x_scales[r0..r0 + mr].as_ptr(),
                        ws: w.scales()[o0..o0 + cols].as_ptr(),
                        bias: bias.map(|b| b[o0..o0 + cols].as_ptr()),
                        // SAFETY: `r0 < rows`, `o0 < n`: an element of `out` (rows*n long).
                        out: unsafe { out_ptr.get().add(r0 * n + o0) },
                        ldo: n,
                    };
                    // SAFETY: every pointer covers the lengths `W8Finish` documents (the
                    // slices above; output rows `r0..r0+mr`, columns `o0..o0+cols`, which
                    // only this task writes); `finish` is the ISA's own, whose features
                    // the caller guarantees.
                    unsafe { kern.finish.unwrap_or(finish_w8_generic)(&fin) };
                    continue;
                }
                for kb in 0..kblocks {
                    // SAFETY: as above, for the k4 steps of block `kb` (inside every row
                    // and panel).
                    unsafe { f(&tile_at(kb), &mut c) };
                    let cs = &w.colsums(kb)[o0..];
                    for r in 0..mr {
                        for j in 0..cols {
                            let mut v = c[r * LDC + j];
                            if kern.shifted {
                                v = v.wrapping_sub(cs[j].wrapping_mul(128));
                            }
                            let v = i64::from(v);
                            c64[r * LDC + j] = if kb == 0 { v } else { c64[r * LDC + j] + v };
                        }
                    }
                }
                let ws = &w.scales()[o0..o0 + cols];
                let bs = bias.map(|b| &b[o0..o0 + cols]);
                let mut tmp = [0f32; LDC];
                for r in 0..mr {
                    let t = r0 + r;
                    let acc = c64[r * LDC..r * LDC + cols].iter().map(|&a| a as f32);
                    epilogue_w8(&mut tmp[..cols], acc, x_scales[t], ws, bs);
                    // SAFETY: `t < rows` and `o0 + cols ≤ n`, so the range lies inside
                    // `out` (rows*n long); no other task writes these (t, o) elements.
                    unsafe { store_row(out_ptr.get().add(t * n + o0), &tmp[..cols]) };
                }
            }
        }
    });
}

/// W4A8 on a SIMD microkernel family; same results as `scalar::matmul_w4a8`.
///
/// # Safety
/// As [`matmul_w8a8`] (`out` may be uninitialized).
pub(crate) unsafe fn matmul_w4a8(
    kern: &W4Kernel,
    qx: &[i8],
    x_scales: &[f32],
    rows: usize,
    w: &PackedW4,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    let (n, k, k4, groups, group) = (
        w.out_features(),
        w.in_features(),
        w.k4(),
        w.groups(),
        w.group(),
    );
    let kp = k4 * 4;
    let a = prep_activations(qx, rows, k, kp, 0);
    // S_g per row and group (the offsets' factor); the kernels' correction is 8·S_g.
    let mut xsum = vec![0i32; rows * groups];
    if k > 0 {
        for (xs, xr) in xsum.chunks_exact_mut(groups).zip(qx.chunks_exact(k)) {
            group_sums(xr, group, xs);
        }
    }
    let xcorr: Vec<i32> = xsum.iter().map(|&s| 8 * s).collect();
    let offsets_t = w.offsets_t();
    let bytes = w.bytes();
    let pscales = w.panel_scales();
    let out_ptr = OutPtr(out);
    let tasks = plan(rows, w.panels(), kern.mr, kern.np, rows * n * k);
    run_tasks(&tasks, |task| {
        let mut c = [0f32; MR_MAX * LDC];
        let mr_eff = balanced_rows(task.r1 - task.r0, kern.mr);
        for p0 in (task.p0..task.p1).step_by(kern.np) {
            let np = kern.np.min(task.p1 - p0);
            let cols = (n - p0 * NR).min(np * NR);
            for r0 in (task.r0..task.r1).step_by(mr_eff) {
                let mr = mr_eff.min(task.r1 - r0);
                let f = (kern.tile)(mr, np);
                let tile = W4Tile {
                    t: Tile {
                        a: a[r0 * kp..].as_ptr(),
                        lda: kp,
                        b: bytes[p0 * k4 * 32..].as_ptr(),
                        ldb: k4 * 32,
                        k4: group / 4,
                    },
                    scales: pscales[p0 * groups * NR..].as_ptr(),
                    ldscale: groups * NR,
                    xcorr: xcorr[r0 * groups..].as_ptr(),
                    groups,
                };
                // SAFETY: the tile reads `mr` activation rows of `kp = groups*group` bytes,
                // `np` panels of `k4*32` nibble bytes, `np` panels of `groups*16` scales
                // and `mr` rows of `groups` corrections, all in bounds because
                // `r0 + mr ≤ rows` and `p0 + np ≤ panels`; `c` holds MR_MAX×LDC values;
                // the caller guarantees the CPU features.
                unsafe { f(&tile, &mut c) };
                let o0 = p0 * NR;
                let bs = bias.map(|b| &b[o0..o0 + cols]);
                let mut tmp = [0f32; LDC];
                let mut off = [0f32; LDC];
                for r in 0..mr {
                    let t = r0 + r;
                    let dst = &mut tmp[..cols];
                    let sums = &c[r * LDC..r * LDC + cols];
                    let off = offsets_t.map(|m| {
                        let off = &mut off[..cols];
                        offset_row(&xsum[t * groups..(t + 1) * groups], m, n, o0, off);
                        &*off
                    });
                    finish_row_w4(dst, sums, off, x_scales[t], bs);
                    // SAFETY: as in `matmul_w8a8`: an in-bounds range of `out` that only
                    // this task writes.
                    unsafe { store_row(out_ptr.get().add(t * n + o0), dst) };
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks every (panel, row) cell of `tasks`; true when each is covered exactly once.
    fn covers_once(tasks: &[Task], rows: usize, panels: usize) -> bool {
        let mut seen = vec![0u8; rows * panels];
        for t in tasks {
            assert!(t.p0 < t.p1 && t.r0 < t.r1, "{t:?}");
            for p in t.p0..t.p1 {
                for r in t.r0..t.r1 {
                    seen[p * rows + r] += 1;
                }
            }
        }
        seen.iter().all(|&c| c == 1)
    }

    const GRIDS: [(usize, usize, usize, usize); 5] = [
        (1, 1, 6, 4),
        (128, 256, 6, 4),
        (8, 24, 6, 4),
        (17, 3, 4, 1),
        (300, 5, 2, 1),
    ];

    /// Every (panel, row) cell belongs to exactly one task, for any thread count; large
    /// work starts its tasks on whole tiles.
    #[test]
    fn plan_covers_the_grid_once() {
        for threads in [1, 2, 3, 7] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                for (rows, panels, mr, np) in GRIDS {
                    let tasks = plan(rows, panels, mr, np, usize::MAX);
                    for t in &tasks {
                        assert!(
                            t.p0 % np == 0 && t.r0 % mr == 0,
                            "tasks start on whole tiles: {t:?}"
                        );
                    }
                    assert!(
                        covers_once(&tasks, rows, panels),
                        "rows={rows} panels={panels} threads={threads}"
                    );
                    if threads == 1 {
                        assert_eq!(tasks.len(), 1);
                    }
                }
            });
        }
    }

    /// Below [`PAR_MIN_MACS`]: one task from outside the pool; on a worker, above
    /// [`PAR_MIN_MACS_ON_WORKER`], one task per thread (at most one per panel), each with
    /// every row and a near-equal share of the panels.
    #[test]
    fn small_work_splits_only_on_a_worker() {
        let small = PAR_MIN_MACS - 1;
        assert_eq!(plan(128, 256, 6, 4, small).len(), 1, "outside the pool");
        for threads in [1, 2, 3, 7] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                assert_eq!(plan(1, 36, 6, 2, PAR_MIN_MACS_ON_WORKER - 1).len(), 1);
                for (rows, panels, mr, np) in GRIDS {
                    let tasks = plan(rows, panels, mr, np, small);
                    assert_eq!(tasks.len(), threads.min(panels), "{rows}x{panels}");
                    assert!(covers_once(&tasks, rows, panels), "{rows}x{panels}");
                    for t in &tasks {
                        assert_eq!((t.r0, t.r1), (0, rows));
                        let share = t.p1 - t.p0;
                        assert!(
                            share == panels / tasks.len() || share == panels.div_ceil(tasks.len())
                        );
                    }
                }
            });
        }
    }

    #[test]
    fn balanced_rows_never_exceed_the_tile() {
        for mr in 1..=8 {
            for rows in 0..50 {
                let b = balanced_rows(rows, mr);
                assert!(b >= 1 && b <= mr);
                if rows > 0 {
                    assert_eq!(rows.div_ceil(b), rows.div_ceil(mr), "same tile count");
                }
            }
        }
        assert_eq!(balanced_rows(8, 6), 4);
    }
}
