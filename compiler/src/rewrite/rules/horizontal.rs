//! Horizontal fusion: GEMMs that read the same input become one GEMM over concatenated
//! weights, each original output a slice of the merged one. In Falcon-H1 the q, k, v and
//! Mamba `in_proj` projections all read the normed hidden state: one GEMM.

use super::Rule;
use crate::ops::{Matmul, Prim, Slice};
use crate::rewrite::lang::{add_concat, as_prim, is_stored, shape, EGraph, ENode, OpKind};
use egg::Id;
use hyb_dsl::dim::Dim;

pub fn rules() -> Vec<Rule> {
    vec![Rule::custom("merge-gemms", |p| matches!(p, Prim::Matmul(_)), merge_gemms)]
}

/// `x @ W_iᵀ` for every weight `W_i` (rank 2, same orientation) applied to the class of
/// `x`: one `x @ concat(W_i)ᵀ`, sliced.
fn merge_gemms(eg: &mut EGraph, _class: Id, n: &ENode) -> Vec<(Id, Id)> {
    let x = eg.find(n.children[0]);
    let Some(Prim::Matmul(m)) = as_prim(eg, n) else { return vec![] };
    let (ta, tb) = (m.transpose_a, m.transpose_b);
    if ta {
        return vec![];
    }
    // Sibling GEMMs: parents of `x` that multiply it by a rank-2 weight the same way.
    let mut members: Vec<(Id, Id)> = Vec::new();
    for pid in eg[x].parents().collect::<Vec<_>>() {
        let p = eg.id_to_node(pid).clone();
        let is_sibling = match eg.analysis.op(&p) {
            OpKind::Prim(Prim::Matmul(m)) => {
                !m.transpose_a && m.transpose_b == tb && eg.find(p.children[0]) == x && is_stored(eg, p.children[1])
            }
            _ => false,
        };
        if is_sibling {
            let (class, w) = (eg.find(pid), eg.find(p.children[1]));
            if !members.iter().any(|&(c, _)| c == class) {
                members.push((class, w));
            }
        }
    }
    members.sort();
    if members.len() < 2 || members.iter().any(|&(c, _)| eg[c].data.ty.dtype != eg[members[0].0].data.ty.dtype) {
        return vec![];
    }
    // Output features are axis 0 of Wᵀ's weight, axis 1 otherwise.
    let out_axis = if tb { 0 } else { 1 };
    let weights: Vec<Id> = members.iter().map(|&(_, w)| w).collect();
    let packed = add_concat(eg, weights, out_axis);
    let op = eg.analysis.intern(OpKind::Prim(Prim::Matmul(Matmul::new(false, tb))));
    let merged_node = ENode { op, children: vec![x, packed] };
    if eg.lookup(merged_node.clone()).is_some() {
        return vec![];
    }
    let merged = eg.add(merged_node);
    let last = shape(eg, merged).len() - 1;
    let mut start = Dim::constant(0);
    let mut unions = Vec::new();
    let mut group = Vec::new();
    for &(class, w) in &members {
        let width = shape(eg, w)[out_axis].clone();
        let end = start.add(&width).expect("sizes add");
        let op = eg.analysis.intern(OpKind::Prim(Prim::Slice(Slice::new(last, start.clone(), end.clone()))));
        let node = ENode { op, children: vec![merged] };
        let slice = eg.add(node.clone());
        group.push((slice, node));
        unions.push((class, slice));
        start = end;
    }
    eg.analysis.groups.push(group);
    unions
}
