//! Rewrite rules. Plain equalities are egg patterns with conditions (`equalities`); the rules
//! a pattern cannot say (pattern recognition, GEMM merging, multi-class alternatives) are
//! functions from a matching e-node to the equalities they prove. Conditions read the
//! analysis (shapes, constants). Every rule has a property test in `tests/rewrite_rules.rs`
//! that evaluates both sides with the float64 interpreter.

pub mod algebra;
pub mod equalities;
pub mod horizontal;
pub mod patterns;

use super::lang::{as_prim, Ctx, EGraph, ENode};
use crate::ops::Prim;
use egg::{Applier, Id, PatternAst, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};

/// One rule, by name: plain equalities as egg patterns with conditions, or a hand-written
/// applier for what a pattern cannot say.
#[derive(Clone, Copy)]
pub struct Rule {
    pub name: &'static str,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// Patterns over the operators an e-graph holds (operators carry their attributes, so
    /// a pattern is instantiated per operator), each with its condition.
    Equalities(fn(&'static str, &Ctx) -> Vec<Rewrite<ENode, Ctx>>),
    /// Nodes applying a primitive `on` accepts are handed to `apply`, which adds the
    /// equivalent expression and returns the pairs of classes it proved equal.
    Custom { on: fn(&Prim) -> bool, apply: fn(&mut EGraph, Id, &ENode) -> Vec<(Id, Id)> },
}

impl Rule {
    pub const fn equalities(name: &'static str, rewrites: fn(&'static str, &Ctx) -> Vec<Rewrite<ENode, Ctx>>) -> Rule {
        Rule { name, kind: Kind::Equalities(rewrites) }
    }

    pub const fn custom(
        name: &'static str,
        on: fn(&Prim) -> bool,
        apply: fn(&mut EGraph, Id, &ENode) -> Vec<(Id, Id)>,
    ) -> Rule {
        Rule { name, kind: Kind::Custom { on, apply } }
    }

    /// The rule's egg rewrites for an e-graph whose analysis is `ctx`.
    pub fn rewrites(&self, ctx: &Ctx) -> Vec<Rewrite<ENode, Ctx>> {
        match self.kind {
            // Each instance is its own rewrite to egg, named `rule#i`.
            Kind::Equalities(make) => make(self.name, ctx)
                .into_iter()
                .enumerate()
                .map(|(i, mut rw)| {
                    rw.name = format!("{}#{i}", self.name).into();
                    rw
                })
                .collect(),
            Kind::Custom { on, apply } => {
                let custom = Custom { name: self.name, on, apply };
                vec![Rewrite::new(self.name, custom, custom).expect("custom rules bind no variables")]
            }
        }
    }

    /// Whether egg's rewrite `name` is an instance of this rule whose applications egg
    /// counts (a custom applier counts its own unions).
    pub fn counts(&self, name: &str) -> bool {
        matches!(self.kind, Kind::Equalities(_))
            && name.strip_prefix(self.name).is_some_and(|rest| rest.starts_with('#'))
    }
}

/// A hand-written rule as egg's searcher and applier.
#[derive(Clone, Copy)]
struct Custom {
    name: &'static str,
    on: fn(&Prim) -> bool,
    apply: fn(&mut EGraph, Id, &ENode) -> Vec<(Id, Id)>,
}

impl Custom {
    fn triggers(&self, eg: &EGraph, n: &ENode) -> bool {
        as_prim(eg, n).is_some_and(self.on)
    }
}

impl Searcher<ENode, Ctx> for Custom {
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

impl Applier<ENode, Ctx> for Custom {
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
    let mut simplify = equalities::rules();
    simplify.extend(algebra::rules());
    simplify.extend(patterns::rules());
    let mut fuse = simplify.clone();
    fuse.extend(horizontal::rules());
    vec![simplify, fuse]
}

/// Every rule, for tests and documentation.
pub fn all() -> Vec<Rule> {
    let mut r = equalities::rules();
    r.extend(algebra::rules());
    r.extend(patterns::rules());
    r.extend(horizontal::rules());
    r
}
