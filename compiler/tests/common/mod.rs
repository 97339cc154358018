//! Helpers shared by the whole-model tests: a model from `.hyb` text, random weights, and
//! the inputs of a training step.
#![allow(dead_code)]

use hyb_compiler::elaborate::elaborate;
use hyb_compiler::ir::Graph;
use hyb_compiler::reference::Tensor;
use std::collections::HashMap;

/// The forward graph of the only model in `text` (checked on a thread with a large stack).
pub fn forward(text: &'static str) -> Graph {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let checked = hyb_compiler::check::check_text("model.hyb", text);
            assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
            elaborate(&checked.models[0].1.trace)
        })
        .unwrap()
        .join()
        .unwrap()
}

/// Uniform in (-1, 1), from a linear congruential sequence.
pub fn rand(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

/// Every parameter of `g`, uniform in (-0.3, 0.3).
pub fn weights(g: &Graph, seed: u64) -> HashMap<String, Tensor<f64>> {
    let mut s = seed;
    g.params
        .iter()
        .map(|p| {
            let n: usize = p.shape.iter().product();
            (p.name.clone(), Tensor::new(p.shape.clone(), (0..n).map(|_| 0.3 * rand(&mut s)).collect()))
        })
        .collect()
}

/// A training step's inputs for a `[b, t]` batch of ids below `vocab`: targets, uniform
/// loss weights, learning rate and bias corrections, and positive moments for every weight.
pub fn inputs(w: &HashMap<String, Tensor<f64>>, b: usize, t: usize, vocab: usize) -> HashMap<String, Tensor<f64>> {
    let mut s = 5;
    let ids = |k: usize| Tensor::new(vec![b, t], (0..b * t).map(|i| ((i * 29 + 7 * k) % vocab) as f64).collect());
    let mut m = HashMap::from([
        ("ids".to_string(), ids(1)),
        ("targets".to_string(), ids(2)),
        ("loss_weights".to_string(), Tensor::new(vec![b, t], vec![1.0 / (b * t) as f64; b * t])),
        ("lr".to_string(), Tensor::scalar(1e-2)),
        ("bias_correction1".to_string(), Tensor::scalar(0.1)),
        ("bias_correction2".to_string(), Tensor::scalar(0.05)),
    ]);
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    for name in names {
        for prefix in ["m.", "v."] {
            let data = w[name].data.iter().map(|_| 0.01 * (rand(&mut s) + 1.0)).collect();
            m.insert(format!("{prefix}{name}"), Tensor::new(w[name].shape.clone(), data));
        }
    }
    m
}
