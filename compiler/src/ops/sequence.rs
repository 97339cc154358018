//! Sequence primitives: causal depthwise convolution, the Mamba-2 state-space scan, rotary
//! embeddings and the causal mask.

use super::attr;
use crate::ir::{Attr, Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::Prim;

/// `y[b,t,c] = bias[c] + Σ_k w[c,k] · x[b, t-(K-1)+k, c]`, zero before the sequence start.
pub fn causal_conv1d<T: Real>(x: &Tensor<T>, w: &Tensor<T>, bias: Option<&Tensor<T>>) -> Tensor<T> {
    let (b, t, c) = (x.shape[0], x.shape[1], x.shape[2]);
    let k = w.shape[1];
    let mut out = Tensor::zeros(x.shape.clone());
    for bi in 0..b {
        for ti in 0..t {
            for ci in 0..c {
                let mut acc = bias.map_or(T::zero(), |bb| bb.data[ci]);
                for ki in 0..k {
                    let src = ti as i64 - (k as i64 - 1) + ki as i64;
                    if src >= 0 {
                        acc = acc + w.data[ci * k + ki] * x.data[(bi * t + src as usize) * c + ci];
                    }
                }
                out.data[(bi * t + ti) * c + ci] = acc;
            }
        }
    }
    out
}

/// Shapes of an SSD scan: x [B,T,H,P], dt [B,T,H], a [H], b and c [B,T,G,N].
struct ScanDims {
    b: usize,
    t: usize,
    h: usize,
    p: usize,
    g: usize,
    n: usize,
}

impl ScanDims {
    fn of<T: Real>(x: &Tensor<T>, bm: &Tensor<T>) -> Self {
        ScanDims { b: x.shape[0], t: x.shape[1], h: x.shape[2], p: x.shape[3], g: bm.shape[2], n: bm.shape[3] }
    }
    /// Head `h` reads B/C group `h / (H / G)` (consecutive heads share a group).
    fn group(&self, h: usize) -> usize {
        h / (self.h / self.g)
    }
    fn x(&self, bi: usize, ti: usize, hi: usize, pi: usize) -> usize {
        ((bi * self.t + ti) * self.h + hi) * self.p + pi
    }
    fn bc(&self, bi: usize, ti: usize, gi: usize, ni: usize) -> usize {
        ((bi * self.t + ti) * self.g + gi) * self.n + ni
    }
}

/// The Mamba-2 scan by the chunked (state-space dual) algorithm: within a chunk the output
/// is a masked, decay-weighted attention-like sum; between chunks a state of size P×N per
/// head carries the past. Same result as [`ssd_scan_sequential`], in O(T·chunk) per head.
pub fn ssd_scan<T: Real>(
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
pub fn ssd_scan_sequential<T: Real>(
    x: &Tensor<T>,
    dt: &Tensor<T>,
    a: &Tensor<T>,
    bm: &Tensor<T>,
    cm: &Tensor<T>,
) -> Tensor<T> {
    let d = ScanDims::of(x, bm);
    let mut y = Tensor::zeros(x.shape.clone());
    for bi in 0..d.b {
        for hi in 0..d.h {
            let gi = d.group(hi);
            let mut state = vec![T::zero(); d.p * d.n];
            for ti in 0..d.t {
                let dtt = dt.data[(bi * d.t + ti) * d.h + hi];
                let decay = (dtt * a.data[hi]).exp();
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

/// Rotary position embedding on `[B, T, H, D]`, position = index along T, in the
/// "rotate half" layout: dimension `j < D/2` pairs with `j + D/2`, frequency
/// `theta^(-2j/D)`.
pub fn rope<T: Real>(x: &Tensor<T>, theta: f64) -> Tensor<T> {
    rotate(x, theta, 1.0)
}

/// Rotation by minus the RoPE angle: the transpose (and inverse) of [`rope`].
pub fn rope_grad<T: Real>(dy: &Tensor<T>, theta: f64) -> Tensor<T> {
    rotate(dy, theta, -1.0)
}

/// Rotates each (j, j + D/2) pair by `direction ·` its RoPE angle.
fn rotate<T: Real>(x: &Tensor<T>, theta: f64, direction: f64) -> Tensor<T> {
    let (b, t, h, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let half = d / 2;
    let mut out = Tensor::zeros(x.shape.clone());
    for ti in 0..t {
        for j in 0..half {
            let angle = direction * ti as f64 * theta.powf(-(2.0 * j as f64) / d as f64);
            let (sin, cos) = (T::of(angle.sin()), T::of(angle.cos()));
            for bi in 0..b {
                for hi in 0..h {
                    let base = ((bi * t + ti) * h + hi) * d;
                    let (x1, x2) = (x.data[base + j], x.data[base + j + half]);
                    out.data[base + j] = x1 * cos - x2 * sin;
                    out.data[base + j + half] = x2 * cos + x1 * sin;
                }
            }
        }
    }
    out
}

/// Sets entries above the diagonal of the last two axes (`[..., i, j]`, `j > i`) to -∞.
pub fn causal_mask<T: Real>(x: &Tensor<T>) -> Tensor<T> {
    fill_above_diagonal(x, T::neg_infinity())
}

/// Zeroes entries above the diagonal of the last two axes (the causal mask's gradient).
pub fn tril<T: Real>(x: &Tensor<T>) -> Tensor<T> {
    fill_above_diagonal(x, T::zero())
}

fn fill_above_diagonal<T: Real>(x: &Tensor<T>, value: T) -> Tensor<T> {
    let r = x.rank();
    let (rows, cols) = (x.shape[r - 2], x.shape[r - 1]);
    let mut out = x.clone();
    for (i, v) in out.data.iter_mut().enumerate() {
        if i % cols > (i / cols) % rows {
            *v = value;
        }
    }
    out
}

/// Gradient of [`causal_conv1d`] with respect to input `wrt` (0 x, 1 weight, 2 bias).
pub fn causal_conv1d_grad<T: Real>(x: &Tensor<T>, w: &Tensor<T>, dy: &Tensor<T>, wrt: i64) -> Tensor<T> {
    let (b, t, c) = (x.shape[0], x.shape[1], x.shape[2]);
    let k = w.shape[1];
    match wrt {
        0 => {
            let mut dx = Tensor::zeros(x.shape.clone());
            for bi in 0..b {
                for s in 0..t {
                    for ci in 0..c {
                        let mut acc = T::zero();
                        for ki in 0..k {
                            let ti = s + (k - 1) - ki;
                            if ti < t {
                                acc = acc + w.data[ci * k + ki] * dy.data[(bi * t + ti) * c + ci];
                            }
                        }
                        dx.data[(bi * t + s) * c + ci] = acc;
                    }
                }
            }
            dx
        }
        1 => {
            let mut dw = Tensor::zeros(w.shape.clone());
            for ci in 0..c {
                for ki in 0..k {
                    let mut acc = T::zero();
                    for bi in 0..b {
                        for ti in 0..t {
                            let src = ti as i64 - (k as i64 - 1) + ki as i64;
                            if src >= 0 {
                                acc = acc + dy.data[(bi * t + ti) * c + ci] * x.data[(bi * t + src as usize) * c + ci];
                            }
                        }
                    }
                    dw.data[ci * k + ki] = acc;
                }
            }
            dw
        }
        _ => {
            let mut db = Tensor::zeros(vec![c]);
            for (i, v) in dy.data.iter().enumerate() {
                db.data[i % c] = db.data[i % c] + *v;
            }
            db
        }
    }
}

/// Gradients of [`ssd_scan`] with respect to all five inputs (x, dt, a, b, c), chunk by
/// chunk like the forward scan: a forward sweep keeps only the state entering each chunk;
/// the backward sweep visits chunks last to first, recomputes the chunk's states from its
/// entering state, and runs the adjoint `G_t = dy_t·C_tᵀ + exp(dt_{t+1}·a)·G_{t+1}` through
/// it, carrying `G` into the previous chunk. Memory is O(T/chunk) states, not O(T).
pub fn ssd_scan_grads<T: Real>(
    x: &Tensor<T>,
    dt: &Tensor<T>,
    a: &Tensor<T>,
    bm: &Tensor<T>,
    cm: &Tensor<T>,
    dy: &Tensor<T>,
    chunk: usize,
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
            // h_t = exp(dt_t·a)·h_{t-1} + dt_t·x_t·B_tᵀ, one step.
            let advance = |ti: usize, prev: &[T], out: &mut [T]| {
                let decay = (dt_at(ti) * a.data[hi]).exp();
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
                    let next_decay = if ti + 1 < d.t { (dt_at(ti + 1) * a.data[hi]).exp() } else { T::zero() };
                    for pi in 0..d.p {
                        for ni in 0..d.n {
                            let idx = pi * d.n + ni;
                            g[idx] = dy.data[d.x(bi, ti, hi, pi)] * cm.data[d.bc(bi, ti, gi, ni)] + next_decay * g[idx];
                        }
                    }
                    let decay = (dt_at(ti) * a.data[hi]).exp();
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

/// Gradients of the sequence ops, each through its dedicated backward primitive.
pub fn vjp(g: &mut Graph, prim: Prim, node: NodeId, dy: NodeId) -> Vec<Option<NodeId>> {
    let inputs = g.nodes[node].inputs.clone();
    match prim {
        Prim::CausalConv1d => (0..inputs.len())
            .map(|wrt| {
                let attrs = vec![Attr::Tensor, Attr::Tensor, Attr::Tensor, Attr::Int(Dim::constant(wrt as i64))];
                Some(g.apply(Prim::CausalConv1dGrad, attrs, vec![inputs[0], inputs[1], dy]))
            })
            .collect(),
        Prim::SsdScan => {
            let chunk = attr(g, node, 5);
            (0..5)
                .map(|wrt| {
                    let mut attrs = vec![Attr::Tensor; 6];
                    attrs.push(chunk.clone());
                    attrs.push(Attr::Int(Dim::constant(wrt)));
                    let mut args = inputs.clone();
                    args.push(dy);
                    Some(g.apply(Prim::SsdScanGrad, attrs, args))
                })
                .collect()
        }
        Prim::Rope => vec![Some(g.apply(Prim::RopeGrad, vec![Attr::Tensor, attr(g, node, 1)], vec![dy]))],
        Prim::RopeGrad => vec![Some(g.apply(Prim::Rope, vec![Attr::Tensor, attr(g, node, 1)], vec![dy]))],
        Prim::CausalMask | Prim::Tril => vec![Some(g.unary(Prim::Tril, dy))],
        other => unreachable!("{} is not a sequence op", other.name()),
    }
}
