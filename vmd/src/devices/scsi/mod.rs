//! The SCSI command layer of vioscsi: a read-only MMC CD-ROM over an ISO
//! image with 2048-byte blocks, as vmd's vioscsi.c answers it, with no
//! notion of virtio or guest memory so that it can be tested (and fuzzed)
//! on CDBs alone.
//!
//! Served: TEST UNIT READY, REQUEST SENSE, INQUIRY (standard data as vmd
//! gives it: CD-ROM, removable, "OpenBSD " "VMM CD-ROM" "001 "; VPD pages
//! 0x00, 0x80 and 0x83), READ CAPACITY(10) and (16), READ(6/10/12/16),
//! MODE SENSE(6) and (10) (pages 0x01 and 0x2a, current values, or both
//! with 0x3f), GET CONFIGURATION, READ TOC (formatted TOC and session
//! info), GET EVENT STATUS NOTIFICATION (polled), MECHANISM STATUS,
//! PREVENT ALLOW MEDIUM REMOVAL, START STOP UNIT and REPORT LUNS.
//! Anything else is CHECK CONDITION, ILLEGAL REQUEST, INVALID COMMAND
//! OPERATION CODE; a bad field INVALID FIELD IN CDB; a read that runs past
//! the last block LOGICAL BLOCK ADDRESS OUT OF RANGE — each with
//! fixed-format sense data.
//!
//! Where vmd differs from the standard in ways a guest could trip over,
//! this follows the standard: sense data has its additional length (vmd
//! leaves it 0), a read is checked over its whole range (vmd checks only
//! the first block), a failing image read is MEDIUM ERROR / UNRECOVERED
//! READ ERROR (vmd: MEDIUM NOT PRESENT), PREVENT ALLOW sets the lock from
//! its PREVENT bit (vmd toggles it), GET CONFIGURATION's random-readable
//! feature carries the block size (vmd puts the last LBA there), and an unknown
//! opcode is answered (vmd leaves the request without a response).
//! REPORT LUNS keeps vmd's answer, the LUN field of the request, because
//! SeaBIOS builds the boot path it matches against vmd's `bootorder` from
//! it.
use crate::devices::virtio::blk::DiskImage;

#[cfg(test)]
mod tests;

/// Length of the CDB field in a virtio-scsi request (cdb_size).
pub const CDB_LEN: usize = 32;
/// A CD-ROM block.
pub const CDROM_BLOCK_SIZE: u64 = 2048;
/// Fixed-format sense data as this device returns it.
pub const SENSE_LEN: usize = 18;

pub const INQUIRY_VENDOR: &[u8; 8] = b"OpenBSD ";
pub const INQUIRY_PRODUCT: &[u8; 16] = b"VMM CD-ROM      ";
pub const INQUIRY_REVISION: &[u8; 4] = b"001 ";

// SCSI status.
pub const SCSI_GOOD: u8 = 0x00;
pub const SCSI_CHECK_CONDITION: u8 = 0x02;

// Sense keys.
pub const SKEY_NO_SENSE: u8 = 0x0;
pub const SKEY_NOT_READY: u8 = 0x2;
pub const SKEY_MEDIUM_ERROR: u8 = 0x3;
pub const SKEY_ILLEGAL_REQUEST: u8 = 0x5;

// Additional sense codes.
pub const ASC_UNRECOVERED_READ_ERROR: u8 = 0x11;
pub const ASC_INVALID_OPCODE: u8 = 0x20;
pub const ASC_LBA_OUT_OF_RANGE: u8 = 0x21;
pub const ASC_INVALID_FIELD_IN_CDB: u8 = 0x24;
pub const ASC_MEDIUM_NOT_PRESENT: u8 = 0x3a;

// Opcodes.
pub const TEST_UNIT_READY: u8 = 0x00;
pub const REQUEST_SENSE: u8 = 0x03;
pub const READ_6: u8 = 0x08;
pub const INQUIRY: u8 = 0x12;
pub const MODE_SENSE_6: u8 = 0x1a;
pub const START_STOP_UNIT: u8 = 0x1b;
pub const PREVENT_ALLOW: u8 = 0x1e;
pub const READ_CAPACITY_10: u8 = 0x25;
pub const READ_10: u8 = 0x28;
pub const READ_TOC: u8 = 0x43;
pub const GET_CONFIGURATION: u8 = 0x46;
pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4a;
pub const MODE_SENSE_10: u8 = 0x5a;
pub const READ_16: u8 = 0x88;
pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
pub const SAI_READ_CAPACITY_16: u8 = 0x10;
pub const REPORT_LUNS: u8 = 0xa0;
pub const READ_12: u8 = 0xa8;
pub const MECHANISM_STATUS: u8 = 0xbd;

/// T_CDROM, the peripheral device type.
const T_CDROM: u8 = 0x05;
/// Mode pages vmd serves.
const ERR_RECOVERY_PAGE: u8 = 0x01;
const CDVD_CAPABILITIES_PAGE: u8 = 0x2a;
const ALL_PAGES: u8 = 0x3f;
/// The medium type vmd reports in mode parameter headers.
const MODE_MEDIUM_TYPE_CODE: u8 = 0x70;
/// READ TOC's lead-out track and the ADR/control byte of a data track.
const LEAD_OUT_TRACK: u8 = 0xaa;
const TOC_ADR_CTL: u8 = 0x14;
/// Image reads go in pieces of at most this.
const IO_CHUNK: u64 = 1 << 20;

/// Sense data for a CHECK CONDITION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    pub const fn new(key: u8, asc: u8) -> Sense {
        Sense { key, asc, ascq: 0 }
    }

    /// Fixed format, current error (response code 0x70).
    pub fn fixed(&self) -> [u8; SENSE_LEN] {
        let mut s = [0u8; SENSE_LEN];
        s[0] = 0x70;
        s[2] = self.key & 0xf;
        s[7] = (SENSE_LEN - 8) as u8;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }
}

const INVALID_FIELD: Sense = Sense::new(SKEY_ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB);
const INVALID_OPCODE: Sense = Sense::new(SKEY_ILLEGAL_REQUEST, ASC_INVALID_OPCODE);
const OUT_OF_RANGE: Sense = Sense::new(SKEY_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE);
const NO_MEDIUM: Sense = Sense::new(SKEY_NOT_READY, ASC_MEDIUM_NOT_PRESENT);
const READ_ERROR: Sense = Sense::new(SKEY_MEDIUM_ERROR, ASC_UNRECOVERED_READ_ERROR);

/// Moving data to the initiator failed (guest memory went away).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("data-in transfer failed: {0}")]
pub struct TransferError(pub String);

/// Where a command's data-in goes: the initiator's buffer.
pub trait DataIn {
    /// Bytes the buffer holds in all.
    fn capacity(&self) -> u64;
    /// Appends `data`; the caller never puts more than the capacity.
    fn put(&mut self, data: &[u8]) -> Result<(), TransferError>;
}

/// A data-in buffer in host memory (tests, and callers that copy later).
#[derive(Debug, Default)]
pub struct VecDataIn {
    pub cap: u64,
    pub data: Vec<u8>,
}

impl VecDataIn {
    pub fn with_capacity(cap: u64) -> Self {
        VecDataIn {
            cap,
            data: Vec::new(),
        }
    }
}

impl DataIn for VecDataIn {
    fn capacity(&self) -> u64 {
        self.cap
    }
    fn put(&mut self, data: &[u8]) -> Result<(), TransferError> {
        self.data.extend_from_slice(data);
        Ok(())
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// SCSI status: GOOD or CHECK CONDITION.
    pub status: u8,
    pub sense: Option<Sense>,
    /// Bytes of data-in transferred.
    pub transferred: u64,
    /// The command's data did not fit in the initiator's buffer and was
    /// not transferred (virtio-scsi's OVERRUN).
    pub overrun: bool,
}

impl Completion {
    fn good(transferred: u64) -> Self {
        Completion {
            status: SCSI_GOOD,
            sense: None,
            transferred,
            overrun: false,
        }
    }

    fn check(sense: Sense) -> Self {
        Completion {
            status: SCSI_CHECK_CONDITION,
            sense: Some(sense),
            transferred: 0,
            overrun: false,
        }
    }
}

fn be16(b: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// The CD-ROM: an image and the little state a drive keeps.
pub struct Cdrom {
    image: Box<dyn DiskImage>,
    /// Whole 2048-byte blocks (a partial last block is not visible).
    blocks: u64,
    serial: String,
    /// PREVENT ALLOW MEDIUM REMOVAL's state (reported by GESN).
    locked: bool,
    buf: Vec<u8>,
}

impl Cdrom {
    /// A drive with `image` loaded; `serial` is what VPD page 0x80 gives.
    pub fn new(image: Box<dyn DiskImage>, serial: &str) -> Self {
        Cdrom {
            blocks: image.size() / CDROM_BLOCK_SIZE,
            image,
            serial: serial.chars().filter(|c| c.is_ascii_graphic()).collect(),
            locked: false,
            buf: Vec::new(),
        }
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn locked(&self) -> bool {
        self.locked
    }

    /// Device reset: the medium is no longer locked.
    pub fn reset(&mut self) {
        self.locked = false;
    }

    /// Executes one command sent to `lun` (the transport's 8-byte LUN
    /// field, which REPORT LUNS echoes); its data-in (at most the
    /// allocation length and the buffer's capacity) goes to `out`.  Only a
    /// failing transfer is an error; everything the initiator got wrong is
    /// a completion.
    pub fn execute(
        &mut self,
        lun: &[u8; 8],
        cdb: &[u8; CDB_LEN],
        out: &mut dyn DataIn,
    ) -> Result<Completion, TransferError> {
        let reply = match cdb[0] {
            TEST_UNIT_READY => return Ok(self.ready().unwrap_or(Completion::good(0))),
            START_STOP_UNIT => Ok(Vec::new()),
            PREVENT_ALLOW => {
                self.locked = cdb[4] & 1 != 0;
                Ok(Vec::new())
            }
            REQUEST_SENSE => {
                // Sense goes with each CHECK CONDITION (autosense), so
                // nothing is left pending.
                let s = Sense::new(SKEY_NO_SENSE, 0).fixed();
                return self.send(&s, u64::from(cdb[4]), out);
            }
            INQUIRY => self.inquiry(cdb),
            MODE_SENSE_6 => self.mode_sense(cdb, false),
            MODE_SENSE_10 => self.mode_sense(cdb, true),
            READ_CAPACITY_10 => {
                if let Some(c) = self.ready() {
                    return Ok(c);
                }
                let last = (self.blocks - 1).min(u64::from(u32::MAX)) as u32;
                let mut d = Vec::with_capacity(8);
                d.extend_from_slice(&last.to_be_bytes());
                d.extend_from_slice(&(CDROM_BLOCK_SIZE as u32).to_be_bytes());
                return self.send(&d, 8, out);
            }
            SERVICE_ACTION_IN_16 if cdb[1] & 0x1f == SAI_READ_CAPACITY_16 => {
                if let Some(c) = self.ready() {
                    return Ok(c);
                }
                let mut d = vec![0u8; 32];
                d[0..8].copy_from_slice(&(self.blocks - 1).to_be_bytes());
                d[8..12].copy_from_slice(&(CDROM_BLOCK_SIZE as u32).to_be_bytes());
                return self.send(&d, be32(&cdb[10..14]), out);
            }
            SERVICE_ACTION_IN_16 => Err(INVALID_FIELD),
            READ_6 => {
                let lba = (u64::from(cdb[1] & 0x1f) << 16) | be16(&cdb[2..4]);
                // A transfer length of 0 means 256 blocks in READ(6).
                let count = if cdb[4] == 0 { 256 } else { u64::from(cdb[4]) };
                return self.read(lba, count, out);
            }
            READ_10 => return self.read(be32(&cdb[2..6]), be16(&cdb[7..9]), out),
            READ_12 => return self.read(be32(&cdb[2..6]), be32(&cdb[6..10]), out),
            READ_16 => return self.read(be64(&cdb[2..10]), be32(&cdb[10..14]), out),
            READ_TOC => self.read_toc(cdb),
            GET_CONFIGURATION => Ok(self.configuration()),
            GET_EVENT_STATUS_NOTIFICATION => self.event_status(cdb),
            // Not a changer: an empty header.
            MECHANISM_STATUS => return self.send(&[0u8; 8], be16(&cdb[8..10]), out),
            REPORT_LUNS => {
                let alloc = be32(&cdb[6..10]);
                if alloc < 16 {
                    Err(INVALID_FIELD)
                } else {
                    // One LUN, the one addressed, as vmd reports it: SeaBIOS
                    // reads it back as 0x40000100 for virtio's target 0,
                    // LUN 0, which is what vmd's cdrom bootorder names.
                    let mut d = vec![0u8; 16];
                    d[3] = 8;
                    d[8..16].copy_from_slice(lun);
                    return self.send(&d, alloc, out);
                }
            }
            op => {
                log::debug!("vioscsi: unsupported opcode 0x{op:02x}");
                Err(INVALID_OPCODE)
            }
        };
        match reply {
            Ok(d) => {
                let alloc = allocation_length(cdb);
                self.send(&d, alloc, out)
            }
            Err(sense) => Ok(Completion::check(sense)),
        }
    }

    /// CHECK CONDITION / NOT READY when there is no block to read.
    fn ready(&self) -> Option<Completion> {
        (self.blocks == 0).then(|| Completion::check(NO_MEDIUM))
    }

    /// Sends at most `alloc` bytes of `data`, cut to the buffer.
    fn send(
        &mut self,
        data: &[u8],
        alloc: u64,
        out: &mut dyn DataIn,
    ) -> Result<Completion, TransferError> {
        let n = (data.len() as u64).min(alloc).min(out.capacity()) as usize;
        if n > 0 {
            out.put(&data[..n])?;
        }
        Ok(Completion::good(n as u64))
    }

    fn read(
        &mut self,
        lba: u64,
        count: u64,
        out: &mut dyn DataIn,
    ) -> Result<Completion, TransferError> {
        if let Some(c) = self.ready() {
            return Ok(c);
        }
        let in_range = lba.checked_add(count).is_some_and(|end| end <= self.blocks);
        if !in_range {
            log::debug!(
                "vioscsi: read of {count} blocks at {lba} past {}",
                self.blocks
            );
            return Ok(Completion::check(OUT_OF_RANGE));
        }
        // In range, so neither product overflows: blocks * 2048 is the
        // image size.
        let bytes = count * CDROM_BLOCK_SIZE;
        if bytes > out.capacity() {
            log::debug!(
                "vioscsi: read of {bytes} bytes into a {}-byte buffer",
                out.capacity()
            );
            return Ok(Completion {
                overrun: true,
                ..Completion::good(0)
            });
        }
        let mut offset = lba * CDROM_BLOCK_SIZE;
        let mut done = 0u64;
        while done < bytes {
            let n = (bytes - done).min(IO_CHUNK) as usize;
            self.buf.resize(n, 0);
            if let Err(e) = self.image.read_at(&mut self.buf[..n], offset) {
                log::warn!("vioscsi: read at {offset}: {e}");
                return Ok(Completion {
                    transferred: done,
                    ..Completion::check(READ_ERROR)
                });
            }
            out.put(&self.buf[..n])?;
            done += n as u64;
            offset += n as u64;
        }
        Ok(Completion::good(done))
    }

    fn inquiry(&self, cdb: &[u8; CDB_LEN]) -> Result<Vec<u8>, Sense> {
        let evpd = cdb[1] & 1 != 0;
        // CmdDt (obsolete) is not supported.
        if cdb[1] & 2 != 0 {
            return Err(INVALID_FIELD);
        }
        if !evpd {
            if cdb[2] != 0 {
                return Err(INVALID_FIELD);
            }
            let mut d = vec![0u8; 36];
            d[0] = T_CDROM;
            d[1] = 0x80; // removable
            d[2] = 0; // no claim of conformance, as vmd
            d[3] = 2; // response data format
            d[4] = 36 - 5; // additional length
            d[8..16].copy_from_slice(INQUIRY_VENDOR);
            d[16..32].copy_from_slice(INQUIRY_PRODUCT);
            d[32..36].copy_from_slice(INQUIRY_REVISION);
            return Ok(d);
        }
        let page: Vec<u8> = match cdb[2] {
            0x00 => vec![0x00, 0x80, 0x83],
            0x80 => self.serial.as_bytes().to_vec(),
            0x83 => {
                // One designator: T10 vendor identification, ASCII,
                // associated with the logical unit.
                let mut id = Vec::new();
                id.extend_from_slice(INQUIRY_VENDOR);
                id.extend_from_slice(INQUIRY_PRODUCT.trim_ascii_end());
                if !self.serial.is_empty() {
                    id.push(b' ');
                    id.extend_from_slice(self.serial.as_bytes());
                }
                id.truncate(255 - 4);
                let mut d = vec![0x02, 0x01, 0x00, id.len() as u8];
                d.extend_from_slice(&id);
                d
            }
            _ => return Err(INVALID_FIELD),
        };
        let len = page.len().min(0xff);
        let mut d = vec![T_CDROM, cdb[2], 0, len as u8];
        d.extend_from_slice(&page[..len]);
        Ok(d)
    }

    fn mode_sense(&self, cdb: &[u8; CDB_LEN], ten: bool) -> Result<Vec<u8>, Sense> {
        let control = cdb[2] >> 6;
        let code = cdb[2] & 0x3f;
        // Current values only, as vmd; no subpages.
        if control != 0 || cdb[3] != 0 {
            return Err(INVALID_FIELD);
        }
        let mut pages = Vec::new();
        if code == ERR_RECOVERY_PAGE || code == ALL_PAGES {
            // Read retry count 5.
            pages.extend_from_slice(&[ERR_RECOVERY_PAGE, 0x0a, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        if code == CDVD_CAPABILITIES_PAGE || code == ALL_PAGES {
            let mut p = [0u8; 32];
            p[0] = CDVD_CAPABILITIES_PAGE;
            p[1] = 30;
            p[2] = 0x08; // reads DVD-ROM, as vmd says
            p[10..12].copy_from_slice(&2u16.to_be_bytes()); // volume levels
            pages.extend_from_slice(&p);
        }
        if pages.is_empty() {
            return Err(INVALID_FIELD);
        }
        // Mode parameter header with no block descriptors.
        let mut d = if ten {
            let len = (pages.len() + 6) as u16;
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&len.to_be_bytes());
            h[2] = MODE_MEDIUM_TYPE_CODE;
            h
        } else {
            vec![(pages.len() + 3) as u8, MODE_MEDIUM_TYPE_CODE, 0, 0]
        };
        d.extend_from_slice(&pages);
        Ok(d)
    }

    fn read_toc(&self, cdb: &[u8; CDB_LEN]) -> Result<Vec<u8>, Sense> {
        if self.blocks == 0 {
            return Err(NO_MEDIUM);
        }
        let msf = cdb[1] & 2 != 0;
        let track = cdb[6];
        // The format, or in older drivers' CDBs the top bits of byte 9.
        let format = match cdb[2] & 0xf {
            0 => cdb[9] >> 6,
            f => f,
        };
        let addr = |lba: u64| -> [u8; 4] {
            if msf {
                // Two seconds of lead-in, 75 frames a second.
                let f = lba.min(u64::from(u32::MAX)) + 150;
                let m = (f / (75 * 60)).min(0xff) as u8;
                [0, m, ((f / 75) % 60) as u8, (f % 75) as u8]
            } else {
                (lba.min(u64::from(u32::MAX)) as u32).to_be_bytes()
            }
        };
        let mut d = vec![0u8, 0, 1, 1];
        match format {
            0 => {
                // One data track from block 0, then the lead-out.
                if track > 1 && track != LEAD_OUT_TRACK {
                    return Err(INVALID_FIELD);
                }
                if track <= 1 {
                    d.extend_from_slice(&[0, TOC_ADR_CTL, 1, 0]);
                    d.extend_from_slice(&addr(0));
                }
                d.extend_from_slice(&[0, TOC_ADR_CTL, LEAD_OUT_TRACK, 0]);
                d.extend_from_slice(&addr(self.blocks));
            }
            1 => {
                // Session information: one session, its first track.
                d.extend_from_slice(&[0, TOC_ADR_CTL, 1, 0]);
                d.extend_from_slice(&addr(0));
            }
            _ => return Err(INVALID_FIELD),
        }
        let len = (d.len() - 2) as u16;
        d[0..2].copy_from_slice(&len.to_be_bytes());
        Ok(d)
    }

    /// The feature list vmd sends whatever was asked: profile list (one,
    /// "non-conforming" as vmd), core (SCSI), morphing, removable medium
    /// and random readable.
    fn configuration(&self) -> Vec<u8> {
        let mut d = vec![0u8; 8];
        d[6..8].copy_from_slice(&0xffffu16.to_be_bytes());
        d.extend_from_slice(&[0x00, 0x00, 0x03, 4, 0xff, 0xff, 0x01, 0]);
        d.extend_from_slice(&[0x00, 0x01, 0x11, 8, 0, 0, 0, 1, 0, 0, 0, 0]);
        d.extend_from_slice(&[0x00, 0x02, 0x07, 4, 0x02, 0, 0, 0]);
        d.extend_from_slice(&[0x00, 0x04, 0x03, 4, 0x09, 0, 0, 0]);
        let mut rr = vec![0x00, 0x10, 0x03, 8];
        rr.extend_from_slice(&(CDROM_BLOCK_SIZE as u32).to_be_bytes());
        rr.extend_from_slice(&[0x00, 0x10, 0, 0]);
        d.extend_from_slice(&rr);
        let len = (d.len() - 4) as u32;
        d[0..4].copy_from_slice(&len.to_be_bytes());
        d
    }

    fn event_status(&self, cdb: &[u8; CDB_LEN]) -> Result<Vec<u8>, Sense> {
        // Polled only: asynchronous notification is not supported.
        if cdb[1] & 1 == 0 {
            return Err(INVALID_FIELD);
        }
        // Power management class: no change; active while locked.
        let status = if self.locked { 1 } else { 2 };
        Ok(vec![0, 6, 0x02, 0x04, 0, status, 0, 0])
    }
}

/// The allocation length of the commands whose reply is built whole.
fn allocation_length(cdb: &[u8; CDB_LEN]) -> u64 {
    match cdb[0] {
        INQUIRY => be16(&cdb[3..5]),
        MODE_SENSE_6 => u64::from(cdb[4]),
        MODE_SENSE_10 | READ_TOC | GET_CONFIGURATION | GET_EVENT_STATUS_NOTIFICATION => {
            be16(&cdb[7..9])
        }
        // No data-in.
        _ => 0,
    }
}
