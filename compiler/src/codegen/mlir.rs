//! melior's side of code generation: a context with every dialect and translation, text
//! parsed and verified, pass pipelines run. MLIR's diagnostics are collected into the
//! error (not printed), and on failure the MLIR is written to a file the error names.

use super::CodegenError;
use melior::dialect::DialectRegistry;
use melior::ir::operation::OperationLike;
use melior::ir::Module;
use melior::pass::PassManager;
use melior::utility::{
    parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes,
};
use melior::Context;
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

/// A context with a collector for its diagnostics.
pub struct Session {
    pub context: Context,
    diagnostics: Rc<RefCell<Vec<String>>>,
    kernel: String,
}

impl Session {
    /// A single-threaded context (compiles run on the caller's threads) for kernel `kernel`.
    pub fn new(kernel: &str) -> Session {
        // The pass registry is global and unguarded: filled once, before any thread reads it.
        static PASSES: std::sync::Once = std::sync::Once::new();
        PASSES.call_once(register_all_passes);
        let registry = DialectRegistry::new();
        register_all_dialects(&registry);
        let context = Context::new_with_registry(&registry, false);
        context.load_all_available_dialects();
        register_all_llvm_translations(&context);
        let diagnostics = Rc::new(RefCell::new(Vec::new()));
        let sink = diagnostics.clone();
        context.attach_diagnostic_handler(move |d| {
            sink.borrow_mut().push(format!("{}: {d}", d.location()));
            true
        });
        Session { context, diagnostics, kernel: kernel.to_string() }
    }

    /// Parses and verifies `text`.
    pub fn parse(&self, text: &str) -> Result<Module<'_>, CodegenError> {
        let module = Module::parse(&self.context, text);
        match module {
            Some(m) if m.as_operation().verify() => Ok(m),
            _ => Err(self.failure("parsing the generated MLIR", text)),
        }
    }

    /// Runs the textual pass pipeline `pipeline` over `module`.
    pub fn lower(&self, module: &mut Module, pipeline: &str, text: &str) -> Result<(), CodegenError> {
        let manager = PassManager::new(&self.context);
        parse_pass_pipeline(manager.as_operation_pass_manager(), pipeline)
            .map_err(|e| self.error("parsing the pass pipeline", e.to_string(), None))?;
        manager.run(module).map_err(|_| self.failure("lowering", text))
    }

    /// An error for `stage` with the diagnostics so far, the MLIR written to a file.
    pub fn failure(&self, stage: &'static str, text: &str) -> CodegenError {
        let message = self.diagnostics.borrow().join("; ");
        let message = if message.is_empty() { "no diagnostic".to_string() } else { message };
        self.error(stage, message, dump(&self.kernel, text))
    }

    fn error(&self, stage: &'static str, message: String, dump: Option<PathBuf>) -> CodegenError {
        CodegenError::Mlir { kernel: self.kernel.clone(), stage, message, dump }
    }
}

/// Writes the MLIR of a failed kernel to the temporary directory; `None` if that fails
/// too (the error still carries the diagnostics).
fn dump(kernel: &str, text: &str) -> Option<PathBuf> {
    let path = std::env::temp_dir().join(format!("hyb-{kernel}-{}.mlir", std::process::id()));
    std::fs::write(&path, text).ok().map(|_| path)
}
