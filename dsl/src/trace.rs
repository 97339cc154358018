//! The instantiated program as a flat SSA list: inputs, parameters and primitive
//! applications with concrete shapes (only the batch and sequence symbols remain).
//! The checker builds it while validating a model; the compiler turns it into its graph.

use crate::ast::Span;
use crate::dim::Dim;
use crate::inits::Role;
use crate::prims::Callable;
use crate::source::FileId;
use crate::value::{DType, Shape};

#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub shape: Shape,
    pub dtype: DType,
}

/// A learnable parameter with everything needed to create and train it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Hierarchical name, e.g. `layers.3.mamba.in_proj.weight`.
    pub name: String,
    pub shape: Shape,
    pub init: InitSpec,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InitSpec {
    pub name: &'static str,
    pub args: Vec<(&'static str, f64)>,
}

/// A primitive's argument in the trace.
#[derive(Clone, Debug, PartialEq)]
pub enum TraceArg {
    Tensor(usize),
    Tensors(Vec<usize>),
    Scalar(f64),
    Int(Dim),
    Bool(bool),
    Str(String),
    Ints(Vec<Dim>),
    Absent,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Input { out: usize, name: String },
    Param { out: usize, param: ParamInfo },
    Prim { prim: &'static Callable, args: Vec<TraceArg>, outs: Vec<usize>, file: FileId, span: Span },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    pub tensors: Vec<TensorInfo>,
    pub ops: Vec<Op>,
    pub outputs: Vec<usize>,
    /// The ops of layer `i` are `ops[layers[i]]`: the model's repeated units, which the
    /// compiler optimises once per distinct body.
    pub layers: Vec<std::ops::Range<usize>>,
}

impl Trace {
    pub fn new_tensor(&mut self, shape: Shape, dtype: DType) -> usize {
        self.tensors.push(TensorInfo { shape, dtype });
        self.tensors.len() - 1
    }

    pub fn params(&self) -> impl Iterator<Item = &ParamInfo> {
        self.ops.iter().filter_map(|op| match op {
            Op::Param { param, .. } => Some(param),
            _ => None,
        })
    }
}

/// Number of elements of a fully known shape.
pub fn numel(shape: &[Dim]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(u64::try_from(d.as_const()?).ok()?))
}
