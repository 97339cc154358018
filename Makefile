# Entry points for people and CI. `make demo` runs the main job; `make test` runs the tests.

LLVM_PACKAGES := llvm-22-dev libmlir-22-dev mlir-22-tools clang-22 libpolly-22-dev zlib1g-dev libzstd-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HYB := target/release/hyb

.PHONY: deps build demo test

## Installs LLVM/MLIR 22 from Debian when they are missing (the compiler's code generator needs them).
deps:
	@if ! dpkg -s $(LLVM_PACKAGES) >/dev/null 2>&1; then \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y $(LLVM_PACKAGES); \
	fi

build: deps
	cargo build --release

## Checks every standard-library and example model, then prints the Falcon-H1 layer tables.
demo: build
	$(HYB) check stdlib/*.hyb examples/*.hyb
	$(HYB) show stdlib/falcon_h1.hyb --model falcon_h1_0_5b
	@for m in falcon_h1_1_5b_deep falcon_h1_7b falcon_h1_34b; do \
		$(HYB) show stdlib/falcon_h1.hyb --model $$m | tail -n 4; done
	$(HYB) show examples/ratio_schedule.hyb
	$(HYB) import tests/fixtures/falcon_h1/gqa_basic -o target/demo --name gqa_basic
	$(HYB) logits target/demo/gqa_basic.hyb --weights target/demo/gqa_basic.safetensors --ids 85,55,42,45 | cut -c1-100

test: deps
	cargo test --workspace
	cargo fmt --all -- --check
	cargo run -q -- fmt --check stdlib/*.hyb examples/*.hyb
