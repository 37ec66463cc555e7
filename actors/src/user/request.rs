//! The account's typed requests (`user` and `user.id` entities): each converts into one command
//! (the wire and journal format, unchanged) and takes its answer out of the reply variant that
//! command gets.

use runtime::Request;
use runtime::request::map_ok;

use super::index::{IndexCommand, IndexError, UserIndex};
use super::{
    AttemptOutcome, LoginTicket, PhotoInfo, Profile, SignUp, TokenDigest, User, UserCommand,
    UserReply, UserResult, Verification,
};
use crate::user::UserError;

/// Whether an account exists under the entity's email.
#[derive(Debug, Clone, Copy)]
pub struct Exists;

/// The profile of the account, if `user_id` is its id.
#[derive(Debug, Clone)]
pub struct GetProfile {
    pub user_id: String,
}

/// Activates the account whose pending verification has `digest`.
#[derive(Debug, Clone)]
pub struct Verify {
    pub user_id: String,
    pub digest: TokenDigest,
    pub now_ms: u64,
}

/// Replaces the pending verification (a new link).
#[derive(Debug, Clone)]
pub struct ReissueVerification {
    pub verification: Verification,
    pub now_ms: u64,
}

/// Reserves a login attempt (or refuses it when the account is locked) and hands out the hash
/// to verify against.
#[derive(Debug, Clone, Copy)]
pub struct BeginLogin {
    pub now_ms: u64,
}

/// Ends an attempt begun earlier: a failure counts, a success clears the failures.
#[derive(Debug, Clone, Copy)]
pub struct FinishLogin {
    pub outcome: AttemptOutcome,
    pub now_ms: u64,
}

/// Changes the name and/or the bio (`None` keeps the current value).
#[derive(Debug, Clone)]
pub struct UpdateProfile {
    pub user_id: String,
    pub name: Option<String>,
    pub bio: Option<String>,
}

/// Makes the stored photo the account's.
#[derive(Debug, Clone)]
pub struct SetPhoto {
    pub user_id: String,
    pub photo: PhotoInfo,
}

fn profile(reply: UserReply) -> Option<Profile> {
    match reply {
        UserReply::Profile(profile) => Some(profile),
        _ => None,
    }
}

/// The `user` requests answered with the account's profile.
macro_rules! answered_with_profile {
    ($($request:ty => |$this:ident| $command:expr),* $(,)?) => {$(
        impl Request<User> for $request {
            type Reply = Result<Profile, UserError>;

            fn into_command(self) -> UserCommand {
                let $this = self;
                $command
            }

            fn from_reply(reply: UserResult) -> Option<Self::Reply> {
                map_ok(reply, profile)
            }
        }
    )*};
}

answered_with_profile!(
    SignUp => |this| UserCommand::SignUp(this),
    GetProfile => |this| UserCommand::Profile { user_id: this.user_id },
    Verify => |this| UserCommand::Verify {
        user_id: this.user_id,
        digest: this.digest,
        now_ms: this.now_ms,
    },
    ReissueVerification => |this| UserCommand::ReissueVerification {
        verification: this.verification,
        now_ms: this.now_ms,
    },
    UpdateProfile => |this| UserCommand::UpdateProfile {
        user_id: this.user_id,
        name: this.name,
        bio: this.bio,
    },
    SetPhoto => |this| UserCommand::SetPhoto {
        user_id: this.user_id,
        photo: this.photo,
    },
    Identify => |_this| UserCommand::Identify,
);

/// The profile of the account under the entity's email (server-side lookups only).
#[derive(Debug, Clone, Copy)]
pub struct Identify;

impl Request<User> for Exists {
    type Reply = Result<bool, UserError>;

    fn into_command(self) -> UserCommand {
        UserCommand::Exists
    }

    fn from_reply(reply: UserResult) -> Option<Self::Reply> {
        map_ok(reply, |reply| match reply {
            UserReply::Exists(exists) => Some(exists),
            _ => None,
        })
    }
}

impl Request<User> for BeginLogin {
    type Reply = Result<LoginTicket, UserError>;

    fn into_command(self) -> UserCommand {
        UserCommand::BeginLogin {
            now_ms: self.now_ms,
        }
    }

    fn from_reply(reply: UserResult) -> Option<Self::Reply> {
        map_ok(reply, |reply| match reply {
            UserReply::Login(ticket) => Some(ticket),
            _ => None,
        })
    }
}

impl Request<User> for FinishLogin {
    type Reply = Result<(), UserError>;

    fn into_command(self) -> UserCommand {
        UserCommand::FinishLogin {
            outcome: self.outcome,
            now_ms: self.now_ms,
        }
    }

    fn from_reply(reply: UserResult) -> Option<Self::Reply> {
        map_ok(reply, |reply| match reply {
            UserReply::Done => Some(()),
            _ => None,
        })
    }
}

/// Binds the id to `email` (`user.id`); binding again to the same email is a no-op. Answers
/// the email the id resolves to.
#[derive(Debug, Clone)]
pub struct Bind {
    pub email: String,
}

/// The email the id resolves to (`user.id`).
#[derive(Debug, Clone, Copy)]
pub struct Lookup;

impl Request<UserIndex> for Bind {
    type Reply = Result<Option<String>, IndexError>;

    fn into_command(self) -> IndexCommand {
        IndexCommand::Bind { email: self.email }
    }

    fn from_reply(reply: Self::Reply) -> Option<Self::Reply> {
        Some(reply)
    }
}

/// Unbinds the id from `email` (`user.id`; its account expired); a no-op when it is unbound.
#[derive(Debug, Clone)]
pub struct Retire {
    pub email: String,
}

impl Request<UserIndex> for Retire {
    type Reply = Result<(), IndexError>;

    fn into_command(self) -> IndexCommand {
        IndexCommand::Retire { email: self.email }
    }

    fn from_reply(reply: Result<Option<String>, IndexError>) -> Option<Self::Reply> {
        Some(reply.map(drop))
    }
}

impl Request<UserIndex> for Lookup {
    type Reply = Result<Option<String>, IndexError>;

    fn into_command(self) -> IndexCommand {
        IndexCommand::Lookup
    }

    fn from_reply(reply: Self::Reply) -> Option<Self::Reply> {
        Some(reply)
    }
}
