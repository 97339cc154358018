//! The GPU a run uses: its driver context, the stream the launches of a step go on (and
//! the one the replicas' exchanges overlap it on), and the cuBLASLt handle GEMMs use.
//! Opening it is where a machine without a driver or without a GPU is told so, before
//! anything is compiled for it.

use super::kernels::Kernels;
use super::CudaError;
use cudarc::cublaslt::{result as blas, sys as blas_sys};
use cudarc::driver::{sys, CudaContext, CudaStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes of device memory a run's allocations hold, now and at most: the number that
/// compares with PyTorch's `max_memory_allocated` (the driver's own context and the
/// libraries' code are not in it).
#[derive(Debug, Default)]
pub struct Held {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Held {
    pub(crate) fn add(&self, bytes: usize) {
        let now = self.now.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, bytes: usize) {
        self.now.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The most bytes held at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// One GPU, ready for launches.
pub struct Device {
    pub(crate) context: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    /// The stream the replicas' exchanges run on, beside the step's computation
    /// ([`hyb_compiler::plan::Stream::Exchange`]); joined back into `stream` before
    /// anything waits on it.
    pub(crate) exchange: Arc<CudaStream>,
    pub(crate) blas: blas_sys::cublasLtHandle_t,
    name: String,
    sms: usize,
    /// What the run's allocations hold.
    pub(crate) held: Arc<Held>,
    /// Every program's generated kernels, by key: each is generated and loaded once.
    pub(crate) kernels: Mutex<Kernels>,
}

// Safety: the context and stream are cudarc's (Send + Sync); the cuBLASLt handle is only
// used to queue work on the device's compute stream, from the thread that runs the programs
// (each program behind its own lock).
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

impl Device {
    /// Whether a CUDA driver and at least one GPU are present: what picks the default
    /// device of `hyb train`.
    pub fn available() -> bool {
        // Safety: only tries to open the driver library.
        (unsafe { sys::is_culib_present() }) && CudaContext::device_count().is_ok_and(|n| n > 0)
    }

    /// How many GPUs the driver sees (0 without a driver).
    pub fn count() -> usize {
        // Safety: only tries to open the driver library.
        if !unsafe { sys::is_culib_present() } {
            return 0;
        }
        CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    }

    /// Opens GPU `ordinal`.
    pub fn open(ordinal: usize) -> Result<Device, CudaError> {
        // Safety: only tries to open the libraries; cudarc panics on a missing one otherwise.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(|e| CudaError::driver("counting GPUs", e))?;
        if count <= 0 {
            return Err(CudaError::NoGpu);
        }
        if ordinal >= count as usize {
            return Err(CudaError::NoSuchGpu { ordinal, count: count as usize });
        }
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(CudaError::NoLibrary("cuBLASLt (libcublasLt.so)"));
        }
        let context = CudaContext::new(ordinal).map_err(|e| CudaError::driver("creating a context", e))?;
        // Launches ordered on the stream, or by the program's own events between the two:
        // cudarc's per-allocation events are not needed.
        unsafe { context.disable_event_tracking() };
        let stream = context.new_stream().map_err(|e| CudaError::driver("creating a stream", e))?;
        let exchange = context.new_stream().map_err(|e| CudaError::driver("creating a stream", e))?;
        let blas = blas::create_handle().map_err(|e| CudaError::blas("creating a cuBLASLt handle", e))?;
        let name = context.name().unwrap_or_else(|_| "a GPU".into());
        let sms = context
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| CudaError::driver("reading the SM count", e))? as usize;
        Ok(Device { context, stream, exchange, blas, name, sms, held: Arc::default(), kernels: Mutex::default() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Streaming multiprocessors: grids are capped at a multiple of them.
    pub fn sms(&self) -> usize {
        self.sms
    }

    /// The most bytes of device memory this run's allocations held at once.
    pub fn peak_bytes(&self) -> usize {
        self.held.peak()
    }

    /// Free and total device memory, in bytes.
    pub fn memory(&self) -> Result<(usize, usize), CudaError> {
        self.context.mem_get_info().map_err(|e| CudaError::driver("reading free memory", e))
    }

    /// Waits for everything queued on the stream, reporting any fault of a launch.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(|e| CudaError::driver("running the launches", e))
    }

    pub(crate) fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Safety: the handle was created in `open` and nothing uses it past the device.
        let _ = unsafe { blas::destroy_handle(self.blas) };
    }
}

#[cfg(test)]
mod tests {
    use super::Held;

    #[test]
    fn the_peak_is_the_most_held_at_once() {
        let held = Held::default();
        held.add(10);
        held.add(5);
        held.sub(10);
        held.add(7);
        assert_eq!(held.peak(), 15);
        held.add(4);
        assert_eq!(held.peak(), 16);
    }
}
