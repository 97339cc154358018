//! Data parallelism on simulated replicas: each runs the data-parallel training step on its
//! rows of the batch, and every replica's loss, gradient norm and updated weights and
//! moments equal the single-process step on the whole batch — with clipping active, at 2
//! and 4 replicas, on a hybrid with attention, Mamba-2 and an MLP — and a NaN on one
//! replica is every replica's.

mod common;

use common::{forward, inputs, weights};
use hyb_compiler::ir::Op;
use hyb_compiler::ops::Prim;
use hyb_compiler::reference::{run, run_ranks, Tensor};
use hyb_compiler::training::{data_parallel_training_graph, training_graph, zero_training_graph, AdamW};
use std::collections::HashMap;

const MODEL: &str = r#"
import std.layers

model tiny_falcon {
    vocab = 37
    d = 16
    layers = pattern("H{2}", H = falcon_h1_layer)
    heads = 2
    kv_heads = 1
    head_dim = 8
    ssm_heads = 2
    ssm_head_dim = 8
    d_state = 4
    chunk = 4
    d_ff = 24
}
"#;

/// Rows `rank·b/n ..` of every `[B, T]` input; the rest (scalars, moments) as they are.
fn rows_of(all: &HashMap<String, Tensor<f64>>, b: usize, rank: usize, replicas: usize) -> HashMap<String, Tensor<f64>> {
    let per = b / replicas;
    all.iter()
        .map(|(name, t)| {
            let batched = ["ids", "targets", "loss_weights"].contains(&name.as_str());
            let t = if batched {
                let row = t.shape[1];
                let data = t.data[rank * per * row..(rank + 1) * per * row].to_vec();
                Tensor::new(vec![per, row], data)
            } else {
                t.clone()
            };
            (name.clone(), t)
        })
        .collect()
}

#[test]
fn replicas_on_their_rows_update_as_one_process_on_the_batch() {
    let g = forward(MODEL);
    let w = weights(&g, 11);
    let (b, t) = (4, 6);
    let x = inputs(&w, b, t, 37);
    // A clip well below the gradient's norm, so the norm must be the whole batch's.
    let opt = AdamW { clip: Some(0.05), ..AdamW::default() };
    let want = run(&training_graph(&g, &opt, 1.0).graph, &w, &x).unwrap();
    let dp = data_parallel_training_graph(&g, &opt, 1.0).graph;
    // The model's gradients (well under a bucket) cross the replicas in one exchange, the
    // loss in another.
    let exchanges = dp.nodes.iter().filter(|n| matches!(n.op, Op::Prim(Prim::DataAllReduce(_)))).count();
    assert_eq!(exchanges, 2, "{} parameters", dp.params.len());
    for replicas in [2, 4] {
        let rows: Vec<_> = (0..replicas).map(|r| rows_of(&x, b, r, replicas)).collect();
        let params = vec![&w; replicas];
        let got = run_ranks(&dp, &params, &rows.iter().collect::<Vec<_>>()).unwrap();
        for (r, outs) in got.iter().enumerate() {
            for (k, (a, e)) in outs.iter().zip(&want).enumerate() {
                let scale = e.data.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
                let err = a.data.iter().zip(&e.data).fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
                assert!(err <= 1e-12 * scale, "{replicas} replicas, rank {r}, output {k}: |Δ| {err:e}");
            }
        }
    }
    // A non-finite value on one replica reaches every replica's loss and norm, so all skip
    // the step together.
    let mut rows: Vec<_> = (0..2).map(|r| rows_of(&x, b, r, 2)).collect();
    rows[1].get_mut("loss_weights").unwrap().data[3] = f64::NAN;
    let got = run_ranks(&dp, &[&w, &w], &rows.iter().collect::<Vec<_>>()).unwrap();
    for (r, outs) in got.iter().enumerate() {
        assert!(outs[0].data[0].is_nan() && outs[1].data[0].is_nan(), "rank {r} sees the other's NaN");
        // ...and keeps every weight and moment exactly as it was, NaN-free.
        for (p, spec) in dp.params.iter().enumerate() {
            let m = format!("m.{}", spec.name);
            let v = format!("v.{}", spec.name);
            for (k, old) in [&w[&spec.name], &rows[r][&m], &rows[r][&v]].into_iter().enumerate() {
                assert_eq!(outs[2 + 3 * p + k].data, old.data, "rank {r}, {} output {k}", spec.name);
            }
        }
    }
    // One replica's step alone is the step on its rows: the sum over replicas matters.
    let alone = run(&dp, &w, &rows_of(&x, b, 0, 2)).unwrap();
    assert!((alone[0].data[0] - want[0].data[0]).abs() > 1e-6, "the loss is of the whole batch");
}

/// ZeRO-1: each replica updates its run of every parameter with its run of the moments,
/// and every replica ends with the single-process step's weights, loss and norm, its
/// moments' runs making up the whole moments — at 2 and 3 replicas (3 divides no
/// parameter here, so every run is padded).
#[test]
fn zero_replicas_hold_runs_of_the_moments_and_update_as_one_process() {
    let g = forward(MODEL);
    let w = weights(&g, 11);
    let (b, t) = (6, 6);
    let x = inputs(&w, b, t, 37);
    let opt = AdamW { clip: Some(0.05), ..AdamW::default() };
    let plain = training_graph(&g, &opt, 1.0);
    let want = run(&plain.graph, &w, &x).unwrap();
    for replicas in [2, 3] {
        let zero = zero_training_graph(&g, &opt, 1.0, replicas);
        let rows: Vec<_> = (0..replicas).map(|r| rows_of(&x, b, r, replicas)).collect();
        // Each replica's inputs carry its runs of the moments.
        let rows: Vec<_> = rows
            .into_iter()
            .enumerate()
            .map(|(r, mut xs)| {
                for spec in &zero.graph.params {
                    let shard = spec.moments.as_ref().expect("every parameter's moments are partitioned");
                    for key in [format!("m.{}", spec.name), format!("v.{}", spec.name)] {
                        let full = &xs[&key];
                        let local = shard.local(&full.data, r);
                        xs.insert(key, Tensor::new(vec![local.len()], local));
                    }
                }
                xs
            })
            .collect();
        let got = run_ranks(&zero.graph, &vec![&w; replicas], &rows.iter().collect::<Vec<_>>()).unwrap();
        let close = |a: &[f64], e: &[f64], what: &str| {
            assert_eq!(a.len(), e.len(), "{what}");
            let scale = e.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
            let err = a.iter().zip(e).fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
            assert!(err <= 1e-12 * scale, "{replicas} replicas, {what}: |Δ| {err:e}");
        };
        for (r, outs) in got.iter().enumerate() {
            close(&outs[0].data, &want[0].data, &format!("rank {r} loss"));
            close(&outs[1].data, &want[1].data, &format!("rank {r} norm"));
        }
        for (k, spec) in zero.graph.params.iter().enumerate() {
            let shard = spec.moments.as_ref().unwrap();
            let elements = spec.shape.iter().product();
            for (r, outs) in got.iter().enumerate() {
                assert_eq!(outs[2 + 3 * k].shape, spec.shape, "rank {r} holds all of {}", spec.name);
                close(&outs[2 + 3 * k].data, &want[2 + 3 * k].data, &format!("rank {r} {}", spec.name));
            }
            for j in [1, 2] {
                let runs: Vec<Vec<f64>> = got.iter().map(|outs| outs[2 + 3 * k + j].data.clone()).collect();
                assert!(runs.iter().all(|run| run.len() == shard.run(elements)));
                close(
                    &shard.gather(&runs, elements),
                    &want[2 + 3 * k + j].data,
                    &format!("moment {j} of {}", spec.name),
                );
            }
        }
    }
}

/// A step that keeps its state on the device (a GPU's) sees its updates only where they
/// are written in place: every updated weight and moment of the ZeRO-1 step — whose
/// weights are gathered, padded runs reshaped back — is planned into the buffer of the leaf
/// it replaces, as the replicated step's are, and in the leaf's precision.
#[test]
fn zero_updates_are_planned_in_place() {
    use hyb_compiler::pipeline::{compile, plan_with, DataParallel, Target};
    use hyb_compiler::plan::Precision;
    use hyb_compiler::rewrite::Options;
    use hyb_compiler::training::in_place_updates;
    let g = forward(MODEL);
    for data_parallel in [DataParallel::Replicated, DataParallel::Zero1(3)] {
        let target = Target::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel };
        let compiled = compile(&g, &target, 1, &Options::default());
        let e = plan_with(&compiled, &target, 2, 8, Precision::default(), &[]).unwrap();
        let updates = in_place_updates(&e.graph);
        assert_eq!(updates.len(), 3 * e.graph.params.len());
        for (output, leaf) in updates {
            let leaf_buffer = e.program.buffers.iter().position(|b| b.node == leaf).unwrap();
            let what = match &e.graph.nodes[leaf].op {
                Op::Param(p) => e.graph.params[*p].name.clone(),
                Op::Input(name) => name.clone(),
                _ => unreachable!(),
            };
            assert_eq!(
                e.program.outputs[output].buffer, leaf_buffer,
                "{data_parallel:?}: {what} is not updated in place"
            );
        }
        // In mixed precision the new weights reach their float32 leaves unrounded: every
        // launch on the way (the update of a run, its all-gather) writes float32.
        for l in &e.program.launches {
            if let Op::Prim(Prim::DataAllGather(_)) = &e.graph.nodes[l.node].op {
                let input =
                    e.program.launches.iter().rev().find(|w| w.outputs.iter().any(|o| o.buffer == l.inputs[0].buffer));
                for v in l.outputs.iter().chain(&l.inputs).chain(input.iter().flat_map(|w| &w.outputs)) {
                    assert_eq!(
                        v.dtype,
                        hyb_dsl::value::DType::F32,
                        "{data_parallel:?}: a gathered weight in {:?}",
                        v.dtype
                    );
                }
            }
        }
    }
}

/// The replicas' exchanges run on a stream of their own, beside the backward pass: each
/// gradient exchange starts before the pass ends, nothing between it and the launch that
/// waits for it touches what it writes or overwrites what it reads, and no buffer live in
/// between shares its memory (alone and with tensor parallelism, where ZeRO-1 sums some
/// gradients in buckets and reduce-scatters others). In mixed precision what they sum is float32 all the way
/// from the backward pass, and ZeRO-1's update reads the master weights, not their copies.
#[test]
fn exchanges_overlap_the_backward_pass_on_memory_of_their_own() {
    use hyb_compiler::pipeline::{compile, plan_with, DataParallel, Target};
    use hyb_compiler::plan::{LaunchKind, Precision, Role, Stream};
    use hyb_compiler::rewrite::Options;
    use hyb_dsl::value::DType;
    // Wide enough for several 25 MiB buckets.
    let wide =
        MODEL.replace("vocab = 37", "vocab = 16384").replace("d = 16", "d = 512").replace("d_ff = 24", "d_ff = 2048");
    let wide: &'static str = Box::leak(wide.into_boxed_str());
    let runs =
        [(wide, DataParallel::Replicated, 1), (MODEL, DataParallel::Zero1(2), 1), (MODEL, DataParallel::Zero1(2), 2)];
    for (model, data_parallel, ranks) in runs {
        let g = forward(model);
        let target = Target::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel };
        let compiled = compile(&g, &target, ranks, &Options::default());
        let e = plan_with(&compiled, &target, 2, 8, Precision::default(), &[]).unwrap();
        let (launches, buffers) = (&e.program.launches, &e.program.buffers);
        let data_parallel = format!("{data_parallel:?} over tp {ranks}");
        let op = |i: usize| &e.graph.nodes[launches[i].node].op;
        let gradient_exchanges: Vec<usize> = (0..launches.len())
            .filter(|&i| matches!(op(i), Op::Prim(Prim::DataAllReduce(_) | Prim::DataReduceScatter(_))))
            .filter(|&i| buffers[launches[i].inputs[0].buffer].elements > 1)
            .collect();
        assert!(gradient_exchanges.len() >= 2, "{data_parallel:?}: {} gradient exchanges", gradient_exchanges.len());
        // Moved or not, every launch comes after whatever writes what it reads.
        for (q, l) in launches.iter().enumerate() {
            for v in l.inputs.iter().filter(|v| !buffers[v.buffer].persistent()) {
                let late = (q + 1..launches.len()).find(|&w| launches[w].outputs.iter().any(|o| o.buffer == v.buffer));
                assert!(
                    late.is_none(),
                    "{data_parallel:?}: launch {q} reads buffer {} before launch {late:?} writes it",
                    v.buffer
                );
            }
        }
        let last_gemm = (0..launches.len()).rev().find(|&i| launches[i].kind == LaunchKind::Gemm).unwrap();
        assert!(gradient_exchanges[0] < last_gemm, "{data_parallel:?}: the first exchange waits for the whole pass");
        for &p in &gradient_exchanges {
            let l = &launches[p];
            assert_eq!(l.stream, Stream::Exchange, "{data_parallel:?}: exchange {p} on the compute stream");
            for v in l.inputs.iter().chain(&l.outputs) {
                assert_eq!(v.dtype, DType::F32, "{data_parallel:?}: exchange {p} moves {:?}", v.dtype);
            }
            let join = (p + 1..launches.len()).find(|&q| launches[q].waits_for.is_some_and(|w| w >= p));
            let join = join.unwrap_or(launches.len());
            let ins: Vec<usize> = l.inputs.iter().map(|v| v.buffer).collect();
            let outs: Vec<usize> = l.outputs.iter().map(|v| v.buffer).collect();
            for (q, m) in launches.iter().enumerate().take(join).skip(p + 1) {
                assert!(
                    m.inputs.iter().chain(&m.outputs).all(|v| !outs.contains(&v.buffer))
                        && m.outputs.iter().all(|v| !ins.contains(&v.buffer)),
                    "{data_parallel:?}: launch {q} touches exchange {p}'s buffers before waiting for it"
                );
            }
            let mine = |b: usize| ins.contains(&b) || outs.contains(&b);
            for &x in ins.iter().chain(&outs) {
                let (a, z) = (buffers[x].offset, buffers[x].offset + buffers[x].bytes);
                assert!(
                    buffers[x].last >= join.min(launches.len() - 1),
                    "{data_parallel:?}: exchange {p} outlives its input"
                );
                for (b, other) in buffers.iter().enumerate().filter(|&(b, o)| !mine(b) && o.bytes > 0) {
                    let live = other.first <= join && other.last > p;
                    let apart = other.offset + other.bytes <= a || z <= other.offset;
                    assert!(!live || apart, "{data_parallel:?}: buffer {b} shares exchange {p}'s memory while it runs");
                }
            }
        }
        // ZeRO-1's runs of the weights come from the float32 masters.
        for l in launches.iter().filter(|l| matches!(&e.graph.nodes[l.node].op, Op::Prim(Prim::DataShard(_)))) {
            assert!(buffers[l.inputs[0].buffer].role != Role::WeightCopy && l.inputs[0].dtype == DType::F32);
        }
    }
}
