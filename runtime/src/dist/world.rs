//! Where a worker stands in a job: its rank, the world size, its GPU on the node and the
//! rendezvous address, read from the environment the way the launchers clusters use set
//! it — torchrun's (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`),
//! Slurm's (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, the first host of
//! `SLURM_JOB_NODELIST`), or `hyb train --nproc-per-node`'s, which is torchrun's. So a job
//! runs under `srun`, torchrun or hyb's own launcher with no change.

use std::collections::HashMap;

/// The port a job's rendezvous uses when neither launcher names one (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

/// One worker's place in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// The worker's index on its node: its GPU.
    pub local_rank: usize,
    /// Rank 0's host, where the rendezvous listens.
    pub master_addr: String,
    pub master_port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorldError {
    #[error("{name}={value:?} is not {what}")]
    Invalid { name: &'static str, value: String, what: &'static str },
    #[error("{0} is set but {1} is not: a launcher sets both")]
    Incomplete(&'static str, &'static str),
    #[error("rank {rank} is outside a world of {size} (ranks 0 to {})", size.saturating_sub(1))]
    RankOutOfRange { rank: usize, size: usize },
    #[error("SLURM_JOB_NODELIST={0:?} names no host")]
    NodeList(String),
}

impl World {
    /// A single process: rank 0 of 1.
    pub fn single() -> World {
        World { rank: 0, size: 1, local_rank: 0, master_addr: "127.0.0.1".into(), master_port: DEFAULT_PORT }
    }

    /// The world of this process's environment ([`World::from_vars`]).
    pub fn from_env() -> Result<Option<World>, WorldError> {
        World::from_vars(&std::env::vars().collect())
    }

    /// The world `vars` describe: torchrun's variables first, then Slurm's; `None` where
    /// neither launcher started the process. `MASTER_ADDR` and `MASTER_PORT` override
    /// Slurm's host and the default port, as they do for torchrun.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Option<World>, WorldError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let number = |name: &'static str| -> Result<Option<usize>, WorldError> {
            get(name)
                .map(|v| v.parse::<usize>().map_err(|_| WorldError::Invalid { name, value: v.into(), what: "a count" }))
                .transpose()
        };
        let (rank, size, local, host) = if let Some(rank) = number("RANK")? {
            let size = number("WORLD_SIZE")?.ok_or(WorldError::Incomplete("RANK", "WORLD_SIZE"))?;
            (rank, size, number("LOCAL_RANK")?.unwrap_or(0), None)
        } else if let Some(rank) = number("SLURM_PROCID")? {
            let size = number("SLURM_NTASKS")?.ok_or(WorldError::Incomplete("SLURM_PROCID", "SLURM_NTASKS"))?;
            let nodes = get("SLURM_JOB_NODELIST").or(get("SLURM_NODELIST"));
            let host = nodes.map(first_host).transpose()?;
            (rank, size, number("SLURM_LOCALID")?.unwrap_or(0), host)
        } else {
            return Ok(None);
        };
        if size == 0 {
            return Err(WorldError::Invalid { name: "WORLD_SIZE", value: "0".into(), what: "a world size (≥ 1)" });
        }
        if rank >= size {
            return Err(WorldError::RankOutOfRange { rank, size });
        }
        let master_addr = get("MASTER_ADDR").map(String::from).or(host).unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match get("MASTER_PORT") {
            Some(v) => v.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| WorldError::Invalid {
                name: "MASTER_PORT",
                value: v.into(),
                what: "a port (1 to 65535)",
            })?,
            None => DEFAULT_PORT,
        };
        Ok(Some(World { rank, size, local_rank: local, master_addr, master_port }))
    }
}

/// The first host of a Slurm node list: `node07` of `node07`, `gpu[03-05,09]` → `gpu03`,
/// `a[1-2],b3` → `a1`, keeping a range's zero padding.
pub fn first_host(list: &str) -> Result<String, WorldError> {
    let bad = || WorldError::NodeList(list.to_string());
    let list = list.trim();
    // The first entry ends at the first comma outside brackets.
    let mut depth = 0usize;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let entry = &list[..end];
    let host = match entry.find('[') {
        None => entry.to_string(),
        Some(open) => {
            let close = entry[open..].find(']').map(|c| open + c).ok_or_else(bad)?;
            let first = entry[open + 1..close].split(',').next().unwrap_or("");
            let low = first.split('-').next().unwrap_or("");
            if low.is_empty() || !low.chars().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            format!("{}{low}{}", &entry[..open], &entry[close + 1..])
        }
    };
    if host.is_empty() || host.contains(['[', ']', ',']) {
        return Err(bad());
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn torchrun_variables_give_the_world() {
        let w = World::from_vars(&vars(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.5"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(w, World { rank: 3, size: 8, local_rank: 1, master_addr: "10.0.0.5".into(), master_port: 1234 });
    }

    #[test]
    fn slurm_variables_give_the_world_and_the_first_host() {
        let w = World::from_vars(&vars(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "5"),
            ("SLURM_JOB_NODELIST", "gpu[07-08,12],login1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(w, World { rank: 5, size: 16, local_rank: 5, master_addr: "gpu07".into(), master_port: 29500 });
        // torchrun's variables win where both are set.
        let both = World::from_vars(&vars(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("SLURM_PROCID", "1")]));
        assert_eq!(both.unwrap().unwrap().rank, 0);
    }

    #[test]
    fn no_launcher_is_no_world() {
        assert_eq!(World::from_vars(&vars(&[("PATH", "/bin")])).unwrap(), None);
    }

    #[test]
    fn bad_values_are_named() {
        let err = |pairs: &[(&str, &str)]| World::from_vars(&vars(pairs)).unwrap_err().to_string();
        assert!(err(&[("RANK", "two"), ("WORLD_SIZE", "4")]).contains("RANK=\"two\""));
        assert!(err(&[("RANK", "4"), ("WORLD_SIZE", "4")]).contains("outside a world of 4"));
        assert!(err(&[("RANK", "0")]).contains("WORLD_SIZE is not"));
        assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "0")]).contains("world size"));
        assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")]).contains("MASTER_PORT"));
        assert!(err(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_JOB_NODELIST", "n[a-b]")])
            .contains("names no host"));
    }

    #[test]
    fn node_lists_give_their_first_host() {
        for (list, host) in [
            ("node07", "node07"),
            ("gpu[003-010]", "gpu003"),
            ("a[1-2],b3", "a1"),
            ("b3,a[1-2]", "b3"),
            ("rack[4,7]-n1", "rack4-n1"),
        ] {
            assert_eq!(first_host(list).unwrap(), host, "{list}");
        }
        for bad in ["", "x[", "x[]", "n[1-2", "n[-3]"] {
            assert!(first_host(bad).is_err(), "{bad:?}");
        }
    }
}
