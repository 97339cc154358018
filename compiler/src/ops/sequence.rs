//! Sequence primitives: causal depthwise convolution, the Mamba-2 state-space scan, rotary
//! embeddings and the causal mask.

use crate::reference::tensor::{Real, Tensor};

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
        ScanDims {
            b: x.shape[0],
            t: x.shape[1],
            h: x.shape[2],
            p: x.shape[3],
            g: bm.shape[2],
            n: bm.shape[3],
        }
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
                                cb = cb
                                    + cm.data[d.bc(bi, ti, gi, ni)] * bm.data[d.bc(bi, u, gi, ni)];
                            }
                            let dtu = dt.data[(bi * d.t + u) * d.h + hi];
                            acc = acc
                                + (ct - cum[u - start]).exp()
                                    * cb
                                    * dtu
                                    * x.data[d.x(bi, u, hi, pi)];
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
                        *s = decay * *s
                            + dtt * x.data[d.x(bi, ti, hi, pi)] * bm.data[d.bc(bi, ti, gi, ni)];
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
    let (b, t, h, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let half = d / 2;
    let mut out = Tensor::zeros(x.shape.clone());
    for ti in 0..t {
        for j in 0..half {
            let freq = theta.powf(-(2.0 * j as f64) / d as f64);
            let angle = ti as f64 * freq;
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
    let r = x.rank();
    let (rows, cols) = (x.shape[r - 2], x.shape[r - 1]);
    let mut out = x.clone();
    for (i, v) in out.data.iter_mut().enumerate() {
        let (row, col) = ((i / cols) % rows, i % cols);
        if col > row {
            *v = T::neg_infinity();
        }
    }
    out
}
