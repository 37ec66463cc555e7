//! Where a job's files live in the shared object store, and the few operations on them.
//!
//! ```text
//! jobs/<id>/input           the upload, as received
//! jobs/<id>/output.<ext>    the converted file, written once (create-only)
//! jobs/active/<id>          marker: the job is not finished; the reviver looks here
//! jobs/finished/<id>        marker: the job finished (written when it is released); the
//!                           job's `expire` reminder deletes it with the job's files, the
//!                           reviver's fallback scan an hour after `jobs.finished_ttl_s`
//! ```
//! Job ids are 32 lowercase hex characters, so they are safe in paths and never collide with
//! the `active` and `finished` folders.

use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// The folder of the unfinished-job markers.
pub const MARKERS_PREFIX: &str = "jobs/active";
/// The folder of the finished-job markers (their age says when the job expires).
pub const FINISHED_PREFIX: &str = "jobs/finished";
/// Objects one job may have (input, output, staging leftovers); bounds a clean-up listing.
const OBJECTS_PER_JOB_MAX: usize = 16;

/// True for ids the API hands out (32 lowercase hex characters).
pub fn valid_job_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// A new random job id.
pub fn new_job_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn job_folder(id: &str) -> Path {
    Path::from(format!("jobs/{id}"))
}

pub fn input_path(id: &str) -> Path {
    Path::from(format!("jobs/{id}/input"))
}

pub fn output_path(id: &str, extension: &str) -> Path {
    Path::from(format!("jobs/{id}/output.{extension}"))
}

pub fn marker_path(id: &str) -> Path {
    Path::from(format!("{MARKERS_PREFIX}/{id}"))
}

pub fn finished_marker_path(id: &str) -> Path {
    Path::from(format!("{FINISHED_PREFIX}/{id}"))
}

/// Marks `id` finished: the reviver finds it there once it is due to expire.
pub async fn put_finished_marker(
    store: &Arc<dyn ObjectStore>,
    id: &str,
) -> object_store::Result<()> {
    store
        .put(&finished_marker_path(id), PutPayload::default())
        .await
        .map(drop)
}

/// Marks `id` unfinished (before it is submitted, so a crash right after leaves a trace).
pub async fn put_marker(
    store: &Arc<dyn ObjectStore>,
    id: &str,
    owner: &str,
) -> object_store::Result<()> {
    let payload = PutPayload::from(owner.as_bytes().to_vec());
    store.put(&marker_path(id), payload).await.map(drop)
}

/// Writes `bytes` at `path` unless something is there already. Returns the size of what is
/// there afterwards: ours, or the earlier run's (a retried job never writes twice).
pub async fn write_once(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    bytes: Vec<u8>,
) -> object_store::Result<u64> {
    let size = bytes.len() as u64;
    let options = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store.put_opts(path, PutPayload::from(bytes), options).await {
        Ok(_) => Ok(size),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(store.head(path).await?.size),
        Err(error) => Err(error),
    }
}

/// Deletes a job's files and its markers; missing files are fine. Errors are logged: a
/// leftover is found again by the next clean-up.
pub async fn delete_job_files(store: &Arc<dyn ObjectStore>, id: &str) {
    let folder = job_folder(id);
    let listed: Vec<_> = store
        .list(Some(&folder))
        .take(OBJECTS_PER_JOB_MAX)
        .collect()
        .await;
    for meta in listed.into_iter().flatten() {
        delete_quietly(store, &meta.location).await;
    }
    delete_quietly(store, &marker_path(id)).await;
    delete_quietly(store, &finished_marker_path(id)).await;
}

pub async fn delete_quietly(store: &Arc<dyn ObjectStore>, path: &Path) {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(error) => tracing::warn!(%path, %error, "could not delete a job file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_characters() {
        let id = new_job_id();
        assert!(valid_job_id(&id), "{id}");
        assert_ne!(id, new_job_id());
        assert!(!valid_job_id("active"));
        assert!(!valid_job_id("../../etc/passwd"));
        assert!(!valid_job_id(&id.to_uppercase()));
    }

    #[tokio::test]
    async fn output_is_written_once() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let path = output_path(&new_job_id(), "png");
        assert_eq!(
            write_once(&store, &path, vec![1, 2, 3])
                .await
                .expect("first write"),
            3
        );
        assert_eq!(
            write_once(&store, &path, vec![9; 10])
                .await
                .expect("second write"),
            3
        );
        let stored = store
            .get(&path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(stored.as_ref(), &[1, 2, 3]);
    }
}
