//! `concat`: tensors joined along one axis.

use super::{axis, callable, Args, Class, Decl, NoGradient, Prim, Primitive, Sizes, Slice, Ty};
use crate::ir::{Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use crate::shard::axes::Axes;
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::{opt, req, resolve_axis, Ctx, Default, Kind, RuleError};
use hyb_dsl::value::{shape_string, DType};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Concat {
    pub axis: i64,
}

pub(super) const DECLS: &[Decl] =
    &[callable!("concat", &[req("xs", Kind::Tensors), opt("axis", Kind::Int, Default::Int(-1))], |a: &Args| Ok(
        Prim::Concat(Concat { axis: a.known(1, "axis")? })
    ))];

/// The tensors joined along `axis`, copied.
pub fn concat<T: Real>(xs: &[&Tensor<T>], a: usize) -> Tensor<T> {
    let outer: usize = xs[0].shape[..a].iter().product();
    let inner: usize = xs[0].shape[a + 1..].iter().product();
    let mut data = Vec::new();
    for o in 0..outer {
        for x in xs {
            let n = x.shape[a];
            data.extend_from_slice(&x.data[o * n * inner..(o + 1) * n * inner]);
        }
    }
    let mut shape = xs[0].shape.clone();
    shape[a] = xs.iter().map(|x| x.shape[a]).sum();
    Tensor::new(shape, data)
}

impl Concat {
    pub fn new(axis: usize) -> Concat {
        Concat { axis: axis as i64 }
    }

    pub fn axis_of(&self, rank: usize) -> usize {
        axis(self.axis, rank)
    }
}

impl Primitive for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }

    fn class(&self) -> Class {
        Class::Movement
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        let Some((first, d)) = inputs.first().cloned() else {
            return Ok(vec![(Vec::new(), DType::F32)]);
        };
        let a = resolve_axis(&Dim::constant(self.axis), first.len(), 1)?;
        let mut out = first.clone();
        for (s, dt) in &inputs[1..] {
            if s.len() != first.len() {
                return Err(RuleError::rank(
                    0,
                    format!("concat of tensors with different ranks: {} and {}", shape_string(&first), shape_string(s)),
                ));
            }
            if *dt != d {
                return Err(RuleError::at(0, format!("concat of different dtypes: {} and {}", d.name(), dt.name())));
            }
            for (i, (x, y)) in first.iter().zip(s).enumerate() {
                if i != a && ctx.differ(x, y) {
                    return Err(RuleError::at(
                        0,
                        format!(
                            "concat along axis {a} needs equal other dims: {} vs {}",
                            shape_string(&first),
                            shape_string(s)
                        ),
                    ));
                }
            }
            out[a] = out[a].add(&s[a]).ok_or_else(|| RuleError::at(0, "concat size overflows"))?;
        }
        Ok(vec![(out, d)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![concat(inputs, self.axis_of(inputs[0].rank()))]
    }

    /// Each input's gradient is its slice of the output gradient.
    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let inputs = g.nodes[node].inputs.clone();
        let r = self.axis_of(g.shape(node).len());
        let mut start = Dim::constant(0);
        let mut out = Vec::new();
        for &i in &inputs {
            let end = start.add(&g.shape(i)[r]).expect("sizes add");
            out.push(Some(g.apply(Slice { axis: self.axis, start: start.clone(), end: end.clone() }, vec![dy])));
            start = end;
        }
        Ok(out)
    }

    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let rank = g.nodes[y].ty.shape.len();
        let a = self.axis_of(rank);
        for &x in &g.nodes[y].inputs {
            for k in 0..rank {
                if k == a {
                    ax.block(ax.var(x, k));
                } else {
                    ax.same(x, k, y, k);
                }
            }
        }
        ax.block(ax.var(y, a));
    }
}
