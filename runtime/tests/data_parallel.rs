//! Data-parallel training on the CPU: replicas (threads here, each with its own trainer,
//! connected through the TCP process group on localhost) that each train on their rows of
//! every batch end with the weights of one process training on the whole batch, to f32
//! rounding — plain and packed rows, 2 and 4 replicas; a batch that does not split is
//! refused.

mod common;

use common::forward;
use hyb_compiler::ir::Graph;
use hyb_runtime::dist::{TcpGroup, World};
use hyb_runtime::train::data::{DataSpec, Packing, Source};
use hyb_runtime::train::run_dir::Existing;
use hyb_runtime::train::schedule::Schedule;
use hyb_runtime::train::step::{Model, Planning};
use hyb_runtime::train::{TrainConfig, Trainer};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

fn config(batch: usize) -> TrainConfig {
    TrainConfig {
        steps: 3,
        batch,
        seq: 16,
        lr: 3e-3,
        warmup: 1,
        schedule: Schedule::Constant,
        seed: 5,
        eval_every: 0,
        eval_batches: 1,
        save_every: 0,
        max_bad_steps: 3,
        beta1: 0.9,
        beta2: 0.95,
        weight_decay: 0.1,
        decay_all: false,
        clip: Some(0.5),
        width_mult: 1.0,
    }
}

/// Tokens `1 + (k·7 mod 29)`, with an end-of-document id 0 every 11 to 19 tokens when
/// `packed`.
fn source(packed: bool) -> Source {
    let tokens: Vec<u32> =
        (0..4000u32).map(|k| if packed && k % (11 + k / 40 % 9) == 0 { 0 } else { 1 + (k * 7) % 29 }).collect();
    let s = Source::Tokens { tokens, vocab: 32, origin: DataSpec::InMemory, documents: None };
    if packed {
        s.packed(&Packing::Eod { id: 0 }).unwrap()
    } else {
        s
    }
}

type Weights = BTreeMap<String, Vec<f32>>;

fn weights(t: &Trainer) -> Weights {
    t.state.params.iter().map(|(k, v)| (k.clone(), v.data.clone())).collect()
}

fn alone(g: &Graph, packed: bool, batch: usize, dir: &Path) -> Weights {
    let mut t = Trainer::new(g.clone(), source(packed), config(batch), dir, Existing::Refuse).unwrap();
    t.run(&mut |_| {}).unwrap();
    weights(&t)
}

/// Every replica's weights after the run, in rank order.
fn replicas(g: &Graph, packed: bool, batch: usize, n: usize, dir: &Path) -> Vec<Weights> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ranks: Vec<_> = (0..n)
        .map(|rank| {
            let (g, dir) = (g.clone(), dir.join(format!("rank{rank}")));
            std::thread::spawn(move || {
                let planning = Planning { data_parallel: Some(n), ..Planning::default() };
                let model = Model::Graph { forward: g, planning };
                let mut t = Trainer::new(model, source(packed), config(batch), &dir, Existing::Refuse).unwrap();
                let world =
                    World { rank, size: n, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port };
                let (group, _) = TcpGroup::join(&world, "test", b"", Duration::from_secs(60)).unwrap();
                t.join(group).unwrap();
                t.run(&mut |_| {}).unwrap();
                weights(&t)
            })
        })
        .collect();
    ranks.into_iter().map(|r| r.join().unwrap()).collect()
}

fn assert_close(want: &Weights, got: &Weights, what: &str) {
    for (name, w) in want {
        let g = &got[name];
        let err = w.iter().zip(g).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-6, "{what}: `{name}` differs by {err:e}");
    }
}

#[test]
fn replicas_end_with_the_weights_of_one_process() {
    let g = forward(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny_hybrid.hyb"));
    let dir = tempfile::tempdir().unwrap();
    for (packed, n) in [(false, 2), (false, 4), (true, 2)] {
        let batch = 4;
        let want = alone(&g, packed, batch, &dir.path().join(format!("alone_{packed}_{n}")));
        let got = replicas(&g, packed, batch, n, &dir.path().join(format!("dp_{packed}_{n}")));
        for (r, w) in got.iter().enumerate() {
            assert_close(&want, w, &format!("packed {packed}, {n} replicas, rank {r}"));
            assert_eq!(w, &got[0], "every replica holds the same bits");
        }
        // The weights moved: the comparison is not of the initial ones.
        let init = Trainer::new(
            g.clone(),
            source(packed),
            config(batch),
            &dir.path().join(format!("init_{packed}_{n}")),
            Existing::Refuse,
        )
        .unwrap();
        assert!(want.iter().any(|(k, w)| w != &init.state.params[k].data), "training changed the weights");
    }
}

#[test]
fn a_batch_the_replicas_do_not_divide_is_refused() {
    let g = forward(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny_hybrid.hyb"));
    let planning = Planning { data_parallel: Some(3), ..Planning::default() };
    let dir = tempfile::tempdir().unwrap();
    let err =
        Trainer::new(Model::Graph { forward: g, planning }, source(false), config(4), dir.path(), Existing::Refuse)
            .err()
            .expect("refused")
            .to_string();
    assert!(err.contains("--batch 4 does not split over 3"), "{err}");
}
