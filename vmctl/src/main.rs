//! vmctl(8).
#![forbid(unsafe_code)]
use std::io::Write;

fn main() {
    // Bytes, not text: a file name need not be UTF-8.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut out = std::io::stdout().lock();
    let status = vmctl::run(&argv, &mut out, &mut std::io::stderr());
    let _ = out.flush();
    std::process::exit(status);
}
