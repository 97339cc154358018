//! The training graph: forward pass, token cross-entropy, backward pass (autodiff),
//! global-norm gradient clipping and the AdamW update — one graph, so a backend compiles
//! and fuses the whole step, optimizer included.
//!
//! Inputs: `ids` and `targets` `[B, T]`; `loss_weights` `[B, T]` (the weight of each
//! position's loss: `1/(B·T)` for language modelling, zero outside the answers for recall
//! tasks); scalars `lr`, `bias_correction1 = 1 − β₁ᵗ`, `bias_correction2 = 1 − β₂ᵗ`; and the
//! optimizer state `m.NAME`, `v.NAME` per parameter. Outputs: the loss, the gradient's
//! global norm (before clipping), then for each parameter its new value, `m` and `v`.

use crate::autodiff::gradients;
use crate::ir::{Graph, MomentShard, NodeId, Op, ParamSpec, TensorType};
use crate::ops::{AllGather, AllReduce, Binary, DataAllGather, DataAllReduce, DataReduceScatter, DataShard, OneHot};
use crate::ops::{Concat, Pad, Prim, ReduceOp, Select, Shard, Slice, StopGradient, TpCopy, Unary};
use hyb_dsl::dim::Dim;
use hyb_dsl::inits::Role;
use hyb_dsl::value::DType;

/// AdamW with decoupled weight decay.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value.
    pub clip: Option<f64>,
    /// Also decay embeddings and vector-like parameters (norms, biases, A_log, D, dt_bias).
    pub decay_all: bool,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, clip: Some(1.0), decay_all: false }
    }
}

/// µP learning-rate multiplier of a parameter (Tensor Programs V, Adam): matrices whose
/// fan-in grows with width (hidden, output) get `1/width_mult`; embeddings and vectors keep
/// the base rate. `width_mult = d / base_width`.
pub fn mup_lr_multiplier(role: Role, width_mult: f64) -> f64 {
    match role {
        Role::Hidden | Role::Output => 1.0 / width_mult,
        Role::Input | Role::Vector => 1.0,
    }
}

pub struct TrainingGraph {
    pub graph: Graph,
    /// Parameter names, in output order.
    pub params: Vec<String>,
}

fn scalar_input(g: &mut Graph, name: &str) -> NodeId {
    g.add(Op::Input(name.into()), vec![], TensorType { shape: vec![], dtype: DType::F32 })
}

/// Each row's maximum, the shift a logsumexp takes for range: the result does not depend on
/// it, so neither does its gradient.
fn row_max(g: &mut Graph, x: NodeId) -> NodeId {
    let max = g.reduce(ReduceOp::Max, x, -1, true);
    g.apply(StopGradient, vec![max])
}

/// Logits a tensor-parallel program gathers from vocabulary shards: the local shard and the
/// number of ranks.
fn vocab_parallel(g: &Graph, logits: NodeId) -> Option<(NodeId, usize)> {
    let n = &g.nodes[logits];
    let Op::Prim(Prim::AllGather(AllGather { axis, ranks })) = &n.op else { return None };
    (*axis == 2 || *axis == -1).then_some((n.inputs[0], *ranks))
}

/// `logsumexp` and the target's logit from each rank's vocabulary shard (Megatron's
/// vocabulary-parallel cross-entropy): only per-token scalars cross ranks, never the logits.
fn vocab_parallel_terms(g: &mut Graph, local: NodeId, onehot: NodeId, ranks: usize) -> (NodeId, NodeId) {
    let local_max = row_max(g, local);
    let maxima = g.apply(AllGather { axis: -1, ranks }, vec![local_max]);
    let max = row_max(g, maxima);
    let shared_max = g.apply(TpCopy, vec![max]);
    let shifted = g.binary(Binary::Sub, local, shared_max);
    let e = g.unary(Unary::Exp, shifted);
    let s = g.sum(e, -1, true);
    let s = g.apply(AllReduce, vec![s]);
    let lse = g.unary(Unary::Log, s);
    let lse = g.binary(Binary::Add, lse, max);
    let mine = g.apply(Shard { axis: -1, ranks }, vec![onehot]);
    let picked = g.binary(Binary::Mul, local, mine);
    let picked = g.sum(picked, -1, true);
    (lse, g.apply(AllReduce, vec![picked]))
}

/// Builds the training step of a forward graph whose output 0 is the logits `[B, T, V]`.
pub fn training_graph(forward: &Graph, opt: &AdamW, width_mult: f64) -> TrainingGraph {
    step_graph(forward, opt, width_mult, DataParallel::Alone)
}

/// How a training step's data-parallel replicas share the update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataParallel {
    /// One process trains on the whole batch.
    Alone,
    /// One of several replicas: gradients summed over them (all-reduced), and every
    /// replica applies the whole update with the whole optimizer state.
    Replicated,
    /// ZeRO-1 over this many replicas: gradients reduce-scattered, each replica updating
    /// its run of every parameter with its run of the moments, the weights all-gathered.
    Zero1(usize),
}

/// [`training_graph`] for one of several data-parallel replicas, each given its rows of the
/// batch (with the whole batch's loss weights): the gradients and the loss are summed over
/// the replicas ([`DataAllReduce`]) before the norm, the clipping and the update, so every
/// replica applies the whole batch's update and the weights stay equal.
pub fn data_parallel_training_graph(forward: &Graph, opt: &AdamW, width_mult: f64) -> TrainingGraph {
    step_graph(forward, opt, width_mult, DataParallel::Replicated)
}

/// [`data_parallel_training_graph`] with ZeRO-1 over `replicas`: each replica holds the
/// moments of its run of every parameter ([`MomentShard`]), so the optimizer state per
/// replica shrinks `replicas` times. Gradients are reduce-scattered instead of
/// all-reduced, each replica updates its run, and the updated runs are all-gathered into
/// every replica's weights: the same bytes on the links as an all-reduce, and the same
/// step. A parameter whose tensor-parallel part mixes split and replicated sections keeps
/// its whole moments (its gradient norm is summed section by section).
pub fn zero_training_graph(forward: &Graph, opt: &AdamW, width_mult: f64, replicas: usize) -> TrainingGraph {
    step_graph(forward, opt, width_mult, DataParallel::Zero1(replicas))
}

/// Whether ZeRO-1 partitions the moments of `spec`: all of a parameter whose part is whole
/// or split throughout (the norm of its run is then summed over one kind of rank).
fn zero_partitions(spec: &ParamSpec) -> bool {
    spec.shard.as_ref().is_none_or(|s| s.sections.iter().all(|x| x.parts == s.ranks))
}

/// A parameter's gradient, weight and update seen as its replica's run under ZeRO-1.
struct Run {
    /// Elements of the (local) parameter and of its zero-padded flat form.
    elements: usize,
    padded: usize,
    replicas: usize,
}

/// Bytes of gradients summed over the replicas in one exchange (PyTorch DDP's default):
/// large enough that an exchange's fixed cost is small against its transfer, small enough
/// that the first exchange need not wait for most of the backward pass.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Sums gradients `grads[p]` of parameters `params` over the replicas, in buckets of at
/// most [`BUCKET_BYTES`] (one larger gradient is a bucket of its own): each bucket's
/// gradients flattened and concatenated, one all-reduce, sliced back. Buckets follow the
/// parameters in reverse, the order the backward pass finishes their gradients.
fn all_reduce_in_buckets(g: &mut Graph, grads: &mut [NodeId], params: &[usize]) {
    let bytes = |g: &Graph, p: usize| g.params[p].shape.iter().product::<usize>() * 4;
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut filled = 0;
    for &p in params.iter().rev() {
        match buckets.last_mut() {
            Some(bucket) if filled + bytes(g, p) <= BUCKET_BYTES => bucket.push(p),
            _ => {
                buckets.push(vec![p]);
                filled = 0;
            }
        }
        filled += bytes(g, p);
    }
    for bucket in buckets {
        if let [p] = bucket[..] {
            grads[p] = g.apply(DataAllReduce, vec![grads[p]]);
            continue;
        }
        let sizes: Vec<i64> = bucket.iter().map(|&p| g.params[p].shape.iter().product::<usize>() as i64).collect();
        let flat: Vec<NodeId> =
            bucket.iter().zip(&sizes).map(|(&p, &n)| g.reshape(grads[p], vec![Dim::constant(n)])).collect();
        let joined = g.apply(Concat::new(0), flat);
        let summed = g.apply(DataAllReduce, vec![joined]);
        let mut start = 0;
        for (&p, &n) in bucket.iter().zip(&sizes) {
            let part = g.apply(Slice::new(0, Dim::constant(start), Dim::constant(start + n)), vec![summed]);
            let shape = g.params[p].shape.iter().map(|&d| Dim::constant(d as i64)).collect();
            grads[p] = g.reshape(part, shape);
            start += n;
        }
    }
}

impl Run {
    fn flat(&self, g: &mut Graph, x: NodeId) -> NodeId {
        let flat = g.reshape(x, vec![Dim::constant(self.elements as i64)]);
        if self.padded == self.elements {
            return flat;
        }
        let after = Dim::constant((self.padded - self.elements) as i64);
        g.apply(Pad { axis: 0, before: Dim::constant(0), after }, vec![flat])
    }

    /// The updated run gathered from every replica, back in the parameter's shape.
    fn gathered(&self, g: &mut Graph, run: NodeId, shape: Vec<Dim>) -> NodeId {
        let mut whole = g.apply(DataAllGather { ranks: self.replicas }, vec![run]);
        if self.padded != self.elements {
            let end = Dim::constant(self.elements as i64);
            whole = g.apply(Slice::new(0, Dim::constant(0), end), vec![whole]);
        }
        g.reshape(whole, shape)
    }
}

fn step_graph(forward: &Graph, opt: &AdamW, width_mult: f64, mode: DataParallel) -> TrainingGraph {
    let mut g = forward.clone();
    let logits = g.outputs[0];
    let shape = g.shape(logits).to_vec();
    let (bt, vocab) = (shape[..2].to_vec(), shape[2].clone());
    let ids_ty = TensorType { shape: bt.clone(), dtype: DType::I64 };
    let targets = g.add(Op::Input("targets".into()), vec![], ids_ty);
    let weights = g.add(Op::Input("loss_weights".into()), vec![], TensorType { shape: bt, dtype: DType::F32 });
    let onehot = g.apply(OneHot { depth: vocab }, vec![targets]);

    // loss = Σ w · (logsumexp(logits) − logits[target])
    let (lse, picked) = match vocab_parallel(&g, logits) {
        Some((local, ranks)) => vocab_parallel_terms(&mut g, local, onehot, ranks),
        None => {
            let max = row_max(&mut g, logits);
            let shifted = g.binary(Binary::Sub, logits, max);
            let e = g.unary(Unary::Exp, shifted);
            let s = g.sum(e, -1, true);
            let lse = g.unary(Unary::Log, s);
            let lse = g.binary(Binary::Add, lse, max);
            let picked = g.binary(Binary::Mul, logits, onehot);
            (lse, g.sum(picked, -1, true))
        }
    };
    let nll = g.binary(Binary::Sub, lse, picked);
    let nll = g.sum(nll, -1, false);
    let weighted = g.binary(Binary::Mul, nll, weights);
    let loss = g.sum_all(weighted);

    let param_nodes: Vec<NodeId> =
        (0..g.params.len()).map(|p| g.param_node(p).expect("every parameter is used")).collect();
    let mut grads = gradients(&mut g, loss, &param_nodes)
        .expect("a checked model holds no gradient primitives (the language refuses them)");
    // Under ZeRO-1, each partitioned parameter's run and its summed gradient's run.
    let mut runs: Vec<Option<Run>> = Vec::with_capacity(param_nodes.len());
    let loss = if mode == DataParallel::Alone {
        runs.resize_with(param_nodes.len(), || None);
        loss
    } else {
        for (p, (&w, gr)) in param_nodes.iter().zip(grads.iter_mut()).enumerate() {
            g.scope = g.nodes[w].scope;
            g.origin = g.nodes[w].origin;
            let run = match mode {
                DataParallel::Zero1(replicas) if zero_partitions(&g.params[p]) => {
                    let elements = g.params[p].shape.iter().product::<usize>();
                    g.params[p].moments = Some(MomentShard { replicas });
                    Some(Run { elements, padded: elements.div_ceil(replicas) * replicas, replicas })
                }
                _ => None,
            };
            if let Some(r) = &run {
                let flat = r.flat(&mut g, *gr);
                *gr = g.apply(DataReduceScatter { ranks: r.replicas }, vec![flat]);
            }
            runs.push(run);
        }
        g.scope = 0;
        g.origin = None;
        let whole: Vec<usize> = (0..param_nodes.len()).filter(|&p| runs[p].is_none()).collect();
        all_reduce_in_buckets(&mut g, &mut grads, &whole);
        g.apply(DataAllReduce, vec![loss])
    };

    // Σ g² over whole parameters, and over the parts of sharded ones each rank holds alone
    // (summed over ranks); a ZeRO-1 run's sums are summed over the replicas too.
    let (mut whole_sq, mut sharded_sq) = (None, None);
    let (mut whole_runs_sq, mut sharded_runs_sq) = (None, None);
    // `weight`: the share of the sum one rank adds (a part held by several ranks alike).
    let add = |g: &mut Graph, acc: &mut Option<NodeId>, x: NodeId, weight: f64| {
        let sq = g.binary(Binary::Mul, x, x);
        let mut s = g.sum_all(sq);
        if weight != 1.0 {
            s = g.scale(s, weight);
        }
        *acc = Some(match *acc {
            Some(a) => g.binary(Binary::Add, a, s),
            None => s,
        });
    };
    for (p, (&w, &gr)) in param_nodes.iter().zip(&grads).enumerate() {
        g.scope = g.nodes[w].scope;
        g.origin = g.nodes[w].origin;
        if runs[p].is_some() {
            let acc = if g.params[p].shard.is_some() { &mut sharded_runs_sq } else { &mut whole_runs_sq };
            add(&mut g, acc, gr, 1.0);
            continue;
        }
        match g.params[p].shard.clone() {
            None => add(&mut g, &mut whole_sq, gr, 1.0),
            Some(shard) => {
                let mut start = 0;
                for s in &shard.sections {
                    let n = s.local();
                    let slice = Slice::new(shard.axis, Dim::constant(start as i64), Dim::constant((start + n) as i64));
                    let part = g.apply(slice, vec![gr]);
                    // A part held by a group of ranks is summed once per rank holding it.
                    let (acc, weight) = match s.parts {
                        1 => (&mut whole_sq, 1.0),
                        p => (&mut sharded_sq, p as f64 / shard.ranks as f64),
                    };
                    add(&mut g, acc, part, weight);
                    start += n;
                }
            }
        }
    }
    g.scope = 0;
    g.origin = None;
    let plus = |g: &mut Graph, a: Option<NodeId>, b: Option<NodeId>| match (a, b) {
        (Some(a), Some(b)) => Some(g.binary(Binary::Add, a, b)),
        (a, b) => a.or(b),
    };
    let whole_runs_sq = whole_runs_sq.map(|s| g.apply(DataAllReduce, vec![s]));
    let sharded_runs_sq = sharded_runs_sq.map(|s| g.apply(DataAllReduce, vec![s]));
    let whole_sq = plus(&mut g, whole_sq, whole_runs_sq);
    let sharded_sq = plus(&mut g, sharded_sq, sharded_runs_sq);
    let sharded_sq = sharded_sq.map(|s| g.apply(AllReduce, vec![s]));
    let norm_sq = match (whole_sq, sharded_sq) {
        (Some(a), Some(b)) => g.binary(Binary::Add, a, b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => g.constant(0.0),
    };
    let norm = g.unary(Unary::Sqrt, norm_sq);
    let clip_scale = opt.clip.map(|c| {
        // min(1, c / (norm + 1e-6))
        let tiny = g.constant(1e-6);
        let denom = g.binary(Binary::Add, norm, tiny);
        let c = g.constant(c);
        let ratio = g.binary(Binary::Div, c, denom);
        let one = g.constant(1.0);
        g.binary(Binary::Minimum, ratio, one)
    });

    let lr = scalar_input(&mut g, "lr");
    let finite = finite_step(&mut g, &[loss, norm, lr]);
    let bc1 = scalar_input(&mut g, "bias_correction1");
    let bc2 = scalar_input(&mut g, "bias_correction2");
    let mut outputs = vec![loss, norm];
    let mut names = Vec::new();
    for (p, (&w, &gr)) in param_nodes.iter().zip(&grads).enumerate() {
        let spec = g.params[p].clone();
        g.scope = g.nodes[w].scope;
        g.origin = g.nodes[w].origin;
        let shape = g.nodes[w].ty.shape.clone();
        let (w, ty) = match &runs[p] {
            Some(r) => {
                let flat = r.flat(&mut g, w);
                let run = g.apply(DataShard { ranks: r.replicas }, vec![flat]);
                (run, g.nodes[run].ty.clone())
            }
            None => (w, g.nodes[w].ty.clone()),
        };
        let m = g.add(Op::Input(format!("m.{}", spec.name)), vec![], ty.clone());
        let v = g.add(Op::Input(format!("v.{}", spec.name)), vec![], ty);
        let gr = match clip_scale {
            Some(s) => g.binary(Binary::Mul, gr, s),
            None => gr,
        };
        let m_old = g.scale(m, opt.beta1);
        let m_new = g.scale(gr, 1.0 - opt.beta1);
        let m_new = g.binary(Binary::Add, m_old, m_new);
        let g2 = g.binary(Binary::Mul, gr, gr);
        let v_old = g.scale(v, opt.beta2);
        let v_new = g.scale(g2, 1.0 - opt.beta2);
        let v_new = g.binary(Binary::Add, v_old, v_new);
        // Each new value is kept only for a finite step. The weight's update reads the kept
        // moments (the new ones whenever it is kept itself), so the three are one kernel's
        // outputs.
        let keep = |g: &mut Graph, new: NodeId, old: NodeId| g.apply(Select, vec![finite, new, old]);
        let (m_new, v_new) = (keep(&mut g, m_new, m), keep(&mut g, v_new, v));
        let m_hat = g.binary(Binary::Div, m_new, bc1);
        let v_hat = g.binary(Binary::Div, v_new, bc2);
        let denom = g.unary(Unary::Sqrt, v_hat);
        let eps = g.constant(opt.eps);
        let denom = g.binary(Binary::Add, denom, eps);
        let mut step = g.binary(Binary::Div, m_hat, denom);
        let decays = opt.decay_all || matches!(spec.role, Role::Hidden | Role::Output);
        if decays && opt.weight_decay > 0.0 {
            let wd = g.scale(w, opt.weight_decay);
            step = g.binary(Binary::Add, step, wd);
        }
        let rate = g.scale(lr, mup_lr_multiplier(spec.role, width_mult));
        let delta = g.binary(Binary::Mul, step, rate);
        let w_new = g.binary(Binary::Sub, w, delta);
        let mut w_new = keep(&mut g, w_new, w);
        if let Some(r) = &runs[p] {
            w_new = r.gathered(&mut g, w_new, shape);
        }
        outputs.extend([w_new, m_new, v_new]);
        names.push(spec.name);
    }
    g.outputs = outputs;
    g.scope = 0;
    g.origin = None;
    TrainingGraph { graph: g, params: names }
}

/// 1 when the step's loss, gradient norm and learning rate are all finite, else 0 (never
/// NaN: `step` compares), so an update a NaN or an infinity would spoil is not applied and
/// the state stays as it was, in place, with no copy kept to undo it. The values are the
/// same on every rank (summed over the data-parallel replicas), so all ranks agree.
fn finite_step(g: &mut Graph, values: &[NodeId]) -> NodeId {
    let finite: Vec<NodeId> = values
        .iter()
        .map(|&x| {
            let size = g.unary(Unary::Abs, x);
            let largest = g.constant(f32::MAX as f64);
            let room = g.binary(Binary::Sub, largest, size);
            g.unary(Unary::Step, room)
        })
        .collect();
    finite.into_iter().reduce(|a, b| g.binary(Binary::Mul, a, b)).expect("at least one value")
}

/// The outputs a training step writes in place, with the leaf each replaces: the new value
/// of parameter `p` (output `2 + 3p`) over the parameter, its moments (`3 + 3p`, `4 + 3p`)
/// over the inputs `m.NAME` and `v.NAME`.
pub fn in_place_updates(g: &Graph) -> Vec<(usize, NodeId)> {
    let mut out = Vec::new();
    for (p, spec) in g.params.iter().enumerate() {
        let Some(w) = g.param_node(p) else { continue };
        out.push((2 + 3 * p, w));
        for (k, moment) in ["m", "v"].iter().enumerate() {
            let name = format!("{moment}.{}", spec.name);
            if let Some((node, _)) = g.input_nodes().find(|(_, n)| *n == name) {
                out.push((3 + 3 * p + k, node));
            }
        }
    }
    out.retain(|&(o, _)| o < g.outputs.len());
    out
}
