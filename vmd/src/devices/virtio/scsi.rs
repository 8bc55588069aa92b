//! The OS-free core of vioscsi, the virtio SCSI host adapter with one
//! CD-ROM (target 0, LUN 0) over an ISO image; the SCSI commands
//! themselves are [`crate::devices::scsi`].
//!
//! As vmd offers it: VERSION_1 only, three queues (control, event,
//! request) of 128 entries, and a 36-byte device configuration:
//! num_queues 1, seg_max 17, max_sectors 2048, cmd_per_lun 1,
//! event_info_size 0, sense_size 96, cdb_size 32, max_channel 0,
//! max_target 1, max_lun 1 (read-only: driver writes are ignored).
//!
//! A request is a chain: the device-readable `virtio_scsi_cmd_req` (LUN,
//! tag, task attribute, priority, CRN, a 32-byte CDB), then the
//! device-writable `virtio_scsi_cmd_resp` (sense_len, resid,
//! status_qualifier, status, response, 96 bytes of sense) and the data-in
//! buffers; the structures may be split over descriptors in any way.  A
//! LUN other than target 0 / LUN 0 gets BAD_TARGET, as vmd answers (and
//! with vmd's test of the LUN field, see [`is_cdrom`]); a
//! READ bigger than the data-in buffers OVERRUN; a request header cut
//! short FAILURE.  A chain with no room for the response's status and
//! response bytes, or with a readable buffer after a writable one, cannot
//! be answered and puts the device in NEEDS_RESET.
//!
//! The control queue answers task-management functions (FUNCTION_COMPLETE
//! for the CD-ROM, BAD_TARGET otherwise) and asynchronous-notification
//! queries (no events); the event queue's buffers stay with the device,
//! which has no hot-plug events to report.
use super::queue::{Desc, DescChain, QueueError, VirtQueue};
use super::transport::VirtioDevice;
use super::VIRTIO_F_VERSION_1;
use crate::devices::scsi::{self, Cdrom, DataIn, TransferError, CDB_LEN};
use crate::devices::virtio::blk::DiskImage;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const VIOSCSI_QUEUE_SIZE: u16 = 128;
/// Queues of a vioscsi: control, event and one request queue.
pub const VIOSCSI_QUEUES: usize = 3;
pub const VIOSCSI_CONTROL_QUEUE: usize = 0;
pub const VIOSCSI_EVENT_QUEUE: usize = 1;
pub const VIOSCSI_REQUEST_QUEUE: usize = 2;
/// Device configuration values, as vmd's vioscsi.h has them.
pub const VIOSCSI_NUM_QUEUES: u32 = 1;
pub const VIOSCSI_SEG_MAX: u32 = 17;
pub const VIOSCSI_MAX_XFER: u32 = 2048;
pub const VIOSCSI_CMD_PER_LUN: u32 = 1;
pub const VIOSCSI_SENSE_LEN: u32 = 96;
pub const VIOSCSI_CDB_LEN: u32 = CDB_LEN as u32;
pub const VIOSCSI_MAX_TARGET: u16 = 1;
pub const VIOSCSI_MAX_LUN: u32 = 1;
pub const VIOSCSI_CONFIG_LEN: u32 = 36;
/// The most one request may move (vmd refuses reads over 64 MiB); a
/// bigger chain counts as hostile.
pub const VIOSCSI_MAX_REQUEST: u64 = (64 << 20) + 4096;

/// `virtio_scsi_cmd_req` with a 32-byte CDB.
pub const CMD_REQ_LEN: usize = 19 + CDB_LEN;
/// `virtio_scsi_cmd_resp` with 96 bytes of sense.
pub const CMD_RESP_LEN: usize = 12 + VIOSCSI_SENSE_LEN as usize;
/// The response's fields before the sense bytes.
const CMD_RESP_HEADER: usize = 12;

// virtio_scsi response codes.
pub const VIRTIO_SCSI_S_OK: u8 = 0;
pub const VIRTIO_SCSI_S_FUNCTION_COMPLETE: u8 = 0;
pub const VIRTIO_SCSI_S_OVERRUN: u8 = 1;
pub const VIRTIO_SCSI_S_BAD_TARGET: u8 = 3;
pub const VIRTIO_SCSI_S_FAILURE: u8 = 9;
pub const VIRTIO_SCSI_S_FUNCTION_REJECTED: u8 = 11;

// Control queue request types.
pub const VIRTIO_SCSI_T_TMF: u32 = 0;
pub const VIRTIO_SCSI_T_AN_QUERY: u32 = 1;
pub const VIRTIO_SCSI_T_AN_SUBSCRIBE: u32 = 2;

/// Whether a virtio LUN field names the CD-ROM, as vmd decides it: target
/// (byte 1) 0 and byte 3 (the low byte of the LUN) 0; any other target or
/// LUN gets BAD_TARGET.  Bytes 0 and 2 are not looked at: SeaBIOS, having
/// read vmd's REPORT LUNS answer as LUN 0x40000100, sends 0x41 in byte 2.
fn is_cdrom(lun: &[u8]) -> bool {
    lun[1] == 0 && lun[3] == 0
}

pub struct Vioscsi {
    cdrom: Cdrom,
}

impl Vioscsi {
    /// A CD-ROM with `image` loaded (read-only; writes never reach it).
    pub fn new(image: Box<dyn DiskImage>, serial: &str) -> Self {
        Vioscsi {
            cdrom: Cdrom::new(image, serial),
        }
    }

    pub fn cdrom(&self) -> &Cdrom {
        &self.cdrom
    }

    fn config(&self) -> [u8; VIOSCSI_CONFIG_LEN as usize] {
        let mut c = [0u8; VIOSCSI_CONFIG_LEN as usize];
        let words = [
            VIOSCSI_NUM_QUEUES,
            VIOSCSI_SEG_MAX,
            VIOSCSI_MAX_XFER,
            VIOSCSI_CMD_PER_LUN,
            0, // event_info_size
            VIOSCSI_SENSE_LEN,
            VIOSCSI_CDB_LEN,
        ];
        for (i, w) in words.iter().enumerate() {
            c[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        // max_channel (28) stays 0.
        c[30..32].copy_from_slice(&VIOSCSI_MAX_TARGET.to_le_bytes());
        c[32..36].copy_from_slice(&VIOSCSI_MAX_LUN.to_le_bytes());
        c
    }

    /// Serves one request-queue chain; returns the bytes written.
    fn serve_cmd(&mut self, chain: &DescChain, mem: &GuestMemoryMmap) -> Result<u32, QueueError> {
        let (readable, writable) = split(chain)?;
        let bad = |what| QueueError::BadRequest {
            head: chain.head,
            what,
        };
        let mut resp = GuestBuf::new(writable, mem);
        if resp.capacity() < CMD_RESP_HEADER as u64 {
            return Err(bad("no room for a virtio-scsi response"));
        }
        let mut req = [0u8; CMD_REQ_LEN];
        let got = gather(readable, mem, &mut req)?;
        // The data-in buffers begin after the whole response structure.
        let mut data = resp.after(CMD_RESP_LEN as u64);
        let mut r = [0u8; CMD_RESP_LEN];
        let response = if got < CMD_REQ_LEN {
            log::debug!("vioscsi: request header of {got} bytes");
            VIRTIO_SCSI_S_FAILURE
        } else if !is_cdrom(&req[0..8]) {
            log::debug!("vioscsi: no device at lun {:02x?}", &req[0..8]);
            VIRTIO_SCSI_S_BAD_TARGET
        } else {
            let cdb: [u8; CDB_LEN] = req[19..].try_into().expect("CDB_LEN bytes");
            let lun: [u8; 8] = req[0..8].try_into().expect("8 bytes");
            let done = self
                .cdrom
                .execute(&lun, &cdb, &mut data)
                .map_err(|e| QueueError::Memory(e.0))?;
            let resid = data.capacity().saturating_sub(done.transferred);
            r[4..8].copy_from_slice(&(resid.min(u64::from(u32::MAX)) as u32).to_le_bytes());
            r[10] = done.status;
            if let Some(sense) = done.sense {
                let s = sense.fixed();
                r[0..4].copy_from_slice(&(s.len() as u32).to_le_bytes());
                r[CMD_RESP_HEADER..CMD_RESP_HEADER + s.len()].copy_from_slice(&s);
            }
            if done.overrun {
                VIRTIO_SCSI_S_OVERRUN
            } else {
                VIRTIO_SCSI_S_OK
            }
        };
        r[11] = response;
        // As much of the response as the driver left room for.
        let n = (r.len() as u64).min(resp.capacity()) as usize;
        resp.put(&r[..n]).map_err(|e| QueueError::Memory(e.0))?;
        Ok((n as u64 + data.written).min(u64::from(u32::MAX)) as u32)
    }

    /// Serves one control-queue chain; returns the bytes written.
    fn serve_ctrl(&mut self, chain: &DescChain, mem: &GuestMemoryMmap) -> Result<u32, QueueError> {
        let (readable, writable) = split(chain)?;
        let bad = |what| QueueError::BadRequest {
            head: chain.head,
            what,
        };
        let mut resp = GuestBuf::new(writable, mem);
        if resp.capacity() == 0 {
            return Err(bad("no room for a control response"));
        }
        let mut req = [0u8; 24];
        let got = gather(readable, mem, &mut req)?;
        let kind = u32::from_le_bytes(req[0..4].try_into().expect("4 bytes"));
        let reply: Vec<u8> = match kind {
            // virtio_scsi_ctrl_tmf_req: type, subtype, lun, tag.
            VIRTIO_SCSI_T_TMF if got >= 24 => {
                // Commands complete at once, so there is never anything
                // to abort or reset.
                let r = if is_cdrom(&req[8..16]) {
                    VIRTIO_SCSI_S_FUNCTION_COMPLETE
                } else {
                    VIRTIO_SCSI_S_BAD_TARGET
                };
                vec![r]
            }
            // virtio_scsi_ctrl_an_req: type, lun, event_requested; the
            // answer: event_actual (none), response.
            VIRTIO_SCSI_T_AN_QUERY | VIRTIO_SCSI_T_AN_SUBSCRIBE if got >= 16 => {
                vec![0, 0, 0, 0, VIRTIO_SCSI_S_OK]
            }
            _ => {
                log::debug!("vioscsi: control request type {kind} of {got} bytes");
                // The response byte sits where this type would have it.
                let at = if kind == VIRTIO_SCSI_T_TMF { 0 } else { 4 };
                let mut v = vec![0u8; at + 1];
                v[at] = VIRTIO_SCSI_S_FUNCTION_REJECTED;
                v
            }
        };
        let n = (reply.len() as u64).min(resp.capacity()) as usize;
        resp.put(&reply[..n]).map_err(|e| QueueError::Memory(e.0))?;
        Ok(n as u32)
    }
}

/// The chain's readable buffers, then its writable ones: a readable
/// buffer after a writable one breaks virtio's rule and the device
/// cannot tell what the driver meant.
fn split(chain: &DescChain) -> Result<(&[Desc], &[Desc]), QueueError> {
    let first_w = chain
        .descs
        .iter()
        .position(|d| d.writable)
        .unwrap_or(chain.descs.len());
    let (r, w) = chain.descs.split_at(first_w);
    if w.iter().any(|d| !d.writable) {
        return Err(QueueError::BadRequest {
            head: chain.head,
            what: "device-readable buffer after a writable one",
        });
    }
    Ok((r, w))
}

/// Reads the start of the readable buffers into `out`; returns how many
/// bytes there were (at most `out.len()`).
fn gather(descs: &[Desc], mem: &GuestMemoryMmap, out: &mut [u8]) -> Result<usize, QueueError> {
    let mut got = 0;
    for d in descs {
        if got == out.len() {
            break;
        }
        let n = (d.len as usize).min(out.len() - got);
        mem.read_slice(&mut out[got..got + n], GuestAddress(d.addr))
            .map_err(|e| QueueError::Memory(e.to_string()))?;
        got += n;
    }
    Ok(got)
}

/// Device-writable buffers seen as one stream, from some offset on.
struct GuestBuf<'a> {
    descs: &'a [Desc],
    mem: &'a GuestMemoryMmap,
    /// Where writing starts in the stream.
    start: u64,
    written: u64,
}

impl<'a> GuestBuf<'a> {
    fn new(descs: &'a [Desc], mem: &'a GuestMemoryMmap) -> Self {
        GuestBuf {
            descs,
            mem,
            start: 0,
            written: 0,
        }
    }

    fn total(&self) -> u64 {
        self.descs.iter().map(|d| u64::from(d.len)).sum()
    }

    /// The same buffers from `offset` on (empty past their end).
    fn after(&self, offset: u64) -> GuestBuf<'a> {
        GuestBuf {
            start: offset.min(self.total()),
            ..GuestBuf::new(self.descs, self.mem)
        }
    }
}

impl DataIn for GuestBuf<'_> {
    fn capacity(&self) -> u64 {
        self.total() - self.start
    }

    fn put(&mut self, mut data: &[u8]) -> Result<(), TransferError> {
        let mut pos = self.start + self.written;
        let mut base = 0u64;
        for d in self.descs {
            if data.is_empty() {
                break;
            }
            let len = u64::from(d.len);
            if pos < base + len {
                let off = pos - base;
                let n = (len - off).min(data.len() as u64) as usize;
                self.mem
                    .write_slice(&data[..n], GuestAddress(d.addr + off))
                    .map_err(|e| TransferError(e.to_string()))?;
                data = &data[n..];
                pos += n as u64;
                self.written += n as u64;
            }
            base += len;
        }
        if data.is_empty() {
            Ok(())
        } else {
            Err(TransferError(format!(
                "{} bytes past the end of the buffers",
                data.len()
            )))
        }
    }
}

impl VirtioDevice for Vioscsi {
    fn name(&self) -> &'static str {
        "vioscsi"
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![VIOSCSI_QUEUE_SIZE; VIOSCSI_QUEUES]
    }

    fn max_chain_bytes(&self) -> u64 {
        VIOSCSI_MAX_REQUEST
    }

    fn config_len(&self) -> u32 {
        VIOSCSI_CONFIG_LEN
    }

    fn read_config(&self, offset: u32) -> u8 {
        self.config().get(offset as usize).copied().unwrap_or(0xff)
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut VirtQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        // Event buffers wait for events that never come.
        if index == VIOSCSI_EVENT_QUEUE {
            return Ok(false);
        }
        let mut used = false;
        while let Some(chain) = queue.pop(mem, self.max_chain_bytes())? {
            let len = if index == VIOSCSI_CONTROL_QUEUE {
                self.serve_ctrl(&chain, mem)?
            } else {
                self.serve_cmd(&chain, mem)?
            };
            queue.add_used(mem, chain.head, len)?;
            used = true;
        }
        Ok(used)
    }

    fn reset(&mut self) {
        self.cdrom.reset();
    }
}

/// The SCSI layer's constants the tests and callers name through here.
pub use scsi::{SCSI_CHECK_CONDITION, SCSI_GOOD};

#[cfg(test)]
mod tests;
