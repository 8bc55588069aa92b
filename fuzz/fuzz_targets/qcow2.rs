//! qcow2: the header (version, cluster bits, feature bits, extensions,
//! the backing file name), the L1/L2 tables and refcounts behind the
//! cluster map, compressed clusters, copy-on-write from a backing image,
//! allocation on write.  The image is the input after a short script of
//! reads, writes and flushes:
//!
//! `flags` (bit 0 writable, bit 1 a backing image below), `n`, then `n`
//! operations of 12 bytes (kind, offset, length, fill), then the image.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use vmd_disk::{DiskError, DiskImage, Qcow2};
use vmd_fuzz::Input;

const PATH: &str = "fuzz.qcow2";
/// The most one operation moves: vioblk's requests go in 1 MiB pieces.
const MAX_IO: u64 = 256 << 10;

/// The image below: 4 MiB whose every sector holds its own number's low
/// byte, computed rather than stored.
struct Backing;

const BACKING_SIZE: u64 = 4 << 20;

impl DiskImage for Backing {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= BACKING_SIZE => {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = ((offset + i as u64) >> 9) as u8;
                }
                Ok(())
            }
            _ => Err(DiskError::OutOfRange {
                path: "backing".into(),
                offset,
                len: buf.len() as u64,
                size: BACKING_SIZE,
            }),
        }
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly {
            path: "backing".into(),
        })
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
    fn size(&self) -> u64 {
        BACKING_SIZE
    }
    fn read_only(&self) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let flags = inp.u8();
    let n = inp.u8() % 16;
    let ops: Vec<(u8, u64, u64, u8)> = (0..n)
        .map(|_| (inp.u8(), inp.u64(), u64::from(inp.u16()), inp.u8()))
        .collect();
    let image = inp.rest();
    let mut file = vmd_fuzz::scratch_file();
    if file.write_all(image).is_err() {
        return;
    }
    // The header alone, as the parent reads it to open the chain.
    let _ = vmd_disk::probe(&file, PATH);
    let _ = vmd_disk::qcow2::backing_file(&file, PATH);
    let backing: Option<Box<dyn DiskImage>> =
        (flags & 2 != 0).then(|| Box::new(Backing) as Box<dyn DiskImage>);
    let mut q = match Qcow2::open(file, PATH, backing, flags & 1 != 0) {
        Ok(q) => q,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    q.set_metadata_sync(false);
    let size = q.size();
    for (kind, offset, len, fill) in ops {
        // Mostly inside the disk, sometimes anywhere.
        let offset = if kind & 0x80 == 0 && size > 0 {
            offset % size
        } else {
            offset
        };
        let len = (len * 8) % MAX_IO;
        let mut buf = vec![fill; len as usize];
        let r = match kind % 4 {
            0 | 1 => q.read_at(&mut buf, offset),
            2 => q.write_at(&buf, offset),
            _ => q.flush(),
        };
        if let Err(e) = r {
            let _ = e.to_string();
        }
    }
});
