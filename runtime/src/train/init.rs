//! Parameter initialisation from the manifest, with µP's width scaling of hidden matrices.

use super::rng::Rng;
use hyb_compiler::ir::ParamSpec;
use hyb_compiler::reference::Tensor;
use hyb_dsl::inits::Role;
use rayon::prelude::*;

/// Initial values of a parameter. Under µP (`width_mult = d / base_width`), hidden
/// matrices' standard deviation is divided by `√width_mult` (variance ∝ 1/fan-in) and the
/// output layer's by `width_mult`; embeddings and vectors keep theirs.
pub fn init(spec: &ParamSpec, seed: u64, index: u64, width_mult: f64) -> Tensor<f32> {
    let rng = Rng::for_step(seed, 3, index);
    let n: usize = spec.shape.iter().product();
    let arg = |k: &str, default: f64| spec.init.args.iter().find(|(a, _)| a == k).map_or(default, |(_, v)| *v);
    let std_scale = match spec.role {
        Role::Hidden => 1.0 / width_mult.sqrt(),
        Role::Output => 1.0 / width_mult,
        Role::Input | Role::Vector => 1.0,
    };
    let data = match spec.init.name.as_str() {
        "zeros" => vec![0.0; n],
        "ones" => vec![1.0; n],
        "constant" => vec![arg("value", 0.0) as f32; n],
        "uniform" => {
            let (lo, hi) = (arg("low", -1.0), arg("high", 1.0));
            drawn(n, &rng, 1, |r| lo + (hi - lo) * r.uniform())
        }
        "mamba_a_log" => {
            let (lo, hi) = (arg("low", 1.0), arg("high", 16.0));
            drawn(n, &rng, 1, |r| (lo + (hi - lo) * r.uniform()).ln())
        }
        "mamba_dt_bias" => {
            let (lo, hi, floor) = (arg("dt_min", 1e-3), arg("dt_max", 0.1), arg("floor", 1e-4));
            drawn(n, &rng, 1, |r| {
                let dt = (lo.ln() + (hi.ln() - lo.ln()) * r.uniform()).exp().max(floor);
                // inverse softplus
                dt + (-(-dt).exp_m1()).ln()
            })
        }
        _ => {
            let (mean, std) = (arg("mean", 0.0), arg("std", 0.02) * std_scale);
            drawn(n, &rng, 2, |r| mean + std * r.normal())
        }
    };
    Tensor::new(spec.shape.clone(), data)
}

/// Elements drawn per chunk a thread fills.
const CHUNK: usize = 1 << 16;

/// `n` values, the `i`-th from the draws `i·draws ..` of `rng`'s stream, filled by chunks in
/// parallel: the same values as one sequential pass, so a seed gives the same model on any
/// number of threads (a large model's initialisation is otherwise seconds of its start).
fn drawn(n: usize, rng: &Rng, draws: u64, value: impl Fn(&mut Rng) -> f64 + Sync) -> Vec<f32> {
    let mut data = vec![0.0f32; n];
    data.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut r = rng.skipped((c * CHUNK) as u64 * draws);
        for x in chunk {
            *x = value(&mut r) as f32;
        }
    });
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyb_compiler::ir::Init;

    fn spec(init: &str, n: usize) -> ParamSpec {
        ParamSpec {
            name: "w".into(),
            shape: vec![n],
            init: Init { name: init.into(), args: vec![] },
            role: Role::Hidden,
            shard: None,
            moments: None,
        }
    }

    #[test]
    fn chunks_filled_in_parallel_equal_one_sequential_pass() {
        let n = 3 * CHUNK + 5;
        for (name, draw) in [
            ("normal", &(|r: &mut Rng| 0.02 * r.normal()) as &dyn Fn(&mut Rng) -> f64),
            ("uniform", &|r: &mut Rng| -1.0 + 2.0 * r.uniform()),
        ] {
            let t = init(&spec(name, n), 5, 9, 1.0);
            let mut r = Rng::for_step(5, 3, 9);
            let sequential: Vec<f32> = (0..n).map(|_| draw(&mut r) as f32).collect();
            assert_eq!(t.data, sequential, "{name}");
        }
    }
}
