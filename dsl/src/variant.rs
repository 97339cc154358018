//! A model's source with some settings replaced: `heads=8` rewrites the model's `heads`
//! setting (or adds it), `layers[0..2].heads=8` a per-layer override. The values are
//! source text, so anything a setting can be written as works (`pattern("(M{3}H){2}")`,
//! `4 * d`), and a variant that does not check is reported by the checker with its spans,
//! in the variant's text. `hyb train --set` and `hyb sweep` are built on it.

use crate::ast::{Item, ModelEntryKind, Span};
use crate::source::FileId;

/// One replaced setting.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Set {
    /// `None` for the model's own setting; `Some((first, last))` for layers `first..last`
    /// (`last` `None`: layer `first` alone).
    pub layers: Option<(u32, Option<u32>)>,
    pub name: String,
    /// The value, as source text.
    pub value: String,
}

impl Set {
    /// Parses `NAME=VALUE` or `layers[A..B].NAME=VALUE` (or `layers[A].NAME=VALUE`).
    pub fn parse(text: &str) -> Result<Set, String> {
        let (target, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
        let (target, value) = (target.trim(), value.trim());
        if value.is_empty() {
            return Err(format!("`{text}` gives `{target}` no value"));
        }
        let (layers, name) = match target.strip_prefix("layers[") {
            Some(rest) => {
                let (range, name) = rest
                    .split_once("].")
                    .ok_or_else(|| format!("`{target}` is not layers[A..B].NAME or layers[A].NAME"))?;
                let number =
                    |s: &str| s.trim().parse::<u32>().map_err(|_| format!("`{s}` in `{target}` is not a layer"));
                let range = match range.split_once("..") {
                    Some((a, b)) => (number(a)?, Some(number(b)?)),
                    None => (number(range)?, None),
                };
                if let (a, Some(b)) = range {
                    if b <= a {
                        return Err(format!("`{target}` names no layers: the range is empty"));
                    }
                }
                (Some(range), name)
            }
            None => (None, target),
        };
        let identifier = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            return Err(format!("`{name}` is not a setting name"));
        }
        Ok(Set { layers, name: name.to_string(), value: value.to_string() })
    }

    /// `heads` or `layers[0..2].heads`.
    pub fn target(&self) -> String {
        match self.layers {
            None => self.name.clone(),
            Some((a, None)) => format!("layers[{a}].{}", self.name),
            Some((a, Some(b))) => format!("layers[{a}..{b}].{}", self.name),
        }
    }
}

impl std::fmt::Display for Set {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.target(), self.value)
    }
}

/// `text` with `sets` applied to model `model` (the file's only model when `None`).
/// Values replace the written ones in place; settings the model does not write are added
/// before its closing brace. A file that does not parse is returned unchanged, for the
/// checker to report.
pub fn apply(text: &str, model: Option<&str>, sets: &[Set]) -> Result<String, String> {
    if sets.is_empty() {
        return Ok(text.to_string());
    }
    let Ok(file) = crate::parse::parse(FileId(0), text) else { return Ok(text.to_string()) };
    let models: Vec<_> =
        file.items.iter().filter_map(|i| if let Item::Model(m) = i { Some(m) } else { None }).collect();
    let m = match model {
        Some(name) => {
            models.iter().find(|m| m.name.name == name).ok_or_else(|| format!("no model `{name}` to set values in"))?
        }
        None if models.len() == 1 => &models[0],
        None => return Err("the file defines several models: choose one with --model".into()),
    };
    // Edits as (span replaced, new text), applied from the end.
    let mut edits: Vec<(Span, String)> = Vec::new();
    let mut added = String::new();
    for set in sets {
        let written = m.entries.iter().find_map(|e| match (&e.kind, set.layers) {
            (ModelEntryKind::Setting(name, value), None) if name.name == set.name => Some(value.span),
            (ModelEntryKind::Override { first, last, args, .. }, Some((a, b))) if *first == a && *last == b => {
                args.iter().find(|(name, _)| name.name == set.name).map(|(_, value)| value.span)
            }
            _ => None,
        });
        match written {
            Some(span) => edits.push((span, set.value.clone())),
            None => match set.layers {
                None => added.push_str(&format!("    {} = {}\n", set.name, set.value)),
                Some(_) => {
                    let range = set.target();
                    let range = &range[..range.len() - set.name.len() - 1];
                    added.push_str(&format!("    override {range} {{ {} = {} }}\n", set.name, set.value));
                }
            },
        }
    }
    let end = m.body_end.start;
    let mut out = text.to_string();
    if !added.is_empty() {
        let at = text[..end].rfind('\n').map_or(end, |i| i + 1);
        let before_brace = &text[at..end];
        // The closing brace on its own line keeps its line; otherwise the additions start one.
        if before_brace.trim().is_empty() {
            out.insert_str(at, &added);
        } else {
            out.insert_str(end, &format!("\n{added}"));
        }
    }
    edits.sort_by_key(|(span, _)| std::cmp::Reverse(span.start));
    for (span, value) in edits {
        out.replace_range(span.start..span.end, &value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "import std.layers\n\nmodel tiny {\n    vocab = 64\n    d = 32\n    heads = 4\n    override layers[0..2] { heads = 8 }\n}\n";

    fn set(text: &str) -> Set {
        Set::parse(text).unwrap()
    }

    #[test]
    fn settings_are_replaced_in_place_or_added() {
        let out = apply(MODEL, None, &[set("heads=2"), set("d_ff = 4 * d"), set("layers[0..2].heads=16")]).unwrap();
        assert!(out.contains("    heads = 2\n"), "{out}");
        assert!(out.contains("override layers[0..2] { heads = 16 }"), "{out}");
        assert!(out.contains("    d_ff = 4 * d\n}\n"), "{out}");
        let out = apply(MODEL, Some("tiny"), &[set("layers[3].ssm_heads=2"), set("layers[0..2].kv_heads=1")]).unwrap();
        assert!(out.contains("    override layers[3] { ssm_heads = 2 }\n"), "{out}");
        assert!(out.contains("    override layers[0..2] { kv_heads = 1 }\n"), "{out}");
    }

    #[test]
    fn bad_sets_are_refused_with_what_is_wrong() {
        assert!(Set::parse("heads").unwrap_err().contains("NAME=VALUE"));
        assert!(Set::parse("heads=").unwrap_err().contains("no value"));
        assert!(Set::parse("layers[2..1].heads=3").unwrap_err().contains("empty"));
        assert!(Set::parse("layers[x].heads=3").unwrap_err().contains("not a layer"));
        assert!(Set::parse("9heads=3").unwrap_err().contains("not a setting name"));
        assert!(apply(MODEL, Some("other"), &[set("heads=2")]).unwrap_err().contains("no model `other`"));
        assert_eq!(set("layers[1..3].heads = 2").to_string(), "layers[1..3].heads=2");
    }
}
