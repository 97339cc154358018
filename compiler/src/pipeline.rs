//! The compiler's stages in order, timed: shard the forward graph over the tensor-parallel
//! ranks, rewrite it (pattern recognition must precede autodiff, so flash attention's
//! backward is a recomputing kernel too), derive the training step, rewrite that, fuse.
//! Generation compiles two forward programs the same way: prefill and decode.

use crate::elaborate::decode::{generation, Cache, DecodeError};
use crate::ir::Graph;
use crate::plan::{recompute, Level, PlanError, Precision, Program, Recompute, Request};
use crate::rewrite::{fuse::fuse, remat::rematerialise, saturate, Options, Report};
use crate::shard::{shard, Sharded};
pub use crate::training::DataParallel;
use crate::training::{data_parallel_training_graph, in_place_updates, training_graph, zero_training_graph, AdamW};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// What to compile the forward graph into.
pub enum Target {
    /// The forward pass alone (inference).
    Forward,
    /// One training step: forward, loss, backward, clipping, AdamW, alone or as one
    /// replica of several.
    Training { opt: AdamW, width_mult: f64, data_parallel: DataParallel },
}

pub struct Compiled {
    /// The program each rank runs.
    pub graph: Graph,
    pub report: Report,
    pub sharded: Sharded,
    /// Wall time of each stage.
    pub stages: Vec<(&'static str, Duration)>,
}

pub fn compile(forward: &Graph, target: &Target, ranks: usize, opts: &Options) -> Compiled {
    let mut stages = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &'static str, stages: &mut Vec<(&'static str, Duration)>| {
        stages.push((name, clock.elapsed()));
        clock = Instant::now();
    };
    let sharded = shard(forward, ranks, &opts.machine);
    lap("shard", &mut stages);
    let (rewritten, mut report) = saturate(&sharded.graph, opts);
    lap("rewrite forward", &mut stages);
    let graph = match target {
        Target::Forward => {
            let g = fuse(&rewritten);
            lap("fuse", &mut stages);
            g
        }
        Target::Training { opt, width_mult, data_parallel } => {
            let step = match *data_parallel {
                DataParallel::Alone => training_graph(&rewritten, opt, *width_mult),
                DataParallel::Replicated => data_parallel_training_graph(&rewritten, opt, *width_mult),
                DataParallel::Zero1(replicas) => zero_training_graph(&rewritten, opt, *width_mult, replicas),
            }
            .graph;
            lap("autodiff + optimizer", &mut stages);
            let (g, step_report) = saturate(&step, opts);
            lap("rewrite step", &mut stages);
            report.merge(step_report);
            let g = rematerialise(&g, 0);
            lap("rematerialise", &mut stages);
            let g = fuse(&g);
            lap("fuse", &mut stages);
            g
        }
    };
    Compiled { graph, report, sharded, stages }
}

/// A graph and the program planned from it: what an executor runs. Recompute clones
/// forward values into the backward pass, so the graph is the compiled graph rewritten for
/// the plan's recompute levels, and the program's launches index its nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Executable {
    pub graph: Graph,
    pub program: Program,
}

/// The sizes and policies a compiled graph is planned for.
#[derive(Clone, Debug)]
pub struct Sizing {
    pub batch: usize,
    pub seq: usize,
    /// Activation recompute; `Auto` fits `budget`.
    pub recompute: Recompute,
    /// Bytes each device has for the arena (`None`: no limit).
    pub budget: Option<u64>,
}

impl Sizing {
    pub fn new(batch: usize, seq: usize) -> Sizing {
        Sizing { batch, seq, recompute: Recompute::Auto, budget: None }
    }
}

/// The program of a compiled graph for one batch and sequence length, with the device's
/// precision policy: a training step updates its weights and moments in place, keeps for
/// backward what the forward pass computed and the backward pass reads, and recomputes
/// what `sizing.recompute` says.
pub fn plan(compiled: &Compiled, target: &Target, sizing: &Sizing) -> Result<Executable, PlanError> {
    let levels = recompute_levels(compiled, target, sizing)?;
    plan_with(compiled, target, sizing.batch, sizing.seq, Precision::default(), &levels)
}

/// The program for given recompute levels and precision (the CPU executor plans the levels
/// the device's plan chose with its own element type).
pub fn plan_with(
    compiled: &Compiled,
    target: &Target,
    batch: usize,
    seq: usize,
    precision: Precision,
    levels: &[Level],
) -> Result<Executable, PlanError> {
    let training = matches!(target, Target::Training { .. });
    let graph = if training && levels.iter().any(|&l| l != Level::Keep) {
        recompute::rewrite(&compiled.graph, 0, levels)
    } else {
        compiled.graph.clone()
    };
    let mut program = plan_graph(&graph, training, batch, seq, precision)?;
    if training {
        program.recompute = levels.to_vec();
    }
    Ok(Executable { graph, program })
}

/// Plans a graph as it is (recompute already applied): a training step's optimizer
/// updates in place and the loss (output 0) ends its forward pass.
pub fn plan_graph(
    graph: &Graph,
    training: bool,
    batch: usize,
    seq: usize,
    precision: Precision,
) -> Result<Program, PlanError> {
    let req = Request {
        batch,
        seq,
        precision,
        in_place: if training { in_place_updates(graph) } else { Vec::new() },
        forward_end: training.then_some(0),
    };
    crate::plan::plan(graph, &req)
}

/// Each layer's recompute level under the device's precision policy: as asked, or under
/// `Auto` the least recompute whose arena fits the budget — nothing, then selective
/// recompute everywhere, then full recompute of as few layers as fit, those that keep the
/// most first. When even full recompute does not fit, full recompute (the caller refuses
/// the plan with its breakdown).
pub fn recompute_levels(compiled: &Compiled, target: &Target, sizing: &Sizing) -> Result<Vec<Level>, PlanError> {
    let layers = recompute::layers(&compiled.graph);
    if !matches!(target, Target::Training { .. }) {
        return Ok(Vec::new());
    }
    let all = |l: Level| vec![l; layers];
    let budget = match (sizing.recompute, sizing.budget) {
        (Recompute::None, _) | (Recompute::Auto, None) => return Ok(all(Level::Keep)),
        (Recompute::Selective, _) => return Ok(all(Level::Selective)),
        (Recompute::Full, _) => return Ok(all(Level::Full)),
        (Recompute::Auto, Some(b)) => b as usize,
    };
    let arena = |levels: &[Level]| -> Result<(usize, Program), PlanError> {
        let e = plan_with(compiled, target, sizing.batch, sizing.seq, Precision::default(), levels)?;
        Ok((e.program.memory.arena_bytes, e.program))
    };
    let (bytes, kept) = arena(&all(Level::Keep))?;
    if bytes <= budget {
        return Ok(all(Level::Keep));
    }
    if arena(&all(Level::Selective))?.0 <= budget {
        return Ok(all(Level::Selective));
    }
    let mut saved = vec![0usize; layers];
    for b in kept.buffers.iter().filter(|b| b.role == crate::plan::Role::Saved) {
        if let Some(l) = (compiled.graph.nodes[b.node].scope as usize).checked_sub(1) {
            saved[l] += b.bytes;
        }
    }
    let order = recompute::order_by_saving(&saved);
    let with_full = |k: usize| {
        let mut levels = all(Level::Selective);
        for &l in &order[..k] {
            levels[l] = Level::Full;
        }
        levels
    };
    // The fewest fully recomputed layers that fit, by bisection (more recompute keeps less).
    let (mut lo, mut hi) = (1, layers);
    if arena(&with_full(hi))?.0 > budget {
        return Ok(with_full(layers));
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if arena(&with_full(mid))?.0 <= budget {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(with_full(lo))
}

/// Generation's two programs through the same stages as any forward pass: prefill (the
/// forward pass, also returning what every cache holds after the prompt) and decode (new
/// tokens from the caches, returning the updated caches). See [`crate::elaborate::decode`].
pub struct CompiledGeneration {
    pub prefill: Compiled,
    pub decode: Compiled,
    pub caches: Vec<Cache>,
    /// Tokens the attention caches hold.
    pub capacity: usize,
    /// Outputs of the forward pass (the logits first) before the caches.
    pub outputs: usize,
}

/// Compiles the prefill and decode programs of `forward` for caches of `capacity` tokens.
pub fn compile_generation(forward: &Graph, capacity: usize, opts: &Options) -> Result<CompiledGeneration, DecodeError> {
    let g = generation(forward, capacity)?;
    Ok(CompiledGeneration {
        prefill: compile(&g.prefill, &Target::Forward, 1, opts),
        decode: compile(&g.decode, &Target::Forward, 1, opts),
        caches: g.caches,
        capacity: g.capacity,
        outputs: g.outputs,
    })
}

impl CompiledGeneration {
    /// The prefill program for a batch of prompts of `prompt` tokens.
    pub fn plan_prefill(&self, batch: usize, prompt: usize, precision: Precision) -> Result<Executable, PlanError> {
        let graph = self.prefill.graph.clone();
        let program = plan_graph(&graph, false, batch, prompt, precision)?;
        Ok(Executable { graph, program })
    }

    /// The decode program for one new token per sequence, every updated cache written in
    /// place of its input, so the caches stay in their buffers from step to step.
    pub fn plan_decode(&self, batch: usize, precision: Precision) -> Result<Executable, PlanError> {
        let graph = self.decode.graph.clone();
        let inputs: std::collections::HashMap<&str, usize> = graph.input_nodes().map(|(n, name)| (name, n)).collect();
        let in_place = self
            .caches
            .iter()
            .enumerate()
            .filter_map(|(i, c)| inputs.get(c.name.as_str()).map(|&n| (self.outputs + i, n)))
            .collect();
        let req = Request { batch, seq: 1, precision, in_place, forward_end: None };
        let program = crate::plan::plan(&graph, &req)?;
        Ok(Executable { graph, program })
    }
}
