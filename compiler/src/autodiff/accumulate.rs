//! The sum of the gradient contributions that reach one node. Contributions that are pads
//! along one axis over adjacent ranges (the pieces of a `split`, each padded back to the
//! whole by its slice's gradient) are joined by one `concat` instead: summing them would
//! write and read the whole tensor once per piece, mostly zeros.

use crate::ir::{Graph, NodeId, Op};
use crate::ops::{axis, Binary, Concat, Pad, Prim};
use hyb_dsl::dim::Dim;

/// The sum of `contributions` (at least one), with adjacent pads joined.
pub fn sum(g: &mut Graph, contributions: &[NodeId]) -> NodeId {
    let mut terms = joined_pads(g, contributions);
    let first = terms.remove(0);
    terms.into_iter().fold(first, |acc, c| g.binary(Binary::Add, acc, c))
}

/// Contribution `index`, a pad of a known range along one axis.
struct Piece {
    index: usize,
    node: NodeId,
    axis: usize,
    start: i64,
    end: i64,
}

/// `contributions` with every run of two or more pads along one axis whose ranges follow
/// each other replaced by the concat of their inputs (padded where the run does not cover
/// the axis), in the order of each term's first contribution.
fn joined_pads(g: &mut Graph, contributions: &[NodeId]) -> Vec<NodeId> {
    let mut pieces: Vec<Piece> = contributions.iter().enumerate().filter_map(|(i, &c)| piece(g, i, c)).collect();
    pieces.sort_by_key(|p| (p.axis, p.start));
    // Greedy chains: each run starts at the first piece left and takes, while one is
    // left, a piece that starts where it ends (so an overlapping piece stays a term).
    let mut used = vec![false; pieces.len()];
    let mut runs: Vec<Vec<&Piece>> = Vec::new();
    for first in 0..pieces.len() {
        if std::mem::replace(&mut used[first], true) {
            continue;
        }
        let mut run = vec![&pieces[first]];
        while let Some(next) = (0..pieces.len()).find(|&k| {
            let last = run.last().expect("runs are not empty");
            !used[k] && pieces[k].axis == last.axis && pieces[k].start == last.end
        }) {
            used[next] = true;
            run.push(&pieces[next]);
        }
        runs.push(run);
    }
    let mut replaced = vec![None; contributions.len()];
    for run in runs.iter().filter(|run| run.len() > 1) {
        let inputs: Vec<NodeId> = run.iter().map(|p| g.nodes[p.node].inputs[0]).collect();
        let whole = g.nodes[run[0].node].ty.shape[run[0].axis].as_const().expect("a piece's size is known");
        let (start, end) = (run[0].start, run.last().expect("runs are not empty").end);
        let mut joined = g.apply(Concat::new(run[0].axis), inputs);
        if start > 0 || end < whole {
            let pad = Pad { axis: run[0].axis as i64, before: Dim::constant(start), after: Dim::constant(whole - end) };
            joined = g.apply(pad, vec![joined]);
        }
        let first = run.iter().map(|p| p.index).min().expect("runs are not empty");
        for p in run {
            replaced[p.index] = Some(None);
        }
        replaced[first] = Some(Some(joined));
    }
    contributions
        .iter()
        .zip(replaced)
        .filter_map(|(&c, r)| match r {
            None => Some(c),
            Some(joined) => joined,
        })
        .collect()
}

/// Contribution `index`, `node`, as a pad whose range along its axis has a known size.
fn piece(g: &Graph, index: usize, node: NodeId) -> Option<Piece> {
    let Op::Prim(Prim::Pad(p)) = &g.nodes[node].op else { return None };
    let shape = &g.nodes[node].ty.shape;
    let a = axis(p.axis, shape.len());
    let start = p.before.as_const()?;
    let end = shape[a].as_const()? - p.after.as_const()?;
    Some(Piece { index, node, axis: a, start, end })
}
