//! A small writer of MLIR text for templates: SSA names, constants, integer and float
//! arithmetic, strided loads and stores through the views' pointers, `scf.for` loops with
//! loop-carried values, and stack arrays, so a template reads like the loop nest it is.
//!
//! Values are strings holding SSA names; integers are `i64` (indices and strides), floats
//! `f32`. View `k` is addressed through `%p{k}` and its strides `%s{k}_{d}`, which the
//! target's wrapper defines (`super::wrap`). A view's elements are stored as f32 or bf16
//! ([`Storage`]); loads and stores of views are kept apart from other lines until the body
//! is rendered for its views' storage, so one template serves every precision.

use super::super::body::Storage;
use super::super::emit::Target;
use super::super::math::Func;
use std::collections::BTreeSet;

/// A function body being written.
#[derive(Default)]
pub struct Text {
    /// Lines at the function's entry (stack arrays, so loops do not grow the stack).
    pub prologue: Vec<String>,
    lines: Vec<Line>,
    depth: usize,
    next: usize,
    pub uses: BTreeSet<Func>,
}

/// A line of the body: code, or an access to a view, whose code depends on its storage.
enum Line {
    Code(String),
    /// `dst` = element `offset` of view `view`, as f32.
    Load {
        indent: usize,
        dst: String,
        view: usize,
        offset: String,
    },
    /// Eight elements from `offset` of view `view` (unit stride) to the bf16 shared memory
    /// at `dst`: one asynchronous 16-byte copy when the view is bf16 (16-byte aligned, as
    /// the caller checked), else eight rounded loads. GPU only.
    Copy {
        indent: usize,
        id: String,
        view: usize,
        offset: String,
        dst: String,
    },
    /// Element `offset` of view `view` = `value`, rounded to the view's storage; `id` names
    /// the line's temporaries.
    Store {
        indent: usize,
        id: String,
        view: usize,
        offset: String,
        value: String,
    },
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// The body's lines for `target`, with view `k` stored as `storage[k]` (f32 where
    /// `storage` is shorter).
    pub fn lines(&self, target: Target, storage: &[Storage]) -> Vec<String> {
        let stored = |k: usize| storage.get(k).copied().unwrap_or_default();
        let mut out = Vec::with_capacity(self.lines.len());
        for line in &self.lines {
            match line {
                Line::Code(s) => out.push(s.clone()),
                Line::Load { indent, dst, view, offset } => {
                    let pad = "  ".repeat(*indent);
                    let s = stored(*view);
                    let ty = memory_type(s, target);
                    out.push(format!(
                        "{pad}{dst}_a = llvm.getelementptr %p{view}[{offset}] : (!llvm.ptr, i64) -> !llvm.ptr, {ty}"
                    ));
                    match (s, target) {
                        (Storage::F32, _) => out.push(format!("{pad}{dst} = llvm.load {dst}_a : !llvm.ptr -> f32")),
                        (Storage::Bf16, Target::Gpu) => {
                            out.push(format!("{pad}{dst}_r = llvm.load {dst}_a : !llvm.ptr -> bf16"));
                            out.push(format!("{pad}{dst} = arith.extf {dst}_r : bf16 to f32"));
                        }
                        (Storage::Bf16, Target::Cpu) => {
                            // bf16 is the high half of an f32.
                            out.push(format!("{pad}{dst}_r = llvm.load {dst}_a : !llvm.ptr -> i16"));
                            out.push(format!("{pad}{dst}_w = arith.extui {dst}_r : i16 to i32"));
                            out.push(format!("{pad}{dst}_k = arith.constant 16 : i32"));
                            out.push(format!("{pad}{dst}_h = arith.shli {dst}_w, {dst}_k : i32"));
                            out.push(format!("{pad}{dst} = arith.bitcast {dst}_h : i32 to f32"));
                        }
                    }
                }
                Line::Copy { indent, id, view, offset, dst } => {
                    assert_eq!(target, Target::Gpu, "copies to shared memory are GPU code");
                    let pad = "  ".repeat(*indent);
                    let s = stored(*view);
                    let ty = memory_type(s, target);
                    out.push(format!(
                        "{pad}{id}_a = llvm.getelementptr %p{view}[{offset}] : (!llvm.ptr, i64) -> !llvm.ptr, {ty}"
                    ));
                    match s {
                        Storage::Bf16 => {
                            out.push(format!("{pad}{id}_g = llvm.addrspacecast {id}_a : !llvm.ptr to !llvm.ptr<1>"));
                            out.push(format!(
                                "{pad}nvvm.cp.async.shared.global {dst}, {id}_g, 16, cache = cg : !llvm.ptr<3>, !llvm.ptr<1>"
                            ));
                        }
                        Storage::F32 => {
                            for i in 0..8 {
                                out.push(format!(
                                    "{pad}{id}_p{i} = llvm.getelementptr {id}_a[{i}] : (!llvm.ptr) -> !llvm.ptr, f32"
                                ));
                                out.push(format!("{pad}{id}_x{i} = llvm.load {id}_p{i} : !llvm.ptr -> f32"));
                                out.push(format!("{pad}{id}_h{i} = arith.truncf {id}_x{i} : f32 to bf16"));
                                out.push(format!(
                                    "{pad}{id}_d{i} = llvm.getelementptr {dst}[{i}] : (!llvm.ptr<3>) -> !llvm.ptr<3>, bf16"
                                ));
                                out.push(format!("{pad}llvm.store {id}_h{i}, {id}_d{i} : bf16, !llvm.ptr<3>"));
                            }
                        }
                    }
                }
                Line::Store { indent, id, view, offset, value } => {
                    let pad = "  ".repeat(*indent);
                    let s = stored(*view);
                    let ty = memory_type(s, target);
                    out.push(format!(
                        "{pad}{id}_a = llvm.getelementptr %p{view}[{offset}] : (!llvm.ptr, i64) -> !llvm.ptr, {ty}"
                    ));
                    let stored_value = match (s, target) {
                        (Storage::F32, _) => value.clone(),
                        (Storage::Bf16, Target::Gpu) => {
                            out.push(format!("{pad}{id}_v = arith.truncf {value} : f32 to bf16"));
                            format!("{id}_v")
                        }
                        (Storage::Bf16, Target::Cpu) => {
                            out.push(format!(
                                "{pad}{id}_n = func.call @{}({value}) : (f32) -> f32",
                                Func::RoundBf16.symbol()
                            ));
                            out.push(format!("{pad}{id}_b = arith.bitcast {id}_n : f32 to i32"));
                            out.push(format!("{pad}{id}_k = arith.constant 16 : i32"));
                            out.push(format!("{pad}{id}_h = arith.shrui {id}_b, {id}_k : i32"));
                            out.push(format!("{pad}{id}_v = arith.trunci {id}_h : i32 to i16"));
                            format!("{id}_v")
                        }
                    };
                    out.push(format!("{pad}llvm.store {stored_value}, {id}_a : {ty}, !llvm.ptr"));
                }
            }
        }
        out
    }

    /// The functions the body calls when rendered with `storage` on `target`.
    pub fn uses_with(&self, target: Target, storage: &[Storage]) -> BTreeSet<Func> {
        let mut uses = self.uses.clone();
        let rounds = target == Target::Cpu
            && self.lines.iter().any(|l| {
                matches!(l, Line::Store { view, .. } if storage.get(*view).copied().unwrap_or_default() == Storage::Bf16)
            });
        if rounds {
            uses.insert(Func::RoundBf16);
        }
        uses
    }

    pub fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%t{}", self.next)
    }

    pub fn line(&mut self, s: impl Into<String>) {
        let indent = "  ".repeat(self.depth);
        self.lines.push(Line::Code(format!("{indent}{}", s.into())));
    }

    fn op(&mut self, rhs: String) -> String {
        let v = self.fresh();
        self.line(format!("{v} = {rhs}"));
        v
    }

    /// A fresh value defined by `rhs`, any operation the other helpers do not name.
    pub fn line_value(&mut self, rhs: String) -> String {
        self.op(rhs)
    }

    pub fn i64(&mut self, c: i64) -> String {
        self.op(format!("arith.constant {c} : i64"))
    }

    pub fn f32(&mut self, c: f32) -> String {
        self.op(format!("arith.constant 0x{:08X} : f32", c.to_bits()))
    }

    /// An integer operation (`addi`, `muli`, `subi`, `divui`, `remui`, `minsi`, `maxsi`).
    pub fn int(&mut self, op: &str, a: &str, b: &str) -> String {
        self.op(format!("arith.{op} {a}, {b} : i64"))
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.int("addi", a, b)
    }

    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.int("muli", a, b)
    }

    /// `a + c` for a constant `c`.
    pub fn add_c(&mut self, a: &str, c: i64) -> String {
        if c == 0 {
            return a.to_string();
        }
        let k = self.i64(c);
        self.add(a, &k)
    }

    /// `a · c` for a constant `c`.
    pub fn mul_c(&mut self, a: &str, c: i64) -> String {
        if c == 1 {
            return a.to_string();
        }
        let k = self.i64(c);
        self.mul(a, &k)
    }

    /// `(i / n, i % n)` for a constant `n`: an item index split into its coordinates.
    pub fn split(&mut self, i: &str, n: usize) -> (String, String) {
        let k = self.i64(n as i64);
        (self.int("divui", i, &k), self.int("remui", i, &k))
    }

    /// A comparison of integers (`slt`, `sge`, `eq`, …), an `i1`.
    pub fn cmp(&mut self, pred: &str, a: &str, b: &str) -> String {
        self.op(format!("arith.cmpi {pred}, {a}, {b} : i64"))
    }

    /// A float operation (`addf`, `subf`, `mulf`, `divf`, `maximumf`, `minimumf`).
    pub fn float(&mut self, op: &str, a: &str, b: &str) -> String {
        self.op(format!("arith.{op} {a}, {b} : f32"))
    }

    pub fn fadd(&mut self, a: &str, b: &str) -> String {
        self.float("addf", a, b)
    }

    pub fn fsub(&mut self, a: &str, b: &str) -> String {
        self.float("subf", a, b)
    }

    pub fn fmul(&mut self, a: &str, b: &str) -> String {
        self.float("mulf", a, b)
    }

    pub fn fdiv(&mut self, a: &str, b: &str) -> String {
        self.float("divf", a, b)
    }

    pub fn fneg(&mut self, a: &str) -> String {
        self.op(format!("arith.negf {a} : f32"))
    }

    /// `a·b + c`, contracted to one rounding where the target has FMA.
    pub fn fma(&mut self, a: &str, b: &str, c: &str) -> String {
        self.op(format!("llvm.intr.fma({a}, {b}, {c}) : (f32, f32, f32) -> f32"))
    }

    /// `acc + a·b` as a step of a long sum that LLVM may reassociate (and so vectorise):
    /// the order is fixed when the kernel is compiled, so results do not depend on how
    /// items are shared between threads, only the rounding differs from a sequential sum.
    pub fn sum_step(&mut self, acc: &str, a: &str, b: &str) -> String {
        let product = self.op(format!("arith.mulf {a}, {b} fastmath<contract> : f32"));
        self.op(format!("arith.addf {acc}, {product} fastmath<reassoc, contract> : f32"))
    }

    /// A float comparison (`olt`, `ogt`, `oeq`, …), an `i1`.
    pub fn fcmp(&mut self, pred: &str, a: &str, b: &str) -> String {
        self.op(format!("arith.cmpf {pred}, {a}, {b} : f32"))
    }

    pub fn select(&mut self, cond: &str, a: &str, b: &str, ty: &str) -> String {
        self.op(format!("arith.select {cond}, {a}, {b} : {ty}"))
    }

    pub fn sitofp(&mut self, a: &str) -> String {
        self.op(format!("arith.sitofp {a} : i64 to f32"))
    }

    /// One of the generator's math functions (`exp`, `log`, …), defined beside the kernel.
    pub fn call(&mut self, f: Func, x: &str) -> String {
        self.uses.insert(f);
        self.op(format!("func.call @{}({x}) : (f32) -> f32", f.symbol()))
    }

    /// The element offset of `index` in view `k`.
    fn offset(&mut self, k: usize, index: &[&str]) -> String {
        let mut offset: Option<String> = None;
        for (d, i) in index.iter().enumerate() {
            let term = self.mul(i, &format!("%s{k}_{d}"));
            offset = Some(match offset {
                None => term,
                Some(o) => self.add(&o, &term),
            });
        }
        offset.unwrap_or_else(|| self.i64(0))
    }

    /// Element `index` of view `k`, as f32 whatever the view stores.
    pub fn load(&mut self, k: usize, index: &[&str]) -> String {
        let offset = self.offset(k, index);
        let dst = self.fresh();
        self.lines.push(Line::Load { indent: self.depth, dst: dst.clone(), view: k, offset });
        dst
    }

    /// Copies eight elements from `index` of view `k` (unit stride on the last axis, 16-byte
    /// aligned) to the bf16 shared memory at `dst`; the caller waits for the copies
    /// ([`Text::commit_copies`], [`Text::wait_copies`]) before reading them.
    pub fn copy8(&mut self, k: usize, index: &[&str], dst: &str) {
        let offset = self.offset(k, index);
        let id = self.fresh();
        self.lines.push(Line::Copy { indent: self.depth, id, view: k, offset, dst: dst.to_string() });
    }

    /// Closes a group of this thread's asynchronous copies, to wait for together.
    pub fn commit_copies(&mut self) {
        self.line("nvvm.cp.async.commit.group");
    }

    /// Waits until at most `outstanding` of this thread's committed groups of copies are
    /// still in flight (the oldest finish first).
    pub fn wait_copies(&mut self, outstanding: usize) {
        self.line(format!("nvvm.cp.async.wait.group {outstanding}"));
    }

    /// Whether view `k` (of `rank` axes) can be copied eight elements at a time: its last
    /// stride is 1, its others multiples of 8, and its base 16-byte aligned.
    pub fn copies_by_eight(&mut self, k: usize, rank: usize) -> String {
        let (one, eight, sixteen, zero) = (self.i64(1), self.i64(8), self.i64(16), self.i64(0));
        let unit = self.cmp("eq", &format!("%s{k}_{}", rank - 1), &one);
        let mut ok = unit;
        for d in 0..rank - 1 {
            let r = self.int("remui", &format!("%s{k}_{d}"), &eight);
            let whole = self.cmp("eq", &r, &zero);
            ok = self.op(format!("arith.andi {ok}, {whole} : i1"));
        }
        let address = self.op(format!("llvm.ptrtoint %p{k} : !llvm.ptr to i64"));
        let r = self.int("remui", &address, &sixteen);
        let aligned = self.cmp("eq", &r, &zero);
        self.op(format!("arith.andi {ok}, {aligned} : i1"))
    }

    /// `if cond { then } else { otherwise }`.
    pub fn either(&mut self, cond: &str, then: impl FnOnce(&mut Text), otherwise: impl FnOnce(&mut Text)) {
        self.line(format!("scf.if {cond} {{"));
        self.depth += 1;
        then(self);
        self.depth -= 1;
        self.line("} else {");
        self.depth += 1;
        otherwise(self);
        self.depth -= 1;
        self.line("}");
    }

    /// `if cond { then() } else { otherwise }` over f32 values: the values of the branch
    /// taken (a loop's carried values updated only where there is work).
    pub fn choose(
        &mut self,
        cond: &str,
        then: impl FnOnce(&mut Text) -> Vec<String>,
        otherwise: &[String],
    ) -> Vec<String> {
        let results: String = self.fresh();
        let types = vec!["f32"; otherwise.len()].join(", ");
        let named = if otherwise.len() == 1 { results.clone() } else { format!("{results}:{}", otherwise.len()) };
        self.line(format!("{named} = scf.if {cond} -> ({types}) {{"));
        self.depth += 1;
        let taken = then(self);
        assert_eq!(taken.len(), otherwise.len(), "both branches yield the same values");
        self.line(format!("scf.yield {} : {types}", taken.join(", ")));
        self.depth -= 1;
        self.line("} else {");
        self.depth += 1;
        self.line(format!("scf.yield {} : {types}", otherwise.join(", ")));
        self.depth -= 1;
        self.line("}");
        match otherwise.len() {
            1 => vec![results],
            n => (0..n).map(|j| format!("{results}#{j}")).collect(),
        }
    }

    /// Stores `value` (f32) at element `index` of view `k`, rounded to its storage.
    pub fn store(&mut self, k: usize, index: &[&str], value: &str) {
        let offset = self.offset(k, index);
        let id = self.fresh();
        self.lines.push(Line::Store { indent: self.depth, id, view: k, offset, value: value.to_string() });
    }

    /// A stack array of `n` floats, allocated once at the function's entry.
    pub fn array(&mut self, n: usize) -> String {
        let (count, a) = (self.fresh(), self.fresh());
        self.prologue.push(format!("{count} = arith.constant {n} : i64"));
        self.prologue.push(format!("{a} = llvm.alloca {count} x f32 : (i64) -> !llvm.ptr"));
        a
    }

    /// A stack array holding `values`, filled once at the function's entry: constants a
    /// loop indexes (per-element frequencies), computed exactly by the generator.
    pub fn table(&mut self, values: &[f32]) -> String {
        let a = self.array(values.len());
        for (i, v) in values.iter().enumerate() {
            let (c, at, p) = (self.fresh(), self.fresh(), self.fresh());
            self.prologue.push(format!("{c} = arith.constant 0x{:08X} : f32", v.to_bits()));
            self.prologue.push(format!("{at} = arith.constant {i} : i64"));
            self.prologue.push(format!("{p} = llvm.getelementptr {a}[{at}] : (!llvm.ptr, i64) -> !llvm.ptr, f32"));
            self.prologue.push(format!("llvm.store {c}, {p} : f32, !llvm.ptr"));
        }
        a
    }

    fn element(&mut self, array: &str, i: &str) -> String {
        self.op(format!("llvm.getelementptr {array}[{i}] : (!llvm.ptr, i64) -> !llvm.ptr, f32"))
    }

    pub fn get(&mut self, array: &str, i: &str) -> String {
        let p = self.element(array, i);
        self.op(format!("llvm.load {p} : !llvm.ptr -> f32"))
    }

    pub fn set(&mut self, array: &str, i: &str, value: &str) {
        let p = self.element(array, i);
        self.line(format!("llvm.store {value}, {p} : f32, !llvm.ptr"));
    }

    /// `for i in lo..hi { body(i) }`.
    pub fn each(&mut self, lo: &str, hi: &str, body: impl FnOnce(&mut Text, &str)) {
        self.fold(lo, hi, &[], |t, i, _| {
            body(t, i);
            Vec::new()
        });
    }

    /// `for i in lo..hi`, carrying the f32 values `init` through the iterations: `body(i,
    /// carried)` returns the next values; the loop's results are the last ones.
    pub fn fold(
        &mut self,
        lo: &str,
        hi: &str,
        init: &[String],
        body: impl FnOnce(&mut Text, &str, &[String]) -> Vec<String>,
    ) -> Vec<String> {
        let (i, one) = (self.fresh(), self.i64(1));
        let carried: Vec<String> = init.iter().map(|_| self.fresh()).collect();
        let results: Vec<String> = init.iter().map(|_| self.fresh()).collect();
        let types = vec!["f32"; init.len()].join(", ");
        let header = if init.is_empty() {
            format!("scf.for {i} = {lo} to {hi} step {one} : i64 {{")
        } else {
            let args: Vec<String> = carried.iter().zip(init).map(|(c, v)| format!("{c} = {v}")).collect();
            format!(
                "{} = scf.for {i} = {lo} to {hi} step {one} iter_args({}) -> ({types}) : i64 {{",
                if results.len() == 1 { results[0].clone() } else { format!("{}:{}", results[0], results.len()) },
                args.join(", ")
            )
        };
        self.line(header);
        self.depth += 1;
        let next = body(self, &i, &carried);
        assert_eq!(next.len(), init.len(), "a loop yields what it carries");
        if !next.is_empty() {
            self.line(format!("scf.yield {} : {types}", next.join(", ")));
        }
        self.depth -= 1;
        self.line("}");
        match results.len() {
            0 | 1 => results,
            n => (0..n).map(|j| format!("{}#{j}", results[0])).collect(),
        }
    }

    /// Lines written by `body` one level deeper, inside a region the caller opened.
    pub fn nest(&mut self, body: impl FnOnce(&mut Text)) {
        self.depth += 1;
        body(self);
        self.depth -= 1;
    }

    /// `if cond { body }`.
    pub fn when(&mut self, cond: &str, body: impl FnOnce(&mut Text)) {
        self.line(format!("scf.if {cond} {{"));
        self.depth += 1;
        body(self);
        self.depth -= 1;
        self.line("}");
    }
}

/// How an element of `storage` is loaded and stored: bf16 as its bits on the CPU.
fn memory_type(storage: Storage, target: Target) -> &'static str {
    match (storage, target) {
        (Storage::Bf16, Target::Cpu) => "i16",
        (s, _) => s.mlir(),
    }
}
