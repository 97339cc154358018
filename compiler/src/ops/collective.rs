//! Tensor-parallel primitives, emitted by sharding: each rank runs the same program on its
//! shard and these exchange data between the `ranks` ranks. The gradient pairs are
//! Megatron's: all-reduce ↔ identity, all-gather ↔ shard, reduce-scatter ↔ all-gather.

use super::{axis, concat, first, slice, Class, Decl, NoGradient, Primitive, Sizes, Ty};
use crate::cost::{Machine, Work};
use crate::ir::{Graph, NodeId, TensorType};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::{Ctx, RuleError};
use hyb_dsl::value::shape_string;
use serde::{Deserialize, Serialize};

/// Sum of every rank's partial value; all ranks get the total.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AllReduce;

/// Sum over the data-parallel replicas, each of which ran the step on its part of the batch:
/// a gradient (or the loss) of the whole batch on every replica, so their updates stay
/// equal. A group apart from the tensor-parallel ranks' [`AllReduce`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataAllReduce;

/// ZeRO-1's gradient exchange: the sum over the `ranks` data-parallel replicas of a
/// flattened gradient, of which each replica keeps its run (`1/ranks` of it, in replica
/// order) — the part whose optimizer state it holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataReduceScatter {
    pub ranks: usize,
}

/// ZeRO-1's weight exchange: every replica's run of a flattened updated weight,
/// concatenated in replica order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataAllGather {
    pub ranks: usize,
}

/// This replica's run of a flattened value every replica holds alike (no communication).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataShard {
    pub ranks: usize,
}

/// Every rank's slice along `axis`, concatenated in rank order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AllGather {
    pub axis: i64,
    pub ranks: usize,
}

/// The sum over ranks, of which each rank keeps its slice along `axis`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReduceScatter {
    pub axis: i64,
    pub ranks: usize,
}

/// This rank's slice along `axis` of a replicated value (no communication).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub axis: i64,
    pub ranks: usize,
}

/// Identity; its gradient is summed over ranks (a replicated value entering rank-local
/// work, Megatron's `f`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TpCopy;

/// The sum over each group of `ranks / parts` consecutive ranks, which hold the same part
/// of a value split into `parts` (a key/value head shared by several ranks' query heads):
/// the ranks of a group get their group's total.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupAllReduce {
    pub ranks: usize,
    pub parts: usize,
}

/// Identity on a part held alike by a group of ranks (a duplicated key/value head's
/// weight); its gradient is summed over the group, as [`TpCopy`]'s is over all ranks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupCopy {
    pub ranks: usize,
    pub parts: usize,
}

pub(super) const DECLS: &[Decl] = &[
    Decl::Internal { name: "all_reduce", what: "a tensor-parallel collective" },
    Decl::Internal { name: "data_all_reduce", what: "a data-parallel collective" },
    Decl::Internal { name: "all_gather", what: "a tensor-parallel collective" },
    Decl::Internal { name: "data_reduce_scatter", what: "a data-parallel collective" },
    Decl::Internal { name: "data_all_gather", what: "a data-parallel collective" },
    Decl::Internal { name: "data_shard", what: "a data-parallel replica's run" },
    Decl::Internal { name: "reduce_scatter", what: "a tensor-parallel collective" },
    Decl::Internal { name: "shard", what: "a tensor-parallel rank's slice" },
    Decl::Internal { name: "tp_copy", what: "a tensor-parallel rank's copy" },
    Decl::Internal { name: "group_all_reduce", what: "a collective of tensor-parallel sub-groups" },
    Decl::Internal { name: "group_copy", what: "a tensor-parallel sub-group's copy" },
];

/// The type after the axis is gathered (`whole`) or split over `ranks`.
fn along(inputs: &[Ty], axis: i64, ranks: usize, whole: bool) -> Result<Vec<Ty>, RuleError> {
    let (mut s, d) = first(inputs);
    let a = if axis < 0 { axis + s.len() as i64 } else { axis };
    let shape = shape_string(&s);
    let Some(dim) = usize::try_from(a).ok().and_then(|a| s.get_mut(a)) else {
        return Err(RuleError::rank(1, format!("axis {axis} is out of range for {shape}")));
    };
    let k = ranks as i64;
    let new = if whole {
        dim.whole_of(k).or_else(|| dim.mul(&Dim::constant(k)))
    } else {
        dim.div_exact(&Dim::constant(k)).or_else(|| dim.part_of(k))
    };
    match new {
        Some(n) => *dim = n,
        None => return Err(RuleError::at(2, format!("{dim} does not split into {ranks} equal parts"))),
    }
    Ok(vec![(s, d)])
}

/// Rank `r`'s slice of `x` along `ax`.
fn part<T: Real>(x: &Tensor<T>, ax: i64, ranks: usize, r: usize) -> Tensor<T> {
    let a = axis(ax, x.rank());
    let n = x.shape[a] / ranks;
    slice(x, a, r * n, (r + 1) * n)
}

fn sum<T: Real>(ranks: &[Vec<&Tensor<T>>]) -> Tensor<T> {
    let mut total = ranks[0][0].clone();
    for xs in &ranks[1..] {
        for (t, v) in total.data.iter_mut().zip(&xs[0].data) {
            *t = *t + *v;
        }
    }
    total
}

fn communication(comm_bytes: f64) -> Work {
    Work { comm_bytes, collectives: 1.0, ..Work::default() }
}

impl Primitive for AllReduce {
    fn name(&self) -> &'static str {
        "all_reduce"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        Ok(vec![first(inputs)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![inputs[0].clone()]
    }

    fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], _: Sizes) -> Vec<Vec<Tensor<T>>> {
        vec![vec![sum(ranks)]; ranks.len()]
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(dy)])
    }

    /// A ring all-reduce moves each byte twice.
    fn work(&self, m: &Machine, inputs: &[&TensorType], _: &[&TensorType]) -> Work {
        communication(2.0 * m.bytes(inputs[0]))
    }
}

impl Primitive for DataAllReduce {
    fn name(&self) -> &'static str {
        "data_all_reduce"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    /// The same sum as [`AllReduce`]'s, over the other group.
    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        AllReduce.infer(inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>> {
        AllReduce.eval(inputs, sizes)
    }

    fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], sizes: Sizes) -> Vec<Vec<Tensor<T>>> {
        AllReduce.eval_ranks(ranks, sizes)
    }

    /// Replicas sum what they computed alike: the transpose of the sum is the sum.
    fn vjp(&self, g: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(g.apply(DataAllReduce, vec![dy]))])
    }

    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        AllReduce.work(m, inputs, outputs)
    }
}

impl Primitive for AllGather {
    fn name(&self) -> &'static str {
        "all_gather"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        along(inputs, self.axis, self.ranks, true)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![inputs[0].clone()]
    }

    fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], _: Sizes) -> Vec<Vec<Tensor<T>>> {
        let parts: Vec<&Tensor<T>> = ranks.iter().map(|xs| xs[0]).collect();
        vec![vec![concat(&parts, axis(self.axis, parts[0].rank()))]; ranks.len()]
    }

    fn vjp(&self, g: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(g.apply(Shard { axis: self.axis, ranks: self.ranks }, vec![dy]))])
    }

    fn work(&self, m: &Machine, _: &[&TensorType], outputs: &[&TensorType]) -> Work {
        communication(m.bytes(outputs[0]))
    }
}

impl Primitive for ReduceScatter {
    fn name(&self) -> &'static str {
        "reduce_scatter"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        along(inputs, self.axis, self.ranks, false)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![part(inputs[0], self.axis, 1, 0)]
    }

    fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], _: Sizes) -> Vec<Vec<Tensor<T>>> {
        let total = sum(ranks);
        (0..ranks.len()).map(|r| vec![part(&total, self.axis, ranks.len(), r)]).collect()
    }

    fn vjp(&self, g: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(g.apply(AllGather { axis: self.axis, ranks: self.ranks }, vec![dy]))])
    }

    fn work(&self, m: &Machine, inputs: &[&TensorType], _: &[&TensorType]) -> Work {
        communication(m.bytes(inputs[0]))
    }
}

impl Primitive for Shard {
    fn name(&self) -> &'static str {
        "shard"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        along(inputs, self.axis, self.ranks, false)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![part(inputs[0], self.axis, 1, 0)]
    }

    fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], _: Sizes) -> Vec<Vec<Tensor<T>>> {
        ranks.iter().enumerate().map(|(r, xs)| vec![part(xs[0], self.axis, ranks.len(), r)]).collect()
    }

    fn vjp(&self, g: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(g.apply(AllGather { axis: self.axis, ranks: self.ranks }, vec![dy]))])
    }

    /// A strided view of this rank's part: no data moves.
    fn work(&self, _: &Machine, _: &[&TensorType], _: &[&TensorType]) -> Work {
        Work::default()
    }
}

impl Primitive for TpCopy {
    fn name(&self) -> &'static str {
        "tp_copy"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        Ok(vec![first(inputs)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![inputs[0].clone()]
    }

    fn vjp(&self, g: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(g.apply(AllReduce, vec![dy]))])
    }

    /// The identity: no data moves.
    fn work(&self, _: &Machine, _: &[&TensorType], _: &[&TensorType]) -> Work {
        Work::default()
    }
}

impl Primitive for GroupAllReduce {
    fn name(&self) -> &'static str {
        "group_all_reduce"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        if self.parts == 0 || !self.ranks.is_multiple_of(self.parts) {
            return Err(RuleError::at(1, format!("{} parts do not group {} ranks", self.parts, self.ranks)));
        }
        Ok(vec![first(inputs)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![inputs[0].clone()]
    }

    fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], _: Sizes) -> Vec<Vec<Tensor<T>>> {
        let per = ranks.len() / self.parts;
        ranks.chunks(per).flat_map(|group| vec![vec![sum(group)]; group.len()]).collect()
    }

    /// As [`AllReduce`]'s: the group's total is held alike by its ranks.
    fn vjp(&self, _: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(dy)])
    }

    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        AllReduce.work(m, inputs, outputs)
    }
}

impl Primitive for GroupCopy {
    fn name(&self) -> &'static str {
        "group_copy"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        GroupAllReduce { ranks: self.ranks, parts: self.parts }.infer(inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![inputs[0].clone()]
    }

    fn vjp(&self, g: &mut Graph, _: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![Some(g.apply(GroupAllReduce { ranks: self.ranks, parts: self.parts }, vec![dy]))])
    }

    /// The identity: no data moves.
    fn work(&self, _: &Machine, _: &[&TensorType], _: &[&TensorType]) -> Work {
        Work::default()
    }
}

/// The optimizer's exchanges run after the gradients exist: nothing differentiates them.
fn after_gradients() -> NoGradient {
    NoGradient("a ZeRO-1 exchange of the optimizer update, which is not differentiated")
}

impl Primitive for DataReduceScatter {
    fn name(&self) -> &'static str {
        "data_reduce_scatter"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        ReduceScatter { axis: 0, ranks: self.ranks }.infer(inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![inputs[0].clone()]
    }

    fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], sizes: Sizes) -> Vec<Vec<Tensor<T>>> {
        ReduceScatter { axis: 0, ranks: self.ranks }.eval_ranks(ranks, sizes)
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(after_gradients())
    }

    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        ReduceScatter { axis: 0, ranks: self.ranks }.work(m, inputs, outputs)
    }
}

impl Primitive for DataAllGather {
    fn name(&self) -> &'static str {
        "data_all_gather"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        AllGather { axis: 0, ranks: self.ranks }.infer(inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![inputs[0].clone()]
    }

    fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], sizes: Sizes) -> Vec<Vec<Tensor<T>>> {
        AllGather { axis: 0, ranks: self.ranks }.eval_ranks(ranks, sizes)
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(after_gradients())
    }

    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        AllGather { axis: 0, ranks: self.ranks }.work(m, inputs, outputs)
    }
}

impl Primitive for DataShard {
    fn name(&self) -> &'static str {
        "data_shard"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        Shard { axis: 0, ranks: self.ranks }.infer(inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![inputs[0].clone()]
    }

    fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], sizes: Sizes) -> Vec<Vec<Tensor<T>>> {
        Shard { axis: 0, ranks: self.ranks }.eval_ranks(ranks, sizes)
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(after_gradients())
    }

    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        Shard { axis: 0, ranks: self.ranks }.work(m, inputs, outputs)
    }
}
