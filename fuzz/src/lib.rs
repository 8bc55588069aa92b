//! What the fuzz targets share: a reader that turns libFuzzer's bytes into
//! the fields of a structured input, and the x86 emulator's inputs (register
//! file, guest RAM with page tables, a bus that answers from the input),
//! shaped as `vmd/src/x86/property_tests.rs` draws them, so that most
//! inputs get past the mode and page-table checks to the emulation proper.
pub mod x86;

/// Fields read off the front of the fuzzer's bytes; past the end every
/// field reads as zero, so any input is a valid one.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    fn le<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let got = self.bytes(N);
        b[..got.len()].copy_from_slice(got);
        b
    }

    pub fn u8(&mut self) -> u8 {
        self.le::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.le())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.le())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.le())
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
    /// `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.u64() % n
    }
}

/// Moves the process into an empty private directory, once, so that
/// relative paths an input names (vm.conf `include`, disks) find nothing.
pub fn empty_cwd() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = std::env::temp_dir().join(format!("vmd-fuzz-{}", std::process::id()));
        if std::fs::create_dir_all(&dir).is_ok() && std::env::set_current_dir(&dir).is_ok() {
            // Removed at once: the process stays in a deleted directory,
            // where nothing can be created or found.
            let _ = std::fs::remove_dir(&dir);
        }
    });
}

/// An unnamed scratch file on tmpfs (or the temporary directory): opened,
/// then unlinked, so nothing is left behind whatever happens.
pub fn scratch_file() -> std::fs::File {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("vmd-fuzz-{}.img", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("scratch file");
    let _ = std::fs::remove_file(&path);
    f
}

/// A disk in memory (vioblk's and the CD-ROM's image).
pub struct MemDisk(pub Vec<u8>);

impl MemDisk {
    fn range(
        &self,
        offset: u64,
        len: usize,
    ) -> Result<std::ops::Range<usize>, vmd_disk::DiskError> {
        let bad = || vmd_disk::DiskError::OutOfRange {
            path: "mem".into(),
            offset,
            len: len as u64,
            size: self.0.len() as u64,
        };
        let s = usize::try_from(offset).map_err(|_| bad())?;
        let e = s
            .checked_add(len)
            .filter(|&e| e <= self.0.len())
            .ok_or_else(bad)?;
        Ok(s..e)
    }
}

impl vmd_disk::DiskImage for MemDisk {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), vmd_disk::DiskError> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.0[r]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), vmd_disk::DiskError> {
        let r = self.range(offset, buf.len())?;
        self.0[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), vmd_disk::DiskError> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_only(&self) -> bool {
        false
    }
}
