//! Rewriting: the naive graph becomes few, large kernels. Each region (a layer's forward
//! pass, its backward pass, …) is loaded into an e-graph, saturated with verified rules in
//! phases under node and iteration limits, and the cheapest equivalent program under the
//! roofline cost model is extracted; regions with equal bodies share one run. Vertical
//! fusion then groups pointwise chains into kernels.

pub mod expr;
mod extract;
pub mod fuse;
pub mod kernels;
pub mod lang;
pub mod region;
pub mod remat;
pub mod rules;

use crate::cost::Machine;
use crate::ir::{Graph, NodeId, Op};
use egg::{Id, Runner, SimpleScheduler, StopReason};
use lang::{EGraph, ENode};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Limits and the machine the cost model describes.
#[derive(Clone, Debug)]
pub struct Options {
    pub machine: Machine,
    pub node_limit: usize,
    pub iter_limit: usize,
    pub time_limit: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { machine: Machine::default(), node_limit: 20_000, iter_limit: 8, time_limit: Duration::from_secs(5) }
    }
}

/// What rewriting did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub regions: usize,
    /// Distinct region bodies, each optimised once.
    pub unique_regions: usize,
    /// Equalities each rule added, counted once per region it served.
    pub fired: BTreeMap<String, usize>,
    /// The largest e-graph built (e-nodes).
    pub max_egraph_nodes: usize,
    /// Why each run of a rule phase over a distinct region body stopped (saturated, node
    /// limit, iteration limit, time limit), counted.
    pub stops: BTreeMap<String, usize>,
    /// Rule iterations over all runs, and the most any run took.
    pub iterations: usize,
    pub max_iterations: usize,
}

impl Report {
    /// Adds another stage's report.
    pub fn merge(&mut self, other: Report) {
        self.regions += other.regions;
        self.unique_regions += other.unique_regions;
        for (rule, n) in other.fired {
            *self.fired.entry(rule).or_default() += n;
        }
        self.max_egraph_nodes = self.max_egraph_nodes.max(other.max_egraph_nodes);
        for (stop, n) in other.stops {
            *self.stops.entry(stop).or_default() += n;
        }
        self.iterations += other.iterations;
        self.max_iterations = self.max_iterations.max(other.max_iterations);
    }

    fn record(&mut self, run: &Run) {
        *self.stops.entry(run.stop.clone()).or_default() += 1;
        self.iterations += run.iterations;
        self.max_iterations = self.max_iterations.max(run.iterations);
    }
}

/// How one saturation run ended.
#[derive(Clone, Debug)]
pub struct Run {
    pub stop: String,
    pub iterations: usize,
}

/// egg's stop reason in words.
fn stop_reason(reason: Option<&StopReason>) -> String {
    match reason {
        Some(StopReason::Saturated) => "saturated".into(),
        Some(StopReason::NodeLimit(_)) => "node limit".into(),
        Some(StopReason::IterationLimit(_)) => "iteration limit".into(),
        Some(StopReason::TimeLimit(_)) => "time limit".into(),
        Some(StopReason::Other(why)) => why.clone(),
        None => "not run".into(),
    }
}

/// A region's optimised body, ready to be stamped out for every region with its signature.
struct Template {
    program: expr::Program,
    fired: BTreeMap<&'static str, usize>,
    egraph_nodes: usize,
    runs: Vec<Run>,
}

/// Rewrites every region of `g` with the e-graph rules, then fuses pointwise chains.
pub fn optimize(g: &Graph, opts: &Options) -> (Graph, Report) {
    let (rewritten, report) = saturate(g, opts);
    (fuse::fuse(&rewritten), report)
}

/// The e-graph stage alone: rules and extraction, no vertical fusion.
pub fn saturate(g: &Graph, opts: &Options) -> (Graph, Report) {
    let regions = region::partition(g);
    let mut out = Graph { params: g.params.clone(), ..Graph::default() };
    let mut new_id: Vec<Option<NodeId>> = vec![None; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if matches!(n.op, Op::Input(_) | Op::Param(_) | Op::Constant(_)) {
            out.scope = n.scope;
            out.origin = n.origin;
            new_id[i] = Some(out.add(n.op.clone(), vec![], n.ty.clone()));
        }
    }
    let mut templates: HashMap<String, Template> = HashMap::new();
    let mut report = Report { regions: regions.len(), ..Report::default() };
    for r in &regions {
        let sig = region::signature(g, r);
        let t = templates.entry(sig).or_insert_with(|| {
            report.unique_regions += 1;
            let t = optimize_region(g, r, opts);
            for run in &t.runs {
                report.record(run);
            }
            t
        });
        for (name, count) in &t.fired {
            *report.fired.entry(name.to_string()).or_default() += count;
        }
        report.max_egraph_nodes = report.max_egraph_nodes.max(t.egraph_nodes);
        out.scope = r.scope;
        // Rewritten nodes keep a place in the source: the region's first call, or for each
        // result the call that computed it before.
        out.origin = r.nodes.iter().find_map(|&i| g.nodes[i].origin);
        let first_new = out.nodes.len();
        let leaves: Vec<NodeId> = r.leaves.iter().map(|&l| new_id[l].expect("leaves precede")).collect();
        for (&o, made) in r.outputs.iter().zip(t.program.instantiate(&mut out, &leaves)) {
            if made >= first_new && g.nodes[o].origin.is_some() {
                out.nodes[made].origin = g.nodes[o].origin;
            }
            new_id[o] = Some(made);
        }
    }
    out.outputs = g.outputs.iter().map(|&o| new_id[o].expect("outputs are computed")).collect();
    out.scope = 0;
    out.origin = None;
    (out, report)
}

/// Loads region `r` into an e-graph, runs the rule phases and extracts its best body.
fn optimize_region(g: &Graph, r: &region::Region, opts: &Options) -> Template {
    let (mut eg, class_of) = load(g, r);
    let roots: Vec<Id> = r.outputs.iter().map(|o| class_of[o]).collect();
    let mut runs = Vec::new();
    for phase in rules::phases() {
        let (next, run) = run_rules(eg, &phase, opts);
        eg = next;
        runs.push(run);
    }
    let fired = std::mem::take(&mut eg.analysis.fired);
    // Whether a merged GEMM's slices fuse into its epilogue depends on the fusion that
    // follows: extract both ways and keep the program that is faster once fused. The first
    // (fewer, larger GEMMs) wins unless the other is faster by more than the roofline
    // model can resolve (5%).
    let mut best: Option<(f64, expr::Program)> = None;
    for (slices_in_epilogue, margin) in [(true, 1.0), (false, 0.95)] {
        let choice = extract::extract(&eg, &roots, &opts.machine, slices_in_epilogue);
        let program = extracted(&eg, &choice, &roots);
        let time = crate::cost::total_time(&fuse::fuse(&program.to_graph(g)), &opts.machine);
        if best.as_ref().is_none_or(|(b, _)| time < *b * margin) {
            best = Some((time, program));
        }
    }
    let program = best.expect("two candidates").1;
    Template { program, fired, egraph_nodes: eg.total_size(), runs }
}

/// Saturates `eg` with `rules` under the limits of `opts`; says how the run ended.
pub fn run_rules(eg: EGraph, rules: &[rules::Rule], opts: &Options) -> (EGraph, Run) {
    let rewrites: Vec<_> = rules.iter().flat_map(|rule| rule.rewrites(&eg.analysis)).collect();
    let mut runner = Runner::default()
        .with_egraph(eg)
        .with_scheduler(SimpleScheduler)
        .with_node_limit(opts.node_limit)
        .with_iter_limit(opts.iter_limit)
        .with_time_limit(opts.time_limit)
        .run(&rewrites);
    let run = Run { stop: stop_reason(runner.stop_reason.as_ref()), iterations: runner.iterations.len() };
    // Patterns' applications are counted by egg; custom appliers count their own unions.
    for it in &runner.iterations {
        for (name, &n) in &it.applied {
            if let Some(rule) = rules.iter().find(|r| r.counts(name.as_str())) {
                *runner.egraph.analysis.fired.entry(rule.name).or_default() += n;
            }
        }
    }
    (runner.egraph, run)
}

/// An e-graph holding region `r` of `g`, and the class of each of its nodes and leaves.
pub fn load(g: &Graph, r: &region::Region) -> (EGraph, HashMap<NodeId, Id>) {
    let program = expr::to_rec_expr(g, r);
    let mut eg = EGraph::new(program.ctx.clone());
    let mut classes: Vec<Id> = Vec::with_capacity(program.expr.as_ref().len());
    for n in program.expr.as_ref() {
        let children = n.children.iter().map(|&c| classes[usize::from(c)]).collect();
        classes.push(eg.add(ENode { op: n.op, children }));
    }
    let order = r.leaves.iter().chain(&r.nodes);
    (eg, order.copied().zip(classes).collect())
}

/// The program `choice` selects for `roots`, as a `RecExpr` over the e-graph's operators.
fn extracted(eg: &EGraph, choice: &extract::Choice, roots: &[Id]) -> expr::Program {
    let mut out = egg::RecExpr::default();
    let mut made: HashMap<Id, Id> = HashMap::new();
    let mut stack: Vec<(Id, bool)> = roots.iter().rev().map(|&r| (eg.find(r), false)).collect();
    while let Some((id, ready)) = stack.pop() {
        if made.contains_key(&id) {
            continue;
        }
        let n = &choice[&id];
        if !ready {
            stack.push((id, true));
            stack.extend(n.children.iter().map(|&c| (eg.find(c), false)).filter(|(c, _)| !made.contains_key(c)));
            continue;
        }
        let children = n.children.iter().map(|&c| made[&eg.find(c)]).collect();
        made.insert(id, out.add(ENode { op: n.op, children }));
    }
    let roots = roots.iter().map(|&r| made[&eg.find(r)]).collect();
    let mut ctx = eg.analysis.clone();
    ctx.groups.clear();
    expr::Program { expr: out, ctx, roots }
}
