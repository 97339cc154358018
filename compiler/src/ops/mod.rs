//! The compiler's op set: every primitive defined once, in one module per primitive or small
//! family. A definition carries everything a stage needs to know about it — its signature
//! and shape rule (what the language checks), its float64 meaning (the reference every
//! kernel and rewrite is tested against), its vector-Jacobian product, how tensor
//! parallelism may split its axes, its cost, its class and its linearity and per-token
//! facts — behind the [`Primitive`] trait. [`Prim`] is the closed set, one variant per
//! definition, registered once in [`registry!`] below.
//!
//! Adding a primitive: a module with its attribute type, `impl Primitive` and `DECLS` (its
//! place in the language), one line in [`registry!`] (or its type added to its module's
//! line), and its tests.

pub use reduce::ReduceOp;

use crate::cost::{Machine, Work};
use crate::ir::{Graph, NodeId, TensorType};
use crate::reference::tensor::{Real, Tensor};
use crate::shard::axes::Axes;
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::{Arg, Callable, Ctx, Heads, Param, Primitives, RuleError};
use hyb_dsl::value::{DType, Shape};
use serde::{Deserialize, Serialize};

/// A tensor's type as shape rules see it.
pub type Ty = (Shape, DType);

/// What kind of work a primitive does, declared once and read by every stage: fusion
/// groups elementwise work, row reductions and views around contractions; the cost model
/// charges views nothing; sharding and sequence parallelism read the same classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Class {
    /// Reinterprets indices (reshape, slice, transpose, broadcast): its reader reads through
    /// strides, nothing is copied.
    View,
    /// Maps each element on its own (with numpy broadcasting).
    Elementwise,
    /// Reduces one axis.
    Reduction,
    /// A matrix product.
    Contraction,
    /// Mixes along time or within a row in a fixed pattern (scan, conv, RoPE, masks).
    Sequence,
    /// Copies data into a new layout (concat, pad).
    Movement,
    /// Reads rows by index (embedding lookups, one-hot, their gradients).
    Gather,
    /// BitNet quantisers: a reduction for the scale, then a pointwise rounding.
    Quantize,
    /// Exchanges data between tensor-parallel ranks (or depends on the rank).
    Collective,
}

/// A float attribute, compared and hashed by its bits: attributes key e-graph nodes, and a
/// compiler-made attribute is never NaN.
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, other: &F64) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for F64 {}

impl std::hash::Hash for F64 {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.to_bits().hash(h)
    }
}

impl std::fmt::Debug for F64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Sizes of the symbols (`B`, `T`) when a program runs, for attributes that name them (a
/// reshape to `[B, T, heads, head_dim]`).
#[derive(Clone, Copy)]
pub struct Sizes<'a> {
    bind: &'a dyn Fn(&str) -> Option<i64>,
}

impl<'a> Sizes<'a> {
    /// `bind` gives each symbol's size (`T`, or a part of it such as `T/2`).
    pub fn new(bind: &'a dyn Fn(&str) -> Option<i64>) -> Self {
        Sizes { bind }
    }

    /// For attributes that are all constants (tests of single primitives).
    pub fn constants() -> Sizes<'static> {
        Sizes { bind: &|_| None }
    }

    pub fn of(&self, d: &Dim) -> i64 {
        d.eval(self.bind).unwrap_or_else(|| panic!("the size `{d}` is not bound"))
    }

    pub fn all(&self, ds: &[Dim]) -> Vec<usize> {
        ds.iter().map(|d| self.of(d) as usize).collect()
    }
}

/// A gradient the compiler cannot build.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("the gradient of `{0}` is not defined (second-order gradients are not supported)")]
pub struct NoGradient(pub &'static str);

/// Everything the compiler knows about one primitive.
pub trait Primitive {
    /// The name a model calls it by, and the IR's text form prints.
    fn name(&self) -> &'static str;

    fn class(&self) -> Class;

    /// Output types for inputs of `inputs`' types (several for a multi-output primitive).
    /// Errors name the signature slot they blame.
    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError>;

    /// The float64 (or float32) meaning: one tensor per output.
    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>>;

    /// Each rank's outputs, given each rank's inputs. Only collectives look across ranks.
    fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], sizes: Sizes) -> Vec<Vec<Tensor<T>>> {
        ranks.iter().map(|xs| self.eval(xs, sizes)).collect()
    }

    /// The gradient contribution to each input of `node` (which applies `self`) from the
    /// gradient `dy` of its first output, appended to `g`; `None` where none flows.
    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient>;

    /// Unifies the axes of `node`'s inputs and output that tensor parallelism must split
    /// together, and blocks those it cannot split. By default elementwise work aligns its
    /// axes and anything else needs every axis whole.
    fn shard_axes(&self, ax: &mut Axes, g: &Graph, node: NodeId) {
        let inputs = &g.nodes[node].inputs;
        if self.class() == Class::Elementwise {
            for &x in inputs {
                ax.aligned(g, x, node);
            }
        } else {
            for &x in inputs {
                ax.block_all(g, x);
            }
            ax.block_all(g, node);
        }
    }

    /// Work of the primitive as its own kernel, on machine `m`. Views move nothing; other
    /// work reads its inputs and writes its outputs once at a FLOP per output element.
    fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
        if self.class() == Class::View {
            return Work::default();
        }
        let bytes = inputs.iter().chain(outputs).map(|t| m.bytes(t)).sum();
        let flops = outputs.iter().map(|t| m.numel(t)).sum();
        Work { flops, bytes, launches: 1.0, ..Work::default() }
    }

    /// Whether the result is linear in the inputs marked `partial` (each a partial sum over
    /// ranks), so the sum over ranks may wait until after it.
    fn linear_in(&self, _partial: &[bool]) -> bool {
        false
    }

    /// Whether `node` treats every time step alike, so sequence parallelism may run it on a
    /// slice of the sequence.
    fn per_token(&self, _g: &Graph, _node: NodeId) -> bool {
        self.class() == Class::Elementwise
    }

    /// The value on known scalar inputs (pointwise primitives), for constant folding.
    fn fold(&self, _inputs: &[f64]) -> Option<f64> {
        None
    }

    /// Whether each element of the output is a function of its inputs' elements that a
    /// fused kernel computes where it is read (pointwise work, and `one_hot`'s indicator of
    /// its index), so fusion may put it in its readers' kernels.
    fn fusible(&self) -> bool {
        self.class() == Class::Elementwise
    }

    /// Whether the primitive has one output (its node's type), so its cost needs no shape
    /// rule to find the others.
    fn single_output(&self) -> bool {
        true
    }

    /// The primitive written with pointwise, reduction and view primitives, appended to
    /// `g` on `inputs` (its outputs), for code generators that compile those; `None` when
    /// it has no such form (a template or a library call computes it instead).
    fn expand(&self, _g: &mut Graph, _inputs: &[NodeId]) -> Option<Vec<NodeId>> {
        None
    }
}

pub mod documents;

/// The registration of every primitive: each line is a module of `ops` and the primitive
/// types it defines. Defines the modules, [`Prim`] (one variant per type, named like it),
/// its dispatch to each type's [`Primitive`] impl, and [`DECLS`], the modules' places in
/// the language.
macro_rules! registry {
    ($($module:ident: $($variant:ident),+;)*) => {
        $(pub mod $module;)*
        $(pub use $module::{$($variant),+};)*

        /// Every primitive of the IR, with its typed attributes.
        #[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Prim {
            $($($variant($variant),)+)*
        }

        impl Primitive for Prim {
            fn name(&self) -> &'static str {
                match self { $($(Prim::$variant(p) => p.name(),)+)* }
            }
            fn class(&self) -> Class {
                match self { $($(Prim::$variant(p) => p.class(),)+)* }
            }
            fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
                match self { $($(Prim::$variant(p) => p.infer(inputs, ctx),)+)* }
            }
            fn eval<T: Real>(&self, inputs: &[&Tensor<T>], sizes: Sizes) -> Vec<Tensor<T>> {
                match self { $($(Prim::$variant(p) => p.eval(inputs, sizes),)+)* }
            }
            fn eval_ranks<T: Real>(&self, ranks: &[Vec<&Tensor<T>>], sizes: Sizes) -> Vec<Vec<Tensor<T>>> {
                match self { $($(Prim::$variant(p) => p.eval_ranks(ranks, sizes),)+)* }
            }
            fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
                match self { $($(Prim::$variant(p) => p.vjp(g, node, dy),)+)* }
            }
            fn shard_axes(&self, ax: &mut Axes, g: &Graph, node: NodeId) {
                match self { $($(Prim::$variant(p) => p.shard_axes(ax, g, node),)+)* }
            }
            fn work(&self, m: &Machine, inputs: &[&TensorType], outputs: &[&TensorType]) -> Work {
                match self { $($(Prim::$variant(p) => p.work(m, inputs, outputs),)+)* }
            }
            fn linear_in(&self, partial: &[bool]) -> bool {
                match self { $($(Prim::$variant(p) => p.linear_in(partial),)+)* }
            }
            fn per_token(&self, g: &Graph, node: NodeId) -> bool {
                match self { $($(Prim::$variant(p) => p.per_token(g, node),)+)* }
            }
            fn fold(&self, inputs: &[f64]) -> Option<f64> {
                match self { $($(Prim::$variant(p) => p.fold(inputs),)+)* }
            }
            fn single_output(&self) -> bool {
                match self { $($(Prim::$variant(p) => p.single_output(),)+)* }
            }
            fn fusible(&self) -> bool {
                match self { $($(Prim::$variant(p) => p.fusible(),)+)* }
            }
            fn expand(&self, g: &mut Graph, inputs: &[NodeId]) -> Option<Vec<NodeId>> {
                match self { $($(Prim::$variant(p) => p.expand(g, inputs),)+)* }
            }
        }

        $($(impl From<$variant> for Prim {
            fn from(p: $variant) -> Prim {
                Prim::$variant(p)
            }
        })+)*

        /// Every module's declarations: the language's primitives.
        const DECLS: &[&[Decl]] = &[$($module::DECLS,)*];
    };
}

registry! {
    pointwise: Unary, Binary, Pow, Clamp, Cast, Select, StopGradient;
    reduce: Reduce;
    layout: Reshape, Permute, Transpose, Broadcast;
    slice: Slice, Pad;
    concat: Concat;
    embedding: Embedding, EmbeddingGrad, OneHot, VocabEmbedding, VocabEmbeddingGrad;
    matmul: Matmul;
    conv1d: CausalConv1d, CausalConv1dGrad, DocumentConv1d, DocumentConv1dGrad;
    ssd_scan: SsdScan, SsdScanGrad, DocumentSsdScan, DocumentSsdScanGrad;
    rope: Rope, RopeGrad, DocumentRope, DocumentRopeGrad;
    rope_at: RopeAt;
    cache_write: CacheWrite;
    cache_attention: CacheAttention;
    conv_step: ConvStep;
    ssd_step: SsdStep;
    ssd_state: SsdState;
    mask: CausalMask, Tril, DocumentMask, DocumentTril;
    quant: TernaryQuant, Int8Quant, ScaledTernary, ScaledInt8;
    collective: AllReduce, DataAllReduce, AllGather, ReduceScatter, Shard, TpCopy, GroupAllReduce, GroupCopy,
        DataReduceScatter, DataAllGather, DataShard;
}

impl Prim {
    /// Whether the primitive moves data: views and a rank's view of a replicated value
    /// (`shard`, `tp_copy`, `group_copy`) do not, their readers read through strides.
    pub fn moves_data(&self) -> bool {
        !matches!(self.class(), Class::View) && !matches!(self, Prim::Shard(_) | Prim::TpCopy(_) | Prim::GroupCopy(_))
    }

    /// Whether it is a collective of the data-parallel replicas rather than of the
    /// tensor-parallel ranks.
    pub fn over_replicas(&self) -> bool {
        matches!(
            self,
            Prim::DataAllReduce(_) | Prim::DataReduceScatter(_) | Prim::DataAllGather(_) | Prim::DataShard(_)
        )
    }

    /// Whether evaluating it needs every rank's inputs (or the rank's index).
    pub fn is_collective(&self) -> bool {
        self.class() == Class::Collective
    }

    /// The attributes as `name: value` pairs, for the IR's text form and region keys.
    pub fn attrs(&self) -> String {
        let debug = format!("{self:?}");
        match (debug.find('{'), debug.rfind('}')) {
            (Some(a), Some(b)) if a < b => debug[a + 1..b].trim().replace(": ", "="),
            _ => String::new(),
        }
    }
}

/// One primitive's place in the language: callable, with its declaration and how a call's
/// arguments become the IR's typed primitive; or internal, with what it is.
pub enum Decl {
    Callable(Entry),
    Internal { name: &'static str, what: &'static str },
}

/// How a checked call's bound arguments become the IR's typed primitive.
pub type Binder = fn(&Args) -> Result<Prim, RuleError>;

pub struct Entry {
    pub call: Callable,
    /// The typed primitive of a call (`None`: the call is lowered by elaboration, as
    /// `split` becomes slices).
    pub bind: Option<Binder>,
}

impl Decl {
    /// The declaration with the heads its calls mix, for the layer table.
    pub const fn counting(self, heads: Heads) -> Decl {
        match self {
            Decl::Callable(mut e) => {
                e.call.heads = Some(heads);
                Decl::Callable(e)
            }
            internal => internal,
        }
    }
}

fn decls() -> impl Iterator<Item = &'static Decl> {
    DECLS.iter().flat_map(|d| d.iter())
}

/// The op set as the checker sees it.
pub struct Ops;

/// The compiler's op set, for [`hyb_dsl::check`].
pub static OPS: Ops = Ops;

impl Ops {
    /// The entry of a callable primitive.
    pub fn entry(&self, name: &str) -> Option<&'static Entry> {
        decls().find_map(|d| match d {
            Decl::Callable(e) if e.call.name == name => Some(e),
            _ => None,
        })
    }

    /// The typed primitive a checked call denotes (`None` for calls elaboration lowers).
    pub fn bind(&self, name: &str, args: &[Arg]) -> Option<Result<Prim, RuleError>> {
        let bind = self.entry(name)?.bind?;
        Some(bind(&Args(args)))
    }
}

impl Primitives for Ops {
    fn callable(&self, name: &str) -> Option<&'static Callable> {
        self.entry(name).map(|e| &e.call)
    }

    fn internal(&self, name: &str) -> Option<&'static str> {
        decls().find_map(|d| match d {
            Decl::Internal { name: n, what } if *n == name => Some(*what),
            _ => None,
        })
    }

    fn names(&self) -> Vec<&'static str> {
        decls()
            .filter_map(|d| match d {
                Decl::Callable(e) => Some(e.call.name),
                Decl::Internal { .. } => None,
            })
            .collect()
    }
}

/// A call's bound arguments, read slot by slot. In a block checked on its own, values that
/// depend on its configs are unknown; they read as placeholders that no shape rule depends
/// on (a float as NaN, a flag as false).
pub struct Args<'a>(pub &'a [Arg]);

impl Args<'_> {
    pub fn int(&self, i: usize) -> Dim {
        match &self.0[i] {
            Arg::Int(d) => d.clone(),
            _ => Dim::constant(0),
        }
    }

    /// An integer the rule needs to know (an axis).
    pub fn known(&self, i: usize, what: &str) -> Result<i64, RuleError> {
        let d = self.int(i);
        d.as_const().ok_or_else(|| RuleError::at(i, format!("{what} must be a known integer, got {d}")))
    }

    pub fn float(&self, i: usize) -> F64 {
        match &self.0[i] {
            Arg::Scalar(Some(x)) => F64(*x),
            _ => F64(f64::NAN),
        }
    }

    pub fn boolean(&self, i: usize) -> bool {
        matches!(self.0[i], Arg::Bool(Some(true)))
    }

    pub fn ints(&self, i: usize) -> Vec<Dim> {
        match &self.0[i] {
            Arg::Ints(v) => v.clone(),
            _ => Vec::new(),
        }
    }

    pub fn text(&self, i: usize) -> Option<&str> {
        match &self.0[i] {
            Arg::Str(Some(s)) => Some(s),
            _ => None,
        }
    }
}

/// The shape rule of a call: the bound primitive's rule over the tensors of the call's
/// tensor slots (a scalar in a tensor slot is a rank-0 tensor).
pub fn check(prim: Prim, signature: &[Param], args: &[Arg], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
    prim.infer(&tensor_args(signature, args), ctx)
}

/// The tensors of the tensor slots, in order (a variadic slot gives all of its tensors).
pub fn tensor_args(signature: &[Param], args: &[Arg]) -> Vec<Ty> {
    let mut out = Vec::new();
    for (slot, a) in signature.iter().zip(args) {
        if !slot.kind.is_tensor() {
            continue;
        }
        match a {
            Arg::Tensor(s, d) => out.push((s.clone(), *d)),
            Arg::Tensors(ts) => out.extend(ts.iter().cloned()),
            Arg::Scalar(_) => out.push((Vec::new(), DType::F32)),
            _ => {}
        }
    }
    out
}

/// A callable primitive's declaration: name, signature, and how bound arguments become
/// the typed primitive (whose shape rule checks the call).
macro_rules! callable {
    ($name:literal, $sig:expr, $bind:expr) => {
        callable!($name, $sig, $bind, None)
    };
    ($name:literal, $sig:expr, $bind:expr, $fold:expr) => {
        $crate::ops::Decl::Callable($crate::ops::Entry {
            call: hyb_dsl::prims::Callable {
                name: $name,
                signature: $sig,
                rule: |args, ctx| {
                    let bind: $crate::ops::Binder = $bind;
                    $crate::ops::check(bind(&$crate::ops::Args(args))?, $sig, args, ctx)
                },
                fold: $fold,
                tuple: false,
                heads: None,
            },
            bind: Some($bind),
        })
    };
}
pub(crate) use callable;
pub(crate) use layout::expands;

/// Normalises a possibly negative axis (shapes were checked by the front end).
pub fn axis(a: i64, rank: usize) -> usize {
    if a < 0 {
        (a + rank as i64) as usize
    } else {
        a as usize
    }
}

/// The first input's type (a rule's main operand), cloned for editing.
fn first(inputs: &[Ty]) -> Ty {
    inputs.first().cloned().unwrap_or((Vec::new(), DType::F32))
}

/// Sums `dy` down to `target`'s shape: the gradient of numpy broadcasting.
fn unbroadcast(g: &mut Graph, dy: NodeId, target: &[Dim]) -> NodeId {
    let mut y = dy;
    while g.shape(y).len() > target.len() {
        y = g.sum(y, 0, false);
    }
    for (i, t) in target.iter().enumerate() {
        if t.as_const() == Some(1) && g.shape(y)[i].as_const() != Some(1) {
            y = g.sum(y, i as i64, true);
        }
    }
    y
}

/// `x[start..end]` along `axis`.
pub fn slice<T: Real>(x: &Tensor<T>, axis: usize, start: usize, end: usize) -> Tensor<T> {
    slice::slice(x, axis, start, end)
}

/// The tensors joined along `axis`.
pub fn concat<T: Real>(xs: &[&Tensor<T>], axis: usize) -> Tensor<T> {
    concat::concat(xs, axis)
}
