//! The node-local store (sled): what belongs to this node only and must survive its restart.
//!
//! **Architecture Invariant:** nothing another node needs lives only here; it is a cache and
//! this node's own memory (its incarnation counter), never the source of truth of an entity.

use std::path::Path;

use crate::error::{Result, RuntimeError};

const INCARNATION_KEY: &[u8] = b"incarnation";

#[derive(Clone)]
pub struct LocalStore {
    db: sled::Db,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("LocalStore")
    }
}

impl LocalStore {
    pub fn open(directory: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(directory)
            .cache_capacity(16 * 1024 * 1024)
            .open()
            .map_err(|error| {
                RuntimeError::LocalStore(format!(
                    "cannot open {}: {error} (is another node process using the same data directory?)",
                    directory.display()
                ))
            })?;
        Ok(Self { db })
    }

    /// Increments and returns this node's incarnation: 1 on first start, +1 per restart.
    pub fn next_incarnation(&self) -> Result<u64> {
        let updated = self
            .db
            .update_and_fetch(INCARNATION_KEY, |old| {
                let previous = old
                    .and_then(|bytes| bytes.try_into().ok())
                    .map_or(0, u64::from_be_bytes);
                Some((previous + 1).to_be_bytes().to_vec())
            })
            .map_err(|error| RuntimeError::LocalStore(error.to_string()))?;
        self.db
            .flush()
            .map_err(|error| RuntimeError::LocalStore(error.to_string()))?;
        let bytes =
            updated.ok_or_else(|| RuntimeError::LocalStore("incarnation vanished".into()))?;
        let array: [u8; 8] = bytes
            .as_ref()
            .try_into()
            .map_err(|_| RuntimeError::LocalStore("corrupt incarnation".into()))?;
        Ok(u64::from_be_bytes(array))
    }

    /// The journal segment cache, emptied first if it was filled from another store (the
    /// store's identity is a random id kept in the store itself, see [`crate::journal::storage`]).
    pub fn segment_cache(&self, store_id: &str) -> Result<sled::Tree> {
        let tree = self.tree("journal-segments")?;
        let known = self
            .db
            .get(b"segment-cache-store")
            .map_err(|error| RuntimeError::LocalStore(error.to_string()))?;
        if known.as_deref() != Some(store_id.as_bytes()) {
            tree.clear()
                .map_err(|error| RuntimeError::LocalStore(error.to_string()))?;
            self.db
                .insert(b"segment-cache-store", store_id.as_bytes())
                .map_err(|error| RuntimeError::LocalStore(error.to_string()))?;
        }
        Ok(tree)
    }

    /// A named tree for other node-local data (caches).
    pub fn tree(&self, name: &str) -> Result<sled::Tree> {
        self.db
            .open_tree(name)
            .map_err(|error| RuntimeError::LocalStore(error.to_string()))
    }

    pub async fn flush(&self) -> Result<()> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|error| RuntimeError::LocalStore(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnation_survives_reopen() {
        let directory = tempfile::tempdir().expect("tempdir");
        {
            let store = LocalStore::open(directory.path()).expect("open");
            assert_eq!(store.next_incarnation().expect("inc"), 1);
            assert_eq!(store.next_incarnation().expect("inc"), 2);
        }
        let store = LocalStore::open(directory.path()).expect("reopen");
        assert_eq!(store.next_incarnation().expect("inc"), 3);
    }
}
