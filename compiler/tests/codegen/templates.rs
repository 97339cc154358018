//! Every template against the float64 reference, at shapes that are odd, not multiples of
//! a block or chunk, and T = 1, on random strided layouts with the outputs poisoned; and
//! each template's PTX, assembled by `ptxas` when it is there, with no spills.

use super::{ptxas, spills, Case, Derived, SIZES};
use hyb_compiler::autodiff::gradients;
use hyb_compiler::codegen::template::{self, TemplateCode};
use hyb_compiler::codegen::Storage;
use hyb_compiler::codegen::{cpu, gpu, Target};
use hyb_compiler::ir::{Graph, Kernel, KernelKind, NodeId, Op, TensorType};
use hyb_compiler::ops::{
    Binary, CacheAttention, CacheWrite, CausalConv1d, CausalConv1dGrad, Concat, ConvStep, DocumentConv1d,
    DocumentConv1dGrad, DocumentRope, DocumentRopeGrad, DocumentSsdScan, DocumentSsdScanGrad, DocumentTril, Embedding,
    EmbeddingGrad, OneHot, Pad, Prim, Rope, RopeAt, RopeGrad, SsdScan, SsdScanGrad, SsdState, SsdStep, Tril, F64,
};
use hyb_compiler::rewrite::kernels::{conv1d_silu, flash_attention};
use hyb_dsl::dim::Dim;
use hyb_dsl::value::DType;

fn f32_type(shape: &[usize]) -> TensorType {
    TensorType { shape: shape.iter().map(|&d| Dim::constant(d as i64)).collect(), dtype: DType::F32 }
}

/// Inputs `0`, `1`, … of `types`.
fn numbered_inputs(g: &mut Graph, types: &[TensorType]) -> Vec<NodeId> {
    types.iter().enumerate().map(|(k, ty)| g.add(Op::Input(k.to_string()), vec![], ty.clone())).collect()
}

/// A body applying `prim` to inputs of `shapes`; every output of it is a body output.
fn prim_body(prim: impl Into<Prim>, shapes: &[Vec<usize>]) -> (Graph, NodeId) {
    let typed: Vec<(Vec<usize>, DType)> = shapes.iter().map(|s| (s.clone(), DType::F32)).collect();
    typed_prim_body(prim, &typed)
}

/// [`prim_body`] with inputs of the given element types.
fn typed_prim_body(prim: impl Into<Prim>, inputs: &[(Vec<usize>, DType)]) -> (Graph, NodeId) {
    let mut g = Graph::default();
    let types: Vec<TensorType> = inputs
        .iter()
        .map(|(s, dtype)| TensorType { shape: s.iter().map(|&d| Dim::constant(d as i64)).collect(), dtype: *dtype })
        .collect();
    let inputs = numbered_inputs(&mut g, &types);
    let outs = g.apply_all(prim, inputs);
    g.outputs = outs.clone();
    (g, outs[0])
}

/// The template of `node`, for `target`.
fn code(body: &Graph, node: NodeId, target: Target) -> TemplateCode {
    template::for_node(body, node, SIZES, target).expect("a template implements the node").expect("it generates")
}

/// Overrides of the range of some inputs: `(input, lo, hi)`.
type Ranges = &'static [(usize, f64, f64)];

/// How a template's test draws its inputs and compares its outputs: values in `lo..hi`
/// (some inputs in their own `ranges`), errors measured against at least `floor`.
#[derive(Clone, Copy)]
struct Values {
    lo: f64,
    hi: f64,
    ranges: Ranges,
    floor: f64,
    /// Inputs computed from the others (a gradient's saved forward outputs).
    derived: Option<&'static Derived>,
}

/// Values in (−1, 1), errors relative to each output's largest magnitude.
const UNIT: Values = Values { lo: -1.0, hi: 1.0, ranges: &[], floor: 0.0, derived: None };

impl Values {
    /// A case of `body` drawn as these values say.
    fn case(&self, body: &Graph, seed: u64) -> Result<Case, String> {
        let case = Case::ranged(body, seed, self.lo, self.hi, self.ranges)?;
        match self.derived {
            Some(derived) => case.derived(body, derived),
            None => Ok(case),
        }
    }
}

/// Runs the template on three random layouts and compares with the reference; then makes
/// its PTX and assembles it.
fn check_template(what: &str, body: &Graph, node: NodeId, values: Values) -> Result<(), String> {
    let kernel = cpu::compile_template(&code(body, node, Target::Cpu)).map_err(|e| format!("{what}: {e}"))?;
    for seed in 1..=4u64 {
        let mut case = values.case(body, seed).map_err(|e| format!("{what}: {e}"))?;
        case.at_least(values.floor);
        if seed == 4 {
            // Compiled for this layout's unit last-axis strides, as the executor compiles it.
            let unit: Vec<bool> = case.inputs.iter().chain(&case.outputs).map(|l| l.view().unit_last()).collect();
            let code = code(body, node, Target::Cpu);
            let kernel = cpu::compile_template_for(&code, &unit).map_err(|e| format!("{what}: {e}"))?;
            super::check(&kernel, &case).map_err(|e| format!("{what}, unit strides: {e}"))?;
            continue;
        }
        super::check(&kernel, &case).map_err(|e| format!("{what}, seed {seed}: {e}"))?;
    }
    // With the storage a bf16 program gives the views, as the GPU runs it.
    let storage = bf16_storage(body, values.derived);
    let kernel = cpu::compile_template_stored(&code(body, node, Target::Cpu), &[], &storage)
        .map_err(|e| format!("{what}: {e}"))?;
    let mut case = values.case(body, 5).map_err(|e| format!("{what}: {e}"))?;
    case.at_least(values.floor);
    let case = case.stored(body, &storage).map_err(|e| format!("{what}: {e}"))?;
    let got = super::run_stored(&kernel, &case, &storage).map_err(|e| format!("{what}, bf16: {e}"))?;
    case.compare_stored(&got, &storage).map_err(|e| format!("{what}, storage {storage:?}: {e}"))?;
    for storage in [vec![], storage] {
        assembles(what, &gpu::compile_template_stored(&code(body, node, Target::Gpu), &storage))?;
    }
    Ok(())
}

/// Storage as a bf16 program gives a template's views: floats in bf16 (every third in
/// f32, so kernels mix both), other values (token ids) in f32. Derived inputs stay f32:
/// the reference does not read them, so their rounding would be an error it cannot allow
/// for (the GPU's cases take them as the program stores them).
fn bf16_storage(body: &Graph, derived: Option<&Derived>) -> Vec<Storage> {
    let types =
        body.input_nodes().map(|(n, _)| &body.nodes[n].ty).chain(body.outputs.iter().map(|&o| &body.nodes[o].ty));
    let inputs = body.input_nodes().count();
    let is_derived = |k: usize| derived.is_some_and(|d| (d.first..inputs).contains(&k));
    types
        .enumerate()
        .map(|(k, ty)| if ty.dtype.is_float() && k % 3 != 2 && !is_derived(k) { Storage::Bf16 } else { Storage::F32 })
        .collect()
}

/// Whether the template's PTX calls nothing undefined and assembles without spills.
fn assembles(what: &str, gpu: &Result<gpu::GpuKernel, hyb_compiler::codegen::CodegenError>) -> Result<(), String> {
    let gpu = gpu.as_ref().map_err(|e| format!("{what} (GPU): {e}"))?;
    let unresolved = gpu::unresolved_calls(&gpu.ptx);
    if !unresolved.is_empty() {
        return Err(format!("{what}: PTX calls {unresolved:?}"));
    }
    if let Some(ptxas) = ptxas() {
        let file = std::env::temp_dir().join(format!("hyb-{}-{}.ptx", gpu.name, std::process::id()));
        std::fs::write(&file, &gpu.ptx).unwrap();
        let out = std::process::Command::new(ptxas)
            .args(["-arch=sm_90", "-v", "-o", "/dev/null"])
            .arg(&file)
            .output()
            .expect("ptxas runs");
        std::fs::remove_file(&file).ok();
        let report = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() || spills(&report) {
            return Err(format!("{what}: ptxas:\n{report}"));
        }
    }
    Ok(())
}

/// A template test: what it is, a body whose node the template implements, and its values.
type TemplateCase = (String, Graph, NodeId, Values);

fn run_all(cases: Vec<TemplateCase>) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(what, body, node, values)| check_template(what, body, *node, *values).err())
        .collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// (B, T, C, K): T = 1, T shorter than the taps, odd channel counts.
const CONV_SHAPES: &[(usize, usize, usize, usize)] = &[(1, 1, 3, 4), (2, 3, 5, 4), (2, 9, 7, 3), (3, 17, 12, 4)];

fn conv1d_cases() -> Vec<TemplateCase> {
    let mut cases = Vec::new();
    for &(b, t, c, k) in CONV_SHAPES {
        for bias in [false, true] {
            let mut shapes = vec![vec![b, t, c], vec![c, k]];
            if bias {
                shapes.push(vec![c]);
            }
            let (body, node) = prim_body(CausalConv1d, &shapes);
            cases.push((format!("conv1d {shapes:?}"), body, node, UNIT));
            let grad = vec![vec![b, t, c], vec![c, k], vec![b, t, c]];
            let (body, node) = prim_body(CausalConv1dGrad { bias }, &grad);
            cases.push((format!("conv1d grad (bias {bias}) {grad:?}"), body, node, UNIT));
        }
    }
    cases
}

#[test]
fn causal_conv1d_matches_the_reference() {
    run_all(conv1d_cases());
}

/// `conv1d_silu` and its gradient kernel, with and without a bias, on whole sequences and
/// (with `positions`, mostly small so documents are short) on packed rows; inputs up to ±3
/// so SiLU's curve, not its linear middle, is tested.
fn conv1d_silu_cases() -> Vec<TemplateCase> {
    let mut cases = Vec::new();
    for &(b, t, c, k) in CONV_SHAPES {
        for (bias, documents) in [(false, false), (true, false), (false, true), (true, true)] {
            let (x, w) = (f32_type(&[b, t, c]), f32_type(&[c, k]));
            let bias_ty = bias.then(|| f32_type(&[c]));
            let positions = documents.then(|| f32_type(&[b, t]));
            let kernel = conv1d_silu(&x, &w, bias_ty.as_ref(), positions.as_ref());
            let types: Vec<TensorType> = [Some(x), Some(w), bias_ty, positions.clone()].into_iter().flatten().collect();
            let at = types.len() - 1;
            let ranges: Ranges = match documents {
                true => Box::leak(Box::new([(at, 0.0, 4.0)])),
                false => &[],
            };
            let values = Values { lo: -3.0, hi: 3.0, ranges, ..UNIT };
            let ([(forward, y), (backward, dx)], _) = kernel_bodies(kernel, &types);
            let what = format!("conv1d_silu [{b}, {t}, {c}] k {k} (bias {bias}, documents {documents})");
            cases.push((what.clone(), forward, y, values));
            cases.push((format!("{what}, gradient"), backward, dx, values));
        }
    }
    cases
}

#[test]
fn conv1d_with_silu_matches_the_reference() {
    run_all(conv1d_silu_cases());
}

/// A gradient may cancel to zero: keys broadcast along time (stride 0) make a row's scores
/// equal, so `Σ_j ds_ij = 0` and `dq = 0`, which f32 meets only to the rounding of its
/// terms (inputs in (−1, 1), so terms of order 0.1); such an output is compared to 1e-5 of
/// this, not of the reference's f64 rounding residue.
const ATTENTION_FLOOR: f64 = 1e-2;

/// An attention test's sizes: batch, query heads, query heads per key/value head, time,
/// head dimension, the RoPE base, and whether rows are packed (a positions input).
#[derive(Debug)]
struct Attention {
    b: usize,
    h: usize,
    groups: usize,
    t: usize,
    d: usize,
    rope: Option<f64>,
    documents: bool,
}

impl Attention {
    fn params(&self) -> template::attention::Params {
        let scale = 1.0 / (self.d as f64).sqrt();
        template::attention::Params { scale, groups: self.groups, rope: self.rope, documents: self.documents }
    }
}

/// T = 1, odd T, odd D (without RoPE, which pairs halves), a single key/value head serving
/// four; packed rows with and without RoPE.
const ATTENTION_SHAPES: &[Attention] = &[
    Attention { b: 1, h: 1, groups: 1, t: 1, d: 4, rope: None, documents: false },
    Attention { b: 2, h: 2, groups: 1, t: 5, d: 8, rope: None, documents: false },
    Attention { b: 1, h: 4, groups: 2, t: 7, d: 3, rope: None, documents: false },
    Attention { b: 2, h: 4, groups: 4, t: 3, d: 5, rope: None, documents: false },
    Attention { b: 1, h: 2, groups: 1, t: 1, d: 4, rope: Some(10000.0), documents: false },
    Attention { b: 2, h: 4, groups: 2, t: 5, d: 8, rope: Some(10000.0), documents: false },
    Attention { b: 1, h: 4, groups: 4, t: 9, d: 4, rope: Some(10000.0), documents: false },
    Attention { b: 2, h: 4, groups: 2, t: 11, d: 5, rope: None, documents: true },
    Attention { b: 2, h: 2, groups: 2, t: 13, d: 6, rope: Some(500.0), documents: true },
];

/// `kernel` as a node over inputs `0..` of `types`, and its gradient kernel (as autodiff
/// makes it) over those inputs, `dy` and the forward's outputs if it keeps several, with an
/// output per input it reaches; and how the gradient's inputs from the forward's outputs
/// are derived.
fn kernel_bodies(kernel: Kernel, types: &[TensorType]) -> ([(Graph, NodeId); 2], Option<&'static Derived>) {
    let out = kernel.body.nodes[kernel.body.outputs[0]].ty.clone();
    let mut forward = Graph::default();
    let inputs = numbered_inputs(&mut forward, types);
    let kept: Vec<TensorType> = kernel.body.outputs.iter().map(|&o| kernel.body.nodes[o].ty.clone()).collect();
    let y = forward.add(Op::Kernel(Box::new(kernel)), inputs.clone(), out.clone());
    forward.outputs = vec![y];
    for (o, ty) in kept.into_iter().enumerate().skip(1) {
        let read = forward.add(Op::Output(o), vec![y], ty);
        forward.outputs.push(read);
    }

    let mut training = forward.clone();
    let dy = training.add(Op::Input(types.len().to_string()), vec![], out.clone());
    let weighted = training.binary(Binary::Mul, y, dy);
    let loss = training.sum_all(weighted);
    gradients(&mut training, loss, &inputs).expect("the kernel has a gradient");
    let (grad, operands) = training
        .nodes
        .iter()
        .find_map(|n| match &n.op {
            Op::Kernel(k) if matches!(k.kind, KernelKind::Grad { .. }) => Some(((**k).clone(), n.inputs.clone())),
            _ => None,
        })
        .expect("the gradient is one kernel");
    let mut backward = Graph::default();
    let grad_types: Vec<TensorType> = operands.iter().map(|&x| training.nodes[x].ty.clone()).collect();
    let inputs = numbered_inputs(&mut backward, &grad_types);
    let outputs: Vec<TensorType> = grad.body.outputs.iter().map(|&o| grad.body.nodes[o].ty.clone()).collect();
    let first = backward.add(Op::Kernel(Box::new(grad)), inputs, outputs[0].clone());
    backward.outputs = vec![first];
    for (k, ty) in outputs.into_iter().enumerate().skip(1) {
        let o = backward.add(Op::Output(k), vec![first], ty);
        backward.outputs.push(o);
    }
    let derived = (grad_types.len() > types.len() + 1)
        .then(|| &*Box::leak(Box::new(Derived { forward: forward.clone(), first: types.len() + 1 })));
    ([(forward, y), (backward, first)], derived)
}

/// The flash-attention kernel node over inputs `0..3` (and the positions with documents),
/// and its gradient kernel over those, `dy` and the forward's output and logsumexp (as
/// [`Derived`] says) with outputs `dq`, `dk`, `dv`.
fn attention_bodies(a: &Attention) -> ([(Graph, NodeId); 2], Option<&'static Derived>) {
    let Attention { b, h, groups, t, d, rope, documents } = *a;
    let kv = h / groups;
    let layout = |heads| if rope.is_some() { vec![b, t, heads, d] } else { vec![b, heads, t, d] };
    let mut types = vec![f32_type(&layout(h)), f32_type(&layout(kv)), f32_type(&[b, kv, t, d])];
    let positions = documents.then(|| f32_type(&[b, t]));
    let operands = (&types[0], &types[1], &types[2]);
    let kernel = flash_attention(operands, 1.0 / (d as f64).sqrt(), groups, rope, positions.as_ref());
    types.extend(positions);
    kernel_bodies(kernel, &types)
}

/// How an attention case draws its inputs: with documents, positions (input 3) mostly
/// below 4, so a row holds documents of a few tokens (and single tokens) at any offset.
fn attention_values(a: &Attention) -> Values {
    let ranges: Ranges = if a.documents { &[(3, 0.0, 4.0)] } else { &[] };
    Values { floor: ATTENTION_FLOOR, ranges, ..UNIT }
}

fn attention_cases() -> Vec<TemplateCase> {
    let mut cases = Vec::new();
    for a in ATTENTION_SHAPES {
        let ([(forward, y), (backward, dq)], derived) = attention_bodies(a);
        cases.push((format!("{a:?}"), forward, y, attention_values(a)));
        cases.push((format!("{a:?}, gradient"), backward, dq, Values { derived, ..attention_values(a) }));
    }
    cases
}

#[test]
fn flash_attention_matches_the_reference() {
    run_all(attention_cases());
}

fn piece_cases() -> Vec<TemplateCase> {
    let mut cases = Vec::new();
    for (shapes, axis) in [
        (vec![vec![2, 3, 4], vec![2, 3, 1], vec![2, 3, 5]], -1),
        (vec![vec![2, 1, 4], vec![2, 6, 4]], 1),
        (vec![vec![3, 2], vec![1, 2]], 0),
    ] {
        let (body, node) = prim_body(Concat { axis }, &shapes);
        cases.push((format!("concat {shapes:?} axis {axis}"), body, node, UNIT));
    }
    for (shape, axis, before, after) in [(vec![2, 3, 4], -1, 1, 2), (vec![3, 5], 0, 0, 3), (vec![1, 4, 2], 1, 2, 0)] {
        let pad = Pad { axis, before: Dim::constant(before), after: Dim::constant(after) };
        let (body, node) = prim_body(pad, std::slice::from_ref(&shape));
        cases.push((format!("pad {shape:?} axis {axis} by {before}, {after}"), body, node, UNIT));
    }
    cases
}

#[test]
fn concat_and_pad_match_the_reference() {
    run_all(piece_cases());
}

/// Whole-number ids in `0..=vocab` (one past the table selects nothing), table and
/// gradient values in the same range.
/// The rotary embedding and its gradient alone (odd heads, T = 1, two bases), and `tril`
/// (`causal_mask` is the same code filling −∞, which the comparison cannot take).
fn position_cases() -> Vec<TemplateCase> {
    let mut cases = Vec::new();
    for (shape, theta) in [(vec![1, 1, 2, 4], 10000.0), (vec![2, 5, 3, 8], 10000.0), (vec![1, 9, 2, 6], 500.0)] {
        let (body, node) = prim_body(Rope { theta: F64(theta) }, std::slice::from_ref(&shape));
        cases.push((format!("rope {shape:?} theta {theta}"), body, node, UNIT));
        let (body, node) = prim_body(RopeGrad { theta: F64(theta) }, std::slice::from_ref(&shape));
        cases.push((format!("rope_grad {shape:?} theta {theta}"), body, node, UNIT));
    }
    for shape in [vec![2, 4, 4], vec![3, 1, 1], vec![2, 2, 7, 7]] {
        let (body, node) = prim_body(Tril, std::slice::from_ref(&shape));
        cases.push((format!("tril {shape:?}"), body, node, UNIT));
    }
    cases
}

#[test]
fn rope_and_masks_match_the_reference() {
    run_all(position_cases());
}

fn lookup_cases() -> Vec<TemplateCase> {
    let ids_below = |n: usize| Values { lo: 0.0, hi: n as f64, ..UNIT };
    let mut cases = Vec::new();
    for (vocab, d, ids) in [(5usize, 3usize, vec![2usize, 3]), (7, 4, vec![1, 1]), (3, 5, vec![9])] {
        let (body, node) = typed_prim_body(Embedding, &[(vec![vocab, d], DType::F32), (ids.clone(), DType::I32)]);
        // The reference refuses ids outside the table; the executor checks them first.
        cases.push((format!("embedding [{vocab}, {d}] ids {ids:?}"), body, node, ids_below(vocab)));
        let (body, node) = typed_prim_body(OneHot { depth: Dim::constant(vocab as i64) }, &[(ids.clone(), DType::I32)]);
        cases.push((format!("one_hot {vocab} ids {ids:?}"), body, node, ids_below(vocab + 1)));
        let mut dy = ids.clone();
        dy.push(d);
        let grad = EmbeddingGrad { vocab: Dim::constant(vocab as i64) };
        let (body, node) = typed_prim_body(grad, &[(ids.clone(), DType::I32), (dy, DType::F32)]);
        cases.push((format!("embedding_grad [{vocab}, {d}] ids {ids:?}"), body, node, ids_below(vocab + 1)));
    }
    cases
}

#[test]
fn lookups_by_token_id_match_the_reference() {
    run_all(lookup_cases());
}

/// (B, T, H, P, G, N, chunk): T = 1, T not a multiple of the chunk, odd P and N, one
/// group, a group per head and between, one batch and three; and one longer sequence.
const SSD_SHAPES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
    (1, 1, 2, 3, 1, 5, 4),
    (3, 7, 4, 3, 2, 5, 4),
    (2, 9, 3, 5, 3, 3, 4),
    (1, 6, 6, 2, 3, 4, 8),
    (2, 64, 4, 8, 2, 16, 16),
];

/// `dt` positive and `a` negative, as Mamba's are, so every decay is at most 1.
const SSD_RANGES: Ranges = &[(1, 0.05, 1.0), (2, -1.0, -0.1)];

fn ssd_cases() -> Vec<TemplateCase> {
    let values = Values { ranges: SSD_RANGES, ..UNIT };
    let mut cases = Vec::new();
    for &(b, t, h, p, g, n, chunk) in SSD_SHAPES {
        let chunk = Dim::constant(chunk as i64);
        let mut shapes = vec![vec![b, t, h, p], vec![b, t, h], vec![h], vec![b, t, g, n], vec![b, t, g, n]];
        let (body, node) = prim_body(SsdScan { chunk: chunk.clone() }, &shapes);
        cases.push((format!("ssd_scan {shapes:?}"), body, node, values));
        shapes.push(vec![b, t, h, p]);
        let (body, node) = prim_body(SsdScanGrad { chunk }, &shapes);
        cases.push((format!("ssd_scan grad {shapes:?}"), body, node, values));
    }
    cases
}

#[test]
fn ssd_scan_matches_the_reference() {
    run_all(ssd_cases());
}

/// The decode step's templates: the scan's final state and its recurrence from a cached
/// state, the conv from its cache, the rotation at a run-time position, and the append to
/// and attention over an attention cache. Positions are drawn over the whole cache and
/// past its end (rows past the end are dropped, queries see at most the cache), and are
/// fractional, as the reference reads them: truncated to whole tokens.
fn decode_cases() -> Vec<TemplateCase> {
    let values = Values { ranges: SSD_RANGES, ..UNIT };
    let mut cases = Vec::new();
    for &(b, t, h, p, g, n, _) in SSD_SHAPES {
        let mut shapes = vec![vec![b, t, h, p], vec![b, t, h], vec![h], vec![b, t, g, n], vec![b, t, g, n]];
        let (body, node) = prim_body(SsdState, &shapes);
        cases.push((format!("ssd_state {shapes:?}"), body, node, values));
        shapes.push(vec![b, h, p, n]);
        let (body, node) = prim_body(SsdStep, &shapes);
        cases.push((format!("ssd_step {shapes:?}"), body, node, values));
    }
    for &(b, t, c, k) in CONV_SHAPES {
        for bias in [false, true] {
            let mut shapes = vec![vec![b, t, c], vec![b, k - 1, c], vec![c, k]];
            if bias {
                shapes.push(vec![c]);
            }
            let (body, node) = prim_body(ConvStep, &shapes);
            cases.push((format!("conv_step {shapes:?}"), body, node, UNIT));
        }
    }
    const ROPE_POSITIONS: Ranges = &[(1, 0.0, 40.0)];
    for (shape, theta) in [(vec![1, 1, 2, 4], 10000.0), (vec![2, 3, 3, 8], 500.0)] {
        let (body, node) = prim_body(RopeAt { theta: F64(theta) }, &[shape.clone(), vec![]]);
        cases.push((format!("rope_at {shape:?} theta {theta}"), body, node, Values { ranges: ROPE_POSITIONS, ..UNIT }));
    }
    // (B, heads, kv heads, T, S, D): one decode token, a few, grouped and not.
    const CACHE_POSITIONS: Ranges = &[(3, 0.0, 9.0)];
    const WRITE_POSITIONS: Ranges = &[(2, 0.0, 9.0)];
    for (b, h, kv, t, s_len, d) in [(1, 2, 1, 1, 7, 4), (2, 4, 2, 3, 7, 5), (1, 3, 3, 2, 5, 8)] {
        let shapes = vec![vec![b, h, t, d], vec![b, s_len, kv, d], vec![b, s_len, kv, d], vec![]];
        let (body, node) = prim_body(CacheAttention { scale: F64(0.4) }, &shapes);
        let positions = Values { ranges: CACHE_POSITIONS, ..UNIT };
        cases.push((format!("cache_attention {shapes:?}"), body, node, positions));
        let shapes = vec![vec![b, s_len, kv, d], vec![b, t, kv, d], vec![]];
        let (body, node) = prim_body(CacheWrite, &shapes);
        cases.push((format!("cache_write {shapes:?}"), body, node, Values { ranges: WRITE_POSITIONS, ..UNIT }));
    }
    cases
}

#[test]
fn decoding_steps_match_the_reference() {
    run_all(decode_cases());
}

/// Positions of packed rows drawn over `0..range` for input `k`: fractional and past a
/// token's own index too, which the templates read as the reference does (truncated,
/// clamped to the token's index), so rows hold documents of every length, one token among
/// them.
fn positions(k: usize, range: f64) -> Values {
    let ranges: Ranges = Box::leak(Box::new([(k, 0.0, range)]));
    Values { ranges, ..UNIT }
}

/// The packed-row (`document_`) twins of the sequence templates.
fn document_cases() -> Vec<TemplateCase> {
    let mut cases = Vec::new();
    for &(b, t, h, p, g, n, chunk) in SSD_SHAPES {
        let chunk = Dim::constant(chunk as i64);
        let mut shapes = vec![vec![b, t, h, p], vec![b, t, h], vec![h], vec![b, t, g, n], vec![b, t, g, n], vec![b, t]];
        // Positions mostly small, so documents are short and restarts frequent.
        let ranges: Ranges = Box::leak(Box::new([SSD_RANGES[0], SSD_RANGES[1], (5, 0.0, 3.0)]));
        let values = Values { ranges, ..UNIT };
        let (body, node) = prim_body(DocumentSsdScan { chunk: chunk.clone() }, &shapes);
        cases.push((format!("document_ssd_scan {shapes:?}"), body, node, values));
        shapes.insert(5, vec![b, t, h, p]);
        let ranges: Ranges = Box::leak(Box::new([SSD_RANGES[0], SSD_RANGES[1], (6, 0.0, 3.0)]));
        let (body, node) = prim_body(DocumentSsdScanGrad { chunk }, &shapes);
        cases.push((format!("document_ssd_scan grad {shapes:?}"), body, node, Values { ranges, ..UNIT }));
    }
    for &(b, t, c, k) in CONV_SHAPES {
        for bias in [false, true] {
            let mut shapes = vec![vec![b, t, c], vec![c, k]];
            if bias {
                shapes.push(vec![c]);
            }
            shapes.push(vec![b, t]);
            let (body, node) = prim_body(DocumentConv1d { bias }, &shapes);
            cases.push((format!("document_conv1d {shapes:?}"), body, node, positions(shapes.len() - 1, 4.0)));
            let grad = vec![vec![b, t, c], vec![c, k], vec![b, t, c], vec![b, t]];
            let (body, node) = prim_body(DocumentConv1dGrad { bias }, &grad);
            cases.push((format!("document_conv1d grad (bias {bias}) {grad:?}"), body, node, positions(3, 4.0)));
        }
    }
    for (shape, theta) in [(vec![1, 1, 2, 4], 10000.0), (vec![2, 5, 3, 8], 10000.0), (vec![1, 9, 2, 6], 500.0)] {
        let rows = vec![shape[0], shape[1]];
        let (body, node) = prim_body(DocumentRope { theta: F64(theta) }, &[shape.clone(), rows.clone()]);
        cases.push((format!("document_rope {shape:?} theta {theta}"), body, node, positions(1, 12.0)));
        let (body, node) = prim_body(DocumentRopeGrad { theta: F64(theta) }, &[shape.clone(), rows]);
        cases.push((format!("document_rope_grad {shape:?} theta {theta}"), body, node, positions(1, 12.0)));
    }
    // `document_mask` is the same template with −∞ (which the comparison cannot take) for 0.
    for shape in [vec![2, 4, 4], vec![3, 1, 1], vec![2, 2, 7, 7]] {
        let rows = vec![shape[0], *shape.last().unwrap()];
        let (body, node) = prim_body(DocumentTril, &[shape.clone(), rows]);
        cases.push((format!("document_tril {shape:?}"), body, node, positions(1, 5.0)));
    }
    cases
}

#[test]
fn packed_row_templates_match_the_reference() {
    run_all(document_cases());
}

/// The families of template cases a training step's templates come from.
fn training_families() -> [Vec<TemplateCase>; 7] {
    [
        conv1d_cases(),
        conv1d_silu_cases(),
        attention_cases(),
        piece_cases(),
        position_cases(),
        lookup_cases(),
        ssd_cases(),
    ]
}

/// The first and last case of each family of templates (a template's code, and a case on
/// random layouts), for tests of what happens to the code after compiling.
pub fn one_of_each_family() -> Vec<(String, TemplateCode, Case)> {
    let mut families: Vec<Vec<TemplateCase>> = training_families().into();
    families.extend([decode_cases(), document_cases()]);
    families
        .into_iter()
        .flat_map(|cases| {
            let last = cases.len() - 1;
            cases.into_iter().enumerate().filter(move |&(i, _)| i == 0 || i == last).map(|(_, c)| c)
        })
        .map(|(what, body, node, values)| {
            let case = values.case(&body, 2).expect("a case");
            (what, code(&body, node, Target::Cpu), case)
        })
        .collect()
}

/// Every template case, for the GPU machine: the PTX, the arena, the reference's outputs
/// and the launches (`compiler/tests/ptx_on_device.py` runs them).
pub fn device_cases() -> Vec<super::DeviceCase> {
    training_families()
        .concat()
        .into_iter()
        .enumerate()
        .map(|(i, (what, body, node, values))| {
            let kernel = gpu::compile_template(&code(&body, node, Target::Gpu)).expect("generates");
            let mut case = values.case(&body, 1).expect("a case");
            case.at_least(values.floor);
            super::DeviceCase {
                name: format!("template{i}"),
                origin: what,
                nests: kernel.nests.iter().map(super::launch).collect(),
                ptx: kernel.ptx,
                workspace: kernel.workspace,
                storage: Storage::F32,
                tolerance: 0.0,
                f32_inputs: vec![],
                case,
            }
        })
        .chain(tensor_core_cases())
        .chain(ssd_tensor_core_cases())
        .collect()
}

/// The SSD scan on tensor cores in bf16 against the reference on the same bf16-rounded
/// inputs, within 1% of the output's scale: Mamba's ranges of `dt` and `a`; adversarial
/// ones (decays from 1 − 1e-8 to e^{-2500}, so states that barely decay and ones that
/// vanish within a step); packed rows with frequent document starts; state size 256; a
/// group of many heads.
fn ssd_tensor_core_cases() -> Vec<super::DeviceCase> {
    const ADVERSARIAL: Ranges = &[(1, 1e-4, 50.0), (2, -50.0, -1e-4)];
    const PACKED: Ranges = &[(1, 0.05, 1.0), (2, -1.0, -0.1), (5, 0.0, 3.0)];
    // One document per row: positions past T are clamped to the token's own place.
    const ONE_DOCUMENT: Ranges = &[(1, 0.05, 1.0), (2, -1.0, -0.1), (5, 1000.0, 2000.0)];
    // (B, T, heads, channels, groups, state), the values of dt and a, packed.
    type Shape = (usize, usize, usize, usize, usize, usize);
    let shapes: [(Shape, Ranges, bool); 7] = [
        ((2, 200, 4, 64, 2, 64), SSD_RANGES, false),
        // A group of 24 head slices: the gradient's items take runs of 8, three partial sums.
        ((1, 130, 12, 64, 1, 64), SSD_RANGES, false),
        ((1, 130, 2, 32, 1, 128), ADVERSARIAL, false),
        ((2, 150, 4, 32, 1, 32), PACKED, true),
        ((2, 150, 4, 32, 1, 32), ONE_DOCUMENT, true),
        ((2, 150, 4, 32, 1, 32), SSD_RANGES, false),
        ((1, 64, 2, 128, 1, 256), SSD_RANGES, false),
    ];
    let mut cases = Vec::new();
    for ((b, t, h, p, g, n), ranges, documents) in shapes {
        let mut inputs = vec![vec![b, t, h, p], vec![b, t, h], vec![h], vec![b, t, g, n], vec![b, t, g, n]];
        let mut with_dy = inputs.clone();
        with_dy.push(vec![b, t, h, p]);
        let chunk = Dim::constant(16);
        let (forward, backward) = if documents {
            inputs.push(vec![b, t]);
            with_dy.push(vec![b, t]);
            (
                prim_body(DocumentSsdScan { chunk: chunk.clone() }, &inputs).0,
                prim_body(DocumentSsdScanGrad { chunk }, &with_dy).0,
            )
        } else {
            (prim_body(SsdScan { chunk: chunk.clone() }, &inputs).0, prim_body(SsdScanGrad { chunk }, &with_dy).0)
        };
        // The gradient's ranges: its positions come after dy.
        let grad_ranges: Ranges = Box::leak(
            ranges.iter().map(|&(i, lo, hi)| (if i == 5 { 6 } else { i }, lo, hi)).collect::<Vec<_>>().into(),
        );
        let passes = [
            ("forward", forward, template::ssd_scan::forward_on_tensor_cores(&inputs, documents), ranges),
            ("gradient", backward, template::ssd_scan::backward_on_tensor_cores(&with_dy, documents), grad_ranges),
        ];
        // The gradient stops at state size 128 (its own SIMT template takes larger ones).
        for (pass, body, code, ranges) in passes.into_iter().filter(|p| p.2.is_some()) {
            let code = code.expect("a tensor-core template");
            let storage = vec![Storage::Bf16; code.inputs.len() + code.outputs.len()];
            let kernel = gpu::compile_template_stored(&code, &storage).expect("generates");
            let mut case =
                Case::ranged(&body, 1, -1.0, 1.0, ranges).expect("a case").stored(&body, &storage).expect("rounds");
            // A gradient is judged on the scale of its terms where the sum cancels.
            if pass == "gradient" {
                case.at_least(0.1);
            }
            cases.push(super::DeviceCase {
                name: format!("tensor_core_ssd{}", cases.len()),
                origin: format!("ssd_scan {pass} {inputs:?} documents {documents} on tensor cores"),
                nests: kernel.nests.iter().map(super::launch).collect(),
                ptx: kernel.ptx,
                workspace: kernel.workspace,
                storage: Storage::Bf16,
                tolerance: 1e-2,
                f32_inputs: vec![],
                case,
            });
        }
    }
    cases
}

/// Attention on tensor cores in bf16, forward and gradient (RoPE with GQA at head
/// dimension 64; 128 without, T not a whole number of tiles), against the reference on the
/// same bf16-rounded inputs: within 1% of the output's scale, the error of bf16
/// probabilities.
fn tensor_core_cases() -> Vec<super::DeviceCase> {
    // Packed rows: documents of up to ~100 tokens (tiles skipped and partly masked), and of
    // a few (rows that see no key of a tile).
    let shapes = [
        (Attention { b: 2, h: 4, groups: 2, t: 200, d: 64, rope: Some(10000.0), documents: false }, 0.0),
        (Attention { b: 1, h: 2, groups: 1, t: 130, d: 128, rope: None, documents: false }, 0.0),
        (Attention { b: 1, h: 4, groups: 4, t: 96, d: 128, rope: Some(500.0), documents: false }, 0.0),
        (Attention { b: 2, h: 4, groups: 2, t: 300, d: 64, rope: Some(10000.0), documents: true }, 100.0),
        (Attention { b: 1, h: 4, groups: 2, t: 200, d: 128, rope: None, documents: true }, 5.0),
    ];
    let mut cases = Vec::new();
    for (a, places) in &shapes {
        let ([forward, backward], derived) = attention_bodies(a);
        let derived = derived.expect("the gradient reads the forward's outputs");
        let p = a.params();
        let kv = a.h / a.groups;
        let layout = |heads| if a.rope.is_some() { vec![a.b, a.t, heads, a.d] } else { vec![a.b, heads, a.t, a.d] };
        let mut inputs = vec![layout(a.h), layout(kv), vec![a.b, kv, a.t, a.d]];
        if a.documents {
            inputs.push(vec![a.b, a.t]);
        }
        // dy, then the forward's output and logsumexp.
        let mut grad_inputs = inputs.clone();
        grad_inputs.extend([vec![a.b, a.h, a.t, a.d], vec![a.b, a.h, a.t, a.d], vec![a.b, a.h, a.t, 1]]);
        let ranges: Ranges = Box::leak(Box::new([(3, 0.0, *places)]));
        let ranges = if a.documents { ranges } else { &[] };
        for (pass, (body, _)) in [("forward", forward), ("gradient", backward)] {
            let code = match pass {
                "forward" => template::attention::forward_on_tensor_cores(&inputs, p),
                _ => template::attention::backward_on_tensor_cores(&grad_inputs, p),
            }
            .expect("a tensor-core template");
            // One arena of bf16 on the device, the positions too (the reference reads them
            // rounded alike); the gradient's logsumexp in f32, as the program keeps it.
            let mut storage = vec![Storage::Bf16; code.inputs.len() + code.outputs.len()];
            let f32_inputs = match pass {
                "forward" => vec![],
                _ => vec![grad_inputs.len() - 1],
            };
            for &k in &f32_inputs {
                storage[k] = Storage::F32;
            }
            let kernel = gpu::compile_template_stored(&code, &storage).expect("generates");
            let mut case = Case::ranged(&body, 1, -1.0, 1.0, ranges).expect("a case");
            if pass == "gradient" {
                case = case.derived(&body, derived).expect("derives");
            }
            let mut case = case.stored(&body, &storage).expect("rounds");
            // A gradient the reference finds exactly zero (a constant v makes dq and dk
            // vanish) is judged on the scale of its terms, not on its own: the bf16
            // probabilities of `P·V` leave `Δ = dO·O` off `dO·v` by ~2⁻⁹ of it, so dq and dk
            // are off by that much of `scale · dO·v · |k|` (or `|q|`).
            case.at_least(0.1);
            if pass == "gradient" {
                let terms = attention_gradient_terms(a, &case);
                for floor in &mut case.floors[..2] {
                    *floor = floor.max(terms);
                }
            }
            cases.push(super::DeviceCase {
                name: format!("tensor_core{}", cases.len()),
                origin: format!("{a:?} {pass} on tensor cores"),
                nests: kernel.nests.iter().map(super::launch).collect(),
                ptx: kernel.ptx,
                workspace: kernel.workspace,
                storage: Storage::Bf16,
                tolerance: 1e-2,
                f32_inputs,
                case,
            });
        }
    }
    cases
}

/// The largest term of an attention gradient's sums, `scale · |dO_i·v_j| · max(|q|, |k|)`
/// over the causal pairs of each head (√2 more with RoPE, which may mix two elements into
/// one): for inputs in [-1, 1] `dO_i·v_j` grows with the head dimension, up to `D` where
/// dO and v are constant along it (a broadcast layout).
fn attention_gradient_terms(a: &Attention, case: &Case) -> f64 {
    let read = |k: usize| case.inputs[k].read(&case.arena);
    let largest = |x: &[f64]| x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    // dy follows q, k, v and the positions.
    let (q, k, v, dy) = (read(0), read(1), read(2), read(3 + usize::from(a.documents)));
    let (kv, d, t) = (a.h / a.groups, a.d, a.t);
    // Row `i` of head `head` of batch row `b`, in a `[B, heads, T, D]` tensor.
    fn row(x: &[f64], (b, heads, head): (usize, usize, usize), (t, d): (usize, usize), i: usize) -> &[f64] {
        let at = ((b * heads + head) * t + i) * d;
        &x[at..at + d]
    }
    let mut product = 0.0f64;
    for b in 0..a.b {
        for h in 0..a.h {
            for i in 0..t {
                let dy_i = row(&dy, (b, a.h, h), (t, d), i);
                for j in 0..=i {
                    let v_j = row(&v, (b, kv, h / a.groups), (t, d), j);
                    let dot: f64 = dy_i.iter().zip(v_j).map(|(x, y)| x * y).sum();
                    product = product.max(dot.abs());
                }
            }
        }
    }
    let rope = if a.rope.is_some() { std::f64::consts::SQRT_2 } else { 1.0 };
    a.params().scale * product * largest(&q).max(largest(&k)) * rope
}

/// Attention on tensor cores, forward and gradient, at head dimensions 64 and 128, with and
/// without RoPE and GQA, at a T that is not a whole number of tiles: the PTX calls nothing undefined, assembles
/// without spills, and its machine code multiplies on the tensor cores (`HMMA` with bf16
/// operands). Its values are checked on the GPU (`device_cases`).
#[test]
fn attention_on_tensor_cores_assembles_to_matrix_instructions() {
    let variants = [
        (64, None, 1, false),
        (128, Some(10_000.0), 4, false),
        (64, Some(500.0), 2, false),
        (128, None, 2, false),
        (64, Some(500.0), 2, true),
        (128, None, 4, true),
    ];
    for (d, rope, groups, documents) in variants {
        let kv = 2;
        let (b, t, h) = (2, 100, kv * groups);
        let mut shapes = match rope {
            Some(_) => vec![vec![b, t, h, d], vec![b, t, kv, d], vec![b, kv, t, d]],
            None => vec![vec![b, h, t, d], vec![b, kv, t, d], vec![b, kv, t, d]],
        };
        if documents {
            shapes.push(vec![b, t]);
        }
        let p = template::attention::Params { scale: 1.0 / (d as f64).sqrt(), groups, rope, documents };
        // dy, then the forward's output and logsumexp.
        let mut grad_inputs = shapes.to_vec();
        grad_inputs.extend([vec![b, h, t, d], vec![b, h, t, d], vec![b, h, t, 1]]);
        let forward = template::attention::forward_on_tensor_cores(&shapes, p).expect("a tensor-core template");
        let backward = template::attention::backward_on_tensor_cores(&grad_inputs, p).expect("a tensor-core gradient");
        for (pass, code) in [("forward", forward), ("gradient", backward)] {
            let what =
                format!("tensor-core attention {pass}, d {d}, rope {rope:?}, groups {groups}, documents {documents}");
            // The rotated q and k, which the tiles stage by asynchronous copies, are bf16.
            let bf16 = code.workspace.iter().zip(code.workspace_bytes()).filter(|&(&n, bytes)| bytes == 2 * n).count();
            assert_eq!(bf16, if rope.is_some() { 2 } else { 0 }, "{what}: bf16 workspace buffers");
            let storage = vec![Storage::Bf16; code.inputs.len() + code.outputs.len()];
            let kernel = gpu::compile_template_stored(&code, &storage);
            assembles(&what, &kernel).unwrap();
            let kernel = kernel.unwrap();
            assert!(kernel.ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"), "{what}: no mma.sync");
            assert!(kernel.ptx.contains("ldmatrix.sync.aligned.m8n8.x4.trans"), "{what}: no transposed ldmatrix");
            assert_tensor_core_sass(&what, &kernel.ptx);
        }
    }
}

/// With ptxas and cuobjdump (`HYB_PTXAS`, `HYB_CUOBJDUMP`), that `ptx` assembles for sm_90
/// into machine code that multiplies on the tensor cores (`HMMA` with bf16 operands).
fn assert_tensor_core_sass(what: &str, ptx: &str) {
    let (Some(ptxas), Some(cuobjdump)) = (ptxas(), std::env::var_os("HYB_CUOBJDUMP")) else { return };
    let dir = std::env::temp_dir().join(format!("hyb-mma-{}-{}", std::process::id(), what.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file, cubin) = (dir.join("k.ptx"), dir.join("k.cubin"));
    std::fs::write(&file, ptx).unwrap();
    let out = std::process::Command::new(ptxas).args(["-arch=sm_90", "-o"]).arg(&cubin).arg(&file).output().unwrap();
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    let sass = std::process::Command::new(cuobjdump).arg("-sass").arg(&cubin).output().unwrap();
    let text = String::from_utf8_lossy(&sass.stdout);
    std::fs::remove_dir_all(&dir).ok();
    assert!(text.contains("HMMA.16816.F32.BF16"), "{what}: no HMMA in the machine code");
}

/// The SSD scan on tensor cores, forward and gradient, at one and two channel slices and
/// four, state sizes 32 to 128 (the forward also 256), for whole rows and packed ones, T not
/// a whole number of tiles: assembles without spills into `HMMA`; sizes it does not take
/// fall back (`None`). Values are checked on the GPU (`device_cases`).
#[test]
fn ssd_scan_on_tensor_cores_assembles_to_matrix_instructions() {
    for (p, n, g, documents) in [(32, 32, 1, false), (64, 128, 1, false), (64, 128, 2, true), (128, 64, 1, false)] {
        let (b, t, h) = (2, 100, 4);
        let mut shapes = vec![vec![b, t, h, p], vec![b, t, h], vec![h], vec![b, t, g, n], vec![b, t, g, n]];
        let mut with_dy = shapes.clone();
        with_dy.push(vec![b, t, h, p]);
        if documents {
            shapes.push(vec![b, t]);
            with_dy.push(vec![b, t]);
        }
        let forward = template::ssd_scan::forward_on_tensor_cores(&shapes, documents).expect("a tensor-core template");
        let backward =
            template::ssd_scan::backward_on_tensor_cores(&with_dy, documents).expect("a tensor-core gradient");
        for (pass, code) in [("forward", forward), ("gradient", backward)] {
            let what = format!("tensor-core ssd_scan {pass}, p {p} n {n} groups {g} documents {documents}");
            let storage = vec![Storage::Bf16; code.inputs.len() + code.outputs.len()];
            let kernel = gpu::compile_template_stored(&code, &storage);
            assembles(&what, &kernel).unwrap();
            let kernel = kernel.unwrap();
            assert!(kernel.ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"), "{what}: no mma.sync");
            assert_tensor_core_sass(&what, &kernel.ptx);
        }
    }
    let wide = [vec![2, 100, 4, 128], vec![2, 100, 4], vec![4], vec![2, 100, 1, 256], vec![2, 100, 1, 256]];
    let code = template::ssd_scan::forward_on_tensor_cores(&wide, false).expect("a forward at state 256");
    let storage = vec![Storage::Bf16; code.inputs.len() + code.outputs.len()];
    assembles("tensor-core ssd_scan forward, n 256", &gpu::compile_template_stored(&code, &storage)).unwrap();
    let with_dy = [wide.to_vec(), vec![wide[0].clone()]].concat();
    assert!(template::ssd_scan::backward_on_tensor_cores(&with_dy, false).is_none(), "the gradient stops at 128");
    let odd = [vec![1, 64, 2, 48], vec![1, 64, 2], vec![2], vec![1, 64, 1, 64], vec![1, 64, 1, 64]];
    assert!(template::ssd_scan::forward_on_tensor_cores(&odd, false).is_none(), "48 channels are not whole slices");
}

/// The tensor-core attention forward and gradient at the peer's shapes (causal GQA, `[B,
/// H, T, D]` contiguous, bf16), and packed rows of 1,024-token documents (positions f32),
/// for `bench/attention_mma.py`: `HYB_PTX_CASES=DIR cargo test --release -p hyb-compiler
/// --test codegen export_attention_benchmark -- --ignored`.
#[test]
#[ignore = "writes the attention benchmark's PTX for the GPU machine; needs HYB_PTX_CASES"]
fn export_attention_benchmark() {
    let dir = std::path::PathBuf::from(std::env::var("HYB_PTX_CASES").expect("HYB_PTX_CASES names a folder"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut index = Vec::new();
    let shapes = [(2, 16, 4, 4096, 128, None), (4, 8, 2, 4096, 64, None), (2, 16, 4, 4096, 128, Some(1024))];
    for (b, h, kv, t, d, documents) in shapes {
        let mut inputs = vec![vec![b, h, t, d], vec![b, kv, t, d], vec![b, kv, t, d]];
        inputs.extend(documents.map(|_| vec![b, t]));
        // dy, then the forward's output and logsumexp.
        let mut grad_inputs = inputs.clone();
        grad_inputs.extend([vec![b, h, t, d], vec![b, h, t, d], vec![b, h, t, 1]]);
        let scale = 1.0 / (d as f64).sqrt();
        let p = template::attention::Params { scale, groups: h / kv, rope: None, documents: documents.is_some() };
        let forward = template::attention::forward_on_tensor_cores(&inputs, p).expect("a tensor-core template");
        let backward = template::attention::backward_on_tensor_cores(&grad_inputs, p).expect("a tensor-core gradient");
        let packed = documents.map_or(String::new(), |l| format!("_doc{l}"));
        let name = format!("attention_b{b}_h{h}_kv{kv}_t{t}_d{d}{packed}");
        let mut passes = serde_json::Map::new();
        for (pass, code) in [("forward", forward), ("backward", backward)] {
            let mut storage = vec![Storage::Bf16; code.inputs.len() + code.outputs.len()];
            if documents.is_some() {
                storage[3] = Storage::F32;
            }
            // The logsumexp in f32, as the program keeps it: the forward's second output,
            // the gradient's last input.
            let lse = if pass == "forward" { code.inputs.len() + 1 } else { code.inputs.len() - 1 };
            storage[lse] = Storage::F32;
            let kernel = gpu::compile_template_stored(&code, &storage).expect("generates");
            std::fs::write(dir.join(format!("{name}_{pass}.ptx")), &kernel.ptx).unwrap();
            passes.insert(
                pass.into(),
                serde_json::json!({
                    "ptx": format!("{name}_{pass}.ptx"),
                    "workspace": kernel.workspace,
                    "nests": kernel.nests.iter().map(super::launch).collect::<Vec<_>>(),
                }),
            );
        }
        let case = serde_json::json!({
            "name": name, "b": b, "h": h, "kv": kv, "t": t, "d": d, "documents": documents, "passes": passes,
        });
        index.push(case);
    }
    std::fs::write(dir.join("bench.json"), serde_json::to_string_pretty(&index).unwrap()).unwrap();
}

/// The tensor-core SSD scan at the peer's shape (B 2, T 4096, 32 heads × 64, one group of
/// state 128, mamba-ssm's chunk 256; `x [B, T, H, P]` contiguous, bf16), for
/// `bench/ssd_mma.py`: `HYB_PTX_CASES=DIR cargo test --release -p hyb-compiler --test
/// codegen export_ssd_benchmark -- --ignored`.
#[test]
#[ignore = "writes the SSD benchmark's PTX for the GPU machine; needs HYB_PTX_CASES"]
fn export_ssd_benchmark() {
    let dir = std::path::PathBuf::from(std::env::var("HYB_PTX_CASES").expect("HYB_PTX_CASES names a folder"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut index = Vec::new();
    // The peer's shape, and a small one whose workspace `bench/ssd_debug.py` checks.
    for (b, t, h, p, g, n, chunk) in [(2, 4096, 32, 64, 1, 128, 256), (1, 128, 1, 32, 1, 32, 64)] {
        let inputs = [vec![b, t, h, p], vec![b, t, h], vec![h], vec![b, t, g, n], vec![b, t, g, n]];
        let forward = template::ssd_scan::forward_on_tensor_cores(&inputs, false).expect("a tensor-core template");
        let with_dy = [inputs.to_vec(), vec![inputs[0].clone()]].concat();
        let backward = template::ssd_scan::backward_on_tensor_cores(&with_dy, false).expect("a tensor-core gradient");
        let name = format!("ssd_b{b}_t{t}_h{h}_p{p}_g{g}_n{n}");
        let mut passes = serde_json::Map::new();
        for (pass, code) in [("forward", forward), ("backward", backward)] {
            let storage = vec![Storage::Bf16; code.inputs.len() + code.outputs.len()];
            let kernel = gpu::compile_template_stored(&code, &storage).expect("generates");
            std::fs::write(dir.join(format!("{name}_{pass}.ptx")), &kernel.ptx).unwrap();
            passes.insert(
                pass.into(),
                serde_json::json!({
                    "ptx": format!("{name}_{pass}.ptx"),
                    "workspace": kernel.workspace,
                    "nests": kernel.nests.iter().map(super::launch).collect::<Vec<_>>(),
                }),
            );
        }
        index.push(serde_json::json!({
            "name": name, "b": b, "t": t, "h": h, "p": p, "g": g, "n": n, "chunk": chunk, "passes": passes
        }));
    }
    std::fs::write(dir.join("ssd.json"), serde_json::to_string_pretty(&index).unwrap()).unwrap();
}
