//! Every launch of a program run on the GPU against the CPU executor, one at a time and
//! on the same memory: before launch `i` the GPU gets the buffers the CPU's launch reads,
//! its outputs are poisoned with NaN, it runs, and what it wrote is compared with what the
//! CPU wrote. A kernel is checked in isolation, so an error names it and does not spread;
//! NaN never passes.

use super::{CudaError, CudaProgram, Device};
use crate::cpu::{self, Kernels, Observer};
use hyb_compiler::ir::{Graph, Op};
use hyb_compiler::ops::Primitive;
use hyb_compiler::plan::{Program, View};
use hyb_compiler::reference::{RunError, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// How one launch compared.
#[derive(Clone, Debug)]
pub struct LaunchCheck {
    pub launch: usize,
    /// What ran: the primitive, or the kernel's kind.
    pub what: String,
    /// The largest difference from the CPU, over the largest magnitude of the CPU's
    /// output (0 where they are equal).
    pub error: f64,
    /// Why it failed (a NaN, an error above the tolerance), if it did.
    pub problem: Option<String>,
}

/// Runs every launch of `program` (planned from `graph`, float32) on the GPU and on the
/// CPU executor (`kernels`), launch by launch, and compares their outputs: an output
/// passes when every element is within `tolerance` of the CPU's largest magnitude.
pub fn check_launches(
    device: Arc<Device>,
    graph: &Graph,
    program: &Program,
    kernels: &Kernels,
    params: &HashMap<String, Tensor<f32>>,
    inputs: &HashMap<String, Tensor<f32>>,
    tolerance: f64,
) -> Result<Vec<LaunchCheck>, CudaError> {
    let mut gpu = CudaProgram::prepare(device, graph, program)?;
    gpu.graphs = false;
    gpu.load(graph, params, inputs)?;
    let mut checker = Checker { gpu: &gpu, graph, program, tolerance, results: Vec::new(), failure: None };
    let outcome = cpu::run_observed(graph, program, kernels, params, inputs, &mut checker);
    if let Some(e) = checker.failure.take() {
        return Err(e);
    }
    outcome?;
    Ok(checker.results)
}

struct Checker<'a> {
    gpu: &'a CudaProgram,
    graph: &'a Graph,
    program: &'a Program,
    tolerance: f64,
    results: Vec<LaunchCheck>,
    /// A GPU error, which stops the run (the CPU's observer interface carries run errors).
    failure: Option<CudaError>,
}

impl Checker<'_> {
    fn fail(&mut self, e: CudaError) -> RunError {
        let message = e.to_string();
        self.failure = Some(e);
        RunError::Kernel(message)
    }

    /// The CPU's elements of `view`.
    fn cpu_view(&self, arena: &[f32], view: &View) -> Vec<f32> {
        let base = (self.program.buffers[view.buffer].offset / 4 + view.offset) as isize;
        let n: usize = view.shape.iter().product();
        let mut out = Vec::with_capacity(n);
        let mut index = vec![0usize; view.shape.len()];
        for _ in 0..n {
            let at = base + index.iter().zip(&view.strides).map(|(&i, &s)| i as isize * s).sum::<isize>();
            out.push(arena[at as usize]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < view.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        out
    }
}

impl Observer<f32> for Checker<'_> {
    fn before(&mut self, i: usize, arena: &[f32]) -> Result<(), RunError> {
        let launch = &self.program.launches[i];
        let step = || -> Result<(), CudaError> {
            // Outputs poisoned first: an update in place reads the buffer it writes.
            for v in &launch.outputs {
                self.gpu.poison(v)?;
            }
            for v in &launch.inputs {
                let b = &self.program.buffers[v.buffer];
                let (start, end) = (b.offset / 4, (b.offset + b.bytes) / 4);
                self.gpu.write_buffer(b.offset, &arena[start..end])?;
            }
            self.gpu.queue(i..i + 1)?;
            self.gpu.device().synchronize()
        };
        step().map_err(|e| self.fail(e))
    }

    fn after(&mut self, i: usize, arena: &[f32]) -> Result<(), RunError> {
        let launch = &self.program.launches[i];
        let what = match &self.graph.nodes[launch.node].op {
            Op::Prim(p) => p.name().to_string(),
            Op::Kernel(k) => format!("{} kernel", k.kind.name()),
            _ => "node".into(),
        };
        let mut error = 0f64;
        let mut problem = None;
        for (o, v) in launch.outputs.iter().enumerate() {
            let got = match self.gpu.read(v) {
                Ok(t) => t.data,
                Err(e) => return Err(self.fail(e)),
            };
            let want = self.cpu_view(arena, v);
            let scale = want.iter().filter(|x| x.is_finite()).fold(0f64, |m, &x| m.max(x.abs() as f64)).max(1e-30);
            for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
                let bad = if w.is_finite() {
                    let e = (g as f64 - w as f64).abs() / scale;
                    error = error.max(if e.is_nan() { f64::INFINITY } else { e });
                    e.is_nan() || e > self.tolerance
                } else {
                    g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan())
                };
                if bad && problem.is_none() {
                    problem = Some(format!("output {o} element {k}: GPU {g}, CPU {w} (scale {scale:.3e})"));
                }
            }
        }
        self.results.push(LaunchCheck { launch: i, what, error, problem });
        Ok(())
    }
}
