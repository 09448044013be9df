//! Compact, self-describing wire formats for activations sent between pipeline stages.
//!
//! [`ActivationCodec`] turns a float tensor into bytes (`encode`) and back (`decode`). The
//! bytes carry a header (magic, version, codec, dtype, shape), so the receiver needs
//! nothing else; decoding validates every field and never panics on untrusted input
//! (covered by property tests and a cargo-fuzz target, `fuzz/fuzz_targets/codec_decode.rs`).
//!
//! | codec | bytes per element | loss |
//! |---|---|---|
//! | `None` | dtype size | none |
//! | `F16` / `BF16` | 2 | round to nearest even |
//! | `Int8PerRow` | 1 (+4 per row) | ≤ scale/2 per element |
//! | `SparseColumns { keep }` | 4·keep/cols (+4 per kept column) | other columns zeroed |
//! | `SparseColumnsF16 { keep }` | 2·keep/cols (+4 per kept column) | both of the above |

pub mod activation;

pub use activation::{
    top_k_columns, ActivationCodec, ActivationHeader, MAGIC, MAX_ELEMENTS, MAX_RANK, VERSION,
};
