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

mod args;
mod eval;
mod export_gguf;
mod failure;
mod guards;
mod inspect;
mod progress;
mod prune;
mod quantize;
mod signal;
mod table;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use serde_json::{json, Value};

use crate::args::{Cli, Command};
use crate::eval::eval;
use crate::export_gguf::export_gguf;
use crate::failure::CliResult;
use crate::inspect::inspect;
use crate::prune::{prune, PruneArgs};
use crate::quantize::quantize;
use crate::signal::remove_partial_output_on_signal;
use crate::table::print_table;

/// Runs the parsed command; its report is printed by `main`.
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
