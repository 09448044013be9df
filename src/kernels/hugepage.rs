//! Transparent-huge-page advice for large, freshly allocated output buffers.
//!
//! Dequantizing or decoding a large tensor writes a new buffer: with glibc, allocations above 32 MiB
//! are always fresh `mmap`s, and on Linux the first touch of each 4 KiB page is a page
//! fault (kernel zeroing + fault handling). For a 64 MiB f32 output that costs ~30 ms on
//! our machines, ten times the dequantization itself. Asking the kernel for transparent
//! huge pages on the buffer (`madvise(MADV_HUGEPAGE)`, honoured when
//! `/sys/kernel/mm/transparent_hugepage/enabled` is `always` or `madvise`) replaces 512
//! faults by one. The advice never changes memory contents; where it is unavailable
//! (other OSes, THP `never`) nothing happens.

/// Buffers smaller than this are not advised: they rarely span a whole huge page and are
/// usually recycled by the allocator.
pub(crate) const MIN_ADVISED_BYTES: usize = 4 << 20;

/// x86_64 and aarch64 Linux use 2 MiB transparent huge pages (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// Advises the kernel to back the whole 2 MiB-aligned huge pages inside `buf` with
/// transparent huge pages. Best effort: errors are ignored (the advice is an optimisation).
pub(crate) fn advise<T>(buf: &mut [T]) {
    let bytes = std::mem::size_of_val(buf);
    if bytes < MIN_ADVISED_BYTES {
        return;
    }
    let start = buf.as_mut_ptr() as usize;
    let (Some(first), Some(end)) = (
        start.checked_next_multiple_of(HUGE_PAGE),
        start.checked_add(bytes),
    ) else {
        return;
    };
    let last = end / HUGE_PAGE * HUGE_PAGE;
    if last > first {
        madvise_hugepage(first, last - first);
    }
}

/// `madvise(addr, len, MADV_HUGEPAGE)` through the raw system call (no libc dependency).
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn madvise_hugepage(addr: usize, len: usize) {
    /// `MADV_HUGEPAGE` from `<asm-generic/mman-common.h>` (same on x86_64 and aarch64).
    const MADV_HUGEPAGE: usize = 14;
    let _ret: isize;
    // SAFETY: `madvise(MADV_HUGEPAGE)` only sets a paging hint on the VMAs covering
    // `[addr, addr + len)`; it never changes memory contents, permissions or mappings'
    // validity, and `advise` passes a page-aligned range inside a buffer we exclusively
    // borrow. The asm follows the Linux system call ABI (x86_64: number in rax, arguments
    // in rdi/rsi/rdx, rcx and r11 clobbered), uses no stack and touches no other memory.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        const SYS_MADVISE: usize = 28;
        core::arch::asm!(
            "syscall",
            inlateout("rax") SYS_MADVISE as isize => _ret,
            in("rdi") addr,
            in("rsi") len,
            in("rdx") MADV_HUGEPAGE,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack, preserves_flags),
        );
    }
    // SAFETY: as above; aarch64 Linux ABI: number in x8, arguments in x0..x2, result in x0.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        const SYS_MADVISE: usize = 233;
        core::arch::asm!(
            "svc 0",
            in("x8") SYS_MADVISE,
            inlateout("x0") addr as isize => _ret,
            in("x1") len,
            in("x2") MADV_HUGEPAGE,
            options(nostack, preserves_flags),
        );
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn madvise_hugepage(_addr: usize, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_keeps_contents_and_tolerates_any_buffer() {
        let mut big: Vec<f32> = (0..(9 << 20) / 4).map(|i| i as f32).collect();
        advise(&mut big[3..]);
        advise(&mut big);
        assert!(big.iter().enumerate().all(|(i, &v)| v == i as f32));
        let mut small = vec![1u8; 100];
        advise(&mut small);
        advise(&mut small[..0]);
        assert_eq!(small, vec![1u8; 100]);
    }
}
