"""Checks the tensor-core SSD gradient's intermediate values, phase by phase, at the small
shape of ssd.json (B 1, T 128, one head of 32 channels, state 32): the workspace after a
run against the same quantities in float64 numpy from the same bf16 inputs (the chunked
form of compiler/src/codegen/template/ssd_scan/chunk_grad.rs, tiles of 64 steps).
Usage: python3 bench/ssd_debug.py DIR
"""
import json, os, sys
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_mma import launcher  # noqa: E402

L = 64


def main():
    folder = sys.argv[1]
    case = next(c for c in json.load(open(os.path.join(folder, "ssd.json"))) if c["t"] == 128)
    T, P, N = case["t"], case["p"], case["n"]
    torch.manual_seed(1)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    x, dy = torch.randn(1, T, 1, P, **bf), torch.randn(1, T, 1, P, **bf)
    dt = (torch.rand(1, T, 1, device="cuda") * 0.95 + 0.05).to(torch.bfloat16)
    a = -(torch.rand(1, device="cuda") * 0.9 + 0.1).to(torch.bfloat16)
    bm, cm = torch.randn(1, T, 1, N, **bf), torch.randn(1, T, 1, N, **bf)
    grads = [torch.full_like(v, float("nan")) for v in (x, dt, a, bm, cm)]
    run = launcher(folder, case["passes"]["backward"], [x, dt, a, bm, cm, dy] + grads)
    run()
    torch.cuda.synchronize()
    ws = [w.cpu().numpy().astype(np.float64) for w in run.workspace]
    f = lambda v: v.float().cpu().numpy().astype(np.float64)
    X, DY, Dt, A, Bm, Cm = f(x)[0, :, 0], f(dy)[0, :, 0], f(dt)[0, :, 0], f(a)[0], f(bm)[0, :, 0], f(cm)[0, :, 0]
    tiles = T // L
    H0, h = [], np.zeros((N, P))
    ls = []
    for k in range(tiles):
        i = slice(k * L, (k + 1) * L)
        l = np.cumsum(Dt[i] * A)
        ls.append(l)
        H0.append(h.copy())
        S = ((np.exp(l[-1] - l) * Dt[i])[:, None] * Bm[i]).T @ X[i]
        h = np.exp(l[-1]) * h + S
    want = {k: np.zeros_like(v) for k, v in enumerate(ws)}
    G = np.zeros((N, P))
    D = np.zeros(T)
    xdx = np.zeros(T)
    for k in reversed(range(tiles)):
        i = slice(k * L, (k + 1) * L)
        l = ls[k]
        Xt, Dyt, Bt, Ct, dtt = X[i], DY[i], Bm[i], Cm[i], Dt[i]
        W = np.tril(np.exp(l[:, None] - l[None, :]))
        CB = Ct @ Bt.T
        to_last = np.exp(l[-1] - l)
        dx_last = to_last[:, None] * (Bt @ G)
        leaving = dtt * (Xt * dx_last).sum(1)
        dxt = dx_last + (CB * W).T @ Dyt
        M = Dyt @ Xt.T
        w = CB * W * M * dtt[None, :]
        np.fill_diagonal(w, 0)
        pairs = w.sum(1) - w.sum(0)
        into = np.exp(l)
        ent = (Ct * (into[:, None] * (Dyt @ H0[k].T))).sum(1)
        gh = (G * H0[k]).sum()
        dl = pairs + ent - leaving
        extra = np.exp(l[-1]) * gh + leaving.sum()
        D[i] = np.array([dl[r:].sum() + extra for r in range(L)])
        xdx[i] = (Xt * dxt).sum(1)
        want[0][k * N * P:(k + 1) * N * P] = H0[k].T.ravel()
        want[6][k * N * P:(k + 1) * N * P] = G.T.ravel()
        want[7][i] = leaving
        want[8][i] = pairs
        want[9][k] = np.exp(l[-1])
        want[3][i] = xdx[i]
        want[4][i] = D[i]
        G = np.exp(l[-1]) * G + (Ct * into[:, None]).T @ Dyt
    names = ["states", "db_part", "dc_part", "xdx", "d", "da_part", "adjoints", "leaving", "pairs_dl", "decays"]
    for k, name in enumerate(names):
        have, w = ws[k], want[k]
        if name in ("db_part", "dc_part", "da_part"):
            continue
        scale = max(np.abs(w).max(), 1e-9)
        worst = int(np.argmax(np.abs(have - w)))
        print(f"{name:9s} largest difference {np.abs(have - w).max() / scale:.2e} of scale {scale:.3g}"
              f" (at {worst}: {have.ravel()[worst]:.4g} vs {w.ravel()[worst]:.4g})")
    ddt = xdx + A * D
    print(f"ddt       largest difference {np.abs(f(grads[1])[0, :, 0] - ddt).max() / np.abs(ddt).max():.2e}")


if __name__ == "__main__":
    main()
