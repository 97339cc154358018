//! Megatron-style layer patterns: one character per layer (`M` Mamba, `*` attention,
//! `-` MLP, or letters the model binds), with `{n}` repetition of a letter or a
//! parenthesised group: `"H{2}(M*){3}-"`.

/// Most layers a pattern may expand to; guards against `"(H{1000}){1000}"`. Checking costs
/// about 1 ms and 200 KB per Falcon-H1 layer (every layer is traced: the compiler elaborates
/// each), so 1,000 layers check in about a second; deeper models are refused at once.
pub const MAX_LAYERS: usize = 1_000;

/// A pattern error: byte range inside the pattern text and a message.
#[derive(Debug, PartialEq)]
pub struct PatternError {
    pub start: usize,
    pub end: usize,
    pub message: String,
}

fn fail(start: usize, end: usize, message: impl Into<String>) -> PatternError {
    PatternError { start, end, message: message.into() }
}

/// Expands a pattern into (letter, byte offset of the letter) per layer. Iterative, so
/// deeply nested groups cannot overflow the stack.
pub fn expand(text: &str) -> Result<Vec<(char, usize)>, PatternError> {
    // Each open group: where its layers start in `out`, and the offset of its `(`.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut out: Vec<(char, usize)> = Vec::new();
    // The layers the next `{n}` repeats: (start index in `out`).
    let mut last: Option<usize> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => {
                groups.push((out.len(), i));
                last = None;
            }
            ')' => {
                let (start, _) = groups.pop().ok_or_else(|| fail(i, i + 1, "`)` without a matching `(`"))?;
                if start == out.len() {
                    return Err(fail(i, i + 1, "empty group `()`"));
                }
                last = Some(start);
            }
            '{' => {
                let Some(start) = last.take() else {
                    return Err(fail(i, i + 1, "`{n}` must follow a layer letter or a `)`"));
                };
                let mut digits = String::new();
                let mut end = i + 1;
                while let Some(&(j, d)) = chars.peek() {
                    chars.next();
                    end = j + d.len_utf8();
                    if d == '}' {
                        break;
                    }
                    digits.push(d);
                }
                if !text[..end].ends_with('}') {
                    return Err(fail(i, end, "unclosed `{`"));
                }
                let n: usize =
                    digits.trim().parse().map_err(|_| fail(i, end, format!("`{{{digits}}}` is not a repeat count")))?;
                if n == 0 {
                    return Err(fail(i, end, "a repeat count must be at least 1"));
                }
                let unit = out[start..].to_vec();
                let total = start
                    .checked_add(unit.len().saturating_mul(n))
                    .filter(|t| *t <= MAX_LAYERS)
                    .ok_or_else(|| fail(i, end, format!("the pattern expands to more than {MAX_LAYERS} layers")))?;
                for _ in 1..n {
                    out.extend_from_slice(&unit);
                }
                debug_assert_eq!(out.len(), total);
            }
            '}' => return Err(fail(i, i + 1, "`}` without a matching `{`")),
            letter => {
                last = Some(out.len());
                out.push((letter, i));
                if out.len() > MAX_LAYERS {
                    return Err(fail(i, i + 1, format!("the pattern has more than {MAX_LAYERS} layers")));
                }
            }
        }
    }
    if let Some((_, open)) = groups.pop() {
        return Err(fail(open, open + 1, "`(` is never closed"));
    }
    if out.is_empty() {
        return Err(fail(0, text.len(), "the pattern has no layers"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters(p: &str) -> String {
        expand(p).unwrap().into_iter().map(|(c, _)| c).collect()
    }

    #[test]
    fn expands_repeats_and_groups() {
        assert_eq!(letters("M*-"), "M*-");
        assert_eq!(letters("H{3}"), "HHH");
        assert_eq!(letters("(M*){2}-"), "M*M*-");
        assert_eq!(letters("((AB){2}C){2}"), "ABABCABABC");
        assert_eq!(letters("H M"), "HM");
        assert_eq!(expand("MH").unwrap()[1], ('H', 1));
    }

    #[test]
    fn rejects_malformed_patterns() {
        assert_eq!(expand("(M").unwrap_err().start, 0);
        assert_eq!(expand("M)").unwrap_err().start, 1);
        assert!(expand("{3}").is_err());
        assert!(expand("M{x}").is_err());
        assert!(expand("M{0}").is_err());
        assert!(expand("M{3").is_err());
        assert!(expand("").is_err());
        assert!(expand("()").is_err());
        assert!(expand("(H{1000}){1000}").is_err());
        let deep = format!("{}M{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(letters(&deep), "M");
    }
}
