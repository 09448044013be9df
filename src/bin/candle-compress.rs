//! `candle-compress`: quantize, inspect, evaluate and export safetensors checkpoints.
//!
//! ```text
//! candle-compress quantize model.safetensors -o model.int8.safetensors --scheme int8:64 --skip 'embed*'
//! candle-compress inspect model.int8.safetensors
//! candle-compress eval model.safetensors model.int8.safetensors --json
//! candle-compress export-gguf model.safetensors -o model.gguf --type q8_0
//! ```
//!
//! Errors are one line on stderr with exit code 1; usage errors exit with 2. Outputs are
//! written to a temporary file renamed into place, and an existing output is only replaced
//! with `--force`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use candle_compress::io::gguf::{save_gguf, GgufTensor, GgufType};
use candle_compress::io::reader::SafetensorsReader;
use candle_compress::io::safetensors::{
    CompressedFile, ItemKind, LayerEntry, PlannedItem, StreamingWriter, TensorEntry,
};
use candle_compress::nn::{QuantConfig, QuantLinear, WeightQuant};
use candle_compress::prune::{Pipeline, SkipRules, Stage, StoredTensor};
use candle_compress::quant::metrics::{compare_slices, ErrorStats};
use candle_compress::scheme::Scheme;
use candle_compress::{Compressor, Error, Result};
use candle_core::quantized::gguf_file::Value as GgufValue;
use candle_core::{DType, Device, Tensor};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use safetensors::tensor::Dtype;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "candle-compress",
    version,
    about = "Compress safetensors checkpoints for candle on CPU"
)]
struct Cli {
    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Quantize every float tensor of rank >= 2 of a safetensors file.
    ///
    /// SCHEME is a tensor scheme (int8[:block], affine8[:group], affine4[:group],
    /// int4[:group], nf4[:block]; default size 64) or a layer scheme (w8a8, w4a8[:group])
    /// that turns every `<p>.weight` of rank 2 (with `<p>.bias`) into a QuantLinear.
    Quantize {
        /// Input safetensors file (F32, F16, BF16 or F64 tensors).
        input: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Quantization scheme.
        #[arg(long)]
        scheme: String,
        /// Keep tensors whose name matches PATTERN in full precision. A pattern without
        /// wildcards matches names containing it (`embed`); with `*` (any text) or `?`
        /// (one character) it must match the whole name or a dot-separated tail of it
        /// (`embed*` matches `model.embed_tokens.weight`, `*.bias` every bias).
        /// Repeatable.
        #[arg(long = "skip", value_name = "PATTERN")]
        skip: Vec<String>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
    /// List the tensors of a file: kind, scheme, shape, stored bytes, ratio; totals.
    Inspect {
        /// A safetensors file (ours or any other).
        file: PathBuf,
    },
    /// Compare a compressed file with its original: MAE, SQNR and cosine per tensor.
    Eval {
        /// The original float safetensors file.
        original: PathBuf,
        /// The compressed file written by `quantize`.
        compressed: PathBuf,
    },
    /// Prune (and optionally clip and quantize) every float tensor of rank >= 2 with the
    /// compression pipeline; pruned tensors are stored dense (zeros included) or quantized.
    Prune {
        /// Input safetensors file.
        input: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Magnitude-prune each tensor to this fraction of zeros (0..1).
        #[arg(long, allow_negative_numbers = true)]
        sparsity: Option<f64>,
        /// With --sparsity: one magnitude threshold across all tensors instead of per tensor.
        #[arg(long)]
        global: bool,
        /// N:M structured pruning (keep N of every M along the last dim), e.g. 2:4.
        #[arg(long, value_name = "N:M")]
        nm: Option<String>,
        /// Clip each tensor to this percentile of |x| (e.g. 99.9).
        #[arg(long, allow_negative_numbers = true)]
        clip: Option<f64>,
        /// Quantize after pruning with this tensor scheme (e.g. int8:64).
        #[arg(long)]
        scheme: Option<String>,
        /// Leave tensors whose name matches PATTERN alone. A pattern without
        /// wildcards matches names containing it (`embed`); with `*` (any text) or `?`
        /// (one character) it must match the whole name or a dot-separated tail of it
        /// (`embed*` matches `model.embed_tokens.weight`, `*.bias` every bias).
        /// Repeatable.
        #[arg(long = "skip", value_name = "PATTERN")]
        skip: Vec<String>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
    /// Export to GGUF (Q8_0 or Q4_0 for tensors of rank >= 2 whose last dimension is a
    /// multiple of 32, F32 for other float tensors, GGUF integer types for integer ones).
    ExportGguf {
        /// A float safetensors file, or a compressed file holding int8:32 / int4:32 tensors.
        input: PathBuf,
        /// Output .gguf file.
        #[arg(short, long)]
        output: PathBuf,
        /// GGML type of the quantized tensors: float tensors are quantized to it with
        /// llama.cpp's rules (default q8_0); compressed int8:32 / int4:32 tensors are
        /// written as they are (Q8_0 / Q4_0) and must match it when it is given.
        #[arg(long = "type", value_enum)]
        ty: Option<GgufKind>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum GgufKind {
    /// GGML Q8_0 (int8 blocks of 32, f16 scale).
    #[value(name = "q8_0")]
    Q8_0,
    /// GGML Q4_0 (4-bit blocks of 32, f16 scale).
    #[value(name = "q4_0")]
    Q4_0,
}

/// What `quantize` does with the tensors.
enum Plan {
    Tensors(Scheme),
    Layers(QuantConfig),
}

fn parse_plan(text: &str) -> Result<Plan> {
    let (kind, size) = match text.split_once(':') {
        Some((k, s)) => (k, Some(s)),
        None => (text, None),
    };
    let size = size
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| invalid("scheme", format!("{s:?} in {text:?} is not a size")))
        })
        .transpose()?;
    match kind {
        "w8a8" if size.is_none() => Ok(Plan::Layers(QuantConfig::w8a8())),
        "w4a8" => Ok(Plan::Layers(QuantConfig::w4a8(size.unwrap_or(64))?)),
        _ => Ok(Plan::Tensors(text.parse()?)),
    }
}

fn check_output(path: &Path, force: bool) -> Result<()> {
    if path.is_dir() {
        return Err(invalid(
            "output",
            format!("{} is a directory; give a file name", path.display()),
        ));
    }
    if path.exists() && !force {
        return Err(invalid(
            "output",
            format!(
                "{} exists; refusing to overwrite it (use --force)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// The progress line: what runs, the bar, the count (the message once).
const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {pos}/{len}";

fn progress(len: usize, json: bool, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// An [`Error::InvalidArgument`] (the library's constructor is crate-private).
fn invalid(name: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        name,
        reason: reason.into(),
    }
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

fn candle_float(d: Dtype) -> DType {
    match d {
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// Reads a tensor in its own dtype; F32 goes straight into one f32 buffer.
fn read_tensor(reader: &SafetensorsReader, name: &str, dtype: Dtype) -> Result<Tensor> {
    if dtype == Dtype::F32 {
        let (shape, values) = reader.read_f32(name)?;
        return Ok(Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    let candle = candle_dtype(dtype).ok_or_else(|| Error::Unsupported {
        what: "tensor dtype",
        found: format!("{dtype:?}"),
        supported: "F32, F16, BF16, F64, U8, U32, I64".into(),
    })?;
    let raw = reader.read(name)?;
    Ok(Tensor::from_raw_buffer(
        &raw.data,
        candle,
        &raw.shape,
        &Device::Cpu,
    )?)
}

/// File metadata key under which `quantize` records, per quantized layer, the dtype and
/// bytes (weight + bias) of the float tensors it was made from.
const LAYER_SOURCES_KEY: &str = "source_layers";

/// What `quantize` does with one input tensor.
enum Action {
    Compress(Scheme),
    Layer {
        prefix: String,
        bias: Option<String>,
    },
    Keep {
        skipped: bool,
    },
    /// A bias folded into its layer.
    Folded,
}

fn quantize(
    input: &Path,
    output: &Path,
    scheme: &str,
    skip: &[String],
    force: bool,
    json: bool,
) -> CliResult<Value> {
    let plan = parse_plan(scheme)?;
    check_output(output, force)?;
    let reader = in_file(input, SafetensorsReader::open(input))?;
    refuse_compressed(input, "quantize")?;
    let names = reader.names();
    let rules = SkipRules::names(skip);
    let skipped = |name: &str| rules.matching_pattern(name).is_some();

    // Pass 1, header only: decide what happens to every tensor. Biases folded into
    // QuantLinears are found up front, since a bias may come before its weight.
    let mut actions: Vec<(String, Action)> = Vec::new();
    let mut folded = HashSet::new();
    for name in &names {
        let Some(info) = reader.info(name) else {
            continue;
        };
        let float = is_float(info.dtype);
        let action = match &plan {
            Plan::Tensors(s) if float && info.shape.len() >= 2 && !skipped(name) => {
                Action::Compress(*s)
            }
            Plan::Layers(_) if float && info.shape.len() == 2 && !skipped(name) => {
                match name.strip_suffix(".weight") {
                    Some(prefix) => {
                        let bias_name = format!("{prefix}.bias");
                        let bias = reader
                            .info(&bias_name)
                            .filter(|b| is_float(b.dtype) && b.shape == [info.shape[0]])
                            .map(|_| bias_name);
                        if let Some(b) = &bias {
                            folded.insert(b.clone());
                        }
                        Action::Layer {
                            prefix: prefix.to_string(),
                            bias,
                        }
                    }
                    None => Action::Keep { skipped: false },
                }
            }
            _ => Action::Keep {
                skipped: skipped(name),
            },
        };
        actions.push((name.clone(), action));
    }
    let mut items = Vec::new();
    for (name, action) in &mut actions {
        if folded.contains(name.as_str()) {
            *action = Action::Folded;
            continue;
        }
        let Some(info) = reader.info(name) else {
            continue;
        };
        let item = match action {
            Action::Compress(s) => PlannedItem::Compressed(TensorEntry {
                scheme: *s,
                shape: info.shape.clone(),
                dtype: candle_float(info.dtype),
            }),
            Action::Layer { prefix, bias } => {
                let Plan::Layers(cfg) = &plan else { continue };
                items.push((
                    prefix.clone(),
                    PlannedItem::QuantLinear(LayerEntry {
                        in_features: info.shape[1],
                        out_features: info.shape[0],
                        config: *cfg,
                        bias: bias.is_some(),
                        smooth: false,
                    }),
                ));
                continue;
            }
            Action::Keep { .. } | Action::Folded => PlannedItem::Raw {
                dtype: info.dtype,
                shape: info.shape.clone(),
            },
        };
        items.push((name.clone(), item));
    }
    let source = input
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    // A QuantLinear does not know the dtype it was made from; record it (and the bytes of
    // weight + bias) so `inspect` reports the true ratio.
    let mut layer_sources = serde_json::Map::new();
    for (name, action) in &actions {
        let Action::Layer { prefix, bias } = action else {
            continue;
        };
        let Some(info) = reader.info(name) else {
            continue;
        };
        let span = |i: &safetensors::tensor::TensorInfo| i.data_offsets.1 - i.data_offsets.0;
        let bytes = span(info) + bias.as_ref().and_then(|b| reader.info(b)).map_or(0, span);
        layer_sources.insert(
            prefix.clone(),
            json!({"dtype": format!("{:?}", info.dtype), "bytes": bytes}),
        );
    }
    let mut metadata = HashMap::from([("source".to_string(), source)]);
    if !layer_sources.is_empty() {
        metadata.insert(
            LAYER_SOURCES_KEY.to_string(),
            Value::Object(layer_sources).to_string(),
        );
    }
    let mut writer = in_file(output, StreamingWriter::create(output, items, metadata))?;

    // Pass 2: one tensor at a time: read, compress, write, drop.
    let mut rows = Vec::new();
    let bar = progress(actions.len(), json, "quantize");
    let (mut total_in, mut total_out) = (0usize, 0usize);
    for (name, action) in &actions {
        bar.inc(1);
        let Some(info) = reader.info(name) else {
            continue;
        };
        let (dtype, shape) = (info.dtype, info.shape.clone());
        let mut original = info.data_offsets.1 - info.data_offsets.0;
        let before = writer.data_bytes();
        let (label, scheme_text) = match action {
            Action::Folded => continue,
            Action::Compress(s) => {
                let t = in_tensor(input, name, read_tensor(&reader, name, dtype))?;
                let c = in_tensor(input, name, s.compress(&t))?;
                drop(t);
                in_file(output, writer.write_compressed(name, &c))?;
                ("compressed", json!(s.to_string()))
            }
            Action::Layer { prefix, bias } => {
                let Plan::Layers(cfg) = &plan else { continue };
                let bias_t = match bias {
                    Some(b) => {
                        let binfo = reader.info(b).ok_or_else(|| Error::Missing {
                            what: "tensor",
                            name: b.clone(),
                        })?;
                        original += binfo.data_offsets.1 - binfo.data_offsets.0;
                        Some(in_tensor(input, b, read_tensor(&reader, b, binfo.dtype))?)
                    }
                    None => None,
                };
                let w = in_tensor(input, name, read_tensor(&reader, name, dtype))?;
                let layer = in_tensor(input, name, QuantLinear::new(&w, bias_t.as_ref(), cfg))?;
                drop(w);
                in_file(output, writer.write_quant_linear(prefix, &layer))?;
                let text = match cfg.weights() {
                    WeightQuant::Int4Grouped { group } => format!("w4a8:{group}"),
                    WeightQuant::Int4GroupedAsym { group } => format!("w4a8-asym:{group}"),
                    _ => "w8a8".to_string(),
                };
                ("layer", json!(text))
            }
            Action::Keep { skipped } => {
                let raw = in_tensor(input, name, reader.read(name))?;
                in_file(output, writer.write_raw(name, dtype, &shape, &raw.data))?;
                (if *skipped { "skipped" } else { "kept" }, Value::Null)
            }
        };
        let stored = writer.data_bytes() - before;
        total_in += original;
        total_out += stored;
        rows.push(json!({
            "name": name, "action": label, "scheme": scheme_text, "shape": shape,
            "dtype": format!("{dtype:?}"), "original_bytes": original, "stored_bytes": stored,
        }));
    }
    bar.finish_and_clear();
    in_file(output, writer.finish())?;
    let file_bytes = std::fs::metadata(output)?.len();
    Ok(json!({
        "input": input.display().to_string(),
        "output": output.display().to_string(),
        "scheme": scheme,
        "tensors": rows,
        "total_original_bytes": total_in,
        "total_stored_bytes": total_out,
        "output_file_bytes": file_bytes,
        "ratio": total_in as f64 / total_out.max(1) as f64,
    }))
}

struct PruneArgs<'a> {
    sparsity: Option<f64>,
    global: bool,
    nm: Option<&'a str>,
    clip: Option<f64>,
    scheme: Option<&'a str>,
    skip: &'a [String],
}

fn prune(
    input: &Path,
    output: &Path,
    args: &PruneArgs<'_>,
    force: bool,
    json: bool,
) -> CliResult<Value> {
    check_output(output, force)?;
    let mut pipeline = Pipeline::new().sparse_storage(false);
    if let Some(s) = args.sparsity {
        pipeline = if args.global {
            pipeline.prune_global(s)
        } else {
            pipeline.prune_magnitude(s)
        };
    } else if args.global {
        return Err(invalid("--global", "needs --sparsity").into());
    }
    if let Some(nm) = args.nm {
        let parsed = nm
            .split_once(':')
            .and_then(|(n, m)| Some((n.parse::<usize>().ok()?, m.parse::<usize>().ok()?)));
        let Some((n, m)) = parsed else {
            return Err(invalid("--nm", format!("{nm:?} is not N:M (e.g. 2:4)")).into());
        };
        pipeline = pipeline.prune_nm(n, m);
    }
    if let Some(p) = args.clip {
        pipeline = pipeline.clip_percentile(p);
    }
    if let Some(text) = args.scheme {
        pipeline = pipeline.quantize(text.parse()?);
    }
    if pipeline.stages.is_empty() {
        return Err(invalid(
            "prune",
            "give at least one of --sparsity, --nm, --clip, --scheme",
        )
        .into());
    }
    pipeline = pipeline.skip_names(args.skip);
    pipeline.validate()?;
    let reader = in_file(input, SafetensorsReader::open(input))?;
    refuse_compressed(input, "prune")?;

    // Plan: tensors candle cannot hold (I8, I16, BOOL, ...) are copied as they are; every
    // other tensor goes through the pipeline, which stores each processed tensor dense in
    // its dtype or quantized with the last stage's scheme, and passes the rest through.
    let quantize = pipeline.stages.iter().find_map(|s| match s {
        Stage::Quantize { scheme } => Some(*scheme),
        _ => None,
    });
    let (mut copied, mut streamed) = (Vec::new(), Vec::new());
    for name in reader.names() {
        let Some(info) = reader.info(&name) else {
            continue;
        };
        match candle_dtype(info.dtype) {
            Some(dtype) => streamed.push((name, dtype, info.shape.clone())),
            None => copied.push((name, info.dtype, info.shape.clone())),
        }
    }
    streamed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut plan: Vec<(String, PlannedItem)> = copied
        .iter()
        .map(|(n, d, shape)| {
            (
                n.clone(),
                PlannedItem::Raw {
                    dtype: *d,
                    shape: shape.clone(),
                },
            )
        })
        .collect();
    for (name, dtype, shape) in &streamed {
        let processed = pipeline.skip.reason(name, shape.len(), *dtype).is_none();
        let item = match quantize {
            Some(scheme) if processed => PlannedItem::Compressed(TensorEntry {
                scheme,
                shape: shape.clone(),
                dtype: *dtype,
            }),
            _ => PlannedItem::Raw {
                dtype: safetensors_dtype(*dtype),
                shape: shape.clone(),
            },
        };
        plan.push((name.clone(), item));
    }
    let mut writer = in_file(
        output,
        StreamingWriter::create(output, plan, HashMap::new()),
    )?;
    for (name, dtype, shape) in &copied {
        let raw = in_tensor(input, name, reader.read(name))?;
        in_file(output, writer.write_raw(name, *dtype, shape, &raw.data))?;
    }

    // One tensor in memory at a time; a global threshold costs two extra reads.
    let names: Vec<String> = streamed.iter().map(|(n, _, _)| n.clone()).collect();
    let bar = progress(names.len() * pipeline.streaming_passes(), json, "prune");
    let dtypes: HashMap<&str, DType> = streamed.iter().map(|(n, d, _)| (n.as_str(), *d)).collect();
    // The tensor being read or written, for the error message.
    let current = std::cell::RefCell::new(String::new());
    let result = pipeline.run_streaming(
        &names,
        |name| {
            bar.inc(1);
            name.clone_into(&mut current.borrow_mut());
            let info = reader.info(name).ok_or_else(|| Error::Missing {
                what: "tensor",
                name: name.to_string(),
            })?;
            read_tensor(&reader, name, info.dtype)
        },
        |name, stored| {
            name.clone_into(&mut current.borrow_mut());
            match stored {
                StoredTensor::Quantized(c) => writer.write_compressed(name, &c),
                StoredTensor::Dense(t) => {
                    let dtype = dtypes.get(name).copied().unwrap_or(t.dtype());
                    writer.write_plain(name, &t.to_dtype(dtype)?)
                }
                other => writer.write_plain(name, &other.to_dense(&Device::Cpu)?),
            }
        },
    );
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let name = current.into_inner();
            return Err(if name.is_empty() {
                Failure::from(e).within(input.display())
            } else {
                Failure::from(e).within(format_args!("{}: tensor {name}", input.display()))
            });
        }
    };
    in_file(output, writer.finish())?;
    let mut out = serde_json::to_value(&report)?;
    out["input"] = json!(input.display().to_string());
    out["output"] = json!(output.display().to_string());
    out["output_file_bytes"] = json!(std::fs::metadata(output)?.len());
    out["text"] = json!(report.to_string());
    Ok(out)
}

/// The candle dtype of a safetensors dtype, where candle has one.
fn candle_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I64 => DType::I64,
        _ => return None,
    })
}

/// The safetensors dtype of a candle dtype this CLI reads.
fn safetensors_dtype(d: DType) -> Dtype {
    match d {
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F64 => Dtype::F64,
        DType::U8 => Dtype::U8,
        DType::U32 => Dtype::U32,
        DType::I64 => Dtype::I64,
        _ => Dtype::F32,
    }
}

fn inspect(path: &Path) -> CliResult<Value> {
    let file = in_file(path, CompressedFile::open(path))?;
    let ours = file
        .reader()
        .metadata()
        .and_then(|m| m.get("format"))
        .map(String::as_str)
        == Some("candle-compress");
    let layer_sources: serde_json::Map<String, Value> = file
        .reader()
        .metadata()
        .and_then(|m| m.get(LAYER_SOURCES_KEY))
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let mut rows = Vec::new();
    let (mut total_orig, mut total_stored) = (0usize, 0usize);
    for item in file.items() {
        let (kind, scheme, shape, dtype, original) = match &item.kind {
            ItemKind::Compressed(e) => {
                let n: usize = e.shape.iter().product();
                (
                    "compressed",
                    json!(e.scheme.to_string()),
                    e.shape.clone(),
                    format!("{:?}", e.dtype),
                    n * e.dtype.size_in_bytes(),
                )
            }
            ItemKind::QuantLinear(l) => {
                let scheme = match l.config.weights() {
                    WeightQuant::Int4Grouped { group } => format!("w4a8:{group}"),
                    WeightQuant::Int4GroupedAsym { group } => format!("w4a8-asym:{group}"),
                    _ => "w8a8".to_string(),
                };
                let params =
                    l.out_features * l.in_features + if l.bias { l.out_features } else { 0 };
                // The recorded source, else (a layer saved by a program) an F32 original.
                let recorded = layer_sources.get(&item.name);
                let dtype = recorded
                    .and_then(|r| r["dtype"].as_str())
                    .map_or("F32 (assumed)".to_string(), str::to_string);
                let bytes = recorded
                    .and_then(|r| r["bytes"].as_u64())
                    .and_then(|b| usize::try_from(b).ok())
                    .unwrap_or(params * 4);
                (
                    "quant_linear",
                    json!(scheme),
                    vec![l.out_features, l.in_features],
                    dtype,
                    bytes,
                )
            }
            ItemKind::Plain { dtype, shape } => (
                "plain",
                Value::Null,
                shape.clone(),
                format!("{dtype:?}"),
                item.stored_bytes,
            ),
        };
        total_orig += original;
        total_stored += item.stored_bytes;
        rows.push(json!({
            "name": item.name, "kind": kind, "scheme": scheme, "shape": shape,
            "dtype": dtype, "original_bytes": original, "stored_bytes": item.stored_bytes,
            "ratio": original as f64 / item.stored_bytes.max(1) as f64,
        }));
    }
    Ok(json!({
        "file": path.display().to_string(),
        "format": if ours { "candle-compress" } else { "safetensors" },
        "file_bytes": file.reader().file_len(),
        "tensors": rows,
        "total_original_bytes": total_orig,
        "total_stored_bytes": total_stored,
        "ratio": total_orig as f64 / total_stored.max(1) as f64,
    }))
}

/// The dequantized weight of a layer, row-major `[out, in]`.
fn dequantized_weight(layer: &QuantLinear) -> Vec<f32> {
    let p = layer.to_parts();
    let (out, inp) = (p.out_features, p.in_features);
    let per_row = p.scales.len() / out.max(1);
    let group = inp.div_ceil(per_row.max(1));
    let mut w = Vec::with_capacity(out * inp);
    for o in 0..out {
        for k in 0..inp {
            let s = p.scales[o * per_row + (k / group).min(per_row - 1)];
            let mut v = p.weights[o * inp + k] as f32 * s;
            if let Some(sm) = &p.smooth {
                v /= sm[k];
            }
            w.push(v);
        }
    }
    w
}

fn eval(original: &Path, compressed: &Path, json: bool) -> CliResult<Value> {
    let orig = in_file(original, SafetensorsReader::open(original))?;
    let file = in_file(compressed, CompressedFile::open(compressed))?;
    let items = file.items();
    let bar = progress(items.len(), json, "eval");
    let mut rows = Vec::new();
    let mut worst: Option<(String, f64)> = None;
    for item in items {
        bar.inc(1);
        let (reference_name, approx): (String, Vec<f32>) = match &item.kind {
            ItemKind::Compressed(_) => (
                item.name.clone(),
                file.load_compressed(&item.name)?.to_f32_vec(),
            ),
            ItemKind::QuantLinear(_) => (
                format!("{}.weight", item.name),
                dequantized_weight(&file.load_quant_linear(&item.name)?),
            ),
            ItemKind::Plain { dtype, .. } if is_float(*dtype) => {
                (item.name.clone(), file.reader().read_f32(&item.name)?.1)
            }
            ItemKind::Plain { .. } => continue,
        };
        let Some(info) = orig.info(&reference_name) else {
            return Err(Failure::from(Error::Missing {
                what: "tensor in the original file",
                name: reference_name,
            })
            .within(original.display()));
        };
        if !is_float(info.dtype) {
            continue;
        }
        let (_, reference) = orig.read_f32(&reference_name)?;
        let stats: ErrorStats = compare_slices(&reference, &approx)
            .map_err(|e| invalid("eval", format!("{reference_name}: {e}")))?;
        let is_worse = match &worst {
            Some((_, s)) => stats.sqnr_db < *s,
            None => true,
        };
        if is_worse {
            worst = Some((reference_name.clone(), stats.sqnr_db));
        }
        rows.push(json!({
            "name": reference_name, "elements": stats.len, "mae": stats.mae, "mse": stats.mse,
            "max_abs_error": stats.max_abs_error, "sqnr_db": finite_or_null(stats.sqnr_db),
            "cosine": stats.cosine_similarity,
        }));
    }
    bar.finish_and_clear();
    Ok(json!({
        "original": original.display().to_string(),
        "compressed": compressed.display().to_string(),
        "tensors": rows,
        "worst_sqnr": worst.map(|(n, s)| json!({"name": n, "sqnr_db": finite_or_null(s)})),
    }))
}

fn finite_or_null(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

fn export_gguf(
    input: &Path,
    output: &Path,
    ty: Option<GgufKind>,
    force: bool,
    json: bool,
) -> CliResult<Value> {
    check_output(output, force)?;
    let file = in_file(input, CompressedFile::open(input))?;
    let items = file.items();
    let wanted = ty.map(|t| match t {
        GgufKind::Q8_0 => GgufType::Q8_0,
        GgufKind::Q4_0 => GgufType::Q4_0,
    });
    let bar = progress(items.len(), json, "export");
    let mut tensors = Vec::new();
    let mut rows = Vec::new();
    for item in items {
        bar.inc(1);
        let name = item.name.as_str();
        let t = match &item.kind {
            ItemKind::Compressed(_) => {
                let value = in_tensor(input, name, file.load_compressed(name))?;
                in_tensor(
                    input,
                    name,
                    match wanted {
                        Some(ty) => GgufTensor::from_compressed_as(name, &value, ty),
                        None => GgufTensor::from_compressed(name, &value),
                    },
                )?
            }
            ItemKind::QuantLinear(_) => {
                return Err(Failure::from(Error::Unsupported {
                    what: "GGUF export of a QuantLinear",
                    found: item.name,
                    supported: "float tensors and int8:32 / int4:32 compressed tensors".into(),
                })
                .within(input.display()))
            }
            ItemKind::Plain { dtype, shape } if is_float(*dtype) => {
                let tensor = in_tensor(input, name, file.load_plain(name, &Device::Cpu))?;
                let quantizable = shape.len() >= 2 && shape[shape.len() - 1] % 32 == 0;
                let ty = if quantizable {
                    wanted.unwrap_or(GgufType::Q8_0)
                } else {
                    GgufType::F32
                };
                in_tensor(input, name, GgufTensor::quantize(name, &tensor, ty))?
            }
            ItemKind::Plain { .. } => {
                let tensor = in_tensor(input, name, file.load_plain(name, &Device::Cpu))?;
                in_tensor(input, name, GgufTensor::integer(name, &tensor))?
            }
        };
        rows.push(json!({
            "name": t.name(), "type": format!("{:?}", t.ty()), "shape": t.shape(),
            "bytes": t.data().len(),
        }));
        tensors.push(t);
    }
    bar.finish_and_clear();
    let meta = vec![(
        "general.name".to_string(),
        GgufValue::String(
            input
                .file_stem()
                .map_or("model".into(), |s| s.to_string_lossy().into_owned()),
        ),
    )];
    in_file(output, save_gguf(output, &meta, &tensors))?;
    Ok(json!({
        "input": input.display().to_string(),
        "output": output.display().to_string(),
        "tensors": rows,
        "output_file_bytes": std::fs::metadata(output)?.len(),
    }))
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn print_table(command: &Command, report: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let tensors = report["tensors"].as_array().cloned().unwrap_or_default();
    let shape = |v: &Value| {
        let dims: Vec<String> = v
            .as_array()
            .map(|a| a.iter().map(|d| d.to_string()).collect())
            .unwrap_or_default();
        format!("[{}]", dims.join(", "))
    };
    let text = |v: &Value| v.as_str().map_or("-".to_string(), str::to_string);
    match command {
        Command::Quantize { .. } | Command::Inspect { .. } => {
            let width = tensors
                .iter()
                .map(|t| t["name"].as_str().map_or(0, str::len))
                .max()
                .unwrap_or(4)
                .max(6);
            let kind_key = if matches!(command, Command::Inspect { .. }) {
                "kind"
            } else {
                "action"
            };
            writeln!(
                out,
                "{:<width$}  {:<12}  {:<12}  {:<16}  {:>12}  {:>7}",
                "tensor", kind_key, "scheme", "shape", "bytes", "ratio"
            )?;
            for t in &tensors {
                let ratio = u(&t["original_bytes"]) as f64 / u(&t["stored_bytes"]).max(1) as f64;
                writeln!(
                    out,
                    "{:<width$}  {:<12}  {:<12}  {:<16}  {:>12}  {:>6.2}x",
                    text(&t["name"]),
                    text(&t[kind_key]),
                    text(&t["scheme"]),
                    shape(&t["shape"]),
                    u(&t["stored_bytes"]),
                    ratio
                )?;
            }
            let (o, s) = (
                u(&report["total_original_bytes"]),
                u(&report["total_stored_bytes"]),
            );
            writeln!(
                out,
                "total: {} tensors, {} -> {} ({:.2}x)",
                tensors.len(),
                human(o),
                human(s),
                o as f64 / s.max(1) as f64
            )?;
            if let Some(path) = report["output"].as_str() {
                writeln!(
                    out,
                    "wrote {path} ({})",
                    human(u(&report["output_file_bytes"]))
                )?;
            }
        }
        Command::Eval { .. } => {
            let width = tensors
                .iter()
                .map(|t| t["name"].as_str().map_or(0, str::len))
                .max()
                .unwrap_or(4)
                .max(6);
            writeln!(
                out,
                "{:<width$}  {:>12}  {:>10}  {:>10}",
                "tensor", "MAE", "SQNR dB", "cosine"
            )?;
            for t in &tensors {
                let sqnr = t["sqnr_db"]
                    .as_f64()
                    .map_or_else(|| text(&t["sqnr_db"]), |v| format!("{v:.2}"));
                writeln!(
                    out,
                    "{:<width$}  {:>12.4e}  {:>10}  {:>10.6}",
                    text(&t["name"]),
                    t["mae"].as_f64().unwrap_or(f64::NAN),
                    sqnr,
                    t["cosine"].as_f64().unwrap_or(f64::NAN)
                )?;
            }
            if let Some(w) = report["worst_sqnr"].as_object() {
                let sqnr = w.get("sqnr_db").map_or("-".into(), |v| {
                    v.as_f64().map_or_else(|| text(v), |f| format!("{f:.2}"))
                });
                writeln!(
                    out,
                    "worst SQNR: {} ({sqnr} dB)",
                    w.get("name").map_or("-".into(), text)
                )?;
            }
        }
        Command::Prune { .. } => {
            writeln!(out, "{}", text(&report["text"]))?;
            writeln!(
                out,
                "wrote {} ({})",
                text(&report["output"]),
                human(u(&report["output_file_bytes"]))
            )?;
        }
        Command::ExportGguf { .. } => {
            for t in &tensors {
                writeln!(
                    out,
                    "{:<40}  {:<5}  {:<16}  {:>12}",
                    text(&t["name"]),
                    text(&t["type"]),
                    shape(&t["shape"]),
                    u(&t["bytes"])
                )?;
            }
            writeln!(
                out,
                "wrote {} ({})",
                text(&report["output"]),
                human(u(&report["output_file_bytes"]))
            )?;
        }
    }
    Ok(())
}

/// A failed command as the CLI reports it: one line naming the file (and the tensor, where
/// one is concerned) and what went wrong, plus a stable `kind` for `--json` consumers.
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    message: String,
}

type CliResult<T> = std::result::Result<T, Failure>;

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::ShapeMismatch { .. } => "shape_mismatch",
            Error::UnsupportedDType { .. } => "unsupported_dtype",
            Error::NonFinite { .. } => "non_finite",
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::MetadataMismatch { .. } => "metadata_mismatch",
            Error::Truncated { .. } => "truncated",
            Error::Corrupt { .. } => "corrupt",
            Error::Unsupported { .. } => "unsupported",
            Error::Missing { .. } => "missing",
            Error::OutOfRange { .. } => "out_of_range",
            Error::SizeOverflow { .. } => "size_overflow",
            Error::Io(_) => "io",
            Error::Json(_) => "json",
            Error::Safetensors(_) => "safetensors",
            _ => "error",
        };
        Failure {
            kind,
            message: e.to_string().replace('\n', " "),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e).into()
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e).into()
    }
}

impl From<candle_core::Error> for Failure {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(e).into()
    }
}

impl Failure {
    /// Puts `what` (a file, a tensor) in front of the message.
    fn within(mut self, what: impl std::fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

/// Names the file in every error of `r`.
fn in_file<T>(path: &Path, r: Result<T>) -> CliResult<T> {
    r.map_err(|e| Failure::from(e).within(path.display()))
}

/// Names the tensor and its file in every error of `r`.
fn in_tensor<T>(path: &Path, name: &str, r: Result<T>) -> CliResult<T> {
    r.map_err(|e| Failure::from(e).within(format_args!("{}: tensor {name}", path.display())))
}

/// Refuses an input that already holds compressed values: quantizing or pruning their
/// integer payloads and scales as if they were weights would write a file that no
/// longer decodes.
fn refuse_compressed(path: &Path, command: &str) -> CliResult<()> {
    let file = in_file(path, CompressedFile::open(path))?;
    let (mut tensors, mut layers, mut example) = (0usize, 0usize, None);
    for item in file.items() {
        match item.kind {
            ItemKind::Compressed(_) => tensors += 1,
            ItemKind::QuantLinear(_) => layers += 1,
            ItemKind::Plain { .. } => continue,
        }
        example.get_or_insert(item.name);
    }
    if let Some(name) = example {
        return Err(Failure::from(invalid(
            "input",
            format!(
                "it is already compressed by candle-compress ({tensors} compressed tensors, \
                 {layers} quantized layers, e.g. {name:?}); {command} the original float \
                 checkpoint instead"
            ),
        ))
        .within(path.display()));
    }
    // compressed-tensors checkpoints (llm-compressor, vLLM) keep their codes and scales
    // under these suffixes.
    let ct = file.reader().names().into_iter().find(|n| {
        [
            ".weight_packed",
            ".weight_scale",
            ".weight_zero_point",
            ".weight_shape",
        ]
        .iter()
        .any(|s| n.ends_with(s))
    });
    if let Some(name) = ct {
        return Err(Failure::from(invalid(
            "input",
            format!(
                "it holds compressed-tensors quantized weights (e.g. {name:?}); {command} \
                 the original float checkpoint instead, or load it with \
                 QuantLoader::from_compressed_tensors"
            ),
        ))
        .within(path.display()));
    }
    Ok(())
}

fn run(cli: &Cli) -> CliResult<Value> {
    match &cli.command {
        Command::Quantize {
            input,
            output,
            scheme,
            skip,
            force,
        } => quantize(input, output, scheme, skip, *force, cli.json),
        Command::Prune {
            input,
            output,
            sparsity,
            global,
            nm,
            clip,
            scheme,
            skip,
            force,
        } => prune(
            input,
            output,
            &PruneArgs {
                sparsity: *sparsity,
                global: *global,
                nm: nm.as_deref(),
                clip: *clip,
                scheme: scheme.as_deref(),
                skip,
            },
            *force,
            cli.json,
        ),
        Command::Inspect { file } => inspect(file),
        Command::Eval {
            original,
            compressed,
        } => eval(original, compressed, cli.json),
        Command::ExportGguf {
            input,
            output,
            ty,
            force,
        } => export_gguf(input, output, *ty, *force, cli.json),
    }
}

/// Ends the process on Ctrl-C, `SIGTERM` or `SIGHUP` after removing the temporary file of
/// an unfinished output (destructors do not run when a signal ends a process), with the
/// shell's exit status for that signal (128 + its number).
fn remove_partial_output_on_signal() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return; // no handler: the default action (exit) still applies
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            candle_compress::io::remove_temp_files();
            let _ = writeln!(std::io::stderr(), "\ninterrupted; no output written");
            std::process::exit(128 + signal);
        }
    });
}

/// Prints `text` and a newline on stdout. A closed pipe (`candle-compress … | head`) is
/// not an error: the reader has all it wanted.
fn print_stdout(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn main() -> ExitCode {
    // A bug must still end as one line and a failure code, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let _ = writeln!(std::io::stderr(), "error: internal error: {msg}");
    }));
    let cli = Cli::parse(); // usage errors: clap prints them and exits with 2
    remove_partial_output_on_signal();
    match run(&cli) {
        Ok(report) if cli.json => print_stdout(&report.to_string()),
        Ok(report) => match print_table(&cli.command, &report) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => ExitCode::FAILURE,
            _ => ExitCode::SUCCESS,
        },
        Err(f) => {
            if cli.json {
                let report = json!({"error": {"kind": f.kind, "message": f.message}});
                let _ = print_stdout(&report.to_string());
            } else {
                let _ = writeln!(std::io::stderr(), "error: {}", f.message);
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BAR_TEMPLATE;

    #[test]
    fn the_progress_bar_prints_its_message_once() {
        assert_eq!(BAR_TEMPLATE.matches("msg}").count(), 1);
        indicatif::ProgressStyle::with_template(BAR_TEMPLATE).expect("a valid template");
    }
}
