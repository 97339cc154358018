//! A point's prediction, without running it: check the variant, compile its training step
//! for the machine and plan its memory, as `hyb explain` would.

use super::SweepArgs;
use anyhow::{bail, Result};
use hyb_compiler::cost::{total, total_time, Machine};
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::fit::{fit, Request};
use hyb_compiler::pipeline::{compile, DataParallel, Sizing, Target};
use hyb_compiler::plan::Recompute;
use hyb_compiler::rewrite::Options;
use hyb_compiler::training::AdamW;
use hyb_dsl::variant::Set;
use std::path::Path;

pub struct Prediction {
    pub params: u64,
    /// FLOPs of a training step per token, over all ranks.
    pub flops_per_token: f64,
    pub step_s: f64,
    /// The planned peak memory per rank (`None` when the plan could not be made).
    pub peak_bytes: Option<u64>,
}

/// The machine named `name`: `host` (measured now) or a GPU of the cost model.
pub fn machine(name: &str) -> Result<Machine> {
    match name {
        "host" => Ok(hyb_runtime::cpu::probe::host()),
        gpu => match Machine::named(gpu) {
            Some(m) => Ok(m),
            None => bail!("unknown machine `{gpu}` (host, {})", hyb_compiler::cost::MACHINES.join(", ")),
        },
    }
}

/// The model `model` of `file` with `sets`, checked; its diagnostics rendered when it
/// does not check.
fn checked(file: &Path, model: Option<&str>, sets: &[Set]) -> Result<hyb_dsl::expand::model::Expanded, String> {
    let c = hyb_compiler::check::check_variant(file, model, sets)?;
    if !c.diagnostics.is_empty() {
        let shown: Vec<String> = c.diagnostics.iter().map(|d| format!("{:?}", d.report(&c.program.sources))).collect();
        return Err(shown.join("\n"));
    }
    let found = match model {
        Some(name) => c.models.into_iter().find(|(_, m)| m.summary.name == name),
        None if c.models.len() == 1 => c.models.into_iter().next(),
        None => return Err("the file defines several models: choose one with --model".into()),
    };
    found.map(|(_, m)| m).ok_or_else(|| format!("no model `{}`", model.unwrap_or_default()))
}

/// What every point is made equal in, by scaling its `d_ff`.
#[derive(Clone, Copy, Debug)]
pub enum Matching {
    /// `--match-params`: this many parameters.
    Params(u64),
    /// `--match-time`: this predicted step time, in seconds.
    StepTime(f64),
}

/// Predicts a point; with `matching`, first adds to `sets` the `d_ff` (a multiple of 8)
/// that brings its parameters or predicted step time the closest to the target (both
/// grow linearly with `d_ff`, so two trial values fix it).
pub fn point(
    file: &Path,
    model: Option<&str>,
    sets: &mut Vec<Set>,
    m: &Machine,
    args: &SweepArgs,
    matching: Option<Matching>,
) -> Result<Prediction, String> {
    if let Some(matching) = matching {
        if sets.iter().any(|s| s.name == "d_ff") {
            return Err("matching parameters or step time sets d_ff, which the grid sweeps".into());
        }
        let at = |d_ff: u64| -> Result<f64, String> {
            let d_ff = Set { layers: None, name: "d_ff".into(), value: d_ff.to_string() };
            let trial = checked(file, model, &[sets.clone(), vec![d_ff]].concat())?;
            Ok(match matching {
                Matching::Params(_) => trial.summary.total_params as f64,
                Matching::StepTime(_) => predict(&trial, m, args).step_s,
            })
        };
        let target = match matching {
            Matching::Params(p) => p as f64,
            Matching::StepTime(s) => s,
        };
        let (v1, v2) = (at(64)?, at(128)?);
        let per = (v2 - v1) / 64.0;
        if per <= 0.0 {
            return Err("matching scales d_ff, which changes neither this model's parameters nor its time".into());
        }
        let d_ff = (((target - v1) / per + 64.0) / 8.0).round().max(1.0) as u64 * 8;
        sets.push(Set { layers: None, name: "d_ff".into(), value: d_ff.to_string() });
    }
    Ok(predict(&checked(file, model, sets)?, m, args))
}

/// The prediction for a checked model.
fn predict(expanded: &hyb_dsl::expand::model::Expanded, m: &Machine, args: &SweepArgs) -> Prediction {
    let forward = elaborate(&expanded.trace);
    let s = &expanded.summary;
    let width_mult = s.base_width.map_or(1.0, |b| s.d as f64 / b as f64);
    let target = Target::Training { opt: AdamW::default(), width_mult, data_parallel: DataParallel::Alone };
    let m = m.clone().with_size(args.batch as i64, args.seq as i64);
    let options = Options { machine: m.clone(), ..Options::default() };
    let compiled = compile(&forward, &target, args.tp, &options);
    let work = total(&compiled.graph, &m);
    let sizing = Sizing { batch: args.batch, seq: args.seq, recompute: Recompute::Auto, budget: None };
    let request =
        Request { forward: &forward, compiled: &compiled, target: &target, tp: args.tp, options: &options, sizing };
    let peak_bytes = fit(&request).ok().map(|e| e.program.memory.peak_bytes as u64);
    Prediction {
        params: s.total_params,
        flops_per_token: work.flops * args.tp as f64 / (args.batch * args.seq) as f64,
        step_s: total_time(&compiled.graph, &m),
        peak_bytes,
    }
}
