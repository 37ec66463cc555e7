//! Unverified accounts expire: the `user` entity's durable reminders and the clean-up after.
//!
//! The sign-up registers [`EXPIRE_REMINDER`] at `created_at + users.unverified_ttl_s`; the
//! verification forgets it. When it fires (on whichever node owns the account then) and the
//! account is still unverified, the entity journals `Expired`: the account is gone, a login
//! finds no account and the email can be signed up again (with a new id). A firing that finds
//! the account verified, already expired or not yet due (the TTL was raised since) does
//! nothing, or moves the reminder to the new due time.
//!
//! What is keyed by the account's id outlives it in two places: its `user.id` entry (id →
//! email, which now names someone else's email once it is signed up again) and its photo
//! object. The entry is harmless even before it goes (the account entity answers an id only if
//! it is its own), but it should not resolve at all: the same command that journals `Expired`
//! registers the reminder `retire-id:<id>`, due at once. Its firing retires the entry and deletes
//! the photo in the background and re-registers itself [`RETIRE_RETRY_MS`] later, so a node that
//! dies meanwhile only delays the clean-up; the entity forgets the reminder once both are done.
//! An unverified account cannot log in, so it has no sessions, jobs or rooms of its own; a room
//! it was invited to keeps an id that no longer resolves and is never given out again.

use runtime::clock::unix_ms;
use runtime::{Context, Reminder};

use super::index::{IndexError, UserIndex};
use super::request::Retire;
use super::{Limits, User, UserCommand, UserEvent, UserState, photo, validate};

/// The reminder that expires the account if it is still unverified when it fires.
pub const EXPIRE_REMINDER: &str = "expire-unverified";
/// Prefix of the reminder that retires an expired account's id: `retire-id:<user id>`.
pub const RETIRE_REMINDER_PREFIX: &str = "retire-id:";
/// How long after a firing of `retire-id:` it fires again unless the clean-up finished.
pub const RETIRE_RETRY_MS: u64 = 60_000;

/// What a firing of [`EXPIRE_REMINDER`] means for the account at `now_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// No account, or a verified one: nothing to do.
    Keep,
    /// Unverified but not due yet (the TTL was raised after the sign-up): fire again then.
    NotYet { due_ms: u64 },
    /// Unverified and due: journal `Expired` for this id.
    Expire { id: String },
}

/// Decides what a firing of [`EXPIRE_REMINDER`] at `now_ms` does; pure.
pub fn decide_expiry(state: &UserState, limits: Limits, now_ms: u64) -> Expiry {
    let Some(account) = state
        .account
        .as_ref()
        .filter(|account| account.verified_at_ms.is_none())
    else {
        return Expiry::Keep;
    };
    let due_ms = due_ms(account.created_at_ms, limits);
    if now_ms < due_ms {
        Expiry::NotYet { due_ms }
    } else {
        Expiry::Expire {
            id: account.id.clone(),
        }
    }
}

/// When an account created at `created_at_ms` expires if it is still unverified.
pub fn due_ms(created_at_ms: u64, limits: Limits) -> u64 {
    created_at_ms.saturating_add(limits.unverified_ttl_ms)
}

/// The name of the reminder that retires the id of the expired account `user_id`.
pub fn retire_reminder(user_id: &str) -> String {
    format!("{RETIRE_REMINDER_PREFIX}{user_id}")
}

/// The reminders that follow from an event `handle` is about to journal: a sign-up sets the
/// expiry, a verification forgets it.
pub(super) fn follow(event: &UserEvent, limits: Limits, context: &mut Context<'_, User>) {
    match event {
        UserEvent::SignedUp { at_ms, .. } => {
            context.remind_fixed(EXPIRE_REMINDER, due_ms(*at_ms, limits), None);
        }
        UserEvent::Verified { .. } => context.forget_fixed(EXPIRE_REMINDER),
        _ => {}
    }
}

/// Dispatches a firing of one of the account's reminders.
pub(super) fn on_reminder(
    state: &UserState,
    limits: Limits,
    reminder: &Reminder,
    context: &mut Context<'_, User>,
) {
    if reminder.name == EXPIRE_REMINDER {
        expire_due(state, limits, context);
        return;
    }
    match reminder.name.strip_prefix(RETIRE_REMINDER_PREFIX) {
        Some(user_id) if validate::is_user_id(user_id) => retire_due(state, user_id, context),
        _ => {
            tracing::warn!(user = %context.key(), name = %reminder.name, "unknown account reminder; ignored");
        }
    }
}

/// [`EXPIRE_REMINDER`] fired: expires the account if [`decide_expiry`] says so.
fn expire_due(state: &UserState, limits: Limits, context: &mut Context<'_, User>) {
    let now_ms = unix_ms();
    match decide_expiry(state, limits, now_ms) {
        Expiry::Keep => {}
        Expiry::NotYet { due_ms } => context.remind_fixed(EXPIRE_REMINDER, due_ms, None),
        Expiry::Expire { id } => {
            tracing::info!(user = %id, "unverified account expired");
            context.remind_fixed(&retire_reminder(&id), now_ms, None);
            context.persist(UserEvent::Expired { id, at_ms: now_ms });
        }
    }
}

/// `retire-id:<user_id>` fired: retires the id's `user.id` entry and deletes its photo in the
/// background (the firing comes again [`RETIRE_RETRY_MS`] later unless that finishes). A
/// reminder left by an expiry whose append failed finds the account alive under that id: it
/// is forgotten and nothing is retired.
fn retire_due(state: &UserState, user_id: &str, context: &mut Context<'_, User>) {
    let name = retire_reminder(user_id);
    if state
        .account
        .as_ref()
        .is_some_and(|account| account.id == user_id)
    {
        context.forget_fixed(&name);
        return;
    }
    context.remind_fixed(&name, unix_ms().saturating_add(RETIRE_RETRY_MS), None);
    let runtime = context.runtime().clone();
    let email = context.key().to_string();
    let user_id = user_id.to_string();
    context.spawn(async move {
        let retired = retire(&runtime, &user_id, email).await;
        UserCommand::IdRetired { user_id, retired }
    });
}

/// The clean-up finished (or failed: then the reminder's next firing tries again).
pub(super) fn id_retired(
    state: &UserState,
    user_id: &str,
    retired: bool,
    context: &mut Context<'_, User>,
) {
    let alive = state
        .account
        .as_ref()
        .is_some_and(|account| account.id == user_id);
    if retired && !alive && validate::is_user_id(user_id) {
        tracing::info!(user = %user_id, "expired account's id retired");
        context.forget_fixed(&retire_reminder(user_id));
    }
}

/// Unbinds `user_id` from `email` in `user.id` and deletes its photo; true once both are done
/// (each is idempotent).
async fn retire(runtime: &runtime::Runtime, user_id: &str, email: String) -> bool {
    let index = runtime.entity::<UserIndex>(user_id.to_string());
    match index.ask(Retire { email }).await {
        Ok(Ok(())) => {}
        Ok(Err(IndexError::BoundElsewhere | IndexError::Invalid)) => {
            // Nothing of this account to retire there; never expected (the id was bound to
            // this email before the account existed).
            tracing::error!(user = %user_id, "an expired account's id is not bound to its email");
        }
        Err(error) => {
            tracing::warn!(user = %user_id, %error, "could not retire an expired account's id; retried later");
            return false;
        }
    }
    match photo::delete(runtime.object_store(), user_id).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(user = %user_id, %error, "could not delete an expired account's photo; retried later");
            false
        }
    }
}
