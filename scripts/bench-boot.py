#!/usr/bin/env python3
"""make bench-boot: time from process start to SeaBIOS's banner on COM1,
our VM process (vmrun) against QEMU with KVM and the same bios.bin, several
runs each, alternating; prints the medians and their ratio."""
import os
import statistics
import subprocess
import sys
import time

BANNER = b"SeaBIOS (version"
TIMEOUT = 60.0


def time_to_banner(cmd):
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf = b""
    try:
        os.set_blocking(p.stdout.fileno(), False)
        while time.monotonic() - start < TIMEOUT:
            try:
                chunk = p.stdout.read(4096)
            except BlockingIOError:
                chunk = None
            if chunk:
                buf += chunk
                if BANNER in buf:
                    return time.monotonic() - start
            elif chunk == b"" or p.poll() is not None:
                break
            else:
                time.sleep(0.001)
        raise RuntimeError("no banner from %s: %r" % (cmd[0], buf[-300:]))
    finally:
        p.kill()
        p.wait()


def main():
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bios = sys.argv[1] if len(sys.argv) > 1 else os.path.join(top, ".cache/assets/bios.bin")
    runs = int(os.environ.get("BENCH_RUNS", "5"))
    vmrun = os.path.join(top, "target/release/vmrun")
    ours = [vmrun, "-m", "64M", "-t", "60", "-b", bios, "bench"]
    qemu = ["qemu-system-x86_64", "-enable-kvm", "-nodefaults", "-vga", "none", "-display", "none",
            "-machine", "graphics=off", "-serial", "stdio", "-m", "64", "-bios", bios]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("bench-boot: skipped: needs /dev/kvm", file=sys.stderr)
        sys.exit(77)
    a, b = [], []
    time_to_banner(ours)  # warm the page cache for both
    time_to_banner(qemu)
    for _ in range(runs):
        a.append(time_to_banner(ours))
        b.append(time_to_banner(qemu))
    o, q = statistics.median(a), statistics.median(b)
    print("seabios_banner_s_ours=%.3f" % o)
    print("seabios_banner_s_qemu=%.3f" % q)
    print("seabios_banner_ratio=%.3f" % (o / q))


if __name__ == "__main__":
    main()
