//! A BIOS image (SeaBIOS; `/etc/firmware/vmm-bios` on OpenBSD) placed as
//! era-B vmd does: the whole image ending at 1 MiB and a second copy ending
//! at 4 GiB, started in the flat16 state at the reset vector.
use super::{regs, write, LoadError};
use crate::vm::memmap::{GB, MB};
use vmm_sys::abi::vcpu_reg_state;
use vmm_sys::GuestMemory;

/// Smallest image vmd accepts (an image must at least hold the reset
/// vector's jump).
pub const MIN_SIZE: usize = 15;

pub fn load(mem: &GuestMemory, image: &[u8]) -> Result<vcpu_reg_state, LoadError> {
    // The copy below 1 MiB may not reach below the top of low memory.
    let limit = (MB - crate::vm::memmap::LOWMEM) as usize;
    if image.len() < MIN_SIZE || image.len() > limit {
        return Err(LoadError::Size {
            what: "BIOS image",
            size: image.len(),
            limit,
        });
    }
    write(mem, MB - image.len() as u64, image)?;
    write(mem, 4 * GB - image.len() as u64, image)?;
    Ok(regs::flat16())
}
