//! A program prepared for the GPU: every launch's code loaded (generated PTX, cuBLASLt
//! plans), and one arena allocated — the plan's buffers, then the scratch space chains and
//! templates use, then cuBLASLt's workspace. Every address a launch uses is fixed here, so
//! a step queues the same launches over the same memory, and after the first run the
//! whole sequence is captured as a CUDA graph and replayed.

use super::gemm::{GemmPlan, Operand, WORKSPACE_BYTES};
use super::kernels::{Kernel, Kernels, Loaded, Source};
use super::memory::Arena;
use super::nccl::{Collective, Communicators, Exchange, Peers};
use super::{CudaError, Device};
use crate::cpu::Axis;
use cudarc::driver::{sys, CudaEvent, CudaGraph};
use hyb_compiler::codegen::chain::{self, Slot, Step};
use hyb_compiler::codegen::unit::{self, Unit};
use hyb_compiler::codegen::{Storage, Symbols, Target};
use hyb_compiler::ir::{Graph, Op};
use hyb_compiler::ops::Prim;
use hyb_compiler::plan::{Buffer, Launch, LaunchKind, Program, Role, Stream, View};
use hyb_compiler::reference::{RunError, Tensor};
use hyb_dsl::value::DType;
use std::collections::HashMap;
use std::sync::Arc;

/// Where a launch's kernel finds one view: byte offset in the arena and element strides.
#[derive(Clone, Debug)]
struct Placed {
    offset: usize,
    strides: Vec<isize>,
}

/// One generated kernel's launch: its kernel and the addresses it gets.
struct Call {
    kernel: Arc<Kernel>,
    /// Byte offsets of the views (inputs, outputs), then of the workspace buffers.
    offsets: Vec<usize>,
    strides: Vec<i64>,
}

enum Prepared {
    Call(Call),
    Gemm(GemmPlan),
    /// An NCCL collective over contiguous arena bytes.
    Collective(Collective),
    /// A copy whose source depends on the rank: its first view starts `step` bytes further
    /// on for every rank before this one on `axis` (a rank's shard, a replica's run).
    Ranked {
        call: Call,
        step: usize,
        axis: Axis,
    },
    /// Steps in order, over the launch's views and its scratch buffers.
    Chain(Vec<Prepared>),
}

/// A program ready to run on one GPU.
pub struct CudaProgram {
    device: Arc<Device>,
    program: Program,
    /// Nodes whose launches check token ids before the step (embeddings).
    embeddings: Vec<(View, usize)>,
    arena: Arena,
    /// Byte offset of cuBLASLt's workspace in the arena.
    workspace_at: usize,
    launches: Vec<Prepared>,
    /// For each launch on the exchange stream, the events it starts after (recorded on
    /// the compute stream) and its end (recorded on the exchange stream).
    exchanges: HashMap<usize, (CudaEvent, CudaEvent)>,
    captured: Option<CudaGraph>,
    /// The job's NCCL communicators, which the collective launches need
    /// ([`CudaProgram::connect`]).
    comms: Option<Arc<Communicators>>,
    /// The numbers of parts whose sharing ranks the collectives exchange within
    /// ([`Communicators::join`]).
    sharing: Vec<usize>,
    /// Whether steps are captured and replayed as a CUDA graph.
    pub graphs: bool,
    /// Distinct PTX modules the program launches.
    pub modules: usize,
    /// The kernels its preparation generated and loaded (those another program of the
    /// device had loaded are not among them).
    pub loaded: Loaded,
    /// Wall time of preparing the program (compiling PTX, loading it, planning GEMMs).
    pub seconds: f64,
    /// Seconds the last full [`CudaProgram::load`] took (weights, moments and inputs).
    pub upload_s: f64,
    /// Seconds the first run took eagerly, then to capture and instantiate its graph.
    pub first_run: Option<(f64, f64)>,
}

/// The storage of a view's element type on the GPU.
fn storage(d: DType) -> Storage {
    Storage::of(d)
}

fn contiguous(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![1isize; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * shape[k + 1] as isize;
    }
    strides
}

impl CudaProgram {
    /// Compiles and loads the code of every launch of `program` (planned from `graph`),
    /// and allocates its arena, refusing before allocating when it does not fit.
    pub fn prepare(device: Arc<Device>, graph: &Graph, program: &Program) -> Result<CudaProgram, CudaError> {
        Self::prepare_in(device, graph, program, None)
    }

    /// As [`CudaProgram::prepare`], with the arena inside `host`'s where it fits: past
    /// `host`'s weights, optimizer state, inputs and the outputs `keep` (which its runs
    /// write in place), so the two never run at once. A run of this program overwrites
    /// everything else of `host`'s: read its other outputs before.
    pub fn prepare_beside(
        device: Arc<Device>,
        graph: &Graph,
        program: &Program,
        host: &CudaProgram,
        keep: std::ops::Range<usize>,
    ) -> Result<CudaProgram, CudaError> {
        let buffers = &host.program.buffers;
        let kept = (host.program.outputs.get(keep).unwrap_or_default().iter().map(|v| v.buffer))
            .chain(buffers.iter().enumerate().filter(|(_, b)| b.persistent()).map(|(i, _)| i));
        let from = kept.map(|i| buffers[i].offset + buffers[i].bytes).max().unwrap_or(0);
        Self::prepare_in(device, graph, program, Some((&host.arena, from)))
    }

    fn prepare_in(
        device: Arc<Device>,
        graph: &Graph,
        program: &Program,
        host: Option<(&Arena, usize)>,
    ) -> Result<CudaProgram, CudaError> {
        let started = std::time::Instant::now();
        let symbols = Symbols { batch: program.batch, seq: program.seq };
        // Scratch starts past the plan's arena, 256-byte aligned.
        let scratch_at = program.memory.arena_bytes.next_multiple_of(256);
        let mut builder = Builder {
            device: &device,
            graph,
            symbols,
            bf16_scratch: program.precision.activations == DType::BF16,
            kernels: device.kernels.lock().expect("a failed preparation leaves no lock poisoned"),
            used: Default::default(),
            scratch_at,
            cursor: scratch_at,
            scratch_end: scratch_at,
            sharing: Default::default(),
        };
        let mut launches: Vec<Option<Prepared>> = (0..program.launches.len()).map(|_| None).collect();
        let embeddings = program
            .launches
            .iter()
            .filter(|l| matches!(&graph.nodes[l.node].op, Op::Prim(Prim::Embedding(_))))
            .map(|l| (l.inputs[1].clone(), l.inputs[0].shape[0]))
            .collect();
        // The compute stream's launches share one scratch region, and the exchange
        // stream's, which run beside them, another after it.
        for stream in [Stream::Compute, Stream::Exchange] {
            if stream == Stream::Exchange {
                builder.scratch_at = builder.scratch_end.next_multiple_of(256);
                builder.scratch_end = builder.scratch_at;
            }
            for (i, launch) in program.launches.iter().enumerate().filter(|(_, l)| l.stream == stream) {
                let place = |v: &View| Placed {
                    offset: program.buffers[v.buffer].offset + v.offset * v.dtype.size_bytes(),
                    strides: v.strides.clone(),
                };
                let inputs: Vec<Placed> = launch.inputs.iter().map(place).collect();
                let outputs: Vec<Placed> = launch.outputs.iter().map(place).collect();
                builder.cursor = builder.scratch_at;
                let prepared = builder
                    .launch(launch, &inputs, &outputs)
                    .map_err(|e| e.at_launch(i, &graph.nodes[launch.node].op))?;
                launches[i] = Some(prepared);
            }
        }
        let launches = launches.into_iter().map(|p| p.expect("every launch is on a stream")).collect();
        let event = || device.context.new_event(None).map_err(|e| CudaError::driver("creating an event", e));
        let exchanges = (0..program.launches.len())
            .filter(|&i| program.launches[i].stream == Stream::Exchange)
            .map(|i| Ok((i, (event()?, event()?))))
            .collect::<Result<_, CudaError>>()?;
        let workspace_at = builder.scratch_end.next_multiple_of(256);
        let loaded = builder.kernels.load(&device)?;
        let modules = builder.used.len();
        let sharing = builder.sharing.iter().copied().collect();
        drop(builder);
        let bytes = workspace_at + WORKSPACE_BYTES;
        let arena = match host.and_then(|(arena, from)| arena.within(from, bytes)) {
            Some(inside) => inside,
            None => Arena::alloc(&device, bytes, &arena_breakdown(program, bytes))?,
        };
        // Nothing reads memory it did not write: poison it, so a launch that does shows NaN.
        arena.fill(&device, 0, bytes, 0xFF)?;
        Ok(CudaProgram {
            device,
            program: program.clone(),
            embeddings,
            arena,
            workspace_at,
            launches,
            exchanges,
            captured: None,
            comms: None,
            sharing,
            graphs: true,
            modules,
            loaded,
            seconds: started.elapsed().as_secs_f64(),
            upload_s: 0.0,
            first_run: None,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Gives the program the job's communicators, through which its collective launches
    /// exchange with the other ranks; a program with collectives refuses to run without.
    pub fn connect(&mut self, comms: Arc<Communicators>) {
        self.comms = Some(comms);
        self.captured = None;
    }

    /// The numbers of parts whose sharing ranks the program's collectives exchange within.
    pub fn sharing(&self) -> &[usize] {
        &self.sharing
    }

    /// Whether the program exchanges with other ranks.
    pub fn has_collectives(&self) -> bool {
        self.program.launches.iter().any(|l| matches!(l.kind, LaunchKind::Collective(_)))
    }

    /// Bytes of device memory the program allocated (none when its arena is inside
    /// another program's).
    pub fn bytes(&self) -> usize {
        self.arena.own_bytes()
    }

    /// Bytes of the program's arena, wherever it lies.
    pub fn arena_bytes(&self) -> usize {
        self.arena.bytes()
    }

    /// Copies `params` and `inputs` into their buffers (float32), checking names, shapes
    /// and token ids.
    pub fn load(
        &mut self,
        graph: &Graph,
        params: &HashMap<String, Tensor<f32>>,
        inputs: &HashMap<String, Tensor<f32>>,
    ) -> Result<(), CudaError> {
        let started = std::time::Instant::now();
        self.load_where(graph, params, inputs, |_| true)?;
        self.upload_s = started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Copies in the program inputs that are not state (a step's batch, learning rate and
    /// bias corrections), leaving the weights and moments the device holds.
    pub fn load_inputs(&mut self, graph: &Graph, inputs: &HashMap<String, Tensor<f32>>) -> Result<(), CudaError> {
        self.load_where(graph, &HashMap::new(), inputs, |b| !is_state(b))
    }

    fn load_where(
        &mut self,
        graph: &Graph,
        params: &HashMap<String, Tensor<f32>>,
        inputs: &HashMap<String, Tensor<f32>>,
        wanted: impl Fn(&Buffer) -> bool,
    ) -> Result<(), CudaError> {
        let program = &self.program;
        for b in program.buffers.iter().filter(|b| b.persistent() && wanted(b)) {
            let n = &graph.nodes[b.node];
            let value = match &n.op {
                Op::Param(p) => crate::cpu::param(graph, *p, params)?,
                Op::Input(name) => inputs.get(name).ok_or_else(|| RunError::MissingInput(name.clone()))?,
                _ => continue,
            };
            if value.len() != b.elements {
                return Err(RunError::InputShape {
                    name: format!("%{}", b.node),
                    expected: format!("{} elements for B={} T={}", b.elements, program.batch, program.seq),
                    got: value.shape.clone(),
                }
                .into());
            }
            if b.dtype != DType::F32 {
                return Err(CudaError::Unsupported(format!("a {:?} weight or input buffer (f32 only)", b.dtype)));
            }
            self.arena.upload(&self.device, b.offset, &value.data)?;
        }
        // Token ids outside the vocabulary select nothing on the GPU: refuse them here,
        // as the reference does.
        for (view, vocab) in &self.embeddings {
            let ids = self.read(view)?;
            if let Some(&id) = ids.data.iter().find(|&&id| id < 0.0 || id >= *vocab as f32 || id.fract() != 0.0) {
                return Err(RunError::TokenOutOfRange { id: id as f64, vocab: *vocab }.into());
            }
        }
        Ok(())
    }

    /// Queues a copy of the weights and moments into `copy` (laid out one after another),
    /// or back from it.
    fn copy_state(&self, copy: &super::DeviceMemory, into_copy: bool) -> Result<(), CudaError> {
        let mut at = 0;
        for (offset, bytes) in self.state_buffers() {
            let (state, kept) = (self.arena.at(offset), copy.at(at));
            let (to, from) = if into_copy { (kept, state) } else { (state, kept) };
            copy_device(&self.device, to, from, bytes)?;
            at += bytes;
        }
        Ok(())
    }

    /// Byte offsets and sizes of the weight and moment buffers.
    fn state_buffers(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.program.buffers.iter().filter(|b| is_state(b)).map(|b| (b.offset, b.bytes))
    }

    /// Queues every launch; the first run is captured as a CUDA graph (when
    /// [`CudaProgram::graphs`] is set) and later runs replay it. Waits for the step.
    pub fn run(&mut self) -> Result<(), CudaError> {
        if let Some(graph) = &self.captured {
            graph.launch().map_err(|e| CudaError::driver("replaying the step's CUDA graph", e))?;
            return self.device.synchronize();
        }
        if !self.graphs {
            self.queue(0..self.launches.len())?;
            return self.device.synchronize();
        }
        // The first run runs eagerly (so a fault names its launch), then is captured.
        let started = std::time::Instant::now();
        self.queue(0..self.launches.len())?;
        self.device.synchronize()?;
        let eager_s = started.elapsed().as_secs_f64();
        let stream = self.device.stream.clone();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| CudaError::driver("capturing the step", e))?;
        let queued = self.queue(0..self.launches.len());
        let graph = stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| CudaError::driver("instantiating the step's CUDA graph", e))?;
        queued?;
        self.captured = graph;
        self.first_run = Some((eager_s, started.elapsed().as_secs_f64() - eager_s));
        Ok(())
    }

    /// Runs every launch once more, each between two events, and returns each launch's
    /// time in milliseconds. The weights and moments it updates are copied aside first and
    /// put back after, so the run it times leaves the training state as it was; the copy
    /// lives only while it runs.
    pub fn profile(&self) -> Result<Vec<f64>, CudaError> {
        let event = || {
            self.device
                .context
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| CudaError::driver("creating an event", e))
        };
        let marks: Vec<_> = (0..=self.launches.len()).map(|_| event()).collect::<Result<_, _>>()?;
        let bytes: usize = self.state_buffers().map(|(_, n)| n).sum();
        let copy = super::DeviceMemory::alloc(&self.device, bytes.max(1), "the copy of the weights and moments")?;
        self.copy_state(&copy, true)?;
        let record =
            |i: usize| marks[i].record(&self.device.stream).map_err(|e| CudaError::driver("recording an event", e));
        record(0)?;
        for i in 0..self.launches.len() {
            self.queue(i..i + 1)?;
            record(i + 1)?;
        }
        self.device.synchronize()?;
        let times = (0..self.launches.len())
            .map(|i| marks[i].elapsed_ms(&marks[i + 1]).map(f64::from).map_err(|e| CudaError::driver("timing", e)))
            .collect::<Result<Vec<_>, _>>()?;
        self.copy_state(&copy, false)?;
        self.device.synchronize()?;
        Ok(times)
    }

    /// Queues launches `range` without waiting: an exchange-stream launch after the
    /// compute launches queued before it, a compute launch after the exchange it waits for;
    /// by the end of the range the compute stream has joined every exchange in it.
    pub fn queue(&self, range: std::ops::Range<usize>) -> Result<(), CudaError> {
        let at = Addresses { base: self.arena.at(0), workspace: self.arena.at(self.workspace_at) };
        let (compute, exchange) = (&self.device.stream, &self.device.exchange);
        let driver = |what: &'static str| move |e| CudaError::driver(what, e);
        let start = range.start;
        // The last exchange queued and not yet joined.
        let mut open = None;
        for i in range {
            let launch = &self.program.launches[i];
            if let Some(e) = launch.waits_for.filter(|&e| e >= start) {
                compute.wait(&self.exchanges[&e].1).map_err(driver("waiting for an exchange"))?;
                if open.is_some_and(|o| o <= e) {
                    open = None;
                }
            }
            let stream = match launch.stream {
                Stream::Compute => compute,
                Stream::Exchange => {
                    let after = &self.exchanges[&i].0;
                    after.record(compute).map_err(driver("starting an exchange"))?;
                    exchange.wait(after).map_err(driver("starting an exchange"))?;
                    open = Some(i);
                    exchange
                }
            };
            self.queue_one(&self.launches[i], &at, stream.cu_stream()).map_err(|e| CudaError::Launch {
                kernel: format!("launch {i} (node %{})", launch.node),
                entry: String::new(),
                error: e.to_string(),
            })?;
            if launch.stream == Stream::Exchange {
                self.exchanges[&i].1.record(exchange).map_err(driver("ending an exchange"))?;
            }
        }
        if let Some(e) = open {
            compute.wait(&self.exchanges[&e].1).map_err(driver("waiting for an exchange"))?;
        }
        Ok(())
    }

    /// The elements of `view` (f32 or bf16 storage) as f32, in row-major order.
    pub fn read(&self, view: &View) -> Result<Tensor<f32>, CudaError> {
        let n: usize = view.shape.iter().product();
        let size = view.dtype.size_bytes();
        if !matches!(view.dtype, DType::F32 | DType::BF16) {
            return Err(CudaError::Unsupported(format!("reading a {:?} view", view.dtype)));
        }
        let base = self.program.buffers[view.buffer].offset / size + view.offset;
        // The span of elements the view reaches.
        let (mut lo, mut hi) = (0isize, 0isize);
        for (&d, &s) in view.shape.iter().zip(&view.strides) {
            if d > 1 {
                let reach = (d as isize - 1) * s;
                if reach < 0 {
                    lo += reach
                } else {
                    hi += reach
                }
            }
        }
        if n == 0 {
            return Ok(Tensor::new(view.shape.clone(), vec![]));
        }
        let start = base as isize + lo;
        let count = (hi - lo + 1) as usize;
        let span: Vec<f32> = if view.dtype == DType::BF16 {
            let mut bits = vec![0u16; count];
            self.arena.download(&self.device, start as usize * size, &mut bits)?;
            bits.into_iter().map(|b| f32::from_bits(u32::from(b) << 16)).collect()
        } else {
            let mut span = vec![0f32; count];
            self.arena.download(&self.device, start as usize * size, &mut span)?;
            span
        };
        let mut data = Vec::with_capacity(n);
        let mut index = vec![0usize; view.shape.len()];
        for _ in 0..n {
            let at: isize = -lo + index.iter().zip(&view.strides).map(|(&i, &s)| i as isize * s).sum::<isize>();
            data.push(span[at as usize]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < view.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(Tensor::new(view.shape.clone(), data))
    }

    /// The program's outputs, read back.
    pub fn outputs(&self) -> Result<Vec<Tensor<f32>>, CudaError> {
        self.program.outputs.iter().map(|v| self.read(v)).collect()
    }

    /// Output `i`, read back.
    pub fn output(&self, i: usize) -> Result<Tensor<f32>, CudaError> {
        let view = self.program.outputs.get(i).ok_or_else(|| CudaError::Internal(format!("no output {i}")))?;
        self.read(view)
    }

    /// Writes `data` (float32) at byte `offset` of the plan's arena: how a check gives a
    /// launch the CPU executor's memory.
    pub fn write_buffer(&self, offset: usize, data: &[f32]) -> Result<(), CudaError> {
        if offset + 4 * data.len() > self.program.memory.arena_bytes {
            return Err(CudaError::Internal("a write past the plan's arena".into()));
        }
        self.arena.upload(&self.device, offset, data)
    }

    /// Fills the buffer of `view` with NaN.
    pub fn poison(&self, view: &View) -> Result<(), CudaError> {
        let b = &self.program.buffers[view.buffer];
        self.arena.fill(&self.device, b.offset, b.bytes, 0xFF)
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Copies `params` into the weight buffers only, leaving every input as it is: for a
    /// program whose inputs are then written one by one ([`CudaProgram::set`]), as
    /// generation's are, so weights go up once and caches are never overwritten.
    pub fn load_params(&mut self, graph: &Graph, params: &HashMap<String, Tensor<f32>>) -> Result<(), CudaError> {
        for b in self.program.buffers.iter().filter(|b| is_state(b)) {
            if let Op::Param(p) = &graph.nodes[b.node].op {
                let value = crate::cpu::param(graph, *p, params)?;
                fits(&format!("%{}", b.node), b, &value.shape)?;
                self.arena.upload(&self.device, b.offset, &value.data)?;
            }
        }
        Ok(())
    }

    /// Writes input `name` (its whole buffer, float32), as the CPU executor's
    /// [`Resident::set`](crate::cpu::Resident::set) does: a decode step writes its token
    /// and position this way while the weights and the caches updated in place stay as the
    /// device holds them, so a captured graph replays over the new values. Token ids are
    /// checked against the vocabulary on the host, before the copy.
    pub fn set(&mut self, graph: &Graph, name: &str, value: &Tensor<f32>) -> Result<(), CudaError> {
        let (id, b) = self.input(graph, name)?;
        fits(name, b, &value.shape)?;
        for (_, vocab) in self.embeddings.iter().filter(|(v, _)| v.buffer == id) {
            if let Some(&x) = value.data.iter().find(|&&x| x < 0.0 || x >= *vocab as f32 || x.fract() != 0.0) {
                return Err(RunError::TokenOutOfRange { id: x as f64, vocab: *vocab }.into());
            }
        }
        self.arena.upload(&self.device, b.offset, &value.data)
    }

    /// Copies `view` of `from`, another program on the same GPU, into input `name` of this
    /// one (float32, as many elements): how prefill's caches become decode's without a trip
    /// through the host. A contiguous view is one device-to-device copy; any other is
    /// gathered through the host. Token ids are refused: [`CudaProgram::set`] checks them.
    pub fn copy_input(&mut self, graph: &Graph, name: &str, from: &CudaProgram, view: &View) -> Result<(), CudaError> {
        if !Arc::ptr_eq(&self.device, &from.device) {
            return Err(CudaError::Internal(format!("copying `{name}` between programs on different GPUs")));
        }
        let (id, b) = self.input(graph, name)?;
        if self.embeddings.iter().any(|(v, _)| v.buffer == id) {
            return Err(CudaError::Internal(format!(
                "the token ids `{name}` are written with `set`, which checks them"
            )));
        }
        fits(name, b, &view.shape)?;
        if view.dtype != DType::F32 {
            return Err(CudaError::Unsupported(format!("copying a {:?} view into `{name}`", view.dtype)));
        }
        let strides = contiguous(&view.shape);
        if view.shape.iter().zip(&view.strides).zip(strides).any(|((&d, &s), c)| d != 1 && s != c) {
            return self.arena.upload(&self.device, b.offset, &from.read(view)?.data);
        }
        let source = from.program.buffers.get(view.buffer).ok_or_else(|| {
            CudaError::Internal(format!("the view copied into `{name}` names no buffer of its program"))
        })?;
        let at = source.offset + view.offset * 4;
        if at + 4 * b.elements > from.program.memory.arena_bytes {
            return Err(CudaError::Internal(format!("the view copied into `{name}` reaches past its program's arena")));
        }
        copy_device(&self.device, self.arena.at(b.offset), from.arena.at(at), 4 * b.elements)?;
        self.device.synchronize()
    }

    /// The persistent buffer (and its index) of input `name`.
    fn input(&self, graph: &Graph, name: &str) -> Result<(usize, &Buffer), CudaError> {
        self.program
            .buffers
            .iter()
            .enumerate()
            .find(|(_, b)| b.persistent() && matches!(&graph.nodes[b.node].op, Op::Input(n) if n == name))
            .ok_or_else(|| RunError::MissingInput(name.to_string()).into())
    }
}

/// Whether a value of `shape` fills float32 buffer `b` (named `name` in errors).
fn fits(name: &str, b: &Buffer, shape: &[usize]) -> Result<(), CudaError> {
    if shape.iter().product::<usize>() != b.elements {
        return Err(RunError::InputShape {
            name: name.to_string(),
            expected: format!("{} elements", b.elements),
            got: shape.to_vec(),
        }
        .into());
    }
    if b.dtype != DType::F32 {
        return Err(CudaError::Unsupported(format!("a {:?} buffer for `{name}` (f32 only)", b.dtype)));
    }
    Ok(())
}

/// Whether a buffer holds training state: weights and optimizer moments.
fn is_state(b: &Buffer) -> bool {
    matches!(b.role, Role::Weight | Role::Optimizer)
}

/// Queues a device-to-device copy on the stream.
fn copy_device(device: &Device, to: u64, from: u64, bytes: usize) -> Result<(), CudaError> {
    // Safety: both ranges lie inside allocations of at least `bytes` (the arena's buffers
    // and the snapshot laid out from the same list).
    unsafe { cudarc::driver::result::memcpy_dtod_async(to, from, bytes, device.cu_stream()) }
        .map_err(|e| CudaError::driver("copying on the device", e))
}

/// What the arena holds, for the message when it does not fit.
fn arena_breakdown(program: &Program, bytes: usize) -> String {
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let p = &program.memory.peak;
    format!(
        "the program's arena of {:.2} GiB: weights {:.2}, gradients {:.2}, optimizer {:.2}, saved activations {:.2}, \
         workspace {:.2} GiB at the peak, plus {:.2} GiB of scratch",
        gib(bytes),
        gib(p.weights),
        gib(p.gradients),
        gib(p.optimizer),
        gib(p.saved),
        gib(p.workspace),
        gib(bytes - program.memory.arena_bytes)
    )
}

/// Where the arena and cuBLASLt's workspace are on the device.
struct Addresses {
    base: u64,
    workspace: u64,
}

impl CudaProgram {
    fn queue_one(&self, p: &Prepared, at: &Addresses, stream: sys::CUstream) -> Result<(), CudaError> {
        let device = &self.device;
        let comms = || {
            self.comms.as_deref().ok_or_else(|| {
                CudaError::Unsupported("a collective outside a job of several ranks (its NCCL communicators)".into())
            })
        };
        match p {
            Prepared::Call(c) => c.launch(device, stream, at.base, 0),
            Prepared::Ranked { call, step, axis } => call.launch(device, stream, at.base, comms()?.rank(*axis) * step),
            Prepared::Gemm(g) => g.launch(device, stream, at.base, at.workspace),
            Prepared::Collective(c) => c.queue(stream, comms()?, at.base),
            Prepared::Chain(steps) => steps.iter().try_for_each(|s| self.queue_one(s, at, stream)),
        }
    }
}

impl Call {
    /// Launches the kernel on `stream` over the arena at `base`, its first view `shift`
    /// bytes on.
    fn launch(&self, device: &Device, stream: sys::CUstream, base: u64, shift: usize) -> Result<(), CudaError> {
        let mut pointers: Vec<u64> = self.offsets.iter().map(|&o| base + o as u64).collect();
        pointers[0] += shift as u64;
        self.kernel.module().launch(device, stream, &pointers, &self.strides)
    }
}

/// A GEMM operand being planned: where it is, its shape and strides as the GEMM sees it,
/// and its storage.
struct Owned {
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<isize>,
    dtype: DType,
}

impl Owned {
    fn operand(&self) -> Operand<'_> {
        Operand { offset: self.offset, shape: &self.shape, strides: &self.strides, dtype: self.dtype }
    }
}

/// Prepares launches, asking for each distinct kernel once.
struct Builder<'a> {
    device: &'a Device,
    graph: &'a Graph,
    symbols: Symbols,
    /// Whether chain scratch that GEMMs read is stored in bf16 (a mixed-precision program).
    bf16_scratch: bool,
    /// The device's kernels, held while the program is prepared.
    kernels: std::sync::MutexGuard<'a, Kernels>,
    /// The keys of the kernels this program launches.
    used: std::collections::HashSet<String>,
    /// Where every launch's scratch starts.
    scratch_at: usize,
    /// The next free byte of the current launch's scratch.
    cursor: usize,
    /// The end of the largest launch's scratch.
    scratch_end: usize,
    /// The numbers of parts whose sharing ranks the collectives exchange within.
    sharing: std::collections::BTreeSet<usize>,
}

impl Builder<'_> {
    /// `bytes` of scratch space for the launch being prepared, 256-byte aligned. Launches
    /// run one after another on one stream, so every launch's scratch starts at the same
    /// place and the region is as large as the largest launch's.
    fn scratch(&mut self, bytes: usize) -> usize {
        let at = self.cursor.next_multiple_of(256);
        self.cursor = at + bytes;
        self.scratch_end = self.scratch_end.max(self.cursor);
        at
    }

    fn launch(&mut self, launch: &Launch, inputs: &[Placed], outputs: &[Placed]) -> Result<Prepared, CudaError> {
        let (node, in_views, out_views) = (launch.node, &launch.inputs, &launch.outputs);
        if let Op::Prim(p) = &self.graph.nodes[node].op {
            if p.is_collective() {
                return self.collective(p, launch, inputs, outputs);
            }
        }
        let unit = unit::for_launch(self.graph, launch, self.symbols, Target::Gpu).map_err(CudaError::Unsupported)?;
        let dtypes: Vec<DType> = in_views.iter().chain(out_views).map(|v| v.dtype).collect();
        match unit {
            Unit::Body(body) => {
                let views: Vec<&Placed> = inputs.iter().chain(outputs).collect();
                self.body(&body, &dtypes, &views)
            }
            Unit::Template(code) => {
                let stored: Vec<Storage> = dtypes.iter().map(|&d| storage(d)).collect();
                code.check_storage(&stored).map_err(|e| CudaError::Codegen(e.to_string()))?;
                let key = format!("{} {:?} {:?} {stored:?}", code.name, self.graph.nodes[node].op, code.inputs);
                self.used.insert(key.clone());
                let kernel = self.kernels.get(key, || {
                    let workspace = code.workspace_bytes();
                    (Source::Template { code, stored }, workspace)
                });
                let mut offsets: Vec<usize> = inputs.iter().chain(outputs).map(|p| p.offset).collect();
                for &bytes in &kernel.workspace {
                    offsets.push(self.scratch(bytes));
                }
                let strides = inputs.iter().chain(outputs).flat_map(|p| p.strides.iter().map(|&s| s as i64)).collect();
                Ok(Prepared::Call(Call { kernel, offsets, strides }))
            }
            Unit::Gemm(g) => {
                let operand = |v: &View, p: &Placed| Owned {
                    offset: p.offset,
                    shape: v.shape.clone(),
                    strides: p.strides.clone(),
                    dtype: v.dtype,
                };
                let (a, b) = (operand(&in_views[0], &inputs[0]), operand(&in_views[1], &inputs[1]));
                let out = operand(&out_views[0], &outputs[0]);
                let mut steps = Vec::new();
                self.gemm(&g, a, b, out, (1.0, None), &mut steps)?;
                Ok(if steps.len() == 1 { steps.remove(0) } else { Prepared::Chain(steps) })
            }
            Unit::Chain(chain) => {
                if let Some(folded) = chain.folded() {
                    if let Some(p) = self.folded(&folded, in_views, out_views, inputs, outputs)? {
                        return Ok(p);
                    }
                }
                // Scratch buffers: contiguous, each its own space; in bf16 where GEMMs read
                // them in a mixed-precision program, so their writer rounds them once.
                let gemm_reads = |k: usize| {
                    chain.steps.iter().any(
                        |s| matches!(s, Step::Gemm { a, b, .. } if *a == Slot::Scratch(k) || *b == Slot::Scratch(k)),
                    )
                };
                let scratch: Vec<(usize, Vec<usize>, DType)> = chain
                    .scratch
                    .iter()
                    .enumerate()
                    .map(|(k, s)| {
                        let dtype = if self.bf16_scratch && gemm_reads(k) { DType::BF16 } else { DType::F32 };
                        (self.scratch(s.iter().product::<usize>() * dtype.size_bytes()), s.clone(), dtype)
                    })
                    .collect();
                let slot = |s: Slot| -> (Placed, Vec<usize>, DType) {
                    match s {
                        Slot::Input(k) => (inputs[k].clone(), in_views[k].shape.clone(), in_views[k].dtype),
                        Slot::Output(k) => (outputs[k].clone(), out_views[k].shape.clone(), out_views[k].dtype),
                        Slot::Scratch(k) => {
                            let (at, shape, dtype) = &scratch[k];
                            (Placed { offset: *at, strides: contiguous(shape) }, shape.clone(), *dtype)
                        }
                    }
                };
                let mut steps = Vec::with_capacity(chain.steps.len());
                for step in &chain.steps {
                    match step {
                        Step::Body { body, reads, writes } => {
                            // A value written to several slots is the body's output once per slot.
                            let mut body = body.clone();
                            let mut views: Vec<(Placed, Vec<usize>, DType)> = reads.iter().map(|&s| slot(s)).collect();
                            let mut outputs = Vec::new();
                            for (k, w) in writes.iter().enumerate() {
                                for &s in w {
                                    outputs.push(body.outputs[k]);
                                    views.push(slot(s));
                                }
                            }
                            body.outputs = outputs;
                            let dtypes: Vec<DType> = views.iter().map(|v| v.2).collect();
                            let placed: Vec<&Placed> = views.iter().map(|v| &v.0).collect();
                            steps.push(self.body(&body, &dtypes, &placed)?);
                        }
                        Step::Gemm { gemm, a, b, out } => {
                            // A scratch operand may be seen folded (`[B, T, d]` as `[B·T, d]`).
                            let seen = |s: Slot, shape: &[usize]| {
                                let (p, own, dtype) = slot(s);
                                match s {
                                    Slot::Scratch(_) if own != shape => {
                                        (Placed { offset: p.offset, strides: contiguous(shape) }, dtype)
                                    }
                                    _ => (p, dtype),
                                }
                            };
                            let owned = |(p, dtype): (Placed, DType), shape: &[usize]| Owned {
                                offset: p.offset,
                                shape: shape.to_vec(),
                                strides: p.strides,
                                dtype,
                            };
                            let pa = owned(seen(*a, &gemm.a), &gemm.a);
                            let pb = owned(seen(*b, &gemm.b), &gemm.b);
                            let po = owned(seen(*out, &gemm.out), &gemm.out);
                            self.gemm(gemm, pa, pb, po, (1.0, None), &mut steps)?;
                        }
                    }
                }
                Ok(Prepared::Chain(steps))
            }
        }
    }

    /// A GEMM's plan, pushed onto `steps` after the conversions it needs: a product with
    /// a bf16 operand or output runs on bf16 operands (tensor cores, f32 accumulation), so
    /// an f32 operand is first converted into scratch.
    /// `epilogue` is alpha and the residual added (beta = 1), laid out as `out`.
    fn gemm(
        &mut self,
        g: &unit::GemmShape,
        a: Owned,
        b: Owned,
        out: Owned,
        epilogue: (f32, Option<Owned>),
        steps: &mut Vec<Prepared>,
    ) -> Result<(), CudaError> {
        let narrow = [a.dtype, b.dtype, out.dtype].contains(&DType::BF16);
        let mut convert = |x: Owned| -> Result<Owned, CudaError> {
            if !narrow || x.dtype == DType::BF16 {
                return Ok(x);
            }
            let at = self.scratch(x.shape.iter().product::<usize>() * 2);
            let copy = Placed { offset: at, strides: contiguous(&x.shape) };
            let from = Placed { offset: x.offset, strides: x.strides.clone() };
            let body = unit::conversion(&x.shape);
            steps.push(self.body(&body, &[x.dtype, DType::BF16], &[&from, &copy])?);
            Ok(Owned { offset: at, strides: copy.strides, dtype: DType::BF16, ..x })
        };
        let (a, b) = (convert(a)?, convert(b)?);
        let plan = GemmPlan::new(self.device, g, &a.operand(), &b.operand(), &out.operand())?;
        let (alpha, residual) = epilogue;
        let plan = plan.with_epilogue(alpha, residual.as_ref().map(Owned::operand).as_ref(), &out.operand())?;
        steps.push(Prepared::Gemm(plan));
        Ok(())
    }

    /// A GEMM kernel whose epilogue is a scale and a residual, as one cuBLASLt call with
    /// alpha and beta writing the launch's output; `None` when its views do not allow it
    /// (then the chain runs step by step).
    fn folded(
        &mut self,
        f: &chain::Folded,
        in_views: &[View],
        out_views: &[View],
        inputs: &[Placed],
        outputs: &[Placed],
    ) -> Result<Option<Prepared>, CudaError> {
        // A launch view seen with the GEMM's shape: as it is, or re-viewed when contiguous.
        let seen = |slot: Slot, shape: &[usize]| -> Option<Owned> {
            let (v, p) = match slot {
                Slot::Input(k) => (&in_views[k], &inputs[k]),
                Slot::Output(k) => (&out_views[k], &outputs[k]),
                Slot::Scratch(_) => return None,
            };
            let strides = if v.shape == shape {
                p.strides.clone()
            } else if p.strides == contiguous(&v.shape)
                && v.shape.iter().product::<usize>() == shape.iter().product::<usize>()
            {
                contiguous(shape)
            } else {
                return None;
            };
            Some(Owned { offset: p.offset, shape: shape.to_vec(), strides, dtype: v.dtype })
        };
        let g = f.gemm;
        let (Some(a), Some(b), Some(out)) = (seen(f.a, &g.a), seen(f.b, &g.b), seen(f.out, &g.out)) else {
            return Ok(None);
        };
        let residual = match f.epilogue.residual {
            Some(r) => match seen(r, &g.out) {
                Some(r) if r.strides == out.strides && r.dtype == out.dtype => Some(r),
                _ => return Ok(None),
            },
            None => None,
        };
        let mut steps = Vec::new();
        match self.gemm(g, a, b, out, (f.epilogue.alpha, residual), &mut steps) {
            Ok(()) => Ok(Some(if steps.len() == 1 { steps.remove(0) } else { Prepared::Chain(steps) })),
            Err(CudaError::Unsupported(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A generated body over `views` (inputs, then outputs) of storage `dtypes`.
    fn body(&mut self, body: &Graph, dtypes: &[DType], views: &[&Placed]) -> Result<Prepared, CudaError> {
        let stored: Vec<Storage> = dtypes.iter().map(|&d| storage(d)).collect();
        let symbols = self.symbols;
        let key = format!("{} {stored:?} {symbols:?}", hyb_compiler::codegen::kernel_name(body));
        self.used.insert(key.clone());
        let kernel = self.kernels.get(key, || (Source::Body { body: body.clone(), symbols, stored }, Vec::new()));
        let offsets = views.iter().map(|p| p.offset).collect();
        let strides = views.iter().flat_map(|p| p.strides.iter().map(|&s| s as i64)).collect();
        Ok(Prepared::Call(Call { kernel, offsets, strides }))
    }
}

/// Axis `axis` (negative from the end) of a shape of `rank` dimensions.
fn axis_index(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64) as usize
    } else {
        axis as usize
    }
}

/// A shape whose axis `a` is split into `(ranks, local)`: how a whole view and the
/// rank-major buffer NCCL exchanges index the same elements.
fn split_shape(local: &[usize], a: usize, ranks: usize) -> Vec<usize> {
    [&local[..a], &[ranks, local[a]], &local[a + 1..]].concat()
}

/// The strides of a whole view (`strides`, of the local shape with axis `a` times
/// `ranks`) over its [`split_shape`].
fn split_strides(strides: &[isize], a: usize, local_a: usize) -> Vec<isize> {
    [&strides[..a], &[local_a as isize * strides[a], strides[a]], &strides[a + 1..]].concat()
}

/// The strides of the rank-major buffer (`[ranks, local…]`, contiguous) over the
/// [`split_shape`] of `local`.
fn rank_major_strides(local: &[usize], a: usize) -> Vec<isize> {
    let c = contiguous(local);
    let block = local.iter().product::<usize>() as isize;
    [&c[..a], &[block, c[a]], &c[a + 1..]].concat()
}

impl Builder<'_> {
    /// A collective launch: the NCCL call, with copies around it where the launch's views
    /// are not the contiguous, rank-major buffers NCCL exchanges (a gathered or scattered
    /// axis other than the outermost, a strided view, another storage).
    fn collective(
        &mut self,
        p: &Prim,
        launch: &Launch,
        inputs: &[Placed],
        outputs: &[Placed],
    ) -> Result<Prepared, CudaError> {
        let ([iv], [ov], [input], [output]) = (&launch.inputs[..], &launch.outputs[..], inputs, outputs) else {
            return Err(CudaError::Internal("a collective launch has one input and one output view".into()));
        };
        let (tensor, data) = (Peers::Of(Axis::Tensor), Peers::Of(Axis::Data));
        let (exchange, peers, split) = match p {
            Prim::AllReduce(_) => (Exchange::AllReduce, tensor, None),
            Prim::DataAllReduce(_) => (Exchange::AllReduce, data, None),
            Prim::GroupAllReduce(g) => {
                self.sharing.insert(g.parts);
                (Exchange::AllReduce, Peers::Sharing(g.parts), None)
            }
            Prim::AllGather(g) => (Exchange::AllGather, tensor, Some((axis_index(g.axis, ov.shape.len()), g.ranks))),
            Prim::ReduceScatter(r) => {
                (Exchange::ReduceScatter, tensor, Some((axis_index(r.axis, iv.shape.len()), r.ranks)))
            }
            Prim::DataAllGather(g) => (Exchange::AllGather, data, Some((0, g.ranks))),
            Prim::DataReduceScatter(r) => (Exchange::ReduceScatter, data, Some((0, r.ranks))),
            Prim::Shard(_) | Prim::DataShard(_) => {
                let (a, axis) = match p {
                    Prim::Shard(s) => (axis_index(s.axis, iv.shape.len()), Axis::Tensor),
                    _ => (0, Axis::Data),
                };
                let stride = usize::try_from(input.strides[a])
                    .map_err(|_| CudaError::Unsupported("a shard of a view with a negative stride".into()))?;
                let call = self.copy(&ov.shape, (input, iv.dtype), (output, ov.dtype))?;
                return Ok(Prepared::Ranked { call, step: ov.shape[a] * stride * iv.dtype.size_bytes(), axis });
            }
            Prim::TpCopy(_) | Prim::GroupCopy(_) => {
                return Ok(Prepared::Call(self.copy(&iv.shape, (input, iv.dtype), (output, ov.dtype))?))
            }
            other => return Err(CudaError::Unsupported(format!("the collective {other:?}"))),
        };
        let dtype = ov.dtype;
        let size = dtype.size_bytes();
        let mut steps = Vec::new();
        // A whole view over which the outermost axes before `a` are all 1 is rank-major.
        let rank_major = |shape: &[usize], p: &Placed| {
            p.strides == contiguous(shape) && split.is_none_or(|(a, _)| shape[..a].iter().all(|&d| d == 1))
        };
        let send = match (exchange, split) {
            (Exchange::ReduceScatter, Some((a, ranks))) if !(rank_major(&iv.shape, input) && iv.dtype == dtype) => {
                let local = &ov.shape;
                let at = self.scratch(iv.shape.iter().product::<usize>() * size);
                let packed = Placed { offset: at, strides: rank_major_strides(local, a) };
                let seen = Placed { offset: input.offset, strides: split_strides(&input.strides, a, local[a]) };
                let shape = split_shape(local, a, ranks);
                steps.push(Prepared::Call(self.copy(&shape, (&seen, iv.dtype), (&packed, dtype))?));
                at
            }
            _ if iv.dtype == dtype && input.strides == contiguous(&iv.shape) => input.offset,
            _ => {
                let at = self.scratch(iv.shape.iter().product::<usize>() * size);
                let packed = Placed { offset: at, strides: contiguous(&iv.shape) };
                steps.push(Prepared::Call(self.copy(&iv.shape, (input, iv.dtype), (&packed, dtype))?));
                at
            }
        };
        let direct = match (exchange, split) {
            (Exchange::AllGather, Some(_)) => rank_major(&ov.shape, output),
            _ => output.strides == contiguous(&ov.shape),
        };
        let recv = if direct { output.offset } else { self.scratch(ov.shape.iter().product::<usize>() * size) };
        let count = match exchange {
            Exchange::AllGather => iv.shape.iter().product(),
            _ => ov.shape.iter().product(),
        };
        steps.push(Prepared::Collective(Collective { exchange, peers, send, recv, count, dtype }));
        if !direct {
            let (shape, from, to) = match (exchange, split) {
                (Exchange::AllGather, Some((a, ranks))) => {
                    let local = &iv.shape;
                    let from = Placed { offset: recv, strides: rank_major_strides(local, a) };
                    let to = Placed { offset: output.offset, strides: split_strides(&output.strides, a, local[a]) };
                    (split_shape(local, a, ranks), from, to)
                }
                _ => (ov.shape.clone(), Placed { offset: recv, strides: contiguous(&ov.shape) }, output.clone()),
            };
            steps.push(Prepared::Call(self.copy(&shape, (&from, dtype), (&to, dtype))?));
        }
        Ok(Prepared::Chain(steps))
    }

    /// A kernel copying `from` to `to` (each a placed view and its storage) over `shape`.
    fn copy(&mut self, shape: &[usize], from: (&Placed, DType), to: (&Placed, DType)) -> Result<Call, CudaError> {
        match self.body(&unit::conversion(shape), &[from.1, to.1], &[from.0, to.0])? {
            Prepared::Call(call) => Ok(call),
            _ => Err(CudaError::Internal("a copy is one kernel".into())),
        }
    }
}
