//! What each primitive means, in exact arithmetic of the element type: the reference every
//! kernel and rewrite is tested against. Signatures and shape rules live with the language
//! (`hyb_dsl::prims`); this module gives each one its value, grouped by kind.

pub mod collective;
mod matmul;
mod movement;
mod pointwise;
mod quant;
mod reduce;
pub mod sequence;

use crate::ir::{Attr, Graph, NodeId, Op};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::Prim;

/// A primitive's non-tensor argument with every symbol bound.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Tensor,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Ints(Vec<i64>),
    Absent,
}

impl Arg {
    fn int(&self) -> i64 {
        match self {
            Arg::Int(i) => *i,
            other => panic!("expected an int argument, got {other:?}"),
        }
    }
    fn float(&self) -> f64 {
        match self {
            Arg::Float(x) => *x,
            Arg::Int(i) => *i as f64,
            other => panic!("expected a float argument, got {other:?}"),
        }
    }
    fn boolean(&self) -> bool {
        matches!(self, Arg::Bool(true))
    }
    fn ints(&self) -> &[i64] {
        match self {
            Arg::Ints(v) => v,
            other => panic!("expected a list argument, got {other:?}"),
        }
    }
}

/// Normalises a possibly negative axis (shapes were checked by the front end).
fn axis(a: i64, rank: usize) -> usize {
    if a < 0 {
        (a + rank as i64) as usize
    } else {
        a as usize
    }
}

/// Evaluates one primitive. `args` has one entry per signature slot; `inputs` are the
/// tensors of the tensor slots in order.
pub fn eval<T: Real>(prim: Prim, args: &[Arg], inputs: &[&Tensor<T>]) -> Tensor<T> {
    use Prim::*;
    match prim {
        Add | Sub | Mul | Div | Maximum | Minimum => pointwise::binary(prim, inputs[0], inputs[1]),
        Pow => pointwise::unary(inputs[0], |x| x.powf(T::of(args[1].float()))),
        Neg | Exp | Log | Sqrt | Rsqrt | Sigmoid | Silu | Softplus | Tanh | Gelu | Abs | Sign | Round => {
            pointwise::unary(inputs[0], pointwise::scalar_fn::<T>(prim))
        }
        Clamp => {
            let (lo, hi) = (T::of(args[1].float()), T::of(args[2].float()));
            pointwise::unary(inputs[0], |x| x.max(lo).min(hi))
        }
        Cast => pointwise::cast(
            inputs[0],
            match &args[1] {
                Arg::Str(s) => s,
                other => panic!("cast needs a dtype, got {other:?}"),
            },
        ),
        Sum | Max | Mean => reduce::reduce(prim, inputs[0], args[1].int(), args[2].boolean()),
        Reshape => movement::reshape(inputs[0], args[1].ints()),
        Permute => movement::permute(inputs[0], args[1].ints()),
        Transpose => {
            let r = inputs[0].rank();
            let mut perm: Vec<i64> = (0..r as i64).collect();
            perm.swap(axis(args[1].int(), r), axis(args[2].int(), r));
            movement::permute(inputs[0], &perm)
        }
        Broadcast => {
            let shape: Vec<usize> = args[1].ints().iter().map(|&d| d as usize).collect();
            inputs[0].broadcast_to(&shape)
        }
        Slice => movement::slice(inputs[0], args[1].int(), args[2].int(), args[3].int()),
        Concat => movement::concat(inputs, args[1].int()),
        Split => unreachable!("split is lowered to slices during elaboration"),
        Embedding => movement::embedding(inputs[0], inputs[1]),
        Matmul => matmul::matmul(inputs[0], inputs[1], args[2].boolean(), args[3].boolean()),
        CausalConv1d => sequence::causal_conv1d(inputs[0], inputs[1], inputs.get(2).copied()),
        SsdScan => sequence::ssd_scan(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], args[5].int() as usize),
        Rope => sequence::rope(inputs[0], args[1].float()),
        CausalMask => sequence::causal_mask(inputs[0]),
        TernaryQuant => quant::ternary(inputs[0]),
        Int8Quant => quant::int8_per_token(inputs[0]),
        Step => pointwise::unary(inputs[0], |x| if x > T::zero() { T::one() } else { T::zero() }),
        Tril => sequence::tril(inputs[0]),
        Pad => movement::pad(inputs[0], args[1].int(), args[2].int(), args[3].int()),
        RopeGrad => sequence::rope_grad(inputs[0], args[1].float()),
        EmbeddingGrad => movement::embedding_grad(inputs[0], inputs[1], args[2].int() as usize),
        CausalConv1dGrad => sequence::causal_conv1d_grad(inputs[0], inputs[1], inputs[2], args[3].int()),
        OneHot => movement::one_hot(inputs[0], args[1].int() as usize),
        AllReduce | AllGather | ReduceScatter | Shard | TpCopy | VocabEmbedding | VocabEmbeddingGrad => {
            collective::eval(prim, args, &[inputs.to_vec()]).remove(0)
        }
        SsdScanGrad => {
            let [dx, ddt, da, db, dc] = sequence::ssd_scan_grads(
                inputs[0],
                inputs[1],
                inputs[2],
                inputs[3],
                inputs[4],
                inputs[5],
                args[6].int() as usize,
            );
            [dx, ddt, da, db, dc].into_iter().nth(args[7].int() as usize).expect("wrt is 0 to 4")
        }
    }
}

/// `x[start..end]` along `axis`.
pub fn slice<T: Real>(x: &Tensor<T>, axis: usize, start: usize, end: usize) -> Tensor<T> {
    movement::slice(x, axis as i64, start as i64, end as i64)
}

/// The tensors joined along `axis`.
pub fn concat<T: Real>(xs: &[&Tensor<T>], axis: usize) -> Tensor<T> {
    movement::concat(xs, axis as i64)
}

/// The vector-Jacobian product of node `node` for output gradient `dy`: one gradient (or
/// `None` where none flows, e.g. into token ids) per input, appended to the graph.
pub fn vjp(g: &mut Graph, node: NodeId, dy: NodeId) -> Vec<Option<NodeId>> {
    let Op::Prim { prim, .. } = g.nodes[node].op.clone() else {
        return vec![];
    };
    use Prim::*;
    match prim {
        Add | Sub | Mul | Div | Maximum | Minimum | Pow | Neg | Exp | Log | Sqrt | Rsqrt | Sigmoid | Silu
        | Softplus | Tanh | Gelu | Abs | Sign | Round | Clamp | Cast | Step | TernaryQuant | Int8Quant => {
            pointwise::vjp(g, prim, node, dy)
        }
        Sum | Max | Mean => reduce::vjp(g, prim, node, dy),
        Reshape | Permute | Transpose | Broadcast | Slice | Concat | Embedding | Pad => {
            movement::vjp(g, prim, node, dy)
        }
        Matmul => matmul::vjp(g, node, dy),
        CausalConv1d | SsdScan | Rope | CausalMask | Tril | RopeGrad => sequence::vjp(g, prim, node, dy),
        Split => unreachable!("split is lowered to slices"),
        OneHot => vec![None],
        AllReduce | AllGather | ReduceScatter | Shard | TpCopy | VocabEmbedding => collective::vjp(g, prim, node, dy),
        EmbeddingGrad | CausalConv1dGrad | SsdScanGrad | VocabEmbeddingGrad => {
            panic!("second-order gradients of {} are not supported", prim.name())
        }
    }
}

/// The node's `i`-th attribute.
fn attr(g: &Graph, node: NodeId, i: usize) -> Attr {
    match &g.nodes[node].op {
        Op::Prim { attrs, .. } => attrs[i].clone(),
        _ => unreachable!(),
    }
}

fn attr_int(g: &Graph, node: NodeId, i: usize) -> Dim {
    match attr(g, node, i) {
        Attr::Int(d) => d,
        other => panic!("attribute {i} is {other:?}, not an int"),
    }
}

fn attr_float(g: &Graph, node: NodeId, i: usize) -> f64 {
    match attr(g, node, i) {
        Attr::Float(x) => x,
        other => panic!("attribute {i} is {other:?}, not a float"),
    }
}

/// Sums `dy` down to `target`'s shape: the gradient of numpy broadcasting.
fn unbroadcast(g: &mut Graph, dy: NodeId, target: &[Dim]) -> NodeId {
    let mut y = dy;
    while g.shape(y).len() > target.len() {
        y = g.sum(y, 0, false);
    }
    for (i, t) in target.iter().enumerate() {
        if t.as_const() == Some(1) && g.shape(y)[i].as_const() != Some(1) {
            y = g.sum(y, i as i64, true);
        }
    }
    y
}
