//! Rematerialisation before fusion: a cheap forward value (pointwise, or a view) that only
//! pointwise backward nodes read is computed again inside each of them instead of being
//! kept from the forward pass to the backward.
//!
//! Fusion then puts each copy in its reader's kernel, so it costs no launch and no store:
//! the kernel reads the copy's inputs where it read the copy. Those inputs must be there
//! anyway — a parameter, an input, a value the backward pass reads itself, or another
//! rematerialised value — so nothing new is kept. A gated activation's scaled halves, the
//! gate of a gated norm: whatever the forward kernels wrote only for the backward to read
//! stops being written, and stops holding memory between the passes.
//!
//! A value a GEMM, a reduction or a template reads is kept: computing it again there would
//! be a kernel of its own, which is what the plan's selective recompute trades for memory
//! when memory is short ([`crate::plan::recompute`]).

use crate::ir::{Graph, NodeId, Op};
use crate::ops::{Class, Primitive};
use crate::plan::recompute::{forward_nodes, leaf, rebuild_backward};
use std::collections::HashMap;

fn class(g: &Graph, i: NodeId) -> Option<Class> {
    match &g.nodes[i].op {
        Op::Prim(p) => Some(p.class()),
        _ => None,
    }
}

/// Computed per element where a fused kernel reads it.
fn fusible(g: &Graph, i: NodeId) -> bool {
    matches!(&g.nodes[i].op, Op::Prim(p) if p.fusible())
}

/// What rematerialisation decides for each node of a training graph.
struct Decision {
    /// Computed again by a copy in each backward reader.
    again: Vec<bool>,
    /// Cheap forward values a copy may compute from values that are there anyway.
    recomputable: Vec<bool>,
    /// Forward values the backward pass holds anyway: read by it directly (or through a
    /// view of them, which holds their memory).
    held: Vec<bool>,
}

/// Which forward values of training graph `g` (loss: output `loss`) its backward readers
/// compute again.
fn decide(g: &Graph, loss: usize) -> Decision {
    let forward = forward_nodes(g, loss);
    let n = g.nodes.len();
    let mut returned = vec![false; n];
    for &o in &g.outputs {
        returned[o] = true;
    }
    // Read by some backward node, and whether every backward reader is pointwise.
    let mut read_by_backward = vec![false; n];
    let mut pointwise_readers = vec![true; n];
    for (i, node) in g.nodes.iter().enumerate() {
        if forward[i] {
            continue;
        }
        for &x in &node.inputs {
            read_by_backward[x] = true;
            pointwise_readers[x] &= fusible(g, i);
        }
    }
    let mut held = read_by_backward.clone();
    for i in (0..n).rev() {
        if held[i] && forward[i] && class(g, i) == Some(Class::View) {
            for &x in &g.nodes[i].inputs {
                held[x] = true;
            }
        }
    }
    let mut recomputable = vec![false; n];
    let mut again = vec![false; n];
    for (i, node) in g.nodes.iter().enumerate() {
        let cheap = fusible(g, i) || class(g, i) == Some(Class::View);
        if !forward[i] || !cheap {
            continue;
        }
        recomputable[i] = node.inputs.iter().all(|&x| leaf(&g.nodes[x].op) || held[x] || recomputable[x]);
        // A view holds no memory of its own: only computed values are worth not keeping.
        again[i] = recomputable[i] && fusible(g, i) && read_by_backward[i] && pointwise_readers[i] && !returned[i];
    }
    Decision { again, recomputable, held }
}

/// `g` with every value [`decide`] picks computed again, by a copy of its own, in each
/// backward node that reads it (the copies of the values it reads in turn shared within
/// that reader). Computes exactly what `g` computes.
pub fn rematerialise(g: &Graph, loss: usize) -> Graph {
    let d = decide(g, loss);
    if !d.again.iter().any(|&a| a) {
        return g.clone();
    }
    // Each reader's copies, shared among its own inputs only.
    let (mut reader, mut copies) = (usize::MAX, HashMap::new());
    rebuild_backward(g, loss, &d.again, |i, x, new_id, out| {
        if i != reader {
            (reader, copies) = (i, HashMap::new());
        }
        copy(g, x, &d, new_id, &mut copies, out)
    })
}

/// A copy of forward value `x` in `out` for the reader being added (in its scope), reading
/// what is held anyway and copying, in turn, what is not.
fn copy(
    g: &Graph,
    x: NodeId,
    d: &Decision,
    new_id: &[NodeId],
    copies: &mut HashMap<NodeId, NodeId>,
    out: &mut Graph,
) -> NodeId {
    if let Some(&c) = copies.get(&x) {
        return c;
    }
    let node = &g.nodes[x];
    let inputs: Vec<NodeId> = node
        .inputs
        .iter()
        .map(|&y| {
            let kept = leaf(&g.nodes[y].op) || (d.held[y] && !d.again[y]);
            match kept {
                true => new_id[y],
                false => {
                    debug_assert!(d.recomputable[y], "a copy reads only what is held or recomputable");
                    copy(g, y, d, new_id, copies, out)
                }
            }
        })
        .collect();
    let c = out.add(node.op.clone(), inputs, node.ty.clone());
    copies.insert(x, c);
    c
}
