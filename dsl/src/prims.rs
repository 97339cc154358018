//! The primitive ops, declared once: name, signature and shape rule. Everything else in the
//! language (softmax, RMSNorm, attention, Mamba-2, …) is a composite written in `stdlib/`.

use crate::dim::Dim;
use crate::value::{shape_string, DType, Shape};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Prim {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
    Pow,
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Sigmoid,
    Silu,
    Softplus,
    Tanh,
    Gelu,
    Abs,
    Sign,
    Round,
    Clamp,
    Cast,
    Sum,
    Max,
    Mean,
    Reshape,
    Permute,
    Transpose,
    Broadcast,
    Slice,
    Concat,
    Split,
    Embedding,
    Matmul,
    CausalConv1d,
    SsdScan,
    Rope,
    CausalMask,
    TernaryQuant,
    Int8Quant,
    // Backward primitives: emitted by autodiff, callable like any other.
    /// Heaviside step: 1 where x > 0, else 0 (masks of max/min/clamp gradients).
    Step,
    /// Zeroes entries above the diagonal of the last two axes (the causal mask's gradient).
    Tril,
    /// Zero padding along one axis (the slice's gradient).
    Pad,
    /// Rotation by minus the RoPE angle (RoPE's gradient).
    RopeGrad,
    /// Scatter-add of rows into a `[vocab, d]` table (the embedding's gradient).
    EmbeddingGrad,
    /// One input's gradient of `causal_conv1d` (`wrt` = 0 x, 1 weight, 2 bias).
    CausalConv1dGrad,
    /// One input's gradient of `ssd_scan` (`wrt` = 0 x, 1 dt, 2 a, 3 b, 4 c).
    SsdScanGrad,
    /// `[..., depth]` indicator of integer ids (cross-entropy targets).
    OneHot,
    // Tensor-parallel primitives: emitted by the sharding pass; each rank runs the same
    // program on its shard and these exchange data between the `ranks` ranks.
    /// Sum of every rank's partial value; all ranks get the total.
    AllReduce,
    /// Every rank's slice along `axis`, concatenated in rank order.
    AllGather,
    /// The sum over ranks, of which each rank keeps its slice along `axis`.
    ReduceScatter,
    /// This rank's slice along `axis` of a replicated value (no communication).
    Shard,
    /// Identity; its gradient is summed over ranks (a replicated value entering
    /// rank-local work, Megatron's `f`).
    TpCopy,
    /// Embedding lookup in this rank's rows of a vocabulary-split table: ids outside them
    /// give zeros (a partial sum over ranks).
    VocabEmbedding,
    /// The gradient of `vocab_embedding` for this rank's rows.
    VocabEmbeddingGrad,
}

/// What an argument slot accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tensor,
    /// A tensor, or a scalar that is broadcast (pointwise ops).
    TensorOrScalar,
    /// One or more tensors (variadic, positional only; must be the first slot).
    Tensors,
    OptTensor,
    Int,
    Float,
    Bool,
    Str,
    Ints,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Tensor | Kind::OptTensor => "a tensor",
            Kind::TensorOrScalar => "a tensor or a number",
            Kind::Tensors => "tensors",
            Kind::Int => "an int",
            Kind::Float => "a float",
            Kind::Bool => "a bool",
            Kind::Str => "a string",
            Kind::Ints => "a list of ints",
        }
    }
}

/// Default of an optional argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Default {
    Required,
    Int(i64),
    Float(f64),
    Bool(bool),
    Absent,
}

#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub default: Default,
}

const fn req(name: &'static str, kind: Kind) -> Param {
    Param { name, kind, default: Default::Required }
}
const fn opt(name: &'static str, kind: Kind, default: Default) -> Param {
    Param { name, kind, default }
}

const X: Param = req("x", Kind::Tensor);
const UNARY: &[Param] = &[req("x", Kind::TensorOrScalar)];
const BINARY: &[Param] = &[req("a", Kind::TensorOrScalar), req("b", Kind::TensorOrScalar)];
const REDUCE: &[Param] =
    &[X, opt("axis", Kind::Int, Default::Int(-1)), opt("keepdim", Kind::Bool, Default::Bool(true))];

/// An argument after binding: what a shape rule sees.
#[derive(Clone, Debug)]
pub enum Arg {
    Tensor(Shape, DType),
    Scalar(Option<f64>),
    Tensors(Vec<(Shape, DType)>),
    Absent,
    Int(Dim),
    Bool(Option<bool>),
    Str(Option<String>),
    Ints(Vec<Dim>),
}

/// A failed shape rule: which argument (index into the signature) and why.
#[derive(Clone, Debug)]
pub struct RuleError {
    pub arg: usize,
    pub rank: bool,
    pub message: String,
}

/// Strict inside a model (all configs known): every mismatch is an error. Lenient for a
/// block checked on its own: only mismatches that hold for every config value are errors.
#[derive(Clone, Copy)]
pub struct Ctx {
    pub strict: bool,
}

impl Ctx {
    pub fn differ(&self, a: &Dim, b: &Dim) -> bool {
        if self.strict {
            a != b
        } else {
            a.definitely_differs(b)
        }
    }
}

type Out = Result<Vec<(Shape, DType)>, RuleError>;

fn err(arg: usize, message: impl Into<String>) -> RuleError {
    RuleError { arg, rank: false, message: message.into() }
}
fn rank_err(arg: usize, message: impl Into<String>) -> RuleError {
    RuleError { arg, rank: true, message: message.into() }
}

impl Prim {
    pub const ALL: &'static [Prim] = &[
        Prim::Add,
        Prim::Sub,
        Prim::Mul,
        Prim::Div,
        Prim::Maximum,
        Prim::Minimum,
        Prim::Pow,
        Prim::Neg,
        Prim::Exp,
        Prim::Log,
        Prim::Sqrt,
        Prim::Rsqrt,
        Prim::Sigmoid,
        Prim::Silu,
        Prim::Softplus,
        Prim::Tanh,
        Prim::Gelu,
        Prim::Abs,
        Prim::Sign,
        Prim::Round,
        Prim::Clamp,
        Prim::Cast,
        Prim::Sum,
        Prim::Max,
        Prim::Mean,
        Prim::Reshape,
        Prim::Permute,
        Prim::Transpose,
        Prim::Broadcast,
        Prim::Slice,
        Prim::Concat,
        Prim::Split,
        Prim::Embedding,
        Prim::Matmul,
        Prim::CausalConv1d,
        Prim::SsdScan,
        Prim::Rope,
        Prim::CausalMask,
        Prim::TernaryQuant,
        Prim::Int8Quant,
        Prim::Step,
        Prim::Tril,
        Prim::Pad,
        Prim::RopeGrad,
        Prim::EmbeddingGrad,
        Prim::CausalConv1dGrad,
        Prim::SsdScanGrad,
        Prim::OneHot,
        Prim::AllReduce,
        Prim::AllGather,
        Prim::ReduceScatter,
        Prim::Shard,
        Prim::TpCopy,
        Prim::VocabEmbedding,
        Prim::VocabEmbeddingGrad,
    ];

    pub fn by_name(name: &str) -> Option<Prim> {
        Prim::ALL.iter().copied().find(|p| p.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Prim::Add => "add",
            Prim::Sub => "sub",
            Prim::Mul => "mul",
            Prim::Div => "div",
            Prim::Maximum => "maximum",
            Prim::Minimum => "minimum",
            Prim::Pow => "pow",
            Prim::Neg => "neg",
            Prim::Exp => "exp",
            Prim::Log => "log",
            Prim::Sqrt => "sqrt",
            Prim::Rsqrt => "rsqrt",
            Prim::Sigmoid => "sigmoid",
            Prim::Silu => "silu",
            Prim::Softplus => "softplus",
            Prim::Tanh => "tanh",
            Prim::Gelu => "gelu",
            Prim::Abs => "abs",
            Prim::Sign => "sign",
            Prim::Round => "round",
            Prim::Clamp => "clamp",
            Prim::Cast => "cast",
            Prim::Sum => "sum",
            Prim::Max => "max",
            Prim::Mean => "mean",
            Prim::Reshape => "reshape",
            Prim::Permute => "permute",
            Prim::Transpose => "transpose",
            Prim::Broadcast => "broadcast",
            Prim::Slice => "slice",
            Prim::Concat => "concat",
            Prim::Split => "split",
            Prim::Embedding => "embedding",
            Prim::Matmul => "matmul",
            Prim::CausalConv1d => "causal_conv1d",
            Prim::SsdScan => "ssd_scan",
            Prim::Rope => "rope",
            Prim::CausalMask => "causal_mask",
            Prim::TernaryQuant => "ternary_quant",
            Prim::Int8Quant => "int8_quant",
            Prim::Step => "step",
            Prim::Tril => "tril",
            Prim::Pad => "pad",
            Prim::RopeGrad => "rope_grad",
            Prim::EmbeddingGrad => "embedding_grad",
            Prim::CausalConv1dGrad => "causal_conv1d_grad",
            Prim::SsdScanGrad => "ssd_scan_grad",
            Prim::OneHot => "one_hot",
            Prim::AllReduce => "all_reduce",
            Prim::AllGather => "all_gather",
            Prim::ReduceScatter => "reduce_scatter",
            Prim::Shard => "shard",
            Prim::TpCopy => "tp_copy",
            Prim::VocabEmbedding => "vocab_embedding",
            Prim::VocabEmbeddingGrad => "vocab_embedding_grad",
        }
    }

    pub fn signature(self) -> &'static [Param] {
        use Kind::*;
        match self {
            Prim::Add | Prim::Sub | Prim::Mul | Prim::Div | Prim::Maximum | Prim::Minimum => BINARY,
            Prim::Pow => const { &[req("x", TensorOrScalar), req("exponent", Float)] },
            Prim::Neg
            | Prim::Exp
            | Prim::Log
            | Prim::Sqrt
            | Prim::Rsqrt
            | Prim::Sigmoid
            | Prim::Silu
            | Prim::Softplus
            | Prim::Tanh
            | Prim::Gelu
            | Prim::Abs
            | Prim::Sign
            | Prim::Round => UNARY,
            Prim::Clamp => const { &[X, req("low", Float), req("high", Float)] },
            Prim::Cast => const { &[X, req("dtype", Str)] },
            Prim::Sum | Prim::Max | Prim::Mean => REDUCE,
            Prim::Reshape => const { &[X, req("shape", Ints)] },
            Prim::Permute => const { &[X, req("dims", Ints)] },
            Prim::Transpose => const { &[X, opt("dim0", Int, Default::Int(-2)), opt("dim1", Int, Default::Int(-1))] },
            Prim::Broadcast => const { &[X, req("shape", Ints)] },
            Prim::Slice => const { &[X, req("axis", Int), req("start", Int), req("end", Int)] },
            Prim::Concat => const { &[req("xs", Tensors), opt("axis", Int, Default::Int(-1))] },
            Prim::Split => const { &[X, req("sizes", Ints), opt("axis", Int, Default::Int(-1))] },
            Prim::Embedding => const { &[req("table", Tensor), req("ids", Tensor)] },
            Prim::Matmul => {
                const {
                    &[
                        req("a", Tensor),
                        req("b", Tensor),
                        opt("transpose_a", Bool, Default::Bool(false)),
                        opt("transpose_b", Bool, Default::Bool(false)),
                    ]
                }
            }
            Prim::CausalConv1d => const { &[X, req("weight", Tensor), opt("bias", OptTensor, Default::Absent)] },
            Prim::SsdScan => {
                const {
                    &[
                        X,
                        req("dt", Tensor),
                        req("a", Tensor),
                        req("b", Tensor),
                        req("c", Tensor),
                        opt("chunk", Int, Default::Int(64)),
                    ]
                }
            }
            Prim::Rope => const { &[X, req("theta", Float)] },
            Prim::CausalMask => const { &[X] },
            Prim::TernaryQuant => const { &[X] },
            Prim::Int8Quant => const { &[X] },
            Prim::Step | Prim::Tril => const { &[X] },
            Prim::OneHot => const { &[req("ids", Tensor), req("depth", Int)] },
            Prim::AllReduce | Prim::TpCopy => const { &[X] },
            Prim::VocabEmbedding => const { &[req("table", Tensor), req("ids", Tensor), req("ranks", Int)] },
            Prim::VocabEmbeddingGrad => {
                const { &[req("ids", Tensor), req("dy", Tensor), req("vocab", Int), req("ranks", Int)] }
            }
            Prim::AllGather | Prim::ReduceScatter | Prim::Shard => const { &[X, req("axis", Int), req("ranks", Int)] },
            Prim::Pad => const { &[X, req("axis", Int), req("before", Int), req("after", Int)] },
            Prim::RopeGrad => const { &[X, req("theta", Float)] },
            Prim::EmbeddingGrad => const { &[req("ids", Tensor), req("dy", Tensor), req("vocab", Int)] },
            Prim::CausalConv1dGrad => const { &[X, req("weight", Tensor), req("dy", Tensor), req("wrt", Int)] },
            Prim::SsdScanGrad => {
                const {
                    &[
                        X,
                        req("dt", Tensor),
                        req("a", Tensor),
                        req("b", Tensor),
                        req("c", Tensor),
                        req("dy", Tensor),
                        req("chunk", Int),
                        req("wrt", Int),
                    ]
                }
            }
        }
    }

    /// Whether the op maps each element on its own: the pointwise ops plus those with extra
    /// non-tensor arguments (`clamp`, `cast`) and `step`. What fusion, sharding and
    /// sequence parallelism may treat as elementwise.
    pub fn is_elementwise(self) -> bool {
        self.is_pointwise() || matches!(self, Prim::Clamp | Prim::Cast | Prim::Step)
    }

    /// Whether the op is applied element by element (and so also folds on known scalars).
    pub fn is_pointwise(self) -> bool {
        self.signature().first().is_some_and(|p| p.kind == Kind::TensorOrScalar)
    }

    /// The value of a pointwise op on known scalars, in float64.
    pub fn fold(self, a: f64, b: f64) -> f64 {
        match self {
            Prim::Add => a + b,
            Prim::Sub => a - b,
            Prim::Mul => a * b,
            Prim::Div => a / b,
            Prim::Maximum => a.max(b),
            Prim::Minimum => a.min(b),
            Prim::Pow => a.powf(b),
            Prim::Neg => -a,
            Prim::Exp => a.exp(),
            Prim::Log => a.ln(),
            Prim::Sqrt => a.sqrt(),
            Prim::Rsqrt => 1.0 / a.sqrt(),
            Prim::Sigmoid => 1.0 / (1.0 + (-a).exp()),
            Prim::Silu => a / (1.0 + (-a).exp()),
            Prim::Softplus => {
                if a > 20.0 {
                    a
                } else {
                    a.exp().ln_1p()
                }
            }
            Prim::Tanh => a.tanh(),
            Prim::Gelu => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * a * (1.0 + (k * (a + 0.044715 * a * a * a)).tanh())
            }
            Prim::Abs => a.abs(),
            Prim::Sign => {
                if a == 0.0 {
                    0.0
                } else {
                    a.signum()
                }
            }
            Prim::Round => a.round_ties_even(),
            _ => f64::NAN,
        }
    }

    /// Output shapes and dtypes from argument shapes (one entry, or several for `split`).
    pub fn infer(self, args: &[Arg], ctx: Ctx) -> Out {
        let t = |i: usize| match &args[i] {
            Arg::Tensor(s, d) => (s.clone(), *d),
            _ => (Vec::new(), DType::F32),
        };
        let int = |i: usize| match &args[i] {
            Arg::Int(d) => d.clone(),
            _ => Dim::constant(0),
        };
        let boolean = |i: usize| matches!(args[i], Arg::Bool(Some(true)));
        let ints = |i: usize| match &args[i] {
            Arg::Ints(v) => v.clone(),
            _ => Vec::new(),
        };
        match self {
            _ if self.is_pointwise() => pointwise(args, ctx),
            Prim::Step | Prim::RopeGrad | Prim::AllReduce | Prim::TpCopy => Ok(vec![t(0)]),
            Prim::AllGather | Prim::ReduceScatter | Prim::Shard => {
                let (mut s, d) = t(0);
                let ranks = int(2);
                let Some(a) = int(1).as_const().map(|a| if a < 0 { a + s.len() as i64 } else { a }) else {
                    return Err(err(1, "the axis must be a number"));
                };
                let Some(dim) = usize::try_from(a).ok().and_then(|a| s.get_mut(a)) else {
                    return Err(rank_err(1, format!("axis {a} is out of range for {}", shape_string(&s))));
                };
                let k = ranks.as_const().unwrap_or(0);
                let new = if self == Prim::AllGather {
                    dim.whole_of(k).or_else(|| dim.mul(&ranks))
                } else {
                    dim.div_exact(&ranks).or_else(|| dim.part_of(k))
                };
                match new {
                    Some(n) => *dim = n,
                    None => return Err(err(2, format!("{dim} does not split into {ranks} equal parts"))),
                }
                Ok(vec![(s, d)])
            }
            Prim::OneHot => {
                let (mut s, _) = t(0);
                s.push(int(1));
                Ok(vec![(s, DType::F32)])
            }
            Prim::Tril => {
                let (s, d) = t(0);
                if s.len() < 2 {
                    return Err(rank_err(0, format!("tril needs at least 2 dims, got {}", shape_string(&s))));
                }
                Ok(vec![(s, d)])
            }
            Prim::Pad => {
                let (mut s, d) = t(0);
                let axis = resolve_axis(&int(1), s.len(), 1)?;
                s[axis] =
                    s[axis].add(&int(2)).and_then(|x| x.add(&int(3))).ok_or_else(|| err(2, "pad size overflows"))?;
                Ok(vec![(s, d)])
            }
            Prim::VocabEmbedding => Prim::Embedding.infer(&args[..2], ctx),
            Prim::EmbeddingGrad | Prim::VocabEmbeddingGrad => {
                let (dy, d) = t(1);
                let Some(width) = dy.last().cloned() else {
                    return Err(rank_err(1, "embedding_grad needs dy with a last dimension"));
                };
                Ok(vec![(vec![int(2), width], d)])
            }
            Prim::CausalConv1dGrad => {
                let which = int(3).as_const().unwrap_or(-1);
                match which {
                    0 => Ok(vec![t(0)]),
                    1 => Ok(vec![t(1)]),
                    2 => {
                        let (x, d) = t(0);
                        Ok(vec![(vec![x.last().cloned().unwrap_or_default()], d)])
                    }
                    _ => Err(err(3, format!("wrt must be 0, 1 or 2, got {which}"))),
                }
            }
            Prim::SsdScanGrad => match int(7).as_const() {
                Some(w @ 0..=4) => Ok(vec![t(w as usize)]),
                other => Err(err(7, format!("wrt must be 0 to 4, got {other:?}"))),
            },
            Prim::Clamp | Prim::CausalMask | Prim::TernaryQuant | Prim::Int8Quant => {
                let (s, d) = t(0);
                if self == Prim::CausalMask && s.len() < 2 {
                    return Err(rank_err(0, format!("causal_mask needs at least 2 dims, got {}", shape_string(&s))));
                }
                Ok(vec![(s, d)])
            }
            Prim::Cast => {
                let (s, _) = t(0);
                match &args[1] {
                    Arg::Str(Some(name)) => match DType::parse(name) {
                        Some(d) => Ok(vec![(s, d)]),
                        None => {
                            Err(err(1, format!("unknown dtype `{name}`; expected one of f64 f32 bf16 f16 i64 i32 i8")))
                        }
                    },
                    _ => Ok(vec![(s, DType::F32)]),
                }
            }
            Prim::Sum | Prim::Max | Prim::Mean => {
                let (mut s, d) = t(0);
                let axis = resolve_axis(&int(1), s.len(), 1)?;
                if !matches!(args[2], Arg::Bool(Some(false))) {
                    s[axis] = Dim::constant(1);
                } else {
                    s.remove(axis);
                }
                Ok(vec![(s, d)])
            }
            Prim::Reshape => reshape(t(0), ints(1), ctx),
            Prim::Permute => {
                let (s, d) = t(0);
                let dims = ints(1);
                if dims.len() != s.len() {
                    return Err(rank_err(
                        1,
                        format!("permute of a rank-{} tensor needs {} dims, got {}", s.len(), s.len(), dims.len()),
                    ));
                }
                let mut seen = vec![false; s.len()];
                let mut out = Vec::new();
                for p in &dims {
                    let a = resolve_axis(p, s.len(), 1)?;
                    if std::mem::replace(&mut seen[a], true) {
                        return Err(err(1, format!("axis {a} appears twice in the permutation")));
                    }
                    out.push(s[a].clone());
                }
                Ok(vec![(out, d)])
            }
            Prim::Transpose => {
                let (mut s, d) = t(0);
                let a = resolve_axis(&int(1), s.len(), 1)?;
                let b = resolve_axis(&int(2), s.len(), 2)?;
                s.swap(a, b);
                Ok(vec![(s, d)])
            }
            Prim::Broadcast => {
                let (s, d) = t(0);
                let target = ints(1);
                if s.len() > target.len() {
                    return Err(rank_err(
                        1,
                        format!("cannot broadcast {} to the lower rank {}", shape_string(&s), shape_string(&target)),
                    ));
                }
                let offset = target.len() - s.len();
                for (i, dim) in s.iter().enumerate() {
                    if dim.as_const() != Some(1) && ctx.differ(dim, &target[offset + i]) {
                        return Err(err(
                            1,
                            format!("cannot broadcast {} to {}", shape_string(&s), shape_string(&target)),
                        ));
                    }
                }
                Ok(vec![(target, d)])
            }
            Prim::Slice => {
                let (mut s, d) = t(0);
                let axis = resolve_axis(&int(1), s.len(), 1)?;
                let (start, end) = (int(2), int(3));
                let len = end.sub(&start).ok_or_else(|| err(3, "slice bounds overflow"))?;
                if let (Some(a), Some(b), Some(n)) = (start.as_const(), end.as_const(), s[axis].as_const()) {
                    if a < 0 || b > n || a > b {
                        return Err(err(3, format!("slice {a}:{b} is outside dimension {axis} of size {n}")));
                    }
                }
                s[axis] = len;
                Ok(vec![(s, d)])
            }
            Prim::Concat => concat(args, ctx),
            Prim::Split => {
                let (s, d) = t(0);
                let axis = resolve_axis(&int(2), s.len(), 2)?;
                let sizes = ints(1);
                let mut total = Dim::constant(0);
                for sz in &sizes {
                    total = total.add(sz).ok_or_else(|| err(1, "split sizes overflow"))?;
                }
                if ctx.differ(&total, &s[axis]) {
                    return Err(err(
                        1,
                        format!(
                            "split sizes add up to {total} but dimension {axis} of {} is {}",
                            shape_string(&s),
                            s[axis]
                        ),
                    ));
                }
                Ok(sizes
                    .into_iter()
                    .map(|sz| {
                        let mut o = s.clone();
                        o[axis] = sz;
                        (o, d)
                    })
                    .collect())
            }
            Prim::Embedding => {
                let (table, d) = t(0);
                let (ids, id_t) = t(1);
                if table.len() != 2 {
                    return Err(rank_err(
                        0,
                        format!("embedding table must be [vocab, d], got {}", shape_string(&table)),
                    ));
                }
                if id_t.is_float() {
                    return Err(err(1, format!("embedding ids must be integers, got {}", id_t.name())));
                }
                let mut out = ids;
                out.push(table[1].clone());
                Ok(vec![(out, d)])
            }
            Prim::Matmul => matmul(t(0), t(1), boolean(2), boolean(3), ctx),
            Prim::CausalConv1d => {
                let (s, d) = t(0);
                let (w, _) = t(1);
                if s.len() != 3 || w.len() != 2 {
                    return Err(rank_err(
                        1,
                        format!(
                            "causal_conv1d takes x [B, T, C] and weight [C, K], got {} and {}",
                            shape_string(&s),
                            shape_string(&w)
                        ),
                    ));
                }
                if ctx.differ(&s[2], &w[0]) {
                    return Err(err(1, format!("conv weight has {} channels but x has {}", w[0], s[2])));
                }
                if let Arg::Tensor(b, _) = &args[2] {
                    if b.len() != 1 || ctx.differ(&b[0], &s[2]) {
                        return Err(err(2, format!("conv bias must be [{}], got {}", s[2], shape_string(b))));
                    }
                }
                Ok(vec![(s, d)])
            }
            Prim::SsdScan => ssd_scan(args, ctx),
            Prim::Rope => {
                let (s, d) = t(0);
                if s.len() != 4 {
                    return Err(rank_err(0, format!("rope takes [B, T, heads, head_dim], got {}", shape_string(&s))));
                }
                if s[3].as_const().is_some_and(|n| n % 2 != 0) {
                    return Err(err(0, format!("rope needs an even head dimension, got {}", s[3])));
                }
                Ok(vec![(s, d)])
            }
            _ => unreachable!("pointwise ops are handled above"),
        }
    }
}

/// Normalises a possibly negative axis.
pub fn resolve_axis(axis: &Dim, rank: usize, arg: usize) -> Result<usize, RuleError> {
    let a = axis.as_const().ok_or_else(|| err(arg, format!("axis must be a known integer, got {axis}")))?;
    let r = rank as i64;
    let resolved = if a < 0 { a + r } else { a };
    if resolved < 0 || resolved >= r {
        return Err(rank_err(arg, format!("axis {a} is out of range for a rank-{rank} tensor")));
    }
    Ok(resolved as usize)
}

/// Numpy broadcasting of two shapes.
pub fn broadcast_shapes(a: &Shape, b: &Shape, ctx: Ctx) -> Result<Shape, RuleError> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = (i + a.len()).checked_sub(n).map(|j| &a[j]);
        let db = (i + b.len()).checked_sub(n).map(|j| &b[j]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x.as_const() == Some(1) => y.clone(),
            (Some(x), Some(y)) if y.as_const() == Some(1) => x.clone(),
            (Some(x), Some(y)) => {
                if ctx.differ(x, y) {
                    return Err(err(
                        1,
                        format!(
                            "shapes {} and {} do not broadcast: dimension {x} vs {y}",
                            shape_string(a),
                            shape_string(b)
                        ),
                    ));
                }
                x.clone()
            }
            (None, None) => unreachable!(),
        });
    }
    Ok(out)
}

/// Broadcasting shapes; a rank-0 tensor (a scalar constant) takes the other operand's dtype.
fn pointwise(args: &[Arg], ctx: Ctx) -> Out {
    let mut shape: Option<Shape> = None;
    let mut dtype = None;
    let mut scalar_dtype = None;
    for (i, a) in args.iter().enumerate() {
        if let Arg::Tensor(s, d) = a {
            shape = Some(match shape {
                None => s.clone(),
                Some(prev) => broadcast_shapes(&prev, s, ctx).map_err(|e| RuleError { arg: i, ..e })?,
            });
            if s.is_empty() {
                scalar_dtype.get_or_insert(*d);
                continue;
            }
            match dtype {
                None => dtype = Some(*d),
                Some(prev) if prev != *d => {
                    return Err(err(i, format!("dtypes differ: {} and {}; insert a cast", prev.name(), d.name())));
                }
                _ => {}
            }
        }
    }
    Ok(vec![(shape.unwrap_or_default(), dtype.or(scalar_dtype).unwrap_or(DType::F32))])
}

fn reshape((s, d): (Shape, DType), target: Vec<Dim>, ctx: Ctx) -> Out {
    let product = |dims: &[Dim]| dims.iter().try_fold(Dim::constant(1), |acc, x| acc.mul(x));
    let total = product(&s).ok_or_else(|| err(1, "shape size overflows"))?;
    let holes: Vec<usize> = (0..target.len()).filter(|&i| target[i].as_const() == Some(-1)).collect();
    let mut out = target.clone();
    match holes.as_slice() {
        [] => {
            let want = product(&target).ok_or_else(|| err(1, "shape size overflows"))?;
            if ctx.differ(&total, &want) {
                return Err(err(
                    1,
                    format!(
                        "cannot reshape {} ({total} elements) to {} ({want} elements)",
                        shape_string(&s),
                        shape_string(&target)
                    ),
                ));
            }
        }
        [h] => {
            let rest: Vec<Dim> = target.iter().enumerate().filter(|(i, _)| i != h).map(|(_, d)| d.clone()).collect();
            let known = product(&rest).ok_or_else(|| err(1, "shape size overflows"))?;
            out[*h] = match total.div_exact(&known) {
                Some(q) => q,
                None if ctx.strict => {
                    return Err(err(
                        1,
                        format!(
                            "cannot reshape {} to {}: {total} is not divisible by {known}",
                            shape_string(&s),
                            shape_string(&target)
                        ),
                    ))
                }
                None => Dim::symbol("?"),
            };
        }
        _ => return Err(err(1, "reshape allows at most one -1")),
    }
    if out.iter().any(|x| x.as_const().is_some_and(|c| c < 0)) {
        return Err(err(1, format!("negative dimension in reshape target {}", shape_string(&target))));
    }
    Ok(vec![(out, d)])
}

fn concat(args: &[Arg], ctx: Ctx) -> Out {
    let Arg::Tensors(xs) = &args[0] else {
        return Ok(vec![(Vec::new(), DType::F32)]);
    };
    let Arg::Int(axis) = &args[1] else {
        return Ok(vec![(Vec::new(), DType::F32)]);
    };
    let (first, d) = xs[0].clone();
    let a = resolve_axis(axis, first.len(), 1)?;
    let mut out = first.clone();
    for (s, dt) in &xs[1..] {
        if s.len() != first.len() {
            return Err(rank_err(
                0,
                format!("concat of tensors with different ranks: {} and {}", shape_string(&first), shape_string(s)),
            ));
        }
        if *dt != d {
            return Err(err(0, format!("concat of different dtypes: {} and {}", d.name(), dt.name())));
        }
        for (i, (x, y)) in first.iter().zip(s).enumerate() {
            if i != a && ctx.differ(x, y) {
                return Err(err(
                    0,
                    format!(
                        "concat along axis {a} needs equal other dims: {} vs {}",
                        shape_string(&first),
                        shape_string(s)
                    ),
                ));
            }
        }
        out[a] = out[a].add(&s[a]).ok_or_else(|| err(0, "concat size overflows"))?;
    }
    Ok(vec![(out, d)])
}

fn matmul((mut a, da): (Shape, DType), (mut b, db): (Shape, DType), ta: bool, tb: bool, ctx: Ctx) -> Out {
    if a.len() < 2 || b.len() < 2 {
        return Err(rank_err(
            if a.len() < 2 { 0 } else { 1 },
            format!("matmul needs rank ≥ 2 operands, got {} @ {}", shape_string(&a), shape_string(&b)),
        ));
    }
    if da != db {
        return Err(err(1, format!("matmul of different dtypes: {} and {}", da.name(), db.name())));
    }
    let (na, nb) = (a.len(), b.len());
    if ta {
        a.swap(na - 1, na - 2);
    }
    if tb {
        b.swap(nb - 1, nb - 2);
    }
    if ctx.differ(&a[na - 1], &b[nb - 2]) {
        return Err(err(
            1,
            format!(
                "matmul inner dimensions differ: {} @ {} ({} vs {})",
                shape_string(&a),
                shape_string(&b),
                a[na - 1],
                b[nb - 2]
            ),
        ));
    }
    let mut out = broadcast_shapes(&a[..na - 2].to_vec(), &b[..nb - 2].to_vec(), ctx)?;
    out.push(a[na - 2].clone());
    out.push(b[nb - 1].clone());
    Ok(vec![(out, da)])
}

fn ssd_scan(args: &[Arg], ctx: Ctx) -> Out {
    let get = |i: usize| match &args[i] {
        Arg::Tensor(s, d) => (s.clone(), *d),
        _ => (Vec::new(), DType::F32),
    };
    let (x, d) = get(0);
    let (dt, _) = get(1);
    let (a, _) = get(2);
    let (bm, _) = get(3);
    let (cm, _) = get(4);
    if x.len() != 4 {
        return Err(rank_err(0, format!("ssd_scan x must be [B, T, heads, head_dim], got {}", shape_string(&x))));
    }
    if dt.len() != 3 || ctx.differ(&dt[0], &x[0]) || ctx.differ(&dt[1], &x[1]) || ctx.differ(&dt[2], &x[2]) {
        return Err(err(
            1,
            format!("ssd_scan dt must be [B, T, heads] = [{}, {}, {}], got {}", x[0], x[1], x[2], shape_string(&dt)),
        ));
    }
    if a.len() != 1 || ctx.differ(&a[0], &x[2]) {
        return Err(err(2, format!("ssd_scan a must be [heads] = [{}], got {}", x[2], shape_string(&a))));
    }
    for (i, m) in [(3, &bm), (4, &cm)] {
        if m.len() != 4 || ctx.differ(&m[0], &x[0]) || ctx.differ(&m[1], &x[1]) {
            return Err(err(i, format!("ssd_scan b and c must be [B, T, groups, d_state], got {}", shape_string(m))));
        }
    }
    if ctx.differ(&bm[2], &cm[2]) || ctx.differ(&bm[3], &cm[3]) {
        return Err(err(4, format!("ssd_scan b is {} but c is {}", shape_string(&bm), shape_string(&cm))));
    }
    if let (Some(h), Some(g)) = (x[2].as_const(), bm[2].as_const()) {
        if g == 0 || h % g != 0 {
            return Err(err(3, format!("{h} heads cannot be split into {g} groups")));
        }
    }
    if let Arg::Int(c) = &args[5] {
        if c.as_const().is_some_and(|c| c <= 0) {
            return Err(err(5, format!("chunk size must be positive, got {c}")));
        }
    }
    Ok(vec![(x, d)])
}
