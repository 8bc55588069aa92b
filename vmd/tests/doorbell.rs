//! Doorbells (vm/devproc/doorbell.rs) against the real backend: they
//! follow the device's I/O BAR, a move that cannot be completed leaves
//! none of them attached (a hostile guest may overlap two devices'
//! BARs), and dropping them frees the port.  Whether a guest's write rings
//! one is the regress suite's `pio::queue_notify`.
//!
//! Needs /dev/kvm; reported as ignored with the reason where it is
//! missing, or where the backend has no doorbells (vmm(4)).
mod support;

use libtest_mimic::{Arguments, Failed, Trial};
use std::os::fd::AsFd;
use std::sync::Arc;
use vmd::vm::devproc::doorbell::Doorbells;
use vmm_sys::abi::*;
use vmm_sys::Vmm;

/// A VM with 1 MiB of RAM and one vCPU that never runs.
fn vm(vmm: &Vmm) -> Result<u32, Failed> {
    let mut vcp = vm_create_params {
        vcp_ncpus: 1,
        ..Default::default()
    };
    vcp.vcp_memranges[0] = vm_mem_range {
        vmr_gpa: 0,
        vmr_size: 1 << 20,
        vmr_type: VM_MEM_RAM as i32,
        ..Default::default()
    };
    vcp.vcp_nmemranges = 1;
    assert!(vcp.set_name("doorbells"));
    vmm.create(&mut vcp)?;
    Ok(vcp.vcp_id)
}

fn follow_the_bar() -> Result<(), Failed> {
    let vmm = Arc::new(Vmm::open()?);
    let id = vm(&vmm)?;
    let ended = terminate_on_drop(&vmm, id);
    let (mut a, a_fds) = Doorbells::new(&vmm, id, 2, "a").ok_or("no doorbells")?;
    let (mut b, _b_fds) = Doorbells::new(&vmm, id, 2, "b").ok_or("no doorbells")?;
    assert_eq!(a_fds.len(), 2);
    // At the notify register of the BAR, 0x100 into it.
    a.move_to(Some(0x1000));
    if a.port() != Some(0x1100) {
        return Err(format!("a at {:x?}, not 0x1100", a.port()).into());
    }
    // b's BAR over a's: taken, so b has none.
    b.move_to(Some(0x1000));
    if b.port().is_some() {
        return Err("b attached over a".into());
    }
    // Queue 1 taken at 0x3100 by someone else: b attaches queue 0 there,
    // fails on queue 1 and takes queue 0 back.
    let other = vmm.queue_notify_fd()?;
    vmm.set_queue_notify(id, 0x3100, 1, other.as_fd(), true)?;
    b.move_to(Some(0x3000));
    if b.port().is_some() {
        return Err("b attached with its queue 1 taken".into());
    }
    vmm.set_queue_notify(id, 0x3100, 1, other.as_fd(), false)?;
    // Were queue 0 still attached, this would fail with EEXIST on it.
    b.move_to(Some(0x3000));
    if b.port() != Some(0x3100) {
        return Err(format!("b at {:x?}, not 0x3100", b.port()).into());
    }
    // Sized (out of the window), then back: detached, then attached.
    a.move_to(None);
    if a.port().is_some() {
        return Err("a still attached while its BAR is sized".into());
    }
    a.move_to(Some(0x1000));
    // Dropped: the port is free for anyone.
    drop(a);
    vmm.set_queue_notify(id, 0x1100, 0, other.as_fd(), true)?;
    vmm.set_queue_notify(id, 0x1100, 1, other.as_fd(), true)?;
    drop(b);
    drop(ended);
    Ok(())
}

/// Terminates VM `id` when dropped.
fn terminate_on_drop(vmm: &Arc<Vmm>, id: u32) -> impl Drop {
    struct End(Arc<Vmm>, u32);
    impl Drop for End {
        fn drop(&mut self) {
            let _ = self.0.terminate(self.1);
        }
    }
    End(vmm.clone(), id)
}

fn main() {
    let args = Arguments::from_args();
    let skip = support::missing_vmm().or_else(|| {
        let vmm = Vmm::open().ok()?;
        vmm.queue_notify_fd()
            .err()
            .map(|e| format!("the backend has no doorbells: {e}"))
    });
    let t = support::skip_if(
        Trial::test("doorbells_follow_the_bar", follow_the_bar),
        skip,
    );
    libtest_mimic::run(&args, vec![t]).exit();
}
