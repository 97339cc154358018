//! Rewrite rules. Each rule is a function from a matching e-node to the equalities it
//! proves; conditions read the analysis (shapes, constants). Every rule has a property test
//! in `tests/rewrite_rules.rs` that evaluates both sides with the float64 interpreter.

pub mod algebra;
pub mod horizontal;
pub mod patterns;

use super::lang::{as_prim, Ctx, EGraph, ENode};
use crate::ops::Prim;
use egg::{Applier, Id, PatternAst, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};

/// One rewrite: nodes applying a primitive `on` accepts are handed to `apply`, which adds
/// the equivalent expression and returns the pairs of classes it proved equal.
#[derive(Clone, Copy)]
pub struct Rule {
    pub name: &'static str,
    pub on: fn(&Prim) -> bool,
    pub apply: fn(&mut EGraph, Id, &ENode) -> Vec<(Id, Id)>,
}

impl Rule {
    fn triggers(&self, eg: &EGraph, n: &ENode) -> bool {
        as_prim(eg, n).is_some_and(self.on)
    }

    pub fn rewrite(self) -> Rewrite<ENode, Ctx> {
        Rewrite::new(self.name, self, self).expect("rules bind no variables")
    }
}

impl Searcher<ENode, Ctx> for Rule {
    fn search_eclass_with_limit(&self, eg: &EGraph, eclass: Id, _limit: usize) -> Option<SearchMatches<'_, ENode>> {
        eg[eclass].nodes.iter().any(|n| self.triggers(eg, n)).then(|| SearchMatches {
            eclass,
            substs: vec![Subst::with_capacity(0)],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

impl Applier<ENode, Ctx> for Rule {
    fn apply_one(
        &self,
        eg: &mut EGraph,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&PatternAst<ENode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let eclass = eg.find(eclass);
        let nodes: Vec<ENode> = eg[eclass].nodes.iter().filter(|n| self.triggers(eg, n)).cloned().collect();
        let mut changed = Vec::new();
        for n in nodes {
            for (a, b) in (self.apply)(eg, eclass, &n) {
                if eg.union(a, b) {
                    *eg.analysis.fired.entry(self.name).or_default() += 1;
                    changed.push(eg.find(a));
                }
            }
        }
        changed
    }
}

/// Every rule, by phase: first simplification and pattern recognition, then horizontal
/// fusion (once multipliers have moved off the shared inputs).
pub fn phases() -> Vec<Vec<Rule>> {
    let mut simplify = algebra::rules();
    simplify.extend(patterns::rules());
    let mut fuse = simplify.clone();
    fuse.extend(horizontal::rules());
    vec![simplify, fuse]
}

/// Every rule, for tests and documentation.
pub fn all() -> Vec<Rule> {
    let mut r = algebra::rules();
    r.extend(patterns::rules());
    r.extend(horizontal::rules());
    r
}
