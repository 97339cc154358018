//! Resume: a checkpoint is read back only if its checksum holds, and a run continues only
//! on the model, data and settings it was started with; anything else is an error that
//! says what differs.

use super::*;

#[test]
fn identical_runs_give_byte_identical_checkpoints() {
    let s = Scratch::new();
    for run in ["a", "b"] {
        let r = s.train(&["--steps", "2", "--out", &s.s(run)]);
        assert!(r.status.success(), "{}", stderr(&r));
    }
    assert_eq!(
        std::fs::read(s.path("a/checkpoint.safetensors")).unwrap(),
        std::fs::read(s.path("b/checkpoint.safetensors")).unwrap()
    );
}

#[test]
fn flipped_checkpoint_bytes_are_rejected() {
    let s = Scratch::new();
    let run = s.s("run");
    assert!(s.train(&["--steps", "2", "--out", &run]).status.success());
    let path = s.path("run/checkpoint.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    fails_with(&s.train(&["--resume", &run, "--steps", "3"]), &["checksum", "checkpoint.safetensors"]);
}

#[test]
fn resume_flags_that_contradict_the_run_are_named() {
    let s = Scratch::new();
    let run = s.s("run");
    assert!(s.train(&["--steps", "2", "--out", &run]).status.success());
    let before = snapshot(&s.path("run"));
    let r = s.train(&["--resume", &run, "--steps", "3", "--lr", "0.01", "--batch", "4"]);
    fails_with(&r, &["--lr 0.01 (the run's is 0.003)", "--batch 4 (the run's is 2)"]);
    assert_eq!(snapshot(&s.path("run")), before);
    // Restating the run's own values is fine.
    let r = s.train(&["--resume", &run, "--steps", "3", "--batch", "2"]);
    assert!(r.status.success(), "{}", stderr(&r));
}

#[test]
fn steps_below_those_done_are_an_error() {
    let s = Scratch::new();
    let run = s.s("run");
    assert!(s.train(&["--steps", "3", "--out", &run]).status.success());
    fails_with(&s.train(&["--resume", &run, "--steps", "2"]), &["--steps 2 is below the 3 steps"]);
}

#[test]
fn resume_reads_the_runs_own_data_and_refuses_other_data() {
    let s = Scratch::new();
    let run = s.s("run");
    let text = s.path("t.txt");
    std::fs::write(&text, "abcdefgh".repeat(20)).unwrap();
    let model = s.path("m.hyb");
    // Byte-level text needs a vocabulary of 256.
    std::fs::write(&model, MODEL.replace("vocab = 32", "vocab = 256")).unwrap();
    let t = text.to_str().unwrap();
    let r = s.train(&["--steps", "2", "--out", &run, "--data", t]);
    assert!(r.status.success(), "{}", stderr(&r));
    // Without --data the run continues on the text it started with.
    let r = s.train(&["--resume", &run, "--steps", "3"]);
    assert!(r.status.success(), "{}", stderr(&r));
    fails_with(&s.train(&["--resume", &run, "--steps", "4", "--data", "mqar"]), &["--data", "MQAR", "t.txt"]);
    std::fs::write(&text, "zyxwvuts".repeat(20)).unwrap();
    fails_with(&s.train(&["--resume", &run, "--steps", "4"]), &["contents changed"]);
}

#[test]
fn resume_with_another_model_is_refused() {
    let s = Scratch::new();
    let run = s.s("run");
    assert!(s.train(&["--steps", "2", "--out", &run]).status.success());
    std::fs::write(s.path("m.hyb"), MODEL.replace("d_ff = 32", "d_ff = 32\n    eps = 0.001")).unwrap();
    fails_with(&s.train(&["--resume", &run, "--steps", "3"]), &["the model is not the one this run trained"]);
}

#[test]
fn the_stored_configuration_holds_no_null() {
    let s = Scratch::new();
    let run = s.s("run");
    assert!(s.train(&["--steps", "1", "--out", &run]).status.success());
    let meta = hyb_runtime::train::checkpoint::metadata(&s.path("run/checkpoint.safetensors")).unwrap();
    assert!(!meta["config"].contains("null") && !meta["identity"].contains("null"), "{meta:?}");
}
