//! Tensor parallelism without GPUs: the sharded program runs on simulated ranks (in-process
//! collectives) and must give the unsharded logits, loss, gradient norm and AdamW update —
//! for a tiny Falcon-H1 with GQA, grouped B/C, gated norm and biases, over 2 and 4 ranks.

mod common;

use common::{forward, inputs, weights};
use hyb_compiler::cost::Machine;
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::ir::{Graph, KernelKind, Op};
use hyb_compiler::ops::Prim;
use hyb_compiler::pipeline::{compile, DataParallel, Target};
use hyb_compiler::reference::{run, run_ranks, Tensor};
use hyb_compiler::rewrite::Options;
use hyb_compiler::shard::{rank_values, shard};
use hyb_compiler::training::{training_graph, AdamW};

const MODEL: &str = r#"
import std.layers

model tiny_falcon_tp {
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
    rms_norm = true
    attention_bias = true
    projectors_bias = true
    mlp_bias = true
    tie_embeddings = false
    mup embedding_multiplier = 1.5, lm_head_multiplier = 0.25, key_multiplier = 0.7
    mup attention_in_multiplier = 1.1, attention_out_multiplier = 0.9
    mup ssm_in_multiplier = 1.25, ssm_out_multiplier = 0.6
    mup z_multiplier = 0.8, x_multiplier = 0.5, b_multiplier = 0.9, c_multiplier = 1.2, dt_multiplier = 0.7
    mup gate_multiplier = 0.85, down_multiplier = 0.55
}
"#;

fn close(a: &Tensor<f64>, b: &Tensor<f64>, what: &str) {
    assert_eq!(a.shape, b.shape, "{what}");
    let scale = a.data.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    let err = a.data.iter().zip(&b.data).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= 1e-10 * scale, "{what}: max |Δ| {err:e} (max |x| {scale:e})");
}

/// Communication is free: the planner splits whatever divides the work.
fn free_links() -> Machine {
    Machine { link_bw: f64::INFINITY, link_latency: 0.0, launch: 0.0, ..Machine::default() }
}

fn check(ranks: usize, text: &'static str) {
    let g = forward(text);
    let w = weights(&g, 11);
    let x = inputs(&w, 2, 8, 64);
    let sharded = shard(&g, ranks, &free_links());
    let families: &[&str] = if text.contains("tie_embeddings = true") {
        &["q_proj", "mamba.in_proj", "gate_proj", "embed_tokens"]
    } else {
        &["q_proj", "mamba.in_proj", "gate_proj", "lm_head", "embed_tokens"]
    };
    for family in families {
        assert!(
            sharded.split.iter().any(|s| s.contains(family)),
            "{family} not split: {:?} of {:#?}",
            sharded.split,
            sharded.candidates
        );
    }
    assert!(sharded.sequence_parallel, "norms and residuals run on sequence slices");
    let sg = &sharded.graph;
    // A sequence the ranks do not divide is an error, not a wrong answer.
    let odd = inputs(&w, 1, 6, 64);
    let odd_locals: Vec<_> = (0..ranks).map(|r| rank_values(sg, &w, r)).collect();
    let err = run_ranks(sg, &odd_locals.iter().collect::<Vec<_>>(), &vec![&odd; ranks]);
    if ranks == 4 {
        assert!(matches!(err, Err(hyb_compiler::reference::RunError::Indivisible(_))));
    }
    let locals: Vec<_> = (0..ranks).map(|r| rank_values(sg, &w, r)).collect();
    let xs: Vec<_> = (0..ranks).map(|r| rank_values(sg, &x, r)).collect();
    let lrefs: Vec<_> = locals.iter().collect();
    let xrefs: Vec<_> = xs.iter().collect();

    // Forward: every rank gets the unsharded logits.
    let want = run(&g, &w, &x).unwrap();
    for (r, got) in run_ranks(sg, &lrefs, &xrefs).unwrap().iter().enumerate() {
        close(&want[0], &got[0], &format!("logits on rank {r}"));
    }

    // Training step: loss, gradient norm, and every updated parameter and moment.
    let opt = AdamW::default();
    let plain = training_graph(&g, &opt, 1.0);
    let want = run(&plain.graph, &w, &x).unwrap();
    let tg = training_graph(sg, &opt, 1.0);
    let has = |g: &Graph, p: fn(&Prim) -> bool| g.nodes.iter().any(|n| matches!(&n.op, Op::Prim(prim) if p(prim)));
    assert!(has(sg, |p| matches!(p, Prim::VocabEmbedding(_))), "vocabulary-parallel embedding");
    assert!(has(&tg.graph, |p| matches!(p, Prim::Shard(_))), "vocabulary-parallel cross-entropy");
    let got = run_ranks(&tg.graph, &lrefs, &xrefs).unwrap();
    // The whole pipeline too: shard, rewrite the forward pass (flash attention, packed
    // GEMMs), differentiate, rewrite the step, fuse.
    let opts = Options { machine: free_links(), ..Options::default() };
    let compiled = compile(
        &g,
        &Target::Training { opt: opt.clone(), width_mult: 1.0, data_parallel: DataParallel::Alone },
        ranks,
        &opts,
    );
    assert!(compiled.graph.nodes.iter().any(|n| matches!(n.op, Op::Kernel(_))));
    let got_fused = run_ranks(&compiled.graph, &lrefs, &xrefs).unwrap();
    for got in [&got, &got_fused] {
        close(&want[0], &got[0][0], "loss");
        close(&want[1], &got[0][1], "gradient norm");
        for (k, name) in tg.params.iter().enumerate() {
            let spec = tg.graph.params.iter().find(|p| &p.name == name).unwrap();
            for j in 0..3 {
                let parts: Vec<Tensor<f64>> = got.iter().map(|r| r[2 + 3 * k + j].clone()).collect();
                let full = match &spec.shard {
                    Some(s) => s.gather(&parts),
                    None => parts[0].clone(),
                };
                let idx = 2 + 3 * plain.params.iter().position(|p| p == name).unwrap() + j;
                close(&want[idx], &full, &format!("{name} output {j}"));
            }
        }
    }
    // Collectives are there, and attention and Mamba heads are split independently.
    let collectives =
        sg.nodes.iter().filter(|n| matches!(n.op, Op::Prim(Prim::AllReduce(_) | Prim::AllGather(_)))).count();
    assert!(collectives > 0);
}

#[test]
fn two_ranks_equal_one() {
    check(2, MODEL);
}

#[test]
fn four_ranks_equal_one() {
    check(4, MODEL);
}

#[test]
fn tied_embeddings_split_the_table_once_for_lookup_and_head() {
    check(2, MODEL.replace("tie_embeddings = false", "tie_embeddings = true").leak());
}

/// Fewer key/value heads and B/C groups than ranks (2 of each over 4 ranks): each rank
/// holds the one its heads read, duplicated over the ranks that share it, as Megatron
/// does; a single one (multi-query attention, one group) is held whole by every rank.
#[test]
fn key_value_heads_and_groups_fewer_than_ranks_are_duplicated() {
    for (kv, groups) in [("2", "2"), ("1", "1"), ("2", "1")] {
        let text = MODEL
            .replace("kv_heads = 4", &format!("kv_heads = {kv}"))
            .replace("groups = 4", &format!("groups = {groups}"));
        check(4, text.leak());
    }
}

/// Head counts the ranks do not divide split into as many parts as do (6 query heads and
/// 6 Mamba heads over 4 ranks: 2 parts, each on 2 ranks).
#[test]
fn heads_the_ranks_do_not_divide_split_into_fewer_parts() {
    let text = MODEL
        .replace("heads = 8", "heads = 6")
        .replace("kv_heads = 4", "kv_heads = 2")
        .replace("groups = 4", "groups = 2");
    check(4, text.leak());
}

fn example(name: &str) -> Graph {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name);
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let checked = hyb_compiler::check::check_paths(&[&path]).unwrap();
            elaborate(&checked.models[0].1.trace)
        })
        .unwrap()
        .join()
        .unwrap()
}

/// BitNet linears split as Megatron's BitNet parallel linears do: every projection's
/// ternary weight is split, quantised with the whole weight's absmean, and a row-parallel
/// projection's int8 activations with the whole token's absmax (which
/// `every_example_shards_exactly` checks against the unsharded step).
#[test]
fn bitnet_linears_split_with_the_scales_of_the_whole() {
    let g = example("bitnet_hybrid.hyb");
    for ranks in [2, 4] {
        let sharded = shard(&g, ranks, &free_links());
        for family in ["q_proj", "o_proj", "gate_proj", "down_proj"] {
            assert!(sharded.split.iter().any(|s| s.contains(family)), "{family} not split: {:?}", sharded.split);
        }
        let count = |p: fn(&Prim) -> bool| {
            sharded.graph.nodes.iter().filter(|n| matches!(&n.op, Op::Prim(prim) if p(prim))).count()
        };
        assert_eq!(count(|p| matches!(p, Prim::TernaryQuant(_))), 0, "every ternary weight is split");
        assert!(count(|p| matches!(p, Prim::ScaledTernary(_))) > 0);
        assert!(count(|p| matches!(p, Prim::ScaledInt8(_))) > 0, "row-parallel activations share their absmax");
    }
    // Split or whole, every projection is one `bitlinear` kernel (its quantisers fused
    // around the GEMM, the scales of the whole given).
    let bitlinears = |ranks: usize| {
        let target = Target::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel: DataParallel::Alone };
        let compiled = compile(&g, &target, ranks, &Options { machine: free_links(), ..Options::default() });
        let kind = |n: &hyb_compiler::ir::Node| matches!(&n.op, Op::Kernel(k) if k.kind == KernelKind::BitLinear);
        compiled.graph.nodes.iter().filter(|n| kind(n)).count()
    };
    let whole = bitlinears(1);
    assert!(whole > 0);
    for ranks in [2, 4] {
        assert_eq!(bitlinears(ranks), whole, "bitlinear kernels over {ranks} ranks");
    }
}

/// Every example model (parallel hybrids, interleaved and pure stacks, BitNet, per-layer
/// ratio overrides) gives the unsharded logits and training step over 2 and 4 ranks,
/// whatever the planner splits.
#[test]
fn every_example_shards_exactly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files.iter().filter(|p| p.extension().is_some_and(|x| x == "hyb")) {
        let g = example(path.file_name().unwrap().to_str().unwrap());
        let w = weights(&g, 11);
        let vocab = g.nodes[g.outputs[0]].ty.shape[2].as_const().unwrap() as usize;
        let x = inputs(&w, 1, 8, vocab);
        let opt = AdamW::default();
        let plain = training_graph(&g, &opt, 1.0);
        let want = run(&plain.graph, &w, &x).unwrap();
        for ranks in [2, 4] {
            let sharded = shard(&g, ranks, &free_links());
            let tg = training_graph(&sharded.graph, &opt, 1.0);
            let locals: Vec<_> = (0..ranks).map(|r| rank_values(&tg.graph, &w, r)).collect();
            let xs: Vec<_> = (0..ranks).map(|r| rank_values(&tg.graph, &x, r)).collect();
            let got = run_ranks(&tg.graph, &locals.iter().collect::<Vec<_>>(), &xs.iter().collect::<Vec<_>>()).unwrap();
            let what = format!("{} over {ranks} ranks (split: {:?})", path.display(), sharded.split);
            close(&want[0], &got[0][0], &format!("loss of {what}"));
            close(&want[1], &got[0][1], &format!("gradient norm of {what}"));
            for (k, name) in tg.params.iter().enumerate() {
                let spec = tg.graph.params.iter().find(|p| &p.name == name).unwrap();
                let parts: Vec<Tensor<f64>> = got.iter().map(|r| r[2 + 3 * k].clone()).collect();
                let full = spec.shard.as_ref().map_or_else(|| parts[0].clone(), |s| s.gather(&parts));
                let idx = 2 + 3 * plain.params.iter().position(|p| p == name).unwrap();
                close(&want[idx], &full, &format!("{name} of {what}"));
            }
        }
    }
}
