//! One generation's programs and caches: prefill runs the prompt and hands every cache's
//! contents to the decode program's arena, where they stay — decode steps update them in
//! place — until the generation ends.

use super::GenerateError;
use crate::cpu::{Kernels, Resident};
use hyb_compiler::codegen::cpu::Objects;
use hyb_compiler::elaborate::decode::POSITION;
use hyb_compiler::pipeline::{CompiledGeneration, Executable};
use hyb_compiler::plan::Precision;
use hyb_compiler::reference::{Real, Tensor};
use hyb_dsl::value::DType;
use std::collections::HashMap;

/// The token ids input of the forward pass (and so of both programs).
const IDS: &str = "ids";

/// The planned prefill and decode programs for one prompt length, with their kernels as
/// native code when the element type is `f32`.
pub struct Programs {
    prefill: Executable,
    decode: Executable,
    kernels: Option<(Kernels, Kernels)>,
    /// Decode input of each cache, in the order of prefill's and decode's cache outputs.
    caches: Vec<String>,
    outputs: usize,
    prompt: usize,
    capacity: usize,
}

impl Programs {
    /// Plans both programs for one sequence with a prompt of `prompt` tokens, computing in
    /// `T`; in `f32`, kernels are prepared as native code (object code from `objects`).
    pub fn new<T: Real>(
        gen: &CompiledGeneration,
        prompt: usize,
        objects: &dyn Objects,
    ) -> Result<Programs, GenerateError> {
        if prompt == 0 || prompt > gen.capacity {
            return Err(GenerateError::Prompt { prompt, capacity: gen.capacity });
        }
        let native = std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
        let precision = Precision::uniform(if native { DType::F32 } else { DType::F64 });
        let prefill = gen.plan_prefill(1, prompt, precision.clone())?;
        let decode = gen.plan_decode(1, precision)?;
        let kernels = native.then(|| {
            (
                Kernels::prepare(&prefill.graph, &prefill.program, objects),
                Kernels::prepare(&decode.graph, &decode.program, objects),
            )
        });
        Ok(Programs {
            prefill,
            decode,
            kernels,
            caches: gen.caches.iter().map(|c| c.name.clone()).collect(),
            outputs: gen.outputs,
            prompt,
            capacity: gen.capacity,
        })
    }

    /// Kernels running as generated code, of all launches, over both programs.
    pub fn native_launches(&self) -> (usize, usize) {
        let launches = self.prefill.program.launches.len() + self.decode.program.launches.len();
        let generated = self.kernels.as_ref().map_or(0, |(p, d)| p.generated() + d.generated());
        (generated, launches)
    }
}

/// A generation in progress: the decode program's arena holding the weights and caches.
pub struct Session<'p, T> {
    programs: &'p Programs,
    decode: Resident<'p, T>,
    /// Tokens the caches hold.
    position: usize,
}

impl<'p, T: Real> Session<'p, T> {
    /// Runs prefill on `prompt` and seeds the caches; returns the session and the prompt's
    /// logits `[prompt, vocab]`.
    pub fn prefill(
        programs: &'p Programs,
        params: &HashMap<String, Tensor<T>>,
        prompt: &[u32],
    ) -> Result<(Session<'p, T>, Tensor<T>), GenerateError> {
        if prompt.len() != programs.prompt {
            return Err(GenerateError::Prompt { prompt: prompt.len(), capacity: programs.prompt });
        }
        let (pk, dk) = match &programs.kernels {
            Some((p, d)) => (Some(p), Some(d)),
            None => (None, None),
        };
        let pre = &programs.prefill;
        let mut run = Resident::new(&pre.graph, &pre.program, pk, params)?;
        run.set(IDS, &ids(prompt))?;
        let wanted: Vec<usize> =
            std::iter::once(0).chain(programs.outputs..programs.outputs + programs.caches.len()).collect();
        let mut outs = run.run(&wanted)?.into_iter();
        let logits = outs.next().expect("the logits are asked for");
        drop(run);
        let dec = &programs.decode;
        let mut decode = Resident::new(&dec.graph, &dec.program, dk, params)?;
        for (name, value) in programs.caches.iter().zip(outs) {
            decode.set(name, &value)?;
        }
        let logits = Tensor::new(logits.shape[1..].to_vec(), logits.data);
        Ok((Session { programs, decode, position: prompt.len() }, logits))
    }

    /// Appends `token` at the next position; returns the logits after it.
    pub fn step(&mut self, token: u32) -> Result<Vec<T>, GenerateError> {
        if self.position >= self.programs.capacity {
            return Err(GenerateError::Full { capacity: self.programs.capacity });
        }
        self.decode.set(IDS, &ids(&[token]))?;
        self.decode.set(POSITION, &Tensor::scalar(T::of(self.position as f64)))?;
        let logits = self.decode.run(&[0])?.remove(0);
        self.position += 1;
        Ok(logits.data)
    }
}

fn ids<T: Real>(tokens: &[u32]) -> Tensor<T> {
    Tensor::new(vec![1, tokens.len()], tokens.iter().map(|&t| T::of(t as f64)).collect())
}
