//! Element-wise ops: numpy broadcasting for binary ops, exact scalar functions.

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
    let (a, b) = (a.broadcast_to(&shape), b.broadcast_to(&shape));
    let f: fn(T, T) -> T = match prim {
        Prim::Add => |x, y| x + y,
        Prim::Sub => |x, y| x - y,
        Prim::Mul => |x, y| x * y,
        Prim::Div => |x, y| x / y,
        Prim::Maximum => |x: T, y: T| x.max(y),
        Prim::Minimum => |x: T, y: T| x.min(y),
        other => unreachable!("{} is not binary", other.name()),
    };
    Tensor::new(
        shape,
        a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect(),
    )
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
