//! GEMMs on the GPU through cuBLASLt, planned once per launch when the program is
//! prepared: layouts, transposes, batch strides and the algorithm the heuristic picks
//! for the views' alignment are fixed then, so a step only queues `cublasLtMatmul` calls.
//!
//! Views are row-major with any strides. cuBLASLt is column-major, so `C = op(A)·op(B)`
//! runs as `Cᵀ = op(B)ᵀ·op(A)ᵀ`: a row-major matrix is its transpose in column-major,
//! and a view with a unit row stride is taken transposed instead. Batch axes that continue
//! the rows of A and C (and leave B alone) fold into the rows, like the CPU's GEMM; the
//! innermost remaining one is cuBLASLt's strided batch, and any others are a loop.

use super::{CudaError, Device};
use cudarc::cublaslt::{result as blas, sys};
use hyb_compiler::codegen::unit::GemmShape;
use hyb_dsl::value::DType;
use std::ffi::c_void;

/// Bytes of workspace cuBLASLt may use (one buffer, shared by every GEMM of a program).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// A GEMM operand or output where a launch has it: byte offset in the arena, shape,
/// element strides and storage.
#[derive(Clone, Debug)]
pub struct Operand<'a> {
    pub offset: usize,
    pub shape: &'a [usize],
    pub strides: &'a [isize],
    pub dtype: DType,
}

/// One launch's GEMM, ready to queue.
pub struct GemmPlan {
    desc: sys::cublasLtMatmulDesc_t,
    /// Layouts of cuBLASLt's A (our op(B)ᵀ), B (our op(A)ᵀ) and C/D (our Cᵀ).
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
    /// Byte offsets of our A, B and C for batch index 0.
    offsets: [usize; 3],
    /// Batch axes looped over: extent and byte strides of A, B and C.
    loops: Vec<(usize, [isize; 3])>,
    /// The epilogue: `C = alpha·op(A)·op(B) + R` with R (beta = 1) `residual` bytes past
    /// C, laid out as C is.
    alpha: f32,
    residual: Option<isize>,
    /// The alignment the algorithm was chosen for at C and D.
    out_alignment: u32,
}

// Safety: descriptors are plain cuBLASLt handles, used from one thread at a time.
unsafe impl Send for GemmPlan {}
unsafe impl Sync for GemmPlan {}

/// How cuBLASLt stores one matrix: transposed or not, its stored rows and columns, and
/// the leading dimension.
struct Stored {
    transpose: bool,
    rows: usize,
    cols: usize,
    ld: usize,
}

/// A logical `rows × cols` matrix whose element `(r, c)` is at `r·sr + c·sc`, as cuBLASLt
/// takes it: column-major (`sr` = 1), or stored as its transpose (`sc` = 1).
fn stored(rows: usize, cols: usize, sr: isize, sc: isize) -> Option<Stored> {
    let unit = |extent: usize, stride: isize| extent == 1 || stride == 1;
    if unit(rows, sr) && (cols == 1 || sc >= rows.max(1) as isize) {
        let ld = if cols == 1 { rows.max(1) } else { sc as usize };
        return Some(Stored { transpose: false, rows, cols, ld });
    }
    if unit(cols, sc) && (rows == 1 || sr >= cols.max(1) as isize) {
        let ld = if rows == 1 { cols.max(1) } else { sr as usize };
        return Some(Stored { transpose: true, rows: cols, cols: rows, ld });
    }
    None
}

fn data_type(d: DType) -> Option<sys::cudaDataType> {
    match d {
        DType::F32 => Some(sys::cudaDataType::CUDA_R_32F),
        DType::BF16 => Some(sys::cudaDataType::CUDA_R_16BF),
        _ => None,
    }
}

/// The largest power of two (up to 256) dividing every one of `bytes`.
fn alignment(bytes: impl IntoIterator<Item = isize>) -> u32 {
    let mut align = 256u32;
    for b in bytes {
        if b != 0 {
            align = align.min(1 << b.unsigned_abs().trailing_zeros().min(8));
        }
    }
    align
}

impl GemmPlan {
    /// Plans `out = op(a)·op(b)` for `shape`'s transposes over these views, or says why
    /// cuBLASLt cannot take them.
    pub fn new(
        device: &Device,
        shape: &GemmShape,
        a: &Operand,
        b: &Operand,
        out: &Operand,
    ) -> Result<GemmPlan, CudaError> {
        let unsupported = |why: String| CudaError::Unsupported(format!("matmul {:?}·{:?}: {why}", shape.a, shape.b));
        let (ta, tb) = (shape.matmul.transpose_a, shape.matmul.transpose_b);
        let (ra, rb, ro) = (a.shape.len(), b.shape.len(), out.shape.len());
        if ra < 2
            || rb < 2
            || ro != ra.max(rb)
            || a.strides.len() != ra
            || b.strides.len() != rb
            || out.strides.len() != ro
        {
            return Err(unsupported("not a matmul's ranks".into()));
        }
        let (m, n) = (out.shape[ro - 2], out.shape[ro - 1]);
        let k = if ta { a.shape[ra - 2] } else { a.shape[ra - 1] };
        let (ea, eb, eo) =
            (a.dtype.size_bytes() as isize, b.dtype.size_bytes() as isize, out.dtype.size_bytes() as isize);
        // Element strides of op(A) (m × k) and op(B) (k × n), and of C.
        let matrix = |s: &[isize], t: bool| {
            let r = s.len();
            if t {
                (s[r - 1], s[r - 2])
            } else {
                (s[r - 2], s[r - 1])
            }
        };
        let (rsa, csa) = matrix(a.strides, ta);
        let (rsb, csb) = matrix(b.strides, tb);
        let (rsc, csc) = (out.strides[ro - 2], out.strides[ro - 1]);
        let batch_stride = |v: &Operand, d: usize| {
            let at = d as isize - (ro - v.shape.len()) as isize;
            if at < 0 || v.shape[at as usize] == 1 {
                0
            } else {
                v.strides[at as usize]
            }
        };
        let mut batch: Vec<(usize, [isize; 3])> =
            (0..ro - 2).map(|d| (out.shape[d], [batch_stride(a, d), batch_stride(b, d), out.strides[d]])).collect();
        let mut rows = m;
        while let Some(&(extent, [sa, sb, so])) = batch.last() {
            let continues = sb == 0 && sa == rows as isize * rsa && so == rows as isize * rsc;
            if !(continues || extent == 1) {
                break;
            }
            rows *= extent;
            batch.pop();
        }
        // cuBLASLt's A: op(B)ᵀ (n × k); its B: op(A)ᵀ (k × rows); its D: Cᵀ (n × rows).
        let x = stored(n, k, csb, rsb).ok_or_else(|| unsupported(format!("B's strides {:?}", b.strides)))?;
        let y = stored(k, rows, csa, rsa).ok_or_else(|| unsupported(format!("A's strides {:?}", a.strides)))?;
        let d = stored(n, rows, csc, rsc)
            .filter(|d| !d.transpose)
            .ok_or_else(|| unsupported(format!("the output's strides {:?}", out.strides)))?;
        let types = (data_type(a.dtype), data_type(b.dtype), data_type(out.dtype));
        let (Some(ty_a), Some(ty_b), Some(ty_out)) = types else {
            return Err(unsupported(format!("storage {:?}·{:?} → {:?}", a.dtype, b.dtype, out.dtype)));
        };
        if a.dtype != b.dtype {
            return Err(unsupported(format!("operands of different storage ({:?}, {:?})", a.dtype, b.dtype)));
        }
        let cublas = |what: &'static str| move |e| CudaError::blas(what, e);
        let desc =
            blas::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)
                .map_err(cublas("creating a matmul descriptor"))?;
        let set_desc = |attr, value: i32| unsafe {
            blas::set_matmul_desc_attribute(desc, attr, &value as *const i32 as *const c_void, 4)
        };
        set_desc(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, x.transpose as i32)
            .map_err(cublas("setting TRANSA"))?;
        set_desc(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, y.transpose as i32)
            .map_err(cublas("setting TRANSB"))?;
        // The innermost remaining batch axis is cuBLASLt's batch; the rest loop.
        let strided = batch.pop();
        let layout = |ty, s: &Stored, batch_stride: Option<(usize, isize)>| -> Result<_, CudaError> {
            let l = blas::create_matrix_layout(ty, s.rows as u64, s.cols as u64, s.ld as i64)
                .map_err(cublas("creating a matrix layout"))?;
            if let Some((count, stride)) = batch_stride {
                let count = count as i32;
                let stride = stride as i64;
                unsafe {
                    blas::set_matrix_layout_attribute(
                        l,
                        sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                        &count as *const i32 as *const c_void,
                        4,
                    )
                    .map_err(cublas("setting a batch count"))?;
                    blas::set_matrix_layout_attribute(
                        l,
                        sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                        &stride as *const i64 as *const c_void,
                        8,
                    )
                    .map_err(cublas("setting a batch stride"))?;
                }
            }
            Ok(l)
        };
        let inner = |which: usize| strided.map(|(e, s)| (e, s[which]));
        let layouts = [layout(ty_b, &x, inner(1))?, layout(ty_a, &y, inner(0))?, layout(ty_out, &d, inner(2))?];
        let offsets = [a.offset, b.offset, out.offset];
        let loops: Vec<(usize, [isize; 3])> =
            batch.iter().map(|&(e, [sa, sb, so])| (e, [sa * ea, sb * eb, so * eo])).collect();
        // Every address a call sees: the base, stepped by the loops and the batch.
        let steps = |which: usize, size: isize| {
            let mut all: Vec<isize> = vec![offsets[which] as isize];
            all.extend(loops.iter().map(|(_, s)| s[which]));
            all.extend(strided.map(|(_, s)| s[which] * size));
            alignment(all)
        };
        let aligns = [steps(1, eb), steps(0, ea), steps(2, eo)];
        let pref = blas::create_matmul_pref().map_err(cublas("creating a matmul preference"))?;
        let workspace = WORKSPACE_BYTES as u64;
        unsafe {
            let set = |attr, p: *const c_void, size| blas::set_matmul_pref_attribute(pref, attr, p, size);
            use sys::cublasLtMatmulPreferenceAttributes_t as P;
            set(P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace as *const u64 as *const c_void, 8)
                .map_err(cublas("setting the workspace size"))?;
            for (attr, align) in [
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aligns[0]),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &aligns[1]),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &aligns[2]),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &aligns[2]),
            ] {
                set(attr, align as *const u32 as *const c_void, 4).map_err(cublas("setting an alignment"))?;
            }
        }
        let heuristic = unsafe {
            blas::get_matmul_algo_heuristic(device.blas, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref)
        };
        let _ = unsafe { blas::destroy_matmul_pref(pref) };
        let heuristic = heuristic.map_err(|e| {
            unsupported(format!(
                "cuBLASLt has no algorithm for it ({e}; rows {rows}, n {n}, k {k}, alignments {aligns:?})"
            ))
        })?;
        Ok(GemmPlan {
            desc,
            layouts,
            algo: heuristic.algo,
            offsets,
            loops,
            alpha: 1.0,
            residual: None,
            out_alignment: aligns[2],
        })
    }

    /// The plan with an epilogue: the product scaled by `alpha`, plus `residual` (beta = 1),
    /// which must be laid out as the output is (its strides and storage), so it is read
    /// through the output's layout.
    pub fn with_epilogue(
        mut self,
        alpha: f32,
        residual: Option<&Operand>,
        out: &Operand,
    ) -> Result<GemmPlan, CudaError> {
        if let Some(r) = residual {
            if r.shape != out.shape || r.strides != out.strides || r.dtype != out.dtype {
                return Err(CudaError::Unsupported(format!(
                    "a residual {:?} {:?} {:?} laid out unlike the GEMM's output {:?} {:?} {:?}",
                    r.shape, r.strides, r.dtype, out.shape, out.strides, out.dtype
                )));
            }
            let delta = r.offset as isize - out.offset as isize;
            if alignment([delta]) < self.out_alignment {
                return Err(CudaError::Unsupported(format!(
                    "a residual less aligned than the GEMM's output ({} bytes)",
                    self.out_alignment
                )));
            }
            self.residual = Some(delta);
        }
        self.alpha = alpha;
        Ok(self)
    }

    /// Queues the GEMM on `stream` over the arena at `base`, with cuBLASLt's workspace at
    /// `workspace`.
    pub fn launch(
        &self,
        device: &Device,
        stream: cudarc::driver::sys::CUstream,
        base: u64,
        workspace: u64,
    ) -> Result<(), CudaError> {
        let (alpha, beta) = (self.alpha, if self.residual.is_some() { 1.0f32 } else { 0.0 });
        let count: usize = self.loops.iter().map(|(e, _)| e).product();
        let mut index = vec![0usize; self.loops.len()];
        for _ in 0..count {
            let at = |which: usize| -> u64 {
                let step: isize = index.iter().zip(&self.loops).map(|(&i, (_, s))| i as isize * s[which]).sum();
                (base as i64 + self.offsets[which] as i64 + step as i64) as u64
            };
            let (pa, pb, pd) = (at(0), at(1), at(2));
            let pc = (pd as i64 + self.residual.unwrap_or(0) as i64) as u64;
            // Safety: descriptors made in `new`; the addresses are inside the arena the
            // launch's views were planned in.
            unsafe {
                blas::matmul(
                    device.blas,
                    self.desc,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    pb as *const c_void,
                    self.layouts[0],
                    pa as *const c_void,
                    self.layouts[1],
                    pc as *const c_void,
                    self.layouts[2],
                    pd as *mut c_void,
                    self.layouts[2],
                    &self.algo,
                    workspace as *mut c_void,
                    WORKSPACE_BYTES,
                    stream as sys::cudaStream_t,
                )
            }
            .map_err(|e| CudaError::blas("queuing a GEMM", e))?;
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < self.loops[d].0 {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(())
    }
}

impl Drop for GemmPlan {
    fn drop(&mut self) {
        // Safety: created in `new`, destroyed once.
        unsafe {
            for l in self.layouts {
                let _ = blas::destroy_matrix_layout(l);
            }
            let _ = blas::destroy_matmul_desc(self.desc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where cuBLASLt finds element `(r, c)` of a stored matrix.
    fn address(s: &Stored, r: usize, c: usize) -> usize {
        if s.transpose {
            c + r * s.ld
        } else {
            r + c * s.ld
        }
    }

    #[test]
    fn stored_matrices_reach_the_elements_of_the_view() {
        // Row-major, column-major, padded rows, a broadcast single row, a single column.
        for (rows, cols, sr, sc) in [(3, 4, 4, 1), (3, 4, 1, 3), (3, 4, 8, 1), (1, 4, 0, 1), (5, 1, 1, 0), (2, 2, 1, 2)]
        {
            let s = stored(rows, cols, sr, sc).unwrap();
            assert!(s.ld >= s.rows.max(1), "{rows}×{cols}: leading dimension {} under {} rows", s.ld, s.rows);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        address(&s, r, c) as isize,
                        r as isize * sr + c as isize * sc,
                        "{rows}×{cols} ({r}, {c})"
                    );
                }
            }
        }
        assert!(stored(3, 4, 4, 1).unwrap().transpose);
        // Neither axis unit-stride, or rows that overlap: not expressible.
        assert!(stored(3, 4, 8, 2).is_none());
        assert!(stored(3, 4, 2, 1).is_none());
    }

    #[test]
    fn alignment_is_the_largest_power_of_two_dividing_every_address() {
        assert_eq!(alignment([0, 512]), 256);
        assert_eq!(alignment([4096 + 4, 64]), 4);
        assert_eq!(alignment([32, -16]), 16);
    }
}
