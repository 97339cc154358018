//! Values the checker computes while it walks a program: scalars known at compile time
//! (possibly symbolic), tensors described by shape and dtype, and tuples of tensors.

use crate::dim::Dim;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    F64,
    F32,
    BF16,
    F16,
    I64,
    I32,
    I8,
}

impl DType {
    pub const ALL: [DType; 7] = [DType::F64, DType::F32, DType::BF16, DType::F16, DType::I64, DType::I32, DType::I8];

    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I8 => "i8",
        }
    }

    pub fn parse(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }

    pub fn size_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::I8 => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::BF16 | DType::F16)
    }
}

/// Tensor dimensions, outermost first.
pub type Shape = Vec<Dim>;

pub fn shape_string(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(Dim::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// A tensor value: `id` names it in the trace of the instantiated program.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub id: usize,
    pub shape: Shape,
    pub dtype: DType,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Known or symbolic integer.
    Int(Dim),
    /// `None`: not known while checking a block generically.
    Float(Option<f64>),
    Bool(Option<bool>),
    Str(Option<String>),
    List(Vec<Value>),
    Tensor(Tensor),
    Tuple(Vec<Tensor>),
    /// The result of an expression that already produced a diagnostic; absorbs further
    /// errors so that one mistake is reported once.
    Poison,
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Tensor(_) => "tensor",
            Value::Tuple(_) => "tuple of tensors",
            Value::Poison => "<error>",
        }
    }

    /// The number, if this is a known int or float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(d) => d.as_const().map(|c| c as f64),
            Value::Float(f) => *f,
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(d) => write!(f, "{d}"),
            Value::Float(Some(v)) => write!(f, "{v:?}"),
            Value::Bool(Some(b)) => write!(f, "{b}"),
            Value::Str(Some(s)) => write!(f, "{s:?}"),
            Value::Float(None) | Value::Bool(None) | Value::Str(None) => {
                write!(f, "<{}>", self.kind())
            }
            Value::List(items) => {
                let parts: Vec<String> = items.iter().map(|v| v.to_string()).collect();
                write!(f, "[{}]", parts.join(", "))
            }
            Value::Tensor(t) => write!(f, "tensor{} {}", shape_string(&t.shape), t.dtype.name()),
            Value::Tuple(ts) => write!(f, "tuple of {} tensors", ts.len()),
            Value::Poison => f.write_str("<error>"),
        }
    }
}
