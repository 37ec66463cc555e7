//! The `user.id` entity: a user id → email index, one entity per id.
//!
//! Tokens and URLs name users by id; accounts are keyed by email. Sign-up binds a freshly
//! generated id here before it creates the account, so every account's id resolves. A sign-up
//! that then loses (the email was taken meanwhile) leaves an unused binding behind: harmless,
//! since the account entity checks that an id is its own before answering.
//!
//! An unverified account that expires retires its id here (`Retire`, from the account's
//! `retire-id:` reminder, see `user::expiry`): the id resolves to nothing again, so it never
//! leads to a later account under the same email. Ids are random (128 bits) and never
//! generated twice, so a retired id is not bound again.

use runtime::{Context, Entity};
use serde::{Deserialize, Serialize};

use super::validate;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IndexCommand {
    /// Binds the id to `email`; binding again to the same email is a no-op.
    Bind {
        email: String,
    },
    Lookup,
    /// Unbinds the id from `email` (its account expired); a no-op when it is not bound.
    /// Appended.
    Retire {
        email: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexEvent {
    Bound {
        email: String,
    },
    /// Appended (schema 2).
    Retired,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexState {
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum IndexError {
    #[error("the user id is bound to another account")]
    BoundElsewhere,
    #[error("not a user id or not an email")]
    Invalid,
}

/// The `user.id` entity.
#[derive(Debug, Default)]
pub struct UserIndex;

impl Entity for UserIndex {
    const KIND: &'static str = "user.id";
    /// 2: `IndexEvent::Retired`.
    const SCHEMA: u32 = 2;
    type Command = IndexCommand;
    /// The email the id resolves to (after the command).
    type Reply = Result<Option<String>, IndexError>;
    type Event = IndexEvent;
    type State = IndexState;
    type Deps = ();

    fn activate(_key: &str, _deps: &()) -> Self {
        Self
    }

    fn apply(state: &mut IndexState, _seq: u64, event: &IndexEvent) {
        match event {
            IndexEvent::Bound { email } => state.email = Some(email.clone()),
            IndexEvent::Retired => state.email = None,
        }
    }

    fn handle(
        &mut self,
        state: &IndexState,
        command: IndexCommand,
        context: &mut Context<'_, Self>,
    ) -> Self::Reply {
        let (reply, event) = decide(state, context.key(), command);
        if let Some(event) = event {
            context.persist(event);
        }
        reply
    }
}

fn decide(
    state: &IndexState,
    key: &str,
    command: IndexCommand,
) -> (Result<Option<String>, IndexError>, Option<IndexEvent>) {
    match command {
        IndexCommand::Lookup => (Ok(state.email.clone()), None),
        IndexCommand::Retire { email } => match &state.email {
            None => (Ok(None), None),
            Some(bound) if *bound == email => (Ok(None), Some(IndexEvent::Retired)),
            Some(_) => (Err(IndexError::BoundElsewhere), None),
        },
        IndexCommand::Bind { email } => {
            if !validate::is_user_id(key)
                || validate::normalize_email(&email).as_ref() != Ok(&email)
            {
                return (Err(IndexError::Invalid), None);
            }
            match &state.email {
                Some(bound) if *bound == email => (Ok(Some(email)), None),
                Some(_) => (Err(IndexError::BoundElsewhere), None),
                None => (Ok(Some(email.clone())), Some(IndexEvent::Bound { email })),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn an_id_binds_once() {
        let mut state = IndexState::default();
        assert_eq!(decide(&state, ID, IndexCommand::Lookup).0, Ok(None));
        let bind = |email: &str| IndexCommand::Bind {
            email: email.to_string(),
        };
        let (reply, event) = decide(&state, ID, bind("alice@example.com"));
        assert_eq!(reply, Ok(Some("alice@example.com".into())));
        let event = event.expect("journaled");
        UserIndex::apply(&mut state, 1, &event);
        let (reply, event) = decide(&state, ID, bind("alice@example.com"));
        assert_eq!(reply, Ok(Some("alice@example.com".into())));
        assert!(event.is_none(), "idempotent");
        assert_eq!(
            decide(&state, ID, bind("bob@example.com")).0,
            Err(IndexError::BoundElsewhere)
        );
        assert_eq!(
            decide(&state, ID, IndexCommand::Lookup).0,
            Ok(Some("alice@example.com".into()))
        );
    }

    #[test]
    fn a_retired_id_resolves_to_nothing_and_retiring_again_is_a_no_op() {
        let mut state = IndexState::default();
        let (_, event) = decide(
            &state,
            ID,
            IndexCommand::Bind {
                email: "alice@example.com".into(),
            },
        );
        UserIndex::apply(&mut state, 1, &event.expect("bound"));
        let retire = |email: &str| IndexCommand::Retire {
            email: email.to_string(),
        };
        assert_eq!(
            decide(&state, ID, retire("bob@example.com")),
            (Err(IndexError::BoundElsewhere), None),
            "only the email it is bound to retires it"
        );
        let (reply, event) = decide(&state, ID, retire("alice@example.com"));
        assert_eq!(reply, Ok(None));
        UserIndex::apply(&mut state, 2, &event.expect("journaled"));
        assert_eq!(decide(&state, ID, IndexCommand::Lookup).0, Ok(None));
        assert_eq!(
            decide(&state, ID, retire("alice@example.com")),
            (Ok(None), None),
            "idempotent"
        );
    }

    #[test]
    fn only_ids_and_normalised_emails_are_bound() {
        let state = IndexState::default();
        let bind = |email: &str| IndexCommand::Bind {
            email: email.to_string(),
        };
        assert_eq!(
            decide(&state, "not-an-id", bind("a@example.com")).0,
            Err(IndexError::Invalid)
        );
        assert_eq!(
            decide(&state, ID, bind("A@Example.com")).0,
            Err(IndexError::Invalid)
        );
    }
}
