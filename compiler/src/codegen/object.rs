//! Object code ahead of time: a kernel's MLIR lowered to the LLVM dialect, translated into
//! an LLVM module that inkwell owns, optimised at O3 by LLVM's new pass manager for the
//! host's target machine (its CPU name and features, as MLIR's JIT did), and emitted as an
//! ELF object in memory. The object is what an artifact and the cache keep, so a run that
//! finds it only links it ([`super::link`]): no LLVM optimisation or codegen at run time.
//!
//! inkwell earns its place here: it owns the LLVM context and module safely, and wraps the
//! target machine, the host's CPU and features, the pass pipeline and object emission.
//! ORC, which it does not wrap, is used through llvm-sys in [`super::link`].
//!
//! One LLVM in the process: mlir-sys links LLVM's static libraries, so inkwell's llvm-sys
//! is built with `no-llvm-linking` and resolves against that same copy (linking the shared
//! libLLVM as well would register LLVM's global options twice).

use super::mlir::Session;
use super::CodegenError;
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple};
use inkwell::OptimizationLevel;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// Lowering from the generator's dialects to the LLVM dialect.
const PIPELINE: &str = "builtin.module(inline, canonicalize, cse, convert-scf-to-cf, \
                        convert-arith-to-llvm, convert-func-to-llvm, convert-cf-to-llvm, reconcile-unrealized-casts)";

/// LLVM's own optimisation: what MLIR's JIT ran at O3.
const OPTIMISATION: &str = "default<O3>";

/// What object code is built for. Code runs only on a host where all of it matches: a
/// different CPU or feature set could lack an instruction the code uses, and another LLVM
/// or hyb could generate different code from the same MLIR.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Host {
    pub triple: String,
    pub cpu: String,
    /// LLVM's feature string (`+avx2,-avx512f,…`), sorted so it compares as a set.
    pub features: String,
    pub llvm: String,
    pub hyb: String,
}

impl Host {
    /// This machine, as LLVM sees it, and this build of hyb.
    pub fn current() -> &'static Host {
        static HOST: OnceLock<Host> = OnceLock::new();
        HOST.get_or_init(|| {
            let (mut major, mut minor, mut patch) = (0, 0, 0);
            unsafe { llvm_sys::core::LLVMGetVersion(&mut major, &mut minor, &mut patch) };
            let features = TargetMachine::get_host_cpu_features().to_string_lossy().into_owned();
            let mut features: Vec<&str> = features.split(',').filter(|f| !f.is_empty()).collect();
            features.sort_unstable();
            Host {
                triple: TargetMachine::get_default_triple().as_str().to_string_lossy().into_owned(),
                cpu: TargetMachine::get_host_cpu_name().to_string_lossy().into_owned(),
                features: features.join(","),
                llvm: format!("{major}.{minor}.{patch}"),
                hyb: env!("CARGO_PKG_VERSION").to_string(),
            }
        })
    }
}

impl Host {
    /// What differs between two hosts, for people.
    pub fn differences(&self, other: &Host) -> Vec<&'static str> {
        let fields = [
            ("target", &self.triple, &other.triple),
            ("CPU", &self.cpu, &other.cpu),
            ("CPU features", &self.features, &other.features),
            ("LLVM version", &self.llvm, &other.llvm),
            ("hyb version", &self.hyb, &other.hyb),
        ];
        fields.into_iter().filter(|(_, a, b)| a != b).map(|(what, _, _)| what).collect()
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} {} (LLVM {}, hyb {})", self.triple, self.cpu, self.llvm, self.hyb)
    }
}

/// What identifies a kernel's object code: the SHA-256 (hex) of its MLIR, the views with
/// unit last-axis strides, the pipelines and the host. Equal keys mean the same code.
pub fn key(mlir: &str, unit_last: &[bool]) -> String {
    let host = Host::current();
    let mut h = Sha256::new();
    for part in [&host.triple, &host.cpu, &host.features, &host.llvm, &host.hyb, PIPELINE, OPTIMISATION] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update((unit_last.len() as u64).to_le_bytes());
    h.update(unit_last.iter().map(|&u| u as u8).collect::<Vec<_>>());
    h.update(mlir.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Registers the host's target with LLVM (once): code generation and linking need it.
pub(super) fn native_target() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| Target::initialize_native(&InitializationConfig::default())).clone()
}

/// `mlir` compiled to an ELF object for this host, at O3.
pub fn compile(name: &str, mlir: &str) -> Result<Vec<u8>, CodegenError> {
    let llvm_error =
        |stage, message: String| CodegenError::Mlir { kernel: name.to_string(), stage, message, dump: None };
    let machine = host_machine().map_err(|m| llvm_error("creating the host's target machine", m))?;
    let context = Context::create();
    let module = translate(name, mlir, &context)?;
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    // MLIR's JIT turned every loop optimisation on; the C API leaves SLP off by default.
    let options = PassBuilderOptions::create();
    options.set_loop_interleaving(true);
    options.set_loop_vectorization(true);
    options.set_loop_slp_vectorization(true);
    options.set_loop_unrolling(true);
    module
        .run_passes(OPTIMISATION, &machine, options)
        .map_err(|e| llvm_error("optimising the LLVM IR", e.to_string()))?;
    let object = machine
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| llvm_error("emitting object code", e.to_string()))?;
    Ok(object.as_slice().to_vec())
}

/// `mlir` lowered to the LLVM dialect and translated to LLVM IR, before LLVM's own
/// optimisation (`hyb compile --emit llvm`).
pub fn llvm_ir(name: &str, mlir: &str) -> Result<String, CodegenError> {
    let context = Context::create();
    let ir = translate(name, mlir, &context)?.print_to_string().to_string();
    Ok(ir)
}

/// `mlir` parsed, lowered to the LLVM dialect and translated into a module of `context`.
fn translate<'c>(name: &str, mlir: &str, context: &'c Context) -> Result<Module<'c>, CodegenError> {
    let session = Session::new(name);
    let mut module = session.parse(mlir)?;
    session.lower(&mut module, PIPELINE, mlir)?;
    // Both sides name the same C type (`LLVMContextRef`, `LLVMModuleRef`) through their
    // own bindings.
    let raw = unsafe { mlir_sys::mlirTranslateModuleToLLVMIR(module.as_operation().to_raw(), context.raw().cast()) };
    if raw.is_null() {
        return Err(session.failure("translating to LLVM IR", mlir));
    }
    // The translation hands over a module of `context` that nothing else owns.
    Ok(unsafe { Module::new(raw.cast()) })
}

/// A target machine for the host's CPU and features, position-independent (the linker
/// may place the code anywhere), optimising code generation at O3.
fn host_machine() -> Result<TargetMachine, String> {
    native_target()?;
    let host = Host::current();
    let triple = TargetTriple::create(&host.triple);
    let target = Target::from_triple(&triple).map_err(|e| e.to_string())?;
    target
        .create_target_machine(
            &triple,
            &host.cpu,
            &host.features,
            OptimizationLevel::Aggressive,
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| format!("LLVM has no target machine for {host}"))
}
