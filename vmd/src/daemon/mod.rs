//! vmd(8), the daemon: its command line, its processes and their event
//! loops (reference §3).
//!
//! `vmd` starts as the **parent** (root).  Like OpenBSD's proc.c it
//! re-executes itself once per privilege-separated child, with an internal
//! flag naming the child's job:
//!
//! | flag | process | module | runs as |
//! |---|---|---|---|
//! | – | parent: configuration, VM registry, ptys, boot images | [`parent`] | root |
//! | `-P control` | owns the control socket, checks peer credentials | [`control`] | `_vmd`, chroot `/var/empty` when it exists |
//! | `-P vmm` | starts one VM process per guest, reaps them | [`vmm`] | `_vmd`, chroot `/` (unveil: only vmd's binary, on OpenBSD) |
//! | `-P priv` | network configuration: taps, switches, local addresses ([`netcfg`] is the parent's side) | [`privproc`] | root, chroot to `_vmd`'s home when it exists |
//! | `-V 0` | one VM process per guest, exec'd by vmm | [`vmproc`] | `_vmd` (inherited from vmm) |
//! | `-X 0 -t d -p vm` | one per vioblk device, exec'd by its VM process | [`devproc`] | `_vmd` (inherited from the VM) |
//!
//! **The socket to the parent** is the child's standard input.  OpenBSD
//! dups it to descriptor 3; std's `Command` can place a descriptor only on
//! 0, 1 or 2 without `unsafe` code (and vmd has none), and a child can
//! take ownership of its standard input safely, so fd 0 it is.  `-V`
//! keeps OpenBSD's argument and is always `-V 0`.
//!
//! **Privileges.** Each child drops to `_vmd` with setgroups, setresgid
//! and setresuid, after a chroot where OpenBSD chroots.  As OpenBSD's,
//! the parent opens vmm(4) (`/dev/vmm`; `/dev/kvm` on Linux, which only
//! root may open) before it starts anything and sends the descriptor to
//! the vmm process (`RECEIVE_VMM_FD`), which sends a copy to each VM
//! process before its parameters (OpenBSD's `vmd -V fd -i vmmfd`; here a
//! message, as descriptors other than 0–2 cannot be placed for a child
//! without `unsafe`).  Both build their handle with
//! `vmm_sys::Vmm::from_fd`, so neither needs root.  Process titles: Linux has
//! no setproctitle and rewriting argv needs `unsafe`, so each process
//! sets its command name (`prctl(PR_SET_NAME)`, 15 bytes, as `ps -o comm`
//! and `top` show) to `vmd: <title>`; the command line stays `vmd -P ...`.
//!
//! **Environment overrides** (documented in `vmd.8` too), for tests and
//! development trees:
//!
//! | variable | effect |
//! |---|---|
//! | `VMD_SOCKET` | the control socket instead of `/var/run/vmd.sock` |
//! | `VMD_USER` | the unprivileged user instead of `_vmd` (e.g. `nobody`) |
//! | `VMD_NO_PRIVDROP=1` | test mode: no chroot, setuid or setgid in any process |
//! | `VMD_INPROCESS_DEVICES=1` | vioblk inside the VM process, not in a device process (for comparisons) |
//! | `VMD_SANDBOX=off\|log\|strict` | confinement off, logging only, or refusing to start without full Landlock ([`crate::sandbox`]) |
//!
//! Logging goes through the `log` facade: to syslog (daemon facility)
//! unless `-d` or `-n`, then to stderr ([`logging`]).
pub mod args;
pub mod control;
pub mod devproc;
pub mod disks;
pub mod events;
pub mod logging;
pub mod netcfg;
pub mod parent;
pub mod privproc;
pub mod privsep;
pub mod registry;
pub mod stagger;
pub mod vmfiles;
pub mod vmm;
pub mod vmproc;

/// `VMD_USER`.
pub const VMD_USER: &str = "_vmd";
/// The control process's root directory (proc.c's default chroot).
pub const PRIVSEP_CHROOT: &str = "/var/empty";
/// `VM_DEFAULT_BIOS`.
pub const VM_DEFAULT_BIOS: &str = "/etc/firmware/vmm-bios";
/// Where Debian and Ubuntu install SeaBIOS, the firmware OpenBSD ships as
/// vmm-bios: the default on Linux hosts without `/etc/firmware/vmm-bios`.
pub const LINUX_DEFAULT_BIOS: &str = "/usr/share/seabios/bios.bin";
/// `VM_START_RATE_SEC` and `VM_START_RATE_LIMIT`.
pub const VM_START_RATE_SEC: u64 = 6;
pub const VM_START_RATE_LIMIT: u32 = 3;
/// After SIGTERM, the vmm process sends SIGKILL to a forced VM after this.
pub const VM_KILL_TIMEOUT_SEC: u64 = 10;
/// A graceful stop asks the guest through vmmci: one that does not ack
/// is ended after vmmci's 3 s, one without a driver at once, and one that
/// acks has up to vmmci's 120 s to go down.  The rc script and the unit
/// budget this long for `vmctl stop -a -w`, enough for guests that shut
/// down promptly; a slower one is killed with vmd when they give up.
pub const VM_SHUTDOWN_TIMEOUT_SEC: u64 = 30;
/// How long the parent waits for its children after SIGTERM before it
/// kills them (the vmm process needs [`VM_KILL_TIMEOUT_SEC`] for its VMs).
pub const CHILD_KILL_TIMEOUT_SEC: u64 = VM_KILL_TIMEOUT_SEC + 5;
/// The peer id of messages that answer no client (C's `(uint32_t)-1`).
pub const NO_PEER: u32 = u32::MAX;

pub const ENV_USER: &str = "VMD_USER";
pub const ENV_NO_PRIVDROP: &str = "VMD_NO_PRIVDROP";
/// `VMD_INPROCESS_DEVICES=1`: vioblk in the VM process instead of a
/// device process of its own (for comparisons; not vmd's design).
pub const ENV_INPROCESS_DEVICES: &str = "VMD_INPROCESS_DEVICES";

/// The unprivileged user's name.
pub fn user_name() -> String {
    // Not UTF-8: no such user, said with the name as near as it prints
    // (not silently _vmd instead).
    std::env::var_os(ENV_USER)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| VMD_USER.to_string())
}

/// The unprivileged user, or vmd's fatal message.
pub fn lookup_user() -> nix::unistd::User {
    match nix::unistd::User::from_name(&user_name()) {
        Ok(Some(u)) => u,
        _ => logging::fatalx(&format!("unknown user {}", user_name())),
    }
}

/// Whether privilege drops are skipped (test mode).
pub fn no_privdrop() -> bool {
    std::env::var(ENV_NO_PRIVDROP).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// strerror(3) text of an errno value.
pub fn strerror(errno: i32) -> String {
    nix::errno::Errno::from_raw(errno).desc().to_string()
}

/// vmd's `main`: the exit status.
pub fn main() -> i32 {
    // Bytes, not UTF-8: std::env::args() would panic on a file name that
    // is not.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = match args::parse(argv.get(1..).unwrap_or_default()) {
        Ok(a) => a,
        Err(args::ArgsError::Usage) => {
            eprintln!("{}", args::usage());
            return 1;
        }
        Err(args::ArgsError::Fatal(msg)) => {
            logging::init(true, 0, "vmd");
            logging::fatalx(&msg);
        }
    };
    // vmd -n logs to stderr, as -d does.
    let debug = args.debug || args.noaction;
    logging::init(debug, args.verbose, "vmd");
    for bad in &args.bad_defines {
        log::warn!("could not parse macro definition {}", bad.to_string_lossy());
    }
    let launch_vm = args.vm_fd.is_some();
    let device = args.dev_fd.is_some();
    if !args.noaction && !launch_vm && !device && !nix::unistd::geteuid().is_root() {
        logging::fatalx("need root privileges");
    }
    // VM and device processes start as _vmd (from the vmm process) and
    // look the user up only if started as root: under the vmm process's
    // Landlock rules /etc/passwd is out of their reach.
    if launch_vm {
        return vmproc::main(&args);
    }
    if args.dev_fd.is_some() {
        return devproc::main(&args);
    }
    let user = lookup_user();
    match args.title.as_deref() {
        None => parent::main(args, user),
        Some("control") => control::main(&args, &user),
        Some("vmm") => vmm::main(&args, &user),
        Some("priv") => privproc::main(&args, &user),
        Some(_) => logging::fatalx("invalid process name"),
    }
}

#[cfg(test)]
mod tests {
    /// A service manager's stop timeout must cover `vmctl stop -a -w`
    /// (all VMs at once: a graceful stop ends a VM within
    /// VM_SHUTDOWN_TIMEOUT_SEC, a forced one within VM_KILL_TIMEOUT_SEC)
    /// and then vmd's own end after SIGTERM; the systemd unit and the rc.d
    /// script say the same.
    #[test]
    fn daemon_stop_timeouts_of_the_unit_and_rc_script() {
        let etc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc");
        let unit = std::fs::read_to_string(etc.join("vmd.service")).unwrap();
        let rc = std::fs::read_to_string(etc.join("rc.d/vmd")).unwrap();
        let value = |text: &str, key: &str| -> Option<String> {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        let unit_secs: u64 = value(&unit, "TimeoutStopSec=")
            .and_then(|v| v.strip_suffix('s')?.parse().ok())
            .expect("TimeoutStopSec=<n>s in vmd.service");
        let rc_secs: u64 = value(&rc, "daemon_timeout=")
            .and_then(|v| v.parse().ok())
            .expect("daemon_timeout in rc.d/vmd");
        let vms = super::VM_SHUTDOWN_TIMEOUT_SEC.max(super::VM_KILL_TIMEOUT_SEC);
        let need = vms + super::CHILD_KILL_TIMEOUT_SEC;
        assert_eq!(unit_secs, rc_secs, "the unit and the rc.d script disagree");
        assert!(
            unit_secs >= need,
            "{unit_secs} s < the {need} s vmd may take to stop"
        );
    }
}
