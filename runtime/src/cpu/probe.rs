//! This machine as the cost model sees it, measured: the CPU executor's GEMM throughput
//! and the memory copy bandwidth, so predictions for CPU runs (`hyb sweep --machine host`)
//! can be compared with what those runs measure.

use super::gemm::Gemm;
use hyb_compiler::codegen::cpu::ArenaView;
use hyb_compiler::cost::Machine;
use std::time::Instant;

/// The best of `runs` timings of `f`, in seconds.
fn best(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The host, measured (about a second): a 512³ float32 GEMM through the executor's GEMM,
/// and a 64 MiB copy. Launch cost and links are the CPU executor's (one process).
pub fn host() -> Machine {
    let n = 512;
    let shape = [n, n];
    let strides = [n as isize, 1];
    let gemm = Gemm::new(false, false, &shape, &shape, &shape).expect("a square GEMM");
    let mut arena: Vec<f32> = (0..3 * n * n).map(|i| (i % 7) as f32 * 0.25).collect();
    let view = |k: usize| ArenaView { offset: k * n * n, shape: &shape, strides: &strides };
    let (a, b, out) = (view(0), view(1), view(2));
    let gemm_s = best(3, || gemm.run(&mut arena, &a, &b, &out).expect("the views fit the arena"));
    let words = 16 << 20;
    let from = vec![1.0f32; words];
    let mut to = vec![0.0f32; words];
    let copy_s = best(3, || to.copy_from_slice(&from));
    std::hint::black_box(&to);
    Machine {
        name: "host",
        peak_flops: 2.0 * (n * n * n) as f64 / gemm_s,
        mem_bw: 2.0 * 4.0 * words as f64 / copy_s,
        launch: 2e-6,
        float_bytes: 4.0,
        ..Machine::h200()
    }
}
