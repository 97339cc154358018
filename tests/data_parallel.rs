//! Jobs of `hyb train` on the CPU, as real processes: `--nproc-per-node 2` and 4 end with
//! the weights of one process (f32 rounding), and so do 2 tensor-parallel ranks, 2 × 2 and
//! 4 (`--tp 4`, key/value heads duplicated; to Adam's amplification of that rounding); workers started from
//! torchrun's or Slurm's environment instead of the launcher; ZeRO-1 replicas; BitNet
//! linears split over tensor-parallel ranks; a run resumed on another
//! number of ranks; and a rank killed mid-run ends the job naming it, within the timeout,
//! the last checkpoint intact.

use hyb_runtime::train::checkpoint;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "examples/tiny_hybrid.hyb";
/// A short run: rows of 32 tokens, a checkpoint every 2 steps.
const RUN: &[&str] = &["--device", "cpu", "--seq", "32", "--eval-every", "0", "--save-every", "2"];

fn hyb(args: &[&str], out: &Path) -> Command {
    train(MODEL, args, out)
}

fn train(model: &str, args: &[&str], out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hyb"));
    c.arg("train").arg(model).args(RUN).args(args).arg("--out").arg(out);
    if !args.contains(&"--batch") {
        c.args(["--batch", "4"]);
    }
    c.current_dir(env!("CARGO_MANIFEST_DIR")).env("NO_COLOR", "1");
    // The tests' own environment must not make the processes workers of some job.
    for v in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"] {
        c.env_remove(v);
    }
    c
}

fn succeeds(mut c: Command) -> String {
    let out = c.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

/// The largest difference between two runs' weights, after checking both hold the same
/// names and steps.
fn difference(a: &Path, b: &Path) -> f32 {
    let (a, b) =
        (checkpoint::load(&checkpoint::path_in(a)).unwrap(), checkpoint::load(&checkpoint::path_in(b)).unwrap());
    assert_eq!(a.state.step, b.state.step);
    assert_eq!(a.state.params.keys().collect::<Vec<_>>(), b.state.params.keys().collect::<Vec<_>>());
    a.state
        .params
        .iter()
        .flat_map(|(k, t)| t.data.iter().zip(&b.state.params[k].data).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string()
}

#[test]
fn ranks_train_to_the_weights_of_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("alone");
    succeeds(hyb(&["--steps", "4"], &alone));
    for n in ["2", "4"] {
        let job = dir.path().join(format!("ranks{n}"));
        let text = succeeds(hyb(&["--steps", "4", "--nproc-per-node", n], &job));
        assert!(text.contains(&format!("rank 0 of {n} ranks: {n} data-parallel × 1 tensor-parallel")), "{text}");
        let d = difference(&alone, &job);
        assert!(d <= 1e-6, "{n} ranks: weights differ by {d:e}");
        // Only rank 0 writes: the run directory holds one run.
        assert!(job.join("metrics.jsonl").exists());
    }
}

#[test]
fn tensor_parallel_ranks_train_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (alone, job) = (dir.path().join("alone"), dir.path().join("tp"));
    succeeds(hyb(&["--steps", "4"], &alone));
    // At tp 4 the model's 2 key/value heads are duplicated: each rank holds the one its
    // query heads read, its gradient summed over the 2 ranks that share it.
    for (n, dp, tp) in [("2", 1, "2"), ("4", 2, "2"), ("4", 1, "4")] {
        let job = job.join(format!("{n}_{tp}"));
        let text = succeeds(hyb(&["--steps", "4", "--nproc-per-node", n, "--tp", tp], &job));
        assert!(text.contains(&format!("rank 0 of {n} ranks: {dp} data-parallel × {tp} tensor-parallel")), "{text}");
        // Sharded products sum in another order; Adam's first steps amplify it where a
        // gradient is near 0, to a few hundredths of one step's size (`runtime/tests`).
        let d = difference(&alone, &job);
        assert!(d <= 1e-4, "{n} ranks: weights differ by {d:e}");
    }
    let out = hyb(&["--steps", "4", "--nproc-per-node", "3", "--tp", "2"], &dir.path().join("three")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tp 2 does not divide the job's 3 ranks"));
    let out = hyb(&["--steps", "4", "--tp", "2"], &dir.path().join("one")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tp 2 needs 2 ranks: add --nproc-per-node 2"));
}

/// ZeRO-1 replicas (each holding its run of the moments), alone and with tensor
/// parallelism, train to one process's weights; their checkpoint holds the whole moments,
/// so the run resumes without ZeRO on another number of ranks.
#[test]
fn zero_ranks_train_to_the_weights_of_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("alone");
    succeeds(hyb(&["--steps", "4"], &alone));
    for (name, args, tolerance) in [
        ("zero2", &["--nproc-per-node", "2"][..], 1e-6),
        ("zero4", &["--nproc-per-node", "4"][..], 1e-6),
        ("zero4_tp2", &["--nproc-per-node", "4", "--tp", "2"][..], 1e-4),
    ] {
        let job = dir.path().join(name);
        succeeds(hyb(&[&["--steps", "4", "--zero"][..], args].concat(), &job));
        let d = difference(&alone, &job);
        assert!(d <= tolerance, "{name}: weights differ by {d:e}");
    }
    let job = dir.path().join("resumed");
    succeeds(hyb(&["--steps", "2", "--nproc-per-node", "2", "--zero"], &job));
    let from = job.to_str().unwrap();
    succeeds(hyb(&["--steps", "4", "--nproc-per-node", "4", "--resume", from], &job));
    let d = difference(&alone, &job);
    assert!(d <= 1e-6, "resumed without ZeRO: weights differ by {d:e}");
    let out = hyb(&["--steps", "2", "--zero"], &dir.path().join("one")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--zero shards the optimizer state over data-parallel ranks"));
}

/// BitNet linears split over the tensor-parallel ranks (each quantising its part with the
/// scales of the whole) train as one process does.
#[test]
fn bitnet_linears_train_tensor_parallel_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (alone, job) = (dir.path().join("alone"), dir.path().join("tp"));
    let model = "examples/bitnet_hybrid.hyb";
    succeeds(train(model, &["--steps", "4"], &alone));
    succeeds(train(model, &["--steps", "4", "--nproc-per-node", "2", "--tp", "2"], &job));
    let d = difference(&alone, &job);
    assert!(d <= 1e-4, "weights differ by {d:e}");
}

#[test]
fn workers_start_from_torchrun_and_slurm_environments() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("alone");
    succeeds(hyb(&["--steps", "2"], &alone));
    type Env = fn(usize, usize, &str) -> Vec<(String, String)>;
    let torchrun: Env = |rank, size, port| {
        [
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", size.to_string()),
            ("LOCAL_RANK", rank.to_string()),
            ("MASTER_ADDR", "127.0.0.1".into()),
            ("MASTER_PORT", port.into()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec()
    };
    let slurm: Env = |rank, size, port| {
        [
            ("SLURM_PROCID", rank.to_string()),
            ("SLURM_NTASKS", size.to_string()),
            ("SLURM_LOCALID", rank.to_string()),
            ("SLURM_JOB_NODELIST", "localhost".into()),
            ("MASTER_PORT", port.into()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec()
    };
    // A job of one rank runs as a job too: its collectives go through its group.
    for (name, env, size) in [("torchrun", torchrun, 2), ("slurm", slurm, 2), ("one_rank", torchrun, 1)] {
        let port = free_port();
        let job = dir.path().join(name);
        let workers: Vec<_> = (0..size)
            .map(|rank| {
                let mut c = hyb(&["--steps", "2"], &job);
                c.envs(env(rank, size, &port)).stdout(Stdio::piped()).stderr(Stdio::piped());
                c.spawn().unwrap()
            })
            .collect();
        for (rank, w) in workers.into_iter().enumerate() {
            let out = w.wait_with_output().unwrap();
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(rank > 0 || said.contains(&format!("rank 0 of {size} ranks")), "{name}: {said}");
        }
        let d = difference(&alone, &job);
        assert!(d <= 1e-6, "{name}: weights differ by {d:e}");
    }
}

#[test]
fn a_run_resumes_on_another_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let (alone, job) = (dir.path().join("alone"), dir.path().join("job"));
    succeeds(hyb(&["--steps", "4"], &alone));
    succeeds(hyb(&["--steps", "2", "--nproc-per-node", "2"], &job));
    let from = job.to_str().unwrap();
    succeeds(hyb(&["--steps", "4", "--nproc-per-node", "4", "--resume", from], &job));
    let d = difference(&alone, &job);
    assert!(d <= 1e-6, "resumed on 4 ranks: weights differ by {d:e}");
}

/// The pid of the process whose parent is `parent` and whose environment sets `RANK=rank`.
fn worker(parent: u32, rank: usize) -> Option<u32> {
    let want = format!("RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid: u32 = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        (ppid == parent && env.split(|&b| b == 0).any(|v| v == want.as_bytes())).then_some(pid)
    })
}

#[test]
fn killing_a_rank_ends_the_job_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let job: PathBuf = dir.path().join("job");
    // Two rows each for three ranks.
    let args = ["--steps", "100000", "--batch", "6", "--nproc-per-node", "3", "--rendezvous-timeout", "5"];
    let mut launcher = hyb(&args, &job).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while !checkpoint::path_in(&job).exists() {
        if let Some(status) = launcher.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut launcher.stderr.take().unwrap(), &mut err).unwrap();
            panic!("the job ended before its first checkpoint ({status}): {err}");
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim = worker(launcher.id(), 1).expect("rank 1 runs");
    Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap();
    let killed = Instant::now();
    let out = launcher.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("rank 1 failed (killed by signal 9)"), "{err}");
    assert!(err.contains("rank 1 exited"), "the others name it: {err}");
    assert!(killed.elapsed() < Duration::from_secs(20), "ended within the timeout");
    let ckpt = checkpoint::load(&checkpoint::path_in(&job)).expect("the last checkpoint loads");
    assert!(ckpt.state.step >= 2 && ckpt.state.step.is_multiple_of(2));
}
