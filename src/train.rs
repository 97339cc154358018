//! `hyb train`: argument handling and the progress display around the runtime's trainer.
//!
//! A fresh run needs an empty `--out` (or `--force`). `--resume DIR` continues the run in
//! DIR, or forks it into `--out` when that names another directory; flags that contradict
//! what the run stored are an error naming them, never silently dropped.

use crate::values::{at_least_one, non_negative_finite, parse_set, positive_finite, token_width};
use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use hyb_compiler::artifact::Artifact;
use hyb_compiler::elaborate::elaborate;
use hyb_dsl::expand::model::Expanded;
use hyb_dsl::variant::Set;
use hyb_runtime::dist::{Mesh, TcpGroup, World};
use hyb_runtime::train::data::{DataSpec, Packing};
use hyb_runtime::train::run_dir::Existing;
use hyb_runtime::train::schedule::Schedule;
use hyb_runtime::train::step::{Executor, GpuPrecision, Model, Placement, Planning};
use hyb_runtime::train::{checkpoint, Resume, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Clone)]
pub struct TrainArgs {
    /// A `.hyb` model, or a training-step artifact from `hyb compile` (`.hybc`).
    pub file: PathBuf,
    #[arg(long)]
    pub model: Option<String>,
    /// What runs the steps: the compiled program (what `hyb explain` shows) on the CPU
    /// executor, or the reference interpreter on the unoptimised training graph.
    #[arg(long, value_enum, default_value_t = crate::logits::Executor::Compiled)]
    pub executor: crate::logits::Executor,
    /// Where the compiled program runs [default: the GPU when one is present, else the CPU].
    #[arg(long, value_enum)]
    pub device: Option<DeviceFlag>,
    /// Instead of training: run every launch of the first step and of an evaluation on the
    /// GPU against the CPU executor, on the same inputs, outputs poisoned with NaN; print
    /// each launch that differs and a summary. Writes nothing.
    #[arg(long, conflicts_with_all = ["resume", "device"])]
    pub check_gpu: bool,
    /// What GPU programs store: bf16 mixed precision (bf16 activations and weight copies,
    /// f32 master weights, moments, gradients and statistics), or f32 throughout. The CPU
    /// computes in f32 [default: bf16 on a GPU].
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionFlag>,
    /// On a GPU, after training: time every launch of one more step (undone afterwards),
    /// print where the step's time goes and write it to profile.json in the run directory.
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub plan: crate::planning::PlanArgs,
    /// `mqar` (synthetic associative recall), a UTF-8 text file (byte-level), or a binary
    /// token file (with --token-bytes 2 or 4).
    #[arg(long, default_value = "mqar")]
    data: String,
    /// Tokenize the --data text with this Hugging Face tokenizer.json (default: bytes).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Read --data as little-endian token ids of this many bytes (2 or 4).
    #[arg(long, value_parser = token_width)]
    token_bytes: Option<usize>,
    /// Key-value pairs per MQAR sequence.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    mqar_pairs: usize,
    /// Pack whole documents into rows, attention, conv and scan confined to each document:
    /// `eod=ID` (a token id ends each document) or `lengths=FILE` (document lengths in
    /// tokens, whitespace-separated, summing to the data's length).
    #[arg(long, value_parser = packing, value_name = "eod=ID|lengths=FILE")]
    pack: Option<Packing>,
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Sequences per step [default: 16, or the artifact's].
    #[arg(long, value_parser = at_least_one)]
    batch: Option<usize>,
    /// Tokens per sequence [default: 64, or the artifact's].
    #[arg(long, value_parser = at_least_one)]
    seq: Option<usize>,
    #[arg(long, default_value_t = 3e-3, value_parser = positive_finite)]
    lr: f64,
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    #[arg(long, default_value = "cosine", value_parser = ["cosine", "wsd", "constant"])]
    schedule: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate every this many steps (0: never).
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    eval_batches: u64,
    /// Checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 50)]
    save_every: u64,
    #[arg(long, default_value_t = 0.1, value_parser = non_negative_finite)]
    weight_decay: f64,
    /// Also decay embeddings, norms, biases, A_log, D and dt_bias (default: matrices only).
    #[arg(long)]
    decay_all: bool,
    /// µP base width: widths are scaled relative to it (default: the model's `base_width`
    /// setting, else no µP scaling).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    base_width: Option<u64>,
    /// Run directory: checkpoint.safetensors, metrics.jsonl [default: runs/latest]. It must
    /// be empty or new (see --force). With --resume, another directory receives a fork of
    /// the resumed run.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start over in a --out directory that holds a run, deleting its checkpoint and metrics.
    #[arg(long)]
    force: bool,
    /// Continue the run in this directory from its checkpoint (--steps may extend it).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start this many worker processes, as torchrun does: data-parallel replicas that
    /// split every batch (--batch stays the whole batch, so results do not depend on the
    /// number), their gradients summed. Workers also start from torchrun's or Slurm's
    /// environment (RANK, WORLD_SIZE, … or SLURM_PROCID, SLURM_NTASKS, …).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub nproc_per_node: usize,
    /// Tensor-parallel ranks: the job's ranks run the program the compiler's sharding plan
    /// chose (`hyb explain --tp N` shows it), each on its parts of the parameters. Needs a
    /// multiple of N ranks (--nproc-per-node): each N of them form one data-parallel replica.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub tp: usize,
    /// ZeRO-1: each data-parallel replica keeps the optimizer moments of its 1/N of every
    /// parameter (gradients reduce-scattered, weights all-gathered), so the moments take
    /// N times less memory per rank; the step is the same.
    #[arg(long)]
    pub zero: bool,
    /// Replace a model setting for this run, e.g. `--set heads=8`, `--set
    /// 'layers=pattern("(M{3}H){2}")'` or `--set layers[0..2].ssm_heads=4` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
    pub sets: Vec<Set>,
    /// Seconds a rank waits for the others, at the rendezvous and at every collective: a
    /// rank that dies or hangs ends the job on every rank within it.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub rendezvous_timeout: u64,
}

const DEFAULT_OUT: &str = "runs/latest";

/// `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceFlag {
    Cpu,
    /// The first GPU, through the CUDA executor.
    Cuda,
}

/// `--precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionFlag {
    Bf16,
    F32,
}

/// Where the run's compiled programs go.
fn placement(args: &TrainArgs) -> Result<Placement> {
    let placement = match (args.device, args.executor) {
        (_, _) if args.check_gpu => Placement::Cpu,
        (Some(DeviceFlag::Cuda), crate::logits::Executor::Reference) => {
            bail!("the reference executor runs on the CPU; leave out --device cuda or --executor reference")
        }
        (Some(DeviceFlag::Cuda), _) => Placement::Cuda(0, GpuPrecision::Mixed),
        (Some(DeviceFlag::Cpu), _) | (None, crate::logits::Executor::Reference) => Placement::Cpu,
        (None, _) => Placement::best(),
    };
    Ok(match (placement, args.precision) {
        (Placement::Cuda(ordinal, _), Some(PrecisionFlag::F32)) => Placement::Cuda(ordinal, GpuPrecision::F32),
        (Placement::Cpu, Some(PrecisionFlag::Bf16)) if args.check_gpu => {
            bail!("--check-gpu compares the GPU with the CPU launch by launch, in float32; leave out --precision bf16")
        }
        (Placement::Cpu, Some(PrecisionFlag::Bf16)) => {
            bail!("the CPU executor computes in float32; --precision bf16 needs a GPU (--device cuda)")
        }
        (p, _) => p,
    })
}

fn schedule(name: &str) -> Result<Schedule> {
    Ok(match name {
        "cosine" => Schedule::Cosine { min_ratio: 0.1 },
        "wsd" => Schedule::Wsd { decay_fraction: 0.2, min_ratio: 0.0 },
        "constant" => Schedule::Constant,
        other => bail!("unknown schedule `{other}` (cosine, wsd or constant)"),
    })
}

/// What is trained: a checked model, or a compiled training step.
pub enum Subject<'a> {
    Model(&'a Expanded),
    Artifact(Box<Artifact>),
}

impl Subject<'_> {
    /// The batch and sequence length unless the flags give them.
    fn sizes(&self) -> (usize, usize) {
        match self {
            Subject::Model(_) => (16, 64),
            Subject::Artifact(a) => (a.compiled.batch, a.compiled.seq),
        }
    }

    fn width_mult(&self, args: &TrainArgs) -> Result<f64> {
        match self {
            Subject::Model(m) => {
                Ok(args.base_width.or(m.summary.base_width).map_or(1.0, |b| m.summary.d as f64 / b as f64))
            }
            Subject::Artifact(_) if args.base_width.is_some() => {
                bail!("--base-width is compiled into the artifact; compile it again to change µP's base width")
            }
            Subject::Artifact(a) => Ok(a.compiled.training.as_ref().map_or(1.0, |t| t.width_mult)),
        }
    }

    /// The model's vocabulary (what byte- and token-level data must fit).
    fn vocab(&self) -> usize {
        match self {
            Subject::Model(m) => m.summary.vocab as usize,
            Subject::Artifact(a) => {
                a.model.params.iter().find(|p| p.name == "embed_tokens.weight").map_or(0, |p| p.shape[0])
            }
        }
    }

    /// The model to train, alone or as one rank of the job `world`: tensor-parallel ranks
    /// with `--tp`, else data-parallel replicas (each on GPU `LOCAL_RANK`).
    fn into_model(self, args: &TrainArgs, world: Option<&World>) -> Result<Model> {
        let ranks = world.map_or(1, |w| w.size);
        if args.tp > 1 && ranks == 1 {
            bail!("--tp {} needs {} ranks: add --nproc-per-node {}", args.tp, args.tp, args.tp);
        }
        if !ranks.is_multiple_of(args.tp) {
            bail!("--tp {} does not divide the job's {ranks} ranks into tensor-parallel groups", args.tp);
        }
        let (replicas, tp) = (ranks / args.tp, args.tp);
        if args.zero && world.is_none() {
            bail!("--zero shards the optimizer state over data-parallel ranks: add --nproc-per-node N");
        }
        Ok(match self {
            Subject::Model(m) => {
                let executor = match args.executor {
                    crate::logits::Executor::Compiled => Executor::Compiled,
                    crate::logits::Executor::Reference => Executor::Reference,
                };
                let placement = match (placement(args)?, world) {
                    (Placement::Cuda(_, precision), Some(w)) => Placement::Cuda(w.local_rank, precision),
                    (p, _) => p,
                };
                let planning = Planning {
                    executor,
                    placement,
                    recompute: args.plan.recompute(),
                    device_memory: args.plan.device_memory,
                    data_parallel: (world.is_some() || replicas > 1).then_some(replicas),
                    zero: args.zero,
                    tensor_parallel: (tp > 1).then_some(tp),
                };
                Model::Graph { forward: elaborate(&m.trace), planning }
            }
            Subject::Artifact(_) if ranks > 1 => {
                bail!("an artifact is compiled for one process; train the .hyb model to run data-parallel ranks")
            }
            Subject::Artifact(_) if args.executor == crate::logits::Executor::Reference => {
                bail!("an artifact is a compiled program; the reference executor runs a `.hyb` model")
            }
            Subject::Artifact(_) if args.plan.device_memory.is_some() => {
                bail!("--device-memory plans a model; an artifact is planned already (compile it with --device-memory)")
            }
            Subject::Artifact(a) => Model::Artifact(a, placement(args)?),
        })
    }
}

fn config(args: &TrainArgs, subject: &Subject) -> Result<TrainConfig> {
    let (batch, seq) = subject.sizes();
    Ok(TrainConfig {
        steps: args.steps,
        batch: args.batch.unwrap_or(batch),
        seq: args.seq.unwrap_or(seq),
        lr: args.lr,
        warmup: args.warmup,
        schedule: schedule(&args.schedule)?,
        seed: args.seed,
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        save_every: args.save_every,
        max_bad_steps: 5,
        beta1: 0.9,
        beta2: 0.95,
        weight_decay: args.weight_decay,
        decay_all: args.decay_all,
        clip: Some(1.0),
        width_mult: subject.width_mult(args)?,
    })
}

/// The data the flags name.
fn data_spec(args: &TrainArgs, explicit: &dyn Fn(&str) -> bool) -> Result<DataSpec> {
    let file = |p: &str| PathBuf::from(p);
    let spec = match (args.data.as_str(), args.token_bytes, &args.tokenizer) {
        ("mqar", None, None) => DataSpec::Mqar { pairs: args.mqar_pairs },
        ("mqar", _, _) => bail!("--token-bytes and --tokenizer read a --data file; MQAR data is generated"),
        (_, Some(_), Some(_)) => bail!("--token-bytes reads pre-tokenized ids; it cannot be combined with --tokenizer"),
        (path, Some(width), None) => DataSpec::TokenFile { path: file(path), token_bytes: width },
        (path, None, Some(tok)) => DataSpec::TokenizedText { path: file(path), tokenizer: tok.clone() },
        (path, None, None) => DataSpec::Text { path: file(path) },
    };
    if explicit("mqar_pairs") && !matches!(spec, DataSpec::Mqar { .. }) {
        bail!("--mqar-pairs applies to --data mqar only");
    }
    let spec = match &args.pack {
        Some(_) if matches!(spec, DataSpec::Mqar { .. }) => {
            bail!("--pack packs the documents of a --data file; MQAR sequences are generated one per row")
        }
        Some(documents) => DataSpec::Packed { of: Box::new(spec), documents: documents.clone() },
        None => spec,
    };
    Ok(spec.absolute()?)
}

/// `--pack`'s value: `eod=ID` or `lengths=FILE`.
fn packing(value: &str) -> Result<Packing, String> {
    match value.split_once('=') {
        Some(("eod", id)) => id
            .parse()
            .map(|id| Packing::Eod { id })
            .map_err(|_| format!("eod=ID takes a token id (a whole number ≥ 0), not `{id}`")),
        Some(("lengths", path)) if !path.is_empty() => Ok(Packing::Lengths { path: PathBuf::from(path) }),
        _ => Err(format!("expected eod=ID or lengths=FILE, not `{value}`")),
    }
}

/// The flags given with `--resume` whose values differ from the stored run's.
fn conflicts(
    args: &TrainArgs,
    subject: &Subject,
    stored: &TrainConfig,
    data: &DataSpec,
    explicit: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let given = config(args, subject)?;
    let mut out = Vec::new();
    let mut check = |id: &str, same: bool, given: String, stored: String| {
        if explicit(id) && !same {
            out.push(format!("--{} {given} (the run's is {stored})", id.replace('_', "-")));
        }
    };
    macro_rules! field {
        ($id:literal, $f:ident) => {
            check($id, given.$f == stored.$f, format!("{:?}", given.$f), format!("{:?}", stored.$f))
        };
    }
    field!("batch", batch);
    field!("seq", seq);
    field!("lr", lr);
    field!("warmup", warmup);
    field!("schedule", schedule);
    field!("seed", seed);
    field!("eval_every", eval_every);
    field!("eval_batches", eval_batches);
    field!("save_every", save_every);
    field!("weight_decay", weight_decay);
    field!("decay_all", decay_all);
    check(
        "base_width",
        given.width_mult == stored.width_mult,
        format!("{:?} (width multiplier {})", args.base_width.unwrap_or_default(), given.width_mult),
        format!("width multiplier {}", stored.width_mult),
    );
    if ["data", "tokenizer", "token_bytes", "mqar_pairs", "pack"].iter().any(|id| explicit(id)) {
        let given = data_spec(args, explicit)?;
        if &given != data {
            out.push(format!("--data: {given} (the run trained on {data})"));
        }
    }
    Ok(out)
}

fn existing(force: bool) -> Existing {
    if force {
        Existing::Replace
    } else {
        Existing::Refuse
    }
}

/// The trainer for a fresh or resumed run, after every check: alone, or as one rank of
/// the job `world`.
fn trainer(args: &TrainArgs, subject: Subject, given: &ArgMatches, world: Option<&World>) -> Result<Trainer> {
    let explicit = |id: &str| given.value_source(id) == Some(ValueSource::CommandLine);
    let vocab = subject.vocab();
    let Some(from) = &args.resume else {
        let source = data_spec(args, &explicit)?.open(vocab)?;
        let out = args.out.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_OUT));
        let cfg = config(args, &subject)?;
        return Ok(Trainer::new(subject.into_model(args, world)?, source, cfg, &out, existing(args.force))?);
    };
    let cannot = || format!("cannot resume {}", from.display());
    let (stored, identity) = Trainer::stored(from).with_context(cannot)?;
    let differ = conflicts(args, &subject, &stored, &identity.data, &explicit)?;
    if !differ.is_empty() {
        bail!(
            "{}: {} contradict{} the run's stored settings; leave {} out to continue with the run's values",
            cannot(),
            differ.join(", "),
            if differ.len() == 1 { "s" } else { "" },
            if differ.len() == 1 { "it" } else { "them" }
        );
    }
    let source = identity.data.open(vocab).with_context(cannot)?;
    let how = Resume {
        from,
        into: args.out.as_deref().unwrap_or(from),
        existing: existing(args.force),
        steps: explicit("steps").then_some(args.steps),
    };
    Trainer::resume(subject.into_model(args, world)?, source, &how).with_context(cannot)
}

pub fn run(args: &TrainArgs, subject: Subject, given: &ArgMatches) -> Result<()> {
    if args.check_gpu {
        if args.executor == crate::logits::Executor::Reference {
            bail!("--check-gpu compares the GPU with the compiled program on the CPU; leave out --executor reference");
        }
        let device = hyb_runtime::cuda::Device::open(0)?;
        // The check writes nothing: the run directory it needs is a temporary one.
        let scratch = tempfile::tempdir().context("cannot make a temporary directory")?;
        let mut quiet = TrainArgs { out: Some(scratch.path().join("run")), ..args.clone() };
        quiet.force = false;
        let trainer = trainer(&quiet, subject, given, None)?;
        return crate::gpu_check::run(device, &trainer);
    }
    // A launched job runs as one, even of one rank (its collectives then go through NCCL
    // or the TCP group all the same).
    if let Some(world) = World::from_env()? {
        return replica(args, subject, given, &world);
    }
    if args.profile && (placement(args)? == Placement::Cpu || args.executor == crate::logits::Executor::Reference) {
        bail!("--profile times launches on a GPU; this run is on the CPU");
    }
    let mut trainer = trainer(args, subject, given, None)?;
    if let Some(line) = trainer.codegen_summary() {
        println!("{line}");
    }
    print_startup(&trainer);
    let total = trainer.config().steps;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}").expect("valid template"),
    );
    bar.set_position(trainer.state.step);
    let mut last_eval = String::new();
    let gpu = trainer.programs().step.on_gpu();
    // MFU against the H200's dense bf16 peak, from the cost model's FLOPs of a step.
    let flops = trainer.programs().step.flops();
    let peak = hyb_compiler::cost::Machine::h200().peak_flops;
    let tokens = (trainer.config().batch * trainer.config().seq) as f64;
    let mut first = true;
    let result = trainer.run(&mut |r| {
        if std::mem::take(&mut first) {
            let since = crate::STARTED.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
            bar.suspend(|| println!("first step done {since:.1} s after the command"));
        }
        let mfu =
            if gpu { format!(" MFU {:.2}%", 100.0 * flops * r.tokens_per_s / tokens / peak) } else { String::new() };
        if let (Some(l), Some(a)) = (r.eval_loss, r.eval_accuracy) {
            last_eval = format!(" | eval loss {l:.4} acc {:.1}%", 100.0 * a);
            bar.println(format!(
                "step {:>6}  loss {:.4}  eval loss {l:.4}  eval accuracy {:.2}%",
                r.step + 1,
                r.loss,
                100.0 * a
            ));
        }
        bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s{mfu} skipped {}{last_eval}",
            r.loss, r.lr, r.tokens_per_s, r.skipped
        ));
        bar.inc(1);
    });
    bar.finish();
    result?;
    print_gpu_run(&trainer);
    if args.profile {
        profile(&trainer, flops, peak)?;
    }
    print_outputs(&trainer, trainer.dir());
    Ok(())
}

/// One rank of a data-parallel job: rank 0 trains as a single process would, showing the
/// progress and writing the run directory; the others train alike, silently, with their
/// run directory in a temporary folder (resuming, as a fork of rank 0's run).
fn replica(args: &TrainArgs, subject: Subject, given: &ArgMatches, world: &World) -> Result<()> {
    if args.profile {
        bail!("--profile times one process's launches on a GPU; run it without data-parallel ranks");
    }
    let scratch = tempfile::tempdir().context("cannot make a temporary directory")?;
    let args = match world.rank {
        0 => args.clone(),
        _ => TrainArgs { out: Some(scratch.path().join("run")), force: false, ..args.clone() },
    };
    let rank = world.rank;
    let mut trainer = trainer(&args, subject, given, Some(world)).with_context(|| format!("rank {rank}"))?;
    let timeout = Duration::from_secs(args.rendezvous_timeout);
    let job = trainer.fingerprint();
    let (group, _) = TcpGroup::join(world, &job, b"", timeout).with_context(|| format!("rank {rank}"))?;
    let mesh = Mesh::new(group, args.tp, &job).with_context(|| format!("rank {rank}"))?;
    trainer.join(mesh)?;
    if rank != 0 {
        return trainer.run(&mut |_| {}).map_err(|e| {
            trainer.abort(&e.to_string());
            anyhow::Error::from(e).context(format!("rank {rank}"))
        });
    }
    let replicas = world.size / args.tp;
    println!(
        "rank 0 of {} ranks: {replicas} data-parallel × {} tensor-parallel, {} rows of each batch of {} per replica",
        world.size,
        args.tp,
        trainer.config().batch / replicas,
        trainer.config().batch
    );
    if let Some(line) = trainer.codegen_summary() {
        println!("{line}");
    }
    let bar = ProgressBar::new(trainer.config().steps);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}").expect("valid template"),
    );
    bar.set_position(trainer.state.step);
    let result = trainer.run(&mut |r| {
        bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s skipped {}",
            r.loss, r.lr, r.tokens_per_s, r.skipped
        ));
        bar.inc(1);
    });
    bar.finish();
    if let Err(e) = result {
        trainer.abort(&e.to_string());
        return Err(anyhow::Error::from(e).context("rank 0"));
    }
    print_outputs(&trainer, trainer.dir());
    Ok(())
}

/// The GPU memory the run held at most (before any profiling run, which copies the state
/// aside).
fn print_gpu_run(trainer: &Trainer) {
    let programs = trainer.programs();
    if let (Some(run), Some(inputs)) = (programs.first_run_summary(), trainer.startup().first_inputs_s) {
        println!("first step: inputs built in {inputs:.2} s, {run}");
    }
    if let (Some(peak), Some(arenas)) = (programs.device_peak_bytes(), programs.device_bytes()) {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        println!(
            "device memory: at most {:.2} GiB held at once ({:.2} GiB in the programs' arenas)",
            gib(peak),
            gib(arenas)
        );
    }
}

/// Where the start went, before the first step's own time.
fn print_startup(trainer: &Trainer) {
    let s = trainer.startup();
    let init = s.initialised_s.map_or(String::new(), |t| format!("parameters initialised in {t:.1} s, "));
    println!("start: {init}programs compiled and prepared in {:.1} s", s.programs_s);
}

/// A layer's share of the step (its forward, backward and update): the spread over the
/// layers, so one layer's time compares with a one-layer benchmark.
fn print_layers(times: &[hyb_runtime::train::step::LaunchTime]) {
    let mut layers: std::collections::BTreeMap<u32, f64> = std::collections::BTreeMap::new();
    let mut outside = 0.0;
    for t in times {
        match t.layer {
            Some(l) => *layers.entry(l).or_default() += t.ms,
            None => outside += t.ms,
        }
    }
    let mut each: Vec<f64> = layers.into_values().collect();
    if each.is_empty() {
        return;
    }
    each.sort_by(f64::total_cmp);
    println!(
        "per layer: median {:.3} ms (min {:.3}, max {:.3}) over {} layers; outside the layers {outside:.3} ms",
        each[each.len() / 2],
        each[0],
        each[each.len() - 1],
        each.len()
    );
}

/// Times every launch of one step on the GPU and prints where the time goes, by what runs.
fn profile(trainer: &Trainer, flops: f64, peak: f64) -> Result<()> {
    let Some(times) = trainer.programs().step.profile() else {
        bail!("--profile times launches on a GPU; this run is on the CPU");
    };
    let times = times?;
    let total: f64 = times.iter().map(|t| t.ms).sum();
    let mut by: std::collections::BTreeMap<&str, (usize, f64)> = std::collections::BTreeMap::new();
    for t in &times {
        let e = by.entry(t.what.as_str()).or_default();
        e.0 += 1;
        e.1 += t.ms;
    }
    let mut rows: Vec<(&str, usize, f64)> = by.into_iter().map(|(w, (n, t))| (w, n, t)).collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    println!(
        "step profile: {} launches, {total:.3} ms of kernels ({:.2}% MFU at {:.0} TFLOP/s)",
        times.len(),
        100.0 * flops / (total * 1e-3) / peak,
        peak / 1e12
    );
    println!("{:<28} {:>8} {:>10} {:>7}", "what", "launches", "ms", "share");
    for (what, n, t) in &rows {
        println!("{what:<28} {n:>8} {t:>10.3} {:>6.1}%", 100.0 * t / total);
    }
    print_layers(&times);
    let mut slowest: Vec<(usize, &hyb_runtime::train::step::LaunchTime)> = times.iter().enumerate().collect();
    slowest.sort_by(|a, b| b.1.ms.total_cmp(&a.1.ms));
    println!("slowest launches:");
    for (i, t) in slowest.iter().take(8) {
        println!("  #{i:<5} {:>10.3} ms  {}: {}", t.ms, t.what, t.detail);
    }
    let json = serde_json::json!({
        "total_ms": total,
        "flops": flops,
        "launches": times
            .iter()
            .map(|t| serde_json::json!({"what": t.what, "detail": t.detail, "layer": t.layer, "ms": t.ms}))
            .collect::<Vec<_>>(),
    });
    let path = trainer.dir().join("profile.json");
    hyb_runtime::atomic::write(&path, serde_json::to_string_pretty(&json)?.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("profile:    {}", path.display());
    Ok(())
}

/// Names the files the run left, and only those.
/// Writes `summary.json` in the run directory: the memory the run held (the process's
/// peak resident memory; the GPU memory of its programs), which `hyb sweep` reports.
fn write_summary(trainer: &Trainer, dir: &Path) -> Result<()> {
    let summary = serde_json::json!({
        "steps": trainer.state.step,
        "peak_host_bytes": peak_resident_bytes(),
        "device_bytes": trainer.programs().device_bytes(),
    });
    let path = dir.join("summary.json");
    hyb_runtime::atomic::write(&path, summary.to_string().as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The process's peak resident memory (Linux's `VmHWM`), if the system says.
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn print_outputs(trainer: &Trainer, dir: &Path) {
    if let Err(e) = write_summary(trainer, dir) {
        eprintln!("warning: {e:#}");
    }
    match trainer.saved_at() {
        Some(step) => println!("checkpoint: {} (step {step})", dir.join(checkpoint::FILE).display()),
        None => println!("checkpoint: none written (the steps were non-finite and skipped)"),
    }
    println!("metrics:    {}", dir.join("metrics.jsonl").display());
    // The curve is a convenience: a run without one finite loss has nothing to draw.
    match trainer.plot_losses() {
        Ok(path) => println!("loss curve: {}", path.display()),
        Err(e) => eprintln!("warning: {e}"),
    }
}
