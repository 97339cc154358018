//! Named tensors in safetensors files. Values are held as float64 (every supported storage
//! type converts exactly), with the storage dtype kept so that a file can be written back
//! bit for bit.

use hyb_compiler::reference::Tensor;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} is not a valid safetensors file: {reason}")]
    Format { path: String, reason: String },
    #[error("tensor `{name}` in {path} has unsupported dtype {dtype:?}")]
    Dtype { path: String, name: String, dtype: Dtype },
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
    fn dtype(self) -> Dtype {
        match self {
            Storage::F64 => Dtype::F64,
            Storage::F32 => Dtype::F32,
            Storage::BF16 => Dtype::BF16,
            Storage::F16 => Dtype::F16,
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

pub fn load(path: &Path) -> Result<Weights, WeightsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| WeightsError::Read { path: shown.clone(), error })?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| WeightsError::Format { path: shown.clone(), reason: e.to_string() })?;
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
            dtype => return Err(WeightsError::Dtype { path: shown, name, dtype }),
        };
        let shape = view.shape().to_vec();
        if shape.iter().product::<usize>() != values.len() {
            return Err(WeightsError::Format {
                path: shown,
                reason: format!("tensor `{name}` has {} values for shape {shape:?}", values.len()),
            });
        }
        out.insert(name, Weight { tensor: Tensor::new(shape, values), storage });
    }
    Ok(out)
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

/// Writes atomically: a temporary file in the same folder, fsync, rename. A crash leaves
/// either the old file or the new one.
pub fn save(
    path: &Path,
    weights: &Weights,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), WeightsError> {
    let shown = path.display().to_string();
    let encoded: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> =
        weights.iter().map(|(n, w)| (n.clone(), w.tensor.shape.clone(), w.storage.dtype(), encode(w))).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = encoded
        .iter()
        .map(|(n, shape, dtype, bytes)| {
            (n.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).expect("sizes match"))
        })
        .collect();
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| WeightsError::Format { path: shown.clone(), reason: e.to_string() })?;
    write_atomically(path, &bytes).map_err(|error| WeightsError::Write { path: shown, error })
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        d.sync_all()?;
    }
    Ok(())
}
