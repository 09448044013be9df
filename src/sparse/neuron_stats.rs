//! Activation-frequency statistics of FFN neurons: counts, frequencies, hot sets and a
//! tracker that reclassifies the hot set periodically.
//!
//! A neuron is *active* in a row when `|a| > activation_threshold`. [`NeuronStats`] counts,
//! per neuron, the rows in which it was active, exactly (`u64`), from activation tensors or
//! from lists of active indices. A [`HotRule`] turns the counts into a [`HotSet`]: the
//! neurons whose frequency reaches a minimum, or the most frequent fraction. A hot set gives
//! the [`NeuronPermutation`] that puts hot neurons first, which
//! [`FfnLinears::hot_first`](crate::sparse::FfnLinears::hot_first) applies to a model.
//!
//! [`HotSetTracker`] is the streaming form: activation patterns drift with the input, so
//! it recomputes the hot set after every `every_rows` rows from exponentially decayed
//! counts (see its docs for the exact rule).
//!
//! ```
//! use candle_compress::sparse::{HotRule, NeuronStats};
//! use candle_core::{Device, Tensor};
//!
//! let mut stats = NeuronStats::new(4, 0.0)?; // active when a != 0
//! let a = Tensor::new(&[[0f32, 1., 0., -2.], [0., 3., 0., 0.], [0.5, 0., 0., 0.]], &Device::Cpu)?;
//! stats.record_activations(&a)?;          // 3 rows
//! stats.record_indices(&[vec![1, 3]])?;   // a 4th row: neurons 1 and 3 active
//! assert_eq!(stats.counts(), &[1, 3, 0, 2]);
//! assert_eq!(stats.frequencies(), vec![0.25, 0.75, 0.0, 0.5]);
//! let hot = stats.hot(HotRule::TopFraction(0.5))?;
//! assert_eq!(hot.indices(), &[1, 3]);     // most frequent first
//! assert_eq!(hot.permutation().order(), &[1, 3, 0, 2]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cmp::Ordering;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Num, Result};
use crate::input::{check_finite, with_f32_slice};
use crate::sparse::permute::NeuronPermutation;

/// How a hot set is chosen from frequencies.
///
/// Both rules list the hot neurons by descending frequency; equal frequencies are ordered
/// by ascending neuron index (the tie rule everywhere in this module).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum HotRule {
    /// Neuron `i` is hot iff `frequency[i] >= min`, with `frequency[i] = count[i] / rows`
    /// computed in f64 exactly as [`NeuronStats::frequencies`] does. `min` must be in
    /// `[0, 1]` (`0` makes every neuron hot).
    MinFrequency(f64),
    /// The `k = max(1, round(fraction · n))` most frequent neurons (rounding half away from
    /// zero), ties broken by the lower index, so exactly `k` neurons are hot even when
    /// frequencies tie at the cut. `fraction` must be in `(0, 1]`. Found by selection
    /// (O(n)); only the `k` chosen are sorted.
    TopFraction(f64),
}

impl HotRule {
    /// Checks the rule's parameter.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a NaN, negative or > 1 minimum frequency, or a
    /// fraction outside `(0, 1]`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            HotRule::MinFrequency(min) if !(0.0..=1.0).contains(&min) => Err(Error::invalid(
                "min_frequency",
                format!("must be in [0, 1], found {}", Num(min)),
            )),
            HotRule::TopFraction(f) if !(f > 0.0 && f <= 1.0) => Err(Error::invalid(
                "fraction",
                format!("must be in (0, 1], found {}", Num(f)),
            )),
            _ => Ok(()),
        }
    }

    /// Applies the rule to per-neuron weights (counts, possibly decayed) over `rows`
    /// (weighted) rows. Requires a validated rule, `rows > 0`, non-empty finite weights.
    fn select(&self, weights: &[f64], rows: f64) -> HotSet {
        let n = weights.len();
        // Descending weight (same order as descending frequency: rows is shared), then
        // ascending index. A total order, so selection and sorting agree exactly.
        let cmp = |&a: &usize, &b: &usize| -> Ordering {
            weights[b].total_cmp(&weights[a]).then(a.cmp(&b))
        };
        let mut hot: Vec<usize> = match *self {
            HotRule::MinFrequency(min) => (0..n).filter(|&i| weights[i] / rows >= min).collect(),
            HotRule::TopFraction(fraction) => {
                let k = ((fraction * n as f64).round() as usize).clamp(1, n);
                let mut idx: Vec<usize> = (0..n).collect();
                if k < n {
                    idx.select_nth_unstable_by(k - 1, cmp);
                    idx.truncate(k);
                }
                idx
            }
        };
        hot.sort_unstable_by(cmp);
        HotSet { n_neurons: n, hot }
    }
}

/// The hot neurons of a layer of `n_neurons`, most frequent first.
///
/// Made by [`NeuronStats::hot`], [`HotSetTracker::hot`] or, from indices chosen elsewhere
/// (a predictor, a saved profile), by [`HotSet::from_indices`]. Serializes as
/// `{"n_neurons": n, "hot": [..]}`; deserialization validates like `from_indices`.
///
/// ```
/// use candle_compress::sparse::HotSet;
///
/// let hot = HotSet::from_indices(5, vec![3, 0])?;
/// assert!(hot.contains(3) && !hot.contains(1));
/// assert_eq!(hot.mask(), vec![true, false, false, true, false]);
/// // Hot first in the given order, then cold neurons in their original order.
/// assert_eq!(hot.permutation().order(), &[3, 0, 1, 2, 4]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HotSetRepr")]
pub struct HotSet {
    n_neurons: usize,
    hot: Vec<usize>,
}

#[derive(Deserialize)]
struct HotSetRepr {
    n_neurons: usize,
    hot: Vec<usize>,
}

impl TryFrom<HotSetRepr> for HotSet {
    type Error = Error;
    fn try_from(r: HotSetRepr) -> Result<Self> {
        HotSet::from_indices(r.n_neurons, r.hot)
    }
}

impl HotSet {
    /// A hot set of the given neurons of a layer of `n_neurons`, in the order given (the
    /// order hot neurons take in [`HotSet::permutation`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `n_neurons == 0`, an index is `>= n_neurons`, or an
    /// index appears twice.
    pub fn from_indices(n_neurons: usize, hot: Vec<usize>) -> Result<Self> {
        check_n_neurons(n_neurons)?;
        // Memory in the number of listed neurons, not in `n_neurons`: a saved hot set may
        // claim any layer size (a 60-byte JSON can say 10^12), and must not allocate it.
        let mut seen = std::collections::HashSet::with_capacity(hot.len());
        for (pos, &i) in hot.iter().enumerate() {
            if i >= n_neurons {
                return Err(Error::invalid(
                    "hot",
                    format!("index {i} at position {pos} is out of range for {n_neurons} neurons"),
                ));
            }
            if !seen.insert(i) {
                return Err(Error::invalid(
                    "hot",
                    format!("neuron {i} listed twice (again at position {pos})"),
                ));
            }
        }
        Ok(Self { n_neurons, hot })
    }

    /// Number of neurons in the layer (hot and cold).
    #[must_use]
    pub fn n_neurons(&self) -> usize {
        self.n_neurons
    }

    /// The hot neurons, most frequent first (ties: lower index first).
    #[must_use]
    pub fn indices(&self) -> &[usize] {
        &self.hot
    }

    /// Number of hot neurons.
    #[must_use]
    pub fn len(&self) -> usize {
        self.hot.len()
    }

    /// `true` when no neuron is hot.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hot.is_empty()
    }

    /// `true` when neuron `i` is hot (`false` for out-of-range `i`). O(hot).
    #[must_use]
    pub fn contains(&self, i: usize) -> bool {
        self.hot.contains(&i)
    }

    /// `mask[i]` is `true` iff neuron `i` is hot.
    #[must_use]
    pub fn mask(&self) -> Vec<bool> {
        let mut mask = vec![false; self.n_neurons];
        for &i in &self.hot {
            mask[i] = true;
        }
        mask
    }

    /// The permutation that puts the hot neurons first, in [`HotSet::indices`] order
    /// (descending frequency), followed by the cold neurons in ascending original index.
    /// After applying it, hot neurons occupy positions `0..self.len()`.
    #[must_use]
    pub fn permutation(&self) -> NeuronPermutation {
        let mask = self.mask();
        let mut order = Vec::with_capacity(self.n_neurons);
        order.extend_from_slice(&self.hot);
        order.extend((0..self.n_neurons).filter(|&i| !mask[i]));
        NeuronPermutation::from_valid_order(order)
    }
}

/// Exact per-neuron activation counts of one layer of `n_neurons` neurons.
///
/// A neuron is active in a row when `|a| > activation_threshold`. Every record call is
/// all-or-nothing: on error nothing is counted. Two stats of the same layer and threshold
/// (e.g. from two threads or shards) combine with [`NeuronStats::merge`]. Serializes with
/// serde as `{n_neurons, activation_threshold, rows, counts}`; deserialization checks the
/// same invariants as construction and that no count exceeds `rows`.
/// See the [module docs](self) for an example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NeuronStatsRepr")]
pub struct NeuronStats {
    n_neurons: usize,
    activation_threshold: f32,
    rows: u64,
    counts: Vec<u64>,
}

#[derive(Deserialize)]
struct NeuronStatsRepr {
    n_neurons: usize,
    activation_threshold: f32,
    rows: u64,
    counts: Vec<u64>,
}

impl TryFrom<NeuronStatsRepr> for NeuronStats {
    type Error = Error;
    fn try_from(r: NeuronStatsRepr) -> Result<Self> {
        // Check the size against the counts actually present before `new` allocates
        // `n_neurons` of them.
        if r.counts.len() != r.n_neurons {
            return Err(Error::metadata(
                "NeuronStats counts length",
                r.n_neurons,
                r.counts.len(),
            ));
        }
        let mut s = NeuronStats::new(r.n_neurons, r.activation_threshold)?;
        if let Some(i) = r.counts.iter().position(|&c| c > r.rows) {
            return Err(Error::Corrupt {
                what: "NeuronStats".into(),
                reason: format!(
                    "count {} of neuron {i} exceeds the {} rows observed",
                    r.counts[i], r.rows
                ),
            });
        }
        s.rows = r.rows;
        s.counts = r.counts;
        Ok(s)
    }
}

const OP_ACT: &str = "NeuronStats::record_activations";
const OP_TRACK: &str = "HotSetTracker::record_activations";

fn check_n_neurons(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid("n_neurons", "must be at least 1, found 0"));
    }
    Ok(())
}

impl NeuronStats {
    /// Empty statistics for `n_neurons` neurons; a neuron is active when
    /// `|a| > activation_threshold` (`0.0` counts every non-zero activation, the usual
    /// choice after ReLU).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `n_neurons == 0` or the threshold is NaN, negative
    /// or infinite.
    pub fn new(n_neurons: usize, activation_threshold: f32) -> Result<Self> {
        check_n_neurons(n_neurons)?;
        if !(activation_threshold.is_finite() && activation_threshold >= 0.0) {
            return Err(Error::invalid(
                "activation_threshold",
                format!(
                    "must be finite and >= 0, found {}",
                    Num(activation_threshold)
                ),
            ));
        }
        Ok(Self {
            n_neurons,
            activation_threshold,
            rows: 0,
            counts: vec![0; n_neurons],
        })
    }

    /// Number of neurons.
    #[must_use]
    pub fn n_neurons(&self) -> usize {
        self.n_neurons
    }

    /// The threshold above which `|a|` counts as active.
    #[must_use]
    pub fn activation_threshold(&self) -> f32 {
        self.activation_threshold
    }

    /// Rows observed so far.
    #[must_use]
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// `counts()[i]` = rows in which neuron `i` was active.
    #[must_use]
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// `count[i] / rows` in f64 for each neuron; all zeros before any row is recorded.
    #[must_use]
    pub fn frequencies(&self) -> Vec<f64> {
        if self.rows == 0 {
            return vec![0.0; self.n_neurons];
        }
        let rows = self.rows as f64;
        self.counts.iter().map(|&c| c as f64 / rows).collect()
    }

    /// Forgets all rows (keeps the layer size and threshold).
    pub fn reset(&mut self) {
        self.rows = 0;
        self.counts.fill(0);
    }

    /// Records activations `[.., n_neurons]` (any rank ≥ 1, any layout; F32, F16, BF16 or
    /// F64): every slice along the last dimension is one row.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the last dimension is not `n_neurons` or the tensor
    /// has no rows; [`Error::UnsupportedDType`] for integer tensors; [`Error::NonFinite`]
    /// naming the flat row-major index of the first NaN/±Inf. Nothing is recorded on error.
    pub fn record_activations(&mut self, activations: &Tensor) -> Result<()> {
        check_activation_shape(activations, self.n_neurons)?;
        self.check_room(activations.elem_count() / self.n_neurons)?;
        with_f32_slice(activations, OP_ACT, |values| {
            check_finite(values, OP_ACT)?;
            for row in values.chunks_exact(self.n_neurons) {
                self.add_activation_row(row);
            }
            Ok(())
        })
    }

    /// Records one row per entry of `rows`, each listing the neurons active in that row
    /// (any order; an empty list is a row where nothing fired).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `rows` is empty, an index is `>= n_neurons`, or a
    /// row lists a neuron twice (the message names the row). Nothing is recorded on error.
    pub fn record_indices<R: AsRef<[usize]>>(&mut self, rows: &[R]) -> Result<()> {
        check_index_rows(rows, self.n_neurons)?;
        self.check_room(rows.len())?;
        for row in rows {
            self.add_index_row(row.as_ref());
        }
        Ok(())
    }

    /// Adds `other`'s rows and counts to `self`.
    ///
    /// # Errors
    /// [`Error::MetadataMismatch`] when the neuron counts or activation thresholds differ;
    /// [`Error::InvalidArgument`] if a total would overflow `u64`. `self` is unchanged on
    /// error.
    pub fn merge(&mut self, other: &NeuronStats) -> Result<()> {
        if other.n_neurons != self.n_neurons {
            return Err(Error::metadata(
                "NeuronStats::merge n_neurons",
                self.n_neurons,
                other.n_neurons,
            ));
        }
        if other.activation_threshold.to_bits() != self.activation_threshold.to_bits() {
            return Err(Error::metadata(
                "NeuronStats::merge activation_threshold",
                self.activation_threshold,
                other.activation_threshold,
            ));
        }
        let overflow = || Error::invalid("other", "merged counts overflow u64");
        let rows = self.rows.checked_add(other.rows).ok_or_else(overflow)?;
        let counts = self
            .counts
            .iter()
            .zip(&other.counts)
            .map(|(&a, &b)| a.checked_add(b))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(overflow)?;
        self.rows = rows;
        self.counts = counts;
        Ok(())
    }

    /// The hot set under `rule` (see [`HotRule`] for the exact selection and tie rule).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid rule parameter, or when no row has been
    /// recorded (frequencies are undefined).
    pub fn hot(&self, rule: HotRule) -> Result<HotSet> {
        rule.validate()?;
        if self.rows == 0 {
            return Err(Error::invalid(
                "stats",
                "no rows recorded: frequencies (and so a hot set) are undefined",
            ));
        }
        let weights: Vec<f64> = self.counts.iter().map(|&c| c as f64).collect();
        Ok(rule.select(&weights, self.rows as f64))
    }

    /// Shorthand for [`NeuronStats::hot`] with [`HotRule::MinFrequency`].
    ///
    /// # Errors
    /// As [`NeuronStats::hot`].
    pub fn hot_by_frequency(&self, min_frequency: f64) -> Result<HotSet> {
        self.hot(HotRule::MinFrequency(min_frequency))
    }

    /// Shorthand for [`NeuronStats::hot`] with [`HotRule::TopFraction`].
    ///
    /// # Errors
    /// As [`NeuronStats::hot`].
    pub fn hot_top_fraction(&self, fraction: f64) -> Result<HotSet> {
        self.hot(HotRule::TopFraction(fraction))
    }

    /// Refuses to record `new_rows` more rows when the row count would pass `u64::MAX`
    /// (possible only for statistics restored from a file). Every count is `<= rows`, so
    /// the counts cannot overflow either.
    fn check_room(&self, new_rows: usize) -> Result<()> {
        let fits = u64::try_from(new_rows)
            .ok()
            .and_then(|n| self.rows.checked_add(n))
            .is_some();
        if !fits {
            return Err(Error::invalid(
                "rows",
                format!(
                    "recording {new_rows} more rows would overflow the u64 row count ({} so far)",
                    self.rows
                ),
            ));
        }
        Ok(())
    }

    /// Counts one validated row of activations.
    fn add_activation_row(&mut self, row: &[f32]) {
        let t = self.activation_threshold;
        for (c, &a) in self.counts.iter_mut().zip(row) {
            *c += u64::from(a.abs() > t);
        }
        self.rows += 1;
    }

    /// Counts one validated row of active indices.
    fn add_index_row(&mut self, row: &[usize]) {
        for &i in row {
            self.counts[i] += 1;
        }
        self.rows += 1;
    }
}

fn check_activation_shape(t: &Tensor, n: usize) -> Result<()> {
    let dims = t.dims();
    if dims.last() != Some(&n) || t.elem_count() == 0 {
        return Err(Error::ShapeMismatch {
            what: "neuron activations".into(),
            expected: format!("[.., {n}] with at least one row"),
            found: format!("{dims:?}"),
        });
    }
    Ok(())
}

fn check_index_rows<R: AsRef<[usize]>>(rows: &[R], n: usize) -> Result<()> {
    if rows.is_empty() {
        return Err(Error::invalid("rows", "no rows given"));
    }
    // stamp[i] = 1 + the last row in which neuron i was seen: finds duplicates in O(total).
    let mut stamp = vec![0usize; n];
    for (r, row) in rows.iter().enumerate() {
        for &i in row.as_ref() {
            match stamp.get_mut(i) {
                None => {
                    return Err(Error::invalid(
                        "rows",
                        format!("row {r}: neuron index {i} is out of range for {n} neurons"),
                    ))
                }
                Some(s) if *s == r + 1 => {
                    return Err(Error::invalid(
                        "rows",
                        format!("row {r}: neuron {i} listed twice"),
                    ))
                }
                Some(s) => *s = r + 1,
            }
        }
    }
    Ok(())
}

/// A streaming hot-set tracker: counts activations like [`NeuronStats`] and recomputes the
/// hot set every `every_rows` rows from exponentially decayed counts.
///
/// The exact rule. Rows are counted one by one into the current *window* (a
/// [`NeuronStats`]). When the window holds `every_rows` rows — regardless of how the rows
/// were batched into record calls — the tracker *reclassifies*:
///
/// ```text
/// history[i]   = decay · history[i] + window.counts[i]     (f64)
/// history_rows = decay · history_rows + window.rows
/// hot          = rule applied to history[i] / history_rows
/// window       = empty
/// ```
///
/// `decay` (default `0.5`) is the weight kept by the past at each boundary: `0` keeps only
/// the last window (a tumbling window), `1` keeps everything (cumulative counts), `0.5`
/// halves the influence of older windows each period. Between boundaries the hot set does
/// not change, so a model permuted from it stays valid for at least `every_rows` rows.
/// Before the first reclassification the hot set is empty.
///
/// Serializes with serde (every field, including the current window); deserialization
/// validates every invariant, including that the stored hot set is the rule's choice on the
/// stored history.
///
/// ```
/// use candle_compress::sparse::{HotRule, HotSetTracker};
///
/// // 3 neurons, active when |a| > 0, the top third is hot, reclassify every 2 rows,
/// // keep nothing of past windows.
/// let mut t = HotSetTracker::new(3, 0.0, HotRule::TopFraction(1.0 / 3.0), 2)?.with_decay(0.0)?;
/// assert!(t.hot().is_empty());
/// assert_eq!(t.record_indices(&[vec![0], vec![0, 1]])?, 1); // one reclassification
/// assert_eq!(t.hot().indices(), &[0]);
/// assert_eq!(t.record_indices(&[vec![2], vec![2], vec![1]])?, 1); // the 3rd row waits
/// assert_eq!(t.hot().indices(), &[2]);
/// assert_eq!(t.window().rows(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HotSetTrackerRepr")]
pub struct HotSetTracker {
    rule: HotRule,
    every_rows: u64,
    decay: f64,
    window: NeuronStats,
    history: Vec<f64>,
    history_rows: f64,
    hot: HotSet,
    reclassifications: u64,
}

#[derive(Deserialize)]
struct HotSetTrackerRepr {
    rule: HotRule,
    every_rows: u64,
    decay: f64,
    window: NeuronStats,
    history: Vec<f64>,
    history_rows: f64,
    hot: HotSet,
    reclassifications: u64,
}

impl TryFrom<HotSetTrackerRepr> for HotSetTracker {
    type Error = Error;
    fn try_from(r: HotSetTrackerRepr) -> Result<Self> {
        let n = r.window.n_neurons();
        let t = HotSetTracker::new(n, r.window.activation_threshold(), r.rule, r.every_rows)?
            .with_decay(r.decay)?;
        let corrupt = |reason: String| Error::Corrupt {
            what: "HotSetTracker".into(),
            reason,
        };
        if r.window.rows() >= r.every_rows {
            return Err(corrupt(format!(
                "window holds {} rows, reclassification is every {}",
                r.window.rows(),
                r.every_rows
            )));
        }
        if r.history.len() != n || r.hot.n_neurons() != n {
            return Err(Error::metadata(
                "HotSetTracker history / hot set length",
                n,
                format!("{} / {}", r.history.len(), r.hot.n_neurons()),
            ));
        }
        if !(r.history_rows.is_finite() && r.history_rows >= 0.0) {
            return Err(corrupt(format!(
                "history_rows must be finite and >= 0, found {}",
                Num(r.history_rows)
            )));
        }
        if let Some(i) = r
            .history
            .iter()
            .position(|&h| !(h.is_finite() && h >= 0.0 && h <= r.history_rows))
        {
            return Err(corrupt(format!(
                "history[{i}] = {} is not in [0, history_rows = {}]",
                Num(r.history[i]),
                Num(r.history_rows)
            )));
        }
        // The hot set must be what the rule gives on the history (or empty before the
        // first reclassification, when the history is empty too).
        let expected_hot = if r.reclassifications == 0 {
            if r.history_rows != 0.0 {
                return Err(corrupt(format!(
                    "history_rows is {} before any reclassification",
                    Num(r.history_rows)
                )));
            }
            HotSet {
                n_neurons: n,
                hot: Vec::new(),
            }
        } else {
            if r.history_rows < 1.0 {
                return Err(corrupt(format!(
                    "history_rows is {} after {} reclassifications (at least 1)",
                    Num(r.history_rows),
                    r.reclassifications
                )));
            }
            r.rule.select(&r.history, r.history_rows)
        };
        if r.hot != expected_hot {
            return Err(corrupt(format!(
                "hot set {:?} is not the rule's choice {:?} on the stored history",
                r.hot.indices(),
                expected_hot.indices()
            )));
        }
        Ok(Self {
            window: r.window,
            history: r.history,
            history_rows: r.history_rows,
            hot: r.hot,
            reclassifications: r.reclassifications,
            ..t
        })
    }
}

impl HotSetTracker {
    /// A tracker for `n_neurons` neurons (active when `|a| > activation_threshold`) that
    /// reclassifies with `rule` every `every_rows` rows, with decay `0.5`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `n_neurons == 0`, a bad threshold (as
    /// [`NeuronStats::new`]), an invalid rule, or `every_rows == 0`.
    pub fn new(
        n_neurons: usize,
        activation_threshold: f32,
        rule: HotRule,
        every_rows: u64,
    ) -> Result<Self> {
        let window = NeuronStats::new(n_neurons, activation_threshold)?;
        rule.validate()?;
        if every_rows == 0 {
            return Err(Error::invalid("every_rows", "must be at least 1, found 0"));
        }
        Ok(Self {
            rule,
            every_rows,
            decay: 0.5,
            window,
            history: vec![0.0; n_neurons],
            history_rows: 0.0,
            hot: HotSet {
                n_neurons,
                hot: Vec::new(),
            },
            reclassifications: 0,
        })
    }

    /// Sets the weight kept by past windows at each reclassification (see the type docs).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `decay` is not in `[0, 1]` (NaN included).
    pub fn with_decay(mut self, decay: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&decay) {
            return Err(Error::invalid(
                "decay",
                format!("must be in [0, 1], found {}", Num(decay)),
            ));
        }
        self.decay = decay;
        Ok(self)
    }

    /// The rule applied at each reclassification.
    #[must_use]
    pub fn rule(&self) -> HotRule {
        self.rule
    }

    /// Rows between reclassifications.
    #[must_use]
    pub fn every_rows(&self) -> u64 {
        self.every_rows
    }

    /// The decay factor.
    #[must_use]
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// The hot set of the last reclassification (empty before the first).
    #[must_use]
    pub fn hot(&self) -> &HotSet {
        &self.hot
    }

    /// Reclassifications so far.
    #[must_use]
    pub fn reclassifications(&self) -> u64 {
        self.reclassifications
    }

    /// The rows recorded since the last reclassification (exact counts).
    #[must_use]
    pub fn window(&self) -> &NeuronStats {
        &self.window
    }

    /// Decayed per-neuron counts as of the last reclassification.
    #[must_use]
    pub fn history_counts(&self) -> &[f64] {
        &self.history
    }

    /// Decayed row count as of the last reclassification.
    #[must_use]
    pub fn history_rows(&self) -> f64 {
        self.history_rows
    }

    /// `history_counts()[i] / history_rows()`, the frequencies the hot set was chosen
    /// from; all zeros before the first reclassification.
    #[must_use]
    pub fn history_frequencies(&self) -> Vec<f64> {
        if self.history_rows == 0.0 {
            return vec![0.0; self.history.len()];
        }
        self.history
            .iter()
            .map(|&h| h / self.history_rows)
            .collect()
    }

    /// Records activations `[.., n_neurons]` row by row, reclassifying at every boundary,
    /// and returns how many reclassifications happened.
    ///
    /// # Errors
    /// As [`NeuronStats::record_activations`]; nothing is recorded on error.
    pub fn record_activations(&mut self, activations: &Tensor) -> Result<usize> {
        let n = self.window.n_neurons;
        check_activation_shape(activations, n)?;
        self.check_room(activations.elem_count() / n)?;
        with_f32_slice(activations, OP_TRACK, |values| {
            check_finite(values, OP_TRACK)?;
            let mut done = 0;
            for row in values.chunks_exact(n) {
                self.window.add_activation_row(row);
                done += self.after_row();
            }
            Ok(done)
        })
    }

    /// Records lists of active indices (one per row) like [`NeuronStats::record_indices`],
    /// reclassifying at every boundary; returns how many reclassifications happened.
    ///
    /// # Errors
    /// As [`NeuronStats::record_indices`]; nothing is recorded on error.
    pub fn record_indices<R: AsRef<[usize]>>(&mut self, rows: &[R]) -> Result<usize> {
        check_index_rows(rows, self.window.n_neurons)?;
        self.check_room(rows.len())?;
        let mut done = 0;
        for row in rows {
            self.window.add_index_row(row.as_ref());
            done += self.after_row();
        }
        Ok(done)
    }

    /// Reclassifies now from the partial window (e.g. at the end of a calibration run).
    /// The next window starts empty, so later boundaries fall `every_rows` rows after this
    /// call.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the window is empty (nothing new to classify from).
    pub fn reclassify_now(&mut self) -> Result<&HotSet> {
        if self.window.rows == 0 {
            return Err(Error::invalid(
                "window",
                "no rows recorded since the last reclassification",
            ));
        }
        self.reclassify();
        Ok(&self.hot)
    }

    /// Refuses `new_rows` more rows when the reclassification counter would pass
    /// `u64::MAX` (possible only for a tracker restored from a file); the window's row
    /// count stays below `every_rows`, so it cannot overflow.
    fn check_room(&self, new_rows: usize) -> Result<()> {
        let boundaries =
            (u128::from(self.window.rows) + new_rows as u128) / u128::from(self.every_rows);
        if u128::from(self.reclassifications) + boundaries > u128::from(u64::MAX) {
            return Err(Error::invalid(
                "rows",
                format!(
                    "recording {new_rows} more rows would overflow the u64 reclassification \
                     count ({} so far)",
                    self.reclassifications
                ),
            ));
        }
        Ok(())
    }

    fn after_row(&mut self) -> usize {
        if self.window.rows == self.every_rows {
            self.reclassify();
            1
        } else {
            0
        }
    }

    fn reclassify(&mut self) {
        let d = self.decay;
        for (h, &c) in self.history.iter_mut().zip(&self.window.counts) {
            *h = d * *h + c as f64;
        }
        self.history_rows = d * self.history_rows + self.window.rows as f64;
        self.window.reset();
        // history_rows >= 1 here: the window held at least one row.
        self.hot = self.rule.select(&self.history, self.history_rows);
        self.reclassifications += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn counts_from_tensor_and_indices_agree() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::new(
            &[
                [[0.5f32, -0.1, 0.0], [0.2, 0.3, -0.31]],
                [[0.0, 0.0, 0.0], [-1.0, 0.25, 0.3]],
            ],
            &dev,
        )?;
        let mut s = NeuronStats::new(3, 0.25)?;
        s.record_activations(&a)?;
        // |a| > 0.25 strictly: 0.25 itself and 0.2 are inactive.
        assert_eq!(s.counts(), &[2, 1, 2]);
        assert_eq!(s.rows(), 4);
        let mut t = NeuronStats::new(3, 0.25)?;
        t.record_indices(&[vec![0], vec![1, 2], vec![], vec![0, 2]])?;
        assert_eq!(s, t);
        Ok(())
    }

    #[test]
    fn half_dtypes_and_strided_inputs() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 0.], [0., 2.], [3., 0.]], &dev)?; // [3, 2]
        let at = a.t()?.contiguous()?.t()?; // same values, non-contiguous
        for x in [a.to_dtype(DType::F16)?, a.to_dtype(DType::BF16)?, at] {
            let mut s = NeuronStats::new(2, 0.0)?;
            s.record_activations(&x)?;
            assert_eq!(s.counts(), &[2, 1]);
        }
        Ok(())
    }

    #[test]
    fn top_fraction_rounds_and_breaks_ties_by_index() -> Result<()> {
        let mut s = NeuronStats::new(5, 0.0)?;
        // counts: [1, 2, 2, 0, 2]
        s.record_indices(&[vec![1, 2, 4], vec![0, 1, 2, 4]])?;
        assert_eq!(s.hot_top_fraction(0.4)?.indices(), &[1, 2]); // k = 2, tie at 2
        assert_eq!(s.hot_top_fraction(0.5)?.indices(), &[1, 2, 4]); // 2.5 -> 3
        assert_eq!(s.hot_top_fraction(0.01)?.indices(), &[1]); // at least one
        assert_eq!(s.hot_top_fraction(1.0)?.indices(), &[1, 2, 4, 0, 3]);
        Ok(())
    }
}
