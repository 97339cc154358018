//! `ssd_scan`: the Mamba-2 state-space scan (`h_t = exp(dt_t·a)·h_{t-1} + dt_t·x_t·B_tᵀ`,
//! `y_t = h_t·C_t`, heads sharing B/C groups), computed by the chunked state-space-dual
//! algorithm, and its gradient: one primitive with the five input gradients as outputs, so
//! one backward pass serves them all. For packed rows, `document_ssd_scan` and its
//! gradient: the state starts from zero at every document's start (`ops::documents`).

use super::documents::{check_positions, starts};
use super::{callable, Args, Class, Decl, NoGradient, Prim, Primitive, Sizes, Ty};
use crate::cost::{Machine, Work};
use crate::ir::{Graph, NodeId, TensorType};
use crate::reference::tensor::{Real, Tensor};
use crate::shard::axes::Axes;
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::{opt, req, Ctx, Default, Heads, Kind, RuleError};
use hyb_dsl::value::shape_string;
use serde::{Deserialize, Serialize};

/// The scan of inputs `(x [B,T,H,P], dt [B,T,H], a [H], b [B,T,G,N], c [B,T,G,N])`, in
/// chunks of `chunk` time steps.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SsdScan {
    pub chunk: Dim,
}

/// Gradients of [`SsdScan`] from inputs `(x, dt, a, b, c, dy)`: outputs `dx, ddt, da, db,
/// dc`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SsdScanGrad {
    pub chunk: Dim,
}

/// [`SsdScan`] of inputs `(x, dt, a, b, c, positions [B, T])`, the state reset to zero
/// where a document starts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocumentSsdScan {
    pub chunk: Dim,
}

/// Gradients of [`DocumentSsdScan`] from inputs `(x, dt, a, b, c, dy, positions)`: outputs
/// `dx, ddt, da, db, dc`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DocumentSsdScanGrad {
    pub chunk: Dim,
}

pub(super) const DECLS: &[Decl] = &[
    callable!(
        "ssd_scan",
        &[
            req("x", Kind::Tensor),
            req("dt", Kind::Tensor),
            req("a", Kind::Tensor),
            req("b", Kind::Tensor),
            req("c", Kind::Tensor),
            opt("chunk", Kind::Int, Default::Int(64)),
        ],
        |a: &Args| {
            let chunk = a.int(5);
            if chunk.as_const().is_some_and(|c| c <= 0) {
                return Err(RuleError::at(5, format!("chunk size must be positive, got {chunk}")));
            }
            Ok(Prim::SsdScan(SsdScan { chunk }))
        }
    )
    .counting(Heads::Ssm(|y| y[2].as_const().unwrap_or(0) as u64)),
    Decl::Internal { name: "ssd_scan_grad", what: "the gradient of `ssd_scan`" },
    Decl::Internal { name: "document_ssd_scan", what: "`ssd_scan` within each document of a packed row" },
    Decl::Internal { name: "document_ssd_scan_grad", what: "the gradient of `document_ssd_scan`" },
];

/// Checks the five inputs' shapes against each other.
pub(super) fn check_inputs(inputs: &[Ty], ctx: Ctx) -> Result<(), RuleError> {
    let get = |i: usize| inputs.get(i).map(|t| t.0.clone()).unwrap_or_default();
    let (x, dt, a, bm, cm) = (get(0), get(1), get(2), get(3), get(4));
    if x.len() != 4 {
        return Err(RuleError::rank(
            0,
            format!("ssd_scan x must be [B, T, heads, head_dim], got {}", shape_string(&x)),
        ));
    }
    if dt.len() != 3 || ctx.differ(&dt[0], &x[0]) || ctx.differ(&dt[1], &x[1]) || ctx.differ(&dt[2], &x[2]) {
        return Err(RuleError::at(
            1,
            format!("ssd_scan dt must be [B, T, heads] = [{}, {}, {}], got {}", x[0], x[1], x[2], shape_string(&dt)),
        ));
    }
    if a.len() != 1 || ctx.differ(&a[0], &x[2]) {
        return Err(RuleError::at(2, format!("ssd_scan a must be [heads] = [{}], got {}", x[2], shape_string(&a))));
    }
    for (i, m) in [(3, &bm), (4, &cm)] {
        if m.len() != 4 || ctx.differ(&m[0], &x[0]) || ctx.differ(&m[1], &x[1]) {
            return Err(RuleError::at(
                i,
                format!("ssd_scan b and c must be [B, T, groups, d_state], got {}", shape_string(m)),
            ));
        }
    }
    if ctx.differ(&bm[2], &cm[2]) || ctx.differ(&bm[3], &cm[3]) {
        return Err(RuleError::at(4, format!("ssd_scan b is {} but c is {}", shape_string(&bm), shape_string(&cm))));
    }
    if let (Some(h), Some(g)) = (x[2].as_const(), bm[2].as_const()) {
        if g == 0 || h % g != 0 {
            return Err(RuleError::at(3, format!("{h} heads cannot be split into {g} groups")));
        }
    }
    Ok(())
}

/// FLOPs of the forward scan: per token, head and channel, state-size work into and out of
/// the carried state, and chunk-size work within the chunk.
fn forward_flops(m: &Machine, inputs: &[&TensorType], chunk: &Dim) -> f64 {
    let state = inputs.get(3).map_or(1.0, |b| m.dim_last(b));
    m.numel(inputs[0]) * (4.0 * state + 2.0 * m.dim(chunk))
}

/// One launch reading the inputs and writing the outputs once, at `passes` times the
/// forward scan's FLOPs.
fn scan_work(m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType], chunk: &Dim, passes: f64) -> Work {
    Work {
        flops: passes * forward_flops(m, inputs, chunk),
        bytes: inputs.iter().chain(outputs).map(|t| m.bytes(t)).sum(),
        launches: 1.0,
        ..Work::default()
    }
}

impl Primitive for SsdScan {
    fn name(&self) -> &'static str {
        "ssd_scan"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        check_inputs(inputs, ctx)?;
        Ok(vec![inputs[0].clone()])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>> {
        let chunk = sizes.of(&self.chunk) as usize;
        vec![chunked(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], chunk)]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let mut inputs = g.nodes[node].inputs.clone();
        inputs.push(dy);
        let grads = g.apply_all(SsdScanGrad { chunk: self.chunk.clone() }, inputs);
        Ok(grads.into_iter().map(Some).collect())
    }

    /// Batch, heads and channels split (time and the state size do not); head h reads
    /// group h / (heads / groups), so splitting heads splits the groups with them; one
    /// group stays whole, and fewer groups than ranks are linked to the heads (each rank
    /// holds the group its heads read).
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        let ins = &g.nodes[y].inputs;
        let (x, dt, a, b, c) = (ins[0], ins[1], ins[2], ins[3], ins[4]);
        for k in [0, 2, 3] {
            ax.same(x, k, y, k);
        }
        ax.same(dt, 0, y, 0);
        ax.same(dt, 2, y, 2);
        ax.same(a, 0, y, 2);
        for bc in [b, c] {
            ax.same(bc, 0, y, 0);
            ax.block(ax.var(bc, 3));
        }
        let groups = g.nodes[b].ty.shape[2].as_const().unwrap_or(0);
        if groups > 1 && groups < ax.ranks && ax.ranks % groups == 0 {
            for bc in [b, c] {
                ax.link(ax.var(bc, 2), ax.var(y, 2), groups);
            }
        } else if groups != 1 {
            ax.same(b, 2, y, 2);
            ax.same(c, 2, y, 2);
        }
    }

    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        scan_work(m, inputs, outputs, &self.chunk, 1.0)
    }
}

impl Primitive for SsdScanGrad {
    fn name(&self) -> &'static str {
        "ssd_scan_grad"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        check_inputs(inputs, ctx)?;
        let dy = inputs.get(5).map(|t| &t.0);
        if dy != Some(&inputs[0].0) {
            return Err(RuleError::at(5, "ssd_scan_grad's dy must have the shape of x"));
        }
        Ok(inputs[..5].to_vec())
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>> {
        let chunk = sizes.of(&self.chunk) as usize;
        gradients(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5], chunk).into()
    }

    fn single_output(&self) -> bool {
        false
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(NoGradient(self.name()))
    }

    /// One backward pass for all five gradients: it recomputes the forward's states chunk
    /// by chunk and runs the adjoint through them, about twice the forward's FLOPs.
    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        scan_work(m, inputs, outputs, &self.chunk, 2.0)
    }
}

/// Shapes of an SSD scan: x [B,T,H,P], dt [B,T,H], a [H], b and c [B,T,G,N].
pub(super) struct ScanDims {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub p: usize,
    pub g: usize,
    pub n: usize,
}

impl ScanDims {
    pub fn of<T: Real>(x: &Tensor<T>, bm: &Tensor<T>) -> Self {
        ScanDims { b: x.shape[0], t: x.shape[1], h: x.shape[2], p: x.shape[3], g: bm.shape[2], n: bm.shape[3] }
    }
    /// Head `h` reads B/C group `h / (H / G)` (consecutive heads share a group).
    pub fn group(&self, h: usize) -> usize {
        h / (self.h / self.g)
    }
    pub fn x(&self, bi: usize, ti: usize, hi: usize, pi: usize) -> usize {
        ((bi * self.t + ti) * self.h + hi) * self.p + pi
    }
    pub fn bc(&self, bi: usize, ti: usize, gi: usize, ni: usize) -> usize {
        ((bi * self.t + ti) * self.g + gi) * self.n + ni
    }
}

/// The Mamba-2 scan by the chunked (state-space dual) algorithm: within a chunk the output
/// is a masked, decay-weighted attention-like sum; between chunks a state of size P×N per
/// head carries the past. Same result as [`sequential`], in O(T·chunk) per head.
pub fn chunked<T: Real>(
    x: &Tensor<T>,
    dt: &Tensor<T>,
    a: &Tensor<T>,
    bm: &Tensor<T>,
    cm: &Tensor<T>,
    chunk: usize,
) -> Tensor<T> {
    let d = ScanDims::of(x, bm);
    let mut y = Tensor::zeros(x.shape.clone());
    for bi in 0..d.b {
        for hi in 0..d.h {
            let gi = d.group(hi);
            let mut state = vec![T::zero(); d.p * d.n];
            let mut start = 0;
            while start < d.t {
                let end = (start + chunk).min(d.t);
                // cum[u] = Σ_{v=start..=u} dt_v · a_h
                let mut cum = Vec::with_capacity(end - start);
                let mut s = T::zero();
                for u in start..end {
                    s = s + dt.data[(bi * d.t + u) * d.h + hi] * a.data[hi];
                    cum.push(s);
                }
                for ti in start..end {
                    let ct = cum[ti - start];
                    for pi in 0..d.p {
                        // Past chunks, through the carried state.
                        let mut acc = T::zero();
                        for ni in 0..d.n {
                            acc = acc + cm.data[d.bc(bi, ti, gi, ni)] * state[pi * d.n + ni];
                        }
                        acc = acc * ct.exp();
                        // This chunk, directly.
                        for u in start..=ti {
                            let mut cb = T::zero();
                            for ni in 0..d.n {
                                cb = cb + cm.data[d.bc(bi, ti, gi, ni)] * bm.data[d.bc(bi, u, gi, ni)];
                            }
                            let dtu = dt.data[(bi * d.t + u) * d.h + hi];
                            acc = acc + (ct - cum[u - start]).exp() * cb * dtu * x.data[d.x(bi, u, hi, pi)];
                        }
                        y.data[d.x(bi, ti, hi, pi)] = acc;
                    }
                }
                // Carry the state to the end of this chunk.
                let last = cum[end - start - 1];
                for pi in 0..d.p {
                    for ni in 0..d.n {
                        let mut v = state[pi * d.n + ni] * last.exp();
                        for u in start..end {
                            let dtu = dt.data[(bi * d.t + u) * d.h + hi];
                            v = v
                                + (last - cum[u - start]).exp()
                                    * dtu
                                    * x.data[d.x(bi, u, hi, pi)]
                                    * bm.data[d.bc(bi, u, gi, ni)];
                        }
                        state[pi * d.n + ni] = v;
                    }
                }
                start = end;
            }
        }
    }
    y
}

/// The defining recurrence, one step at a time:
/// `h_t = exp(dt_t·a)·h_{t-1} + dt_t·x_t·B_tᵀ`, `y_t = h_t·C_t`.
pub fn sequential<T: Real>(x: &Tensor<T>, dt: &Tensor<T>, a: &Tensor<T>, bm: &Tensor<T>, cm: &Tensor<T>) -> Tensor<T> {
    recurrence(x, dt, a, bm, cm, &|_, _| true)
}

/// The recurrence with the state carried into step `t` of row `b` only where
/// `carries(b, t)` (elsewhere it restarts from zero: a document's first token).
fn recurrence<T: Real>(
    x: &Tensor<T>,
    dt: &Tensor<T>,
    a: &Tensor<T>,
    bm: &Tensor<T>,
    cm: &Tensor<T>,
    carries: &dyn Fn(usize, usize) -> bool,
) -> Tensor<T> {
    let d = ScanDims::of(x, bm);
    let mut y = Tensor::zeros(x.shape.clone());
    for bi in 0..d.b {
        for hi in 0..d.h {
            let gi = d.group(hi);
            let mut state = vec![T::zero(); d.p * d.n];
            for ti in 0..d.t {
                let dtt = dt.data[(bi * d.t + ti) * d.h + hi];
                let decay = if carries(bi, ti) { (dtt * a.data[hi]).exp() } else { T::zero() };
                for pi in 0..d.p {
                    let mut acc = T::zero();
                    for ni in 0..d.n {
                        let s = &mut state[pi * d.n + ni];
                        *s = decay * *s + dtt * x.data[d.x(bi, ti, hi, pi)] * bm.data[d.bc(bi, ti, gi, ni)];
                        acc = acc + *s * cm.data[d.bc(bi, ti, gi, ni)];
                    }
                    y.data[d.x(bi, ti, hi, pi)] = acc;
                }
            }
        }
    }
    y
}

/// Gradients of [`chunked`] with respect to all five inputs (x, dt, a, b, c), chunk by
/// chunk like the forward scan: a forward sweep keeps only the state entering each chunk;
/// the backward sweep visits chunks last to first, recomputes the chunk's states from its
/// entering state, and runs the adjoint `G_t = dy_t·C_tᵀ + exp(dt_{t+1}·a)·G_{t+1}` through
/// it, carrying `G` into the previous chunk. Memory is O(T/chunk) states, not O(T).
pub fn gradients<T: Real>(
    x: &Tensor<T>,
    dt: &Tensor<T>,
    a: &Tensor<T>,
    bm: &Tensor<T>,
    cm: &Tensor<T>,
    dy: &Tensor<T>,
    chunk: usize,
) -> [Tensor<T>; 5] {
    gradients_in(x, dt, a, bm, cm, dy, chunk, &|_, _| true)
}

/// [`gradients`] of the recurrence that carries its state into step `t` of row `b` only
/// where `carries(b, t)`: there the decay is zero, so no adjoint flows back across it.
#[allow(clippy::too_many_arguments)]
fn gradients_in<T: Real>(
    x: &Tensor<T>,
    dt: &Tensor<T>,
    a: &Tensor<T>,
    bm: &Tensor<T>,
    cm: &Tensor<T>,
    dy: &Tensor<T>,
    chunk: usize,
    carries: &dyn Fn(usize, usize) -> bool,
) -> [Tensor<T>; 5] {
    let d = ScanDims::of(x, bm);
    let chunk = chunk.max(1);
    let mut dx = Tensor::zeros(x.shape.clone());
    let mut ddt = Tensor::zeros(dt.shape.clone());
    let mut da = Tensor::zeros(a.shape.clone());
    let mut db = Tensor::zeros(bm.shape.clone());
    let mut dc = Tensor::zeros(cm.shape.clone());
    let pn = d.p * d.n;
    let starts: Vec<usize> = (0..d.t).step_by(chunk).collect();
    for bi in 0..d.b {
        for hi in 0..d.h {
            let gi = d.group(hi);
            let dt_at = |ti: usize| dt.data[(bi * d.t + ti) * d.h + hi];
            // The factor by which the state entering step t shrinks: zero at a restart.
            let decay_at = |ti: usize| if carries(bi, ti) { (dt_at(ti) * a.data[hi]).exp() } else { T::zero() };
            // h_t = exp(dt_t·a)·h_{t-1} + dt_t·x_t·B_tᵀ, one step.
            let advance = |ti: usize, prev: &[T], out: &mut [T]| {
                let decay = decay_at(ti);
                for pi in 0..d.p {
                    for ni in 0..d.n {
                        out[pi * d.n + ni] = decay * prev[pi * d.n + ni]
                            + dt_at(ti) * x.data[d.x(bi, ti, hi, pi)] * bm.data[d.bc(bi, ti, gi, ni)];
                    }
                }
            };
            // The state entering each chunk.
            let mut entering = vec![vec![T::zero(); pn]; starts.len()];
            let mut prev = vec![T::zero(); pn];
            let mut next = vec![T::zero(); pn];
            for (c, &s) in starts.iter().enumerate() {
                entering[c].copy_from_slice(&prev);
                for ti in s..(s + chunk).min(d.t) {
                    advance(ti, &prev, &mut next);
                    std::mem::swap(&mut prev, &mut next);
                }
            }
            let mut g = vec![T::zero(); pn];
            let mut states = vec![T::zero(); chunk * pn];
            for (c, &s) in starts.iter().enumerate().rev() {
                let e = (s + chunk).min(d.t);
                let mut before = entering[c].clone();
                for ti in s..e {
                    let (_, rest) = states.split_at_mut((ti - s) * pn);
                    advance(ti, &before, &mut rest[..pn]);
                    before.copy_from_slice(&rest[..pn]);
                }
                for ti in (s..e).rev() {
                    let next_decay = if ti + 1 < d.t { decay_at(ti + 1) } else { T::zero() };
                    for pi in 0..d.p {
                        for ni in 0..d.n {
                            let idx = pi * d.n + ni;
                            g[idx] = dy.data[d.x(bi, ti, hi, pi)] * cm.data[d.bc(bi, ti, gi, ni)] + next_decay * g[idx];
                        }
                    }
                    let decay = decay_at(ti);
                    let here = &states[(ti - s) * pn..(ti - s + 1) * pn];
                    let prev_state: &[T] =
                        if ti > s { &states[(ti - s - 1) * pn..(ti - s) * pn] } else { &entering[c] };
                    let mut g_dot_prev = T::zero();
                    let mut g_dot_input = T::zero();
                    for pi in 0..d.p {
                        let xv = x.data[d.x(bi, ti, hi, pi)];
                        let mut dxv = T::zero();
                        for ni in 0..d.n {
                            let idx = pi * d.n + ni;
                            let bv = bm.data[d.bc(bi, ti, gi, ni)];
                            dxv = dxv + g[idx] * bv;
                            g_dot_prev = g_dot_prev + g[idx] * prev_state[idx];
                            g_dot_input = g_dot_input + g[idx] * xv * bv;
                            let bc = d.bc(bi, ti, gi, ni);
                            db.data[bc] = db.data[bc] + dt_at(ti) * g[idx] * xv;
                            dc.data[bc] = dc.data[bc] + here[idx] * dy.data[d.x(bi, ti, hi, pi)];
                        }
                        dx.data[d.x(bi, ti, hi, pi)] = dt_at(ti) * dxv;
                    }
                    let k = (bi * d.t + ti) * d.h + hi;
                    ddt.data[k] = g_dot_input + g_dot_prev * decay * a.data[hi];
                    da.data[hi] = da.data[hi] + g_dot_prev * decay * dt_at(ti);
                }
            }
        }
    }
    [dx, ddt, da, db, dc]
}

/// `carries(b, t)` of a packed row: the state carries into every token but a document's
/// first.
fn within_documents<T: Real>(positions: &Tensor<T>) -> impl Fn(usize, usize) -> bool {
    let t = positions.shape[1];
    let start = starts(positions);
    move |bi, ti| start[bi * t + ti] < ti
}

impl Primitive for DocumentSsdScan {
    fn name(&self) -> &'static str {
        "document_ssd_scan"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        check_inputs(inputs, ctx)?;
        let x = &inputs[0].0;
        check_positions(inputs, 5, &x[0], &x[1], ctx, self.name())?;
        Ok(vec![inputs[0].clone()])
    }

    /// The recurrence itself (the chunked form is the same math; the reference keeps to
    /// the definition where documents restart it).
    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let carries = within_documents(inputs[5]);
        vec![recurrence(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], &carries)]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let ins = g.nodes[node].inputs.clone();
        let mut inputs = ins[..5].to_vec();
        inputs.extend([dy, ins[5]]);
        let mut grads: Vec<Option<NodeId>> =
            g.apply_all(DocumentSsdScanGrad { chunk: self.chunk.clone() }, inputs).into_iter().map(Some).collect();
        grads.push(None);
        Ok(grads)
    }

    /// As `ssd_scan`, with the positions following batch (time is whole).
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, y: NodeId) {
        SsdScan { chunk: self.chunk.clone() }.shard_axes(ax, g, y);
        let positions = g.nodes[y].inputs[5];
        ax.same(positions, 0, y, 0);
        ax.block(ax.var(positions, 1));
    }

    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        scan_work(m, inputs, outputs, &self.chunk, 1.0)
    }
}

impl Primitive for DocumentSsdScanGrad {
    fn name(&self) -> &'static str {
        "document_ssd_scan_grad"
    }

    fn class(&self) -> Class {
        Class::Sequence
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        let out = SsdScanGrad { chunk: self.chunk.clone() }.infer(&inputs[..6.min(inputs.len())], ctx)?;
        let x = &inputs[0].0;
        check_positions(inputs, 6, &x[0], &x[1], ctx, self.name())?;
        Ok(out)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>> {
        let chunk = sizes.of(&self.chunk) as usize;
        let carries = within_documents(inputs[6]);
        gradients_in(inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5], chunk, &carries).into()
    }

    fn single_output(&self) -> bool {
        false
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Err(NoGradient(self.name()))
    }

    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        scan_work(m, inputs, outputs, &self.chunk, 2.0)
    }
}
