#!/usr/bin/env bash
# `hyb generate` on the GPU against Hugging Face's greedy output: every Falcon-H1 fixture
# (tests/fixtures/falcon_h1/*/generate.json, recorded by make_falcon_h1_generate.py) is
# imported, and each of its prompts generated with --device cuda and then --device cpu,
# with the arguments tests/generate_cli.rs uses (--ids, --max-new-tokens from the file,
# float32, the fixture's eos 2). Prints PASS/FAIL per fixture and device with decode
# tokens/s, then one longer greedy run per device (256 tokens, no end) for steady decode
# speeds. Usage: bash bench/gpu_generate.sh [HYB_BINARY] (default: dist/hyb.xz unpacked);
# gpu_check.sh calls it. DEVICES (default "cuda cpu") picks the devices. Logs under $OUT;
# exits 1 when a case fails.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/hyb-out}
mkdir -p "$OUT"
work=$(mktemp -d)
hyb=${1:-}
if [ -z "$hyb" ]; then
    hyb="$work/hyb"
    xz -dc dist/hyb.xz > "$hyb" && chmod +x "$hyb"
fi
export HYB_STDLIB="$PWD/stdlib" HYB_CACHE_DIR="${HYB_CACHE_DIR:-$work/cache}"
export LD_LIBRARY_PATH="/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
python3 - "$hyb" "$work" "$OUT" "${DEVICES:-cuda cpu}" <<'PY'
import json, os, subprocess, sys
hyb, work, out = sys.argv[1:4]
devices = sys.argv[4].split()
root = "tests/fixtures/falcon_h1"
log = open(os.path.join(out, "generate_gpu.txt"), "w")

def run(args):
    p = subprocess.run([hyb] + args, capture_output=True, text=True, timeout=600)
    log.write("$ hyb " + " ".join(args) + f"\nrc {p.returncode}\n{p.stdout}{p.stderr}\n")
    log.flush()
    if p.returncode != 0:
        return None, p.stderr.strip().splitlines()[-1:] or ["(no message)"]
    return json.loads(p.stdout), None

failed = 0
models = {}
for name in sorted(os.listdir(root)):
    fixture = os.path.join(root, name)
    if not os.path.exists(os.path.join(fixture, "generate.json")):
        continue
    dest = os.path.join(work, "models", name)
    p = subprocess.run([hyb, "import", fixture, "-o", dest, "--name", name], capture_output=True, text=True)
    if p.returncode != 0:
        print(f"FAIL {name}: import: {p.stderr.strip()}")
        failed += 1
        continue
    model, weights = os.path.join(dest, name + ".hyb"), os.path.join(dest, name + ".safetensors")
    models[name] = (model, weights)
    expected = json.load(open(os.path.join(fixture, "generate.json")))
    n = str(expected["max_new_tokens"])
    for device in devices:
        bad, rates = [], []
        for case in expected["cases"]:
            prompt = ",".join(map(str, case["prompt"]))
            got, err = run(["generate", model, "--weights", weights, "--ids", prompt,
                            "--max-new-tokens", n, "--device", device, "--json"])
            if got is None:
                bad.append(f"prompt {prompt}: {err[0]}")
            elif got["generated"] != case["generated"] or got.get("device") != device:
                bad.append(f"prompt {prompt}: got {got['generated']} on {got.get('device')}, HF {case['generated']}")
            else:
                rates.append(got["decode_tokens_per_s"])
        speed = f"; decode {min(rates):.0f}-{max(rates):.0f} tokens/s" if rates else ""
        if bad:
            failed += 1
            print(f"FAIL {name} --device {device}: {len(bad)} of {len(expected['cases'])} cases{speed}")
            for b in bad:
                print("    " + b)
        else:
            print(f"PASS {name} --device {device}: {len(rates)} cases equal to HF{speed}")

# Steady decode: one prompt, 256 new tokens, no end of sequence.
if "gqa_basic" in models:
    model, weights = models["gqa_basic"]
    ids = {}
    for device in devices:
        got, err = run(["generate", model, "--weights", weights, "--ids", "85,55,42,45,21,54,45,62,73,77",
                        "--max-new-tokens", "256", "--eos", "none", "--device", device, "--json"])
        if got is None:
            print(f"FAIL gqa_basic 256 tokens --device {device}: {err[0]}")
            failed += 1
            continue
        ids[device] = got["generated"]
        print(f"gqa_basic 256 tokens --device {device}: prefill {got['prefill_tokens_per_s']:.0f} tokens/s, "
              f"decode {got['decode_tokens_per_s']:.0f} tokens/s, prepare {got['prepare_seconds']:.2f} s")
    if len(ids) == 2:
        same = next((i for i, (a, b) in enumerate(zip(ids["cuda"], ids["cpu"])) if a != b), len(ids["cpu"]))
        print(f"gqa_basic 256 tokens: GPU and CPU agree on the first {same} tokens (float32 both)")
print(f"generation on the GPU: {'all passed' if failed == 0 else f'{failed} failed'} (log: {out}/generate_gpu.txt)")
sys.exit(1 if failed else 0)
PY
