#!/bin/sh
# `make install` into temporary DESTDIRs, for PREFIX=/usr and the default
# PREFIX, and check that every file lands where it should, with its mode,
# and that the rc.d script or systemd unit names the installed binaries.
# With DESTDIR set, install must leave the host alone (no useradd).
#
# Builds the release binaries first, unless RELEASE_DIR names a directory
# that already holds vmd and vmctl.  Run from the top of the tree (`make
# install-check`).
set -eu

# The defaults of the Makefile are under test, not the caller's settings.
unset DESTDIR PREFIX MANDIR EXAMPLESDIR SYSTEMDUNITDIR
MAKE=${MAKE:-make}
CARGO=${CARGO:-cargo}
if [ -z "${RELEASE_DIR:-}" ]; then
	"$CARGO" build --release -p vmd -p vmctl
	RELEASE_DIR=target/release
fi
export RELEASE_DIR

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

fail() {
	echo "install-check: FAIL: $*"
	failures=$((failures + 1))
}

# mode PATH: the permission bits, in octal.
mode() {
	case $(uname -s) in
	Linux) stat -c %a "$1" ;;
	*) stat -f %Lp "$1" ;;
	esac
}

# expect PATH MODE: PATH is a regular file (or a directory for MODE "dir").
expect() {
	if [ "$2" = dir ]; then
		[ -d "$1" ] || fail "missing directory ${1#"$work"}"
		return
	fi
	if [ ! -f "$1" ]; then
		fail "missing ${1#"$work"}"
	elif [ "$(mode "$1")" != "$2" ]; then
		fail "${1#"$work"} has mode $(mode "$1"), not $2"
	fi
}

# check PREFIX UNITDIR MANDIR EXAMPLESDIR [make arguments...]
check() {
	prefix=$1 unitdir=$2 mandir=$3 examples=$4
	shift 4
	dest=$work/stage$(echo "$prefix" | tr / _)
	log=$work/log
	if ! "$MAKE" -s install DESTDIR="$dest" "$@" >"$log" 2>&1; then
		cat "$log"
		fail "make install DESTDIR=$dest $* failed"
		return
	fi
	if grep -q useradd "$log"; then
		fail "make install with DESTDIR touched the host's users"
	fi
	expect "$dest$prefix/sbin/vmd" 755
	expect "$dest$prefix/sbin/vmctl" 755
	cmp -s "$RELEASE_DIR/vmd" "$dest$prefix/sbin/vmd" || fail "vmd differs from $RELEASE_DIR/vmd"
	expect "$dest$mandir/man8/vmd.8" 644
	expect "$dest$mandir/man8/vmctl.8" 644
	expect "$dest$mandir/man5/vm.conf.5" 644
	expect "$dest$examples/vm.conf" 644
	expect "$dest/var/empty" dir
	expect "$dest/etc/firmware" dir
	if [ "$(uname -s)" = OpenBSD ]; then
		rc=$dest/etc/rc.d/vmd
		expect "$rc" 555
		grep -q "^daemon=\"$prefix/sbin/vmd\"\$" "$rc" || fail "rc.d/vmd does not run $prefix/sbin/vmd"
		grep -q "$prefix/sbin/vmctl stop -a -w" "$rc" || fail "rc.d/vmd does not stop the VMs with $prefix/sbin/vmctl"
		ksh -n "$rc" || fail "rc.d/vmd: syntax"
	else
		unit=$dest$unitdir/vmd.service
		expect "$unit" 644
		[ -e "$dest/etc/rc.d/vmd" ] && fail "rc.d script installed on $(uname -s)"
		grep -q "^ExecStartPre=$prefix/sbin/vmd -n " "$unit" || fail "vmd.service: ExecStartPre is not $prefix/sbin/vmd -n"
		grep -q "^ExecStart=$prefix/sbin/vmd -d " "$unit" || fail "vmd.service: ExecStart is not $prefix/sbin/vmd -d"
		grep -q "^ExecStop=-$prefix/sbin/vmctl stop -a -w\$" "$unit" || fail "vmd.service: ExecStop is not vmctl stop -a -w"
		if command -v systemd-analyze >/dev/null 2>&1; then
			# Verify a copy whose commands point into the stage.
			mkdir -p "$work/verify"
			sed "s|$prefix/sbin/|$dest$prefix/sbin/|g" "$unit" >"$work/verify/vmd.service"
			systemd-analyze verify --man=no "$work/verify/vmd.service" ||
				fail "systemd-analyze verify vmd.service"
		else
			echo "install-check: no systemd-analyze: unit not verified"
		fi
	fi
	# Installing twice over the same tree works (read-only files included).
	"$MAKE" -s install DESTDIR="$dest" "$@" >"$log" 2>&1 || {
		cat "$log"
		fail "second make install into $dest failed"
	}
}

if [ "$(uname -s)" = OpenBSD ]; then
	check /usr - /usr/share/man /etc/examples PREFIX=/usr
	check /usr/local - /usr/local/man /etc/examples
else
	check /usr /lib/systemd/system /usr/share/man /usr/share/doc/vmd/examples PREFIX=/usr
	check /usr/local /etc/systemd/system /usr/local/share/man /usr/local/share/doc/vmd/examples
fi

# Without release binaries, install stops before copying anything.
if RELEASE_DIR=$work/none "$MAKE" -s install DESTDIR="$work/empty" >"$work/log" 2>&1; then
	fail "make install succeeded without release binaries"
elif [ -e "$work/empty" ]; then
	fail "make install without release binaries created $work/empty"
fi

if [ "$failures" -ne 0 ]; then
	echo "install-check: $failures failure(s)"
	exit 1
fi
echo "install-check: ok"
