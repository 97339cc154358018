//! Hugging Face Falcon-H1 checkpoints ⇄ hyb models.
//!
//! `import` reads `config.json` + `model.safetensors`, writes a `.hyb` model (every setting
//! explicit) and a safetensors file of hyb-named weights. `export` does the reverse so that
//! transformers' `FalconH1ForCausalLM` loads the result. A config field that would change
//! the model in a way hyb does not express is an error naming the field.

use crate::weights::{self, Weight, Weights};
use hyb_compiler::reference::Tensor;
use hyb_dsl::expand::model::ModelSummary;
use hyb_dsl::value::Value;
use serde_json::{json, Map, Value as Json};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config.json: field `{field}`: {reason}")]
    Field { field: String, reason: String },
    #[error("config.json: unsupported field `{field}` = {value}; hyb cannot express it, so importing would give a different model")]
    Unsupported { field: String, value: String },
    #[error("weights: {0}")]
    Weights(String),
    #[error("cannot export: {0}")]
    Export(String),
    #[error("`{name}` cannot name the model: {reason}; choose a name with --name")]
    Name { name: String, reason: String },
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error(transparent)]
    Io(#[from] weights::WeightsError),
}

/// The Falcon-H1 configuration, as hyb's `falcon_h1_layer` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct FalconConfig {
    pub vocab: usize,
    pub d: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub ssm_heads: usize,
    pub ssm_head_dim: usize,
    pub d_state: usize,
    pub groups: usize,
    pub d_conv: usize,
    pub chunk: usize,
    pub rms_norm: bool,
    pub norm_before_gate: bool,
    pub conv_bias: bool,
    pub proj_bias: bool,
    pub attention_bias: bool,
    pub projectors_bias: bool,
    pub mlp_bias: bool,
    pub tie_embeddings: bool,
    pub eps: f64,
    pub rope_theta: f64,
    /// `time_step_limit`, when it is not the no-op `(0, ∞)`.
    pub dt_limit: Option<(f64, f64)>,
    pub embedding_multiplier: f64,
    pub lm_head_multiplier: f64,
    pub key_multiplier: f64,
    pub attention_in_multiplier: f64,
    pub attention_out_multiplier: f64,
    pub ssm_in_multiplier: f64,
    pub ssm_out_multiplier: f64,
    pub ssm_multipliers: [f64; 5],
    pub mlp_multipliers: [f64; 2],
}

/// Fields that describe the checkpoint but not the function it computes.
const INFORMATIONAL: &[&str] = &[
    "architectures",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "use_cache",
    "num_logits_to_keep",
    "initializer_range",
    "max_position_embeddings",
    "attention_dropout",
    "mamba_expand",
    "mlp_expansion_factor",
    "_name_or_path",
];

/// Fields that transformers' `FalconH1Config` gives a default when they are `null`. Any
/// other `null` is an error: transformers would keep `None` and fail (or compute something
/// else) when it builds the model.
const NULL_MEANS_DEFAULT: &[&str] = &[
    "num_key_value_heads",
    "head_dim",
    "mamba_d_ssm",
    "time_step_limit",
    "mlp_multipliers",
    "ssm_multipliers",
    "rope_parameters",
    "rope_scaling",
    "attn_layer_indices",
];

/// Reads a number that JSON may spell as `{"__float__": "Infinity"}` (transformers' encoding).
fn number(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64(),
        Json::Object(o) => match o.get("__float__")?.as_str()? {
            "Infinity" | "inf" => Some(f64::INFINITY),
            "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
            s => s.parse().ok(),
        },
        _ => None,
    }
}

struct Fields<'a> {
    map: &'a Map<String, Json>,
    used: std::collections::HashSet<&'static str>,
}

impl<'a> Fields<'a> {
    fn field(name: &str, reason: impl Into<String>) -> HfError {
        HfError::Field { field: name.to_string(), reason: reason.into() }
    }
    fn get(&mut self, name: &'static str) -> Result<Option<&'a Json>, HfError> {
        self.used.insert(name);
        match self.map.get(name) {
            Some(Json::Null) if NULL_MEANS_DEFAULT.contains(&name) => Ok(None),
            Some(Json::Null) => {
                Err(Self::field(name, "is null; give its value, or leave the field out for the default"))
            }
            v => Ok(v),
        }
    }
    fn usize(&mut self, name: &'static str, default: Option<usize>) -> Result<usize, HfError> {
        match self.get(name)? {
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| Self::field(name, format!("expected a positive integer, found {v}"))),
            None => default.ok_or_else(|| Self::field(name, "missing")),
        }
    }
    fn float(&mut self, name: &'static str, default: f64) -> Result<f64, HfError> {
        match self.get(name)? {
            Some(v) => number(v)
                .filter(|x| x.is_finite())
                .ok_or_else(|| Self::field(name, format!("expected a finite number, found {v}"))),
            None => Ok(default),
        }
    }
    fn boolean(&mut self, name: &'static str, default: bool) -> Result<bool, HfError> {
        match self.get(name)? {
            Some(v) => v.as_bool().ok_or_else(|| Self::field(name, format!("expected true or false, found {v}"))),
            None => Ok(default),
        }
    }
    fn floats<const N: usize>(&mut self, name: &'static str) -> Result<[f64; N], HfError> {
        match self.get(name)? {
            None => Ok([1.0; N]),
            Some(v) => {
                let items: Vec<f64> = v
                    .as_array()
                    .ok_or_else(|| Self::field(name, format!("expected a list of {N} numbers, found {v}")))?
                    .iter()
                    .map(number)
                    .collect::<Option<_>>()
                    .ok_or_else(|| Self::field(name, "expected numbers"))?;
                items
                    .try_into()
                    .map_err(|v: Vec<f64>| Self::field(name, format!("expected {N} values, found {}", v.len())))
            }
        }
    }
}

impl FalconConfig {
    pub fn from_json(text: &str) -> Result<FalconConfig, HfError> {
        let root: Json =
            serde_json::from_str(text).map_err(|e| HfError::Field { field: "<file>".into(), reason: e.to_string() })?;
        let map = root.as_object().ok_or_else(|| Fields::field("<file>", "expected a JSON object"))?;
        let mut f = Fields { map, used: Default::default() };
        if let Some(t) = f.get("model_type")? {
            if t != "falcon_h1" {
                return Err(HfError::Unsupported { field: "model_type".into(), value: t.to_string() });
            }
        }
        let d = f.usize("hidden_size", None)?;
        let heads = f.usize("num_attention_heads", None)?;
        let ssm_heads = f.usize("mamba_n_heads", None)?;
        let ssm_head_dim = f.usize("mamba_d_head", None)?;
        let d_ssm = f.usize("mamba_d_ssm", Some(ssm_heads * ssm_head_dim))?;
        if d_ssm != ssm_heads * ssm_head_dim {
            return Err(Fields::field(
                "mamba_d_ssm",
                format!("{d_ssm} is not mamba_n_heads × mamba_d_head = {}", ssm_heads * ssm_head_dim),
            ));
        }
        let rope_theta = match (f.get("rope_parameters")?, f.get("rope_scaling")?) {
            (Some(p), _) => {
                if let Some(t) = p.get("rope_type").filter(|t| *t != "default") {
                    return Err(HfError::Unsupported {
                        field: "rope_parameters.rope_type".into(),
                        value: t.to_string(),
                    });
                }
                p.get("rope_theta")
                    .and_then(number)
                    .ok_or_else(|| Fields::field("rope_parameters", "missing rope_theta"))?
            }
            (None, Some(s)) => return Err(HfError::Unsupported { field: "rope_scaling".into(), value: s.to_string() }),
            (None, None) => f.float("rope_theta", 10000.0)?,
        };
        let dt_limit = match f.get("time_step_limit")? {
            None => None,
            Some(v) => {
                let pair: Vec<f64> = v.as_array().map(|a| a.iter().filter_map(number).collect()).unwrap_or_default();
                match pair.as_slice() {
                    [lo, hi] if *lo <= 0.0 && hi.is_infinite() => None,
                    [lo, hi] if lo < hi && hi.is_finite() => Some((*lo, *hi)),
                    _ => return Err(Fields::field("time_step_limit", format!("expected [low, high], found {v}"))),
                }
            }
        };
        for (name, ok) in [("hidden_act", "silu")] {
            if let Some(v) = f.get(name)?.filter(|v| *v != ok) {
                return Err(HfError::Unsupported { field: name.into(), value: v.to_string() });
            }
        }
        if let Some(v) = f.get("attn_layer_indices")? {
            return Err(HfError::Unsupported { field: "attn_layer_indices".into(), value: v.to_string() });
        }
        if let Some(v) = f.get("mamba_use_mlp")?.filter(|v| **v != Json::Bool(true)) {
            return Err(HfError::Unsupported { field: "mamba_use_mlp".into(), value: v.to_string() });
        }
        let cfg = FalconConfig {
            vocab: f.usize("vocab_size", None)?,
            d,
            layers: f.usize("num_hidden_layers", None)?,
            heads,
            kv_heads: f.usize("num_key_value_heads", Some(heads))?,
            head_dim: f.usize("head_dim", Some(d / heads))?,
            d_ff: f.usize("intermediate_size", None)?,
            ssm_heads,
            ssm_head_dim,
            d_state: f.usize("mamba_d_state", None)?,
            groups: f.usize("mamba_n_groups", Some(1))?,
            d_conv: f.usize("mamba_d_conv", Some(4))?,
            chunk: f.usize("mamba_chunk_size", Some(256))?,
            rms_norm: f.boolean("mamba_rms_norm", false)?,
            norm_before_gate: f.boolean("mamba_norm_before_gate", true)?,
            conv_bias: f.boolean("mamba_conv_bias", true)?,
            proj_bias: f.boolean("mamba_proj_bias", false)?,
            attention_bias: f.boolean("attention_bias", false)?,
            projectors_bias: f.boolean("projectors_bias", false)?,
            mlp_bias: f.boolean("mlp_bias", false)?,
            tie_embeddings: f.boolean("tie_word_embeddings", false)?,
            eps: f.float("rms_norm_eps", 1e-5)?,
            rope_theta,
            dt_limit,
            embedding_multiplier: f.float("embedding_multiplier", 1.0)?,
            lm_head_multiplier: f.float("lm_head_multiplier", 1.0)?,
            key_multiplier: f.float("key_multiplier", 1.0)?,
            attention_in_multiplier: f.float("attention_in_multiplier", 1.0)?,
            attention_out_multiplier: f.float("attention_out_multiplier", 1.0)?,
            ssm_in_multiplier: f.float("ssm_in_multiplier", 1.0)?,
            ssm_out_multiplier: f.float("ssm_out_multiplier", 1.0)?,
            ssm_multipliers: f.floats("ssm_multipliers")?,
            mlp_multipliers: f.floats("mlp_multipliers")?,
        };
        if !cfg.heads.is_multiple_of(cfg.kv_heads) {
            return Err(Fields::field(
                "num_key_value_heads",
                format!("{} query heads cannot share {} key/value heads", cfg.heads, cfg.kv_heads),
            ));
        }
        if !cfg.ssm_heads.is_multiple_of(cfg.groups) {
            return Err(Fields::field(
                "mamba_n_groups",
                format!("{} Mamba heads cannot be split into {} groups", cfg.ssm_heads, cfg.groups),
            ));
        }
        for key in map.keys() {
            if !f.used.contains(key.as_str()) && !INFORMATIONAL.contains(&key.as_str()) && key != "tie_word_embeddings"
            {
                return Err(HfError::Unsupported { field: key.clone(), value: map[key].to_string() });
            }
        }
        Ok(cfg)
    }

    /// The model as `.hyb` source: every setting explicit, so that the file does not depend
    /// on the standard library's defaults.
    pub fn to_hyb(&self, name: &str, source: &str) -> String {
        let b = |x: bool| if x { "true" } else { "false" };
        let f = |x: f64| format!("{x:?}");
        let mut s = format!("import std.layers\n\n/// Imported from {source}.\nmodel {name} {{\n");
        let mut set = |k: &str, v: String| s.push_str(&format!("    {k} = {v}\n"));
        set("vocab", self.vocab.to_string());
        set("d", self.d.to_string());
        set("layers", format!("pattern(\"H{{{}}}\", H = falcon_h1_layer)", self.layers));
        set("eps", f(self.eps));
        set("tie_embeddings", b(self.tie_embeddings).into());
        set("heads", self.heads.to_string());
        set("kv_heads", self.kv_heads.to_string());
        set("head_dim", self.head_dim.to_string());
        set("rope_theta", f(self.rope_theta));
        set("ssm_heads", self.ssm_heads.to_string());
        set("ssm_head_dim", self.ssm_head_dim.to_string());
        set("d_state", self.d_state.to_string());
        set("groups", self.groups.to_string());
        set("d_conv", self.d_conv.to_string());
        set("chunk", self.chunk.to_string());
        set("d_ff", self.d_ff.to_string());
        set("rms_norm", b(self.rms_norm).into());
        set("norm_before_gate", b(self.norm_before_gate).into());
        set("conv_bias", b(self.conv_bias).into());
        set("proj_bias", b(self.proj_bias).into());
        set("attention_bias", b(self.attention_bias).into());
        set("projectors_bias", b(self.projectors_bias).into());
        set("mlp_bias", b(self.mlp_bias).into());
        if let Some((lo, hi)) = self.dt_limit {
            set("dt_clamp", "true".into());
            set("dt_min", f(lo));
            set("dt_max", f(hi));
        }
        let m = &self.ssm_multipliers;
        s.push_str(&format!(
            "    mup embedding_multiplier = {}, lm_head_multiplier = {}\n    mup key_multiplier = {}\n    mup attention_in_multiplier = {}, attention_out_multiplier = {}\n    mup ssm_in_multiplier = {}, ssm_out_multiplier = {}\n    mup z_multiplier = {}, x_multiplier = {}, b_multiplier = {}\n    mup c_multiplier = {}, dt_multiplier = {}\n    mup gate_multiplier = {}, down_multiplier = {}\n}}\n",
            f(self.embedding_multiplier),
            f(self.lm_head_multiplier),
            f(self.key_multiplier),
            f(self.attention_in_multiplier),
            f(self.attention_out_multiplier),
            f(self.ssm_in_multiplier),
            f(self.ssm_out_multiplier),
            f(m[0]),
            f(m[1]),
            f(m[2]),
            f(m[3]),
            f(m[4]),
            f(self.mlp_multipliers[0]),
            f(self.mlp_multipliers[1]),
        ));
        s
    }

    /// The config of a checked hyb model whose layers are all `falcon_h1_layer` with equal
    /// settings (what transformers can represent).
    pub fn from_summary(s: &ModelSummary) -> Result<FalconConfig, HfError> {
        let first = s.layers.first().ok_or_else(|| HfError::Export("the model has no layers".into()))?;
        for l in &s.layers {
            if l.block != "falcon_h1_layer" {
                return Err(HfError::Export(format!(
                    "layer {} is `{}`; Falcon-H1 checkpoints hold only falcon_h1_layer layers",
                    l.index, l.block
                )));
            }
            if l.configs != first.configs || l.multipliers != first.multipliers {
                return Err(HfError::Export(format!(
                    "layer {} is configured differently from layer 0; Falcon-H1 checkpoints need identical layers",
                    l.index
                )));
            }
        }
        let c = &first.configs;
        let int = |k: &str| match c.get(k) {
            Some(Value::Int(d)) => {
                d.as_const().map(|v| v as usize).ok_or_else(|| HfError::Export(format!("`{k}` is not known")))
            }
            _ => Err(HfError::Export(format!("`{k}` is not an int config"))),
        };
        let boolean = |k: &str| matches!(c.get(k), Some(Value::Bool(Some(true))));
        let float = |k: &str| {
            c.get(k).and_then(Value::as_f64).ok_or_else(|| HfError::Export(format!("`{k}` is not a known number")))
        };
        let m = |k: &str| first.multipliers.get(k).copied().unwrap_or(1.0);
        Ok(FalconConfig {
            vocab: s.vocab as usize,
            d: s.d as usize,
            layers: s.layers.len(),
            heads: int("heads")?,
            kv_heads: int("kv_heads")?,
            head_dim: int("head_dim")?,
            d_ff: int("d_ff")?,
            ssm_heads: int("ssm_heads")?,
            ssm_head_dim: int("ssm_head_dim")?,
            d_state: int("d_state")?,
            groups: int("groups")?,
            d_conv: int("d_conv")?,
            chunk: int("chunk")?,
            rms_norm: boolean("rms_norm"),
            norm_before_gate: boolean("norm_before_gate"),
            conv_bias: boolean("conv_bias"),
            proj_bias: boolean("proj_bias"),
            attention_bias: boolean("attention_bias"),
            projectors_bias: boolean("projectors_bias"),
            mlp_bias: boolean("mlp_bias"),
            tie_embeddings: s.tie_embeddings,
            eps: s.eps,
            rope_theta: float("rope_theta")?,
            dt_limit: if boolean("dt_clamp") { Some((float("dt_min")?, float("dt_max")?)) } else { None },
            embedding_multiplier: s.embedding_multiplier,
            lm_head_multiplier: s.lm_head_multiplier,
            key_multiplier: m("key_multiplier"),
            attention_in_multiplier: m("attention_in_multiplier"),
            attention_out_multiplier: m("attention_out_multiplier"),
            ssm_in_multiplier: m("ssm_in_multiplier"),
            ssm_out_multiplier: m("ssm_out_multiplier"),
            ssm_multipliers: [
                m("z_multiplier"),
                m("x_multiplier"),
                m("b_multiplier"),
                m("c_multiplier"),
                m("dt_multiplier"),
            ],
            mlp_multipliers: [m("gate_multiplier"), m("down_multiplier")],
        })
    }

    /// `config.json` for transformers' `FalconH1Config`.
    pub fn to_json(&self) -> Json {
        let limit = match self.dt_limit {
            Some((lo, hi)) => json!([lo, hi]),
            None => json!([0.0, {"__float__": "Infinity"}]),
        };
        json!({
            "architectures": ["FalconH1ForCausalLM"],
            "model_type": "falcon_h1",
            "vocab_size": self.vocab,
            "hidden_size": self.d,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.d_ff,
            "hidden_act": "silu",
            "mamba_d_ssm": self.ssm_heads * self.ssm_head_dim,
            "mamba_n_heads": self.ssm_heads,
            "mamba_d_head": self.ssm_head_dim,
            "mamba_d_state": self.d_state,
            "mamba_n_groups": self.groups,
            "mamba_d_conv": self.d_conv,
            "mamba_chunk_size": self.chunk,
            "mamba_rms_norm": self.rms_norm,
            "mamba_norm_before_gate": self.norm_before_gate,
            "mamba_conv_bias": self.conv_bias,
            "mamba_proj_bias": self.proj_bias,
            "attention_bias": self.attention_bias,
            "projectors_bias": self.projectors_bias,
            "mlp_bias": self.mlp_bias,
            "tie_word_embeddings": self.tie_embeddings,
            "rms_norm_eps": self.eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "time_step_limit": limit,
            "embedding_multiplier": self.embedding_multiplier,
            "lm_head_multiplier": self.lm_head_multiplier,
            "key_multiplier": self.key_multiplier,
            "attention_in_multiplier": self.attention_in_multiplier,
            "attention_out_multiplier": self.attention_out_multiplier,
            "ssm_in_multiplier": self.ssm_in_multiplier,
            "ssm_out_multiplier": self.ssm_out_multiplier,
            "ssm_multipliers": self.ssm_multipliers,
            "mlp_multipliers": self.mlp_multipliers,
        })
    }
}

/// One weight's name in both worlds; `conv` marks the conv weight, stored `[C, 1, K]` by
/// PyTorch and `[C, K]` by hyb.
struct Mapping {
    hf: String,
    hyb: String,
    conv: bool,
}

fn mappings(cfg: &FalconConfig) -> Vec<Mapping> {
    let mut m = Vec::new();
    let mut add = |hf: String, hyb: String| m.push(Mapping { hf, hyb, conv: false });
    add("model.embed_tokens.weight".into(), "embed_tokens.weight".into());
    add("model.final_layernorm.weight".into(), "final_norm.weight".into());
    if !cfg.tie_embeddings {
        add("lm_head.weight".into(), "lm_head.weight".into());
    }
    for i in 0..cfg.layers {
        let (h, y) = (format!("model.layers.{i}"), format!("layers.{i}"));
        let mut layer = |hf: &str, hyb: &str| add(format!("{h}.{hf}"), format!("{y}.{hyb}"));
        layer("input_layernorm.weight", "input_layernorm.weight");
        layer("pre_ff_layernorm.weight", "pre_ff_layernorm.weight");
        for p in ["q_proj", "k_proj", "v_proj"] {
            layer(&format!("self_attn.{p}.weight"), &format!("self_attn.{p}.weight"));
            if cfg.attention_bias {
                layer(&format!("self_attn.{p}.bias"), &format!("self_attn.{p}.bias"));
            }
        }
        if cfg.attention_bias {
            layer("self_attn.o_proj.bias", "attention_out_bias");
        }
        if cfg.projectors_bias {
            layer("mamba.out_proj.bias", "ssm_out_bias");
        }
        layer("mamba.in_proj.weight", "mamba.in_proj.weight");
        if cfg.proj_bias {
            layer("mamba.in_proj.bias", "mamba.in_proj.bias");
        }
        if cfg.conv_bias {
            layer("mamba.conv1d.bias", "mamba.conv1d.bias");
        }
        for p in ["A_log", "D", "dt_bias"] {
            layer(&format!("mamba.{p}"), &format!("mamba.{p}"));
        }
        if cfg.rms_norm {
            layer("mamba.norm.weight", "mamba.norm.weight");
        }
        for p in ["gate_proj", "up_proj", "down_proj"] {
            layer(&format!("feed_forward.{p}.weight"), &format!("feed_forward.{p}.weight"));
            if cfg.mlp_bias {
                layer(&format!("feed_forward.{p}.bias"), &format!("feed_forward.{p}.bias"));
            }
        }
    }
    for i in 0..cfg.layers {
        m.push(Mapping {
            hf: format!("model.layers.{i}.mamba.conv1d.weight"),
            hyb: format!("layers.{i}.mamba.conv1d.weight"),
            conv: true,
        });
    }
    m
}

/// The shared output projection: hyb's `out_proj` is `[o_proj | mamba.out_proj]` side by side.
fn out_proj_names(i: usize) -> (String, String, String) {
    (
        format!("model.layers.{i}.self_attn.o_proj.weight"),
        format!("model.layers.{i}.mamba.out_proj.weight"),
        format!("layers.{i}.out_proj.weight"),
    )
}

fn take(w: &mut Weights, name: &str) -> Result<Weight, HfError> {
    w.remove(name).ok_or_else(|| HfError::Weights(format!("missing tensor `{name}`")))
}

/// Renames HF weights to hyb weights; every HF tensor must be used.
pub fn weights_from_hf(cfg: &FalconConfig, mut hf: Weights) -> Result<Weights, HfError> {
    if cfg.tie_embeddings {
        hf.remove("lm_head.weight");
    }
    let mut out = Weights::new();
    for m in mappings(cfg) {
        let mut w = take(&mut hf, &m.hf)?;
        if m.conv {
            let s = &w.tensor.shape;
            if s.len() != 3 || s[1] != 1 {
                return Err(HfError::Weights(format!("`{}` has shape {s:?}, expected [channels, 1, kernel]", m.hf)));
            }
            w.tensor.shape = vec![s[0], s[2]];
        }
        out.insert(m.hyb, w);
    }
    for i in 0..cfg.layers {
        let (o, mo, y) = out_proj_names(i);
        let (a, b) = (take(&mut hf, &o)?, take(&mut hf, &mo)?);
        if a.tensor.shape.len() != 2
            || b.tensor.shape.len() != 2
            || a.tensor.shape[0] != b.tensor.shape[0]
            || a.storage != b.storage
        {
            return Err(HfError::Weights(format!(
                "`{o}` {:?} and `{mo}` {:?} cannot be joined",
                a.tensor.shape, b.tensor.shape
            )));
        }
        let (rows, ca, cb) = (a.tensor.shape[0], a.tensor.shape[1], b.tensor.shape[1]);
        let mut data = Vec::with_capacity(rows * (ca + cb));
        for r in 0..rows {
            data.extend_from_slice(&a.tensor.data[r * ca..(r + 1) * ca]);
            data.extend_from_slice(&b.tensor.data[r * cb..(r + 1) * cb]);
        }
        out.insert(y, Weight { tensor: Tensor::new(vec![rows, ca + cb], data), storage: a.storage });
    }
    if let Some(extra) = hf.keys().next() {
        return Err(HfError::Weights(format!("tensor `{extra}` has no place in a Falcon-H1 model with this config")));
    }
    Ok(out)
}

/// Renames hyb weights back to HF names (the inverse of [`weights_from_hf`]).
pub fn weights_to_hf(cfg: &FalconConfig, mut ours: Weights) -> Result<Weights, HfError> {
    let mut out = Weights::new();
    for m in mappings(cfg) {
        let mut w = take(&mut ours, &m.hyb)?;
        if m.conv {
            let s = w.tensor.shape.clone();
            w.tensor.shape = vec![s[0], 1, s[1]];
        }
        out.insert(m.hf, w);
    }
    let attn_width = cfg.heads * cfg.head_dim;
    for i in 0..cfg.layers {
        let (o, mo, y) = out_proj_names(i);
        let w = take(&mut ours, &y)?;
        let (rows, cols) = (w.tensor.shape[0], w.tensor.shape[1]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for r in 0..rows {
            a.extend_from_slice(&w.tensor.data[r * cols..r * cols + attn_width]);
            b.extend_from_slice(&w.tensor.data[r * cols + attn_width..(r + 1) * cols]);
        }
        out.insert(o, Weight { tensor: Tensor::new(vec![rows, attn_width], a), storage: w.storage });
        out.insert(mo, Weight { tensor: Tensor::new(vec![rows, cols - attn_width], b), storage: w.storage });
    }
    if let Some(extra) = ours.keys().next() {
        return Err(HfError::Weights(format!("weight `{extra}` is not part of a Falcon-H1 checkpoint")));
    }
    Ok(out)
}

/// Files of a checkpoint folder that `hyb import` copies as they are, for generation.
pub const GENERATION_FILES: &[&str] = &["tokenizer.json", "generation_config.json"];

/// `hyb import`: writes `<out>/<name>.hyb` and `<out>/<name>.safetensors` (and copies
/// [`GENERATION_FILES`] that the folder has). Everything is
/// read and checked first; then both files are written as a set (see
/// [`crate::atomic::write_all`]), the model last, so that a failure leaves the folder as it
/// was.
pub fn import(hf_dir: &Path, out_dir: &Path, name: &str) -> Result<FalconConfig, HfError> {
    check_name(name)?;
    let config_path = hf_dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| HfError::Read { path: config_path.display().to_string(), reason: e.to_string() })?;
    let cfg = FalconConfig::from_json(&text)?;
    let hf = load_checkpoint(hf_dir)?;
    check_size(&cfg, &hf)?;
    let ours = weights_from_hf(&cfg, hf)?;
    let hyb = cfg.to_hyb(name, &config_path.display().to_string());
    check_shapes(&format!("{name}.hyb"), &hyb, &ours)?;
    std::fs::create_dir_all(out_dir).map_err(|error| HfError::Write { path: out_dir.display().to_string(), error })?;
    let mut files = vec![(out_dir.join(format!("{name}.safetensors")), weights::to_bytes(&ours, &Default::default()))];
    // What `hyb generate` reads beside the model: the tokenizer and the end-of-sequence ids.
    for extra in GENERATION_FILES {
        let from = hf_dir.join(extra);
        if from.exists() {
            let bytes = std::fs::read(&from)
                .map_err(|e| HfError::Read { path: from.display().to_string(), reason: e.to_string() })?;
            files.push((out_dir.join(extra), bytes));
        }
    }
    files.push((out_dir.join(format!("{name}.hyb")), hyb.into_bytes()));
    crate::atomic::write_all(&files)
        .map_err(|(path, error)| HfError::Write { path: path.display().to_string(), error })?;
    Ok(cfg)
}

/// A model name is a plain identifier: it becomes the `model` definition's name and the
/// stem of both output files, so it can never reach outside the output folder.
pub fn check_name(name: &str) -> Result<(), HfError> {
    let fail = |reason: &str| Err(HfError::Name { name: name.to_string(), reason: reason.to_string() });
    let plain = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain {
        return fail("a model name is letters, digits and `_`, starting with a letter (no `/`, `.` or spaces)");
    }
    if hyb_dsl::parse::parse(hyb_dsl::source::FileId(0), &format!("model {name} {{}}\n")).is_err() {
        return fail("it is a hyb keyword");
    }
    Ok(())
}

/// Compares the config's size with the tensors before anything is built from it, so that
/// an absurd `num_hidden_layers` or `vocab_size` is an error, not an allocation failure.
fn check_size(cfg: &FalconConfig, hf: &Weights) -> Result<(), HfError> {
    let layers = hf
        .keys()
        .filter_map(|k| k.strip_prefix("model.layers.")?.split('.').next()?.parse::<usize>().ok())
        .collect::<std::collections::BTreeSet<_>>();
    if layers.len() != cfg.layers || layers.last().is_some_and(|&l| l + 1 != layers.len()) {
        return Err(Fields::field(
            "num_hidden_layers",
            format!("is {} but the checkpoint holds weights for {} layers", cfg.layers, layers.len()),
        ));
    }
    let embed = "model.embed_tokens.weight";
    match hf.get(embed).map(|w| w.tensor.shape.as_slice()) {
        Some(&[v, d]) if v == cfg.vocab && d == cfg.d => Ok(()),
        Some(shape) => Err(HfError::Weights(format!(
            "`{embed}` has shape {shape:?} but vocab_size and hidden_size say [{}, {}]",
            cfg.vocab, cfg.d
        ))),
        None => Err(HfError::Weights(format!("missing tensor `{embed}`"))),
    }
}

/// `model.safetensors`, or the shards listed by `model.safetensors.index.json`. The index's
/// `weight_map` decides which shard a tensor is read from; a copy in another shard is
/// ignored.
fn load_checkpoint(dir: &Path) -> Result<Weights, HfError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() || !index.exists() {
        return Ok(weights::load(&single)?);
    }
    let bad = |reason: String| HfError::Read { path: index.display().to_string(), reason };
    let text = std::fs::read_to_string(&index).map_err(|e| bad(e.to_string()))?;
    let parsed: Json = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = parsed.get("weight_map").and_then(Json::as_object).ok_or_else(|| bad("no `weight_map`".into()))?;
    let mut by_shard: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| bad(format!("`weight_map` gives `{tensor}` the shard {shard}")))?;
        if shard.contains('/') || shard.contains('\\') || shard.contains("..") {
            return Err(bad(format!("shard name `{shard}` leaves the checkpoint folder")));
        }
        by_shard.entry(shard).or_default().push(tensor);
    }
    let mut all = Weights::new();
    for (shard, tensors) in by_shard {
        let mut w = weights::load(&dir.join(shard))?;
        for t in tensors {
            let weight = w.remove(t).ok_or_else(|| {
                HfError::Weights(format!("the index puts `{t}` in {shard}, but that shard does not hold it"))
            })?;
            all.insert(t.to_string(), weight);
        }
    }
    Ok(all)
}

/// Checks the generated model and that every weight has the shape the model declares.
fn check_shapes(name: &str, hyb: &str, ours: &Weights) -> Result<(), HfError> {
    let checked = hyb_compiler::check::check_text(name, hyb);
    if let Some(d) = checked.diagnostics.first() {
        return Err(HfError::Weights(format!("the generated model does not check: {}", d.message)));
    }
    let (_, model) = checked.models.first().ok_or_else(|| HfError::Weights("the generated model is missing".into()))?;
    for p in model.trace.params() {
        let want: Vec<usize> = p.shape.iter().filter_map(|d| d.as_const()).map(|c| c as usize).collect();
        match ours.get(&p.name) {
            Some(w) if w.tensor.shape == want => {}
            Some(w) => {
                return Err(HfError::Weights(format!(
                    "`{}` has shape {:?} but the config implies {want:?}",
                    p.name, w.tensor.shape
                )));
            }
            None => return Err(HfError::Weights(format!("no weight for `{}`", p.name))),
        }
    }
    Ok(())
}

/// `hyb export`: writes `config.json` and `model.safetensors` that transformers loads, as a
/// set (see [`crate::atomic::write_all`]).
pub fn export(summary: &ModelSummary, ours: Weights, out_dir: &Path) -> Result<FalconConfig, HfError> {
    let cfg = FalconConfig::from_summary(summary)?;
    let hf = weights_to_hf(&cfg, ours)?;
    std::fs::create_dir_all(out_dir).map_err(|error| HfError::Write { path: out_dir.display().to_string(), error })?;
    let json = serde_json::to_string_pretty(&cfg.to_json()).expect("a JSON value serialises");
    let meta = std::collections::BTreeMap::from([("format".to_string(), "pt".to_string())]);
    crate::atomic::write_all(&[
        (out_dir.join("model.safetensors"), weights::to_bytes(&hf, &meta)),
        (out_dir.join("config.json"), json.into_bytes()),
    ])
    .map_err(|(path, error)| HfError::Write { path: path.display().to_string(), error })?;
    Ok(cfg)
}
