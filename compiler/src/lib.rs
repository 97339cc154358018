//! The hyb compiler: checked models become typed tensor graphs (`ir`), built by `elaborate`
//! and given meaning by the float64 `reference` interpreter through `ops`.

pub mod autodiff;
pub mod elaborate;
pub mod explain;
pub mod ir;
pub mod ops;
pub mod pipeline;
pub mod reference;
pub mod rewrite;
pub mod shard;
pub mod training;
