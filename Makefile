# Entry points for people and CI. `make demo` runs the main job; `make test` runs the tests.

LLVM_PACKAGES := llvm-22-dev libmlir-22-dev mlir-22-tools clang-22 libpolly-22-dev zlib1g-dev libzstd-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HYB := target/release/hyb
MQAR := --data mqar --mqar-pairs 4 --seq 32 --batch 32 --lr 1e-2 --steps 400 --eval-every 100 --eval-batches 8

.PHONY: deps build demo test device-tc

## Installs LLVM/MLIR 22 from Debian when they are missing (the compiler's code generator needs them).
deps:
	@if ! dpkg -s $(LLVM_PACKAGES) >/dev/null 2>&1; then \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y $(LLVM_PACKAGES); \
	fi

build: deps
	cargo build --release

## Checks every model, prints the Falcon-H1 layer tables, runs a Hugging Face checkpoint,
## compiles the Falcon-H1-34B training step for 8 tensor-parallel ranks (`hyb explain`), and
## trains a tiny parallel hybrid and a pure Mamba-2 model on multi-query associative recall.
demo: build
	$(HYB) check stdlib/*.hyb examples/*.hyb
	$(HYB) show stdlib/falcon_h1.hyb --model falcon_h1_0_5b
	@for m in falcon_h1_1_5b_deep falcon_h1_7b falcon_h1_34b; do \
		$(HYB) show stdlib/falcon_h1.hyb --model $$m | tail -n 4; done
	$(HYB) show examples/ratio_schedule.hyb
	$(HYB) import tests/fixtures/falcon_h1/gqa_basic -o target/demo --name gqa_basic
	$(HYB) logits target/demo/gqa_basic.hyb --weights target/demo/gqa_basic.safetensors --ids 85,55,42,45 | cut -c1-100
	$(HYB) explain stdlib/falcon_h1.hyb --model falcon_h1_34b --tp 8 --dot target/demo/falcon_h1_34b.dot | head -n 30
	@for m in hybrid mamba; do \
		$(HYB) train examples/mqar_$$m.hyb $(MQAR) --out target/demo/mqar_$$m || exit 1; done
	@for m in hybrid mamba; do \
		printf 'MQAR recall accuracy, %-6s after 400 steps: ' $$m; \
		tail -n 1 target/demo/mqar_$$m/metrics.jsonl | grep -o '"eval_accuracy":[0-9.]*' | cut -d: -f2; done

test: deps
	cargo test --workspace --release
	cargo fmt --all -- --check
	cargo run --release -q -- fmt --check stdlib/*.hyb examples/*.hyb

## Writes what bench/tensor_core_check.sh needs on the GPU machine, to carry there:
## dist/hyb.xz (the stripped release binary) and dist/tc.tar.xz (dist/tc packed: the
## tensor-core device cases, the benchmarks' PTX and the mamba-ssm peer).
device-tc: build
	rm -rf dist/tc && mkdir -p dist/tc
	HYB_PTX_CASES=$(CURDIR)/dist/tc/cases HYB_PTX_ONLY=tensor_core,template,long cargo test -p hyb-compiler --test codegen export_cases_for_the_device -- --ignored
	HYB_PTX_CASES=$(CURDIR)/dist/tc/bench cargo test -p hyb-compiler --test codegen export_attention_benchmark -- --ignored
	HYB_PTX_CASES=$(CURDIR)/dist/tc/bench cargo test -p hyb-compiler --test codegen export_ssd_benchmark -- --ignored
	cp -r ../shared/peer dist/tc/peer
	tar -cf - -C dist tc | xz -T0 > dist/tc.tar.xz
	strip -o dist/hyb $(HYB) && xz -f -T0 dist/hyb
