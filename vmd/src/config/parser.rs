//! yyparse() and parse.y's actions.
//!
//! The driver follows byacc's skeleton step by step, because vm.conf users
//! see its behaviour: a state with a default reduction reduces before the
//! next token is read (so an action's message names the line of the last
//! token read), `syntax error` is printed only when three tokens have been
//! shifted since the last error, and recovery drops tokens up to the next
//! newline, after which the rest of a broken block is read as top-level
//! lines.
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vmd_proto::compat::{fmt_scaled, isspace, scan_scaled, strtonum, ENOENT};
use vmd_proto::config::{
    BootDevice, DiskFormat, Interface, Ipv4Prefix, Ipv6Prefix, Owner, StaggeredStart, IF_NAMESIZE,
    RT_TABLEID_MAX, VMIFF_LOCAL, VMIFF_LOCKED, VMIFF_RDOMAIN, VMIFF_UP, VMM_MAX_NAME_LEN,
    VMM_MAX_VM_MEM_SIZE, VMOP_CREATE_CDROM, VMOP_CREATE_DISK, VMOP_CREATE_INSTANCE,
    VMOP_CREATE_KERNEL, VMOP_CREATE_MEMORY, VMOP_CREATE_NETWORK, VM_MAX_DISKS_PER_VM,
    VM_MAX_NICS_PER_VM, VM_NAME_MAX,
};

use super::compat::{self, errno_of, ether_aton, realpath, strerror};
use super::grammar::{self, Act, Action, N, PRODS, T};
use super::lexer::{Lexer, PushError, Token, Value};
use super::{
    Config, Disk, Level, ParseOptions, ParseOutcome, Registration, Switch, Vm, AGENTX_MASTER_PATH,
};

pub(crate) enum Source<'a> {
    File(&'a Path),
    Text(&'a str, &'a [u8]),
}

/// `sizeof(ax_context)` and `sizeof(ax_path)` (SUN_PATH_LEN).
const AX_CONTEXT_SIZE: usize = 33;
const AX_PATH_SIZE: usize = 104;
/// Bridge types a switch may use (config.c `vmd_descsw`).
const VMD_DESCSW: &[&str] = &["bridge", "veb"];

/// A semantic action failed: it printed its message, now YYERROR.
struct YyError;

struct Parser<'a> {
    lx: Lexer,
    opts: ParseOptions<'a>,
    config: Config,
    /// The `vm` block being read (parse.y's static `vmc`).
    vm: Vm,
    /// `vmc_ifs`: one slot more than a VM may have, for the options of a
    /// fifth interface that is refused afterwards.
    ifs: [Interface; VM_MAX_NICS_PER_VM + 1],
    /// `vmc.vmc_nnics` (`interfaces N`) and the count of `interface` lines.
    nnics: usize,
    nics_seen: usize,
    disable: bool,
    /// parse.y's static `kernel`: only cleared when a `vm` block completes,
    /// so a block abandoned after `boot` makes the next `boot` a duplicate.
    kernel: Option<String>,
    /// The `switch` block being read.
    sw: Switch,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// priv_getiftype(): the name without its unit number.
fn getiftype(name: &[u8]) -> Option<&[u8]> {
    let span = name
        .iter()
        .position(u8::is_ascii_digit)
        .unwrap_or(name.len());
    if span == 0 || span >= name.len() || span >= IF_NAMESIZE - 1 {
        return None;
    }
    strtonum(&name[span..], 0, i64::from(u32::MAX)).ok()?;
    Some(&name[..span])
}

/// priv_validgroup(): shorter than IF_NAMESIZE and not ending in a digit.
fn validgroup(name: &[u8]) -> bool {
    let len = name
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(name.len())
        .min(IF_NAMESIZE);
    len != IF_NAMESIZE && !(len > 0 && name[len - 1].is_ascii_digit())
}

/// Bytes a C string holds: up to the first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

fn fits(b: &[u8], size: usize) -> bool {
    cstr(b).len() < size
}

impl<'a> Parser<'a> {
    fn str_at(stack: &[Value], i: usize) -> Vec<u8> {
        match stack.get(i) {
            Some(Value::Str(s)) => s.clone(),
            _ => Vec::new(),
        }
    }

    fn num_at(stack: &[Value], i: usize) -> i64 {
        match stack.get(i) {
            Some(Value::Num(n)) => *n,
            _ => 0,
        }
    }

    fn warn(&mut self, msg: String) {
        self.lx.log(Level::Warning, None, msg);
    }

    fn debug(&mut self, msg: String) {
        self.lx.log(Level::Debug, None, msg);
    }

    fn err(&mut self, msg: String) -> Result<Value, YyError> {
        self.lx.yyerror(msg);
        Err(YyError)
    }

    /// parse_size(): bytes rounded down to a MiB, or -1 after a warning.
    fn parse_size(&mut self, word: Option<&[u8]>, val: i64) -> Option<u64> {
        let val = match word {
            Some(w) => match scan_scaled(w) {
                Ok(v) => v,
                Err(e) => {
                    self.warn(format!(
                        "invalid memory size: {}: {}",
                        lossy(w),
                        strerror(e)
                    ));
                    return None;
                }
            },
            None => val,
        };
        if val < 1024 * 1024 {
            self.warn("memory size must be at least 1MB".into());
            return None;
        }
        if val > VMM_MAX_VM_MEM_SIZE {
            match fmt_scaled(VMM_MAX_VM_MEM_SIZE) {
                Some(s) => self.warn(format!("memory size too large (limit is {s})")),
                None => self.warn("memory size too large".into()),
            }
            return None;
        }
        let size = (val / (1024 * 1024)) * (1024 * 1024);
        if size != val {
            match fmt_scaled(size) {
                Some(s) => self.debug(format!("memory size rounded to {s}")),
                None => self.debug(format!("memory size rounded to {size} bytes")),
            }
        }
        Some(size as u64)
    }

    /// parse_disk(): false after a warning.
    fn parse_disk(&mut self, word: &[u8], format: i64) -> bool {
        if self.vm.disks.len() >= VM_MAX_DISKS_PER_VM {
            self.warn("too many disks".into());
            return false;
        }
        let path = match realpath(word) {
            Ok(p) => p,
            Err(e) => {
                self.warn(format!("disk {}: {}", lossy(word), strerror(e)));
                return false;
            }
        };
        let format = match format {
            2 => DiskFormat::Qcow2,
            1 => DiskFormat::Raw,
            _ => {
                let mut magic = [0u8; 4];
                // O_NONBLOCK: a FIFO must not hang the parse in open(2).
                let qcow = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                    .is_ok()
                    && &magic == b"QFI\xfb";
                if qcow {
                    DiskFormat::Qcow2
                } else {
                    DiskFormat::Raw
                }
            }
        };
        if path.len() >= compat::PATH_MAX {
            self.warn("disk path too long".into());
            return false;
        }
        self.vm.disks.push(Disk { path, format });
        true
    }

    /// The `owner_id` rule on a string: `user`, `user:group` or `:group`.
    fn owner_string(&mut self, s: &[u8]) -> Result<Value, YyError> {
        let s = cstr(s);
        let (user, group) = match s.iter().position(|&c| c == b':') {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        let mut uid = 0;
        let mut gid = -1;
        if !user.is_empty() {
            match self.opts.resolver.uid(&lossy(user)) {
                Some(u) => uid = u,
                None => return self.err(format!("failed to get user: {}", lossy(user))),
            }
        }
        if let Some(g) = group.filter(|g| !g.is_empty()) {
            match self.opts.resolver.gid(&lossy(g)) {
                Some(n) => gid = i64::from(n),
                None => return self.err(format!("failed to get group: {}", lossy(g))),
            }
        }
        Ok(Value::Owner { uid, gid })
    }

    /// The interface the options being read belong to (`vmc_nnics`).
    fn cur_if(&mut self) -> &mut Interface {
        let i = self.nics_seen.min(VM_MAX_NICS_PER_VM);
        &mut self.ifs[i]
    }

    fn owner_of(v: &Value) -> Owner {
        match v {
            Value::Owner { uid, gid } => Owner {
                uid: *uid,
                gid: *gid,
            },
            _ => Owner::default(),
        }
    }

    /// Run the action of production `p`. `stack` is the whole value stack;
    /// the production's right-hand side is its last `rhs.len()` entries (for
    /// a mid-rule action, the entries before are the rule's symbols so far).
    fn action(&mut self, p: usize, stack: &[Value]) -> Result<Value, YyError> {
        let prod = &PRODS[p];
        let len = prod.rhs.len();
        let base = stack.len() - len;
        // $i of the production, 1-based.
        let s = |i: usize| Self::str_at(stack, base + i - 1);
        let num = |i: usize| Self::num_at(stack, base + i - 1);
        let top = stack.len();
        match prod.act {
            Act::Default => Ok(if len > 0 {
                stack[base].clone()
            } else {
                Value::None
            }),
            Act::Const(v) => Ok(Value::Num(v)),
            Act::Null => Ok(Value::None),
            Act::GrammarError => {
                self.lx.errors += 1;
                Ok(Value::None)
            }
            Act::Include => {
                let name = s(2);
                match self.lx.pushfile(cstr(&name)) {
                    Ok(()) => {}
                    Err(PushError::Io(_)) => {
                        return self.err(format!("failed to include file {}", lossy(&name)));
                    }
                    Err(e) => {
                        return self.err(format!("failed to include file {}: {e}", lossy(&name)));
                    }
                }
                self.lx.lungetc(i32::from(b'\n'));
                Ok(Value::None)
            }
            Act::Varset => {
                let name = s(1);
                if name.iter().skip(1).any(|&c| isspace(i32::from(c))) {
                    return self.err("macro name cannot contain whitespace".into());
                }
                self.lx.symset(cstr(&name), cstr(&s(3)), false);
                Ok(Value::None)
            }
            Act::LocalInet6 => {
                self.config.global.inet6 = true;
                Ok(Value::None)
            }
            Act::LocalInet6Prefix => match compat::parse_prefix6(cstr(&s(4))) {
                Ok((addr, len)) => {
                    self.config.global.inet6 = true;
                    self.config.global.local_prefix6 = Some(Ipv6Prefix { addr, len });
                    Ok(Value::None)
                }
                Err(e) => self.err(format!("invalid local inet6 prefix: {e}")),
            },
            Act::LocalPrefix => match compat::parse_prefix4(cstr(&s(3))) {
                Ok((addr, len)) => {
                    self.config.global.local_prefix = Ipv4Prefix { addr, len };
                    Ok(Value::None)
                }
                Err(e) => self.err(format!("invalid local prefix: {e}")),
            },
            Act::SocketOwner => {
                let o = Self::owner_of(&stack[base + 2]);
                self.config.global.socket_uid = o.uid;
                self.config.global.socket_gid = if o.gid == -1 { 0 } else { o.gid as u32 };
                Ok(Value::None)
            }
            Act::AgentxStart => {
                self.config.global.agentx.enabled = true;
                Ok(Value::None)
            }
            Act::AgentxEnd => {
                if self.config.global.agentx.path.is_empty() {
                    self.config.global.agentx.path = AGENTX_MASTER_PATH.into();
                }
                Ok(Value::None)
            }
            Act::AgentxContext => {
                let v = s(2);
                if !fits(&v, AX_CONTEXT_SIZE) {
                    return self.err("agentx context too large".into());
                }
                self.config.global.agentx.context = lossy(cstr(&v));
                Ok(Value::None)
            }
            Act::AgentxPath => {
                let v = s(2);
                if !fits(&v, AX_PATH_SIZE) {
                    return self.err("agentx path too large".into());
                }
                self.config.global.agentx.path = lossy(cstr(&v));
                if !cstr(&v).starts_with(b"/") {
                    return self.err("agentx path is not absolute".into());
                }
                Ok(Value::None)
            }
            Act::Staggered => {
                self.config.global.staggered_start = Some(StaggeredStart {
                    parallelism: num(4) as i32,
                    delay: num(6),
                });
                Ok(Value::None)
            }
            Act::SwitchStart => {
                self.sw = Switch {
                    id: self.config.switches.len() as u32 + 1,
                    name: lossy(cstr(&Self::str_at(stack, top - 1))),
                    flags: VMIFF_UP,
                    ..Switch::default()
                };
                self.disable = false;
                Ok(Value::None)
            }
            Act::SwitchEnd => {
                if self.sw.ifname.is_empty() {
                    let name = self.sw.name.clone();
                    return self.err(format!("switch \"{name}\" is missing interface name"));
                }
                let loc = self.lx.location();
                if self.disable {
                    self.debug(format!(
                        "{}:{}: switch \"{}\" skipped (disabled)",
                        loc.file, loc.line, self.sw.name
                    ));
                } else {
                    if !self.opts.noaction {
                        self.debug(format!(
                            "{}:{}: switch \"{}\" registered",
                            loc.file, loc.line, self.sw.name
                        ));
                    }
                    let mut sw = std::mem::take(&mut self.sw);
                    sw.location = loc;
                    self.config.switches.push(sw);
                }
                Ok(Value::None)
            }
            Act::SwDisable => {
                self.disable = num(1) != 0;
                Ok(Value::None)
            }
            Act::SwGroup => {
                let g = s(2);
                if !validgroup(&g) {
                    return self.err(format!("invalid group name: {}", lossy(&g)));
                }
                self.sw.group = Some(lossy(cstr(&g)));
                Ok(Value::None)
            }
            Act::SwInterface => {
                let name = s(2);
                let ok = getiftype(cstr(&name))
                    .is_some_and(|t| VMD_DESCSW.iter().any(|d| d.as_bytes() == t));
                if !ok {
                    return self.err(format!("invalid switch interface: {}", lossy(&name)));
                }
                if !fits(&name, IF_NAMESIZE) {
                    return self.err(format!("switch interface too long: {}", lossy(&name)));
                }
                self.sw.ifname = lossy(cstr(&name));
                Ok(Value::None)
            }
            Act::SwLocked => {
                self.sw.flags |= VMIFF_LOCKED;
                Ok(Value::None)
            }
            Act::SwRdomain => {
                let r = num(2);
                if !(0..=RT_TABLEID_MAX).contains(&r) {
                    return self.err(format!("invalid rdomain: {r}"));
                }
                self.sw.flags |= VMIFF_RDOMAIN;
                self.sw.rdomain = r as u32;
                Ok(Value::None)
            }
            Act::SwUpDown => {
                if num(1) != 0 {
                    self.sw.flags |= VMIFF_UP;
                } else {
                    self.sw.flags &= !VMIFF_UP;
                }
                Ok(Value::None)
            }
            Act::VmStart => {
                // The rule so far: VM string vm_instance.
                let name2 = Self::str_at(stack, top - 2);
                let inst = match &stack[top - 1] {
                    Value::Str(v) => Some(v.clone()),
                    _ => None,
                };
                self.vm = Vm::default();
                self.ifs = Default::default();
                self.nnics = 0;
                self.nics_seen = 0;
                self.disable = false;
                let name = match inst {
                    Some(i) => {
                        if !fits(&name2, VMM_MAX_NAME_LEN) {
                            return self.err(format!("vm {} name too long", lossy(&name2)));
                        }
                        self.vm.instance_of = Some(lossy(cstr(&name2)));
                        self.vm.flags |= VMOP_CREATE_INSTANCE;
                        i
                    }
                    None => name2,
                };
                if !fits(&name, VMM_MAX_NAME_LEN) {
                    return self.err("vm name too long".into());
                }
                self.vm.name = lossy(cstr(&name));
                Ok(Value::None)
            }
            Act::VmEnd => self.vm_end(),
            Act::VmInstance => Ok(stack[base + 1].clone()),
            Act::VmDisable => {
                self.disable = num(1) != 0;
                Ok(Value::None)
            }
            Act::VmSev => {
                self.vm.sev = true;
                Ok(Value::None)
            }
            Act::VmSeves => {
                self.vm.sev = true;
                self.vm.seves = true;
                Ok(Value::None)
            }
            Act::VmDisk => {
                let path = s(2);
                if !self.parse_disk(cstr(&path), num(3)) {
                    return self.err(format!("failed to parse disks: {}", lossy(&path)));
                }
                self.vm.flags |= VMOP_CREATE_DISK;
                Ok(Value::None)
            }
            Act::ImageFormat => {
                let f = s(2);
                let f = cstr(&f);
                if f.eq_ignore_ascii_case(b"raw") {
                    Ok(Value::Num(1))
                } else if f.eq_ignore_ascii_case(b"qcow2") {
                    Ok(Value::Num(2))
                } else {
                    self.err(format!("unrecognized disk format {}", lossy(f)))
                }
            }
            Act::VmInterface => {
                let i = self.nics_seen;
                self.nics_seen += 1;
                let name = match &stack[base + 2] {
                    Value::Str(v) => Some(v.clone()),
                    _ => None,
                };
                if self.nics_seen > VM_MAX_NICS_PER_VM {
                    return self.err(format!("too many interfaces: {}", self.nics_seen));
                }
                if num(1) != 0 {
                    self.ifs[i].flags |= VMIFF_LOCAL;
                }
                if let Some(name) = name {
                    let name = cstr(&name);
                    if name != b"tap" && getiftype(name) != Some(b"tap".as_slice()) {
                        return self.err(format!("invalid interface: {}", lossy(name)));
                    }
                    if name.len() >= IF_NAMESIZE {
                        return self.err(format!("interface name too long: {}", lossy(name)));
                    }
                    self.ifs[i].name = Some(lossy(name));
                }
                self.vm.flags |= VMOP_CREATE_NETWORK;
                Ok(Value::None)
            }
            Act::IfSwitch => {
                let v = s(2);
                if !fits(&v, VM_NAME_MAX) {
                    return self.err(format!("switch name too long: {}", lossy(&v)));
                }
                self.cur_if().switch = Some(lossy(cstr(&v))).filter(|s| !s.is_empty());
                Ok(Value::None)
            }
            Act::IfGroup => {
                let g = s(2);
                if !validgroup(&g) {
                    return self.err(format!("invalid group name: {}", lossy(&g)));
                }
                self.cur_if().group = Some(lossy(cstr(&g))).filter(|s| !s.is_empty());
                Ok(Value::None)
            }
            Act::LladdrParse => {
                let v = s(1);
                match ether_aton(cstr(&v)) {
                    Some(mac) => Ok(Value::Lladdr(mac)),
                    None => self.err(format!("invalid address: {}\n", lossy(&v))),
                }
            }
            Act::LladdrZero => Ok(Value::Lladdr([0; 6])),
            Act::IfLladdr => {
                if num(1) != 0 {
                    self.cur_if().flags |= VMIFF_LOCKED;
                }
                if let Value::Lladdr(mac) = stack[base + 2] {
                    self.cur_if().lladdr = mac;
                }
                Ok(Value::None)
            }
            Act::IfRdomain => {
                let r = num(2);
                if !(0..=RT_TABLEID_MAX).contains(&r) {
                    return self.err(format!("invalid rdomain: {r}"));
                }
                let nic = self.cur_if();
                nic.flags |= VMIFF_RDOMAIN;
                nic.rdomain = r as u32;
                Ok(Value::None)
            }
            Act::IfUpDown => {
                if num(1) != 0 {
                    self.cur_if().flags |= VMIFF_UP;
                } else {
                    self.cur_if().flags &= !VMIFF_UP;
                }
                Ok(Value::None)
            }
            Act::VmBoot => {
                let path = s(2);
                if self.kernel.is_some() {
                    return self.err("kernel specified more than once".into());
                }
                match realpath(cstr(&path)) {
                    Ok(p) => self.kernel = Some(p),
                    Err(e) => return self.err(format!("kernel path not found: {}", strerror(e))),
                }
                self.vm.flags |= VMOP_CREATE_KERNEL;
                Ok(Value::None)
            }
            Act::VmBootDevice => {
                self.vm.boot_device = match num(3) {
                    1 => BootDevice::Disk,
                    2 => BootDevice::Cdrom,
                    3 => BootDevice::Net,
                    _ => BootDevice::Auto,
                };
                Ok(Value::None)
            }
            Act::VmCdrom => {
                let path = s(2);
                if self.vm.cdrom.as_ref().is_some_and(|c| !c.is_empty()) {
                    return self.err("cdrom specified more than once".into());
                }
                if !fits(&path, compat::PATH_MAX) {
                    return self.err("cdrom name too long".into());
                }
                self.vm.cdrom = Some(lossy(cstr(&path)));
                self.vm.flags |= VMOP_CREATE_CDROM;
                Ok(Value::None)
            }
            Act::VmNifs => {
                let n = num(2);
                if self.nnics != 0 {
                    return self.err("interfaces specified more than once".into());
                }
                if n < 0 || n > VM_MAX_NICS_PER_VM as i64 {
                    return self.err(format!("too many interfaces: {n}"));
                }
                self.nnics = n as usize;
                self.vm.flags |= VMOP_CREATE_NETWORK;
                Ok(Value::None)
            }
            Act::VmMemoryNumber => {
                let n = num(2);
                if self.vm.memory != 0 {
                    return self.err("memory specified more than once".into());
                }
                match self.parse_size(None, n) {
                    Some(size) => self.vm.memory = size,
                    None => return self.err(format!("failed to parse size: {n}")),
                }
                self.vm.flags |= VMOP_CREATE_MEMORY;
                Ok(Value::None)
            }
            Act::VmMemoryString => {
                let w = s(2);
                if self.vm.memory != 0 {
                    return self.err("argument specified more than once".into());
                }
                match self.parse_size(Some(cstr(&w)), 0) {
                    Some(size) => self.vm.memory = size,
                    None => return self.err(format!("failed to parse size: {}", lossy(&w))),
                }
                self.vm.flags |= VMOP_CREATE_MEMORY;
                Ok(Value::None)
            }
            Act::VmOwner => {
                self.vm.owner = Self::owner_of(&stack[base + 1]);
                Ok(Value::None)
            }
            Act::InsFlag(f) => {
                self.vm.instance_flags |= f;
                Ok(Value::None)
            }
            Act::InsOwner => {
                self.vm.instance_owner = Self::owner_of(&stack[base + 1]);
                Ok(Value::None)
            }
            Act::OwnerNumber => Ok(Value::Owner {
                uid: num(1) as u32,
                gid: -1,
            }),
            Act::OwnerString => self.owner_string(&s(1)),
            Act::Concat => {
                let mut v = s(1);
                v.extend_from_slice(&s(2));
                Ok(Value::Str(v))
            }
        }
    }

    fn vm_end(&mut self) -> Result<Value, YyError> {
        let nnics = self.nnics.max(self.nics_seen).min(VM_MAX_NICS_PER_VM);
        let mut vm = std::mem::take(&mut self.vm);
        vm.interfaces = self.ifs[..nnics].to_vec();
        vm.disabled = self.disable;
        vm.boot = self.kernel.take();
        vm.location = self.lx.location();
        let loc = vm.location.clone();
        let state = if vm.disabled { "disabled" } else { "enabled" };
        if self.opts.noaction {
            // vmd -n: no registration, but what vm_register would refuse
            // is an error here too, so that a file vmd -n passes does not
            // stop vmd at startup.
            if let Some(f) = self.opts.register.as_mut() {
                if let Registration::Failed(e) = f(&vm) {
                    return self.err(format!("vm \"{}\" failed: {e}", vm.name));
                }
            }
            self.config.vms.push(vm);
            return Ok(Value::None);
        }
        let reg = match self.opts.register.as_mut() {
            Some(f) => f(&vm),
            None => Registration::Registered,
        };
        match reg {
            Registration::Registered => {
                self.debug(format!(
                    "{}:{}: vm \"{}\" registered ({state})",
                    loc.file, loc.line, vm.name
                ));
                self.config.vms.push(vm);
            }
            Registration::AlreadyExists { running } => {
                let why = if running { "running" } else { "already exists" };
                self.debug(format!(
                    "{}:{}: vm \"{}\" skipped ({why})",
                    loc.file, loc.line, vm.name
                ));
            }
            Registration::Failed(e) => {
                return self.err(format!("vm \"{}\" failed: {e}", vm.name));
            }
        }
        Ok(Value::None)
    }

    /// byacc's yyparse().
    fn yyparse(&mut self) {
        let tables = grammar::tables();
        let final_state = tables.goto[0][N::Grammar as usize].expect("goto on grammar") as usize;
        let mut states: Vec<usize> = vec![0];
        let mut values: Vec<Value> = vec![Value::None];
        let mut la: Option<Token> = None;
        let mut errflag = 0u8;
        enum Next {
            Loop,
            Reduce(usize),
            ErrLab,
        }
        let mut next = Next::Loop;
        loop {
            match next {
                Next::Loop => {
                    let state = *states.last().unwrap_or(&0);
                    if let Some(p) = tables.defred[state] {
                        next = Next::Reduce(p as usize);
                        continue;
                    }
                    let tok = la.get_or_insert_with(|| self.lx.yylex());
                    match tables.action[state][tok.term as usize] {
                        Some(Action::Shift(s)) => {
                            let tok = la.take().unwrap_or(Token {
                                term: T::End,
                                value: Value::None,
                            });
                            states.push(s as usize);
                            values.push(tok.value);
                            errflag = errflag.saturating_sub(1);
                        }
                        Some(Action::Reduce(p)) => next = Next::Reduce(p as usize),
                        Some(Action::Accept) => return,
                        None => {
                            if errflag == 0 {
                                self.lx.yyerror("syntax error".into());
                            }
                            next = Next::ErrLab;
                        }
                    }
                }
                Next::Reduce(p) => {
                    let prod = &PRODS[p];
                    let value = match self.action(p, &values) {
                        Ok(v) => v,
                        Err(YyError) => {
                            next = Next::ErrLab;
                            continue;
                        }
                    };
                    let len = prod.rhs.len();
                    states.truncate(states.len() - len);
                    values.truncate(values.len() - len);
                    let state = *states.last().unwrap_or(&0);
                    if state == 0 && prod.lhs == N::Grammar {
                        states.push(final_state);
                        values.push(value);
                        let tok = la.get_or_insert_with(|| self.lx.yylex());
                        if tok.term == T::End {
                            return;
                        }
                    } else {
                        let g = tables.goto[state][prod.lhs as usize].expect("goto after reduce");
                        states.push(g as usize);
                        values.push(value);
                    }
                    next = Next::Loop;
                }
                Next::ErrLab => {
                    // yyerrlab / yyinrecovery
                    if errflag < 3 {
                        errflag = 3;
                        loop {
                            let state = *states.last().unwrap_or(&0);
                            if let Some(Action::Shift(s)) = tables.action[state][T::Error as usize]
                            {
                                states.push(s as usize);
                                values.push(Value::None);
                                break;
                            }
                            if states.len() <= 1 {
                                return;
                            }
                            states.pop();
                            values.pop();
                        }
                    } else {
                        if la.as_ref().is_some_and(|t| t.term == T::End) {
                            return;
                        }
                        la = None;
                    }
                    next = Next::Loop;
                }
            }
        }
    }
}

pub(crate) fn parse(src: Source<'_>, opts: ParseOptions<'_>) -> ParseOutcome {
    let mut p = Parser {
        lx: Lexer::new(opts.defines),
        opts,
        config: Config::default(),
        vm: Vm::default(),
        ifs: Default::default(),
        nnics: 0,
        nics_seen: 0,
        disable: false,
        kernel: None,
        sw: Switch::default(),
    };
    let opened = match src {
        Source::File(path) => {
            use std::os::unix::ffi::OsStrExt;
            p.lx.pushfile(path.as_os_str().as_bytes())
        }
        Source::Text(name, text) => {
            p.lx.push_text(name, text);
            Ok(())
        }
    };
    if let Err(e) = opened {
        let name = match src {
            Source::File(path) => path.display().to_string(),
            Source::Text(name, _) => name.to_string(),
        };
        let e = match e {
            PushError::Io(e) => e,
            other => {
                p.warn(format!("failed to open {name}: {other}"));
                return ParseOutcome {
                    config: p.config,
                    messages: p.lx.log,
                    ok: false,
                };
            }
        };
        let errno = errno_of(&e);
        if errno == ENOENT && p.opts.default_file {
            p.debug(format!("{name}: missing"));
            return ParseOutcome {
                config: p.config,
                messages: p.lx.log,
                ok: true,
            };
        }
        p.warn(format!("failed to open {name}: {}", strerror(errno)));
        let ok = errno == ENOENT;
        return ParseOutcome {
            config: p.config,
            messages: p.lx.log,
            ok,
        };
    }
    p.yyparse();
    // Macros nobody expanded are reported, -D ones included.
    let unused: Vec<String> =
        p.lx.syms
            .iter()
            .filter(|s| !s.used)
            .map(|s| lossy(&s.name))
            .collect();
    for name in unused {
        p.warn(format!("warning: macro '{name}' not used"));
    }
    let ok = p.lx.errors == 0;
    ParseOutcome {
        config: p.config,
        messages: p.lx.log,
        ok,
    }
}
