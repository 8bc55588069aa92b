//! What the qemu interop and crash tests share: whether qemu-img and
//! qemu-io are here (Debian's qemu-utils; the tests are ignored with that
//! reason where they are not), running them, a scratch directory and a
//! seeded PRNG.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Why not, if qemu-img or qemu-io does not run.
pub fn missing_qemu() -> Option<String> {
    for tool in ["qemu-img", "qemu-io"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!("needs {tool} (Debian package qemu-utils)"));
        }
    }
    None
}

fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

/// Runs qemu-img; its stdout, or an error with what it said.
pub fn qemu_img(args: &[&str]) -> Result<String, String> {
    let o = run("qemu-img", args);
    if !o.status.success() {
        return Err(format!(
            "qemu-img {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs qemu-io with one command (`-c`) on an image, opened by format.
/// qemu-io exits 0 even when a pattern does not verify, so its output is
/// checked for failure lines.
pub fn qemu_io(image: &str, cmd: &str) -> Result<String, String> {
    qemu_io_all(image, &[cmd])
}

/// qemu-io with several commands in one run.
pub fn qemu_io_all<S: AsRef<str>>(image: &str, cmds: &[S]) -> Result<String, String> {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend(["-c", c.as_ref()]);
    }
    args.push(image);
    let cmd = cmds
        .iter()
        .map(|c| c.as_ref())
        .collect::<Vec<_>>()
        .join("; ");
    let o = run("qemu-io", &args);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success()
        || out.contains("failed")
        || out.contains("error")
        || out.contains("Pattern verification")
    {
        return Err(format!("qemu-io -c '{cmd}' {image}: {out}"));
    }
    Ok(out)
}

/// What `qemu-img check` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    Clean,
    /// Leaked clusters only: allowed after a crash.
    Leaks(String),
}

/// `qemu-img check`: Ok unless it reports corruption or errors (its exit
/// status: 0 clean, 3 leaks only, 2 corruption, 1 could not check).
pub fn qemu_check(image: &str) -> Result<Checked, String> {
    let o = run("qemu-img", &["check", image]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    match o.status.code() {
        Some(0) => Ok(Checked::Clean),
        Some(3) => Ok(Checked::Leaks(out)),
        _ => Err(format!("qemu-img check {image}: {out}")),
    }
}

/// The image's guest-visible bytes as qemu reads them.
pub fn qemu_raw(image: &str, scratch: &str) -> Result<Vec<u8>, String> {
    let _ = std::fs::remove_file(scratch);
    qemu_img(&["convert", "-O", "raw", image, scratch])?;
    let v = std::fs::read(scratch).map_err(|e| format!("{scratch}: {e}"))?;
    let _ = std::fs::remove_file(scratch);
    Ok(v)
}

/// A field of `qemu-img info --output=json`, as its JSON text.
pub fn info_field(json: &str, key: &str) -> Option<String> {
    let k = format!("\"{key}\": ");
    let at = json.find(&k)? + k.len();
    let rest = &json[at..];
    let end = rest.find([',', '\n']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"').to_string())
}

/// The first offset where two images differ, for messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("vmd-disk-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*, seeded through splitmix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs the trials, each ignored with the reason when qemu is missing.
pub fn run_trials(tests: Vec<libtest_mimic::Trial>) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    let skip = missing_qemu();
    let tests = tests
        .into_iter()
        .map(|t| match &skip {
            Some(why) => t.with_ignored_flag(true).with_kind(why.clone()),
            None => t,
        })
        .collect();
    libtest_mimic::run(&args, tests).exit()
}
