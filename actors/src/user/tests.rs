//! The account rules, decided without a node: sign-up, verification tokens (expiry, single
//! use, replacement), login lockout, resend rate limit, profile validation, the expiry of
//! unverified accounts.

use super::*;
use crate::user::token::{new_secret, new_user_id};

const EMAIL: &str = "alice@example.com";
const T0: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 3_600_000;
const UNVERIFIED_TTL_MS: u64 = 7 * 24 * HOUR_MS;

fn limits() -> Limits {
    Limits {
        login_failures_max: 3,
        login_failure_window_ms: 15 * 60_000,
        resend_interval_ms: 60_000,
        unverified_ttl_ms: UNVERIFIED_TTL_MS,
    }
}

/// Runs `command` and applies its events, as the entity actor does.
fn run(
    state: &mut UserState,
    attempts: &mut LoginAttempts,
    command: UserCommand,
) -> (UserResult, usize) {
    let (reply, events) = decide(state, attempts, limits(), EMAIL, command);
    for event in &events {
        apply(state, event);
    }
    (reply, events.len())
}

fn verification(now_ms: u64) -> (String, Verification) {
    let secret = new_secret().expect("secret");
    (
        secret.token("0123456789abcdef0123456789abcdef"),
        Verification {
            digest: secret.digest,
            issued_at_ms: now_ms,
            expires_at_ms: now_ms + HOUR_MS,
        },
    )
}

fn sign_up_command(id: &str, verification: Verification) -> UserCommand {
    UserCommand::SignUp(SignUp {
        id: id.to_string(),
        email: EMAIL.into(),
        name: " Alice ".into(),
        password_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into(),
        verification,
        now_ms: T0,
    })
}

/// A signed-up, unverified account, its id and its token's digest.
fn signed_up() -> (UserState, String, TokenDigest) {
    let mut state = UserState::default();
    let id = new_user_id().expect("id");
    let (_, verification) = verification(T0);
    let (reply, events) = run(
        &mut state,
        &mut LoginAttempts::default(),
        sign_up_command(&id, verification),
    );
    let Ok(UserReply::Profile(profile)) = reply else {
        panic!("sign-up refused: {reply:?}");
    };
    assert_eq!(events, 1);
    assert_eq!(profile.name, "Alice", "the name is normalised");
    assert!(!profile.verified);
    (state, id, verification.digest)
}

#[test]
fn a_second_sign_up_for_the_same_email_is_refused_and_journals_nothing() {
    let (mut state, first_id, _) = signed_up();
    let (_, verification) = verification(T0);
    let other_id = new_user_id().expect("id");
    let (reply, events) = run(
        &mut state,
        &mut LoginAttempts::default(),
        sign_up_command(&other_id, verification),
    );
    assert_eq!(reply, Err(UserError::EmailTaken));
    assert_eq!(events, 0);
    assert_eq!(state.account.expect("account").id, first_id);
}

#[test]
fn a_sign_up_under_another_key_is_refused() {
    let state = UserState::default();
    let (_, verification) = verification(T0);
    let command = sign_up_command(&new_user_id().expect("id"), verification);
    let (reply, events) = decide(
        &state,
        &mut LoginAttempts::default(),
        limits(),
        "mallory@example.com",
        command,
    );
    assert!(matches!(
        reply,
        Err(UserError::Invalid(InvalidInput::Email(_)))
    ));
    assert!(events.is_empty());
}

#[test]
fn a_verification_token_works_once_and_only_before_it_expires() {
    let (state, id, digest) = signed_up();
    let verify = |state: &mut UserState, digest: TokenDigest, now_ms: u64| {
        run(
            state,
            &mut LoginAttempts::default(),
            UserCommand::Verify {
                user_id: id.clone(),
                digest,
                now_ms,
            },
        )
    };

    let mut expired = state.clone();
    assert_eq!(
        verify(&mut expired, digest, T0 + HOUR_MS),
        (Err(UserError::TokenExpired), 0)
    );

    let mut fresh = state.clone();
    let (forged_text, forged) = verification(T0);
    assert!(!forged_text.is_empty());
    assert_eq!(
        verify(&mut fresh, forged.digest, T0 + 1),
        (Err(UserError::InvalidToken), 0)
    );
    let (reply, events) = verify(&mut fresh, digest, T0 + HOUR_MS - 1);
    assert!(
        matches!(&reply, Ok(UserReply::Profile(profile)) if profile.verified),
        "{reply:?}"
    );
    assert_eq!(events, 1);
    assert_eq!(
        verify(&mut fresh, digest, T0 + 2),
        (Err(UserError::TokenUsed), 0),
        "single use"
    );

    let wrong_user = run(
        &mut state.clone(),
        &mut LoginAttempts::default(),
        UserCommand::Verify {
            user_id: new_user_id().expect("id"),
            digest,
            now_ms: T0 + 1,
        },
    );
    assert_eq!(wrong_user, (Err(UserError::InvalidToken), 0));
}

#[test]
fn a_new_verification_mail_is_rate_limited_and_replaces_the_old_link() {
    let (mut state, id, first) = signed_up();
    let attempts = &mut LoginAttempts::default();
    let (_, second) = verification(T0 + 30_000);
    let (reply, events) = run(
        &mut state,
        attempts,
        UserCommand::ReissueVerification {
            verification: second,
            now_ms: T0 + 30_000,
        },
    );
    assert_eq!(
        reply,
        Err(UserError::TooSoon {
            retry_after_ms: 30_000
        })
    );
    assert_eq!(events, 0);

    let (_, second) = verification(T0 + 60_000);
    let (reply, events) = run(
        &mut state,
        attempts,
        UserCommand::ReissueVerification {
            verification: second,
            now_ms: T0 + 60_000,
        },
    );
    assert!(matches!(reply, Ok(UserReply::Profile(_))), "{reply:?}");
    assert_eq!(events, 1);

    let verify = |digest| UserCommand::Verify {
        user_id: id.clone(),
        digest,
        now_ms: T0 + 61_000,
    };
    assert_eq!(
        run(&mut state, attempts, verify(first)).0,
        Err(UserError::InvalidToken),
        "the older link is dead"
    );
    assert!(run(&mut state, attempts, verify(second.digest)).0.is_ok());

    let (_, third) = verification(T0 + HOUR_MS);
    let (reply, _) = run(
        &mut state,
        attempts,
        UserCommand::ReissueVerification {
            verification: third,
            now_ms: T0 + HOUR_MS,
        },
    );
    assert_eq!(reply, Err(UserError::AlreadyVerified));
}

fn begin(state: &mut UserState, attempts: &mut LoginAttempts, now_ms: u64) -> UserResult {
    run(state, attempts, UserCommand::BeginLogin { now_ms }).0
}

fn fail(state: &mut UserState, attempts: &mut LoginAttempts, now_ms: u64) -> usize {
    assert!(begin(state, attempts, now_ms).is_ok());
    run(
        state,
        attempts,
        UserCommand::FinishLogin {
            outcome: AttemptOutcome::Failed,
            now_ms,
        },
    )
    .1
}

#[test]
fn repeated_failures_lock_the_account_until_the_window_passes() {
    let (mut state, _, _) = signed_up();
    let attempts = &mut LoginAttempts::default();
    for second in 0..3 {
        assert_eq!(fail(&mut state, attempts, T0 + second * 1000), 1);
    }
    let window = limits().login_failure_window_ms;
    assert_eq!(
        begin(&mut state, attempts, T0 + 5_000),
        Err(UserError::TooManyAttempts {
            retry_after_ms: window - 5_000
        })
    );
    // The oldest failure leaves the window: one more attempt is allowed.
    let ticket = begin(&mut state, attempts, T0 + window + 1);
    assert!(
        matches!(ticket, Ok(UserReply::Login(LoginTicket::Proceed { .. }))),
        "{ticket:?}"
    );
    // A success clears the failures (journaled).
    let (_, events) = run(
        &mut state,
        attempts,
        UserCommand::FinishLogin {
            outcome: AttemptOutcome::Succeeded,
            now_ms: T0 + window + 2,
        },
    );
    assert_eq!(events, 1);
    assert!(
        state
            .account
            .as_ref()
            .is_some_and(|account| account.login_failures_ms.is_empty())
    );
}

#[test]
fn attempts_in_flight_count_against_the_limit_until_they_finish_or_expire() {
    let (mut state, _, _) = signed_up();
    let attempts = &mut LoginAttempts::default();
    for _ in 0..3 {
        assert!(begin(&mut state, attempts, T0).is_ok());
    }
    assert_eq!(
        begin(&mut state, attempts, T0),
        Err(UserError::TooManyAttempts {
            retry_after_ms: IN_FLIGHT_RETRY_AFTER_MS
        })
    );
    // An attempt that could not check the password ends without counting either way.
    let (_, events) = run(
        &mut state,
        attempts,
        UserCommand::FinishLogin {
            outcome: AttemptOutcome::Abandoned,
            now_ms: T0,
        },
    );
    assert_eq!(events, 0);
    assert!(begin(&mut state, attempts, T0).is_ok());
    // Attempts whose node died never finish; they stop counting after a while.
    assert!(begin(&mut state, attempts, T0 + LOGIN_ATTEMPT_EXPIRY_MS + 1).is_ok());
}

#[test]
fn unknown_emails_are_limited_like_accounts_without_journaling() {
    let mut state = UserState::default();
    let attempts = &mut LoginAttempts::default();
    let ticket = begin(&mut state, attempts, T0);
    assert_eq!(ticket, Ok(UserReply::Login(LoginTicket::NoAccount)));
    let (_, events) = run(
        &mut state,
        attempts,
        UserCommand::FinishLogin {
            outcome: AttemptOutcome::Failed,
            now_ms: T0,
        },
    );
    assert_eq!(
        events, 0,
        "nothing is journaled for an email without an account"
    );
    assert_eq!(fail(&mut state, attempts, T0 + 1), 0);
    assert_eq!(fail(&mut state, attempts, T0 + 2), 0);
    assert!(matches!(
        begin(&mut state, attempts, T0 + 3),
        Err(UserError::TooManyAttempts { .. })
    ));
    assert!(state.account.is_none());
}

#[test]
fn journaled_failures_are_bounded() {
    let (mut state, _, _) = signed_up();
    for index in 0..(LOGIN_FAILURES_KEPT_MAX as u64 + 10) {
        apply(&mut state, &UserEvent::LoginFailed { at_ms: index });
    }
    let failures = &state.account.expect("account").login_failures_ms;
    assert_eq!(failures.len(), LOGIN_FAILURES_KEPT_MAX);
    assert_eq!(failures.first(), Some(&10));
}

#[test]
fn profile_updates_are_validated_and_need_the_right_id() {
    let (mut state, id, _) = signed_up();
    let attempts = &mut LoginAttempts::default();
    let update =
        |user_id: &str, name: Option<&str>, bio: Option<&str>| UserCommand::UpdateProfile {
            user_id: user_id.to_string(),
            name: name.map(str::to_string),
            bio: bio.map(str::to_string),
        };
    let (reply, events) = run(&mut state, attempts, update(&id, None, Some(" Hello ")));
    let Ok(UserReply::Profile(profile)) = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(
        (profile.name.as_str(), profile.bio.as_str()),
        ("Alice", "Hello")
    );
    assert_eq!(events, 1);
    assert_eq!(
        run(&mut state, attempts, update(&id, Some("Alice"), None)).1,
        0,
        "no change, no event"
    );
    let (reply, events) = run(&mut state, attempts, update(&id, Some(""), None));
    assert!(matches!(
        reply,
        Err(UserError::Invalid(InvalidInput::Name(_)))
    ));
    assert_eq!(events, 0);
    let long_bio = "x".repeat(validate::BIO_CHARS_MAX + 1);
    let (reply, _) = run(&mut state, attempts, update(&id, None, Some(&long_bio)));
    assert!(matches!(
        reply,
        Err(UserError::Invalid(InvalidInput::Bio(_)))
    ));
    let other = new_user_id().expect("id");
    assert_eq!(
        run(&mut state, attempts, update(&other, Some("Eve"), None)).0,
        Err(UserError::NotFound)
    );
    assert_eq!(
        run(
            &mut state,
            attempts,
            UserCommand::Profile { user_id: other }
        )
        .0,
        Err(UserError::NotFound)
    );
}

/// What the entity journals when [`expiry::EXPIRE_REMINDER`] fires at `now_ms`, applied.
fn fire_expiry(state: &mut UserState, now_ms: u64) -> expiry::Expiry {
    let decision = expiry::decide_expiry(state, limits(), now_ms);
    if let expiry::Expiry::Expire { id } = &decision {
        apply(
            state,
            &UserEvent::Expired {
                id: id.clone(),
                at_ms: now_ms,
            },
        );
    }
    decision
}

#[test]
fn an_unverified_account_expires_once_due_and_not_before() {
    let (mut state, id, _) = signed_up();
    let due_ms = T0 + UNVERIFIED_TTL_MS;
    assert_eq!(expiry::due_ms(T0, limits()), due_ms);
    assert_eq!(
        fire_expiry(&mut state, due_ms - 1),
        expiry::Expiry::NotYet { due_ms },
        "a firing before the due time (a raised TTL) moves the reminder"
    );
    assert!(state.account.is_some());
    assert_eq!(
        fire_expiry(&mut state, due_ms),
        expiry::Expiry::Expire { id: id.clone() }
    );
    assert!(state.account.is_none(), "the account is gone");
    let attempts = &mut LoginAttempts::default();
    assert_eq!(
        run(&mut state, attempts, UserCommand::Exists).0,
        Ok(UserReply::Exists(false))
    );
    assert_eq!(
        run(
            &mut state,
            attempts,
            UserCommand::BeginLogin { now_ms: due_ms }
        )
        .0,
        Ok(UserReply::Login(LoginTicket::NoAccount)),
        "a login finds no account"
    );
    assert_eq!(
        fire_expiry(&mut state, due_ms + HOUR_MS),
        expiry::Expiry::Keep,
        "a repeated firing does nothing"
    );
}

#[test]
fn a_verified_account_never_expires() {
    let (mut state, id, digest) = signed_up();
    let (reply, events) = run(
        &mut state,
        &mut LoginAttempts::default(),
        UserCommand::Verify {
            user_id: id.clone(),
            digest,
            now_ms: T0 + 1,
        },
    );
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(events, 1);
    let late_ms = T0 + 10 * UNVERIFIED_TTL_MS;
    assert_eq!(fire_expiry(&mut state, late_ms), expiry::Expiry::Keep);
    assert_eq!(fire_expiry(&mut state, late_ms), expiry::Expiry::Keep);
    assert_eq!(state.account.expect("still there").id, id);
}

#[test]
fn a_raised_ttl_moves_the_expiry_later() {
    let (state, _, _) = signed_up();
    let raised = Limits {
        unverified_ttl_ms: 2 * UNVERIFIED_TTL_MS,
        ..limits()
    };
    assert_eq!(
        expiry::decide_expiry(&state, raised, T0 + UNVERIFIED_TTL_MS),
        expiry::Expiry::NotYet {
            due_ms: T0 + 2 * UNVERIFIED_TTL_MS
        }
    );
}

#[test]
fn an_expired_email_signs_up_again_and_the_old_id_reaches_nothing() {
    let (mut state, old_id, old_digest) = signed_up();
    let due_ms = T0 + UNVERIFIED_TTL_MS;
    fire_expiry(&mut state, due_ms);
    let attempts = &mut LoginAttempts::default();
    let new_id = new_user_id().expect("id");
    let (_, verification) = verification(due_ms);
    let UserCommand::SignUp(mut again) = sign_up_command(&new_id, verification) else {
        unreachable!("a sign-up command");
    };
    again.now_ms = due_ms;
    let (reply, events) = run(&mut state, attempts, UserCommand::SignUp(again));
    assert!(reply.is_ok(), "the email is free again: {reply:?}");
    assert_eq!(events, 1);
    let verify_old = UserCommand::Verify {
        user_id: old_id.clone(),
        digest: old_digest,
        now_ms: due_ms,
    };
    assert_eq!(
        run(&mut state, attempts, verify_old).0,
        Err(UserError::InvalidToken),
        "the expired account's link does not verify the new account"
    );
    assert_eq!(
        run(
            &mut state,
            attempts,
            UserCommand::Profile {
                user_id: old_id.clone()
            }
        )
        .0,
        Err(UserError::NotFound)
    );
    // A repeated `Expired` of the old account (a replay) leaves the new one alone.
    apply(
        &mut state,
        &UserEvent::Expired {
            id: old_id,
            at_ms: due_ms,
        },
    );
    assert_eq!(state.account.as_ref().expect("new account").id, new_id);
    assert_eq!(
        expiry::decide_expiry(&state, limits(), due_ms + 1),
        expiry::Expiry::NotYet {
            due_ms: due_ms + UNVERIFIED_TTL_MS
        },
        "the new account's own expiry counts from its own sign-up"
    );
}

#[test]
fn retire_reminders_name_the_id_within_the_runtime_limit() {
    let id = new_user_id().expect("id");
    let name = expiry::retire_reminder(&id);
    assert_eq!(
        name.strip_prefix(expiry::RETIRE_REMINDER_PREFIX),
        Some(id.as_str())
    );
    assert!(name.len() <= runtime::reminder::REMINDER_NAME_BYTES_MAX);
}
