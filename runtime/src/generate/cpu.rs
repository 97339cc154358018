//! Generation on the CPU executor: prefill runs in an arena of its own, dropped once its
//! caches are handed on, so the weights are held twice only while prefill runs; the decode
//! program's arena then holds the weights and caches, decode steps updating them in place.

use super::session::{ids, Backend, Programs, IDS};
use super::GenerateError;
use crate::cpu::Resident;
use hyb_compiler::elaborate::decode::POSITION;
use hyb_compiler::reference::{Real, Tensor};
use std::collections::HashMap;

/// The programs on the CPU, computing in `T`.
pub struct Cpu<'p, T> {
    programs: &'p Programs,
    params: &'p HashMap<String, Tensor<T>>,
    /// Made by the first prefill, after prefill's arena is dropped.
    decode: Option<Resident<'p, T>>,
}

impl<'p, T: Real> Cpu<'p, T> {
    pub fn new(programs: &'p Programs, params: &'p HashMap<String, Tensor<T>>) -> Cpu<'p, T> {
        Cpu { programs, params, decode: None }
    }

    /// Runs prefill on `prompt` and seeds the caches; returns the logits at every position
    /// of the prompt, `[prompt, vocab]` (generation needs only the last).
    pub fn prefill_logits(&mut self, prompt: &[u32]) -> Result<Tensor<T>, GenerateError> {
        let programs = self.programs;
        programs.check_prompt(prompt.len())?;
        let (pk, dk) = programs.kernels();
        let pre = &programs.prefill;
        let mut run = Resident::new(&pre.graph, &pre.program, pk, self.params)?;
        run.set(IDS, &ids(prompt))?;
        let wanted: Vec<usize> =
            std::iter::once(0).chain(programs.outputs..programs.outputs + programs.caches.len()).collect();
        let mut outs = run.run(&wanted)?.into_iter();
        let logits = outs.next().expect("the logits are asked for");
        drop(run);
        let decode = match &mut self.decode {
            Some(d) => d,
            None => {
                let dec = &programs.decode;
                self.decode.insert(Resident::new(&dec.graph, &dec.program, dk, self.params)?)
            }
        };
        for (name, value) in programs.caches.iter().zip(outs) {
            decode.set(name, &value)?;
        }
        Ok(Tensor::new(logits.shape[1..].to_vec(), logits.data))
    }
}

impl<T: Real> Backend for Cpu<'_, T> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f64>, GenerateError> {
        let logits = self.prefill_logits(prompt)?;
        let vocab = *logits.shape.last().unwrap_or(&0);
        Ok(logits.data[logits.data.len() - vocab..].iter().map(|x| x.f64()).collect())
    }

    fn step(&mut self, token: u32, position: usize) -> Result<Vec<f64>, GenerateError> {
        self.programs.check_position(position)?;
        let decode = self.decode.as_mut().ok_or(GenerateError::NotPrefilled)?;
        decode.set(IDS, &ids(&[token]))?;
        decode.set(POSITION, &Tensor::scalar(T::of(position as f64)))?;
        let logits = decode.run(&[0])?.remove(0);
        Ok(logits.data.iter().map(|x| x.f64()).collect())
    }

    fn summary(&self) -> String {
        let (native, launches) = self.programs.native_launches();
        format!("{native} of {launches} launches native")
    }
}
