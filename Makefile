# OpenBSD's hypervisor userland in Rust: vmm-sys (the vmm(4) ABI and the
# KVM shim), vmd, vmctl.  `make demo` and `make test` work on a fresh Debian
# machine: they install what they need first.

CARGO ?= cargo
DEBIAN_PACKAGES = libclang-dev qemu-system-x86 seabios mandoc jq
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: all deps assets build test lint fmt-check unit regress demo bench-exits bench-boot bindings check-openbsd clean

all: build

# Debian packages, installed only where missing (idempotent).
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "make deps: missing Debian packages:$$missing (run as root to install them)"; exit 1; \
		fi; \
		echo "make deps: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Guest assets (Debian's SeaBIOS) in .cache/assets.
assets:
	sh scripts/fetch-assets.sh

build: deps
	$(CARGO) build --workspace --all-targets

fmt-check:
	$(CARGO) fmt --all -- --check

lint: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every test of the workspace (unit tests, the ABI and bindings tests, the
# regress suite).  Tests that need /dev/kvm report themselves as skipped
# where it is missing.
unit: deps assets
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace --no-fail-fast
else
	$(CARGO) test --workspace --no-fail-fast
endif

test: fmt-check lint unit

# The vmm(4) regress suite alone, verbosely.
regress: deps
	$(CARGO) test -p vmm-regress --test vmm -- --nocapture

# The main job: boot Debian's SeaBIOS in a VM (COM1 on the terminal; it
# ends after 10 seconds), then the vmm(4) regress suite against the host's
# vmm(4) — the KVM shim on Linux.
demo: deps assets
	$(CARGO) build --release -p vmd
	./target/release/vmrun -m 64M -t 10 -b .cache/assets/bios.bin demo < /dev/null
	@echo
	$(MAKE) regress

bench-exits: deps
	$(CARGO) build --release -p vmm-bench
	./target/release/bench-exits

bench-boot: deps assets
	$(CARGO) build --release -p vmd
	python3 scripts/bench-boot.py

bindings: deps
	sh scripts/update-bindings.sh

check-openbsd:
	sh scripts/check-openbsd.sh

clean:
	$(CARGO) clean
