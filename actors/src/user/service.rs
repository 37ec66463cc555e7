//! [`Accounts`]: the account flows (sign-up, verification, login, profile, photo) as the web
//! layer calls them. It validates input, runs argon2 and image work on the blocking pool, asks
//! the `user` and `user.id` entities, and sends mail; it knows nothing of HTTP.
//!
//! Login takes the same path whether or not the account exists: one read of the account
//! entity (which also enforces the lockout), one argon2 verification (against a dummy hash when
//! there is no account), and the attempt's end recorded in the background, so neither the
//! answer nor its timing tells the two apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use runtime::clock::unix_ms;
use runtime::{Runtime, RuntimeError};
use tokio::sync::Semaphore;

use super::blocking::{BlockingPool, PoolError};
use super::index::{IndexError, UserIndex};
use super::metrics as names;
use super::password::{HashParams, Passwords};
use super::photo::{self, PhotoError};
use super::request::{
    BeginLogin, Bind, Exists, FinishLogin, GetProfile, Identify, Lookup, ReissueVerification,
    SetPhoto, UpdateProfile, Verify,
};
use super::token::{self, NewSecret};
use super::validate::{self, InvalidInput};
use super::{
    AttemptOutcome, LoginTicket, PhotoInfo, Profile, SignUp, User, UserError, Verification,
};
use crate::config::UsersSection;
use crate::mailer::{Mail, Mailer};

/// id → email resolutions remembered per node. A binding changes only when its unverified
/// account expires (the id is retired): a stale entry then names an email whose account, if
/// any, has another id, and the account entity answers only its own id.
pub const ID_CACHE_ENTRIES_MAX: usize = 10_000;
/// Mails being sent at once per node; beyond it a mail is dropped (the user can ask again).
pub const MAILS_IN_FLIGHT_MAX: usize = 64;

/// Why an account flow did not succeed. The web layer maps each to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    Invalid(#[from] InvalidInput),
    #[error("{0}")]
    User(#[from] UserError),
    /// Unknown email or wrong password: deliberately the same.
    #[error("wrong email or password")]
    BadCredentials,
    #[error(
        "the email address is not verified yet; follow the link in the mail or ask for a new one"
    )]
    NotVerified,
    #[error("{0}")]
    Photo(#[from] PhotoError),
    #[error("the photo is larger than {bytes_max} bytes")]
    PhotoTooLarge { bytes_max: u64 },
    #[error("{0}")]
    Busy(PoolError),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<PoolError> for AccountError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Busy => Self::Busy(error),
            PoolError::Failed(reason) => Self::Internal(reason),
        }
    }
}

pub type Result<T, E = AccountError> = std::result::Result<T, E>;

/// The node's entry point to accounts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Accounts {
    runtime: Runtime,
    users: Arc<UsersSection>,
    passwords: Passwords,
    /// Image work shares the CPU bound with password hashing.
    pool: BlockingPool,
    mailer: Arc<dyn Mailer>,
    /// Bounds the mails being sent in the background.
    mails: Arc<Semaphore>,
    /// Start of activation links, e.g. `http://127.0.0.1:8081`.
    link_base: String,
    /// Bounded id → email cache; see [`ID_CACHE_ENTRIES_MAX`].
    ids: Arc<Mutex<HashMap<String, String>>>,
}

impl Accounts {
    /// `users` is `[users]`; `link_base` is used when its `public_url` is not set (the node's
    /// own address). Must be called inside a tokio runtime (it prepares the dummy hash in the
    /// background).
    pub fn new(
        runtime: Runtime,
        users: Arc<UsersSection>,
        mailer: Arc<dyn Mailer>,
        link_base: String,
    ) -> Self {
        names::describe();
        let pool = BlockingPool::per_core();
        let link_base = users
            .public_url
            .clone()
            .unwrap_or(link_base)
            .trim_end_matches('/')
            .to_string();
        let passwords = Passwords::new(HashParams::from_config(&users), pool.clone());
        let warm = passwords.clone();
        tokio::spawn(async move { warm.warm_up().await });
        Self {
            passwords,
            pool,
            users,
            runtime,
            mailer,
            mails: Arc::new(Semaphore::new(MAILS_IN_FLIGHT_MAX)),
            link_base,
            ids: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn settings(&self) -> &UsersSection {
        &self.users
    }

    /// Creates an unverified account and mails its activation link.
    pub async fn sign_up(&self, email: &str, password: String, name: &str) -> Result<Profile> {
        let checked = validate::normalize_email(email).and_then(|email| {
            let name = validate::normalize_name(name)?;
            validate::check_password_strength(&password, &email, &name)?;
            Ok((email, name))
        });
        let (email, name) = checked.inspect_err(|_| count(names::SIGNUPS_TOTAL, "invalid"))?;
        // Answer a plain duplicate before paying for a hash; the entity still decides races.
        if self.ask_user(&email, Exists).await? {
            count(names::SIGNUPS_TOTAL, "taken");
            return Err(UserError::EmailTaken.into());
        }
        let password_hash = self.hash(password).await?;
        let id = token::new_user_id().map_err(AccountError::Internal)?;
        let secret = token::new_secret().map_err(AccountError::Internal)?;
        let now_ms = unix_ms();
        // The id resolves before the account exists (see the `index` module).
        self.bind_id(&id, &email).await?;
        let sign_up = SignUp {
            id,
            email: email.clone(),
            name,
            password_hash,
            verification: self.verification(&secret, now_ms),
            now_ms,
        };
        let profile = match self.ask_user(&email, sign_up).await {
            Ok(profile) => profile,
            Err(AccountError::User(UserError::EmailTaken)) => {
                count(names::SIGNUPS_TOTAL, "taken");
                return Err(UserError::EmailTaken.into());
            }
            Err(error) => return Err(error),
        };
        count(names::SIGNUPS_TOTAL, "created");
        tracing::info!(user = %profile.id, "account created");
        self.mail_verification(&profile, &secret);
        Ok(profile)
    }

    /// Sends a new activation link (the old one stops working). Answers `Ok` without sending
    /// anything when there is no such account or it is verified, so it reveals neither.
    pub async fn resend_verification(&self, email: &str) -> Result<()> {
        let email = validate::normalize_email(email)?;
        let secret = token::new_secret().map_err(AccountError::Internal)?;
        let now_ms = unix_ms();
        let reissue = ReissueVerification {
            verification: self.verification(&secret, now_ms),
            now_ms,
        };
        match self.ask_user(&email, reissue).await {
            Ok(profile) => {
                self.mail_verification(&profile, &secret);
                Ok(())
            }
            Err(AccountError::User(UserError::NotFound | UserError::AlreadyVerified)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Activates the account a link's token names.
    pub async fn verify(&self, token: &str) -> Result<Profile> {
        let outcome = self.verify_token(token).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(AccountError::User(UserError::TokenExpired)) => "expired",
            Err(AccountError::User(UserError::TokenUsed)) => "used",
            Err(AccountError::User(UserError::InvalidToken)) => "invalid",
            Err(_) => "error",
        };
        count(names::VERIFICATIONS_TOTAL, label);
        outcome
    }

    async fn verify_token(&self, token: &str) -> Result<Profile> {
        let (user_id, digest) =
            token::parse_verification_token(token).ok_or(UserError::InvalidToken)?;
        let email = self
            .email_of(&user_id)
            .await?
            .ok_or(UserError::InvalidToken)?;
        let verify = Verify {
            user_id,
            digest,
            now_ms: unix_ms(),
        };
        self.ask_user(&email, verify).await
    }

    /// Checks a password; the profile of a verified account on success.
    pub async fn login(&self, email: &str, password: String) -> Result<Profile> {
        let outcome = self.try_login(email, password).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(AccountError::BadCredentials) => "bad_credentials",
            Err(AccountError::NotVerified) => "unverified",
            Err(AccountError::User(UserError::TooManyAttempts { .. })) => "locked",
            Err(_) => "error",
        };
        count(names::LOGINS_TOTAL, label);
        outcome
    }

    async fn try_login(&self, email: &str, password: String) -> Result<Profile> {
        let email = validate::normalize_email(email)?;
        if password.is_empty() || password.len() > validate::PASSWORD_BYTES_MAX {
            return Err(AccountError::BadCredentials);
        }
        let now_ms = unix_ms();
        let ticket = self.ask_user(&email, BeginLogin { now_ms }).await?;
        let (password_hash, profile) = match ticket {
            LoginTicket::Proceed {
                password_hash,
                profile,
            } => (Some(password_hash), Some(profile)),
            LoginTicket::NoAccount => (None, None),
        };
        let started = Instant::now();
        let verified = self.passwords.verify(password_hash, password).await;
        metrics::histogram!(names::PASSWORD_HASH_SECONDS).record(started.elapsed().as_secs_f64());
        let outcome = match verified {
            Ok(true) => AttemptOutcome::Succeeded,
            Ok(false) => AttemptOutcome::Failed,
            Err(_) => AttemptOutcome::Abandoned,
        };
        self.finish_login_in_background(email, outcome, now_ms);
        match (verified?, profile) {
            (true, Some(profile)) if profile.verified => Ok(profile),
            (true, Some(_)) => Err(AccountError::NotVerified),
            _ => Err(AccountError::BadCredentials),
        }
    }

    /// Records the end of an attempt without making the answer wait for it (a failure is
    /// journaled, a miss is not: waiting would make the two answers' timing differ).
    fn finish_login_in_background(&self, email: String, outcome: AttemptOutcome, now_ms: u64) {
        let user = self.runtime.entity::<User>(email);
        tokio::spawn(async move {
            if let Err(error) = user.ask(FinishLogin { outcome, now_ms }).await {
                tracing::warn!(%error, "could not record the end of a login attempt");
            }
        });
    }

    /// The id of the account registered under `email`, if there is one (e.g. to invite its
    /// owner to a room). An email that is not valid has no account.
    pub async fn user_id_of(&self, email: &str) -> Result<Option<String>> {
        let Ok(email) = validate::normalize_email(email) else {
            return Ok(None);
        };
        match self.ask_user(&email, Identify).await {
            Ok(profile) => Ok(Some(profile.id)),
            Err(AccountError::User(UserError::NotFound)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The profile of the account with `user_id`.
    pub async fn profile(&self, user_id: &str) -> Result<Profile> {
        let email = self.email_of(user_id).await?.ok_or(UserError::NotFound)?;
        let request = GetProfile {
            user_id: user_id.to_string(),
        };
        self.ask_user(&email, request).await
    }

    /// Changes the name and/or the bio (`None` keeps the current value).
    pub async fn update_profile(
        &self,
        user_id: &str,
        name: Option<String>,
        bio: Option<String>,
    ) -> Result<Profile> {
        if let Some(name) = &name {
            validate::normalize_name(name)?;
        }
        if let Some(bio) = &bio {
            validate::normalize_bio(bio)?;
        }
        let email = self.email_of(user_id).await?.ok_or(UserError::NotFound)?;
        let update = UpdateProfile {
            user_id: user_id.to_string(),
            name,
            bio,
        };
        self.ask_user(&email, update).await
    }

    /// Re-encodes `upload` and makes it the user's photo.
    pub async fn set_photo(&self, user_id: &str, upload: Vec<u8>) -> Result<Profile> {
        let outcome = self.store_photo(user_id, upload).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(AccountError::Photo(PhotoError::Unsupported)) => "unsupported",
            Err(AccountError::Photo(_)) => "invalid",
            Err(AccountError::PhotoTooLarge { .. }) => "too_large",
            Err(_) => "error",
        };
        count(names::PHOTOS_TOTAL, label);
        outcome
    }

    async fn store_photo(&self, user_id: &str, upload: Vec<u8>) -> Result<Profile> {
        let bytes_max = self.users.photo_bytes_max;
        if upload.len() as u64 > bytes_max {
            return Err(AccountError::PhotoTooLarge { bytes_max });
        }
        // The account must exist before anything is stored for it.
        self.profile(user_id).await?;
        let dimension_max = self.users.photo_dimension_max;
        let encoded = self
            .pool
            .run(move || photo::reencode(&upload, dimension_max))
            .await??;
        let info = PhotoInfo {
            content_type: encoded.content_type.to_string(),
            bytes: encoded.bytes.len() as u64,
            width: encoded.width,
            height: encoded.height,
            updated_at_ms: unix_ms(),
        };
        photo::store(self.runtime.object_store(), user_id, encoded.bytes).await?;
        let email = self.email_of(user_id).await?.ok_or(UserError::NotFound)?;
        let set = SetPhoto {
            user_id: user_id.to_string(),
            photo: info,
        };
        self.ask_user(&email, set).await
    }

    /// The stored photo of `user_id` and its content type.
    pub async fn photo(&self, user_id: &str) -> Result<Option<(Bytes, &'static str)>> {
        if !validate::is_user_id(user_id) {
            return Ok(None);
        }
        let bytes = photo::load(self.runtime.object_store(), user_id).await?;
        Ok(bytes.map(|bytes| {
            let content_type = photo::content_type_of(&bytes).unwrap_or("application/octet-stream");
            (bytes, content_type)
        }))
    }

    async fn hash(&self, password: String) -> Result<String> {
        let started = Instant::now();
        let hash = self.passwords.hash(password).await;
        metrics::histogram!(names::PASSWORD_HASH_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(hash?)
    }

    fn verification(&self, secret: &NewSecret, now_ms: u64) -> Verification {
        Verification {
            digest: secret.digest,
            issued_at_ms: now_ms,
            expires_at_ms: now_ms
                .saturating_add(self.users.verification_ttl_s.saturating_mul(1000)),
        }
    }

    /// Asks the account of `email`; a refusal comes back as [`AccountError::User`].
    async fn ask_user<R, T>(&self, email: &str, request: R) -> Result<T>
    where
        R: runtime::Request<User, Reply = std::result::Result<T, UserError>>,
    {
        Ok(self.runtime.entity::<User>(email).ask(request).await??)
    }

    async fn bind_id(&self, user_id: &str, email: &str) -> Result<()> {
        let bind = Bind {
            email: email.to_string(),
        };
        match self.runtime.entity::<UserIndex>(user_id).ask(bind).await? {
            Ok(_) => Ok(()),
            Err(IndexError::BoundElsewhere | IndexError::Invalid) => Err(AccountError::Internal(
                "a fresh user id could not be bound".into(),
            )),
        }
    }

    /// The email of `user_id`, from the cache or the `user.id` entity.
    async fn email_of(&self, user_id: &str) -> Result<Option<String>> {
        if !validate::is_user_id(user_id) {
            return Ok(None);
        }
        if let Some(email) = self.cache().get(user_id) {
            return Ok(Some(email.clone()));
        }
        let email = self
            .runtime
            .entity::<UserIndex>(user_id)
            .ask(Lookup)
            .await?
            .map_err(|error| AccountError::Internal(error.to_string()))?;
        if let Some(email) = &email {
            let mut cache = self.cache();
            if cache.len() >= ID_CACHE_ENTRIES_MAX {
                cache.clear();
            }
            cache.insert(user_id.to_string(), email.clone());
        }
        Ok(email)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Mails the activation link in the background; a failure is logged and counted (the user
    /// can ask for another mail).
    fn mail_verification(&self, profile: &Profile, secret: &NewSecret) {
        let Ok(permit) = self.mails.clone().try_acquire_owned() else {
            tracing::warn!(user = %profile.id, "too many mails in flight; verification mail dropped");
            count(names::MAILS_TOTAL, "dropped");
            return;
        };
        let link = format!(
            "{}/api/users/verify?token={}",
            self.link_base,
            secret.token(&profile.id)
        );
        let hours = self.users.verification_ttl_s.div_ceil(3600);
        let mail = Mail {
            to: profile.email.clone(),
            subject: "Activate your ActorHub account".into(),
            text: format!(
                "Hello {},\n\nwelcome to ActorHub. Open this link to activate your account:\n\n{link}\n\n\
                 The link works once, for {hours} hour(s). If you did not sign up, ignore this mail.\n",
                profile.name
            ),
            link: Some(link),
        };
        let mailer = self.mailer.clone();
        let user = profile.id.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match mailer.send(mail).await {
                Ok(()) => count(names::MAILS_TOTAL, "sent"),
                Err(error) => {
                    count(names::MAILS_TOTAL, "failed");
                    tracing::warn!(%user, %error, "verification mail not sent");
                }
            }
        });
    }
}

fn count(name: &'static str, outcome: &'static str) {
    metrics::counter!(name, "outcome" => outcome).increment(1);
}
