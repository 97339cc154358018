//! The SSD gradient's two sequential sweeps over the tiles of [`super::chunks`]: forward,
//! the state entering every tile; in reverse, the adjoint of the state leaving every tile.
//! Both are the same recurrence, `S ← e^{l_last}·S + operandᵀ·weighted` per tile, with
//! `S` in f32 accumulators across tiles, written exact to a `[B, H, tiles, P, N]`
//! workspace for the phases parallel over tiles.
//!
//! The rows of a state (its `N` axis) are independent, so an item is one head's channel
//! slice and one [`PART`] of those rows: `N / PART` times the items of a whole-state sweep,
//! which at Falcon-H1's sizes (a few hundred slices) is what fills the GPU's SMs, the
//! sweeps being latency-bound chains of small products.

use super::super::tensor_core::{barrier, zeros, Acc, Lane, THREADS};
use super::super::text::Text;
use super::super::{Cooperative, Phase};
use super::chunks::{
    advance_state, entering_decay, scale_tile, stage_rows, stage_steps, staged, state_accs, state_element, state_index,
    tile_decay, weight_to_last, Layout, Slice, L, SLICE,
};
use super::{Dims, A, B, C, DY, X};

/// Rows of the state one item carries (two 16-row products).
pub const PART: usize = 32;

/// Which sweep: the states (from `B` and `x`, first tile to last) or the adjoints (from
/// `C` and `dy`, last tile to first).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    States,
    Adjoints,
}

/// The sweep's phase, writing every tile's state to workspace view `view`.
pub fn sweep(d: &Dims, sweep: Sweep, view: usize) -> Phase {
    let lay = Layout::new(PART);
    let tiles = d.t.div_ceil(L);
    let mut body = Text::new();
    let s = &mut body;
    let lane = Lane::new(s);
    let (item, part) = s.split("%item", d.n / PART);
    let sl = Slice::of_index(s, d, &item);
    let n0 = s.mul_c(&part, PART as i64);
    let a = s.load(A, &[&sl.h]);
    let log2e = s.f32(std::f64::consts::LOG2_E as f32);
    let a2 = s.fmul(&a, &log2e);
    let init: Vec<String> = zeros(s, PART / 2).into_iter().flatten().collect();
    let (zero, count, last) = (s.i64(0), s.i64(tiles as i64), s.i64(tiles as i64 - 1));
    let (operand, operand_view, input, rows_to) = match sweep {
        Sweep::States => (&lay.b, B, X, weight_to_last as fn(&mut Text, &Dims, &Layout, &str) -> String),
        Sweep::Adjoints => (&lay.c, C, DY, entering_decay as fn(&mut Text, &Dims, &Layout, &str) -> String),
    };
    s.fold(&zero, &count, &init, |s, i, carried| {
        let mut state = state_accs(carried);
        let k = match sweep {
            Sweep::States => i.to_string(),
            Sweep::Adjoints => s.int("subi", &last, i),
        };
        barrier(s);
        let t0 = s.mul_c(&k, L as i64);
        store_state(s, d, &lane, (&sl, &n0), (view, &k), &state);
        stage_steps(s, d, &sl, &lay, &t0, &a2);
        barrier(s);
        stage_rows(s, d, operand, operand_view, (&sl.b, &sl.g, &n0), &t0, None);
        stage_rows(s, d, &lay.xw, input, (&sl.b, &sl.h, &sl.p0), &t0, None);
        staged(s);
        scale_tile(s, &lay.xw, &|s, r| rows_to(s, d, &lay, r));
        barrier(s);
        let decay = tile_decay(s, d, &lay);
        advance_state(s, &lane, (operand, &lay.xw), &decay, &mut state);
        state.into_iter().flatten().collect()
    });
    Phase {
        what: match sweep {
            Sweep::States => "state_tiles",
            Sweep::Adjoints => "adjoint_tiles",
        },
        items: d.b * d.h * (d.p / SLICE) * (d.n / PART),
        work_per_item: d.t * PART * SLICE,
        body,
        cooperative: Some(Cooperative { threads: THREADS, shared_bytes: lay.bytes() }),
    }
}

/// Writes a part's accumulators (rows from `n0`) as tile `k`'s state in `view`.
fn store_state(s: &mut Text, d: &Dims, lane: &Lane, (sl, n0): (&Slice, &str), (view, k): (usize, &str), accs: &[Acc]) {
    for (m, a) in accs.iter().enumerate() {
        for (e, x) in a.iter().enumerate() {
            let (n, c) = state_element(s, lane, m, e);
            let (n, p) = (s.add(n0, &n), s.add(&sl.p0, &c));
            let at = state_index(s, d, sl, k, &n, &p);
            s.store(view, &[&at], x);
        }
    }
}
