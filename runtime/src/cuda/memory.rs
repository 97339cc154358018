//! Device memory: one allocation per arena, copies in and out on the device's stream.
//! A plan's arena is allocated once, after checking that it fits, and never resized: a
//! step allocates nothing. A program that never runs while another does (evaluation between
//! training steps) may take its arena inside that one's, where the other keeps nothing
//! between runs.

use super::device::Held;
use super::{CudaError, Device};
use cudarc::driver::{result, sys};
use std::sync::Arc;

/// A block of device memory, freed when dropped.
pub struct DeviceMemory {
    pub(crate) ptr: sys::CUdeviceptr,
    bytes: usize,
    /// The device's count of bytes held, which this block is part of.
    held: Arc<Held>,
}

impl DeviceMemory {
    /// `bytes` of device memory, refusing before it allocates when they do not fit.
    pub fn alloc(device: &Device, bytes: usize, what: &str) -> Result<DeviceMemory, CudaError> {
        let (free, total) = device.memory()?;
        if bytes > free {
            return Err(CudaError::OutOfMemory { what: what.to_string(), bytes, free, total });
        }
        device.context.bind_to_thread().map_err(|e| CudaError::driver("binding the context", e))?;
        // Safety: a plain allocation; freed once, in `drop`.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(|e| {
            if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                CudaError::OutOfMemory { what: what.to_string(), bytes, free, total }
            } else {
                CudaError::driver("allocating device memory", e)
            }
        })?;
        device.held.add(bytes);
        Ok(DeviceMemory { ptr, bytes, held: device.held.clone() })
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The device address `offset` bytes in.
    pub fn at(&self, offset: usize) -> u64 {
        self.ptr + offset as u64
    }

    /// Copies `data` to `offset` bytes in, on the stream (waits until it is copied).
    pub fn upload<T: Copy>(&self, device: &Device, offset: usize, data: &[T]) -> Result<(), CudaError> {
        self.check(offset, std::mem::size_of_val(data))?;
        // Safety: the range is inside the allocation; the copy ends before `data` may move.
        unsafe { result::memcpy_htod_async(self.at(offset), data, device.cu_stream()) }
            .map_err(|e| CudaError::driver("copying to the GPU", e))?;
        device.synchronize()
    }

    /// Copies `out.len()` elements from `offset` bytes in, once the stream has run.
    pub fn download<T: Copy>(&self, device: &Device, offset: usize, out: &mut [T]) -> Result<(), CudaError> {
        self.check(offset, std::mem::size_of_val(out))?;
        // Safety: the range is inside the allocation; synchronised before `out` is read.
        unsafe { result::memcpy_dtoh_async(out, self.at(offset), device.cu_stream()) }
            .map_err(|e| CudaError::driver("copying from the GPU", e))?;
        device.synchronize()
    }

    /// Sets `bytes` bytes from `offset` to `value` (NaN-poisoning uses 0xFF), on the stream.
    pub fn fill(&self, device: &Device, offset: usize, bytes: usize, value: u8) -> Result<(), CudaError> {
        self.check(offset, bytes)?;
        // Safety: the range is inside the allocation.
        unsafe { result::memset_d8_async(self.at(offset), value, bytes, device.cu_stream()) }
            .map_err(|e| CudaError::driver("filling device memory", e))
    }

    fn check(&self, offset: usize, bytes: usize) -> Result<(), CudaError> {
        within(offset, bytes, self.bytes)
    }
}

/// Refuses a copy of `bytes` at `offset` that reaches past `size` bytes.
fn within(offset: usize, bytes: usize, size: usize) -> Result<(), CudaError> {
    if offset.checked_add(bytes).is_none_or(|end| end > size) {
        return Err(CudaError::Internal(format!(
            "a copy of {bytes} bytes at {offset} reaches past the {size} bytes it may use"
        )));
    }
    Ok(())
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        // Safety: allocated in `alloc`, freed once; the driver waits for work using it.
        let _ = unsafe { result::free_sync(self.ptr) };
        self.held.sub(self.bytes);
    }
}

/// A program's memory: an allocation of its own, or a range of another program's.
#[derive(Clone)]
pub struct Arena {
    memory: Arc<DeviceMemory>,
    base: usize,
    bytes: usize,
    own: bool,
}

impl Arena {
    /// `bytes` of fresh device memory (see [`DeviceMemory::alloc`]).
    pub fn alloc(device: &Device, bytes: usize, what: &str) -> Result<Arena, CudaError> {
        Ok(Arena { memory: Arc::new(DeviceMemory::alloc(device, bytes, what)?), base: 0, bytes, own: true })
    }

    /// `bytes` of this arena from byte `from` (256-byte aligned), if they fit in it.
    pub fn within(&self, from: usize, bytes: usize) -> Option<Arena> {
        let from = from.next_multiple_of(256);
        (from.checked_add(bytes)? <= self.bytes).then(|| Arena {
            memory: self.memory.clone(),
            base: self.base + from,
            bytes,
            own: false,
        })
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The bytes this arena allocated itself (none for a range of another's).
    pub fn own_bytes(&self) -> usize {
        if self.own {
            self.bytes
        } else {
            0
        }
    }

    /// The device address `offset` bytes in.
    pub fn at(&self, offset: usize) -> u64 {
        self.memory.at(self.base + offset)
    }

    pub fn upload<T: Copy>(&self, device: &Device, offset: usize, data: &[T]) -> Result<(), CudaError> {
        self.check(offset, std::mem::size_of_val(data))?;
        self.memory.upload(device, self.base + offset, data)
    }

    pub fn download<T: Copy>(&self, device: &Device, offset: usize, out: &mut [T]) -> Result<(), CudaError> {
        self.check(offset, std::mem::size_of_val(out))?;
        self.memory.download(device, self.base + offset, out)
    }

    pub fn fill(&self, device: &Device, offset: usize, bytes: usize, value: u8) -> Result<(), CudaError> {
        self.check(offset, bytes)?;
        self.memory.fill(device, self.base + offset, bytes, value)
    }

    fn check(&self, offset: usize, bytes: usize) -> Result<(), CudaError> {
        within(offset, bytes, self.bytes)
    }
}
