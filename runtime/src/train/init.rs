//! Parameter initialisation from the manifest, with µP's width scaling of hidden matrices.

use super::rng::Rng;
use hyb_compiler::ir::ParamSpec;
use hyb_compiler::reference::Tensor;
use hyb_dsl::inits::Role;

/// Initial values of a parameter. Under µP (`width_mult = d / base_width`), hidden
/// matrices' standard deviation is divided by `√width_mult` (variance ∝ 1/fan-in) and the
/// output layer's by `width_mult`; embeddings and vectors keep theirs.
pub fn init(spec: &ParamSpec, seed: u64, index: u64, width_mult: f64) -> Tensor<f32> {
    let mut rng = Rng::for_step(seed, 3, index);
    let n: usize = spec.shape.iter().product();
    let arg = |k: &str, default: f64| spec.init.args.iter().find(|(a, _)| a == k).map_or(default, |(_, v)| *v);
    let std_scale = match spec.role {
        Role::Hidden => 1.0 / width_mult.sqrt(),
        Role::Output => 1.0 / width_mult,
        Role::Input | Role::Vector => 1.0,
    };
    let data: Vec<f64> = match spec.init.name.as_str() {
        "zeros" => vec![0.0; n],
        "ones" => vec![1.0; n],
        "constant" => vec![arg("value", 0.0); n],
        "uniform" => {
            let (lo, hi) = (arg("low", -1.0), arg("high", 1.0));
            (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
        }
        "mamba_a_log" => {
            let (lo, hi) = (arg("low", 1.0), arg("high", 16.0));
            (0..n).map(|_| (lo + (hi - lo) * rng.uniform()).ln()).collect()
        }
        "mamba_dt_bias" => {
            let (lo, hi, floor) = (arg("dt_min", 1e-3), arg("dt_max", 0.1), arg("floor", 1e-4));
            (0..n)
                .map(|_| {
                    let dt = (lo.ln() + (hi.ln() - lo.ln()) * rng.uniform()).exp().max(floor);
                    // inverse softplus
                    dt + (-(-dt).exp_m1()).ln()
                })
                .collect()
        }
        _ => {
            let (mean, std) = (arg("mean", 0.0), arg("std", 0.02) * std_scale);
            (0..n).map(|_| mean + std * rng.normal()).collect()
        }
    };
    Tensor::new(spec.shape.clone(), data.into_iter().map(|x| x as f32).collect())
}
