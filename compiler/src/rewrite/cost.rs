//! The roofline cost model extraction minimises and `hyb explain` reports: a kernel takes
//! `max(flops / peak, bytes / bandwidth)` plus a launch overhead; a collective takes its
//! latency plus its bytes over the link. Views (reshape, slice, transpose, broadcast) move
//! no data: their consumer reads through strides.

use crate::ir::{KernelKind, TensorType};
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::Prim;
use serde::Serialize;

/// The machine and problem size costs are predicted for.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Dense bf16 GEMM peak, FLOP/s.
    pub peak_flops: f64,
    /// Memory bandwidth, bytes/s.
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

impl Default for Machine {
    /// One H100: ≈800 TFLOP/s bf16, ≈3.0 TB/s, NVLink ≈ 450 GB/s per direction.
    fn default() -> Self {
        Machine {
            peak_flops: 800e12,
            mem_bw: 3.0e12,
            launch: 4e-6,
            link_bw: 450e9,
            link_latency: 10e-6,
            float_bytes: 2.0,
            batch: 1,
            seq: 4096,
        }
    }
}

/// Work of one kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Work {
    pub flops: f64,
    pub bytes: f64,
    pub launches: f64,
    /// Bytes each rank sends in collectives.
    pub comm_bytes: f64,
    pub collectives: f64,
}

impl Work {
    pub fn time(&self, m: &Machine) -> f64 {
        (self.flops / m.peak_flops).max(self.bytes / m.mem_bw)
            + self.launches * m.launch
            + self.comm_bytes / m.link_bw
            + self.collectives * m.link_latency
    }

    pub fn add(&mut self, o: &Work) {
        self.flops += o.flops;
        self.bytes += o.bytes;
        self.launches += o.launches;
        self.comm_bytes += o.comm_bytes;
        self.collectives += o.collectives;
    }
}

impl Machine {
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

    /// The work of `prim` reading `inputs` and writing `out` as its own kernel.
    pub fn prim_work(&self, prim: Prim, inputs: &[&TensorType], out: &TensorType) -> Work {
        use Prim::*;
        if is_view(prim) {
            return Work::default();
        }
        // Ring collectives: an all-reduce moves each byte twice, a gather or scatter once.
        let comm = match prim {
            AllReduce => Some(2.0 * self.bytes(inputs[0])),
            AllGather => Some(self.bytes(out)),
            ReduceScatter => Some(self.bytes(inputs[0])),
            _ => None,
        };
        if let Some(comm_bytes) = comm {
            return Work { comm_bytes, collectives: 1.0, ..Work::default() };
        }
        let io = inputs.iter().map(|t| self.bytes(t)).sum::<f64>() + self.bytes(out);
        let flops = match prim {
            // A [..., m, k] times B gives out [..., m, n]: 2·|A|·n.
            Matmul => 2.0 * self.numel(inputs[0]) * self.dim_last(out),
            SsdScan | SsdScanGrad => {
                // Chunked scan: per token and head, state-size work both ways.
                let state = inputs.get(3).map_or(1.0, |b| self.dim_last(b));
                let chunk = 128.0;
                self.numel(inputs[0]) * (4.0 * state + 2.0 * chunk)
            }
            CausalConv1d | CausalConv1dGrad => 2.0 * self.numel(out) * inputs.get(1).map_or(4.0, |w| self.dim_last(w)),
            _ => self.numel(out),
        };
        Work { flops, bytes: io, launches: 1.0, ..Work::default() }
    }

    fn dim_last(&self, t: &TensorType) -> f64 {
        t.shape.last().map_or(1.0, |d| self.dim(d))
    }

    /// The work of a kernel: its inputs and outputs cross memory once.
    pub fn kernel_work(
        &self,
        kind: &KernelKind,
        inputs: &[&TensorType],
        outs: &[&TensorType],
        body_flops: f64,
    ) -> Work {
        let io = inputs.iter().chain(outs).map(|t| self.bytes(t)).sum::<f64>();
        let flops = match kind {
            // Causal: half the score matrix is computed.
            KernelKind::FlashAttention { .. } => body_flops / 2.0,
            _ => body_flops,
        };
        Work { flops, bytes: io, launches: 1.0, ..Work::default() }
    }
}

/// Operations that only reinterpret indices (a shard is this rank's strided view).
pub fn is_view(prim: Prim) -> bool {
    matches!(
        prim,
        Prim::Reshape | Prim::Slice | Prim::Transpose | Prim::Permute | Prim::Broadcast | Prim::Shard | Prim::TpCopy
    )
}
