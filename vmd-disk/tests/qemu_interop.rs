//! Interop with qemu's implementation of qcow2 (Debian's qemu-utils),
//! both ways: images qemu-img makes and qemu-io fills are read back by
//! vmd-disk exactly as `qemu-img convert -O raw` reads them; what vmd-disk
//! writes is read back by qemu-io and `qemu-img convert`, and `qemu-img
//! check` finds no errors and no leaks.

mod support;

use libtest_mimic::{Failed, Trial};
use support::{
    first_difference, info_field, qemu_check, qemu_img, qemu_io, qemu_io_all, qemu_raw, Checked,
    TempDir,
};
use vmd_disk::Format;

const K: u64 = 1024;
const M: u64 = 1024 * 1024;

/// Reads a whole image through vmd-disk (opening its chain by path).
fn vmd_read_all(image: &str) -> Result<Vec<u8>, String> {
    let mut img = vmd_disk::open(image, None, false).map_err(|e| e.to_string())?;
    let mut v = vec![0u8; img.size() as usize];
    // In pieces of several sizes, so requests start and end everywhere.
    let mut off = 0;
    let mut i = 0u64;
    while off < v.len() {
        let n = [4096usize, 512, 65536 + 512, 3 * 65536, 7][(i % 5) as usize].min(v.len() - off);
        img.read_at(&mut v[off..off + n], off as u64)
            .map_err(|e| e.to_string())?;
        off += n;
        i += 1;
    }
    Ok(v)
}

fn same_as_qemu(image: &str, d: &TempDir) -> Result<Vec<u8>, Failed> {
    let ours = vmd_read_all(image)?;
    let theirs = qemu_raw(image, &d.path("scratch.raw"))?;
    if let Some(at) = first_difference(&ours, &theirs) {
        return Err(format!(
            "{image}: vmd-disk and qemu differ at {at:#x} ({} bytes vs {})",
            ours.len(),
            theirs.len()
        )
        .into());
    }
    Ok(ours)
}

fn must_be_clean(image: &str) -> Result<(), Failed> {
    match qemu_check(image)? {
        Checked::Clean => Ok(()),
        Checked::Leaks(out) => Err(format!("{image}: leaks after a clean close: {out}").into()),
    }
}

/// A qcow2 file made by qemu-img with `opts`, over `backing`.
fn qcreate(path: &str, opts: &str, backing: Option<&str>, size: u64) -> Result<(), Failed> {
    let size = size.to_string();
    let mut args = vec!["create", "-q", "-f", "qcow2", "-o", opts];
    if let Some(b) = backing {
        args.extend(["-b", b, "-F", "qcow2"]);
    }
    args.extend([path, size.as_str()]);
    qemu_img(&args)?;
    Ok(())
}

/// The (compat, cluster size) pairs every test runs over.
const FLAVOURS: &[(&str, u64)] = &[
    ("0.10", 64 * K),
    ("1.1", 64 * K),
    ("0.10", 4 * K),
    ("1.1", 4 * K),
    ("1.1", 512),
    ("1.1", 2 * M),
];

fn opts(compat: &str, cs: u64) -> String {
    format!("compat={compat},cluster_size={cs}")
}

/// base (6 MiB) ← mid (8 MiB) ← top (10 MiB): a pattern in each layer,
/// overlapping, unaligned, across clusters, and a zeroed range in top.
fn qemu_chain(d: &TempDir, compat: &str, cs: u64) -> Result<String, Failed> {
    let o = opts(compat, cs);
    let (base, mid, top) = (
        d.path("base.qcow2"),
        d.path("mid.qcow2"),
        d.path("top.qcow2"),
    );
    qcreate(&base, &o, None, 6 * M)?;
    qcreate(&mid, &o, Some("base.qcow2"), 8 * M)?;
    qcreate(&top, &o, Some("mid.qcow2"), 10 * M)?;
    qemu_io(&base, "write -P 0x11 0 6M")?;
    qemu_io_all(
        &mid,
        &["write -P 0x22 1048064 70144", "write -P 0x23 7M 1M"],
    )?;
    qemu_io_all(
        &top,
        &[
            "write -P 0x33 1110016 5120".to_string(),
            format!("write -P 0x34 {} 8192", 3 * M - 4 * K),
            "write -P 0x35 9M 4096".to_string(),
            // A zero cluster (v3) or zeros written as data (v2) over the base.
            format!("write -z {} {}", 4 * M, cs.max(64 * K)),
        ],
    )?;
    Ok(top)
}

fn reads_qemu_chains() -> Result<(), Failed> {
    for &(compat, cs) in FLAVOURS {
        let d = TempDir::new(&format!("read-{compat}-{cs}"));
        let top = qemu_chain(&d, compat, cs)?;
        let v = same_as_qemu(&top, &d)?;
        // And the patterns are where they were written: the test is not
        // only that two readers agree.
        let at = |o: u64| v[o as usize];
        let expect = [
            (0, 0x11),
            (1048064, 0x22),
            (1110016, 0x33),
            (1110016 + 5120, 0x22),
            (3 * M - 4 * K, 0x34),
            (4 * M, 0),
            (6 * M, 0),
            (7 * M, 0x23),
            (9 * M, 0x35),
            (10 * M - 1, 0),
        ];
        for (o, b) in expect {
            if at(o) != b {
                return Err(
                    format!("{compat}/{cs}: byte at {o:#x} is {:#x}, not {b:#x}", at(o)).into(),
                );
            }
        }
    }
    Ok(())
}

/// Writes through vmd-disk into the top of a qemu chain; qemu reads the
/// same bytes back, and `qemu-img check` is clean.
fn writes_read_by_qemu() -> Result<(), Failed> {
    for &(compat, cs) in FLAVOURS {
        let d = TempDir::new(&format!("write-{compat}-{cs}"));
        let top = qemu_chain(&d, compat, cs)?;
        let writes: [(u64, u64, u8); 6] = [
            // Partial cluster over the base's data.
            (512, 1024, 0x41),
            // Across a cluster boundary, over mid's and top's data.
            (1114112 - 1024, 4 * K, 0x42),
            // Several clusters, unaligned at both ends.
            (5 * M - 3 * K, (3 * cs + 5 * K).min(M + 512), 0x43),
            // Into the zeroed range.
            (4 * M + 100, 200, 0x44),
            // Past the base's end, and the disk's last bytes.
            (6 * M + 7, 999, 0x45),
            (10 * M - 512, 512, 0x46),
        ];
        {
            let mut img = vmd_disk::open(&top, None, true)?;
            for &(off, len, p) in &writes {
                img.write_at(&vec![p; len as usize], off)?;
            }
            img.flush()?;
        }
        let mut reads: Vec<String> = writes
            .iter()
            .map(|&(off, len, p)| format!("read -P {p:#x} {off} {len}"))
            .collect();
        // A neighbour of a partial write kept the base's bytes.
        reads.push("read -P 0x11 0 512".into());
        reads.push("read -P 0x11 1536 2048".into());
        qemu_io_all(&top, &reads)?;
        must_be_clean(&top)?;
        same_as_qemu(&top, &d)?;
    }
    Ok(())
}

/// `qemu-img convert -c` clusters: read, then rewritten by partial
/// writes; qemu agrees and the image is clean (the old compressed
/// sectors are unreferenced, no leak).
fn compressed_clusters() -> Result<(), Failed> {
    for &(compat, cs) in FLAVOURS {
        let d = TempDir::new(&format!("comp-{compat}-{cs}"));
        let raw = d.path("src.raw");
        let mut data = vec![0u8; (4 * M) as usize];
        for (i, b) in data.iter_mut().enumerate() {
            // Compressible, but not all one byte.
            *b = ((i / 1000) % 251) as u8;
        }
        data[(3 * M) as usize..].fill(0);
        std::fs::write(&raw, &data)?;
        let img = d.path("c.qcow2");
        // Inside the 4 MiB disk for 2 MiB clusters too.
        let u = cs.min(256 * K);
        qemu_img(&[
            "convert",
            "-q",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &opts(compat, cs),
            &raw,
            &img,
        ])?;
        let got = same_as_qemu(&img, &d)?;
        if got != data {
            return Err(format!("{compat}/{cs}: compressed image reads wrong").into());
        }
        {
            let mut q = vmd_disk::open(&img, Some(Format::Qcow2), true)?;
            q.write_at(&[0xa5; 300], cs + 17)?;
            q.write_at(&vec![0x5a; (2 * u) as usize], 5 * u + u / 2)?;
            q.flush()?;
        }
        data[(cs + 17) as usize..(cs + 317) as usize].fill(0xa5);
        data[(5 * u + u / 2) as usize..(7 * u + u / 2) as usize].fill(0x5a);
        qemu_io(&img, &format!("read -P 0xa5 {} 300", cs + 17))?;
        must_be_clean(&img)?;
        let got = same_as_qemu(&img, &d)?;
        if let Some(at) = first_difference(&got, &data) {
            return Err(format!("{compat}/{cs}: after rewrite, differs at {at:#x}").into());
        }
    }
    Ok(())
}

/// vmd's layout (what `vmctl create` writes) passes `qemu-img check`, and
/// `qemu-img info` shows its size and backing file; qemu can write it.
fn created_images_pass_qemu_check() -> Result<(), Failed> {
    use std::fs::OpenOptions;
    let d = TempDir::new("create");
    let base = d.path("base.qcow2");
    let top = d.path("top.qcow2");
    for (p, size, backing) in [
        (&base, 3 * 1024 * M + 5 * M, None),
        (&top, 3 * 1024 * M + 5 * M, Some("base.qcow2")),
    ] {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(p)?;
        vmd_disk::qcow2::create(&f, p, size, backing)?;
    }
    for p in [&base, &top] {
        must_be_clean(p)?;
    }
    let info = qemu_img(&["info", "--output=json", &top])?;
    if info_field(&info, "virtual-size").as_deref() != Some(&(3 * 1024 * M + 5 * M).to_string()) {
        return Err(format!("qemu-img info: wrong virtual size: {info}").into());
    }
    if info_field(&info, "backing-filename").as_deref() != Some("base.qcow2") {
        return Err(format!("qemu-img info: wrong backing file: {info}").into());
    }
    if info_field(&info, "cluster-size").as_deref() != Some("65536") {
        return Err(format!("qemu-img info: wrong cluster size: {info}").into());
    }
    // qemu writes into vmd's image (the base, so the chain reads it) and
    // vmd-disk into the overlay; each reads the other's data.
    qemu_io(&base, "write -P 0x77 1G 64k")?;
    {
        let mut t = vmd_disk::open(&top, None, true)?;
        t.write_at(&[0x66; 4096], M + 4096)?;
        let mut b = [0u8; 16];
        t.read_at(&mut b, 1024 * M + 8)?;
        if b != [0x77; 16] {
            return Err("vmd-disk does not read qemu's write into the base".into());
        }
    }
    qemu_io(&top, &format!("read -P 0x66 {} 4096", M + 4096))?;
    qemu_io(&top, "read -P 0x77 1G 64k")?;
    must_be_clean(&base)?;
    must_be_clean(&top)?;
    Ok(())
}

/// The chain rules: at most four files, the names relative to each
/// image's directory, a missing one named.
fn backing_chain_rules() -> Result<(), Failed> {
    let d = TempDir::new("chain");
    std::fs::create_dir(d.0.join("sub"))?;
    let o = opts("1.1", 64 * K);
    let names = [
        "l0.qcow2",
        "sub/l1.qcow2",
        "sub/l2.qcow2",
        "sub/l3.qcow2",
        "sub/l4.qcow2",
    ];
    qcreate(&d.path(names[0]), &o, None, 4 * M)?;
    // l1 names its base relative to sub/, the others relative to sub/ too.
    qcreate(&d.path(names[1]), &o, Some("../l0.qcow2"), 4 * M)?;
    for i in 2..5 {
        qcreate(&d.path(names[i]), &o, Some(&names[i - 1][4..]), 4 * M)?;
    }
    qemu_io(&d.path(names[0]), "write -P 0x10 0 64k")?;
    qemu_io(&d.path(names[3]), "write -P 0x13 4096 512")?;
    // l3 ← l2 ← l1 ← l0: four files, allowed.
    let chain = vmd_disk::open_chain(&d.path(names[3]), None, false)?;
    if chain.len() != 4 {
        return Err(format!("chain of {} files, not 4", chain.len()).into());
    }
    let mut img = vmd_disk::open_files(chain, false)?;
    let mut b = vec![0u8; 8192];
    img.read_at(&mut b, 0)?;
    if b[..4096] != [0x10; 4096] || b[4096..4608] != [0x13; 512] || b[4608..] != [0x10; 3584] {
        return Err("four-file chain reads wrong".into());
    }
    // Five files: refused, naming the image.
    let top = d.path(names[4]);
    match vmd_disk::open_chain(&top, None, false) {
        Err(e) => {
            let want = format!("{top}: more than 4 files in the backing chain");
            if e.to_string() != want {
                return Err(format!("got '{e}', want '{want}'").into());
            }
        }
        Ok(_) => return Err("a five-file chain was opened".into()),
    }
    // A missing base: named.
    std::fs::remove_file(d.path(names[0]))?;
    match vmd_disk::open(&d.path(names[1]), None, false) {
        Err(vmd_disk::DiskError::MissingBacking { name, .. })
            if name.ends_with("sub/../l0.qcow2") =>
        {
            Ok(())
        }
        Err(e) => Err(format!("missing base: {e}").into()),
        Ok(_) => Err("opened an image whose base is missing".into()),
    }
}

/// 512-byte clusters: vmd-disk's writes outgrow qemu's refcount table,
/// which moves to a larger one that qemu then finds clean.
fn refcount_table_grows() -> Result<(), Failed> {
    let d = TempDir::new("grow");
    let img = d.path("small.qcow2");
    qcreate(&img, &opts("1.1", 512), None, 32 * M)?;
    let reftable = |p: &str| -> Result<Vec<u8>, Failed> { Ok(std::fs::read(p)?[48..60].to_vec()) };
    let before = reftable(&img)?;
    let mut want = vec![0u8; (32 * M) as usize];
    {
        let mut q = vmd_disk::open(&img, None, true)?;
        let chunk: Vec<u8> = (0..300 * K).map(|i| (i % 253) as u8 + 1).collect();
        for i in 0..40u64 {
            let off = i * 700 * K + 3;
            q.write_at(&chunk, off)?;
            want[off as usize..off as usize + chunk.len()].copy_from_slice(&chunk);
        }
        q.flush()?;
    }
    must_be_clean(&img)?;
    let got = same_as_qemu(&img, &d)?;
    if let Some(at) = first_difference(&got, &want) {
        return Err(format!("differs at {at:#x}").into());
    }
    if reftable(&img)? == before {
        return Err("the refcount table did not move".into());
    }
    Ok(())
}

/// Images qemu leaves that vmd-disk reads but will not write: one with
/// an internal snapshot (the active L1 table is read) and one whose dirty
/// bit qemu left set (lazy refcounts, then an abort) until `qemu-img
/// check -r all` repairs it.
fn snapshot_and_dirty_images() -> Result<(), Failed> {
    let d = TempDir::new("snapdirty");
    let snap = d.path("snap.qcow2");
    qcreate(&snap, &opts("1.1", 64 * K), None, 4 * M)?;
    qemu_io(&snap, "write -P 0x61 0 128k")?;
    qemu_img(&["snapshot", "-c", "s1", &snap])?;
    qemu_io(&snap, "write -P 0x62 64k 4k")?;
    let got = same_as_qemu(&snap, &d)?;
    if got[0] != 0x61 || got[64 * 1024] != 0x62 {
        return Err("the snapshot image does not read its active state".into());
    }
    match vmd_disk::open(&snap, None, true) {
        Err(vmd_disk::DiskError::Unsupported { what, .. }) if what.contains("snapshots") => {}
        Err(e) => return Err(format!("snapshot image, writable: {e}").into()),
        Ok(_) => return Err("an image with snapshots was opened for writing".into()),
    }

    let dirty = d.path("dirty.qcow2");
    qcreate(&dirty, "lazy_refcounts=on", None, 4 * M)?;
    // qemu-io aborts on purpose: its status says so, the image stays dirty.
    let _ = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x63 0 64k",
            "-c",
            "abort",
            &dirty,
        ])
        .output()?;
    let want =
        format!("{dirty}: qcow2 image is marked dirty; repair it with qemu-img check -r all");
    match vmd_disk::open(&dirty, None, true) {
        Err(e) if e.to_string() == want => {}
        Err(e) => return Err(format!("dirty image: got '{e}', want '{want}'").into()),
        Ok(_) => return Err("a dirty image was opened for writing".into()),
    }
    // Reading does not need the refcounts.
    if vmd_read_all(&dirty)?[..65536] != [0x63; 65536] {
        return Err("the dirty image reads wrong".into());
    }
    let _ = std::process::Command::new("qemu-img")
        .args(["check", "-q", "-r", "all", &dirty])
        .output()?;
    let mut img = vmd_disk::open(&dirty, None, true)?;
    img.write_at(&[0x64; 512], 4096)?;
    img.flush()?;
    drop(img);
    must_be_clean(&dirty)?;
    qemu_io(&dirty, "read -P 0x64 4096 512")?;
    Ok(())
}

fn main() {
    support::run_trials(vec![
        Trial::test("snapshot_and_dirty_images", snapshot_and_dirty_images),
        Trial::test("refcount_table_grows", refcount_table_grows),
        Trial::test("reads_qemu_chains", reads_qemu_chains),
        Trial::test("writes_read_by_qemu", writes_read_by_qemu),
        Trial::test("compressed_clusters", compressed_clusters),
        Trial::test(
            "created_images_pass_qemu_check",
            created_images_pass_qemu_check,
        ),
        Trial::test("backing_chain_rules", backing_chain_rules),
    ])
}
