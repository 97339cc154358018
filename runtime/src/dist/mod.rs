//! Jobs of several processes: where each stands ([`world`]), how they meet and exchange
//! values on the CPU ([`tcp`]), and their tensor- and data-parallel groups ([`mesh`]). Launchers (`hyb train --nproc-per-node`, torchrun, Slurm)
//! start the processes; every rank runs the same compiled program on its part of the work.

pub mod mesh;
pub mod tcp;
pub mod world;

pub use mesh::Mesh;
pub use tcp::{CommError, TcpGroup, DEFAULT_TIMEOUT};
pub use world::{World, WorldError};
