//! `vmctl create` (main.c `ctl_create`/`ctl_convert`, vioraw.c
//! `virtio_raw_create`): disk images, made here without vmd.
//!
//! Raw images are sparse files; `-i` copies a raw image into a new raw
//! one, skipping zero blocks.  qcow2 (as a target, a source, or a base
//! with `-b`) is not implemented yet and says so.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use vmd::config::DiskFormat;

use crate::args::{parse_disktype, CreateArgs};
use crate::fail::{warnx, Fail};

const MIB: u64 = 1024 * 1024;
/// ctl_convert's copy buffer.
const BUFLEN: usize = 64 * 1024;

/// The error for what needs qcow2 support.
fn qcow2_missing(path: &Path) -> Fail {
    Fail::errx(format!(
        "{}: qcow2 disk images are not supported yet (raw only)",
        path.display()
    ))
}

/// Runs `vmctl create`; the exit status.
pub fn run(c: &CreateArgs, verbose: bool, err: &mut dyn Write) -> Result<i32, Fail> {
    if let Some(input) = &c.input {
        if c.base.is_some() {
            return Err(Fail::errx("conflicting -b and -i arguments"));
        }
        return convert(input, c, verbose, err);
    }
    if c.base.is_some() && c.format != DiskFormat::Qcow2 {
        return Err(Fail::errx("base images require qcow2 disk format"));
    }
    if c.size == 0 && c.base.is_none() {
        return Err(Fail::CmdUsage {
            cmd: crate::args::lookup("create")?,
            before: Some(format!(
                "could not create {}: missing size argument",
                c.disk.display()
            )),
        });
    }
    if c.format == DiskFormat::Qcow2 {
        return Err(qcow2_missing(&c.disk));
    }
    create_raw(&c.disk, c.size).map_err(|e| Fail::io("create imagefile operation failed", &e))?;
    warnx(err, "raw imagefile created");
    Ok(0)
}

/// `virtio_raw_create`: a new sparse file of `size` bytes, mode 0600;
/// never overwrites.
pub fn create_raw(path: &Path, size: u64) -> std::io::Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    if let Err(e) = f.set_len(size) {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// `ctl_convert` for raw images.
fn convert(input: &Path, c: &CreateArgs, verbose: bool, err: &mut dyn Write) -> Result<i32, Fail> {
    let (src_format, src_path) = parse_disktype(input.as_os_str());
    if src_format == DiskFormat::Qcow2 {
        return Err(qcow2_missing(&src_path));
    }
    if c.format == DiskFormat::Qcow2 {
        return Err(qcow2_missing(&c.disk));
    }
    let fail = Fail::errx;
    let src = File::open(&src_path).map_err(|_| fail("failed to open source image file"))?;
    let src_size = src
        .metadata()
        .map_err(|_| fail("failed to open source image file"))?
        .len();
    let want = if c.size == 0 { src_size } else { c.size };
    if want < src_size {
        return Err(fail("size cannot be smaller than input disk size"));
    }
    let dst_size = want.div_ceil(MIB) * MIB;
    create_raw(&c.disk, dst_size).map_err(|_| fail("failed to create destination image file"))?;
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&c.disk)
        .map_err(|_| fail("failed to open destination image file"))?;

    let mut buf = vec![0u8; BUFLEN];
    let mut off = 0u64;
    while off < dst_size {
        let len = if off < src_size {
            let len = (src_size - off).min(BUFLEN as u64) as usize;
            src.read_exact_at(&mut buf[..len], off)
                .map_err(|_| fail("failed to read from source"))?;
            len
        } else {
            0
        };
        if len < BUFLEN {
            if verbose {
                let _ = writeln!(
                    err,
                    "raw: padding {} zero bytes at offset {}",
                    BUFLEN - len,
                    off + len as u64
                );
            }
            buf[len..].fill(0);
        }
        // Zero blocks stay holes in the sparse destination.
        if buf.iter().any(|&b| b != 0) {
            if verbose {
                let _ = writeln!(
                    err,
                    "raw: writing {BUFLEN} of {dst_size} bytes at offset {off}"
                );
            }
            dst.write_all_at(&buf, off)
                .map_err(|_| fail("failed to write to destination"))?;
        }
        off += BUFLEN as u64;
    }
    if want < dst_size {
        warnx(
            err,
            format!("destination size rounded to {} megabytes", dst_size / MIB),
        );
    }
    warnx(err, "raw imagefile created");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::Dir;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn args(disk: &str, size: u64) -> CreateArgs {
        let (format, disk) = parse_disktype(disk.as_ref());
        CreateArgs {
            disk,
            format,
            base: None,
            input: None,
            size,
        }
    }

    fn run_create(c: &CreateArgs) -> (Result<i32, Fail>, String) {
        let mut e = Vec::new();
        let r = run(c, false, &mut e);
        (r, String::from_utf8(e).unwrap())
    }

    #[test]
    fn create_raw_sparse_image() {
        let d = Dir::new("create-raw");
        let p = d.path("disk.img");
        let (r, w) = run_create(&args(&p, 4096 * MIB));
        assert_eq!(r, Ok(0));
        assert_eq!(w, "vmctl: raw imagefile created\n");
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 4096 * MIB);
        assert!(m.blocks() * 512 < MIB, "the image is sparse");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);

        // Never overwrites.
        let (r, w) = run_create(&args(&p, MIB));
        assert_eq!(
            r,
            Err(Fail::errx("create imagefile operation failed: File exists"))
        );
        assert!(w.is_empty());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096 * MIB);

        // raw: prefix.
        let q = d.path("other.qcow2");
        assert_eq!(run_create(&args(&format!("raw:{q}"), MIB)).0, Ok(0));
        assert_eq!(std::fs::metadata(&q).unwrap().len(), MIB);
    }

    #[test]
    fn create_refusals() {
        let d = Dir::new("create-refuse");
        let p = d.path("a.img");
        let (r, _) = run_create(&args(&p, 0));
        assert_eq!(
            r,
            Err(Fail::CmdUsage {
                cmd: crate::args::lookup("create").unwrap(),
                before: Some(format!("could not create {p}: missing size argument")),
            })
        );
        let mut c = args(&p, MIB);
        c.base = Some("base.qcow2".into());
        assert_eq!(
            run_create(&c).0,
            Err(Fail::errx("base images require qcow2 disk format"))
        );
        c.input = Some("in.img".into());
        assert_eq!(
            run_create(&c).0,
            Err(Fail::errx("conflicting -b and -i arguments"))
        );
        let q = d.path("a.qcow2");
        assert_eq!(run_create(&args(&q, MIB)).0, Err(qcow2_missing(q.as_ref())));
        let mut c = args(&q, 0);
        c.base = Some(p.clone().into());
        assert_eq!(run_create(&c).0, Err(qcow2_missing(q.as_ref())));
        assert!(!std::path::Path::new(&q).exists());
        let missing = d.path("nodir/x.img");
        assert_eq!(
            run_create(&args(&missing, MIB)).0,
            Err(Fail::errx(
                "create imagefile operation failed: No such file or directory"
            ))
        );
    }

    #[test]
    fn create_copy_of_raw_image() {
        let d = Dir::new("create-convert");
        let src = d.path("src.img");
        let mut data = vec![0u8; 3 * BUFLEN + 100];
        data[5] = 1;
        data[3 * BUFLEN + 99] = 0xaa;
        std::fs::write(&src, &data).unwrap();

        let dst = d.path("dst.img");
        let mut c = args(&dst, 0);
        c.input = Some(src.clone().into());
        let (r, w) = run_create(&c);
        assert_eq!(r, Ok(0));
        assert_eq!(
            w,
            "vmctl: destination size rounded to 1 megabytes\nvmctl: raw imagefile created\n"
        );
        let out = std::fs::read(&dst).unwrap();
        assert_eq!(out.len() as u64, MIB);
        assert_eq!(&out[..data.len()], &data[..]);
        assert!(out[data.len()..].iter().all(|&b| b == 0));

        let mut c = args(&d.path("big.img"), 2 * MIB);
        c.input = Some(src.clone().into());
        let (r, w) = run_create(&c);
        assert_eq!((r, w.as_str()), (Ok(0), "vmctl: raw imagefile created\n"));
        assert_eq!(std::fs::metadata(d.path("big.img")).unwrap().len(), 2 * MIB);

        std::fs::write(&src, vec![1u8; (MIB + 1) as usize]).unwrap();
        let mut c = args(&d.path("small.img"), MIB);
        c.input = Some(src.into());
        assert_eq!(
            run_create(&c).0,
            Err(Fail::errx("size cannot be smaller than input disk size"))
        );
        let mut c = args(&d.path("x.img"), MIB);
        c.input = Some(d.path("absent.img").into());
        assert_eq!(
            run_create(&c).0,
            Err(Fail::errx("failed to open source image file"))
        );
    }
}
