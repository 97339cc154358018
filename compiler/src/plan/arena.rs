//! The static arena: every buffer gets an offset such that no two buffers live at the same
//! time overlap. Persistent buffers (weights, optimizer state, inputs) come first; the
//! others are placed largest first at the lowest offset free over their lifetime.

use super::Buffer;

/// Offsets are aligned for 16-byte vector access and the GEMM library's 256-byte rule.
pub const ALIGN: usize = 256;

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

fn overlaps_in_time(a: &Buffer, b: &Buffer) -> bool {
    a.first <= b.last && b.first <= a.last
}

/// Assigns `offset` to every buffer.
pub fn assign(buffers: &mut [Buffer]) {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (!buffers[i].persistent(), std::cmp::Reverse(buffers[i].bytes), buffers[i].first, i));
    let mut placed: Vec<usize> = Vec::with_capacity(buffers.len());
    for i in order {
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| overlaps_in_time(&buffers[i], &buffers[j]))
            .map(|&j| (buffers[j].offset, buffers[j].offset + buffers[j].bytes))
            .collect();
        busy.sort_unstable();
        let mut offset = 0;
        for (start, end) in busy {
            if start >= offset + buffers[i].bytes {
                break;
            }
            offset = offset.max(align(end));
        }
        buffers[i].offset = offset;
        placed.push(i);
    }
}

/// The arena's size: the end of the highest buffer.
pub fn size(buffers: &[Buffer]) -> usize {
    buffers.iter().map(|b| b.offset + b.bytes).max().unwrap_or(0)
}
