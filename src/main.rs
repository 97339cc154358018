//! The `hyb` command line.

use anyhow::{bail, Context, Result};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use hyb_compiler::check::{check_paths, Checked};
use hyb_dsl::expand::model::ModelSummary;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod compile;
mod explain;
mod generate;
mod gpu_check;
mod launch;
mod logits;
mod planning;
mod sweep;
mod train;
mod values;

#[derive(Parser)]
#[command(name = "hyb", version, about = "Compiler and runtime for hybrid attention/SSM models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check .hyb files: syntax, names, types and shapes of every block and model.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Rewrite .hyb files in the canonical layout.
    Fmt {
        /// Only report files whose layout differs; exit 1 if any does.
        #[arg(long)]
        check: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a model's layer table: kinds, head counts and parameter counts.
    Show {
        file: PathBuf,
        /// The model to show (default: the only model in the file).
        #[arg(long)]
        model: Option<String>,
    },
    /// Convert a Hugging Face Falcon-H1 checkpoint folder into a .hyb model and hyb weights.
    Import {
        /// Folder with config.json and model.safetensors.
        hf_dir: PathBuf,
        /// Output folder for NAME.hyb and NAME.safetensors.
        #[arg(short, long)]
        out: PathBuf,
        /// Model name (default: derived from the folder name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Write a model and its weights as a Hugging Face Falcon-H1 checkpoint folder.
    Export {
        file: PathBuf,
        /// A weights file, a training checkpoint, or a run directory (its checkpoint).
        #[arg(long)]
        weights: PathBuf,
        #[arg(short, long)]
        out: PathBuf,
        #[arg(long)]
        model: Option<String>,
    },
    /// Train a model, or a compiled training step, on the CPU (the compiled program, float32).
    Train(train::TrainArgs),
    /// Explore variants of a model: a grid of settings, each point checked, predicted
    /// (parameters, FLOPs, step time and memory) and trained briefly, side by side.
    Sweep(sweep::SweepArgs),
    /// µP coordinate check: train a few steps at several widths (the model's `d`) under µP
    /// and under standard parametrisation; print and plot mean |activation| per layer.
    MupCheck {
        file: PathBuf,
        #[arg(long)]
        model: Option<String>,
        /// Widths (values of the model's `d`), comma-separated; settings written in terms of
        /// `d` scale with it.
        #[arg(long, value_delimiter = ',', default_value = "32,64,128,256", value_parser = clap::value_parser!(u64).range(1..))]
        widths: Vec<u64>,
        /// µP base width (default: the smallest width).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        base_width: Option<u64>,
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        #[arg(long, default_value_t = 1e-2, value_parser = values::positive_finite)]
        lr: f64,
        #[arg(long, default_value = "runs/mup_check")]
        out: PathBuf,
    },
    /// Compile a model's training step (or forward pass) and show what the compiler chose:
    /// kernels with predicted times, rewrites, tensor-parallel sharding of every parameter.
    /// Given a `.hybc` artifact, show what it holds.
    Explain(explain::ExplainArgs),
    /// Compile a model's training step (or forward pass) into an artifact (`-o model.hybc`)
    /// that runs without its source.
    Compile(compile::CompileArgs),
    /// Run the forward pass with the reference interpreter and print the logits.
    Logits {
        file: PathBuf,
        #[arg(long)]
        weights: PathBuf,
        /// Token ids of one sequence, comma-separated; repeat for a batch.
        #[arg(long = "ids", required = true, action = clap::ArgAction::Append)]
        ids: Vec<String>,
        /// Print `{"logits": [[[…]]]}` shaped [batch, T, vocab].
        #[arg(long)]
        json: bool,
        /// Arithmetic precision of the interpreter.
        #[arg(long, default_value = "f64", value_parser = ["f64", "f32"])]
        precision: String,
        /// What runs the forward pass: the compiled program (what `hyb explain` shows) or
        /// the reference interpreter on the unoptimised graph.
        #[arg(long, value_enum, default_value_t = logits::Executor::Compiled)]
        executor: logits::Executor,
        #[arg(long)]
        model: Option<String>,
    },
    /// Generate tokens from a prompt with KV and SSM caches (compiled prefill and decode
    /// programs on the CPU); greedy, or temperature and top-p sampling.
    Generate(generate::GenerateArgs),
}

/// Deep but legal programs recurse deeply in the checker and formatter; run them on a
/// thread with a generous stack so that they report errors instead of overflowing.
const STACK_BYTES: usize = 512 << 20;

/// When the process started: `hyb train` reports the time from the command to its first step.
pub static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    STARTED.get_or_init(std::time::Instant::now);
    // The matches say which flags were given (`hyb train --resume` checks those).
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let worker = std::thread::Builder::new().stack_size(STACK_BYTES).spawn(move || run(cli, matches));
    match worker.map(|h| h.join()) {
        Ok(Ok(Ok(code))) => code,
        Ok(Ok(Err(e))) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        _ => {
            eprintln!("error: internal failure");
            ExitCode::from(3)
        }
    }
}

fn run(cli: Cli, matches: ArgMatches) -> Result<ExitCode> {
    match cli.command {
        Command::Check { files } => {
            let checked = check(&files)?;
            if report(&checked) {
                return Ok(ExitCode::from(1));
            }
            println!("ok: {} file(s), {} model(s)", files.len(), checked.models.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Fmt { check, files } => fmt(&files, check),
        Command::Show { file, model } => {
            let checked = check(std::slice::from_ref(&file))?;
            if report(&checked) {
                return Ok(ExitCode::from(1));
            }
            print!("{}", layer_table(&choose(&checked, &file, model.as_deref())?.summary));
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { hf_dir, out, name } => {
            let name = name.unwrap_or_else(|| model_name_from(&hf_dir));
            let cfg = hyb_runtime::hf::import(&hf_dir, &out, &name)?;
            println!(
                "imported {} ({} layers, d {}) → {}",
                hf_dir.display(),
                cfg.layers,
                cfg.d,
                out.join(format!("{name}.hyb")).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { file, weights, out, model } => {
            let checked = check(std::slice::from_ref(&file))?;
            if report(&checked) {
                return Ok(ExitCode::from(1));
            }
            let m = choose(&checked, &file, model.as_deref())?;
            let w = export_weights(&weights)?;
            hyb_runtime::hf::export(&m.summary, w, &out)?;
            println!("exported {} → {}", m.summary.name, out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::MupCheck { file, model, widths, base_width, steps, lr, out } => {
            use hyb_runtime::mup::{coordinate_check, growth, plot_rows, CoordCheck, Parametrisation};
            let Some(&smallest) = widths.iter().min() else { bail!("--widths needs at least one width") };
            let cfg = CoordCheck {
                base_width: base_width.unwrap_or(smallest),
                widths,
                steps,
                lr,
                batch: 8,
                seq: 32,
                seed: 0,
            };
            let rows = coordinate_check(&file, model.as_deref(), &cfg, &out)?;
            println!("{:<4} {:>6} {:>12}  mean |activation| per layer", "", "width", "logits");
            for r in &rows {
                let layers: Vec<String> = r.layers.iter().map(|v| format!("{v:.4}")).collect();
                println!("{:<4} {:>6} {:>12.4}  {}", r.parametrisation.name(), r.width, r.logits, layers.join(" "));
            }
            for p in [Parametrisation::Mup, Parametrisation::Standard] {
                println!("{}: largest/smallest width activation ratio {:.2}", p.name(), growth(&rows, p));
            }
            for path in plot_rows(&rows, &out)? {
                println!("plot: {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Train(args) if args.nproc_per_node > 1 && !launch::in_a_job() => {
            // The model is checked once here, so its diagnostics print once, not per rank.
            if !is_artifact(&args.file) && report(&check_variant(&args.file, args.model.as_deref(), &args.sets)?) {
                return Ok(ExitCode::from(1));
            }
            launch::launch(args.nproc_per_node, std::time::Duration::from_secs(args.rendezvous_timeout))
        }
        Command::Sweep(args) => {
            sweep::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Train(args) if is_artifact(&args.file) => {
            anyhow::ensure!(args.sets.is_empty(), "--set changes a .hyb model; an artifact is compiled already");
            let given = matches.subcommand_matches("train").context("train's arguments")?;
            train::run(&args, train::Subject::Artifact(Box::new(load_artifact(&args.file)?)), given)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Train(args) => {
            let checked = check_variant(&args.file, args.model.as_deref(), &args.sets)?;
            if report(&checked) {
                return Ok(ExitCode::from(1));
            }
            let m = choose(&checked, &args.file, args.model.as_deref())?;
            let given = matches.subcommand_matches("train").context("train's arguments")?;
            train::run(&args, train::Subject::Model(m), given)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain(args) if is_artifact(&args.file) => {
            anyhow::ensure!(args.sets.is_empty(), "--set changes a .hyb model; an artifact is compiled already");
            explain::run_artifact(&args, &load_artifact(&args.file)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Compile(args) => {
            let checked = check(std::slice::from_ref(&args.file))?;
            if report(&checked) {
                return Ok(ExitCode::from(1));
            }
            let m = choose(&checked, &args.file, args.model.as_deref())?;
            compile::run(&args, m)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain(args) => {
            let start = std::time::Instant::now();
            let checked = check_variant(&args.file, args.model.as_deref(), &args.sets)?;
            if report(&checked) {
                return Ok(ExitCode::from(1));
            }
            let m = choose(&checked, &args.file, args.model.as_deref())?;
            explain::run(&args, m, &checked.program.sources, start.elapsed())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate(args) => {
            if is_artifact(&args.file) {
                bail!("generate compiles its prefill and decode programs from a .hyb model; give the model, not an artifact");
            }
            let checked = check(std::slice::from_ref(&args.file))?;
            if report(&checked) {
                return Ok(ExitCode::from(1));
            }
            generate::run(&args, choose(&checked, &args.file, args.model.as_deref())?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logits { file, weights, ids, json, precision, executor, model } => {
            let batch = logits::parse_ids(&ids)?;
            let out = if is_artifact(&file) {
                let artifact = load_artifact(&file)?;
                let w = hyb_runtime::weights::load(&weights)?;
                logits::run_artifact(&artifact, w, &batch, &precision)?
            } else {
                let checked = check(std::slice::from_ref(&file))?;
                if report(&checked) {
                    return Ok(ExitCode::from(1));
                }
                let m = choose(&checked, &file, model.as_deref())?;
                let w = hyb_runtime::weights::load(&weights)?;
                logits::run(&m.trace, w, &batch, &precision, executor)?
            };
            let mut stdout = std::io::stdout().lock();
            if json {
                logits::write_json(&mut stdout, &out)?;
            } else {
                logits::write_text(&mut stdout, &out)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether a path names a compiled artifact rather than a `.hyb` source.
fn is_artifact(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "hybc")
}

fn load_artifact(path: &Path) -> Result<hyb_compiler::artifact::Artifact> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    hyb_compiler::artifact::Artifact::from_bytes(&bytes, hyb_compiler::artifact::Target::Cpu)
        .with_context(|| format!("cannot load {}", path.display()))
}

/// The model named on the command line, or the file's only model.
fn choose<'c>(checked: &'c Checked, file: &Path, model: Option<&str>) -> Result<&'c hyb_dsl::expand::model::Expanded> {
    let names: Vec<&str> = checked.models.iter().map(|(_, m)| m.summary.name.as_str()).collect();
    let chosen = match model {
        Some(name) => checked.models.iter().find(|(_, m)| m.summary.name == name),
        None if checked.models.len() == 1 => checked.models.first(),
        None => {
            bail!("{} defines {} models ({}); choose one with --model", file.display(), names.len(), names.join(", "))
        }
    };
    match chosen {
        Some((_, m)) => Ok(m),
        None => bail!("no model `{}` in {} (models: {})", model.unwrap_or_default(), file.display(), names.join(", ")),
    }
}

/// The model weights of a weights file, a training checkpoint or a run directory.
fn export_weights(path: &Path) -> Result<hyb_runtime::weights::Weights> {
    use hyb_runtime::train::checkpoint;
    let path = checkpoint::path_in(path);
    match hyb_runtime::weights::load(&path) {
        Err(hyb_runtime::weights::WeightsError::TrainingCheckpoint { .. }) => Ok(checkpoint::load_weights(&path)?),
        loaded => Ok(loaded?),
    }
}

/// A valid model name from a folder name: `Falcon-H1-0.5B` → `falcon_h1_0_5b`.
fn model_name_from(dir: &Path) -> String {
    let base = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mut name: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.insert_str(0, "model_");
    }
    name
}

/// Checks `file` with `sets` applied to its model `model` (as written when there are none).
fn check_variant(file: &Path, model: Option<&str>, sets: &[hyb_dsl::variant::Set]) -> Result<Checked> {
    if sets.is_empty() {
        return check(&[file.to_path_buf()]);
    }
    hyb_compiler::check::check_variant(file, model, sets).map_err(anyhow::Error::msg)
}

fn check(files: &[PathBuf]) -> Result<Checked> {
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    check_paths(&paths).map_err(anyhow::Error::msg)
}

/// Prints every diagnostic; true if there were any.
fn report(checked: &Checked) -> bool {
    for d in &checked.diagnostics {
        eprintln!("{:?}", d.report(&checked.program.sources));
    }
    if !checked.diagnostics.is_empty() {
        eprintln!("{} error(s)", checked.diagnostics.len());
    }
    !checked.diagnostics.is_empty()
}

fn fmt(files: &[PathBuf], check_only: bool) -> Result<ExitCode> {
    let mut failed = false;
    for path in files {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut sources = hyb_dsl::source::Sources::new();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let id = sources.add_text(path.display().to_string(), text.clone());
        if let Err(e) = std::str::from_utf8(&bytes) {
            let d = hyb_dsl::diag::Diagnostic::new(
                hyb_dsl::diag::Code::NotUtf8,
                id,
                hyb_dsl::ast::Span::new(e.valid_up_to(), e.valid_up_to() + 1),
                "the file is not valid UTF-8",
            )
            .label("invalid byte here");
            eprintln!("{:?}", d.report(&sources));
            failed = true;
            continue;
        }
        let ast = match hyb_dsl::parse::parse(id, &text) {
            Ok(ast) => ast,
            Err(diags) => {
                for d in diags {
                    eprintln!("{:?}", d.report(&sources));
                }
                failed = true;
                continue;
            }
        };
        let formatted = hyb_dsl::fmt::format(&ast, &text);
        if formatted == text {
            continue;
        }
        if check_only {
            println!("would reformat {}", path.display());
            failed = true;
        } else {
            // A symlink stays a link: its target is the file that gets formatted.
            let target = path.canonicalize().with_context(|| format!("cannot resolve {}", path.display()))?;
            hyb_runtime::atomic::write(&target, formatted.as_bytes())
                .with_context(|| format!("cannot write {}", target.display()))?;
            println!("formatted {}", path.display());
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn layer_table(s: &ModelSummary) -> String {
    let mut out = format!("model {}: vocab {}, d {}, {} layers\n", s.name, s.vocab, s.d, s.layers.len());
    out.push_str(&format!(
        "{:>5}  {:<24} {:>10} {:>10} {:>16}\n",
        "layer", "kind", "attn heads", "ssm heads", "params"
    ));
    for l in &s.layers {
        let kind = match l.letter {
            Some(c) => format!("{c} {}", l.block),
            None => l.block.clone(),
        };
        out.push_str(&format!(
            "{:>5}  {:<24} {:>10} {:>10} {:>16}\n",
            l.index,
            kind,
            l.attention_heads,
            l.ssm_heads,
            grouped(l.params)
        ));
    }
    let row = |name: &str, n: u64| format!("{:<54} {:>16}\n", name, grouped(n));
    out.push_str(&row("embedding", s.embedding_params));
    out.push_str(&row("final norm", s.final_norm_params));
    if s.lm_head_params > 0 {
        out.push_str(&row("lm_head", s.lm_head_params));
    } else {
        out.push_str(&format!("{:<54} {:>16}\n", "lm_head", "tied"));
    }
    out.push_str(&format!("{:<54} {:>16} ({})\n", "total", grouped(s.total_params), human(s.total_params)));
    out
}

fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}
