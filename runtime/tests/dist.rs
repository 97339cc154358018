//! The TCP process group, with ranks as threads on localhost: the rendezvous (payload,
//! refusals, ranks that never come, a port in use), collectives that give every rank the
//! same rank-ordered result, and a rank that exits or hangs ending the job on every rank
//! with its number.

use hyb_runtime::dist::{CommError, TcpGroup, World};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn world(rank: usize, size: usize, port: u16) -> World {
    World { rank, size, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port }
}

/// Runs `body` on every rank of a world of `size`, each a thread that joins the group
/// first; the ranks' results in rank order.
fn on_ranks<T: Send + 'static>(
    size: usize,
    timeout: Duration,
    body: impl Fn(usize, Result<(TcpGroup, Vec<u8>), CommError>) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let port = free_port();
    let body = std::sync::Arc::new(body);
    let threads: Vec<_> = (0..size)
        .map(|r| {
            let body = body.clone();
            std::thread::spawn(move || body(r, TcpGroup::join(&world(r, size, port), "job", b"id", timeout)))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn collectives_give_every_rank_the_rank_ordered_result() {
    let results = on_ranks(4, Duration::from_secs(20), |r, joined| {
        let (mut group, payload) = joined.unwrap();
        assert_eq!(payload, b"id");
        assert_eq!((group.rank(), group.size()), (r, 4));
        // Values whose sum depends on the order it is taken in.
        let mut x: Vec<f32> =
            (0..1000).map(|i| ((i * 7 + r * 13) % 17) as f32 * 1e-3 + [1e8, 1.0, -1e8, 3.0][r]).collect();
        group.all_reduce_sum(&mut x).unwrap();
        let parts = group.all_gather(&[r as f32; 3][..r]).unwrap();
        group.barrier().unwrap();
        (x, parts)
    });
    let want: Vec<f32> = (0..1000)
        .map(|i| {
            (0..4).fold(0.0f32, |acc, r| {
                let v = ((i * 7 + r * 13) % 17) as f32 * 1e-3 + [1e8, 1.0, -1e8, 3.0][r];
                if r == 0 {
                    v
                } else {
                    acc + v
                }
            })
        })
        .collect();
    for (r, (x, parts)) in results.iter().enumerate() {
        assert!(x.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "rank {r}: not rank 0 + 1 + 2 + 3");
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(sizes, [0, 1, 2, 3], "rank {r}");
        assert!(parts.iter().enumerate().all(|(k, p)| p.iter().all(|&v| v == k as f32)));
    }
}

#[test]
fn a_rank_that_never_arrives_is_named() {
    let started = Instant::now();
    let port = free_port();
    let joined: Vec<_> = [0, 1, 3]
        .map(|r| std::thread::spawn(move || TcpGroup::join(&world(r, 4, port), "job", b"", Duration::from_secs(2))))
        .into_iter()
        .map(|t| t.join().unwrap().map(|_| ()).unwrap_err().to_string())
        .collect();
    assert!(joined[0].contains("rank 2 never arrived"), "{}", joined[0]);
    assert!(joined[1].contains("rank 2 never arrived") && joined[1].contains("refused"), "{}", joined[1]);
    assert!(started.elapsed() < Duration::from_secs(10), "within the timeout");
}

#[test]
fn mismatched_worlds_and_jobs_are_refused() {
    let port = free_port();
    let root = std::thread::spawn(move || TcpGroup::join(&world(0, 2, port), "job", b"", Duration::from_secs(10)));
    let other = TcpGroup::join(&world(1, 3, port), "job", b"", Duration::from_secs(10));
    let why = other.map(|_| ()).unwrap_err().to_string();
    assert!(why.contains("world of 3 ranks, rank 0 for 2"), "{why}");
    assert!(root.join().unwrap().is_err());

    let port = free_port();
    let root = std::thread::spawn(move || TcpGroup::join(&world(0, 2, port), "model a", b"", Duration::from_secs(10)));
    let other = TcpGroup::join(&world(1, 2, port), "model b", b"", Duration::from_secs(10));
    assert!(other.map(|_| ()).unwrap_err().to_string().contains("another model"));
    assert!(root.join().unwrap().is_err());
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = TcpGroup::join(&world(0, 2, port), "job", b"", Duration::from_secs(1)).map(|_| ()).unwrap_err();
    assert!(matches!(err, CommError::Listen { .. }), "{err}");
    assert!(err.to_string().contains("MASTER_PORT"), "{err}");
}

#[test]
fn a_rank_that_exits_ends_the_job_on_every_rank() {
    let errors = on_ranks(3, Duration::from_secs(20), |r, joined| {
        let (mut group, _) = joined.unwrap();
        let mut x = vec![1.0f32; 8];
        group.all_reduce_sum(&mut x).unwrap();
        if r == 2 {
            // Rank 2 fails between steps: its process ends, its connections close.
            drop(group);
            return String::new();
        }
        group.all_reduce_sum(&mut x).unwrap_err().to_string()
    });
    assert!(errors[0].contains("rank 2 exited"), "{}", errors[0]);
    assert!(errors[1].contains("rank 2") && errors[1].contains("exited"), "{}", errors[1]);
}

#[test]
fn a_rank_that_hangs_is_named_within_the_timeout() {
    let started = Instant::now();
    let errors = on_ranks(3, Duration::from_secs(2), |r, joined| {
        let (mut group, _) = joined.unwrap();
        if r == 1 {
            std::thread::sleep(Duration::from_secs(4));
            return String::new();
        }
        group.all_reduce_sum(&mut [1.0]).unwrap_err().to_string()
    });
    assert!(errors[0].contains("rank 1 sent nothing for 2 s"), "{}", errors[0]);
    assert!(errors[2].contains("rank 1"), "rank 2 hears who hung: {}", errors[2]);
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[test]
fn a_failing_rank_tells_the_others_why() {
    let errors = on_ranks(3, Duration::from_secs(20), |r, joined| {
        let (mut group, _) = joined.unwrap();
        if r == 2 {
            group.abort("out of memory");
            return String::new();
        }
        group.all_reduce_sum(&mut [1.0]).unwrap_err().to_string()
    });
    for e in &errors[..2] {
        assert!(e.contains("rank 2 failed: out of memory"), "{e}");
    }
}
