//! Loading one layer of a [`CtCheckpoint`] as a [`QuantLinear`]: choosing the config
//! group its stored tensors match, reading `int-quantized` or `pack-quantized` weights,
//! and reporting what the caller should know ([`CtLayerReport`]).

use safetensors::tensor::Dtype;

use super::checkpoint::CtCheckpoint;
use super::config::{ActArgs, GroupArgs};
use super::format::unpack_row_int32;
use crate::error::{Error, Result};
use crate::io::bytes_to_i8;
use crate::nn::{ActivationQuant, QuantConfig, QuantLinear, QuantLinearParts, WeightQuant};

/// What loading one layer found that the caller should know about
/// ([`CtCheckpoint::load_quant_linear_with_report`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct CtLayerReport {
    /// Int8 codes stored as `-128` (inside compressed-tensors' range `[-128, 127]`)
    /// that were loaded as `-127` ([`QuantLinear`]'s symmetric range): each is one
    /// quantization step off on that weight.
    pub clamped_codes: usize,
    /// The activation mode the layer runs with, from the config group's
    /// `input_activations` ([`ActivationQuant::Float`] for weight-only checkpoints).
    pub activations: ActivationQuant,
}

impl CtCheckpoint {
    /// A one-line description of the tensors stored for layer `prefix`, for errors.
    fn layout_of(&self, prefix: &str) -> String {
        let parts: Vec<String> = ["weight", "weight_packed", "weight_scale", "weight_shape"]
            .iter()
            .filter_map(|s| {
                let name = format!("{prefix}.{s}");
                self.shards
                    .info(&name)
                    .map(|i| format!("{s} {:?} {:?}", i.dtype, i.shape))
            })
            .collect();
        if parts.is_empty() {
            format!("{prefix}: no weight tensors")
        } else {
            format!("{prefix}: {}", parts.join(", "))
        }
    }

    /// The config group describing layer `prefix`, chosen by what is stored: the groups
    /// whose format, bit width, strategy and group size agree with the layer's tensors.
    fn group_for(&self, prefix: &str, packed: bool, inp: usize) -> Result<&GroupArgs> {
        let scale_cols = self
            .shards
            .info(&format!("{prefix}.weight_scale"))
            .and_then(|i| match i.shape[..] {
                [_, c] => Some(c),
                _ => None,
            });
        let fits = |g: &&GroupArgs| {
            let format_ok = if packed {
                g.format == "pack-quantized" && g.num_bits == 4
            } else {
                g.format == "int-quantized"
            };
            let cols_ok = match (g.strategy.as_str(), g.group_size, scale_cols) {
                ("channel", _, Some(c)) => c == 1,
                ("group", Some(gs), Some(c)) => inp.is_multiple_of(gs) && c == inp / gs,
                _ => false,
            };
            format_ok && cols_ok
        };
        let found: Vec<&GroupArgs> = self.groups.iter().filter(fits).collect();
        match found[..] {
            [g] => Ok(g),
            [g, ..]
                if found.iter().all(|h| {
                    (h.num_bits, &h.strategy, h.group_size, &h.acts)
                        == (g.num_bits, &g.strategy, g.group_size, &g.acts)
                }) =>
            {
                Ok(g)
            }
            [] => {
                let groups: Vec<String> = self.groups.iter().map(GroupArgs::describe).collect();
                Err(Error::Unsupported {
                    what: "compressed-tensors layer layout",
                    found: format!(
                        "{} matches no config group ({})",
                        self.layout_of(prefix),
                        if groups.is_empty() {
                            "none".into()
                        } else {
                            groups.join("; ")
                        }
                    ),
                    supported: "int-quantized: I8 weight [out, in] with weight_scale \
                                [out, 1] (8-bit channel) or [out, in/group] (4-bit group); \
                                pack-quantized: I32 weight_packed [out, ceil(in/8)] with \
                                weight_scale [out, in/group] and weight_shape"
                        .into(),
                })
            }
            _ => Err(Error::Unsupported {
                what: "compressed-tensors config groups",
                found: format!(
                    "{} matches several groups with different arguments ({})",
                    self.layout_of(prefix),
                    found
                        .iter()
                        .map(|g| g.describe())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                supported: "one matching group per layer".into(),
            }),
        }
    }

    /// Reads `p.weight_shape` (I32 or I64 `[2]`) as `(out, in)`, both non-zero.
    fn weight_shape(&self, prefix: &str) -> Result<(usize, usize)> {
        let shape_name = format!("{prefix}.weight_shape");
        let shape_raw = self.shards.read(&shape_name)?;
        let dims: Vec<i64> = match shape_raw.dtype {
            Dtype::I32 => shape_raw
                .data
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            Dtype::I64 => shape_raw
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            other => {
                return Err(Error::metadata(
                    format!("{shape_name} dtype"),
                    "I32 (or I64)",
                    format!("{other:?}"),
                ))
            }
        };
        let [out, inp] = dims[..] else {
            return Err(Error::shape(shape_name, [2usize], dims.len()));
        };
        let (Ok(o), Ok(i)) = (usize::try_from(out), usize::try_from(inp)) else {
            return Err(Error::Corrupt {
                what: shape_name,
                reason: format!("negative dims [{out}, {inp}]"),
            });
        };
        if o == 0 || i == 0 {
            return Err(Error::Corrupt {
                what: shape_name,
                reason: format!("zero dims [{o}, {i}]"),
            });
        }
        Ok((o, i))
    }

    /// Loads the linear layer at `prefix` as a [`QuantLinear`], reading only its tensors.
    /// Equivalent to [`CtCheckpoint::load_quant_linear_with_report`] without the report
    /// (the clamped-code count still adds to [`CtCheckpoint::clamped_codes`]).
    ///
    /// # Errors
    /// As [`CtCheckpoint::load_quant_linear_with_report`].
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert!(ckpt.load_quant_linear("fc").is_err()); // no such layer
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_quant_linear(&self, prefix: &str) -> Result<QuantLinear> {
        Ok(self.load_quant_linear_with_report(prefix)?.0)
    }

    /// Loads the linear layer at `prefix` as a [`QuantLinear`] and reports what the
    /// caller should know ([`CtLayerReport`]: `-128` codes clamped, the activation mode).
    ///
    /// The layer's config group is the one whose format, bit width, strategy and group
    /// size agree with its stored tensors. Layouts read: `int-quantized` I8 `weight`
    /// `[out, in]` with `weight_scale` `[out, 1]` (8-bit per channel) or `[out, in/g]`
    /// (4-bit codes in I8, groups of `g`: llm-compressor's W4A8 preset); `pack-quantized`
    /// I32 `weight_packed` with `weight_scale` `[out, in/g]` and `weight_shape`.
    /// Activations follow the group's `input_activations`: `null` runs weight-only
    /// ([`ActivationQuant::Float`]), dynamic int8 per token / per tensor, static int8 per
    /// tensor with `p.input_scale`.
    ///
    /// # Errors
    /// [`Error::Missing`] for a missing tensor (e.g. `weight_scale`);
    /// [`Error::Unsupported`] naming the layout found when no config group matches the
    /// stored tensors, for a zero point or `g_idx`, a group size [`QuantLinear`] lacks
    /// (32, 64, 128), or activation arguments it cannot run;
    /// [`Error::MetadataMismatch`] / [`Error::ShapeMismatch`] for tensors whose dtype or
    /// shape disagrees with the spec; [`Error::Corrupt`] for 4-bit codes outside
    /// `[-8, 7]`, or a `weight_shape` smaller than the packed codes whose padding is not
    /// zero; [`QuantLinear::from_parts`] errors.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert!(ckpt.load_quant_linear_with_report("fc").is_err()); // no such layer
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_quant_linear_with_report(
        &self,
        prefix: &str,
    ) -> Result<(QuantLinear, CtLayerReport)> {
        for extra in ["weight_zero_point", "weight_g_idx"] {
            if self.shards.info(&format!("{prefix}.{extra}")).is_some() {
                return Err(Error::Unsupported {
                    what: "compressed-tensors tensor",
                    found: format!("{prefix}.{extra} ({})", self.layout_of(prefix)),
                    supported: "symmetric weights without activation order".into(),
                });
            }
        }
        let packed_name = format!("{prefix}.weight_packed");
        let weight_name = format!("{prefix}.weight");
        let scale_name = format!("{prefix}.weight_scale");
        if self.shards.info(&scale_name).is_none() {
            return Err(Error::Missing {
                what: "tensor",
                name: format!("{scale_name} ({})", self.layout_of(prefix)),
            });
        }
        let mut clamped = 0usize;
        let (out, inp, weights, group) = if self.shards.info(&packed_name).is_some() {
            let (out, inp) = self.weight_shape(prefix)?;
            let words = inp.div_ceil(8);
            let packed_info = self.shards.info(&packed_name).map(|i| i.shape.clone());
            if let Some([_, stored_words]) = packed_info.as_deref() {
                if *stored_words != words {
                    return Err(Error::Corrupt {
                        what: packed_name,
                        reason: format!(
                            "weight_shape [{out}, {inp}] needs {words} int32 words per row, \
                             {stored_words} are stored ({})",
                            self.layout_of(prefix)
                        ),
                    });
                }
            }
            self.expect_shape(&packed_name, Some(Dtype::I32), &[out, words])?;
            let raw = self.shards.read(&packed_name)?;
            let all: Vec<i32> = raw
                .data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let pad_bits = 4 * (words * 8 - inp);
            let mut w = Vec::with_capacity(out * inp);
            for (r, row) in all.chunks(words).enumerate() {
                if pad_bits > 0 {
                    let last = row.last().copied().unwrap_or(0) as u32;
                    let padding = last >> (32 - pad_bits);
                    if padding != 0 {
                        return Err(Error::Corrupt {
                            what: packed_name,
                            reason: format!(
                                "row {r} holds non-zero codes past weight_shape's {inp} \
                                 columns (weight_shape smaller than the stored codes)"
                            ),
                        });
                    }
                }
                w.extend(unpack_row_int32(row, inp));
            }
            let g = self.group_for(prefix, true, inp)?;
            (out, inp, w, g)
        } else {
            let info = self
                .shards
                .info(&weight_name)
                .ok_or_else(|| Error::Missing {
                    what: "tensor",
                    name: format!("{weight_name} (or {packed_name})"),
                })?;
            let (out, inp) = match info.shape[..] {
                [o, i] if o > 0 && i > 0 => (o, i),
                _ => return Err(Error::shape(weight_name, "[out > 0, in > 0]", &info.shape)),
            };
            self.expect_shape(&weight_name, Some(Dtype::I8), &[out, inp])?;
            let g = self.group_for(prefix, false, inp)?;
            let mut w = bytes_to_i8(&self.shards.read(&weight_name)?.data);
            if g.num_bits == 4 {
                let bad = w.iter().filter(|q| !(-8..=7).contains(*q)).count();
                if bad > 0 {
                    return Err(Error::Corrupt {
                        what: weight_name,
                        reason: format!(
                            "{bad} codes outside [-8, 7] under the 4-bit config group {}",
                            g.describe()
                        ),
                    });
                }
            } else {
                clamped = w.iter().filter(|&&q| q == -128).count();
                if clamped > 0 {
                    tracing::warn!(
                        "{weight_name}: {clamped} codes of -128 loaded as -127 (QuantLinear range)"
                    );
                    w.iter_mut().filter(|q| **q == -128).for_each(|q| *q = -127);
                }
            }
            (out, inp, w, g)
        };
        let weights_mode = match (group.num_bits, group.strategy.as_str(), group.group_size) {
            (8, "channel", _) => WeightQuant::Int8PerChannel,
            (4, "group", Some(gs)) if crate::nn::quant_linear::INT4_GROUPS.contains(&gs) => {
                WeightQuant::Int4Grouped { group: gs }
            }
            _ => {
                return Err(Error::Unsupported {
                    what: "compressed-tensors weights for QuantLinear",
                    found: format!("{} under {}", self.layout_of(prefix), group.describe()),
                    supported: "8-bit per channel, or 4-bit groups of 32, 64 or 128".into(),
                })
            }
        };
        let acts = match &group.acts {
            ActArgs::None => ActivationQuant::Float,
            ActArgs::DynamicToken => ActivationQuant::PerToken,
            ActArgs::DynamicTensor => ActivationQuant::PerTensor,
            ActArgs::StaticTensor => {
                let name = format!("{prefix}.input_scale");
                let s = self.read_float(&name)?;
                let [scale] = s[..] else {
                    return Err(Error::shape(name, [1usize], s.len()));
                };
                ActivationQuant::Static { scale }
            }
            ActArgs::Other(desc) => {
                return Err(Error::Unsupported {
                    what: "compressed-tensors input activations",
                    found: format!("{prefix} (group {}): {desc}", group.name),
                    supported: "null (weight-only), 8-bit int symmetric: dynamic per token, \
                                dynamic per tensor, static per tensor"
                        .into(),
                })
            }
        };
        if !matches!(group.acts, ActArgs::StaticTensor)
            && self.shards.info(&format!("{prefix}.input_scale")).is_some()
        {
            return Err(Error::Unsupported {
                what: "compressed-tensors tensor",
                found: format!(
                    "{prefix}.input_scale under group {} whose activations are not static",
                    group.name
                ),
                supported: "input_scale only with static per-tensor activations".into(),
            });
        }
        let scale_cols = match weights_mode {
            WeightQuant::Int4Grouped { group } => inp / group,
            _ => 1,
        };
        self.expect_shape(&scale_name, None, &[out, scale_cols])?;
        let config = QuantConfig::w8a8();
        let config = match weights_mode {
            WeightQuant::Int4Grouped { group } => QuantConfig::w4a8(group)?,
            _ => config,
        }
        .with_activations(acts)?;
        let scales = self.read_float(&scale_name)?;
        let bias_name = format!("{prefix}.bias");
        let bias = if self.shards.info(&bias_name).is_some() {
            self.expect_shape(&bias_name, None, &[out])?;
            Some(self.read_float(&bias_name)?)
        } else {
            None
        };
        let layer = QuantLinear::from_parts(QuantLinearParts {
            out_features: out,
            in_features: inp,
            weights,
            scales,
            offsets: None,
            bias,
            smooth: None,
            config,
        })?;
        self.clamped
            .fetch_add(clamped, std::sync::atomic::Ordering::Relaxed);
        Ok((
            layer,
            CtLayerReport {
                clamped_codes: clamped,
                activations: acts,
            },
        ))
    }
}
