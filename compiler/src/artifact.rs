//! The compiled artifact (`hyb compile … -o model.hybc`): the fused program's graph, its
//! planned [`Program`](crate::plan::Program), the parameter manifest, the model's forward
//! graph (its identity, which checkpoints record), the forward program a training run
//! evaluates with, what it was compiled for, and the object code of its CPU kernels for the
//! host that compiled it, in one versioned, checksummed file, so a run needs no `.hyb`
//! source and, on a matching host, no compiling at all.
//!
//! Layout: the magic `HYBC`, a little-endian `u32` format version, the SHA-256 of the body,
//! the body's length as a little-endian `u64`, then the body (bincode).

use crate::codegen::cpu::Objects;
use crate::codegen::object::Host;
use crate::ir::{Graph, ParamSpec};
use crate::pipeline::Executable;
use crate::training::AdamW;
use bincode::Options;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

const MAGIC: &[u8; 4] = b"HYBC";
/// Bumped whenever the body's layout changes; older files are refused with the version.
pub const VERSION: u32 = 5;
const HEADER: usize = 4 + 4 + 32 + 8;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
}

/// What the program runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The CPU executor (the reference semantics until generated code replaces them).
    Cpu,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
        }
    }
}

/// What was compiled: the model and the sizes the program is planned for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Compiled {
    pub model: String,
    pub target: Target,
    /// For a training step (forward, loss, backward, AdamW), the settings compiled into it;
    /// `None` for the forward pass alone.
    pub training: Option<Training>,
    pub tp: usize,
    pub batch: usize,
    pub seq: usize,
}

/// What a training step's graph holds as constants, so a run must use the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Training {
    pub opt: AdamW,
    /// µP width multiplier `d / base_width`.
    pub width_mult: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub compiled: Compiled,
    /// The forward pass as elaborated from the source, before sharding.
    pub model: Graph,
    /// The program each rank runs: its graph (fused, with recompute applied; its nodes are
    /// what the launches compute) and its plan.
    pub executable: Executable,
    /// For a training step, the forward pass planned for the same sizes (evaluation).
    pub eval: Option<Executable>,
    /// The object code of the programs' CPU kernels.
    pub objects: ObjectCode,
}

/// Object code of CPU kernels by [`crate::codegen::object::key`], all built for `host`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectCode {
    pub host: Host,
    pub kernels: BTreeMap<String, Vec<u8>>,
}

impl ObjectCode {
    /// Whether the code can run here (else every kernel compiles again).
    pub fn runs_here(&self) -> bool {
        self.host == *Host::current()
    }
}

/// The artifact's code, read-only: a run does not change its artifact.
impl Objects for ObjectCode {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.kernels.get(key).filter(|_| self.runs_here()).cloned()
    }

    fn put(&self, _: &str, _: &[u8]) {}
}

impl Artifact {
    /// The parameters each rank holds: names, shapes, shards, initialisers and µP roles.
    pub fn manifest(&self) -> &[ParamSpec] {
        &self.executable.graph.params
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let body = options().serialize(self).expect("artifacts serialise");
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&body));
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads an artifact, checking what it is, its version, its length and its checksum
    /// before decoding it, and that it was compiled for `target`.
    pub fn from_bytes(bytes: &[u8], target: Target) -> Result<Artifact, ArtifactError> {
        if bytes.get(..4) != Some(MAGIC.as_slice()) {
            return Err(ArtifactError::NotAnArtifact);
        }
        if bytes.len() < HEADER {
            return Err(ArtifactError::Truncated { expected: HEADER as u64, found: bytes.len() as u64 });
        }
        let version = u32::from_le_bytes(bytes[4..8].try_into().expect("four bytes"));
        if version != VERSION {
            return Err(ArtifactError::Version { found: version, expected: VERSION });
        }
        let length = u64::from_le_bytes(bytes[40..48].try_into().expect("eight bytes"));
        let body = &bytes[HEADER..];
        if body.len() as u64 != length {
            return Err(ArtifactError::Truncated { expected: length, found: body.len() as u64 });
        }
        if Sha256::digest(body).as_slice() != &bytes[8..40] {
            return Err(ArtifactError::Checksum);
        }
        // The limit bounds what a hostile length inside the body can make the decoder read.
        let artifact: Artifact =
            options().with_limit(length).deserialize(body).map_err(|e| ArtifactError::Body(e.to_string()))?;
        if artifact.compiled.target != target {
            return Err(ArtifactError::Target { found: artifact.compiled.target.name(), expected: target.name() });
        }
        Ok(artifact)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArtifactError {
    #[error("not a hyb artifact (compile one with `hyb compile MODEL.hyb -o FILE.hybc`)")]
    NotAnArtifact,
    #[error("the artifact has format version {found}, this hyb reads version {expected}: compile it again")]
    Version { found: u32, expected: u32 },
    #[error("the artifact is truncated: {expected} bytes expected, {found} found")]
    Truncated { expected: u64, found: u64 },
    #[error("the artifact's checksum does not match its contents: the file is damaged")]
    Checksum,
    #[error("the artifact's body cannot be read: {0}")]
    Body(String),
    #[error("the artifact was compiled for {found}, not {expected}")]
    Target { found: &'static str, expected: &'static str },
}
