//! `ssd_step`: the Mamba-2 recurrence continued from a cached state — what a decode step
//! computes instead of the chunked scan: `h = exp(dt·a)·h + dt·x·Bᵀ`, `y = h·C` per token
//! (the `D·x` skip is the model's own term, outside the scan). Outputs `y` and the state
//! after the last new token.

use super::ssd_scan::ScanDims;
use super::{Class, Decl, NoGradient, Primitive, Sizes, Ty};
use crate::cost::{Machine, Work};
use crate::ir::{Graph, NodeId, TensorType};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::prims::{Ctx, RuleError};
use hyb_dsl::value::shape_string;
use serde::{Deserialize, Serialize};

/// Inputs `(x [B,T,H,P], dt [B,T,H], a [H], b [B,T,G,N], c [B,T,G,N], state [B,H,P,N])`,
/// as `ssd_scan`'s plus the state; outputs `y [B,T,H,P]` and the new state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SsdStep;

pub(super) const DECLS: &[Decl] =
    &[Decl::Internal { name: "ssd_step", what: "the Mamba-2 recurrence of a decode step, from its state" }];

/// The state type `[B, H, P, N]` of scan inputs, checked as `ssd_scan` checks them.
pub(super) fn state_type(inputs: &[Ty], ctx: Ctx) -> Result<Ty, RuleError> {
    super::ssd_scan::check_inputs(inputs, ctx)?;
    let (x, bm) = (&inputs[0].0, &inputs[3].0);
    Ok((vec![x[0].clone(), x[2].clone(), x[3].clone(), bm[3].clone()], inputs[0].1))
}

impl Primitive for SsdStep {
    fn name(&self) -> &'static str {
        "ssd_step"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        let state = state_type(&inputs[..inputs.len().min(5)], ctx)?;
        match inputs.get(5) {
            Some((s, _)) if s.len() == 4 && s.iter().zip(&state.0).all(|(a, b)| !ctx.differ(a, b)) => {}
            other => {
                let got = other.map_or("nothing".to_string(), |(s, _)| shape_string(s));
                return Err(RuleError::at(5, format!("ssd_step's state must be {}, got {got}", shape_string(&state.0))));
            }
        }
        Ok(vec![inputs[0].clone(), inputs[5].clone()])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let (y, state) = recur(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], Some(inputs[5]));
        vec![y, state]
    }

    fn single_output(&self) -> bool {
        false
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(NoGradient(self.name()))
    }

    /// Per token, head and channel: state-size work into and out of the state.
    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        let bytes = inputs.iter().chain(outputs).map(|t| m.bytes(t)).sum();
        let flops = 4.0 * m.numel(inputs[0]) * m.dim_last(inputs[3]);
        Work { flops, bytes, launches: 1.0, ..Work::default() }
    }
}

/// The recurrence from `state` (zero when `None`): the outputs and the final state
/// `[B, H, P, N]`.
pub(super) fn recur<T: Real>(
    x: &Tensor<T>,
    dt: &Tensor<T>,
    a: &Tensor<T>,
    bm: &Tensor<T>,
    cm: &Tensor<T>,
    state: Option<&Tensor<T>>,
) -> (Tensor<T>, Tensor<T>) {
    let d = ScanDims::of(x, bm);
    let pn = d.p * d.n;
    let mut y = Tensor::zeros(x.shape.clone());
    let mut h = match state {
        Some(s) => s.clone(),
        None => Tensor::zeros(vec![d.b, d.h, d.p, d.n]),
    };
    for bi in 0..d.b {
        for hi in 0..d.h {
            let gi = d.group(hi);
            let s = &mut h.data[(bi * d.h + hi) * pn..(bi * d.h + hi + 1) * pn];
            for ti in 0..d.t {
                let dtt = dt.data[(bi * d.t + ti) * d.h + hi];
                let decay = (dtt * a.data[hi]).exp();
                for pi in 0..d.p {
                    let xv = dtt * x.data[d.x(bi, ti, hi, pi)];
                    let mut acc = T::zero();
                    for ni in 0..d.n {
                        let v = &mut s[pi * d.n + ni];
                        *v = decay * *v + xv * bm.data[d.bc(bi, ti, gi, ni)];
                        acc = acc + *v * cm.data[d.bc(bi, ti, gi, ni)];
                    }
                    y.data[d.x(bi, ti, hi, pi)] = acc;
                }
            }
        }
    }
    (y, h)
}
