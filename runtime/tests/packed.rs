//! Packed rows against their documents run one by one, in the float64 reference: the
//! packed graph (`elaborate::packed`) of every example model gives each document's logits
//! as if it were alone, and the gradient of a loss over a packed row equals the sum of the
//! gradients of its documents' losses.

use hyb_compiler::autodiff::gradients;
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::elaborate::packed::{packed, POSITIONS};
use hyb_compiler::ir::{Graph, Op};
use hyb_compiler::ops::Binary;
use hyb_compiler::reference::{run, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hyb"))
        .collect();
    out.sort();
    out
}

fn forward(path: &Path) -> Graph {
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let checked = hyb_compiler::check::check_paths(&[&path]).unwrap();
            assert!(checked.diagnostics.is_empty(), "{}", path.display());
            elaborate(&checked.models[0].1.trace)
        })
        .unwrap()
        .join()
        .unwrap()
}

fn lcg(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

/// Initial weights perturbed, so that no weight keeps a value that hides a mistake.
fn weights(g: &Graph) -> HashMap<String, Tensor<f64>> {
    let mut s = 7;
    g.params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let base = hyb_runtime::train::init::init(p, 3, i as u64, 1.0);
            let data = base.data.iter().map(|&x| x as f64 + 0.15 * lcg(&mut s)).collect();
            (p.name.clone(), Tensor::new(p.shape.clone(), data))
        })
        .collect()
}

/// `g` with its outputs replaced by a loss `Σ logits · r` (`r` an input of the logits'
/// shape) and the gradient of that loss with respect to every parameter.
fn with_gradients(g: &Graph) -> Graph {
    let mut g = g.clone();
    let logits = g.outputs[0];
    let ty = g.nodes[logits].ty.clone();
    let r = g.add(Op::Input("r".into()), vec![], ty);
    let weighted = g.binary(Binary::Mul, logits, r);
    let loss = g.sum_all(weighted);
    let params: Vec<usize> = (0..g.params.len()).map(|p| g.param_node(p).unwrap()).collect();
    let grads = gradients(&mut g, loss, &params).unwrap();
    g.outputs = std::iter::once(logits).chain(std::iter::once(loss)).chain(grads).collect();
    g
}

fn largest(x: &[f64]) -> f64 {
    x.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

#[test]
fn a_packed_row_computes_what_its_documents_compute_alone() {
    // Documents of one row: a single token, one longer than a conv's taps, and lengths
    // that straddle the scan's chunks.
    let lengths = [5usize, 1, 9, 3, 2];
    let t: usize = lengths.iter().sum();
    for path in examples() {
        let g = forward(&path);
        let vocab = g.params.iter().find(|p| p.name == "embed_tokens.weight").map(|p| p.shape[0]).unwrap();
        let params = weights(&g);
        let ids: Vec<f64> = (0..t).map(|i| ((i * 37 + 11) % vocab) as f64).collect();
        let mut s = 3;
        let r: Vec<f64> = (0..t * vocab).map(|_| lcg(&mut s)).collect();
        let positions: Vec<f64> = lengths.iter().flat_map(|&n| (0..n).map(|p| p as f64)).collect();

        let packed_graph = with_gradients(&packed(&g).unwrap());
        let inputs = HashMap::from([
            ("ids".to_string(), Tensor::new(vec![1, t], ids.clone())),
            (POSITIONS.to_string(), Tensor::new(vec![1, t], positions)),
            ("r".to_string(), Tensor::new(vec![1, t, vocab], r.clone())),
        ]);
        let got = run(&packed_graph, &params, &inputs).unwrap();

        let alone = with_gradients(&g);
        let mut logits = Vec::new();
        let mut grads: Vec<Vec<f64>> = Vec::new();
        let mut start = 0;
        for &n in &lengths {
            let inputs = HashMap::from([
                ("ids".to_string(), Tensor::new(vec![1, n], ids[start..start + n].to_vec())),
                ("r".to_string(), Tensor::new(vec![1, n, vocab], r[start * vocab..(start + n) * vocab].to_vec())),
            ]);
            let out = run(&alone, &params, &inputs).unwrap();
            logits.extend_from_slice(&out[0].data);
            for (k, grad) in out[2..].iter().enumerate() {
                match grads.get_mut(k) {
                    Some(sum) => sum.iter_mut().zip(&grad.data).for_each(|(a, b)| *a += b),
                    None => grads.push(grad.data.clone()),
                }
            }
            start += n;
        }
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let scale = largest(&logits);
        let err = got[0].data.iter().zip(&logits).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale;
        assert!(err < 1e-10, "{name}: packed logits differ from the documents' by {err:e}");
        for (k, (packed, alone)) in got[2..].iter().zip(&grads).enumerate() {
            let scale = largest(alone).max(1e-300);
            let err = packed.data.iter().zip(alone).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale;
            assert!(err < 1e-9, "{name}: gradient of `{}` differs by {err:e}", g.params[k].name);
        }
        eprintln!("{name}: logits and {} gradients match", grads.len());
    }
}
