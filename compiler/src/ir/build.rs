//! Adding nodes with their types inferred by the primitives' shape rules, for the stages
//! that create nodes after elaboration (autodiff, rewrites, the optimizer).

use super::{Attr, Graph, NodeId, Op, TensorType};
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::{self, Ctx, Kind, Prim};
use hyb_dsl::value::DType;

/// The type of `prim` applied to inputs of `types` with `attrs` (one per signature slot).
/// The shapes must be valid: such nodes are made by the compiler, not the user.
pub fn infer_type(prim: Prim, attrs: &[Attr], types: &[&TensorType]) -> TensorType {
    try_infer_type(prim, attrs, types).unwrap_or_else(|e| panic!("compiler built an invalid {}: {e}", prim.name()))
}

/// As [`infer_type`], for a pass that tries a transformation and backs off if it does not
/// type-check.
pub fn try_infer_type(prim: Prim, attrs: &[Attr], types: &[&TensorType]) -> Result<TensorType, String> {
    let mut next = types.iter();
    let args: Vec<prims::Arg> = prim
        .signature()
        .iter()
        .zip(attrs)
        .map(|(slot, a)| match a {
            Attr::Tensor if slot.kind == Kind::Tensors => {
                prims::Arg::Tensors(next.by_ref().map(|t| (t.shape.clone(), t.dtype)).collect())
            }
            Attr::Tensor => {
                let t = next.next().expect("an input per tensor slot");
                prims::Arg::Tensor(t.shape.clone(), t.dtype)
            }
            Attr::Int(d) => prims::Arg::Int(d.clone()),
            Attr::Float(x) => prims::Arg::Scalar(Some(*x)),
            Attr::Bool(b) => prims::Arg::Bool(Some(*b)),
            Attr::Str(s) => prims::Arg::Str(Some(s.clone())),
            Attr::Ints(v) => prims::Arg::Ints(v.clone()),
            Attr::Absent => prims::Arg::Absent,
        })
        .collect();
    let out = prim.infer(&args, Ctx { strict: true }).map_err(|e| e.message)?;
    let (shape, dtype) = out.into_iter().next().expect("one output");
    Ok(TensorType { shape, dtype })
}

impl Graph {
    /// Appends `prim` applied to `inputs` with `attrs` (one per signature slot). The shapes
    /// must be valid: these nodes are made by the compiler, not the user.
    pub fn apply(&mut self, prim: Prim, attrs: Vec<Attr>, inputs: Vec<NodeId>) -> NodeId {
        let types: Vec<&TensorType> = inputs.iter().map(|&i| &self.nodes[i].ty).collect();
        let ty = infer_type(prim, &attrs, &types);
        self.add(Op::Prim { prim, attrs }, inputs, ty)
    }

    /// As [`Graph::apply`], or an error if the shapes do not fit.
    pub fn try_apply(&mut self, prim: Prim, attrs: Vec<Attr>, inputs: Vec<NodeId>) -> Result<NodeId, String> {
        let types: Vec<&TensorType> = inputs.iter().map(|&i| &self.nodes[i].ty).collect();
        let ty = try_infer_type(prim, &attrs, &types)?;
        Ok(self.add(Op::Prim { prim, attrs }, inputs, ty))
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

    pub fn binary(&mut self, prim: Prim, a: NodeId, b: NodeId) -> NodeId {
        self.apply(prim, vec![Attr::Tensor, Attr::Tensor], vec![a, b])
    }

    pub fn unary(&mut self, prim: Prim, x: NodeId) -> NodeId {
        self.apply(prim, vec![Attr::Tensor], vec![x])
    }

    pub fn scale(&mut self, x: NodeId, c: f64) -> NodeId {
        let k = self.constant(c);
        self.binary(Prim::Mul, x, k)
    }

    pub fn reshape(&mut self, x: NodeId, shape: Vec<Dim>) -> NodeId {
        self.apply(Prim::Reshape, vec![Attr::Tensor, Attr::Ints(shape)], vec![x])
    }

    pub fn sum(&mut self, x: NodeId, axis: i64, keepdim: bool) -> NodeId {
        self.apply(Prim::Sum, vec![Attr::Tensor, Attr::Int(Dim::constant(axis)), Attr::Bool(keepdim)], vec![x])
    }

    /// Sum over every element: a scalar.
    pub fn sum_all(&mut self, x: NodeId) -> NodeId {
        let mut y = x;
        while !self.shape(y).is_empty() {
            y = self.sum(y, 0, false);
        }
        y
    }

    pub fn matmul(&mut self, a: NodeId, b: NodeId, ta: bool, tb: bool) -> NodeId {
        self.apply(Prim::Matmul, vec![Attr::Tensor, Attr::Tensor, Attr::Bool(ta), Attr::Bool(tb)], vec![a, b])
    }
}
