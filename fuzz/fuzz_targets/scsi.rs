//! The SCSI command parser of the virtio-scsi CD-ROM
//! (`vmd::devices::scsi::Cdrom::execute`): a hostile initiator sends any
//! CDB to any LUN with a data-in buffer of any size.  Each command is 44
//! bytes of input: the 8-byte LUN, the 32-byte CDB and the buffer's
//! capacity (u32).  The completion never claims more data than the
//! buffer holds, and the device never puts more than that.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmd::devices::scsi::{Cdrom, VecDataIn, CDB_LEN};
use vmd_fuzz::{Input, MemDisk};

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    // A 10-block ISO image (2048-byte blocks), or one of odd size.
    let size = if inp.u8() & 1 == 0 {
        10 * 2048
    } else {
        10 * 2048 + 700
    };
    let image: Vec<u8> = (0..size).map(|i: u32| (i >> 11) as u8).collect();
    let mut cd = Cdrom::new(Box::new(MemDisk(image)), "fuzz-serial");
    let _ = cd.blocks();
    while !inp.is_empty() {
        let mut lun = [0u8; 8];
        let got = inp.bytes(8);
        lun[..got.len()].copy_from_slice(got);
        let mut cdb = [0u8; CDB_LEN];
        let got = inp.bytes(CDB_LEN);
        cdb[..got.len()].copy_from_slice(got);
        // Mostly a few KiB, sometimes anything up to 4 GiB (capacity is
        // a promise the data-in sink checks, not an allocation).
        let cap = match inp.u32() {
            c if c & 0x8000_0000 != 0 => u64::from(c),
            c => u64::from(c % 0x4000),
        };
        let mut out = VecDataIn::with_capacity(cap);
        if let Ok(c) = cd.execute(&lun, &cdb, &mut out) {
            assert!(c.transferred <= cap, "{c:?} with a buffer of {cap}");
            assert!(
                out.data.len() as u64 <= cap,
                "{} bytes put in {cap}",
                out.data.len()
            );
        }
        if cdb[0] == 0xff {
            cd.reset();
        }
    }
});
