//! `hyb compile`: check a model, run the whole pipeline, plan the program for one batch and
//! sequence length (fitted to `--device-memory` when given), and write it as an artifact
//! that runs without the `.hyb` source.

use crate::planning::PlanArgs;
use anyhow::{Context, Result};
use hyb_compiler::artifact::{self, Artifact, Target};
use hyb_compiler::cost::{Machine, MACHINES};
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::fit::{fit, Request};
use hyb_compiler::pipeline::{self, compile, Sizing};
use hyb_compiler::rewrite::Options;
use hyb_compiler::training::AdamW;
use hyb_dsl::expand::model::Expanded;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CompileArgs {
    pub file: PathBuf,
    #[arg(long)]
    pub model: Option<String>,
    /// Batch size the program is planned for.
    #[arg(long, default_value_t = 1, value_parser = crate::values::at_least_one)]
    pub batch: usize,
    /// Sequence length the program is planned for.
    #[arg(long, default_value_t = 4096, value_parser = crate::values::at_least_one)]
    pub seq: usize,
    /// Tensor-parallel ranks.
    #[arg(long, default_value_t = 1, value_parser = crate::values::at_least_one)]
    pub tp: usize,
    /// Compile the forward pass only (inference) instead of the training step.
    #[arg(long)]
    pub forward: bool,
    /// The GPU the cost model describes when the compiler chooses between programs.
    #[arg(long, default_value = "h200", value_parser = clap::builder::PossibleValuesParser::new(MACHINES))]
    pub machine: String,
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Where to write the artifact.
    #[arg(short, long)]
    pub out: PathBuf,
}

pub fn run(args: &CompileArgs, model: &Expanded) -> Result<()> {
    let machine =
        Machine::named(&args.machine).context("unknown machine")?.with_size(args.batch as i64, args.seq as i64);
    let opts = Options { machine, ..Options::default() };
    let width_mult = model.summary.base_width.map_or(1.0, |b| model.summary.d as f64 / b as f64);
    let training = (!args.forward).then(|| artifact::Training { opt: AdamW::default(), width_mult });
    let target = match &training {
        None => pipeline::Target::Forward,
        Some(t) => pipeline::Target::Training { opt: t.opt.clone(), width_mult: t.width_mult },
    };
    let forward = elaborate(&model.trace);
    let compiled = compile(&forward, &target, args.tp, &opts);
    let request = Request {
        forward: &forward,
        compiled: &compiled,
        target: &target,
        tp: args.tp,
        options: &opts,
        sizing: args.plan.sizing(args.batch, args.seq),
    };
    let executable = fit(&request)?;
    // A training run evaluates with the forward pass, planned for the same sizes.
    let eval = match &training {
        Some(_) => {
            let forward_pass = compile(&forward, &pipeline::Target::Forward, args.tp, &opts);
            let sizing = Sizing::new(args.batch, args.seq);
            Some(pipeline::plan(&forward_pass, &pipeline::Target::Forward, &sizing)?)
        }
        None => None,
    };
    let artifact = Artifact {
        compiled: artifact::Compiled {
            model: model.summary.name.clone(),
            target: Target::Cpu,
            training,
            tp: args.tp,
            batch: args.batch,
            seq: args.seq,
        },
        model: forward,
        executable,
        eval,
    };
    let bytes = artifact.to_bytes();
    hyb_runtime::atomic::write(&args.out, &bytes).with_context(|| format!("cannot write {}", args.out.display()))?;
    let program = &artifact.executable.program;
    println!(
        "wrote {}: {} launches, arena {:.1} MiB per rank{}, {} bytes",
        args.out.display(),
        program.launches.len(),
        program.memory.arena_bytes as f64 / (1 << 20) as f64,
        crate::explain::recompute_note(&program.recompute),
        bytes.len()
    );
    Ok(())
}
