#!/bin/sh
# Type-checks the whole workspace, all targets (libraries, binaries, tests,
# benches, examples), for x86_64-unknown-openbsd on this Linux host: proves
# that the OpenBSD code paths (vmm-sys's /dev/vmm backend, ...) compile, and
# evaluates vmm-sys's const ABI assertions for that target.  It does not
# link or run anything.
#
# rustup cannot download the rust-src component here, so this uses Debian's
# rustc-web, cargo-web and rust-web-src (installed if missing) with
# -Zbuild-std, in a target directory of its own (target/openbsd) so that it
# never invalidates the normal build.  vmm-sys builds from the committed
# src/bindings.rs (VMM_SYS_BINDGEN=0): bindgen would run on this host for a
# foreign target, and the committed copy is what an OpenBSD build without
# libclang uses anyway.
#
# Fails on any compiler warning in workspace crates; set
# CHECK_OPENBSD_ALLOW_WARNINGS=1 to only report them.  Extra arguments go
# to cargo check (e.g. `-p vmd`).
set -eu

cd "$(dirname "$0")/.."
target=${OPENBSD_TARGET:-x86_64-unknown-openbsd}
packages="rustc-web cargo-web rust-web-src"

start=$(date +%s)

installed() {
	dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=
for p in $packages; do
	installed "$p" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "check-openbsd: needs Debian packages:$missing (no apt-get here)" >&2
		exit 1
	fi
	sudo=
	if [ "$(id -u)" != 0 ]; then
		command -v sudo >/dev/null 2>&1 || {
			echo "check-openbsd: needs root to install:$missing" >&2
			exit 1
		}
		sudo=sudo
	fi
	echo "check-openbsd: installing$missing"
	# shellcheck disable=SC2086
	if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y $missing; then
		$sudo apt-get update
		# shellcheck disable=SC2086
		$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y $missing
	fi
fi

RUSTC=/usr/bin/rustc
CARGO=/usr/bin/cargo
src="$($RUSTC --print sysroot)/lib/rustlib/src/rust/library"
if [ ! -d "$src" ]; then
	echo "check-openbsd: no standard library source at $src (rust-web-src)" >&2
	exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT INT TERM

echo "check-openbsd: $($RUSTC --version), cargo check --workspace --all-targets --target $target"
status=0
# RUSTFLAGS from the environment would also apply to the rebuilt std.
env -u RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
	RUSTC="$RUSTC" RUSTC_BOOTSTRAP=1 VMM_SYS_BINDGEN=0 \
	CARGO_TARGET_DIR="${CHECK_OPENBSD_TARGET_DIR:-target/openbsd}" \
	"$CARGO" check --workspace --all-targets --target "$target" \
	-Zbuild-std=std,panic_abort "$@" >"$log" 2>&1 || status=$?
cat "$log"

elapsed=$(($(date +%s) - start))
if [ "$status" != 0 ]; then
	echo "check-openbsd: FAILED (cargo check exit $status, ${elapsed}s)" >&2
	exit 1
fi
# Lints of non-workspace crates are capped by cargo, so any summary line
# like "warning: `vmm-sys` (lib) generated 2 warnings" is ours.
if grep -q '^warning: .* generated [0-9]* warning' "$log"; then
	if [ "${CHECK_OPENBSD_ALLOW_WARNINGS:-0}" != 1 ]; then
		echo "check-openbsd: FAILED (warnings for $target; CHECK_OPENBSD_ALLOW_WARNINGS=1 to allow, ${elapsed}s)" >&2
		exit 1
	fi
	echo "check-openbsd: OK with warnings (${elapsed}s)"
	exit 0
fi
echo "check-openbsd: OK (${elapsed}s)"
