//! Generation with caches computes what the full forward pass computes: for every example
//! model, prefill on a prompt and then decode steps one token at a time (each token fed
//! back, as generation does) give, at every position, the logits of the forward pass over
//! the whole sequence — in float64 through the compiled programs' reference semantics, and
//! in float32 with native kernels. Prompts of one token and of lengths that are not
//! multiples of the scan's chunk.

mod common;

use common::{examples, forward, lcg};
use hyb_compiler::codegen::cpu::NoObjects;
use hyb_compiler::codegen::unit::{self, Unit};
use hyb_compiler::codegen::{gpu, Symbols, Target};
use hyb_compiler::elaborate::decode::DecodeError;
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::ir::Graph;
use hyb_compiler::pipeline::compile_generation;
use hyb_compiler::reference::{run, Real, Tensor};
use hyb_compiler::rewrite::Options;
use hyb_runtime::generate::cpu::Cpu;
use hyb_runtime::generate::session::{Backend, Programs};
use std::collections::HashMap;
use std::path::Path;

/// Initial weights (norms at one, `A_log` and `dt_bias` in Mamba's ranges) perturbed, so
/// no weight keeps a value that hides a mistake.
fn weights<T: Real>(g: &Graph) -> HashMap<String, Tensor<T>> {
    let mut s = 11;
    g.params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let base = hyb_runtime::train::init::init(p, 5, i as u64, 1.0);
            let data = base.data.iter().map(|&x| T::of(x as f64 + 0.15 * lcg(&mut s))).collect();
            (p.name.clone(), Tensor::new(p.shape.clone(), data))
        })
        .collect()
}

fn vocab(g: &Graph) -> usize {
    g.params.iter().find(|p| p.name == "embed_tokens.weight").map(|p| p.shape[0]).unwrap()
}

/// The largest difference of decoded and full-pass logits relative to the largest logit,
/// for a prompt of `prompt` tokens and `steps` decode steps.
fn mismatch<T: Real>(g: &Graph, prompt: usize, steps: usize) -> f64 {
    let total = prompt + steps;
    let v = vocab(g);
    let ids: Vec<u32> = (0..total).map(|i| ((i * 37 + 5) % v) as u32).collect();
    let params = weights::<T>(g);
    // The oracle: the reference interpreter on the unoptimised forward graph.
    let params64: HashMap<String, Tensor<f64>> =
        params.iter().map(|(k, t)| (k.clone(), Tensor::new(t.shape.clone(), t.to_f64()))).collect();
    let x = Tensor::new(vec![1, total], ids.iter().map(|&i| i as f64).collect());
    let full = run(g, &params64, &HashMap::from([("ids".to_string(), x)])).unwrap().remove(0);
    let gen = compile_generation(g, total, &Options::default()).unwrap();
    let programs = Programs::new::<T>(&gen, prompt, &NoObjects).unwrap();
    // In float32 every launch runs generated code: none is left to the interpreter.
    let (native, launches) = programs.native_launches();
    assert!(native == 0 || native == launches, "{native} of {launches} launches native");
    let mut cpu = Cpu::new(&programs, &params);
    let mut got: Vec<f64> = cpu.prefill_logits(&ids[..prompt]).unwrap().to_f64();
    for (position, &token) in (prompt..).zip(&ids[prompt..]) {
        got.extend(cpu.step(token, position).unwrap());
    }
    assert_eq!(got.len(), full.data.len());
    let scale = full.data.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    got.iter().zip(&full.data).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn decoding_every_example_gives_the_full_pass_logits_in_float64() {
    for path in examples() {
        let g = forward(&path);
        for (prompt, steps) in [(1, 5), (5, 3), (19, 2)] {
            let err = mismatch::<f64>(&g, prompt, steps);
            eprintln!("{}: prompt {prompt}: {err:e}", path.display());
            assert!(err < 1e-10, "{}: prompt {prompt}: relative error {err:e}", path.display());
        }
    }
}

#[test]
fn decoding_with_native_kernels_gives_the_full_pass_logits_in_float32() {
    for name in ["tiny_hybrid", "jamba_interleave", "bitnet_hybrid"] {
        let g = forward(&Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/{name}.hyb")));
        for (prompt, steps) in [(1, 3), (7, 3)] {
            let err = mismatch::<f32>(&g, prompt, steps);
            eprintln!("{name}: prompt {prompt}: {err:e}");
            assert!(err < 1e-5, "{name}: prompt {prompt}: relative error {err:e}");
        }
    }
}

/// What the CUDA executor needs of a generation and can be checked without a GPU: every
/// launch of prefill and decode has code for the GPU (no launch falls back to the
/// interpreter there), and every template among them makes PTX. The templates' values
/// are checked against the reference on the CPU (`compiler/tests/codegen/templates.rs`).
#[test]
fn every_launch_of_generation_has_gpu_code() {
    for path in examples() {
        let g = forward(&path);
        let gen = compile_generation(&g, 24, &Options::default()).unwrap();
        for prompt in [1, 6] {
            let programs = Programs::for_gpu(&gen, prompt).unwrap();
            for exe in programs.executables() {
                let symbols = Symbols { batch: exe.program.batch, seq: exe.program.seq };
                for (i, launch) in exe.program.launches.iter().enumerate() {
                    let unit = unit::for_launch(&exe.graph, launch, symbols, Target::Gpu)
                        .unwrap_or_else(|why| panic!("{}: launch {i} has no GPU code: {why}", path.display()));
                    if let Unit::Template(code) = unit {
                        gpu::compile_template_stored(&code, &[])
                            .unwrap_or_else(|e| panic!("{}: launch {i} ({}): {e}", path.display(), code.name));
                    }
                }
            }
        }
    }
}

#[test]
fn a_model_whose_causal_mask_is_not_attention_is_refused() {
    let text = r#"
model odd {
    vocab = 16
    d = 8
    layers = pattern("X{1}", X = odd_layer)
}

block odd_layer(x: [B, T, d]) -> [B, T, d] {
    s = causal_mask(matmul(x, x, transpose_b = true))
    return x + matmul(s, x)
}
"#;
    let g = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let checked = hyb_compiler::check::check_text("odd.hyb", text);
            assert!(checked.diagnostics.is_empty(), "{:?}", checked.diagnostics);
            elaborate(&checked.models[0].1.trace)
        })
        .unwrap()
        .join()
        .unwrap();
    match compile_generation(&g, 8, &Options::default()) {
        Err(DecodeError::Attention(layer)) => assert_eq!(layer, "0"),
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
}
