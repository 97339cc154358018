//! A tensor-parallel rank's view of a training step: the parts of the whole parameters and
//! moments its program takes (each parameter's `ParamShard`), and the whole updated state
//! from every rank's updated parts. The trainer keeps the state whole on every rank (on a
//! GPU, which holds the rank's parts between steps, it is gathered whenever it is read), so
//! its checkpoints are a single process's and resume on any number of ranks.

use super::{TrainError, Values};
use crate::dist::TcpGroup;
use hyb_compiler::ir::{Graph, ParamSpec};
use hyb_compiler::reference::Tensor;

fn f64_of(t: &Tensor<f32>) -> Tensor<f64> {
    Tensor::new(t.shape.clone(), t.data.iter().map(|&x| x as f64).collect())
}

fn f32_of(t: &Tensor<f64>) -> Tensor<f32> {
    Tensor::new(t.shape.clone(), t.data.iter().map(|&x| x as f32).collect())
}

/// Rank `rank`'s part of the whole tensor `full` of parameter `spec` (all of it if whole).
fn part(spec: &ParamSpec, full: &Tensor<f32>, rank: usize) -> Tensor<f32> {
    match &spec.shard {
        Some(shard) => f32_of(&shard.local(&f64_of(full), rank)),
        None => full.clone(),
    }
}

/// The step's parameters and inputs for rank `rank` of the sharded `graph`, from the whole
/// ones: parameters and moments (`m.NAME`, `v.NAME`) cut to the rank's parts, the rest as
/// they are.
pub fn local_step(graph: &Graph, rank: usize, params: &Values, inputs: &Values) -> (Values, Values) {
    let spec_of = |name: &str| graph.params.iter().find(|p| p.name == name);
    let local_params = params
        .iter()
        .map(|(name, t)| (name.clone(), spec_of(name).map_or_else(|| t.clone(), |spec| part(spec, t, rank))))
        .collect();
    let local_inputs = inputs
        .iter()
        .map(|(name, t)| {
            let moment = name.strip_prefix("m.").or_else(|| name.strip_prefix("v."));
            let t = match moment.and_then(spec_of) {
                Some(spec) => part(spec, t, rank),
                None => t.clone(),
            };
            (name.clone(), t)
        })
        .collect();
    (local_params, local_inputs)
}

/// Each parameter's value and moments (three tensors per parameter, in the graph's order)
/// gathered whole from every rank's parts.
pub fn gather_state(
    graph: &Graph,
    group: &mut TcpGroup,
    parts: Vec<Tensor<f32>>,
) -> Result<Vec<Tensor<f32>>, TrainError> {
    let mut it = parts.into_iter();
    let mut whole = Vec::with_capacity(3 * graph.params.len());
    for spec in &graph.params {
        for _ in 0..3 {
            let local = it.next().expect("a value and two moments per parameter");
            let Some(shard) = &spec.shard else {
                whole.push(local);
                continue;
            };
            let parts = group.all_gather(&local.data).map_err(super::collective_error)?;
            let parts: Vec<Tensor<f64>> =
                parts.into_iter().map(|p| f64_of(&Tensor::new(local.shape.clone(), p))).collect();
            whole.push(f32_of(&shard.gather(&parts)));
        }
    }
    Ok(whole)
}
