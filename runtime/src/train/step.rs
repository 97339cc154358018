//! What runs a training step: the compiled program (sharding, rewriting, fusion, planned
//! into one arena) on the CPU executor, or the unoptimised training graph in the reference
//! interpreter (the oracle, `--executor reference`). Both take the parameters, the batch and
//! the optimizer state, and return the loss, the gradient norm and each parameter's new
//! value and moments.

use hyb_compiler::ir::Graph;
use hyb_compiler::pipeline::{compile, Target};
use hyb_compiler::plan::{plan, PlanError, Precision, Program, Request};
use hyb_compiler::reference::{self, RunError, Tensor};
use hyb_compiler::rewrite::Options;
use hyb_compiler::training::{in_place_updates, training_graph, AdamW};
use hyb_dsl::value::DType;
use std::collections::HashMap;

/// Which executor runs the steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Executor {
    /// The compiled program on the CPU executor.
    #[default]
    Compiled,
    /// The reference interpreter on the unoptimised training graph.
    Reference,
}

pub enum StepProgram {
    Compiled { graph: Graph, program: Program },
    Reference { graph: Graph },
}

impl StepProgram {
    /// The training step of `forward` for batches of `batch × seq` tokens.
    pub fn build(
        forward: &Graph,
        opt: &AdamW,
        width_mult: f64,
        batch: usize,
        seq: usize,
        executor: Executor,
    ) -> Result<StepProgram, PlanError> {
        Ok(match executor {
            Executor::Reference => StepProgram::Reference { graph: training_graph(forward, opt, width_mult).graph },
            Executor::Compiled => {
                let target = Target::Training { opt: opt.clone(), width_mult };
                let compiled = compile(forward, &target, 1, &Options::default());
                // The CPU computes in float32 throughout, so every buffer holds float32s.
                let req = Request {
                    batch,
                    seq,
                    precision: Precision::uniform(DType::F32),
                    in_place: in_place_updates(&compiled.graph),
                    forward_end: Some(0),
                };
                let program = plan(&compiled.graph, &req)?;
                StepProgram::Compiled { graph: compiled.graph, program }
            }
        })
    }

    /// The parameters' names, in the order of the step's outputs.
    pub fn params(&self) -> Vec<String> {
        let g = match self {
            StepProgram::Compiled { graph, .. } | StepProgram::Reference { graph } => graph,
        };
        g.params.iter().map(|p| p.name.clone()).collect()
    }

    pub fn run(
        &self,
        params: &HashMap<String, Tensor<f32>>,
        inputs: &HashMap<String, Tensor<f32>>,
    ) -> Result<Vec<Tensor<f32>>, RunError> {
        match self {
            StepProgram::Compiled { graph, program } => crate::cpu::run(graph, program, params, inputs),
            StepProgram::Reference { graph } => reference::run(graph, params, inputs),
        }
    }
}
