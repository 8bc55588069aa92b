//! `vmrun`: the development entry point of the VM process, until vmd's
//! daemon starts VM processes itself.  Runs one VM with COM1 on
//! stdin/stdout.
//!
//!     vmrun [-m memory] [-t seconds] [-d disk]... [-b bios | -k kernel | -l bzimage [-i initrd] [-c cmdline]] [name]
//!
//! A disk is `[raw:|qcow2:]path` (the format found by the qcow2 magic
//! when not given), opened read-write with its backing chain.
//!
//! Exits 0 when the VM halted, EAGAIN (35 on OpenBSD, 11 on Linux) when the
//! guest rebooted, 1 with a message otherwise.
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;
use vmd::vm::machine::{BootImage, Machine, Outcome, VmConfig};

fn usage() -> ! {
    eprintln!(
        "usage: vmrun [-m memory] [-t seconds] [-d disk]... [-b bios | -k kernel | -l bzimage [-i initrd] [-c cmdline]] [name]"
    );
    std::process::exit(1);
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1 << 20), // vmd's default unit is megabytes
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        eprintln!("vmrun: {path}: {e}");
        std::process::exit(1)
    })
}

fn open_disk(spec: &str) -> Box<dyn vmd_disk::DiskImage> {
    let (format, path) = match spec.split_once(':') {
        Some(("raw", p)) => (Some(vmd_disk::Format::Raw), p),
        Some(("qcow2", p)) => (Some(vmd_disk::Format::Qcow2), p),
        _ => (None, spec),
    };
    vmd_disk::open(path, format, true).unwrap_or_else(|e| {
        eprintln!("vmrun: {e}");
        std::process::exit(1)
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut memory, mut timeout) = (512u64 << 20, None);
    let (mut bios, mut kernel, mut linux, mut initrd, mut cmdline) =
        (None, None, None, None, String::new());
    let mut name = "vm".to_string();
    let mut disks = Vec::new();
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "-m" => memory = parse_size(&val()).unwrap_or_else(|| usage()),
            "-t" => timeout = Some(val().parse::<u64>().unwrap_or_else(|_| usage())),
            "-b" => bios = Some(val()),
            "-k" => kernel = Some(val()),
            "-l" => linux = Some(val()),
            "-i" => initrd = Some(val()),
            "-c" => cmdline = val(),
            "-d" => disks.push(open_disk(&val())),
            s if s.starts_with('-') => usage(),
            s => name = s.to_string(),
        }
    }
    let boot = match (bios, kernel, linux) {
        (Some(b), None, None) => BootImage::Bios(read(&b)),
        (None, Some(k), None) => BootImage::Kernel(read(&k)),
        (None, None, Some(l)) => BootImage::Linux {
            kernel: read(&l),
            initrd: initrd.map(|i| read(&i)),
            cmdline,
        },
        (None, None, None) => BootImage::Bios(read("/usr/share/seabios/bios.bin")),
        _ => usage(),
    };
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().ok();
    // COM1 output goes straight to the descriptor, as vmd writes to the
    // pty: std's stdout would hold a line until its newline.
    let stdout = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            eprintln!("vmrun: stdout: {e}");
            std::process::exit(1);
        }
    };
    let cfg = VmConfig {
        console_in: stdin,
        disks,
        ..VmConfig::new(name, memory, boot, Box::new(stdout))
    };
    let vmm = match vmm_sys::Vmm::open() {
        Ok(v) => Arc::new(v),
        Err(e) => {
            eprintln!("vmrun: {e}");
            std::process::exit(1);
        }
    };
    let machine = match Machine::new(vmm, cfg) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("vmrun: {e}");
            std::process::exit(1);
        }
    };
    if let Some(secs) = timeout {
        let control = machine.control();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            control.stop();
        });
    }
    match machine.run() {
        Ok(Outcome::Halted) => std::process::exit(0),
        Ok(Outcome::Reboot) => std::process::exit(libc::EAGAIN),
        Err(e) => {
            eprintln!("vmrun: {e}");
            std::process::exit(1);
        }
    }
}
