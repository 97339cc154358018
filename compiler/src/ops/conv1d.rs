//! `causal_conv1d`: the depthwise causal convolution over time in front of Mamba-2's scan,
//! and its gradient, one primitive with an output per input; for packed rows,
//! `document_conv1d` and its gradient, whose taps do not reach into an earlier document
//! (`ops::documents`).

use super::documents::{check_positions, starts};
use super::{callable, first, Args, Class, Decl, NoGradient, Prim, Primitive, Sizes, Ty};
use crate::cost::{Machine, Work};
use crate::ir::{Graph, NodeId, TensorType};
use crate::reference::tensor::{Real, Tensor};
use crate::shard::axes::Axes;
use hyb_dsl::prims::{opt, req, Ctx, Default, Kind, RuleError};
use hyb_dsl::value::shape_string;
use serde::{Deserialize, Serialize};

/// `y[b,t,c] = bias[c] + Σ_k w[c,k] · x[b, t-(K-1)+k, c]`, zero before the sequence start.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CausalConv1d;

/// Gradients of [`CausalConv1d`] from inputs `(x, weight, dy)`: outputs `dx`, `dweight`
/// and, with `bias`, `dbias`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CausalConv1dGrad {
    pub bias: bool,
}

/// `causal_conv1d` of inputs `(x, weight, bias if bias, positions [B, T])`, each tap
/// zero where it would read before the start of the output's document.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocumentConv1d {
    pub bias: bool,
}

/// Gradients of [`DocumentConv1d`] from inputs `(x, weight, dy, positions)`, as
/// [`CausalConv1dGrad`]'s.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocumentConv1dGrad {
    pub bias: bool,
}

pub(super) const DECLS: &[Decl] = &[
    callable!(
        "causal_conv1d",
        &[req("x", Kind::Tensor), req("weight", Kind::Tensor), opt("bias", Kind::OptTensor, Default::Absent)],
        |_: &Args| Ok(Prim::CausalConv1d(CausalConv1d))
    ),
    Decl::Internal { name: "causal_conv1d_grad", what: "the gradient of `causal_conv1d`" },
    Decl::Internal { name: "document_conv1d", what: "`causal_conv1d` within each document of a packed row" },
    Decl::Internal { name: "document_conv1d_grad", what: "the gradient of `document_conv1d`" },
];

/// Sizes `(B, T, C, K)` from x `[B, T, C]` and weight `[C, K]`.
fn dims<T: Real>(x: &Tensor<T>, w: &Tensor<T>) -> (usize, usize, usize, usize) {
    (x.shape[0], x.shape[1], x.shape[2], w.shape[1])
}

impl Primitive for CausalConv1d {
    fn name(&self) -> &'static str {
        "causal_conv1d"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        let (s, d) = first(inputs);
        let w = inputs.get(1).map(|t| t.0.clone()).unwrap_or_default();
        if s.len() != 3 || w.len() != 2 {
            return Err(RuleError::rank(
                1,
                format!(
                    "causal_conv1d takes x [B, T, C] and weight [C, K], got {} and {}",
                    shape_string(&s),
                    shape_string(&w)
                ),
            ));
        }
        if ctx.differ(&s[2], &w[0]) {
            return Err(RuleError::at(1, format!("conv weight has {} channels but x has {}", w[0], s[2])));
        }
        if let Some((b, _)) = inputs.get(2) {
            if b.len() != 1 || ctx.differ(&b[0], &s[2]) {
                return Err(RuleError::at(2, format!("conv bias must be [{}], got {}", s[2], shape_string(b))));
            }
        }
        Ok(vec![(s, d)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![convolve(inputs[0], inputs[1], inputs.get(2).copied(), &|_| 0)]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let inputs = g.nodes[node].inputs.clone();
        let grad = CausalConv1dGrad { bias: inputs.len() == 3 };
        Ok(g.apply_all(grad, vec![inputs[0], inputs[1], dy]).into_iter().map(Some).collect())
    }

    /// Batch and channels split; the kernel's taps stay whole.
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let ins = &g.nodes[y].inputs;
        ax.same(ins[0], 0, y, 0);
        ax.same(ins[0], 2, y, 2);
        ax.same(ins[1], 0, y, 2);
        if let Some(&bias) = ins.get(2) {
            ax.same(bias, 0, y, 2);
        }
        ax.block(ax.var(ins[1], 1));
    }

    /// Two FLOPs per tap per output element.
    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        let bytes = inputs.iter().chain(outputs).map(|t| m.bytes(t)).sum();
        let flops = 2.0 * m.numel(outputs[0]) * m.dim_last(inputs[1]);
        Work { flops, bytes, launches: 1.0, ..Work::default() }
    }
}

impl Primitive for CausalConv1dGrad {
    fn name(&self) -> &'static str {
        "causal_conv1d_grad"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        let (x, d) = first(inputs);
        let w = inputs.get(1).cloned().unwrap_or((Vec::new(), d));
        let mut out = vec![(x.clone(), d), w];
        if self.bias {
            out.push((vec![x.last().cloned().unwrap_or_default()], d));
        }
        Ok(out)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        convolve_grad(inputs[0], inputs[1], inputs[2], self.bias, &|_| 0)
    }

    fn single_output(&self) -> bool {
        false
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(NoGradient(self.name()))
    }

    /// `dx` and `dweight` each take two FLOPs per tap per element of x; `dbias` one.
    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        let bytes = inputs.iter().chain(outputs).map(|t| m.bytes(t)).sum();
        let x = m.numel(inputs[0]);
        let flops = 4.0 * x * m.dim_last(inputs[1]) + if self.bias { x } else { 0.0 };
        Work { flops, bytes, launches: 1.0, ..Work::default() }
    }
}

/// The convolution of `x [B, T, C]` with `w [C, K]`, the output at `(b, t)` reading only
/// time steps from `first(b·T + t)` on (0: the row's start; packed: its document's).
fn convolve<T: Real>(x: &Tensor<T>, w: &Tensor<T>, bias: Option<&Tensor<T>>, first: &dyn Fn(usize) -> usize) -> Tensor<T> {
    let (b, t, c, k) = dims(x, w);
    let mut out = Tensor::zeros(x.shape.clone());
    for bi in 0..b {
        for ti in 0..t {
            let lo = first(bi * t + ti) as i64;
            for ci in 0..c {
                let mut acc = bias.map_or(T::zero(), |bb| bb.data[ci]);
                for ki in 0..k {
                    let src = ti as i64 - (k as i64 - 1) + ki as i64;
                    if src >= lo {
                        acc = acc + w.data[ci * k + ki] * x.data[(bi * t + src as usize) * c + ci];
                    }
                }
                out.data[(bi * t + ti) * c + ci] = acc;
            }
        }
    }
    out
}

/// Gradients of [`convolve`] with the same `first`: `dx`, `dw` and, with `bias`, `dbias`.
fn convolve_grad<T: Real>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    dy: &Tensor<T>,
    bias: bool,
    first: &dyn Fn(usize) -> usize,
) -> Vec<Tensor<T>> {
    let (b, t, c, k) = dims(x, w);
    // Whether output `ti` reads input `src` (of the same row).
    let reads = |bi: usize, ti: usize, src: i64| src >= first(bi * t + ti) as i64;
    let mut dx = Tensor::zeros(x.shape.clone());
    for bi in 0..b {
        for s in 0..t {
            for ci in 0..c {
                let mut acc = T::zero();
                for ki in 0..k {
                    let ti = s + (k - 1) - ki;
                    if ti < t && reads(bi, ti, s as i64) {
                        acc = acc + w.data[ci * k + ki] * dy.data[(bi * t + ti) * c + ci];
                    }
                }
                dx.data[(bi * t + s) * c + ci] = acc;
            }
        }
    }
    let mut dw = Tensor::zeros(w.shape.clone());
    for ci in 0..c {
        for ki in 0..k {
            let mut acc = T::zero();
            for bi in 0..b {
                for ti in 0..t {
                    let src = ti as i64 - (k as i64 - 1) + ki as i64;
                    if src >= 0 && reads(bi, ti, src) {
                        acc = acc + dy.data[(bi * t + ti) * c + ci] * x.data[(bi * t + src as usize) * c + ci];
                    }
                }
            }
            dw.data[ci * k + ki] = acc;
        }
    }
    let mut out = vec![dx, dw];
    if bias {
        let mut db = Tensor::zeros(vec![c]);
        for (i, v) in dy.data.iter().enumerate() {
            db.data[i % c] = db.data[i % c] + *v;
        }
        out.push(db);
    }
    out
}

impl Primitive for DocumentConv1d {
    fn name(&self) -> &'static str {
        "document_conv1d"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        let at = 2 + usize::from(self.bias);
        let out = CausalConv1d.infer(&inputs[..at.min(inputs.len())], ctx)?;
        check_positions(inputs, at, &out[0].0[0], &out[0].0[1], ctx, self.name())?;
        Ok(out)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let bias = self.bias.then(|| inputs[2]);
        let start = starts(inputs[2 + usize::from(self.bias)]);
        vec![convolve(inputs[0], inputs[1], bias, &|i| start[i])]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let inputs = g.nodes[node].inputs.clone();
        let positions = *inputs.last().expect("positions");
        let grad = DocumentConv1dGrad { bias: self.bias };
        let mut grads: Vec<Option<NodeId>> =
            g.apply_all(grad, vec![inputs[0], inputs[1], dy, positions]).into_iter().map(Some).collect();
        grads.push(None);
        Ok(grads)
    }

    /// As `causal_conv1d`, with the positions following batch (time is whole).
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let ins = &g.nodes[y].inputs;
        ax.same(ins[0], 0, y, 0);
        ax.same(ins[0], 2, y, 2);
        ax.same(ins[1], 0, y, 2);
        if self.bias {
            ax.same(ins[2], 0, y, 2);
        }
        let positions = *ins.last().expect("positions");
        ax.same(positions, 0, y, 0);
        ax.block(ax.var(positions, 1));
        ax.block(ax.var(ins[1], 1));
    }

    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        CausalConv1d.work(m, inputs, outputs)
    }
}

impl Primitive for DocumentConv1dGrad {
    fn name(&self) -> &'static str {
        "document_conv1d_grad"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        let out = CausalConv1dGrad { bias: self.bias }.infer(&inputs[..3.min(inputs.len())], ctx)?;
        check_positions(inputs, 3, &out[0].0[0], &out[0].0[1], ctx, self.name())?;
        Ok(out)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let start = starts(inputs[3]);
        convolve_grad(inputs[0], inputs[1], inputs[2], self.bias, &|i| start[i])
    }

    fn single_output(&self) -> bool {
        false
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(NoGradient(self.name()))
    }

    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        CausalConv1dGrad { bias: self.bias }.work(m, inputs, outputs)
    }
}
