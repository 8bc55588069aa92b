//! vmmci, OpenBSD's VM control device (0b5d:0777), in its legacy virtio
//! 0.9 I/O layout: host features 0x00, guest features 0x04, status 0x12,
//! ISR 0x13, then its configuration: command 0x14, time 0x18/0x20.  vmd
//! sets a command (shutdown, reboot, RTC sync) and raises a configuration
//! change; a driver that negotiated ACK writes the command back.
use crate::pci::{self, Bar};
use crate::timer;
use crate::virtio::Region;

const VENDOR: u16 = 0x0b5d;
const DEVICE: u16 = 0x0777;
const F_TIMESYNC: u32 = 1;
const F_ACK: u32 = 2;
const F_SYNCRTC: u32 = 4;
const CMD_SHUTDOWN: u32 = 1;
const CMD_REBOOT: u32 = 2;
const CMD_SYNCRTC: u32 = 3;

/// `vmmci-ack` (ack = true) or `vmmci-ignore`: waits for commands for
/// ever; with ack, answers shutdown and reboot and then halts, or with
/// `reset` resets the machine on reboot (KBC pulse, then port 0xcf9) as a
/// rebooting guest would.
pub fn cmd_vmmci(ack: bool, reset: bool) {
    let name = if ack { "vmmci-ack" } else { "vmmci-ignore" };
    let Some(f) = pci::find(VENDOR, DEVICE, 0) else {
        return println!("{name}: error: no vmmci device");
    };
    pci::enable(f.bdf);
    let Some(Bar::Io(port)) = pci::bar(f.bdf, 0) else {
        return println!("{name}: error: BAR 0 is not an I/O BAR");
    };
    let r = Region::Io(port);
    r.w8(0x12, 0);
    r.w8(0x12, 1 | 2); // ACKNOWLEDGE | DRIVER
    let offered = r.r32(0x00);
    let wanted = if ack {
        F_ACK | F_TIMESYNC | F_SYNCRTC
    } else {
        0
    };
    r.w32(0x04, offered & wanted);
    r.w8(0x12, 1 | 2 | 4); // DRIVER_OK
    println!(
        "{name}: ready, ack {}",
        (offered & wanted & F_ACK != 0) as u8
    );
    loop {
        // Poll the ISR every millisecond: each read is an exit.
        if r.r8(0x13) & 2 != 0 {
            let cmd = r.r32(0x14);
            let what = match cmd {
                0 => continue,
                CMD_SHUTDOWN => "shutdown",
                CMD_REBOOT => "reboot",
                CMD_SYNCRTC => "syncrtc",
                _ => "unknown",
            };
            if !ack {
                println!("{name}: {what} (ignored)");
                continue;
            }
            r.w32(0x14, cmd);
            println!("{name}: {what} (acked)");
            if cmd == CMD_REBOOT && reset {
                println!("{name}: resetting");
                crate::arch::outb(0x64, 0xfe);
                crate::arch::outb(0xcf9, 0x06);
                timer::delay_ms(100);
                println!("{name}: error: still running after a reset request");
            }
            if cmd == CMD_SHUTDOWN || cmd == CMD_REBOOT {
                println!("{name}: halting");
                crate::arch::halt();
            }
        }
        timer::delay_ms(1);
    }
}
