//! The OS-free core of vioblk, the virtio block device (in vmd it runs in
//! its own process; this core is the part that parses and serves
//! requests, whatever carries the register accesses to it).
//!
//! As vmd offers it: VERSION_1, SEG_MAX (126) and FLUSH, one queue of
//! 128 entries, a 24-byte device configuration (capacity in 512-byte
//! sectors, size_max 0, seg_max, geometry 0, blk_size 512).  A request is
//! a chain: a 16-byte device-readable header (type, reserved, sector),
//! data buffers, and a device-writable status byte at the very end of
//! the chain.  Requests the device can parse but not serve (a sector
//! range past the end, data not in whole sectors, a buffer of the wrong
//! direction, a write to a read-only disk, a failing image) complete with
//! IOERR, unknown types with UNSUPP; a chain that cannot carry a request
//! at all (no header, no writable status byte) is a hostile driver and
//! puts the device in NEEDS_RESET.
//!
//! Images sit behind vmd-disk's [`DiskImage`].
use super::queue::{Desc, DescChain, QueueError, VirtQueue};
use super::transport::VirtioDevice;
use super::VIRTIO_F_VERSION_1;
use crate::vm::guest_memory::{with_guest_bytes, with_guest_bytes_mut};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

pub const VIOBLK_QUEUE_SIZE: u16 = 128;
/// vioblk has one request queue.
pub const VIOBLK_QUEUES: usize = 1;
/// Segments per request: the queue less the header and status.
pub const VIOBLK_SEG_MAX: u32 = VIOBLK_QUEUE_SIZE as u32 - 2;
pub const VIRTIO_BLK_SECTOR_SIZE: u64 = 512;
/// Bytes of the GET_ID answer.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
/// Length of the device configuration vmd exposes.
pub const VIOBLK_CONFIG_LEN: u32 = 24;
/// The most one request may move; a bigger chain counts as hostile.
pub const VIOBLK_MAX_REQUEST: u64 = 64 << 20;
/// Image I/O goes in pieces of at most this, whatever the buffer size.
const IO_CHUNK: usize = 1 << 20;

const HEADER_LEN: u32 = 16;

/// The images vioblk serves: vmd-disk's raw and qcow2 (one trait for the
/// device and for `vmctl create`).
pub use vmd_disk::{DiskError, DiskImage};

pub struct Vioblk {
    image: Box<dyn DiskImage>,
    /// In 512-byte sectors (a partial last sector is not visible).
    capacity: u64,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    buf: Vec<u8>,
}

impl Vioblk {
    /// A vioblk over `image`; `id` is what GET_ID answers (at most 20
    /// bytes are used; a shorter id is NUL-terminated).
    pub fn new(image: Box<dyn DiskImage>, id: &str) -> Self {
        let mut ident = [0u8; VIRTIO_BLK_ID_BYTES];
        let n = id.len().min(VIRTIO_BLK_ID_BYTES);
        ident[..n].copy_from_slice(&id.as_bytes()[..n]);
        Vioblk {
            capacity: image.size() / VIRTIO_BLK_SECTOR_SIZE,
            image,
            id: ident,
            buf: Vec::new(),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn config(&self) -> [u8; VIOBLK_CONFIG_LEN as usize] {
        let mut c = [0u8; VIOBLK_CONFIG_LEN as usize];
        c[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        // size_max (8) and geometry (16) stay 0.
        c[12..16].copy_from_slice(&VIOBLK_SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(VIRTIO_BLK_SECTOR_SIZE as u32).to_le_bytes());
        c
    }

    /// Serves one checked chain; returns the bytes written to the guest
    /// (data and status), or a hostile-driver error.
    fn serve(&mut self, chain: &DescChain, mem: &GuestMemoryMmap) -> Result<u32, QueueError> {
        let bad = |what| QueueError::BadRequest {
            head: chain.head,
            what,
        };
        let descs = &chain.descs;
        let hdr_desc = descs[0];
        if hdr_desc.writable || hdr_desc.len < HEADER_LEN {
            return Err(bad("no readable 16-byte request header"));
        }
        let last = *descs.last().expect("a checked chain has a descriptor");
        if descs.len() < 2 || !last.writable || last.len == 0 {
            return Err(bad("no writable status byte at the end"));
        }
        let mut hdr = [0u8; HEADER_LEN as usize];
        mem.read_slice(&mut hdr, GuestAddress(hdr_desc.addr))
            .map_err(|e| QueueError::Memory(e.to_string()))?;
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
        let status_addr = last.addr + u64::from(last.len) - 1;
        // The data: the buffers between header and status, with the
        // status buffer's bytes before the status byte.
        let mut data: Vec<Desc> = descs[1..descs.len() - 1].to_vec();
        if last.len > 1 {
            data.push(Desc {
                len: last.len - 1,
                ..last
            });
        }
        let (status, written) = match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                self.rw(kind == VIRTIO_BLK_T_OUT, sector, &data, mem)?
            }
            VIRTIO_BLK_T_FLUSH => match self.image.flush() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(e) => {
                    log::warn!("vioblk: flush: {e}");
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            },
            VIRTIO_BLK_T_GET_ID => self.get_id(&data, mem)?,
            other => {
                log::debug!("vioblk: unsupported command {other}");
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        };
        mem.write_slice(&[status], GuestAddress(status_addr))
            .map_err(|e| QueueError::Memory(e.to_string()))?;
        Ok(written + 1)
    }

    fn rw(
        &mut self,
        write: bool,
        sector: u64,
        data: &[Desc],
        mem: &GuestMemoryMmap,
    ) -> Result<(u8, u32), QueueError> {
        let len: u64 = data.iter().map(|d| u64::from(d.len)).sum();
        let in_range = sector
            .checked_mul(VIRTIO_BLK_SECTOR_SIZE)
            .and_then(|start| start.checked_add(len))
            .is_some_and(|end| end <= self.capacity * VIRTIO_BLK_SECTOR_SIZE);
        let right_way = data.iter().all(|d| d.writable != write);
        if !in_range || len & (VIRTIO_BLK_SECTOR_SIZE - 1) != 0 || !right_way {
            log::debug!(
                "vioblk: bad {} of {len} bytes at sector {sector}",
                if write { "write" } else { "read" }
            );
            return Ok((VIRTIO_BLK_S_IOERR, 0));
        }
        if write && self.image.read_only() {
            return Ok((VIRTIO_BLK_S_IOERR, 0));
        }
        let mut offset = sector * VIRTIO_BLK_SECTOR_SIZE;
        let mut written: u32 = 0;
        for d in data {
            // Straight between the image and the guest's buffer where it
            // lies in one memory region (always, but for a buffer that
            // straddles two), else through `buf` below.
            let image = &mut self.image;
            let direct = if write {
                with_guest_bytes(mem, d.addr, d.len as usize, |b| image.write_at(b, offset))
            } else {
                with_guest_bytes_mut(mem, d.addr, d.len as usize, |b| image.read_at(b, offset))
            };
            if let Some(r) = direct {
                if let Err(e) = r {
                    log::warn!(
                        "vioblk: {} at {offset}: {e}",
                        if write { "write" } else { "read" }
                    );
                    return Ok((VIRTIO_BLK_S_IOERR, written));
                }
                if !write {
                    written += d.len;
                }
                offset += u64::from(d.len);
                continue;
            }
            let mut done = 0usize;
            while done < d.len as usize {
                let n = (d.len as usize - done).min(IO_CHUNK);
                self.buf.resize(n, 0);
                let gpa = GuestAddress(d.addr + done as u64);
                let r = if write {
                    mem.read_slice(&mut self.buf[..n], gpa)
                        .map_err(|e| QueueError::Memory(e.to_string()))?;
                    self.image.write_at(&self.buf[..n], offset)
                } else {
                    self.image.read_at(&mut self.buf[..n], offset)
                };
                if let Err(e) = r {
                    log::warn!(
                        "vioblk: {} at {offset}: {e}",
                        if write { "write" } else { "read" }
                    );
                    return Ok((VIRTIO_BLK_S_IOERR, written));
                }
                if !write {
                    mem.write_slice(&self.buf[..n], gpa)
                        .map_err(|e| QueueError::Memory(e.to_string()))?;
                    written += n as u32;
                }
                done += n;
                offset += n as u64;
            }
        }
        Ok((VIRTIO_BLK_S_OK, written))
    }

    fn get_id(&mut self, data: &[Desc], mem: &GuestMemoryMmap) -> Result<(u8, u32), QueueError> {
        if data.iter().any(|d| !d.writable) {
            return Ok((VIRTIO_BLK_S_IOERR, 0));
        }
        let mut left = &self.id[..];
        let mut written = 0u32;
        for d in data {
            let n = left.len().min(d.len as usize);
            mem.write_slice(&left[..n], GuestAddress(d.addr))
                .map_err(|e| QueueError::Memory(e.to_string()))?;
            left = &left[n..];
            written += n as u32;
        }
        Ok((VIRTIO_BLK_S_OK, written))
    }
}

impl VirtioDevice for Vioblk {
    fn name(&self) -> &'static str {
        "vioblk"
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![VIOBLK_QUEUE_SIZE; VIOBLK_QUEUES]
    }

    fn max_chain_bytes(&self) -> u64 {
        VIOBLK_MAX_REQUEST
    }

    fn config_len(&self) -> u32 {
        VIOBLK_CONFIG_LEN
    }

    fn read_config(&self, offset: u32) -> u8 {
        self.config().get(offset as usize).copied().unwrap_or(0xff)
    }

    fn polls(&self, _index: usize) -> bool {
        true
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut VirtQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(chain) = queue.pop(mem, self.max_chain_bytes())? {
            let len = self.serve(&chain, mem)?;
            queue.add_used(mem, chain.head, len)?;
            used = true;
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testdriver::{Ring, TestMachine, Virtio1};
    use crate::devices::virtio::transport::{attach, AttachedVirtio, VirtioPciIds};
    use crate::devices::virtio::{
        VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET, VIRTIO_CONFIG_ISR_QUEUE,
    };
    use std::sync::{Arc, Mutex};

    /// An image in memory, shared with the test.
    #[derive(Clone, Default)]
    struct MemDisk {
        data: Arc<Mutex<Vec<u8>>>,
        read_only: bool,
        fail: bool,
        flushes: Arc<Mutex<u32>>,
    }

    fn err(what: &str) -> DiskError {
        DiskError::Io {
            path: "memdisk".into(),
            op: "test",
            offset: 0,
            source: std::io::Error::other(what.to_string()),
        }
    }

    impl DiskImage for MemDisk {
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
            if self.fail {
                return Err(err("media error"));
            }
            let d = self.data.lock().unwrap();
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
            if self.fail || self.read_only {
                return Err(err("refused"));
            }
            let mut d = self.data.lock().unwrap();
            d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), DiskError> {
            if self.fail {
                return Err(err("flush failed"));
            }
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
        fn size(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
        fn read_only(&self) -> bool {
            self.read_only
        }
    }

    fn disk(sectors: usize) -> MemDisk {
        let data = (0..sectors * 512)
            .map(|i| (i / 512) as u8 ^ i as u8)
            .collect();
        MemDisk {
            data: Arc::new(Mutex::new(data)),
            ..Default::default()
        }
    }

    const HDR: u64 = 0x9000;
    const DATA: u64 = 0xa000;
    const STATUS: u64 = 0x9800;

    struct Rig {
        m: TestMachine,
        a: AttachedVirtio<Vioblk>,
        v: Virtio1,
        ring: Ring,
    }

    fn rig(image: MemDisk, id: &str) -> Rig {
        let m = TestMachine::new();
        let a = attach(
            &mut m.pci.lock().unwrap(),
            VirtioPciIds::BLOCK,
            Vioblk::new(Box::new(image), id),
            m.vm_memory(),
            m.lines(),
        )
        .unwrap();
        let v = Virtio1::probe(&m, a.slot);
        let ring = v.bring_up(
            &m,
            VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX,
            Ring::new(128, 0x1000),
        );
        Rig { m, a, v, ring }
    }

    impl Rig {
        /// Submits a request with `data` buffers; returns (status, used
        /// length).
        fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u8, u32) {
            let mut hdr = [0u8; 16];
            hdr[0..4].copy_from_slice(&kind.to_le_bytes());
            hdr[8..16].copy_from_slice(&sector.to_le_bytes());
            self.m.mem.write(HDR, &hdr).unwrap();
            self.m.mem.write(STATUS, &[0xee]).unwrap();
            let mut bufs = vec![(HDR, 16, false)];
            bufs.extend_from_slice(data);
            bufs.push((STATUS, 1, true));
            let head = self.ring.add(&self.m, &bufs);
            self.v.kick(&self.m, 0);
            let used = self.ring.take_used(&self.m);
            assert_eq!(used.len(), 1, "one completion");
            assert_eq!(used[0].0, u32::from(head));
            assert_eq!(self.v.isr(&self.m), VIRTIO_CONFIG_ISR_QUEUE);
            let mut st = [0u8];
            self.m.mem.read(STATUS, &mut st).unwrap();
            (st[0], used[0].1)
        }

        fn guest(&self, gpa: u64, len: usize) -> Vec<u8> {
            let mut b = vec![0u8; len];
            self.m.mem.read(gpa, &mut b).unwrap();
            b
        }
    }

    #[test]
    fn pci_identity_features_and_configuration() {
        let r = rig(disk(100), "");
        let m = &r.m;
        assert_eq!(m.cfg_read(r.a.slot, 0x00, 4), 0x1042_1af4);
        assert_eq!(m.cfg_read(r.a.slot, 0x08, 4), 0x0100_0001);
        assert_eq!(m.cfg_read(r.a.slot, 0x2c, 4), 0x0002_0b5d);
        // COMMON, DEVICE (24 bytes), ISR, NOTIFY.
        let mut caps = vec![];
        let mut p = m.cfg_read(r.a.slot, 0x34, 1) as u8;
        while p != 0 {
            caps.push((
                m.cfg_read(r.a.slot, p + 3, 1),
                m.cfg_read(r.a.slot, p + 12, 4),
            ));
            p = m.cfg_read(r.a.slot, p + 1, 1) as u8;
        }
        assert_eq!(caps, vec![(1, 0x38), (4, 24), (3, 1), (2, 2)]);
        assert_eq!(r.v.device_features(m), VIRTIO_F_VERSION_1 | 1 << 2 | 1 << 9);
        assert_eq!(r.v.queue_max(m, 0), 128);
        let (dev, len) = r.v.device.unwrap();
        assert_eq!(len, 24);
        let rd = |off: u16, size: u8| m.pio.read(dev + off, size);
        assert_eq!(rd(0, 4), 100, "capacity low");
        assert_eq!(rd(4, 4), 0, "capacity high");
        assert_eq!(rd(8, 4), 0, "size_max");
        assert_eq!(rd(12, 4), 126, "seg_max");
        assert_eq!(rd(16, 4), 0, "geometry");
        assert_eq!(rd(20, 4), 512, "blk_size");
        assert_eq!(rd(22, 4), 0xffff_0000, "bytes past the configuration");
        assert_eq!(rd(24, 1), 0xff);
    }

    #[test]
    fn write_then_read_back() {
        let img = disk(64);
        let mut r = rig(img.clone(), "");
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
        r.m.mem.write(DATA, &pattern).unwrap();
        // Two segments for one write of two sectors at sector 5.
        assert_eq!(
            r.request(
                VIRTIO_BLK_T_OUT,
                5,
                &[(DATA, 512, false), (DATA + 512, 512, false)]
            ),
            (VIRTIO_BLK_S_OK, 1)
        );
        assert_eq!(&img.data.lock().unwrap()[5 * 512..7 * 512], &pattern[..]);
        assert_eq!(
            img.data.lock().unwrap()[7 * 512],
            7,
            "next sector untouched"
        );
        // Read back into three buffers.
        r.m.mem.write(DATA + 0x1000, &[0u8; 1536]).unwrap();
        assert_eq!(
            r.request(
                VIRTIO_BLK_T_IN,
                4,
                &[(DATA + 0x1000, 512, true), (DATA + 0x1200, 1024, true)]
            ),
            (VIRTIO_BLK_S_OK, 1537)
        );
        let got = r.guest(DATA + 0x1000, 1536);
        assert_eq!(&got[512..], &pattern[..]);
        assert_eq!(&got[..512], &img.data.lock().unwrap()[4 * 512..5 * 512]);
        // The last sector of the disk is readable.
        assert_eq!(
            r.request(VIRTIO_BLK_T_IN, 63, &[(DATA, 512, true)]).0,
            VIRTIO_BLK_S_OK
        );
    }

    /// A device process polling the kicked queue: the used ring says
    /// NO_NOTIFY, requests made available without a kick are served by
    /// `poll`, the line is raised once for the lot, and `poll_stop` asks
    /// for kicks again and serves what came in just before.
    #[test]
    fn polling_serves_without_kicks_and_ends_with_notifications_on() {
        let img = disk(64);
        let mut r = rig(img.clone(), "");
        let flags = |r: &Rig| r.m.read_u16(r.ring.used);
        let read = |r: &mut Rig, sector: u64, buf: u64| {
            let mut hdr = [0u8; 16];
            hdr[8..16].copy_from_slice(&sector.to_le_bytes());
            let h = HDR + 0x20 * sector;
            r.m.mem.write(h, &hdr).unwrap();
            r.ring.add(
                &r.m,
                &[(h, 16, false), (buf, 512, true), (STATUS + sector, 1, true)],
            )
        };
        read(&mut r, 1, DATA);
        r.v.kick(&r.m, 0);
        let mut pci = r.a.dev.lock().unwrap();
        assert!(pci.poll_start(0), "vioblk polls");
        assert!(!pci.poll_start(1), "no queue 1");
        drop(pci);
        assert_eq!(flags(&r), 1, "NO_NOTIFY while polled");
        assert_eq!(r.ring.take_used(&r.m).len(), 1);
        let asserts = *r.m.lines.asserts.lock().unwrap();
        assert!(!r.a.dev.lock().unwrap().poll(), "nothing new");
        read(&mut r, 2, DATA + 0x200);
        read(&mut r, 3, DATA + 0x400);
        assert!(r.a.dev.lock().unwrap().poll(), "served without a kick");
        assert_eq!(r.ring.take_used(&r.m).len(), 2);
        assert_eq!(
            r.guest(DATA + 0x200, 1024),
            img.data.lock().unwrap()[1024..2048]
        );
        assert_eq!(
            *r.m.lines.asserts.lock().unwrap(),
            asserts,
            "the line was up already: not raised again"
        );
        // A request that lands as polling ends is served by poll_stop,
        // and the queue stays polled; the next stop finds nothing.
        read(&mut r, 4, DATA + 0x600);
        assert!(r.a.dev.lock().unwrap().poll_stop());
        assert_eq!(r.ring.take_used(&r.m).len(), 1);
        assert_eq!(flags(&r), 1);
        assert!(!r.a.dev.lock().unwrap().poll_stop());
        assert!(!r.a.dev.lock().unwrap().polling());
        assert_eq!(flags(&r), 0, "kicks wanted again");
        // After a reset the driver gets a ring that asks for kicks.
        r.a.dev.lock().unwrap().poll_start(0);
        assert_eq!(flags(&r), 1);
        r.v.set_status(&r.m, 0);
        assert!(!r.a.dev.lock().unwrap().polling());
        r.ring =
            r.v.bring_up(&r.m, VIRTIO_F_VERSION_1, Ring::new(128, 0x1000));
        assert_eq!(flags(&r), 0);
    }

    #[test]
    fn status_byte_may_share_the_last_buffer() {
        let img = disk(8);
        let mut r = rig(img.clone(), "");
        let mut hdr = [0u8; 16];
        hdr[8..16].copy_from_slice(&2u64.to_le_bytes());
        r.m.mem.write(HDR, &hdr).unwrap();
        r.ring.add(&r.m, &[(HDR, 16, false), (DATA, 513, true)]);
        r.v.kick(&r.m, 0);
        assert_eq!(r.ring.take_used(&r.m), vec![(0, 513)]);
        let got = r.guest(DATA, 513);
        assert_eq!(&got[..512], &img.data.lock().unwrap()[1024..1536]);
        assert_eq!(got[512], VIRTIO_BLK_S_OK);
    }

    #[test]
    fn bad_requests_complete_with_ioerr() {
        let img = disk(16);
        let before = img.data.lock().unwrap().clone();
        let mut r = rig(img.clone(), "");
        let ioerr = (VIRTIO_BLK_S_IOERR, 1);
        // Past the end, straddling the end, sector overflow.
        assert_eq!(r.request(VIRTIO_BLK_T_IN, 16, &[(DATA, 512, true)]), ioerr);
        assert_eq!(
            r.request(VIRTIO_BLK_T_OUT, 15, &[(DATA, 1024, false)]),
            ioerr
        );
        assert_eq!(
            r.request(VIRTIO_BLK_T_IN, u64::MAX / 256, &[(DATA, 512, true)]),
            ioerr
        );
        assert_eq!(
            r.request(VIRTIO_BLK_T_IN, u64::MAX, &[(DATA, 512, true)]),
            ioerr
        );
        // Not whole sectors.
        assert_eq!(r.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 100, false)]), ioerr);
        // A read into a device-readable buffer, a write from a writable one.
        assert_eq!(r.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, false)]), ioerr);
        assert_eq!(r.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, true)]), ioerr);
        assert_eq!(*img.data.lock().unwrap(), before);
        // Unknown commands.
        assert_eq!(r.request(99, 0, &[]), (VIRTIO_BLK_S_UNSUPP, 1));
        assert_eq!(
            r.a.dev.lock().unwrap().incidents(),
            0,
            "none of these is hostile"
        );
        // The device goes on serving.
        assert_eq!(
            r.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]).0,
            VIRTIO_BLK_S_OK
        );
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let mut img = disk(8);
        img.read_only = true;
        let before = img.data.lock().unwrap().clone();
        let mut r = rig(img.clone(), "");
        r.m.mem.write(DATA, &[0x55; 512]).unwrap();
        assert_eq!(
            r.request(VIRTIO_BLK_T_OUT, 1, &[(DATA, 512, false)]),
            (VIRTIO_BLK_S_IOERR, 1)
        );
        assert_eq!(*img.data.lock().unwrap(), before);
        assert_eq!(
            r.request(VIRTIO_BLK_T_IN, 1, &[(DATA, 512, true)]),
            (VIRTIO_BLK_S_OK, 513)
        );
        assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (VIRTIO_BLK_S_OK, 1));
    }

    #[test]
    fn flush_reaches_the_image_and_image_errors_are_ioerr() {
        let img = disk(8);
        let mut r = rig(img.clone(), "");
        assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (VIRTIO_BLK_S_OK, 1));
        assert_eq!(*img.flushes.lock().unwrap(), 1);
        let mut bad = disk(8);
        bad.fail = true;
        let mut r = rig(bad.clone(), "");
        assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, VIRTIO_BLK_S_IOERR);
        assert_eq!(
            r.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]).0,
            VIRTIO_BLK_S_IOERR
        );
        assert_eq!(
            r.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)]).0,
            VIRTIO_BLK_S_IOERR
        );
    }

    #[test]
    fn get_id_answers_twenty_bytes() {
        let mut r = rig(disk(8), "vmd-disk0");
        r.m.mem.write(DATA, &[0xee; 32]).unwrap();
        assert_eq!(
            r.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 32, true)]),
            (VIRTIO_BLK_S_OK, 21)
        );
        let got = r.guest(DATA, 32);
        assert_eq!(&got[..9], b"vmd-disk0");
        assert_eq!(&got[9..20], &[0; 11]);
        assert_eq!(&got[20..], &[0xee; 12]);
        // An id longer than 20 bytes is cut; a short buffer gets what fits.
        let mut r = rig(disk(8), "0123456789abcdefghijKLMN");
        assert_eq!(
            r.request(
                VIRTIO_BLK_T_GET_ID,
                0,
                &[(DATA, 8, true), (DATA + 8, 4, true)]
            ),
            (VIRTIO_BLK_S_OK, 13)
        );
        assert_eq!(&r.guest(DATA, 12), b"0123456789ab");
    }

    #[test]
    fn chains_that_carry_no_request_need_reset() {
        for bufs in [
            // Header only: no status byte.
            vec![(HDR, 16, false)],
            // Writable header.
            vec![(HDR, 16, true), (STATUS, 1, true)],
            // Short header.
            vec![(HDR, 8, false), (STATUS, 1, true)],
            // Read-only status.
            vec![(HDR, 16, false), (STATUS, 1, false)],
        ] {
            let mut r = rig(disk(8), "");
            r.ring.add(&r.m, &bufs);
            r.v.kick(&r.m, 0);
            assert_eq!(
                r.v.status(&r.m) & VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET,
                VIRTIO_CONFIG_DEVICE_STATUS_DEVICE_NEEDS_RESET,
                "{bufs:x?}"
            );
            assert_eq!(r.ring.used_idx(&r.m), 0);
        }
    }

    #[test]
    fn oversized_requests_need_reset() {
        // 64 MiB and a sector in all is more than one request may carry,
        // whether or not the buffers are in guest memory.
        let mut r = rig(disk(8), "");
        r.ring.add(
            &r.m,
            &[
                (HDR, 16, false),
                (0, 0x10_0000, true),
                (0, (VIOBLK_MAX_REQUEST - 0x10_0000 + 512) as u32, true),
                (STATUS, 1, true),
            ],
        );
        r.v.kick(&r.m, 0);
        assert!(r.a.dev.lock().unwrap().needs_reset());
    }

    /// Random chains, headers and kicks, with resets in between: vioblk
    /// never panics or hangs.
    #[test]
    fn property_random_requests_do_not_panic() {
        use crate::property::{cases, Rng};
        cases(
            "vioblk random requests",
            0x626c_6b21,
            200,
            |r: &mut Rng| {
                (0..r.below(40) + 1)
                    .map(|_| (r.next(), r.next(), r.edgy_u64()))
                    .collect::<Vec<_>>()
            },
            |ops| format!("{ops:x?}"),
            |ops| {
                let img = disk(32);
                let mut r = rig(img, "x");
                for (a, b, c) in ops {
                    match a % 5 {
                        0 => {
                            let mut hdr = [0u8; 16];
                            hdr[0..4].copy_from_slice(
                                &[0u32, 1, 4, 8, 77][(b % 5) as usize].to_le_bytes(),
                            );
                            hdr[8..16].copy_from_slice(&(c % 40).to_le_bytes());
                            r.m.mem.write(HDR, &hdr).unwrap();
                        }
                        1 => {
                            let i = (b % 128) as u16;
                            let addr = [HDR, DATA, STATUS, c % 0x60_0000][(a >> 8) as usize % 4];
                            r.ring.put_desc(
                                &r.m,
                                i,
                                addr,
                                (c >> 20) as u32 % 0x3000,
                                (b >> 16) as u16 & 3,
                                (b >> 32) as u16 % 130,
                            );
                        }
                        2 => r.ring.publish(&r.m, (b % 130) as u16),
                        3 => r.v.kick(&r.m, 0),
                        _ => {
                            if b % 3 == 0 {
                                r.ring =
                                    r.v.bring_up(&r.m, VIRTIO_F_VERSION_1, Ring::new(128, 0x1000));
                            }
                        }
                    }
                }
            },
        );
    }
}
