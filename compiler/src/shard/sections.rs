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

use crate::ir::{Attr, Graph, NodeId, Op};
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::Prim;

struct Pass<'a> {
    old: &'a Graph,
    users: Vec<usize>,
    new_id: Vec<NodeId>,
    out: Graph,
}

fn prim_of(n: &crate::ir::Node) -> Option<(Prim, &[Attr])> {
    match &n.op {
        Op::Prim { prim, attrs } => Some((*prim, attrs)),
        _ => None,
    }
}

fn int(a: &Attr) -> Option<i64> {
    match a {
        Attr::Int(d) => d.as_const(),
        _ => None,
    }
}

fn slice_attrs(axis: usize, start: &Dim, end: &Dim) -> Vec<Attr> {
    vec![Attr::Tensor, Attr::Int(Dim::constant(axis as i64)), Attr::Int(start.clone()), Attr::Int(end.clone())]
}

impl Pass<'_> {
    /// A node of the new graph equal to `slice(old_x, axis, start, end)`, computed from
    /// slices of `old_x`'s inputs where `old_x` is used only through slices.
    fn sliced(&mut self, x: NodeId, axis: usize, start: &Dim, end: &Dim) -> NodeId {
        if let Some(y) = self.push(x, axis, start, end) {
            return y;
        }
        let nx = self.new_id[x];
        self.out.apply(Prim::Slice, slice_attrs(axis, start, end), vec![nx])
    }

    fn push(&mut self, x: NodeId, axis: usize, start: &Dim, end: &Dim) -> Option<NodeId> {
        let n = &self.old.nodes[x];
        let rank = n.ty.shape.len();
        if matches!(n.op, Op::Param(_)) || self.users[x] == 0 {
            return None;
        }
        let (prim, attrs) = prim_of(n)?;
        let last = axis + 1 == rank;
        match prim {
            Prim::Matmul if last && !matches!(attrs[2], Attr::Bool(true)) => {
                let (a, w) = (n.inputs[0], n.inputs[1]);
                let tb = matches!(attrs[3], Attr::Bool(true));
                if self.old.nodes[w].ty.shape.len() != 2 {
                    return None;
                }
                let ws = self.sliced(w, if tb { 0 } else { 1 }, start, end);
                Some(self.out.apply(Prim::Matmul, attrs.to_vec(), vec![self.new_id[a], ws]))
            }
            _ if prim.is_elementwise() => {
                let mut inputs = Vec::new();
                for &y in &n.inputs {
                    let ys = &self.old.nodes[y].ty.shape;
                    let k = (axis + ys.len()).checked_sub(rank);
                    match k {
                        Some(k) if ys[k] == n.ty.shape[axis] => inputs.push(self.sliced(y, k, start, end)),
                        _ => inputs.push(self.new_id[y]),
                    }
                }
                Some(self.out.apply(prim, attrs.to_vec(), inputs))
            }
            Prim::CausalConv1d if last => {
                let mut inputs = vec![self.sliced(n.inputs[0], axis, start, end)];
                for &p in &n.inputs[1..] {
                    inputs.push(self.sliced(p, 0, start, end));
                }
                Some(self.out.apply(prim, attrs.to_vec(), inputs))
            }
            Prim::Concat
                if int(&attrs[1]).map(|a| if a < 0 { (a + rank as i64) as usize } else { a as usize })
                    == Some(axis) =>
            {
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
            if !matches!(prim_of(n), Some((Prim::Slice, _))) {
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
        let id = match prim_of(n) {
            Some((Prim::Slice, attrs)) => {
                let rank = n.ty.shape.len() as i64;
                let a = int(&attrs[1]).map(|a| if a < 0 { a + rank } else { a }).expect("constant axis") as usize;
                let (Attr::Int(start), Attr::Int(end)) = (&attrs[2], &attrs[3]) else { unreachable!("checked slice") };
                let (start, end) = (start.clone(), end.clone());
                p.sliced(n.inputs[0], a, &start, &end)
            }
            Some((Prim::Matmul, attrs))
                if !matches!(attrs[2], Attr::Bool(true))
                    && concat_input(g, n.inputs[0])
                    && g.nodes[n.inputs[1]].ty.shape.len() == 2 =>
            {
                let tb = matches!(attrs[3], Attr::Bool(true));
                let mut offset = Dim::constant(0);
                let mut sum = None;
                for &part in &g.nodes[n.inputs[0]].inputs {
                    let width = g.nodes[part].ty.shape.last().expect("rank ≥ 1").clone();
                    let next = offset.add(&width).expect("sizes add");
                    let w = p.sliced(n.inputs[1], if tb { 1 } else { 0 }, &offset, &next);
                    let y = p.out.apply(Prim::Matmul, attrs.to_vec(), vec![p.new_id[part], w]);
                    sum = Some(match sum {
                        Some(acc) => p.out.binary(Prim::Add, acc, y),
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
    p.out.pruned()
}

/// `x` concatenates along its last axis (and is not transposed into the matmul).
fn concat_input(g: &Graph, x: NodeId) -> bool {
    let n = &g.nodes[x];
    let rank = n.ty.shape.len() as i64;
    matches!(prim_of(n), Some((Prim::Concat, a)) if int(&a[1]).map(|a| if a < 0 { a + rank } else { a }) == Some(rank - 1))
}
