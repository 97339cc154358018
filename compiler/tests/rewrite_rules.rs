//! Every rewrite rule is sound: on random shapes and inputs, a graph matching the rule's
//! left side is saturated with that rule alone (which must fire), and then every e-node of
//! every e-class — original or added — is evaluated by the float64 reference interpreter
//! on its children's values and must equal its class's value. Rules about collectives are
//! checked on simulated ranks holding different values.

use egg::Id;
use hyb_compiler::ir::{Graph, Init, NodeId, Op, ParamSpec, TensorType};
use hyb_compiler::ops::{
    AllGather, AllReduce, Binary, CausalConv1d, CausalMask, Concat, DocumentConv1d, DocumentMask, DocumentRope,
    Int8Quant, ReduceOp, Rope, ScaledInt8, ScaledTernary, Shard, Slice, TernaryQuant, TpCopy, Transpose, Unary, F64,
};
use hyb_compiler::reference::{run_ranks, Tensor};
use hyb_compiler::rewrite::lang::{EGraph, OpKind};
use hyb_compiler::rewrite::{load, region, rules, run_rules, Options};
use hyb_dsl::dim::Dim;
use hyb_dsl::inits::Role;
use hyb_dsl::value::DType;
use proptest::prelude::*;
use std::collections::HashMap;

struct Case {
    g: Graph,
    values: HashMap<String, Tensor<f64>>,
    seed: u64,
    ranks: usize,
}

fn dims(s: &[usize]) -> Vec<Dim> {
    s.iter().map(|&d| Dim::constant(d as i64)).collect()
}

impl Case {
    fn new(seed: u64) -> Case {
        Case { g: Graph::default(), values: HashMap::new(), seed, ranks: 1 }
    }

    fn on_ranks(ranks: usize, seed: u64) -> Case {
        Case { ranks, ..Case::new(seed) }
    }

    fn rand(&mut self) -> f64 {
        self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// A parameter with random values in (-1, 1).
    fn param(&mut self, shape: &[usize]) -> NodeId {
        let name = format!("p{}", self.g.params.len());
        self.g.params.push(ParamSpec {
            name: name.clone(),
            shape: shape.to_vec(),
            init: Init { name: "zeros".into(), args: vec![] },
            role: Role::Hidden,
            shard: None,
            moments: None,
        });
        let data = (0..shape.iter().product::<usize>()).map(|_| self.rand()).collect();
        self.values.insert(name, Tensor::new(shape.to_vec(), data));
        let ty = TensorType { shape: dims(shape), dtype: DType::F32 };
        self.g.add(Op::Param(self.g.params.len() - 1), vec![], ty)
    }

    fn transpose(&mut self, x: NodeId, i: i64, j: i64) -> NodeId {
        self.g.apply(Transpose { dim0: i, dim1: j }, vec![x])
    }

    fn reshape(&mut self, x: NodeId, s: &[usize]) -> NodeId {
        self.g.reshape(x, dims(s))
    }

    fn broadcast(&mut self, x: NodeId, s: &[usize]) -> NodeId {
        self.g.broadcast(x, dims(s))
    }

    fn concat(&mut self, xs: Vec<NodeId>, axis: i64) -> NodeId {
        self.g.apply(Concat { axis }, xs)
    }

    /// Packed-row positions `[b, t]`: each token's place in its document, whole numbers
    /// below 3, so documents are short.
    fn positions(&mut self, b: usize, t: usize) -> NodeId {
        let p = self.param(&[b, t]);
        let name = self.g.params.last().expect("just added").name.clone();
        let places = self.values[&name].map(|v| ((v + 1.0) * 1.5).floor());
        self.values.insert(name, places);
        p
    }

    /// The causal conv of `x [b, t, c]` with taps `[c, k]`, a bias if `bias`, over packed
    /// rows if `documents`.
    fn conv(&mut self, x: NodeId, k: usize, bias: bool, documents: bool) -> NodeId {
        let (b, t, c) = match self.g.shape(x) {
            [b, t, c] => {
                (b.as_const().unwrap() as usize, t.as_const().unwrap() as usize, c.as_const().unwrap() as usize)
            }
            _ => unreachable!("x is [B, T, C]"),
        };
        let mut inputs = vec![x, self.param(&[c, k])];
        if bias {
            inputs.push(self.param(&[c]));
        }
        match documents {
            true => {
                inputs.push(self.positions(b, t));
                self.g.apply(DocumentConv1d { bias }, inputs)
            }
            false => self.g.apply(CausalConv1d, inputs),
        }
    }

    /// Saturates with `rule` alone, checks it fired, and checks every e-node.
    fn check(mut self, outputs: Vec<NodeId>, rule: &str) {
        self.g.outputs = outputs;
        let regions = region::partition(&self.g);
        assert_eq!(regions.len(), 1);
        let (eg, _) = load(&self.g, &regions[0]);
        // Each rank holds its own value of every leaf.
        let leaves: Vec<Vec<Tensor<f64>>> = regions[0]
            .leaves
            .iter()
            .map(|&l| match self.g.nodes[l].op {
                Op::Param(p) => {
                    let v = &self.values[&self.g.params[p].name];
                    (0..self.ranks).map(|r| v.map(|x| x * (1.0 + 0.5 * r as f64) + 0.1 * r as f64)).collect()
                }
                _ => unreachable!("test leaves are parameters"),
            })
            .collect();
        let chosen: Vec<_> = rules::all().into_iter().filter(|r| r.name == rule).collect();
        assert_eq!(chosen.len(), 1, "unknown rule {rule}");
        let (eg, _) = run_rules(eg, &chosen, &Options::default());
        assert!(eg.analysis.fired.get(rule).copied().unwrap_or(0) > 0, "{rule} did not fire");
        verify(&eg, &leaves);
    }
}

/// Each rank's value of e-node `n` given its children's values.
fn eval(
    eg: &EGraph,
    class: Id,
    n: &hyb_compiler::rewrite::lang::ENode,
    leaves: &[Vec<Tensor<f64>>],
    values: &HashMap<Id, Vec<Tensor<f64>>>,
) -> Vec<Tensor<f64>> {
    let ranks = leaves.first().map_or(1, Vec::len);
    let op = match eg.analysis.op(n) {
        OpKind::Leaf(l) => return leaves[*l].clone(),
        OpKind::Const(bits, _) => return vec![Tensor::scalar(f64::from_bits(*bits)); ranks],
        OpKind::Prim(prim) => Op::Prim(prim.clone()),
        OpKind::Kernel(k) => Op::Kernel(Box::new(eg.analysis.kernels[*k].clone())),
        OpKind::Output(i) => Op::Output(*i),
    };
    let mut g = Graph::default();
    let mut inputs: Vec<HashMap<String, Tensor<f64>>> = vec![HashMap::new(); ranks];
    let mut ids = Vec::new();
    for (i, &c) in n.children.iter().enumerate() {
        let c = eg.find(c);
        ids.push(g.add(Op::Input(i.to_string()), vec![], eg[c].data.ty.clone()));
        for (r, input) in inputs.iter_mut().enumerate() {
            input.insert(i.to_string(), values[&c][r].clone());
        }
    }
    let out = g.add(op, ids, eg[class].data.ty.clone());
    g.outputs = vec![out];
    let none = HashMap::new();
    let params: Vec<_> = (0..ranks).map(|_| &none).collect();
    let inputs: Vec<_> = inputs.iter().collect();
    run_ranks(&g, &params, &inputs).expect("runs").into_iter().map(|mut o| o.remove(0)).collect()
}

fn verify(eg: &EGraph, leaves: &[Vec<Tensor<f64>>]) {
    let mut values: HashMap<Id, Vec<Tensor<f64>>> = HashMap::new();
    loop {
        let mut progress = false;
        for class in eg.classes() {
            if values.contains_key(&class.id) {
                continue;
            }
            if let Some(n) = class.nodes.iter().find(|n| n.children.iter().all(|c| values.contains_key(&eg.find(*c)))) {
                let v = eval(eg, class.id, n, leaves, &values);
                values.insert(class.id, v);
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    let mut checked = 0;
    for class in eg.classes() {
        let want = values.get(&class.id).unwrap_or_else(|| panic!("class {} has no value", class.id));
        for n in &class.nodes {
            for (got, want) in eval(eg, class.id, n, leaves, &values).iter().zip(want) {
                assert_eq!(got.shape, want.shape, "{:?}", eg.analysis.op(n));
                let scale = want.data.iter().filter(|v| v.is_finite()).fold(1.0f64, |m, v| m.max(v.abs()));
                for (a, b) in got.data.iter().zip(&want.data) {
                    // Masked scores are −∞ on both sides.
                    let same = a == b || (a - b).abs() <= 1e-12 * scale;
                    assert!(same, "{:?}: {a} vs {b}", eg.analysis.op(n));
                }
            }
            checked += 1;
        }
    }
    assert!(checked > eg.number_of_classes(), "some class has an alternative");
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 12, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn transpose_cancel(a in 1..4usize, b in 1..4usize, c in 2..4usize, i in 0..3i64, j in 0..3i64, seed in 0..1000u64) {
        let mut k = Case::new(seed);
        let x = k.param(&[a, b, c]);
        let t = k.transpose(x, i, j);
        let y = k.transpose(t, j - 3, i);
        let out = k.g.unary(Unary::Exp, y);
        k.check(vec![out], "transpose-cancel");
    }

    #[test]
    fn reshape_fold(a in 1..4usize, b in 1..4usize, c in 1..4usize, seed in 0..1000u64) {
        let mut k = Case::new(seed);
        let x = k.param(&[a, b, c]);
        let r1 = k.reshape(x, &[a * b, c]);
        let r2 = k.reshape(r1, &[a, b * c]);
        let r3 = k.reshape(r2, &[a, b, c]);
        let out = k.g.binary(Binary::Add, r3, x);
        let flat = k.reshape(r2, &[a * b * c]);
        k.check(vec![out, flat], "reshape-fold");
    }

    #[test]
    fn broadcast_fold(a in 1..4usize, b in 1..4usize, c in 1..4usize, seed in 0..1000u64) {
        let mut k = Case::new(seed);
        let x = k.param(&[1, c]);
        let b1 = k.broadcast(x, &[b, c]);
        let b2 = k.broadcast(b1, &[a, b, c]);
        let same = k.broadcast(x, &[1, c]);
        k.check(vec![b2, same], "broadcast-fold");
    }

    #[test]
    fn scalar_identity(a in 1..4usize, b in 1..4usize, which in 0..6usize, seed in 0..1000u64) {
        let mut k = Case::new(seed);
        let x = k.param(&[a, b]);
        let (prim, unit, left) = [(Binary::Mul, 1.0, false), (Binary::Mul, 1.0, true), (Binary::Div, 1.0, false),
            (Binary::Add, 0.0, false), (Binary::Add, 0.0, true), (Binary::Sub, 0.0, false)][which];
        let c = k.g.constant(unit);
        let y = if left { k.g.binary(prim, c, x) } else { k.g.binary(prim, x, c) };
        k.check(vec![y], "scalar-identity");
    }

    #[test]
    fn scalar_reassociate(a in 1..4usize, c1 in -3.0..3.0f64, c2 in -3.0..3.0f64, left in any::<bool>(), seed in 0..1000u64) {
        let mut k = Case::new(seed);
        let x = k.param(&[a, 3]);
        let s1 = k.g.scale(x, c1);
        let s2 = k.g.constant(c2);
        let y = if left { k.g.binary(Binary::Mul, s2, s1) } else { k.g.binary(Binary::Mul, s1, s2) };
        k.check(vec![y], "scalar-reassociate");
    }

    #[test]
    fn matmul_scale(m in 1..4usize, kk in 1..5usize, n in 1..5usize, ta in any::<bool>(), tb in any::<bool>(),
                    c in -2.0..2.0f64, on_weight in any::<bool>(), seed in 0..1000u64) {
        for rule in ["matmul-scale-out", "matmul-scale-weight"] {
            let mut k = Case::new(seed);
            let a = k.param(&if ta { [2, kk, m] } else { [2, m, kk] });
            let w = k.param(&if tb { [n, kk] } else { [kk, n] });
            let (a, w) = if on_weight && rule == "matmul-scale-out" { (a, k.g.scale(w, c)) } else { (k.g.scale(a, c), w) };
            let y = k.g.matmul(a, w, ta, tb);
            k.check(vec![y], rule);
        }
    }

    #[test]
    fn linear_concat_split(t in 1..4usize, k1 in 1..4usize, k2 in 1..4usize, k3 in 1..3usize, n in 1..4usize,
                           tb in any::<bool>(), seed in 0..1000u64) {
        let mut k = Case::new(seed);
        let parts = vec![k.param(&[2, t, k1]), k.param(&[2, t, k2]), k.param(&[2, t, k3])];
        let x = k.concat(parts, -1);
        let kk = k1 + k2 + k3;
        let w = k.param(&if tb { [n, kk] } else { [kk, n] });
        let y = k.g.matmul(x, w, false, tb);
        k.check(vec![y], "linear-concat-split");
    }

    #[test]
    fn linear_concat_merge(t in 1..4usize, k1 in 1..4usize, k2 in 1..4usize, n in 1..4usize, tb in any::<bool>(),
                           seed in 0..1000u64) {
        let mut k = Case::new(seed);
        let (a, b) = (k.param(&[2, t, k1]), k.param(&[2, t, k2]));
        let w1 = k.param(&if tb { [n, k1] } else { [k1, n] });
        let w2 = k.param(&if tb { [n, k2] } else { [k2, n] });
        let ya = k.g.matmul(a, w1, false, tb);
        let yb = k.g.matmul(b, w2, false, tb);
        let y = k.g.binary(Binary::Add, ya, yb);
        k.check(vec![y], "linear-concat-merge");
    }

    #[test]
    fn merge_gemms(t in 1..4usize, d in 1..5usize, n1 in 1..4usize, n2 in 1..4usize, n3 in 1..4usize,
                   tb in any::<bool>(), seed in 0..1000u64) {
        let mut k = Case::new(seed);
        let x = k.param(&[2, t, d]);
        let mut outs = Vec::new();
        for n in [n1, n2, n3] {
            let w = k.param(&if tb { [n, d] } else { [d, n] });
            outs.push(k.g.matmul(x, w, false, tb));
        }
        k.check(outs, "merge-gemms");
    }

    #[test]
    fn flash_attention(b in 1..3usize, t in 1..6usize, kv in 1..3usize, groups in 1..4usize, half in 1..3usize,
                       rope in any::<bool>(), packed in any::<bool>(), seed in 0..1000u64) {
        let mut k = Case::new(seed);
        let (h, hd) = (kv * groups, 2 * half);
        let positions = packed.then(|| k.positions(b, t));
        let theta = F64(500.0);
        let roped = |k: &mut Case, x| match (rope, positions) {
            (false, _) => x,
            (true, None) => k.g.apply(Rope { theta }, vec![x]),
            (true, Some(p)) => k.g.apply(DocumentRope { theta }, vec![x, p]),
        };
        let q = k.param(&[b, t, h, hd]);
        let q = roped(&mut k, q);
        let mut kvs = Vec::new();
        for which in 0..2 {
            let x = k.param(&[b, t, kv, hd]);
            let x = if which == 0 { roped(&mut k, x) } else { x };
            let r = k.reshape(x, &[b, t, kv, 1, hd]);
            let e = k.broadcast(r, &[b, t, kv, groups, hd]);
            let e = k.reshape(e, &[b, t, h, hd]);
            kvs.push(k.transpose(e, 1, 2));
        }
        let qt = k.transpose(q, 1, 2);
        let s = k.g.matmul(qt, kvs[0], false, true);
        let s = k.g.scale(s, 1.0 / (hd as f64).sqrt());
        let s = match positions {
            Some(p) => k.g.apply(DocumentMask, vec![s, p]),
            None => k.g.apply(CausalMask, vec![s]),
        };
        let keep = |k: &mut Case, op, x| k.g.reduce(op, x, -1, true);
        let m = keep(&mut k, ReduceOp::Max, s);
        let s = k.g.binary(Binary::Sub, s, m);
        let e = k.g.unary(Unary::Exp, s);
        let z = keep(&mut k, ReduceOp::Sum, e);
        let p = k.g.binary(Binary::Div, e, z);
        let o = k.g.matmul(p, kvs[1], false, false);
        k.check(vec![o], "flash-attention");
    }

    #[test]
    fn collective_scale(a in 1..4usize, b in 1..4usize, c in -2.0..2.0f64, gather in any::<bool>(),
                        ranks in 1..5usize, seed in 0..1000u64) {
        let mut k = Case::on_ranks(ranks, seed);
        let x = k.param(&[a, b]);
        let s = k.g.scale(x, c);
        let y = if gather {
            k.g.apply(AllGather { axis: 1, ranks }, vec![s])
        } else {
            k.g.apply(TpCopy, vec![s])
        };
        k.check(vec![y], "collective-scale");
    }

    #[test]
    fn reduce_scatter(t in 1..4usize, d in 1..4usize, ranks in 1..5usize, seed in 0..1000u64) {
        let mut k = Case::on_ranks(ranks, seed);
        let x = k.param(&[2, t * ranks, d]);
        let s = k.g.apply(AllReduce, vec![x]);
        let y = k.g.apply(Shard { axis: 1, ranks }, vec![s]);
        k.check(vec![y], "reduce-scatter");
    }

    #[test]
    fn bitlinear(t in 1..4usize, d in 1..6usize, n in 1..5usize, scaled_x in any::<bool>(), scaled_w in any::<bool>(),
                 seed in 0..1000u64) {
        let mut k = Case::new(seed);
        let x = k.param(&[2, t, d]);
        let w = k.param(&[n, d]);
        // The scaled forms take their scales as values (a tensor-parallel part's, of the whole).
        let xq = if scaled_x {
            let peak = k.param(&[2, t, 1]);
            let m = k.g.unary(Unary::Abs, peak);
            k.g.apply(ScaledInt8, vec![x, m])
        } else {
            k.g.apply(Int8Quant, vec![x])
        };
        let wq = if scaled_w {
            let s = k.param(&[]);
            let s = k.g.unary(Unary::Abs, s);
            k.g.apply(ScaledTernary, vec![w, s])
        } else {
            k.g.apply(TernaryQuant, vec![w])
        };
        let y = k.g.matmul(xq, wq, false, true);
        k.check(vec![y], "bitlinear");
    }

    #[test]
    fn copy_int8_quant(t in 1..4usize, d in 1..6usize, ranks in 1..5usize, seed in 0..1000u64) {
        let mut k = Case::on_ranks(ranks, seed);
        let x = k.param(&[2, t, d]);
        let q = k.g.apply(Int8Quant, vec![x]);
        let y = k.g.apply(TpCopy, vec![q]);
        k.check(vec![y], "copy-int8-quant");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn conv1d_silu(t in 1..6usize, c in 1..5usize, k in 1..5usize, bias in any::<bool>(), documents in any::<bool>(),
                   seed in 0..1000u64) {
        let mut g = Case::new(seed);
        let x = g.param(&[2, t, c]);
        let conv = g.conv(x, k, bias, documents);
        let y = g.g.unary(Unary::Silu, conv);
        g.check(vec![y], "conv1d-silu");
    }

    #[test]
    fn conv_scale_taps(t in 1..5usize, c1 in 1..4usize, c2 in 1..4usize, c3 in 1..3usize, k in 1..5usize,
                       s1 in -2.0..2.0f64, s2 in -2.0..2.0f64, bias in any::<bool>(), documents in any::<bool>(),
                       seed in 0..1000u64) {
        let mut g = Case::new(seed);
        let (a, b, c) = (g.param(&[2, t, c1]), g.param(&[2, t, c2]), g.param(&[2, t, c3]));
        let (a, b) = (g.g.scale(a, s1), g.g.scale(b, s2));
        let x = g.concat(vec![a, b, c], -1);
        let y = g.conv(x, k, bias, documents);
        g.check(vec![y], "conv-scale-taps");
    }

    #[test]
    fn concat_slices(t in 1..4usize, n in 4..9usize, cut in 0..100usize, whole in any::<bool>(), seed in 0..1000u64) {
        let mut g = Case::new(seed);
        let x = g.param(&[2, t, n]);
        let (lo, hi) = if whole { (0, n) } else { (1, n - 1) };
        let mid = lo + 1 + cut % (hi - lo - 1);
        let piece = |g: &mut Case, a: usize, b: usize| {
            g.g.apply(Slice::new(2, Dim::constant(a as i64), Dim::constant(b as i64)), vec![x])
        };
        let parts = vec![piece(&mut g, lo, mid), piece(&mut g, mid, hi)];
        let y = g.concat(parts, -1);
        g.check(vec![y], "concat-slices");
    }
}

#[test]
fn every_rule_has_a_property_test() {
    let text = include_str!("rewrite_rules.rs");
    for rule in rules::all() {
        assert!(text.contains(&format!("\"{}\"", rule.name)), "no property test names {}", rule.name);
    }
}

#[test]
fn constant_folding_in_the_analysis() {
    let mut k = Case::new(1);
    let x = k.param(&[2, 3]);
    let (a, b, c) = (k.g.constant(1.5), k.g.constant(-2.0), k.g.constant(7.0));
    let ab = k.g.binary(Binary::Mul, a, b);
    let abc = k.g.binary(Binary::Add, ab, c);
    let s = k.g.unary(Unary::Sqrt, abc);
    let y = k.g.binary(Binary::Mul, x, s);
    k.g.outputs = vec![y];
    let regions = region::partition(&k.g);
    let (eg, class_of) = load(&k.g, &regions[0]);
    assert_eq!(eg[class_of[&s]].data.constant, Some(2.0));
    let folded = eg[class_of[&s]].nodes.iter().any(|n| matches!(eg.analysis.op(n), OpKind::Const(..)));
    assert!(folded, "the folded value is a constant node extraction can pick");
    let leaves = vec![vec![k.values["p0"].clone()]];
    verify(&eg, &leaves);
}
