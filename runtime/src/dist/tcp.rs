//! A small TCP process group: the rendezvous of a job's workers at rank 0's address, and
//! the collectives the CPU executor needs between processes, over the same connections.
//!
//! Rank 0 listens on `MASTER_ADDR:MASTER_PORT`; every other rank connects (retrying until
//! the timeout), says who it is and which job it runs (a fingerprint of the model and the
//! settings), and is welcomed — with a payload, the NCCL unique id on GPUs — once all have
//! arrived, or refused with the reason: a rank that never arrives, a world size or job that
//! differs, a rank taken twice.
//!
//! The collectives are a star through rank 0, which combines the ranks' values in rank
//! order, so every rank gets the same bits and the result does not depend on timing. A
//! rank that exits or stops answering for the timeout ends the job on every rank with an
//! error naming it: rank 0 tells the others before it returns. This is the CPU backend of
//! the tests and of CPU jobs; GPUs exchange through NCCL, which this only bootstraps.

use super::world::World;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long a rendezvous or a collective waits for a rank at most, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("cannot listen for the job's ranks on {addr}: {error} (is another job using MASTER_PORT?)")]
    Listen { addr: String, error: std::io::Error },
    #[error("cannot reach rank 0 at {addr} within {secs} s: {error}")]
    Unreachable { addr: String, secs: u64, error: String },
    #[error("rank{} {} never arrived at the rendezvous within {secs} s", if ranks.len() > 1 { "s" } else { "" }, list(ranks))]
    Missing { ranks: Vec<usize>, secs: u64 },
    #[error("the job was refused at the rendezvous: {0}")]
    Refused(String),
    #[error("rank {rank} exited (its connection closed) during {during}")]
    Exited { rank: usize, during: &'static str },
    #[error("rank {rank} sent nothing for {secs} s during {during}: it hangs or is too slow (raise the timeout)")]
    Hung { rank: usize, secs: u64, during: &'static str },
    #[error("rank {rank} failed: {reason}")]
    Aborted { rank: usize, reason: String },
    #[error("rank {rank} sent {got} values to a collective of {want}: the ranks run different programs")]
    Length { rank: usize, got: usize, want: usize },
    #[error("talking to rank {rank}: {error}")]
    Io { rank: usize, error: std::io::Error },
    #[error("rank {rank} sent a malformed message: {what}")]
    Protocol { rank: usize, what: String },
}

fn list(ranks: &[usize]) -> String {
    ranks.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

/// A message's kind, its first byte on the wire (then its length, u64 little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Hello = 1,
    Welcome = 2,
    Refuse = 3,
    Data = 4,
    Abort = 5,
}

impl Kind {
    fn of(b: u8) -> Option<Kind> {
        [Kind::Hello, Kind::Welcome, Kind::Refuse, Kind::Data, Kind::Abort].into_iter().find(|k| *k as u8 == b)
    }
}

/// The most a message may carry: a bound on what a malformed length makes us allocate.
const MAX_MESSAGE: u64 = 1 << 36;

/// Who a connecting rank says it is.
#[derive(serde::Serialize, serde::Deserialize)]
struct Hello {
    rank: usize,
    size: usize,
    job: String,
}

/// Why a rank stopped, as rank 0 passes it on.
#[derive(serde::Serialize, serde::Deserialize)]
struct Abort {
    rank: usize,
    reason: String,
}

/// One connection, to the rank it names.
struct Peer {
    rank: usize,
    stream: TcpStream,
}

impl Peer {
    fn send(&mut self, kind: Kind, payload: &[u8]) -> Result<(), CommError> {
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.push(kind as u8);
        frame.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).map_err(|error| CommError::Io { rank: self.rank, error })
    }

    /// The next message, waiting at most `wait`.
    fn recv(&mut self, wait: Duration, during: &'static str) -> Result<(Kind, Vec<u8>), CommError> {
        let rank = self.rank;
        self.stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(|error| CommError::Io { rank, error })?;
        let fail = |e: std::io::Error| match e.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => CommError::Exited { rank, during },
            ErrorKind::WouldBlock | ErrorKind::TimedOut => CommError::Hung { rank, secs: wait.as_secs(), during },
            _ => CommError::Io { rank, error: e },
        };
        let mut head = [0u8; 9];
        self.stream.read_exact(&mut head).map_err(fail)?;
        let kind = Kind::of(head[0]).ok_or_else(|| CommError::Protocol { rank, what: format!("kind {}", head[0]) })?;
        let len = u64::from_le_bytes(head[1..].try_into().expect("eight bytes"));
        if len > MAX_MESSAGE {
            return Err(CommError::Protocol { rank, what: format!("a length of {len} bytes") });
        }
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload).map_err(fail)?;
        if kind == Kind::Abort {
            let abort: Abort = serde_json::from_slice(&payload)
                .map_err(|e| CommError::Protocol { rank, what: format!("an abort: {e}") })?;
            return Err(CommError::Aborted { rank: abort.rank, reason: abort.reason });
        }
        Ok((kind, payload))
    }
}

/// The processes of one job, connected through rank 0.
pub struct TcpGroup {
    world: World,
    /// Rank 0: a connection to each other rank, in rank order; another rank: to rank 0.
    peers: Vec<Peer>,
    timeout: Duration,
}

impl TcpGroup {
    /// Joins the job `world` describes: rank 0 waits for the others, the others connect
    /// to it; all must run the same `job` (a fingerprint of what they run). Rank 0
    /// hands `payload` to every rank; the others get it back. Waits at most `timeout`.
    pub fn join(world: &World, job: &str, payload: &[u8], timeout: Duration) -> Result<(TcpGroup, Vec<u8>), CommError> {
        let group = |peers| TcpGroup { world: world.clone(), peers, timeout };
        if world.size == 1 {
            return Ok((group(Vec::new()), payload.to_vec()));
        }
        if world.rank == 0 {
            let peers = gather_ranks(world, job, payload, timeout)?;
            Ok((group(peers), payload.to_vec()))
        } else {
            let (peer, payload) = reach_root(world, job, timeout)?;
            Ok((group(vec![peer]), payload))
        }
    }

    pub fn rank(&self) -> usize {
        self.world.rank
    }

    pub fn size(&self) -> usize {
        self.world.size
    }

    /// How long a rank other than 0 waits for rank 0's answer: longer than rank 0 waits for
    /// any rank, so that when one hangs rank 0's message naming it arrives first.
    fn patience(&self) -> Duration {
        self.timeout + self.timeout / 10 + Duration::from_secs(2)
    }

    /// Every rank's `data` summed, element by element in rank order (rank 0's, plus rank
    /// 1's, …), into every rank's `data`.
    pub fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        let during = "an all-reduce";
        if self.world.size == 1 {
            return Ok(());
        }
        if self.world.rank != 0 {
            let wait = self.patience();
            let root = &mut self.peers[0];
            root.send(Kind::Data, &bytes_of(data))?;
            let (kind, reply) = root.recv(wait, during)?;
            return copy_floats(0, kind, &reply, data);
        }
        let result = self.combine(data, during).and_then(|()| {
            let bytes = bytes_of(data);
            self.peers.iter_mut().try_for_each(|p| p.send(Kind::Data, &bytes))
        });
        if let Err(e) = &result {
            self.abort_all(e);
        }
        result
    }

    /// Every rank's `local`, in rank order, on every rank.
    pub fn all_gather(&mut self, local: &[f32]) -> Result<Vec<Vec<f32>>, CommError> {
        let parts = self.all_gather_bytes(&bytes_of(local))?;
        parts.iter().enumerate().map(|(r, p)| floats_of(r, p)).collect()
    }

    /// Every rank's `local` bytes, in rank order, on every rank.
    pub fn all_gather_bytes(&mut self, local: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        let during = "an all-gather";
        if self.world.size == 1 {
            return Ok(vec![local.to_vec()]);
        }
        if self.world.rank != 0 {
            let wait = self.patience();
            let root = &mut self.peers[0];
            root.send(Kind::Data, local)?;
            return match root.recv(wait, during)? {
                (Kind::Data, reply) => decode_parts(&reply),
                (kind, _) => Err(CommError::Protocol { rank: 0, what: format!("{kind:?} for data") }),
            };
        }
        let timeout = self.timeout;
        let mut parts = vec![local.to_vec()];
        let result = self
            .peers
            .iter_mut()
            .try_for_each(|p| match p.recv(timeout, during)? {
                (Kind::Data, bytes) => {
                    parts.push(bytes);
                    Ok(())
                }
                (kind, _) => Err(CommError::Protocol { rank: p.rank, what: format!("{kind:?} for data") }),
            })
            .and_then(|()| {
                let message = encode_parts(&parts);
                self.peers.iter_mut().try_for_each(|p| p.send(Kind::Data, &message))
            });
        match result {
            Ok(()) => Ok(parts),
            Err(e) => {
                self.abort_all(&e);
                Err(e)
            }
        }
    }

    /// Where every rank can be reached, in rank order: the address each other rank's
    /// connection to rank 0 comes from, and rank 0's own.
    pub fn hosts(&mut self) -> Result<Vec<String>, CommError> {
        let mine = match (self.world.rank, self.peers.first()) {
            (0, _) | (_, None) => self.world.master_addr.clone(),
            (_, Some(root)) => {
                root.stream.local_addr().map_err(|error| CommError::Io { rank: 0, error })?.ip().to_string()
            }
        };
        let hosts = self.all_gather_bytes(mine.as_bytes())?;
        Ok(hosts.into_iter().map(|h| String::from_utf8_lossy(&h).into_owned()).collect())
    }

    /// The group of the ranks `members` (this rank among them, in increasing order), met
    /// at the first member's host on port `MASTER_PORT + offset`; every member calls it
    /// with the same members, offset and `job`.
    pub fn subgroup(&mut self, members: &[usize], offset: u16, job: &str) -> Result<TcpGroup, CommError> {
        let hosts = self.hosts()?;
        let rank = members.iter().position(|&m| m == self.world.rank).expect("a rank joins its own groups");
        let port = self.world.master_port.checked_add(offset).ok_or_else(|| CommError::Listen {
            addr: format!("port {} + {offset}", self.world.master_port),
            error: std::io::Error::new(ErrorKind::InvalidInput, "past the last port"),
        })?;
        let world = World {
            rank,
            size: members.len(),
            local_rank: self.world.local_rank,
            master_addr: hosts[members[0]].clone(),
            master_port: port,
        };
        Ok(TcpGroup::join(&world, job, b"", self.timeout)?.0)
    }

    /// Waits until every rank has reached this point.
    pub fn barrier(&mut self) -> Result<(), CommError> {
        self.all_reduce_sum(&mut [])
    }

    /// Tells the other ranks this one stops, and why (best effort: it is stopping anyway).
    pub fn abort(&mut self, reason: &str) {
        let abort = Abort { rank: self.world.rank, reason: reason.to_string() };
        let bytes = serde_json::to_vec(&abort).expect("aborts serialise");
        for p in &mut self.peers {
            let _ = p.send(Kind::Abort, &bytes);
        }
    }

    /// Rank 0: its `data` plus every other rank's, in rank order.
    fn combine(&mut self, data: &mut [f32], during: &'static str) -> Result<(), CommError> {
        let timeout = self.timeout;
        for p in &mut self.peers {
            let (kind, bytes) = p.recv(timeout, during)?;
            if kind != Kind::Data {
                return Err(CommError::Protocol { rank: p.rank, what: format!("{kind:?} for data") });
            }
            if bytes.len() != 4 * data.len() {
                return Err(CommError::Length { rank: p.rank, got: bytes.len() / 4, want: data.len() });
            }
            for (x, b) in data.iter_mut().zip(bytes.chunks_exact(4)) {
                *x += f32::from_le_bytes(b.try_into().expect("four bytes"));
            }
        }
        Ok(())
    }

    /// Rank 0: passes `e` to every rank, naming the rank it is about.
    fn abort_all(&mut self, e: &CommError) {
        let rank = match e {
            CommError::Exited { rank, .. }
            | CommError::Hung { rank, .. }
            | CommError::Aborted { rank, .. }
            | CommError::Length { rank, .. }
            | CommError::Io { rank, .. }
            | CommError::Protocol { rank, .. } => *rank,
            _ => 0,
        };
        let reason = match e {
            CommError::Aborted { reason, .. } => reason.clone(),
            e => e.to_string(),
        };
        let bytes = serde_json::to_vec(&Abort { rank, reason }).expect("aborts serialise");
        for p in self.peers.iter_mut().filter(|p| p.rank != rank) {
            let _ = p.send(Kind::Abort, &bytes);
        }
    }
}

impl Drop for TcpGroup {
    fn drop(&mut self) {
        for p in &self.peers {
            let _ = p.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn bytes_of(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn floats_of(rank: usize, bytes: &[u8]) -> Result<Vec<f32>, CommError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(CommError::Protocol { rank, what: format!("{} bytes of f32", bytes.len()) });
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("four bytes"))).collect())
}

/// Parts of bytes as one message: their count and lengths (u64 each), then their bytes.
fn encode_parts(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut message = (parts.len() as u64).to_le_bytes().to_vec();
    for p in parts {
        message.extend_from_slice(&(p.len() as u64).to_le_bytes());
    }
    for p in parts {
        message.extend_from_slice(p);
    }
    message
}

fn decode_parts(bytes: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
    let bad = || CommError::Protocol { rank: 0, what: "gathered parts that do not add up".into() };
    let word = |i: usize| -> Result<u64, CommError> {
        let b = bytes.get(8 * i..8 * i + 8).ok_or_else(bad)?;
        Ok(u64::from_le_bytes(b.try_into().expect("eight bytes")))
    };
    let count = usize::try_from(word(0)?).map_err(|_| bad())?;
    let lens: Vec<usize> = (1..=count).map(|i| word(i).map(|n| n as usize)).collect::<Result<_, _>>()?;
    let values = bytes.get(8 * (count + 1)..).ok_or_else(bad)?;
    if lens.iter().sum::<usize>() != values.len() {
        return Err(bad());
    }
    let mut at = 0;
    Ok(lens
        .iter()
        .map(|&n| {
            at += n;
            values[at - n..at].to_vec()
        })
        .collect())
}

fn copy_floats(rank: usize, kind: Kind, bytes: &[u8], data: &mut [f32]) -> Result<(), CommError> {
    if kind != Kind::Data {
        return Err(CommError::Protocol { rank, what: format!("{kind:?} for data") });
    }
    if bytes.len() != 4 * data.len() {
        return Err(CommError::Length { rank, got: bytes.len() / 4, want: data.len() });
    }
    for (x, b) in data.iter_mut().zip(bytes.chunks_exact(4)) {
        *x = f32::from_le_bytes(b.try_into().expect("four bytes"));
    }
    Ok(())
}

fn address(world: &World) -> String {
    format!("{}:{}", world.master_addr, world.master_port)
}

/// Rank 0's side of the rendezvous: every other rank's connection, in rank order.
fn gather_ranks(world: &World, job: &str, payload: &[u8], timeout: Duration) -> Result<Vec<Peer>, CommError> {
    let addr = address(world);
    let listener = TcpListener::bind(&addr).map_err(|error| CommError::Listen { addr: addr.clone(), error })?;
    listener.set_nonblocking(true).map_err(|error| CommError::Listen { addr: addr.clone(), error })?;
    let deadline = Instant::now() + timeout;
    let mut arrived: Vec<Option<Peer>> = (0..world.size).map(|_| None).collect();
    let refuse = |arrived: &mut Vec<Option<Peer>>, why: String| {
        for p in arrived.iter_mut().flatten() {
            let _ = p.send(Kind::Refuse, why.as_bytes());
        }
        CommError::Refused(why)
    };
    while arrived.iter().skip(1).any(Option::is_none) {
        let now = Instant::now();
        if now >= deadline {
            let missing = (1..world.size).filter(|&r| arrived[r].is_none()).collect();
            let e = CommError::Missing { ranks: missing, secs: timeout.as_secs() };
            let _ = refuse(&mut arrived, e.to_string());
            return Err(e);
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(error) => return Err(CommError::Listen { addr, error }),
        };
        stream.set_nonblocking(false).map_err(|error| CommError::Listen { addr: addr.clone(), error })?;
        stream.set_nodelay(true).ok();
        // Until it says who it is, a connection is nobody's; one that says nothing
        // sensible (a port scanner) is dropped.
        let mut peer = Peer { rank: usize::MAX, stream };
        let hello = match peer.recv((deadline - now).min(Duration::from_secs(10)), "the rendezvous") {
            Ok((Kind::Hello, bytes)) => serde_json::from_slice::<Hello>(&bytes).ok(),
            _ => None,
        };
        let Some(hello) = hello else { continue };
        peer.rank = hello.rank;
        let why = if hello.size != world.size {
            Some(format!(
                "rank {} was started for a world of {} ranks, rank 0 for {}",
                hello.rank, hello.size, world.size
            ))
        } else if hello.rank == 0 || hello.rank >= world.size {
            Some(format!("a rank {} joined a world of {} (ranks 0 to {})", hello.rank, world.size, world.size - 1))
        } else if arrived[hello.rank].is_some() {
            Some(format!("two processes joined as rank {}", hello.rank))
        } else if hello.job != job {
            Some(format!("rank {} runs another model or other settings than rank 0", hello.rank))
        } else {
            None
        };
        if let Some(why) = why {
            let _ = peer.send(Kind::Refuse, why.as_bytes());
            return Err(refuse(&mut arrived, why));
        }
        arrived[hello.rank] = Some(peer);
    }
    let mut peers: Vec<Peer> = arrived.into_iter().flatten().collect();
    for p in &mut peers {
        p.send(Kind::Welcome, payload)?;
    }
    Ok(peers)
}

/// Another rank's side: connects to rank 0 (retrying until the deadline), says hello and
/// waits to be welcomed.
fn reach_root(world: &World, job: &str, timeout: Duration) -> Result<(Peer, Vec<u8>), CommError> {
    let addr = address(world);
    let deadline = Instant::now() + timeout;
    let unreachable = |error: String| CommError::Unreachable { addr: addr.clone(), secs: timeout.as_secs(), error };
    let stream = loop {
        let attempt = addr.to_socket_addrs().map_err(|e| unreachable(e.to_string()))?.find_map(|a| {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
            TcpStream::connect_timeout(&a, left.min(Duration::from_secs(5))).ok()
        });
        match attempt {
            Some(s) => break s,
            None if Instant::now() >= deadline => return Err(unreachable("nothing listens there".into())),
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream.set_nodelay(true).ok();
    let mut root = Peer { rank: 0, stream };
    let hello = Hello { rank: world.rank, size: world.size, job: job.to_string() };
    root.send(Kind::Hello, &serde_json::to_vec(&hello).expect("hellos serialise"))?;
    // Rank 0 answers once every rank has arrived, or when it gives up on one.
    let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
    match root.recv(wait, "the rendezvous")? {
        (Kind::Welcome, payload) => Ok((root, payload)),
        (Kind::Refuse, why) => Err(CommError::Refused(String::from_utf8_lossy(&why).into_owned())),
        (kind, _) => Err(CommError::Protocol { rank: 0, what: format!("{kind:?} at the rendezvous") }),
    }
}
