//! Packed rows: the forward graph for batches whose rows hold several documents end to
//! end, so that no token is padding and every document is trained as if it were alone.
//!
//! Only three operations carry information between tokens (the same three that decoding
//! caches): attention, the causal conv1d and the SSD scan; and RoPE depends on a token's
//! place. Each is replaced by its `document_*` twin, which reads a new graph input,
//! `positions [B, T]` (each token's place in its document, 0 where one starts;
//! `ops::documents`): attention masks the keys of earlier documents, the conv's taps and
//! the scan's state restart at a document's start, RoPE rotates by the place in the
//! document. Everything else is per token, so a packed row computes exactly what its
//! documents compute one by one. The training data marks documents (`hyb train --pack`),
//! and the loss of a document's last token, whose target would be the next document's
//! first, has no weight.
//!
//! Like decoding, this finds the time-mixing operations the stdlib's layers use; a model
//! that mixes time some other way (a sum over the sequence) is not detected.

use crate::ir::{Graph, Op, TensorType};
use crate::ops::{DocumentConv1d, DocumentMask, DocumentRope, DocumentSsdScan, Prim};
use hyb_dsl::value::DType;

/// The packed graph's input holding each token's place in its document.
pub const POSITIONS: &str = "positions";

/// Why a forward graph cannot be packed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PackError {
    #[error("the model has no `ids` input of shape [B, T] to pack documents into")]
    NoIds,
    #[error("a shape of the packed graph does not fit: {0}")]
    Shape(String),
}

/// `forward` with every time-mixing operation confined to the documents of a row, and the
/// `positions` input that marks them.
pub fn packed(forward: &Graph) -> Result<Graph, PackError> {
    let ids = forward.input_nodes().find(|(_, name)| *name == "ids").map(|(n, _)| n).ok_or(PackError::NoIds)?;
    let rows = &forward.nodes[ids].ty.shape;
    if rows.len() != 2 {
        return Err(PackError::NoIds);
    }
    let mut g = Graph { params: forward.params.clone(), ..Graph::default() };
    let positions = g.add(Op::Input(POSITIONS.into()), vec![], TensorType { shape: rows.clone(), dtype: DType::F32 });
    let mut new = vec![usize::MAX; forward.nodes.len()];
    for (i, n) in forward.nodes.iter().enumerate() {
        g.scope = n.scope;
        g.origin = n.origin;
        let ins: Vec<usize> = n.inputs.iter().map(|&x| new[x]).collect();
        let apply = |g: &mut Graph, p: Prim, mut ins: Vec<usize>| {
            ins.push(positions);
            g.try_apply(p, ins).map_err(PackError::Shape)
        };
        new[i] = match &n.op {
            Op::Prim(Prim::CausalMask(_)) => apply(&mut g, DocumentMask.into(), ins)?,
            Op::Prim(Prim::Rope(r)) => apply(&mut g, DocumentRope { theta: r.theta }.into(), ins)?,
            Op::Prim(Prim::CausalConv1d(_)) => {
                let bias = ins.len() == 3;
                apply(&mut g, DocumentConv1d { bias }.into(), ins)?
            }
            Op::Prim(Prim::SsdScan(s)) => apply(&mut g, DocumentSsdScan { chunk: s.chunk.clone() }.into(), ins)?,
            _ => g.add(n.op.clone(), ins, n.ty.clone()),
        };
    }
    g.outputs = forward.outputs.iter().map(|&o| new[o]).collect();
    g.scope = 0;
    g.origin = None;
    Ok(g)
}
