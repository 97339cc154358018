//! Vertical fusion preserves meaning: random graphs of pointwise operations, row
//! reductions, views and GEMMs compute the same values after their chains become kernels.

use hyb_compiler::ir::{Graph, Init, NodeId, Op, ParamSpec, TensorType};
use hyb_compiler::ops::{Binary, ReduceOp, Unary};
use hyb_compiler::reference::{run, Tensor};
use hyb_compiler::rewrite::fuse::fuse;
use hyb_dsl::dim::Dim;
use hyb_dsl::inits::Role;
use hyb_dsl::value::DType;
use proptest::prelude::*;
use std::collections::HashMap;

fn build(ops: &[(u8, usize, usize)], rows: usize, cols: usize) -> (Graph, HashMap<String, Tensor<f64>>) {
    let mut g = Graph::default();
    let mut values = HashMap::new();
    let mut seed = 17u64;
    let mut param = |g: &mut Graph, shape: Vec<usize>| {
        let name = format!("p{}", g.params.len());
        g.params.push(ParamSpec {
            name: name.clone(),
            shape: shape.clone(),
            init: Init { name: "zeros".into(), args: vec![] },
            role: Role::Hidden,
            shard: None,
            moments: None,
        });
        let data = (0..shape.iter().product::<usize>())
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
            })
            .collect();
        values.insert(name, Tensor::new(shape.clone(), data));
        let ty = TensorType { shape: shape.iter().map(|&d| Dim::constant(d as i64)).collect(), dtype: DType::F32 };
        g.add(Op::Param(g.params.len() - 1), vec![], ty)
    };
    let mut full: Vec<NodeId> = vec![param(&mut g, vec![rows, cols]), param(&mut g, vec![rows, cols])];
    for &(kind, i, j) in ops {
        let (a, b) = (full[i % full.len()], full[j % full.len()]);
        let y = match kind % 8 {
            0 => g.unary(Unary::Silu, a),
            1 => g.unary(Unary::Tanh, a),
            2 => g.binary(Binary::Add, a, b),
            3 => g.binary(Binary::Mul, a, b),
            4 => {
                let red = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max][j % 3];
                let r = g.reduce(red, a, -1, true);
                g.binary(Binary::Sub, b, r)
            }
            5 => {
                let w = param(&mut g, vec![cols, cols]);
                g.matmul(a, w, false, true)
            }
            6 => g.scale(a, 0.5),
            _ => {
                let r = g.reshape(a, vec![Dim::constant((rows * cols) as i64)]);
                let e = g.unary(Unary::Exp, r);
                g.reshape(e, vec![Dim::constant(rows as i64), Dim::constant(cols as i64)])
            }
        };
        full.push(y);
    }
    let n = full.len();
    g.outputs = vec![full[n - 1], full[n / 2]];
    (g, values)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn fusion_preserves_values(ops in prop::collection::vec((0..8u8, 0..40usize, 0..40usize), 1..25),
                               rows in 1..4usize, cols in 1..5usize) {
        let (g, values) = build(&ops, rows, cols);
        let want = run(&g, &values, &HashMap::new()).unwrap();
        let fused = fuse(&g);
        let got = run(&fused, &values, &HashMap::new()).unwrap();
        for (a, b) in want.iter().zip(&got) {
            prop_assert_eq!(&a.shape, &b.shape);
            for (x, y) in a.data.iter().zip(&b.data) {
                // Chains of exponentials overflow alike on both sides.
                let same = x == y || (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-12 * (1.0 + x.abs());
                prop_assert!(same, "{} vs {}", x, y);
            }
        }
        prop_assert!(fused.nodes.len() <= g.nodes.len());
    }
}

#[test]
fn chains_become_one_kernel_and_gemms_take_epilogues() {
    // rmsnorm(x) · w, then a GEMM with bias and SiLU: two kernels.
    let (g, values) = build(&[], 4, 4);
    let mut g = g;
    let x = 0;
    let sq = g.binary(Binary::Mul, x, x);
    let ms = g.reduce(ReduceOp::Mean, sq, -1, true);
    let eps = g.constant(1e-5);
    let ms = g.binary(Binary::Add, ms, eps);
    let r = g.unary(Unary::Rsqrt, ms);
    let h = g.binary(Binary::Mul, x, r);
    let h = g.binary(Binary::Mul, h, 1);
    let y = g.matmul(h, 1, false, true);
    let y = g.binary(Binary::Add, y, x);
    let y = g.unary(Unary::Silu, y);
    g.outputs = vec![y];
    let want = run(&g, &values, &HashMap::new()).unwrap();
    let fused = fuse(&g);
    assert_eq!(run(&fused, &values, &HashMap::new()).unwrap(), want);
    let kinds: Vec<String> = fused
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Kernel(k) => Some(k.kind.name()),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["fused", "gemm"]);
}

#[test]
fn a_value_read_again_later_is_an_extra_output_of_its_consumers_kernel() {
    // silu(x) · p + p, and silu(x) read again after that kernel by a GEMM (as a backward
    // pass would): one kernel writes both; the GEMM takes its second output.
    let (g, values) = build(&[], 3, 4);
    let mut g = g;
    let a = g.unary(Unary::Silu, 0);
    let b = g.binary(Binary::Mul, a, 1);
    let c = g.binary(Binary::Add, b, 1);
    let later = g.matmul(a, 1, false, true);
    g.outputs = vec![c, later];
    let want = run(&g, &values, &HashMap::new()).unwrap();
    let fused = fuse(&g);
    assert_eq!(run(&fused, &values, &HashMap::new()).unwrap(), want);
    let outputs: Vec<usize> = fused
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Kernel(k) => Some(k.body.outputs.len()),
            _ => None,
        })
        .collect();
    assert_eq!(outputs, [2], "the kernel of silu(x) · p + p writes silu(x) too:\n{fused}");
}
