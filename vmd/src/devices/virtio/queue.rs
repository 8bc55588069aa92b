//! A split virtqueue as a device sees it: rust-vmm's `virtio-queue` for
//! the ring walking, with every chain a driver offers checked before a
//! device touches it.
//!
//! `virtio-queue` already refuses an avail index more than a queue ahead,
//! and its chain iterator stops at an out-of-range `next`, after as many
//! descriptors as the queue holds (a loop) or at 4 GiB; but it stops
//! silently, like the end of a good chain.  [`VirtQueue::pop`] tells them
//! apart (a chain whose last descriptor still has NEXT, or no descriptor
//! at all, was cut short) and also checks that each buffer lies in guest
//! memory and that the chain stays under the device's limit, so a device
//! only ever sees [`DescChain`]s it can use as they are.
use std::sync::atomic::Ordering;
use virtio_queue::{Error as VqError, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};

/// What is wrong with a queue, as the driver left it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("avail index {avail} is more than {size} entries past {next}")]
    WildAvailIndex { avail: u16, next: u16, size: u16 },
    #[error("descriptor chain from head {0} loops or leaves the descriptor table")]
    BrokenChain(u16),
    #[error("descriptor chain from head {head} has a buffer at 0x{addr:x} length {len} outside guest memory")]
    OutOfRange { head: u16, addr: u64, len: u32 },
    #[error("descriptor chain from head {head} carries {bytes} bytes, more than {limit}")]
    Oversized { head: u16, bytes: u64, limit: u64 },
    #[error(
        "bad virtqueue of size {size}: descriptors 0x{desc:x}, avail 0x{avail:x}, used 0x{used:x}"
    )]
    BadRings {
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    },
    #[error("virtqueue access failed: {0}")]
    Memory(String),
    #[error("malformed request from head {head}: {what}")]
    BadRequest { head: u16, what: &'static str },
}

/// One buffer of a chain, checked to lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (VRING_DESC_F_WRITE).
    pub writable: bool,
}

/// A checked descriptor chain: its head index (for the used ring) and
/// its buffers in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescChain {
    pub head: u16,
    pub descs: Vec<Desc>,
}

impl DescChain {
    /// Total bytes of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| d.writable)
            .map(|d| u64::from(d.len))
            .sum()
    }
}

/// A split virtqueue with the registers the driver programs.
pub struct VirtQueue {
    queue: Queue,
    max_size: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    ready: bool,
}

impl VirtQueue {
    /// A queue of at most `max_size` entries (a power of two, ≤ 32768).
    pub fn new(max_size: u16) -> Self {
        let queue = Queue::new(max_size).unwrap_or_else(|_| {
            // Device code picks the sizes; an invalid one is a bug here,
            // so fall back to something that works rather than panic.
            log::error!("virtio: invalid queue size {max_size}, using 64");
            Queue::new(64).expect("64 is a valid queue size")
        });
        let max_size = queue.max_size();
        VirtQueue {
            queue,
            max_size,
            size: max_size,
            desc: 0,
            avail: 0,
            used: 0,
            ready: false,
        }
    }

    /// Back to the state after device reset: disabled, full size, no
    /// addresses, ring positions 0.
    pub fn reset(&mut self) {
        self.queue.reset();
        self.size = self.max_size;
        self.desc = 0;
        self.avail = 0;
        self.used = 0;
        self.ready = false;
    }

    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// The driver's queue_size write: a power of two no larger than the
    /// maximum, before the queue is enabled.  False if refused.
    pub fn set_size(&mut self, size: u16) -> bool {
        if self.ready || size == 0 || size > self.max_size || !size.is_power_of_two() {
            return false;
        }
        self.size = size;
        true
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    pub fn desc_addr(&self) -> u64 {
        self.desc
    }
    pub fn avail_addr(&self) -> u64 {
        self.avail
    }
    pub fn used_addr(&self) -> u64 {
        self.used
    }

    /// Sets the low (`high` false) or high half of a ring address:
    /// `which` 0 = descriptor table, 1 = avail ring, 2 = used ring.  Taken
    /// only while the queue is disabled, as the driver must.
    pub fn set_addr_half(&mut self, which: u8, high: bool, value: u32) {
        if self.ready {
            return;
        }
        let field = match which {
            0 => &mut self.desc,
            1 => &mut self.avail,
            _ => &mut self.used,
        };
        *field = if high {
            (*field & 0xffff_ffff) | u64::from(value) << 32
        } else {
            (*field & !0xffff_ffff) | u64::from(value)
        };
    }

    /// queue_enable = 1: checks the rings (alignment, and that each lies
    /// in guest memory) and enables the queue, or says what is wrong.
    pub fn enable<M: GuestMemory>(&mut self, mem: &M) -> Result<(), QueueError> {
        let bad = || QueueError::BadRings {
            size: self.size,
            desc: self.desc,
            avail: self.avail,
            used: self.used,
        };
        let n = u64::from(self.size);
        // Descriptor table, avail ring (flags, idx, ring, used_event),
        // used ring (flags, idx, ring, avail_event).
        let spans = [
            (self.desc, 16 * n),
            (self.avail, 6 + 2 * n),
            (self.used, 6 + 8 * n),
        ];
        for (addr, len) in spans {
            if addr.checked_add(len).is_none()
                || !mem.check_range(GuestAddress(addr), len as usize, Permissions::ReadWrite)
            {
                return Err(bad());
            }
        }
        let q = &mut self.queue;
        q.try_set_size(self.size).map_err(|_| bad())?;
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|_| bad())?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .map_err(|_| bad())?;
        q.try_set_used_ring_address(GuestAddress(self.used))
            .map_err(|_| bad())?;
        q.set_next_avail(0);
        q.set_next_used(0);
        q.set_ready(true);
        // A used ring the driver reuses may still say NO_NOTIFY from a
        // device that polled it before a reset.
        let _ = q.enable_notification(mem);
        self.ready = true;
        Ok(())
    }

    /// The next chain the driver made available, checked; None when the
    /// driver has offered nothing new.  `limit` caps the chain's total
    /// length.  A chain that fails a check is consumed and reported.
    pub fn pop<M: GuestMemory>(
        &mut self,
        mem: &M,
        limit: u64,
    ) -> Result<Option<DescChain>, QueueError> {
        if !self.ready {
            return Ok(None);
        }
        let next = self.queue.next_avail();
        let size = self.size;
        let chain = match self.queue.iter(mem) {
            Ok(mut it) => it.next(),
            Err(VqError::InvalidAvailRingIndex) => {
                let avail = self
                    .queue
                    .avail_idx(mem, Ordering::Acquire)
                    .map(|w| w.0)
                    .unwrap_or(0);
                return Err(QueueError::WildAvailIndex { avail, next, size });
            }
            Err(e) => return Err(QueueError::Memory(e.to_string())),
        };
        let Some(chain) = chain else {
            return Ok(None);
        };
        let head = chain.head_index();
        let mut descs = Vec::new();
        let mut total: u64 = 0;
        let mut more = true;
        for d in chain {
            total += u64::from(d.len());
            if total > limit {
                return Err(QueueError::Oversized {
                    head,
                    bytes: total,
                    limit,
                });
            }
            let addr = d.addr().0;
            if d.len() > 0
                && (addr.checked_add(u64::from(d.len())).is_none()
                    || !mem.check_range(d.addr(), d.len() as usize, Permissions::ReadWrite))
            {
                return Err(QueueError::OutOfRange {
                    head,
                    addr,
                    len: d.len(),
                });
            }
            more = d.has_next();
            descs.push(Desc {
                addr,
                len: d.len(),
                writable: d.is_write_only(),
            });
        }
        if descs.is_empty() || more {
            return Err(QueueError::BrokenChain(head));
        }
        Ok(Some(DescChain { head, descs }))
    }

    /// Whether the driver has made a chain available that the device has
    /// not taken yet (without taking it): a NIC reads a frame from its
    /// port only when it has somewhere to put it.
    pub fn has_available<M: GuestMemory>(&self, mem: &M) -> bool {
        self.ready
            && self
                .queue
                .avail_idx(mem, Ordering::Acquire)
                .is_ok_and(|w| w.0 != self.queue.next_avail())
    }

    /// Returns a chain to the driver with `len` bytes written.
    pub fn add_used<M: GuestMemory>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        self.queue
            .add_used(mem, head, len)
            .map_err(|e| QueueError::Memory(e.to_string()))
    }

    /// Where the device is in the avail ring (for tests and dumps).
    pub fn next_avail(&self) -> u16 {
        self.queue.next_avail()
    }

    /// Where the device is in the used ring.
    pub fn next_used(&self) -> u16 {
        self.queue.next_used()
    }

    /// Asks the driver not to notify (VIRTQ_USED_F_NO_NOTIFY) while the
    /// device looks at the avail ring on its own.
    pub fn suppress_notifications<M: GuestMemory>(&mut self, mem: &M) {
        if self.ready {
            // The rings were checked at enable: this cannot fail.
            let _ = self.queue.disable_notification(mem);
        }
    }

    /// Asks for notifications again; whether the driver made chains
    /// available before it could see that (they would get no kick).
    pub fn resume_notifications<M: GuestMemory>(&mut self, mem: &M) -> bool {
        self.ready && self.queue.enable_notification(mem).unwrap_or(true)
    }

    /// Whether the driver made chains available the device has not taken.
    pub fn has_avail<M: GuestMemory>(&self, mem: &M) -> bool {
        self.ready
            && self
                .queue
                .avail_idx(mem, Ordering::Acquire)
                .is_ok_and(|i| i.0 != self.queue.next_avail())
    }

    /// Whether the driver wants an interrupt for what was just used
    /// (always, without EVENT_IDX, which vmd does not offer).
    pub fn needs_notification<M: GuestMemory>(&mut self, mem: &M) -> bool {
        self.queue.needs_notification(mem).unwrap_or(true)
    }
}
