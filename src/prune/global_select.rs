//! The global magnitude threshold of [`Stage::PruneGlobal`](super::Stage::PruneGlobal)
//! computed over tensors that arrive one at a time
//! ([`Pipeline::run_streaming`](super::Pipeline::run_streaming)), so no more than one
//! tensor is ever held.
//!
//! It is the same two-pass radix select as the in-memory pipeline's: a histogram of the
//! high 16 bits of the sign-cleared values finds the bin of the `k`-th smallest magnitude,
//! a second histogram of the low 16 bits inside that bin finds the value, so the cut is
//! bit for bit the one [`magnitude_prune_global`](super::magnitude_prune_global) computes
//! over the same values in the same order (it runs on this selector too; its tests check
//! it against a sorted oracle, `tests/pipeline_streaming.rs` the streamed pipeline against
//! the in-memory one).

use super::prune::GlobalCut;

/// Streaming radix selection of the `k`-th smallest magnitude.
#[derive(Debug)]
pub(crate) struct GlobalSelect {
    hist: Vec<usize>,
    total: usize,
    /// After the first pass: the high bin holding the `k`-th value and the count below it.
    high: Option<(u32, usize)>,
}

/// Sign-cleared bit pattern: for finite floats, integer order is magnitude order.
fn mag_bits(v: f32) -> u32 {
    v.to_bits() & 0x7fff_ffff
}

/// The bin holding the `k`-th smallest element (1-based) and the count below that bin.
fn find_bin(hist: &[usize], k: usize) -> (usize, usize) {
    let mut below = 0;
    for (b, &c) in hist.iter().enumerate() {
        if below + c >= k {
            return (b, below);
        }
        below += c;
    }
    (hist.len() - 1, below)
}

impl GlobalSelect {
    pub(crate) fn new() -> Self {
        Self {
            hist: vec![0; 1 << 16],
            total: 0,
            high: None,
        }
    }

    /// First pass: counts `values` by their high bits.
    pub(crate) fn count_high(&mut self, values: &[f32]) {
        self.total += values.len();
        for &v in values {
            self.hist[(mag_bits(v) >> 16) as usize] += 1;
        }
    }

    /// Elements counted in the first pass.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Ends the first pass for the `k`-th smallest (`1 <= k <= total`).
    pub(crate) fn finish_high(&mut self, k: usize) {
        let (bin, below) = find_bin(&self.hist, k);
        self.high = Some((bin as u32, below));
        self.hist.iter_mut().for_each(|c| *c = 0);
    }

    /// Second pass: counts the `values` inside the chosen high bin by their low bits.
    pub(crate) fn count_low(&mut self, values: &[f32]) {
        let Some((bin, _)) = self.high else { return };
        for &v in values {
            let b = mag_bits(v);
            if b >> 16 == bin {
                self.hist[(b & 0xffff) as usize] += 1;
            }
        }
    }

    /// The cut for the `k`-th smallest after both passes.
    pub(crate) fn cut(&self, k: usize) -> GlobalCut {
        let (bin, below_high) = self.high.unwrap_or((0, 0));
        let (low, below_low) = find_bin(&self.hist, k - below_high);
        GlobalCut {
            threshold: f32::from_bits((bin << 16) | low as u32),
            at_threshold: k - below_high - below_low,
        }
    }
}
