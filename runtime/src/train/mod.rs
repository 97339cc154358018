//! Training on the CPU: the compiled training step (forward, loss, backward, AdamW;
//! rewritten, fused, recomputed and planned; from a model or an artifact) run by the CPU
//! executor in float32 — or the unoptimised graph in the reference interpreter — with
//! deterministic data, evaluation on the compiled forward pass, JSONL metrics, atomic
//! checkpoints, exact resume and protection against non-finite steps.

pub mod checkpoint;
pub mod data;
pub mod init;
pub mod rng;
pub mod run_dir;
pub mod schedule;
pub mod step;
mod tensor_parallel;
mod zero;

use checkpoint::State;
use data::{Batch, DataSpec, Source, Split};
use hyb_compiler::ir::Graph;
use hyb_compiler::reference::Tensor;
use hyb_compiler::training::AdamW;
use run_dir::{Existing, RunDir};
use schedule::{learning_rate, Schedule};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use step::{Model, Programs};

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
    /// Every value in range: a run never starts, or resumes, on a setting it cannot honour
    /// (and a non-finite value never reaches the stored configuration).
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: &str, why: &str| Err(TrainError::Config(format!("{what} {why}")));
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let fraction = |x: f64| x.is_finite() && (0.0..1.0).contains(&x);
        if self.steps == 0 {
            return bad("steps", "must be at least 1");
        }
        if self.batch == 0 || self.seq == 0 {
            return bad("batch and seq", "must be at least 1");
        }
        if !positive(self.lr) {
            return bad("lr", &format!("must be a positive finite number, not {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", &format!("must be a finite number ≥ 0, not {}", self.weight_decay));
        }
        if self.eval_every > 0 && self.eval_batches == 0 {
            return bad("eval_batches", "must be at least 1 when evaluating (eval_every > 0)");
        }
        if self.max_bad_steps == 0 {
            return bad("max_bad_steps", "must be at least 1");
        }
        if !fraction(self.beta1) || !fraction(self.beta2) {
            return bad("beta1 and beta2", &format!("must be in [0, 1), not {} and {}", self.beta1, self.beta2));
        }
        if self.clip.is_some_and(|c| !positive(c)) {
            return bad("clip", "must be a positive finite number");
        }
        if !positive(self.width_mult) {
            return bad(
                "width_mult",
                &format!("(d / base_width) must be a positive finite number, not {}", self.width_mult),
            );
        }
        let ratio_ok = |r: f64| r.is_finite() && (0.0..=1.0).contains(&r);
        let schedule_ok = match self.schedule {
            Schedule::Constant => true,
            Schedule::Cosine { min_ratio } => ratio_ok(min_ratio),
            Schedule::Wsd { decay_fraction, min_ratio } => ratio_ok(decay_fraction) && ratio_ok(min_ratio),
        };
        if !schedule_ok {
            return bad("schedule", &format!("{:?} has a ratio outside [0, 1]", self.schedule));
        }
        Ok(())
    }

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

/// What a run trains: stored in its checkpoint and checked on resume, so that a run never
/// continues on another model or other data.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// SHA-256 of the forward graph: every operation, constant and parameter.
    pub model: String,
    /// Where the data comes from.
    pub data: DataSpec,
    /// SHA-256 of what the data yields (see [`Source::fingerprint`]).
    pub data_sha256: String,
}

impl Identity {
    pub fn of(forward: &Graph, source: &Source) -> Identity {
        use sha2::Digest;
        let graph = serde_json::to_vec(forward).expect("graphs serialise");
        Identity {
            model: crate::weights::hex(&sha2::Sha256::digest(graph)),
            data: source.spec(),
            data_sha256: source.fingerprint(),
        }
    }
}

/// How to continue a run.
#[derive(Clone, Debug)]
pub struct Resume<'a> {
    /// The run directory holding the checkpoint.
    pub from: &'a Path,
    /// Where to continue: `from` itself, or another directory, which becomes a fork
    /// (a copy of the run up to its checkpoint) and leaves `from` untouched.
    pub into: &'a Path,
    /// For a fork: what to do if `into` already holds files.
    pub existing: Existing,
    /// A new total number of steps, at least the steps already done.
    pub steps: Option<u64>,
}

/// The data must fit the model's vocabulary and give batches of the configured shape.
fn check_data(forward: &Graph, source: &Source, cfg: &TrainConfig) -> Result<(), TrainError> {
    let vocab = forward.params.iter().find(|p| p.name == "embed_tokens.weight").map_or(0, |p| p.shape[0]);
    if source.vocab() > vocab {
        return Err(TrainError::Mismatch(format!(
            "the data has token ids up to {} but the model's vocabulary is {vocab}",
            source.vocab() - 1
        )));
    }
    let b = source.batch(cfg.seed, Split::Train, 0, cfg.batch, cfg.seq)?;
    // Sizes that depend on the sequence length (`x[:, -100]` needs `T >= 100`).
    let ids = Tensor::<f32>::zeros(vec![b.batch, b.seq]);
    hyb_compiler::reference::check_inputs(forward, &HashMap::from([("ids".to_string(), ids)]))?;
    if cfg.eval_every > 0 {
        source.batch(cfg.seed, Split::Eval, 0, cfg.batch, cfg.seq)?;
    }
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
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
    #[error(transparent)]
    RunDir(#[from] run_dir::RunDirError),
    #[error("{0}")]
    Mismatch(String),
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// The plan, fitted to the device's memory, does not fit: what it needs and what would.
    #[error("{0}")]
    Plan(String),
    /// The GPU could not be used (no driver, no GPU, out of memory, code it refused).
    #[error("{0}")]
    Device(String),
    #[error("stopped after {0} consecutive steps with a non-finite loss or gradient; the last checkpoint is intact")]
    Diverged(u64),
}

/// Tensors by name: a program's parameters or inputs.
pub type Values = HashMap<String, Tensor<f32>>;

pub struct Trainer {
    cfg: TrainConfig,
    programs: Programs,
    /// The parameters' names, in the order of the step's outputs.
    step_params: Vec<String>,
    source: Source,
    pub state: State,
    identity: Identity,
    run: RunDir,
    /// The step of the last checkpoint in the run directory, if there is one.
    saved_at: Option<u64>,
    /// Whether the step's runner holds the weights and moments (a GPU, after a step).
    on_device: bool,
    /// Whether it holds newer ones than `state`.
    device_ahead: bool,
    /// The other replicas of a data-parallel job, which the step's gradients are summed
    /// with ([`Trainer::join`]).
    group: Option<crate::dist::Mesh>,
    /// Seconds the run took to start, by stage.
    startup: Startup,
}

/// Where a run's start went: what a researcher waits for before the first step.
#[derive(Clone, Copy, Debug, Default)]
pub struct Startup {
    /// Initialising the parameters (`None`: resumed from a checkpoint).
    pub initialised_s: Option<f64>,
    /// Compiling the step and evaluation programs, and preparing them for their executor.
    pub programs_s: f64,
    /// Building the first step's inputs (with the whole state, which later steps on a GPU
    /// leave there), once it has run.
    pub first_inputs_s: Option<f64>,
}

/// The whole state (each parameter's value and moments, in the step graph's order) from a
/// rank's parts: ZeRO-1 runs gathered over the data group, then tensor-parallel parts over
/// the tensor group.
fn whole_state(
    graph: &Graph,
    tp: usize,
    group: &mut crate::dist::Mesh,
    parts: Vec<Tensor<f32>>,
) -> Result<Vec<Tensor<f32>>, TrainError> {
    let state = zero::gather_state(graph, &mut group.data, parts)?;
    match tp {
        1 => Ok(state),
        _ => tensor_parallel::gather_state(graph, &mut group.tensor, state),
    }
}

/// A collective that failed, as the trainer reports it.
fn collective_error(e: crate::dist::CommError) -> TrainError {
    TrainError::Run(hyb_compiler::reference::RunError::Collective(e.to_string()))
}

impl Trainer {
    /// A fresh run in `dir` (created), parameters initialised from the manifest. Everything
    /// is validated, and the programs compiled, before the directory is touched.
    pub fn new(
        model: impl Into<Model>,
        source: Source,
        cfg: TrainConfig,
        dir: &Path,
        existing: Existing,
    ) -> Result<Trainer, TrainError> {
        let model = model.into();
        let forward = model.forward().clone();
        cfg.validate()?;
        check_data(&forward, &source, &cfg)?;
        let started = Instant::now();
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
        let identity = Identity::of(&forward, &source);
        let initialised_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let programs = model.programs(&cfg, source.packs())?;
        let startup = Startup {
            initialised_s: Some(initialised_s),
            programs_s: started.elapsed().as_secs_f64(),
            first_inputs_s: None,
        };
        let step_params = programs.params();
        let run = RunDir::fresh(dir, existing)?;
        let t = Trainer {
            cfg,
            programs,
            step_params,
            source,
            state,
            identity,
            run,
            saved_at: None,
            on_device: false,
            device_ahead: false,
            group: None,
            startup,
        };
        t.write_metrics(b"")?;
        Ok(t)
    }

    /// The configuration and identity stored in a run's checkpoint (its header only).
    pub fn stored(run: &Path) -> Result<(TrainConfig, Identity), TrainError> {
        let meta = checkpoint::metadata(&checkpoint::path_in(run))?;
        let field = |k: &str| meta.get(k).map_or("", String::as_str);
        let cfg: TrainConfig = serde_json::from_str(field("config"))
            .map_err(|e| TrainError::Mismatch(format!("the checkpoint's configuration is unreadable: {e}")))?;
        let identity: Identity = serde_json::from_str(field("identity"))
            .map_err(|e| TrainError::Mismatch(format!("the checkpoint's run identity is unreadable: {e}")))?;
        Ok((cfg, identity))
    }

    /// Continues a run from its checkpoint, in place or as a fork (see [`Resume`]). The
    /// model and data must be the ones the run trained on.
    pub fn resume(model: impl Into<Model>, source: Source, how: &Resume) -> Result<Trainer, TrainError> {
        let model = model.into();
        let forward = model.forward().clone();
        let ckpt = checkpoint::load(&how.from.join(checkpoint::FILE))?;
        let state = ckpt.state;
        let mut cfg: TrainConfig = serde_json::from_str(&ckpt.config)
            .map_err(|e| TrainError::Mismatch(format!("the checkpoint's configuration is unreadable: {e}")))?;
        let stored: Identity = serde_json::from_str(&ckpt.identity)
            .map_err(|e| TrainError::Mismatch(format!("the checkpoint's run identity is unreadable: {e}")))?;
        if let Some(s) = how.steps {
            if s < state.step {
                return Err(TrainError::Mismatch(format!(
                    "--steps {s} is below the {} steps the run has already done",
                    state.step
                )));
            }
            cfg.steps = s;
        }
        cfg.validate()?;
        let identity = Identity::of(&forward, &source);
        if identity.model != stored.model {
            return Err(TrainError::Mismatch(
                "the model is not the one this run trained: its operations, settings or parameters differ".into(),
            ));
        }
        if identity.data_sha256 != stored.data_sha256 {
            return Err(TrainError::Mismatch(format!(
                "the data is not what this run trained on: it trained on {}, this is {}{}",
                stored.data,
                identity.data,
                if identity.data == stored.data { " (whose contents changed since)" } else { "" }
            )));
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
        check_data(&forward, &source, &cfg)?;
        let fork = !same_dir(how.from, how.into);
        let started = Instant::now();
        let programs = model.programs(&cfg, source.packs())?;
        let startup =
            Startup { initialised_s: None, programs_s: started.elapsed().as_secs_f64(), first_inputs_s: None };
        let step_params = programs.params();
        let run = if fork { RunDir::fresh(how.into, how.existing)? } else { RunDir::lock(how.from)? };
        let saved_at = Some(state.step);
        let mut t = Trainer {
            cfg,
            programs,
            step_params,
            source,
            state,
            identity,
            run,
            saved_at,
            on_device: false,
            device_ahead: false,
            group: None,
            startup,
        };
        t.carry_metrics(&how.from.join("metrics.jsonl"))?;
        if fork {
            t.save()?;
        }
        Ok(t)
    }

    /// Trains as one rank of a job with the other processes of `group`: as a data-parallel
    /// replica, on this rank's rows of every batch, the gradients summed over the replicas;
    /// as a tensor-parallel rank, on its parts of the parameters (the state stays whole on
    /// every rank: each step's updated parts are gathered). The programs must be planned
    /// for the groups' sizes.
    pub fn join(&mut self, mut group: crate::dist::Mesh) -> Result<(), TrainError> {
        let (dp, tp) = (self.programs.replicas, self.programs.tensor_parallel);
        if (group.data.size(), group.tensor.size()) != (dp, tp) {
            return Err(TrainError::Config(format!(
                "the step is planned for {dp} data-parallel × {tp} tensor-parallel ranks but the job has {} × {}",
                group.data.size(),
                group.tensor.size()
            )));
        }
        self.programs.step.connect(&mut group)?;
        self.group = Some(group);
        Ok(())
    }

    /// Tells the job's other ranks this one stops, and why (after an error, before exiting).
    pub fn abort(&mut self, reason: &str) {
        if let Some(group) = self.group.as_mut() {
            group.abort(reason);
        }
    }

    /// Whether this process writes the run's metrics and checkpoints: alone, or rank 0 of a
    /// job (every replica holds the same state).
    pub fn leads(&self) -> bool {
        self.group.as_ref().is_none_or(crate::dist::Mesh::leads)
    }

    /// A digest of what the run trains and how (model, data, configuration): the ranks of a
    /// job must agree on it.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let what = serde_json::to_vec(&(&self.identity, &self.cfg)).expect("the run's settings serialise");
        crate::weights::hex(&sha2::Sha256::digest(what))
    }

    /// What of the step runs as generated native code (`None` on the reference executor).
    pub fn codegen_summary(&self) -> Option<String> {
        self.programs.codegen_summary()
    }

    /// Where the run's start went.
    pub fn startup(&self) -> Startup {
        self.startup
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        self.run.path()
    }

    /// The step of the run directory's checkpoint, if one was written (or resumed from).
    pub fn saved_at(&self) -> Option<u64> {
        self.saved_at
    }

    fn metrics_path(&self) -> PathBuf {
        self.dir().join("metrics.jsonl")
    }

    fn write_metrics(&self, bytes: &[u8]) -> Result<(), TrainError> {
        let path = self.metrics_path();
        crate::atomic::write(&path, bytes).map_err(|error| TrainError::Io { path: path.display().to_string(), error })
    }

    /// Writes the metrics of `from` up to the checkpoint into this run's metrics, dropping
    /// lines of steps after it (written by a run that was stopped).
    fn carry_metrics(&self, from: &Path) -> Result<(), TrainError> {
        let text = match std::fs::read_to_string(from) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(TrainError::Io { path: from.display().to_string(), error }),
        };
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
        self.write_metrics(kept.as_bytes())
    }

    fn inputs(&self, b: &Batch) -> HashMap<String, Tensor<f32>> {
        let shape = vec![b.batch, b.seq];
        let as_f32 = |v: &[u32]| Tensor::new(shape.clone(), v.iter().map(|&x| x as f32).collect());
        let mut inputs = HashMap::from([
            ("ids".to_string(), as_f32(&b.ids)),
            ("targets".to_string(), as_f32(&b.targets)),
            ("loss_weights".to_string(), Tensor::new(shape.clone(), b.weights.iter().map(|&w| w as f32).collect())),
        ]);
        if let Some(positions) = &b.positions {
            inputs.insert(hyb_compiler::elaborate::packed::POSITIONS.to_string(), as_f32(positions));
        }
        inputs
    }

    /// The parameters and inputs (batch, learning rate, bias corrections, moments) of the
    /// next step, with its learning rate.
    pub fn step_inputs(&self) -> Result<(Values, Values, f64), TrainError> {
        self.next_step(true)
    }

    /// [`Trainer::step_inputs`]; the parameters and moments only `with_state`.
    fn next_step(&self, with_state: bool) -> Result<(Values, Values, f64), TrainError> {
        let cfg = &self.cfg;
        let b = self.source.batch(cfg.seed, Split::Train, self.state.step, cfg.batch, cfg.seq)?;
        let lr = learning_rate(cfg.schedule, cfg.lr, cfg.warmup, self.state.step, cfg.steps);
        let t = (self.state.applied + 1) as i32;
        let mut inputs = self.inputs(&self.rows_of(b));
        inputs.insert("lr".into(), Tensor::scalar(lr as f32));
        inputs.insert("bias_correction1".into(), Tensor::scalar((1.0 - cfg.beta1.powi(t)) as f32));
        inputs.insert("bias_correction2".into(), Tensor::scalar((1.0 - cfg.beta2.powi(t)) as f32));
        if !with_state {
            return Ok((Values::new(), inputs, lr));
        }
        for (k, m) in &self.state.m {
            inputs.insert(format!("m.{k}"), m.clone());
        }
        for (k, v) in &self.state.v {
            inputs.insert(format!("v.{k}"), v.clone());
        }
        Ok((self.params(), inputs, lr))
    }

    /// This replica's rows of a batch: rank `r` of `n` takes rows `r·B/n ..`, the loss
    /// weights those of the whole batch, so the replicas' sums add up to its step.
    fn rows_of(&self, b: Batch) -> Batch {
        let n = self.programs.replicas;
        let r = self.group.as_ref().map_or(0, |g| g.data.rank());
        if n <= 1 {
            return b;
        }
        let per = b.batch / n;
        let cut = |v: &[u32]| v[r * per * b.seq..(r + 1) * per * b.seq].to_vec();
        Batch {
            batch: per,
            seq: b.seq,
            ids: cut(&b.ids),
            targets: cut(&b.targets),
            weights: b.weights[r * per * b.seq..(r + 1) * per * b.seq].to_vec(),
            positions: b.positions.as_deref().map(cut),
        }
    }

    /// Whether a rank holds only parts of the state (tensor-parallel parts, ZeRO-1 runs).
    fn state_is_split(&self) -> bool {
        self.programs.tensor_parallel > 1 || self.programs.step.graph().params.iter().any(|p| p.moments.is_some())
    }

    /// Brings `state` up to date with the weights and moments a device holds.
    pub fn sync_state(&mut self) -> Result<(), TrainError> {
        if !self.device_ahead {
            return Ok(());
        }
        if let Some(updated) = self.programs.step.resident_state() {
            let mut updated = updated?;
            if let Some(group) = self.group.as_mut() {
                updated = whole_state(self.programs.step.graph(), self.programs.tensor_parallel, group, updated)?;
            }
            let mut it = updated.into_iter();
            for name in &self.step_params {
                self.state.params.insert(name.clone(), it.next().expect("a weight per parameter"));
                self.state.m.insert(name.clone(), it.next().expect("m per parameter"));
                self.state.v.insert(name.clone(), it.next().expect("v per parameter"));
            }
        }
        self.device_ahead = false;
        Ok(())
    }

    /// The parameters and the inputs of evaluation batch `i`.
    pub fn eval_inputs(&self, i: u64) -> Result<(Values, Values), TrainError> {
        let b = self.source.batch(self.cfg.seed, Split::Eval, i, self.cfg.batch, self.cfg.seq)?;
        Ok((self.params(), self.inputs(&b)))
    }

    fn params(&self) -> Values {
        self.state.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The programs the steps and evaluations run.
    pub fn programs(&self) -> &Programs {
        &self.programs
    }

    /// Runs one step; returns its report. Non-finite steps leave the state unchanged.
    pub fn step(&mut self) -> Result<StepReport, TrainError> {
        let started = Instant::now();
        // On a GPU the weights and moments stay there: copied in once, read back when needed.
        let fresh = !self.on_device;
        if fresh && self.group.is_none() && self.programs.step.on_gpu() {
            return self.first_step_on_gpu(started);
        }
        let (mut params, mut inputs, lr) = self.next_step(fresh)?;
        if self.startup.first_inputs_s.is_none() {
            self.startup.first_inputs_s = Some(started.elapsed().as_secs_f64());
        }
        let tp = self.programs.tensor_parallel;
        let graph = self.programs.step.graph();
        // A rank of a job runs on its parts of the weights and moments (and a GPU keeps them).
        if let Some(group) = self.group.as_ref() {
            if tp > 1 {
                (params, inputs) = tensor_parallel::local_step(graph, group.tensor.rank(), &params, &inputs);
            }
            inputs = zero::local_moments(graph, group.data.rank(), inputs);
        }
        if let Some(result) = self.programs.step.run_resident(&params, &inputs, fresh) {
            return self.resident_report(started, lr, result);
        }
        let out = match self.group.as_mut() {
            Some(group) => {
                // The loss and gradient norm are every rank's alike; the state is gathered.
                let mut out = self.programs.step.run_exchanging(&params, &inputs, group)?;
                let state = out.split_off(2);
                out.extend(whole_state(graph, tp, group, state)?);
                out
            }
            None if self.programs.replicas > 1 || tp > 1 => {
                return Err(TrainError::Config(
                    "a step of several ranks needs its process group (Trainer::join)".into(),
                ))
            }
            None => self.programs.step.run(&params, &inputs)?,
        };
        let mut out = out.into_iter();
        let loss = out.next().unwrap().data[0] as f64;
        let grad_norm = out.next().unwrap().data[0] as f64;
        let updated: Vec<Tensor<f32>> = out.collect();
        // A step is applied only if its loss, gradient, learning rate (as the step's test, which
        // then keeps the state as it was) and every updated tensor are finite.
        let finite = loss.is_finite()
            && grad_norm.is_finite()
            && (lr as f32).is_finite()
            && updated.iter().all(|t| t.data.iter().all(|x| x.is_finite()));
        if finite {
            let mut it = updated.into_iter();
            for name in &self.step_params {
                self.state.params.insert(name.clone(), it.next().unwrap());
                self.state.m.insert(name.clone(), it.next().unwrap());
                self.state.v.insert(name.clone(), it.next().unwrap());
            }
        }
        Ok(self.report(started, loss, grad_norm, lr, finite))
    }

    /// The first step of a single GPU, which copies the whole state in: the weights and
    /// moments are lent to it (moved out and back) rather than copied on the host first, a
    /// large model's seconds of its first step.
    fn first_step_on_gpu(&mut self, started: Instant) -> Result<StepReport, TrainError> {
        let (_, mut inputs, lr) = self.next_step(false)?;
        let params: Values = std::mem::take(&mut self.state.params).into_iter().collect();
        for (prefix, moments) in [("m.", std::mem::take(&mut self.state.m)), ("v.", std::mem::take(&mut self.state.v))]
        {
            inputs.extend(moments.into_iter().map(|(k, t)| (format!("{prefix}{k}"), t)));
        }
        self.startup.first_inputs_s = Some(started.elapsed().as_secs_f64());
        let result = self.programs.step.run_resident(&params, &inputs, true).expect("a GPU runner keeps its state");
        // Whatever the step did, the state comes back.
        self.state.params = params.into_iter().collect();
        for (k, t) in inputs {
            if let Some(name) = k.strip_prefix("m.") {
                self.state.m.insert(name.to_string(), t);
            } else if let Some(name) = k.strip_prefix("v.") {
                self.state.v.insert(name.to_string(), t);
            }
        }
        self.resident_report(started, lr, result)
    }

    /// Reports a step whose state the device keeps.
    fn resident_report(
        &mut self,
        started: Instant,
        lr: f64,
        result: Result<(f64, f64), hyb_compiler::reference::RunError>,
    ) -> Result<StepReport, TrainError> {
        let (loss, grad_norm) = result?;
        self.on_device = true;
        // As the step's own test, which kept the state as it was otherwise.
        let applied = loss.is_finite() && grad_norm.is_finite() && (lr as f32).is_finite();
        self.device_ahead |= applied;
        Ok(self.report(started, loss, grad_norm, lr, applied))
    }

    /// Counts a step that ran and reports it.
    fn report(&mut self, started: Instant, loss: f64, grad_norm: f64, lr: f64, applied: bool) -> StepReport {
        if applied {
            self.state.applied += 1;
        } else {
            self.state.skipped += 1;
        }
        self.state.step += 1;
        let tokens_per_s = (self.cfg.batch * self.cfg.seq) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        StepReport {
            step: self.state.step - 1,
            loss,
            grad_norm,
            lr,
            tokens_per_s,
            skipped: self.state.skipped,
            applied,
            eval_loss: None,
            eval_accuracy: None,
        }
    }

    /// Mean loss and accuracy (of the positions that carry loss) on held-out batches.
    pub fn evaluate(&mut self) -> Result<(f64, f64), TrainError> {
        self.sync_state()?;
        let params: HashMap<String, Tensor<f32>> =
            self.state.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (mut loss, mut hits, mut counted) = (0.0, 0usize, 0usize);
        for i in 0..self.cfg.eval_batches {
            let b = self.source.batch(self.cfg.seed, Split::Eval, i, self.cfg.batch, self.cfg.seq)?;
            let logits = self.programs.eval.run(&params, &self.inputs(&b))?.remove(0);
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

    pub fn save(&mut self) -> Result<(), TrainError> {
        self.sync_state()?;
        let config = serde_json::to_string(&self.cfg).expect("the configuration serialises");
        let identity = serde_json::to_string(&self.identity).expect("the identity serialises");
        checkpoint::save(&self.dir().join(checkpoint::FILE), &self.state, &config, &identity)?;
        self.saved_at = Some(self.state.step);
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
        let path = self.dir().join("loss.png");
        let chart = crate::plot::Chart {
            title: "loss",
            x_label: "step",
            y_label: "cross-entropy",
            log_x: false,
            log_y: false,
            scatter: false,
        };
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
                    if self.leads() {
                        self.log(&report)?;
                    }
                    self.sync_state()?;
                    return Err(TrainError::Diverged(bad_in_a_row));
                }
            }
            let done = self.state.step;
            if self.cfg.eval_every > 0 && (done.is_multiple_of(self.cfg.eval_every) || done == self.cfg.steps) {
                let (l, a) = self.evaluate()?;
                report.eval_loss = Some(l);
                report.eval_accuracy = Some(a);
            }
            if self.leads() {
                self.log(&report)?;
            }
            on_step(&report);
            let due = (self.cfg.save_every > 0 && done.is_multiple_of(self.cfg.save_every)) || done == self.cfg.steps;
            if bad_in_a_row == 0 && due {
                // Parts of the state on GPUs are gathered by every rank of their group.
                if self.state_is_split() {
                    self.sync_state()?;
                }
                if self.leads() {
                    self.save()?;
                }
            }
        }
        self.sync_state()
    }
}
