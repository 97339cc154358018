//! Prefill and decode graphs for generation, derived from a model's forward graph.
//!
//! Only three operations carry information from one token to later ones: attention (its
//! keys and values), the causal conv1d (its last `K − 1` inputs) and the SSD scan (its
//! state). Each becomes a cache:
//!
//! - **prefill** is the forward graph itself (chunked scan, causal attention) with every
//!   cache's contents after the prompt as extra outputs: keys and values padded to the
//!   cache's capacity, the conv's last `K − 1` inputs (zeros before the prompt), and the
//!   scan's final state (`ssd_state`);
//! - **decode** is the forward graph for new tokens at position `pos` (an input), each
//!   cache an input of exactly the shape prefill writes: `rope` becomes `rope_at`, the
//!   conv `conv_step`, the scan `ssd_step` (the recurrence), and each attention appends its
//!   keys and values (`cache_write`) and attends over the cache (`cache_attention`). Its
//!   outputs are the forward outputs, then every updated cache, which an executor plans in
//!   place of the cache input (so a cache lives in one buffer for the whole generation).
//!
//! Both graphs have the forward graph's parameters, so one set of weights serves both, and
//! go through the same pipeline as any program.
//!
//! A model that mixes time some other way (a sum over the sequence, a concat along time)
//! is not detected: its decode step would see only the new token. The stdlib's layers and
//! every example are tested to decode exactly as the full pass computes.

use super::attention::{self, Attention};
use crate::ir::{Dim, Graph, NodeId, Op, TensorType};
use crate::ops::{CacheAttention, CacheWrite, ConvStep, Pad, Prim, RopeAt, Slice, SsdState, SsdStep, F64};
use hyb_dsl::value::DType;
use std::collections::HashMap;

/// The decode graph's input holding the position of its first new token.
pub const POSITION: &str = "pos";

/// What a cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    /// An attention's keys, `[B, capacity, kv_heads, head_dim]`.
    Keys,
    /// An attention's values, `[B, capacity, kv_heads, head_dim]`.
    Values,
    /// A causal conv1d's last `K − 1` inputs, `[B, K − 1, channels]`.
    Conv,
    /// An SSD scan's state, `[B, heads, head_dim, d_state]`.
    Ssm,
}

/// One cache: the decode graph's input `name`, seeded by prefill's output `1 + i` (for
/// the `i`-th cache) and updated by decode's output `1 + i` (after the logits).
#[derive(Clone, Debug, PartialEq)]
pub struct Cache {
    pub name: String,
    pub kind: CacheKind,
    /// The layer it belongs to (the node's scope: layer `l` is `l + 1`).
    pub scope: u32,
    pub ty: TensorType,
}

/// The two graphs of generation and the caches between them.
#[derive(Clone, Debug)]
pub struct Generation {
    pub prefill: Graph,
    pub decode: Graph,
    pub caches: Vec<Cache>,
    /// The tokens the attention caches hold: prompt and generated tokens together.
    pub capacity: usize,
    /// How many outputs the forward graph has (the logits first); the caches follow.
    pub outputs: usize,
}

/// Why a model cannot be decoded with caches.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error(
        "layer {0}: causal_mask is not used as `softmax(causal_mask(q kᵀ · c)) v`, so decoding cannot replace it with attention over a cache"
    )]
    Attention(String),
    #[error("layer {layer}: `{op}` mixes time in a way a decode step cannot continue from a cache")]
    Unsupported { op: &'static str, layer: String },
    #[error("a shape of the decode graph does not fit: {0}")]
    Shape(String),
    #[error("the cache capacity must be at least 1 token")]
    Capacity,
}

fn layer(scope: u32) -> String {
    scope.checked_sub(1).map_or("outside the layers".to_string(), |l| l.to_string())
}

/// The prefill and decode graphs of `forward` with attention caches of `capacity` tokens.
pub fn generation(forward: &Graph, capacity: usize) -> Result<Generation, DecodeError> {
    if capacity == 0 {
        return Err(DecodeError::Capacity);
    }
    let attentions = attention::find(forward).map_err(|scope| DecodeError::Attention(layer(scope)))?;
    let by_out: HashMap<NodeId, &Attention> = attentions.iter().map(|a| (a.out, a)).collect();
    let mut b = Builder {
        forward,
        prefill: forward.clone(),
        decode: Graph::default(),
        caches: Vec::new(),
        updated: Vec::new(),
        seeds: Vec::new(),
        capacity,
    };
    b.decode.params = forward.params.clone();
    let scalar = TensorType { shape: vec![], dtype: DType::F32 };
    let pos = b.decode.add(Op::Input(POSITION.into()), vec![], scalar);
    let mut new = vec![usize::MAX; forward.nodes.len()];
    for (i, n) in forward.nodes.iter().enumerate() {
        b.decode.scope = n.scope;
        b.decode.origin = n.origin;
        b.prefill.scope = n.scope;
        b.prefill.origin = n.origin;
        let ins: Vec<NodeId> = n.inputs.iter().map(|&x| new[x]).collect();
        new[i] = match &n.op {
            _ if by_out.contains_key(&i) => b.attention(by_out[&i], &new, pos)?,
            Op::Prim(Prim::Rope(r)) => b.apply(RopeAt { theta: r.theta }, vec![ins[0], pos])?,
            Op::Prim(Prim::CausalConv1d(_)) => b.conv(i, &ins)?,
            Op::Prim(Prim::SsdScan(_)) => b.scan(i, &ins)?,
            _ => b.decode.add(n.op.clone(), ins, n.ty.clone()),
        };
    }
    let outputs = forward.outputs.len();
    b.decode.outputs = forward.outputs.iter().map(|&o| new[o]).chain(b.updated.iter().copied()).collect();
    b.prefill.outputs.extend(b.seeds.iter().copied());
    for g in [&mut b.decode, &mut b.prefill] {
        g.scope = 0;
        g.origin = None;
    }
    let decode = b.decode.pruned();
    // A mask still read (its scores or probabilities used beyond the attention) would
    // mask a one-token step as if it were the whole sequence.
    for n in &decode.nodes {
        if let Op::Prim(p @ (Prim::CausalMask(_) | Prim::Tril(_))) = &n.op {
            return Err(DecodeError::Unsupported { op: crate::ops::Primitive::name(p), layer: layer(n.scope) });
        }
    }
    Ok(Generation { prefill: b.prefill, decode, caches: b.caches, capacity, outputs })
}

/// The graphs as they are built: decode node by node, prefill as the forward graph plus
/// the cache seeds.
struct Builder<'f> {
    forward: &'f Graph,
    prefill: Graph,
    decode: Graph,
    caches: Vec<Cache>,
    /// Decode's updated caches, in cache order.
    updated: Vec<NodeId>,
    /// Prefill's cache contents, in cache order.
    seeds: Vec<NodeId>,
    capacity: usize,
}

impl Builder<'_> {
    fn apply(&mut self, p: impl Into<Prim>, inputs: Vec<NodeId>) -> Result<NodeId, DecodeError> {
        self.decode.try_apply(p, inputs).map_err(DecodeError::Shape)
    }

    fn seed(&mut self, p: impl Into<Prim>, inputs: Vec<NodeId>) -> Result<NodeId, DecodeError> {
        self.prefill.try_apply(p, inputs).map_err(DecodeError::Shape)
    }

    /// A cache input of decode, of type `ty`.
    fn cache(&mut self, kind: CacheKind, ty: TensorType) -> NodeId {
        let name = format!("cache.{}.{}", self.caches.len(), format!("{kind:?}").to_lowercase());
        let scope = self.decode.scope;
        self.caches.push(Cache { name: name.clone(), kind, scope, ty: ty.clone() });
        self.decode.add(Op::Input(name), vec![], ty)
    }

    fn shape(&self, n: NodeId) -> &[Dim] {
        &self.forward.nodes[n].ty.shape
    }

    /// Keys and values appended at `pos`, attention over the cache (`[B, heads, T, D]`, as
    /// the node it replaces); prefill seeds the caches with the prompt's keys and values.
    fn attention(&mut self, a: &Attention, new: &[NodeId], pos: NodeId) -> Result<NodeId, DecodeError> {
        let mut caches = Vec::new();
        for (kind, x) in [(CacheKind::Keys, a.k), (CacheKind::Values, a.v)] {
            let s = self.shape(x).to_vec();
            let time = s[1].clone();
            let ty = TensorType {
                shape: vec![s[0].clone(), Dim::constant(self.capacity as i64), s[2].clone(), s[3].clone()],
                dtype: self.forward.nodes[x].ty.dtype,
            };
            let input = self.cache(kind, ty);
            let written = self.apply(CacheWrite, vec![input, new[x], pos])?;
            self.updated.push(written);
            caches.push(written);
            let rest =
                Dim::constant(self.capacity as i64).sub(&time).ok_or_else(|| DecodeError::Shape(format!("{time}")))?;
            let padded = self.seed(Pad { axis: 1, before: Dim::constant(0), after: rest }, vec![x])?;
            self.seeds.push(padded);
        }
        self.apply(CacheAttention { scale: F64(a.scale) }, vec![new[a.q], caches[0], caches[1], pos])
    }

    /// `conv_step` from the cached last inputs; prefill seeds them with the prompt's last
    /// `K − 1` inputs, zeros where the prompt is shorter.
    fn conv(&mut self, node: NodeId, ins: &[NodeId]) -> Result<NodeId, DecodeError> {
        let n = &self.forward.nodes[node];
        let (x, w) = (n.inputs[0], n.inputs[1]);
        let (xs, ws) = (self.shape(x).to_vec(), self.shape(w).to_vec());
        let taps = ws[1].add(&Dim::constant(-1)).ok_or_else(|| DecodeError::Shape(format!("{}", ws[1])))?;
        let ty = TensorType { shape: vec![xs[0].clone(), taps.clone(), xs[2].clone()], dtype: n.ty.dtype };
        let state = self.cache(CacheKind::Conv, ty);
        let mut inputs = vec![ins[0], state, ins[1]];
        inputs.extend(ins.get(2));
        let outs = self.decode.try_apply_all(ConvStep, inputs).map_err(DecodeError::Shape)?;
        self.updated.push(outs[1]);
        let padded = self.seed(Pad { axis: 1, before: taps.clone(), after: Dim::constant(0) }, vec![x])?;
        let end = xs[1].add(&taps).ok_or_else(|| DecodeError::Shape(format!("{}", xs[1])))?;
        let last = self.seed(Slice { axis: 1, start: xs[1].clone(), end }, vec![padded])?;
        self.seeds.push(last);
        Ok(outs[0])
    }

    /// `ssd_step` from the cached state; prefill seeds it with the state after the prompt.
    fn scan(&mut self, node: NodeId, ins: &[NodeId]) -> Result<NodeId, DecodeError> {
        let n = &self.forward.nodes[node];
        let seed = self.seed(SsdState, n.inputs.clone())?;
        self.seeds.push(seed);
        let ty = self.prefill.nodes[seed].ty.clone();
        let state = self.cache(CacheKind::Ssm, ty);
        let mut inputs = ins.to_vec();
        inputs.push(state);
        let outs = self.decode.try_apply_all(SsdStep, inputs).map_err(DecodeError::Shape)?;
        self.updated.push(outs[1]);
        Ok(outs[0])
    }
}
