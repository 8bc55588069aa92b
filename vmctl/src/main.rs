//! vmctl(8).  The commands come with the daemon issue; until then vmctl
//! prints OpenBSD's usage line and fails.
fn main() {
    eprintln!("usage:\tvmctl [-v] command [arg ...]");
    eprintln!("vmctl: not implemented yet: vmd's control socket comes with the daemon");
    std::process::exit(1);
}
