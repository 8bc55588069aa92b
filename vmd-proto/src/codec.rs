//! The payload codec: serde types to bytes and back, with bincode.
//!
//! This is the only module that names bincode (2.x, through its serde
//! layer, as the team chose for imsg payloads), so the encoding can change
//! in one place.  The configuration is bincode's `standard()` (little
//! endian, variable-length integers) with a decode limit of
//! [`MAX_IMSG_PAYLOAD`]: a length prefix in hostile input cannot make the
//! decoder allocate more than one message could carry.  Decoding must use
//! every byte: trailing bytes are an error, as a payload of the wrong size
//! is for `IMSG_SIZE_CHECK` in vmd.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::imsg::MAX_IMSG_PAYLOAD;

/// Why a payload could not be encoded or decoded.  Messages name no bincode
/// type, so callers need not know the encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("payload of {0} bytes exceeds the maximum of {MAX_IMSG_PAYLOAD}")]
    TooLarge(usize),
    #[error("cannot encode payload: {0}")]
    Encode(String),
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after payload")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_IMSG_PAYLOAD>()
}

/// Encodes `value`; fails if the result would not fit in one imsg.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > MAX_IMSG_PAYLOAD {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes a whole payload.  Never panics on hostile input: a short,
/// long or malformed payload is an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_IMSG_PAYLOAD {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_codec_round_trip_and_trailing() {
        let v = (7u32, String::from("vm1"), Some(-1i64));
        let b = encode(&v).unwrap();
        assert_eq!(decode::<(u32, String, Option<i64>)>(&b).unwrap(), v);
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(
            decode::<(u32, String, Option<i64>)>(&longer),
            Err(CodecError::Trailing(1))
        );
        assert!(matches!(
            decode::<(u32, String, Option<i64>)>(&b[..b.len() - 1]),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn proc_codec_limits() {
        let big = "x".repeat(MAX_IMSG_PAYLOAD);
        assert!(matches!(encode(&big), Err(CodecError::TooLarge(_))));
        // A length prefix claiming far more than the limit allows is
        // refused before any allocation.
        let claim = encode(&u64::MAX).unwrap();
        assert!(decode::<Vec<u8>>(&claim).is_err());
        assert!(decode::<String>(&claim).is_err());
        assert!(matches!(
            decode::<Vec<u8>>(&vec![0; MAX_IMSG_PAYLOAD + 1]),
            Err(CodecError::TooLarge(_))
        ));
    }
}
