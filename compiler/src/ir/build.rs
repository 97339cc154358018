//! Adding nodes with their types inferred by the primitives' shape rules, for the stages
//! that create nodes after elaboration (autodiff, rewrites, the optimizer).

use super::{Graph, NodeId, Op, TensorType};
use crate::ops::{Binary, Broadcast, Matmul, Prim, Primitive, Reduce, ReduceOp, Reshape, Ty, Unary};
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::Ctx;
use hyb_dsl::value::DType;

/// The output types of `prim` applied to inputs of `types`, or why they do not fit.
pub fn try_infer_types(prim: &Prim, types: &[&TensorType]) -> Result<Vec<TensorType>, String> {
    let tys: Vec<Ty> = types.iter().map(|t| (t.shape.clone(), t.dtype)).collect();
    let outs = prim.infer(&tys, Ctx { strict: true }).map_err(|e| e.message)?;
    Ok(outs.into_iter().map(|(shape, dtype)| TensorType { shape, dtype }).collect())
}

/// The output types of `prim`. The shapes must be valid: such nodes are made by the
/// compiler, not the user.
pub fn infer_types(prim: &Prim, types: &[&TensorType]) -> Vec<TensorType> {
    try_infer_types(prim, types).unwrap_or_else(|e| panic!("compiler built an invalid {}: {e}", prim.name()))
}

impl Graph {
    /// Appends `prim` applied to `inputs`; returns the node (its first output; further
    /// outputs are read by adding [`Op::Output`] nodes). The shapes must be valid: these
    /// nodes are made by the compiler, not the user.
    pub fn apply(&mut self, prim: impl Into<Prim>, inputs: Vec<NodeId>) -> NodeId {
        let prim = prim.into();
        let name = prim.name();
        self.try_apply(prim, inputs).unwrap_or_else(|e| panic!("compiler built an invalid {name}: {e}"))
    }

    /// As [`Graph::apply`], returning every output (an [`Op::Output`] node for each after
    /// the first).
    pub fn apply_all(&mut self, prim: impl Into<Prim>, inputs: Vec<NodeId>) -> Vec<NodeId> {
        let prim = prim.into();
        let name = prim.name();
        self.try_apply_all(prim, inputs).unwrap_or_else(|e| panic!("compiler built an invalid {name}: {e}"))
    }

    /// As [`Graph::apply`], or an error if the shapes do not fit.
    pub fn try_apply(&mut self, prim: impl Into<Prim>, inputs: Vec<NodeId>) -> Result<NodeId, String> {
        let prim = prim.into();
        let types: Vec<&TensorType> = inputs.iter().map(|&i| &self.nodes[i].ty).collect();
        let first = try_infer_types(&prim, &types)?.swap_remove(0);
        Ok(self.add(Op::Prim(prim), inputs, first))
    }

    /// The type of output `i` of a multi-output node (a kernel or a primitive).
    pub fn output_type(&self, node: NodeId, i: usize) -> TensorType {
        let n = &self.nodes[node];
        match &n.op {
            Op::Kernel(k) => k.body.nodes[k.body.outputs[i]].ty.clone(),
            Op::Prim(p) => {
                let types: Vec<&TensorType> = n.inputs.iter().map(|&x| &self.nodes[x].ty).collect();
                infer_types(p, &types).swap_remove(i)
            }
            _ => panic!("node {node} has one output"),
        }
    }

    /// As [`Graph::apply_all`], or an error if the shapes do not fit.
    pub fn try_apply_all(&mut self, prim: impl Into<Prim>, inputs: Vec<NodeId>) -> Result<Vec<NodeId>, String> {
        let prim = prim.into();
        let types: Vec<&TensorType> = inputs.iter().map(|&i| &self.nodes[i].ty).collect();
        let mut outs = try_infer_types(&prim, &types)?.into_iter();
        let first = outs.next().ok_or_else(|| format!("{} has no output", prim.name()))?;
        let node = self.add(Op::Prim(prim), inputs, first);
        let mut ids = vec![node];
        for (k, ty) in outs.enumerate() {
            ids.push(self.add(Op::Output(k + 1), vec![node], ty));
        }
        Ok(ids)
    }

    /// A scalar constant; it takes the dtype of whatever it is combined with.
    pub fn constant(&mut self, x: f64) -> NodeId {
        self.constant_of(x, DType::F32)
    }

    pub fn constant_of(&mut self, x: f64, dtype: DType) -> NodeId {
        self.add(Op::Constant(x), vec![], TensorType { shape: vec![], dtype })
    }

    pub fn shape(&self, n: NodeId) -> &[Dim] {
        &self.nodes[n].ty.shape
    }

    pub fn binary(&mut self, op: Binary, a: NodeId, b: NodeId) -> NodeId {
        self.apply(op, vec![a, b])
    }

    pub fn unary(&mut self, op: Unary, x: NodeId) -> NodeId {
        self.apply(op, vec![x])
    }

    pub fn scale(&mut self, x: NodeId, c: f64) -> NodeId {
        let k = self.constant(c);
        self.binary(Binary::Mul, x, k)
    }

    pub fn reshape(&mut self, x: NodeId, shape: Vec<Dim>) -> NodeId {
        self.apply(Reshape { shape }, vec![x])
    }

    pub fn broadcast(&mut self, x: NodeId, shape: Vec<Dim>) -> NodeId {
        self.apply(Broadcast { shape }, vec![x])
    }

    pub fn reduce(&mut self, op: ReduceOp, x: NodeId, axis: i64, keepdim: bool) -> NodeId {
        self.apply(Reduce { op, axis, keepdim }, vec![x])
    }

    pub fn sum(&mut self, x: NodeId, axis: i64, keepdim: bool) -> NodeId {
        self.reduce(ReduceOp::Sum, x, axis, keepdim)
    }

    /// Sum over every element: a scalar. The last axis goes first, so each step sums
    /// rows of neighbouring elements (a weight's rows, a row's tokens) rather than columns
    /// strided through memory.
    pub fn sum_all(&mut self, x: NodeId) -> NodeId {
        let mut y = x;
        while !self.shape(y).is_empty() {
            y = self.sum(y, -1, false);
        }
        y
    }

    pub fn matmul(&mut self, a: NodeId, b: NodeId, ta: bool, tb: bool) -> NodeId {
        self.apply(Matmul::new(ta, tb), vec![a, b])
    }
}
