//! Pruning, clipping and the compression [`Pipeline`].
//!
//! - [`prune`]: magnitude (L1) pruning per tensor ([`magnitude_prune`]) or
//!   with one global threshold ([`magnitude_prune_global`]), N:M structured sparsity
//!   ([`nm_prune`]) and percentile clipping ([`clip_percentile`]); thresholds by
//!   selection, ties documented.
//! - [`storage`]: real sparse layouts with honest sizes — [`BitmaskSparse`] and
//!   [`NmSparse`] — and [`StoredTensor`], the pipeline's output.
//! - [`skip`]: [`SkipRules`] and the one tensor-name pattern language ([`name_matches`])
//!   of the pipeline and the CLI.
//! - [`pipeline`]: [`Pipeline`] of ordered stages (prune, clip, quantize with any
//!   [`Scheme`](crate::scheme::Scheme)) over named tensors or a safetensors file, with
//!   per-stage [`StageStats`], a [`Report`] (table and JSON) and [`Pipeline::estimate`].

mod global_select;
pub mod pipeline;
#[allow(clippy::module_inception)]
pub mod prune;
pub mod skip;
pub mod storage;

pub use pipeline::{Estimate, Pipeline, PipelineOutput, Report, Stage, StageStats, TensorReport};
pub use prune::{
    clip_percentile, magnitude_prune, magnitude_prune_global, nm_prune, satisfies_nm, Clipped,
    GlobalPruned, Pruned, MAX_NM_GROUP,
};
pub use skip::{name_matches, SkipRules, TRANSFORMER_SKIPS};
pub use storage::{
    BitmaskSparse, NmSparse, SparseValues, StorageKind, StoredTensor, SPARSE_TAG_BYTES,
};
