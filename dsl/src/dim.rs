//! Symbolic integers: polynomials with integer coefficients over named symbols.
//!
//! Dimensions and `int` configs are `Dim`s. Inside a model every config is known, so only
//! the batch and sequence symbols (`B`, `T`) remain and shape equality is decided exactly;
//! checking a block on its own leaves its configs symbolic, and two dims that are different
//! polynomials may still be equal for some config values, so only constant mismatches are
//! definite there.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "Vec<(Vec<String>, i64)>", from = "Vec<(Vec<String>, i64)>")]
pub struct Dim {
    /// monomial (sorted symbol names, with repetition) → coefficient; no zero coefficients.
    terms: BTreeMap<Vec<String>, i64>,
}

impl Dim {
    pub fn constant(c: i64) -> Dim {
        let mut terms = BTreeMap::new();
        if c != 0 {
            terms.insert(Vec::new(), c);
        }
        Dim { terms }
    }

    pub fn symbol(name: &str) -> Dim {
        Dim { terms: BTreeMap::from([(vec![name.to_string()], 1)]) }
    }

    /// One of `parts` equal parts of a lone symbol (`T` → `T/4`), for a rank's share of
    /// the sequence; `None` for anything else.
    pub fn part_of(&self, parts: i64) -> Option<Dim> {
        match self.terms.iter().next() {
            Some((m, 1)) if self.terms.len() == 1 && m.len() == 1 => Some(Dim::symbol(&format!("{}/{parts}", m[0]))),
            _ => None,
        }
    }

    /// The whole a [`Dim::part_of`] was cut from, if `parts` matches.
    pub fn whole_of(&self, parts: i64) -> Option<Dim> {
        match self.terms.iter().next() {
            Some((m, 1)) if self.terms.len() == 1 && m.len() == 1 => {
                m[0].strip_suffix(&format!("/{parts}")).map(Dim::symbol)
            }
            _ => None,
        }
    }

    /// Binds `S/k` from the binding of `S` (the sizes of [`Dim::part_of`] symbols).
    pub fn bind_parts(name: &str, bind: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        if let Some(v) = bind(name) {
            return Some(v);
        }
        let (whole, parts) = name.split_once('/')?;
        let (w, k) = (bind(whole)?, parts.parse::<i64>().ok()?);
        (k > 0 && w % k == 0).then_some(w / k)
    }

    pub fn as_const(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    /// The value with every symbol bound (e.g. `B` and `T` once the input is known).
    pub fn eval(&self, bind: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        let mut total: i64 = 0;
        for (m, c) in &self.terms {
            let mut term = *c;
            for s in m {
                term = term.checked_mul(bind(s)?)?;
            }
            total = total.checked_add(term)?;
        }
        Some(total)
    }

    pub fn is_const(&self) -> bool {
        self.as_const().is_some()
    }

    /// Overflow is reported as `None` so that hostile sizes become diagnostics, not panics.
    pub fn add(&self, other: &Dim) -> Option<Dim> {
        let mut terms = self.terms.clone();
        for (m, c) in &other.terms {
            let e = terms.entry(m.clone()).or_insert(0);
            *e = e.checked_add(*c)?;
            if *e == 0 {
                terms.remove(m);
            }
        }
        Some(Dim { terms })
    }

    pub fn neg(&self) -> Option<Dim> {
        let terms = self.terms.iter().map(|(m, c)| Some((m.clone(), c.checked_neg()?))).collect::<Option<_>>()?;
        Some(Dim { terms })
    }

    pub fn sub(&self, other: &Dim) -> Option<Dim> {
        self.add(&other.neg()?)
    }

    pub fn mul(&self, other: &Dim) -> Option<Dim> {
        let mut out = Dim::default();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &other.terms {
                let mut m: Vec<String> = ma.iter().chain(mb).cloned().collect();
                m.sort();
                let term = Dim { terms: BTreeMap::from([(m, ca.checked_mul(*cb)?)]) };
                out = out.add(&term)?;
            }
        }
        Some(out)
    }

    /// Exact division by a constant, or by an equal polynomial (`x / x = 1`).
    pub fn div_exact(&self, other: &Dim) -> Option<Dim> {
        if self == other && !self.terms.is_empty() {
            return Some(Dim::constant(1));
        }
        let d = other.as_const()?;
        if d == 0 {
            return None;
        }
        let terms = self.terms.iter().map(|(m, c)| (c % d == 0).then(|| (m.clone(), c / d))).collect::<Option<_>>()?;
        Some(Dim { terms })
    }

    /// Whether `self != other` for every value of the symbols: their difference is a nonzero
    /// constant. (Inside a model the remaining symbols are independent, so there plain
    /// inequality is already definite.)
    pub fn definitely_differs(&self, other: &Dim) -> bool {
        match self.sub(other) {
            Some(diff) => diff.as_const().is_some_and(|c| c != 0),
            None => true,
        }
    }
}

/// Serialised as a list of (monomial, coefficient) terms: formats such as JSON need string
/// map keys.
impl From<Dim> for Vec<(Vec<String>, i64)> {
    fn from(d: Dim) -> Self {
        d.terms.into_iter().collect()
    }
}

impl From<Vec<(Vec<String>, i64)>> for Dim {
    fn from(terms: Vec<(Vec<String>, i64)>) -> Self {
        let mut out = Dim::default();
        for (mut m, c) in terms {
            m.sort();
            let term = Dim { terms: BTreeMap::from([(m, c)]) };
            out = out.add(&term).unwrap_or_default();
        }
        out
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        for (i, (m, c)) in self.terms.iter().rev().enumerate() {
            let (sign, mag) = if *c < 0 { ("-", c.unsigned_abs()) } else { ("+", c.unsigned_abs()) };
            match (i, sign) {
                (0, "-") => f.write_str("-")?,
                (0, _) => {}
                _ => write!(f, " {sign} ")?,
            }
            if m.is_empty() {
                write!(f, "{mag}")?;
            } else {
                if mag != 1 {
                    write!(f, "{mag}*")?;
                }
                f.write_str(&m.join("*"))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_canonical() {
        let b = Dim::symbol("B");
        let t = Dim::symbol("T");
        let bt = b.mul(&t).unwrap();
        assert_eq!(bt, t.mul(&b).unwrap());
        let x = bt.mul(&Dim::constant(4)).unwrap().add(&Dim::constant(2)).unwrap();
        assert_eq!(x.to_string(), "4*B*T + 2");
        assert_eq!(x.sub(&x).unwrap().as_const(), Some(0));
        assert_eq!(Dim::constant(12).div_exact(&Dim::constant(5)), None);
        assert_eq!(bt.div_exact(&bt), Some(Dim::constant(1)));
        assert!(Dim::constant(3).definitely_differs(&Dim::constant(4)));
        assert!(!b.definitely_differs(&t));
        assert!(Dim::constant(i64::MAX).add(&Dim::constant(1)).is_none());
    }
}
