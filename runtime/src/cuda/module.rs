//! Generated PTX loaded into the driver: one module per distinct kernel, JIT-compiled by
//! the driver once when the program is prepared, and launched with the parameters every
//! generated entry takes (base pointers of its views and workspace, then their strides).

use super::{CudaError, Device};
use cudarc::driver::{result, sys};
use hyb_compiler::codegen::gpu::{GpuKernel, GpuNest};
use std::ffi::{c_void, CString};

/// Grids are capped at this many blocks per SM; the generated loops are grid-stride.
const BLOCKS_PER_SM: usize = 16;

/// A loaded kernel: its entries in launch order.
pub struct Module {
    pub name: String,
    module: sys::CUmodule,
    entries: Vec<(sys::CUfunction, GpuNest)>,
    /// Bytes of each workspace buffer its phases share (templates).
    pub workspace: Vec<usize>,
}

// Safety: module and function handles are plain driver handles, valid in any thread that
// binds the context.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Module {
    /// Loads `kernel`'s PTX, with the driver's JIT log in the error if it refuses it.
    pub fn load(device: &Device, kernel: GpuKernel) -> Result<Module, CudaError> {
        device.context.bind_to_thread().map_err(|e| CudaError::driver("binding the context", e))?;
        let text = CString::new(kernel.ptx.as_str())
            .map_err(|_| CudaError::Internal(format!("kernel `{}`: the PTX holds a NUL byte", kernel.name)))?;
        let mut log = vec![0u8; 16 << 10];
        let mut options =
            [sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER, sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
        let mut values: [*mut c_void; 2] = [log.as_mut_ptr() as *mut c_void, log.len() as *mut c_void];
        let mut module = std::ptr::null_mut();
        // Safety: NUL-terminated PTX text; the log buffer outlives the call.
        let status = unsafe {
            sys::cuModuleLoadDataEx(
                &mut module,
                text.as_ptr() as *const c_void,
                2,
                options.as_mut_ptr(),
                values.as_mut_ptr(),
            )
        };
        if status != sys::CUresult::CUDA_SUCCESS {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            return Err(CudaError::ModuleLoad {
                kernel: kernel.name,
                error: result::DriverError(status).to_string(),
                log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
            });
        }
        let mut loaded = Module { name: kernel.name, module, entries: Vec::new(), workspace: kernel.workspace_bytes };
        for nest in kernel.nests {
            let symbol = CString::new(nest.symbol.as_str()).expect("generated symbols are identifiers");
            // Safety: the module is loaded and not yet unloaded.
            let function =
                unsafe { result::module::get_function(loaded.module, symbol) }.map_err(|e| CudaError::ModuleLoad {
                    kernel: loaded.name.clone(),
                    error: e.to_string(),
                    log: format!("no entry `{}`", nest.symbol),
                })?;
            if nest.dynamic_shared_bytes > 0 {
                // Above 48 KiB a kernel must opt in to its dynamic shared memory.
                // Safety: a function of the loaded module.
                unsafe {
                    result::function::set_function_attribute(
                        function,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        nest.dynamic_shared_bytes as i32,
                    )
                }
                .map_err(|e| CudaError::ModuleLoad {
                    kernel: loaded.name.clone(),
                    error: e.to_string(),
                    log: format!(
                        "entry `{}` asks for {} bytes of shared memory",
                        nest.symbol, nest.dynamic_shared_bytes
                    ),
                })?;
            }
            loaded.entries.push((function, nest));
        }
        Ok(loaded)
    }

    /// Queues every entry, in order, on `stream`. `pointers`: the device addresses of the
    /// views (inputs, outputs) then of the workspace buffers; `strides`: every view's
    /// strides in elements.
    pub fn launch(
        &self,
        device: &Device,
        stream: sys::CUstream,
        pointers: &[u64],
        strides: &[i64],
    ) -> Result<(), CudaError> {
        let mut values: Vec<u64> = pointers.to_vec();
        values.extend(strides.iter().map(|&s| s as u64));
        // A workspace buffer is one contiguous axis.
        values.extend(self.workspace.iter().map(|_| 1u64));
        let mut params: Vec<*mut c_void> = values.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
        let max_blocks = device.sms() * BLOCKS_PER_SM;
        for (function, nest) in &self.entries {
            let grid = (nest.blocks(max_blocks) as u32, 1, 1);
            let block = (nest.threads_per_block as u32, 1, 1);
            // Safety: the parameters are the ones every generated entry declares, in its
            // order; the addresses are inside the arena the views were checked against.
            let shared = nest.dynamic_shared_bytes as u32;
            unsafe { result::launch_kernel(*function, grid, block, shared, stream, &mut params) }.map_err(|e| {
                CudaError::Launch { kernel: self.name.clone(), entry: nest.symbol.clone(), error: e.to_string() }
            })?;
        }
        Ok(())
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // Safety: loaded in `load`, unloaded once.
        let _ = unsafe { sys::cuModuleUnload(self.module) };
    }
}
