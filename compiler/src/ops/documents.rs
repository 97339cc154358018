//! Packed rows: several documents laid end to end in one row of a batch, each token's
//! place in its document given by a `positions [B, T]` input (0 where a document starts,
//! then 1, 2, …; a row starts a document). The packed primitives (`document_*`) compute
//! what their plain twins compute on each document alone: attention sees only keys of the
//! query's document, the conv's taps and the scan's state do not cross a start, and RoPE
//! rotates by the place in the document.

use super::Ty;
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::prims::{Ctx, RuleError};
use hyb_dsl::value::shape_string;

/// For every token `(b, t)`, in row-major order, the time step its document starts at:
/// `t − positions[b, t]`, clamped to the row (a position past `t` starts at the row).
pub fn starts<T: Real>(positions: &Tensor<T>) -> Vec<usize> {
    let t = positions.shape.get(1).copied().unwrap_or(1).max(1);
    positions
        .data
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ti = i % t;
            let p = p.f64();
            let p = if p.is_finite() && p > 0.0 { (p as usize).min(ti) } else { 0 };
            ti - p
        })
        .collect()
}

/// Checks that input `i` is `positions [B, T]` for a batch of `b` rows of `t` tokens.
pub fn check_positions(
    inputs: &[Ty],
    i: usize,
    b: &hyb_dsl::dim::Dim,
    t: &hyb_dsl::dim::Dim,
    ctx: Ctx,
    name: &str,
) -> Result<(), RuleError> {
    match inputs.get(i) {
        Some((s, _)) if s.len() == 2 && !ctx.differ(&s[0], b) && !ctx.differ(&s[1], t) => Ok(()),
        other => {
            let got = other.map_or("nothing".to_string(), |(s, _)| shape_string(s));
            Err(RuleError::at(i, format!("{name}'s positions must be [B, T] = [{b}, {t}], got {got}")))
        }
    }
}
