//! Packed rows against their documents run one by one: in the float64 reference, the
//! packed graph (`elaborate::packed`) of every example model gives each document's logits
//! as if it were alone, and the gradient of a loss over a packed row equals the sum of the
//! gradients of its documents' losses; packed batches mark documents from an
//! end-of-document id or a file of lengths; and a training step on packed rows on the CPU
//! executor has the loss of its documents alone.

mod common;

use common::{examples, forward, lcg};
use hyb_compiler::autodiff::gradients;
use hyb_compiler::elaborate::packed::{packed, POSITIONS};
use hyb_compiler::ir::{Graph, Op};
use hyb_compiler::ops::Binary;
use hyb_compiler::reference::{run, Tensor};
use hyb_runtime::train::data::{Batch, DataSpec, Mqar, Packing, Source, Split};
use hyb_runtime::train::run_dir::Existing;
use hyb_runtime::train::schedule::Schedule;
use hyb_runtime::train::{TrainConfig, Trainer};
use std::collections::HashMap;
use std::path::Path;

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

/// Tokens `0, 1, …` with an end-of-document id (0) after documents of `lengths`.
fn documents(lengths: &[usize]) -> Vec<u32> {
    let mut tokens = Vec::new();
    for (k, &n) in lengths.iter().enumerate() {
        tokens.extend((1..n).map(|i| 1 + ((k * 7 + i) % 30) as u32));
        tokens.push(0);
    }
    tokens
}

#[test]
fn packed_batches_mark_documents_and_weigh_only_targets_inside_them() {
    let lengths: Vec<usize> = (0..60).map(|k| 1 + (k * 5) % 11).collect();
    let tokens = documents(&lengths);
    let raw = || Source::Tokens { tokens: tokens.clone(), vocab: 32, origin: DataSpec::InMemory, documents: None };
    let by_eod = raw().packed(&Packing::Eod { id: 0 }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lengths.txt");
    let text: Vec<String> = lengths.iter().map(usize::to_string).collect();
    std::fs::write(&file, text.join("\n")).unwrap();
    let by_lengths = raw().packed(&Packing::Lengths { path: file.clone() }).unwrap();
    for step in 0..4 {
        let b = by_eod.batch(9, Split::Train, step, 3, 16).unwrap();
        assert_eq!(b, by_lengths.batch(9, Split::Train, step, 3, 16).unwrap());
        let positions = b.positions.as_ref().unwrap();
        let counted = b.weights.iter().filter(|&&w| w > 0.0).count();
        assert!((b.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        for (i, (&id, &p)) in b.ids.iter().zip(positions).enumerate() {
            let t = i % 16;
            // A row starts a document; after an end-of-document id another starts.
            let expected = if t == 0 || b.ids[i - 1] == 0 { 0 } else { positions[i - 1] + 1 };
            assert_eq!(p, expected, "token {i} of {:?}", b.ids);
            // The target of an end-of-document id is the next document's first token.
            assert_eq!(b.weights[i] == 0.0, id == 0, "weight of token {i}");
            assert!(b.weights[i] == 0.0 || (b.weights[i] - 1.0 / counted as f64).abs() < 1e-12);
        }
    }
    for (text, why) in [("3 0 2", "not a positive"), ("5 x", "not a positive"), ("1 2", "sum to 3"), ("100000", "past")]
    {
        std::fs::write(&file, text).unwrap();
        let err = raw().packed(&Packing::Lengths { path: file.clone() }).unwrap_err().to_string();
        assert!(err.contains(why), "{text}: {err}");
    }
    let mqar = Source::Mqar(Mqar { vocab: 32, pairs: 2 });
    assert!(mqar.packed(&Packing::Eod { id: 0 }).unwrap_err().to_string().contains("MQAR"));
}

/// The loss of each document alone, in the float64 reference: `Σ w · nll` over the
/// positions the packed batch weighs, each document run as its own sequence.
fn loss_of_documents_alone(forward: &Graph, params: &HashMap<String, Tensor<f64>>, b: &Batch) -> f64 {
    let positions = b.positions.as_ref().unwrap();
    let mut loss = 0.0;
    let mut start = 0;
    while start < b.ids.len() {
        let mut end = start + 1;
        while end < b.ids.len() && end % b.seq != 0 && positions[end] != 0 {
            end += 1;
        }
        let ids: Vec<f64> = b.ids[start..end].iter().map(|&i| i as f64).collect();
        let n = ids.len();
        let inputs = HashMap::from([("ids".to_string(), Tensor::new(vec![1, n], ids))]);
        let logits = run(forward, params, &inputs).unwrap().remove(0);
        let vocab = logits.shape[2];
        for (k, row) in logits.data.chunks(vocab).enumerate() {
            let w = b.weights[start + k];
            if w > 0.0 {
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                loss += w * (lse - row[b.targets[start + k] as usize]);
            }
        }
        start = end;
    }
    loss
}

#[test]
fn training_on_packed_rows_gives_the_loss_of_the_documents_alone() {
    let g = forward(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny_hybrid.hyb"));
    let lengths: Vec<usize> = (0..200).map(|k| 1 + (k * 7) % 23).collect();
    let tokens = documents(&lengths);
    let source = Source::Tokens { tokens, vocab: 32, origin: DataSpec::InMemory, documents: None }
        .packed(&Packing::Eod { id: 0 })
        .unwrap();
    let cfg = TrainConfig {
        steps: 2,
        batch: 2,
        seq: 24,
        lr: 1e-3,
        warmup: 1,
        schedule: Schedule::Constant,
        seed: 3,
        eval_every: 0,
        eval_batches: 1,
        save_every: 0,
        max_bad_steps: 3,
        beta1: 0.9,
        beta2: 0.95,
        weight_decay: 0.0,
        decay_all: false,
        clip: None,
        width_mult: 1.0,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut trainer =
        Trainer::new(g.clone(), source.clone(), cfg.clone(), &dir.path().join("run"), Existing::Refuse).unwrap();
    // The compiled program on the CPU executor (document primitives interpreted, the rest
    // native code) against the reference on each document alone, from the same weights.
    let (params, _, _) = trainer.step_inputs().unwrap();
    let params: HashMap<String, Tensor<f64>> =
        params.iter().map(|(k, t)| (k.clone(), Tensor::new(t.shape.clone(), t.to_f64()))).collect();
    let b = source.batch(cfg.seed, Split::Train, 0, cfg.batch, cfg.seq).unwrap();
    assert!(
        b.positions.as_ref().unwrap().iter().filter(|&&p| p == 0).count() > 2 * cfg.batch,
        "several documents per row"
    );
    let want = loss_of_documents_alone(&g, &params, &b);
    let got = trainer.step().unwrap().loss;
    assert!((got - want).abs() < 1e-5 * want.abs(), "packed step loss {got}, documents alone {want}");
}
