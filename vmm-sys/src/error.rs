//! Errors of the vmm(4) verbs: an errno value, as the kernel returns it,
//! plus the verb and, where the shim knows more, a detail for the log.
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmError {
    /// The ioctl verb that failed, e.g. `VMM_IOC_RUN`.
    pub op: &'static str,
    /// The errno value vmm(4) returns for this failure.
    pub errno: i32,
    /// What exactly went wrong, where known (guest RIP, instruction bytes…).
    pub detail: Option<String>,
}

pub type Result<T> = std::result::Result<T, VmmError>;

impl VmmError {
    pub fn new(op: &'static str, errno: i32) -> Self {
        VmmError {
            op,
            errno,
            detail: None,
        }
    }

    pub fn with_detail(op: &'static str, errno: i32, detail: impl Into<String>) -> Self {
        VmmError {
            op,
            errno,
            detail: Some(detail.into()),
        }
    }

    /// The error of the last failed system call.
    pub fn last_os_error(op: &'static str) -> Self {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        VmmError::new(op, errno)
    }

    pub fn errno(&self) -> i32 {
        self.errno
    }
}

impl fmt::Display for VmmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.errno);
        match &self.detail {
            Some(d) => write!(f, "{}: {}: {}", self.op, d, text),
            None => write!(f, "{}: {}", self.op, text),
        }
    }
}

impl std::error::Error for VmmError {}
