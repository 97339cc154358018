//! GEMMs on the CPU: `matmul` launches run `matrixmultiply`'s blocked SIMD kernel, on all
//! cores, straight on the arena views — any strides, transposes as swapped strides, batch
//! axes broadcast with stride 0 — so nothing is gathered or copied. Batch axes that step
//! through A and the output like extra rows (and leave B alone) fold into the row count:
//! `x [B, T, d] @ wᵀ` is one `B·T × d` GEMM, not B small ones.
//!
//! Chosen by measurement (`bench/RESULTS.md`, "CPU GEMM"): on this project's 2-core
//! machines `matrixmultiply` with its threads ran the model's shapes at 128–157 GFLOP/s,
//! the `gemm` crate at 64–139.

use hyb_compiler::codegen::cpu::ArenaView;

/// One matmul launch's shapes, fixed when the program is compiled.
#[derive(Clone, Debug)]
pub struct Gemm {
    transpose_a: bool,
    transpose_b: bool,
    a: Vec<usize>,
    b: Vec<usize>,
    out: Vec<usize>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GemmError {
    #[error("matmul: {what} has shape {got:?}, compiled for {expected:?}")]
    Shape { what: &'static str, expected: Vec<usize>, got: Vec<usize> },
    #[error("matmul: {what} reaches outside the arena")]
    OutOfBounds { what: &'static str },
    #[error("matmul: the output overlaps an operand")]
    Overlap,
}

impl Gemm {
    /// A GEMM of `a` and `b` (transposed as the matmul says) into `out`; `None` unless
    /// the shapes are a matmul's (rank ≥ 2, inner dimensions equal, batch axes broadcast).
    pub fn new(transpose_a: bool, transpose_b: bool, a: &[usize], b: &[usize], out: &[usize]) -> Option<Gemm> {
        let (ra, rb, ro) = (a.len(), b.len(), out.len());
        if ra < 2 || rb < 2 || ro != ra.max(rb) {
            return None;
        }
        let (m, k) = if transpose_a { (a[ra - 1], a[ra - 2]) } else { (a[ra - 2], a[ra - 1]) };
        let (k2, n) = if transpose_b { (b[rb - 1], b[rb - 2]) } else { (b[rb - 2], b[rb - 1]) };
        if k != k2 || out[ro - 2] != m || out[ro - 1] != n {
            return None;
        }
        for (d, &o) in out[..ro - 2].iter().enumerate() {
            for x in [&a[..ra - 2], &b[..rb - 2]] {
                let at = d as isize - (ro - 2 - x.len()) as isize;
                if at >= 0 && x[at as usize] != o && x[at as usize] != 1 {
                    return None;
                }
            }
        }
        Some(Gemm { transpose_a, transpose_b, a: a.to_vec(), b: b.to_vec(), out: out.to_vec() })
    }

    /// `out = op(a)·op(b)` over `arena`.
    pub fn run(&self, arena: &mut [f32], a: &ArenaView, b: &ArenaView, out: &ArenaView) -> Result<(), GemmError> {
        for (what, v, shape) in [("a", a, &self.a), ("b", b, &self.b), ("the output", out, &self.out)] {
            if v.shape != shape.as_slice() || v.strides.len() != shape.len() {
                return Err(GemmError::Shape { what, expected: shape.clone(), got: v.shape.to_vec() });
            }
            if v.span().is_none_or(|(_, hi)| hi >= arena.len()) {
                return Err(GemmError::OutOfBounds { what });
            }
        }
        let (lo, hi) = out.span().expect("checked");
        if [a, b].iter().any(|v| v.span().is_some_and(|(a, b)| lo <= b && a <= hi)) {
            return Err(GemmError::Overlap);
        }
        let ro = self.out.len();
        let (m, n) = (self.out[ro - 2], self.out[ro - 1]);
        let ra = self.a.len();
        let k = if self.transpose_a { self.a[ra - 2] } else { self.a[ra - 1] };
        let (rsa, csa) = matrix_strides(a.strides, self.transpose_a);
        let (rsb, csb) = matrix_strides(b.strides, self.transpose_b);
        let (rsc, csc) = (out.strides[ro - 2], out.strides[ro - 1]);
        // Each batch axis, aligned to the output's: its extent and the three strides.
        let mut batch: Vec<(usize, [isize; 3])> = (0..ro - 2)
            .map(|d| (self.out[d], [batch_stride(a, d, ro), batch_stride(b, d, ro), out.strides[d]]))
            .collect();
        // Fold the innermost batch axes into the rows while they continue them.
        let mut rows = m;
        while let Some(&(extent, [sa, sb, so])) = batch.last() {
            let continues = sb == 0 && sa == rows as isize * rsa && so == rows as isize * rsc;
            if !(continues || extent == 1) {
                break;
            }
            rows *= extent;
            batch.pop();
        }
        let count: usize = batch.iter().map(|(e, _)| e).product();
        let base = arena.as_mut_ptr();
        let mut index = vec![0usize; batch.len()];
        for _ in 0..count {
            let offset = |which: usize| -> isize {
                index.iter().zip(&batch).map(|(&i, (_, s))| i as isize * s[which]).sum::<isize>()
            };
            // In bounds: every element each view reaches was checked above, and the
            // output is disjoint from the operands.
            unsafe {
                let pa = base.offset(a.offset as isize + offset(0));
                let pb = base.offset(b.offset as isize + offset(1));
                let pc = base.offset(out.offset as isize + offset(2));
                matrixmultiply::sgemm(rows, k, n, 1.0, pa, rsa, csa, pb, rsb, csb, 0.0, pc, rsc, csc);
            }
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < batch[d].0 {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(())
    }
}

/// Row and column strides of `op(X)` for a view of X.
fn matrix_strides(strides: &[isize], transposed: bool) -> (isize, isize) {
    let r = strides.len();
    if transposed {
        (strides[r - 1], strides[r - 2])
    } else {
        (strides[r - 2], strides[r - 1])
    }
}

/// The stride of output batch axis `d` in view `v` (0 where `v` broadcasts along it).
fn batch_stride(v: &ArenaView, d: usize, out_rank: usize) -> isize {
    let at = d as isize - (out_rank - v.shape.len()) as isize;
    if at < 0 || v.shape[at as usize] == 1 {
        0
    } else {
        v.strides[at as usize]
    }
}
