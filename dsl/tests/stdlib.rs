//! The standard library and examples check cleanly, and the Falcon-H1 models have exactly
//! the parameter counts that Hugging Face transformers computes from their configs
//! (`tests/fixtures/hf_param_counts.json`, made by `tests/fixtures/hf_param_counts.py`).

mod common;
use common::*;
use hyb_compiler::check::check_paths;
use hyb_dsl::expand::model::ModelSummary;
use std::collections::HashMap;
use std::path::PathBuf;

fn summaries(paths: Vec<PathBuf>) -> HashMap<String, ModelSummary> {
    big_stack(move || {
        let refs: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
        let checked = check_paths(&refs).unwrap();
        let rendered: Vec<String> =
            checked.diagnostics.iter().map(|d| format!("{:?}", d.report(&checked.program.sources))).collect();
        assert!(rendered.is_empty(), "{}", rendered.join("\n"));
        checked.models.into_iter().map(|(_, m)| (m.summary.name.clone(), m.summary)).collect()
    })
}

#[test]
fn stdlib_and_examples_check_cleanly() {
    let files: Vec<PathBuf> =
        repo_hyb_files().into_iter().filter(|p| !p.starts_with(repo_root().join("tests"))).collect();
    let models = summaries(files);
    for name in ["tiny_hybrid", "jamba_interleave", "mamba2_pure", "transformer", "bitnet_hybrid", "ratio_schedule"] {
        assert!(models.contains_key(name), "example model {name} missing");
    }
}

#[test]
fn falcon_h1_parameter_counts_match_transformers() {
    let models = summaries(vec![repo_root().join("stdlib/falcon_h1.hyb")]);
    let hf: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("tests/fixtures/hf_param_counts.json")).unwrap(),
    )
    .unwrap();
    let hf = hf.as_object().unwrap();
    assert_eq!(hf.len(), 4);
    for (name, counts) in hf {
        let ours = &models[name.as_str()];
        let cfg = &counts["config"];
        assert_eq!(ours.total_params, counts["total"].as_u64().unwrap(), "{name}: total");
        assert_eq!(ours.layers.len() as u64, cfg["num_hidden_layers"].as_u64().unwrap(), "{name}: layers");
        assert_eq!(ours.vocab, cfg["vocab_size"].as_u64().unwrap(), "{name}: vocab");
        assert_eq!(ours.d, cfg["hidden_size"].as_u64().unwrap(), "{name}: d");
        let layer0: u64 = counts["layer0"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        for l in &ours.layers {
            assert_eq!(l.params, layer0, "{name}: layer {}", l.index);
            assert_eq!(l.attention_heads, cfg["num_attention_heads"].as_u64().unwrap(), "{name}: attention heads");
            assert_eq!(l.ssm_heads, cfg["mamba_n_heads"].as_u64().unwrap(), "{name}: ssm heads");
        }
        let other = counts["other"].as_object().unwrap();
        assert_eq!(ours.embedding_params, other["model.embed_tokens.weight"].as_u64().unwrap());
        assert_eq!(ours.final_norm_params, other["model.final_layernorm.weight"].as_u64().unwrap());
        assert_eq!(ours.lm_head_params, other.get("lm_head.weight").map_or(0, |v| v.as_u64().unwrap()));
    }
}

#[test]
fn per_layer_overrides_change_head_ratio() {
    let models = summaries(vec![repo_root().join("examples/ratio_schedule.hyb")]);
    let heads: Vec<(u64, u64)> =
        models["ratio_schedule"].layers.iter().map(|l| (l.attention_heads, l.ssm_heads)).collect();
    assert_eq!(heads, vec![(8, 2), (8, 2), (4, 4), (4, 4), (2, 8), (2, 8)]);
}

#[test]
fn layer_patterns_unroll_in_order() {
    let models = summaries(vec![repo_root().join("examples/jamba_interleave.hyb")]);
    let kinds: String = models["jamba_interleave"].layers.iter().map(|l| l.letter.unwrap()).collect();
    assert_eq!(kinds, "MMM*-MMM*-");
}

#[test]
fn parameter_names_follow_the_layer_structure() {
    let path = repo_root().join("examples/tiny_hybrid.hyb");
    let names: Vec<String> = big_stack(move || {
        let checked = check_paths(&[&path]).unwrap();
        checked.models[0].1.trace.params().map(|p| p.name.clone()).collect()
    });
    for want in [
        "embed_tokens.weight",
        "layers.0.input_layernorm.weight",
        "layers.0.self_attn.q_proj.weight",
        "layers.0.mamba.in_proj.weight",
        "layers.0.mamba.conv1d.weight",
        "layers.0.mamba.conv1d.bias",
        "layers.0.mamba.A_log",
        "layers.3.out_proj.weight",
        "layers.3.feed_forward.down_proj.weight",
        "final_norm.weight",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    assert!(!names.iter().any(|n| n == "lm_head.weight"), "tied head must not have its own weight");
    let unique: std::collections::HashSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "parameter names must be unique");
}
