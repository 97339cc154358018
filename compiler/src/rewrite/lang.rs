//! The e-graph language: one e-node per IR operation, its operator interned in the
//! analysis so nodes stay small and ordered. The analysis carries each class's type (shape
//! and dtype), its value when it is a known scalar, and whether it is computed from
//! weights alone — the conditions rules check before they fire.

use crate::ir::{infer_types, Kernel, TensorType};
use crate::ops::{Concat, Prim, Primitive, Slice};
use egg::{DidMerge, Id, Language};
use hyb_dsl::dim::Dim;
use hyb_dsl::value::DType;
use std::collections::HashMap;

/// An operator applied to child classes; `op` indexes [`Ctx::ops`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ENode {
    pub op: u32,
    pub children: Vec<Id>,
}

impl Language for ENode {
    type Discriminant = u32;

    fn discriminant(&self) -> u32 {
        self.op
    }

    fn matches(&self, other: &Self) -> bool {
        self.op == other.op && self.children.len() == other.children.len()
    }

    fn children(&self) -> &[Id] {
        &self.children
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// A value from outside the region (input, parameter, another region's node): index
    /// into [`Ctx::leaves`].
    Leaf(usize),
    /// A scalar constant (its bits) of a dtype.
    Const(u64, DType),
    Prim(Prim),
    /// A kernel: index into [`Ctx::kernels`].
    Kernel(usize),
    /// Output `i` (≥ 1) of the multi-output kernel that is the node's child.
    Output(usize),
}

/// What the rewriter knows about a value from outside the region.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub ty: TensorType,
    /// A learnable parameter (so rules may pre-pack or pre-scale it).
    pub weight: bool,
    /// The node of the original graph it stands for.
    pub node: crate::ir::NodeId,
}

/// Facts about an e-class that rule conditions read.
#[derive(Clone, Debug, PartialEq)]
pub struct Data {
    pub ty: TensorType,
    /// The value, when the class is a known scalar.
    pub constant: Option<f64>,
    /// Computed from parameters and constants only: work on it is per-step weight
    /// preparation, not per-token activation traffic.
    pub weight: bool,
}

/// The analysis: operator and kernel tables, leaf facts, and the multi-class alternatives
/// rules create (a merged GEMM replaces several classes at once: extraction must weigh
/// the group together).
#[derive(Clone, Default)]
pub struct Ctx {
    pub ops: Vec<OpKind>,
    index: HashMap<OpKind, u32>,
    pub kernels: Vec<Kernel>,
    kernel_index: HashMap<String, usize>,
    pub leaves: Vec<Leaf>,
    pub groups: Vec<Vec<(Id, ENode)>>,
    /// How many equalities each rule added.
    pub fired: std::collections::BTreeMap<&'static str, usize>,
}

pub type EGraph = egg::EGraph<ENode, Ctx>;

impl Ctx {
    pub fn intern(&mut self, op: OpKind) -> u32 {
        if let Some(&i) = self.index.get(&op) {
            return i;
        }
        self.ops.push(op.clone());
        let i = self.ops.len() as u32 - 1;
        self.index.insert(op, i);
        i
    }

    pub fn op(&self, n: &ENode) -> &OpKind {
        &self.ops[n.op as usize]
    }

    /// Interns a kernel, so equal kernels (e.g. one per layer) are one operator.
    pub fn kernel(&mut self, k: Kernel) -> u32 {
        let key = serde_json::to_string(&k).expect("kernels serialise");
        let i = match self.kernel_index.get(&key) {
            Some(&i) => i,
            None => {
                self.kernels.push(k);
                self.kernel_index.insert(key, self.kernels.len() - 1);
                self.kernels.len() - 1
            }
        };
        self.intern(OpKind::Kernel(i))
    }
}

impl egg::Analysis<ENode> for Ctx {
    type Data = Data;

    fn make(egraph: &mut EGraph, enode: &ENode, _id: Id) -> Data {
        let child = |i: usize| &egraph[enode.children[i]].data;
        match egraph.analysis.op(enode) {
            OpKind::Leaf(l) => {
                let leaf = &egraph.analysis.leaves[*l];
                Data { ty: leaf.ty.clone(), constant: None, weight: leaf.weight }
            }
            OpKind::Const(bits, dtype) => Data {
                ty: TensorType { shape: vec![], dtype: *dtype },
                constant: Some(f64::from_bits(*bits)),
                weight: true,
            },
            OpKind::Prim(prim) => {
                let types: Vec<&TensorType> = (0..enode.children.len()).map(|i| &child(i).ty).collect();
                let ty = infer_types(prim, &types).swap_remove(0);
                let weight = (0..enode.children.len()).all(|i| child(i).weight) && !matches!(prim, Prim::Embedding(_));
                let constant = fold(prim, &enode.children.iter().map(|&c| egraph[c].data.constant).collect::<Vec<_>>());
                Data { ty, constant, weight }
            }
            OpKind::Kernel(k) => {
                let body = &egraph.analysis.kernels[*k].body;
                let ty = body.nodes[body.outputs[0]].ty.clone();
                Data { ty, constant: None, weight: false }
            }
            OpKind::Output(i) => {
                let source = &egraph[enode.children[0]];
                let ty = source
                    .nodes
                    .iter()
                    .find_map(|n| match egraph.analysis.op(n) {
                        OpKind::Kernel(k) => {
                            let body = &egraph.analysis.kernels[*k].body;
                            Some(body.nodes[body.outputs[*i]].ty.clone())
                        }
                        OpKind::Prim(p) => {
                            let types: Vec<&TensorType> = n.children.iter().map(|&c| &egraph[c].data.ty).collect();
                            Some(infer_types(p, &types).swap_remove(*i))
                        }
                        _ => None,
                    })
                    .expect("an output reads a multi-output kernel or primitive");
                Data { ty, constant: None, weight: false }
            }
        }
    }

    fn merge(&mut self, to: &mut Data, from: Data) -> DidMerge {
        debug_assert_eq!(to.ty.shape, from.ty.shape, "a rule changed a shape");
        let mut changed = (false, false);
        if to.constant.is_none() && from.constant.is_some() {
            to.constant = from.constant;
            changed.0 = true;
        }
        if !to.weight && from.weight {
            to.weight = true;
            changed.0 = true;
        }
        changed.1 = to.constant != from.constant || to.weight != from.weight;
        DidMerge(changed.0, changed.1)
    }

    /// A class found to be a known scalar also gets the constant node, so folding is
    /// visible to extraction.
    fn modify(egraph: &mut EGraph, id: Id) {
        let data = &egraph[id].data;
        if let (Some(c), true) = (data.constant, data.ty.shape.is_empty()) {
            let op = egraph.analysis.intern(OpKind::Const(c.to_bits(), data.ty.dtype));
            let k = egraph.add(ENode { op, children: vec![] });
            egraph.union(id, k);
        }
    }
}

/// The value of a pointwise op whose inputs are all known scalars.
fn fold(prim: &Prim, inputs: &[Option<f64>]) -> Option<f64> {
    let known: Option<Vec<f64>> = inputs.iter().copied().collect();
    prim.fold(&known?).filter(|v| v.is_finite())
}

/// A learnable parameter as it is stored (not a computed weight).
pub fn is_param(eg: &EGraph, id: Id) -> bool {
    eg[id].nodes.iter().any(|n| matches!(eg.analysis.op(n), OpKind::Leaf(l) if eg.analysis.leaves[*l].weight))
}

/// A weight as the step stores it: a parameter, a slice of one, or either read as a part a
/// group of tensor-parallel ranks holds alike (`group_copy`, the identity).
pub fn is_stored(eg: &EGraph, id: Id) -> bool {
    let held = |id: Id| is_param(eg, id) || param_slice(eg, id).is_some();
    held(id)
        || nodes_of(eg, id, |p| matches!(p, Prim::GroupCopy(_)).then_some(())).iter().any(|(n, _)| held(n.children[0]))
}

/// A parameter or a contiguous slice of one: `(parameter, axis, start, end)`.
pub fn param_slice(eg: &EGraph, id: Id) -> Option<(Id, usize, Dim, Dim)> {
    if is_param(eg, id) {
        return None;
    }
    slices_of(eg, id).into_iter().find(|&(src, ..)| is_param(eg, src))
}

/// The slices in class `id`: `(source, axis, start, end)`, the source canonical.
pub fn slices_of(eg: &EGraph, id: Id) -> Vec<(Id, usize, Dim, Dim)> {
    nodes_of(eg, id, |p| match p {
        Prim::Slice(s) => Some(s.clone()),
        _ => None,
    })
    .into_iter()
    .map(|(n, s)| {
        let src = n.children[0];
        (eg.find(src), s.axis_of(shape(eg, src).len()), s.start, s.end)
    })
    .collect()
}

/// `concat(parts, axis)`, written as the source itself (or one slice of it) when the parts
/// are adjacent slices of one tensor — so splitting and re-joining a weight finds the
/// weight again instead of growing the e-graph.
pub fn add_concat(eg: &mut EGraph, parts: Vec<Id>, ax: usize) -> Id {
    let slices: Option<Vec<_>> = parts.iter().map(|&p| param_slice(eg, p)).collect();
    if let Some(s) = slices {
        let src = s[0].0;
        let adjacent = s.iter().all(|(w, a, ..)| *w == src && *a == ax) && s.windows(2).all(|w| w[0].3 == w[1].2);
        if adjacent {
            let (start, end) = (s[0].2.clone(), s[s.len() - 1].3.clone());
            if start.as_const() == Some(0) && Some(&end) == shape(eg, src).get(ax) {
                return src;
            }
            return add_prim(eg, Slice::new(ax, start, end), vec![src]);
        }
    }
    add_prim(eg, Concat::new(ax), parts)
}

/// Adds `prim(children)` and returns its class.
pub fn add_prim(eg: &mut EGraph, prim: impl Into<Prim>, children: Vec<Id>) -> Id {
    let op = eg.analysis.intern(OpKind::Prim(prim.into()));
    eg.add(ENode { op, children })
}

pub fn add_const(eg: &mut EGraph, x: f64, dtype: DType) -> Id {
    let op = eg.analysis.intern(OpKind::Const(x.to_bits(), dtype));
    eg.add(ENode { op, children: vec![] })
}

/// The primitive of a node, if it is a primitive.
pub fn as_prim<'a>(eg: &'a EGraph, n: &ENode) -> Option<&'a Prim> {
    match eg.analysis.op(n) {
        OpKind::Prim(p) => Some(p),
        _ => None,
    }
}

/// The nodes of class `id` whose primitive `pick` accepts, with what it picked of them.
pub fn nodes_of<T>(eg: &EGraph, id: Id, pick: impl Fn(&Prim) -> Option<T>) -> Vec<(ENode, T)> {
    eg[id].nodes.iter().filter_map(|n| Some((n.clone(), pick(as_prim(eg, n)?)?))).collect()
}

/// The nodes of class `id` that apply a primitive matching `pattern`.
macro_rules! nodes_matching {
    ($eg:expr, $id:expr, $pattern:pat) => {
        $crate::rewrite::lang::nodes_of($eg, $id, |p| matches!(p, $pattern).then_some(()))
            .into_iter()
            .map(|(n, ())| n)
            .collect::<Vec<_>>()
    };
}
pub(crate) use nodes_matching;

pub fn shape(eg: &EGraph, id: Id) -> &[Dim] {
    &eg[id].data.ty.shape
}

/// Normalises a possibly negative axis.
pub fn axis(a: i64, rank: usize) -> usize {
    if a < 0 {
        (a + rank as i64) as usize
    } else {
        a as usize
    }
}
