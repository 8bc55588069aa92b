//! `vmctl create` as a command, checked by qemu's tools (Debian's
//! qemu-utils; ignored with that reason where qemu-img is missing): its
//! qcow2 images pass `qemu-img check` and show their size and backing
//! file in `qemu-img info`, `-i` copies what qemu reads, compressed
//! clusters included, and a failure leaves no file behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

const M: u64 = 1024 * 1024;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("vmctl-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `vmctl create ...` in `dir`; its exit status and stderr.
fn vmctl(dir: &Dir, args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vmctl"))
        .arg("create")
        .args(args)
        .current_dir(&dir.0)
        .output()
        .expect("run vmctl");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn expect(dir: &Dir, args: &[&str], status: i32, stderr: &str) -> Result<(), Failed> {
    let got = vmctl(dir, args);
    if got != (status, stderr.to_string()) {
        return Err(format!(
            "vmctl create {}: got {got:?}, want ({status}, {stderr:?})",
            args.join(" ")
        )
        .into());
    }
    Ok(())
}

fn qemu_img(args: &[&str]) -> Result<String, Failed> {
    let o = Command::new("qemu-img").args(args).output()?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return Err(format!(
            "qemu-img {}: {out}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        )
        .into());
    }
    Ok(out)
}

/// A field of `qemu-img info --output=json`.
fn field(json: &str, key: &str) -> Option<String> {
    let k = format!("\"{key}\": ");
    let rest = &json[json.find(&k)? + k.len()..];
    let end = rest.find([',', '\n']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"').to_string())
}

fn created_images_pass_qemu_check() -> Result<(), Failed> {
    let d = Dir::new("check");
    expect(
        &d,
        &["-s", "3G", "base.qcow2"],
        0,
        "vmctl: qcow2 imagefile created\n",
    )?;
    expect(
        &d,
        &["-b", "base.qcow2", "over.qcow2"],
        0,
        "vmctl: qcow2 imagefile created\n",
    )?;
    expect(
        &d,
        &["-s", "100M", "qcow2:plain.img"],
        0,
        "vmctl: qcow2 imagefile created\n",
    )?;
    for (img, size, backing) in [
        ("base.qcow2", 3 * 1024 * M, None),
        ("over.qcow2", 3 * 1024 * M, Some("base.qcow2")),
        ("plain.img", 100 * M, None),
    ] {
        let p = d.path(img);
        qemu_img(&["check", "-q", &p])?;
        let info = qemu_img(&["info", "--output=json", &p])?;
        if field(&info, "format").as_deref() != Some("qcow2")
            || field(&info, "virtual-size") != Some(size.to_string())
            || field(&info, "backing-filename").as_deref() != backing
        {
            return Err(format!("{img}: qemu-img info says {info}").into());
        }
    }
    Ok(())
}

fn convert_reads_what_qemu_reads() -> Result<(), Failed> {
    let d = Dir::new("convert");
    let data: Vec<u8> = (0..3 * M + 4096).map(|i| (i / 1000 % 199) as u8).collect();
    std::fs::write(d.path("src.raw"), &data)?;
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &d.path("src.raw"),
        &d.path("comp.qcow2"),
    ])?;
    // compressed qcow2 -> qcow2 -> raw.
    expect(
        &d,
        &["-i", "comp.qcow2", "copy.qcow2"],
        0,
        "vmctl: destination size rounded to 4 megabytes\nvmctl: qcow2 imagefile created\n",
    )?;
    qemu_img(&["check", "-q", &d.path("copy.qcow2")])?;
    expect(
        &d,
        &["-i", "copy.qcow2", "copy.raw"],
        0,
        "vmctl: raw imagefile created\n",
    )?;
    let out = std::fs::read(d.path("copy.raw"))?;
    if out.len() as u64 != 4 * M
        || out[..data.len()] != data[..]
        || out[data.len()..].iter().any(|&b| b != 0)
    {
        return Err("copy.raw is not the source padded with zeros".into());
    }
    // qemu reads the qcow2 copy as the same bytes.
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        &d.path("copy.qcow2"),
        &d.path("copy.raw"),
    ])?;
    Ok(())
}

fn failures_leave_nothing_behind() -> Result<(), Failed> {
    let d = Dir::new("fail");
    std::fs::write(d.path("raw.img"), vec![0u8; M as usize])?;
    expect(
        &d,
        &["-s", "1M", "raw.img"],
        1,
        "vmctl: create imagefile operation failed: File exists\n",
    )?;
    expect(
        &d,
        &["-s", "1M", "nodir/x.qcow2"],
        1,
        "vmctl: create imagefile operation failed: No such file or directory\n",
    )?;
    expect(
        &d,
        &["-b", "raw.img", "x.qcow2"],
        1,
        "vmctl: base image is not a qcow2 file\n",
    )?;
    expect(
        &d,
        &["-s", "2M", "base.qcow2"],
        0,
        "vmctl: qcow2 imagefile created\n",
    )?;
    expect(
        &d,
        &["-b", "base.qcow2", "-s", "1M", "x.qcow2"],
        1,
        "vmctl: base size does not match requested size\n",
    )?;
    expect(
        &d,
        &["-i", "absent.img", "x.qcow2"],
        1,
        "vmctl: failed to open source image file\n",
    )?;
    if Path::new(&d.path("x.qcow2")).exists() || Path::new(&d.path("nodir")).exists() {
        return Err("a failed create left a file".into());
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let skip = Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
        .then(|| "needs qemu-img (Debian package qemu-utils)".to_string());
    let tests = [
        Trial::test(
            "created_images_pass_qemu_check",
            created_images_pass_qemu_check,
        ),
        Trial::test(
            "convert_reads_what_qemu_reads",
            convert_reads_what_qemu_reads,
        ),
        Trial::test(
            "failures_leave_nothing_behind",
            failures_leave_nothing_behind,
        ),
    ]
    .into_iter()
    .map(|t| match &skip {
        Some(why) => t.with_ignored_flag(true).with_kind(why.clone()),
        None => t,
    })
    .collect();
    libtest_mimic::run(&args, tests).exit()
}
