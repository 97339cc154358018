//! A dense row-major tensor for the reference interpreter. Generic over the element type so
//! the same code evaluates a graph in float64 (the oracle) and float32.

use num_traits::Float;
use std::fmt::Debug;

/// Element types the interpreter runs in.
pub trait Real: Float + Debug + Send + Sync + 'static {
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T: Real> Tensor<T> {
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?} does not fit {} values",
            data.len()
        );
        Tensor { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![T::zero(); n],
        }
    }

    pub fn scalar(x: T) -> Self {
        Tensor {
            shape: vec![],
            data: vec![x],
        }
    }

    pub fn from_f64(shape: Vec<usize>, data: &[f64]) -> Self {
        Tensor::new(shape, data.iter().map(|&x| T::of(x)).collect())
    }

    pub fn to_f64(&self) -> Vec<f64> {
        self.data.iter().map(|x| x.f64()).collect()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn strides(&self) -> Vec<usize> {
        strides(&self.shape)
    }

    pub fn map(&self, f: impl Fn(T) -> T) -> Self {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&x| f(x)).collect(),
        }
    }

    /// Values of this tensor broadcast (numpy rules) to `shape`.
    pub fn broadcast_to(&self, shape: &[usize]) -> Self {
        if self.shape == shape {
            return self.clone();
        }
        let offset = shape.len() - self.rank();
        let src_strides = self.strides();
        // Stride 0 along broadcast dimensions.
        let eff: Vec<usize> = (0..shape.len())
            .map(|i| {
                if i < offset || self.shape[i - offset] == 1 {
                    0
                } else {
                    src_strides[i - offset]
                }
            })
            .collect();
        let n: usize = shape.iter().product();
        let mut data = Vec::with_capacity(n);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..n {
            let at: usize = idx.iter().zip(&eff).map(|(i, s)| i * s).sum();
            data.push(self.data[at]);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Tensor {
            shape: shape.to_vec(),
            data,
        }
    }
}

pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}
