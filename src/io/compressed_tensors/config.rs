//! The `quantization_config` object of `config.json`, both ways: built for what the
//! writer holds ([`quantization_config`], the per-mode `input_activations`), and parsed
//! into the config groups the reader matches layers against ([`GroupArgs`]); plus
//! reading and writing the JSON files themselves. One file, so the names and defaults
//! written are the ones read.

use std::path::Path;

use serde_json::{json, Value};

use super::format::CtFormat;
use crate::error::{Error, Result};
use crate::nn::ActivationQuant;

/// The compressed-tensors version whose layout this module follows (written as `version`).
pub const CT_SPEC_VERSION: &str = "0.12.2";

/// The `input_activations` of a config group for an activation mode: dynamic per-token
/// or per-tensor int8, static per-tensor int8 (with a `p.input_scale` tensor per layer),
/// or `null` for weight-only layers.
pub(super) fn activation_args(acts: ActivationQuant) -> Value {
    match acts {
        ActivationQuant::PerTensor => quant_args(8, "tensor", None, true),
        ActivationQuant::Static { .. } => quant_args(8, "tensor", None, false),
        ActivationQuant::Float => Value::Null,
        ActivationQuant::PerToken => quant_args(8, "token", None, true),
    }
}

fn quant_args(num_bits: u32, strategy: &str, group: Option<usize>, dynamic: bool) -> Value {
    json!({
        "num_bits": num_bits,
        "type": "int",
        "symmetric": true,
        "group_size": group,
        "strategy": strategy,
        "block_structure": null,
        "dynamic": dynamic,
        "actorder": null,
        "observer": if dynamic { Value::Null } else { json!("minmax") },
        "observer_kwargs": {},
    })
}

/// The `quantization_config` object for `config.json`: one config group targeting
/// `Linear` layers with `format`'s weights and dynamic per-token int8 input activations,
/// and `ignore` listing the layers left in float.
///
/// ```
/// use candle_compress::io::compressed_tensors::{quantization_config, CtFormat};
/// let c = quantization_config(CtFormat::PackQuantized { group: 128 }, &["lm_head".into()]);
/// assert_eq!(c["quant_method"], "compressed-tensors");
/// assert_eq!(c["format"], "pack-quantized");
/// assert_eq!(c["config_groups"]["group_0"]["weights"]["group_size"], 128);
/// assert_eq!(c["ignore"][0], "lm_head");
/// ```
pub fn quantization_config(format: CtFormat, ignore: &[String]) -> Value {
    let weights = match format {
        CtFormat::IntQuantized => quant_args(8, "channel", None, false),
        CtFormat::PackQuantized { group } => quant_args(4, "group", Some(group), false),
    };
    json!({
        "quant_method": "compressed-tensors",
        "format": format.name(),
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": quant_args(8, "token", None, true),
                "output_activations": null,
                "format": format.name(),
            }
        },
        "ignore": ignore,
        "kv_cache_scheme": null,
        "global_compression_ratio": null,
        "sparsity_config": {},
        "transform_config": {},
        "version": CT_SPEC_VERSION,
    })
}

/// How a config group's `input_activations` says activations are quantized.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ActArgs {
    /// `null`: weight-only.
    None,
    /// 8-bit symmetric int, dynamic, per token.
    DynamicToken,
    /// 8-bit symmetric int, dynamic, per tensor.
    DynamicTensor,
    /// 8-bit symmetric int, static, per tensor (`p.input_scale`).
    StaticTensor,
    /// Anything else, described for the error.
    Other(String),
}

/// The arguments of one config group, as far as loading needs them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct GroupArgs {
    pub(super) name: String,
    pub(super) num_bits: u64,
    pub(super) strategy: String,
    pub(super) group_size: Option<usize>,
    /// The group's own `format`, or the checkpoint's.
    pub(super) format: String,
    pub(super) acts: ActArgs,
}

impl GroupArgs {
    pub(super) fn describe(&self) -> String {
        let group = self
            .group_size
            .map_or(String::new(), |g| format!(" (group_size {g})"));
        format!(
            "{}: {} {}-bit {}{group}",
            self.name, self.format, self.num_bits, self.strategy
        )
    }
}

/// What a `quantization_config` says, as far as loading needs it.
#[derive(Debug)]
pub(super) struct ParsedConfig {
    /// The checkpoint's `format`.
    pub(super) format: String,
    /// Its config groups.
    pub(super) groups: Vec<GroupArgs>,
    /// The layers listed in `ignore`.
    pub(super) ignore: Vec<String>,
}

/// Parses `config` (a whole `config.json`, or the `quantization_config` object itself).
///
/// # Errors
/// As [`CtCheckpoint::open`](super::CtCheckpoint::open) for the config.
pub(super) fn parse_quantization_config(config: &Value) -> Result<ParsedConfig> {
    let q = config.get("quantization_config").unwrap_or(config);
    let method = match q.get("quant_method") {
        Some(Value::String(m)) => m.as_str(),
        Some(other) => {
            return Err(corrupt(format!(
                "quant_method has the wrong type ({other}), expected a string"
            )))
        }
        None => {
            return Err(Error::Missing {
                what: "config entry",
                name: "quantization_config.quant_method".into(),
            })
        }
    };
    if method != "compressed-tensors" {
        return Err(Error::Unsupported {
            what: "quant_method",
            found: method.to_string(),
            supported: "compressed-tensors".into(),
        });
    }
    let format = entry(q, "", "format", "a string", Value::as_str)?
        .ok_or_else(|| corrupt("missing \"format\" (a string)"))?;
    const FORMATS: [&str; 3] = ["int-quantized", "pack-quantized", "mixed-precision"];
    if !FORMATS.contains(&format) {
        return Err(Error::Unsupported {
            what: "compressed-tensors format",
            found: format.to_string(),
            supported: "int-quantized, pack-quantized, mixed-precision".into(),
        });
    }
    let groups_obj = entry(q, "", "config_groups", "an object", Value::as_object)?
        .ok_or_else(|| corrupt("missing \"config_groups\" object"))?;
    let mut groups = Vec::new();
    for (gname, g) in groups_obj {
        let w = g
            .get("weights")
            .ok_or_else(|| corrupt(format!("group {gname} has no \"weights\"")))?;
        let at = format!("group {gname}: weights.");
        let num_bits = entry(w, &at, "num_bits", "an integer", Value::as_u64)?
            .ok_or_else(|| corrupt(format!("group {gname}: weights.num_bits is missing")))?;
        let ty = entry(w, &at, "type", "a string", Value::as_str)?.unwrap_or("int");
        let symmetric = entry(w, &at, "symmetric", "a boolean", Value::as_bool)?.unwrap_or(true);
        let actorder = w
            .get("actorder")
            .is_some_and(|a| !a.is_null() && a != false);
        let strategy = entry(w, &at, "strategy", "a string", Value::as_str)?.unwrap_or("");
        let supported = ty == "int"
            && symmetric
            && !actorder
            && matches!(num_bits, 4 | 8)
            && matches!(strategy, "channel" | "group");
        if !supported {
            return Err(Error::Unsupported {
                what: "compressed-tensors weight scheme",
                found: format!(
                    "group {gname}: {num_bits}-bit {ty}, strategy {strategy:?}, \
                     symmetric {symmetric}, actorder {actorder}"
                ),
                supported: "8-bit int channel, 4-bit int group or channel, symmetric".into(),
            });
        }
        let group_size = match w.get("group_size") {
            Some(Value::Number(n)) => Some(
                n.as_u64()
                    .and_then(|g| usize::try_from(g).ok())
                    .filter(|&g| g > 0)
                    .ok_or_else(|| corrupt(format!("group {gname}: group_size {n}")))?,
            ),
            _ => None,
        };
        if strategy == "group" && group_size.is_none() {
            return Err(corrupt(format!(
                "group {gname}: strategy \"group\" without group_size"
            )));
        }
        let gformat = match g.get("format") {
            Some(Value::String(f)) if format == "mixed-precision" => f.clone(),
            _ => format.to_string(),
        };
        groups.push(GroupArgs {
            name: gname.clone(),
            num_bits,
            strategy: strategy.to_string(),
            group_size,
            format: gformat,
            acts: parse_activations(gname, g.get("input_activations"))?,
        });
    }
    let ignore = q
        .get("ignore")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(ParsedConfig {
        format: format.to_string(),
        groups,
        ignore,
    })
}

fn corrupt(reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "compressed-tensors quantization_config".into(),
        reason: reason.into(),
    }
}

/// Config entry `key` of `obj`: `Ok(None)` when it is absent or null, the value when
/// `get` accepts it, and an error saying "wrong type" (not "missing") when it is there
/// with another JSON type. `at` prefixes the key in the message (e.g. `"group g: weights."`).
fn entry<'a, T>(
    obj: &'a Value,
    at: &str,
    key: &str,
    expected: &str,
    get: impl Fn(&'a Value) -> Option<T>,
) -> Result<Option<T>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => get(v).map(Some).ok_or_else(|| {
            corrupt(format!(
                "{at}{key} has the wrong type ({v}), expected {expected}"
            ))
        }),
    }
}

/// Parses one group's `input_activations`.
fn parse_activations(gname: &str, a: Option<&Value>) -> Result<ActArgs> {
    let a = match a {
        None | Some(Value::Null) => return Ok(ActArgs::None),
        Some(a @ Value::Object(_)) => a,
        Some(other) => {
            return Err(corrupt(format!(
                "group {gname}: input_activations has the wrong type ({other})"
            )))
        }
    };
    let at = format!("group {gname}: input_activations.");
    let bits = entry(a, &at, "num_bits", "an integer", Value::as_u64)?;
    let ty = entry(a, &at, "type", "a string", Value::as_str)?.unwrap_or("int");
    let symmetric = entry(a, &at, "symmetric", "a boolean", Value::as_bool)?.unwrap_or(true);
    let dynamic = entry(a, &at, "dynamic", "a boolean", Value::as_bool)?.unwrap_or(false);
    let strategy = entry(a, &at, "strategy", "a string", Value::as_str)?.unwrap_or("");
    Ok(match (bits, ty, symmetric, dynamic, strategy) {
        (Some(8), "int", true, true, "token") => ActArgs::DynamicToken,
        (Some(8), "int", true, true, "tensor") => ActArgs::DynamicTensor,
        (Some(8), "int", true, false, "tensor") => ActArgs::StaticTensor,
        _ => ActArgs::Other(format!(
            "{} {ty}, strategy {strategy:?}, symmetric {symmetric}, dynamic {dynamic}",
            bits.map_or("?-bit".to_string(), |b| format!("{b}-bit"))
        )),
    })
}

/// Writes pretty JSON at `path` through a temporary file renamed into place.
pub(super) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    crate::io::write_atomically(path, |f| {
        use std::io::Write;
        f.write_all(text.as_bytes())?;
        Ok(())
    })
}

/// Reads and parses a `config.json`, naming the file in errors.
pub(super) fn read_config(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        what: path.display().to_string(),
        reason: format!("not a JSON config: {e}"),
    })
}
