//! Text in and out of generation through a Hugging Face `tokenizer.json`, checked against
//! the model's vocabulary, and the end-of-sequence ids of a Hugging Face
//! `generation_config.json`.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: String, message: String },
    #[error(
        "tokenizer {path} has {tokenizer} tokens but the model's vocabulary has {model}: it is not this model's tokenizer"
    )]
    Vocab { path: String, tokenizer: usize, model: usize },
    #[error("cannot tokenize the prompt: {0}")]
    Encode(String),
    #[error("cannot turn the generated ids into text: {0}")]
    Decode(String),
    #[error("cannot read {path}: {message}")]
    Config { path: String, message: String },
}

/// A tokenizer that fits a model of `vocab` tokens.
pub struct Text {
    tokenizer: tokenizers::Tokenizer,
}

impl Text {
    /// Loads `path`; refuses a tokenizer with more tokens (added ones included) than the
    /// model has rows — its ids would fall outside the embedding. Fewer is fine: models pad
    /// their vocabulary.
    pub fn load(path: &Path, vocab: usize) -> Result<Text, TextError> {
        let shown = path.display().to_string();
        let tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TextError::Load { path: shown.clone(), message: e.to_string() })?;
        let size = tokenizer.get_vocab_size(true);
        if size > vocab {
            return Err(TextError::Vocab { path: shown, tokenizer: size, model: vocab });
        }
        Ok(Text { tokenizer })
    }

    /// The prompt's ids, with the special tokens the tokenizer adds (as `tokenizer(text)`
    /// in transformers).
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>, TextError> {
        let e = self.tokenizer.encode(prompt, true).map_err(|e| TextError::Encode(e.to_string()))?;
        Ok(e.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        self.tokenizer.decode(ids, true).map_err(|e| TextError::Decode(e.to_string()))
    }
}

/// The `eos_token_id` (one id or a list) of a `generation_config.json`; empty when it has
/// none.
pub fn eos_ids(path: &Path) -> Result<Vec<u32>, TextError> {
    let fail = |message: String| TextError::Config { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let id = |x: &serde_json::Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| fail(format!("eos_token_id {x} is not a token id")))
    };
    match v.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(xs)) => xs.iter().map(id).collect(),
        Some(x) => Ok(vec![id(x)?]),
    }
}
