//! The human-readable output: each command's JSON report printed as a table on stdout
//! (what `--json` prints instead is the report itself).

use std::io::Write;

use serde_json::Value;

use crate::args::Command;

/// `bytes` in B, KiB, MiB or GiB.
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

/// A JSON number as `u64` (0 when absent).
fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Prints the report of `command` as a table on stdout.
pub(crate) fn print_table(command: &Command, report: &Value) -> std::io::Result<()> {
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
    // The name column: as wide as the longest tensor name, at least 6.
    let width = tensors
        .iter()
        .map(|t| t["name"].as_str().map_or(0, str::len))
        .max()
        .unwrap_or(4)
        .max(6);
    match command {
        Command::Quantize { .. } | Command::Inspect { .. } => {
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
