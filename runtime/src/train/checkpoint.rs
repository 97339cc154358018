//! Checkpoints: one safetensors file holding the weights, the AdamW moments and, in its
//! metadata, the step counters and the run's configuration. Written atomically (temporary
//! file, fsync, rename), so a crash or a `kill -9` at any moment leaves the previous
//! checkpoint intact.

use crate::weights::{self, Storage, Weight, Weights};
use hyb_compiler::reference::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const FORMAT: &str = "hyb-checkpoint/1";

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

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Weights(#[from] weights::WeightsError),
    #[error("{path} is not a hyb checkpoint: {reason}")]
    Invalid { path: String, reason: String },
}

fn weight(t: &Tensor<f32>) -> Weight {
    Weight { tensor: Tensor::new(t.shape.clone(), t.data.iter().map(|&x| x as f64).collect()), storage: Storage::F32 }
}

/// Writes the checkpoint; `config` is the run's configuration (JSON).
pub fn save(path: &Path, state: &State, config: &str) -> Result<(), CheckpointError> {
    let mut all = Weights::new();
    for (prefix, map) in [("param", &state.params), ("m", &state.m), ("v", &state.v)] {
        for (k, t) in map {
            all.insert(format!("{prefix}.{k}"), weight(t));
        }
    }
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("step".to_string(), state.step.to_string()),
        ("applied".to_string(), state.applied.to_string()),
        ("skipped".to_string(), state.skipped.to_string()),
        ("config".to_string(), config.to_string()),
    ]);
    weights::save(path, &all, Some(meta))?;
    Ok(())
}

/// Reads a checkpoint and its stored configuration; a truncated, foreign or damaged file is
/// an error that says so.
pub fn load(path: &Path) -> Result<(State, String), CheckpointError> {
    let invalid = |reason: String| CheckpointError::Invalid { path: path.display().to_string(), reason };
    let bytes =
        std::fs::read(path).map_err(|error| weights::WeightsError::Read { path: path.display().to_string(), error })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(invalid("missing the checkpoint format tag".into()));
    }
    let number =
        |k: &str| meta.get(k).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| invalid(format!("missing `{k}`")));
    let mut state = State {
        step: number("step")?,
        applied: number("applied")?,
        skipped: number("skipped")?,
        params: BTreeMap::new(),
        m: BTreeMap::new(),
        v: BTreeMap::new(),
    };
    for (name, w) in weights::load(path)? {
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
    let config = meta.get("config").cloned().ok_or_else(|| invalid("missing `config`".into()))?;
    Ok((state, config))
}
