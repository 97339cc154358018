//! Hugging Face parity: every fixture in tests/fixtures/falcon_h1 (tiny random
//! `FalconH1ForCausalLM` checkpoints made by tests/fixtures/make_falcon_h1.py with
//! transformers) is imported, run by the reference interpreter, and compared with the logits
//! transformers computed; export → import round-trips bit-exactly.

use hyb_compiler::elaborate::elaborate;
use hyb_compiler::reference::{run, Real, Tensor};
use hyb_runtime::hf::{self, HfError};
use hyb_runtime::weights::{self, Weights};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/falcon_h1");
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("config.json").exists()).collect();
    out.sort();
    assert!(out.len() >= 4, "fixtures missing: {out:?}");
    out
}

fn expand(hyb: &Path) -> hyb_dsl::expand::model::Expanded {
    let hyb = hyb.to_path_buf();
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let mut checked = hyb_compiler::check::check_paths(&[&hyb]).unwrap();
            let msgs: Vec<String> =
                checked.diagnostics.iter().map(|d| format!("{:?}", d.report(&checked.program.sources))).collect();
            assert!(msgs.is_empty(), "{}", msgs.join("\n"));
            checked.models.remove(0).1
        })
        .unwrap()
        .join()
        .unwrap()
}

fn ids(fixture: &Path) -> (Vec<usize>, Vec<f64>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("inputs.json")).unwrap()).unwrap();
    let rows: Vec<Vec<f64>> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect();
    (vec![rows.len(), rows[0].len()], rows.concat())
}

fn logits<T: Real>(model: &hyb_dsl::expand::model::Expanded, w: &Weights, fixture: &Path) -> Vec<f64> {
    let g = elaborate(&model.trace);
    let params: HashMap<String, Tensor<T>> =
        w.iter().map(|(k, v)| (k.clone(), Tensor::from_f64(v.tensor.shape.clone(), &v.tensor.data))).collect();
    let (shape, data) = ids(fixture);
    let inputs = HashMap::from([("ids".to_string(), Tensor::<T>::from_f64(shape, &data))]);
    run(&g, &params, &inputs).unwrap().remove(0).to_f64()
}

/// max |Δ| / max |reference|.
fn relative_error(ours: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let max = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
    ours.iter().zip(reference).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / max
}

#[test]
fn logits_match_transformers() {
    for fixture in fixtures() {
        let out = tempfile::tempdir().unwrap();
        hf::import(&fixture, out.path(), "imported").unwrap();
        let model = expand(&out.path().join("imported.hyb"));
        let w = weights::load(&out.path().join("imported.safetensors")).unwrap();
        let hf_logits = weights::load(&fixture.join("logits.safetensors")).unwrap();
        let f64_ref = &hf_logits["logits_f64_pure"].tensor.data;
        let f32_ref = &hf_logits["logits_f32"].tensor.data;
        let e64 = relative_error(&logits::<f64>(&model, &w, &fixture), f64_ref);
        let e32 = relative_error(&logits::<f32>(&model, &w, &fixture), f32_ref);
        eprintln!("{}: float64 {e64:.2e}, float32 {e32:.2e}", fixture.display());
        assert!(e64 <= 1e-6, "{}: float64 relative error {e64:e}", fixture.display());
        assert!(e32 <= 1e-4, "{}: float32 relative error {e32:e}", fixture.display());
    }
}

#[test]
fn export_then_import_round_trips_bit_exactly() {
    for fixture in fixtures() {
        let first = tempfile::tempdir().unwrap();
        hf::import(&fixture, first.path(), "m").unwrap();
        let model = expand(&first.path().join("m.hyb"));
        let ours = weights::load(&first.path().join("m.safetensors")).unwrap();
        let exported = tempfile::tempdir().unwrap();
        hf::export(&model.summary, ours.clone(), exported.path()).unwrap();
        // The exported tensors are exactly the original checkpoint's.
        let original = weights::load(&fixture.join("model.safetensors")).unwrap();
        let written = weights::load(&exported.path().join("model.safetensors")).unwrap();
        let tied = model.summary.tie_embeddings;
        let original: Weights = original.into_iter().filter(|(k, _)| !(tied && k == "lm_head.weight")).collect();
        assert_eq!(written, original, "{}", fixture.display());
        // And importing the export gives back the same hyb weights and the same config.
        let second = tempfile::tempdir().unwrap();
        let cfg = hf::import(exported.path(), second.path(), "m").unwrap();
        assert_eq!(weights::load(&second.path().join("m.safetensors")).unwrap(), ours);
        let original_cfg =
            hf::FalconConfig::from_json(&std::fs::read_to_string(fixture.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg, original_cfg);
    }
}

fn config_with(
    fixture: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<hf::FalconConfig, HfError> {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    hf::FalconConfig::from_json(&v.to_string())
}

/// An edit of a checkpoint's config.json.
type ConfigEdit = Box<dyn FnOnce(&mut serde_json::Map<String, serde_json::Value>)>;

#[test]
fn unsupported_config_fields_are_named() {
    let f = &fixtures()[0];
    let cases: Vec<(&str, ConfigEdit)> = vec![
        (
            "hidden_act",
            Box::new(|m| {
                m.insert("hidden_act".into(), "gelu".into());
            }),
        ),
        (
            "rope_parameters.rope_type",
            Box::new(|m| {
                m.insert(
                    "rope_parameters".into(),
                    serde_json::json!({"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
                );
            }),
        ),
        (
            "attn_layer_indices",
            Box::new(|m| {
                m.insert("attn_layer_indices".into(), serde_json::json!([0]));
            }),
        ),
        (
            "sliding_window",
            Box::new(|m| {
                m.insert("sliding_window".into(), 128.into());
            }),
        ),
        (
            "mamba_d_ssm",
            Box::new(|m| {
                m.insert("mamba_d_ssm".into(), 33.into());
            }),
        ),
        (
            "num_key_value_heads",
            Box::new(|m| {
                m.insert("num_key_value_heads".into(), 3.into());
            }),
        ),
        (
            "hidden_size",
            Box::new(|m| {
                m.remove("hidden_size");
            }),
        ),
        (
            "model_type",
            Box::new(|m| {
                m.insert("model_type".into(), "llama".into());
            }),
        ),
    ];
    for (field, edit) in cases {
        let err = config_with(f, edit).unwrap_err().to_string();
        assert!(err.contains(&format!("`{field}`")), "expected an error naming `{field}`, got: {err}");
    }
}

#[test]
fn missing_and_misshapen_weights_are_errors() {
    let f = &fixtures()[0];
    let cfg = hf::FalconConfig::from_json(&std::fs::read_to_string(f.join("config.json")).unwrap()).unwrap();
    let mut w = weights::load(&f.join("model.safetensors")).unwrap();
    w.remove("model.layers.1.mamba.D");
    let err = hf::weights_from_hf(&cfg, w).unwrap_err().to_string();
    assert!(err.contains("model.layers.1.mamba.D"), "{err}");
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(f.join("config.json"), copy.path().join("config.json")).unwrap();
    let mut w = weights::load(&f.join("model.safetensors")).unwrap();
    let a_log = w.get_mut("model.layers.1.mamba.A_log").unwrap();
    a_log.tensor = hyb_compiler::reference::Tensor::zeros(vec![a_log.tensor.len() + 1]);
    weights::save(&copy.path().join("model.safetensors"), &w, &Default::default()).unwrap();
    let err = hf::import(copy.path(), &copy.path().join("out"), "m").unwrap_err().to_string();
    assert!(err.contains("layers.1.mamba.A_log") && err.contains("shape"), "{err}");
    let err = weights::load(&f.join("config.json")).unwrap_err().to_string();
    assert!(err.contains("not a valid safetensors file"), "{err}");
}

#[test]
fn sharded_checkpoints_import_like_single_files() {
    let f = &fixtures()[0];
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(f.join("config.json"), dir.path().join("config.json")).unwrap();
    let all = weights::load(&f.join("model.safetensors")).unwrap();
    let (mut a, mut b) = (Weights::new(), Weights::new());
    let mut map = serde_json::Map::new();
    for (i, (k, v)) in all.into_iter().enumerate() {
        let shard = if i % 2 == 0 { "model-00001-of-00002.safetensors" } else { "model-00002-of-00002.safetensors" };
        map.insert(k.clone(), shard.into());
        if i % 2 == 0 {
            a.insert(k, v);
        } else {
            b.insert(k, v);
        }
    }
    weights::save(&dir.path().join("model-00001-of-00002.safetensors"), &a, &Default::default()).unwrap();
    weights::save(&dir.path().join("model-00002-of-00002.safetensors"), &b, &Default::default()).unwrap();
    std::fs::write(dir.path().join("model.safetensors.index.json"), serde_json::json!({"weight_map": map}).to_string())
        .unwrap();
    hf::import(dir.path(), &dir.path().join("sharded"), "m").unwrap();
    hf::import(f, &dir.path().join("single"), "m").unwrap();
    assert_eq!(
        weights::load(&dir.path().join("sharded/m.safetensors")).unwrap(),
        weights::load(&dir.path().join("single/m.safetensors")).unwrap()
    );
}

/// The compiled forward pass, its launches native code (generated kernels, templates,
/// GEMMs) on the CPU executor in float32, gives transformers' float32 logits.
#[test]
fn native_code_logits_match_transformers() {
    use hyb_compiler::pipeline::{compile, plan_graph, Target};
    use hyb_compiler::plan::Precision;
    use hyb_compiler::rewrite::Options;
    use hyb_runtime::cpu;
    for fixture in fixtures() {
        let out = tempfile::tempdir().unwrap();
        hf::import(&fixture, out.path(), "imported").unwrap();
        let model = expand(&out.path().join("imported.hyb"));
        let w = weights::load(&out.path().join("imported.safetensors")).unwrap();
        let g = elaborate(&model.trace);
        let (shape, data) = ids(&fixture);
        let compiled = compile(&g, &Target::Forward, 1, &Options::default());
        let program =
            plan_graph(&compiled.graph, false, shape[0], shape[1], Precision::uniform(hyb_dsl::value::DType::F32))
                .unwrap();
        let kernels = cpu::Kernels::compile(&compiled.graph, &program);
        assert!(kernels.interpreted.is_empty(), "{}: {}", fixture.display(), kernels.summary());
        let params: HashMap<String, Tensor<f32>> =
            w.iter().map(|(k, v)| (k.clone(), Tensor::from_f64(v.tensor.shape.clone(), &v.tensor.data))).collect();
        let inputs = HashMap::from([("ids".to_string(), Tensor::<f32>::from_f64(shape, &data))]);
        let ours = cpu::run_with(&compiled.graph, &program, &kernels, &params, &inputs).unwrap().remove(0).to_f64();
        let hf_logits = weights::load(&fixture.join("logits.safetensors")).unwrap();
        let e32 = relative_error(&ours, &hf_logits["logits_f32"].tensor.data);
        eprintln!("{}: native float32 {e32:.2e}", fixture.display());
        assert!(e32 <= 1e-4, "{}: native float32 relative error {e32:e}", fixture.display());
    }
}
