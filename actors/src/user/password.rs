//! Password hashing with argon2id: parameters from `[users]`, PHC strings in the journal, and
//! [`Passwords`], which runs every hash on a [`BlockingPool`] and verifies unknown accounts
//! against a dummy hash so that "no such account" costs as much as "wrong password".

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::OnceCell;

use super::blocking::{BlockingPool, PoolError};
use crate::config::UsersSection;

/// Random bytes of each salt (the PHC recommendation is at least 16).
pub const SALT_BYTES: usize = 16;
/// Length of the derived hash.
pub const HASH_BYTES: usize = 32;

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl HashParams {
    pub fn from_config(users: &UsersSection) -> Self {
        Self {
            memory_kib: users.argon2_memory_kib,
            iterations: users.argon2_iterations,
            parallelism: users.argon2_parallelism,
        }
    }

    fn hasher(&self) -> Result<Argon2<'static>, PoolError> {
        let params = Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(HASH_BYTES),
        )
        .map_err(|error| PoolError::Failed(format!("argon2 parameters: {error}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Hashes `password` with a fresh random salt into a PHC string (`$argon2id$v=19$m=...`).
pub fn hash_password(params: HashParams, password: &str) -> Result<String, PoolError> {
    let mut salt = [0u8; SALT_BYTES];
    getrandom::fill(&mut salt)
        .map_err(|error| PoolError::Failed(format!("no randomness for a salt: {error}")))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|error| PoolError::Failed(format!("salt: {error}")))?;
    let hash = params
        .hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| PoolError::Failed(format!("argon2: {error}")))?;
    Ok(hash.to_string())
}

/// Checks `password` against a PHC string with the parameters recorded in it (so raising the
/// configured cost does not lock out older accounts). A malformed hash never matches.
pub fn verify_password(phc: &str, password: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

/// The node's password hasher: configured parameters, a bounded pool, a dummy hash.
#[derive(Debug, Clone)]
pub struct Passwords {
    params: HashParams,
    pool: BlockingPool,
    /// A hash of a random password with the current parameters, made on first use; unknown
    /// accounts are verified against it.
    dummy: Arc<OnceCell<String>>,
}

impl Passwords {
    pub fn new(params: HashParams, pool: BlockingPool) -> Self {
        Self {
            params,
            pool,
            dummy: Arc::new(OnceCell::new()),
        }
    }

    pub fn params(&self) -> HashParams {
        self.params
    }

    /// Hashes off the async threads.
    pub async fn hash(&self, password: String) -> Result<String, PoolError> {
        let params = self.params;
        self.pool
            .run(move || hash_password(params, &password))
            .await?
    }

    /// Verifies off the async threads; `None` (no such account) verifies against the dummy
    /// hash and is always `false`, after the same amount of work.
    pub async fn verify(&self, phc: Option<String>, password: String) -> Result<bool, PoolError> {
        let (phc, real) = match phc {
            Some(phc) => (phc, true),
            None => (self.dummy().await?, false),
        };
        let matches = self
            .pool
            .run(move || verify_password(&phc, &password))
            .await?;
        Ok(real && matches)
    }

    /// Makes the dummy hash now, so the first login for an unknown email does not pay for it
    /// (which would make that answer slower than a wrong password's).
    pub async fn warm_up(&self) {
        if let Err(error) = self.dummy().await {
            tracing::warn!(%error, "could not prepare the dummy password hash");
        }
    }

    async fn dummy(&self) -> Result<String, PoolError> {
        self.dummy
            .get_or_try_init(|| async {
                let mut secret = [0u8; 24];
                getrandom::fill(&mut secret)
                    .map_err(|error| PoolError::Failed(format!("no randomness: {error}")))?;
                let password: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
                self.hash(password).await
            })
            .await
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: unit tests check behaviour, not cost.
    const FAST: HashParams = HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn hashes_are_argon2id_with_the_configured_parameters() {
        let phc = hash_password(FAST, "correct horse battery").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(verify_password(&phc, "correct horse battery"));
        assert!(!verify_password(&phc, "correct horse batterY"));
        assert!(!verify_password("not a hash", "correct horse battery"));
    }

    #[test]
    fn salts_differ_between_hashes() {
        let first = hash_password(FAST, "same password").expect("hash");
        let second = hash_password(FAST, "same password").expect("hash");
        assert_ne!(first, second);
        assert!(verify_password(&first, "same password"));
        assert!(verify_password(&second, "same password"));
    }

    #[test]
    fn default_parameters_follow_owasp() {
        let params = HashParams::from_config(&UsersSection::default());
        assert_eq!(
            params,
            HashParams {
                memory_kib: 19 * 1024,
                iterations: 2,
                parallelism: 1
            }
        );
        assert!(params.hasher().is_ok());
    }

    #[test]
    fn an_old_hash_still_verifies_after_the_cost_changes() {
        let old = hash_password(FAST, "long enough password").expect("hash");
        let stronger = HashParams {
            memory_kib: 128,
            iterations: 2,
            parallelism: 1,
        };
        assert!(
            hash_password(stronger, "x")
                .expect("hash")
                .contains("m=128,t=2")
        );
        assert!(verify_password(&old, "long enough password"));
    }

    #[tokio::test]
    async fn unknown_accounts_never_verify() {
        let passwords = Passwords::new(FAST, BlockingPool::new(2));
        let phc = passwords
            .hash("a fine password".into())
            .await
            .expect("hash");
        assert_eq!(
            passwords.verify(Some(phc), "a fine password".into()).await,
            Ok(true)
        );
        assert_eq!(
            passwords.verify(None, "a fine password".into()).await,
            Ok(false)
        );
        let dummy = passwords.dummy().await.expect("dummy");
        assert!(dummy.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
    }
}
