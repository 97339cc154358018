//! Training on the CPU: the compiled training graph (forward, loss, backward, AdamW) run
//! step by step by the reference interpreter in float32, with deterministic data,
//! evaluation, JSONL metrics, atomic checkpoints, exact resume and protection against
//! non-finite steps.

pub mod checkpoint;
pub mod data;
pub mod init;
pub mod rng;
pub mod schedule;

use checkpoint::State;
use data::{Batch, Source, Split};
use hyb_compiler::ir::Graph;
use hyb_compiler::reference::{run, Tensor};
use hyb_compiler::training::{training_graph, AdamW, TrainingGraph};
use schedule::{learning_rate, Schedule};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything that defines a run (stored in every checkpoint).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub steps: u64,
    pub batch: usize,
    pub seq: usize,
    pub lr: f64,
    pub warmup: u64,
    pub schedule: Schedule,
    pub seed: u64,
    pub eval_every: u64,
    pub eval_batches: u64,
    pub save_every: u64,
    /// Consecutive non-finite steps tolerated before the run stops.
    pub max_bad_steps: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    /// Decay every parameter, not only matrices.
    #[serde(default)]
    pub decay_all: bool,
    pub clip: Option<f64>,
    /// µP width multiplier `d / base_width` (1 without µP).
    pub width_mult: f64,
}

impl TrainConfig {
    fn adamw(&self) -> AdamW {
        AdamW {
            beta1: self.beta1,
            beta2: self.beta2,
            weight_decay: self.weight_decay,
            clip: self.clip,
            decay_all: self.decay_all,
            ..AdamW::default()
        }
    }
}

/// What one step did, for progress displays.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StepReport {
    pub step: u64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
    pub skipped: u64,
    /// Whether the update was applied (false for a skipped non-finite step).
    pub applied: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Run(#[from] hyb_compiler::reference::RunError),
    #[error("cannot write {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{0}")]
    Mismatch(String),
    #[error("stopped after {0} consecutive steps with a non-finite loss or gradient; the last checkpoint is intact")]
    Diverged(u64),
}

pub struct Trainer {
    cfg: TrainConfig,
    forward: Graph,
    step_graph: TrainingGraph,
    source: Source,
    pub state: State,
    dir: PathBuf,
}

impl Trainer {
    /// A fresh run in `dir` (created), parameters initialised from the manifest.
    pub fn new(forward: Graph, source: Source, cfg: TrainConfig, dir: &Path) -> Result<Trainer, TrainError> {
        let params: BTreeMap<String, Tensor<f32>> = forward
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), init::init(p, cfg.seed, i as u64, cfg.width_mult)))
            .collect();
        let zeros = |t: &Tensor<f32>| Tensor::zeros(t.shape.clone());
        let m = params.iter().map(|(k, t)| (k.clone(), zeros(t))).collect();
        let v = params.iter().map(|(k, t)| (k.clone(), zeros(t))).collect();
        let state = State { step: 0, applied: 0, skipped: 0, params, m, v };
        std::fs::create_dir_all(dir).map_err(|error| TrainError::Io { path: dir.display().to_string(), error })?;
        let step_graph = training_graph(&forward, &cfg.adamw(), cfg.width_mult);
        let t = Trainer { cfg, forward, step_graph, source, state, dir: dir.to_path_buf() };
        t.check_vocab()?;
        std::fs::write(t.metrics_path(), b"")
            .map_err(|error| TrainError::Io { path: t.metrics_path().display().to_string(), error })?;
        Ok(t)
    }

    /// Continues the run in `dir` from its checkpoint; `steps` may extend it.
    pub fn resume(forward: Graph, source: Source, dir: &Path, steps: Option<u64>) -> Result<Trainer, TrainError> {
        let (state, config) = checkpoint::load(&dir.join("checkpoint.safetensors"))?;
        let mut cfg: TrainConfig = serde_json::from_str(&config)
            .map_err(|e| TrainError::Mismatch(format!("the checkpoint's configuration is unreadable: {e}")))?;
        if let Some(s) = steps {
            cfg.steps = s;
        }
        for p in &forward.params {
            match state.params.get(&p.name) {
                Some(t) if t.shape == p.shape && state.m.contains_key(&p.name) && state.v.contains_key(&p.name) => {}
                Some(t) => {
                    return Err(TrainError::Mismatch(format!(
                        "checkpoint weight `{}` is {:?}, the model's is {:?}",
                        p.name, t.shape, p.shape
                    )))
                }
                None => return Err(TrainError::Mismatch(format!("the checkpoint has no weight `{}`", p.name))),
            }
        }
        let step_graph = training_graph(&forward, &cfg.adamw(), cfg.width_mult);
        let t = Trainer { cfg, forward, step_graph, source, state, dir: dir.to_path_buf() };
        t.check_vocab()?;
        t.truncate_metrics()?;
        Ok(t)
    }

    fn check_vocab(&self) -> Result<(), TrainError> {
        let vocab = self.forward.params.iter().find(|p| p.name == "embed_tokens.weight").map_or(0, |p| p.shape[0]);
        if self.source.vocab() > vocab {
            return Err(TrainError::Mismatch(format!(
                "the data has token ids up to {} but the model's vocabulary is {vocab}",
                self.source.vocab() - 1
            )));
        }
        Ok(())
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    fn metrics_path(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }

    /// Drops metric lines of steps after the checkpoint (written by a run that was stopped).
    fn truncate_metrics(&self) -> Result<(), TrainError> {
        let path = self.metrics_path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s < self.state.step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept).map_err(|error| TrainError::Io { path: path.display().to_string(), error })
    }

    fn inputs(&self, b: &Batch) -> HashMap<String, Tensor<f32>> {
        let shape = vec![b.batch, b.seq];
        let as_f32 = |v: &[u32]| Tensor::new(shape.clone(), v.iter().map(|&x| x as f32).collect());
        HashMap::from([
            ("ids".to_string(), as_f32(&b.ids)),
            ("targets".to_string(), as_f32(&b.targets)),
            ("loss_weights".to_string(), Tensor::new(shape.clone(), b.weights.iter().map(|&w| w as f32).collect())),
        ])
    }

    /// Runs one step; returns its report. Non-finite steps leave the state unchanged.
    pub fn step(&mut self) -> Result<StepReport, TrainError> {
        let started = Instant::now();
        let cfg = &self.cfg;
        let b = self.source.batch(cfg.seed, Split::Train, self.state.step, cfg.batch, cfg.seq)?;
        let lr = learning_rate(cfg.schedule, cfg.lr, cfg.warmup, self.state.step, cfg.steps);
        let t = (self.state.applied + 1) as i32;
        let mut inputs = self.inputs(&b);
        inputs.insert("lr".into(), Tensor::scalar(lr as f32));
        inputs.insert("bias_correction1".into(), Tensor::scalar((1.0 - cfg.beta1.powi(t)) as f32));
        inputs.insert("bias_correction2".into(), Tensor::scalar((1.0 - cfg.beta2.powi(t)) as f32));
        for (k, m) in &self.state.m {
            inputs.insert(format!("m.{k}"), m.clone());
        }
        for (k, v) in &self.state.v {
            inputs.insert(format!("v.{k}"), v.clone());
        }
        let params: HashMap<String, Tensor<f32>> =
            self.state.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut out = run(&self.step_graph.graph, &params, &inputs)?.into_iter();
        let loss = out.next().unwrap().data[0] as f64;
        let grad_norm = out.next().unwrap().data[0] as f64;
        let updated: Vec<Tensor<f32>> = out.collect();
        // A step is applied only if its loss, gradient and every updated tensor are finite.
        let finite =
            loss.is_finite() && grad_norm.is_finite() && updated.iter().all(|t| t.data.iter().all(|x| x.is_finite()));
        if finite {
            let mut it = updated.into_iter();
            for name in &self.step_graph.params {
                self.state.params.insert(name.clone(), it.next().unwrap());
                self.state.m.insert(name.clone(), it.next().unwrap());
                self.state.v.insert(name.clone(), it.next().unwrap());
            }
            self.state.applied += 1;
        } else {
            self.state.skipped += 1;
        }
        self.state.step += 1;
        let tokens_per_s = (cfg.batch * cfg.seq) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        Ok(StepReport {
            step: self.state.step - 1,
            loss,
            grad_norm,
            lr,
            tokens_per_s,
            skipped: self.state.skipped,
            applied: finite,
            eval_loss: None,
            eval_accuracy: None,
        })
    }

    /// Mean loss and accuracy (of the positions that carry loss) on held-out batches.
    pub fn evaluate(&self) -> Result<(f64, f64), TrainError> {
        let params: HashMap<String, Tensor<f32>> =
            self.state.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (mut loss, mut hits, mut counted) = (0.0, 0usize, 0usize);
        for i in 0..self.cfg.eval_batches {
            let b = self.source.batch(self.cfg.seed, Split::Eval, i, self.cfg.batch, self.cfg.seq)?;
            let logits = run(&self.forward, &params, &self.inputs(&b))?.remove(0);
            let vocab = *logits.shape.last().unwrap();
            for (pos, row) in logits.data.chunks(vocab).enumerate() {
                let w = b.weights[pos];
                if w == 0.0 {
                    continue;
                }
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
                let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
                let target = b.targets[pos] as usize;
                loss += w * (lse - row[target] as f64);
                let best = row
                    .iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |a, (j, &x)| if x > a.1 { (j, x) } else { a })
                    .0;
                hits += usize::from(best == target);
                counted += 1;
            }
        }
        Ok((loss / self.cfg.eval_batches.max(1) as f64, hits as f64 / counted.max(1) as f64))
    }

    pub fn save(&self) -> Result<(), TrainError> {
        let config = serde_json::to_string(&self.cfg).expect("the configuration serialises");
        checkpoint::save(&self.dir.join("checkpoint.safetensors"), &self.state, &config)?;
        Ok(())
    }

    fn log(&self, report: &StepReport) -> Result<(), TrainError> {
        let path = self.metrics_path();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|error| TrainError::Io { path: path.display().to_string(), error })?;
        writeln!(f, "{}", serde_json::to_string(report).expect("reports serialise"))
            .map_err(|error| TrainError::Io { path: path.display().to_string(), error })
    }

    /// Draws `loss.png` in the run directory from `metrics.jsonl`: training loss per step and
    /// evaluation loss where it was measured.
    pub fn plot_losses(&self) -> Result<PathBuf, crate::plot::PlotError> {
        let text = std::fs::read_to_string(self.metrics_path()).unwrap_or_default();
        let (mut train, mut eval) = (Vec::new(), Vec::new());
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let step = v["step"].as_f64().unwrap_or(0.0) + 1.0;
            if let Some(l) = v["loss"].as_f64() {
                train.push((step, l));
            }
            if let Some(l) = v["eval_loss"].as_f64() {
                eval.push((step, l));
            }
        }
        let path = self.dir.join("loss.png");
        let chart =
            crate::plot::Chart { title: "loss", x_label: "step", y_label: "cross-entropy", log_x: false, log_y: false };
        let series = [
            crate::plot::Series { name: "train".into(), points: train },
            crate::plot::Series { name: "eval".into(), points: eval },
        ];
        crate::plot::draw(&path, &chart, &series)?;
        Ok(path)
    }

    /// Runs to the configured number of steps, evaluating, logging and checkpointing.
    pub fn run(&mut self, on_step: &mut dyn FnMut(&StepReport)) -> Result<(), TrainError> {
        let mut bad_in_a_row = 0;
        while self.state.step < self.cfg.steps {
            let mut report = self.step()?;
            if report.applied {
                bad_in_a_row = 0;
            } else {
                bad_in_a_row += 1;
                if bad_in_a_row >= self.cfg.max_bad_steps {
                    self.log(&report)?;
                    return Err(TrainError::Diverged(bad_in_a_row));
                }
            }
            let done = self.state.step;
            if self.cfg.eval_every > 0 && (done.is_multiple_of(self.cfg.eval_every) || done == self.cfg.steps) {
                let (l, a) = self.evaluate()?;
                report.eval_loss = Some(l);
                report.eval_accuracy = Some(a);
            }
            self.log(&report)?;
            on_step(&report);
            if bad_in_a_row == 0
                && ((self.cfg.save_every > 0 && done.is_multiple_of(self.cfg.save_every)) || done == self.cfg.steps)
            {
                self.save()?;
            }
        }
        Ok(())
    }
}
