#!/bin/sh
# Fetches the guest assets the tests and the demo boot into .cache/assets:
# Debian's seabios package (the firmware OpenBSD ships as vmm-bios).
# Idempotent; prints the directory.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${ASSETS_DIR:-$top/.cache/assets}
mkdir -p "$dir"
if [ ! -s "$dir/bios.bin" ] || [ ! -s "$dir/bios-256k.bin" ]; then
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	(cd "$work" && apt-get download seabios >/dev/null 2>&1) || {
		[ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1
		(cd "$work" && apt-get download seabios >/dev/null)
	}
	dpkg-deb -x "$work"/seabios_*.deb "$work/x"
	cp "$work/x/usr/share/seabios/bios.bin" "$work/x/usr/share/seabios/bios-256k.bin" "$dir/"
	dpkg-deb -f "$work"/seabios_*.deb Version > "$dir/seabios.version"
fi
echo "$dir"
