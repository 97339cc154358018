//! Every fused kernel of every example model and of a small stdlib Falcon-H1, in its
//! forward pass and its training step, compiles to native CPU code that computes what the
//! reference interpreter computes from the kernel's body — on random values, read through
//! random layouts (transposed, padded, broadcast with stride 0), with the outputs poisoned
//! with NaN before the run — and to PTX for sm_90 that calls nothing it does not define
//! (and that `ptxas` assembles, where it is installed).
//!
//! One test binary for all code generation, so MLIR's libraries are linked once.

use hyb_compiler::codegen::cpu::{self, ArenaView};
use hyb_compiler::codegen::Symbols;
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::ir::{Graph, KernelKind, Op};
use hyb_compiler::pipeline::{compile, Target};
use hyb_compiler::reference::{self, Tensor};
use hyb_compiler::rewrite::Options;
use hyb_compiler::training::AdamW;
use hyb_compiler::codegen::gpu;
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

const SMALL_FALCON: &str = r#"
import std.layers

model small_falcon {
    vocab = 64
    d = 32
    layers = pattern("H{2}", H = falcon_h1_layer)
    heads = 8
    kv_heads = 4
    head_dim = 4
    ssm_heads = 8
    ssm_head_dim = 4
    d_state = 4
    groups = 4
    chunk = 4
    d_ff = 48
    attention_bias = true
    mlp_bias = true
    mup embedding_multiplier = 1.5, lm_head_multiplier = 0.25, ssm_out_multiplier = 0.6
}
"#;

const SIZES: Symbols = Symbols { batch: 2, seq: 8 };

/// The forward graphs of every model in `text`.
fn models(name: String, text: String) -> Vec<Graph> {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let checked = hyb_compiler::check::check_text(&name, &text);
            assert!(checked.diagnostics.is_empty(), "{name}: {:?}", checked.diagnostics);
            checked.models.iter().map(|m| elaborate(&m.1.trace)).collect()
        })
        .unwrap()
        .join()
        .unwrap()
}

/// Every distinct fused kernel body by name, with where it was first seen.
fn fused_kernels() -> &'static BTreeMap<String, (String, Graph)> {
    static KERNELS: OnceLock<BTreeMap<String, (String, Graph)>> = OnceLock::new();
    KERNELS.get_or_init(collect)
}

fn collect() -> BTreeMap<String, (String, Graph)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut sources: Vec<(String, String)> =
        files.iter().map(|f| (f.display().to_string(), std::fs::read_to_string(f).unwrap())).collect();
    sources.push(("small_falcon".into(), SMALL_FALCON.into()));
    let mut kernels = BTreeMap::new();
    for (name, text) in sources {
        for forward in models(name.clone(), text) {
            for (what, target) in [
                ("forward", Target::Forward),
                ("training step", Target::Training { opt: AdamW::default(), width_mult: 1.0 }),
            ] {
                let compiled = compile(&forward, &target, 1, &Options::default());
                for n in &compiled.graph.nodes {
                    if let Op::Kernel(k) = &n.op {
                        if k.kind == KernelKind::Fused {
                            let key = hyb_compiler::codegen::kernel_name(&k.body);
                            kernels.entry(key).or_insert_with(|| (format!("{name}, {what}"), k.body.clone()));
                        }
                    }
                }
            }
        }
    }
    kernels
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() as f64 / (1u64 << 31) as f64)
    }
}

/// A view's place in the arena: strides from a random axis order, sometimes padded, and
/// (for inputs) sometimes 0 along an axis.
struct Layout {
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<isize>,
}

impl Layout {
    fn random(shape: &[usize], rng: &mut Rng, broadcast: bool, arena: &mut usize) -> Layout {
        let mut order: Vec<usize> = (0..shape.len()).collect();
        if rng.below(2) == 0 {
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
        }
        let mut strides = vec![0isize; shape.len()];
        let mut step = 1usize;
        for &d in order.iter().rev() {
            if broadcast && shape[d] > 1 && rng.below(4) == 0 {
                continue;
            }
            strides[d] = step as isize;
            step *= shape[d] + if rng.below(3) == 0 { 1 } else { 0 };
        }
        let offset = *arena + rng.below(3);
        *arena = offset + step + 1;
        Layout { offset, shape: shape.to_vec(), strides }
    }

    fn view(&self) -> ArenaView<'_> {
        ArenaView { offset: self.offset, shape: &self.shape, strides: &self.strides }
    }

    fn at(&self, index: usize) -> usize {
        let mut rest = index;
        let mut at = self.offset as isize;
        for k in (0..self.shape.len()).rev() {
            at += (rest % self.shape[k]) as isize * self.strides[k];
            rest /= self.shape[k];
        }
        at as usize
    }

    fn read(&self, arena: &[f32]) -> Vec<f64> {
        (0..self.shape.iter().product()).map(|i| arena[self.at(i)] as f64).collect()
    }
}

/// Runs `body` compiled on random inputs (in `lo..hi`) against the reference; `Err` says
/// why they differ.
fn check(kernel: &cpu::CpuKernel, body: &Graph, seed: u64, lo: f64, hi: f64) -> Result<(), String> {
    let shape_of = |n: usize| -> Vec<usize> {
        let bind = SIZES.binder();
        body.nodes[n].ty.shape.iter().map(|d| d.eval(&bind).unwrap() as usize).collect()
    };
    let mut rng = Rng(seed);
    let mut size = 0;
    let mut inputs: Vec<(usize, Layout)> = body
        .input_nodes()
        .map(|(n, name)| (name.parse().unwrap(), Layout::random(&shape_of(n), &mut rng, true, &mut size)))
        .collect();
    inputs.sort_by_key(|(k, _)| *k);
    let outputs: Vec<Layout> =
        body.outputs.iter().map(|&o| Layout::random(&shape_of(o), &mut rng, false, &mut size)).collect();
    let mut arena: Vec<f32> = (0..size).map(|_| rng.uniform(lo, hi) as f32).collect();
    for o in &outputs {
        for i in 0..o.shape.iter().product() {
            arena[o.at(i)] = f32::NAN;
        }
    }
    let args: HashMap<String, Tensor<f64>> =
        inputs.iter().map(|(k, l)| (k.to_string(), Tensor::new(l.shape.clone(), l.read(&arena)))).collect();
    let want = reference::run(body, &HashMap::new(), &args).map_err(|e| format!("reference: {e}"))?;
    if want.iter().any(|t| t.data.iter().any(|v| !v.is_finite())) {
        return Err("the reference is not finite".into());
    }
    let in_views: Vec<ArenaView> = inputs.iter().map(|(_, l)| l.view()).collect();
    let out_views: Vec<ArenaView> = outputs.iter().map(Layout::view).collect();
    kernel.run(&mut arena, &in_views, &out_views).map_err(|e| e.to_string())?;
    for (o, (layout, want)) in outputs.iter().zip(&want).enumerate() {
        let got = layout.read(&arena);
        let scale = want.data.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        for (i, (&w, &g)) in want.data.iter().zip(&got).enumerate() {
            if !(g - w).abs().le(&(1e-5 * scale)) {
                return Err(format!("output {o} element {i}: got {g}, want {w} (largest |want| {scale})"));
            }
        }
    }
    Ok(())
}

#[test]
fn every_fused_kernel_of_every_model_matches_the_reference() {
    let kernels = fused_kernels();
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    for (name, (origin, body)) in kernels {
        let kernel = match cpu::compile(body, SIZES) {
            Ok(k) => k,
            Err(e) => {
                failures.push(format!("{name} ({origin}): {e}"));
                continue;
            }
        };
        for seed in 1..=3u64 {
            let result = check(&kernel, body, seed, -1.0, 1.0).or_else(|e| {
                if e.contains("not finite") {
                    check(&kernel, body, seed, 0.5, 1.5)
                } else {
                    Err(e)
                }
            });
            if let Err(e) = result {
                failures.push(format!("{name} ({origin}), seed {seed}: {e}\n{body}"));
                break;
            }
        }
    }
    let covered = kernels.len() - failures.len();
    println!("{covered} of {} fused kernels generated and matched ({:.1?})", kernels.len(), started.elapsed());
    assert!(failures.is_empty(), "{} of {} fused kernels failed:\n{}", failures.len(), kernels.len(), failures.join("\n"));
}

/// `ptxas` from `HYB_PTXAS`, or on `PATH`.
fn ptxas() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("HYB_PTXAS") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("ptxas")).find(|p| p.is_file())
}

#[test]
fn every_fused_kernel_of_every_model_becomes_self_contained_ptx() {
    let kernels = fused_kernels();
    let assembler = ptxas();
    if assembler.is_none() {
        println!("note: no ptxas (set HYB_PTXAS or put it on PATH): the PTX is generated but not assembled");
    }
    let dir = std::env::temp_dir().join(format!("hyb-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    let mut registers = 0;
    let started = std::time::Instant::now();
    for (name, (origin, body)) in kernels {
        let kernel = match gpu::compile(body, SIZES) {
            Ok(k) => k,
            Err(e) => {
                failures.push(format!("{name} ({origin}): {e}"));
                continue;
            }
        };
        let unresolved = gpu::unresolved_calls(&kernel.ptx);
        if !unresolved.is_empty() {
            failures.push(format!("{name} ({origin}): unresolved calls {unresolved:?}"));
            continue;
        }
        for nest in &kernel.nests {
            if !kernel.ptx.contains(&format!(".entry {}(", nest.symbol)) {
                failures.push(format!("{name} ({origin}): no entry {}", nest.symbol));
            }
        }
        let Some(ptxas) = &assembler else { continue };
        let file = dir.join(format!("{name}.ptx"));
        std::fs::write(&file, &kernel.ptx).unwrap();
        let out = std::process::Command::new(ptxas)
            .args(["-arch=sm_90", "-v", "-o", "/dev/null"])
            .arg(&file)
            .output()
            .expect("ptxas runs");
        let report = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() {
            failures.push(format!("{name} ({origin}): ptxas failed:\n{report}"));
        } else if report.contains("bytes spill stores") && !report.contains("0 bytes spill stores") {
            failures.push(format!("{name} ({origin}): ptxas reports spills:\n{report}"));
        } else {
            registers = report
                .lines()
                .filter_map(|l| l.split("Used ").nth(1)?.split(' ').next()?.parse::<usize>().ok())
                .fold(registers, usize::max);
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    let covered = kernels.len() - failures.len();
    let assembled = if assembler.is_some() { format!(", assembled by ptxas (at most {registers} registers)") } else { String::new() };
    println!("{covered} of {} fused kernels became PTX{assembled} ({:.1?})", kernels.len(), started.elapsed());
    assert!(failures.is_empty(), "{} of {} fused kernels failed:\n{}", failures.len(), kernels.len(), failures.join("\n"));
}
