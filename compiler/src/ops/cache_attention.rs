//! `cache_attention`: causal softmax attention of new queries over an attention cache —
//! what a decode step computes instead of `softmax(causal_mask(q kᵀ · scale)) v`. Query
//! `t` sits at position `pos + t` and sees cached positions `0 ..= pos + t`; head `h` reads
//! key/value head `h / groups` (grouped-query attention).

use super::rope_at::{check_position, position};
use super::{Class, Decl, NoGradient, Primitive, Sizes, Ty, F64};
use crate::cost::{Machine, Work};
use crate::ir::{Graph, NodeId, TensorType};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::prims::{Ctx, RuleError};
use hyb_dsl::value::shape_string;
use serde::{Deserialize, Serialize};

/// Inputs `(q [B, heads, T, D], k [B, S, kv_heads, D], v [B, S, kv_heads, D], pos [])`,
/// the cache token-major so that a step appends rows; output `[B, heads, T, D]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheAttention {
    pub scale: F64,
}

pub(super) const DECLS: &[Decl] =
    &[Decl::Internal { name: "cache_attention", what: "attention over a decoding cache" }];

impl Primitive for CacheAttention {
    fn name(&self) -> &'static str {
        "cache_attention"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        let get = |i: usize| inputs.get(i).map(|t| t.0.clone()).unwrap_or_default();
        let (q, k, v) = (get(0), get(1), get(2));
        if q.len() != 4 || k.len() != 4 || k != v {
            return Err(RuleError::rank(
                0,
                format!(
                    "cache_attention takes q [B, heads, T, D] and caches k, v [B, S, kv_heads, D], got {}, {} and {}",
                    shape_string(&q),
                    shape_string(&k),
                    shape_string(&v)
                ),
            ));
        }
        if ctx.differ(&q[0], &k[0]) || ctx.differ(&q[3], &k[3]) {
            return Err(RuleError::at(1, format!("the cache {} does not match q {}", shape_string(&k), shape_string(&q))));
        }
        if let (Some(h), Some(kv)) = (q[1].as_const(), k[2].as_const()) {
            if kv == 0 || h % kv != 0 {
                return Err(RuleError::at(1, format!("{h} query heads cannot share {kv} key/value heads")));
            }
        }
        check_position(inputs, 3, self.name())?;
        Ok(vec![inputs[0].clone()])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let (q, k, v, pos) = (inputs[0], inputs[1], inputs[2], position(inputs[3]));
        let (b, h, t, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
        let (s, kv) = (k.shape[1], k.shape[2]);
        let groups = h / kv;
        let scale = T::of(self.scale.0);
        let mut out = Tensor::zeros(q.shape.clone());
        let mut scores = vec![T::zero(); s];
        for bi in 0..b {
            for hi in 0..h {
                let kh = hi / groups;
                let row = |j: usize| ((bi * s + j) * kv + kh) * d;
                for ti in 0..t {
                    let qo = ((bi * h + hi) * t + ti) * d;
                    let seen = (pos + ti + 1).min(s);
                    let mut max = T::neg_infinity();
                    for (j, sc) in scores.iter_mut().enumerate().take(seen) {
                        let mut acc = T::zero();
                        for di in 0..d {
                            acc = acc + q.data[qo + di] * k.data[row(j) + di];
                        }
                        *sc = acc * scale;
                        max = max.max(*sc);
                    }
                    let mut sum = T::zero();
                    for sc in scores.iter_mut().take(seen) {
                        *sc = (*sc - max).exp();
                        sum = sum + *sc;
                    }
                    for (j, sc) in scores.iter().enumerate().take(seen) {
                        let p = *sc / sum;
                        for di in 0..d {
                            out.data[qo + di] = out.data[qo + di] + p * v.data[row(j) + di];
                        }
                    }
                }
            }
        }
        vec![out]
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(NoGradient(self.name()))
    }

    /// Four FLOPs per query element per cached key (scores and the weighted sum), reading
    /// the whole cache once: decoding is bound by the cache's bytes.
    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        let bytes = inputs.iter().chain(outputs).map(|t| m.bytes(t)).sum();
        let keys = m.dim(&inputs[1].shape[1]);
        Work { flops: 4.0 * m.numel(inputs[0]) * keys, bytes, launches: 1.0, ..Work::default() }
    }
}
