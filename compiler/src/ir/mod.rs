//! The tensor graph every stage after the front end consumes: SSA nodes in topological
//! order, each a primitive applied to earlier nodes, with shapes whose only symbols are the
//! batch and sequence dimensions. Parameters carry their manifest entry (init, µP role).

mod build;
pub use build::{infer_types, try_infer_types};
mod print;

use crate::ops::Prim;
pub use hyb_dsl::dim::Dim;
use hyb_dsl::inits::Role;
use hyb_dsl::value::DType;
use serde::{Deserialize, Serialize};

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorType {
    pub shape: Vec<Dim>,
    pub dtype: DType,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// A program input (token ids), by name.
    Input(String),
    /// A learnable parameter: index into [`Graph::params`].
    Param(usize),
    /// A scalar constant (µP multipliers, epsilons, scales).
    Constant(f64),
    /// A primitive with its attributes, applied to the node's inputs. Its value is its
    /// first output; further outputs are read through [`Op::Output`] nodes.
    Prim(Prim),
    /// A kernel chosen by the rewriter: several primitives computed in one launch. Its
    /// value is the body's first output.
    Kernel(Box<Kernel>),
    /// Output `i` (≥ 1) of the multi-output kernel or primitive that is this node's input.
    Output(usize),
}

/// What a kernel node computes is its `body`, a graph whose inputs `0`, `1`, … are the
/// node's inputs in order; the body's first output is the node's value and any further
/// outputs are read through [`Op::Output`] nodes (one launch writing several tensors, as an
/// optimizer update writes the weight and both moments). `kind` tells a backend which
/// template implements it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    pub kind: KernelKind,
    pub body: Graph,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KernelKind {
    /// Causal softmax attention, `groups` query heads per key/value head; with `rope`, the
    /// rotary embedding (of that base) is applied to q and k inside the kernel. With
    /// `documents` (packed rows) a last input `positions [B, T]` confines every query to
    /// the keys of its document and RoPE to the place in it (`ops::documents`).
    FlashAttention {
        scale: f64,
        groups: usize,
        rope: Option<f64>,
        #[serde(default)]
        documents: bool,
    },
    /// BitNet b1.58: per-token int8 activations times ternary weights.
    BitLinear,
    /// `silu(causal_conv1d(x, w, bias))` (with `documents`, of `document_conv1d`): Mamba's
    /// conv and activation in one pass, so the pre-activation never reaches memory.
    ConvSilu { documents: bool },
    /// A GEMM whose pointwise consumers run in its epilogue.
    Gemm,
    /// Pointwise operations and row reductions in one pass.
    Fused,
    /// The gradients of a kernel of kind `of` with respect to its floating-point inputs, in
    /// order, as one kernel with an output per input (its body recomputes what it needs of
    /// the forward pass).
    Grad { of: Box<KernelKind> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub ty: TensorType,
    /// The repeated unit the node belongs to (layer `i` is scope `i + 1`; 0 is outside any
    /// layer), so the rewriter optimises each distinct layer body once.
    #[serde(default)]
    pub scope: u32,
    /// Where in the `.hyb` source the node comes from (the call it computes, or the call
    /// whose gradient or shard it is), so a later stage can point at the line.
    #[serde(default)]
    pub origin: Option<Origin>,
}

/// A place in the checked program's sources: file (as the checker numbered them) and byte
/// range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    pub file: usize,
    pub start: usize,
    pub end: usize,
}

/// A parameter's name with its layer index replaced by `*` (`layers.*.mamba.D`), so the
/// same parameter of every layer reads alike in reports.
pub fn generic_name(name: &str) -> String {
    match name.strip_prefix("layers.").and_then(|r| r.split_once('.')) {
        Some((_, rest)) => format!("layers.*.{rest}"),
        None => name.to_string(),
    }
}

/// How a parameter is created and trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// Hierarchical name, e.g. `layers.3.mamba.in_proj.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    pub role: Role,
    /// The part each rank holds in a tensor-parallel program (`None`: the whole tensor).
    #[serde(default)]
    pub shard: Option<ParamShard>,
    /// How a ZeRO-1 step holds the parameter's optimizer moments (`None`: whole, as the
    /// parameter or its tensor-parallel part).
    #[serde(default)]
    pub moments: Option<MomentShard>,
}

/// ZeRO-1's layout of a parameter's moments: the (tensor-parallel rank's) parameter
/// flattened, zero-padded to a multiple of `replicas`, each data-parallel replica holding
/// its run of [`MomentShard::run`] elements, in replica order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MomentShard {
    pub replicas: usize,
}

impl MomentShard {
    /// Elements per replica of a parameter of `elements`.
    pub fn run(&self, elements: usize) -> usize {
        elements.div_ceil(self.replicas)
    }

    /// Replica `rank`'s run of the whole moment `full`.
    pub fn local<T: Copy + Default>(&self, full: &[T], rank: usize) -> Vec<T> {
        let n = self.run(full.len());
        (rank * n..(rank + 1) * n).map(|i| full.get(i).copied().unwrap_or_default()).collect()
    }

    /// The whole moment of `elements` from every replica's run, the padding dropped.
    pub fn gather<T: Copy>(&self, runs: &[Vec<T>], elements: usize) -> Vec<T> {
        runs.iter().flatten().copied().take(elements).collect()
    }
}

/// How a tensor-parallel program holds a parameter: along `axis` the parameter is a run of
/// sections, each cut into its [`Section::parts`]; each rank holds, in order, its part of
/// every section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamShard {
    pub axis: usize,
    pub ranks: usize,
    pub sections: Vec<Section>,
}

/// `size` rows of a parameter in `parts` equal parts: 1 (every rank holds it whole), the
/// rank count (each rank its own), or fewer, each part held by `ranks / parts` consecutive
/// ranks alike (a key/value head shared by several ranks' query heads).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub size: usize,
    pub parts: usize,
}

impl Section {
    /// Rows of the section a rank holds.
    pub fn local(&self) -> usize {
        self.size / self.parts
    }

    /// The part rank `rank` of `ranks` holds.
    pub fn part_of(&self, rank: usize, ranks: usize) -> usize {
        rank / (ranks / self.parts)
    }

    /// The first of the ranks holding part `part`.
    pub fn holder(&self, part: usize, ranks: usize) -> usize {
        part * (ranks / self.parts)
    }
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
    /// The scope [`Graph::add`] gives new nodes.
    #[serde(skip)]
    pub scope: u32,
    /// The origin [`Graph::add`] gives new nodes.
    #[serde(skip)]
    pub origin: Option<Origin>,
}

impl Graph {
    pub fn add(&mut self, op: Op, inputs: Vec<NodeId>, ty: TensorType) -> NodeId {
        debug_assert!(inputs.iter().all(|&i| i < self.nodes.len()), "inputs must precede their user");
        self.nodes.push(Node { op, inputs, ty, scope: self.scope, origin: self.origin });
        self.nodes.len() - 1
    }

    /// The graph without the nodes its outputs do not need (inputs stay: they are its
    /// interface).
    pub fn pruned(&self) -> Graph {
        let mut live = vec![false; self.nodes.len()];
        for &o in &self.outputs {
            live[o] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if live[i] || matches!(self.nodes[i].op, Op::Input(_)) {
                live[i] = true;
                for &x in &self.nodes[i].inputs {
                    live[x] = true;
                }
            }
        }
        let mut out = Graph { params: self.params.clone(), ..Graph::default() };
        let mut new_id = vec![usize::MAX; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate().filter(|(i, _)| live[*i]) {
            out.scope = n.scope;
            out.origin = n.origin;
            new_id[i] = out.add(n.op.clone(), n.inputs.iter().map(|&x| new_id[x]).collect(), n.ty.clone());
        }
        out.outputs = self.outputs.iter().map(|&o| new_id[o]).collect();
        out.scope = 0;
        out.origin = None;
        out
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
