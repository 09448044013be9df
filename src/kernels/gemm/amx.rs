//! Intel AMX microkernels: `asm!` blocks of `ldtilecfg`, `tilezero`, `tileloadd`,
//! `tdpbssd`, `tilestored`, `tilerelease` (the `core::arch` AMX intrinsics are unstable;
//! stable `asm!` assembles these mnemonics). Each microkernel's tile work is one `asm!`
//! block and the tile registers are declared as clobbers, so no tile value lives across
//! blocks; only the tile configuration does (loaded by the driver on each thread).
//!
//! The tile plan, the operands and the exactness argument are in `amx_driver.rs`; the
//! emulated twins of these blocks, instruction for instruction, are in `amx_emu.rs` and
//! carry the bit-exact tests on machines without AMX.
//!
//! Instruction forms (Intel SDM): `tileloadd tmm, [base + index·1]` loads `rows` rows of
//! `colsb` bytes, row `r` from `base + r·index` (the SIB index register is the stride);
//! `tilestored [base + index·1], tmm` is its inverse; `tdpbssd tmm1, tmm2, tmm3` is
//! `tmm1 += tmm2 (s8) · tmm3 (s8)` (tmm2 = A rows, tmm3 = B rows of 4-byte groups).
#![cfg(target_arch = "x86_64")]

use std::arch::asm;

use std::arch::x86_64::*;

use super::amx_driver::{
    AmxKernels, GroupArgs, GroupFn, TileArgs, TileConfig, TileFn, C_STRIDE, GROUP_C, GROUP_C_BYTES,
    TILE_ROWS,
};
use super::avx512::ROW_QUANT;
use super::pack::NR;
use super::table::Table;
use crate::kernels::detect::Isa;

/// Bytes from C tile row 0 to the second row tile's C (16 rows of the C buffer).
const C_ROW_TILE: usize = TILE_ROWS * C_STRIDE;

/// Loads `cfg` into this thread's tile configuration (and zeroes every tile).
///
/// # Safety
/// The CPU must have AMX-TILE and the process the tile data permission ([`Amx`] token).
///
/// [`Amx`]: crate::kernels::detect::Amx
unsafe fn configure(cfg: &TileConfig) {
    // SAFETY: `cfg` is 64 readable bytes of a valid palette-1 configuration (built by
    // `TileConfig::new`); ldtilecfg only reads them, and it zeroes all tiles (clobbered).
    unsafe {
        asm!(
            "ldtilecfg [{cfg}]",
            cfg = in(reg) cfg.0.as_ptr(),
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack, readonly),
        );
    }
}

/// Returns this thread's tile state to the init state.
///
/// # Safety
/// As [`configure`].
unsafe fn release() {
    // SAFETY: tilerelease touches no memory; the tiles it zeroes are clobbered.
    unsafe {
        asm!(
            "tilerelease",
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack, nomem),
        );
    }
}

/// 2 row tiles × 2 panels: 32 rows × 32 channels.
///
/// ```text
/// tmm0 C(0,0) += tmm4 A(rows 0..16)  · tmm6 B(panel 0)
/// tmm1 C(0,1) += tmm4 A(rows 0..16)  · tmm7 B(panel 1)
/// tmm2 C(1,0) += tmm5 A(rows 16..32) · tmm6 B(panel 0)
/// tmm3 C(1,1) += tmm5 A(rows 16..32) · tmm7 B(panel 1)
/// ```
///
/// Software pipelined: tile registers are not renamed, so each operand tile of the next
/// chunk is loaded right after the last product that reads its current value, and the
/// loads overlap the remaining products instead of waiting for all four.
///
/// # Safety
/// AMX usable with this thread's configuration loaded (`TileConfig::new(kt)`); `t`
/// satisfies the [`TileArgs`] contract for 2 row tiles and 2 panels.
unsafe fn tile_2x2(t: &TileArgs) {
    // SAFETY: every load reads the configured rows × colsb from the ranges the caller
    // vouches for (A: 2 row tiles of `chunks` tiles; B: 2 panels of `chunks` tiles; C: 32
    // rows × 128 bytes when `acc`); the stores write 32 rows × 128 bytes of the C buffer.
    unsafe {
        asm!(
            "test {acc}, {acc}",
            "jz 2f",
            "tileloadd tmm0, [{c} + {cs}*1]",
            "tileloadd tmm1, [{c} + {cs}*1 + 64]",
            "tileloadd tmm2, [{c} + {cs}*1 + {crt}]",
            "tileloadd tmm3, [{c} + {cs}*1 + {crt} + 64]",
            "jmp 3f",
            "2:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "3:",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "dec {n}",
            "jz 5f",
            "4:",
            "add {a0}, {astep}",
            "add {a1}, {astep}",
            "add {b0}, {bstep}",
            "add {b1}, {bstep}",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tdpbssd tmm2, tmm5, tmm6",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbssd tmm3, tmm5, tmm7",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "dec {n}",
            "jnz 4b",
            "5:",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tdpbssd tmm2, tmm5, tmm6",
            "tdpbssd tmm3, tmm5, tmm7",
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 64], tmm1",
            "tilestored [{c} + {cs}*1 + {crt}], tmm2",
            "tilestored [{c} + {cs}*1 + {crt} + 64], tmm3",
            a0 = inout(reg) t.a => _,
            a1 = inout(reg) t.a.wrapping_add(t.a_tile) => _,
            b0 = inout(reg) t.b => _,
            b1 = inout(reg) t.b.wrapping_add(t.ldp) => _,
            n = inout(reg) t.chunks => _,
            s = in(reg) 64usize,
            cs = in(reg) C_STRIDE,
            lda = in(reg) t.lda,
            astep = in(reg) t.a_step,
            bstep = in(reg) t.b_step,
            acc = in(reg) usize::from(t.acc),
            c = in(reg) t.c,
            crt = const C_ROW_TILE,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

/// 2 row tiles × 1 panel: 32 rows × 16 channels.
///
/// ```text
/// tmm0 C(0,0) += tmm4 A(rows 0..16)  · tmm6 B(panel 0)
/// tmm2 C(1,0) += tmm5 A(rows 16..32) · tmm6 B(panel 0)
/// ```
///
/// Pipelined as [`tile_2x2`].
///
/// # Safety
/// As [`tile_2x2`], for 2 row tiles and 1 panel.
unsafe fn tile_2x1(t: &TileArgs) {
    // SAFETY: as in `tile_2x2`, one panel (B reads and C columns of panel 0 only).
    unsafe {
        asm!(
            "test {acc}, {acc}",
            "jz 2f",
            "tileloadd tmm0, [{c} + {cs}*1]",
            "tileloadd tmm2, [{c} + {cs}*1 + {crt}]",
            "jmp 3f",
            "2:",
            "tilezero tmm0",
            "tilezero tmm2",
            "3:",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "dec {n}",
            "jz 5f",
            "4:",
            "add {a0}, {astep}",
            "add {a1}, {astep}",
            "add {b0}, {bstep}",
            "tdpbssd tmm0, tmm4, tmm6",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tdpbssd tmm2, tmm5, tmm6",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "dec {n}",
            "jnz 4b",
            "5:",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm2, tmm5, tmm6",
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + {crt}], tmm2",
            a0 = inout(reg) t.a => _,
            a1 = inout(reg) t.a.wrapping_add(t.a_tile) => _,
            b0 = inout(reg) t.b => _,
            n = inout(reg) t.chunks => _,
            s = in(reg) 64usize,
            cs = in(reg) C_STRIDE,
            lda = in(reg) t.lda,
            astep = in(reg) t.a_step,
            bstep = in(reg) t.b_step,
            acc = in(reg) usize::from(t.acc),
            c = in(reg) t.c,
            crt = const C_ROW_TILE,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

/// 1 row tile × 2 panels: 16 rows × 32 channels.
///
/// ```text
/// tmm0 C(0,0) += tmm4 A(rows 0..16) · tmm6 B(panel 0)
/// tmm1 C(0,1) += tmm4 A(rows 0..16) · tmm7 B(panel 1)
/// ```
///
/// Pipelined as [`tile_2x2`].
///
/// # Safety
/// As [`tile_2x2`], for 1 row tile and 2 panels.
unsafe fn tile_1x2(t: &TileArgs) {
    // SAFETY: as in `tile_2x2`, one row tile (A reads and C rows of row tile 0 only).
    unsafe {
        asm!(
            "test {acc}, {acc}",
            "jz 2f",
            "tileloadd tmm0, [{c} + {cs}*1]",
            "tileloadd tmm1, [{c} + {cs}*1 + 64]",
            "jmp 3f",
            "2:",
            "tilezero tmm0",
            "tilezero tmm1",
            "3:",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "dec {n}",
            "jz 5f",
            "4:",
            "add {a0}, {astep}",
            "add {b0}, {bstep}",
            "add {b1}, {bstep}",
            "tdpbssd tmm0, tmm4, tmm6",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbssd tmm1, tmm4, tmm7",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "dec {n}",
            "jnz 4b",
            "5:",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 64], tmm1",
            a0 = inout(reg) t.a => _,
            b0 = inout(reg) t.b => _,
            b1 = inout(reg) t.b.wrapping_add(t.ldp) => _,
            n = inout(reg) t.chunks => _,
            s = in(reg) 64usize,
            cs = in(reg) C_STRIDE,
            lda = in(reg) t.lda,
            astep = in(reg) t.a_step,
            bstep = in(reg) t.b_step,
            acc = in(reg) usize::from(t.acc),
            c = in(reg) t.c,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

/// 1 row tile × 1 panel: 16 rows × 16 channels.
///
/// ```text
/// tmm0 C(0,0) += tmm4 A(rows 0..16) · tmm6 B(panel 0)
/// ```
///
/// One product per chunk: nothing to overlap inside a chunk, so the loop is plain.
///
/// # Safety
/// As [`tile_2x2`], for 1 row tile and 1 panel.
unsafe fn tile_1x1(t: &TileArgs) {
    // SAFETY: as in `tile_2x2`, one row tile and one panel.
    unsafe {
        asm!(
            "test {acc}, {acc}",
            "jz 2f",
            "tileloadd tmm0, [{c} + {cs}*1]",
            "jmp 3f",
            "2:",
            "tilezero tmm0",
            "3:",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbssd tmm0, tmm4, tmm6",
            "add {a0}, {astep}",
            "add {b0}, {bstep}",
            "dec {n}",
            "jnz 3b",
            "tilestored [{c} + {cs}*1], tmm0",
            a0 = inout(reg) t.a => _,
            b0 = inout(reg) t.b => _,
            n = inout(reg) t.chunks => _,
            s = in(reg) 64usize,
            cs = in(reg) C_STRIDE,
            lda = in(reg) t.lda,
            astep = in(reg) t.a_step,
            bstep = in(reg) t.b_step,
            acc = in(reg) usize::from(t.acc),
            c = in(reg) t.c,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

/// Group-wise 2 row tile(s) × 2 panel(s) (the W4A8 microkernel): `groups` runs of
/// `group_chunks` chunks, each summed from zero and stored to its own C tiles (see
/// [`GroupArgs`]). One block for every group, pipelined as [`tile_2x2`] across group
/// ends too: the next chunk's operand loads are in flight while a group's C is stored.
///
/// # Safety
/// AMX usable with this thread's configuration loaded (`TileConfig::new(lda)`); `t`
/// satisfies the [`GroupArgs`] contract for 2 row tile(s) and 2 panel(s).
unsafe fn group_2x2(t: &GroupArgs) {
    // SAFETY: the loads read `groups·group_chunks` consecutive A tiles per row tile and B
    // tiles per panel, the ranges the caller vouches for; the stores write the `groups`
    // C areas of `GROUP_C_BYTES` at `c`.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "mov {k}, {gc}",
            "dec {n}",
            "jz 5f",
            "4:",
            "add {a0}, {step}",
            "add {a1}, {step}",
            "add {b0}, {step}",
            "add {b1}, {step}",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tdpbssd tmm2, tmm5, tmm6",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbssd tmm3, tmm5, tmm7",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "dec {k}",
            "jnz 6f",
            "tilestored [{c} + {s}*1 + 0], tmm0",
            "tilestored [{c} + {s}*1 + 1024], tmm1",
            "tilestored [{c} + {s}*1 + 2048], tmm2",
            "tilestored [{c} + {s}*1 + 3072], tmm3",
            "add {c}, {gbytes}",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "mov {k}, {gc}",
            "6:",
            "dec {n}",
            "jnz 4b",
            "5:",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tdpbssd tmm2, tmm5, tmm6",
            "tdpbssd tmm3, tmm5, tmm7",
            "tilestored [{c} + {s}*1 + 0], tmm0",
            "tilestored [{c} + {s}*1 + 1024], tmm1",
            "tilestored [{c} + {s}*1 + 2048], tmm2",
            "tilestored [{c} + {s}*1 + 3072], tmm3",
            a0 = inout(reg) t.a => _,
            a1 = inout(reg) t.a.wrapping_add(t.a_tile) => _,
            b0 = inout(reg) t.b => _,
            b1 = inout(reg) t.b.wrapping_add(t.ldp) => _,
            n = inout(reg) t.groups * t.group_chunks => _,
            k = out(reg) _,
            gc = in(reg) t.group_chunks,
            s = in(reg) 64usize,
            lda = in(reg) t.lda,
            step = in(reg) t.step,
            c = inout(reg) t.c => _,
            gbytes = const GROUP_C_BYTES,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

/// Group-wise 2 row tile(s) × 1 panel(s) (the W4A8 microkernel): `groups` runs of
/// `group_chunks` chunks, each summed from zero and stored to its own C tiles (see
/// [`GroupArgs`]). One block for every group, pipelined as [`tile_2x2`] across group
/// ends too: the next chunk's operand loads are in flight while a group's C is stored.
///
/// # Safety
/// AMX usable with this thread's configuration loaded (`TileConfig::new(lda)`); `t`
/// satisfies the [`GroupArgs`] contract for 2 row tile(s) and 1 panel(s).
unsafe fn group_2x1(t: &GroupArgs) {
    // SAFETY: the loads read `groups·group_chunks` consecutive A tiles per row tile and B
    // tiles per panel, the ranges the caller vouches for; the stores write the `groups`
    // C areas of `GROUP_C_BYTES` at `c`.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm2",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "mov {k}, {gc}",
            "dec {n}",
            "jz 5f",
            "4:",
            "add {a0}, {step}",
            "add {a1}, {step}",
            "add {b0}, {step}",
            "tdpbssd tmm0, tmm4, tmm6",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tdpbssd tmm2, tmm5, tmm6",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "dec {k}",
            "jnz 6f",
            "tilestored [{c} + {s}*1 + 0], tmm0",
            "tilestored [{c} + {s}*1 + 2048], tmm2",
            "add {c}, {gbytes}",
            "tilezero tmm0",
            "tilezero tmm2",
            "mov {k}, {gc}",
            "6:",
            "dec {n}",
            "jnz 4b",
            "5:",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm2, tmm5, tmm6",
            "tilestored [{c} + {s}*1 + 0], tmm0",
            "tilestored [{c} + {s}*1 + 2048], tmm2",
            a0 = inout(reg) t.a => _,
            a1 = inout(reg) t.a.wrapping_add(t.a_tile) => _,
            b0 = inout(reg) t.b => _,
            n = inout(reg) t.groups * t.group_chunks => _,
            k = out(reg) _,
            gc = in(reg) t.group_chunks,
            s = in(reg) 64usize,
            lda = in(reg) t.lda,
            step = in(reg) t.step,
            c = inout(reg) t.c => _,
            gbytes = const GROUP_C_BYTES,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

/// Group-wise 1 row tile(s) × 2 panel(s) (the W4A8 microkernel): `groups` runs of
/// `group_chunks` chunks, each summed from zero and stored to its own C tiles (see
/// [`GroupArgs`]). One block for every group, pipelined as [`tile_2x2`] across group
/// ends too: the next chunk's operand loads are in flight while a group's C is stored.
///
/// # Safety
/// AMX usable with this thread's configuration loaded (`TileConfig::new(lda)`); `t`
/// satisfies the [`GroupArgs`] contract for 1 row tile(s) and 2 panel(s).
unsafe fn group_1x2(t: &GroupArgs) {
    // SAFETY: the loads read `groups·group_chunks` consecutive A tiles per row tile and B
    // tiles per panel, the ranges the caller vouches for; the stores write the `groups`
    // C areas of `GROUP_C_BYTES` at `c`.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "mov {k}, {gc}",
            "dec {n}",
            "jz 5f",
            "4:",
            "add {a0}, {step}",
            "add {b0}, {step}",
            "add {b1}, {step}",
            "tdpbssd tmm0, tmm4, tmm6",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tdpbssd tmm1, tmm4, tmm7",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "dec {k}",
            "jnz 6f",
            "tilestored [{c} + {s}*1 + 0], tmm0",
            "tilestored [{c} + {s}*1 + 1024], tmm1",
            "add {c}, {gbytes}",
            "tilezero tmm0",
            "tilezero tmm1",
            "mov {k}, {gc}",
            "6:",
            "dec {n}",
            "jnz 4b",
            "5:",
            "tdpbssd tmm0, tmm4, tmm6",
            "tdpbssd tmm1, tmm4, tmm7",
            "tilestored [{c} + {s}*1 + 0], tmm0",
            "tilestored [{c} + {s}*1 + 1024], tmm1",
            a0 = inout(reg) t.a => _,
            b0 = inout(reg) t.b => _,
            b1 = inout(reg) t.b.wrapping_add(t.ldp) => _,
            n = inout(reg) t.groups * t.group_chunks => _,
            k = out(reg) _,
            gc = in(reg) t.group_chunks,
            s = in(reg) 64usize,
            lda = in(reg) t.lda,
            step = in(reg) t.step,
            c = inout(reg) t.c => _,
            gbytes = const GROUP_C_BYTES,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

/// Group-wise 1 row tile(s) × 1 panel(s) (the W4A8 microkernel): `groups` runs of
/// `group_chunks` chunks, each summed from zero and stored to its own C tiles (see
/// [`GroupArgs`]). One block for every group, pipelined as [`tile_2x2`] across group
/// ends too: the next chunk's operand loads are in flight while a group's C is stored.
///
/// # Safety
/// AMX usable with this thread's configuration loaded (`TileConfig::new(lda)`); `t`
/// satisfies the [`GroupArgs`] contract for 1 row tile(s) and 1 panel(s).
unsafe fn group_1x1(t: &GroupArgs) {
    // SAFETY: the loads read `groups·group_chunks` consecutive A tiles per row tile and B
    // tiles per panel, the ranges the caller vouches for; the stores write the `groups`
    // C areas of `GROUP_C_BYTES` at `c`.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "mov {k}, {gc}",
            "dec {n}",
            "jz 5f",
            "4:",
            "add {a0}, {step}",
            "add {b0}, {step}",
            "tdpbssd tmm0, tmm4, tmm6",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "dec {k}",
            "jnz 6f",
            "tilestored [{c} + {s}*1 + 0], tmm0",
            "add {c}, {gbytes}",
            "tilezero tmm0",
            "mov {k}, {gc}",
            "6:",
            "dec {n}",
            "jnz 4b",
            "5:",
            "tdpbssd tmm0, tmm4, tmm6",
            "tilestored [{c} + {s}*1 + 0], tmm0",
            a0 = inout(reg) t.a => _,
            b0 = inout(reg) t.b => _,
            n = inout(reg) t.groups * t.group_chunks => _,
            k = out(reg) _,
            gc = in(reg) t.group_chunks,
            s = in(reg) 64usize,
            lda = in(reg) t.lda,
            step = in(reg) t.step,
            c = inout(reg) t.c => _,
            gbytes = const GROUP_C_BYTES,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack),
        );
    }
}

fn group_table(mt: usize, nt: usize) -> GroupFn {
    match (mt, nt) {
        (1, 1) => group_1x1,
        (1, 2) => group_1x2,
        (2, 1) => group_2x1,
        (2, 2) => group_2x2,
        _ => unreachable!("AMX group microkernel {mt}×{nt}"),
    }
}

fn tile_table(mt: usize, nt: usize) -> TileFn {
    match (mt, nt) {
        (1, 1) => tile_1x1,
        (1, 2) => tile_1x2,
        (2, 1) => tile_2x1,
        (2, 2) => tile_2x2,
        _ => unreachable!("AMX microkernel {mt}×{nt}"),
    }
}

/// [`unpack_w4_generic`] with 256-bit integer ops: each 32-byte step of nibbles becomes
/// its low nibbles (line bytes 0..32) and high nibbles (32..64), minus 8; same bytes.
///
/// # Safety
/// AVX-512 F/BW must be available (the table that holds it is chosen only then).
#[target_feature(enable = "avx512f,avx512bw,avx2")]
pub(crate) unsafe fn unpack_w4_avx512(src: &[u8], dst: &mut [u8]) {
    let steps = (src.len() / 32).min(dst.len() / 64);
    let (mask, eight) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(8));
    for i in 0..steps {
        // SAFETY: step `i < steps` reads src[32i..32i+32] and writes dst[64i..64i+64],
        // both in bounds by the choice of `steps`.
        unsafe {
            let v = _mm256_loadu_si256(src.as_ptr().add(32 * i).cast());
            let lo = _mm256_sub_epi8(_mm256_and_si256(v, mask), eight);
            let hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask), eight);
            let d = dst.as_mut_ptr().add(64 * i);
            _mm256_storeu_si256(d.cast(), lo);
            _mm256_storeu_si256(d.add(32).cast(), hi);
        }
    }
}

/// `U` consecutive rows of one C tile through every group: the sums are loaded into `U`
/// zmm registers (one per row), stay there while the groups stream past, and are stored.
///
/// # Safety
/// AVX-512 F; `c` points at row 0 of the rows in group 0's tile, rows 16 i32 apart and
/// groups [`GROUP_C`] apart, all readable; `scales` at group 0's 16 scales, groups 16
/// apart; `sums` at row 0's 16 sums, rows 32 apart, readable and writable.
#[target_feature(enable = "avx512f")]
unsafe fn combine_rows<const U: usize>(
    c: *const i32,
    scales: *const f32,
    groups: usize,
    sums: *mut f32,
) {
    let mut acc = [_mm512_setzero_ps(); U];
    for (u, a) in acc.iter_mut().enumerate() {
        // SAFETY: row `u < U` of `sums`, by the contract.
        *a = unsafe { _mm512_loadu_ps(sums.add(u * 2 * NR)) };
    }
    for g in 0..groups {
        // SAFETY: in bounds by the contract (group `g`, rows `< U`).
        unsafe {
            let sc = _mm512_loadu_ps(scales.add(g * NR));
            for (u, a) in acc.iter_mut().enumerate() {
                let v = _mm512_loadu_si512(c.add(g * GROUP_C + u * NR).cast());
                *a = _mm512_add_ps(*a, _mm512_mul_ps(_mm512_cvtepi32_ps(v), sc));
            }
        }
    }
    for (u, a) in acc.iter().enumerate() {
        // SAFETY: row `u < U` of `sums`, by the contract.
        unsafe { _mm512_storeu_ps(sums.add(u * 2 * NR), *a) };
    }
}

/// [`combine_groups_generic`](super::amx_driver::combine_groups_generic) on AVX-512:
/// the same multiplies and adds in the same order (Rust never contracts them), 8 rows'
/// sums held in registers at a time.
///
/// # Safety
/// AVX-512 F must be available; the slices as `combine_groups_generic` reads them.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn combine_groups_avx512(
    c: &[i32],
    scales: &[f32],
    stride: usize,
    groups: usize,
    rows: usize,
    nt: usize,
    sums: &mut [f32],
) {
    assert!(
        c.len() >= groups * GROUP_C
            && scales.len() >= nt.saturating_sub(1) * stride + groups * NR
            && stride >= groups * NR
            && sums.len() >= rows * 2 * NR
            && rows <= 2 * TILE_ROWS
            && nt <= 2
    );
    for q in 0..nt {
        for r0 in (0..rows).step_by(8) {
            let (i, rr) = (r0 / TILE_ROWS, r0 % TILE_ROWS);
            let u = 8.min(rows - r0).min(TILE_ROWS - rr);
            let cp = c[(2 * i + q) * 256 + rr * NR..].as_ptr();
            let sp = scales[q * stride..].as_ptr();
            let dp = sums[r0 * 2 * NR + q * NR..].as_mut_ptr();
            // SAFETY: rows `r0..r0+u` lie in row tile `i` (u stops at its end); every
            // group's area, the pair's scales and `sums` rows were bounds-checked above.
            unsafe {
                if u == 8 {
                    combine_rows::<8>(cp, sp, groups, dp);
                } else {
                    for v in 0..u {
                        combine_rows::<1>(cp.add(v * NR), sp, groups, dp.add(v * 2 * NR));
                    }
                }
            }
        }
    }
}

/// The AMX table: real tiles, AVX-512 helpers and epilogue. Reached only through
/// `GemmKernels` paths that hold an [`Amx`](crate::kernels::detect::Amx) token.
pub(crate) static AMX: AmxKernels = AmxKernels {
    configure,
    release,
    tile: tile_table,
    group: group_table,
    unpack_w4: unpack_w4_avx512,
    combine_groups: combine_groups_avx512,
    finish_w8: Some(super::avx512::w8_finish),
};

/// AMX: tiles from `AMX_MIN_ROWS` rows (W4A8: `AMX_MIN_ROWS_W4`), the AVX-512 VNNI kernels below.
pub(crate) static TABLE: Table = Table::new("amx", Isa::Amx, ROW_QUANT)
    .with_kernels(&super::avx512::W8, &super::avx512::W4)
    .with_amx(&AMX, Some(Isa::Avx512Vnni));

/// AMX tiles for every row count (tests, benches).
pub(crate) static TABLE_TILES: Table =
    Table::new("amx-tiles", Isa::Amx, ROW_QUANT).with_amx(&AMX, None);

/// The `tdpbssd` peak of the calling thread's core: 6 independent accumulator tiles
/// (tmm0..6) fed by the same A (tmm6) and B (tmm7) tiles, `iters` rounds; returns
/// GOPS (2 operations per multiply-add, 16·16·64 multiply-adds per instruction).
///
/// # Safety
/// AMX must be usable ([`Amx`](crate::kernels::detect::Amx) token).
pub(crate) unsafe fn tdpbssd_peak_gops(iters: usize) -> f64 {
    let cfg = TileConfig::new(64);
    let start = std::time::Instant::now();
    // SAFETY: the configuration is valid (all tiles 16 × 64 bytes, so every tdpbssd's
    // shapes agree); the block touches no memory but the 64 configuration bytes, loads
    // and releases its own configuration, and clobbers every tile.
    unsafe {
        asm!(
            "ldtilecfg [{cfg}]",
            "test {n}, {n}",
            "jz 3f",
            "2:",
            "tdpbssd tmm0, tmm6, tmm7",
            "tdpbssd tmm1, tmm6, tmm7",
            "tdpbssd tmm2, tmm6, tmm7",
            "tdpbssd tmm3, tmm6, tmm7",
            "tdpbssd tmm4, tmm6, tmm7",
            "tdpbssd tmm5, tmm6, tmm7",
            "dec {n}",
            "jnz 2b",
            "3:",
            "tilerelease",
            cfg = in(reg) cfg.0.as_ptr(),
            n = inout(reg) iters => _,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
            options(nostack, readonly),
        );
    }
    (iters * 6 * 16 * 16 * 64 * 2) as f64 / start.elapsed().as_secs_f64() / 1e9
}

#[cfg(test)]
mod tests {
    use super::super::amx_driver::unpack_w4_generic;
    use super::*;
    use crate::kernels::detect::{report_skipped, Avx512Vnni, Isa};

    /// The AVX-512 helpers of the real table equal the portable ones (runnable on any
    /// AVX-512 machine, AMX or not).
    #[test]
    fn avx512_helpers_equal_portable() {
        if Avx512Vnni::detect().is_none() {
            report_skipped(Isa::Avx512Vnni, "amx::avx512_helpers_equal_portable");
            return;
        }
        let src: Vec<u8> = (0..32 * 37).map(|i| (i * 131 % 256) as u8).collect();
        let (mut a, mut b) = (vec![0u8; 64 * 37], vec![1u8; 64 * 37]);
        unpack_w4_generic(&src, &mut a);
        // SAFETY: AVX-512 detected above.
        unsafe { unpack_w4_avx512(&src, &mut b) };
        assert_eq!(a, b);
        for groups in [1, 3, 5] {
            let c: Vec<i32> = (0..groups * GROUP_C)
                .map(|i| ((i * 7919) % 10_000_019) as i32 - 5_000_000)
                .collect();
            let s: Vec<f32> = (0..2 * groups * NR)
                .map(|i| 0.001 * (i as f32 + 0.37))
                .collect();
            for rows in [1, 7, 8, 9, 15, 16, 17, 31, 32] {
                for nt in [1, 2] {
                    let mut x: Vec<f32> = (0..32 * 32).map(|i| i as f32 * 0.25 - 9.0).collect();
                    let mut y = x.clone();
                    let st = groups * NR;
                    super::super::amx_driver::combine_groups_generic(
                        &c, &s, st, groups, rows, nt, &mut x,
                    );
                    // SAFETY: AVX-512 detected above.
                    unsafe { combine_groups_avx512(&c, &s, st, groups, rows, nt, &mut y) };
                    assert_eq!(
                        x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "groups {groups} rows {rows} nt {nt}"
                    );
                }
            }
        }
    }
}
