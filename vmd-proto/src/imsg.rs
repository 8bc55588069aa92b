//! imsg(3)-style framing over a Unix stream socket, with file descriptors
//! passed as `SCM_RIGHTS`.
//!
//! Each message is a 16-byte header followed by the payload:
//!
//! | bytes | field | |
//! |---|---|---|
//! | 0..4 | `type` | u32, the [`ImsgType`](super::ImsgType) number |
//! | 4..6 | `len` | u16, header included, 16..=[`MAX_IMSGSIZE`] |
//! | 6..8 | `flags` | u16: [`IMSGF_HASFD`], and the fd count in bits 8..16 |
//! | 8..12 | `peerid` | u32, chosen by the sender (client id, vm id) |
//! | 12..16 | `pid` | u32, the sending process (0 in `compose` means ours) |
//!
//! all little-endian, like OpenBSD's `struct imsg_hdr` on amd64.
//!
//! **Descriptors.** OpenBSD's imsg carries at most one fd per message
//! (`IMSGF_HASFD`); ours may carry up to [`MAX_IMSG_FDS`] (a device process
//! on Linux gets one memfd per guest memory range), so the count travels in
//! the high byte of `flags`.  The sender passes a message's fds with the
//! `sendmsg` that carries its first byte, so they always arrive no later
//! than the message's header; the reader queues received fds in order and
//! gives each complete message the number its header declares.  A message
//! declaring more fds than have arrived, or fds that no message claims, is
//! a protocol error.  Received fds are close-on-exec (`MSG_CMSG_CLOEXEC`):
//! vmd forks and execs children and must not leak them.
//!
//! **Size.** [`MAX_IMSGSIZE`] is OpenBSD's 16384 bytes, header included,
//! for every channel; there is no fragmentation layer.  Every payload of
//! the catalogue fits: the largest, `vmop_create_params` with five paths of
//! OpenBSD's PATH_MAX (1024), encodes to well under 8 KiB.  Data that could
//! grow without bound is sent the way vmd sends it, one message per item
//! followed by a terminator (`GET_INFO_VM_DATA` .. `GET_INFO_VM_END_DATA`).
//! A payload that does not fit is refused by the sender
//! ([`ImsgError::TooLong`] from [`ImsgChannel::compose`], or
//! [`CodecError::TooLarge`](super::CodecError::TooLarge) from the codec),
//! never truncated.
//!
//! **Bounds.** A peer that sends and never reads must not make a process
//! grow without end.  Each channel bounds what it holds for its peer:
//! queued outgoing bytes ([`ImsgChannel::set_max_queued`], by default
//! [`DEFAULT_MAX_QUEUED`]; [`ImsgError::QueueFull`] from `compose`) and
//! received bytes not yet taken as messages ([`MAX_BUFFERED`];
//! [`ImsgError::InputFull`] from `fill`).  Over either bound the caller
//! drops the peer, as for a malformed message.
//!
//! **Errors.** Any violation — a length below the header or above the
//! maximum, unknown flag bits, too many fds, fds without a message, a
//! truncated control message, end of file inside a message — is an
//! [`ImsgError`] naming the problem.  The channel is then unusable: the
//! caller logs the error and drops that peer.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

/// Size of [`ImsgHdr`] on the wire.
pub const IMSG_HEADER_SIZE: usize = 16;
/// Largest message, header included (OpenBSD's `MAX_IMSGSIZE`).
pub const MAX_IMSGSIZE: usize = 16384;
/// Largest payload.
pub const MAX_IMSG_PAYLOAD: usize = MAX_IMSGSIZE - IMSG_HEADER_SIZE;
/// Most descriptors one message may carry.
pub const MAX_IMSG_FDS: usize = 32;
/// Default bound of the bytes queued for a peer (see [`ImsgChannel::set_max_queued`]).
pub const DEFAULT_MAX_QUEUED: usize = 16 << 20;
/// Most received bytes a channel buffers before they are taken as
/// messages: a partial message and a few whole ones.  A caller that stops
/// taking messages (a client throttled for sending too fast) and keeps
/// reading hits this bound.
pub const MAX_BUFFERED: usize = 4 * MAX_IMSGSIZE;
/// `flags` bit: the message carries descriptors (OpenBSD's value).
pub const IMSGF_HASFD: u16 = 0x0001;
const IMSGF_NFDS_SHIFT: u16 = 8;
const IMSGF_KNOWN: u16 = IMSGF_HASFD | (0xff << IMSGF_NFDS_SHIFT);

// Both fit the u16 fields they travel in.
const _: () = assert!(MAX_IMSGSIZE <= u16::MAX as usize && MAX_IMSG_FDS <= 0xff);

/// Why a channel failed.  After any of these but [`ImsgError::Io`] with a
/// transient kind, the peer should be dropped.
#[derive(Debug, thiserror::Error)]
pub enum ImsgError {
    #[error("imsg length {0} shorter than its {IMSG_HEADER_SIZE}-byte header")]
    TooShort(usize),
    #[error("imsg length {0} exceeds the maximum of {MAX_IMSGSIZE}")]
    TooLong(usize),
    #[error("imsg with unknown flags {0:#06x}")]
    BadFlags(u16),
    #[error("imsg with {0} file descriptors, more than {MAX_IMSG_FDS}")]
    TooManyFds(usize),
    #[error("imsg declares {wanted} file descriptors but {have} were received")]
    MissingFds { wanted: usize, have: usize },
    #[error("{0} file descriptors received without a message")]
    StrayFds(usize),
    #[error("control message truncated: too many file descriptors")]
    ControlTruncated,
    #[error("connection closed")]
    Closed,
    #[error("{queued} bytes queued for a peer that does not read, over the bound of {limit}")]
    QueueFull { queued: usize, limit: usize },
    #[error("{0} bytes received and not taken, over the bound of {MAX_BUFFERED}")]
    InputFull(usize),
    #[error("connection closed inside a message ({0} bytes pending)")]
    Truncated(usize),
    #[error("unknown imsg type {0}")]
    UnknownType(u32),
    #[error("bad {type_name} payload: {source}")]
    Payload {
        type_name: &'static str,
        source: super::CodecError,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<Errno> for ImsgError {
    fn from(e: Errno) -> Self {
        if e == Errno::PIPE || e == Errno::CONNRESET {
            ImsgError::Closed
        } else {
            ImsgError::Io(e.into())
        }
    }
}

/// `struct imsg_hdr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImsgHdr {
    pub type_: u32,
    pub len: u16,
    pub flags: u16,
    pub peerid: u32,
    pub pid: u32,
}

impl ImsgHdr {
    pub fn to_bytes(&self) -> [u8; IMSG_HEADER_SIZE] {
        let mut b = [0; IMSG_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.type_.to_le_bytes());
        b[4..6].copy_from_slice(&self.len.to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.peerid.to_le_bytes());
        b[12..16].copy_from_slice(&self.pid.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; IMSG_HEADER_SIZE]) -> ImsgHdr {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        ImsgHdr {
            type_: u32_at(0),
            len: u16::from_le_bytes([b[4], b[5]]),
            flags: u16::from_le_bytes([b[6], b[7]]),
            peerid: u32_at(8),
            pid: u32_at(12),
        }
    }

    /// The number of descriptors the message carries.
    pub fn nfds(&self) -> usize {
        usize::from(self.flags >> IMSGF_NFDS_SHIFT)
    }

    fn flags_for(nfds: usize) -> u16 {
        if nfds == 0 {
            0
        } else {
            IMSGF_HASFD | ((nfds as u16) << IMSGF_NFDS_SHIFT)
        }
    }

    /// Checks what the header alone can tell.
    fn validate(&self) -> Result<(), ImsgError> {
        let len = usize::from(self.len);
        if len < IMSG_HEADER_SIZE {
            return Err(ImsgError::TooShort(len));
        }
        if len > MAX_IMSGSIZE {
            return Err(ImsgError::TooLong(len));
        }
        if self.flags & !IMSGF_KNOWN != 0 || (self.flags & IMSGF_HASFD != 0) != (self.nfds() != 0) {
            return Err(ImsgError::BadFlags(self.flags));
        }
        if self.nfds() > MAX_IMSG_FDS {
            return Err(ImsgError::TooManyFds(self.nfds()));
        }
        Ok(())
    }
}

/// One message: header, payload, and the descriptors that came with it.
#[derive(Debug)]
pub struct Imsg {
    pub hdr: ImsgHdr,
    pub data: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Imsg {
    pub fn type_(&self) -> u32 {
        self.hdr.type_
    }

    /// Takes the first descriptor, as `imsg_get_fd(3)` does.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        (!self.fds.is_empty()).then(|| self.fds.remove(0))
    }
}

/// The framing parser, separate from the socket: bytes and descriptors in
/// the order they were received, complete messages out.
#[derive(Debug, Default)]
pub struct ImsgReader {
    buf: Vec<u8>,
    /// Start of the unparsed bytes in `buf`.
    pos: usize,
    fds: VecDeque<OwnedFd>,
}

impl ImsgReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received but not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Appends received bytes and the descriptors that came with them.
    pub fn push(
        &mut self,
        bytes: &[u8],
        fds: impl IntoIterator<Item = OwnedFd>,
    ) -> Result<(), ImsgError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.len() + bytes.len() > MAX_BUFFERED {
            return Err(ImsgError::InputFull(self.buf.len() + bytes.len()));
        }
        self.buf.extend_from_slice(bytes);
        self.fds.extend(fds);
        // At most the fds of the message being received are pending
        // after each parse, plus one batch arriving now.
        if self.fds.len() > 2 * MAX_IMSG_FDS {
            return Err(ImsgError::TooManyFds(self.fds.len()));
        }
        Ok(())
    }

    /// The next complete message, `None` if more bytes are needed.  A bad
    /// header is reported as soon as its 16 bytes are in, without waiting
    /// for the payload it claims.
    pub fn next_msg(&mut self) -> Result<Option<Imsg>, ImsgError> {
        let avail = &self.buf[self.pos..];
        if avail.is_empty() && !self.fds.is_empty() {
            return Err(ImsgError::StrayFds(self.fds.len()));
        }
        let Some(head) = avail.first_chunk::<IMSG_HEADER_SIZE>() else {
            return Ok(None);
        };
        let hdr = ImsgHdr::from_bytes(head);
        hdr.validate()?;
        let len = usize::from(hdr.len);
        if avail.len() < len {
            return Ok(None);
        }
        let nfds = hdr.nfds();
        if self.fds.len() < nfds {
            return Err(ImsgError::MissingFds {
                wanted: nfds,
                have: self.fds.len(),
            });
        }
        let data = avail[IMSG_HEADER_SIZE..len].to_vec();
        let fds = self.fds.drain(..nfds).collect();
        self.pos += len;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            // A burst (up to MAX_BUFFERED) need not stay allocated for as
            // long as the connection lasts.
            if self.buf.capacity() > MAX_IMSGSIZE {
                self.buf.shrink_to(MAX_IMSGSIZE);
            }
        }
        Ok(Some(Imsg { hdr, data, fds }))
    }
}

/// A message waiting to be written.
#[derive(Debug)]
struct Outgoing {
    buf: Vec<u8>,
    /// Sent with the first byte, then closed here.
    fds: Vec<OwnedFd>,
    off: usize,
}

/// One end of an imsg connection: `imsgbuf` plus the socket.
///
/// Works on blocking and non-blocking sockets alike.  On a non-blocking
/// socket [`fill`](Self::fill) returns 0 and [`flush`](Self::flush) stops
/// when the socket would block; [`pending`](Self::pending) tells whether
/// to poll for writability.
#[derive(Debug)]
pub struct ImsgChannel {
    sock: UnixStream,
    reader: ImsgReader,
    wq: VecDeque<Outgoing>,
    /// Bytes in `wq` not yet written.
    queued: usize,
    max_queued: usize,
}

impl ImsgChannel {
    pub fn new(sock: UnixStream) -> ImsgChannel {
        ImsgChannel {
            sock,
            reader: ImsgReader::new(),
            wq: VecDeque::new(),
            queued: 0,
            max_queued: DEFAULT_MAX_QUEUED,
        }
    }

    /// Bounds the bytes queued for the peer: `compose` fails with
    /// [`ImsgError::QueueFull`] rather than queue past `limit`.  The
    /// control process holds its clients to less than its own children.
    pub fn set_max_queued(&mut self, limit: usize) {
        self.max_queued = limit.max(MAX_IMSGSIZE);
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Over an inherited descriptor (a child's `PROC_PARENT_SOCK_FILENO`).
    pub fn from_fd(fd: OwnedFd) -> ImsgChannel {
        ImsgChannel::new(UnixStream::from(fd))
    }

    /// Two connected channels (`socketpair(2)`, close-on-exec).
    pub fn pair() -> io::Result<(ImsgChannel, ImsgChannel)> {
        let (a, b) = UnixStream::pair()?;
        Ok((ImsgChannel::new(a), ImsgChannel::new(b)))
    }

    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// One `recvmsg(2)`: buffers what arrives.  Returns the number of
    /// bytes read, 0 if a non-blocking socket had nothing;
    /// [`ImsgError::Closed`] at end of file between messages,
    /// [`ImsgError::Truncated`] inside one.
    pub fn fill(&mut self) -> Result<usize, ImsgError> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_IMSG_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        // On the stack, not in the channel: the control process keeps a
        // channel per client, and 16 KiB each of a thousand idle clients
        // stayed in its heap after they left.
        let mut rbuf = [0u8; MAX_IMSGSIZE];
        let mut iov = [IoSliceMut::new(&mut rbuf)];
        let got = loop {
            match recvmsg(&self.sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
                Ok(got) => break got,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(0),
                Err(e) => return Err(e.into()),
            }
        };
        let mut fds = Vec::new();
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds.extend(rights);
            }
        }
        if got.flags.contains(ReturnFlags::CTRUNC) {
            return Err(ImsgError::ControlTruncated);
        }
        if got.bytes == 0 {
            return Err(match self.reader.buffered() {
                0 => ImsgError::Closed,
                n => ImsgError::Truncated(n),
            });
        }
        self.reader.push(&rbuf[..got.bytes], fds)?;
        Ok(got.bytes)
    }

    /// The next buffered complete message, without reading.
    pub fn get(&mut self) -> Result<Option<Imsg>, ImsgError> {
        self.reader.next_msg()
    }

    /// One read, then every complete message buffered (possibly none:
    /// a partial message stays buffered for the next call).
    pub fn read_ready(&mut self) -> Result<Vec<Imsg>, ImsgError> {
        self.fill()?;
        let mut out = Vec::new();
        while let Some(m) = self.get()? {
            out.push(m);
        }
        Ok(out)
    }

    /// Queues a message (`imsg_compose(3)`); [`flush`](Self::flush) sends
    /// it.  The descriptors are closed here once sent.  `pid` 0 stands for
    /// this process, as in OpenBSD.
    pub fn compose(
        &mut self,
        type_: u32,
        peerid: u32,
        pid: u32,
        data: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), ImsgError> {
        let len = IMSG_HEADER_SIZE + data.len();
        if len > MAX_IMSGSIZE {
            return Err(ImsgError::TooLong(len));
        }
        if fds.len() > MAX_IMSG_FDS {
            return Err(ImsgError::TooManyFds(fds.len()));
        }
        let hdr = ImsgHdr {
            type_,
            len: len as u16,
            flags: ImsgHdr::flags_for(fds.len()),
            peerid,
            pid: if pid == 0 { std::process::id() } else { pid },
        };
        if self.queued + len > self.max_queued {
            return Err(ImsgError::QueueFull {
                queued: self.queued + len,
                limit: self.max_queued,
            });
        }
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&hdr.to_bytes());
        buf.extend_from_slice(data);
        self.queued += len;
        self.wq.push_back(Outgoing { buf, fds, off: 0 });
        Ok(())
    }

    /// Writes queued messages until done or the socket would block.
    pub fn flush(&mut self) -> Result<(), ImsgError> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_IMSG_FDS))];
        while let Some(out) = self.wq.front_mut() {
            let sent = {
                let borrowed: Vec<BorrowedFd<'_>> = out.fds.iter().map(|f| f.as_fd()).collect();
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed))
                {
                    return Err(ImsgError::TooManyFds(borrowed.len()));
                }
                let iov = [IoSlice::new(&out.buf[out.off..])];
                sendmsg(&self.sock, &iov, &mut control, SendFlags::NOSIGNAL)
            };
            match sent {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => {
                    out.off += n;
                    self.queued -= n;
                    // The kernel holds its own references now.
                    out.fds.clear();
                    if out.off == out.buf.len() {
                        self.wq.pop_front();
                    }
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Whether queued bytes remain to be written.
    pub fn pending(&self) -> bool {
        !self.wq.is_empty()
    }
}

impl AsFd for ImsgChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
