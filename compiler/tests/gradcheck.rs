//! Every primitive's and composite's gradient (from the autodiff graph transform) against
//! central finite differences of the float64 reference interpreter.

use hyb_compiler::autodiff::gradients;
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::ir::{Graph, Init, NodeId, Op, ParamSpec, TensorType};
use hyb_compiler::ops::{
    Binary, Cast, CausalConv1d, CausalMask, Clamp, Concat, Embedding, Int8Quant, Pad, Permute, Pow, Prim, Primitive,
    ReduceOp, Rope, RopeGrad, Select, Slice, SsdScan, TernaryQuant, Transpose, Tril, Unary, F64,
};
use hyb_compiler::reference::{run, Tensor};
use hyb_dsl::dim::Dim;
use hyb_dsl::inits::Role;
use hyb_dsl::value::DType;
use std::collections::HashMap;

struct Case {
    g: Graph,
    values: HashMap<String, Tensor<f64>>,
    inputs: HashMap<String, Tensor<f64>>,
    /// Parameters to differentiate (by node).
    wrt: Vec<NodeId>,
    seed: u64,
}

fn rand(seed: &mut u64) -> f64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

impl Case {
    fn new(seed: u64) -> Case {
        Case { g: Graph::default(), values: HashMap::new(), inputs: HashMap::new(), wrt: vec![], seed }
    }

    /// A differentiated parameter with values `offset + scale·U(-1, 1)`.
    fn param(&mut self, shape: &[usize], offset: f64, scale: f64) -> NodeId {
        let name = format!("p{}", self.g.params.len());
        let n = self.leaf(&name, shape, offset, scale);
        self.wrt.push(n);
        n
    }

    fn leaf(&mut self, name: &str, shape: &[usize], offset: f64, scale: f64) -> NodeId {
        self.leaf_of(name, shape, offset, scale, DType::F32)
    }

    fn leaf_of(&mut self, name: &str, shape: &[usize], offset: f64, scale: f64, dtype: DType) -> NodeId {
        self.g.params.push(ParamSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
            init: Init { name: "zeros".into(), args: vec![] },
            role: Role::Hidden,
            shard: None,
            moments: None,
        });
        let ty = TensorType { shape: shape.iter().map(|&d| Dim::constant(d as i64)).collect(), dtype };
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| offset + scale * rand(&mut self.seed)).collect();
        self.values.insert(name.to_string(), Tensor::new(shape.to_vec(), data));
        self.g.add(Op::Param(self.g.params.len() - 1), vec![], ty)
    }

    /// Loss = Σ y·R for a fixed random R, so every output element matters.
    fn check(self, y: NodeId, tol: f64) {
        let shape: Vec<usize> = self.g.shape(y).iter().map(|d| d.as_const().unwrap() as usize).collect();
        self.check_shaped(y, &shape, tol)
    }

    /// As [`Case::check`], for an output whose shape has symbols (`shape` is its value).
    fn check_shaped(mut self, y: NodeId, shape: &[usize], tol: f64) {
        let ty = self.g.nodes[y].ty.clone();
        let r = self.g.add(Op::Input("loss_weights".into()), vec![], ty);
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| rand(&mut self.seed)).collect();
        self.inputs.insert("loss_weights".into(), Tensor::new(shape.to_vec(), data));
        let yr = self.g.binary(Binary::Mul, y, r);
        let loss = self.g.sum_all(yr);
        let mut bwd = self.g.clone();
        let grads = gradients(&mut bwd, loss, &self.wrt).unwrap();
        bwd.outputs = grads.clone();
        let analytic = run(&bwd, &self.values, &self.inputs).unwrap();
        let mut fwd = self.g.clone();
        fwd.outputs = vec![loss];
        for (k, &w) in self.wrt.iter().enumerate() {
            let Op::Param(p) = self.g.nodes[w].op else { unreachable!() };
            let name = self.g.params[p].name.clone();
            let base = self.values[&name].clone();
            let mut worst: f64 = 0.0;
            let mut scale: f64 = 1e-8;
            for i in 0..base.len() {
                // Fourth-order central difference: truncation O(h⁴), rounding O(ε/h).
                let h = 1e-4 * base.data[i].abs().max(1.0);
                let mut at = |delta: f64| {
                    let mut v = base.clone();
                    v.data[i] += delta;
                    self.values.insert(name.clone(), v);
                    run(&fwd, &self.values, &self.inputs).unwrap()[0].data[0]
                };
                let numeric = (8.0 * (at(h) - at(-h)) - (at(2.0 * h) - at(-2.0 * h))) / (12.0 * h);
                worst = worst.max((numeric - analytic[k].data[i]).abs());
                scale = scale.max(numeric.abs());
            }
            self.values.insert(name.clone(), base);
            assert!(worst <= tol * scale, "gradient of {name}: max error {worst:e} vs scale {scale:e}");
        }
    }
}

const TOL: f64 = 1e-6;

fn pointwise_case(prim: Unary, offset: f64) {
    let mut c = Case::new(prim as u64 + 1);
    let x = c.param(&[2, 3], offset, 0.8);
    let y = c.g.unary(prim, x);
    c.check(y, TOL);
}

#[test]
fn unary_pointwise() {
    use Unary::*;
    for prim in [Neg, Exp, Sigmoid, Silu, Softplus, Tanh, Gelu] {
        pointwise_case(prim, 0.0);
    }
    for prim in [Log, Sqrt, Rsqrt, Abs] {
        pointwise_case(prim, 1.5);
    }
}

#[test]
fn binary_pointwise_with_broadcasting() {
    use Binary::*;
    for prim in [Add, Sub, Mul, Div, Maximum, Minimum] {
        let mut c = Case::new(prim as u64 + 7);
        let a = c.param(&[2, 3], 0.0, 1.0);
        let b = c.param(&[3], 2.0, 0.5);
        let y = c.g.binary(prim, a, b);
        c.check(y, TOL);
        let mut c = Case::new(prim as u64 + 9);
        let a = c.param(&[2, 1], 2.0, 0.5);
        let b = c.param(&[1, 3], 0.0, 1.0);
        let y = c.g.binary(prim, b, a);
        c.check(y, TOL);
    }
}

#[test]
fn pow_clamp_cast() {
    let mut c = Case::new(3);
    let x = c.param(&[4], 1.5, 0.5);
    let y = c.g.apply(Pow { exponent: F64(2.5) }, vec![x]);
    c.check(y, TOL);
    let mut c = Case::new(4);
    let x = c.param(&[6], 0.0, 2.0);
    let y = c.g.apply(Clamp { low: F64(-0.5), high: F64(0.7) }, vec![x]);
    c.check(y, TOL);
    let mut c = Case::new(5);
    let x = c.param(&[3], 0.0, 1.0);
    let y = c.g.apply(Cast { dtype: DType::F64 }, vec![x]);
    c.check(y, TOL);
}

#[test]
fn select_sends_the_gradient_to_the_value_it_picked() {
    let mut c = Case::new(6);
    // The mask is a leaf no gradient flows to; the second value broadcasts.
    let mask = c.leaf("mask", &[2, 3], 0.0, 1.0);
    let a = c.param(&[2, 3], 0.0, 1.0);
    let b = c.param(&[1, 3], 0.5, 1.0);
    let y = c.g.apply(Select, vec![mask, a, b]);
    c.check(y, TOL);
}

#[test]
fn piecewise_constant_ops_have_zero_or_straight_through_gradients() {
    // round/sign/step: zero gradient; the quantisers: identity (straight-through).
    for (prim, identity) in [
        (Prim::Unary(Unary::Round), false),
        (Prim::Unary(Unary::Sign), false),
        (Prim::Unary(Unary::Step), false),
        (Prim::TernaryQuant(TernaryQuant), true),
        (Prim::Int8Quant(Int8Quant), true),
    ] {
        let mut c = Case::new(11);
        let x = c.param(&[2, 4], 0.0, 1.0);
        let y = c.g.apply(prim.clone(), vec![x]);
        let r = c.leaf("r", &[2, 4], 0.0, 1.0);
        let yr = c.g.binary(Binary::Mul, y, r);
        let loss = c.g.sum_all(yr);
        let grads = gradients(&mut c.g, loss, &[x]).unwrap();
        c.g.outputs = grads;
        let got = run(&c.g, &c.values, &c.inputs).unwrap().remove(0);
        let want: Vec<f64> = if identity { c.values["r"].data.clone() } else { vec![0.0; 8] };
        assert_eq!(got.data, want, "{}", prim.name());
    }
}

#[test]
fn reductions() {
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
        for (axis, keep) in [(-1, true), (0, false), (1, true)] {
            let mut c = Case::new((op as u64).wrapping_mul(31).wrapping_add(axis as u64));
            let x = c.param(&[3, 4], 0.0, 1.0);
            let y = c.g.reduce(op, x, axis, keep);
            c.check(y, TOL);
        }
    }
}

fn ints(v: &[i64]) -> Vec<Dim> {
    v.iter().map(|&d| Dim::constant(d)).collect()
}

#[test]
fn movement() {
    let mut c = Case::new(30);
    let x = c.param(&[2, 3, 4], 0.0, 1.0);
    let y = c.g.reshape(x, ints(&[6, 4]));
    c.check(y, TOL);
    let mut c = Case::new(31);
    let x = c.param(&[2, 3, 4], 0.0, 1.0);
    let y = c.g.apply(Permute { dims: vec![2, 0, 1] }, vec![x]);
    c.check(y, TOL);
    let mut c = Case::new(32);
    let x = c.param(&[2, 3, 4], 0.0, 1.0);
    let y = c.g.apply(Transpose { dim0: 0, dim1: 2 }, vec![x]);
    c.check(y, TOL);
    let mut c = Case::new(33);
    let x = c.param(&[3, 1], 0.0, 1.0);
    let y = c.g.broadcast(x, ints(&[2, 3, 4]));
    c.check(y, TOL);
    let mut c = Case::new(34);
    let x = c.param(&[3, 5], 0.0, 1.0);
    let y = c.g.apply(Slice { axis: 1, start: Dim::constant(1), end: Dim::constant(4) }, vec![x]);
    c.check(y, TOL);
    let mut c = Case::new(35);
    let a = c.param(&[2, 3], 0.0, 1.0);
    let b = c.param(&[2, 2], 0.0, 1.0);
    let y = c.g.apply(Concat { axis: -1 }, vec![a, b]);
    c.check(y, TOL);
    let mut c = Case::new(36);
    let x = c.param(&[2, 3], 0.0, 1.0);
    let y = c.g.apply(Pad { axis: 0, before: Dim::constant(1), after: Dim::constant(2) }, vec![x]);
    c.check(y, TOL);
}

/// The pieces of a split reach the whole's gradient as pads over adjacent ranges, which
/// autodiff joins into one concat (a run short of the whole axis, padded after): the
/// gradient still matches finite differences, with a piece used twice and an overlapping
/// slice added to the concat as before.
#[test]
fn the_pieces_of_a_split_join_into_one_concat() {
    let build = |c: &mut Case| {
        let x = c.param(&[3, 10], 0.0, 1.0);
        let w = c.param(&[2, 8], 0.0, 1.0);
        let slice = |c: &mut Case, x, axis, start, end| {
            c.g.apply(Slice { axis, start: Dim::constant(start), end: Dim::constant(end) }, vec![x])
        };
        let (a, b, d) = (slice(c, x, 1, 0, 3), slice(c, x, -1, 3, 7), slice(c, x, 1, 7, 10));
        let overlap = slice(c, x, 1, 2, 5);
        let (u, v) = (slice(c, w, 1, 1, 3), slice(c, w, 1, 3, 6));
        let aa = c.g.binary(Binary::Mul, a, a);
        let eb = c.g.unary(Unary::Exp, b);
        let uv = c.g.apply(Concat { axis: 1 }, vec![u, v]);
        let uv = c.g.unary(Unary::Tanh, uv);
        let y = c.g.apply(Concat { axis: 1 }, vec![aa, eb, d, overlap, d]);
        let uv = c.g.reshape(uv, ints(&[2, 5]));
        let pad = c.g.apply(Pad { axis: 0, before: Dim::constant(0), after: Dim::constant(1) }, vec![uv]);
        let pad = c.g.apply(Pad { axis: 1, before: Dim::constant(0), after: Dim::constant(11) }, vec![pad]);
        c.g.binary(Binary::Add, y, pad)
    };
    let mut c = Case::new(90);
    let y = build(&mut c);
    let loss = c.g.sum_all(y);
    let mut g = c.g.clone();
    let grads = gradients(&mut g, loss, &c.wrt).unwrap();
    // The terms of a gradient's sum, and the inputs of each that is a concat.
    let terms = |n: NodeId| {
        let (mut todo, mut terms) = (vec![n], vec![]);
        while let Some(n) = todo.pop() {
            match &g.nodes[n].op {
                Op::Prim(Prim::Binary(Binary::Add)) => todo.extend(&g.nodes[n].inputs),
                _ => terms.push(n),
            }
        }
        terms
    };
    let concat_inputs = |n: NodeId| match &g.nodes[n].op {
        Op::Prim(Prim::Concat(_)) => Some(g.nodes[n].inputs.len()),
        Op::Prim(Prim::Pad(_)) => match &g.nodes[g.nodes[n].inputs[0]].op {
            Op::Prim(Prim::Concat(_)) => Some(g.nodes[g.nodes[n].inputs[0]].inputs.len()),
            _ => None,
        },
        _ => None,
    };
    let x_terms = terms(grads[0]);
    assert_eq!(x_terms.len(), 2, "x: the three pieces joined, and the overlapping slice");
    assert_eq!(x_terms.iter().filter_map(|&t| concat_inputs(t)).collect::<Vec<_>>(), vec![3]);
    assert_eq!(terms(grads[1]).iter().map(|&t| concat_inputs(t)).collect::<Vec<_>>(), vec![Some(2)], "w: padded");
    let mut c = Case::new(91);
    let y = build(&mut c);
    c.check(y, TOL);
}

#[test]
fn embedding_table_gradient() {
    let mut c = Case::new(40);
    let table = c.param(&[5, 3], 0.0, 1.0);
    let ids = c.g.add(
        Op::Input("ids".into()),
        vec![],
        TensorType { shape: vec![Dim::constant(2), Dim::constant(3)], dtype: DType::I64 },
    );
    c.inputs.insert("ids".into(), Tensor::new(vec![2, 3], vec![4.0, 1.0, 4.0, 0.0, 2.0, 1.0]));
    let y = c.g.apply(Embedding, vec![table, ids]);
    c.check(y, TOL);
}

#[test]
fn matmul_all_transposes_and_batch_broadcast() {
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let mut c = Case::new(50 + ta as u64 * 2 + tb as u64);
        let a = c.param(if ta { &[2, 4, 3] } else { &[2, 3, 4] }, 0.0, 1.0);
        let b = c.param(if tb { &[5, 4] } else { &[4, 5] }, 0.0, 1.0);
        let y = c.g.matmul(a, b, ta, tb);
        c.check(y, TOL);
    }
}

#[test]
fn causal_conv1d_with_and_without_bias() {
    for bias in [true, false] {
        let mut c = Case::new(60 + bias as u64);
        let x = c.param(&[2, 5, 3], 0.0, 1.0);
        let w = c.param(&[3, 4], 0.0, 1.0);
        let mut inputs = vec![x, w];
        if bias {
            inputs.push(c.param(&[3], 0.0, 1.0));
        }
        let y = c.g.apply(CausalConv1d, inputs);
        c.check(y, TOL);
    }
}

#[test]
fn ssd_scan_all_inputs() {
    for (t, chunk, heads, groups) in [(5, 2, 2, 1), (6, 4, 4, 2)] {
        let mut c = Case::new(70 + t as u64);
        let x = c.param(&[2, t, heads, 3], 0.0, 1.0);
        let dt = c.param(&[2, t, heads], 0.6, 0.3);
        let a = c.param(&[heads], -0.8, 0.3);
        let b = c.param(&[2, t, groups, 2], 0.0, 1.0);
        let cm = c.param(&[2, t, groups, 2], 0.0, 1.0);
        let y = c.g.apply(SsdScan { chunk: Dim::constant(chunk) }, vec![x, dt, a, b, cm]);
        c.check(y, TOL);
    }
}

#[test]
fn rope_causal_mask_tril() {
    let mut c = Case::new(80);
    let x = c.param(&[1, 3, 2, 4], 0.0, 1.0);
    let y = c.g.apply(Rope { theta: F64(100.0) }, vec![x]);
    c.check(y, TOL);
    let mut c = Case::new(81);
    let x = c.param(&[2, 3, 3], 0.0, 1.0);
    let m = c.g.apply(CausalMask, vec![x]);
    let y = c.g.unary(Unary::Exp, m);
    c.check(y, TOL);
    let mut c = Case::new(82);
    let x = c.param(&[3, 3], 0.0, 1.0);
    let y = c.g.apply(Tril, vec![x]);
    c.check(y, TOL);
    let mut c = Case::new(83);
    let x = c.param(&[1, 3, 1, 4], 0.0, 1.0);
    let y = c.g.apply(RopeGrad { theta: F64(50.0) }, vec![x]);
    c.check(y, TOL);
}

/// Whole models from .hyb source: every parameter's gradient against finite differences.
fn model_case(src: &str, seed: u64) {
    let src = src.to_string();
    let trace = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let checked = hyb_compiler::check::check_text("gradcheck.hyb", &src);
            assert!(
                checked.diagnostics.is_empty(),
                "{:?}",
                checked.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>()
            );
            checked.models.into_iter().next().unwrap().1.trace
        })
        .unwrap()
        .join()
        .unwrap();
    let g = elaborate(&trace);
    let mut c = Case::new(seed);
    let logits = g.outputs[0];
    c.g = g;
    for (i, p) in c.g.params.clone().iter().enumerate() {
        let n: usize = p.shape.iter().product();
        let offset = if p.init.name == "ones" {
            1.0
        } else if p.name.ends_with("A_log") {
            0.3
        } else {
            0.0
        };
        let data = (0..n).map(|_| offset + 0.3 * rand(&mut c.seed)).collect();
        c.values.insert(p.name.clone(), Tensor::new(p.shape.clone(), data));
        c.wrt.push(c.g.param_node(i).unwrap());
    }
    c.inputs.insert("ids".into(), Tensor::new(vec![2, 5], vec![1.0, 5.0, 2.0, 7.0, 3.0, 0.0, 6.0, 6.0, 4.0, 2.0]));
    c.check_shaped(logits, &[2, 5, 8], TOL);
}

const HEADER: &str = "import std.layers\n\nmodel m {\n    vocab = 8\n    d = 8\n";

#[test]
fn attention_composite() {
    model_case(&format!("{HEADER}    layers = [attention_layer]\n    heads = 2\n    kv_heads = 1\n    mup key_multiplier = 0.7\n}}\n"), 90);
}

#[test]
fn mamba2_composite() {
    model_case(&format!("{HEADER}    layers = [mamba_layer]\n    ssm_heads = 2\n    ssm_head_dim = 4\n    d_state = 3\n    groups = 2\n    chunk = 2\n    rms_norm = true\n}}\n"), 91);
}

#[test]
fn swiglu_composite() {
    model_case(&format!("{HEADER}    layers = [mlp_layer]\n    d_ff = 12\n    mup gate_multiplier = 1.3, down_multiplier = 0.6\n}}\n"), 92);
}

#[test]
fn tiny_falcon_h1() {
    model_case(
        &format!(
            "{HEADER}    layers = pattern(\"H{{2}}\", H = falcon_h1_layer)\n    heads = 2\n    kv_heads = 1\n    ssm_heads = 2\n    ssm_head_dim = 4\n    d_state = 3\n    chunk = 3\n    d_ff = 12\n    attention_bias = true\n    projectors_bias = true\n    mup ssm_out_multiplier = 0.8, embedding_multiplier = 1.5, lm_head_multiplier = 0.5\n}}\n"
        ),
        93,
    );
}

/// BitLinear's gradient is straight-through: with respect to the weight it is the gradient
/// of the matmul at the ternary weight, with respect to the input the gradient at the
/// quantised input. Checked against finite differences of that smooth surrogate.
#[test]
fn bitlinear_straight_through_gradient() {
    let mut c = Case::new(97);
    let x = c.param(&[2, 3, 8], 0.0, 1.0);
    let w = c.param(&[5, 8], 0.0, 0.5);
    let xq = c.g.apply(Int8Quant, vec![x]);
    let wq = c.g.apply(TernaryQuant, vec![w]);
    let y = c.g.matmul(xq, wq, false, true);
    let y = c.g.unary(Unary::Tanh, y);
    let r = c.leaf("r", &[2, 3, 5], 0.0, 1.0);
    let yr = c.g.binary(Binary::Mul, y, r);
    let loss = c.g.sum_all(yr);
    let mut bwd = c.g.clone();
    let grads = gradients(&mut bwd, loss, &[x, w]).unwrap();
    bwd.outputs = grads;
    bwd.outputs.extend([xq, wq]);
    let out = run(&bwd, &c.values, &c.inputs).unwrap();
    // The surrogate: the same function of the quantised values, which are now free.
    let mut s = Case::new(98);
    let u = s.param(&[2, 3, 8], 0.0, 0.0);
    let v = s.param(&[5, 8], 0.0, 0.0);
    s.values.insert("p0".into(), out[2].clone());
    s.values.insert("p1".into(), out[3].clone());
    let y = s.g.matmul(u, v, false, true);
    let y = s.g.unary(Unary::Tanh, y);
    let r2 = s.leaf("r", &[2, 3, 5], 0.0, 0.0);
    s.values.insert("r".into(), c.values["r"].clone());
    let yr = s.g.binary(Binary::Mul, y, r2);
    let loss2 = s.g.sum_all(yr);
    let mut sb = s.g.clone();
    let surrogate = gradients(&mut sb, loss2, &[u, v]).unwrap();
    sb.outputs = surrogate;
    let want = run(&sb, &s.values, &s.inputs).unwrap();
    assert_eq!(out[0], want[0], "input gradient is not straight-through");
    assert_eq!(out[1], want[1], "weight gradient is not straight-through");
    // And the surrogate's own gradient is right.
    let mut s2 = Case::new(98);
    let u = s2.param(&[2, 3, 8], 0.0, 0.0);
    let v = s2.param(&[5, 8], 0.0, 0.0);
    s2.values.insert("p0".into(), out[2].clone());
    s2.values.insert("p1".into(), out[3].clone());
    let y = s2.g.matmul(u, v, false, true);
    let y = s2.g.unary(Unary::Tanh, y);
    s2.check(y, TOL);
}

#[test]
fn no_gradient_flows_through_stop_gradient() {
    use hyb_compiler::ops::StopGradient;
    // y = x · stop(x): the gradient is stop(x) = x, not 2x.
    let mut c = Case::new(7);
    let x = c.param(&[5], 0.2, 1.0);
    let stopped = c.g.apply(StopGradient, vec![x]);
    let y = c.g.binary(Binary::Mul, x, stopped);
    let loss = c.g.sum_all(y);
    let grads = gradients(&mut c.g, loss, &[x]).unwrap();
    c.g.outputs = vec![grads[0]];
    let got = run(&c.g, &c.values, &c.inputs).unwrap().remove(0);
    assert_eq!(got.data, c.values["p0"].data);
}
