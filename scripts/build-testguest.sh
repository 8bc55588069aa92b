#!/bin/sh
# Builds the freestanding test guest (testguest/) for the host target with
# the flags a bare-metal image needs: static relocation model, no start
# files, its linker script (see testguest/build.rs).  The ELF ends up at
# target/testguest/testguest, where vmd's tests look for it.  With
# --clippy, lints it instead.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
CARGO=${CARGO:-cargo}
export CARGO_TARGET_DIR="$root/target/testguest-build"
# Only these flags: the caller's RUSTFLAGS are meant for the host crates.
export RUSTFLAGS="-C relocation-model=static -C target-cpu=x86-64 -C force-frame-pointers=no"
unset CARGO_BUILD_RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
if [ "${1:-}" = "--clippy" ]; then
	(cd testguest && $CARGO clippy --release --quiet --target x86_64-unknown-linux-gnu -- -D warnings)
	exit 0
fi
(cd testguest && $CARGO build --release --quiet --target x86_64-unknown-linux-gnu)
mkdir -p target/testguest
cp "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/testguest" target/testguest/testguest.tmp
mv target/testguest/testguest.tmp target/testguest/testguest
echo "testguest: target/testguest/testguest"
