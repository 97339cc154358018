//! The generator: writes one MLIR function per loop nest of a kernel body, by walking the
//! body from each output back to the inputs.
//!
//! A value is asked for at an index (an expression in the nest's loop variables) and is
//! computed once, in the outermost loop where it is invariant: a row's RMS or maximum
//! lands before the loop over the row's elements, a scalar input is read once per call.
//! Pointwise primitives compute their inputs at broadcast indices, views compute them at
//! remapped indices (nothing is copied), a reduction is a loop with an accumulator. Inputs
//! and outputs are strided views (base pointer plus runtime strides), so any layout —
//! transposed, sliced, broadcast with stride 0 — is read and written where it lies.
//!
//! The same walk serves both targets. On the CPU a nest's function runs a range of rows,
//! so threads share the rows. On the GPU a nest with reductions gives each row to a warp:
//! lanes split the row's elements and its reductions, which finish with a butterfly of
//! warp shuffles. Rows whose reductions are longer than [`BLOCK_ROW`] get a whole block
//! instead: each warp's butterfly result goes through shared memory, and every thread
//! combines the warps' partials in the same order, so the block agrees on the result. A
//! nest without reductions gives each element to a thread; where the inner size allows,
//! a thread takes 16 bytes of every view at once (`vector_nest`), behind a uniform
//! run-time check of the pointers and strides, with the scalar loop as the other branch.
//! All loop grid-stride, so any launch size covers the nest.
//!
//! Views hold f32 or bf16 ([`Storage`]); the math is f32 either way. A bf16 element is
//! widened on load and rounded to nearest even on store: on the GPU by the hardware's
//! conversions, on the CPU by integer bit operations (x86 without AVX-512 BF16 would
//! otherwise call a runtime library function).

use super::body::{node_name, Body, Nest, Storage};
use super::index::{delinearise, linearise, Atom, Ix, Var};
use super::math::Func;
use super::CodegenError;
use crate::ir::{NodeId, Op};
use crate::ops::{Binary, Prim, Reduce, ReduceOp, Unary};
use hyb_dsl::value::DType;
use std::collections::{BTreeSet, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Cpu,
    Gpu,
}

/// How a nest reads one of the kernel's inputs, which decides whether an output may be
/// written over it in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Unread,
    /// Only element `i` while computing output element `i`.
    OwnIndex,
    /// At other indices too (a row reduction, a broadcast).
    Elsewhere,
}

/// How a nest's iterations are shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// A range of rows per call (the CPU).
    Range,
    /// A row per warp (the GPU, nests with reductions).
    Warps,
    /// An element per thread (the GPU, pointwise nests).
    Threads,
    /// A row per block (the GPU, nests with reductions longer than [`BLOCK_ROW`]).
    Blocks,
}

/// Reductions longer than this get a block per row on the GPU: a warp's 32 lanes would
/// each walk more than 64 elements, and a row per warp leaves most of the H200's
/// warps idle when rows are few (a cross-entropy row over the vocabulary, RMSNorm at
/// d = 4096).
pub const BLOCK_ROW: usize = 2048;

/// The block size the GPU launcher should use. The code reads the block size at run time,
/// so any whole number of warps up to 1024 is correct.
pub const BLOCK_THREADS: usize = 256;

/// The bytes a thread moves per view in the GPU's vector path.
const VECTOR_BYTES: usize = 16;

/// The shared memory of a block reduction: one partial per warp of the largest block.
const SHARED: &str = "memref<32xf32, #gpu.address_space<workgroup>>";

/// One nest's function.
pub struct NestCode {
    pub symbol: String,
    pub text: String,
    pub rows: Rows,
    /// Iterations the function's outer loop covers (rows, or elements for `Threads`).
    pub iterations: usize,
    /// Per kernel input.
    pub access: Vec<Access>,
    pub uses: BTreeSet<Func>,
    /// Elements a thread takes in the vector path (`Threads` nests), 1 without one.
    pub vector_width: usize,
    /// Bytes of shared memory the function declares (block reductions).
    pub shared_bytes: usize,
}

/// Nests with fewer rows than this whose reductions a lane would run alone (a reduction
/// per element of the row, not one per row) take an element per warp or block instead: a
/// gradient summed into a few dozen elements would otherwise keep a few dozen lanes busy
/// and the GPU idle.
const FEW_ROWS: usize = 1024;

/// Lanes of a warp.
const WARP: usize = 32;

/// Output elements from which a nest of few rows whose lanes would reduce alone gives each
/// element a thread: enough threads to keep the GPU's memory busy.
const COLUMN_THREADS: usize = 4096;

/// Writes nest `which` of `body` for `target`, as function `symbol`.
pub fn nest(body: &Body, which: usize, target: Target, symbol: &str) -> Result<NestCode, CodegenError> {
    let nest = &body.nests[which];
    let rows = match (target, longest_reduction(body, nest)) {
        (Target::Cpu, _) => Rows::Range,
        (Target::Gpu, None) => Rows::Threads,
        (Target::Gpu, Some(n)) if n > BLOCK_ROW => Rows::Blocks,
        (Target::Gpu, Some(_)) => Rows::Warps,
    };
    let (code, sequential) = write_nest(body, nest, target, rows, symbol, false)?;
    if sequential && nest.rows() < FEW_ROWS {
        // Consecutive output elements along a wide last axis (a column sum's columns) read
        // neighbouring elements at every step of their reductions: a thread each keeps the
        // reads together. Otherwise a warp or block per element shares its reductions.
        let columns = nest.inner() >= WARP && nest.rows() * nest.inner() >= COLUMN_THREADS;
        let (rows, element_rows) = if columns { (Rows::Threads, false) } else { (rows, true) };
        return Ok(write_nest(body, nest, target, rows, symbol, element_rows)?.0);
    }
    Ok(code)
}

/// The nest's function with its iterations shared out as `rows` says (with
/// `element_rows`, every output element a row), and whether a lane runs some reduction
/// alone.
fn write_nest(
    body: &Body,
    nest: &Nest,
    target: Target,
    rows: Rows,
    symbol: &str,
    element_rows: bool,
) -> Result<(NestCode, bool), CodegenError> {
    let mut w = Writer {
        body,
        target,
        rows,
        stack: vec![Scope::new(String::new(), vec![], false)],
        next: 0,
        vars: Vec::new(),
        floor: 0,
        uses: BTreeSet::new(),
        access: vec![Access::Unread; body.inputs.len()],
        nest_index: Vec::new(),
        lane: None,
        lane_step: None,
        block: None,
        shared: false,
        vector: None,
        element_rows,
        sequential: false,
    };
    let pointwise = longest_reduction(body, nest).is_none();
    let width = if rows == Rows::Threads && pointwise { vector_width(body, nest) } else { None };
    let vectorised = match width {
        Some(width) => w.vector_nest(nest, width),
        None => None,
    };
    let vector_width = match vectorised {
        Some(_) => width.unwrap_or(1),
        None => 1,
    };
    if vectorised.is_some() {
        w.open(String::new(), vec![], false);
    }
    let iterations = w.scalar_nest(nest)?;
    if let Some((aligned, then)) = vectorised {
        let otherwise = w.stack.pop().expect("the scalar branch");
        let lines = &mut w.stack[0].lines;
        lines.push(format!("scf.if {aligned} {{"));
        lines.extend(then.lines.into_iter().map(|l| format!("  {l}")));
        lines.push("} else {".into());
        lines.extend(otherwise.lines.into_iter().map(|l| format!("  {l}")));
        lines.push("}".into());
    }
    let ret = match target {
        Target::Cpu => "return",
        Target::Gpu => "gpu.return",
    };
    w.stack[0].lines.push(ret.to_string());
    let signature = w.signature(symbol);
    let mut text = format!("  {signature} {{\n");
    for l in &w.stack[0].lines {
        text.push_str("    ");
        text.push_str(l);
        text.push('\n');
    }
    text.push_str("  }\n");
    let code = NestCode {
        symbol: symbol.to_string(),
        text,
        rows,
        iterations,
        access: w.access,
        uses: w.uses,
        vector_width,
        shared_bytes: if w.shared { 32 * 4 } else { 0 },
    };
    Ok((code, w.sequential))
}

/// The elements a thread of a pointwise nest takes at once: 16 bytes of its narrowest
/// view, when the inner size is a multiple of that and at least two of them.
fn vector_width(body: &Body, nest: &Nest) -> Option<usize> {
    let narrowest = body.storage.iter().map(|s| s.bytes()).min()?;
    let width = VECTOR_BYTES / narrowest;
    (!nest.shape.is_empty() && nest.inner().is_multiple_of(width) && nest.inner() >= 2 * width).then_some(width)
}

/// The longest reduced axis among the reductions the nest's outputs reach.
fn longest_reduction(body: &Body, nest: &Nest) -> Option<usize> {
    let g = body.graph;
    let mut seen = vec![false; g.nodes.len()];
    let mut todo: Vec<NodeId> = nest.outputs.iter().map(|&o| g.outputs[o]).collect();
    let mut longest = None;
    while let Some(n) = todo.pop() {
        if std::mem::replace(&mut seen[n], true) {
            continue;
        }
        if let Op::Prim(Prim::Reduce(r)) = &g.nodes[n].op {
            let extent = |m: NodeId| {
                let Op::Prim(Prim::Reduce(rm)) = &g.nodes[m].op else { return 1 };
                let x = &body.shapes[g.nodes[m].inputs[0]];
                x.get(rm.axis_of(x.len())).copied().unwrap_or(1)
            };
            longest = longest.max(Some(chain(g, n, r).into_iter().map(extent).product()));
        }
        todo.extend(&g.nodes[n].inputs);
    }
    longest
}

/// `node` (a reduction `r`) and the reductions of the same kind (sum or maximum) it
/// reduces directly, outermost first: on the GPU one loop takes them together, and
/// `reductions` factors them as one.
pub(super) fn chain(g: &crate::ir::Graph, node: NodeId, r: &Reduce) -> Vec<NodeId> {
    let mut chain = vec![node];
    if !matches!(r.op, ReduceOp::Sum | ReduceOp::Max) {
        return chain;
    }
    loop {
        let x = g.nodes[*chain.last().expect("a reduction")].inputs[0];
        match &g.nodes[x].op {
            Op::Prim(Prim::Reduce(inner)) if inner.op == r.op => chain.push(x),
            _ => return chain,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Value(NodeId, Vec<Ix>),
    Index(Ix, Int),
    /// A loop variable's 32-bit value.
    Narrow(usize),
    Base(usize),
    /// A 16-byte vector of view `k` starting at the index.
    Vector(usize, Vec<Ix>),
    Stride(usize, usize),
    F32(u32),
    I64(i64),
    I32(i32),
}

/// A region being written: its lines, the loop variables it binds and the values computed
/// in it (visible to the regions nested in it).
struct Scope {
    header: String,
    lines: Vec<String>,
    binds: Vec<usize>,
    memo: HashMap<Key, String>,
    /// Reductions placed here split over the warp's lanes.
    lane_split: bool,
}

impl Scope {
    fn new(header: String, binds: Vec<usize>, lane_split: bool) -> Scope {
        Scope { header, lines: Vec::new(), binds, memo: HashMap::new(), lane_split }
    }
}

struct Writer<'a, 'g> {
    body: &'a Body<'g>,
    target: Target,
    rows: Rows,
    stack: Vec<Scope>,
    next: usize,
    /// SSA names of the loop variables, by id.
    vars: Vec<String>,
    /// The outermost scope computed values may go to (the GPU computes per row).
    floor: usize,
    uses: BTreeSet<Func>,
    access: Vec<Access>,
    nest_index: Vec<Ix>,
    /// Every output element is a row (a warp's or block's lanes share its reductions).
    element_rows: bool,
    /// Set when a lane of a warp or block runs a reduction alone.
    sequential: bool,
    /// This thread's place in its warp or block, and the step between lanes.
    lane: Option<String>,
    lane_step: Option<String>,
    block: Option<BlockIds>,
    /// Whether the function uses the shared memory of block reductions.
    shared: bool,
    vector: Option<VectorPath>,
}

/// The width index arithmetic runs in.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Int {
    I32,
    I64,
}

impl Int {
    fn mlir(self) -> &'static str {
        match self {
            Int::I32 => "i32",
            Int::I64 => "i64",
        }
    }
}

/// A thread's warp within its block, its lane within the warp and the block's warps.
#[derive(Clone)]
struct BlockIds {
    warp: String,
    lane: String,
    warps: String,
}

/// The vector path being written: loop variable `group` numbers the `width`-element
/// groups of a row, and `views` collects the views read or written as vectors, whose
/// alignment the run-time check tests.
struct VectorPath {
    group: Var,
    views: BTreeSet<usize>,
    /// Per vector loaded (view and first element), the lanes of it read: the path pays
    /// only where every vector is read whole.
    lanes_read: HashMap<(usize, Vec<Ix>), BTreeSet<i64>>,
    /// Cleared when a view is read in a way the path cannot (its last axis not in whole
    /// vectors).
    feasible: bool,
}

impl Writer<'_, '_> {
    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%v{}", self.next)
    }

    fn emit(&mut self, line: String) {
        self.stack.last_mut().expect("a scope").lines.push(line);
    }

    fn new_var(&mut self, extent: usize) -> Var {
        let id = self.vars.len();
        self.vars.push(format!("%i{id}"));
        Var { id, extent: extent as u64 }
    }

    fn var(&self, v: &Var) -> String {
        self.vars[v.id].clone()
    }

    fn open(&mut self, header: String, binds: Vec<usize>, lane_split: bool) {
        self.stack.push(Scope::new(header, binds, lane_split));
    }

    /// Ends the innermost region, writing it into its parent.
    fn close(&mut self, footer: &[&str]) {
        let s = self.stack.pop().expect("an open scope");
        let parent = self.stack.last_mut().expect("a parent scope");
        parent.lines.push(s.header);
        parent.lines.extend(s.lines.into_iter().map(|l| format!("  {l}")));
        parent.lines.extend(footer.iter().map(|l| l.to_string()));
    }

    /// Runs `f` with scope `level` innermost, so what it writes lands there (before the
    /// loops nested in it, which are written into it when they close).
    fn at<R>(&mut self, level: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        let inner = self.stack.split_off(level + 1);
        let r = f(self);
        debug_assert_eq!(self.stack.len(), level + 1, "balanced scopes");
        self.stack.extend(inner);
        r
    }

    fn lookup(&self, key: &Key) -> Option<String> {
        self.stack.iter().rev().find_map(|s| s.memo.get(key).cloned())
    }

    /// The innermost open scope binding one of `deps`, or the floor.
    fn level_for(&self, deps: &BTreeSet<usize>) -> usize {
        let bound = self.stack.iter().rposition(|s| s.binds.iter().any(|b| deps.contains(b))).unwrap_or(0);
        bound.max(self.floor.min(self.stack.len() - 1))
    }

    fn cached(&mut self, level: usize, key: Key, f: impl FnOnce(&mut Self) -> String) -> String {
        if let Some(v) = self.lookup(&key) {
            return v;
        }
        let v = self.at(level, f);
        self.stack[level].memo.insert(key, v.clone());
        v
    }
}

/// Constants, indices and the views' pointers and strides.
impl Writer<'_, '_> {
    fn f32(&mut self, c: f32) -> String {
        self.cached(0, Key::F32(c.to_bits()), |w| {
            let v = w.fresh();
            w.emit(format!("{v} = arith.constant 0x{:08X} : f32", c.to_bits()));
            v
        })
    }

    fn i64(&mut self, c: i64) -> String {
        self.cached(0, Key::I64(c), |w| {
            let v = w.fresh();
            w.emit(format!("{v} = arith.constant {c} : i64"));
            v
        })
    }

    fn i32(&mut self, c: i32) -> String {
        self.cached(0, Key::I32(c), |w| {
            let v = w.fresh();
            w.emit(format!("{v} = arith.constant {c} : i32"));
            v
        })
    }

    /// An index expression as an `i64`, computed where its variables are bound: in 32
    /// bits and then widened where it divides and [fits](Ix::fits_32_bits).
    fn index(&mut self, e: &Ix) -> String {
        self.index_in(e, Int::I64)
    }

    fn index_in(&mut self, e: &Ix, ty: Int) -> String {
        if let Some(c) = e.as_constant() {
            return match ty {
                Int::I32 => self.i32(c as i32),
                Int::I64 => self.i64(c),
            };
        }
        let mut deps = BTreeSet::new();
        e.vars(&mut deps);
        let level = self.level_for(&deps);
        self.cached(level, Key::Index(e.clone(), ty), |w| {
            if ty == Int::I64 && e.divides() && e.fits_32_bits() {
                let (narrow, wide) = (w.index_in(e, Int::I32), w.fresh());
                w.emit(format!("{wide} = arith.extui {narrow} : i32 to i64"));
                return wide;
            }
            let width = ty.mlir();
            let mut sum: Option<String> = None;
            for (c, atom) in &e.terms {
                let a = match atom {
                    Atom::Var(v) if ty == Int::I32 => w.narrow_var(v),
                    Atom::Var(v) => w.var(v),
                    Atom::Div(x, d) => w.int_op("arith.divui", x, *d, ty),
                    Atom::Rem(x, m) => w.int_op("arith.remui", x, *m, ty),
                };
                let term = if *c == 1 {
                    a
                } else {
                    let k = w.index_in(&Ix::constant(*c), ty);
                    let t = w.fresh();
                    w.emit(format!("{t} = arith.muli {a}, {k} : {width}"));
                    t
                };
                sum = Some(match sum {
                    None => term,
                    Some(s) => {
                        let t = w.fresh();
                        w.emit(format!("{t} = arith.addi {s}, {term} : {width}"));
                        t
                    }
                });
            }
            let sum = sum.expect("a non-constant index has terms");
            if e.constant == 0 {
                return sum;
            }
            let k = w.index_in(&Ix::constant(e.constant), ty);
            let t = w.fresh();
            w.emit(format!("{t} = arith.addi {sum}, {k} : {width}"));
            t
        })
    }

    /// Loop variable `v` truncated to 32 bits (its extent fits), once where it is bound.
    fn narrow_var(&mut self, v: &Var) -> String {
        let level = self.level_for(&BTreeSet::from([v.id]));
        self.cached(level, Key::Narrow(v.id), |w| {
            let (wide, narrow) = (w.var(v), w.fresh());
            w.emit(format!("{narrow} = arith.trunci {wide} : i64 to i32"));
            narrow
        })
    }

    fn int_op(&mut self, op: &str, x: &Ix, k: u64, ty: Int) -> String {
        let a = self.index_in(x, ty);
        let k = self.index_in(&Ix::constant(k as i64), ty);
        let t = self.fresh();
        self.emit(format!("{t} = {op} {a}, {k} : {}", ty.mlir()));
        t
    }

    /// View `k`'s base pointer (inputs, then outputs).
    fn base(&mut self, k: usize) -> String {
        match self.target {
            Target::Gpu => format!("%p{k}"),
            Target::Cpu => self.cached(0, Key::Base(k), |w| {
                let (a, v) = (w.fresh(), w.fresh());
                w.emit(format!("{a} = llvm.getelementptr %ptrs[{k}] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr"));
                w.emit(format!("{v} = llvm.load {a} : !llvm.ptr -> !llvm.ptr"));
                v
            }),
        }
    }

    /// The stride of axis `d` of view `k`, in elements.
    fn stride(&mut self, k: usize, d: usize) -> String {
        match self.target {
            Target::Gpu => format!("%s{k}_{d}"),
            Target::Cpu if self.body.unit_last[k] && d + 1 == self.body.view_ranks()[k] => self.i64(1),
            Target::Cpu => {
                let slot = self.body.view_ranks()[..k].iter().sum::<usize>() + d;
                self.cached(0, Key::Stride(k, d), |w| {
                    let (a, v) = (w.fresh(), w.fresh());
                    w.emit(format!("{a} = llvm.getelementptr %strides[{slot}] : (!llvm.ptr) -> !llvm.ptr, i64"));
                    w.emit(format!("{v} = llvm.load {a} : !llvm.ptr -> i64"));
                    v
                })
            }
        }
    }

    /// The address of element `idx` of view `k`.
    fn element(&mut self, k: usize, idx: &[Ix]) -> String {
        let mut offset: Option<String> = None;
        for (d, e) in idx.iter().enumerate() {
            if e.as_constant() == Some(0) {
                continue;
            }
            let i = self.index(e);
            let s = self.stride(k, d);
            let t = self.fresh();
            self.emit(format!("{t} = arith.muli {i}, {s} : i64"));
            offset = Some(match offset {
                None => t,
                Some(o) => {
                    let u = self.fresh();
                    self.emit(format!("{u} = arith.addi {o}, {t} : i64"));
                    u
                }
            });
        }
        let base = self.base(k);
        let Some(offset) = offset else { return base };
        let p = self.fresh();
        let ty = self.memory_type(self.body.storage[k]);
        self.emit(format!("{p} = llvm.getelementptr {base}[{offset}] : (!llvm.ptr, i64) -> !llvm.ptr, {ty}"));
        p
    }

    /// How an element of `storage` is loaded and stored: bf16 as its bits on the CPU.
    fn memory_type(&self, storage: Storage) -> &'static str {
        match (storage, self.target) {
            (Storage::Bf16, Target::Cpu) => "i16",
            (s, _) => s.mlir(),
        }
    }

    /// `n` elements of `ty` (a vector for more than one).
    fn typed(ty: &str, n: usize) -> String {
        if n == 1 {
            ty.to_string()
        } else {
            format!("vector<{n}x{ty}>")
        }
    }

    /// `raw`, `n` elements loaded from a view of `storage`, as f32.
    fn widen(&mut self, raw: String, storage: Storage, n: usize) -> String {
        let t = self.fresh();
        match (storage, self.target) {
            (Storage::F32, _) => return raw,
            (Storage::Bf16, Target::Gpu) => {
                self.emit(format!("{t} = arith.extf {raw} : {} to {}", Self::typed("bf16", n), Self::typed("f32", n)))
            }
            (Storage::Bf16, Target::Cpu) => {
                let (wide, high) = (self.fresh(), self.fresh());
                let sixteen = self.i32(16);
                self.emit(format!("{wide} = arith.extui {raw} : i16 to i32"));
                self.emit(format!("{high} = arith.shli {wide}, {sixteen} : i32"));
                self.emit(format!("{t} = arith.bitcast {high} : i32 to f32"));
            }
        }
        t
    }

    /// `n` f32 values as a view of `storage` stores them, rounded to nearest even.
    fn narrow(&mut self, value: String, storage: Storage, n: usize) -> String {
        match (storage, self.target) {
            (Storage::F32, _) => value,
            (Storage::Bf16, Target::Gpu) => {
                let t = self.fresh();
                self.emit(format!(
                    "{t} = arith.truncf {value} : {} to {}",
                    Self::typed("f32", n),
                    Self::typed("bf16", n)
                ));
                t
            }
            (Storage::Bf16, Target::Cpu) => {
                let rounded = self.call(Func::RoundBf16, &value);
                let (bits, high, t) = (self.fresh(), self.fresh(), self.fresh());
                let sixteen = self.i32(16);
                self.emit(format!("{bits} = arith.bitcast {rounded} : f32 to i32"));
                self.emit(format!("{high} = arith.shrui {bits}, {sixteen} : i32"));
                self.emit(format!("{t} = arith.trunci {high} : i32 to i16"));
                t
            }
        }
    }
}

/// Loops and the function around them.
impl Writer<'_, '_> {
    /// The nest as scalar code: a loop over rows (or elements) and, on a row, one over
    /// its elements; returns the iterations of the outer loop.
    fn scalar_nest(&mut self, nest: &Nest) -> Result<usize, CodegenError> {
        let (row_shape, inner) = match (self.rows, nest.shape.split_last()) {
            (Rows::Threads, _) | (_, None) => (nest.shape.clone(), None),
            _ if self.element_rows => (nest.shape.clone(), None),
            (_, Some((&last, lead))) => (lead.to_vec(), Some(last)),
        };
        let iterations: usize = row_shape.iter().product();
        let row = self.new_var(iterations);
        let header = self.row_loop(&row, iterations);
        self.open(header, vec![row.id], matches!(self.rows, Rows::Warps | Rows::Blocks));
        self.floor = if self.target == Target::Gpu { self.stack.len() - 1 } else { 0 };
        let row_index = delinearise(&Ix::var(row), &row_shape);
        match inner {
            Some(n) => {
                let i = self.new_var(n);
                let (lb, step) = self.lane_range();
                let header = format!("scf.for {} = {lb} to {} step {step} : i64 {{", self.var(&i), self.i64(n as i64));
                self.open(header, vec![i.id], false);
                let mut index = row_index;
                index.push(Ix::var(i));
                self.outputs(nest, index, false)?;
                self.close(&["}"]);
            }
            None => {
                let guard = matches!(self.rows, Rows::Warps | Rows::Blocks);
                self.outputs(nest, row_index, guard)?;
            }
        }
        self.close(&["}"]);
        Ok(iterations)
    }

    /// A pointwise nest with every thread taking `width` consecutive elements of a row
    /// and moving 16 bytes of each view at once: the branch taken where every view it
    /// moves so is aligned (base pointer and outer strides in whole vectors, last stride
    /// 1). Returns that condition and the branch, which the caller writes as an `scf.if`
    /// around it and the scalar code once the scalar code is written (values placed in the
    /// function's scope meanwhile must land before both). A nest that reads a view along
    /// another axis than its own last keeps the scalar code only (`None`).
    fn vector_nest(&mut self, nest: &Nest, width: usize) -> Option<(String, Scope)> {
        let (lead, groups) = (&nest.shape[..nest.shape.len() - 1], nest.inner() / width);
        let rows = nest.rows();
        let depth = self.stack.len();
        self.open(String::new(), vec![], false);
        let t = self.new_var(rows * groups);
        let header = self.row_loop(&t, rows * groups);
        self.open(header, vec![t.id], false);
        self.floor = self.stack.len() - 1;
        let (row, group) = (self.new_var(rows), self.new_var(groups));
        self.vars[row.id] = self.index(&Ix::var(t).div(groups as u64));
        self.vars[group.id] = self.index(&Ix::var(t).rem(groups as u64));
        self.stack.last_mut().expect("the loop").binds.extend([row.id, group.id]);
        self.vector = Some(VectorPath { group, views: BTreeSet::new(), lanes_read: HashMap::new(), feasible: true });
        let row_index = delinearise(&Ix::var(row), lead);
        let lanes: Vec<Vec<Ix>> = (0..width)
            .map(|l| {
                let mut index = row_index.clone();
                index.push(Ix::var(group).scale(width as i64).add(&Ix::constant(l as i64)));
                index
            })
            .collect();
        let written = self.vector_outputs(nest, &lanes);
        let path = self.vector.take().expect("the vector path");
        // A vector some of whose lanes go unread (rows read across the vector, a transpose)
        // would load more bytes than the scalar path.
        let whole = path.lanes_read.iter().all(|((k, _), lanes)| lanes.len() == self.per_vector(*k));
        if written.is_err() || !path.feasible || !whole {
            // The scalar code reports any error the walk met.
            self.stack.truncate(depth);
            return None;
        }
        self.close(&["}"]);
        let branch = self.stack.pop().expect("the branch");
        let aligned = self.aligned(&path.views);
        Some((aligned, branch))
    }

    /// Computes the nest's outputs at every lane's index and stores them 16 bytes at a time.
    fn vector_outputs(&mut self, nest: &Nest, lanes: &[Vec<Ix>]) -> Result<(), CodegenError> {
        self.nest_index = lanes[0].clone();
        let mut stores = Vec::new();
        for &o in &nest.outputs {
            let node = self.body.graph.outputs[o];
            let values = lanes.iter().map(|idx| self.value(node, idx.clone())).collect::<Result<Vec<_>, _>>()?;
            stores.push((self.body.inputs.len() + o, values));
        }
        for (k, values) in stores {
            self.vector.as_mut().expect("the vector path").views.insert(k);
            let storage = self.body.storage[k];
            let per = VECTOR_BYTES / storage.bytes();
            for (g, chunk) in values.chunks(per).enumerate() {
                let packed = self.pack(chunk);
                let stored = self.narrow(packed, storage, per);
                let p = self.element(k, &lanes[g * per]);
                let ty = Self::typed(storage.mlir(), per);
                self.emit(format!("llvm.store {stored}, {p} {{alignment = 16 : i64}} : {ty}, !llvm.ptr"));
            }
        }
        Ok(())
    }

    /// f32 scalars as one vector.
    fn pack(&mut self, values: &[String]) -> String {
        let ty = Self::typed("f32", values.len());
        let mut v = self.fresh();
        self.emit(format!("{v} = llvm.mlir.poison : {ty}"));
        for (l, x) in values.iter().enumerate() {
            let (lane, next) = (self.i32(l as i32), self.fresh());
            self.emit(format!("{next} = llvm.insertelement {x}, {v}[{lane} : i32] : {ty}"));
            v = next;
        }
        v
    }

    /// Whether every view in `views` may be moved in aligned 16-byte vectors: its base
    /// pointer is aligned, its last stride is 1 and its other strides are whole vectors.
    fn aligned(&mut self, views: &BTreeSet<usize>) -> String {
        let shapes: Vec<Vec<usize>> = self.body.input_shapes().into_iter().chain(self.body.output_shapes()).collect();
        let (zero, fifteen, one) = (self.i64(0), self.i64(15), self.i64(1));
        let mut all: Option<String> = None;
        let mut both = |w: &mut Self, c: String| {
            all = Some(match all.take() {
                None => c,
                Some(a) => {
                    let t = w.fresh();
                    w.emit(format!("{t} = arith.andi {a}, {c} : i1"));
                    t
                }
            });
        };
        for &k in views {
            let (address, low, ok) = (self.fresh(), self.fresh(), self.fresh());
            let base = self.base(k);
            self.emit(format!("{address} = llvm.ptrtoint {base} : !llvm.ptr to i64"));
            self.emit(format!("{low} = arith.andi {address}, {fifteen} : i64"));
            self.emit(format!("{ok} = arith.cmpi eq, {low}, {zero} : i64"));
            both(self, ok);
            let per = self.i64((VECTOR_BYTES / self.body.storage[k].bytes()) as i64);
            let rank = shapes[k].len();
            for d in (0..rank).filter(|&d| shapes[k][d] > 1) {
                let s = self.stride(k, d);
                let ok = self.fresh();
                if d + 1 == rank {
                    self.emit(format!("{ok} = arith.cmpi eq, {s}, {one} : i64"));
                } else {
                    let r = self.fresh();
                    self.emit(format!("{r} = arith.remsi {s}, {per} : i64"));
                    self.emit(format!("{ok} = arith.cmpi eq, {r}, {zero} : i64"));
                }
                both(self, ok);
            }
        }
        all.unwrap_or_else(|| {
            let t = self.fresh();
            self.emit(format!("{t} = arith.constant true"));
            t
        })
    }

    fn row_loop(&mut self, row: &Var, iterations: usize) -> String {
        let r = self.var(row);
        let n = self.i64(iterations as i64);
        match self.rows {
            Rows::Range => {
                let one = self.i64(1);
                format!("scf.for {r} = %begin to %end step {one} : i64 {{")
            }
            Rows::Warps | Rows::Threads | Rows::Blocks => {
                let (first, step) = self.gpu_ids();
                format!("scf.for {r} = {first} to {n} step {step} : i64 {{")
            }
        }
    }

    /// The first row or element this thread takes and the grid's stride over them; sets
    /// the lane.
    fn gpu_ids(&mut self) -> (String, String) {
        let ids: Vec<String> = ["thread_id", "block_id", "block_dim", "grid_dim"]
            .iter()
            .map(|what| {
                let (x, v) = (self.fresh(), self.fresh());
                self.emit(format!("{x} = gpu.{what} x"));
                self.emit(format!("{v} = arith.index_cast {x} : index to i64"));
                v
            })
            .collect();
        let (tid, bid, bdim, gdim) = (&ids[0], &ids[1], &ids[2], &ids[3]);
        let (base, global, threads) = (self.fresh(), self.fresh(), self.fresh());
        self.emit(format!("{base} = arith.muli {bid}, {bdim} : i64"));
        self.emit(format!("{global} = arith.addi {base}, {tid} : i64"));
        self.emit(format!("{threads} = arith.muli {gdim}, {bdim} : i64"));
        let c32 = self.i64(32);
        match self.rows {
            Rows::Threads => return (global, threads),
            Rows::Blocks => {
                let (warp, lane, warps, count) = (self.fresh(), self.fresh(), self.fresh(), self.fresh());
                self.emit(format!("{warp} = arith.divui {tid}, {c32} : i64"));
                self.emit(format!("{lane} = arith.remui {tid}, {c32} : i64"));
                self.emit(format!("{count} = arith.divui {bdim}, {c32} : i64"));
                self.emit(format!("{warps} = arith.index_cast {count} : i64 to index"));
                self.block = Some(BlockIds { warp, lane, warps });
                self.lane = Some(tid.clone());
                self.lane_step = Some(bdim.clone());
                return (bid.clone(), gdim.clone());
            }
            _ => {}
        }
        let (lane, warp, warps) = (self.fresh(), self.fresh(), self.fresh());
        self.emit(format!("{lane} = arith.remui {tid}, {c32} : i64"));
        self.emit(format!("{warp} = arith.divui {global}, {c32} : i64"));
        self.emit(format!("{warps} = arith.divui {threads}, {c32} : i64"));
        self.lane = Some(lane);
        self.lane_step = Some(c32);
        (warp, warps)
    }

    /// Where a loop over a row's elements starts and its step: every element on the CPU,
    /// this lane's share on a warp or a block.
    fn lane_range(&mut self) -> (String, String) {
        match (&self.lane, &self.lane_step, self.rows) {
            (Some(lane), Some(step), Rows::Warps | Rows::Blocks) => (lane.clone(), step.clone()),
            _ => (self.i64(0), self.i64(1)),
        }
    }

    fn signature(&self, symbol: &str) -> String {
        match self.target {
            Target::Cpu => {
                format!("func.func @{symbol}(%begin: i64, %end: i64, %ptrs: !llvm.ptr, %strides: !llvm.ptr)")
            }
            Target::Gpu => {
                let ranks = self.body.view_ranks();
                let mut params: Vec<String> = (0..ranks.len()).map(|k| format!("%p{k}: !llvm.ptr")).collect();
                for (k, &r) in ranks.iter().enumerate() {
                    params.extend((0..r).map(|d| format!("%s{k}_{d}: i64")));
                }
                let shared = if self.shared { format!(" workgroup(%shared : {SHARED})") } else { String::new() };
                format!("gpu.func @{symbol}({}){shared} kernel", params.join(", "))
            }
        }
    }

    /// Computes and stores the nest's outputs at `index`; `lane_zero` lets one lane store
    /// what the whole warp computed.
    fn outputs(&mut self, nest: &Nest, index: Vec<Ix>, lane_zero: bool) -> Result<(), CodegenError> {
        self.nest_index = index.clone();
        let mut values = Vec::new();
        for &o in &nest.outputs {
            values.push((o, self.value(self.body.graph.outputs[o], index.clone())?));
        }
        if lane_zero {
            let lane = self.lane.clone().expect("warps have lanes");
            let zero = self.i64(0);
            let first = self.fresh();
            self.emit(format!("{first} = arith.cmpi eq, {lane}, {zero} : i64"));
            self.open(format!("scf.if {first} {{"), vec![], false);
        }
        for (o, v) in values {
            let k = self.body.inputs.len() + o;
            let storage = self.body.storage[k];
            let stored = self.narrow(v, storage, 1);
            let p = self.element(k, &index);
            let ty = self.memory_type(storage);
            self.emit(format!("llvm.store {stored}, {p} : {ty}, !llvm.ptr"));
        }
        if lane_zero {
            self.close(&["}"]);
        }
        Ok(())
    }
}

/// Values.
impl Writer<'_, '_> {
    /// Node `node`'s value at `idx`, computed in the outermost scope where it is invariant.
    fn value(&mut self, node: NodeId, idx: Vec<Ix>) -> Result<String, CodegenError> {
        if let Op::Constant(c) = self.body.graph.nodes[node].op {
            return Ok(self.f32(c as f32));
        }
        let key = Key::Value(node, idx.clone());
        if let Some(v) = self.lookup(&key) {
            return Ok(v);
        }
        let mut deps = BTreeSet::new();
        for e in &idx {
            e.vars(&mut deps);
        }
        let level = self.level_for(&deps);
        let v = self.at(level, |w| w.compute(node, &idx))?;
        self.stack[level].memo.insert(key, v.clone());
        Ok(v)
    }

    fn compute(&mut self, node: NodeId, idx: &[Ix]) -> Result<String, CodegenError> {
        let g = self.body.graph;
        let n = &g.nodes[node];
        let shape = self.body.shapes[node].clone();
        let operand = |w: &mut Self, j: usize| -> Result<String, CodegenError> {
            let x = n.inputs[j];
            let at = broadcast_index(idx, &shape, &w.body.shapes[x]);
            w.value(x, at)
        };
        let p = match &n.op {
            Op::Input(_) => {
                let k = self.body.inputs.iter().position(|&i| i == node).expect("a numbered input");
                return Ok(self.load(k, idx));
            }
            Op::Prim(p) => p,
            _ => unreachable!("the body was checked"),
        };
        Ok(match p {
            Prim::Unary(u) => {
                let x = operand(self, 0)?;
                self.unary(*u, &x)
            }
            Prim::Binary(b) => {
                let (x, y) = (operand(self, 0)?, operand(self, 1)?);
                let op = match b {
                    Binary::Add => "arith.addf",
                    Binary::Sub => "arith.subf",
                    Binary::Mul => "arith.mulf",
                    Binary::Div => "arith.divf",
                    Binary::Maximum => "arith.maxnumf",
                    Binary::Minimum => "arith.minnumf",
                };
                self.op2(op, &x, &y)
            }
            Prim::Pow(pw) => {
                let x = operand(self, 0)?;
                self.pow(&x, pw.exponent.0)
            }
            Prim::Clamp(c) => {
                let x = operand(self, 0)?;
                let (lo, hi) = (self.f32(c.low.0 as f32), self.f32(c.high.0 as f32));
                let above = self.op2("arith.maxnumf", &x, &lo);
                self.op2("arith.minnumf", &above, &hi)
            }
            Prim::StopGradient(_) => operand(self, 0)?,
            Prim::OneHot(_) => {
                // Whether the id at the leading indices, as the reference reads it (truncated,
                // negative and NaN ids as 0), is the last index.
                let (last, lead) = idx.split_last().expect("one_hot's output has its depth axis");
                let id = self.value(n.inputs[0], lead.to_vec())?;
                let whole = self.intrinsic("llvm.trunc.f32", &[&id]);
                let zero = self.f32(0.0);
                let id = self.op2("arith.maxnumf", &whole, &zero);
                let at = self.index(last);
                let position = self.fresh();
                self.emit(format!("{position} = arith.sitofp {at} : i64 to f32"));
                let hit = self.compare("oeq", &id, &position);
                let (one, zero) = (self.f32(1.0), self.f32(0.0));
                self.select(&hit, &one, &zero)
            }
            Prim::Select(_) => {
                let (mask, a, b) = (operand(self, 0)?, operand(self, 1)?, operand(self, 2)?);
                let zero = self.f32(0.0);
                let picked = self.compare("ogt", &mask, &zero);
                self.select(&picked, &a, &b)
            }
            Prim::Cast(c) => {
                let x = operand(self, 0)?;
                match c.dtype {
                    DType::F64 | DType::F32 => x,
                    DType::BF16 => self.call(Func::RoundBf16, &x),
                    DType::F16 => {
                        let (h, y) = (self.fresh(), self.fresh());
                        self.emit(format!("{h} = arith.truncf {x} : f32 to f16"));
                        self.emit(format!("{y} = arith.extf {h} : f16 to f32"));
                        y
                    }
                    DType::I64 | DType::I32 | DType::I8 => self.intrinsic("llvm.trunc.f32", &[&x]),
                }
            }
            Prim::Reduce(r) => return self.reduce(node, idx, r),
            Prim::Reshape(_) => {
                let from = &self.body.shapes[n.inputs[0]];
                let at = delinearise(&linearise(idx, &shape), from);
                return self.value(n.inputs[0], at);
            }
            Prim::Permute(perm) => {
                let mut at = vec![Ix::constant(0); idx.len()];
                for (k, &d) in perm.dims.iter().enumerate() {
                    at[crate::ops::axis(d, idx.len())] = idx[k].clone();
                }
                return self.value(n.inputs[0], at);
            }
            Prim::Transpose(t) => {
                let mut at = idx.to_vec();
                at.swap(crate::ops::axis(t.dim0, idx.len()), crate::ops::axis(t.dim1, idx.len()));
                return self.value(n.inputs[0], at);
            }
            Prim::Broadcast(_) => return operand(self, 0),
            Prim::Slice(s) => {
                let start = s
                    .start
                    .eval(&self.body.symbols.binder())
                    .ok_or_else(|| CodegenError::Unbound { node, shape: s.start.to_string() })?;
                let mut at = idx.to_vec();
                let a = s.axis_of(idx.len());
                at[a] = at[a].add(&Ix::constant(start));
                return self.value(n.inputs[0], at);
            }
            other => {
                return Err(CodegenError::Unsupported {
                    node,
                    primitive: node_name(g, node),
                    why: format!("`{other:?}` has no code generator"),
                })
            }
        })
    }

    fn load(&mut self, k: usize, idx: &[Ix]) -> String {
        let own = idx == self.nest_index.as_slice();
        self.access[k] = match (self.access[k], own) {
            (Access::Unread | Access::OwnIndex, true) => Access::OwnIndex,
            _ => Access::Elsewhere,
        };
        if let Some(v) = self.vector_lane(k, idx) {
            return v;
        }
        let storage = self.body.storage[k];
        let p = self.element(k, idx);
        let v = self.fresh();
        self.emit(format!("{v} = llvm.load {p} : !llvm.ptr -> {}", self.memory_type(storage)));
        self.widen(v, storage, 1)
    }

    /// Elements of view `k` in one 16-byte vector.
    fn per_vector(&self, k: usize) -> usize {
        VECTOR_BYTES / self.body.storage[k].bytes()
    }

    /// In the vector path, element `idx` of input `k` as a lane of the aligned 16-byte
    /// vector that holds it (loaded once for all the lanes it serves). `None` where the
    /// element's place along the view's last axis does not move with the group (a
    /// broadcast, or a column: a scalar load, as the scalar path's) — and where that place
    /// is not a whole vector plus the lane's offset, which the vector path cannot take (it
    /// is then abandoned). The other axes may move with the group (a reshape that splits
    /// the row in multiples of the vector).
    fn vector_lane(&mut self, k: usize, idx: &[Ix]) -> Option<String> {
        let path = self.vector.as_ref()?;
        let group = path.group;
        let moves = |e: &Ix| {
            let mut deps = BTreeSet::new();
            e.vars(&mut deps);
            deps.contains(&group.id)
        };
        let (last, _) = idx.split_last()?;
        if !moves(last) {
            return None;
        }
        let storage = self.body.storage[k];
        let per = self.per_vector(k) as i64;
        if !last.terms.iter().all(|(c, _)| c % per == 0) {
            self.vector.as_mut().expect("the vector path").feasible = false;
            return None;
        }
        let lane = last.constant.rem_euclid(per);
        let mut start = idx.to_vec();
        start[idx.len() - 1] = last.add(&Ix::constant(-lane));
        let path = self.vector.as_mut().expect("the vector path");
        path.views.insert(k);
        path.lanes_read.entry((k, start.clone())).or_default().insert(lane);
        let mut deps = BTreeSet::new();
        start.iter().for_each(|e| e.vars(&mut deps));
        let level = self.level_for(&deps);
        let vector = self.cached(level, Key::Vector(k, start.clone()), |w| {
            let p = w.element(k, &start);
            let raw = w.fresh();
            let ty = Self::typed(storage.mlir(), per as usize);
            w.emit(format!("{raw} = llvm.load {p} {{alignment = 16 : i64}} : !llvm.ptr -> {ty}"));
            w.widen(raw, storage, per as usize)
        });
        let (at, v) = (self.i32(lane as i32), self.fresh());
        self.emit(format!("{v} = llvm.extractelement {vector}[{at} : i32] : vector<{per}xf32>"));
        Some(v)
    }

    /// A reduction loop over the reduced axis, written in the current scope; split over
    /// the lanes when the scope is a warp's row.
    ///
    /// Split over lanes, a chain of sums (or maxima) — a gradient summed over batch, time
    /// and channel — is one loop over all the chain's elements, so the lanes share all of
    /// them, not only the outermost axis's few.
    fn reduce(&mut self, node: NodeId, idx: &[Ix], r: &Reduce) -> Result<String, CodegenError> {
        let split = self.stack.last().expect("a scope").lane_split;
        self.sequential |= !split && matches!(self.rows, Rows::Warps | Rows::Blocks);
        let chain = if split { chain(self.body.graph, node, r) } else { vec![node] };
        let extents: Vec<usize> = chain
            .iter()
            .map(|&n| {
                let Op::Prim(Prim::Reduce(rn)) = &self.body.graph.nodes[n].op else {
                    unreachable!("a chain of reductions")
                };
                let xs = &self.body.shapes[self.body.graph.nodes[n].inputs[0]];
                xs[rn.axis_of(xs.len())]
            })
            .collect();
        // Where each reduction's index goes in the innermost input's index (`owner`), so
        // the loop can walk the reduced axes in that input's order, its last axis fastest:
        // neighbouring lanes then read neighbouring elements, whatever order the chain
        // summed the axes in.
        let mut at = idx.to_vec();
        let mut owner: Vec<Option<usize>> = vec![None; at.len()];
        for (k, &n) in chain.iter().enumerate() {
            let Op::Prim(Prim::Reduce(rn)) = &self.body.graph.nodes[n].op else {
                unreachable!("a chain of reductions")
            };
            let a = rn.axis_of(self.body.shapes[self.body.graph.nodes[n].inputs[0]].len());
            if rn.keepdim {
                owner[a] = Some(k);
            } else {
                at.insert(a, Ix::constant(0));
                owner.insert(a, Some(k));
            }
        }
        let reduced: Vec<(usize, usize)> =
            owner.iter().enumerate().filter_map(|(pos, k)| k.map(|k| (pos, extents[k]))).collect();
        let j = self.new_var(extents.iter().product());
        let in_order: Vec<usize> = reduced.iter().map(|&(_, e)| e).collect();
        for (&(pos, _), part) in reduced.iter().zip(delinearise(&Ix::var(j), &in_order)) {
            at[pos] = part;
        }
        let x = self.body.graph.nodes[*chain.last().expect("a reduction")].inputs[0];
        let xs = self.body.shapes[self.body.graph.nodes[node].inputs[0]].clone();
        let a = r.axis_of(xs.len());
        let init = self.f32(if r.op == ReduceOp::Max { f32::NEG_INFINITY } else { 0.0 });
        let (lb, step) = if split { self.lane_range() } else { (self.i64(0), self.i64(1)) };
        let ub = self.i64(extents.iter().product::<usize>() as i64);
        let (acc, result) = (self.fresh(), self.fresh());
        let jv = self.var(&j);
        self.open(
            format!("{result} = scf.for {jv} = {lb} to {ub} step {step} iter_args({acc} = {init}) -> (f32) : i64 {{"),
            vec![j.id],
            false,
        );
        let v = self.value(x, at)?;
        let next = self.combine(r.op, &acc, &v);
        self.close(&[&format!("  scf.yield {next} : f32"), "}"]);
        let mut total = result;
        if split {
            let width = self.i32(32);
            for offset in [16, 8, 4, 2, 1] {
                let off = self.i32(offset);
                let (other, valid) = (self.fresh(), self.fresh());
                self.emit(format!("{other}, {valid} = gpu.shuffle xor {total}, {off}, {width} : f32"));
                total = self.combine(r.op, &total, &other);
            }
            if self.rows == Rows::Blocks {
                total = self.across_warps(r.op, &total, &init);
            }
        }
        if r.op == ReduceOp::Mean {
            let n = self.f32(xs[a] as f32);
            total = self.op2("arith.divf", &total, &n);
        }
        Ok(total)
    }

    /// Combines every warp's `partial` of a block reduction through shared memory: lane 0
    /// of each warp writes its partial, and after a barrier every thread combines them all
    /// in warp order (so the whole block holds the same result); the second barrier lets
    /// the next reduction reuse the memory.
    fn across_warps(&mut self, op: ReduceOp, partial: &str, init: &str) -> String {
        let ids = self.block.clone().expect("blocks have warp ids");
        self.shared = true;
        let zero = self.i64(0);
        let (first, slot, c0, c1) = (self.fresh(), self.fresh(), self.fresh(), self.fresh());
        self.emit(format!("{first} = arith.cmpi eq, {}, {zero} : i64", ids.lane));
        self.emit(format!("{slot} = arith.index_cast {} : i64 to index", ids.warp));
        self.open(format!("scf.if {first} {{"), vec![], false);
        self.emit(format!("memref.store {partial}, %shared[{slot}] : {SHARED}"));
        self.close(&["}"]);
        self.emit("gpu.barrier".into());
        self.emit(format!("{c0} = arith.constant 0 : index"));
        self.emit(format!("{c1} = arith.constant 1 : index"));
        let (w, acc, loaded, result) = (self.fresh(), self.fresh(), self.fresh(), self.fresh());
        let warps = &ids.warps;
        self.open(
            format!("{result} = scf.for {w} = {c0} to {warps} step {c1} iter_args({acc} = {init}) -> (f32) {{"),
            vec![],
            false,
        );
        self.emit(format!("{loaded} = memref.load %shared[{w}] : {SHARED}"));
        let next = self.combine(op, &acc, &loaded);
        self.close(&[&format!("  scf.yield {next} : f32"), "}"]);
        self.emit("gpu.barrier".into());
        result
    }

    fn combine(&mut self, op: ReduceOp, acc: &str, v: &str) -> String {
        let t = self.fresh();
        match op {
            ReduceOp::Sum | ReduceOp::Mean => self.emit(format!("{t} = arith.addf {acc}, {v} fastmath<reassoc> : f32")),
            ReduceOp::Max => self.emit(format!("{t} = arith.maxnumf {acc}, {v} : f32")),
        }
        t
    }

    fn op2(&mut self, op: &str, x: &str, y: &str) -> String {
        let t = self.fresh();
        self.emit(format!("{t} = {op} {x}, {y} : f32"));
        t
    }

    fn call(&mut self, f: Func, x: &str) -> String {
        self.uses.insert(f);
        let t = self.fresh();
        self.emit(format!("{t} = func.call @{}({x}) : (f32) -> f32", f.symbol()));
        t
    }

    /// An LLVM intrinsic that both backends lower to an instruction (`math` ops and the
    /// `llvm.intr` forms lower to libdevice calls on the GPU).
    fn intrinsic(&mut self, name: &str, args: &[&str]) -> String {
        let t = self.fresh();
        let types = vec!["f32"; args.len()].join(", ");
        self.emit(format!("{t} = llvm.call_intrinsic \"{name}\"({}) : ({types}) -> f32", args.join(", ")));
        t
    }

    fn select(&mut self, cond: &str, yes: &str, no: &str) -> String {
        let t = self.fresh();
        self.emit(format!("{t} = arith.select {cond}, {yes}, {no} : f32"));
        t
    }

    fn compare(&mut self, pred: &str, x: &str, y: &str) -> String {
        let t = self.fresh();
        self.emit(format!("{t} = arith.cmpf {pred}, {x}, {y} : f32"));
        t
    }

    /// `1/(1 + e^−x)` for x ≥ 0 and `e^x/(1 + e^x)` below, so neither side overflows
    /// to 0 before its true (subnormal) value.
    fn sigmoid(&mut self, x: &str) -> String {
        let (zero, one) = (self.f32(0.0), self.f32(1.0));
        let a = self.intrinsic("llvm.fabs.f32", &[x]);
        let neg = self.fresh();
        self.emit(format!("{neg} = arith.negf {a} : f32"));
        let e = self.call(Func::Exp, &neg);
        let d = self.op2("arith.addf", &one, &e);
        let up = self.op2("arith.divf", &one, &d);
        let down = self.op2("arith.divf", &e, &d);
        let positive = self.compare("oge", x, &zero);
        let s = self.select(&positive, &up, &down);
        let is_nan = self.compare("uno", x, x);
        self.select(&is_nan, x, &s)
    }

    /// The unary functions, with the reference's meaning at special values.
    fn unary(&mut self, u: Unary, x: &str) -> String {
        match u {
            Unary::Neg => {
                let t = self.fresh();
                self.emit(format!("{t} = arith.negf {x} : f32"));
                t
            }
            Unary::Exp => self.call(Func::Exp, x),
            Unary::Log => self.call(Func::Log, x),
            Unary::Sqrt => self.intrinsic("llvm.sqrt.f32", &[x]),
            Unary::Rsqrt => {
                let s = self.intrinsic("llvm.sqrt.f32", &[x]);
                let one = self.f32(1.0);
                self.op2("arith.divf", &one, &s)
            }
            Unary::Sigmoid => self.sigmoid(x),
            Unary::Silu => {
                let s = self.sigmoid(x);
                self.op2("arith.mulf", x, &s)
            }
            Unary::Softplus => {
                let e = self.call(Func::Exp, x);
                let l = self.call(Func::Log1p, &e);
                let limit = self.f32(20.0);
                let big = self.compare("ogt", x, &limit);
                self.select(&big, x, &l)
            }
            Unary::Tanh => self.call(Func::Tanh, x),
            // ½x(1 + tanh u) = x·σ(2u), which keeps its digits where tanh u is near −1.
            Unary::Gelu => {
                let k = self.f32((2.0 / std::f64::consts::PI).sqrt() as f32);
                let c = self.f32(0.044715);
                let x2 = self.op2("arith.mulf", x, x);
                let x3 = self.op2("arith.mulf", &x2, x);
                let cx3 = self.op2("arith.mulf", &c, &x3);
                let inner = self.op2("arith.addf", x, &cx3);
                let u = self.op2("arith.mulf", &k, &inner);
                let u2 = self.op2("arith.addf", &u, &u);
                let s = self.sigmoid(&u2);
                self.op2("arith.mulf", x, &s)
            }
            Unary::Abs => self.intrinsic("llvm.fabs.f32", &[x]),
            Unary::Sign => {
                let (zero, one) = (self.f32(0.0), self.f32(1.0));
                let s = self.intrinsic("llvm.copysign.f32", &[&one, x]);
                let is_zero = self.compare("oeq", x, &zero);
                let is_nan = self.compare("uno", x, x);
                let s = self.select(&is_nan, x, &s);
                self.select(&is_zero, x, &s)
            }
            Unary::Round => self.intrinsic("llvm.roundeven.f32", &[x]),
            Unary::Step => {
                let (zero, one) = (self.f32(0.0), self.f32(1.0));
                let pos = self.compare("ogt", x, &zero);
                self.select(&pos, &one, &zero)
            }
        }
    }

    /// `x^e`: small integer powers by multiplication (negative bases stay exact), square
    /// roots exactly, the rest as `exp(e·log x)` (NaN for negative bases, as `powf`; −∞
    /// raised to a non-integer is +∞'s power).
    fn pow(&mut self, x: &str, e: f64) -> String {
        if e.fract() == 0.0 && e.abs() <= 64.0 {
            let mut n = e.abs() as u32;
            let one = self.f32(1.0);
            let (mut result, mut base) = (one.clone(), x.to_string());
            let mut first = true;
            while n > 0 {
                if n & 1 == 1 {
                    result = if first { base.clone() } else { self.op2("arith.mulf", &result, &base) };
                    first = false;
                }
                n >>= 1;
                if n > 0 {
                    base = self.op2("arith.mulf", &base, &base);
                }
            }
            return if e < 0.0 { self.op2("arith.divf", &one, &result) } else { result };
        }
        let (ninf, inf) = (self.f32(f32::NEG_INFINITY), self.f32(f32::INFINITY));
        let is_ninf = self.compare("oeq", x, &ninf);
        let x = self.select(&is_ninf, &inf, x);
        if e == 0.5 {
            return self.intrinsic("llvm.sqrt.f32", &[&x]);
        }
        let l = self.call(Func::Log, &x);
        let k = self.f32(e as f32);
        let t = self.op2("arith.mulf", &k, &l);
        self.call(Func::Exp, &t)
    }
}

/// The index of an operand of shape `from` read at index `idx` of a value of shape `to`
/// (numpy broadcasting: leading axes are missing, size-1 axes repeat).
fn broadcast_index(idx: &[Ix], to: &[usize], from: &[usize]) -> Vec<Ix> {
    let shift = to.len() - from.len();
    (0..from.len()).map(|d| if from[d] == 1 { Ix::constant(0) } else { idx[d + shift].clone() }).collect()
}
