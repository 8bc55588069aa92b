//! Kicking a vCPU thread out of `KVM_RUN`: `immediate_exit` for a thread
//! about to enter, a thread-directed signal for one inside.
use std::sync::Once;

/// The real-time signal used for kicks (the first one the C library leaves
/// free).
pub fn signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs a handler that does nothing, so that the signal interrupts
/// `KVM_RUN` (which then returns EINTR) instead of killing the process.
pub fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a valid handler and empty mask is a
        // well-formed argument; the handler is async-signal-safe (empty).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Sends the kick signal to `thread`.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: the caller holds the vCPU's `running` lock, so `thread` is
    // inside Vcpu::run and alive.
    unsafe { libc::pthread_kill(thread, signal()) };
}
