//! The plan stage: buffers never overlap while both are live, the reported peak is the most
//! bytes live at once, views copy nothing, and a training step updates its weights and
//! moments in place.

use hyb_compiler::ir::{Graph, Init, NodeId, Op, ParamSpec, TensorType};
use hyb_compiler::ops::{Binary, ReduceOp, Transpose, Unary};
use hyb_compiler::pipeline::{compile, plan, plan_with, DataParallel, Sizing, Target};
use hyb_compiler::plan::{self, Level, Precision, Program, Recompute, Request, Role};
use hyb_compiler::rewrite::{fuse::fuse, Options};
use hyb_compiler::training::AdamW;
use hyb_dsl::dim::Dim;
use hyb_dsl::inits;
use hyb_dsl::value::DType;
use proptest::prelude::*;

fn random_graph(ops: &[(u8, usize, usize)], rows: usize, cols: usize) -> Graph {
    let mut g = Graph::default();
    let param = |g: &mut Graph, shape: Vec<usize>| {
        g.params.push(ParamSpec {
            name: format!("p{}", g.params.len()),
            shape: shape.clone(),
            init: Init { name: "zeros".into(), args: vec![] },
            role: inits::Role::Hidden,
            shard: None,
            moments: None,
        });
        let ty = TensorType { shape: shape.iter().map(|&d| Dim::constant(d as i64)).collect(), dtype: DType::F32 };
        g.add(Op::Param(g.params.len() - 1), vec![], ty)
    };
    let mut values: Vec<NodeId> = vec![param(&mut g, vec![rows, cols]), param(&mut g, vec![rows, cols])];
    for &(kind, i, j) in ops {
        let (a, b) = (values[i % values.len()], values[j % values.len()]);
        let y = match kind % 6 {
            0 => g.unary(Unary::Tanh, a),
            1 => g.binary(Binary::Mul, a, b),
            2 => {
                let r = g.reduce(ReduceOp::Max, a, -1, true);
                g.binary(Binary::Sub, b, r)
            }
            3 => {
                let w = param(&mut g, vec![cols, cols]);
                g.matmul(a, w, false, true)
            }
            4 => {
                let t = g.apply(Transpose { dim0: 0, dim1: 1 }, vec![a]);
                let e = g.unary(Unary::Exp, t);
                g.apply(Transpose { dim0: 0, dim1: 1 }, vec![e])
            }
            _ => g.binary(Binary::Add, a, b),
        };
        values.push(y);
    }
    let n = values.len();
    g.outputs = vec![values[n - 1], values[n / 2]];
    g
}

fn request(batch: usize, seq: usize) -> Request {
    Request { batch, seq, precision: Default::default(), in_place: vec![], forward_end: None }
}

/// The most bytes live at any launch, counted buffer by buffer.
fn max_live(p: &Program) -> usize {
    (0..p.launches.len().max(1))
        .map(|t| p.buffers.iter().filter(|b| b.first <= t && t <= b.last).map(|b| b.bytes).sum::<usize>())
        .max()
        .unwrap_or(0)
}

fn assert_no_overlap(p: &Program) {
    for (i, a) in p.buffers.iter().enumerate() {
        for b in &p.buffers[i + 1..] {
            let live_together = a.first <= b.last && b.first <= a.last;
            let share_bytes = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
            assert!(!(live_together && share_bytes && a.bytes > 0 && b.bytes > 0), "{a:?} overlaps {b:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn live_buffers_never_overlap_and_the_peak_is_the_most_live_bytes(
        ops in prop::collection::vec((0..6u8, 0..40usize, 0..40usize), 1..25),
        rows in 1..5usize, cols in 1..6usize,
    ) {
        let g = fuse(&random_graph(&ops, rows, cols));
        let p = plan::plan(&g, &request(1, 1)).unwrap();
        assert_no_overlap(&p);
        prop_assert_eq!(p.memory.peak_bytes, max_live(&p));
        prop_assert!(p.memory.arena_bytes >= p.memory.peak_bytes);
        prop_assert_eq!(p.memory.peak.total(), p.memory.peak_bytes);
    }
}

const TINY: &str = "import std.layers\n\nmodel tiny {\n    vocab = 32\n    d = 16\n    layers = pattern(\"H{2}\", H = falcon_h1_layer)\n    heads = 2\n    kv_heads = 1\n    ssm_heads = 2\n    ssm_head_dim = 8\n    d_state = 4\n    chunk = 4\n    d_ff = 32\n}\n";

mod common;

#[test]
fn a_training_step_updates_in_place_and_views_copy_nothing() {
    let forward = common::forward(TINY);
    let target = Target::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel: DataParallel::Alone };
    for ranks in [1, 2] {
        let compiled = compile(&forward, &target, ranks, &Options::default());
        let p = plan(&compiled, &target, &Sizing::new(2, 8)).unwrap().program;
        let g = &compiled.graph;
        assert_no_overlap(&p);
        assert_eq!(p.memory.peak_bytes, max_live(&p));
        // The new weight and moments of every parameter are its own buffers.
        for (param, spec) in g.params.iter().enumerate() {
            let w = g.param_node(param).unwrap();
            let weight = p.buffers.iter().position(|b| b.node == w).unwrap();
            assert_eq!(p.outputs[2 + 3 * param].buffer, weight, "{} is updated in place", spec.name);
            for (k, moment) in ["m", "v"].iter().enumerate() {
                let buffer = p.outputs[3 + 3 * param + k].buffer;
                assert_eq!(p.buffers[buffer].role, Role::Optimizer, "{moment}.{}", spec.name);
            }
        }
        // Views read their source's buffer: no buffer belongs to a view node.
        for b in &p.buffers {
            let is_view = matches!(&g.nodes[b.node].op, Op::Prim(prim) if !prim.moves_data());
            assert!(!is_view || p.launches.iter().any(|l| l.node == b.node), "a view got a buffer without a copy");
        }
        let count = |role| p.buffers.iter().filter(|b| b.role == role).count();
        assert_eq!(count(Role::Weight), g.params.len());
        // Every update reads its parameter's gradient (merged GEMMs' gradients are slices of
        // one buffer).
        let updates = p.launches.iter().filter(|l| l.outputs.iter().any(|o| p.buffers[o.buffer].role == Role::Weight));
        assert_eq!(updates.clone().count(), g.params.len());
        for l in updates {
            assert!(l.inputs.iter().any(|v| p.buffers[v.buffer].role == Role::Gradient), "{:?}", l.kind);
        }
        assert!(count(Role::Saved) > 0, "the backward pass reads forward values");
        // Master weights, moments and gradients in f32, activations and weight copies in
        // bf16, statistics (a norm's reciprocal, the loss) in f32 though small.
        let largest_saved = p.buffers.iter().filter(|b| b.role == Role::Saved).map(|b| b.elements).max().unwrap();
        for b in &p.buffers {
            match b.role {
                Role::Weight | Role::Optimizer | Role::Gradient => assert_eq!(b.dtype, DType::F32),
                Role::WeightCopy => assert_eq!(b.dtype, DType::BF16),
                Role::Saved if b.elements == largest_saved => assert_eq!(b.dtype, DType::BF16),
                _ => {}
            }
        }
        assert!(p.buffers.iter().any(|b| b.role == Role::Saved && b.dtype == DType::F32), "statistics are kept in f32");
        for (what, v) in [("loss", &p.outputs[0]), ("gradient norm", &p.outputs[1])] {
            assert_eq!(v.dtype, DType::F32, "the {what} is a statistic");
        }
        // Each weight's copy is made once, before its first reader, and only its update
        // reads the master weights.
        assert_eq!(count(Role::WeightCopy), g.params.len());
        let converts = p.launches.iter().filter(|l| l.kind == plan::LaunchKind::Convert).count();
        assert_eq!(converts, g.params.len());
        for (t, l) in p.launches.iter().enumerate() {
            for v in &l.inputs {
                let b = &p.buffers[v.buffer];
                if b.role == Role::Weight {
                    assert!(l.outputs.iter().any(|o| o.buffer == v.buffer) || l.kind == plan::LaunchKind::Convert);
                }
                if b.role == Role::WeightCopy {
                    assert!(b.first < t, "a copy is made before it is read");
                }
            }
            for v in l.inputs.iter().chain(&l.outputs) {
                assert_eq!(v.dtype, p.buffers[v.buffer].dtype, "a view says its buffer's type");
            }
        }
        // In one type throughout, nothing is copied.
        let uniform = plan_with(&compiled, &target, 2, 8, Precision::uniform(DType::F32), &[]).unwrap().program;
        assert!(uniform.buffers.iter().all(|b| b.dtype == DType::F32 && b.role != Role::WeightCopy));
        assert_eq!(uniform.memory.weight_copies, 0);
    }
}

#[test]
fn sizes_scale_with_batch_and_sequence() {
    let forward = common::forward(TINY);
    let target = Target::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel: DataParallel::Alone };
    let compiled = compile(&forward, &target, 1, &Options::default());
    let small = plan(&compiled, &target, &Sizing::new(1, 8)).unwrap().program;
    let large = plan(&compiled, &target, &Sizing::new(4, 8)).unwrap().program;
    // The master weights and moments do not grow (the bf16 copies live at the peak may
    // differ: the peak is at another launch).
    let held = |p: &Program, role: Role| p.buffers.iter().filter(|b| b.role == role).map(|b| b.bytes).sum::<usize>();
    for role in [Role::Weight, Role::Optimizer] {
        assert_eq!(held(&small, role), held(&large, role), "{role:?}");
    }
    assert_eq!(small.memory.peak.optimizer, large.memory.peak.optimizer);
    assert!(large.memory.peak.saved > 3 * small.memory.peak.saved, "saved activations grow with the batch");
}

/// Bytes kept for backward at the peak, and the arena, of the TINY step at `levels`.
fn kept(compiled: &hyb_compiler::pipeline::Compiled, target: &Target, level: Level) -> (usize, usize) {
    let layers = hyb_compiler::plan::recompute::layers(&compiled.graph);
    let e = plan_with(compiled, target, 4, 16, Precision::default(), &vec![level; layers]).unwrap();
    assert_no_overlap(&e.program);
    assert_eq!(e.program.memory.peak_bytes, max_live(&e.program));
    let saved = e.program.buffers.iter().filter(|b| b.role == Role::Saved).map(|b| b.bytes).sum();
    (saved, e.program.memory.arena_bytes)
}

#[test]
fn recompute_keeps_less_for_backward() {
    let forward = common::forward(TINY);
    let target = Target::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel: DataParallel::Alone };
    let compiled = compile(&forward, &target, 1, &Options::default());
    let (none, none_arena) = kept(&compiled, &target, Level::Keep);
    let (selective, selective_arena) = kept(&compiled, &target, Level::Selective);
    let (full, full_arena) = kept(&compiled, &target, Level::Full);
    assert!(selective < none, "selective recompute keeps less: {selective} vs {none}");
    assert!(full < selective, "full recompute keeps less still: {full} vs {selective}");
    assert!(selective_arena <= none_arena && full_arena < none_arena, "{none_arena} {selective_arena} {full_arena}");
}

#[test]
fn auto_recompute_takes_the_least_that_fits() {
    let forward = common::forward(TINY);
    let target = Target::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel: DataParallel::Alone };
    let compiled = compile(&forward, &target, 1, &Options::default());
    let (_, none) = kept(&compiled, &target, Level::Keep);
    let (_, full) = kept(&compiled, &target, Level::Full);
    let auto = |budget: usize| {
        let sizing = Sizing { batch: 4, seq: 16, recompute: Recompute::Auto, budget: Some(budget as u64) };
        plan(&compiled, &target, &sizing).unwrap().program
    };
    assert!(auto(none).recompute.iter().all(|&l| l == Level::Keep), "nothing recomputed when everything fits");
    let tight = auto(full);
    assert!(tight.memory.arena_bytes <= full);
    let between = auto((none + full) / 2);
    assert!(between.memory.arena_bytes <= (none + full) / 2);
    let recomputed = |p: &Program| p.recompute.iter().filter(|&&l| l != Level::Keep).count();
    assert!(recomputed(&between) >= 1, "some recompute is needed between the two");
    // Without a budget, auto recomputes nothing.
    let unbounded = plan(&compiled, &target, &Sizing::new(4, 16)).unwrap().program;
    assert!(unbounded.recompute.iter().all(|&l| l == Level::Keep));
}

#[test]
fn a_plan_that_does_not_fit_is_refused_with_what_fits() {
    use hyb_compiler::fit::{fit, FitError, Request as Fit};
    let forward = common::forward(TINY);
    let target = Target::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel: DataParallel::Alone };
    let options = Options::default();
    let compiled = compile(&forward, &target, 1, &options);
    let (_, full) = kept(&compiled, &target, Level::Full);
    let budget = full - 1;
    let sizing = Sizing { batch: 4, seq: 16, recompute: Recompute::None, budget: Some(budget as u64) };
    let req = Fit { forward: &forward, compiled: &compiled, target: &target, tp: 1, options: &options, sizing };
    let Err(FitError::DoesNotFit(refusal)) = fit(&req) else { panic!("a plan above the budget is refused") };
    assert!(refusal.memory.arena_bytes > budget);
    assert!(!refusal.fixes.is_empty(), "a smaller batch fits: {refusal}");
    for fix in &refusal.fixes {
        assert!(fix.arena_bytes <= budget, "{}", fix.flag);
    }
    assert!(refusal.fixes.iter().any(|f| f.flag == "--batch 2" || f.flag == "--batch 1"), "{refusal}");
    let text = refusal.to_string();
    assert!(text.contains("activations kept for backward") && text.contains("these fit"), "{text}");
}

/// A parallel hybrid's attention ∥ Mamba outputs, computed only to be joined for the
/// shared projection, are written where they lie in the joined buffer: the concat is not
/// launched.
#[test]
fn pieces_computed_only_for_a_concat_are_written_in_place() {
    use hyb_compiler::ir::KernelKind;
    use hyb_compiler::ops::{Class, Prim, Primitive};
    let forward = common::forward(TINY);
    let target = Target::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel: DataParallel::Alone };
    let compiled = compile(&forward, &target, 1, &Options::default());
    let p = plan(&compiled, &target, &Sizing::new(2, 8)).unwrap().program;
    let g = &compiled.graph;
    let readers = |x: NodeId| g.nodes.iter().filter(|n| n.inputs.contains(&x)).count();
    let generated = |x: NodeId| match &g.nodes[x].op {
        Op::Kernel(k) => k.kind == KernelKind::Fused,
        Op::Prim(prim) => prim.class() == Class::Elementwise,
        _ => false,
    };
    let mut joined = 0;
    for (c, n) in g.nodes.iter().enumerate() {
        if !matches!(&n.op, Op::Prim(Prim::Concat(_))) || !n.inputs.iter().all(|&x| readers(x) == 1 && generated(x)) {
            continue;
        }
        assert!(p.launches.iter().all(|l| l.node != c), "concat {c} is launched");
        let buffer = p.buffers.iter().position(|b| b.node == c).expect("the concat's buffer");
        for &x in &n.inputs {
            let l = p.launches.iter().find(|l| l.node == x).unwrap();
            assert_eq!(l.outputs[0].buffer, buffer, "piece {x} of concat {c} writes its own buffer");
        }
        joined += 1;
    }
    assert!(joined > 0, "the hybrid's outputs are joined for the shared projection");
    assert_no_overlap(&p);
}

/// The addresses of a strided view's elements in row-major order.
fn addresses(shape: &[usize], strides: &[isize]) -> Vec<isize> {
    let count: usize = shape.iter().product();
    (0..count)
        .map(|mut i| {
            let mut at = 0;
            for k in (0..shape.len()).rev() {
                at += (i % shape[k]) as isize * strides[k];
                i /= shape[k];
            }
            at
        })
        .collect()
}

#[test]
fn strided_views_reshape_without_copies_where_their_axes_allow() {
    use hyb_compiler::plan::reshaped_strides;
    // A block of a concat's rows split into heads, and its rows merged.
    let (row, t) = (4120isize, 3usize);
    let block = [t as isize * row, row, 1];
    assert_eq!(reshaped_strides(&[2, t, 512], &block, &[2, t, 8, 64]), Some(vec![t as isize * row, row, 64, 1]));
    assert_eq!(reshaped_strides(&[2, t, 8, 64], &[t as isize * row, row, 64, 1], &[2, t, 512]), Some(block.to_vec()));
    assert_eq!(reshaped_strides(&[2, t, 512], &block, &[2 * t, 512]), Some(vec![row, 1]));
    // Heads transposed behind time do not merge with the head dimension.
    assert_eq!(reshaped_strides(&[2, t, 8, 64], &[8 * t as isize * 64, 64, t as isize * 64, 1], &[2, t, 512]), None);
    // Where they fold, the view reads the elements a copy would, in order; where the axes
    // to merge are not one stride apart, they do not.
    for (shape, strides, to, folds) in [
        (vec![2, 3, 4], vec![40, 12, 2], vec![6, 4], false),
        (vec![2, 3, 4], vec![36, 12, 2], vec![6, 4], true),
        (vec![2, 3, 4], vec![40, 12, 2], vec![2, 3, 2, 2], true),
        (vec![4, 1, 6], vec![7, 99, 1], vec![2, 2, 3, 2, 1], true),
        (vec![5, 6], vec![1, 5], vec![30], false),
        (vec![3, 4], vec![8, 1], vec![12], false),
    ] {
        let folded = reshaped_strides(&shape, &strides, &to);
        assert_eq!(folded.is_some(), folds, "{shape:?} {strides:?} → {to:?}");
        if let Some(s) = folded {
            assert_eq!(addresses(&to, &s), addresses(&shape, &strides), "{shape:?} {strides:?} → {to:?}");
        }
    }
}

/// Rematerialisation: a cheap forward value that only pointwise backward nodes read is
/// computed again inside them, so the step computes exactly what it did, keeps fewer bytes
/// for backward, moves fewer bytes and launches no more kernels.
#[test]
fn cheap_values_only_pointwise_gradients_read_are_computed_again_not_kept() {
    use hyb_compiler::pipeline::plan_graph;
    use hyb_compiler::reference::run;
    use hyb_compiler::rewrite::{remat::rematerialise, saturate};
    let forward = common::forward(TINY);
    let step = hyb_compiler::training::training_graph(&forward, &AdamW::default(), 1.0).graph;
    let (step, _) = saturate(&step, &Options::default());
    let again = rematerialise(&step, 0);
    assert!(again.nodes.len() > step.nodes.len(), "some value is computed again");
    let (kept, recomputed) = (fuse(&step), fuse(&again));
    let w = common::weights(&forward, 3);
    let x = common::inputs(&w, 2, 8, 32);
    let (want, got) = (run(&kept, &w, &x).unwrap(), run(&recomputed, &w, &x).unwrap());
    for (k, (a, b)) in want.iter().zip(&got).enumerate() {
        assert_eq!(a.data, b.data, "output {k} is the same, bit for bit");
    }
    let planned = |g: &Graph| plan_graph(g, true, 4, 16, Precision::default()).unwrap();
    let (before, after) = (planned(&kept), planned(&recomputed));
    assert_no_overlap(&after);
    let saved = |p: &Program| p.buffers.iter().filter(|b| b.role == Role::Saved).map(|b| b.bytes).sum::<usize>();
    assert!(saved(&after) < saved(&before), "kept for backward: {} vs {}", saved(&after), saved(&before));
    assert!(after.memory.peak_bytes < before.memory.peak_bytes);
    assert!(after.launches.len() <= before.launches.len(), "{} vs {}", after.launches.len(), before.launches.len());
}
