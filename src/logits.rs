//! `hyb logits`: the forward pass, run as the compiled program (rewritten, fused, planned)
//! on the CPU executor, or through the reference interpreter on the unoptimised graph.

use anyhow::{bail, Context, Result};
use hyb_compiler::artifact::Artifact;
use hyb_compiler::codegen::cpu::Objects;
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::pipeline::{compile, plan_graph, Target};
use hyb_compiler::plan::{Precision, Program};
use hyb_compiler::reference::{self, Real, Tensor};
use hyb_compiler::rewrite::Options;
use hyb_dsl::trace::Trace;
use hyb_dsl::value::DType;
use hyb_runtime::cpu::objects::{artifact_then, DiskCache};
use hyb_runtime::weights::Weights;
use std::collections::HashMap;
use std::io::Write;

/// `--ids 1,2,3 --ids 4,5,6` → one row per sequence, all of one length.
pub fn parse_ids(values: &[String]) -> Result<Vec<Vec<u32>>> {
    let seqs = values
        .iter()
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().parse::<u32>().with_context(|| format!("`{s}` in --ids {v} is not a token id")))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    if seqs.iter().any(|s| s.len() != seqs[0].len()) {
        bail!("all --ids sequences must have the same length");
    }
    Ok(seqs)
}

/// Which executor runs a program (`hyb logits`, `hyb train`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    /// The compiled program on the CPU executor.
    Compiled,
    /// The reference interpreter on the unoptimised graph (the oracle).
    Reference,
}

/// Logits as `[batch][position][vocab]` in float64 (computed in `precision`).
pub fn run(
    trace: &Trace,
    weights: Weights,
    batch: &[Vec<u32>],
    precision: &str,
    executor: Executor,
) -> Result<Vec<Vec<Vec<f64>>>> {
    let (b, t) = (batch.len(), batch[0].len());
    let ids: Vec<f64> = batch.iter().flatten().map(|&i| i as f64).collect();
    let forward = elaborate(trace);
    let compiled = match executor {
        Executor::Compiled => Some(compile(&forward, &Target::Forward, 1, &Options::default())),
        Executor::Reference => None,
    };
    let dtype = if precision == "f32" { DType::F32 } else { DType::F64 };
    let program = match &compiled {
        Some(c) => Some((&c.graph, plan_graph(&c.graph, false, b, t, Precision::uniform(dtype))?)),
        None => None,
    };
    let graph = program.as_ref().map_or(&forward, |(g, _)| *g);
    let program = program.as_ref().map(|(_, p)| p);
    let cache = DiskCache::from_env();
    let out = match dtype {
        DType::F32 => eval::<f32>(graph, program, &cache, weights, b, t, &ids)?,
        _ => eval::<f64>(graph, program, &cache, weights, b, t, &ids)?,
    };
    let vocab = *out.shape.last().unwrap_or(&0);
    Ok(out.data.chunks(t * vocab).map(|seq| seq.chunks(vocab).map(<[f64]>::to_vec).collect()).collect())
}

/// Logits from a compiled forward-pass artifact, for the batch and sequence length it was
/// planned for. The CPU computes in one element type, so its buffers are placed again for
/// that type.
pub fn run_artifact(
    artifact: &Artifact,
    weights: Weights,
    batch: &[Vec<u32>],
    precision: &str,
) -> Result<Vec<Vec<Vec<f64>>>> {
    let c = &artifact.compiled;
    if c.training.is_some() {
        bail!("the artifact is a training step; compile the forward pass (`hyb compile --forward`) for logits");
    }
    if c.tp != 1 {
        bail!("the artifact is planned for {} tensor-parallel ranks; logits run on one", c.tp);
    }
    let (b, t) = (batch.len(), batch[0].len());
    if (b, t) != (c.batch, c.seq) {
        bail!(
            "the artifact is compiled for batch {} and sequence {}, not {b} × {t}: give that many ids",
            c.batch,
            c.seq
        );
    }
    let dtype = if precision == "f32" { DType::F32 } else { DType::F64 };
    let graph = &artifact.executable.graph;
    let program = plan_graph(graph, false, b, t, Precision::uniform(dtype))?;
    let cache = DiskCache::from_env();
    let objects = artifact_then(&artifact.objects, &cache);
    let ids: Vec<f64> = batch.iter().flatten().map(|&i| i as f64).collect();
    let out = match dtype {
        DType::F32 => eval::<f32>(graph, Some(&program), &objects, weights, b, t, &ids)?,
        _ => eval::<f64>(graph, Some(&program), &objects, weights, b, t, &ids)?,
    };
    let vocab = *out.shape.last().unwrap_or(&0);
    Ok(out.data.chunks(t * vocab).map(|seq| seq.chunks(vocab).map(<[f64]>::to_vec).collect()).collect())
}

/// Consumes the weights so that a large model is held once, in the interpreter's precision;
/// runs the planned program when there is one, its kernels' object code from `objects`.
fn eval<T: Real>(
    graph: &hyb_compiler::ir::Graph,
    program: Option<&Program>,
    objects: &dyn Objects,
    weights: Weights,
    b: usize,
    t: usize,
    ids: &[f64],
) -> Result<Tensor<f64>> {
    let params: HashMap<String, Tensor<T>> = weights
        .into_iter()
        .map(|(k, w)| {
            let t = Tensor::from_f64(w.tensor.shape, &w.tensor.data);
            (k, t)
        })
        .collect();
    let inputs = HashMap::from([("ids".to_string(), Tensor::<T>::from_f64(vec![b, t], ids))]);
    // In float32 the program runs as native code; float64 (parity checks) keeps the
    // reference semantics, which generated code does not compute in.
    let native = std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
    let mut out = match program {
        Some(p) if native => {
            let kernels = hyb_runtime::cpu::Kernels::prepare(graph, p, objects);
            hyb_runtime::cpu::run_with(graph, p, &kernels, &params, &inputs)?
        }
        Some(p) => hyb_runtime::cpu::run(graph, p, &params, &inputs)?,
        None => reference::run(graph, &params, &inputs)?,
    };
    let logits = out.remove(0);
    Ok(Tensor::new(logits.shape.clone(), logits.to_f64()))
}

pub fn write_json(w: &mut impl Write, logits: &[Vec<Vec<f64>>]) -> Result<()> {
    serde_json::to_writer(&mut *w, &serde_json::json!({ "logits": logits }))?;
    writeln!(w)?;
    Ok(())
}

pub fn write_text(w: &mut impl Write, logits: &[Vec<Vec<f64>>]) -> Result<()> {
    for (b, seq) in logits.iter().enumerate() {
        for (t, row) in seq.iter().enumerate() {
            let (best, _) = row
                .iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc });
            let values: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
            writeln!(w, "[{b}, {t}] argmax {best}: {}", values.join(" "))?;
        }
    }
    Ok(())
}
