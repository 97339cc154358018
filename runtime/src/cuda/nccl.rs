//! NCCL communicators for a job's GPU ranks: one for the rank's tensor-parallel group, one
//! for its data-parallel group ([`crate::dist::Mesh`]), and one for each sub-group of
//! tensor-parallel ranks that hold the same part of a value split into fewer parts than
//! ranks (a duplicated key/value head). The ranks have already met over TCP, so NCCL's
//! unique id travels that way: the group's first rank makes it, the others receive it, and
//! every rank then joins the communicator on its GPU. Collectives are queued on the
//! device's compute stream, in order with the step's kernels, or (the replicas' exchanges)
//! on its exchange stream, in order with each other; either way they are captured in the
//! step's CUDA graph like any launch.

use super::{CudaError, Device};
use crate::cpu::Axis;
use crate::dist::{Mesh, TcpGroup};
use cudarc::nccl::{result, sys};
use hyb_dsl::value::DType;
use std::ffi::c_void;

/// One NCCL communicator: this rank's handle to its group.
struct Communicator {
    raw: sys::ncclComm_t,
    rank: usize,
    size: usize,
}

// Safety: the handle is only used to queue collectives on the device's stream, from the
// thread that runs the program (the program sits behind a lock).
unsafe impl Send for Communicator {}
unsafe impl Sync for Communicator {}

impl Drop for Communicator {
    fn drop(&mut self) {
        // Safety: made in `Communicator::join`, destroyed once, after the stream's work
        // (every run synchronises before it returns).
        let _ = unsafe { result::comm_destroy(self.raw) };
    }
}

impl Communicator {
    /// Joins the NCCL communicator of `group` on `device`, its unique id sent from the
    /// group's first rank over the group's TCP links.
    fn join(device: &Device, group: &mut TcpGroup, what: &str) -> Result<Communicator, CudaError> {
        Communicator::join_sharing(device, group, 1, what)
    }

    /// Joins the communicator of this rank's sub-group of `group` when its ranks are cut
    /// into `parts` runs of consecutive ranks (every rank of `group` calls it): each run's
    /// first rank makes the run's unique id, and all ids travel over `group`'s links.
    fn join_sharing(
        device: &Device,
        group: &mut TcpGroup,
        parts: usize,
        what: &str,
    ) -> Result<Communicator, CudaError> {
        let failed = |e: String| CudaError::Nccl(format!("{what}: {e}"));
        let per = group.size() / parts;
        let (rank, size, first) = (group.rank() % per, per, group.rank() - group.rank() % per);
        let id = if rank == 0 {
            let id = result::get_uniqueid().map_err(|e| failed(format!("making the unique id: {e:?}")))?;
            id.internal.iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        let ids = group.all_gather_bytes(&id).map_err(|e| failed(format!("sending the unique id: {e}")))?;
        let internal: [std::ffi::c_char; 128] = ids[first]
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| failed(format!("rank {first} sent a unique id of {} bytes, not 128", ids[first].len())))?;
        device.context.bind_to_thread().map_err(|e| CudaError::driver("making the GPU current", e))?;
        let mut raw = std::mem::MaybeUninit::uninit();
        let (n, r) = (size as std::ffi::c_int, rank as std::ffi::c_int);
        // Safety: `raw` is written by NCCL before it is read; the id is the group's.
        unsafe { result::comm_init_rank(raw.as_mut_ptr(), n, sys::ncclUniqueId { internal }, r) }
            .map_err(|e| failed(format!("joining the communicator as rank {rank} of {size}: {e:?}")))?;
        Ok(Communicator { raw: unsafe { raw.assume_init() }, rank, size })
    }
}

/// The ranks an NCCL call exchanges with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peers {
    /// The rank's group on one axis of its [`Mesh`].
    Of(Axis),
    /// The tensor-parallel ranks holding the same part as this one of a value split into
    /// this many parts.
    Sharing(usize),
}

/// A rank's communicators, one per axis of its [`Mesh`] and one per sub-group its program
/// exchanges within.
pub struct Communicators {
    tensor: Communicator,
    data: Communicator,
    /// By number of parts.
    sharing: Vec<(usize, Communicator)>,
}

impl Communicators {
    /// The communicators of `mesh`'s two groups on `device`, and of the tensor-parallel
    /// sub-groups for each number of parts in `sharing`. Every rank of the job must call
    /// it, with the same `sharing` (the same program), in the same order of groups.
    pub fn join(device: &Device, mesh: &mut Mesh, sharing: &[usize]) -> Result<Communicators, CudaError> {
        // Safety: only tries to open the library; cudarc panics on a missing one otherwise.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::NoLibrary(
                "NCCL (libnccl.so; the nvidia-nccl wheel names it libnccl.so.2: link it)",
            ));
        }
        let tensor = Communicator::join(device, &mut mesh.tensor, "the tensor-parallel group")?;
        let data = Communicator::join(device, &mut mesh.data, "the data-parallel group")?;
        let mut joined = Vec::new();
        for &parts in sharing {
            if parts == 0 || !mesh.tensor.size().is_multiple_of(parts) {
                let size = mesh.tensor.size();
                return Err(CudaError::Nccl(format!("{parts} parts do not group the {size} tensor-parallel ranks")));
            }
            let what = format!("the tensor-parallel ranks sharing one of {parts} parts");
            joined.push((parts, Communicator::join_sharing(device, &mut mesh.tensor, parts, &what)?));
        }
        Ok(Communicators { tensor, data, sharing: joined })
    }

    fn of(&self, axis: Axis) -> &Communicator {
        match axis {
            Axis::Tensor => &self.tensor,
            Axis::Data => &self.data,
        }
    }

    fn peers(&self, peers: Peers) -> Result<&Communicator, CudaError> {
        match peers {
            Peers::Of(axis) => Ok(self.of(axis)),
            Peers::Sharing(parts) => self.sharing.iter().find(|(p, _)| *p == parts).map(|(_, c)| c).ok_or_else(|| {
                CudaError::Internal(format!("no communicator for the ranks sharing one of {parts} parts"))
            }),
        }
    }

    /// This rank's place on `axis`.
    pub fn rank(&self, axis: Axis) -> usize {
        self.of(axis).rank
    }

    pub fn size(&self, axis: Axis) -> usize {
        self.of(axis).size
    }
}

/// What an NCCL call does with its contiguous buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// `count` elements summed over the group.
    AllReduce,
    /// `count` elements from each rank, received rank-major.
    AllGather,
    /// `count` elements of the sum kept by each rank: its block of the rank-major input.
    ReduceScatter,
}

/// One NCCL collective over arena bytes: the queued form of a collective launch, after the
/// copies that give it contiguous buffers.
#[derive(Clone, Debug)]
pub struct Collective {
    pub exchange: Exchange,
    pub peers: Peers,
    /// Byte offsets in the arena.
    pub send: usize,
    pub recv: usize,
    pub count: usize,
    pub dtype: DType,
}

impl Collective {
    /// Queues the collective on `stream`.
    pub fn queue(
        &self,
        stream: cudarc::driver::sys::CUstream,
        comms: &Communicators,
        base: u64,
    ) -> Result<(), CudaError> {
        let comm = comms.peers(self.peers)?;
        let dtype = match self.dtype {
            DType::F32 => sys::ncclDataType_t::ncclFloat32,
            DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
            other => return Err(CudaError::Unsupported(format!("a {other:?} collective"))),
        };
        let send = (base + self.send as u64) as *const c_void;
        let recv = (base + self.recv as u64) as *mut c_void;
        let stream = stream as sys::cudaStream_t;
        let sum = sys::ncclRedOp_t::ncclSum;
        // Safety: both ranges lie inside the arena (the builder laid them out there) and
        // hold `count` elements, times the group's size for a gathered receive or a
        // scattered send.
        let queued = unsafe {
            match self.exchange {
                Exchange::AllReduce => result::all_reduce(send, recv, self.count, dtype, sum, comm.raw, stream),
                Exchange::AllGather => result::all_gather(send, recv, self.count, dtype, comm.raw, stream),
                Exchange::ReduceScatter => result::reduce_scatter(send, recv, self.count, dtype, sum, comm.raw, stream),
            }
        };
        queued.map(|_| ()).map_err(|e| CudaError::Nccl(format!("{:?} over {:?}: {e:?}", self.exchange, self.peers)))
    }
}
