//! "No panic" properties of the device models: the guest reaches them
//! with any sequence of port reads and writes of 1, 2 or 4 bytes, and
//! time passes between its accesses by any amount, so each model must
//! take all of it without panicking (bad input is ignored or refused as
//! the hardware or vmd would).
//!
//! A [`Platform`] wires the models as the VM process does (same ports,
//! the PIC behind every line, PCI with devices, BARs and capabilities,
//! fw_cfg over anonymous guest memory) with a clock the test moves; each
//! property sends random operations to one model's ports and its
//! neighbours, interleaved with timer runs at random times, line changes
//! and console input; fw_cfg also gets DMA descriptors pointing anywhere.
//! The platform is shared with the exit-dispatch property in
//! `vm::property_tests`.
use crate::devices::bus::{MmioBus, MmioDevice, PioBus, PioDevice};
use crate::devices::fw_cfg::{self, BootDevice};
use crate::devices::i8042::I8042;
use crate::devices::i8259::I8259;
use crate::devices::irq::{IrqLines, Timer};
use crate::devices::ns8250::{self, Ns8250};
use crate::devices::pci::{self, PciDeviceConfig};
use crate::property::{cases, Rng};
use crate::vm::memmap::{self, PCI_MMIO_BAR_BASE};
use crate::vm::platform::PlatformConfig;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use vmm_sys::GuestMemory;

/// Guest RAM of the platform: 256 KiB at 0 (the x86 properties' RAM) and
/// 64 KiB at 1 MiB, so that DMA can also straddle a gap.
pub(crate) const RAM: [(u64, usize); 2] = [(0, 0x4_0000), (0x10_0000, 0x1_0000)];
/// Where the platform puts a bare [`I8042`] (its own offsets 0-7), beside
/// the two port adapters the VM uses.
const RAW_KBC: u16 = 0x300;

/// A BAR's device: reads answer from the offset and the last write.
struct Bar(u64);

impl PioDevice for Bar {
    fn pio_read(&mut self, offset: u16, _size: u8) -> u32 {
        (self.0 as u32) ^ u32::from(offset)
    }
    fn pio_write(&mut self, _offset: u16, _size: u8, value: u32) {
        self.0 = u64::from(value);
    }
}

impl MmioDevice for Bar {
    fn mmio_read(&mut self, offset: u64, _size: u8) -> u64 {
        self.0 ^ offset
    }
    fn mmio_write(&mut self, _offset: u64, _size: u8, value: u64) {
        self.0 = value;
    }
}

/// The VM process's platform (`vm::platform`, the wiring the guest gets)
/// with random PCI devices and fw_cfg files, a clock and a wall clock the
/// test moves, and a bare [`I8042`] beside it.
pub(crate) struct Platform {
    pub(crate) pio: PioBus,
    pub(crate) mmio: MmioBus,
    pub(crate) mem: GuestMemory,
    pic: Arc<I8259>,
    com: Arc<Mutex<Ns8250<std::io::Sink>>>,
    timers: Vec<Arc<Mutex<dyn Timer>>>,
    now: Arc<Mutex<Instant>>,
    wall: Arc<AtomicI64>,
}

impl Platform {
    /// The platform with a random set of PCI devices and fw_cfg files.
    pub(crate) fn new(rng: &mut Rng) -> Platform {
        let t0 = Instant::now();
        let now = Arc::new(Mutex::new(t0));
        let wall = Arc::new(AtomicI64::new(1_700_000_000));
        let mem = GuestMemory::anonymous(&RAM).unwrap();
        let ranges = memmap::create_memory_map(rng.pick(&[2, 64, 4096]) << 20).unwrap();
        let clock = {
            let now = now.clone();
            Arc::new(move || *now.lock().unwrap())
        };
        let w = wall.clone();
        let cfg = PlatformConfig {
            mem: mem.clone(),
            ranges,
            console: std::io::sink(),
            clock,
            wall_clock: Box::new(move || w.load(Ordering::SeqCst)),
            boot_device: rng.pick(&[
                BootDevice::Auto,
                BootDevice::Disk,
                BootDevice::Cdrom,
                BootDevice::Net,
            ]),
        };
        let p = crate::vm::platform::Platform::build(cfg, |slots| {
            // The platform's own viornd and vmmci take one of the 15 I/O
            // BARs each; leave vmmci its own.
            let mut io_bars = 0;
            for _ in 0..rng.below(5) {
                let any_id = rng.next() as u16;
                let cfg = PciDeviceConfig {
                    vendor: rng.next() as u16,
                    device: rng.next() as u16,
                    class: rng.next() as u8,
                    subclass: rng.next() as u8,
                    subsys_vendor: rng.next() as u16,
                    subsys_id: rng.pick(&[1, 2, 8, any_id]),
                    revision: rng.next() as u8,
                    irq_needed: rng.one_in(2),
                };
                let Ok(dev) = slots.add_device(&cfg) else {
                    continue;
                };
                for _ in 0..rng.below(7) {
                    let h = Arc::new(Mutex::new(Bar(rng.next())));
                    let _ = if rng.one_in(2) && io_bars < 13 {
                        io_bars += 1;
                        slots.bus.add_io_bar(dev.slot, h).map(|_| ())
                    } else {
                        slots.bus.add_mmio_bar(dev.slot, h).map(|_| ())
                    };
                }
                for _ in 0..rng.below(4) {
                    let len = rng.below(30) as usize;
                    let mut cap = vec![0u8; len];
                    rng.fill(&mut cap);
                    let _ = slots.bus.add_capability(dev.slot, &cap);
                }
            }
            Ok(())
        })
        .unwrap();
        {
            // As the VM's notification does: ask whether something is
            // pending, from inside the PIC's callback.
            let weak: Weak<I8259> = Arc::downgrade(&p.pic);
            p.pic.set_notify(move |_| {
                if let Some(pic) = weak.upgrade() {
                    let _ = pic.is_pending();
                }
            });
        }
        {
            let mut rtc = p.rtc.lock().unwrap();
            rtc.set_memlo(rng.below(1 << 32));
            rtc.set_memhi(rng.next());
            rtc.set_cpu_count(rng.next() as u8);
        }
        {
            let mut fwcfg = p.fw_cfg.lock().unwrap();
            for _ in 0..rng.below(4) {
                let name: String = (0..rng.below(60))
                    .map(|_| char::from(b'a' + rng.below(26) as u8))
                    .collect();
                let mut data = vec![0u8; rng.below(300) as usize];
                rng.fill(&mut data);
                let _ = fwcfg.add_file(&name, &data);
            }
        }
        let timers = p.timers();
        let mut pio = p.pio;
        pio.register(
            RAW_KBC,
            8,
            Arc::new(Mutex::new(I8042::new(p.lines.clone(), p.reset.clone()))),
        )
        .unwrap();
        Platform {
            pio,
            mmio: p.mmio,
            mem,
            pic: p.pic,
            com: p.com,
            timers,
            now,
            wall,
        }
    }

    /// Moves the clocks `ns` on (the wall clock by whole seconds, with the
    /// odd jump), then runs the timers whose deadline has come, as the
    /// event thread does, or all of them whatever their deadline.
    fn advance(&self, ns: u64, jump: i64, all: bool) {
        let now = {
            let mut t = self.now.lock().unwrap();
            *t += Duration::from_nanos(ns);
            *t
        };
        self.wall
            .fetch_add((ns / 1_000_000_000) as i64 + jump, Ordering::SeqCst);
        for t in &self.timers {
            let mut t = t.lock().unwrap();
            if all || t.next_deadline().is_some_and(|d| d <= now) {
                t.on_timer(now);
            }
        }
    }

    pub(crate) fn apply(&self, op: &Op) {
        match *op {
            Op::In { port, size } => {
                let _ = self.pio.read(port, size);
            }
            Op::Out { port, size, value } => self.pio.write(port, size, value),
            Op::MmioRead { gpa, size } => {
                let _ = self.mmio.read(gpa, size);
            }
            Op::MmioWrite { gpa, size, value } => {
                let _ = self.mmio.write(gpa, size, value);
            }
            Op::Dma {
                at,
                control,
                length,
                address,
            } => {
                let mut d = [0u8; 16];
                d[..4].copy_from_slice(&control.to_be_bytes());
                d[4..8].copy_from_slice(&length.to_be_bytes());
                d[8..].copy_from_slice(&address.to_be_bytes());
                let _ = self.mem.write(at, &d);
                let high = ((at >> 32) as u32).to_be();
                let low = (at as u32).to_be();
                self.pio.write(fw_cfg::FW_CFG_IO_DMA_ADDR_HIGH, 4, high);
                self.pio.write(fw_cfg::FW_CFG_IO_DMA_ADDR_LOW, 4, low);
            }
            Op::Time { ns, jump, all } => self.advance(ns, jump, all),
            Op::Line { irq, high } => {
                if high {
                    self.pic.assert_irq(irq)
                } else {
                    self.pic.deassert_irq(irq)
                }
            }
            Op::Ack => {
                let _ = (self.pic.is_pending(), self.pic.ack());
            }
            Op::Rx { command, byte } => {
                let mut com = self.com.lock().unwrap();
                match command {
                    Some(c) => {
                        let _ = com.receive_ucntl(c, byte);
                    }
                    None => {
                        let _ = (com.can_receive(), com.receive(&[byte]));
                    }
                }
            }
        }
    }
}

/// One thing the guest (or time, or another device) does to the platform.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    In {
        port: u16,
        size: u8,
    },
    Out {
        port: u16,
        size: u8,
        value: u32,
    },
    MmioRead {
        gpa: u64,
        size: u8,
    },
    MmioWrite {
        gpa: u64,
        size: u8,
        value: u64,
    },
    /// A fw_cfg DMA descriptor written at `at` (where that is memory) and
    /// its address given through 0x514 and 0x518.
    Dma {
        at: u64,
        control: u32,
        length: u32,
        address: u64,
    },
    /// Time passes; `jump` moves the wall clock further; `all` runs every
    /// timer, due or not.
    Time {
        ns: u64,
        jump: i64,
        all: bool,
    },
    /// Another device raises or lowers an ISA line (any number).
    Line {
        irq: u8,
        high: bool,
    },
    /// The vCPU loop takes an interrupt.
    Ack,
    /// Console input, plain or as an OpenBSD pty control packet.
    Rx {
        command: Option<u8>,
        byte: u8,
    },
}

/// A port of a model registered at `base` for `len` ports: mostly inside,
/// sometimes just outside.
fn port(rng: &mut Rng, base: u16, len: u16) -> u16 {
    match rng.below(16) {
        0 => base.wrapping_sub(1),
        1 => base.wrapping_add(len),
        _ => base.wrapping_add(rng.below(u64::from(len)) as u16),
    }
}

fn value(rng: &mut Rng, interesting: &[u32]) -> u32 {
    match rng.below(6) {
        0 => rng.edgy_u64() as u32,
        1 => rng.next() as u32,
        2 | 3 if !interesting.is_empty() => rng.pick(interesting),
        _ => rng.next() as u8 as u32,
    }
}

/// Time passing: mostly less than a tick or two of any timer, sometimes
/// seconds or hours, with the wall clock stepping back or ahead.
fn time(rng: &mut Rng) -> Op {
    let ns = match rng.below(8) {
        0 => 0,
        1..=3 => rng.below(100_000),
        4 | 5 => rng.below(20_000_000),
        6 => rng.below(3_000_000_000),
        _ => rng.below(10_000_000_000_000),
    };
    let jump = if rng.one_in(16) {
        rng.below(1_000_000) as i64 - 500_000
    } else {
        0
    };
    Op::Time {
        ns,
        jump,
        all: rng.one_in(4),
    }
}

/// An access to one of `ranges` (base, len), with `interesting` values
/// among the random ones, or time passing.
fn access(rng: &mut Rng, ranges: &[(u16, u16)], interesting: &[u32]) -> Op {
    if rng.one_in(6) {
        return time(rng);
    }
    let (base, len) = rng.pick(ranges);
    let port = port(rng, base, len);
    let size = rng.pick(&[1, 1, 1, 2, 4]);
    if rng.one_in(2) {
        Op::In { port, size }
    } else {
        Op::Out {
            port,
            size,
            value: value(rng, interesting),
        }
    }
}

/// A device property: `iters` platforms, each given `ops` operations
/// from `op`.
fn drive(name: &str, seed: u64, iters: u64, ops: u64, mut op: impl FnMut(&mut Rng) -> Op) {
    cases(
        name,
        seed,
        iters,
        |rng| {
            let platform_seed = rng.next();
            let ops: Vec<Op> = (0..ops).map(|_| op(rng)).collect();
            (platform_seed, ops)
        },
        |(seed, ops)| format!("platform seed {seed:#x}, operations {ops:?}"),
        |(seed, ops)| {
            let p = Platform::new(&mut Rng::new(seed));
            for op in &ops {
                p.apply(op);
            }
        },
    );
}

/// ICW1, ICW2, ICW3, ICW4 as a BIOS sends them, or close.
const PIC_VALUES: &[u32] = &[
    0x11, 0x10, 0x13, 0x19, 0x20, 0x28, 0x70, 0x04, 0x02, 0x01, 0x03, 0x0f, 0x20, 0x60, 0x62, 0x67,
    0xa0, 0xc0, 0xc7, 0xe0, 0xe2, 0x80, 0x00, 0x0a, 0x0b, 0x0c, 0x48, 0x68, 0xff, 0xfb,
];

#[test]
fn i8259_ports_never_panic() {
    drive("i8259", 0xde71_ce01, 3_000, 150, |rng| {
        match rng.below(10) {
            0 => Op::Line {
                irq: rng.pick(&[0, 1, 2, 3, 4, 7, 8, 12, 14, 15, 16, 255]),
                high: rng.one_in(2),
            },
            1 => Op::Ack,
            _ => access(rng, &[(0x20, 2), (0xA0, 2), (0x4D0, 2)], PIC_VALUES),
        }
    });
}

/// Control words for each channel and mode, read-backs, latches.
const PIT_VALUES: &[u32] = &[
    0x34, 0x36, 0x30, 0x32, 0x38, 0x3a, 0x3c, 0x3e, 0x10, 0x20, 0x00, 0x74, 0xb6, 0xb0, 0xb4, 0x94,
    0x81, 0xc2, 0xe2, 0xd2, 0xfe, 0x01, 0x03, 0x00, 0x02, 0x99, 0x9c, 0xff,
];

#[test]
fn i8253_ports_and_timer_never_panic() {
    drive("i8253", 0xde71_ce02, 3_000, 150, |rng| {
        access(rng, &[(0x40, 4), (0x61, 1)], PIT_VALUES)
    });
}

/// Register indexes (with and without NMI mask), rates, register B modes.
const RTC_VALUES: &[u32] = &[
    0x00, 0x01, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x32, 0x34, 0x40, 0x5f, 0x60, 0x7f, 0x8a, 0x8b, 0x8c,
    0xff, 0x26, 0x2f, 0x21, 0x40, 0x42, 0x70, 0x80, 0x12, 0x10,
];

#[test]
fn mc146818_ports_and_timer_never_panic() {
    drive("mc146818", 0xde71_ce03, 3_000, 150, |rng| {
        access(rng, &[(0x70, 2)], RTC_VALUES)
    });
}

/// DLAB on and off, divisors, interrupt enables, FIFO control.
const UART_VALUES: &[u32] = &[
    0x80, 0x03, 0x83, 0x01, 0x00, 0x02, 0x0c, 0x0f, 0xc7, 0x07, 0x0b, 0xff, 0x60, 0x30,
];

#[test]
fn ns8250_ports_timer_and_input_never_panic() {
    drive("ns8250", 0xde71_ce04, 3_000, 150, |rng| {
        match rng.below(8) {
            0 => {
                let any = rng.next() as u8;
                let commands = [0, ns8250::TIOCUCNTL_SBRK, ns8250::TIOCUCNTL_CBRK, any];
                Op::Rx {
                    command: rng.one_in(3).then(|| rng.pick(&commands)),
                    byte: rng.next() as u8,
                }
            }
            _ => access(
                rng,
                &[(ns8250::COM1_BASE, ns8250::NS8250_PORTS)],
                UART_VALUES,
            ),
        }
    });
}

#[test]
fn i8042_ports_never_panic() {
    let commands = [
        0x20, 0x21, 0x3f, 0x60, 0x61, 0x7f, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xad, 0xae, 0xd0, 0xd1,
        0xd2, 0xd3, 0xd4, 0xdd, 0xdf, 0xf0, 0xfe, 0xff, 0xed, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xee,
    ];
    drive("i8042", 0xde71_ce05, 3_000, 150, |rng| {
        access(rng, &[(0x60, 1), (0x64, 1), (RAW_KBC, 8)], &commands)
    });
}

/// A configuration address: enabled, mostly bus 0 function 0, one of the
/// first slots, any register.
fn pci_address(rng: &mut Rng) -> u32 {
    let mut a = 0x8000_0000 | (rng.below(8) as u32) << 11 | (rng.below(256) as u32 & 0xfc);
    if rng.one_in(8) {
        a |= (rng.below(256) as u32) << 16 | (rng.below(8) as u32) << 8;
    }
    if rng.one_in(8) {
        a = rng.next() as u32;
    }
    a
}

#[test]
fn pci_config_and_bar_windows_never_panic() {
    drive("pci", 0xde71_ce06, 3_000, 150, |rng| match rng.below(12) {
        0..=2 => Op::Out {
            port: pci::PCI_MODE1_ADDRESS_REG,
            size: rng.pick(&[4, 4, 4, 2, 1]),
            value: pci_address(rng),
        },
        3..=5 => {
            let port = pci::PCI_MODE1_DATA_REG + rng.below(4) as u16;
            let size = rng.pick(&[1, 2, 4, 4]);
            if rng.one_in(2) {
                Op::In { port, size }
            } else {
                // BAR sizing, a BAR moved somewhere, or anything.
                let bar = rng.pick(&[0x1000, 0x2000, 0xf000, 0xfff0]) as u32;
                let mmio = (PCI_MMIO_BAR_BASE + (rng.below(16) << 16)) as u32;
                let any = rng.next() as u32;
                Op::Out {
                    port,
                    size,
                    value: rng.pick(&[u32::MAX, bar | 1, mmio, any]),
                }
            }
        }
        6 | 7 => {
            let any = rng.next() as u16 & 0x7fff;
            let port = pci::VM_PCI_IO_BAR_BASE
                + rng.pick(&[0, 0x1000, 0x2000, 0x3000, any])
                + rng.below(0x20) as u16;
            let size = rng.pick(&[1, 2, 4]);
            if rng.one_in(2) {
                Op::In { port, size }
            } else {
                Op::Out {
                    port,
                    size,
                    value: rng.next() as u32,
                }
            }
        }
        8..=10 => {
            let gpa = PCI_MMIO_BAR_BASE
                + match rng.below(3) {
                    0 => rng.below(memmap::PCI_MMIO_BAR_END - PCI_MMIO_BAR_BASE + 1),
                    _ => (rng.below(8) << 16) + rng.below(0x40),
                };
            let size = rng.pick(&[1, 2, 4, 8]);
            if rng.one_in(2) {
                Op::MmioRead { gpa, size }
            } else {
                Op::MmioWrite {
                    gpa,
                    size,
                    value: rng.next(),
                }
            }
        }
        _ => access(
            rng,
            &[
                (pci::PCI_MODE1_ADDRESS_REG, 8),
                (pci::VM_PCI_IO_BAR_BASE, pci::VM_PCI_IO_BAR_PORTS),
            ],
            &[],
        ),
    });
}

/// A guest-physical address: in RAM, at the edge of a region, or anywhere.
fn gpa(rng: &mut Rng) -> u64 {
    let (base, len) = rng.pick(&RAM);
    match rng.below(4) {
        0 => rng.edgy_u64(),
        1 => (base + len as u64).wrapping_sub(rng.below(32)),
        _ => base + rng.below(len as u64),
    }
}

#[test]
fn fw_cfg_ports_and_dma_never_panic() {
    let selectors = [
        0x00, 0x01, 0x04, 0x19, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0xffff,
    ];
    drive("fw_cfg", 0xde71_ce07, 3_000, 100, |rng| {
        match rng.below(6) {
            0 | 1 => {
                let select = rng.pick(&selectors) << 16;
                let ops = [
                    fw_cfg::FW_CFG_DMA_READ,
                    fw_cfg::FW_CFG_DMA_SKIP,
                    fw_cfg::FW_CFG_DMA_WRITE,
                    fw_cfg::FW_CFG_DMA_ERROR,
                    0,
                ];
                let mut control = rng.pick(&ops) | rng.pick(&ops);
                if rng.one_in(2) {
                    control |= fw_cfg::FW_CFG_DMA_SELECT | select;
                }
                if rng.one_in(8) {
                    control = rng.next() as u32;
                }
                Op::Dma {
                    at: gpa(rng),
                    control,
                    length: match rng.below(4) {
                        0 => rng.edgy_u64() as u32,
                        _ => rng.below(0x2000) as u32,
                    },
                    address: gpa(rng),
                }
            }
            _ => access(
                rng,
                &[(fw_cfg::FW_CFG_IO_SELECT, fw_cfg::FW_CFG_PORTS)],
                &selectors,
            ),
        }
    });
}
