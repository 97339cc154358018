//! `hyb generate` as a user runs it: greedy generations identical to Hugging Face
//! transformers' `FalconH1ForCausalLM.generate` on the imported fixtures
//! (`tests/fixtures/make_falcon_h1_generate.py` recorded them), end-of-sequence ids,
//! seeded sampling, text through a tokenizer, and a clear error for every bad value.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hyb(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyb"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .env("HYB_CACHE_DIR", cache)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/falcon_h1");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("generate.json").exists())
        .collect();
    out.sort();
    assert!(out.len() >= 5, "generation fixtures missing: {out:?}");
    out
}

/// Imports `fixture` into `dir`: the model file and its weights.
fn import(fixture: &Path, dir: &Path, cache: &Path) -> (String, String) {
    let name = fixture.file_name().unwrap().to_str().unwrap();
    let out = hyb(&["import", fixture.to_str().unwrap(), "-o", dir.to_str().unwrap(), "--name", name], cache);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = |ext: &str| dir.join(format!("{name}.{ext}")).display().to_string();
    (file("hyb"), file("safetensors"))
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

fn joined(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn greedy_generation_matches_hugging_face_on_every_fixture() {
    let cache = tempfile::tempdir().unwrap();
    for fixture in fixtures() {
        let dir = tempfile::tempdir().unwrap();
        let (model, weights) = import(&fixture, dir.path(), cache.path());
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("generate.json")).unwrap()).unwrap();
        let n = expected["max_new_tokens"].as_u64().unwrap().to_string();
        for case in expected["cases"].as_array().unwrap() {
            let prompt = joined(&ids(&case["prompt"]));
            for precision in ["f32", "f64"] {
                let args = [
                    "generate",
                    &model,
                    "--weights",
                    &weights,
                    "--ids",
                    &prompt,
                    "--max-new-tokens",
                    &n,
                    "--precision",
                    precision,
                    "--json",
                ];
                let got = json(&hyb(&args, cache.path()));
                assert_eq!(
                    ids(&got["generated"]),
                    ids(&case["generated"]),
                    "{}: prompt {prompt} ({precision})",
                    fixture.display()
                );
                assert_eq!(ids(&got["prompt"]), ids(&case["prompt"]));
                // The fixture's generation_config.json (copied by import) names eos 2.
                assert_eq!(ids(&got["eos"]), vec![2]);
                for key in ["prefill_tokens_per_s", "decode_tokens_per_s"] {
                    assert!(got[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {got}");
                }
            }
        }
    }
}

#[test]
fn generation_ends_after_an_end_of_sequence_id_and_sampling_follows_its_seed() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixtures().into_iter().find(|f| f.ends_with("gqa_basic")).unwrap();
    let (model, weights) = import(&fixture, dir.path(), cache.path());
    let prompt = "85,55,42,45,21,54,45,62,73,77";
    let base = ["generate", &model, "--weights", &weights, "--ids", prompt, "--json"];
    let run = |extra: &[&str]| json(&hyb(&[&base[..], extra].concat(), cache.path()));
    // Greedy gives 90,23,37,12,62,37,51,63,63,…: with 63 as the end, it stops after it.
    let ended = run(&["--eos", "63"]);
    assert_eq!(ids(&ended["generated"]), vec![90, 23, 37, 12, 62, 37, 51, 63]);
    assert_eq!(ended["stopped_at_eos"], true);
    let sample = |seed: &str| {
        ids(&run(&["--temperature", "1.5", "--top-p", "0.95", "--seed", seed, "--eos", "none"])["generated"])
    };
    let (a, b, c) = (sample("7"), sample("7"), sample("8"));
    assert_eq!(a, b, "the same seed must give the same tokens");
    assert_ne!(a, c, "another seed should give other tokens");
    assert_eq!(a.len(), 20);
}

/// A word-level tokenizer of `words` tokens (`[UNK]`, then `w1`, `w2`, …).
fn tokenizer(dir: &Path, words: usize) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = std::iter::once(("[UNK]".to_string(), 0.into()))
        .chain((1..words).map(|i| (format!("w{i}"), i.into())))
        .collect();
    let t = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    let path = dir.join(format!("tokenizer_{words}.json"));
    std::fs::write(&path, t.to_string()).unwrap();
    path.display().to_string()
}

#[test]
fn a_text_prompt_goes_through_the_tokenizer_both_ways() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixtures().into_iter().find(|f| f.ends_with("gqa_basic")).unwrap();
    let (model, weights) = import(&fixture, dir.path(), cache.path());
    let tok = tokenizer(dir.path(), 96);
    let words = "w85 w55 w42 w45 w21 w54 w45 w62 w73 w77";
    let out = hyb(
        &["generate", &model, "--weights", &weights, "--tokenizer", &tok, "--prompt", words, "--max-new-tokens", "4"],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "w90 w23 w37 w12");
    let err = stderr(&out);
    assert!(err.contains("prefill: 10 tokens") && err.contains("tokens/s"), "{err}");
}

#[test]
fn bad_values_are_clear_errors() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fixtures = fixtures();
    let (model, weights) = import(&fixtures[1], dir.path(), cache.path());
    let other = import(&fixtures[3], dir.path(), cache.path()).1;
    let big = tokenizer(dir.path(), 200);
    let small = tokenizer(dir.path(), 50);
    let base = ["generate", model.as_str(), "--weights", weights.as_str()];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--ids", ""], "is not a token id"),
        (vec!["--ids", "1,x"], "`x` in --ids is not a token id"),
        (vec!["--ids", "1,96"], "outside the model's vocabulary of 96"),
        (vec!["--ids", "1", "--temperature", "-1"], "must be a finite number ≥ 0"),
        (vec!["--ids", "1", "--temperature", "nan"], "must be a finite number ≥ 0"),
        (vec!["--ids", "1", "--top-p", "0"], "must be in (0, 1]"),
        (vec!["--ids", "1", "--top-p", "-0.5"], "must be in (0, 1]"),
        (vec!["--ids", "1", "--top-p", "1.5"], "must be in (0, 1]"),
        (vec!["--ids", "1", "--max-new-tokens", "0"], "must be at least 1"),
        (vec!["--ids", "1", "--eos", "500"], "token id 500 in --eos is outside"),
        (vec!["--ids", "1,2,3", "--max-new-tokens", "8", "--context", "10"], "more than the context of 10"),
        (vec!["--ids", "1", "--device", "tpu"], "invalid value 'tpu'"),
        (vec!["--ids", "1", "--device", "cuda", "--precision", "f64"], "computes in float32"),
        (vec!["--prompt", "w1 w2"], "--prompt needs a tokenizer"),
        (vec!["--prompt", "w1", "--tokenizer", &big], "has 200 tokens but the model's vocabulary has 96"),
        (vec!["--prompt", "", "--tokenizer", &small], "the prompt is empty"),
        (vec!["--prompt", "w1", "--tokenizer", "no/such/tokenizer.json"], "cannot load tokenizer"),
        (vec![], "the following required arguments were not provided"),
    ];
    for (extra, want) in cases {
        let out = hyb(&[&base[..], &extra].concat(), cache.path());
        let err = stderr(&out);
        assert!(!out.status.success() && err.contains(want), "{extra:?}: expected `{want}` in: {err}");
        assert!(!err.contains("panicked"), "{extra:?}: {err}");
    }
    // Weights of another model.
    let out = hyb(&["generate", &model, "--weights", &other, "--ids", "1"], cache.path());
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("weight"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn generate_on_a_gpu_that_is_not_there_says_so_and_writes_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixtures().into_iter().find(|f| f.ends_with("gqa_basic")).unwrap();
    let (model, weights) = import(&fixture, dir.path(), cache.path());
    let untouched = tempfile::tempdir().unwrap();
    let args = ["generate", &model, "--weights", &weights, "--ids", "1,2,3", "--device", "cuda", "--json"];
    let out = hyb(&args, untouched.path());
    if out.status.success() {
        // A machine with a GPU: generation ran there (bench/gpu_generate.sh checks it).
        return;
    }
    let err = stderr(&out);
    assert!(err.contains("--device cpu"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(std::fs::read_dir(untouched.path()).unwrap().next().is_none(), "something was compiled into the cache");
}

#[test]
fn weights_come_from_a_run_directory_or_its_checkpoint_as_for_export() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixtures().into_iter().find(|f| f.ends_with("gqa_basic")).unwrap();
    let (model, _) = import(&fixture, dir.path(), cache.path());
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let trained = hyb(&["train", &model, "--steps", "1", "--batch", "1", "--seq", "32", "--out", run_s], cache.path());
    assert!(trained.status.success(), "{}", stderr(&trained));
    let generated = |weights: &str| {
        ids(&json(&hyb(
            &["generate", &model, "--weights", weights, "--ids", "1,2,3", "--max-new-tokens", "5", "--json"],
            cache.path(),
        ))["generated"])
    };
    let from_run = generated(run_s);
    assert_eq!(from_run.len(), 5);
    assert_eq!(from_run, generated(run.join("checkpoint.safetensors").to_str().unwrap()));
}
