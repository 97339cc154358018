//! Cutting a graph into regions the e-graph optimises one at a time: maximal runs of
//! consecutive nodes of one scope (a layer's forward pass, its backward pass, its optimizer
//! update), and outputs of a multi-output node in its region wherever they are read. Runs
//! respect the node order, so every region reads only earlier regions; equal
//! regions (the same layer body in every layer) have equal signatures and are optimised
//! once.

use crate::ir::{Graph, NodeId, Op};
use std::collections::HashMap;
use std::fmt::Write;

pub struct Region {
    pub scope: u32,
    /// The region's operations (primitives, kernels and the constants they read), in order.
    pub nodes: Vec<NodeId>,
    /// Values from outside (inputs, parameters, earlier regions), in order of first use.
    pub leaves: Vec<NodeId>,
    /// The region's values used after it or returned by the graph, in order.
    pub outputs: Vec<NodeId>,
}

/// Splits `g` into regions; inputs and parameters belong to none (they are leaves).
pub fn partition(g: &Graph) -> Vec<Region> {
    let mut regions: Vec<Region> = Vec::new();
    let mut region_of = vec![usize::MAX; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if matches!(n.op, Op::Input(_) | Op::Param(_) | Op::Constant(_)) {
            continue;
        }
        // An output is in its source's region, however much later it is read (a forward
        // kernel's statistic, read by its gradient): the e-graph types it from the source.
        if let (Op::Output(_), &[source]) = (&n.op, &n.inputs[..]) {
            if region_of[source] != usize::MAX {
                region_of[i] = region_of[source];
                regions[region_of[i]].nodes.push(i);
                continue;
            }
        }
        if regions.last().is_none_or(|r| r.scope != n.scope) {
            regions.push(Region { scope: n.scope, nodes: vec![], leaves: vec![], outputs: vec![] });
        }
        let r = regions.len() - 1;
        for &x in &n.inputs {
            if region_of[x] == r {
                continue;
            }
            if matches!(g.nodes[x].op, Op::Constant(_)) {
                region_of[x] = r;
                regions[r].nodes.push(x);
            } else if !regions[r].leaves.contains(&x) {
                regions[r].leaves.push(x);
            }
        }
        region_of[i] = r;
        regions[r].nodes.push(i);
    }
    let mut used_outside = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &x in &n.inputs {
            // Constants are copied into every region that reads them.
            if region_of[x] != region_of[i] && !matches!(g.nodes[x].op, Op::Constant(_)) {
                used_outside[x] = true;
            }
        }
    }
    for &o in &g.outputs {
        used_outside[o] = true;
    }
    for r in &mut regions {
        r.outputs = r.nodes.iter().copied().filter(|&n| used_outside[n]).collect();
        r.nodes.sort_unstable();
    }
    regions
}

/// A canonical text of the region's computation: equal for regions that differ only in
/// which parameters and outside values they read.
pub fn signature(g: &Graph, r: &Region) -> String {
    let local: HashMap<NodeId, usize> = r.nodes.iter().enumerate().map(|(k, &n)| (n, k)).collect();
    let leaf: HashMap<NodeId, usize> = r.leaves.iter().enumerate().map(|(k, &n)| (n, k)).collect();
    let mut s = String::new();
    for &l in &r.leaves {
        let n = &g.nodes[l];
        let _ = write!(s, "L{:?}{:?}{};", n.ty.shape, n.ty.dtype, matches!(n.op, Op::Param(_)));
    }
    for &i in &r.nodes {
        let n = &g.nodes[i];
        match &n.op {
            Op::Constant(c) => {
                let _ = write!(s, "C{}{:?};", c.to_bits(), n.ty.dtype);
            }
            Op::Prim(prim) => {
                let _ = write!(s, "{prim:?}");
            }
            Op::Kernel(k) => {
                s.push_str(&serde_json::to_string(k).expect("kernels serialise"));
            }
            Op::Output(k) => {
                let _ = write!(s, "O{k}");
            }
            Op::Input(_) | Op::Param(_) => unreachable!("leaves are not region nodes"),
        }
        for x in &n.inputs {
            match local.get(x) {
                Some(k) => {
                    let _ = write!(s, ",n{k}");
                }
                None => {
                    let _ = write!(s, ",l{}", leaf[x]);
                }
            }
        }
        s.push(';');
    }
    for o in &r.outputs {
        let _ = write!(s, "o{}", local[o]);
    }
    s
}
