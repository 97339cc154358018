//! Values a run cannot honour are refused up front, naming the flag, before any file is
//! written.

use super::*;

#[test]
fn out_of_range_training_flags_are_refused_by_name() {
    let s = Scratch::new();
    let run = s.s("run");
    for (flag, value) in [
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--lr", "-1"),
        ("--weight-decay", "nan"),
        ("--base-width", "0"),
        ("--eval-batches", "0"),
        ("--steps", "0"),
        ("--batch", "0"),
        ("--seq", "0"),
        ("--token-bytes", "0"),
        ("--mqar-pairs", "0"),
    ] {
        let r = s.train(&[&format!("{flag}={value}"), "--out", &run]);
        fails_with(&r, &[flag]);
        assert!(!s.path("run").exists(), "{flag} {value} created the run directory");
    }
    let model = s.s("m.hyb");
    fails_with(&hyb(&["mup-check", &model, "--lr", "nan", "--out", &run]), &["--lr"]);
}

#[test]
fn mqar_that_cannot_fit_says_which_limit() {
    let s = Scratch::new();
    let run = s.s("run");
    fails_with(&s.train(&["--mqar-pairs", "20", "--out", &run]), &["vocabulary of at least 42", "is 32"]);
    fails_with(&s.train(&["--mqar-pairs", "3", "--seq", "4", "--out", &run]), &["at least 7 tokens", "--seq is 4"]);
}

#[test]
fn non_finite_settings_never_reach_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let forward = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| {
            hyb_compiler::elaborate::elaborate(&hyb_compiler::check::check_text("m.hyb", MODEL).models[0].1.trace)
        })
        .unwrap()
        .join()
        .unwrap();
    let source = hyb_runtime::train::data::Source::Mqar(hyb_runtime::train::data::Mqar { vocab: 32, pairs: 3 });
    let mut cfg = hyb_runtime::train::TrainConfig {
        steps: 1,
        batch: 2,
        seq: 16,
        lr: f64::NAN,
        warmup: 0,
        schedule: hyb_runtime::train::schedule::Schedule::Constant,
        seed: 0,
        eval_every: 0,
        eval_batches: 1,
        save_every: 0,
        max_bad_steps: 1,
        beta1: 0.9,
        beta2: 0.95,
        weight_decay: 0.0,
        decay_all: false,
        clip: None,
        width_mult: 1.0,
    };
    let existing = hyb_runtime::train::run_dir::Existing::Refuse;
    let err = hyb_runtime::train::Trainer::new(forward.clone(), source.clone(), cfg.clone(), dir.path(), existing);
    assert!(err.err().unwrap().to_string().contains("lr"));
    cfg.lr = 1e-3;
    cfg.width_mult = f64::INFINITY;
    let err = hyb_runtime::train::Trainer::new(forward, source, cfg, dir.path(), existing);
    assert!(err.err().unwrap().to_string().contains("width_mult"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
}

#[test]
fn a_run_whose_steps_were_all_skipped_claims_no_checkpoint() {
    let s = Scratch::new();
    let run = s.s("run");
    // Finite as a flag, infinite in the float32 step: every step is non-finite and skipped.
    let r = s.train(&["--steps", "2", "--lr", "1e300", "--out", &run]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stdout(&r).contains("checkpoint: none written"), "{}", stdout(&r));
    assert!(!s.path("run/checkpoint.safetensors").exists());
}
