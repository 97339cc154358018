//! What runs a training run's steps and evaluations: the compiled programs (sharding,
//! rewriting, fusion, recompute, planned into one arena) on the CPU executor or on a GPU —
//! compiled here from the model's forward graph or read from an artifact — or the
//! unoptimised graphs in the reference interpreter (the oracle, `--executor reference`).

use super::{TrainConfig, TrainError};
use crate::cpu::objects::{artifact_then, DiskCache};
use crate::cpu::{Exchange, Kernels};
use crate::cuda::{CudaProgram, Device};
use hyb_compiler::artifact::Artifact;
use hyb_compiler::codegen::cpu::Objects;
use hyb_compiler::fit::{fit, Request};
use hyb_compiler::ir::Graph;
use hyb_compiler::pipeline::{compile, plan_graph, plan_with, DataParallel, Executable, Sizing, Target};
use hyb_compiler::plan::{Precision, Recompute};
use hyb_compiler::reference::{self, RunError, Tensor};
use hyb_compiler::rewrite::Options;
use hyb_compiler::training::training_graph;
use hyb_dsl::value::DType;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Which executor runs the steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Executor {
    /// The compiled program on the CPU executor.
    #[default]
    Compiled,
    /// The reference interpreter on the unoptimised graphs.
    Reference,
}

/// Where compiled programs run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    #[default]
    Cpu,
    /// A GPU, by ordinal, through the CUDA executor, storing values as the precision says.
    Cuda(usize, GpuPrecision),
}

impl Placement {
    /// The GPU (in mixed precision) when one is present, else the CPU: the default of
    /// `hyb train`.
    pub fn best() -> Placement {
        if Device::available() {
            Placement::Cuda(0, GpuPrecision::Mixed)
        } else {
            Placement::Cpu
        }
    }
}

/// What a GPU program stores (the CPU computes in float32 throughout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuPrecision {
    /// bf16 activations and weight copies, f32 master weights, moments, gradients and
    /// statistics: [`Precision::mixed`].
    #[default]
    Mixed,
    /// float32 throughout: the CPU's program, launch for launch.
    F32,
}

impl GpuPrecision {
    pub fn policy(self) -> Precision {
        match self {
            GpuPrecision::Mixed => Precision::mixed(),
            GpuPrecision::F32 => cpu_precision(),
        }
    }
}

/// How a model's programs are planned: by which executor, where, with what recompute, for
/// how much device memory. None of it changes what a step computes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Planning {
    pub executor: Executor,
    pub placement: Placement,
    pub recompute: Recompute,
    /// The device's memory: the plan (under the device's precision policy) must fit it.
    pub device_memory: Option<u64>,
    /// With `Some(n)`, the step is one replica's of `n` data-parallel ones: planned for its
    /// `batch / n` rows, its gradients and loss summed over the replicas before the update
    /// (so the run computes what one process does on the whole batch).
    pub data_parallel: Option<usize>,
    /// With data parallelism, ZeRO-1: each replica holds the optimizer moments of its
    /// `1/n` of every parameter.
    pub zero: bool,
    /// With `Some(n)`, the step is one rank's of the `n`-way tensor-parallel program the
    /// compiler's sharding plan chose: its parameters and moments that rank's parts.
    pub tensor_parallel: Option<usize>,
}

/// What a run trains.
pub enum Model {
    /// A forward graph, compiled for the run's configuration.
    Graph { forward: Graph, planning: Planning },
    /// A compiled artifact: its step and evaluation programs, as compiled, run where
    /// `placement` says.
    Artifact(Box<Artifact>, Placement),
}

impl From<Graph> for Model {
    fn from(forward: Graph) -> Model {
        Model::Graph { forward, planning: Planning::default() }
    }
}

impl Model {
    /// The forward pass as elaborated: the run's identity, parameters and data checks.
    pub fn forward(&self) -> &Graph {
        match self {
            Model::Graph { forward, .. } => forward,
            Model::Artifact(a, _) => &a.model,
        }
    }

    /// The programs for `cfg`'s steps and evaluations; for batches of packed documents
    /// (`packed`), of the forward graph confined to each row's documents.
    pub fn programs(&self, cfg: &TrainConfig, packed: bool) -> Result<Programs, TrainError> {
        match self {
            Model::Graph { forward, planning } if packed => {
                let forward = hyb_compiler::elaborate::packed::packed(forward)
                    .map_err(|e| TrainError::Config(format!("packed data: {e}")))?;
                compiled(&forward, cfg, planning)
            }
            Model::Graph { forward, planning } => compiled(forward, cfg, planning),
            Model::Artifact(..) if packed => Err(TrainError::Config(
                "packed data needs programs compiled for packed rows: train from the .hyb file, not an artifact".into(),
            )),
            Model::Artifact(a, placement) => from_artifact(a, cfg, *placement),
        }
    }
}

/// A program and what runs it.
pub enum Runner {
    /// On the CPU executor, fused kernels as generated code.
    Compiled(Box<Executable>, Kernels),
    Reference(Graph),
    /// On a GPU: weights, moments and inputs are copied in for each run, and the outputs
    /// back.
    Cuda(Box<Executable>, Box<Mutex<CudaProgram>>),
}

impl Runner {
    /// The executable with its fused kernels as native code, from `objects` or compiled.
    fn compiled(e: Executable, objects: &dyn Objects) -> Runner {
        let kernels = Kernels::prepare(&e.graph, &e.program, objects);
        Runner::Compiled(Box::new(e), kernels)
    }

    pub fn run(
        &self,
        params: &HashMap<String, Tensor<f32>>,
        inputs: &HashMap<String, Tensor<f32>>,
    ) -> Result<Vec<Tensor<f32>>, RunError> {
        match self {
            Runner::Compiled(e, kernels) => crate::cpu::run_with(&e.graph, &e.program, kernels, params, inputs),
            Runner::Reference(g) => reference::run(g, params, inputs),
            Runner::Cuda(e, program) => {
                let mut program = program.lock().expect("a step that failed leaves no lock poisoned");
                let run = |p: &mut CudaProgram| {
                    p.load(&e.graph, params, inputs)?;
                    p.run()?;
                    p.outputs()
                };
                run(&mut program).map_err(cuda_error)
            }
        }
    }

    /// Joins the NCCL communicators of `mesh` when the step runs on a GPU and exchanges with
    /// other ranks; every rank of the job calls it, in step. On the CPU the collectives go
    /// through the mesh itself, at every run ([`Runner::run_exchanging`]).
    pub fn connect(&self, mesh: &mut crate::dist::Mesh) -> Result<(), RunError> {
        let Runner::Cuda(_, program) = self else { return Ok(()) };
        let mut program = program.lock().expect("a step that failed leaves no lock poisoned");
        if program.has_collectives() {
            let sharing = program.sharing().to_vec();
            let comms = crate::cuda::Communicators::join(program.device(), mesh, &sharing).map_err(cuda_error)?;
            program.connect(Arc::new(comms));
        }
        Ok(())
    }

    /// [`Runner::run`] as one rank of a job, exchanging its collectives through `exchange`
    /// (compiled programs on the CPU; a GPU's go through NCCL, [`Runner::connect`]).
    pub fn run_exchanging(
        &self,
        params: &HashMap<String, Tensor<f32>>,
        inputs: &HashMap<String, Tensor<f32>>,
        exchange: &mut dyn Exchange,
    ) -> Result<Vec<Tensor<f32>>, RunError> {
        match self {
            Runner::Compiled(e, kernels) => {
                crate::cpu::run_exchanging(&e.graph, &e.program, kernels, params, inputs, exchange)
            }
            Runner::Reference(_) => Err(RunError::Collective("the reference executor runs one process".into())),
            Runner::Cuda(..) => Err(RunError::Collective(
                "data parallelism on GPUs exchanges through NCCL, which this build does not run yet".into(),
            )),
        }
    }

    /// Runs a training step whose weights and moments stay on the device between steps:
    /// `params` and the moments in `inputs` are copied in only when `fresh`. Returns the
    /// loss and gradient norm, or `None` where the runner keeps no state (the CPU). A
    /// non-finite step leaves the state as it was (the step selects its update on its
    /// loss, gradient norm and learning rate being finite).
    pub fn run_resident(
        &self,
        params: &HashMap<String, Tensor<f32>>,
        inputs: &HashMap<String, Tensor<f32>>,
        fresh: bool,
    ) -> Option<Result<(f64, f64), RunError>> {
        let Runner::Cuda(e, program) = self else { return None };
        let mut p = program.lock().expect("a step that failed leaves no lock poisoned");
        let run = |p: &mut CudaProgram| -> Result<(f64, f64), crate::cuda::CudaError> {
            if fresh {
                p.load(&e.graph, params, inputs)?;
            } else {
                p.load_inputs(&e.graph, inputs)?;
            }
            p.run()?;
            Ok((p.output(0)?.data[0] as f64, p.output(1)?.data[0] as f64))
        };
        Some(run(&mut p).map_err(cuda_error))
    }

    /// The step's outputs past the loss and gradient norm (the updated weights and
    /// moments) as the device holds them, for a runner that keeps them.
    pub fn resident_state(&self) -> Option<Result<Vec<Tensor<f32>>, RunError>> {
        let Runner::Cuda(_, program) = self else { return None };
        let p = program.lock().expect("not poisoned");
        let n = p.program().outputs.len();
        Some((2..n).map(|i| p.output(i)).collect::<Result<Vec<_>, _>>().map_err(cuda_error))
    }

    /// Each launch's time on a GPU (one more step, undone), with what it runs; `None` on
    /// the CPU.
    pub fn profile(&self) -> Option<Result<Vec<LaunchTime>, RunError>> {
        let Runner::Cuda(e, program) = self else { return None };
        let p = program.lock().expect("not poisoned");
        let times = match p.profile() {
            Ok(t) => t,
            Err(err) => return Some(Err(cuda_error(err))),
        };
        let what = |node: usize| match &e.graph.nodes[node].op {
            hyb_compiler::ir::Op::Prim(p) => {
                use hyb_compiler::ops::Primitive;
                p.name().to_string()
            }
            hyb_compiler::ir::Op::Kernel(k) => format!("{} kernel", k.kind.name()),
            _ => "node".into(),
        };
        let label = |l: &hyb_compiler::plan::Launch| match l.kind {
            hyb_compiler::plan::LaunchKind::Convert => "weight copy".to_string(),
            _ => what(l.node),
        };
        let launches = e.program.launches.iter().zip(times);
        // Layer `i` is scope `i + 1`; scope 0 is outside every layer.
        let layer = |l: &hyb_compiler::plan::Launch| e.graph.nodes[l.node].scope.checked_sub(1);
        Some(Ok(launches
            .map(|(l, ms)| LaunchTime { what: label(l), detail: detail(&e.graph, l), layer: layer(l), ms })
            .collect()))
    }

    /// FLOPs of one run of the program, as the cost model counts them.
    pub fn flops(&self) -> f64 {
        let (batch, seq) = match self {
            Runner::Compiled(e, _) | Runner::Cuda(e, _) => (e.program.batch, e.program.seq),
            Runner::Reference(_) => return 0.0,
        };
        let machine = hyb_compiler::cost::Machine::h200().with_size(batch as i64, seq as i64);
        hyb_compiler::cost::total(self.graph(), &machine).flops
    }

    /// Whether it runs on a GPU.
    pub fn on_gpu(&self) -> bool {
        matches!(self, Runner::Cuda(..))
    }

    /// The graph the runner runs (a tensor-parallel rank's: its parameters the rank's parts).
    pub fn graph(&self) -> &Graph {
        match self {
            Runner::Compiled(e, _) => &e.graph,
            Runner::Reference(g) => g,
            Runner::Cuda(e, _) => &e.graph,
        }
    }
}

fn cuda_error(e: crate::cuda::CudaError) -> RunError {
    match e {
        crate::cuda::CudaError::Run(r) => r,
        other => RunError::Kernel(other.to_string()),
    }
}

/// A run's programs: the training step and the forward pass it evaluates with.
pub struct Programs {
    pub step: Runner,
    pub eval: Runner,
    /// The data-parallel replicas the step is one of (1: it trains alone); evaluation runs
    /// the whole batch on every replica.
    pub replicas: usize,
    /// The tensor-parallel ranks the step is one of (1: unsharded); evaluation runs the
    /// unsharded forward pass.
    pub tensor_parallel: usize,
}

impl Programs {
    /// Bytes of GPU memory the step and evaluation programs hold (`None` off the GPU).
    pub fn device_bytes(&self) -> Option<usize> {
        let held = |r: &Runner| match r {
            Runner::Cuda(_, p) => Some(p.lock().expect("not poisoned").bytes()),
            _ => None,
        };
        Some(held(&self.step)? + held(&self.eval).unwrap_or(0))
    }

    /// The most bytes of GPU memory the run's allocations held at once so far (`None`
    /// off the GPU): both programs' arenas and anything allocated beside them.
    pub fn device_peak_bytes(&self) -> Option<usize> {
        match &self.step {
            Runner::Cuda(_, p) => Some(p.lock().expect("not poisoned").device().peak_bytes()),
            _ => None,
        }
    }

    /// Where the GPU step's first run went, for people (`None` before it, or off the GPU).
    pub fn first_run_summary(&self) -> Option<String> {
        let Runner::Cuda(_, p) = &self.step else { return None };
        let p = p.lock().expect("not poisoned");
        let (eager, capture) = p.first_run?;
        Some(format!(
            "weights, moments and batch uploaded in {:.2} s, run in {eager:.2} s, captured as a graph in {capture:.2} s",
            p.upload_s
        ))
    }

    /// What of the step runs as generated code, for people (`None` for the reference).
    pub fn codegen_summary(&self) -> Option<String> {
        match &self.step {
            Runner::Compiled(_, kernels) => {
                let eval = match &self.eval {
                    Runner::Compiled(_, e) => format!(
                        "; evaluation: {} kernels ({} compiled, {} loaded, in {:.2} s)",
                        e.compiled + e.loaded,
                        e.compiled,
                        e.loaded,
                        e.seconds
                    ),
                    _ => String::new(),
                };
                Some(format!("training step: {}{eval}", kernels.summary()))
            }
            Runner::Cuda(_, program) => {
                let p = program.lock().expect("not poisoned");
                let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
                let loaded = |l: &crate::cuda::Loaded| {
                    format!(
                        "{} generated and loaded in {:.2} s (PTX {:.1} s, JIT {:.1} s over the threads)",
                        l.kernels, l.wall_s, l.generate_s, l.jit_s
                    )
                };
                let eval = match &self.eval {
                    Runner::Cuda(_, e) => {
                        let e = e.lock().expect("not poisoned");
                        let place = match e.bytes() {
                            0 => format!("its {:.2} GiB arena inside the step's", gib(e.arena_bytes())),
                            own => format!("{:.2} GiB", gib(own)),
                        };
                        format!(
                            "; evaluation: {} modules, {}, {place}, prepared in {:.2} s",
                            e.modules,
                            loaded(&e.loaded),
                            e.seconds
                        )
                    }
                    _ => String::new(),
                };
                Some(format!(
                    "training step on {}: {} launches, {} PTX modules, {}, {:.2} GiB of device memory, prepared in {:.2} s{eval}",
                    p.device().name(),
                    p.program().launches.len(),
                    p.modules,
                    loaded(&p.loaded),
                    gib(p.bytes()),
                    p.seconds
                ))
            }
            Runner::Reference(_) => None,
        }
    }

    /// The parameters' names, in the order of the step's outputs.
    pub fn params(&self) -> Vec<String> {
        self.step.graph().params.iter().map(|p| p.name.clone()).collect()
    }
}

/// The CPU computes in float32 throughout, so every buffer holds float32s.
fn cpu_precision() -> Precision {
    Precision::uniform(DType::F32)
}

fn compiled(forward: &Graph, cfg: &TrainConfig, planning: &Planning) -> Result<Programs, TrainError> {
    let plan_error = |e: hyb_compiler::plan::PlanError| TrainError::Plan(e.to_string());
    let replicas = planning.data_parallel.unwrap_or(1).max(1);
    if replicas > 1 && planning.executor == Executor::Reference {
        return Err(TrainError::Config(
            "the reference executor runs one process: leave out --executor reference".into(),
        ));
    }
    if !cfg.batch.is_multiple_of(replicas) {
        return Err(TrainError::Config(format!(
            "--batch {} does not split over {replicas} data-parallel ranks: make it a multiple of {replicas}",
            cfg.batch
        )));
    }
    let rows = cfg.batch / replicas;
    let tp = planning.tensor_parallel.unwrap_or(1).max(1);
    if tp > 1 && planning.executor == Executor::Reference {
        return Err(TrainError::Config(
            "the reference executor runs one process: leave out --executor reference".into(),
        ));
    }
    if planning.executor == Executor::Reference {
        return Ok(Programs {
            step: Runner::Reference(training_graph(forward, &cfg.adamw(), cfg.width_mult).graph),
            eval: Runner::Reference(forward.clone()),
            replicas: 1,
            tensor_parallel: 1,
        });
    }
    let data_parallel = match planning.data_parallel {
        None => DataParallel::Alone,
        Some(n) if planning.zero => DataParallel::Zero1(n.max(1)),
        Some(_) => DataParallel::Replicated,
    };
    let target = Target::Training { opt: cfg.adamw(), width_mult: cfg.width_mult, data_parallel };
    let opts = Options::default();
    let precision = match planning.placement {
        Placement::Cuda(_, p) => p.policy(),
        Placement::Cpu => cpu_precision(),
    };
    // The step and the evaluation pass compile side by side: each is seconds for a large model.
    let (step, eval) = rayon::join(
        || {
            let step = compile(forward, &target, tp, &opts);
            // Recompute is chosen, and the budget checked, on what the device would hold.
            let sizing =
                Sizing { batch: rows, seq: cfg.seq, recompute: planning.recompute, budget: planning.device_memory };
            let request = Request { forward, compiled: &step, target: &target, tp, options: &opts, sizing };
            let device = fit(&request).map_err(|e| TrainError::Plan(e.to_string()))?;
            let levels = device.program.recompute;
            plan_with(&step, &target, rows, cfg.seq, precision.clone(), &levels).map_err(plan_error)
        },
        || {
            let eval = compile(forward, &Target::Forward, 1, &opts);
            plan_with(&eval, &Target::Forward, cfg.batch, cfg.seq, precision.clone(), &[]).map_err(plan_error)
        },
    );
    let (step, eval) = (step?, eval?);
    if let Placement::Cuda(ordinal, _) = planning.placement {
        return Ok(Programs { replicas, tensor_parallel: tp, ..on_gpu(ordinal, step, eval)? });
    }
    let cache = DiskCache::from_env();
    let (step, eval) = (Runner::compiled(step, &cache), Runner::compiled(eval, &cache));
    Ok(Programs { step, eval, replicas, tensor_parallel: tp })
}

/// The step and evaluation programs prepared on GPU `ordinal`.
fn on_gpu(ordinal: usize, step: Executable, eval: Executable) -> Result<Programs, TrainError> {
    let device = Arc::new(Device::open(ordinal).map_err(|e| TrainError::Device(e.to_string()))?);
    let failed = |e: crate::cuda::CudaError| TrainError::Device(e.to_string());
    let step_program = CudaProgram::prepare(device.clone(), &step.graph, &step.program).map_err(failed)?;
    // Evaluation runs between steps: its arena goes where the step keeps nothing between
    // runs (past the weights, moments and inputs, and the updated state it writes in place).
    let kept = 2..step.program.outputs.len();
    let eval_program =
        CudaProgram::prepare_beside(device, &eval.graph, &eval.program, &step_program, kept).map_err(failed)?;
    let runner = |e: Executable, p: CudaProgram| Runner::Cuda(Box::new(e), Box::new(Mutex::new(p)));
    Ok(Programs { step: runner(step, step_program), eval: runner(eval, eval_program), replicas: 1, tensor_parallel: 1 })
}

/// The artifact's programs, placed again for the CPU's element type, after checking that
/// it is a one-rank training step compiled for `cfg`'s sizes and optimizer settings.
fn from_artifact(a: &Artifact, cfg: &TrainConfig, placement: Placement) -> Result<Programs, TrainError> {
    let c = &a.compiled;
    let mismatch = |what: String| Err(TrainError::Mismatch(format!("the artifact {what}")));
    let Some(training) = &c.training else {
        return mismatch("is a forward pass; compile the training step (without --forward) to train".into());
    };
    if c.tp != 1 {
        return mismatch(format!("is planned for {} tensor-parallel ranks; CPU training runs one", c.tp));
    }
    if (c.batch, c.seq) != (cfg.batch, cfg.seq) {
        return mismatch(format!(
            "is compiled for --batch {} --seq {}, not --batch {} --seq {}",
            c.batch, c.seq, cfg.batch, cfg.seq
        ));
    }
    let opt = cfg.adamw();
    let mut differ = Vec::new();
    let mut check = |what: &str, theirs: String, ours: String| {
        if theirs != ours {
            differ.push(format!("{what} {theirs} (the run's is {ours})"));
        }
    };
    let o = &training.opt;
    check("beta1", o.beta1.to_string(), opt.beta1.to_string());
    check("beta2", o.beta2.to_string(), opt.beta2.to_string());
    check("eps", o.eps.to_string(), opt.eps.to_string());
    check("weight decay", o.weight_decay.to_string(), opt.weight_decay.to_string());
    check("gradient clip", format!("{:?}", o.clip), format!("{:?}", opt.clip));
    check("decay_all", o.decay_all.to_string(), opt.decay_all.to_string());
    check("width multiplier", training.width_mult.to_string(), cfg.width_mult.to_string());
    if !differ.is_empty() {
        return mismatch(format!("was compiled with {}", differ.join(", ")));
    }
    let Some(eval) = &a.eval else {
        return mismatch("has no forward pass to evaluate with: compile it again".into());
    };
    if let Placement::Cuda(ordinal, precision) = placement {
        let policy = precision.policy();
        let step = placed(&a.executable, true, c.batch, c.seq, policy.clone())?;
        return on_gpu(ordinal, step, placed(eval, false, c.batch, c.seq, policy)?);
    }
    let cache = DiskCache::from_env();
    let objects = artifact_then(&a.objects, &cache);
    let step = Runner::compiled(cpu_executable(&a.executable, true, c.batch, c.seq)?, &objects);
    let eval = Runner::compiled(cpu_executable(eval, false, c.batch, c.seq)?, &objects);
    Ok(Programs { step, eval, replicas: 1, tensor_parallel: 1 })
}

/// An artifact's program (a training step or a forward pass) placed again for the CPU's
/// element type, with its recompute: what the CPU executor runs, and so what `hyb compile`
/// prepares object code for.
pub fn cpu_executable(e: &Executable, training: bool, batch: usize, seq: usize) -> Result<Executable, TrainError> {
    placed(e, training, batch, seq, cpu_precision())
}

/// An artifact's program planned again under `precision`, with its recompute.
fn placed(e: &Executable, training: bool, batch: usize, seq: usize, p: Precision) -> Result<Executable, TrainError> {
    let mut program = plan_graph(&e.graph, training, batch, seq, p).map_err(|e| TrainError::Plan(e.to_string()))?;
    program.recompute = e.program.recompute.clone();
    Ok(Executable { graph: e.graph.clone(), program })
}

/// One launch of a profiled step.
#[derive(Clone, Debug)]
pub struct LaunchTime {
    /// What runs, as the profile's table groups launches.
    pub what: String,
    /// Which launch it is: its node, the operations of a fused body, the views' shapes.
    pub detail: String,
    /// The layer whose forward, backward or update it computes; `None` outside the layers
    /// (embedding, loss, global gradient norm).
    pub layer: Option<u32>,
    pub ms: f64,
}

/// A launch told apart from the others of its kind: the node, a fused kernel's operations
/// in order (each once), and the shapes and element types it reads and writes.
fn detail(graph: &Graph, launch: &hyb_compiler::plan::Launch) -> String {
    use hyb_compiler::ops::Primitive;
    let shapes = |views: &[hyb_compiler::plan::View]| {
        views.iter().map(|v| format!("{:?}{}", v.shape, v.dtype.name())).collect::<Vec<_>>().join(" ")
    };
    let ops = match &graph.nodes[launch.node].op {
        hyb_compiler::ir::Op::Kernel(k) => {
            let mut names: Vec<&str> = Vec::new();
            for n in &k.body.nodes {
                if let hyb_compiler::ir::Op::Prim(p) = &n.op {
                    if !names.contains(&p.name()) {
                        names.push(p.name());
                    }
                }
            }
            format!(" ({})", names.join(", "))
        }
        _ => String::new(),
    };
    format!("node {}{ops}: {} -> {}", launch.node, shapes(&launch.inputs), shapes(&launch.outputs))
}
