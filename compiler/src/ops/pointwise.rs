//! Element-wise primitives: the unary functions, the binary arithmetic with numpy
//! broadcasting, `pow`, `clamp`, `cast`, `select` and `stop_gradient`. Exact scalar
//! functions in the element type.

use super::{callable, first, unbroadcast, Class, Decl, NoGradient, Prim, Primitive, Sizes, Ty, F64};
use crate::ir::{Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::prims::{broadcast_shapes, req, Ctx, Kind, Param, RuleError};
use hyb_dsl::value::{DType, Shape};
use serde::{Deserialize, Serialize};

/// One-argument functions, applied element by element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Unary {
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
    /// Heaviside step: 1 where x > 0, else 0 (masks of max/min/clamp gradients; internal).
    Step,
}

/// Two-argument arithmetic with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pow {
    pub exponent: F64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Clamp {
    pub low: F64,
    pub high: F64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cast {
    pub dtype: DType,
}

const UNARY: &[Param] = &[req("x", Kind::TensorOrScalar)];
const BINARY: &[Param] = &[req("a", Kind::TensorOrScalar), req("b", Kind::TensorOrScalar)];

macro_rules! unary {
    ($name:literal, $op:ident) => {
        callable!($name, UNARY, |_| Ok(Prim::Unary(Unary::$op)), Some(|a, _| Unary::$op.apply(a)))
    };
}

macro_rules! binary {
    ($name:literal, $op:ident) => {
        callable!($name, BINARY, |_| Ok(Prim::Binary(Binary::$op)), Some(|a, b| Binary::$op.apply(a, b)))
    };
}

pub(super) const DECLS: &[Decl] = &[
    binary!("add", Add),
    binary!("sub", Sub),
    binary!("mul", Mul),
    binary!("div", Div),
    binary!("maximum", Maximum),
    binary!("minimum", Minimum),
    callable!(
        "pow",
        &[req("x", Kind::TensorOrScalar), req("exponent", Kind::Float)],
        |a| Ok(Prim::Pow(Pow { exponent: a.float(1) })),
        Some(f64::powf)
    ),
    unary!("neg", Neg),
    unary!("exp", Exp),
    unary!("log", Log),
    unary!("sqrt", Sqrt),
    unary!("rsqrt", Rsqrt),
    unary!("sigmoid", Sigmoid),
    unary!("silu", Silu),
    unary!("softplus", Softplus),
    unary!("tanh", Tanh),
    unary!("gelu", Gelu),
    unary!("abs", Abs),
    unary!("sign", Sign),
    unary!("round", Round),
    callable!("clamp", &[req("x", Kind::Tensor), req("low", Kind::Float), req("high", Kind::Float)], |a| {
        let (low, high) = (a.float(1), a.float(2));
        if low.0 > high.0 {
            return Err(RuleError::at(2, format!("clamp's low bound {} is above its high bound {}", low.0, high.0)));
        }
        Ok(Prim::Clamp(Clamp { low, high }))
    }),
    callable!("cast", &[req("x", Kind::Tensor), req("dtype", Kind::Str)], |a| {
        let dtype = match a.text(1) {
            Some(name) => DType::parse(name).ok_or_else(|| {
                RuleError::at(1, format!("unknown dtype `{name}`; expected one of f64 f32 bf16 f16 i64 i32 i8"))
            })?,
            None => DType::F32,
        };
        Ok(Prim::Cast(Cast { dtype }))
    }),
    Decl::Internal { name: "step", what: "the mask in the gradients of max, min and clamp" },
    Decl::Internal { name: "select", what: "the optimizer's update kept only for a finite step" },
    Decl::Internal { name: "stop_gradient", what: "the shift of a logsumexp, which its gradient does not depend on" },
];

/// `select(mask, a, b)`: `a` where `mask > 0`, else `b` (a NaN mask picks `b`), with numpy
/// broadcasting. Unlike arithmetic on a 0/1 mask, the element not picked never reaches the
/// result, so a NaN or an infinity there is dropped: the training step keeps the old weights
/// and moments this way when its gradient is not finite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Select;

/// The identity, through which no gradient flows: for a value the result does not depend on
/// in exact arithmetic, such as the maximum a logsumexp subtracts for range (its gradient
/// terms cancel: differentiating through it costs a mask and a sum over the vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StopGradient;

/// Broadcast shapes; a rank-0 tensor (a scalar constant) takes the other operand's dtype.
fn broadcast(inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
    let mut shape: Option<Shape> = None;
    let mut dtype = None;
    let mut scalar_dtype = None;
    for (i, (s, d)) in inputs.iter().enumerate() {
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
                return Err(RuleError::at(
                    i,
                    format!("dtypes differ: {} and {}; insert a cast", prev.name(), d.name()),
                ));
            }
            _ => {}
        }
    }
    Ok(vec![(shape.unwrap_or_default(), dtype.or(scalar_dtype).unwrap_or(DType::F32))])
}

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

impl Unary {
    /// The function in the element type.
    fn function<T: Real>(self) -> fn(T) -> T {
        match self {
            Unary::Neg => |x: T| -x,
            Unary::Exp => |x: T| x.exp(),
            Unary::Log => |x: T| x.ln(),
            Unary::Sqrt => |x: T| x.sqrt(),
            Unary::Rsqrt => |x: T| x.sqrt().recip(),
            Unary::Sigmoid => sigmoid,
            Unary::Silu => |x: T| x * sigmoid(x),
            // log(1 + e^x), computed without overflow for large x (PyTorch switches at 20).
            Unary::Softplus => |x: T| if x > T::of(20.0) { x } else { x.exp().ln_1p() },
            Unary::Tanh => |x: T| x.tanh(),
            // The tanh approximation of GELU.
            Unary::Gelu => |x: T| {
                let k = T::of((2.0 / std::f64::consts::PI).sqrt());
                T::of(0.5) * x * (T::one() + (k * (x + T::of(0.044715) * x * x * x)).tanh())
            },
            Unary::Abs => |x: T| x.abs(),
            Unary::Sign => |x: T| if x == T::zero() { x } else { x.signum() },
            Unary::Round => |x: T| T::of(x.f64().round_ties_even()),
            Unary::Step => |x: T| if x > T::zero() { T::one() } else { T::zero() },
        }
    }

    /// The value on a float64 scalar.
    pub fn apply(self, x: f64) -> f64 {
        self.function::<f64>()(x)
    }
}

impl Binary {
    fn function<T: Real>(self) -> fn(T, T) -> T {
        match self {
            Binary::Add => |x, y| x + y,
            Binary::Sub => |x, y| x - y,
            Binary::Mul => |x, y| x * y,
            Binary::Div => |x, y| x / y,
            Binary::Maximum => |x: T, y: T| x.max(y),
            Binary::Minimum => |x: T, y: T| x.min(y),
        }
    }

    pub fn apply(self, x: f64, y: f64) -> f64 {
        self.function::<f64>()(x, y)
    }
}

impl Primitive for Unary {
    fn name(&self) -> &'static str {
        match self {
            Unary::Neg => "neg",
            Unary::Exp => "exp",
            Unary::Log => "log",
            Unary::Sqrt => "sqrt",
            Unary::Rsqrt => "rsqrt",
            Unary::Sigmoid => "sigmoid",
            Unary::Silu => "silu",
            Unary::Softplus => "softplus",
            Unary::Tanh => "tanh",
            Unary::Gelu => "gelu",
            Unary::Abs => "abs",
            Unary::Sign => "sign",
            Unary::Round => "round",
            Unary::Step => "step",
        }
    }

    fn class(&self) -> Class {
        Class::Elementwise
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        broadcast(inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![inputs[0].map(self.function::<T>())]
    }

    /// Rounding, sign and the step have zero gradient almost everywhere.
    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let x = g.nodes[node].inputs[0];
        let y = node;
        let mul = |g: &mut Graph, a, b| g.binary(Binary::Mul, a, b);
        let dx = match self {
            Unary::Neg => g.unary(Unary::Neg, dy),
            Unary::Exp => mul(g, dy, y),
            Unary::Log => g.binary(Binary::Div, dy, x),
            Unary::Sqrt => {
                let t = g.binary(Binary::Div, dy, y);
                g.scale(t, 0.5)
            }
            Unary::Rsqrt => {
                let t = g.binary(Binary::Div, y, x);
                let t = g.scale(t, -0.5);
                mul(g, dy, t)
            }
            Unary::Sigmoid => {
                let one_minus = one_minus(g, y);
                let t = mul(g, y, one_minus);
                mul(g, dy, t)
            }
            Unary::Silu => {
                // silu' = s·(1 + x·(1 − s))
                let s = g.unary(Unary::Sigmoid, x);
                let one_minus = one_minus(g, s);
                let t = mul(g, x, one_minus);
                let one = g.constant(1.0);
                let t = g.binary(Binary::Add, t, one);
                let t = mul(g, s, t);
                mul(g, dy, t)
            }
            Unary::Softplus => {
                let s = g.unary(Unary::Sigmoid, x);
                mul(g, dy, s)
            }
            Unary::Tanh => {
                let yy = mul(g, y, y);
                let t = one_minus(g, yy);
                mul(g, dy, t)
            }
            Unary::Gelu => {
                // y = ½x(1 + t), t = tanh(k(x + c·x³)): y' = ½(1 + t) + ½x(1 − t²)·k(1 + 3c·x²)
                let (k, c) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
                let x2 = mul(g, x, x);
                let x3 = mul(g, x2, x);
                let inner = g.scale(x3, c);
                let inner = g.binary(Binary::Add, x, inner);
                let inner = g.scale(inner, k);
                let t = g.unary(Unary::Tanh, inner);
                let one = g.constant(1.0);
                let first = g.binary(Binary::Add, t, one);
                let first = g.scale(first, 0.5);
                let tt = mul(g, t, t);
                let sech2 = one_minus(g, tt);
                let poly = g.scale(x2, 3.0 * c * k);
                let kc = g.constant(k);
                let poly = g.binary(Binary::Add, poly, kc);
                let second = mul(g, sech2, poly);
                let second = mul(g, second, x);
                let second = g.scale(second, 0.5);
                let d = g.binary(Binary::Add, first, second);
                mul(g, dy, d)
            }
            Unary::Abs => {
                let s = g.unary(Unary::Sign, x);
                mul(g, dy, s)
            }
            Unary::Sign | Unary::Round | Unary::Step => g.scale(dy, 0.0),
        };
        Ok(vec![Some(dx)])
    }

    fn linear_in(&self, partial: &[bool]) -> bool {
        *self == Unary::Neg && partial == [true]
    }

    fn fold(&self, inputs: &[f64]) -> Option<f64> {
        match inputs {
            [x] if *self != Unary::Step => Some(self.apply(*x)),
            _ => None,
        }
    }
}

impl Primitive for Binary {
    fn name(&self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
            Binary::Maximum => "maximum",
            Binary::Minimum => "minimum",
        }
    }

    fn class(&self) -> Class {
        Class::Elementwise
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        broadcast(inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let (a, b) = (inputs[0], inputs[1]);
        let shape = broadcast_shape(&a.shape, &b.shape);
        let f = self.function::<T>();
        // Scalars and equal shapes need no broadcast copy.
        let data = match (a.len(), b.len()) {
            (1, _) if b.shape == shape => b.data.iter().map(|&y| f(a.data[0], y)).collect(),
            (_, 1) if a.shape == shape => a.data.iter().map(|&x| f(x, b.data[0])).collect(),
            _ => {
                let (a, b) = (a.broadcast_to(&shape), b.broadcast_to(&shape));
                a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect()
            }
        };
        vec![Tensor::new(shape, data)]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let (x, b) = (g.nodes[node].inputs[0], g.nodes[node].inputs[1]);
        let (sa, sb) = (g.shape(x).to_vec(), g.shape(b).to_vec());
        let mul = |g: &mut Graph, a, b| g.binary(Binary::Mul, a, b);
        let (da, db) = match self {
            Binary::Add => (dy, dy),
            Binary::Sub => (dy, g.unary(Unary::Neg, dy)),
            Binary::Mul => (mul(g, dy, b), mul(g, dy, x)),
            Binary::Div => {
                let da = g.binary(Binary::Div, dy, b);
                let yb = g.binary(Binary::Div, node, b);
                let t = mul(g, dy, yb);
                (da, g.unary(Unary::Neg, t))
            }
            Binary::Maximum | Binary::Minimum => {
                let diff =
                    if *self == Binary::Maximum { g.binary(Binary::Sub, x, b) } else { g.binary(Binary::Sub, b, x) };
                let m = g.unary(Unary::Step, diff);
                let da = mul(g, dy, m);
                let db = g.binary(Binary::Sub, dy, da);
                (da, db)
            }
        };
        Ok(vec![Some(unbroadcast(g, da, &sa)), Some(unbroadcast(g, db, &sb))])
    }

    fn linear_in(&self, partial: &[bool]) -> bool {
        let count = partial.iter().filter(|&&p| p).count();
        match self {
            Binary::Add | Binary::Sub => count == partial.len(),
            Binary::Mul => count == 1,
            Binary::Div => partial == [true, false],
            Binary::Maximum | Binary::Minimum => false,
        }
    }

    fn fold(&self, inputs: &[f64]) -> Option<f64> {
        match inputs {
            [a, b] => Some(self.apply(*a, *b)),
            _ => None,
        }
    }
}

impl Primitive for Pow {
    fn name(&self) -> &'static str {
        "pow"
    }

    fn class(&self) -> Class {
        Class::Elementwise
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        broadcast(inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let e = T::of(self.exponent.0);
        vec![inputs[0].map(|x| x.powf(e))]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let x = g.nodes[node].inputs[0];
        let e = self.exponent.0;
        let p = g.apply(Pow { exponent: F64(e - 1.0) }, vec![x]);
        let p = g.scale(p, e);
        Ok(vec![Some(g.binary(Binary::Mul, dy, p))])
    }
}

impl Primitive for Clamp {
    fn name(&self) -> &'static str {
        "clamp"
    }

    fn class(&self) -> Class {
        Class::Elementwise
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        Ok(vec![first(inputs)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let (lo, hi) = (T::of(self.low.0), T::of(self.high.0));
        vec![inputs[0].map(|x| x.max(lo).min(hi))]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let x = g.nodes[node].inputs[0];
        let (lo, hi) = (g.constant(self.low.0), g.constant(self.high.0));
        let above = g.binary(Binary::Sub, x, lo);
        let above = g.unary(Unary::Step, above);
        let below = g.binary(Binary::Sub, hi, x);
        let below = g.unary(Unary::Step, below);
        let inside = g.binary(Binary::Mul, above, below);
        Ok(vec![Some(g.binary(Binary::Mul, dy, inside))])
    }
}

impl Primitive for Select {
    fn name(&self) -> &'static str {
        "select"
    }

    fn class(&self) -> Class {
        Class::Elementwise
    }

    fn infer(&self, inputs: &[Ty], ctx: Ctx) -> Result<Vec<Ty>, RuleError> {
        broadcast(inputs, ctx)
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let shape = inputs.iter().fold(Vec::new(), |s, x| broadcast_shape(&s, &x.shape));
        let [mask, a, b] = [0, 1, 2].map(|i| inputs[i].broadcast_to(&shape));
        let data = (mask.data.iter().zip(&a.data).zip(&b.data))
            .map(|((&m, &a), &b)| if m > T::zero() { a } else { b })
            .collect();
        vec![Tensor::new(shape, data)]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let [mask, a, b] = [0, 1, 2].map(|i| g.nodes[node].inputs[i]);
        let (sa, sb) = (g.shape(a).to_vec(), g.shape(b).to_vec());
        let zero = g.constant(0.0);
        let da = g.apply(Select, vec![mask, dy, zero]);
        let db = g.apply(Select, vec![mask, zero, dy]);
        Ok(vec![None, Some(unbroadcast(g, da, &sa)), Some(unbroadcast(g, db, &sb))])
    }

    fn linear_in(&self, partial: &[bool]) -> bool {
        // Linear in the picked values, together, with the mask whole.
        partial == [false, true, true]
    }

    fn fold(&self, inputs: &[f64]) -> Option<f64> {
        match inputs {
            [m, a, b] => Some(if *m > 0.0 { *a } else { *b }),
            _ => None,
        }
    }
}

impl Primitive for StopGradient {
    fn name(&self) -> &'static str {
        "stop_gradient"
    }

    fn class(&self) -> Class {
        Class::Elementwise
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        Ok(vec![first(inputs)])
    }

    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        vec![inputs[0].clone()]
    }

    fn vjp(&self, _: &mut Graph, _: NodeId, _: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        Ok(vec![None])
    }

    fn linear_in(&self, partial: &[bool]) -> bool {
        partial == [true]
    }

    fn fold(&self, inputs: &[f64]) -> Option<f64> {
        inputs.first().copied()
    }
}

impl Primitive for Cast {
    fn name(&self) -> &'static str {
        "cast"
    }

    fn class(&self) -> Class {
        Class::Elementwise
    }

    fn infer(&self, inputs: &[Ty], _: Ctx) -> Result<Vec<Ty>, RuleError> {
        Ok(vec![(first(inputs).0, self.dtype)])
    }

    /// Rounds to the precision of the dtype (bf16/f16 round to nearest even; ints truncate).
    fn eval<T: Real>(&self, inputs: &[&Tensor<T>], _: Sizes) -> Vec<Tensor<T>> {
        let x = inputs[0];
        vec![match self.dtype {
            DType::F64 => x.clone(),
            DType::F32 => x.map(|v| T::of(v.f64() as f32 as f64)),
            DType::BF16 => x.map(|v| T::of(half::bf16::from_f64(v.f64()).to_f64())),
            DType::F16 => x.map(|v| T::of(half::f16::from_f64(v.f64()).to_f64())),
            DType::I64 | DType::I32 | DType::I8 => x.map(|v| T::of(v.f64().trunc())),
        }]
    }

    fn vjp(&self, g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
        let dtype = g.nodes[g.nodes[node].inputs[0]].ty.dtype;
        Ok(vec![Some(g.apply(Cast { dtype }, vec![dy]))])
    }

    fn linear_in(&self, partial: &[bool]) -> bool {
        partial == [true]
    }
}

/// Numpy broadcasting of concrete shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = (i + a.len()).checked_sub(n).map_or(1, |j| a[j]);
            let db = (i + b.len()).checked_sub(n).map_or(1, |j| b[j]);
            da.max(db)
        })
        .collect()
}

fn one_minus(g: &mut Graph, x: NodeId) -> NodeId {
    let one = g.constant(1.0);
    g.binary(Binary::Sub, one, x)
}
