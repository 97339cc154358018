//! Which tensor axes must be split together. Every axis of every node is a variable;
//! each operation unifies the axes that correspond (a pointwise op's aligned axes, a
//! matmul's contraction axes, the head axis a reshape exposes inside `heads · head_dim`)
//! and blocks axes that cannot be split without changing the result (a softmax's keys,
//! RoPE's pairs, the time axis of a scan). A class of axes split across ranks is a way
//! to shard the program; the planner picks among the classes that touch parameters.
//!
//! A class splits into as many parts as divide every axis in it and the rank count. With
//! fewer parts than ranks, each part is held by a group of ranks alike (20 query heads over
//! 8 ranks: 4 parts, each on 2 ranks). Key/value heads and B/C groups fewer than the
//! ranks are *linked* to the heads that read them instead: each rank holds the one
//! key/value head or group its heads read, duplicated over the ranks that share it, as
//! Megatron does.

use crate::ir::{Graph, NodeId, Op, Origin};
use crate::ops::{Prim, Primitive};
use hyb_dsl::dim::Dim;
use num_integer::gcd;

pub struct Axes {
    parent: Vec<usize>,
    blocked: Vec<bool>,
    /// Why a blocked class cannot be split (the first reason found), and the source of the
    /// operation that gave it.
    why: Vec<Option<(String, Option<Origin>)>>,
    /// The reason `block` records (an op's rule may say why before it blocks).
    pub because: String,
    /// The source of the operation whose rule is being applied.
    because_at: Option<Origin>,
    /// How many ranks the analysis splits for.
    pub ranks: i64,
    /// Axis `a` of node `n` is variable `offset[n] + a`.
    offset: Vec<usize>,
    /// Parameters read only through slices along one axis: that axis.
    pub sectioned: Vec<Option<usize>>,
    /// Per class (at its root): how many parts it splits into, the greatest common divisor
    /// of the rank count and every dimension in it.
    parts: Vec<i64>,
    /// Classes split into different numbers of parts that must be split together.
    links: Vec<Link>,
}

/// `count` key/value heads (or B/C groups) read by the heads of another class: with
/// `count` dividing the ranks, each rank holds the one its heads read. Valid when the
/// group class splits into exactly `count` parts (or `count` is 1 and it stays whole) and
/// the heads' parts are a multiple of `count`, so every rank's heads read one group.
#[derive(Clone, Copy, Debug)]
struct Link {
    group: usize,
    heads: usize,
    count: i64,
}

impl Axes {
    pub fn var(&self, node: NodeId, axis: usize) -> usize {
        self.offset[node] + axis
    }

    pub fn class(&self, node: NodeId, axis: usize) -> usize {
        self.class_of(self.var(node, axis))
    }

    pub fn is_blocked(&self, class: usize) -> bool {
        self.blocked[class]
    }

    /// How many parts class `class` splits into: the rank count, or fewer, each part then
    /// held alike by `ranks / parts` ranks.
    pub fn parts(&self, class: usize) -> i64 {
        self.parts[class]
    }

    /// Pairs of classes that are split together or not at all (a group class and the
    /// heads class that reads it).
    pub fn linked(&self) -> Vec<(usize, usize)> {
        self.links.iter().map(|l| (self.class_of(l.group), self.class_of(l.heads))).collect()
    }

    fn class_of(&self, mut v: usize) -> usize {
        while self.parent[v] != v {
            v = self.parent[v];
        }
        v
    }

    /// Why class `class` cannot be split, if it cannot, and where in the source.
    pub fn why_blocked(&self, class: usize) -> Option<(&str, Option<Origin>)> {
        self.why[class].as_ref().map(|(why, at)| (why.as_str(), *at))
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
            self.parts[ra] = gcd(self.parts[ra], self.parts[rb]);
            if self.parts[ra] == 1 {
                let reason = format!("the axes split with it share no divisor of {}", self.ranks);
                let rule = std::mem::replace(&mut self.because, reason);
                self.block(ra);
                self.because = rule;
            }
        }
    }

    /// Variable `v` has size `size`: its class splits into parts that divide it.
    fn size(&mut self, v: usize, size: i64) {
        let r = self.find(v);
        self.parts[r] = gcd(self.parts[r], size);
        if self.parts[r] == 1 {
            self.block(r);
        }
    }

    /// `count` groups (variable `group`) read by the heads of variable `heads`.
    pub fn link(&mut self, group: usize, heads: usize, count: i64) {
        self.links.push(Link { group, heads, count });
    }

    /// Marks variable `v`'s class as unsplittable, for the current reason.
    pub fn block(&mut self, v: usize) {
        let r = self.find(v);
        self.blocked[r] = true;
        if self.why[r].is_none() {
            self.why[r] = Some((self.because.clone(), self.because_at));
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
            because_at: None,
            ranks,
            offset,
            sectioned: vec![],
            parts: vec![ranks; total],
            links: vec![],
        };
        ax.sectioned = sectioned_params(g);
        for (i, n) in g.nodes.iter().enumerate() {
            ax.because_at = n.origin;
            let shape = &n.ty.shape;
            // Symbolic dimensions (batch, time) are never split by tensor parallelism, and
            // neither is a dimension that shares no divisor with the ranks.
            for (a, d) in shape.iter().enumerate() {
                ax.because = format!("{d} does not divide into {ranks} equal parts");
                match d.as_const() {
                    Some(c) => ax.size(ax.var(i, a), c),
                    None => ax.block(ax.var(i, a)),
                }
            }
            if let Op::Prim(prim) = &n.op {
                ax.because = format!("{} needs the axis whole", prim.name());
                ax.op(g, i, prim);
            }
        }
        ax.check_links();
        ax
    }

    /// Blocks both sides of every link whose classes do not split together.
    fn check_links(&mut self) {
        for l in self.links.clone() {
            let (gc, hc) = (self.find(l.group), self.find(l.heads));
            let one_each = !self.blocked[gc] && self.parts[gc] == l.count;
            let fits = (l.count == 1 || one_each) && self.parts[hc] % l.count == 0;
            if !fits {
                self.because = format!(
                    "{} key/value heads or B/C groups and the heads that read them do not split together over {} ranks",
                    l.count, self.ranks
                );
                self.block(gc);
                self.block(hc);
            }
        }
    }

    /// Axis `xa` of `x` and axis `ya` of `y` split together.
    pub fn same(&mut self, x: NodeId, xa: usize, y: NodeId, ya: usize) {
        let (a, b) = (self.var(x, xa), self.var(y, ya));
        self.unify(a, b);
    }

    pub fn block_all(&mut self, g: &Graph, x: NodeId) {
        for a in 0..g.nodes[x].ty.shape.len() {
            self.block(self.var(x, a));
        }
    }

    /// Unifies the axes `x` shares with output `y` when aligned from the right (numpy
    /// broadcasting); broadcast axes of `x` stay free.
    pub fn aligned(&mut self, g: &Graph, x: NodeId, y: NodeId) {
        let (xs, ys) = (&g.nodes[x].ty.shape, &g.nodes[y].ty.shape);
        let shift = ys.len().saturating_sub(xs.len());
        for k in 0..xs.len().min(ys.len()) {
            if xs[k] == ys[k + shift] {
                self.same(x, k, y, k + shift);
            }
        }
    }

    /// Applies the sharding rule of node `y`'s primitive; time is never split.
    fn op(&mut self, g: &Graph, y: NodeId, prim: &Prim) {
        prim.shard_axes(self, g, y);
        let shape = &g.nodes[y].ty.shape;
        if shape.len() >= 2 && shape[1] == Dim::symbol("T") {
            self.block(self.var(y, 1));
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
                Op::Prim(Prim::Slice(s)) if k == 0 => Some(s.axis_of(n.ty.shape.len())),
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
