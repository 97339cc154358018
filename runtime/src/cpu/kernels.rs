//! Native code for a program's launches, prepared once before the first step so every step
//! runs the same machine code. `hyb_compiler::codegen::unit` says what each launch gets:
//! generated code (`hyb_compiler::codegen::cpu`) for kernel bodies and templates, a GEMM
//! ([`Gemm`]) for a matmul, and a GEMM into scratch space followed by its generated
//! epilogue for a GEMM kernel. Generated code comes from an [`Objects`] store (an
//! artifact, the cache on disk) when it holds the kernel's object code, and is compiled
//! otherwise.
//!
//! What has no native code yet runs with the reference semantics; the counts say how much
//! of the program that is, and why.

use super::gemm::{Gemm, GemmError};
use hyb_compiler::codegen::cpu::{
    prepare_template_for, ArenaView, Cache, CpuKernel, NoObjects, Objects, Origin, RunError,
};
use hyb_compiler::codegen::unit::{self, GemmShape, Unit};
use hyb_compiler::codegen::{CodegenError, Symbols, Target};
use hyb_compiler::ir::{Graph, NodeId, Op};
use hyb_compiler::plan::{LaunchKind, Program};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How one launch runs natively.
enum Native {
    /// Generated code: a fused kernel, a primitive as a one-node body, or a template.
    Code(Arc<CpuKernel>),
    Gemm(Gemm),
    /// A GEMM kernel: its matmul into scratch space, then the rest of its body reading it.
    GemmEpilogue {
        gemm: Gemm,
        a: usize,
        b: usize,
        epilogue: Arc<CpuKernel>,
        shape: Vec<usize>,
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
    /// Elements past the program's arena that GEMM epilogues use for the GEMM's result.
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
        let mut builder = Builder { graph, symbols, objects, bodies: Cache::new(symbols), templates: HashMap::new() };
        let mut interpreted = Vec::new();
        let mut scratch = 0;
        let by_launch = program
            .launches
            .iter()
            .enumerate()
            .map(|(i, launch)| {
                if matches!(launch.kind, LaunchKind::Collective(_)) {
                    return None;
                }
                // Which views step one element at a time along their last axis, so the
                // code can take that stride as a constant.
                let unit = |v: &hyb_compiler::plan::View| {
                    v.shape.last().is_none_or(|&n| n <= 1) || v.strides.last() == Some(&1)
                };
                let inputs: Vec<bool> = launch.inputs.iter().map(unit).collect();
                let outputs: Vec<bool> = launch.outputs.iter().map(unit).collect();
                match builder.native(launch.node, &inputs, &outputs) {
                    Ok(native) => {
                        if let Native::GemmEpilogue { shape, .. } = &native {
                            scratch = scratch.max(shape.iter().product());
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
        let kernels: Vec<&Arc<CpuKernel>> = builder.bodies.kernels().chain(builder.templates.values()).collect();
        let loaded = kernels.iter().filter(|k| k.origin() == Origin::Loaded).count();
        let compiled = kernels.len() - loaded;
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
            Native::GemmEpilogue { gemm, a, b, epilogue, shape } => {
                let strides = contiguous(shape);
                let product = ArenaView { offset: scratch_at, shape, strides: &strides };
                gemm.run(arena, &inputs[*a], &inputs[*b], &product)?;
                let mut reads = inputs.to_vec();
                reads.push(product);
                epilogue.run(arena, &reads, outputs)?;
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

/// Prepares what launches need, each distinct body or template once.
struct Builder<'g> {
    graph: &'g Graph,
    symbols: Symbols,
    objects: &'g dyn Objects,
    bodies: Cache,
    templates: HashMap<String, Arc<CpuKernel>>,
}

impl Builder<'_> {
    /// The native code of `node`, or why there is none.
    fn native(&mut self, node: NodeId, inputs: &[bool], outputs: &[bool]) -> Result<Native, String> {
        let views = [inputs, outputs].concat();
        let gemm = |g: &GemmShape| {
            Gemm::new(g.matmul.transpose_a, g.matmul.transpose_b, &g.a, &g.b, &g.out)
                .ok_or_else(|| "matmul of unusual shapes".to_string())
        };
        match unit::for_node(self.graph, node, self.symbols, Target::Cpu)? {
            Unit::Body(body) => {
                self.bodies.get(&body, &views, self.objects).map(Native::Code).map_err(|e| internal(&e))
            }
            Unit::Template(code) => {
                let key = template_key(&self.graph.nodes[node].op, &code.inputs, &views);
                if let Some(k) = self.templates.get(&key) {
                    return Ok(Native::Code(k.clone()));
                }
                let kernel = Arc::new(prepare_template_for(&code, &views, self.objects).map_err(|e| internal(&e))?);
                self.templates.insert(key, kernel.clone());
                Ok(Native::Code(kernel))
            }
            Unit::Gemm(g) => gemm(&g).map(Native::Gemm),
            Unit::GemmEpilogue { gemm: g, a, b, epilogue } => {
                let shape = g.out.clone();
                // The product is contiguous scratch space.
                let views = [inputs, &[true], outputs].concat();
                let epilogue = self.bodies.get(&epilogue, &views, self.objects).map_err(|e| internal(&e))?;
                Ok(Native::GemmEpilogue { gemm: gemm(&g)?, a, b, epilogue, shape })
            }
        }
    }
}

fn internal(e: &CodegenError) -> String {
    format!("codegen: {e}")
}

/// What makes two template instances the same code: the node's operation, shapes and
/// unit-stride views.
fn template_key(op: &Op, shapes: &[Vec<usize>], unit_last: &[bool]) -> String {
    format!("{op:?} {shapes:?} {unit_last:?}")
}

fn contiguous(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![1isize; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * shape[k + 1] as isize;
    }
    strides
}
