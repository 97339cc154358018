//! What each primitive means, in exact arithmetic of the element type: the reference every
//! kernel and rewrite is tested against. Signatures and shape rules live with the language
//! (`hyb_dsl::prims`); this module gives each one its value, grouped by kind.

mod matmul;
mod movement;
mod pointwise;
mod quant;
mod reduce;
pub mod sequence;

use crate::reference::tensor::{Real, Tensor};
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
        Neg | Exp | Log | Sqrt | Rsqrt | Sigmoid | Silu | Softplus | Tanh | Gelu | Abs | Sign
        | Round => pointwise::unary(inputs[0], pointwise::scalar_fn::<T>(prim)),
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
        SsdScan => sequence::ssd_scan(
            inputs[0],
            inputs[1],
            inputs[2],
            inputs[3],
            inputs[4],
            args[5].int() as usize,
        ),
        Rope => sequence::rope(inputs[0], args[1].float()),
        CausalMask => sequence::causal_mask(inputs[0]),
        TernaryQuant => quant::ternary(inputs[0]),
        Int8Quant => quant::int8_per_token(inputs[0]),
    }
}
