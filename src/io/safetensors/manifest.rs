//! The JSON manifest in a file's `__metadata__`: serde structs of its exact form
//! ([`TensorRepr`], [`LayerRepr`], and [`QuantConfigRepr`], which is also
//! [`QuantConfig`]'s one serialised form), turned into validated entries through
//! `TryFrom`, and [`Manifest`], both maps with the metadata they are read from and
//! written to.
//!
//! Written entries go through `serde_json::Value`, whose objects keep their keys sorted:
//! that is the byte layout every file so far has, whatever the field order here.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::format::{
    dtype_from_name, dtype_name, LayerEntry, TensorEntry, FORMAT_NAME, FORMAT_VERSION, KEY_FORMAT,
    KEY_LAYERS, KEY_TENSORS, KEY_VERSION, RESERVED_KEYS,
};
use crate::error::{Error, Result};
use crate::nn::{ActivationQuant, QuantConfig, WeightQuant};
use crate::scheme::Scheme;

/// A compressed-tensor entry as stored: `{"dtype", "scheme", "shape"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TensorRepr {
    dtype: String,
    scheme: String,
    shape: Vec<usize>,
}

impl TryFrom<&TensorEntry> for TensorRepr {
    type Error = Error;

    fn try_from(e: &TensorEntry) -> Result<Self> {
        Ok(Self {
            dtype: dtype_name(e.dtype)?.to_string(),
            scheme: e.scheme.to_string(),
            shape: e.shape.clone(),
        })
    }
}

/// Validates the entry of compressed tensor `name`: a known scheme with a non-zero size,
/// a float original dtype.
impl TryFrom<(&str, TensorRepr)> for TensorEntry {
    type Error = Error;

    fn try_from((name, r): (&str, TensorRepr)) -> Result<Self> {
        let scheme: Scheme = r.scheme.parse().map_err(|e| match e {
            Error::Unsupported { supported, .. } => Error::Unsupported {
                what: "compression scheme",
                found: format!("{:?} (tensor {name})", r.scheme),
                supported,
            },
            other => Error::Corrupt {
                what: format!("manifest entry {name}"),
                reason: other.to_string(),
            },
        })?;
        Ok(Self {
            scheme,
            shape: r.shape,
            dtype: dtype_from_name(&r.dtype, name)?,
        })
    }
}

/// [`QuantConfig`] as stored: `weights` (`"int8-per-channel"`, `"int4-grouped"`,
/// `"int4-grouped-asym"`) with `group` for int4, `activations` (`"per-token"`,
/// `"per-tensor"`, `"static"`, `"none"`) with `activation_scale` for static. The only
/// serialised form of a `QuantConfig`: its `serde` impls go through this struct.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct QuantConfigRepr {
    weights: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<usize>,
    activations: String,
    /// `f64`: the f32 scale widened, as every file so far holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    activation_scale: Option<f64>,
}

impl From<QuantConfig> for QuantConfigRepr {
    fn from(c: QuantConfig) -> Self {
        let (weights, group) = match c.weights() {
            WeightQuant::Int8PerChannel => ("int8-per-channel", None),
            WeightQuant::Int4Grouped { group } => ("int4-grouped", Some(group)),
            WeightQuant::Int4GroupedAsym { group } => ("int4-grouped-asym", Some(group)),
        };
        let (activations, activation_scale) = match c.activations() {
            ActivationQuant::PerToken => ("per-token", None),
            ActivationQuant::PerTensor => ("per-tensor", None),
            ActivationQuant::Static { scale } => ("static", Some(f64::from(scale))),
            ActivationQuant::Float => ("none", None),
        };
        Self {
            weights: weights.into(),
            group,
            activations: activations.into(),
            activation_scale,
        }
    }
}

/// The config a stored form names. Checks its form only (known modes, `group` and
/// `activation_scale` present where needed), not the values: as for any deserialized
/// config, call [`QuantConfig::validate`].
///
/// # Errors
/// [`Error::Unsupported`] for an unknown weight or activation mode; [`Error::Corrupt`]
/// for a missing `group` or `activation_scale`.
impl TryFrom<QuantConfigRepr> for QuantConfig {
    type Error = Error;

    fn try_from(r: QuantConfigRepr) -> Result<Self> {
        let missing = |field: &str| Error::Corrupt {
            what: "quantization config".into(),
            reason: format!("missing field {field:?}"),
        };
        let group = || r.group.ok_or_else(|| missing("group"));
        let weights = match r.weights.as_str() {
            "int8-per-channel" => WeightQuant::Int8PerChannel,
            "int4-grouped" => WeightQuant::Int4Grouped { group: group()? },
            "int4-grouped-asym" => WeightQuant::Int4GroupedAsym { group: group()? },
            other => {
                return Err(Error::Unsupported {
                    what: "quantized layer weight mode",
                    found: format!("{other:?}"),
                    supported: "int8-per-channel, int4-grouped, int4-grouped-asym".into(),
                })
            }
        };
        let activations = match r.activations.as_str() {
            "per-token" => ActivationQuant::PerToken,
            "per-tensor" => ActivationQuant::PerTensor,
            "none" => ActivationQuant::Float,
            "static" => ActivationQuant::Static {
                scale: r
                    .activation_scale
                    .ok_or_else(|| missing("activation_scale"))? as f32,
            },
            other => {
                return Err(Error::Unsupported {
                    what: "quantized layer activation mode",
                    found: format!("{other:?}"),
                    supported: "per-token, per-tensor, static, none".into(),
                })
            }
        };
        Ok(QuantConfig::from_modes_unchecked(weights, activations))
    }
}

/// A quantized-layer entry as stored: the config's fields next to `in_features`,
/// `out_features`, `bias` and `smooth`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerRepr {
    in_features: usize,
    out_features: usize,
    #[serde(flatten)]
    config: QuantConfigRepr,
    bias: bool,
    smooth: bool,
}

impl From<&LayerEntry> for LayerRepr {
    fn from(l: &LayerEntry) -> Self {
        Self {
            in_features: l.in_features,
            out_features: l.out_features,
            config: l.config.into(),
            bias: l.bias,
            smooth: l.smooth,
        }
    }
}

/// Validates the entry of the layer at `name`: non-zero dims whose product fits, a valid
/// config (errors name the layer).
impl TryFrom<(&str, LayerRepr)> for LayerEntry {
    type Error = Error;

    fn try_from((name, r): (&str, LayerRepr)) -> Result<Self> {
        let (in_features, out_features) = (r.in_features, r.out_features);
        let corrupt = |reason: String| Error::Corrupt {
            what: format!("layer entry {name}"),
            reason,
        };
        if in_features == 0 || out_features == 0 {
            return Err(corrupt(format!(
                "zero dims: in={in_features}, out={out_features}"
            )));
        }
        if in_features.checked_mul(out_features).is_none() {
            return Err(corrupt("in × out overflows".into()));
        }
        let config = QuantConfig::try_from(r.config).map_err(|e| match e {
            Error::Unsupported {
                what,
                found,
                supported,
            } => Error::Unsupported {
                what,
                found: format!("{found} (layer {name})"),
                supported,
            },
            Error::Corrupt { reason, .. } => Error::Corrupt {
                what: format!("manifest entry {name}"),
                reason,
            },
            other => other,
        })?;
        config.validate()?;
        Ok(Self {
            in_features,
            out_features,
            config,
            bias: r.bias,
            smooth: r.smooth,
        })
    }
}

/// The stored JSON of a compressed-tensor entry.
///
/// # Errors
/// [`Error::UnsupportedDType`] for an original dtype the manifest cannot name.
pub(crate) fn tensor_value(e: &TensorEntry) -> Result<Value> {
    Ok(serde_json::to_value(TensorRepr::try_from(e)?)?)
}

/// The stored JSON of a quantized-layer entry.
///
/// # Errors
/// Only JSON serialisation errors.
pub(crate) fn layer_value(l: &LayerEntry) -> Result<Value> {
    Ok(serde_json::to_value(LayerRepr::from(l))?)
}

/// Both manifests of a file: compressed tensors and quantized layers by name.
#[derive(Debug, Default)]
pub(crate) struct Manifest {
    pub tensors: BTreeMap<String, TensorEntry>,
    pub layers: BTreeMap<String, LayerEntry>,
}

impl Manifest {
    /// Whether `name` is a compressed tensor or a layer prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.layers.contains_key(name)
    }

    /// The file's `__metadata__`: `extra` plus the format name, version and both
    /// manifests.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `extra` holds a reserved key; as [`tensor_value`].
    pub fn metadata(&self, extra: HashMap<String, String>) -> Result<HashMap<String, String>> {
        if let Some(key) = RESERVED_KEYS.iter().find(|k| extra.contains_key(**k)) {
            super::format::check_free_key(key)?;
        }
        let mut tensors = Map::new();
        for (name, e) in &self.tensors {
            tensors.insert(name.clone(), tensor_value(e)?);
        }
        let mut layers = Map::new();
        for (name, l) in &self.layers {
            layers.insert(name.clone(), layer_value(l)?);
        }
        let mut m = extra;
        m.insert(KEY_FORMAT.into(), FORMAT_NAME.into());
        m.insert(KEY_VERSION.into(), FORMAT_VERSION.to_string());
        m.insert(KEY_TENSORS.into(), serde_json::to_string(&tensors)?);
        m.insert(KEY_LAYERS.into(), serde_json::to_string(&layers)?);
        Ok(m)
    }

    /// Reads and validates the manifests of `metadata`; a file without our format key has
    /// none (every tensor plain).
    ///
    /// # Errors
    /// [`Error::Missing`] for a missing version; [`Error::Unsupported`] for another
    /// version, an unknown scheme or layer mode; [`Error::Corrupt`] for malformed JSON or
    /// entries; [`Error::InvalidArgument`] for an invalid layer config.
    pub fn from_metadata(metadata: Option<&HashMap<String, String>>) -> Result<Self> {
        let mut manifest = Self::default();
        let Some(meta) =
            metadata.filter(|m| m.get(KEY_FORMAT).map(String::as_str) == Some(FORMAT_NAME))
        else {
            return Ok(manifest);
        };
        let version = meta.get(KEY_VERSION).ok_or_else(|| Error::Missing {
            what: "metadata entry",
            name: KEY_VERSION.into(),
        })?;
        if version.trim() != FORMAT_VERSION.to_string() {
            return Err(Error::Unsupported {
                what: "candle-compress format version",
                found: version.clone(),
                supported: FORMAT_VERSION.to_string(),
            });
        }
        if let Some(text) = meta.get(KEY_TENSORS) {
            for (name, v) in parse_object(text, KEY_TENSORS)? {
                let entry = TensorEntry::try_from((name.as_str(), entry_repr(&name, v)?))?;
                manifest.tensors.insert(name, entry);
            }
        }
        if let Some(text) = meta.get(KEY_LAYERS) {
            for (name, v) in parse_object(text, KEY_LAYERS)? {
                let entry = LayerEntry::try_from((name.as_str(), entry_repr(&name, v)?))?;
                manifest.layers.insert(name, entry);
            }
        }
        Ok(manifest)
    }
}

/// The JSON object under metadata `key`, entries sorted by name.
fn parse_object(text: &str, key: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::Corrupt {
            what: format!("metadata {key}"),
            reason: "not a JSON object".into(),
        }),
        Err(e) => Err(Error::Corrupt {
            what: format!("metadata {key}"),
            reason: e.to_string(),
        }),
    }
}

/// Manifest entry `name` in its stored form (fields present, of the right types).
fn entry_repr<T: serde::de::DeserializeOwned>(name: &str, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::Corrupt {
        what: format!("manifest entry {name}"),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn entries_serialise_with_sorted_keys_and_widened_scales() -> Result<()> {
        let e = TensorEntry {
            scheme: "nf4:64".parse()?,
            shape: vec![2, 3],
            dtype: DType::BF16,
        };
        assert_eq!(
            tensor_value(&e)?.to_string(),
            r#"{"dtype":"BF16","scheme":"nf4:64","shape":[2,3]}"#
        );
        let l = LayerEntry {
            in_features: 64,
            out_features: 8,
            config: QuantConfig::w4a8(32)?
                .with_activations(ActivationQuant::Static { scale: 0.1 })?,
            bias: true,
            smooth: false,
        };
        assert_eq!(
            layer_value(&l)?.to_string(),
            r#"{"activation_scale":0.10000000149011612,"activations":"static","bias":true,"group":32,"in_features":64,"out_features":8,"smooth":false,"weights":"int4-grouped"}"#
        );
        let back = LayerEntry::try_from(("fc", serde_json::from_value(layer_value(&l)?)?))?;
        assert_eq!(back, l);
        Ok(())
    }

    #[test]
    fn bad_entries_keep_their_error_kinds() {
        let layer = |json: &str| {
            let repr: LayerRepr = serde_json::from_str(json).map_err(Error::from)?;
            LayerEntry::try_from(("fc", repr))
        };
        let base = r#""in_features":4,"out_features":2,"bias":false,"smooth":false"#;
        let unknown = layer(&format!(
            r#"{{{base},"weights":"int9","activations":"none"}}"#
        ));
        assert!(
            matches!(&unknown, Err(Error::Unsupported { found, .. }) if found.contains("(layer fc)")),
            "{unknown:?}"
        );
        let no_group = layer(&format!(
            r#"{{{base},"weights":"int4-grouped","activations":"none"}}"#
        ));
        assert!(
            matches!(no_group, Err(Error::Corrupt { .. })),
            "{no_group:?}"
        );
        let bad_group = layer(&format!(
            r#"{{{base},"weights":"int4-grouped","group":48,"activations":"none"}}"#
        ));
        assert!(
            matches!(bad_group, Err(Error::InvalidArgument { .. })),
            "{bad_group:?}"
        );
        let zero = layer(
            r#"{"in_features":0,"out_features":2,"bias":false,"smooth":false,"weights":"int8-per-channel","activations":"none"}"#,
        );
        assert!(matches!(zero, Err(Error::Corrupt { .. })), "{zero:?}");
    }
}
