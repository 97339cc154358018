//! The `hyb` command line, run as a user would: exit codes, output, files left on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `hyb`, with no cache of compiled kernels (the tests of the cache give it one).
fn hyb(args: &[&str]) -> Output {
    hyb_with(args, &[("HYB_CACHE", "off")]).output().unwrap()
}

fn hyb_with(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hyb"));
    command.args(args).current_dir(env!("CARGO_MANIFEST_DIR")).env("NO_COLOR", "1").envs(env.iter().copied());
    command
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn repo_files(dir: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hyb"))
        .collect();
    files.sort();
    files.iter().map(|p| p.display().to_string()).collect()
}

#[test]
fn check_accepts_stdlib_and_examples() {
    let mut files = repo_files("stdlib");
    files.extend(repo_files("examples"));
    let args: Vec<&str> = std::iter::once("check").chain(files.iter().map(String::as_str)).collect();
    let out = hyb(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok:"), "{}", stdout(&out));
}

#[test]
fn check_reports_every_error_with_a_caret_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.hyb");
    std::fs::write(&path, "block f(x: [B]) -> [B] {\n    y = x * nope\n    return y + alsonope\n}\n").unwrap();
    let out = hyb(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.matches("E010").count(), 2, "{err}");
    assert!(err.contains("bad.hyb:2:13") && err.contains("bad.hyb:3:16"), "{err}");
    assert!(err.contains("───┬"), "no caret: {err}");
}

#[test]
fn check_of_a_missing_file_is_a_clear_error() {
    let out = hyb(&["check", "no/such/file.hyb"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no/such/file.hyb: no such file"), "{}", stderr(&out));
}

#[test]
fn fmt_check_and_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("messy.hyb");
    let messy = "block f(x:[B])->[B]{   // keep me\nreturn x*2}\n";
    std::fs::write(&path, messy).unwrap();
    let p = path.to_str().unwrap();
    let out = hyb(&["fmt", "--check", p]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), messy, "--check must not write");
    let out = hyb(&["fmt", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tidy = std::fs::read_to_string(&path).unwrap();
    assert_eq!(tidy, "block f(x: [B]) -> [B] {\n    // keep me\n    return x * 2\n}\n");
    assert!(hyb(&["fmt", "--check", p]).status.success());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temporary files left behind");
}

#[test]
fn fmt_refuses_files_with_syntax_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.hyb");
    std::fs::write(&path, "block f(x: [B]) -> [B] {\n").unwrap();
    let out = hyb(&["fmt", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("E001"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "block f(x: [B]) -> [B] {\n");
}

/// `hyb show` totals for the four Falcon-H1 configurations, as computed by transformers
/// (tests/fixtures/hf_param_counts.json).
#[test]
fn show_prints_falcon_h1_layer_tables() {
    let counts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_param_counts.json"))
            .unwrap(),
    )
    .unwrap();
    for (model, c) in counts.as_object().unwrap() {
        let out = hyb(&["show", "stdlib/falcon_h1.hyb", "--model", model]);
        assert!(out.status.success(), "{}", stderr(&out));
        let table = stdout(&out);
        let total = c["total"].as_u64().unwrap();
        let grouped = total
            .to_string()
            .as_bytes()
            .rchunks(3)
            .rev()
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(",");
        let total_line = table.lines().find(|l| l.starts_with("total")).unwrap();
        assert!(total_line.contains(&grouped), "{model}: {total_line} vs {grouped}");
        let layers = c["config"]["num_hidden_layers"].as_u64().unwrap() as usize;
        let rows = table.lines().filter(|l| l.contains("H falcon_h1_layer")).count();
        assert_eq!(rows, layers, "{table}");
        let heads = c["config"]["num_attention_heads"].as_u64().unwrap();
        let ssm = c["config"]["mamba_n_heads"].as_u64().unwrap();
        let row0: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(row0[..5], ["0", "H", "falcon_h1_layer", &heads.to_string(), &ssm.to_string()], "{table}");
    }
}

#[test]
fn show_needs_a_model_name_when_the_file_has_several() {
    let out = hyb(&["show", "stdlib/falcon_h1.hyb"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("choose one with --model"), "{}", stderr(&out));
    let out = hyb(&["show", "stdlib/falcon_h1.hyb", "--model", "falcon_h1_9b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no model `falcon_h1_9b`"), "{}", stderr(&out));
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/falcon_h1").join(name)
}

/// `hyb import` → `hyb logits --json` reproduces transformers' logits; `hyb export` writes a
/// checkpoint folder.
#[test]
fn import_logits_export_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let f = fixture("multipliers");
    let r = hyb(&["import", f.to_str().unwrap(), "-o", out, "--name", "mult"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let inputs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.join("inputs.json")).unwrap()).unwrap();
    let rows: Vec<String> = inputs["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
        .collect();
    let model = format!("{out}/mult.hyb");
    let weights = format!("{out}/mult.safetensors");
    let r = hyb(&["logits", &model, "--weights", &weights, "--ids", &rows[0], "--ids", &rows[1], "--json"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let ours: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let ours = ours["logits"].as_array().unwrap();
    assert_eq!(ours.len(), 2);
    let flat: Vec<f64> = ours
        .iter()
        .flat_map(|s| {
            s.as_array().unwrap().iter().flat_map(|p| p.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        })
        .collect();
    let reference = safetensors_f64(&f.join("logits.safetensors"), "logits_f64_pure");
    let max = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = flat.iter().zip(&reference).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert_eq!(flat.len(), reference.len());
    assert!(err <= 1e-6 * max, "relative error {}", err / max);

    // The same logits from a compiled forward-pass artifact.
    let seq = rows[0].split(',').count().to_string();
    let hybc = format!("{out}/mult.hybc");
    let r = hyb(&["compile", &model, "--forward", "--batch", "2", "--seq", &seq, "-o", &hybc]);
    assert!(r.status.success(), "{}", stderr(&r));
    let r = hyb(&["logits", &hybc, "--weights", &weights, "--ids", &rows[0], "--ids", &rows[1], "--json"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let compiled: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let values: Vec<f64> = compiled["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s.as_array().unwrap().iter().flat_map(|p| p.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        })
        .collect();
    let err = values.iter().zip(&reference).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(values.len() == reference.len() && err <= 1e-6 * max, "artifact: relative error {}", err / max);
    let r = hyb(&["logits", &hybc, "--weights", &weights, "--ids", &rows[0], "--json"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(stderr(&r).contains("compiled for batch 2"), "{}", stderr(&r));

    let text = hyb(&["logits", &model, "--weights", &weights, "--ids", "1,2,3"]);
    assert!(text.status.success(), "{}", stderr(&text));
    assert_eq!(stdout(&text).lines().count(), 3);
    let bad = hyb(&["logits", &model, "--weights", &weights, "--ids", "1,2", "--ids", "3"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("same length"), "{}", stderr(&bad));
    let oob = hyb(&["logits", &model, "--weights", &weights, "--ids", "1,9999"]);
    assert_eq!(oob.status.code(), Some(2));
    assert!(stderr(&oob).contains("outside the vocabulary"), "{}", stderr(&oob));

    let exported = dir.path().join("hf");
    let r = hyb(&["export", &model, "--weights", &weights, "-o", exported.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(exported.join("config.json").exists() && exported.join("model.safetensors").exists());
}

#[test]
fn import_rejects_unsupported_configs_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("gqa_basic");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["hidden_act"] = "relu".into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let r = hyb(&["import", dir.path().to_str().unwrap(), "-o", dir.path().join("out").to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2));
    assert!(stderr(&r).contains("`hidden_act`"), "{}", stderr(&r));
    assert!(!dir.path().join("out").exists(), "nothing is written for a rejected config");
}

/// Reads one float tensor (f32 or f64) from a safetensors file.
fn safetensors_f64(path: &Path, name: &str) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let info = &header[name];
    let offsets = info["data_offsets"].as_array().unwrap();
    let (start, end) = (offsets[0].as_u64().unwrap() as usize, offsets[1].as_u64().unwrap() as usize);
    let data = &bytes[8 + header_len + start..8 + header_len + end];
    match info["dtype"].as_str().unwrap() {
        "F64" => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        "F32" => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        other => panic!("unexpected dtype {other}"),
    }
}

/// `kill -9` at arbitrary moments of a run that checkpoints every step never leaves a
/// damaged checkpoint, and the run resumes from whatever checkpoint survived.
#[test]
fn killing_training_never_corrupts_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.hyb");
    std::fs::write(&model, "import std.layers\n\nmodel m {\n    vocab = 32\n    d = 16\n    layers = pattern(\"M*\")\n    heads = 2\n    ssm_heads = 2\n    ssm_head_dim = 8\n    d_state = 4\n    chunk = 4\n}\n").unwrap();
    let run = dir.path().join("run");
    let (model, run_s) = (model.to_str().unwrap().to_string(), run.to_str().unwrap().to_string());
    let mut seen_checkpoint = false;
    for attempt in 0..8u64 {
        let mut args = vec![
            "train".to_string(),
            model.clone(),
            "--steps".into(),
            "100000".into(),
            "--batch".into(),
            "2".into(),
            "--seq".into(),
            "16".into(),
            "--mqar-pairs".into(),
            "3".into(),
            "--save-every".into(),
            "1".into(),
            "--eval-every".into(),
            "0".into(),
        ];
        if run.join("checkpoint.safetensors").exists() {
            args.extend(["--resume".into(), run_s.clone()]);
        } else {
            // A run killed before its first checkpoint leaves metrics; start it over.
            args.extend(["--out".into(), run_s.clone(), "--force".into()]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_hyb"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a varying moment after the run has done a step of its own (startup compiles
        // the program and its kernels, which takes longer than a step).
        let lines = || std::fs::read_to_string(run.join("metrics.jsonl")).map_or(0, |t| t.lines().count());
        let before = lines();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while lines() <= before && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(37 * attempt));
        child.kill().unwrap();
        child.wait().unwrap();
        let ckpt = run.join("checkpoint.safetensors");
        if ckpt.exists() {
            seen_checkpoint = true;
            let state = hyb_runtime::train::checkpoint::load(&ckpt).expect("the surviving checkpoint loads").state;
            assert!(state.step >= 1 && !state.params.is_empty());
        }
    }
    assert!(seen_checkpoint, "no checkpoint was ever written");
    let done = hyb_runtime::train::checkpoint::load(&run.join("checkpoint.safetensors")).unwrap().state.step;
    let r = hyb(&["train", &model, "--resume", &run_s, "--steps", &(done + 1).to_string()]);
    assert!(r.status.success(), "{}", stderr(&r));
}

#[test]
fn explain_shows_merged_projections_folded_multipliers_and_flash_attention() {
    let dir = tempfile::tempdir().unwrap();
    let dot = dir.path().join("tiny.dot");
    let out = hyb(&["explain", "examples/tiny_hybrid.hyb", "--dot", dot.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "one GEMM over packed weights ×4: layers.*.self_attn.q_proj | layers.*.self_attn.k_proj | layers.*.self_attn.v_proj | layers.*.mamba.in_proj",
        "flash_attention kernels: 4",
        "flash_attention_grad kernels: 4",
        "merge-gemms",
        "matmul-scale-out",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let folded = text.lines().find(|l| l.contains("multiplier folded into the epilogue")).unwrap();
    assert!(!folded.ends_with(": 0"), "{folded}");
    assert!(std::fs::read_to_string(&dot).unwrap().starts_with("digraph"));
}

/// `compile N ms` from explain's output.
fn compile_ms(text: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with("compile ")).unwrap();
    line["compile ".len()..].split(" ms").next().unwrap().parse().unwrap()
}

#[test]
fn explain_falcon_h1_34b_training_step_at_tp_1_and_8() {
    for tp in ["1", "8"] {
        let out = hyb(&["explain", "stdlib/falcon_h1.hyb", "--model", "falcon_h1_34b", "--tp", tp]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("flash_attention kernels: 72"), "{text}");
        assert!(text.contains("×72: layers.*.self_attn.q_proj | layers.*.self_attn.k_proj"), "{text}");
        if tp == "8" {
            // MLP width and vocabulary divide by 8; 20 query heads (with their 4 key/value
            // heads) split into 4 parts, each on 2 ranks; Mamba's heads, read by 2 B/C groups
            // and normed in 2 groups, into 2 parts.
            let param = |name: &str| {
                text.lines().find(|l| l.contains(&format!("layers.*.{name}.weight ")) && l.contains("×72")).unwrap()
            };
            let up = param("feed_forward.up_proj");
            assert!(up.contains("[2688, 5120]") && up.contains("axis 0 split 8 ways"), "{up}");
            for name in ["self_attn.q_proj", "self_attn.k_proj"] {
                assert!(param(name).contains("axis 0 in 4 parts over 8 ranks"), "{}", param(name));
            }
            assert!(
                param("mamba.in_proj").contains("[4096 in 2 parts, 4096 in 2 parts,"),
                "{}",
                param("mamba.in_proj")
            );
        }
        // The budget is for an optimised build (debug builds are several times slower).
        if !cfg!(debug_assertions) {
            assert!(compile_ms(&text) < 10_000.0, "{text}");
        }
    }
}

/// Fewer key/value heads than ranks (2 over 4): each rank holds the one its query heads
/// read, the query heads split 4 ways.
#[test]
fn explain_duplicates_key_value_heads_over_more_ranks() {
    let out = hyb(&["explain", "examples/tiny_hybrid.hyb", "--tp", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let split = text.lines().find(|l| l.contains("split ") && l.contains("q_proj.weight axis 0,")).unwrap();
    assert!(split.contains("k_proj.weight axis 0 in 2 parts"), "{split}");
    let k = text.lines().find(|l| l.contains("layers.*.self_attn.k_proj.weight ") && l.contains("×4")).unwrap();
    assert!(k.contains("[16, 64]") && k.contains("axis 0 in 2 parts over 4 ranks"), "{k}");
}

#[test]
fn explain_rejects_zero_ranks() {
    let out = hyb(&["explain", "examples/tiny_hybrid.hyb", "--tp", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--tp must be at least 1"), "{}", stderr(&out));
}

/// The GFLOP column of every kernel line of `kind` in explain's output.
fn gflops_of(text: &str, kind: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.split_whitespace().next() == Some(kind))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "GFLOP").unwrap();
            words[at - 1].parse().unwrap()
        })
        .collect()
}

#[test]
fn explain_names_its_machine_reports_saturation_and_prices_one_scan_backward() {
    let run = |machine: &str| {
        let args =
            ["explain", "stdlib/falcon_h1.hyb", "--model", "falcon_h1_0_5b", "--all-kernels", "--machine", machine];
        let out = hyb(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let h200 = run("h200");
    assert!(h200.contains("machine: h200 · 797 TFLOP/s, 4.26 TB/s"), "{h200}");
    let saturation = h200.lines().find(|l| l.starts_with("saturation: ")).unwrap();
    assert!(saturation.contains("runs stopped: ") && saturation.contains("iterations"), "{saturation}");
    // Each layer's backward runs its one scan's backward once, at twice the forward's FLOPs
    // (the layers are alike, so every region lists the same numbers).
    let (forward, backward) = (gflops_of(&h200, "ssd_scan"), gflops_of(&h200, "ssd_scan_grad"));
    assert!(!forward.is_empty() && !backward.is_empty(), "{h200}");
    for b in &backward {
        assert!((b - 2.0 * forward[0]).abs() <= 0.011, "backward {b} vs forward {}", forward[0]);
    }
    for region in h200.split("\n  layers ").skip(1) {
        let region = region.split("\n  outside").next().unwrap();
        assert!(gflops_of(region, "ssd_scan_grad").len() <= 1, "one scan backward per layer:\n{region}");
    }
    let h100 = run("h100");
    assert!(h100.contains("machine: h100 · 800 TFLOP/s, 3.00 TB/s"), "{h100}");
    let out = hyb(&["explain", "examples/tiny_hybrid.hyb", "--machine", "a100"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("h200") && stderr(&out).contains("h100"), "{}", stderr(&out));
}

#[test]
fn explain_prints_the_memory_plan_and_refuses_a_plan_that_does_not_fit() {
    let args = ["explain", "stdlib/falcon_h1.hyb", "--model", "falcon_h1_0_5b", "--batch", "4", "--memory"];
    let out = hyb(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "memory per rank",
        "weights (f32 master + live bf16 copies)",
        "optimizer state",
        "activations kept for backward",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // 521M parameters: 4 bytes of master weights, plus 2 for each bf16 copy still to be
    // read at the peak (the end of the forward pass: nearly all), 8 of moments.
    let gib = |label: &str| -> f64 {
        let line = text.lines().find(|l| l.contains(label)).unwrap();
        line.split_whitespace().rev().nth(1).unwrap().parse().unwrap()
    };
    let per_param = gib("weights (f32") * (1u64 << 30) as f64 / 521_411_104.0;
    assert!(
        (5.5..=6.0).contains(&per_param),
        "{per_param} bytes per parameter:
{text}"
    );
    assert!((gib("optimizer state") - 521_411_104.0 * 8.0 / (1u64 << 30) as f64).abs() < 0.01, "{text}");
    let out = hyb(&[
        "explain",
        "stdlib/falcon_h1.hyb",
        "--model",
        "falcon_h1_0_5b",
        "--batch",
        "4",
        "--device-memory",
        "8GiB",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let refusal = stderr(&out);
    assert!(refusal.contains("but the device has 8.00 GiB"), "{refusal}");
    assert!(refusal.contains("activations kept for backward"), "the refusal shows the breakdown: {refusal}");
    // Even full recompute does not fit; more ranks do (a plan the compiler made).
    assert!(refusal.contains("recomputing 36 of 36 layers fully") && refusal.contains("--tp "), "{refusal}");
    let out = hyb(&["explain", "examples/tiny_hybrid.hyb", "--device-memory", "lots"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn compile_writes_artifacts_that_explain_reads_and_train_runs() {
    let dir = tempfile::tempdir().unwrap();
    // Token ids below every example's vocabulary, as little-endian u16s.
    let tokens = dir.path().join("tokens.bin");
    std::fs::write(
        &tokens,
        (0..4096u32).flat_map(|i| (((i * 7 + i / 5) % 16) as u16).to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let mut models: Vec<(String, Option<&str>)> = repo_files("examples").into_iter().map(|f| (f, None)).collect();
    models.push(("stdlib/falcon_h1.hyb".into(), Some("falcon_h1_0_5b")));
    for (file, model) in &models {
        let out = dir.path().join(format!("{}.hybc", Path::new(file).file_stem().unwrap().to_str().unwrap()));
        let mut args = vec!["compile", file.as_str(), "--batch", "2", "--seq", "32", "-o", out.to_str().unwrap()];
        if let Some(m) = model {
            args.extend(["--model", m]);
        }
        let run = hyb(&args);
        assert!(run.status.success(), "{file}: {}", stderr(&run));
        let shown = hyb(&["explain", out.to_str().unwrap()]);
        assert!(shown.status.success(), "{file}: {}", stderr(&shown));
        let text = stdout(&shown);
        assert!(text.contains("compiled artifact for cpu · training step · tp 1 · B=2 T=32"), "{text}");
        assert!(text.contains("memory per rank"), "{text}");
        if model.is_none() {
            // The artifact trains on the CPU, and evaluates with its forward pass.
            let run = dir.path().join(format!("run_{}", Path::new(file).file_stem().unwrap().to_str().unwrap()));
            let args = ["train", out.to_str().unwrap(), "--data", tokens.to_str().unwrap(), "--token-bytes", "2"];
            let trained = hyb(&[
                &args[..],
                &["--steps", "2", "--eval-every", "2", "--eval-batches", "1", "--out", run.to_str().unwrap()],
            ]
            .concat());
            assert!(trained.status.success(), "{file}: {}", stderr(&trained));
            let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
            assert!(metrics.lines().count() == 2 && metrics.contains("eval_loss"), "{file}: {metrics}");
        }
    }
    let damaged = dir.path().join("damaged.hybc");
    std::fs::write(&damaged, b"HYBC\x01\x00\x00\x00 not really").unwrap();
    let shown = hyb(&["explain", damaged.to_str().unwrap()]);
    assert_eq!(shown.status.code(), Some(2));
    assert!(stderr(&shown).contains("cannot load") && stderr(&shown).contains("truncated"), "{}", stderr(&shown));
}

/// Training from an artifact is training from its source: the same losses, step for step;
/// a run started from one resumes from the other; settings the artifact compiled in, or
/// sizes it was not planned for, are refused by name.
#[test]
fn train_from_an_artifact_matches_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let (model, hybc) = ("examples/tiny_hybrid.hyb", dir.path().join("tiny.hybc"));
    let hybc_s = hybc.to_str().unwrap();
    let r = hyb(&["compile", model, "--batch", "4", "--seq", "16", "--recompute", "full", "-o", hybc_s]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stdout(&r).contains("full recompute in"), "{}", stdout(&r));
    let common = ["--batch", "4", "--seq", "16", "--mqar-pairs", "3", "--eval-every", "2", "--eval-batches", "1"];
    let run = |what: &str, out: &Path, steps: &str, extra: &[&str]| {
        let args = [&["train", what, "--steps", steps, "--out", out.to_str().unwrap()][..], &common, extra].concat();
        let r = hyb(&args);
        assert!(r.status.success(), "{what}: {}", stderr(&r));
    };
    let losses = |out: &Path| -> Vec<String> {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {} {}", v["loss"], v["grad_norm"], v["eval_loss"])
            })
            .collect()
    };
    let (a, b) = (dir.path().join("from_source"), dir.path().join("from_artifact"));
    run(model, &a, "4", &[]);
    run(hybc_s, &b, "4", &[]);
    assert_eq!(losses(&a), losses(&b), "the artifact trains as its source does");
    // A run of the source resumes from the artifact.
    let c = dir.path().join("resumed");
    run(model, &c, "2", &[]);
    let r = hyb(&["train", hybc_s, "--resume", c.to_str().unwrap(), "--steps", "4"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(losses(&a), losses(&c), "resumed on the artifact");
    for (flags, says) in [
        (vec!["--batch", "8"], "compiled for --batch 4 --seq 16"),
        (vec!["--weight-decay", "0.5"], "weight decay"),
        (vec!["--base-width", "8"], "--base-width is compiled into the artifact"),
        (vec!["--executor", "reference"], "the reference executor runs a `.hyb` model"),
    ] {
        let out = dir.path().join("refused");
        let args =
            [&["train", hybc_s, "--steps", "1", "--out", out.to_str().unwrap(), "--mqar-pairs", "3"][..], &flags]
                .concat();
        let r = hyb(&args);
        assert_eq!(r.status.code(), Some(2), "{flags:?}");
        assert!(stderr(&r).contains(says), "{flags:?}: {}", stderr(&r));
        assert!(!out.exists(), "a refused run leaves no directory");
    }
}

/// `--recompute` changes memory, never results: every policy trains to the same losses;
/// a plan that cannot fit `--device-memory` is refused before the run starts.
#[test]
fn train_recompute_policies_agree_and_the_budget_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let model = "examples/tiny_hybrid.hyb";
    let mut seen = Vec::new();
    for policy in ["none", "selective", "full", "auto"] {
        let out = dir.path().join(policy);
        let args =
            ["train", model, "--steps", "3", "--batch", "2", "--seq", "16", "--mqar-pairs", "3", "--eval-every", "0"];
        let r = hyb(&[&args[..], &["--recompute", policy, "--out", out.to_str().unwrap()]].concat());
        assert!(r.status.success(), "{policy}: {}", stderr(&r));
        seen.push(
            std::fs::read_to_string(out.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    format!("{} {}", v["loss"], v["grad_norm"])
                })
                .collect::<Vec<_>>(),
        );
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    let out = dir.path().join("too_small");
    let r = hyb(&["train", model, "--steps", "1", "--device-memory", "1KiB", "--out", out.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2));
    assert!(stderr(&r).contains("but the device has") && stderr(&r).contains("at its peak"), "{}", stderr(&r));
    assert!(!out.exists(), "nothing is written for a plan that does not fit");
}

/// `hyb compile --emit` prints every kernel's code at the stage asked for, `--kernel` picks
/// one by the name `--emit` prints, and an unknown name is an error listing the real ones.
#[test]
fn compile_emits_each_kernel_at_each_stage() {
    let base = ["compile", "examples/tiny_hybrid.hyb", "--batch", "2", "--seq", "16", "--emit"];
    let mut names = Vec::new();
    for (stage, marker) in [("mlir", "func.func @"), ("llvm", "define void @"), ("ptx", ".entry ")] {
        let run = hyb(&[&base[..], &[stage]].concat());
        assert!(run.status.success(), "{stage}: {}", stderr(&run));
        let text = String::from_utf8_lossy(&run.stdout).to_string();
        assert!(text.contains(marker), "{stage}: no `{marker}` in the output");
        names = text
            .lines()
            .filter_map(|l| l.strip_prefix("// ===== ")?.strip_suffix(" ====="))
            .map(String::from)
            .collect();
        assert!(names.iter().any(|n| n.starts_with("flash_attention")), "{stage}: {names:?}");
        assert!(names.iter().any(|n| n.starts_with("ssd_scan")), "{stage}: {names:?}");
    }
    let one = &names[0];
    let run = hyb(&[&base[..], &["ptx", "--kernel", one]].concat());
    assert!(run.status.success(), "{}", stderr(&run));
    let text = String::from_utf8_lossy(&run.stdout).to_string();
    assert_eq!(text.matches("// ===== ").count(), 1, "one kernel");
    let run = hyb(&[&base[..], &["mlir", "--kernel", "no_such_kernel"]].concat());
    assert!(!run.status.success());
    assert!(stderr(&run).contains("no kernel named `no_such_kernel`") && stderr(&run).contains(one.as_str()));
    let run = hyb(&["compile", "examples/tiny_hybrid.hyb", "--kernel", "x"]);
    assert!(!run.status.success(), "--kernel needs --emit");
}

/// The "training step: …" line of a run's output: how many kernels were compiled and loaded.
fn kernels_line(o: &Output) -> String {
    stdout(o).lines().find(|l| l.starts_with("training step:")).unwrap_or_default().to_string()
}

fn losses_of(run: &Path) -> Vec<String> {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    metrics
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {}", v["loss"], v["grad_norm"])
        })
        .collect()
}

/// Runs share compiled kernels through the cache: two at once into an empty cache both
/// train, to the same losses; a later run compiles nothing and trains to them too. Without
/// the cache every kernel compiles; an unwritable cache is a warning, not a failure.
#[test]
fn train_keeps_compiled_kernels_in_a_cache_that_runs_share() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache_s = cache.to_str().unwrap();
    let train = |out: &str| {
        let out = dir.path().join(out);
        let args = ["train", "examples/tiny_hybrid.hyb", "--steps", "2", "--batch", "2", "--seq", "16"];
        let args = [&args[..], &["--mqar-pairs", "3", "--eval-every", "0", "--out", out.to_str().unwrap()]].concat();
        (args.iter().map(|s| s.to_string()).collect::<Vec<_>>(), out)
    };
    let spawn = |out: &str, env: &[(&str, &str)]| {
        let (args, out) = train(out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let piped = std::process::Stdio::piped;
        (hyb_with(&args, env).stdout(piped()).stderr(piped()).spawn().unwrap(), out)
    };
    let env = [("HYB_CACHE_DIR", cache_s)];
    let (first, second) = (spawn("first", &env), spawn("second", &env));
    let (a, b) = (first.0.wait_with_output().unwrap(), second.0.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success(), "{}{}", stderr(&a), stderr(&b));
    assert!(kernels_line(&a).contains(" compiled, "), "{}", stdout(&a));
    assert_eq!(losses_of(&first.1), losses_of(&second.1));
    let (warm, warm_out) = spawn("warm", &env);
    let warm = warm.wait_with_output().unwrap();
    assert!(warm.status.success(), "{}", stderr(&warm));
    assert!(kernels_line(&warm).contains(": 0 compiled, "), "{}", stdout(&warm));
    assert_eq!(losses_of(&warm_out), losses_of(&first.1));
    let entries = std::fs::read_dir(&cache).unwrap().count();
    let (off, _) = spawn("off", &[("HYB_CACHE_DIR", cache_s), ("HYB_CACHE", "off")]);
    let off = off.wait_with_output().unwrap();
    assert!(kernels_line(&off).contains(", 0 loaded"), "{}", stdout(&off));
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), entries, "the cache is left alone");
    // A file where the cache's folder would be.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"").unwrap();
    let nested = blocked.join("cache");
    let (unwritable, _) = spawn("unwritable", &[("HYB_CACHE_DIR", nested.to_str().unwrap())]);
    let unwritable = unwritable.wait_with_output().unwrap();
    assert!(unwritable.status.success(), "{}", stderr(&unwritable));
    assert_eq!(stderr(&unwritable).matches("cannot write the kernel cache").count(), 1, "{}", stderr(&unwritable));
}

/// An artifact carries its CPU kernels' object code: a run of it on this host compiles
/// nothing (with no cache either) and trains as its source does; the code of another host
/// is not used, the run says so once and compiles the kernels.
#[test]
fn an_artifact_runs_its_object_code_here_and_recompiles_elsewhere() {
    use hyb_compiler::artifact::{Artifact, Target};
    let dir = tempfile::tempdir().unwrap();
    let (model, hybc) = ("examples/tiny_hybrid.hyb", dir.path().join("tiny.hybc"));
    let hybc_s = hybc.to_str().unwrap();
    let r = hyb(&["compile", model, "--batch", "2", "--seq", "16", "-o", hybc_s]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stdout(&r).contains("object code of"), "{}", stdout(&r));
    let train = |what: &str, out: &str| {
        let out = dir.path().join(out);
        let args = ["train", what, "--steps", "2", "--batch", "2", "--seq", "16", "--mqar-pairs", "3"];
        let r =
            hyb(&[&args[..], &["--eval-every", "2", "--eval-batches", "1", "--out", out.to_str().unwrap()]].concat());
        assert!(r.status.success(), "{what}: {}", stderr(&r));
        (r, losses_of(&out))
    };
    let (source, want) = train(model, "source");
    assert!(kernels_line(&source).contains(", 0 loaded"), "{}", stdout(&source));
    let (here, got) = train(hybc_s, "here");
    assert!(kernels_line(&here).contains(": 0 compiled, "), "{}", stdout(&here));
    assert!(stdout(&here).contains("evaluation: ") && stdout(&here).contains("(0 compiled, "), "{}", stdout(&here));
    assert_eq!(got, want);
    let mut artifact = Artifact::from_bytes(&std::fs::read(&hybc).unwrap(), Target::Cpu).unwrap();
    assert!(!artifact.objects.kernels.is_empty());
    artifact.objects.host.features.push_str(",+imaginary");
    let elsewhere = dir.path().join("elsewhere.hybc");
    std::fs::write(&elsewhere, artifact.to_bytes()).unwrap();
    let (there, got) = train(elsewhere.to_str().unwrap(), "elsewhere");
    assert_eq!(stderr(&there).matches("built for another host (CPU features differ)").count(), 1, "{}", stderr(&there));
    assert!(kernels_line(&there).contains(", 0 loaded"), "{}", stdout(&there));
    assert_eq!(got, want);
}

#[test]
fn train_on_a_gpu_that_is_not_there_says_so_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let out = out_dir.to_str().unwrap();
    for extra in [&["--device", "cuda"][..], &["--check-gpu"][..]] {
        let mut args = vec!["train", "examples/tiny_hybrid.hyb", "--steps", "1", "--out", out];
        args.extend_from_slice(extra);
        let o = hyb(&args);
        if o.status.success() {
            // A machine with a GPU: the run worked there.
            continue;
        }
        let err = stderr(&o);
        assert!(err.contains("--device cpu"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out_dir.exists() || extra[0] == "--device", "the GPU check wrote {out}");
    }
    // Profiling needs a GPU: refused before anything is compiled or written.
    let cpu = dir.path().join("cpu");
    let o = hyb(&["train", "examples/tiny_hybrid.hyb", "--device", "cpu", "--profile", "--out", cpu.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--profile times launches on a GPU"), "{}", stderr(&o));
    assert!(!cpu.exists());
    // The reference executor runs on the CPU only.
    let o = hyb(&["train", "examples/tiny_hybrid.hyb", "--device", "cuda", "--executor", "reference"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("reference executor runs on the CPU"), "{}", stderr(&o));
}

#[test]
fn train_packs_documents_into_rows_and_refuses_what_it_cannot_pack() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("docs.txt");
    let docs: Vec<String> = (0..400).map(|k| "ab cd ef ".repeat(1 + k % 7)).collect();
    std::fs::write(&text, docs.join("\n")).unwrap();
    let data = text.to_str().unwrap();
    let run = dir.path().join("run");
    let o = hyb(&[
        "train",
        "examples/tiny_hybrid.hyb",
        "--device",
        "cpu",
        "--data",
        data,
        "--pack",
        "eod=10",
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq",
        "32",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The packed program's document primitives run as generated code like the rest.
    assert!(stdout(&o).contains("launches run native code") && !stdout(&o).contains("interpreted"), "{}", stdout(&o));
    // It says where its start went.
    assert!(stdout(&o).contains("start: parameters initialised in"), "{}", stdout(&o));
    // Resuming reads the same packed data from the checkpoint.
    let o = hyb(&[
        "train",
        "examples/tiny_hybrid.hyb",
        "--device",
        "cpu",
        "--resume",
        run.to_str().unwrap(),
        "--steps",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lengths = format!("lengths={}", dir.path().join("lengths.txt").display());
    for (args, why) in [
        (vec!["--pack", "eod=10"], "MQAR sequences are generated"),
        (vec!["--data", data, "--pack", "eod=x"], "takes a token id"),
        (vec!["--data", data, "--pack", "sizes=3"], "expected eod=ID or lengths=FILE"),
        (vec!["--data", data, "--pack", &lengths], "cannot read"),
    ] {
        let out = dir.path().join("refused");
        let mut all = vec![
            "train",
            "examples/tiny_hybrid.hyb",
            "--device",
            "cpu",
            "--steps",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        all.extend(args.iter().copied());
        let o = hyb(&all);
        assert!(!o.status.success(), "{args:?}");
        assert!(stderr(&o).contains(why) && !stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

/// `--set` replaces a model's setting for one command (`explain` here; `train` alike): a
/// variant that checks is compiled, one that does not gets the checker's diagnostic
/// pointing into the variant, and a malformed one is refused by the argument parser.
#[test]
fn set_replaces_a_setting_for_one_command() {
    let model = "examples/tiny_hybrid.hyb";
    let plain = hyb(&["explain", model]);
    let wider = hyb(&["explain", model, "--set", "heads=8", "--set", "kv_heads=8", "--set", "layers[0].d_ff=256"]);
    assert!(plain.status.success() && wider.status.success(), "{}", stderr(&wider));
    let params = |o: &Output| stdout(o).lines().next().unwrap().split(", ").nth(1).unwrap().to_string();
    assert_ne!(params(&plain), params(&wider), "{}", stdout(&wider));
    let bad = hyb(&["explain", model, "--set", "heads=7"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("64 / 7 is not a whole number"), "{}", stderr(&bad));
    let malformed = hyb(&["explain", model, "--set", "layers[2..1].heads=2"]);
    assert!(!malformed.status.success() && stderr(&malformed).contains("the range is empty"), "{}", stderr(&malformed));
}
