//! A VM's disks on their way from the parent to vioblk (config.c's part
//! of `config_setvm`, vm.c's and vioblk's receiving ends).
//!
//! The parent opens each disk image, read-write with vmd's exclusive lock
//! (or read-only when it may not write it), and for qcow2 each backing
//! file read-only, following the names in the headers relative to each
//! image's directory (vmd-disk's `open_chain`, at most
//! [`vmd_disk::MAX_CHAIN`] files).  Every file travels on as its own
//! `START_VM_DISK` (disk index, position in the chain) to the vmm
//! process and from there to the VM process, which builds the image from
//! the descriptors alone ([`images`]): it never opens a path.
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use vmd_disk::{ChainFile, DiskError, DiskImage, Format};
use vmd_proto::config::DiskFormat;
use vmd_proto::msg::{DiskFd, VmDisk, VMD_DISK_INVALID, VMD_DISK_MISSING};

use super::vmfiles::{self, VmFile};

/// vm.conf's format, or the parser's probe.
pub fn format_of(f: DiskFormat) -> Format {
    match f {
        DiskFormat::Raw => Format::Raw,
        DiskFormat::Qcow2 => Format::Qcow2,
    }
}

/// Why the parent could not open a disk.
#[derive(Debug, thiserror::Error)]
pub enum OpenDiskError {
    #[error("{0}")]
    File(#[from] vmfiles::OpenError),
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    Image(#[from] DiskError),
}

impl OpenDiskError {
    /// What `config_setvm` answers: EBUSY for a disk another VM holds,
    /// VMD_DISK_MISSING for a file that cannot be opened or is no disk
    /// (the image or a backing file), VMD_DISK_INVALID for an image
    /// vioblk cannot serve.
    pub fn errno(&self) -> i32 {
        match self {
            OpenDiskError::Locked(_) => libc::EBUSY,
            OpenDiskError::File(_) | OpenDiskError::Image(DiskError::MissingBacking { .. }) => {
                VMD_DISK_MISSING
            }
            OpenDiskError::Image(_) => VMD_DISK_INVALID,
        }
    }
}

/// The parent's half for one disk: the image and its backing files, top
/// first, each opened without blocking and only if it is a regular file
/// or a block device ([`vmfiles::open`]).  The image read-write and
/// locked, or read-only when it cannot be opened for writing, as vmd
/// falls back; backing files read-only, found by the names in the qcow2
/// headers relative to each image's directory, at most
/// [`vmd_disk::MAX_CHAIN`] files.
pub fn open(d: &VmDisk) -> Result<Vec<ChainFile>, OpenDiskError> {
    let (file, writable) = match vmfiles::open(&d.path, VmFile::Disk, true) {
        Ok(f) => (f, true),
        Err(e @ vmfiles::OpenError::Type { .. }) => return Err(e.into()),
        Err(_) => (vmfiles::open(&d.path, VmFile::Disk, false)?, false),
    };
    if writable {
        vmfiles::lock_disk(&file, &d.path).map_err(OpenDiskError::Locked)?;
    }
    let mut chain = vec![ChainFile {
        path: d.path.clone(),
        file,
        format: format_of(d.format),
    }];
    loop {
        let top = chain.last().expect("chain is never empty");
        if top.format != Format::Qcow2 {
            return Ok(chain);
        }
        let Some(b) = vmd_disk::qcow2::backing_file(&top.file, &top.path)? else {
            return Ok(chain);
        };
        if chain.len() == vmd_disk::MAX_CHAIN {
            return Err(DiskError::ChainTooLong {
                path: d.path.clone(),
            }
            .into());
        }
        let bpath = b.path.to_string_lossy().into_owned();
        let file = match vmfiles::open(&bpath, VmFile::Disk, false) {
            Ok(f) => f,
            Err(vmfiles::OpenError::Open { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(DiskError::MissingBacking {
                    path: top.path.clone(),
                    name: b.name,
                }
                .into())
            }
            Err(e) => return Err(e.into()),
        };
        let format = match b.format {
            Some(f) => f,
            None => vmd_disk::probe(&file, &bpath)?,
        };
        chain.push(ChainFile {
            path: bpath,
            file,
            format,
        });
    }
}

/// Why the VM process could not build a disk from what it received.
#[derive(Debug, thiserror::Error)]
pub enum DiskFdError {
    #[error("disk {index}: no descriptor for file {base} of its chain")]
    Missing { index: usize, base: usize },
    #[error("disk {index}: {n} files in its chain, more than {max}", max = vmd_disk::MAX_CHAIN)]
    TooMany { index: usize, n: usize },
    #[error("descriptor for disk {index}, which the vm does not have")]
    NoSuchDisk { index: u32 },
    #[error("disk {index}: {source}")]
    Fcntl { index: usize, source: nix::Error },
    #[error("{0}")]
    Image(#[from] DiskError),
}

/// Collects `START_VM_DISK` descriptors by disk and chain position.
#[derive(Default)]
pub struct Received {
    fds: BTreeMap<(u32, u32), OwnedFd>,
}

impl Received {
    pub fn add(&mut self, d: DiskFd, fd: OwnedFd) {
        if self.fds.insert((d.index, d.base), fd).is_some() {
            log::warn!("disk {}: file {} received twice", d.index, d.base);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Every descriptor with its position, in the order they go on.
    pub fn into_vec(self) -> Vec<(DiskFd, OwnedFd)> {
        self.fds
            .into_iter()
            .map(|((index, base), fd)| (DiskFd { index, base }, fd))
            .collect()
    }

    /// The chains as [`ChainFile`]s, one per disk in `disks` order, top
    /// first; whether each top was opened for writing.  The top's format
    /// is the configured one, each backing file's is probed (qcow2 or
    /// raw).
    pub fn chains(self, disks: &[VmDisk]) -> Result<Vec<(Vec<ChainFile>, bool)>, DiskFdError> {
        let mut per: Vec<Vec<(u32, OwnedFd)>> = disks.iter().map(|_| Vec::new()).collect();
        for ((index, base), fd) in self.fds {
            per.get_mut(index as usize)
                .ok_or(DiskFdError::NoSuchDisk { index })?
                .push((base, fd));
        }
        let mut out = Vec::new();
        for (index, (d, files)) in disks.iter().zip(per).enumerate() {
            if files.len() > vmd_disk::MAX_CHAIN {
                return Err(DiskFdError::TooMany {
                    index,
                    n: files.len(),
                });
            }
            let mut chain = Vec::new();
            let mut writable = false;
            for (i, (base, fd)) in files.into_iter().enumerate() {
                if base as usize != i {
                    return Err(DiskFdError::Missing { index, base: i });
                }
                let file = File::from(fd);
                let (path, format) = if i == 0 {
                    let fl = fcntl(&file, FcntlArg::F_GETFL)
                        .map_err(|source| DiskFdError::Fcntl { index, source })?;
                    writable = OFlag::from_bits_truncate(fl) & OFlag::O_ACCMODE == OFlag::O_RDWR;
                    (d.path.clone(), format_of(d.format))
                } else {
                    let path = format!("{} (backing file {i})", d.path);
                    let format = vmd_disk::probe(&file, &path)?;
                    (path, format)
                };
                chain.push(ChainFile { path, file, format });
            }
            if chain.is_empty() {
                return Err(DiskFdError::Missing { index, base: 0 });
            }
            out.push((chain, writable));
        }
        Ok(out)
    }

    /// The VM's disks as images, in `disks` order.
    pub fn images(self, disks: &[VmDisk]) -> Result<Vec<Box<dyn DiskImage>>, DiskFdError> {
        self.chains(disks)?
            .into_iter()
            .map(|(chain, w)| Ok(vmd_disk::open_files(chain, w)?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vmd-disks-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A raw base with a pattern, a qcow2 over it and one over that, the
    /// backing names relative: the parent opens three files, the VM side
    /// reads the pattern through the chain and writes only the top.
    #[test]
    fn daemon_disks_chain_travels_as_descriptors() {
        let d = dir("chain");
        let base = d.join("base.raw");
        let mut data = vec![0u8; 1 << 20];
        data[512..517].copy_from_slice(b"hello");
        std::fs::write(&base, &data).unwrap();
        let mid = d.join("mid.qcow2");
        let top = d.join("top.qcow2");
        let create = |path: &std::path::Path, backing: &str| {
            let f = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .unwrap();
            vmd_disk::qcow2::create(&f, path.to_str().unwrap(), 1 << 20, Some(backing)).unwrap();
        };
        create(&mid, "base.raw");
        create(&top, "mid.qcow2");
        let vd = VmDisk {
            path: top.to_str().unwrap().to_string(),
            format: DiskFormat::Qcow2,
            bases: 0,
        };
        let chain = open(&vd).unwrap();
        assert_eq!(chain.len(), 3);
        // Locked: a second VM cannot have it.
        let e = open(&vd).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY, "{e}");
        let mut got = Received::default();
        for (i, c) in chain.into_iter().enumerate().rev() {
            got.add(
                DiskFd {
                    index: 0,
                    base: i as u32,
                },
                OwnedFd::from(c.file),
            );
        }
        let mut images = got.images(std::slice::from_ref(&vd)).unwrap();
        let img = &mut images[0];
        assert!(!img.read_only());
        let mut buf = [0u8; 5];
        img.read_at(&mut buf, 512).unwrap();
        assert_eq!(&buf, b"hello");
        img.write_at(b"world", 512).unwrap();
        img.flush().unwrap();
        drop(images);
        assert_eq!(&std::fs::read(&base).unwrap()[512..517], b"hello");
        let mut again = vmd_disk::open(top.to_str().unwrap(), None, false).unwrap();
        again.read_at(&mut buf, 512).unwrap();
        assert_eq!(&buf, b"world");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A disk the parent may not write is opened read-only, and the VM
    /// side sees a read-only image; a gap in a chain is an error.
    #[test]
    fn daemon_disks_read_only_and_gaps() {
        let d = dir("ro");
        let p = d.join("ro.raw");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        let vd = VmDisk {
            path: p.to_str().unwrap().to_string(),
            format: DiskFormat::Raw,
            bases: 0,
        };
        // Root writes anything: only check the fallback when it applies.
        if !nix::unistd::geteuid().is_root() {
            let chain = open(&vd).unwrap();
            let mut got = Received::default();
            for c in chain {
                got.add(DiskFd { index: 0, base: 0 }, OwnedFd::from(c.file));
            }
            let images = got.images(std::slice::from_ref(&vd)).unwrap();
            assert!(images[0].read_only());
        }
        let f = File::open(&p).unwrap();
        let mut got = Received::default();
        got.add(DiskFd { index: 0, base: 1 }, OwnedFd::from(f));
        let e = got.images(std::slice::from_ref(&vd)).err().unwrap();
        assert_eq!(
            e.to_string(),
            "disk 0: no descriptor for file 0 of its chain"
        );
        let f = File::open(&p).unwrap();
        let mut got = Received::default();
        got.add(DiskFd { index: 3, base: 0 }, OwnedFd::from(f));
        assert!(matches!(
            got.images(std::slice::from_ref(&vd)),
            Err(DiskFdError::NoSuchDisk { index: 3 })
        ));
        // A read-only descriptor gives a read-only image.
        let f = File::open(&p).unwrap();
        let mut got = Received::default();
        got.add(DiskFd { index: 0, base: 0 }, OwnedFd::from(f));
        let images = got.images(std::slice::from_ref(&vd)).unwrap();
        assert!(images[0].read_only());
        let _ = std::fs::remove_dir_all(&d);
    }
}
