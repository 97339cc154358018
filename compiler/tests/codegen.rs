//! Every fused kernel of every example model and of a small stdlib Falcon-H1, in its
//! forward pass and its training step, compiles to native CPU code that computes what the
//! reference interpreter computes from the kernel's body — on random values, read through
//! random layouts (transposed, padded, broadcast with stride 0), with the outputs poisoned
//! with NaN before the run — and to PTX for sm_90 that calls nothing it does not define
//! (and that `ptxas` assembles, where it is installed).
//!
//! One test binary for all code generation, so MLIR's libraries are linked once.

use hyb_compiler::codegen::cpu::{self, ArenaView, RawView};
use hyb_compiler::codegen::gpu;
use hyb_compiler::codegen::template::{self, text::Text, Phase, TemplateCode};
use hyb_compiler::codegen::unit::{self, Unit};
use hyb_compiler::codegen::{Func, Storage, Symbols};
use hyb_compiler::elaborate::elaborate;
use hyb_compiler::ir::{Graph, NodeId, Op, TensorType};
use hyb_compiler::ops::{Binary, Cast, Pow, ReduceOp, Reshape, Select, Unary, F64};
use hyb_compiler::pipeline::{compile, DataParallel, Target};
use hyb_compiler::reference::{self, Tensor};
use hyb_compiler::rewrite::Options;
use hyb_compiler::training::AdamW;
use hyb_dsl::dim::Dim;
use hyb_dsl::value::DType;
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

#[path = "codegen/templates.rs"]
mod templates;

#[path = "codegen/object_code.rs"]
mod object_code;

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

/// Every example model, the small Falcon-H1 above and the stdlib Falcon-H1 models, each
/// compiled as a forward pass and as a training step: (where from, the compiled graph,
/// whether its tensors are small enough to run on the CPU in a test — the stdlib models'
/// are not: a gradient-norm kernel reads all 34B parameters).
fn compiled_models() -> &'static Vec<(String, Graph, bool)> {
    static GRAPHS: OnceLock<Vec<(String, Graph, bool)>> = OnceLock::new();
    GRAPHS.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files: Vec<_> = std::fs::read_dir(root.join("examples"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "hyb"))
            .collect();
        files.sort();
        files.push(root.join("stdlib/falcon_h1.hyb"));
        let mut sources: Vec<(String, String)> =
            files.iter().map(|f| (f.display().to_string(), std::fs::read_to_string(f).unwrap())).collect();
        sources.push(("small_falcon".into(), SMALL_FALCON.into()));
        let mut graphs = Vec::new();
        for (name, text) in sources {
            let small = !name.contains("stdlib");
            for forward in models(name.clone(), text) {
                for (what, target) in [
                    ("forward", Target::Forward),
                    (
                        "training step",
                        Target::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel: DataParallel::Alone },
                    ),
                ] {
                    let graph = compile(&forward, &target, 1, &Options::default()).graph;
                    graphs.push((format!("{name}, {what}"), graph, small));
                }
            }
        }
        graphs
    })
}

/// Every distinct body the generator compiles for [`compiled_models`] — fused kernels and
/// the generated steps of chains (GEMM epilogues, BitLinear quantisers) — by name, with
/// where it was first seen: of all of them (`all`), or of those small enough to run in a
/// test.
fn fused_kernels(all: bool) -> BTreeMap<String, (String, Graph)> {
    let mut kernels = BTreeMap::new();
    for (origin, graph, small) in compiled_models() {
        if !(all || *small) {
            continue;
        }
        for node in 0..graph.nodes.len() {
            if !matches!(graph.nodes[node].op, Op::Kernel(_)) {
                continue;
            }
            let bodies: Vec<Graph> = match unit::for_node(graph, node, SIZES, hyb_compiler::codegen::Target::Cpu) {
                Ok(Unit::Body(body)) => vec![body],
                Ok(Unit::Chain(chain)) => chain.bodies().cloned().collect(),
                Ok(Unit::Template(_) | Unit::Gemm(_)) => continue,
                Err(why) => panic!("{origin}: kernel %{node} has no code: {why}"),
            };
            for body in bodies {
                let key = hyb_compiler::codegen::kernel_name(&body);
                kernels.entry(key).or_insert_with(|| (origin.clone(), body));
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
#[derive(Clone)]
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

/// A kernel's inputs and outputs laid out at random in one arena of random values, the
/// outputs poisoned with NaN, and what the reference computes from the inputs.
#[derive(Clone)]
struct Case {
    inputs: Vec<Layout>,
    outputs: Vec<Layout>,
    arena: Vec<f32>,
    want: Vec<Tensor<f64>>,
    /// How far a plain f32 evaluation (the reference interpreter in f32) lands from
    /// `want`, per element: a sum that cancels may be off by a few times that in any
    /// summation order, however small the result.
    conditioning: Vec<Vec<f64>>,
    /// Per output, the least magnitude its errors are measured against (tiny: each
    /// output's largest).
    floors: Vec<f64>,
    /// Inputs computed from the others rather than drawn, if any.
    derived: Option<&'static Derived>,
}

/// Inputs of a case computed from the others, as a gradient kernel reads its forward
/// kernel's outputs: from input `first` on, the outputs of `forward` (a graph over the
/// case's inputs `0..`), so the kernel sees values its forward pass could have written.
struct Derived {
    forward: Graph,
    first: usize,
}

impl Case {
    /// Values in `lo..hi`; `Err` when the reference is not finite on them.
    fn new(body: &Graph, seed: u64, lo: f64, hi: f64) -> Result<Case, String> {
        Case::ranged(body, seed, lo, hi, &[])
    }

    /// Values in `lo..hi`, but those of input `k` in `ranges` in its own `(lo, hi)`.
    fn ranged(body: &Graph, seed: u64, lo: f64, hi: f64, ranges: &[(usize, f64, f64)]) -> Result<Case, String> {
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
        let inputs: Vec<Layout> = inputs.into_iter().map(|(_, l)| l).collect();
        let outputs: Vec<Layout> =
            body.outputs.iter().map(|&o| Layout::random(&shape_of(o), &mut rng, false, &mut size)).collect();
        let mut arena: Vec<f32> = (0..size).map(|_| rng.uniform(lo, hi) as f32).collect();
        for &(k, lo, hi) in ranges {
            for i in 0..inputs[k].shape.iter().product() {
                arena[inputs[k].at(i)] = rng.uniform(lo, hi) as f32;
            }
        }
        // Integer inputs (token ids) hold whole numbers.
        for (n, name) in body.input_nodes() {
            if !body.nodes[n].ty.dtype.is_float() {
                let l = &inputs[name.parse::<usize>().unwrap()];
                for i in 0..l.shape.iter().product() {
                    arena[l.at(i)] = arena[l.at(i)].floor();
                }
            }
        }
        for o in &outputs {
            for i in 0..o.shape.iter().product() {
                arena[o.at(i)] = f32::NAN;
            }
        }
        let (want, conditioning) = Case::reference(body, &inputs, &arena)?;
        let floors = vec![1e-30; outputs.len()];
        Ok(Case { inputs, outputs, arena, want, conditioning, floors, derived: None })
    }

    /// The case with inputs `derived.first ..` computed by `derived.forward` from the others,
    /// each laid out afresh (a broadcast layout could not hold them) at the arena's end.
    fn derived(mut self, body: &Graph, derived: &'static Derived) -> Result<Case, String> {
        let mut rng = Rng(derived.first as u64 + 1);
        let mut size = self.arena.len();
        for l in &mut self.inputs[derived.first..] {
            *l = Layout::random(&l.shape.clone(), &mut rng, false, &mut size);
        }
        self.arena.resize(size, 0.0);
        self.derived = Some(derived);
        self.derive(&[])?;
        (self.want, self.conditioning) = Case::reference(body, &self.inputs, &self.arena)?;
        Ok(self)
    }

    /// Writes the derived inputs from the others as they are in the arena, rounded to bf16
    /// where `storage` says.
    fn derive(&mut self, storage: &[Storage]) -> Result<(), String> {
        let Some(derived) = self.derived else { return Ok(()) };
        let args: HashMap<String, Tensor<f64>> = (0..derived.forward.input_nodes().count())
            .map(|k| (k.to_string(), Tensor::new(self.inputs[k].shape.clone(), self.inputs[k].read(&self.arena))))
            .collect();
        let outputs = reference::run(&derived.forward, &HashMap::new(), &args).map_err(|e| format!("forward: {e}"))?;
        for (j, t) in outputs.iter().enumerate() {
            let k = derived.first + j;
            let round = storage.get(k) == Some(&Storage::Bf16);
            for (i, &v) in t.data.iter().enumerate() {
                self.arena[self.inputs[k].at(i)] = if round { bf16(v as f32) } else { v as f32 };
            }
        }
        Ok(())
    }

    /// What the reference computes from the inputs laid out in `arena`, and how far its
    /// f32 evaluation is from that.
    #[allow(clippy::type_complexity)]
    fn reference(body: &Graph, inputs: &[Layout], arena: &[f32]) -> Result<(Vec<Tensor<f64>>, Vec<Vec<f64>>), String> {
        let args: HashMap<String, Tensor<f64>> = inputs
            .iter()
            .enumerate()
            .map(|(k, l)| (k.to_string(), Tensor::new(l.shape.clone(), l.read(arena))))
            .collect();
        let want = reference::run(body, &HashMap::new(), &args).map_err(|e| format!("reference: {e}"))?;
        if want.iter().any(|t| t.data.iter().any(|v| !v.is_finite())) {
            return Err("the reference is not finite".into());
        }
        let narrow: HashMap<String, Tensor<f32>> = args
            .iter()
            .map(|(k, t)| (k.clone(), Tensor::new(t.shape.clone(), t.data.iter().map(|&v| v as f32).collect())))
            .collect();
        let plain = reference::run::<f32>(body, &HashMap::new(), &narrow).map_err(|e| format!("reference: {e}"))?;
        let conditioning = want
            .iter()
            .zip(&plain)
            .map(|(w, p)| {
                w.data
                    .iter()
                    .zip(&p.data)
                    .map(|(&w, &p)| Some((p as f64 - w).abs()).filter(|e| e.is_finite()).unwrap_or(0.0))
                    .collect()
            })
            .collect();
        Ok((want, conditioning))
    }

    /// Raises every output's floor to at least `floor`.
    fn at_least(&mut self, floor: f64) {
        for f in &mut self.floors {
            *f = f.max(floor);
        }
    }

    /// The case with the inputs of bf16 views (`storage`: inputs, then outputs) rounded
    /// to bf16 (derived inputs computed again from the rounded ones), and the reference
    /// recomputed from them.
    fn stored(&self, body: &Graph, storage: &[Storage]) -> Result<Case, String> {
        let mut arena = self.arena.clone();
        for (l, _) in self.inputs.iter().zip(storage).filter(|(_, &s)| s == Storage::Bf16) {
            for i in 0..l.shape.iter().product() {
                arena[l.at(i)] = bf16(arena[l.at(i)]);
            }
        }
        let mut case = Case { arena, ..self.clone() };
        case.derive(storage)?;
        (case.want, case.conditioning) = Case::reference(body, &case.inputs, &case.arena)?;
        Ok(case)
    }

    /// The case with every view packed row-major, each starting `misalign` elements past a
    /// 16-element (32-byte) boundary: the layout the GPU's vector path takes when
    /// `misalign` is 0, and refuses otherwise.
    fn packed(&self, misalign: usize) -> Case {
        let mut size = 0usize;
        let mut place = |l: &Layout| {
            let offset = size.next_multiple_of(16) + misalign;
            let mut strides = vec![0isize; l.shape.len()];
            let mut step = 1;
            for d in (0..l.shape.len()).rev() {
                strides[d] = step as isize;
                step *= l.shape[d];
            }
            size = offset + step.max(1);
            Layout { offset, shape: l.shape.clone(), strides }
        };
        let inputs: Vec<Layout> = self.inputs.iter().map(&mut place).collect();
        let outputs: Vec<Layout> = self.outputs.iter().map(&mut place).collect();
        let mut arena = vec![0.0f32; size];
        for (new, old) in inputs.iter().zip(&self.inputs) {
            for i in 0..new.shape.iter().product() {
                arena[new.at(i)] = self.arena[old.at(i)];
            }
        }
        for o in &outputs {
            for i in 0..o.shape.iter().product() {
                arena[o.at(i)] = f32::NAN;
            }
        }
        Case {
            inputs,
            outputs,
            arena,
            want: self.want.clone(),
            conditioning: self.conditioning.clone(),
            floors: self.floors.clone(),
            derived: self.derived,
        }
    }

    /// Whether output values `got` (each output's elements in order) match the reference:
    /// f32 outputs as [`Case::compare`], bf16 ones within two bf16 units in the last place
    /// of the rounded reference (plus 1e-5 of the largest magnitude, for values that
    /// cancel).
    fn compare_stored(&self, got: &[Vec<f64>], storage: &[Storage]) -> Result<(), String> {
        for (o, (want, got)) in self.want.iter().zip(got).enumerate() {
            let scale = want.data.iter().fold(self.floors[o], |m, v| m.max(v.abs()));
            let bf16_out = storage[self.inputs.len() + o] == Storage::Bf16;
            for (i, (&w, &g)) in want.data.iter().zip(got).enumerate() {
                let (w, slack) = if bf16_out { (bf16(w as f32) as f64, 2.0 * bf16_ulp(w)) } else { (w, 0.0) };
                if !(g - w).abs().le(&(slack + 1e-5 * scale)) {
                    return Err(format!("output {o} element {i}: got {g}, want {w} (largest |want| {scale})"));
                }
            }
        }
        Ok(())
    }

    /// A case in (-1, 1), or in (0.5, 1.5) where the body needs positive values (logs,
    /// square roots of moments).
    fn in_domain(body: &Graph, seed: u64) -> Result<Case, String> {
        Case::new(body, seed, -1.0, 1.0).or_else(|_| Case::new(body, seed, 0.5, 1.5))
    }

    /// Whether `arena` holds the reference's outputs, to 1e-5 of each output's largest
    /// magnitude or of its floor, or to four times a plain f32 evaluation's error where that
    /// is larger (NaN never passes).
    fn compare(&self, arena: &[f32]) -> Result<(), String> {
        for (o, (layout, want)) in self.outputs.iter().zip(&self.want).enumerate() {
            let got = layout.read(arena);
            let scale = want.data.iter().fold(self.floors[o], |m, v| m.max(v.abs()));
            for (i, (&w, &g)) in want.data.iter().zip(&got).enumerate() {
                if !(g - w).abs().le(&(1e-5 * scale).max(4.0 * self.conditioning[o][i])) {
                    return Err(format!("output {o} element {i}: got {g}, want {w} (largest |want| {scale})"));
                }
            }
        }
        Ok(())
    }
}

/// `x` rounded to the nearest bf16, to nearest even.
fn bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// The spacing of bf16 values at `x`'s magnitude (8 significant bits).
fn bf16_ulp(x: f64) -> f64 {
    let x = (bf16(x as f32) as f64).abs().max(f32::MIN_POSITIVE as f64);
    2f64.powi(x.log2().floor() as i32 - 7)
}

/// Runs a kernel compiled for `storage` on a case: f32 views in an f32 copy of the arena,
/// bf16 views in a bf16 copy (same element offsets), through [`cpu::CpuKernel::run_raw`];
/// returns every output's elements in order.
fn run_stored(kernel: &cpu::CpuKernel, case: &Case, storage: &[Storage]) -> Result<Vec<Vec<f64>>, String> {
    let mut wide = case.arena.clone();
    let mut narrow: Vec<u16> = case.arena.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
    let views: Vec<&Layout> = case.inputs.iter().chain(&case.outputs).collect();
    let raw: Vec<RawView> = views
        .iter()
        .zip(storage)
        .map(|(l, s)| {
            // Each layout lies inside the arena (Case built it there), in both copies.
            let base = match s {
                Storage::F32 => unsafe { wide.as_mut_ptr().add(l.offset) }.cast::<u8>(),
                Storage::Bf16 => unsafe { narrow.as_mut_ptr().add(l.offset) }.cast::<u8>(),
            };
            RawView { base, shape: &l.shape, strides: &l.strides }
        })
        .collect();
    let (inputs, outputs) = raw.split_at(case.inputs.len());
    // The views lie in the two buffers, which outlive the call; outputs are laid out apart
    // from everything else (Layout::random places each view after the previous one).
    unsafe { kernel.run_raw(inputs, outputs) }.map_err(|e| e.to_string())?;
    Ok(case
        .outputs
        .iter()
        .zip(&storage[case.inputs.len()..])
        .map(|(l, s)| match s {
            Storage::F32 => l.read(&wide),
            Storage::Bf16 => {
                (0..l.shape.iter().product()).map(|i| half::bf16::from_bits(narrow[l.at(i)]).to_f64()).collect()
            }
        })
        .collect())
}

/// A storage type per view of `body`: bf16 for most, f32 for every third, so kernels mix
/// bf16 and f32 inputs and outputs.
fn mixed_storage(body: &Graph, seed: usize) -> Vec<Storage> {
    let views = body.input_nodes().count() + body.outputs.len();
    (0..views).map(|k| if (k + seed).is_multiple_of(3) { Storage::F32 } else { Storage::Bf16 }).collect()
}

/// Runs a compiled kernel or template on a case and compares.
fn check(kernel: &cpu::CpuKernel, case: &Case) -> Result<(), String> {
    let mut arena = case.arena.clone();
    let inputs: Vec<ArenaView> = case.inputs.iter().map(Layout::view).collect();
    let outputs: Vec<ArenaView> = case.outputs.iter().map(Layout::view).collect();
    kernel.run(&mut arena, &inputs, &outputs).map_err(|e| e.to_string())?;
    case.compare(&arena)
}

#[test]
fn every_fused_kernel_of_every_model_matches_the_reference() {
    let kernels = fused_kernels(false);
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    for (name, (origin, body)) in &kernels {
        let kernel = match cpu::compile(body, SIZES) {
            Ok(k) => k,
            Err(e) => {
                failures.push(format!("{name} ({origin}): {e}"));
                continue;
            }
        };
        for seed in 1..=3u64 {
            let result = Case::in_domain(body, seed).and_then(|case| check(&kernel, &case));
            if let Err(e) = result {
                failures.push(format!("{name} ({origin}), seed {seed}: {e}\n{body}"));
                break;
            }
        }
        // Compiled for the unit last-axis strides of one layout, as the executor compiles it.
        let result = Case::in_domain(body, 4).and_then(|case| {
            let unit: Vec<bool> = case.inputs.iter().chain(&case.outputs).map(|l| l.view().unit_last()).collect();
            let kernel = cpu::compile_for(body, SIZES, &unit).map_err(|e| e.to_string())?;
            check(&kernel, &case)
        });
        if let Err(e) = result {
            failures.push(format!("{name} ({origin}), unit strides: {e}\n{body}"));
        }
    }
    let covered = kernels.len() - failures.len();
    println!("{covered} of {} fused kernels generated and matched ({:.1?})", kernels.len(), started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {} fused kernels failed:\n{}",
        failures.len(),
        kernels.len(),
        failures.join("\n")
    );
}

#[test]
fn every_fused_kernel_with_bf16_views_matches_the_reference_to_bf16_rounding() {
    let kernels = fused_kernels(false);
    let mut failures = Vec::new();
    let started = std::time::Instant::now();
    let mut bf16_outputs = 0;
    for (name, (origin, body)) in &kernels {
        let storage = mixed_storage(body, name.len());
        bf16_outputs += storage[body.input_nodes().count()..].iter().filter(|&&s| s == Storage::Bf16).count();
        let result = cpu::compile_stored(body, SIZES, &[], &storage).map_err(|e| e.to_string()).and_then(|kernel| {
            let case = Case::in_domain(body, 5)?.stored(body, &storage)?;
            case.compare_stored(&run_stored(&kernel, &case, &storage)?, &storage)
        });
        if let Err(e) = result {
            failures.push(format!("{name} ({origin}), storage {storage:?}: {e}\n{body}"));
        }
    }
    println!(
        "{} of {} fused kernels matched with bf16 views ({bf16_outputs} bf16 outputs, {:.1?})",
        kernels.len() - failures.len(),
        kernels.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{} kernels failed with bf16 views:\n{}", failures.len(), failures.join("\n"));
}

/// Bodies the models at test sizes do not have: rows long enough for a block per row on
/// the GPU (RMSNorm at an odd d above 4096, a log-sum-exp over a 32K vocabulary) and a
/// pointwise nest with a row broadcast and a per-row scale whose rows take 16-byte vectors.
fn long_row_bodies() -> Vec<(String, Graph)> {
    let f32_ty = |shape: &[usize]| TensorType {
        shape: shape.iter().map(|&d| Dim::constant(d as i64)).collect(),
        dtype: DType::F32,
    };
    let prim = |g: &mut Graph, p: hyb_compiler::ops::Prim, inputs: Vec<usize>, shape: &[usize]| {
        g.add(Op::Prim(p), inputs, f32_ty(shape))
    };
    let reduce = |op, axis| hyb_compiler::ops::Prim::Reduce(hyb_compiler::ops::Reduce { op, axis, keepdim: true });
    let binary = hyb_compiler::ops::Prim::Binary;
    let mut bodies = Vec::new();
    {
        let (rows, d) = (3, 4099);
        let mut g = Graph::default();
        let x = g.add(Op::Input("0".into()), vec![], f32_ty(&[rows, d]));
        let w = g.add(Op::Input("1".into()), vec![], f32_ty(&[d]));
        let sq = prim(&mut g, binary(Binary::Mul), vec![x, x], &[rows, d]);
        let ms = prim(&mut g, reduce(ReduceOp::Mean, -1), vec![sq], &[rows, 1]);
        let eps = g.add(Op::Constant(1e-6), vec![], f32_ty(&[]));
        let shifted = prim(&mut g, binary(Binary::Add), vec![ms, eps], &[rows, 1]);
        let r = prim(&mut g, hyb_compiler::ops::Prim::Unary(Unary::Rsqrt), vec![shifted], &[rows, 1]);
        let xr = prim(&mut g, binary(Binary::Mul), vec![x, r], &[rows, d]);
        let y = prim(&mut g, binary(Binary::Mul), vec![xr, w], &[rows, d]);
        g.outputs = vec![y];
        bodies.push(("rmsnorm_4099".to_string(), g));
    }
    {
        let (rows, v) = (2, 32768);
        let mut g = Graph::default();
        let x = g.add(Op::Input("0".into()), vec![], f32_ty(&[rows, v]));
        let m = prim(&mut g, reduce(ReduceOp::Max, -1), vec![x], &[rows, 1]);
        let shifted = prim(&mut g, binary(Binary::Sub), vec![x, m], &[rows, v]);
        let e = prim(&mut g, hyb_compiler::ops::Prim::Unary(Unary::Exp), vec![shifted], &[rows, v]);
        let s = prim(&mut g, reduce(ReduceOp::Sum, -1), vec![e], &[rows, 1]);
        let l = prim(&mut g, hyb_compiler::ops::Prim::Unary(Unary::Log), vec![s], &[rows, 1]);
        let lse = prim(&mut g, binary(Binary::Add), vec![m, l], &[rows, 1]);
        g.outputs = vec![lse];
        bodies.push(("logsumexp_32768".to_string(), g));
    }
    {
        let (rows, d) = (5, 200);
        let mut g = Graph::default();
        let x = g.add(Op::Input("0".into()), vec![], f32_ty(&[rows, d]));
        let bias = g.add(Op::Input("1".into()), vec![], f32_ty(&[d]));
        let scale = g.add(Op::Input("2".into()), vec![], f32_ty(&[rows, 1]));
        let sum = prim(&mut g, binary(Binary::Add), vec![x, bias], &[rows, d]);
        let y = prim(&mut g, binary(Binary::Mul), vec![sum, scale], &[rows, d]);
        let z = prim(&mut g, hyb_compiler::ops::Prim::Unary(Unary::Silu), vec![y], &[rows, d]);
        g.outputs = vec![y, z];
        bodies.push(("bias_scale_silu".to_string(), g));
    }
    {
        // A per-channel gradient: summed over the inner, time and batch axes into few
        // elements (Mamba-2's `D`), a chain of sums the GPU splits as one loop.
        let (b, t, h, p) = (4, 96, 6, 16);
        let mut g = Graph::default();
        let x = g.add(Op::Input("0".into()), vec![], f32_ty(&[b, t, h, p]));
        let y = g.add(Op::Input("1".into()), vec![], f32_ty(&[b, t, h, p]));
        let xy = prim(&mut g, binary(Binary::Mul), vec![x, y], &[b, t, h, p]);
        let sum = |axis| {
            hyb_compiler::ops::Prim::Reduce(hyb_compiler::ops::Reduce { op: ReduceOp::Sum, axis, keepdim: false })
        };
        let over_p = prim(&mut g, sum(-1), vec![xy], &[b, t, h]);
        let over_t = prim(&mut g, sum(1), vec![over_p], &[b, h]);
        let over_b = prim(&mut g, sum(0), vec![over_t], &[h]);
        g.outputs = vec![over_b];
        bodies.push(("channel_grad_6".to_string(), g));
    }
    {
        // Mamba-2's skip, `y + D·x` with `D [H, 1]`, its heads merged back into channels:
        // the vector path's lanes cross the reshape (P a multiple of the vector) and D is
        // one scalar per head.
        let (b, t, h, p) = (2, 40, 6, 64);
        let mut g = Graph::default();
        let y = g.add(Op::Input("0".into()), vec![], f32_ty(&[b, t, h, p]));
        let d = g.add(Op::Input("1".into()), vec![], f32_ty(&[h, 1]));
        let x = g.add(Op::Input("2".into()), vec![], f32_ty(&[b, t, h, p]));
        let dx = prim(&mut g, binary(Binary::Mul), vec![d, x], &[b, t, h, p]);
        let sum = prim(&mut g, binary(Binary::Add), vec![y, dx], &[b, t, h, p]);
        let merged = [b, t, h * p].map(|n| Dim::constant(n as i64)).to_vec();
        let out = prim(&mut g, hyb_compiler::ops::Prim::Reshape(Reshape { shape: merged }), vec![sum], &[b, t, h * p]);
        g.outputs = vec![out];
        bodies.push(("skip_merged_heads".to_string(), g));
    }
    bodies
}

/// A gradient summed into a few channels takes a block per channel on the GPU, its whole
/// chain of sums (batch × time × inner: 6,144 elements) one loop the block's lanes share,
/// instead of a lane per channel summing alone.
#[test]
fn a_sum_into_few_channels_takes_a_block_per_channel() {
    let (_, body) = long_row_bodies().into_iter().find(|(name, _)| name == "channel_grad_6").expect("the body");
    let kernel = gpu::compile(&body, SIZES).unwrap();
    let nest = &kernel.nests[0];
    assert_eq!((nest.iterations, nest.rows_per_block), (6, 1), "a block per channel");
    assert!(kernel.ptx.contains("6144"), "one loop over the chain's 6144 elements");
    assert!(kernel.ptx.contains("bar.sync"), "the block's warps combine their partial sums");
}

/// Index arithmetic (a loop index split into batch, time, head and channel) runs in 32
/// bits where every value it takes is below 2³¹, and in 64 where one is not: Mamba-2's
/// `D` gradient at Falcon-H1-0.5B's size, and a product element by element (an element
/// per GPU thread: 63 channels, so no 16-byte path) at that size and at 256 times its
/// batch (6.3e9 elements).
#[test]
fn index_arithmetic_is_32_bit_below_two_to_the_31() {
    let (t, h, p) = (4096, 24, 64);
    let ty = |shape: &[usize]| TensorType {
        shape: shape.iter().map(|&d| Dim::constant(d as i64)).collect(),
        dtype: DType::F32,
    };
    let product = |g: &mut Graph, b: usize, p: usize| {
        let x = g.add(Op::Input("0".into()), vec![], ty(&[b, t, h, p]));
        let y = g.add(Op::Input("1".into()), vec![], ty(&[b, t, h, p]));
        g.binary(Binary::Mul, x, y)
    };
    let divisions = |mlir: &str, width: &str| {
        mlir.lines().filter(|l| (l.contains("arith.divui") || l.contains("arith.remui")) && l.ends_with(width)).count()
    };
    let sum =
        |axis| hyb_compiler::ops::Prim::Reduce(hyb_compiler::ops::Reduce { op: ReduceOp::Sum, axis, keepdim: false });
    let mut d_grad = Graph::default();
    let xy = product(&mut d_grad, 4, p);
    let over_p = d_grad.add(Op::Prim(sum(-1)), vec![xy], ty(&[4, t, h]));
    let over_t = d_grad.add(Op::Prim(sum(1)), vec![over_p], ty(&[4, h]));
    d_grad.outputs = vec![over_t];
    let d_grad = gpu::compile(&d_grad, SIZES).unwrap().mlir;
    // The thread ids' warp and lane (once per thread) are 64-bit in every kernel.
    let ids = 3;
    assert!(divisions(&d_grad, ": i32") >= 2, "the loop index split in 32 bits:\n{d_grad}");
    assert!(divisions(&d_grad, ": i64") <= ids, "no 64-bit division but the thread ids':\n{d_grad}");
    let pointwise = |b: usize| {
        let mut g = Graph::default();
        let xy = product(&mut g, b, p - 1);
        g.outputs = vec![xy];
        gpu::compile(&g, SIZES).unwrap().mlir
    };
    let (small, large) = (pointwise(4), pointwise(1024));
    assert!(divisions(&small, ": i32") >= 2 && divisions(&small, ": i64") == 0, "{small}");
    assert!(divisions(&large, ": i32") == 0 && divisions(&large, ": i64") >= 2, "{large}");
}

/// A long sum into one element (a loss over tokens × vocabulary, a weight's squares, summed
/// axis by axis from the last) runs in two steps: first the last sum that leaves at least
/// 1,024 elements (rows of the vocabulary, of a weight), or where none does the first sum
/// (its rows in parallel), then the short one to the scalar; a short chain stays one body.
#[test]
fn a_long_sum_into_one_element_runs_in_two_steps() {
    let cases: [(&[usize], Option<Vec<usize>>); 5] = [
        (&[8, 64, 1500], Some(vec![8, 64])),
        (&[8, 200, 1500], Some(vec![8, 200])),
        (&[1024, 2048], Some(vec![1024])),
        (&[3352, 1024], Some(vec![3352])),
        (&[24, 64], None),
    ];
    for (shape, scratch) in cases {
        match (product_unit(shape, &|body, product| body.sum_all(product)), scratch) {
            (Ok(Unit::Chain(chain)), Some(rows)) => {
                assert_eq!(chain.steps.len(), 2, "{shape:?}: the rows' sums, then the scalar");
                assert_eq!(chain.scratch, vec![rows], "{shape:?}: the rows' sums in scratch");
            }
            (Ok(Unit::Body(_)), None) => {}
            (Ok(_), _) => panic!("{shape:?}: a chain only for a long sum"),
            (Err(e), _) => panic!("{e}"),
        }
    }
}

/// The GPU's unit for a fused kernel of two `shape` inputs whose body `reduce` computes
/// from their product.
fn product_unit(shape: &[usize], reduce: &dyn Fn(&mut Graph, NodeId) -> NodeId) -> Result<Unit, String> {
    let ty = TensorType { shape: shape.iter().map(|&d| Dim::constant(d as i64)).collect(), dtype: DType::F32 };
    let mut body = Graph::default();
    let x = body.add(Op::Input("0".into()), vec![], ty.clone());
    let y = body.add(Op::Input("1".into()), vec![], ty.clone());
    let product = body.binary(Binary::Mul, x, y);
    let value = reduce(&mut body, product);
    body.outputs = vec![value];
    let out_ty = body.nodes[value].ty.clone();
    let mut program = Graph::default();
    let inputs =
        vec![program.add(Op::Input("x".into()), vec![], ty.clone()), program.add(Op::Input("y".into()), vec![], ty)];
    let kernel = hyb_compiler::ir::Kernel { kind: hyb_compiler::ir::KernelKind::Fused, body };
    let out = program.add(Op::Kernel(Box::new(kernel)), inputs, out_ty);
    program.outputs = vec![out];
    unit::for_node(&program, out, SIZES, hyb_compiler::codegen::Target::Gpu)
}

/// The chain of a fused kernel that sums the product of two `shape` inputs by `sums`
/// (each an axis and the shape it leaves), as the GPU runs it.
fn summed_product(shape: &[usize], sums: &[(i64, &[usize])]) -> hyb_compiler::codegen::chain::Chain {
    let reduce = |body: &mut Graph, mut value: NodeId| {
        for &(axis, left) in sums {
            let ty = TensorType { shape: left.iter().map(|&d| Dim::constant(d as i64)).collect(), dtype: DType::F32 };
            let sum = hyb_compiler::ops::Reduce { op: ReduceOp::Sum, axis, keepdim: false };
            value = body.add(Op::Prim(hyb_compiler::ops::Prim::Reduce(sum)), vec![value], ty);
        }
        value
    };
    match product_unit(shape, &reduce) {
        Ok(Unit::Chain(chain)) => chain,
        Ok(_) => panic!("{shape:?} {sums:?}: a long sum into few outputs should be a chain"),
        Err(e) => panic!("{e}"),
    }
}

/// Mamba-2's `D` gradient as the backward pass sums it, over the batch and time into
/// `[H, P]` and then over P into `[H]`: the chain is factored (chunks of time summed in
/// parallel, a warp or block each, then their total), and the `[H, P]` sum inside it, long
/// enough to be a nested reduction of its own, is not also computed for no reader.
#[test]
fn a_factored_chain_computes_its_inner_sums_once() {
    let (b, t, h, p) = (4, 4096, 24, 64);
    let chain = summed_product(&[b, t, h, p], &[(0, &[t, h, p]), (0, &[h, p]), (1, &[h])]);
    assert_eq!(chain.steps.len(), 2, "the partial sums, then their total");
    assert_eq!(chain.scratch.len(), 1, "only the partial sums in scratch: {:?}", chain.scratch);
    assert_eq!(chain.scratch[0].iter().product::<usize>(), t / 16 * h, "per head, chunks of 16 steps");
}

/// A column sum (a norm weight's gradient, `[B, T, d] → [d]`) is factored into four times
/// as many partial sums as a row sum would be: each is a thread's, not a warp's.
#[test]
fn a_column_sum_is_factored_into_a_thread_per_partial() {
    let (b, t, d) = (4, 4096, 1024);
    let chain = summed_product(&[b, t, d], &[(0, &[t, d]), (0, &[d])]);
    assert_eq!(chain.steps.len(), 2, "the partial sums, then their total");
    assert_eq!(chain.scratch, vec![vec![t / 16, d]], "chunks of 16 steps, each summed over the batch");
}

#[test]
fn long_rows_and_vector_bodies_match_the_reference_on_the_cpu() {
    for (name, body) in long_row_bodies() {
        for storage in [vec![], mixed_storage(&body, 0), mixed_storage(&body, 1)] {
            let full =
                if storage.is_empty() { vec![Storage::F32; mixed_storage(&body, 0).len()] } else { storage.clone() };
            let kernel = cpu::compile_stored(&body, SIZES, &[], &storage).unwrap();
            let case = Case::new(&body, 7, -1.0, 1.0).unwrap().stored(&body, &full).unwrap();
            for case in [case.packed(0), case] {
                let got = run_stored(&kernel, &case, &full).unwrap();
                case.compare_stored(&got, &full).unwrap_or_else(|e| panic!("{name}, storage {storage:?}: {e}"));
            }
        }
    }
}

fn spills(report: &str) -> bool {
    report.lines().any(|l| l.contains("bytes spill stores") && !l.contains(" 0 bytes spill stores"))
}

/// `ptxas` from `HYB_PTXAS`, or on `PATH`.
fn ptxas() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("HYB_PTXAS") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("ptxas")).find(|p| p.is_file())
}

/// Every fused kernel and every template instance of every model, as PTX: by name, with
/// where it was first seen.
fn gpu_kernels() -> BTreeMap<String, (String, Result<gpu::GpuKernel, hyb_compiler::codegen::CodegenError>)> {
    let mut kernels: BTreeMap<_, _> = fused_kernels(true)
        .iter()
        .map(|(name, (origin, body))| (name.clone(), (origin.clone(), gpu::compile(body, SIZES))))
        .collect();
    // Every fused kernel again with bf16 views, and the long-row bodies both ways.
    for (name, (origin, body)) in fused_kernels(true) {
        let bf16 = vec![Storage::Bf16; body.input_nodes().count() + body.outputs.len()];
        kernels.insert(format!("{name}_bf16"), (origin, gpu::compile_stored(&body, SIZES, &bf16)));
    }
    for (name, body) in long_row_bodies() {
        let bf16 = vec![Storage::Bf16; body.input_nodes().count() + body.outputs.len()];
        kernels.insert(format!("{name}_bf16"), ("long rows".into(), gpu::compile_stored(&body, SIZES, &bf16)));
        kernels.insert(name, ("long rows".into(), gpu::compile(&body, SIZES)));
    }
    for (origin, graph, _) in compiled_models() {
        for node in 0..graph.nodes.len() {
            let Some(code) = template::for_node(graph, node, SIZES, hyb_compiler::codegen::Target::Gpu) else {
                continue;
            };
            match code {
                Ok(code) => {
                    kernels.entry(code.name.clone()).or_insert_with(|| (origin.clone(), gpu::compile_template(&code)));
                }
                Err(e) => {
                    kernels.insert(format!("%{node} of {origin}"), (origin.clone(), Err(e)));
                }
            }
        }
    }
    kernels
}

#[test]
fn every_kernel_of_every_model_becomes_self_contained_ptx() {
    let kernels = gpu_kernels();
    let assembler = ptxas();
    if assembler.is_none() {
        println!("note: no ptxas (set HYB_PTXAS or put it on PATH): the PTX is generated but not assembled");
    }
    let dir = std::env::temp_dir().join(format!("hyb-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    let mut registers = 0;
    let mut reports = String::new();
    let disassembler = std::env::var_os("HYB_CUOBJDUMP").map(std::path::PathBuf::from);
    let mut machine_code = String::new();
    let mut families = std::collections::BTreeSet::new();
    let (mut vector_kernels, mut block_kernels) = (0, 0);
    let started = std::time::Instant::now();
    for (name, (origin, kernel)) in &kernels {
        let kernel = match kernel {
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
        // A vector path stores 16 bytes at a time; a block reduction meets at barriers in
        // shared memory.
        let vectorised = kernel.nests.iter().any(|n| n.vector_width > 1);
        vector_kernels += vectorised as usize;
        block_kernels += kernel.nests.iter().any(|n| n.per_block) as usize;
        if vectorised && !kernel.ptx.contains("st.global.v4") {
            failures.push(format!("{name} ({origin}): a vector path without st.global.v4"));
        }
        let vector_reads = ["bias_scale_silu", "skip_merged_heads"];
        if vector_reads.iter().any(|v| name.starts_with(v)) && !kernel.ptx.contains("ld.global.v4") {
            failures.push(format!("{name} ({origin}): no ld.global.v4"));
        }
        if kernel.nests.iter().any(|n| n.per_block && n.shared_bytes > 0)
            && !(kernel.ptx.contains("bar.sync") && kernel.ptx.contains(".shared"))
        {
            failures.push(format!("{name} ({origin}): a block reduction without bar.sync and shared memory"));
        }
        let Some(ptxas) = &assembler else { continue };
        let file = dir.join(format!("{name}.ptx"));
        std::fs::write(&file, &kernel.ptx).unwrap();
        let cubin = dir.join(format!("{name}.cubin"));
        let out = std::process::Command::new(ptxas)
            .args(["-arch=sm_90", "-v", "-o"])
            .arg(&cubin)
            .arg(&file)
            .output()
            .expect("ptxas runs");
        let report = String::from_utf8_lossy(&out.stderr).to_string();
        reports.push_str(&format!("== {name} ({origin})\n{report}"));
        // The machine code of one instance of each template (cuobjdump takes a second each).
        let family = name.split(|c: char| c.is_ascii_digit()).next().unwrap_or(name).to_string();
        let first = !name.starts_with("fused_") && families.insert(family);
        if let (Some(cuobjdump), true) = (&disassembler, out.status.success() && first) {
            let sass = std::process::Command::new(cuobjdump).arg("-sass").arg(&cubin).output().expect("cuobjdump runs");
            let text = String::from_utf8_lossy(&sass.stdout).to_string();
            if !sass.status.success() || !text.contains("EXIT") {
                failures.push(format!("{name} ({origin}): cuobjdump -sass: {}", String::from_utf8_lossy(&sass.stderr)));
            }
            machine_code.push_str(&format!("== {name} ({origin})\n{text}"));
        }
        if !out.status.success() {
            failures.push(format!("{name} ({origin}): ptxas failed:\n{report}"));
        } else if spills(&report) {
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
    let assembled = if assembler.is_some() {
        let record = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ptxas-report.txt");
        std::fs::write(&record, &reports).unwrap();
        let sass = if disassembler.is_some() {
            let at = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("templates.sass");
            std::fs::write(&at, &machine_code).unwrap();
            format!("; SASS of each template in {}", at.display())
        } else {
            String::new()
        };
        format!(", assembled by ptxas (at most {registers} registers; every report in {}{sass})", record.display())
    } else {
        String::new()
    };
    println!(
        "{covered} of {} kernels and templates became PTX{assembled}; {vector_kernels} with a vector path, \
         {block_kernels} with block reductions ({:.1?})",
        kernels.len(),
        started.elapsed()
    );
    assert!(vector_kernels > 0 && block_kernels > 0, "the long-row bodies have vector paths and block reductions");
    assert!(failures.is_empty(), "{} of {} kernels failed:\n{}", failures.len(), kernels.len(), failures.join("\n"));
}

/// The CUDA executor generates a program's kernels on many threads at once (MLIR contexts
/// of their own, one pass registry): each must be the PTX it is when generated alone.
#[test]
fn kernels_generated_on_many_threads_are_those_generated_one_at_a_time() {
    use rayon::prelude::*;
    let (origin, graph, _) = &compiled_models()[0];
    let mut templates: Vec<template::TemplateCode> = (0..graph.nodes.len())
        .filter_map(|node| template::for_node(graph, node, SIZES, hyb_compiler::codegen::Target::Gpu)?.ok())
        .collect();
    templates.dedup_by(|a, b| a.name == b.name);
    let bodies: Vec<Graph> = fused_kernels(true).into_values().map(|(_, body)| body).take(40).collect();
    assert!(!templates.is_empty() && bodies.len() == 40, "{origin}: templates and bodies to generate");
    let ptx =
        |r: Result<gpu::GpuKernel, hyb_compiler::codegen::CodegenError>| r.map(|k| k.ptx).map_err(|e| e.to_string());
    let generate = |i: usize| match i.checked_sub(bodies.len()) {
        None => ptx(gpu::compile(&bodies[i], SIZES)),
        Some(t) => ptx(gpu::compile_template(&templates[t])),
    };
    let n = bodies.len() + templates.len();
    let alone: Vec<_> = (0..n).map(generate).collect();
    let together: Vec<_> = (0..n).into_par_iter().map(generate).collect();
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert!(a.is_ok(), "kernel {i}: {a:?}");
        assert_eq!(a, t, "kernel {i} differs when generated beside others");
    }
}

/// A body reading input `0` of `shape`.
fn body_with_input(shape: &[usize]) -> (Graph, usize) {
    let mut g = Graph::default();
    let ty = TensorType { shape: shape.iter().map(|&d| Dim::constant(d as i64)).collect(), dtype: DType::F32 };
    let x = g.add(Op::Input("0".into()), vec![], ty);
    (g, x)
}

/// Runs a kernel on contiguous views: `inputs` packed at the start of the arena, the
/// outputs after them, poisoned.
fn run_contiguous(kernel: &cpu::CpuKernel, body: &Graph, inputs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let shapes: Vec<Vec<usize>> = body
        .outputs
        .iter()
        .map(|&o| body.nodes[o].ty.shape.iter().map(|d| d.as_const().unwrap() as usize).collect())
        .collect();
    let in_shapes: Vec<Vec<usize>> = body
        .input_nodes()
        .map(|(n, _)| body.nodes[n].ty.shape.iter().map(|d| d.as_const().unwrap() as usize).collect())
        .collect();
    let contiguous = |s: &[usize]| -> Vec<isize> {
        let mut st = vec![1isize; s.len()];
        for k in (0..s.len().saturating_sub(1)).rev() {
            st[k] = st[k + 1] * s[k + 1] as isize;
        }
        st
    };
    let mut arena: Vec<f32> = inputs.concat();
    let mut offsets = Vec::new();
    for s in &shapes {
        offsets.push(arena.len());
        arena.extend(std::iter::repeat_n(f32::NAN, s.iter().product()));
    }
    let in_strides: Vec<Vec<isize>> = in_shapes.iter().map(|s| contiguous(s)).collect();
    let out_strides: Vec<Vec<isize>> = shapes.iter().map(|s| contiguous(s)).collect();
    let mut at = 0;
    let ins: Vec<ArenaView> = in_shapes
        .iter()
        .zip(&in_strides)
        .map(|(s, st)| {
            let v = ArenaView { offset: at, shape: s, strides: st };
            at += s.iter().product::<usize>();
            v
        })
        .collect();
    let outs: Vec<ArenaView> = shapes
        .iter()
        .zip(&out_strides)
        .zip(&offsets)
        .map(|((s, st), &offset)| ArenaView { offset, shape: s, strides: st })
        .collect();
    kernel.run(&mut arena, &ins, &outs).unwrap();
    shapes.iter().zip(&offsets).map(|(s, &o)| arena[o..o + s.iter().product::<usize>()].to_vec()).collect()
}

/// Below this the f32 results are subnormal products (x·σ(x) at x = −100) or the reference
/// itself rounds to 0 (its 1 + tanh(u) in gelu), so only the magnitude is compared.
const TINY: f32 = 1e-30;

/// The generated functions at the values where approximations go wrong: zeros, infinities,
/// NaN, subnormals, the edges of exp's range, large arguments of tanh and softplus.
#[test]
fn functions_match_the_reference_at_special_values() {
    let values: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -0.5,
        1e-7,
        -1e-7,
        1e-30,
        1e-40,
        -1e-40,
        2.5,
        -3.75,
        10.0,
        -10.0,
        20.0,
        20.5,
        -20.0,
        87.0,
        88.5,
        89.0,
        -87.0,
        -100.0,
        -104.0,
        -110.0,
        1e6,
        -1e6,
        3.4e38,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        0.693,
        std::f32::consts::SQRT_2,
        f32::from_bits(std::f32::consts::SQRT_2.to_bits() + 1),
        std::f32::consts::FRAC_1_SQRT_2,
    ];
    let (mut g, x) = body_with_input(&[values.len()]);
    let mut outputs = Vec::new();
    for u in [
        Unary::Neg,
        Unary::Exp,
        Unary::Log,
        Unary::Sqrt,
        Unary::Rsqrt,
        Unary::Sigmoid,
        Unary::Silu,
        Unary::Softplus,
        Unary::Tanh,
        Unary::Gelu,
        Unary::Abs,
        Unary::Sign,
        Unary::Round,
        Unary::Step,
    ] {
        outputs.push((format!("{u:?}"), g.unary(u, x)));
    }
    for e in [2.0, 3.0, -1.0, 0.5, 1.5, -0.5, 0.0] {
        outputs.push((format!("pow {e}"), g.apply(Pow { exponent: F64(e) }, vec![x])));
    }
    let bf16 = g.apply(Cast { dtype: DType::BF16 }, vec![x]);
    outputs.push(("cast bf16".into(), bf16));
    // The value not picked never reaches the result: √x where x > 0, else 0 (no NaN), and
    // a NaN mask picks the second value.
    let (root, zero) = (g.unary(Unary::Sqrt, x), g.constant(0.0));
    outputs.push(("select √x or 0".into(), g.apply(Select, vec![x, root, zero])));
    let negated = g.unary(Unary::Neg, x);
    outputs.push(("select 0 or -x".into(), g.apply(Select, vec![x, zero, negated])));
    g.outputs = outputs.iter().map(|(_, n)| *n).collect();
    let kernel = cpu::compile(&g, SIZES).unwrap();
    let got = run_contiguous(&kernel, &g, std::slice::from_ref(&values));
    let input = Tensor::new(vec![values.len()], values.iter().map(|&v| v as f64).collect());
    let want = reference::run(&g, &HashMap::new(), &HashMap::from([("0".to_string(), input)])).unwrap();
    let mut wrong = Vec::new();
    for ((what, _), (got, want)) in outputs.iter().zip(got.iter().zip(&want)) {
        for ((&x, &g), &w) in values.iter().zip(got).zip(&want.data) {
            let w = w as f32;
            let ok = if w.is_nan() {
                g.is_nan()
            } else if w.is_infinite() {
                g == w
            } else {
                (g - w).abs() <= 2e-6 * w.abs() + TINY
            };
            if !ok {
                wrong.push(format!("{what}({x:e}) = {g:e}, want {w:e}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `sin` and `cos` (which no primitive applies pointwise; RoPE's templates call them) at
/// zeros, subnormals, the quadrant edges, large arguments inside the accurate range, and
/// ±∞ and NaN (which give NaN).
#[test]
fn sin_and_cos_match_the_reference_at_special_values() {
    use std::f32::consts::{FRAC_PI_2, FRAC_PI_4, PI};
    let values: Vec<f32> = vec![
        0.0,
        -0.0,
        1e-7,
        -1e-7,
        1e-30,
        1e-40,
        -1e-40,
        0.5,
        1.0,
        -1.0,
        FRAC_PI_4,
        FRAC_PI_4 + 1e-7,
        FRAC_PI_2,
        -FRAC_PI_2,
        PI,
        -PI,
        3.0 * FRAC_PI_2,
        2.0 * PI,
        10.0,
        -10.0,
        100.0,
        1000.5,
        4095.0,
        12345.678,
        -54321.0,
        1e5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    let n = values.len();
    let mut body = Text::new();
    let x = body.load(0, &["%item"]);
    for (view, f) in [(1, Func::Sin), (2, Func::Cos)] {
        let y = body.call(f, &x);
        body.store(view, &["%item"], &y);
    }
    let code = TemplateCode {
        name: "sin_cos".into(),
        inputs: vec![vec![n]],
        outputs: vec![vec![n], vec![n]],
        workspace: vec![],
        workspace_storage: vec![],
        in_place: vec![],
        phases: vec![Phase { what: "apply", items: n, work_per_item: 1, body, cooperative: None }],
    };
    let kernel = cpu::compile_template(&code).unwrap();
    let mut arena = values.clone();
    arena.extend(std::iter::repeat_n(f32::NAN, 2 * n));
    let (shape, unit) = ([n], [1isize]);
    let view = |offset| ArenaView { offset, shape: &shape, strides: &unit };
    kernel.run(&mut arena, &[view(0)], &[view(n), view(2 * n)]).unwrap();
    let mut wrong = Vec::new();
    for (what, f, got) in [("sin", f64::sin as fn(f64) -> f64, &arena[n..2 * n]), ("cos", f64::cos, &arena[2 * n..])] {
        for (&x, &g) in values.iter().zip(got) {
            let w = f(x as f64);
            let ok = if w.is_nan() { g.is_nan() } else { (g as f64 - w).abs() <= 2e-7 * w.abs().max(TINY as f64) };
            if !ok {
                wrong.push(format!("{what}({x:e}) = {g:e}, want {w:e}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_primitive_without_a_generator_is_an_error_naming_it() {
    let (mut g, x) = body_with_input(&[4, 4]);
    let y = g.matmul(x, x, false, false);
    g.outputs = vec![y];
    let e = cpu::compile(&g, SIZES).err().expect("matmul is not a fused primitive");
    assert!(e.to_string().contains("`matmul`"), "{e}");
    let e = gpu::compile(&g, SIZES).err().expect("nor on the GPU");
    assert!(e.to_string().contains("`matmul`"), "{e}");
}

/// An update may write over the view it reads element by element (AdamW); a kernel that
/// reads other elements of the view (a softmax over the row) may not, nor may an output
/// leave the arena or write an element twice.
#[test]
fn in_place_writes_only_over_inputs_read_element_by_element() {
    let (mut g, x) = body_with_input(&[3, 5]);
    let y = g.scale(x, 2.0);
    g.outputs = vec![y];
    let double = cpu::compile(&g, SIZES).unwrap();
    let (shape, strides) = ([3usize, 5], [5isize, 1]);
    let view = ArenaView { offset: 0, shape: &shape, strides: &strides };
    let mut arena: Vec<f32> = (0..15).map(|i| i as f32).collect();
    double.run(&mut arena, &[view], &[view]).unwrap();
    assert_eq!(arena, (0..15).map(|i| 2.0 * i as f32).collect::<Vec<_>>());

    let (mut g, x) = body_with_input(&[3, 5]);
    let m = g.reduce(ReduceOp::Max, x, -1, true);
    let y = g.binary(Binary::Sub, x, m);
    g.outputs = vec![y];
    let centre = cpu::compile(&g, SIZES).unwrap();
    let e = centre.run(&mut arena, &[view], &[view]).unwrap_err();
    assert!(matches!(e, cpu::RunError::Overlap { .. }), "{e}");
    let (mut far, zero) = (arena.clone(), [0isize, 1]);
    far.resize(40, 0.0);
    let beyond = ArenaView { offset: 1, ..view };
    let e = centre.run(&mut far, &[view], &[beyond]).unwrap_err();
    assert!(matches!(e, cpu::RunError::Overlap { .. }), "{e}");
    let outside = ArenaView { offset: 30, ..view };
    let e = centre.run(&mut far, &[view], &[outside]).unwrap_err();
    assert!(matches!(e, cpu::RunError::OutOfBounds { .. }), "{e}");
    let twice = ArenaView { offset: 20, shape: &shape, strides: &zero };
    let e = centre.run(&mut far, &[view], &[twice]).unwrap_err();
    assert!(matches!(e, cpu::RunError::Overlap { .. }), "{e}");
}

/// Throughput of generated code against the reference interpreter (in f32) on a row
/// softmax and an RMSNorm with its weight: `cargo test --release -p hyb-compiler --test
/// codegen -- --ignored --nocapture` (`HYB_SHOW_MLIR=1` prints their MLIR).
#[test]
#[ignore = "a benchmark, not a test: it prints throughput and asserts nothing about time"]
fn speed() {
    let (rows, d) = (4096usize, 1024usize);
    let (mut softmax, x) = body_with_input(&[rows, d]);
    let m = softmax.reduce(ReduceOp::Max, x, -1, true);
    let c = softmax.binary(Binary::Sub, x, m);
    let e = softmax.unary(Unary::Exp, c);
    let s = softmax.reduce(ReduceOp::Sum, e, -1, true);
    let y = softmax.binary(Binary::Div, e, s);
    softmax.outputs = vec![y];
    let (mut rmsnorm, x) = body_with_input(&[rows, d]);
    let wt = TensorType { shape: vec![Dim::constant(d as i64)], dtype: DType::F32 };
    let w = rmsnorm.add(Op::Input("1".into()), vec![], wt);
    let sq = rmsnorm.binary(Binary::Mul, x, x);
    let ms = rmsnorm.reduce(ReduceOp::Mean, sq, -1, true);
    let eps = rmsnorm.constant(1e-6);
    let ms = rmsnorm.binary(Binary::Add, ms, eps);
    let r = rmsnorm.unary(Unary::Rsqrt, ms);
    let n = rmsnorm.binary(Binary::Mul, x, r);
    let y = rmsnorm.binary(Binary::Mul, n, w);
    rmsnorm.outputs = vec![y];
    let mut rng = Rng(7);
    for (what, body) in [("softmax", &softmax), ("rmsnorm", &rmsnorm)] {
        let started = std::time::Instant::now();
        let kernel = cpu::compile(body, SIZES).unwrap();
        let compile_time = started.elapsed();
        if std::env::var_os("HYB_SHOW_MLIR").is_some() {
            println!("{}", kernel.mlir());
        }
        let inputs: Vec<Vec<f32>> = body
            .input_nodes()
            .map(|(n, _)| {
                let len: usize = body.nodes[n].ty.shape.iter().map(|d| d.as_const().unwrap() as usize).product();
                (0..len).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
            })
            .collect();
        let time = |f: &mut dyn FnMut()| {
            let mut times: Vec<f64> = (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            times[2]
        };
        let mut arena: Vec<f32> = inputs.concat();
        let out = arena.len();
        arena.resize(out + rows * d, f32::NAN);
        let (shape, strides, vector, unit) = ([rows, d], [d as isize, 1], [d], [1isize]);
        let views: Vec<ArenaView> = inputs
            .iter()
            .scan(0, |at, v| {
                let offset = std::mem::replace(at, *at + v.len());
                Some(if v.len() == d {
                    ArenaView { offset, shape: &vector, strides: &unit }
                } else {
                    ArenaView { offset, shape: &shape, strides: &strides }
                })
            })
            .collect();
        let output = [ArenaView { offset: out, shape: &shape, strides: &strides }];
        let generated = time(&mut || kernel.run(&mut arena, &views, &output).unwrap());
        let args: HashMap<String, Tensor<f32>> = inputs
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let shape = if v.len() == d { vec![d] } else { vec![rows, d] };
                (k.to_string(), Tensor::new(shape, v.clone()))
            })
            .collect();
        let interpreted = time(&mut || {
            reference::run(body, &HashMap::new(), &args).unwrap();
        });
        let bytes = (inputs.iter().map(Vec::len).sum::<usize>() + rows * d) * 4;
        println!(
            "{what} [{rows}, {d}]: generated {:.2} ms ({:.1} GB/s, compiled in {compile_time:.1?}), \
             reference {:.2} ms: {:.1}x",
            generated * 1e3,
            bytes as f64 / generated / 1e9,
            interpreted * 1e3,
            interpreted / generated
        );
    }
}

/// Writes every fused kernel's PTX with random cases (arena, layouts, the reference's
/// outputs) to `$HYB_PTX_CASES`, for `ptx_on_device.py` to run on the GPU machine:
/// `HYB_PTX_CASES=target/ptx-cases cargo test -p hyb-compiler --test codegen -- --ignored
/// export_cases`. Each kernel runs with f32 views at random layouts, packed and aligned
/// (the vector path), packed one element off (the vector path's fallback), and with bf16
/// views at random and aligned layouts; the long-row bodies (block reductions) too.
#[test]
#[ignore = "writes cases for the GPU machine; needs HYB_PTX_CASES and is run by hand before a device call"]
fn export_cases_for_the_device() {
    let dir = std::path::PathBuf::from(std::env::var("HYB_PTX_CASES").expect("HYB_PTX_CASES names a folder"));
    std::fs::create_dir_all(&dir).unwrap();
    let bodies = fused_kernels(false).into_iter().map(|(name, (origin, body))| (name, origin, body));
    let long = long_row_bodies().into_iter().map(|(name, body)| (name, "long rows".to_string(), body));
    let mut cases: Vec<DeviceCase> = Vec::new();
    for (name, origin, body) in bodies.chain(long) {
        let views = body.input_nodes().count() + body.outputs.len();
        let wide = gpu::compile(&body, SIZES).unwrap();
        let narrow = gpu::compile_stored(&body, SIZES, &vec![Storage::Bf16; views]).unwrap();
        let bf16 = vec![Storage::Bf16; views];
        let random = Case::in_domain(&body, 1).unwrap();
        let rounded = random.stored(&body, &bf16).unwrap();
        let variants = [
            ("_aligned", &wide, Storage::F32, random.packed(0)),
            ("_misaligned", &wide, Storage::F32, random.packed(1)),
            ("_bf16_aligned", &narrow, Storage::Bf16, rounded.packed(0)),
            ("", &wide, Storage::F32, random),
            ("_bf16", &narrow, Storage::Bf16, rounded),
        ];
        for (suffix, kernel, storage, case) in variants {
            cases.push(DeviceCase {
                name: format!("{name}{suffix}"),
                origin: origin.clone(),
                ptx: kernel.ptx.clone(),
                nests: kernel.nests.iter().map(launch).collect(),
                workspace: vec![],
                storage,
                tolerance: 0.0,
                f32_inputs: vec![],
                case,
            });
        }
    }
    cases.extend(templates::device_cases());
    // `HYB_PTX_ONLY=PREFIX,…` keeps the cases whose names or origins start with one of them.
    if let Ok(prefixes) = std::env::var("HYB_PTX_ONLY") {
        cases.retain(|c| prefixes.split(',').any(|p| c.name.starts_with(p) || c.origin.starts_with(p)));
    }
    let index: Vec<_> = cases.iter().map(|c| c.write(&dir)).collect();
    std::fs::write(dir.join("cases.json"), serde_json::to_string_pretty(&index).unwrap()).unwrap();
    println!("{} cases in {}", index.len(), dir.display());
}

/// How the device script launches a nest: the geometry `GpuNest` asks for.
fn launch(n: &gpu::GpuNest) -> serde_json::Value {
    serde_json::json!({
        "symbol": n.symbol,
        "iterations": n.iterations,
        "threads_per_block": n.threads_per_block,
        "rows_per_block": n.rows_per_block,
        "per_warp": n.per_warp,
        "per_block": n.per_block,
        "vector_width": n.vector_width,
        "shared_bytes": n.shared_bytes,
        "dynamic_shared_bytes": n.dynamic_shared_bytes,
    })
}

/// A kernel to run on the GPU machine: its PTX, launches, workspace sizes, the storage of
/// every view (one type for the whole case), and a case to compare against.
struct DeviceCase {
    name: String,
    origin: String,
    ptx: String,
    nests: Vec<serde_json::Value>,
    workspace: Vec<usize>,
    storage: Storage,
    /// Error allowed beyond the storage's rounding, as a fraction of each output's scale
    /// (kernels that round their operands: tensor cores).
    tolerance: f64,
    /// Inputs held in f32 in a bf16 arena, as a program stores statistics (flash
    /// attention's logsumexp): each in a region of its own after the arena's end.
    f32_inputs: Vec<usize>,
    case: Case,
}

impl DeviceCase {
    /// Writes the PTX, arena (f32 or bf16 bits, little-endian) and wanted outputs into
    /// `dir`; returns the index entry.
    fn write(&self, dir: &std::path::Path) -> serde_json::Value {
        let layout = |l: &Layout| serde_json::json!({"offset": l.offset, "shape": l.shape, "strides": l.strides});
        let name = &self.name;
        std::fs::write(dir.join(format!("{name}.ptx")), &self.ptx).unwrap();
        let mut arena: Vec<u8> = match self.storage {
            Storage::F32 => self.case.arena.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Storage::Bf16 => self.case.arena.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        };
        let mut inputs: Vec<serde_json::Value> = self.case.inputs.iter().map(layout).collect();
        for &k in &self.f32_inputs {
            assert_eq!(self.storage, Storage::Bf16, "f32 inputs are for bf16 arenas");
            let l = &self.case.inputs[k];
            // 16-byte aligned; the offset counts bf16 elements, the strides f32 ones.
            let region = arena.len().next_multiple_of(16);
            let count: usize = l.shape.iter().product();
            let span = (0..count).map(|i| l.at(i) - l.offset + 1).max().unwrap_or(1);
            arena.resize(region + 4 * span, 0);
            for i in 0..count {
                let at = region + 4 * (l.at(i) - l.offset);
                arena[at..at + 4].copy_from_slice(&self.case.arena[l.at(i)].to_le_bytes());
            }
            inputs[k] = serde_json::json!({"offset": region / 2, "shape": l.shape, "strides": l.strides});
        }
        std::fs::write(dir.join(format!("{name}.arena")), arena).unwrap();
        for (o, want) in self.case.want.iter().enumerate() {
            let bytes: Vec<u8> = want.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(dir.join(format!("{name}.want{o}")), bytes).unwrap();
        }
        serde_json::json!({
            "name": name,
            "origin": self.origin,
            "storage": match self.storage { Storage::F32 => "f32", Storage::Bf16 => "bf16" },
            "nests": self.nests,
            "workspace": self.workspace,
            "floors": self.case.floors,
            "tolerance": self.tolerance,
            "inputs": inputs,
            "outputs": self.case.outputs.iter().map(layout).collect::<Vec<_>>(),
        })
    }
}

/// What a kernel using MLIR's `math.exp` would carry: a declaration the driver cannot
/// resolve without libdevice.
#[test]
fn an_undefined_callee_in_ptx_is_found() {
    let ptx = ".version 8.0\n.target sm_90\n.extern .func  (.param .b32 func_retval0) __nv_expf\n(\n.param .b32 __nv_expf_param_0\n)\n;\n.visible .entry k()\n{\n ret;\n}\n";
    assert_eq!(gpu::unresolved_calls(ptx).len(), 1);
    assert!(gpu::unresolved_calls(".visible .func f()\n{\n ret;\n}\n").is_empty());
}

/// A GEMM kernel whose epilogue only scales the product and adds a value of its shape is
/// one GEMM with alpha and beta (the GPU's cuBLASLt runs it so); any other epilogue stays
/// a body step.
#[test]
fn gemm_epilogues_of_a_scale_and_a_residual_fold_into_the_gemm() {
    use hyb_compiler::codegen::chain::{Epilogue, Slot};
    let typed = |shape: &[usize]| TensorType {
        shape: shape.iter().map(|&d| Dim::constant(d as i64)).collect(),
        dtype: DType::F32,
    };
    // Inputs x [2, 8, 4], w [6, 4], r [2, 8, 6]; the product x·wᵀ [2, 8, 6].
    let kernel = |epilogue: &dyn Fn(&mut Graph, usize, usize, usize) -> usize| {
        let mut g = Graph::default();
        let x = g.add(Op::Input("0".into()), vec![], typed(&[2, 8, 4]));
        let w = g.add(Op::Input("1".into()), vec![], typed(&[6, 4]));
        let r = g.add(Op::Input("2".into()), vec![], typed(&[2, 8, 6]));
        let bias = g.add(Op::Input("3".into()), vec![], typed(&[6]));
        let y = g.matmul(x, w, false, true);
        let out = epilogue(&mut g, y, r, bias);
        g.outputs = vec![out];
        let ty = g.nodes[out].ty.clone();
        let mut outer = Graph::default();
        let inputs: Vec<usize> =
            (0..4).map(|k| outer.add(Op::Input(k.to_string()), vec![], g.nodes[k].ty.clone())).collect();
        let kernel = hyb_compiler::ir::Kernel { kind: hyb_compiler::ir::KernelKind::Gemm, body: g };
        let node = outer.add(Op::Kernel(Box::new(kernel)), inputs, ty);
        match unit::for_node(&outer, node, SIZES, hyb_compiler::codegen::Target::Gpu) {
            Ok(Unit::Chain(c)) => c.folded().map(|f| f.epilogue),
            Ok(_) => panic!("a matmul with an epilogue is a chain"),
            Err(e) => panic!("{e}"),
        }
    };
    let residual = Some(Slot::Input(2));
    let scaled_residual = kernel(&|g, y, r, _| {
        let s = g.scale(y, 0.5);
        g.binary(Binary::Add, r, s)
    });
    assert_eq!(scaled_residual, Some(Epilogue { alpha: 0.5, residual }));
    let twice_scaled = kernel(&|g, y, _, _| {
        let s = g.scale(y, 2.0);
        g.scale(s, 3.0)
    });
    assert_eq!(twice_scaled, Some(Epilogue { alpha: 6.0, residual: None }));
    assert_eq!(kernel(&|g, y, r, _| g.binary(Binary::Add, y, r)), Some(Epilogue { alpha: 1.0, residual }));
    assert_eq!(kernel(&|g, y, _, _| g.unary(Unary::Tanh, y)), None, "tanh is no GEMM epilogue");
    assert_eq!(kernel(&|g, y, _, b| g.binary(Binary::Add, y, b)), None, "a broadcast bias is not beta's C");
    assert_eq!(kernel(&|g, y, r, _| g.binary(Binary::Mul, y, r)), None);
}

/// `one_hot` computed where a fused kernel reads it: a cross-entropy's target logit (a row
/// sum of the indicator times the logits) and its gradient's indicator term, from integer
/// ids, ids out of range selecting nothing — against the reference.
#[test]
fn one_hot_fused_into_its_readers_matches_the_reference() {
    use hyb_compiler::ops::OneHot;
    let (rows, vocab) = (6, 5);
    let mut g = Graph::default();
    let int = TensorType { shape: vec![Dim::constant(rows as i64)], dtype: DType::I64 };
    let ids = g.add(Op::Input("0".into()), vec![], int);
    let float = TensorType { shape: [rows, vocab].map(|d| Dim::constant(d as i64)).to_vec(), dtype: DType::F32 };
    let logits = g.add(Op::Input("1".into()), vec![], float);
    let hot = g.apply(OneHot { depth: Dim::constant(vocab as i64) }, vec![ids]);
    let product = g.binary(Binary::Mul, hot, logits);
    let picked = g.sum(product, -1, true);
    let scaled = g.scale(hot, -0.5);
    let gradient = g.binary(Binary::Add, logits, scaled);
    g.outputs = vec![picked, gradient];
    let id_values = vec![0.0f32, 4.0, 2.0, 7.0, 1.0, 3.0];
    let logit_values: Vec<f32> = (0..rows * vocab).map(|i| (i as f32 * 0.37).sin()).collect();
    let kernel = cpu::compile(&g, SIZES).unwrap();
    let got = run_contiguous(&kernel, &g, &[id_values.clone(), logit_values.clone()]);
    let tensor = |shape: Vec<usize>, v: &[f32]| Tensor::new(shape, v.iter().map(|&x| x as f64).collect());
    let inputs = HashMap::from([
        ("0".to_string(), tensor(vec![rows], &id_values)),
        ("1".to_string(), tensor(vec![rows, vocab], &logit_values)),
    ]);
    let want = reference::run(&g, &HashMap::new(), &inputs).unwrap();
    for (got, want) in got.iter().zip(&want) {
        for (&a, &b) in got.iter().zip(&want.data) {
            assert!((a as f64 - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }
    // Row 3's id is past the vocabulary: its target logit is 0, its indicator all 0.
    assert_eq!(got[0][3], 0.0);
}
