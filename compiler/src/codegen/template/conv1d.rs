//! The causal depthwise conv1d, `y[b,t,c] = bias[c] + Σ_k w[c,k]·x[b,t-(K-1)+k,c]`, its
//! gradient (`ops::conv1d` is the meaning), their `document_` twins for packed rows (no
//! tap reads before its output's document; `ops::documents`), and its decode step from a
//! cache of the last `K − 1` inputs (`ops::conv_step`).
//!
//! Forward and `dx` are a tap-weighted sum of nearby time steps: on the CPU an item is a
//! time step of a sequence, its channels the innermost loop (unit stride, so LLVM
//! vectorises it) under the taps that reach inside the sequence; on the GPU neighbouring
//! threads take neighbouring channels, each a run of time steps with the taps' inputs
//! sliding along in registers. `dw` and `dbias` sum
//! over every time step of every sequence: an item per channel (on either target), the
//! sums in time order, so they do not depend on how items are shared out.

use super::super::emit::Target;
use super::super::math::Func;
use super::position::place_in_document;
use super::text::Text;
use super::{name, Phase, TemplateCode};

/// The forward template for inputs `x [B,T,C]`, `w [C,K]` and optionally `bias [C]`; with
/// `documents`, a last input `positions [B,T]` (`document_conv1d`): no tap reads before
/// the start of its output's document. With `silu`, the output is `silu` of the conv
/// (`KernelKind::ConvSilu`, whose inputs are in the same order).
pub fn forward(inputs: &[Vec<usize>], documents: bool, silu: bool, target: Target) -> TemplateCode {
    let x = &inputs[0];
    let (b, t, c, k) = (x[0], x[1], x[2], inputs[1][1]);
    let bias = (inputs.len() > 2 + usize::from(documents)).then_some(2);
    let out = inputs.len();
    let positions = documents.then(|| inputs.len() - 1);
    let value = |s: &mut Text, bi: &str, ti: &str, ci: &str, lo: &str| {
        let y = pre_activation(s, k, bias, bi, ti, ci, lo);
        if silu {
            silu_of(s, &y)
        } else {
            y
        }
    };
    let mut body = Text::new();
    let (items, per_item) = match target {
        Target::Cpu => {
            let (bi, ti) = body.split("%item", t);
            let lo = first_tap(&mut body, &bi, &ti, k, positions);
            let (zero, cn) = (body.i64(0), body.i64(c as i64));
            body.each(&zero, &cn, |s, ci| {
                let y = value(s, &bi, &ti, ci, &lo);
                s.store(out, &[&bi, &ti, ci], &y);
            });
            (b * t, c * k)
        }
        Target::Gpu => {
            let (run, runs) = Run::of_item(&mut body, (t, c), STEPS);
            let (w, start) = channel_taps(&mut body, k, bias, &run.ci);
            run.slide(&mut body, k, |s, ti, window| {
                let lo = first_tap(s, &run.bi, ti, k, positions);
                let y = windowed(s, (&w, &start), window, &lo);
                let y = if silu { silu_of(s, &y) } else { y };
                s.store(out, &[&run.bi, ti, &run.ci], &y);
            });
            (b * runs * c, STEPS * k)
        }
    };
    let shapes: Vec<&[usize]> = inputs.iter().map(Vec::as_slice).collect();
    let template = match (documents, silu) {
        (false, false) => "conv1d",
        (false, true) => "conv1d_silu",
        (true, false) => "document_conv1d",
        (true, true) => "document_conv1d_silu",
    };
    TemplateCode {
        name: name(template, &shapes),
        inputs: inputs.to_vec(),
        outputs: vec![x.clone()],
        workspace: vec![],
        workspace_storage: vec![],
        in_place: vec![],
        phases: vec![Phase { cooperative: None, what: "forward", items, work_per_item: per_item, body }],
    }
}

/// Time steps a GPU item of the forward, `dx` and the SiLU gradient's first phase walks: the
/// taps' inputs slide along in registers, so each input is read once rather than `K`
/// times, and the item's index arithmetic is shared by its steps.
const STEPS: usize = 16;

/// A GPU item: channel `ci` of sequence `bi` at times `t0 .. hi`; neighbouring items are
/// neighbouring channels.
struct Run {
    bi: String,
    ci: String,
    t0: String,
    hi: String,
}

impl Run {
    /// Item `%item` of `[B, ⌈T / steps⌉, C]`, and the runs per sequence.
    fn of_item(s: &mut Text, (t, c): (usize, usize), steps: usize) -> (Run, usize) {
        let runs = t.div_ceil(steps);
        let (rest, ci) = s.split("%item", c);
        let (bi, run) = s.split(&rest, runs);
        let t0 = s.mul_c(&run, steps as i64);
        let end = s.add_c(&t0, steps as i64);
        let tn = s.i64(t as i64);
        let hi = s.int("minsi", &end, &tn);
        (Run { bi, ci, t0, hi }, runs)
    }

    /// Walks the run's steps: `at(s, ti, window)` with `window[kk] = x[bi, ti-(K-1)+kk, ci]`
    /// (view 0; steps before 0 read step 0, which the caller's first tap masks).
    fn slide(&self, s: &mut Text, k: usize, at: impl FnOnce(&mut Text, &str, &[String])) {
        let read = |s: &mut Text, time: &str| {
            let zero = s.i64(0);
            let clamped = s.int("maxsi", time, &zero);
            s.load(0, &[&self.bi, &clamped, &self.ci])
        };
        self.slide_over(s, k, 1 - k as i64, &read, at);
    }

    /// Walks the run's steps: `at(s, ti, window)` with `window[j] = read(ti + from + j)`
    /// for `j < K`, each value read once.
    fn slide_over(
        &self,
        s: &mut Text,
        k: usize,
        from: i64,
        read: &dyn Fn(&mut Text, &str) -> String,
        at: impl FnOnce(&mut Text, &str, &[String]),
    ) {
        let before: Vec<String> = (0..k - 1)
            .map(|j| {
                let time = s.add_c(&self.t0, from + j as i64);
                read(s, &time)
            })
            .collect();
        s.fold(&self.t0, &self.hi, &before, |s, ti, carried| {
            let mut window = carried.to_vec();
            let newest = s.add_c(ti, from + k as i64 - 1);
            window.push(read(s, &newest));
            at(s, ti, &window);
            window[1..].to_vec()
        });
    }
}

/// Channel `ci`'s taps `w[ci, ·]` (view 1) and its bias (or 0), read once per item.
fn channel_taps(s: &mut Text, k: usize, bias: Option<usize>, ci: &str) -> (Vec<String>, String) {
    let w = (0..k)
        .map(|kk| {
            let tap = s.i64(kk as i64);
            s.load(1, &[ci, &tap])
        })
        .collect();
    (w, bias_of(s, bias, ci))
}

/// Channel `ci`'s bias (view `bias`), or 0 without one.
fn bias_of(s: &mut Text, bias: Option<usize>, ci: &str) -> String {
    match bias {
        Some(view) => s.load(view, &[ci]),
        None => s.f32(0.0),
    }
}

/// `bias + Σ_{kk ≥ lo} w[kk]·window[kk]`, in tap order as [`pre_activation`] sums.
fn windowed(s: &mut Text, (w, bias): (&[String], &str), window: &[String], lo: &str) -> String {
    let mut acc = bias.to_string();
    for (kk, (wv, xv)) in w.iter().zip(window).enumerate() {
        let term = s.fma(wv, xv, &acc);
        let tap = s.i64(kk as i64);
        let reads = s.cmp("sge", &tap, lo);
        acc = s.select(&reads, &term, &acc, "f32");
    }
    acc
}

/// `bias[c] + Σ_{kk ≥ lo} w[c,kk]·x[b, t-(K-1)+kk, c]` (views 0 and 1 are `x` and `w`).
fn pre_activation(s: &mut Text, k: usize, bias: Option<usize>, bi: &str, ti: &str, ci: &str, lo: &str) -> String {
    let start = bias_of(s, bias, ci);
    let kk_hi = s.i64(k as i64);
    s.fold(lo, &kk_hi, &[start], |s, kk, acc| {
        let shift = s.add_c(kk, 1 - k as i64);
        let src = s.add(ti, &shift);
        let xv = s.load(0, &[bi, &src, ci]);
        let wv = s.load(1, &[ci, kk]);
        vec![s.fma(&wv, &xv, &acc[0])]
    })
    .remove(0)
}

/// `σ(v) = 1 / (1 + e^{−v})`; `e^{−v}` overflowing to ∞ gives 0, as it should.
fn sigmoid_of(s: &mut Text, v: &str) -> String {
    let minus = s.fneg(v);
    let e = s.call(Func::Exp, &minus);
    let one = s.f32(1.0);
    let denominator = s.fadd(&one, &e);
    s.fdiv(&one, &denominator)
}

/// `silu'(v) = σ(v)·(1 + v·(1 − σ(v)))`.
fn silu_slope(s: &mut Text, v: &str) -> String {
    let sigmoid = sigmoid_of(s, v);
    let one = s.f32(1.0);
    let rest = s.fsub(&one, &sigmoid);
    let slope = s.fma(v, &rest, &one);
    s.fmul(&sigmoid, &slope)
}

fn silu_of(s: &mut Text, v: &str) -> String {
    let sigmoid = sigmoid_of(s, v);
    s.fmul(v, &sigmoid)
}

/// `conv_step` (decode) for inputs `x [B,T,C]`, the cache `state [B,K-1,C]`, `w [C,K]`
/// and optionally `bias [C]`: outputs `y [B,T,C]` and the new cache, the last `K − 1` rows
/// of `concat(state, x)` along time (`ops::conv_step`). An item is one channel of one
/// sequence on both targets (a decode step has few time steps), so neighbouring threads
/// read neighbouring channels. It computes every output before it writes the cache, and
/// writes cache rows in increasing order, each from a later row: the new cache may be
/// planned in place of the old.
pub fn step(inputs: &[Vec<usize>]) -> TemplateCode {
    let (x, state, w) = (&inputs[0], &inputs[1], &inputs[2]);
    let (b, t, c, k) = (x[0], x[1], x[2], w[1]);
    let past = k - 1;
    let bias = inputs.len() > 3;
    let (y, next) = (inputs.len(), inputs.len() + 1);
    let mut s = Text::new();
    let (bi, ci) = s.split("%item", c);
    // Row `r` of the window: the cache for r < K − 1, then the new tokens. Both indices are
    // clamped into their tensors, so each load is in bounds and a select keeps one.
    let window = |s: &mut Text, r: &str| -> String {
        let from_x = s.add_c(r, -(past as i64));
        if past == 0 {
            return s.load(0, &[&bi, &from_x, &ci]);
        }
        let zero = s.i64(0);
        let xi = s.int("maxsi", &from_x, &zero);
        let xv = s.load(0, &[&bi, &xi, &ci]);
        let last = s.i64(past as i64 - 1);
        let si = s.int("minsi", r, &last);
        let sv = s.load(1, &[&bi, &si, &ci]);
        let first_new = s.i64(past as i64);
        let cached = s.cmp("slt", r, &first_new);
        s.select(&cached, &sv, &xv, "f32")
    };
    let (zero, tn, kn) = (s.i64(0), s.i64(t as i64), s.i64(k as i64));
    s.each(&zero, &tn, |s, ti| {
        let start = if bias { s.load(3, &[&ci]) } else { s.f32(0.0) };
        let acc = s.fold(&zero, &kn, &[start], |s, kk, acc| {
            let r = s.add(ti, kk);
            let xv = window(s, &r);
            let wv = s.load(2, &[&ci, kk]);
            vec![s.fma(&wv, &xv, &acc[0])]
        });
        s.store(y, &[&bi, ti, &ci], &acc[0]);
    });
    let pn = s.i64(past as i64);
    s.each(&zero, &pn, |s, r| {
        let from = s.add_c(r, t as i64);
        let v = window(s, &from);
        s.store(next, &[&bi, r, &ci], &v);
    });
    let shapes: Vec<&[usize]> = inputs.iter().map(Vec::as_slice).collect();
    TemplateCode {
        name: name(if bias { "conv_step_bias" } else { "conv_step" }, &shapes),
        inputs: inputs.to_vec(),
        outputs: vec![x.clone(), state.clone()],
        workspace: vec![],
        workspace_storage: vec![],
        in_place: vec![(1, 1)],
        phases: vec![Phase { cooperative: None, what: "step", items: b * c, work_per_item: t * k + past, body: s }],
    }
}

/// Where a gradient template finds its operands: the prim's `(x, w, dy, positions)`, or
/// the `conv1d_silu` kernel gradient's `(x, w, bias, positions, dy)`, which needs the bias
/// to recompute the pre-activation that SiLU's derivative reads.
#[derive(Clone, Copy, Debug)]
pub struct GradOperands {
    dy: usize,
    positions: Option<usize>,
    bias: Option<usize>,
    dbias: bool,
    silu: bool,
    /// Under SiLU, where `dy · silu'` is once the first phase has written it.
    gated: Option<Gated>,
}

/// The workspace view holding `dy · silu'` as a flat `[B, T, C]`, with `T` and `C` to
/// index it.
#[derive(Clone, Copy, Debug)]
struct Gated {
    view: usize,
    dims: (usize, usize),
}

impl GradOperands {
    /// `causal_conv1d_grad` (`document_conv1d_grad` with `documents`).
    pub fn of_prim(dbias: bool, documents: bool) -> GradOperands {
        GradOperands { dy: 2, positions: documents.then_some(3), bias: None, dbias, silu: false, gated: None }
    }

    /// The gradient kernel of `conv1d_silu` over `arity` inputs.
    pub fn of_silu(arity: usize, documents: bool) -> GradOperands {
        let bias = (arity == 4 + usize::from(documents)).then_some(2);
        let positions = documents.then(|| arity - 2);
        GradOperands { dy: arity - 1, positions, bias, dbias: bias.is_some(), silu: true, gated: None }
    }

    /// The gradient at the conv's output `(bi, ti, ci)`: `dy`, times `silu'` of the
    /// pre-activation under SiLU (read back from the workspace once it is there).
    fn dy_at(&self, s: &mut Text, k: usize, bi: &str, ti: &str, ci: &str) -> String {
        if let Some(Gated { view, dims }) = self.gated {
            let at = flat(s, dims, bi, ti, ci);
            return s.load(view, &[&at]);
        }
        let dy = s.load(self.dy, &[bi, ti, ci]);
        if !self.silu {
            return dy;
        }
        let lo = first_tap(s, bi, ti, k, self.positions);
        let pre = pre_activation(s, k, self.bias, bi, ti, ci, &lo);
        let derivative = silu_slope(s, &pre);
        s.fmul(&dy, &derivative)
    }

    /// `term` where output time `ti` of sequence `bi` reads tap `kk` (its document reaches
    /// back that far), else nothing: `acc` unchanged.
    fn within(&self, s: &mut Text, k: usize, (bi, ti): (&str, &str), kk: &str, term: String, acc: &str) -> String {
        let Some(view) = self.positions else { return term };
        let p = place_in_document(s, view, bi, ti);
        let top = s.i64(k as i64 - 1);
        let reach = s.int("subi", &top, kk);
        let reads = s.cmp("sge", &p, &reach);
        s.select(&reads, &term, acc, "f32")
    }

    /// Over times `lo..hi` of sequence `bi`, channel `ci`: each tap's `Σ dy·x` and `Σ dy`
    /// added to `init` (`K + 1` sums), in time order.
    fn tap_sums(
        &self,
        s: &mut Text,
        k: usize,
        bi: &str,
        (lo, hi): (&str, &str),
        ci: &str,
        init: &[String],
    ) -> Vec<String> {
        s.fold(lo, hi, init, |s, ti, acc| {
            let g = self.dy_at(s, k, bi, ti, ci);
            let mut next: Vec<String> = (0..k)
                .map(|kk| {
                    let src = s.add_c(ti, kk as i64 + 1 - k as i64);
                    let zero = s.i64(0);
                    let inside = s.cmp("sge", &src, &zero);
                    let clamped = s.int("maxsi", &src, &zero);
                    let xv = s.load(0, &[bi, &clamped, ci]);
                    let term = s.fma(&g, &xv, &acc[kk]);
                    let term = s.select(&inside, &term, &acc[kk], "f32");
                    let tap = s.i64(kk as i64);
                    self.within(s, k, (bi, ti), &tap, term, &acc[kk])
                })
                .collect();
            next.push(s.fadd(&acc[k], &g));
            next
        })
    }
}

/// The gradient template over `inputs` laid out as `operands` says (`x [B,T,C]`, `w [C,K]`,
/// `dy [B,T,C]`, …): outputs `dx`, `dw` and, with a bias, `dbias`.
///
/// Under SiLU a first phase writes `dy · silu'` of the recomputed pre-activation to the
/// workspace, once per element: the later phases read it at every tap instead of
/// recomputing a pre-activation (`K` taps) per tap.
pub fn backward(inputs: &[Vec<usize>], operands: GradOperands, target: Target) -> TemplateCode {
    let (x, w) = (&inputs[0], &inputs[1]);
    let (b, t, c, k) = (x[0], x[1], x[2], w[1]);
    let (dx, dw, db) = (inputs.len(), inputs.len() + 1, inputs.len() + 2);
    let first_workspace = dw + usize::from(operands.dbias) + 1;
    let mut workspace = Vec::new();
    let mut phases = Vec::new();
    let ops = match operands.silu {
        true => {
            let view = first_workspace;
            workspace.push(b * t * c);
            phases.push(gate_grad(&operands, (b, t, c, k), view, target));
            GradOperands { gated: Some(Gated { view, dims: (t, c) }), ..operands }
        }
        false => operands,
    };
    // dx[b,s,c] = Σ_k w[c,k]·g[b, s+(K-1)-k, c] over the taps that land before T.
    let taps = |s: &mut Text, bi: &str, si: &str, ci: &str| {
        let lo = last_tap(s, si, k, t);
        let (zero, hi) = (s.f32(0.0), s.i64(k as i64));
        let v = s.fold(&lo, &hi, &[zero], |s, kk, acc| {
            let back = s.int("subi", si, kk);
            let dst = s.add_c(&back, k as i64 - 1);
            let g = ops.dy_at(s, k, bi, &dst, ci);
            let wv = s.load(1, &[ci, kk]);
            let term = s.fma(&wv, &g, &acc[0]);
            vec![ops.within(s, k, (bi, &dst), kk, term, &acc[0])]
        });
        s.store(dx, &[bi, si, ci], &v[0]);
    };
    let mut input_grad = Text::new();
    let (items, per_item) = match target {
        Target::Cpu => {
            let (bi, si) = input_grad.split("%item", t);
            let (zero, cn) = (input_grad.i64(0), input_grad.i64(c as i64));
            input_grad.each(&zero, &cn, |s, ci| taps(s, &bi, &si, ci));
            (b * t, c * k)
        }
        Target::Gpu => {
            // A run of steps per item, `g[si .. si + K]` sliding along in registers: tap
            // `kk` reads `window[K − 1 − kk]`.
            let s = &mut input_grad;
            let (run, runs) = Run::of_item(s, (t, c), STEPS);
            let (w, _) = channel_taps(s, k, None, &run.ci);
            let last = s.i64(t as i64 - 1);
            let read = |s: &mut Text, time: &str| {
                let clamped = s.int("minsi", time, &last);
                ops.dy_at(s, k, &run.bi, &clamped, &run.ci)
            };
            run.slide_over(s, k, 0, &read, |s, si, window| {
                let lo = last_tap(s, si, k, t);
                let mut acc = s.f32(0.0);
                for (kk, wv) in w.iter().enumerate() {
                    // Taps past T are masked; their document lookup reads step T − 1.
                    let back = s.add_c(si, k as i64 - 1 - kk as i64);
                    let back = s.int("minsi", &back, &last);
                    let term = s.fma(wv, &window[k - 1 - kk], &acc);
                    let tap = s.i64(kk as i64);
                    let reads = s.cmp("sge", &tap, &lo);
                    let term = s.select(&reads, &term, &acc, "f32");
                    acc = ops.within(s, k, (&run.bi, &back), &tap, term, &acc);
                }
                s.store(dx, &[&run.bi, si, &run.ci], &acc);
            });
            (b * runs * c, STEPS * k)
        }
    };
    // dw[c,k] = Σ_b Σ_t g[b,t,c]·x[b,t-(K-1)+k,c]; dbias[c] = Σ_b Σ_t g[b,t,c]: on the CPU an
    // item per channel; on the GPU spans of time first (`weight_partials`).
    let (weight_phases, partials) = match target {
        Target::Cpu => {
            let mut s = Text::new();
            let ci = "%item";
            let (zero, bn, tn) = (s.i64(0), s.i64(b as i64), s.i64(t as i64));
            let init: Vec<String> = (0..=k).map(|_| s.f32(0.0)).collect();
            let sums = s.fold(&zero, &bn, &init, |s, bi, acc| ops.tap_sums(s, k, bi, (&zero, &tn), ci, acc));
            store_weight_grads(&mut s, ci, &sums, ops.dbias, (dw, db));
            let phase =
                Phase { cooperative: None, what: "weight_grad", items: c, work_per_item: b * t * (k + 1), body: s };
            (vec![phase], vec![])
        }
        Target::Gpu => weight_partials(inputs, ops, (dw, db), first_workspace + workspace.len()),
    };
    workspace.extend(partials);
    let mut outputs = vec![x.clone(), w.clone()];
    if ops.dbias {
        outputs.push(vec![c]);
    }
    let shapes: Vec<&[usize]> = inputs.iter().map(Vec::as_slice).collect();
    let documents = if ops.positions.is_some() { "document_" } else { "" };
    let silu = if ops.silu { "_silu" } else { "" };
    let bias = if ops.dbias { "_bias" } else { "" };
    TemplateCode {
        name: name(&format!("{documents}conv1d{silu}_grad{bias}"), &shapes),
        inputs: inputs.to_vec(),
        outputs,
        workspace,
        workspace_storage: vec![],
        in_place: vec![],
        phases: phases
            .into_iter()
            .chain([Phase { cooperative: None, what: "input_grad", items, work_per_item: per_item, body: input_grad }])
            .chain(weight_phases)
            .collect(),
    }
}

/// Element `(bi, ti, ci)` of a flat `[B, T, C]` workspace.
fn flat(s: &mut Text, (t, c): (usize, usize), bi: &str, ti: &str, ci: &str) -> String {
    let row = s.mul_c(bi, t as i64);
    let row = s.add(&row, ti);
    let row = s.mul_c(&row, c as i64);
    s.add(&row, ci)
}

/// The phase writing `dy · silu'(pre-activation)` to workspace view `view`: on the CPU an
/// item per time step (channels innermost), on the GPU one per element.
fn gate_grad(ops: &GradOperands, (b, t, c, k): (usize, usize, usize, usize), view: usize, target: Target) -> Phase {
    let mut body = Text::new();
    let write = |s: &mut Text, bi: &str, ti: &str, ci: &str| {
        let g = ops.dy_at(s, k, bi, ti, ci);
        let at = flat(s, (t, c), bi, ti, ci);
        s.store(view, &[&at], &g);
    };
    let items = match target {
        Target::Cpu => {
            let (bi, ti) = body.split("%item", t);
            let (zero, cn) = (body.i64(0), body.i64(c as i64));
            body.each(&zero, &cn, |s, ci| write(s, &bi, &ti, ci));
            b * t
        }
        Target::Gpu => {
            let (run, runs) = Run::of_item(&mut body, (t, c), STEPS);
            let (w, start) = channel_taps(&mut body, k, ops.bias, &run.ci);
            run.slide(&mut body, k, |s, ti, window| {
                let lo = first_tap(s, &run.bi, ti, k, ops.positions);
                let pre = windowed(s, (&w, &start), window, &lo);
                let dy = s.load(ops.dy, &[&run.bi, ti, &run.ci]);
                let derivative = silu_slope(s, &pre);
                let g = s.fmul(&dy, &derivative);
                let at = flat(s, (t, c), &run.bi, ti, &run.ci);
                s.store(view, &[&at], &g);
            });
            b * runs * c
        }
    };
    Phase { cooperative: None, what: "gate_grad", items, work_per_item: b * t * c * (k + 2) / items, body }
}

/// Stores the `K` tap sums of channel `ci` as `dw[ci, ·]` and, with `dbias`, the last sum
/// as `dbias[ci]`.
fn store_weight_grads(s: &mut Text, ci: &str, sums: &[String], dbias: bool, (dw, db): (usize, usize)) {
    let k = sums.len() - 1;
    for (kk, v) in sums.iter().take(k).enumerate() {
        let tap = s.i64(kk as i64);
        s.store(dw, &[ci, &tap], v);
    }
    if dbias {
        s.store(db, &[ci], &sums[k]);
    }
}

/// Time steps a GPU thread sums the weight gradient over: [`weight_partials`] has an item
/// per span and channel, so that a few thousand channels still fill the GPU.
const SPAN: usize = 128;

/// The GPU's weight (and bias) gradient in two phases: per span of [`SPAN`] steps and
/// channel, the sums of its taps (and of `dy`) to the workspace `[spans, C, K + 1]`; then per
/// channel, the spans summed in order. `part` is the partials' workspace view.
fn weight_partials(
    inputs: &[Vec<usize>],
    ops: GradOperands,
    (dw, db): (usize, usize),
    part: usize,
) -> (Vec<Phase>, Vec<usize>) {
    let (x, w) = (&inputs[0], &inputs[1]);
    let (b, t, c, k) = (x[0], x[1], x[2], w[1]);
    let spans_per_row = t.div_ceil(SPAN);
    let spans = b * spans_per_row;
    let mut partial = Text::new();
    {
        let s = &mut partial;
        let (run, _) = Run::of_item(s, (t, c), SPAN);
        let init: Vec<String> = (0..=k).map(|_| s.f32(0.0)).collect();
        let sums = ops.tap_sums(s, k, &run.bi, (&run.t0, &run.hi), &run.ci, &init);
        // The item is `span · C + channel`, its partials' row.
        let row = s.mul_c("%item", k as i64 + 1);
        for (kk, v) in sums.iter().enumerate() {
            let at = s.add_c(&row, kk as i64);
            s.store(part, &[&at], v);
        }
    }
    let mut total = Text::new();
    {
        let s = &mut total;
        let ci = "%item";
        let init: Vec<String> = (0..=k).map(|_| s.f32(0.0)).collect();
        let (zero, count) = (s.i64(0), s.i64(spans as i64));
        let sums = s.fold(&zero, &count, &init, |s, span, acc| {
            let row = s.mul_c(span, c as i64);
            let row = s.add(&row, ci);
            let row = s.mul_c(&row, k as i64 + 1);
            (0..=k)
                .map(|kk| {
                    let at = s.add_c(&row, kk as i64);
                    let v = s.load(part, &[&at]);
                    s.fadd(&acc[kk], &v)
                })
                .collect()
        });
        store_weight_grads(s, ci, &sums, ops.dbias, (dw, db));
    }
    let phases = vec![
        Phase {
            cooperative: None,
            what: "weight_partials",
            items: spans * c,
            work_per_item: SPAN * (k + 1),
            body: partial,
        },
        Phase { cooperative: None, what: "weight_sums", items: c, work_per_item: spans * (k + 1), body: total },
    ];
    (phases, vec![spans * c * (k + 1)])
}

/// The first tap that reads at or after time 0 for output time `t`: `max(0, K-1-t)`; with
/// `positions` (a view), at or after the start of its document: `max(0, K-1-p)` for `t`'s
/// place `p ≤ t` in its document.
fn first_tap(s: &mut Text, b: &str, t: &str, k: usize, positions: Option<usize>) -> String {
    let back = match positions {
        Some(view) => place_in_document(s, view, b, t),
        None => t.to_string(),
    };
    let top = s.i64(k as i64 - 1);
    let lo = s.int("subi", &top, &back);
    let zero = s.i64(0);
    s.int("maxsi", &lo, &zero)
}

/// The first tap whose output time `s+(K-1)-k` is before `T`: `max(0, s+K-T)`.
fn last_tap(s: &mut Text, si: &str, k: usize, t: usize) -> String {
    let lo = s.add_c(si, k as i64 - t as i64);
    let zero = s.i64(0);
    s.int("maxsi", &lo, &zero)
}
