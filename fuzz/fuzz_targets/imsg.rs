//! imsg framing and every message decoder: a peer's byte stream arrives
//! in chunks of sizes the input chooses, with a few descriptors, and goes
//! through `ImsgReader` (header checks, lengths, descriptor accounting)
//! and `Received::try_from` (the type's payload decoder).  A message that
//! decodes must encode again to the same message.  The first byte's top
//! bit sends the rest straight to `Message::decode` under one type.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::os::fd::OwnedFd;
use vmd_fuzz::Input;
use vmd_proto::{ImsgReader, ImsgType, Message, Received};

/// A message that decoded encodes and decodes back to itself.
fn round_trip(msg: &Message) {
    let bytes = msg.encode().expect("a decoded message encodes");
    let again = Message::decode(msg.imsg_type(), &bytes).expect("its encoding decodes");
    assert_eq!(&again, msg);
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    if mode & 0x80 != 0 {
        let t = ImsgType::ALL[usize::from(mode & 0x7f) % ImsgType::ALL.len()];
        if let Ok(msg) = Message::decode(t, inp.rest()) {
            round_trip(&msg);
        }
        return;
    }
    let nfds = usize::from(mode & 3);
    let chunk = usize::from(inp.u8()).max(1);
    let stream = inp.rest();
    let mut reader = ImsgReader::new();
    for (i, piece) in stream.chunks(chunk).enumerate() {
        // The descriptors arrive with the first chunk, as SCM_RIGHTS
        // delivers them with the first byte of their message.
        let fds: Vec<OwnedFd> = if i == 0 {
            (0..nfds)
                .filter_map(|_| std::fs::File::open("/dev/null").ok().map(OwnedFd::from))
                .collect()
        } else {
            Vec::new()
        };
        if reader.push(piece, fds).is_err() {
            return;
        }
        loop {
            match reader.next_msg() {
                Ok(Some(imsg)) => {
                    assert!(imsg.data.len() + 16 == usize::from(imsg.hdr.len));
                    if let Ok(r) = Received::try_from(imsg) {
                        round_trip(&r.msg);
                    }
                }
                Ok(None) => break,
                // The caller drops the peer.
                Err(e) => {
                    let _ = e.to_string();
                    return;
                }
            }
        }
    }
});
