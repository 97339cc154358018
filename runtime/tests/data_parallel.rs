//! Training on several ranks on the CPU: data-parallel replicas (threads here, each with
//! its own trainer, connected through the TCP process group on localhost) that each train
//! on their rows of every batch, and tensor-parallel ranks that each train their parts of
//! the parameters, end with the weights of one process training on the whole batch, to f32
//! rounding — plain and packed rows, 2 and 4 replicas, 2 tensor-parallel ranks; a batch
//! that does not split is refused.

mod common;

use common::forward;
use hyb_compiler::ir::Graph;
use hyb_runtime::dist::{Mesh, TcpGroup, World};
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

/// A run's weights at its end and each step's loss and gradient norm.
#[derive(PartialEq, Debug)]
struct Ran {
    weights: Weights,
    steps: Vec<(f64, f64)>,
}

fn train(t: &mut Trainer) -> Ran {
    let mut steps = Vec::new();
    t.run(&mut |r| steps.push((r.loss, r.grad_norm))).unwrap();
    Ran { weights: t.state.params.iter().map(|(k, v)| (k.clone(), v.data.clone())).collect(), steps }
}

fn alone(g: &Graph, packed: bool, batch: usize, dir: &Path) -> Ran {
    train(&mut Trainer::new(g.clone(), source(packed), config(batch), dir, Existing::Refuse).unwrap())
}

/// Every replica's run, in rank order.
fn replicas(g: &Graph, packed: bool, batch: usize, n: usize, dir: &Path) -> Vec<Ran> {
    ranks(g, packed, batch, Planning { data_parallel: Some(n), ..Planning::default() }, n, dir)
}

/// Every rank's run, of `n` ranks planned as `planning` says.
fn ranks(g: &Graph, packed: bool, batch: usize, planning: Planning, n: usize, dir: &Path) -> Vec<Ran> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ranks: Vec<_> = (0..n)
        .map(|rank| {
            let (g, dir) = (g.clone(), dir.join(format!("rank{rank}")));
            let tp = planning.tensor_parallel.unwrap_or(1);
            std::thread::spawn(move || {
                let model = Model::Graph { forward: g, planning };
                let mut t = Trainer::new(model, source(packed), config(batch), &dir, Existing::Refuse).unwrap();
                let world =
                    World { rank, size: n, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port };
                let (group, _) = TcpGroup::join(&world, "test", b"", Duration::from_secs(60)).unwrap();
                t.join(Mesh::new(group, tp, "test").unwrap()).unwrap();
                train(&mut t)
            })
        })
        .collect();
    ranks.into_iter().map(|r| r.join().unwrap()).collect()
}

fn assert_close(want: &Weights, got: &Weights, tolerance: f32, what: &str) {
    for (name, w) in want {
        let g = &got[name];
        let err = w.iter().zip(g).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= tolerance, "{what}: `{name}` differs by {err:e}");
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
        for (r, ran) in got.iter().enumerate() {
            assert_close(&want.weights, &ran.weights, 1e-6, &format!("packed {packed}, {n} replicas, rank {r}"));
            assert_eq!(ran, &got[0], "every replica holds the same bits");
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
        assert!(want.weights.iter().any(|(k, w)| w != &init.state.params[k].data), "training changed the weights");
    }
}

#[test]
fn tensor_parallel_ranks_end_with_the_weights_of_one_process() {
    let g = forward(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny_hybrid.hyb"));
    let dir = tempfile::tempdir().unwrap();
    // (packed, data-parallel replicas, tensor-parallel ranks)
    for (packed, dp, tp) in [(false, 1, 2), (true, 1, 2), (false, 2, 2)] {
        let want = alone(&g, packed, 4, &dir.path().join(format!("alone_{packed}_{dp}")));
        let planning =
            Planning { tensor_parallel: Some(tp), data_parallel: (dp > 1).then_some(dp), ..Planning::default() };
        let got = ranks(&g, packed, 4, planning, dp * tp, &dir.path().join(format!("tp_{packed}_{dp}")));
        for (r, ran) in got.iter().enumerate() {
            let what = format!("dp {dp} × tp {tp}, packed {packed}, rank {r}");
            // The first step's loss and gradient norm: the gradients agree to f32 rounding.
            let ((l, g), (l1, g1)) = (want.steps[0], ran.steps[0]);
            assert!((l - l1).abs() <= 1e-6 * l && (g - g1).abs() <= 1e-6 * g, "{what}: {l} {g} vs {l1} {g1}");
            // The sharded products sum in another order than one process's, and Adam's
            // first steps amplify that where a gradient is near 0 (g / (|g| + ε)): up to
            // a few hundredths of one step's size (3e-3) after three steps.
            assert_close(&want.weights, &ran.weights, 1e-4, &what);
            assert_eq!(ran, &got[0], "every rank holds the same whole weights");
        }
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
