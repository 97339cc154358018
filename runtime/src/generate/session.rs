//! What a generation runs, whatever executes it: the planned prefill and decode programs
//! for one prompt length ([`Programs`]), and the [`Backend`] an executor implements to run
//! them over caches it keeps — prefill hands every cache's contents to the decode
//! program's inputs, where they stay (decode steps update them in place) until the
//! generation ends. The loop around a backend is [`super::generate`].

use super::GenerateError;
use crate::cpu::Kernels;
use hyb_compiler::codegen::cpu::Objects;
use hyb_compiler::pipeline::{CompiledGeneration, Executable};
use hyb_compiler::plan::Precision;
use hyb_compiler::reference::{Real, Tensor};
use hyb_dsl::value::DType;

/// The token ids input of the forward pass (and so of both programs).
pub(super) const IDS: &str = "ids";

/// Runs a generation's two programs on one executor, keeping the caches between them.
pub trait Backend {
    /// Runs prefill over `prompt` (as long as the programs were planned for) and seeds the
    /// decode program's caches with its cache outputs; returns the logits after the
    /// prompt's last token.
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f64>, GenerateError>;

    /// Runs one decode step over the caches a prefill seeded: `token` at `position` (the
    /// tokens before it already cached); returns the logits after it.
    fn step(&mut self, token: u32, position: usize) -> Result<Vec<f64>, GenerateError>;

    /// What ran where, for the report.
    fn summary(&self) -> String;
}

/// The planned prefill and decode programs for one prompt length, with their kernels as
/// native code for the CPU executor when the element type is `f32`.
pub struct Programs {
    pub(super) prefill: Executable,
    pub(super) decode: Executable,
    kernels: Option<(Kernels, Kernels)>,
    /// Decode input of each cache, in the order of prefill's and decode's cache outputs.
    pub(super) caches: Vec<String>,
    /// Outputs of the forward pass (the logits first) before the caches.
    pub(super) outputs: usize,
    prompt: usize,
    capacity: usize,
}

impl Programs {
    /// Plans both programs for the CPU executor, for one sequence with a prompt of
    /// `prompt` tokens, computing in `T`; in `f32`, kernels are prepared as native code
    /// (object code from `objects`).
    pub fn new<T: Real>(
        gen: &CompiledGeneration,
        prompt: usize,
        objects: &dyn Objects,
    ) -> Result<Programs, GenerateError> {
        let native = std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
        let mut programs = Programs::plan(gen, prompt, if native { DType::F32 } else { DType::F64 })?;
        if native {
            programs.kernels = Some((
                Kernels::prepare(&programs.prefill.graph, &programs.prefill.program, objects),
                Kernels::prepare(&programs.decode.graph, &programs.decode.program, objects),
            ));
        }
        Ok(programs)
    }

    /// Plans both programs in float32 for the CUDA executor, which prepares its own code.
    pub fn for_gpu(gen: &CompiledGeneration, prompt: usize) -> Result<Programs, GenerateError> {
        Programs::plan(gen, prompt, DType::F32)
    }

    /// Prefill is planned for exactly `prompt` tokens (its shapes are fixed in every
    /// launch); decode for one token over caches of the generation's capacity.
    fn plan(gen: &CompiledGeneration, prompt: usize, dtype: DType) -> Result<Programs, GenerateError> {
        if prompt == 0 || prompt > gen.capacity {
            return Err(GenerateError::Prompt { prompt, capacity: gen.capacity });
        }
        let precision = Precision::uniform(dtype);
        Ok(Programs {
            prefill: gen.plan_prefill(1, prompt, precision.clone())?,
            decode: gen.plan_decode(1, precision)?,
            kernels: None,
            caches: gen.caches.iter().map(|c| c.name.clone()).collect(),
            outputs: gen.outputs,
            prompt,
            capacity: gen.capacity,
        })
    }

    /// The prefill and decode programs, for tools that inspect what each launch runs.
    pub fn executables(&self) -> [&Executable; 2] {
        [&self.prefill, &self.decode]
    }

    /// Kernels running as generated code on the CPU, of all launches, over both programs.
    pub fn native_launches(&self) -> (usize, usize) {
        let launches = self.prefill.program.launches.len() + self.decode.program.launches.len();
        let generated = self.kernels.as_ref().map_or(0, |(p, d)| p.generated() + d.generated());
        (generated, launches)
    }

    /// The CPU kernels of prefill and of decode, when prepared.
    pub(super) fn kernels(&self) -> (Option<&Kernels>, Option<&Kernels>) {
        match &self.kernels {
            Some((p, d)) => (Some(p), Some(d)),
            None => (None, None),
        }
    }

    /// Refuses a prompt of another length than prefill was planned for.
    pub(super) fn check_prompt(&self, tokens: usize) -> Result<(), GenerateError> {
        if tokens != self.prompt {
            return Err(GenerateError::Prompt { prompt: tokens, capacity: self.prompt });
        }
        Ok(())
    }

    /// Refuses a decode step past the caches' capacity.
    pub(super) fn check_position(&self, position: usize) -> Result<(), GenerateError> {
        if position >= self.capacity {
            return Err(GenerateError::Full { capacity: self.capacity });
        }
        Ok(())
    }
}

/// `tokens` as the `[1, n]` ids input.
pub(super) fn ids<T: Real>(tokens: &[u32]) -> Tensor<T> {
    Tensor::new(vec![1, tokens.len()], tokens.iter().map(|&t| T::of(t as f64)).collect())
}
