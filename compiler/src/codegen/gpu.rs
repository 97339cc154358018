//! PTX for the H200 (sm_90): each nest a `gpu.func` kernel in one `gpu.module`, lowered by
//! MLIR's NVVM pipeline with the chip and PTX version given explicitly, the PTX text taken
//! from the resulting `gpu.binary`.
