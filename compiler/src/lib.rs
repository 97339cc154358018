//! The hyb compiler: checked models become typed tensor graphs (`ir`), built by `elaborate`
//! and given meaning by the float64 `reference` interpreter through `ops`, the compiler's
//! op set; `cost` prices them for every stage that chooses.

pub mod artifact;
pub mod autodiff;
pub mod check;
pub mod codegen;
pub mod cost;
pub mod elaborate;
pub mod explain;
pub mod fit;
pub mod ir;
pub mod ops;
pub mod pipeline;
pub mod plan;
pub mod reference;
pub mod rewrite;
pub mod shard;
pub mod training;
