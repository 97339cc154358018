"""Times hyb's tensor-core SSD scan against mamba-ssm's `mamba_chunk_scan_combined`
(Triton) in one process, forward and (where exported) forward + backward.

Reads ssd.json and the PTX from `export_ssd_benchmark` (compiler/tests/codegen/
templates.rs) and the peer from `.peer` (`../shared/peer`, carried). Both run on the same
random bf16 inputs (`dt` in Mamba's range after softplus, `a` negative); hyb's outputs are
poisoned with NaN first and compared with the peer's (largest difference relative to the
peer's largest magnitude; NaN fails). Times are medians of 20 CUDA-event timings after 3
warm-up runs. The bound is bytes: every input read once and every output written once, at
the 4.26 TB/s the H200 copies. Usage: PYTHONPATH=.peer python3 bench/ssd_mma.py DIR
"""
import json, os, sys
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_mma import difference, launcher, median_ms  # noqa: E402
from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: E402

COPY_BYTES_PER_S = 4.26e12


def main():
    folder = sys.argv[1]
    failed = 0
    for case in json.load(open(os.path.join(folder, "ssd.json"))):
        b, t, h, p, g, n, chunk = (case[k] for k in ("b", "t", "h", "p", "g", "n", "chunk"))
        torch.manual_seed(0)
        bf16 = dict(device="cuda", dtype=torch.bfloat16)
        x = torch.randn(b, t, h, p, **bf16)
        dt = (torch.rand(b, t, h, device="cuda") * 0.1 + 0.001).to(torch.bfloat16)
        a = -(torch.rand(h, device="cuda") * 15 + 1).to(torch.bfloat16)
        bm, cm = torch.randn(b, t, g, n, **bf16), torch.randn(b, t, g, n, **bf16)
        dy = torch.randn(b, t, h, p, **bf16)
        inputs = [x, dt, a, bm, cm]
        out = torch.full_like(x, float("nan"))
        forward = launcher(folder, case["passes"]["forward"], inputs + [out])
        backward = None
        grads = [torch.full_like(v, float("nan")) for v in inputs]
        if "backward" in case["passes"]:
            backward = launcher(folder, case["passes"]["backward"], inputs + [dy] + grads)
        leaves = [v.clone().requires_grad_() for v in (x, dt)] + [a.float().requires_grad_()]
        leaves += [v.clone().requires_grad_() for v in (bm, cm)]

        def peer():
            return mamba_chunk_scan_combined(*leaves, chunk_size=chunk)

        def peer_both():
            y = peer()
            torch.autograd.grad(y, leaves, dy)

        def hyb_both():
            forward()
            backward()

        # The peer first, on its own copies; again after hyb has run, so that a write of
        # hyb's outside its outputs shows as a change in the peer's results.
        y = peer()
        want = [y.detach().clone()]
        if backward:
            want += [g.clone() for g in torch.autograd.grad(y, leaves, dy)]
        forward()
        if backward:
            backward()
        torch.cuda.synchronize()
        again = peer().detach()
        for name, u in zip(["y", "dx", "ddt", "da", "db", "dc"], want):
            bad = (~torch.isfinite(u.float())).sum().item()
            if bad:
                print(f"  the peer's {name}: {bad} of {u.numel()} elements not finite")
        finite = torch.isfinite(want[0].float()) & torch.isfinite(again.float())
        moved = (again.float() - want[0].float())[finite].abs().max() > 1e-2 * want[0].float()[finite].abs().max()
        if moved or not all(torch.equal(u, v) for u, v in zip(leaves, [x, dt, a.float(), bm, cm])):
            print("FAIL hyb wrote outside its outputs: the peer's inputs or results changed")
            failed += 1
        have = [out] + (grads if backward else [])
        for name, u in zip(["y", "dx", "ddt", "da", "db", "dc"], have):
            bad = (~torch.isfinite(u.float())).sum().item()
            if bad:
                print(f"  hyb's {name}: {bad} of {u.numel()} elements not finite")
        diffs = [difference(u, w) for u, w in zip(have, want)]
        ok = all(d < 2e-2 for d in diffs)
        failed += not ok
        with torch.no_grad():
            times = [("forward", median_ms(forward), median_ms(peer))]
        if backward:
            times.append(("forward + backward", median_ms(hyb_both), median_ms(peer_both)))
        shape = f"B {b} T {t} H {h} P {p} G {g} N {n} chunk {chunk}"
        moved = {"forward": 2 * x.numel() * 2 + 2 * bm.numel() * 2 + dt.numel() * 2}
        moved["forward + backward"] = moved["forward"] * 3
        for what, ours, theirs in times:
            bound = moved[what] / COPY_BYTES_PER_S * 1e3
            print(f"{'PASS' if ok else 'FAIL'} ssd {what} {shape}: hyb {ours:.3f} ms, mamba-ssm {theirs:.3f} ms, "
                  f"hyb/mamba-ssm time {ours / theirs:.2f}x; byte bound {bound:.3f} ms "
                  f"(hyb at {bound / ours:.0%}, mamba-ssm at {bound / theirs:.0%})")
        names = ["y", "dx", "ddt", "da", "db", "dc"]
        print("  largest difference from mamba-ssm, of its scale: "
              + ", ".join(f"{k} {d:.2e}" for k, d in zip(names, diffs)))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
