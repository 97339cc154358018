//! `hyb compile`: check a model, run the whole pipeline, plan the program for one batch and
//! sequence length (fitted to `--device-memory` when given), and write it as an artifact
//! that runs without the `.hyb` source, with the object code of its CPU kernels for this
//! host (so running it compiles nothing here).

use crate::planning::PlanArgs;
use anyhow::{Context, Result};
use hyb_compiler::artifact::{self, Artifact, ObjectCode, Target};
use hyb_compiler::codegen::chain::Step;
use hyb_compiler::codegen::object::Host;
use hyb_compiler::codegen::unit::{self, GemmShape, Unit};
use hyb_compiler::codegen::{self, cpu, gpu, Symbols};
use hyb_compiler::cost::{Machine, MACHINES};
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::fit::{fit, Request};
use hyb_compiler::ir::Graph;
use hyb_compiler::pipeline::Executable;
use hyb_compiler::pipeline::{self, compile, Sizing};
use hyb_compiler::plan::LaunchKind;
use hyb_compiler::rewrite::Options;
use hyb_compiler::training::AdamW;
use hyb_dsl::expand::model::Expanded;
use hyb_runtime::cpu::objects::{DiskCache, Recording};
use hyb_runtime::cpu::Kernels;
use hyb_runtime::train::step::cpu_executable;
use std::collections::BTreeSet;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CompileArgs {
    pub file: PathBuf,
    #[arg(long)]
    pub model: Option<String>,
    /// Batch size the program is planned for.
    #[arg(long, default_value_t = 1, value_parser = crate::values::at_least_one)]
    pub batch: usize,
    /// Sequence length the program is planned for.
    #[arg(long, default_value_t = 4096, value_parser = crate::values::at_least_one)]
    pub seq: usize,
    /// Tensor-parallel ranks.
    #[arg(long, default_value_t = 1, value_parser = crate::values::at_least_one)]
    pub tp: usize,
    /// Compile the forward pass only (inference) instead of the training step.
    #[arg(long)]
    pub forward: bool,
    /// The GPU the cost model describes when the compiler chooses between programs.
    #[arg(long, default_value = "h200", value_parser = clap::builder::PossibleValuesParser::new(MACHINES))]
    pub machine: String,
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Print the code generated for the program's kernels at this stage (for the CPU, or
    /// PTX for the GPU) instead of writing an artifact.
    #[arg(long, value_enum)]
    pub emit: Option<Stage>,
    /// With `--emit`: only the kernel of this name (the names `--emit` prints).
    #[arg(long, requires = "emit")]
    pub kernel: Option<String>,
    /// Where to write the artifact.
    #[arg(short, long, required_unless_present = "emit")]
    pub out: Option<PathBuf>,
}

/// A stage of code generation to show.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// The generated MLIR, before lowering.
    Mlir,
    /// LLVM IR, after lowering and translation, before LLVM optimises it.
    Llvm,
    /// PTX for the H200 (sm_90).
    Ptx,
}

pub fn run(args: &CompileArgs, model: &Expanded) -> Result<()> {
    let machine =
        Machine::named(&args.machine).context("unknown machine")?.with_size(args.batch as i64, args.seq as i64);
    let opts = Options { machine, ..Options::default() };
    let width_mult = model.summary.base_width.map_or(1.0, |b| model.summary.d as f64 / b as f64);
    let training = (!args.forward).then(|| artifact::Training { opt: AdamW::default(), width_mult });
    let target = match &training {
        None => pipeline::Target::Forward,
        Some(t) => pipeline::Target::Training {
            opt: t.opt.clone(),
            width_mult: t.width_mult,
            data_parallel: pipeline::DataParallel::Alone,
        },
    };
    let forward = elaborate(&model.trace);
    let compiled = compile(&forward, &target, args.tp, &opts);
    let request = Request {
        forward: &forward,
        compiled: &compiled,
        target: &target,
        tp: args.tp,
        options: &opts,
        sizing: args.plan.sizing(args.batch, args.seq),
    };
    let executable = fit(&request)?;
    // A training run evaluates with the forward pass, planned for the same sizes.
    let eval = match &training {
        Some(_) => {
            let forward_pass = compile(&forward, &pipeline::Target::Forward, args.tp, &opts);
            let sizing = Sizing::new(args.batch, args.seq);
            Some(pipeline::plan(&forward_pass, &pipeline::Target::Forward, &sizing)?)
        }
        None => None,
    };
    let mut artifact = Artifact {
        compiled: artifact::Compiled {
            model: model.summary.name.clone(),
            target: Target::Cpu,
            training,
            tp: args.tp,
            batch: args.batch,
            seq: args.seq,
        },
        model: forward,
        executable,
        eval,
        objects: ObjectCode { host: Host::current().clone(), kernels: Default::default() },
    };
    if let Some(stage) = args.emit {
        return emit(&artifact.executable, stage, args.kernel.as_deref());
    }
    let out = args.out.as_ref().expect("clap requires --out without --emit");
    // The CPU runs one rank; a program for several has nothing to run here.
    if args.tp == 1 {
        artifact.objects.kernels = object_code(&artifact)?;
    }
    let bytes = artifact.to_bytes();
    hyb_runtime::atomic::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    let program = &artifact.executable.program;
    println!(
        "wrote {}: {} launches, arena {:.1} MiB per rank{}, object code of {} CPU kernels for {}, {} bytes",
        out.display(),
        program.launches.len(),
        program.memory.arena_bytes as f64 / (1 << 20) as f64,
        crate::explain::recompute_note(&program.recompute),
        artifact.objects.kernels.len(),
        artifact.objects.host,
        bytes.len()
    );
    Ok(())
}

/// What a GEMM is, in one comment line: the GEMM library computes it.
fn gemm_line(g: &GemmShape) -> String {
    let t = |yes: bool| if yes { "ᵀ" } else { "" };
    format!(
        "// a GEMM for the GEMM library (matrixmultiply on the CPU, cuBLASLt on the GPU): {:?}{} · {:?}{} → {:?}\n",
        g.a,
        t(g.matmul.transpose_a),
        g.b,
        t(g.matmul.transpose_b),
        g.out
    )
}

/// A generated body's code at `stage`.
fn body_code(body: &Graph, name: &str, stage: Stage, symbols: Symbols) -> Result<String> {
    Ok(match stage {
        Stage::Mlir => cpu::body_mlir(body, symbols)?,
        Stage::Llvm => cpu::llvm_ir(name, &cpu::body_mlir(body, symbols)?)?,
        Stage::Ptx => gpu::compile(body, symbols)?.ptx,
    })
}

/// The object code of every CPU kernel the artifact's programs run, placed as the CPU
/// executor places them, through the cache on disk.
fn object_code(artifact: &Artifact) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let c = &artifact.compiled;
    let cache = DiskCache::from_env();
    let recording = Recording::new(&cache);
    let programs = [(Some(&artifact.executable), c.training.is_some()), (artifact.eval.as_ref(), false)];
    for (executable, training) in programs.into_iter().filter_map(|(e, t)| Some((e?, t))) {
        let cpu = cpu_executable(executable, training, c.batch, c.seq)?;
        Kernels::prepare(&cpu.graph, &cpu.program, &recording);
    }
    Ok(recording.into_objects())
}

/// Prints the code of every distinct kernel of `executable` at `stage` (or of `kernel`).
fn emit(executable: &Executable, stage: Stage, kernel: Option<&str>) -> Result<()> {
    let (graph, program) = (&executable.graph, &executable.program);
    let symbols = Symbols { batch: program.batch, seq: program.seq };
    let target = if stage == Stage::Ptx { codegen::Target::Gpu } else { codegen::Target::Cpu };
    let mut names = BTreeSet::new();
    let mut shown = 0;
    for launch in program.launches.iter().filter(|l| !matches!(l.kind, LaunchKind::Collective(_))) {
        let Ok(unit) = unit::for_node(graph, launch.node, symbols, target) else { continue };
        let name = unit.name();
        if !names.insert(name.clone()) || kernel.is_some_and(|k| k != name) {
            continue;
        }
        let text = match &unit {
            Unit::Gemm(g) => gemm_line(g),
            Unit::Body(body) => body_code(body, &name, stage, symbols)?,
            Unit::Template(code) => match stage {
                Stage::Mlir => cpu::template_mlir(code, &[]),
                Stage::Llvm => cpu::llvm_ir(&name, &cpu::template_mlir(code, &[]))?,
                Stage::Ptx => gpu::compile_template(code)?.ptx,
            },
            Unit::Chain(chain) => {
                let mut text = format!("// {} steps, scratch {:?}\n", chain.steps.len(), chain.scratch);
                for (i, step) in chain.steps.iter().enumerate() {
                    text.push_str(&match step {
                        Step::Gemm { gemm, a, b, out } => {
                            format!("// step {i}: {a:?} · {b:?} → {out:?}\n{}", gemm_line(gemm))
                        }
                        Step::Body { body, reads, writes } => format!(
                            "// step {i}: {reads:?} → {writes:?}\n{}",
                            body_code(body, &codegen::kernel_name(body), stage, symbols)?
                        ),
                    });
                }
                text
            }
        };
        println!("// ===== {name} =====\n{text}");
        shown += 1;
    }
    match kernel {
        Some(k) if shown == 0 => {
            anyhow::bail!(
                "no kernel named `{k}`; the program's kernels: {}",
                names.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
        _ => Ok(()),
    }
}
