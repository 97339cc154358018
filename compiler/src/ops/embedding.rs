//! Row lookups by integer id: `embedding`, its gradient (a scatter-add), the one-hot
//! encoding of cross-entropy targets, and the vocabulary-parallel forms a tensor-parallel
//! program uses when the table is split by rows.

use super::{callable, first, Class, Decl, NoGradient, Prim, Primitive, Sizes, Ty};
use crate::ir::{Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use crate::shard::axes::Axes;
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::{req, Ctx, Kind, RuleError};
use hyb_dsl::value::{shape_string, DType};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Embedding;

/// Scatter-add of rows into a `[vocab, d]` table: the gradient of [`Embedding`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EmbeddingGrad {
    pub vocab: Dim,
}

/// `[..., depth]` indicator of integer ids (cross-entropy targets).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OneHot {
    pub depth: Dim,
}

/// Lookup in this rank's rows of a vocabulary-split table: ids outside them give zeros (a
/// partial sum over ranks).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VocabEmbedding {
    pub ranks: usize,
}

/// The gradient of [`VocabEmbedding`] for this rank's `rows` rows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VocabEmbeddingGrad {
    pub rows: Dim,
    pub ranks: usize,
}

pub(super) const DECLS: &[Decl] = &[
    callable!("embedding", &[req("table", Kind::Tensor), req("ids", Kind::Tensor)], |_| Ok(Prim::Embedding(Embedding))),
    Decl::Internal { name: "embedding_grad", what: "the gradient of `embedding`" },
    Decl::Internal { name: "one_hot", what: "the targets of the cross-entropy loss" },
    Decl::Internal { name: "vocab_embedding", what: "an embedding split by vocabulary across tensor-parallel ranks" },
    Decl::Internal { name: "vocab_embedding_grad", what: "the gradient of `vocab_embedding`" },
];

fn lookup(inputs: &[Ty]) -> Result<Vec<Ty>, RuleError> {
    let (table, d) = first(inputs);
    let (ids, id_t) = inputs.get(1).cloned().unwrap_or((Vec::new(), DType::I64));
    if table.len() != 2 {
        return Err(RuleError::rank(0, format!("embedding table must be [vocab, d], got {}", shape_string(&table))));
    }
    if id_t.is_float() {
        return Err(RuleError::at(1, format!("embedding ids must be integers, got {}", id_t.name())));
    }
    let mut out = ids;
    out.push(table[1].clone());
    Ok(vec![(out, d)])
}

/// `[rows, d]` from `dy [..., d]`, checking the ids are integers.
fn scatter(inputs: &[Ty], rows: &Dim) -> Result<Vec<Ty>, RuleError> {
    let (_, id_t) = first(inputs);
    if id_t.is_float() {
        return Err(RuleError::at(0, format!("embedding ids must be integers, got {}", id_t.name())));
    }
    let (dy, d) = inputs.get(1).cloned().unwrap_or((Vec::new(), DType::F32));
    let Some(width) = dy.last().cloned() else {
        return Err(RuleError::rank(1, "an embedding gradient needs dy with a last dimension"));
    };
    Ok(vec![(vec![rows.clone(), width], d)])
}

/// Rows `[first, first + n)` of the full table, from `table` (this rank's `n` rows); ids
/// outside them give zeros.
fn gather<T: Real>(table: &Tensor<T>, ids: &Tensor<T>, first: usize) -> Tensor<T> {
    let (n, d) = (table.shape[0], table.shape[1]);
    let mut data = Vec::with_capacity(ids.len() * d);
    for &id in &ids.data {
        match (id.f64() as usize).checked_sub(first).filter(|&row| row < n) {
            Some(row) => data.extend_from_slice(&table.data[row * d..(row + 1) * d]),
            None => data.extend(std::iter::repeat_n(T::zero(), d)),
        }
    }
    let mut shape = ids.shape.clone();
    shape.push(d);
    Tensor::new(shape, data)
}

/// Adds each row of `dy` into row `ids[i] - first` of a `[rows, d]` table (ids outside it
/// are another rank's).
fn scatter_add<T: Real>(ids: &Tensor<T>, dy: &Tensor<T>, rows: usize, first: usize) -> Tensor<T> {
    let d = *dy.shape.last().expect("dy has a last axis");
    let mut out = Tensor::zeros(vec![rows, d]);
    for (i, &id) in ids.data.iter().enumerate() {
        if let Some(row) = (id.f64() as usize).checked_sub(first).filter(|&row| row < rows) {
            for j in 0..d {
                out.data[row * d + j] = out.data[row * d + j] + dy.data[i * d + j];
            }
        }
    }
    out
}

impl Primitive for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn class(&self) -> Class {
        Class::Gather
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        lookup(inputs)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![gather(inputs[0], inputs[1], 0)]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let (table, ids) = (g.nodes[node].inputs[0], g.nodes[node].inputs[1]);
        let vocab = g.shape(table)[0].clone();
        Ok(vec![Some(g.apply(EmbeddingGrad { vocab }, vec![ids, dy])), None])
    }

    /// The table's vocabulary axis may split: a vocabulary-parallel lookup.
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let (table, ids) = (g.nodes[y].inputs[0], g.nodes[y].inputs[1]);
        let rank = g.nodes[y].ty.shape.len();
        ax.same(table, 1, y, rank - 1);
        for k in 0..g.nodes[ids].ty.shape.len() {
            ax.same(ids, k, y, k);
        }
    }
}

impl Primitive for EmbeddingGrad {
    fn name(&self) -> &'static str {
        "embedding_grad"
    }

    fn class(&self) -> Class {
        Class::Gather
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        scatter(inputs, &self.vocab)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>> {
        vec![scatter_add(inputs[0], inputs[1], sizes.of(&self.vocab) as usize, 0)]
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(NoGradient(self.name()))
    }
}

impl Primitive for OneHot {
    fn name(&self) -> &'static str {
        "one_hot"
    }

    fn class(&self) -> Class {
        Class::Gather
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        let (mut s, _) = first(inputs);
        if self.depth.as_const().is_some_and(|d| d <= 0) {
            return Err(RuleError::at(1, format!("one_hot needs a positive depth, got {}", self.depth)));
        }
        s.push(self.depth.clone());
        Ok(vec![(s, DType::F32)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>> {
        let ids = inputs[0];
        let depth = sizes.of(&self.depth) as usize;
        let mut out = vec![T::zero(); ids.len() * depth];
        for (i, id) in ids.data.iter().enumerate() {
            let j = id.f64() as usize;
            if j < depth {
                out[i * depth + j] = T::one();
            }
        }
        let mut shape = ids.shape.clone();
        shape.push(depth);
        vec![Tensor::new(shape, out)]
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![None])
    }

    /// Element `[.., j]` is whether id `[..]` is `j`: the cross-entropy's kernels compute
    /// it where they read it, so the `[B, T, vocab]` indicator is never stored.
    fn fusible(&self) -> bool {
        true
    }
}

impl Primitive for VocabEmbedding {
    fn name(&self) -> &'static str {
        "vocab_embedding"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        lookup(inputs)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![gather(inputs[0], inputs[1], 0)]
    }

    fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], _: Sizes) -> Vec<Vec<Tensor<T>>> {
        ranks.iter().enumerate().map(|(r, xs)| vec![gather(xs[0], xs[1], r * xs[0].shape[0])]).collect()
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let (table, ids) = (g.nodes[node].inputs[0], g.nodes[node].inputs[1]);
        let rows = g.shape(table)[0].clone();
        Ok(vec![Some(g.apply(VocabEmbeddingGrad { rows, ranks: self.ranks }, vec![ids, dy])), None])
    }
}

impl Primitive for VocabEmbeddingGrad {
    fn name(&self) -> &'static str {
        "vocab_embedding_grad"
    }

    fn class(&self) -> Class {
        Class::Collective
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        scatter(inputs, &self.rows)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>> {
        vec![scatter_add(inputs[0], inputs[1], sizes.of(&self.rows) as usize, 0)]
    }

    fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], sizes: Sizes) -> Vec<Vec<Tensor<T>>> {
        let rows = sizes.of(&self.rows) as usize;
        ranks.iter().enumerate().map(|(r, xs)| vec![scatter_add(xs[0], xs[1], rows, r * rows)]).collect()
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(NoGradient(self.name()))
    }
}
