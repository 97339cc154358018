//! The CUDA executor: runs a planned [`Program`](hyb_compiler::plan::Program) on one GPU —
//! the same program the CPU executor runs. Generated kernels are PTX from
//! `hyb_compiler::codegen::gpu`, JIT-compiled by the driver when the program is prepared;
//! GEMMs go to cuBLASLt; the arena is one allocation; a step is one stream of launches
//! (with the replicas' exchanges beside it on a second, joined by events), captured as a
//! CUDA graph after its first run and replayed.
//!
//! Built on `cudarc`'s driver and cuBLASLt bindings, loaded at run time, so the same
//! binary runs on machines without a GPU (where [`Device::open`] says so).

mod check;
mod device;
mod gemm;
mod kernels;
mod memory;
mod module;
mod nccl;
mod program;

pub use check::{check_launches, LaunchCheck};
pub use device::Device;
pub use kernels::Loaded;
pub use memory::DeviceMemory;
pub use nccl::Communicators;
pub use program::CudaProgram;

use hyb_compiler::reference::RunError;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver found (libcuda.so): run on the CPU with `--device cpu`")]
    NoDriver,
    #[error("the CUDA driver sees no GPU: run on the CPU with `--device cpu`")]
    NoGpu,
    #[error("GPU {ordinal} does not exist: this machine has {count}")]
    NoSuchGpu { ordinal: usize, count: usize },
    #[error("{0} was not found: put the CUDA libraries on LD_LIBRARY_PATH, or run with `--device cpu`")]
    NoLibrary(&'static str),
    #[error("CUDA driver error {what}: {error}")]
    Driver { what: String, error: String },
    #[error("cuBLASLt error {what}: {error}")]
    Blas { what: String, error: String },
    #[error("the driver refused the PTX of kernel `{kernel}` ({error}); its log:\n{log}")]
    ModuleLoad { kernel: String, error: String, log: String },
    #[error("{kernel}{}: {error}", if .entry.is_empty() { String::new() } else { format!(", entry `{}`", .entry) })]
    Launch { kernel: String, entry: String, error: String },
    #[error(
        "out of GPU memory: {what} needs {:.2} GiB, {:.2} GiB of {:.2} GiB are free (try a smaller --batch or --seq, or --recompute)",
        gib(*.bytes), gib(*.free), gib(*.total)
    )]
    OutOfMemory { what: String, bytes: usize, free: usize, total: usize },
    #[error("not supported on the GPU yet: {0}")]
    Unsupported(String),
    #[error("NCCL error in {0}")]
    Nccl(String),
    #[error("code generation: {0}")]
    Codegen(String),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("internal error: {0}")]
    Internal(String),
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

impl CudaError {
    fn driver(what: &str, e: cudarc::driver::DriverError) -> CudaError {
        CudaError::Driver { what: what.to_string(), error: e.to_string() }
    }

    fn blas(what: &str, e: cudarc::cublaslt::result::CublasError) -> CudaError {
        CudaError::Blas { what: what.to_string(), error: e.to_string() }
    }

    /// The error, naming the launch whose preparation failed.
    fn at_launch(self, launch: usize, op: &hyb_compiler::ir::Op) -> CudaError {
        let name = match op {
            hyb_compiler::ir::Op::Prim(p) => {
                use hyb_compiler::ops::Primitive;
                p.name().to_string()
            }
            hyb_compiler::ir::Op::Kernel(k) => format!("{} kernel", k.kind.name()),
            _ => "node".into(),
        };
        match self {
            CudaError::Unsupported(why) => CudaError::Unsupported(format!("launch {launch} ({name}): {why}")),
            CudaError::Codegen(why) => CudaError::Codegen(format!("launch {launch} ({name}): {why}")),
            other => other,
        }
    }
}
