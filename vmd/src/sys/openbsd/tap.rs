//! Taps on OpenBSD, as vmd's config.c opens them: `/dev/tapN` for a
//! named NIC, else the first of `/dev/tap0` … `/dev/tap255` that opens
//! (an open tap is busy), read-write and non-blocking.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;

use super::super::{tap_unit, Tap, TapError, MAX_TAP};

fn open_dev(name: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(format!("/dev/{name}"))
}

/// Opens the tap `name` (`tapN`), or the first free one for `tap`.
pub fn open_tap(name: &str) -> Result<Tap, TapError> {
    match tap_unit(name)? {
        Some(_) => {
            let file = open_dev(name).map_err(|source| TapError::Open {
                name: name.to_string(),
                source,
            })?;
            Ok(Tap {
                file,
                name: name.to_string(),
            })
        }
        None => (0..MAX_TAP)
            .find_map(|i| {
                let name = format!("tap{i}");
                open_dev(&name).ok().map(|file| Tap { file, name })
            })
            .ok_or(TapError::NoneFree),
    }
}
