//! The static arena: every buffer gets an offset such that no two buffers live at the same
//! time overlap. Persistent buffers (weights, optimizer state, inputs) live throughout, so
//! they are stacked first; the others are placed largest first at the lowest offset above
//! them that is free over their lifetime.
//!
//! Finding what a buffer may not overlap is the costly part: the placed buffers live in
//! buckets of launches, so a query visits only the buffers live near its own lifetime, not
//! every buffer placed before it (a 34B training step has tens of thousands).

use super::Buffer;

/// Offsets are aligned for 16-byte vector access and the GEMM library's 256-byte rule.
pub const ALIGN: usize = 256;

/// Launches per bucket of the lifetime index.
const BUCKET: usize = 32;

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

/// Assigns `offset` to every buffer.
pub fn assign(buffers: &mut [Buffer]) {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (!buffers[i].persistent(), std::cmp::Reverse(buffers[i].bytes), buffers[i].first, i));
    let mut base = 0;
    let split = order.iter().position(|&i| !buffers[i].persistent()).unwrap_or(order.len());
    for &i in &order[..split] {
        buffers[i].offset = base;
        base = align(base + buffers[i].bytes);
    }
    let end = buffers.iter().map(|b| b.last).max().unwrap_or(0);
    let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); end / BUCKET + 1];
    // The query that last saw each buffer, so one found in several buckets counts once.
    let mut seen = vec![usize::MAX; buffers.len()];
    let mut busy: Vec<(usize, usize)> = Vec::new();
    for &i in &order[split..] {
        let (first, last, bytes) = (buffers[i].first, buffers[i].last, buffers[i].bytes);
        busy.clear();
        for bucket in &buckets[first / BUCKET..=last / BUCKET] {
            for &j in bucket {
                let b = &buffers[j];
                if seen[j] != i {
                    seen[j] = i;
                    if b.first <= last && first <= b.last {
                        busy.push((b.offset, b.offset + b.bytes));
                    }
                }
            }
        }
        busy.sort_unstable();
        let mut offset = base;
        for &(start, stop) in &busy {
            if start >= offset + bytes {
                break;
            }
            offset = offset.max(align(stop));
        }
        buffers[i].offset = offset;
        for bucket in &mut buckets[first / BUCKET..=last / BUCKET] {
            bucket.push(i);
        }
    }
}

/// The arena's size: the end of the highest buffer.
pub fn size(buffers: &[Buffer]) -> usize {
    buffers.iter().map(|b| b.offset + b.bytes).max().unwrap_or(0)
}
