//! A phase's item body put in a function for each target. Both define `%p{k}` and
//! `%s{k}_{d}` for the body and loop `%item` over the phase's items: on the CPU over the
//! call's range (the fused kernels' signature, so one runner calls both), on the GPU
//! grid-stride from the thread's global index, one item per thread.

use super::super::body::Storage;
use super::super::emit::Target;
use super::Phase;

fn indent(lines: &[String], by: &str) -> String {
    lines.iter().map(|l| format!("{by}{l}\n")).collect()
}

/// A CPU function `@symbol(%begin, %end, %ptrs, %strides)` running items `begin..end`;
/// views marked in `unit_last` have a last-axis stride of 1 written in as a constant.
pub fn cpu_function(symbol: &str, ranks: &[usize], unit_last: &[bool], phase: &Phase, storage: &[Storage]) -> String {
    assert!(phase.cooperative.is_none(), "cooperative phases are GPU code");
    let mut head = Vec::new();
    let mut slot = 0;
    for (k, &r) in ranks.iter().enumerate() {
        head.push(format!("%pa{k} = llvm.getelementptr %ptrs[{k}] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr"));
        head.push(format!("%p{k} = llvm.load %pa{k} : !llvm.ptr -> !llvm.ptr"));
        for d in 0..r {
            if d + 1 == r && unit_last.get(k).copied().unwrap_or(false) {
                head.push(format!("%s{k}_{d} = arith.constant 1 : i64"));
            } else {
                head.push(format!("%sa{k}_{d} = llvm.getelementptr %strides[{slot}] : (!llvm.ptr) -> !llvm.ptr, i64"));
                head.push(format!("%s{k}_{d} = llvm.load %sa{k}_{d} : !llvm.ptr -> i64"));
            }
            slot += 1;
        }
    }
    head.extend(phase.body.prologue.iter().cloned());
    head.push("%one = arith.constant 1 : i64".into());
    format!(
        "  func.func @{symbol}(%begin: i64, %end: i64, %ptrs: !llvm.ptr, %strides: !llvm.ptr) {{\n{}    scf.for %item = %begin to %end step %one : i64 {{\n{}    }}\n    return\n  }}\n",
        indent(&head, "    "),
        indent(&phase.body.lines(Target::Cpu, storage), "      "),
    )
}

/// The module-level declaration of the dynamic shared memory that [`gpu_function`] gives
/// cooperative phases as `%smem`.
pub const SHARED_MEMORY: &str =
    "  llvm.mlir.global external @hyb_shared() {addr_space = 3 : i32, alignment = 16 : i64} : !llvm.array<0 x i8>\n";

/// A GPU kernel taking every view's pointer, then every view's strides.
pub fn gpu_function(symbol: &str, ranks: &[usize], phase: &Phase, storage: &[Storage]) -> String {
    let mut params: Vec<String> = (0..ranks.len()).map(|k| format!("%p{k}: !llvm.ptr")).collect();
    for (k, &r) in ranks.iter().enumerate() {
        params.extend((0..r).map(|d| format!("%s{k}_{d}: i64")));
    }
    let mut head = phase.body.prologue.clone();
    if phase.cooperative.is_some() {
        // A block per item, grid-stride over the blocks.
        head.extend([
            "%smem = llvm.mlir.addressof @hyb_shared : !llvm.ptr<3>".to_string(),
            "%tid_x = gpu.thread_id x".to_string(),
            "%bid_x = gpu.block_id x".to_string(),
            "%gdim_x = gpu.grid_dim x".to_string(),
            "%tid = arith.index_cast %tid_x : index to i64".to_string(),
            "%first = arith.index_cast %bid_x : index to i64".to_string(),
            "%threads = arith.index_cast %gdim_x : index to i64".to_string(),
            format!("%items = arith.constant {} : i64", phase.items),
        ]);
        return kernel(symbol, &params, &head, phase, storage);
    }
    head.extend([
        "%tid_x = gpu.thread_id x".to_string(),
        "%bid_x = gpu.block_id x".to_string(),
        "%bdim_x = gpu.block_dim x".to_string(),
        "%gdim_x = gpu.grid_dim x".to_string(),
        "%tid = arith.index_cast %tid_x : index to i64".to_string(),
        "%bid = arith.index_cast %bid_x : index to i64".to_string(),
        "%bdim = arith.index_cast %bdim_x : index to i64".to_string(),
        "%gdim = arith.index_cast %gdim_x : index to i64".to_string(),
        "%first0 = arith.muli %bid, %bdim : i64".to_string(),
        "%first = arith.addi %first0, %tid : i64".to_string(),
        "%threads = arith.muli %gdim, %bdim : i64".to_string(),
        format!("%items = arith.constant {} : i64", phase.items),
    ]);
    kernel(symbol, &params, &head, phase, storage)
}

/// The kernel: `head`, then the loop of `%item` from `%first` by `%threads`.
fn kernel(symbol: &str, params: &[String], head: &[String], phase: &Phase, storage: &[Storage]) -> String {
    format!(
        "  gpu.func @{symbol}({}) kernel {{\n{}    scf.for %item = %first to %items step %threads : i64 {{\n{}    }}\n    gpu.return\n  }}\n",
        params.join(", "),
        indent(head, "    "),
        indent(&phase.body.lines(Target::Gpu, storage), "      "),
    )
}
