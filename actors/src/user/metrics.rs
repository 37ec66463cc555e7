//! Every metric of user accounts, described once. Labels are closed sets of outcomes: never an
//! email, a token or anything a client typed.

pub const SIGNUPS_TOTAL: &str = "actorhub_user_signups_total";
pub const LOGINS_TOTAL: &str = "actorhub_user_logins_total";
pub const VERIFICATIONS_TOTAL: &str = "actorhub_user_verifications_total";
pub const MAILS_TOTAL: &str = "actorhub_mails_total";
pub const PASSWORD_HASH_SECONDS: &str = "actorhub_password_hash_seconds";
pub const PHOTOS_TOTAL: &str = "actorhub_user_photos_total";

/// Registers the descriptions (idempotent).
pub fn describe() {
    metrics::describe_counter!(
        SIGNUPS_TOTAL,
        "Sign-ups by outcome (created, taken, invalid)."
    );
    metrics::describe_counter!(
        LOGINS_TOTAL,
        "Logins by outcome (ok, bad_credentials, unverified, locked)."
    );
    metrics::describe_counter!(
        VERIFICATIONS_TOTAL,
        "Verification link uses by outcome (ok, invalid, expired, used)."
    );
    metrics::describe_counter!(MAILS_TOTAL, "Mails by outcome (sent, failed, dropped).");
    metrics::describe_histogram!(
        PASSWORD_HASH_SECONDS,
        metrics::Unit::Seconds,
        "argon2id hashing and verification time, queueing on the pool included."
    );
    metrics::describe_counter!(PHOTOS_TOTAL, "Profile photo uploads by outcome.");
}
