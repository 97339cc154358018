//! Flash attention on tensor cores: the forward pass and the gradient as cooperative
//! phases, a block of four warps per tile of 64 rows of one head, each warp 16 rows.
//! Operand tiles are staged in shared memory as bf16; every product is `mma.sync` with f32
//! accumulators, and the softmax runs on the accumulators in base 2 (the scores' factor
//! `scale · log2 e` is applied to the scores).
//!
//! The gradient is FlashAttention-2's, without atomics, from the forward's output and rows'
//! logsumexp: a phase over query tiles writes `Δ = Σ dO·O` per row (to the workspace) and
//! sums `dq = scale · Σ_j ds_ij k_j`; a phase over key tiles sums `dv = Σ_i p_ij dO_i` and
//! `dk = scale · Σ_i ds_ij q_i` over the query rows of every head of the key's group, in a
//! fixed order. So, as in the SIMT template, every output element has one writer.

use super::super::super::emit::Target;
use super::super::super::math::Func;
use super::super::tensor_core::{
    accumulate, barrier, column, exp2, lane_rows, quad, times_transposed, zeros, Acc, Floats, Fragments, Lane, Tile,
    THREADS,
};
use super::super::text::Text;
use super::super::{Cooperative, Phase, TemplateCode};
use super::{
    backward_code, forward_code, kv_head, rotation, unrotation, Dims, Params, Row, Rows, BACKWARD_ROTATED, DELTA, DK,
    DQ, DV, FORWARD_ROTATED, OUT, OUT_LSE, SAVED_LSE, SAVED_OUT, V,
};
use crate::codegen::Storage;

/// The workspace views of the rotated dq and dk (f32), after the rotated q and k (bf16).
const ROTATED_DQ: usize = BACKWARD_ROTATED + 2;
const ROTATED_DK: usize = BACKWARD_ROTATED + 3;

/// Where the gradient phases write dq and dk: with RoPE head-major to the workspace, for
/// [`unrotation`], else the outputs.
fn gradient_rows(dims: &Dims) -> (Rows, Rows) {
    match dims.params.rope {
        Some(_) => {
            let (dq, dk) = (dims.view(ROTATED_DQ), dims.view(ROTATED_DK));
            (Rows::Flat { view: dq, heads: dims.h }, Rows::Flat { view: dk, heads: dims.kv })
        }
        None => (dims.qk(DQ), dims.qk(DK)),
    }
}

/// With documents, the first phase: per query tile of each row of the batch, the first key
/// any of its rows sees (the smallest start of their documents), as f32 in the workspace
/// view `view`, so the tile phases skip the key tiles before it.
fn first_keys(dims: &Dims, view: usize) -> Vec<Phase> {
    if !dims.params.documents {
        return vec![];
    }
    let tiles = dims.t.div_ceil(TILE);
    let mut body = Text::new();
    let s = &mut body;
    let (b, qt) = s.split("%item", tiles);
    let q0 = s.mul_c(&qt, TILE as i64);
    let (zero, rows, none) = (s.i64(0), s.i64(TILE as i64), s.f32(dims.t as f32));
    let first = s.fold(&zero, &rows, &[none], |s, r, c| {
        let t = step(s, dims, &q0, r).1;
        let key = dims.first_key(s, &b, &t);
        let key = s.sitofp(&key);
        vec![s.float("minimumf", &c[0], &key)]
    });
    s.store(view, &["%item"], &first[0]);
    vec![Phase { cooperative: None, what: "first_keys", items: dims.b * tiles, work_per_item: TILE, body }]
}

/// The first key tile of query tile `qt` of row `b`: from [`first_keys`]' view `view` with
/// documents, else 0.
fn first_key_tile(s: &mut Text, dims: &Dims, view: usize, b: &str, qt: &str) -> String {
    if !dims.params.documents {
        return s.i64(0);
    }
    let row = s.mul_c(b, dims.t.div_ceil(TILE) as i64);
    let at = s.add(&row, qt);
    let key = s.load(view, &[&at]);
    let key = s.line_value(format!("arith.fptosi {key} : f32 to i64"));
    s.split(&key, TILE).0
}

/// The rows' first keys with documents: per lane row, its document's start.
fn row_starts(s: &mut Text, dims: &Dims, b: &str, rows: &[String; 2]) -> Option<[String; 2]> {
    dims.params.documents.then(|| {
        rows.clone().map(|t| {
            let tn = s.i64(dims.t as i64 - 1);
            let t = s.int("minsi", &t, &tn);
            dims.first_key(s, b, &t)
        })
    })
}

/// Whether query row `row` (of lane row index `r`) does not see key `col`: a key after it,
/// or with documents one before its document's start.
fn hidden_key(s: &mut Text, rows: &[String; 2], starts: &Option<[String; 2]>, r: usize, col: &str) -> String {
    let after = s.cmp("sgt", col, &rows[r]);
    match starts {
        Some(starts) => {
            let before = s.cmp("slt", col, &starts[r]);
            s.line_value(format!("arith.ori {after}, {before} : i1"))
        }
        None => after,
    }
}

/// The rotated q and k as bf16, the precision the tensor cores read them in: they stage
/// into shared memory by 16-byte asynchronous copies, at half the bytes. `before` workspace
/// buffers (f32) come first.
fn rotated_in_bf16(code: &mut TemplateCode, dims: &Dims, before: usize) {
    if dims.params.rope.is_some() {
        code.workspace_storage = vec![Storage::F32; before];
        code.workspace_storage.extend([Storage::Bf16, Storage::Bf16]);
    }
}

/// Rows of a block's tile: 16 per warp of [`THREADS`].
const TILE: usize = 64;

/// The sizes, where the tensor-core templates take the head dimension: the products
/// contract over it 32 columns at a time, and at 128 the accumulators fill the registers.
fn tile_dims(inputs: &[Vec<usize>], params: Params) -> Option<Dims> {
    let dims = Dims::new(&inputs[0], &inputs[1], params);
    (dims.d.is_multiple_of(32) && dims.d <= 128).then_some(dims)
}

/// The forward template on tensor cores, for head dimensions a multiple of 32 up to 128
/// (else `None`). Items run from the longest causal row of tiles to the shortest, so the
/// last blocks launched are the cheap ones.
pub fn forward_on_tensor_cores(inputs: &[Vec<usize>], params: Params) -> Option<TemplateCode> {
    let dims = tile_dims(inputs, params)?;
    let starts = dims.view(FORWARD_ROTATED + dims.rotated_sizes().len());
    let mut phases = rotation(&dims, FORWARD_ROTATED, Target::Gpu);
    phases.extend(first_keys(&dims, starts));
    phases.push(attend_tiles(&dims, starts));
    let mut code = forward_code(&dims, "flash_attention_mma", inputs, phases);
    rotated_in_bf16(&mut code, &dims, 0);
    code.workspace.extend(first_keys_size(&dims));
    Some(code)
}

/// The gradient template on tensor cores, for the head dimensions of the forward's.
pub fn backward_on_tensor_cores(inputs: &[Vec<usize>], params: Params) -> Option<TemplateCode> {
    let dims = tile_dims(inputs, params)?;
    // After the rotated q and k and the rotated dq and dk.
    let starts = dims.view(BACKWARD_ROTATED + 2 * dims.rotated_sizes().len());
    let mut phases = rotation(&dims, BACKWARD_ROTATED, Target::Gpu);
    phases.extend(first_keys(&dims, starts));
    phases.push(query_grad_tiles(&dims, starts));
    phases.push(key_value_grad_tiles(&dims, starts));
    // With RoPE, dq and dk are written head-major to the workspace in f32 and rotated back
    // by a last phase.
    phases.extend(unrotation(&dims, (ROTATED_DQ, ROTATED_DK), Target::Gpu));
    let more = dims.rotated_sizes();
    let mut code = backward_code(&dims, "flash_attention_grad_mma", inputs, phases, more);
    // The rows' `Σ dO·O` come first.
    rotated_in_bf16(&mut code, &dims, 1);
    code.workspace.extend(first_keys_size(&dims));
    Some(code)
}

/// The workspace of [`first_keys`]: one per query tile of each row, with documents.
fn first_keys_size(dims: &Dims) -> Option<usize> {
    dims.params.documents.then(|| dims.b * dims.t.div_ceil(TILE))
}

/// `n` tiles of `rows × d` laid out one after another in shared memory.
fn tiles<const N: usize>(rows: [usize; N], d: usize) -> [Tile; N] {
    let mut at = 0;
    rows.map(|rows| {
        let tile = Tile::new(at, rows, d);
        at += tile.bytes();
        tile
    })
}

/// The batch, the query head and its key/value head a block works on.
struct Head {
    b: String,
    h: String,
    hk: String,
}

/// A query-tile item, `%item` numbering tiles longest first: its head and first row.
fn query_tile(s: &mut Text, dims: &Dims) -> (Head, String) {
    let tiles = dims.t.div_ceil(TILE);
    let (rev, bh) = s.split("%item", dims.b * dims.h);
    let last = s.i64(tiles as i64 - 1);
    let qt = s.int("subi", &last, &rev);
    let (b, h) = s.split(&bh, dims.h);
    let hk = kv_head(s, dims, &h);
    (Head { b, h, hk }, qt)
}

/// Row `first + r` of a tile: whether it is a time step, and the step clamped into T.
fn step(s: &mut Text, dims: &Dims, first: &str, r: &str) -> (String, String) {
    let t = s.add(first, r);
    let (tn, last) = (s.i64(dims.t as i64), s.i64(dims.t as i64 - 1));
    (s.cmp("slt", &t, &tn), s.int("minsi", &t, &last))
}

/// Stages the rows `first ..` of one head of `rows` into `tile`: by 16-byte asynchronous
/// copies where the view allows, else element by element (rows past T as zeros). Rows past
/// T are never seen: the copies read the last row again for them, which the masks hide.
fn stage(s: &mut Text, dims: &Dims, tile: &Tile, rows: Rows, b: &str, head: &str, first: &str) {
    let by_eight = rows.copies_by_eight(s);
    s.either(
        &by_eight,
        |s| {
            tile.stage_by_eight(s, &|s, r, c, dst| {
                let t = step(s, dims, first, r).1;
                rows.copy8(s, dims, Row { b, head, t: &t }, c, dst);
            })
        },
        |s| {
            tile.stage(s, &|s, r| step(s, dims, first, r).0, &|s, r, c| {
                let t = step(s, dims, first, r).1;
                rows.load(s, dims, Row { b, head, t: &t }, c)
            })
        },
    );
}

/// Waits for this thread's copies, then for the block: the staged tiles are ready.
fn staged(s: &mut Text) {
    s.commit_copies();
    s.wait_copies(0);
    barrier(s);
}

/// Scores times `factor` (the softmax's scale in base 2).
fn scaled(s: &mut Text, scores: &mut [Acc], factor: &str) {
    for x in scores.iter_mut().flatten() {
        *x = s.fmul(x, factor);
    }
}

/// Sets to −∞ the scores whose (lane row `r`, column) `hidden` says are not seen.
fn mask(s: &mut Text, lane: &Lane, scores: &mut [Acc], first: &str, hidden: &dyn Fn(&mut Text, usize, &str) -> String) {
    let minus = s.f32(f32::NEG_INFINITY);
    for (j, acc) in scores.iter_mut().enumerate() {
        for (e, x) in acc.iter_mut().enumerate() {
            let col = column(s, lane, first, j, e);
            let h = hidden(s, e / 2, &col);
            *x = s.select(&h, &minus, x, "f32");
        }
    }
}

fn flat(accs: &[Acc]) -> Vec<String> {
    accs.iter().flatten().cloned().collect()
}

fn unflat(values: &[String]) -> Vec<Acc> {
    values.chunks(4).map(|c| [c[0].clone(), c[1].clone(), c[2].clone(), c[3].clone()]).collect()
}

/// What a warp's online softmax over key tiles leaves: the unnormalised output (D/8
/// accumulators) and, per lane row, the running maximum and the row's sum (base 2).
struct Softmax {
    o: Vec<Acc>,
    m: [String; 2],
    l: [String; 2],
}

/// The online softmax of a warp's 16 query rows (`q(kk)` their A fragments, `rows` the
/// lane's time steps, `starts` their documents' with documents) over the key tiles
/// `first_tile .. key_tiles` of `head`, staged into `kv`.
fn attend(
    s: &mut Text,
    dims: &Dims,
    lane: &Lane,
    head: &Head,
    (q, rows, starts): (Fragments, &[String; 2], &Option<[String; 2]>),
    (keys, kv): (Rows, &Tile),
    (first_tile, key_tiles): (&str, &str),
) -> Softmax {
    let groups = dims.d / 8;
    let scale = &s.f32((dims.params.scale * std::f64::consts::LOG2_E) as f32);
    let mut init = flat(&zeros(s, dims.d));
    init.extend([s.f32(f32::NEG_INFINITY), s.f32(f32::NEG_INFINITY), s.f32(0.0), s.f32(0.0)]);
    // Two buffers of a key and a value tile, `kv` the first: tile `kt` goes to buffer
    // `kt % 2`, and the next tile is copied while this one is multiplied.
    let buffers = |s: &mut Text, kt: &str| {
        let (_, odd) = s.split(kt, 2);
        let shift = s.mul_c(&odd, 2 * kv.bytes() as i64);
        (kv.shifted(&shift), Tile { at: kv.at + kv.bytes(), ..kv.shifted(&shift) })
    };
    let fill = |s: &mut Text, kt: &str| {
        let (k_tile, v_tile) = buffers(s, kt);
        let k0 = s.mul_c(kt, TILE as i64);
        stage(s, dims, &k_tile, keys, &head.b, &head.hk, &k0);
        stage(s, dims, &v_tile, V, &head.b, &head.hk, &k0);
    };
    fill(s, first_tile);
    s.commit_copies();
    let carried = s.fold(first_tile, key_tiles, &init, |s, kt, c| {
        let (o, ml) = c.split_at(groups * 4);
        let next = s.add_c(kt, 1);
        let ahead = s.cmp("slt", &next, key_tiles);
        s.when(&ahead, |s| fill(s, &next));
        // One group per iteration (empty after the last tile), so tile `kt`'s copies are
        // done once at most one group is outstanding.
        s.commit_copies();
        s.wait_copies(1);
        barrier(s);
        let (k_tile, v_tile) = buffers(s, kt);
        let kv = [&k_tile, &v_tile];
        let k0 = s.mul_c(kt, TILE as i64);
        let mut scores = times_transposed(s, lane, q, kv[0], 0, TILE);
        scaled(s, &mut scores, scale);
        // Causal: key j sees rows i ≥ j (of its document).
        mask(s, lane, &mut scores, &k0, &|s, r, col| hidden_key(s, rows, starts, r, col));
        let mut o = unflat(o);
        let (mut m, mut offsets, mut rescale) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..2 {
            let mut mx = ml[r].clone();
            for x in scores.iter().flat_map(|a| [&a[2 * r], &a[2 * r + 1]]) {
                mx = s.float("maximumf", &mx, x);
            }
            let mx = quad(s, &mx, "maximumf");
            // With documents a row may see no key of a tile yet (all −∞): it subtracts 0
            // instead of −∞, so its factors and probabilities are 0, not NaN.
            let offset = match starts {
                Some(_) => {
                    let (minus, zero) = (s.f32(f32::NEG_INFINITY), s.f32(0.0));
                    let none = s.fcmp("oeq", &mx, &minus);
                    s.select(&none, &zero, &mx, "f32")
                }
                None => mx.clone(),
            };
            let shift = s.fsub(&ml[r], &offset);
            let factor = exp2(s, &shift);
            for a in o.iter_mut() {
                for e in [2 * r, 2 * r + 1] {
                    a[e] = s.fmul(&a[e], &factor);
                }
            }
            m.push(mx);
            offsets.push(offset);
            rescale.push(factor);
        }
        let mut sums = [s.f32(0.0), s.f32(0.0)];
        for a in scores.iter_mut() {
            for (e, x) in a.iter_mut().enumerate() {
                let shifted = s.fsub(x, &offsets[e / 2]);
                *x = exp2(s, &shifted);
                sums[e / 2] = s.fadd(&sums[e / 2], x);
            }
        }
        let l: Vec<String> = (0..2).map(|r| s.fma(&ml[2 + r], &rescale[r], &sums[r])).collect();
        accumulate(s, lane, &scores, kv[1], 0, &mut o);
        // Everyone is done with this buffer before the next iteration fills it again.
        barrier(s);
        let mut next = flat(&o);
        next.extend(m);
        next.extend(l);
        next
    });
    let (o, ml) = carried.split_at(groups * 4);
    let l = [0, 1].map(|r| quad(s, &ml[2 + r], "addf"));
    Softmax { o: unflat(o), m: [ml[0].clone(), ml[1].clone()], l }
}

/// Stores a warp's rows (`rows` the lane's time steps) of `acc` times `factor` to one head
/// of `to`.
fn store_rows(
    s: &mut Text,
    dims: &Dims,
    lane: &Lane,
    (to, b, head): (Rows, &str, &str),
    rows: &[String; 2],
    acc: &[Acc],
    factor: &str,
) {
    let (zero, tn) = (s.i64(0), s.i64(dims.t as i64));
    for (r, t) in rows.iter().enumerate() {
        let row = Row { b, head, t };
        let valid = s.cmp("slt", t, &tn);
        s.when(&valid, |s| {
            for (j, a) in acc.iter().enumerate() {
                for e in [2 * r, 2 * r + 1] {
                    let col = column(s, lane, &zero, j, e);
                    let y = s.fmul(&a[e], factor);
                    to.store(s, dims, row, &col, &y);
                }
            }
        });
    }
}

/// The forward phase: an item is a tile of 64 query rows of one head; q's fragments stay
/// in registers while key and value tiles stream through shared memory.
fn attend_tiles(dims: &Dims, starts_view: usize) -> Phase {
    let (q, k) = dims.rotated(FORWARD_ROTATED);
    // q, then two buffers of a key and a value tile.
    let [q_tile, k_tile, ..] = tiles([TILE; 5], dims.d);
    let mut body = Text::new();
    let s = &mut body;
    let lane = Lane::new(s);
    // A block may take several items: the last one's readers of the tiles are done.
    barrier(s);
    let (head, qt) = query_tile(s, dims);
    let q0 = s.mul_c(&qt, TILE as i64);
    stage(s, dims, &q_tile, q, &head.b, &head.h, &q0);
    staged(s);
    let warp_first = s.mul_c(&lane.warp, 16);
    let qf: Vec<[String; 4]> = (0..dims.d / 16).map(|kk| q_tile.fragment(s, &lane, &warp_first, kk)).collect();
    let rows = lane_rows(s, &lane, &q0);
    let starts = row_starts(s, dims, &head.b, &rows);
    let key_tiles = s.add_c(&qt, 1);
    let first = first_key_tile(s, dims, starts_view, &head.b, &qt);
    let out =
        attend(s, dims, &lane, &head, (&|_, kk| qf[kk].clone(), &rows, &starts), (k, &k_tile), (&first, &key_tiles));
    let (one, o) = (s.f32(1.0), normalised(s, &out));
    store_rows(s, dims, &lane, (Rows::HeadMajor(dims.view(OUT)), &head.b, &head.h), &rows, &o, &one);
    // The rows' logsumexp in natural units, `ln 2 · m + ln l` (m is in base 2).
    let (zero, tn, ln2) = (s.i64(0), s.i64(dims.t as i64), s.f32(std::f64::consts::LN_2 as f32));
    let first_of_quad = s.cmp("eq", &lane.c, &zero);
    for (r, t) in rows.iter().enumerate() {
        let ln = s.call(Func::Log, &out.l[r]);
        let lse = s.fma(&out.m[r], &ln2, &ln);
        let valid = s.cmp("slt", t, &tn);
        let writes = s.line_value(format!("arith.andi {valid}, {first_of_quad} : i1"));
        s.when(&writes, |s| s.store(dims.view(OUT_LSE), &[&head.b, &head.h, t, &zero], &lse));
    }
    Phase {
        what: "attend_tiles",
        items: dims.b * dims.h * dims.t.div_ceil(TILE),
        work_per_item: dims.t * dims.d,
        body,
        cooperative: Some(Cooperative { threads: THREADS, shared_bytes: 5 * q_tile.bytes() }),
    }
}

/// The softmax's output, each row divided by its sum.
fn normalised(s: &mut Text, out: &Softmax) -> Vec<Acc> {
    let one = s.f32(1.0);
    let inv = [0, 1].map(|r| s.fdiv(&one, &out.l[r]));
    out.o.iter().map(|a| [0, 1, 2, 3].map(|e| s.fmul(&a[e], &inv[e / 2]))).collect()
}

/// The gradient's query phase: per tile of 64 query rows, the rows' `Δ = Σ dO·O` from the
/// forward's output (stored to the workspace), then `dq` over the key tiles they see, with
/// the forward's logsumexp.
fn query_grad_tiles(dims: &Dims, starts_view: usize) -> Phase {
    let (q, k) = dims.rotated(BACKWARD_ROTATED);
    // q and dO, then a key and a value block; the forward's output is staged where the key
    // block goes, and read before the first block is.
    let [q_tile, dy_tile, k_tile, v_tile] = tiles([TILE; 4], dims.d);
    let out_tile = k_tile.clone();
    let mut body = Text::new();
    let s = &mut body;
    let lane = Lane::new(s);
    // A block may take several items: the last one's readers of the tiles are done.
    barrier(s);
    let (head, qt) = query_tile(s, dims);
    let q0 = s.mul_c(&qt, TILE as i64);
    let scale = s.f32((dims.params.scale * std::f64::consts::LOG2_E) as f32);
    stage(s, dims, &q_tile, q, &head.b, &head.h, &q0);
    stage(s, dims, &dy_tile, dims.dy(), &head.b, &head.h, &q0);
    stage(s, dims, &out_tile, Rows::HeadMajor(dims.view(SAVED_OUT)), &head.b, &head.h, &q0);
    staged(s);
    let warp_first = s.mul_c(&lane.warp, 16);
    let rows = lane_rows(s, &lane, &q0);
    let starts = row_starts(s, dims, &head.b, &rows);
    let key_tiles = s.add_c(&qt, 1);
    let first_tile = first_key_tile(s, dims, starts_view, &head.b, &qt);
    let (zero, log2e) = (s.i64(0), s.f32(std::f64::consts::LOG2_E as f32));
    let mut lse = Vec::new();
    let mut delta = Vec::new();
    let first_of_quad = s.cmp("eq", &lane.c, &zero);
    for row in &rows {
        let (valid, t) = step(s, dims, row, &zero);
        let natural = dims.lse(s, SAVED_LSE, Row { b: &head.b, head: &head.h, t: &t });
        let tile_row = s.int("subi", row, &q0);
        let mut partial = s.f32(0.0);
        for j in 0..dims.d / 8 {
            for e in 0..2 {
                let col = column(s, &lane, &zero, j, e);
                let (dy, o) = (dy_tile.get(s, &tile_row, &col), out_tile.get(s, &tile_row, &col));
                partial = s.fma(&dy, &o, &partial);
            }
        }
        let d = quad(s, &partial, "addf");
        let writes = s.line_value(format!("arith.andi {valid}, {first_of_quad} : i1"));
        s.when(&writes, |s| {
            let at = Row { b: &head.b, head: &head.h, t: row }.index(s, dims.h, dims.t);
            s.store(dims.view(DELTA), &[&at], &d);
        });
        lse.push(s.fmul(&natural, &log2e));
        delta.push(d);
    }
    // Keys in blocks of `width` rows (the tiles' first rows), so the scores and their
    // gradients fit in registers beside dq's accumulators.
    let width = key_slice(dims.d);
    let (k_block, v_block) = (Tile { rows: width, ..k_tile.clone() }, Tile { rows: width, ..v_tile });
    let init = flat(&zeros(s, dims.d));
    let blocks = s.mul_c(&key_tiles, (TILE / width) as i64);
    let first_block = s.mul_c(&first_tile, (TILE / width) as i64);
    let grad = s.fold(&first_block, &blocks, &init, |s, kb, dq| {
        barrier(s);
        let k0 = s.mul_c(kb, width as i64);
        stage(s, dims, &k_block, k, &head.b, &head.hk, &k0);
        stage(s, dims, &v_block, V, &head.b, &head.hk, &k0);
        staged(s);
        let q_of = |s: &mut Text, kk| q_tile.fragment(s, &lane, &warp_first, kk);
        let mut p = times_transposed(s, &lane, &q_of, &k_block, 0, width);
        scaled(s, &mut p, &scale);
        mask(s, &lane, &mut p, &k0, &|s, r, col| hidden_key(s, &rows, &starts, r, col));
        let dy_of = |s: &mut Text, kk| dy_tile.fragment(s, &lane, &warp_first, kk);
        let dp = times_transposed(s, &lane, &dy_of, &v_block, 0, width);
        for (a, g) in p.iter_mut().zip(&dp) {
            for e in 0..4 {
                let shifted = s.fsub(&a[e], &lse[e / 2]);
                let prob = exp2(s, &shifted);
                let centred = s.fsub(&g[e], &delta[e / 2]);
                a[e] = s.fmul(&prob, &centred);
            }
        }
        let mut dq = unflat(dq);
        accumulate(s, &lane, &p, &k_block, 0, &mut dq);
        flat(&dq)
    });
    let factor = s.f32(dims.params.scale as f32);
    store_rows(s, dims, &lane, (gradient_rows(dims).0, &head.b, &head.h), &rows, &unflat(&grad), &factor);
    Phase {
        what: "query_grad_tiles",
        items: dims.b * dims.h * dims.t.div_ceil(TILE),
        work_per_item: 3 * dims.t * dims.d,
        body,
        cooperative: Some(Cooperative { threads: THREADS, shared_bytes: 4 * q_tile.bytes() }),
    }
}

/// Keys of the query phase's gradient products at a time: at head dimension 128 the `dq`
/// accumulators take 64 registers.
fn key_slice(d: usize) -> usize {
    if d > 64 {
        32
    } else {
        TILE
    }
}

/// Query rows of the key phase's inner tiles: the `dk` and `dv` accumulators hold D/2
/// registers each, and the scores and their gradients `2·chunk / 4` more, so the chunk
/// halves as D doubles (at 64 and 32 queries ptxas spills).
fn query_chunk(d: usize) -> usize {
    if d > 64 {
        16
    } else {
        32
    }
}

/// The gradient's key phase: per tile of 64 key rows of a key/value head (tiles with the
/// most query rows after them first), `dk` and `dv` over the query chunks at or after the
/// tile of every query head of the group, reading the rows' statistics from the workspace.
fn key_value_grad_tiles(dims: &Dims, starts_view: usize) -> Phase {
    let (q, k) = dims.rotated(BACKWARD_ROTATED);
    let chunk = query_chunk(dims.d);
    let [k_tile, v_tile, q_tile, dy_tile] = tiles([TILE, TILE, chunk, chunk], dims.d);
    let lse_of = Floats { at: dy_tile.at + dy_tile.bytes(), len: chunk };
    let delta_of = Floats { at: lse_of.at + lse_of.bytes(), ..lse_of };
    // With documents, the first key of each query row of the chunk.
    let start_of = Floats { at: delta_of.at + delta_of.bytes(), ..lse_of };
    let documents = dims.params.documents;
    let groups = dims.params.groups;
    let mut body = Text::new();
    let s = &mut body;
    let lane = Lane::new(s);
    // A block may take several items: the last one's readers of the tiles are done.
    barrier(s);
    let (kt, bk) = s.split("%item", dims.b * dims.kv);
    let (b, hk) = s.split(&bk, dims.kv);
    let k0 = s.mul_c(&kt, TILE as i64);
    let scale = s.f32((dims.params.scale * std::f64::consts::LOG2_E) as f32);
    stage(s, dims, &k_tile, k, &b, &hk, &k0);
    stage(s, dims, &v_tile, V, &b, &hk, &k0);
    let warp_first = s.mul_c(&lane.warp, 16);
    let rows = lane_rows(s, &lane, &k0);
    let (zero, group, tn) = (s.i64(0), s.i64(groups as i64), s.i64(dims.t as i64));
    let first_chunk = s.mul_c(&kt, (TILE / chunk) as i64);
    let chunks = s.i64(dims.t.div_ceil(chunk) as i64);
    let init = [flat(&zeros(s, dims.d)), flat(&zeros(s, dims.d))].concat();
    let grads = s.fold(&zero, &group, &init, |s, gi, c| {
        let first = s.mul_c(&hk, groups as i64);
        let h = s.add(&first, gi);
        s.fold(&first_chunk, &chunks, c, |s, qc, c| {
            let q0 = s.mul_c(qc, chunk as i64);
            let work = |s: &mut Text| {
                let (dk, dv) = c.split_at(c.len() / 2);
                let (mut dk, mut dv) = (unflat(dk), unflat(dv));
                barrier(s);
                stage(s, dims, &q_tile, q, &b, &h, &q0);
                stage(s, dims, &dy_tile, dims.dy(), &b, &h, &q0);
                let log2e = s.f32(std::f64::consts::LOG2_E as f32);
                lse_of.stage(s, &|s, i| {
                    let t = step(s, dims, &q0, i).1;
                    let natural = dims.lse(s, SAVED_LSE, Row { b: &b, head: &h, t: &t });
                    s.fmul(&natural, &log2e)
                });
                delta_of.stage(s, &|s, i| {
                    let t = step(s, dims, &q0, i).1;
                    let at = Row { b: &b, head: &h, t: &t }.index(s, dims.h, dims.t);
                    s.load(dims.view(DELTA), &[&at])
                });
                if documents {
                    start_of.stage(s, &|s, i| {
                        let t = step(s, dims, &q0, i).1;
                        let first = dims.first_key(s, &b, &t);
                        s.sitofp(&first)
                    });
                }
                staged(s);
                let zero = s.i64(0);
                let k_of = |s: &mut Text, kk| k_tile.fragment(s, &lane, &warp_first, kk);
                let mut p = times_transposed(s, &lane, &k_of, &q_tile, 0, chunk);
                scaled(s, &mut p, &scale);
                // Rows are keys, columns queries: query i sees key j ≤ i (of its document), and
                // rows past T none.
                mask(s, &lane, &mut p, &q0, &|s, r, col| {
                    let before = s.cmp("slt", col, &rows[r]);
                    let past = s.cmp("sge", col, &tn);
                    let hidden = s.line_value(format!("arith.ori {before}, {past} : i1"));
                    if !documents {
                        return hidden;
                    }
                    let i = s.int("subi", col, &q0);
                    let start = start_of.get(s, &i);
                    let key = s.sitofp(&rows[r]);
                    let later = s.fcmp("ogt", &start, &key);
                    s.line_value(format!("arith.ori {hidden}, {later} : i1"))
                });
                for (j, a) in p.iter_mut().enumerate() {
                    for (e, x) in a.iter_mut().enumerate() {
                        let col = column(s, &lane, &zero, j, e);
                        let lse = lse_of.get(s, &col);
                        let shifted = s.fsub(x, &lse);
                        *x = exp2(s, &shifted);
                    }
                }
                accumulate(s, &lane, &p, &dy_tile, 0, &mut dv);
                let v_of = |s: &mut Text, kk| v_tile.fragment(s, &lane, &warp_first, kk);
                let dp = times_transposed(s, &lane, &v_of, &dy_tile, 0, chunk);
                for (j, (a, g)) in p.iter_mut().zip(&dp).enumerate() {
                    for e in 0..4 {
                        let col = column(s, &lane, &zero, j, e);
                        let delta = delta_of.get(s, &col);
                        let centred = s.fsub(&g[e], &delta);
                        a[e] = s.fmul(&a[e], &centred);
                    }
                }
                accumulate(s, &lane, &p, &q_tile, 0, &mut dk);
                [flat(&dk), flat(&dv)].concat()
            };
            if !documents {
                return work(s);
            }
            // With documents, a chunk whose rows all start after the key tile is skipped.
            let qt = s.split(qc, TILE / chunk).0;
            let first = first_key_tile(s, dims, starts_view, &b, &qt);
            let seen = s.cmp("sle", &first, &kt);
            s.choose(&seen, work, c)
        })
    });
    let (dk, dv) = grads.split_at(grads.len() / 2);
    let factor = s.f32(dims.params.scale as f32);
    store_rows(s, dims, &lane, (gradient_rows(dims).1, &b, &hk), &rows, &unflat(dk), &factor);
    let one = s.f32(1.0);
    store_rows(s, dims, &lane, (Rows::HeadMajor(dims.view(DV)), &b, &hk), &rows, &unflat(dv), &one);
    Phase {
        what: "key_value_grad_tiles",
        items: dims.b * dims.kv * dims.t.div_ceil(TILE),
        work_per_item: 4 * groups * dims.t * dims.d,
        body,
        cooperative: Some(Cooperative { threads: THREADS, shared_bytes: start_of.at + start_of.bytes() }),
    }
}
