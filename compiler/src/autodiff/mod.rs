//! Reverse-mode differentiation as a graph transform: the backward pass is appended to the
//! graph as ordinary nodes (so later stages fuse and compile it like the forward pass). One
//! vector-Jacobian rule per primitive lives next to its meaning in `ops`. Backward nodes
//! take the scope and source origin of the forward node they differentiate.

mod accumulate;

use crate::ir::{Graph, Kernel, KernelKind, NodeId, Op};
use crate::ops::{Binary, NoGradient, Primitive};

/// Appends the gradient of the scalar `loss` with respect to each node in `wrt` and returns
/// the gradient nodes, in order. A node `loss` does not depend on gets a zero gradient. A
/// gradient primitive on the path is an error: second-order gradients are not defined.
pub fn gradients(g: &mut Graph, loss: NodeId, wrt: &[NodeId]) -> Result<Vec<NodeId>, NoGradient> {
    let reached = reached_gradients(g, loss, wrt)?;
    Ok(wrt.iter().zip(reached).map(|(&w, grad)| grad.unwrap_or_else(|| g.scale(w, 0.0))).collect())
}

/// [`gradients`], with `None` for a node no gradient reaches (an integer-valued input such
/// as a packed row's positions, which only selects).
fn reached_gradients(g: &mut Graph, loss: NodeId, wrt: &[NodeId]) -> Result<Vec<Option<NodeId>>, NoGradient> {
    assert!(g.shape(loss).is_empty(), "the loss must be a scalar");
    let n = loss + 1;
    let mut needs = vec![false; n];
    for &w in wrt {
        if w < n {
            needs[w] = true;
        }
    }
    for i in 0..n {
        if !needs[i] && g.nodes[i].inputs.iter().any(|&x| needs[x]) {
            needs[i] = true;
        }
    }
    // Every node's gradient contributions, summed when the walk reaches the node.
    let mut adjoint: Vec<Vec<NodeId>> = vec![Vec::new(); n];
    let dtype = g.nodes[loss].ty.dtype;
    adjoint[loss].push(g.constant_of(1.0, dtype));
    for i in (0..n).rev() {
        if adjoint[i].is_empty() || !needs[i] || !matches!(g.nodes[i].op, Op::Prim { .. } | Op::Kernel(_)) {
            continue;
        }
        let inputs = g.nodes[i].inputs.clone();
        g.scope = g.nodes[i].scope;
        g.origin = g.nodes[i].origin;
        let dy = accumulate::sum(g, &adjoint[i]);
        adjoint[i] = vec![dy];
        let contributions = match &g.nodes[i].op {
            Op::Kernel(_) => kernel_vjp(g, i, dy)?,
            Op::Prim(p) => p.clone().vjp(g, i, dy)?,
            _ => unreachable!("only computed nodes are differentiated"),
        };
        for (x, c) in inputs.into_iter().zip(contributions) {
            let Some(c) = c.filter(|_| needs[x]) else {
                continue;
            };
            adjoint[x].push(c);
        }
    }
    let mut grads = Vec::with_capacity(wrt.len());
    for &w in wrt {
        let contributions = adjoint.get(w).cloned().unwrap_or_default();
        g.scope = g.nodes[w].scope;
        g.origin = g.nodes[w].origin;
        grads.push(match contributions[..] {
            [] => None,
            [one] => Some(one),
            _ => {
                let grad = accumulate::sum(g, &contributions);
                adjoint[w] = vec![grad];
                Some(grad)
            }
        });
    }
    g.scope = 0;
    g.origin = None;
    Ok(grads)
}

/// The gradient of a kernel with respect to each floating-point input its output depends
/// on: one kernel, with an output per such input, whose body is the kernel's own body
/// differentiated, so it recomputes what it needs of the forward pass instead of storing
/// it. A kernel with further outputs keeps them for its gradient (flash attention's rows'
/// logsumexp): the gradient kernel reads every forward output after `dy`, so its template
/// may use them instead of recomputing; its body, the meaning, does not.
fn kernel_vjp(g: &mut Graph, node: NodeId, dy: NodeId) -> Result<Vec<Option<NodeId>>, NoGradient> {
    let Op::Kernel(k) = &g.nodes[node].op else { unreachable!("called on kernels") };
    let k = (**k).clone();
    let inputs = g.nodes[node].inputs.clone();
    let mut body = k.body.clone();
    let out = body.outputs[0];
    let arity = inputs.len();
    let dy_in = body.add(Op::Input(arity.to_string()), vec![], g.nodes[dy].ty.clone());
    let weighted = body.binary(Binary::Mul, out, dy_in);
    let loss = body.sum_all(weighted);
    let wrt: Vec<NodeId> = (0..arity)
        .map(|j| {
            let name = j.to_string();
            body.input_nodes().find(|(_, n)| *n == name).map(|(id, _)| id).expect("numbered inputs")
        })
        .collect();
    let grads = reached_gradients(&mut body, loss, &wrt)?;
    let mut args = inputs.clone();
    args.push(dy);
    if k.body.outputs.len() > 1 {
        for o in 0..k.body.outputs.len() {
            let ty = k.body.nodes[k.body.outputs[o]].ty.clone();
            body.add(Op::Input((arity + 1 + o).to_string()), vec![], ty);
            args.push(output_of(g, node, o));
        }
    }
    let float: Vec<usize> =
        (0..arity).filter(|&j| g.nodes[inputs[j]].ty.dtype.is_float() && grads[j].is_some()).collect();
    let Some(&first) = float.first() else { return Ok(vec![None; arity]) };
    body.outputs = float.iter().filter_map(|&j| grads[j]).collect();
    let kind = KernelKind::Grad { of: Box::new(k.kind.clone()) };
    let ty = g.nodes[inputs[first]].ty.clone();
    let kernel = g.add(Op::Kernel(Box::new(Kernel { kind, body: body.pruned() })), args, ty);
    let mut out = vec![None; arity];
    for (k, &j) in float.iter().enumerate() {
        out[j] = Some(if k == 0 {
            kernel
        } else {
            let ty = g.nodes[inputs[j]].ty.clone();
            g.add(Op::Output(k), vec![kernel], ty)
        });
    }
    Ok(out)
}

/// The node reading output `o` of `node`: the node itself for 0, else its `Op::Output`
/// reader, added if there is none yet (an output is read through one node).
fn output_of(g: &mut Graph, node: NodeId, o: usize) -> NodeId {
    if o == 0 {
        return node;
    }
    let reader = g.nodes.iter().position(|n| n.op == Op::Output(o) && n.inputs == [node]);
    reader.unwrap_or_else(|| {
        let Op::Kernel(k) = &g.nodes[node].op else { unreachable!("called on kernels") };
        let ty = k.body.nodes[k.body.outputs[o]].ty.clone();
        g.add(Op::Output(o), vec![node], ty)
    })
}
