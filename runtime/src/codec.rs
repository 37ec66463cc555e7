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

/// The cluster protocol this build speaks: the version byte of every message between nodes
/// ([`Wire`]). Messages evolve without breaking a mixed cluster: a new optional field of an
/// envelope is a new [`Extensions`] tag (older nodes skip tags they do not know, newer ones
/// treat a missing tag as absent); bytes after a message a node knows, from a newer protocol,
/// are ignored; a new kind of message is sent only to a peer whose protocol knows it (the
/// heartbeats carry each side's protocol; a pair speaks the lower of both).
#[cfg(not(feature = "wire-next"))]
pub const PROTOCOL: u8 = 2;
/// The next protocol, built with the `wire-next` feature to test a rolling upgrade: its
/// envelopes carry one field more ([`tags::NEXT`]).
#[cfg(feature = "wire-next")]
pub const PROTOCOL: u8 = 3;
/// The oldest protocol this build reads.
pub const PROTOCOL_MIN: u8 = 2;

/// Optional fields of a cross-node message, added after its protocol's first release: tagged
/// encoded values. A reader ignores the tags it does not know, and a tag it knows but does not
/// find is absent, so nodes of two protocols read each other's messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extensions(Vec<(u16, Vec<u8>)>);

/// The [`Extensions`] tags in use. A tag is never reused for another meaning.
pub mod tags {
    /// W3C trace context of the span that sent the message (`traceparent`).
    pub const TRACE_PARENT: u16 = 1;
    /// The test field of the next protocol (`wire-next`): the sender's protocol.
    pub const NEXT: u16 = 0xff00;
}

impl Extensions {
    /// The value under `tag`, if present and readable (an unreadable one counts as absent).
    pub fn get<T: DeserializeOwned>(&self, tag: u16) -> Option<T> {
        let (_, bytes) = self.0.iter().find(|(found, _)| *found == tag)?;
        decode(bytes, "message extension").ok()
    }

    /// Sets `tag` to `value`, replacing a previous value.
    pub fn insert<T: Serialize + ?Sized>(&mut self, tag: u16, value: &T) {
        self.0.retain(|(found, _)| *found != tag);
        self.0.push((tag, encode(value)));
    }

    /// Encoded size, to check a message fits a frame.
    pub fn bytes_len(&self) -> usize {
        self.0.iter().map(|(_, bytes)| bytes.len() + 8).sum()
    }
}

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
            Ok(value) => encode_versioned(PROTOCOL, &value),
            // A Wire holding a decode error is never re-sent; an empty body decodes as an error.
            Err(_) => Vec::new(),
        }
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        Wire(decode_wire(&bytes, std::any::type_name::<T>()))
    }
}

/// Decodes a message from a peer: a protocol this build knows exactly, or a newer one whose
/// appended fields it ignores.
pub fn decode_wire<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T> {
    let codec_error = |reason: String| RuntimeError::Codec { what, reason };
    match bytes.split_first() {
        None => Err(codec_error("empty input".into())),
        Some((version, _)) if *version < PROTOCOL_MIN => Err(codec_error(format!(
            "cluster protocol {version} is older than {PROTOCOL_MIN}, the oldest this node reads; upgrade the sender"
        ))),
        Some((version, _)) if *version <= PROTOCOL => decode_versioned(bytes, *version, what),
        Some((_, body)) => {
            let (value, _read): (T, usize) = bincode::serde::decode_from_slice(body, config())
                .map_err(|error| codec_error(error.to_string()))?;
            Ok(value)
        }
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

    /// The current message, and the next protocol's: the same with a field appended.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Next {
        name: String,
        values: Vec<u64>,
        added: Option<String>,
    }

    #[test]
    fn a_newer_peers_appended_fields_are_skipped() {
        let next = Next {
            name: "room".into(),
            values: vec![7],
            added: Some("later".into()),
        };
        let bytes = encode_versioned(PROTOCOL + 1, &next);
        let read: Sample = decode_wire(&bytes, "sample").expect("a newer message decodes");
        assert_eq!(
            read,
            Sample {
                name: "room".into(),
                values: vec![7]
            }
        );
        // Messages of this protocol must be exact; an older, unsupported one names the fix.
        assert!(decode_wire::<Sample>(&encode_versioned(PROTOCOL, &next), "sample").is_err());
        let old = decode_wire::<Sample>(&encode_versioned(PROTOCOL_MIN - 1, &next), "sample");
        assert!(format!("{:?}", old.expect_err("too old")).contains("upgrade the sender"));
    }

    #[test]
    fn unknown_extension_tags_are_ignored_and_missing_ones_absent() {
        let mut extensions = Extensions::default();
        extensions.insert(tags::TRACE_PARENT, "00-abc-def-01");
        extensions.insert(0x7777, &42u64);
        extensions.insert(tags::TRACE_PARENT, "00-123-456-01");
        let bytes = encode(&extensions);
        let read: Extensions = decode(&bytes, "extensions").expect("decodes");
        assert_eq!(
            read.get::<String>(tags::TRACE_PARENT).as_deref(),
            Some("00-123-456-01")
        );
        assert_eq!(read.get::<u64>(0x7777), Some(42));
        assert_eq!(read.get::<u64>(tags::NEXT), None);
        // A value of the wrong shape under a known tag reads as absent, not as an error.
        assert_eq!(read.get::<Vec<String>>(0x7777), None);
    }
}
