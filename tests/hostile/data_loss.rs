//! Data loss and output integrity: a run directory is never silently restarted, resumed
//! in the wrong place, or shared by two writers; imports write all their files or none,
//! and only inside the output folder.

use super::*;

#[test]
fn train_refuses_a_directory_that_holds_a_run() {
    let s = Scratch::new();
    let run = s.s("run");
    let r = s.train(&["--steps", "2", "--out", &run]);
    assert!(r.status.success(), "{}", stderr(&r));
    let before = snapshot(&s.path("run"));
    assert!(before.iter().any(|(p, _)| p.ends_with("checkpoint.safetensors")));
    fails_with(&s.train(&["--steps", "2", "--out", &run]), &["already holds files", "--resume", "--force"]);
    assert_eq!(snapshot(&s.path("run")), before, "a refused run must not touch the directory");
    // Validation comes before anything is touched, even with --force.
    fails_with(&s.train(&["--steps", "2", "--out", &run, "--force", "--mqar-pairs", "20"]), &["MQAR with 20 pairs"]);
    assert_eq!(snapshot(&s.path("run")), before);
    let r = s.train(&["--steps", "3", "--out", &run, "--force"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let metrics = std::fs::read_to_string(s.path("run/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3, "--force starts over: {metrics}");
}

#[test]
fn resume_into_another_directory_forks_and_leaves_the_original() {
    let s = Scratch::new();
    let (a, b) = (s.s("a"), s.s("b"));
    let r = s.train(&["--steps", "2", "--out", &a]);
    assert!(r.status.success(), "{}", stderr(&r));
    let original = snapshot(&s.path("a"));
    let r = s.train(&["--resume", &a, "--out", &b, "--steps", "4"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(snapshot(&s.path("a")), original, "the run forked from is untouched");
    let (forked, _) = hyb_runtime::train::Trainer::stored(&s.path("b")).unwrap();
    assert_eq!(forked.steps, 4);
    let state = hyb_runtime::train::checkpoint::load(&s.path("b/checkpoint.safetensors")).unwrap().state;
    assert_eq!(state.step, 4);
    assert_eq!(std::fs::read_to_string(s.path("b/metrics.jsonl")).unwrap().lines().count(), 4);
    // A fork never lands on another run.
    fails_with(&s.train(&["--resume", &a, "--out", &b, "--steps", "5"]), &["already holds files"]);
}

#[test]
fn a_run_directory_has_one_writer() {
    let s = Scratch::new();
    let held = hyb_runtime::train::run_dir::RunDir::lock(&s.path("run")).unwrap();
    let run = s.s("run");
    fails_with(&s.train(&["--steps", "1", "--out", &run]), &["in use by another hyb process", &run]);
    drop(held);
    let r = s.train(&["--steps", "1", "--out", &run]);
    assert!(r.status.success(), "{}", stderr(&r));
}

#[test]
fn a_failed_import_leaves_the_output_folder_as_it_was() {
    let s = Scratch::new();
    let src = s.path("hf");
    std::fs::create_dir(&src).unwrap();
    std::fs::copy(fixture("gqa_basic").join("config.json"), src.join("config.json")).unwrap();
    let mut w = hyb_runtime::weights::load(&fixture("gqa_basic").join("model.safetensors")).unwrap();
    let a_log = w.get_mut("model.layers.1.mamba.A_log").unwrap();
    a_log.tensor = hyb_compiler::reference::Tensor::zeros(vec![a_log.tensor.len() + 1]);
    hyb_runtime::weights::save(&src.join("model.safetensors"), &w, &Default::default()).unwrap();
    let out = s.path("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("x.hyb"), "old model").unwrap();
    std::fs::write(out.join("x.safetensors"), "old weights").unwrap();
    // A symlink planted where the old helper put its temporary file.
    let victim = s.path("victim");
    std::fs::write(&victim, "precious").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&victim, out.join(".x.hyb.tmp")).unwrap();
    let before = snapshot(&out);
    let r = hyb(&["import", src.to_str().unwrap(), "-o", out.to_str().unwrap(), "--name", "x"]);
    fails_with(&r, &["layers.1.mamba.A_log"]);
    assert_eq!(snapshot(&out), before, "nothing written, nothing left behind");
    // A good import replaces the pair and leaves no temporary file; the planted link is not followed.
    let r = hyb(&["import", fixture("gqa_basic").to_str().unwrap(), "-o", out.to_str().unwrap(), "--name", "x"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with(".hyb-")), "{names:?}");
    assert!(std::fs::read_to_string(out.join("x.hyb")).unwrap().contains("model x"));
}

#[test]
fn import_names_are_plain_file_stems() {
    let s = Scratch::new();
    let out = s.path("out");
    let src = fixture("gqa_basic");
    for bad in ["../x", "/tmp/hyb_import_escape", "a/b", "x.y", "", "model"] {
        let r = hyb(&["import", src.to_str().unwrap(), "-o", out.to_str().unwrap(), "--name", bad]);
        fails_with(&r, &["cannot name the model", "--name"]);
    }
    assert!(!out.exists() && !s.path("x.hyb").exists() && !Path::new("/tmp/hyb_import_escape.hyb").exists());
}

#[test]
fn a_checkpoint_folder_named_like_a_keyword_suggests_a_name() {
    let s = Scratch::new();
    let src = s.path("model");
    std::fs::create_dir(&src).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("gqa_basic").join(f), src.join(f)).unwrap();
    }
    let r = hyb(&["import", src.to_str().unwrap(), "-o", s.s("out").as_str()]);
    fails_with(&r, &["`model`", "keyword", "--name"]);
    let r = hyb(&["import", src.to_str().unwrap(), "-o", s.s("out").as_str(), "--name", "tiny"]);
    assert!(r.status.success(), "{}", stderr(&r));
}

#[cfg(unix)]
#[test]
fn fmt_formats_a_symlinks_target_and_keeps_the_link() {
    let s = Scratch::new();
    let real = s.path("real.hyb");
    std::fs::write(&real, "block f(x:[B])->[B]{\nreturn x*2}\n").unwrap();
    let link = s.path("link.hyb");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let r = hyb(&["fmt", link.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link is kept");
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "block f(x: [B]) -> [B] {\n    return x * 2\n}\n");
}
