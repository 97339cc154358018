//! A dense row-major tensor for the reference interpreter. Generic over the element type so
//! the same code evaluates a graph in float64 (the oracle) and float32.

use num_traits::Float;
use std::fmt::Debug;

/// Element types the interpreter runs in.
pub trait Real: Float + Debug + Send + Sync + 'static {
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;
    /// `C = A·B` for an `m×k` A and a `k×n` B given by element strides (row, column), into
    /// a row-major `m×n` C, by a blocked SIMD kernel (`matrixmultiply`). The arguments are
    /// BLAS's: sizes, then each operand with its strides.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: &[Self],
        a_strides: (isize, isize),
        b: &[Self],
        b_strides: (isize, isize),
        c: &mut [Self],
    );
}

/// The two float types differ only in their conversions and their GEMM routine.
macro_rules! real {
    ($t:ty, $gemm:path) => {
        impl Real for $t {
            fn of(x: f64) -> Self {
                x as $t
            }
            #[allow(clippy::unnecessary_cast)]
            fn f64(self) -> f64 {
                self as f64
            }
            fn gemm(
                m: usize,
                k: usize,
                n: usize,
                a: &[$t],
                (rsa, csa): (isize, isize),
                b: &[$t],
                (rsb, csb): (isize, isize),
                c: &mut [$t],
            ) {
                assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
                // SAFETY: the asserts above and the callers' strides (whole, densely stored
                // matrices) keep every access in bounds.
                unsafe {
                    $gemm(m, k, n, 1.0, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, 0.0, c.as_mut_ptr(), n as isize, 1)
                }
            }
        }
    };
}

real!(f64, matrixmultiply::dgemm);
real!(f32, matrixmultiply::sgemm);

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T: Real> Tensor<T> {
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape {shape:?} does not fit {} values", data.len());
        Tensor { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor { shape, data: vec![T::zero(); n] }
    }

    pub fn scalar(x: T) -> Self {
        Tensor { shape: vec![], data: vec![x] }
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
        Tensor { shape: self.shape.clone(), data: self.data.iter().map(|&x| f(x)).collect() }
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
            .map(|i| if i < offset || self.shape[i - offset] == 1 { 0 } else { src_strides[i - offset] })
            .collect();
        let n: usize = shape.iter().product();
        let mut data = Vec::with_capacity(n);
        if n == 0 {
            return Tensor { shape: shape.to_vec(), data };
        }
        // Rows of the last dimension at a time; an odometer over the outer dimensions.
        let last = shape.len() - 1;
        let (inner, step) = (shape[last], eff[last]);
        let mut idx = vec![0usize; last];
        for _ in 0..n / inner {
            let base: usize = idx.iter().zip(&eff).map(|(i, s)| i * s).sum();
            if step == 1 {
                data.extend_from_slice(&self.data[base..base + inner]);
            } else {
                data.extend(std::iter::repeat_n(self.data[base], inner));
            }
            for d in (0..last).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Tensor { shape: shape.to_vec(), data }
    }
}

pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}
