//! The SSD scan gradient's two recurrences along time on tensor cores, the state `H`
//! forward and its adjoint `G` backward, and the items its tile phases share. Both
//! recurrences are linear: a tile's own part of each (`ΔH = Σ_j e^{l_last−l_j}·dt_j·x_jᵀ·B_j`,
//! `ΔG = Σ_i e^{l_i}·C_iᵀ·dy_i`) is a product every tile computes at once ([`tile_parts`]),
//! and the scan left, `H ← e^{l_last}·H + ΔH`, is elementwise over the state, a thread per
//! element ([`state_scan`], f32 throughout, so the states are as exact as one sweep's).
//! Every tile then knows the state entering it (and the adjoint of the state leaving it),
//! and the rest is parallel over tiles. A sequential sweep per head slice instead (the
//! state in registers, a tile step at a time) keeps only B·H·P/32 blocks busy, waiting on
//! latency: the gradient's two sweeps were 1.15 of its 1.85 ms at B 2, 32 heads.

use super::super::tensor_core::{barrier, columns_product, zeros, Lane, THREADS};
use super::super::text::Text;
use super::super::{Cooperative, Phase};
use super::chunks::{
    entering_decay, scale_tile, stage_rows, stage_steps, staged, store_state, tile_decay, weight_to_last, Layout,
    Slice, L, SLICE,
};
use super::{Dims, A, B, C, DY, X};

/// Where the recurrences' workspace is (view indices): the states entering every tile and
/// the adjoints of the states leaving every tile, both `[B, H, tiles, P, N]` f32; and each
/// tile's decay `e^{l_last}`, `[B, H·slices, tiles]`.
#[derive(Clone, Copy)]
pub struct Recurrences {
    pub states: usize,
    pub adjoints: usize,
    pub decays: usize,
}

/// Tiles the state scan's thread loads at once, so its loads are in flight together.
const SCAN_LOADS: usize = 8;

/// The most head slices an item of the tile phases takes in turn (see [`Run`]).
const RUN: usize = 8;

/// Head slices per item: the largest divisor of a group's head slices up to [`RUN`].
pub fn run_length(d: &Dims) -> usize {
    let group = d.heads_per_group() * (d.p / SLICE);
    (1..=RUN.min(group)).rev().find(|k| group.is_multiple_of(*k)).unwrap_or(1)
}

/// Runs of head slices per group: the partial sums of `dB` and `dC` per batch and step.
pub fn runs(d: &Dims) -> usize {
    d.heads_per_group() * (d.p / SLICE) / run_length(d)
}

/// An item of the tile phases: tile `k` (from step `t0`) of a run of [`run_length`] head
/// slices of group `g`, taken in turn. They share the group's `C` and `B`, staged once
/// (the copies are waited for with the first slice's), and sum their `dB` or `dC` in
/// shared memory into one partial, `part` of the batch's `G·runs`.
pub struct Run {
    pub lane: Lane,
    pub b: String,
    pub g: String,
    pub part: String,
    pub k: String,
    pub t0: String,
    pub zero: String,
    pub warp_first: String,
}

impl Run {
    pub fn of(s: &mut Text, d: &Dims, lay: &Layout) -> Run {
        let lane = Lane::new(s);
        let (item, k) = s.split("%item", d.t.div_ceil(L));
        let (b, part) = s.split(&item, d.g * runs(d));
        let g = s.split(&part, runs(d)).0;
        let zero = s.i64(0);
        let warp_first = s.mul_c(&lane.warp, 16);
        // A block may take several items: the last one's readers are done.
        barrier(s);
        let t0 = s.mul_c(&k, L as i64);
        stage_rows(s, d, &lay.c, C, (&b, &g, &zero), &t0, None);
        stage_rows(s, d, &lay.b, B, (&b, &g, &zero), &t0, None);
        Run { lane, b, g, part, k, t0, zero, warp_first }
    }

    /// `body(slice, hs)` for each head slice of the run in turn (`hs = h·slices + slice`),
    /// after the last one's readers of the shared memory are done and with its per-step
    /// values staged (the caller synchronises before reading them).
    pub fn each_slice(&self, s: &mut Text, d: &Dims, lay: &Layout, body: impl FnOnce(&mut Text, &Slice, &str)) {
        let count = s.i64(run_length(d) as i64);
        s.each(&self.zero, &count, |s, j| {
            let first = s.mul_c(&self.part, run_length(d) as i64);
            let hs = s.add(&first, j);
            let (h, slice) = s.split(&hs, d.p / SLICE);
            let p0 = s.mul_c(&slice, SLICE as i64);
            let sl = Slice { b: self.b.clone(), h, g: self.g.clone(), p0 };
            barrier(s);
            let a2 = log2_decay(s, &sl);
            stage_steps(s, d, &sl, lay, &self.t0, &a2);
            body(s, &sl, &hs);
        });
    }

    pub fn items(d: &Dims) -> usize {
        d.b * d.g * runs(d) * d.t.div_ceil(L)
    }
}

/// The flat index of `[b, hs, k]` in a `[B, H·slices, tiles]` workspace view.
pub fn tile_index(s: &mut Text, d: &Dims, b: &str, hs: &str, k: &str) -> String {
    let tiles = d.t.div_ceil(L) as i64;
    let row = s.mul_c(b, (d.h * d.p / SLICE) as i64);
    let row = s.add(&row, hs);
    let at = s.mul_c(&row, tiles);
    s.add(&at, k)
}

/// Every tile's own parts of the recurrences at once (an item per tile of a [`Run`]): `ΔH`
/// to the next tile's slot of the states, `ΔG` to the previous tile's slot of the adjoints,
/// and the tile's decay. The layout's `x` tile holds `e^{l_i}·dy_i` (`x` itself is read
/// only as `xw`).
pub fn tile_parts(d: &Dims, views: Recurrences) -> Phase {
    let lay = &Layout::new(d.n);
    let tiles = d.t.div_ceil(L);
    let mut body = Text::new();
    let s = &mut body;
    let run = Run::of(s, d, lay);
    let lane = &run.lane;
    run.each_slice(s, d, lay, |s, sl, hs| {
        stage_rows(s, d, &lay.xw, X, (&sl.b, &sl.h, &sl.p0), &run.t0, None);
        stage_rows(s, d, &lay.x, DY, (&sl.b, &sl.h, &sl.p0), &run.t0, None);
        staged(s);
        scale_tile(s, &lay.xw, &|s, r| weight_to_last(s, d, lay, r));
        scale_tile(s, &lay.x, &|s, r| entering_decay(s, d, lay, r));
        barrier(s);
        let (k, zero) = (&run.k, &run.zero);
        let w8 = s.mul_c(&lane.warp, 8);
        let mut state = zeros(s, d.n / 2);
        columns_product(s, lane, &|s, m, kk| lay.b.fragment_transposed(s, lane, m, kk), &lay.xw, &w8, &mut state);
        let last = s.i64(tiles as i64 - 1);
        let before_last = s.cmp("slt", k, &last);
        s.when(&before_last, |s| {
            let next = s.add_c(k, 1);
            store_state(s, d, lane, sl, views.states, &next, &state);
        });
        let mut adjoint = zeros(s, d.n / 2);
        let c_t = |s: &mut Text, m, kk| lay.c.fragment_transposed(s, lane, m, kk);
        columns_product(s, lane, &c_t, &lay.x, &w8, &mut adjoint);
        let after_first = s.cmp("sgt", k, zero);
        s.when(&after_first, |s| {
            let previous = s.add_c(k, -1);
            store_state(s, d, lane, sl, views.adjoints, &previous, &adjoint);
        });
        let first_thread = s.cmp("eq", "%tid", zero);
        s.when(&first_thread, |s| {
            let decay = tile_decay(s, d, lay);
            let at = tile_index(s, d, &sl.b, hs, k);
            s.store(views.decays, &[&at], &decay);
        });
    });
    Phase {
        what: "tile_parts",
        items: Run::items(d),
        work_per_item: 2 * L * d.n * SLICE * run_length(d),
        body,
        cooperative: Some(Cooperative { threads: THREADS, shared_bytes: lay.bytes() }),
    }
}

/// The recurrences along the tiles, a thread per element of a head's state, over the parts
/// [`tile_parts`] left, in their place: the states `H_{k+1} = e^{l_last,k}·H_k + ΔH_k` from
/// a zero state, then the adjoints `G_{k−1} = e^{l_last,k}·G_k + ΔG_k` from a zero adjoint
/// after the last tile.
pub fn state_scan(d: &Dims, views: Recurrences) -> Phase {
    let tiles = d.t.div_ceil(L);
    let mut body = Text::new();
    let s = &mut body;
    let (bh, pn) = s.split("%item", d.p * d.n);
    let (b, h) = s.split(&bh, d.h);
    let p = s.split(&pn, d.n).0;
    let width = s.i64(SLICE as i64);
    let slice = s.int("divui", &p, &width);
    let hs = s.mul_c(&h, (d.p / SLICE) as i64);
    let hs = s.add(&hs, &slice);
    let first = s.mul_c(&bh, (tiles * d.p * d.n) as i64);
    let first = s.add(&first, &pn);
    let slot = |s: &mut Text, k: &str| {
        let at = s.mul_c(k, (d.p * d.n) as i64);
        s.add(&first, &at)
    };
    let (zero, none) = (s.i64(0), s.f32(0.0));
    let at = slot(s, &zero);
    s.store(views.states, &[&at], &none);
    linear_scan(s, tiles - 1, (views.decays, views.states), &|s, i| {
        let next = s.add_c(i, 1);
        (tile_index(s, d, &b, &hs, i), slot(s, &next))
    });
    let last = s.i64(tiles as i64 - 1);
    let at = slot(s, &last);
    s.store(views.adjoints, &[&at], &none);
    linear_scan(s, tiles - 1, (views.decays, views.adjoints), &|s, i| {
        let k = s.int("subi", &last, i);
        let previous = s.add_c(&k, -1);
        (tile_index(s, d, &b, &hs, &k), slot(s, &previous))
    });
    Phase { what: "state_scan", items: d.b * d.h * d.p * d.n, work_per_item: 4 * tiles, body, cooperative: None }
}

/// `v ← decay_i·v + part_i` from `v = 0` for steps `i < count`, each result stored in its
/// part's place: `at(i)` gives the flat indices of step `i`'s decay and part in views
/// `decays` and `parts`. The loads of [`SCAN_LOADS`] steps are issued together, ahead of
/// their chain of multiply-adds.
fn linear_scan(
    s: &mut Text,
    count: usize,
    (decays, parts): (usize, usize),
    at: &dyn Fn(&mut Text, &str) -> (String, String),
) {
    if count == 0 {
        return;
    }
    let (zero, groups) = (s.i64(0), s.i64(count.div_ceil(SCAN_LOADS) as i64));
    let (steps, last) = (s.i64(count as i64), s.i64(count as i64 - 1));
    let init = [s.f32(0.0)];
    s.fold(&zero, &groups, &init, |s, group, carried| {
        let first = s.mul_c(group, SCAN_LOADS as i64);
        let loaded: Vec<_> = (0..SCAN_LOADS)
            .map(|u| {
                let i = s.add_c(&first, u as i64);
                let valid = s.cmp("slt", &i, &steps);
                let i = s.int("minsi", &i, &last);
                let (decay_at, part_at) = at(s, &i);
                let (decay, part) = (s.load(decays, &[&decay_at]), s.load(parts, &[&part_at]));
                (valid, decay, part, part_at)
            })
            .collect();
        let mut v = carried[0].clone();
        for (valid, decay, part, part_at) in loaded {
            let next = s.fma(&decay, &v, &part);
            s.when(&valid, |s| s.store(parts, &[&part_at], &next));
            v = s.select(&valid, &next, &v, "f32");
        }
        vec![v]
    });
}

/// `a` in base 2, the log decay's factor.
fn log2_decay(s: &mut Text, sl: &Slice) -> String {
    let a = s.load(A, &[&sl.h]);
    let log2e = s.f32(std::f64::consts::LOG2_E as f32);
    s.fmul(&a, &log2e)
}
