//! The user account entity (`user`, keyed by the normalised email) and what surrounds it.
//!
//! One entity per email serialises everything about an account: two sign-ups for the same
//! address, even on two nodes at once, reach the same entity and the second is refused. The
//! entity is event-sourced like every other; it never sees a password, only its argon2id hash
//! (computed by the caller on a blocking pool), and never a verification token, only the
//! SHA-256 of its secret. Randomness and time come in with the commands, so `handle` is
//! deterministic and runs again safely after a journal conflict.
//!
//! Users are also known by a random id (JWT subject, photo URLs, chat). The `user.id` entity
//! ([`index::UserIndex`]) maps an id back to the email; it is written before the account, so
//! an account never exists without its id being resolvable.
//!
//! An account still unverified `users.unverified_ttl_s` after its sign-up expires through its
//! durable reminder [`expiry::EXPIRE_REMINDER`] (registered by the sign-up, forgotten by the
//! verification): the entity journals `Expired` (the email is free again) and retires the id
//! in `user.id` and the photo object (see [`expiry`]).
//!
//! Failed logins are journaled per account (at most `login_failures_max` per window, so an
//! attacker cannot grow the journal); attempts in flight and failures for unknown emails live
//! only in memory and are forgotten on passivation.

pub mod blocking;
pub mod expiry;
pub mod index;
pub mod metrics;
pub mod password;
pub mod photo;
pub mod request;
pub mod service;
pub mod token;
pub mod validate;

use std::collections::VecDeque;

use runtime::{Context, Entity};
use serde::{Deserialize, Serialize};

use self::token::TokenDigest;
use self::validate::InvalidInput;
use crate::config::UsersSection;

/// Failed logins kept per account (the window rule looks at fewer).
pub const LOGIN_FAILURES_KEPT_MAX: usize = 64;
/// A login attempt that was begun but never finished (its node died) stops counting after this.
pub const LOGIN_ATTEMPT_EXPIRY_MS: u64 = 60_000;
/// `Retry-After` when only attempts in flight hold the account.
const IN_FLIGHT_RETRY_AFTER_MS: u64 = 1_000;

/// A pending verification: the digest of the link's secret and when it stops working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub digest: TokenDigest,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
}

/// The stored profile photo (the bytes are in the object store at [`photo::object_path`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoInfo {
    pub content_type: String,
    pub bytes: u64,
    pub width: u32,
    pub height: u32,
    pub updated_at_ms: u64,
}

/// An account, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub name: String,
    pub bio: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub created_at_ms: u64,
    pub verified_at_ms: Option<u64>,
    pub pending_verification: Option<Verification>,
    /// The link that verified the account, to tell "already used" from "forged".
    pub used_verification: Option<TokenDigest>,
    /// Times of recent failed logins, oldest first.
    pub login_failures_ms: Vec<u64>,
    pub photo: Option<PhotoInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserState {
    pub account: Option<Account>,
}

/// What the owner of an account (and the web layer) sees of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub id: String,
    pub email: String,
    pub name: String,
    pub bio: String,
    pub verified: bool,
    pub created_at_ms: u64,
    pub photo: Option<PhotoInfo>,
}

impl From<&Account> for Profile {
    fn from(account: &Account) -> Self {
        Self {
            id: account.id.clone(),
            email: account.email.clone(),
            name: account.name.clone(),
            bio: account.bio.clone(),
            verified: account.verified_at_ms.is_some(),
            created_at_ms: account.created_at_ms,
            photo: account.photo.clone(),
        }
    }
}

/// A new account. `email` must be the entity's key.
#[derive(Clone, Serialize, Deserialize)]
pub struct SignUp {
    pub id: String,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub verification: Verification,
    pub now_ms: u64,
}

impl std::fmt::Debug for SignUp {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SignUp")
            .field("id", &self.id)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum UserCommand {
    SignUp(SignUp),
    Exists,
    Profile {
        user_id: String,
    },
    Verify {
        user_id: String,
        digest: TokenDigest,
        now_ms: u64,
    },
    ReissueVerification {
        verification: Verification,
        now_ms: u64,
    },
    /// Reserves a login attempt (or refuses it when the account is locked) and hands out the
    /// hash to verify against.
    BeginLogin {
        now_ms: u64,
    },
    /// Ends an attempt begun earlier: a failure counts, a success clears the failures.
    FinishLogin {
        outcome: AttemptOutcome,
        now_ms: u64,
    },
    UpdateProfile {
        user_id: String,
        name: Option<String>,
        bio: Option<String>,
    },
    SetPhoto {
        user_id: String,
        photo: PhotoInfo,
    },
    /// The profile of the account under this email, whatever its id (for server-side lookups
    /// such as a room invitation; never answered to another user as is). Appended.
    Identify,
    /// From the entity itself: the clean-up after the expiry of the account `user_id` ended
    /// (`retired`: its `user.id` entry and photo are gone). Appended.
    IdRetired {
        user_id: String,
        retired: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum UserEvent {
    SignedUp {
        id: String,
        email: String,
        name: String,
        password_hash: String,
        at_ms: u64,
        verification: Verification,
    },
    VerificationIssued(Verification),
    Verified {
        at_ms: u64,
        digest: TokenDigest,
    },
    LoginFailed {
        at_ms: u64,
    },
    LoginFailuresCleared,
    ProfileUpdated {
        name: String,
        bio: String,
    },
    PhotoSet(PhotoInfo),
    /// The account `id` was still unverified `users.unverified_ttl_s` after its sign-up: it is
    /// gone and its email can be signed up again. Appended (schema 2).
    Expired {
        id: String,
        at_ms: u64,
    },
}

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    /// The password could not be checked (the node was busy): counts neither way.
    Abandoned,
}

/// The answer to a login's first step.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoginTicket {
    /// Verify the password against `password_hash`, then finish the attempt.
    Proceed {
        password_hash: String,
        profile: Profile,
    },
    /// No such account: verify against a dummy hash (same cost), then finish the attempt.
    NoAccount,
}

impl std::fmt::Debug for LoginTicket {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Proceed { profile, .. } => write!(formatter, "Proceed({})", profile.id),
            Self::NoAccount => formatter.write_str("NoAccount"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserReply {
    Profile(Profile),
    Exists(bool),
    Login(LoginTicket),
    Done,
}

/// Expected refusals; the web layer gives each its status code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum UserError {
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("no such account")]
    NotFound,
    #[error("the verification link is not valid")]
    InvalidToken,
    #[error("the verification link has expired; ask for a new one")]
    TokenExpired,
    #[error("the verification link was already used")]
    TokenUsed,
    #[error("the account is already verified")]
    AlreadyVerified,
    #[error("too many failed logins; try again in {} s", retry_after_ms.div_ceil(1000))]
    TooManyAttempts { retry_after_ms: u64 },
    #[error("a verification mail was sent recently; try again in {} s", retry_after_ms.div_ceil(1000))]
    TooSoon { retry_after_ms: u64 },
    #[error("{0}")]
    Invalid(InvalidInput),
}

pub type UserResult = Result<UserReply, UserError>;

/// The `[users]` rules the entity enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub login_failures_max: usize,
    pub login_failure_window_ms: u64,
    pub resend_interval_ms: u64,
    /// `users.unverified_ttl_s`: an unverified account expires this long after its sign-up.
    pub unverified_ttl_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_config(&UsersSection::default())
    }
}

impl Limits {
    pub fn from_config(users: &UsersSection) -> Self {
        Self {
            login_failures_max: users.login_failures_max as usize,
            login_failure_window_ms: users.login_failure_window_s.saturating_mul(1000),
            resend_interval_ms: users.resend_interval_s.saturating_mul(1000),
            unverified_ttl_ms: users.unverified_ttl_s.saturating_mul(1000),
        }
    }
}

/// Login bookkeeping that is not journaled.
#[derive(Debug, Default)]
pub struct LoginAttempts {
    /// Start times of attempts between `BeginLogin` and `FinishLogin`; bounded because a
    /// `BeginLogin` is refused once failures plus attempts reach `login_failures_max`.
    in_flight_ms: VecDeque<u64>,
    /// Failures for an email without an account (same limit, so the answers look alike).
    unknown_failures_ms: Vec<u64>,
}

/// The `user` entity.
#[derive(Debug, Default)]
pub struct User {
    /// The `[users]` rules, handed over by the node (`actors::register`).
    limits: Limits,
    attempts: LoginAttempts,
}

impl Entity for User {
    const KIND: &'static str = "user";
    /// 2: `UserEvent::Expired`.
    const SCHEMA: u32 = 2;
    type Command = UserCommand;
    type Reply = UserResult;
    type Event = UserEvent;
    type State = UserState;
    type Deps = Limits;

    fn activate(_key: &str, limits: &Limits) -> Self {
        Self {
            limits: *limits,
            attempts: LoginAttempts::default(),
        }
    }

    fn apply(state: &mut UserState, _seq: u64, event: &UserEvent) {
        apply(state, event);
    }

    fn handle(
        &mut self,
        state: &UserState,
        command: UserCommand,
        context: &mut Context<'_, Self>,
    ) -> UserResult {
        if let UserCommand::IdRetired { user_id, retired } = &command {
            expiry::id_retired(state, user_id, *retired, context);
            return Ok(UserReply::Done);
        }
        let (reply, events) = decide(
            state,
            &mut self.attempts,
            self.limits,
            context.key(),
            command,
        );
        for event in events {
            expiry::follow(&event, self.limits, context);
            context.persist(event);
        }
        reply
    }

    fn on_reminder(
        &mut self,
        state: &UserState,
        reminder: &runtime::Reminder,
        context: &mut Context<'_, Self>,
    ) {
        expiry::on_reminder(state, self.limits, reminder, context);
    }
}

/// Applies one event; deterministic, no configuration.
pub fn apply(state: &mut UserState, event: &UserEvent) {
    if let UserEvent::Expired { id, .. } = event {
        // Only the account it names: a new account under the same email is another id.
        if state
            .account
            .as_ref()
            .is_some_and(|account| account.id == *id)
        {
            state.account = None;
        }
        return;
    }
    if let UserEvent::SignedUp {
        id,
        email,
        name,
        password_hash,
        at_ms,
        verification,
    } = event
    {
        state.account = Some(Account {
            id: id.clone(),
            email: email.clone(),
            name: name.clone(),
            bio: String::new(),
            password_hash: password_hash.clone(),
            created_at_ms: *at_ms,
            verified_at_ms: None,
            pending_verification: Some(*verification),
            used_verification: None,
            login_failures_ms: Vec::new(),
            photo: None,
        });
        return;
    }
    let Some(account) = state.account.as_mut() else {
        return;
    };
    match event {
        UserEvent::SignedUp { .. } | UserEvent::Expired { .. } => {}
        UserEvent::VerificationIssued(verification) => {
            account.pending_verification = Some(*verification);
        }
        UserEvent::Verified { at_ms, digest } => {
            account.verified_at_ms = Some(*at_ms);
            account.pending_verification = None;
            account.used_verification = Some(*digest);
        }
        UserEvent::LoginFailed { at_ms } => {
            account.login_failures_ms.push(*at_ms);
            let excess = account
                .login_failures_ms
                .len()
                .saturating_sub(LOGIN_FAILURES_KEPT_MAX);
            account.login_failures_ms.drain(..excess);
        }
        UserEvent::LoginFailuresCleared => account.login_failures_ms.clear(),
        UserEvent::ProfileUpdated { name, bio } => {
            account.name.clone_from(name);
            account.bio.clone_from(bio);
        }
        UserEvent::PhotoSet(photo) => account.photo = Some(photo.clone()),
    }
}

/// Decides what `command` means for the account under `key`: the reply and the events to
/// journal. Pure apart from the in-memory login bookkeeping.
pub fn decide(
    state: &UserState,
    attempts: &mut LoginAttempts,
    limits: Limits,
    key: &str,
    command: UserCommand,
) -> (UserResult, Vec<UserEvent>) {
    let account = state.account.as_ref();
    match command {
        UserCommand::SignUp(sign_up) => sign_up_decision(account, key, sign_up),
        UserCommand::Exists => (Ok(UserReply::Exists(account.is_some())), Vec::new()),
        UserCommand::Identify => match account {
            Some(account) => (Ok(UserReply::Profile(account.into())), Vec::new()),
            None => (Err(UserError::NotFound), Vec::new()),
        },
        UserCommand::Profile { user_id } => match owned(account, &user_id) {
            Ok(account) => (Ok(UserReply::Profile(account.into())), Vec::new()),
            Err(error) => (Err(error), Vec::new()),
        },
        UserCommand::Verify {
            user_id,
            digest,
            now_ms,
        } => verify_decision(state, &user_id, &digest, now_ms),
        UserCommand::ReissueVerification {
            verification,
            now_ms,
        } => reissue_decision(state, limits, verification, now_ms),
        UserCommand::BeginLogin { now_ms } => (
            begin_login(account, attempts, limits, now_ms).map(UserReply::Login),
            Vec::new(),
        ),
        UserCommand::FinishLogin { outcome, now_ms } => {
            let events = finish_login(account, attempts, limits, outcome, now_ms);
            (Ok(UserReply::Done), events)
        }
        UserCommand::UpdateProfile { user_id, name, bio } => {
            update_decision(state, &user_id, name, bio)
        }
        UserCommand::SetPhoto { user_id, photo } => match owned(account, &user_id) {
            Ok(_) => with_events(state, vec![UserEvent::PhotoSet(photo)]),
            Err(error) => (Err(error), Vec::new()),
        },
        // The entity's own message (handled before `decide` by `User::handle`).
        UserCommand::IdRetired { .. } => (Ok(UserReply::Done), Vec::new()),
    }
}

/// The account if it is the one `user_id` names (an id from an orphaned index entry or an
/// old token must not reach someone else's account).
fn owned<'a>(account: Option<&'a Account>, user_id: &str) -> Result<&'a Account, UserError> {
    account
        .filter(|account| account.id == user_id)
        .ok_or(UserError::NotFound)
}

/// Journals `events` and answers with the profile as it will be once they are durable.
fn with_events(state: &UserState, events: Vec<UserEvent>) -> (UserResult, Vec<UserEvent>) {
    let mut next = state.clone();
    for event in &events {
        apply(&mut next, event);
    }
    match next.account.as_ref() {
        Some(account) => (Ok(UserReply::Profile(account.into())), events),
        None => (Err(UserError::NotFound), Vec::new()),
    }
}

fn sign_up_decision(
    account: Option<&Account>,
    key: &str,
    sign_up: SignUp,
) -> (UserResult, Vec<UserEvent>) {
    if account.is_some() {
        return (Err(UserError::EmailTaken), Vec::new());
    }
    // The caller validated already; the entity does not trust it with what it journals.
    let checked = validate::normalize_email(&sign_up.email)
        .and_then(|email| {
            if email == key {
                Ok(email)
            } else {
                Err(InvalidInput::Email("does not match the account key".into()))
            }
        })
        .and_then(|email| Ok((email, validate::normalize_name(&sign_up.name)?)));
    let (email, name) = match checked {
        Ok(checked) => checked,
        Err(invalid) => return (Err(UserError::Invalid(invalid)), Vec::new()),
    };
    assert!(
        sign_up.password_hash.starts_with("$argon2id$") && validate::is_user_id(&sign_up.id),
        "a sign-up must carry an argon2id hash and a generated user id"
    );
    with_events(
        &UserState::default(),
        vec![UserEvent::SignedUp {
            id: sign_up.id,
            email,
            name,
            password_hash: sign_up.password_hash,
            at_ms: sign_up.now_ms,
            verification: sign_up.verification,
        }],
    )
}

fn verify_decision(
    state: &UserState,
    user_id: &str,
    digest: &TokenDigest,
    now_ms: u64,
) -> (UserResult, Vec<UserEvent>) {
    let account = match owned(state.account.as_ref(), user_id) {
        Ok(account) => account,
        Err(_) => return (Err(UserError::InvalidToken), Vec::new()),
    };
    if account
        .used_verification
        .is_some_and(|used| used.matches(digest))
    {
        return (Err(UserError::TokenUsed), Vec::new());
    }
    match account.pending_verification {
        Some(pending) if pending.digest.matches(digest) => {
            if now_ms >= pending.expires_at_ms {
                return (Err(UserError::TokenExpired), Vec::new());
            }
            with_events(
                state,
                vec![UserEvent::Verified {
                    at_ms: now_ms,
                    digest: *digest,
                }],
            )
        }
        _ => (Err(UserError::InvalidToken), Vec::new()),
    }
}

fn reissue_decision(
    state: &UserState,
    limits: Limits,
    verification: Verification,
    now_ms: u64,
) -> (UserResult, Vec<UserEvent>) {
    let Some(account) = state.account.as_ref() else {
        return (Err(UserError::NotFound), Vec::new());
    };
    if account.verified_at_ms.is_some() {
        return (Err(UserError::AlreadyVerified), Vec::new());
    }
    let last_sent_ms = account
        .pending_verification
        .map_or(account.created_at_ms, |pending| pending.issued_at_ms);
    let allowed_at_ms = last_sent_ms.saturating_add(limits.resend_interval_ms);
    if now_ms < allowed_at_ms {
        return (
            Err(UserError::TooSoon {
                retry_after_ms: allowed_at_ms - now_ms,
            }),
            Vec::new(),
        );
    }
    // Only the newest link works: an older mail still in someone's inbox is dead.
    with_events(state, vec![UserEvent::VerificationIssued(verification)])
}

/// Failures of `account` (or of the unknown email) still inside the window at `now_ms`.
fn recent_failures(
    account: Option<&Account>,
    attempts: &LoginAttempts,
    limits: Limits,
    now_ms: u64,
) -> Vec<u64> {
    let since_ms = now_ms.saturating_sub(limits.login_failure_window_ms);
    let all = account.map_or(&attempts.unknown_failures_ms, |account| {
        &account.login_failures_ms
    });
    all.iter().copied().filter(|at| *at > since_ms).collect()
}

fn begin_login(
    account: Option<&Account>,
    attempts: &mut LoginAttempts,
    limits: Limits,
    now_ms: u64,
) -> Result<LoginTicket, UserError> {
    let expired_before_ms = now_ms.saturating_sub(LOGIN_ATTEMPT_EXPIRY_MS);
    attempts
        .in_flight_ms
        .retain(|started| *started > expired_before_ms);
    let failures = recent_failures(account, attempts, limits, now_ms);
    let counted = failures.len() + attempts.in_flight_ms.len();
    if counted >= limits.login_failures_max {
        // Unlocks once enough of the counted failures have left the window: the failure at
        // this index is the last of them. Attempts in flight end within seconds.
        let retry_after_ms = failures
            .get(counted - limits.login_failures_max)
            .map_or(IN_FLIGHT_RETRY_AFTER_MS, |oldest| {
                (oldest + limits.login_failure_window_ms).saturating_sub(now_ms)
            })
            .max(1);
        return Err(UserError::TooManyAttempts { retry_after_ms });
    }
    attempts.in_flight_ms.push_back(now_ms);
    Ok(match account {
        Some(account) => LoginTicket::Proceed {
            password_hash: account.password_hash.clone(),
            profile: account.into(),
        },
        None => LoginTicket::NoAccount,
    })
}

fn finish_login(
    account: Option<&Account>,
    attempts: &mut LoginAttempts,
    limits: Limits,
    outcome: AttemptOutcome,
    now_ms: u64,
) -> Vec<UserEvent> {
    attempts.in_flight_ms.pop_front();
    match (account, outcome) {
        (_, AttemptOutcome::Abandoned) => Vec::new(),
        (Some(account), AttemptOutcome::Succeeded) if !account.login_failures_ms.is_empty() => {
            vec![UserEvent::LoginFailuresCleared]
        }
        (Some(_), AttemptOutcome::Succeeded) => Vec::new(),
        (Some(_), AttemptOutcome::Failed) => vec![UserEvent::LoginFailed { at_ms: now_ms }],
        (None, _) => {
            let mut recent = recent_failures(None, attempts, limits, now_ms);
            recent.push(now_ms);
            let excess = recent.len().saturating_sub(limits.login_failures_max);
            recent.drain(..excess);
            attempts.unknown_failures_ms = recent;
            Vec::new()
        }
    }
}

fn update_decision(
    state: &UserState,
    user_id: &str,
    name: Option<String>,
    bio: Option<String>,
) -> (UserResult, Vec<UserEvent>) {
    let account = match owned(state.account.as_ref(), user_id) {
        Ok(account) => account,
        Err(error) => return (Err(error), Vec::new()),
    };
    let name = match name.as_deref().map(validate::normalize_name).transpose() {
        Ok(name) => name.unwrap_or_else(|| account.name.clone()),
        Err(invalid) => return (Err(UserError::Invalid(invalid)), Vec::new()),
    };
    let bio = match bio.as_deref().map(validate::normalize_bio).transpose() {
        Ok(bio) => bio.unwrap_or_else(|| account.bio.clone()),
        Err(invalid) => return (Err(UserError::Invalid(invalid)), Vec::new()),
    };
    if name == account.name && bio == account.bio {
        return (Ok(UserReply::Profile(account.into())), Vec::new());
    }
    with_events(state, vec![UserEvent::ProfileUpdated { name, bio }])
}

#[cfg(test)]
mod tests;
