//! Raw images (vioraw.c): the disk is the file, usually sparse.

use std::fs::File;

use crate::{check_range, read_full, sync, write_full, DiskError, DiskImage};

/// A raw image: pread/pwrite at the guest's offsets.
#[derive(Debug)]
pub struct Raw {
    file: File,
    path: String,
    size: u64,
    writable: bool,
}

impl Raw {
    /// The disk is the file's size when opened.
    pub fn open(file: File, path: &str, writable: bool) -> Result<Raw, DiskError> {
        let size = file
            .metadata()
            .map_err(|e| DiskError::io(path, "stat", 0, e))?
            .len();
        Ok(Raw {
            file,
            path: path.to_string(),
            size,
            writable,
        })
    }

    /// `virtio_raw_create`: sizes a new (empty) file to `size` bytes,
    /// which leaves it sparse.
    pub fn create(file: &File, path: &str, size: u64) -> Result<(), DiskError> {
        file.set_len(size)
            .map_err(|e| DiskError::io(path, "truncate", size, e))
    }
}

impl DiskImage for Raw {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        check_range(&self.path, offset, buf.len(), self.size)?;
        read_full(&self.file, &self.path, buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        if !self.writable {
            return Err(DiskError::ReadOnly {
                path: self.path.clone(),
            });
        }
        check_range(&self.path, offset, buf.len(), self.size)?;
        write_full(&self.file, &self.path, buf, offset)
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        if self.writable {
            sync(&self.file, &self.path)?;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        !self.writable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vmd-disk-raw-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    #[test]
    fn raw_reads_writes_and_refuses() {
        let p = tmp("rw");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        Raw::create(&f, "t", 1 << 20).unwrap();
        let mut d = Raw::open(f, "t", true).unwrap();
        assert_eq!(d.size(), 1 << 20);
        d.write_at(&[7u8; 1000], 4000).unwrap();
        d.flush().unwrap();
        let mut b = vec![1u8; 2000];
        d.read_at(&mut b, 3500).unwrap();
        assert!(b[..500].iter().all(|&x| x == 0));
        assert!(b[500..1500].iter().all(|&x| x == 7));
        assert!(b[1500..].iter().all(|&x| x == 0));
        let e = d.write_at(&[0; 2], (1 << 20) - 1).unwrap_err();
        assert!(
            matches!(e, DiskError::OutOfRange { offset, len: 2, .. } if offset == (1 << 20) - 1)
        );
        assert!(d.read_at(&mut [0; 1], u64::MAX).is_err());

        let mut r = Raw::open(File::open(&p).unwrap(), "t", false).unwrap();
        assert!(r.read_only());
        let e = r.write_at(&[1], 0).unwrap_err();
        assert!(matches!(e, DiskError::ReadOnly { .. }));
        assert_eq!(e.to_string(), "t: read-only disk");
        r.read_at(&mut b[..4], 4000).unwrap();
        assert_eq!(&b[..4], &[7; 4]);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn lock_refuses_a_second_writer() {
        let p = tmp("lock");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let a = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let b = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        crate::lock(&a, "a.img").unwrap();
        let e = crate::lock(&b, "a.img").unwrap_err();
        assert_eq!(
            e.to_string(),
            "a.img: disk image is locked by another process"
        );
        drop(a);
        crate::lock(&b, "a.img").unwrap();
        std::fs::remove_file(&p).unwrap();
    }
}
