//! The CPU executor runs the compiled program — sharded, rewritten, fused, planned into one
//! arena — and gives what the reference interpreter gives on the unoptimised graph: the
//! logits and a whole training step (loss, gradient norm, every updated weight and moment),
//! on 1, 2 and 4 simulated ranks.

use hyb_compiler::cost::Machine;
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::ir::{Graph, Op};
use hyb_compiler::ops::Prim;
use hyb_compiler::pipeline::{compile, Compiled, DataParallel, Target};
use hyb_compiler::plan::{self, Precision, Request};
use hyb_compiler::reference::{run, run_ranks, Real, Tensor};
use hyb_compiler::rewrite::Options;
use hyb_compiler::shard::rank_values;
use hyb_compiler::training::{in_place_updates, training_graph, AdamW};
use hyb_dsl::value::DType;
use hyb_runtime::cpu;
use std::collections::HashMap;

const MODEL: &str = r#"
import std.layers

model tiny {
    vocab = 64
    d = 32
    layers = pattern("H{2}", H = falcon_h1_layer)
    heads = 8
    kv_heads = 4
    head_dim = 4
    ssm_heads = 8
    ssm_head_dim = 4
    d_state = 4
    groups = 4
    chunk = 4
    d_ff = 48
    attention_bias = true
    mlp_bias = true
    mup embedding_multiplier = 1.5, lm_head_multiplier = 0.25, ssm_out_multiplier = 0.6
}
"#;

fn forward() -> Graph {
    graph_of(MODEL.to_string())
}

fn graph_of(text: String) -> Graph {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let checked = hyb_compiler::check::check_text("model.hyb", &text);
            assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
            elaborate(&checked.models[0].1.trace)
        })
        .unwrap()
        .join()
        .unwrap()
}

fn lcg(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

fn random(shape: &[usize], s: &mut u64, scale: f64, offset: f64) -> Tensor<f64> {
    Tensor::new(shape.to_vec(), (0..shape.iter().product()).map(|_| offset + scale * lcg(s)).collect())
}

/// Weights, and the inputs of a training step on a `[2, 8]` batch.
fn values(g: &Graph) -> (HashMap<String, Tensor<f64>>, HashMap<String, Tensor<f64>>) {
    values_at(g, 2, 8)
}

/// Weights, and the inputs of a training step on a `[batch, seq]` batch.
fn values_at(g: &Graph, batch: usize, seq: usize) -> (HashMap<String, Tensor<f64>>, HashMap<String, Tensor<f64>>) {
    let mut s = 3;
    let w: HashMap<_, _> = g.params.iter().map(|p| (p.name.clone(), random(&p.shape, &mut s, 0.3, 0.0))).collect();
    let vocab = g.params.iter().find(|p| p.name == "embed_tokens.weight").map_or(64, |p| p.shape[0]);
    let tokens = batch * seq;
    let ids =
        |k: usize| Tensor::new(vec![batch, seq], (0..tokens).map(|i| ((i * 29 + 7 * k) % vocab) as f64).collect());
    let mut x = HashMap::from([
        ("ids".to_string(), ids(1)),
        ("targets".to_string(), ids(2)),
        ("loss_weights".to_string(), Tensor::new(vec![batch, seq], vec![1.0 / tokens as f64; tokens])),
        ("lr".to_string(), Tensor::scalar(1e-2)),
        ("bias_correction1".to_string(), Tensor::scalar(0.1)),
        ("bias_correction2".to_string(), Tensor::scalar(0.05)),
    ]);
    for p in &g.params {
        for m in ["m.", "v."] {
            x.insert(format!("{m}{}", p.name), random(&p.shape, &mut s, 0.005, 0.01));
        }
    }
    (w, x)
}

fn cast<T: Real>(m: &HashMap<String, Tensor<f64>>) -> HashMap<String, Tensor<T>> {
    m.iter().map(|(k, t)| (k.clone(), Tensor::from_f64(t.shape.clone(), &t.data))).collect()
}

fn close(want: &Tensor<f64>, got: &[f64], tol: f64, what: &str) {
    assert_eq!(want.data.len(), got.len(), "{what}");
    let scale = want.data.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    let err = want.data.iter().zip(got).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= tol * scale, "{what}: max |Δ| {err:e} (max |x| {scale:e})");
}

/// The compiled program's outputs on each of `ranks` ranks, computed in element type `T`.
fn execute<T: Real>(
    c: &Compiled,
    target: &Target,
    ranks: usize,
    w: &HashMap<String, Tensor<f64>>,
    x: &HashMap<String, Tensor<f64>>,
    dtype: DType,
) -> Vec<Vec<Tensor<f64>>> {
    let training = matches!(target, Target::Training { .. });
    let req = Request {
        batch: 2,
        seq: 8,
        precision: Precision::uniform(dtype),
        in_place: if training { in_place_updates(&c.graph) } else { vec![] },
        forward_end: training.then_some(0),
    };
    let program = plan::plan(&c.graph, &req).unwrap();
    let ws: Vec<HashMap<String, Tensor<T>>> = (0..ranks).map(|r| cast(&rank_values(&c.graph, w, r))).collect();
    let xs: Vec<HashMap<String, Tensor<T>>> = (0..ranks).map(|r| cast(&rank_values(&c.graph, x, r))).collect();
    let out = cpu::run_ranks(&c.graph, &program, &ws.iter().collect::<Vec<_>>(), &xs.iter().collect::<Vec<_>>());
    let out = out.unwrap();
    out.into_iter().map(|rank| rank.into_iter().map(|t| Tensor::new(t.shape.clone(), t.to_f64())).collect()).collect()
}

fn check(ranks: usize) {
    check_graph(forward(), ranks);
}

fn check_graph(g: Graph, ranks: usize) {
    let (w, x) = values(&g);
    // Free communication: the planner splits whatever divides (vocabulary, sequence
    // parallelism), so every collective and shard runs.
    let machine = Machine { link_bw: f64::INFINITY, link_latency: 0.0, launch: 0.0, ..Machine::default() };
    let opts = Options { machine, ..Options::default() };
    // Forward pass: the logits.
    let want = run(&g, &w, &x).unwrap();
    let c = compile(&g, &Target::Forward, ranks, &opts);
    for got in execute::<f64>(&c, &Target::Forward, ranks, &w, &x, DType::F64) {
        close(&want[0], &got[0].data, 1e-10, &format!("logits, float64, {ranks} ranks"));
    }
    // In float32, against the reference interpreter in float32: of the unsharded graph,
    // or where BitNet quantisers are split, of the same program on simulated ranks (a
    // split sums in another order, and a last-bit difference may move a value across an
    // int8 or ternary level, as in any tensor-parallel BitNet; float64 above checks the
    // split exactly).
    let quantised = c.graph.nodes.iter().any(|n| match &n.op {
        Op::Prim(p) => matches!(p, Prim::ScaledInt8(_) | Prim::ScaledTernary(_)),
        Op::Kernel(k) => {
            k.body.nodes.iter().any(|b| matches!(b.op, Op::Prim(Prim::ScaledInt8(_) | Prim::ScaledTernary(_))))
        }
        _ => false,
    });
    let want32 = if quantised {
        let ws: Vec<HashMap<String, Tensor<f32>>> = (0..ranks).map(|r| cast(&rank_values(&c.graph, &w, r))).collect();
        let xs: Vec<HashMap<String, Tensor<f32>>> = (0..ranks).map(|r| cast(&rank_values(&c.graph, &x, r))).collect();
        run_ranks::<f32>(&c.graph, &ws.iter().collect::<Vec<_>>(), &xs.iter().collect::<Vec<_>>()).unwrap().remove(0)
    } else {
        run::<f32>(&g, &cast(&w), &cast(&x)).unwrap()
    };
    let want32 = Tensor::new(want32[0].shape.clone(), want32[0].to_f64());
    for got in execute::<f32>(&c, &Target::Forward, ranks, &w, &x, DType::F32) {
        close(&want32, &got[0].data, 1e-6, &format!("logits, float32, {ranks} ranks"));
    }
    // A training step: loss, gradient norm, every updated weight and moment (gathered).
    let opt = AdamW::default();
    let plain = training_graph(&g, &opt, 1.0);
    let want = run(&plain.graph, &w, &x).unwrap();
    let target = Target::Training { opt, width_mult: 1.0, data_parallel: DataParallel::Alone };
    let c = compile(&g, &target, ranks, &opts);
    if ranks > 1 {
        let shards = c.graph.nodes.iter().any(|n| matches!(n.op, Op::Prim(Prim::Shard(_))));
        assert!(shards || c.sharded.split.is_empty(), "a split program runs rank-dependent shards");
    }
    let got = execute::<f64>(&c, &target, ranks, &w, &x, DType::F64);
    close(&want[0], &got[0][0].data, 1e-10, "loss");
    close(&want[1], &got[0][1].data, 1e-10, "gradient norm");
    for (k, spec) in c.graph.params.iter().enumerate() {
        for j in 0..3 {
            let parts: Vec<Tensor<f64>> = got.iter().map(|r| r[2 + 3 * k + j].clone()).collect();
            let full = match &spec.shard {
                Some(s) => s.gather(&parts),
                None => parts[0].clone(),
            };
            let idx = 2 + 3 * plain.params.iter().position(|p| *p == spec.name).unwrap() + j;
            close(&want[idx], &full.data, 1e-9, &format!("{} output {j}, {ranks} ranks", spec.name));
        }
    }
}

#[test]
fn one_rank() {
    check(1);
}

#[test]
fn two_ranks() {
    check(2);
}

#[test]
fn four_ranks() {
    check(4);
}

/// Every example model, on one rank and two.
#[test]
fn every_example() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files.iter().filter(|p| p.extension().is_some_and(|x| x == "hyb")) {
        let text = std::fs::read_to_string(file).unwrap();
        for ranks in [1, 2] {
            check_graph(graph_of(text.clone()), ranks);
        }
    }
}

/// Recompute changes what is kept, never what is computed: with full or selective recompute
/// in every layer, or mixed, a training step gives bit for bit what keeping everything
/// gives, on one rank and two.
#[test]
fn recompute_gives_the_same_step() {
    use hyb_compiler::pipeline::plan_with;
    use hyb_compiler::plan::Level;
    let g = forward();
    let (w, x) = values(&g);
    let target = Target::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel: DataParallel::Alone };
    for ranks in [1, 2] {
        let c = compile(&g, &target, ranks, &Options::default());
        let layers = hyb_compiler::plan::recompute::layers(&c.graph);
        let ws: Vec<HashMap<String, Tensor<f32>>> = (0..ranks).map(|r| cast(&rank_values(&c.graph, &w, r))).collect();
        let xs: Vec<HashMap<String, Tensor<f32>>> = (0..ranks).map(|r| cast(&rank_values(&c.graph, &x, r))).collect();
        let step = |levels: &[Level]| {
            let e = plan_with(&c, &target, 2, 8, Precision::uniform(DType::F32), levels).unwrap();
            let outs =
                cpu::run_ranks(&e.graph, &e.program, &ws.iter().collect::<Vec<_>>(), &xs.iter().collect::<Vec<_>>());
            (outs.unwrap(), e.graph.nodes.len())
        };
        let (kept, kept_nodes) = step(&vec![Level::Keep; layers]);
        let mixed: Vec<Level> = (0..layers).map(|l| [Level::Full, Level::Selective][l % 2]).collect();
        for levels in [vec![Level::Full; layers], vec![Level::Selective; layers], mixed] {
            let (got, nodes) = step(&levels);
            assert!(nodes > kept_nodes, "{levels:?} recomputes something");
            for (r, (a, b)) in kept.iter().zip(&got).enumerate() {
                for (k, (ta, tb)) in a.iter().zip(b).enumerate() {
                    assert!(ta.data == tb.data, "{levels:?}: output {k} of rank {r} differs");
                }
            }
        }
    }
}

/// With its launches as native code (generated kernels, templates, GEMMs), the compiled
/// float32 program gives what the reference interpreter gives in float32 — the logits, and
/// a training step's loss, gradient norm and every updated weight and moment — on every
/// example model, one rank and two; and code generation fails for none of them.
#[test]
fn generated_kernels_give_the_reference_results() {
    use hyb_compiler::pipeline::plan_graph;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hyb"))
        .collect();
    files.sort();
    files.push(std::path::PathBuf::from("tiny"));
    let opt = AdamW::default();
    for file in files {
        let text =
            if file.to_str() == Some("tiny") { MODEL.to_string() } else { std::fs::read_to_string(&file).unwrap() };
        let g = graph_of(text);
        let (w, x) = values(&g);
        let plain = training_graph(&g, &opt, 1.0);
        let want = run::<f32>(&plain.graph, &cast(&w), &cast(&x)).unwrap();
        let want_logits = run::<f32>(&g, &cast(&w), &cast(&x)).unwrap();
        for ranks in [1, 2] {
            for (target, training) in [
                (Target::Forward, false),
                (Target::Training { opt: opt.clone(), width_mult: 1.0, data_parallel: DataParallel::Alone }, true),
            ] {
                let c = compile(&g, &target, ranks, &Options::default());
                let program = plan_graph(&c.graph, training, 2, 8, Precision::uniform(DType::F32)).unwrap();
                let kernels = cpu::Kernels::compile(&c.graph, &program);
                let failed: Vec<_> = kernels.interpreted.iter().filter(|(_, why)| why.starts_with("codegen")).collect();
                assert!(failed.is_empty(), "{}: {failed:?}", file.display());
                assert!(kernels.generated() > 0);
                let ws: Vec<HashMap<String, Tensor<f32>>> =
                    (0..ranks).map(|r| cast(&rank_values(&c.graph, &w, r))).collect();
                let xs: Vec<HashMap<String, Tensor<f32>>> =
                    (0..ranks).map(|r| cast(&rank_values(&c.graph, &x, r))).collect();
                let got = cpu::run_ranks_with(
                    &c.graph,
                    &program,
                    Some(&kernels),
                    &ws.iter().collect::<Vec<_>>(),
                    &xs.iter().collect::<Vec<_>>(),
                )
                .unwrap();
                let f64s = |t: &Tensor<f32>| Tensor::new(t.shape.clone(), t.to_f64());
                let what = |o: &str| format!("{}: {o}, {ranks} ranks", file.display());
                // BitNet's quantisers round: where the generated code sums in another order
                // than the interpreter (the vector width is the host's), an activation can
                // land one int8 level away, which moves the outputs by far more than f32
                // rounding. Its kernels are checked exactly on their own (tests/ops.rs,
                // compiler/tests/codegen.rs); here the whole model must agree to that level.
                let (tight, loose) = if quantised(&g) { (1e-2, 1e-2) } else { (1e-5, 1e-4) };
                if !training {
                    for rank in &got {
                        close(&f64s(&want_logits[0]), &rank[0].to_f64(), tight, &what("logits"));
                    }
                    continue;
                }
                close(&f64s(&want[0]), &got[0][0].to_f64(), tight, &what("loss"));
                close(&f64s(&want[1]), &got[0][1].to_f64(), tight, &what("gradient norm"));
                for (k, spec) in c.graph.params.iter().enumerate() {
                    for j in 0..3 {
                        let parts: Vec<Tensor<f64>> = got.iter().map(|r| f64s(&r[2 + 3 * k + j])).collect();
                        let full = match &spec.shard {
                            Some(s) => s.gather(&parts),
                            None => parts[0].clone(),
                        };
                        let idx = 2 + 3 * plain.params.iter().position(|p| *p == spec.name).unwrap() + j;
                        close(&f64s(&want[idx]), &full.data, loose, &what(&format!("{} output {j}", spec.name)));
                    }
                }
            }
        }
    }
}

/// At 2,048 tokens of a 300-word vocabulary, the sums into few outputs (norm weights and
/// Mamba-2's `D` summed over every token, the loss over tokens of rows summed over the
/// vocabulary) run as steps of partial sums (`codegen::reductions`); the training step
/// still gives the reference interpreter's loss, gradient norm and updated weights.
#[test]
fn sums_over_many_tokens_split_into_partial_steps() {
    use hyb_compiler::codegen::chain::Slot;
    use hyb_compiler::codegen::unit::{self, Unit};
    use hyb_compiler::codegen::Symbols;
    use hyb_compiler::pipeline::plan_graph;
    let (batch, seq) = (4, 512);
    let g = graph_of(MODEL.replace("vocab = 64", "vocab = 300"));
    let (w, x) = values_at(&g, batch, seq);
    let opt = AdamW::default();
    let plain = training_graph(&g, &opt, 1.0);
    let want = run::<f32>(&plain.graph, &cast(&w), &cast(&x)).unwrap();
    let c = compile(
        &g,
        &Target::Training { opt, width_mult: 1.0, data_parallel: DataParallel::Alone },
        1,
        &Options::default(),
    );
    let symbols = Symbols { batch, seq };
    let split = (0..c.graph.nodes.len())
        .filter(|&n| matches!(c.graph.nodes[n].op, Op::Kernel(_)))
        .filter_map(|n| match unit::for_node(&c.graph, n, symbols, hyb_compiler::codegen::Target::Cpu) {
            Ok(Unit::Chain(chain)) => Some(chain),
            _ => None,
        })
        .filter(|chain| {
            chain.steps.iter().all(|s| matches!(s, hyb_compiler::codegen::chain::Step::Body { .. }))
                && chain.steps.len() >= 2
                && chain.steps.iter().any(|s| match s {
                    hyb_compiler::codegen::chain::Step::Body { reads, .. } => {
                        reads.iter().any(|r| matches!(r, Slot::Scratch(_)))
                    }
                    _ => false,
                })
        })
        .count();
    assert!(split >= 3, "sums into few outputs as steps of partial sums: {split} chains");
    let program = plan_graph(&c.graph, true, batch, seq, Precision::uniform(DType::F32)).unwrap();
    let kernels = cpu::Kernels::compile(&c.graph, &program);
    let failed: Vec<_> = kernels.interpreted.iter().filter(|(_, why)| why.starts_with("codegen")).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let (ws, xs) = (cast::<f32>(&w), cast::<f32>(&x));
    let got = cpu::run_ranks_with(&c.graph, &program, Some(&kernels), &[&ws], &[&xs]).unwrap();
    let f64s = |t: &Tensor<f32>| Tensor::new(t.shape.clone(), t.to_f64());
    close(&f64s(&want[0]), &got[0][0].to_f64(), 1e-5, "loss");
    close(&f64s(&want[1]), &got[0][1].to_f64(), 1e-5, "gradient norm");
    for (k, spec) in c.graph.params.iter().enumerate() {
        let idx = 2 + 3 * plain.params.iter().position(|p| *p == spec.name).unwrap();
        close(&f64s(&want[idx]), &got[0][2 + 3 * k].to_f64(), 1e-4, &spec.name);
    }
}

/// Whether `g` quantises (BitNet's `int8_quant` and `ternary_quant` round their inputs).
fn quantised(g: &Graph) -> bool {
    use hyb_compiler::ops::Prim;
    g.nodes.iter().any(|n| matches!(n.op, hyb_compiler::ir::Op::Prim(Prim::Int8Quant(_) | Prim::TernaryQuant(_))))
}

/// A training step's kernels kept in a cache on disk: the first preparation compiles every
/// kernel and keeps it, the next loads every kernel and compiles none, and the step it runs
/// gives the same bits; damaged entries are compiled again and rewritten.
#[test]
fn kernels_from_the_disk_cache_run_as_compiled_ones() {
    use hyb_compiler::pipeline::plan_graph;
    use hyb_runtime::cpu::objects::DiskCache;
    let g = graph_of(MODEL.to_string());
    let (w, x) = values(&g);
    let c = compile(
        &g,
        &Target::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel: DataParallel::Alone },
        1,
        &Options::default(),
    );
    let program = plan_graph(&c.graph, true, 2, 8, Precision::uniform(DType::F32)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::at(dir.path());
    let step = |kernels: &cpu::Kernels| {
        let (w, x): (HashMap<String, Tensor<f32>>, _) = (cast(&w), cast(&x));
        let out = cpu::run_ranks_with(&c.graph, &program, Some(kernels), &[&w], &[&x]).unwrap();
        out[0].iter().map(|t| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>()
    };
    let cold = cpu::Kernels::prepare(&c.graph, &program, &cache);
    assert!(cold.compiled > 10 && cold.loaded == 0, "{}", cold.summary());
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), cold.compiled, "one entry per kernel");
    let warm = cpu::Kernels::prepare(&c.graph, &program, &cache);
    assert_eq!((warm.compiled, warm.loaded), (0, cold.compiled), "{}", warm.summary());
    assert!(warm.summary().contains(&format!("0 compiled, {} loaded", cold.compiled)), "{}", warm.summary());
    let bits = step(&cold);
    assert!(bits == step(&warm), "loaded kernels compute other bits");
    // Truncated, emptied, or another kernel's entry under this one's name.
    for (k, path) in entries.iter().enumerate() {
        let whole = std::fs::read(path).unwrap();
        let damaged = match k % 3 {
            0 => whole[..whole.len() / 2].to_vec(),
            1 => Vec::new(),
            _ => std::fs::read(&entries[(k + 1) % entries.len()]).unwrap(),
        };
        std::fs::write(path, damaged).unwrap();
    }
    let repaired = cpu::Kernels::prepare(&c.graph, &program, &cache);
    assert_eq!((repaired.compiled, repaired.loaded), (cold.compiled, 0), "{}", repaired.summary());
    assert!(bits == step(&repaired));
    let again = cpu::Kernels::prepare(&c.graph, &program, &cache);
    assert_eq!((again.compiled, again.loaded), (0, cold.compiled), "the entries were rewritten");
}
