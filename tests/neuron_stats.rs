//! Neuron statistics and the hot-first FFN permutation: exact counts and hot sets, the
//! documented reclassification rule, bad input, and (issue 7, must show 5) that a
//! permuted FFN computes the same output to f32 rounding.

use candle_compress::sparse::{
    FfnLinears, HotRule, HotSet, HotSetTracker, NeuronPermutation, NeuronStats,
};
use candle_compress::Error;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;
use proptest::prelude::*;

mod common;

use common::rng::uniform;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Deterministic pseudo-random values in [-scale, scale) (xorshift64*).
fn random_vec(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    uniform(len, seed).into_iter().map(|v| v * scale).collect()
}

fn random_tensor(dims: &[usize], seed: u64, scale: f32) -> candle_core::Result<Tensor> {
    let n = dims.iter().product();
    Tensor::from_vec(random_vec(n, seed, scale), dims, &Device::Cpu)
}

fn linear(out: usize, inp: usize, bias: bool, seed: u64) -> candle_core::Result<Linear> {
    let scale = 1.0 / (inp as f32).sqrt();
    let w = random_tensor(&[out, inp], seed, scale)?;
    let b = if bias {
        Some(random_tensor(&[out], seed + 1, 0.5)?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

/// The FFN's hidden activations: `gelu(gate(x)) * up(x)` when gated, else `relu(up(x))`.
fn hidden(ffn: &FfnLinears, x: &Tensor) -> candle_core::Result<Tensor> {
    let up = ffn.up().forward(x)?;
    match ffn.gate() {
        Some(g) => g.forward(x)?.gelu()?.mul(&up),
        None => up.relu(),
    }
}

fn forward(ffn: &FfnLinears, x: &Tensor) -> candle_core::Result<Tensor> {
    ffn.down().forward(&hidden(ffn, x)?)
}

fn flat(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// Checks `permuted` against `ffn` on `x`: hidden activations are the same values moved to
/// their new positions (bit for bit), and each output differs from the original by no more
/// than reordering a sum of `n` terms can: `2·n·ε·Σ_j |down[o, j]·h[j]| + 2ε·|y|`.
fn assert_same_function(
    ffn: &FfnLinears,
    permuted: &FfnLinears,
    perm: &NeuronPermutation,
    x: &Tensor,
) -> TestResult {
    let n = ffn.n_neurons();
    let h = hidden(ffn, x)?;
    let hp = hidden(permuted, x)?;
    let (h_rows, hp_rows) = (flat(&h)?, flat(&hp)?);
    for (row, prow) in h_rows.chunks_exact(n).zip(hp_rows.chunks_exact(n)) {
        assert_eq!(
            perm.apply(row)?,
            prow.to_vec(),
            "hidden activations moved exactly"
        );
    }
    let y = flat(&forward(ffn, x)?)?;
    let yp = flat(&forward(permuted, x)?)?;
    let mag = flat(
        &h.abs()?
            .broadcast_matmul(&ffn.down().weight().abs()?.t()?)?,
    )?;
    let eps = f32::EPSILON;
    let mut worst = 0f32;
    for ((a, b), m) in y.iter().zip(&yp).zip(&mag) {
        let bound = 2.0 * n as f32 * eps * m + 2.0 * eps * a.abs();
        assert!(
            (a - b).abs() <= bound,
            "output {a} vs {b}: differ by more than f32 rounding ({bound})"
        );
        worst = worst.max((a - b).abs());
    }
    assert!(
        y.iter().any(|v| *v != 0.0),
        "the FFN output is not trivially zero"
    );
    eprintln!("max |y - y_permuted| = {worst:e} over {} outputs", y.len());
    Ok(())
}

// -------------------------------------------------------------------------------------
// Must show 5: permutation leaves a random FFN's output unchanged
// -------------------------------------------------------------------------------------

#[test]
fn permuted_gated_ffn_computes_the_same_output() -> TestResult {
    for (seed, (d, n, bias)) in [(32usize, 128usize, true), (24, 96, false), (7, 33, true)]
        .into_iter()
        .enumerate()
    {
        let seed = seed as u64 * 100;
        let ffn = FfnLinears::new(
            linear(n, d, bias, seed + 1)?,
            Some(linear(n, d, bias, seed + 3)?),
            linear(d, n, bias, seed + 5)?,
        )?;
        // Calibrate on one batch, test on another of rank 3.
        let calib = random_tensor(&[64, d], seed + 7, 2.0)?;
        let mut stats = NeuronStats::new(n, 0.1)?;
        stats.record_activations(&hidden(&ffn, &calib)?)?;
        let hot = stats.hot_top_fraction(0.25)?;
        let (permuted, perm) = ffn.hot_first(&hot)?;
        assert_eq!(&perm.order()[..hot.len()], hot.indices());
        let x = random_tensor(&[3, 5, d], seed + 9, 2.0)?;
        assert_same_function(&ffn, &permuted, &perm, &x)?;
        // The inverse permutation restores the original weights exactly.
        let back = permuted.permuted(&perm.inverse())?;
        assert_eq!(flat(back.up().weight())?, flat(ffn.up().weight())?);
        assert_eq!(flat(back.down().weight())?, flat(ffn.down().weight())?);
    }
    Ok(())
}

#[test]
fn permuted_plain_ffn_computes_the_same_output() -> TestResult {
    let (d, n) = (48, 192);
    let ffn = FfnLinears::new(linear(n, d, true, 11)?, None, linear(d, n, true, 13)?)?;
    let x = random_tensor(&[40, d], 17, 3.0)?;
    let mut stats = NeuronStats::new(n, 0.0)?;
    stats.record_activations(&hidden(&ffn, &x)?)?;
    for rule in [HotRule::MinFrequency(0.5), HotRule::TopFraction(0.1)] {
        let hot = stats.hot(rule)?;
        let (permuted, perm) = ffn.hot_first(&hot)?;
        assert_same_function(&ffn, &permuted, &perm, &x)?;
    }
    // An arbitrary (reversing) permutation works too.
    let rev = NeuronPermutation::from_order((0..n).rev().collect())?;
    assert_same_function(&ffn, &ffn.permuted(&rev)?, &rev, &x)?;
    Ok(())
}

#[test]
fn hot_weights_are_contiguous_and_moved_exactly() -> TestResult {
    let (d, n) = (5, 8);
    let ffn = FfnLinears::new(
        linear(n, d, true, 1)?,
        Some(linear(n, d, true, 2)?),
        linear(d, n, true, 3)?,
    )?;
    let hot = HotSet::from_indices(n, vec![6, 2, 7])?;
    let (p, perm) = ffn.hot_first(&hot)?;
    assert_eq!(perm.order(), &[6, 2, 7, 0, 1, 3, 4, 5]);
    let up = ffn.up().weight().to_vec2::<f32>()?;
    let gate = ffn.gate().ok_or("gated")?.weight().to_vec2::<f32>()?;
    let down = ffn.down().weight().to_vec2::<f32>()?;
    let (pup, pgate) = (
        p.up().weight().to_vec2::<f32>()?,
        p.gate().ok_or("gated")?.weight().to_vec2::<f32>()?,
    );
    let pdown = p.down().weight().to_vec2::<f32>()?;
    let up_b = ffn.up().bias().ok_or("bias")?.to_vec1::<f32>()?;
    let pup_b = p.up().bias().ok_or("bias")?.to_vec1::<f32>()?;
    for (new, &old) in perm.order().iter().enumerate() {
        assert_eq!(pup[new], up[old]);
        assert_eq!(pgate[new], gate[old]);
        assert_eq!(pup_b[new], up_b[old]);
        for r in 0..d {
            assert_eq!(pdown[r][new], down[r][old]);
        }
    }
    // down's bias belongs to the model dimension: unchanged.
    assert_eq!(
        p.down().bias().ok_or("bias")?.to_vec1::<f32>()?,
        ffn.down().bias().ok_or("bias")?.to_vec1::<f32>()?
    );
    assert!(p.up().weight().is_contiguous() && p.down().weight().is_contiguous());
    Ok(())
}

#[test]
fn permutation_keeps_half_precision_weights_exact() -> TestResult {
    let (d, n) = (4, 6);
    let bf = |l: Linear| -> candle_core::Result<Linear> {
        Ok(Linear::new(
            l.weight().to_dtype(DType::BF16)?,
            l.bias().map(|b| b.to_dtype(DType::BF16)).transpose()?,
        ))
    };
    let ffn = FfnLinears::new(
        bf(linear(n, d, true, 4)?)?,
        None,
        bf(linear(d, n, false, 5)?)?,
    )?;
    let perm = NeuronPermutation::from_order(vec![5, 0, 4, 1, 3, 2])?;
    let p = ffn.permuted(&perm)?;
    assert_eq!(p.up().weight().dtype(), DType::BF16);
    let back = p.permuted(&perm.inverse())?;
    assert_eq!(flat(back.up().weight())?, flat(ffn.up().weight())?);
    assert_eq!(flat(back.down().weight())?, flat(ffn.down().weight())?);
    Ok(())
}

// -------------------------------------------------------------------------------------
// Counts, frequencies and hot sets on hand-made data
// -------------------------------------------------------------------------------------

#[test]
fn counts_and_frequencies_are_exact() -> TestResult {
    let dev = Device::Cpu;
    // [2, 2, 4]: 4 rows of 4 neurons; threshold 0.5, strictly greater counts.
    let a = Tensor::new(
        &[
            [[0.5f32, 0.6, -0.7, 0.0], [-0.51, 0.0, 0.0, 0.0]],
            [[0.0, -2.0, 0.5, 0.0], [1.0, 1.0, 1.0, 0.49]],
        ],
        &dev,
    )?;
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        let mut s = NeuronStats::new(4, 0.5)?;
        s.record_activations(&a.to_dtype(dtype)?)?;
        assert_eq!(s.rows(), 4, "{dtype:?}");
        assert_eq!(s.counts(), &[2, 3, 2, 0], "{dtype:?}");
        assert_eq!(s.frequencies(), vec![0.5, 0.75, 0.5, 0.0], "{dtype:?}");
    }
    // Threshold 0: exactly the non-zero entries.
    let mut s = NeuronStats::new(4, 0.0)?;
    s.record_activations(&a)?;
    assert_eq!(s.counts(), &[3, 3, 3, 1]);
    // Index lists add rows; an empty list is a row with nothing active.
    s.record_indices(&[vec![3, 0], vec![]])?;
    assert_eq!(s.rows(), 6);
    assert_eq!(s.counts(), &[4, 3, 3, 2]);
    assert_eq!(s.frequencies(), vec![4.0 / 6.0, 0.5, 0.5, 2.0 / 6.0]);
    s.reset();
    assert_eq!((s.rows(), s.counts()), (0, &[0u64; 4][..]));
    assert_eq!(s.frequencies(), vec![0.0; 4]);
    Ok(())
}

#[test]
fn merge_equals_recording_everything_in_one() -> TestResult {
    let a = random_tensor(&[30, 16], 1, 1.0)?;
    let b = random_tensor(&[20, 16], 2, 1.0)?;
    let (mut sa, mut sb, mut all) = (
        NeuronStats::new(16, 0.4)?,
        NeuronStats::new(16, 0.4)?,
        NeuronStats::new(16, 0.4)?,
    );
    sa.record_activations(&a)?;
    sb.record_activations(&b)?;
    all.record_activations(&Tensor::cat(&[&a, &b], 0)?)?;
    sa.merge(&sb)?;
    assert_eq!(sa, all);
    assert!(matches!(
        sa.merge(&NeuronStats::new(15, 0.4)?),
        Err(Error::MetadataMismatch { .. })
    ));
    assert!(matches!(
        sa.merge(&NeuronStats::new(16, 0.3)?),
        Err(Error::MetadataMismatch { .. })
    ));
    assert_eq!(sa, all, "a failed merge changes nothing");
    Ok(())
}

/// counts: [3, 1, 3, 0, 2, 3] over 4 rows -> frequencies [.75, .25, .75, 0, .5, .75].
fn tie_stats() -> Result<NeuronStats, Error> {
    let mut s = NeuronStats::new(6, 0.0)?;
    s.record_indices(&[vec![0, 2, 5, 4], vec![5, 0, 2], vec![1, 4], vec![2, 0, 5]])?;
    Ok(s)
}

#[test]
fn hot_set_by_frequency_threshold_is_exact() -> TestResult {
    let s = tie_stats()?;
    assert_eq!(s.counts(), &[3, 1, 3, 0, 2, 3]);
    // frequency >= min, listed by descending frequency, ties by ascending index.
    assert_eq!(s.hot_by_frequency(0.75)?.indices(), &[0, 2, 5]);
    assert_eq!(s.hot_by_frequency(0.5)?.indices(), &[0, 2, 5, 4]);
    assert_eq!(s.hot_by_frequency(0.5000001)?.indices(), &[0, 2, 5]);
    assert_eq!(s.hot_by_frequency(0.25)?.indices(), &[0, 2, 5, 4, 1]);
    assert_eq!(s.hot_by_frequency(0.0)?.indices(), &[0, 2, 5, 4, 1, 3]);
    assert!(s.hot_by_frequency(1.0)?.is_empty());
    Ok(())
}

#[test]
fn hot_set_by_fraction_is_exact_with_ties() -> TestResult {
    let s = tie_stats()?;
    // k = max(1, round(fraction * 6)); the three-way tie at 0.75 is cut by index.
    assert_eq!(s.hot_top_fraction(1.0 / 6.0)?.indices(), &[0]);
    assert_eq!(s.hot_top_fraction(0.3)?.indices(), &[0, 2]); // 1.8 -> 2
    assert_eq!(s.hot_top_fraction(0.25)?.indices(), &[0, 2]); // 1.5 -> 2 (half away)
    assert_eq!(s.hot_top_fraction(0.5)?.indices(), &[0, 2, 5]);
    assert_eq!(s.hot_top_fraction(0.6)?.indices(), &[0, 2, 5, 4]); // 3.6 -> 4
    assert_eq!(s.hot_top_fraction(0.05)?.indices(), &[0]); // 0.3 -> at least 1
    assert_eq!(s.hot_top_fraction(1.0)?.indices(), &[0, 2, 5, 4, 1, 3]);
    let hot = s.hot_top_fraction(0.5)?;
    assert_eq!(hot.mask(), vec![true, false, true, false, false, true]);
    assert_eq!(hot.permutation().order(), &[0, 2, 5, 1, 3, 4]);
    Ok(())
}

// -------------------------------------------------------------------------------------
// Periodic reclassification
// -------------------------------------------------------------------------------------

#[test]
fn tracker_reclassifies_every_n_rows_regardless_of_batching() -> TestResult {
    let x = random_tensor(&[37, 12], 5, 1.0)?;
    let make = || HotSetTracker::new(12, 0.5, HotRule::TopFraction(0.25), 5);
    let mut whole = make()?;
    assert_eq!(whole.record_activations(&x)?, 7); // 37 rows: boundaries at 5, 10, .., 35
    let mut pieces = make()?;
    let mut done = 0;
    for (start, len) in [(0, 3), (3, 1), (4, 11), (15, 22)] {
        done += pieces.record_activations(&x.narrow(0, start, len)?)?;
    }
    assert_eq!(done, 7);
    assert_eq!(whole, pieces);
    assert_eq!(whole.reclassifications(), 7);
    assert_eq!(whole.window().rows(), 2);
    // Index lists count identically to the activations they describe.
    let rows: Vec<Vec<usize>> = x
        .to_vec2::<f32>()?
        .iter()
        .map(|r| (0..12).filter(|&i| r[i].abs() > 0.5).collect())
        .collect();
    let mut by_idx = make()?;
    assert_eq!(by_idx.record_indices(&rows)?, 7);
    assert_eq!(by_idx, whole);
    Ok(())
}

#[test]
fn tracker_decay_follows_the_documented_rule() -> TestResult {
    // 3 neurons, windows of 2 rows. Window 1: counts [2, 1, 0]; window 2: [0, 1, 2].
    let w1 = [vec![0, 1], vec![0]];
    let w2 = [vec![2], vec![1, 2]];
    let mut t = HotSetTracker::new(3, 0.0, HotRule::MinFrequency(0.5), 2)?.with_decay(0.5)?;
    assert_eq!(t.decay(), 0.5);
    assert!(t.hot().is_empty() && t.history_frequencies() == vec![0.0; 3]);
    t.record_indices(&w1[..1])?;
    assert!(
        t.hot().is_empty(),
        "no reclassification inside the first window"
    );
    t.record_indices(&w1[1..])?;
    assert_eq!(t.history_counts(), &[2.0, 1.0, 0.0]);
    assert_eq!(t.history_rows(), 2.0);
    assert_eq!(t.hot().indices(), &[0, 1]);
    t.record_indices(&w2)?;
    // history = 0.5·[2, 1, 0] + [0, 1, 2] = [1, 1.5, 2], rows = 0.5·2 + 2 = 3.
    assert_eq!(t.history_counts(), &[1.0, 1.5, 2.0]);
    assert_eq!(t.history_rows(), 3.0);
    assert_eq!(t.history_frequencies(), vec![1.0 / 3.0, 0.5, 2.0 / 3.0]);
    assert_eq!(t.hot().indices(), &[2, 1]);
    assert_eq!(t.reclassifications(), 2);

    // decay 0: a tumbling window, only the last window counts.
    let mut t0 = HotSetTracker::new(3, 0.0, HotRule::MinFrequency(0.5), 2)?.with_decay(0.0)?;
    t0.record_indices(&w1)?;
    t0.record_indices(&w2)?;
    assert_eq!(t0.history_counts(), &[0.0, 1.0, 2.0]);
    assert_eq!(t0.hot().indices(), &[2, 1]);

    // decay 1: cumulative, identical to NeuronStats over the same complete windows.
    let mut t1 = HotSetTracker::new(3, 0.0, HotRule::TopFraction(1.0 / 3.0), 2)?.with_decay(1.0)?;
    let mut s = NeuronStats::new(3, 0.0)?;
    for w in [&w1, &w2] {
        t1.record_indices(w)?;
        s.record_indices(w)?;
    }
    let cumulative: Vec<f64> = s.counts().iter().map(|&c| c as f64).collect();
    assert_eq!(t1.history_counts(), &cumulative[..]);
    assert_eq!(t1.hot(), &s.hot_top_fraction(1.0 / 3.0)?);
    assert_eq!(t1.hot().indices(), &[0]); // counts [2, 2, 2]: the tie goes to index 0
    Ok(())
}

#[test]
fn reclassify_now_uses_the_partial_window() -> TestResult {
    let mut t = HotSetTracker::new(4, 0.0, HotRule::TopFraction(0.25), 100)?;
    assert!(matches!(
        t.reclassify_now(),
        Err(Error::InvalidArgument { .. })
    ));
    t.record_indices(&[vec![3], vec![3, 1]])?;
    assert!(t.hot().is_empty());
    assert_eq!(t.reclassify_now()?.indices(), &[3]);
    assert_eq!(t.window().rows(), 0);
    assert_eq!(t.reclassifications(), 1);
    Ok(())
}

// -------------------------------------------------------------------------------------
// Serde
// -------------------------------------------------------------------------------------

#[test]
fn serde_round_trips_and_validates() -> TestResult {
    let mut s = tie_stats()?;
    s.record_activations(&random_tensor(&[3, 6], 9, 1.0)?)?;
    let json = serde_json::to_string(&s)?;
    assert_eq!(serde_json::from_str::<NeuronStats>(&json)?, s);

    let mut t = HotSetTracker::new(6, 0.25, HotRule::MinFrequency(0.3), 4)?;
    t.record_activations(&random_tensor(&[10, 6], 3, 1.0)?)?;
    let json = serde_json::to_string(&t)?;
    assert_eq!(serde_json::from_str::<HotSetTracker>(&json)?, t);

    let hot = s.hot_top_fraction(0.5)?;
    assert_eq!(
        serde_json::from_str::<HotSet>(&serde_json::to_string(&hot)?)?,
        hot
    );
    let perm = hot.permutation();
    assert_eq!(serde_json::to_string(&perm)?, "[0,2,5,1,3,4]");
    assert_eq!(
        serde_json::from_str::<NeuronPermutation>("[0,2,5,1,3,4]")?,
        perm
    );

    // Corrupt documents are refused.
    for bad in [
        r#"{"n_neurons":2,"activation_threshold":0.0,"rows":1,"counts":[1,2]}"#, // count > rows
        r#"{"n_neurons":2,"activation_threshold":0.0,"rows":3,"counts":[1]}"#,   // length
        r#"{"n_neurons":0,"activation_threshold":0.0,"rows":0,"counts":[]}"#,    // no neurons
        r#"{"n_neurons":1,"activation_threshold":-1.0,"rows":0,"counts":[0]}"#,  // threshold
    ] {
        assert!(serde_json::from_str::<NeuronStats>(bad).is_err(), "{bad}");
    }
    assert!(serde_json::from_str::<NeuronPermutation>("[0,0,1]").is_err());
    assert!(serde_json::from_str::<NeuronPermutation>("[]").is_err());
    assert!(serde_json::from_str::<HotSet>(r#"{"n_neurons":3,"hot":[3]}"#).is_err());
    let v: serde_json::Value = serde_json::from_str(&json)?;
    let mut tampered = v.clone();
    tampered["history"][0] = serde_json::json!(1e9); // more than history_rows
    assert!(serde_json::from_value::<HotSetTracker>(tampered).is_err());
    let mut tampered = v.clone();
    tampered["hot"]["hot"] = serde_json::json!([5, 4, 3, 2, 1, 0]); // not the rule's choice
    let e = serde_json::from_value::<HotSetTracker>(tampered)
        .err()
        .ok_or("tampered hot set accepted")?;
    assert!(e.to_string().contains("rule's choice"), "{e}");
    let mut tampered = v;
    tampered["window"]["rows"] = serde_json::json!(4); // a full window not reclassified
    tampered["window"]["counts"] = serde_json::json!([0, 0, 0, 0, 0, 0]);
    assert!(serde_json::from_value::<HotSetTracker>(tampered).is_err());
    Ok(())
}

// -------------------------------------------------------------------------------------
// Bad input: errors, never panics, nothing recorded
// -------------------------------------------------------------------------------------

#[test]
fn bad_parameters_are_refused() {
    for t in [f32::NAN, -0.1, f32::INFINITY] {
        assert!(
            matches!(NeuronStats::new(4, t), Err(Error::InvalidArgument { .. })),
            "threshold {t}"
        );
    }
    assert!(matches!(
        NeuronStats::new(0, 0.0),
        Err(Error::InvalidArgument { .. })
    ));
    let s = tie_stats().expect("valid stats");
    for f in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        assert!(
            matches!(s.hot_top_fraction(f), Err(Error::InvalidArgument { .. })),
            "fraction {f}"
        );
    }
    for m in [-0.1, 1.1, f64::NAN] {
        assert!(
            matches!(s.hot_by_frequency(m), Err(Error::InvalidArgument { .. })),
            "min frequency {m}"
        );
    }
    let empty = NeuronStats::new(3, 0.0).expect("valid");
    assert!(matches!(
        empty.hot_top_fraction(0.5),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(HotSetTracker::new(3, 0.0, HotRule::TopFraction(0.5), 0).is_err());
    assert!(HotSetTracker::new(3, 0.0, HotRule::TopFraction(2.0), 4).is_err());
    let t = HotSetTracker::new(3, 0.0, HotRule::TopFraction(0.5), 4).expect("valid");
    assert!(t.clone().with_decay(1.5).is_err());
    assert!(t.with_decay(f64::NAN).is_err());
    assert!(HotSet::from_indices(3, vec![0, 0]).is_err());
    assert!(HotSet::from_indices(3, vec![3]).is_err());
    assert!(NeuronPermutation::from_order(vec![1, 2]).is_err());
    assert!(NeuronPermutation::identity(0).is_err());
}

#[test]
fn bad_activations_are_refused_and_record_nothing() -> TestResult {
    let dev = Device::Cpu;
    let mut s = NeuronStats::new(3, 0.0)?;
    s.record_indices(&[vec![1]])?;
    let before = s.clone();
    // Wrong last dimension, empty, rank 0.
    for t in [
        Tensor::zeros((2, 4), DType::F32, &dev)?,
        Tensor::zeros((0, 3), DType::F32, &dev)?,
        Tensor::new(1f32, &dev)?,
    ] {
        match s.record_activations(&t) {
            Err(Error::ShapeMismatch {
                expected, found, ..
            }) => {
                assert_eq!(expected, "[.., 3] with at least one row");
                assert_eq!(found, format!("{:?}", t.dims()));
            }
            other => panic!("expected ShapeMismatch for {:?}, got {other:?}", t.dims()),
        }
    }
    // Integer dtypes.
    for dtype in [DType::U8, DType::U32, DType::I64] {
        let t = Tensor::zeros((2, 3), dtype, &dev)?;
        assert!(matches!(
            s.record_activations(&t),
            Err(Error::UnsupportedDType { found, .. }) if found == dtype
        ));
    }
    // NaN / Inf, reported by flat row-major index (also through F16, rank 3 and a
    // non-contiguous view, where the index is the logical one).
    let mut v = vec![0.5f32; 12];
    v[7] = f32::NAN;
    let t = Tensor::from_vec(v, (4, 3), &dev)?;
    let mut sq = vec![0.5f32; 9];
    sq[2] = f32::NAN; // (0, 2) -> (2, 0) after the transpose: flat index 6
    let sq = Tensor::from_vec(sq, (3, 3), &dev)?.t()?;
    assert!(!sq.is_contiguous());
    for (x, index) in [
        (t.clone(), 7),
        (t.to_dtype(DType::F16)?, 7),
        (t.reshape((2, 2, 3))?, 7),
        (sq, 6),
    ] {
        match s.record_activations(&x) {
            Err(Error::NonFinite { index: i, .. }) => assert_eq!(i, index),
            other => panic!("expected NonFinite, got {other:?}"),
        }
    }
    let inf = Tensor::new(&[[1f32, 2., 3.], [4., f32::NEG_INFINITY, 6.]], &dev)?;
    assert!(matches!(
        s.record_activations(&inf),
        Err(Error::NonFinite { index: 4, .. })
    ));
    // Index lists: out of range, duplicate, none.
    assert!(matches!(
        s.record_indices(&[vec![0], vec![3]]),
        Err(Error::InvalidArgument { .. })
    ));
    match s.record_indices(&[vec![0], vec![2, 1, 2]]) {
        Err(Error::InvalidArgument { reason, .. }) => assert!(reason.contains("row 1"), "{reason}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert!(s.record_indices::<Vec<usize>>(&[]).is_err());
    assert_eq!(s, before, "failed records leave the stats unchanged");

    // The tracker refuses the same inputs and stays unchanged too.
    let mut t = HotSetTracker::new(3, 0.0, HotRule::TopFraction(0.5), 1)?;
    let before = t.clone();
    assert!(t.record_activations(&inf).is_err());
    assert!(t.record_indices(&[vec![0], vec![5]]).is_err());
    assert_eq!(t, before);
    Ok(())
}

#[test]
fn ffn_shape_mismatches_name_expected_and_found() -> TestResult {
    let (d, n) = (4, 6);
    let lin = |o, i, b| linear(o, i, b, 1);
    let expect_shape = |r: Result<FfnLinears, Error>, what: &str, exp: &str, found: &str| match r {
        Err(Error::ShapeMismatch {
            what: w,
            expected,
            found: f,
        }) => {
            assert!(w.contains(what), "{w}");
            assert_eq!(expected, exp);
            assert_eq!(f, found);
        }
        other => panic!("expected ShapeMismatch for {what}, got {other:?}"),
    };
    expect_shape(
        FfnLinears::new(lin(n, d, false)?, None, lin(d, n + 1, false)?),
        "down",
        "[4, 6]",
        "[4, 7]",
    );
    expect_shape(
        FfnLinears::new(
            lin(n, d, false)?,
            Some(lin(n, d + 1, false)?),
            lin(d, n, false)?,
        ),
        "gate",
        "[6, 4]",
        "[6, 5]",
    );
    let bad_bias = Linear::new(
        random_tensor(&[n, d], 1, 1.0)?,
        Some(random_tensor(&[d], 2, 1.0)?),
    );
    expect_shape(
        FfnLinears::new(bad_bias, None, lin(d, n, false)?),
        "up bias",
        "[6]",
        "[4]",
    );
    let bad_down_bias = Linear::new(
        random_tensor(&[d, n], 1, 1.0)?,
        Some(random_tensor(&[n], 2, 1.0)?),
    );
    expect_shape(
        FfnLinears::new(lin(n, d, true)?, None, bad_down_bias),
        "down bias",
        "[4]",
        "[6]",
    );
    let rank3 = Linear::new(random_tensor(&[1, n, d], 1, 1.0)?, None);
    assert!(matches!(
        FfnLinears::new(rank3, None, lin(d, n, false)?),
        Err(Error::ShapeMismatch { .. })
    ));

    let ffn = FfnLinears::new(lin(n, d, true)?, None, lin(d, n, true)?)?;
    assert_eq!((ffn.n_neurons(), ffn.d_model()), (n, d));
    match ffn.permuted(&NeuronPermutation::identity(n + 1)?) {
        Err(Error::ShapeMismatch {
            expected, found, ..
        }) => assert_eq!((expected.as_str(), found.as_str()), ("6", "7")),
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    assert!(matches!(
        ffn.hot_first(&HotSet::from_indices(n - 1, vec![0])?),
        Err(Error::ShapeMismatch { .. })
    ));
    Ok(())
}

// -------------------------------------------------------------------------------------
// Property tests
// -------------------------------------------------------------------------------------

fn stats_and_rule() -> impl Strategy<Value = (NeuronStats, HotRule)> {
    (1usize..40, 1usize..30)
        .prop_flat_map(|(n, rows)| {
            (
                Just(n),
                prop::collection::vec(prop::collection::vec(any::<bool>(), n), rows),
                prop_oneof![
                    (0.0f64..=1.0).prop_map(HotRule::MinFrequency),
                    (0.001f64..=1.0).prop_map(HotRule::TopFraction),
                ],
            )
        })
        .prop_map(|(n, masks, rule)| {
            let rows: Vec<Vec<usize>> = masks
                .iter()
                .map(|m| (0..n).filter(|&i| m[i]).collect())
                .collect();
            let mut s = NeuronStats::new(n, 0.0).expect("n >= 1");
            s.record_indices(&rows).expect("valid rows");
            (s, rule)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn permutation_is_a_bijection_with_hot_first_by_descending_frequency(
        (s, rule) in stats_and_rule()
    ) {
        let n = s.n_neurons();
        let freq = s.frequencies();
        let hot = s.hot(rule).expect("valid rule, rows > 0");
        let perm = hot.permutation();
        let order = perm.order();

        // A bijection of 0..n, and its inverse composes to the identity.
        let mut sorted = order.to_vec();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        let inv = perm.inverse();
        for (new, &old) in order.iter().enumerate() {
            prop_assert_eq!(inv.order()[old], new);
        }

        // Hot neurons first, in descending frequency, ties by ascending index; cold after,
        // in ascending index.
        let h = hot.len();
        prop_assert_eq!(&order[..h], hot.indices());
        for w in order[..h].windows(2) {
            prop_assert!(freq[w[0]] > freq[w[1]] || (freq[w[0]] == freq[w[1]] && w[0] < w[1]));
        }
        prop_assert!(order[h..].windows(2).all(|w| w[0] < w[1]));

        // The rule's contract.
        match rule {
            HotRule::MinFrequency(min) => {
                for (i, &f) in freq.iter().enumerate() {
                    prop_assert_eq!(hot.contains(i), f >= min);
                }
            }
            HotRule::TopFraction(f) => {
                let k = ((f * n as f64).round() as usize).clamp(1, n);
                prop_assert_eq!(h, k);
                // Every hot neuron beats every cold one (ties: lower index).
                if let (Some(&last_hot), Some(&first_cold_max)) = (
                    order[..h].last(),
                    order[h..].iter().max_by(|&&a, &&b| {
                        freq[a].total_cmp(&freq[b]).then(b.cmp(&a))
                    }),
                ) {
                    prop_assert!(
                        freq[last_hot] > freq[first_cold_max]
                            || (freq[last_hot] == freq[first_cold_max]
                                && last_hot < first_cold_max)
                    );
                }
            }
        }
    }

    #[test]
    fn tracker_batching_never_matters(
        rows in prop::collection::vec(prop::collection::vec(0usize..8, 0..8), 1..60),
        every in 1u64..10,
        cuts in prop::collection::vec(0usize..60, 0..5),
    ) {
        // Deduplicate each row's indices (duplicates are refused by design).
        let rows: Vec<Vec<usize>> = rows
            .into_iter()
            .map(|mut r| { r.sort_unstable(); r.dedup(); r })
            .collect();
        let make = || HotSetTracker::new(8, 0.0, HotRule::TopFraction(0.25), every)
            .expect("valid");
        let mut whole = make();
        let total = whole.record_indices(&rows).expect("valid rows");
        prop_assert_eq!(total as u64, rows.len() as u64 / every);
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c > 0 && c < rows.len()).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut pieces = make();
        let mut start = 0;
        for end in cuts.into_iter().chain([rows.len()]) {
            pieces.record_indices(&rows[start..end]).expect("valid rows");
            start = end;
        }
        prop_assert_eq!(whole, pieces);
    }
}
