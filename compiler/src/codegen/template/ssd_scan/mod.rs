//! The Mamba-2 SSD scan, `h_t = exp(dt_t·a)·h_{t-1} + dt_t·x_t·B_tᵀ`, `y_t = h_t·C_t`, and
//! its gradient (`ops::ssd_scan` is the meaning), in the recurrent form: the chunked
//! algorithm is the same math, and a recurrence keeps only the state. Decoding runs the
//! same recurrence with its state as an input or an output: `ssd_state` (the state after
//! a prompt, zero at its start) and `ssd_step` (from a cached state; `ops::ssd_step`).
//!
//! An item owns a block of one head's P×N state: on the CPU the whole state (its inner
//! loops run over the block, unit stride in stack arrays, so LLVM vectorises them); on
//! the GPU one row or column, so a thread keeps N or P floats. The forward's block is
//! rows (channels p), so each item writes its own `y`.
//!
//! The backward needs the states only at chunk starts. With the adjoint
//! `G_t = dy_t·C_tᵀ + exp(dt_{t+1}·a)·G_{t+1}`, the decay term of `ddt` is
//! `S_t = exp(dt_t·a)·⟨G_t, h_{t-1}⟩`, and `S_t = S_{t+1} + dy_t·y_t − x_t·dx_t` (both
//! are `⟨G_t, h_t⟩` less one side's new term), a reverse sum of per-step quantities.
//! Rounding would accumulate along it, so at every chunk's first step `S_t` is taken
//! exactly from the state entering the chunk (kept by the forward sweep). A column sweep
//! writes `v_t = h_tᵀ·dy_t` (forward) and `u_t = G_tᵀ·x_t` and the chunk starts'
//! `G_tᵀ·h_{t-1}` (reverse), a row sweep writes `dx_t = dt_t·G_t·B_t`, and from the
//! workspace (per head) follow `dy_t·y_t = C_t·v_t`, `x_t·dx_t = dt_t·B_t·u_t`,
//! `dC = Σ_heads v` and `dB = Σ_heads dt·u`. The sums over heads and over batches are
//! later phases with items that own their outputs, summing in a fixed order.

mod chunk_grad;
mod chunks;
mod recurrences;

pub use chunk_grad::backward_on_tensor_cores;
pub use chunks::forward_on_tensor_cores;

use super::super::emit::Target;
use super::super::math::Func;
use super::position::place_in_document;
use super::text::Text;
use super::{name, Phase, TemplateCode};

/// Views of both templates' inputs; the backward's `dy` follows them.
const X: usize = 0;
const DT: usize = 1;
const A: usize = 2;
const B: usize = 3;
const C: usize = 4;
const DY: usize = 5;
/// `ssd_step`'s starting state, `[B, H, P, N]`, after the scan's inputs.
const STATE: usize = 5;

/// The sizes of `x [B,T,H,P]` and `b [B,T,G,N]`; for packed rows the view of the
/// positions (`resets`: the state restarts where a document does); and the view of the
/// backward's first output (its outputs and workspace follow the inputs).
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    p: usize,
    g: usize,
    n: usize,
    resets: Option<usize>,
    out: usize,
}

impl Dims {
    /// The sizes of `inputs`, whose last is the positions when `documents`.
    fn of(inputs: &[Vec<usize>], documents: bool) -> Dims {
        let (x, bm) = (&inputs[X], &inputs[B]);
        let resets = documents.then(|| inputs.len() - 1);
        Dims { b: x[0], t: x[1], h: x[2], p: x[3], g: bm[2], n: bm[3], resets, out: inputs.len() }
    }

    /// View `v` of the backward's outputs and workspace.
    fn at(&self, v: usize) -> usize {
        self.out + v
    }

    fn heads_per_group(&self) -> usize {
        self.h / self.g
    }
}

/// How much of an axis of `extent` one item's block covers: all of it on the CPU, one on
/// the GPU.
fn width(target: Target, extent: usize) -> usize {
    match target {
        Target::Cpu => extent,
        Target::Gpu => 1,
    }
}

/// An item `(b, h, block)`: its batch, head, the head's group and the block's first index.
struct Head {
    b: String,
    h: String,
    g: String,
    first: String,
    resets: Option<usize>,
}

impl Head {
    fn of(s: &mut Text, d: &Dims, blocks: usize, width: usize) -> Head {
        let (bh, block) = split(s, "%item", blocks);
        let (b, h) = split(s, &bh, d.h);
        let per = s.i64(d.heads_per_group() as i64);
        let g = s.int("divui", &h, &per);
        let first = s.mul_c(&block, width as i64);
        Head { b, h, g, first, resets: d.resets }
    }

    /// Index `j` of the block.
    fn at(&self, s: &mut Text, j: &str) -> String {
        s.add(&self.first, j)
    }
}

/// The forward template for inputs `x, dt, a, b, c` and, with `documents`, `positions`:
/// output `y`.
pub fn forward(inputs: &[Vec<usize>], documents: bool, target: Target) -> TemplateCode {
    recurrence(inputs, Recurrence { from_state: false, y: true, state: false, documents }, target)
}

/// `ssd_state` (prefill) for inputs `x, dt, a, b, c`: output the state after the last
/// step, `[B, H, P, N]`.
pub fn final_state(inputs: &[Vec<usize>], target: Target) -> TemplateCode {
    recurrence(inputs, Recurrence { from_state: false, y: false, state: true, documents: false }, target)
}

/// `ssd_step` (decode) for inputs `x, dt, a, b, c, state`: outputs `y` and the new state.
/// An item reads its block of the state before it writes it, so the new state may be
/// planned in place of the old.
pub fn step_from_state(inputs: &[Vec<usize>], target: Target) -> TemplateCode {
    recurrence(inputs, Recurrence { from_state: true, y: true, state: true, documents: false }, target)
}

/// Which of the recurrence's ends a template has: a starting state (input 5, else zero),
/// the outputs `y` and the final state (outputs in that order); and whether input 5 is
/// instead the positions of packed rows, restarting the state at each document.
#[derive(Clone, Copy)]
struct Recurrence {
    from_state: bool,
    y: bool,
    state: bool,
    documents: bool,
}

/// The recurrence forward in time: an item per head and block of channels, its rows of
/// the state `[n][p]` so the innermost loop is over channels.
fn recurrence(inputs: &[Vec<usize>], ends: Recurrence, target: Target) -> TemplateCode {
    let d = Dims::of(inputs, ends.documents);
    let y = inputs.len();
    let final_state = y + usize::from(ends.y);
    let w = width(target, d.p);
    let mut s = Text::new();
    let hd = Head::of(&mut s, &d, d.p / w, w);
    let (state, xdt, acc) = (s.array(d.n * w), s.array(w), s.array(w));
    if ends.from_state {
        each_state(&mut s, &d, &hd, w, |s, k, index| {
            let v = s.load(STATE, index);
            s.set(&state, k, &v);
        });
    } else {
        zero(&mut s, &state, d.n * w);
    }
    let av = s.load(A, &[&hd.h]);
    range(&mut s, d.t, |s, ti| {
        let (dtv, decay) = step(s, &hd, ti, &av);
        range(s, w, |s, j| {
            let pi = hd.at(s, j);
            let xv = s.load(X, &[&hd.b, ti, &hd.h, &pi]);
            let v = s.fmul(&dtv, &xv);
            s.set(&xdt, j, &v);
            let z = s.f32(0.0);
            s.set(&acc, j, &z);
        });
        range(s, d.n, |s, ni| {
            let bv = s.load(B, &[&hd.b, ti, &hd.g, ni]);
            let cv = if ends.y { Some(s.load(C, &[&hd.b, ti, &hd.g, ni])) } else { None };
            let row = s.mul_c(ni, w as i64);
            range(s, w, |s, j| {
                let k = s.add(&row, j);
                let (old, xj) = (s.get(&state, &k), s.get(&xdt, j));
                let input = s.fmul(&xj, &bv);
                let new = s.fma(&decay, &old, &input);
                s.set(&state, &k, &new);
                if let Some(cv) = &cv {
                    accumulate(s, &acc, j, &new, cv);
                }
            });
        });
        if ends.y {
            range(s, w, |s, j| {
                let pi = hd.at(s, j);
                let v = s.get(&acc, j);
                s.store(y, &[&hd.b, ti, &hd.h, &pi], &v);
            });
        }
    });
    if ends.state {
        each_state(&mut s, &d, &hd, w, |s, k, index| {
            let v = s.get(&state, k);
            s.store(final_state, index, &v);
        });
    }
    let state_shape = vec![d.b, d.h, d.p, d.n];
    let mut outputs = Vec::new();
    if ends.y {
        outputs.push(inputs[X].clone());
    }
    if ends.state {
        outputs.push(state_shape);
    }
    let template = match (ends.from_state, ends.y, ends.documents) {
        (false, true, true) => "document_ssd_scan",
        (false, true, false) => "ssd_scan",
        (false, false, _) => "ssd_state",
        (true, _, _) => "ssd_step",
    };
    let shapes: Vec<&[usize]> = inputs.iter().map(Vec::as_slice).collect();
    TemplateCode {
        name: name(template, &shapes),
        inputs: inputs.to_vec(),
        outputs,
        workspace: vec![],
        workspace_storage: vec![],
        in_place: if ends.from_state && ends.state { vec![(1, STATE)] } else { vec![] },
        phases: vec![Phase {
            cooperative: None,
            what: if ends.y { "forward" } else { "state" },
            items: d.b * d.h * (d.p / w),
            work_per_item: 2 * d.t * d.n * w,
            body: s,
        }],
    }
}

/// `body(k, [b, h, p, n])` for every element of an item's block of the state: `k` its
/// place in the block's array, the index its place in a `[B, H, P, N]` state view.
fn each_state(s: &mut Text, d: &Dims, hd: &Head, w: usize, body: impl Fn(&mut Text, &str, &[&str])) {
    range(s, d.n, |s, ni| {
        let row = s.mul_c(ni, w as i64);
        range(s, w, |s, j| {
            let k = s.add(&row, j);
            let pi = hd.at(s, j);
            body(s, &k, &[&hd.b, &hd.h, &pi, ni]);
        });
    });
}

/// The backward's outputs and workspace (per-head `v` and `u`, `[B,T,H,N]`), counted from
/// its first output (`Dims::at`).
const DX: usize = 0;
const DDT: usize = 1;
const DA: usize = 2;
const DB: usize = 3;
const DC: usize = 4;
const V: usize = 5;
const U: usize = 6;
/// The state entering each chunk, `[B, chunks, H, P, N]`, and each chunk start's
/// `G_tᵀ·h_{t-1}`, `[B, chunks, H, N]`.
const ENTERING: usize = 7;
const ANCHOR: usize = 8;

/// Time in chunks of `len` steps.
#[derive(Clone, Copy)]
struct Chunks {
    len: usize,
    count: usize,
}

impl Chunks {
    fn of(chunk: usize, t: usize) -> Chunks {
        let len = chunk.clamp(1, t.max(1));
        Chunks { len, count: t.div_ceil(len) }
    }

    /// Whether `ti` starts a chunk, and which chunk it is in.
    fn at(self, s: &mut Text, ti: &str) -> (String, String) {
        let (c, offset) = split(s, ti, self.len);
        let zero = s.i64(0);
        (s.cmp("eq", &offset, &zero), c)
    }
}

/// The gradient template for inputs `x, dt, a, b, c, dy` and, with `documents`,
/// `positions`: outputs `dx, ddt, da, db, dc`; `da` sums by chunks of `chunk` time steps.
pub fn backward(inputs: &[Vec<usize>], chunk: usize, documents: bool, target: Target) -> TemplateCode {
    let d = Dims::of(inputs, documents);
    let (wn, wp) = (width(target, d.n), width(target, d.p));
    let per_head = d.b * d.t * d.h * d.n;
    let ch = Chunks::of(chunk, d.t);
    let entering = d.b * ch.count * d.h * d.p * d.n;
    let shapes: Vec<&[usize]> = inputs.iter().map(Vec::as_slice).collect();
    TemplateCode {
        name: name(if documents { "document_ssd_scan_grad" } else { "ssd_scan_grad" }, &shapes),
        inputs: inputs.to_vec(),
        outputs: inputs[..5].to_vec(),
        workspace: vec![per_head, per_head, entering, d.b * ch.count * d.h * d.n],
        workspace_storage: vec![],
        in_place: vec![],
        phases: vec![
            Phase {
                cooperative: None,
                what: "columns",
                items: d.b * d.h * (d.n / wn),
                work_per_item: 4 * d.t * d.p * wn,
                body: columns(&d, ch, wn),
            },
            Phase {
                cooperative: None,
                what: "rows",
                items: d.b * d.h * (d.p / wp),
                work_per_item: 2 * d.t * d.n * wp,
                body: rows(&d, wp),
            },
            Phase {
                cooperative: None,
                what: "decay_grad",
                items: d.h,
                work_per_item: 2 * d.b * d.t * d.n,
                body: decay_grad(&d, ch),
            },
            Phase {
                cooperative: None,
                what: "group_sum",
                items: d.b * d.t * d.g * (d.n / wn),
                work_per_item: 2 * d.heads_per_group() * wn,
                body: group_sum(&d, wn),
            },
        ],
    }
}

/// Per head and block of state columns `[p][n]`: the states forward, writing `v_t =
/// h_tᵀ·dy_t` and the state entering each chunk, then the adjoint backward, writing `u_t
/// = G_tᵀ·x_t` and, at chunk starts, `G_tᵀ·h_{t-1}`.
fn columns(d: &Dims, ch: Chunks, w: usize) -> Text {
    let mut s = Text::new();
    let hd = Head::of(&mut s, d, d.n / w, w);
    let (state, vec, acc) = (s.array(d.p * w), s.array(w), s.array(w));
    let av = s.load(A, &[&hd.h]);
    // One sweep: `state = decay·state + scale·vec[j]`, `acc[j] += state·weight` over
    // rows p, with (scale, weight) per row.
    let sweep = |s: &mut Text, decay: &str, scale_weight: &dyn Fn(&mut Text, &str) -> (String, String)| {
        range(s, d.p, |s, pi| {
            let (scale, weight) = scale_weight(s, pi);
            let row = s.mul_c(pi, w as i64);
            range(s, w, |s, j| {
                let k = s.add(&row, j);
                let (old, vj) = (s.get(&state, &k), s.get(&vec, j));
                let input = s.fmul(&scale, &vj);
                let new = s.fma(decay, &old, &input);
                s.set(&state, &k, &new);
                accumulate(s, &acc, j, &new, &weight);
            });
        });
    };
    // Loads `view[b,t,g,n]` of the block into `vec` and zeroes `acc`.
    let start = |s: &mut Text, view: usize, ti: &str| {
        range(s, w, |s, j| {
            let ni = hd.at(s, j);
            let v = s.load(view, &[&hd.b, ti, &hd.g, &ni]);
            s.set(&vec, j, &v);
            let z = s.f32(0.0);
            s.set(&acc, j, &z);
        });
    };
    // Element (p, block j) of the state entering chunk `c`, in `ENTERING`.
    let entering = |s: &mut Text, c: &str, pi: &str, j: &str| {
        let bc = s.mul_c(&hd.b, ch.count as i64);
        let bc = s.add(&bc, c);
        let bch = s.mul_c(&bc, d.h as i64);
        let bch = s.add(&bch, &hd.h);
        let bchp = s.mul_c(&bch, d.p as i64);
        let bchp = s.add(&bchp, pi);
        let row = s.mul_c(&bchp, d.n as i64);
        let ni = hd.at(s, j);
        s.add(&row, &ni)
    };
    zero(&mut s, &state, d.p * w);
    range(&mut s, d.t, |s, ti| {
        let (starts, c) = ch.at(s, ti);
        s.when(&starts, |s| {
            range(s, d.p, |s, pi| {
                let row = s.mul_c(pi, w as i64);
                range(s, w, |s, j| {
                    let k = s.add(&row, j);
                    let v = s.get(&state, &k);
                    let at = entering(s, &c, pi, j);
                    s.store(d.at(ENTERING), &[&at], &v);
                });
            });
        });
        let (dtv, decay) = step(s, &hd, ti, &av);
        start(s, B, ti);
        sweep(s, &decay, &|s, pi| {
            let xv = s.load(X, &[&hd.b, ti, &hd.h, pi]);
            (s.fmul(&dtv, &xv), s.load(DY, &[&hd.b, ti, &hd.h, pi]))
        });
        finish(s, d, &hd, d.at(V), ti, &acc, w);
    });
    zero(&mut s, &state, d.p * w);
    reverse(&mut s, d.t, &hd, &av, |s, ti, later| {
        start(s, C, ti);
        sweep(s, later, &|s, pi| (s.load(DY, &[&hd.b, ti, &hd.h, pi]), s.load(X, &[&hd.b, ti, &hd.h, pi])));
        finish(s, d, &hd, d.at(U), ti, &acc, w);
        let (starts, c) = ch.at(s, ti);
        s.when(&starts, |s| {
            zero(s, &acc, w);
            range(s, d.p, |s, pi| {
                let row = s.mul_c(pi, w as i64);
                range(s, w, |s, j| {
                    let k = s.add(&row, j);
                    let g = s.get(&state, &k);
                    let at = entering(s, &c, pi, j);
                    let h = s.load(d.at(ENTERING), &[&at]);
                    accumulate(s, &acc, j, &g, &h);
                });
            });
            let row = anchor_row(s, d, ch, &hd.b, &c, &hd.h);
            range(s, w, |s, j| {
                let ni = hd.at(s, j);
                let flat = s.add(&row, &ni);
                let v = s.get(&acc, j);
                s.store(d.at(ANCHOR), &[&flat], &v);
            });
        });
    });
    s
}

/// The offset of `[b,c,h,0]` in the `[B, chunks, H, N]` anchors.
fn anchor_row(s: &mut Text, d: &Dims, ch: Chunks, bi: &str, c: &str, hi: &str) -> String {
    let bc = s.mul_c(bi, ch.count as i64);
    let bc = s.add(&bc, c);
    let bch = s.mul_c(&bc, d.h as i64);
    let bch = s.add(&bch, hi);
    s.mul_c(&bch, d.n as i64)
}

/// Per head and block of state rows `[n][p]`: the adjoint backward, writing `dx_t =
/// dt_t·G_t·B_t`.
fn rows(d: &Dims, w: usize) -> Text {
    let mut s = Text::new();
    let hd = Head::of(&mut s, d, d.p / w, w);
    let (adjoint, dys, acc) = (s.array(d.n * w), s.array(w), s.array(w));
    let av = s.load(A, &[&hd.h]);
    zero(&mut s, &adjoint, d.n * w);
    reverse(&mut s, d.t, &hd, &av, |s, ti, later| {
        range(s, w, |s, j| {
            let pi = hd.at(s, j);
            let v = s.load(DY, &[&hd.b, ti, &hd.h, &pi]);
            s.set(&dys, j, &v);
            let z = s.f32(0.0);
            s.set(&acc, j, &z);
        });
        range(s, d.n, |s, ni| {
            let cv = s.load(C, &[&hd.b, ti, &hd.g, ni]);
            let bv = s.load(B, &[&hd.b, ti, &hd.g, ni]);
            let row = s.mul_c(ni, w as i64);
            range(s, w, |s, j| {
                let k = s.add(&row, j);
                let (old, dj) = (s.get(&adjoint, &k), s.get(&dys, j));
                let input = s.fmul(&dj, &cv);
                let new = s.fma(later, &old, &input);
                s.set(&adjoint, &k, &new);
                accumulate(s, &acc, j, &new, &bv);
            });
        });
        let dtv = s.load(DT, &[&hd.b, ti, &hd.h]);
        range(s, w, |s, j| {
            let pi = hd.at(s, j);
            let r = s.get(&acc, j);
            let v = s.fmul(&dtv, &r);
            s.store(d.at(DX), &[&hd.b, ti, &hd.h, &pi], &v);
        });
    });
    s
}

/// Per head: `ddt_t = B_t·u_t + a·S_t` with `S_t = S_{t+1} + C_t·v_t − dt_t·B_t·u_t`,
/// but at a chunk's start `exp(dt_t·a)·Σ_n (G_tᵀ·h_{t-1})_n`; `da = Σ_b Σ_t dt_t·S_t`
/// (batches in order, time last to first).
fn decay_grad(d: &Dims, ch: Chunks) -> Text {
    let mut s = Text::new();
    let hi = "%item";
    let per = s.i64(d.heads_per_group() as i64);
    let gi = s.int("divui", hi, &per);
    let av = s.load(A, &[hi]);
    let decay_term = s.array(1);
    let (zero_i, bn) = (s.i64(0), s.i64(d.b as i64));
    let z = s.f32(0.0);
    let da = s.fold(&zero_i, &bn, std::slice::from_ref(&z), |s, bi, carried| {
        let init = [z.clone(), carried[0].clone()];
        let sums = backwards(s, d.t, &init, |s, ti, carried| {
            let flat = state_row(s, d, bi, ti, hi);
            let (out_y, into_x) = dots(s, d, bi, ti, &gi, &flat);
            let dtv = s.load(DT, &[bi, ti, hi]);
            let x_dx = s.fmul(&dtv, &into_x);
            let step = s.fsub(&out_y, &x_dx);
            let sum = s.fadd(&carried[0], &step);
            s.set(&decay_term, &zero_i, &sum);
            let (starts, c) = ch.at(s, ti);
            s.when(&starts, |s| {
                let row = anchor_row(s, d, ch, bi, &c, hi);
                let (nn, z) = (s.i64(d.n as i64), s.f32(0.0));
                let inner = s.fold(&zero_i, &nn, &[z], |s, ni, acc| {
                    let flat = s.add(&row, ni);
                    let v = s.load(d.at(ANCHOR), &[&flat]);
                    vec![s.fadd(&acc[0], &v)]
                });
                let e = s.fmul(&dtv, &av);
                let decay = s.call(Func::Exp, &e);
                let exact = s.fmul(&decay, &inner[0]);
                s.set(&decay_term, &zero_i, &exact);
            });
            // Where a document starts nothing decays into the step: the term is zero
            // exactly, which also ends the reverse sum's rounding there.
            let term = s.get(&decay_term, &zero_i);
            let term = restarted(s, d.resets, bi, ti, term);
            s.set(&decay_term, &zero_i, &term);
            let ddt = s.fma(&av, &term, &into_x);
            s.store(d.at(DDT), &[bi, ti, hi], &ddt);
            vec![term.clone(), s.fma(&dtv, &term, &carried[1])]
        });
        vec![sums[1].clone()]
    });
    s.store(d.at(DA), &[hi], &da[0]);
    s
}

/// Per `(b, t, g)` and block of `n`: `dC = Σ_heads v` and `dB = Σ_heads dt·u` over the
/// group's heads in order.
fn group_sum(d: &Dims, w: usize) -> Text {
    let mut s = Text::new();
    let (btg, block) = split(&mut s, "%item", d.n / w);
    let (bt, gi) = split(&mut s, &btg, d.g);
    let (bi, ti) = split(&mut s, &bt, d.t);
    let first = s.mul_c(&block, w as i64);
    let per = d.heads_per_group();
    let head0 = s.mul_c(&gi, per as i64);
    let (zero_i, kn) = (s.i64(0), s.i64(per as i64));
    range(&mut s, w, |s, j| {
        let ni = s.add(&first, j);
        let z = s.f32(0.0);
        let sums = s.fold(&zero_i, &kn, &[z.clone(), z], |s, k, acc| {
            let hi = s.add(&head0, k);
            let row = state_row(s, d, &bi, &ti, &hi);
            let flat = s.add(&row, &ni);
            let (vv, uv) = (s.load(d.at(V), &[&flat]), s.load(d.at(U), &[&flat]));
            let dtv = s.load(DT, &[&bi, &ti, &hi]);
            vec![s.fadd(&acc[0], &vv), s.fma(&dtv, &uv, &acc[1])]
        });
        s.store(d.at(DC), &[&bi, &ti, &gi, &ni], &sums[0]);
        s.store(d.at(DB), &[&bi, &ti, &gi, &ni], &sums[1]);
    });
    s
}

/// `dt_t` and the decay `exp(dt_t·a)` of an item's head at time `ti` (zero where a
/// document starts in a packed row: the state restarts).
fn step(s: &mut Text, hd: &Head, ti: &str, av: &str) -> (String, String) {
    let dtv = s.load(DT, &[&hd.b, ti, &hd.h]);
    let e = s.fmul(&dtv, av);
    let decay = s.call(Func::Exp, &e);
    (dtv.clone(), restarted(s, hd.resets, &hd.b, ti, decay))
}

/// `value`, or zero where a document starts at `(b, t)` (with the positions in view
/// `resets`).
fn restarted(s: &mut Text, resets: Option<usize>, b: &str, t: &str, value: String) -> String {
    let Some(view) = resets else { return value };
    let p = place_in_document(s, view, b, t);
    let zero_i = s.i64(0);
    let starts = s.cmp("eq", &p, &zero_i);
    let zero = s.f32(0.0);
    s.select(&starts, &zero, &value, "f32")
}

/// Time last to first; `body(t, later)` with `later` the decay of step t+1 (0 at the
/// end), by which the adjoint carried from step t+1 shrinks.
fn reverse(s: &mut Text, t: usize, hd: &Head, av: &str, body: impl FnOnce(&mut Text, &str, &str)) {
    let none = s.f32(0.0);
    backwards(s, t, &[none], |s, ti, later| {
        body(s, ti, &later[0]);
        vec![step(s, hd, ti, av).1]
    });
}

/// `for t in (0..T).rev()`, carrying `init` like [`Text::fold`].
fn backwards(
    s: &mut Text,
    t: usize,
    init: &[String],
    body: impl FnOnce(&mut Text, &str, &[String]) -> Vec<String>,
) -> Vec<String> {
    let (zero_i, tn, last) = (s.i64(0), s.i64(t as i64), s.i64(t as i64 - 1));
    s.fold(&zero_i, &tn, init, |s, i, carried| {
        let ti = s.int("subi", &last, i);
        body(s, &ti, carried)
    })
}

/// Writes the block `acc` to `view[b,t,h, first..first+w]` of the workspace.
fn finish(s: &mut Text, d: &Dims, hd: &Head, view: usize, ti: &str, acc: &str, w: usize) {
    let row = state_row(s, d, &hd.b, ti, &hd.h);
    range(s, w, |s, j| {
        let ni = hd.at(s, j);
        let flat = s.add(&row, &ni);
        let v = s.get(acc, j);
        s.store(view, &[&flat], &v);
    });
}

/// The offset of `[b,t,h,0]` in a `[B,T,H,N]` workspace buffer.
fn state_row(s: &mut Text, d: &Dims, bi: &str, ti: &str, hi: &str) -> String {
    let bt = s.mul_c(bi, d.t as i64);
    let bt = s.add(&bt, ti);
    let bth = s.mul_c(&bt, d.h as i64);
    let bth = s.add(&bth, hi);
    s.mul_c(&bth, d.n as i64)
}

/// `(C_t·v_t, B_t·u_t)` of head row `row` of the workspace, n in order.
fn dots(s: &mut Text, d: &Dims, bi: &str, ti: &str, gi: &str, row: &str) -> (String, String) {
    let (zero_i, nn) = (s.i64(0), s.i64(d.n as i64));
    let z = s.f32(0.0);
    let sums = s.fold(&zero_i, &nn, &[z.clone(), z], |s, ni, acc| {
        let flat = s.add(row, ni);
        let (cv, vv) = (s.load(C, &[bi, ti, gi, ni]), s.load(d.at(V), &[&flat]));
        let (bv, uv) = (s.load(B, &[bi, ti, gi, ni]), s.load(d.at(U), &[&flat]));
        vec![s.fma(&cv, &vv, &acc[0]), s.fma(&bv, &uv, &acc[1])]
    });
    (sums[0].clone(), sums[1].clone())
}

/// `acc[j] += value·weight`.
fn accumulate(s: &mut Text, acc: &str, j: &str, value: &str, weight: &str) {
    let old = s.get(acc, j);
    let new = s.fma(value, weight, &old);
    s.set(acc, j, &new);
}

/// `for i in 0..n`.
fn range(s: &mut Text, n: usize, body: impl FnOnce(&mut Text, &str)) {
    let (zero, hi) = (s.i64(0), s.i64(n as i64));
    s.each(&zero, &hi, body);
}

/// Zeroes `n` floats of `array`.
fn zero(s: &mut Text, array: &str, n: usize) {
    let z = s.f32(0.0);
    range(s, n, |s, i| s.set(array, i, &z));
}

/// `(i / n, i % n)`.
fn split(s: &mut Text, i: &str, n: usize) -> (String, String) {
    let k = s.i64(n as i64);
    (s.int("divui", i, &k), s.int("remui", i, &k))
}
