//! Generation: the prefill and decode programs
//! ([`hyb_compiler::pipeline::compile_generation`]) run prompt-then-token-by-token over
//! caches that stay with the decode program ([`session`]), on the CPU executor ([`cpu`]) or
//! on a GPU ([`gpu`]) behind one [`Backend`] trait, so the loop here — prefill, then a
//! decode step per token, the next token chosen by [`sample`] — is the same for both.
//! Prefill and decode are timed apart: their speeds differ by orders of magnitude and are
//! reported as tokens/s each.

pub mod cpu;
pub mod gpu;
pub mod sample;
pub mod session;
pub mod text;

use crate::cuda::CudaError;
use hyb_compiler::elaborate::decode::DecodeError;
use hyb_compiler::plan::PlanError;
use hyb_compiler::reference::RunError;
use sample::{Sampler, Sampling};
use session::Backend;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error("a prompt of {prompt} tokens does not fit: the programs hold {capacity}")]
    Prompt { prompt: usize, capacity: usize },
    #[error("the caches are full ({capacity} tokens)")]
    Full { capacity: usize },
    #[error("the logits after {0} generated tokens are not finite")]
    NonFinite(usize),
    #[error("a decode step needs the caches of a prefill first")]
    NotPrefilled,
}

/// When to stop and how to choose.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Token ids that end the generation (kept as its last token), as Hugging Face's
    /// `eos_token_id`.
    pub eos: Vec<u32>,
}

/// A finished generation with its timings.
#[derive(Clone, Debug)]
pub struct Generated {
    pub tokens: Vec<u32>,
    /// Whether it ended at an end-of-sequence id (else at `max_new_tokens`).
    pub stopped_at_eos: bool,
    pub prefill: Duration,
    /// Decode steps run (one per generated token after the first, which prefill gives).
    pub steps: usize,
    pub decode: Duration,
}

/// Generates from `prompt` with `backend` (its programs planned for the prompt's length).
pub fn generate(backend: &mut dyn Backend, prompt: &[u32], settings: &Settings) -> Result<Generated, GenerateError> {
    let mut sampler = Sampler::new(settings.sampling.clone());
    let started = Instant::now();
    let logits = backend.prefill(prompt)?;
    let mut next = choose(&mut sampler, &logits, 0)?;
    let prefill = started.elapsed();
    let started = Instant::now();
    let mut tokens = vec![next];
    let mut steps = 0;
    while !settings.eos.contains(&next) && tokens.len() < settings.max_new_tokens {
        let logits = backend.step(next, prompt.len() + steps)?;
        steps += 1;
        next = choose(&mut sampler, &logits, tokens.len())?;
        tokens.push(next);
    }
    Ok(Generated { stopped_at_eos: settings.eos.contains(&next), tokens, prefill, steps, decode: started.elapsed() })
}

fn choose(sampler: &mut Sampler, logits: &[f64], made: usize) -> Result<u32, GenerateError> {
    sampler.next(logits).ok_or(GenerateError::NonFinite(made))
}
