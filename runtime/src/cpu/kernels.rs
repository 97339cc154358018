//! Native code for a program's launches, prepared once before the first step so every step
//! runs the same machine code. `hyb_compiler::codegen::unit` says what each launch gets:
//! generated code (`hyb_compiler::codegen::cpu`) for kernel bodies and templates, a GEMM
//! ([`Gemm`]) for a matmul, and a chain of both over scratch space for a kernel with GEMMs
//! inside (a GEMM kernel's epilogue, a BitLinear's quantisers). Generated code comes from
//! an [`Objects`] store (an artifact, the cache on disk) when it holds the kernel's object
//! code, and is compiled otherwise.
//!
//! What has no native code yet runs with the reference semantics; the counts say how much
//! of the program that is, and why.

use super::gemm::{Gemm, GemmError};
use hyb_compiler::codegen::chain::{Slot, Step};
use hyb_compiler::codegen::cpu::{
    prepare_template_for, ArenaView, Cache, CpuKernel, NoObjects, Objects, Origin, RunError,
};
use hyb_compiler::codegen::unit::{self, GemmShape, Unit};
use hyb_compiler::codegen::{CodegenError, Symbols, Target};
use hyb_compiler::ir::{Graph, Op};
use hyb_compiler::plan::{Launch, LaunchKind, Program};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How one launch runs natively.
enum Native {
    /// Generated code: a fused kernel, a primitive as a one-node body, or a template.
    Code(Arc<CpuKernel>),
    Gemm(Gemm),
    /// Steps in order over the launch's views and contiguous scratch buffers.
    Chain {
        steps: Vec<NativeStep>,
        scratch: Vec<Scratch>,
    },
}

/// One contiguous scratch buffer of a chain: where it starts past the chain's scratch
/// base, its shape and strides (fixed when the program is compiled).
struct Scratch {
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<isize>,
}

enum NativeStep {
    Code {
        kernel: Arc<CpuKernel>,
        reads: Vec<Slot>,
        writes: Vec<Vec<Slot>>,
    },
    /// `shapes` and `strides`: how the GEMM sees each of `a`, `b` and `out` when it is
    /// scratch seen folded.
    Gemm {
        gemm: Box<Gemm>,
        a: Slot,
        b: Slot,
        out: Slot,
        shapes: [Vec<usize>; 3],
        strides: [Vec<isize>; 3],
    },
}

/// The native code of one program, by launch.
pub struct Kernels {
    by_launch: Vec<Option<Native>>,
    /// Launches left to the reference semantics, with why.
    pub interpreted: Vec<(usize, String)>,
    /// Distinct generated kernels and templates compiled here.
    pub compiled: usize,
    /// Distinct generated kernels and templates whose object code was loaded.
    pub loaded: usize,
    /// Wall time of preparing them.
    pub seconds: f64,
    /// Elements past the program's arena that chains use for their scratch buffers.
    scratch: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error(transparent)]
    Kernel(#[from] RunError),
    #[error(transparent)]
    Gemm(#[from] GemmError),
}

impl Kernels {
    /// Prepares native code for every launch of `program` (planned from `graph`),
    /// compiling every kernel.
    pub fn compile(graph: &Graph, program: &Program) -> Kernels {
        Kernels::prepare(graph, program, &NoObjects)
    }

    /// [`Kernels::compile`], with the object code `objects` holds, and handing it what is
    /// compiled.
    pub fn prepare(graph: &Graph, program: &Program, objects: &dyn Objects) -> Kernels {
        let started = std::time::Instant::now();
        let symbols = Symbols { batch: program.batch, seq: program.seq };
        let mut builder = Builder { graph, objects, bodies: Cache::new(symbols), templates: HashMap::new() };
        let mut interpreted = Vec::new();
        let mut scratch = 0;
        // Which views step one element at a time along their last axis, so the code can
        // take that stride as a constant.
        let unit_stride =
            |v: &hyb_compiler::plan::View| v.shape.last().is_none_or(|&n| n <= 1) || v.strides.last() == Some(&1);
        // What each launch gets (collectives: nothing), decided once for both passes.
        let launches: Vec<Planned> = program
            .launches
            .iter()
            .map(|l| Planned {
                launch: l,
                inputs: l.inputs.iter().map(unit_stride).collect(),
                outputs: l.outputs.iter().map(unit_stride).collect(),
                unit: (!matches!(l.kind, LaunchKind::Collective(_)))
                    .then(|| unit::for_launch(graph, l, symbols, Target::Cpu)),
            })
            .collect();
        builder.prepare_all(&launches);
        let by_launch = launches
            .into_iter()
            .enumerate()
            .map(|(i, Planned { launch, inputs, outputs, unit })| {
                let unit = unit?;
                match builder.native(launch, unit, &inputs, &outputs) {
                    Ok(native) => {
                        if let Native::Chain { scratch: buffers, .. } = &native {
                            let end = buffers.last().map_or(0, |b| b.offset + b.shape.iter().product::<usize>());
                            scratch = scratch.max(end);
                        }
                        Some(native)
                    }
                    Err(why) => {
                        interpreted.push((i, why));
                        None
                    }
                }
            })
            .collect();
        // Two bodies or templates may generate the same code; the second then links the
        // object code the first just kept, and both are one kernel, compiled here.
        let mut origins: HashMap<&str, Origin> = HashMap::new();
        for k in builder.bodies.kernels().chain(builder.templates.values()) {
            let origin = origins.entry(k.mlir()).or_insert(k.origin());
            if k.origin() == Origin::Compiled {
                *origin = Origin::Compiled;
            }
        }
        let loaded = origins.values().filter(|&&o| o == Origin::Loaded).count();
        let compiled = origins.len() - loaded;
        Kernels { by_launch, interpreted, compiled, loaded, seconds: started.elapsed().as_secs_f64(), scratch }
    }

    /// Elements the executor's arena needs past the program's own.
    pub fn scratch(&self) -> usize {
        self.scratch
    }

    /// Whether launch `i` has native code.
    pub fn has(&self, i: usize) -> bool {
        self.by_launch.get(i).is_some_and(Option::is_some)
    }

    /// Runs launch `i` over `arena` (the program's arena, then [`Kernels::scratch`]
    /// elements starting at `scratch_at`).
    pub fn run(
        &self,
        i: usize,
        arena: &mut [f32],
        scratch_at: usize,
        inputs: &[ArenaView],
        outputs: &[ArenaView],
    ) -> Result<(), NativeError> {
        let native = self.by_launch[i].as_ref().expect("called for launches with native code");
        match native {
            Native::Code(k) => k.run(arena, inputs, outputs)?,
            Native::Gemm(g) => g.run(arena, &inputs[0], &inputs[1], &outputs[0])?,
            Native::Chain { steps, scratch } => {
                let view = |slot: Slot| match slot {
                    Slot::Input(k) => inputs[k],
                    Slot::Output(k) => outputs[k],
                    Slot::Scratch(k) => {
                        let s = &scratch[k];
                        ArenaView { offset: scratch_at + s.offset, shape: &s.shape, strides: &s.strides }
                    }
                };
                for step in steps {
                    match step {
                        NativeStep::Code { kernel, reads, writes } => {
                            let reads: Vec<ArenaView> = reads.iter().map(|&s| view(s)).collect();
                            // A value written to several slots: the kernel writes the first, copies follow.
                            let first: Vec<ArenaView> = writes.iter().map(|w| view(w[0])).collect();
                            kernel.run(arena, &reads, &first)?;
                            for (w, v) in writes.iter().zip(&first) {
                                for &other in &w[1..] {
                                    copy(arena, v, &view(other));
                                }
                            }
                        }
                        NativeStep::Gemm { gemm, a, b, out, shapes, strides } => {
                            // A scratch operand (contiguous) may be seen folded: `[B, T, d]` as `[B·T, d]`.
                            let seen = |slot: Slot, k: usize| match view(slot) {
                                v if v.shape != shapes[k].as_slice() && matches!(slot, Slot::Scratch(_)) => {
                                    ArenaView { offset: v.offset, shape: &shapes[k], strides: &strides[k] }
                                }
                                v => v,
                            };
                            gemm.run(arena, &seen(*a, 0), &seen(*b, 1), &seen(*out, 2))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Launches that run native code.
    pub fn generated(&self) -> usize {
        self.by_launch.iter().filter(|k| k.is_some()).count()
    }

    /// One line for people: how much of the program is native code, and what is not.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} of {} launches run native code ({} distinct kernels: {} compiled, {} loaded, in {:.2} s)",
            self.generated(),
            self.generated() + self.interpreted.len(),
            self.compiled + self.loaded,
            self.compiled,
            self.loaded,
            self.seconds
        );
        if !self.interpreted.is_empty() {
            let mut why: BTreeMap<&str, usize> = BTreeMap::new();
            for (_, w) in &self.interpreted {
                *why.entry(w.as_str()).or_default() += 1;
            }
            let parts: Vec<String> = why.iter().map(|(w, n)| format!("{w} ×{n}")).collect();
            line.push_str(&format!("; interpreted: {}", parts.join(", ")));
        }
        line
    }
}

/// A launch, its views' unit-stride flags (inputs, outputs) and what it gets (`None`: a
/// collective, which the executor exchanges).
struct Planned<'p> {
    launch: &'p Launch,
    inputs: Vec<bool>,
    outputs: Vec<bool>,
    unit: Option<Result<Unit, String>>,
}

/// Prepares what launches need, each distinct body or template once.
struct Builder<'g> {
    graph: &'g Graph,
    objects: &'g dyn Objects,
    bodies: Cache,
    templates: HashMap<String, Arc<CpuKernel>>,
}

impl Builder<'_> {
    /// Compiles every distinct body and template of `launches` (with their views'
    /// unit-stride flags) on all cores, so that [`Builder::native`] finds each prepared; one
    /// that fails is compiled again there, which reports why.
    fn prepare_all(&mut self, launches: &[Planned]) {
        let mut bodies = Vec::new();
        let mut templates = HashMap::new();
        for planned in launches {
            let Some(Ok(unit)) = &planned.unit else { continue };
            let (inputs, outputs) = (&planned.inputs, &planned.outputs);
            let views = [inputs.as_slice(), outputs].concat();
            match unit {
                Unit::Body(body) => bodies.push((body, views)),
                Unit::Template(code) => {
                    let key = template_key(&code.name, &self.graph.nodes[planned.launch.node].op, &code.inputs, &views);
                    if !self.templates.contains_key(&key) {
                        templates.entry(key).or_insert((code, views));
                    }
                }
                Unit::Chain(chain) => {
                    for step in &chain.steps {
                        if let Step::Body { body, reads, writes } = step {
                            bodies.push((body, step_views(reads, writes, inputs, outputs)));
                        }
                    }
                }
                Unit::Gemm(_) => {}
            }
        }
        self.bodies.prepare_all(bodies, self.objects);
        let objects = self.objects;
        let prepared: Vec<(String, Arc<CpuKernel>)> = templates
            .into_par_iter()
            .filter_map(|(key, (code, views))| Some((key, Arc::new(prepare_template_for(code, &views, objects).ok()?))))
            .collect();
        self.templates.extend(prepared);
    }

    /// The native code of `node`, or why there is none.
    fn native(
        &mut self,
        launch: &Launch,
        unit: Result<Unit, String>,
        inputs: &[bool],
        outputs: &[bool],
    ) -> Result<Native, String> {
        let node = launch.node;
        let views = [inputs, outputs].concat();
        let gemm = |g: &GemmShape| {
            Gemm::new(g.matmul.transpose_a, g.matmul.transpose_b, &g.a, &g.b, &g.out)
                .ok_or_else(|| "matmul of unusual shapes".to_string())
        };
        match unit? {
            Unit::Body(body) => {
                self.bodies.get(&body, &views, self.objects).map(Native::Code).map_err(|e| internal(&e))
            }
            Unit::Template(code) => {
                let key = template_key(&code.name, &self.graph.nodes[node].op, &code.inputs, &views);
                if let Some(k) = self.templates.get(&key) {
                    return Ok(Native::Code(k.clone()));
                }
                let kernel = Arc::new(prepare_template_for(&code, &views, self.objects).map_err(|e| internal(&e))?);
                self.templates.insert(key, kernel.clone());
                Ok(Native::Code(kernel))
            }
            Unit::Gemm(g) => gemm(&g).map(Native::Gemm),
            Unit::Chain(chain) => {
                let steps = chain
                    .steps
                    .iter()
                    .map(|step| match step {
                        Step::Body { body, reads, writes } => {
                            let views = step_views(reads, writes, inputs, outputs);
                            let kernel = self.bodies.get(body, &views, self.objects).map_err(|e| internal(&e))?;
                            Ok(NativeStep::Code { kernel, reads: reads.clone(), writes: writes.clone() })
                        }
                        Step::Gemm { gemm: g, a, b, out } => Ok(NativeStep::Gemm {
                            gemm: Box::new(gemm(g)?),
                            a: *a,
                            b: *b,
                            out: *out,
                            shapes: [g.a.clone(), g.b.clone(), g.out.clone()],
                            strides: [contiguous(&g.a), contiguous(&g.b), contiguous(&g.out)],
                        }),
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let scratch = chain
                    .scratch
                    .into_iter()
                    .scan(0, |at, shape| {
                        let offset = *at;
                        *at += shape.iter().product::<usize>();
                        Some(Scratch { offset, strides: contiguous(&shape), shape })
                    })
                    .collect();
                Ok(Native::Chain { steps, scratch })
            }
        }
    }
}

/// Unit-stride flags of a chain step's views: what it reads, then the first slot of each
/// value it writes; scratch is contiguous.
fn step_views(reads: &[Slot], writes: &[Vec<Slot>], inputs: &[bool], outputs: &[bool]) -> Vec<bool> {
    let unit_last = |slot: &Slot| match *slot {
        Slot::Input(k) => inputs[k],
        Slot::Output(k) => outputs[k],
        Slot::Scratch(_) => true,
    };
    reads.iter().chain(writes.iter().map(|w| &w[0])).map(unit_last).collect()
}

fn internal(e: &CodegenError) -> String {
    format!("codegen: {e}")
}

/// What makes two template instances the same code: the template (one node may have two,
/// in place or not), the node's operation, shapes and unit-stride views.
fn template_key(name: &str, op: &Op, shapes: &[Vec<usize>], unit_last: &[bool]) -> String {
    format!("{name} {op:?} {shapes:?} {unit_last:?}")
}

/// Copies view `from` to view `to` of the same shape, element by element.
fn copy(arena: &mut [f32], from: &ArenaView, to: &ArenaView) {
    let rank = from.shape.len();
    let mut index = vec![0usize; rank];
    for _ in 0..from.shape.iter().product::<usize>() {
        let at = |v: &ArenaView| {
            (v.offset as isize + index.iter().zip(v.strides).map(|(&i, &s)| i as isize * s).sum::<isize>()) as usize
        };
        arena[at(to)] = arena[at(from)];
        for d in (0..rank).rev() {
            index[d] += 1;
            if index[d] < from.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

fn contiguous(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![1isize; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * shape[k + 1] as isize;
    }
    strides
}
