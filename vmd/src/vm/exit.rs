//! `vcpu_exit`: what the VM process does with each exit vmm(4) reports,
//! dispatched on the VMX and SVM exit reasons as vmd does.  It is a plain
//! function over the exit record so that tests feed it synthetic exits.
use crate::x86::MmioError;
use vmm_sys::abi::*;

/// What the vCPU loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Run the vCPU again.
    Continue,
    /// The guest executed HLT: park the vCPU until an interrupt arrives.
    Halt,
    /// Triple fault or shutdown: the VM process exits with EAGAIN and vmd
    /// restarts the VM.
    Reboot,
}

/// Why the VM ends.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExitError {
    /// `VEE_FAULT_PROTECT`: a protection fault vmd cannot resolve (EFAULT).
    #[error("EPT violation: rip=0x{rip:x}")]
    Protection { rip: u64 },
    /// `VEE_FAULT_INVALID` or a fault type vmd does not know.
    #[error("invalid fault_type {fault_type} at rip=0x{rip:x}")]
    InvalidFaultType { fault_type: u8, rip: u64 },
    /// String or REP port I/O that could not be emulated.
    #[error("can't emulate REP prefixed IN(S)/OUT(S) on port 0x{port:x} at rip=0x{rip:x}: {why}")]
    StringIo { port: u16, rip: u64, why: MmioError },
    /// The MMIO emulator could not complete the access.
    #[error("{0}")]
    Mmio(MmioError),
}

impl ExitError {
    /// The errno the VM process exits with: the emulator's own for an
    /// MMIO or string I/O failure (EFAULT for memory it cannot reach).
    pub fn errno(&self) -> i32 {
        match self {
            ExitError::Protection { .. } => libc::EFAULT,
            ExitError::InvalidFaultType { .. } => libc::EINVAL,
            ExitError::StringIo { why, .. } => why.errno(),
            ExitError::Mmio(e) => e.errno(),
        }
    }
}

/// The device side of exit handling.
pub trait ExitHandler {
    /// A port access: for IN, store the result in `vei.vei_data` (merged by
    /// size); for OUT, consume it.
    fn port_io(&mut self, vei: &mut vm_exit_inout);
    /// An MMIO-assist exit: emulate the instruction, update `exit.vrs`
    /// (registers and RIP).
    fn mmio(&mut self, exit: &mut vm_exit) -> Result<(), MmioError>;
    /// INS/OUTS, with or without REP.  OpenBSD's vmd refuses them; ours
    /// emulates them (Debian's SeaBIOS reads fw_cfg with `rep insb`),
    /// updating `exit.vrs` — which the caller must write back with
    /// VMM_IOC_WRITEREGS, since vmm(4) reloads only RAX and RIP after an
    /// I/O exit.
    fn string_io(&mut self, exit: &mut vm_exit) -> Result<(), MmioError>;
}

/// Dispatches one exit.  `reason` is `vrp_exit_reason`; VM_EXIT_NONE and
/// VM_EXIT_TERMINATED are the loop's business and never reach here.
pub fn vcpu_exit(
    reason: u16,
    exit: &mut vm_exit,
    h: &mut dyn ExitHandler,
) -> Result<Action, ExitError> {
    let rip = exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize];
    match reason as u32 {
        // Exits vmm(4) reports but vmd has nothing to do for.
        VMX_EXIT_INT_WINDOW | SVM_VMEXIT_VINTR | VMX_EXIT_CPUID | VMX_EXIT_EXTINT
        | SVM_VMEXIT_INTR | SVM_VMEXIT_MSR | SVM_VMEXIT_CPUID => Ok(Action::Continue),
        VMX_EXIT_EPT_VIOLATION | SVM_VMEXIT_NPF => {
            let fault_type = exit.vee().vee_fault_type;
            match fault_type as u32 {
                // The kernel resolved it: nothing to do, and in particular
                // no port I/O handling.
                VEE_FAULT_HANDLED => Ok(Action::Continue),
                VEE_FAULT_PROTECT => Err(ExitError::Protection { rip }),
                VEE_FAULT_MMIO_ASSIST => {
                    h.mmio(exit).map_err(ExitError::Mmio)?;
                    Ok(Action::Continue)
                }
                _ => Err(ExitError::InvalidFaultType { fault_type, rip }),
            }
        }
        VMX_EXIT_IO | SVM_VMEXIT_IOIO => {
            let vei = exit.vei_mut();
            if vei.vei_rep != 0 || vei.vei_string != 0 {
                let port = vei.vei_port;
                h.string_io(exit)
                    .map_err(|why| ExitError::StringIo { port, rip, why })?;
                return Ok(Action::Continue);
            }
            h.port_io(vei);
            // Wrapping, as vmd's `+=` on the register does: RIP comes from
            // the guest and may sit at the top of the address space.
            let len = exit.vei().vei_insn_len as u64;
            exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize] = rip.wrapping_add(len);
            Ok(Action::Continue)
        }
        VMX_EXIT_HLT | SVM_VMEXIT_HLT => Ok(Action::Halt),
        VMX_EXIT_TRIPLE_FAULT | SVM_VMEXIT_SHUTDOWN => Ok(Action::Reboot),
        other => {
            log::debug!("vcpu_exit: unknown exit reason 0x{other:x}");
            Ok(Action::Continue)
        }
    }
}

/// Merges an IN result of `size` bytes into `vei_data`, keeping the upper
/// bytes (vmd's `set_return_data`).
pub fn set_return_data(vei: &mut vm_exit_inout, data: u32) {
    let mask = match vei.vei_size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    vei.vei_data = (vei.vei_data & !mask) | (data & mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec {
        pio: Vec<(u16, u8, u8, u32)>,
        mmio: usize,
        mmio_result: Option<MmioError>,
        strings: usize,
    }

    impl ExitHandler for Rec {
        fn port_io(&mut self, vei: &mut vm_exit_inout) {
            self.pio
                .push((vei.vei_port, vei.vei_dir, vei.vei_size, vei.vei_data));
            if vei.vei_dir as u32 == VEI_DIR_IN {
                set_return_data(vei, 0xAB);
            }
        }
        fn string_io(&mut self, exit: &mut vm_exit) -> Result<(), MmioError> {
            self.strings += 1;
            if exit.vei().vei_port == 0x3f8 {
                return Err(no_ram(0x102));
            }
            exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize] += 2;
            Ok(())
        }
        fn mmio(&mut self, exit: &mut vm_exit) -> Result<(), MmioError> {
            self.mmio += 1;
            exit.vrs.vrs_gprs[VCPU_REGS_RIP as usize] += 3;
            match &self.mmio_result {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            }
        }
    }

    /// An emulator failure with its own errno (EFAULT).
    fn no_ram(rip: u64) -> MmioError {
        MmioError::FetchNotRam {
            rip,
            gva: rip,
            gpa: 0xF000_0000,
        }
    }

    fn exit_at(rip: u64) -> Box<vm_exit> {
        let mut e = Box::<vm_exit>::default();
        e.vrs.vrs_gprs[VCPU_REGS_RIP as usize] = rip;
        e
    }

    fn ept(fault: u32) -> Box<vm_exit> {
        let mut e = exit_at(0x1234);
        e.vee_mut().vee_fault_type = fault as u8;
        e
    }

    #[test]
    fn fault_handled_does_nothing_and_no_port_io() {
        for reason in [VMX_EXIT_EPT_VIOLATION, SVM_VMEXIT_NPF] {
            let mut h = Rec::default();
            let mut e = ept(VEE_FAULT_HANDLED);
            assert_eq!(
                vcpu_exit(reason as u16, &mut e, &mut h),
                Ok(Action::Continue)
            );
            assert!(h.pio.is_empty() && h.mmio == 0);
            assert_eq!(e.vrs.vrs_gprs[VCPU_REGS_RIP as usize], 0x1234);
        }
    }

    #[test]
    fn fault_protect_is_efault_with_rip() {
        let mut h = Rec::default();
        let r = vcpu_exit(
            VMX_EXIT_EPT_VIOLATION as u16,
            &mut ept(VEE_FAULT_PROTECT),
            &mut h,
        );
        let err = r.unwrap_err();
        assert_eq!(err, ExitError::Protection { rip: 0x1234 });
        assert_eq!(err.errno(), libc::EFAULT);
        assert_eq!(err.to_string(), "EPT violation: rip=0x1234");
    }

    #[test]
    fn fault_mmio_assist_emulates() {
        let mut h = Rec::default();
        let mut e = ept(VEE_FAULT_MMIO_ASSIST);
        assert_eq!(
            vcpu_exit(SVM_VMEXIT_NPF as u16, &mut e, &mut h),
            Ok(Action::Continue)
        );
        assert_eq!(h.mmio, 1);
        assert_eq!(e.vrs.vrs_gprs[VCPU_REGS_RIP as usize], 0x1237);
        let invalid = MmioError::InvalidAddress {
            rip: 0x1234,
            gva: 0x10,
            gpa: 0x10,
        };
        h.mmio_result = Some(invalid.clone());
        let r = vcpu_exit(
            SVM_VMEXIT_NPF as u16,
            &mut ept(VEE_FAULT_MMIO_ASSIST),
            &mut h,
        );
        assert_eq!(r, Err(ExitError::Mmio(invalid)));
        assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
        // The emulator's errno reaches the exit status.
        h.mmio_result = Some(no_ram(0x1234));
        let r = vcpu_exit(
            SVM_VMEXIT_NPF as u16,
            &mut ept(VEE_FAULT_MMIO_ASSIST),
            &mut h,
        );
        assert_eq!(r.unwrap_err().errno(), libc::EFAULT);
    }

    #[test]
    fn fault_invalid_or_unknown_is_fatal_with_value() {
        for ft in [VEE_FAULT_INVALID, 7] {
            let mut h = Rec::default();
            let r = vcpu_exit(VMX_EXIT_EPT_VIOLATION as u16, &mut ept(ft), &mut h);
            assert_eq!(
                r,
                Err(ExitError::InvalidFaultType {
                    fault_type: ft as u8,
                    rip: 0x1234
                })
            );
            assert!(h.pio.is_empty() && h.mmio == 0);
        }
        let msg = ExitError::InvalidFaultType {
            fault_type: 7,
            rip: 0x10,
        }
        .to_string();
        assert!(
            msg.contains("fault_type 7") && msg.contains("0x10"),
            "{msg}"
        );
    }

    #[test]
    fn port_io_advances_rip_and_merges_in_data() {
        for reason in [VMX_EXIT_IO, SVM_VMEXIT_IOIO] {
            let mut h = Rec::default();
            let mut e = exit_at(0x100);
            {
                let vei = e.vei_mut();
                vei.vei_dir = VEI_DIR_IN as u8;
                vei.vei_size = 1;
                vei.vei_port = 0x71;
                vei.vei_data = 0x1234_5678;
                vei.vei_insn_len = 2;
            }
            assert_eq!(
                vcpu_exit(reason as u16, &mut e, &mut h),
                Ok(Action::Continue)
            );
            assert_eq!(e.vei().vei_data, 0x1234_56AB);
            assert_eq!(e.vrs.vrs_gprs[VCPU_REGS_RIP as usize], 0x102);
            assert_eq!(h.pio, vec![(0x71, 1, 1, 0x1234_5678)]);
        }
        // RIP at the top of the address space wraps, as in vmd.
        let mut h = Rec::default();
        let mut e = exit_at(u64::MAX - 1);
        e.vei_mut().vei_insn_len = 3;
        assert_eq!(
            vcpu_exit(VMX_EXIT_IO as u16, &mut e, &mut h),
            Ok(Action::Continue)
        );
        assert_eq!(e.vrs.vrs_gprs[VCPU_REGS_RIP as usize], 1);
    }

    #[test]
    fn string_io_goes_to_its_emulation_and_its_failure_is_fatal() {
        let mut h = Rec::default();
        let mut e = exit_at(0x100);
        e.vei_mut().vei_string = 1;
        e.vei_mut().vei_rep = 1;
        e.vei_mut().vei_port = 0x511;
        assert_eq!(
            vcpu_exit(SVM_VMEXIT_IOIO as u16, &mut e, &mut h),
            Ok(Action::Continue)
        );
        assert_eq!(
            e.vrs.vrs_gprs[VCPU_REGS_RIP as usize], 0x102,
            "RIP is the emulation's"
        );
        assert!(h.pio.is_empty());
        e.vei_mut().vei_port = 0x3f8;
        let r = vcpu_exit(VMX_EXIT_IO as u16, &mut e, &mut h);
        assert_eq!(
            r,
            Err(ExitError::StringIo {
                port: 0x3f8,
                rip: 0x102,
                why: no_ram(0x102)
            })
        );
        assert_eq!(r.unwrap_err().errno(), libc::EFAULT);
        assert_eq!(h.strings, 2);
    }

    #[test]
    fn hlt_triple_fault_and_ignored_exits() {
        let mut h = Rec::default();
        let mut e = exit_at(0);
        assert_eq!(
            vcpu_exit(VMX_EXIT_HLT as u16, &mut e, &mut h),
            Ok(Action::Halt)
        );
        assert_eq!(
            vcpu_exit(SVM_VMEXIT_HLT as u16, &mut e, &mut h),
            Ok(Action::Halt)
        );
        assert_eq!(
            vcpu_exit(VMX_EXIT_TRIPLE_FAULT as u16, &mut e, &mut h),
            Ok(Action::Reboot)
        );
        assert_eq!(
            vcpu_exit(SVM_VMEXIT_SHUTDOWN as u16, &mut e, &mut h),
            Ok(Action::Reboot)
        );
        for r in [
            VMX_EXIT_INT_WINDOW,
            SVM_VMEXIT_VINTR,
            VMX_EXIT_CPUID,
            SVM_VMEXIT_MSR,
            0x3ff,
        ] {
            assert_eq!(vcpu_exit(r as u16, &mut e, &mut h), Ok(Action::Continue));
        }
        assert!(h.pio.is_empty());
    }
}
