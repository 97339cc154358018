//! Parameter initialisers (`init normal(std = 0.02)`) and µP roles (`role hidden`).
//! The checker validates them here; the compiler reads the same tables to build the
//! parameter manifest.

/// An initialiser's name and its float arguments with defaults (`None`: required).
pub struct InitFn {
    pub name: &'static str,
    pub params: &'static [(&'static str, Option<f64>)],
    pub doc: &'static str,
}

pub const INITS: &[InitFn] = &[
    InitFn {
        name: "normal",
        params: &[("std", Some(0.02)), ("mean", Some(0.0))],
        doc: "Gaussian; under µP its std is rescaled by the parameter's role",
    },
    InitFn { name: "uniform", params: &[("low", None), ("high", None)], doc: "uniform on [low, high)" },
    InitFn { name: "zeros", params: &[], doc: "all zeros" },
    InitFn { name: "ones", params: &[], doc: "all ones" },
    InitFn { name: "constant", params: &[("value", None)], doc: "every element equal to `value`" },
    InitFn {
        name: "mamba_a_log",
        params: &[("low", Some(1.0)), ("high", Some(16.0))],
        doc: "log(A) with A uniform on [low, high] (Mamba-2's A_log)",
    },
    InitFn {
        name: "mamba_dt_bias",
        params: &[("dt_min", Some(0.001)), ("dt_max", Some(0.1)), ("floor", Some(1e-4))],
        doc: "inverse softplus of dt drawn log-uniformly from [dt_min, dt_max] (Mamba-2's dt_bias)",
    },
];

pub fn init_fn(name: &str) -> Option<&'static InitFn> {
    INITS.iter().find(|i| i.name == name)
}

/// Checks an initialiser's arguments (`None`: not known yet) against the distribution it
/// draws from: a reversed range or a negative std would be drawn from silently, and a
/// non-positive bound of a log-uniform draw gives NaN. Returns the argument to blame.
pub fn check_args(name: &str, args: &[(&'static str, Option<f64>)]) -> Result<(), (&'static str, String)> {
    let get = |k: &str| args.iter().find(|(n, _)| *n == k).and_then(|(_, v)| *v);
    let range = |low: &'static str, high: &'static str, positive: bool| -> Result<(), (&'static str, String)> {
        if let Some(l) = get(low).filter(|l| positive && *l <= 0.0) {
            return Err((low, format!("`{low}` must be positive, found {l}")));
        }
        match (get(low), get(high)) {
            (Some(l), Some(h)) if l > h => Err((high, format!("`{high}` ({h}) is below `{low}` ({l})"))),
            _ => Ok(()),
        }
    };
    match name {
        "normal" => match get("std") {
            Some(s) if s < 0.0 => Err(("std", format!("`std` must not be negative, found {s}"))),
            _ => Ok(()),
        },
        "uniform" => range("low", "high", false),
        "mamba_a_log" => range("low", "high", true),
        "mamba_dt_bias" => {
            range("dt_min", "dt_max", true)?;
            match get("floor") {
                Some(f) if f < 0.0 => Err(("floor", format!("`floor` must not be negative, found {f}"))),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// How a parameter's init and learning rate scale with width under µP (Tensor Programs V).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Maps a finite dimension to width (embeddings).
    Input,
    /// Width to width (most matrices).
    Hidden,
    /// Width to a finite dimension (the LM head).
    Output,
    /// Vectors and scalars: norm weights, biases, A_log, D, dt_bias.
    Vector,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Input, Role::Hidden, Role::Output, Role::Vector];

    pub fn name(self) -> &'static str {
        match self {
            Role::Input => "input",
            Role::Hidden => "hidden",
            Role::Output => "output",
            Role::Vector => "vector",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The role a parameter gets when its declaration names none.
    pub fn default_for_rank(rank: usize) -> Role {
        if rank >= 2 {
            Role::Hidden
        } else {
            Role::Vector
        }
    }
}
