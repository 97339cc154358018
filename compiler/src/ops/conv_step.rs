//! `conv_step`: the depthwise causal convolution of `causal_conv1d` continued from a cache
//! of the last `K − 1` inputs — what a decode step computes. Outputs the new tokens'
//! outputs and the cache after them, so a step's state carries to the next.

use super::{Class, Decl, NoGradient, Primitive, Sizes, Ty};
use crate::cost::{Machine, Work};
use crate::ir::{Graph, NodeId, TensorType};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::prims::{Ctx, RuleError};
use hyb_dsl::value::shape_string;
use serde::{Deserialize, Serialize};

/// Inputs `(x [B, T, C], state [B, K−1, C], weight [C, K], bias [C]?)`; outputs
/// `y [B, T, C]` and the new state. Over `w = concat(state, x)` along time,
/// `y[t] = bias + Σ_k weight[·, k] · w[t + k]` and the new state is `w`'s last `K − 1`
/// rows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvStep;

pub(super) const DECLS: &[Decl] =
    &[Decl::Internal { name: "conv_step", what: "the causal conv1d of a decode step, from its cache" }];

impl Primitive for ConvStep {
    fn name(&self) -> &'static str {
        "conv_step"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        let get = |i: usize| inputs.get(i).map(|t| t.0.clone()).unwrap_or_default();
        let (x, state, w) = (get(0), get(1), get(2));
        let taps = w.get(1).and_then(|k| k.add(&hyb_dsl::dim::Dim::constant(-1)));
        let fits = x.len() == 3
            && state.len() == 3
            && w.len() == 2
            && !ctx.differ(&x[0], &state[0])
            && !ctx.differ(&x[2], &state[2])
            && !ctx.differ(&x[2], &w[0])
            && taps.is_some_and(|k| !ctx.differ(&k, &state[1]));
        if !fits {
            return Err(RuleError::rank(
                0,
                format!(
                    "conv_step takes x [B, T, C], state [B, K-1, C] and weight [C, K], got {}, {} and {}",
                    shape_string(&x),
                    shape_string(&state),
                    shape_string(&w)
                ),
            ));
        }
        if let Some((b, _)) = inputs.get(3) {
            if b.len() != 1 || ctx.differ(&b[0], &x[2]) {
                return Err(RuleError::at(3, format!("conv bias must be [{}], got {}", x[2], shape_string(b))));
            }
        }
        Ok(vec![inputs[0].clone(), inputs[1].clone()])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let (x, state, w, bias) = (inputs[0], inputs[1], inputs[2], inputs.get(3));
        let (b, t, c) = (x.shape[0], x.shape[1], x.shape[2]);
        let k = w.shape[1];
        let past = k - 1;
        // Row `r` of the window: the cache for r < K − 1, then the new tokens.
        let at = |bi: usize, r: usize, ci: usize| {
            if r < past {
                state.data[(bi * past + r) * c + ci]
            } else {
                x.data[(bi * t + r - past) * c + ci]
            }
        };
        let mut y = Tensor::zeros(x.shape.clone());
        let mut next = Tensor::zeros(state.shape.clone());
        for bi in 0..b {
            for ci in 0..c {
                for ti in 0..t {
                    let mut acc = bias.map_or(T::zero(), |bb| bb.data[ci]);
                    for ki in 0..k {
                        acc = acc + w.data[ci * k + ki] * at(bi, ti + ki, ci);
                    }
                    y.data[(bi * t + ti) * c + ci] = acc;
                }
                for r in 0..past {
                    next.data[(bi * past + r) * c + ci] = at(bi, t + r, ci);
                }
            }
        }
        vec![y, next]
    }

    fn single_output(&self) -> bool {
        false
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(NoGradient(self.name()))
    }

    /// Two FLOPs per tap per output element.
    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        let bytes = inputs.iter().chain(outputs).map(|t| m.bytes(t)).sum();
        let flops = 2.0 * m.numel(inputs[0]) * m.dim_last(inputs[2]);
        Work { flops, bytes, launches: 1.0, ..Work::default() }
    }
}
