//! Models: settings, the layer stack (pattern string or list, per-layer overrides), and the
//! fixed language-model skeleton around it:
//!
//! `ids → embedding × embedding_multiplier → layers → RMSNorm → lm_head × lm_head_multiplier`.

use super::call::{configs, Given};
use super::pattern;
use super::{Binding, Bound, Expander, Frame, MAX_PARAMS};
use crate::ast::*;
use crate::diag::{Code, Diagnostic};
use crate::dim::Dim;
use crate::inits::Role;
use crate::prims::Heads;
use crate::resolve::{DefId, DefKind};
use crate::source::FileId;
use crate::trace::{numel, InitSpec, Op, ParamInfo, Trace};
use crate::value::{shape_string, DType, Tensor, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Settings with a meaning of their own (`eps` is also offered to the layers); every other
/// setting is offered to each layer block's configs by name.
const SKELETON_SETTINGS: &[&str] = &["vocab", "d", "layers", "tie_embeddings", "eps", "base_width"];
/// Multipliers of the skeleton itself.
const SKELETON_MUPS: &[&str] = &["embedding_multiplier", "lm_head_multiplier"];
/// Letters a pattern understands without being told (Megatron's convention).
const DEFAULT_LETTERS: &[(char, &str)] = &[('M', "mamba_layer"), ('*', "attention_layer"), ('-', "mlp_layer")];

#[derive(Clone, Debug, PartialEq)]
pub struct LayerSummary {
    pub index: usize,
    pub letter: Option<char>,
    pub block: String,
    pub attention_heads: u64,
    pub ssm_heads: u64,
    pub params: u64,
    /// The layer block's configs as instantiated (explicit, from settings, or defaults).
    pub configs: BTreeMap<String, Value>,
    /// Every multiplier the layer used, by name, with its value.
    pub multipliers: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelSummary {
    pub name: String,
    pub vocab: u64,
    pub d: u64,
    pub layers: Vec<LayerSummary>,
    pub embedding_params: u64,
    pub final_norm_params: u64,
    /// Zero when the head is tied to the embedding.
    pub lm_head_params: u64,
    pub total_params: u64,
    pub tie_embeddings: bool,
    /// µP base width: the width whose hyperparameters transfer (`None`: no µP scaling).
    pub base_width: Option<u64>,
    pub eps: f64,
    pub embedding_multiplier: f64,
    pub lm_head_multiplier: f64,
}

/// A model instantiated: its summary and the full forward program.
pub struct Expanded {
    pub summary: ModelSummary,
    pub trace: Trace,
    /// The residual stream after each layer (trace tensor ids), for activation statistics.
    pub layer_outputs: Vec<usize>,
}

/// A layer kind: which block, with which configs/multipliers set.
#[derive(Clone)]
struct LayerSpec {
    def: DefId,
    letter: Option<char>,
    args: Vec<(Ident, Value, Span)>,
    span: Span,
}

impl<'p> Expander<'p> {
    /// Instantiates a model; `None` if it has errors (in `self.diags`).
    pub fn expand_model(&mut self, def: DefId) -> Option<Expanded> {
        let model = self.prog.model(def);
        let file = self.prog.file_of(def);
        let errors_before = self.diags.len();
        let mut frame = Frame { module: def.module, file, vars: HashMap::new(), ellipsis: None };
        let mut settings: HashMap<String, (Value, Span)> = HashMap::new();
        let mut setting_spans: Vec<(String, Span)> = Vec::new();
        let mut layers_expr = None;
        let mut model_mups = HashMap::new();
        let mut referenced: HashSet<String> = HashSet::new();
        for entry in &model.entries {
            match &entry.kind {
                ModelEntryKind::Setting(name, e) => {
                    if settings.contains_key(&name.name) || (name.name == "layers" && layers_expr.is_some()) {
                        self.report(
                            Diagnostic::new(
                                Code::DuplicateDefinition,
                                file,
                                name.span,
                                format!("setting `{}` is given twice", name.name),
                            )
                            .label("second time"),
                        );
                        continue;
                    }
                    names_in(e, &mut referenced);
                    if name.name == "layers" {
                        layers_expr = Some((e, entry.span));
                        continue;
                    }
                    let v = match self.setting_overrides.get(&name.name) {
                        Some(v) => v.clone(),
                        None => self.expr(e, &mut frame),
                    };
                    frame.vars.insert(name.name.clone(), (v.clone(), Binding::Local));
                    settings.insert(name.name.clone(), (v, e.span));
                    setting_spans.push((name.name.clone(), name.span));
                }
                ModelEntryKind::Mup(items) => {
                    for m in items {
                        let v = self.expr(&m.value, &mut frame);
                        match v.as_f64() {
                            Some(x) => {
                                model_mups.insert(m.name.name.clone(), (x, file, m.name.span));
                            }
                            None if v == Value::Poison => {}
                            None => {
                                self.error(
                                    Code::TypeMismatch,
                                    file,
                                    m.value.span,
                                    format!("multiplier `{}` must be a known number, found {}", m.name.name, v.kind()),
                                );
                            }
                        }
                    }
                }
                ModelEntryKind::Override { args, .. } => args.iter().for_each(|(_, e)| names_in(e, &mut referenced)),
            }
        }

        let vocab = self.positive_setting(&settings, "vocab", model, file);
        let d = self.positive_setting(&settings, "d", model, file);
        let tie = match settings.get("tie_embeddings") {
            None => false,
            Some((Value::Bool(Some(b)), _)) => *b,
            Some((v, span)) => {
                let msg = format!("`tie_embeddings` must be true or false, found {}", v.kind());
                self.error(Code::ModelSetting, file, *span, msg);
                false
            }
        };
        let base_width = match settings.get("base_width") {
            None => None,
            Some((Value::Int(w), span)) => match w.as_const() {
                Some(c) if c > 0 => Some(c as u64),
                _ => {
                    self.error(
                        Code::ModelSetting,
                        file,
                        *span,
                        format!("`base_width` must be a positive integer, found {w}"),
                    );
                    None
                }
            },
            Some((v, span)) => {
                let msg = format!("`base_width` must be an integer, found {}", v.kind());
                self.error(Code::ModelSetting, file, *span, msg);
                None
            }
        };
        let eps = match settings.get("eps") {
            None => 1e-5,
            Some((v, span)) => match v.as_f64() {
                Some(x) if x > 0.0 => x,
                _ => {
                    let msg = format!("`eps` must be a positive number, found {v}");
                    self.error(Code::ModelSetting, file, *span, msg);
                    1e-5
                }
            },
        };
        let Some((layers_e, _)) = layers_expr else {
            self.report(
                Diagnostic::new(
                    Code::ModelSetting,
                    file,
                    model.name.span,
                    format!("model `{}` has no `layers`", model.name.name),
                )
                .label("layers missing")
                .help("add `layers = pattern(\"…\")` or `layers = [block, …]`"),
            );
            return None;
        };
        let mut specs = self.layer_specs(layers_e, &mut frame)?;
        self.apply_overrides(model, &mut specs, &mut frame);
        let (vocab, d) = (vocab?, d?);
        let table = [Dim::constant(vocab), Dim::constant(d)];
        let vocab_span = settings.get("vocab").map_or(model.name.span, |s| s.1);
        if !self.fits(&table, file, vocab_span, "the embedding table") || self.diags.len() > errors_before {
            return None;
        }

        let b = Dim::symbol("B");
        let t = Dim::symbol("T");
        let ids = self.new_tensor(vec![b.clone(), t.clone()], DType::I64);
        self.trace.ops.push(Op::Input { out: ids.id, name: "ids".into() });
        let normal = InitSpec { name: "normal", args: vec![("std", 0.02), ("mean", 0.0)] };
        let embed = self.skeleton_param("embed_tokens.weight", vec![vocab, d], normal.clone(), Role::Input);
        let at = model.span;
        let mut x = self.skeleton_prim("embedding", vec![Bound::Tensor(embed.clone()), Bound::Tensor(ids)], file, at);
        let emb_mult = model_mups.get("embedding_multiplier").map_or(1.0, |m| m.0);
        x = self.skeleton_prim("mul", vec![Bound::Tensor(x), Bound::Scalar(Some(emb_mult))], file, at);

        self.mup_overrides.push(model_mups.clone());
        let mut consumed: HashSet<String> = HashSet::new();
        let mut layers = Vec::new();
        let mut layer_outputs = Vec::new();
        self.path.push("layers".into());
        for (i, spec) in specs.iter().enumerate() {
            if self.exhausted {
                break;
            }
            let block_name = self.prog.block(spec.def).name.name.clone();
            let what = match spec.letter {
                Some(l) => format!("layer {i} (`{l}` = `{block_name}`) of model `{}`", model.name.name),
                None => format!("layer {i} (`{block_name}`) of model `{}`", model.name.name),
            };
            self.context.push((file, spec.span, format!("in {what}")));
            let ops_before = self.trace.ops.len();
            let y = self.layer(spec, &x, &settings, &mut consumed, i, file);
            self.trace.layers.push(ops_before..self.trace.ops.len());
            self.context.pop();
            let mut summary = layer_summary(&self.trace, ops_before, i, spec.letter, block_name);
            summary.configs = std::mem::take(&mut self.layer_configs);
            summary.multipliers = std::mem::take(&mut self.mup_values);
            layers.push(summary);
            match y {
                Some(y) if y.shape == x.shape => {
                    x = y;
                    layer_outputs.push(x.id);
                }
                Some(y) => {
                    self.report(
                        Diagnostic::new(
                            Code::DimMismatch,
                            file,
                            spec.span,
                            format!(
                                "{what} returns {} but layers must map {} to itself",
                                shape_string(&y.shape),
                                shape_string(&x.shape)
                            ),
                        )
                        .label("this layer"),
                    );
                }
                None => {}
            }
        }
        self.path.pop();
        self.mup_overrides.pop();
        if self.exhausted {
            return None;
        }

        for (name, span) in &setting_spans {
            if !SKELETON_SETTINGS.contains(&name.as_str()) && !consumed.contains(name) && !referenced.contains(name) {
                let known: Vec<String> = specs
                    .iter()
                    .flat_map(|s| configs(self.prog.block(s.def)).into_iter().map(|c| c.0.name.clone()))
                    .collect();
                let mut diag = Diagnostic::new(
                    Code::ModelSetting,
                    file,
                    *span,
                    format!("setting `{name}` is not used by any layer"),
                )
                .label("unused");
                diag = match super::suggest(name, known.iter().map(String::as_str)) {
                    Some(s) => diag.help(format!("did you mean `{s}`?")),
                    None => {
                        diag.help("layers receive settings whose names match their configs; remove it or rename it")
                    }
                };
                self.report(diag);
            }
        }
        for (name, (_, f, span)) in &model_mups {
            if !self.used_mups.contains(name) && !SKELETON_MUPS.contains(&name.as_str()) {
                self.report(
                    Diagnostic::new(
                        Code::UnknownNamedArg,
                        *f,
                        *span,
                        format!("no block in this model has a multiplier named `{name}`"),
                    )
                    .label("unknown multiplier")
                    .help(format!("the model's own multipliers are {}", SKELETON_MUPS.join(" and "))),
                );
            }
        }

        let norm_w =
            self.skeleton_param("final_norm.weight", vec![d], InitSpec { name: "ones", args: vec![] }, Role::Vector);
        let sq = self.skeleton_prim("mul", vec![Bound::Tensor(x.clone()), Bound::Tensor(x.clone())], file, at);
        let ms = self.skeleton_prim(
            "mean",
            vec![Bound::Tensor(sq), Bound::Int(Dim::constant(-1)), Bound::Bool(Some(true))],
            file,
            at,
        );
        let ms = self.skeleton_prim("add", vec![Bound::Tensor(ms), Bound::Scalar(Some(eps))], file, at);
        let r = self.skeleton_prim("rsqrt", vec![Bound::Tensor(ms)], file, at);
        let xn = self.skeleton_prim("mul", vec![Bound::Tensor(x), Bound::Tensor(r)], file, at);
        let xn = self.skeleton_prim("mul", vec![Bound::Tensor(xn), Bound::Tensor(norm_w)], file, at);
        let head =
            if tie { embed } else { self.skeleton_param("lm_head.weight", vec![vocab, d], normal, Role::Output) };
        let logits = self.skeleton_prim(
            "matmul",
            vec![Bound::Tensor(xn), Bound::Tensor(head), Bound::Bool(Some(false)), Bound::Bool(Some(true))],
            file,
            at,
        );
        let head_mult = model_mups.get("lm_head_multiplier").map_or(1.0, |m| m.0);
        let logits = self.skeleton_prim("mul", vec![Bound::Tensor(logits), Bound::Scalar(Some(head_mult))], file, at);
        self.trace.outputs.push(logits.id);

        let total = self.trace.params().try_fold(0u64, |acc, p| acc.checked_add(numel(&p.shape)?));
        if total.is_none_or(|t| t > MAX_PARAMS) {
            let count = total.map_or("more than 2^64".to_string(), |t| t.to_string());
            self.report(
                Diagnostic::new(
                    Code::TooLarge,
                    file,
                    model.name.span,
                    format!(
                        "model `{}` has {count} parameters, more than the {MAX_PARAMS} a model may have",
                        model.name.name
                    ),
                )
                .label("too large to allocate")
                .help("a model may have at most 2^38 parameters (1 TiB as float32)"),
            );
        }
        if self.diags.len() > errors_before {
            return None;
        }
        let param_numel =
            |name: &str| self.trace.params().find(|p| p.name == name).and_then(|p| numel(&p.shape)).unwrap_or(0);
        let summary = ModelSummary {
            name: model.name.name.clone(),
            vocab: vocab as u64,
            d: d as u64,
            embedding_params: param_numel("embed_tokens.weight"),
            final_norm_params: param_numel("final_norm.weight"),
            lm_head_params: param_numel("lm_head.weight"),
            total_params: total.unwrap_or(u64::MAX),
            layers,
            tie_embeddings: tie,
            base_width,
            eps,
            embedding_multiplier: emb_mult,
            lm_head_multiplier: head_mult,
        };
        Some(Expanded { summary, trace: std::mem::take(&mut self.trace), layer_outputs })
    }

    fn positive_setting(
        &mut self,
        settings: &HashMap<String, (Value, Span)>,
        name: &str,
        model: &Model,
        file: FileId,
    ) -> Option<i64> {
        match settings.get(name) {
            Some((Value::Int(v), span)) => match v.as_const() {
                Some(c) if c > 0 => Some(c),
                _ => {
                    self.error(
                        Code::ModelSetting,
                        file,
                        *span,
                        format!("`{name}` must be a positive integer, found {v}"),
                    );
                    None
                }
            },
            Some((Value::Poison, _)) => None,
            Some((v, span)) => {
                let msg = format!("`{name}` must be an integer, found {}", v.kind());
                self.error(Code::ModelSetting, file, *span, msg);
                None
            }
            None => {
                self.report(
                    Diagnostic::new(
                        Code::ModelSetting,
                        file,
                        model.name.span,
                        format!("model `{}` has no `{name}` setting", model.name.name),
                    )
                    .label(format!("`{name}` missing"))
                    .help(format!("add `{name} = …` to the model")),
                );
                None
            }
        }
    }

    fn skeleton_param(&mut self, name: &str, shape: Vec<i64>, init: InitSpec, role: Role) -> Tensor {
        let shape: Vec<Dim> = shape.into_iter().map(Dim::constant).collect();
        let t = self.new_tensor(shape.clone(), DType::F32);
        self.trace.ops.push(Op::Param { out: t.id, param: ParamInfo { name: name.to_string(), shape, init, role } });
        t
    }

    fn skeleton_prim(&mut self, prim: &str, args: Vec<Bound>, file: FileId, span: Span) -> Tensor {
        match self.apply(self.prims.builtin(prim), args, file, span) {
            Value::Tensor(t) => t,
            other => unreachable!("skeleton op {prim} on checked shapes gave {other}"),
        }
    }

    /// The layer specs listed by `layers = …`, one per layer.
    fn layer_specs(&mut self, e: &Expr, frame: &mut Frame) -> Option<Vec<LayerSpec>> {
        let file = frame.file;
        match e.kind.as_ref() {
            ExprKind::Call(c) if c.callee.name == "pattern" => self.pattern_specs(c, frame),
            ExprKind::List(items) => {
                if items.is_empty() {
                    self.error(Code::ModelSetting, file, e.span, "`layers` is empty");
                    return None;
                }
                let specs: Vec<Option<LayerSpec>> = items.iter().map(|i| self.layer_spec(i, None, frame)).collect();
                specs.into_iter().collect()
            }
            _ => {
                self.report(
                    Diagnostic::new(Code::ModelSetting, file, e.span, "`layers` must be a pattern or a list of layer blocks")
                        .label("not a layer stack")
                        .help("write `layers = pattern(\"H{4}\", H = my_layer)` or `layers = [my_layer, other_layer(heads = 4)]`"),
                );
                None
            }
        }
    }

    /// `block` or `block(config = …)`: a layer kind.
    fn layer_spec(&mut self, e: &Expr, letter: Option<char>, frame: &mut Frame) -> Option<LayerSpec> {
        let file = frame.file;
        let (callee, args) = match e.kind.as_ref() {
            ExprKind::Name(n) => (Ident { name: n.clone(), span: e.span }, &[][..]),
            ExprKind::Call(c) => (c.callee.clone(), &c.args[..]),
            _ => {
                self.error(
                    Code::ModelSetting,
                    file,
                    e.span,
                    "a layer must be a block name or a block with named configs",
                );
                return None;
            }
        };
        let def = match self.prog.lookup(frame.module, &callee.name) {
            Some((def, DefKind::Block)) => def,
            Some((_, DefKind::Model)) => {
                self.error(
                    Code::TypeMismatch,
                    file,
                    callee.span,
                    format!("`{}` is a model, not a layer block", callee.name),
                );
                return None;
            }
            None => {
                let candidates: Vec<&str> = self.prog.modules[frame.module].scope.keys().map(String::as_str).collect();
                let mut d = Diagnostic::new(
                    Code::UnknownName,
                    file,
                    callee.span,
                    format!("unknown layer block `{}`", callee.name),
                )
                .label("not defined");
                d = match super::suggest(&callee.name, candidates.into_iter()) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help("define the block or import its module (e.g. `import std.layers`)"),
                };
                self.report(d);
                return None;
            }
        };
        let mut out = Vec::new();
        for a in args {
            match a {
                Arg::Named(n, v) => {
                    let value = self.expr(v, frame);
                    out.push((n.clone(), value, v.span));
                }
                Arg::Positional(p) => {
                    self.report(
                        Diagnostic::new(Code::WrongArity, file, p.span, "layer configs must be given by name")
                            .label("positional argument")
                            .help("write `config_name = value`; the layer's input is supplied by the model"),
                    );
                    return None;
                }
            }
        }
        Some(LayerSpec { def, letter, args: out, span: e.span })
    }

    fn pattern_specs(&mut self, c: &Call, frame: &mut Frame) -> Option<Vec<LayerSpec>> {
        let file = frame.file;
        let mut text = None;
        let mut letters: HashMap<char, LayerSpec> = HashMap::new();
        for a in &c.args {
            match a {
                Arg::Positional(e) if text.is_none() => match e.kind.as_ref() {
                    ExprKind::Str(s) => text = Some((s.clone(), e.span)),
                    _ => {
                        self.error(
                            Code::BadPattern,
                            file,
                            e.span,
                            "the pattern must be a string literal like \"H{4}M\"",
                        );
                        return None;
                    }
                },
                Arg::Positional(e) => {
                    self.report(
                        Diagnostic::new(
                            Code::WrongArity,
                            file,
                            e.span,
                            "`pattern` takes one string and letter bindings",
                        )
                        .label("extra argument")
                        .help("bind letters by name: `pattern(\"HM\", H = hybrid_layer, M = mamba_layer)`"),
                    );
                    return None;
                }
                Arg::Named(n, e) => {
                    let mut chars = n.name.chars();
                    let (Some(letter), None) = (chars.next(), chars.next()) else {
                        self.report(
                            Diagnostic::new(
                                Code::BadPatternLetter,
                                file,
                                n.span,
                                format!("`{}` is not a single pattern letter", n.name),
                            )
                            .label("letters are one character")
                            .help("use a one-letter name such as `H` or `A`"),
                        );
                        return None;
                    };
                    if letters.contains_key(&letter) {
                        self.error(Code::DuplicateArg, file, n.span, format!("letter `{letter}` is bound twice"));
                        return None;
                    }
                    letters.insert(letter, self.layer_spec(e, Some(letter), frame)?);
                }
            }
        }
        let Some((text, span)) = text else {
            self.error(Code::MissingArg, file, c.span, "`pattern` needs a pattern string");
            return None;
        };
        // Byte offsets inside the literal map to the source only when it has no escapes.
        let src_offset = |i: usize| {
            if text.contains('\\') {
                None
            } else {
                Some(span.start + 1 + i)
            }
        };
        let layers = match pattern::expand(&text) {
            Ok(l) => l,
            Err(e) => {
                let at = match (src_offset(e.start), src_offset(e.end)) {
                    (Some(s), Some(en)) => Span::new(s, en.max(s + 1)),
                    _ => span,
                };
                self.report(
                    Diagnostic::new(Code::BadPattern, file, at, format!("bad layer pattern: {}", e.message))
                        .label("here")
                        .help("patterns are letters with `{n}` repeats and `( … )` groups, e.g. \"H{2}(M*){3}\""),
                );
                return None;
            }
        };
        let mut specs = Vec::with_capacity(layers.len());
        let mut bad = HashSet::new();
        for (letter, offset) in layers {
            if let std::collections::hash_map::Entry::Vacant(slot) = letters.entry(letter) {
                let default = DEFAULT_LETTERS.iter().find(|(l, _)| *l == letter).map(|(_, b)| *b);
                let found = default.and_then(|b| self.prog.lookup(frame.module, b));
                match found {
                    Some((def, DefKind::Block)) => {
                        slot.insert(LayerSpec { def, letter: Some(letter), args: Vec::new(), span });
                    }
                    _ => {
                        if bad.insert(letter) {
                            let at = src_offset(offset).map_or(span, |s| Span::new(s, s + letter.len_utf8()));
                            let help = match default {
                                Some(b) => format!("`{letter}` means `{b}` by default, which is not in scope: `import std.layers`, or bind `{letter} = …`"),
                                None => format!("bind it: `pattern(\"…\", {letter} = some_layer_block)`"),
                            };
                            self.report(
                                Diagnostic::new(
                                    Code::BadPatternLetter,
                                    file,
                                    at,
                                    format!("pattern letter `{letter}` is not bound to a layer block"),
                                )
                                .label("unknown letter")
                                .help(help),
                            );
                        }
                        continue;
                    }
                }
            }
            specs.push(letters[&letter].clone());
        }
        bad.is_empty().then_some(specs)
    }

    fn apply_overrides(&mut self, model: &Model, specs: &mut [LayerSpec], frame: &mut Frame) {
        let file = frame.file;
        for entry in &model.entries {
            let ModelEntryKind::Override { first, last, range_span, args } = &entry.kind else {
                continue;
            };
            let (lo, hi) = (*first as usize, last.map_or(*first as usize + 1, |l| l as usize));
            if lo >= hi || hi > specs.len() {
                self.report(
                    Diagnostic::new(
                        Code::OverrideRange,
                        file,
                        *range_span,
                        format!(
                            "layer range {} is outside the {} layers of this model",
                            if last.is_some() { format!("{lo}..{hi}") } else { lo.to_string() },
                            specs.len()
                        ),
                    )
                    .label("out of range")
                    .help(format!("layers are numbered 0..{}; ranges are half-open", specs.len())),
                );
                continue;
            }
            let values: Vec<(Ident, Value, Span)> =
                args.iter().map(|(n, e)| (n.clone(), self.expr(e, frame), e.span)).collect();
            for spec in &mut specs[lo..hi] {
                for (n, v, s) in &values {
                    spec.args.retain(|(m, _, _)| m.name != n.name);
                    spec.args.push((n.clone(), v.clone(), *s));
                }
            }
        }
    }

    /// Builds one layer on `x`; `consumed` collects the model settings it used.
    fn layer(
        &mut self,
        spec: &LayerSpec,
        x: &Tensor,
        settings: &HashMap<String, (Value, Span)>,
        consumed: &mut HashSet<String>,
        index: usize,
        file: FileId,
    ) -> Option<Tensor> {
        let block = self.prog.block(spec.def);
        let config_names: HashSet<&str> = configs(block).iter().map(|c| c.0.name.as_str()).collect();
        let mut named = HashMap::new();
        let mut layer_mups = HashMap::new();
        for (n, v, s) in &spec.args {
            if config_names.contains(n.name.as_str()) {
                named.insert(n.name.clone(), (v.clone(), *s));
            } else {
                match v.as_f64() {
                    Some(x) => {
                        layer_mups.insert(n.name.clone(), (x, file, n.span));
                    }
                    None => {
                        self.report(
                            Diagnostic::new(
                                Code::UnknownNamedArg,
                                file,
                                n.span,
                                format!("layer block `{}` has no config named `{}`", block.name.name, n.name),
                            )
                            .label("unknown config")
                            .help(format!(
                                "its configs are: {}",
                                config_names.iter().copied().collect::<Vec<_>>().join(", ")
                            )),
                        );
                        return None;
                    }
                }
            }
        }
        for c in &config_names {
            if !named.contains_key(*c) {
                if let Some(v) = settings.get(*c) {
                    named.insert(c.to_string(), v.clone());
                    consumed.insert(c.to_string());
                }
            }
        }
        self.mup_overrides.push(layer_mups.clone());
        let before: HashSet<String> = std::mem::take(&mut self.used_mups);
        let given =
            Given { inputs: vec![Some((Value::Tensor(x.clone()), spec.span))], named, label: Some(index.to_string()) };
        let y = self.instantiate(spec.def, given, file, spec.span);
        let used = std::mem::replace(&mut self.used_mups, before);
        self.used_mups.extend(used.iter().cloned());
        self.mup_overrides.pop();
        for (name, (_, f, span)) in &layer_mups {
            if !used.contains(name) {
                self.report(
                    Diagnostic::new(
                        Code::UnknownNamedArg,
                        *f,
                        *span,
                        format!("layer block `{}` has no config or multiplier named `{name}`", block.name.name),
                    )
                    .label("unknown")
                    .help(format!("its configs are: {}", config_names.iter().copied().collect::<Vec<_>>().join(", "))),
                );
            }
        }
        match y {
            Value::Tensor(t) => Some(t),
            Value::Poison => None,
            other => {
                self.error(
                    Code::TypeMismatch,
                    file,
                    spec.span,
                    format!("a layer must return a tensor, found {}", other.kind()),
                );
                None
            }
        }
    }
}

/// Parameter count and head counts of the ops a layer added to the trace, each primitive
/// counting the heads it mixes.
fn layer_summary(trace: &Trace, from: usize, index: usize, letter: Option<char>, block: String) -> LayerSummary {
    let mut s = LayerSummary {
        index,
        letter,
        block,
        attention_heads: 0,
        ssm_heads: 0,
        params: 0,
        configs: BTreeMap::new(),
        multipliers: BTreeMap::new(),
    };
    for op in &trace.ops[from..] {
        match op {
            // Saturates: a count past 2^64 is refused by the checker, never wrapped.
            Op::Param { param, .. } => s.params = s.params.saturating_add(numel(&param.shape).unwrap_or(u64::MAX)),
            Op::Prim { prim, outs, .. } => match prim.heads {
                Some(Heads::Attention(count)) => s.attention_heads += count(&trace.tensors[outs[0]].shape),
                Some(Heads::Ssm(count)) => s.ssm_heads += count(&trace.tensors[outs[0]].shape),
                None => {}
            },
            _ => {}
        }
    }
    s
}

/// Names an expression mentions (to tell which settings other settings use).
fn names_in(e: &Expr, out: &mut HashSet<String>) {
    match e.kind.as_ref() {
        ExprKind::Name(n) => {
            out.insert(n.clone());
        }
        ExprKind::List(items) => items.iter().for_each(|i| names_in(i, out)),
        ExprKind::Paren(i) | ExprKind::Unary(_, i) => names_in(i, out),
        ExprKind::Binary(_, a, b) => {
            names_in(a, out);
            names_in(b, out);
        }
        ExprKind::Call(c) => c.args.iter().for_each(|a| match a {
            Arg::Positional(e) | Arg::Named(_, e) => names_in(e, out),
        }),
        ExprKind::Index(b, items) => {
            names_in(b, out);
            for it in items {
                match it {
                    IndexItem::At(e) => names_in(e, out),
                    IndexItem::Slice(lo, hi, _) => lo.iter().chain(hi).for_each(|e| names_in(e, out)),
                    IndexItem::Ellipsis(_) => {}
                }
            }
        }
        ExprKind::If(c, t, o) => {
            names_in(c, out);
            names_in(&t.value, out);
            names_in(&o.value, out);
        }
        ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Str(_) => {}
    }
}
