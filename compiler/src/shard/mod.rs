//! Tensor parallelism. The forward graph is rewritten into the program each of `ranks`
//! ranks runs on its shard of the weights, with collectives where a value's layout changes.
//!
//! Every value is replicated, split along one axis, or a partial sum. Which axes are split
//! is chosen, not written per model: the classes of axes that must split together
//! (`axes`) that touch parameters are grouped into families (the same class in every
//! layer), and families are added greedily while the roofline cost of the resulting
//! program — local compute plus collectives — falls. Attention heads, Mamba heads, MLP
//! width and vocabulary are separate families, so each is sharded (or not) on its own.
//! Autodiff then runs on the sharded program: collectives have gradients.

pub mod axes;
pub mod sections;
pub mod sequence;

use crate::cost::{total_time, Machine};
use crate::ir::{generic_name, Graph, NodeId, Op, Origin, ParamShard, Section, TensorType};
use crate::ops::{AllGather, AllReduce, Binary, Broadcast, Prim, Primitive, ReduceOp, ReduceScatter, Reshape, Shard};
use crate::ops::{GroupCopy, ScaledInt8, ScaledTernary, Slice, TpCopy, Unary, VocabEmbedding};
use crate::reference::Tensor;
use axes::Axes;
use hyb_dsl::dim::Dim;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Where a value lives across ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Layout {
    Replicated,
    /// Rank `r` holds part `r` of as many as there are ranks, along the axis.
    Split(usize),
    /// Rank `r` holds part `r / (ranks / parts)` of `parts` along the axis: each part on a
    /// group of ranks alike.
    Grouped(usize, usize),
    /// Every rank holds a term; the value is their sum.
    Partial,
}

/// The sharded program and what was decided.
pub struct Sharded {
    pub graph: Graph,
    /// The families of axes split across ranks, by the parameters they touch.
    pub split: Vec<String>,
    /// Every family considered.
    pub candidates: Vec<String>,
    /// Parameter axes no family can split, with the reason.
    pub unsplittable: Vec<Unsplittable>,
    /// Whether per-token work between tensor-parallel regions runs on sequence slices.
    pub sequence_parallel: bool,
    /// Predicted step time of the forward pass, before and after sharding (seconds).
    pub time_before: f64,
    pub time_after: f64,
}

/// What rank `rank` holds of full-size values keyed by parameter name (weights, and the
/// optimizer's `m.NAME` and `v.NAME`): its shard of each sharded parameter's, all of the
/// rest.
pub fn rank_values(g: &Graph, full: &HashMap<String, Tensor<f64>>, rank: usize) -> HashMap<String, Tensor<f64>> {
    let mut out = full.clone();
    for p in &g.params {
        if let Some(shard) = &p.shard {
            for key in [p.name.clone(), format!("m.{}", p.name), format!("v.{}", p.name)] {
                if let Some(x) = full.get(&key) {
                    out.insert(key, shard.local(x, rank));
                }
            }
        }
    }
    out
}

/// Shards forward graph `g` over `ranks` ranks.
pub fn shard(g: &Graph, ranks: usize, machine: &Machine) -> Sharded {
    let base = total_time(g, machine) + optimizer_time(g, machine);
    if ranks <= 1 {
        return Sharded {
            graph: g.clone(),
            split: vec![],
            candidates: vec![],
            unsplittable: vec![],
            sequence_parallel: false,
            time_before: base,
            time_after: base,
        };
    }
    let g = sections::split_sections(g);
    let axes = Axes::of(&g, ranks as i64);
    let families = families(&g, &axes);
    let mut chosen: BTreeSet<usize> = BTreeSet::new();
    let cost = |set: &BTreeSet<usize>| {
        let classes: BTreeSet<usize> = set.iter().flat_map(|&f| families[f].1.iter().copied()).collect();
        if !conflict_free(&g, &axes, &classes) {
            return None;
        }
        let p = emit(&g, &axes, &classes, ranks).ok()?;
        Some(total_time(&p, machine) + optimizer_time(&p, machine))
    };
    let mut current = cost(&chosen).expect("nothing split is valid");
    loop {
        let best = (0..families.len())
            .filter(|f| !chosen.contains(f))
            .filter_map(|f| {
                let mut trial = chosen.clone();
                trial.insert(f);
                cost(&trial).map(|c| (c, f))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            Some((c, f)) if c < current * (1.0 - 1e-6) => {
                chosen.insert(f);
                current = c;
            }
            _ => break,
        }
    }
    let classes: BTreeSet<usize> = chosen.iter().flat_map(|&f| families[f].1.iter().copied()).collect();
    let mut graph = emit(&g, &axes, &classes, ranks).expect("the chosen split was emitted while planning");
    let mut sequence_parallel = false;
    if let Ok(sp) = sequence::sequence_parallel(&graph, ranks) {
        let t = total_time(&sp, machine) + optimizer_time(&sp, machine);
        if t < current * (1.0 - 1e-6) {
            graph = sp;
            current = t;
            sequence_parallel = true;
        }
    }
    Sharded {
        graph,
        sequence_parallel,
        split: chosen.iter().map(|&f| families[f].0.clone()).collect(),
        candidates: families.iter().map(|f| f.0.clone()).collect(),
        unsplittable: unsplittable(&g, &axes),
        time_before: base,
        time_after: current,
    }
}

/// The optimizer's share of a step, which shrinks with the parameters a rank holds: AdamW
/// reads weight, gradient and two moments and writes weight and moments, in float32.
fn optimizer_time(g: &Graph, m: &Machine) -> f64 {
    let elements: usize = g.params.iter().map(|p| p.shape.iter().product::<usize>()).sum();
    elements as f64 * 7.0 * 4.0 / m.mem_bw
}

/// Splittable classes touching parameters, grouped by the parameter axes they contain
/// (equal layers give equal keys): `(description, classes)`.
fn families(g: &Graph, axes: &Axes) -> Vec<(String, Vec<usize>)> {
    let mut keys: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let (name, section) = match &n.op {
            Op::Param(p) => (generic_name(&g.params[*p].name), None),
            Op::Prim(Prim::Slice(s)) if axes.sectioned[n.inputs[0]].is_some() => {
                let Op::Param(p) = g.nodes[n.inputs[0]].op else { continue };
                (generic_name(&g.params[p].name), Some(s.start.to_string()))
            }
            _ => continue,
        };
        for a in 0..n.ty.shape.len() {
            if matches!(n.op, Op::Param(_)) && axes.sectioned[i] == Some(a) {
                continue;
            }
            let c = axes.class(i, a);
            if axes.is_blocked(c) {
                continue;
            }
            let mut key = match &section {
                Some(s) => format!("{name}[{s}..] axis {a}"),
                None => format!("{name} axis {a}"),
            };
            if axes.parts(c) < axes.ranks {
                key += &format!(" in {} parts", axes.parts(c));
            }
            keys.entry(c).or_default().insert(key);
        }
    }
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (c, k) in keys {
        by_key.entry(k.into_iter().collect::<Vec<_>>().join(", ")).or_default().push(c);
    }
    // Linked classes (key/value heads and the query heads reading them) split together.
    let mut families: Vec<(String, Vec<usize>)> = by_key.into_iter().collect();
    let links = axes.linked();
    loop {
        let family = |c: usize, fs: &[(String, Vec<usize>)]| fs.iter().position(|f| f.1.contains(&c));
        let join = links.iter().find_map(|&(g, h)| match (family(g, &families), family(h, &families)) {
            (Some(a), Some(b)) if a != b => Some((a.min(b), a.max(b))),
            _ => None,
        });
        let Some((a, b)) = join else { break };
        let (key, classes) = families.remove(b);
        families[a].0 = format!("{}, {key}", families[a].0);
        families[a].1.extend(classes);
    }
    families
}

/// A parameter axis tensor parallelism cannot split, why, and the operation in the source
/// that needs it whole.
#[derive(Clone, Debug, PartialEq)]
pub struct Unsplittable {
    /// The parameter's generic name and the axis (`layers.*.mamba.in_proj.weight axis 0`).
    pub axis: String,
    pub why: String,
    pub origin: Option<Origin>,
}

impl std::fmt::Display for Unsplittable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.axis, self.why)
    }
}

/// Parameter axes of blocked classes, with the first reason the class was blocked (each
/// parameter of a repeated layer once).
fn unsplittable(g: &Graph, axes: &Axes) -> Vec<Unsplittable> {
    let mut out: BTreeMap<(String, String), Option<Origin>> = BTreeMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let Op::Param(p) = n.op else { continue };
        for a in 0..n.ty.shape.len() {
            if axes.sectioned[i] == Some(a) {
                continue;
            }
            if let Some((why, origin)) = axes.why_blocked(axes.class(i, a)) {
                let key = (format!("{} axis {a}", generic_name(&g.params[p].name)), why.to_string());
                out.entry(key).or_insert(origin);
            }
        }
    }
    out.into_iter().map(|((axis, why), origin)| Unsplittable { axis, why, origin }).collect()
}

/// No value has two split axes.
fn conflict_free(g: &Graph, axes: &Axes, classes: &BTreeSet<usize>) -> bool {
    (0..g.nodes.len())
        .all(|i| (0..g.nodes[i].ty.shape.len()).filter(|&a| classes.contains(&axes.class(i, a))).count() <= 1)
}

type Emitted = Result<NodeId, String>;

struct Emitter<'a> {
    g: &'a Graph,
    axes: &'a Axes,
    classes: &'a BTreeSet<usize>,
    ranks: usize,
    out: Graph,
    new_id: Vec<NodeId>,
    layout: Vec<Layout>,
    /// Sectioned parameters: per section `(full start, local start, local size, parts)`.
    sections: HashMap<NodeId, Vec<(Dim, i64, i64, usize)>>,
    /// How many nodes read each node of the original graph.
    readers: Vec<usize>,
    converted: HashMap<(NodeId, Layout), NodeId>,
}

impl Emitter<'_> {
    fn split_axis(&self, i: NodeId) -> Option<usize> {
        (0..self.g.nodes[i].ty.shape.len()).find(|&a| self.classes.contains(&self.axes.class(i, a)))
    }

    fn wanted(&self, i: NodeId) -> Layout {
        match self.split_axis(i) {
            None => Layout::Replicated,
            Some(a) => match self.axes.parts(self.axes.class(i, a)) as usize {
                p if p == self.ranks => Layout::Split(a),
                p => Layout::Grouped(a, p),
            },
        }
    }

    /// How many parts of a split class `class` is in (the rank count, unless grouped).
    fn parts_of(&self, class: usize) -> Option<usize> {
        self.classes.contains(&class).then(|| self.axes.parts(class) as usize)
    }

    fn local_shape(&self, shape: &[Dim], layout: Layout) -> Vec<Dim> {
        let mut s = shape.to_vec();
        let (a, parts) = match layout {
            Layout::Split(a) => (a, self.ranks),
            Layout::Grouped(a, p) => (a, p),
            _ => return s,
        };
        s[a] = s[a].div_exact(&Dim::constant(parts as i64)).expect("divisible (checked by the analysis)");
        s
    }

    fn collective(&mut self, prim: impl Into<Prim>, x: NodeId) -> Emitted {
        self.out.try_apply(prim, vec![x])
    }

    /// Node `x` of the new graph in layout `want` (converted once, however many read it).
    fn convert(&mut self, x: NodeId, have: Layout, want: Layout) -> Emitted {
        if let Some(&y) = self.converted.get(&(x, want)) {
            return Ok(y);
        }
        let y = self.convert_new(x, have, want)?;
        self.converted.insert((x, want), y);
        Ok(y)
    }

    fn convert_new(&mut self, x: NodeId, have: Layout, want: Layout) -> Emitted {
        use Layout::*;
        match (have, want) {
            (Replicated, Replicated) | (Partial, Partial) => Ok(x),
            (Split(a), Split(b)) if a == b => Ok(x),
            (Partial, Replicated) => self.collective(AllReduce, x),
            (Partial, Split(a)) => self.collective(ReduceScatter { axis: a as i64, ranks: self.ranks }, x),
            (Split(a), Replicated) => self.collective(AllGather { axis: a as i64, ranks: self.ranks }, x),
            (Replicated, Split(a)) => self.collective(Shard { axis: a as i64, ranks: self.ranks }, x),
            (Grouped(a, p), Grouped(b, q)) if a == b && p == q => Ok(x),
            (Replicated, Grouped(a, p)) => self.group_shard(x, a, p),
            (Grouped(a, p), Replicated) => self.group_gather(x, a, p),
            // Through the whole value (a partial sum's to a split was a reduce-scatter above).
            (Split(_) | Grouped(..) | Partial, Split(_) | Grouped(..)) => {
                let full = self.convert(x, have, Replicated)?;
                self.convert(full, Replicated, want)
            }
            (_, Partial) => Err("nothing asks for a partial sum".into()),
        }
    }

    /// This rank's group's part of replicated `x` along `axis`, of `parts`: each part
    /// repeated for the ranks of its group, then this rank's slice. The slice's gradient
    /// (an all-gather) sums the group's ranks' gradients of their part.
    fn group_shard(&mut self, x: NodeId, axis: usize, parts: usize) -> Emitted {
        let s = self.out.nodes[x].ty.shape.clone();
        let (p, d) = (Dim::constant(parts as i64), Dim::constant((self.ranks / parts) as i64));
        let part = s[axis].div_exact(&p).ok_or("a grouped axis divides into its parts")?;
        let around = |mid: Vec<Dim>| [&s[..axis], &mid[..], &s[axis + 1..]].concat();
        let one = self.out.reshape(x, around(vec![p.clone(), Dim::constant(1), part.clone()]));
        let copies = self.out.try_apply(Broadcast { shape: around(vec![p, d.clone(), part]) }, vec![one])?;
        let wide = self.out.reshape(copies, around(vec![s[axis].mul(&d).ok_or("sizes multiply")?]));
        self.collective(Shard { axis: axis as i64, ranks: self.ranks }, wide)
    }

    /// Replicated `x` from its grouped parts along `axis`: every rank's part gathered, and
    /// the first copy of each part kept.
    fn group_gather(&mut self, x: NodeId, axis: usize, parts: usize) -> Emitted {
        let s = self.out.nodes[x].ty.shape.clone();
        let (p, d) = (Dim::constant(parts as i64), Dim::constant((self.ranks / parts) as i64));
        let around = |mid: Vec<Dim>| [&s[..axis], &mid[..], &s[axis + 1..]].concat();
        let all = self.collective(AllGather { axis: axis as i64, ranks: self.ranks }, x)?;
        let copies = self.out.reshape(all, around(vec![p.clone(), d, s[axis].clone()]));
        let first = self.out.try_apply(Slice::new(axis + 1, Dim::constant(0), Dim::constant(1)), vec![copies])?;
        self.out.try_apply(Reshape { shape: around(vec![s[axis].mul(&p).ok_or("sizes multiply")?]) }, vec![first])
    }

    fn param(&mut self, i: NodeId, p: usize) -> Result<(), String> {
        let n = &self.g.nodes[i];
        let mut spec = self.g.params[p].clone();
        let (shard, layout) = match self.axes.sectioned[i] {
            Some(ax) => {
                let mut views: Vec<(Dim, Dim, usize)> = Vec::new();
                for (v, m) in self.g.nodes.iter().enumerate() {
                    if m.inputs.first() == Some(&i) {
                        if let Op::Prim(Prim::Slice(Slice { start, end, .. })) = &m.op {
                            let parts = self.parts_of(self.axes.class(v, ax)).unwrap_or(1);
                            if !views.iter().any(|(vs, ..)| vs == start) {
                                views.push((start.clone(), end.clone(), parts));
                            }
                        }
                    }
                }
                views.sort_by_key(|(s, ..)| s.as_const());
                let mut local = 0;
                let mut table = Vec::new();
                let mut sections = Vec::new();
                let mut expected_start = 0;
                for &(ref s, ref e, parts) in &views {
                    let (s, e) = (s.as_const().expect("constant"), e.as_const().expect("constant"));
                    if s != expected_start {
                        return Err(format!("the sections of {} do not tile it", spec.name));
                    }
                    expected_start = e;
                    let size = (e - s) / parts as i64;
                    table.push((Dim::constant(s), local, size, parts));
                    sections.push(Section { size: (e - s) as usize, parts });
                    local += size;
                }
                self.sections.insert(i, table);
                let any = sections.iter().any(|s| s.parts > 1);
                let mut shape = n.ty.shape.clone();
                shape[ax] = Dim::constant(local);
                spec.shape[ax] = local as usize;
                (any.then_some(ParamShard { axis: ax, ranks: self.ranks, sections }), shape)
            }
            None => match self.wanted(i) {
                want @ (Layout::Split(a) | Layout::Grouped(a, _)) => {
                    let size = spec.shape[a];
                    let parts = if let Layout::Grouped(_, p) = want { p } else { self.ranks };
                    spec.shape[a] /= parts;
                    let shard = ParamShard { axis: a, ranks: self.ranks, sections: vec![Section { size, parts }] };
                    (Some(shard), self.local_shape(&n.ty.shape, want))
                }
                _ => (None, n.ty.shape.clone()),
            },
        };
        spec.shard = shard;
        self.out.params[p] = spec;
        let node = self.out.add(Op::Param(p), vec![], TensorType { shape: layout, dtype: n.ty.dtype });
        self.layout[i] = match self.axes.sectioned[i] {
            Some(_) => Layout::Replicated,
            None => self.wanted(i),
        };
        self.new_id[i] = self.held_by_group(node, self.layout[i])?;
        Ok(())
    }

    /// A part held alike by a group of ranks is read through a [`GroupCopy`], which sums
    /// its gradient over the group (Megatron's reduction of a duplicated key/value head's
    /// gradient within the ranks that share it).
    fn held_by_group(&mut self, x: NodeId, layout: Layout) -> Emitted {
        match layout {
            Layout::Grouped(_, parts) => self.out.try_apply(GroupCopy { ranks: self.ranks, parts }, vec![x]),
            _ => Ok(x),
        }
    }

    /// Whether node `i` keeps its partial-sum inputs partial: it is linear in them, it is
    /// their only reader (or each would be reduced again by its other readers), and its
    /// output is no larger (reducing later must not move more data).
    fn keeps_partial(&self, i: NodeId, prim: &Prim, partial: &[bool]) -> bool {
        let linear = prim.linear_in(partial);
        let n = &self.g.nodes[i];
        let numel = |s: &[Dim]| s.iter().map(|d| d.as_const().unwrap_or(1) as f64).product::<f64>();
        linear
            && n.inputs
                .iter()
                .zip(partial)
                .filter(|(_, &p)| p)
                .all(|(&x, _)| self.readers[x] == 1 && numel(&n.ty.shape) <= numel(&self.g.nodes[x].ty.shape))
    }

    fn node(&mut self, i: NodeId) -> Result<(), String> {
        let n = &self.g.nodes[i];
        self.out.scope = n.scope;
        self.out.origin = n.origin;
        let prim = match &n.op {
            Op::Param(p) => return self.param(i, *p),
            Op::Prim(prim) => prim.clone(),
            _ => {
                self.new_id[i] = self.out.add(n.op.clone(), vec![], n.ty.clone());
                self.layout[i] = Layout::Replicated;
                return Ok(());
            }
        };
        // A view of one section of a sectioned weight.
        if let Prim::Slice(view) = &prim {
            if self.sections.contains_key(&n.inputs[0]) {
                let table = &self.sections[&n.inputs[0]];
                let &(_, local, size, parts) =
                    table.iter().find(|(s, ..)| *s == view.start).ok_or("a view is not a section")?;
                let ax = view.axis_of(n.ty.shape.len());
                let local_view = Slice::new(ax, Dim::constant(local), Dim::constant(local + size));
                let y = self.out.try_apply(local_view, vec![self.new_id[n.inputs[0]]])?;
                self.layout[i] = match parts {
                    1 => Layout::Replicated,
                    p if p == self.ranks => Layout::Split(ax),
                    p => Layout::Grouped(ax, p),
                };
                self.new_id[i] = self.held_by_group(y, self.layout[i])?;
                return Ok(());
            }
        }
        let want = self.wanted(i);
        if let Layout::Split(a) | Layout::Grouped(a, _) = want {
            let last = n.ty.shape.len() - 1;
            if matches!(prim, Prim::TernaryQuant(_)) || (matches!(prim, Prim::Int8Quant(_)) && a == last) {
                return self.quantise_split(i, &prim, want);
            }
            if let (Prim::Reshape(_), Layout::Split(h)) = (&prim, want) {
                if let Some(y) = self.expand_heads(i, h)? {
                    self.new_id[i] = y;
                    self.layout[i] = want;
                    return Ok(());
                }
            }
        }
        let partial: Vec<bool> = n.inputs.iter().map(|&x| self.layout[x] == Layout::Partial).collect();
        let mut duplicates = 1;
        let mut inputs = Vec::new();
        let mut in_layouts = Vec::new();
        let out_layout =
            if partial.iter().any(|&p| p) && want == Layout::Replicated && self.keeps_partial(i, &prim, &partial) {
                for &x in &n.inputs {
                    let have = self.layout[x];
                    let target = if have == Layout::Partial { have } else { Layout::Replicated };
                    inputs.push(self.convert(self.new_id[x], have, target)?);
                    in_layouts.push(target);
                }
                Layout::Partial
            } else {
                for &x in &n.inputs {
                    let target = self.wanted(x);
                    inputs.push(self.convert(self.new_id[x], self.layout[x], target)?);
                    in_layouts.push(target);
                }
                let ra = self.g.nodes[n.inputs[0]].ty.shape.len();
                let summed = match &prim {
                    Prim::Matmul(m) => Some(if m.transpose_a { ra - 2 } else { ra - 1 }),
                    Prim::Embedding(_) => Some(0),
                    Prim::Reduce(r) if r.op != ReduceOp::Max => Some(r.axis_of(ra)),
                    _ => None,
                };
                match summed.and_then(|k| self.parts_of(self.axes.class(n.inputs[0], k))) {
                    Some(p) if p < self.ranks && matches!(prim, Prim::Embedding(_)) => {
                        return Err("a vocabulary is split into as many parts as ranks".into())
                    }
                    // Each term is held by ranks / p ranks alike: their sum counts it that often.
                    Some(p) => {
                        duplicates = self.ranks / p;
                        Layout::Partial
                    }
                    None => want,
                }
            };
        // A replicated value entering rank-local work: its gradient is summed over ranks.
        if out_layout != Layout::Replicated {
            for (k, &x) in n.inputs.iter().enumerate() {
                let leaf = matches!(self.g.nodes[x].op, Op::Constant(_) | Op::Input(_));
                if in_layouts[k] == Layout::Replicated && !leaf && self.g.nodes[x].ty.dtype.is_float() {
                    inputs[k] = self.out.try_apply(TpCopy, vec![inputs[k]])?;
                }
            }
        }
        let whole = if out_layout == Layout::Partial { Layout::Replicated } else { out_layout };
        let prim = match prim {
            Prim::Embedding(_) if out_layout == Layout::Partial => {
                Prim::VocabEmbedding(VocabEmbedding { ranks: self.ranks })
            }
            Prim::Reshape(_) => Prim::Reshape(Reshape { shape: self.local_shape(&n.ty.shape, whole) }),
            Prim::Broadcast(_) => Prim::Broadcast(Broadcast { shape: self.local_shape(&n.ty.shape, whole) }),
            other => other,
        };
        let is_mean = matches!(&prim, Prim::Reduce(r) if r.op == ReduceOp::Mean);
        let name = prim.name();
        let mut y = self.out.try_apply(prim, inputs)?;
        if is_mean && out_layout == Layout::Partial && !partial.iter().any(|&p| p) {
            y = self.out.scale(y, 1.0 / self.ranks as f64);
        } else if duplicates > 1 {
            y = self.out.scale(y, 1.0 / duplicates as f64);
        }
        // Every value must have the shape its layout says; otherwise the analysis let an
        // axis split that this operation does not carry, and the plan is refused.
        if self.out.nodes[y].ty.shape != self.local_shape(&n.ty.shape, whole) {
            return Err(format!("{name} does not carry the split"));
        }
        self.new_id[i] = y;
        self.layout[i] = out_layout;
        Ok(())
    }
}

impl Emitter<'_> {
    /// A BitNet quantiser of a value split along `a`: each rank quantises its part with the
    /// scale of the whole, as Megatron's BitNet parallel linears do. A ternary weight's
    /// absmean is the sum of every rank's partial sums (an all-reduce of one number); a
    /// token's int8 absmax, when its row is split, the largest of every rank's (an
    /// all-gather of one number per token and rank).
    ///
    /// Grouped parts are counted once per rank holding them, in the sum as in its count.
    fn quantise_split(&mut self, i: NodeId, prim: &Prim, layout: Layout) -> Result<(), String> {
        let n = &self.g.nodes[i];
        let x = n.inputs[0];
        let (Layout::Split(a) | Layout::Grouped(a, _)) = layout else { unreachable!("a split layout") };
        let local = self.convert(self.new_id[x], self.layout[x], layout)?;
        let shape = self.local_shape(&n.ty.shape, layout);
        let ranks = self.ranks;
        let o = &mut self.out;
        let magnitude = o.unary(Unary::Abs, local);
        let floor = o.constant(1e-5);
        let y = if matches!(prim, Prim::TernaryQuant(_)) {
            let count =
                shape.iter().map(Dim::as_const).product::<Option<i64>>().ok_or("a ternary weight of constant shape")?;
            let flat = o.reshape(magnitude, vec![Dim::constant(count)]);
            let part = o.reduce(ReduceOp::Sum, flat, 0, false);
            let total = o.try_apply(AllReduce, vec![part])?;
            let mean = o.scale(total, 1.0 / (count * ranks as i64) as f64);
            let s = o.binary(Binary::Maximum, mean, floor);
            o.try_apply(ScaledTernary, vec![local, s])?
        } else {
            let peak = o.reduce(ReduceOp::Max, magnitude, -1, true);
            let peaks = o.try_apply(AllGather { axis: a as i64, ranks }, vec![peak])?;
            let whole = o.reduce(ReduceOp::Max, peaks, -1, true);
            let m = o.binary(Binary::Maximum, whole, floor);
            o.try_apply(ScaledInt8, vec![local, m])?
        };
        if o.nodes[y].ty.shape != shape {
            return Err(format!("{} does not carry the split", prim.name()));
        }
        self.new_id[i] = y;
        self.layout[i] = layout;
        Ok(())
    }

    /// Grouped-query heads `[.., heads, D]` split over the ranks, expanded from linked
    /// key/value heads `reshape(broadcast(k, [.., kv, g, D]))`: each rank broadcasts the
    /// key/value heads it holds to just its query heads. `None` where node `i` is not such
    /// an expansion.
    fn expand_heads(&mut self, i: NodeId, h: usize) -> Result<Option<NodeId>, String> {
        let x = self.g.nodes[i].inputs[0];
        let xs = &self.g.nodes[x].ty.shape;
        if xs.len() != self.g.nodes[i].ty.shape.len() + 1 || !crate::ops::expands(self.g, x, h + 1) {
            return Ok(None);
        }
        let one = self.g.nodes[x].inputs[0];
        let kv = match self.layout[one] {
            Layout::Grouped(a, p) if a == h => xs[h].as_const().ok_or("constant heads")? / p as i64,
            Layout::Replicated if xs[h].as_const() == Some(1) => 1,
            _ => return Ok(None),
        };
        let shape = self.local_shape(&self.g.nodes[i].ty.shape, Layout::Split(h));
        let heads = shape[h].as_const().ok_or("constant heads")?;
        if heads % kv != 0 {
            return Err("a rank's query heads do not share its key/value heads".into());
        }
        let mut source = self.new_id[one];
        if self.layout[one] == Layout::Replicated && self.g.nodes[one].ty.dtype.is_float() {
            source = self.out.try_apply(TpCopy, vec![source])?;
        }
        let mut wide = self.out.nodes[source].ty.shape.clone();
        wide[h + 1] = Dim::constant(heads / kv);
        let copies = self.out.try_apply(Broadcast { shape: wide }, vec![source])?;
        self.out.try_apply(Reshape { shape }, vec![copies]).map(Some)
    }
}

/// The program each rank runs when `classes` are split, or why that split does not work.
fn emit(g: &Graph, axes: &Axes, classes: &BTreeSet<usize>, ranks: usize) -> Result<Graph, String> {
    let mut e = Emitter {
        g,
        axes,
        classes,
        ranks,
        out: Graph { params: g.params.clone(), ..Graph::default() },
        new_id: vec![usize::MAX; g.nodes.len()],
        layout: vec![Layout::Replicated; g.nodes.len()],
        sections: HashMap::new(),
        readers: {
            let mut r = vec![0; g.nodes.len()];
            for n in &g.nodes {
                for &x in &n.inputs {
                    r[x] += 1;
                }
            }
            r
        },
        converted: HashMap::new(),
    };
    for i in 0..g.nodes.len() {
        e.node(i)?;
    }
    let outputs = g
        .outputs
        .iter()
        .map(|&o| e.convert(e.new_id[o], e.layout[o], Layout::Replicated))
        .collect::<Result<Vec<_>, _>>()?;
    e.out.outputs = outputs;
    e.out.scope = 0;
    e.out.origin = None;
    // Key/value heads expanded whole and then broadcast again per rank leave the first
    // expansion unread.
    Ok(e.out.pruned())
}

impl ParamShard {
    /// Rank `rank`'s part of the full parameter `full`.
    pub fn local(&self, full: &Tensor<f64>, rank: usize) -> Tensor<f64> {
        let mut parts = Vec::new();
        let mut start = 0;
        for s in &self.sections {
            let a = start + s.part_of(rank, self.ranks) * s.local();
            parts.push(crate::ops::slice(full, self.axis, a, a + s.local()));
            start += s.size;
        }
        crate::ops::concat(&parts.iter().collect::<Vec<_>>(), self.axis)
    }

    /// The full parameter from every rank's part (each part from the first rank holding it).
    pub fn gather(&self, locals: &[Tensor<f64>]) -> Tensor<f64> {
        let mut parts = Vec::new();
        let mut offset = 0;
        for s in &self.sections {
            for part in 0..s.parts {
                let l = &locals[s.holder(part, self.ranks)];
                parts.push(crate::ops::slice(l, self.axis, offset, offset + s.local()));
            }
            offset += s.local();
        }
        crate::ops::concat(&parts.iter().collect::<Vec<_>>(), self.axis)
    }

    /// `axis 0 sections [64 split, 16 in 2 parts, 16 replicated] over 4 ranks` for people.
    pub fn describe(&self) -> String {
        let how = |s: &Section| match s.parts {
            1 => "replicated".to_string(),
            p if p == self.ranks => "split".to_string(),
            p => format!("in {p} parts"),
        };
        if let [s] = &self.sections[..] {
            return match s.parts {
                p if p == self.ranks => format!("axis {} split {p} ways", self.axis),
                p => format!("axis {} in {p} parts over {} ranks", self.axis, self.ranks),
            };
        }
        let parts: Vec<String> = self.sections.iter().map(|s| format!("{} {}", s.size, how(s))).collect();
        format!("axis {} sections [{}] over {} ranks", self.axis, parts.join(", "), self.ranks)
    }
}
