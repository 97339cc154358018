//! `hyb train`: argument handling and the progress display around the runtime's trainer.

use anyhow::{bail, Context, Result};
use hyb_compiler::elaborate::elaborate;
use hyb_dsl::expand::model::Expanded;
use hyb_runtime::train::data::{Mqar, Source};
use hyb_runtime::train::schedule::Schedule;
use hyb_runtime::train::{TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TrainArgs {
    pub file: PathBuf,
    #[arg(long)]
    pub model: Option<String>,
    /// `mqar` (synthetic associative recall), a UTF-8 text file (byte-level), or a binary
    /// token file (with --token-bytes 2 or 4).
    #[arg(long, default_value = "mqar")]
    data: String,
    /// Tokenize the --data text with this Hugging Face tokenizer.json (default: bytes).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Read --data as little-endian token ids of this many bytes.
    #[arg(long)]
    token_bytes: Option<usize>,
    /// Key-value pairs per MQAR sequence.
    #[arg(long, default_value_t = 8)]
    mqar_pairs: usize,
    #[arg(long, default_value_t = 200)]
    steps: u64,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    seq: usize,
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// cosine, wsd or constant.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    #[arg(long, default_value_t = 4)]
    eval_batches: u64,
    #[arg(long, default_value_t = 50)]
    save_every: u64,
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Also decay embeddings, norms, biases, A_log, D and dt_bias (default: matrices only).
    #[arg(long)]
    decay_all: bool,
    /// µP base width: widths are scaled relative to it (default: the model's `base_width`
    /// setting, else no µP scaling).
    #[arg(long)]
    base_width: Option<u64>,
    /// Run directory: checkpoint.safetensors, metrics.jsonl.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Continue the run in this directory from its checkpoint (--steps may extend it).
    #[arg(long)]
    resume: Option<PathBuf>,
}

fn schedule(name: &str) -> Result<Schedule> {
    Ok(match name {
        "cosine" => Schedule::Cosine { min_ratio: 0.1 },
        "wsd" => Schedule::Wsd { decay_fraction: 0.2, min_ratio: 0.0 },
        "constant" => Schedule::Constant,
        other => bail!("unknown schedule `{other}` (cosine, wsd or constant)"),
    })
}

pub fn run(args: &TrainArgs, model: &Expanded) -> Result<()> {
    let source = match (args.data.as_str(), args.token_bytes, &args.tokenizer) {
        ("mqar", _, _) => Source::Mqar(Mqar { vocab: model.summary.vocab as usize, pairs: args.mqar_pairs }),
        (_, Some(_), Some(_)) => bail!("--token-bytes reads pre-tokenized ids; it cannot be combined with --tokenizer"),
        (path, Some(width), None) => Source::token_file(path.as_ref(), width)?,
        (path, None, Some(tok)) => Source::tokenized_text(path.as_ref(), tok)?,
        (path, None, None) => Source::text(path.as_ref())?,
    };
    let forward = elaborate(&model.trace);
    let mut trainer = match &args.resume {
        Some(dir) => Trainer::resume(forward, source, dir, Some(args.steps))
            .with_context(|| format!("cannot resume {}", dir.display()))?,
        None => {
            let cfg = TrainConfig {
                steps: args.steps,
                batch: args.batch,
                seq: args.seq,
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
                width_mult: args
                    .base_width
                    .or(model.summary.base_width)
                    .map_or(1.0, |b| model.summary.d as f64 / b as f64),
            };
            Trainer::new(forward, source, cfg, &args.out)?
        }
    };
    let total = trainer.config().steps;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}").expect("valid template"),
    );
    bar.set_position(trainer.state.step);
    let mut last_eval = String::new();
    let result = trainer.run(&mut |r| {
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
            "loss {:.4} lr {:.2e} {:.0} tok/s skipped {}{last_eval}",
            r.loss, r.lr, r.tokens_per_s, r.skipped
        ));
        bar.inc(1);
    });
    bar.finish();
    result?;
    let dir = args.resume.as_ref().unwrap_or(&args.out);
    println!("checkpoint: {}", dir.join("checkpoint.safetensors").display());
    println!("metrics:    {}", dir.join("metrics.jsonl").display());
    println!("loss curve: {}", trainer.plot_losses()?.display());
    Ok(())
}
