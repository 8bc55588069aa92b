//! vmd's log.c on the `log` facade: syslog with the daemon facility, or
//! stderr with `-d` (or when syslog cannot be reached).  `log::debug!` is
//! vmd's log_debug, shown only at verbosity 1 or more (`-v`, `vmctl log
//! verbose`); `log::info!` log_info, `log::warn!` log_warn(x),
//! `log::error!` is for fatal messages.
use std::io::Write;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

type Syslog = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

struct Logger {
    syslog: Option<Mutex<Syslog>>,
    verbose: AtomicI32,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();
static PROCNAME: Mutex<String> = Mutex::new(String::new());

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info || self.verbose.load(Ordering::Relaxed) > 0
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        // Messages of the VM machine's modules (devices, exits) are
        // debug chatter unless verbose.
        let msg = r.args().to_string();
        match &self.syslog {
            Some(s) => {
                let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                let _ = match r.level() {
                    log::Level::Error => s.crit(msg),
                    log::Level::Warn => s.warning(msg),
                    log::Level::Info => s.info(msg),
                    _ => s.debug(msg),
                };
            }
            None => {
                // One write per line, so that lines of the several vmd
                // processes sharing stderr do not run into each other.
                let line = format!("{msg}\n");
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// `log_init(debug, LOG_DAEMON)` and `log_setverbose(verbose)`; `name` is
/// the process name in syslog lines.  Only the first call installs the
/// logger.
pub fn init(debug: bool, verbose: u32, name: &str) {
    *PROCNAME.lock().unwrap_or_else(|e| e.into_inner()) = name.to_string();
    let syslog = if debug {
        None
    } else {
        syslog::unix(syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "vmd".into(),
            pid: std::process::id(),
        })
        .ok()
        .map(Mutex::new)
    };
    let logger = LOGGER.get_or_init(|| Logger {
        syslog,
        verbose: AtomicI32::new(verbose as i32),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    set_verbose(verbose as i32);
}

/// `log_setverbose`.
pub fn set_verbose(v: i32) {
    if let Some(l) = LOGGER.get() {
        l.verbose.store(v, Ordering::Relaxed);
    }
}

pub fn verbose() -> i32 {
    LOGGER
        .get()
        .map_or(0, |l| l.verbose.load(Ordering::Relaxed))
}

/// `log_procinit`: the name fatal messages carry.
pub fn procinit(name: &str) {
    *PROCNAME.lock().unwrap_or_else(|e| e.into_inner()) = name.to_string();
}

/// `fatalx`: logs `fatal in <process>: <message>` and exits 1.
pub fn fatalx(msg: &str) -> ! {
    let name = PROCNAME.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let name = if name.is_empty() { "vmd".into() } else { name };
    log::error!("fatal in {name}: {msg}");
    std::process::exit(1)
}

/// `fatal`: as [`fatalx`] with the error appended.
pub fn fatal(msg: &str, err: impl std::fmt::Display) -> ! {
    fatalx(&format!("{msg}: {err}"))
}

/// The syslog datagram socket, for a message that must be written without
/// the logger (the seccomp SIGSYS reporter); None when logging goes to
/// stderr or over a stream.
pub fn syslog_fd() -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    let s = LOGGER.get()?.syslog.as_ref()?;
    let g = s.lock().unwrap_or_else(|e| e.into_inner());
    match &g.backend {
        syslog::LoggerBackend::Unix(d) => Some(d.as_raw_fd()),
        _ => None,
    }
}
