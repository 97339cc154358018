//! Training data. Every batch is a pure function of (seed, split, step), so a resumed run
//! sees exactly the batches it would have seen, and evaluation data never overlaps training
//! data.

use super::rng::Rng;
use std::path::{Path, PathBuf};

/// One batch: `ids` and next-token `targets` `[B, T]`, and the weight of each position's
/// loss (summing to one over the batch); from packed data, each token's place in its
/// document (`positions`, 0 where a document or a row starts).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    pub weights: Vec<f64>,
    pub positions: Option<Vec<u32>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Eval,
}

/// Multi-query associative recall (Zoology's MQAR): key-value pairs, then queries of some of
/// the keys; the model must answer each query with its value. Keys come from the lower half
/// of the vocabulary, values from the upper half; only answers count towards the loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Mqar {
    pub vocab: usize,
    pub pairs: usize,
}

#[derive(Clone, Debug)]
pub enum Source {
    Mqar(Mqar),
    /// A token stream (bytes of a text file, or ids of a binary token file); the last tenth
    /// is held out for evaluation.
    Tokens {
        tokens: Vec<u32>,
        vocab: usize,
        /// Where the tokens came from.
        origin: DataSpec,
        /// Packed data: where each document starts in `tokens` (increasing, 0 first).
        documents: Option<Vec<usize>>,
    },
}

/// How packed data marks its documents.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Packing {
    /// An end-of-document token id: it ends its document, the next token starts one.
    Eod { id: u32 },
    /// A text file of document lengths in tokens, in order, summing to the stream's length.
    Lengths { path: PathBuf },
}

impl std::fmt::Display for Packing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Packing::Eod { id } => write!(f, "documents ended by token {id}"),
            Packing::Lengths { path } => write!(f, "documents of the lengths in {}", path.display()),
        }
    }
}

/// Where a run's data comes from, as stored in its checkpoint so that a resumed run reads
/// the same data. Paths are absolute, so a run resumes from any working directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSpec {
    Mqar {
        pairs: usize,
    },
    Text {
        path: PathBuf,
    },
    TokenizedText {
        path: PathBuf,
        tokenizer: PathBuf,
    },
    TokenFile {
        path: PathBuf,
        token_bytes: usize,
    },
    /// Tokens given in memory (tests).
    InMemory,
    /// Another token source whose rows are packed with whole documents (`hyb train --pack`).
    Packed {
        of: Box<DataSpec>,
        documents: Packing,
    },
}

impl std::fmt::Display for DataSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSpec::Mqar { pairs } => write!(f, "MQAR with {pairs} pairs"),
            DataSpec::Text { path } => write!(f, "the bytes of {}", path.display()),
            DataSpec::TokenizedText { path, tokenizer } => {
                write!(f, "{} tokenized with {}", path.display(), tokenizer.display())
            }
            DataSpec::TokenFile { path, token_bytes } => {
                write!(f, "the {token_bytes}-byte token ids of {}", path.display())
            }
            DataSpec::InMemory => f.write_str("tokens given in memory"),
            DataSpec::Packed { of, documents } => write!(f, "{of}, packed ({documents})"),
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf, DataError> {
    std::fs::canonicalize(path).map_err(|error| DataError::Read { path: path.display().to_string(), error })
}

impl DataSpec {
    /// The same data with every path made absolute (the files must exist).
    pub fn absolute(self) -> Result<DataSpec, DataError> {
        Ok(match self {
            DataSpec::Text { path } => DataSpec::Text { path: absolute(&path)? },
            DataSpec::TokenizedText { path, tokenizer } => {
                DataSpec::TokenizedText { path: absolute(&path)?, tokenizer: absolute(&tokenizer)? }
            }
            DataSpec::TokenFile { path, token_bytes } => DataSpec::TokenFile { path: absolute(&path)?, token_bytes },
            DataSpec::Packed { of, documents } => DataSpec::Packed {
                of: Box::new(of.absolute()?),
                documents: match documents {
                    Packing::Lengths { path } => Packing::Lengths { path: absolute(&path)? },
                    eod => eod,
                },
            },
            other => other,
        })
    }

    /// Reads the data; `vocab` is the model's vocabulary (MQAR draws from all of it).
    pub fn open(&self, vocab: usize) -> Result<Source, DataError> {
        match self {
            DataSpec::Mqar { pairs } => Ok(Source::Mqar(Mqar { vocab, pairs: *pairs })),
            DataSpec::Text { path } => Source::text(path),
            DataSpec::TokenizedText { path, tokenizer } => Source::tokenized_text(path, tokenizer),
            DataSpec::TokenFile { path, token_bytes } => Source::token_file(path, *token_bytes),
            DataSpec::InMemory => Err(DataError::Invalid("tokens given in memory cannot be read again".into())),
            DataSpec::Packed { of, documents } => of.open(vocab)?.packed(documents),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

impl Source {
    /// A UTF-8 text file as bytes (vocabulary 256).
    pub fn text(path: &Path) -> Result<Source, DataError> {
        let bytes = std::fs::read(path).map_err(|error| DataError::Read { path: path.display().to_string(), error })?;
        std::str::from_utf8(&bytes).map_err(|e| {
            DataError::Invalid(format!("{} is not UTF-8 text (byte {})", path.display(), e.valid_up_to()))
        })?;
        let origin = DataSpec::Text { path: path.to_path_buf() };
        Ok(Source::Tokens { tokens: bytes.into_iter().map(u32::from).collect(), vocab: 256, origin, documents: None })
    }

    /// A UTF-8 text file tokenized with a Hugging Face `tokenizer.json`.
    pub fn tokenized_text(path: &Path, tokenizer: &Path) -> Result<Source, DataError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| DataError::Read { path: path.display().to_string(), error })?;
        let tok = tokenizers::Tokenizer::from_file(tokenizer)
            .map_err(|e| DataError::Invalid(format!("cannot load tokenizer {}: {e}", tokenizer.display())))?;
        let encoding = tok
            .encode(text, false)
            .map_err(|e| DataError::Invalid(format!("cannot tokenize {}: {e}", path.display())))?;
        let origin = DataSpec::TokenizedText { path: path.to_path_buf(), tokenizer: tokenizer.to_path_buf() };
        Ok(Source::Tokens {
            tokens: encoding.get_ids().to_vec(),
            vocab: tok.get_vocab_size(true),
            origin,
            documents: None,
        })
    }

    /// A pre-tokenized file of little-endian u16 or u32 ids.
    pub fn token_file(path: &Path, width: usize) -> Result<Source, DataError> {
        if width != 2 && width != 4 {
            return Err(DataError::Invalid(format!("token ids are 2 or 4 bytes wide, not {width}")));
        }
        let bytes = std::fs::read(path).map_err(|error| DataError::Read { path: path.display().to_string(), error })?;
        if bytes.len() % width != 0 {
            return Err(DataError::Invalid(format!(
                "{} has {} bytes, not a whole number of {width}-byte ids",
                path.display(),
                bytes.len()
            )));
        }
        let tokens: Vec<u32> = match width {
            2 => bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect(),
            _ => bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect(),
        };
        let vocab = tokens.iter().max().map_or(0, |m| *m as usize + 1);
        Ok(Source::Tokens {
            tokens,
            vocab,
            origin: DataSpec::TokenFile { path: path.to_path_buf(), token_bytes: width },
            documents: None,
        })
    }

    /// The same tokens with their documents marked as `packing` says, so that batches pack
    /// whole documents into rows (each token's place in its document in `positions`).
    pub fn packed(self, packing: &Packing) -> Result<Source, DataError> {
        let Source::Tokens { tokens, vocab, origin, documents: None } = self else {
            return Err(DataError::Invalid(
                "only token data (--data FILE) can be packed: MQAR sequences are generated one per row".into(),
            ));
        };
        let starts = match packing {
            Packing::Eod { id } => {
                let ends = tokens.iter().enumerate().filter(|&(_, t)| t == id).map(|(i, _)| i + 1);
                std::iter::once(0).chain(ends.filter(|&s| s < tokens.len())).collect()
            }
            Packing::Lengths { path } => lengths(path, tokens.len())?,
        };
        let origin = DataSpec::Packed { of: Box::new(origin), documents: packing.clone() };
        Ok(Source::Tokens { tokens, vocab, origin, documents: Some(starts) })
    }

    /// Whether batches hold packed documents (and so carry positions).
    pub fn packs(&self) -> bool {
        matches!(self, Source::Tokens { documents: Some(_), .. })
    }

    /// Where the data came from.
    pub fn spec(&self) -> DataSpec {
        match self {
            Source::Mqar(m) => DataSpec::Mqar { pairs: m.pairs },
            Source::Tokens { origin, .. } => origin.clone(),
        }
    }

    /// A SHA-256 of what the data yields: the token stream, or the MQAR task's parameters.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        match self {
            Source::Mqar(m) => h.update(format!("mqar vocab {} pairs {}", m.vocab, m.pairs)),
            Source::Tokens { tokens, vocab, documents, .. } => {
                h.update(format!("tokens vocab {vocab}"));
                for t in tokens {
                    h.update(t.to_le_bytes());
                }
                if let Some(starts) = documents {
                    h.update(format!("documents {}", starts.len()));
                    for s in starts {
                        h.update((*s as u64).to_le_bytes());
                    }
                }
            }
        }
        crate::weights::hex(&h.finalize())
    }

    /// Largest token id + 1 that the data can produce.
    pub fn vocab(&self) -> usize {
        match self {
            Source::Mqar(m) => m.vocab,
            Source::Tokens { vocab, .. } => *vocab,
        }
    }

    pub fn batch(&self, seed: u64, split: Split, step: u64, batch: usize, seq: usize) -> Result<Batch, DataError> {
        let mut rng = Rng::for_step(seed, if split == Split::Train { 1 } else { 2 }, step);
        match self {
            Source::Mqar(m) => m.batch(&mut rng, batch, seq),
            Source::Tokens { tokens, documents, .. } => {
                let held = tokens.len() / 10;
                let (lo, hi) = match split {
                    Split::Train => (0, tokens.len() - held),
                    Split::Eval => (tokens.len() - held, tokens.len()),
                };
                if hi - lo < seq + 1 {
                    return Err(DataError::Invalid(format!(
                        "the {split:?} split has {} tokens, too few for sequences of {seq}",
                        hi - lo
                    )));
                }
                let mut b = Batch {
                    batch,
                    seq,
                    ids: vec![],
                    targets: vec![],
                    weights: vec![1.0 / (batch * seq) as f64; batch * seq],
                    positions: documents.as_ref().map(|_| Vec::with_capacity(batch * seq)),
                };
                let mut counted = Vec::with_capacity(batch * seq);
                for _ in 0..batch {
                    let start = lo + rng.below((hi - lo - seq) as u64) as usize;
                    b.ids.extend_from_slice(&tokens[start..start + seq]);
                    b.targets.extend_from_slice(&tokens[start + 1..start + seq + 1]);
                    if let (Some(starts), Some(positions)) = (documents, b.positions.as_mut()) {
                        pack_row(starts, start, seq, positions, &mut counted);
                    }
                }
                if documents.is_some() {
                    // Only targets in their own document count (a document's last token
                    // would predict the next one's first), equally, summing to one.
                    let n = counted.iter().filter(|&&c| c).count();
                    for (w, &c) in b.weights.iter_mut().zip(&counted) {
                        *w = if c { 1.0 / n as f64 } else { 0.0 };
                    }
                }
                Ok(b)
            }
        }
    }
}

/// Appends the places in their documents of tokens `start .. start + seq` (a document's
/// first token is 0, and so is the row's first: a document cut by the row starts there),
/// and whether each token's target, the token after it, is in its document.
fn pack_row(starts: &[usize], start: usize, seq: usize, positions: &mut Vec<u32>, counted: &mut Vec<bool>) {
    let is_start = |t: usize| starts.binary_search(&t).is_ok();
    let mut from = start;
    for t in start..start + seq {
        if is_start(t) {
            from = t;
        }
        positions.push((t - from) as u32);
        counted.push(!is_start(t + 1));
    }
}

/// Document starts from a file of lengths (whitespace-separated positive integers) that
/// sum to `total` tokens.
fn lengths(path: &Path, total: usize) -> Result<Vec<usize>, DataError> {
    let text =
        std::fs::read_to_string(path).map_err(|error| DataError::Read { path: path.display().to_string(), error })?;
    let mut starts = Vec::new();
    let mut at = 0usize;
    for (k, word) in text.split_whitespace().enumerate() {
        let n: usize = word.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
            DataError::Invalid(format!(
                "{}: length {} is `{word}`, not a positive whole number of tokens",
                path.display(),
                k + 1
            ))
        })?;
        starts.push(at);
        at = at.checked_add(n).filter(|&a| a <= total).ok_or_else(|| {
            DataError::Invalid(format!(
                "{}: the first {} lengths already sum past the data's {total} tokens",
                path.display(),
                k + 1
            ))
        })?;
    }
    if at != total {
        return Err(DataError::Invalid(format!(
            "{}: the lengths sum to {at} tokens but the data has {total}",
            path.display()
        )));
    }
    Ok(starts)
}

impl Mqar {
    /// Each of `pairs` distinct keys comes from the lower half of the vocabulary (without
    /// id 0), and a sequence holds every pair and at least one query.
    fn validate(&self, seq: usize) -> Result<(), DataError> {
        let p = self.pairs;
        if p == 0 {
            return Err(DataError::Invalid("MQAR needs at least one key-value pair per sequence".into()));
        }
        let vocab_needed = p.saturating_mul(2).saturating_add(2);
        if self.vocab < vocab_needed {
            return Err(DataError::Invalid(format!(
                "MQAR with {p} pairs draws {p} distinct keys from the lower half of the vocabulary, so it needs a vocabulary of at least {vocab_needed}; the model's is {}",
                self.vocab
            )));
        }
        let seq_needed = p.saturating_mul(2).saturating_add(1);
        if seq < seq_needed {
            return Err(DataError::Invalid(format!(
                "MQAR with {p} pairs needs sequences of at least {seq_needed} tokens (the pairs and one query); --seq is {seq}"
            )));
        }
        Ok(())
    }

    fn batch(&self, rng: &mut Rng, batch: usize, seq: usize) -> Result<Batch, DataError> {
        self.validate(seq)?;
        let half = self.vocab / 2;
        let mut b = Batch { batch, seq, ids: vec![], targets: vec![], weights: vec![], positions: None };
        let mut answers = 0usize;
        for _ in 0..batch {
            // Distinct keys in [1, half), values in [half, vocab).
            let mut keys: Vec<u32> = Vec::with_capacity(self.pairs);
            while keys.len() < self.pairs {
                let k = 1 + rng.below(half as u64 - 1) as u32;
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            let values: Vec<u32> =
                (0..self.pairs).map(|_| half as u32 + rng.below((self.vocab - half) as u64) as u32).collect();
            let mut seqv: Vec<u32> = Vec::with_capacity(seq + 1);
            for (k, v) in keys.iter().zip(&values) {
                seqv.extend([*k, *v]);
            }
            let mut query_at = Vec::new();
            while seqv.len() + 2 <= seq + 1 {
                let q = rng.below(self.pairs as u64) as usize;
                query_at.push(seqv.len());
                seqv.extend([keys[q], values[q]]);
            }
            seqv.resize(seq + 1, 0);
            let mut w = vec![0.0; seq];
            for &p in &query_at {
                w[p] = 1.0;
            }
            answers += query_at.len();
            b.ids.extend_from_slice(&seqv[..seq]);
            b.targets.extend_from_slice(&seqv[1..]);
            b.weights.extend(w);
        }
        for w in &mut b.weights {
            *w /= answers as f64;
        }
        Ok(b)
    }
}
