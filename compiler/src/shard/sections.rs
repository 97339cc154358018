//! Before sharding, a weight whose output is cut into sections (Mamba's `in_proj` makes
//! `z | x | B | C | dt`; its conv runs over `x | B | C`; Falcon-H1's shared `out_proj`
//! reads `attention | mamba`) is rewritten so each section is computed from its own slice
//! of the weight. Each section can then be sharded by its own heads — attention heads and
//! Mamba heads independently — or replicated.
//!
//! Equalities used (slices are along the sectioned axis):
//! `slice(x @ Wᵀ) = x @ slice(W)ᵀ`; `slice(f(a, b)) = f(slice(a), slice(b))` for pointwise
//! `f` (a broadcast operand is kept); `slice(conv(x, w, b)) = conv(slice(x), slice(w),
//! slice(b))` over channels; `slice(concat(a, b)) = a` when aligned; and
//! `concat(a, b) @ Wᵀ = a @ W_aᵀ + b @ W_bᵀ`.

use crate::ir::{Graph, NodeId, Op};
use crate::ops::{Binary, Class, Prim, Primitive, Slice};
use hyb_dsl::dim::Dim;

struct Pass<'a> {
    old: &'a Graph,
    users: Vec<usize>,
    new_id: Vec<NodeId>,
    out: Graph,
}

fn prim_of(n: &crate::ir::Node) -> Option<&Prim> {
    match &n.op {
        Op::Prim(prim) => Some(prim),
        _ => None,
    }
}

impl Pass<'_> {
    /// A node of the new graph equal to `slice(old_x, axis, start, end)`, computed from
    /// slices of `old_x`'s inputs where `old_x` is used only through slices.
    fn sliced(&mut self, x: NodeId, axis: usize, start: &Dim, end: &Dim) -> NodeId {
        if let Some(y) = self.push(x, axis, start, end) {
            return y;
        }
        let nx = self.new_id[x];
        self.out.apply(Slice::new(axis, start.clone(), end.clone()), vec![nx])
    }

    fn push(&mut self, x: NodeId, axis: usize, start: &Dim, end: &Dim) -> Option<NodeId> {
        let n = &self.old.nodes[x];
        let rank = n.ty.shape.len();
        if matches!(n.op, Op::Param(_)) || self.users[x] == 0 {
            return None;
        }
        let prim = prim_of(n)?.clone();
        let last = axis + 1 == rank;
        match &prim {
            Prim::Matmul(m) if last && !m.transpose_a => {
                let (a, w) = (n.inputs[0], n.inputs[1]);
                if self.old.nodes[w].ty.shape.len() != 2 {
                    return None;
                }
                let ws = self.sliced(w, if m.transpose_b { 0 } else { 1 }, start, end);
                Some(self.out.apply(prim.clone(), vec![self.new_id[a], ws]))
            }
            _ if prim.class() == Class::Elementwise => {
                let mut inputs = Vec::new();
                for &y in &n.inputs {
                    let ys = &self.old.nodes[y].ty.shape;
                    let k = (axis + ys.len()).checked_sub(rank);
                    match k {
                        Some(k) if ys[k] == n.ty.shape[axis] => inputs.push(self.sliced(y, k, start, end)),
                        _ => inputs.push(self.new_id[y]),
                    }
                }
                Some(self.out.apply(prim, inputs))
            }
            Prim::CausalConv1d(_) if last => {
                let mut inputs = vec![self.sliced(n.inputs[0], axis, start, end)];
                for &p in &n.inputs[1..] {
                    inputs.push(self.sliced(p, 0, start, end));
                }
                Some(self.out.apply(prim, inputs))
            }
            Prim::Concat(c) if c.axis_of(rank) == axis => {
                let mut offset = Dim::constant(0);
                for &p in &n.inputs {
                    let next = offset.add(&self.old.nodes[p].ty.shape[axis])?;
                    if &offset == start && &next == end {
                        return Some(self.new_id[p]);
                    }
                    offset = next;
                }
                None
            }
            _ => None,
        }
    }
}

/// Rewrites `g` so every sectioned weight is read through per-section slices.
pub fn split_sections(g: &Graph) -> Graph {
    // Users that are not slices: a node only they read must still be computed whole.
    let mut whole_users = vec![0usize; g.nodes.len()];
    let mut users = vec![0usize; g.nodes.len()];
    for n in &g.nodes {
        for &x in &n.inputs {
            users[x] += 1;
            if !matches!(prim_of(n), Some(Prim::Slice(_))) {
                whole_users[x] += 1;
            }
        }
    }
    // `users[x] == 0` marks nodes that must not be pushed through (used whole elsewhere).
    for x in 0..g.nodes.len() {
        if whole_users[x] > 0 && users[x] > 1 {
            users[x] = 0;
        }
    }
    let mut p = Pass {
        old: g,
        users,
        new_id: vec![usize::MAX; g.nodes.len()],
        out: Graph { params: g.params.clone(), ..Graph::default() },
    };
    for (i, n) in g.nodes.iter().enumerate() {
        p.out.scope = n.scope;
        p.out.origin = n.origin;
        let id = match prim_of(n) {
            Some(Prim::Slice(s)) => p.sliced(n.inputs[0], s.axis_of(n.ty.shape.len()), &s.start, &s.end),
            Some(Prim::Matmul(m))
                if !m.transpose_a && concat_input(g, n.inputs[0]) && g.nodes[n.inputs[1]].ty.shape.len() == 2 =>
            {
                let tb = m.transpose_b;
                let mut offset = Dim::constant(0);
                let mut sum = None;
                for &part in &g.nodes[n.inputs[0]].inputs {
                    let width = g.nodes[part].ty.shape.last().expect("rank ≥ 1").clone();
                    let next = offset.add(&width).expect("sizes add");
                    let w = p.sliced(n.inputs[1], if tb { 1 } else { 0 }, &offset, &next);
                    let y = p.out.apply(m.clone(), vec![p.new_id[part], w]);
                    sum = Some(match sum {
                        Some(acc) => p.out.binary(Binary::Add, acc, y),
                        None => y,
                    });
                    offset = next;
                }
                sum.expect("a concat has parts")
            }
            _ => {
                let inputs = n.inputs.iter().map(|&x| p.new_id[x]).collect();
                p.out.add(n.op.clone(), inputs, n.ty.clone())
            }
        };
        p.new_id[i] = id;
    }
    p.out.outputs = g.outputs.iter().map(|&o| p.new_id[o]).collect();
    p.out.scope = 0;
    p.out.origin = None;
    p.out.pruned()
}

/// `x` concatenates along its last axis (and is not transposed into the matmul).
fn concat_input(g: &Graph, x: NodeId) -> bool {
    let n = &g.nodes[x];
    let rank = n.ty.shape.len();
    matches!(prim_of(n), Some(Prim::Concat(c)) if c.axis_of(rank) == rank - 1)
}
