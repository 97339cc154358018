//! Reductions a single loop nest would run with too little parallelism, turned into steps
//! of a [`Chain`](super::chain::Chain) before it is split:
//!
//! - a long reduction evaluated inside another reduction's loop (a row's logsumexp over
//!   the vocabulary inside the loss's sum over tokens, a row's mean square inside a norm
//!   weight's sum over tokens) would run once per outer iteration, by one lane alone: it
//!   is materialised, so it is computed once per row by a warp or block;
//! - a chain of sums (or maxima) into few outputs over many elements (Mamba-2's `D`
//!   gradient, `[B, T, H, P] → [H]`; a norm weight's gradient, `[B, T, d] → [d]`) would give
//!   each output one warp, block or lane that walks its elements alone: its longest reduced
//!   axis is factored into chunks, so a first step sums every chunk in parallel into a
//!   small partial tensor and a second sums the partials.
//!
//! Both keep every sum in a fixed order, so results do not depend on the launch.

use crate::ir::{Graph, NodeId, Op, TensorType};
use crate::ops::{Prim, Reduce, ReduceOp, Reshape};
use hyb_dsl::dim::Dim;

/// Outputs of a nested reduction from which it is materialised: a value per row of many
/// rows.
const NESTED_ROWS: usize = 1024;

/// Elements a nested reduction must reduce to be worth a step of its own.
const NESTED_EXTENT: usize = 256;

/// Partial results a factored chain aims for: enough threads (or warps) to fill the GPU.
const PARTIALS: usize = 65536;

/// Partial results a factored column sum aims for: a thread each, so four times as many.
const COLUMN_PARTIALS: usize = 4 * PARTIALS;

/// The smallest chunk a factored axis is cut into.
const MIN_CHUNK: usize = 16;

/// Elements per output from which a chain into few outputs is factored.
const LONG_CHAIN: usize = 2048;

/// The graph with long chains factored, and the values to materialise (nested reductions
/// and the factored chains' partial results). `shapes` are `g`'s concrete shapes.
pub fn parallel(g: &Graph, shapes: &[Vec<usize>]) -> (Graph, Vec<NodeId>, Vec<Vec<usize>>) {
    let nested = nested_reductions(g, shapes);
    let plans: Vec<Option<Factoring>> = (0..g.nodes.len()).map(|n| factoring(g, shapes, n)).collect();
    let mut out = Graph::default();
    let mut out_shapes = Vec::new();
    let mut map = Vec::with_capacity(g.nodes.len());
    let mut materialise = Vec::new();
    // Reductions a factored chain computes from its innermost input itself: materialising
    // one as a nested reduction too would compute it for no reader.
    let mut subsumed = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        let inputs: Vec<NodeId> = n.inputs.iter().map(|&x| map[x]).collect();
        let factored = plans[i].as_ref().and_then(|plan| {
            let (partial, total) = plan.build(g, shapes, &map, &mut out, &mut out_shapes)?;
            Some((plan, partial, total))
        });
        let id = match factored {
            Some((plan, partial, total)) => {
                materialise.push(partial);
                for &inner in &plan.chain[1..] {
                    subsumed[inner] = true;
                }
                total
            }
            None => {
                out_shapes.push(shapes[i].clone());
                out.add(n.op.clone(), inputs, n.ty.clone())
            }
        };
        map.push(id);
    }
    materialise.extend(nested.into_iter().filter(|&n| !subsumed[n]).map(|n| map[n]));
    out.outputs = g.outputs.iter().map(|&o| map[o]).collect();
    (out, materialise, out_shapes)
}

/// Whether `parallel` changes anything in `g`.
pub fn needed(g: &Graph, shapes: &[Vec<usize>]) -> bool {
    !parallel(g, shapes).1.is_empty()
}

fn reduction(g: &Graph, n: NodeId) -> Option<&Reduce> {
    match &g.nodes[n].op {
        Op::Prim(Prim::Reduce(r)) => Some(r),
        _ => None,
    }
}

/// Reductions longer than [`NESTED_EXTENT`] into at least [`NESTED_ROWS`] values, read
/// (through values that are computed, not read) by a reduction with fewer outputs: their
/// value changes along its loop.
fn nested_reductions(g: &Graph, shapes: &[Vec<usize>]) -> Vec<NodeId> {
    let elements = |n: NodeId| shapes[n].iter().product::<usize>();
    let mut found = Vec::new();
    for outer in 0..g.nodes.len() {
        if reduction(g, outer).is_none() {
            continue;
        }
        let mut seen = vec![false; g.nodes.len()];
        let mut todo = vec![g.nodes[outer].inputs[0]];
        while let Some(n) = todo.pop() {
            if std::mem::replace(&mut seen[n], true) || matches!(g.nodes[n].op, Op::Input(_)) {
                continue;
            }
            if let Some(r) = reduction(g, n) {
                let x = &shapes[g.nodes[n].inputs[0]];
                let extent = x.get(r.axis_of(x.len())).copied().unwrap_or(1);
                if extent >= NESTED_EXTENT && elements(n) >= NESTED_ROWS && elements(n) > elements(outer) {
                    found.push(n);
                    continue;
                }
            }
            todo.extend(&g.nodes[n].inputs);
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// A chain of reductions of one kind, its longest reduced axis cut into chunks.
struct Factoring {
    /// The chain, outermost (the value the graph uses) first.
    chain: Vec<NodeId>,
    /// Axis of the innermost input that is cut, and the chunk length.
    axis: usize,
    chunk: usize,
}

/// The factoring of the chain of reductions whose outermost is `top`, where it pays.
fn factoring(g: &Graph, shapes: &[Vec<usize>], top: NodeId) -> Option<Factoring> {
    let r = reduction(g, top)?;
    if !matches!(r.op, ReduceOp::Sum | ReduceOp::Max) {
        return None;
    }
    // `top` is the outermost: no reduction of the same kind reduces it further.
    if g.nodes.iter().any(|n| matches!(&n.op, Op::Prim(Prim::Reduce(u)) if u.op == r.op && n.inputs[0] == top)) {
        return None;
    }
    let chain = super::emit::chain(g, top, r);
    let x = g.nodes[*chain.last()?].inputs[0];
    let (outputs, elements) = (shapes[top].iter().product::<usize>(), shapes[x].iter().product::<usize>());
    // One output is the split into two steps of the chain's own (`chain::split`).
    if outputs <= 1 || outputs > PARTIALS / 4 || elements < outputs * LONG_CHAIN {
        return None;
    }
    let reduced = reduced_axes(g, shapes, &chain);
    // A column sum (the last axis kept) gives each partial a thread, not a warp: more of
    // them keep enough loads in flight.
    let columns = !reduced.iter().any(|&(a, _)| a + 1 == shapes[x].len());
    let partials = if columns { COLUMN_PARTIALS } else { PARTIALS };
    let (axis, extent) = reduced.into_iter().max_by_key(|&(a, e)| (e, std::cmp::Reverse(a)))?;
    let least = MIN_CHUNK.max((outputs * extent).div_ceil(partials));
    let chunk = (least..=extent / 2).find(|c| extent.is_multiple_of(*c))?;
    Some(Factoring { chain, axis, chunk })
}

/// The axes of the chain's innermost input that it reduces, with their extents.
fn reduced_axes(g: &Graph, shapes: &[Vec<usize>], chain: &[NodeId]) -> Vec<(usize, usize)> {
    let x = g.nodes[*chain.last().expect("a chain")].inputs[0];
    let mut ids: Vec<usize> = (0..shapes[x].len()).collect();
    let mut reduced = Vec::new();
    for &n in chain.iter().rev() {
        let r = reduction(g, n).expect("a chain of reductions");
        let at = r.axis_of(ids.len());
        let id = ids[at];
        if !reduced.iter().any(|&(a, _)| a == id) {
            reduced.push((id, shapes[x][id]));
        }
        if !r.keepdim {
            ids.remove(at);
        }
    }
    reduced
}

impl Factoring {
    /// Writes the factored chain into `out` (its inputs already there, through `map`):
    /// the partial results and their total, or `None` where the shapes do not come out as
    /// the chain's.
    fn build(
        &self,
        g: &Graph,
        shapes: &[Vec<usize>],
        map: &[NodeId],
        out: &mut Graph,
        out_shapes: &mut Vec<Vec<usize>>,
    ) -> Option<(NodeId, NodeId)> {
        let x = g.nodes[*self.chain.last()?].inputs[0];
        let dtype = g.nodes[self.chain[0]].ty.dtype;
        let mut add = |out: &mut Graph, op: Prim, input: NodeId, shape: Vec<usize>| {
            let ty = TensorType { shape: shape.iter().map(|&d| Dim::constant(d as i64)).collect(), dtype };
            out_shapes.push(shape);
            out.add(Op::Prim(op), vec![input], ty)
        };
        // Axis ids: the input's own, the cut axis's chunk index a new one after them.
        let rank = shapes[x].len();
        let (mut ids, mut old_ids): (Vec<usize>, Vec<usize>) = ((0..rank).collect(), (0..rank).collect());
        let mut shape = shapes[x].clone();
        let at = ids.iter().position(|&i| i == self.axis)?;
        ids.insert(at + 1, rank);
        shape[at] /= self.chunk;
        shape.insert(at + 1, self.chunk);
        let reshape = Prim::Reshape(Reshape { shape: shape.iter().map(|&d| Dim::constant(d as i64)).collect() });
        let mut value = add(out, reshape, map[x], shape.clone());
        for &n in self.chain.iter().rev() {
            let r = reduction(g, n)?;
            let old_at = r.axis_of(old_ids.len());
            let id = match old_ids[old_at] {
                a if a == self.axis => rank,
                a => a,
            };
            let pos = ids.iter().position(|&i| i == id)?;
            if r.keepdim {
                shape[pos] = 1;
            } else {
                ids.remove(pos);
                shape.remove(pos);
                old_ids.remove(old_at);
            }
            value = add(out, Prim::Reduce(Reduce { axis: pos as i64, ..r.clone() }), value, shape.clone());
        }
        let outer = ids.iter().position(|&i| i == self.axis)?;
        let op = reduction(g, self.chain[0])?.op;
        shape.remove(outer);
        if shape != shapes[self.chain[0]] {
            return None;
        }
        let total = add(out, Prim::Reduce(Reduce { op, axis: outer as i64, keepdim: false }), value, shape);
        Some((value, total))
    }
}
