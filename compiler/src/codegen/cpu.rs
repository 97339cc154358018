//! Native CPU code: a kernel body's nests compiled ahead of time to object code for the
//! host's CPU and features at O3 ([`super::object`]; LLVM's loop vectoriser does the SIMD),
//! each nest's function taking a range of rows so threads split the rows between them.
//! A kernel whose object code an [`Objects`] store already holds (an artifact, the cache
//! on disk) is only linked ([`super::link`]), not compiled.
//!
//! [`CpuKernel::run`] works on views of one `f32` arena, as the executor holds a program's
//! buffers: it checks every view against the arena and the compiled shapes, refuses
//! outputs that overlap anything but an identical view of an input the kernel reads only
//! element by element (an in-place update), and only then calls the generated code.
//! A kernel compiled for bf16 views ([`compile_stored`]) runs through
//! [`CpuKernel::run_raw`] instead, on buffers the caller owns.

use super::body::{Body, Storage};
use super::emit::{self, Access, Target};
use super::link::Linked;
use super::template::TemplateCode;
use super::{kernel_name, math, object, CodegenError, Symbols};
use crate::ir::Graph;
use rayon::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

pub use super::object::llvm_ir;

/// Below this many elements a nest runs on the calling thread: spawning costs more.
const ELEMENTS_PER_THREAD: usize = 1 << 15;

/// The signature of every nest's function: rows `begin..end`, the views' base pointers
/// (inputs, then outputs) and their strides, all views' in order.
type NestFn = unsafe extern "C" fn(i64, i64, *const *mut f32, *const i64);

/// A compiled kernel body.
pub struct CpuKernel {
    name: String,
    mlir: String,
    inputs: Vec<Vec<usize>>,
    outputs: Vec<Vec<usize>>,
    /// Views (inputs, then outputs) compiled for a last-axis stride of 1.
    unit_last: Vec<bool>,
    /// Elements of each workspace buffer a template's phases share.
    workspace: Vec<usize>,
    scratch: std::sync::Mutex<Vec<Vec<f32>>>,
    nests: Vec<CompiledNest>,
    origin: Origin,
    _code: Linked,
}

/// Where a kernel's machine code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Compiled from its MLIR in this process.
    Compiled,
    /// Object code an [`Objects`] store held, linked without compiling.
    Loaded,
}

/// Where object code is kept between runs (an artifact, a cache on disk), by
/// [`object::key`]: kernels look there before compiling, and hand over what they compiled.
pub trait Objects: Sync {
    /// The object code of `key`, if held (it may still be damaged: it is linked before use).
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Keeps `object`, the code of `key`.
    fn put(&self, key: &str, object: &[u8]);
}

/// No store: every kernel compiles.
pub struct NoObjects;

impl Objects for NoObjects {
    fn get(&self, _: &str) -> Option<Vec<u8>> {
        None
    }

    fn put(&self, _: &str, _: &[u8]) {}
}

struct CompiledNest {
    entry: NestFn,
    rows: usize,
    elements: usize,
    outputs: Vec<usize>,
    access: Vec<Access>,
}

/// A view of the arena a kernel reads or writes, in elements.
#[derive(Clone, Copy, Debug)]
pub struct ArenaView<'a> {
    pub offset: usize,
    pub shape: &'a [usize],
    pub strides: &'a [isize],
}

/// A view of memory the caller owns ([`CpuKernel::run_raw`]): a pointer to its element 0,
/// its shape and its strides in elements of its storage type.
#[derive(Clone, Copy, Debug)]
pub struct RawView<'a> {
    pub base: *mut u8,
    pub shape: &'a [usize],
    pub strides: &'a [isize],
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunError {
    #[error("kernel `{kernel}` takes {expected} {what} views, got {got}")]
    Count { kernel: String, what: &'static str, expected: usize, got: usize },
    #[error("kernel `{kernel}`: {what} {index} has shape {got:?}, compiled for {expected:?}")]
    Shape { kernel: String, what: &'static str, index: usize, expected: Vec<usize>, got: Vec<usize> },
    #[error("kernel `{kernel}`: {what} {index} reaches outside the arena of {len} elements")]
    OutOfBounds { kernel: String, what: &'static str, index: usize, len: usize },
    #[error("kernel `{kernel}`: {what} {index} was compiled for a last-axis stride of 1")]
    Layout { kernel: String, what: &'static str, index: usize },
    #[error("kernel `{kernel}`: output {index} {why}")]
    Overlap { kernel: String, index: usize, why: String },
}

/// A fused kernel body's generated MLIR, and each nest's function with its rows, elements,
/// outputs and how it reads the inputs.
fn body_module<'g>(
    body: &'g Graph,
    symbols: Symbols,
    unit_last: &[bool],
) -> Result<(String, Vec<NestPlan>, Body<'g>), CodegenError> {
    stored_module(body, symbols, unit_last, &[])
}

/// [`body_module`] for views holding `storage` (empty: all f32).
fn stored_module<'g>(
    body: &'g Graph,
    symbols: Symbols,
    unit_last: &[bool],
    storage: &[Storage],
) -> Result<(String, Vec<NestPlan>, Body<'g>), CodegenError> {
    let name = kernel_name(body);
    let mut resolved = Body::resolve(body, symbols)?.with_storage(storage)?;
    if unit_last.len() == resolved.unit_last.len() {
        resolved.unit_last = unit_last.to_vec();
    }
    let mut functions = String::new();
    let mut uses = BTreeSet::new();
    let mut nests = Vec::new();
    for (i, nest) in resolved.nests.iter().enumerate() {
        let code = emit::nest(&resolved, i, Target::Cpu, &format!("{name}_{i}"))?;
        functions.push_str(&code.text);
        uses.extend(code.uses.iter().copied());
        nests.push((code.symbol, nest.rows(), nest.rows() * nest.inner(), nest.outputs.clone(), code.access));
    }
    Ok((format!("module {{\n{}{functions}}}\n", math::definitions(uses)), nests, resolved))
}

/// A nest's function: symbol, rows, elements, outputs, access per input.
type NestPlan = (String, usize, usize, Vec<usize>, Vec<Access>);

/// The MLIR generated for a fused kernel body, before lowering (`hyb compile --emit mlir`).
pub fn body_mlir(body: &Graph, symbols: Symbols) -> Result<String, CodegenError> {
    Ok(body_module(body, symbols, &[])?.0)
}

/// The MLIR generated for a template, before lowering; views marked in `unit_last` have a
/// last-axis stride of 1.
pub fn template_mlir(code: &TemplateCode, unit_last: &[bool]) -> String {
    stored_template_mlir(code, unit_last, &[])
}

fn stored_template_mlir(code: &TemplateCode, unit_last: &[bool], storage: &[Storage]) -> String {
    let uses = code.uses(Target::Cpu, storage);
    format!("module {{\n{}{}}}\n", math::definitions(uses), code.functions(Target::Cpu, unit_last, storage))
}

/// Compiles a fused kernel body for a program of `symbols`' sizes, for views of any layout.
pub fn compile(body: &Graph, symbols: Symbols) -> Result<CpuKernel, CodegenError> {
    compile_for(body, symbols, &[])
}

/// [`compile`] for views whose last axis has stride 1 where `unit_last` (inputs, then
/// outputs) says so: that stride is a constant of the code, so LLVM vectorises the inner
/// loops, and the kernel refuses views that do not have it.
pub fn compile_for(body: &Graph, symbols: Symbols, unit_last: &[bool]) -> Result<CpuKernel, CodegenError> {
    prepare_stored(body, symbols, unit_last, &[], &NoObjects)
}

/// [`compile_for`] for views holding `storage` (inputs, then outputs): bf16 views are
/// widened to f32 on load and rounded to nearest even on store. Run it with
/// [`CpuKernel::run_raw`] (the f32 arena of [`CpuKernel::run`] cannot hold bf16).
pub fn compile_stored(
    body: &Graph,
    symbols: Symbols,
    unit_last: &[bool],
    storage: &[Storage],
) -> Result<CpuKernel, CodegenError> {
    prepare_stored(body, symbols, unit_last, storage, &NoObjects)
}

/// [`compile_for`], linking the object code `objects` holds for the kernel instead of
/// compiling it, and handing `objects` what it compiles.
pub fn prepare_for(
    body: &Graph,
    symbols: Symbols,
    unit_last: &[bool],
    objects: &dyn Objects,
) -> Result<CpuKernel, CodegenError> {
    prepare_stored(body, symbols, unit_last, &[], objects)
}

/// [`prepare_for`] for views holding `storage`.
fn prepare_stored(
    body: &Graph,
    symbols: Symbols,
    unit_last: &[bool],
    storage: &[Storage],
    objects: &dyn Objects,
) -> Result<CpuKernel, CodegenError> {
    let name = kernel_name(body);
    let (mlir, nests, resolved) = stored_module(body, symbols, unit_last, storage)?;
    let symbols: Vec<&str> = nests.iter().map(|n| n.0.as_str()).collect();
    let (code, entries, origin) = machine_code(&name, &mlir, &resolved.unit_last, &symbols, objects)?;
    let nests = nests
        .into_iter()
        .zip(entries)
        .map(|((_, rows, elements, outputs, access), entry)| CompiledNest { entry, rows, elements, outputs, access })
        .collect();
    Ok(CpuKernel {
        name,
        mlir,
        inputs: resolved.input_shapes(),
        outputs: resolved.output_shapes(),
        unit_last: resolved.unit_last.clone(),
        workspace: Vec::new(),
        scratch: Default::default(),
        nests,
        origin,
        _code: code,
    })
}

/// Compiles a template's phases, for views of any layout; they run in order, each over
/// its items.
pub fn compile_template(code: &TemplateCode) -> Result<CpuKernel, CodegenError> {
    compile_template_for(code, &[])
}

/// [`compile_template`] for views whose last axis has stride 1 where `unit_last` says so.
pub fn compile_template_for(code: &TemplateCode, unit_last: &[bool]) -> Result<CpuKernel, CodegenError> {
    prepare_template_for(code, unit_last, &NoObjects)
}

/// [`compile_template_for`] for views holding `storage` (inputs, then outputs): how the
/// GPU's bf16 templates are checked on the CPU. Run it with [`CpuKernel::run_raw`].
pub fn compile_template_stored(
    code: &TemplateCode,
    unit_last: &[bool],
    storage: &[Storage],
) -> Result<CpuKernel, CodegenError> {
    prepare_template_stored(code, unit_last, storage, &NoObjects)
}

/// [`compile_template_for`], with object code from and for `objects` (see [`prepare_for`]).
pub fn prepare_template_for(
    code: &TemplateCode,
    unit_last: &[bool],
    objects: &dyn Objects,
) -> Result<CpuKernel, CodegenError> {
    prepare_template_stored(code, unit_last, &[], objects)
}

fn prepare_template_stored(
    code: &TemplateCode,
    unit_last: &[bool],
    storage: &[Storage],
    objects: &dyn Objects,
) -> Result<CpuKernel, CodegenError> {
    code.check_storage(storage)?;
    // The CPU keeps its workspace as f32 buffers.
    if code.workspace_storage.iter().any(|&s| s != Storage::F32) {
        return Err(CodegenError::Unsupported {
            node: 0,
            primitive: code.name.clone(),
            why: "a bf16 workspace is GPU code".into(),
        });
    }
    let mlir = stored_template_mlir(code, unit_last, storage);
    let symbols: Vec<String> = (0..code.phases.len()).map(|i| code.symbol(i)).collect();
    let names: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let (linked, entries, origin) = machine_code(&code.stored_name(storage), &mlir, unit_last, &names, objects)?;
    let every_output: Vec<usize> = (0..code.outputs.len()).collect();
    let nests = code
        .phases
        .iter()
        .zip(entries)
        .map(|(p, entry)| CompiledNest {
            entry,
            rows: p.items,
            elements: p.items * p.work_per_item.max(1),
            outputs: every_output.clone(),
            access: (0..code.inputs.len())
                .map(|k| if code.in_place.iter().any(|&(_, i)| i == k) { Access::OwnIndex } else { Access::Elsewhere })
                .collect(),
        })
        .collect();
    Ok(CpuKernel {
        name: code.name.clone(),
        mlir,
        inputs: code.inputs.clone(),
        outputs: code.outputs.clone(),
        unit_last: unit_last.to_vec(),
        workspace: code.workspace.clone(),
        scratch: Default::default(),
        nests,
        origin,
        _code: linked,
    })
}

/// The linked machine code of `mlir` and the address of each of `symbols` (functions
/// with the [`NestFn`] signature): `objects`' object code if it holds some that links,
/// else freshly compiled object code, which `objects` then keeps.
fn machine_code(
    name: &str,
    mlir: &str,
    unit_last: &[bool],
    symbols: &[&str],
    objects: &dyn Objects,
) -> Result<(Linked, Vec<NestFn>, Origin), CodegenError> {
    let key = object::key(mlir, unit_last);
    // Object code that does not link (damaged, or not this kernel's) is as good as none.
    if let Some(found) = objects.get(&key).and_then(|o| link(name, &o, symbols).ok()) {
        return Ok((found.0, found.1, Origin::Loaded));
    }
    let compiled = object::compile(name, mlir)?;
    let (linked, entries) = link(name, &compiled, symbols).map_err(|message| CodegenError::Mlir {
        kernel: name.to_string(),
        stage: "linking the object code",
        message,
        dump: None,
    })?;
    objects.put(&key, &compiled);
    Ok((linked, entries, Origin::Compiled))
}

/// Links `code` and looks up `symbols` in it.
fn link(name: &str, code: &[u8], symbols: &[&str]) -> Result<(Linked, Vec<NestFn>), String> {
    let linked = Linked::new(name, code)?;
    let entries = symbols
        .iter()
        .map(|symbol| {
            // The generator wrote every function with exactly this signature.
            linked.lookup(symbol).map(|a| unsafe { std::mem::transmute::<*mut std::ffi::c_void, NestFn>(a) })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((linked, entries))
}

impl CpuKernel {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the kernel was compiled here or its object code loaded.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The generated MLIR, before lowering.
    pub fn mlir(&self) -> &str {
        &self.mlir
    }

    /// Runs the kernel over `arena`: reads `inputs`, writes `outputs` (the body's inputs
    /// and outputs, in order), rows split over the machine's cores.
    pub fn run(&self, arena: &mut [f32], inputs: &[ArenaView], outputs: &[ArenaView]) -> Result<(), RunError> {
        self.check(arena.len(), inputs, outputs)?;
        let base = arena.as_mut_ptr();
        let views = inputs.iter().chain(outputs);
        // In bounds (checked above), so each base pointer lies inside the arena.
        let pointers: Vec<*mut f32> = views.clone().map(|v| unsafe { base.add(v.offset) }).collect();
        let strides: Vec<i64> = views.flat_map(|v| v.strides.iter().map(|&s| s as i64)).collect();
        // The views were checked: every element a nest reaches is in the arena, and
        // outputs overlap nothing they must not.
        unsafe { self.launch(pointers, strides) };
        Ok(())
    }

    /// Runs the kernel on views the caller laid out: each a pointer to its element 0 (in
    /// the storage the kernel was compiled for, f32 or bf16), its shape and its strides in
    /// elements. Only the views' number, shapes and the compiled unit last strides are
    /// checked.
    ///
    /// # Safety
    /// Every element each view reaches through its strides must be valid memory of the
    /// view's storage type, and no output may overlap another view, except an identical
    /// view of an input that the kernel reads element by element (an in-place update).
    pub unsafe fn run_raw(&self, inputs: &[RawView], outputs: &[RawView]) -> Result<(), RunError> {
        self.check_count("input", inputs.len())?;
        self.check_count("output", outputs.len())?;
        for (at, v) in inputs.iter().chain(outputs).enumerate() {
            self.check_layout(at, &ArenaView { offset: 0, shape: v.shape, strides: v.strides })?;
        }
        let views = inputs.iter().chain(outputs);
        let pointers = views.clone().map(|v| v.base.cast::<f32>()).collect();
        let strides = views.flat_map(|v| v.strides.iter().map(|&s| s as i64)).collect();
        // The caller vouches for the memory (this function's contract).
        unsafe { self.launch(pointers, strides) };
        Ok(())
    }

    /// Calls every nest over views at `pointers` with `strides` (all views' in order),
    /// appending the workspace, rows split over the machine's cores.
    ///
    /// # Safety
    /// The views must be valid for the kernel, as [`CpuKernel::run_raw`] requires.
    unsafe fn launch(&self, mut pointers: Vec<*mut f32>, mut strides: Vec<i64>) {
        // The workspace is kept between runs (no page faults on every call) and zeroed.
        let mut workspace = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if workspace.is_empty() {
            *workspace = self.workspace.iter().map(|&n| vec![0.0; n]).collect();
        } else {
            workspace.iter_mut().for_each(|w| w.fill(0.0));
        }
        pointers.extend(workspace.iter_mut().map(|w| w.as_mut_ptr()));
        strides.extend(self.workspace.iter().map(|_| 1));
        let args = &Args { pointers: pointers.as_ptr(), strides: strides.as_ptr() };
        let cores = rayon::current_num_threads();
        for nest in &self.nests {
            let threads = cores.min(nest.rows).min(nest.elements.div_ceil(ELEMENTS_PER_THREAD)).max(1);
            let call = |begin: usize, end: usize| {
                // The views were checked: every element the nest reaches for rows
                // `begin..end` is in the arena, and no other thread writes it.
                unsafe { (nest.entry)(begin as i64, end as i64, args.pointers, args.strides) }
            };
            if threads == 1 {
                call(0, nest.rows);
                continue;
            }
            // rayon's threads persist, so a launch costs no thread creation.
            let chunk = nest.rows.div_ceil(threads);
            rayon::scope(|s| {
                for t in 1..threads {
                    let (begin, end) = (t * chunk, ((t + 1) * chunk).min(nest.rows));
                    if begin < end {
                        s.spawn(move |_| call(begin, end));
                    }
                }
                call(0, chunk.min(nest.rows));
            });
        }
    }

    /// That `got` views are what the kernel takes as `what` ("input" or "output").
    fn check_count(&self, what: &'static str, got: usize) -> Result<(), RunError> {
        let expected = if what == "input" { self.inputs.len() } else { self.outputs.len() };
        if got != expected {
            return Err(RunError::Count { kernel: self.name.clone(), what, expected, got });
        }
        Ok(())
    }

    /// That view `at` (inputs, then outputs) has the compiled shape and, where compiled
    /// for it, a unit last stride.
    fn check_layout(&self, at: usize, v: &ArenaView) -> Result<(), RunError> {
        let (what, index, shape) = match at.checked_sub(self.inputs.len()) {
            None => ("input", at, &self.inputs[at]),
            Some(o) => ("output", o, &self.outputs[o]),
        };
        let kernel = self.name.clone();
        if v.shape != shape.as_slice() || v.strides.len() != shape.len() {
            return Err(RunError::Shape { kernel, what, index, expected: shape.clone(), got: v.shape.to_vec() });
        }
        if self.unit_last.get(at).copied().unwrap_or(false) && !v.unit_last() {
            return Err(RunError::Layout { kernel, what, index });
        }
        Ok(())
    }

    fn check(&self, len: usize, inputs: &[ArenaView], outputs: &[ArenaView]) -> Result<(), RunError> {
        let kernel = || self.name.clone();
        self.check_count("input", inputs.len())?;
        self.check_count("output", outputs.len())?;
        for (at, v) in inputs.iter().chain(outputs).enumerate() {
            self.check_layout(at, v)?;
            if span(v).is_none_or(|(_, hi)| hi >= len) {
                let (what, index) = if at < inputs.len() { ("input", at) } else { ("output", at - inputs.len()) };
                return Err(RunError::OutOfBounds { kernel: kernel(), what, index, len });
            }
        }
        let overlap = |index: usize, why: String| RunError::Overlap { kernel: kernel(), index, why };
        for (o, v) in outputs.iter().enumerate() {
            if !injective(v) {
                return Err(overlap(o, "writes some elements twice (a broadcast or overlapping strides)".into()));
            }
            let (lo, hi) = span(v).expect("checked above");
            for (p, w) in outputs.iter().enumerate().filter(|&(p, _)| p != o) {
                let (a, b) = span(w).expect("checked above");
                if lo <= b && a <= hi && !apart_in_rows(v, w) {
                    return Err(overlap(o, format!("overlaps output {p}")));
                }
            }
            for (k, w) in inputs.iter().enumerate() {
                let (a, b) = span(w).expect("checked above");
                if hi < a || b < lo {
                    continue;
                }
                let same = w.offset == v.offset && w.shape == v.shape && w.strides == v.strides;
                let in_place = same
                    && self.nests.iter().all(|n| {
                        let writes = n.outputs.contains(&o);
                        n.access[k] == Access::Unread || (writes && n.access[k] == Access::OwnIndex)
                    });
                if !in_place {
                    return Err(overlap(o, format!("overlaps input {k}, which the kernel reads at other elements")));
                }
            }
        }
        Ok(())
    }
}

/// The views' pointers and strides, handed to the threads that run a nest.
struct Args {
    pointers: *const *mut f32,
    strides: *const i64,
}

// Threads only pass the pointers on to generated code, which reads the inputs and writes
// disjoint rows of the outputs.
unsafe impl Sync for Args {}

impl ArenaView<'_> {
    /// The lowest and highest element the view reaches (`None` below zero).
    pub fn span(&self) -> Option<(usize, usize)> {
        span(self)
    }

    /// Whether its last axis steps one element at a time (or has one element, or none).
    pub fn unit_last(&self) -> bool {
        match (self.shape.last(), self.strides.last()) {
            (Some(&n), Some(&s)) => n <= 1 || s == 1,
            _ => true,
        }
    }
}

fn span(v: &ArenaView) -> Option<(usize, usize)> {
    let (mut lo, mut hi) = (v.offset as isize, v.offset as isize);
    for (&n, &s) in v.shape.iter().zip(v.strides) {
        if n == 0 {
            return Some((v.offset, v.offset));
        }
        let reach = (n as isize - 1) * s;
        if reach < 0 {
            lo += reach;
        } else {
            hi += reach;
        }
    }
    (lo >= 0).then_some((lo as usize, hi as usize))
}

/// Whether distinct indices of the view are distinct elements: sorted by stride, each
/// axis steps past everything the smaller axes reach.
/// Whether two views whose spans meet still share no element: for some pitch, each lies
/// within one column range of every row of that pitch (its other strides multiples of it),
/// and the ranges are apart, as the blocks of a concat written in place by one launch are.
fn apart_in_rows(v: &ArenaView, w: &ArenaView) -> bool {
    let base = v.offset.min(w.offset);
    let columns = |x: &ArenaView, pitch: usize| -> Option<(usize, usize)> {
        let mut width = 1;
        for (&n, &s) in x.shape.iter().zip(x.strides) {
            let s = usize::try_from(s).ok()?;
            match n {
                0 => return None,
                1 => {}
                _ if s >= pitch && s % pitch == 0 => {}
                _ if s < pitch => width += (n - 1) * s,
                _ => return None,
            }
        }
        let start = (x.offset - base) % pitch;
        (start + width <= pitch).then_some((start, start + width))
    };
    let pitches = v.strides.iter().chain(w.strides).filter_map(|&s| usize::try_from(s).ok()).filter(|&s| s > 1);
    pitches.into_iter().any(|pitch| match (columns(v, pitch), columns(w, pitch)) {
        (Some((a, b)), Some((c, d))) => b <= c || d <= a,
        _ => false,
    })
}

fn injective(v: &ArenaView) -> bool {
    let mut axes: Vec<(usize, usize)> =
        v.shape.iter().zip(v.strides).filter(|(&n, _)| n > 1).map(|(&n, &s)| (s.unsigned_abs(), n)).collect();
    axes.sort();
    let mut reach = 0usize;
    for (s, n) in axes {
        if s <= reach {
            return false;
        }
        reach += s * (n - 1);
    }
    true
}

/// Compiled kernels by body, for one program's sizes: each distinct body compiles once.
pub struct Cache {
    symbols: Symbols,
    kernels: HashMap<(Vec<u8>, Vec<bool>), Arc<CpuKernel>>,
}

impl Cache {
    pub fn new(symbols: Symbols) -> Cache {
        Cache { symbols, kernels: HashMap::new() }
    }

    /// The kernel of `body` for views with `unit_last` (see [`prepare_for`]), prepared on
    /// first use with `objects`' object code.
    pub fn get(
        &mut self,
        body: &Graph,
        unit_last: &[bool],
        objects: &dyn Objects,
    ) -> Result<Arc<CpuKernel>, CodegenError> {
        let key = (bincode::serialize(body).expect("a graph serialises"), unit_last.to_vec());
        if let Some(k) = self.kernels.get(&key) {
            return Ok(k.clone());
        }
        let kernel = Arc::new(prepare_for(body, self.symbols, unit_last, objects)?);
        self.kernels.insert(key, kernel.clone());
        Ok(kernel)
    }

    /// Prepares every body of `wanted` not yet held, in parallel (each in an MLIR context
    /// and LLVM module of its own); one that fails is left for [`Cache::get`] to report.
    pub fn prepare_all(&mut self, wanted: Vec<(&Graph, Vec<bool>)>, objects: &dyn Objects) {
        let mut missing = HashMap::new();
        for (body, unit_last) in wanted {
            let key = (bincode::serialize(body).expect("a graph serialises"), unit_last);
            if !self.kernels.contains_key(&key) && !missing.contains_key(&key) {
                missing.insert(key, body);
            }
        }
        let symbols = self.symbols;
        let prepared: Vec<_> = missing
            .into_par_iter()
            .filter_map(|(key, body)| Some((key.clone(), Arc::new(prepare_for(body, symbols, &key.1, objects).ok()?))))
            .collect();
        self.kernels.extend(prepared);
    }

    pub fn len(&self) -> usize {
        self.kernels.len()
    }

    /// The kernels prepared so far.
    pub fn kernels(&self) -> impl Iterator<Item = &Arc<CpuKernel>> {
        self.kernels.values()
    }

    pub fn is_empty(&self) -> bool {
        self.kernels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::{apart_in_rows, ArenaView};

    fn view<'a>(offset: usize, shape: &'a [usize], strides: &'a [isize]) -> ArenaView<'a> {
        ArenaView { offset, shape, strides }
    }

    #[test]
    fn blocks_of_one_row_pitch_are_apart_only_where_their_columns_are() {
        // Columns 0..512 (as 8 × 64) and 512..640 (as 2 × 64) of rows of 4,120, from 10.
        let (a, b) = ([2, 3, 8, 64], [2, 3, 2, 64]);
        let strides = [3 * 4120, 4120, 64, 1];
        assert!(apart_in_rows(&view(10, &a, &strides), &view(522, &b, &strides)));
        // One column further left, they share column 511.
        assert!(!apart_in_rows(&view(10, &a, &strides), &view(521, &b, &strides)));
        // A block wider than the row wraps into the next: no pitch separates them.
        let wide = [2, 3, 4121];
        assert!(!apart_in_rows(&view(0, &wide, &[3 * 4120, 4120, 1]), &view(4120, &[1, 1, 1], &[1, 1, 1])));
        // Transposed blocks (column stride the pitch's multiple) are judged by rows alike.
        assert!(apart_in_rows(&view(0, &[4, 2], &[1, 8]), &view(4, &[4, 2], &[1, 8])));
        assert!(!apart_in_rows(&view(0, &[4, 2], &[1, 8]), &view(3, &[4, 2], &[1, 8])));
    }
}
