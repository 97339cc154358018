//! The CPU executor: runs a planned [`Program`] — its launches, in order, over one arena per
//! rank laid out as the plan says. Each launch gathers its input views through their
//! strides, computes its node with the reference semantics (generated code replaces this
//! later), and writes its outputs into their buffers; in-place updates overwrite the
//! weights and moments they replace. Simulated tensor-parallel ranks run in lockstep, the
//! collectives exchanging values between them.
//!
//! The program must be planned with [`Precision::uniform`] of the element type, so every
//! buffer holds `T`s at offsets the arena indexes directly. In float32, fused kernels run as
//! generated native code ([`Kernels`]) writing straight into the arena.

mod gemm;
mod kernels;
pub mod objects;
pub mod probe;

pub use kernels::Kernels;

use hyb_compiler::ir::{Dim, Graph, Op};
use hyb_compiler::ops::{Prim, Primitive, Sizes};
use hyb_compiler::plan::{LaunchKind, Program, Stream, View};
use hyb_compiler::reference::{self, Real, RunError, Tensor};
use std::collections::HashMap;

/// Elements of `T` per arena slot, from the bytes the plan counted.
fn slot<T>() -> usize {
    std::mem::size_of::<T>()
}

/// One rank's memory: the arena, in elements of `T`.
struct Arena<T> {
    data: Vec<T>,
}

impl<T: Real> Arena<T> {
    /// `words` zeroed elements, or an error where the host has not the memory (a model
    /// too large for it is refused, not aborted).
    fn zeroed(words: usize) -> Result<Arena<T>, RunError> {
        let mut data = Vec::new();
        let gib = (words as f64) * std::mem::size_of::<T>() as f64 / (1u64 << 30) as f64;
        data.try_reserve_exact(words).map_err(|_| RunError::OutOfMemory(gib))?;
        data.resize(words, T::zero());
        Ok(Arena { data })
    }

    fn base(program: &Program, v: &View) -> usize {
        program.buffers[v.buffer].offset / slot::<T>() + v.offset
    }

    /// The view's elements, gathered into a contiguous tensor.
    fn read(&self, program: &Program, v: &View) -> Tensor<T> {
        let n: usize = v.shape.iter().product();
        if contiguous(v) {
            let base = Self::base(program, v);
            return Tensor::new(v.shape.clone(), self.data[base..base + n].to_vec());
        }
        let data = Self::positions(program, v).map(|at| self.data[at]).collect();
        Tensor::new(v.shape.clone(), data)
    }

    /// Writes a tensor into an output view (a strided one: a piece of a concat's buffer).
    fn write(&mut self, program: &Program, v: &View, t: &Tensor<T>) {
        if contiguous(v) {
            let base = Self::base(program, v);
            self.data[base..base + t.data.len()].copy_from_slice(&t.data);
            return;
        }
        for (at, &x) in Self::positions(program, v).zip(&t.data) {
            self.data[at] = x;
        }
    }

    /// Where the view's elements lie in the arena, in row-major order of its shape.
    fn positions<'v>(program: &Program, v: &'v View) -> impl Iterator<Item = usize> + 'v {
        let base = Self::base(program, v) as isize;
        let n: usize = v.shape.iter().product();
        let mut index = vec![0usize; v.shape.len()];
        (0..n).map(move |_| {
            let at = base + index.iter().zip(&v.strides).map(|(&i, &s)| i as isize * s).sum::<isize>();
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < v.shape[d] {
                    break;
                }
                index[d] = 0;
            }
            at as usize
        })
    }
}

/// Whether the view's elements lie in order, one after another.
fn contiguous(v: &View) -> bool {
    let mut expected = 1isize;
    for (&d, &s) in v.shape.iter().zip(&v.strides).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected *= d as isize;
    }
    true
}

/// Runs `program` (planned from `graph`) on simulated ranks: rank `r` holds `params[r]` and
/// reads `inputs[r]`. Returns each rank's outputs.
pub fn run_ranks<T: Real>(
    graph: &Graph,
    program: &Program,
    params: &[&HashMap<String, Tensor<T>>],
    inputs: &[&HashMap<String, Tensor<T>>],
) -> Result<Vec<Vec<Tensor<T>>>, RunError> {
    run_ranks_with(graph, program, None, params, inputs)
}

/// Sees a one-rank run's arena around each launch: how another executor is checked
/// against this one, launch by launch, on the same memory.
pub trait Observer<T> {
    /// Before launch `i`, with the arena as it reads it.
    fn before(&mut self, i: usize, arena: &[T]) -> Result<(), RunError>;
    /// After launch `i`, with its outputs written.
    fn after(&mut self, i: usize, arena: &[T]) -> Result<(), RunError>;
}

/// [`run_ranks`], running fused kernels as the generated code of `kernels` (compiled for
/// this program) when the element type is `f32`.
pub fn run_ranks_with<T: Real>(
    graph: &Graph,
    program: &Program,
    kernels: Option<&Kernels>,
    params: &[&HashMap<String, Tensor<T>>],
    inputs: &[&HashMap<String, Tensor<T>>],
) -> Result<Vec<Vec<Tensor<T>>>, RunError> {
    run_observed_ranks(graph, program, kernels, params, inputs, Hooks::none())
}

/// [`run_with`] on one rank, showing `observer` the arena around every launch.
pub fn run_observed<T: Real>(
    graph: &Graph,
    program: &Program,
    kernels: &Kernels,
    params: &HashMap<String, Tensor<T>>,
    inputs: &HashMap<String, Tensor<T>>,
    observer: &mut dyn Observer<T>,
) -> Result<Vec<Tensor<T>>, RunError> {
    let hooks = Hooks { observer: Some(observer), exchange: None };
    Ok(run_observed_ranks(graph, program, Some(kernels), &[params], &[inputs], hooks)?.remove(0))
}

/// Which of a rank's groups a collective exchanges with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// The tensor-parallel ranks of its replica (`all_reduce`, `all_gather`, …).
    Tensor,
    /// The replicas holding the same parts (`data_all_reduce`).
    Data,
}

/// The other processes of a job, for the collectives of a one-rank run (its groups,
/// [`crate::dist::Mesh`]): given one, the run is rank [`Exchange::rank`] of the program's
/// tensor-parallel ranks, and its collective launches exchange values with the others;
/// without one, collectives run over the simulated ranks.
pub trait Exchange {
    fn rank(&self, axis: Axis) -> usize;
    fn size(&self, axis: Axis) -> usize;
    fn all_reduce_sum(&mut self, axis: Axis, data: &mut [f32]) -> Result<(), String>;
    /// Every rank's `local`, in rank order.
    fn all_gather(&mut self, axis: Axis, local: &[f32]) -> Result<Vec<Vec<f32>>, String>;
}

impl crate::dist::Mesh {
    fn group(&mut self, axis: Axis) -> &mut crate::dist::TcpGroup {
        match axis {
            Axis::Tensor => &mut self.tensor,
            Axis::Data => &mut self.data,
        }
    }
}

impl Exchange for crate::dist::Mesh {
    fn rank(&self, axis: Axis) -> usize {
        match axis {
            Axis::Tensor => self.tensor.rank(),
            Axis::Data => self.data.rank(),
        }
    }

    fn size(&self, axis: Axis) -> usize {
        match axis {
            Axis::Tensor => self.tensor.size(),
            Axis::Data => self.data.size(),
        }
    }

    fn all_reduce_sum(&mut self, axis: Axis, data: &mut [f32]) -> Result<(), String> {
        self.group(axis).all_reduce_sum(data).map_err(|e| e.to_string())
    }

    fn all_gather(&mut self, axis: Axis, local: &[f32]) -> Result<Vec<Vec<f32>>, String> {
        self.group(axis).all_gather(local).map_err(|e| e.to_string())
    }
}

/// What a run shows its launches to, or does them through, beside the arenas.
struct Hooks<'a, T> {
    observer: Option<&'a mut dyn Observer<T>>,
    exchange: Option<&'a mut dyn Exchange>,
}

impl<T> Hooks<'_, T> {
    fn none() -> Self {
        Hooks { observer: None, exchange: None }
    }
}

/// [`run_with`] as one rank of a job of processes: its collectives through `exchange`.
pub fn run_exchanging<T: Real>(
    graph: &Graph,
    program: &Program,
    kernels: &Kernels,
    params: &HashMap<String, Tensor<T>>,
    inputs: &HashMap<String, Tensor<T>>,
    exchange: &mut dyn Exchange,
) -> Result<Vec<Tensor<T>>, RunError> {
    let hooks = Hooks { observer: None, exchange: Some(exchange) };
    Ok(run_observed_ranks(graph, program, Some(kernels), &[params], &[inputs], hooks)?.remove(0))
}

fn run_observed_ranks<T: Real>(
    graph: &Graph,
    program: &Program,
    kernels: Option<&Kernels>,
    params: &[&HashMap<String, Tensor<T>>],
    inputs: &[&HashMap<String, Tensor<T>>],
    hooks: Hooks<T>,
) -> Result<Vec<Vec<Tensor<T>>>, RunError> {
    let ranks = params.len();
    let words = program.memory.arena_bytes.div_ceil(slot::<T>());
    let scratch = kernels.map_or(0, Kernels::scratch);
    let mut arenas: Vec<Arena<T>> = (0..ranks).map(|_| Arena::zeroed(words + scratch)).collect::<Result<_, _>>()?;
    // Weights and inputs into their buffers.
    for (r, arena) in arenas.iter_mut().enumerate() {
        for b in program.buffers.iter().filter(|b| b.persistent()) {
            let value = match &graph.nodes[b.node].op {
                Op::Param(p) => param(graph, *p, params[r])?,
                Op::Input(name) => inputs[r].get(name).ok_or_else(|| RunError::MissingInput(name.clone()))?,
                _ => continue,
            };
            arena.fill(graph, program, b, value)?;
        }
    }
    execute(graph, program, kernels, &mut arenas, words, hooks)?;
    Ok(arenas.iter().map(|arena| program.outputs.iter().map(|v| arena.read(program, v)).collect()).collect())
}

/// A parameter's weights, checked against its declared shape.
pub(crate) fn param<'w, T: Real>(
    graph: &Graph,
    p: usize,
    params: &'w HashMap<String, Tensor<T>>,
) -> Result<&'w Tensor<T>, RunError> {
    let spec = &graph.params[p];
    let w = params.get(&spec.name).ok_or_else(|| RunError::MissingParam(spec.name.clone()))?;
    if w.shape != spec.shape {
        return Err(RunError::ParamShape {
            name: spec.name.clone(),
            expected: spec.shape.clone(),
            got: w.shape.clone(),
        });
    }
    Ok(w)
}

impl<T: Real> Arena<T> {
    /// `cache_write` planned in place (its output is its cache input's buffer): only the
    /// new rows move, where the reference semantics would copy the whole cache in and out
    /// on every decode step. Rows past the cache's end are dropped, as there.
    fn append_rows(&mut self, program: &Program, launch: &hyb_compiler::plan::Launch) {
        let (cache, new, pos) = (&launch.inputs[0], &launch.inputs[1], &launch.inputs[2]);
        let rows = self.read(program, new);
        let at = self.read(program, pos).data[0].f64() as usize;
        let (b, s, t) = (cache.shape[0], cache.shape[1], new.shape[1]);
        let row: usize = cache.shape[2..].iter().product();
        let base = Self::base(program, cache);
        for bi in 0..b {
            for ti in 0..t.min(s.saturating_sub(at)) {
                let (to, from) = (base + (bi * s + at + ti) * row, (bi * t + ti) * row);
                self.data[to..to + row].copy_from_slice(&rows.data[from..from + row]);
            }
        }
    }

    /// Writes a weight or input into its (persistent, contiguous) buffer.
    fn fill(
        &mut self,
        graph: &Graph,
        program: &Program,
        b: &hyb_compiler::plan::Buffer,
        value: &Tensor<T>,
    ) -> Result<(), RunError> {
        if value.len() != b.elements {
            let expected = format!("{} elements for B={} T={}", b.elements, program.batch, program.seq);
            return Err(RunError::InputShape { name: node_name(graph, b.node), expected, got: value.shape.clone() });
        }
        let start = b.offset / slot::<T>();
        self.data[start..start + b.elements].copy_from_slice(&value.data);
        Ok(())
    }
}

/// Runs every launch of `program` over the arenas (one per rank) in order, except that an
/// exchange-stream launch runs as late as the program allows: when a launch waits for it,
/// or at the end. The GPU runs it anywhere in between, beside the computation; running it
/// last is the case in which a plan that let its inputs be overwritten, or read its
/// outputs early, shows.
fn execute<T: Real>(
    graph: &Graph,
    program: &Program,
    kernels: Option<&Kernels>,
    arenas: &mut [Arena<T>],
    words: usize,
    mut hooks: Hooks<T>,
) -> Result<(), RunError> {
    // The planned sizes, for attributes that name the batch or sequence symbols.
    let (batch, seq) = (program.batch as i64, program.seq as i64);
    let symbol = |name: &str| match name {
        "B" => Some(batch),
        "T" => Some(seq),
        _ => None,
    };
    let bind = |s: &str| Dim::bind_parts(s, &symbol);
    let sizes = Sizes::new(&bind);
    let mut run = |index: usize, arenas: &mut [Arena<T>]| -> Result<(), RunError> {
        if let Some(o) = hooks.observer.as_deref_mut() {
            o.before(index, &arenas[0].data)?;
        }
        let exchanged = match hooks.exchange.as_deref_mut() {
            Some(exchange) => exchange_one(graph, program, arenas, sizes, index, exchange)?,
            None => false,
        };
        if !exchanged {
            launch_one(graph, program, kernels, arenas, words, sizes, index)?;
        }
        if let Some(o) = hooks.observer.as_deref_mut() {
            o.after(index, &arenas[0].data)?;
        }
        Ok(())
    };
    // Exchange-stream launches not run yet, in their stream's order.
    let mut pending = std::collections::VecDeque::new();
    for (index, launch) in program.launches.iter().enumerate() {
        if let Some(waited) = launch.waits_for {
            while pending.front().is_some_and(|&e| e <= waited) {
                run(pending.pop_front().expect("checked"), arenas)?;
            }
        }
        match launch.stream {
            Stream::Exchange => pending.push_back(index),
            Stream::Compute => run(index, arenas)?,
        }
    }
    pending.into_iter().try_for_each(|e| run(e, arenas))
}

/// Runs launch `index` through `exchange` if it is a collective; whether it was. A
/// data-parallel all-reduce sums through the group; the tensor-parallel collectives gather
/// every rank's inputs and take this rank's part of what the simulated ranks compute (the
/// same order of sums on every rank); a rank's own slice or lookup needs no other rank.
fn exchange_one<T: Real>(
    graph: &Graph,
    program: &Program,
    arenas: &mut [Arena<T>],
    sizes: Sizes,
    index: usize,
    exchange: &mut dyn Exchange,
) -> Result<bool, RunError> {
    let launch = &program.launches[index];
    let n = &graph.nodes[launch.node];
    let Op::Prim(p) = &n.op else { return Ok(false) };
    if !p.is_collective() {
        return Ok(false);
    }
    let axis = if p.over_replicas() { Axis::Data } else { Axis::Tensor };
    let (rank, size) = (exchange.rank(axis), exchange.size(axis));
    let to_f32 = |t: &Tensor<T>| t.data.iter().map(|x| x.f64() as f32).collect::<Vec<f32>>();
    let of_f32 = |shape: &[usize], data: Vec<f32>| {
        Tensor::new(shape.to_vec(), data.into_iter().map(|x| T::of(x as f64)).collect())
    };
    for arena in arenas.iter_mut() {
        let mut views = launch.inputs.iter();
        let xs: Vec<Tensor<T>> = n
            .inputs
            .iter()
            .map(|&x| match graph.nodes[x].op {
                Op::Constant(c) => Tensor::scalar(T::of(c)),
                _ => arena.read(program, views.next().expect("a view per non-constant input")),
            })
            .collect();
        let outs: Vec<Tensor<T>> = match p {
            Prim::DataAllReduce(_) => {
                let mut data = to_f32(&xs[0]);
                exchange.all_reduce_sum(Axis::Data, &mut data).map_err(RunError::Collective)?;
                vec![of_f32(&xs[0].shape, data)]
            }
            Prim::AllReduce(_)
            | Prim::GroupAllReduce(_)
            | Prim::AllGather(_)
            | Prim::ReduceScatter(_)
            | Prim::DataReduceScatter(_)
            | Prim::DataAllGather(_) => {
                let mut ranks: Vec<Vec<Tensor<T>>> = vec![Vec::new(); size];
                for x in &xs {
                    let parts = exchange.all_gather(axis, &to_f32(x)).map_err(RunError::Collective)?;
                    for (r, part) in parts.into_iter().enumerate() {
                        if part.len() != x.len() {
                            let why = format!("rank {r} sent {} values to a collective of {}", part.len(), x.len());
                            return Err(RunError::Collective(why));
                        }
                        ranks[r].push(of_f32(&x.shape, part));
                    }
                }
                let refs: Vec<Vec<&Tensor<T>>> = ranks.iter().map(|xs| xs.iter().collect()).collect();
                p.eval_ranks(&refs, sizes).swap_remove(rank)
            }
            _ => {
                let copies: Vec<Vec<&Tensor<T>>> = (0..size).map(|_| xs.iter().collect()).collect();
                p.eval_ranks(&copies, sizes).swap_remove(rank)
            }
        };
        for (v, t) in launch.outputs.iter().zip(&outs) {
            arena.write(program, v, t);
        }
    }
    Ok(true)
}

/// Runs launch `index` of `program` on every rank's arena.
fn launch_one<T: Real>(
    graph: &Graph,
    program: &Program,
    kernels: Option<&Kernels>,
    arenas: &mut [Arena<T>],
    words: usize,
    sizes: Sizes,
    index: usize,
) -> Result<(), RunError> {
    let launch = &program.launches[index];
    {
        let n = &graph.nodes[launch.node];
        if let Op::Prim(Prim::Embedding(_)) = &n.op {
            // Native code selects nothing for a bad id; the program refuses it, as the
            // reference does.
            let vocab = launch.inputs[0].shape[0];
            for arena in arenas.iter() {
                let ids = arena.read(program, &launch.inputs[1]);
                if let Some(&id) =
                    ids.data.iter().find(|id| id.f64() < 0.0 || id.f64() >= vocab as f64 || id.f64().fract() != 0.0)
                {
                    return Err(RunError::TokenOutOfRange { id: id.f64(), vocab });
                }
            }
        }
        if let Op::Prim(Prim::CacheWrite(_)) = &n.op {
            if launch.outputs[0] == launch.inputs[0] && contiguous(&launch.inputs[0]) {
                for arena in arenas.iter_mut() {
                    arena.append_rows(program, launch);
                }
                return Ok(());
            }
        }
        if let Some(kernels) = kernels.filter(|k| k.has(index)) {
            let mut ran = true;
            for arena in arenas.iter_mut() {
                let Some(data) = (&mut arena.data as &mut dyn std::any::Any).downcast_mut::<Vec<f32>>() else {
                    ran = false;
                    break;
                };
                let ins: Vec<_> = launch.inputs.iter().map(|v| arena_view(program, v)).collect();
                let outs: Vec<_> = launch.outputs.iter().map(|v| arena_view(program, v)).collect();
                kernels.run(index, data, words, &ins, &outs).map_err(|e| RunError::Kernel(e.to_string()))?;
            }
            if ran {
                return Ok(());
            }
        }
        if launch.kind == LaunchKind::Convert {
            // One element type in the arena: the copy is the value.
            for arena in arenas.iter_mut() {
                let value = arena.read(program, &launch.inputs[0]);
                arena.write(program, &launch.outputs[0], &value);
            }
            return Ok(());
        }
        // The node's inputs: constants are immediates, the rest are the launch's views.
        let gathered: Vec<Vec<Tensor<T>>> = arenas
            .iter()
            .map(|arena| {
                let mut views = launch.inputs.iter();
                n.inputs
                    .iter()
                    .map(|&x| match graph.nodes[x].op {
                        Op::Constant(c) => Tensor::scalar(T::of(c)),
                        _ => arena.read(program, views.next().expect("a view per non-constant input")),
                    })
                    .collect()
            })
            .collect();
        let outs: Vec<Vec<Tensor<T>>> = match &n.op {
            Op::Prim(p) => {
                let refs: Vec<Vec<&Tensor<T>>> = gathered.iter().map(|xs| xs.iter().collect()).collect();
                if p.is_collective() {
                    p.eval_ranks(&refs, sizes)
                } else {
                    refs.iter().map(|xs| p.eval(xs, sizes)).collect()
                }
            }
            Op::Kernel(k) => gathered
                .into_iter()
                .map(|xs| {
                    let args = xs.into_iter().enumerate().map(|(j, t)| (j.to_string(), t)).collect();
                    reference::run(&k.body, &HashMap::new(), &args)
                })
                .collect::<Result<_, _>>()?,
            _ => unreachable!("only computed nodes launch"),
        };
        for (arena, rank_outs) in arenas.iter_mut().zip(&outs) {
            for (v, t) in launch.outputs.iter().zip(rank_outs) {
                arena.write(program, v, t);
            }
        }
    }
    Ok(())
}

/// A program loaded once and run many times on one rank — a decode step per generated
/// token: the arena keeps the weights and every input between runs, so a run writes only
/// the inputs it is given, and outputs planned in place of an input (a decoding cache)
/// carry over to the next run.
pub struct Resident<'p, T> {
    graph: &'p Graph,
    program: &'p Program,
    kernels: Option<&'p Kernels>,
    arena: Arena<T>,
    words: usize,
}

impl<'p, T: Real> Resident<'p, T> {
    /// The arena with the weights written; inputs start as zeros. With `kernels`
    /// (compiled for this program, float32), kernels run as generated code.
    pub fn new(
        graph: &'p Graph,
        program: &'p Program,
        kernels: Option<&'p Kernels>,
        params: &HashMap<String, Tensor<T>>,
    ) -> Result<Self, RunError> {
        let words = program.memory.arena_bytes.div_ceil(slot::<T>());
        let scratch = kernels.map_or(0, Kernels::scratch);
        let mut arena = Arena { data: vec![T::zero(); words + scratch] };
        for b in program.buffers.iter().filter(|b| b.persistent()) {
            if let Op::Param(p) = &graph.nodes[b.node].op {
                arena.fill(graph, program, b, param(graph, *p, params)?)?;
            }
        }
        Ok(Resident { graph, program, kernels, arena, words })
    }

    /// Writes input `name` (its whole buffer).
    pub fn set(&mut self, name: &str, value: &Tensor<T>) -> Result<(), RunError> {
        let graph = self.graph;
        let b = self
            .program
            .buffers
            .iter()
            .find(|b| b.persistent() && matches!(&graph.nodes[b.node].op, Op::Input(n) if n == name))
            .ok_or_else(|| RunError::MissingInput(name.to_string()))?;
        self.arena.fill(graph, self.program, b, value)
    }

    /// Runs every launch; returns the program's outputs of index `outputs` (a decode step
    /// reads its logits, not the caches it updated in place).
    pub fn run(&mut self, outputs: &[usize]) -> Result<Vec<Tensor<T>>, RunError> {
        let arena = std::slice::from_mut(&mut self.arena);
        execute(self.graph, self.program, self.kernels, arena, self.words, Hooks::none())?;
        Ok(outputs.iter().map(|&o| self.arena.read(self.program, &self.program.outputs[o])).collect())
    }
}

/// A view as generated code addresses it: elements from the start of the arena.
fn arena_view<'a>(program: &Program, v: &'a View) -> hyb_compiler::codegen::cpu::ArenaView<'a> {
    hyb_compiler::codegen::cpu::ArenaView {
        offset: Arena::<f32>::base(program, v),
        shape: &v.shape,
        strides: &v.strides,
    }
}

/// Runs `program` on one rank, with generated code for the kernels of `kernels`.
pub fn run_with<T: Real>(
    graph: &Graph,
    program: &Program,
    kernels: &Kernels,
    params: &HashMap<String, Tensor<T>>,
    inputs: &HashMap<String, Tensor<T>>,
) -> Result<Vec<Tensor<T>>, RunError> {
    Ok(run_ranks_with(graph, program, Some(kernels), &[params], &[inputs])?.remove(0))
}

/// Runs `program` on one rank.
pub fn run<T: Real>(
    graph: &Graph,
    program: &Program,
    params: &HashMap<String, Tensor<T>>,
    inputs: &HashMap<String, Tensor<T>>,
) -> Result<Vec<Tensor<T>>, RunError> {
    Ok(run_ranks(graph, program, &[params], &[inputs])?.remove(0))
}

fn node_name(graph: &Graph, node: usize) -> String {
    match &graph.nodes[node].op {
        Op::Param(p) => graph.params[*p].name.clone(),
        Op::Input(name) => name.clone(),
        _ => format!("%{node}"),
    }
}

#[cfg(test)]
mod tests {
    use super::Arena;

    #[test]
    fn an_arena_the_host_cannot_hold_is_an_error() {
        let refused = Arena::<f32>::zeroed(usize::MAX / 8);
        assert!(refused.is_err_and(|e| e.to_string().contains("GiB of host memory")));
        assert_eq!(Arena::<f32>::zeroed(3).map(|a| a.data).ok(), Some(vec![0.0; 3]));
    }
}
