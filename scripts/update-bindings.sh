#!/bin/sh
# Regenerates the committed copy vmm-sys/src/bindings.rs from
# vmm-sys/include/vmmvar.h.  The copy is what vmm-sys builds from where
# libclang is missing (or VMM_SYS_BINDGEN=0), e.g. for the OpenBSD
# type-check; the `bindings` test of vmm-sys fails when it is stale.
#
# Builds vmm-sys for the host with bindgen forced on and takes the file
# build.rs wrote, found through cargo's JSON build-script message (its
# VMM_SYS_BINDINGS env and the vmm_sys_bindgen cfg), so no guessing among
# target/*/build/vmm-sys-*/ directories.
#
# Environment: CARGO (default cargo).  Needs libclang (Debian: libclang-dev).
set -eu

cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
dest=vmm-sys/src/bindings.rs

for tool in jq; do
	command -v "$tool" >/dev/null 2>&1 || {
		echo "update-bindings: $tool is required" >&2
		exit 1
	}
done

# Our header, not the host's; bindgen on.
unset VMM_SYS_SYSTEM_HEADERS
export VMM_SYS_BINDGEN=1

msgs=$(mktemp)
trap 'rm -f "$msgs"' EXIT INT TERM

if ! "$CARGO" build -p vmm-sys --lib --message-format=json-render-diagnostics >"$msgs"; then
	echo "update-bindings: cargo build -p vmm-sys failed" >&2
	exit 1
fi

# The vmm-sys package's own build-script message (not vmm-sys-util's).
script=$(jq -c 'select(.reason == "build-script-executed")
	| select(.package_id | test("(^|[/ ])vmm-sys([#@ ]|$)"))' "$msgs" | tail -n 1)
if [ -z "$script" ]; then
	echo "update-bindings: no build-script message for vmm-sys in cargo's output" >&2
	exit 1
fi

if [ "$(printf '%s' "$script" | jq '.cfgs | index("vmm_sys_bindgen") != null')" != true ]; then
	why=$(printf '%s' "$script" | jq -r '(.env[] | select(.[0] == "VMM_SYS_BINDGEN_SKIPPED") | .[1]) // "unknown"')
	echo "update-bindings: build.rs did not run bindgen ($why); install libclang-dev" >&2
	exit 1
fi

src=$(printf '%s' "$script" | jq -r '.env[] | select(.[0] == "VMM_SYS_BINDINGS") | .[1]')
if [ -z "$src" ] || [ ! -f "$src" ]; then
	echo "update-bindings: generated bindings not found (VMM_SYS_BINDINGS=$src)" >&2
	exit 1
fi

if cmp -s "$src" "$dest"; then
	echo "update-bindings: $dest is up to date"
else
	cp "$src" "$dest"
	echo "update-bindings: refreshed $dest from $src"
fi
