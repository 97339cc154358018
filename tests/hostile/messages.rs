//! Errors say what is wrong and where: the tensor at fault, the kind of file given.

use super::*;

/// A safetensors file with a hand-written header over `data`.
fn safetensors(header: serde_json::Value, data: &[u8]) -> Vec<u8> {
    let head = header.to_string().into_bytes();
    let mut out = (head.len() as u64).to_le_bytes().to_vec();
    out.extend(head);
    out.extend(data);
    out
}

fn load_error(bytes: Vec<u8>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    std::fs::write(&path, bytes).unwrap();
    hyb_runtime::weights::load(&path).unwrap_err().to_string()
}

#[test]
fn a_dtype_whose_size_does_not_match_its_bytes_names_the_tensor() {
    let header = serde_json::json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F64", "shape": [3], "data_offsets": [8, 20]},
    });
    let err = load_error(safetensors(header, &[0; 20]));
    assert!(err.contains("`b`") && err.contains("24 bytes") && err.contains("hold 12"), "{err}");
}

#[test]
fn an_out_of_range_offset_names_the_right_tensor() {
    let header = serde_json::json!({
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "z": {"dtype": "F32", "shape": [2], "data_offsets": [4, 4000]},
    });
    let err = load_error(safetensors(header, &[0; 12]));
    assert!(err.contains("`z`") && err.contains("outside"), "{err}");
    let header =
        serde_json::json!({"big": {"dtype": "F32", "shape": [1u64 << 40, 1u64 << 40], "data_offsets": [0, 4]}});
    let err = load_error(safetensors(header, &[0; 4]));
    assert!(err.contains("`big`"), "{err}");
}

#[test]
fn a_training_checkpoint_given_as_weights_says_how_to_export_it() {
    let s = Scratch::new();
    let run = s.s("run");
    assert!(s.train(&["--steps", "1", "--out", &run]).status.success());
    let model = s.s("m.hyb");
    let ckpt = s.s("run/checkpoint.safetensors");
    let r = hyb(&["logits", &model, "--weights", &ckpt, "--ids", "1,2"]);
    fails_with(&r, &["training checkpoint", "hyb export"]);
    // `hyb export` takes the run directory (or its checkpoint) directly.
    for weights in [&run, &ckpt] {
        let out = s.path("hf");
        let r = hyb(&["export", &model, "--weights", weights, "-o", out.to_str().unwrap()]);
        assert!(r.status.success(), "{}", stderr(&r));
        assert!(out.join("config.json").exists() && out.join("model.safetensors").exists());
    }
}
