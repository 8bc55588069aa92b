//! vmctl(8).
#![forbid(unsafe_code)]
use std::io::Write;

fn main() {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut out = std::io::stdout().lock();
    let status = vmctl::run(&argv, &mut out, &mut std::io::stderr());
    let _ = out.flush();
    std::process::exit(status);
}
