//! Causal flash attention and its gradient (`rewrite::kernels::flash_attention` is the
//! meaning): `softmax(causal(q kᵀ · scale)) v` over `q [B, H, T, D]`, `k, v [B, H/groups,
//! T, D]`, each key/value head serving `groups` consecutive query heads; with RoPE, q and k
//! arrive token-major (`[B, T, heads, D]`) and are rotated first.
//!
//! Nothing of size T×T is stored. The forward pass keeps a running maximum and sum per
//! query row (online softmax) and rescales its accumulator as keys arrive; it writes each
//! row's logsumexp beside the output. The backward pass (FlashAttention-2) reads the
//! forward's output and logsumexp and recomputes the scores: a phase over query rows
//! writes `dq` and each row's `Σ dO·O` (to the workspace), then a phase over key rows sums
//! `dk` and `dv` over the query rows at or after the key of every query head of its group.
//! So every output element has one writer, and every sum a fixed order.
//!
//! An item is a query (or key) row on both targets: on the CPU the head dimension is every
//! inner loop (unit stride, so LLVM can vectorise the row updates; the dot products keep
//! their order, so they stay scalar) and threads split the rows; on the GPU a thread takes
//! a row, and neighbouring threads read the same key rows. With RoPE a first phase writes
//! rotated, head-major copies of q and k to the workspace, so the trig runs once per
//! element, not once per (query, key) pair; gradients are rotated back (by minus the
//! angle) as they are stored.
//!
//! On tensor cores (`tiles`, bf16 operands on the GPU) an item is a tile of 64 rows for a
//! block of four warps instead, with the same phases and the same single writer per output.
//!
//! Packed rows (`documents`) read a last input, `positions [B, T]`: query `i` sees the keys
//! from its document's start, `i − place(i)`, to `i`, and RoPE rotates by the place. The
//! SIMT phases loop over exactly those keys (the key phase masks the queries of later
//! documents); the tile phases skip the tiles no row of theirs sees, from the first key of
//! every query tile (a first phase's workspace), and mask the rest.
//!
//! Decoding attends over a cache instead (`cache_attention`): the same online softmax for
//! each new query row, over the cached keys up to its position.

mod tiles;

pub use tiles::{backward_on_tensor_cores, forward_on_tensor_cores};

use super::super::emit::Target;
use super::super::math::Func;
use super::position::{place_in_document, runtime_position};
use super::text::Text;
use super::{name, Phase, TemplateCode};

/// What `KernelKind::FlashAttention` says beyond the shapes.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub scale: f64,
    pub groups: usize,
    pub rope: Option<f64>,
    /// Packed rows: a last input `positions [B, T]`.
    pub documents: bool,
}

/// The sizes: batch, query heads, key/value heads, time, head dimension.
struct Dims {
    b: usize,
    h: usize,
    kv: usize,
    t: usize,
    d: usize,
    params: Params,
}

impl Dims {
    /// Query rows: one per batch, head and time step.
    fn rows(&self) -> usize {
        self.b * self.h * self.t
    }

    fn new(q: &[usize], k: &[usize], params: Params) -> Dims {
        let (t, h, kv) = match params.rope {
            Some(_) => (q[1], q[2], k[2]),
            None => (q[2], q[1], k[1]),
        };
        Dims { b: q[0], h, kv, t, d: q[3], params }
    }

    /// View `v` of the layout without positions (the constants below): with documents the
    /// positions input comes before the outputs, so every view from there on is one later.
    fn view(&self, v: usize) -> usize {
        v + usize::from(self.params.documents && v >= POSITIONS)
    }

    /// The gradient of the output, `[B, H, T, D]`.
    fn dy(&self) -> Rows {
        Rows::HeadMajor(self.view(DY))
    }

    /// The logsumexp of query row `r` (natural log) in view `view`, `[B, H, T, 1]`.
    fn lse(&self, s: &mut Text, view: usize, r: Row) -> String {
        let zero = s.i64(0);
        s.load(self.view(view), &[r.b, r.head, r.t, &zero])
    }

    /// Layout of q and k (and of their gradients, views `view`) as the kernel receives them.
    fn qk(&self, view: usize) -> Rows {
        let view = self.view(view);
        match self.params.rope {
            Some(_) => Rows::TokenMajor(view),
            None => Rows::HeadMajor(view),
        }
    }

    /// Where q and k are read by the attention phases: with RoPE their rotated copies in
    /// workspace views `at` and `at + 1`, else the inputs.
    fn rotated(&self, at: usize) -> (Rows, Rows) {
        let at = self.view(at);
        match self.params.rope {
            Some(_) => (Rows::Flat { view: at, heads: self.h }, Rows::Flat { view: at + 1, heads: self.kv }),
            None => (Rows::HeadMajor(0), Rows::HeadMajor(1)),
        }
    }

    /// The first key query `t` of row `b` sees: its document's start with documents, else 0.
    fn first_key(&self, s: &mut Text, b: &str, t: &str) -> String {
        match self.params.documents {
            true => {
                let place = place_in_document(s, POSITIONS, b, t);
                s.int("subi", t, &place)
            }
            false => s.i64(0),
        }
    }

    /// The position RoPE rotates token `t` of row `b` by: its place in its document with
    /// documents, else `t`.
    fn angle_step(&self, s: &mut Text, b: &str, t: &str) -> String {
        match self.params.documents {
            true => place_in_document(s, POSITIONS, b, t),
            false => t.to_string(),
        }
    }

    /// The rotated copies of q and k, when there is RoPE.
    fn rotated_sizes(&self) -> Vec<usize> {
        match self.params.rope {
            Some(_) => vec![self.b * self.h * self.t * self.d, self.b * self.kv * self.t * self.d],
            None => vec![],
        }
    }

    /// A name for these shapes and parameters (the layouts and constants differ with them).
    fn name(&self, template: &str, inputs: &[Vec<usize>]) -> String {
        let p = self.params;
        let rope = p.rope.map_or(String::new(), |theta| format!("_rope{:x}", theta.to_bits()));
        let shapes: Vec<&[usize]> = inputs.iter().map(Vec::as_slice).collect();
        let template = if p.documents { format!("document_{template}") } else { template.to_string() };
        name(&format!("{template}_s{:x}{rope}", (p.scale as f32).to_bits()), &shapes)
    }
}

/// Where the rows of a `[B, heads, T, D]` tensor are read or written.
#[derive(Clone, Copy)]
enum Rows {
    /// View `k`, indexed `[b, head, t, d]`.
    HeadMajor(usize),
    /// View `k`, indexed `[b, t, head, d]`.
    TokenMajor(usize),
    /// A workspace view holding `heads` heads contiguously, head-major.
    Flat { view: usize, heads: usize },
}

/// One row: batch, head and time indices.
#[derive(Clone, Copy)]
struct Row<'a> {
    b: &'a str,
    head: &'a str,
    t: &'a str,
}

impl Row<'_> {
    /// `(b·heads + head)·T + t`: the row's place among `heads` heads of `t` steps.
    fn index(self, s: &mut Text, heads: usize, t: usize) -> String {
        let bh = s.mul_c(self.b, heads as i64);
        let bh = s.add(&bh, self.head);
        let bht = s.mul_c(&bh, t as i64);
        s.add(&bht, self.t)
    }
}

impl Rows {
    fn place(self, s: &mut Text, dims: &Dims, r: Row, d: &str) -> (usize, Vec<String>) {
        match self {
            Rows::HeadMajor(k) => (k, [r.b, r.head, r.t, d].map(String::from).to_vec()),
            Rows::TokenMajor(k) => (k, [r.b, r.t, r.head, d].map(String::from).to_vec()),
            Rows::Flat { view, heads } => {
                let row = r.index(s, heads, dims.t);
                let at = s.mul_c(&row, dims.d as i64);
                (view, vec![s.add(&at, d)])
            }
        }
    }

    fn load(self, s: &mut Text, dims: &Dims, r: Row, d: &str) -> String {
        let (k, index) = self.place(s, dims, r, d);
        s.load(k, &index.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Copies the eight elements from `d` of row `r` to the bf16 shared memory at `dst`.
    fn copy8(self, s: &mut Text, dims: &Dims, r: Row, d: &str, dst: &str) {
        let (k, index) = self.place(s, dims, r, d);
        s.copy8(k, &index.iter().map(String::as_str).collect::<Vec<_>>(), dst);
    }

    /// Whether the rows can be copied eight elements at a time ([`Text::copies_by_eight`]).
    fn copies_by_eight(self, s: &mut Text) -> String {
        match self {
            Rows::HeadMajor(k) | Rows::TokenMajor(k) => s.copies_by_eight(k, 4),
            Rows::Flat { view, .. } => s.copies_by_eight(view, 1),
        }
    }

    fn store(self, s: &mut Text, dims: &Dims, r: Row, d: &str, value: &str) {
        let (k, index) = self.place(s, dims, r, d);
        s.store(k, &index.iter().map(String::as_str).collect::<Vec<_>>(), value);
    }
}

/// The positions input of packed rows, after q, k, v; the views below are numbered without
/// it ([`Dims::view`] places them).
const POSITIONS: usize = 3;

/// The forward template's views: inputs q, k, v; the output and each query row's
/// logsumexp `[B, H, T, 1]`; the rotated q and k.
const OUT: usize = 3;
const OUT_LSE: usize = 4;
const FORWARD_ROTATED: usize = 5;

/// The gradient template's views: inputs q, k, v, dy and the forward's output and
/// logsumexp; outputs dq, dk, dv; workspace `Σ dO·O` per query row, then the rotated q and
/// k.
const DY: usize = 3;
const SAVED_OUT: usize = 4;
const SAVED_LSE: usize = 5;
const DQ: usize = 6;
const DK: usize = 7;
const DV: usize = 8;
const DELTA: usize = 9;
const BACKWARD_ROTATED: usize = 10;

/// Value rows (never rotated).
const V: Rows = Rows::HeadMajor(2);

/// The forward template for inputs `q`, `k`, `v`: output `[B, H, T, D]`.
pub fn forward(inputs: &[Vec<usize>], params: Params, target: Target) -> TemplateCode {
    let dims = Dims::new(&inputs[0], &inputs[1], params);
    let mut phases = rotation(&dims, FORWARD_ROTATED, target);
    let (q, k) = dims.rotated(FORWARD_ROTATED);
    let mut s = Text::new();
    let (b, h, i) = query_row(&mut s, &dims);
    let hk = kv_head(&mut s, &dims, &h);
    let (this, keys) = (Row { b: &b, head: &h, t: &i }, Row { b: &b, head: &hk, t: &i });
    let scale = s.f32(params.scale as f32);
    let qa = read_row(&mut s, &dims, q, this, Some(&scale));
    let o = s.array(dims.d);
    let first = dims.first_key(&mut s, &b, &i);
    let (m, l) = online_softmax(&mut s, &dims, &qa, (k, V), (keys, &first), &o);
    let one = s.f32(1.0);
    let inv = s.fdiv(&one, &l);
    store_row(&mut s, &dims, Rows::HeadMajor(dims.view(OUT)), this, &o, &inv, false);
    let log_l = s.call(Func::Log, &l);
    let lse = s.fadd(&m, &log_l);
    let zero = s.i64(0);
    s.store(dims.view(OUT_LSE), &[&b, &h, &i, &zero], &lse);
    phases.push(Phase {
        cooperative: None,
        what: "attend",
        items: dims.rows(),
        work_per_item: dims.t * dims.d,
        body: s,
    });
    forward_code(&dims, "flash_attention", inputs, phases)
}

/// A forward template's code: output `[B, H, T, D]` and the rows' logsumexp `[B, H, T, 1]`,
/// the rotated copies as workspace.
fn forward_code(dims: &Dims, template: &str, inputs: &[Vec<usize>], phases: Vec<Phase>) -> TemplateCode {
    TemplateCode {
        name: dims.name(template, inputs),
        inputs: inputs.to_vec(),
        outputs: vec![vec![dims.b, dims.h, dims.t, dims.d], vec![dims.b, dims.h, dims.t, 1]],
        workspace: dims.rotated_sizes(),
        workspace_storage: vec![],
        in_place: vec![],
        phases,
    }
}

/// `cache_attention` (decode) for inputs `q [B, H, T, D]`, caches `k, v [B, S, KV, D]`
/// (token-major, so a step appends rows) and the position `pos []`: query `t` sees cached
/// positions `0 ..= pos + t`, at most the cache's `S` (`ops::cache_attention`). An item is
/// a query row, with the forward pass's online softmax.
pub fn cached(inputs: &[Vec<usize>], scale: f64) -> TemplateCode {
    let (q, k) = (&inputs[0], &inputs[1]);
    let params = Params { scale, groups: q[1] / k[2].max(1), rope: None, documents: false };
    let dims = Dims { b: q[0], h: q[1], kv: k[2], t: q[2], d: q[3], params };
    let mut s = Text::new();
    let (b, h, i) = query_row(&mut s, &dims);
    let hk = kv_head(&mut s, &dims, &h);
    let pos = runtime_position(&mut s, 3);
    let at = s.add(&pos, &i);
    let last = s.i64(k[1] as i64 - 1);
    let newest = s.int("minsi", &at, &last);
    let (this, keys) = (Row { b: &b, head: &h, t: &i }, Row { b: &b, head: &hk, t: &newest });
    let scale = s.f32(scale as f32);
    let qa = read_row(&mut s, &dims, Rows::HeadMajor(0), this, Some(&scale));
    let o = s.array(dims.d);
    let cache = (Rows::TokenMajor(1), Rows::TokenMajor(2));
    let zero = s.i64(0);
    let (_, l) = online_softmax(&mut s, &dims, &qa, cache, (keys, &zero), &o);
    let one = s.f32(1.0);
    let inv = s.fdiv(&one, &l);
    store_row(&mut s, &dims, Rows::HeadMajor(4), this, &o, &inv, false);
    TemplateCode {
        name: dims.name("cache_attention", inputs),
        inputs: inputs.to_vec(),
        outputs: vec![q.clone()],
        workspace: vec![],
        workspace_storage: vec![],
        in_place: vec![],
        phases: vec![Phase {
            cooperative: None,
            what: "attend",
            items: dims.rows(),
            work_per_item: k[1] * dims.d,
            body: s,
        }],
    }
}

/// The gradient template for inputs `q`, `k`, `v`, `dy` and the forward's output and
/// logsumexp: outputs `dq`, `dk`, `dv` in the layouts of `q`, `k`, `v`.
pub fn backward(inputs: &[Vec<usize>], params: Params, target: Target) -> TemplateCode {
    let dims = Dims::new(&inputs[0], &inputs[1], params);
    let mut phases = rotation(&dims, BACKWARD_ROTATED, target);
    phases.push(query_grad(&dims));
    phases.push(key_value_grad(&dims));
    backward_code(&dims, "flash_attention_grad", inputs, phases, vec![])
}

/// A gradient template's code: `dq`, `dk`, `dv` in the layouts of `q`, `k`, `v`; the rows'
/// `Σ dO·O`, the rotated copies and `more` as workspace.
fn backward_code(
    dims: &Dims,
    template: &str,
    inputs: &[Vec<usize>],
    phases: Vec<Phase>,
    more: Vec<usize>,
) -> TemplateCode {
    let mut workspace = vec![dims.rows()];
    workspace.extend(dims.rotated_sizes());
    workspace.extend(more);
    TemplateCode {
        name: dims.name(template, inputs),
        inputs: inputs.to_vec(),
        outputs: inputs[..3].to_vec(),
        workspace,
        workspace_storage: vec![],
        in_place: vec![],
        phases,
    }
}

/// Per query row: `Σ dO·O` from the forward's output (to the workspace, at the item's
/// index), then `dq_i = scale·Σ_j ds_ij k_j` with the forward's logsumexp.
fn query_grad(dims: &Dims) -> Phase {
    let (q, k) = dims.rotated(BACKWARD_ROTATED);
    let mut body = Text::new();
    let s = &mut body;
    let (b, h, i) = query_row(s, dims);
    let hk = kv_head(s, dims, &h);
    let (this, keys) = (Row { b: &b, head: &h, t: &i }, Row { b: &b, head: &hk, t: &i });
    let scale = s.f32(dims.params.scale as f32);
    let qa = read_row(s, dims, q, this, Some(&scale));
    let first = dims.first_key(s, &b, &i);
    let lse = dims.lse(s, SAVED_LSE, this);
    let g = read_row(s, dims, dims.dy(), this, None);
    let out = Rows::HeadMajor(dims.view(SAVED_OUT));
    let delta = sum_over_d(s, dims, |s, d| (s.get(&g, d), out.load(s, dims, this, d)));
    s.store(dims.view(DELTA), &["%item"], &delta);
    let grad = s.array(dims.d);
    fill(s, dims, &grad);
    let hi = s.add_c(&i, 1);
    s.each(&first, &hi, |s, j| {
        let key = Row { t: j, ..keys };
        let score = sum_over_d(s, dims, |s, d| (s.get(&qa, d), k.load(s, dims, key, d)));
        let p = probability(s, &score, &lse);
        let dp = sum_over_d(s, dims, |s, d| (s.get(&g, d), V.load(s, dims, key, d)));
        let ds = score_grad(s, &p, &dp, &delta);
        accumulate(s, dims, &grad, &ds, |s, d| k.load(s, dims, key, d));
    });
    store_row(s, dims, dims.qk(DQ), this, &grad, &scale, true);
    Phase { cooperative: None, what: "query_grad", items: dims.rows(), work_per_item: 2 * dims.t * dims.d, body }
}

/// Per key row: `dv_j = Σ p_ij dO_i` and `dk_j = scale·Σ ds_ij q_i` over the rows `i ≥ j`
/// of every query head of the key's group, in that order (with documents, `p_ij = 0` for
/// the rows of later documents).
fn key_value_grad(dims: &Dims) -> Phase {
    let (q, k) = dims.rotated(BACKWARD_ROTATED);
    let groups = dims.params.groups;
    let mut body = Text::new();
    let s = &mut body;
    let (bk, j) = s.split("%item", dims.t);
    let (b, hk) = s.split(&bk, dims.kv);
    let this = Row { b: &b, head: &hk, t: &j };
    let scale = s.f32(dims.params.scale as f32);
    let ka = read_row(s, dims, k, this, Some(&scale));
    let va = read_row(s, dims, V, this, None);
    let (grad_k, grad_v) = (s.array(dims.d), s.array(dims.d));
    fill(s, dims, &grad_k);
    fill(s, dims, &grad_v);
    let (zero, group, tn) = (s.i64(0), s.i64(groups as i64), s.i64(dims.t as i64));
    s.each(&zero, &group, |s, gi| {
        let first = s.mul_c(&hk, groups as i64);
        let h = s.add(&first, gi);
        s.each(&j, &tn, |s, i| {
            let query = Row { b: &b, head: &h, t: i };
            let score = sum_over_d(s, dims, |s, d| (q.load(s, dims, query, d), s.get(&ka, d)));
            let at = row_index(s, dims, query);
            let (lse, delta) = (dims.lse(s, SAVED_LSE, query), s.load(dims.view(DELTA), &[&at]));
            let p = probability(s, &score, &lse);
            let p = match dims.params.documents {
                true => {
                    let first = dims.first_key(s, &b, i);
                    let seen = s.cmp("sle", &first, &j);
                    let none = s.f32(0.0);
                    s.select(&seen, &p, &none, "f32")
                }
                false => p,
            };
            let dy = dims.dy();
            let dp = sum_over_d(s, dims, |s, d| (dy.load(s, dims, query, d), s.get(&va, d)));
            let ds = score_grad(s, &p, &dp, &delta);
            accumulate(s, dims, &grad_v, &p, |s, d| dy.load(s, dims, query, d));
            accumulate(s, dims, &grad_k, &ds, |s, d| q.load(s, dims, query, d));
        });
    });
    store_row(s, dims, dims.qk(DK), this, &grad_k, &scale, true);
    let one = s.f32(1.0);
    store_row(s, dims, Rows::HeadMajor(dims.view(DV)), this, &grad_v, &one, false);
    let items = dims.b * dims.kv * dims.t;
    Phase { cooperative: None, what: "key_value_grad", items, work_per_item: 2 * groups * dims.t * dims.d, body }
}

/// The index of query row `r` among all rows, as the query phases number their items.
fn row_index(s: &mut Text, dims: &Dims, r: Row) -> String {
    r.index(s, dims.h, dims.t)
}

/// `(b, h, i)` of the query row `%item`.
fn query_row(s: &mut Text, dims: &Dims) -> (String, String, String) {
    let (bh, i) = s.split("%item", dims.t);
    let (b, h) = s.split(&bh, dims.h);
    (b, h, i)
}

/// The key/value head serving query head `h`.
fn kv_head(s: &mut Text, dims: &Dims, h: &str) -> String {
    let groups = s.i64(dims.params.groups as i64);
    s.int("divui", h, &groups)
}

/// The running maximum `m` and sum `l` of `exp(q·k_j − m)` over keys `first ≤ j ≤ i` of
/// `key_row`'s head, and `o = Σ_j exp(q·k_j − m) v_j` left in the array `o`, for the
/// pre-scaled query row in the array `qa`. The accumulator is rescaled by `exp(m_old −
/// m_new)` whenever the maximum grows, so no row of scores is kept.
fn online_softmax(
    s: &mut Text,
    dims: &Dims,
    qa: &str,
    (k, v): (Rows, Rows),
    (key_row, first): (Row, &str),
    o: &str,
) -> (String, String) {
    fill(s, dims, o);
    let (no_max, no_sum) = (s.f32(f32::NEG_INFINITY), s.f32(0.0));
    let hi = s.add_c(key_row.t, 1);
    let ml = s.fold(first, &hi, &[no_max, no_sum], |s, j, c| {
        let key = Row { t: j, ..key_row };
        let score = sum_over_d(s, dims, |s, d| (s.get(qa, d), k.load(s, dims, key, d)));
        let m = s.float("maximumf", &c[0], &score);
        let shift = s.fsub(&c[0], &m);
        let rescale = s.call(Func::Exp, &shift);
        let p = probability(s, &score, &m);
        let l = s.fma(&c[1], &rescale, &p);
        let (zero, dn) = (s.i64(0), s.i64(dims.d as i64));
        s.each(&zero, &dn, |s, d| {
            let old = s.get(o, d);
            let kept = s.fmul(&old, &rescale);
            let vd = v.load(s, dims, key, d);
            let new = s.fma(&p, &vd, &kept);
            s.set(o, d, &new);
        });
        vec![m, l]
    });
    (ml[0].clone(), ml[1].clone())
}

/// `exp(score − offset)`.
fn probability(s: &mut Text, score: &str, offset: &str) -> String {
    let x = s.fsub(score, offset);
    s.call(Func::Exp, &x)
}

/// The softmax's gradient at one score: `p·(dp − Σ dO·O)`.
fn score_grad(s: &mut Text, p: &str, dp: &str, delta: &str) -> String {
    let centred = s.fsub(dp, delta);
    s.fmul(p, &centred)
}

/// `Σ_d x·y` over the head dimension, for the factors `term(d)` gives, vectorised.
fn sum_over_d(s: &mut Text, dims: &Dims, term: impl Fn(&mut Text, &str) -> (String, String)) -> String {
    let (zero, dn, acc) = (s.i64(0), s.i64(dims.d as i64), s.f32(0.0));
    s.fold(&zero, &dn, &[acc], |s, d, acc| {
        let (x, y) = term(s, d);
        vec![s.sum_step(&acc[0], &x, &y)]
    })
    .remove(0)
}

/// `acc[d] += c · x(d)` over the head dimension.
fn accumulate(s: &mut Text, dims: &Dims, acc: &str, c: &str, x: impl Fn(&mut Text, &str) -> String) {
    let (zero, dn) = (s.i64(0), s.i64(dims.d as i64));
    s.each(&zero, &dn, |s, d| {
        let xd = x(s, d);
        let old = s.get(acc, d);
        let new = s.fma(c, &xd, &old);
        s.set(acc, d, &new);
    });
}

/// Zeroes a row array.
fn fill(s: &mut Text, dims: &Dims, array: &str) {
    let (zero, dn, z) = (s.i64(0), s.i64(dims.d as i64), s.f32(0.0));
    s.each(&zero, &dn, |s, d| s.set(array, d, &z));
}

/// A stack array holding a row, times `factor` if given.
fn read_row(s: &mut Text, dims: &Dims, rows: Rows, r: Row, factor: Option<&str>) -> String {
    let a = s.array(dims.d);
    let (zero, dn) = (s.i64(0), s.i64(dims.d as i64));
    s.each(&zero, &dn, |s, d| {
        let x = rows.load(s, dims, r, d);
        let x = match factor {
            Some(f) => s.fmul(&x, f),
            None => x,
        };
        s.set(&a, d, &x);
    });
    a
}

/// Stores a row array times `factor`; a gradient of a rotated row (`unrotate`, with RoPE)
/// is rotated back by minus the angle, the transpose of the rotation.
fn store_row(s: &mut Text, dims: &Dims, rows: Rows, r: Row, array: &str, factor: &str, unrotate: bool) {
    let zero = s.i64(0);
    match dims.params.rope.filter(|_| unrotate) {
        None => {
            let dn = s.i64(dims.d as i64);
            s.each(&zero, &dn, |s, d| {
                let x = s.get(array, d);
                let y = s.fmul(&x, factor);
                rows.store(s, dims, r, d, &y);
            });
        }
        Some(theta) => {
            let freq = frequencies(s, dims.d, theta);
            let half = dims.d / 2;
            let hn = s.i64(half as i64);
            let at = dims.angle_step(s, r.b, r.t);
            s.each(&zero, &hn, |s, p| {
                let (cos, sin) = trig(s, &freq, &at, p);
                let minus_sin = s.fneg(&sin);
                let other = s.add_c(p, half as i64);
                let (x1, x2) = (s.get(array, p), s.get(array, &other));
                let (x1, x2) = (s.fmul(&x1, factor), s.fmul(&x2, factor));
                let (y1, y2) = rotate(s, (&x1, &x2), &cos, &minus_sin);
                rows.store(s, dims, r, p, &y1);
                rows.store(s, dims, r, &other, &y2);
            });
        }
    }
}

/// With RoPE, the phase writing rotated head-major copies of q (view 0) and k (view 1) to
/// workspace views `at` and `at + 1`. On the CPU an item is a time step of a sequence: its
/// angles' cosines and sines once into arrays, then every head's pairs, unit stride. On
/// the GPU an item is one pair index of a time step, so neighbouring threads touch
/// neighbouring elements, and it rotates that pair of every head.
fn rotation(dims: &Dims, at: usize, target: Target) -> Vec<Phase> {
    let (q, k) = dims.rotated(at);
    rotation_phase(dims, [(Rows::TokenMajor(0), q), (Rows::TokenMajor(1), k)], false, target)
}

/// With RoPE, the phase rotating back (by minus the angle) gradients held head-major in
/// workspace views `dq` and `dk` into the outputs `dq` and `dk` (token-major).
fn unrotation(dims: &Dims, (dq, dk): (usize, usize), target: Target) -> Vec<Phase> {
    let (dq, dk) = (dims.view(dq), dims.view(dk));
    let from = (Rows::Flat { view: dq, heads: dims.h }, Rows::Flat { view: dk, heads: dims.kv });
    let to = (dims.qk(DQ), dims.qk(DK));
    rotation_phase(dims, [(from.0, to.0), (from.1, to.1)], true, target)
}

/// The phase rotating the rows of q's heads and then of k's, `[from, to]` for each, by the
/// angle (or by minus it, `inverse`).
fn rotation_phase(dims: &Dims, views: [(Rows, Rows); 2], inverse: bool, target: Target) -> Vec<Phase> {
    let Some(theta) = dims.params.rope else { return vec![] };
    let half = dims.d / 2;
    let heads = dims.h + dims.kv;
    let mut s = Text::new();
    let freq = frequencies(&mut s, dims.d, theta);
    let pair = |s: &mut Text, b: &str, t: &str, p: &str, cos: &str, sin: &str| {
        let sin = if inverse { s.fneg(sin) } else { sin.to_string() };
        for ((from, to), n) in views.into_iter().zip([dims.h, dims.kv]) {
            let (zero, hn) = (s.i64(0), s.i64(n as i64));
            s.each(&zero, &hn, |s, head| {
                let r = Row { b, head, t };
                let other = s.add_c(p, half as i64);
                let (x1, x2) = (from.load(s, dims, r, p), from.load(s, dims, r, &other));
                let (y1, y2) = rotate(s, (&x1, &x2), cos, &sin);
                to.store(s, dims, r, p, &y1);
                to.store(s, dims, r, &other, &y2);
            });
        }
    };
    let (items, per_item) = match target {
        Target::Cpu => {
            let (b, t) = s.split("%item", dims.t);
            let (cosines, sines) = (s.array(half), s.array(half));
            let (zero, hn) = (s.i64(0), s.i64(half as i64));
            let at = dims.angle_step(&mut s, &b, &t);
            s.each(&zero, &hn, |s, p| {
                let (cos, sin) = trig(s, &freq, &at, p);
                s.set(&cosines, p, &cos);
                s.set(&sines, p, &sin);
            });
            s.each(&zero, &hn, |s, p| {
                let (cos, sin) = (s.get(&cosines, p), s.get(&sines, p));
                pair(s, &b, &t, p, &cos, &sin);
            });
            (dims.b * dims.t, heads * dims.d)
        }
        Target::Gpu => {
            let (bt, p) = s.split("%item", half);
            let (b, t) = s.split(&bt, dims.t);
            let at = dims.angle_step(&mut s, &b, &t);
            let (cos, sin) = trig(&mut s, &freq, &at, &p);
            pair(&mut s, &b, &t, &p, &cos, &sin);
            (dims.b * dims.t * half, heads * 2)
        }
    };
    let what = if inverse { "unrotate" } else { "rotate" };
    vec![Phase { cooperative: None, what, items, work_per_item: per_item, body: s }]
}

/// The rotation frequencies `theta^(−2p/D)` of the pairs `(p, p + D/2)` (`ops::rope`'s
/// convention), computed here in f64 and rounded once.
pub(super) fn frequencies(s: &mut Text, d: usize, theta: f64) -> String {
    let freq: Vec<f32> = (0..d / 2).map(|p| theta.powf(-(2.0 * p as f64) / d as f64) as f32).collect();
    s.table(&freq)
}

/// The cosine and sine of pair `p`'s angle at time `t`, `t · freq[p]`.
pub(super) fn trig(s: &mut Text, freq: &str, t: &str, p: &str) -> (String, String) {
    let tf = s.sitofp(t);
    let f = s.get(freq, p);
    let angle = s.fmul(&tf, &f);
    (s.call(Func::Cos, &angle), s.call(Func::Sin, &angle))
}

/// The pair `(x1, x2)` rotated by the angle of `cos`, `sin`.
pub(super) fn rotate(s: &mut Text, (x1, x2): (&str, &str), cos: &str, sin: &str) -> (String, String) {
    let (a, b) = (s.fmul(x1, cos), s.fmul(x2, sin));
    let (c, d) = (s.fmul(x2, cos), s.fmul(x1, sin));
    (s.fsub(&a, &b), s.fadd(&c, &d))
}
