//! The SSD scan on tensor cores, in the chunked (state-space dual) form: time in tiles of
//! [`L`] steps, within which `y_i = Σ_{j≤i} (C_i·B_j)·e^{l_i−l_j}·dt_j·x_j + e^{l_i}·C_i·H₀`
//! (`l` the tile's cumulative `dt·a`, `H₀` the state entering it) and after which `H =
//! e^{l_last}·H₀ + Σ_j e^{l_last−l_j}·dt_j·B_jᵀ·x_j`. Every product is `mma.sync` (bf16
//! operands, f32 accumulators); the state stays in f32 accumulators across tiles and is
//! rounded to bf16 only as an operand. Decays are only ever taken of differences `l_i − l_j`
//! with `j ≤ i`, which are at most 0, so no exponential overflows whatever `dt` and `a` are.
//!
//! A block of four warps owns one head's slice of [`SLICE`] channels (rows of the state are
//! independent across channels), so the block count is `B·H·P/SLICE`; `C·Bᵀ` is recomputed
//! per slice, which costs less than splitting it would.
//!
//! For packed rows a document's start ends every decay across it: each step knows the last
//! start at or before it in its tile (`start`, −1 for none), and a pair `(i, j)` is seen only
//! where `j ≥ start_i`; the state entering the tile only where `start_i < 0`.

use super::super::position::place_in_document;
use super::super::tensor_core::{
    accumulate, barrier, column, columns_product, each_of_block, exp2, lane_rows, product, shuffle_up,
    times_transposed, zeros, Acc, Floats, Lane, Tile, THREADS,
};
use super::super::text::Text;
use super::super::{name, Cooperative, Phase, TemplateCode};
use super::{Dims, A, B, C, DT, X};

/// Time steps of a tile: 16 rows per warp of [`THREADS`].
pub const L: usize = 64;
/// Channels of a block's slice: eight per warp in the state's products.
pub const SLICE: usize = 32;

/// Whether the tensor-core scan takes these sizes: channels a whole number of slices, a
/// state size the products contract over 32 at a time, and a state that fits the
/// registers (N/4 accumulators per thread).
pub fn fits(d: &Dims) -> bool {
    d.p.is_multiple_of(SLICE) && d.n.is_multiple_of(32) && d.n <= 256
}

/// The forward template on tensor cores for inputs `x, dt, a, b, c` (and, with
/// `documents`, `positions`): output `y`; `None` where [`fits`] does not hold.
pub fn forward_on_tensor_cores(inputs: &[Vec<usize>], documents: bool) -> Option<TemplateCode> {
    let d = Dims::of(inputs, documents);
    if !fits(&d) {
        return None;
    }
    let shapes: Vec<&[usize]> = inputs.iter().map(Vec::as_slice).collect();
    let template = if documents { "document_ssd_scan_mma" } else { "ssd_scan_mma" };
    Some(TemplateCode {
        name: name(template, &shapes),
        inputs: inputs.to_vec(),
        outputs: vec![inputs[X].clone()],
        workspace: vec![],
        workspace_storage: vec![],
        in_place: vec![],
        phases: vec![sweep(&d)],
    })
}

/// Shared memory of a tile step: its operand tiles and per-step values.
pub struct Layout {
    pub c: Tile,
    pub b: Tile,
    pub x: Tile,
    /// `x_j` times its weight into the tile's last state, `e^{l_last−l_j}·dt_j`.
    pub xw: Tile,
    /// The state entering the tile, `[N, SLICE]`.
    pub h: Tile,
    pub dt: Floats,
    /// `l` in base 2 (`log2 e · Σ dt·a`).
    pub l: Floats,
    /// The last document start at or before each step in the tile (−1: none), as f32.
    pub start: Floats,
}

impl Layout {
    pub fn new(n: usize) -> Layout {
        let mut at = 0;
        let mut tile = |rows, cols| {
            let t = Tile::new(at, rows, cols);
            at += t.bytes();
            t
        };
        let (c, b, x, xw, h) = (tile(L, n), tile(L, n), tile(L, SLICE), tile(L, SLICE), tile(n, SLICE));
        let floats = |k: usize| Floats { at: at + k * 4 * L, len: L };
        Layout { c, b, x, xw, h, dt: floats(0), l: floats(1), start: floats(2) }
    }

    pub fn bytes(&self) -> usize {
        self.start.at + self.start.bytes()
    }
}

/// A block's item: batch, head, the head's group, and the first channel of its slice.
pub struct Slice {
    pub b: String,
    pub h: String,
    pub g: String,
    pub p0: String,
}

impl Slice {
    pub fn of(s: &mut Text, d: &Dims) -> Slice {
        Slice::of_index(s, d, "%item")
    }

    /// The slice numbered `i` (batch, head, slice; the slice fastest).
    pub fn of_index(s: &mut Text, d: &Dims, i: &str) -> Slice {
        let (bh, block) = s.split(i, d.p / SLICE);
        let (b, h) = s.split(&bh, d.h);
        let per = s.i64(d.heads_per_group() as i64);
        let g = s.int("divui", &h, &per);
        let p0 = s.mul_c(&block, SLICE as i64);
        Slice { b, h, g, p0 }
    }
}

/// A tile's first step `t0` and, for its row `r`, whether it is a time step and the step
/// clamped into T.
pub fn step(s: &mut Text, d: &Dims, t0: &str, r: &str) -> (String, String) {
    let t = s.add(t0, r);
    let (tn, last) = (s.i64(d.t as i64), s.i64(d.t as i64 - 1));
    (s.cmp("slt", &t, &tn), s.int("minsi", &t, &last))
}

/// Stages the per-step values of the tile from `t0`: `dt` (0 past T), then `l` and the
/// document starts; the caller synchronises after.
pub fn stage_steps(s: &mut Text, d: &Dims, sl: &Slice, lay: &Layout, t0: &str, a2: &str) {
    lay.dt.stage(s, &|s, r| {
        let (ok, t) = step(s, d, t0, r);
        let v = s.load(DT, &[&sl.b, &t, &sl.h]);
        let zero = s.f32(0.0);
        s.select(&ok, &v, &zero, "f32")
    });
    if let Some(view) = d.resets {
        lay.start.stage(s, &|s, r| {
            let (ok, t) = step(s, d, t0, r);
            let p = place_in_document(s, view, &sl.b, &t);
            let zero = s.i64(0);
            let starts = s.cmp("eq", &p, &zero);
            let here = s.line_value(format!("arith.andi {ok}, {starts} : i1"));
            let (at, none) = (s.sitofp(r), s.f32(-1.0));
            s.select(&here, &at, &none, "f32")
        });
    }
    barrier(s);
    // `l`: the prefix sums of `dt` (times `a` in base 2); and the last start at or before
    // each step, a running maximum.
    let lane = Lane::new(s);
    let zero = s.i64(0);
    let first_warp = s.cmp("eq", &lane.warp, &zero);
    s.when(&first_warp, |s| {
        warp_scan(s, &lane, (&lay.dt, &lay.l), "addf", 0.0, Some(a2));
        if d.resets.is_some() {
            warp_scan(s, &lane, (&lay.start, &lay.start), "maximumf", -1.0, None);
        }
    });
}

/// The inclusive scan of the [`L`] values of `from` by `combine` into `to` (times `scale`),
/// by one warp (each lane two consecutive values): the same order for every reader.
fn warp_scan(
    s: &mut Text,
    lane: &Lane,
    (from, to): (&Floats, &Floats),
    combine: &str,
    identity: f32,
    scale: Option<&str>,
) {
    let first = s.mul_c(&lane.lane, 2);
    let second = s.add_c(&first, 1);
    let (v0, v1) = (from.get(s, &first), from.get(s, &second));
    let pair = s.float(combine, &v0, &v1);
    let mut inclusive = pair;
    let none = s.f32(identity);
    for offset in [1, 2, 4, 8, 16] {
        let other = shuffle_up(s, &inclusive, offset);
        let off = s.i64(offset as i64);
        let has = s.cmp("sge", &lane.lane, &off);
        let other = s.select(&has, &other, &none, "f32");
        inclusive = s.float(combine, &other, &inclusive);
    }
    let before = shuffle_up(s, &inclusive, 1);
    let one = s.i64(1);
    let has = s.cmp("sge", &lane.lane, &one);
    let before = s.select(&has, &before, &none, "f32");
    let at_first = s.float(combine, &before, &v0);
    for (i, v) in [(&first, at_first), (&second, inclusive)] {
        let v = match scale {
            Some(f) => s.fmul(&v, f),
            None => v,
        };
        to.set(s, i, &v);
    }
}

/// Whether step `j` of the tile is seen from step `i` (`j ≤ i`, and no document starts
/// between them), both tile rows.
pub fn seen(s: &mut Text, d: &Dims, lay: &Layout, i: &str, j: &str) -> String {
    let causal = s.cmp("sle", j, i);
    if d.resets.is_none() {
        return causal;
    }
    let start = lay.start.get(s, i);
    let jf = s.sitofp(j);
    let after = s.fcmp("oge", &jf, &start);
    s.line_value(format!("arith.andi {causal}, {after} : i1"))
}

/// `e^{l_i}` for row `i`, the decay of the state entering the tile (0 after a start).
pub fn entering_decay(s: &mut Text, d: &Dims, lay: &Layout, i: &str) -> String {
    let li = lay.l.get(s, i);
    let decay = exp2(s, &li);
    if d.resets.is_none() {
        return decay;
    }
    let start = lay.start.get(s, i);
    let zero = s.f32(0.0);
    let none = s.fcmp("olt", &start, &zero);
    s.select(&none, &decay, &zero, "f32")
}

/// The weight of step `j` into the tile's last state, `e^{l_last − l_j}·dt_j` (0 where a
/// document starts after it).
pub fn weight_to_last(s: &mut Text, d: &Dims, lay: &Layout, j: &str) -> String {
    let last = s.i64(L as i64 - 1);
    let (ll, lj) = (lay.l.get(s, &last), lay.l.get(s, j));
    let diff = s.fsub(&ll, &lj);
    let e = exp2(s, &diff);
    let dt = lay.dt.get(s, j);
    let w = s.fmul(&e, &dt);
    let seen = seen(s, d, lay, &last, j);
    let zero = s.f32(0.0);
    s.select(&seen, &w, &zero, "f32")
}

/// A factor per tile row (an `i64` value), such as a decay.
pub type RowFactor<'a> = &'a dyn Fn(&mut Text, &str) -> String;

/// Stages `tile` (`[L, cols]`) from view `view` (`[B, T, heads, cols]` read at `head`
/// from column `col0`) from `t0`, rows past T as zeros, each element times `scale(row)`.
pub fn stage_rows(
    s: &mut Text,
    d: &Dims,
    tile: &Tile,
    view: usize,
    (b, head, col0): (&str, &str, &str),
    t0: &str,
    scale: Option<RowFactor>,
) {
    let elements = |s: &mut Text| {
        tile.stage(s, &|s, r| step(s, d, t0, r).0, &|s, r, c| {
            let t = step(s, d, t0, r).1;
            let col = s.add(col0, c);
            let v = s.load(view, &[b, &t, head, &col]);
            match scale {
                Some(f) => {
                    let w = f(s, r);
                    s.fmul(&v, &w)
                }
                None => v,
            }
        })
    };
    if scale.is_some() {
        return elements(s);
    }
    let by_eight = s.copies_by_eight(view, 4);
    s.either(
        &by_eight,
        |s| {
            tile.stage_by_eight(s, &|s, r, c, dst| {
                let (ok, t) = step(s, d, t0, r);
                s.either(
                    &ok,
                    |s| {
                        let col = s.add(col0, c);
                        s.copy8(view, &[b, &t, head, &col], dst);
                    },
                    |s| {
                        let zeros = s.line_value("arith.constant dense<0> : vector<4xi32>".into());
                        s.line(format!(
                            "llvm.store {zeros}, {dst} {{alignment = 16 : i64}} : vector<4xi32>, !llvm.ptr<3>"
                        ));
                    },
                )
            })
        },
        elements,
    );
}

/// Waits for this thread's copies, then for the block: the staged tiles are ready.
pub fn staged(s: &mut Text) {
    s.commit_copies();
    s.wait_copies(0);
    barrier(s);
}

/// Multiplies each row `r` of `tile` by `scale(r)` in place, the block's threads sharing
/// the elements; the caller synchronises after.
pub fn scale_tile(s: &mut Text, tile: &Tile, scale: RowFactor) {
    each_of_block(s, tile.rows * tile.cols, |s, e| {
        let (row, col) = s.split(e, tile.cols);
        let v = tile.get(s, &row, &col);
        let w = scale(s, &row);
        let x = s.fmul(&v, &w);
        tile.put(s, &row, &col, &x);
    });
}

/// The state's accumulators of a warp, as carried: rows `n` in 16s (every row), the
/// warp's eight channels of the slice.
fn state_accs(carried: &[String]) -> Vec<Acc> {
    carried.chunks(4).map(|c| [c[0].clone(), c[1].clone(), c[2].clone(), c[3].clone()]).collect()
}

/// Element `e` of state accumulator `m` of the lane: `(n, channel in the slice)`.
pub fn state_element(s: &mut Text, lane: &Lane, m: usize, e: usize) -> (String, String) {
    let row = s.add_c(&lane.g, (16 * m + 8 * (e / 2)) as i64);
    let w8 = s.mul_c(&lane.warp, 8);
    let col = column(s, lane, &w8, 0, e);
    (row, col)
}

/// Writes the state accumulators to the `[N, SLICE]` tile as bf16.
pub fn put_state(s: &mut Text, lane: &Lane, tile: &Tile, accs: &[Acc]) {
    for (m, a) in accs.iter().enumerate() {
        for e in [0, 2] {
            let (row, col) = state_element(s, lane, m, e);
            tile.put_pair(s, &row, &col, &a[e], &a[e + 1]);
        }
    }
}

/// `H ← decay·H + (B ∘ w)ᵀ·x` over the tile: `xw` holds `x` with its rows weighted.
pub fn advance_state(s: &mut Text, lane: &Lane, lay: &Layout, decay: &str, accs: &mut [Acc]) {
    for x in accs.iter_mut().flatten() {
        *x = s.fmul(x, decay);
    }
    let w8 = s.mul_c(&lane.warp, 8);
    columns_product(s, lane, &|s, m, kk| lay.b.fragment_transposed(s, lane, m, kk), &lay.xw, &w8, accs);
}

/// The decay of the whole tile, `e^{l_last}` (0 if a document starts in it).
pub fn tile_decay(s: &mut Text, d: &Dims, lay: &Layout) -> String {
    let last = s.i64(L as i64 - 1);
    entering_decay(s, d, lay, &last)
}

/// The forward sweep: an item is one head's slice of channels; the state's slice stays
/// in registers while tiles of `x`, `B`, `C` stream through shared memory.
fn sweep(d: &Dims) -> Phase {
    let lay = Layout::new(d.n);
    let mut body = Text::new();
    let s = &mut body;
    let lane = Lane::new(s);
    let sl = Slice::of(s, d);
    let a = s.load(A, &[&sl.h]);
    let log2e = s.f32(std::f64::consts::LOG2_E as f32);
    let a2 = s.fmul(&a, &log2e);
    let init: Vec<String> = zeros(s, d.n / 2).into_iter().flatten().collect();
    let (zero, tiles) = (s.i64(0), s.i64(d.t.div_ceil(L) as i64));
    let warp_first = s.mul_c(&lane.warp, 16);
    s.fold(&zero, &tiles, &init, |s, k, carried| {
        let mut state = state_accs(carried);
        barrier(s);
        let t0 = s.mul_c(k, L as i64);
        put_state(s, &lane, &lay.h, &state);
        stage_steps(s, d, &sl, &lay, &t0, &a2);
        barrier(s);
        stage_rows(s, d, &lay.c, C, (&sl.b, &sl.g, &zero), &t0, None);
        stage_rows(s, d, &lay.b, B, (&sl.b, &sl.g, &zero), &t0, None);
        stage_rows(s, d, &lay.x, X, (&sl.b, &sl.h, &sl.p0), &t0, None);
        stage_rows(s, d, &lay.xw, X, (&sl.b, &sl.h, &sl.p0), &t0, None);
        staged(s);
        scale_tile(s, &lay.xw, &|s, r| weight_to_last(s, d, &lay, r));
        barrier(s);
        let rows = lane_rows(s, &lane, &zero);
        let c_of = |s: &mut Text, kk| lay.c.fragment(s, &lane, &warp_first, kk);
        let mut y = zeros(s, SLICE);
        product(s, &lane, &c_of, d.n / 16, &lay.h, 0, &mut y);
        let into = [0, 1].map(|r| entering_decay(s, d, &lay, &rows[r]));
        for a in y.iter_mut() {
            for (e, x) in a.iter_mut().enumerate() {
                *x = s.fmul(x, &into[e / 2]);
            }
        }
        let mut scores = times_transposed(s, &lane, &c_of, &lay.b, 0, L);
        weigh_pairs(s, &lane, &rows, &mut scores, &|s, i, j| seen(s, d, &lay, i, j), &|s, i, j| {
            let (li, lj) = (lay.l.get(s, i), lay.l.get(s, j));
            let diff = s.fsub(&li, &lj);
            let e = exp2(s, &diff);
            let dt = lay.dt.get(s, j);
            s.fmul(&e, &dt)
        });
        accumulate(s, &lane, &scores, &lay.x, 0, &mut y);
        store_rows(s, d, &lane, (d.out, &sl.b, &sl.h, &sl.p0), &t0, &rows, &y);
        let decay = tile_decay(s, d, &lay);
        advance_state(s, &lane, &lay, &decay, &mut state);
        state.into_iter().flatten().collect()
    });
    Phase {
        what: "scan_tiles",
        items: d.b * d.h * (d.p / SLICE),
        work_per_item: d.t * d.n * SLICE,
        body,
        cooperative: Some(Cooperative { threads: THREADS, shared_bytes: lay.bytes() }),
    }
}

/// Multiplies each element of a warp's `[16, L]` pair matrix (rows `rows`, the lane's tile
/// rows; columns the tile's steps) by `weight(row, col)` where `shown(row, col)`, and sets
/// the rest to 0.
pub fn weigh_pairs(
    s: &mut Text,
    lane: &Lane,
    rows: &[String; 2],
    pairs: &mut [Acc],
    shown: &dyn Fn(&mut Text, &str, &str) -> String,
    weight: &dyn Fn(&mut Text, &str, &str) -> String,
) {
    let (zero_i, zero) = (s.i64(0), s.f32(0.0));
    for (jt, a) in pairs.iter_mut().enumerate() {
        for (e, x) in a.iter_mut().enumerate() {
            let (row, col) = (&rows[e / 2], column(s, lane, &zero_i, jt, e));
            let ok = shown(s, row, &col);
            let w = weight(s, row, &col);
            let v = s.fmul(x, &w);
            *x = s.select(&ok, &v, &zero, "f32");
        }
    }
}

/// Stores a warp's rows (`rows`, tile rows from `t0`) of `acc` (the slice's channels) to
/// `view[b, t, head, p0 + ·]`, steps past T left alone.
pub fn store_rows(
    s: &mut Text,
    d: &Dims,
    lane: &Lane,
    (view, b, head, p0): (usize, &str, &str, &str),
    t0: &str,
    rows: &[String; 2],
    acc: &[Acc],
) {
    for (r, row) in rows.iter().enumerate() {
        let (ok, t) = step(s, d, t0, row);
        s.when(&ok, |s| {
            for (j, a) in acc.iter().enumerate() {
                for e in [2 * r, 2 * r + 1] {
                    let col = column(s, lane, p0, j, e);
                    s.store(view, &[b, &t, head, &col], &a[e]);
                }
            }
        });
    }
}

/// The flat index of `[b, h, k, p, n]` in the `[B, H, tiles, P, N]` states (a channel's
/// row of the state contiguous, as the gradient stages it).
pub fn state_index(s: &mut Text, d: &Dims, sl: &Slice, k: &str, n: &str, p: &str) -> String {
    let tiles = d.t.div_ceil(L) as i64;
    let bh = s.mul_c(&sl.b, d.h as i64);
    let bh = s.add(&bh, &sl.h);
    let bhk = s.mul_c(&bh, tiles);
    let bhk = s.add(&bhk, k);
    let row = s.mul_c(&bhk, d.p as i64);
    let row = s.add(&row, p);
    let at = s.mul_c(&row, d.n as i64);
    s.add(&at, n)
}

/// Writes a warp's state accumulators (f32) to slot `k` of the `[B, H, tiles, P, N]`
/// workspace view `view`.
pub fn store_state(s: &mut Text, d: &Dims, lane: &Lane, sl: &Slice, view: usize, k: &str, accs: &[Acc]) {
    for (m, a) in accs.iter().enumerate() {
        for (e, x) in a.iter().enumerate() {
            let (n, c) = state_element(s, lane, m, e);
            let p = s.add(&sl.p0, &c);
            let at = state_index(s, d, sl, k, &n, &p);
            s.store(view, &[&at], x);
        }
    }
}
