//! Choosing the next token from a row of logits: greedy (the first largest logit, as
//! `torch.argmax` picks), or temperature and nucleus (top-p) sampling from a seeded
//! stream, so a seed reproduces a generation.

use crate::train::rng::Rng;

/// How tokens are chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Softmax of `logits / temperature`, restricted to the most likely tokens whose
    /// probabilities first reach `top_p`, renormalised.
    TopP {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

/// A [`Sampling`] with its random stream.
pub struct Sampler {
    sampling: Sampling,
    rng: Rng,
}

/// A stream purpose of its own, so a seed gives generation draws unrelated to training's.
const PURPOSE: u64 = 0x6765_6e65_7261_7465;

impl Sampler {
    pub fn new(sampling: Sampling) -> Sampler {
        let seed = match sampling {
            Sampling::TopP { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Sampler { sampling, rng: Rng::for_step(seed, PURPOSE, 0) }
    }

    /// The next token, or `None` if a logit is not finite (a diverged model).
    pub fn next(&mut self, logits: &[f64]) -> Option<u32> {
        if logits.is_empty() || logits.iter().any(|x| !x.is_finite()) {
            return None;
        }
        match self.sampling {
            Sampling::Greedy => Some(argmax(logits)),
            Sampling::TopP { temperature, top_p, .. } => Some(self.nucleus(logits, temperature, top_p)),
        }
    }

    fn nucleus(&mut self, logits: &[f64], temperature: f64, top_p: f64) -> u32 {
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = logits.iter().map(|&x| ((x - max) / temperature).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        // Most likely first; equal probabilities by id, so the order is reproducible.
        order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
        let mut kept = 0.0;
        let mut n = 0;
        for &i in &order {
            kept += weights[i] / total;
            n += 1;
            if kept >= top_p {
                break;
            }
        }
        let nucleus = &order[..n];
        let mass: f64 = nucleus.iter().map(|&i| weights[i]).sum();
        let mut u = self.rng.uniform() * mass;
        for &i in nucleus {
            u -= weights[i];
            if u < 0.0 {
                return i as u32;
            }
        }
        nucleus[n - 1] as u32
    }
}

/// The index of the first largest value.
pub fn argmax(xs: &[f64]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_largest() {
        let mut s = Sampler::new(Sampling::Greedy);
        assert_eq!(s.next(&[0.1, 3.0, 3.0, -1.0]), Some(1));
        assert_eq!(s.next(&[0.1, f64::NAN]), None);
    }

    #[test]
    fn a_seed_reproduces_its_draws_and_top_p_cuts_the_tail() {
        let logits: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin() * 3.0).collect();
        let draw = |seed| {
            let mut s = Sampler::new(Sampling::TopP { temperature: 0.8, top_p: 0.9, seed });
            (0..40).map(|_| s.next(&logits).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // A tiny nucleus is the most likely token alone.
        let mut s = Sampler::new(Sampling::TopP { temperature: 1.0, top_p: 1e-9, seed: 3 });
        assert!((0..20).all(|_| s.next(&logits) == Some(argmax(&logits))));
    }
}
