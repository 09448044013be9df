//! The tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`), rebuilt with the
//! `tokenizers` crate: GPT-2 byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
//!
//! - vocabulary: `tokenizer.ggml.tokens` (id = position), merges:
//!   `tokenizer.ggml.merges` (`"a b"`, highest priority first);
//! - pre-tokenization as llama.cpp does for the pre-tokenizer name in
//!   `tokenizer.ggml.pre`: for `smollm` (and the other names llama.cpp treats alike) every
//!   digit is split off first, then the GPT-2 regex and byte-to-unicode mapping; for
//!   `default` / `gpt2` only the latter;
//! - control tokens (`tokenizer.ggml.token_type` 3, e.g. `<|im_start|>`) are special
//!   tokens: matched whole in the input, never split by BPE.

use candle_compress::io::gguf_reader::GgufFile;
use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The GGUF tokenizer and its special ids.
pub struct GgufTokenizer {
    /// The `tokenizers` tokenizer.
    pub tokenizer: Tokenizer,
    /// `tokenizer.ggml.eos_token_id`, if present.
    pub eos: Option<u32>,
}

/// llama.cpp pre-tokenizer names that split digits one by one before the GPT-2 regex.
const DIGIT_SPLIT: [&str; 4] = ["smollm", "starcoder", "refact", "codeshell"];

impl GgufTokenizer {
    /// Builds the tokenizer from `file`'s metadata.
    pub fn from_gguf(file: &GgufFile) -> AnyResult<Self> {
        let model = file.metadata_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(format!(
                "tokenizer.ggml.model is {model:?}; only \"gpt2\" (byte-level BPE) is supported"
            )
            .into());
        }
        let pre = file.metadata_str("tokenizer.ggml.pre").unwrap_or("default");
        let tokens = file.metadata_strings("tokenizer.ggml.tokens")?;
        let merges = file.metadata_strings("tokenizer.ggml.merges")?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| format!("merge {m:?} is not \"a b\""))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build()?;
        let mut tokenizer = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tok: PreTokenizerWrapper = if DIGIT_SPLIT.contains(&pre) {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else if pre == "default" || pre == "gpt2" {
            byte_level.into()
        } else {
            return Err(format!("tokenizer.ggml.pre {pre:?} is not supported").into());
        };
        tokenizer.with_pre_tokenizer(Some(pre_tok));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        if let Ok(Value::Array(types)) = file.metadata_value("tokenizer.ggml.token_type") {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(ty, _)| matches!(ty, Value::I32(3)))
                .map(|(_, t)| AddedToken::from(t.to_string(), true))
                .collect();
            tokenizer.add_special_tokens(special)?;
        }
        let eos = file
            .metadata_u64("tokenizer.ggml.eos_token_id")
            .ok()
            .map(|e| e as u32);
        Ok(Self { tokenizer, eos })
    }

    /// Token ids of `text` (special tokens in the text are recognised).
    pub fn encode(&self, text: &str) -> AnyResult<Vec<u32>> {
        Ok(self.tokenizer.encode(text, false)?.get_ids().to_vec())
    }

    /// Text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> AnyResult<String> {
        self.tokenizer.decode(ids, false)
    }
}
