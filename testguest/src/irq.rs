//! Interrupt delivery: the 8259 PICs remapped to vectors 0x20-0x2f, the
//! PIT on line 0 as a watchdog, a device's INTx line unmasked; the driver
//! waits with HLT (boot.rs turns it into STI; HLT; CLI at CPL0).
use crate::arch::{inb, irq_count, outb, wait_for_interrupt};
use crate::dma;
use crate::rng::Rng;
use crate::virtio::D_WRITE;

fn pic_init() {
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, 0x20);
    outb(0xa1, 0x28);
    outb(0x21, 4);
    outb(0xa1, 2);
    outb(0x21, 1);
    outb(0xa1, 1);
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

/// Unmasks `line` (and the cascade for the slave's lines).
pub fn unmask(line: u8) {
    if line < 8 {
        outb(0x21, inb(0x21) & !(1 << line));
    } else {
        outb(0xa1, inb(0xa1) & !(1 << (line - 8)));
        outb(0x21, inb(0x21) & !(1 << 2));
    }
}

fn mask_all() {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}

/// PIT channel 0 at 100 Hz (mode 2).
fn pit_100hz() {
    outb(0x43, 0x34);
    outb(0x40, (11932u16 & 0xff) as u8);
    outb(0x40, (11932u16 >> 8) as u8);
}

/// `irq-timer`: ten ticks of the PIT at 100 Hz arrive through the PIC;
/// how long they took is a note (it depends on the host).
pub fn cmd_irq_timer() {
    pic_init();
    pit_100hz();
    unmask(0);
    let start = irq_count(0);
    let t0 = crate::arch::rdtsc();
    let deadline = crate::timer::deadline_ms(3000);
    while irq_count(0) - start < 10 && !crate::timer::passed(deadline) {
        let c = irq_count(0);
        wait_for_interrupt();
        if irq_count(0) != c {
            unmask(0);
        }
    }
    let ticks = irq_count(0) - start;
    let ns = crate::timer::ns(t0, crate::arch::rdtsc());
    mask_all();
    if ticks < 10 {
        return println!("irq-timer: error: {ticks} ticks in 3 s");
    }
    println!("note: irq-timer 10 ticks in {} ms", ns / 1_000_000);
    println!("irq-timer: ok");
}

/// `irq-rng`: an entropy request completed through the device's INTx
/// line: the interrupt arrives, the ISR shows a queue interrupt, the used
/// ring has the buffer.
pub fn cmd_irq_rng() {
    let mut rng = match Rng::open() {
        Ok(r) => r,
        Err(e) => return println!("irq-rng: error: {e}"),
    };
    let line = rng.t.pci.irq_line;
    if line == 0 || line > 15 || line == 2 {
        return println!("irq-rng: error: interrupt line {line}");
    }
    pic_init();
    pit_100hz();
    unmask(0);
    unmask(line);
    let before = irq_count(line);
    let buf = dma::alloc(64, 64);
    rng.q.set_desc(0, buf, 64, D_WRITE, 0);
    rng.q.push(0);
    rng.q.notify();
    let mut ticks = 0;
    while irq_count(line) == before && ticks < 300 {
        let t0 = irq_count(0);
        wait_for_interrupt();
        if irq_count(0) != t0 {
            ticks += 1;
            unmask(0);
        }
    }
    let got = irq_count(line) != before;
    let isr = rng.t.isr();
    let used = rng.q.pop_used();
    mask_all();
    if !got {
        return println!("irq-rng: error: no interrupt within 3 s ({ticks} timer ticks)");
    }
    println!("note: irq-rng line {line}");
    match (isr & 1, used) {
        (1, Some(_)) => println!("irq-rng: ok"),
        (_, u) => println!(
            "irq-rng: error: isr 0x{isr:x}, used {}",
            if u.is_some() { "yes" } else { "no" }
        ),
    }
}
