//! What a user may type: email normalisation, password strength, display name and bio rules,
//! and the shape of user ids. Pure functions, shared by the web layer (to answer early) and the
//! user entity (which never trusts its caller).

use serde::{Deserialize, Serialize};

/// Longest email address (RFC 5321 path limit).
pub const EMAIL_BYTES_MAX: usize = 254;
/// Longest local part (before `@`), per RFC 5321.
pub const EMAIL_LOCAL_BYTES_MAX: usize = 64;
/// Shortest password, in characters (OWASP ASVS asks for at least 8; we ask a little more).
pub const PASSWORD_CHARS_MIN: usize = 10;
/// Longest password, in bytes: argon2 pre-hashes any length, but the request stays bounded.
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Display names: what chat shows next to each message.
pub const NAME_CHARS_MAX: usize = 64;
pub const BIO_CHARS_MAX: usize = 500;
/// User ids are 128 random bits in lowercase hex.
pub const USER_ID_CHARS: usize = 32;

/// Why a value was refused; the web layer maps each to an error code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum InvalidInput {
    #[error("invalid email: {0}")]
    Email(String),
    #[error("weak password: {0}")]
    WeakPassword(String),
    #[error("invalid name: {0}")]
    Name(String),
    #[error("invalid bio: {0}")]
    Bio(String),
}

/// Trims and lowercases an address and checks its shape: one `@`, a dot-atom local part and a
/// domain of at least two DNS labels. Internationalised addresses are refused: mail to them
/// needs SMTPUTF8, which we do not promise. Provider-specific tricks (dots and `+tags` at some
/// providers) are deliberately not folded: they are different addresses for everyone else.
pub fn normalize_email(raw: &str) -> Result<String, InvalidInput> {
    let invalid = |why: &str| Err(InvalidInput::Email(why.to_string()));
    let email = raw.trim().to_ascii_lowercase();
    if email.is_empty() {
        return invalid("it is empty");
    }
    if email.len() > EMAIL_BYTES_MAX {
        return invalid("it is longer than 254 characters");
    }
    if !email.is_ascii() {
        return invalid("only ASCII addresses are accepted");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return invalid("it has no @");
    };
    if domain.contains('@') {
        return invalid("it has more than one @");
    }
    if local.is_empty() || local.len() > EMAIL_LOCAL_BYTES_MAX {
        return invalid("the part before @ must have 1 to 64 characters");
    }
    const LOCAL_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~.";
    if !local
        .chars()
        .all(|char| char.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(char))
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return invalid("the part before @ has characters an address cannot have");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return invalid("the domain needs a dot");
    }
    for label in &labels {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .chars()
                .all(|char| char.is_ascii_alphanumeric() || char == '-')
        {
            return invalid("the domain is not a valid host name");
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|char| char.is_ascii_digit()))
    {
        return invalid("the domain is not a valid host name");
    }
    Ok(email)
}

/// Passwords that pass the length rule but are guessed first.
const COMMON_PASSWORDS: &[&str] = &[
    "1234567890",
    "12345678910",
    "123456789012",
    "0123456789",
    "password123",
    "password1234",
    "passw0rd123",
    "qwertyuiop",
    "qwerty123456",
    "1q2w3e4r5t",
    "abcdefghij",
    "iloveyou123",
    "letmein1234",
    "welcome123",
    "administrator",
    "changeme123",
];

/// Length, not composition rules (NIST SP 800-63B): at least [`PASSWORD_CHARS_MIN`] characters,
/// at least 5 distinct characters, not a well-known password and not the email or the name.
pub fn check_password_strength(
    password: &str,
    email: &str,
    name: &str,
) -> Result<(), InvalidInput> {
    let weak = |why: &str| Err(InvalidInput::WeakPassword(why.to_string()));
    if password.len() > PASSWORD_BYTES_MAX {
        return weak("it is longer than 1024 bytes");
    }
    let chars = password.chars().count();
    if chars < PASSWORD_CHARS_MIN {
        return Err(InvalidInput::WeakPassword(format!(
            "use at least {PASSWORD_CHARS_MIN} characters"
        )));
    }
    let mut distinct: Vec<char> = password.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 5 {
        return weak("use at least 5 different characters");
    }
    let lowered = password.to_lowercase();
    if COMMON_PASSWORDS.contains(&lowered.as_str()) {
        return weak("it is one of the most common passwords");
    }
    let local = email.split('@').next().unwrap_or_default();
    if lowered == email || lowered == local || lowered == name.trim().to_lowercase() {
        return weak("it must not be your email or your name");
    }
    Ok(())
}

/// A display name: trimmed, 1 to [`NAME_CHARS_MAX`] characters, no control characters.
pub fn normalize_name(raw: &str) -> Result<String, InvalidInput> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(InvalidInput::Name("it is empty".into()));
    }
    if name.chars().count() > NAME_CHARS_MAX {
        return Err(InvalidInput::Name(format!(
            "use at most {NAME_CHARS_MAX} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidInput::Name("it contains control characters".into()));
    }
    Ok(name.to_string())
}

/// A bio: trimmed, at most [`BIO_CHARS_MAX`] characters; line breaks and tabs allowed, other
/// control characters not.
pub fn normalize_bio(raw: &str) -> Result<String, InvalidInput> {
    let bio = raw.trim();
    if bio.chars().count() > BIO_CHARS_MAX {
        return Err(InvalidInput::Bio(format!(
            "use at most {BIO_CHARS_MAX} characters"
        )));
    }
    if bio
        .chars()
        .any(|char| char.is_control() && !matches!(char, '\n' | '\r' | '\t'))
    {
        return Err(InvalidInput::Bio("it contains control characters".into()));
    }
    Ok(bio.to_string())
}

/// Whether `id` has the shape of a user id (so it can name an object path safely).
pub fn is_user_id(id: &str) -> bool {
    id.len() == USER_ID_CHARS
        && id
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        assert_eq!(
            normalize_email("  Alice.Smith+Chat@Example.COM ").as_deref(),
            Ok("alice.smith+chat@example.com")
        );
        assert_eq!(
            normalize_email("a@b.co").as_deref(),
            Ok("a@b.co"),
            "short but valid"
        );
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in [
            "",
            "   ",
            "alice",
            "alice@",
            "@example.com",
            "alice@example",
            "alice@@example.com",
            "al ice@example.com",
            ".alice@example.com",
            "alice.@example.com",
            "al..ice@example.com",
            "alice@-example.com",
            "alice@example..com",
            "alice@127.0.0.1",
            "alïce@example.com",
            "alice@exa_mple.com",
        ] {
            assert!(
                matches!(normalize_email(bad), Err(InvalidInput::Email(_))),
                "{bad:?} should be refused"
            );
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(normalize_email(&long_local).is_err());
        let long = format!("a@{}.com", "b".repeat(250));
        assert!(normalize_email(&long).is_err());
    }

    #[test]
    fn password_strength_rules() {
        let email = "alice@example.com";
        assert!(check_password_strength("correct horse battery", email, "Alice").is_ok());
        assert!(check_password_strength("Tr0ub4dor&3x", email, "Alice").is_ok());
        for weak in [
            "short",
            "aaaaaaaaaaaaaa",
            "abababababab",
            "1234567890",
            "Password123",
            "alice@example.com",
            "ALICE@EXAMPLE.COM",
        ] {
            assert!(
                matches!(
                    check_password_strength(weak, email, "Alice"),
                    Err(InvalidInput::WeakPassword(_))
                ),
                "{weak:?} should be weak"
            );
        }
        assert!(check_password_strength("Alice Liddell", email, "alice liddell").is_err());
        assert!(check_password_strength(&"x1y2z3w4v5".repeat(200), email, "Alice").is_err());
        // Ten characters count as characters, not bytes.
        assert!(check_password_strength("ééééé12345", email, "Alice").is_ok());
    }

    #[test]
    fn names_and_bios_are_bounded() {
        assert_eq!(normalize_name("  Alice  ").as_deref(), Ok("Alice"));
        assert!(normalize_name("   ").is_err());
        assert!(normalize_name(&"é".repeat(NAME_CHARS_MAX)).is_ok());
        assert!(normalize_name(&"é".repeat(NAME_CHARS_MAX + 1)).is_err());
        assert!(normalize_name("Al\u{0}ice").is_err());
        assert!(normalize_name("Al\nice").is_err());
        assert_eq!(normalize_bio("").as_deref(), Ok(""));
        assert_eq!(normalize_bio(" line\nbreak ").as_deref(), Ok("line\nbreak"));
        assert!(normalize_bio(&"b".repeat(BIO_CHARS_MAX + 1)).is_err());
        assert!(normalize_bio("bell\u{7}").is_err());
    }

    #[test]
    fn user_ids_are_lowercase_hex_of_fixed_length() {
        assert!(is_user_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_user_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_user_id("../../journal/user/x"));
        assert!(!is_user_id(""));
        assert!(!is_user_id("0123456789abcdef0123456789abcde"));
    }
}
