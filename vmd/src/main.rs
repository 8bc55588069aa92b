//! vmd(8).  The daemon, its processes and the VM process are built in the
//! issues that follow the foundation; this binary so far only checks that
//! the host's vmm(4) can be opened.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("-V") {
        // vmd's internal flag for a VM process is not available yet.
        eprintln!("vmd: VM processes are not implemented yet");
        std::process::exit(1);
    }
    match vmm_sys::Vmm::open() {
        Ok(vmm) => {
            eprintln!(
                "vmd: vmm(4) is available ({:?} exits); the daemon is not implemented yet",
                vmm.host_flavour()
            );
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("vmd: {e}");
            std::process::exit(1);
        }
    }
}
