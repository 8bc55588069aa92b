//! vmctl(8): control the virtual machine daemon, as OpenBSD's vmctl
//! (main.c 1.87, vmctl.c 1.94) does it, messages and exit codes included.
//!
//! - [`args`]: the command line, prefix matching of commands, each
//!   command's options ([`getopt`] is OpenBSD's getopt(3)).
//! - [`control`]: the connection to vmd's control socket
//!   (`/var/run/vmd.sock`, or `$VMD_SOCKET`).
//! - [`commands`]: each command's request and the answers it waits for;
//!   [`start`] builds `start`'s request.
//! - [`format`]: the `status` table.
//! - [`create`]: `vmctl create`, disk images without vmd.
//! - [`console`]: `vmctl console`, cu or vmctl's own terminal client.
//! - [`fail`]: messages, usage texts, exit status.
//!
//! Its messages and configuration types are [`vmd_proto`]'s: vmctl links
//! nothing of vmd's VM machine.
#![forbid(unsafe_code)]

pub mod args;
pub mod commands;
pub mod console;
pub mod control;
pub mod create;
pub mod fail;
pub mod format;
pub mod getopt;
pub mod start;
#[cfg(test)]
mod testdir;

use std::ffi::OsString;
use std::io::Write;

use args::Action;
use fail::Fail;

/// Runs vmctl with `argv` (program name first, bytes as the kernel gave
/// them); the exit status.
pub fn run(argv: &[OsString], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match run_inner(argv, out, err) {
        Ok(status) => status,
        Err(f) => {
            f.print(err);
            1
        }
    }
}

fn run_inner(argv: &[OsString], out: &mut dyn Write, err: &mut dyn Write) -> Result<i32, Fail> {
    let inv = args::parse(argv, err)?;
    match inv.action {
        Action::Create(c) => create::run(&c, inv.verbose, err),
        action => {
            let mut ctl = control::Control::connect(&vmd_proto::socket_path())?;
            commands::run(action, &mut ctl, out, err)
        }
    }
}
