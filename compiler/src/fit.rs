//! Fitting a plan into a device's memory: plan under the budget, and when the plan does
//! not fit, find what would — more recompute, a smaller batch or sequence, more
//! tensor-parallel ranks — by planning each alternative, so every suggestion is a plan the
//! compiler made, with its size.

use crate::ir::Graph;
use crate::pipeline::{compile, plan, Compiled, Executable, Sizing, Target};
use crate::plan::{Level, MemoryPlan, PlanError, Recompute, Role};
use crate::rewrite::Options;
use std::fmt;

/// A change to the request and the arena it plans to.
#[derive(Clone, Debug, PartialEq)]
pub struct Fix {
    /// The flag that makes it, e.g. `--recompute full` or `--batch 2`.
    pub flag: String,
    pub arena_bytes: usize,
}

/// A plan refused because its arena exceeds the device's memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub budget: usize,
    pub memory: MemoryPlan,
    pub recompute: Vec<Level>,
    /// Alternatives that fit, the least disruptive first; empty when none was found.
    pub fixes: Vec<Fix>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FitError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    DoesNotFit(Box<Refusal>),
}

/// What is being fitted: the forward graph (to compile other tensor-parallel widths) and
/// the compiled program for the requested one.
pub struct Request<'a> {
    pub forward: &'a Graph,
    pub compiled: &'a Compiled,
    pub target: &'a Target,
    pub tp: usize,
    pub options: &'a Options,
    pub sizing: Sizing,
}

/// The plan for `req`, or a refusal naming what would fit when its arena exceeds the
/// budget.
pub fn fit(req: &Request) -> Result<Executable, FitError> {
    let planned = plan(req.compiled, req.target, &req.sizing)?;
    let Some(budget) = req.sizing.budget.map(|b| b as usize) else { return Ok(planned) };
    if planned.program.memory.arena_bytes <= budget {
        return Ok(planned);
    }
    let fixes = fixes(req, budget, resident(&planned.program))?;
    Err(FitError::DoesNotFit(Box::new(Refusal {
        budget,
        memory: planned.program.memory,
        recompute: planned.program.recompute,
        fixes,
    })))
}

/// What no batch, sequence length or recompute changes: weights, their copies, optimizer
/// state.
fn resident(p: &crate::plan::Program) -> usize {
    p.buffers.iter().filter(|b| b.persistent() && b.role != Role::Input).map(|b| b.bytes).sum::<usize>()
        + p.memory.weight_copies
}

/// Alternatives that fit: full recompute; the largest halving of the batch, then of the
/// sequence, that fits with the recompute asked for (`auto` may recompute fully); the fewest
/// doublings of the tensor-parallel width, up to 8 times, that fit.
fn fixes(req: &Request, budget: usize, resident: usize) -> Result<Vec<Fix>, PlanError> {
    let training = matches!(req.target, Target::Training { .. });
    let arena = |compiled: &Compiled, sizing: &Sizing| -> Result<usize, PlanError> {
        Ok(plan(compiled, req.target, sizing)?.program.memory.arena_bytes)
    };
    let mut out = Vec::new();
    // Under `auto`, what full recompute gives is what the other changes can count on.
    let mut most = req.sizing.clone();
    if training && req.sizing.recompute != Recompute::Full {
        let full = Sizing { recompute: Recompute::Full, ..req.sizing.clone() };
        let bytes = arena(req.compiled, &full)?;
        if bytes <= budget {
            out.push(Fix { flag: "--recompute full".into(), arena_bytes: bytes });
        }
        if req.sizing.recompute == Recompute::Auto {
            most = full;
        }
    }
    // The largest halving that fits; a size the model cannot take (`T/8` at T = 4) ends the
    // search.
    let smaller = |size: usize, set: &dyn Fn(&mut Sizing, usize)| -> Option<(usize, usize)> {
        let mut s = size / 2;
        while s >= 1 && resident <= budget {
            let mut sizing = most.clone();
            set(&mut sizing, s);
            let bytes = arena(req.compiled, &sizing).ok()?;
            if bytes <= budget {
                return Some((s, bytes));
            }
            s /= 2;
        }
        None
    };
    if let Some((b, bytes)) = smaller(req.sizing.batch, &|s, b| s.batch = b) {
        out.push(Fix { flag: format!("--batch {b}"), arena_bytes: bytes });
    }
    if let Some((t, bytes)) = smaller(req.sizing.seq, &|s, t| s.seq = t) {
        out.push(Fix { flag: format!("--seq {t}"), arena_bytes: bytes });
    }
    let mut tp = req.tp * 2;
    while tp <= req.tp * 8 {
        // Splitting the weights over more ranks at best divides them: skip widths that
        // cannot fit without compiling them.
        if resident * req.tp / tp > budget {
            tp *= 2;
            continue;
        }
        let compiled = compile(req.forward, req.target, tp, req.options);
        let Ok(bytes) = arena(&compiled, &most) else { break };
        if bytes <= budget {
            out.push(Fix { flag: format!("--tp {tp}"), arena_bytes: bytes });
            break;
        }
        tp *= 2;
    }
    Ok(out)
}

/// Bytes in GiB, or MiB below one GiB.
pub fn gib(bytes: f64) -> String {
    let gib = bytes / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2} GiB")
    } else {
        format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.memory;
        let full = self.recompute.iter().filter(|&&l| l == Level::Full).count();
        let recompute = match full {
            0 if self.recompute.contains(&Level::Selective) => ", with selective recompute".to_string(),
            0 => String::new(),
            n => format!(", recomputing {n} of {} layers fully", self.recompute.len()),
        };
        writeln!(
            f,
            "the plan needs {} per device{recompute}, but the device has {}",
            gib(m.arena_bytes as f64),
            gib(self.budget as f64)
        )?;
        let b = &m.peak;
        writeln!(
            f,
            "  at its peak: weights {}, gradients {}, optimizer state {}, activations kept for backward {}, workspace {}",
            gib(b.weights as f64),
            gib(b.gradients as f64),
            gib(b.optimizer as f64),
            gib(b.saved as f64),
            gib(b.workspace as f64)
        )?;
        if self.fixes.is_empty() {
            write!(f, "  no smaller batch or sequence, full recompute or up to 8× the tensor-parallel ranks fits")
        } else {
            write!(f, "  these fit:")?;
            for fix in &self.fixes {
                write!(f, "\n    {:<36} {}", fix.flag, gib(fix.arena_bytes as f64))?;
            }
            Ok(())
        }
    }
}
