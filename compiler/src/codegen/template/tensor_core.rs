//! Warp-level tensor-core pieces for cooperative GPU phases: tiles staged from views into
//! shared memory as bf16, `ldmatrix` fragments, `mma.sync.m16n8k16` (bf16 in, f32
//! accumulate), quad reductions and the base-2 exponential, written as NVVM operations
//! (MLIR's `nvgpu.mma.sync` has no bf16 form in MLIR 22).
//!
//! Fragment layouts are PTX's for m16n8k16 (lane `l`, `g = l / 4`, `c = l % 4`): the
//! accumulator holds rows `g` and `g + 8` at columns `2c, 2c + 1` of an 8-wide group; an A
//! fragment is four `i32`s, each two bf16 — rows `g`, `g + 8` at columns `2c..` then `2c +
//! 8..`; a B fragment two `i32`s, rows `2c..` and `2c + 8..` (the k axis) at column `g`.

use super::text::Text;

/// Threads of a cooperative tile phase: four warps.
pub const THREADS: usize = 128;

/// A shared-memory tile of bf16, `rows × cols`, rows `pitch` elements apart (padded by 8
/// so the eight row addresses of an `ldmatrix` fall in different banks).
#[derive(Clone)]
pub struct Tile {
    /// Byte offset in the block's shared memory.
    pub at: usize,
    pub rows: usize,
    pub cols: usize,
    pub pitch: usize,
    /// A runtime byte offset added to `at` (an `i64` value): which of several buffers.
    pub shift: Option<String>,
}

impl Tile {
    pub fn pitch(&self) -> usize {
        self.pitch
    }

    pub fn bytes(&self) -> usize {
        self.rows * self.pitch() * 2
    }

    /// A tile of `rows × cols` at byte offset `at`.
    pub fn new(at: usize, rows: usize, cols: usize) -> Tile {
        Tile { at, rows, cols, pitch: cols + 8, shift: None }
    }

    /// Columns `from .. from + n` of the tile, as a tile of their own.
    pub fn columns(&self, from: usize, n: usize) -> Tile {
        Tile { at: self.at + 2 * from, cols: n, ..self.clone() }
    }

    /// The same tile `by` bytes further (an `i64` value): one of several buffers.
    pub fn shifted(&self, by: &str) -> Tile {
        Tile { shift: Some(by.to_string()), ..self.clone() }
    }

    /// The `!llvm.ptr<3>` of element `(row, col)` (i64 values).
    pub fn address(&self, s: &mut Text, row: &str, col: &str) -> String {
        let r = s.mul_c(row, self.pitch() as i64);
        let e = s.add(&r, col);
        let e2 = s.mul_c(&e, 2);
        let mut at = s.add_c(&e2, self.at as i64);
        if let Some(by) = &self.shift {
            at = s.add(&at, by);
        }
        s.line_value(format!("llvm.getelementptr %smem[{at}] : (!llvm.ptr<3>, i64) -> !llvm.ptr<3>, i8"))
    }

    /// Fills the tile from `load(row, col)` (f32, any view storage) for rows below
    /// `valid_rows`, zeros elsewhere (so no poisoned or stale value reaches a product), all
    /// threads of the block sharing the elements; the caller synchronises after.
    pub fn stage(
        &self,
        s: &mut Text,
        valid: &dyn Fn(&mut Text, &str) -> String,
        load: &dyn Fn(&mut Text, &str, &str) -> String,
    ) {
        each_of_block(s, self.rows * self.cols, |s, e| {
            let (row, col) = s.split(e, self.cols);
            let ok = valid(s, &row);
            let x = load(s, &row, &col);
            let zero = s.f32(0.0);
            let x = s.select(&ok, &x, &zero, "f32");
            let h = s.line_value(format!("arith.truncf {x} : f32 to bf16"));
            let p = self.address(s, &row, &col);
            s.line(format!("llvm.store {h}, {p} : bf16, !llvm.ptr<3>"));
        });
    }

    /// Fills the tile eight columns at a time, `copy(row, col, dst)` copying the elements
    /// `(row, col ..)` to the shared address `dst`; the caller waits for the copies and
    /// synchronises after.
    pub fn stage_by_eight(&self, s: &mut Text, copy: &dyn Fn(&mut Text, &str, &str, &str)) {
        each_of_block(s, self.rows * self.cols / 8, |s, e| {
            let (row, chunk) = s.split(e, self.cols / 8);
            let col = s.mul_c(&chunk, 8);
            let p = self.address(s, &row, &col);
            copy(s, &row, &col, &p);
        });
    }

    /// The byte offset of `rows` rows and `cols` columns into the tile.
    fn bytes_to(&self, rows: usize, cols: usize) -> usize {
        (rows * self.pitch() + cols) * 2
    }

    /// Element `(row, col)` as f32.
    pub fn get(&self, s: &mut Text, row: &str, col: &str) -> String {
        let p = self.address(s, row, col);
        let h = s.line_value(format!("llvm.load {p} : !llvm.ptr<3> -> bf16"));
        s.line_value(format!("arith.extf {h} : bf16 to f32"))
    }

    /// The A fragment of a warp's 16 rows from `first` at columns `16·kk ..`.
    pub fn fragment(&self, s: &mut Text, lane: &Lane, first: &str, kk: usize) -> [String; 4] {
        let (half, l16) = s.split(&lane.lane, 16);
        let row = s.add(first, &l16);
        let half8 = s.mul_c(&half, 8);
        let p = self.address(s, &row, &half8);
        ldmatrix(s, &p, self.bytes_to(0, 16 * kk), false)
    }

    /// The A fragment of the transposed tile's 16 rows from column `16·m` at its columns
    /// (the tile's rows) `16·kk ..`: a product whose contraction runs down the tile.
    pub fn fragment_transposed(&self, s: &mut Text, lane: &Lane, m: usize, kk: usize) -> [String; 4] {
        let (matrix, r) = s.split(&lane.lane, 8);
        let (upper, right) = s.split(&matrix, 2);
        let (row8, col8) = (s.mul_c(&upper, 8), s.mul_c(&right, 8));
        let row = s.add(&row8, &r);
        let p = self.address(s, &row, &col8);
        ldmatrix(s, &p, self.bytes_to(16 * kk, 16 * m), true)
    }

    /// Stores an f32 at `(row, col)` as bf16.
    pub fn put(&self, s: &mut Text, row: &str, col: &str, x: &str) {
        let h = s.line_value(format!("arith.truncf {x} : f32 to bf16"));
        let p = self.address(s, row, col);
        s.line(format!("llvm.store {h}, {p} : bf16, !llvm.ptr<3>"));
    }

    /// Stores two f32 at `(row, col)` and `(row, col + 1)` as bf16 (`col` even).
    pub fn put_pair(&self, s: &mut Text, row: &str, col: &str, lo: &str, hi: &str) {
        let v = pack(s, lo, hi);
        let p = self.address(s, row, col);
        s.line(format!("llvm.store {v}, {p} : i32, !llvm.ptr<3>"));
    }
}

/// A shared-memory vector of `len` f32 (per-row statistics a tile's lanes read often).
#[derive(Clone, Copy)]
pub struct Floats {
    /// Byte offset in the block's shared memory.
    pub at: usize,
    pub len: usize,
}

impl Floats {
    pub fn bytes(&self) -> usize {
        self.len * 4
    }

    fn address(&self, s: &mut Text, i: &str) -> String {
        let e4 = s.mul_c(i, 4);
        let at = s.add_c(&e4, self.at as i64);
        s.line_value(format!("llvm.getelementptr %smem[{at}] : (!llvm.ptr<3>, i64) -> !llvm.ptr<3>, i8"))
    }

    /// Fills the vector from `load(i)`, the block's threads sharing the elements; the
    /// caller synchronises after.
    pub fn stage(&self, s: &mut Text, load: &dyn Fn(&mut Text, &str) -> String) {
        each_of_block(s, self.len, |s, i| {
            let x = load(s, i);
            let p = self.address(s, i);
            s.line(format!("llvm.store {x}, {p} : f32, !llvm.ptr<3>"));
        });
    }

    pub fn get(&self, s: &mut Text, i: &str) -> String {
        let p = self.address(s, i);
        s.line_value(format!("llvm.load {p} : !llvm.ptr<3> -> f32"))
    }

    pub fn set(&self, s: &mut Text, i: &str, x: &str) {
        let p = self.address(s, i);
        s.line(format!("llvm.store {x}, {p} : f32, !llvm.ptr<3>"));
    }
}

/// An m16n8 accumulator: rows `g`, `g + 8` at columns `2c, 2c + 1` of its 8 columns.
pub type Acc = [String; 4];

/// Where a product's A operand comes from: its fragment of columns `16·kk ..` for `kk`
/// (from registers, or loaded from a tile as needed).
pub type Fragments<'a> = &'a dyn Fn(&mut Text, usize) -> [String; 4];

/// Zeroed accumulators for `columns` columns.
pub fn zeros(s: &mut Text, columns: usize) -> Vec<Acc> {
    (0..columns / 8).map(|_| [(); 4].map(|_| s.f32(0.0))).collect()
}

/// `a · tileᵀ` for a warp's 16 rows of `a` against the tile's rows `first .. first + n`
/// (the product's columns, `n / 8` accumulators): `a(kk)` gives the A fragment of
/// columns `16·kk ..`, the contraction running over the tile's columns (a multiple of 32).
pub fn times_transposed(s: &mut Text, lane: &Lane, a: Fragments, tile: &Tile, first: usize, n: usize) -> Vec<Acc> {
    let mut acc = zeros(s, n);
    let (quarter, l8) = s.split(&lane.lane, 8);
    let quarter8 = s.mul_c(&quarter, 8);
    let p = tile.address(s, &l8, &quarter8);
    for kk in (0..tile.cols / 16).step_by(2) {
        let (a0, a1) = (a(s, kk), a(s, kk + 1));
        for (j, x) in acc.iter_mut().enumerate() {
            let f = ldmatrix(s, &p, tile.bytes_to(first + 8 * j, 16 * kk), false);
            *x = mma(s, &a0, &f[..2], x);
            *x = mma(s, &a1, &f[2..], x);
        }
    }
    acc
}

/// `acc += p · tile[first ..]`: `p` a warp's 16 × K product in accumulators (rounded to
/// bf16 as A fragments), the tile's K rows from `first` the contraction, its columns
/// `acc`'s (a multiple of 16).
pub fn accumulate(s: &mut Text, lane: &Lane, p: &[Acc], tile: &Tile, first: usize, acc: &mut [Acc]) {
    let packed = |s: &mut Text, kk: usize| {
        let (lo, hi) = (&p[2 * kk], &p[2 * kk + 1]);
        [pack(s, &lo[0], &lo[1]), pack(s, &lo[2], &lo[3]), pack(s, &hi[0], &hi[1]), pack(s, &hi[2], &hi[3])]
    };
    product(s, lane, &packed, p.len() / 2, tile, first, acc);
}

/// `acc += a · tile[first ..]`: `a(kk)` the A fragment of a warp's 16 rows at columns
/// `16·kk ..` for `kk < k_tiles`, the tile's `16·k_tiles` rows from `first` the
/// contraction, its columns `acc`'s (a multiple of 16).
pub fn product(s: &mut Text, lane: &Lane, a: Fragments, k_tiles: usize, tile: &Tile, first: usize, acc: &mut [Acc]) {
    let (half, l16) = s.split(&lane.lane, 16);
    let half8 = s.mul_c(&half, 8);
    let at = tile.address(s, &l16, &half8);
    for kk in 0..k_tiles {
        let a = a(s, kk);
        for g in (0..acc.len()).step_by(2) {
            let f = ldmatrix(s, &at, tile.bytes_to(first + 16 * kk, 8 * g), true);
            acc[g] = mma(s, &a, &f[..2], &acc[g]);
            acc[g + 1] = mma(s, &a, &f[2..], &acc[g + 1]);
        }
    }
}

/// `acc[m] += a(m, ·) · tile[.., col .. col + 8]` for a warp's eight columns from `col`
/// (an `i64` value): `a(m, kk)` the A fragment of rows `16·m ..` at columns `16·kk ..`, the
/// tile's rows the contraction (a multiple of 32), one accumulator per 16 rows.
pub fn columns_product(
    s: &mut Text,
    lane: &Lane,
    a: &dyn Fn(&mut Text, usize, usize) -> [String; 4],
    tile: &Tile,
    col: &str,
    acc: &mut [Acc],
) {
    let at = tile.address(s, &lane.lane, col);
    for kp in 0..tile.rows / 32 {
        let f = ldmatrix(s, &at, tile.bytes_to(32 * kp, 0), true);
        for (m, x) in acc.iter_mut().enumerate() {
            let (a0, a1) = (a(s, m, 2 * kp), a(s, m, 2 * kp + 1));
            *x = mma(s, &a0, &f[..2], x);
            *x = mma(s, &a1, &f[2..], x);
        }
    }
}

/// The two rows (`g`, `g + 8`) of the lane's accumulators, as time steps, for the warp's
/// 16 rows of a tile from `first`.
pub fn lane_rows(s: &mut Text, lane: &Lane, first: &str) -> [String; 2] {
    let warp_first = s.mul_c(&lane.warp, 16);
    let at = s.add(first, &warp_first);
    let row = s.add(&at, &lane.g);
    let below = s.add_c(&row, 8);
    [row, below]
}

/// The column of element `e` of accumulator `j` for the lane, counting from `first`.
pub fn column(s: &mut Text, lane: &Lane, first: &str, j: usize, e: usize) -> String {
    let c2 = s.mul_c(&lane.c, 2);
    let at = s.add(first, &c2);
    s.add_c(&at, (8 * j + e % 2) as i64)
}

/// `ldmatrix.x4` from `p` plus `bytes` (a constant: a lane computes one address per tile).
fn ldmatrix(s: &mut Text, p: &str, bytes: usize, transpose: bool) -> [String; 4] {
    let at = s.line_value(format!("llvm.getelementptr {p}[{bytes}] : (!llvm.ptr<3>) -> !llvm.ptr<3>, i8"));
    let layout = if transpose { "col" } else { "row" };
    let frag = s.line_value(format!(
        "nvvm.ldmatrix {at} {{num = 4 : i32, layout = #nvvm.mma_layout<{layout}>, shape = #nvvm.ld_st_matrix_shape<m = 8, n = 8>, eltType = #nvvm.ld_st_matrix_elt_type<b16>}} : (!llvm.ptr<3>) -> {X4}"
    ));
    [0, 1, 2, 3].map(|k| s.line_value(format!("llvm.extractvalue {frag}[{k}] : {X4}")))
}

const X4: &str = "!llvm.struct<(i32, i32, i32, i32)>";
const F4: &str = "!llvm.struct<(f32, f32, f32, f32)>";

/// `c + a·b` for one m16n8k16 tile: `a` four `i32`, `b` two, `c` four f32.
pub fn mma(s: &mut Text, a: &[String], b: &[String], c: &[String]) -> Acc {
    let d = s.line_value(format!(
        "nvvm.mma.sync A[{}] B[{}] C[{}] {{layoutA = #nvvm.mma_layout<row>, layoutB = #nvvm.mma_layout<col>, multiplicandAPtxType = #nvvm.mma_type<bf16>, multiplicandBPtxType = #nvvm.mma_type<bf16>, shape = #nvvm.shape<m = 16, n = 8, k = 16>}} : (i32, i32, f32) -> {F4}",
        a.join(", "),
        b.join(", "),
        c.join(", ")
    ));
    [0, 1, 2, 3].map(|k| s.line_value(format!("llvm.extractvalue {d}[{k}] : {F4}")))
}

/// Two f32 rounded to bf16 and packed in an `i32`, `lo` in the low half (an operand pair).
pub fn pack(s: &mut Text, lo: &str, hi: &str) -> String {
    let l = s.line_value(format!("arith.truncf {lo} : f32 to bf16"));
    let h = s.line_value(format!("arith.truncf {hi} : f32 to bf16"));
    let v = s.line_value(format!("vector.from_elements {l}, {h} : vector<2xbf16>"));
    s.line_value(format!("llvm.bitcast {v} : vector<2xbf16> to i32"))
}

/// `combine` of `x` over the four lanes of a quad (the lanes sharing accumulator rows).
pub fn quad(s: &mut Text, x: &str, combine: &str) -> String {
    shuffle(s, x, combine, &[1, 2])
}

/// The sum of `x` over the lanes that differ in the bits of `offsets` (`[1, 2]` a quad,
/// `[4, 8, 16]` the lanes of an accumulator column, all five the warp).
pub fn shuffle_sum(s: &mut Text, x: &str, offsets: &[i32]) -> String {
    shuffle(s, x, "addf", offsets)
}

/// `x` of the lane `offset` below (a lane below `offset` gets its own back).
pub fn shuffle_up(s: &mut Text, x: &str, offset: i32) -> String {
    let (all, none) = (s.line_value("arith.constant -1 : i32".into()), s.line_value("arith.constant 0 : i32".into()));
    let o = s.line_value(format!("arith.constant {offset} : i32"));
    s.line_value(format!("nvvm.shfl.sync up {all}, {x}, {o}, {none} : f32 -> f32"))
}

fn shuffle(s: &mut Text, x: &str, combine: &str, offsets: &[i32]) -> String {
    let (all, clamp) = (s.line_value("arith.constant -1 : i32".into()), s.line_value("arith.constant 31 : i32".into()));
    let mut v = x.to_string();
    for offset in offsets {
        let o = s.line_value(format!("arith.constant {offset} : i32"));
        let other = s.line_value(format!("nvvm.shfl.sync bfly {all}, {v}, {o}, {clamp} : f32 -> f32"));
        v = s.float(combine, &v, &other);
    }
    v
}

/// `2^x` by the special-function unit (`ex2.approx`; 2^−∞ = 0): softmax in base 2.
pub fn exp2(s: &mut Text, x: &str) -> String {
    s.line_value(format!(
        "llvm.inline_asm asm_dialect = att \"ex2.approx.ftz.f32 $0, $1;\", \"=f,f\" {x} : (f32) -> f32"
    ))
}

/// `body(e)` for `e < count`, the block's threads sharing the elements.
pub fn each_of_block(s: &mut Text, count: usize, body: impl FnOnce(&mut Text, &str)) {
    let (end, step) = (s.i64(count as i64), s.i64(THREADS as i64));
    let e = s.fresh();
    s.line(format!("scf.for {e} = %tid to {end} step {step} : i64 {{"));
    s.nest(|s| body(s, &e));
    s.line("}");
}

/// Waits for every thread of the block.
pub fn barrier(s: &mut Text) {
    s.line("gpu.barrier");
}

/// The lane, its quad row `g = lane / 4` and column pair `c = lane % 4`, and the warp.
pub struct Lane {
    pub warp: String,
    pub lane: String,
    pub g: String,
    pub c: String,
}

impl Lane {
    pub fn new(s: &mut Text) -> Lane {
        let (warp, lane) = s.split("%tid", 32);
        let (g, c) = s.split(&lane, 4);
        Lane { warp, lane, g, c }
    }
}
