//! Every template against the float64 reference, at shapes that are odd, not multiples of
//! a block or chunk, and T = 1, on random strided layouts with the outputs poisoned; and
//! each template's PTX, assembled by `ptxas` when it is there, with no spills.

use super::{ptxas, spills, Case, SIZES};
use hyb_compiler::codegen::template::{self, TemplateCode};
use hyb_compiler::codegen::{cpu, gpu, Target};
use hyb_compiler::ir::{Graph, NodeId, Op, TensorType};
use hyb_compiler::ops::{CausalConv1d, CausalConv1dGrad, Prim, SsdScan, SsdScanGrad};
use hyb_dsl::dim::Dim;
use hyb_dsl::value::DType;

/// A body applying `prim` to inputs of `shapes`; every output of it is a body output.
fn prim_body(prim: impl Into<Prim>, shapes: &[Vec<usize>]) -> (Graph, NodeId) {
    let mut g = Graph::default();
    let inputs: Vec<NodeId> = shapes
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let ty = TensorType { shape: s.iter().map(|&d| Dim::constant(d as i64)).collect(), dtype: DType::F32 };
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

/// Values in (-1, 1), but input `k` of `ranges` in its own range.
type Ranges = &'static [(usize, f64, f64)];

/// Runs the template on three random layouts and compares with the reference; then makes
/// its PTX and assembles it.
fn check_template(what: &str, body: &Graph, node: NodeId, ranges: Ranges) -> Result<(), String> {
    let kernel = cpu::compile_template(&code(body, node, Target::Cpu)).map_err(|e| format!("{what}: {e}"))?;
    for seed in 1..=3u64 {
        let case = Case::ranged(body, seed, -1.0, 1.0, ranges).map_err(|e| format!("{what}: {e}"))?;
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

fn run_all(cases: Vec<(String, Graph, NodeId)>, ranges: Ranges) {
    let failures: Vec<String> =
        cases.iter().filter_map(|(what, body, node)| check_template(what, body, *node, ranges).err()).collect();
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
    run_all(cases, &[]);
}

/// (B, T, H, P, G, N, chunk): T = 1, T not a multiple of the chunk, odd P and N, one
/// group, a group per head and between, one batch and three; and one longer sequence.
const SSD_SHAPES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
    (1, 1, 2, 3, 1, 5, 4),
    (3, 7, 4, 3, 2, 5, 4),
    (2, 9, 3, 5, 3, 3, 4),
    (1, 6, 6, 2, 3, 4, 8),
    (2, 64, 4, 8, 2, 16, 16),
];

/// `dt` positive and `a` negative, as Mamba's are, so every decay is at most 1.
const SSD_RANGES: Ranges = &[(1, 0.05, 1.0), (2, -1.0, -0.1)];

#[test]
fn ssd_scan_matches_the_reference() {
    let mut cases = Vec::new();
    for &(b, t, h, p, g, n, chunk) in SSD_SHAPES {
        let chunk = Dim::constant(chunk as i64);
        let mut shapes = vec![vec![b, t, h, p], vec![b, t, h], vec![h], vec![b, t, g, n], vec![b, t, g, n]];
        let (body, node) = prim_body(SsdScan { chunk: chunk.clone() }, &shapes);
        cases.push((format!("ssd_scan {shapes:?}"), body, node));
        shapes.push(vec![b, t, h, p]);
        let (body, node) = prim_body(SsdScanGrad { chunk }, &shapes);
        cases.push((format!("ssd_scan grad {shapes:?}"), body, node));
    }
    run_all(cases, SSD_RANGES);
}
