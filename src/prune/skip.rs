//! Which tensors stay uncompressed: [`SkipRules`] and the one tensor-name pattern language
//! every part of the crate (the [`Pipeline`](super::Pipeline), the CLI's `--skip`) uses.
//!
//! # Patterns
//!
//! - A pattern without wildcards matches any name that **contains** it:
//!   `embed` matches `model.embed_tokens.weight`.
//! - A pattern with wildcards (`*` any run of characters, also empty; `?` exactly one
//!   character) must match the **whole name or a whole dot-separated tail** of it:
//!   `embed*` matches `model.embed_tokens.weight` (through the tail
//!   `embed_tokens.weight`) but not `model.unembed.weight`; `*.bias` matches `fc.bias` but
//!   not `fc.bias.extra`; `layers.?.attn*` matches `model.layers.3.attn.q.weight`.
//!
//! ```
//! use candle_compress::prune::name_matches;
//!
//! assert!(name_matches("embed", "model.embed_tokens.weight"));
//! assert!(name_matches("embed*", "model.embed_tokens.weight"));
//! assert!(!name_matches("embed*", "model.unembed.weight"));
//! assert!(name_matches("*.bias", "encoder.fc.bias"));
//! assert!(!name_matches("*.bias", "encoder.fc.bias.extra"));
//! assert!(name_matches("lm_head*", "model.lm_head.weight"));
//! ```

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// Name patterns that usually stay uncompressed in transformers: embeddings, norms and
/// the output head. Use with [`Pipeline::skip_names`](super::Pipeline::skip_names).
pub const TRANSFORMER_SKIPS: [&str; 3] = ["*embed*", "*norm*", "lm_head*"];

/// Which tensors a pipeline leaves alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkipRules {
    /// Name patterns (see the [module docs](self)); a tensor matching any of them is
    /// skipped.
    pub name_patterns: Vec<String>,
    /// Tensors of rank below this are skipped (default 2: biases and norm weights).
    pub min_rank: usize,
}

impl Default for SkipRules {
    fn default() -> Self {
        Self {
            name_patterns: Vec::new(),
            min_rank: 2,
        }
    }
}

impl SkipRules {
    /// Rules that skip the names matching any of `patterns`, and nothing by rank.
    #[must_use]
    pub fn names<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> Self {
        Self {
            name_patterns: patterns
                .into_iter()
                .map(|p| p.as_ref().to_string())
                .collect(),
            min_rank: 0,
        }
    }

    /// The first pattern that `name` matches, if any.
    #[must_use]
    pub fn matching_pattern(&self, name: &str) -> Option<&str> {
        self.name_patterns
            .iter()
            .map(String::as_str)
            .find(|p| name_matches(p, name))
    }

    /// Why `name` (of `rank` and `dtype`) is skipped, or `None` when it is processed.
    #[must_use]
    pub fn reason(&self, name: &str, rank: usize, dtype: DType) -> Option<String> {
        if let Some(p) = self.matching_pattern(name) {
            return Some(format!("name matches {p:?}"));
        }
        if rank < self.min_rank {
            return Some(format!("rank {rank} < {}", self.min_rank));
        }
        if crate::input::ensure_float(dtype, "pipeline").is_err() {
            return Some(format!("dtype {dtype:?} is not a float"));
        }
        None
    }
}

/// Whether tensor name `name` matches `pattern` (the rules are in the [module docs](self)).
#[must_use]
pub fn name_matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return name.contains(pattern);
    }
    let tails = std::iter::once(name).chain(name.match_indices('.').map(|(i, _)| &name[i + 1..]));
    let p: Vec<char> = pattern.chars().collect();
    tails.into_iter().any(|tail| glob_match(&p, tail))
}

/// `*` matches any run (also empty), `?` exactly one character; everything else literally;
/// the whole of `name` must match.
fn glob_match(p: &[char], name: &str) -> bool {
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with backtracking to the last star: O(|p|·|n|) worst case.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_patterns_match_substrings() {
        assert!(name_matches("embed", "model.embed_tokens.weight"));
        assert!(name_matches(
            "norm",
            "model.layers.0.input_layernorm.weight"
        ));
        assert!(!name_matches("embed", "model.layers.0.mlp.weight"));
    }

    #[test]
    fn wildcard_patterns_match_the_name_or_a_dotted_tail() {
        assert!(name_matches("embed*", "model.embed_tokens.weight"));
        assert!(name_matches("embed*", "embed_tokens.weight"));
        assert!(!name_matches("embed*", "model.unembed.weight"));
        assert!(name_matches("*.bias", "fc.bias"));
        assert!(!name_matches("*.bias", "fc.bias.x"));
        assert!(name_matches("model.*.weight", "model.layers.0.weight"));
        assert!(name_matches(
            "layers.?.attn*",
            "model.layers.3.attn.q.weight"
        ));
        assert!(!name_matches(
            "layers.?.attn*",
            "model.layers.13.attn.q.weight"
        ));
        assert!(name_matches("a*b*c", "axxbyyc"));
        assert!(!name_matches("a*b*c", "axxcyyb"));
        assert!(name_matches("*", "anything"));
        assert!(name_matches("lm_head*", "model.lm_head.weight"));
        assert!(!name_matches("lm_head*", "model.not_lm_head.weight"));
    }

    #[test]
    fn whole_name_globs_still_match() {
        assert!(name_matches("*embed*", "model.embed_tokens.weight"));
        assert!(name_matches("lm_head*", "lm_head.weight"));
        assert!(name_matches("layers.?.mlp*", "layers.3.mlp.up.weight"));
        assert!(!name_matches("layers.?.mlp*", "layers.13.mlp.up.weight"));
        assert!(name_matches("*", ""));
        assert!(name_matches("a*b*c", "aXXbYYbc"));
        assert!(!name_matches("a*b*c", "aXXbYYb"));
    }

    #[test]
    fn rules_name_the_matching_pattern() {
        let r = SkipRules::names(["*norm*", "embed"]);
        assert_eq!(
            r.matching_pattern("model.embed_tokens.weight"),
            Some("embed")
        );
        assert_eq!(r.matching_pattern("fc.weight"), None);
        assert_eq!(
            r.reason("ln.norm.weight", 2, DType::F32).as_deref(),
            Some("name matches \"*norm*\"")
        );
    }
}
