//! `matmul`: batched matrix product with numpy batch broadcasting, either operand
//! optionally transposed.

use super::pointwise::broadcast_shape;
use super::{callable, unbroadcast, Args, Class, Decl, NoGradient, Prim, Primitive, Sizes, Ty};
use crate::cost::{Machine, Work};
use crate::ir::{Graph, NodeId, TensorType};
use crate::reference::tensor::{Real, Tensor};
use crate::shard::axes::Axes;
use hyb_dsl::prims::{broadcast_shapes, opt, req, Ctx, Default, Kind, RuleError};
use hyb_dsl::value::{shape_string, DType};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Matmul {
    pub transpose_a: bool,
    pub transpose_b: bool,
}

pub(super) const DECLS: &[Decl] = &[callable!(
    "matmul",
    &[
        req("a", Kind::Tensor),
        req("b", Kind::Tensor),
        opt("transpose_a", Kind::Bool, Default::Bool(false)),
        opt("transpose_b", Kind::Bool, Default::Bool(false)),
    ],
    |a: &Args| Ok(Prim::Matmul(Matmul { transpose_a: a.boolean(2), transpose_b: a.boolean(3) }))
)];

impl Matmul {
    pub fn new(transpose_a: bool, transpose_b: bool) -> Matmul {
        Matmul { transpose_a, transpose_b }
    }
}

impl Primitive for Matmul {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn class(&self) -> Class {
        Class::Contraction
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        let ((mut a, da), (mut b, db)) =
            (inputs[0].clone(), inputs.get(1).cloned().unwrap_or((Vec::new(), DType::F32)));
        if a.len() < 2 || b.len() < 2 {
            return Err(RuleError::rank(
                if a.len() < 2 { 0 } else { 1 },
                format!("matmul needs rank ≥ 2 operands, got {} @ {}", shape_string(&a), shape_string(&b)),
            ));
        }
        if da != db {
            return Err(RuleError::at(1, format!("matmul of different dtypes: {} and {}", da.name(), db.name())));
        }
        let (na, nb) = (a.len(), b.len());
        if self.transpose_a {
            a.swap(na - 1, na - 2);
        }
        if self.transpose_b {
            b.swap(nb - 1, nb - 2);
        }
        if ctx.differ(&a[na - 1], &b[nb - 2]) {
            return Err(RuleError::at(
                1,
                format!(
                    "matmul inner dimensions differ: {} @ {} ({} vs {})",
                    shape_string(&a),
                    shape_string(&b),
                    a[na - 1],
                    b[nb - 2]
                ),
            ));
        }
        let mut out = broadcast_shapes(&a[..na - 2].to_vec(), &b[..nb - 2].to_vec(), ctx)?;
        out.push(a[na - 2].clone());
        out.push(b[nb - 1].clone());
        Ok(vec![(out, da)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let (a, b) = (inputs[0], inputs[1]);
        let (ta, tb) = (self.transpose_a, self.transpose_b);
        let (ra, rb) = (a.rank(), b.rank());
        let (m, k) = if ta { (a.shape[ra - 1], a.shape[ra - 2]) } else { (a.shape[ra - 2], a.shape[ra - 1]) };
        let n = if tb { b.shape[rb - 2] } else { b.shape[rb - 1] };
        let batch = broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2]);
        let a_full: Vec<usize> = batch.iter().copied().chain(a.shape[ra - 2..].iter().copied()).collect();
        let b_full: Vec<usize> = batch.iter().copied().chain(b.shape[rb - 2..].iter().copied()).collect();
        let (a, b) = (a.broadcast_to(&a_full), b.broadcast_to(&b_full));
        let batches: usize = batch.iter().product();
        let (sa, sb) = (a.shape[a.rank() - 2] * a.shape[a.rank() - 1], b.shape[b.rank() - 2] * b.shape[b.rank() - 1]);
        let mut data = vec![T::zero(); batches * m * n];
        // op(A)[i, l] and op(B)[l, j] as strided views of the stored matrices.
        let a_strides = if ta { (1, m as isize) } else { (k as isize, 1) };
        let b_strides = if tb { (1, k as isize) } else { (n as isize, 1) };
        for bi in 0..batches {
            let (pa, pb) = (&a.data[bi * sa..(bi + 1) * sa], &b.data[bi * sb..(bi + 1) * sb]);
            T::gemm(m, k, n, pa, a_strides, pb, b_strides, &mut data[bi * m * n..(bi + 1) * m * n]);
        }
        let mut shape = batch;
        shape.extend([m, n]);
        vec![Tensor::new(shape, data)]
    }

    /// `C = op(A)·op(B)`: `dA = dC·op(B)ᵀ`, `dB = op(A)ᵀ·dC`, each stored the way its
    /// operand is (transposed or not) and summed over broadcast batch dimensions.
    fn vjp(&self, g: &mut Graph, node: NodeId, dc: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let (a, b) = (g.nodes[node].inputs[0], g.nodes[node].inputs[1]);
        let (da, db) = match (self.transpose_a, self.transpose_b) {
            (false, false) => (g.matmul(dc, b, false, true), g.matmul(a, dc, true, false)),
            (false, true) => (g.matmul(dc, b, false, false), g.matmul(dc, a, true, false)),
            (true, false) => (g.matmul(b, dc, false, true), g.matmul(a, dc, false, false)),
            (true, true) => (g.matmul(b, dc, true, true), g.matmul(dc, a, true, true)),
        };
        let (sa, sb) = (g.shape(a).to_vec(), g.shape(b).to_vec());
        Ok(vec![Some(unbroadcast(g, da, &sa)), Some(unbroadcast(g, db, &sb))])
    }

    /// Rows of A and columns of B follow the output; the contracted axes of A and B split
    /// together (each rank then holds a partial sum); batch axes follow the output.
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let n = &g.nodes[y];
        let (a, b) = (n.inputs[0], n.inputs[1]);
        let rank = n.ty.shape.len();
        let (ra, rb) = (g.nodes[a].ty.shape.len(), g.nodes[b].ty.shape.len());
        let (am, ak) = if self.transpose_a { (ra - 1, ra - 2) } else { (ra - 2, ra - 1) };
        let (bk, bn) = if self.transpose_b { (rb - 1, rb - 2) } else { (rb - 2, rb - 1) };
        ax.same(a, am, y, rank - 2);
        ax.same(b, bn, y, rank - 1);
        ax.same(a, ak, b, bk);
        for (x, r) in [(a, ra), (b, rb)] {
            let (xs, ys) = (&g.nodes[x].ty.shape, &n.ty.shape);
            for (k, d) in xs.iter().enumerate().take(r.saturating_sub(2)) {
                let yk = k + rank - r;
                if *d == ys[yk] {
                    ax.same(x, k, y, yk);
                }
            }
        }
    }

    /// A `[..., m, k]` times B gives `[..., m, n]`: 2·|A|·n FLOPs.
    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        let bytes = inputs.iter().chain(outputs).map(|t| m.bytes(t)).sum();
        let flops = 2.0 * m.numel(inputs[0]) * m.dim_last(outputs[0]);
        Work { flops, bytes, launches: 1.0, ..Work::default() }
    }

    fn linear_in(&self, partial: &[bool]) -> bool {
        partial.iter().filter(|&&p| p).count() == 1
    }
}
