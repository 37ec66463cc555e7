//! Typed requests: a command type that names its reply type.
//!
//! An entity kind has one wire command enum and one wire reply enum (`Entity::Command`,
//! `Entity::Reply`): they are what peers exchange and what the journal records (a retried
//! command is answered from the journal), so their bytes never change. A [`Request`] is a
//! typed view over them: a struct that converts into one command variant and takes the
//! answer out of the reply variant that command gets, so that
//! [`EntityRef::ask`](crate::EntityRef::ask) returns exactly the answer a request can have and
//! callers never match variants that cannot happen.

use crate::entity::Entity;

/// A request to an entity of kind `E` and the answer it gets.
///
/// An implementation must keep mapping to the same command variant (the journal and peers of
/// other builds see only the command's bytes) and must accept every reply the entity's
/// `handle` gives that command.
pub trait Request<E: Entity>: Send + 'static {
    /// The answer to this request.
    type Reply: Send + 'static;

    /// The command this request is on the wire.
    fn into_command(self) -> E::Command;

    /// This request's answer out of the entity's reply; `None` for a reply that belongs to
    /// another command (a bug in the entity, or a peer of an incompatible build), which the
    /// asker gets as [`RuntimeError::UnexpectedReply`](crate::RuntimeError::UnexpectedReply).
    fn from_reply(reply: E::Reply) -> Option<Self::Reply>;
}

/// For entities whose reply is `Result<R, Error>`: an error passes through, the ok value goes
/// through `pick` (which returns `None` for a variant of another command).
pub fn map_ok<R, Error, T>(
    reply: Result<R, Error>,
    pick: impl FnOnce(R) -> Option<T>,
) -> Option<Result<T, Error>> {
    match reply {
        Ok(reply) => pick(reply).map(Ok),
        Err(error) => Some(Err(error)),
    }
}
