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

/// Predicts a point; with `match_params`, first adds the `d_ff` (a multiple of 8) whose
/// parameter count is the closest to it to `sets`.
pub fn point(
    file: &Path,
    model: Option<&str>,
    sets: &mut Vec<Set>,
    m: &Machine,
    args: &SweepArgs,
    match_params: Option<u64>,
) -> Result<Prediction, String> {
    if let Some(target) = match_params {
        if sets.iter().any(|s| s.name == "d_ff") {
            return Err("--match-params sets d_ff, which the grid sweeps".into());
        }
        let params_at = |d_ff: u64| -> Result<f64, String> {
            let trial =
                [sets.clone(), vec![Set { layers: None, name: "d_ff".into(), value: d_ff.to_string() }]].concat();
            Ok(checked(file, model, &trial)?.summary.total_params as f64)
        };
        let (p1, p2) = (params_at(64)?, params_at(128)?);
        let per = (p2 - p1) / 64.0;
        if per <= 0.0 {
            return Err("--match-params scales d_ff, which does not change this model's parameters".into());
        }
        let d_ff = (((target as f64 - p1) / per + 64.0) / 8.0).round().max(1.0) as u64 * 8;
        sets.push(Set { layers: None, name: "d_ff".into(), value: d_ff.to_string() });
    }
    let expanded = checked(file, model, sets)?;
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
    Ok(Prediction {
        params: s.total_params as u64,
        flops_per_token: work.flops * args.tp as f64 / (args.batch * args.seq) as f64,
        step_s: total_time(&compiled.graph, &m),
        peak_bytes,
    })
}
