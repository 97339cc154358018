//! Artifacts round-trip, and a damaged, truncated or foreign file is a clear error.

mod common;

use hyb_compiler::artifact::{Artifact, ArtifactError, Compiled, ObjectCode, Target, Training, VERSION};
use hyb_compiler::codegen::cpu::Objects;
use hyb_compiler::codegen::object::Host;
use hyb_compiler::pipeline::{compile, plan, DataParallel, Sizing, Target as Step};
use hyb_compiler::rewrite::Options;
use hyb_compiler::training::AdamW;

const TINY: &str = "import std.layers\n\nmodel tiny {\n    vocab = 32\n    d = 16\n    layers = pattern(\"H{2}\", H = falcon_h1_layer)\n    heads = 2\n    kv_heads = 1\n    ssm_heads = 2\n    ssm_head_dim = 8\n    d_state = 4\n    chunk = 4\n    d_ff = 32\n}\n";

fn artifact() -> Artifact {
    let forward = common::forward(TINY);
    let step = Step::Training { opt: AdamW::default(), width_mult: 1.0, data_parallel: DataParallel::Alone };
    let compiled = compile(&forward, &step, 2, &Options::default());
    let executable = plan(&compiled, &step, &Sizing::new(2, 8)).unwrap();
    let forward_pass = compile(&forward, &Step::Forward, 2, &Options::default());
    let eval = plan(&forward_pass, &Step::Forward, &Sizing::new(2, 8)).unwrap();
    let training = Training { opt: AdamW::default(), width_mult: 1.0 };
    let info =
        Compiled { model: "tiny".into(), target: Target::Cpu, training: Some(training), tp: 2, batch: 2, seq: 8 };
    let kernels = [("k".to_string(), vec![0x7f, b'E', b'L', b'F'])].into();
    let objects = ObjectCode { host: Host::current().clone(), kernels };
    Artifact { compiled: info, model: forward, executable, eval: Some(eval), objects }
}

#[test]
fn round_trip() {
    let a = artifact();
    let back = Artifact::from_bytes(&a.to_bytes(), Target::Cpu).unwrap();
    assert_eq!(back, a);
    assert!(back.manifest().iter().any(|p| p.shard.is_some()), "the manifest keeps the shards");
}

#[test]
fn object_code_is_offered_only_on_the_host_it_was_built_for() {
    let mut objects = artifact().objects;
    assert!(objects.runs_here());
    assert_eq!(objects.get("k").as_deref(), Some([0x7f, b'E', b'L', b'F'].as_slice()));
    assert_eq!(objects.get("other"), None);
    objects.host.cpu = format!("not-{}", objects.host.cpu);
    assert!(!objects.runs_here());
    assert_eq!(objects.get("k"), None);
}

#[test]
fn damaged_files_are_refused() {
    let bytes = artifact().to_bytes();
    assert_eq!(Artifact::from_bytes(b"model tiny {}", Target::Cpu), Err(ArtifactError::NotAnArtifact));
    assert_eq!(Artifact::from_bytes(&[], Target::Cpu), Err(ArtifactError::NotAnArtifact));
    let truncated = &bytes[..bytes.len() - 7];
    assert!(matches!(Artifact::from_bytes(truncated, Target::Cpu), Err(ArtifactError::Truncated { .. })));
    let mut flipped = bytes.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    assert_eq!(Artifact::from_bytes(&flipped, Target::Cpu), Err(ArtifactError::Checksum));
    let mut future = bytes.clone();
    future[4..8].copy_from_slice(&(VERSION + 1).to_le_bytes());
    assert_eq!(
        Artifact::from_bytes(&future, Target::Cpu),
        Err(ArtifactError::Version { found: VERSION + 1, expected: VERSION })
    );
    // A body that checks but does not decode: its checksum matches, its content is garbage.
    let mut garbage = bytes[..48].to_vec();
    let body = vec![0xffu8; 64];
    garbage[8..40].copy_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(&body));
    garbage[40..48].copy_from_slice(&(body.len() as u64).to_le_bytes());
    garbage.extend_from_slice(&body);
    assert!(matches!(Artifact::from_bytes(&garbage, Target::Cpu), Err(ArtifactError::Body(_))));
}
