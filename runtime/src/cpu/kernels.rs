//! Generated native code for a program's fused kernels (`hyb_compiler::codegen::cpu`),
//! compiled once per distinct body before the first step, so a training run pays the JIT
//! once and every step runs the same machine code.
//!
//! A kernel the generator cannot compile (a primitive it has no generator for yet), or one
//! that takes a constant as an argument, runs with the reference semantics instead; the
//! counts say how much of the program is generated code.

use hyb_compiler::codegen::cpu::{Cache, CpuKernel};
use hyb_compiler::codegen::Symbols;
use hyb_compiler::ir::{Graph, KernelKind, Op};
use hyb_compiler::plan::{LaunchKind, Program};
use std::sync::Arc;

/// The compiled kernels of one program, by launch.
pub struct Kernels {
    by_launch: Vec<Option<Arc<CpuKernel>>>,
    /// Fused launches left to the reference semantics, with why.
    pub interpreted: Vec<(usize, String)>,
    /// Distinct kernel bodies compiled.
    pub compiled: usize,
    /// Wall time of compiling them.
    pub seconds: f64,
}

impl Kernels {
    /// Compiles every fused kernel of `program` (planned from `graph`) for its sizes.
    pub fn compile(graph: &Graph, program: &Program) -> Kernels {
        let started = std::time::Instant::now();
        let mut cache = Cache::new(Symbols { batch: program.batch, seq: program.seq });
        let mut interpreted = Vec::new();
        let by_launch = program
            .launches
            .iter()
            .enumerate()
            .map(|(i, launch)| {
                let node = &graph.nodes[launch.node];
                let Op::Kernel(k) = &node.op else { return None };
                if k.kind != KernelKind::Fused || !matches!(launch.kind, LaunchKind::Kernel(_)) {
                    return None;
                }
                if node.inputs.iter().any(|&x| matches!(graph.nodes[x].op, Op::Constant(_))) {
                    interpreted.push((i, "takes a constant argument".to_string()));
                    return None;
                }
                match cache.get(&k.body) {
                    Ok(kernel) => Some(kernel),
                    Err(e) => {
                        interpreted.push((i, e.to_string()));
                        None
                    }
                }
            })
            .collect();
        Kernels { by_launch, interpreted, compiled: cache.len(), seconds: started.elapsed().as_secs_f64() }
    }

    /// The generated kernel of launch `i`, if it has one.
    pub fn get(&self, i: usize) -> Option<&CpuKernel> {
        self.by_launch.get(i).and_then(|k| k.as_deref())
    }

    /// Launches that run generated code.
    pub fn generated(&self) -> usize {
        self.by_launch.iter().filter(|k| k.is_some()).count()
    }

    /// One line for people: how much of the program is native code.
    pub fn summary(&self) -> String {
        format!(
            "{} of {} fused launches run native code ({} distinct kernels, compiled in {:.2} s)",
            self.generated(),
            self.generated() + self.interpreted.len(),
            self.compiled,
            self.seconds
        )
    }
}
