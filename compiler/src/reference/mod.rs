//! The reference interpreter: evaluates any [`Graph`] on the CPU, node by node, in float64
//! (the oracle every kernel and rewrite is checked against) or float32.

pub mod tensor;

use crate::ir::{Graph, Op};
use crate::ops::{Prim, Primitive, Sizes};
use hyb_dsl::dim::Dim;
use std::collections::HashMap;
pub use tensor::{Real, Tensor};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunError {
    #[error("missing weight `{0}`")]
    MissingParam(String),
    #[error("weight `{name}` has shape {got:?} but the model declares {expected:?}")]
    ParamShape { name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("input `{name}` has shape {got:?}, which does not fit {expected}")]
    InputShape { name: String, expected: String, got: Vec<usize> },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: f64, vocab: usize },
    #[error("the program splits a dimension into `{0}`, which the inputs do not divide")]
    Indivisible(String),
    #[error("{0}: the inputs are too short for the program")]
    OutOfRange(String),
    /// A generated kernel refused the views the program gave it (a planner bug, caught
    /// before any code ran).
    #[error("generated kernel: {0}")]
    Kernel(String),
    /// Another process of the job failed, or could not be reached, during a collective.
    #[error("{0}")]
    Collective(String),
    /// The host could not give the program its memory.
    #[error("the program needs {0:.2} GiB of host memory, which could not be allocated")]
    OutOfMemory(f64),
}

/// Runs a graph. `params` are keyed by parameter name, `inputs` by input name; returns the
/// graph's outputs.
pub fn run<T: Real>(
    g: &Graph,
    params: &HashMap<String, Tensor<T>>,
    inputs: &HashMap<String, Tensor<T>>,
) -> Result<Vec<Tensor<T>>, RunError> {
    Ok(run_ranks(g, &[params], &[inputs])?.remove(0))
}

/// Runs a tensor-parallel program on simulated ranks in one process: rank `r` holds
/// `params[r]` (its shards) and reads `inputs[r]`; collectives exchange values between the
/// ranks in lockstep. Returns each rank's outputs.
pub fn run_ranks<T: Real>(
    g: &Graph,
    params: &[&HashMap<String, Tensor<T>>],
    inputs: &[&HashMap<String, Tensor<T>>],
) -> Result<Vec<Vec<Tensor<T>>>, RunError> {
    let ranks = params.len();
    assert_eq!(ranks, inputs.len(), "one input map per rank");
    let symbols = check_inputs(g, inputs[0])?;
    let bind = |s: &str| Dim::bind_parts(s, &|name| symbols.get(name).copied());
    let mut last_use = vec![0usize; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &x in &n.inputs {
            last_use[x] = i;
        }
    }
    for &o in &g.outputs {
        last_use[o] = usize::MAX;
    }
    let mut values: Vec<Vec<Option<Tensor<T>>>> = vec![vec![None; g.nodes.len()]; ranks];
    // Outputs after the first of multi-output kernels and primitives, until their `Output`
    // nodes read them.
    let mut extra: Vec<HashMap<(usize, usize), Tensor<T>>> = vec![HashMap::new(); ranks];
    let sizes = Sizes::new(&bind);
    for (i, n) in g.nodes.iter().enumerate() {
        if let Op::Prim(prim) = &n.op {
            let xs: Vec<Vec<&Tensor<T>>> = (0..ranks)
                .map(|r| n.inputs.iter().map(|&x| values[r][x].as_ref().expect("inputs are live")).collect())
                .collect();
            if matches!(prim, Prim::Embedding(_)) {
                check_ids(xs[0][0], xs[0][1])?;
            }
            let outs = if prim.is_collective() {
                prim.eval_ranks(&xs, sizes)
            } else {
                xs.iter().map(|x| prim.eval(x, sizes)).collect()
            };
            for (r, rank_outs) in outs.into_iter().enumerate() {
                let mut rank_outs = rank_outs.into_iter();
                values[r][i] = rank_outs.next();
                for (j, t) in rank_outs.enumerate() {
                    extra[r].insert((i, j + 1), t);
                }
            }
            free(&mut values, n, i, &last_use);
            continue;
        }
        for r in 0..ranks {
            let v = match (&n.op, &n.inputs[..]) {
                (Op::Output(k), &[source]) => extra[r].remove(&(source, *k)).expect("each output is read once"),
                (Op::Kernel(k), _) => {
                    let args = kernel_args(n, &values[r]);
                    let mut outs = run(&k.body, &HashMap::new(), &args)?.into_iter();
                    let first = outs.next().expect("a first output");
                    for (j, t) in outs.enumerate() {
                        extra[r].insert((i, j + 1), t);
                    }
                    first
                }
                _ => eval_leaf(g, n, params[r], inputs[r])?,
            };
            values[r][i] = Some(v);
        }
        free(&mut values, n, i, &last_use);
    }
    Ok(values
        .into_iter()
        .map(|mut v| g.outputs.iter().map(|&o| v[o].take().expect("outputs are kept")).collect())
        .collect())
}

/// A kernel body's inputs `0`, `1`, … from the node's inputs.
fn kernel_args<T: Real>(n: &crate::ir::Node, values: &[Option<Tensor<T>>]) -> HashMap<String, Tensor<T>> {
    n.inputs.iter().enumerate().map(|(j, &x)| (j.to_string(), values[x].clone().expect("inputs are live"))).collect()
}

/// Drops the values node `i` read for the last time.
fn free<T>(values: &mut [Vec<Option<Tensor<T>>>], n: &crate::ir::Node, i: usize, last_use: &[usize]) {
    for &x in &n.inputs {
        if last_use[x] == i {
            for v in values.iter_mut() {
                v[x] = None;
            }
        }
    }
}

/// The value of an input, parameter or constant on one rank.
fn eval_leaf<T: Real>(
    g: &Graph,
    n: &crate::ir::Node,
    params: &HashMap<String, Tensor<T>>,
    inputs: &HashMap<String, Tensor<T>>,
) -> Result<Tensor<T>, RunError> {
    Ok(match &n.op {
        Op::Input(name) => inputs.get(name).cloned().ok_or_else(|| RunError::MissingInput(name.clone()))?,
        Op::Param(p) => {
            let spec = &g.params[*p];
            let w = params.get(&spec.name).ok_or_else(|| RunError::MissingParam(spec.name.clone()))?;
            if w.shape != spec.shape {
                return Err(RunError::ParamShape {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    got: w.shape.clone(),
                });
            }
            w.clone()
        }
        Op::Constant(c) => Tensor::scalar(T::of(*c)),
        Op::Prim(_) | Op::Kernel(_) | Op::Output(_) => unreachable!("computed nodes are evaluated in run_ranks"),
    })
}

/// Every id is a row of the table.
pub fn check_ids<T: Real>(table: &Tensor<T>, ids: &Tensor<T>) -> Result<(), RunError> {
    let vocab = table.shape[0];
    match ids.data.iter().find(|id| id.f64() < 0.0 || id.f64() >= vocab as f64 || id.f64().fract() != 0.0) {
        Some(&id) => Err(RunError::TokenOutOfRange { id: id.f64(), vocab }),
        None => Ok(()),
    }
}

/// Checks, without running anything, that `g` can run on inputs shaped like `inputs`: every
/// size the checker left to run time is whole and not negative, and every slice lies inside
/// its dimension. Returns the sizes of the symbols.
pub fn check_inputs<T: Real>(g: &Graph, inputs: &HashMap<String, Tensor<T>>) -> Result<HashMap<String, i64>, RunError> {
    let symbols = bind_symbols(g, inputs)?;
    let bind = |s: &str| Dim::bind_parts(s, &|name| symbols.get(name).copied());
    for n in &g.nodes {
        if let Some(d) = n.ty.shape.iter().find(|d| d.eval(&bind).is_none()) {
            return Err(RunError::Indivisible(d.to_string()));
        }
        check_sizes(g, n, &bind, &symbols)?;
    }
    Ok(symbols)
}

/// Sizes and slice bounds that depend on the inputs' sizes (`x[:, -100]` is `T - 100`),
/// which the checker cannot decide: a negative size or a slice outside its dimension is an
/// error before anything runs.
fn check_sizes(
    g: &Graph,
    n: &crate::ir::Node,
    bind: &dyn Fn(&str) -> Option<i64>,
    symbols: &HashMap<String, i64>,
) -> Result<(), RunError> {
    let at = || {
        let mut s: Vec<String> = symbols.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        s.sort();
        s.join(", ")
    };
    if let Some(d) = n.ty.shape.iter().find(|d| d.eval(bind).is_some_and(|v| v < 0)) {
        return Err(RunError::OutOfRange(format!("dimension `{d}` is negative with {}", at())));
    }
    if let Op::Prim(Prim::Slice(s)) = &n.op {
        let x = &g.nodes[n.inputs[0]].ty.shape;
        let axis = s.axis_of(x.len());
        let (a, b, len) = (s.start.eval(bind), s.end.eval(bind), x[axis].eval(bind));
        if let (Some(a), Some(b), Some(len)) = (a, b, len) {
            if a < 0 || a > b || b > len {
                return Err(RunError::OutOfRange(format!(
                    "slice {}:{} ({a}:{b}) is outside dimension {axis}, of size {} = {len}, with {}",
                    s.start,
                    s.end,
                    x[axis],
                    at()
                )));
            }
        }
    }
    Ok(())
}

/// Binds the symbolic dimensions of the inputs (`B`, `T`) to the sizes actually given.
fn bind_symbols<T: Real>(g: &Graph, inputs: &HashMap<String, Tensor<T>>) -> Result<HashMap<String, i64>, RunError> {
    let mut out = HashMap::new();
    for (node, name) in g.input_nodes() {
        let x = inputs.get(name).ok_or_else(|| RunError::MissingInput(name.to_string()))?;
        let want = &g.nodes[node].ty.shape;
        let mismatch = || RunError::InputShape {
            name: name.to_string(),
            expected: format!("[{}]", want.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
            got: x.shape.clone(),
        };
        if want.len() != x.rank() || x.shape.contains(&0) {
            return Err(mismatch());
        }
        for (d, &size) in want.iter().zip(&x.shape) {
            let size = size as i64;
            match d.as_const() {
                Some(c) if c != size => return Err(mismatch()),
                Some(_) => {}
                None => {
                    let sym = d.to_string();
                    if *out.entry(sym).or_insert(size) != size {
                        return Err(mismatch());
                    }
                }
            }
        }
    }
    Ok(out)
}
