//! What the compiler chose, for people: the kernel list of a compiled program (kind, fused
//! operations, weights, FLOPs, bytes, predicted time), grouped by distinct region so a
//! 72-layer model prints each layer body once; and a Graphviz picture.

use crate::cost::{node_work, stored_weight, Machine, Work};
use crate::ir::{generic_name, Graph, Node, NodeId, Op};
use crate::ops::{Prim, Primitive};
use crate::rewrite::region;
use std::collections::HashMap;
use std::fmt::Write;

/// One launched kernel.
#[derive(Clone, Debug)]
pub struct KernelLine {
    pub kind: String,
    /// The primitives it computes, in order.
    pub ops: Vec<String>,
    /// The parameters it reads (packed weights joined by `|`).
    pub weights: Vec<String>,
    pub work: Work,
}

/// The kernels of one distinct region and where it repeats.
#[derive(Clone, Debug)]
pub struct RegionKernels {
    pub label: String,
    pub count: usize,
    pub kernels: Vec<KernelLine>,
}

/// A parameter's generic name without the `.weight` suffix.
fn generic(name: &str) -> String {
    generic_name(name).trim_end_matches(".weight").to_string()
}

fn weights_read(g: &Graph, n: &Node) -> Vec<String> {
    let param = |x: NodeId| stored_weight(g, x).map(|p| generic(&g.params[p].name));
    n.inputs
        .iter()
        .filter_map(|&x| match &g.nodes[x].op {
            Op::Prim(Prim::Concat(_)) => {
                let parts: Option<Vec<String>> = g.nodes[x].inputs.iter().map(|&y| param(y)).collect();
                parts.map(|p| p.join(" | "))
            }
            _ => param(x),
        })
        .collect()
}

fn line(g: &Graph, i: NodeId, m: &Machine) -> Option<KernelLine> {
    let work = node_work(g, i, m)?;
    let n = &g.nodes[i];
    let (kind, ops) = match &n.op {
        Op::Kernel(k) => (k.kind.name(), k.op_names()),
        Op::Prim(prim) => (prim.name().to_string(), vec![prim.name().to_string()]),
        _ => return None,
    };
    Some(KernelLine { kind, ops, weights: weights_read(g, n), work })
}

/// The kernels of `g`, one entry per distinct region body.
pub fn kernels(g: &Graph, m: &Machine) -> Vec<RegionKernels> {
    let regions = region::partition(g);
    let mut order: Vec<String> = Vec::new();
    let mut by_sig: HashMap<String, (Vec<u32>, usize, Vec<KernelLine>)> = HashMap::new();
    let mut part_of_scope: HashMap<u32, usize> = HashMap::new();
    for r in &regions {
        let part = part_of_scope.entry(r.scope).or_default();
        *part += 1;
        let sig = format!("{}#{}", region::signature(g, r), if r.scope == 0 { 0 } else { *part });
        let entry = by_sig.entry(sig.clone()).or_insert_with(|| {
            order.push(sig.clone());
            (vec![], *part, r.nodes.iter().filter_map(|&i| line(g, i, m)).collect())
        });
        entry.0.push(r.scope);
    }
    order
        .into_iter()
        .map(|sig| {
            let (scopes, part, kernels) = by_sig.remove(&sig).expect("recorded");
            let label = if scopes.iter().all(|&s| s == 0) {
                "outside the layers".to_string()
            } else {
                let mut layers: Vec<u32> = scopes.iter().map(|s| s - 1).collect();
                layers.sort_unstable();
                format!("layers {} · pass {part}", ranges(&layers))
            };
            RegionKernels { label, count: scopes.len(), kernels }
        })
        .filter(|r| !r.kernels.is_empty())
        .collect()
}

/// `0,1,2,5` → `0–2, 5`.
fn ranges(xs: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < xs.len() {
        let mut j = i;
        while j + 1 < xs.len() && xs[j + 1] == xs[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { xs[i].to_string() } else { format!("{}–{}", xs[i], xs[j]) });
        i = j + 1;
    }
    parts.join(", ")
}

/// A Graphviz picture: one box per kernel, clustered by layer; views and leaves are
/// folded into the edges.
pub fn dot(g: &Graph, m: &Machine) -> String {
    let mut s =
        String::from("digraph hyb {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n");
    // Each view or leaf resolves to the kernel that produced its data (or none).
    let mut source: Vec<Option<NodeId>> = vec![None; g.nodes.len()];
    let mut by_scope: HashMap<u32, Vec<NodeId>> = HashMap::new();
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        match node_work(g, i, m) {
            Some(w) => {
                source[i] = Some(i);
                by_scope.entry(n.scope).or_default().push(i);
                let l = line(g, i, m).expect("a kernel");
                let label = format!(
                    "{}\\n{}{}\\n{:.3} GFLOP {:.2} MB {:.1} µs",
                    l.kind,
                    l.ops.join(" "),
                    if l.weights.is_empty() { String::new() } else { format!("\\n{}", l.weights.join(", ")) },
                    w.flops / 1e9,
                    w.bytes / 1e6,
                    w.time(m) * 1e6
                );
                let _ = writeln!(s, "  n{i} [label=\"{label}\"];");
            }
            None => source[i] = n.inputs.first().and_then(|&x| source[x]),
        }
    }
    let mut scopes: Vec<_> = by_scope.into_iter().collect();
    scopes.sort();
    for (scope, ids) in scopes {
        let title = if scope == 0 { "outside layers".to_string() } else { format!("layer {}", scope - 1) };
        let _ = writeln!(s, "  subgraph cluster_{scope} {{ label=\"{title}\";");
        for i in ids {
            let _ = writeln!(s, "    n{i};");
        }
        s.push_str("  }\n");
    }
    for i in 0..g.nodes.len() {
        if source[i] != Some(i) {
            continue;
        }
        let mut seen = Vec::new();
        for &x in &g.nodes[i].inputs {
            if let Some(p) = source[x].filter(|p| !seen.contains(p)) {
                seen.push(p);
                let _ = writeln!(s, "  n{p} -> n{i};");
            }
        }
    }
    s.push_str("}\n");
    s
}
