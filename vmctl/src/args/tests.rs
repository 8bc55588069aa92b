//! The command line: every command's arguments and OpenBSD's texts.

use super::*;
use crate::testdir::Dir;

fn argv(words: &[&str]) -> Vec<OsString> {
    std::iter::once("vmctl")
        .chain(words.iter().copied())
        .map(OsString::from)
        .collect()
}

/// The parse, and what it warned.
fn parse_words(words: &[&str]) -> (Result<Invocation, Fail>, String) {
    let mut err = Vec::new();
    let r = parse(&argv(words), &mut err);
    (r, String::from_utf8(err).unwrap())
}

fn action(words: &[&str]) -> Action {
    let (r, w) = parse_words(words);
    assert!(w.is_empty(), "{words:?} warned {w:?}");
    r.unwrap_or_else(|f| panic!("{words:?}: {f:?}")).action
}

/// Everything printed on stderr for a failing command line.
fn failure(words: &[&str]) -> String {
    let (r, mut w) = parse_words(words);
    let f = r.expect_err("should fail");
    let mut v = Vec::new();
    f.print(&mut v);
    w.push_str(&String::from_utf8(v).unwrap());
    w
}

fn usage_of(cmd: &str) -> String {
    let c = lookup(cmd).unwrap();
    format!("usage:\tvmctl [-v] {} {}\n", c.name, c.usage)
}

const USAGE: &str = "usage:\tvmctl [-v] command [arg ...]\n";

fn name(n: &str) -> Target {
    Target {
        id: 0,
        name: Some(n.into()),
    }
}

fn id(i: u32) -> Target {
    Target { id: i, name: None }
}

#[test]
fn args_global_usage() {
    assert_eq!(failure(&[]), USAGE);
    assert_eq!(failure(&["-v"]), USAGE);
    assert_eq!(
        failure(&["-x", "status"]),
        format!("vmctl: unknown option -- x\n{USAGE}")
    );
    let (r, _) = parse_words(&["-v", "-v", "reload"]);
    assert_eq!(
        r.unwrap(),
        Invocation {
            verbose: true,
            action: Action::Reload
        }
    );
    assert!(!parse_words(&["reload"]).0.unwrap().verbose);
}

#[test]
fn args_prefix_matching() {
    let cases = [
        ("star", "start"),
        ("stat", "status"),
        ("sto", "stop"),
        ("sh", "show"),
        ("con", "console"),
        ("cr", "create"),
        ("loa", "load"),
        ("log", "log"),
        ("rel", "reload"),
        ("res", "reset"),
        ("p", "pause"),
        ("u", "unpause"),
        ("w", "wait"),
        ("status", "status"),
    ];
    for (word, full) in cases {
        assert_eq!(lookup(word).unwrap().name, full, "{word}");
    }
    for word in ["s", "st", "sta", "c", "lo", "re", "r", "l", ""] {
        assert_eq!(
            failure(&[word]),
            format!("ambiguous argument: {word}\n{USAGE}"),
            "{word}"
        );
    }
    for word in ["send", "receive", "stopall", "x", "Status"] {
        assert_eq!(
            failure(&[word]),
            format!("unknown argument: {word}\n{USAGE}"),
            "{word}"
        );
    }
}

#[test]
fn args_id_commands() {
    assert_eq!(action(&["console", "web"]), Action::Console(name("web")));
    assert_eq!(action(&["pause", "3"]), Action::Pause(id(3)));
    assert_eq!(action(&["unp", "web"]), Action::Unpause(name("web")));
    assert_eq!(action(&["wait", "4294967295"]), Action::Wait(id(u32::MAX)));
    // Too large for an id: a name.
    assert_eq!(
        action(&["wait", "4294967296"]),
        Action::Wait(name("4294967296"))
    );
    for cmd in ["console", "pause", "unpause", "wait"] {
        assert_eq!(failure(&[cmd]), usage_of(cmd), "{cmd}");
        assert_eq!(failure(&[cmd, "a", "b"]), usage_of(cmd), "{cmd}");
        assert_eq!(failure(&[cmd, "-x"]), "vmctl: invalid id: -x\n", "{cmd}");
    }
    let long = "n".repeat(64);
    assert_eq!(
        failure(&["pause", &long]),
        format!("vmctl: name too long\nvmctl: invalid id: {long}\n")
    );
    assert_eq!(
        action(&["pause", &long[..63]]),
        Action::Pause(name(&long[..63]))
    );
}

#[test]
fn args_status_and_show() {
    let all = Target::default();
    assert_eq!(
        action(&["status"]),
        Action::Status {
            running: false,
            target: all.clone()
        }
    );
    assert_eq!(
        action(&["status", "-r"]),
        Action::Status {
            running: true,
            target: all.clone()
        }
    );
    assert_eq!(
        action(&["show", "-r", "web"]),
        Action::Status {
            running: true,
            target: name("web")
        }
    );
    assert_eq!(
        action(&["stat", "2"]),
        Action::Status {
            running: false,
            target: id(2)
        }
    );
    assert_eq!(failure(&["status", "a", "b"]), usage_of("status"));
    assert_eq!(
        failure(&["status", "-x"]),
        format!("vmctl: unknown option -- x\n{}", usage_of("status"))
    );
    assert_eq!(
        failure(&["show", "-a"]),
        format!("vmctl: unknown option -- a\n{}", usage_of("show"))
    );
    // The id comes last.
    assert_eq!(failure(&["status", "web", "-r"]), usage_of("status"));
    assert_eq!(failure(&["status", "--", "-r"]), "vmctl: invalid id: -r\n");
}

#[test]
fn args_stop() {
    assert_eq!(
        action(&["stop", "web"]),
        Action::Stop {
            target: Some(name("web")),
            flags: 0
        }
    );
    assert_eq!(
        action(&["stop", "-fw", "1"]),
        Action::Stop {
            target: Some(id(1)),
            flags: VMOP_FORCE | VMOP_WAIT
        }
    );
    assert_eq!(
        action(&["stop", "-w", "-a"]),
        Action::Stop {
            target: None,
            flags: VMOP_WAIT
        }
    );
    assert_eq!(
        action(&["sto", "-af"]),
        Action::Stop {
            target: None,
            flags: VMOP_FORCE
        }
    );
    assert_eq!(failure(&["stop"]), usage_of("stop"));
    assert_eq!(failure(&["stop", "-a", "web"]), usage_of("stop"));
    assert_eq!(failure(&["stop", "web", "-a"]), usage_of("stop"));
    assert_eq!(failure(&["stop", "a", "b"]), usage_of("stop"));
    assert_eq!(
        failure(&["stop", "-q", "web"]),
        format!("vmctl: unknown option -- q\n{}", usage_of("stop"))
    );
    assert_eq!(
        usage_of("stop"),
        "usage:\tvmctl [-v] stop [-fw] [id | -a]\n"
    );
}

#[test]
fn args_load_log_reload_reset() {
    assert_eq!(
        action(&["load", "/etc/other.conf"]),
        Action::Load("/etc/other.conf".into())
    );
    assert_eq!(failure(&["load"]), usage_of("load"));
    assert_eq!(failure(&["load", "a", "b"]), usage_of("load"));

    for (w, v) in [
        ("brief", 0),
        ("b", 0),
        ("BRIEF", 0),
        ("", 0),
        ("verbose", 2),
        ("verb", 2),
        ("V", 2),
    ] {
        assert_eq!(action(&["log", w]), Action::Log(v), "{w:?}");
    }
    for bad in ["briefly", "x", "debug"] {
        assert_eq!(failure(&["log", bad]), usage_of("log"));
    }
    assert_eq!(failure(&["log"]), usage_of("log"));
    assert_eq!(
        usage_of("log"),
        "usage:\tvmctl [-v] log [brief | verbose]\n"
    );

    assert_eq!(action(&["reload"]), Action::Reload);
    assert_eq!(failure(&["reload", "x"]), "usage:\tvmctl [-v] reload \n");

    assert_eq!(action(&["reset"]), Action::Reset(CONFIG_ALL));
    assert_eq!(action(&["reset", "ALL"]), Action::Reset(CONFIG_ALL));
    assert_eq!(action(&["reset", "vms"]), Action::Reset(CONFIG_VMS));
    assert_eq!(
        action(&["reset", "Switches"]),
        Action::Reset(CONFIG_SWITCHES)
    );
    // Exact words only, unlike log.
    assert_eq!(failure(&["reset", "vm"]), usage_of("reset"));
    assert_eq!(failure(&["reset", "all", "vms"]), usage_of("reset"));
}

#[test]
fn args_create() {
    let d = Dir::new("args-create");
    let raw = d.path("new.img");
    assert_eq!(
        action(&["create", "-s", "4G", &raw]),
        Action::Create(CreateArgs {
            disk: raw.clone().into(),
            format: DiskFormat::Raw,
            base: None,
            input: None,
            size: 4 << 30,
        })
    );
    let q = d.path("new.QCOW2");
    let Action::Create(c) = action(&["create", "-b", "base.qcow2", &q]) else {
        panic!()
    };
    assert_eq!(
        (c.format, c.base.as_deref(), c.size),
        (DiskFormat::Qcow2, Some(Path::new("base.qcow2")), 0)
    );
    let Action::Create(c) = action(&["create", "-i", "old.img", "-s1G", &format!("raw:{q}")])
    else {
        panic!()
    };
    assert_eq!(
        (c.format, c.disk.as_path()),
        (DiskFormat::Raw, Path::new(&q))
    );
    assert_eq!(c.input.as_deref(), Some(Path::new("old.img")));
    // An existing file with qcow2's magic is qcow2 whatever its name.
    let magic = d.file("magic.img", b"QFI\xfb\0\0\0\x03");
    let Action::Create(c) = action(&["create", "-s", "1M", &magic]) else {
        panic!()
    };
    assert_eq!(c.format, DiskFormat::Qcow2);

    // Options come first since 2025.
    assert_eq!(failure(&["create", &raw, "-s", "1G"]), usage_of("create"));
    assert_eq!(failure(&["create", "-s", "1G"]), usage_of("create"));
    assert_eq!(
        failure(&["create", "-x", &raw]),
        format!("vmctl: unknown option -- x\n{}", usage_of("create"))
    );
    assert_eq!(
        failure(&["create", &raw, "-s"]),
        usage_of("create"),
        "-s after the operand is an operand"
    );
    assert_eq!(
        failure(&["create", "-s"]),
        format!(
            "vmctl: option requires an argument -- s\n{}",
            usage_of("create")
        )
    );
    assert_eq!(
        failure(&["create", "-s", "lots", &raw]),
        "vmctl: invalid disk size: lots: Invalid argument\n"
    );
    assert_eq!(
        failure(&["create", "-s", "1000K", &raw]),
        "vmctl: disk size must be at least 1MB\n"
    );
    let (r, w) = parse_words(&["create", "-s", "1.5M", &raw]);
    assert_eq!(w, "vmctl: disk size rounded to 1.0M\n");
    let Action::Create(c) = r.unwrap().action else {
        panic!()
    };
    assert_eq!(c.size, 1 << 20);
    assert_eq!(
        usage_of("create"),
        "usage:\tvmctl [-v] create [-b base | -i disk] [-s size] disk\n"
    );
}

#[test]
fn args_sizes() {
    let mut w = Vec::new();
    assert_eq!(parse_size("512M", "memory", &mut w), Ok(512 << 20));
    assert_eq!(parse_size("128G", "memory", &mut w), Ok(128 << 30));
    assert_eq!(parse_size("1048576", "memory", &mut w), Ok(1 << 20));
    assert!(w.is_empty());
    assert_eq!(
        parse_size("129G", "memory", &mut w),
        Err(Fail::errx("memory size too large (limit is 128G)"))
    );
    // Only memory has a limit.
    assert_eq!(parse_size("129G", "disk", &mut w), Ok(129 << 30));
    assert_eq!(
        parse_size("-1G", "memory", &mut w),
        Err(Fail::errx("memory size must be at least 1MB"))
    );
    assert_eq!(
        parse_size("99999999999999999999", "memory", &mut w),
        Err(Fail::errx(
            "invalid memory size: 99999999999999999999: Result too large"
        ))
    );
    assert_eq!(parse_size("4.5G", "memory", &mut w), Ok(4608 << 20));
    assert!(w.is_empty());
    assert_eq!(parse_size("1500K", "memory", &mut w), Ok(1 << 20));
    assert_eq!(
        String::from_utf8(w).unwrap(),
        "vmctl: memory size rounded to 1.0M\n"
    );
}

#[test]
fn args_start_full() {
    let d = Dir::new("args-start");
    let kernel = d.file("bsd", b"kernel");
    let disk = d.file("disk.img", b"");
    let q = d.file("d2.qcow2", b"");
    let iso = d.file("install.iso", b"");
    let Action::Start(a) = action(&[
        "start", "-c", "-L", "-B", "net", "-b", &kernel, "-d", &disk, "-d", &q, "-i", "3", "-m",
        "1G", "-n", "uplink", "-r", &iso, "-t", "base", "web",
    ]) else {
        panic!()
    };
    assert_eq!(
        a,
        StartArgs {
            target: name("web"),
            boot: Some(kernel.clone().into()),
            boot_device: BootDevice::Net,
            console: true,
            disks: vec![(disk.clone(), DiskFormat::Raw), (q, DiskFormat::Qcow2)],
            nics: vec![LOCAL_NIC.into(), "uplink".into(), String::new()],
            memory: 1 << 30,
            iso: Some(iso),
            instance: Some("base".into()),
        }
    );

    // No options: start a configured VM.
    assert_eq!(
        action(&["start", "7"]),
        Action::Start(StartArgs {
            target: id(7),
            ..StartArgs::default()
        })
    );
    // More -n than -i: all of them.
    let Action::Start(a) = action(&["start", "-i", "1", "-n", "a", "-n", "b", "vm"]) else {
        panic!()
    };
    assert_eq!(a.nics, vec!["a".to_string(), "b".to_string()]);
    // raw: prefix and a relative path, realpath'd.
    let Action::Start(a) = action(&[
        "start",
        "-d",
        &format!("raw:{}/./disk.img", d.0.display()),
        "vm",
    ]) else {
        panic!()
    };
    assert_eq!(a.disks, vec![(disk, DiskFormat::Raw)]);
}

#[test]
fn args_start_errors() {
    let d = Dir::new("args-starterr");
    let kernel = d.file("bsd", b"kernel");
    let missing = d.path("missing");
    let long = "t".repeat(64);
    let cases: Vec<(Vec<&str>, String)> =
        vec![
        (vec!["start"], usage_of("start")),
        (vec!["start", "a", "b"], usage_of("start")),
        (vec!["start", "vm", "-c"], usage_of("start")),
        (
            vec!["start", "-z", "vm"],
            format!("vmctl: unknown option -- z\n{}", usage_of("start")),
        ),
        (
            vec!["start", "-m"],
            format!(
                "vmctl: option requires an argument -- m\n{}",
                usage_of("start")
            ),
        ),
        (
            vec!["start", "-b", &kernel, "-b", &kernel, "vm"],
            "vmctl: boot image specified multiple times\n".into(),
        ),
        (
            vec!["start", "-b", &missing, "vm"],
            "vmctl: invalid boot image path: No such file or directory\n".into(),
        ),
        (
            vec!["start", "-B", "disk", "-B", "net", "vm"],
            "vmctl: boot device specified multiple times\n".into(),
        ),
        (
            vec!["start", "-B", "floppy", "vm"],
            "vmctl: unknown boot device floppy\n".into(),
        ),
        (
            vec!["start", "-B", "Disk", "vm"],
            "vmctl: unknown boot device Disk\n".into(),
        ),
        (
            vec!["start", "-r", &kernel, "-r", &kernel, "vm"],
            "vmctl: iso image specified multiple times\n".into(),
        ),
        (
            vec!["start", "-r", &missing, "vm"],
            format!("vmctl: invalid iso image path: {missing}: No such file or directory\n"),
        ),
        (
            vec!["start", "-d", &missing, "vm"],
            format!("vmctl: invalid disk path: {missing}: No such file or directory\n"),
        ),
        (
            vec!["start", "-m", "1G", "-m", "2G", "vm"],
            "vmctl: memory specified multiple times\n".into(),
        ),
        (
            vec!["start", "-m", "200G", "vm"],
            "vmctl: memory size too large (limit is 128G)\n".into(),
        ),
        (
            vec!["start", "-m", "x", "vm"],
            "vmctl: invalid memory size: x: Invalid argument\n".into(),
        ),
        (
            vec!["start", "-m", "1K", "vm"],
            "vmctl: memory size must be at least 1MB\n".into(),
        ),
        (
            vec!["start", "-i", "1", "-i", "2", "vm"],
            "vmctl: interfaces specified multiple times\n".into(),
        ),
        (
            vec!["start", "-i", "0", "vm"],
            "vmctl: count is too small: 0\nvmctl: invalid interface count: 0\n".into(),
        ),
        (
            vec!["start", "-i", "x", "vm"],
            "vmctl: count is invalid: x\nvmctl: invalid interface count: x\n".into(),
        ),
        (
            vec!["start", "-i", "2147483648", "vm"],
            "vmctl: count is too large: 2147483648\nvmctl: invalid interface count: 2147483648\n"
                .into(),
        ),
        (
            vec!["start", "-t", &long, "vm"],
            format!("vmctl: instance vm name too long\nvmctl: invalid name: {long}\n"),
        ),
        (vec!["start", "--", "-vm"], "vmctl: invalid id: -vm\n".into()),
    ];
    for (words, want) in cases {
        assert_eq!(failure(&words), want, "{words:?}");
    }
    assert_eq!(
        usage_of("start"),
        "usage:\tvmctl [-v] start [-cL] [-B device] [-b path] [-d disk] [-i count]\n\
         \t\t[-m size] [-n switch] [-r path] [-t name] id | name\n"
    );
    // A warning and then a fatal error come out in that order.
    assert_eq!(
        failure(&["start", "-m", "1500K", "-m", "2G", "vm"]),
        "vmctl: memory size rounded to 1.0M\nvmctl: memory specified multiple times\n"
    );
}

#[test]
fn args_disk_types() {
    let d = Dir::new("args-types");
    let t = |s: &str| parse_disktype(OsStr::new(s));
    assert_eq!(
        t("qcow2:/a/b.img"),
        (DiskFormat::Qcow2, PathBuf::from("/a/b.img"))
    );
    assert_eq!(
        t("raw:/a/b.qcow2"),
        (DiskFormat::Raw, PathBuf::from("/a/b.qcow2"))
    );
    assert_eq!(t("/no/such.Qcow2").0, DiskFormat::Qcow2);
    assert_eq!(t("/no/such.raw").0, DiskFormat::Raw);
    assert_eq!(t("/no/such").0, DiskFormat::Raw);
    assert_eq!(t("/no/such.").0, DiskFormat::Raw);
    let q = d.file("plain", b"QFI\xfbrest");
    assert_eq!(t(&q).0, DiskFormat::Qcow2);
    let r = d.file("short.qcow2", b"QF");
    assert_eq!(t(&r).0, DiskFormat::Qcow2, "by extension");
    let r = d.file("zeros.img", &[0; 512]);
    assert_eq!(t(&r).0, DiskFormat::Raw);
}
