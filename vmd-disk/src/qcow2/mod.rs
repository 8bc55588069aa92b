//! qcow2 v2 and v3 images (qemu's docs/interop/qcow2.txt; vmd's
//! vioqcow2.c for what vmd reads and writes).
//!
//! Reads walk L1 → L2 (a small LRU cache of L2 tables) → data cluster; an
//! unallocated cluster falls through to the backing image (zeros past its
//! end, or without one).  Compressed clusters (raw deflate, as `qemu-img
//! convert -c` writes them) are inflated on read; vmd refuses them.
//!
//! Writes go in place to an allocated cluster.  Anything else (an
//! unallocated cluster, a zero cluster, a compressed one) gets a new
//! cluster at the end of the file, filled first with what the guest saw
//! there (the backing image's data, zeros, or the inflated cluster) and
//! then the new bytes.  No lazy refcounts, no discard, no reuse of freed
//! space: as vmd, allocation is always at the end of the file.
//!
//! # Ordering of metadata writes
//!
//! The rule that keeps an image consistent whenever the process dies (and,
//! with the fdatasyncs, when the machine does) is: nothing on disk points
//! at a cluster before the cluster's contents and its refcount are on
//! disk.  A crash can then leave a cluster counted but unreferenced (a
//! leak, which `qemu-img check` reports and `-r leaks` repairs) but never a
//! reference to garbage or to a cluster with refcount 0.  So:
//!
//! 1. a write request writes the data clusters (whole clusters,
//!    copy-on-write done) and a new L2 table's cluster is allocated;
//! 2. their refcounts are set to 1 at once, allocating a refcount block
//!    when the table has none for them (the block is written, with its
//!    own count, and synced before the refcount table points to it), and
//!    moving the refcount table to a larger one when it is full (the new
//!    table and its blocks are written and synced, then the header is
//!    pointed at it in one write and synced, then the old table is freed);
//! 3. the new L2 entries (and new L2 tables, and their L1 entries) stay
//!    in the L2 cache, marked dirty, until the guest's FLUSH, a full cache
//!    or the close (`Qcow2::write_back`), which writes new L2 tables
//!    whole,
//! 4. fdatasyncs,
//! 5. writes the changed L2 entries, and for new tables the L1 entries,
//! 6. and for compressed clusters that were rewritten fdatasyncs again and
//!    only then drops the old clusters' refcounts (the reverse order would
//!    let a crash leave an L2 entry pointing at a freed cluster).
//!
//! FLUSH then fdatasyncs once more, so that the write-back itself is
//! durable.  Writes the guest has not flushed may be lost in a crash, as
//! on a disk with a write cache, and leave counted clusters behind (a
//! leak); flushed ones never are.  Writes to allocated clusters need no
//! metadata and no sync; allocating ones cost two fdatasyncs per FLUSH,
//! not per request.
//!
//! # Failures
//!
//! A failed write of guest data (ENOSPC on a full file system, EIO)
//! fails that request only: no metadata changed, so the image stays
//! usable.  A failed metadata update (a refcount, an L2 table or entry
//! at a write-back, an fdatasync) poisons the image: the in-memory
//! tables may be ahead of the file, so every later request fails until
//! the disk is opened again, and the file stays consistent by the order
//! above (at worst leaked clusters).
//!
//! # Refused at open
//!
//! Encryption, refcount orders other than 4 (16-bit refcounts), unknown
//! incompatible features, external data files, extended L2 entries and
//! compression types other than zlib.  An image with the dirty or corrupt
//! bit is opened read-only (as a backing file) but refused for writing:
//! its refcounts cannot be trusted, and `qemu-img check -r all` repairs
//! it (vmd-disk does not repair).  Internal snapshots are ignored for
//! reading and refused for writing (their clusters are shared, which vmd
//! ignores to the snapshots' loss).  Unknown autoclear feature bits are
//! cleared when an image is opened for writing, as the format asks.
//!
//! Unlike vmd, the images of a chain need not share a cluster size, and a
//! backing file may be raw (named so by the backing format extension, or
//! probed): each layer is just a [`DiskImage`] to the one above.

mod header;

use std::fs::File;

use flate2::{Decompress, FlushDecompress};

use crate::{check_range, read_full, sync, write_full, DiskError, DiskImage};

pub use header::{
    backing_file, create, Backing, Header, CREATE_CLUSTER_BITS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY,
};

/// L1 and L2 (standard) entries: the host offset, bits 9..=55.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// The refcount of the cluster is exactly 1 (bit 63).
const COPIED: u64 = 1 << 63;
/// L2: the cluster is compressed (bit 62).
const COMPRESSED: u64 = 1 << 62;
/// L2 (v3): the cluster reads as zeros (bit 0).
const ZERO: u64 = 1;
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
const REFTABLE_RESERVED: u64 = 0x1ff;
/// The autoclear feature word in a v3 header.
const AUTOCLEAR_OFFSET: u64 = 88;

/// Where a guest cluster's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// Not in this image: the backing image's, or zeros.
    Unallocated,
    /// Reads as zeros; `Some` when a cluster is preallocated for it.
    Zero(Option<u64>),
    /// A data cluster at this host offset.
    Data(u64),
    /// A compressed cluster; the L2 entry.
    Compressed(u64),
}

/// A qcow2 image, possibly over a backing image.
pub struct Qcow2 {
    file: File,
    path: String,
    writable: bool,
    backing: Option<Box<dyn DiskImage>>,
    version: u32,
    cluster_bits: u32,
    size: u64,
    l1_offset: u64,
    l1: Vec<u64>,
    refcount_table_offset: u64,
    refcount_table: Vec<u64>,
    /// Where the next cluster is allocated: the cluster-aligned end of
    /// the file.
    next_free: u64,
    l2: L2Cache,
    /// A cluster for copy-on-write, kept between requests.
    cow: Vec<u8>,
    inflate: Inflater,
    /// fdatasync between the steps of a metadata update (see the module
    /// comment); off only for a new file nobody else can see yet.
    metadata_sync: bool,
    /// A metadata update failed half-way; the in-memory tables may not
    /// match the file, so nothing more is done.
    poisoned: bool,
    /// The request being written failed in a write of guest data (see
    /// [`Qcow2::write_data`]), not of metadata.
    data_failed: bool,
    /// Host ranges of rewritten compressed clusters, unreferenced at the
    /// next write-back once nothing on disk points at them.
    pending_frees: Vec<(u64, u64)>,
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("cluster_bits", &self.cluster_bits)
            .field("size", &self.size)
            .field("writable", &self.writable)
            .field("backing", &self.backing.is_some())
            .finish()
    }
}

/// Unpacks big-endian u64s.
fn be64s(bytes: &[u8], out: &mut [u64]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *o = u64::from_be_bytes(c.try_into().expect("8 bytes"));
    }
}

fn read_table(file: &File, path: &str, offset: u64, entries: usize) -> Result<Vec<u64>, DiskError> {
    let mut bytes = vec![0u8; entries * 8];
    read_full(file, path, &mut bytes, offset)?;
    let mut t = vec![0u64; entries];
    be64s(&bytes, &mut t);
    Ok(t)
}

impl Qcow2 {
    /// Opens a qcow2 image from an opened file.  `backing` is the image
    /// below it, opened by the caller (see [`crate::open_chain`]); it is
    /// required when the header names a backing file.  `path` names the
    /// file in errors.
    pub fn open(
        file: File,
        path: &str,
        backing: Option<Box<dyn DiskImage>>,
        writable: bool,
    ) -> Result<Qcow2, DiskError> {
        let h = Header::read(&file, path)?;
        if writable {
            if h.incompatible & INCOMPAT_CORRUPT != 0 {
                return Err(DiskError::NeedsRepair {
                    path: path.to_string(),
                    state: "corrupt",
                });
            }
            if h.incompatible & INCOMPAT_DIRTY != 0 {
                return Err(DiskError::NeedsRepair {
                    path: path.to_string(),
                    state: "dirty",
                });
            }
            if h.nb_snapshots != 0 {
                return Err(DiskError::Unsupported {
                    path: path.to_string(),
                    what: "internal snapshots for writing, count",
                    value: h.nb_snapshots.into(),
                });
            }
        }
        if h.backing_len > 0 && backing.is_none() {
            let name = backing_file(&file, path)?
                .map(|b| b.name)
                .unwrap_or_default();
            return Err(DiskError::MissingBacking {
                path: path.to_string(),
                name,
            });
        }
        let cs = 1u64 << h.cluster_bits;
        let l1 = read_table(&file, path, h.l1_offset, h.l1_size as usize)?;
        let rt_entries = ((u64::from(h.refcount_table_clusters) << h.cluster_bits) / 8) as usize;
        let refcount_table = read_table(&file, path, h.refcount_table_offset, rt_entries)?;
        let file_len = file
            .metadata()
            .map_err(|e| DiskError::io(path, "stat", 0, e))?
            .len();
        if writable && h.autoclear != 0 {
            write_full(&file, path, &0u64.to_be_bytes(), AUTOCLEAR_OFFSET)?;
            sync(&file, path)?;
        }
        Ok(Qcow2 {
            file,
            path: path.to_string(),
            writable,
            backing,
            version: h.version,
            cluster_bits: h.cluster_bits,
            size: h.size,
            l1_offset: h.l1_offset,
            l1,
            refcount_table_offset: h.refcount_table_offset,
            refcount_table,
            next_free: file_len.div_ceil(cs) * cs,
            l2: L2Cache::new(h.cluster_bits),
            cow: Vec::new(),
            inflate: Inflater::new(),
            metadata_sync: true,
            poisoned: false,
            data_failed: false,
            pending_frees: Vec::new(),
        })
    }

    /// Turns the fdatasyncs between metadata steps off (or back on): for
    /// `vmctl create -i`, which fills a new file that is removed if
    /// anything fails and synced once at the end.
    pub fn set_metadata_sync(&mut self, on: bool) {
        self.metadata_sync = on;
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn corrupt(&self, what: &'static str, value: u64) -> DiskError {
        DiskError::Corrupt {
            path: self.path.clone(),
            what,
            value,
        }
    }

    /// The L1 and L2 indexes of a guest offset.
    fn indexes(&self, vaddr: u64) -> (usize, usize) {
        let cluster = vaddr >> self.cluster_bits;
        let l2_bits = self.cluster_bits - 3;
        (
            (cluster >> l2_bits) as usize,
            (cluster & ((1 << l2_bits) - 1)) as usize,
        )
    }

    /// The L2 table of an L1 index, if there is one.
    fn l2_table(&self, l1_index: usize) -> Result<Option<u64>, DiskError> {
        // The header check makes the L1 table cover the whole disk.
        let e = *self
            .l1
            .get(l1_index)
            .ok_or_else(|| self.corrupt("L1 index", l1_index as u64))?;
        if e & L1_RESERVED != 0 {
            return Err(self.corrupt("L1 entry", e));
        }
        let off = e & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if off & (self.cs() - 1) != 0 {
            return Err(self.corrupt("L2 table offset", off));
        }
        Ok(Some(off))
    }

    fn decode(&self, e: u64) -> Result<Mapping, DiskError> {
        if e & COMPRESSED != 0 {
            return Ok(Mapping::Compressed(e & !(COPIED | COMPRESSED)));
        }
        if e & L2_RESERVED != 0 {
            return Err(self.corrupt("L2 entry", e));
        }
        let off = e & OFFSET_MASK;
        if off != 0 && off & (self.cs() - 1) != 0 {
            return Err(self.corrupt("data cluster offset", off));
        }
        if e & ZERO != 0 {
            if self.version < 3 {
                return Err(self.corrupt("L2 entry", e));
            }
            return Ok(Mapping::Zero((off != 0).then_some(off)));
        }
        Ok(if off == 0 {
            Mapping::Unallocated
        } else {
            Mapping::Data(off)
        })
    }

    fn lookup(&mut self, vaddr: u64) -> Result<Mapping, DiskError> {
        let (i1, i2) = self.indexes(vaddr);
        let Some(t) = self.l2_table(i1)? else {
            return Ok(Mapping::Unallocated);
        };
        let slot = self.load_l2(t)?;
        let e = self.l2.slots[slot].table[i2];
        self.decode(e)
    }

    /// The cache slot of the L2 table at `offset`, writing the changed
    /// tables back first if every slot holds one.
    fn load_l2(&mut self, offset: u64) -> Result<usize, DiskError> {
        if self.l2.must_write_back(offset) {
            self.write_back()?;
        }
        self.l2.load(&self.file, &self.path, offset)
    }

    /// The backing image's bytes at `vaddr`, zeros past its end or
    /// without one.
    fn read_backing(
        backing: &mut Option<Box<dyn DiskImage>>,
        buf: &mut [u8],
        vaddr: u64,
    ) -> Result<(), DiskError> {
        let Some(b) = backing else {
            buf.fill(0);
            return Ok(());
        };
        let bsize = b.size();
        let have = bsize.saturating_sub(vaddr).min(buf.len() as u64) as usize;
        if have > 0 {
            b.read_at(&mut buf[..have], vaddr)?;
        }
        buf[have..].fill(0);
        Ok(())
    }

    fn check_usable(&self) -> Result<(), DiskError> {
        if self.poisoned {
            return Err(DiskError::Poisoned {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn read_inner(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        let cs = self.cs();
        // Data clusters that follow each other in the file are read with
        // one pread: (host offset, start in buf, length).
        let mut run: Option<(u64, usize, usize)> = None;
        let mut done = 0;
        while done < buf.len() {
            let v = offset + done as u64;
            let in_cl = v & (cs - 1);
            let n = ((cs - in_cl) as usize).min(buf.len() - done);
            let mapping = self.lookup(v)?;
            if let Mapping::Data(h) = mapping {
                match run {
                    Some((rh, rs, rl)) if rh + rl as u64 == h + in_cl => {
                        run = Some((rh, rs, rl + n))
                    }
                    _ => {
                        if let Some((rh, rs, rl)) = run {
                            read_full(&self.file, &self.path, &mut buf[rs..rs + rl], rh)?;
                        }
                        run = Some((h + in_cl, done, n));
                    }
                }
                done += n;
                continue;
            }
            if let Some((rh, rs, rl)) = run.take() {
                read_full(&self.file, &self.path, &mut buf[rs..rs + rl], rh)?;
            }
            let seg = &mut buf[done..done + n];
            match mapping {
                Mapping::Unallocated => Self::read_backing(&mut self.backing, seg, v)?,
                Mapping::Compressed(e) => {
                    let c = self
                        .inflate
                        .cluster(&self.file, &self.path, e, self.cluster_bits)?;
                    seg.copy_from_slice(&c[in_cl as usize..in_cl as usize + n]);
                }
                _ => seg.fill(0),
            }
            done += n;
        }
        if let Some((rh, rs, rl)) = run {
            read_full(&self.file, &self.path, &mut buf[rs..rs + rl], rh)?;
        }
        Ok(())
    }

    /// The next cluster at the end of the file.
    fn alloc_cluster(&mut self) -> Result<u64, DiskError> {
        let off = self.next_free;
        if off & !OFFSET_MASK != 0 {
            return Err(DiskError::Full {
                path: self.path.clone(),
                what: "host offset past 2^56",
            });
        }
        self.next_free = off + self.cs();
        Ok(off)
    }

    /// The refcount block for refcount table index `bi`, allocated (at
    /// the end of the file) if there is none yet.
    fn refcount_block(&mut self, bi: u64) -> Result<u64, DiskError> {
        if bi as usize >= self.refcount_table.len() {
            self.grow_refcount_table(bi)?;
        }
        let e = self.refcount_table[bi as usize];
        if e & REFTABLE_RESERVED != 0 || (e != 0 && e < self.cs()) {
            return Err(self.corrupt("refcount block offset", e));
        }
        if e != 0 {
            return Ok(e);
        }
        let cs = self.cs();
        let rb_bits = self.cluster_bits - 1;
        let b = self.alloc_cluster()?;
        let bidx = b >> self.cluster_bits;
        let mut block = vec![0u8; cs as usize];
        let covers_itself = bidx >> rb_bits == bi;
        if covers_itself {
            let at = ((bidx & ((1 << rb_bits) - 1)) * 2) as usize;
            block[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
        }
        write_full(&self.file, &self.path, &block, b)?;
        if !covers_itself {
            // Counted in the block of its own range, which is found or
            // made the same way; that one lies in its own range.
            self.set_refcount(b, 1)?;
        }
        if self.metadata_sync {
            sync(&self.file, &self.path)?;
        }
        write_full(
            &self.file,
            &self.path,
            &b.to_be_bytes(),
            self.refcount_table_offset + bi * 8,
        )?;
        self.refcount_table[bi as usize] = b;
        Ok(b)
    }

    /// Moves the refcount table to a larger one at the end of the file
    /// that has an entry `bi`.  The new table, and the refcount blocks
    /// that count it (and themselves), are written and synced before the
    /// header points at them; the old table is freed after that, so a
    /// crash leaves at worst a leak.
    fn grow_refcount_table(&mut self, bi: u64) -> Result<(), DiskError> {
        let cs = self.cs();
        let old_offset = self.refcount_table_offset;
        let old_clusters = (self.refcount_table.len() as u64 * 8).div_ceil(cs);
        let mut clusters = old_clusters.max(1);
        while clusters * cs / 8 <= bi {
            clusters *= 2;
        }
        if clusters * cs > header::MAX_REFTABLE_BYTES {
            return Err(DiskError::Full {
                path: self.path.clone(),
                what: "refcount table",
            });
        }
        let mut table = self.refcount_table.clone();
        table.resize((clusters * cs / 8) as usize, 0);
        let start = self.next_free;
        for _ in 0..clusters {
            self.alloc_cluster()?;
        }
        // Count the new table's clusters; a range without a block gets a
        // new one, which is counted in turn.
        let mut todo: Vec<u64> = (0..clusters).map(|i| start + i * cs).collect();
        let mut blocks: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        let mut i = 0;
        while i < todo.len() {
            let host = todo[i];
            i += 1;
            let (rb, at) = self.refcount_slot(host);
            let at = at as usize;
            if let Some(b) = blocks.iter_mut().find(|b| b.0 == rb) {
                b.2[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
                continue;
            }
            let Some(&e) = table.get(rb as usize) else {
                return Err(DiskError::Full {
                    path: self.path.clone(),
                    what: "refcount table",
                });
            };
            if e != 0 {
                if e & REFTABLE_RESERVED != 0 || e < cs {
                    return Err(self.corrupt("refcount block offset", e));
                }
                // Not referenced until the header moves: at worst a leak.
                write_full(&self.file, &self.path, &1u16.to_be_bytes(), e + at as u64)?;
                continue;
            }
            let b = self.alloc_cluster()?;
            let mut content = vec![0u8; cs as usize];
            content[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
            table[rb as usize] = b;
            blocks.push((rb, b, content));
            todo.push(b);
        }
        for (_, b, content) in &blocks {
            write_full(&self.file, &self.path, content, *b)?;
        }
        let mut bytes = vec![0u8; table.len() * 8];
        for (c, e) in bytes.chunks_exact_mut(8).zip(&table) {
            c.copy_from_slice(&e.to_be_bytes());
        }
        write_full(&self.file, &self.path, &bytes, start)?;
        sync(&self.file, &self.path)?;
        // refcount_table_offset and refcount_table_clusters, in one write.
        let mut h = [0u8; 12];
        h[..8].copy_from_slice(&start.to_be_bytes());
        h[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
        write_full(&self.file, &self.path, &h, 48)?;
        sync(&self.file, &self.path)?;
        self.refcount_table = table;
        self.refcount_table_offset = start;
        self.unref_range(old_offset, old_clusters * cs)
    }

    /// Where the refcount of the cluster at `host` lives.
    fn refcount_slot(&self, host: u64) -> (u64, u64) {
        let idx = host >> self.cluster_bits;
        let rb_bits = self.cluster_bits - 1;
        (idx >> rb_bits, (idx & ((1 << rb_bits) - 1)) * 2)
    }

    fn set_refcount(&mut self, host: u64, value: u16) -> Result<(), DiskError> {
        let (bi, at) = self.refcount_slot(host);
        let block = self.refcount_block(bi)?;
        write_full(&self.file, &self.path, &value.to_be_bytes(), block + at)
    }

    /// Drops one reference to each cluster of `start..start + len` (the
    /// sectors of a compressed cluster that was rewritten).
    fn unref_range(&mut self, start: u64, len: u64) -> Result<(), DiskError> {
        let cs = self.cs();
        let first = start / cs;
        let last = (start + len - 1) / cs;
        for c in first..=last {
            let (bi, at) = self.refcount_slot(c * cs);
            let Some(&block) = self.refcount_table.get(bi as usize) else {
                continue;
            };
            if block == 0 || block & REFTABLE_RESERVED != 0 {
                continue;
            }
            let mut v = [0u8; 2];
            read_full(&self.file, &self.path, &mut v, block + at)?;
            let n = u16::from_be_bytes(v);
            // A count already 0 is the image's inconsistency, not ours
            // to make worse.
            if n > 0 {
                write_full(&self.file, &self.path, &(n - 1).to_be_bytes(), block + at)?;
            }
        }
        Ok(())
    }

    /// A write of guest data into a data cluster: a cluster the tables
    /// point at already, or a fresh one they will point at only once it
    /// is written.  It changes no metadata, so when it fails (ENOSPC on a
    /// full file system, EIO) the request fails and the image stays
    /// usable: what was written before reads back, and space it has keeps
    /// working.  A fresh cluster that was not written stays unreferenced
    /// (a refcount of 0), and the next one is allocated after it.
    fn write_data(&mut self, data: &[u8], at: u64) -> Result<(), DiskError> {
        let r = write_full(&self.file, &self.path, data, at);
        self.data_failed = r.is_err();
        r
    }

    fn write_inner(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        let cs = self.cs();
        // Allocated clusters that follow each other in the file are
        // written with one pwrite: (host offset, start in buf, length).
        let mut run: Option<(u64, usize, usize)> = None;
        let mut done = 0;
        while done < buf.len() {
            let v = offset + done as u64;
            let in_cl = v & (cs - 1);
            let n = ((cs - in_cl) as usize).min(buf.len() - done);
            let data = &buf[done..done + n];
            let (i1, i2) = self.indexes(v);
            let slot = match self.l2_table(i1)? {
                Some(t) => self.load_l2(t)?,
                None => {
                    // A new L2 table: counted now, written and linked
                    // into L1 by write_back.
                    if self.l2.must_write_back(u64::MAX) {
                        self.write_back()?;
                    }
                    let t = self.alloc_cluster()?;
                    self.set_refcount(t, 1)?;
                    self.l1[i1] = t | COPIED;
                    self.l2.insert_new(t, i1)
                }
            };
            let mapping = self.decode(self.l2.slots[slot].table[i2])?;
            if let Mapping::Data(h) = mapping {
                match run {
                    Some((rh, rs, rl)) if rh + rl as u64 == h + in_cl => {
                        run = Some((rh, rs, rl + n))
                    }
                    _ => {
                        if let Some((rh, rs, rl)) = run {
                            self.write_data(&buf[rs..rs + rl], rh)?;
                        }
                        run = Some((h + in_cl, done, n));
                    }
                }
                done += n;
                continue;
            }
            if let Some((rh, rs, rl)) = run.take() {
                self.write_data(&buf[rs..rs + rl], rh)?;
            }
            let (target, fresh) = match mapping {
                Mapping::Zero(Some(h)) => (h, false),
                _ => (self.alloc_cluster()?, true),
            };
            if n as u64 == cs {
                self.write_data(data, target)?;
            } else {
                let mut cow = std::mem::take(&mut self.cow);
                cow.resize(cs as usize, 0);
                let base = v - in_cl;
                match mapping {
                    Mapping::Unallocated => Self::read_backing(&mut self.backing, &mut cow, base)?,
                    Mapping::Compressed(e) => cow.copy_from_slice(self.inflate.cluster(
                        &self.file,
                        &self.path,
                        e,
                        self.cluster_bits,
                    )?),
                    _ => cow.fill(0),
                }
                cow[in_cl as usize..in_cl as usize + n].copy_from_slice(data);
                let r = self.write_data(&cow, target);
                self.cow = cow;
                r?;
            }
            if fresh {
                self.set_refcount(target, 1)?;
            }
            if let Mapping::Compressed(e) = mapping {
                let r = self.inflate.host_range(e, self.cluster_bits);
                self.pending_frees.push(r);
            }
            // Neither set_refcount nor the copy-on-write read touches
            // this image's L2 cache, so `slot` holds.
            self.l2.set(slot, i2, target | COPIED);
            done += n;
        }
        if let Some((rh, rs, rl)) = run {
            self.write_data(&buf[rs..rs + rl], rh)?;
        }
        Ok(())
    }

    /// Steps 3 to 6 of the module comment: puts the L2 entries and L1
    /// entries changed since the last write-back on disk, after a sync
    /// that puts the data and refcounts they point at there first.
    fn write_back(&mut self) -> Result<(), DiskError> {
        let r = self.write_back_inner();
        if r.is_err() {
            // Some of it may be on disk, some not.
            self.poisoned = true;
        }
        r
    }

    fn write_back_inner(&mut self) -> Result<(), DiskError> {
        if !self.l2.slots.iter().any(|s| s.dirty.is_some()) && self.pending_frees.is_empty() {
            return Ok(());
        }
        for i in 0..self.l2.slots.len() {
            if self.l2.slots[i].new_l1.is_some() {
                let off = self.l2.slots[i].offset;
                let entries = self.l2.entries;
                let bytes = self.l2.encode(i, 0, entries);
                write_full(&self.file, &self.path, bytes, off)?;
            }
        }
        if self.metadata_sync {
            sync(&self.file, &self.path)?;
        }
        for i in 0..self.l2.slots.len() {
            let Some((lo, hi)) = self.l2.slots[i].dirty.take() else {
                continue;
            };
            if let Some(i1) = self.l2.slots[i].new_l1.take() {
                let e = self.l1[i1];
                write_full(
                    &self.file,
                    &self.path,
                    &e.to_be_bytes(),
                    self.l1_offset + i1 as u64 * 8,
                )?;
            } else {
                let off = self.l2.slots[i].offset + lo as u64 * 8;
                let bytes = self.l2.encode(i, lo, hi);
                write_full(&self.file, &self.path, bytes, off)?;
            }
        }
        if !self.pending_frees.is_empty() {
            if self.metadata_sync {
                sync(&self.file, &self.path)?;
            }
            let frees = std::mem::take(&mut self.pending_frees);
            for (start, len) in frees {
                self.unref_range(start, len)?;
            }
        }
        Ok(())
    }
}

impl Drop for Qcow2 {
    /// A clean close: what the guest wrote since its last FLUSH is linked
    /// in, so that nothing leaks.  vioblk flushes before it lets go of a
    /// disk anyway; errors here have nowhere to go.
    fn drop(&mut self) {
        if self.writable && !self.poisoned && self.write_back().is_ok() {
            let _ = sync(&self.file, &self.path);
        }
    }
}

impl DiskImage for Qcow2 {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        self.check_usable()?;
        check_range(&self.path, offset, buf.len(), self.size)?;
        self.read_inner(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        if !self.writable {
            return Err(DiskError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.check_usable()?;
        check_range(&self.path, offset, buf.len(), self.size)?;
        self.data_failed = false;
        let r = self.write_inner(buf, offset);
        if r.is_err() && !self.data_failed {
            // The L2 cache or the L1 table may be ahead of the file.
            self.poisoned = true;
        }
        r
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        self.check_usable()?;
        if self.writable {
            let r = self
                .write_back()
                .and_then(|()| sync(&self.file, &self.path));
            if r.is_err() {
                self.poisoned = true;
            }
            r?;
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

/// Recently used L2 tables, decoded.  Writes change the cached table and
/// mark the range dirty; [`Qcow2::write_back`] puts it on disk.  A dirty
/// slot is never evicted.
struct L2Cache {
    slots: Vec<L2Slot>,
    capacity: usize,
    entries: usize,
    clock: u64,
    /// One table's bytes, for reading and encoding.
    raw: Vec<u8>,
}

struct L2Slot {
    offset: u64,
    table: Vec<u64>,
    used: u64,
    /// Entries changed since the last write-back.
    dirty: Option<(usize, usize)>,
    /// A new table, not yet written, for this L1 index.
    new_l1: Option<usize>,
}

impl L2Cache {
    fn new(cluster_bits: u32) -> L2Cache {
        // About 4 MiB of tables: 64 of 64 KiB clusters map 32 GiB.
        let capacity = ((4usize << 20) >> cluster_bits).clamp(4, 64);
        L2Cache {
            slots: Vec::new(),
            capacity,
            entries: (1usize << cluster_bits) / 8,
            clock: 0,
            raw: Vec::new(),
        }
    }

    /// Whether bringing in the table at `offset` needs a slot that only
    /// a write-back can free.
    fn must_write_back(&self, offset: u64) -> bool {
        self.slots.len() == self.capacity
            && self.slots.iter().all(|s| s.dirty.is_some())
            && !self.slots.iter().any(|s| s.offset == offset)
    }

    /// A slot to fill: a new one, or the least recently used clean one
    /// (the caller wrote back first if there was none).
    fn victim(&mut self) -> usize {
        self.clock += 1;
        if self.slots.len() < self.capacity {
            self.slots.push(L2Slot {
                offset: u64::MAX,
                table: vec![0; self.entries],
                used: self.clock,
                dirty: None,
                new_l1: None,
            });
            return self.slots.len() - 1;
        }
        let (i, _) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.dirty.is_none())
            .min_by_key(|(_, s)| s.used)
            .expect("a clean slot: must_write_back was checked");
        self.slots[i].used = self.clock;
        i
    }

    /// Changes an entry of a cached table.
    fn set(&mut self, slot: usize, index: usize, entry: u64) {
        let s = &mut self.slots[slot];
        s.table[index] = entry;
        s.dirty = Some(match s.dirty {
            Some((lo, hi)) => (lo.min(index), hi.max(index + 1)),
            None => (index, index + 1),
        });
    }

    fn load(&mut self, file: &File, path: &str, offset: u64) -> Result<usize, DiskError> {
        self.clock += 1;
        if let Some(i) = self.slots.iter().position(|s| s.offset == offset) {
            self.slots[i].used = self.clock;
            return Ok(i);
        }
        let i = self.victim();
        self.slots[i].offset = u64::MAX;
        self.raw.resize(self.entries * 8, 0);
        read_full(file, path, &mut self.raw, offset)?;
        be64s(&self.raw, &mut self.slots[i].table);
        self.slots[i].offset = offset;
        Ok(i)
    }

    /// A new, empty table for L1 index `l1_index`; dirty until written.
    fn insert_new(&mut self, offset: u64, l1_index: usize) -> usize {
        let i = self.victim();
        let s = &mut self.slots[i];
        s.table.fill(0);
        s.offset = offset;
        s.dirty = Some((0, 0));
        s.new_l1 = Some(l1_index);
        i
    }

    /// Entries `lo..hi` of a slot, big-endian.
    fn encode(&mut self, slot: usize, lo: usize, hi: usize) -> &[u8] {
        self.raw.resize(self.entries * 8, 0);
        for (c, e) in self
            .raw
            .chunks_exact_mut(8)
            .zip(&self.slots[slot].table[lo..hi])
        {
            c.copy_from_slice(&e.to_be_bytes());
        }
        &self.raw[..(hi - lo) * 8]
    }
}

/// Inflates compressed clusters, keeping the last one: a guest reading a
/// compressed cluster 4 KiB at a time inflates it once.
struct Inflater {
    z: Decompress,
    input: Vec<u8>,
    out: Vec<u8>,
    /// The L2 entry `out` holds.
    key: Option<u64>,
}

impl Inflater {
    fn new() -> Inflater {
        Inflater {
            z: Decompress::new(false),
            input: Vec::new(),
            out: Vec::new(),
            key: None,
        }
    }

    /// A compressed entry's host bytes: from its offset to the end of its
    /// last 512-byte sector.  Returns (offset, length).
    fn host_bytes(e: u64, cluster_bits: u32) -> (u64, u64) {
        let x = 62 - (cluster_bits - 8);
        let off = e & ((1u64 << x) - 1);
        let sectors = ((e >> x) & ((1u64 << (cluster_bits - 8)) - 1)) + 1;
        let end = (off & !511) + sectors * 512;
        (off, end - off)
    }

    /// The whole sectors a compressed entry occupies, as qemu frees them.
    fn host_range(&self, e: u64, cluster_bits: u32) -> (u64, u64) {
        let (off, len) = Self::host_bytes(e, cluster_bits);
        let start = off & !511;
        (start, len + (off - start))
    }

    fn cluster(
        &mut self,
        file: &File,
        path: &str,
        e: u64,
        cluster_bits: u32,
    ) -> Result<&[u8], DiskError> {
        let cs = 1usize << cluster_bits;
        if self.key == Some(e) {
            return Ok(&self.out);
        }
        self.key = None;
        let (off, len) = Self::host_bytes(e, cluster_bits);
        if off < cs as u64 {
            return Err(DiskError::Corrupt {
                path: path.to_string(),
                what: "compressed cluster offset",
                value: off,
            });
        }
        self.input.resize(len as usize, 0);
        // The last sector may run past the end of the file: zeros then.
        read_full(file, path, &mut self.input, off)?;
        self.out.resize(cs, 0);
        self.z.reset(false);
        let r = self
            .z
            .decompress(&self.input, &mut self.out, FlushDecompress::Finish);
        if r.is_err() || self.z.total_out() != cs as u64 {
            return Err(DiskError::Inflate {
                path: path.to_string(),
                offset: off,
            });
        }
        self.key = Some(e);
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests;
