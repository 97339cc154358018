//! Templates: the loop structure of the primitives whose meaning is a sequence algorithm
//! (the causal conv1d, the SSD scan, flash attention, and their decoding steps over caches),
//! written once per primitive and generated for each program's shapes. The kernel generator walks pointwise bodies; these
//! need an order of work (a scan's recurrence, attention's online softmax) that a body does
//! not say, so each template says it.
//!
//! A template is a sequence of [`Phase`]s, each a loop over independent work items whose
//! body is target-neutral MLIR ([`text::Text`]); [`wrap`] puts a phase in a CPU function
//! (a range of items per call, so threads split them) or a GPU kernel (an item per
//! thread, grid-stride). Phases run one after another, so a later phase may read what an
//! earlier one wrote to the template's workspace. Every phase is race-free and its sums run
//! in a fixed order, so results do not depend on the number of threads. A template for
//! other hardware (tensor cores) only has to give other phases for that target.
//!
//! Views are numbered inputs, then outputs, then workspace buffers; each is a base pointer
//! and a stride per axis, so a template reads its operands where the plan laid them out.

pub mod attention;
pub mod conv1d;
mod gather;
pub mod pieces;
mod position;
pub mod ssd_scan;
pub mod tensor_core;
pub mod text;
mod wrap;

pub use wrap::{cpu_function, gpu_function, SHARED_MEMORY};

use super::emit::Target;
use super::math::Func;
use super::{CodegenError, Storage, Symbols};
use crate::ir::{Graph, KernelKind, NodeId, Op};
use crate::ops::Prim;
use conv1d::GradOperands;
use std::collections::BTreeSet;

/// A template's code for one node at one program's sizes.
pub struct TemplateCode {
    /// A stable name: the template and its shapes.
    pub name: String,
    pub inputs: Vec<Vec<usize>>,
    pub outputs: Vec<Vec<usize>>,
    /// Elements of each workspace buffer (contiguous, one axis).
    pub workspace: Vec<usize>,
    /// How each workspace buffer stores its elements (f32 where this is shorter): a
    /// tensor-core template keeps the copies it stages into shared memory in bf16, so that
    /// they stage by 16-byte asynchronous copies.
    pub workspace_storage: Vec<Storage>,
    /// `(output, input)` pairs the output may be planned over in place (a decoding cache
    /// updated in its own buffer): every item reads what it overwrites of the input
    /// before writing it, and nothing another item writes.
    pub in_place: Vec<(usize, usize)>,
    pub phases: Vec<Phase>,
}

/// One loop over independent work items.
pub struct Phase {
    /// What the phase computes (the function's name is the kernel's name and this).
    pub what: &'static str,
    pub items: usize,
    /// Roughly the elements one item touches, so the CPU knows when threads pay.
    pub work_per_item: usize,
    /// The body of one item, with `%item` its index.
    pub body: text::Text,
    /// Set where a whole thread block works on each item together (tensor-core tiles);
    /// else a thread takes an item.
    pub cooperative: Option<Cooperative>,
}

/// How a phase whose item is a thread block runs: its body also sees `%tid` (the thread
/// in the block, `i64`) and `%smem` (the block's dynamic shared memory, `!llvm.ptr<3>`).
/// GPU only: a template gives such phases for the GPU alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cooperative {
    pub threads: usize,
    /// Dynamic shared memory each block needs.
    pub shared_bytes: usize,
}

impl TemplateCode {
    /// The rank of every view: inputs, outputs, workspace.
    pub fn view_ranks(&self) -> Vec<usize> {
        let ws = self.workspace.iter().map(|_| 1);
        self.inputs.iter().chain(&self.outputs).map(Vec::len).chain(ws).collect()
    }

    /// The function of phase `phase`: the template's name, what the phase does, its place.
    pub fn symbol(&self, phase: usize) -> String {
        format!("{}_{}{phase}", self.name, self.phases[phase].what)
    }

    /// The math functions the phases call, with views stored as `storage`.
    pub fn uses(&self, target: Target, storage: &[Storage]) -> BTreeSet<Func> {
        let storage = self.every_storage(storage);
        self.phases.iter().flat_map(|p| p.body.uses_with(target, &storage)).collect()
    }

    /// The storage of every view: `storage` for the inputs and outputs (f32 where it is
    /// shorter), then the workspace buffers'.
    fn every_storage(&self, storage: &[Storage]) -> Vec<Storage> {
        let mut every = storage.to_vec();
        every.resize(self.inputs.len() + self.outputs.len(), Storage::F32);
        every.extend((0..self.workspace.len()).map(|i| self.workspace_storage.get(i).copied().unwrap_or_default()));
        every
    }

    /// Bytes of each workspace buffer, as the launcher allocates them.
    pub fn workspace_bytes(&self) -> Vec<usize> {
        let bytes = |i: usize| match self.workspace_storage.get(i).copied().unwrap_or_default() {
            Storage::F32 => 4,
            Storage::Bf16 => 2,
        };
        self.workspace.iter().enumerate().map(|(i, &n)| n.max(1) * bytes(i)).collect()
    }

    /// The name of the template's code for views stored as `storage` (inputs, then
    /// outputs; f32 where it is shorter): the template's name, marked where a view is not
    /// f32, so code for each storage compiles once under its own name.
    pub fn stored_name(&self, storage: &[Storage]) -> String {
        if storage.iter().all(|&s| s == Storage::F32) {
            return self.name.clone();
        }
        let marks: String = storage.iter().map(|s| if *s == Storage::Bf16 { 'h' } else { 'f' }).collect();
        format!("{}_{marks}", self.name)
    }

    /// Checks that `storage` gives one type per input and output view (or none: all f32).
    pub fn check_storage(&self, storage: &[Storage]) -> Result<(), CodegenError> {
        let views = self.inputs.len() + self.outputs.len();
        if storage.is_empty() || storage.len() == views {
            return Ok(());
        }
        Err(CodegenError::Unsupported {
            node: 0,
            primitive: self.name.clone(),
            why: format!("{} storage types given for {views} views", storage.len()),
        })
    }

    /// Every phase's function for `target`, views stored as `storage` (inputs, then outputs;
    /// the workspace as `workspace_storage` says); on the CPU, views marked in `unit_last`
    /// (inputs, then outputs) have a last-axis stride of 1.
    pub fn functions(&self, target: Target, unit_last: &[bool], storage: &[Storage]) -> String {
        let ranks = self.view_ranks();
        let storage = &self.every_storage(storage);
        // Workspace buffers are contiguous by construction.
        let mut unit = unit_last.to_vec();
        unit.resize(self.inputs.len() + self.outputs.len(), false);
        unit.extend(self.workspace.iter().map(|_| true));
        let unit_last = unit.as_slice();
        (0..self.phases.len())
            .map(|i| match target {
                Target::Cpu => cpu_function(&self.symbol(i), &ranks, unit_last, &self.phases[i], storage),
                Target::Gpu => gpu_function(&self.symbol(i), &ranks, &self.phases[i], storage),
            })
            .collect()
    }
}

/// The template that implements `node` of `graph`, if one does, generated for `symbols`.
pub fn for_node(
    graph: &Graph,
    node: NodeId,
    symbols: Symbols,
    target: Target,
) -> Option<Result<TemplateCode, CodegenError>> {
    let n = &graph.nodes[node];
    let shape = |x: NodeId| super::body::Body::shape_of(graph, x, symbols);
    let inputs = || n.inputs.iter().map(|&x| shape(x)).collect::<Result<Vec<_>, _>>();
    let size = |d: &hyb_dsl::dim::Dim| {
        d.eval(&symbols.binder())
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| CodegenError::Unbound { node, shape: d.to_string() })
    };
    match &n.op {
        Op::Prim(Prim::CausalConv1d(_)) => Some(inputs().map(|s| conv1d::forward(&s, false, false, target))),
        Op::Prim(Prim::CausalConv1dGrad(g)) => {
            Some(inputs().map(|s| conv1d::backward(&s, GradOperands::of_prim(g.bias, false), target)))
        }
        Op::Prim(Prim::DocumentConv1d(_)) => Some(inputs().map(|s| conv1d::forward(&s, true, false, target))),
        Op::Prim(Prim::DocumentConv1dGrad(g)) => {
            Some(inputs().map(|s| conv1d::backward(&s, GradOperands::of_prim(g.bias, true), target)))
        }
        Op::Prim(Prim::Embedding(_)) => Some(inputs().map(|s| gather::embedding(&s[0], &s[1]))),
        Op::Prim(Prim::OneHot(h)) => Some(inputs().and_then(|s| Ok(gather::one_hot(&s[0], size(&h.depth)?, target)))),
        Op::Prim(Prim::EmbeddingGrad(e)) => {
            Some(inputs().and_then(|s| Ok(gather::embedding_grad(&s[0], &s[1], size(&e.vocab)?, target))))
        }
        Op::Prim(Prim::Rope(r)) => Some(inputs().map(|s| position::rope(&s[0], r.theta.0, false))),
        Op::Prim(Prim::RopeGrad(r)) => Some(inputs().map(|s| position::rope(&s[0], r.theta.0, true))),
        Op::Prim(Prim::CausalMask(_)) => {
            Some(inputs().map(|s| position::mask(&s[0], f32::NEG_INFINITY, "causal_mask", false)))
        }
        Op::Prim(Prim::Tril(_)) => Some(inputs().map(|s| position::mask(&s[0], 0.0, "tril", false))),
        Op::Prim(Prim::DocumentMask(_)) => {
            Some(inputs().map(|s| position::mask(&s[0], f32::NEG_INFINITY, "document_mask", true)))
        }
        Op::Prim(Prim::DocumentTril(_)) => Some(inputs().map(|s| position::mask(&s[0], 0.0, "document_tril", true))),
        Op::Prim(Prim::DocumentRope(r)) => Some(inputs().map(|s| position::document_rope(&s[0], r.theta.0, false))),
        Op::Prim(Prim::DocumentRopeGrad(r)) => Some(inputs().map(|s| position::document_rope(&s[0], r.theta.0, true))),
        Op::Prim(Prim::Concat(c)) => Some(inputs().map(|s| pieces::concat(&s, c.axis, target))),
        Op::Prim(Prim::Pad(p)) => {
            Some(inputs().and_then(|s| Ok(pieces::pad(&s[0], p.axis, size(&p.before)?, size(&p.after)?, target))))
        }
        Op::Kernel(k) => match &k.kind {
            KernelKind::FlashAttention { scale, groups, rope, documents } => {
                let p = attention::Params { scale: *scale, groups: *groups, rope: *rope, documents: *documents };
                Some(inputs().map(|s| attention::forward(&s, p, target)))
            }
            KernelKind::ConvSilu { documents } => Some(inputs().map(|s| conv1d::forward(&s, *documents, true, target))),
            KernelKind::Grad { of } => match **of {
                KernelKind::FlashAttention { scale, groups, rope, documents } => {
                    let p = attention::Params { scale, groups, rope, documents };
                    Some(inputs().map(|s| attention::backward(&s, p, target)))
                }
                KernelKind::ConvSilu { documents } => Some(inputs().map(|s| {
                    let operands = GradOperands::of_silu(s.len(), documents);
                    conv1d::backward(&s, operands, target)
                })),
                _ => None,
            },
            _ => None,
        },
        Op::Prim(Prim::SsdScan(_)) => Some(inputs().map(|s| ssd_scan::forward(&s, false, target))),
        Op::Prim(Prim::DocumentSsdScan(_)) => Some(inputs().map(|s| ssd_scan::forward(&s, true, target))),
        Op::Prim(Prim::SsdState(_)) => Some(inputs().map(|s| ssd_scan::final_state(&s, target))),
        Op::Prim(Prim::SsdStep(_)) => Some(inputs().map(|s| ssd_scan::step_from_state(&s, target))),
        Op::Prim(Prim::ConvStep(_)) => Some(inputs().map(|s| conv1d::step(&s))),
        Op::Prim(Prim::RopeAt(r)) => Some(inputs().map(|s| position::rope_at(&s[0], r.theta.0))),
        Op::Prim(Prim::CacheAttention(c)) => Some(inputs().map(|s| attention::cached(&s, c.scale.0))),
        Op::Prim(Prim::CacheWrite(_)) => Some(inputs().map(|s| pieces::cache_write(&s, false))),
        Op::Prim(Prim::SsdScanGrad(g)) => {
            Some(inputs().and_then(|s| Ok(ssd_scan::backward(&s, size(&g.chunk)?, false, target))))
        }
        Op::Prim(Prim::DocumentSsdScanGrad(g)) => {
            Some(inputs().and_then(|s| Ok(ssd_scan::backward(&s, size(&g.chunk)?, true, target))))
        }
        _ => None,
    }
}

/// The tensor-core template of `node`, where one implements it at these shapes and its
/// product operands are stored as bf16 (`bf16[i]` for input `i`): chosen by the launch,
/// since it rounds its operands to bf16.
pub fn on_tensor_cores(
    graph: &Graph,
    node: NodeId,
    symbols: Symbols,
    bf16: &[bool],
) -> Option<Result<TemplateCode, CodegenError>> {
    let n = &graph.nodes[node];
    let all_bf16 = |operands: &[usize]| operands.iter().all(|&i| bf16.get(i).copied().unwrap_or(false));
    let shapes =
        || n.inputs.iter().map(|&x| super::body::Body::shape_of(graph, x, symbols)).collect::<Result<Vec<_>, _>>();
    let chosen = |code: Result<Option<TemplateCode>, CodegenError>| code.transpose();
    match &n.op {
        Op::Prim(Prim::SsdScan(_)) if all_bf16(&[0, 3, 4]) => {
            chosen(shapes().map(|s| ssd_scan::forward_on_tensor_cores(&s, false)))
        }
        Op::Prim(Prim::DocumentSsdScan(_)) if all_bf16(&[0, 3, 4]) => {
            chosen(shapes().map(|s| ssd_scan::forward_on_tensor_cores(&s, true)))
        }
        Op::Prim(Prim::SsdScanGrad(_)) if all_bf16(&[0, 3, 4]) => {
            chosen(shapes().map(|s| ssd_scan::backward_on_tensor_cores(&s, false)))
        }
        Op::Prim(Prim::DocumentSsdScanGrad(_)) if all_bf16(&[0, 3, 4]) => {
            chosen(shapes().map(|s| ssd_scan::backward_on_tensor_cores(&s, true)))
        }
        Op::Kernel(k) if all_bf16(&[0, 1, 2]) => {
            let (kind, gradient) = match &k.kind {
                KernelKind::Grad { of } => (&**of, true),
                kind => (kind, false),
            };
            let KernelKind::FlashAttention { scale, groups, rope, documents } = kind else { return None };
            let p = attention::Params { scale: *scale, groups: *groups, rope: *rope, documents: *documents };
            chosen(shapes().map(|s| match gradient {
                true => attention::backward_on_tensor_cores(&s, p),
                false => attention::forward_on_tensor_cores(&s, p),
            }))
        }
        _ => None,
    }
}

/// A name for a template at some shapes: `template_` and the shapes, so the same template
/// at the same shapes compiles once.
pub fn name(template: &str, shapes: &[&[usize]]) -> String {
    let dims: Vec<String> =
        shapes.iter().map(|s| s.iter().map(usize::to_string).collect::<Vec<_>>().join("x")).collect();
    format!("{template}_{}", dims.join("_"))
}
