//! Primitives that depend on a token's position (`ops::rope`, `ops::mask` are the
//! meaning): the rotary embedding and its gradient (the rotation by minus the angle) when
//! launched alone, the rotary embedding from a run-time position (`rope_at`, decoding) or
//! from each token's place in its document (`document_rope`, packed rows), and the causal
//! masks of a score matrix (`causal_mask` fills above the diagonal with −∞, `tril` with 0;
//! their `document_` twins also before the query's document). An item is a row: a token's
//! heads for the rotation (its cosines and sines computed once for all heads), a score row
//! for the masks.

use super::attention::{frequencies, rotate, trig};
use super::pieces::delinearise;
use super::text::Text;
use super::{name, Phase, TemplateCode};

/// `rope` (`inverse`: `rope_grad`) of `x [B, T, heads, D]` with base `theta`.
pub fn rope(x: &[usize], theta: f64, inverse: bool) -> TemplateCode {
    rotation(x, theta, inverse, Angle::Step)
}

/// `rope_at` of `x [B, T, heads, D]` whose first token sits at the position held by the
/// scalar input `pos` (view 1).
pub fn rope_at(x: &[usize], theta: f64) -> TemplateCode {
    rotation(x, theta, false, Angle::Offset)
}

/// `document_rope` (`inverse`: its gradient) of `x [B, T, heads, D]`, each token at its
/// place in its document (`positions [B, T]`, view 1).
pub fn document_rope(x: &[usize], theta: f64, inverse: bool) -> TemplateCode {
    rotation(x, theta, inverse, Angle::Document)
}

/// What a token's angle is a multiple of.
#[derive(Clone, Copy, PartialEq)]
enum Angle {
    /// Its time step.
    Step,
    /// Its time step plus a scalar position input (view 1).
    Offset,
    /// Its place in its document (view 1).
    Document,
}

/// Token `(b, t)`'s place in its document from `positions` (view `view`), clamped to
/// `0..=t` as `ops::documents` reads it.
pub(super) fn place_in_document(s: &mut Text, view: usize, b: &str, t: &str) -> String {
    let v = s.load(view, &[b, t]);
    let p = whole_tokens(s, &v);
    s.int("minsi", &p, t)
}

/// A scalar view holding a position (a whole number of tokens, as f32), as an index.
pub(super) fn runtime_position(s: &mut Text, view: usize) -> String {
    let v = s.load(view, &[]);
    whole_tokens(s, &v)
}

/// A float holding a number of tokens as an index: truncated, at least 0.
fn whole_tokens(s: &mut Text, v: &str) -> String {
    let n = s.line_value(format!("arith.fptosi {v} : f32 to i64"));
    let zero = s.i64(0);
    s.int("maxsi", &n, &zero)
}

/// The rotation of every token of `x` by the angle of its position (`angle`).
fn rotation(x: &[usize], theta: f64, inverse: bool, angle: Angle) -> TemplateCode {
    let (b, t, h, d) = (x[0], x[1], x[2], x[3]);
    let half = d / 2;
    let out = if angle == Angle::Step { 1 } else { 2 };
    let mut body = Text::new();
    let freq = frequencies(&mut body, d, theta);
    let at = delinearise(&mut body, "%item", &[b, t]);
    let bi = at[0].clone();
    let ti = match angle {
        Angle::Step => at[1].clone(),
        Angle::Offset => {
            let pos = runtime_position(&mut body, 1);
            body.add(&at[1], &pos)
        }
        Angle::Document => place_in_document(&mut body, 1, &bi, &at[1]),
    };
    let step = at[1].clone();
    let (zero, pairs, heads) = (body.i64(0), body.i64(half as i64), body.i64(h as i64));
    body.each(&zero, &pairs, |s, p| {
        let (cos, sin) = trig(s, &freq, &ti, p);
        let sin = if inverse { s.fneg(&sin) } else { sin };
        let q = s.add_c(p, half as i64);
        s.each(&zero, &heads, |s, hi| {
            let x1 = s.load(0, &[&bi, &step, hi, p]);
            let x2 = s.load(0, &[&bi, &step, hi, &q]);
            let (y1, y2) = rotate(s, (&x1, &x2), &cos, &sin);
            s.store(out, &[&bi, &step, hi, p], &y1);
            s.store(out, &[&bi, &step, hi, &q], &y2);
        });
    });
    let what = match (inverse, angle) {
        (_, Angle::Offset) => "rope_at",
        (true, Angle::Document) => "document_rope_grad",
        (false, Angle::Document) => "document_rope",
        (true, Angle::Step) => "rope_grad",
        (false, Angle::Step) => "rope",
    };
    let inputs = match angle {
        Angle::Step => vec![x.to_vec()],
        Angle::Offset => vec![x.to_vec(), vec![]],
        Angle::Document => vec![x.to_vec(), vec![b, t]],
    };
    TemplateCode {
        name: format!("{}_theta{:x}", name(what, &[x]), theta.to_bits()),
        inputs,
        outputs: vec![x.to_vec()],
        workspace: vec![],
        workspace_storage: vec![],
        in_place: vec![],
        phases: vec![Phase { cooperative: None, what: "rotate", items: b * t, work_per_item: h * d, body }],
    }
}

/// `x [..., T, T]` with every element above the diagonal replaced by `fill`; with
/// `documents` (input `positions [B, T]`, view 1), also every key before the start of the
/// query's document.
pub fn mask(x: &[usize], fill: f32, what: &str, documents: bool) -> TemplateCode {
    let (last, rows) = x.split_last().expect("a square matrix has two axes");
    let out = 1 + usize::from(documents);
    let mut body = Text::new();
    let mut at = delinearise(&mut body, "%item", rows);
    let i = at.last().expect("a row axis").clone();
    let first = if documents {
        let p = place_in_document(&mut body, 1, &at[0], &i);
        body.int("subi", &i, &p)
    } else {
        body.i64(0)
    };
    let (zero, n, fill) = (body.i64(0), body.i64(*last as i64), body.f32(fill));
    body.each(&zero, &n, |s, j| {
        at.push(j.to_string());
        let index: Vec<&str> = at.iter().map(String::as_str).collect();
        let v = s.load(0, &index);
        let past = s.cmp("sle", j, &i);
        let kept = if documents {
            let inside = s.cmp("sge", j, &first);
            s.line_value(format!("arith.andi {past}, {inside} : i1"))
        } else {
            past
        };
        let v = s.select(&kept, &v, &fill, "f32");
        s.store(out, &index, &v);
        at.pop();
    });
    let mut inputs = vec![x.to_vec()];
    if documents {
        inputs.push(vec![x[0], *last]);
    }
    TemplateCode {
        name: name(what, &[x]),
        inputs,
        outputs: vec![x.to_vec()],
        workspace: vec![],
        workspace_storage: vec![],
        in_place: vec![],
        phases: vec![Phase {
            cooperative: None,
            what: "mask",
            items: rows.iter().product(),
            work_per_item: *last,
            body,
        }],
    }
}
