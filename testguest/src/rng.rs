//! virtio-rng (viornd): one queue of device-writable buffers.
use crate::dma;
use crate::virtio::{Error, Transport, Virtqueue, DEV_RNG, D_WRITE};

pub struct Rng {
    pub t: Transport,
    pub q: Virtqueue,
}

impl Rng {
    pub fn open() -> Result<Rng, Error> {
        let t = Transport::find(DEV_RNG, 0)?;
        t.begin(0)?;
        let q = t.queue(0, 64)?;
        t.driver_ok();
        Ok(Rng { t, q })
    }

    /// Fills `len` bytes at `buf`; returns how many the device wrote.
    pub fn read(&mut self, buf: u64, len: u32) -> Option<u32> {
        self.q.set_desc(0, buf, len, D_WRITE, 0);
        self.q.push(0);
        self.q.notify();
        self.q.wait_used(2000).map(|(_, n)| n)
    }
}

/// `rng`: two reads of 64 bytes must each be non-constant and differ.
pub fn cmd_rng() {
    let mut rng = match Rng::open() {
        Ok(r) => r,
        Err(e) => return println!("rng: error: {e}"),
    };
    let a = dma::alloc(64, 64);
    let b = dma::alloc(64, 64);
    let (na, nb) = (rng.read(a, 64), rng.read(b, 64));
    let (Some(na), Some(nb)) = (na, nb) else {
        return println!("rng: error: no answer from the device");
    };
    let (da, db) = (dma::bytes(a, na as u64), dma::bytes(b, nb as u64));
    let varied = |d: &[u8]| d.iter().any(|&x| x != d[0]);
    if na == 0 || nb == 0 {
        println!("rng: error: empty reads ({na}, {nb})");
    } else if !varied(da) || !varied(db) {
        println!("rng: error: constant data");
    } else if da == db {
        println!("rng: error: the same data twice");
    } else {
        println!("rng: ok");
    }
}
