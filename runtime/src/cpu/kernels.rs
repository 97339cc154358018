//! Native code for a program's launches, prepared once before the first step so every step
//! runs the same machine code:
//! - fused kernels, and primitives launched alone that the generator compiles (a `silu`,
//!   a row `sum`), as generated code (`hyb_compiler::codegen::cpu`), constants folded in;
//! - the sequence primitives (conv1d, SSD scan, flash attention) as their templates;
//! - matmuls as GEMMs ([`Gemm`]), and GEMM kernels as a GEMM into scratch space followed
//!   by their epilogue as generated code.
//!
//! What has no native code yet runs with the reference semantics; the counts say how much
//! of the program that is, and why.

use super::gemm::{Gemm, GemmError};
use hyb_compiler::codegen::cpu::{compile_template, ArenaView, Cache, CpuKernel, RunError};
use hyb_compiler::codegen::{template, CodegenError, Symbols, Target};
use hyb_compiler::ir::{Graph, KernelKind, NodeId, Op};
use hyb_compiler::ops::{Prim, Primitive};
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
    /// Distinct generated kernels and templates compiled.
    pub compiled: usize,
    /// Wall time of compiling them.
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
    /// Prepares native code for every launch of `program` (planned from `graph`).
    pub fn compile(graph: &Graph, program: &Program) -> Kernels {
        let started = std::time::Instant::now();
        let symbols = Symbols { batch: program.batch, seq: program.seq };
        let mut builder = Builder { graph, symbols, bodies: Cache::new(symbols), templates: HashMap::new() };
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
                match builder.native(launch.node) {
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
        let compiled = builder.bodies.len() + builder.templates.len();
        Kernels { by_launch, interpreted, compiled, seconds: started.elapsed().as_secs_f64(), scratch }
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
            "{} of {} launches run native code ({} distinct kernels, compiled in {:.2} s)",
            self.generated(),
            self.generated() + self.interpreted.len(),
            self.compiled,
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

/// Compiles what launches need, each distinct body or template once.
struct Builder<'g> {
    graph: &'g Graph,
    symbols: Symbols,
    bodies: Cache,
    templates: HashMap<String, Arc<CpuKernel>>,
}

impl Builder<'_> {
    /// The native code of `node`, or why there is none.
    fn native(&mut self, node: NodeId) -> Result<Native, String> {
        let n = &self.graph.nodes[node];
        if let Some(code) = template::for_node(self.graph, node, self.symbols, Target::Cpu) {
            let code = code.map_err(|e| internal(&e))?;
            let key = template_key(&n.op, &code.inputs);
            if let Some(k) = self.templates.get(&key) {
                return Ok(Native::Code(k.clone()));
            }
            let kernel = Arc::new(compile_template(&code).map_err(|e| internal(&e))?);
            self.templates.insert(key, kernel.clone());
            return Ok(Native::Code(kernel));
        }
        match &n.op {
            Op::Prim(Prim::Matmul(m)) => {
                let [a, b] = [n.inputs[0], n.inputs[1]].map(|x| self.shape(x));
                let out = self.shape(node);
                if n.inputs.iter().any(|&x| matches!(self.graph.nodes[x].op, Op::Constant(_))) {
                    return Err("matmul of a constant".into());
                }
                Gemm::new(m.transpose_a, m.transpose_b, &a?, &b?, &out?)
                    .map(Native::Gemm)
                    .ok_or_else(|| "matmul of unusual shapes".into())
            }
            Op::Prim(p) if p.is_collective() => Err("collective".into()),
            Op::Prim(p) => {
                let body = self.one_node_body(node);
                self.bodies.get(&body).map(Native::Code).map_err(|_| p.name().to_string())
            }
            Op::Kernel(k) => {
                let body = self.specialised(&k.body, node);
                match k.kind {
                    KernelKind::Fused => self.bodies.get(&body).map(Native::Code).map_err(|e| internal(&e)),
                    KernelKind::Gemm => self.gemm_kernel(&body),
                    _ => Err(format!("{} kernel", k.kind.name())),
                }
            }
            _ => Err("not computed".into()),
        }
    }

    fn shape(&self, x: NodeId) -> Result<Vec<usize>, String> {
        let bind = self.symbols.binder();
        self.graph.nodes[x]
            .ty
            .shape
            .iter()
            .map(|d| d.eval(&bind).and_then(|v| usize::try_from(v).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| "unbound shape".to_string())
    }

    /// `node`'s primitive as a kernel body: constants copied in, other inputs numbered.
    fn one_node_body(&self, node: NodeId) -> Graph {
        let n = &self.graph.nodes[node];
        let mut body = Graph::default();
        let mut next = 0;
        let inputs: Vec<NodeId> = n
            .inputs
            .iter()
            .map(|&x| {
                let m = &self.graph.nodes[x];
                let op = match m.op {
                    Op::Constant(c) => Op::Constant(c),
                    _ => {
                        next += 1;
                        Op::Input((next - 1).to_string())
                    }
                };
                body.add(op, vec![], m.ty.clone())
            })
            .collect();
        let Op::Prim(p) = &n.op else { unreachable!("called for primitives") };
        body.outputs = body.apply_all(p.clone(), inputs);
        body
    }

    /// A kernel's body with the constants its node passes folded in and the remaining
    /// inputs renumbered, matching the launch's views (constants have none).
    fn specialised(&self, body: &Graph, node: NodeId) -> Graph {
        let args = &self.graph.nodes[node].inputs;
        let constant = |j: usize| match self.graph.nodes[args[j]].op {
            Op::Constant(c) => Some(c),
            _ => None,
        };
        if (0..args.len()).all(|j| constant(j).is_none()) {
            return body.clone();
        }
        let renumbered: Vec<Option<usize>> = (0..args.len())
            .scan(0, |next, j| {
                Some(constant(j).is_none().then(|| {
                    *next += 1;
                    *next - 1
                }))
            })
            .collect();
        let mut out = body.clone();
        for n in &mut out.nodes {
            if let Op::Input(name) = &n.op {
                let j: usize = name.parse().expect("kernel inputs are numbered");
                n.op = match renumbered[j] {
                    Some(k) => Op::Input(k.to_string()),
                    None => Op::Constant(constant(j).expect("not renumbered: a constant")),
                };
            }
        }
        out
    }

    /// A GEMM kernel: its one matmul, of two inputs, as a GEMM; everything after it as an
    /// epilogue body reading the product as one more input.
    fn gemm_kernel(&mut self, body: &Graph) -> Result<Native, String> {
        let matmuls: Vec<NodeId> =
            (0..body.nodes.len()).filter(|&i| matches!(body.nodes[i].op, Op::Prim(Prim::Matmul(_)))).collect();
        let [mm] = matmuls[..] else { return Err("gemm kernel without exactly one matmul".into()) };
        let Op::Prim(Prim::Matmul(m)) = &body.nodes[mm].op else { unreachable!() };
        let operand = |x: NodeId| match &body.nodes[x].op {
            Op::Input(name) => name.parse::<usize>().ok(),
            _ => None,
        };
        let (Some(a), Some(b)) = (operand(body.nodes[mm].inputs[0]), operand(body.nodes[mm].inputs[1])) else {
            return Err("gemm kernel whose matmul reads computed values".into());
        };
        let symbols = self.symbols;
        let resolve = |x: NodeId| -> Result<Vec<usize>, String> {
            let bind = symbols.binder();
            body.nodes[x]
                .ty
                .shape
                .iter()
                .map(|d| d.eval(&bind).and_then(|v| usize::try_from(v).ok()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| "unbound shape".to_string())
        };
        let (sa, sb, shape) = (resolve(body.nodes[mm].inputs[0])?, resolve(body.nodes[mm].inputs[1])?, resolve(mm)?);
        let gemm = Gemm::new(m.transpose_a, m.transpose_b, &sa, &sb, &shape).ok_or("matmul of unusual shapes")?;
        let inputs = body.input_nodes().count();
        let mut epilogue = body.clone();
        epilogue.nodes[mm].op = Op::Input(inputs.to_string());
        epilogue.nodes[mm].inputs.clear();
        let epilogue = self.bodies.get(&epilogue).map_err(|e| internal(&e))?;
        Ok(Native::GemmEpilogue { gemm, a, b, epilogue, shape })
    }
}

fn internal(e: &CodegenError) -> String {
    format!("codegen: {e}")
}

/// What makes two template instances the same code: the node's operation and shapes.
fn template_key(op: &Op, shapes: &[Vec<usize>]) -> String {
    format!("{op:?} {shapes:?}")
}

fn contiguous(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![1isize; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * shape[k + 1] as isize;
    }
    strides
}
