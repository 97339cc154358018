//! The plan stage: a fused graph becomes a [`Program`] every executor consumes — the
//! ordered launches with their inputs and outputs as views of buffers, every buffer's exact
//! size for one batch and sequence length under the precision policy, its lifetime, and one
//! static arena that holds them all.
//!
//! Views (reshape, transpose, permute, broadcast, slice) copy nothing: they fold into their
//! reader's access as an offset and strides. Updates named in place (an
//! optimizer writing a weight and its moments) write into the buffer they replace.

mod arena;
mod memory;
pub mod recompute;
mod streams;

pub use memory::{Breakdown, MemoryPlan};
pub use recompute::{Level, Recompute};
pub use streams::Stream;

use crate::ir::{Graph, Kernel, KernelKind, NodeId, Op};
use crate::ops::{Class, Prim, Primitive};
use hyb_dsl::dim::Dim;
use hyb_dsl::value::DType;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Index of a buffer in [`Program::buffers`].
pub type BufferId = usize;

/// What a buffer holds, which decides its precision and where the memory report counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A learnable parameter's float32 master weights, which the optimizer updates.
    Weight,
    /// A parameter in the storage its readers take (bf16 for tensor-core GEMMs), made from
    /// the master weights before its first reader, each run.
    WeightCopy,
    /// Optimizer state (AdamW moments), float32.
    Optimizer,
    /// A program input (token ids, targets, scalars).
    Input,
    /// A forward value the backward pass reads again.
    Saved,
    /// The gradient of a parameter, float32 (accumulated over the step).
    Gradient,
    /// Anything else: values used within a pass.
    Workspace,
}

/// Storage precision: bf16 activations and weight copies, f32 master weights, moments,
/// gradients and reductions. What the GPU will hold; the CPU executor may compute in f32.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Precision {
    pub activations: DType,
    pub master_weights: DType,
    pub weight_copies: DType,
    pub optimizer: DType,
    pub gradients: DType,
    /// How program inputs are stored (`None`: as declared).
    pub inputs: Option<DType>,
}

impl Precision {
    /// Mixed precision as the GPU runs it: bf16 activations and weight copies, f32 master
    /// weights, moments and gradients, and program inputs (token ids, scalars, caches) in
    /// f32, which holds every token id below 2^24 exactly.
    pub fn mixed() -> Precision {
        Precision { inputs: Some(DType::F32), ..Precision::default() }
    }

    /// Whether readers other than the optimizer read a copy of the weights in another type.
    pub fn copies_weights(&self) -> bool {
        self.weight_copies != self.master_weights
    }

    /// Everything in one type: the CPU executor computes in the reference's element type.
    pub fn uniform(dtype: DType) -> Precision {
        Precision {
            activations: dtype,
            master_weights: dtype,
            weight_copies: dtype,
            optimizer: dtype,
            gradients: dtype,
            inputs: Some(dtype),
        }
    }
}

impl Default for Precision {
    fn default() -> Self {
        Precision {
            activations: DType::BF16,
            master_weights: DType::F32,
            weight_copies: DType::BF16,
            optimizer: DType::F32,
            gradients: DType::F32,
            inputs: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buffer {
    pub role: Role,
    pub dtype: DType,
    pub elements: usize,
    pub bytes: usize,
    /// The launches between which it is live: written by `first` (or before the program,
    /// for weights, optimizer state and inputs), last read by `last`.
    pub first: usize,
    pub last: usize,
    /// Where it lives in the arena.
    pub offset: usize,
    /// The graph node whose value it holds.
    pub node: NodeId,
}

impl Buffer {
    /// Whether the buffer lives for the whole program (weights, optimizer state, inputs).
    pub fn persistent(&self) -> bool {
        matches!(self.role, Role::Weight | Role::Optimizer | Role::Input)
    }
}

/// A tensor as a launch reads or writes it: a buffer, an element offset and strides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub buffer: BufferId,
    pub offset: usize,
    pub shape: Vec<usize>,
    /// Element strides; 0 along a broadcast axis.
    pub strides: Vec<isize>,
    pub dtype: DType,
}

/// How a launch runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LaunchKind {
    /// A generated kernel (a fused kernel, flash attention, …), by kind.
    Kernel(String),
    /// A GEMM for the GEMM library.
    Gemm,
    /// An exchange between tensor-parallel ranks.
    Collective(String),
    /// A primitive run as its own kernel.
    Primitive(String),
    /// A copy of its input's buffer in the output's storage type (a weight's bf16 copy);
    /// its node is the value copied.
    Convert,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    pub kind: LaunchKind,
    /// The graph node it computes.
    pub node: NodeId,
    pub inputs: Vec<View>,
    pub outputs: Vec<View>,
    pub stream: Stream,
    /// The exchange launch (on [`Stream::Exchange`]) this one waits for before it runs,
    /// and so for every exchange queued before that one.
    pub waits_for: Option<usize>,
}

/// The compiled program for one batch and sequence length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub batch: usize,
    pub seq: usize,
    pub precision: Precision,
    pub buffers: Vec<Buffer>,
    pub launches: Vec<Launch>,
    /// The graph's outputs, in order.
    pub outputs: Vec<View>,
    pub memory: MemoryPlan,
    /// What each layer's backward pass recomputes (empty: nothing, or no backward pass).
    #[serde(default)]
    pub recompute: Vec<Level>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("the size `{0}` is not known for batch {1} and sequence {2}")]
    Unbound(String, usize, usize),
    #[error("a tensor of {0} elements does not fit in memory")]
    TooLarge(String),
}

/// What to plan for.
#[derive(Clone, Debug)]
pub struct Request {
    pub batch: usize,
    pub seq: usize,
    pub precision: Precision,
    /// Graph outputs written into the buffer of the leaf they replace: `(output index,
    /// input or parameter node)` — an optimizer's new weight and moments.
    pub in_place: Vec<(usize, NodeId)>,
    /// The graph output whose computation ends the forward pass (the loss), if the program
    /// has a backward pass: forward values read after it are kept for backward.
    pub forward_end: Option<usize>,
}

/// Plans `g` (fused) for the sizes and policy of `req`.
pub fn plan(g: &Graph, req: &Request) -> Result<Program, PlanError> {
    let sizes = |d: &Dim| -> Result<usize, PlanError> {
        let bind = |s: &str| match s {
            "B" => Some(req.batch as i64),
            "T" => Some(req.seq as i64),
            _ => None,
        };
        d.eval(&|s| Dim::bind_parts(s, &bind))
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| PlanError::Unbound(d.to_string(), req.batch, req.seq))
    };
    let shape_of = |n: NodeId| -> Result<Vec<usize>, PlanError> { g.nodes[n].ty.shape.iter().map(sizes).collect() };
    let forward_end = req.forward_end.map(|o| g.outputs[o]);
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut launches: Vec<Launch> = Vec::new();
    let mut view_of: Vec<Option<View>> = vec![None; g.nodes.len()];
    // The node reading output `k` of each multi-output node.
    let output_readers: HashMap<(NodeId, usize), NodeId> = g
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(r, m)| match m.op {
            Op::Output(k) => Some(((m.inputs[0], k), r)),
            _ => None,
        })
        .collect();
    let aliased: HashMap<NodeId, NodeId> = req.in_place.iter().map(|&(o, leaf)| (g.outputs[o], leaf)).collect();
    let statistics = statistics(g);
    let state_updates = state_updates(g, &aliased);
    let updated = update_inputs(g, &state_updates);
    // A statistic is kept in f32 at least, a state's new value and a state on its way to
    // its update as the state, and a gradient on its way to an update as gradients are.
    let stored = |i: NodeId, o: usize, dtype: DType| match storage(&req.precision, dtype) {
        _ if state_updates.contains_key(&(i, o)) => leaf_storage(g, state_updates[&(i, o)], req),
        _ if updated.states.contains_key(&(i, o)) => leaf_storage(g, updated.states[&(i, o)], req),
        _ if updated.gradients.contains(&(i, o)) && dtype.is_float() => req.precision.gradients,
        DType::BF16 | DType::F16 if statistics[i].get(o).copied().unwrap_or(false) => DType::F32,
        d => d,
    };
    let blocks = concat_blocks(g, &aliased, &|x| shape_of(x), &|x| stored(x, 0, g.nodes[x].ty.dtype))?;
    // The buffer of each concat whose pieces are written in place, made by its first piece.
    let mut joined: HashMap<NodeId, View> = HashMap::new();
    let mut copies = Copies::default();

    for (i, n) in g.nodes.iter().enumerate() {
        let shape = shape_of(i)?;
        let new_buffer =
            |buffers: &mut Vec<Buffer>, role: Role, dtype: DType, first: usize| -> Result<View, PlanError> {
                let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                let elements = elements.ok_or_else(|| PlanError::TooLarge(format!("{shape:?}")))?;
                let bytes = elements
                    .checked_mul(dtype.size_bytes())
                    .ok_or_else(|| PlanError::TooLarge(format!("{shape:?}")))?;
                buffers.push(Buffer { role, dtype, elements, bytes, first, last: first, offset: 0, node: i });
                Ok(contiguous(buffers.len() - 1, &shape, dtype))
            };
        match &n.op {
            Op::Param(_) => {
                view_of[i] = Some(new_buffer(&mut buffers, Role::Weight, leaf_storage(g, i, req), 0)?);
            }
            Op::Input(name) => {
                let role = if name.starts_with("m.") || name.starts_with("v.") { Role::Optimizer } else { Role::Input };
                view_of[i] = Some(new_buffer(&mut buffers, role, leaf_storage(g, i, req), 0)?);
            }
            // Constants are immediates of the launches that read them.
            Op::Constant(_) => {}
            // A rank's shard is a copy of its slice here (its offset depends on the rank).
            Op::Prim(p) if !p.moves_data() && !matches!(p, Prim::Shard(_)) => {
                let src = n.inputs[0];
                // A view that is an update in place (ZeRO-1's gathered weight, reshaped)
                // is copied into the leaf it replaces, which a view of another buffer
                // would not update.
                let in_place = aliased.get(&i).and_then(|leaf| view_of[*leaf].clone());
                view_of[i] = match (&view_of[src], &in_place) {
                    (Some(v), None) => fold_view(p, v, &shape_of(src)?, &shape, &sizes)?,
                    _ => None,
                };
                // A reshape between a block written in place and its concat is a view of the
                // block (it splits the last axis), not a copy.
                if view_of[i].is_none() && blocks.contains_key(&src) && matches!(p, Prim::Reshape(_)) {
                    view_of[i] = view_of[src].as_ref().and_then(|v| {
                        let strides = reshaped_strides(&v.shape, &v.strides, &shape)?;
                        Some(View { shape: shape.clone(), strides, ..v.clone() })
                    });
                }
                if view_of[i].is_none() {
                    // A view the strides cannot express (a reshape of a strided view): a copy.
                    let out = match in_place {
                        Some(v) => v,
                        None => new_buffer(
                            &mut buffers,
                            Role::Workspace,
                            storage(&req.precision, n.ty.dtype),
                            launches.len(),
                        )?,
                    };
                    let l = launch(g, i, &view_of, vec![out.clone()]);
                    copies.push(l, &mut launches, &mut buffers, &req.precision, updated.reads_state(i));
                    view_of[i] = Some(out);
                }
            }
            Op::Output(k) => {
                let source = n.inputs[0];
                let at = launches.iter().rposition(|l| l.node == source).expect("outputs follow their source");
                view_of[i] = launches[at].outputs.get(*k).cloned();
            }
            // Its pieces were written into its buffer.
            Op::Prim(Prim::Concat(_)) if joined.contains_key(&i) => view_of[i] = joined.remove(&i),
            Op::Prim(_) | Op::Kernel(_) => {
                let stored = |o: usize, dtype: DType| stored(i, o, dtype);
                let dtype = stored(0, n.ty.dtype);
                let mut outs = Vec::new();
                // Output `o` (read through node `reader`): a state leaf it updates, its block
                // of a concat written in place, or a buffer of its own.
                let mut place = |buffers: &mut Vec<Buffer>,
                                 reader: Option<NodeId>,
                                 shape: &[usize],
                                 dtype: DType|
                 -> Result<View, PlanError> {
                    if let Some(v) = reader.and_then(|r| aliased.get(&r)).and_then(|leaf| view_of[*leaf].clone()) {
                        return Ok(v);
                    }
                    let Some(&(concat, axis, start)) = reader.and_then(|r| blocks.get(&r)) else {
                        return new_buffer_of(buffers, shape, dtype, launches.len(), i);
                    };
                    let whole = match joined.get(&concat) {
                        Some(v) => v.clone(),
                        None => {
                            let v = new_buffer_of(buffers, &shape_of(concat)?, dtype, launches.len(), concat)?;
                            joined.insert(concat, v.clone());
                            v
                        }
                    };
                    let offset = start * whole.strides[axis] as usize;
                    Ok(if whole.shape[..axis].iter().all(|&d| d == 1) {
                        View { offset, ..contiguous(whole.buffer, shape, whole.dtype) }
                    } else {
                        // The leading axes stride as the whole's; a piece reshaped from more
                        // axes (its last split) is contiguous within the whole's last.
                        let inner = contiguous(whole.buffer, &shape[axis..], whole.dtype).strides;
                        let strides = whole.strides[..axis].iter().copied().chain(inner).collect();
                        View { offset, shape: shape.to_vec(), strides, ..whole }
                    })
                };
                let out = place(&mut buffers, Some(i), &shape, dtype)?;
                outs.push(out.clone());
                // The further outputs' types.
                let further: Vec<crate::ir::TensorType> = match &n.op {
                    Op::Kernel(k) => k.body.outputs[1..].iter().map(|&o| k.body.nodes[o].ty.clone()).collect(),
                    Op::Prim(p) => {
                        let types: Vec<&crate::ir::TensorType> = n.inputs.iter().map(|&x| &g.nodes[x].ty).collect();
                        crate::ir::infer_types(p, &types).into_iter().skip(1).collect()
                    }
                    _ => vec![],
                };
                for (o, ty) in further.iter().enumerate().map(|(k, ty)| (k + 1, ty)) {
                    let shape: Vec<usize> = ty.shape.iter().map(sizes).collect::<Result<_, _>>()?;
                    let reader = output_readers.get(&(i, o)).copied();
                    outs.push(place(&mut buffers, reader, &shape, stored(o, ty.dtype))?);
                }
                let l = launch(g, i, &view_of, outs);
                copies.push(l, &mut launches, &mut buffers, &req.precision, updated.reads_state(i));
                view_of[i] = Some(out);
            }
        }
    }

    let joins = streams::overlap_exchanges(g, &mut launches, &mut buffers);
    // Lifetimes: a buffer lives from its writer to its last reader, and what an exchange
    // reads until the launch that waits for it; graph outputs and persistent buffers to
    // the end.
    let end = launches.len().saturating_sub(1);
    for (t, l) in launches.iter().enumerate() {
        for v in l.inputs.iter().chain(&l.outputs) {
            let b = &mut buffers[v.buffer];
            b.last = b.last.max(t);
        }
    }
    for (p, join) in joins {
        for v in launches[p].inputs.iter().chain(&launches[p].outputs) {
            let b = &mut buffers[v.buffer];
            b.last = b.last.max(join.min(end));
        }
    }
    let outputs: Vec<View> = g.outputs.iter().map(|&o| view_of[o].clone().expect("outputs are computed")).collect();
    for v in &outputs {
        buffers[v.buffer].last = end;
    }
    for b in buffers.iter_mut().filter(|b| b.persistent()) {
        b.first = 0;
        b.last = end;
    }
    classify(g, &mut buffers, &launches, forward_end, &req.precision);
    // Views say the type of the buffer they read, which classifying may have changed.
    let mut outputs = outputs;
    for v in launches.iter_mut().flat_map(|l| l.inputs.iter_mut().chain(l.outputs.iter_mut())).chain(&mut outputs) {
        v.dtype = buffers[v.buffer].dtype;
    }
    arena::assign(&mut buffers);
    let memory = MemoryPlan::of(&buffers, &launches);
    Ok(Program {
        batch: req.batch,
        seq: req.seq,
        precision: req.precision.clone(),
        buffers,
        launches,
        outputs,
        memory,
        recompute: Vec::new(),
    })
}

/// The copies of weights made so far, by master buffer.
#[derive(Default)]
struct Copies {
    of: HashMap<BufferId, BufferId>,
}

impl Copies {
    /// Appends `l`, its reads of weights it does not update turned into reads of their
    /// copies when the policy keeps copies (unless it `reads_masters`, on the way to an
    /// update); a weight's copy is made by a `Convert` launch just before its first reader.
    fn push(
        &mut self,
        mut l: Launch,
        launches: &mut Vec<Launch>,
        buffers: &mut Vec<Buffer>,
        p: &Precision,
        reads_masters: bool,
    ) {
        if p.copies_weights() && !reads_masters {
            for k in 0..l.inputs.len() {
                let master = l.inputs[k].buffer;
                let updates = l.outputs.iter().any(|o| o.buffer == master);
                if buffers[master].role != Role::Weight || updates {
                    continue;
                }
                let copy = *self.of.entry(master).or_insert_with(|| {
                    let m = buffers[master].clone();
                    let at = launches.len();
                    let bytes = m.elements * p.weight_copies.size_bytes();
                    buffers.push(Buffer {
                        role: Role::WeightCopy,
                        dtype: p.weight_copies,
                        bytes,
                        first: at,
                        last: at,
                        ..m
                    });
                    let copy = buffers.len() - 1;
                    let shape = [m.elements];
                    launches.push(Launch {
                        kind: LaunchKind::Convert,
                        node: m.node,
                        inputs: vec![contiguous(master, &shape, m.dtype)],
                        outputs: vec![contiguous(copy, &shape, p.weight_copies)],
                        stream: Stream::Compute,
                        waits_for: None,
                    });
                    copy
                });
                l.inputs[k].buffer = copy;
                l.inputs[k].dtype = p.weight_copies;
            }
        }
        launches.push(l);
    }
}

/// The pieces of concats written in place: for each input of a concat whose pieces are
/// computed only for it, in the concat's storage, by launches of their own that can write
/// where the piece lies — the concat, its axis and the piece's start along it. Its
/// producer then writes its block of the concat's buffer, and the concat moves nothing
/// (Falcon-H1's attention ∥ Mamba outputs joined for the shared projection). A block with
/// nothing but unit axes before the joined one is contiguous, which any launch writes; a
/// strided one only generated code (a fused kernel, a pointwise primitive) does, whose
/// views carry their strides — templates and GEMMs write contiguous outputs.
fn concat_blocks(
    g: &Graph,
    aliased: &HashMap<NodeId, NodeId>,
    shape_of: &dyn Fn(NodeId) -> Result<Vec<usize>, PlanError>,
    stored: &dyn Fn(NodeId) -> DType,
) -> Result<HashMap<NodeId, (NodeId, usize, usize)>, PlanError> {
    // Readers of each node's value (an `Output` node reads another of its outputs).
    let mut readers = vec![0usize; g.nodes.len()];
    for n in g.nodes.iter().filter(|n| !matches!(n.op, Op::Output(_))) {
        for &x in &n.inputs {
            readers[x] += 1;
        }
    }
    for &o in &g.outputs {
        readers[o] += 1;
    }
    // A launch of its own, or one of a launch's further outputs (read through an `Output`
    // node), writing a contiguous block, or a strided one too where its code takes any
    // layout: generated kernels and templates do, a GEMM library does not.
    let any_layout = |k: &Kernel| !matches!(k.kind, KernelKind::Gemm | KernelKind::BitLinear);
    let writes = |x: NodeId, strided: bool| match &g.nodes[x].op {
        Op::Kernel(k) => !strided || any_layout(k),
        Op::Prim(p) => p.moves_data() && !matches!(p, Prim::Concat(_)) && (!strided || p.class() == Class::Elementwise),
        // A further output of a template (a gradient's piece): its code takes any layout.
        Op::Output(_) => match &g.nodes[g.nodes[x].inputs[0]].op {
            Op::Kernel(k) => any_layout(k),
            Op::Prim(p) => !matches!(p.class(), Class::Contraction | Class::Collective | Class::View),
            _ => false,
        },
        _ => false,
    };
    let mut blocks = HashMap::new();
    for (c, n) in g.nodes.iter().enumerate() {
        let Op::Prim(Prim::Concat(concat)) = &n.op else { continue };
        let shape = shape_of(c)?;
        let axis = concat.axis_of(shape.len());
        let mut distinct = n.inputs.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let strided = shape[..axis].iter().any(|&d| d != 1);
        // A contiguous block may also be written as another shape, reshaped for the concat
        // (a gradient flattened into its bucket).
        // A strided one too where the reshape only splits the last axis, the concat's.
        let splits_last = |x: NodeId| -> Result<bool, PlanError> {
            let (from, to) = (shape_of(g.nodes[x].inputs[0])?, shape_of(x)?);
            Ok(axis + 1 == shape.len() && from.len() > to.len() && from[..axis] == to[..axis])
        };
        let producer = |x: NodeId| -> Result<NodeId, PlanError> {
            Ok(match &g.nodes[x].op {
                Op::Prim(Prim::Reshape(_)) if readers[x] == 1 && (!strided || splits_last(x)?) => g.nodes[x].inputs[0],
                _ => x,
            })
        };
        let producers = n.inputs.iter().map(|&x| producer(x)).collect::<Result<Vec<_>, _>>()?;
        let eligible = !aliased.contains_key(&c)
            && distinct.len() == n.inputs.len()
            && producers
                .iter()
                .all(|&x| readers[x] == 1 && writes(x, strided) && !aliased.contains_key(&x) && stored(x) == stored(c));
        if !eligible {
            continue;
        }
        let mut start = 0;
        for (&x, &p) in n.inputs.iter().zip(&producers) {
            blocks.insert(p, (c, axis, start));
            start += shape_of(x)?[axis];
        }
    }
    Ok(blocks)
}

/// The outputs `(node, output)` whose value becomes a state leaf's new value through views
/// and collectives only (ZeRO-1's updated run of a weight, all-gathered and reshaped), with
/// that leaf: stored as the leaf is, so the update does not round the master weights to the
/// activations' type on the way.
fn state_updates(g: &Graph, aliased: &HashMap<NodeId, NodeId>) -> HashMap<(NodeId, usize), NodeId> {
    let mut out = HashMap::new();
    for (&update, &leaf) in aliased {
        let (mut x, mut k) = (update, 0);
        loop {
            out.insert((x, k), leaf);
            let n = &g.nodes[x];
            match &n.op {
                Op::Output(j) => (x, k) = (n.inputs[0], *j),
                Op::Prim(p) if matches!(p.class(), Class::View | Class::Collective) && n.inputs.len() == 1 => {
                    (x, k) = (n.inputs[0], 0)
                }
                _ => break,
            }
        }
    }
    out
}

/// What the updates of state read, traced from each update through the views, movements
/// and collectives on the way (a bucket's flattened and concatenated gradients, their sum
/// over the replicas, ZeRO-1's padded runs of a weight and of its gradient).
struct UpdateInputs {
    /// Values `(node, output)` on the way from where the backward pass computes a
    /// gradient: stored in the gradients' precision, so the replicas sum what the backward
    /// pass computed, not its rounding to the activations' type.
    gradients: HashSet<(NodeId, usize)>,
    /// Values on the way from a state leaf (a weight, a moment), with the leaf: stored and
    /// read as the leaf is, so an update never starts from a weight's bf16 copy.
    states: HashMap<(NodeId, usize), NodeId>,
}

impl UpdateInputs {
    fn reads_state(&self, x: NodeId) -> bool {
        self.states.contains_key(&(x, 0))
    }
}

fn update_inputs(g: &Graph, state_updates: &HashMap<(NodeId, usize), NodeId>) -> UpdateInputs {
    let passes = |x: NodeId| match &g.nodes[x].op {
        Op::Prim(p) => matches!(p.class(), Class::View | Class::Movement | Class::Collective),
        Op::Output(_) => true,
        _ => false,
    };
    let mut out = UpdateInputs { gradients: HashSet::new(), states: HashMap::new() };
    for &(update, _) in state_updates.keys().filter(|&&(x, _)| !passes(x)) {
        for &input in &g.nodes[update].inputs {
            let (mut path, mut todo, mut leaves, mut computed) = (Vec::new(), vec![(input, 0)], Vec::new(), Vec::new());
            while let Some((x, k)) = todo.pop() {
                let n = &g.nodes[x];
                match &n.op {
                    Op::Param(_) | Op::Input(_) => leaves.push(x),
                    Op::Constant(_) => {}
                    Op::Output(j) => todo.push((n.inputs[0], *j)),
                    _ if passes(x) => {
                        path.push((x, 0));
                        todo.extend(n.inputs.iter().map(|&y| (y, 0)));
                    }
                    _ => computed.push((x, k)),
                }
            }
            match (&leaves[..], computed.is_empty()) {
                ([], _) => out.gradients.extend(path.into_iter().chain(computed)),
                ([leaf, ..], true) if matches!(g.nodes[*leaf].op, Op::Param(_)) => {
                    out.states.extend(path.into_iter().map(|x| (x, *leaf)))
                }
                _ => {}
            }
        }
    }
    out
}

/// How leaf `leaf` (a parameter or a program input) is stored.
fn leaf_storage(g: &Graph, leaf: NodeId, req: &Request) -> DType {
    match &g.nodes[leaf].op {
        Op::Param(_) => req.precision.master_weights,
        Op::Input(name) if name.starts_with("m.") || name.starts_with("v.") => req.precision.optimizer,
        _ => req.precision.inputs.unwrap_or(g.nodes[leaf].ty.dtype),
    }
}

/// For each node, whether each of its outputs is a statistic — a sum over an axis, or
/// computed from statistics by pointwise operations only (a mean, a norm's reciprocal, a
/// loss, a gradient norm summed from partial norms): stored in f32 whatever the
/// activations' type, as its sum was long.
fn statistics(g: &Graph) -> Vec<Vec<bool>> {
    let mut value = vec![false; g.nodes.len()];
    let mut outputs: Vec<Vec<bool>> = vec![Vec::new(); g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        outputs[i] = match &n.op {
            Op::Kernel(k) => {
                let input =
                    |name: &str| name.parse::<usize>().ok().and_then(|j| n.inputs.get(j)).is_some_and(|&x| value[x]);
                let inner = statistic_nodes(&k.body, &input);
                k.body.outputs.iter().map(|&o| inner[o]).collect()
            }
            Op::Output(k) => vec![outputs[n.inputs[0]].get(*k).copied().unwrap_or(false)],
            _ => vec![statistic(g, i, &value)],
        };
        value[i] = outputs[i].first().copied().unwrap_or(false);
    }
    outputs
}

/// Whether each node of `g` is a statistic (see [`statistics`]), its inputs as `input` says.
fn statistic_nodes(g: &Graph, input: &dyn Fn(&str) -> bool) -> Vec<bool> {
    let mut stat = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        stat[i] = match &n.op {
            Op::Input(name) => input(name),
            _ => statistic(g, i, &stat),
        };
    }
    stat
}

/// Whether node `i` of `g` is a statistic, given whether the nodes before it are.
fn statistic(g: &Graph, i: NodeId, stat: &[bool]) -> bool {
    let n = &g.nodes[i];
    let computed: Vec<NodeId> =
        n.inputs.iter().copied().filter(|&x| !matches!(g.nodes[x].op, Op::Constant(_))).collect();
    match &n.op {
        Op::Prim(p) => match p.class() {
            Class::Reduction => true,
            // A sum of partial statistics over ranks is one too.
            Class::Elementwise | Class::View | Class::Collective => {
                !computed.is_empty() && computed.iter().all(|&x| stat[x])
            }
            _ => false,
        },
        Op::Output(_) => stat[n.inputs[0]],
        _ => false,
    }
}

fn new_buffer_of(
    buffers: &mut Vec<Buffer>,
    shape: &[usize],
    dtype: DType,
    first: usize,
    node: NodeId,
) -> Result<View, PlanError> {
    let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let elements = elements.ok_or_else(|| PlanError::TooLarge(format!("{shape:?}")))?;
    let bytes = elements.checked_mul(dtype.size_bytes()).ok_or_else(|| PlanError::TooLarge(format!("{shape:?}")))?;
    buffers.push(Buffer { role: Role::Workspace, dtype, elements, bytes, first, last: first, offset: 0, node });
    Ok(contiguous(buffers.len() - 1, shape, dtype))
}

/// The storage dtype of a computed value: floats as activations, others as inputs are.
fn storage(p: &Precision, dtype: DType) -> DType {
    if dtype.is_float() {
        p.activations
    } else {
        p.inputs.unwrap_or(dtype)
    }
}

fn contiguous(buffer: BufferId, shape: &[usize], dtype: DType) -> View {
    let mut strides = vec![0isize; shape.len()];
    let mut s = 1isize;
    for k in (0..shape.len()).rev() {
        strides[k] = s;
        s *= shape[k] as isize;
    }
    View { buffer, offset: 0, shape: shape.to_vec(), strides, dtype }
}

fn is_contiguous(v: &View) -> bool {
    let mut s = 1isize;
    for k in (0..v.shape.len()).rev() {
        if v.shape[k] != 1 && v.strides[k] != s {
            return false;
        }
        s *= v.shape[k] as isize;
    }
    true
}

/// The view `p` makes of view `v` (of shape `from`), or `None` when strides cannot say it.
fn fold_view(
    p: &Prim,
    v: &View,
    from: &[usize],
    to: &[usize],
    sizes: &dyn Fn(&Dim) -> Result<usize, PlanError>,
) -> Result<Option<View>, PlanError> {
    let axis = |a: i64| crate::ops::axis(a, from.len());
    Ok(match p {
        Prim::Reshape(_) if is_contiguous(v) => Some(View { offset: v.offset, ..contiguous(v.buffer, to, v.dtype) }),
        Prim::Reshape(_) => None,
        Prim::Transpose(t) => {
            let (a, b) = (axis(t.dim0), axis(t.dim1));
            let mut out = v.clone();
            out.shape.swap(a, b);
            out.strides.swap(a, b);
            Some(out)
        }
        Prim::Permute(perm) => {
            let dims: Vec<usize> = perm.dims.iter().map(|&d| axis(d)).collect();
            Some(View {
                shape: dims.iter().map(|&d| v.shape[d]).collect(),
                strides: dims.iter().map(|&d| v.strides[d]).collect(),
                ..v.clone()
            })
        }
        Prim::Broadcast(_) => {
            let shift = to.len() - from.len();
            let mut strides = vec![0isize; to.len()];
            for k in 0..from.len() {
                strides[k + shift] = if from[k] == 1 && to[k + shift] != 1 { 0 } else { v.strides[k] };
            }
            Some(View { shape: to.to_vec(), strides, ..v.clone() })
        }
        Prim::Slice(s) => {
            let a = s.axis_of(from.len());
            let start = sizes(&s.start)?;
            let mut out = v.clone();
            out.offset = (v.offset as isize + start as isize * v.strides[a]) as usize;
            out.shape[a] = to[a];
            Some(out)
        }
        // A tensor-parallel copy: the value itself.
        _ => Some(View { shape: to.to_vec(), ..v.clone() }),
    })
}

/// The strides of a strided view reshaped to `to` without moving data, where they exist:
/// the axes split into runs of equal element counts on both sides, each run's source axes
/// one stride apart as a contiguous block's would be, its new axes strided contiguously
/// within it.
pub fn reshaped_strides(from: &[usize], strides: &[isize], to: &[usize]) -> Option<Vec<isize>> {
    // Axes of one element move nothing and take any stride.
    let axes: Vec<(usize, isize)> = from.iter().zip(strides).filter(|(&n, _)| n != 1).map(|(&n, &s)| (n, s)).collect();
    let mut out = vec![0isize; to.len()];
    let (mut i, mut j) = (0, 0);
    while j < to.len() {
        if to[j] == 1 {
            j += 1;
            continue;
        }
        // One run: source axes i..k and target axes j..l of the same count.
        let (mut k, mut l) = (i + 1, j + 1);
        let (mut have, mut want) = (axes.get(i)?.0, to[j]);
        while have != want {
            if have < want {
                have *= axes.get(k)?.0;
                k += 1;
            } else {
                want *= to.get(l)?;
                l += 1;
            }
        }
        if (i..k - 1).any(|a| axes[a].1 != axes[a + 1].1 * axes[a + 1].0 as isize) {
            return None;
        }
        let mut stride = axes[k - 1].1;
        for t in (j..l).rev() {
            out[t] = stride;
            stride *= to[t] as isize;
        }
        (i, j) = (k, l);
    }
    (i == axes.len()).then_some(out)
}

fn launch(g: &Graph, i: NodeId, view_of: &[Option<View>], outputs: Vec<View>) -> Launch {
    let n = &g.nodes[i];
    let kind = match &n.op {
        Op::Kernel(k) => LaunchKind::Kernel(k.kind.name()),
        Op::Prim(p) if p.class() == Class::Contraction => LaunchKind::Gemm,
        Op::Prim(p) if p.is_collective() => LaunchKind::Collective(p.name().to_string()),
        Op::Prim(p) => LaunchKind::Primitive(p.name().to_string()),
        _ => unreachable!("only computed nodes launch"),
    };
    let inputs = n.inputs.iter().filter_map(|&x| view_of[x].clone()).collect();
    Launch { kind, node: i, inputs, outputs, stream: Stream::Compute, waits_for: None }
}

/// Roles of computed buffers: a parameter's gradient (it has the parameter's type and an
/// in-place update reads it), a forward value read after the forward pass ends, or
/// workspace.
fn classify(g: &Graph, buffers: &mut [Buffer], launches: &[Launch], forward_end: Option<NodeId>, p: &Precision) {
    let Some(end) = forward_end else { return };
    let Some(end_launch) = launches.iter().position(|l| l.node == end) else { return };
    let updates_in_place: Vec<&Launch> = launches
        .iter()
        .filter(|l| l.outputs.iter().any(|o| matches!(buffers[o.buffer].role, Role::Weight | Role::Optimizer)))
        .collect();
    let mut gradient = vec![false; buffers.len()];
    for l in &updates_in_place {
        let weights: Vec<&View> = l.outputs.iter().filter(|o| buffers[o.buffer].role == Role::Weight).collect();
        for v in &l.inputs {
            let b = &buffers[v.buffer];
            if b.role == Role::Workspace && weights.iter().any(|w| w.shape == v.shape) {
                gradient[v.buffer] = true;
            }
        }
    }
    for (id, b) in buffers.iter_mut().enumerate() {
        if b.role != Role::Workspace {
            continue;
        }
        if gradient[id] {
            b.role = Role::Gradient;
            b.dtype = p.gradients;
            b.bytes = b.elements * p.gradients.size_bytes();
        } else if b.first <= end_launch && b.last > end_launch && g.nodes[b.node].ty.dtype.is_float() {
            b.role = Role::Saved;
        }
    }
}
