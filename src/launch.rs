//! `hyb train --nproc-per-node N`: starts N worker processes on this node, as torchrun
//! does — this program again, with the same arguments and torchrun's environment (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), so a worker cannot tell it
//! from torchrun or Slurm — and watches them: the job succeeds when every rank does; when
//! one fails the others stop (their collectives see it within the rendezvous timeout, and
//! are killed if they outlast that), and the launcher names the rank.

use anyhow::{bail, Context, Result};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::time::{Duration, Instant};

/// Whether this process was started by a launcher (hyb's, torchrun or Slurm), so it is a
/// worker and must not launch again.
pub fn in_a_job() -> bool {
    ["RANK", "SLURM_PROCID"].iter().any(|v| std::env::var_os(v).is_some())
}

/// Runs `nproc` workers of this command to the end; the job's exit code.
pub fn launch(nproc: usize, timeout: Duration) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find this program to start its workers")?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    let port = match std::env::var("MASTER_PORT") {
        Ok(p) => p,
        Err(_) => free_ports(&addr, nproc + 2)?.to_string(),
    };
    let mut workers: Vec<(usize, Child)> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", &addr)
            .env("MASTER_PORT", &port);
        // NVLink multicast stays off (the device notes say why) unless the user chose.
        if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
            cmd.env("NCCL_NVLS_ENABLE", "0");
        }
        match cmd.spawn() {
            Ok(child) => workers.push((rank, child)),
            Err(e) => {
                stop(&mut workers);
                bail!("cannot start rank {rank} ({}): {e}", exe.display());
            }
        }
    }
    watch(workers, timeout)
}

/// The first of `count` consecutive ports nothing listens on at `addr` now: the
/// rendezvous's, then the groups' of a job of both kinds (`MASTER_PORT + 1 …`). Taken below
/// Linux's ephemeral range (32768 and up), where the ranks' own outgoing connections and
/// another job's choice by the system would land, from a start that differs between
/// launchers started together.
fn free_ports(addr: &str, count: usize) -> Result<u16> {
    const FIRST: u64 = 20_000;
    const END: u64 = 32_768;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let seed = (u64::from(std::process::id()) << 32 | u64::from(nanos)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let span = END - FIRST - count as u64;
    for attempt in 0..256u64 {
        let start = FIRST + (seed.rotate_left(attempt as u32 % 64) ^ attempt.wrapping_mul(7919)) % span;
        let free = (start..start + count as u64).all(|p| std::net::TcpListener::bind((addr, p as u16)).is_ok());
        if free {
            return Ok(start as u16);
        }
    }
    bail!("cannot find {count} consecutive free ports on {addr} between {FIRST} and {END}: set MASTER_PORT")
}

/// Waits for every worker; on the first failure, gives the others the timeout (and a
/// little) to stop on their own, then kills them. Of ranks found failed at the same
/// moment, one killed by a signal is the cause, not the ranks that saw it go.
fn watch(mut workers: Vec<(usize, Child)>, timeout: Duration) -> Result<ExitCode> {
    let mut failed: Option<(usize, ExitStatus, Instant)> = None;
    loop {
        let mut running = 0;
        let mut now_failed = Vec::new();
        for (rank, child) in &mut workers {
            match child.try_wait().with_context(|| format!("cannot watch rank {rank}"))? {
                Some(status) if !status.success() => now_failed.push((*rank, status)),
                Some(_) => {}
                None => running += 1,
            }
        }
        if failed.is_none() {
            let cause = now_failed.iter().find(|(_, s)| s.code().is_none()).or(now_failed.first());
            failed = cause.map(|&(rank, status)| (rank, status, Instant::now()));
        }
        match failed {
            None if running == 0 => return Ok(ExitCode::SUCCESS),
            Some((rank, status, _)) if running == 0 => {
                eprintln!("hyb: rank {rank} failed ({}); the job stopped", describe(status));
                return Ok(ExitCode::from(1));
            }
            Some((rank, status, at)) if at.elapsed() > timeout + Duration::from_secs(5) => {
                stop(&mut workers);
                eprintln!(
                    "hyb: rank {rank} failed ({}); ranks still running after {} s were killed",
                    describe(status),
                    timeout.as_secs()
                );
                return Ok(ExitCode::from(1));
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn stop(workers: &mut [(usize, Child)]) {
    for (_, child) in workers.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// An exit status in words: its code, or the signal that ended it.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}
