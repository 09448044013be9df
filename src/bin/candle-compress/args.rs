//! The command line: clap's definitions of the global flags, the subcommands and their
//! arguments. Help texts, flag names and defaults live only here; each subcommand's
//! module receives the parsed values.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "candle-compress",
    version,
    about = "Compress safetensors checkpoints for candle on CPU"
)]
pub(crate) struct Cli {
    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Quantize every float tensor of rank >= 2 of a safetensors file.
    ///
    /// SCHEME is a tensor scheme (int8[:block], affine8[:group], affine4[:group],
    /// int4[:group], nf4[:block]; default size 64) or a layer scheme (w8a8, w4a8[:group],
    /// w4a8-asym[:group]) that turns every `<p>.weight` of rank 2 (with `<p>.bias`) into a
    /// QuantLinear.
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
pub(crate) enum GgufKind {
    /// GGML Q8_0 (int8 blocks of 32, f16 scale).
    #[value(name = "q8_0")]
    Q8_0,
    /// GGML Q4_0 (4-bit blocks of 32, f16 scale).
    #[value(name = "q4_0")]
    Q4_0,
}
