//! vm.conf tests: one per grammar feature and one per message, on texts
//! written here, plus the cases of regress/usr.sbin/vmd/config (reference
//! §2.5) rebuilt from their descriptions.
use std::path::{Path, PathBuf};

use vmd_proto::config::*;

use super::*;

/// Names for `owner`: alice=1000, bob=1001; staff=50, wheel=0.
struct Names;

impl Resolver for Names {
    fn uid(&self, user: &str) -> Option<u32> {
        match user {
            "alice" => Some(1000),
            "bob" => Some(1001),
            _ => None,
        }
    }
    fn gid(&self, group: &str) -> Option<u32> {
        match group {
            "staff" => Some(50),
            "wheel" => Some(0),
            _ => None,
        }
    }
}

fn opts(defines: &[(Vec<u8>, Vec<u8>)]) -> ParseOptions<'_> {
    let mut o = ParseOptions::new(defines);
    o.noaction = true;
    o.resolver = &Names;
    o
}

fn outcome_d(text: &str, defines: &[(Vec<u8>, Vec<u8>)]) -> ParseOutcome {
    parse_str_with("vm.conf", text, opts(defines))
}

fn outcome(text: &str) -> ParseOutcome {
    outcome_d(text, &[])
}

/// What `vmd -n` prints for `text` (without `configuration OK`).
fn lines(text: &str) -> Vec<String> {
    outcome(text).lines(0)
}

fn fails(text: &str) -> Vec<String> {
    let o = outcome(text);
    assert!(!o.ok, "expected a failure for:\n{text}");
    o.lines(0)
}

fn ok(text: &str) -> Config {
    let o = outcome(text);
    assert!(
        o.ok && o.lines(0).is_empty(),
        "unexpected output for:\n{text}\n{:?}",
        o.lines(0)
    );
    o.config
}

fn defs(d: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    d.iter()
        .map(|(a, b)| (a.as_bytes().to_vec(), b.as_bytes().to_vec()))
        .collect()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("vmd-config-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    /// A file with `content`; its canonical path.
    fn file(&self, name: &str, content: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::canonicalize(p).unwrap().display().to_string()
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- lexical rules ----

#[test]
fn comments_and_blank_lines() {
    let c = ok("# a comment\n   # indented\n\n\nvm \"a\" {  # after a token\n\tmemory 1G # here too\n}\n\n");
    assert_eq!(c.vms.len(), 1);
    assert_eq!(c.vms[0].memory, 1 << 30);
}

#[test]
fn backslash_newline_continues_a_line() {
    let c = ok("vm \"a\" { \\\n  memory \\\n  1G }\n");
    assert_eq!(c.vms[0].memory, 1 << 30);
    // Line numbers keep counting through continuations.
    assert_eq!(
        fails("vm \"a\" { \\\n  memory 1 }\n"),
        [
            "memory size must be at least 1MB",
            "vm.conf:2: failed to parse size: 1"
        ]
    );
}

#[test]
fn quoted_strings_and_escapes() {
    let c = ok("vm 'a' {\n\tcdrom \"/x/\\\"q\\\"\\ y\\z\"\n}\n");
    assert_eq!(c.vms[0].name, "a");
    assert_eq!(c.vms[0].cdrom.as_deref(), Some("/x/\"q\" y\\z"));
    // A newline inside quotes is dropped but counted.
    let c = ok("vm \"a\" {\n\tcdrom \"/ab\ncd\"\n}\n");
    assert_eq!(c.vms[0].cdrom.as_deref(), Some("/abcd"));
    assert_eq!(c.vms[0].location.line, 4);
}

#[test]
fn adjacent_strings_concatenate() {
    let c = ok("name = \"x\"\nvm \"a\" {\n\tcdrom \"/iso/\" $name \".iso\"\n}\n");
    assert_eq!(c.vms[0].cdrom.as_deref(), Some("/iso/x.iso"));
}

#[test]
fn macros_expand_outside_quotes() {
    let c = ok(
        "mem = \"2G\"\nopts = \"memory 1G\"\nvm \"a\" {\n\tmemory $mem\n}\nvm \"b\" { $opts }\n",
    );
    assert_eq!(c.vms[0].memory, 2 << 30);
    assert_eq!(c.vms[1].memory, 1 << 30);
}

#[test]
fn macros_are_not_expanded_inside_quotes() {
    let o = outcome("x = \"1G\"\nvm \"a\" {\n\tcdrom \"$x\"\n}\n");
    assert!(o.ok);
    assert_eq!(o.config.vms[0].cdrom.as_deref(), Some("$x"));
    assert_eq!(o.lines(0), ["warning: macro 'x' not used"]);
}

#[test]
fn command_line_macros_override_and_add() {
    let d = defs(&[("mem", "4G"), ("iso", "/a.iso")]);
    let o = outcome_d(
        "mem = \"1G\"\nvm \"a\" {\n\tmemory $mem\n\tcdrom $iso\n}\n",
        &d,
    );
    assert!(o.ok, "{:?}", o.lines(0));
    assert_eq!(o.config.vms[0].memory, 4 << 30);
    assert_eq!(o.config.vms[0].cdrom.as_deref(), Some("/a.iso"));
    // The first -D of a name wins.
    let d = defs(&[("m", "1G"), ("m", "2G")]);
    assert_eq!(
        outcome_d("vm \"a\" { memory $m }\n", &d).config.vms[0].memory,
        1 << 30
    );
}

#[test]
fn unused_macros_are_reported() {
    let d = defs(&[("cli", "x")]);
    let o = outcome_d("x = \"1\"\ny = \"2\"\n", &d);
    assert!(o.ok);
    assert_eq!(
        o.lines(0),
        [
            "warning: macro 'cli' not used",
            "warning: macro 'x' not used",
            "warning: macro 'y' not used"
        ]
    );
}

#[test]
fn macro_values_must_be_strings() {
    // `STRING '=' STRING`: a number is not a string token.
    assert_eq!(fails("y = 2\n"), ["vm.conf:1: syntax error"]);
    assert_eq!(
        ok("y = \"2G\"\nvm \"a\" { memory $y }\n").vms[0].memory,
        2 << 30
    );
}

#[test]
fn undefined_macro() {
    // The lexer's error, the parser's, and the next line is swallowed by
    // the recovery (findeol already ate this line's newline).
    let o = outcome("vm \"a\" {\n\tmemory $nope\n}\nvm \"b\" {\n\tmemory 1G\n}\n");
    assert!(!o.ok);
    assert_eq!(
        o.lines(0),
        [
            "vm.conf:2: macro 'nope' not defined",
            "vm.conf:2: syntax error"
        ]
    );
    assert_eq!(o.config.vms.len(), 1);
    assert_eq!(o.config.vms[0].name, "b");
}

#[test]
fn macro_name_with_whitespace() {
    assert_eq!(
        fails("\"a b\" = c\n"),
        ["vm.conf:1: macro name cannot contain whitespace"]
    );
    // parse.y skips the first character in that check.
    assert_eq!(lines("\" a\" = c\n"), ["warning: macro ' a' not used"]);
}

#[test]
fn invalid_number() {
    assert_eq!(
        fails("vm \"a\" {\n\tmemory 99999999999999999999\n}\n"),
        [
            "vm.conf:2: \"99999999999999999999\" invalid number: too large",
            "vm.conf:2: syntax error"
        ]
    );
}

#[test]
fn string_too_long() {
    let long = "a".repeat(8096);
    assert_eq!(
        fails(&format!("vm \"a\" {{\n\tcdrom {long}\n}}\n")),
        ["vm.conf:2: string too long", "vm.conf:2: syntax error"]
    );
    // 8095 characters still fit a bare word, 8094 a quoted one.
    assert!(
        outcome(&format!("vm \"a\" {{\n\tcdrom /{}\n}}\n", "a".repeat(1000)))
            .config
            .vms
            .len()
            == 1
    );
    let q = "a".repeat(8095);
    assert_eq!(
        fails(&format!("x = \"{q}\"\n"))[0],
        "vm.conf:1: string too long"
    );
}

#[test]
fn nul_in_quoted_string() {
    assert_eq!(
        fails("vm \"a\0b\" {\n}\n"),
        ["vm.conf:1: syntax error", "vm.conf:1: syntax error"]
    );
}

#[test]
fn end_of_file_in_quoted_string() {
    assert_eq!(
        fails("vm \"abc"),
        [
            "vm.conf:1: reached end of file while parsing quoted string",
            "vm.conf:1: syntax error"
        ]
    );
}

#[test]
fn syntax_error_at_end_of_file_names_the_line_after_the_last() {
    assert_eq!(fails("vm \"x\" {\n memory 1G"), ["vm.conf:3: syntax error"]);
}

#[test]
fn reserved_words_without_rules_are_syntax_errors() {
    assert_eq!(
        fails("vm \"a\" {\n\tsize 1G\n}\n"),
        ["vm.conf:2: syntax error"]
    );
    assert_eq!(fails("id 3\n"), ["vm.conf:1: syntax error"]);
}

#[test]
fn crlf_line_ends_are_syntax_errors() {
    assert_eq!(
        fails("vm \"a\" {\r\n\tmemory 1G\r\n}\r\n"),
        ["vm.conf:1: syntax error"]
    );
}

#[test]
fn nul_byte_ends_the_input() {
    // yylex returns a NUL outside quotes as is, and token 0 is the end.
    let c = ok("vm \"a\" { memory 1G }\n\0vm \"b\" { memory 1G }\n");
    assert_eq!(c.vms.len(), 1);
    assert_eq!(fails("vm \"a\" {\0\n"), ["vm.conf:1: syntax error"]);
}

#[test]
fn include_reads_another_file() {
    let d = TempDir::new("include");
    let inc = d.file("inc.conf", b"mem = 3G\nvm \"inc\" {\n\tmemory $mem\n}\n");
    let c = ok(&format!("include \"{inc}\"\nvm \"main\" {{ memory 2G }}\n"));
    assert_eq!(
        c.vms
            .iter()
            .map(|v| (v.name.as_str(), v.memory))
            .collect::<Vec<_>>(),
        [("inc", 3 << 30), ("main", 2 << 30)]
    );
    assert_eq!(
        c.vms[0].location,
        Location {
            file: inc.clone(),
            line: 4
        }
    );
    assert_eq!(
        c.vms[1].location,
        Location {
            file: "vm.conf".into(),
            line: 2
        }
    );
    // Messages name the included file and its lines.
    let bad = d.file("bad.conf", b"\nvm \"x\" {\n\tmemory 1\n}\n");
    assert_eq!(
        fails(&format!("include \"{bad}\"\nvm \"y\" {{\n\tmemory 1\n}}\n")),
        [
            "memory size must be at least 1MB".to_string(),
            format!("{bad}:3: failed to parse size: 1"),
            "memory size must be at least 1MB".into(),
            "vm.conf:3: failed to parse size: 1".into(),
        ]
    );
}

/// `include` of itself, of a file that includes it back, of devices and
/// FIFOs, too deep or too large: an error naming the file, at once,
/// instead of a parse that never ends.
#[test]
fn include_loops_devices_and_endless_files() {
    let d = TempDir::new("include-loop");
    let me = d.path().join("self.conf");
    let me = me.display().to_string();
    std::fs::write(&me, format!("include \"{me}\"\n")).unwrap();
    let (out, code) = check(&me, &[]);
    assert_eq!(
        (out.as_str(), code),
        (
            format!("{me}:1: failed to include file {me}: include loop\n").as_str(),
            1
        )
    );
    // a includes b includes a.
    let a = d.path().join("a.conf").display().to_string();
    let b = d.file("b.conf", format!("include \"{a}\"\n").as_bytes());
    std::fs::write(&a, format!("include \"{b}\"\n")).unwrap();
    let (out, code) = check(&a, &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("failed to include file {a}: include loop")),
        "{out}"
    );
    // The same file twice, one after the other, is no loop.
    let leaf = d.file("leaf.conf", b"# nothing\n");
    ok(&format!("include \"{leaf}\"\ninclude \"{leaf}\"\n"));
    // Devices and FIFOs: not regular files (and a FIFO does not block).
    let fifo = d.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for dev in ["/dev/zero", "/dev/urandom", fifo.to_str().unwrap()] {
        assert_eq!(
            fails(&format!("include \"{dev}\"\n")),
            [format!(
                "vm.conf:1: failed to include file {dev}: not a regular file"
            )]
        );
        let (out, code) = check(dev, &[]);
        assert_eq!(
            (out, code),
            (format!("failed to open {dev}: not a regular file\n"), 1)
        );
    }
    // A file over the size bound.
    let big = d.path().join("big.conf");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(lexer::MAX_CONF_SIZE + 1).unwrap();
    let (out, code) = check(&big, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("file larger than 4194304 bytes"), "{out}");
    // A chain of includes deeper than the bound.
    let n = lexer::MAX_INCLUDE_DEPTH + 1;
    for i in 0..n {
        let next = if i + 1 < n {
            format!(
                "include \"{}\"\n",
                d.path().join(format!("{}.conf", i + 1)).display()
            )
        } else {
            String::new()
        };
        std::fs::write(d.path().join(format!("{i}.conf")), next).unwrap();
    }
    let (out, code) = check(d.path().join("0.conf"), &[]);
    assert_eq!(code, 1);
    assert!(out.contains("includes nested deeper than 16"), "{out}");
    std::fs::remove_file(d.path().join(format!("{}.conf", n - 1))).unwrap();
    std::fs::write(d.path().join(format!("{}.conf", n - 2)), "").unwrap();
    assert_eq!(check(d.path().join("0.conf"), &[]).1, 0);
}

#[test]
fn include_of_a_missing_file() {
    assert_eq!(
        fails("include \"/nonexistent/x.conf\"\n"),
        ["vm.conf:1: failed to include file /nonexistent/x.conf"]
    );
}

// ---- top-level statements ----

#[test]
fn local_prefix() {
    assert_eq!(
        ok("local prefix 10.0.0.0/8\n").global.local_prefix,
        Ipv4Prefix {
            addr: std::net::Ipv4Addr::new(10, 0, 0, 0),
            len: 8
        }
    );
    assert_eq!(
        GlobalConfig::default().local_prefix,
        Ipv4Prefix {
            addr: std::net::Ipv4Addr::new(100, 64, 0, 0),
            len: 10
        }
    );
}

#[test]
fn invalid_local_prefix() {
    assert_eq!(
        fails("local prefix 10.1.0.0/8\n"),
        ["vm.conf:1: invalid local prefix: bad mask"]
    );
    assert_eq!(
        fails("local prefix 192.168.1.0/24\n"),
        ["vm.conf:1: invalid local prefix: too large"]
    );
    assert_eq!(
        fails("local prefix 10.0.0.0/0\n"),
        ["vm.conf:1: invalid local prefix: too small"]
    );
    assert_eq!(
        fails("local prefix foo\n"),
        ["vm.conf:1: invalid local prefix: invalid format"]
    );
    // `10/8` lexes as the number 10 followed by '/'.
    assert_eq!(fails("local prefix 10/8\n"), ["vm.conf:1: syntax error"]);
}

#[test]
fn local_inet6() {
    let c = ok("local inet6\n");
    assert!(c.global.inet6);
    assert_eq!(c.global.local_prefix6, None);
    let c = ok("local inet6 prefix fd00:1:2::/48\n");
    assert!(c.global.inet6);
    assert_eq!(
        c.global.local_prefix6,
        Some(Ipv6Prefix {
            addr: "fd00:1:2::".parse().unwrap(),
            len: 48
        })
    );
}

#[test]
fn invalid_local_inet6_prefix() {
    assert_eq!(
        fails("local inet6 prefix fd00::1/64\n"),
        ["vm.conf:1: invalid local inet6 prefix: bad mask"]
    );
    assert_eq!(
        fails("local inet6 prefix fd00::/65\n"),
        ["vm.conf:1: invalid local inet6 prefix: too large"]
    );
    assert_eq!(
        fails("local inet6 prefix \"10.0.0.0\"\n"),
        ["vm.conf:1: invalid local inet6 prefix: name or service is not known"]
    );
}

#[test]
fn socket_owner() {
    let g = ok("socket owner 1000\n").global;
    assert_eq!((g.socket_uid, g.socket_gid), (1000, 0));
    let g = ok("socket owner alice:staff\n").global;
    assert_eq!((g.socket_uid, g.socket_gid), (1000, 50));
    let g = ok("socket owner :staff\n").global;
    assert_eq!((g.socket_uid, g.socket_gid), (0, 50));
    let g = ok("socket owner bob\n").global;
    assert_eq!((g.socket_uid, g.socket_gid), (1001, 0));
}

#[test]
fn system_resolver_knows_root() {
    assert_eq!(SystemResolver.uid("root"), Some(0));
    assert_eq!(SystemResolver.uid("no-such-user-vmd"), None);
    assert_eq!(SystemResolver.gid("no-such-group-vmd"), None);
}

#[test]
fn unknown_user_or_group() {
    assert_eq!(
        fails("socket owner carol\n"),
        ["vm.conf:1: failed to get user: carol"]
    );
    assert_eq!(
        fails("socket owner alice:nogroup\n"),
        ["vm.conf:1: failed to get group: nogroup"]
    );
    assert_eq!(
        fails("vm \"a\" {\n\towner :nogroup\n}\n"),
        ["vm.conf:2: failed to get group: nogroup"]
    );
}

#[test]
fn agentx() {
    let a = ok("agentx\n").global.agentx;
    assert_eq!(
        a,
        Agentx {
            enabled: true,
            path: AGENTX_MASTER_PATH.into(),
            context: String::new()
        }
    );
    let a = ok("agentx context \"vms\" path \"/var/agentx/other\"\n")
        .global
        .agentx;
    assert_eq!(
        a,
        Agentx {
            enabled: true,
            path: "/var/agentx/other".into(),
            context: "vms".into()
        }
    );
    assert!(!ok("\n").global.agentx.enabled);
}

#[test]
fn agentx_errors() {
    assert_eq!(
        fails(&format!("agentx context \"{}\"\n", "c".repeat(33))),
        ["vm.conf:1: agentx context too large"]
    );
    ok(&format!("agentx context \"{}\"\n", "c".repeat(32)));
    assert_eq!(
        fails(&format!("agentx path \"/{}\"\n", "p".repeat(103))),
        ["vm.conf:1: agentx path too large"]
    );
    assert_eq!(
        fails("agentx path \"relative\"\n"),
        ["vm.conf:1: agentx path is not absolute"]
    );
}

#[test]
fn staggered_start() {
    assert_eq!(
        ok("staggered start parallel 4 delay 10\n")
            .global
            .staggered_start,
        Some(StaggeredStart {
            parallelism: 4,
            delay: 10
        })
    );
    assert_eq!(ok("\n").global.staggered_start, None);
    assert_eq!(
        fails("staggered start parallel four delay 10\n"),
        ["vm.conf:1: syntax error"]
    );
}

// ---- switch ----

#[test]
fn switch_block() {
    let c = ok(concat!(
        "switch \"uplink\" {\n",
        "\tinterface bridge0\n",
        "\tgroup uplinks\n",
        "\tlocked lladdr\n",
        "\trdomain 1\n",
        "\tdown\n",
        "}\n",
        "switch \"off\" {\n\tinterface veb2\n\tdisable\n}\n",
        "switch \"lan\" { interface veb1 }\n",
    ));
    assert_eq!(c.switches.len(), 2);
    let s = &c.switches[0];
    assert_eq!(
        (s.id, s.name.as_str(), s.ifname.as_str(), s.group.as_deref()),
        (1, "uplink", "bridge0", Some("uplinks"))
    );
    assert_eq!((s.rdomain, s.flags), (1, VMIFF_LOCKED | VMIFF_RDOMAIN));
    assert_eq!(s.location.line, 7);
    let s = &c.switches[1];
    assert_eq!(
        (s.id, s.name.as_str(), s.ifname.as_str(), s.flags),
        (2, "lan", "veb1", VMIFF_UP)
    );
}

#[test]
fn disabled_switch_is_skipped_with_a_debug_line() {
    let o = outcome("switch \"off\" {\n\tinterface veb2\n\tdisable\n}\n");
    assert!(o.ok && o.config.switches.is_empty());
    assert_eq!(o.lines(1), ["vm.conf:4: switch \"off\" skipped (disabled)"]);
}

#[test]
fn switch_missing_interface() {
    assert_eq!(
        fails("switch \"x\" {\n\tgroup g\n}\n"),
        ["vm.conf:3: switch \"x\" is missing interface name"]
    );
}

#[test]
fn invalid_switch_interface() {
    assert_eq!(
        fails("switch \"x\" {\n\tinterface vether0\n}\n"),
        ["vm.conf:2: invalid switch interface: vether0"]
    );
    assert_eq!(
        fails("switch \"x\" {\n\tinterface bridge\n}\n"),
        ["vm.conf:2: invalid switch interface: bridge"]
    );
}

#[test]
fn switch_interface_too_long() {
    assert_eq!(
        fails("switch \"x\" {\n\tinterface bridge0000000000\n}\n"),
        ["vm.conf:2: switch interface too long: bridge0000000000"]
    );
}

#[test]
fn invalid_group_name() {
    assert_eq!(
        fails("switch \"x\" {\n\tgroup grp1\n}\n"),
        ["vm.conf:2: invalid group name: grp1"]
    );
    assert_eq!(
        fails("switch \"x\" {\n\tgroup abcdefghijklmnop\n}\n"),
        ["vm.conf:2: invalid group name: abcdefghijklmnop"]
    );
    assert_eq!(
        fails("vm \"a\" {\n\tinterface group grp0\n}\n"),
        ["vm.conf:2: invalid group name: grp0"]
    );
}

#[test]
fn invalid_rdomain() {
    assert_eq!(
        fails("switch \"x\" {\n\trdomain 256\n}\n"),
        ["vm.conf:2: invalid rdomain: 256"]
    );
    assert_eq!(
        fails("vm \"a\" {\n\tinterface rdomain -1\n}\n"),
        ["vm.conf:2: invalid rdomain: -1"]
    );
}

// ---- vm ----

#[test]
fn vm_block_with_every_option() {
    let d = TempDir::new("full");
    let bsd = d.file("bsd", b"kernel");
    let raw = d.file("a.img", b"");
    let qcow = d.file("b.qcow2", b"QFI\xfb\0\0\0\x03");
    let forced = d.file("c.img", b"");
    let raw2 = d.file("d.img", b"QFI\xfb");
    let text = format!(
        "vm \"full\" {{\n\
         \tboot \"{bsd}\"\n\
         \tboot device cdrom\n\
         \tcdrom \"/iso/install.iso\"\n\
         \tdisk \"{raw}\"\n\
         \tdisk \"{qcow}\"\n\
         \tdisk \"{forced}\" format qcow2\n\
         \tdisk \"{raw2}\" format RAW\n\
         \tinterface tap3 {{\n\
         \t\tswitch \"uplink\"\n\
         \t\tlladdr 00:11:22:33:44:55\n\
         \t\trdomain 2\n\
         \t\tgroup guests\n\
         \t\tdown\n\
         \t}}\n\
         \tlocal interface\n\
         \tinterface locked lladdr fe:e1:ba:d0:00:01 switch \"sw2\"\n\
         \tinterfaces 4\n\
         \tmemory 2G\n\
         \towner alice:staff\n\
         \tallow instance {{ boot, memory\n\
         \t\tinterface, disk\n\
         \t\tcdrom, instance }}\n\
         \tallow instance owner 1001\n\
         \tsev\n\
         \tdisable\n\
         }}\n"
    );
    let c = ok(&text);
    let vm = &c.vms[0];
    assert_eq!(vm.name, "full");
    assert_eq!(vm.instance_of, None);
    assert_eq!(
        vm.flags,
        VMOP_CREATE_KERNEL
            | VMOP_CREATE_CDROM
            | VMOP_CREATE_DISK
            | VMOP_CREATE_NETWORK
            | VMOP_CREATE_MEMORY
    );
    assert_eq!(vm.boot.as_deref(), Some(bsd.as_str()));
    assert_eq!(vm.boot_device, BootDevice::Cdrom);
    assert_eq!(vm.cdrom.as_deref(), Some("/iso/install.iso"));
    assert_eq!(
        vm.disks,
        [
            Disk {
                path: raw,
                format: DiskFormat::Raw
            },
            Disk {
                path: qcow,
                format: DiskFormat::Qcow2
            },
            Disk {
                path: forced,
                format: DiskFormat::Qcow2
            },
            Disk {
                path: raw2,
                format: DiskFormat::Raw
            },
        ]
    );
    assert_eq!(vm.interfaces.len(), 4);
    let i0 = &vm.interfaces[0];
    assert_eq!(
        (
            i0.name.as_deref(),
            i0.switch.as_deref(),
            i0.group.as_deref()
        ),
        (Some("tap3"), Some("uplink"), Some("guests"))
    );
    assert_eq!(
        (i0.lladdr, i0.rdomain(), i0.up(), i0.locked()),
        ([0, 0x11, 0x22, 0x33, 0x44, 0x55], Some(2), false, false)
    );
    assert_eq!(
        vm.interfaces[1],
        Interface {
            flags: VMIFF_UP | VMIFF_LOCAL,
            ..Interface::default()
        }
    );
    let i2 = &vm.interfaces[2];
    assert_eq!(
        (i2.switch.as_deref(), i2.lladdr, i2.flags),
        (
            Some("sw2"),
            [0xfe, 0xe1, 0xba, 0xd0, 0, 1],
            VMIFF_UP | VMIFF_LOCKED
        )
    );
    assert_eq!(vm.interfaces[3], Interface::default());
    assert_eq!(vm.memory, 2 << 30);
    assert_eq!(vm.owner, Owner { uid: 1000, gid: 50 });
    assert_eq!(
        vm.instance_flags,
        VMOP_CREATE_KERNEL
            | VMOP_CREATE_MEMORY
            | VMOP_CREATE_NETWORK
            | VMOP_CREATE_DISK
            | VMOP_CREATE_CDROM
            | VMOP_CREATE_INSTANCE
    );
    assert_eq!(vm.instance_owner, Owner { uid: 1001, gid: -1 });
    assert!(vm.sev && !vm.seves && vm.disabled);
    assert_eq!(vm.location.line, 27);
}

#[test]
fn vm_defaults() {
    let vm = &ok("vm \"a\" {\n\tenable\n}\n").vms[0];
    assert_eq!(vm.flags, 0);
    assert_eq!(
        (vm.memory, vm.owner, vm.disabled),
        (0, Owner { uid: 0, gid: -1 }, false)
    );
    assert!(vm.interfaces.is_empty() && vm.disks.is_empty() && vm.boot.is_none());
    assert_eq!(vm.boot_device, BootDevice::Auto);
}

#[test]
fn enable_after_disable() {
    assert!(!ok("vm \"a\" {\n\tdisable\n\tenable\n}\n").vms[0].disabled);
}

#[test]
fn sev_and_seves() {
    let vm = &ok("vm \"a\" {\n\tseves\n}\n").vms[0];
    assert!(vm.sev && vm.seves);
}

#[test]
fn boot_device_disk_and_net() {
    assert_eq!(
        ok("vm \"a\" { boot device disk }\n").vms[0].boot_device,
        BootDevice::Disk
    );
    assert_eq!(
        ok("vm \"a\" { boot device net }\n").vms[0].boot_device,
        BootDevice::Net
    );
    assert_eq!(
        fails("vm \"a\" { boot device floppy }\n"),
        ["vm.conf:1: syntax error"]
    );
}

#[test]
fn vm_instance() {
    let c = ok("vm \"base\" { memory 1G }\nvm \"base\" instance \"copy\" {\n\tmemory 2G\n}\n");
    let vm = &c.vms[1];
    assert_eq!(
        (vm.name.as_str(), vm.instance_of.as_deref()),
        ("copy", Some("base"))
    );
    assert_eq!(vm.flags, VMOP_CREATE_INSTANCE | VMOP_CREATE_MEMORY);
}

#[test]
fn vm_name_too_long() {
    let name63 = "n".repeat(63);
    ok(&format!("vm \"{name63}\" {{ memory 1G }}\n"));
    let name64 = "n".repeat(64);
    assert_eq!(
        fails(&format!("\n\nvm \"{name64}\" {{\n\tmemory 1G\n}}\n")),
        ["vm.conf:3: vm name too long"]
    );
    assert_eq!(
        fails(&format!(
            "vm \"a\" instance \"{name64}\" {{\n\tmemory 1G\n}}\n"
        )),
        ["vm.conf:1: vm name too long"]
    );
}

#[test]
fn instance_parent_name_too_long() {
    let name64 = "p".repeat(64);
    assert_eq!(
        fails(&format!(
            "vm \"{name64}\" instance \"x\" {{\n\tmemory 1G\n}}\n"
        )),
        [format!("vm.conf:1: vm {name64} name too long")]
    );
}

#[test]
fn empty_vm_block_is_a_syntax_error() {
    assert_eq!(fails("vm \"a\" {\n}\n"), ["vm.conf:2: syntax error"]);
}

#[test]
fn options_after_the_first_need_a_newline() {
    // The first option may share a line with the next one ...
    assert!(ok("vm \"a\" { memory 1G disable\n}\n").vms[0].disabled);
    // ... but every later one must be followed by a newline.
    assert_eq!(
        fails("vm \"a\" {\n\tmemory 1G\n\tdisable }\n"),
        ["vm.conf:3: syntax error"]
    );
}

#[test]
fn interface_options_with_commas() {
    let vm = &ok("vm \"a\" {\n\tinterface group g switch \"s\",\n}\n").vms[0];
    assert_eq!(
        (
            vm.interfaces[0].group.as_deref(),
            vm.interfaces[0].switch.as_deref()
        ),
        (Some("g"), Some("s"))
    );
    // parse.y takes a comma only after the second and later options.
    assert_eq!(
        fails("vm \"a\" {\n\tinterface switch \"s\", group g\n}\n"),
        ["vm.conf:2: syntax error"]
    );
    // A block takes them one per line or on one line.
    let vm =
        &ok("vm \"a\" {\n\tinterface { switch \"s\" lladdr 00:00:00:00:00:01\n\t\tgroup g }\n}\n")
            .vms[0];
    assert_eq!(vm.interfaces[0].lladdr, [0, 0, 0, 0, 0, 1]);
}

#[test]
fn lladdr_without_address_is_random() {
    let vm = &ok("vm \"a\" {\n\tinterface locked lladdr\n}\n").vms[0];
    assert_eq!(
        (vm.interfaces[0].lladdr, vm.interfaces[0].locked()),
        ([0; 6], true)
    );
}

#[test]
fn memory_sizes() {
    let mem = |s: &str| ok(&format!("vm \"a\" {{\n\tmemory {s}\n}}\n")).vms[0].memory;
    assert_eq!(mem("1G"), 1 << 30);
    assert_eq!(mem("512M"), 512 << 20);
    assert_eq!(mem("512m"), 512 << 20);
    assert_eq!(mem("1.5G"), 1536 << 20);
    assert_eq!(mem("1048576"), 1 << 20);
    assert_eq!(mem("\"2147483648\""), 2 << 30);
    assert_eq!(mem("128G"), 128 << 30);
}

#[test]
fn memory_rounding_is_a_debug_line() {
    let o = outcome("vm \"a\" {\n\tmemory 1073741823\n}\n");
    assert!(o.ok && o.lines(0).is_empty());
    assert_eq!(o.config.vms[0].memory, 1023 << 20);
    assert_eq!(o.lines(1), ["memory size rounded to 1023M"]);
}

#[test]
fn memory_too_small() {
    assert_eq!(
        fails("vm \"a\" {\n\tmemory 1048575\n}\n"),
        [
            "memory size must be at least 1MB",
            "vm.conf:2: failed to parse size: 1048575"
        ]
    );
    assert_eq!(
        fails("vm \"a\" {\n\tmemory 1K\n}\n"),
        [
            "memory size must be at least 1MB",
            "vm.conf:2: failed to parse size: 1K"
        ]
    );
}

#[test]
fn memory_too_large() {
    assert_eq!(
        fails("vm \"a\" {\n\tmemory 129G\n}\n"),
        [
            "memory size too large (limit is 128G)",
            "vm.conf:2: failed to parse size: 129G"
        ]
    );
    assert_eq!(
        fails("vm \"a\" {\n\tmemory 137438953473\n}\n"),
        [
            "memory size too large (limit is 128G)",
            "vm.conf:2: failed to parse size: 137438953473"
        ]
    );
}

#[test]
fn invalid_memory_size() {
    assert_eq!(
        fails("vm \"a\" {\n\tmemory 1X\n}\n"),
        [
            "invalid memory size: 1X: Invalid argument",
            "vm.conf:2: failed to parse size: 1X"
        ]
    );
    assert_eq!(
        fails("vm \"a\" {\n\tmemory 99999999999999999999G\n}\n"),
        [
            "invalid memory size: 99999999999999999999G: Result too large",
            "vm.conf:2: failed to parse size: 99999999999999999999G"
        ]
    );
}

#[test]
fn memory_specified_twice() {
    assert_eq!(
        fails("vm \"a\" {\n\tmemory 1G\n\tmemory 1073741824\n}\n"),
        ["vm.conf:3: memory specified more than once"]
    );
    assert_eq!(
        fails("vm \"a\" {\n\tmemory 1G\n\tmemory 2G\n}\n"),
        ["vm.conf:3: argument specified more than once"]
    );
}

#[test]
fn owner_of_a_vm() {
    assert_eq!(
        ok("vm \"a\" { owner bob }\n").vms[0].owner,
        Owner { uid: 1001, gid: -1 }
    );
    assert_eq!(
        ok("vm \"a\" { owner :wheel }\n").vms[0].owner,
        Owner { uid: 0, gid: 0 }
    );
    assert_eq!(
        ok("vm \"a\" { owner 42 }\n").vms[0].owner,
        Owner { uid: 42, gid: -1 }
    );
    assert_eq!(
        fails("vm \"a\" {\n\towner carol\n}\n"),
        ["vm.conf:2: failed to get user: carol"]
    );
}

#[test]
fn allow_instance_needs_separators() {
    assert_eq!(
        fails("vm \"a\" {\n\tallow instance { boot memory }\n}\n"),
        ["vm.conf:2: syntax error"]
    );
    assert_eq!(
        ok("vm \"a\" {\n\tallow instance disk\n}\n").vms[0].instance_flags,
        VMOP_CREATE_DISK
    );
}

#[test]
fn boot_path_is_resolved() {
    let d = TempDir::new("boot");
    let k = d.file("bsd.rd", b"");
    std::fs::create_dir(d.path().join("sub")).unwrap();
    let name = format!("{}/sub/../bsd.rd", d.path().display());
    let c = ok(&format!("vm \"a\" {{\n\tboot \"{name}\"\n}}\n"));
    assert_eq!(c.vms[0].boot.as_deref(), Some(k.as_str()));
    assert_eq!(c.vms[0].flags, VMOP_CREATE_KERNEL);
}

#[test]
fn kernel_path_not_found() {
    assert_eq!(
        fails("vm \"a\" {\n\tboot \"/nonexistent/bsd\"\n}\n"),
        ["vm.conf:2: kernel path not found: No such file or directory"]
    );
    let long = format!("/{}", "x".repeat(1100));
    assert_eq!(
        fails(&format!("vm \"a\" {{\n\tboot \"{long}\"\n}}\n")),
        ["vm.conf:2: kernel path not found: File name too long"]
    );
}

#[test]
fn kernel_specified_twice() {
    let d = TempDir::new("kernel2");
    let k = d.file("bsd", b"");
    assert_eq!(
        fails(&format!(
            "vm \"a\" {{\n\tboot \"{k}\"\n\tboot \"{k}\"\n}}\n"
        )),
        ["vm.conf:3: kernel specified more than once"]
    );
}

#[test]
fn abandoned_block_keeps_its_kernel() {
    // parse.y clears the kernel only at the end of a complete block, so a
    // block abandoned after `boot` turns the next block's `boot` into a
    // duplicate.
    let d = TempDir::new("kernel-carry");
    let k = d.file("bsd", b"");
    assert_eq!(
        fails(&format!(
            "vm \"a\" {{\n\tboot \"{k}\"\n\tmemory 1\n}}\nvm \"b\" {{\n\tboot \"{k}\"\n}}\n"
        )),
        [
            "memory size must be at least 1MB",
            "vm.conf:3: failed to parse size: 1",
            "vm.conf:6: kernel specified more than once"
        ]
    );
}

#[test]
fn cdrom_specified_twice() {
    assert_eq!(
        fails("vm \"a\" {\n\tcdrom \"/a.iso\"\n\tcdrom \"/b.iso\"\n}\n"),
        ["vm.conf:3: cdrom specified more than once"]
    );
}

#[test]
fn cdrom_name_too_long() {
    let long = format!("/{}", "i".repeat(1023));
    assert_eq!(
        fails(&format!("vm \"a\" {{\n\tcdrom \"{long}\"\n}}\n")),
        ["vm.conf:2: cdrom name too long"]
    );
    let fits = format!("/{}", "i".repeat(1022));
    assert_eq!(
        ok(&format!("vm \"a\" {{\n\tcdrom \"{fits}\"\n}}\n")).vms[0]
            .cdrom
            .as_deref(),
        Some(fits.as_str())
    );
}

#[test]
fn disk_formats_are_sniffed() {
    let d = TempDir::new("sniff");
    let q = d.file("noext", b"QFI\xfb");
    let r = d.file("x.qcow2", b"RAW!");
    let c = ok(&format!(
        "vm \"a\" {{\n\tdisk \"{q}\"\n\tdisk \"{r}\"\n}}\n"
    ));
    assert_eq!(
        c.vms[0].disks.iter().map(|d| d.format).collect::<Vec<_>>(),
        [DiskFormat::Qcow2, DiskFormat::Raw]
    );
}

#[test]
fn disk_not_found() {
    assert_eq!(
        fails("vm \"a\" {\n\tdisk \"/nonexistent/x.img\"\n}\n"),
        [
            "disk /nonexistent/x.img: No such file or directory",
            "vm.conf:2: failed to parse disks: /nonexistent/x.img"
        ]
    );
}

/// A disk whose real path is not UTF-8 is refused (it would reach vmd's
/// processes as another name), not mangled.
#[test]
fn disk_path_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let d = TempDir::new("disk-bytes");
    let dir = std::fs::canonicalize(d.path()).unwrap();
    let mut img = dir.as_os_str().as_bytes().to_vec();
    img.extend_from_slice(b"/d\xff.img");
    std::fs::write(std::ffi::OsStr::from_bytes(&img), b"").unwrap();
    let conf = dir.join("vm.conf");
    let mut text = b"vm \"a\" {\n\tdisk \"".to_vec();
    text.extend_from_slice(&img);
    text.extend_from_slice(b"\"\n}\n");
    std::fs::write(&conf, text).unwrap();
    let (out, code) = check(&conf, &[]);
    let shown = String::from_utf8_lossy(&img).into_owned();
    assert_eq!(code, 1);
    assert!(
        out.starts_with(&format!("disk {shown}: Illegal byte sequence\n")),
        "{out}"
    );
}

#[test]
fn too_many_disks() {
    let d = TempDir::new("disks");
    let img = d.file("d.img", b"");
    let disks = format!("\tdisk \"{img}\"\n").repeat(5);
    assert_eq!(
        fails(&format!("vm \"a\" {{\n{disks}}}\n")),
        [
            "too many disks".to_string(),
            format!("vm.conf:6: failed to parse disks: {img}")
        ]
    );
}

#[test]
fn unrecognized_disk_format() {
    let d = TempDir::new("format");
    let img = d.file("d.img", b"");
    assert_eq!(
        fails(&format!("vm \"a\" {{\n\tdisk \"{img}\" format vmdk\n}}\n")),
        ["vm.conf:2: unrecognized disk format vmdk"]
    );
    // regress missing-format: `format` without a value.
    assert_eq!(
        fails(&format!("vm \"a\" {{\n\tdisk \"{img}\" format\n}}\n")),
        ["vm.conf:2: syntax error"]
    );
}

#[test]
fn too_many_interfaces() {
    let ifs = "\tinterface\n".repeat(5);
    assert_eq!(
        fails(&format!("vm \"a\" {{\n{ifs}}}\n")),
        ["vm.conf:6: too many interfaces: 5"]
    );
    assert_eq!(
        fails("vm \"a\" {\n\tinterfaces 5\n}\n"),
        ["vm.conf:2: too many interfaces: 5"]
    );
    assert_eq!(
        fails("vm \"a\" {\n\tinterfaces -1\n}\n"),
        ["vm.conf:2: too many interfaces: -1"]
    );
}

#[test]
fn interfaces_count() {
    let vm = &ok("vm \"a\" {\n\tinterfaces 3\n\tinterface { switch \"s\" }\n}\n").vms[0];
    assert_eq!(vm.interfaces.len(), 3);
    assert_eq!(vm.interfaces[0].switch.as_deref(), Some("s"));
    assert_eq!(vm.flags, VMOP_CREATE_NETWORK);
    // More interface lines than `interfaces N` wins.
    assert_eq!(
        ok("vm \"a\" {\n\tinterfaces 1\n\tinterface\n\tinterface\n}\n").vms[0]
            .interfaces
            .len(),
        2
    );
}

#[test]
fn interfaces_specified_twice() {
    assert_eq!(
        fails("vm \"a\" {\n\tinterfaces 2\n\tinterfaces 2\n}\n"),
        ["vm.conf:3: interfaces specified more than once"]
    );
    // parse.y tests the stored count, so a first `interfaces 0` does not count.
    assert_eq!(
        ok("vm \"a\" {\n\tinterfaces 0\n\tinterfaces 2\n}\n").vms[0]
            .interfaces
            .len(),
        2
    );
}

#[test]
fn invalid_interface() {
    assert_eq!(
        fails("vm \"a\" {\n\tinterface em0\n}\n"),
        ["vm.conf:2: invalid interface: em0"]
    );
    assert_eq!(
        fails("vm \"a\" {\n\tinterface tapx\n}\n"),
        ["vm.conf:2: invalid interface: tapx"]
    );
    let vm = &ok("vm \"a\" {\n\tinterface tap\n\tinterface tap7\n}\n").vms[0];
    assert_eq!(
        (
            vm.interfaces[0].name.as_deref(),
            vm.interfaces[1].name.as_deref()
        ),
        (Some("tap"), Some("tap7"))
    );
}

#[test]
fn interface_name_too_long() {
    assert_eq!(
        fails("vm \"a\" {\n\tinterface tap0000000000001\n}\n"),
        ["vm.conf:2: interface name too long: tap0000000000001"]
    );
}

#[test]
fn switch_name_too_long() {
    let long = "s".repeat(64);
    assert_eq!(
        fails(&format!(
            "vm \"a\" {{\n\tinterface {{ switch \"{long}\" }}\n}}\n"
        )),
        [format!("vm.conf:2: switch name too long: {long}")]
    );
}

#[test]
fn invalid_address() {
    // parse.y's message ends in a newline of its own: vmd prints an empty
    // line after it.
    let (out, code) = check_text("vm \"a\" {\n\tinterface lladdr 00:11:22\n}\n");
    assert_eq!(
        (out.as_str(), code),
        ("vm.conf:2: invalid address: 00:11:22\n\n", 1)
    );
}

// ---- error recovery ----

#[test]
fn errors_inside_a_block_abandon_it_quietly() {
    // After an error, yacc reports the next one only once three tokens have
    // been accepted: the rest of the block, read as top-level lines, is
    // dropped without messages; the next block is read normally.
    let o = outcome(
        "vm \"a\" {\n\tmemory 1\n\tbogus line here\n\tdisk\n}\nvm \"b\" {\n\tmemory 1G\n}\n",
    );
    assert!(!o.ok);
    assert_eq!(
        o.lines(0),
        [
            "memory size must be at least 1MB",
            "vm.conf:2: failed to parse size: 1"
        ]
    );
    assert_eq!(
        o.config
            .vms
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
}

#[test]
fn syntax_errors_on_separate_statements_are_all_reported() {
    assert_eq!(
        fails("foo bar\n\n\nvm {\n"),
        ["vm.conf:1: syntax error", "vm.conf:4: syntax error"]
    );
}

// ---- registry hook (vmd without -n) ----

#[test]
fn registration() {
    let mut seen = Vec::new();
    let mut reg = |vm: &Vm| {
        seen.push(vm.name.clone());
        match vm.name.as_str() {
            "dup" => Registration::AlreadyExists { running: false },
            "run" => Registration::AlreadyExists { running: true },
            "bad" => Registration::Failed("Invalid argument".into()),
            _ => Registration::Registered,
        }
    };
    let mut o = ParseOptions::new(&[]);
    o.register = Some(&mut reg);
    let out = parse_str_with(
        "vm.conf",
        "vm \"ok\" { memory 1G }\nvm \"dup\" {\n\tdisable\n}\nvm \"run\" { memory 1G }\nvm \"bad\" {\n\tmemory 1G\n}\nswitch \"sw\" { interface veb0 }\n",
        o,
    );
    assert!(!out.ok);
    assert_eq!(
        out.lines(1),
        [
            "vm.conf:1: vm \"ok\" registered (enabled)",
            "vm.conf:4: vm \"dup\" skipped (already exists)",
            "vm.conf:5: vm \"run\" skipped (running)",
            "vm.conf:8: vm \"bad\" failed: Invalid argument",
            "vm.conf:9: switch \"sw\" registered",
        ]
    );
    assert_eq!(
        out.config
            .vms
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["ok"]
    );
    assert_eq!(seen, ["ok", "dup", "run", "bad"]);
}

// ---- files, vmd -n ----

fn check_text(text: &str) -> (String, i32) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = TempDir::new(&format!("check-{n}"));
    let p = d.path().join("vm.conf");
    std::fs::write(&p, text).unwrap();
    // Messages name the file as given; show it as the other tests do.
    let (out, code) = check(&p, &[]);
    (out.replace(&p.display().to_string(), "vm.conf"), code)
}

#[test]
fn check_prints_configuration_ok() {
    assert_eq!(
        check_text("vm \"a\" {\n\tmemory 1G\n}\n"),
        ("configuration OK\n".to_string(), 0)
    );
}

#[test]
fn check_prints_errors_and_fails() {
    assert_eq!(
        check_text("vm \"a\" {\n\tmemory 1\n}\n"),
        (
            "memory size must be at least 1MB\nvm.conf:2: failed to parse size: 1\n".to_string(),
            1
        )
    );
}

#[test]
fn check_of_a_missing_file_passes_with_a_warning() {
    assert_eq!(
        check("/nonexistent/vm.conf", &[]),
        (
            "failed to open /nonexistent/vm.conf: No such file or directory\nconfiguration OK\n"
                .to_string(),
            0
        )
    );
    let r = parse_file("/nonexistent/vm.conf", &[]);
    assert_eq!(r, Ok(Config::default()));
}

#[test]
fn check_of_an_unreadable_file_fails() {
    // ENOTDIR, not ENOENT: the check fails.
    let d = TempDir::new("unreadable");
    let f = d.file("afile", b"");
    let q = Path::new(&f).join("vm.conf");
    assert_eq!(
        check(&q, &[]),
        (
            format!("failed to open {}: Not a directory\n", q.display()),
            1
        )
    );
}

#[test]
fn check_of_the_default_file_is_quiet_when_it_is_missing() {
    if Path::new(VMD_CONF).exists() {
        return;
    }
    assert_eq!(
        check_verbose(None, &[], 0),
        ("configuration OK\n".to_string(), 0)
    );
    assert_eq!(
        check_verbose(None, &[], 1),
        ("/etc/vm.conf: missing\nconfiguration OK\n".to_string(), 0)
    );
}

#[test]
fn check_with_defines() {
    let d = TempDir::new("check-defines");
    let p = d.path().join("vm.conf");
    std::fs::write(&p, "vm \"a\" {\n\tmemory $mem\n}\n").unwrap();
    assert_eq!(
        check(&p, &defs(&[("mem", "1G"), ("unused", "1")])),
        (
            "warning: macro 'unused' not used\nconfiguration OK\n".to_string(),
            0
        )
    );
}

#[test]
fn parse_file_returns_the_config_or_the_messages() {
    let d = TempDir::new("parse-file");
    let p = d.path().join("vm.conf");
    std::fs::write(&p, "vm \"a\" {\n\tmemory 1G\n}\n").unwrap();
    assert_eq!(parse_file(&p, &[]).unwrap().vms[0].name, "a");
    std::fs::write(&p, "vm \"a\" {\n\tmemory 1\n}\n").unwrap();
    let errs = parse_file(&p, &[]).unwrap_err();
    assert_eq!(
        errs[0],
        ConfigError {
            location: None,
            message: "memory size must be at least 1MB".into()
        }
    );
    assert_eq!(
        errs[1].to_string(),
        format!("{}:2: failed to parse size: 1", p.display())
    );
    assert_eq!(
        parse_str("x.conf", "vm {\n", &[]).unwrap_err()[0].to_string(),
        "x.conf:1: syntax error"
    );
}

#[test]
fn parse_define_splits_at_the_last_equals_sign() {
    assert_eq!(
        parse_define(b"a=b=c"),
        Some((b"a=b".to_vec(), b"c".to_vec()))
    );
    assert_eq!(
        parse_define(b"mem=1G"),
        Some((b"mem".to_vec(), b"1G".to_vec()))
    );
    assert_eq!(parse_define(b"novalue"), None);
    // Bytes as given: a value need not be UTF-8.
    assert_eq!(
        parse_define(b"a=\xff"),
        Some((b"a".to_vec(), b"\xff".to_vec()))
    );
}

#[test]
fn config_is_serde() {
    fn bound<T: Serialize + for<'de> Deserialize<'de>>() {}
    bound::<Config>();
    bound::<ConfigError>();
    bound::<Message>();
}

// ---- regress/usr.sbin/vmd/config (reference §2.5) ----
// The runner compares `vmd -n -f X.conf 2>&1`, for failures after
// `cut -d : -f 2,3,4` (the file name removed).

/// `cut -d : -f 2,3,4`: lines without a colon pass unchanged.
fn regress_cut(text: &str) -> Vec<String> {
    let (out, code) = check_text(text);
    assert_eq!(code, 1);
    out.lines()
        .map(|l| {
            if l.contains(':') {
                l.split(':').skip(1).take(3).collect::<Vec<_>>().join(":")
            } else {
                l.to_string()
            }
        })
        .collect()
}

const HEADER: &str = "#\t$OpenBSD$\n# regress case\n";

#[test]
fn regress_pass_memory_round() {
    // The .ok's `memory size rounded to 1023M` is a log_debug line since
    // 2018: without -v only the verdict is printed.
    let text = format!("{HEADER}vm \"x\" {{\n\tmemory 1073741823\n\tdisable\n}}\n");
    assert_eq!(check_text(&text), ("configuration OK\n".to_string(), 0));
}

#[test]
fn regress_pass_memory_just_enough() {
    let text = format!("{HEADER}vm \"x\" {{\n\tmemory 1048576\n\tdisable\n}}\n");
    assert_eq!(check_text(&text), ("configuration OK\n".to_string(), 0));
}

#[test]
fn regress_pass_cdrom_and_format_keywords() {
    let d = TempDir::new("regress-format");
    let img = d.file("disk.qcow2", b"");
    let text = format!("{HEADER}vm \"x\" {{\n\tcdrom \"/install.iso\"\n\tdisk \"{img}\" format qcow2\n\tdisable\n}}\n");
    assert_eq!(check_text(&text), ("configuration OK\n".to_string(), 0));
}

#[test]
fn regress_fail_kernel_keyword() {
    // `add` (line 5) lost its rule; `kernel` (line 8) was never a keyword.
    let text = format!(
        "{HEADER}ramdisk=\"/bsd.rd\"\nswitch \"sw\" {{\n    add vether0\n}}\nvm \"x\" {{\n    kernel $ramdisk\n    memory 1G\n    disable\n    interface {{ switch \"sw\" }}\n}}\n"
    );
    assert_eq!(regress_cut(&text), ["5: syntax error", "8: syntax error"]);
}

#[test]
fn regress_fail_too_few_ram() {
    let text = format!("{HEADER}vm \"x\" {{\n\tmemory 1048575\n\tdisable\n}}\n");
    assert_eq!(
        regress_cut(&text),
        [
            "memory size must be at least 1MB",
            "4: failed to parse size: 1048575"
        ]
    );
}

#[test]
fn regress_fail_vm_name_too_long() {
    let text = format!(
        "{HEADER}vm \"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789__\" {{\n}}\n"
    );
    assert_eq!(regress_cut(&text), ["3: vm name too long"]);
}

#[test]
fn regress_fail_switch_no_interface() {
    let text = format!("{HEADER}switch \"x\" {{\n    add vether0\n}}\n");
    assert_eq!(regress_cut(&text), ["4: syntax error"]);
    let text = format!("{HEADER}switch \"x\" {{\n    locked lladdr\n}}\n");
    assert_eq!(
        regress_cut(&text),
        ["5: switch \"x\" is missing interface name"]
    );
}

#[test]
fn regress_fail_disk_path_too_long() {
    // The legacy 128-byte limit is gone: a long relative path fails only
    // when realpath(3) does, here on a missing file.
    let rel = format!(
        "some/relativepath/somewhere/{0}/{0}/{0}/bsd.img",
        "abcdefghijklmnopqrstuvwxyz0123456789"
    );
    let text = format!("{HEADER}rdisk=\"{rel}\"\nvm \"x\" {{\n\tdisk $rdisk\n}}\n");
    assert_eq!(
        regress_cut(&text),
        [
            " No such file or directory".to_string(),
            format!("5: failed to parse disks: {rel}")
        ]
    );
}
