//! The µP coordinate check (Tensor Programs V): train a model for a few steps at several
//! widths and compare the mean |activation| of every layer. Under µP the curves are flat in
//! width; under standard parametrisation (the same learning rate and init at every width)
//! they grow.

use crate::plot::{self, Chart, Series};
use crate::train::data::{Mqar, Source, Split};
use crate::train::run_dir::Existing;
use crate::train::schedule::Schedule;
use crate::train::{TrainConfig, TrainError, Trainer};
use hyb_compiler::elaborate::{elaborate, elaborate_outputs};
use hyb_compiler::reference::{run, Tensor};
use hyb_dsl::dim::Dim;
use hyb_dsl::value::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct CoordCheck {
    pub widths: Vec<u64>,
    pub base_width: u64,
    pub steps: u64,
    pub lr: f64,
    pub batch: usize,
    pub seq: usize,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parametrisation {
    Mup,
    Standard,
}

impl Parametrisation {
    pub fn name(self) -> &'static str {
        match self {
            Parametrisation::Mup => "µP",
            Parametrisation::Standard => "SP",
        }
    }
}

/// Mean |activation| after training, per layer output and for the logits.
#[derive(Clone, Debug)]
pub struct Row {
    pub parametrisation: Parametrisation,
    pub width: u64,
    pub layers: Vec<f64>,
    pub logits: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum MupError {
    #[error("{0}")]
    Model(String),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
}

fn mean_abs(t: &Tensor<f32>) -> f64 {
    t.data.iter().map(|x| x.abs() as f64).sum::<f64>() / t.len().max(1) as f64
}

/// Runs the check for `model` (a file and optional model name) at every width, both
/// parametrisations; training runs go under `dir`.
pub fn coordinate_check(file: &Path, model: Option<&str>, cfg: &CoordCheck, dir: &Path) -> Result<Vec<Row>, MupError> {
    let mut rows = Vec::new();
    for &width in &cfg.widths {
        let settings = HashMap::from([("d".to_string(), Value::Int(Dim::constant(width as i64)))]);
        let checked = hyb_compiler::check::check_paths_with(&[file], &settings).map_err(MupError::Model)?;
        if let Some(d) = checked.diagnostics.first() {
            return Err(MupError::Model(format!("at d = {width}: {}", d.message)));
        }
        let expanded = match model {
            Some(name) => checked.models.iter().find(|(_, m)| m.summary.name == name),
            None => checked.models.first(),
        }
        .map(|(_, m)| m)
        .ok_or_else(|| MupError::Model("no such model".into()))?;
        let vocab = expanded.summary.vocab as usize;
        let source = Source::Mqar(Mqar { vocab, pairs: (cfg.seq / 4).max(1) });
        let mut outputs = expanded.trace.outputs.clone();
        outputs.extend(&expanded.layer_outputs);
        let probe_graph = elaborate_outputs(&expanded.trace, &outputs);
        for p in [Parametrisation::Mup, Parametrisation::Standard] {
            let width_mult = match p {
                Parametrisation::Mup => width as f64 / cfg.base_width as f64,
                Parametrisation::Standard => 1.0,
            };
            let train_cfg = TrainConfig {
                steps: cfg.steps,
                batch: cfg.batch,
                seq: cfg.seq,
                lr: cfg.lr,
                warmup: 0,
                schedule: Schedule::Constant,
                seed: cfg.seed,
                eval_every: 0,
                eval_batches: 0,
                save_every: 0,
                max_bad_steps: cfg.steps + 1,
                beta1: 0.9,
                beta2: 0.95,
                weight_decay: 0.0,
                decay_all: false,
                clip: None,
                width_mult,
            };
            // Scratch runs: a repeated check replaces them.
            let run_dir: PathBuf =
                dir.join(format!("{}_{width}", if p == Parametrisation::Mup { "mup" } else { "sp" }));
            let mut trainer =
                Trainer::new(elaborate(&expanded.trace), source.clone(), train_cfg, &run_dir, Existing::Replace)?;
            for _ in 0..cfg.steps {
                trainer.step()?;
            }
            let b = source.batch(cfg.seed, Split::Eval, 0, cfg.batch, cfg.seq).map_err(TrainError::from)?;
            let shape = vec![b.batch, b.seq];
            let inputs =
                HashMap::from([("ids".to_string(), Tensor::new(shape, b.ids.iter().map(|&x| x as f32).collect()))]);
            let params: HashMap<String, Tensor<f32>> = trainer.state.params.clone().into_iter().collect();
            let values = run(&probe_graph, &params, &inputs).map_err(TrainError::from)?;
            rows.push(Row {
                parametrisation: p,
                width,
                logits: mean_abs(&values[0]),
                layers: values[1..].iter().map(mean_abs).collect(),
            });
        }
    }
    Ok(rows)
}

/// One chart per parametrisation: mean |activation| against width, a line per layer.
pub fn plot_rows(rows: &[Row], dir: &Path) -> Result<Vec<PathBuf>, MupError> {
    let mut paths = Vec::new();
    for p in [Parametrisation::Mup, Parametrisation::Standard] {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.parametrisation == p).collect();
        let Some(first) = mine.first() else { continue };
        let mut series: Vec<Series> = (0..first.layers.len())
            .map(|l| Series {
                name: format!("layer {l}"),
                points: mine.iter().map(|r| (r.width as f64, r.layers[l])).collect(),
            })
            .collect();
        series
            .push(Series { name: "logits".into(), points: mine.iter().map(|r| (r.width as f64, r.logits)).collect() });
        let path = dir.join(format!("coord_check_{}.png", if p == Parametrisation::Mup { "mup" } else { "sp" }));
        let title = format!("coordinate check, {}", p.name());
        let chart = Chart {
            title: &title,
            x_label: "width d",
            y_label: "mean |activation|",
            log_x: true,
            log_y: true,
            scatter: false,
        };
        plot::draw(&path, &chart, &series)?;
        paths.push(path);
    }
    Ok(paths)
}

/// How much the largest width's activation exceeds the smallest's, per parametrisation,
/// maximised over layers and logits.
pub fn growth(rows: &[Row], p: Parametrisation) -> f64 {
    let mine: Vec<&Row> = rows.iter().filter(|r| r.parametrisation == p).collect();
    let (Some(lo), Some(hi)) = (mine.iter().min_by_key(|r| r.width), mine.iter().max_by_key(|r| r.width)) else {
        return 1.0;
    };
    let mut worst = hi.logits / lo.logits;
    for (a, b) in lo.layers.iter().zip(&hi.layers) {
        worst = worst.max(b / a);
    }
    worst
}
