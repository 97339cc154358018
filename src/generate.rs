//! `hyb generate`: text or token ids from a prompt, with the compiled prefill and decode
//! programs on a GPU (the CUDA executor, float32) or on the CPU executor (float32 native
//! code, or float64 through the reference semantics); prefill and decode tokens/s on
//! stderr, or in `--json`.

use crate::train::DeviceFlag;
use anyhow::{bail, Context, Result};
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::pipeline::{compile_generation, CompiledGeneration};
use hyb_compiler::reference::{Real, Tensor};
use hyb_compiler::rewrite::Options;
use hyb_dsl::expand::model::Expanded;
use hyb_runtime::cpu::objects::DiskCache;
use hyb_runtime::cuda::Device;
use hyb_runtime::generate::cpu::Cpu;
use hyb_runtime::generate::gpu::Gpu;
use hyb_runtime::generate::sample::Sampling;
use hyb_runtime::generate::session::{Backend, Programs};
use hyb_runtime::generate::text::{eos_ids, Text};
use hyb_runtime::generate::{generate, Generated, Settings};
use hyb_runtime::train::step::{GpuPrecision, Placement};
use hyb_runtime::weights::Weights;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "ids"])))]
pub struct GenerateArgs {
    pub file: PathBuf,
    /// A weights file, a training checkpoint, or a run directory (its checkpoint).
    #[arg(long)]
    pub weights: PathBuf,
    /// The prompt as text (needs a tokenizer).
    #[arg(long)]
    pub prompt: Option<String>,
    /// A Hugging Face `tokenizer.json` (default: `tokenizer.json` beside the model file).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The prompt as token ids, comma-separated.
    #[arg(long)]
    pub ids: Option<String>,
    /// The model to run (default: the only model in the file).
    #[arg(long)]
    pub model: Option<String>,
    /// New tokens to generate at most.
    #[arg(long, default_value_t = 20, value_parser = crate::values::at_least_one)]
    pub max_new_tokens: usize,
    /// 0 chooses the most likely token (greedy); above 0 samples at that temperature.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = crate::values::non_negative_finite)]
    pub temperature: f64,
    /// Nucleus sampling: the most likely tokens whose probabilities reach P, in (0, 1]
    /// (with a temperature above 0).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = probability)]
    pub top_p: f64,
    /// The sampling stream's seed: the same seed gives the same tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Token ids that end generation, comma-separated (default: `eos_token_id` of a
    /// `generation_config.json` beside the tokenizer, the weights or the model file;
    /// `none` for no end).
    #[arg(long)]
    pub eos: Option<String>,
    /// Most tokens a generation may hold, prompt and new tokens together (the attention
    /// caches are planned for prompt + max-new-tokens).
    #[arg(long, default_value_t = 4096, value_parser = crate::values::at_least_one)]
    pub context: usize,
    /// Where the programs run [default: the first GPU when one is present, else the CPU;
    /// the CPU with --precision f64].
    #[arg(long, value_enum)]
    pub device: Option<DeviceFlag>,
    /// Arithmetic of the executor: f32 runs native code (on the GPU, f32 only); f64 the
    /// reference semantics on the CPU.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f64"])]
    pub precision: String,
    /// Print `{"prompt": […], "generated": […], …}` with the timings.
    #[arg(long)]
    pub json: bool,
}

/// A probability in (0, 1].
fn probability(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if x > 0.0 && x <= 1.0 {
        Ok(x)
    } else {
        Err(format!("must be in (0, 1], not {s}"))
    }
}

/// Comma-separated token ids, each below `vocab`.
fn parse_ids(text: &str, vocab: usize, flag: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(|s| {
            let id: u32 = s.trim().parse().with_context(|| format!("`{}` in {flag} is not a token id", s.trim()))?;
            if id as usize >= vocab {
                bail!("token id {id} in {flag} is outside the model's vocabulary of {vocab}");
            }
            Ok(id)
        })
        .collect()
}

/// Where the programs go: generation on the GPU is planned in float32 only.
fn placement(args: &GenerateArgs) -> Result<Placement> {
    let f64 = args.precision == "f64";
    let gpu = Placement::Cuda(0, GpuPrecision::F32);
    Ok(match args.device {
        Some(DeviceFlag::Cuda) if f64 => {
            bail!("the CUDA executor computes in float32: leave out --precision f64, or run with --device cpu")
        }
        Some(DeviceFlag::Cuda) => gpu,
        Some(DeviceFlag::Cpu) => Placement::Cpu,
        None if f64 => Placement::Cpu,
        None if !Device::available() => Placement::Cpu,
        None => gpu,
    })
}

pub fn run(args: &GenerateArgs, m: &Expanded) -> Result<()> {
    let placement = placement(args)?;
    let vocab = m.summary.vocab as usize;
    let near_model = |name: &str| args.file.parent().map(|d| d.join(name));
    let text = match (&args.prompt, &args.tokenizer) {
        (Some(_), Some(path)) => Some(Text::load(path, vocab)?),
        (Some(_), None) => match near_model("tokenizer.json").filter(|p| p.exists()) {
            Some(path) => Some(Text::load(&path, vocab)?),
            None => bail!("--prompt needs a tokenizer: give --tokenizer tokenizer.json, or the prompt as --ids"),
        },
        (None, Some(path)) => Some(Text::load(path, vocab)?),
        (None, None) => None,
    };
    let prompt = match (&args.prompt, &args.ids, &text) {
        (Some(p), _, Some(t)) => t.encode(p)?,
        (_, Some(ids), _) => parse_ids(ids, vocab, "--ids")?,
        _ => bail!("give the prompt as --prompt TEXT or --ids 1,2,3"),
    };
    if prompt.is_empty() {
        bail!("the prompt is empty: it has no tokens");
    }
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
        bail!("the tokenizer gave id {id}, outside the model's vocabulary of {vocab}");
    }
    let capacity = prompt.len() + args.max_new_tokens;
    if capacity > args.context {
        bail!(
            "the prompt ({} tokens) and --max-new-tokens {} make {capacity} tokens, more than the context of {} (raise --context)",
            prompt.len(),
            args.max_new_tokens,
            args.context
        );
    }
    let eos = match args.eos.as_deref() {
        Some("none") => Vec::new(),
        Some(ids) => parse_ids(ids, vocab, "--eos")?,
        None => default_eos(args, vocab)?,
    };
    let sampling = if args.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::TopP { temperature: args.temperature, top_p: args.top_p, seed: args.seed }
    };
    let settings = Settings { max_new_tokens: args.max_new_tokens, sampling, eos };
    // A missing driver or GPU is told before anything is read or compiled.
    let device = match placement {
        Placement::Cuda(ordinal, _) => Some(Arc::new(Device::open(ordinal)?)),
        Placement::Cpu => None,
    };
    let weights = crate::export_weights(&args.weights)?;
    let started = Instant::now();
    let forward = elaborate(&m.trace);
    let gen = compile_generation(&forward, capacity, &Options::default())?;
    let (out, summary) = match (device, args.precision.as_str()) {
        (Some(device), _) => on_gpu(device, &gen, weights, &prompt, &settings)?,
        (None, "f64") => on_cpu::<f64>(&gen, weights, &prompt, &settings)?,
        (None, _) => on_cpu::<f32>(&gen, weights, &prompt, &settings)?,
    };
    let prepare = started.elapsed().as_secs_f64() - out.prefill.as_secs_f64() - out.decode.as_secs_f64();
    let device = if matches!(placement, Placement::Cuda(..)) { "cuda" } else { "cpu" };
    report(args, &prompt, &out, &settings, text.as_ref(), prepare, (device, &summary))
}

/// Plans, prepares and runs the generation on the CPU in `T`; also returns what ran.
fn on_cpu<T: Real>(
    gen: &CompiledGeneration,
    weights: Weights,
    prompt: &[u32],
    settings: &Settings,
) -> Result<(Generated, String)> {
    let params = params::<T>(weights);
    let programs = Programs::new::<T>(gen, prompt.len(), &DiskCache::from_env())?;
    let mut cpu = Cpu::new(&programs, &params);
    let out = generate(&mut cpu, prompt, settings)?;
    Ok((out, cpu.summary()))
}

/// Plans, prepares and runs the generation on `device` in float32; also returns what ran.
fn on_gpu(
    device: Arc<Device>,
    gen: &CompiledGeneration,
    weights: Weights,
    prompt: &[u32],
    settings: &Settings,
) -> Result<(Generated, String)> {
    let params = params::<f32>(weights);
    let programs = Programs::for_gpu(gen, prompt.len())?;
    let mut gpu = Gpu::prepare(device, &programs, &params)?;
    let out = generate(&mut gpu, prompt, settings)?;
    Ok((out, gpu.summary()))
}

fn params<T: Real>(weights: Weights) -> HashMap<String, Tensor<T>> {
    weights.into_iter().map(|(k, w)| (k, Tensor::from_f64(w.tensor.shape, &w.tensor.data))).collect()
}

/// `eos_token_id` of the first `generation_config.json` beside the tokenizer, the weights
/// or the model file.
fn default_eos(args: &GenerateArgs, vocab: usize) -> Result<Vec<u32>> {
    let dir_of = |p: &Path| if p.is_dir() { Some(p.to_path_buf()) } else { p.parent().map(Path::to_path_buf) };
    let dirs = [args.tokenizer.as_deref().and_then(dir_of), dir_of(&args.weights), dir_of(&args.file)];
    for dir in dirs.into_iter().flatten() {
        let path = dir.join("generation_config.json");
        if path.exists() {
            let ids = eos_ids(&path)?;
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
                bail!("{}: eos_token_id {id} is outside the model's vocabulary of {vocab}", path.display());
            }
            return Ok(ids);
        }
    }
    Ok(Vec::new())
}

fn per_second(tokens: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        tokens as f64 / secs
    } else {
        0.0
    }
}

fn report(
    args: &GenerateArgs,
    prompt: &[u32],
    out: &Generated,
    settings: &Settings,
    text: Option<&Text>,
    prepare: f64,
    (device, summary): (&str, &str),
) -> Result<()> {
    let (pre, dec) = (out.prefill.as_secs_f64(), out.decode.as_secs_f64());
    let (pre_rate, dec_rate) = (per_second(prompt.len(), pre), per_second(out.steps, dec));
    let decoded = text.map(|t| t.decode(&out.tokens)).transpose()?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::json!({
            "prompt": prompt,
            "generated": out.tokens,
            "stopped_at_eos": out.stopped_at_eos,
            "eos": settings.eos,
            "prefill_tokens": prompt.len(),
            "prefill_seconds": pre,
            "prefill_tokens_per_s": pre_rate,
            "decode_tokens": out.steps,
            "decode_seconds": dec,
            "decode_tokens_per_s": dec_rate,
            "prepare_seconds": prepare,
            "device": device,
        });
        if let Some(t) = &decoded {
            v["text"] = serde_json::Value::String(t.clone());
        }
        serde_json::to_writer(&mut stdout, &v)?;
        writeln!(stdout)?;
    } else {
        match &decoded {
            Some(t) => writeln!(stdout, "{t}")?,
            None => {
                let ids: Vec<String> = out.tokens.iter().map(u32::to_string).collect();
                writeln!(stdout, "{}", ids.join(","))?;
            }
        }
    }
    eprintln!(
        "prefill: {} tokens in {:.1} ms ({pre_rate:.1} tokens/s); decode: {} tokens in {:.1} ms ({dec_rate:.1} tokens/s); \
         compile and prepare {prepare:.2} s, {summary}{}",
        prompt.len(),
        pre * 1e3,
        out.steps,
        dec * 1e3,
        if out.stopped_at_eos { "; stopped at end of sequence" } else { "" },
    );
    Ok(())
}
