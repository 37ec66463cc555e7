//! The shared object store (journals, snapshots, uploaded files), built from `[storage]`.
//!
//! Everything another node may need lives here, never only in a node's sled.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;

use crate::config::StorageSection;
use crate::error::{Result, RuntimeError};

/// Opens the store that `[storage].url` names: a local directory (created if missing) or S3.
pub fn open(section: &StorageSection) -> Result<Arc<dyn ObjectStore>> {
    // `file:///abs` or, relative to the working directory, `file:dir`.
    let local = section
        .url
        .strip_prefix("file://")
        .or_else(|| section.url.strip_prefix("file:"));
    if let Some(directory) = local {
        std::fs::create_dir_all(directory).map_err(|error| {
            RuntimeError::Store(format!(
                "cannot create the object store directory {directory}: {error}"
            ))
        })?;
        let store = LocalFileSystem::new_with_prefix(directory)
            .map_err(|error| RuntimeError::Store(format!("cannot open {directory}: {error}")))?
            .with_automatic_cleanup(true)
            .with_fsync(section.fsync);
        return Ok(Arc::new(store));
    }
    if let Some(bucket) = section.url.strip_prefix("s3://") {
        let mut builder =
            AmazonS3Builder::from_env().with_bucket_name(bucket.trim_end_matches('/'));
        if let Some(endpoint) = &section.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if let Some(region) = &section.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &section.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &section.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder
            .with_allow_http(section.allow_http)
            .build()
            .map_err(|error| {
                RuntimeError::Store(format!("cannot configure S3 bucket {bucket}: {error}"))
            })?;
        return Ok(Arc::new(store));
    }
    Err(RuntimeError::Config(format!(
        "`storage.url` = {:?}: unsupported scheme",
        section.url
    )))
}

/// The store's identity: a random id created once in the store itself. Node-local caches of
/// the store's content are valid only for the store that has this id.
pub async fn store_id(store: &Arc<dyn ObjectStore>) -> Result<String> {
    use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
    let path = object_store::path::Path::from("meta/store-id");
    let fresh = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let payload = PutPayload::from(fresh.clone().into_bytes());
    match store
        .put_opts(&path, payload, PutOptions::from(PutMode::Create))
        .await
    {
        Ok(_) => return Ok(fresh),
        Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(error) => return Err(RuntimeError::Store(format!("cannot write {path}: {error}"))),
    }
    let bytes = store
        .get(&path)
        .await
        .map_err(|error| RuntimeError::Store(format!("cannot read {path}: {error}")))?
        .bytes()
        .await
        .map_err(|error| RuntimeError::Store(format!("cannot read {path}: {error}")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
