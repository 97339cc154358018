//! The `hyb` command line, run as a user would: exit codes, output, files left on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hyb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyb"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn repo_files(dir: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
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
    let args: Vec<&str> = std::iter::once("check")
        .chain(files.iter().map(String::as_str))
        .collect();
    let out = hyb(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok:"), "{}", stdout(&out));
}

#[test]
fn check_reports_every_error_with_a_caret_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.hyb");
    std::fs::write(
        &path,
        "block f(x: [B]) -> [B] {\n    y = x * nope\n    return y + alsonope\n}\n",
    )
    .unwrap();
    let out = hyb(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.matches("E010").count(), 2, "{err}");
    assert!(
        err.contains("bad.hyb:2:13") && err.contains("bad.hyb:3:16"),
        "{err}"
    );
    assert!(err.contains("───┬"), "no caret: {err}");
}

#[test]
fn check_of_a_missing_file_is_a_clear_error() {
    let out = hyb(&["check", "no/such/file.hyb"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no/such/file.hyb: no such file"),
        "{}",
        stderr(&out)
    );
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
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        messy,
        "--check must not write"
    );
    let out = hyb(&["fmt", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tidy = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        tidy,
        "block f(x: [B]) -> [B] {\n    // keep me\n    return x * 2\n}\n"
    );
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
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "block f(x: [B]) -> [B] {\n"
    );
}

/// `hyb show` totals for the four Falcon-H1 configurations, as computed by transformers
/// (tests/fixtures/hf_param_counts.json).
#[test]
fn show_prints_falcon_h1_layer_tables() {
    let counts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_param_counts.json"),
        )
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
        assert!(
            total_line.contains(&grouped),
            "{model}: {total_line} vs {grouped}"
        );
        let layers = c["config"]["num_hidden_layers"].as_u64().unwrap() as usize;
        let rows = table
            .lines()
            .filter(|l| l.contains("H falcon_h1_layer"))
            .count();
        assert_eq!(rows, layers, "{table}");
        let heads = c["config"]["num_attention_heads"].as_u64().unwrap();
        let ssm = c["config"]["mamba_n_heads"].as_u64().unwrap();
        let row0: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(
            row0[..5],
            [
                "0",
                "H",
                "falcon_h1_layer",
                &heads.to_string(),
                &ssm.to_string()
            ],
            "{table}"
        );
    }
}

#[test]
fn show_needs_a_model_name_when_the_file_has_several() {
    let out = hyb(&["show", "stdlib/falcon_h1.hyb"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("choose one with --model"),
        "{}",
        stderr(&out)
    );
    let out = hyb(&["show", "stdlib/falcon_h1.hyb", "--model", "falcon_h1_9b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no model `falcon_h1_9b`"),
        "{}",
        stderr(&out)
    );
}
