//! Running the `candle-compress` binary (built only with the `cli` feature).

use std::process::{Command, Output};

use serde_json::Value;

/// The binary Cargo built for this test run, not yet started.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_candle-compress"))
}

/// Runs the binary with `args` to completion; panics only if it cannot be started.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON the run printed on stdout; panics (showing stderr or stdout) when the run
/// failed or stdout is not JSON.
pub fn json_of(o: &Output) -> Value {
    assert!(o.status.success(), "failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}
