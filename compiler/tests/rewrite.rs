//! The rewritten program computes what the original does: a tiny Falcon-H1 (GQA, grouped
//! B/C, gated norm, biases, distinct µP multipliers) gives the same logits, and the same
//! training step (loss, gradient norm, updated weights and moments), after e-graph rewriting
//! and fusion; the expected rewrites fire.

mod common;

use common::{forward, inputs, weights};
use hyb_compiler::elaborate::packed::{packed, POSITIONS};
use hyb_compiler::ir::{Graph, KernelKind, Op};
use hyb_compiler::ops::Prim;
use hyb_compiler::reference::{run, Tensor};
use hyb_compiler::rewrite::{optimize, saturate, Options};
use hyb_compiler::training::{training_graph, AdamW};

const MODEL: &str = r#"
import std.layers

model tiny_falcon {
    vocab = 61
    d = 32
    layers = pattern("H{3}", H = falcon_h1_layer)
    heads = 4
    kv_heads = 2
    head_dim = 8
    ssm_heads = 4
    ssm_head_dim = 8
    d_state = 4
    groups = 2
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

fn assert_close(a: &[Tensor<f64>], b: &[Tensor<f64>], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.shape, y.shape, "output {k}");
        let scale = x.data.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        let err = x.data.iter().zip(&y.data).fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        assert!(err <= tol * scale, "output {k}: max |Δ| {err:e} vs max |x| {scale:e}");
    }
}

fn kernels(g: &Graph) -> Vec<&hyb_compiler::ir::Kernel> {
    g.nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Kernel(k) => Some(&**k),
            _ => None,
        })
        .collect()
}

#[test]
fn rewritten_forward_gives_the_same_logits() {
    let g = forward(MODEL);
    let w = weights(&g, 7);
    let x = inputs(&w, 2, 9, 61);
    let want = run(&g, &w, &x).unwrap();
    let opts = Options::default();
    let (saturated, report) = saturate(&g, &opts);
    assert_close(&want, &run(&saturated, &w, &x).unwrap(), 1e-12);
    let (fused, _) = optimize(&g, &opts);
    assert_close(&want, &run(&fused, &w, &x).unwrap(), 1e-12);

    // Every layer's attention became one flash-attention kernel with 2 query heads per KV head.
    let flash = kernels(&saturated)
        .into_iter()
        .filter(|k| matches!(k.kind, KernelKind::FlashAttention { groups: 2, .. }))
        .count();
    assert_eq!(flash, 3);
    assert_eq!(packed_projections(&saturated), 3, "one packed q/k/v/in_proj weight per layer");
    assert!(report.fired.contains_key("matmul-scale-out"), "{:?}", report.fired);
    assert!(report.unique_regions < report.regions, "equal layers share one e-graph run");
}

#[test]
fn rewritten_training_step_gives_the_same_update() {
    let g = forward(MODEL);
    let w = weights(&g, 7);
    let x = inputs(&w, 2, 7, 61);
    let opt = AdamW::default();
    let plain = training_graph(&g, &opt, 1.0).graph;
    let want = run(&plain, &w, &x).unwrap();

    let opts = Options::default();
    let (forward_rewritten, _) = saturate(&g, &opts);
    let trained = training_graph(&forward_rewritten, &opt, 1.0).graph;
    let (fused, report) = optimize(&trained, &opts);
    assert_close(&want, &run(&fused, &w, &x).unwrap(), 1e-10);
    let names: Vec<String> = kernels(&fused).iter().map(|k| k.kind.name()).collect();
    assert!(names.iter().any(|n| n == "flash_attention_grad"), "{names:?}");
    assert!(names.iter().any(|n| n == "gemm"), "{names:?}");
    assert_eq!(packed_projections(&fused), 3, "{:?}", report.fired);
}

/// Packed rows: the packed graph's attention (document mask, RoPE by the place in the
/// document) becomes one flash-attention kernel over the documents per layer, and the
/// training step with it updates as the plain packed graph does.
#[test]
fn packed_attention_becomes_flash_attention_over_documents() {
    let g = packed(&forward(MODEL)).unwrap();
    let w = weights(&g, 7);
    let (b, t) = (2, 9);
    let mut x = inputs(&w, b, t, 61);
    // Documents of 1 to 4 tokens, starting anywhere in the row.
    let places = (0..b * t).scan(0.0, |p, i| {
        *p = if i % t == 0 || i % 5 == 3 || *p >= 3.0 { 0.0 } else { *p + 1.0 };
        Some(*p)
    });
    x.insert(POSITIONS.to_string(), Tensor::new(vec![b, t], places.collect()));
    let opts = Options::default();
    let (saturated, _) = saturate(&g, &opts);
    let documents = kernels(&saturated)
        .into_iter()
        .filter(|k| matches!(k.kind, KernelKind::FlashAttention { documents: true, rope: Some(_), .. }))
        .count();
    assert_eq!(documents, 3, "one flash attention over documents per layer");
    assert_close(&run(&g, &w, &x).unwrap(), &run(&saturated, &w, &x).unwrap(), 1e-12);

    let opt = AdamW::default();
    let want = run(&training_graph(&g, &opt, 1.0).graph, &w, &x).unwrap();
    let (fused, _) = optimize(&training_graph(&saturated, &opt, 1.0).graph, &opts);
    assert_close(&want, &run(&fused, &w, &x).unwrap(), 1e-10);
    let masks = fused.nodes.iter().filter(|n| matches!(n.op, Op::Prim(Prim::DocumentMask(_)))).count();
    assert_eq!(masks, 0, "no score matrix is masked outside the kernel");
}

/// Weights packed so that q, k, v and Mamba's in_proj run as one GEMM.
fn packed_projections(g: &Graph) -> usize {
    g.nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Prim(Prim::Concat(_))))
        .filter(|n| {
            let names: Vec<&str> = n
                .inputs
                .iter()
                .filter_map(|&i| match g.nodes[i].op {
                    Op::Param(p) => Some(g.params[p].name.as_str()),
                    _ => None,
                })
                .collect();
            ["q_proj", "k_proj", "v_proj", "in_proj"].iter().all(|p| names.iter().any(|n| n.contains(p)))
        })
        .count()
}

#[test]
fn graph_to_rec_expr_and_back_keeps_parameters_and_values() {
    use hyb_compiler::rewrite::{expr::to_rec_expr, region::Region};
    let g = forward(MODEL);
    let leaf = |n: &hyb_compiler::ir::Node| matches!(n.op, Op::Input(_) | Op::Param(_));
    let whole = Region {
        scope: 0,
        nodes: (0..g.nodes.len()).filter(|&i| !leaf(&g.nodes[i])).collect(),
        leaves: (0..g.nodes.len()).filter(|&i| leaf(&g.nodes[i])).collect(),
        outputs: g.outputs.clone(),
    };
    let program = to_rec_expr(&g, &whole);
    assert_eq!(program.expr.as_ref().len(), g.nodes.len());
    let back = program.to_graph(&g);
    let names = |g: &Graph| {
        let mut v: Vec<String> = g.params.iter().map(|p| p.name.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&back), names(&g));
    assert_eq!(back.nodes.len(), g.nodes.len());
    let w = weights(&g, 3);
    let x = inputs(&w, 2, 5, 61);
    assert_eq!(run(&back, &w, &x).unwrap(), run(&g, &w, &x).unwrap());
}
