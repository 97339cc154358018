//! Every primitive's float64 meaning against values computed by hand.

use hyb_compiler::ops::ssd_scan::sequential;
use hyb_compiler::ops::*;
use hyb_compiler::reference::Tensor;
use hyb_dsl::dim::Dim;
use hyb_dsl::value::DType;

fn t(shape: &[usize], data: &[f64]) -> Tensor<f64> {
    Tensor::new(shape.to_vec(), data.to_vec())
}

fn run(prim: impl Into<Prim>, inputs: &[&Tensor<f64>]) -> Tensor<f64> {
    prim.into().eval(inputs, Sizes::constants()).remove(0)
}

fn dims(v: &[i64]) -> Vec<Dim> {
    v.iter().map(|&d| Dim::constant(d)).collect()
}

#[track_caller]
fn close(got: &Tensor<f64>, shape: &[usize], want: &[f64]) {
    assert_eq!(got.shape, shape, "shape");
    assert_eq!(got.data.len(), want.len());
    for (i, (g, w)) in got.data.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-12 * w.abs().max(1.0) || (g.is_infinite() && g == w),
            "element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn binary_pointwise_broadcasts() {
    let a = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let b = t(&[2], &[10.0, 20.0]);
    close(&run(Binary::Add, &[&a, &b]), &[2, 2], &[11.0, 22.0, 13.0, 24.0]);
    close(&run(Binary::Sub, &[&a, &b]), &[2, 2], &[-9.0, -18.0, -7.0, -16.0]);
    close(&run(Binary::Mul, &[&a, &Tensor::scalar(2.0)]), &[2, 2], &[2.0, 4.0, 6.0, 8.0]);
    close(&run(Binary::Div, &[&a, &b]), &[2, 2], &[0.1, 0.1, 0.3, 0.2]);
    let c = t(&[2, 1], &[2.5, 2.5]);
    close(&run(Binary::Maximum, &[&a, &c]), &[2, 2], &[2.5, 2.5, 3.0, 4.0]);
    close(&run(Binary::Minimum, &[&a, &c]), &[2, 2], &[1.0, 2.0, 2.5, 2.5]);
}

#[test]
fn unary_pointwise() {
    let x = t(&[3], &[-1.0, 0.0, 2.0]);
    let u = |p: Unary| run(p, &[&x]);
    let e = std::f64::consts::E;
    close(&u(Unary::Neg), &[3], &[1.0, 0.0, -2.0]);
    close(&u(Unary::Exp), &[3], &[1.0 / e, 1.0, e * e]);
    close(&u(Unary::Abs), &[3], &[1.0, 0.0, 2.0]);
    close(&u(Unary::Sign), &[3], &[-1.0, 0.0, 1.0]);
    close(&u(Unary::Sigmoid), &[3], &[1.0 / (1.0 + e), 0.5, 1.0 / (1.0 + 1.0 / (e * e))]);
    close(&u(Unary::Silu), &[3], &[-1.0 / (1.0 + e), 0.0, 2.0 / (1.0 + 1.0 / (e * e))]);
    close(&u(Unary::Softplus), &[3], &[(1.0 + 1.0 / e).ln(), 2f64.ln(), (1.0 + e * e).ln()]);
    close(&u(Unary::Tanh), &[3], &[(-1f64).tanh(), 0.0, 2f64.tanh()]);
    let g2 = 0.5 * 2.0 * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (2.0 + 0.044715 * 8.0)).tanh());
    assert!((u(Unary::Gelu).data[2] - g2).abs() < 1e-12);
    let p = t(&[3], &[1.0, 4.0, 0.25]);
    close(&run(Unary::Log, &[&p]), &[3], &[0.0, 4f64.ln(), 0.25f64.ln()]);
    close(&run(Unary::Sqrt, &[&p]), &[3], &[1.0, 2.0, 0.5]);
    close(&run(Unary::Rsqrt, &[&p]), &[3], &[1.0, 0.5, 2.0]);
    close(&run(Pow { exponent: F64(1.5) }, &[&p]), &[3], &[1.0, 8.0, 0.125]);
    let r = t(&[4], &[0.5, 1.5, 2.5, -0.5]);
    close(&run(Unary::Round, &[&r]), &[4], &[0.0, 2.0, 2.0, -0.0]);
    close(&run(Clamp { low: F64(0.0), high: F64(1.0) }, &[&r]), &[4], &[0.5, 1.0, 1.0, 0.0]);
}

#[test]
fn select_picks_by_the_masks_sign_and_drops_what_it_does_not_pick() {
    let mask = t(&[4], &[1.0, 0.0, -2.0, f64::NAN]);
    let a = t(&[4], &[10.0, f64::NAN, f64::INFINITY, 13.0]);
    let b = t(&[1], &[f64::NAN]);
    let got = run(Select, &[&mask, &a, &b]);
    assert_eq!(got.data[0], 10.0);
    assert!(got.data[1..].iter().all(|x| x.is_nan()), "{:?}", got.data);
    let got = run(Select, &[&mask, &a, &t(&[1], &[-1.0])]);
    close(&got, &[4], &[10.0, -1.0, -1.0, -1.0]);
}

#[test]
fn cast_rounds_to_the_target_precision() {
    let x = t(&[3], &[1.0 + 1e-3, 1.0 / 3.0, -2.7]);
    let bf = run(Cast { dtype: DType::BF16 }, &[&x]);
    close(&bf, &[3], &[1.0, 0.333984375, -2.703125]);
    let f32v = run(Cast { dtype: DType::F32 }, &[&x]);
    assert_eq!(f32v.data[1], (1.0f32 / 3.0) as f64);
    let i = run(Cast { dtype: DType::I64 }, &[&x]);
    close(&i, &[3], &[1.0, 0.0, -2.0]);
}

#[test]
fn reductions() {
    let x = t(&[2, 3], &[1.0, 5.0, 3.0, -1.0, -2.0, -3.0]);
    close(&run(Reduce { op: ReduceOp::Sum, axis: -1, keepdim: true }, &[&x]), &[2, 1], &[9.0, -6.0]);
    close(&run(Reduce { op: ReduceOp::Mean, axis: 0, keepdim: false }, &[&x]), &[3], &[0.0, 1.5, 0.0]);
    close(&run(Reduce { op: ReduceOp::Max, axis: 1, keepdim: false }, &[&x]), &[2], &[5.0, -1.0]);
}

#[test]
fn movement() {
    let x = t(&[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    close(&run(Reshape { shape: dims(&[3, -1]) }, &[&x]), &[3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    close(&run(Transpose { dim0: 0, dim1: 1 }, &[&x]), &[3, 2], &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    let y = t(&[1, 2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    close(&run(Permute { dims: vec![2, 0, 1] }, &[&y]), &[3, 1, 2], &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    let col = t(&[2, 1], &[7.0, 8.0]);
    close(
        &run(Broadcast { shape: dims(&[2, 2, 3]) }, &[&col]),
        &[2, 2, 3],
        &[7.0, 7.0, 7.0, 8.0, 8.0, 8.0, 7.0, 7.0, 7.0, 8.0, 8.0, 8.0],
    );
    close(
        &run(Slice { axis: 1, start: Dim::constant(1), end: Dim::constant(3) }, &[&x]),
        &[2, 2],
        &[1.0, 2.0, 4.0, 5.0],
    );
    close(&run(Concat { axis: -1 }, &[&x, &col]), &[2, 4], &[0.0, 1.0, 2.0, 7.0, 3.0, 4.0, 5.0, 8.0]);
    let table = t(&[3, 2], &[0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    let ids = t(&[1, 3], &[2.0, 0.0, 2.0]);
    close(&run(Embedding, &[&table, &ids]), &[1, 3, 2], &[2.0, 2.5, 0.0, 0.5, 2.0, 2.5]);
}

#[test]
fn matmul_with_transposes_and_batch_broadcast() {
    let a = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let b = t(&[2, 2], &[5.0, 6.0, 7.0, 8.0]);
    let mm = |ta, tb, x: &Tensor<f64>, y: &Tensor<f64>| run(Matmul::new(ta, tb), &[x, y]);
    close(&mm(false, false, &a, &b), &[2, 2], &[19.0, 22.0, 43.0, 50.0]);
    close(&mm(false, true, &a, &b), &[2, 2], &[17.0, 23.0, 39.0, 53.0]);
    close(&mm(true, false, &a, &b), &[2, 2], &[26.0, 30.0, 38.0, 44.0]);
    let batch = t(&[2, 1, 2], &[1.0, 0.0, 0.0, 1.0]);
    close(&mm(false, false, &batch, &b), &[2, 1, 2], &[5.0, 6.0, 7.0, 8.0]);
}

#[test]
fn causal_conv1d_is_causal_with_bias() {
    let x = t(&[1, 3, 1], &[1.0, 2.0, 3.0]);
    let w = t(&[1, 2], &[10.0, 1.0]);
    let bias = t(&[1], &[0.5]);
    // y_t = 10·x_{t-1} + 1·x_t + 0.5
    close(&run(CausalConv1d, &[&x, &w, &bias]), &[1, 3, 1], &[1.5, 12.5, 23.5]);
    close(&run(CausalConv1d, &[&x, &w]), &[1, 3, 1], &[1.0, 12.0, 23.0]);
}

#[test]
fn rope_rotates_pairs_by_position() {
    // One head of dim 2: position t rotates (x1, x2) by angle t·theta^0 = t.
    let x = t(&[1, 2, 1, 2], &[1.0, 0.0, 1.0, 0.0]);
    let y = run(Rope { theta: F64(10000.0) }, &[&x]);
    close(&y, &[1, 2, 1, 2], &[1.0, 0.0, 1f64.cos(), 1f64.sin()]);
}

#[test]
fn causal_mask_hides_the_future() {
    let x = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    close(&run(CausalMask, &[&x]), &[2, 2], &[1.0, f64::NEG_INFINITY, 3.0, 4.0]);
}

#[test]
fn bitnet_quantisers() {
    let w = t(&[4], &[0.9, -0.05, 0.4, -1.6]);
    // s = mean|w| = 0.7375; w/s = [1.22, -0.068, 0.54, -2.17] → [1, 0, 1, -1]·s
    close(&run(TernaryQuant, &[&w]), &[4], &[0.7375, 0.0, 0.7375, -0.7375]);
    let x = t(&[1, 3], &[1.0, -0.5, 0.25]);
    // scale 127 / 1 → [127, -63.5 → -64 (ties to even), 31.75 → 32] / 127
    close(&run(Int8Quant, &[&x]), &[1, 3], &[1.0, -64.0 / 127.0, 32.0 / 127.0]);
}

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

fn random(shape: &[usize], seed: &mut u64, scale: f64, offset: f64) -> Tensor<f64> {
    let n = shape.iter().product();
    Tensor::new(shape.to_vec(), (0..n).map(|_| offset + scale * lcg(seed)).collect())
}

/// The chunked scan equals the step-by-step recurrence, for lengths that are and are not
/// multiples of the chunk, with grouped B/C.
#[test]
fn ssd_scan_chunked_equals_sequential_recurrence() {
    let mut seed = 7;
    for (t_len, chunk, heads, groups) in [(8, 4, 2, 1), (10, 4, 4, 2), (7, 3, 2, 2), (5, 8, 3, 1), (6, 1, 2, 1)] {
        let (b, p, n) = (2, 3, 4);
        let x = random(&[b, t_len, heads, p], &mut seed, 1.0, 0.0);
        let dt = random(&[b, t_len, heads], &mut seed, 0.4, 0.5);
        let a = random(&[heads], &mut seed, 0.5, -1.0);
        let bm = random(&[b, t_len, groups, n], &mut seed, 1.0, 0.0);
        let cm = random(&[b, t_len, groups, n], &mut seed, 1.0, 0.0);
        let chunked = run(SsdScan { chunk: Dim::constant(chunk) }, &[&x, &dt, &a, &bm, &cm]);
        let sequential = sequential(&x, &dt, &a, &bm, &cm);
        let max = sequential.data.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (c, s) in chunked.data.iter().zip(&sequential.data) {
            assert!((c - s).abs() <= 1e-12 * max, "T={t_len} chunk={chunk}: {c} vs {s}");
        }
    }
}

#[test]
fn ssd_scan_by_hand() {
    // One head, P = N = 1, a = ln(1/2) so exp(dt·a) = 1/2 at dt = 1: h_t = h_{t-1}/2 + x_t·b_t.
    let x = t(&[1, 3, 1, 1], &[1.0, 2.0, 4.0]);
    let dt = t(&[1, 3, 1], &[1.0, 1.0, 1.0]);
    let a = t(&[1], &[0.5f64.ln()]);
    let ones = t(&[1, 3, 1, 1], &[1.0, 1.0, 1.0]);
    close(&run(SsdScan { chunk: Dim::constant(2) }, &[&x, &dt, &a, &ones, &ones]), &[1, 3, 1, 1], &[1.0, 2.5, 5.25]);
}

/// Each primitive's expansion (what code generators compile instead of it) means what the
/// primitive means, on random inputs of several shapes, including all-zero rows (the
/// scales' floor) and values on rounding ties.
#[test]
fn expansions_equal_their_primitives() {
    use hyb_compiler::ir::{Graph, Op, TensorType};
    use std::collections::HashMap;
    let mut seed = 7;
    let prims: [Prim; 2] = [TernaryQuant.into(), Int8Quant.into()];
    for prim in &prims {
        for shape in [vec![1usize], vec![3, 5], vec![2, 3, 7], vec![4, 64]] {
            for case in 0..3 {
                let mut x = random(&shape, &mut seed, 2.0, 0.0);
                if case == 1 {
                    x.data.iter_mut().take(shape[shape.len() - 1]).for_each(|v| *v = 0.0);
                }
                if case == 2 {
                    // Halves of the int8 grid: x·127/max lands on .5 for every element.
                    let last = *shape.last().unwrap();
                    for (i, v) in x.data.iter_mut().enumerate() {
                        *v = if i % last == 0 { 1.0 } else { ((i % 9) as f64 - 4.5) / 127.0 };
                    }
                }
                let mut g = Graph::default();
                let ty =
                    TensorType { shape: dims(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>()), dtype: DType::F64 };
                let input = g.add(Op::Input("x".into()), vec![], ty);
                g.outputs = prim.expand(&mut g, &[input]).expect("the quantisers expand");
                let inputs = HashMap::from([("x".to_string(), x.clone())]);
                let got = hyb_compiler::reference::run::<f64>(&g, &HashMap::new(), &inputs).unwrap().remove(0);
                let want = run(prim.clone(), &[&x]);
                close(&got, &want.shape, &want.data);
            }
        }
    }
}
