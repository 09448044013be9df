//! A scalar emulation of the AMX tile unit, and microkernels written with it that follow
//! the `asm!` microkernels of `amx.rs` instruction for instruction. The AMX driver runs on
//! it on any CPU, so its tiling, padding, tail and group logic is tested bit for bit
//! against the scalar kernel on machines without AMX. It is a test oracle (about as fast
//! as the scalar kernel), never chosen by [`GemmKernels::active`](super::GemmKernels).
//!
//! State (per thread, like the hardware's): a 64-byte palette-1 configuration and eight
//! 1 KiB tile registers (16 rows × 64 bytes). Semantics follow the Intel SDM, with its
//! fault conditions turned into panics:
//!
//! - `ldtilecfg`: palette 0 resets to the init state; palette 1 needs reserved bytes 2..16
//!   zero, `start_row` 0 (no restarted instruction here), tiles 0..8 with `rows ≤ 16`,
//!   `colsb ≤ 64`, both zero or both non-zero, tiles 8..16 zero; all tile data is zeroed.
//! - `tileloadd t, [base + stride]`: row `r < rows(t)` gets `colsb(t)` bytes from
//!   `base + r·stride`; the rest of the register is zeroed.
//! - `tilestored [base + stride], t`: the inverse, `rows(t)` rows of `colsb(t)` bytes.
//! - `tilezero t`: all zero.
//! - `tdpbssd c, a, b` (all distinct): needs `rows(c) = rows(a)`, `colsb(a) = 4·rows(b)`,
//!   `colsb(c) = colsb(b)`, `colsb(a)` and `colsb(c)` multiples of 4; then
//!   `C[m][n] += Σ_k Σ_q A[m][4k+q]·B[k][4n+q]` (s8 × s8, i32 wrapping) and the bytes of
//!   `c` outside `rows(c) × colsb(c)` are zeroed.
//! - Any tile instruction without a loaded palette-1 configuration, or on an unconfigured
//!   tile, panics (hardware: #UD).

use std::cell::RefCell;

use super::table::Table;
use crate::kernels::detect::Isa;

use super::amx_driver::{
    combine_groups_generic, unpack_w4_generic, AmxKernels, GroupArgs, GroupFn, TileArgs,
    TileConfig, TileFn, C_STRIDE, GROUP_C_BYTES, TILE_ROWS,
};

/// Bytes per tile register row.
const ROW_BYTES: usize = 64;

/// One thread's emulated tile unit.
struct TileUnit {
    cfg: Option<TileConfig>,
    regs: [[u8; TILE_ROWS * ROW_BYTES]; 8],
}

thread_local! {
    static UNIT: RefCell<TileUnit> = const {
        RefCell::new(TileUnit { cfg: None, regs: [[0; TILE_ROWS * ROW_BYTES]; 8] })
    };
}

/// Runs `f` on this thread's tile unit with tile `t`'s configured `(rows, colsb)`.
fn with_tiles<R>(f: impl FnOnce(&mut TileUnit) -> R) -> R {
    UNIT.with_borrow_mut(f)
}

/// `(rows, colsb)` of tile `t`, panicking like #UD when there is no configuration or the
/// tile is not configured.
fn shape(u: &TileUnit, t: usize, op: &str) -> (usize, usize) {
    let cfg = u
        .cfg
        .unwrap_or_else(|| panic!("{op} tmm{t}: no tile configuration loaded on this thread"));
    let (rows, colsb) = (cfg.rows(t), cfg.colsb(t));
    assert!(rows > 0 && colsb > 0, "{op} tmm{t}: tile not configured");
    (rows, colsb)
}

/// `ldtilecfg [cfg]`.
pub(crate) fn ldtilecfg(cfg: &TileConfig) {
    let b = &cfg.0;
    with_tiles(|u| {
        u.regs = [[0; TILE_ROWS * ROW_BYTES]; 8];
        if b[0] == 0 {
            u.cfg = None;
            return;
        }
        assert_eq!(b[0], 1, "ldtilecfg: palette {} is not supported", b[0]);
        assert!(
            b[2..16].iter().all(|&x| x == 0),
            "ldtilecfg: reserved bytes set"
        );
        assert_eq!(b[1], 0, "ldtilecfg: start_row must be 0");
        for t in 0..16 {
            let (rows, colsb) = (cfg.rows(t), cfg.colsb(t));
            if t >= 8 {
                assert!(
                    rows == 0 && colsb == 0,
                    "ldtilecfg: tile {t} beyond palette 1"
                );
            }
            assert!(
                rows <= TILE_ROWS && colsb <= ROW_BYTES,
                "ldtilecfg: tile {t} too big"
            );
            assert_eq!(rows == 0, colsb == 0, "ldtilecfg: tile {t} half configured");
        }
        u.cfg = Some(*cfg);
    });
}

/// `tilerelease`: back to the init state (no configuration, tiles zero).
pub(crate) fn tilerelease() {
    with_tiles(|u| {
        u.cfg = None;
        u.regs = [[0; TILE_ROWS * ROW_BYTES]; 8];
    });
}

#[cfg(test)]
/// Whether this thread's emulated tile unit is in the init state (released).
pub(crate) fn released() -> bool {
    with_tiles(|u| u.cfg.is_none())
}

/// `tilezero tmm{t}`.
pub(crate) fn tilezero(t: usize) {
    with_tiles(|u| {
        shape(u, t, "tilezero");
        u.regs[t] = [0; TILE_ROWS * ROW_BYTES];
    });
}

/// `tileloadd tmm{t}, [base + stride·r]`.
///
/// # Safety
/// `rows(t)` rows of `colsb(t)` bytes at `base + r·stride` must be readable.
pub(crate) unsafe fn tileloadd(t: usize, base: *const u8, stride: usize) {
    with_tiles(|u| {
        let (rows, colsb) = shape(u, t, "tileloadd");
        let reg = &mut u.regs[t];
        *reg = [0; TILE_ROWS * ROW_BYTES];
        for r in 0..rows {
            // SAFETY: forwarded contract.
            let src = unsafe { std::slice::from_raw_parts(base.wrapping_add(r * stride), colsb) };
            reg[r * ROW_BYTES..r * ROW_BYTES + colsb].copy_from_slice(src);
        }
    });
}

/// `tilestored [base + stride·r], tmm{t}`.
///
/// # Safety
/// `rows(t)` rows of `colsb(t)` bytes at `base + r·stride` must be writable and not
/// otherwise borrowed.
pub(crate) unsafe fn tilestored(t: usize, base: *mut u8, stride: usize) {
    with_tiles(|u| {
        let (rows, colsb) = shape(u, t, "tilestored");
        for r in 0..rows {
            // SAFETY: forwarded contract.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(base.wrapping_add(r * stride), colsb) };
            dst.copy_from_slice(&u.regs[t][r * ROW_BYTES..r * ROW_BYTES + colsb]);
        }
    });
}

/// `tdpbssd tmm{c}, tmm{a}, tmm{b}`.
pub(crate) fn tdpbssd(c: usize, a: usize, b: usize) {
    with_tiles(|u| {
        let (cr, cc) = shape(u, c, "tdpbssd");
        let (ar, ac) = shape(u, a, "tdpbssd");
        let (br, bc) = shape(u, b, "tdpbssd");
        assert!(
            c != a && c != b && a != b,
            "tdpbssd: operands must be distinct"
        );
        assert!(
            cc % 4 == 0 && ac % 4 == 0,
            "tdpbssd: colsb not a multiple of 4"
        );
        assert_eq!(cr, ar, "tdpbssd: rows(C) != rows(A)");
        assert_eq!(ac, 4 * br, "tdpbssd: colsb(A) != 4·rows(B)");
        assert_eq!(cc, bc, "tdpbssd: colsb(C) != colsb(B)");
        let (ra, rb) = (u.regs[a], u.regs[b]);
        let rc = &mut u.regs[c];
        for m in 0..cr {
            for n in 0..cc / 4 {
                let at = m * ROW_BYTES + 4 * n;
                let mut acc = i32::from_le_bytes(rc[at..at + 4].try_into().expect("4 bytes"));
                for k in 0..ac / 4 {
                    for q in 0..4 {
                        let x = i32::from(ra[m * ROW_BYTES + 4 * k + q] as i8);
                        let y = i32::from(rb[k * ROW_BYTES + 4 * n + q] as i8);
                        acc = acc.wrapping_add(x * y);
                    }
                }
                rc[at..at + 4].copy_from_slice(&acc.to_le_bytes());
            }
            rc[m * ROW_BYTES + cc..(m + 1) * ROW_BYTES].fill(0);
        }
        rc[cr * ROW_BYTES..].fill(0);
    });
}

/// The emulated twin of `amx.rs`'s `MT × NT` microkernel (same tile numbers, same order).
///
/// # Safety
/// `t` must satisfy the [`TileArgs`] contract for `MT` row tiles and `NT` panels, with a
/// configuration loaded on this thread.
unsafe fn tile<const MT: usize, const NT: usize>(t: &TileArgs) {
    assert!(t.chunks > 0, "AMX microkernel called with no K chunk");
    let c_at = |i: usize, j: usize| {
        t.c.cast::<u8>()
            .wrapping_add(i * TILE_ROWS * C_STRIDE + j * 64)
    };
    for i in 0..MT {
        for j in 0..NT {
            if t.acc {
                // SAFETY: C tile (i, j) inside the caller's C buffer (the `acc` contract).
                unsafe { tileloadd(2 * i + j, c_at(i, j).cast_const(), C_STRIDE) };
            } else {
                tilezero(2 * i + j);
            }
        }
    }
    let (mut a, mut b) = (t.a, t.b);
    for _ in 0..t.chunks {
        for i in 0..MT {
            // SAFETY: row tile `i` of the chunk, inside the packed activations.
            unsafe { tileloadd(4 + i, a.wrapping_add(i * t.a_tile), t.lda) };
        }
        for j in 0..NT {
            // SAFETY: the chunk's B tile of panel `j`.
            unsafe { tileloadd(6 + j, b.wrapping_add(j * t.ldp), 64) };
        }
        for i in 0..MT {
            for j in 0..NT {
                tdpbssd(2 * i + j, 4 + i, 6 + j);
            }
        }
        a = a.wrapping_add(t.a_step);
        b = b.wrapping_add(t.b_step);
    }
    for i in 0..MT {
        for j in 0..NT {
            // SAFETY: C tile (i, j) inside the caller's C buffer.
            unsafe { tilestored(2 * i + j, c_at(i, j), C_STRIDE) };
        }
    }
}

fn tile_table(mt: usize, nt: usize) -> TileFn {
    match (mt, nt) {
        (1, 1) => tile::<1, 1>,
        (1, 2) => tile::<1, 2>,
        (2, 1) => tile::<2, 1>,
        (2, 2) => tile::<2, 2>,
        _ => unreachable!("AMX microkernel {mt}×{nt}"),
    }
}

/// The emulated twin of `amx.rs`'s group-wise `MT × NT` microkernels: per group, zero
/// the C tiles, run its chunks, store its C tiles to the group's area.
///
/// # Safety
/// `t` must satisfy the [`GroupArgs`] contract for `MT` row tiles and `NT` panels, with a
/// configuration loaded on this thread.
unsafe fn group<const MT: usize, const NT: usize>(t: &GroupArgs) {
    assert!(
        t.groups > 0 && t.group_chunks > 0,
        "AMX group microkernel called with no chunk"
    );
    let (mut a, mut b, mut c) = (t.a, t.b, t.c.cast::<u8>());
    for _ in 0..t.groups {
        for i in 0..MT {
            for j in 0..NT {
                tilezero(2 * i + j);
            }
        }
        for _ in 0..t.group_chunks {
            for i in 0..MT {
                // SAFETY: row tile `i`'s A tile of this chunk, by the contract.
                unsafe { tileloadd(4 + i, a.wrapping_add(i * t.a_tile), t.lda) };
            }
            for j in 0..NT {
                // SAFETY: panel `j`'s B tile of this chunk, by the contract.
                unsafe { tileloadd(6 + j, b.wrapping_add(j * t.ldp), 64) };
            }
            for i in 0..MT {
                for j in 0..NT {
                    tdpbssd(2 * i + j, 4 + i, 6 + j);
                }
            }
            a = a.wrapping_add(t.step);
            b = b.wrapping_add(t.step);
        }
        for i in 0..MT {
            for j in 0..NT {
                let at = c.wrapping_add((2 * i + j) * 1024);
                // SAFETY: the group's C area, by the contract.
                unsafe { tilestored(2 * i + j, at, 64) };
            }
        }
        c = c.wrapping_add(GROUP_C_BYTES);
    }
}

fn group_table(mt: usize, nt: usize) -> GroupFn {
    match (mt, nt) {
        (1, 1) => group::<1, 1>,
        (1, 2) => group::<1, 2>,
        (2, 1) => group::<2, 1>,
        (2, 2) => group::<2, 2>,
        _ => unreachable!("AMX group microkernel {mt}×{nt}"),
    }
}

/// # Safety
/// None beyond the types (the signature matches the table's).
unsafe fn configure(cfg: &TileConfig) {
    ldtilecfg(cfg);
}

/// # Safety
/// None (the signature matches the table's).
unsafe fn release() {
    tilerelease();
}

/// # Safety
/// None (the signature matches the table's).
unsafe fn unpack_portable(src: &[u8], dst: &mut [u8]) {
    unpack_w4_generic(src, dst);
}

/// # Safety
/// None (the signature matches the table's).
unsafe fn combine_portable(
    c: &[i32],
    s: &[f32],
    stride: usize,
    groups: usize,
    rows: usize,
    nt: usize,
    sums: &mut [f32],
) {
    combine_groups_generic(c, s, stride, groups, rows, nt, sums);
}

/// The emulated tiles with portable helpers: runs anywhere.
pub(crate) static EMULATED: AmxKernels = AmxKernels {
    configure,
    release,
    tile: tile_table,
    group: group_table,
    unpack_w4: unpack_portable,
    combine_groups: combine_portable,
    finish_w8: None,
};

/// The emulated tiles with the real AMX table's AVX-512 helpers (unpacking, group combine,
/// W8 epilogue): everything the hardware path runs except its `asm!` blocks.
#[cfg(target_arch = "x86_64")]
pub(crate) static EMULATED_AVX512: AmxKernels = AmxKernels {
    configure,
    release,
    tile: tile_table,
    group: group_table,
    unpack_w4: super::amx::unpack_w4_avx512,
    combine_groups: super::amx::combine_groups_avx512,
    finish_w8: Some(super::avx512::w8_finish),
};

/// The AMX driver on the emulated tiles, portable helpers (a test oracle).
pub(crate) static TABLE: Table =
    Table::new("amx-emulated", Isa::Scalar, super::scalar::ROW_QUANT).with_amx(&EMULATED, None);

/// The AMX driver on the emulated tiles with the AMX table's AVX-512 helpers (a test
/// oracle).
#[cfg(target_arch = "x86_64")]
pub(crate) static TABLE_AVX512: Table = Table::new(
    "amx-emulated-avx512",
    Isa::Avx512Vnni,
    super::avx512::ROW_QUANT,
)
.with_amx(&EMULATED_AVX512, None);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TileConfig {
        TileConfig::new(64)
    }

    #[test]
    fn tdpbssd_follows_the_sdm_formula() {
        let a: Vec<u8> = (0..16 * 64).map(|i| (i * 37 % 251) as u8).collect();
        let b: Vec<u8> = (0..16 * 64).map(|i| (i * 91 % 253) as u8).collect();
        let mut c = vec![0i32; 16 * 16];
        ldtilecfg(&cfg());
        tilezero(0);
        // SAFETY: 16 rows × 64 bytes at stride 64 in each buffer.
        unsafe {
            tileloadd(4, a.as_ptr(), 64);
            tileloadd(6, b.as_ptr(), 64);
        }
        tdpbssd(0, 4, 6);
        tdpbssd(0, 4, 6);
        // SAFETY: 16 rows × 64 bytes.
        unsafe { tilestored(0, c.as_mut_ptr().cast(), 64) };
        tilerelease();
        for m in 0..16 {
            for n in 0..16 {
                let mut want = 0i32;
                for k in 0..16 {
                    for q in 0..4 {
                        want += i32::from(a[m * 64 + 4 * k + q] as i8)
                            * i32::from(b[k * 64 + 4 * n + q] as i8);
                    }
                }
                assert_eq!(c[m * 16 + n], 2 * want, "m={m} n={n}");
            }
        }
        assert!(released());
    }

    #[test]
    fn loads_honour_stride_and_zero_the_rest() {
        let mut c = TileConfig::new(32);
        c.0[48 + 4] = 3; // A tile: 3 rows × 32 bytes
        ldtilecfg(&c);
        let src: Vec<u8> = (0..=255).collect();
        let mut dst = [0xAAu8; 3 * 100];
        // SAFETY: 3 rows × 32 bytes at stride 70 / 100.
        unsafe {
            tileloadd(4, src.as_ptr(), 70);
            tilestored(4, dst.as_mut_ptr(), 100);
        }
        for r in 0..3 {
            assert_eq!(&dst[r * 100..r * 100 + 32], &src[r * 70..r * 70 + 32]);
            assert!(dst[r * 100 + 32..(r + 1) * 100].iter().all(|&x| x == 0xAA));
        }
        with_tiles(|u| {
            assert!(u.regs[4][32..64].iter().all(|&x| x == 0));
            assert!(u.regs[4][3 * 64..].iter().all(|&x| x == 0));
        });
        tilerelease();
    }

    #[test]
    #[should_panic(expected = "no tile configuration")]
    fn tile_ops_need_a_configuration() {
        tilerelease();
        tilezero(0);
    }

    #[test]
    #[should_panic(expected = "colsb(A) != 4·rows(B)")]
    fn mismatched_shapes_fault() {
        let mut c = cfg();
        c.0[48 + 6] = 8;
        ldtilecfg(&c);
        tdpbssd(0, 4, 6);
    }

    #[test]
    #[should_panic(expected = "reserved")]
    fn bad_configurations_fault() {
        let mut c = cfg();
        c.0[5] = 1;
        ldtilecfg(&c);
    }

    #[test]
    #[should_panic(expected = "distinct")]
    fn tdpbssd_operands_must_differ() {
        ldtilecfg(&cfg());
        tdpbssd(4, 4, 6);
    }

    #[test]
    fn palette_zero_releases() {
        ldtilecfg(&cfg());
        assert!(!released());
        ldtilecfg(&TileConfig([0; 64]));
        assert!(released());
    }
}
