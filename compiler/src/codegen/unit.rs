//! What code a launch gets — decided once here, so the executors and `hyb compile --emit`
//! agree on it:
//! - a fused kernel, or a primitive launched alone that the generator compiles (a `silu`,
//!   a row `sum`), is a kernel body, with the constants its node passes folded in;
//! - a sequence primitive or attention kernel is its template;
//! - a matmul is a GEMM for the GEMM library;
//! - a kernel with GEMMs inside (a GEMM kernel and its epilogue, a BitLinear and its
//!   quantisers, their gradients) is a [`Chain`] of GEMMs and generated bodies.
//!
//! Anything else has no code yet ([`Unit`] is an error naming why), and an executor runs
//! it with the reference semantics.

use super::body::Body;
use super::chain::{self, Chain};
use super::template::{self, TemplateCode};
use super::{Symbols, Target};
use crate::ir::{Graph, KernelKind, NodeId, Op, TensorType};
use crate::ops::{Cast, Matmul, Prim, Primitive};
use crate::plan::{Launch, LaunchKind};
use hyb_dsl::dim::Dim;
use hyb_dsl::value::DType;

/// The code of one launch.
pub enum Unit {
    /// Generated from a kernel body whose inputs are the launch's input views in order.
    Body(Graph),
    Template(TemplateCode),
    /// `out = op(a)·op(b)` of the launch's two inputs.
    Gemm(GemmShape),
    Chain(Chain),
}

/// A matmul's transposes and concrete shapes.
#[derive(Clone, Debug)]
pub struct GemmShape {
    pub matmul: Matmul,
    pub a: Vec<usize>,
    pub b: Vec<usize>,
    pub out: Vec<usize>,
}

impl Unit {
    /// A stable name: the kernel's (bodies), the template's, or `gemm_` and the shapes.
    pub fn name(&self) -> String {
        match self {
            Unit::Body(body) => super::kernel_name(body),
            Unit::Chain(c) => c.name.clone(),
            Unit::Template(code) => code.name.clone(),
            Unit::Gemm(g) => template::name("gemm", &[&g.a, &g.b]),
        }
    }
}

/// The unit of `launch` (of a program planned from `graph`) for `target`, or why it has
/// none: a conversion's copy body, else its node's unit.
pub fn for_launch(graph: &Graph, launch: &Launch, symbols: Symbols, target: Target) -> Result<Unit, String> {
    match launch.kind {
        LaunchKind::Convert => Ok(Unit::Body(conversion(&launch.outputs[0].shape))),
        _ if matches!(graph.nodes[launch.node].op, Op::Prim(Prim::CacheWrite(_))) && writes_in_place(launch) => {
            let shapes = launch.inputs.iter().map(|v| v.shape.clone()).collect::<Vec<_>>();
            Ok(Unit::Template(template::pieces::cache_write(&shapes, true)))
        }
        _ if target == Target::Gpu => {
            let bf16: Vec<bool> = launch.inputs.iter().map(|v| v.dtype == DType::BF16).collect();
            match template::on_tensor_cores(graph, launch.node, symbols, &bf16) {
                Some(code) => code.map(Unit::Template).map_err(|e| format!("codegen: {e}")),
                None => for_node(graph, launch.node, symbols, target),
            }
        }
        _ => for_node(graph, launch.node, symbols, target),
    }
}

/// Whether a launch's first output is its first input's memory (a cache planned in place
/// of the cache it updates), so it need write only what changes.
fn writes_in_place(launch: &Launch) -> bool {
    match (launch.inputs.first(), launch.outputs.first()) {
        (Some(i), Some(o)) => i.buffer == o.buffer && i.offset == o.offset && i.strides == o.strides,
        _ => false,
    }
}

/// A body copying one view of `shape` to another: compiled for the storage of both, it
/// converts between them (a weight's bf16 copy, a GEMM operand in the GEMM's type).
pub fn conversion(shape: &[usize]) -> Graph {
    let ty = TensorType { shape: shape.iter().map(|&d| Dim::constant(d as i64)).collect(), dtype: DType::F32 };
    let mut body = Graph::default();
    let x = body.add(Op::Input("0".into()), vec![], ty);
    let y = body.apply(Prim::Cast(Cast { dtype: DType::F32 }), vec![x]);
    body.outputs = vec![y];
    body
}

/// The unit of launch node `node` of `graph` for `target`, or why it has none.
pub fn for_node(graph: &Graph, node: NodeId, symbols: Symbols, target: Target) -> Result<Unit, String> {
    let n = &graph.nodes[node];
    if let Some(code) = template::for_node(graph, node, symbols, target) {
        return code.map(Unit::Template).map_err(|e| format!("codegen: {e}"));
    }
    let shape = |g: &Graph, x: NodeId| Body::shape_of(g, x, symbols).map_err(|e| format!("codegen: {e}"));
    let constant = |x: NodeId| matches!(graph.nodes[x].op, Op::Constant(_));
    match &n.op {
        Op::Prim(Prim::Matmul(m)) if !n.inputs.iter().any(|&x| constant(x)) => {
            let (a, b, out) = (shape(graph, n.inputs[0])?, shape(graph, n.inputs[1])?, shape(graph, node)?);
            Ok(Unit::Gemm(GemmShape { matmul: m.clone(), a, b, out }))
        }
        Op::Prim(p) if p.is_collective() => Err("collective".into()),
        Op::Prim(p) => {
            let body = one_node_body(graph, node);
            if chain::needed(&body) || chain::splits_reduction(&body, symbols) {
                return chained(&body, symbols);
            }
            Body::resolve(&body, symbols).map_err(|_| p.name().to_string())?;
            Ok(Unit::Body(body))
        }
        Op::Kernel(k) => {
            let body = specialised(graph, &k.body, node);
            if chain::needed(&body) || chain::splits_reduction(&body, symbols) {
                return chained(&body, symbols);
            }
            match k.kind {
                KernelKind::Fused => {
                    Body::resolve(&body, symbols).map_err(|e| format!("codegen: {e}"))?;
                    Ok(Unit::Body(body))
                }
                _ => Err(format!("{} kernel", k.kind.name())),
            }
        }
        _ => Err("not computed".into()),
    }
}

/// `node`'s primitive as a kernel body: constants copied in, other inputs numbered.
fn one_node_body(graph: &Graph, node: NodeId) -> Graph {
    let n = &graph.nodes[node];
    let mut body = Graph::default();
    let mut next = 0;
    let inputs: Vec<NodeId> = n
        .inputs
        .iter()
        .map(|&x| {
            let m = &graph.nodes[x];
            let op = match m.op {
                Op::Constant(c) => Op::Constant(c),
                _ => {
                    next += 1;
                    Op::Input((next - 1).to_string())
                }
            };
            body.add(op, vec![], m.ty.clone())
        })
        .collect();
    let Op::Prim(p) = &n.op else { unreachable!("called for primitives") };
    body.outputs = body.apply_all(p.clone(), inputs);
    body
}

/// A kernel's body with the constants its node passes folded in and the remaining inputs
/// renumbered, matching the launch's views (constants have none).
fn specialised(graph: &Graph, body: &Graph, node: NodeId) -> Graph {
    let args = &graph.nodes[node].inputs;
    let constant = |j: usize| match graph.nodes[args[j]].op {
        Op::Constant(c) => Some(c),
        _ => None,
    };
    if (0..args.len()).all(|j| constant(j).is_none()) {
        return body.clone();
    }
    let renumbered: Vec<Option<usize>> = (0..args.len())
        .scan(0, |next, j| {
            Some(constant(j).is_none().then(|| {
                *next += 1;
                *next - 1
            }))
        })
        .collect();
    let mut out = body.clone();
    for n in &mut out.nodes {
        if let Op::Input(name) = &n.op {
            let j: usize = name.parse().expect("kernel inputs are numbered");
            n.op = match renumbered[j] {
                Some(k) => Op::Input(k.to_string()),
                None => Op::Constant(constant(j).expect("not renumbered: a constant")),
            };
        }
    }
    out
}

/// `body` as a chain of steps, each generated body checked to compile.
fn chained(body: &Graph, symbols: Symbols) -> Result<Unit, String> {
    let chain = chain::split(body, symbols)?;
    for step in chain.bodies() {
        Body::resolve(step, symbols).map_err(|e| format!("codegen: {e}"))?;
    }
    Ok(Unit::Chain(chain))
}
