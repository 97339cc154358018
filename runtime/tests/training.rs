//! Training on the CPU: exact resume, protection against non-finite steps, deterministic
//! data, and that training reduces the loss.

use hyb_compiler::elaborate::elaborate;
use hyb_compiler::ir::Graph;
use hyb_runtime::train::checkpoint;
use hyb_runtime::train::data::{DataSpec, Mqar, Source, Split};
use hyb_runtime::train::run_dir::Existing;
use hyb_runtime::train::schedule::Schedule;
use hyb_runtime::train::{Resume, TrainConfig, TrainError, Trainer};
use std::path::Path;

const MODEL: &str = "import std.layers\n\nmodel m {\n    vocab = 32\n    d = 16\n    layers = pattern(\"H\", H = falcon_h1_layer)\n    heads = 2\n    kv_heads = 1\n    ssm_heads = 2\n    ssm_head_dim = 8\n    d_state = 4\n    chunk = 4\n    d_ff = 32\n}\n";

fn forward() -> Graph {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| {
            let checked = hyb_compiler::check::check_text("m.hyb", MODEL);
            assert!(checked.diagnostics.is_empty());
            elaborate(&checked.models[0].1.trace)
        })
        .unwrap()
        .join()
        .unwrap()
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch: 2,
        seq: 12,
        lr: 1e-2,
        warmup: 3,
        schedule: Schedule::Cosine { min_ratio: 0.1 },
        seed: 5,
        eval_every: 0,
        eval_batches: 1,
        save_every: 0,
        max_bad_steps: 3,
        beta1: 0.9,
        beta2: 0.95,
        weight_decay: 0.1,
        decay_all: false,
        clip: Some(1.0),
        width_mult: 1.0,
    }
}

fn mqar() -> Source {
    Source::Mqar(Mqar { vocab: 32, pairs: 3 })
}

fn fresh(forward: Graph, cfg: TrainConfig, dir: &Path) -> Trainer {
    Trainer::new(forward, mqar(), cfg, dir, Existing::Refuse).unwrap()
}

fn in_place(dir: &Path) -> Resume<'_> {
    Resume { from: dir, into: dir, existing: Existing::Refuse, steps: None }
}

#[test]
fn resume_is_bit_exact() {
    let straight_dir = tempfile::tempdir().unwrap();
    let mut straight = fresh(forward(), config(20), straight_dir.path());
    straight.run(&mut |_| {}).unwrap();

    let split_dir = tempfile::tempdir().unwrap();
    let mut first = fresh(forward(), config(20), split_dir.path());
    for _ in 0..10 {
        first.step().unwrap();
    }
    first.save().unwrap();
    drop(first);
    let mut second = Trainer::resume(forward(), mqar(), &in_place(split_dir.path())).unwrap();
    assert_eq!(second.state.step, 10);
    second.run(&mut |_| {}).unwrap();
    assert_eq!(second.state, straight.state, "10 + resume + 10 steps must equal 20 steps bit for bit");
    let saved = checkpoint::load(&split_dir.path().join("checkpoint.safetensors")).unwrap().state;
    assert_eq!(saved, straight.state);
}

#[test]
fn training_reduces_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(40);
    cfg.eval_every = 40;
    cfg.eval_batches = 2;
    let mut t = fresh(forward(), cfg, dir.path());
    let mut losses = vec![];
    t.run(&mut |r| losses.push(r.loss)).unwrap();
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[35..].iter().sum::<f64>() / 5.0;
    assert!(last < first - 0.3, "loss went from {first} to {last}");
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 40);
    assert!(metrics.lines().last().unwrap().contains("eval_accuracy"));
}

#[test]
fn non_finite_steps_are_skipped_and_then_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(10);
    cfg.save_every = 1;
    // Finite as a float64 setting, infinite in the float32 step.
    cfg.lr = 1e300;
    cfg.warmup = 0;
    cfg.clip = None;
    let mut t = fresh(forward(), cfg, dir.path());
    let initial = t.state.params.clone();
    let err = t.run(&mut |_| {}).unwrap_err();
    assert!(matches!(err, TrainError::Diverged(3)), "{err}");
    assert_eq!(t.state.skipped, 3);
    assert_eq!(t.state.params, initial, "skipped steps must not change the weights");
    assert!(!dir.path().join("checkpoint.safetensors").exists(), "no checkpoint of a bad state");
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().all(|l| l.contains("\"applied\":false")), "{metrics}");
}

#[test]
fn damaged_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = fresh(forward(), config(2), dir.path());
    t.run(&mut |_| {}).unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = Trainer::resume(forward(), mqar(), &in_place(dir.path())).err().unwrap().to_string();
    assert!(err.contains("checkpoint.safetensors"), "{err}");
    std::fs::write(&path, b"not a checkpoint").unwrap();
    assert!(Trainer::resume(forward(), mqar(), &in_place(dir.path())).is_err());
}

#[test]
fn batches_are_deterministic_and_splits_disjoint() {
    let s = mqar();
    assert_eq!(s.batch(1, Split::Train, 7, 2, 12).unwrap(), s.batch(1, Split::Train, 7, 2, 12).unwrap());
    assert_ne!(s.batch(1, Split::Train, 7, 2, 12).unwrap(), s.batch(1, Split::Train, 8, 2, 12).unwrap());
    assert_ne!(s.batch(1, Split::Train, 7, 2, 12).unwrap(), s.batch(1, Split::Eval, 7, 2, 12).unwrap());
    let b = s.batch(3, Split::Train, 0, 4, 12).unwrap();
    assert!((b.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // Every weighted position asks for a value (upper half of the vocabulary) that follows
    // its key earlier in the sequence.
    for (i, w) in b.weights.iter().enumerate() {
        if *w > 0.0 {
            let (row, pos) = (i / 12, i % 12);
            let (ids, key, want) = (&b.ids[row * 12..row * 12 + 12], b.ids[i], b.targets[i]);
            assert!(want >= 16);
            assert!((0..pos).any(|p| ids[p] == key && ids[p + 1] == want), "query {key} → {want} not in {ids:?}");
        }
    }
    let text = Source::Tokens {
        tokens: (0..1000).map(|i| (i % 50) as u32).collect(),
        vocab: 50,
        origin: DataSpec::InMemory,
        documents: None,
    };
    let b = text.batch(0, Split::Eval, 0, 2, 8).unwrap();
    assert!(b.ids.iter().zip(&b.targets).all(|(a, t)| (a + 1) % 50 == *t));
}

#[test]
fn text_tokenized_with_a_tokenizer_json_and_token_files() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"the":1,"cat":2,"sat":3,"on":4,"mat":5},"unk_token":"[UNK]"}}"#).unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "the cat sat on the mat ".repeat(40)).unwrap();
    let Source::Tokens { tokens, vocab, .. } = Source::tokenized_text(&text, &tok).unwrap() else { panic!() };
    assert_eq!(vocab, 6);
    assert_eq!(&tokens[..6], &[1, 2, 3, 4, 1, 5]);
    let bin = dir.path().join("t.bin");
    std::fs::write(&bin, [1u16, 2, 3, 300].iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let Source::Tokens { tokens, vocab, .. } = Source::token_file(&bin, 2).unwrap() else { panic!() };
    assert_eq!((tokens, vocab), (vec![1, 2, 3, 300], 301));
    std::fs::write(&bin, [1u8, 2, 3]).unwrap();
    assert!(Source::token_file(&bin, 2).unwrap_err().to_string().contains("whole number"));
    std::fs::write(&text, [0xffu8, 0xfe]).unwrap();
    assert!(Source::text(&text).unwrap_err().to_string().contains("not UTF-8"));
}

#[test]
fn a_bitnet_model_trains() {
    let src = "import std.layers\n\nmodel m {\n    vocab = 32\n    d = 16\n    layers = pattern(\"B\", B = bit_mlp_layer)\n    d_ff = 32\n}\n";
    let g = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let checked = hyb_compiler::check::check_text("b.hyb", src);
            assert!(checked.diagnostics.is_empty());
            elaborate(&checked.models[0].1.trace)
        })
        .unwrap()
        .join()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut t = fresh(g, config(30), dir.path());
    let mut losses = vec![];
    t.run(&mut |r| losses.push(r.loss)).unwrap();
    assert!(losses[25..].iter().sum::<f64>() < losses[..5].iter().sum::<f64>() - 0.5, "{losses:?}");
}
