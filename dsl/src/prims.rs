//! The language's view of primitives. The compiler owns the op set (`hyb_compiler::ops`):
//! each primitive a model author may call is declared there with its signature and shape
//! rule, and handed to the checker as a [`Primitives`] table. The language itself only
//! knows how to bind arguments to a signature and report what a rule rejects.

use crate::dim::Dim;
use crate::value::{shape_string, DType, Shape};

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

    /// Whether the slot holds tensors (an input of the operation, not an attribute).
    pub fn is_tensor(self) -> bool {
        matches!(self, Kind::Tensor | Kind::TensorOrScalar | Kind::Tensors | Kind::OptTensor)
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

/// A required argument slot.
pub const fn req(name: &'static str, kind: Kind) -> Param {
    Param { name, kind, default: Default::Required }
}

/// An optional argument slot with its default.
pub const fn opt(name: &'static str, kind: Kind, default: Default) -> Param {
    Param { name, kind, default }
}

/// An argument after binding: what a shape rule sees. Values a block checked on its own
/// cannot know yet (its configs) are `None`.
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

impl RuleError {
    /// A mismatch of sizes or values, blamed on argument `arg`.
    pub fn at(arg: usize, message: impl Into<String>) -> RuleError {
        RuleError { arg, rank: false, message: message.into() }
    }

    /// A wrong number of dimensions, blamed on argument `arg`.
    pub fn rank(arg: usize, message: impl Into<String>) -> RuleError {
        RuleError { arg, rank: true, message: message.into() }
    }
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

/// Output shapes and dtypes of a call, or what is wrong with its arguments.
pub type Rule = fn(&[Arg], Ctx) -> Result<Vec<(Shape, DType)>, RuleError>;

/// A primitive a model may call, as the compiler declares it.
#[derive(Clone, Copy)]
pub struct Callable {
    pub name: &'static str,
    pub signature: &'static [Param],
    /// The shape rule over bound arguments (one output, or several for `split`).
    pub rule: Rule,
    /// The value on known scalars, for pointwise ops the checker folds.
    pub fold: Option<fn(f64, f64) -> f64>,
    /// Returns its outputs as a tuple (`split`), even when there is one.
    pub tuple: bool,
    /// The heads a call mixes, which `hyb show` counts per layer (so user-written mixers
    /// are counted too).
    pub heads: Option<Heads>,
}

/// Which heads a primitive's call mixes, and how many, read off its output shape.
#[derive(Clone, Copy, Debug)]
pub enum Heads {
    Attention(fn(&[Dim]) -> u64),
    Ssm(fn(&[Dim]) -> u64),
}

impl std::fmt::Debug for Callable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Callable {
    fn eq(&self, other: &Callable) -> bool {
        self.name == other.name
    }
}

/// The op set the checker works against: the primitives a model may call, and the names of
/// the compiler's internal ones (gradients, collectives), which a model may not.
pub trait Primitives: Sync {
    fn callable(&self, name: &str) -> Option<&'static Callable>;
    /// What an internal primitive is, if `name` is one.
    fn internal(&self, name: &str) -> Option<&'static str>;
    /// Every callable name (for suggestions).
    fn names(&self) -> Vec<&'static str>;

    /// A primitive the language's own syntax needs (`+` is `add`, `@` is `matmul`).
    fn builtin(&self, name: &str) -> &'static Callable {
        self.callable(name).unwrap_or_else(|| panic!("the op set has no `{name}`, which the language needs"))
    }
}

/// Normalises a possibly negative axis.
pub fn resolve_axis(axis: &Dim, rank: usize, arg: usize) -> Result<usize, RuleError> {
    let a = axis.as_const().ok_or_else(|| RuleError::at(arg, format!("axis must be a known integer, got {axis}")))?;
    let r = rank as i64;
    let resolved = if a < 0 { a + r } else { a };
    if resolved < 0 || resolved >= r {
        return Err(RuleError::rank(arg, format!("axis {a} is out of range for a rank-{rank} tensor")));
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
                    return Err(RuleError::at(
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
