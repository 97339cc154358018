//! Element-wise ops: numpy broadcasting for binary ops, exact scalar functions.

use super::{attr_float, unbroadcast};
use crate::ir::{Attr, Graph, NodeId};
use crate::reference::tensor::{Real, Tensor};
use hyb_dsl::prims::Prim;

pub fn unary<T: Real>(x: &Tensor<T>, f: impl Fn(T) -> T) -> Tensor<T> {
    x.map(f)
}

/// The scalar function of a unary pointwise primitive.
pub fn scalar_fn<T: Real>(prim: Prim) -> fn(T) -> T {
    match prim {
        Prim::Neg => |x: T| -x,
        Prim::Exp => |x: T| x.exp(),
        Prim::Log => |x: T| x.ln(),
        Prim::Sqrt => |x: T| x.sqrt(),
        Prim::Rsqrt => |x: T| x.sqrt().recip(),
        Prim::Sigmoid => sigmoid,
        Prim::Silu => |x: T| x * sigmoid(x),
        // log(1 + e^x), computed without overflow for large x (PyTorch switches at 20).
        Prim::Softplus => |x: T| if x > T::of(20.0) { x } else { x.exp().ln_1p() },
        Prim::Tanh => |x: T| x.tanh(),
        // The tanh approximation of GELU.
        Prim::Gelu => |x: T| {
            let k = T::of((2.0 / std::f64::consts::PI).sqrt());
            T::of(0.5) * x * (T::one() + (k * (x + T::of(0.044715) * x * x * x)).tanh())
        },
        Prim::Abs => |x: T| x.abs(),
        Prim::Sign => |x: T| if x == T::zero() { x } else { x.signum() },
        Prim::Round => |x: T| T::of(x.f64().round_ties_even()),
        other => unreachable!("{} is not unary pointwise", other.name()),
    }
}

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

pub fn binary<T: Real>(prim: Prim, a: &Tensor<T>, b: &Tensor<T>) -> Tensor<T> {
    let shape = broadcast_shape(&a.shape, &b.shape);
    let f: fn(T, T) -> T = match prim {
        Prim::Add => |x, y| x + y,
        Prim::Sub => |x, y| x - y,
        Prim::Mul => |x, y| x * y,
        Prim::Div => |x, y| x / y,
        Prim::Maximum => |x: T, y: T| x.max(y),
        Prim::Minimum => |x: T, y: T| x.min(y),
        other => unreachable!("{} is not binary", other.name()),
    };
    // Scalars and equal shapes need no broadcast copy.
    let data = match (a.len(), b.len()) {
        (1, _) if b.shape == shape => b.data.iter().map(|&y| f(a.data[0], y)).collect(),
        (_, 1) if a.shape == shape => a.data.iter().map(|&x| f(x, b.data[0])).collect(),
        _ => {
            let (a, b) = (a.broadcast_to(&shape), b.broadcast_to(&shape));
            a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect()
        }
    };
    Tensor::new(shape, data)
}

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

/// Rounds to the precision of `dtype` (bf16/f16 round to nearest even; ints truncate).
pub fn cast<T: Real>(x: &Tensor<T>, dtype: &str) -> Tensor<T> {
    match dtype {
        "f64" => x.clone(),
        "f32" => x.map(|v| T::of(v.f64() as f32 as f64)),
        "bf16" => x.map(|v| T::of(half::bf16::from_f64(v.f64()).to_f64())),
        "f16" => x.map(|v| T::of(half::f16::from_f64(v.f64()).to_f64())),
        "i64" | "i32" | "i8" => x.map(|v| T::of(v.f64().trunc())),
        other => unreachable!("unknown dtype {other} passed the checker"),
    }
}

/// Gradients of the pointwise ops. Quantisers pass gradients straight through; rounding
/// and sign have zero gradient almost everywhere.
pub fn vjp(g: &mut Graph, prim: Prim, node: NodeId, dy: NodeId) -> Vec<Option<NodeId>> {
    use Prim::*;
    let inputs = g.nodes[node].inputs.clone();
    let x = inputs[0];
    let y = node;
    let mul = |g: &mut Graph, a, b| g.binary(Mul, a, b);
    match prim {
        Add | Sub | Mul | Div | Maximum | Minimum => {
            let b = inputs[1];
            let (sa, sb) = (g.shape(x).to_vec(), g.shape(b).to_vec());
            let (da, db) = match prim {
                Add => (dy, dy),
                Sub => (dy, g.unary(Neg, dy)),
                Mul => (mul(g, dy, b), mul(g, dy, x)),
                Div => {
                    let da = g.binary(Div, dy, b);
                    let yb = g.binary(Div, y, b);
                    let t = mul(g, dy, yb);
                    (da, g.unary(Neg, t))
                }
                _ => {
                    let diff = if prim == Maximum { g.binary(Sub, x, b) } else { g.binary(Sub, b, x) };
                    let m = g.unary(Step, diff);
                    let da = mul(g, dy, m);
                    let db = g.binary(Sub, dy, da);
                    (da, db)
                }
            };
            vec![Some(unbroadcast(g, da, &sa)), Some(unbroadcast(g, db, &sb))]
        }
        Pow => {
            let e = attr_float(g, node, 1);
            let p = g.apply(Pow, vec![Attr::Tensor, Attr::Float(e - 1.0)], vec![x]);
            let p = g.scale(p, e);
            vec![Some(mul(g, dy, p))]
        }
        Neg => vec![Some(g.unary(Neg, dy))],
        Exp => vec![Some(mul(g, dy, y))],
        Log => vec![Some(g.binary(Div, dy, x))],
        Sqrt => {
            let t = g.binary(Div, dy, y);
            vec![Some(g.scale(t, 0.5))]
        }
        Rsqrt => {
            let t = g.binary(Div, y, x);
            let t = g.scale(t, -0.5);
            vec![Some(mul(g, dy, t))]
        }
        Sigmoid => {
            let one_minus = one_minus(g, y);
            let t = mul(g, y, one_minus);
            vec![Some(mul(g, dy, t))]
        }
        Silu => {
            // silu' = s·(1 + x·(1 − s))
            let s = g.unary(Sigmoid, x);
            let one_minus = one_minus(g, s);
            let t = mul(g, x, one_minus);
            let one = g.constant(1.0);
            let t = g.binary(Add, t, one);
            let t = mul(g, s, t);
            vec![Some(mul(g, dy, t))]
        }
        Softplus => {
            let s = g.unary(Sigmoid, x);
            vec![Some(mul(g, dy, s))]
        }
        Tanh => {
            let yy = mul(g, y, y);
            let t = one_minus(g, yy);
            vec![Some(mul(g, dy, t))]
        }
        Gelu => {
            // y = ½x(1 + t), t = tanh(k(x + c·x³)): y' = ½(1 + t) + ½x(1 − t²)·k(1 + 3c·x²)
            let (k, c) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
            let x2 = mul(g, x, x);
            let x3 = mul(g, x2, x);
            let inner = g.scale(x3, c);
            let inner = g.binary(Add, x, inner);
            let inner = g.scale(inner, k);
            let t = g.unary(Tanh, inner);
            let one = g.constant(1.0);
            let first = g.binary(Add, t, one);
            let first = g.scale(first, 0.5);
            let tt = mul(g, t, t);
            let sech2 = one_minus(g, tt);
            let poly = g.scale(x2, 3.0 * c * k);
            let kc = g.constant(k);
            let poly = g.binary(Add, poly, kc);
            let second = mul(g, sech2, poly);
            let second = mul(g, second, x);
            let second = g.scale(second, 0.5);
            let d = g.binary(Add, first, second);
            vec![Some(mul(g, dy, d))]
        }
        Abs => {
            let s = g.unary(Sign, x);
            vec![Some(mul(g, dy, s))]
        }
        Sign | Round | Step => vec![Some(g.scale(dy, 0.0))],
        Clamp => {
            let (lo, hi) = (attr_float(g, node, 1), attr_float(g, node, 2));
            let (lo, hi) = (g.constant(lo), g.constant(hi));
            let above = g.binary(Sub, x, lo);
            let above = g.unary(Step, above);
            let below = g.binary(Sub, hi, x);
            let below = g.unary(Step, below);
            let inside = mul(g, above, below);
            vec![Some(mul(g, dy, inside))]
        }
        Cast => {
            let dtype = g.nodes[x].ty.dtype.name().to_string();
            vec![Some(g.apply(Cast, vec![Attr::Tensor, Attr::Str(dtype)], vec![dy]))]
        }
        TernaryQuant | Int8Quant => vec![Some(dy)],
        other => unreachable!("{} is not pointwise", other.name()),
    }
}

fn one_minus(g: &mut Graph, x: NodeId) -> NodeId {
    let one = g.constant(1.0);
    g.binary(Prim::Sub, one, x)
}
