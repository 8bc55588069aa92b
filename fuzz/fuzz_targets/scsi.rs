//! vioscsi's SCSI command layer (`vmd::devices::scsi`) on its own: a
//! CD-ROM over an in-memory ISO executes a sequence of hostile CDBs
//! against one LUN field and one data-in buffer size.  Every completion
//! must keep to the buffer, count what it moved, carry sense exactly when
//! it is a CHECK CONDITION, move nothing on an overrun, and a GOOD
//! READ(10) must return the image's blocks.
//!
//! Input: blocks (byte 0, mod 64), bytes of a partial last block (byte 1),
//! data-in capacity (bytes 2-5, little endian, mod 256 KiB + 1), the
//! 8-byte LUN field, then 32-byte CDBs (the last one zero-padded).
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmd::devices::scsi::{Cdrom, VecDataIn, CDB_LEN, READ_10, SCSI_CHECK_CONDITION, SCSI_GOOD};
use vmd::devices::virtio::blk::{DiskError, DiskImage};

struct MemIso(Vec<u8>);

impl DiskImage for MemIso {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let size = self.0.len() as u64;
        let range = usize::try_from(offset)
            .ok()
            .and_then(|s| Some(s..s.checked_add(buf.len())?));
        match range.and_then(|r| self.0.get(r)) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(DiskError::OutOfRange {
                path: "memiso".into(),
                offset,
                len: buf.len() as u64,
                size,
            }),
        }
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly {
            path: "memiso".into(),
        })
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_only(&self) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 14 {
        return;
    }
    let blocks = usize::from(data[0] % 64);
    let len = blocks * 2048 + usize::from(data[1]);
    let image: Vec<u8> = (0..len).map(|i| (i / 2048) as u8 ^ (i as u8)).collect();
    let cap = u64::from(u32::from_le_bytes(data[2..6].try_into().unwrap())) % (256 * 1024 + 1);
    let lun: [u8; 8] = data[6..14].try_into().unwrap();
    let mut cdrom = Cdrom::new(Box::new(MemIso(image.clone())), "fuzz");
    assert_eq!(cdrom.blocks(), blocks as u64);
    for chunk in data[14..].chunks(CDB_LEN) {
        let mut cdb = [0u8; CDB_LEN];
        cdb[..chunk.len()].copy_from_slice(chunk);
        let mut out = VecDataIn::with_capacity(cap);
        let done = cdrom
            .execute(&lun, &cdb, &mut out)
            .expect("an in-memory data-in buffer does not fail");
        assert!(out.data.len() as u64 <= cap, "more data than the buffer");
        assert_eq!(done.transferred, out.data.len() as u64);
        assert_eq!(done.status == SCSI_CHECK_CONDITION, done.sense.is_some());
        assert!(done.status == SCSI_GOOD || done.status == SCSI_CHECK_CONDITION);
        if done.overrun {
            assert_eq!(done.transferred, 0, "an overrun moves nothing");
        }
        if cdb[0] == READ_10 && done.status == SCSI_GOOD && !done.overrun {
            let lba = u32::from_be_bytes(cdb[2..6].try_into().unwrap()) as usize;
            let n = usize::from(u16::from_be_bytes([cdb[7], cdb[8]]));
            assert_eq!(out.data, image[lba * 2048..(lba + n) * 2048]);
        }
    }
});
