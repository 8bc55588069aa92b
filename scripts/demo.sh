#!/bin/sh
# make demo: vmd and vmctl as an administrator uses them.  Builds the
# release binaries, fetches SeaBIOS (scripts/fetch-assets.sh), starts
# `vmd -d` in a temporary directory with its own control socket
# (VMD_SOCKET) and a vm.conf of one VM that boots SeaBIOS, shows
# `vmctl status` and the VM's console for a few seconds, starts a second
# VM with a local interface (`vmctl start -L`) and shows the host side of
# its tap (priv's /31 from the local prefix), stops the VMs with `vmctl
# stop -f -w`, then vmd with SIGTERM.  Needs root and /dev/kvm (/dev/vmm
# on OpenBSD).  On Linux vmd runs in a network namespace of its own (ip
# netns, removed at the end), so its tap touches no interface of the
# host; on OpenBSD the tap is the host's and goes with its VM.  Touches
# nothing else outside the temporary directory and target/.
#
# CARGO names cargo; DEMO_CONSOLE_SECONDS how long the console is read (6).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
CARGO=${CARGO:-cargo}
console_seconds=${DEMO_CONSOLE_SECONDS:-6}

fail() {
	echo "demo: $*" >&2
	exit 1
}
step() {
	printf '\n==> %s\n' "$*"
}

[ "$(id -u)" = 0 ] || fail "vmd needs root: run make demo as root"
dev=/dev/kvm
[ "$(uname -s)" = OpenBSD ] && dev=/dev/vmm
[ -c "$dev" ] || fail "no $dev: vmd needs hardware virtualization (KVM on Linux)"

step "build vmd and vmctl"
$CARGO build --release -p vmd -p vmctl
vmd=$top/target/release/vmd
vmctl=$top/target/release/vmctl
bios=$(sh scripts/fetch-assets.sh)/bios.bin

# vmd drops its privileges to _vmd, or nobody where there is no _vmd
# (make install creates _vmd).
user=nobody
id _vmd >/dev/null 2>&1 && user=_vmd
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vmd-demo.XXXXXX")
chmod 755 "$tmp"
VMD_SOCKET=$tmp/vmd.sock
VMD_USER=$user
export VMD_SOCKET VMD_USER
vmd_pid=
# in_ns CMD...: CMD where vmd runs (its network namespace on Linux).
netns=
in_ns() {
	if [ -n "$netns" ]; then
		ip netns exec "$netns" "$@"
	else
		"$@"
	fi
}
cleanup() {
	if [ -n "$vmd_pid" ] && kill -0 "$vmd_pid" 2>/dev/null; then
		kill -TERM "$vmd_pid"
		wait "$vmd_pid" || true
	fi
	[ -z "$netns" ] || ip netns del "$netns" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

cat > "$tmp/vm.conf" <<EOF
# One VM, started with vmd: Debian's SeaBIOS, no disk.
vm "demo" {
	memory 64M
	boot "$bios"
}
EOF
step "vm.conf"
cat "$tmp/vm.conf"
step "vmd -n -f vm.conf"
"$vmd" -n -f "$tmp/vm.conf"

where=
if [ "$(uname -s)" = Linux ]; then
	command -v ip >/dev/null || fail "no ip (Debian package iproute2)"
	netns=vmd-demo-$$
	ip netns add "$netns" || fail "cannot create network namespace $netns"
	ip -n "$netns" link set lo up
	where=", in network namespace $netns"
fi
step "vmd -d -f vm.conf   (VMD_SOCKET=$VMD_SOCKET VMD_USER=$user$where)"
# Not through in_ns: a function in the background is a subshell, and $!
# must be vmd's pid (ip netns exec execs vmd).
if [ -n "$netns" ]; then
	ip netns exec "$netns" "$vmd" -d -f "$tmp/vm.conf" 2> "$tmp/vmd.log" &
else
	"$vmd" -d -f "$tmp/vm.conf" 2> "$tmp/vmd.log" &
fi
vmd_pid=$!

# wait_running NAME: running, with its process and tty: vmd marks a VM
# running when it asks for it, and learns the pid and tty once the VM
# process answers.
wait_running() {
	i=0
	until "$vmctl" status "$1" 2>/dev/null |
		awk -v n="$1" '$NF == n && $(NF-1) == "running" && $2 != "-" && $6 != "-" { ok = 1 } END { exit !ok }'; do
		if ! kill -0 "$vmd_pid" 2>/dev/null; then
			cat "$tmp/vmd.log" >&2
			vmd_pid=
			fail "vmd exited"
		fi
		i=$((i + 1))
		[ $i -le 100 ] || fail "vm $1 not running after 10 seconds"
		sleep 0.1
	done
}
wait_running demo
echo "vmd is running (pid $vmd_pid)"

step "vmctl status"
"$vmctl" status

# The TTY column is the tty's name after its last slash: ttyp0 on
# OpenBSD, 0 for /dev/pts/0 on Linux.
tty=$("$vmctl" status demo | awk '$NF == "demo" { print $6 }')
case $tty in
/*) ;;
[0-9]*) tty=/dev/pts/$tty ;;
*) tty=/dev/$tty ;;
esac
step "the console of vm demo, $tty, for $console_seconds seconds"
# SeaBIOS clears the screen and resets the terminal: its escape
# sequences and carriage returns are left out.
esc=$(printf '\033')
timeout "$console_seconds" cat "$tty" | tr -d '\r' |
	sed -e "s/$esc\[[0-9;?]*[A-Za-z]//g" -e "s/${esc}c//g"
echo "[end of the console]"

step "vmctl start -b bios.bin -m 64M -L net   (a local interface)"
"$vmctl" start -b "$bios" -m 64M -L net
wait_running net
step "vmctl status"
"$vmctl" status
# priv described the VM's tap as vm<id>-if<idx>-<name>.
if [ "$(uname -s)" = OpenBSD ]; then
	tap=$(ifconfig -a | awk '/^[a-z]/ { i = $1 } /description: vm[0-9]+-if0-net$/ { sub(":$", "", i); print i }')
else
	tap=$(in_ns ip -o link show | awk '/ alias vm[0-9]+-if0-net/ { sub(":$", "", $2); print $2 }')
fi
[ -n "$tap" ] || fail "no tap described vm<id>-if0-net"
if [ "$(uname -s)" = OpenBSD ]; then
	step "ifconfig $tap   (the host side of vm net's local interface)"
	ifconfig "$tap"
else
	step "ip addr show $tap   (the host side of vm net's local interface$where)"
	in_ns ip addr show "$tap"
fi
in_ns sh -c 'ip addr show "$1" 2>/dev/null || ifconfig "$1"' sh "$tap" |
	grep -q 'inet 100\.' || fail "$tap has no address from the local prefix (100.64.0.0/10)"

step "vmctl stop -f -w net; vmctl stop -f -w demo"
"$vmctl" stop -f -w net
"$vmctl" stop -f -w demo
if in_ns sh -c 'ip link show "$1" 2>/dev/null || ifconfig "$1" 2>/dev/null' sh "$tap" >/dev/null; then
	fail "$tap outlived vm net"
fi
echo "$tap went with vm net"
step "vmctl status"
"$vmctl" status

step "SIGTERM to vmd"
kill -TERM "$vmd_pid"
wait "$vmd_pid"
echo "vmd exited 0"
vmd_pid=
step "vmd's log (vmd -d logs to stderr)"
cat "$tmp/vmd.log"
