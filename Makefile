# OpenBSD's hypervisor userland in Rust: vmm-sys (the vmm(4) ABI and the
# KVM shim), vmd, vmctl.  `make demo` and `make test` work on a fresh Debian
# machine: they install what they need first.

CARGO ?= cargo
DEBIAN_PACKAGES = libclang-dev qemu-system-x86 qemu-utils seabios mandoc jq xorriso busybox iproute2 python3 iperf3 iputils-ping
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: all deps assets testguest build test lint fmt-check unit regress demo bench-exits bench-boot bench-idle bench-io bench-net bindings check-openbsd clean test-faults
.PHONY: install install-check man-lint fuzz fuzz-smoke

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

# The freestanding test guest (testguest/, its own workspace and flags)
# that vmd's tests boot, in target/testguest/testguest.
testguest:
	CARGO="$(CARGO)" sh scripts/build-testguest.sh

build: deps
	$(CARGO) build --workspace --all-targets

fmt-check:
	$(CARGO) fmt --all -- --check
	cd testguest && $(CARGO) fmt -- --check

lint: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	CARGO="$(CARGO)" sh scripts/build-testguest.sh --clippy

# Every test of the workspace (unit tests, the ABI and bindings tests, the
# regress suite).  Tests that need /dev/kvm report themselves as skipped
# where it is missing.
unit: deps assets testguest
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace --no-fail-fast
else
	$(CARGO) test --workspace --no-fail-fast
endif

test: fmt-check lint unit man-lint

# The fault and load tests (vmd/tests/faults.rs) with the issue's full
# figures: 100 fault cycles with a SIGSTOP of a minute, 1,000 control
# clients, 50 VMs at once (make test runs 12 cycles, 300 clients, 12
# VMs).  Prints the figures measured (faults: lines).  As root.
test-faults: deps
	$(CARGO) build -p vmctl --bin vmctl
	VMD_FAULTS_FULL=1 $(CARGO) test -p vmd --test faults -- --test-threads 1

# The vmm(4) regress suite alone, verbosely.
regress: deps
	$(CARGO) test -p vmm-regress --test vmm -- --nocapture

# The main job (scripts/demo.sh, as root): vmd -d in a temporary
# directory with a vm.conf whose VM boots Debian's SeaBIOS, vmctl status,
# the VM's console for 6 seconds, vmctl stop -f -w, vmd stopped.
demo: deps
	CARGO="$(CARGO)" sh scripts/demo.sh

bench-exits: deps
	$(CARGO) build --release -p vmm-bench
	./target/release/bench-exits

bench-boot: deps assets
	$(CARGO) build --release -p vmd
	python3 scripts/bench-boot.py

# The test guest's block benchmark under our VM and under QEMU, on a raw
# and a qcow2 image: medians and ratios (BENCH_ROUNDS, default 5).
bench-io: deps assets testguest
	$(CARGO) bench -p vmd --bench io

# The test guest as a two-port repeater between two network namespaces,
# under our VM and under QEMU: iperf3 TCP and ping round trips through it,
# medians and ratios (BENCH_ROUNDS, default 5).  As root.
bench-net: deps assets testguest
	$(CARGO) bench -p vmd --bench net

# Idle wake-ups per second of each thread of a VM sitting in SeaBIOS's
# "No bootable device" HLT loop (the PIT ticks at 18.2 Hz).
bench-idle: deps assets
	$(CARGO) build --release -p vmd --bin vmrun
	sh scripts/idle-wakeups.sh target/release/vmrun 5

# Coverage-guided fuzzing (cargo-fuzz, libFuzzer; fuzz/README.md): every
# target for FUZZ_SECONDS seconds, one after another; fails on a crash and
# names the reproducer.  Needs the nightly toolchain (installed through
# rustup when missing) and cargo-fuzz (installed when missing).
FUZZ_SECONDS ?= 30

fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) CARGO="$(CARGO)" sh scripts/fuzz.sh $(FUZZ_TARGETS)

# The short pass CI runs.
fuzz-smoke:
	FUZZ_SECONDS=5 CARGO="$(CARGO)" sh scripts/fuzz.sh $(FUZZ_TARGETS)

bindings: deps
	sh scripts/update-bindings.sh

check-openbsd:
	sh scripts/check-openbsd.sh

# The manual pages must be clean under mandoc's lint at warning level.
MANPAGES = man/vmd.8 man/vmctl.8 man/vm.conf.5

man-lint:
	@command -v mandoc >/dev/null 2>&1 || $(MAKE) deps
	mandoc -Tlint -Wwarning $(MANPAGES)

# Installation of the release binaries (`cargo build --release -p vmd -p
# vmctl` first; `gmake install` on OpenBSD).  PREFIX=/usr replaces a base
# system's vmd.  The rc.d script (OpenBSD) or the systemd unit (Linux) is
# rewritten to name $(PREFIX)/sbin.  Without DESTDIR, on Linux, the _vmd
# user is created if missing and systemd reloads its units.
PREFIX ?= /usr/local
RELEASE_DIR ?= target/release
HOST_OS := $(shell uname -s)
SBINDIR = $(PREFIX)/sbin
ifeq ($(HOST_OS),OpenBSD)
MANDIR ?= $(if $(filter /usr,$(PREFIX)),/usr/share/man,$(PREFIX)/man)
EXAMPLESDIR ?= /etc/examples
else
MANDIR ?= $(PREFIX)/share/man
EXAMPLESDIR ?= $(PREFIX)/share/doc/vmd/examples
SYSTEMDUNITDIR ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,/etc/systemd/system)
endif

install:
	@for f in vmd vmctl; do [ -f $(RELEASE_DIR)/$$f ] || { \
		echo "make install: no $(RELEASE_DIR)/$$f: run cargo build --release -p vmd -p vmctl first"; exit 1; }; done
	install -d -m 0755 $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(EXAMPLESDIR) $(DESTDIR)/var/empty $(DESTDIR)/etc/firmware
	install -m 0755 $(RELEASE_DIR)/vmd $(RELEASE_DIR)/vmctl $(DESTDIR)$(SBINDIR)/
	install -m 0644 man/vmd.8 man/vmctl.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 man/vm.conf.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 etc/vm.conf $(DESTDIR)$(EXAMPLESDIR)/vm.conf
ifeq ($(HOST_OS),OpenBSD)
	install -d -m 0755 $(DESTDIR)/etc/rc.d
	rm -f $(DESTDIR)/etc/rc.d/vmd
	sed 's|/usr/sbin/|$(SBINDIR)/|g' etc/rc.d/vmd > $(DESTDIR)/etc/rc.d/vmd
	chmod 0555 $(DESTDIR)/etc/rc.d/vmd
else
	install -d -m 0755 $(DESTDIR)$(SYSTEMDUNITDIR)
	rm -f $(DESTDIR)$(SYSTEMDUNITDIR)/vmd.service
	sed 's|/usr/sbin/|$(SBINDIR)/|g' etc/vmd.service > $(DESTDIR)$(SYSTEMDUNITDIR)/vmd.service
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/vmd.service
	@if [ -z "$(DESTDIR)" ]; then \
		if ! id _vmd >/dev/null 2>&1; then \
			echo "useradd _vmd"; \
			useradd --system --no-create-home --home-dir /var/empty --shell /usr/sbin/nologin _vmd; \
		fi; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	fi
endif

# `make install` into a temporary DESTDIR, checked file by file.
install-check:
	MAKE="$(MAKE)" CARGO="$(CARGO)" sh regress/install-check.sh

clean:
	$(CARGO) clean
