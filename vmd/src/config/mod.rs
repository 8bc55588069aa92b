//! vm.conf(5): the configuration file of vmd(8).
//!
//! The grammar, the lexical rules and every message are OpenBSD's
//! `usr.sbin/vmd/parse.y` 1.72 (reference §2): [`parse_file`] reads a file
//! (with `include`s and `-D` macros) into a [`Config`], or returns the
//! messages vmd prints, in its order and words (`vm.conf:3: syntax error`,
//! `memory size must be at least 1MB`, ...). [`check`] is `vmd -n`.
//!
//! What parse.y leaves to vmd's VM registry (`vm_register`: duplicate
//! names, VM name characters, instances of unknown VMs, MAC randomisation,
//! the default memory size) is not done here; a daemon plugs it in through
//! [`ParseOptions::register`] so its messages still appear at the line and
//! in the order vmd prints them.
//!
//! - `lexer`: characters to tokens (quoting, macros, includes, continuation).
//! - `grammar`: parse.y's productions and the LALR(1) tables yacc builds.
//! - `parser`: the yacc driver (error recovery included) and the actions.
//! - `compat`: ether_aton, realpath, strerror, ... (strtonum, scan_scaled
//!   and fmt_scaled, which vmctl uses too, are [`vmd_proto::compat`]'s).
//!
//! The types a parsed VM is made of that also travel to vmctl and between
//! the processes ([`BootDevice`], [`DiskFormat`], [`Interface`], [`Owner`],
//! [`GlobalConfig`]), the `VMOP_CREATE_*` and `VMIFF_*` bits and vmd.h's
//! limits are [`vmd_proto::config`]'s.
mod compat;
mod grammar;
mod lexer;
mod parser;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vmd_proto::config::{BootDevice, DiskFormat, GlobalConfig, Interface, Owner};

/// The default configuration file.
pub const VMD_CONF: &str = "/etc/vm.conf";
/// The default AgentX master socket (`AGENTX_MASTER_PATH`).
pub const AGENTX_MASTER_PATH: &str = "/var/agentx/master";
/// Default autostart pacing without `staggered start`: the delay; the
/// parallelism is the number of online CPUs.
pub const VMD_DEFAULT_STAGGERED_START_DELAY: i64 = 30;

/// Where a message points: parse.y's `file->name` and `yylval.lineno`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Location {
    pub file: String,
    pub line: i32,
}

/// One line vmd prints while reading its configuration. Errors from the
/// grammar carry a location and print as `file:line: message`; the
/// warnings of the helpers (`memory size must be at least 1MB`,
/// `disk /x: No such file or directory`) carry none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigError {
    pub location: Option<Location>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(l) => write!(f, "{}:{}: {}", l.file, l.line, self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// How vmd logs a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// yyerror(): counts as an error, the parse fails.
    Error,
    /// log_warn/log_warnx or a plain stderr warning; printed by `vmd -n`.
    Warning,
    /// log_debug: printed only with `-v`.
    Debug,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub level: Level,
    pub error: ConfigError,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The realpath(3) of the configured name.
    pub path: String,
    /// `format`, or sniffed from the file (`QFI\xfb` is qcow2, else raw).
    pub format: DiskFormat,
}

/// A `vm` block (parse.y's `struct vmop_create_params` plus the boot path
/// and the disable flag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Vm {
    pub name: String,
    /// For `vm "parent" instance "name"`: the parent's name.
    pub instance_of: Option<String>,
    /// VMOP_CREATE_* bits for what the block configures.
    pub flags: u32,
    pub disabled: bool,
    /// `boot`: the realpath of the kernel or BIOS image.
    pub boot: Option<String>,
    pub boot_device: BootDevice,
    pub cdrom: Option<String>,
    pub disks: Vec<Disk>,
    /// `vmc_nnics` entries: the `interface` lines, then unattached NICs up
    /// to `interfaces N`.
    pub interfaces: Vec<Interface>,
    /// Bytes, rounded down to a MiB; 0 when not configured.
    pub memory: u64,
    pub owner: Owner,
    /// `allow instance` (VMOP_CREATE_* bits) and its `owner`.
    pub instance_flags: u32,
    pub instance_owner: Owner,
    pub sev: bool,
    pub seves: bool,
    /// The closing brace: where vmd reports `vm "x" failed: ...`.
    pub location: Location,
}

/// A `switch` block that is not disabled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Switch {
    /// 1, 2, ... in file order.
    pub id: u32,
    pub name: String,
    /// The bridge(4) or veb(4) interface.
    pub ifname: String,
    pub group: Option<String>,
    pub rdomain: u32,
    /// VMIFF_* bits (VMIFF_UP by default).
    pub flags: u32,
    pub location: Location,
}

/// A parsed vm.conf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Config {
    pub global: GlobalConfig,
    /// Enabled switches, in file order.
    pub switches: Vec<Switch>,
    /// VM blocks in file order (those the registry hook did not skip).
    pub vms: Vec<Vm>,
}

/// User and group names for `owner` and `socket owner`.
pub trait Resolver {
    fn uid(&self, user: &str) -> Option<u32>;
    fn gid(&self, group: &str) -> Option<u32>;
}

/// getpwnam(3) and getgrnam(3), as parse.y uses.
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn uid(&self, user: &str) -> Option<u32> {
        Some(nix::unistd::User::from_name(user).ok()??.uid.as_raw())
    }
    fn gid(&self, group: &str) -> Option<u32> {
        Some(nix::unistd::Group::from_name(group).ok()??.gid.as_raw())
    }
}

/// What the VM registry did with a `vm` block (vmd's `vm_register`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registration {
    Registered,
    /// EALREADY: logged as `skipped (running)` or `skipped (already exists)`.
    AlreadyExists {
        running: bool,
    },
    /// Any other failure, as strerror(3) text: `vm "x" failed: <text>`.
    Failed(String),
}

pub struct ParseOptions<'a> {
    /// `-D name=value` macros; the first definition of a name wins and the
    /// file cannot redefine it.
    pub defines: &'a [(Vec<u8>, Vec<u8>)],
    /// `vmd -n`: switches and VMs are not registered (no debug lines).
    pub noaction: bool,
    /// The path is the built-in default (/etc/vm.conf): a missing file is
    /// not worth a warning.
    pub default_file: bool,
    pub resolver: &'a dyn Resolver,
    /// vmd's `vm_register`, called at the end of each `vm` block (with
    /// `noaction`, only its refusals count); `None` registers every block.
    pub register: Option<&'a mut dyn FnMut(&Vm) -> Registration>,
}

impl<'a> ParseOptions<'a> {
    pub fn new(defines: &'a [(Vec<u8>, Vec<u8>)]) -> Self {
        ParseOptions {
            defines,
            noaction: false,
            default_file: false,
            resolver: &SystemResolver,
            register: None,
        }
    }
}

/// The result of reading a configuration: the configuration, everything
/// vmd would have logged, in order, and whether it failed.
#[derive(Clone, Debug)]
pub struct ParseOutcome {
    pub config: Config,
    pub messages: Vec<Message>,
    pub ok: bool,
}

impl ParseOutcome {
    /// The lines `vmd -n` prints (debug lines only at `verbose` > 0).
    pub fn lines(&self, verbose: u32) -> Vec<String> {
        self.messages
            .iter()
            .filter(|m| m.level != Level::Debug || verbose > 0)
            .map(|m| m.error.to_string())
            .collect()
    }

    fn into_result(self) -> Result<Config, Vec<ConfigError>> {
        if self.ok {
            Ok(self.config)
        } else {
            Err(self
                .messages
                .into_iter()
                .filter(|m| m.level != Level::Debug)
                .map(|m| m.error)
                .collect())
        }
    }
}

/// parse_config(): read `path` as vmd does.
pub fn parse_with(path: &Path, opts: ParseOptions<'_>) -> ParseOutcome {
    parser::parse(parser::Source::File(path), opts)
}

/// Read a configuration text named `name` (the file name in messages);
/// `include`s are opened relative to the current directory, as by vmd.
pub fn parse_str_with(name: &str, text: &str, opts: ParseOptions<'_>) -> ParseOutcome {
    parser::parse(parser::Source::Text(name, text.as_bytes()), opts)
}

/// [`parse_str_with`] on raw bytes: a file on disk need not be UTF-8 and
/// the lexer reads bytes, as parse.y's getc() does.  The fuzz targets
/// (fuzz/) feed it arbitrary input.
pub fn parse_bytes_with(name: &str, text: &[u8], opts: ParseOptions<'_>) -> ParseOutcome {
    parser::parse(parser::Source::Text(name, text), opts)
}

/// Read a configuration file with `-D` macros `defines`. On failure, the
/// messages vmd prints (errors and warnings, in order).
pub fn parse_file(
    path: impl AsRef<Path>,
    defines: &[(Vec<u8>, Vec<u8>)],
) -> Result<Config, Vec<ConfigError>> {
    parse_with(path.as_ref(), ParseOptions::new(defines)).into_result()
}

/// [`parse_file`] on a text; `name` is the file name in the messages.
pub fn parse_str(
    name: &str,
    text: &str,
    defines: &[(Vec<u8>, Vec<u8>)],
) -> Result<Config, Vec<ConfigError>> {
    parse_str_with(name, text, ParseOptions::new(defines)).into_result()
}

/// `-D name=value` as vmd's `cmdline_symset` splits it (at the last `=`);
/// `None` is vmd's `could not parse macro definition <arg>`.
pub fn parse_define(arg: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let i = arg.iter().rposition(|&c| c == b'=')?;
    Some((arg[..i].to_vec(), arg[i + 1..].to_vec()))
}

/// `vmd -n [-v] [-D ...] [-f file]`: what it prints on stderr and its exit
/// status. `path` `None` is the default /etc/vm.conf.
pub fn check_verbose(
    path: Option<&Path>,
    defines: &[(Vec<u8>, Vec<u8>)],
    verbose: u32,
) -> (String, i32) {
    check_with(path, defines, verbose, None)
}

/// [`check_verbose`] with vmd's `vm_register` checks (`register`), as
/// `vmd -n` runs it: what would stop vmd at startup fails the check too.
pub fn check_with<'a>(
    path: Option<&Path>,
    defines: &'a [(Vec<u8>, Vec<u8>)],
    verbose: u32,
    register: Option<&'a mut dyn FnMut(&Vm) -> Registration>,
) -> (String, i32) {
    let mut opts = ParseOptions::new(defines);
    opts.noaction = true;
    opts.default_file = path.is_none();
    opts.register = register;
    let outcome = parse_with(path.unwrap_or(Path::new(VMD_CONF)), opts);
    let mut out = String::new();
    for line in outcome.lines(verbose) {
        out.push_str(&line);
        out.push('\n');
    }
    if outcome.ok {
        out.push_str("configuration OK\n");
        (out, 0)
    } else {
        (out, 1)
    }
}

/// `vmd -n -f path`: its stderr and exit status.
pub fn check(path: impl AsRef<Path>, defines: &[(Vec<u8>, Vec<u8>)]) -> (String, i32) {
    check_verbose(Some(path.as_ref()), defines, 0)
}
