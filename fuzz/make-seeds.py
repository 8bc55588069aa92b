#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (committed; rerun
after a change to a target's input layout).  qcow2 seeds are made with
qemu-img and qemu-io (Debian's qemu-utils).  Each seed is laid out as its
target reads its input (see the comment at the top of each target)."""
import os
import shutil
import struct
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- vm.conf: a flag byte (bit 0 `vmd -n`), then the text.
CONFS = {
    "example": open(os.path.join(HERE, "..", "etc", "vm.conf"), "rb").read(),
    "full": b"""# every kind of line
sets="/var/www/htdocs/pub/OpenBSD/snapshots/amd64"
socket owner alice:staff
local prefix 100.64.0.0/10
local inet6 prefix fd00::/8
staggered start parallel 2 delay 30
switch "uplink" {
	interface bridge0
	group "wan"
	locked lladdr
	rdomain 1
}
vm "openbsd" {
	memory 1G
	boot $sets "/bsd.rd"
	boot device disk
	disk "/var/vmm/a.qcow2" format qcow2
	disk "/var/vmm/b.img" format raw
	cdrom "/var/iso/install.iso"
	interfaces 2
	interface tap3 { switch "uplink" lladdr fe:e1:ba:d0:00:01 locked lladdr up }
	local interface { group "lan" rdomain 2 down }
	owner alice:staff
	allow instance { memory, disk, interface, boot, cdrom, instance }
	sev
}
vm "parent" instance "child" { memory 512M owner :wheel }
""",
    "errors": b"""vm "x" {
	memory 100
	memory "1.5G"
	interfaces 99
	owner nobody:nogroup
	disk "rel/path" format foo
}
include "missing.conf"
\tvm
"unterminated
x = "1" y="${x}"
vm $undefined { disable }
""",
    "continuation": b'vm "long" \\\n { memory \\\n 64M\n enable }\nram2 = $ram\nvm "m" { memory $ram2 }\n',
}

for name, text in CONFS.items():
    put("config", name, b"\x00" + text)
    put("config", name + "-n", b"\x01" + text)


# --- imsg: bincode 2 "standard" payloads (varint integers, zigzag for
# signed ones, length-prefixed strings, Option as a 0/1 tag) behind the
# 16-byte header (type, len, flags, peerid, pid).
def varint(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32:
        return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)


def zz(n):
    return varint((n << 1) ^ (n >> 63) if n >= 0 else ((-n) << 1) - 1)


def s(text):
    return varint(len(text)) + text


def imsg(t, payload=b"", peerid=0, pid=1234):
    return struct.pack("<IHHII", t, 16 + len(payload), 0, peerid, pid) + payload


# vmd.h's numbers (vmd-proto/src/msg.rs).
MSG = open(os.path.join(HERE, "..", "vmd-proto", "src", "msg.rs")).read()


def number(name):
    import re

    m = re.search(r"\b" + name + r"\s*=\s*(\d+)", MSG)
    assert m, name
    return int(m.group(1))


vmop_id = varint(3) + s(b"openbsd") + varint(1000) + varint(2)
vmop_result = zz(0) + varint(3) + zz(4242) + s(b"/dev/ttyp3")
stream = (
    imsg(number("CtlOk"))
    + imsg(number("CtlFail"), b"\x01" + zz(2))
    + imsg(number("TerminateVmRequest"), vmop_id)
    + imsg(number("StartVmResponse"), vmop_result)
    + imsg(number("GetInfoVmEndData"))
)
put("imsg", "stream", b"\x00\x40" + stream)
put("imsg", "stream-bytewise", b"\x00\x01" + stream)
put("imsg", "with-fd", b"\x01\x40" + struct.pack("<IHHII", number("StartVmDisk"), 16 + 2, 0x1 | 1 << 8, 0, 1) + b"\x00\x00")
put("imsg", "truncated", b"\x00\x40" + stream[:40])
put("imsg", "bad-length", b"\x00\x40" + struct.pack("<IHHII", 1, 15, 0, 0, 0))


# --- x86: the fields vmd_fuzz::x86::case reads, in its order.
class X86:
    def __init__(self, mode, insn, ram_page_tables=True):
        self.b = b""
        self.b += struct.pack("<Q", mode)  # mode (below 9)
        for i in range(18):  # GPRs: tag, value (in RAM unless tag & 3 == 0)
            self.b += bytes([1]) + struct.pack("<Q", 0x3000 + i * 0x10)
        self.b += bytes([1]) + struct.pack("<QH", 0, 0)  # cr3: page 0
        self.b += bytes([0x10])  # extra: WP
        if mode == 8:
            self.b += struct.pack("<QQQQ", 0x80000011, 0x20, 0x500, 2)
        for _ in range(8):  # sregs: tag 1 (base 0), sel, ar, limit
            self.b += bytes([1]) + struct.pack("<HII", 0x10, 0xc, 0xffffffff)
        self.b += bytes([2 if mode in (6, 7) else 1])  # CS: L or D/B
        for _ in range(2):  # gdtr, ldtr: tag, base, sel, limit
            self.b += bytes([1]) + struct.pack("<QHH", 0x8000, 0, 0xfff)
        self.b += bytes([0])  # cpl 0
        self.b += (insn + b"\x90" * 15)[:15]
        self.b += bytes([0])  # no holes
        self.b += bytes([1]) + struct.pack("<IQ", 0x3000, 0x1122334455667788)
        self.b += bytes([1])  # place
        self.b += b"\x00" + struct.pack("<Q", 0xdeadbeef) * 4  # bus script


INSNS = {
    "mov-load": b"\x8b\x03",  # mov eax, [rbx]
    "mov-store": b"\x89\x03",
    "movzx": b"\x0f\xb6\x03",
    "xchg": b"\x87\x03",
    "or": b"\x09\x03",
    "rep-stos": b"\xf3\xab",
    "movs": b"\xa5",
    "mov-sreg": b"\x8e\x1b",
    "push": b"\xff\x33",
}
for name, insn in INSNS.items():
    for mode in (0, 2, 4, 6):
        put("emulate_mmio", f"{name}-mode{mode}", b"\x00\x00" + X86(mode, insn).b)
for name, insn in {"outsb": b"\x6e", "rep-insw": b"\xf3\x66\x6d", "outsd": b"\x6f"}.items():
    for mode in (0, 2, 6):
        size = {"outsb": 1, "rep-insw": 2, "outsd": 4}[name]
        d = 1 if name == "rep-insw" else 0
        head = bytes([{1: 0, 2: 1, 4: 2}[size], d, 1 if "rep" in name else 0]) + struct.pack("<HBI", 0, 0, 0)
        put("emulate_string_io", f"{name}-mode{mode}", head + X86(mode, insn).b)


# --- virtqueue: device byte, then 12-byte operations
# (kind, a: u16, b: u32, c: u32, d: u8).
def op(kind, a=0, b=0, c=0, d=0):
    return struct.pack("<BHIIB", kind, a, b, c, d)


def desc(i, addr, length, flags, nxt):
    # kind 2: d's top bits 0 (addr = b % 0x20000), flags = d >> 1 & 7,
    # len = c (d & 16 clear), next = a >> 8.
    return op(2, (nxt << 8) | i, addr, length, flags << 1)


rng = desc(0, 0x8000, 64, 2, 0) + op(4, 0) + op(7, 0)
rng_chain = desc(0, 0x8000, 16, 3, 1) + desc(1, 0x8100, 48, 2, 0) + op(4, 0) + op(7, 0)
put("virtqueue", "rng-one", b"\x00" + rng)
put("virtqueue", "rng-chain", b"\x00" + rng_chain)
# vioblk: header (type, reserved, sector) readable, data, status writable.
blk_hdr = lambda t, sector: op(6, 0, 0x9000, t, 0)  # noqa: E731  type at 0x9000
for t, name in ((0, "read"), (1, "write"), (4, "flush"), (8, "get-id")):
    ops = blk_hdr(t, 0) + desc(0, 0x9000, 16, 1, 1)
    ops += desc(1, 0xa000, 512, 1 | (2 if t in (0, 8) else 0), 2) + desc(2, 0xb000, 1, 2, 0)
    ops += op(4, 0) + op(7, 0)
    put("virtqueue", f"blk-{name}", b"\x01" + ops)


# --- boot: a selector byte (0/1 ELF, 2 bzImage, 3 BIOS), then the image.
def elf64():
    eh = bytearray(64)
    eh[:16] = b"\x7fELF\x02\x01\x01" + b"\x00" * 9
    struct.pack_into("<HHIQQQIHHHHHH", eh, 16, 2, 62, 1, 0x1001000, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, 0xffffffff81001000, 0x1001000, 0x100, 0x200, 0x1000)
    body = bytearray(0x1100 - 64 - 56)
    return bytes(eh) + ph + bytes(body)


def elf32():
    eh = bytearray(52)
    eh[:16] = b"\x7fELF\x01\x01\x01" + b"\x00" * 9
    struct.pack_into("<HHIIIIIHHHHHH", eh, 16, 2, 3, 1, 0x201000, 52, 0, 0, 52, 32, 1, 40, 0, 0)
    ph = struct.pack("<IIIIIIII", 1, 0x1000, 0xd0201000, 0x201000, 0x100, 0x180, 5, 0x1000)
    return bytes(eh) + ph + bytes(0x1100 - 52 - 32)


def bzimage():
    img = bytearray(1024)
    img[0x1F1] = 1
    img[0x1FE:0x200] = b"\x55\xaa"
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x020C)
    img[0x211] = 1
    struct.pack_into("<I", img, 0x214, 0x100000)
    struct.pack_into("<I", img, 0x22C, 0x37FFFFFF)
    struct.pack_into("<H", img, 0x236, 1)
    struct.pack_into("<I", img, 0x238, 2048)
    payload = bytearray(b"\x90" * 0x400)
    payload[0x200] = 0xF4
    return bytes(img) + bytes(payload) + b"console=ttyS0 root=/dev/vda".ljust(64)


put("boot", "elf64", b"\x00" + elf64())
put("boot", "elf32", b"\x01" + elf32())
put("boot", "elf64-bootmac", b"\x04" + elf64())
put("boot", "bzimage", b"\x02" + bzimage())
put("boot", "bzimage-initrd", b"\x06" + bzimage())
put("boot", "bios", b"\x03" + b"\x90" * 48 + b"\xea\x5b\xe0\x00\xf0" + b"\x00" * 11)


# --- dhcp: flags (bit 0 network boot, bit 1 tap MAC known), VM id,
# interface index, then a frame from the guest (fe:e1:bb:d1:00:01), as
# clients send them: DISCOVER, REQUEST, a REQUEST for another address, a
# BOOTP request, one to the tap's MAC, and an IP header with options.
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def dhcp_frame(opts, dst_mac=b"\xff" * 6, ip_opts=b"", pad_to=300):
    mac = bytes([0xFE, 0xE1, 0xBB, 0xD1, 0x00, 0x01])
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x1234ABCD, 0, 0x8000,
                        b"", b"", b"", b"", mac, b"", b"")
    if opts is not None:
        bootp += bytes([99, 130, 83, 99]) + opts
    bootp = bootp.ljust(pad_to, b"\0")
    src, dst = bytes(4), b"\xff" * 4
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0)
    usum = csum(src + dst + struct.pack("!BBH", 0, 17, len(udp) + len(bootp)) + udp + bootp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", usum)
    ihl = 5 + len(ip_opts) // 4
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(udp) + len(bootp), 0, 0, 64, 17, 0, src, dst) + ip_opts
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return dst_mac + mac + b"\x08\x00" + ip + udp + bootp


def dhcp_seed(name, frame, flags=0, vmid=1, idx=0):
    put("dhcp", name, bytes([flags, vmid, idx]) + frame)


def dhcp_seeds():
    dhcp_seed("discover", dhcp_frame(bytes([53, 1, 1, 55, 4, 1, 3, 6, 12, 255])))
    dhcp_seed("request", dhcp_frame(bytes([53, 1, 3, 50, 4, 100, 64, 1, 3, 54, 4, 100, 64, 1, 2, 255])))
    dhcp_seed("request-other-addr", dhcp_frame(bytes([53, 1, 3, 50, 4, 10, 0, 0, 9, 255])), vmid=3, idx=1)
    dhcp_seed("bootp", dhcp_frame(None), flags=1)
    dhcp_seed("to-tap-mac", dhcp_frame(bytes([53, 1, 1, 255]), dst_mac=bytes([0xFE, 0xE1, 0xBA, 0xD0, 0, 1])), flags=3)
    dhcp_seed("ip-options", dhcp_frame(bytes([0, 0, 53, 1, 1, 255]), ip_opts=b"\x01\x01\x01\x00"), vmid=200, idx=3)


dhcp_seeds()

# --- scsi: its seeds are hand-made (fuzz/fuzz_targets/scsi.rs says the
# layout); this script leaves corpus/scsi alone.


# --- qcow2: flags (bit 0 writable, bit 1 backing), n, n 12-byte
# operations (kind, offset u64, length u16 in 8-byte units, fill), image.
def qops(*ops):
    return bytes([len(ops)]) + b"".join(struct.pack("<BQHB", *o) for o in ops)


OPS = qops((0, 0, 64, 0), (2, 4096, 128, 0xAB), (0, 4096, 128, 0), (3, 0, 0, 0), (2, 70000, 64, 0xCD))
tools = shutil.which("qemu-img") and shutil.which("qemu-io")
if not tools:
    print("make-seeds: qemu-img/qemu-io missing (apt-get install qemu-utils): qcow2 seeds skipped")
else:
    with tempfile.TemporaryDirectory() as t:

        def qimg(name, *opts, io=(), backing=None):
            p = os.path.join(t, name)
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
            if backing:
                cmd += ["-b", backing, "-F", "raw"]
            subprocess.run(cmd + ["-o", ",".join(("cluster_size=512",) + opts), p, "1M"], check=True)
            for c in io:
                subprocess.run(["qemu-io", "-f", "qcow2", "-c", c, p], check=True, capture_output=True)
            return open(p, "rb").read()

        put("qcow2", "v3-empty", b"\x01" + OPS + qimg("a.qcow2"))
        put("qcow2", "v2-empty", b"\x01" + OPS + qimg("b.qcow2", "compat=0.10"))
        put("qcow2", "v3-written", b"\x01" + OPS + qimg("c.qcow2", io=("write -P 0x5a 0 4k", "write -P 0x33 600k 1k")))
        put("qcow2", "v3-readonly", b"\x00" + OPS + qimg("d.qcow2", io=("write -P 0x5a 512 2k",)))
        raw = os.path.join(t, "base.raw")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", raw, "1M"], check=True)
        put("qcow2", "v3-backing", b"\x03" + OPS + qimg("e.qcow2", io=("write -P 0x77 1k 1k",), backing=raw))
        # A compressed cluster: convert -c from a written image.
        src = os.path.join(t, "c.qcow2")
        dst = os.path.join(t, "z.qcow2")
        subprocess.run(["qemu-img", "convert", "-q", "-c", "-O", "qcow2", "-o", "cluster_size=512", src, dst], check=True)
        put("qcow2", "v3-compressed", b"\x00" + OPS + open(dst, "rb").read())
print("make-seeds: corpora in", CORPUS)
