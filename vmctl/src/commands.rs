//! The commands that talk to vmd (main.c `vmmaction` and vmctl.c's
//! completion handlers): what each sends, what it waits for, and what it
//! prints.
//!
//! | command | sends | waits for |
//! |---|---|---|
//! | status, show, console, stop -a | `GET_INFO_VM_REQUEST` (no filter) | `GET_INFO_VM_DATA`* then `GET_INFO_VM_END_DATA` |
//! | start | `START_VM_REQUEST` + boot image fd | `START_VM_RESPONSE` |
//! | stop | `TERMINATE_VM_REQUEST` | `TERMINATE_VM_RESPONSE` or `TERMINATE_VM_EVENT` |
//! | wait | `WAIT_VM_REQUEST` | `TERMINATE_VM_EVENT` (or `TERMINATE_VM_RESPONSE`) |
//! | pause, unpause | `PAUSE_VM`, `UNPAUSE_VM` | `PAUSE_VM_RESPONSE`, `UNPAUSE_VM_RESPONSE` |
//! | load, reload, reset, log | `LOAD`, `RELOAD`, `CTL_RESET`, `CTL_VERBOSE` | any one message (`CTL_OK`) |
//!
//! `CTL_FAIL` may answer any of them ([`Control::recv`]).

use std::io::Write;
use std::os::fd::OwnedFd;

use vmd_proto::msg::{
    VmopId, VmopInfoResult, VmopResult, VMD_BIOS_MISSING, VMD_CDROM_INVALID, VMD_CDROM_MISSING,
    VMD_DISK_MISSING, VMD_PARENT_INVALID, VMD_VM_STOP_INVALID, VMOP_FORCE, VMOP_WAIT,
};
use vmd_proto::Message;

use crate::args::{Action, StartArgs, Target};
use crate::console;
use crate::control::Control;
use crate::fail::{strerror, warnx, Fail};
use crate::format::{self, SystemNames};
use crate::start;

const UNEXPECTED: &str = "unexpected response received from vmd";
/// How many VMs `stop -a` stops at a time (a connection each).
const STOP_ALL_AT_ONCE: usize = 128;

/// Runs `action` against vmd; the exit status.
pub fn run(
    action: Action,
    ctl: &mut Control,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, Fail> {
    match action {
        Action::Status { running, target } => {
            let Some(list) = get_info(ctl)? else {
                return Ok(1);
            };
            let (table, found) = format::status_table(&list, &target, running, &SystemNames);
            let _ = out.write_all(table.as_bytes());
            Ok(if found { 0 } else { 1 })
        }
        Action::Console(target) => {
            let Some(list) = get_info(ctl)? else {
                return Ok(1);
            };
            let named = target.id != 0 || target.name.as_deref().is_some_and(|n| !n.is_empty());
            match list.iter().find(|vm| {
                named && format::matches(&target, &vm.name, vm.id) && !vm.ttyname.is_empty()
            }) {
                Some(vm) => console::open(&vm.ttyname, out, err),
                None => Err(Fail::errx("console not found")),
            }
        }
        Action::Stop {
            target: None,
            flags,
        } => {
            let Some(list) = get_info(ctl)? else {
                return Ok(1);
            };
            // vmctl stops each running VM by name and ignores the results.
            // All at once, each on its own connection: one after the other,
            // VMs that take their time to shut down would add up past any
            // service manager's stop timeout.  Lines come in list order.
            let running: Vec<&VmopInfoResult> =
                list.iter().filter(|vm| format::is_running(vm)).collect();
            for batch in running.chunks(STOP_ALL_AT_ONCE) {
                let mut pending = Vec::new();
                for vm in batch {
                    let mut c = ctl.another()?;
                    let id = VmopId {
                        id: 0,
                        name: vm.name.clone(),
                        uid: 0,
                        flags: flags & (VMOP_FORCE | VMOP_WAIT),
                    };
                    c.send(&Message::TerminateVmRequest(id), Vec::new())?;
                    pending.push((&vm.name, c));
                }
                for (name, mut c) in pending {
                    let msg = c.recv();
                    let _ = write!(err, "stopping vm {name}: ");
                    terminate_complete(&msg?, flags, err);
                }
            }
            Ok(0)
        }
        Action::Stop {
            target: Some(t),
            flags,
        } => stop(ctl, &t, flags, err),
        Action::Wait(t) => {
            let _ = match &t.name {
                Some(n) => write!(err, "waiting for vm {n}: "),
                None => write!(err, "waiting for vm: "),
            };
            ctl.send(&Message::WaitVmRequest(vmop_id(&t, 0)), Vec::new())?;
            let msg = ctl.recv()?;
            Ok(terminate_complete(&msg, VMOP_WAIT, err))
        }
        Action::Pause(t) => {
            ctl.send(&Message::PauseVm(vmop_id(&t, 0)), Vec::new())?;
            let msg = ctl.recv()?;
            Ok(pause_complete(&msg, err))
        }
        Action::Unpause(t) => {
            ctl.send(&Message::UnpauseVm(vmop_id(&t, 0)), Vec::new())?;
            let msg = ctl.recv()?;
            Ok(pause_complete(&msg, err))
        }
        Action::Start(a) => start_vm(&a, ctl, out, err),
        Action::Load(path) => simple(ctl, Message::Load(path)),
        Action::Log(level) => simple(ctl, Message::CtlVerbose(level)),
        Action::Reload => simple(ctl, Message::Reload),
        Action::Reset(mode) => simple(ctl, Message::CtlReset(mode)),
        Action::Create(_) => Err(Fail::errx("invalid action")),
    }
}

fn vmop_id(t: &Target, flags: u32) -> VmopId {
    VmopId {
        id: t.id,
        name: t.name.clone().unwrap_or_default(),
        uid: 0,
        flags,
    }
}

/// A request answered by one message, whatever it is.
fn simple(ctl: &mut Control, msg: Message) -> Result<i32, Fail> {
    ctl.send(&msg, Vec::new())?;
    ctl.recv()?;
    Ok(0)
}

/// Every VM vmd knows, or `None` after an answer that is not part of the
/// list (vmctl then exits 1 without a word).
fn get_info(ctl: &mut Control) -> Result<Option<Vec<VmopInfoResult>>, Fail> {
    ctl.send(&Message::GetInfoVmRequest(None), Vec::new())?;
    let mut list = Vec::new();
    loop {
        match ctl.recv()? {
            Message::GetInfoVmData(vm) => list.push(vm),
            Message::GetInfoVmEndData => return Ok(Some(list)),
            _ => return Ok(None),
        }
    }
}

fn stop(ctl: &mut Control, t: &Target, flags: u32, err: &mut dyn Write) -> Result<i32, Fail> {
    let _ = match &t.name {
        Some(n) => write!(err, "stopping vm {n}: "),
        None => write!(err, "stopping vm: "),
    };
    let id = vmop_id(t, flags & (VMOP_FORCE | VMOP_WAIT));
    ctl.send(&Message::TerminateVmRequest(id), Vec::new())?;
    let msg = ctl.recv()?;
    Ok(terminate_complete(&msg, flags, err))
}

/// The end of the `stopping vm ...: ` or `waiting for vm ...: ` line
/// for vmd's answer; the exit status.
pub fn terminate_complete(msg: &Message, flags: u32, err: &mut dyn Write) -> i32 {
    let (text, status) = match msg {
        Message::TerminateVmResponse(VmopResult { result, id, .. }) => match *result {
            0 => (format!("requested to shutdown vm {}", *id as i32), 0),
            VMD_VM_STOP_INVALID => ("cannot stop vm that is not running".to_string(), 1),
            libc::ENOENT => ("vm not found".to_string(), 1),
            libc::EINTR => ("interrupted call".to_string(), 1),
            e => (format!("failed: {}", strerror(e)), 1),
        },
        Message::TerminateVmEvent(VmopResult { id, .. }) => {
            let id = *id as i32;
            if flags & VMOP_WAIT != 0 {
                (format!("terminated vm {id}"), 0)
            } else if flags & VMOP_FORCE != 0 {
                (format!("forced to terminate vm {id}"), 0)
            } else {
                return 0;
            }
        }
        _ => (UNEXPECTED.to_string(), 1),
    };
    let _ = writeln!(err, "{text}");
    status
}

/// `PAUSE_VM_RESPONSE` / `UNPAUSE_VM_RESPONSE`; the exit status.
pub fn pause_complete(msg: &Message, err: &mut dyn Write) -> i32 {
    let (verb, r) = match msg {
        Message::PauseVmResponse(r) => ("pause", r),
        Message::UnpauseVmResponse(r) => ("unpause", r),
        _ => {
            warnx(err, UNEXPECTED);
            return 1;
        }
    };
    if r.result != 0 {
        warnx(
            err,
            format!("{verb} vm command failed: {}", strerror(r.result)),
        );
        1
    } else {
        warnx(err, format!("{verb}d vm {} successfully", r.id as i32));
        0
    }
}

/// What `START_VM_RESPONSE` reports, when it is not a success.
pub fn start_error(result: i32) -> String {
    match result {
        VMD_BIOS_MISSING => "vmm bios firmware file not found.".to_string(),
        VMD_DISK_MISSING => "could not open disk image(s)".to_string(),
        VMD_CDROM_MISSING => "could not find specified iso image".to_string(),
        VMD_CDROM_INVALID => "specified iso image is not a regular file".to_string(),
        VMD_PARENT_INVALID => "invalid template".to_string(),
        e => format!("start vm command failed: {}", strerror(e)),
    }
}

fn start_vm(
    a: &StartArgs,
    ctl: &mut Control,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, Fail> {
    let (params, kernel) = start::request(a, err)?;
    let fds: Vec<OwnedFd> = kernel.into_iter().map(OwnedFd::from).collect();
    ctl.send(&Message::StartVmRequest(params), fds)?;
    match ctl.recv()? {
        Message::StartVmResponse(r) if r.result != 0 => {
            warnx(err, start_error(r.result));
            Ok(1)
        }
        Message::StartVmResponse(r) if a.console => console::open(&r.ttyname, out, err),
        Message::StartVmResponse(r) => {
            warnx(
                err,
                format!("started vm {} successfully, tty {}", r.id as i32, r.ttyname),
            );
            Ok(0)
        }
        _ => {
            warnx(err, UNEXPECTED);
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(result: i32, id: u32) -> VmopResult {
        VmopResult {
            result,
            id,
            pid: 0,
            ttyname: String::new(),
        }
    }

    fn terminate(msg: Message, flags: u32) -> (String, i32) {
        let mut e = Vec::new();
        let s = terminate_complete(&msg, flags, &mut e);
        (String::from_utf8(e).unwrap(), s)
    }

    #[test]
    fn stop_and_wait_messages() {
        use Message::{TerminateVmEvent as Ev, TerminateVmResponse as Resp};
        assert_eq!(
            terminate(Resp(result(0, 3)), 0),
            ("requested to shutdown vm 3\n".into(), 0)
        );
        assert_eq!(
            terminate(Resp(result(VMD_VM_STOP_INVALID, 0)), 0),
            ("cannot stop vm that is not running\n".into(), 1)
        );
        assert_eq!(
            terminate(Resp(result(libc::ENOENT, 0)), VMOP_WAIT),
            ("vm not found\n".into(), 1)
        );
        assert_eq!(
            terminate(Resp(result(libc::EINTR, 0)), 0),
            ("interrupted call\n".into(), 1)
        );
        assert_eq!(
            terminate(Resp(result(libc::EALREADY, 0)), 0),
            ("failed: Operation already in progress\n".into(), 1)
        );
        assert_eq!(
            terminate(Resp(result(libc::EPERM, 0)), 0),
            ("failed: Operation not permitted\n".into(), 1)
        );
        assert_eq!(
            terminate(Ev(result(0, 4)), VMOP_WAIT),
            ("terminated vm 4\n".into(), 0)
        );
        assert_eq!(
            terminate(Ev(result(0, 4)), VMOP_WAIT | VMOP_FORCE),
            ("terminated vm 4\n".into(), 0)
        );
        assert_eq!(
            terminate(Ev(result(0, 4)), VMOP_FORCE),
            ("forced to terminate vm 4\n".into(), 0)
        );
        assert_eq!(terminate(Ev(result(0, 4)), 0), (String::new(), 0));
        assert_eq!(
            terminate(Message::CtlOk, 0),
            ("unexpected response received from vmd\n".into(), 1)
        );
    }

    #[test]
    fn pause_messages() {
        let run = |m: Message| {
            let mut e = Vec::new();
            let s = pause_complete(&m, &mut e);
            (String::from_utf8(e).unwrap(), s)
        };
        assert_eq!(
            run(Message::PauseVmResponse(result(0, 2))),
            ("vmctl: paused vm 2 successfully\n".into(), 0)
        );
        assert_eq!(
            run(Message::UnpauseVmResponse(result(0, 2))),
            ("vmctl: unpaused vm 2 successfully\n".into(), 0)
        );
        assert_eq!(
            run(Message::PauseVmResponse(result(libc::EINVAL, 0))),
            (
                "vmctl: pause vm command failed: Invalid argument\n".into(),
                1
            )
        );
        assert_eq!(
            run(Message::UnpauseVmResponse(result(libc::ENOENT, 0))),
            (
                "vmctl: unpause vm command failed: No such file or directory\n".into(),
                1
            )
        );
        assert_eq!(
            run(Message::CtlOk),
            ("vmctl: unexpected response received from vmd\n".into(), 1)
        );
    }

    #[test]
    fn start_error_texts() {
        assert_eq!(
            start_error(VMD_BIOS_MISSING),
            "vmm bios firmware file not found."
        );
        assert_eq!(
            start_error(VMD_DISK_MISSING),
            "could not open disk image(s)"
        );
        assert_eq!(
            start_error(VMD_CDROM_MISSING),
            "could not find specified iso image"
        );
        assert_eq!(
            start_error(VMD_CDROM_INVALID),
            "specified iso image is not a regular file"
        );
        assert_eq!(start_error(VMD_PARENT_INVALID), "invalid template");
        assert_eq!(
            start_error(libc::ENOMEM),
            "start vm command failed: Cannot allocate memory"
        );
    }
}
