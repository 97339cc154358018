//! Named tensors in safetensors files. Values are held as float64 (every supported storage
//! type converts exactly), with the storage dtype kept so that a file can be written back
//! bit for bit.

use hyb_compiler::reference::Tensor;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} is not a valid safetensors file: {reason}")]
    Format { path: String, reason: String },
    #[error("tensor `{name}` in {path} has unsupported dtype {dtype:?}")]
    Dtype { path: String, name: String, dtype: Dtype },
    #[error("{path} is a training checkpoint (weights with the optimiser's state), not a weights file; `hyb export MODEL.hyb --weights {path} -o DIR` writes its weights as a Falcon-H1 checkpoint folder, which `hyb import` turns into hyb weights")]
    TrainingCheckpoint { path: String },
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
}

/// How a tensor is stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    F64,
    F32,
    BF16,
    F16,
}

impl Storage {
    /// The safetensors dtype name.
    fn name(self) -> &'static str {
        match self {
            Storage::F64 => "F64",
            Storage::F32 => "F32",
            Storage::BF16 => "BF16",
            Storage::F16 => "F16",
        }
    }
}

/// A named tensor and its storage type.
#[derive(Clone, Debug, PartialEq)]
pub struct Weight {
    pub tensor: Tensor<f64>,
    pub storage: Storage,
}

/// Tensors by name, in name order (so files are written deterministically).
pub type Weights = BTreeMap<String, Weight>;

/// Reads a weights file. A training checkpoint is refused with a hint: its tensors are
/// named for the trainer (`param.…`, `m.…`, `v.…`), not for a model.
pub fn load(path: &Path) -> Result<Weights, WeightsError> {
    let (weights, metadata) = read(path)?;
    if metadata.get("format").is_some_and(|f| f.starts_with(crate::train::checkpoint::FORMAT_FAMILY)) {
        return Err(WeightsError::TrainingCheckpoint { path: path.display().to_string() });
    }
    Ok(weights)
}

/// Reads every tensor of a safetensors file and its metadata.
pub fn read(path: &Path) -> Result<(Weights, BTreeMap<String, String>), WeightsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| WeightsError::Read { path: shown.clone(), error })?;
    parse(&shown, &bytes)
}

/// Decodes a safetensors file held in memory; `shown` names it in errors.
pub fn parse(shown: &str, bytes: &[u8]) -> Result<(Weights, BTreeMap<String, String>), WeightsError> {
    let format = |reason: String| WeightsError::Format { path: shown.to_string(), reason };
    validate_header(bytes).map_err(format)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
    let metadata: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let mut out = Weights::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let (storage, values): (Storage, Vec<f64>) = match view.dtype() {
            Dtype::F64 => {
                (Storage::F64, data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect())
            }
            Dtype::F32 => {
                (Storage::F32, data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect())
            }
            Dtype::BF16 => (
                Storage::BF16,
                data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            ),
            Dtype::F16 => {
                (Storage::F16, data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect())
            }
            dtype => return Err(WeightsError::Dtype { path: shown.to_string(), name, dtype }),
        };
        out.insert(name, Weight { tensor: Tensor::new(view.shape().to_vec(), values), storage });
    }
    Ok((out, metadata))
}

/// Checks every tensor's entry against the bytes it claims, so that an error names the
/// tensor at fault (the safetensors crate reports some of these without a name, or names
/// the tensor after the broken one).
fn validate_header(bytes: &[u8]) -> Result<(), String> {
    let len_bytes: [u8; 8] =
        bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or("the file is shorter than its 8-byte header length")?;
    let header_len = usize::try_from(u64::from_le_bytes(len_bytes)).unwrap_or(usize::MAX);
    let data_len = (bytes.len() - 8)
        .checked_sub(header_len)
        .ok_or_else(|| format!("its header claims {header_len} bytes but the file holds {}", bytes.len() - 8))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + header_len])
        .map_err(|e| format!("the header is not a JSON object: {e}"))?;
    for (name, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let Ok(entry) = serde_json::from_value::<Entry>(info.clone()) else {
            return Err(format!("tensor `{name}` has a malformed entry {info}"));
        };
        let elements = entry
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("tensor `{name}` has shape {:?}, too large to address", entry.shape))?;
        let [begin, end] = entry.data_offsets;
        if begin > end || end > data_len {
            return Err(format!(
                "tensor `{name}` has data offsets [{begin}, {end}] outside the file's {data_len} data bytes"
            ));
        }
        let bits = entry.dtype.bitsize();
        let want = elements.checked_mul(bits).map(|b| b.div_ceil(8));
        if want != Some(end - begin) {
            return Err(format!(
                "tensor `{name}` is {:?} of shape {:?} ({} bytes) but its offsets hold {} bytes",
                entry.dtype,
                entry.shape,
                want.map_or("too many".to_string(), |w| w.to_string()),
                end - begin
            ));
        }
    }
    Ok(())
}

/// One tensor's header entry.
#[derive(serde::Deserialize)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

fn encode(w: &Weight) -> Vec<u8> {
    let d = &w.tensor.data;
    match w.storage {
        Storage::F64 => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Storage::F32 => d.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
        Storage::BF16 => d.iter().flat_map(|&v| half::bf16::from_f64(v).to_le_bytes()).collect(),
        Storage::F16 => d.iter().flat_map(|&v| half::f16::from_f64(v).to_le_bytes()).collect(),
    }
}

/// The safetensors encoding of `weights`: tensors in name order, metadata in key order, so
/// that equal weights always give equal bytes.
pub fn to_bytes(weights: &Weights, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut data = Vec::new();
    for (name, w) in weights {
        let bytes = encode(w);
        let offsets = [data.len(), data.len() + bytes.len()];
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": w.storage.name(), "shape": w.tensor.shape, "data_offsets": offsets}),
        );
        data.extend(bytes);
    }
    let mut head = serde_json::to_vec(&header).expect("a JSON map serialises");
    // Pad so that the data starts 8-byte aligned, as the safetensors crate writes it.
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + head.len() + data.len());
    out.extend((head.len() as u64).to_le_bytes());
    out.extend(head);
    out.extend(data);
    out
}

/// A SHA-256 of the tensors: names, storage types, shapes and encoded values.
pub fn digest(weights: &Weights) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (name, w) in weights {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(w.storage.name().as_bytes());
        h.update((w.tensor.shape.len() as u64).to_le_bytes());
        for &d in &w.tensor.shape {
            h.update((d as u64).to_le_bytes());
        }
        h.update(encode(w));
    }
    hex(&h.finalize())
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes atomically (see [`crate::atomic`]).
pub fn save(path: &Path, weights: &Weights, metadata: &BTreeMap<String, String>) -> Result<(), WeightsError> {
    crate::atomic::write(path, &to_bytes(weights, metadata))
        .map_err(|error| WeightsError::Write { path: path.display().to_string(), error })
}
