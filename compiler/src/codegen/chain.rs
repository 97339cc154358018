//! A kernel body with GEMMs inside — a GEMM kernel and its epilogue, a BitLinear with its
//! quantisers, their gradients — split into steps the executors run in order: GEMMs for
//! the GEMM library, and generated bodies for everything between them.
//!
//! The body is first written with primitives the generator compiles (each primitive's
//! [`Primitive::expand`]). Values that cross from one step to the next are *materialised*:
//! the inputs, each GEMM's operands and product, the outputs, and every reduction to a
//! single value (a quantiser's scale), so that it is computed once and not by every
//! element that reads it, and the reductions [`reductions`] splits for parallelism.
//! Everything else is recomputed inside the body step that needs it. A materialised value
//! lives in the launch's input or output view, or in contiguous scratch space the chain
//! asks for.
//!
//! `sum(op(a)ᵀ·b, axis 0)` over a batch of contiguous operands (a weight gradient) is one
//! GEMM with the batch folded into its inner dimension, not a batch of products summed.

use super::body::Body;
use super::reductions;
use super::unit::GemmShape;
use super::{kernel_name, Symbols};
use crate::ir::{Graph, NodeId, Op};
use crate::ops::{Prim, Primitive, ReduceOp};

/// Where a step reads or writes a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The launch's input view `k`.
    Input(usize),
    /// The launch's output view `k`.
    Output(usize),
    /// Contiguous scratch buffer `k` of [`Chain::scratch`].
    Scratch(usize),
}

/// One step of a chain.
#[derive(Clone, Debug)]
pub enum Step {
    /// A generated body: its input `k` is `reads[k]`; output `k` goes to each slot of
    /// `writes[k]`.
    Body { body: Graph, reads: Vec<Slot>, writes: Vec<Vec<Slot>> },
    /// `out = op(a)·op(b)`, with the shapes the GEMM sees (a scratch operand may be seen
    /// folded: `[B, T, d]` as `[B·T, d]`).
    Gemm { gemm: GemmShape, a: Slot, b: Slot, out: Slot },
}

/// The steps of one launch.
#[derive(Clone, Debug)]
pub struct Chain {
    pub name: String,
    pub steps: Vec<Step>,
    /// Shapes of the scratch buffers, each contiguous.
    pub scratch: Vec<Vec<usize>>,
}

impl Chain {
    /// Elements of all scratch buffers together.
    pub fn scratch_elements(&self) -> usize {
        self.scratch.iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// The bodies the chain generates code for.
    pub fn bodies(&self) -> impl Iterator<Item = &Graph> {
        self.steps.iter().filter_map(|s| match s {
            Step::Body { body, .. } => Some(body),
            Step::Gemm { .. } => None,
        })
    }
}

/// What a GEMM library can do at the end of a GEMM: `out = alpha·op(a)·op(b)`, plus
/// `residual` (beta = 1) when there is one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Epilogue {
    pub alpha: f32,
    pub residual: Option<Slot>,
}

/// A chain that is one GEMM and its epilogue: the GEMM's operands and shapes, the slot the
/// result goes to, and the epilogue.
#[derive(Clone, Debug)]
pub struct Folded<'c> {
    pub gemm: &'c GemmShape,
    pub a: Slot,
    pub b: Slot,
    pub out: Slot,
    pub epilogue: Epilogue,
}

impl Chain {
    /// The chain as one GEMM with its epilogue, when it is a GEMM into scratch followed by
    /// a body that only scales the product by a constant and adds an input of the same
    /// shape (a µP multiplier, a residual): what cuBLASLt's alpha and beta compute, so the
    /// product never goes through scratch.
    pub fn folded(&self) -> Option<Folded<'_>> {
        let [Step::Gemm { gemm, a, b, out: Slot::Scratch(s) }, Step::Body { body, reads, writes }] =
            self.steps.as_slice()
        else {
            return None;
        };
        let [write] = writes.as_slice() else { return None };
        let [out @ Slot::Output(_)] = write.as_slice() else { return None };
        let product = reads.iter().position(|r| *r == Slot::Scratch(*s))?;
        if reads.iter().filter(|r| **r == Slot::Scratch(*s)).count() != 1 || [*a, *b].contains(out) {
            return None;
        }
        let root = *body.outputs.first().filter(|_| body.outputs.len() == 1)?;
        let input = |n: NodeId| match &body.nodes[n].op {
            Op::Input(name) => name.parse::<usize>().ok(),
            _ => None,
        };
        let same_shape = |x: NodeId| body.nodes[x].ty.shape == body.nodes[root].ty.shape;
        // `c·…·product`, as alpha.
        let scaled = |mut n: NodeId| -> Option<f32> {
            let mut alpha = 1.0f64;
            loop {
                if input(n) == Some(product) && same_shape(n) {
                    return Some(alpha as f32);
                }
                let node = &body.nodes[n];
                let Op::Prim(Prim::Binary(crate::ops::Binary::Mul)) = node.op else { return None };
                let constant = |x: NodeId| match body.nodes[x].op {
                    Op::Constant(c) => Some(c),
                    _ => None,
                };
                let (c, rest) = match (constant(node.inputs[0]), constant(node.inputs[1])) {
                    (Some(c), None) => (c, node.inputs[1]),
                    (None, Some(c)) => (c, node.inputs[0]),
                    _ => return None,
                };
                alpha *= c;
                n = rest;
            }
        };
        let epilogue = match &body.nodes[root].op {
            Op::Prim(Prim::Binary(crate::ops::Binary::Add)) => {
                let [x, y] = [body.nodes[root].inputs[0], body.nodes[root].inputs[1]];
                let residual = |r: NodeId| {
                    input(r)
                        .filter(|&k| k != product && same_shape(r))
                        .map(|k| reads[k])
                        .filter(|r| matches!(r, Slot::Input(_)))
                };
                match (scaled(x), residual(y), scaled(y), residual(x)) {
                    (Some(alpha), Some(r), _, _) | (_, _, Some(alpha), Some(r)) => {
                        Epilogue { alpha, residual: Some(r) }
                    }
                    _ => return None,
                }
            }
            _ => Epilogue { alpha: scaled(root)?, residual: None },
        };
        Some(Folded { gemm, a: *a, b: *b, out: *out, epilogue })
    }
}

/// Whether `body` needs a chain: it holds a matmul, or a primitive the generator only
/// compiles through its expansion.
pub fn needed(body: &Graph) -> bool {
    body.nodes.iter().any(|n| match &n.op {
        Op::Prim(Prim::Matmul(_)) => true,
        Op::Prim(p) => expandable(body, p, &n.inputs),
        _ => false,
    })
}

/// Whether `p` on `inputs` of `body` has an expansion (tried on a scratch graph).
fn expandable(body: &Graph, p: &Prim, inputs: &[NodeId]) -> bool {
    let mut g = Graph::default();
    let inputs: Vec<NodeId> =
        inputs.iter().map(|&x| g.add(Op::Input(x.to_string()), vec![], body.nodes[x].ty.clone())).collect();
    p.expand(&mut g, &inputs).is_some()
}

/// Elements a reduction inside a chain into one element must leave to be computed as a
/// step of its own: its elements are then summed in parallel and the last sum is short,
/// where one loop would sum everything in one block.
const SPLIT_ROWS: usize = 1024;

/// Elements from which a chain into one element whose reductions all leave fewer than
/// [`SPLIT_ROWS`] is still split, after its first reduction: one block would walk them
/// alone.
const SPLIT_INPUT: usize = 65536;

/// In each chain of reductions of one kind into a single element (a loss summed over
/// tokens and vocabulary, a weight's squares), the last reduction that leaves at least
/// [`SPLIT_ROWS`] elements; else, over at least [`SPLIT_INPUT`] elements, the first
/// reduction (its rows summed in parallel).
fn split_reductions(g: &Graph, elements: &dyn Fn(NodeId) -> usize) -> Vec<NodeId> {
    let reduce = |n: NodeId| match &g.nodes[n].op {
        Op::Prim(Prim::Reduce(r)) => Some(r.op),
        _ => None,
    };
    let mut split = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let Some(op) = reduce(i) else { continue };
        if elements(i) != 1 {
            continue;
        }
        let (mut m, mut first) = (n.inputs[0], None);
        while reduce(m) == Some(op) && elements(m) < SPLIT_ROWS {
            first = Some(m);
            m = g.nodes[m].inputs[0];
        }
        let long = (reduce(m) == Some(op)).then_some(m);
        split.extend(long.or(first.filter(|&f| elements(f) > 1 && elements(g.nodes[f].inputs[0]) >= SPLIT_INPUT)));
    }
    split
}

/// Whether `body` at `symbols`' sizes sums something long into a single element through a
/// chain of reductions that [`split`] computes in two steps.
pub fn splits_reduction(body: &Graph, symbols: Symbols) -> bool {
    let elements = |n: NodeId| Body::shape_of(body, n, symbols).map_or(0, |s| s.iter().product::<usize>());
    if !split_reductions(body, &elements).is_empty() {
        return true;
    }
    let g = expanded(body);
    let shapes: Option<Vec<Vec<usize>>> = (0..g.nodes.len()).map(|n| Body::shape_of(&g, n, symbols).ok()).collect();
    shapes.is_some_and(|shapes| reductions::needed(&g, &shapes))
}

/// Splits `body` (inputs numbered as the launch's) into steps for a program of `symbols`'
/// sizes.
pub fn split(body: &Graph, symbols: Symbols) -> Result<Chain, String> {
    let g = expanded(body);
    let shapes: Vec<Vec<usize>> = (0..g.nodes.len())
        .map(|n| Body::shape_of(&g, n, symbols).map_err(|e| format!("codegen: {e}")))
        .collect::<Result<_, _>>()?;
    let (g, parallel, shapes) = reductions::parallel(&g, &shapes);
    let elements = |n: NodeId| shapes[n].iter().product::<usize>();
    let mut users = vec![0usize; g.nodes.len()];
    for n in &g.nodes {
        for &x in &n.inputs {
            users[x] += 1;
        }
    }
    // GEMMs: a matmul, or the batch sum of one that folds into a single product.
    let mut gemm_of: Vec<Option<NodeId>> = vec![None; g.nodes.len()];
    let mut materialised = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        match &n.op {
            Op::Input(_) => materialised[i] = true,
            Op::Prim(Prim::Matmul(_)) => gemm_of[i] = Some(i),
            Op::Prim(Prim::Reduce(r)) if r.op == ReduceOp::Sum => {
                let mm = n.inputs[0];
                if folds(&g, &shapes, mm, r.axis, r.keepdim) && users[mm] == 1 {
                    gemm_of[mm] = None;
                    gemm_of[i] = Some(mm);
                }
            }
            _ => {}
        }
    }
    for (i, n) in g.nodes.iter().enumerate() {
        if let Some(mm) = gemm_of[i] {
            materialised[i] = true;
            for &x in &g.nodes[mm].inputs {
                materialised[x] = true;
            }
        }
        if matches!(n.op, Op::Prim(Prim::Reduce(_))) && elements(i) == 1 && elements(n.inputs[0]) > 1 {
            materialised[i] = true;
        }
    }
    for i in split_reductions(&g, &elements).into_iter().chain(parallel) {
        materialised[i] = true;
    }
    for &o in &g.outputs {
        materialised[o] = true;
    }
    // Slots: inputs in place, each output where the launch wants it, the rest scratch.
    let mut slots: Vec<Vec<Slot>> = vec![Vec::new(); g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if let Op::Input(name) = &n.op {
            slots[i].push(Slot::Input(name.parse().map_err(|_| "kernel inputs are numbered".to_string())?));
        }
    }
    for (k, &o) in g.outputs.iter().enumerate() {
        slots[o].push(Slot::Output(k));
    }
    let mut scratch = Vec::new();
    for i in 0..g.nodes.len() {
        if materialised[i] && slots[i].is_empty() {
            slots[i].push(Slot::Scratch(scratch.len()));
            scratch.push(shapes[i].clone());
        }
    }
    // Folded operands must be contiguous: scratch.
    for (i, mm) in gemm_of.iter().enumerate() {
        let Some(mm) = *mm else { continue };
        if mm == i {
            continue;
        }
        for &x in &g.nodes[mm].inputs {
            if !slots[x].iter().any(|s| matches!(s, Slot::Scratch(_))) {
                slots[x].push(Slot::Scratch(scratch.len()));
                scratch.push(shapes[x].clone());
            }
        }
    }
    // Values already in a slot that other slots also need: inputs that a folded GEMM reads
    // from scratch or that are outputs, and GEMM products written twice.
    let mut copies: Vec<bool> = (0..g.nodes.len())
        .map(|i| slots[i].len() > 1 && (matches!(g.nodes[i].op, Op::Input(_)) || gemm_of[i].is_some()))
        .collect();
    let mut done: Vec<bool> = (0..g.nodes.len()).map(|i| matches!(g.nodes[i].op, Op::Input(_))).collect();
    let mut steps = Vec::new();
    while (0..g.nodes.len()).any(|i| (materialised[i] && !done[i]) || copies[i]) {
        let mut progressed = false;
        let computed: Vec<NodeId> = (0..g.nodes.len())
            .filter(|&i| materialised[i] && !done[i] && gemm_of[i].is_none())
            .filter(|&i| sources(&g, &materialised, i).iter().all(|&s| done[s] && !copies[s]))
            .collect();
        let copied: Vec<NodeId> = (0..g.nodes.len()).filter(|&i| copies[i] && done[i]).collect();
        if !computed.is_empty() || !copied.is_empty() {
            steps.push(body_step(&g, &materialised, &slots, &computed, &copied));
            computed.iter().for_each(|&i| done[i] = true);
            copied.iter().for_each(|&i| copies[i] = false);
            progressed = true;
        }
        for i in 0..g.nodes.len() {
            let Some(mm) = gemm_of[i] else { continue };
            if done[i] || !g.nodes[mm].inputs.iter().all(|&x| done[x] && !copies[x]) {
                continue;
            }
            steps.push(gemm_step(&g, &shapes, &slots, i, mm));
            done[i] = true;
            progressed = true;
        }
        if !progressed {
            return Err("codegen: a kernel body whose steps cannot be ordered".into());
        }
    }
    Ok(Chain { name: kernel_name(body), steps, scratch })
}

/// `body` with every expandable primitive replaced by its expansion.
fn expanded(body: &Graph) -> Graph {
    let mut g = Graph::default();
    let mut map: Vec<Vec<NodeId>> = Vec::with_capacity(body.nodes.len());
    for n in &body.nodes {
        let inputs: Vec<NodeId> = n.inputs.iter().map(|&x| map[x][0]).collect();
        let out = match &n.op {
            Op::Prim(p) => p.expand(&mut g, &inputs),
            _ => None,
        };
        let out = out.unwrap_or_else(|| vec![g.add(n.op.clone(), inputs, n.ty.clone())]);
        map.push(out);
    }
    g.outputs = body.outputs.iter().map(|&o| map[o][0]).collect();
    g
}

/// Whether `sum(mm, axis)` is a weight-gradient product that folds its batch into the
/// inner dimension: `mm = aᵀ·b` of rank-3 operands with one batch axis, summed over it.
fn folds(g: &Graph, shapes: &[Vec<usize>], mm: NodeId, axis: i64, keepdim: bool) -> bool {
    let Op::Prim(Prim::Matmul(m)) = &g.nodes[mm].op else { return false };
    let [a, b] = g.nodes[mm].inputs[..] else { return false };
    m.transpose_a
        && !m.transpose_b
        && !keepdim
        && axis == 0
        && shapes[mm].len() == 3
        && shapes[a].len() == 3
        && shapes[b].len() == 3
        && shapes[a][0] == shapes[b][0]
}

/// The materialised values `node` reads, through values that are not.
fn sources(g: &Graph, materialised: &[bool], node: NodeId) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut seen = vec![false; g.nodes.len()];
    let mut stack: Vec<NodeId> = g.nodes[node].inputs.clone();
    while let Some(x) = stack.pop() {
        if std::mem::replace(&mut seen[x], true) {
            continue;
        }
        if materialised[x] {
            out.push(x);
        } else {
            stack.extend(g.nodes[x].inputs.iter().copied());
        }
    }
    out.sort_unstable();
    out
}

/// A body computing `computed` from their materialised sources, and copying each of
/// `copied` from its first slot to the others.
fn body_step(g: &Graph, materialised: &[bool], slots: &[Vec<Slot>], computed: &[NodeId], copied: &[NodeId]) -> Step {
    let mut b = BodyBuilder {
        g,
        materialised,
        slots,
        body: Graph::default(),
        map: vec![None; g.nodes.len()],
        reads: Vec::new(),
    };
    for &v in copied {
        b.read(v);
    }
    for &v in computed {
        b.copy(v, true);
    }
    let values = copied.iter().chain(computed);
    b.body.outputs = values.map(|&v| b.map[v].expect("copied")).collect();
    let writes =
        copied.iter().map(|&v| slots[v][1..].to_vec()).chain(computed.iter().map(|&v| slots[v].clone())).collect();
    Step::Body { body: b.body, reads: b.reads, writes }
}

/// A step's body under construction: nodes of the chain's graph copied in, materialised
/// values read as inputs.
struct BodyBuilder<'a> {
    g: &'a Graph,
    materialised: &'a [bool],
    slots: &'a [Vec<Slot>],
    body: Graph,
    map: Vec<Option<NodeId>>,
    reads: Vec<Slot>,
}

impl BodyBuilder<'_> {
    /// `x` as the body's next input, read from its first slot.
    fn read(&mut self, x: NodeId) {
        let id = self.body.add(Op::Input(self.reads.len().to_string()), vec![], self.g.nodes[x].ty.clone());
        self.reads.push(self.slots[x][0]);
        self.map[x] = Some(id);
    }

    /// Copies `node` and what it needs: materialised values other than a root are read.
    fn copy(&mut self, node: NodeId, root: bool) {
        if self.map[node].is_some() {
            return;
        }
        if self.materialised[node] && !root {
            return self.read(node);
        }
        let n = &self.g.nodes[node];
        for &x in &n.inputs {
            self.copy(x, false);
        }
        let inputs = n.inputs.iter().map(|&x| self.map[x].expect("copied first")).collect();
        self.map[node] = Some(self.body.add(n.op.clone(), inputs, n.ty.clone()));
    }
}

/// The GEMM computing `value`: the matmul `mm` itself, or the batch sum of it folded.
fn gemm_step(g: &Graph, shapes: &[Vec<usize>], slots: &[Vec<Slot>], value: NodeId, mm: NodeId) -> Step {
    let Op::Prim(Prim::Matmul(m)) = &g.nodes[mm].op else { unreachable!("GEMMs are matmuls") };
    let [a, b] = g.nodes[mm].inputs[..] else { unreachable!("matmuls have two operands") };
    let (mut sa, mut sb) = (shapes[a].clone(), shapes[b].clone());
    let scratch_of = |x: NodeId| slots[x].iter().copied().find(|s| matches!(s, Slot::Scratch(_)));
    let (slot_a, slot_b) = if value == mm {
        (slots[a][0], slots[b][0])
    } else {
        for s in [&mut sa, &mut sb] {
            *s = vec![s[0] * s[1], s[2]];
        }
        (scratch_of(a).expect("folded operands are scratch"), scratch_of(b).expect("folded operands are scratch"))
    };
    let gemm = GemmShape { matmul: m.clone(), a: sa, b: sb, out: shapes[value].clone() };
    Step::Gemm { gemm, a: slot_a, b: slot_b, out: slots[value][0] }
}
