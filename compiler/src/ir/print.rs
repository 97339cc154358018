//! The readable text form of a graph:
//!
//! ```text
//! %3: [B, T, 64] f32 = matmul(%1, %2, transpose_a=false, transpose_b=true)
//! %4: [B, T, 64] f32 = output 1 of %3
//! ```

use super::{Graph, Kernel, KernelKind, Op};
use crate::ops::Primitive;
use std::fmt;

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.params.iter().enumerate() {
            let args: Vec<String> = p.init.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(
                f,
                "param {i} {}: {:?} init {}({}) role {}",
                p.name,
                p.shape,
                p.init.name,
                args.join(", "),
                p.role.name()
            )?;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let dims: Vec<String> = n.ty.shape.iter().map(|d| d.to_string()).collect();
            write!(f, "%{i}: [{}] {} = ", dims.join(", "), n.ty.dtype.name())?;
            match &n.op {
                Op::Input(name) => writeln!(f, "input {name}")?,
                Op::Param(p) => writeln!(f, "param {}", self.params[*p].name)?,
                Op::Constant(c) => writeln!(f, "const {c:?}")?,
                Op::Output(k) => writeln!(f, "output {k} of %{}", n.inputs[0])?,
                Op::Kernel(k) => {
                    let args: Vec<String> = n.inputs.iter().map(|i| format!("%{i}")).collect();
                    writeln!(f, "{}({}) {{ {} }}", k.kind.name(), args.join(", "), k.op_names().join(", "))?
                }
                Op::Prim(prim) => {
                    let mut parts: Vec<String> = n.inputs.iter().map(|i| format!("%{i}")).collect();
                    let attrs = prim.attrs();
                    if !attrs.is_empty() {
                        parts.push(attrs);
                    }
                    writeln!(f, "{}({})", prim.name(), parts.join(", "))?;
                }
            }
        }
        let outs: Vec<String> = self.outputs.iter().map(|o| format!("%{o}")).collect();
        writeln!(f, "return {}", outs.join(", "))
    }
}

impl KernelKind {
    pub fn name(&self) -> String {
        match self {
            KernelKind::FlashAttention { .. } => "flash_attention".into(),
            KernelKind::BitLinear => "bitlinear".into(),
            KernelKind::ConvSilu { .. } => "conv1d_silu".into(),
            KernelKind::Gemm => "gemm".into(),
            KernelKind::Fused => "fused".into(),
            KernelKind::Grad { of } => format!("{}_grad", of.name()),
        }
    }
}

impl Kernel {
    /// The primitives the kernel computes, in order (views included).
    pub fn op_names(&self) -> Vec<String> {
        self.body
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Prim(prim) => Some(prim.name().to_string()),
                Op::Kernel(k) => Some(k.kind.name()),
                _ => None,
            })
            .collect()
    }
}
