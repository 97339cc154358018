//! The cost layer beneath every stage: the machine model and the work of each primitive
//! and kernel. Sharding, rewriting and extraction minimise it; `explain` reports it. A
//! kernel takes `max(flops / peak, bytes / bandwidth)` plus a launch overhead; a collective
//! takes its latency plus its bytes over the link. Views move no data: their consumer reads
//! through strides.

mod machine;

pub use machine::{Machine, MACHINES};

use crate::ir::{Graph, Kernel, KernelKind, NodeId, Op, TensorType};
use crate::ops::{Prim, Primitive, Ty};
use hyb_dsl::prims::Ctx;
use serde::Serialize;

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

/// The work of a kernel: its inputs and outputs cross memory once.
pub fn kernel_work(m: &Machine, kind: &KernelKind, inputs: &[&TensorType], outs: &[&TensorType], body: f64) -> Work {
    let io = inputs.iter().chain(outs).map(|t| m.bytes(t)).sum::<f64>();
    let flops = match kind {
        // Causal: half the score matrix is computed.
        KernelKind::FlashAttention { .. } => body / 2.0,
        _ => body,
    };
    Work { flops, bytes: io, launches: 1.0, ..Work::default() }
}

/// The work of primitive `p` reading `inputs` and writing `out` (its first output) as its
/// own kernel. A multi-output primitive writes every output its shape rule gives.
pub fn prim_work(m: &Machine, p: &Prim, inputs: &[&TensorType], out: &TensorType) -> Work {
    if p.single_output() {
        return p.work(m, inputs, &[out]);
    }
    let types: Vec<Ty> = inputs.iter().map(|t| (t.shape.clone(), t.dtype)).collect();
    let outs: Vec<TensorType> = p
        .infer(&types, Ctx { strict: true })
        .expect("compiled nodes type-check")
        .into_iter()
        .map(|(shape, dtype)| TensorType { shape, dtype })
        .collect();
    p.work(m, inputs, &outs.iter().collect::<Vec<_>>())
}

/// The work of node `i` as a kernel of its own, or `None` for views, leaves and weights
/// packed at load.
pub fn node_work(g: &Graph, i: NodeId, m: &Machine) -> Option<Work> {
    let n = &g.nodes[i];
    let inputs: Vec<_> = n.inputs.iter().map(|&x| &g.nodes[x].ty).collect();
    match &n.op {
        Op::Prim(p) if !p.moves_data() => None,
        Op::Prim(Prim::Concat(_)) if n.inputs.iter().all(|&x| stored_weight(g, x).is_some()) => None,
        Op::Prim(p) => Some(prim_work(m, p, &inputs, &n.ty)),
        Op::Kernel(k) => {
            let outs: Vec<_> = k.body.outputs.iter().map(|&o| &k.body.nodes[o].ty).collect();
            Some(kernel_work(m, &k.kind, &inputs, &outs, body_flops(k, m)))
        }
        _ => None,
    }
}

/// FLOPs of a kernel's body, counted primitive by primitive.
pub fn body_flops(k: &Kernel, m: &Machine) -> f64 {
    let b = &k.body;
    b.nodes
        .iter()
        .map(|node| match &node.op {
            Op::Prim(p) => {
                let ins: Vec<_> = node.inputs.iter().map(|&x| &b.nodes[x].ty).collect();
                prim_work(m, p, &ins, &node.ty).flops
            }
            Op::Kernel(inner) => body_flops(inner, m),
            _ => 0.0,
        })
        .sum()
}

/// The parameter `x` reads as stored (itself or a view of it), for weights packed at load.
pub fn stored_weight(g: &Graph, mut x: NodeId) -> Option<usize> {
    loop {
        match &g.nodes[x].op {
            Op::Param(p) => return Some(*p),
            Op::Prim(p) if !p.moves_data() => x = g.nodes[x].inputs[0],
            _ => return None,
        }
    }
}

/// Predicted time of a program: each kernel's roofline time, summed (kernels run one
/// after another; one kernel's compute does not hide another's memory traffic).
pub fn total_time(g: &Graph, m: &Machine) -> f64 {
    (0..g.nodes.len()).filter_map(|i| node_work(g, i, m)).map(|w| w.time(m)).sum()
}

/// Total work of a program.
pub fn total(g: &Graph, m: &Machine) -> Work {
    let mut w = Work::default();
    for i in 0..g.nodes.len() {
        if let Some(k) = node_work(g, i, m) {
            w.add(&k);
        }
    }
    w
}
