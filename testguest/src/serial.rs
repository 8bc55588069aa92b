//! COM1: every result is a line here.
use crate::arch::{inb, outb};
use core::fmt;

const COM1: u16 = 0x3f8;

pub struct Com1;

impl Com1 {
    pub fn init() {
        // 115200 8N1, FIFO on; harmless where the UART ignores it.
        outb(COM1 + 1, 0);
        outb(COM1 + 3, 0x80);
        outb(COM1, 1);
        outb(COM1 + 1, 0);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0xc7);
        outb(COM1 + 4, 0x03);
    }

    pub fn putc(b: u8) {
        let mut n = 0u32;
        // Transmit holding register empty; give up after a while rather
        // than hang on a UART that never drains.
        while inb(COM1 + 5) & 0x20 == 0 && n < 1_000_000 {
            n += 1;
        }
        outb(COM1, b);
    }
}

impl Com1 {
    /// A byte the host sent, if one is waiting (line status: data ready).
    pub fn try_getc() -> Option<u8> {
        (inb(COM1 + 5) & 1 != 0).then(|| inb(COM1))
    }
}

impl fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            Com1::putc(b);
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::serial::Com1, $($arg)*);
    }};
}
