//! Random identifiers and verification tokens.
//!
//! A verification token is `<user id>.<secret>`: the id says which account to ask (through the
//! `user.id` index), the secret is 256 random bits of which the account keeps only the SHA-256
//! digest, so its journal never holds a usable token. Both parts are lowercase hex, safe in a URL.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::validate::is_user_id;

/// Random bytes of a user id.
pub const USER_ID_BYTES: usize = 16;
/// Random bytes of a verification secret.
pub const SECRET_BYTES: usize = 32;

/// SHA-256 of a token's secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    fn of(secret: &[u8]) -> Self {
        Self(Sha256::digest(secret).into())
    }

    /// Compares in constant time (the digests are of secrets; leak nothing about them).
    pub fn matches(&self, other: &TokenDigest) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
    }
}

/// A freshly drawn verification secret: the hex text for the link and what the account keeps.
#[derive(Clone)]
pub struct NewSecret {
    hex: String,
    pub digest: TokenDigest,
}

impl NewSecret {
    /// The token for the link: `<user id>.<secret>`.
    pub fn token(&self, user_id: &str) -> String {
        format!("{user_id}.{}", self.hex)
    }
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("NewSecret(<redacted>)")
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|error| format!("no randomness: {error}"))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&text[index..index + 2], 16).ok())
        .collect()
}

/// A new random user id: 128 bits, lowercase hex.
pub fn new_user_id() -> Result<String, String> {
    Ok(hex(&random_bytes::<USER_ID_BYTES>()?))
}

/// A new verification secret.
pub fn new_secret() -> Result<NewSecret, String> {
    let secret = random_bytes::<SECRET_BYTES>()?;
    Ok(NewSecret {
        hex: hex(&secret),
        digest: TokenDigest::of(&secret),
    })
}

/// Splits a token from a link into the user id and the digest of its secret; `None` if it
/// cannot be one of ours (so it is refused before any entity is asked).
pub fn parse_verification_token(text: &str) -> Option<(String, TokenDigest)> {
    let (user_id, secret) = text.split_once('.')?;
    if !is_user_id(user_id) || secret.len() != 2 * SECRET_BYTES {
        return None;
    }
    let secret = unhex(&secret.to_ascii_lowercase())?;
    Some((user_id.to_string(), TokenDigest::of(&secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_keep_only_a_digest() {
        let id = new_user_id().expect("id");
        assert!(is_user_id(&id), "{id}");
        let secret = new_secret().expect("secret");
        let token = secret.token(&id);
        assert!(token.starts_with(&format!("{id}.")));
        assert_eq!(token.len(), 32 + 1 + 64);
        let (parsed_id, digest) = parse_verification_token(&token).expect("parses");
        assert_eq!(parsed_id, id);
        assert!(digest.matches(&secret.digest));
        assert!(!format!("{secret:?}").contains(&token[33..]));
    }

    #[test]
    fn ids_and_tokens_are_random() {
        assert_ne!(new_user_id().expect("id"), new_user_id().expect("id"));
        let id = new_user_id().expect("id");
        let first = new_secret().expect("secret");
        let second = new_secret().expect("secret");
        assert_ne!(first.token(&id), second.token(&id));
        assert!(!first.digest.matches(&second.digest));
    }

    #[test]
    fn foreign_tokens_are_refused() {
        let id = "0123456789abcdef0123456789abcdef";
        let secret = "ab".repeat(32);
        assert!(parse_verification_token(&format!("{id}.{secret}")).is_some());
        for bad in [
            String::new(),
            "nodot".into(),
            format!("{id}."),
            format!("{id}.{}", "ab".repeat(31)),
            format!("{id}.{}zz", "ab".repeat(31)),
            format!("../x.{secret}"),
            format!("{id}.{secret}.extra"),
        ] {
            assert!(parse_verification_token(&bad).is_none(), "{bad:?}");
        }
    }
}
