//! vmd's disk images: raw and qcow2 behind one [`DiskImage`] trait.
//!
//! vioblk (a device process with one thread per disk) reads and writes
//! the guest's disk through a `Box<dyn DiskImage>`; `vmctl create` makes
//! and converts images with the same code.  Nothing here knows about
//! virtio or the guest: it is file I/O only.
//!
//! As in vmd, the *parent* opens the files: the image (read-write and
//! locked, or read-only) and up to three backing files read-only, found by
//! reading each qcow2 header ([`qcow2::backing_file`]).  The device side
//! only gets the opened [`File`]s ([`ChainFile`]) and builds the image
//! from them ([`open_files`]); [`open`] does both for a caller that is
//! allowed to open paths itself (vmctl, tests).
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub mod qcow2;
pub mod raw;

#[cfg(test)]
mod property;
#[cfg(test)]
mod testutil;

pub use qcow2::Qcow2;
pub use raw::Raw;

/// `VM_MAX_BASE_PER_DISK`: the image and its backing files, at most.
pub const MAX_CHAIN: usize = 4;

/// qcow2's magic, `QFI\xfb`.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// A guest's disk.
///
/// The methods take `&mut self`: a disk belongs to one vioblk thread, so
/// there is nothing to lock, and qcow2 keeps its L2 cache and scratch
/// buffers without interior mutability.  A backing file belongs to the
/// image above it.
pub trait DiskImage: Send {
    /// Reads `buf.len()` bytes at `offset`; all of them or an error.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError>;

    /// Writes all of `buf` at `offset`.  A read-only image answers
    /// [`DiskError::ReadOnly`].
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError>;

    /// Makes every completed write durable (virtio's FLUSH).
    ///
    /// A completed [`write_at`](DiskImage::write_at) is seen by reads at
    /// once, but only a flush makes it survive a crash: the image behaves
    /// as a disk with a write cache (qcow2 links newly allocated clusters
    /// into its tables here).  A device that does not offer
    /// VIRTIO_BLK_F_FLUSH to its guest must flush after each write.
    fn flush(&mut self) -> Result<(), DiskError>;

    /// The guest-visible size in bytes.
    fn size(&self) -> u64;

    /// Whether writes are refused.
    fn read_only(&self) -> bool;
}

/// What went wrong with an image; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {op} at offset {offset}: {source}")]
    Io {
        path: String,
        op: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("{path}: read-only disk")]
    ReadOnly { path: String },
    #[error("{path}: {len} bytes at offset {offset} are beyond the disk size {size}")]
    OutOfRange {
        path: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("{path}: not a qcow2 image")]
    NotQcow2 { path: String },
    #[error("{path}: invalid qcow2 header: {field} {value:#x}")]
    BadHeader {
        path: String,
        field: &'static str,
        value: u64,
    },
    #[error("{path}: unsupported qcow2 {what} {value:#x}")]
    Unsupported {
        path: String,
        what: &'static str,
        value: u64,
    },
    #[error("{path}: qcow2 image is marked {state}; repair it with qemu-img check -r all")]
    NeedsRepair { path: String, state: &'static str },
    #[error("{path}: corrupt qcow2 image: {what} {value:#x}")]
    Corrupt {
        path: String,
        what: &'static str,
        value: u64,
    },
    #[error("{path}: compressed cluster at {offset:#x} does not inflate")]
    Inflate { path: String, offset: u64 },
    #[error("{path}: image is full: {what}")]
    Full { path: String, what: &'static str },
    #[error("{path}: disk image is locked by another process")]
    Locked { path: String },
    #[error("{path}: backing file {name} is missing")]
    MissingBacking { path: String, name: String },
    #[error("{path}: more than {max} files in the backing chain", max = MAX_CHAIN)]
    ChainTooLong { path: String },
    #[error("{path}: earlier metadata update failed; reopen the disk")]
    Poisoned { path: String },
}

impl DiskError {
    pub(crate) fn io(path: &str, op: &'static str, offset: u64, source: io::Error) -> Self {
        DiskError::Io {
            path: path.to_string(),
            op,
            offset,
            source,
        }
    }
}

/// An image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

/// `VMDF_AUTO`: qcow2 when the file starts with `QFI\xfb`, raw otherwise.
pub fn probe(file: &File, path: &str) -> Result<Format, DiskError> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read_at(&mut magic[got..], got as u64) {
            Ok(0) => return Ok(Format::Raw),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DiskError::io(path, "read", 0, e)),
        }
    }
    Ok(if magic == QCOW2_MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// Takes vmd's exclusive lock on an image opened read-write
/// (`flock(LOCK_EX|LOCK_NB)`; vmd opens with `O_EXLOCK`, the same lock on
/// OpenBSD), so that two VMs cannot write one disk.  The lock goes with
/// the open file: it is released when the last descriptor closes.
pub fn lock(file: &File, path: &str) -> Result<(), DiskError> {
    use rustix::fs::{flock, FlockOperation};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        if e == rustix::io::Errno::WOULDBLOCK {
            DiskError::Locked {
                path: path.to_string(),
            }
        } else {
            DiskError::io(path, "lock", 0, e.into())
        }
    })
}

/// One opened file of a disk's chain, as the parent passes it on.
#[derive(Debug)]
pub struct ChainFile {
    /// For messages only: the device side never opens it.
    pub path: String,
    pub file: File,
    pub format: Format,
}

/// The parent's half: opens `path` (read-write and locked if `writable`,
/// else read-only) and, for qcow2, each backing file read-only, following
/// the names in the headers relative to each image's directory.  At most
/// [`MAX_CHAIN`] files.  `format` is the configured format; `None` probes.
pub fn open_chain(
    path: &str,
    format: Option<Format>,
    writable: bool,
) -> Result<Vec<ChainFile>, DiskError> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|e| DiskError::io(path, "open", 0, e))?;
    if writable {
        lock(&file, path)?;
    }
    let format = match format {
        Some(f) => f,
        None => probe(&file, path)?,
    };
    let mut chain = vec![ChainFile {
        path: path.to_string(),
        file,
        format,
    }];
    loop {
        let top = chain.last().expect("chain is never empty");
        if top.format != Format::Qcow2 {
            return Ok(chain);
        }
        let Some(b) = qcow2::backing_file(&top.file, &top.path)? else {
            return Ok(chain);
        };
        if chain.len() == MAX_CHAIN {
            return Err(DiskError::ChainTooLong {
                path: path.to_string(),
            });
        }
        let bpath = b.path.to_string_lossy().into_owned();
        let file = File::open(&b.path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DiskError::MissingBacking {
                path: top.path.clone(),
                name: bpath.clone(),
            },
            _ => DiskError::io(&bpath, "open", 0, e),
        })?;
        let format = match b.format {
            Some(f) => f,
            None => probe(&file, &bpath)?,
        };
        chain.push(ChainFile {
            path: bpath,
            file,
            format,
        });
    }
}

/// The device's half: the image from the files [`open_chain`] opened,
/// top first.  Only the top is ever written.
pub fn open_files(chain: Vec<ChainFile>, writable: bool) -> Result<Box<dyn DiskImage>, DiskError> {
    if chain.len() > MAX_CHAIN {
        return Err(DiskError::ChainTooLong {
            path: chain[0].path.clone(),
        });
    }
    let mut below: Option<Box<dyn DiskImage>> = None;
    let n = chain.len();
    for (i, c) in chain.into_iter().enumerate().rev() {
        let w = writable && i == 0;
        let has_backing = i + 1 < n;
        below = Some(match c.format {
            Format::Raw => {
                if has_backing {
                    // Only qcow2 names a backing file.
                    return Err(DiskError::NotQcow2 { path: c.path });
                }
                Box::new(Raw::open(c.file, &c.path, w)?)
            }
            // Qcow2::open refuses a missing backing image by the name in
            // its header.
            Format::Qcow2 => Box::new(Qcow2::open(c.file, &c.path, below.take(), w)?),
        });
    }
    below.ok_or_else(|| DiskError::MissingBacking {
        path: String::new(),
        name: "(no files)".to_string(),
    })
}

/// Opens an image and its backing chain by path: [`open_chain`] then
/// [`open_files`].
pub fn open(
    path: &str,
    format: Option<Format>,
    writable: bool,
) -> Result<Box<dyn DiskImage>, DiskError> {
    open_files(open_chain(path, format, writable)?, writable)
}

/// `offset..offset + len` inside a disk of `size` bytes, or the error.
pub(crate) fn check_range(path: &str, offset: u64, len: usize, size: u64) -> Result<(), DiskError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DiskError::OutOfRange {
            path: path.to_string(),
            offset,
            len: len as u64,
            size,
        }),
    }
}

/// pread until `buf` is full; bytes past the end of the file read as
/// zeros (a sparse or truncated file).
pub(crate) fn read_full(
    file: &File,
    path: &str,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), DiskError> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DiskError::io(path, "read", offset + done as u64, e)),
        }
    }
    Ok(())
}

pub(crate) fn write_full(
    file: &File,
    path: &str,
    buf: &[u8],
    offset: u64,
) -> Result<(), DiskError> {
    file.write_all_at(buf, offset)
        .map_err(|e| DiskError::io(path, "write", offset, e))
}

pub(crate) fn sync(file: &File, path: &str) -> Result<(), DiskError> {
    file.sync_data()
        .map_err(|e| DiskError::io(path, "fdatasync", 0, e))
}

/// The directory-relative path a backing name means: absolute names as
/// they are, others relative to the directory of `image`.
pub fn resolve_backing(image: &str, name: &str) -> std::path::PathBuf {
    let n = Path::new(name);
    if n.is_absolute() {
        return n.to_path_buf();
    }
    match Path::new(image).parent() {
        Some(dir) => dir.join(n),
        None => n.to_path_buf(),
    }
}
