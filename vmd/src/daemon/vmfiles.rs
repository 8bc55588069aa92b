//! The files the parent opens for a VM (config.c's part of
//! `config_setvm`): boot images, the CD-ROM and disks.  They are opened
//! without blocking and only regular files (and block devices, for disks)
//! are kept, so that a FIFO or a device named by a user cannot hang the
//! parent in open(2) or feed it without end; disks opened for writing are
//! locked.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// What a file is for: which types it may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFile {
    /// A kernel or BIOS image.
    Boot,
    Cdrom,
    Disk,
}

impl VmFile {
    fn what(self) -> &'static str {
        match self {
            VmFile::Boot => "boot image",
            VmFile::Cdrom => "cdrom",
            VmFile::Disk => "disk",
        }
    }
}

/// Why a file was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{what} {path}: {source}")]
    Open {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path} is {kind}, not a regular file")]
    Type {
        what: &'static str,
        path: String,
        kind: &'static str,
    },
}

impl OpenError {
    /// The errno of a failed open(2), or EINVAL for a file of the wrong
    /// type.
    pub fn errno(&self) -> i32 {
        match self {
            OpenError::Open { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            OpenError::Type { .. } => libc::EINVAL,
        }
    }
}

/// What a file type is called in messages.
pub fn kind_of(t: &std::fs::FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a fifo"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

/// Whether a file of type `t` may serve as `use_`.
pub fn type_allowed(t: &std::fs::FileType, use_: VmFile) -> bool {
    t.is_file() || (use_ == VmFile::Disk && t.is_block_device())
}

/// Opens `path` for `use_` (for writing too with `write`): O_NONBLOCK, so
/// that open(2) of a FIFO or a device returns at once, then the type
/// check, then O_NONBLOCK cleared again.
pub fn open(path: &str, use_: VmFile, write: bool) -> Result<File, OpenError> {
    let f = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(Path::new(path))
        .map_err(|source| OpenError::Open {
            what: use_.what(),
            path: path.to_string(),
            source,
        })?;
    let io = |source: std::io::Error| OpenError::Open {
        what: use_.what(),
        path: path.to_string(),
        source,
    };
    let t = f.metadata().map_err(io)?.file_type();
    if !type_allowed(&t, use_) {
        return Err(OpenError::Type {
            what: use_.what(),
            path: path.to_string(),
            kind: kind_of(&t),
        });
    }
    let fl = fcntl(&f, FcntlArg::F_GETFL).map_err(|e| io(e.into()))?;
    let fl = OFlag::from_bits_truncate(fl) & !OFlag::O_NONBLOCK;
    fcntl(&f, FcntlArg::F_SETFL(fl)).map_err(|e| io(e.into()))?;
    Ok(f)
}

/// Locks a disk image opened read-write for one VM (O_EXLOCK in vmd): a
/// second VM, or a second vmd, gets an error naming the file instead of
/// writing the same image.  The lock goes with the open file, and so with
/// the descriptor a disk process gets.
pub fn lock_disk(f: &File, path: &str) -> Result<(), String> {
    use rustix::fs::{flock, FlockOperation};
    match flock(f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(format!(
            "disk {path} is in use by another vm or program (locked)"
        )),
        Err(e) => Err(format!("disk {path}: lock: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn daemon_vmfiles_fifo_and_devices_refused_at_once() {
        let dir = std::env::temp_dir().join(format!("vmd-vmfiles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("f");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let fifo = fifo.to_str().unwrap().to_string();
        let t = Instant::now();
        for use_ in [VmFile::Boot, VmFile::Cdrom, VmFile::Disk] {
            let e = open(&fifo, use_, false).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL);
            assert_eq!(
                e.to_string(),
                format!("{} {fifo} is a fifo, not a regular file", use_.what())
            );
        }
        assert!(t.elapsed() < Duration::from_secs(2), "open blocked");
        let e = open("/dev/zero", VmFile::Boot, false).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("is a character device, not a regular file"));
        assert!(open(dir.to_str().unwrap(), VmFile::Disk, false).is_err());
        let e = open("/nonexistent/x", VmFile::Cdrom, false).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT);
        // A regular file, opened read-write, is blocking again.
        let img = dir.join("d.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let f = open(img.to_str().unwrap(), VmFile::Disk, true).unwrap();
        let fl = OFlag::from_bits_truncate(fcntl(&f, FcntlArg::F_GETFL).unwrap());
        assert!(!fl.contains(OFlag::O_NONBLOCK));
        assert_eq!(fl & OFlag::O_ACCMODE, OFlag::O_RDWR);
        // And locked once: a second lock names the file.
        lock_disk(&f, "d.img").unwrap();
        let g = open(img.to_str().unwrap(), VmFile::Disk, true).unwrap();
        assert_eq!(
            lock_disk(&g, "d.img").unwrap_err(),
            "disk d.img is in use by another vm or program (locked)"
        );
        drop(f);
        lock_disk(&g, "d.img").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
