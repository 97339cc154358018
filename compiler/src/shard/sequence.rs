//! Sequence parallelism (Megatron's): between tensor-parallel regions the activations are
//! replicated, so every rank would repeat the norms, residual adds and multipliers on the
//! whole sequence. Instead, an all-reduce that feeds such work becomes a reduce-scatter
//! along time, the pointwise and row-reduction work runs on each rank's part of the
//! sequence, and an all-gather along time restores the whole sequence where a tensor-parallel
//! region (or anything that mixes time) begins. The traffic is the same as the all-reduce's;
//! the work and activation memory between regions shrink by the number of ranks.

use crate::ir::{Graph, NodeId, Op};
use crate::ops::{AllGather, Broadcast, Prim, Primitive, ReduceScatter, Reshape, Shard, TpCopy};
use hyb_dsl::dim::Dim;

/// Work that treats every time step alike: it runs on a slice of the sequence.
fn per_token(g: &Graph, i: NodeId) -> bool {
    let n = &g.nodes[i];
    let t = Dim::symbol("T");
    let keeps_time = |shape: &[Dim]| shape.len() >= 2 && shape[1] == t;
    if !keeps_time(&n.ty.shape) {
        return false;
    }
    let Op::Prim(prim) = &n.op else { return false };
    let inputs_fit = n.inputs.iter().all(|&x| {
        let s = &g.nodes[x].ty.shape;
        keeps_time(s) || s.len() < n.ty.shape.len() - 1 || s.is_empty()
    });
    inputs_fit && prim.per_token(g, i)
}

/// Rewrites a per-rank program over `ranks` ranks to run per-token work on sequence slices.
pub fn sequence_parallel(g: &Graph, ranks: usize) -> Result<Graph, String> {
    let mut consumers: Vec<Vec<NodeId>> = vec![vec![]; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &x in &n.inputs {
            consumers[x].push(i);
        }
    }

    let mut out = Graph { params: g.params.clone(), ..Graph::default() };
    let mut new_id = vec![usize::MAX; g.nodes.len()];
    let mut split = vec![false; g.nodes.len()];
    // The whole sequence of a split value, gathered once for all its readers.
    let mut gathered: Vec<Option<NodeId>> = vec![None; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        out.scope = n.scope;
        out.origin = n.origin;
        let inputs: Vec<NodeId> = n.inputs.iter().map(|&x| new_id[x]).collect();
        if matches!(n.op, Op::Prim(Prim::AllReduce(_))) && consumers[i].iter().any(|&c| per_token(g, c)) {
            let shape = &n.ty.shape;
            if shape.len() >= 2 && shape[1] == Dim::symbol("T") {
                new_id[i] = out.try_apply(ReduceScatter { axis: 1, ranks }, inputs)?;
                split[i] = true;
                continue;
            }
        }
        if per_token(g, i) && n.inputs.iter().any(|&x| split[x]) {
            let mut args = Vec::new();
            for (&x, &y) in n.inputs.iter().zip(&inputs) {
                let s = &g.nodes[x].ty.shape;
                let leaf = matches!(g.nodes[x].op, Op::Constant(_) | Op::Input(_));
                args.push(if split[x] {
                    y
                } else if s.len() >= 2 && s[1] == Dim::symbol("T") {
                    out.try_apply(Shard { axis: 1, ranks }, vec![y])?
                } else if !leaf && g.nodes[x].ty.dtype.is_float() {
                    // A whole value (a norm's weight) meets per-rank work: sum its gradient.
                    out.try_apply(TpCopy, vec![y])?
                } else {
                    y
                });
            }
            let Op::Prim(prim) = &n.op else { unreachable!("per-token work is a primitive") };
            let local_shape = || -> Result<Vec<Dim>, String> {
                let mut shape = n.ty.shape.clone();
                shape[1] = shape[1].part_of(ranks as i64).ok_or("time is a symbol")?;
                Ok(shape)
            };
            let prim = match prim {
                Prim::Reshape(_) => Prim::Reshape(Reshape { shape: local_shape()? }),
                Prim::Broadcast(_) => Prim::Broadcast(Broadcast { shape: local_shape()? }),
                other => other.clone(),
            };
            new_id[i] = out.try_apply(prim, args)?;
            split[i] = true;
            continue;
        }
        let mut args = inputs;
        for (j, &x) in n.inputs.iter().enumerate() {
            if split[x] {
                args[j] = match gathered[x] {
                    Some(full) => full,
                    None => {
                        let full = out.try_apply(AllGather { axis: 1, ranks }, vec![args[j]])?;
                        gathered[x] = Some(full);
                        full
                    }
                };
            }
        }
        new_id[i] = out.add(n.op.clone(), args, n.ty.clone());
    }
    let mut outputs = Vec::new();
    for &o in &g.outputs {
        outputs.push(match (split[o], gathered[o]) {
            (true, Some(full)) => full,
            (true, None) => out.try_apply(AllGather { axis: 1, ranks }, vec![new_id[o]])?,
            _ => new_id[o],
        });
    }
    out.outputs = outputs;
    out.scope = 0;
    out.origin = None;
    Ok(out)
}
