//! A ZeRO-1 replica's view of a training step: its runs of the moments of every
//! partitioned parameter ([`MomentShard`]), and the whole moments from every replica's
//! runs. As with tensor-parallel parts, the trainer keeps the state whole (gathered
//! whenever a GPU's is read), so checkpoints are a single process's and resume on any
//! number of replicas, with or without ZeRO.

use super::{TrainError, Values};
use crate::dist::TcpGroup;
use hyb_compiler::ir::Graph;
use hyb_compiler::reference::Tensor;

/// `inputs` with the moments (`m.NAME`, `v.NAME`) of every partitioned parameter of the
/// step `graph` cut to replica `rank`'s runs; the rest as they are.
pub fn local_moments(graph: &Graph, rank: usize, mut inputs: Values) -> Values {
    for spec in &graph.params {
        let Some(shard) = &spec.moments else { continue };
        for key in [format!("m.{}", spec.name), format!("v.{}", spec.name)] {
            if let Some(full) = inputs.get_mut(&key) {
                let run = shard.local(&full.data, rank);
                *full = Tensor::new(vec![run.len()], run);
            }
        }
    }
    inputs
}

/// Each parameter's value and moments (three tensors per parameter, in the graph's order)
/// with the partitioned moments gathered whole, in the parameter's shape.
pub fn gather_state(
    graph: &Graph,
    group: &mut TcpGroup,
    parts: Vec<Tensor<f32>>,
) -> Result<Vec<Tensor<f32>>, TrainError> {
    if graph.params.iter().all(|p| p.moments.is_none()) {
        return Ok(parts);
    }
    let mut it = parts.into_iter();
    let mut whole = Vec::with_capacity(3 * graph.params.len());
    for spec in &graph.params {
        whole.push(it.next().expect("a value per parameter"));
        for _ in 0..2 {
            let run = it.next().expect("two moments per parameter");
            let Some(shard) = &spec.moments else {
                whole.push(run);
                continue;
            };
            let runs = group.all_gather(&run.data).map_err(super::collective_error)?;
            let elements = spec.shape.iter().product();
            whole.push(Tensor::new(spec.shape.clone(), shard.gather(&runs, elements)));
        }
    }
    Ok(whole)
}
