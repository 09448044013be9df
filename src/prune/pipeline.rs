//! [`Pipeline`]: ordered prune → clip → quantize stages over named tensors, with honest
//! per-stage statistics.
//!
//! A pipeline runs over a `HashMap<String, Tensor>` or a safetensors file. Tensors matched
//! by a [`SkipRules`] name pattern, of rank below `min_rank` (1-D biases and norms by
//! default) or of a non-float dtype pass through unchanged. After every stage each
//! processed tensor is stored in the smallest of its real layouts (dense, quantized,
//! [`BitmaskSparse`](super::BitmaskSparse), [`NmSparse`](super::NmSparse)) and the stage's
//! [`StageStats`] record the bytes of those stored values — `size_bytes` of what was built,
//! never a theoretical factor. The [`Report`] prints as a table and serializes to JSON.
//!
//! ```
//! use std::collections::HashMap;
//! use candle_compress::prune::Pipeline;
//! use candle_compress::scheme::Scheme;
//! use candle_core::{Device, Tensor};
//!
//! let dev = Device::Cpu;
//! let mut tensors = HashMap::new();
//! tensors.insert("layer.0.weight".to_string(), Tensor::randn(0f32, 1.0, (64, 128), &dev)?);
//! tensors.insert("layer.0.bias".to_string(), Tensor::zeros(64, candle_core::DType::F32, &dev)?);
//! let pipeline = Pipeline::new()
//!     .prune_magnitude(0.5)
//!     .clip_percentile(99.9)
//!     .quantize(Scheme::Int8 { block: 64 });
//! let predicted = pipeline.estimate_tensors(&tensors)?;
//! let out = pipeline.run(&tensors)?;
//! assert_eq!(out.report.stages.len(), 3);
//! assert_eq!(out.report.stages[0].sparsity, 0.5);
//! assert_eq!(out.report.tensors_skipped, 1); // the 1-D bias
//! let actual = out.report.bytes_after;
//! assert!((predicted.bytes_after as f64 - actual as f64).abs() <= 0.01 * actual as f64);
//! println!("{}", out.report); // a table; `serde_json::to_string(&out.report)` for JSON
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use serde::{Deserialize, Serialize};

use super::global_select::GlobalSelect;
use super::prune::{
    apply_global_cut, check_nm, check_percentile, clip_slice, global_cut, prune_nm_slice,
    prune_smallest, target_zeros, GlobalCut,
};
use super::skip::SkipRules;
use super::storage::{StorageKind, StoredTensor};
use crate::error::{Error, Result};
use crate::input::FloatData;
use crate::io::reader::SafetensorsReader;
use crate::io::safetensors::plain_candle_dtype;
use crate::scheme::Scheme;

/// One step of a [`Pipeline`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Magnitude pruning of each tensor to `sparsity` (see
    /// [`magnitude_prune`](super::magnitude_prune)).
    PruneMagnitude {
        /// Fraction of elements set to zero, in `[0, 1]`.
        sparsity: f64,
    },
    /// Magnitude pruning with one threshold across all processed tensors (see
    /// [`magnitude_prune_global`](super::magnitude_prune_global)).
    PruneGlobal {
        /// Fraction of all processed elements set to zero, in `[0, 1]`.
        sparsity: f64,
    },
    /// N:M structured pruning along the last dimension (see [`nm_prune`](super::nm_prune));
    /// tensors whose last dimension is not a multiple of `m` are skipped by this stage.
    PruneNm {
        /// Values kept per group.
        n: usize,
        /// Group size.
        m: usize,
    },
    /// Percentile clipping (see [`clip_percentile`](super::clip_percentile)).
    Clip {
        /// Percentile of the non-zero magnitudes, in `(0, 100]`.
        percentile: f64,
    },
    /// Quantization with a [`Scheme`]; must be the last stage.
    Quantize {
        /// The scheme.
        scheme: Scheme,
    },
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::PruneMagnitude { sparsity } => write!(f, "prune {:.4}", sparsity),
            Stage::PruneGlobal { sparsity } => write!(f, "prune-global {:.4}", sparsity),
            Stage::PruneNm { n, m } => write!(f, "prune {n}:{m}"),
            Stage::Clip { percentile } => write!(f, "clip p{percentile}"),
            Stage::Quantize { scheme } => write!(f, "quantize {scheme}"),
        }
    }
}

/// Statistics of one stage, over the tensors it processed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    /// The stage, as text (e.g. `"prune 2:4"`).
    pub stage: String,
    /// Tensors the stage changed (or quantized).
    pub tensors_processed: usize,
    /// Tensors the stage left alone (skip rules, or not applicable such as N:M on a last
    /// dimension that is not a multiple of `m`).
    pub tensors_skipped: usize,
    /// Elements of the processed tensors.
    pub params: usize,
    /// Non-zeros of the processed tensors before the stage.
    pub nonzeros_before: usize,
    /// Non-zeros of the processed tensors after the stage.
    pub nonzeros: usize,
    /// `1 - nonzeros / params` (0 when `params == 0`).
    pub sparsity: f64,
    /// Elements the stage changed: zeroed by pruning, clipped by clipping, 0 for
    /// quantization.
    pub changed: usize,
    /// Bytes of the processed tensors' stored layouts before the stage.
    pub bytes_before: usize,
    /// Bytes of the processed tensors' stored layouts after the stage.
    pub bytes_after: usize,
}

impl StageStats {
    /// The statistics of `stage` before it has seen any tensor.
    fn zero(stage: &Stage) -> Self {
        StageStats {
            stage: stage.to_string(),
            tensors_processed: 0,
            tensors_skipped: 0,
            params: 0,
            nonzeros_before: 0,
            nonzeros: 0,
            sparsity: 0.0,
            changed: 0,
            bytes_before: 0,
            bytes_after: 0,
        }
    }
}

/// One tensor's line in the [`Report`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorReport {
    /// The tensor's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its dtype, e.g. `"F32"`.
    pub dtype: String,
    /// Elements.
    pub params: usize,
    /// Non-zeros after the pipeline (of the values before quantization).
    pub nonzeros: usize,
    /// The layout it is stored in.
    pub storage: StorageKind,
    /// Bytes of the dense input.
    pub bytes_before: usize,
    /// Bytes of the stored layout.
    pub bytes_after: usize,
    /// Why it was skipped, if it was.
    pub skipped: Option<String>,
}

/// Everything a pipeline run did, with real byte counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Per-stage statistics, in stage order.
    pub stages: Vec<StageStats>,
    /// Per-tensor lines, in name order.
    pub tensors: Vec<TensorReport>,
    /// Tensors processed by at least the pipeline's skip rules.
    pub tensors_processed: usize,
    /// Tensors the skip rules left alone.
    pub tensors_skipped: usize,
    /// Bytes of all inputs, dense.
    pub bytes_before: usize,
    /// Bytes of all outputs as stored (skipped tensors dense).
    pub bytes_after: usize,
}

impl Report {
    /// The report of a run over no tensors.
    fn empty(pipeline: &Pipeline) -> Self {
        Report {
            stages: pipeline.stages.iter().map(StageStats::zero).collect(),
            tensors: Vec::new(),
            tensors_processed: 0,
            tensors_skipped: 0,
            bytes_before: 0,
            bytes_after: 0,
        }
    }

    /// The report of two runs of one pipeline over disjoint tensors, as one run over all
    /// of them would give it.
    fn merge(mut self, other: Report) -> Self {
        for (a, b) in self.stages.iter_mut().zip(other.stages) {
            a.tensors_processed += b.tensors_processed;
            a.tensors_skipped += b.tensors_skipped;
            a.params += b.params;
            a.nonzeros_before += b.nonzeros_before;
            a.nonzeros += b.nonzeros;
            a.changed += b.changed;
            a.bytes_before += b.bytes_before;
            a.bytes_after += b.bytes_after;
            a.sparsity = if a.params == 0 {
                0.0
            } else {
                1.0 - a.nonzeros as f64 / a.params as f64
            };
        }
        self.tensors.extend(other.tensors);
        self.tensors.sort_by(|a, b| a.name.cmp(&b.name));
        self.tensors_processed += other.tensors_processed;
        self.tensors_skipped += other.tensors_skipped;
        self.bytes_before += other.bytes_before;
        self.bytes_after += other.bytes_after;
        self
    }

    /// `bytes_before / bytes_after`.
    #[must_use]
    pub fn compression_ratio(&self) -> f64 {
        self.bytes_before as f64 / self.bytes_after.max(1) as f64
    }

    /// The report as pretty-printed JSON.
    ///
    /// # Errors
    /// [`Error::Json`] (not expected for this type).
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<22} {:>6} {:>6} {:>12} {:>12} {:>8} {:>12} {:>12} {:>12}",
            "stage",
            "done",
            "skip",
            "params",
            "nonzeros",
            "sparsity",
            "changed",
            "bytes before",
            "bytes after"
        )?;
        for s in &self.stages {
            writeln!(
                f,
                "{:<22} {:>6} {:>6} {:>12} {:>12} {:>7.2}% {:>12} {:>12} {:>12}",
                s.stage,
                s.tensors_processed,
                s.tensors_skipped,
                s.params,
                s.nonzeros,
                100.0 * s.sparsity,
                s.changed,
                s.bytes_before,
                s.bytes_after
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<40} {:<16} {:>10} {:>10} {:<22} {:>12} {:>12}",
            "tensor", "shape", "params", "nonzeros", "storage", "bytes before", "bytes after"
        )?;
        for t in &self.tensors {
            let storage = match &t.skipped {
                Some(r) => format!("skipped ({r})"),
                None => t.storage.to_string(),
            };
            writeln!(
                f,
                "{:<40} {:<16} {:>10} {:>10} {:<22} {:>12} {:>12}",
                t.name,
                format!("{:?}", t.shape),
                t.params,
                t.nonzeros,
                storage,
                t.bytes_before,
                t.bytes_after
            )?;
        }
        write!(
            f,
            "total: {} tensors ({} skipped), {} -> {} bytes ({:.2}x)",
            self.tensors.len(),
            self.tensors_skipped,
            self.bytes_before,
            self.bytes_after,
            self.compression_ratio()
        )
    }
}

/// The output of [`Pipeline::run`]: every tensor as stored, and the report.
#[derive(Debug, Clone)]
pub struct PipelineOutput {
    /// Every input tensor by name, processed ones in their chosen layout, skipped ones
    /// [`StoredTensor::Dense`].
    pub tensors: BTreeMap<String, StoredTensor>,
    /// What happened.
    pub report: Report,
}

/// A size prediction from [`Pipeline::estimate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Bytes of all inputs, dense.
    pub bytes_before: usize,
    /// Predicted bytes of all outputs.
    pub bytes_after: usize,
    /// Predicted layout and bytes per tensor, in name order.
    pub tensors: Vec<(String, StorageKind, usize)>,
}

/// An ordered list of [`Stage`]s with [`SkipRules`]. Built with the chaining methods; see
/// the [module docs](self) for an example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    /// The stages, run in order.
    pub stages: Vec<Stage>,
    /// What to leave alone.
    pub skip: SkipRules,
    /// Whether pruned tensors may be stored in a sparse layout when that is smaller
    /// (default true); when false they are stored dense or quantized.
    pub sparse_storage: bool,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

/// A tensor being processed.
struct Work {
    name: String,
    values: Vec<f32>,
    shape: Shape,
    dtype: DType,
    device: Device,
    nm: Option<(usize, usize)>,
    quantize: Option<Scheme>,
    stored: StoredTensor,
}

impl Work {
    /// A tensor about to go through the stages: its values as f32 (refused when
    /// non-finite, the error naming `op`), stored dense until a stage changes it.
    fn new(name: &str, t: Tensor, op: &'static str) -> Result<Self> {
        let d = FloatData::from_tensor_finite(&t, op)?;
        Ok(Work {
            name: name.to_string(),
            values: d.values,
            shape: d.shape,
            dtype: d.dtype,
            device: t.device().clone(),
            nm: None,
            quantize: None,
            stored: StoredTensor::Dense(t),
        })
    }
}

fn nnz(v: &[f32]) -> usize {
    v.iter().filter(|x| **x != 0.0).count()
}

impl Pipeline {
    /// An empty pipeline with the default skip rules (rank < 2 skipped) and sparse storage.
    #[must_use]
    pub fn new() -> Self {
        Self {
            stages: Vec::new(),
            skip: SkipRules::default(),
            sparse_storage: true,
        }
    }

    /// Appends a stage.
    #[must_use]
    pub fn stage(mut self, stage: Stage) -> Self {
        self.stages.push(stage);
        self
    }

    /// Appends [`Stage::PruneMagnitude`].
    #[must_use]
    pub fn prune_magnitude(self, sparsity: f64) -> Self {
        self.stage(Stage::PruneMagnitude { sparsity })
    }

    /// Appends [`Stage::PruneGlobal`].
    #[must_use]
    pub fn prune_global(self, sparsity: f64) -> Self {
        self.stage(Stage::PruneGlobal { sparsity })
    }

    /// Appends [`Stage::PruneNm`].
    #[must_use]
    pub fn prune_nm(self, n: usize, m: usize) -> Self {
        self.stage(Stage::PruneNm { n, m })
    }

    /// Appends [`Stage::Clip`].
    #[must_use]
    pub fn clip_percentile(self, percentile: f64) -> Self {
        self.stage(Stage::Clip { percentile })
    }

    /// Appends [`Stage::Quantize`].
    #[must_use]
    pub fn quantize(self, scheme: Scheme) -> Self {
        self.stage(Stage::Quantize { scheme })
    }

    /// Adds name patterns to skip (e.g. [`TRANSFORMER_SKIPS`](super::TRANSFORMER_SKIPS); the
    /// pattern language is in [`skip`](super::skip)).
    #[must_use]
    pub fn skip_names<S: AsRef<str>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.skip
            .name_patterns
            .extend(patterns.into_iter().map(|p| p.as_ref().to_string()));
        self
    }

    /// Sets the rank below which tensors are skipped (0 processes everything).
    #[must_use]
    pub fn skip_rank_below(mut self, min_rank: usize) -> Self {
        self.skip.min_rank = min_rank;
        self
    }

    /// Allows or forbids sparse layouts.
    #[must_use]
    pub fn sparse_storage(mut self, allowed: bool) -> Self {
        self.sparse_storage = allowed;
        self
    }

    /// Checks every stage's parameters and that `Quantize` comes last, at most once.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the offending stage.
    pub fn validate(&self) -> Result<()> {
        for (i, s) in self.stages.iter().enumerate() {
            match *s {
                Stage::PruneMagnitude { sparsity } | Stage::PruneGlobal { sparsity } => {
                    if !(0.0..=1.0).contains(&sparsity) {
                        return Err(Error::invalid(
                            "sparsity",
                            format!("stage {i} ({s}): must be in [0, 1], found {sparsity}"),
                        ));
                    }
                }
                Stage::PruneNm { n, m } => check_nm(n, m)?,
                Stage::Clip { percentile } => check_percentile(percentile)?,
                Stage::Quantize { scheme } => {
                    crate::quant::check_block("block_size", scheme.block_size())?;
                    if i + 1 != self.stages.len() {
                        return Err(Error::invalid(
                            "stages",
                            format!("stage {i} ({s}): quantize must be the last stage"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn choose(&self, w: &Work, nnz: usize) -> StorageKind {
        if !self.sparse_storage {
            return match w.quantize {
                Some(s) => StorageKind::Quantized(s),
                None => StorageKind::Dense,
            };
        }
        StoredTensor::candidates(&w.shape, w.dtype, nnz, w.quantize, w.nm)[0].0
    }

    /// Runs the pipeline over `tensors`.
    ///
    /// # Errors
    /// [`Pipeline::validate`] errors; [`Error::NonFinite`] naming the tensor's first bad
    /// element (the message names the operation; the tensor is logged); quantizer errors.
    pub fn run(&self, tensors: &HashMap<String, Tensor>) -> Result<PipelineOutput> {
        self.validate()?;
        self.run_with_cuts(tensors, None)
    }

    /// [`Pipeline::run`] where each [`Stage::PruneGlobal`] at index `i` uses `cuts[i]`
    /// (computed over all tensors of a streaming run, its tie count decremented as ties
    /// are pruned) instead of a cut over `tensors` alone.
    fn run_with_cuts(
        &self,
        tensors: &HashMap<String, Tensor>,
        mut cuts: Option<&mut [GlobalCut]>,
    ) -> Result<PipelineOutput> {
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        let mut out = BTreeMap::new();
        let mut lines = Vec::new();
        let mut work: Vec<Work> = Vec::new();
        let mut bytes_before_total = 0;
        for name in names {
            let t = &tensors[name];
            let dense = StoredTensor::dense_size(t.shape(), t.dtype());
            bytes_before_total += dense;
            if let Some(reason) = self.skip.reason(name, t.rank(), t.dtype()) {
                tracing::debug!(tensor = %name, %reason, "pipeline: skipped");
                lines.push(TensorReport {
                    name: name.clone(),
                    shape: t.dims().to_vec(),
                    dtype: format!("{:?}", t.dtype()),
                    params: t.elem_count(),
                    nonzeros: count_nonzeros(t)?,
                    storage: StorageKind::Dense,
                    bytes_before: dense,
                    bytes_after: dense,
                    skipped: Some(reason),
                });
                out.insert(name.clone(), StoredTensor::Dense(t.clone()));
                continue;
            }
            let w = Work::new(name, t.clone(), "Pipeline::run").inspect_err(|e| {
                tracing::warn!(tensor = %name, error = %e, "pipeline: refused input");
            })?;
            work.push(w);
        }
        let skipped_by_rules = lines.len();

        let mut stages = Vec::with_capacity(self.stages.len());
        for (si, stage) in self.stages.iter().enumerate() {
            tracing::info!(stage = %stage, index = si, tensors = work.len(), "pipeline: stage");
            let applies = stage_applies(stage, &work);
            let mut st = StageStats {
                tensors_skipped: skipped_by_rules + applies.iter().filter(|a| !**a).count(),
                ..StageStats::zero(stage)
            };
            for (w, &a) in work.iter().zip(&applies) {
                if a {
                    st.tensors_processed += 1;
                    st.params += w.values.len();
                    st.nonzeros_before += nnz(&w.values);
                    st.bytes_before += w.stored.size_bytes();
                }
            }
            let cut = cuts.as_deref_mut().map(|c| &mut c[si]);
            st.changed += apply_stage(stage, &mut work, &applies, cut);
            // Store every processed tensor in its smallest layout and count what was built.
            for (w, _) in work.iter_mut().zip(&applies).filter(|(_, a)| **a) {
                let nz = nnz(&w.values);
                // An N:M layout is only valid while the pattern still holds (later global
                // pruning only removes more values, so it does).
                let kind = self.choose(w, nz);
                w.stored =
                    StoredTensor::build(kind, w.values.clone(), &w.shape, w.dtype, &w.device)?;
                tracing::debug!(tensor = %w.name, storage = %kind, bytes = w.stored.size_bytes(), "pipeline: stored");
                st.nonzeros += nz;
                st.bytes_after += w.stored.size_bytes();
            }
            st.sparsity = if st.params == 0 {
                0.0
            } else {
                1.0 - st.nonzeros as f64 / st.params as f64
            };
            stages.push(st);
        }

        for w in work {
            let stored = w.stored;
            lines.push(TensorReport {
                name: w.name.clone(),
                shape: w.shape.dims().to_vec(),
                dtype: format!("{:?}", w.dtype),
                params: w.values.len(),
                nonzeros: nnz(&w.values),
                storage: stored.kind(),
                bytes_before: StoredTensor::dense_size(&w.shape, w.dtype),
                bytes_after: stored.size_bytes(),
                skipped: None,
            });
            out.insert(w.name, stored);
        }
        lines.sort_by(|a, b| a.name.cmp(&b.name));
        let bytes_after = out.values().map(StoredTensor::size_bytes).sum();
        let report = Report {
            stages,
            tensors_processed: lines.len() - skipped_by_rules,
            tensors_skipped: skipped_by_rules,
            tensors: lines,
            bytes_before: bytes_before_total,
            bytes_after,
        };
        tracing::info!(
            bytes_before = report.bytes_before,
            bytes_after = report.bytes_after,
            "pipeline: done"
        );
        Ok(PipelineOutput {
            tensors: out,
            report,
        })
    }

    /// How many times [`Pipeline::run_streaming`] loads each tensor: once, plus twice for
    /// every [`Stage::PruneGlobal`] (the two passes that find its threshold). For
    /// progress bars.
    #[must_use]
    pub fn streaming_passes(&self) -> usize {
        1 + 2 * self
            .stages
            .iter()
            .filter(|s| matches!(s, Stage::PruneGlobal { .. }))
            .count()
    }

    /// Runs the pipeline holding one tensor at a time: `load(name)` gives a tensor,
    /// `emit(name, stored)` takes its result, in name order, and the tensor is dropped
    /// before the next is loaded, so peak memory is about one tensor whatever the model's
    /// size. Outputs and the report are exactly those of [`Pipeline::run`] over the same
    /// tensors.
    ///
    /// A [`Stage::PruneGlobal`] needs a threshold over all tensors: it is found by two
    /// extra passes over the inputs (each tensor loaded again and the earlier stages
    /// rerun), so `load` is called [`Pipeline::streaming_passes`] times per name.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use candle_compress::prune::{Pipeline, StoredTensor};
    /// use candle_core::{Device, Tensor};
    ///
    /// let dev = Device::Cpu;
    /// let tensors: HashMap<String, Tensor> = (0..3)
    ///     .map(|i| Ok((format!("l{i}.weight"), Tensor::randn(0f32, 1.0, (16, 32), &dev)?)))
    ///     .collect::<candle_core::Result<_>>()?;
    /// let pipeline = Pipeline::new().prune_global(0.5);
    /// let mut names: Vec<String> = tensors.keys().cloned().collect();
    /// let mut stored: Vec<(String, StoredTensor)> = Vec::new();
    /// let report = pipeline.run_streaming(
    ///     &names,
    ///     |name| Ok(tensors[name].clone()),
    ///     |name, value| { stored.push((name.to_string(), value)); Ok(()) },
    /// )?;
    /// let whole = pipeline.run(&tensors)?;
    /// assert_eq!(report, whole.report);
    /// assert_eq!(stored.len(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Those of [`Pipeline::run`], and any error of `load` or `emit`. A `load` that gives
    /// different values on different passes yields a threshold of no particular meaning
    /// (never a panic).
    pub fn run_streaming(
        &self,
        names: &[String],
        mut load: impl FnMut(&str) -> Result<Tensor>,
        mut emit: impl FnMut(&str, StoredTensor) -> Result<()>,
    ) -> Result<Report> {
        self.validate()?;
        let mut names = names.to_vec();
        names.sort();
        names.dedup();
        let mut cuts = self.streaming_cuts(&names, &mut load)?;
        let mut merged: Option<Report> = None;
        for name in &names {
            let tensors = HashMap::from([(name.clone(), load(name)?)]);
            let out = self.run_with_cuts(&tensors, Some(&mut cuts))?;
            merged = Some(match merged {
                None => out.report,
                Some(r) => r.merge(out.report),
            });
            for (n, stored) in out.tensors {
                emit(&n, stored)?;
            }
        }
        Ok(merged.unwrap_or_else(|| Report::empty(self)))
    }

    /// The cut of every global stage over all `names` (a cut that prunes nothing for the
    /// other stages), found stage by stage with two passes each.
    fn streaming_cuts(
        &self,
        names: &[String],
        load: &mut impl FnMut(&str) -> Result<Tensor>,
    ) -> Result<Vec<GlobalCut>> {
        let none = GlobalCut {
            threshold: 0.0,
            at_threshold: 0,
        };
        let mut cuts = vec![none; self.stages.len()];
        for (g, stage) in self.stages.iter().enumerate() {
            let Stage::PruneGlobal { sparsity } = *stage else {
                continue;
            };
            let before = Pipeline {
                stages: self.stages[..g].to_vec(),
                skip: self.skip.clone(),
                sparse_storage: false,
            };
            let mut select = GlobalSelect::new();
            // Each pass replays the earlier global cuts from their start (their tie counts
            // are consumed in name order).
            let mut pass_cuts = cuts[..g].to_vec();
            for name in names {
                before.visit_values(name, load(name)?, &mut pass_cuts, |v| select.count_high(v))?;
            }
            let k = target_zeros(sparsity, select.total());
            if k == 0 {
                // Nothing to prune; skip the second pass (its loads are not made).
                continue;
            }
            select.finish_high(k);
            let mut pass_cuts = cuts[..g].to_vec();
            for name in names {
                before.visit_values(name, load(name)?, &mut pass_cuts, |v| select.count_low(v))?;
            }
            cuts[g] = select.cut(k);
            tracing::debug!(
                stage = g,
                threshold = cuts[g].threshold,
                "pipeline: global threshold"
            );
        }
        Ok(cuts)
    }

    /// Runs this (prefix) pipeline on one tensor and shows `f` its values, unless the skip
    /// rules leave it alone. `cuts` are the earlier global stages' cuts, consumed in order.
    fn visit_values(
        &self,
        name: &str,
        t: Tensor,
        cuts: &mut [GlobalCut],
        f: impl FnOnce(&[f32]),
    ) -> Result<()> {
        if self.skip.reason(name, t.rank(), t.dtype()).is_some() {
            return Ok(());
        }
        let mut work = vec![Work::new(name, t, "Pipeline::run_streaming")?];
        for (si, stage) in self.stages.iter().enumerate() {
            let applies = stage_applies(stage, &work);
            let cut = matches!(stage, Stage::PruneGlobal { .. }).then(|| &mut cuts[si]);
            apply_stage(stage, &mut work, &applies, cut);
        }
        f(&work[0].values);
        Ok(())
    }

    /// Loads a safetensors file through the crate's validating reader
    /// ([`SafetensorsReader`]: header checked once, then one tensor's bytes at a time,
    /// each converted by candle's own safetensors conversion) and runs the pipeline on it.
    ///
    /// # Errors
    /// The reader's errors ([`SafetensorsReader::open`], [`SafetensorsReader::read`]);
    /// candle's for a dtype it cannot hold; those of [`Pipeline::run`].
    pub fn run_safetensors(
        &self,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<PipelineOutput> {
        use candle_core::safetensors::Load;
        let reader = SafetensorsReader::open(path)?;
        let mut tensors = HashMap::new();
        for name in reader.names() {
            let raw = reader.read(&name)?;
            let view = safetensors::tensor::TensorView::new(raw.dtype, raw.shape, &raw.data)?;
            tensors.insert(name, view.load(device)?);
        }
        self.run(&tensors)
    }

    /// Predicts the output size from names, shapes and dtypes only, without reading or
    /// compressing any value: each prune stage is assumed to reach its sparsity in every
    /// tensor (inputs assumed free of zeros), N:M to leave `n/m`, and the layout is chosen
    /// as in [`Pipeline::run`]. Exact for per-tensor and N:M pruning of inputs without
    /// zeros. For global pruning the per-tensor split depends on the values, so it is
    /// assumed uniform here; [`Pipeline::estimate_tensors`] measures it instead.
    ///
    /// # Errors
    /// [`Pipeline::validate`] errors.
    pub fn estimate<S: AsRef<str>>(
        &self,
        tensors: impl IntoIterator<Item = (S, Shape, DType)>,
    ) -> Result<Estimate> {
        self.validate()?;
        let items: Vec<(String, Shape, DType)> = tensors
            .into_iter()
            .map(|(n, s, d)| (n.as_ref().to_string(), s, d))
            .collect();
        self.predict(items, None)
    }

    /// Predicts layouts and sizes; `counts` gives, per tensor name, the non-zeros after
    /// each stage (`None` where the stage did not apply), else they are assumed from the
    /// stage parameters.
    fn predict(
        &self,
        mut items: Vec<(String, Shape, DType)>,
        counts: Option<&HashMap<String, Vec<Option<usize>>>>,
    ) -> Result<Estimate> {
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let mut est = Estimate {
            bytes_before: 0,
            bytes_after: 0,
            tensors: Vec::with_capacity(items.len()),
        };
        for (name, shape, dtype) in items {
            let dense = StoredTensor::dense_size(&shape, dtype);
            est.bytes_before += dense;
            if self.skip.reason(&name, shape.rank(), dtype).is_some() {
                est.bytes_after += dense;
                est.tensors.push((name, StorageKind::Dense, dense));
                continue;
            }
            let n = shape.elem_count();
            let mut nz = n;
            let mut nm = None;
            let mut quantize = None;
            let mut kind = StorageKind::Dense;
            let mut size = dense;
            let measured = counts.and_then(|c| c.get(&name));
            for (si, stage) in self.stages.iter().enumerate() {
                match *stage {
                    Stage::PruneMagnitude { sparsity } | Stage::PruneGlobal { sparsity } => {
                        nz = nz.min(n - target_zeros(sparsity, n));
                    }
                    Stage::PruneNm { n: keep, m } => {
                        if shape.dims().last().is_some_and(|c| c.is_multiple_of(m)) {
                            nz = nz.min(n / m * keep);
                            nm = Some((keep, m));
                        } else {
                            continue;
                        }
                    }
                    Stage::Clip { .. } => {}
                    Stage::Quantize { scheme } => quantize = Some(scheme),
                }
                if let Some(Some(c)) = measured.and_then(|m| m.get(si)) {
                    nz = *c;
                }
                let w_kind = if self.sparse_storage {
                    StoredTensor::candidates(&shape, dtype, nz, quantize, nm)[0]
                } else {
                    let c = StoredTensor::candidates(&shape, dtype, nz, quantize, None);
                    *c.iter()
                        .find(|(k, _)| matches!(k, StorageKind::Dense | StorageKind::Quantized(_)))
                        .unwrap_or(&c[0])
                };
                kind = w_kind.0;
                size = w_kind.1;
            }
            est.bytes_after += size;
            est.tensors.push((name, kind, size));
        }
        Ok(est)
    }

    /// [`Pipeline::estimate`] for in-memory tensors, with the non-zero counts measured:
    /// the prune and clip stages run on copies of the values (selection only), so the
    /// prediction also holds for global pruning and inputs that already have zeros;
    /// nothing is quantized or encoded.
    ///
    /// # Errors
    /// As [`Pipeline::estimate`]; [`Error::NonFinite`] as in [`Pipeline::run`].
    pub fn estimate_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<Estimate> {
        self.validate()?;
        let items: Vec<(String, Shape, DType)> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shape().clone(), t.dtype()))
            .collect();
        let mut work = Vec::new();
        for (name, t) in tensors {
            if self.skip.reason(name, t.rank(), t.dtype()).is_some() {
                continue;
            }
            work.push(Work::new(name, t.clone(), "Pipeline::estimate_tensors")?);
        }
        // Same order as `run`, so global ties resolve identically.
        work.sort_by(|a, b| a.name.cmp(&b.name));
        let mut counts: HashMap<String, Vec<Option<usize>>> = HashMap::new();
        for stage in &self.stages {
            let applies = stage_applies(stage, &work);
            apply_stage(stage, &mut work, &applies, None);
            for (w, a) in work.iter().zip(&applies) {
                counts
                    .entry(w.name.clone())
                    .or_default()
                    .push(a.then(|| nnz(&w.values)));
            }
        }
        self.predict(items, Some(&counts))
    }

    /// [`Pipeline::estimate`] for a safetensors file, reading only its header (through
    /// the crate's validating [`SafetensorsReader`]).
    ///
    /// # Errors
    /// The reader's errors ([`SafetensorsReader::open`]: I/O, a truncated or corrupt
    /// header); [`Error::Unsupported`] for a dtype other than U8, U32, I64, F16, BF16, F32
    /// and F64.
    pub fn estimate_safetensors(&self, path: impl AsRef<Path>) -> Result<Estimate> {
        let reader = SafetensorsReader::open(path)?;
        let mut names = reader.names();
        names.sort();
        let mut items = Vec::with_capacity(names.len());
        for name in names {
            let Some(info) = reader.info(&name) else {
                continue;
            };
            let dtype = plain_candle_dtype(info.dtype, &name)?;
            let shape = Shape::from(info.shape.clone());
            items.push((name, shape, dtype));
        }
        self.estimate(items)
    }
}

/// Which tensors a stage applies to (N:M needs a last dimension that is a multiple of m).
fn stage_applies(stage: &Stage, work: &[Work]) -> Vec<bool> {
    work.iter()
        .map(|w| match stage {
            Stage::PruneNm { m, .. } => w.shape.dims().last().is_some_and(|c| c.is_multiple_of(*m)),
            _ => true,
        })
        .collect()
}

/// Applies one stage to the values of the tensors it applies to; returns the elements
/// changed (zeroed or clipped). A global stage given a `cut` applies it (and counts the
/// ties it used) instead of computing one over `work`.
fn apply_stage(
    stage: &Stage,
    work: &mut [Work],
    applies: &[bool],
    cut: Option<&mut GlobalCut>,
) -> usize {
    let mut changed = 0;
    let params: usize = work
        .iter()
        .zip(applies)
        .filter(|(_, a)| **a)
        .map(|(w, _)| w.values.len())
        .sum();
    match *stage {
        Stage::PruneMagnitude { sparsity } => {
            for (w, _) in work.iter_mut().zip(applies).filter(|(_, a)| **a) {
                let k = target_zeros(sparsity, w.values.len());
                changed += prune_smallest(&mut w.values, k).0;
            }
        }
        Stage::PruneGlobal { .. } if cut.is_some() => {
            let Some(cut) = cut else { return 0 };
            let t = cut.threshold.to_bits() & 0x7fff_ffff;
            let mut slices: Vec<&mut [f32]> = work
                .iter_mut()
                .zip(applies)
                .filter(|(_, a)| **a)
                .map(|(w, _)| w.values.as_mut_slice())
                .collect();
            let ties: usize = slices
                .iter()
                .map(|s| s.iter().filter(|v| v.to_bits() & 0x7fff_ffff == t).count())
                .sum();
            changed += apply_global_cut(&mut slices, *cut).iter().sum::<usize>();
            cut.at_threshold -= ties.min(cut.at_threshold);
        }
        Stage::PruneGlobal { sparsity } => {
            let k = target_zeros(sparsity, params);
            if k > 0 {
                let slices: Vec<&[f32]> = work
                    .iter()
                    .zip(applies)
                    .filter(|(_, a)| **a)
                    .map(|(w, _)| w.values.as_slice())
                    .collect();
                let cut = global_cut(&slices, k);
                let mut slices: Vec<&mut [f32]> = work
                    .iter_mut()
                    .zip(applies)
                    .filter(|(_, a)| **a)
                    .map(|(w, _)| w.values.as_mut_slice())
                    .collect();
                changed += apply_global_cut(&mut slices, cut).iter().sum::<usize>();
                tracing::debug!(threshold = cut.threshold, "pipeline: global threshold");
            }
        }
        Stage::PruneNm { n, m } => {
            for (w, _) in work.iter_mut().zip(applies).filter(|(_, a)| **a) {
                changed += prune_nm_slice(&mut w.values, n, m).0;
                w.nm = Some((n, m));
            }
        }
        Stage::Clip { percentile } => {
            for (w, _) in work.iter_mut().zip(applies).filter(|(_, a)| **a) {
                changed += clip_slice(&mut w.values, percentile).0;
            }
        }
        Stage::Quantize { scheme } => {
            for w in work.iter_mut() {
                w.quantize = Some(scheme);
            }
        }
    }
    changed
}

fn count_nonzeros(t: &Tensor) -> Result<usize> {
    if t.elem_count() == 0 {
        return Ok(0);
    }
    let ne = t.ne(&t.zeros_like()?)?;
    Ok(ne.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize)
}
