//! A job's ranks as a grid of tensor-parallel groups × data-parallel replicas, Megatron's
//! layout: rank `r` is tensor rank `r mod tp` of replica `r / tp`, so a tensor group's
//! ranks are neighbours (one node's GPUs) and a replica's gradients are summed with the
//! ranks holding the same parts in the other replicas.

use super::tcp::{CommError, TcpGroup};
use super::world::World;

/// One rank's groups: its tensor-parallel group and its data-parallel group.
pub struct Mesh {
    pub tensor: TcpGroup,
    pub data: TcpGroup,
    /// The whole job, which the groups were met through, when it is neither of them.
    world: Option<TcpGroup>,
    leads: bool,
}

impl Mesh {
    /// The groups of `world` (its rank and size) with `tp` tensor-parallel ranks per
    /// replica: a job of one kind uses `world` itself as that group, one of both meets each
    /// group at its first rank (ports after `MASTER_PORT`: the tensor groups', then the
    /// data groups').
    pub fn new(mut world: TcpGroup, tp: usize, job: &str) -> Result<Mesh, CommError> {
        let (rank, size) = (world.rank(), world.size());
        assert!(tp >= 1 && size.is_multiple_of(tp), "the caller checks that tp divides the world");
        let single = || TcpGroup::join(&World::single(), job, b"", std::time::Duration::from_secs(1)).map(|(g, _)| g);
        let dp = size / tp;
        let leads = rank == 0;
        if tp == 1 {
            return Ok(Mesh { tensor: single()?, data: world, world: None, leads });
        }
        if dp == 1 {
            return Ok(Mesh { tensor: world, data: single()?, world: None, leads });
        }
        let (t, d) = (rank % tp, rank / tp);
        let tensor_members: Vec<usize> = (d * tp..(d + 1) * tp).collect();
        let data_members: Vec<usize> = (0..dp).map(|j| j * tp + t).collect();
        let port = |k: usize| u16::try_from(1 + k).unwrap_or(u16::MAX);
        let tensor = world.subgroup(&tensor_members, port(d), job)?;
        let data = world.subgroup(&data_members, port(dp + t), job)?;
        Ok(Mesh { tensor, data, world: Some(world), leads })
    }

    /// Whether this is the job's rank 0 (the one that writes).
    pub fn leads(&self) -> bool {
        self.leads
    }

    /// Tells every rank this one can reach that it stops, and why.
    pub fn abort(&mut self, reason: &str) {
        self.tensor.abort(reason);
        self.data.abort(reason);
        if let Some(world) = self.world.as_mut() {
            world.abort(reason);
        }
    }
}
