//! Lookups by token id (`ops::embedding` is the meaning): `embedding` copies a table row
//! per token, `one_hot` writes an indicator row per token, and `embedding_grad` adds each
//! token's gradient row into its table row. Ids arrive as floats (the arena is uniform);
//! an id outside the table — or not a number — selects nothing, as in the reference.
//!
//! The gradient's sums must not race, and must run in token order: one phase zeroes the
//! table, then an item per column (on the GPU, per column and block of table rows) walks
//! the tokens in order, so no two items write the same element.

use super::super::emit::Target;
use super::text::Text;
use super::{name, Phase, TemplateCode};

/// Whether float id `id` names a row of `rows` and, if so, its row index.
fn row_of(s: &mut Text, id: &str, rows: usize) -> (String, String) {
    let (lo, hi) = (s.f32(0.0), s.f32(rows as f32));
    let above = s.fcmp("oge", id, &lo);
    let below = s.fcmp("olt", id, &hi);
    let valid = s.line_value(format!("arith.andi {above}, {below} : i1"));
    let zero = s.f32(0.0);
    let safe = s.select(&valid, id, &zero, "f32");
    let row = s.line_value(format!("arith.fptosi {safe} : f32 to i64"));
    (valid, row)
}

/// `embedding(table [V, d], ids [...])`: `[..., d]`.
pub fn embedding(table: &[usize], ids: &[usize]) -> TemplateCode {
    let (vocab, d) = (table[0], table[1]);
    let tokens: usize = ids.iter().product();
    let mut body = Text::new();
    let at = super::pieces::delinearise(&mut body, "%item", ids);
    let at: Vec<&str> = at.iter().map(String::as_str).collect();
    let id = body.load(1, &at);
    let (valid, row) = row_of(&mut body, &id, vocab);
    let (zero, n) = (body.i64(0), body.i64(d as i64));
    let out = 2;
    body.each(&zero, &n, |s, j| {
        let v = s.load(0, &[&row, j]);
        let z = s.f32(0.0);
        let v = s.select(&valid, &v, &z, "f32");
        let mut index = at.clone();
        index.push(j);
        s.store(out, &index, &v);
    });
    let mut shape = ids.to_vec();
    shape.push(d);
    TemplateCode {
        name: name("embedding", &[table, ids]),
        inputs: vec![table.to_vec(), ids.to_vec()],
        outputs: vec![shape],
        workspace: vec![],
        workspace_storage: vec![],
        in_place: vec![],
        phases: vec![Phase { cooperative: None, what: "gather", items: tokens, work_per_item: d, body }],
    }
}

/// `one_hot(ids [...], depth)`: `[..., depth]`. On the CPU an item is a token (its row
/// contiguous); on the GPU an element, so neighbouring threads write neighbouring
/// elements.
pub fn one_hot(ids: &[usize], depth: usize, target: Target) -> TemplateCode {
    let tokens: usize = ids.iter().product();
    let mut body = Text::new();
    let indicate = |s: &mut Text, token: &str, j: &str| {
        let at = super::pieces::delinearise(s, token, ids);
        let at: Vec<&str> = at.iter().map(String::as_str).collect();
        let id = s.load(0, &at);
        let (valid, row) = row_of(s, &id, depth);
        let (one, nothing) = (s.f32(1.0), s.f32(0.0));
        let here = s.cmp("eq", j, &row);
        let hit = s.line_value(format!("arith.andi {valid}, {here} : i1"));
        let v = s.select(&hit, &one, &nothing, "f32");
        let mut index = at.clone();
        index.push(j);
        s.store(1, &index, &v);
    };
    let (items, per_item) = match target {
        Target::Cpu => {
            let (zero, n) = (body.i64(0), body.i64(depth as i64));
            body.each(&zero, &n, |s, j| indicate(s, "%item", j));
            (tokens, depth)
        }
        Target::Gpu => {
            let (token, j) = body.split("%item", depth);
            indicate(&mut body, &token, &j);
            (tokens * depth, 1)
        }
    };
    let mut shape = ids.to_vec();
    shape.push(depth);
    TemplateCode {
        name: name("one_hot", &[ids, &[depth]]),
        inputs: vec![ids.to_vec()],
        outputs: vec![shape],
        workspace: vec![],
        workspace_storage: vec![],
        in_place: vec![],
        phases: vec![Phase { cooperative: None, what: "indicate", items, work_per_item: per_item, body }],
    }
}

/// Table rows a GPU item of `embedding_grad` owns: with a block of rows per item as well
/// as a column, tens of thousands of threads walk the tokens, not `d`.
const VOCAB_BLOCK: usize = 512;

/// `embedding_grad(ids [...], dy [..., d])` into a `[vocab, d]` table.
pub fn embedding_grad(ids: &[usize], dy: &[usize], vocab: usize, target: Target) -> TemplateCode {
    let d = *dy.last().expect("dy has a last axis");
    let tokens: usize = ids.iter().product();
    let blocks = match target {
        Target::Cpu => 1,
        Target::Gpu => vocab.div_ceil(VOCAB_BLOCK),
    };
    let span = vocab.div_ceil(blocks);
    let out = 2;
    let mut zeros = Text::new();
    {
        let (zero, n, z) = (zeros.i64(0), zeros.i64(d as i64), zeros.f32(0.0));
        zeros.each(&zero, &n, |s, j| s.store(out, &["%item", j], &z));
    }
    let mut add = Text::new();
    {
        let (block, column) = add.split("%item", d);
        let lo = add.mul_c(&block, span as i64);
        let hi = add.add_c(&lo, span as i64);
        let (zero, n) = (add.i64(0), add.i64(tokens as i64));
        add.each(&zero, &n, |s, t| {
            let at = super::pieces::delinearise(s, t, ids);
            let at: Vec<&str> = at.iter().map(String::as_str).collect();
            let id = s.load(0, &at);
            let (valid, row) = row_of(s, &id, vocab);
            let (above, below) = (s.cmp("sge", &row, &lo), s.cmp("slt", &row, &hi));
            let mine = s.line_value(format!("arith.andi {above}, {below} : i1"));
            let mine = s.line_value(format!("arith.andi {valid}, {mine} : i1"));
            s.when(&mine, |s| {
                let mut index = at.clone();
                index.push(&column);
                let g = s.load(1, &index);
                let old = s.load(out, &[&row, &column]);
                let new = s.fadd(&old, &g);
                s.store(out, &[&row, &column], &new);
            });
        });
    }
    TemplateCode {
        name: name("embedding_grad", &[ids, dy, &[vocab]]),
        inputs: vec![ids.to_vec(), dy.to_vec()],
        outputs: vec![vec![vocab, d]],
        workspace: vec![],
        workspace_storage: vec![],
        in_place: vec![],
        phases: vec![
            Phase { cooperative: None, what: "zero", items: vocab, work_per_item: d, body: zeros },
            Phase { cooperative: None, what: "scatter", items: blocks * d, work_per_item: tokens, body: add },
        ],
    }
}
