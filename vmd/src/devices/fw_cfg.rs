//! QEMU's firmware configuration interface as vmd implements it
//! (fw_cfg.c 1.11), for SeaBIOS.
//!
//! Ports: the selector at 0x510 (write), the data port at 0x511 (one byte
//! of the selected item per read, advancing; 0 past the end), and the DMA
//! address at 0x514 (high half) / 0x518 (low half), each written as a
//! big-endian 32-bit value; writing the low half runs the DMA request.
//! Register the device at [`FW_CFG_IO_SELECT`] for [`FW_CFG_PORTS`] ports;
//! the ports in between behave as unclaimed.
//!
//! Items: 0x0000 the signature "QEMU", 0x0001 the ID 3 (traditional
//! interface + DMA), 0x0004 NOGRAPHIC = 1 (a 16-bit 1), 0x0019 the file
//! directory (big-endian count, then {u32 size, u16 select, u16 reserved,
//! char name[56]} big-endian, in insertion order), files from 0x0020 in
//! insertion order.  Any other selector selects nothing (reads give 0).
//!
//! DMA: a `{u32 control, u32 length, u64 address}` big-endian descriptor
//! in guest memory.  SELECT (0x08) selects the item in control bits
//! 31..16 first; READ (0x02) copies up to `length` bytes of what is left
//! of the item to `address` and, as vmd does, zero-fills the rest of the
//! buffer; SKIP (0x04) advances; WRITE (0x10) is refused with ERROR
//! (0x01).  Each operation advances the item by the bytes it covered.
//! Control is written back as 0, or ERROR.  If the descriptor cannot be
//! read nothing is written back and the address is kept.
//!
//! Reading 0x514 / 0x518 returns vmd's view of the DMA signature "QEMU
//! CFG": the host's 64-bit big-endian value split into halves, so on
//! amd64 a 32-bit read of 0x514 returns the bytes " CFG" and of 0x518
//! "QEMU" (QEMU itself returns them the other way round).
use crate::devices::bus::{all_ones, PioDevice};
use crate::devices::pci::PciBus;

pub const FW_CFG_IO_SELECT: u16 = 0x510;
pub const FW_CFG_IO_DATA: u16 = 0x511;
pub const FW_CFG_IO_DMA_ADDR_HIGH: u16 = 0x514;
pub const FW_CFG_IO_DMA_ADDR_LOW: u16 = 0x518;
/// Ports to register at [`FW_CFG_IO_SELECT`]: 0x510–0x518.
pub const FW_CFG_PORTS: u16 = FW_CFG_IO_DMA_ADDR_LOW - FW_CFG_IO_SELECT + 1;

pub const FW_CFG_SIGNATURE: u16 = 0x0000;
pub const FW_CFG_ID: u16 = 0x0001;
pub const FW_CFG_NOGRAPHIC: u16 = 0x0004;
pub const FW_CFG_FILE_DIR: u16 = 0x0019;
pub const FW_CFG_FILE_FIRST: u16 = 0x0020;

/// "QEMU CFG".
pub const FW_CFG_DMA_SIGNATURE: u64 = 0x5145_4d55_2043_4647;

pub const FW_CFG_DMA_ERROR: u32 = 0x01;
pub const FW_CFG_DMA_READ: u32 = 0x02;
pub const FW_CFG_DMA_SKIP: u32 = 0x04;
pub const FW_CFG_DMA_SELECT: u32 = 0x08;
pub const FW_CFG_DMA_WRITE: u32 = 0x10;

/// Size of a file name field, terminating NUL included.
pub const FW_CFG_FILE_NAME_LEN: usize = 56;
/// Size of a file directory entry.
pub const FW_CFG_FILE_ENTRY_LEN: usize = 64;

/// e820 entry types (`BIOS_MAP_FREE`, `BIOS_MAP_RES`).
pub const BIOS_MAP_FREE: u32 = 1;
pub const BIOS_MAP_RES: u32 = 2;

/// virtio subsystem IDs vmd's PCI devices carry, used to find the boot
/// device (`PCI_PRODUCT_VIRTIO_*`).
pub const PCI_PRODUCT_VIRTIO_NETWORK: u16 = 1;
pub const PCI_PRODUCT_VIRTIO_BLOCK: u16 = 2;
pub const PCI_PRODUCT_VIRTIO_SCSI: u16 = 8;

/// Guest memory as fw_cfg DMA needs it: copies by guest-physical address
/// that fail (false) when the span is not backed.
pub trait DmaMemory: Send {
    fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> bool;
    fn write_gpa(&self, gpa: u64, data: &[u8]) -> bool;
}

impl DmaMemory for vmm_sys::GuestMemory {
    fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.read(gpa, buf).is_ok()
    }

    fn write_gpa(&self, gpa: u64, data: &[u8]) -> bool {
        self.write(gpa, data).is_ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FwCfgError {
    #[error("fw_cfg: file {0} exists")]
    FileExists(String),
    #[error("fw_cfg: file name too long")]
    NameTooLong,
    #[error("fw_cfg: too many files")]
    TooManyFiles,
}

/// The boot device requested for the VM (`vmc_bootdevice`, `vmctl start
/// -B`, vm.conf's `boot device`); `Auto` writes no `bootorder` file.
pub use vmd_proto::config::BootDevice;

/// The subsystem ID of the PCI device that boots.
fn boot_subsys_id(dev: BootDevice) -> Option<u16> {
    match dev {
        BootDevice::Auto => None,
        BootDevice::Disk => Some(PCI_PRODUCT_VIRTIO_BLOCK),
        BootDevice::Cdrom => Some(PCI_PRODUCT_VIRTIO_SCSI),
        BootDevice::Net => Some(PCI_PRODUCT_VIRTIO_NETWORK),
    }
}

/// The `bootorder` contents for booting `dev` in PCI slot `slot`, NUL
/// terminated as vmd stores it.  The slot is printed in decimal, as vmd
/// does.  Net boot is not implemented: "HALT".
pub fn bootorder(dev: BootDevice, slot: u8) -> Vec<u8> {
    let s = match dev {
        BootDevice::Disk => format!("/pci@i0cf8/*@{slot}\nHALT"),
        BootDevice::Cdrom => format!("/pci@i0cf8/*@{slot}/*@0/*@0,40000100\nHALT"),
        BootDevice::Net | BootDevice::Auto => "HALT".to_string(),
    };
    let mut v = s.into_bytes();
    v.push(0);
    v
}

/// `etc/e820` contents: packed little-endian `{u64 addr, u64 size, u32
/// type}` entries (vmd's `bios_memmap_t`), from (addr, size, type).
pub fn e820_bytes(entries: &[(u64, u64, u32)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(entries.len() * 20);
    for &(addr, size, ty) in entries {
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(&ty.to_le_bytes());
    }
    v
}

struct FwCfgFile {
    name: String,
    selector: u16,
    data: Vec<u8>,
}

/// The fw_cfg device.  `M` is the guest memory DMA goes to.
pub struct FwCfg<M: DmaMemory> {
    mem: M,
    files: Vec<FwCfgFile>,
    /// The selected item and how far it has been read.
    data: Vec<u8>,
    offset: usize,
    dma_addr: u64,
}

impl<M: DmaMemory> FwCfg<M> {
    /// An fw_cfg with no files.
    pub fn new(mem: M) -> Self {
        FwCfg {
            mem,
            files: Vec::new(),
            data: Vec::new(),
            offset: 0,
            dma_addr: 0,
        }
    }

    /// The files vmd's `fw_cfg_init` adds, in its order: `etc/e820` from
    /// the memory map, `etc/screen-and-debug` (0, so SeaBIOS does not
    /// print each character twice), and `bootorder` for `boot` when a
    /// device of that kind sits on `pci`.
    pub fn vmd_init(
        &mut self,
        e820: &[(u64, u64, u32)],
        boot: BootDevice,
        pci: &PciBus,
    ) -> Result<(), FwCfgError> {
        self.add_e820(e820)?;
        self.add_screen_and_debug()?;
        if let Some(slot) = boot_subsys_id(boot).and_then(|id| pci.find_first_device(id)) {
            self.add_file("bootorder", &bootorder(boot, slot))?;
        }
        Ok(())
    }

    /// Adds a file under the next selector (from 0x0020) and returns it.
    /// Names must be unique and shorter than 56 bytes.
    pub fn add_file(&mut self, name: &str, data: &[u8]) -> Result<u16, FwCfgError> {
        if self.files.iter().any(|f| f.name == name) {
            return Err(FwCfgError::FileExists(name.to_string()));
        }
        if name.len() >= FW_CFG_FILE_NAME_LEN {
            return Err(FwCfgError::NameTooLong);
        }
        let selector = u16::try_from(self.files.len())
            .ok()
            .and_then(|n| FW_CFG_FILE_FIRST.checked_add(n))
            .ok_or(FwCfgError::TooManyFiles)?;
        self.files.push(FwCfgFile {
            name: name.to_string(),
            selector,
            data: data.to_vec(),
        });
        Ok(selector)
    }

    /// `etc/e820` from (addr, size, type) entries.
    pub fn add_e820(&mut self, entries: &[(u64, u64, u32)]) -> Result<u16, FwCfgError> {
        self.add_file("etc/e820", &e820_bytes(entries))
    }

    /// `etc/screen-and-debug` = 0 (u32).
    pub fn add_screen_and_debug(&mut self) -> Result<u16, FwCfgError> {
        self.add_file("etc/screen-and-debug", &0u32.to_le_bytes())
    }

    /// `etc/sercon-port` (not in vmd): SeaBIOS's serial console on `port`
    /// (a 16-bit little-endian integer; SeaBIOS reads 1-, 2-, 4- or
    /// 8-byte files as integers).  Makes a SeaBIOS built without a serial
    /// debug port, like Debian's, print on COM1.
    pub fn add_sercon_port(&mut self, port: u16) -> Result<u16, FwCfgError> {
        self.add_file("etc/sercon-port", &port.to_le_bytes())
    }

    /// `etc/show-boot-menu` (not in vmd), 16-bit: 0 skips SeaBIOS's boot
    /// menu prompt and its wait.
    pub fn add_show_boot_menu(&mut self, value: u16) -> Result<u16, FwCfgError> {
        self.add_file("etc/show-boot-menu", &value.to_le_bytes())
    }

    /// (name, selector, size) of each file, in insertion order.
    pub fn files(&self) -> impl Iterator<Item = (&str, u16, usize)> {
        self.files
            .iter()
            .map(|f| (f.name.as_str(), f.selector, f.data.len()))
    }

    pub fn memory(&self) -> &M {
        &self.mem
    }

    fn reset_state(&mut self) {
        self.data = Vec::new();
        self.offset = 0;
    }

    fn file_dir(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + self.files.len() * FW_CFG_FILE_ENTRY_LEN);
        v.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for f in &self.files {
            v.extend_from_slice(&(f.data.len() as u32).to_be_bytes());
            v.extend_from_slice(&f.selector.to_be_bytes());
            v.extend_from_slice(&0u16.to_be_bytes());
            let mut name = [0u8; FW_CFG_FILE_NAME_LEN];
            name[..f.name.len()].copy_from_slice(f.name.as_bytes());
            v.extend_from_slice(&name);
        }
        v
    }

    /// Selects an item (selector port or DMA SELECT); reading restarts.
    pub fn select(&mut self, selector: u16) {
        self.reset_state();
        self.data = match selector {
            FW_CFG_SIGNATURE => b"QEMU".to_vec(),
            FW_CFG_ID => 3u32.to_le_bytes().to_vec(),
            FW_CFG_NOGRAPHIC => 1u16.to_le_bytes().to_vec(),
            FW_CFG_FILE_DIR => self.file_dir(),
            _ => match self.files.iter().find(|f| f.selector == selector) {
                Some(f) => f.data.clone(),
                None => {
                    log::debug!("fw_cfg: unhandled selector {selector:x}");
                    Vec::new()
                }
            },
        };
    }

    fn read_byte(&mut self) -> u8 {
        match self.data.get(self.offset) {
            Some(&b) => {
                self.offset += 1;
                if self.offset == self.data.len() {
                    self.reset_state();
                }
                b
            }
            None => 0,
        }
    }

    /// Runs one DMA request (vmd's `fw_cfg_handle_dma`); returns the
    /// control word to write back.
    fn handle_dma(&mut self, control: u32, length: u32, address: u64) -> u32 {
        let mut result = 0;
        if control & FW_CFG_DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let left = self.data.len().saturating_sub(self.offset);
        let len = left.min(length as usize);
        if control & FW_CFG_DMA_WRITE != 0 {
            result |= FW_CFG_DMA_ERROR;
        } else if control & FW_CFG_DMA_READ != 0 {
            let chunk = &self.data[self.offset..self.offset + len];
            if !self.mem.write_gpa(address, chunk) {
                log::warn!("fw_cfg: dma write to 0x{address:x} failed");
                result |= FW_CFG_DMA_ERROR;
            }
            // A buffer running past the top of the address space is not
            // memory either.
            if len < length as usize
                && !address
                    .checked_add(len as u64)
                    .is_some_and(|rest| self.zero_fill(rest, length as usize - len))
            {
                log::warn!("fw_cfg: dma write to 0x{address:x} failed");
                result |= FW_CFG_DMA_ERROR;
            }
        }
        self.offset += len;
        if self.offset == self.data.len() {
            self.reset_state();
        }
        result
    }

    fn zero_fill(&self, mut gpa: u64, mut len: usize) -> bool {
        const ZEROS: [u8; 4096] = [0; 4096];
        while len > 0 {
            let n = len.min(ZEROS.len());
            if !self.mem.write_gpa(gpa, &ZEROS[..n]) {
                return false;
            }
            len -= n;
            if len > 0 {
                let Some(next) = gpa.checked_add(n as u64) else {
                    return false;
                };
                gpa = next;
            }
        }
        true
    }

    /// Reads the descriptor at the DMA address, runs it, writes back the
    /// control word.
    fn dma(&mut self) {
        let mut desc = [0u8; 16];
        if !self.mem.read_gpa(self.dma_addr, &mut desc) {
            return;
        }
        let control = u32::from_be_bytes(desc[0..4].try_into().unwrap());
        let length = u32::from_be_bytes(desc[4..8].try_into().unwrap());
        let address = u64::from_be_bytes(desc[8..16].try_into().unwrap());
        let result = self.handle_dma(control, length, address);
        if !self.mem.write_gpa(self.dma_addr, &result.to_be_bytes()) {
            return;
        }
        self.dma_addr = 0;
    }

    /// vmd's signature halves: `htobe64(signature)` as the host reads it.
    fn dma_signature(&self) -> u64 {
        u64::from_ne_bytes(FW_CFG_DMA_SIGNATURE.to_be_bytes())
    }
}

const SELECT: u16 = 0;
const DATA: u16 = FW_CFG_IO_DATA - FW_CFG_IO_SELECT;
const DMA_HIGH: u16 = FW_CFG_IO_DMA_ADDR_HIGH - FW_CFG_IO_SELECT;
const DMA_LOW: u16 = FW_CFG_IO_DMA_ADDR_LOW - FW_CFG_IO_SELECT;

impl<M: DmaMemory> PioDevice for FwCfg<M> {
    fn pio_read(&mut self, offset: u16, size: u8) -> u32 {
        match offset {
            SELECT => {
                log::warn!("fw_cfg: read from selector port unsupported");
                0
            }
            DATA => u32::from(self.read_byte()),
            DMA_HIGH | DMA_LOW if size != 4 => 0,
            DMA_HIGH => (self.dma_signature() >> 32) as u32,
            DMA_LOW => self.dma_signature() as u32,
            _ => all_ones(size),
        }
    }

    fn pio_write(&mut self, offset: u16, size: u8, value: u32) {
        match offset {
            SELECT => self.select((value & all_ones(size)) as u16),
            DATA => log::debug!("fw_cfg: discarding data written to data port"),
            DMA_HIGH | DMA_LOW if size != 4 => self.dma_addr = 0,
            DMA_HIGH => self.dma_addr = u64::from(u32::from_be(value)) << 32,
            DMA_LOW => {
                self.dma_addr |= u64::from(u32::from_be(value));
                self.dma();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::PciDeviceConfig;
    use std::sync::{Arc, Mutex};

    /// Guest RAM from 0 to the vector's length.
    #[derive(Clone)]
    struct MockRam(Arc<Mutex<Vec<u8>>>);

    impl MockRam {
        fn new(len: usize) -> Self {
            MockRam(Arc::new(Mutex::new(vec![0xAA; len])))
        }
        fn get(&self, gpa: u64, len: usize) -> Vec<u8> {
            self.0.lock().unwrap()[gpa as usize..gpa as usize + len].to_vec()
        }
        fn put(&self, gpa: u64, data: &[u8]) {
            self.0.lock().unwrap()[gpa as usize..gpa as usize + data.len()].copy_from_slice(data);
        }
    }

    impl DmaMemory for MockRam {
        fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> bool {
            let m = self.0.lock().unwrap();
            let end = (gpa as usize).checked_add(buf.len());
            match end.and_then(|end| m.get(gpa as usize..end)) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
        fn write_gpa(&self, gpa: u64, data: &[u8]) -> bool {
            let mut m = self.0.lock().unwrap();
            let end = (gpa as usize).checked_add(data.len());
            match end.and_then(|end| m.get_mut(gpa as usize..end)) {
                Some(s) => {
                    s.copy_from_slice(data);
                    true
                }
                None => false,
            }
        }
    }

    fn fw() -> (FwCfg<MockRam>, MockRam) {
        let ram = MockRam::new(0x10000);
        (FwCfg::new(ram.clone()), ram)
    }

    fn read_item(f: &mut FwCfg<MockRam>, selector: u16, len: usize) -> Vec<u8> {
        f.pio_write(SELECT, 2, u32::from(selector));
        (0..len).map(|_| f.pio_read(DATA, 1) as u8).collect()
    }

    /// Writes a descriptor at `at` and triggers it through the ports.
    fn dma(f: &mut FwCfg<MockRam>, ram: &MockRam, at: u64, control: u32, len: u32, addr: u64) {
        let mut d = Vec::new();
        d.extend_from_slice(&control.to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&addr.to_be_bytes());
        ram.put(at, &d);
        f.pio_write(DMA_HIGH, 4, ((at >> 32) as u32).to_be());
        f.pio_write(DMA_LOW, 4, (at as u32).to_be());
    }

    fn control_at(ram: &MockRam, at: u64) -> u32 {
        u32::from_be_bytes(ram.get(at, 4).try_into().unwrap())
    }

    #[test]
    fn signature_id_and_nographic() {
        let (mut f, _) = fw();
        assert_eq!(read_item(&mut f, FW_CFG_SIGNATURE, 4), b"QEMU");
        // Past the end reads 0.
        assert_eq!(f.pio_read(DATA, 1), 0);
        assert_eq!(read_item(&mut f, FW_CFG_ID, 4), [3, 0, 0, 0]);
        assert_eq!(read_item(&mut f, FW_CFG_NOGRAPHIC, 3), [1, 0, 0]);
        assert_eq!(read_item(&mut f, 0x0e, 2), [0, 0]);
        // A byte selector write takes the low byte; reselecting restarts.
        f.pio_write(SELECT, 1, 0xff00);
        assert_eq!(f.pio_read(DATA, 1), u32::from(b'Q'));
        f.pio_write(SELECT, 2, 0);
        assert_eq!(f.pio_read(DATA, 4), u32::from(b'Q'));
        assert_eq!(f.pio_read(SELECT, 2), 0);
        // Writes to the data port change nothing.
        f.pio_write(DATA, 1, 0x55);
        assert_eq!(f.pio_read(DATA, 1), u32::from(b'E'));
    }

    #[test]
    fn directory_lists_files_in_insertion_order() {
        let (mut f, _) = fw();
        assert_eq!(f.add_file("zeta", b"z"), Ok(0x20));
        assert_eq!(f.add_file("etc/alpha", b"abc"), Ok(0x21));
        let dir = read_item(&mut f, FW_CFG_FILE_DIR, 4 + 2 * 64 + 1);
        assert_eq!(&dir[0..4], &[0, 0, 0, 2]);
        let e0 = &dir[4..68];
        assert_eq!(&e0[0..8], &[0, 0, 0, 1, 0, 0x20, 0, 0]);
        assert_eq!(&e0[8..12], b"zeta");
        assert!(e0[12..].iter().all(|&b| b == 0));
        let e1 = &dir[68..132];
        assert_eq!(&e1[0..8], &[0, 0, 0, 3, 0, 0x21, 0, 0]);
        assert_eq!(&e1[8..18], b"etc/alpha\0");
        assert_eq!(dir[132], 0);
        assert_eq!(
            f.files().collect::<Vec<_>>(),
            vec![("zeta", 0x20, 1), ("etc/alpha", 0x21, 3)]
        );
    }

    #[test]
    fn file_read_through_data_port() {
        let (mut f, _) = fw();
        let sel = f.add_file("bootorder", b"/pci@i0cf8/*@3\nHALT\0").unwrap();
        assert_eq!(read_item(&mut f, sel, 22), b"/pci@i0cf8/*@3\nHALT\0\0\0");
    }

    #[test]
    fn add_file_rejects_duplicates_and_long_names() {
        let (mut f, _) = fw();
        f.add_file("a", b"").unwrap();
        assert_eq!(
            f.add_file("a", b"x"),
            Err(FwCfgError::FileExists("a".into()))
        );
        assert_eq!(
            f.add_file(&"n".repeat(56), b""),
            Err(FwCfgError::NameTooLong)
        );
        assert_eq!(f.add_file(&"n".repeat(55), b""), Ok(0x21));
    }

    #[test]
    fn dma_select_and_read() {
        let (mut f, ram) = fw();
        let sel = f.add_file("etc/thing", b"0123456789").unwrap();
        let ctl = u32::from(sel) << 16 | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ;
        dma(&mut f, &ram, 0x100, ctl, 4, 0x1000);
        assert_eq!(control_at(&ram, 0x100), 0);
        assert_eq!(ram.get(0x1000, 5), b"0123\xAA");
        // Continue where it stopped; skip; then read past the end, which
        // zero-fills the rest of the buffer.
        dma(&mut f, &ram, 0x100, FW_CFG_DMA_SKIP, 2, 0);
        assert_eq!(control_at(&ram, 0x100), 0);
        dma(&mut f, &ram, 0x200, FW_CFG_DMA_READ, 8, 0x2000);
        assert_eq!(control_at(&ram, 0x200), 0);
        assert_eq!(ram.get(0x2000, 9), b"6789\0\0\0\0\xAA");
        // The item is used up: the port reads 0.
        assert_eq!(f.pio_read(DATA, 1), 0);
    }

    #[test]
    fn dma_write_is_an_error() {
        let (mut f, ram) = fw();
        let sel = f.add_file("etc/thing", b"abcdef").unwrap();
        let ctl = u32::from(sel) << 16 | FW_CFG_DMA_SELECT | FW_CFG_DMA_WRITE;
        dma(&mut f, &ram, 0x100, ctl, 2, 0x1000);
        assert_eq!(control_at(&ram, 0x100), FW_CFG_DMA_ERROR);
        assert_eq!(ram.get(0x1000, 2), [0xAA, 0xAA]);
        // vmd still advances past the refused bytes.
        assert_eq!(f.pio_read(DATA, 1), u32::from(b'c'));
    }

    #[test]
    fn dma_to_unbacked_memory() {
        let (mut f, ram) = fw();
        let ctl = u32::from(FW_CFG_SIGNATURE) << 16 | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ;
        dma(&mut f, &ram, 0x100, ctl, 4, 0x2_0000);
        assert_eq!(control_at(&ram, 0x100), FW_CFG_DMA_ERROR);
        // A descriptor outside RAM: nothing happens, nothing is written.
        f.pio_write(DMA_HIGH, 4, 0);
        f.pio_write(DMA_LOW, 4, 0x3_0000u32.to_be());
        assert_eq!(f.dma_addr, 0x3_0000);
        // A short access resets the address.
        f.pio_write(DMA_LOW, 2, 0);
        assert_eq!(f.dma_addr, 0);
        // A buffer running past the top of the address space, whose zero
        // fill would start beyond 2^64: an error, not an overflow.
        dma(&mut f, &ram, 0x100, ctl, 64, u64::MAX - 1);
        assert_eq!(control_at(&ram, 0x100), FW_CFG_DMA_ERROR);
    }

    #[test]
    fn dma_ports_read_vmds_signature_halves() {
        let (mut f, _) = fw();
        assert_eq!(f.pio_read(DMA_HIGH, 4).to_le_bytes(), *b" CFG");
        assert_eq!(f.pio_read(DMA_LOW, 4).to_le_bytes(), *b"QEMU");
        assert_eq!(f.pio_read(DMA_LOW, 1), 0);
        // Between the claimed ports: unclaimed.
        assert_eq!(f.pio_read(2, 1), 0xff);
    }

    #[test]
    fn builders() {
        assert_eq!(bootorder(BootDevice::Disk, 2), b"/pci@i0cf8/*@2\nHALT\0");
        assert_eq!(bootorder(BootDevice::Disk, 12), b"/pci@i0cf8/*@12\nHALT\0");
        assert_eq!(
            bootorder(BootDevice::Cdrom, 4),
            b"/pci@i0cf8/*@4/*@0/*@0,40000100\nHALT\0"
        );
        assert_eq!(bootorder(BootDevice::Net, 1), b"HALT\0");
        let e = e820_bytes(&[
            (0, 0xA0000, BIOS_MAP_FREE),
            (0x10_0000, 0x2000, BIOS_MAP_RES),
        ]);
        assert_eq!(e.len(), 40);
        assert_eq!(&e[0..8], &0u64.to_le_bytes());
        assert_eq!(&e[8..16], &0xA0000u64.to_le_bytes());
        assert_eq!(&e[16..20], &1u32.to_le_bytes());
        assert_eq!(&e[20..28], &0x10_0000u64.to_le_bytes());
        assert_eq!(&e[36..40], &2u32.to_le_bytes());

        let (mut f, _) = fw();
        let s = f.add_sercon_port(0x3f8).unwrap();
        assert_eq!(read_item(&mut f, s, 2), [0xf8, 0x03]);
        let s = f.add_show_boot_menu(0).unwrap();
        assert_eq!(read_item(&mut f, s, 2), [0, 0]);
        let s = f.add_screen_and_debug().unwrap();
        assert_eq!(read_item(&mut f, s, 4), [0, 0, 0, 0]);
    }

    #[test]
    fn vmd_init_finds_the_boot_disk_slot() {
        let mut pci = PciBus::new(0xF000_0000..=0xFFDF_FFFF);
        let dev = |subsys_id| PciDeviceConfig {
            vendor: 0x1af4,
            subsys_id,
            irq_needed: true,
            ..Default::default()
        };
        pci.add_device(&dev(4)).unwrap(); // rng, slot 1
        pci.add_device(&dev(PCI_PRODUCT_VIRTIO_NETWORK)).unwrap(); // slot 2
        pci.add_device(&dev(PCI_PRODUCT_VIRTIO_BLOCK)).unwrap(); // slot 3
        pci.add_device(&dev(PCI_PRODUCT_VIRTIO_BLOCK)).unwrap(); // slot 4

        let e820 = [(0, 0xA0000, BIOS_MAP_FREE)];
        let (mut f, _) = fw();
        f.vmd_init(&e820, BootDevice::Disk, &pci).unwrap();
        let files: Vec<_> = f.files().map(|(n, s, _)| (n.to_string(), s)).collect();
        assert_eq!(
            files,
            vec![
                ("etc/e820".to_string(), 0x20),
                ("etc/screen-and-debug".to_string(), 0x21),
                ("bootorder".to_string(), 0x22),
            ]
        );
        assert_eq!(read_item(&mut f, 0x22, 20), b"/pci@i0cf8/*@3\nHALT\0");
        assert_eq!(read_item(&mut f, 0x20, 20), e820_bytes(&e820));

        // No cdrom on the bus: no bootorder.  Net: "HALT".
        let (mut f, _) = fw();
        f.vmd_init(&e820, BootDevice::Cdrom, &pci).unwrap();
        assert_eq!(f.files().count(), 2);
        let (mut f, _) = fw();
        f.vmd_init(&e820, BootDevice::Net, &pci).unwrap();
        assert_eq!(read_item(&mut f, 0x22, 5), b"HALT\0");
    }
}
