//! The SSD scan's gradient on tensor cores, in the chunked form of [`super::chunks`]: the
//! states entering every tile and the adjoints `G` of the states leaving them come from
//! [`super::recurrences`], and the rest is parallel over tiles of one head's channel slice:
//!
//! - `dx̃_j = Σ_{i≥j} (C_i·B_j)·e^{l_i−l_j}·dy_i + e^{l_last−l_j}·B_j·G` (`x̃ = dt·x`);
//! - `dB_j = dt_j·(Σ_{i≥j} e^{l_i−l_j}·(dy_i·x_j)·C_i + e^{l_last−l_j}·x_j·Gᵀ)`;
//! - `dC_i = Σ_{j≤i} e^{l_i−l_j}·dt_j·(dy_i·x_j)·B_j + e^{l_i}·dy_i·H₀ᵀ`;
//! - `G ← e^{l_last}·G + Σ_i e^{l_i}·C_iᵀ·dy_i`, the adjoint of the state entering the tile;
//! - the gradient of the cumulative decay, `dl_i`: `+w_ij` for `i` and `−w_ij` for `j` for
//!   every pair seen (`w_ij = (C_i·B_j)·e^{l_i−l_j}·dt_j·(dy_i·x_j)`, `i > j`), `+dy_i·y_i`
//!   of the entering state's part of `y`, `−x̃_j·dx̃_j` of the part into the last state and
//!   their sum and `⟨G, e^{l_last}·H₀⟩` for the last step; `D_k = Σ_{i≥k} dl_i` within the
//!   tile is the gradient of `dt_k·a`, so `ddt_k = x_k·dx̃_k + a·D_k` and `da = Σ dt_k·D_k`.
//!
//! The sums over a group's runs of head slices (`dB`, `dC`), over a head's channel slices
//! (`ddt`) and over the batch (`da`) are later phases whose items own their outputs and sum
//! in a fixed order; every output has one writer.
//!
//! `bench/ssd_debug.py` checks the workspace phase by phase against the same math in numpy.

use super::super::tensor_core::{
    accumulate, barrier, column, each_of_block, exp2, lane_rows, product, shuffle_sum, times_transposed, zeros, Acc,
    Floats, Lane, Tile, THREADS,
};
use super::super::text::Text;
use super::super::{name, Cooperative, Phase, TemplateCode};
use super::chunks::{
    entering_decay, fits, seen, stage_rows, staged, state_index, step, store_rows, tile_decay, weigh_pairs, Layout,
    Slice, L, SLICE,
};
use super::recurrences::{run_length, runs, state_scan, tile_index, tile_parts, Recurrences, Run};
use super::{Dims, A, DY, X};

/// The gradient's outputs and workspace, counted from its first output (`Dims::at`).
const DX: usize = 0;
const DDT: usize = 1;
const DA: usize = 2;
const DB: usize = 3;
const DC: usize = 4;
/// The state entering every tile, `[B, H, tiles, P, N]` (first each tile's `ΔH`, one slot
/// on).
const STATES: usize = 5;
/// Per run of head slices: `dB` and `dC`, `[B, T, G·runs, N]`; per head and slice: `x·dx̃`
/// and `D`, `[B, T, H·slices]`, and per tile `Σ dt·D`, `[B, H·slices, tiles]`.
const DB_PART: usize = 6;
const DC_PART: usize = 7;
const XDX_PART: usize = 8;
const D_PART: usize = 9;
const DA_PART: usize = 10;
/// The adjoint `G` of the state leaving every tile, `[B, H, tiles, P, N]` (first each
/// tile's `ΔG`, one slot back).
const ADJOINTS: usize = 11;
/// `x̃·dx̃` of `dx̃`'s part from the state leaving each tile, and the pairs' part of `dl`,
/// `[B, T, H·slices]`.
const LEAVING: usize = 12;
const PAIRS_DL: usize = 13;
/// Each tile's decay `e^{l_last}`, `[B, H·slices, tiles]`.
const DECAYS: usize = 14;

/// Columns of `dB` and `dC` a warp accumulates at a time (16 registers).
const COLUMNS: usize = 32;

/// The largest state size the pair phase takes: at 256 the tile products spill.
const MAX_STATE: usize = 128;

/// The gradient template on tensor cores for inputs `x, dt, a, b, c, dy` (and, with
/// `documents`, `positions`): outputs `dx, ddt, da, db, dc`; `None` where the forward's
/// [`fits`] does not hold or the state is larger than [`MAX_STATE`].
pub fn backward_on_tensor_cores(inputs: &[Vec<usize>], documents: bool) -> Option<TemplateCode> {
    let d = Dims::of(inputs, documents);
    if !fits(&d) || d.n > MAX_STATE {
        return None;
    }
    let tiles = d.t.div_ceil(L);
    let slices = d.p / SLICE;
    let per_head = d.b * d.t * d.h * slices;
    let per_run = d.b * d.t * d.g * runs(&d);
    let states = d.b * d.h * tiles * d.p * d.n;
    let recurrences = Recurrences { states: d.at(STATES), adjoints: d.at(ADJOINTS), decays: d.at(DECAYS) };
    let shapes: Vec<&[usize]> = inputs.iter().map(Vec::as_slice).collect();
    let template = if documents { "document_ssd_scan_grad_mma" } else { "ssd_scan_grad_mma" };
    Some(TemplateCode {
        name: name(template, &shapes),
        inputs: inputs.to_vec(),
        outputs: inputs[..5].to_vec(),
        workspace: vec![
            states,
            per_run * d.n,
            per_run * d.n,
            per_head,
            per_head,
            d.b * d.h * slices * tiles,
            states,
            per_head,
            per_head,
            d.b * d.h * slices * tiles,
        ],
        workspace_storage: vec![],
        in_place: vec![],
        phases: vec![
            tile_parts(&d, recurrences),
            state_scan(&d, recurrences),
            pair_tiles(&d),
            entering_tiles(&d),
            group_sums(&d),
            step_sums(&d),
            decay_sums(&d),
        ],
    })
}

/// Shared memory of the tile phases: the forward's tiles, `dy`, a state transposed (`[SLICE,
/// N]`: `Gᵀ` in the pair phase beside `G` in the layout's `h`, `H₀ᵀ` in the entering
/// phase), per-step sums, and the run's sums of `dB` or `dC` (`[L, N]` f32, rows
/// [`Adjoint::pitch`] apart).
struct Adjoint {
    lay: Layout,
    dy: Tile,
    state_t: Tile,
    /// Per step: `Σ_{i>j} w_ij` (in the entering phase, the pairs' `dl`), `dy·y` of the
    /// entering state, `x̃·dx̃` into the last state, and `dl`.
    neg: Floats,
    entering: Floats,
    leaving: Floats,
    dl: Floats,
    /// Each warp's column sums `Σ_{j<i} w_ij`, `[4, L]`; in the entering phase, first each
    /// warp's part of `⟨G, H₀⟩`.
    pos: Floats,
    sums: Floats,
    pitch: usize,
}

impl Adjoint {
    fn new(n: usize) -> Adjoint {
        let lay = Layout::new(n);
        let mut at = lay.bytes();
        let mut tile = |rows, cols| {
            let t = Tile::new(at, rows, cols);
            at += t.bytes();
            t
        };
        let (dy, state_t) = (tile(L, SLICE), tile(SLICE, n));
        let mut floats = |len| {
            let f = Floats { at, len };
            at += f.bytes();
            f
        };
        let (neg, entering, leaving, dl) = (floats(L), floats(L), floats(L), floats(L));
        let pos = floats(4 * L);
        // Eight floats of padding: the eight rows a warp's accumulators touch at once share
        // banks two by two, not all eight.
        let pitch = n + 8;
        let sums = floats(L * pitch);
        Adjoint { lay, dy, state_t, neg, entering, leaving, dl, pos, sums, pitch }
    }

    fn bytes(&self) -> usize {
        self.sums.at + self.sums.bytes()
    }

    /// Sets the run's sums to zero, the block's threads sharing the elements.
    fn zero_sums(&self, s: &mut Text) {
        each_of_block(s, self.sums.len, |s, e| {
            let zero = s.f32(0.0);
            self.sums.set(s, e, &zero);
        });
    }

    /// Adds a warp's rows (`rows`, tile rows) of `acc`, columns from `col0`, to the run's
    /// sums: each element is one thread's, so no other thread touches it in the run.
    fn add_to_sums(&self, s: &mut Text, lane: &Lane, rows: &[String; 2], (acc, col0): (&[Acc], usize)) {
        let zero = s.i64(0);
        for (r, row) in rows.iter().enumerate() {
            let base = s.mul_c(row, self.pitch as i64);
            for (j, a) in acc.iter().enumerate() {
                for e in [2 * r, 2 * r + 1] {
                    let c = column(s, lane, &zero, j, e);
                    let col = s.add_c(&c, col0 as i64);
                    let at = s.add(&base, &col);
                    let v = self.sums.get(s, &at);
                    let v = s.fadd(&v, &a[e]);
                    self.sums.set(s, &at, &v);
                }
            }
        }
    }

    /// Writes the run's sums to its partial in the `[B, T, G·runs, N]` view `view`, steps
    /// past T left alone (after the block's last additions).
    fn store_sums(&self, s: &mut Text, d: &Dims, view: usize, run: &Run) {
        barrier(s);
        each_of_block(s, L * d.n, |s, e| {
            let (r, n) = s.split(e, d.n);
            let (ok, t) = step(s, d, &run.t0, &r);
            s.when(&ok, |s| {
                let row = s.mul_c(&r, self.pitch as i64);
                let at = s.add(&row, &n);
                let v = self.sums.get(s, &at);
                let bt = s.mul_c(&run.b, d.t as i64);
                let bt = s.add(&bt, &t);
                let part = s.mul_c(&bt, (d.g * runs(d)) as i64);
                let part = s.add(&part, &run.part);
                let base = s.mul_c(&part, d.n as i64);
                let to = s.add(&base, &n);
                s.store(view, &[&to], &v);
            });
        });
    }
}

/// `e^{l_last − l_j}` for step `j` (0 where a document starts after it): the decay from
/// step `j` to the tile's last state.
fn decay_to_last(s: &mut Text, d: &Dims, lay: &Layout, j: &str) -> String {
    let last = s.i64(L as i64 - 1);
    let (ll, lj) = (lay.l.get(s, &last), lay.l.get(s, j));
    let diff = s.fsub(&ll, &lj);
    let e = exp2(s, &diff);
    let seen = seen(s, d, lay, &last, j);
    let zero = s.f32(0.0);
    s.select(&seen, &e, &zero, "f32")
}

/// `e^{l_i − l_j}` for `i ≥ j` (the mask is the caller's).
fn pair_decay(s: &mut Text, lay: &Layout, i: &str, j: &str) -> String {
    let (li, lj) = (lay.l.get(s, i), lay.l.get(s, j));
    let diff = s.fsub(&li, &lj);
    exp2(s, &diff)
}

/// Multiplies the rows of `acc` (`rows` the lane's) by `factor(row)`.
fn scale_rows(s: &mut Text, acc: &mut [Acc], factors: &[String; 2]) {
    for a in acc.iter_mut() {
        for (e, x) in a.iter_mut().enumerate() {
            *x = s.fmul(x, &factors[e / 2]);
        }
    }
}

/// Per row of the lane, `Σ_cols acc·tile(row, col)` over the warp's columns from `col0`
/// in the tile and the accumulators' columns (quad-summed: every lane of the row has it).
fn row_dots(s: &mut Text, lane: &Lane, acc: &[Acc], tile: &Tile, rows: &[String; 2], col0: usize) -> [String; 2] {
    let zero = s.i64(0);
    [0, 1].map(|r| {
        let mut sum = s.f32(0.0);
        for (j, a) in acc.iter().enumerate() {
            for e in [2 * r, 2 * r + 1] {
                let c = column(s, lane, &zero, j, e);
                let col = s.add_c(&c, col0 as i64);
                let v = tile.get(s, &rows[r], &col);
                sum = s.fma(&a[e], &v, &sum);
            }
        }
        shuffle_sum(s, &sum, &[1, 2])
    })
}

/// Stores a per-row value of the lane's rows to `to` (by the first lane of each quad).
fn put_rows(s: &mut Text, lane: &Lane, to: &Floats, rows: &[String; 2], values: &[String; 2]) {
    let zero = s.i64(0);
    let first = s.cmp("eq", &lane.c, &zero);
    s.when(&first, |s| {
        for r in 0..2 {
            to.set(s, &rows[r], &values[r]);
        }
    });
}

/// The flat index of `[b, t, hs]` in a `[B, T, H·slices]` workspace view.
fn step_index(s: &mut Text, d: &Dims, b: &str, t: &str, hs: &str) -> String {
    let bt = s.mul_c(b, d.t as i64);
    let bt = s.add(&bt, t);
    let bth = s.mul_c(&bt, (d.h * d.p / SLICE) as i64);
    s.add(&bth, hs)
}

/// Stages the head slice's `x` and `dy` for the tile (the caller waits for the copies).
fn stage_operands(s: &mut Text, d: &Dims, adj: &Adjoint, (sl, t0): (&Slice, &str)) {
    stage_rows(s, d, &adj.lay.x, X, (&sl.b, &sl.h, &sl.p0), t0, None);
    stage_rows(s, d, &adj.dy, DY, (&sl.b, &sl.h, &sl.p0), t0, None);
}

/// Stages the adjoint of the state leaving tile `k` (f32 in the workspace) as bf16 `G`
/// (`[N, SLICE]`, the layout's `h`) and `Gᵀ` (`state_t`), one load for both.
fn stage_adjoint(s: &mut Text, d: &Dims, adj: &Adjoint, sl: &Slice, k: &str) {
    each_of_block(s, SLICE * d.n, |s, e| {
        let (p, n) = s.split(e, d.n);
        let ch = s.add(&sl.p0, &p);
        let at = state_index(s, d, sl, k, &n, &ch);
        let g = s.load(d.at(ADJOINTS), &[&at]);
        adj.lay.h.put(s, &n, &p, &g);
        adj.state_t.put(s, &p, &n, &g);
    });
}

/// Stages the state entering tile `k` as bf16 `H₀ᵀ` (`state_t`), and returns this thread's
/// part of `⟨G, H₀⟩` in f32 (`G` the adjoint of the state leaving the tile).
fn stage_entering_state(s: &mut Text, d: &Dims, adj: &Adjoint, sl: &Slice, k: &str) -> String {
    let (zero, count) = (s.i64(0), s.i64((SLICE * d.n / THREADS) as i64));
    let init = [s.f32(0.0)];
    let part = s.fold(&zero, &count, &init, |s, i, acc| {
        let e = s.mul_c(i, THREADS as i64);
        let e = s.add(&e, "%tid");
        let (p, n) = s.split(&e, d.n);
        let ch = s.add(&sl.p0, &p);
        let at = state_index(s, d, sl, k, &n, &ch);
        let (h0, g) = (s.load(d.at(STATES), &[&at]), s.load(d.at(ADJOINTS), &[&at]));
        adj.state_t.put(s, &p, &n, &h0);
        vec![s.fma(&g, &h0, &acc[0])]
    });
    part[0].clone()
}

/// The tiles' terms of `G` and their pairs, every tile at once (an item per tile of a
/// [`Run`]): `dx`, `x·dx̃`, and `x̃·dx̃` of the part from `G`; `dB`; and the pairs' part of
/// `dl`.
fn pair_tiles(d: &Dims) -> Phase {
    summing_tiles(d, "pair_tiles", d.at(DB_PART), pair_slice)
}

/// A phase of items of a [`Run`] that sum a `[L, N]` term over the run's head slices into
/// the partials of view `sums`: `slice` adds one head slice's.
fn summing_tiles(d: &Dims, what: &'static str, sums: usize, slice: SliceTerms) -> Phase {
    let adj = Adjoint::new(d.n);
    let lay = &adj.lay;
    let mut body = Text::new();
    let s = &mut body;
    let run = Run::of(s, d, lay);
    adj.zero_sums(s);
    run.each_slice(s, d, lay, |s, sl, hs| slice(s, d, &adj, &run, (sl, hs)));
    adj.store_sums(s, d, sums, &run);
    Phase {
        what,
        items: Run::items(d),
        work_per_item: L * d.n * SLICE * 3 * run_length(d),
        body,
        cooperative: Some(Cooperative { threads: THREADS, shared_bytes: adj.bytes() }),
    }
}

/// One head slice's work in a [`summing_tiles`] phase.
type SliceTerms = fn(&mut Text, &Dims, &Adjoint, &Run, (&Slice, &str));

/// [`pair_tiles`] for one head slice `sl` (`hs`) of the run.
fn pair_slice(s: &mut Text, d: &Dims, adj: &Adjoint, run: &Run, (sl, hs): (&Slice, &str)) {
    let lay = &adj.lay;
    let Run { lane, k, t0, zero, warp_first, .. } = run;
    stage_operands(s, d, adj, (sl, t0));
    stage_adjoint(s, d, adj, sl, k);
    staged(s);
    let rows = lane_rows(s, lane, zero);
    let dt_rows = [0, 1].map(|r| lay.dt.get(s, &rows[r]));
    let b_of = |s: &mut Text, kk| lay.b.fragment(s, lane, warp_first, kk);
    let x_of = |s: &mut Text, kk| lay.x.fragment(s, lane, warp_first, kk);

    // dx̃ over rows j: the part from G, then the pairs `(C_i·B_j)·e^{l_i−l_j}`.
    let later = |s: &mut Text, j: &str, i: &str| seen(s, d, lay, i, j);
    let decay_ij = |s: &mut Text, j: &str, i: &str| pair_decay(s, lay, i, j);
    let mut cb = times_transposed(s, lane, &b_of, &lay.c, 0, L);
    weigh_pairs(s, lane, &rows, &mut cb, &later, &decay_ij);
    let to_last = [0, 1].map(|r| decay_to_last(s, d, lay, &rows[r]));
    let first_of_quad = s.cmp("eq", &lane.c, zero);
    let mut dx = zeros(s, SLICE);
    product(s, lane, &b_of, d.n / 16, &lay.h, 0, &mut dx);
    scale_rows(s, &mut dx, &to_last);
    let x_dot = row_dots(s, lane, &dx, &lay.x, &rows, 0);
    for (r, row) in rows.iter().enumerate() {
        let (ok, t) = step(s, d, t0, row);
        let writes = s.line_value(format!("arith.andi {ok}, {first_of_quad} : i1"));
        s.when(&writes, |s| {
            let at = step_index(s, d, &sl.b, &t, hs);
            let v = s.fmul(&x_dot[r], &dt_rows[r]);
            s.store(d.at(LEAVING), &[&at], &v);
        });
    }
    accumulate(s, lane, &cb, &adj.dy, 0, &mut dx);
    let xdx = row_dots(s, lane, &dx, &lay.x, &rows, 0);
    for (r, row) in rows.iter().enumerate() {
        let (ok, t) = step(s, d, t0, row);
        let writes = s.line_value(format!("arith.andi {ok}, {first_of_quad} : i1"));
        s.when(&writes, |s| {
            let at = step_index(s, d, &sl.b, &t, hs);
            s.store(d.at(XDX_PART), &[&at], &xdx[r]);
        });
    }
    scale_rows(s, &mut dx, &dt_rows);
    store_rows(s, d, lane, (d.at(DX), &sl.b, &sl.h, &sl.p0), t0, &rows, &dx);
    // The pairs' part of dl: `w_ij` at (j, i), for i strictly after j.
    let mut xdy = times_transposed(s, lane, &x_of, &adj.dy, 0, L);
    pair_sums(s, lane, adj, &rows, &dt_rows, &cb, &xdy);
    // dB: the part from G, then the pairs.
    weigh_pairs(s, lane, &rows, &mut xdy, &later, &decay_ij);
    for first in (0..d.n).step_by(COLUMNS.min(d.n)) {
        let width = COLUMNS.min(d.n);
        let mut db = zeros(s, width);
        product(s, lane, &x_of, SLICE / 16, &adj.state_t.columns(first, width), 0, &mut db);
        scale_rows(s, &mut db, &to_last);
        accumulate(s, lane, &xdy, &lay.c.columns(first, width), 0, &mut db);
        scale_rows(s, &mut db, &dt_rows);
        adj.add_to_sums(s, lane, &rows, (&db, first));
    }
    // `Σ_{j<i} w_ij − Σ_{i>j} w_ij` per step, for the entering phase's `dl`.
    barrier(s);
    let steps = s.i64(L as i64);
    let mine = s.cmp("slt", "%tid", &steps);
    s.when(&mine, |s| {
        let r = "%tid";
        let neg = adj.neg.get(s, r);
        let mut dl = s.fneg(&neg);
        for w in 0..4 {
            let at = s.add_c(r, (w * L) as i64);
            let p = adj.pos.get(s, &at);
            dl = s.fadd(&dl, &p);
        }
        let (ok, t) = step(s, d, t0, r);
        s.when(&ok, |s| {
            let at = step_index(s, d, &sl.b, &t, hs);
            s.store(d.at(PAIRS_DL), &[&at], &dl);
        });
    });
}

/// The entering state's terms and `dl`, every tile at once (an item per tile of a
/// [`Run`]): `dC` (the entering state's part and the pairs) and `dy·y` of that part; with
/// the pair phase's parts, `dl`, then `D` and the tile's `Σ dt·D`.
fn entering_tiles(d: &Dims) -> Phase {
    summing_tiles(d, "entering_tiles", d.at(DC_PART), entering_slice)
}

/// [`entering_tiles`] for one head slice `sl` (`hs`) of the run.
fn entering_slice(s: &mut Text, d: &Dims, adj: &Adjoint, run: &Run, (sl, hs): (&Slice, &str)) {
    let lay = &adj.lay;
    let Run { lane, k, t0, zero, warp_first, .. } = run;
    for (to, view) in [(&adj.leaving, LEAVING), (&adj.neg, PAIRS_DL)] {
        to.stage(s, &|s, r| {
            let (ok, t) = step(s, d, t0, r);
            let at = step_index(s, d, &sl.b, &t, hs);
            let v = s.load(d.at(view), &[&at]);
            let none = s.f32(0.0);
            s.select(&ok, &v, &none, "f32")
        });
    }
    stage_operands(s, d, adj, (sl, t0));
    let gh = stage_entering_state(s, d, adj, sl, k);
    let gh = shuffle_sum(s, &gh, &[1, 2, 4, 8, 16]);
    let first_lane = s.cmp("eq", &lane.lane, zero);
    s.when(&first_lane, |s| adj.pos.set(s, &lane.warp, &gh));
    staged(s);
    let rows = lane_rows(s, lane, zero);
    let dy_of = |s: &mut Text, kk| adj.dy.fragment(s, lane, warp_first, kk);
    // dC over rows i: the entering state's part (and its `dy·y`), then the pairs.
    let mut dyx = times_transposed(s, lane, &dy_of, &lay.x, 0, L);
    weigh_pairs(s, lane, &rows, &mut dyx, &|s, i, j| seen(s, d, lay, i, j), &|s, i, j| {
        let e = pair_decay(s, lay, i, j);
        let dt = lay.dt.get(s, j);
        s.fmul(&e, &dt)
    });
    let into_rows = [0, 1].map(|r| entering_decay(s, d, lay, &rows[r]));
    let mut dy_y = [s.f32(0.0), s.f32(0.0)];
    for first in (0..d.n).step_by(COLUMNS.min(d.n)) {
        let width = COLUMNS.min(d.n);
        let mut dc = zeros(s, width);
        product(s, lane, &dy_of, SLICE / 16, &adj.state_t.columns(first, width), 0, &mut dc);
        scale_rows(s, &mut dc, &into_rows);
        let part = row_dots(s, lane, &dc, &lay.c, &rows, first);
        dy_y = [0, 1].map(|r| s.fadd(&dy_y[r], &part[r]));
        accumulate(s, lane, &dyx, &lay.b.columns(first, width), 0, &mut dc);
        adj.add_to_sums(s, lane, &rows, (&dc, first));
    }
    put_rows(s, lane, &adj.entering, &rows, &dy_y);
    barrier(s);
    let decay = tile_decay(s, d, lay);
    decay_terms(s, d, adj, (sl, hs), (k, t0), &decay);
}

/// From the pair products at (j, i) (`cb` weighted by the decays, `xdy = x_j·dy_i`):
/// `w_ij = cb·dt_j·xdy` for i strictly after j, summed over i into `neg[j]` and over the
/// warp's rows j into its row of `pos` (lanes of a column combine by shuffles).
fn pair_sums(
    s: &mut Text,
    lane: &Lane,
    adj: &Adjoint,
    rows: &[String; 2],
    dt_rows: &[String; 2],
    cb: &[Acc],
    xdy: &[Acc],
) {
    let zero = s.i64(0);
    let mut neg = [s.f32(0.0), s.f32(0.0)];
    let mut columns = Vec::new();
    for (jt, (p, m)) in cb.iter().zip(xdy).enumerate() {
        let mut pair = [s.f32(0.0), s.f32(0.0)];
        for e in 0..4 {
            let i = column(s, lane, &zero, jt, e);
            let after = s.cmp("sgt", &i, &rows[e / 2]);
            let pm = s.fmul(&p[e], &m[e]);
            let w = s.fmul(&pm, &dt_rows[e / 2]);
            let none = s.f32(0.0);
            let w = s.select(&after, &w, &none, "f32");
            neg[e / 2] = s.fadd(&neg[e / 2], &w);
            pair[e % 2] = s.fadd(&pair[e % 2], &w);
        }
        columns.push(pair);
    }
    let neg = [0, 1].map(|r| shuffle_sum(s, &neg[r], &[1, 2]));
    put_rows(s, lane, &adj.neg, rows, &neg);
    let top = s.cmp("eq", &lane.g, &zero);
    let row = s.mul_c(&lane.warp, L as i64);
    for (jt, pair) in columns.iter().enumerate() {
        for (e, x) in pair.iter().enumerate() {
            let sum = shuffle_sum(s, x, &[4, 8, 16]);
            let i = column(s, lane, &row, jt, e);
            s.when(&top, |s| adj.pos.set(s, &i, &sum));
        }
    }
}

/// After the block's products: `dl` per step, then `D_k = Σ_{i≥k} dl_i` (0 at a document's
/// start, where no decay enters), written with `x·dx̃` per step, and the tile's `Σ dt·D`.
fn decay_terms(s: &mut Text, d: &Dims, adj: &Adjoint, (sl, hs): (&Slice, &str), (k, t0): (&str, &str), decay: &str) {
    let lay = &adj.lay;
    let (zero, steps) = (s.i64(0), s.i64(L as i64));
    let mine = s.cmp("slt", "%tid", &steps);
    s.when(&mine, |s| {
        let r = "%tid";
        let (entering, pairs, leaving) = (adj.entering.get(s, r), adj.neg.get(s, r), adj.leaving.get(s, r));
        let dl = s.fadd(&entering, &pairs);
        let dl = s.fsub(&dl, &leaving);
        adj.dl.set(s, r, &dl);
    });
    barrier(s);
    // The last step's own terms reach every D_k: `⟨G, e^{l_last}·H₀⟩` and `Σ_j x̃_j·dx̃_j`.
    let mut gh = s.f32(0.0);
    for w in 0..THREADS / 32 {
        let at = s.i64(w as i64);
        let v = adj.pos.get(s, &at);
        gh = s.fadd(&gh, &v);
    }
    let z = s.f32(0.0);
    let leaving = s.fold(&zero, &steps, &[z], |s, j, acc| {
        let v = adj.leaving.get(s, j);
        vec![s.fadd(&acc[0], &v)]
    });
    let extra = s.fma(decay, &gh, &leaving[0]);
    s.when(&mine, |s| {
        let r = "%tid";
        let total = s.fold(r, &steps, std::slice::from_ref(&extra), |s, i, acc| {
            let v = adj.dl.get(s, i);
            vec![s.fadd(&acc[0], &v)]
        });
        let mut dk = total[0].clone();
        if d.resets.is_some() {
            let start = lay.start.get(s, r);
            let here = s.sitofp(r);
            let starts = s.fcmp("oeq", &start, &here);
            let none = s.f32(0.0);
            dk = s.select(&starts, &none, &dk, "f32");
        }
        let (ok, t) = step(s, d, t0, r);
        s.when(&ok, |s| {
            let at = step_index(s, d, &sl.b, &t, hs);
            s.store(d.at(D_PART), &[&at], &dk);
        });
        let dt = lay.dt.get(s, r);
        let dtd = s.fmul(&dt, &dk);
        adj.neg.set(s, r, &dtd);
    });
    barrier(s);
    let first = s.cmp("eq", "%tid", &zero);
    s.when(&first, |s| {
        let z = s.f32(0.0);
        let sum = s.fold(&zero, &steps, &[z], |s, r, acc| {
            let v = adj.neg.get(s, r);
            vec![s.fadd(&acc[0], &v)]
        });
        let at = tile_index(s, d, &sl.b, hs, k);
        s.store(d.at(DA_PART), &[&at], &sum[0]);
    });
}

/// Per `(b, t, g, n)`: `dB` and `dC`, the group's runs of head slices summed in order.
fn group_sums(d: &Dims) -> Phase {
    let mut s = Text::new();
    let (btg, n) = s.split("%item", d.n);
    let (bt, g) = s.split(&btg, d.g);
    let per = runs(d);
    let first = s.mul_c(&g, per as i64);
    let (zero, count) = (s.i64(0), s.i64(per as i64));
    let z = s.f32(0.0);
    let sums = s.fold(&zero, &count, &[z.clone(), z], |s, j, acc| {
        let part = s.add(&first, j);
        let row = s.mul_c(&bt, (d.g * per) as i64);
        let row = s.add(&row, &part);
        let base = s.mul_c(&row, d.n as i64);
        let at = s.add(&base, &n);
        let (db, dc) = (s.load(d.at(DB_PART), &[&at]), s.load(d.at(DC_PART), &[&at]));
        vec![s.fadd(&acc[0], &db), s.fadd(&acc[1], &dc)]
    });
    let (b, t) = s.split(&bt, d.t);
    s.store(d.at(DB), &[&b, &t, &g, &n], &sums[0]);
    s.store(d.at(DC), &[&b, &t, &g, &n], &sums[1]);
    Phase { what: "group_sums", items: d.b * d.t * d.g * d.n, work_per_item: 2 * per, body: s, cooperative: None }
}

/// Per `(b, t, h)`: `ddt = Σ_slices x·dx̃ + a·Σ_slices D`.
fn step_sums(d: &Dims) -> Phase {
    let slices = d.p / SLICE;
    let mut s = Text::new();
    let (bt, h) = s.split("%item", d.h);
    let (b, t) = s.split(&bt, d.t);
    let first = s.mul_c(&h, slices as i64);
    let (zero, count) = (s.i64(0), s.i64(slices as i64));
    let z = s.f32(0.0);
    let sums = s.fold(&zero, &count, &[z.clone(), z], |s, j, acc| {
        let hs = s.add(&first, j);
        let at = step_index(s, d, &b, &t, &hs);
        let (xdx, dk) = (s.load(d.at(XDX_PART), &[&at]), s.load(d.at(D_PART), &[&at]));
        vec![s.fadd(&acc[0], &xdx), s.fadd(&acc[1], &dk)]
    });
    let a = s.load(A, &[&h]);
    let ddt = s.fma(&a, &sums[1], &sums[0]);
    s.store(d.at(DDT), &[&b, &t, &h], &ddt);
    Phase { what: "step_sums", items: d.b * d.t * d.h, work_per_item: 2 * slices, body: s, cooperative: None }
}

/// Per head: `da = Σ_b Σ_slices Σ_tiles Σ dt·D`, in that order.
fn decay_sums(d: &Dims) -> Phase {
    let slices = d.p / SLICE;
    let tiles = d.t.div_ceil(L);
    let mut s = Text::new();
    let h = "%item";
    let (zero, count) = (s.i64(0), s.i64((d.b * slices * tiles) as i64));
    let z = s.f32(0.0);
    let sum = s.fold(&zero, &count, &[z], |s, j, acc| {
        let (b, rest) = s.split(j, slices * tiles);
        let (slice, k) = s.split(&rest, tiles);
        let hs = s.mul_c(h, slices as i64);
        let hs = s.add(&hs, &slice);
        let row = s.mul_c(&b, (d.h * slices) as i64);
        let row = s.add(&row, &hs);
        let at = s.mul_c(&row, tiles as i64);
        let at = s.add(&at, &k);
        let v = s.load(d.at(DA_PART), &[&at]);
        vec![s.fadd(&acc[0], &v)]
    });
    s.store(d.at(DA), &[h], &sum[0]);
    Phase { what: "decay_sums", items: d.h, work_per_item: d.b * slices * tiles, body: s, cooperative: None }
}
