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
//! warp shuffles; a nest without reductions gives each element to a thread. Both loop
//! grid-stride, so any launch size covers the nest.

use super::body::{node_name, Body, Nest};
use super::index::{delinearise, linearise, Ix, Var};
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
}

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
}

/// Writes nest `which` of `body` for `target`, as function `symbol`.
pub fn nest(body: &Body, which: usize, target: Target, symbol: &str) -> Result<NestCode, CodegenError> {
    let nest = &body.nests[which];
    let rows = match target {
        Target::Cpu => Rows::Range,
        Target::Gpu if reaches_reduction(body, nest) => Rows::Warps,
        Target::Gpu => Rows::Threads,
    };
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
    };
    let (row_shape, inner) = match (rows, nest.shape.split_last()) {
        (Rows::Threads, _) | (_, None) => (nest.shape.clone(), None),
        (_, Some((&last, lead))) => (lead.to_vec(), Some(last)),
    };
    let iterations: usize = row_shape.iter().product();
    let row = w.new_var(iterations);
    let header = w.row_loop(&row, iterations);
    w.open(header, vec![row.id], rows == Rows::Warps);
    w.floor = if target == Target::Gpu { 1 } else { 0 };
    let row_index = delinearise(&Ix::var(row), &row_shape);
    match inner {
        Some(n) => {
            let i = w.new_var(n);
            let (lb, step) = w.lane_range();
            let header = format!("scf.for {} = {lb} to {} step {step} : i64 {{", w.var(&i), w.i64(n as i64));
            w.open(header, vec![i.id], false);
            let mut index = row_index;
            index.push(Ix::var(i));
            w.outputs(nest, index, false)?;
            w.close(&["}"]);
        }
        None => {
            let guard = rows == Rows::Warps;
            w.outputs(nest, row_index, guard)?;
        }
    }
    w.close(&["}"]);
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
    Ok(NestCode { symbol: symbol.to_string(), text, rows, iterations, access: w.access, uses: w.uses })
}

fn reaches_reduction(body: &Body, nest: &Nest) -> bool {
    let g = body.graph;
    let mut seen = vec![false; g.nodes.len()];
    let mut todo: Vec<NodeId> = nest.outputs.iter().map(|&o| g.outputs[o]).collect();
    while let Some(n) = todo.pop() {
        if std::mem::replace(&mut seen[n], true) {
            continue;
        }
        if matches!(g.nodes[n].op, Op::Prim(Prim::Reduce(_))) {
            return true;
        }
        todo.extend(&g.nodes[n].inputs);
    }
    false
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Value(NodeId, Vec<Ix>),
    Index(Ix),
    Base(usize),
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
    lane: Option<String>,
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

    /// An index expression as an `i64`, computed where its variables are bound.
    fn index(&mut self, e: &Ix) -> String {
        if let Some(c) = e.as_constant() {
            return self.i64(c);
        }
        let mut deps = BTreeSet::new();
        e.vars(&mut deps);
        let level = self.level_for(&deps);
        self.cached(level, Key::Index(e.clone()), |w| {
            let mut sum: Option<String> = None;
            for (c, atom) in &e.terms {
                let a = match atom {
                    super::index::Atom::Var(v) => w.var(v),
                    super::index::Atom::Div(x, d) => w.int_op("arith.divui", x, *d),
                    super::index::Atom::Rem(x, m) => w.int_op("arith.remui", x, *m),
                };
                let term = if *c == 1 {
                    a
                } else {
                    let k = w.i64(*c);
                    let t = w.fresh();
                    w.emit(format!("{t} = arith.muli {a}, {k} : i64"));
                    t
                };
                sum = Some(match sum {
                    None => term,
                    Some(s) => {
                        let t = w.fresh();
                        w.emit(format!("{t} = arith.addi {s}, {term} : i64"));
                        t
                    }
                });
            }
            let sum = sum.expect("a non-constant index has terms");
            if e.constant == 0 {
                return sum;
            }
            let k = w.i64(e.constant);
            let t = w.fresh();
            w.emit(format!("{t} = arith.addi {sum}, {k} : i64"));
            t
        })
    }

    fn int_op(&mut self, op: &str, x: &Ix, k: u64) -> String {
        let a = self.index(x);
        let k = self.i64(k as i64);
        let t = self.fresh();
        self.emit(format!("{t} = {op} {a}, {k} : i64"));
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
        self.emit(format!("{p} = llvm.getelementptr {base}[{offset}] : (!llvm.ptr, i64) -> !llvm.ptr, f32"));
        p
    }
}

/// Loops and the function around them.
impl Writer<'_, '_> {
    fn row_loop(&mut self, row: &Var, iterations: usize) -> String {
        let r = self.var(row);
        let n = self.i64(iterations as i64);
        match self.rows {
            Rows::Range => {
                let one = self.i64(1);
                format!("scf.for {r} = %begin to %end step {one} : i64 {{")
            }
            Rows::Warps | Rows::Threads => {
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
        if self.rows == Rows::Threads {
            return (global, threads);
        }
        let c32 = self.i64(32);
        let (lane, warp, warps) = (self.fresh(), self.fresh(), self.fresh());
        self.emit(format!("{lane} = arith.remui {tid}, {c32} : i64"));
        self.emit(format!("{warp} = arith.divui {global}, {c32} : i64"));
        self.emit(format!("{warps} = arith.divui {threads}, {c32} : i64"));
        self.lane = Some(lane);
        (warp, warps)
    }

    /// Where a loop over a row's elements starts and its step: every element on the CPU,
    /// this lane's share on a warp.
    fn lane_range(&mut self) -> (String, String) {
        match (&self.lane, self.rows) {
            (Some(lane), Rows::Warps) => {
                let lane = lane.clone();
                (lane, self.i64(32))
            }
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
                format!("gpu.func @{symbol}({}) kernel", params.join(", "))
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
            let p = self.element(self.body.inputs.len() + o, &index);
            self.emit(format!("llvm.store {v}, {p} : f32, !llvm.ptr"));
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
        let p = self.element(k, idx);
        let v = self.fresh();
        self.emit(format!("{v} = llvm.load {p} : !llvm.ptr -> f32"));
        v
    }

    /// A reduction loop over the reduced axis, written in the current scope; split over
    /// the lanes when the scope is a warp's row.
    fn reduce(&mut self, node: NodeId, idx: &[Ix], r: &Reduce) -> Result<String, CodegenError> {
        let x = self.body.graph.nodes[node].inputs[0];
        let xs = self.body.shapes[x].clone();
        let a = r.axis_of(xs.len());
        let j = self.new_var(xs[a]);
        let mut at = idx.to_vec();
        if r.keepdim {
            at[a] = Ix::var(j);
        } else {
            at.insert(a, Ix::var(j));
        }
        let split = self.stack.last().expect("a scope").lane_split;
        let init = self.f32(if r.op == ReduceOp::Max { f32::NEG_INFINITY } else { 0.0 });
        let (lb, step) = if split { self.lane_range() } else { (self.i64(0), self.i64(1)) };
        let ub = self.i64(xs[a] as i64);
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
        }
        if r.op == ReduceOp::Mean {
            let n = self.f32(xs[a] as f32);
            total = self.op2("arith.divf", &total, &n);
        }
        Ok(total)
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
