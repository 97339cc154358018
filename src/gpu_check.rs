//! `hyb train --check-gpu`: the first training step and an evaluation, every launch run on
//! the GPU against the CPU executor (`hyb_runtime::cuda::check_launches`), with a line for
//! each launch that differs and a summary per program.

use anyhow::{bail, Result};
use hyb_runtime::cuda::{check_launches, Device, LaunchCheck};
use hyb_runtime::train::step::Runner;
use hyb_runtime::train::Trainer;
use std::sync::Arc;

/// An output passes when every element is within this fraction of the CPU output's
/// largest magnitude (float32 on both; sums run in another order).
const TOLERANCE: f64 = 1e-4;

pub fn run(device: Device, trainer: &Trainer) -> Result<()> {
    let device = Arc::new(device);
    println!("checking on {} against the CPU executor (tolerance {TOLERANCE:e} of each output's scale)", device.name());
    let (params, inputs, _) = trainer.step_inputs()?;
    let programs = trainer.programs();
    let mut failed = 0;
    let (eval_params, eval_inputs) = trainer.eval_inputs(0)?;
    for (what, runner, params, inputs) in [
        ("training step", &programs.step, &params, &inputs),
        ("evaluation", &programs.eval, &eval_params, &eval_inputs),
    ] {
        let Runner::Compiled(e, kernels) = runner else {
            bail!("--check-gpu needs the compiled program on the CPU");
        };
        let started = std::time::Instant::now();
        let results = check_launches(device.clone(), &e.graph, &e.program, kernels, params, inputs, TOLERANCE)?;
        let bad: Vec<&LaunchCheck> = results.iter().filter(|r| r.problem.is_some()).collect();
        for r in &bad {
            println!("FAIL {what} launch {} ({}): {}", r.launch, r.what, r.problem.as_deref().unwrap_or_default());
        }
        let worst = results.iter().max_by(|a, b| a.error.total_cmp(&b.error));
        let worst = worst
            .map_or(String::new(), |w| format!("; largest error {:.2e} at launch {} ({})", w.error, w.launch, w.what));
        println!(
            "{what}: {} of {} launches match the CPU{worst} ({:.1} s)",
            results.len() - bad.len(),
            results.len(),
            started.elapsed().as_secs_f64()
        );
        failed += bad.len();
    }
    if failed > 0 {
        bail!("{failed} launches differ from the CPU executor");
    }
    Ok(())
}
