#!/bin/sh
# Idle wake-ups of a VM process: boots SeaBIOS with no disk under vmrun
# (it ends at "No bootable device" and sits in HLT with the PIT running),
# waits for it to settle, then counts the voluntary context switches of
# each thread over a window.  Usage: idle-wakeups.sh VMRUN [SECONDS]
set -eu
vmrun=$1
window=${2:-5}
bios=$(dirname "$0")/../.cache/assets/bios.bin
out=$(mktemp)
"$vmrun" -m 64M -t $((window + 15)) -b "$bios" idle >"$out" 2>&1 &
pid=$!
sleep 8
grep -q "No bootable device" "$out" || { echo "idle-wakeups: SeaBIOS did not finish booting" >&2; cat "$out" >&2; kill $pid; exit 1; }
snap() {
	for t in /proc/$pid/task/*; do
		printf '%s:%s %s\n' "$(cat "$t/comm")" "${t##*/}" "$(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")"
	done | sort
}
snap >"$out.a"
sleep "$window"
snap >"$out.b"
kill $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
join "$out.a" "$out.b" | awk -v w="$window" '{sub(/:.*/, "", $1); printf "%s_wakeups_per_s=%.1f\n", $1, ($3 - $2) / w}'
rm -f "$out" "$out.a" "$out.b"
