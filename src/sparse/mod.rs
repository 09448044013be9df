//! Hot/cold neuron statistics of FFN layers, and the FFN permutation they drive.
//!
//! In a trained FFN a small share of hidden neurons fires in most rows ("hot") while the
//! rest fire rarely ("cold"). Sparse-inference engines keep hot weights dense and
//! contiguous and skip or offload cold ones. This module measures which neurons are hot
//! and rearranges a model accordingly, without changing what it computes:
//!
//! - [`NeuronStats`]: exact per-neuron activation counts from activation tensors or lists
//!   of active indices; frequencies; mergeable; serde.
//! - [`HotRule`] / [`HotSet`]: hot neurons by minimum frequency or top fraction, most
//!   frequent first, ties to the lower index.
//! - [`HotSetTracker`]: the streaming form, reclassifying every `every_rows` rows from
//!   exponentially decayed counts.
//! - [`NeuronPermutation`] and [`FfnLinears`]: reorder an FFN's `up`/`gate` rows and
//!   `down` columns hot-first, returning new `candle_nn::Linear`s that compute the same
//!   output up to f32 rounding.
//!
//! What it does not do: predict activations ahead of time, or run a sparse matmul; it
//! provides the statistics and the weight layout those build on.
//!
//! ```
//! use candle_compress::sparse::{FfnLinears, HotRule, NeuronStats};
//! use candle_core::{Device, Module, Tensor};
//! use candle_nn::Linear;
//!
//! let dev = Device::Cpu;
//! let (d, n) = (8, 16);
//! let w = |r: usize, c: usize| Tensor::randn(0f32, 1., (r, c), &dev);
//! let ffn = FfnLinears::new(Linear::new(w(n, d)?, None), Some(Linear::new(w(n, d)?, None)),
//!                           Linear::new(w(d, n)?, None))?;
//!
//! // Calibrate: a neuron is active when its gate activation is above 0.5 in magnitude.
//! let x = Tensor::randn(0f32, 1., (64, d), &dev)?;
//! let mut stats = NeuronStats::new(n, 0.5)?;
//! let gate = ffn.gate().ok_or("a gated FFN")?;
//! stats.record_activations(&gate.forward(&x)?.gelu()?)?;
//! let hot = stats.hot(HotRule::TopFraction(0.25))?;
//! let (permuted, perm) = ffn.hot_first(&hot)?;
//! assert_eq!(hot.len(), 4);
//! assert_eq!(&perm.order()[..4], hot.indices());
//! assert_eq!(permuted.up().weight().dims(), &[n, d]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod neuron_stats;
pub mod permute;

pub use neuron_stats::{HotRule, HotSet, HotSetTracker, NeuronStats};
pub use permute::{FfnLinears, NeuronPermutation};
