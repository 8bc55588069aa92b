//! viornd: the virtio entropy device, in the VM process as in vmd.  One
//! queue of 64 entries; each chain's device-writable buffers are filled
//! from the host's CSPRNG (getrandom(2) on Linux, getentropy(2) on
//! OpenBSD, through the `getrandom` crate) and returned with the length
//! written.  vmd caps a chain at MAXPHYS (it ends the VM beyond that; a
//! larger chain here puts the device in NEEDS_RESET instead).
use super::queue::{QueueError, VirtQueue};
use super::transport::VirtioDevice;
use super::{MAXPHYS, VIRTIO_F_VERSION_1};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const VIORND_QUEUE_SIZE: u16 = 64;

/// Where the random bytes come from (the host CSPRNG, or a test's).
pub type EntropySource = Box<dyn FnMut(&mut [u8]) -> Result<(), String> + Send>;

pub struct Viornd {
    source: EntropySource,
}

impl Default for Viornd {
    fn default() -> Self {
        Self::new()
    }
}

impl Viornd {
    /// A viornd drawing from the host's CSPRNG.
    pub fn new() -> Self {
        Self::with_source(Box::new(|buf| {
            getrandom::fill(buf).map_err(|e| format!("getrandom: {e}"))
        }))
    }

    pub fn with_source(source: EntropySource) -> Self {
        Viornd { source }
    }
}

impl VirtioDevice for Viornd {
    fn name(&self) -> &'static str {
        "viornd"
    }

    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![VIORND_QUEUE_SIZE]
    }

    fn max_chain_bytes(&self) -> u64 {
        MAXPHYS
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queue: &mut VirtQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        let mut buf = Vec::new();
        while let Some(chain) = queue.pop(mem, self.max_chain_bytes())? {
            let mut written: u32 = 0;
            for d in chain.descs.iter().filter(|d| d.writable) {
                buf.resize(d.len as usize, 0);
                if let Err(e) = (self.source)(&mut buf) {
                    // No entropy: give the buffer back empty rather than
                    // hand the guest predictable bytes.
                    log::warn!("viornd: {e}");
                    break;
                }
                mem.write_slice(&buf, GuestAddress(d.addr))
                    .map_err(|e| QueueError::Memory(e.to_string()))?;
                written += d.len;
            }
            queue.add_used(mem, chain.head, written)?;
            used = true;
        }
        Ok(used)
    }
}
