//! A program's distinct generated kernels. Preparing the launches asks for each body or
//! template by its key and gets a handle at once; when every launch is prepared, all the
//! kernels are generated (MLIR to PTX) and loaded (the driver's JIT to SASS) in parallel.
//! A large model has hundreds of distinct kernels: one after another they were most of
//! the time before its first step.

use super::module::Module;
use super::{CudaError, Device};
use hyb_compiler::codegen::template::TemplateCode;
use hyb_compiler::codegen::{gpu, Storage, Symbols};
use hyb_compiler::ir::Graph;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What a kernel is generated from.
pub enum Source {
    /// A fused body at a program's sizes, over views of these storages.
    Body { body: Graph, symbols: Symbols, stored: Vec<Storage> },
    /// A template's phases over views of these storages.
    Template { code: TemplateCode, stored: Vec<Storage> },
}

/// One distinct kernel: generated and loaded by [`Kernels::load`], before any launch.
pub struct Kernel {
    source: Mutex<Option<Source>>,
    loaded: OnceLock<Module>,
    /// Bytes of each workspace buffer its phases share (templates), known before it is
    /// generated so the launches' scratch can be laid out first.
    pub workspace: Vec<usize>,
}

impl Kernel {
    /// The loaded module.
    pub fn module(&self) -> &Module {
        self.loaded.get().expect("a program's kernels are loaded before it launches any")
    }

    fn load(&self, device: &Device) -> Result<(), CudaError> {
        let Some(source) = self.source.lock().expect("not poisoned").take() else {
            return Ok(());
        };
        let kernel = match &source {
            Source::Body { body, symbols, stored } => gpu::compile_stored(body, *symbols, stored),
            Source::Template { code, stored } => gpu::compile_template_stored(code, stored),
        }
        .map_err(|e| CudaError::Codegen(e.to_string()))?;
        // The handle is fresh: nothing else loads it.
        let _ = self.loaded.set(Module::load(device, kernel)?);
        Ok(())
    }
}

/// The distinct kernels asked for so far, by key.
#[derive(Default)]
pub struct Kernels {
    by_key: HashMap<String, Arc<Kernel>>,
}

impl Kernels {
    /// The kernel of `key`, added from `source` (with its `workspace` bytes) the first time.
    pub fn get(&mut self, key: String, source: impl FnOnce() -> (Source, Vec<usize>)) -> Arc<Kernel> {
        self.by_key
            .entry(key)
            .or_insert_with(|| {
                let (source, workspace) = source();
                Arc::new(Kernel { source: Mutex::new(Some(source)), loaded: OnceLock::new(), workspace })
            })
            .clone()
    }

    /// Generates and loads every kernel not yet loaded, in parallel; the first failure is
    /// the error.
    pub fn load(&self, device: &Device) -> Result<(), CudaError> {
        let pending: Vec<&Arc<Kernel>> = self.by_key.values().collect();
        pending.par_iter().try_for_each(|k| k.load(device))
    }

    pub fn count(&self) -> usize {
        self.by_key.len()
    }
}
