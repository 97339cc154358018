//! Object code linked into the process by ORC's LLJIT, without compiling anything: the
//! object's relocations are resolved against itself and, for what the code calls outside
//! (`memset`, `memcpy`), against the process's own symbols.

use super::object::native_target;
use llvm_sys::core::LLVMCreateMemoryBufferWithMemoryRangeCopy;
use llvm_sys::error::{LLVMDisposeErrorMessage, LLVMErrorRef, LLVMGetErrorMessage};
use llvm_sys::orc2::lljit::{
    LLVMOrcCreateLLJIT, LLVMOrcDisposeLLJIT, LLVMOrcLLJITAddObjectFile, LLVMOrcLLJITGetGlobalPrefix,
    LLVMOrcLLJITGetMainJITDylib, LLVMOrcLLJITLookup, LLVMOrcLLJITRef,
};
use llvm_sys::orc2::{LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess, LLVMOrcJITDylibAddGenerator};
use std::ffi::{c_void, CString};

/// Linked object code; its functions stay callable while it lives.
pub struct Linked(LLVMOrcLLJITRef);

// The linker is built once, and afterwards only looked up in (under ORC's own locks) and
// its code run, so sharing it between threads is sound.
unsafe impl Send for Linked {}
unsafe impl Sync for Linked {}

impl Drop for Linked {
    fn drop(&mut self) {
        // Disposing can only report errors of code that never ran; nothing to do with them.
        let _ = take(unsafe { LLVMOrcDisposeLLJIT(self.0) });
    }
}

impl Linked {
    /// Links `object` (an ELF object for this host) into the process.
    pub fn new(name: &str, object: &[u8]) -> Result<Linked, String> {
        native_target()?;
        let mut jit = std::ptr::null_mut();
        take(unsafe { LLVMOrcCreateLLJIT(&mut jit, std::ptr::null_mut()) })?;
        let linked = Linked(jit);
        let mut process = std::ptr::null_mut();
        let prefix = unsafe { LLVMOrcLLJITGetGlobalPrefix(jit) };
        take(unsafe {
            LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(&mut process, prefix, None, std::ptr::null_mut())
        })?;
        let dylib = unsafe { LLVMOrcLLJITGetMainJITDylib(jit) };
        unsafe { LLVMOrcJITDylibAddGenerator(dylib, process) };
        let label = CString::new(name).map_err(|e| e.to_string())?;
        let buffer =
            unsafe { LLVMCreateMemoryBufferWithMemoryRangeCopy(object.as_ptr().cast(), object.len(), label.as_ptr()) };
        // ORC takes the buffer over, whatever the outcome.
        take(unsafe { LLVMOrcLLJITAddObjectFile(jit, dylib, buffer) })?;
        Ok(linked)
    }

    /// The address of function `symbol`, linking the object on the first lookup.
    pub fn lookup(&self, symbol: &str) -> Result<*mut c_void, String> {
        let name = CString::new(symbol).map_err(|e| e.to_string())?;
        let mut address = 0;
        take(unsafe { LLVMOrcLLJITLookup(self.0, &mut address, name.as_ptr()) })?;
        if address == 0 {
            return Err(format!("`{symbol}` is at address 0"));
        }
        Ok(address as *mut c_void)
    }
}

/// An LLVM error as its message (consuming it).
fn take(error: LLVMErrorRef) -> Result<(), String> {
    if error.is_null() {
        return Ok(());
    }
    let raw = unsafe { LLVMGetErrorMessage(error) };
    let message = unsafe { std::ffi::CStr::from_ptr(raw) }.to_string_lossy().into_owned();
    unsafe { LLVMDisposeErrorMessage(raw) };
    Err(message)
}
