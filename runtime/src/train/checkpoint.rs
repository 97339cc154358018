//! Checkpoints: one safetensors file holding the weights, the AdamW moments and, in its
//! metadata, the step counters, the run's configuration, what it trains on, and a SHA-256
//! over all of it. Written atomically (see [`crate::atomic`]), so a crash or a `kill -9` at
//! any moment leaves the previous checkpoint intact; read back only if the checksum holds,
//! so flipped bytes are an error, not a silently different run. Metadata is written in key
//! order, so identical runs give byte-identical checkpoints.

use crate::weights::{self, Storage, Weight, Weights};
use hyb_compiler::reference::Tensor;
use sha2::Digest;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The prefix every hyb checkpoint format tag starts with.
pub const FORMAT_FAMILY: &str = "hyb-checkpoint/";
pub const FORMAT: &str = "hyb-checkpoint/2";
/// The checkpoint's name in a run directory.
pub const FILE: &str = "checkpoint.safetensors";

/// Everything needed to continue a run exactly where it stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// Steps taken (the next step's index).
    pub step: u64,
    /// Updates applied (steps minus skipped non-finite ones): Adam's bias-correction count.
    pub applied: u64,
    pub skipped: u64,
    pub params: BTreeMap<String, Tensor<f32>>,
    pub m: BTreeMap<String, Tensor<f32>>,
    pub v: BTreeMap<String, Tensor<f32>>,
}

/// A checkpoint read back: the state, and the run's configuration and identity (JSON).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub state: State,
    pub config: String,
    pub identity: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Weights(#[from] weights::WeightsError),
    #[error("{path} is not a hyb checkpoint: {reason}")]
    Invalid { path: String, reason: String },
}

/// The checkpoint of a run directory, or the path itself when it names a file.
pub fn path_in(run: &Path) -> PathBuf {
    if run.is_dir() {
        run.join(FILE)
    } else {
        run.to_path_buf()
    }
}

fn weight(t: &Tensor<f32>) -> Weight {
    Weight { tensor: Tensor::new(t.shape.clone(), t.data.iter().map(|&x| x as f64).collect()), storage: Storage::F32 }
}

/// SHA-256 over the tensors and every metadata entry but the checksum itself.
fn checksum(all: &Weights, meta: &BTreeMap<String, String>) -> String {
    let mut h = sha2::Sha256::new();
    h.update(weights::digest(all));
    for (k, v) in meta.iter().filter(|(k, _)| *k != "sha256") {
        for part in [k, v] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    weights::hex(&h.finalize())
}

/// Writes the checkpoint; `config` and `identity` are the run's (JSON).
pub fn save(path: &Path, state: &State, config: &str, identity: &str) -> Result<(), CheckpointError> {
    let mut all = Weights::new();
    for (prefix, map) in [("param", &state.params), ("m", &state.m), ("v", &state.v)] {
        for (k, t) in map {
            all.insert(format!("{prefix}.{k}"), weight(t));
        }
    }
    let mut meta = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("step".to_string(), state.step.to_string()),
        ("applied".to_string(), state.applied.to_string()),
        ("skipped".to_string(), state.skipped.to_string()),
        ("config".to_string(), config.to_string()),
        ("identity".to_string(), identity.to_string()),
    ]);
    meta.insert("sha256".into(), checksum(&all, &meta));
    weights::save(path, &all, &meta)?;
    Ok(())
}

/// The metadata alone, read from the file's header without its tensors.
pub fn metadata(path: &Path) -> Result<BTreeMap<String, String>, CheckpointError> {
    let invalid = |reason: String| CheckpointError::Invalid { path: path.display().to_string(), reason };
    let read = |error| weights::WeightsError::Read { path: path.display().to_string(), error };
    let mut file = std::fs::File::open(path).map_err(read)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| invalid("shorter than a safetensors header".into()))?;
    let len = u64::from_le_bytes(len);
    let file_len = file.metadata().map_err(read)?.len();
    if len > file_len.saturating_sub(8) {
        return Err(invalid(format!("its header claims {len} bytes but the file holds {file_len}")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(read)?;
    let parsed: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| invalid(format!("unreadable header: {e}")))?;
    let meta: BTreeMap<String, String> = serde_json::from_value(parsed["__metadata__"].clone()).unwrap_or_default();
    check_format(&meta).map_err(invalid)?;
    Ok(meta)
}

fn check_format(meta: &BTreeMap<String, String>) -> Result<(), String> {
    match meta.get("format").map(String::as_str) {
        Some(FORMAT) => Ok(()),
        Some(f) if f.starts_with(FORMAT_FAMILY) => Err(format!(
            "it is in format `{f}` (an older hyb, without checksum or run identity); this hyb reads `{FORMAT}`"
        )),
        _ => Err("missing the checkpoint format tag".into()),
    }
}

/// Reads a checkpoint; a truncated, foreign or damaged file is an error that says so.
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| weights::WeightsError::Read { path: shown.clone(), error })?;
    decode(&shown, &bytes)
}

/// Decodes a checkpoint held in memory; `shown` names it in errors.
pub fn decode(shown: &str, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let invalid = |reason: String| CheckpointError::Invalid { path: shown.to_string(), reason };
    let (all, meta) = weights::parse(shown, bytes)?;
    check_format(&meta).map_err(invalid)?;
    if meta.get("sha256") != Some(&checksum(&all, &meta)) {
        return Err(invalid("its checksum does not match its contents: the file is damaged".into()));
    }
    let number =
        |k: &str| meta.get(k).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| invalid(format!("missing `{k}`")));
    let text = |k: &str| meta.get(k).cloned().ok_or_else(|| invalid(format!("missing `{k}`")));
    let mut state = State {
        step: number("step")?,
        applied: number("applied")?,
        skipped: number("skipped")?,
        params: BTreeMap::new(),
        m: BTreeMap::new(),
        v: BTreeMap::new(),
    };
    for (name, w) in all {
        let t = Tensor::new(w.tensor.shape, w.tensor.data.iter().map(|&x| x as f32).collect());
        let (prefix, rest) = name.split_once('.').ok_or_else(|| invalid(format!("unexpected tensor `{name}`")))?;
        let map = match prefix {
            "param" => &mut state.params,
            "m" => &mut state.m,
            "v" => &mut state.v,
            _ => return Err(invalid(format!("unexpected tensor `{name}`"))),
        };
        map.insert(rest.to_string(), t);
    }
    Ok(Checkpoint { state, config: text("config")?, identity: text("identity")? })
}

/// The model weights of a checkpoint (a run directory or its checkpoint file), as a
/// weights file would hold them.
pub fn load_weights(run: &Path) -> Result<Weights, CheckpointError> {
    let ckpt = load(&path_in(run))?;
    Ok(ckpt.state.params.iter().map(|(k, t)| (k.clone(), weight(t))).collect())
}
