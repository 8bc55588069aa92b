//! The event loop every vmd process runs: poll(2) over descriptors until
//! one is ready, a deadline passes or another thread wakes it through a
//! self-pipe (libevent's role in vmd).  The daemon processes wait on
//! their sockets and signals with it, the VM's event thread on the
//! console, the device timers' deadlines and the devices' reschedule
//! notifications.  Signals arrive through the same self-pipe.
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

/// What poll reported for one descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub read: bool,
    pub write: bool,
}

/// poll(2) over `fds` (descriptor, wants-write) until one is ready or
/// `deadline` passes.  Readable includes hang-up and errors, so the caller
/// reads and learns what happened.
pub fn poll(fds: &[(BorrowedFd<'_>, bool)], deadline: Option<Instant>) -> Vec<Ready> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|(fd, w)| {
            let mut ev = PollFlags::POLLIN;
            if *w {
                ev |= PollFlags::POLLOUT;
            }
            PollFd::new(*fd, ev)
        })
        .collect();
    let timeout = match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            let ms = left.as_millis().min(60_000) as u16;
            // Round up so that a deadline is never polled at 0 ms early.
            let ms = if left > Duration::from_millis(u64::from(ms)) {
                ms + 1
            } else {
                ms
            };
            PollTimeout::from(ms)
        }
    };
    let _ = nix::poll::poll(&mut pfds, timeout);
    pfds.iter()
        .map(|p| {
            let r = p.revents().unwrap_or(PollFlags::empty());
            Ready {
                read: r.intersects(
                    PollFlags::POLLIN
                        | PollFlags::POLLHUP
                        | PollFlags::POLLERR
                        | PollFlags::POLLNVAL,
                ),
                write: r.contains(PollFlags::POLLOUT),
            }
        })
        .collect()
}

/// The earliest of some deadlines.
pub fn earliest(ds: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    ds.into_iter().flatten().min()
}

/// Wakes an [`EventLoop`] from any thread (or from a device callback that
/// runs with the device locked: it only writes a byte).
#[derive(Clone)]
pub struct Waker {
    tx: Arc<UnixStream>,
}

impl Waker {
    pub fn wake(&self) {
        // A full pipe means a wake-up is already pending: nothing lost.
        let _ = (&*self.tx).write(&[1]);
    }
}

/// A poll loop with a self-pipe, which signal handlers write too
/// (libevent's signal events).
pub struct EventLoop {
    rx: UnixStream,
    waker: Waker,
    /// Times `wait` returned, for the idle wake-up figures.
    wakeups: Arc<AtomicU64>,
    /// Signals watched, each with the flag its handler sets.
    signals: Vec<(i32, Arc<AtomicBool>)>,
}

impl EventLoop {
    pub fn new() -> io::Result<EventLoop> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(EventLoop {
            rx,
            waker: Waker { tx: Arc::new(tx) },
            wakeups: Arc::new(AtomicU64::new(0)),
            signals: Vec::new(),
        })
    }

    /// A loop that also wakes for `sigs`; [`take_signals`](Self::take_signals)
    /// says which arrived.
    pub fn with_signals(sigs: &[i32]) -> io::Result<EventLoop> {
        let mut ev = EventLoop::new()?;
        for &s in sigs {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(s, flag.clone())?;
            signal_hook::low_level::pipe::register(s, ev.waker.tx.try_clone()?)?;
            ev.signals.push((s, flag));
        }
        Ok(ev)
    }

    /// The watched signals that arrived since the last call.
    pub fn take_signals(&self) -> Vec<i32> {
        self.signals
            .iter()
            .filter(|(_, f)| f.swap(false, Ordering::SeqCst))
            .map(|(s, _)| *s)
            .collect()
    }

    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// A counter of the loop's wake-ups that other threads can read.
    pub fn wakeup_counter(&self) -> Arc<AtomicU64> {
        self.wakeups.clone()
    }

    /// Waits until one of `fds` is ready, `deadline` passes or the loop
    /// is woken.  Returns the readiness of `fds` and whether it was woken
    /// (the wake-ups are consumed).
    pub fn wait(
        &mut self,
        fds: &[(BorrowedFd<'_>, bool)],
        deadline: Option<Instant>,
    ) -> (Vec<Ready>, bool) {
        let mut all = Vec::with_capacity(fds.len() + 1);
        all.push((self.rx.as_fd(), false));
        all.extend_from_slice(fds);
        let mut ready = poll(&all, deadline);
        self.wakeups.fetch_add(1, Ordering::Relaxed);
        let woken = ready.remove(0).read;
        if woken {
            let mut buf = [0u8; 64];
            while matches!((&self.rx).read(&mut buf), Ok(n) if n > 0) {}
        }
        (ready, woken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_from_another_thread_ends_a_wait_without_deadline() {
        let mut ev = EventLoop::new().unwrap();
        let w = ev.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.wake();
        });
        let (ready, woken) = ev.wait(&[], None);
        assert!(woken && ready.is_empty());
        t.join().unwrap();
        // Wakes that piled up are consumed by one wait.
        ev.waker().wake();
        ev.waker().wake();
        assert!(ev.wait(&[], None).1);
        let (_, woken) = ev.wait(&[], Some(Instant::now() + Duration::from_millis(5)));
        assert!(!woken);
    }

    #[test]
    fn a_deadline_ends_a_wait_and_never_early() {
        let mut ev = EventLoop::new().unwrap();
        let d = Instant::now() + Duration::from_millis(15);
        let (_, woken) = ev.wait(&[], Some(d));
        assert!(!woken);
        assert!(Instant::now() >= d);
    }

    #[test]
    fn readiness_is_reported_per_descriptor() {
        let mut ev = EventLoop::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        (&b).write_all(b"x").unwrap();
        let (ready, woken) = ev.wait(&[(a.as_fd(), false), (c.as_fd(), false)], None);
        assert!(!woken);
        assert_eq!(
            ready,
            [
                Ready {
                    read: true,
                    write: false
                },
                Ready::default()
            ]
        );
        let (ready, _) = ev.wait(&[(c.as_fd(), true)], None);
        assert!(ready[0].write);
        assert_eq!(ev.wakeup_counter().load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_watched_signal_wakes_the_loop_and_is_reported_once() {
        let mut ev = EventLoop::with_signals(&[libc::SIGUSR2]).unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR2).unwrap();
        let (_, woken) = ev.wait(&[], Some(Instant::now() + Duration::from_secs(5)));
        assert!(woken);
        assert_eq!(ev.take_signals(), [libc::SIGUSR2]);
        assert!(ev.take_signals().is_empty());
    }

    #[test]
    fn many_wakes_never_block_the_waker() {
        let ev = EventLoop::new().unwrap();
        let w = ev.waker();
        for _ in 0..100_000 {
            w.wake();
        }
    }
}
