//! The distinct generated kernels of a device's programs. Preparing the launches asks for
//! each body or template by its key and gets a handle at once; when every launch is
//! prepared, the kernels not yet loaded are generated (MLIR to PTX) and loaded (the
//! driver's JIT to SASS) in parallel. A large model has hundreds of distinct kernels: one
//! after another they were most of the time before its first step. The registry is the
//! device's, so the evaluation pass reuses the training step's forward kernels.

use super::module::Module;
use super::{CudaError, Device};
use hyb_compiler::codegen::template::TemplateCode;
use hyb_compiler::codegen::{gpu, Storage, Symbols};
use hyb_compiler::ir::Graph;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

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

    /// Generates and loads the kernel if it is not loaded yet; the seconds each part took.
    fn load(&self, device: &Device) -> Result<Loaded, CudaError> {
        let Some(source) = self.source.lock().expect("not poisoned").take() else {
            return Ok(Loaded::default());
        };
        let started = Instant::now();
        let kernel = match &source {
            Source::Body { body, symbols, stored } => gpu::compile_stored(body, *symbols, stored),
            Source::Template { code, stored } => gpu::compile_template_stored(code, stored),
        }
        .map_err(|e| CudaError::Codegen(e.to_string()))?;
        let generated = Instant::now();
        // The handle is fresh: nothing else loads it.
        let _ = self.loaded.set(Module::load(device, kernel)?);
        Ok(Loaded {
            kernels: 1,
            generate_s: (generated - started).as_secs_f64(),
            jit_s: generated.elapsed().as_secs_f64(),
            wall_s: 0.0,
        })
    }
}

/// What a [`Kernels::load`] did: kernels generated and loaded, the seconds spent
/// generating PTX and in the driver's JIT (summed over the threads), and its wall time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Loaded {
    pub kernels: usize,
    pub generate_s: f64,
    pub jit_s: f64,
    pub wall_s: f64,
}

impl std::ops::Add for Loaded {
    type Output = Loaded;
    fn add(self, o: Loaded) -> Loaded {
        Loaded {
            kernels: self.kernels + o.kernels,
            generate_s: self.generate_s + o.generate_s,
            jit_s: self.jit_s + o.jit_s,
            wall_s: self.wall_s + o.wall_s,
        }
    }
}

/// The distinct kernels asked for so far, by a key that names everything the code depends
/// on (the body or template, its storages, the sizes of its symbols).
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
    pub fn load(&self, device: &Device) -> Result<Loaded, CudaError> {
        let started = Instant::now();
        let pending: Vec<&Arc<Kernel>> = self.by_key.values().collect();
        let loaded = pending.par_iter().map(|k| k.load(device)).try_reduce(Loaded::default, |a, b| Ok(a + b))?;
        Ok(Loaded { wall_s: started.elapsed().as_secs_f64(), ..loaded })
    }
}
