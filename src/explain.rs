//! `hyb explain`: compile a model's training step (or forward pass) for a tensor-parallel
//! width and print what the compiler chose — kernels, rewrites, parameter sharding — with
//! the roofline prediction for each kernel.

use anyhow::{Context, Result};
use hyb_compiler::artifact::Artifact;
use hyb_compiler::cost::{stored_weight, total, total_time, Machine, MACHINES};
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::explain::{dot, kernels};
use hyb_compiler::fit::{fit, gib, Request};
use hyb_compiler::ir::{generic_name, Graph, KernelKind, Op, Origin};
use hyb_compiler::ops::{Binary, Prim, Primitive};
use hyb_compiler::pipeline::{compile, Compiled, DataParallel, Executable, Target};
use hyb_compiler::plan::{Level, MemoryPlan, Program};
use hyb_compiler::rewrite::Options;
use hyb_compiler::training::AdamW;
use hyb_dsl::expand::model::Expanded;
use hyb_dsl::source::{FileId, Sources};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ExplainArgs {
    pub file: PathBuf,
    #[arg(long)]
    pub model: Option<String>,
    /// Tensor-parallel ranks.
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// Explain the forward pass only (inference) instead of the training step.
    #[arg(long)]
    pub forward: bool,
    /// Batch size the cost model assumes.
    #[arg(long, default_value_t = 1)]
    pub batch: i64,
    /// Sequence length the cost model assumes.
    #[arg(long, default_value_t = 4096)]
    pub seq: i64,
    /// The GPU the cost model describes.
    #[arg(long, default_value = "h200", value_parser = clap::builder::PossibleValuesParser::new(MACHINES))]
    pub machine: String,
    /// Write the chosen program as a Graphviz file.
    #[arg(long)]
    pub dot: Option<PathBuf>,
    /// List every kernel of every distinct region (default: the ten most expensive).
    #[arg(long)]
    pub all_kernels: bool,
    /// Print the memory plan: each rank's peak, split by what it holds.
    #[arg(long)]
    pub memory: bool,
    #[command(flatten)]
    pub plan: crate::planning::PlanArgs,
    /// Replace a model setting, as `hyb train --set` does (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = crate::values::parse_set)]
    pub sets: Vec<hyb_dsl::variant::Set>,
}

pub fn run(args: &ExplainArgs, model: &Expanded, sources: &Sources, check_time: Duration) -> Result<()> {
    anyhow::ensure!(args.tp >= 1, "--tp must be at least 1");
    anyhow::ensure!(args.batch >= 1 && args.seq >= 1, "--batch and --seq must be at least 1");
    let machine = Machine::named(&args.machine).context("unknown machine")?.with_size(args.batch, args.seq);
    let opts = Options { machine: machine.clone(), ..Options::default() };
    let start = Instant::now();
    let forward = elaborate(&model.trace);
    let elaborate_time = start.elapsed();
    let target = if args.forward {
        Target::Forward
    } else {
        let width_mult = model.summary.base_width.map_or(1.0, |b| model.summary.d as f64 / b as f64);
        Target::Training { opt: AdamW::default(), width_mult, data_parallel: DataParallel::Alone }
    };
    let compiled = compile(&forward, &target, args.tp, &opts);
    let mut stages = vec![("check", check_time), ("elaborate", elaborate_time)];
    stages.extend(compiled.stages.iter().copied());
    let mut text = render(args, model, &compiled, &machine, sources, &stages);
    if args.memory || args.plan.device_memory.is_some() {
        let request = Request {
            forward: &forward,
            compiled: &compiled,
            target: &target,
            tp: args.tp,
            options: &opts,
            sizing: args.plan.sizing(args.batch as usize, args.seq as usize),
        };
        match fit(&request) {
            Ok(planned) => {
                text.push_str(&memory_report(&planned.program.memory, &planned.program, &planned.graph, args.tp));
                text.push_str(&recompute_cost(&compiled.graph, &planned, &machine));
            }
            Err(e) => {
                print(&text)?;
                return Err(e.into());
            }
        }
    }
    if let Some(path) = &args.dot {
        std::fs::write(path, dot(&compiled.graph, &machine)).with_context(|| format!("writing {}", path.display()))?;
        text.push_str(&format!("graph: {}\n", path.display()));
    }
    print(&text)
}

/// Writes to stdout; a reader that stops early (`| head`) is not an error.
fn print(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// What the plan recomputes, to end a line: `, full recompute in 3 of 24 layers`.
pub fn recompute_note(levels: &[Level]) -> String {
    let full = levels.iter().filter(|&&l| l == Level::Full).count();
    let selective = levels.iter().filter(|&&l| l == Level::Selective).count();
    match (full, selective) {
        (0, 0) => String::new(),
        (0, s) => format!(", selective recompute in {s} of {} layers", levels.len()),
        (f, 0) => format!(", full recompute in {f} of {} layers", levels.len()),
        (f, s) => format!(", full recompute in {f} and selective in {s} of {} layers", levels.len()),
    }
}

/// Nodes that run as a launch of their own.
fn launching(g: &Graph) -> usize {
    g.nodes.iter().filter(|n| matches!(&n.op, Op::Kernel(_)) || matches!(&n.op, Op::Prim(p) if p.moves_data())).count()
}

/// What recompute costs: the launches and FLOPs it adds to the step, and the predicted time.
fn recompute_cost(compiled: &Graph, planned: &Executable, m: &Machine) -> String {
    if planned.program.recompute.iter().all(|&l| l == Level::Keep) {
        return String::new();
    }
    let (before, after) = (total(compiled, m), total(&planned.graph, m));
    format!(
        "  recompute ({}) adds {} launches, {:.1}% FLOPs, {} predicted\n",
        recompute_note(&planned.program.recompute).trim_start_matches(", "),
        launching(&planned.graph).saturating_sub(launching(compiled)),
        100.0 * (after.flops / before.flops.max(1.0) - 1.0),
        time((total_time(&planned.graph, m) - total_time(compiled, m)).max(0.0)),
    )
}

/// Explains a compiled artifact: what it was compiled for, its kernels and its memory.
pub fn run_artifact(args: &ExplainArgs, artifact: &Artifact) -> Result<()> {
    let c = &artifact.compiled;
    let machine = Machine::named(&args.machine).context("unknown machine")?.with_size(c.batch as i64, c.seq as i64);
    let mut text = String::new();
    let what = if c.training.is_some() { "training step" } else { "forward pass" };
    let _ = writeln!(
        text,
        "{}: compiled artifact for {} · {what} · tp {} · B={} T={} · {} launches, {} parameters",
        c.model,
        c.target.name(),
        c.tp,
        c.batch,
        c.seq,
        artifact.executable.program.launches.len(),
        artifact.manifest().iter().map(|p| p.shape.iter().product::<usize>()).sum::<usize>()
    );
    text.push_str(&kernel_list(&artifact.executable.graph, &machine, args.all_kernels));
    let program = &artifact.executable.program;
    text.push_str(&memory_report(&program.memory, program, &artifact.executable.graph, c.tp));
    print(&text)
}

/// The memory plan for people: the arena, the peak and what it holds, with the largest
/// kinds of value live at the peak (what to recompute or fuse away first).
fn memory_report(m: &MemoryPlan, p: &Program, g: &Graph, tp: usize) -> String {
    let mut out = String::new();
    let b = &m.peak;
    let at = p.launches.get(m.peak_launch).map_or("no launch".to_string(), |l| format!("{:?}", l.kind));
    let q = &p.precision;
    let _ = writeln!(
        out,
        "\nmemory per rank (tp {tp}, B={} T={}{}; {} activations and weight copies, {} master weights, {} moments, {} gradients):",
        p.batch,
        p.seq,
        recompute_note(&p.recompute),
        q.activations.name(),
        q.master_weights.name(),
        q.optimizer.name(),
        q.gradients.name()
    );
    let _ = writeln!(
        out,
        "  arena {} · peak live {} at launch {} of {} ({at})",
        gib(m.arena_bytes as f64),
        gib(m.peak_bytes as f64),
        m.peak_launch,
        p.launches.len(),
    );
    let weights = if q.copies_weights() {
        format!("weights ({} master + live {} copies)", q.master_weights.name(), q.weight_copies.name())
    } else {
        format!("weights ({})", q.master_weights.name())
    };
    for (what, bytes) in [
        (weights.as_str(), b.weights),
        ("gradients", b.gradients),
        ("optimizer state", b.optimizer),
        ("activations kept for backward", b.saved),
        ("workspace", b.workspace),
    ] {
        let _ = writeln!(out, "    {what:<34} {:>10}", gib(bytes as f64));
    }
    let _ = writeln!(out, "  largest values live at the peak (by role and what computes them, over the layers):");
    for (bytes, count, what) in live_at_peak(m, p, g).into_iter().take(12) {
        let _ = writeln!(out, "    {:>10}  {count:>4} × {what}", gib(bytes as f64));
    }
    out
}

/// The buffers live at the peak grouped by role and by what computes them (a kernel's
/// primitives, a primitive's name), largest first: bytes, buffers, label.
fn live_at_peak(m: &MemoryPlan, p: &Program, g: &Graph) -> Vec<(usize, usize, String)> {
    let mut groups: std::collections::HashMap<String, (usize, usize)> = std::collections::HashMap::new();
    let live = p.buffers.iter().filter(|b| b.first <= m.peak_launch && m.peak_launch <= b.last);
    for b in live {
        let node = &g.nodes[b.node];
        let name = |op: &Op| match op {
            Op::Kernel(k) => format!(
                "{} kernel ({})",
                k.kind.name(),
                k.op_names().iter().take(6).cloned().collect::<Vec<_>>().join(" ")
            ),
            Op::Prim(prim) => prim.name().to_string(),
            Op::Param(_) => "parameter".to_string(),
            Op::Input(name) => format!("input {}", generic_name(name)),
            _ => "value".to_string(),
        };
        let what = match &node.op {
            Op::Output(_) => format!("further output of {}", name(&g.nodes[node.inputs[0]].op)),
            op => name(op),
        };
        let shape = b.elements;
        let e = groups.entry(format!("{:?} {what} ({shape} elements)", b.role)).or_default();
        e.0 += b.bytes;
        e.1 += 1;
    }
    let mut out: Vec<(usize, usize, String)> = groups.into_iter().map(|(w, (b, n))| (b, n, w)).collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(&b.2)));
    out
}

/// The kernels of each distinct region, the most expensive first unless `all`.
fn kernel_list(g: &Graph, m: &Machine, all: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nkernels per rank, by distinct region (time predicted on the machine above):");
    for region in kernels(g, m) {
        let t: f64 = region.kernels.iter().map(|k| k.work.time(m)).sum();
        let _ =
            writeln!(out, "  {} (×{}): {} kernels, {} each", region.label, region.count, region.kernels.len(), time(t));
        let mut ks = region.kernels.clone();
        if !all {
            ks.sort_by(|a, b| b.work.time(m).total_cmp(&a.work.time(m)));
            ks.truncate(10);
        }
        for k in &ks {
            let mut ops = k.ops.join(" ");
            if ops.len() > 60 {
                ops = format!("{}…", &ops[..ops.floor_char_boundary(59)]);
            }
            let reads = if k.weights.is_empty() { String::new() } else { format!("  [{}]", k.weights.join("; ")) };
            let _ = writeln!(
                out,
                "    {:<22} {:<61} {:>9.2} GFLOP {:>9.2} MB {:>10}{}",
                k.kind,
                ops,
                k.work.flops / 1e9,
                (k.work.bytes + k.work.comm_bytes) / 1e6,
                time(k.work.time(m)),
                reads
            );
        }
    }
    out
}

/// `file:line:column` of a node's origin in the checked sources.
fn place(sources: &Sources, at: Origin) -> String {
    let (line, col) = sources.line_col(FileId(at.file), at.start);
    format!("{}:{line}:{col}", sources.name(FileId(at.file)))
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn time(s: f64) -> String {
    if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn render(
    args: &ExplainArgs,
    model: &Expanded,
    c: &Compiled,
    m: &Machine,
    sources: &Sources,
    stages: &[(&str, Duration)],
) -> String {
    let s = &model.summary;
    let g = &c.graph;
    let mut out = String::new();
    let what = if args.forward { "forward pass" } else { "training step" };
    let _ = writeln!(
        out,
        "{}: {} layers, {} parameters · {what} · tp {} · B={} T={}",
        s.name,
        s.layers.len(),
        s.total_params,
        args.tp,
        m.batch,
        m.seq
    );
    let _ = writeln!(
        out,
        "machine: {} · {:.0} TFLOP/s, {:.2} TB/s, {:.0} µs per launch, links {:.0} GB/s + {:.0} µs",
        m.name,
        m.peak_flops / 1e12,
        m.mem_bw / 1e12,
        m.launch * 1e6,
        m.link_bw / 1e9,
        m.link_latency * 1e6
    );
    let total_compile: Duration = stages.iter().map(|(_, d)| *d).sum();
    let parts: Vec<String> = stages.iter().map(|(n, d)| format!("{n} {}", ms(*d))).collect();
    let _ = writeln!(out, "compile {}: {}", ms(total_compile), parts.join(" · "));
    let r = &c.report;
    let stops: Vec<String> = r.stops.iter().map(|(why, n)| format!("{why} ×{n}")).collect();
    let _ = writeln!(
        out,
        "e-graphs: {} regions, {} distinct bodies optimised, largest {} e-nodes",
        r.regions, r.unique_regions, r.max_egraph_nodes
    );
    let _ = writeln!(
        out,
        "saturation: {} runs stopped: {} · {} iterations, at most {} in one run\n",
        r.stops.values().sum::<usize>(),
        stops.join(", "),
        r.iterations,
        r.max_iterations
    );

    out.push_str("rewrites fired (equalities added):\n");
    for (rule, n) in &r.fired {
        let _ = writeln!(out, "  {rule:<22} {n}");
    }

    out.push_str("\nhighlights:\n");
    for (weights, n) in packed_gemms(g) {
        let _ = writeln!(out, "  one GEMM over packed weights ×{n}: {weights}");
    }
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut folded = 0;
    for n in &g.nodes {
        if let Op::Kernel(k) = &n.op {
            *kinds.entry(k.kind.name()).or_default() += 1;
            if k.kind == KernelKind::Gemm && epilogue_scales(&k.body) {
                folded += 1;
            }
        }
    }
    for (kind, n) in &kinds {
        let _ = writeln!(out, "  {kind} kernels: {n}");
    }
    let _ = writeln!(out, "  GEMMs with a multiplier folded into the epilogue: {folded}");

    out.push_str(&kernel_list(g, m, args.all_kernels));
    let w = total(g, m);
    let _ = writeln!(
        out,
        "\nper rank per step: {} launches, {:.2} TFLOP, {:.2} GB memory traffic, {:.3} GB sent in {} collectives",
        w.launches,
        w.flops / 1e12,
        w.bytes / 1e9,
        w.comm_bytes / 1e9,
        w.collectives
    );
    let _ = writeln!(
        out,
        "predicted step time {} (sum of kernel rooflines; all FLOPs at GEMM peak {}, all bytes at full bandwidth {})",
        time(total_time(g, m)),
        time(w.flops / m.peak_flops),
        time(w.bytes / m.mem_bw)
    );

    if args.tp > 1 {
        let _ = writeln!(
            out,
            "\nsharding over {} ranks (predicted forward pass + optimizer update: {} unsharded → {}):",
            args.tp,
            time(c.sharded.time_before),
            time(c.sharded.time_after)
        );
        for f in &c.sharded.candidates {
            let mark = if c.sharded.split.contains(f) { "split     " } else { "replicated" };
            let _ = writeln!(out, "  {mark} {f}");
        }
        let _ = writeln!(
            out,
            "  sequence parallelism between tensor-parallel regions: {}",
            if c.sharded.sequence_parallel { "on" } else { "off (not cheaper)" }
        );
        out.push_str("cannot split:\n");
        for u in &c.sharded.unsplittable {
            match u.origin {
                Some(at) => {
                    let _ = writeln!(out, "  {u} (at {})", place(sources, at));
                }
                None => {
                    let _ = writeln!(out, "  {u}");
                }
            }
        }
    }
    out.push_str("\nparameters (per rank):\n");
    let mut rows: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for p in &g.params {
        let layout = match &p.shard {
            Some(sh) => sh.describe(),
            None => "replicated".to_string(),
        };
        *rows.entry((generic_name(&p.name), format!("{:?}", p.shape), layout)).or_default() += 1;
    }
    for ((name, shape, layout), n) in rows {
        let _ = writeln!(out, "  {name:<48} ×{n:<3} {shape:<14} {layout}");
    }
    out
}

/// Matmuls whose weight is several parameters packed together, by the names packed.
fn packed_gemms(g: &Graph) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for n in &g.nodes {
        let Op::Prim(Prim::Concat(_)) = &n.op else { continue };
        let names: Option<Vec<String>> = n
            .inputs
            .iter()
            .map(|&i| {
                stored_weight(g, i).map(|p| generic_name(&g.params[p].name).trim_end_matches(".weight").to_string())
            })
            .collect();
        if let Some(names) = names {
            // Sections of one weight (a sharded Mamba in_proj) are named once.
            let mut runs: Vec<(String, usize)> = Vec::new();
            for name in names {
                match runs.last_mut() {
                    Some((last, k)) if *last == name => *k += 1,
                    _ => runs.push((name, 1)),
                }
            }
            let parts: Vec<String> =
                runs.into_iter().map(|(n, k)| if k > 1 { format!("{n} ({k} sections)") } else { n }).collect();
            *out.entry(parts.join(" | ")).or_default() += 1;
        }
    }
    out
}

/// A GEMM kernel whose epilogue multiplies by a constant (a folded multiplier or scale).
fn epilogue_scales(body: &Graph) -> bool {
    body.nodes.iter().any(|n| {
        matches!(n.op, Op::Prim(Prim::Binary(Binary::Mul)))
            && n.inputs.iter().any(|&i| matches!(body.nodes[i].op, Op::Constant(_)))
    })
}
