//! A region as an egg [`RecExpr`], and back. Leaves keep the node they stand for, so the
//! parameters a rewritten region reads are the same parameters, with the same names; the
//! extracted program is a `RecExpr` too, stamped out into the graph for every region with
//! the same body.

use super::lang::{Ctx, ENode, Leaf, OpKind};
use super::region::Region;
use crate::ir::{Graph, NodeId, Op, TensorType};
use egg::{Id, RecExpr};
use std::collections::HashMap;

/// A program over the leaves in `ctx`, with operators interned in `ctx`; `roots` are its
/// outputs.
pub struct Program {
    pub expr: RecExpr<ENode>,
    pub ctx: Ctx,
    pub roots: Vec<Id>,
}

/// Region `r` of `g` as a program: each leaf is an outside value (parameter, input, another
/// region's node), each node an operation.
pub fn to_rec_expr(g: &Graph, r: &Region) -> Program {
    let mut ctx = Ctx::default();
    let mut expr = RecExpr::default();
    let mut id_of: HashMap<NodeId, Id> = HashMap::new();
    for (k, &l) in r.leaves.iter().enumerate() {
        let n = &g.nodes[l];
        ctx.leaves.push(Leaf { ty: n.ty.clone(), weight: matches!(n.op, Op::Param(_)), node: l });
        let op = ctx.intern(OpKind::Leaf(k));
        id_of.insert(l, expr.add(ENode { op, children: vec![] }));
    }
    for &i in &r.nodes {
        let n = &g.nodes[i];
        let op = match &n.op {
            Op::Constant(c) => ctx.intern(OpKind::Const(c.to_bits(), n.ty.dtype)),
            Op::Prim(prim) => ctx.intern(OpKind::Prim(prim.clone())),
            Op::Kernel(k) => ctx.kernel((**k).clone()),
            Op::Output(k) => ctx.intern(OpKind::Output(*k)),
            Op::Input(_) | Op::Param(_) => unreachable!("leaves are not region nodes"),
        };
        let children = n.inputs.iter().map(|x| id_of[x]).collect();
        id_of.insert(i, expr.add(ENode { op, children }));
    }
    let roots = r.outputs.iter().map(|o| id_of[o]).collect();
    Program { expr, ctx, roots }
}

impl Program {
    /// Appends the program to `out`, leaf `k` being node `leaves[k]` of `out`; returns the
    /// nodes of the roots. Types are inferred again, which checks every rewrite's shapes.
    pub fn instantiate(&self, out: &mut Graph, leaves: &[NodeId]) -> Vec<NodeId> {
        let mut made: Vec<NodeId> = Vec::with_capacity(self.expr.as_ref().len());
        for n in self.expr.as_ref() {
            let inputs: Vec<NodeId> = n.children.iter().map(|&c| made[usize::from(c)]).collect();
            let id = match self.ctx.op(n) {
                OpKind::Leaf(l) => leaves[*l],
                OpKind::Const(bits, dtype) => out.constant_of(f64::from_bits(*bits), *dtype),
                OpKind::Prim(prim) => out.apply(prim.clone(), inputs),
                OpKind::Kernel(k) => {
                    let kernel = self.ctx.kernels[*k].clone();
                    let ty: TensorType = kernel.body.nodes[kernel.body.outputs[0]].ty.clone();
                    out.add(Op::Kernel(Box::new(kernel)), inputs, ty)
                }
                OpKind::Output(i) => {
                    let ty = out.output_type(inputs[0], *i);
                    out.add(Op::Output(*i), inputs, ty)
                }
            };
            made.push(id);
        }
        self.roots.iter().map(|&r| made[usize::from(r)]).collect()
    }

    /// The program as a graph of its own: leaves that are parameters of `g` stay those
    /// parameters (same names), the others become inputs.
    pub fn to_graph(&self, g: &Graph) -> Graph {
        let mut out = Graph::default();
        let leaves: Vec<NodeId> = self
            .ctx
            .leaves
            .iter()
            .map(|leaf| {
                let op = match &g.nodes[leaf.node].op {
                    Op::Param(p) => {
                        out.params.push(g.params[*p].clone());
                        Op::Param(out.params.len() - 1)
                    }
                    Op::Input(name) => Op::Input(name.clone()),
                    _ => Op::Input(format!("%{}", leaf.node)),
                };
                out.add(op, vec![], leaf.ty.clone())
            })
            .collect();
        out.outputs = self.instantiate(&mut out, &leaves);
        out
    }
}
