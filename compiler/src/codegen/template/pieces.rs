//! Tensors built from pieces along one axis: `concat` (each piece an input), `pad`
//! (zeros, the input, zeros) and `cache_write` (a cache with new rows at a run-time
//! position). A phase per piece writes the piece's part of the output, so the phases write
//! disjoint elements. On the CPU an item is a row of the piece (every axis but the last),
//! its last axis the inner, unit-stride loop; on the GPU an item is an element, so that
//! neighbouring threads touch neighbouring elements.

use super::super::emit::Target;
use super::position::runtime_position;
use super::text::Text;
use super::{name, Phase, TemplateCode};

/// One piece: where it starts along the axis, how long it is, and the input it copies
/// (`None`: zeros).
struct Piece {
    start: usize,
    len: usize,
    input: Option<usize>,
}

/// `concat` of inputs of `shapes` along `axis`.
pub fn concat(shapes: &[Vec<usize>], axis: i64, target: Target) -> TemplateCode {
    let rank = shapes[0].len();
    let axis = normalise(axis, rank);
    let mut out = shapes[0].clone();
    out[axis] = shapes.iter().map(|s| s[axis]).sum();
    let mut start = 0;
    let pieces = shapes
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let p = Piece { start, len: s[axis], input: Some(k) };
            start += s[axis];
            p
        })
        .collect();
    let all: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
    build(name(&format!("concat{axis}"), &all), shapes.to_vec(), out, (axis, pieces), target)
}

/// `pad` of `x` with `before` and `after` zeros along `axis`.
pub fn pad(x: &[usize], axis: i64, before: usize, after: usize, target: Target) -> TemplateCode {
    let axis = normalise(axis, x.len());
    let mut out = x.to_vec();
    out[axis] += before + after;
    let pieces = vec![
        Piece { start: 0, len: before, input: None },
        Piece { start: before, len: x[axis], input: Some(0) },
        Piece { start: before + x[axis], len: after, input: None },
    ];
    build(name(&format!("pad{axis}_{before}_{after}"), &[x]), vec![x.to_vec()], out, (axis, pieces), target)
}

fn normalise(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (rank as i64 + axis) as usize
    } else {
        axis as usize
    }
}

fn build(
    name: String,
    inputs: Vec<Vec<usize>>,
    out: Vec<usize>,
    (axis, pieces): (usize, Vec<Piece>),
    target: Target,
) -> TemplateCode {
    let output = inputs.len();
    let phases = pieces
        .iter()
        .filter(|p| p.len > 0)
        .map(|p| {
            let mut shape = out.clone();
            shape[axis] = p.len;
            let (last, rows) = shape.split_last().expect("rank ≥ 1");
            let width = match target {
                Target::Cpu => *last,
                Target::Gpu => 1,
            };
            let mut body = Text::new();
            let (row, block) = body.split("%item", last / width);
            let mut index = delinearise(&mut body, &row, rows);
            let first = body.mul_c(&block, width as i64);
            let (zero, n) = (body.i64(0), body.i64(width as i64));
            body.each(&zero, &n, |s, j| {
                let col = s.add(&first, j);
                index.push(col);
                let value = match p.input {
                    Some(k) => {
                        let at: Vec<&str> = index.iter().map(String::as_str).collect();
                        s.load(k, &at)
                    }
                    None => s.f32(0.0),
                };
                let shifted = s.add_c(&index[axis], p.start as i64);
                let mut at: Vec<&str> = index.iter().map(String::as_str).collect();
                at[axis] = &shifted;
                s.store(output, &at, &value);
                index.pop();
            });
            Phase {
                cooperative: None,
                what: if p.input.is_some() { "copy" } else { "zeros" },
                items: rows.iter().product::<usize>() * (last / width),
                work_per_item: width,
                body,
            }
        })
        .collect();
    TemplateCode {
        name,
        inputs,
        outputs: vec![out],
        workspace: vec![],
        workspace_storage: vec![],
        in_place: vec![],
        phases,
    }
}

/// `cache_write` of inputs `cache [B, S, …]`, `new [B, T, …]` and the position `pos []`:
/// the cache with `new` at rows `pos .. pos + T` (rows past its end dropped). `in_place`:
/// the output is the cache's own buffer, so only the new rows are written; otherwise every
/// row is, from the cache or from `new`.
pub fn cache_write(shapes: &[Vec<usize>], in_place: bool) -> TemplateCode {
    let (cache, new) = (&shapes[0], &shapes[1]);
    let (s_len, t_len) = (cache[1], new[1]);
    let written = if in_place { new } else { cache };
    let (last, rows) = written.split_last().expect("a cache has a batch and a time axis");
    let mut body = Text::new();
    let mut index = delinearise(&mut body, "%item", rows);
    let pos = runtime_position(&mut body, 2);
    let (zero, n) = (body.i64(0), body.i64(*last as i64));
    body.each(&zero, &n, |s, j| {
        index.push(j.to_string());
        let time = index[1].clone();
        if in_place {
            let to = s.add(&pos, &time);
            let s_end = s.i64(s_len as i64);
            let fits = s.cmp("slt", &to, &s_end);
            let at: Vec<&str> = index.iter().map(String::as_str).collect();
            let mut out_at = at.clone();
            out_at[1] = &to;
            s.when(&fits, |s| {
                let v = s.load(1, &at);
                s.store(3, &out_at, &v);
            });
        } else {
            // Row `time` of the cache, or row `time − pos` of the new rows, both clamped
            // in bounds so either load is safe; a select keeps the one that applies.
            let from = s.int("subi", &time, &pos);
            let (lo, hi) = (s.i64(0), s.i64(t_len as i64 - 1));
            let clamped = s.int("maxsi", &from, &lo);
            let clamped = s.int("minsi", &clamped, &hi);
            let after = s.cmp("sge", &from, &lo);
            let before = s.cmp("sle", &from, &hi);
            let fresh = s.line_value(format!("arith.andi {after}, {before} : i1"));
            let at: Vec<&str> = index.iter().map(String::as_str).collect();
            let mut new_at = at.clone();
            new_at[1] = &clamped;
            let old = s.load(0, &at);
            let v = s.load(1, &new_at);
            let v = s.select(&fresh, &v, &old, "f32");
            s.store(3, &at, &v);
        }
        index.pop();
    });
    let all: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
    let template = if in_place { "cache_write_in_place" } else { "cache_write" };
    TemplateCode {
        name: name(template, &all),
        inputs: shapes.to_vec(),
        outputs: vec![cache.clone()],
        workspace: vec![],
        workspace_storage: vec![],
        in_place: vec![(0, 0)],
        phases: vec![Phase {
            cooperative: None,
            what: "rows",
            items: rows.iter().product(),
            work_per_item: *last,
            body,
        }],
    }
}

/// The indices of `item` over `dims` (row-major).
pub fn delinearise(s: &mut Text, item: &str, dims: &[usize]) -> Vec<String> {
    let mut index = vec![String::new(); dims.len()];
    let mut rest = item.to_string();
    for (d, &n) in dims.iter().enumerate().rev() {
        if d == 0 {
            index[d] = rest.clone();
            break;
        }
        let k = s.i64(n as i64);
        index[d] = s.int("remui", &rest, &k);
        rest = s.int("divui", &rest, &k);
    }
    index
}
