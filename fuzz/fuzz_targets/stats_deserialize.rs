//! serde deserialisation of the statistics types from arbitrary bytes: `NeuronStats`,
//! `HotSet`, `HotSetTracker`, `HotRule`, `NeuronPermutation` and `Scheme`. Each must give
//! `Err` or a value whose invariants hold — never a panic, an abort or an allocation sized
//! by a number in the input rather than by the data present.
#![no_main]

use candle_compress::scheme::Scheme;
use candle_compress::sparse::{HotRule, HotSet, HotSetTracker, NeuronPermutation, NeuronStats};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut s) = serde_json::from_slice::<NeuronStats>(data) {
        assert!(s.counts().iter().all(|&c| c <= s.rows()));
        let _ = s.frequencies();
        let _ = s.record_indices(&[vec![0]]);
        let back: NeuronStats = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
    if let Ok(h) = serde_json::from_slice::<HotSet>(data) {
        assert!(h.indices().iter().all(|&i| i < h.n_neurons()));
    }
    if let Ok(mut t) = serde_json::from_slice::<HotSetTracker>(data) {
        let _ = t.history_frequencies();
        let _ = t.record_indices(&[vec![0]]);
        let back: HotSetTracker =
            serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }
    let _ = serde_json::from_slice::<HotRule>(data);
    let _ = serde_json::from_slice::<NeuronPermutation>(data);
    let _ = serde_json::from_slice::<Scheme>(data);
});
