//! Choosing one node per e-class. A greedy bottom-up pass picks, per class, the node of
//! least tree cost; then moves are tried against the true cost of the program — each value
//! computed once, however many users it has: single-class switches, and the multi-class
//! groups rules registered (a merged GEMM only pays off when all its members use it).

use super::lang::{Data, EGraph, ENode, OpKind};
use crate::cost::{body_flops, kernel_work, prim_work, Machine};
use crate::ops::{Class, Prim, Primitive};
use egg::Id;
use std::collections::HashMap;

pub type Choice = HashMap<Id, ENode>;

/// Per-node cost in seconds, given the nodes chosen for its children.
pub struct Coster<'a> {
    pub eg: &'a EGraph,
    pub machine: &'a Machine,
    kernel_flops: HashMap<usize, f64>,
    /// Whether a pointwise op reading a slice of a GEMM's output (a merged GEMM) counts as
    /// its epilogue: true when fusion puts every slice's reader in the GEMM's kernel.
    slices_in_epilogue: bool,
}

impl<'a> Coster<'a> {
    pub fn new(eg: &'a EGraph, machine: &'a Machine, slices_in_epilogue: bool) -> Self {
        Coster { eg, machine, kernel_flops: HashMap::new(), slices_in_epilogue }
    }

    /// The time of node `n` of class `class`.
    pub fn node_time(&mut self, class: Id, n: &ENode, choice: &Choice) -> f64 {
        let eg = self.eg;
        let data = |id: Id| -> &Data { &eg[id].data };
        let inputs: Vec<_> = n.children.iter().map(|&c| &data(c).ty).collect();
        match self.eg.analysis.op(n) {
            OpKind::Leaf(_) | OpKind::Const(..) | OpKind::Output(_) => 0.0,
            OpKind::Prim(prim) => {
                if !prim.moves_data() {
                    return 0.0;
                }
                let all_weights = n.children.iter().all(|&c| data(c).weight);
                if matches!(prim, Prim::Concat(_)) && all_weights {
                    // Weights are stored packed: concatenation happens once, at load.
                    return 0.0;
                }
                if prim.class() == Class::Elementwise && self.feeds_from_gemm(n, choice) {
                    // Runs in the GEMM's epilogue.
                    return 0.0;
                }
                prim_work(self.machine, prim, &inputs, &eg[class].data.ty).time(self.machine)
            }
            OpKind::Kernel(k) => {
                let k = *k;
                let kernel = &self.eg.analysis.kernels[k];
                let flops = *self.kernel_flops.entry(k).or_insert_with(|| body_flops(kernel, self.machine));
                let outs: Vec<_> = kernel.body.outputs.iter().map(|&o| &kernel.body.nodes[o].ty).collect();
                kernel_work(self.machine, &kernel.kind, &inputs, &outs, flops).time(self.machine)
            }
        }
    }

    /// A pointwise node one of whose inputs is produced by a GEMM (through views; through a
    /// slice only if `slices_in_epilogue`), the others being scalars or vectors: a GEMM
    /// epilogue.
    fn feeds_from_gemm(&self, n: &ENode, choice: &Choice) -> bool {
        let eg = self.eg;
        let small = |id: Id| eg[id].data.ty.shape.iter().filter(|d| d.as_const() != Some(1)).count() <= 1;
        let is_gemm = |mut id: Id| loop {
            let Some(c) = choice.get(&eg.find(id)) else { return false };
            match eg.analysis.op(c) {
                OpKind::Prim(Prim::Matmul(_)) => return true,
                OpKind::Prim(p) if !p.moves_data() && (!matches!(p, Prim::Slice(_)) || self.slices_in_epilogue) => {
                    id = c.children[0]
                }
                OpKind::Kernel(k) => return matches!(eg.analysis.kernels[*k].kind, crate::ir::KernelKind::BitLinear),
                _ => return false,
            }
        };
        let gemm_inputs = n.children.iter().filter(|&&c| is_gemm(c)).count();
        gemm_inputs == 1 && n.children.iter().all(|&c| is_gemm(c) || small(c))
    }
}

/// The true cost of the program `choice` computes for `roots`; `None` if it is cyclic or
/// incomplete.
pub fn dag_cost(coster: &mut Coster, choice: &Choice, roots: &[Id]) -> Option<f64> {
    // 0 unvisited, 1 on the stack, 2 done.
    let mut state: HashMap<Id, u8> = HashMap::new();
    let mut total = 0.0;
    let mut stack: Vec<(Id, bool)> = roots.iter().map(|&r| (coster.eg.find(r), false)).collect();
    while let Some((id, expanded)) = stack.pop() {
        if expanded {
            state.insert(id, 2);
            total += coster.node_time(id, choice.get(&id)?, choice);
            continue;
        }
        match state.get(&id) {
            Some(2) => continue,
            Some(1) => return None,
            _ => {}
        }
        state.insert(id, 1);
        stack.push((id, true));
        for &c in &choice.get(&id)?.children {
            let c = coster.eg.find(c);
            match state.get(&c) {
                Some(2) => {}
                Some(1) => return None,
                _ => stack.push((c, false)),
            }
        }
    }
    Some(total)
}

/// Picks the cheapest program computing `roots` (see [`Coster`] for `slices_in_epilogue`).
pub fn extract(eg: &EGraph, roots: &[Id], machine: &Machine, slices_in_epilogue: bool) -> Choice {
    let mut coster = Coster::new(eg, machine, slices_in_epilogue);
    let mut best: HashMap<Id, f64> = HashMap::new();
    let mut choice = Choice::new();
    // Greedy tree cost to a fixed point; a tiny per-node term prefers fewer nodes on ties.
    loop {
        let mut changed = false;
        for class in eg.classes() {
            for n in &class.nodes {
                let Some(children) = n.children.iter().map(|&c| best.get(&eg.find(c)).copied()).sum::<Option<f64>>()
                else {
                    continue;
                };
                let cost = (coster.node_time(class.id, n, &choice) + children + 1e-12).min(1e300);
                if best.get(&class.id).is_none_or(|&b| cost < b) {
                    best.insert(class.id, cost);
                    choice.insert(class.id, n.clone());
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let Some(mut current) = dag_cost(&mut coster, &choice, roots) else {
        return choice;
    };
    // Group moves, then single-class switches on the classes the program uses.
    for group in eg.analysis.groups.clone() {
        let mut trial = choice.clone();
        for (class, node) in group {
            trial.insert(eg.find(class), node);
        }
        if let Some(c) = dag_cost(&mut coster, &trial, roots).filter(|&c| c < current * (1.0 - 1e-9)) {
            choice = trial;
            current = c;
        }
    }
    let used: Vec<Id> = reachable(eg, &choice, roots);
    for id in used {
        if eg[id].nodes.len() < 2 {
            continue;
        }
        for n in eg[id].nodes.clone() {
            if choice.get(&id) == Some(&n) || !n.children.iter().all(|c| choice.contains_key(&eg.find(*c))) {
                continue;
            }
            let old = choice.insert(id, n);
            match dag_cost(&mut coster, &choice, roots).filter(|&c| c < current * (1.0 - 1e-9)) {
                Some(c) => current = c,
                None => {
                    choice.insert(id, old.expect("chosen before"));
                }
            }
        }
    }
    choice
}

fn reachable(eg: &EGraph, choice: &Choice, roots: &[Id]) -> Vec<Id> {
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::new();
    let mut stack: Vec<Id> = roots.iter().map(|&r| eg.find(r)).collect();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        order.push(id);
        if let Some(n) = choice.get(&id) {
            stack.extend(n.children.iter().map(|&c| eg.find(c)));
        }
    }
    order
}
