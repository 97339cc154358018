//! The compiler's stages in order, timed: shard the forward graph over the tensor-parallel
//! ranks, rewrite it (pattern recognition must precede autodiff, so flash attention's
//! backward is a recomputing kernel too), derive the training step, rewrite that, fuse.

use crate::ir::Graph;
use crate::plan::{PlanError, Precision, Program, Request};
use crate::rewrite::{fuse::fuse, saturate, Options, Report};
use crate::shard::{shard, Sharded};
use crate::training::{in_place_updates, training_graph, AdamW};
use std::time::{Duration, Instant};

/// What to compile the forward graph into.
pub enum Target {
    /// The forward pass alone (inference).
    Forward,
    /// One training step: forward, loss, backward, clipping, AdamW.
    Training { opt: AdamW, width_mult: f64 },
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
        Target::Training { opt, width_mult } => {
            let step = training_graph(&rewritten, opt, *width_mult).graph;
            lap("autodiff + optimizer", &mut stages);
            let (g, step_report) = saturate(&step, opts);
            lap("rewrite step", &mut stages);
            report.merge(step_report);
            let g = fuse(&g);
            lap("fuse", &mut stages);
            g
        }
    };
    Compiled { graph, report, sharded, stages }
}

/// The program of a compiled graph for one batch and sequence length: a training step
/// updates its weights and moments in place, and keeps for backward what the forward pass
/// computed and the backward pass reads.
pub fn plan(compiled: &Compiled, target: &Target, batch: usize, seq: usize) -> Result<Program, PlanError> {
    let training = matches!(target, Target::Training { .. });
    let req = Request {
        batch,
        seq,
        precision: Precision::default(),
        in_place: if training { in_place_updates(&compiled.graph) } else { Vec::new() },
        forward_end: training.then_some(0),
    };
    crate::plan::plan(&compiled.graph, &req)
}
