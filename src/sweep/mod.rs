//! `hyb sweep`: many variants of one model side by side. Every point of the grid is
//! checked (a point that does not check is reported and skipped), predicted from the
//! compiled program without running it (parameters, FLOPs per token, step time and peak
//! memory on a chosen machine), then, unless `--predict-only`, trained briefly by
//! `hyb train` in its own run directory with the same data, seed and token budget as
//! every other point. A killed sweep resumes where it stopped (`--resume`), and the
//! table, CSV, JSONL and plots can be drawn again from the directory (`--report`).

mod grid;
mod predict;
mod report;

use anyhow::{bail, Context, Result};
use grid::Axis;
use hyb_dsl::variant::Set;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args, Clone, Debug)]
pub struct SweepArgs {
    /// The model file (not needed with --report).
    #[arg(required_unless_present = "report")]
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub model: Option<String>,
    /// One axis of the grid, `NAME=V1,V2,…` (a model setting, or `layers[A..B].NAME` for a
    /// per-layer override); repeat it for more axes. Values are .hyb expressions.
    #[arg(long = "grid", value_name = "SPEC", value_parser = |s: &str| Axis::parse(s))]
    pub grid: Vec<Axis>,
    /// Zip the axes (point i takes every axis's value i) instead of their product.
    #[arg(long)]
    pub pairs: bool,
    /// Refuse a grid of more points than this.
    #[arg(long, default_value_t = 64, value_parser = crate::values::at_least_one)]
    pub max_points: usize,
    /// Predict every point without training any.
    #[arg(long)]
    pub predict_only: bool,
    /// The machine the predictions describe: `host` (this machine, measured first) or a
    /// GPU (`h200`, `h100`). Default: the one the points train on.
    #[arg(long)]
    pub machine: Option<String>,
    /// Tensor-parallel ranks the predictions are for.
    #[arg(long, default_value_t = 1, value_parser = crate::values::at_least_one)]
    pub tp: usize,
    #[arg(long, default_value_t = 8, value_parser = crate::values::at_least_one)]
    pub batch: usize,
    #[arg(long, default_value_t = 256, value_parser = crate::values::at_least_one)]
    pub seq: usize,
    /// Training steps per point (the token budget is steps × batch × seq for every point).
    #[arg(long, default_value_t = 100, value_parser = crate::values::at_least_one)]
    pub steps: usize,
    /// Training data, as `hyb train --data` takes it (default: its synthetic data).
    #[arg(long)]
    pub data: Option<String>,
    /// Where the points train: `cpu` or `cuda` (default: a GPU when there is one).
    #[arg(long)]
    pub device: Option<String>,
    /// Scale `d_ff` of every point so that its parameter count is the closest to this.
    #[arg(long, conflicts_with = "match_time")]
    pub match_params: Option<u64>,
    /// Scale `d_ff` of every point so that its predicted step time (on --machine) is the
    /// closest to this many milliseconds.
    #[arg(long, value_parser = crate::values::positive_finite)]
    pub match_time: Option<f64>,
    /// The sweep's directory: one run directory per point, and the table, CSV and plots.
    #[arg(long, default_value = "runs/sweep")]
    pub out: PathBuf,
    /// Continue a sweep in --out: finished points are kept, unfinished ones resumed.
    #[arg(long)]
    pub resume: bool,
    /// Draw the table, CSV and plots again from a finished (or stopped) sweep's directory.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["file", "grid", "resume"])]
    pub report: Option<PathBuf>,
    /// Further `hyb train` flags for every point, after `--` (e.g. `-- --lr 3e-3 --seed 7`).
    #[arg(last = true)]
    pub train_args: Vec<String>,
}

/// What a sweep knows about one point, kept as `point.json` in its directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub label: String,
    pub sets: Vec<Set>,
    /// The point's directory, inside the sweep's.
    pub dir: String,
    /// `invalid` (did not check), `predicted`, `trained` or `failed` (training stopped).
    pub status: String,
    pub diagnostic: Option<String>,
    pub params: Option<u64>,
    pub flops_per_token: Option<f64>,
    pub predicted_step_s: Option<f64>,
    pub predicted_peak_bytes: Option<u64>,
    pub step_s: Option<f64>,
    pub tokens_per_s: Option<f64>,
    /// GPU memory the run's programs held (a GPU run).
    pub device_bytes: Option<u64>,
    /// The training process's peak resident memory (the executable, the compiler and the
    /// host's copy of the state included: on the CPU not the plan's arena alone).
    pub host_bytes: Option<u64>,
    pub train_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub eval_accuracy: Option<f64>,
}

const POINT: &str = "point.json";

pub fn run(args: &SweepArgs) -> Result<()> {
    if let Some(dir) = &args.report {
        let records = report::load(dir)?;
        return report::write(dir, &records, args.predict_only);
    }
    let file = args.file.as_deref().context("the model file")?;
    let points = grid::points(&args.grid, args.pairs, args.max_points).map_err(anyhow::Error::msg)?;
    let started = std::fs::read_dir(&args.out).is_ok_and(|mut d| d.next().is_some());
    if started && !args.resume {
        bail!("{} already holds a sweep: add --resume to continue it, or choose another --out", args.out.display());
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let device = match args.device.as_deref() {
        Some(d @ ("cpu" | "cuda")) => d.to_string(),
        Some(other) => bail!("--device {other}: cpu or cuda"),
        None if hyb_runtime::cuda::Device::available() => "cuda".into(),
        None => "cpu".into(),
    };
    let machine = predict::machine(args.machine.as_deref().unwrap_or(if device == "cuda" { "h200" } else { "host" }))?;
    println!(
        "{} points on {device}; predictions for {} (tp {}, B={} T={})",
        points.len(),
        machine.name,
        args.tp,
        args.batch,
        args.seq
    );
    let mut records = Vec::with_capacity(points.len());
    for (i, sets) in points.iter().enumerate() {
        let slug = grid::slug(sets);
        let dir = args.out.join(&slug);
        let kept = load_point(&dir);
        let label = grid::label(sets);
        if let Some(r) = kept.filter(|r| r.status == "trained" || (args.predict_only && r.status == "predicted")) {
            println!("[{}/{}] {label}: done before", i + 1, points.len());
            records.push(r);
            continue;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut sets = sets.clone();
        let mut record = Record { label: label.clone(), dir: slug, ..Record::default() };
        let matching = match (args.match_params, args.match_time) {
            (Some(p), _) => Some(predict::Matching::Params(p)),
            (None, Some(ms)) => Some(predict::Matching::StepTime(ms * 1e-3)),
            (None, None) => None,
        };
        match predict::point(file, args.model.as_deref(), &mut sets, &machine, args, matching) {
            Err(diagnostic) => {
                println!("[{}/{}] {label}: does not check, skipped\n{diagnostic}", i + 1, points.len());
                record.status = "invalid".into();
                record.diagnostic = Some(diagnostic);
            }
            Ok(p) => {
                record.status = "predicted".into();
                record.params = Some(p.params);
                record.flops_per_token = Some(p.flops_per_token);
                record.predicted_step_s = Some(p.step_s);
                record.predicted_peak_bytes = p.peak_bytes;
                println!(
                    "[{}/{}] {label}: {} parameters, predicted {:.2} ms per step{}",
                    i + 1,
                    points.len(),
                    p.params,
                    p.step_s * 1e3,
                    p.peak_bytes.map_or(String::new(), |b| format!(", {:.2} GiB", b as f64 / (1u64 << 30) as f64))
                );
            }
        }
        // The label shows what matching added (`d_ff=…`).
        record.label = grid::label(&sets);
        record.sets = sets;
        save_point(&dir, &record)?;
        records.push(record);
    }
    // Every point is screened before any trains; then the points train one after another,
    // or side by side with one GPU each when there are several.
    if !args.predict_only {
        let gpus = if device == "cuda" { hyb_runtime::cuda::Device::count().max(1) } else { 1 };
        let pending: Vec<&mut Record> = records.iter_mut().rev().filter(|r| r.status == "predicted").collect();
        let queue = std::sync::Mutex::new(pending);
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = (0..gpus)
                .map(|gpu| {
                    let (queue, device) = (&queue, &device);
                    scope.spawn(move || -> Result<()> {
                        let slot = (gpus > 1).then_some(gpu);
                        while let Some(record) = queue.lock().expect("no worker panics").pop() {
                            let dir = args.out.join(&record.dir);
                            train(file, args, device, slot, &dir, record)?;
                            save_point(&dir, record)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().expect("no worker panics"))
        })?;
    }
    report::write(&args.out, &records, args.predict_only)
}

fn load_point(dir: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(dir.join(POINT)).ok()?).ok()
}

fn save_point(dir: &Path, r: &Record) -> Result<()> {
    let path = dir.join(POINT);
    let text = serde_json::to_vec_pretty(r).expect("records serialise");
    hyb_runtime::atomic::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))
}

/// Trains one point with `hyb train` (this executable), on GPU `gpu` alone when given,
/// resuming its run if one was started, and reads back what it measured.
fn train(
    file: &Path,
    args: &SweepArgs,
    device: &str,
    gpu: Option<usize>,
    dir: &Path,
    record: &mut Record,
) -> Result<()> {
    let run = dir.join("run");
    let mut cmd = Command::new(std::env::current_exe().context("cannot find this executable")?);
    cmd.arg("train");
    if let Some(g) = gpu {
        cmd.env("CUDA_VISIBLE_DEVICES", g.to_string());
    }
    if run.join(hyb_runtime::train::checkpoint::FILE).exists() {
        cmd.arg("--resume").arg(&run);
    } else {
        cmd.arg(file).arg("--force");
        if let Some(m) = &args.model {
            cmd.args(["--model", m]);
        }
        for s in &record.sets {
            cmd.arg("--set").arg(s.to_string());
        }
        cmd.args(["--batch", &args.batch.to_string(), "--seq", &args.seq.to_string()]);
        if let Some(d) = &args.data {
            cmd.args(["--data", d]);
        }
        cmd.args(["--eval-every", &args.steps.to_string()]).args(&args.train_args);
    }
    cmd.args(["--steps", &args.steps.to_string(), "--device", device]).arg("--out").arg(&run);
    let out = cmd.output().with_context(|| format!("cannot run hyb train for {}", record.label))?;
    if !out.status.success() {
        record.status = "failed".into();
        let text = String::from_utf8_lossy(&out.stderr);
        record.diagnostic = Some(text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string());
        println!("{}: training failed: {}", record.label, record.diagnostic.as_deref().unwrap_or(""));
        return Ok(());
    }
    report::measured(&run, args.batch * args.seq, record)?;
    record.status = "trained".into();
    println!(
        "{}: trained: loss {:.4}{}, {:.1} ms per step",
        record.label,
        record.train_loss.unwrap_or(f64::NAN),
        record.eval_loss.map_or(String::new(), |l| format!(", eval {l:.4}")),
        record.step_s.unwrap_or(f64::NAN) * 1e3
    );
    Ok(())
}
