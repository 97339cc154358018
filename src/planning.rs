//! The flags that shape a plan (`hyb compile`, `hyb explain`, `hyb train`): activation
//! recompute and the device memory the plan must fit.

use hyb_compiler::pipeline::Sizing;
use hyb_compiler::plan::Recompute;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RecomputeFlag {
    /// Keep every activation the backward pass reads.
    None,
    /// Recompute pointwise values and norms whose inputs are kept anyway.
    Selective,
    /// Keep only each layer's input; recompute the rest of the layer.
    Full,
    /// The least recompute that fits --device-memory (none without it).
    Auto,
}

#[derive(clap::Args, Clone, Debug)]
pub struct PlanArgs {
    /// What the backward pass recomputes instead of keeping.
    #[arg(long, value_enum, default_value_t = RecomputeFlag::Auto)]
    pub recompute: RecomputeFlag,
    /// Refuse a plan that does not fit in this much memory per device (e.g. `80GiB`), and
    /// let `--recompute auto` fit it.
    #[arg(long, value_parser = crate::values::byte_size)]
    pub device_memory: Option<u64>,
}

impl PlanArgs {
    pub fn recompute(&self) -> Recompute {
        match self.recompute {
            RecomputeFlag::None => Recompute::None,
            RecomputeFlag::Selective => Recompute::Selective,
            RecomputeFlag::Full => Recompute::Full,
            RecomputeFlag::Auto => Recompute::Auto,
        }
    }

    pub fn sizing(&self, batch: usize, seq: usize) -> Sizing {
        Sizing { batch, seq, recompute: self.recompute(), budget: self.device_memory }
    }
}
