//! Every template against the float64 reference, at shapes that are odd, not multiples of
//! a block or chunk, and T = 1, on random strided layouts with the outputs poisoned; and
//! each template's PTX, assembled by `ptxas` when it is there, with no spills.

use super::{ptxas, spills, Case, SIZES};
use hyb_compiler::codegen::template::{self, TemplateCode};
use hyb_compiler::codegen::{cpu, gpu, Target};
use hyb_compiler::ir::{Graph, NodeId, Op, TensorType};
use hyb_compiler::ops::{CausalConv1d, CausalConv1dGrad, Concat, Embedding, EmbeddingGrad, OneHot, Pad, Prim};
use hyb_dsl::dim::Dim;
use hyb_dsl::value::DType;

/// A body applying `prim` to inputs of `shapes`; every output of it is a body output.
fn prim_body(prim: impl Into<Prim>, shapes: &[Vec<usize>]) -> (Graph, NodeId) {
    let typed: Vec<(Vec<usize>, DType)> = shapes.iter().map(|s| (s.clone(), DType::F32)).collect();
    typed_prim_body(prim, &typed)
}

/// [`prim_body`] with inputs of the given element types.
fn typed_prim_body(prim: impl Into<Prim>, inputs: &[(Vec<usize>, DType)]) -> (Graph, NodeId) {
    let mut g = Graph::default();
    let inputs: Vec<NodeId> = inputs
        .iter()
        .enumerate()
        .map(|(k, (s, dtype))| {
            let ty = TensorType { shape: s.iter().map(|&d| Dim::constant(d as i64)).collect(), dtype: *dtype };
            g.add(Op::Input(k.to_string()), vec![], ty)
        })
        .collect();
    let outs = g.apply_all(prim, inputs);
    g.outputs = outs.clone();
    (g, outs[0])
}

/// The template of `node`, for `target`.
fn code(body: &Graph, node: NodeId, target: Target) -> TemplateCode {
    template::for_node(body, node, SIZES, target).expect("a template implements the node").expect("it generates")
}

/// Runs the template on three random layouts and compares with the reference; then makes
/// its PTX and assembles it.
fn check_template(what: &str, body: &Graph, node: NodeId) -> Result<(), String> {
    check_in(what, body, node, -1.0, 1.0)
}

/// [`check_template`] with input values in `lo..hi`.
fn check_in(what: &str, body: &Graph, node: NodeId, lo: f64, hi: f64) -> Result<(), String> {
    let kernel = cpu::compile_template(&code(body, node, Target::Cpu)).map_err(|e| format!("{what}: {e}"))?;
    for seed in 1..=3u64 {
        let case = Case::new(body, seed, lo, hi).map_err(|e| format!("{what}: {e}"))?;
        super::check(&kernel, &case).map_err(|e| format!("{what}, seed {seed}: {e}"))?;
    }
    let gpu = gpu::compile_template(&code(body, node, Target::Gpu)).map_err(|e| format!("{what} (GPU): {e}"))?;
    let unresolved = gpu::unresolved_calls(&gpu.ptx);
    if !unresolved.is_empty() {
        return Err(format!("{what}: PTX calls {unresolved:?}"));
    }
    if let Some(ptxas) = ptxas() {
        let file = std::env::temp_dir().join(format!("hyb-{}-{}.ptx", gpu.name, std::process::id()));
        std::fs::write(&file, &gpu.ptx).unwrap();
        let out = std::process::Command::new(ptxas)
            .args(["-arch=sm_90", "-v", "-o", "/dev/null"])
            .arg(&file)
            .output()
            .expect("ptxas runs");
        std::fs::remove_file(&file).ok();
        let report = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() || spills(&report) {
            return Err(format!("{what}: ptxas:\n{report}"));
        }
    }
    Ok(())
}

fn run_all(cases: Vec<(String, Graph, NodeId)>) {
    let failures: Vec<String> =
        cases.iter().filter_map(|(what, body, node)| check_template(what, body, *node).err()).collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// (B, T, C, K): T = 1, T shorter than the taps, odd channel counts.
const CONV_SHAPES: &[(usize, usize, usize, usize)] = &[(1, 1, 3, 4), (2, 3, 5, 4), (2, 9, 7, 3), (3, 17, 12, 4)];

#[test]
fn causal_conv1d_matches_the_reference() {
    let mut cases = Vec::new();
    for &(b, t, c, k) in CONV_SHAPES {
        for bias in [false, true] {
            let mut shapes = vec![vec![b, t, c], vec![c, k]];
            if bias {
                shapes.push(vec![c]);
            }
            let (body, node) = prim_body(CausalConv1d, &shapes);
            cases.push((format!("conv1d {shapes:?}"), body, node));
            let grad = vec![vec![b, t, c], vec![c, k], vec![b, t, c]];
            let (body, node) = prim_body(CausalConv1dGrad { bias }, &grad);
            cases.push((format!("conv1d grad (bias {bias}) {grad:?}"), body, node));
        }
    }
    run_all(cases);
}

#[test]
fn concat_and_pad_match_the_reference() {
    let mut cases = Vec::new();
    for (shapes, axis) in [
        (vec![vec![2, 3, 4], vec![2, 3, 1], vec![2, 3, 5]], -1),
        (vec![vec![2, 1, 4], vec![2, 6, 4]], 1),
        (vec![vec![3, 2], vec![1, 2]], 0),
    ] {
        let (body, node) = prim_body(Concat { axis }, &shapes);
        cases.push((format!("concat {shapes:?} axis {axis}"), body, node));
    }
    for (shape, axis, before, after) in [(vec![2, 3, 4], -1, 1, 2), (vec![3, 5], 0, 0, 3), (vec![1, 4, 2], 1, 2, 0)] {
        let pad = Pad { axis, before: Dim::constant(before), after: Dim::constant(after) };
        let (body, node) = prim_body(pad, &[shape.clone()]);
        cases.push((format!("pad {shape:?} axis {axis} by {before}, {after}"), body, node));
    }
    run_all(cases);
}

/// Whole-number ids in `0..=vocab` (one past the table selects nothing), table and
/// gradient values in the same range.
#[test]
fn lookups_by_token_id_match_the_reference() {
    let mut cases = Vec::new();
    for (vocab, d, ids) in [(5usize, 3usize, vec![2usize, 3]), (7, 4, vec![1, 1]), (3, 5, vec![9])] {
        let (body, node) = typed_prim_body(Embedding, &[(vec![vocab, d], DType::F32), (ids.clone(), DType::I32)]);
        // The reference refuses ids outside the table; the executor checks them first.
        cases.push((format!("embedding [{vocab}, {d}] ids {ids:?}"), body, node, vocab - 1));
        let (body, node) = typed_prim_body(OneHot { depth: Dim::constant(vocab as i64) }, &[(ids.clone(), DType::I32)]);
        cases.push((format!("one_hot {vocab} ids {ids:?}"), body, node, vocab));
        let mut dy = ids.clone();
        dy.push(d);
        let grad = EmbeddingGrad { vocab: Dim::constant(vocab as i64) };
        let (body, node) = typed_prim_body(grad, &[(ids.clone(), DType::I32), (dy, DType::F32)]);
        cases.push((format!("embedding_grad [{vocab}, {d}] ids {ids:?}"), body, node, vocab));
    }
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(what, body, node, vocab)| check_in(what, body, *node, 0.0, *vocab as f64 + 1.0).err())
        .collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
