//! The machines costs are predicted for: measured ceilings of the GPUs hyb targets, by name.

use hyb_dsl::dim::Dim;
use serde::Serialize;

use crate::ir::TensorType;

/// A machine and the problem size costs are predicted for.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub name: &'static str,
    /// Dense bf16 GEMM peak, FLOP/s.
    pub peak_flops: f64,
    /// Memory bandwidth, bytes read plus written per second.
    pub mem_bw: f64,
    /// Fixed cost of one kernel launch, seconds.
    pub launch: f64,
    /// Per-GPU link bandwidth for collectives, bytes/s.
    pub link_bw: f64,
    /// Latency of one collective, seconds.
    pub link_latency: f64,
    /// Bytes per float element as the backend stores activations (bf16 mixed precision).
    pub float_bytes: f64,
    /// Sizes bound to the batch and sequence symbols.
    pub batch: i64,
    pub seq: i64,
}

/// The machines `--machine` can name.
pub const MACHINES: &[&str] = &["h200", "h100"];

impl Machine {
    /// One H200 as the device tool lends it: bf16 8192³ GEMM 797 TFLOP/s and device copy
    /// 4.26 TB/s, measured there; NVLink 4 at 450 GB/s per direction.
    pub fn h200() -> Machine {
        Machine {
            name: "h200",
            peak_flops: 797e12,
            mem_bw: 4.26e12,
            launch: 4e-6,
            link_bw: 450e9,
            link_latency: 10e-6,
            float_bytes: 2.0,
            batch: 1,
            seq: 4096,
        }
    }

    /// One H100 SXM: measured earlier at 800 TFLOP/s (cuBLASLt bf16) and 3.0 TB/s.
    pub fn h100() -> Machine {
        Machine { name: "h100", peak_flops: 800e12, mem_bw: 3.0e12, ..Machine::h200() }
    }

    /// The machine called `name` (one of [`MACHINES`]).
    pub fn named(name: &str) -> Option<Machine> {
        match name {
            "h200" => Some(Machine::h200()),
            "h100" => Some(Machine::h100()),
            _ => None,
        }
    }

    /// The same machine for another batch and sequence length.
    pub fn with_size(self, batch: i64, seq: i64) -> Machine {
        Machine { batch, seq, ..self }
    }

    pub fn dim(&self, d: &Dim) -> f64 {
        let bind = |s: &str| match s {
            "B" => Some(self.batch),
            "T" => Some(self.seq),
            _ => None,
        };
        d.eval(&|s| Dim::bind_parts(s, &bind)).unwrap_or(1) as f64
    }

    pub fn numel(&self, t: &TensorType) -> f64 {
        t.shape.iter().map(|d| self.dim(d)).product()
    }

    pub fn bytes(&self, t: &TensorType) -> f64 {
        let size = if t.dtype.is_float() { self.float_bytes } else { t.dtype.size_bytes() as f64 };
        self.numel(t) * size
    }

    /// The size of the last axis.
    pub fn dim_last(&self, t: &TensorType) -> f64 {
        t.shape.last().map_or(1.0, |d| self.dim(d))
    }
}

impl Default for Machine {
    fn default() -> Self {
        Machine::h200()
    }
}
