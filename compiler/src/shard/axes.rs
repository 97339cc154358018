//! Which tensor axes must be split together. Every axis of every node is a variable;
//! each operation unifies the axes that correspond (a pointwise op's aligned axes, a
//! matmul's contraction axes, the head axis a reshape exposes inside `heads · head_dim`)
//! and blocks axes that cannot be split without changing the result (a softmax's keys,
//! RoPE's pairs, the time axis of a scan). A class of axes split across ranks is a way
//! to shard the program; the planner picks among the classes that touch parameters.

use crate::ir::{Attr, Graph, NodeId, Op};
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::Prim;

pub struct Axes {
    parent: Vec<usize>,
    blocked: Vec<bool>,
    /// Why a blocked class cannot be split (the first reason found).
    why: Vec<Option<String>>,
    /// The reason `block` records.
    because: String,
    /// Axis `a` of node `n` is variable `offset[n] + a`.
    offset: Vec<usize>,
    /// Parameters read only through slices along one axis: that axis.
    pub sectioned: Vec<Option<usize>>,
}

fn int(a: &Attr) -> Option<i64> {
    match a {
        Attr::Int(d) => d.as_const(),
        _ => None,
    }
}

fn norm(a: i64, rank: usize) -> usize {
    if a < 0 {
        (a + rank as i64) as usize
    } else {
        a as usize
    }
}

impl Axes {
    pub fn var(&self, node: NodeId, axis: usize) -> usize {
        self.offset[node] + axis
    }

    pub fn class(&self, node: NodeId, axis: usize) -> usize {
        let mut v = self.var(node, axis);
        while self.parent[v] != v {
            v = self.parent[v];
        }
        v
    }

    pub fn is_blocked(&self, class: usize) -> bool {
        self.blocked[class]
    }

    /// Why class `class` cannot be split, if it cannot.
    pub fn why_blocked(&self, class: usize) -> Option<&str> {
        self.why[class].as_deref()
    }

    fn find(&mut self, mut v: usize) -> usize {
        while self.parent[v] != v {
            self.parent[v] = self.parent[self.parent[v]];
            v = self.parent[v];
        }
        v
    }

    fn unify(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[rb] = ra;
            self.blocked[ra] |= self.blocked[rb];
            if self.why[ra].is_none() {
                self.why[ra] = self.why[rb].take();
            }
        }
    }

    fn block(&mut self, v: usize) {
        let r = self.find(v);
        self.blocked[r] = true;
        if self.why[r].is_none() {
            self.why[r] = Some(self.because.clone());
        }
    }

    /// Analyses `g` for splitting into `ranks` parts.
    pub fn of(g: &Graph, ranks: i64) -> Axes {
        let mut offset = Vec::with_capacity(g.nodes.len());
        let mut total = 0;
        for n in &g.nodes {
            offset.push(total);
            total += n.ty.shape.len();
        }
        let mut ax = Axes {
            parent: (0..total).collect(),
            blocked: vec![false; total],
            why: vec![None; total],
            because: String::new(),
            offset,
            sectioned: vec![],
        };
        ax.sectioned = sectioned_params(g);
        for (i, n) in g.nodes.iter().enumerate() {
            let shape = &n.ty.shape;
            // Symbolic dimensions (batch, time) are never split by tensor parallelism, and
            // neither is a dimension the ranks do not divide.
            for (a, d) in shape.iter().enumerate() {
                if d.as_const().is_none_or(|c| c % ranks != 0) {
                    ax.because = format!("{d} does not divide into {ranks} equal parts");
                    ax.block(ax.var(i, a));
                }
            }
            if let Op::Prim { prim, attrs } = &n.op {
                ax.because = format!("{} needs the axis whole", prim.name());
                ax.op(g, i, *prim, attrs, ranks);
            }
        }
        ax
    }

    fn same(&mut self, x: NodeId, xa: usize, y: NodeId, ya: usize) {
        let (a, b) = (self.var(x, xa), self.var(y, ya));
        self.unify(a, b);
    }

    fn block_all(&mut self, g: &Graph, x: NodeId) {
        for a in 0..g.nodes[x].ty.shape.len() {
            self.block(self.var(x, a));
        }
    }

    /// Unifies the axes `x` shares with output `y` when aligned from the right (numpy
    /// broadcasting); broadcast axes of `x` stay free.
    fn aligned(&mut self, g: &Graph, x: NodeId, y: NodeId) {
        let (xs, ys) = (&g.nodes[x].ty.shape, &g.nodes[y].ty.shape);
        let shift = ys.len().saturating_sub(xs.len());
        for k in 0..xs.len().min(ys.len()) {
            if xs[k] == ys[k + shift] {
                self.same(x, k, y, k + shift);
            }
        }
    }

    fn op(&mut self, g: &Graph, y: NodeId, prim: Prim, attrs: &[Attr], ranks: i64) {
        use Prim::*;
        let n = &g.nodes[y];
        let ins = n.inputs.clone();
        let rank = n.ty.shape.len();
        let in_rank = |k: usize| g.nodes[ins[k]].ty.shape.len();
        match prim {
            _ if prim.is_elementwise() => {
                for &x in &ins {
                    self.aligned(g, x, y);
                }
            }
            Sum | Mean | Max => {
                let r = in_rank(0);
                let a = norm(int(&attrs[1]).unwrap_or(-1), r);
                let keep = matches!(attrs[2], Attr::Bool(true));
                for k in 0..r {
                    if k == a {
                        if prim == Max {
                            self.block(self.var(ins[0], k));
                        }
                    } else {
                        self.same(ins[0], k, y, if keep || k < a { k } else { k - 1 });
                    }
                }
            }
            Reshape => self.reshape(g, ins[0], y, ranks),
            Transpose | Permute => {
                let mut perm: Vec<usize> = (0..rank).collect();
                if prim == Transpose {
                    perm.swap(norm(int(&attrs[1]).unwrap_or(-2), rank), norm(int(&attrs[2]).unwrap_or(-1), rank));
                } else if let Attr::Ints(p) = &attrs[1] {
                    perm = p.iter().map(|d| norm(d.as_const().unwrap_or(0), rank)).collect();
                }
                for (k, &p) in perm.iter().enumerate() {
                    self.same(ins[0], p, y, k);
                }
            }
            Broadcast => self.aligned(g, ins[0], y),
            Slice => {
                let a = norm(int(&attrs[1]).unwrap_or(0), rank);
                for k in 0..rank {
                    if k != a {
                        self.same(ins[0], k, y, k);
                    }
                }
                if self.sectioned[ins[0]] == Some(a) {
                    // A weight section: free to be split or not; its other axes are not.
                    for k in (0..rank).filter(|&k| k != a) {
                        self.block(self.var(y, k));
                    }
                } else {
                    self.block(self.var(ins[0], a));
                    self.block(self.var(y, a));
                }
            }
            Concat => {
                let a = norm(int(&attrs[1]).unwrap_or(-1), rank);
                for &x in &ins {
                    for k in 0..rank {
                        if k == a {
                            self.block(self.var(x, k));
                        } else {
                            self.same(x, k, y, k);
                        }
                    }
                }
                self.block(self.var(y, a));
            }
            Embedding => {
                // The table's vocabulary axis may split: a vocabulary-parallel lookup.
                let (table, ids) = (ins[0], ins[1]);
                self.same(table, 1, y, rank - 1);
                for k in 0..in_rank(1) {
                    self.same(ids, k, y, k);
                }
            }
            Matmul => {
                let (a, b) = (ins[0], ins[1]);
                let (ra, rb) = (in_rank(0), in_rank(1));
                let (ta, tb) = (matches!(attrs[2], Attr::Bool(true)), matches!(attrs[3], Attr::Bool(true)));
                let (am, ak) = if ta { (ra - 1, ra - 2) } else { (ra - 2, ra - 1) };
                let (bk, bn) = if tb { (rb - 1, rb - 2) } else { (rb - 2, rb - 1) };
                self.same(a, am, y, rank - 2);
                self.same(b, bn, y, rank - 1);
                self.same(a, ak, b, bk);
                for (x, r) in [(a, ra), (b, rb)] {
                    let (xs, ys) = (&g.nodes[x].ty.shape, &n.ty.shape);
                    for (k, d) in xs.iter().enumerate().take(r.saturating_sub(2)) {
                        let yk = k + rank - r;
                        if *d == ys[yk] {
                            self.same(x, k, y, yk);
                        }
                    }
                }
            }
            CausalConv1d => {
                self.same(ins[0], 0, y, 0);
                self.same(ins[0], 2, y, 2);
                self.same(ins[1], 0, y, 2);
                if let Some(&bias) = ins.get(2) {
                    self.same(bias, 0, y, 2);
                }
                self.block(self.var(ins[1], 1));
            }
            SsdScan => {
                let (x, dt, a, b, c) = (ins[0], ins[1], ins[2], ins[3], ins[4]);
                for k in [0, 2, 3] {
                    self.same(x, k, y, k);
                }
                self.same(dt, 0, y, 0);
                self.same(dt, 2, y, 2);
                self.same(a, 0, y, 2);
                for bc in [b, c] {
                    self.same(bc, 0, y, 0);
                    self.block(self.var(bc, 3));
                }
                // Head h reads group h / (heads / groups): splitting heads splits the groups
                // with them, or needs the groups whole when there is only one.
                let groups = g.nodes[b].ty.shape[2].as_const().unwrap_or(0);
                if groups % ranks == 0 {
                    self.same(b, 2, y, 2);
                    self.same(c, 2, y, 2);
                } else if groups != 1 {
                    self.because = format!("ssd_scan's {groups} B/C groups neither divide into {ranks} nor are 1");
                    self.block(self.var(y, 2));
                }
            }
            // Needed whole: RoPE's rotation pairs, a token's quantisation scale, the causal
            // mask's square.
            Rope | Int8Quant | CausalMask | Tril => {
                for k in 0..rank {
                    self.same(ins[0], k, y, k);
                }
                let whole = if matches!(prim, Rope | Int8Quant) { 1 } else { 2 };
                for k in rank - whole..rank {
                    self.block(self.var(y, k));
                }
            }
            _ => {
                for &x in &ins {
                    self.block_all(g, x);
                }
                self.block_all(g, y);
            }
        }
        // Time is sequential everywhere.
        if n.ty.shape.len() >= 2 && n.ty.shape[1] == Dim::symbol("T") {
            self.block(self.var(y, 1));
        }
    }

    /// `reshape` maps groups of input axes to groups of output axes with equal products.
    /// A one-to-one group unifies; a merge or split unifies its major (outermost non-unit)
    /// axes — splitting `heads · head_dim` contiguously is splitting `heads` — and blocks
    /// the rest.
    fn reshape(&mut self, g: &Graph, x: NodeId, y: NodeId, ranks: i64) {
        let (xs, ys) = (g.nodes[x].ty.shape.clone(), g.nodes[y].ty.shape.clone());
        let (mut i, mut j) = (0, 0);
        while i < xs.len() || j < ys.len() {
            let (gi, gj) = (i, j);
            let (mut px, mut py) = (Dim::constant(1), Dim::constant(1));
            if i < xs.len() {
                px = px.mul(&xs[i]).unwrap_or_default();
                i += 1;
            }
            if j < ys.len() {
                py = py.mul(&ys[j]).unwrap_or_default();
                j += 1;
            }
            while px != py {
                let x_smaller = match (px.as_const(), py.as_const()) {
                    (Some(a), Some(b)) => a < b,
                    _ => true,
                };
                if (x_smaller || j >= ys.len()) && i < xs.len() {
                    px = px.mul(&xs[i]).unwrap_or_default();
                    i += 1;
                } else if j < ys.len() {
                    py = py.mul(&ys[j]).unwrap_or_default();
                    j += 1;
                } else {
                    break;
                }
            }
            if px != py {
                for k in gi..xs.len() {
                    self.block(self.var(x, k));
                }
                for k in gj..ys.len() {
                    self.block(self.var(y, k));
                }
                return;
            }
            let major = |s: &[Dim], from: usize, to: usize| (from..to).find(|&k| s[k].as_const() != Some(1));
            let (mx, my) = (major(&xs, gi, i), major(&ys, gj, j));
            if let (Some(a), Some(b)) = (mx, my) {
                let divisible = |d: &Dim| d.as_const().is_some_and(|c| c % ranks == 0);
                if (i - gi == 1 && j - gj == 1) || (divisible(&xs[a]) && divisible(&ys[b])) {
                    self.same(x, a, y, b);
                } else {
                    let factor = if divisible(&xs[a]) { &ys[b] } else { &xs[a] };
                    self.because =
                        format!("its outer factor {factor} (e.g. a head count) does not divide into {ranks}");
                    self.block(self.var(x, a));
                    self.block(self.var(y, b));
                }
                for k in (gi..i).filter(|&k| k != a) {
                    self.block(self.var(x, k));
                }
                for k in (gj..j).filter(|&k| k != b) {
                    self.block(self.var(y, k));
                }
            }
        }
    }
}

/// For each node: if it is a parameter read only through slices along one axis, that axis.
fn sectioned_params(g: &Graph) -> Vec<Option<usize>> {
    let mut axis: Vec<Option<Option<usize>>> = vec![None; g.nodes.len()];
    for n in &g.nodes {
        for (k, &x) in n.inputs.iter().enumerate() {
            if !matches!(g.nodes[x].op, Op::Param(_)) {
                continue;
            }
            let this = match &n.op {
                Op::Prim { prim: Prim::Slice, attrs } if k == 0 => int(&attrs[1]).map(|a| norm(a, n.ty.shape.len())),
                _ => None,
            };
            axis[x] = Some(match axis[x] {
                None => this,
                Some(prev) if prev == this => prev,
                Some(_) => None,
            });
        }
    }
    axis.into_iter().map(Option::flatten).collect()
}
