//! The decoding primitives continue what the sequence primitives compute over a whole
//! sequence: split a sequence anywhere, run the first part whole and the rest from the
//! caches step by step, and every output equals the whole-sequence value (float64).

use hyb_compiler::ops::ssd_scan::chunked;
use hyb_compiler::ops::*;
use hyb_compiler::reference::Tensor;
use hyb_dsl::dim::Dim;

fn lcg(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

fn random(shape: &[usize], s: &mut u64) -> Tensor<f64> {
    Tensor::new(shape.to_vec(), (0..shape.iter().product()).map(|_| lcg(s)).collect())
}

fn eval(p: impl Into<Prim>, inputs: &[&Tensor<f64>]) -> Vec<Tensor<f64>> {
    p.into().eval(inputs, Sizes::constants())
}

/// Time steps `a..b` of `[B, T, …]`.
fn steps(x: &Tensor<f64>, a: usize, b: usize) -> Tensor<f64> {
    slice(x, 1, a, b)
}

fn pos(p: usize) -> Tensor<f64> {
    Tensor::scalar(p as f64)
}

#[track_caller]
fn close(got: &Tensor<f64>, want: &Tensor<f64>) {
    assert_eq!(got.shape, want.shape);
    for (i, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
        assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "element {i}: got {g}, want {w}");
    }
}

#[test]
fn rope_at_a_position_is_rope_of_the_longer_sequence() {
    let mut s = 1;
    let x = random(&[2, 7, 3, 8], &mut s);
    let whole = eval(Rope { theta: F64(500.0) }, &[&x]).remove(0);
    for p in [0, 3, 6] {
        let got = eval(RopeAt { theta: F64(500.0) }, &[&steps(&x, p, 7), &pos(p)]).remove(0);
        close(&got, &steps(&whole, p, 7));
    }
}

#[test]
fn conv_steps_from_the_cache_continue_the_causal_conv() {
    let mut s = 2;
    let (x, w, bias) = (random(&[2, 9, 5], &mut s), random(&[5, 4], &mut s), random(&[5], &mut s));
    let whole = eval(CausalConv1d, &[&x, &w, &bias]).remove(0);
    // The cache before the sequence is zeros; after `p` tokens, the last 3 inputs.
    let mut state = Tensor::zeros(vec![2, 3, 5]);
    for (a, b) in [(0, 2), (2, 3), (3, 8), (8, 9)] {
        let mut out = eval(ConvStep, &[&steps(&x, a, b), &state, &w, &bias]);
        close(&out[0], &steps(&whole, a, b));
        state = out.remove(1);
    }
    close(&state, &steps(&x, 6, 9));
}

#[test]
fn ssd_steps_and_the_final_state_continue_the_chunked_scan() {
    let mut s = 3;
    let (b, t, h, p, g, n) = (2, 10, 4, 3, 2, 5);
    let x = random(&[b, t, h, p], &mut s);
    let dt = Tensor::new(vec![b, t, h], random(&[b, t, h], &mut s).data.iter().map(|v| 0.3 + 0.25 * v).collect());
    let a = Tensor::new(vec![h], vec![-0.5, -1.0, -2.0, -0.2]);
    let (bm, cm) = (random(&[b, t, g, n], &mut s), random(&[b, t, g, n], &mut s));
    let whole = chunked(&x, &dt, &a, &bm, &cm, 4);
    for split in [1, 4, 7] {
        let part = |m: &Tensor<f64>, a0, b0| steps(m, a0, b0);
        let head = [part(&x, 0, split), part(&dt, 0, split), a.clone(), part(&bm, 0, split), part(&cm, 0, split)];
        let refs: Vec<&Tensor<f64>> = head.iter().collect();
        let mut state = eval(SsdState, &refs).remove(0);
        assert_eq!(state.shape, vec![b, h, p, n]);
        for k in split..t {
            let one = [part(&x, k, k + 1), part(&dt, k, k + 1), a.clone(), part(&bm, k, k + 1), part(&cm, k, k + 1)];
            let mut inputs: Vec<&Tensor<f64>> = one.iter().collect();
            inputs.push(&state);
            let mut out = eval(SsdStep, &inputs);
            close(&out[0], &steps(&whole, k, k + 1));
            state = out.remove(1);
        }
    }
}

#[test]
fn cache_attention_over_written_rows_is_causal_grouped_attention() {
    let mut s = 4;
    let (b, t, heads, kv, d, cap) = (2, 6, 4, 2, 8, 9);
    let q = random(&[b, heads, t, d], &mut s);
    let (k, v) = (random(&[b, t, kv, d], &mut s), random(&[b, t, kv, d], &mut s));
    let scale = 0.35;
    // The oracle: softmax over keys 0..=i of q·k·scale, head h reading key head h / 2.
    let mut want = Tensor::zeros(q.shape.clone());
    for bi in 0..b {
        for hi in 0..heads {
            for i in 0..t {
                let at = |m: &Tensor<f64>, j: usize, di: usize| m.data[((bi * t + j) * kv + hi / 2) * d + di];
                let qv = |di: usize| q.data[((bi * heads + hi) * t + i) * d + di];
                let sc: Vec<f64> =
                    (0..=i).map(|j| (0..d).map(|di| qv(di) * at(&k, j, di)).sum::<f64>() * scale).collect();
                let max = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for di in 0..d {
                    want.data[((bi * heads + hi) * t + i) * d + di] =
                        (0..=i).map(|j| e[j] / sum * at(&v, j, di)).sum::<f64>();
                }
            }
        }
    }
    // Written a few rows at a time into caches of `cap` rows, attended at each step.
    let mut kc = Tensor::zeros(vec![b, cap, kv, d]);
    let mut vc = Tensor::zeros(vec![b, cap, kv, d]);
    let attn = CacheAttention { scale: F64(scale) };
    for (a, e) in [(0, 3), (3, 4), (4, 6)] {
        kc = eval(CacheWrite, &[&kc, &steps(&k, a, e), &pos(a)]).remove(0);
        vc = eval(CacheWrite, &[&vc, &steps(&v, a, e), &pos(a)]).remove(0);
        let qs = slice(&q, 2, a, e);
        let got = eval(attn.clone(), &[&qs, &kc, &vc, &pos(a)]).remove(0);
        close(&got, &slice(&want, 2, a, e));
    }
    // Rows past what was written stay as they were.
    assert!(kc.data[(b * cap - 1) * kv * d..].iter().all(|&x| x == 0.0));
}

#[test]
fn shape_rules_refuse_mismatched_caches() {
    use hyb_dsl::prims::Ctx;
    use hyb_dsl::value::DType;
    let ty = |s: &[i64]| (s.iter().map(|&d| Dim::constant(d)).collect::<Vec<_>>(), DType::F32);
    let strict = Ctx { strict: true };
    let scalar = ty(&[]);
    assert!(CacheWrite.infer(&[ty(&[1, 8, 2, 4]), ty(&[1, 1, 2, 4]), scalar.clone()], strict).is_ok());
    assert!(CacheWrite.infer(&[ty(&[1, 8, 2, 4]), ty(&[1, 1, 3, 4]), scalar.clone()], strict).is_err());
    assert!(CacheWrite.infer(&[ty(&[1, 8, 2, 4]), ty(&[1, 1, 2, 4]), ty(&[1])], strict).is_err());
    let attn = CacheAttention { scale: F64(1.0) };
    assert!(attn.infer(&[ty(&[1, 4, 1, 4]), ty(&[1, 8, 2, 4]), ty(&[1, 8, 2, 4]), scalar.clone()], strict).is_ok());
    assert!(attn.infer(&[ty(&[1, 3, 1, 4]), ty(&[1, 8, 2, 4]), ty(&[1, 8, 2, 4]), scalar.clone()], strict).is_err());
    assert!(ConvStep.infer(&[ty(&[1, 1, 6]), ty(&[1, 3, 6]), ty(&[6, 4])], strict).is_ok());
    assert!(ConvStep.infer(&[ty(&[1, 1, 6]), ty(&[1, 2, 6]), ty(&[6, 4])], strict).is_err());
    let scan = [ty(&[1, 1, 4, 3]), ty(&[1, 1, 4]), ty(&[4]), ty(&[1, 1, 2, 5]), ty(&[1, 1, 2, 5])];
    let mut with_state = scan.to_vec();
    with_state.push(ty(&[1, 4, 3, 5]));
    assert!(SsdStep.infer(&with_state, strict).is_ok());
    with_state[5] = ty(&[1, 4, 5, 3]);
    assert!(SsdStep.infer(&with_state, strict).is_err());
    assert_eq!(SsdState.infer(&scan, strict).unwrap()[0], ty(&[1, 4, 3, 5]));
}
