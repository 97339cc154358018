//! PTX for the H200 (sm_90): each nest a `gpu.func` kernel in one `gpu.module`, lowered by
//! MLIR's NVVM pipeline with the chip and the PTX ISA version given explicitly (MLIR does
//! not check one against the other), and the PTX text taken from the `gpu.binary` the
//! pipeline leaves. The math is the generator's own (`math`), so the PTX calls nothing
//! outside itself: no libdevice is needed to compile or to load it.
//!
//! Launching: every nest takes the same parameters — the views' base pointers (inputs,
//! then outputs), then every view's strides in elements, as `i64` — and loops grid-stride,
//! so any grid covers it; blocks must be a whole number of warps (at most 1024 threads).
//! [`GpuNest`] says what block size and grid a nest is written for. Views may hold f32 or
//! bf16 ([`compile_stored`]); a pointwise nest decides at run time, from the pointers and
//! strides it is given, whether it moves 16-byte vectors or single elements.

use super::body::{Body, Storage};
use super::emit::{self, Rows, Target};
use super::mlir::Session;
use super::template::{self, TemplateCode};
use super::{kernel_name, math, CodegenError, Symbols, BLOCK_THREADS};
use crate::ir::Graph;
use melior::ir::attribute::{ArrayAttribute, AttributeLike};
use melior::ir::block::BlockLike;
use melior::ir::operation::OperationLike;
use std::collections::BTreeSet;

/// The chip and PTX version the H200's driver (CUDA 13) loads.
const PIPELINE: &str = "builtin.module(inline, canonicalize, cse, \
                        gpu-lower-to-nvvm-pipeline{cubin-format=isa cubin-chip=sm_90 cubin-features=+ptx80 opt-level=3})";

/// A kernel body as PTX.
pub struct GpuKernel {
    pub name: String,
    /// The generated MLIR, before lowering.
    pub mlir: String,
    pub ptx: String,
    pub nests: Vec<GpuNest>,
    /// 64-bit parameters every nest takes (pointers and strides).
    pub parameters: usize,
    /// Elements of each workspace buffer the launcher allocates and passes after the
    /// outputs (f32 unless the template keeps one in bf16).
    pub workspace: Vec<usize>,
    /// Bytes of each workspace buffer, at its storage.
    pub workspace_bytes: Vec<usize>,
}

/// One `.entry` of the PTX module and how to launch it.
pub struct GpuNest {
    pub symbol: String,
    /// Whether a warp takes a row (nests with reductions) or a thread an element.
    pub per_warp: bool,
    /// Whether a block takes a row (reductions longer than [`super::BLOCK_ROW`]).
    pub per_block: bool,
    /// Rows (per warp or block) or elements (per thread) the grid covers.
    pub iterations: usize,
    /// The block size to launch with (any whole number of warps up to 1024 is correct).
    pub threads_per_block: usize,
    /// Iterations one block takes per grid-stride step: `iterations / rows_per_block`
    /// blocks (rounded up) give every iteration its own thread, warp or block.
    pub rows_per_block: usize,
    /// Elements a thread takes at once where every view is aligned (the vector path); the
    /// grid then needs `1 / vector_width` of the threads. 1 for nests without one.
    pub vector_width: usize,
    /// Static shared memory the entry declares (block reductions).
    pub shared_bytes: usize,
    /// Dynamic shared memory to launch with (cooperative template phases: tiles).
    pub dynamic_shared_bytes: usize,
}

impl GpuNest {
    /// How to launch a generated nest.
    fn new(code: &emit::NestCode) -> GpuNest {
        let threads = BLOCK_THREADS;
        let rows_per_block = match code.rows {
            Rows::Blocks => 1,
            Rows::Warps => threads / 32,
            Rows::Threads | Rows::Range => threads,
        };
        GpuNest {
            symbol: code.symbol.clone(),
            per_warp: code.rows == Rows::Warps,
            per_block: code.rows == Rows::Blocks,
            iterations: code.iterations,
            threads_per_block: threads,
            rows_per_block,
            vector_width: code.vector_width,
            shared_bytes: code.shared_bytes,
            dynamic_shared_bytes: 0,
        }
    }

    /// The grid for this nest: one thread, warp or block per iteration, capped at
    /// `max_blocks` (the grid-stride loops cover the rest).
    pub fn blocks(&self, max_blocks: usize) -> usize {
        self.iterations.div_ceil(self.rows_per_block).clamp(1, max_blocks.max(1))
    }
}

/// Compiles a fused kernel body to PTX for a program of `symbols`' sizes.
pub fn compile(body: &Graph, symbols: Symbols) -> Result<GpuKernel, CodegenError> {
    compile_stored(body, symbols, &[])
}

/// [`compile`] for views holding `storage` (inputs, then outputs; empty: all f32).
pub fn compile_stored(body: &Graph, symbols: Symbols, storage: &[Storage]) -> Result<GpuKernel, CodegenError> {
    let name = kernel_name(body);
    let resolved = Body::resolve(body, symbols)?.with_storage(storage)?;
    let mut functions = String::new();
    let mut uses = BTreeSet::new();
    let mut nests = Vec::new();
    for i in 0..resolved.nests.len() {
        let code = emit::nest(&resolved, i, Target::Gpu, &format!("{name}_{i}"))?;
        functions.push_str(&code.text);
        uses.extend(code.uses.iter().copied());
        nests.push(GpuNest::new(&code));
    }
    let mlir = format!(
        "module attributes {{gpu.container_module}} {{\n gpu.module @{name} {{\n{}{functions} }}\n}}\n",
        math::definitions(uses)
    );
    let ptx = lower(&name, &mlir)?;
    let ranks = resolved.view_ranks();
    let parameters = ranks.len() + ranks.iter().sum::<usize>();
    Ok(GpuKernel { name, mlir, ptx, nests, parameters, workspace: Vec::new(), workspace_bytes: Vec::new() })
}

/// Compiles a template's phases to PTX, one `.entry` per phase, launched in order.
pub fn compile_template(code: &TemplateCode) -> Result<GpuKernel, CodegenError> {
    compile_template_stored(code, &[])
}

/// [`compile_template`] for views holding `storage` (inputs, then outputs; empty: all
/// f32): bf16 views are widened on load and rounded to nearest even on store.
pub fn compile_template_stored(code: &TemplateCode, storage: &[Storage]) -> Result<GpuKernel, CodegenError> {
    code.check_storage(storage)?;
    let name = code.stored_name(storage);
    let cooperative = |i: usize| code.phases[i].cooperative;
    let shared = (0..code.phases.len()).any(|i| cooperative(i).is_some());
    let mlir = format!(
        "module attributes {{gpu.container_module}} {{\n gpu.module @{name} {{\n{}{}{} }}\n}}\n",
        if shared { template::SHARED_MEMORY } else { "" },
        math::definitions(code.uses(Target::Gpu, storage)),
        code.functions(Target::Gpu, &[], storage)
    );
    let ptx = lower(&name, &mlir)?;
    let nests = (0..code.phases.len())
        .map(|i| {
            let (threads, rows, dynamic) = match cooperative(i) {
                Some(c) => (c.threads, 1, c.shared_bytes),
                None => (BLOCK_THREADS, BLOCK_THREADS, 0),
            };
            GpuNest {
                symbol: code.symbol(i),
                per_warp: false,
                per_block: false,
                iterations: code.phases[i].items,
                threads_per_block: threads,
                rows_per_block: rows,
                vector_width: 1,
                shared_bytes: 0,
                dynamic_shared_bytes: dynamic,
            }
        })
        .collect();
    let ranks = code.view_ranks();
    let parameters = ranks.len() + ranks.iter().sum::<usize>();
    Ok(GpuKernel {
        name,
        mlir,
        ptx,
        nests,
        parameters,
        workspace: code.workspace.clone(),
        workspace_bytes: code.workspace_bytes(),
    })
}

/// Runs the NVVM pipeline over `mlir` and returns the PTX.
fn lower(name: &str, mlir: &str) -> Result<String, CodegenError> {
    let session = Session::new(name);
    let mut module = session.parse(mlir)?;
    session.lower(&mut module, PIPELINE, mlir)?;
    binary_text(&module).ok_or_else(|| session.failure("finding the PTX in the gpu.binary", mlir))
}

/// The object text of the module's first `gpu.binary`.
fn binary_text(module: &melior::ir::Module) -> Option<String> {
    let mut op = module.body().first_operation();
    while let Some(o) = op {
        if o.name().as_string_ref().as_str().ok() == Some("gpu.binary") {
            let objects = ArrayAttribute::try_from(o.attribute("objects").ok()?).ok()?;
            let object = objects.element(0).ok()?;
            let text = unsafe { mlir_sys::mlirGPUObjectAttrGetObject(object.to_raw()) };
            let bytes = unsafe { std::slice::from_raw_parts(text.data as *const u8, text.length) };
            return String::from_utf8(bytes.to_vec()).ok();
        }
        op = o.next_in_block();
    }
    None
}

/// The functions a PTX module calls without defining (`.extern .func`), which no driver
/// would resolve.
pub fn unresolved_calls(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter(|l| l.trim_start().starts_with(".extern .func"))
        .map(|l| l.trim().trim_end_matches(['(', ';']).to_string())
        .collect()
}
