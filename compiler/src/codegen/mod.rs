//! Code generation: fused kernel bodies become native CPU code and PTX through MLIR.
//!
//! The generator ([`emit`]) writes MLIR as text — `scf` loops, `arith` math, `llvm`
//! pointer arithmetic, and on the GPU `gpu` thread ids and shuffles — because the text is
//! what a reader (and `--emit mlir`) wants to see, and it reads like the kernel; melior
//! parses and verifies it and runs the lowering pipelines; LLVM (through inkwell) turns the
//! CPU side into object code for the host ([`object`]), which ORC links ([`cpu`]), and
//! MLIR's NVPTX backend gives PTX ([`gpu`]). One walk over the body serves both targets, so the CPU code
//! that CI checks against the reference is the code the GPU runs, loop structure aside.
//!
//! A body is compiled for one program's sizes ([`Symbols`]): shapes are constants of the
//! generated code, strides and base pointers are arguments, so one compiled kernel runs
//! every launch of its body whatever the layout of its views.

mod body;
pub mod chain;
pub mod cpu;
mod emit;
pub mod gpu;
mod index;
mod link;
mod math;
mod mlir;
pub mod object;
mod reductions;
pub mod template;
pub mod unit;

pub use body::{declared_storage, Storage};
pub use emit::{Target, BLOCK_ROW, BLOCK_THREADS};
pub use math::Func;

use hyb_dsl::dim::Dim;
use std::path::PathBuf;

/// The sizes of the symbols kernel shapes name: batch `B` and sequence `T` (and their
/// parts, `T/2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Symbols {
    pub batch: usize,
    pub seq: usize,
}

impl Symbols {
    pub fn binder(self) -> impl Fn(&str) -> Option<i64> {
        move |s| {
            Dim::bind_parts(s, &|name| match name {
                "B" => Some(self.batch as i64),
                "T" => Some(self.seq as i64),
                _ => None,
            })
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    #[error("kernel body node %{node} (`{primitive}`) cannot be generated: {why}")]
    Unsupported { node: usize, primitive: String, why: String },
    #[error("kernel body node %{node}: the size {shape} is not known for this program")]
    Unbound { node: usize, shape: String },
    #[error("kernel `{kernel}`: {stage} failed: {message}{}", dump_note(.dump))]
    Mlir { kernel: String, stage: &'static str, message: String, dump: Option<PathBuf> },
}

fn dump_note(dump: &Option<PathBuf>) -> String {
    dump.as_ref().map(|p| format!(" (MLIR written to {})", p.display())).unwrap_or_default()
}

/// A stable name for a kernel body: `fused_` and the first 16 hex digits of the SHA-256
/// of its serialised form (the body is the kernel's meaning, so equal bodies share code).
pub fn kernel_name(body: &crate::ir::Graph) -> String {
    use sha2::Digest;
    let bytes = bincode::serialize(body).expect("a graph serialises");
    let digest = sha2::Sha256::digest(&bytes);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("fused_{hex}")
}
