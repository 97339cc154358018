//! Checked model → [`Graph`]. The front end has already inlined blocks, unrolled the layer
//! pattern, bound every config and checked every shape while building its trace; this stage
//! turns that trace into graph nodes: scalars become constants, `split` becomes slices (so
//! every node has one output), parameters enter the manifest. Each node keeps the layer it
//! belongs to and the source span of the call it computes.

pub mod attention;
pub mod decode;
pub mod packed;

use crate::ir::{Graph, Init, Op, Origin, ParamSpec, TensorType};
use crate::ops::{Prim, Slice, OPS};
use hyb_dsl::dim::Dim;
use hyb_dsl::prims::{Arg, Kind};
use hyb_dsl::trace::{self, Trace, TraceArg};
use hyb_dsl::value::DType;
use std::collections::HashMap;

/// Builds the graph of an instantiated model.
pub fn elaborate(trace: &Trace) -> Graph {
    elaborate_outputs(trace, &trace.outputs)
}

/// As [`elaborate`], with the given trace tensors as the graph's outputs (e.g. the logits
/// followed by every layer's output, for activation statistics).
pub fn elaborate_outputs(trace: &Trace, outputs: &[usize]) -> Graph {
    let mut g = Graph::default();
    let mut node_of: HashMap<usize, usize> = HashMap::new();
    let ty = |id: usize| TensorType { shape: trace.tensors[id].shape.clone(), dtype: trace.tensors[id].dtype };
    let mut scope = vec![0u32; trace.ops.len()];
    for (i, layer) in trace.layers.iter().enumerate() {
        scope[layer.clone()].fill(i as u32 + 1);
    }
    for (k, op) in trace.ops.iter().enumerate() {
        g.scope = scope[k];
        g.origin = match op {
            trace::Op::Prim { file, span, .. } => Some(Origin { file: file.0, start: span.start, end: span.end }),
            _ => None,
        };
        match op {
            trace::Op::Input { out, name } => {
                node_of.insert(*out, g.add(Op::Input(name.clone()), vec![], ty(*out)));
            }
            trace::Op::Param { out, param } => {
                let shape = param
                    .shape
                    .iter()
                    .map(|d| {
                        d.as_const()
                            .and_then(|c| usize::try_from(c).ok())
                            .expect("checked parameter shapes are concrete")
                    })
                    .collect();
                g.params.push(ParamSpec {
                    name: param.name.clone(),
                    shape,
                    init: Init {
                        name: param.init.name.to_string(),
                        args: param.init.args.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                    },
                    role: param.role,
                    shard: None,
                    moments: None,
                });
                let idx = g.params.len() - 1;
                node_of.insert(*out, g.add(Op::Param(idx), vec![], ty(*out)));
            }
            trace::Op::Prim { prim, args, outs, .. } if prim.name == "split" => {
                let (TraceArg::Tensor(x), TraceArg::Ints(sizes), TraceArg::Int(axis)) = (&args[0], &args[1], &args[2])
                else {
                    unreachable!("split is checked")
                };
                let axis = axis.as_const().expect("a checked split has a known axis");
                let mut start = Dim::constant(0);
                for (size, out) in sizes.iter().zip(outs) {
                    let end = start.add(size).expect("checked sizes");
                    let slice = Slice { axis, start: start.clone(), end: end.clone() };
                    let n = g.add(Op::Prim(Prim::Slice(slice)), vec![node_of[x]], ty(*out));
                    node_of.insert(*out, n);
                    start = end;
                }
            }
            trace::Op::Prim { prim, args, outs, .. } => {
                let mut inputs = Vec::new();
                let mut bound = Vec::new();
                for (slot, arg) in prim.signature.iter().zip(args) {
                    bound.push(match arg {
                        TraceArg::Tensor(id) => {
                            inputs.push(node_of[id]);
                            Arg::Tensor(trace.tensors[*id].shape.clone(), trace.tensors[*id].dtype)
                        }
                        TraceArg::Tensors(ids) => {
                            inputs.extend(ids.iter().map(|id| node_of[id]));
                            Arg::Tensors(
                                ids.iter()
                                    .map(|&id| (trace.tensors[id].shape.clone(), trace.tensors[id].dtype))
                                    .collect(),
                            )
                        }
                        TraceArg::Scalar(x) => {
                            if slot.kind == Kind::TensorOrScalar {
                                let ty = TensorType { shape: vec![], dtype: DType::F32 };
                                inputs.push(g.add(Op::Constant(*x), vec![], ty));
                            }
                            Arg::Scalar(Some(*x))
                        }
                        TraceArg::Int(d) => Arg::Int(d.clone()),
                        TraceArg::Bool(b) => Arg::Bool(Some(*b)),
                        TraceArg::Str(s) => Arg::Str(Some(s.clone())),
                        TraceArg::Ints(v) => Arg::Ints(v.clone()),
                        TraceArg::Absent => Arg::Absent,
                    });
                }
                let typed = OPS
                    .bind(prim.name, &bound)
                    .expect("every traced primitive but split binds")
                    .unwrap_or_else(|e| panic!("a checked call of {} does not bind: {}", prim.name, e.message));
                let n = g.add(Op::Prim(typed), inputs, ty(outs[0]));
                node_of.insert(outs[0], n);
            }
        }
    }
    g.outputs = outputs.iter().map(|o| node_of[o]).collect();
    g.scope = 0;
    g.origin = None;
    g
}
