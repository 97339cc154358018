//! The hyb runtime: weights on disk, Hugging Face interchange, and executors.

pub mod atomic;
pub mod cpu;
pub mod cuda;
pub mod dist;
pub mod generate;
pub mod hf;
pub mod mup;
pub mod plot;
pub mod train;
pub mod weights;
