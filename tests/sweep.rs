//! `hyb sweep` end to end on the CPU: a two-axis grid with a point that does not check
//! (reported and skipped), predicted and trained, the table, CSV, JSONL and plots
//! written; a sweep killed after its first point resumes without training that point
//! again; `--report` draws it all again; budgets and bad grids are refused.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "examples/mqar_hybrid.hyb";

fn sweep(args: &[&str], out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hyb"));
    c.arg("sweep").arg(MODEL).args(args).arg("--out").arg(out);
    c.args(["--steps", "3", "--batch", "4", "--seq", "32", "--device", "cpu", "--", "--eval-batches", "1"]);
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env("NO_COLOR", "1");
    c
}

fn output(mut c: Command) -> (bool, String) {
    let out = c.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn rows(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("results.csv")).unwrap().lines().skip(1).map(str::to_string).collect()
}

#[test]
fn a_grid_is_checked_predicted_trained_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    // kv_heads is 4: heads=2 does not check.
    let (ok, text) = output(sweep(&["--grid", "heads=2,4", "--grid", "ssm_heads=2,4", "--machine", "h200"], &out));
    assert!(ok, "{text}");
    assert_eq!(text.matches("does not check, skipped").count(), 2, "{text}");
    let rows = rows(&out);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows.iter().filter(|r| r.contains(",trained,")).count(), 2, "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r.contains(",invalid,")).count(), 2, "{rows:?}");
    // Trained points carry their prediction and measurements; more Mamba heads, more parameters.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["status"] == "trained")
        .collect();
    for r in &records {
        for key in [
            "params",
            "flops_per_token",
            "predicted_step_s",
            "predicted_peak_bytes",
            "step_s",
            "train_loss",
            "eval_loss",
        ] {
            assert!(r[key].as_f64().is_some_and(|x| x.is_finite() && x > 0.0), "{key} of {r}");
        }
    }
    assert!(records[0]["params"].as_u64() < records[1]["params"].as_u64());
    for plot in ["loss_vs_step_time.png", "loss_vs_memory.png", "loss_curves.png"] {
        assert!(std::fs::metadata(out.join(plot)).unwrap().len() > 1000, "{plot}");
    }
    assert!(text.contains("cost model, step time: measured / predicted"), "{text}");
    assert!(text.contains("cost model, host memory (the whole process): measured / predicted"), "{text}");
    // The directory holds a sweep: a second one there needs --resume.
    let (ok, again) = output(sweep(&["--grid", "heads=4"], &out));
    assert!(!ok && again.contains("already holds a sweep: add --resume"), "{again}");
    // --report draws it again from the directory alone.
    std::fs::remove_file(out.join("results.csv")).unwrap();
    let mut report = Command::new(env!("CARGO_BIN_EXE_hyb"));
    report.args(["sweep", "--report"]).arg(&out);
    let (ok, text) = output(report);
    assert!(ok, "{text}");
    assert_eq!(self::rows(&out).len(), 4);
}

#[test]
fn a_killed_sweep_resumes_without_training_finished_points_again() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let grid = ["--grid", "ssm_heads=1,2,4", "--machine", "h200"];
    let mut child = sweep(&grid, &out).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    let first = loop {
        let done = std::fs::read_dir(&out).into_iter().flatten().flatten().map(|e| e.path()).find(|p| {
            std::fs::read_to_string(p.join("point.json")).is_ok_and(|t| t.contains("\"status\": \"trained\""))
        });
        if let Some(p) = done {
            break p;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no point finished");
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let metrics = first.join("run/metrics.jsonl");
    let before = std::fs::read(&metrics).unwrap();
    let (ok, text) = output(sweep(&[&grid[..], &["--resume"]].concat(), &out));
    assert!(ok, "{text}");
    assert!(text.contains("done before"), "{text}");
    assert_eq!(std::fs::read(&metrics).unwrap(), before, "a finished point was trained again");
    assert_eq!(rows(&out).iter().filter(|r| r.contains(",trained,")).count(), 3);
}

#[test]
fn bad_grids_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    for (grid, why) in [
        (&["--grid", "heads=1,2,4", "--grid", "d=32,64", "--max-points", "4"][..], "6 points, above --max-points 4"),
        (&["--grid", "heads=1,2", "--grid", "d=32,64,96", "--pairs"][..], "equal length"),
        (&["--grid", "heads"][..], "is not NAME=V1,V2"),
        (&["--grid", "layers[3..1].heads=2"][..], "the range is empty"),
    ] {
        let (ok, text) = output(sweep(grid, &out));
        assert!(!ok && text.contains(why), "{grid:?}: {text}");
    }
    assert!(!out.exists(), "a refused grid writes nothing");
    // Predictions alone, and parameters matched by scaling d_ff.
    let (ok, text) = output(sweep(
        &["--grid", "ssm_heads=2,4", "--predict-only", "--match-params", "150000", "--machine", "h200"],
        &out,
    ));
    assert!(ok, "{text}");
    let params: Vec<f64> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["params"].as_f64().unwrap())
        .collect();
    assert!(params.iter().all(|p| (p - 150000.0).abs() < 0.02 * 150000.0), "{params:?}");
    // Or their predicted step time.
    let out = dir.path().join("timed");
    let (ok, text) =
        output(sweep(&["--grid", "ssm_heads=2,4", "--predict-only", "--match-time", "0.8", "--machine", "h200"], &out));
    assert!(ok, "{text}");
    for line in std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let ms = r["predicted_step_s"].as_f64().unwrap() * 1e3;
        assert!((ms - 0.8).abs() < 0.05 * 0.8, "{r}");
        assert!(r["label"].as_str().unwrap().contains("d_ff="), "{r}");
    }
}
