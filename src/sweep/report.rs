//! A sweep's results: what each trained point measured (from its run directory), the
//! table with the Pareto-optimal points marked, `results.csv` and `results.jsonl`, the
//! plots, and how far the cost model's predictions were from the measurements.

use super::{Record, POINT};
use anyhow::{Context, Result};
use hyb_runtime::plot::{draw, Chart, Series};
use std::path::Path;

/// Every point of the sweep in `dir`, in the order of their directories.
pub fn load(dir: &Path) -> Result<Vec<Record>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read the sweep {}", dir.display()))?;
    let mut paths: Vec<_> =
        entries.filter_map(|e| e.ok().map(|e| e.path().join(POINT))).filter(|p| p.exists()).collect();
    paths.sort();
    let records = paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            serde_json::from_slice(&bytes).with_context(|| format!("{} is not a sweep point", p.display()))
        })
        .collect::<Result<Vec<Record>>>()?;
    anyhow::ensure!(!records.is_empty(), "{} holds no sweep points", dir.display());
    Ok(records)
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    xs.sort_by(f64::total_cmp);
    (!xs.is_empty()).then(|| xs[xs.len() / 2])
}

/// Fills in what the run in `run` measured: the median step time (the first two steps,
/// which compile and warm up, left out), the training loss (mean of the last tenth of the
/// steps), the last evaluation, and the memory the run held.
pub fn measured(run: &Path, tokens: usize, r: &mut Record) -> Result<()> {
    let rows = json_lines(&run.join("metrics.jsonl"));
    let steps: Vec<&serde_json::Value> = rows.iter().filter(|v| v["loss"].is_number()).collect();
    anyhow::ensure!(!steps.is_empty(), "{} recorded no steps", run.display());
    let rates: Vec<f64> =
        steps.iter().skip(2.min(steps.len() - 1)).filter_map(|v| v["tokens_per_s"].as_f64()).collect();
    r.tokens_per_s = median(rates);
    r.step_s = r.tokens_per_s.map(|t| tokens as f64 / t);
    let tail = (steps.len() / 10).max(1);
    let losses: Vec<f64> = steps[steps.len() - tail..].iter().filter_map(|v| v["loss"].as_f64()).collect();
    r.train_loss = Some(losses.iter().sum::<f64>() / losses.len().max(1) as f64);
    let last_eval = rows.iter().rev().find(|v| v["eval_loss"].is_number());
    r.eval_loss = last_eval.and_then(|v| v["eval_loss"].as_f64());
    r.eval_accuracy = last_eval.and_then(|v| v["eval_accuracy"].as_f64());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap_or_default()).unwrap_or_default();
    r.device_bytes = summary["device_bytes"].as_u64();
    r.host_bytes = summary["peak_host_bytes"].as_u64();
    Ok(())
}

/// The loss a point is judged by: evaluation's, else training's.
fn loss(r: &Record) -> Option<f64> {
    r.eval_loss.or(r.train_loss)
}

/// Whether no other trained point is at least as good on both `loss` and `cost` and
/// better on one.
fn pareto(r: &Record, all: &[Record], cost: fn(&Record) -> Option<f64>) -> bool {
    let (Some(l), Some(c)) = (loss(r), cost(r)) else { return false };
    !all.iter().any(|o| match (loss(o), cost(o)) {
        (Some(lo), Some(co)) => lo <= l && co <= c && (lo < l || co < c),
        _ => false,
    })
}

/// The memory a point is judged by: the GPU's, else the training process's.
fn memory(r: &Record) -> Option<f64> {
    r.device_bytes.or(r.host_bytes).map(|b| b as f64)
}

fn gib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{:.3}", b as f64 / (1u64 << 30) as f64))
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// Prints the table and writes `results.csv`, `results.jsonl` and the plots into `dir`.
pub fn write(dir: &Path, records: &[Record], predict_only: bool) -> Result<()> {
    let mut sorted: Vec<&Record> = records.iter().collect();
    let key = |r: &Record| if predict_only { r.predicted_step_s } else { loss(r) };
    sorted.sort_by(|a, b| match (key(a), key(b)) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.label.cmp(&b.label),
    });
    let trained: Vec<Record> = records.iter().filter(|r| r.status == "trained").cloned().collect();
    println!(
        "\n{:<4} {:<40} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6}",
        "",
        "point",
        "params",
        "GFLOP/tok",
        "pred ms",
        "pred GiB",
        "ms/step",
        "GPU GiB",
        "host GiB",
        "loss",
        "eval",
        "acc %"
    );
    for r in &sorted {
        let front = match (pareto(r, &trained, |r| r.step_s), pareto(r, &trained, memory)) {
            (true, true) => "*T*M",
            (true, false) => "*T",
            (false, true) => "*M",
            _ => "",
        };
        let what = if r.status == "invalid" || r.status == "failed" {
            format!("{} ({})", r.label, r.status)
        } else {
            r.label.clone()
        };
        println!(
            "{front:<4} {what:<40} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6}",
            r.params.map_or("-".into(), |p| p.to_string()),
            num(r.flops_per_token.map(|f| f / 1e9), 3),
            num(r.predicted_step_s.map(|s| s * 1e3), 2),
            gib(r.predicted_peak_bytes),
            num(r.step_s.map(|s| s * 1e3), 2),
            gib(r.device_bytes),
            gib(r.host_bytes),
            num(r.train_loss, 4),
            num(r.eval_loss, 4),
            num(r.eval_accuracy.map(|a| 100.0 * a), 1),
        );
    }
    if !trained.is_empty() {
        println!("(*T: Pareto-optimal in loss and step time; *M: in loss and memory)");
    }
    for (what, ratios) in [
        ("step time", trained.iter().filter_map(|r| Some(r.step_s? / r.predicted_step_s?)).collect::<Vec<_>>()),
        (
            "GPU memory",
            trained.iter().filter_map(|r| Some(r.device_bytes? as f64 / r.predicted_peak_bytes? as f64)).collect(),
        ),
        // A CPU run's process holds the executable, the compiler and the host's copy of the
        // state besides the plan's arena: an upper bound, not the plan's measure.
        (
            "host memory (the whole process)",
            trained
                .iter()
                .filter(|r| r.device_bytes.is_none())
                .filter_map(|r| Some(r.host_bytes? as f64 / r.predicted_peak_bytes? as f64))
                .collect(),
        ),
    ] {
        if let Some(m) = median(ratios.clone()) {
            let (lo, hi) = ratios.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
            println!(
                "cost model, {what}: measured / predicted median {m:.2}× ({lo:.2}–{hi:.2}×) over {} points",
                ratios.len()
            );
        }
    }
    let mut csv = String::from(
        "point,status,params,flops_per_token,predicted_step_s,predicted_peak_bytes,step_s,tokens_per_s,device_bytes,host_bytes,train_loss,eval_loss,eval_accuracy\n",
    );
    let mut jsonl = String::new();
    for r in records {
        let f = |x: Option<f64>| x.map_or(String::new(), |x| x.to_string());
        let u = |x: Option<u64>| x.map_or(String::new(), |x| x.to_string());
        csv.push_str(&format!(
            "\"{}\",{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.label.replace('"', "\"\""),
            r.status,
            u(r.params),
            f(r.flops_per_token),
            f(r.predicted_step_s),
            u(r.predicted_peak_bytes),
            f(r.step_s),
            f(r.tokens_per_s),
            u(r.device_bytes),
            u(r.host_bytes),
            f(r.train_loss),
            f(r.eval_loss),
            f(r.eval_accuracy)
        ));
        jsonl.push_str(&serde_json::to_string(r).expect("records serialise"));
        jsonl.push('\n');
    }
    for (name, text) in [("results.csv", csv), ("results.jsonl", jsonl)] {
        let path = dir.join(name);
        hyb_runtime::atomic::write(&path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    if trained.is_empty() {
        return Ok(());
    }
    let dots = |cost: fn(&Record) -> Option<f64>| -> Vec<Series> {
        trained
            .iter()
            .filter_map(|r| Some(Series { name: r.label.clone(), points: vec![(cost(r)?, loss(r)?)] }))
            .collect()
    };
    let curves: Vec<Series> = trained
        .iter()
        .map(|r| Series {
            name: r.label.clone(),
            points: json_lines(&dir.join(&r.dir).join("run/metrics.jsonl"))
                .iter()
                .filter_map(|v| Some((v["step"].as_f64()? + 1.0, v["loss"].as_f64()?)))
                .collect(),
        })
        .collect();
    let plots = [
        ("loss_vs_step_time.png", "loss against step time", "ms per step", dots(|r| r.step_s.map(|s| s * 1e3)), true),
        (
            "loss_vs_memory.png",
            "loss against memory",
            "peak GiB",
            dots(|r| memory(r).map(|b| b / (1u64 << 30) as f64)),
            true,
        ),
        ("loss_curves.png", "training loss", "step", curves, false),
    ];
    for (file, title, x_label, series, scatter) in plots {
        let path = dir.join(file);
        let chart = Chart { title, x_label, y_label: "loss", log_x: false, log_y: false, scatter };
        match draw(&path, &chart, &series) {
            Ok(()) => println!("{}", path.display()),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    Ok(())
}
