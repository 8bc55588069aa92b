//! The seccomp allow-lists, one per process kind, built from groups; each
//! call says why it is there.  Found by running the daemon, e2e, testguest
//! and vioscsi suites under `strace -f` and reading what each process
//! calls after the point where it confines itself (and, for a process
//! that starts others, what its children call until they confine
//! themselves: filters are inherited across exec).  A call not listed
//! traps; vmm-sys's SIGSYS reporter names it and the process dies.
//!
//! To extend a kind (vionet): add a group, or calls to one, and list the
//! group in [`groups`].
use super::super::super::Kind;
use syscalls::Sysno;

/// One allowed call and why.
pub(super) type Allow = (Sysno, &'static str);

/// What every Rust process here does once running: memory, threads'
/// synchronisation, signals (the self-pipe event loop, vCPU kicks),
/// time, descriptors it already has.
const RUNTIME: &[Allow] = &[
    (Sysno::read, "sockets, pipes, the self-pipe, ptys"),
    (Sysno::write, "sockets, the self-pipe, stderr logging"),
    (Sysno::readv, "imsg reads"),
    (Sysno::writev, "imsg writes, stderr"),
    (Sysno::close, "descriptors done with"),
    (Sysno::brk, "malloc"),
    (Sysno::mmap, "malloc, thread stacks"),
    (Sysno::munmap, "free"),
    (Sysno::mremap, "realloc of large blocks"),
    (Sysno::mprotect, "thread stack guards"),
    (Sysno::madvise, "malloc returning memory"),
    (Sysno::futex, "locks, condition variables"),
    (Sysno::rt_sigaction, "signal handlers of the event loop"),
    (Sysno::rt_sigprocmask, "signal masks"),
    (Sysno::rt_sigreturn, "return from a signal handler"),
    (
        Sysno::sigaltstack,
        "std's stack-overflow handler per thread",
    ),
    (Sysno::restart_syscall, "restarted sleeps"),
    (Sysno::poll, "the event loop"),
    (Sysno::ppoll, "the event loop"),
    (Sysno::clock_gettime, "time (when the vDSO is not used)"),
    (Sysno::clock_nanosleep, "sleeps"),
    (Sysno::nanosleep, "sleeps"),
    (Sysno::sched_yield, "spin loops"),
    (Sysno::getpid, "messages carry the pid"),
    (Sysno::gettid, "thread ids"),
    (Sysno::getrandom, "hash seeds"),
    (Sysno::fcntl, "O_NONBLOCK, FD_CLOEXEC, F_DUPFD_CLOEXEC"),
    (Sysno::fstat, "file sizes of descriptors"),
    (Sysno::newfstatat, "fstat through glibc"),
    (Sysno::statx, "fstat through std"),
    (Sysno::lseek, "disk images, boot images"),
    (Sysno::exit, "a thread ends"),
    (Sysno::exit_group, "the process ends"),
];

/// imsg channels and syslog over sockets the process has.
const IPC: &[Allow] = &[
    (Sysno::sendmsg, "imsg with descriptors"),
    (Sysno::recvmsg, "imsg with descriptors"),
    (Sysno::sendto, "syslog, imsg"),
    (Sysno::recvfrom, "imsg"),
    (Sysno::shutdown, "closing a channel"),
    (Sysno::getpeername, "checking a channel is a socket"),
    (Sysno::getsockname, "socket addresses"),
    (Sysno::getsockopt, "SO_PEERCRED, SO_ERROR"),
    (Sysno::setsockopt, "socket buffer sizes"),
    (Sysno::socketpair, "channels to children, the self-pipe"),
];

/// Starting a child (std's Command: glibc's posix_spawn), and what the
/// child does between its clone and the point where it confines itself
/// (runtime start-up, the dynamic loader, logging, vmd's main).
const SPAWN: &[Allow] = &[
    (
        Sysno::clone3,
        "posix_spawn's CLONE_VM|CLONE_VFORK child; threads",
    ),
    (
        Sysno::clone,
        "posix_spawn and threads where clone3 is refused",
    ),
    (Sysno::vfork, "posix_spawn on older glibc"),
    (Sysno::execve, "vmd's own binary"),
    (Sysno::dup2, "the channel onto the child's stdin"),
    (Sysno::dup3, "the channel onto the child's stdin"),
    (Sysno::setpgid, "a VM process in a process group of its own"),
    (Sysno::setsid, "a session of its own"),
    (
        Sysno::getppid,
        "a VM process checks its parent is still there after PR_SET_PDEATHSIG",
    ),
    (Sysno::wait4, "reaping children"),
    (Sysno::waitid, "reaping children"),
    (Sysno::kill, "ending children"),
    (Sysno::pidfd_open, "std's child handle"),
    (Sysno::pidfd_send_signal, "std's child handle"),
    (Sysno::close_range, "closing descriptors before exec"),
    (Sysno::arch_prctl, "the new image's TLS"),
    (Sysno::set_tid_address, "the new image's start"),
    (Sysno::set_robust_list, "the new image's start, threads"),
    (Sysno::rseq, "the new image's start, threads"),
    (Sysno::prlimit64, "the new image's stack limit"),
    (Sysno::sched_getaffinity, "std's thread count"),
    (
        Sysno::openat,
        "the dynamic loader (Landlock limits what opens)",
    ),
    (Sysno::open, "the dynamic loader"),
    (Sysno::access, "the dynamic loader"),
    (Sysno::readlink, "std::env::current_exe"),
    (Sysno::readlinkat, "std::env::current_exe"),
    (Sysno::pread64, "the dynamic loader"),
    (
        Sysno::prctl,
        "PR_SET_NAME (process title), PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_PDEATHSIG",
    ),
    (Sysno::seccomp, "the child installs its own filter"),
    (
        Sysno::socket,
        "the child's syslog socket (logging starts before it confines itself)",
    ),
    (Sysno::connect, "the child's syslog socket"),
    (Sysno::landlock_create_ruleset, "the child's Landlock rules"),
    (Sysno::landlock_add_rule, "the child's Landlock rules"),
    (Sysno::landlock_restrict_self, "the child's Landlock rules"),
    (Sysno::capget, "dropping capabilities"),
    (Sysno::capset, "dropping capabilities"),
    (Sysno::geteuid, "vmd's main checks for root"),
    (Sysno::getuid, "user lookups"),
    (Sysno::getgid, "user lookups"),
    (Sysno::getegid, "user lookups"),
    (Sysno::setgroups, "a child started as root drops to _vmd"),
    (Sysno::setresgid, "a child started as root drops to _vmd"),
    (Sysno::setresuid, "a child started as root drops to _vmd"),
    (Sysno::chdir, "a chroot's cwd"),
    (Sysno::umask, "file modes"),
    (Sysno::uname, "glibc start-up on some kernels"),
];

/// ioctl, narrowed by the caller to what the kind needs (see
/// [`IoctlRule`]).
const IOCTL: &[Allow] = &[(Sysno::ioctl, "narrowed per kind, see IoctlRule")];

/// The vmm(4) shim in the VM process: KVM's ioctls (narrowed to KVM's
/// type), guest memory in memfds, vCPU kicks.
const SHIM: &[Allow] = &[
    (Sysno::memfd_create, "guest RAM backing"),
    (Sysno::ftruncate, "sizing guest RAM memfds"),
    (Sysno::fallocate, "guest RAM memfds"),
    (Sysno::tgkill, "kicking a vCPU thread out of KVM_RUN"),
    (Sysno::eventfd2, "vCPU and device notifications"),
    (Sysno::pipe2, "notifications"),
];

/// Threads of the VM process (vCPUs, the event thread, device proxies).
const THREADS: &[Allow] = &[
    (
        Sysno::clone,
        "pthread_create, CLONE_THREAD only (see CloneRule)",
    ),
    (
        Sysno::clone3,
        "refused with ENOSYS so that glibc falls back to clone",
    ),
    (Sysno::set_robust_list, "a new thread"),
    (Sysno::rseq, "a new thread"),
    (Sysno::sched_getaffinity, "std's thread start"),
    (Sysno::prctl, "thread names"),
    (Sysno::wait4, "reaping a device process that died"),
    (Sysno::kill, "ending a device process"),
];

/// A device process serving its disk or CD-ROM.
const DISK: &[Allow] = &[
    (Sysno::pread64, "disk reads"),
    (Sysno::pwrite64, "disk writes"),
    (Sysno::preadv, "disk reads"),
    (Sysno::pwritev, "disk writes"),
    (Sysno::fsync, "FLUSH"),
    (Sysno::fdatasync, "FLUSH"),
    (Sysno::fallocate, "qcow2 growth, discard"),
    (Sysno::ftruncate, "qcow2 growth"),
    (Sysno::flock, "the image lock"),
];

/// The control process: its listening socket and clients.
const CONTROL: &[Allow] = &[
    (Sysno::accept4, "clients"),
    (Sysno::accept, "clients"),
    (Sysno::unlink, "the socket at shutdown"),
];

/// The parent: files for VMs, ptys, the registry, its children.
const PARENT: &[Allow] = &[
    (
        Sysno::openat,
        "disks, ISOs, boot images, ptys, vm.conf, /proc/PID/statm",
    ),
    (Sysno::open, "as openat"),
    (Sysno::access, "file checks"),
    (Sysno::faccessat, "file checks (glibc's access)"),
    (Sysno::faccessat2, "file checks (glibc's access)"),
    (Sysno::readlink, "paths"),
    (Sysno::readlinkat, "paths"),
    (Sysno::pread64, "qcow2 headers of disks"),
    (Sysno::pwrite64, "pid file"),
    (Sysno::ftruncate, "pid file"),
    (Sysno::flock, "image locks, pid file"),
    (Sysno::fchown, "pty owners"),
    (Sysno::chown, "the socket's owner"),
    (Sysno::lchown, "the socket's owner"),
    (Sysno::fchownat, "the socket's owner"),
    (Sysno::fchmod, "pty modes"),
    (Sysno::chmod, "the socket's mode"),
    (Sysno::fchmodat, "the socket's mode"),
    (Sysno::unlink, "socket and pid file at shutdown"),
    (Sysno::unlinkat, "socket and pid file at shutdown"),
    (Sysno::wait4, "children"),
    (Sysno::waitid, "children"),
    (Sysno::kill, "children"),
    (Sysno::geteuid, "owners"),
    (Sysno::getuid, "owners"),
    (Sysno::getgid, "owners"),
    (Sysno::getegid, "owners"),
    (Sysno::sched_getaffinity, "the CPU count"),
    (Sysno::prlimit64, "descriptor limits"),
    (Sysno::umask, "file modes"),
    (Sysno::getdents64, "directories (user lookups)"),
    (Sysno::uname, "host name"),
    (Sysno::prctl, "process title"),
    (Sysno::dup, "descriptors sent to children"),
    (
        Sysno::socket,
        "user and group lookups: glibc's NSS asks nscd or systemd-userdbd over a socket",
    ),
    (Sysno::connect, "user and group lookups (NSS)"),
    (Sysno::fsync, "images made for VMs"),
    (Sysno::fdatasync, "images made for VMs"),
];

/// The groups each kind allows.
pub(super) fn groups(kind: Kind) -> Vec<&'static [Allow]> {
    match kind {
        Kind::Parent => vec![RUNTIME, IPC, IOCTL, PARENT],
        Kind::Control => vec![RUNTIME, IPC, IOCTL, CONTROL],
        // Its children (VM and device processes) run under this filter too.
        Kind::Vmm => vec![RUNTIME, IPC, IOCTL, SPAWN, SHIM, DISK],
        // Chrooted root: rtnetlink on the socket it opened before (sendto,
        // recvfrom), TUNGETIFF on a tap's descriptor (a 'T' ioctl).
        Kind::Priv => vec![RUNTIME, IPC, IOCTL],
        // Until its devices run; device processes run under it too.
        Kind::Vm => vec![RUNTIME, IPC, IOCTL, SPAWN, SHIM, DISK],
        // With VMD_INPROCESS_DEVICES=1 (vmd.8) it serves its disks and
        // NICs itself, so it also needs what a device process does.
        Kind::VmRunning if in_process_devices() => {
            vec![RUNTIME, IPC, IOCTL, SHIM, THREADS, DISK]
        }
        Kind::VmRunning => vec![RUNTIME, IPC, IOCTL, SHIM, THREADS],
        Kind::Device(_) => vec![RUNTIME, IPC, IOCTL, DISK],
    }
}

/// The descriptor ioctls any kind may make: FIONBIO (std's
/// set_nonblocking), FIOCLEX and FIONCLEX, TCGETS (isatty).  Not the
/// rest of type 'T' (TIOCSTI and the like).
pub(super) const FD_IOCTLS: &[u64] = &[libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX, libc::TCGETS];

fn in_process_devices() -> bool {
    std::env::var(crate::daemon::ENV_INPROCESS_DEVICES).is_ok_and(|v| v == "1")
}

/// What ioctl requests a kind may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IoctlRule {
    Any,
    /// KVM's (`_IOC_TYPE` 0xAE: the shim) and [`FD_IOCTLS`].
    KvmAndFd,
    /// [`FD_IOCTLS`] only.
    Fd,
    /// [`FD_IOCTLS`] and TUNGETIFF: priv asks a tap's descriptor for its
    /// name (PRIV_GET_ADDR, the tap's MAC).
    FdAndTunName,
}

pub(super) fn ioctl_rule(kind: Kind) -> IoctlRule {
    match kind {
        // ptys (TIOCGPTN, TIOCSPTLCK, TCSETS), vmm(4) checks.
        Kind::Parent => IoctlRule::Any,
        Kind::Control => IoctlRule::Fd,
        Kind::Priv => IoctlRule::FdAndTunName,
        Kind::Vmm | Kind::Vm | Kind::VmRunning => IoctlRule::KvmAndFd,
        // vmm(4) handles are built (KVM_CHECK_EXTENSION) before set-up ends.
        Kind::Device(_) => IoctlRule::KvmAndFd,
    }
}

/// Whether threads may be made only with CLONE_THREAD (clone3 refused
/// with ENOSYS, so that its flags, in memory, need not be read).
pub(super) fn threads_only(kind: Kind) -> bool {
    matches!(kind, Kind::VmRunning)
}
