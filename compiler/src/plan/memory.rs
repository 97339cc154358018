//! What a program holds, before it runs: the arena's size, the peak of live bytes and the
//! launch where it occurs, split by what the bytes are for.

use super::{arena, Buffer, Launch, Role};
use serde::{Deserialize, Serialize};

/// Bytes by what they hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Master weights and the bf16 copies GEMMs read.
    pub weights: usize,
    pub gradients: usize,
    pub optimizer: usize,
    /// Forward values kept for the backward pass.
    pub saved: usize,
    /// Values used within a pass, and the program's inputs.
    pub workspace: usize,
}

impl Breakdown {
    pub fn total(&self) -> usize {
        self.weights + self.gradients + self.optimizer + self.saved + self.workspace
    }

    fn add(&mut self, b: &Buffer) {
        match b.role {
            Role::Weight | Role::WeightCopy => self.weights += b.bytes,
            Role::Gradient => self.gradients += b.bytes,
            Role::Optimizer => self.optimizer += b.bytes,
            Role::Saved => self.saved += b.bytes,
            Role::Input | Role::Workspace => self.workspace += b.bytes,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// The arena: every buffer, placed.
    pub arena_bytes: usize,
    /// The most bytes live at once, and their split.
    pub peak_bytes: usize,
    pub peak: Breakdown,
    /// The launch during which the peak occurs.
    pub peak_launch: usize,
    /// The copies of the weights their readers take (bf16), made each run (they share the
    /// arena with everything else, live from their first reader to their last).
    pub weight_copies: usize,
}

impl MemoryPlan {
    pub fn of(buffers: &[Buffer], launches: &[Launch]) -> MemoryPlan {
        let weight_copies: usize = buffers.iter().filter(|b| b.role == Role::WeightCopy).map(|b| b.bytes).sum();
        // Live bytes at each launch, by a sweep over lifetime starts and ends.
        let steps = launches.len().max(1);
        let mut delta: Vec<i128> = vec![0; steps + 1];
        for b in buffers {
            let bytes = b.bytes as i128;
            delta[b.first] += bytes;
            delta[b.last + 1] -= bytes;
        }
        let (mut live, mut peak_bytes, mut peak_launch) = (0i128, 0i128, 0);
        for (t, d) in delta.iter().take(steps).enumerate() {
            live += d;
            if live > peak_bytes {
                peak_bytes = live;
                peak_launch = t;
            }
        }
        let mut peak = Breakdown::default();
        for b in buffers.iter().filter(|b| b.first <= peak_launch && peak_launch <= b.last) {
            peak.add(b);
        }
        MemoryPlan {
            arena_bytes: arena::size(buffers),
            peak_bytes: peak_bytes as usize,
            peak,
            peak_launch,
            weight_copies,
        }
    }
}
