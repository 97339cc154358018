//! `rope_at`: rotary position embedding of `[B, T, heads, head_dim]` whose first token sits
//! at position `pos` (a run-time scalar), for decoding with a cache: the token a decode
//! step computes is rotated by its place in the whole sequence, not by its index in the
//! step. With `pos = 0` it is `rope`.

use super::{rope, Class, Decl, NoGradient, Primitive, Sizes, Ty, F64};
use crate::ir::{Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::prims::{Ctx, RuleError};
use serde::{Deserialize, Serialize};

/// Inputs `(x [B, T, heads, head_dim], pos [])`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RopeAt {
    pub theta: F64,
}

pub(super) const DECLS: &[Decl] =
    &[Decl::Internal { name: "rope_at", what: "the rotary embedding at a cache position (decoding)" }];

/// A position input: a scalar holding a whole number of tokens.
pub(super) fn position<T: Real>(pos: &Tensor<T>) -> usize {
    pos.data[0].f64() as usize
}

/// Checks that input `i` is a scalar position.
pub(super) fn check_position(inputs: &[Ty], i: usize, name: &str) -> Result<(), RuleError> {
    match inputs.get(i) {
        Some((s, _)) if s.is_empty() => Ok(()),
        _ => Err(RuleError::at(i, format!("{name}'s position must be a scalar"))),
    }
}

impl Primitive for RopeAt {
    fn name(&self) -> &'static str {
        "rope_at"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        check_position(inputs, 1, self.name())?;
        rope::check(&inputs[..1])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![rope::rotate_from(inputs[0], self.theta.0, 1.0, position(inputs[1]))]
    }

    /// Decoding programs are never differentiated.
    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(NoGradient(self.name()))
    }
}
