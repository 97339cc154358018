//! Generation on one GPU through the CUDA executor. Both programs are prepared once, each
//! with its own copy of the weights uploaded once. Prefill's cache outputs are copied into
//! the decode program's cache inputs on the device (the caches never cross to the host);
//! a decode step then writes only its token id and position into fixed input buffers and
//! reads back only the logits. The caches are updated in place, every address is fixed,
//! so after the first step decode is one CUDA graph replayed per token. Prefill is planned
//! for its prompt's length, so it runs eagerly: a graph would be replayed only by another
//! prompt of that length.

use super::session::{ids, Backend, Programs, IDS};
use super::GenerateError;
use crate::cuda::{CudaError, CudaProgram, Device};
use hyb_compiler::elaborate::decode::POSITION;
use hyb_compiler::plan::View;
use hyb_compiler::reference::Tensor;
use std::collections::HashMap;
use std::sync::Arc;

/// The programs prepared on one GPU (planned by [`Programs::for_gpu`]).
pub struct Gpu<'p> {
    programs: &'p Programs,
    prefill: CudaProgram,
    decode: CudaProgram,
    /// Whether a prefill has seeded the decode program's caches.
    prefilled: bool,
}

impl<'p> Gpu<'p> {
    /// Prepares both programs on `device` (code compiled and loaded, arenas allocated) and
    /// uploads `params` into each.
    pub fn prepare(
        device: Arc<Device>,
        programs: &'p Programs,
        params: &HashMap<String, Tensor<f32>>,
    ) -> Result<Gpu<'p>, GenerateError> {
        let (pre, dec) = (&programs.prefill, &programs.decode);
        let mut prefill = CudaProgram::prepare(device.clone(), &pre.graph, &pre.program)?;
        prefill.graphs = false;
        prefill.load_params(&pre.graph, params)?;
        let mut decode = CudaProgram::prepare(device, &dec.graph, &dec.program)?;
        decode.load_params(&dec.graph, params)?;
        Ok(Gpu { programs, prefill, decode, prefilled: false })
    }
}

impl Backend for Gpu<'_> {
    fn prefill(&mut self, prompt: &[u32]) -> Result<Vec<f64>, GenerateError> {
        let programs = self.programs;
        programs.check_prompt(prompt.len())?;
        self.prefill.set(&programs.prefill.graph, IDS, &ids(prompt))?;
        self.prefill.run()?;
        let outputs = &self.prefill.program().outputs;
        let missing = || CudaError::Internal("prefill has fewer outputs than the caches it seeds".into());
        for (i, name) in programs.caches.iter().enumerate() {
            let view = outputs.get(programs.outputs + i).ok_or_else(missing)?;
            self.decode.copy_input(&programs.decode.graph, name, &self.prefill, view)?;
        }
        self.prefilled = true;
        let logits = outputs.first().ok_or_else(missing)?;
        Ok(self.prefill.read(&last_row(logits))?.data.iter().map(|&x| x as f64).collect())
    }

    fn step(&mut self, token: u32, position: usize) -> Result<Vec<f64>, GenerateError> {
        self.programs.check_position(position)?;
        if !self.prefilled {
            return Err(GenerateError::NotPrefilled);
        }
        let graph = &self.programs.decode.graph;
        self.decode.set(graph, IDS, &ids(&[token]))?;
        self.decode.set(graph, POSITION, &Tensor::scalar(position as f32))?;
        self.decode.run()?;
        Ok(self.decode.output(0)?.data.iter().map(|&x| x as f64).collect())
    }

    fn summary(&self) -> String {
        let (p, d) = (&self.prefill, &self.decode);
        format!(
            "on {}: prefill {} launches, decode {} launches (replayed as a CUDA graph), {} + {} PTX modules, \
             {:.2} GiB of device memory",
            p.device().name(),
            p.program().launches.len(),
            d.program().launches.len(),
            p.modules,
            d.modules,
            (p.bytes() + d.bytes()) as f64 / (1u64 << 30) as f64,
        )
    }
}

/// The innermost row of `view` at the last index of every outer axis: the logits after
/// the prompt's last token, read without the rows before it.
fn last_row(view: &View) -> View {
    let Some((&width, outer)) = view.shape.split_last() else { return view.clone() };
    let skip: isize = outer.iter().zip(&view.strides).map(|(&d, &s)| d.saturating_sub(1) as isize * s).sum();
    View {
        buffer: view.buffer,
        offset: (view.offset as isize + skip) as usize,
        shape: vec![width],
        strides: vec![view.strides[outer.len()]],
        dtype: view.dtype,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyb_dsl::value::DType;

    #[test]
    fn the_last_row_skips_every_outer_axis_to_its_end() {
        let logits = View { buffer: 3, offset: 5, shape: vec![1, 3, 4], strides: vec![12, 4, 1], dtype: DType::F32 };
        let row = last_row(&logits);
        assert_eq!((row.buffer, row.offset, row.shape, row.strides), (3, 13, vec![4], vec![1]));
        // A transposed view: rows are strided by one, elements by the row count.
        let t = View { buffer: 0, offset: 0, shape: vec![1, 3, 4], strides: vec![12, 1, 3], dtype: DType::F32 };
        let row = last_row(&t);
        assert_eq!((row.offset, row.strides), (2, vec![3]));
    }
}
