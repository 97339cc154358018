//! A kernel body made concrete for one program: every node's shape under the program's
//! batch and sequence length, the body's inputs in order, its outputs grouped into loop
//! nests, and a refusal — naming the primitive — of anything the generator cannot compile.

use super::{CodegenError, Symbols};
use crate::ir::{Graph, NodeId, Op};
use crate::ops::{Prim, Primitive};
use hyb_dsl::value::DType;

/// A body with concrete shapes.
pub struct Body<'g> {
    pub graph: &'g Graph,
    pub symbols: Symbols,
    pub shapes: Vec<Vec<usize>>,
    /// The node of input `k` (the body's input named `k`).
    pub inputs: Vec<NodeId>,
    /// The loop nests, each computing the outputs of one shape in one pass.
    pub nests: Vec<Nest>,
    /// Per view (inputs, then outputs): whether the code may take its last axis to have
    /// stride 1, which makes the inner loop unit-stride for LLVM's vectoriser.
    pub unit_last: Vec<bool>,
    /// Per view (inputs, then outputs): the element type it holds in memory. The math is
    /// f32 whatever a view stores, so the caller picks each view's storage (f32 by default).
    pub storage: Vec<Storage>,
}

/// A view's element type in memory: loads widen it to f32, stores round to nearest even.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub enum Storage {
    #[default]
    F32,
    Bf16,
}

impl Storage {
    /// The storage a tensor of `dtype` gets: bf16 for bf16 values, f32 for everything else
    /// (integers the kernel reads, such as token ids, are stored as f32 in the arena).
    pub fn of(dtype: DType) -> Storage {
        if dtype == DType::BF16 {
            Storage::Bf16
        } else {
            Storage::F32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::Bf16 => 2,
        }
    }

    /// The MLIR element type.
    pub fn mlir(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::Bf16 => "bf16",
        }
    }
}

/// Outputs of one shape, computed together so they share every value they both read.
#[derive(Clone, Debug, PartialEq)]
pub struct Nest {
    /// Positions in the body's output list.
    pub outputs: Vec<usize>,
    pub shape: Vec<usize>,
}

impl Nest {
    /// Rows are the leading axes; the last axis is the inner loop (a scalar is one row).
    pub fn rows(&self) -> usize {
        self.shape[..self.shape.len().saturating_sub(1)].iter().product()
    }

    pub fn inner(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
}

impl<'g> Body<'g> {
    /// The shape of `node` of `graph` under `symbols`' sizes.
    pub fn shape_of(graph: &Graph, node: NodeId, symbols: Symbols) -> Result<Vec<usize>, CodegenError> {
        let bind = symbols.binder();
        let ty = &graph.nodes[node].ty;
        ty.shape
            .iter()
            .map(|d| d.eval(&bind).and_then(|v| usize::try_from(v).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| CodegenError::Unbound { node, shape: format!("{:?}", ty.shape) })
    }

    /// Resolves shapes and checks that every node is something the generator compiles.
    pub fn resolve(graph: &'g Graph, symbols: Symbols) -> Result<Body<'g>, CodegenError> {
        let bind = symbols.binder();
        let mut shapes = Vec::with_capacity(graph.nodes.len());
        let mut inputs: Vec<Option<NodeId>> = Vec::new();
        for (i, n) in graph.nodes.iter().enumerate() {
            let shape =
                n.ty.shape
                    .iter()
                    .map(|d| d.eval(&bind).and_then(|v| usize::try_from(v).ok()))
                    .collect::<Option<Vec<usize>>>()
                    .ok_or_else(|| CodegenError::Unbound { node: i, shape: format!("{:?}", n.ty.shape) })?;
            shapes.push(shape);
            supported(graph, i)?;
            if let Op::Input(name) = &n.op {
                let k: usize = name.parse().map_err(|_| CodegenError::Unsupported {
                    node: i,
                    primitive: format!("input `{name}`"),
                    why: "kernel body inputs are numbered".into(),
                })?;
                if inputs.len() <= k {
                    inputs.resize(k + 1, None);
                }
                inputs[k] = Some(i);
            }
        }
        let inputs = inputs
            .into_iter()
            .enumerate()
            .map(|(k, n)| {
                n.ok_or_else(|| CodegenError::Unsupported {
                    node: 0,
                    primitive: format!("input `{k}`"),
                    why: "the body's inputs are not numbered 0, 1, …".into(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut nests: Vec<Nest> = Vec::new();
        for (pos, &o) in graph.outputs.iter().enumerate() {
            match nests.iter_mut().find(|n| n.shape == shapes[o]) {
                Some(n) => n.outputs.push(pos),
                None => nests.push(Nest { outputs: vec![pos], shape: shapes[o].clone() }),
            }
        }
        let unit_last = vec![false; inputs.len() + graph.outputs.len()];
        let storage = vec![Storage::F32; unit_last.len()];
        Ok(Body { graph, symbols, shapes, inputs, nests, unit_last, storage })
    }

    /// The rank of every input and then every output, in launch order.
    pub fn view_ranks(&self) -> Vec<usize> {
        let ins = self.inputs.iter().map(|&n| self.shapes[n].len());
        let outs = self.graph.outputs.iter().map(|&n| self.shapes[n].len());
        ins.chain(outs).collect()
    }

    pub fn output_shapes(&self) -> Vec<Vec<usize>> {
        self.graph.outputs.iter().map(|&n| self.shapes[n].clone()).collect()
    }

    /// Sets the views' storage; `storage` is empty (all f32) or names every view.
    pub fn with_storage(mut self, storage: &[Storage]) -> Result<Body<'g>, CodegenError> {
        if storage.is_empty() {
            return Ok(self);
        }
        if storage.len() != self.storage.len() {
            return Err(CodegenError::Unsupported {
                node: 0,
                primitive: "kernel".into(),
                why: format!("{} storage types given for {} views", storage.len(), self.storage.len()),
            });
        }
        self.storage = storage.to_vec();
        Ok(self)
    }

    pub fn input_shapes(&self) -> Vec<Vec<usize>> {
        self.inputs.iter().map(|&n| self.shapes[n].clone()).collect()
    }
}

/// What the generator compiles: inputs, constants, pointwise primitives, reductions along
/// any axis and views; float values (computed in f32).
fn supported(graph: &Graph, i: NodeId) -> Result<(), CodegenError> {
    let n = &graph.nodes[i];
    let refuse = |primitive: &str, why: &str| {
        Err(CodegenError::Unsupported { node: i, primitive: primitive.to_string(), why: why.to_string() })
    };
    match &n.op {
        Op::Input(_) | Op::Constant(_) => {}
        Op::Prim(p) => match p {
            Prim::Unary(_)
            | Prim::Binary(_)
            | Prim::Pow(_)
            | Prim::Clamp(_)
            | Prim::Cast(_)
            | Prim::Select(_)
            | Prim::StopGradient(_)
            | Prim::OneHot(_)
            | Prim::Reduce(_)
            | Prim::Reshape(_)
            | Prim::Permute(_)
            | Prim::Transpose(_)
            | Prim::Broadcast(_)
            | Prim::Slice(_) => {}
            other => return refuse(other.name(), "not a pointwise, reduction or view primitive"),
        },
        Op::Param(_) => return refuse("param", "kernel bodies read parameters as inputs"),
        Op::Kernel(_) => return refuse("kernel", "kernels do not nest"),
        Op::Output(_) => return refuse("output", "multi-output primitives are not fused"),
    }
    // Integer inputs (token ids) are stored as floats; what a kernel computes is float.
    if !n.ty.dtype.is_float() && !matches!(n.op, Op::Input(_)) {
        return refuse(&node_name(graph, i), &format!("its values are {}, not floats", n.ty.dtype.name()));
    }
    Ok(())
}

/// The primitive (or leaf) a node applies, for error messages.
pub fn node_name(graph: &Graph, i: NodeId) -> String {
    match &graph.nodes[i].op {
        Op::Prim(p) => p.name().to_string(),
        Op::Input(name) => format!("input {name}"),
        Op::Constant(c) => format!("constant {c}"),
        Op::Param(_) => "param".into(),
        Op::Kernel(_) => "kernel".into(),
        Op::Output(k) => format!("output {k}"),
    }
}

/// The storage each view of `body` (inputs by number, then outputs) gets from its
/// tensor's IR dtype: what a program that keeps bf16 activations stores.
pub fn declared_storage(body: &Graph) -> Vec<Storage> {
    let mut inputs: Vec<(usize, NodeId)> =
        body.input_nodes().filter_map(|(n, name)| Some((name.parse().ok()?, n))).collect();
    inputs.sort();
    let nodes = inputs.into_iter().map(|(_, n)| n).chain(body.outputs.iter().copied());
    nodes.map(|n| Storage::of(body.nodes[n].ty.dtype)).collect()
}
