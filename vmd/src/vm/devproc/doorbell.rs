//! Doorbells: a device process's queue notifications without the VM
//! process.  Where vmm-sys can have the kernel take a notify write (the
//! Linux shim: an eventfd per queue, `KVM_IOEVENTFD` on the write of that
//! queue's index to the notify register), the guest's kick signals the
//! device process directly: no exit to the VM process, no KICK message,
//! the vCPU goes straight back to the guest.  The VM process keeps the
//! doorbells attached to wherever the guest put the device's I/O BAR;
//! writes the kernel does not take (another width, a queue without a
//! doorbell, a BAR out of the window) still exit and go as KICKs.
//! Under vmm(4) there are none, and every kick goes as on OpenBSD.
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::devices::virtio::VIO1_NOTIFY_BAR_OFFSET;
use vmm_sys::Vmm;

/// A device's doorbells as the VM process holds them: queue `i` rings
/// `fds[i]` when attached at port `at`.
pub struct Doorbells {
    vmm: Arc<Vmm>,
    vm_id: u32,
    fds: Vec<OwnedFd>,
    at: Option<u16>,
    name: String,
}

impl Doorbells {
    /// One doorbell per queue of device `name`, and the descriptors the
    /// device process waits on (queue `i`'s at `i`).  None where the
    /// backend has none (vmm(4)), or if one cannot be made (logged):
    /// kicks then go as messages.
    pub fn new(
        vmm: &Arc<Vmm>,
        vm_id: u32,
        queues: usize,
        name: &str,
    ) -> Option<(Doorbells, Vec<OwnedFd>)> {
        let without = |e: &dyn std::fmt::Display| {
            log::warn!("{name}: no doorbells, kicks go through the VM process: {e}");
            None
        };
        let mut fds = Vec::with_capacity(queues);
        let mut theirs = Vec::with_capacity(queues);
        for _ in 0..queues {
            let fd = match vmm.queue_notify_fd() {
                Ok(fd) => fd,
                Err(e) if e.errno() == libc::EOPNOTSUPP => return None,
                Err(e) => return without(&e),
            };
            match fd.try_clone() {
                Ok(dup) => theirs.push(dup),
                Err(e) => return without(&e),
            }
            fds.push(fd);
        }
        let bells = Doorbells {
            vmm: vmm.clone(),
            vm_id,
            fds,
            at: None,
            name: name.to_string(),
        };
        Some((bells, theirs))
    }

    /// The port the doorbells are attached at, if any.
    pub fn port(&self) -> Option<u16> {
        self.at
    }

    /// The device's I/O BAR now starts at `bar` (None: it does not
    /// decode): the doorbells move to its notify register.  If one
    /// cannot be attached there (another device's BAR overlaps: the
    /// port and queue are taken), none is, and kicks exit.
    pub fn move_to(&mut self, bar: Option<u16>) {
        let port = bar.and_then(|b| b.checked_add(VIO1_NOTIFY_BAR_OFFSET));
        if port == self.at {
            return;
        }
        if let Some(old) = self.at.take() {
            self.detach(old, self.fds.len());
        }
        let Some(port) = port else {
            return;
        };
        for (q, fd) in self.fds.iter().enumerate() {
            if let Err(e) = self
                .vmm
                .set_queue_notify(self.vm_id, port, q as u16, fd.as_fd(), true)
            {
                log::debug!(
                    "{}: doorbells not at port 0x{port:x}, kicks exit: {e}",
                    self.name
                );
                self.detach(port, q);
                return;
            }
        }
        log::debug!("{}: doorbells at port 0x{port:x}", self.name);
        self.at = Some(port);
    }

    /// Detaches the first `n` doorbells from `port`.
    fn detach(&self, port: u16, n: usize) {
        for (q, fd) in self.fds.iter().take(n).enumerate() {
            if let Err(e) = self
                .vmm
                .set_queue_notify(self.vm_id, port, q as u16, fd.as_fd(), false)
            {
                log::debug!("{}: doorbell {q} at port 0x{port:x}: {e}", self.name);
            }
        }
    }
}

impl Drop for Doorbells {
    fn drop(&mut self) {
        if let Some(port) = self.at.take() {
            self.detach(port, self.fds.len());
        }
    }
}
