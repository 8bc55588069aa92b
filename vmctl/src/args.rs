//! The command line (main.c 1.87): `vmctl [-v] command [arg ...]`, the
//! command table with prefix matching, and each command's arguments.
//!
//! Parsing does what main.c does before it talks to vmd: option and
//! operand checks, sizes, `realpath` of the disk, ISO and boot image
//! paths.  Checks that main.c leaves to `vm_start` (after connecting) are
//! in [`crate::start`].  Warnings are written to `err` as they arise.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use vmd_proto::compat::{self, fmt_scaled, scan_scaled, strtonum};
use vmd_proto::config::{BootDevice, DiskFormat, VMM_MAX_NAME_LEN, VMM_MAX_VM_MEM_SIZE};
use vmd_proto::msg::{CONFIG_ALL, CONFIG_SWITCHES, CONFIG_VMS, VMOP_FORCE, VMOP_WAIT};

use crate::fail::{warnx, Fail};
use crate::getopt::Getopt;

/// OpenBSD's PATH_MAX: the size of the path buffers of
/// `vmop_create_params`.
pub const PATH_MAX: usize = 1024;

type Parser = fn(&'static Command, &[OsString], &mut dyn Write) -> Result<Action, Fail>;

/// An entry of the command table.
pub struct Command {
    pub name: &'static str,
    pub usage: &'static str,
    parse: Parser,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Command {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Command {}

/// The commands in main.c's order, which prefix matching depends on.
pub static COMMANDS: [Command; 13] = [
    Command {
        name: "console",
        usage: "id",
        parse: parse_id_command,
    },
    Command {
        name: "create",
        usage: "[-b base | -i disk] [-s size] disk",
        parse: parse_create,
    },
    Command {
        name: "load",
        usage: "filename",
        parse: parse_load,
    },
    Command {
        name: "log",
        usage: "[brief | verbose]",
        parse: parse_log,
    },
    Command {
        name: "pause",
        usage: "id",
        parse: parse_id_command,
    },
    Command {
        name: "reload",
        usage: "",
        parse: parse_reload,
    },
    Command {
        name: "reset",
        usage: "[all | switches | vms]",
        parse: parse_reset,
    },
    Command {
        name: "show",
        usage: "[id]",
        parse: parse_status,
    },
    Command {
        name: "start",
        usage: "[-cL] [-B device] [-b path] [-d disk] [-i count]\n\
                \t\t[-m size] [-n switch] [-r path] [-t name] id | name",
        parse: parse_start,
    },
    Command {
        name: "status",
        usage: "[-r] [id]",
        parse: parse_status,
    },
    Command {
        name: "stop",
        usage: "[-fw] [id | -a]",
        parse: parse_stop,
    },
    Command {
        name: "unpause",
        usage: "id",
        parse: parse_id_command,
    },
    Command {
        name: "wait",
        usage: "id",
        parse: parse_id_command,
    },
];

/// A VM as named on the command line (`parse_vmid`): a numeric id, or a
/// name with id 0.  Id 0 without a name means "every VM" to `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub id: u32,
    pub name: Option<String>,
}

/// `vmctl create`: paths as given, bytes and all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateArgs {
    /// The image path, without a `raw:`/`qcow2:` prefix.
    pub disk: PathBuf,
    pub format: DiskFormat,
    /// `-b`: a qcow2 base image.
    pub base: Option<PathBuf>,
    /// `-i`: an image to copy.
    pub input: Option<PathBuf>,
    /// Bytes, a whole number of MiB; 0 when not given.
    pub size: u64,
}

/// `vmctl start`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartArgs {
    pub target: Target,
    /// `-b`, realpath'd (vmctl opens it: any bytes).
    pub boot: Option<PathBuf>,
    /// `-B`.
    pub boot_device: BootDevice,
    /// `-c`: attach to the console after starting.
    pub console: bool,
    /// `-d`, realpath'd, with their formats (UTF-8: vmd opens them by a
    /// name sent as UTF-8).
    pub disks: Vec<(String, DiskFormat)>,
    /// One entry per NIC: a switch name, [`LOCAL_NIC`] for `-L`, or ""
    /// for a NIC on no switch (`-i` padding).
    pub nics: Vec<String>,
    /// `-m` in bytes; 0 when not given.
    pub memory: u64,
    /// `-r`, realpath'd.
    pub iso: Option<String>,
    /// `-t`.
    pub instance: Option<String>,
}

/// The `nics` entry of a `-L` interface (main.c's ".").
pub const LOCAL_NIC: &str = ".";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Console(Target),
    Create(CreateArgs),
    Load(String),
    /// `IMSG_CTL_VERBOSE` level: 0 brief, 2 verbose.
    Log(i32),
    Pause(Target),
    Reload,
    /// `CONFIG_ALL`, `CONFIG_VMS` or `CONFIG_SWITCHES`.
    Reset(u32),
    /// `status` and `show`; `running` is `-r`.
    Status {
        running: bool,
        target: Target,
    },
    Start(StartArgs),
    /// `target` `None` is `-a`; `flags` are `VMOP_FORCE`/`VMOP_WAIT`.
    Stop {
        target: Option<Target>,
        flags: u32,
    },
    Unpause(Target),
    Wait(Target),
}

/// The whole command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `-v`: debug messages (of image conversion).
    pub verbose: bool,
    pub action: Action,
}

/// Text of an argument that is a word, not a file name: bytes that are
/// not UTF-8 become U+FFFD, which no command, VM or switch name holds.
fn word(w: &OsStr) -> String {
    w.to_string_lossy().into_owned()
}

/// Parses `argv` (with the program name first).
pub fn parse(argv: &[OsString], err: &mut dyn Write) -> Result<Invocation, Fail> {
    let mut g = Getopt::new(argv, "v");
    let mut verbose = false;
    for o in g.by_ref() {
        match o {
            Ok(_) => verbose = true,
            Err(line) => return Err(Fail::Usage { before: Some(line) }),
        }
    }
    let rest = g.rest();
    let Some(first) = rest.first() else {
        return Err(Fail::Usage { before: None });
    };
    let cmd = lookup(&word(first))?;
    let action = (cmd.parse)(cmd, rest, err)?;
    Ok(Invocation { verbose, action })
}

/// The command `word` abbreviates: a prefix of exactly one name.
pub fn lookup(word: &str) -> Result<&'static Command, Fail> {
    let mut found = None;
    for c in &COMMANDS {
        if c.name.starts_with(word) {
            if found.is_some() {
                return Err(Fail::Usage {
                    before: Some(format!("ambiguous argument: {word}")),
                });
            }
            found = Some(c);
        }
    }
    found.ok_or_else(|| Fail::Usage {
        before: Some(format!("unknown argument: {word}")),
    })
}

/// `parse_vmid`: `None` after its warning, or silently for a word that
/// looks like an option.
fn parse_vmid(word: &str, err: &mut dyn Write) -> Option<Target> {
    if word.starts_with('-') {
        return None;
    }
    if let Ok(id) = strtonum(word.as_bytes(), 0, i64::from(u32::MAX)) {
        return Some(Target {
            id: id as u32,
            name: None,
        });
    }
    if word.len() >= VMM_MAX_NAME_LEN {
        warnx(err, "name too long");
        return None;
    }
    Some(Target {
        id: 0,
        name: Some(word.to_string()),
    })
}

fn vmid_or_fail(arg: &OsStr, err: &mut dyn Write) -> Result<Target, Fail> {
    let w = word(arg);
    parse_vmid(&w, err).ok_or_else(|| Fail::errx(format!("invalid id: {w}")))
}

/// `parse_size`: bytes rounded down to a whole MiB.  `what` is "memory"
/// or "disk".
pub fn parse_size(word: &str, what: &str, err: &mut dyn Write) -> Result<u64, Fail> {
    const MIB: i64 = 1024 * 1024;
    let val = scan_scaled(word.as_bytes()).map_err(|e| {
        // scan_scaled reports OpenBSD's EINVAL or ERANGE; the message
        // wants the host's.
        let errno = if e == compat::ERANGE {
            libc::ERANGE
        } else {
            libc::EINVAL
        };
        Fail::err(format!("invalid {what} size: {word}"), errno)
    })?;
    if val < MIB {
        return Err(Fail::errx(format!("{what} size must be at least 1MB")));
    }
    if what == "memory" && val > VMM_MAX_VM_MEM_SIZE {
        return Err(Fail::errx(match fmt_scaled(VMM_MAX_VM_MEM_SIZE) {
            Some(s) => format!("memory size too large (limit is {s})"),
            None => "memory size too large".to_string(),
        }));
    }
    let size = val / MIB * MIB;
    if size != val {
        match fmt_scaled(size) {
            Some(s) => warnx(err, format!("{what} size rounded to {s}")),
            None => warnx(err, format!("{what} size rounded to {size}B")),
        }
    }
    Ok(size as u64)
}

/// `parse_disktype`: the format of a disk argument and its path.  An
/// explicit `raw:`/`qcow2:` prefix wins, then qcow2's magic in the file,
/// then a `.raw`/`.qcow2` extension; raw otherwise.
pub fn parse_disktype(s: &OsStr) -> (DiskFormat, PathBuf) {
    let b = s.as_bytes();
    if let Some(p) = b.strip_prefix(b"raw:") {
        return (DiskFormat::Raw, PathBuf::from(OsStr::from_bytes(p)));
    }
    if let Some(p) = b.strip_prefix(b"qcow2:") {
        return (DiskFormat::Qcow2, PathBuf::from(OsStr::from_bytes(p)));
    }
    let mut magic = [0u8; 4];
    // O_NONBLOCK: opening a FIFO must not hang vmctl.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(s);
    if let Ok(mut f) = opened {
        if f.read_exact(&mut magic).is_ok() && &magic == b"QFI\xfb" {
            return (DiskFormat::Qcow2, PathBuf::from(s));
        }
    }
    let ext = b
        .iter()
        .rposition(|&c| c == b'.')
        .map(|i| &b[i + 1..])
        .unwrap_or(b"");
    let format = if ext.eq_ignore_ascii_case(b"qcow2") {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    };
    (format, PathBuf::from(s))
}

/// realpath(3) with OpenBSD's PATH_MAX: the path or an errno.
pub fn realpath(path: &Path) -> Result<PathBuf, i32> {
    let len = path.as_os_str().len();
    if len == 0 {
        return Err(libc::ENOENT);
    }
    if len >= PATH_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    let p = std::fs::canonicalize(path).map_err(|e| crate::fail::errno_of(&e))?;
    if p.as_os_str().len() >= PATH_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(p)
}

/// A realpath'd name for vmd, which gets it as UTF-8: one that is not is
/// refused (EILSEQ), never sent as another name.
fn utf8_path(p: PathBuf) -> Result<String, i32> {
    p.into_os_string().into_string().map_err(|_| libc::EILSEQ)
}

/// Turns getopt's complaint into the command's usage.
fn getopt_fail(cmd: &'static Command, line: String) -> Fail {
    Fail::CmdUsage {
        cmd,
        before: Some(line),
    }
}

/// console, pause, unpause, wait: exactly one id.
fn parse_id_command(
    cmd: &'static Command,
    argv: &[OsString],
    err: &mut dyn Write,
) -> Result<Action, Fail> {
    if argv.len() != 2 {
        return Err(Fail::usage(cmd));
    }
    let t = vmid_or_fail(&argv[1], err)?;
    Ok(match cmd.name {
        "console" => Action::Console(t),
        "pause" => Action::Pause(t),
        "unpause" => Action::Unpause(t),
        _ => Action::Wait(t),
    })
}

fn parse_create(
    cmd: &'static Command,
    argv: &[OsString],
    err: &mut dyn Write,
) -> Result<Action, Fail> {
    let (mut base, mut input, mut size) = (None, None, 0);
    let mut g = Getopt::new(argv, "b:i:s:");
    for o in g.by_ref() {
        let o = o.map_err(|l| getopt_fail(cmd, l))?;
        let arg = o.arg.unwrap_or_default();
        match o.ch {
            'b' => base = Some(PathBuf::from(arg)),
            'i' => input = Some(PathBuf::from(arg)),
            _ => size = parse_size(&word(&arg), "disk", err)?,
        }
    }
    let [path] = g.rest() else {
        return Err(Fail::usage(cmd));
    };
    let (format, disk) = parse_disktype(path);
    Ok(Action::Create(CreateArgs {
        disk,
        format,
        base,
        input,
        size,
    }))
}

fn parse_load(cmd: &'static Command, argv: &[OsString], _: &mut dyn Write) -> Result<Action, Fail> {
    match argv {
        // vmd gets the name as UTF-8: one that is not is refused, not
        // sent as another file's name.
        [_, path] => path
            .clone()
            .into_string()
            .map(Action::Load)
            .map_err(|p| Fail::err(p.to_string_lossy(), libc::EILSEQ)),
        _ => Err(Fail::usage(cmd)),
    }
}

/// strncasecmp(full, word, strlen(word)) == 0.
fn abbreviates(word: &str, full: &str) -> bool {
    full.len() >= word.len() && full.as_bytes()[..word.len()].eq_ignore_ascii_case(word.as_bytes())
}

fn parse_log(cmd: &'static Command, argv: &[OsString], _: &mut dyn Write) -> Result<Action, Fail> {
    let [_, arg] = argv else {
        return Err(Fail::usage(cmd));
    };
    let word = &word(arg);
    if abbreviates(word, "brief") {
        Ok(Action::Log(0))
    } else if abbreviates(word, "verbose") {
        Ok(Action::Log(2))
    } else {
        Err(Fail::usage(cmd))
    }
}

fn parse_reload(
    cmd: &'static Command,
    argv: &[OsString],
    _: &mut dyn Write,
) -> Result<Action, Fail> {
    match argv {
        [_] => Ok(Action::Reload),
        _ => Err(Fail::usage(cmd)),
    }
}

fn parse_reset(
    cmd: &'static Command,
    argv: &[OsString],
    _: &mut dyn Write,
) -> Result<Action, Fail> {
    let w = |a: &OsStr, s: &str| a.as_bytes().eq_ignore_ascii_case(s.as_bytes());
    match argv {
        [_] => Ok(Action::Reset(CONFIG_ALL)),
        [_, a] if w(a, "all") => Ok(Action::Reset(CONFIG_ALL)),
        [_, a] if w(a, "vms") => Ok(Action::Reset(CONFIG_VMS)),
        [_, a] if w(a, "switches") => Ok(Action::Reset(CONFIG_SWITCHES)),
        _ => Err(Fail::usage(cmd)),
    }
}

fn parse_status(
    cmd: &'static Command,
    argv: &[OsString],
    err: &mut dyn Write,
) -> Result<Action, Fail> {
    let mut running = false;
    let mut g = Getopt::new(argv, "r");
    for o in g.by_ref() {
        o.map_err(|l| getopt_fail(cmd, l))?;
        running = true;
    }
    let target = match g.rest() {
        [] => Target::default(),
        [word] => vmid_or_fail(word, err)?,
        _ => return Err(Fail::usage(cmd)),
    };
    Ok(Action::Status { running, target })
}

fn parse_stop(
    cmd: &'static Command,
    argv: &[OsString],
    err: &mut dyn Write,
) -> Result<Action, Fail> {
    let (mut flags, mut all) = (0, false);
    let mut g = Getopt::new(argv, "afw");
    for o in g.by_ref() {
        match o.map_err(|l| getopt_fail(cmd, l))?.ch {
            'f' => flags |= VMOP_FORCE,
            'w' => flags |= VMOP_WAIT,
            _ => all = true,
        }
    }
    let target = match (all, g.rest()) {
        (true, []) => None,
        (false, [word]) => Some(vmid_or_fail(word, err)?),
        _ => return Err(Fail::usage(cmd)),
    };
    Ok(Action::Stop { target, flags })
}

fn parse_start(
    cmd: &'static Command,
    argv: &[OsString],
    err: &mut dyn Write,
) -> Result<Action, Fail> {
    let mut a = StartArgs::default();
    let mut nifs: Option<usize> = None;
    let mut g = Getopt::new(argv, "b:B:cd:i:Lm:n:r:t:");
    for o in g.by_ref() {
        let o = o.map_err(|l| getopt_fail(cmd, l))?;
        let raw = o.arg.unwrap_or_default();
        // Names and numbers as text; file names keep their bytes.
        let arg = word(&raw);
        match o.ch {
            'b' => {
                if a.boot.is_some() {
                    return Err(Fail::errx("boot image specified multiple times"));
                }
                let p = realpath(Path::new(&raw))
                    .map_err(|e| Fail::err("invalid boot image path", e))?;
                a.boot = Some(p);
            }
            'B' => {
                if a.boot_device != BootDevice::Auto {
                    return Err(Fail::errx("boot device specified multiple times"));
                }
                a.boot_device = match arg.as_str() {
                    "disk" => BootDevice::Disk,
                    "cdrom" => BootDevice::Cdrom,
                    "net" => BootDevice::Net,
                    _ => return Err(Fail::errx(format!("unknown boot device {arg}"))),
                };
            }
            'r' => {
                if a.iso.is_some() {
                    return Err(Fail::errx("iso image specified multiple times"));
                }
                let p = realpath(Path::new(&raw))
                    .and_then(utf8_path)
                    .map_err(|e| Fail::err(format!("invalid iso image path: {arg}"), e))?;
                a.iso = Some(p);
            }
            'c' => a.console = true,
            'L' => a.nics.push(LOCAL_NIC.to_string()),
            'm' => {
                if a.memory != 0 {
                    return Err(Fail::errx("memory specified multiple times"));
                }
                a.memory = parse_size(&arg, "memory", err)?;
            }
            'n' => a.nics.push(arg),
            'd' => {
                let (format, path) = parse_disktype(&raw);
                let p = realpath(&path)
                    .and_then(utf8_path)
                    .map_err(|e| Fail::err(format!("invalid disk path: {}", path.display()), e))?;
                a.disks.push((p, format));
            }
            'i' => {
                if nifs.is_some() {
                    return Err(Fail::errx("interfaces specified multiple times"));
                }
                match strtonum(arg.as_bytes(), 1, i64::from(i32::MAX)) {
                    Ok(n) => nifs = Some(n as usize),
                    Err(e) => {
                        warnx(err, format!("count is {e}: {arg}"));
                        return Err(Fail::errx(format!("invalid interface count: {arg}")));
                    }
                }
            }
            _ => {
                if raw.len() >= VMM_MAX_NAME_LEN {
                    warnx(err, "instance vm name too long");
                    return Err(Fail::errx(format!("invalid name: {arg}")));
                }
                a.instance = Some(arg);
            }
        }
    }
    let [word] = g.rest() else {
        return Err(Fail::usage(cmd));
    };
    a.target = vmid_or_fail(word, err)?;
    // -i pads the -n/-L interfaces with interfaces on no switch.
    let n = nifs.unwrap_or(0);
    if a.nics.len() < n {
        a.nics.resize(n, String::new());
    }
    Ok(Action::Start(a))
}

#[cfg(test)]
mod tests;
