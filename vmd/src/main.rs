//! vmd(8): the virtual machine daemon.  See [`vmd::daemon`].
fn main() {
    std::process::exit(vmd::daemon::main());
}
