//! `vmctl create` (main.c `ctl_create`/`ctl_convert`, vioraw.c
//! `virtio_raw_create`, vioqcow2.c `virtio_qcow2_create`): disk images,
//! made here without vmd, with vmd-disk.
//!
//! Raw images are sparse files.  qcow2 images are laid out as vmd makes
//! them (v3, 64 KiB clusters, 16-bit refcounts), optionally over a qcow2
//! base (`-b`).  `-i` copies an image (raw or qcow2, read through its
//! backing chain, compressed clusters included) into a new raw or qcow2
//! image, skipping zero blocks.  The new file is created with O_EXCL and
//! mode 0600 and removed again if anything fails after that.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vmd_disk::{DiskError, DiskImage, Format};
use vmd_proto::config::DiskFormat;

use crate::args::{parse_disktype, CreateArgs};
use crate::fail::{warnx, Fail};

const MIB: u64 = 1024 * 1024;
/// ctl_convert's copy buffer.
const BUFLEN: usize = 64 * 1024;

fn disk_format(f: DiskFormat) -> Format {
    match f {
        DiskFormat::Qcow2 => Format::Qcow2,
        _ => Format::Raw,
    }
}

fn format_name(f: DiskFormat) -> &'static str {
    match f {
        DiskFormat::Qcow2 => "qcow2",
        _ => "raw",
    }
}

/// err(3)'s text for what vmd-disk reports: strerror for a system call's
/// failure, vmd-disk's message otherwise.
fn disk_fail(msg: &str, e: &DiskError) -> Fail {
    match e {
        DiskError::Io { source, .. } => Fail::io(msg, source),
        DiskError::Full { .. } => Fail::err(msg, libc::EFBIG),
        other => Fail::errx(format!("{msg}: {other}")),
    }
}

/// A path vmd-disk takes as text (it names files in its errors and
/// writes a base's name into the qcow2 header): refused rather than
/// mangled when it is not UTF-8.
fn text(p: &Path) -> Result<&str, Fail> {
    p.to_str().ok_or_else(|| {
        Fail::errx(format!(
            "{}: file names of disk images must be UTF-8",
            p.display()
        ))
    })
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
    let msg = "create imagefile operation failed";
    if c.format == DiskFormat::Qcow2 {
        let disk = text(&c.disk)?;
        let base = c.base.as_deref().map(text).transpose()?;
        let size = match base {
            Some(base) => base_size(disk, base, c.size)?,
            None => c.size,
        };
        let f = new_image(&c.disk).map_err(|e| Fail::io(msg, &e))?;
        let r = vmd_disk::qcow2::create(&f, disk, size, base);
        finish(&c.disk, f, r).map_err(|e| disk_fail(msg, &e))?;
        warnx(err, "qcow2 imagefile created");
        return Ok(0);
    }
    create_raw(&c.disk, c.size).map_err(|e| Fail::io(msg, &e))?;
    warnx(err, "raw imagefile created");
    Ok(0)
}

/// `-b base`: the base's virtual size, which a size given with `-s` must
/// equal.  A relative base name is found, as vmd will find it, next to
/// the new image.
fn base_size(disk: &str, base: &str, size: u64) -> Result<u64, Fail> {
    // vmctl reads the base relative to its working directory; a name
    // that vmd will then look for elsewhere makes an image that does not
    // start, so the name is looked up where vmd will look.
    let path = vmd_disk::resolve_backing(disk, base);
    let unreadable = || Fail::errx("failure to read base image header");
    let f = File::open(&path).map_err(|_| unreadable())?;
    let name = path.to_string_lossy();
    let h = match vmd_disk::qcow2::Header::read(&f, &name) {
        Ok(h) => h,
        Err(DiskError::NotQcow2 { .. }) => {
            return Err(Fail::errx("base image is not a qcow2 file"))
        }
        Err(DiskError::Io { .. })
        | Err(DiskError::BadHeader {
            field: "file size", ..
        }) => return Err(unreadable()),
        Err(e) => return Err(Fail::errx(e.to_string())),
    };
    if size != 0 && size != h.size {
        return Err(Fail::errx("base size does not match requested size"));
    }
    Ok(h.size)
}

/// A new image file: O_EXCL, mode 0600.
fn new_image(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Keeps the new file if `r` is Ok, removes it otherwise.
fn finish<T>(path: &Path, f: File, r: Result<T, DiskError>) -> Result<T, DiskError> {
    if r.is_err() {
        drop(f);
        let _ = std::fs::remove_file(path);
    }
    r
}

/// `virtio_raw_create`: a new sparse file of `size` bytes, mode 0600;
/// never overwrites.
pub fn create_raw(path: &Path, size: u64) -> std::io::Result<()> {
    let f = new_image(path)?;
    if let Err(e) = f.set_len(size) {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// `ctl_convert`: copies `input` (through its backing chain) into a new
/// image of `c.format`.
fn convert(input: &Path, c: &CreateArgs, verbose: bool, err: &mut dyn Write) -> Result<i32, Fail> {
    let (src_format, src_path) = parse_disktype(input.as_os_str());
    let fail = Fail::errx;
    let disk = text(&c.disk)?;
    let mut src = vmd_disk::open(text(&src_path)?, Some(disk_format(src_format)), false).map_err(
        |e| match e {
            DiskError::Io { .. } => fail("failed to open source image file"),
            e => Fail::errx(format!("failed to open source image file: {e}")),
        },
    )?;
    let src_size = src.size();
    let want = if c.size == 0 { src_size } else { c.size };
    if want < src_size {
        return Err(fail("size cannot be smaller than input disk size"));
    }
    let dst_size = want.div_ceil(MIB) * MIB;
    let f = new_image(&c.disk).map_err(|_| fail("failed to create destination image file"))?;
    let made = match c.format {
        DiskFormat::Qcow2 => vmd_disk::qcow2::create(&f, disk, dst_size, None),
        _ => vmd_disk::Raw::create(&f, disk, dst_size),
    };
    finish(&c.disk, f, made).map_err(|_| fail("failed to create destination image file"))?;
    let copied = copy(&mut *src, src_size, c, dst_size, verbose, err);
    if copied.is_err() {
        let _ = std::fs::remove_file(&c.disk);
    }
    copied?;
    if want < dst_size {
        warnx(
            err,
            format!("destination size rounded to {} megabytes", dst_size / MIB),
        );
    }
    warnx(err, format!("{} imagefile created", format_name(c.format)));
    Ok(0)
}

fn copy(
    src: &mut dyn DiskImage,
    src_size: u64,
    c: &CreateArgs,
    dst_size: u64,
    verbose: bool,
    err: &mut dyn Write,
) -> Result<(), Fail> {
    let fail = Fail::errx;
    let name = format_name(c.format);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&c.disk)
        .map_err(|_| fail("failed to open destination image file"))?;
    let mut dst: Box<dyn DiskImage> = match c.format {
        DiskFormat::Qcow2 => {
            let mut q = vmd_disk::Qcow2::open(file, text(&c.disk)?, None, true)
                .map_err(|_| fail("failed to open destination image file"))?;
            // A new file nobody uses yet: one sync at the end will do.
            q.set_metadata_sync(false);
            Box::new(q)
        }
        _ => Box::new(
            vmd_disk::Raw::open(file, text(&c.disk)?, true)
                .map_err(|_| fail("failed to open destination image file"))?,
        ),
    };

    let mut buf = vec![0u8; BUFLEN];
    let mut off = 0u64;
    while off < dst_size {
        let len = if off < src_size {
            let len = (src_size - off).min(BUFLEN as u64) as usize;
            src.read_at(&mut buf[..len], off)
                .map_err(|e| Fail::errx(format!("failed to read from source: {e}")))?;
            len
        } else {
            0
        };
        if len < BUFLEN {
            if verbose {
                let _ = writeln!(
                    err,
                    "{name}: padding {} zero bytes at offset {}",
                    BUFLEN - len,
                    off + len as u64
                );
            }
            buf[len..].fill(0);
        }
        // Zero blocks stay holes (raw) or unallocated clusters (qcow2).
        let n = (dst_size - off).min(BUFLEN as u64) as usize;
        if buf[..n].iter().any(|&b| b != 0) {
            if verbose {
                let _ = writeln!(
                    err,
                    "{name}: writing {n} of {dst_size} bytes at offset {off}"
                );
            }
            dst.write_at(&buf[..n], off)
                .map_err(|e| Fail::errx(format!("failed to write to destination: {e}")))?;
        }
        off += BUFLEN as u64;
    }
    dst.flush()
        .map_err(|e| Fail::errx(format!("failed to write to destination: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::Dir;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn args(disk: &str, size: u64) -> CreateArgs {
        let (format, disk) = parse_disktype(std::ffi::OsStr::new(disk));
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
        // A base that is not qcow2, one that is absent, a size that is not
        // the base's: refused, and nothing is left behind.
        std::fs::write(&p, vec![0u8; MIB as usize]).unwrap();
        let mut c = args(&q, 0);
        c.base = Some((p.clone()).into());
        assert_eq!(
            run_create(&c).0,
            Err(Fail::errx("base image is not a qcow2 file"))
        );
        c.base = Some((d.path("absent.qcow2")).into());
        assert_eq!(
            run_create(&c).0,
            Err(Fail::errx("failure to read base image header"))
        );
        let base = d.path("base.qcow2");
        assert_eq!(run_create(&args(&base, 2 * MIB)).0, Ok(0));
        let mut c = args(&q, MIB);
        c.base = Some((base).into());
        assert_eq!(
            run_create(&c).0,
            Err(Fail::errx("base size does not match requested size"))
        );
        assert!(!std::path::Path::new(&q).exists());
        // Too large for qcow2's L1 table.
        assert_eq!(
            run_create(&args(&q, 1 << 62)).0,
            Err(Fail::errx(
                "create imagefile operation failed: File too large"
            ))
        );
        assert!(!std::path::Path::new(&q).exists());
        let missing = d.path("nodir/x.img");
        assert_eq!(
            run_create(&args(&missing, MIB)).0,
            Err(Fail::errx(
                "create imagefile operation failed: No such file or directory"
            ))
        );
    }

    fn read_all(path: &str) -> Vec<u8> {
        let mut img = vmd_disk::open(path, None, false).unwrap();
        let mut v = vec![0u8; img.size() as usize];
        img.read_at(&mut v, 0).unwrap();
        v
    }

    #[test]
    fn create_qcow2_image_and_overlay() {
        let d = Dir::new("create-qcow2");
        let p = d.path("disk.qcow2");
        let (r, w) = run_create(&args(&p, 100 * MIB));
        assert_eq!((r, w.as_str()), (Ok(0), "vmctl: qcow2 imagefile created\n"));
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        let img = vmd_disk::open(&p, None, true).unwrap();
        assert_eq!(img.size(), 100 * MIB);
        drop(img);

        // -b: the size is the base's; the name is stored as given and
        // found next to the overlay.
        let o = d.path("over.qcow2");
        let mut c = args(&o, 0);
        c.base = Some("disk.qcow2".into());
        assert_eq!(run_create(&c).0, Ok(0));
        let f = std::fs::File::open(&o).unwrap();
        let b = vmd_disk::qcow2::backing_file(&f, &o).unwrap().unwrap();
        assert_eq!(b.name, "disk.qcow2");
        let chain = vmd_disk::open_chain(&o, None, true).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(vmd_disk::open_files(chain, true).unwrap().size(), 100 * MIB);
        // An existing path is never overwritten.
        let (r, _) = run_create(&c);
        assert_eq!(
            r,
            Err(Fail::errx("create imagefile operation failed: File exists"))
        );
    }

    #[test]
    fn convert_between_raw_and_qcow2_through_the_chain() {
        let d = Dir::new("create-qconvert");
        let mut data = vec![0u8; 2 * MIB as usize];
        data[..5000].fill(7);
        data[MIB as usize + 3..MIB as usize + 70000].fill(9);
        let raw = d.file("src.img", &data);

        // raw -> qcow2, then an overlay written through vmd-disk, then the
        // overlay (read through its base) -> raw.
        let q = d.path("q.qcow2");
        let mut c = args(&q, 0);
        c.input = Some((raw.clone()).into());
        let (r, w) = run_create(&c);
        assert_eq!((r, w.as_str()), (Ok(0), "vmctl: qcow2 imagefile created\n"));
        assert!(read_all(&q) == data);
        let o = d.path("o.qcow2");
        let mut c = args(&o, 0);
        c.base = Some((q.clone()).into());
        assert_eq!(run_create(&c).0, Ok(0));
        let mut img = vmd_disk::open(&o, None, true).unwrap();
        img.write_at(&[3u8; 100], 4950).unwrap();
        drop(img);
        data[4950..5050].fill(3);

        let back = d.path("back.img");
        let mut c = args(&back, 4 * MIB);
        c.input = Some((o.clone()).into());
        assert_eq!(run_create(&c).0, Ok(0));
        let out = std::fs::read(&back).unwrap();
        assert_eq!(out.len() as u64, 4 * MIB);
        assert!(out[..data.len()] == data[..]);
        assert!(out[data.len()..].iter().all(|&b| b == 0));

        // A source that is not what its prefix says: a clear error, and
        // no destination file.
        let mut c = args(&d.path("x.img"), 0);
        c.input = Some((format!("qcow2:{raw}")).into());
        let (r, _) = run_create(&c);
        assert_eq!(
            r,
            Err(Fail::errx(format!(
                "failed to open source image file: {raw}: not a qcow2 image"
            )))
        );
        assert!(!std::path::Path::new(&d.path("x.img")).exists());
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
        c.input = Some((src.clone()).into());
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
        c.input = Some((src.clone()).into());
        let (r, w) = run_create(&c);
        assert_eq!((r, w.as_str()), (Ok(0), "vmctl: raw imagefile created\n"));
        assert_eq!(std::fs::metadata(d.path("big.img")).unwrap().len(), 2 * MIB);

        std::fs::write(&src, vec![1u8; (MIB + 1) as usize]).unwrap();
        let mut c = args(&d.path("small.img"), MIB);
        c.input = Some((src).into());
        assert_eq!(
            run_create(&c).0,
            Err(Fail::errx("size cannot be smaller than input disk size"))
        );
        let mut c = args(&d.path("x.img"), MIB);
        c.input = Some((d.path("absent.img")).into());
        assert_eq!(
            run_create(&c).0,
            Err(Fail::errx("failed to open source image file"))
        );
    }
}
