//! Overlapping the replicas' exchanges with computation. A data-parallel exchange (a
//! bucket of gradients summed over the replicas, ZeRO-1's reduce-scatter) runs on an
//! exchange stream of its own: it is moved to just after the last launch writing what it
//! reads — with the copies that exist only to feed it (a bucket's concat) — and the first
//! launch touching what it writes, or writing what it reads, waits for it. Until then the
//! backward pass goes on beside it, and what it reads stays allocated.

use super::{Buffer, BufferId, Launch};
use crate::ir::{Graph, Op};
use crate::ops::{Class, Prim, Primitive};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};

/// The stream a launch runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// In program order with everything else.
    #[default]
    Compute,
    /// In program order with the other exchanges, beside the computation: it starts once
    /// the compute launches before it have run, and compute launches wait for it only
    /// where [`Launch::waits_for`] says.
    Exchange,
}

/// Whether launch `l` exchanges between the data-parallel replicas (a shard of a replica's
/// run is a local copy and stays in order).
fn exchanges(g: &Graph, l: &Launch) -> bool {
    matches!(&g.nodes[l.node].op, Op::Prim(p) if p.over_replicas() && !matches!(p, Prim::DataShard(_)))
}

/// Moves the data-parallel exchanges of `launches` onto the exchange stream as early as
/// their inputs allow (see the module doc), and sets every buffer's `first` to its
/// writer's new position. Returns, for each exchange's new position, the position of the
/// launch that waits for it (`launches.len()`: the end of the program), until which the
/// buffers it reads must stay live.
pub fn overlap_exchanges(g: &Graph, launches: &mut Vec<Launch>, buffers: &mut [Buffer]) -> Vec<(usize, usize)> {
    let n = launches.len();
    let writes = |l: &Launch| l.outputs.iter().map(|v| v.buffer).collect::<HashSet<BufferId>>();
    let reads = |l: &Launch| l.inputs.iter().map(|v| v.buffer).collect::<HashSet<BufferId>>();
    // An exchange, or a copy whose outputs only exchanges or such copies read, moves when
    // every buffer it writes is its own (not a state updated in place, not a concat's
    // block another launch also writes).
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); buffers.len()];
    let mut writers: Vec<Vec<usize>> = vec![Vec::new(); buffers.len()];
    for (i, l) in launches.iter().enumerate() {
        for b in reads(l) {
            readers[b].push(i);
        }
        for b in writes(l) {
            writers[b].push(i);
        }
    }
    let fresh = |i: usize, l: &Launch| {
        l.outputs.iter().all(|v| {
            let b = &buffers[v.buffer];
            b.first == i && !b.persistent() && writers[v.buffer].len() == 1
        })
    };
    let mut moves = vec![false; n];
    for i in (0..n).rev() {
        let l = &launches[i];
        let feeds = matches!(&g.nodes[l.node].op, Op::Prim(p) if matches!(p.class(), Class::Movement | Class::View))
            && l.outputs.iter().all(|v| !readers[v.buffer].is_empty() && readers[v.buffer].iter().all(|&r| moves[r]));
        moves[i] = (exchanges(g, l) || feeds) && fresh(i, l);
    }
    if !moves.iter().any(|&m| m) {
        return Vec::new();
    }
    // Each moving launch goes as soon as every launch before it writing what it reads has.
    let mut waiting = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in (0..n).filter(|&i| moves[i]) {
        let deps: BTreeSet<usize> =
            reads(&launches[i]).iter().flat_map(|&b| writers[b].iter().copied().filter(|&w| w < i)).collect();
        waiting[i] = deps.len();
        for w in deps {
            dependents[w].push(i);
        }
    }
    let mut order = Vec::with_capacity(n);
    let ready: Vec<usize> = (0..n).filter(|&i| moves[i] && waiting[i] == 0).collect();
    for first in ready.into_iter().chain((0..n).filter(|&i| !moves[i])) {
        let mut todo = vec![first];
        while let Some(i) = todo.pop() {
            order.push(i);
            for &d in dependents[i].iter().rev() {
                waiting[d] -= 1;
                if waiting[d] == 0 {
                    todo.push(d);
                }
            }
        }
    }
    let mut position = vec![0; n];
    for (p, &i) in order.iter().enumerate() {
        position[i] = p;
    }
    let mut old: Vec<Option<Launch>> = std::mem::take(launches).into_iter().map(Some).collect();
    *launches = order.iter().map(|&i| old[i].take().expect("each launch placed once")).collect();
    for b in buffers.iter_mut().filter(|b| !b.persistent() && b.first < n) {
        b.first = position[b.first];
    }
    // Exchanges on their stream; the first launch touching what one writes, or writing
    // what it reads, waits for it. An exchange that stays in order waits for the ones
    // before it, so the replicas' exchanges reach their communicator in program order.
    let sets: Vec<_> = launches.iter().map(|l| (reads(l), writes(l))).collect();
    let mut joins = Vec::new();
    let mut last_exchange = None;
    for p in 0..n {
        if !exchanges(g, &launches[p]) {
            continue;
        }
        if !moves[order[p]] {
            if let Some(e) = last_exchange {
                let waits = launches[p].waits_for.get_or_insert(e);
                *waits = (*waits).max(e);
            }
            continue;
        }
        last_exchange = Some(p);
        launches[p].stream = Stream::Exchange;
        let (ins, outs) = &sets[p];
        let join = (p + 1..n)
            .find(|&q| {
                let (r, w) = &sets[q];
                !outs.is_disjoint(r) || !outs.is_disjoint(w) || !ins.is_disjoint(w)
            })
            .unwrap_or(n);
        if join < n {
            let waits = launches[join].waits_for.get_or_insert(p);
            *waits = (*waits).max(p);
        }
        joins.push((p, join));
    }
    joins
}
