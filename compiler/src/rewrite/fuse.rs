//! Vertical fusion: after extraction, chains of pointwise operations, row reductions and
//! views become one kernel, and a GEMM absorbs its pointwise consumers as an epilogue. A
//! value joins its consumer's kernel when every node that reads it is in that kernel; if
//! the graph also returns it (an optimizer's new moments) the kernel writes it as an extra
//! output. So does a pointwise value that later kernels read again (an activation the
//! backward pass reads) when it joins a pointwise kernel of its shape: written once, it is
//! not read back by its consumer.

use crate::ir::{Graph, Kernel, KernelKind, Node, NodeId, Op};
use crate::ops::{Class, Primitive};
use std::collections::{BTreeSet, HashMap};

/// The most tensors one kernel reads. Each is a pointer and strides among a GPU kernel's
/// parameters (4 KiB of them up to PTX 8.0), and a kernel reading hundreds (a global
/// gradient norm over every parameter of a 34B model) is past that and past what `ptxas`
/// assembles in reasonable time; beyond it a sum is split into kernels of partial sums.
const MAX_INPUTS: usize = 16;

/// How a node takes part in vertical fusion, from its primitive's class.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Pointwise,
    Reduce,
    View,
    Gemm,
    Other,
}

fn role(n: &Node) -> Role {
    match &n.op {
        Op::Prim(p) if p.fusible() => Role::Pointwise,
        Op::Prim(p) => match p.class() {
            Class::Reduction => Role::Reduce,
            Class::View => Role::View,
            Class::Contraction => Role::Gemm,
            _ => Role::Other,
        },
        _ => Role::Other,
    }
}

fn root(group: &mut [NodeId], mut i: NodeId) -> NodeId {
    while group[i] != i {
        group[i] = group[group[i]];
        i = group[i];
    }
    i
}

/// Groups fusible nodes into kernels; returns the new graph.
pub fn fuse(g: &Graph) -> Graph {
    let n = g.nodes.len();
    let mut consumers: Vec<Vec<NodeId>> = vec![vec![]; n];
    for (i, node) in g.nodes.iter().enumerate() {
        for &x in &node.inputs {
            consumers[x].push(i);
        }
    }
    let mut returned = vec![false; n];
    for &o in &g.outputs {
        returned[o] = true;
    }
    let mut group: Vec<NodeId> = (0..n).collect();
    let (mut has_gemm, mut has_reduce, mut has_kept) = (vec![false; n], vec![false; n], vec![false; n]);
    // Values written as extra outputs for readers after their kernel.
    let mut kept = vec![false; n];
    // The values each kernel (by root) reads from outside it.
    let computed = |x: &NodeId| !matches!(g.nodes[*x].op, Op::Constant(_));
    let mut reads: HashMap<NodeId, BTreeSet<NodeId>> = HashMap::new();
    for i in (0..n).rev() {
        let c = role(&g.nodes[i]);
        if matches!(c, Role::Gemm | Role::Other) {
            continue;
        }
        let r = root(&mut group, i);
        has_reduce[r] |= c == Role::Reduce;
        reads.entry(r).or_insert_with(|| g.nodes[i].inputs.iter().copied().filter(computed).collect());
        for &p in &g.nodes[i].inputs {
            if group[p] != p {
                continue;
            }
            let outside: Vec<NodeId> = consumers[p].iter().copied().filter(|&u| root(&mut group, u) != r).collect();
            // Read again after the kernel (whose place is its root's): an extra output of a
            // pointwise kernel of its shape.
            let keep = !outside.is_empty();
            if keep
                && (outside.iter().any(|&u| u <= r)
                    || role(&g.nodes[p]) != Role::Pointwise
                    || has_gemm[r]
                    || has_reduce[r]
                    || g.nodes[p].ty.shape != g.nodes[r].ty.shape)
            {
                continue;
            }
            let mut joined = reads[&r].clone();
            joined.remove(&p);
            joined.extend(g.nodes[p].inputs.iter().copied().filter(computed));
            if joined.len() > MAX_INPUTS {
                continue;
            }
            // Only computed values become extra outputs (a returned view stays a view).
            if returned[p] && role(&g.nodes[p]) != Role::Pointwise {
                continue;
            }
            let ok = match role(&g.nodes[p]) {
                Role::Pointwise | Role::View => true,
                Role::Reduce => !has_gemm[r] && !has_kept[r],
                Role::Gemm => !has_gemm[r] && !has_reduce[r] && !has_kept[r],
                Role::Other => false,
            };
            if ok {
                reads.insert(r, joined);
                group[p] = r;
                kept[p] = keep;
                has_kept[r] |= keep;
                has_gemm[r] |= role(&g.nodes[p]) == Role::Gemm;
                has_reduce[r] |= role(&g.nodes[p]) == Role::Reduce;
            }
        }
    }
    let mut members: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for i in 0..n {
        let r = root(&mut group, i);
        members.entry(r).or_default().push(i);
    }
    let mut out = Graph { params: g.params.clone(), ..Graph::default() };
    let mut new_id: Vec<Option<NodeId>> = vec![None; n];
    for i in 0..n {
        let r = root(&mut group, i);
        if r != i {
            continue;
        }
        let m = &members[&r];
        let computes = m.iter().filter(|&&x| role(&g.nodes[x]) != Role::View).count();
        if m.len() == 1 || computes == 0 {
            for &x in m {
                let node = &g.nodes[x];
                let inputs = node.inputs.iter().map(|&y| new_id[y].expect("inputs precede")).collect();
                out.scope = node.scope;
                out.origin = node.origin;
                new_id[x] = Some(out.add(node.op.clone(), inputs, node.ty.clone()));
            }
            continue;
        }
        let extra: Vec<NodeId> = m.iter().copied().filter(|&x| x != r && (returned[x] || kept[x])).collect();
        let (body, external) = kernel_body(g, m, &extra);
        let kind = if has_gemm[r] { KernelKind::Gemm } else { KernelKind::Fused };
        let inputs = external.iter().map(|&y| new_id[y].expect("inputs precede")).collect();
        out.scope = g.nodes[r].scope;
        out.origin = g.nodes[r].origin;
        let kernel = out.add(Op::Kernel(Box::new(Kernel { kind, body })), inputs, g.nodes[r].ty.clone());
        new_id[r] = Some(kernel);
        for (k, &x) in extra.iter().enumerate() {
            new_id[x] = Some(out.add(Op::Output(k + 1), vec![kernel], g.nodes[x].ty.clone()));
        }
    }
    out.outputs = g.outputs.iter().map(|&o| new_id[o].expect("outputs are kept")).collect();
    out.scope = 0;
    out.origin = None;
    out
}

/// The body of a kernel computing `members` (in order; outputs: the last member, then
/// `extra`), and the outside values it reads, in order. Constants are copied in.
fn kernel_body(g: &Graph, members: &[NodeId], extra: &[NodeId]) -> (Graph, Vec<NodeId>) {
    let mut body = Graph::default();
    let mut local: HashMap<NodeId, NodeId> = HashMap::new();
    let mut external = Vec::new();
    for &x in members {
        let node = &g.nodes[x];
        let mut inputs = Vec::new();
        for &y in &node.inputs {
            let id = match local.get(&y) {
                Some(&id) => id,
                None => {
                    let id = match &g.nodes[y].op {
                        Op::Constant(c) => body.add(Op::Constant(*c), vec![], g.nodes[y].ty.clone()),
                        _ => {
                            external.push(y);
                            body.add(Op::Input((external.len() - 1).to_string()), vec![], g.nodes[y].ty.clone())
                        }
                    };
                    local.insert(y, id);
                    id
                }
            };
            inputs.push(id);
        }
        local.insert(x, body.add(node.op.clone(), inputs, node.ty.clone()));
    }
    body.outputs = std::iter::once(members.last().expect("a member")).chain(extra).map(|x| local[x]).collect();
    (body, external)
}
