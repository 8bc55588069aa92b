//! vionet on real taps, each test inside a network namespace of its own
//! (created for it, gone with it; no interface of the host is touched and
//! no frame leaves the namespace):
//!
//! - the tap rule (the first free `tapN`, a named one, a busy one) and
//!   the vionet core on a tap answered by the Linux kernel's ARP: a frame
//!   the guest sends reaches the kernel and its answer reaches the
//!   guest's receive ring, `locked lladdr` holding back a spoofed source;
//! - vmd itself, with NICs from vm.conf: the taps get the names vmd's rule
//!   gives, each NIC is served by a vionet device process holding its
//!   tap, the guest sees the NICs on the PCI bus in vmd's slot order with
//!   vmd's ids, and the taps are gone when the VM ends.
//!
//! Needs root (namespaces, taps); the second also /dev/kvm and the test
//! guest.  Reported as ignored with the reason where any is missing.
mod support;
#[path = "support/testguest.rs"]
mod testguest_support;

use libtest_mimic::{Arguments, Failed, Trial};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmd::devices::bus::PioDevice;
use vmd::devices::irq::IrqLines;
use vmd::devices::virtio::net::{Vionet, VionetConfig};
use vmd::devices::virtio::transport::VirtioPci;
use vmd::sys::{open_tap, Tap};
use vmd::vm::guest_memory::VmMemory;
use vmd_proto::msg::{VmopId, VmopInfoResult, VMOP_FORCE};
use vmd_proto::{ImsgChannel, Message};
use vmm_sys::GuestMemory;

/// Runs `f` on a thread inside a new network namespace (the thread's
/// alone; it ends with the thread and whatever it started).
fn in_netns<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failed> + Send + 'static,
) -> Result<T, Failed> {
    std::thread::spawn(move || {
        unshare_net()?;
        f()
    })
    .join()
    .map_err(|_| Failed::from("test thread panicked"))?
}

#[cfg(target_os = "linux")]
fn unshare_net() -> Result<(), Failed> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("unshare(CLONE_NEWNET): {e}").into())
}

#[cfg(not(target_os = "linux"))]
fn unshare_net() -> Result<(), Failed> {
    Err("network namespaces are Linux's".into())
}

/// Why not, where there are no network namespaces to test in.
fn missing_netns() -> Option<String> {
    (!cfg!(target_os = "linux")).then(|| "needs Linux network namespaces".to_string())
}

fn ip(args: &str) -> Result<(), Failed> {
    let st = Command::new("ip").args(args.split_whitespace()).status()?;
    if !st.success() {
        return Err(format!("ip {args}: {st}").into());
    }
    Ok(())
}

fn exists(ifname: &str) -> bool {
    nix::net::if_::if_nametoindex(ifname).is_ok()
}

fn missing_ip() -> Option<String> {
    Command::new("ip")
        .arg("-V")
        .output()
        .is_err()
        .then(|| "needs ip(8) (Debian's iproute2)".to_string())
}

#[derive(Default)]
struct Lines(Mutex<u32>);
impl IrqLines for Lines {
    fn assert_irq(&self, _irq: u8) {
        *self.0.lock().unwrap() += 1;
    }
    fn deassert_irq(&self, _irq: u8) {}
}

const GUEST_MAC: [u8; 6] = [0xfe, 0xe1, 0xbb, 0xd1, 0x77, 0x01];
const RX: u64 = 0x1000;
const TX: u64 = 0x5000;
const RX_BUF: u64 = 0x10000;
const TX_BUF: u64 = 0x40000;
const QSIZE: u64 = 256;

/// A guest driver as small as it gets: two queues of 256 at fixed
/// places, one 2 KiB receive buffer per descriptor.
struct Driver {
    pci: VirtioPci<Vionet>,
    mem: GuestMemory,
    tx_idx: u16,
    rx_seen: u16,
}

fn rings(base: u64) -> (u64, u64, u64) {
    (base, base + 0x1000, base + 0x2000)
}

impl Driver {
    fn new(tap: Tap, locked: bool) -> Result<Driver, Failed> {
        let mem = GuestMemory::anonymous(&[(0, 0x10_0000)])?;
        let dev = Vionet::new(
            VionetConfig {
                mac: GUEST_MAC,
                locked,
            },
            Box::new(tap),
        );
        let mut pci = VirtioPci::new(dev, VmMemory::new(&mem)?, 5, Arc::new(Lines::default()));
        // Reset, ACK, DRIVER, VERSION_1 | MAC, FEATURES_OK.
        for s in [0, 1, 3] {
            pci.pio_write(0x14, 1, s);
        }
        pci.pio_write(0x08, 4, 0);
        pci.pio_write(0x0c, 4, 1 << 5);
        pci.pio_write(0x08, 4, 1);
        pci.pio_write(0x0c, 4, 1);
        pci.pio_write(0x14, 1, 11);
        for (q, base) in [(0u32, RX), (1, TX)] {
            let (d, a, u) = rings(base);
            pci.pio_write(0x16, 2, q);
            for (off, addr) in [(0x20, d), (0x28, a), (0x30, u)] {
                pci.pio_write(off, 4, addr as u32);
                pci.pio_write(off + 4, 4, 0);
            }
            pci.pio_write(0x1c, 2, 1);
        }
        pci.pio_write(0x14, 1, 15);
        if pci.pio_read(0x14, 1) != 15 {
            return Err("vionet did not take the driver".into());
        }
        let mac: Vec<u8> = (0..6).map(|i| pci.pio_read(0x300 + i, 1) as u8).collect();
        if mac != GUEST_MAC {
            return Err(format!("device configuration MAC {mac:x?}").into());
        }
        let mut d = Driver {
            pci,
            mem,
            tx_idx: 0,
            rx_seen: 0,
        };
        // Every receive descriptor posted once.
        let (desc, avail, _) = rings(RX);
        for i in 0..QSIZE {
            d.desc(desc, i, RX_BUF + 0x800 * i, 0x800, 2);
            d.mem.write(avail + 4 + 2 * i, &(i as u16).to_le_bytes())?;
        }
        d.mem.write(avail + 2, &(QSIZE as u16).to_le_bytes())?;
        d.pci.pio_write(0x100, 2, 0);
        Ok(d)
    }

    fn desc(&self, table: u64, i: u64, addr: u64, len: u32, flags: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        self.mem.write(table + 16 * i, &b).unwrap();
    }

    fn send(&mut self, frame: &[u8]) {
        let (desc, avail, _) = rings(TX);
        let i = u64::from(self.tx_idx) % QSIZE;
        let addr = TX_BUF + 0x800 * i;
        let mut all = vec![0u8; 12];
        all.extend_from_slice(frame);
        self.mem.write(addr, &all).unwrap();
        self.desc(desc, i, addr, all.len() as u32, 0);
        self.mem
            .write(avail + 4 + 2 * i, &(i as u16).to_le_bytes())
            .unwrap();
        self.tx_idx = self.tx_idx.wrapping_add(1);
        self.mem
            .write(avail + 2, &self.tx_idx.to_le_bytes())
            .unwrap();
        self.pci.pio_write(0x100, 2, 1);
    }

    /// Frames received within `wait`, each as the guest sees it after
    /// the 12-byte header, waiting on the tap as the device's process
    /// does.
    fn receive(&mut self, wait: Duration, stop: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let (_, _, used) = rings(RX);
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while Instant::now() < deadline {
            if let Some(fd) = self.pci.input_fd() {
                let fd = fd.try_clone_to_owned().unwrap();
                vmd::event::poll(&[(fd.as_fd(), false)], Some(Instant::now() + wait / 10));
            }
            self.pci.input();
            let mut idx = [0u8; 2];
            self.mem.read(used + 2, &mut idx).unwrap();
            while self.rx_seen != u16::from_le_bytes(idx) {
                let e = used + 4 + 8 * (u64::from(self.rx_seen) % QSIZE);
                let mut b = [0u8; 8];
                self.mem.read(e, &mut b).unwrap();
                let id = u64::from(u32::from_le_bytes(b[0..4].try_into().unwrap()));
                let len = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
                let mut f = vec![0u8; len];
                self.mem.read(RX_BUF + 0x800 * id, &mut f).unwrap();
                self.rx_seen = self.rx_seen.wrapping_add(1);
                if len > 12 {
                    let f = f[12..].to_vec();
                    let done = stop(&f);
                    out.push(f);
                    if done {
                        return out;
                    }
                }
            }
        }
        out
    }
}

fn arp_request(src_mac: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}

fn is_arp_reply_to(f: &[u8], mac: [u8; 6]) -> bool {
    f.len() >= 42 && f[..6] == mac && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
}

/// The tap rule, then frames both ways through vionet and the kernel.
fn tap_rule_and_frames_through_the_kernel() -> Result<(), Failed> {
    in_netns(|| {
        let t0 = open_tap("tap")?;
        let t1 = open_tap("tap")?;
        if (t0.name.as_str(), t1.name.as_str()) != ("tap0", "tap1") {
            return Err(format!("first free taps: {} and {}", t0.name, t1.name).into());
        }
        let busy = open_tap("tap0").map(|t| t.name);
        if busy.is_ok() {
            return Err("tap0 opened twice".into());
        }
        let t7 = open_tap("tap7")?;
        if t7.name != "tap7" || !exists("tap7") {
            return Err(format!("named tap7 is {}", t7.name).into());
        }
        if open_tap("eth0").is_ok() || open_tap("tap300").is_ok() {
            return Err("a name outside vmd's rule was taken".into());
        }
        drop(t7);
        drop(t1);
        if exists("tap1") || exists("tap7") {
            return Err("a tap outlived its descriptor".into());
        }
        ip("addr add 10.77.0.1/24 dev tap0")?;
        ip("link set tap0 up")?;
        // Unlocked: the kernel answers the guest's ARP request.
        let mut d = Driver::new(t0, false)?;
        d.send(&arp_request(GUEST_MAC, [10, 77, 0, 2], [10, 77, 0, 1]));
        let got = d.receive(Duration::from_secs(5), |f| is_arp_reply_to(f, GUEST_MAC));
        if !got.iter().any(|f| is_arp_reply_to(f, GUEST_MAC)) {
            return Err(format!("no ARP reply in {} frames: {got:x?}", got.len()).into());
        }
        let tx = d.pci.device().stats().tx_frames;
        drop(d);
        if tx != 1 {
            return Err(format!("{tx} frames sent").into());
        }
        // Locked: a spoofed source is held back (no answer comes), the
        // NIC's own is answered.
        if exists("tap0") {
            return Err("tap0 outlived its descriptor".into());
        }
        let t0 = open_tap("tap0")?;
        ip("addr add 10.77.0.1/24 dev tap0")?;
        ip("link set tap0 up")?;
        let mut d = Driver::new(t0, true)?;
        let spoof = [0x02, 0, 0, 0, 0, 0x66];
        d.send(&arp_request(spoof, [10, 77, 0, 3], [10, 77, 0, 1]));
        let got = d.receive(Duration::from_millis(700), |f| is_arp_reply_to(f, spoof));
        if got.iter().any(|f| is_arp_reply_to(f, spoof)) {
            return Err("a spoofed source reached the tap".into());
        }
        d.send(&arp_request(GUEST_MAC, [10, 77, 0, 2], [10, 77, 0, 1]));
        let got = d.receive(Duration::from_secs(5), |f| is_arp_reply_to(f, GUEST_MAC));
        if !got.iter().any(|f| is_arp_reply_to(f, GUEST_MAC)) {
            return Err("no ARP reply to the locked NIC's own address".into());
        }
        let s = d.pci.device().stats();
        if (s.tx_frames, s.locked) != (1, 1) {
            return Err(format!("locked NIC: {s:?}").into());
        }
        Ok(())
    })
}

struct Vmd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Drop for Vmd {
    fn drop(&mut self) {
        support::daemon::end(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Vmd {
    fn request(&self, msg: &Message) -> Result<Vec<Message>, Failed> {
        let s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = ImsgChannel::new(s);
        c.send(msg)?;
        let mut out = Vec::new();
        loop {
            let m = c.recv()?.msg;
            let more = matches!(m, Message::GetInfoVmData(_));
            out.push(m);
            if !more {
                return Ok(out);
            }
        }
    }

    fn info(&self, name: &str) -> Result<Option<VmopInfoResult>, Failed> {
        Ok(self
            .request(&Message::GetInfoVmRequest(None))?
            .into_iter()
            .find_map(|m| match m {
                Message::GetInfoVmData(i) if i.name == name => Some(i),
                _ => None,
            }))
    }
}

/// The children of `pid` started as `vmd -X 0 -t n` (vionet device
/// processes).
fn vionet_children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<i32>().ok());
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if ppid == Some(pid) && args.windows(2).any(|w| w == [&b"-t"[..], &b"n"[..]]) {
            out.push(p);
        }
    }
    out
}

/// The tap names a process holds (`iff:` in a tun descriptor's fdinfo).
fn taps_held(pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for e in dir.flatten() {
        let info = std::fs::read_to_string(e.path()).unwrap_or_default();
        out.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("iff:"))
                .map(|n| n.trim().to_string()),
        );
    }
    out.sort();
    out
}

/// How many eventfds a process holds (`eventfd-count:` in fdinfo).
fn eventfds_held(pid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("eventfd-count:"))
        })
        .count()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("not within {secs} s: {what}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// vmd with three NICs from vm.conf (a local one and one from
/// `interfaces 3`, unnamed, and `tap5`, locked
/// with its own lladdr), the test guest listing the PCI bus.
fn vmd_nics_from_vm_conf(in_process: bool) -> Result<(), Failed> {
    in_netns(move || {
        let tag = if in_process { "inproc" } else { "devproc" };
        let dir = support::daemon::temp_dir("vmd-vionet", tag)?;
        let disk = dir.join("script.img");
        testguest_support::write_boot_disk(&disk, "pci\nvmmci-ignore\n", 1 << 20)?;
        let elf = testguest_support::elf_path();
        let conf = format!(
            "vm \"nics\" {{\n memory 32M\n boot \"{}\"\n disk \"{}\"\n local interface\n \
             interface tap5 {{ locked lladdr fe:e1:bb:d1:aa:bb }}\n interfaces 3\n}}\n",
            elf.display(),
            disk.display()
        );
        let cfg = dir.join("vm.conf");
        std::fs::write(&cfg, conf)?;
        let socket = dir.join("vmd.sock");
        let mut cmd = support::daemon::command(&cfg, &socket);
        if in_process {
            cmd.env("VMD_INPROCESS_DEVICES", "1");
        }
        let vmd = Vmd {
            child: cmd.spawn()?,
            dir: dir.clone(),
            socket,
        };
        wait_for("vmd's socket", 10, || {
            UnixStream::connect(&vmd.socket).is_ok()
        })?;
        let mut info = None;
        wait_for("vm nics running", 20, || {
            info = vmd
                .info("nics")
                .ok()
                .flatten()
                .filter(|i| i.creator_pid > 0);
            info.is_some()
        })?;
        let info = info.expect("waited for");
        let tty = Path::new("/dev").join(&info.ttyname);
        let text = support::daemon::read_tty(&tty, "vmmci")?;
        // The taps, named by vmd's rule, in this namespace.
        for t in ["tap0", "tap5", "tap1"] {
            if !exists(t) {
                return Err(format!("no {t}; console:\n{text}").into());
            }
        }
        let vm_pid = info.creator_pid;
        let devs = vionet_children(vm_pid);
        let mut held: Vec<String> = if in_process {
            if !devs.is_empty() {
                return Err(format!("vionet device processes {devs:?} in process mode").into());
            }
            // The device's tap and the receive thread's copy of it.
            let mut t = taps_held(vm_pid);
            t.dedup();
            t
        } else {
            if devs.len() != 3 {
                return Err(format!("{} vionet device processes, not 3", devs.len()).into());
            }
            let mut h = Vec::new();
            for p in &devs {
                let t = taps_held(*p);
                if t.len() != 1 {
                    return Err(format!("device process {p} holds taps {t:?}").into());
                }
                // Its doorbells: one per queue (receive, transmit).
                let bells = eventfds_held(*p);
                if bells != 2 {
                    return Err(format!("device process {p} holds {bells} eventfds, not 2").into());
                }
                h.extend(t);
            }
            if !taps_held(vm_pid).is_empty() {
                return Err("the VM process kept a tap its device process serves".into());
            }
            h
        };
        held.sort();
        if held != ["tap0", "tap1", "tap5"] {
            return Err(format!("taps held: {held:?}").into());
        }
        // vmd's slot order and ids: rng, the three NICs, the disk, vmmci.
        let pci: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("pci 0"))
            .map(str::trim_end)
            .collect();
        let want_ids = [
            "1af4:1044",
            "1af4:1041",
            "1af4:1041",
            "1af4:1041",
            "1af4:1042",
            "0b5d:0777",
        ];
        let ids: Vec<&str> = pci
            .iter()
            .skip(1)
            .filter_map(|l| l.split(' ').nth(2))
            .collect();
        if ids != want_ids {
            return Err(format!("pci bus {ids:?}; console:\n{text}").into());
        }
        for l in &pci[2..5] {
            if !l.contains("class 088000 subsys 0b5d:0001") {
                return Err(format!("NIC listed as {l:?}").into());
            }
        }
        // vmctl pause / unpause reach the NICs, which go on.
        let by_id = |flags| VmopId {
            id: info.id,
            name: String::new(),
            uid: 0,
            flags,
        };
        for (m, what) in [
            (Message::PauseVm(by_id(0)), "pause"),
            (Message::UnpauseVm(by_id(0)), "unpause"),
        ] {
            let r = vmd.request(&m)?;
            let ok = matches!(r.first(),
                Some(Message::PauseVmResponse(x) | Message::UnpauseVmResponse(x)) if x.result == 0);
            if !ok {
                return Err(format!("{what}: {r:?}").into());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        if !in_process && vionet_children(vm_pid).len() != 3 {
            return Err("a vionet device process died at pause/unpause".into());
        }
        if vmd.info("nics")?.is_none_or(|i| i.creator_pid != vm_pid) {
            return Err("the vm ended at pause/unpause".into());
        }
        // vmctl stop -f: the VM ends, its taps with it.
        let r = vmd.request(&Message::TerminateVmRequest(by_id(VMOP_FORCE)))?;
        if !matches!(r.first(), Some(Message::TerminateVmResponse(res)) if res.result == 0) {
            return Err(format!("stop: {r:?}").into());
        }
        wait_for("the taps to go with the vm", 20, || {
            !["tap0", "tap1", "tap5"].iter().any(|t| exists(t))
        })?;
        if !vionet_children(vm_pid).is_empty() {
            return Err("vionet device processes outlived the vm".into());
        }
        drop(vmd);
        Ok(())
    })
}

fn main() {
    let args = Arguments::from_args();
    let root = missing_netns()
        .or_else(support::missing_root)
        .or_else(missing_ip);
    let vm = root
        .clone()
        .or_else(support::missing_vmm)
        .or_else(testguest_support::missing_guest);
    let tests = vec![
        (
            Trial::test(
                "vionet_tap_rule_and_frames_through_the_kernel",
                tap_rule_and_frames_through_the_kernel,
            ),
            root,
        ),
        (
            Trial::test("vionet_vmd_nics_in_device_processes", || {
                vmd_nics_from_vm_conf(false)
            }),
            vm.clone(),
        ),
        (
            Trial::test("vionet_vmd_nics_in_process", || vmd_nics_from_vm_conf(true)),
            vm,
        ),
    ];
    let tests = tests
        .into_iter()
        .map(|(t, why)| support::skip_if(t, why))
        .collect();
    libtest_mimic::run(&args, tests).exit();
}
