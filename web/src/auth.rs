//! Session tokens: HS256 JWTs minted by `node token` and by login, verified by a warp filter
//! that every authenticated route and the WebSocket upgrade share.
//!
//! Only HS256 is accepted (the header is checked, so `alg: none` and algorithm confusion are
//! refused), the signature is compared in constant time, and `exp` is mandatory.
//!
//! Key rotation: a token names its key in the header's `kid` (a digest of the secret, never the
//! secret), and a node accepts the current key and the previous one (`web.jwt_previous_secret`),
//! so tokens minted before a rotation stay valid until they expire. A token without `kid`
//! (minted before key ids existed) is checked against both keys.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use warp::Filter;

use crate::error::ApiError;

/// Longest token accepted; anything longer is not ours.
pub const TOKEN_BYTES_MAX: usize = 4096;

const ISSUER: &str = "actorhub";

/// The claims of an ActorHub token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Display name at login time (chat shows it); absent in tokens from `node token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
}

/// Why a token was refused. Deliberately coarse towards clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    /// The `kid` names neither the current key nor the previous one (rotated out twice, or
    /// another cluster's).
    #[error("token was signed with a key this cluster no longer accepts")]
    UnknownKey,
}

/// Bytes of the secret's SHA-256 that make its key id (16 hexadecimal digits).
const KEY_ID_BYTES: usize = 8;

/// One HS256 secret and its key id.
struct Key {
    id: String,
    secret: Vec<u8>,
}

impl Key {
    fn new(secret: &[u8]) -> Self {
        Self {
            id: key_id(secret),
            secret: secret.to_vec(),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts keys of any length")
    }

    /// Whether `signature` is this key's over `header.claims`, compared in constant time.
    fn signed(&self, header: &str, claims: &str, signature: &[u8]) -> bool {
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(claims.as_bytes());
        mac.verify_slice(signature).is_ok()
    }
}

/// The key id of `secret`: the first [`KEY_ID_BYTES`] of its SHA-256, in hexadecimal. It tells
/// keys apart without revealing them (a token's signature already lets anyone test guesses of
/// the secret offline; the id adds nothing to that).
pub fn key_id(secret: &[u8]) -> String {
    use sha2::Digest;
    Sha256::digest(secret)[..KEY_ID_BYTES]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The current secret (signs and verifies) and the previous one (verifies only).
pub struct TokenKeys {
    current: Key,
    previous: Option<Key>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TokenKeys(<redacted>)")
    }
}

impl TokenKeys {
    /// Keys that sign and verify with `secret` alone.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            current: Key::new(secret),
            previous: None,
        }
    }

    /// Also accepts tokens signed with `previous` (the secret before the last rotation).
    pub fn with_previous(mut self, previous: Option<&[u8]>) -> Self {
        // The same secret twice is one key.
        self.previous = previous
            .filter(|previous| *previous != self.current.secret.as_slice())
            .map(Key::new);
        self
    }

    /// The key id new tokens carry.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// A token for `user` valid for `ttl_s` seconds from `now_s` (unix seconds).
    pub fn mint(&self, user: &str, now_s: u64, ttl_s: u64) -> String {
        self.mint_named(user, None, now_s, ttl_s)
    }

    /// Like [`TokenKeys::mint`], carrying the user's display name.
    pub fn mint_named(&self, user: &str, name: Option<&str>, now_s: u64, ttl_s: u64) -> String {
        let claims = Claims {
            sub: user.to_string(),
            name: name.map(str::to_string),
            iss: ISSUER.to_string(),
            iat: now_s,
            exp: now_s + ttl_s,
        };
        let claims = serde_json::to_vec(&claims).expect("claims serialize");
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": self.current.id});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let mut mac = self.current.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Checks key id, signature, algorithm, issuer and expiry at `now_s`.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, TokenError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed)?;
        let header_value: serde_json::Value =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
        if header_value.get("alg").and_then(|alg| alg.as_str()) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let keys = [Some(&self.current), self.previous.as_ref()];
        let candidates: Vec<&Key> = match header_value.get("kid") {
            None => keys.into_iter().flatten().collect(),
            Some(serde_json::Value::String(kid)) => {
                let key = keys
                    .into_iter()
                    .flatten()
                    .find(|key| key.id == *kid)
                    .ok_or(TokenError::UnknownKey)?;
                vec![key]
            }
            Some(_) => return Err(TokenError::Malformed),
        };
        if !candidates
            .iter()
            .any(|key| key.signed(header, claims, &signature))
        {
            return Err(TokenError::BadSignature);
        }
        let claims_json = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims =
            serde_json::from_slice(&claims_json).map_err(|_| TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::Malformed);
        }
        if claims.exp <= now_s {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Now, in the seconds tokens count in (`runtime::clock`).
pub fn unix_now_s() -> u64 {
    runtime::clock::unix_s()
}

/// Extracts the verified claims from `Authorization: Bearer <token>` or, for WebSocket
/// upgrades that cannot set headers from a browser, from `?token=`. Refuses with 401.
pub fn authenticated(
    keys: std::sync::Arc<TokenKeys>,
) -> impl Filter<Extract = (Claims,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and_then(move |header: Option<String>, query: String| {
            let keys = keys.clone();
            async move {
                let from_query = token_from_query(&query);
                let token = header
                    .as_deref()
                    .and_then(|value| value.strip_prefix("Bearer "))
                    .map(str::to_string)
                    .or(from_query)
                    .ok_or_else(|| {
                        warp::reject::custom(ApiError::unauthorized(
                            "missing token: send Authorization: Bearer <token>",
                        ))
                    })?;
                keys.verify(&token, unix_now_s()).map_err(|error| {
                    warp::reject::custom(ApiError::unauthorized(error.to_string()))
                })
            }
        })
}

fn token_from_query(query: &str) -> Option<String> {
    url_pairs(query)
        .into_iter()
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value)
}

/// Minimal `a=b&c=d` parsing with percent-decoding of the values we care about.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_string(), percent_decode(value)))
        .collect()
}

pub(crate) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match hex {
                    Some(byte) => {
                        decoded.push(byte);
                        index += 3;
                    }
                    None => {
                        decoded.push(b'%');
                        index += 1;
                    }
                }
            }
            b'+' => {
                decoded.push(b' ');
                index += 1;
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn minted_token_verifies() {
        let keys = TokenKeys::new(b"a-secret-of-sixteen+");
        let token = keys.mint("alice", NOW, 60);
        let claims = keys.verify(&token, NOW + 1).expect("valid");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.exp, NOW + 60);
    }

    #[test]
    fn expired_forged_and_garbage_tokens_are_refused() {
        let keys = TokenKeys::new(b"a-secret-of-sixteen+");
        let token = keys.mint("alice", NOW, 60);
        assert_eq!(keys.verify(&token, NOW + 60), Err(TokenError::Expired));
        let other = TokenKeys::new(b"another-secret-16+");
        // Another cluster's key: its id is not ours.
        assert_eq!(other.verify(&token, NOW), Err(TokenError::UnknownKey));
        let mut tampered = token.clone();
        tampered.insert(token.find('.').expect("dot") + 2, 'x');
        assert!(keys.verify(&tampered, NOW).is_err());
        for garbage in ["", "a.b", "a.b.c.d", "!!!.???.###"] {
            assert_eq!(
                keys.verify(garbage, NOW),
                Err(TokenError::Malformed),
                "{garbage}"
            );
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let keys = TokenKeys::new(b"a-secret-of-sixteen+");
        let token = keys.mint("alice", NOW, 60);
        let mut parts: Vec<&str> = token.split('.').collect();
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        parts[0] = &none_header;
        assert_eq!(
            keys.verify(&parts.join("."), NOW),
            Err(TokenError::Malformed)
        );
    }

    /// A token as minted before key ids existed: header without `kid`.
    fn mint_without_kid(secret: &[u8], user: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"{user}","iss":"actorhub","iat":{NOW},"exp":{}}}"#,
            NOW + 60
        ));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(format!("{header}.{claims}").as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{claims}.{signature}")
    }

    fn header_of(token: &str) -> serde_json::Value {
        let header = token.split('.').next().expect("a header");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64")).expect("json")
    }

    #[test]
    fn tokens_name_their_key_without_revealing_it() {
        let secret = b"a-secret-of-sixteen+";
        let keys = TokenKeys::new(secret);
        let header = header_of(&keys.mint("alice", NOW, 60));
        let kid = header["kid"].as_str().expect("kid");
        assert_eq!(kid, keys.current_key_id());
        assert_eq!(kid.len(), 2 * KEY_ID_BYTES);
        assert!(kid.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert!(!String::from_utf8_lossy(secret).contains(kid));
        assert_ne!(kid, TokenKeys::new(b"another-secret-16+").current_key_id());
    }

    #[test]
    fn the_previous_key_is_accepted_and_an_unknown_one_refused() {
        let old = TokenKeys::new(b"the-old-secret-of-16+");
        let rotated =
            TokenKeys::new(b"the-new-secret-of-16+").with_previous(Some(b"the-old-secret-of-16+"));
        let before_rotation = old.mint("alice", NOW, 60);
        assert_eq!(
            rotated
                .verify(&before_rotation, NOW)
                .map(|claims| claims.sub),
            Ok("alice".to_string())
        );
        // New tokens are signed with the new key, which the old node set does not know.
        let after_rotation = rotated.mint("bob", NOW, 60);
        assert_eq!(
            rotated.verify(&after_rotation, NOW).map(|c| c.sub),
            Ok("bob".into())
        );
        assert_eq!(
            old.verify(&after_rotation, NOW),
            Err(TokenError::UnknownKey)
        );
        // Rotated twice: the oldest key is gone.
        let twice =
            TokenKeys::new(b"the-newest-secret-16+").with_previous(Some(b"the-new-secret-of-16+"));
        assert_eq!(
            twice.verify(&before_rotation, NOW),
            Err(TokenError::UnknownKey)
        );
        assert!(twice.verify(&after_rotation, NOW).is_ok());
    }

    #[test]
    fn a_forged_kid_does_not_help() {
        let keys =
            TokenKeys::new(b"the-new-secret-of-16+").with_previous(Some(b"the-old-secret-of-16+"));
        let stranger = TokenKeys::new(b"a-stranger-s-secret-16");
        // A stranger's token relabelled with the cluster's key id still fails the signature.
        let token = stranger.mint("mallory", NOW, 60);
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let header = format!(
            r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#,
            keys.current_key_id()
        );
        parts[0] = URL_SAFE_NO_PAD.encode(header);
        assert_eq!(
            keys.verify(&parts.join("."), NOW),
            Err(TokenError::BadSignature)
        );
        let numeric = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT","kid":7}"#);
        parts[0] = numeric;
        assert_eq!(
            keys.verify(&parts.join("."), NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn tokens_without_kid_are_still_accepted() {
        let secret = b"the-new-secret-of-16+";
        let keys = TokenKeys::new(secret).with_previous(Some(b"the-old-secret-of-16+"));
        let legacy = mint_without_kid(secret, "alice");
        assert_eq!(keys.verify(&legacy, NOW).map(|c| c.sub), Ok("alice".into()));
        let legacy_old = mint_without_kid(b"the-old-secret-of-16+", "bob");
        assert_eq!(
            keys.verify(&legacy_old, NOW).map(|c| c.sub),
            Ok("bob".into())
        );
        let legacy_stranger = mint_without_kid(b"a-stranger-s-secret-16", "mallory");
        assert_eq!(
            keys.verify(&legacy_stranger, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn query_token_is_percent_decoded() {
        assert_eq!(token_from_query("a=1&token=x%2Ey").as_deref(), Some("x.y"));
        assert_eq!(token_from_query("a=1"), None);
    }
}
