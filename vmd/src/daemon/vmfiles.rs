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

/// The largest boot image a VM of `memory` bytes may be given: none can
/// be larger than the guest's memory, and a kernel (inflated, when it is
/// gzip'd) may be 512 MiB at most.
pub fn max_boot_image(memory: u64) -> u64 {
    memory.min(crate::vm::boot::elf::MAX_INFLATED)
}

/// Why a boot image is refused before it is read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BootImageError {
    #[error("boot image is {0}, not a regular file")]
    Type(&'static str),
    #[error(
        "boot image of {size} bytes is larger than the {limit} bytes a vm of this memory can load"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error("boot image of {0} bytes is not a BIOS or kernel image")]
    TooSmall(u64),
    #[error("boot image: {0}")]
    Stat(String),
}

impl BootImageError {
    pub fn errno(&self) -> i32 {
        match self {
            BootImageError::Type(_) | BootImageError::Stat(_) => libc::EINVAL,
            BootImageError::TooLarge { .. } => libc::EFBIG,
            BootImageError::TooSmall(_) => libc::ENOEXEC,
        }
    }
}

/// fstat of a boot image (the client's descriptor or vmd's own), before
/// anything reads it: a regular file of at most `limit` bytes; its size.
pub fn check_boot_image(f: &File, limit: u64) -> Result<u64, BootImageError> {
    let m = f
        .metadata()
        .map_err(|e| BootImageError::Stat(e.to_string()))?;
    if !m.file_type().is_file() {
        return Err(BootImageError::Type(kind_of(&m.file_type())));
    }
    if m.len() > limit {
        return Err(BootImageError::TooLarge {
            size: m.len(),
            limit,
        });
    }
    // Smaller than the least a BIOS holds (an ELF or gzip header is
    // larger still): no image at all, whatever size limit it is under.
    if m.len() < crate::vm::boot::bios::MIN_SIZE as u64 {
        return Err(BootImageError::TooSmall(m.len()));
    }
    Ok(m.len())
}

/// Reads a boot image checked as [`check_boot_image`] does, from its
/// start, and never more than `limit` bytes (a file may grow meanwhile).
pub fn read_boot_image(f: &mut File, limit: u64) -> Result<Vec<u8>, BootImageError> {
    use std::io::{Read, Seek, SeekFrom};
    let size = check_boot_image(f, limit)?;
    let io = |e: std::io::Error| BootImageError::Stat(e.to_string());
    // The parent keeps its own reference for restarts: start over.
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut v = Vec::with_capacity(size as usize);
    f.take(limit + 1).read_to_end(&mut v).map_err(io)?;
    if v.len() as u64 > limit {
        return Err(BootImageError::TooLarge {
            size: v.len() as u64,
            limit,
        });
    }
    Ok(v)
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

    #[test]
    fn daemon_vmfiles_boot_image_type_and_size() {
        let dir = std::env::temp_dir().join(format!("vmd-bootimg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(max_boot_image(64 << 20), 64 << 20);
        assert_eq!(max_boot_image(8 << 30), 512 << 20);
        // /dev/zero as a descriptor: refused without a read.
        let mut zero = File::open("/dev/zero").unwrap();
        let e = read_boot_image(&mut zero, 1 << 20).unwrap_err();
        assert_eq!(e, BootImageError::Type("a character device"));
        assert_eq!(e.errno(), libc::EINVAL);
        // A 3 GiB sparse file: refused on its size alone.
        let big = dir.join("big");
        let f = File::create(&big).unwrap();
        f.set_len(3 << 30).unwrap();
        let mut f = File::open(&big).unwrap();
        let e = read_boot_image(&mut f, max_boot_image(8 << 30)).unwrap_err();
        assert_eq!(
            e,
            BootImageError::TooLarge {
                size: 3 << 30,
                limit: 512 << 20
            }
        );
        assert_eq!(e.errno(), libc::EFBIG);
        // One that fits is read whole, from its start.
        let small = dir.join("small");
        std::fs::write(&small, b"0123456789abcdef").unwrap();
        let mut f = File::open(&small).unwrap();
        std::io::Read::read_exact(&mut f, &mut [0u8; 4]).unwrap();
        assert_eq!(read_boot_image(&mut f, 16).unwrap(), b"0123456789abcdef");
        assert!(matches!(
            read_boot_image(&mut f, 15),
            Err(BootImageError::TooLarge {
                size: 16,
                limit: 15
            })
        ));
        // Nine bytes are no image at all, not one that does not fit.
        std::fs::write(&small, b"012345678").unwrap();
        let e = read_boot_image(&mut File::open(&small).unwrap(), 1 << 20).unwrap_err();
        assert_eq!(
            (e.to_string(), e.errno()),
            (
                "boot image of 9 bytes is not a BIOS or kernel image".to_string(),
                libc::ENOEXEC
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
