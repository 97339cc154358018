//! Object code outlives the process that compiled it: kept in a store and linked again, it
//! runs bit for bit as the freshly compiled kernel does, on fused kernels and templates,
//! for any layout and for unit strides; code that does not link is compiled again; and
//! LLVM is in the process once, though melior and inkwell both use it.

use super::{fused_kernels, Case, SIZES};
use hyb_compiler::codegen::cpu::{self, ArenaView, CpuKernel, Objects, Origin};
use hyb_compiler::codegen::object::{self, Host};
use hyb_compiler::ir::Graph;
use std::collections::HashMap;
use std::sync::Mutex;

/// Object code in memory, counting what is asked for and kept.
#[derive(Default)]
pub(super) struct Store {
    objects: Mutex<HashMap<String, Vec<u8>>>,
    puts: Mutex<usize>,
}

impl Objects for Store {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.objects.lock().unwrap().get(key).cloned()
    }

    fn put(&self, key: &str, object: &[u8]) {
        *self.puts.lock().unwrap() += 1;
        self.objects.lock().unwrap().insert(key.to_string(), object.to_vec());
    }
}

/// The whole arena after running `kernel` on `case`.
fn arena_after(kernel: &CpuKernel, case: &Case) -> Vec<u32> {
    let mut arena = case.arena.clone();
    let inputs: Vec<ArenaView> = case.inputs.iter().map(|l| l.view()).collect();
    let outputs: Vec<ArenaView> = case.outputs.iter().map(|l| l.view()).collect();
    kernel.run(&mut arena, &inputs, &outputs).expect("runs");
    // Bits, so that NaNs compare too.
    arena.iter().map(|v| v.to_bits()).collect()
}

/// A kernel prepared twice through one store: compiled, then loaded; both run `case`.
fn compiled_then_loaded(what: &str, case: &Case, prepare: &dyn Fn(&Store) -> CpuKernel) -> Result<(), String> {
    let store = Store::default();
    let compiled = prepare(&store);
    let loaded = prepare(&store);
    if (compiled.origin(), loaded.origin(), *store.puts.lock().unwrap()) != (Origin::Compiled, Origin::Loaded, 1) {
        return Err(format!(
            "{what}: {:?} then {:?}, {} kept",
            compiled.origin(),
            loaded.origin(),
            store.puts.lock().unwrap()
        ));
    }
    if arena_after(&compiled, case) != arena_after(&loaded, case) {
        return Err(format!("{what}: the loaded code computes other bits"));
    }
    Ok(())
}

/// Views (inputs, then outputs) of `case` with a last-axis stride of 1.
fn unit_strides(case: &Case) -> Vec<bool> {
    case.inputs.iter().chain(&case.outputs).map(|l| l.view().unit_last()).collect()
}

#[test]
fn fused_kernels_loaded_from_object_code_compute_the_same_bits() {
    let kernels = fused_kernels(false);
    // A spread of the examples' kernels: every one of them would repeat the reference test.
    let sample: Vec<&(String, Graph)> = kernels.values().step_by(kernels.len().div_ceil(12)).collect();
    let mut failures = Vec::new();
    for (origin, body) in sample {
        let case = Case::in_domain(body, 7).expect("a case");
        let unit = unit_strides(&case);
        let any = |s: &Store| cpu::prepare_for(body, SIZES, &[], s).expect("compiles");
        let strided = |s: &Store| cpu::prepare_for(body, SIZES, &unit, s).expect("compiles");
        for (layout, prepare) in [("any layout", &any as &dyn Fn(&Store) -> CpuKernel), ("unit strides", &strided)] {
            if let Err(e) = compiled_then_loaded(&format!("{origin} ({layout})"), &case, prepare) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn templates_loaded_from_object_code_compute_the_same_bits() {
    let mut failures = Vec::new();
    for (what, code, case) in super::templates::one_of_each_family() {
        let unit = unit_strides(&case);
        let prepare = |s: &Store| cpu::prepare_template_for(&code, &unit, s).expect("compiles");
        if let Err(e) = compiled_then_loaded(&what, &case, &prepare) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn object_code_that_does_not_link_is_compiled_again() {
    let kernels = fused_kernels(false);
    let (_, body) = kernels.values().next().expect("a kernel");
    let case = Case::in_domain(body, 3).expect("a case");
    let fresh = cpu::compile(body, SIZES).expect("compiles");
    let whole = Store::default();
    cpu::prepare_for(body, SIZES, &[], &whole).expect("compiles");
    let (key, code) = whole.objects.into_inner().unwrap().into_iter().next().expect("the object is kept");
    for damaged in [Vec::new(), b"not an object".to_vec(), code[..code.len() / 2].to_vec()] {
        let store = Store::default();
        store.objects.lock().unwrap().insert(key.clone(), damaged);
        let kernel = cpu::prepare_for(body, SIZES, &[], &store).expect("compiles");
        assert_eq!(kernel.origin(), Origin::Compiled);
        assert_eq!(store.objects.lock().unwrap()[&key], code, "the compiled object replaces the damaged one");
        assert_eq!(arena_after(&kernel, &case), arena_after(&fresh, &case));
    }
}

#[test]
fn keys_tell_kernels_views_and_hosts_apart() {
    let kernels = fused_kernels(false);
    let mut bodies = kernels.values();
    let (a, b) = (&bodies.next().unwrap().1, &bodies.next().unwrap().1);
    let (a, b) = (cpu::body_mlir(a, SIZES).unwrap(), cpu::body_mlir(b, SIZES).unwrap());
    assert_eq!(object::key(&a, &[true, false]), object::key(&a, &[true, false]));
    assert_ne!(object::key(&a, &[true, false]), object::key(&b, &[true, false]));
    assert_ne!(object::key(&a, &[true, false]), object::key(&a, &[false, true]));
    let host = Host::current();
    assert!(!host.cpu.is_empty() && host.features.contains('+'), "{host:?}");
    let other = Host { features: host.features.replace('+', "-"), ..host.clone() };
    assert_eq!(host.differences(&other), ["CPU features"]);
}

/// melior (MLIR's passes) and inkwell (LLVM's) share one LLVM: the process maps no shared
/// libLLVM beside the one linked in, which would register LLVM's options a second time.
#[cfg(target_os = "linux")]
#[test]
fn one_llvm_serves_melior_and_inkwell() {
    let kernels = fused_kernels(false);
    let (_, body) = kernels.values().next().expect("a kernel");
    let mlir = cpu::body_mlir(body, SIZES).unwrap();
    assert!(!object::compile("one_llvm", &mlir).unwrap().is_empty());
    assert!(cpu::llvm_ir("one_llvm", &mlir).unwrap().contains("define"));
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let shared: Vec<&str> = maps.lines().filter(|l| l.contains("libLLVM") || l.contains("libMLIR")).collect();
    assert!(shared.is_empty(), "LLVM mapped as a shared library too:\n{}", shared.join("\n"));
}
