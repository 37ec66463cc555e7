//! The web layer's section of `cluster.toml`: `[web]` (session tokens, shutdown grace), its
//! defaults and its validation. The `node` binary reads the file and the environment
//! (`ACTORHUB_JWT_SECRET`) and hands the section over.

use serde::{Deserialize, Serialize};

/// Shortest accepted HS256 secret.
pub const JWT_SECRET_CHARS_MIN: usize = 16;

/// Shortest accepted admin token.
pub const ADMIN_TOKEN_CHARS_MIN: usize = 16;

/// `[web]`: HTTP and token settings shared by every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// HS256 secret of session tokens. `ACTORHUB_JWT_SECRET` overrides it.
    pub jwt_secret: Option<String>,
    /// The secret before the last rotation: tokens it signed are still accepted (new ones are
    /// signed with `jwt_secret`). `ACTORHUB_JWT_PREVIOUS_SECRET` overrides it.
    pub jwt_previous_secret: Option<String>,
    pub token_ttl_s: u64,
    /// Grace period for in-flight requests on shutdown.
    pub shutdown_timeout_ms: u64,
    /// Bearer token of the operator routes (`/metrics`, `/api/cluster`, `/api/admin/*`).
    /// Without one they are served only by a node whose HTTP address is loopback.
    /// `ACTORHUB_ADMIN_TOKEN` overrides it.
    pub admin_token: Option<String>,
    /// `[web.limits]`: rate limits and the login lockout (see `crate::limits`).
    pub limits: crate::limits::LimitsSection,
}

impl Default for WebSection {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_previous_secret: None,
            token_ttl_s: 3_600,
            shutdown_timeout_ms: 5_000,
            admin_token: None,
            limits: crate::limits::LimitsSection::default(),
        }
    }
}

/// A `[web]` value out of range; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

impl WebSection {
    /// Checks what the types alone cannot. A missing secret is allowed here (`node token` and
    /// `node run` say so when they need it).
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if let Some(secret) = &self.jwt_secret
            && secret.len() < JWT_SECRET_CHARS_MIN
        {
            return Err(InvalidConfig(format!(
                "`web.jwt_secret`: use at least {JWT_SECRET_CHARS_MIN} characters"
            )));
        }
        if let Some(secret) = &self.jwt_previous_secret
            && secret.len() < JWT_SECRET_CHARS_MIN
        {
            return Err(InvalidConfig(format!(
                "`web.jwt_previous_secret`: use at least {JWT_SECRET_CHARS_MIN} characters"
            )));
        }
        if let Some(token) = &self.admin_token
            && token.len() < ADMIN_TOKEN_CHARS_MIN
        {
            return Err(InvalidConfig(format!(
                "`web.admin_token`: use at least {ADMIN_TOKEN_CHARS_MIN} characters"
            )));
        }
        self.limits.validate().map_err(InvalidConfig)?;
        if self.token_ttl_s == 0 {
            return Err(InvalidConfig("`web.token_ttl_s`: must be above 0".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebSection, String> {
        let section: WebSection = toml::from_str(text).map_err(|error| error.to_string())?;
        section.validate().map_err(|error| error.to_string())?;
        Ok(section)
    }

    #[test]
    fn defaults_and_named_errors() {
        let section = parse("").expect("empty is valid");
        assert_eq!(section.token_ttl_s, 3_600);
        assert_eq!(section.shutdown_timeout_ms, 5_000);
        assert!(section.jwt_secret.is_none());
        let short = parse("jwt_secret = \"short\"").expect_err("too short");
        assert!(short.contains("web.jwt_secret"), "{short}");
        let short = parse("jwt_previous_secret = \"short\"").expect_err("too short");
        assert!(short.contains("web.jwt_previous_secret"), "{short}");
        let zero = parse("token_ttl_s = 0").expect_err("zero");
        assert!(zero.contains("web.token_ttl_s"), "{zero}");
        let unknown = parse("jwt = \"x\"").expect_err("unknown key");
        assert!(unknown.contains("jwt"), "{unknown}");
    }
}
