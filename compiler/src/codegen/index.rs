//! Index expressions: how a kernel reaches element `idx` of a value through the views and
//! broadcasts between it and the loop nest. Each expression is a sum of terms (coefficient
//! times a loop variable, or times a quotient or remainder of a sub-expression) plus a
//! constant, simplified as it is built, so a reshape that splits an axis and one that
//! merges it back cancel instead of leaving divisions in the inner loop.

use num_integer::gcd;
use std::collections::BTreeSet;

/// A loop variable: its number in the kernel, and its extent (values `0..extent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var {
    pub id: usize,
    pub extent: u64,
}

/// What a term multiplies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Atom {
    Var(Var),
    /// `expr / divisor`, rounding down (the expression is never negative).
    Div(Box<Ix>, u64),
    /// `expr % modulus`.
    Rem(Box<Ix>, u64),
}

/// `Σ coefficient · atom + constant`, with terms sorted and merged.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ix {
    pub terms: Vec<(i64, Atom)>,
    pub constant: i64,
}

impl Ix {
    pub fn constant(c: i64) -> Ix {
        Ix { terms: Vec::new(), constant: c }
    }

    pub fn var(v: Var) -> Ix {
        if v.extent == 1 {
            return Ix::constant(0);
        }
        Ix { terms: vec![(1, Atom::Var(v))], constant: 0 }
    }

    pub fn as_constant(&self) -> Option<i64> {
        self.terms.is_empty().then_some(self.constant)
    }

    pub fn add(&self, other: &Ix) -> Ix {
        let mut terms = self.terms.clone();
        terms.extend(other.terms.iter().cloned());
        Ix::normalised(terms, self.constant + other.constant)
    }

    pub fn scale(&self, k: i64) -> Ix {
        if k == 0 {
            return Ix::constant(0);
        }
        let terms = self.terms.iter().map(|(c, a)| (c * k, a.clone())).collect();
        Ix::normalised(terms, self.constant * k)
    }

    fn normalised(mut terms: Vec<(i64, Atom)>, constant: i64) -> Ix {
        terms.sort_by(|a, b| a.1.cmp(&b.1));
        let mut merged: Vec<(i64, Atom)> = Vec::with_capacity(terms.len());
        for (c, a) in terms {
            match merged.last_mut() {
                Some((lc, la)) if *la == a => *lc += c,
                _ => merged.push((c, a)),
            }
        }
        merged.retain(|(c, _)| *c != 0);
        Ix { terms: merged, constant }
    }

    /// The largest value the expression takes (all terms are non-negative by construction:
    /// coefficients of views are positive).
    pub fn largest(&self) -> i64 {
        self.constant + self.terms.iter().map(|(c, a)| c * a.largest()).sum::<i64>()
    }

    /// Whether the expression can be computed in 32-bit arithmetic: every coefficient is
    /// positive and the constant not negative, so no partial sum exceeds the whole, and
    /// the whole and every quotient's or remainder's operand stay below 2³¹. (A 64-bit
    /// division by a constant is several instructions; in 32 bits, a high multiply and a
    /// shift.)
    pub fn fits_32_bits(&self) -> bool {
        const LIMIT: i64 = 1 << 31;
        self.constant >= 0
            && self.largest() < LIMIT
            && self.terms.iter().all(|(c, a)| {
                *c > 0
                    && match a {
                        Atom::Var(v) => v.extent <= LIMIT as u64,
                        Atom::Div(x, k) | Atom::Rem(x, k) => *k < LIMIT as u64 && x.fits_32_bits(),
                    }
            })
    }

    /// Whether the expression divides or takes a remainder anywhere (what 32 bits make
    /// cheaper; sums and products of loop variables gain nothing from narrowing).
    pub fn divides(&self) -> bool {
        self.terms.iter().any(|(_, a)| !matches!(a, Atom::Var(_)))
    }

    fn non_negative(&self) -> bool {
        self.constant >= 0 && self.terms.iter().all(|(c, _)| *c > 0)
    }

    /// `self / d`, rounding down: the terms `d` divides come out of the quotient, and
    /// vanish from a remainder.
    pub fn div(&self, d: u64) -> Ix {
        if d == 1 {
            return self.clone();
        }
        let (whole, rest) = self.split(d);
        if rest.non_negative() && rest.largest() < d as i64 {
            return whole;
        }
        if let Some((f, scaled, _)) = rest.common_factor(d) {
            return whole.add(&scaled.div(d / f));
        }
        if rest.non_negative() {
            return whole.add(&Ix { terms: vec![(1, Atom::Div(Box::new(rest), d))], constant: 0 });
        }
        Ix { terms: vec![(1, Atom::Div(Box::new(self.clone()), d))], constant: 0 }
    }

    /// `self % m`.
    pub fn rem(&self, m: u64) -> Ix {
        if m == 1 {
            return Ix::constant(0);
        }
        let (_, rest) = self.split(m);
        if rest.non_negative() && rest.largest() < m as i64 {
            return rest;
        }
        if let Some((f, scaled, c)) = rest.common_factor(m) {
            return scaled.rem(m / f).scale(f as i64).add(&Ix::constant(c));
        }
        let x = if rest.non_negative() { rest } else { self.clone() };
        Ix { terms: vec![(1, Atom::Rem(Box::new(x), m))], constant: 0 }
    }

    /// For a non-negative `f·X + c` with `f > 1` dividing `d` and every coefficient, and
    /// `c < f`: `(f, X, c)`. Then `(f·X + c) / d = X / (d/f)` and `(f·X + c) % d =
    /// f·(X % (d/f)) + c`, so a lane's offset inside a vector (`8·g + l`, `l < 8`) leaves a
    /// reshape's split of a multiple of 8 without a division of its own.
    fn common_factor(&self, d: u64) -> Option<(u64, Ix, i64)> {
        if !self.non_negative() || self.terms.is_empty() {
            return None;
        }
        let f = self.terms.iter().fold(d, |g, (c, _)| gcd(g, c.unsigned_abs()));
        (f > 1 && self.constant < f as i64).then(|| {
            let terms = self.terms.iter().map(|(c, a)| (c / f as i64, a.clone())).collect();
            (f, Ix::normalised(terms, 0), self.constant)
        })
    }

    /// `(Σ of terms d divides, divided by d; the rest)`.
    fn split(&self, d: u64) -> (Ix, Ix) {
        let d = d as i64;
        let (mut whole, mut rest) = (Vec::new(), Vec::new());
        for (c, a) in &self.terms {
            if c % d == 0 {
                whole.push((c / d, a.clone()));
            } else {
                rest.push((*c, a.clone()));
            }
        }
        let (wc, rc) = (self.constant.div_euclid(d), self.constant.rem_euclid(d));
        (Ix::normalised(whole, wc), Ix::normalised(rest, rc))
    }

    /// The loop variables the expression reads.
    pub fn vars(&self, out: &mut BTreeSet<usize>) {
        for (_, a) in &self.terms {
            match a {
                Atom::Var(v) => {
                    out.insert(v.id);
                }
                Atom::Div(e, _) | Atom::Rem(e, _) => e.vars(out),
            }
        }
    }
}

impl Atom {
    fn largest(&self) -> i64 {
        match self {
            Atom::Var(v) => v.extent as i64 - 1,
            Atom::Div(e, d) => e.largest() / *d as i64,
            Atom::Rem(e, m) => e.largest().min(*m as i64 - 1),
        }
    }
}

/// The row-major index of `idx` in `shape`.
pub fn linearise(idx: &[Ix], shape: &[usize]) -> Ix {
    let mut lin = Ix::constant(0);
    for (i, &d) in idx.iter().zip(shape) {
        lin = lin.scale(d as i64).add(i);
    }
    lin
}

/// The multi-index in `shape` of the row-major index `lin`.
pub fn delinearise(lin: &Ix, shape: &[usize]) -> Vec<Ix> {
    let mut inner = 1u64;
    let mut idx = vec![Ix::constant(0); shape.len()];
    for k in (0..shape.len()).rev() {
        idx[k] = lin.div(inner).rem(shape[k] as u64);
        inner *= shape[k] as u64;
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: usize, extent: u64) -> Ix {
        Ix::var(Var { id, extent })
    }

    #[test]
    fn split_then_merge_cancels() {
        let (h, d) = (v(0, 4), v(1, 8));
        let merged = linearise(&[h.clone(), d.clone()], &[4, 8]);
        let back = delinearise(&merged, &[4, 8]);
        assert_eq!(back, vec![h, d]);
    }

    #[test]
    fn merge_of_a_row_index_keeps_its_division() {
        let r = v(0, 12);
        let idx = delinearise(&r, &[3, 4]);
        assert_eq!(idx[0].terms.len(), 1);
        assert!(matches!(idx[0].terms[0].1, Atom::Div(_, 4)));
        assert!(matches!(idx[1].terms[0].1, Atom::Rem(_, 4)));
        assert_eq!(linearise(&idx, &[3, 4]).largest(), 11);
    }

    #[test]
    fn only_non_negative_sums_below_two_to_the_31_fit_32_bits() {
        let row = v(0, 1 << 20);
        assert!(delinearise(&row, &[1 << 10, 1 << 10]).iter().all(Ix::fits_32_bits));
        assert!(row.scale(2048).fits_32_bits(), "(2²⁰ − 1) · 2¹¹ is below 2³¹");
        assert!(!row.scale(2049).fits_32_bits(), "(2²⁰ − 1) · 2049 is not");
        assert!(!v(1, 1 << 32).rem(7).fits_32_bits(), "the remainder's operand is wide");
        assert!(!row.add(&v(1, 8).scale(-1)).fits_32_bits(), "a negative term");
        assert!(!row.add(&Ix::constant(-1)).fits_32_bits(), "a negative constant");
    }

    /// A lane of a vector, `8·g + l`, split by a reshape into 64s: the quotient is the
    /// group's alone, and the remainder keeps the lane's offset outside any division.
    #[test]
    fn a_common_factor_leaves_the_lane_outside_the_division() {
        let g = v(0, 1536 / 8);
        for l in 0..8 {
            let lane = g.scale(8).add(&Ix::constant(l));
            assert_eq!(lane.div(64), g.div(8), "lane {l}");
            assert_eq!(lane.rem(64), g.rem(8).scale(8).add(&Ix::constant(l)), "lane {l}");
        }
        // Every value agrees with plain integer division (a sum of two variables too).
        let (x, y) = (v(1, 5), v(2, 3));
        let e = x.scale(6).add(&y.scale(9)).add(&Ix::constant(2));
        for (xv, yv) in (0..5).flat_map(|a| (0..3).map(move |b| (a, b))) {
            let value = 6 * xv + 9 * yv + 2;
            let at = |ix: &Ix| evaluate(ix, &[(1, xv), (2, yv)]);
            assert_eq!(at(&e.div(12)), value / 12);
            assert_eq!(at(&e.rem(12)), value % 12);
        }
    }

    /// The value of `ix` with the loop variables `values` (id, value).
    fn evaluate(ix: &Ix, values: &[(usize, i64)]) -> i64 {
        let atom = |a: &Atom| match a {
            Atom::Var(var) => values.iter().find(|(id, _)| *id == var.id).map_or(0, |&(_, x)| x),
            Atom::Div(e, d) => evaluate(e, values).div_euclid(*d as i64),
            Atom::Rem(e, m) => evaluate(e, values).rem_euclid(*m as i64),
        };
        ix.constant + ix.terms.iter().map(|(c, a)| c * atom(a)).sum::<i64>()
    }

    #[test]
    fn unit_extents_vanish() {
        assert_eq!(v(3, 1).as_constant(), Some(0));
        assert_eq!(v(0, 5).add(&Ix::constant(2)).div(8).as_constant(), Some(0));
        assert_eq!(v(0, 5).add(&Ix::constant(4)).div(8).as_constant(), None);
        assert_eq!(v(0, 5).div(8).as_constant(), Some(0));
    }
}
