//! `ssd_state`: the Mamba-2 state after a whole sequence, from a zero state — what prefill
//! hands to decoding next to the chunked scan's outputs (the scan keeps its states to
//! itself).

use super::ssd_step::{recur, state_type};
use super::{Class, Decl, NoGradient, Primitive, Sizes, Ty};
use crate::cost::{Machine, Work};
use crate::ir::{Graph, NodeId, TensorType};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::prims::{Ctx, RuleError};
use serde::{Deserialize, Serialize};

/// Inputs as `ssd_scan`'s `(x, dt, a, b, c)`; output the state `[B, H, P, N]` after the
/// last token, `h_T = Σ_t exp(Σ_{s>t} dt_s·a)·dt_t·x_t·B_tᵀ`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SsdState;

pub(super) const DECLS: &[Decl] =
    &[Decl::Internal { name: "ssd_state", what: "the Mamba-2 state after a sequence (prefill)" }];

impl Primitive for SsdState {
    fn name(&self) -> &'static str {
        "ssd_state"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        Ok(vec![state_type(inputs, ctx)?])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![recur(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], None).1]
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(NoGradient(self.name()))
    }

    /// Two FLOPs per token, head, channel and state element.
    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        let bytes = inputs.iter().chain(outputs).map(|t| m.bytes(t)).sum();
        let flops = 2.0 * m.numel(inputs[0]) * m.dim_last(inputs[3]);
        Work { flops, bytes, launches: 1.0, ..Work::default() }
    }
}
