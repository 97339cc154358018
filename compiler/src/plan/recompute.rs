//! Activation recompute: the backward pass computes a forward value again instead of
//! keeping it, trading FLOPs for memory, chosen per layer.
//!
//! A layer at [`Level::Full`] keeps only its checkpoints: values another layer (or the code
//! outside the layers) reads, such as the residual stream between layers. Everything else
//! its backward pass reads is recomputed from them, once, just before the first backward
//! launch that needs it. [`Level::Selective`] recomputes only cheap values — pointwise
//! kernels, views and row reductions — and only those whose inputs are kept anyway, so it
//! never keeps a value that was not kept before: it saves memory at the cost of
//! memory-bound launches, never of a GEMM, a scan or attention.
//!
//! The kernels already recompute what is cheapest inside them: flash attention's backward
//! recomputes the scores from q, k and the row statistics, and the SSD scan's backward
//! recomputes within chunks from its inputs, so neither keeps a T×T or per-step state.

use crate::ir::{Graph, KernelKind, NodeId, Op};
use crate::ops::{Class, Primitive};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What the backward pass of one layer recomputes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Level {
    /// Keep every forward value the backward pass reads.
    #[default]
    Keep,
    /// Recompute cheap values whose inputs are kept anyway.
    Selective,
    /// Keep only the layer's checkpoints; recompute the rest.
    Full,
}

/// How the plan chooses each layer's [`Level`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recompute {
    /// Keep everything.
    None,
    /// Selective recompute in every layer.
    Selective,
    /// Full recompute in every layer.
    Full,
    /// The least recompute whose plan fits the memory budget (none without a budget).
    #[default]
    Auto,
}

/// The number of layers of a graph: the highest scope (layer `i` is scope `i + 1`).
pub fn layers(g: &Graph) -> usize {
    g.nodes.iter().map(|n| n.scope as usize).max().unwrap_or(0)
}

/// The forward pass of a training graph: the nodes the loss (output `loss`) depends on,
/// and the further outputs of those (a forward kernel's statistic kept for its gradient),
/// which are computed with them.
pub fn forward_nodes(g: &Graph, loss: usize) -> Vec<bool> {
    let mut forward = vec![false; g.nodes.len()];
    forward[g.outputs[loss]] = true;
    for i in (0..g.nodes.len()).rev() {
        if forward[i] {
            for &x in &g.nodes[i].inputs {
                forward[x] = true;
            }
        }
    }
    for (i, n) in g.nodes.iter().enumerate() {
        if let (Op::Output(_), &[source]) = (&n.op, &n.inputs[..]) {
            forward[i] |= forward[source];
        }
    }
    forward
}

/// Whether recomputing a node costs memory traffic only (no GEMM, scan or attention).
fn cheap(g: &Graph, i: NodeId) -> bool {
    match &g.nodes[i].op {
        Op::Prim(p) => matches!(p.class(), Class::View | Class::Elementwise | Class::Reduction),
        Op::Kernel(k) => k.kind == KernelKind::Fused,
        Op::Output(_) => cheap(g, g.nodes[i].inputs[0]),
        _ => false,
    }
}

pub(crate) fn leaf(op: &Op) -> bool {
    matches!(op, Op::Param(_) | Op::Input(_) | Op::Constant(_))
}

/// Which forward nodes the backward pass recomputes when layer `l` is at `levels[l]`.
fn recomputed(g: &Graph, loss: usize, levels: &[Level]) -> Vec<bool> {
    let forward = forward_nodes(g, loss);
    let n = g.nodes.len();
    let mut read_by_backward = vec![false; n];
    // Checkpoints: read across a layer boundary, or returned by the graph.
    let mut checkpoint = vec![false; n];
    for &o in &g.outputs {
        checkpoint[o] = true;
    }
    for (i, node) in g.nodes.iter().enumerate() {
        for &x in &node.inputs {
            if !forward[i] {
                read_by_backward[x] = true;
            } else if g.nodes[x].scope != node.scope {
                checkpoint[x] = true;
            }
        }
    }
    let mut again = vec![false; n];
    for (i, node) in g.nodes.iter().enumerate() {
        let level = match node.scope {
            0 => Level::Keep,
            s => levels.get(s as usize - 1).copied().unwrap_or_default(),
        };
        if !forward[i] || checkpoint[i] || leaf(&node.op) || level == Level::Keep {
            continue;
        }
        again[i] = match level {
            Level::Full => true,
            // Every input stays available without keeping anything new.
            Level::Selective => {
                cheap(g, i)
                    && node.inputs.iter().all(|&x| {
                        let xn = &g.nodes[x];
                        leaf(&xn.op) || checkpoint[x] || again[x] || read_by_backward[x]
                    })
            }
            Level::Keep => false,
        };
    }
    again
}

/// `g` with the forward values of each layer recomputed by its backward pass as `levels`
/// says (`levels[l]` for layer `l`; layers beyond its end keep everything). The clones are
/// inserted just before the first backward node that reads them; the result computes
/// exactly what `g` computes.
pub fn rewrite(g: &Graph, loss: usize, levels: &[Level]) -> Graph {
    let again = recomputed(g, loss, levels);
    if !again.iter().any(|&a| a) {
        return g.clone();
    }
    let mut clone_of: HashMap<NodeId, NodeId> = HashMap::new();
    rebuild_backward(g, loss, &again, |_, x, new_id, out| clone(g, x, &again, new_id, &mut clone_of, out))
}

/// `g` rebuilt node by node, a backward node's input `x` where `copied[x]` holds given by
/// `copy(reader, x, new_id, out)` (which adds what it needs to `out`, in the reader's scope
/// unless it sets its own), every other input the rebuilt node: how recompute and
/// rematerialisation hand the backward pass its copies of forward values.
pub(crate) fn rebuild_backward(
    g: &Graph,
    loss: usize,
    copied: &[bool],
    mut copy: impl FnMut(NodeId, NodeId, &[NodeId], &mut Graph) -> NodeId,
) -> Graph {
    let forward = forward_nodes(g, loss);
    let mut out = Graph { params: g.params.clone(), ..Graph::default() };
    let mut new_id = vec![usize::MAX; g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        out.scope = node.scope;
        out.origin = node.origin;
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for &x in &node.inputs {
            inputs.push(if !forward[i] && copied[x] { copy(i, x, &new_id, &mut out) } else { new_id[x] });
        }
        out.scope = node.scope;
        out.origin = node.origin;
        new_id[i] = out.add(node.op.clone(), inputs, node.ty.clone());
    }
    out.outputs = g.outputs.iter().map(|&o| new_id[o]).collect();
    out.scope = 0;
    out.origin = None;
    out
}

/// The recomputed copy of forward node `x` in `out`, emitting it (and the recomputed
/// values it reads) on first use.
fn clone(
    g: &Graph,
    x: NodeId,
    again: &[bool],
    new_id: &[NodeId],
    clone_of: &mut HashMap<NodeId, NodeId>,
    out: &mut Graph,
) -> NodeId {
    if let Some(&c) = clone_of.get(&x) {
        return c;
    }
    let node = &g.nodes[x];
    let inputs: Vec<NodeId> = node
        .inputs
        .iter()
        .map(|&y| if again[y] { clone(g, y, again, new_id, clone_of, out) } else { new_id[y] })
        .collect();
    out.scope = node.scope;
    out.origin = node.origin;
    let c = out.add(node.op.clone(), inputs, node.ty.clone());
    clone_of.insert(x, c);
    c
}

/// Layers in the order full recompute should take them: the most bytes kept for backward
/// first (`saved[l]`, bytes kept by layer `l` when nothing is recomputed).
pub fn order_by_saving(saved: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..saved.len()).collect();
    order.sort_by_key(|&l| (std::cmp::Reverse(saved[l]), l));
    order
}
