//! The wire format: every value that crosses nodes or lands in the journal goes through here.
//!
//! Encoding is bincode 2.0.1 (serde, standard config) behind a one-byte format version, with a
//! decode limit so garbage cannot make us allocate gigabytes. [`Wire`] carries a value inside a
//! ractor_cluster message: decoding cannot fail loudly there (`BytesConvertable::from_bytes`
//! returns `Self`), so a `Wire` holds the decode result and the receiver answers bad bytes with
//! a clear error instead of panicking or silently dropping them.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, RuntimeError};

/// Format version written before every encoded value. Bump on an incompatible change.
pub const FORMAT_VERSION: u8 = 1;

/// Largest value we decode; ractor_cluster frames are bounded below this anyway.
pub const DECODE_BYTES_MAX: usize = 16 * 1024 * 1024;

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_BYTES_MAX>,
> {
    bincode::config::standard().with_limit::<DECODE_BYTES_MAX>()
}

/// Encodes `value` with the version byte in front.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    encode_versioned(FORMAT_VERSION, value)
}

/// Encodes `value` with `version` in front (formats that evolve apart, e.g. the journal's).
pub fn encode_versioned<T: Serialize + ?Sized>(version: u8, value: &T) -> Vec<u8> {
    let mut bytes = vec![version];
    // Serializing our own plain data types into a Vec cannot fail; a failure is a programming error.
    bincode::serde::encode_into_std_write(value, &mut bytes, config())
        .expect("serializing an in-memory value into a Vec cannot fail");
    bytes
}

/// Decodes bytes written by [`encode`]; `what` names the value in the error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T> {
    decode_versioned(bytes, FORMAT_VERSION, what)
}

/// Decodes bytes written by [`encode_versioned`] with `version`.
pub fn decode_versioned<T: DeserializeOwned>(
    bytes: &[u8],
    version: u8,
    what: &'static str,
) -> Result<T> {
    let codec_error = |reason: String| RuntimeError::Codec { what, reason };
    match bytes.split_first() {
        None => Err(codec_error("empty input".into())),
        Some((found, body)) if *found == version => {
            let (value, read) = bincode::serde::decode_from_slice(body, config())
                .map_err(|error| codec_error(error.to_string()))?;
            if read != body.len() {
                return Err(codec_error(format!("{} trailing bytes", body.len() - read)));
            }
            Ok(value)
        }
        Some((found, _)) => Err(codec_error(format!(
            "format version {found}, expected {version}"
        ))),
    }
}

/// A serde value inside a ractor_cluster message field.
#[derive(Debug)]
pub struct Wire<T>(pub Result<T>);

impl<T> Wire<T> {
    pub fn new(value: T) -> Self {
        Wire(Ok(value))
    }

    pub fn into_inner(self) -> Result<T> {
        self.0
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> ractor::BytesConvertable for Wire<T> {
    fn into_bytes(self) -> Vec<u8> {
        match self.0 {
            Ok(value) => encode(&value),
            // A Wire holding a decode error is never re-sent; an empty body decodes as an error.
            Err(_) => Vec::new(),
        }
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        Wire(decode(&bytes, std::any::type_name::<T>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::BytesConvertable;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    #[test]
    fn round_trip() {
        let sample = Sample {
            name: "room".into(),
            values: vec![1, 2, 300],
        };
        let bytes = encode(&sample);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Sample>(&bytes, "sample").expect("decodes"), sample);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for garbage in [
            vec![],
            vec![FORMAT_VERSION],
            vec![9, 1, 2],
            vec![FORMAT_VERSION, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ] {
            assert!(decode::<Sample>(&garbage, "sample").is_err(), "{garbage:?}");
            assert!(Wire::<Sample>::from_bytes(garbage).into_inner().is_err());
        }
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        // A Vec length of 2^40 must hit the decode limit instead of an allocation.
        let mut bytes = vec![FORMAT_VERSION, 0];
        bytes.extend([0xfd, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert!(decode::<Sample>(&bytes, "sample").is_err());
    }
}
