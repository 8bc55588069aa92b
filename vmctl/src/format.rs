//! What vmctl prints about VMs: the `status` table (vmctl.c
//! `print_vm_info`) and its columns.

use vmd_proto::compat::fmt_scaled;
use vmd_proto::msg::{
    VmopInfoResult, VM_STATE_DISABLED, VM_STATE_PAUSED, VM_STATE_RUNNING, VM_STATE_SHUTDOWN,
    VM_STATE_WAITING,
};

use crate::args::Target;

/// The header line of the table.
pub const HEADER: &str = "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME";

/// user_from_uid(3) and group_from_gid(3); tests plug in their own.
pub trait Names {
    fn user(&self, uid: u32) -> Option<String>;
    fn group(&self, gid: u32) -> Option<String>;
}

/// The password and group databases.
pub struct SystemNames;

impl Names for SystemNames {
    fn user(&self, uid: u32) -> Option<String> {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    }

    fn group(&self, gid: u32) -> Option<String> {
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name)
    }
}

/// The STATE column: the most significant state bit wins.
pub fn vm_state(mask: u32) -> &'static str {
    if mask & VM_STATE_PAUSED != 0 {
        "paused"
    } else if mask & VM_STATE_WAITING != 0 {
        "waiting"
    } else if mask & VM_STATE_SHUTDOWN != 0 {
        "stopping"
    } else if mask & VM_STATE_RUNNING != 0 {
        "running"
    } else if mask == 0 || mask & VM_STATE_DISABLED != 0 {
        "stopped"
    } else {
        "unknown"
    }
}

/// A VM that has a process (`vir_creator_pid` and `vir_id` set).
pub fn is_running(vm: &VmopInfoResult) -> bool {
    vm.creator_pid != 0 && vm.id != 0
}

/// `check_info_id`: whether `vm` is the one asked for (every VM when none
/// was).
pub fn matches(target: &Target, name: &str, id: u32) -> bool {
    let want = target.name.as_deref().unwrap_or("");
    (target.id == 0 && want.is_empty())
        || (target.id != 0 && target.id == id)
        || (!want.is_empty() && want == name)
}

/// At most `n - 1` bytes of `s`, as strlcpy into an `n`-byte buffer.
fn truncated(mut s: String, n: usize) -> String {
    if s.len() >= n {
        let mut end = n - 1;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The OWNER column: user name or uid, then `:group` or `:gid` when the
/// VM has a group owner, in vmctl's 16-byte buffers.
pub fn owner(uid: u32, gid: Option<u32>, names: &dyn Names) -> String {
    // %d of a uid_t, as vmctl prints it.
    let user = names.user(uid).unwrap_or_else(|| (uid as i32).to_string());
    let mut s = truncated(user, 16);
    if let Some(gid) = gid {
        let group = match names.group(gid) {
            Some(g) => format!(":{g}"),
            None => format!(":{gid}"),
        };
        s.push_str(&truncated(group, 16));
        s = truncated(s, 16);
    }
    s
}

/// The TTY column: the name after the last `/`, the whole name if there
/// is nothing after it, `-` without a tty.
pub fn tty_column(ttyname: &str) -> &str {
    if ttyname.is_empty() {
        return "-";
    }
    match ttyname.rfind('/') {
        Some(i) if i + 1 < ttyname.len() => &ttyname[i + 1..],
        _ => ttyname,
    }
}

fn scaled(n: u64) -> String {
    i64::try_from(n)
        .ok()
        .and_then(fmt_scaled)
        .unwrap_or_else(|| "-".to_string())
}

/// The table for `list`, and whether any VM was considered (`-r` skips
/// those without a process; an id or name only filters the rows printed,
/// as in vmctl).  vmctl exits 1 when none was.
pub fn status_table(
    list: &[VmopInfoResult],
    target: &Target,
    running_only: bool,
    names: &dyn Names,
) -> (String, bool) {
    let mut out = format!("{HEADER}\n");
    let mut found = false;
    for vm in list {
        let running = is_running(vm);
        if !running && running_only {
            continue;
        }
        found = true;
        if !matches(target, &vm.name, vm.id) {
            continue;
        }
        let user = owner(vm.uid, vm.gid, names);
        let maxmem = scaled(vm.memory_size);
        let (pid, curmem, tty) = if running {
            (
                (vm.creator_pid as u32).to_string(),
                scaled(vm.used_size),
                tty_column(&vm.ttyname),
            )
        } else {
            ("-".to_string(), "-".to_string(), "-")
        };
        out.push_str(&format!(
            "{:>5} {:>5} {:>5} {:>7} {:>7} {:>7} {:>12} {:>8} {}\n",
            vm.id,
            pid,
            vm.ncpus,
            maxmem,
            curmem,
            tty,
            user,
            vm_state(vm.state),
            vm.name
        ));
    }
    (out, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Names for Fake {
        fn user(&self, uid: u32) -> Option<String> {
            match uid {
                0 => Some("root".into()),
                1000 => Some("averyveryverylongusername".into()),
                1001 => Some("bob".into()),
                _ => None,
            }
        }
        fn group(&self, gid: u32) -> Option<String> {
            match gid {
                0 => Some("wheel".into()),
                1001 => Some("staff".into()),
                _ => None,
            }
        }
    }

    fn vm(id: u32, pid: i32, name: &str, state: u32) -> VmopInfoResult {
        VmopInfoResult {
            memory_size: 512 << 20,
            used_size: 0,
            ncpus: 1,
            vcpu_state: vec![0],
            creator_pid: pid,
            id,
            name: name.into(),
            ttyname: String::new(),
            uid: 0,
            gid: None,
            state,
        }
    }

    #[test]
    fn status_header_matches_printf_widths() {
        let h = format!(
            "{:>5} {:>5} {:>5} {:>7} {:>7} {:>7} {:>12} {:>8} {}",
            "ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "NAME"
        );
        assert_eq!(h, HEADER);
    }

    #[test]
    fn status_states() {
        assert_eq!(vm_state(0), "stopped");
        assert_eq!(vm_state(VM_STATE_DISABLED), "stopped");
        assert_eq!(vm_state(VM_STATE_RUNNING), "running");
        assert_eq!(vm_state(VM_STATE_RUNNING | VM_STATE_SHUTDOWN), "stopping");
        assert_eq!(vm_state(VM_STATE_RUNNING | VM_STATE_PAUSED), "paused");
        assert_eq!(
            vm_state(VM_STATE_WAITING | VM_STATE_SHUTDOWN | VM_STATE_DISABLED),
            "waiting"
        );
        assert_eq!(vm_state(0x40), "unknown");
    }

    #[test]
    fn status_owner_column() {
        assert_eq!(owner(0, None, &Fake), "root");
        assert_eq!(owner(0, Some(0), &Fake), "root:wheel");
        assert_eq!(owner(1001, Some(1001), &Fake), "bob:staff");
        assert_eq!(owner(4242, Some(77), &Fake), "4242:77");
        // 15 bytes at most, as vmctl's char user[16].
        assert_eq!(owner(1000, None, &Fake), "averyveryverylo");
        assert_eq!(owner(1001, Some(4_000_000_000), &Fake), "bob:4000000000");
        assert_eq!(owner(u32::MAX, None, &Fake), "-1");
    }

    #[test]
    fn status_tty_column() {
        assert_eq!(tty_column("/dev/ttyp3"), "ttyp3");
        assert_eq!(tty_column("/dev/pts/7"), "7");
        assert_eq!(tty_column("ttyp1"), "ttyp1");
        assert_eq!(tty_column("/dev/"), "/dev/");
        assert_eq!(tty_column(""), "-");
    }

    #[test]
    fn status_table_rows() {
        let mut a = vm(1, 4321, "web", VM_STATE_RUNNING);
        a.used_size = 1536 << 20;
        a.memory_size = 2 << 30;
        a.ttyname = "/dev/ttyp0".into();
        a.uid = 1001;
        a.gid = Some(1001);
        a.ncpus = 2;
        let mut b = vm(2, 4400, "db", VM_STATE_RUNNING | VM_STATE_PAUSED);
        b.ttyname = "/dev/ttyp1".into();
        b.used_size = 100 << 20;
        let c = vm(3, 0, "idle", VM_STATE_DISABLED);
        let mut d = vm(4, 4500, "going", VM_STATE_RUNNING | VM_STATE_SHUTDOWN);
        d.memory_size = 1 << 20;
        let list = [a, b, c, d];
        let (t, found) = status_table(&list, &Target::default(), false, &Fake);
        assert!(found);
        assert_eq!(
            t,
            "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME\n\
             \x20   1  4321     2    2.0G    1.5G   ttyp0    bob:staff  running web\n\
             \x20   2  4400     1    512M    100M   ttyp1         root   paused db\n\
             \x20   3     -     1    512M       -       -         root  stopped idle\n\
             \x20   4  4500     1    1.0M      0B       -         root stopping going\n"
        );

        // -r hides VMs without a process.
        let (t, found) = status_table(&list, &Target::default(), true, &Fake);
        assert!(found);
        assert!(!t.contains("idle"));
        assert_eq!(t.lines().count(), 4);

        // By name or id, only that row; the others still count as found.
        let by_name = Target {
            id: 0,
            name: Some("db".into()),
        };
        let (t, found) = status_table(&list, &by_name, false, &Fake);
        assert!(found);
        assert_eq!(t.lines().count(), 2);
        assert!(t.ends_with(" db\n"));
        let (t, _) = status_table(&list, &Target { id: 3, name: None }, false, &Fake);
        assert!(t.ends_with(" idle\n") && t.lines().count() == 2);
        let (t, found) = status_table(&list, &Target { id: 9, name: None }, false, &Fake);
        assert!(found);
        assert_eq!(t, format!("{HEADER}\n"));
    }

    #[test]
    fn status_table_empty() {
        let (t, found) = status_table(&[], &Target::default(), false, &Fake);
        assert_eq!(t, format!("{HEADER}\n"));
        assert!(!found);
        let list = [vm(1, 0, "off", 0)];
        let (_, found) = status_table(&list, &Target::default(), true, &Fake);
        assert!(!found);
    }
}
