//! The tensor graph every stage after the front end consumes: SSA nodes in topological
//! order, each a primitive applied to earlier nodes, with shapes whose only symbols are the
//! batch and sequence dimensions. Parameters carry their manifest entry (init, µP role).

mod build;
mod print;

pub use hyb_dsl::dim::Dim;
use hyb_dsl::inits::Role;
use hyb_dsl::prims::Prim;
use hyb_dsl::value::DType;
use serde::{Deserialize, Serialize};

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorType {
    pub shape: Vec<Dim>,
    pub dtype: DType,
}

/// A non-tensor argument of a primitive, in signature order (tensor slots are `Tensor`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Attr {
    Tensor,
    Int(Dim),
    Float(f64),
    Bool(bool),
    Str(String),
    Ints(Vec<Dim>),
    /// An optional tensor slot left empty (e.g. a conv without bias).
    Absent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// A program input (token ids), by name.
    Input(String),
    /// A learnable parameter: index into [`Graph::params`].
    Param(usize),
    /// A scalar constant (µP multipliers, epsilons, scales).
    Constant(f64),
    /// A primitive; `attrs` has one entry per signature slot. Tensor slots take, in order,
    /// the node's inputs (a variadic slot takes all of them).
    Prim { prim: Prim, attrs: Vec<Attr> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub ty: TensorType,
}

/// How a parameter is created and trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// Hierarchical name, e.g. `layers.3.mamba.in_proj.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Init {
    pub name: String,
    pub args: Vec<(String, f64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub params: Vec<ParamSpec>,
    pub outputs: Vec<NodeId>,
}

impl Graph {
    pub fn add(&mut self, op: Op, inputs: Vec<NodeId>, ty: TensorType) -> NodeId {
        debug_assert!(inputs.iter().all(|&i| i < self.nodes.len()), "inputs must precede their user");
        self.nodes.push(Node { op, inputs, ty });
        self.nodes.len() - 1
    }

    pub fn param_node(&self, param: usize) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.op == Op::Param(param))
    }

    pub fn input_nodes(&self) -> impl Iterator<Item = (NodeId, &str)> {
        self.nodes.iter().enumerate().filter_map(|(i, n)| match &n.op {
            Op::Input(name) => Some((i, name.as_str())),
            _ => None,
        })
    }
}
