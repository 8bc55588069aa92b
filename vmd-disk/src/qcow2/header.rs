//! The qcow2 header (qemu's docs/interop/qcow2.txt), read and checked
//! against the file before anything trusts it, and written by
//! [`create`] as vmd's `virtio_qcow2_create` lays an image out.

use std::fs::File;
use std::path::PathBuf;

use crate::{read_full, resolve_backing, write_full, DiskError, Format, QCOW2_MAGIC};

/// The v2 header's length; v3 adds the feature words, refcount order and
/// header length.
pub const V2_HEADER_LEN: u64 = 72;
/// vmd's v3 header (no compression type field).
pub const V3_HEADER_LEN: u64 = 104;
/// qemu's limits: an L1 table of at most 32 MiB, a refcount table of at
/// most 8 MiB, a backing file name of at most 1023 bytes.
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub const MAX_BACKING_NAME: u64 = 1023;
/// Cluster sizes qemu accepts: 512 bytes to 2 MiB.
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;

/// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// The fields vmd-disk uses, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_offset: u64,
    pub backing_len: u32,
    pub cluster_bits: u32,
    /// The guest-visible size.
    pub size: u64,
    pub l1_size: u32,
    pub l1_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub incompatible: u64,
    pub autoclear: u64,
    /// The backing file's format from its header extension, if named.
    pub backing_format: Option<Format>,
}

/// `off..off + len` lies inside `0..limit`.
pub(crate) fn fits(off: u64, len: u64, limit: u64) -> bool {
    matches!(off.checked_add(len), Some(end) if end <= limit)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Header {
    /// Reads and checks the header of an opened qcow2 file: every offset
    /// and length must lie inside the file and within qemu's limits, and
    /// what vmd-disk does not implement is refused here, at open.
    pub fn read(file: &File, path: &str) -> Result<Header, DiskError> {
        let file_len = file
            .metadata()
            .map_err(|e| DiskError::io(path, "stat", 0, e))?
            .len();
        let bad = |field: &'static str, value: u64| DiskError::BadHeader {
            path: path.to_string(),
            field,
            value,
        };
        let unsupported = |what: &'static str, value: u64| DiskError::Unsupported {
            path: path.to_string(),
            what,
            value,
        };
        if file_len < V2_HEADER_LEN {
            if file_len >= 4 {
                let mut m = [0u8; 4];
                read_full(file, path, &mut m, 0)?;
                if m != QCOW2_MAGIC {
                    return Err(DiskError::NotQcow2 {
                        path: path.to_string(),
                    });
                }
            }
            return Err(bad("file size", file_len));
        }
        let mut h = [0u8; V3_HEADER_LEN as usize + 8];
        let n = (file_len.min(h.len() as u64)) as usize;
        read_full(file, path, &mut h[..n], 0)?;
        if h[..4] != QCOW2_MAGIC {
            return Err(DiskError::NotQcow2 {
                path: path.to_string(),
            });
        }
        let version = be32(&h, 4);
        if version != 2 && version != 3 {
            return Err(unsupported("version", version.into()));
        }
        let cluster_bits = be32(&h, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(bad("cluster_bits", cluster_bits.into()));
        }
        let cs = 1u64 << cluster_bits;
        let crypt = be32(&h, 32);
        if crypt != 0 {
            return Err(unsupported("encryption method", crypt.into()));
        }

        let (incompatible, autoclear, header_len) = if version == 3 {
            if file_len < V3_HEADER_LEN {
                return Err(bad("file size", file_len));
            }
            let header_len = u64::from(be32(&h, 100));
            if header_len < V3_HEADER_LEN || header_len > cs || header_len & 7 != 0 {
                return Err(bad("header_length", header_len));
            }
            let order = be32(&h, 96);
            if order != 4 {
                return Err(unsupported("refcount order", order.into()));
            }
            (be64(&h, 72), be64(&h, 88), header_len)
        } else {
            (0, 0, V2_HEADER_LEN)
        };
        if incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(unsupported(
                "external data file, feature",
                INCOMPAT_DATA_FILE,
            ));
        }
        if incompatible & INCOMPAT_COMPRESSION != 0 {
            // Only zlib (type 0) is read; the bit says it is something else.
            let ty = if header_len > V3_HEADER_LEN {
                h[104]
            } else {
                0
            };
            return Err(unsupported("compression type", ty.into()));
        }
        if incompatible & INCOMPAT_EXTL2 != 0 {
            return Err(unsupported("extended L2 entries, feature", INCOMPAT_EXTL2));
        }
        let unknown = incompatible & !(INCOMPAT_DIRTY | INCOMPAT_CORRUPT);
        if unknown != 0 {
            return Err(unsupported("incompatible features", unknown));
        }

        let size = be64(&h, 24);
        let l1_size = be32(&h, 36);
        let l1_offset = be64(&h, 40);
        let l1_bytes = u64::from(l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(bad("l1_size", l1_size.into()));
        }
        // Each L1 entry maps one L2 table of cs / 8 clusters.
        let covered = u128::from(l1_size) * u128::from(cs / 8) * u128::from(cs);
        if u128::from(size) > covered {
            return Err(bad("size", size));
        }
        if l1_size > 0
            && (l1_offset & (cs - 1) != 0 || l1_offset == 0 || !fits(l1_offset, l1_bytes, file_len))
        {
            return Err(bad("l1_table_offset", l1_offset));
        }
        let rt_offset = be64(&h, 48);
        let rt_clusters = be32(&h, 56);
        let rt_bytes = u64::from(rt_clusters) << cluster_bits;
        if rt_clusters == 0 || rt_bytes > MAX_REFTABLE_BYTES {
            return Err(bad("refcount_table_clusters", rt_clusters.into()));
        }
        if rt_offset & (cs - 1) != 0 || rt_offset == 0 || !fits(rt_offset, rt_bytes, file_len) {
            return Err(bad("refcount_table_offset", rt_offset));
        }
        let backing_offset = be64(&h, 8);
        let backing_len = be32(&h, 16);
        if backing_len > 0 {
            if u64::from(backing_len) > MAX_BACKING_NAME {
                return Err(bad("backing_file_size", backing_len.into()));
            }
            if backing_offset < V2_HEADER_LEN
                || !fits(backing_offset, backing_len.into(), cs.min(file_len))
            {
                return Err(bad("backing_file_offset", backing_offset));
            }
        }
        let nb_snapshots = be32(&h, 60);

        // Extensions end where the backing file name starts (vmd writes the
        // name right after the header, with no end marker), as qemu reads.
        let ext_end = if backing_len > 0 {
            backing_offset
        } else {
            cs.min(file_len)
        };
        let backing_format = read_extensions(file, path, header_len, ext_end)?;
        Ok(Header {
            version,
            backing_offset,
            backing_len,
            cluster_bits,
            size,
            l1_size,
            l1_offset,
            refcount_table_offset: rt_offset,
            refcount_table_clusters: rt_clusters,
            nb_snapshots,
            incompatible,
            autoclear,
            backing_format,
        })
    }
}

/// Walks the header extensions (inside the first cluster) for the backing
/// file format; the others are not needed to read or write the image.
fn read_extensions(
    file: &File,
    path: &str,
    start: u64,
    limit: u64,
) -> Result<Option<Format>, DiskError> {
    let mut at = start;
    let mut format = None;
    while at + 8 <= limit {
        let mut th = [0u8; 8];
        read_full(file, path, &mut th, at)?;
        let ty = be32(&th, 0);
        let len = u64::from(be32(&th, 4));
        if ty == EXT_END {
            break;
        }
        let data = at + 8;
        if data + len > limit {
            return Err(DiskError::BadHeader {
                path: path.to_string(),
                field: "header extension length",
                value: len,
            });
        }
        if ty == EXT_BACKING_FORMAT && len <= 16 {
            let mut name = [0u8; 16];
            read_full(file, path, &mut name[..len as usize], data)?;
            format = match &name[..len as usize] {
                b"raw" => Some(Format::Raw),
                b"qcow2" => Some(Format::Qcow2),
                _ => None,
            };
        }
        at = data + len.div_ceil(8) * 8;
    }
    Ok(format)
}

/// A backing file as a qcow2 header names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    /// The name stored in the header.
    pub name: String,
    /// The name resolved relative to the image's directory.
    pub path: PathBuf,
    /// From the backing format extension; `None` means probe.
    pub format: Option<Format>,
}

/// `virtio_qcow2_get_base`: the backing file named by an opened qcow2
/// image, for the parent to open next.  `path` is the image's own path.
pub fn backing_file(file: &File, path: &str) -> Result<Option<Backing>, DiskError> {
    let h = Header::read(file, path)?;
    if h.backing_len == 0 {
        return Ok(None);
    }
    let mut name = vec![0u8; h.backing_len as usize];
    read_full(file, path, &mut name, h.backing_offset)?;
    let name = String::from_utf8(name).map_err(|_| DiskError::BadHeader {
        path: path.to_string(),
        field: "backing file name, length",
        value: h.backing_len.into(),
    })?;
    if name.contains('\0') {
        return Err(DiskError::BadHeader {
            path: path.to_string(),
            field: "backing file name, length",
            value: h.backing_len.into(),
        });
    }
    Ok(Some(Backing {
        path: resolve_backing(path, &name),
        name,
        format: h.backing_format,
    }))
}

/// vmd's cluster size for new images: 64 KiB.
pub const CREATE_CLUSTER_BITS: u32 = 16;

/// `virtio_qcow2_create`: lays out a new, empty qcow2 v3 image in `file`
/// (which must be empty): the header (and the backing name right after
/// it), the L1 table at the next cluster, the refcount table after the L1
/// table, one refcount block after that, every metadata cluster counted
/// once.  64 KiB clusters, 16-bit refcounts, no extensions.
pub fn create(file: &File, path: &str, size: u64, backing: Option<&str>) -> Result<(), DiskError> {
    create_with(file, path, size, backing, CREATE_CLUSTER_BITS)
}

/// [`create`] with another cluster size (for tests of small clusters).
pub(crate) fn create_with(
    file: &File,
    path: &str,
    size: u64,
    backing: Option<&str>,
    bits: u32,
) -> Result<(), DiskError> {
    let cs = 1u64 << bits;
    let too_big = || DiskError::Full {
        path: path.to_string(),
        what: "disk size too large for qcow2",
    };
    if size == 0 {
        return Err(DiskError::BadHeader {
            path: path.to_string(),
            field: "size",
            value: 0,
        });
    }
    let per_l2 = (cs / 8) * cs;
    let l1_size = size.div_ceil(per_l2);
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(too_big());
    }
    let name = backing.unwrap_or("");
    if name.len() as u64 > MAX_BACKING_NAME {
        return Err(DiskError::BadHeader {
            path: path.to_string(),
            field: "backing_file_size",
            value: name.len() as u64,
        });
    }
    let l1_offset = cs;
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    let rt_offset = l1_offset + l1_clusters * cs;
    let rb_offset = rt_offset + cs;
    let clusters = rb_offset / cs + 1;
    if clusters > cs / 2 {
        // One refcount block must count the metadata (always so for
        // 64 KiB clusters).
        return Err(too_big());
    }

    let mut h = vec![0u8; V3_HEADER_LEN as usize + name.len()];
    h[0..4].copy_from_slice(&QCOW2_MAGIC);
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    if !name.is_empty() {
        h[8..16].copy_from_slice(&V3_HEADER_LEN.to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
    }
    h[20..24].copy_from_slice(&bits.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes());
    h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
    h[48..56].copy_from_slice(&rt_offset.to_be_bytes());
    h[56..60].copy_from_slice(&1u32.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&(V3_HEADER_LEN as u32).to_be_bytes());
    h[V3_HEADER_LEN as usize..].copy_from_slice(name.as_bytes());

    let mut rb = vec![0u8; (clusters * 2) as usize];
    for c in rb.chunks_mut(2) {
        c.copy_from_slice(&1u16.to_be_bytes());
    }
    // The L1 table stays zero: the file's hole.
    file.set_len(rb_offset + cs)
        .map_err(|e| DiskError::io(path, "truncate", rb_offset + cs, e))?;
    write_full(file, path, &h, 0)?;
    write_full(file, path, &rb_offset.to_be_bytes(), rt_offset)?;
    write_full(file, path, &rb, rb_offset)?;
    Ok(())
}
