//! `cache_write`: a cache `[B, S, …]` with the rows of `new [B, T, …]` written at time
//! positions `pos .. pos + T` — how a decode step appends its keys and values to the
//! attention cache. Planned in place of the cache it reads, it moves only the new rows.

use super::rope_at::{check_position, position};
use super::{Class, Decl, NoGradient, Primitive, Sizes, Ty};
use crate::cost::{Machine, Work};
use crate::ir::{Graph, NodeId, TensorType};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::prims::{Ctx, RuleError};
use hyb_dsl::value::shape_string;
use serde::{Deserialize, Serialize};

/// Inputs `(cache [B, S, …], new [B, T, …], pos [])`; the output has the cache's type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheWrite;

pub(super) const DECLS: &[Decl] =
    &[Decl::Internal { name: "cache_write", what: "an append to a decoding cache" }];

impl Primitive for CacheWrite {
    fn name(&self) -> &'static str {
        "cache_write"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        let get = |i: usize| inputs.get(i).map(|t| t.0.clone()).unwrap_or_default();
        let (cache, new) = (get(0), get(1));
        let fits = cache.len() >= 2
            && cache.len() == new.len()
            && !ctx.differ(&cache[0], &new[0])
            && cache[2..].iter().zip(&new[2..]).all(|(a, b)| !ctx.differ(a, b));
        if !fits {
            return Err(RuleError::at(
                1,
                format!(
                    "cache_write needs new rows [B, T, …] matching the cache [B, S, …], got {} into {}",
                    shape_string(&new),
                    shape_string(&cache)
                ),
            ));
        }
        check_position(inputs, 2, self.name())?;
        Ok(vec![inputs[0].clone()])
    }

    /// Rows past the cache's end are dropped (the runtime never asks for them).
    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let (cache, new, pos) = (inputs[0], inputs[1], position(inputs[2]));
        let (b, s, t) = (cache.shape[0], cache.shape[1], new.shape[1]);
        let row: usize = cache.shape[2..].iter().product();
        let mut out = cache.clone();
        for bi in 0..b {
            for ti in 0..t.min(s.saturating_sub(pos)) {
                let to = (bi * s + pos + ti) * row;
                let from = (bi * t + ti) * row;
                out.data[to..to + row].copy_from_slice(&new.data[from..from + row]);
            }
        }
        vec![out]
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(NoGradient(self.name()))
    }

    /// In place: reads and writes the new rows only.
    fn work(&self, m: &Machine, inputs: &[&TensorType], _: &[&TensorType]) -> Work {
        Work { flops: 0.0, bytes: 2.0 * m.bytes(inputs[1]), launches: 1.0, ..Work::default() }
    }
}
