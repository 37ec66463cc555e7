//! The six object-store operations the journal is built on, behind one small trait so that the
//! same protocol code runs against the real store (a local directory or S3, through
//! `object_store`) and against the seeded simulation's store.
//!
//! - `create` is create-only: it writes the object unless the name exists (`Created::Exists`).
//!   Every fencing decision of the journal rests on it, which is why a node proves at start
//!   that its store really refuses a second create ([`check_create_only`]).
//! - a `create` that returned `Ok` is durable (on a local directory with `fsync`, after the
//!   node-wide `syncfs` group commit; on S3 when the PUT returns).
//! - `list` returns names in lexicographic order, optionally only those after `offset`; every
//!   name the journal lists is zero-padded, so that order is numeric order.
//! - an error is ambiguous: the operation may or may not have taken effect.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Result, RuntimeError};
use crate::journal::storage::{CreateError, Durability, LocalWrites};

/// The outcome of a create-only write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Written, and durable.
    Yes,
    /// The name existed already; nothing was written.
    Exists,
}

/// The journal's view of an object store.
pub trait Objects: Send + Sync + 'static {
    fn create(&self, path: String, bytes: Vec<u8>) -> BoxFuture<'_, Result<Created>>;
    fn get(&self, path: String) -> BoxFuture<'_, Result<Option<Bytes>>>;
    fn exists(&self, path: String) -> BoxFuture<'_, Result<bool>>;
    /// Names under `prefix` (`prefix/...`), sorted, only those greater than `offset` if given.
    fn list(&self, prefix: String, offset: Option<String>) -> BoxFuture<'_, Result<Vec<String>>>;
    /// Deleting a missing object is not an error.
    fn delete(&self, path: String) -> BoxFuture<'_, Result<()>>;
}

/// [`Objects`] on an `object_store` store, with the durability and local fast path of
/// `storage`.
#[derive(Clone)]
pub struct StoreObjects {
    store: Arc<dyn ObjectStore>,
    durability: Durability,
    local: Option<LocalWrites>,
}

impl StoreObjects {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        durability: Durability,
        local: Option<LocalWrites>,
    ) -> Self {
        Self {
            store,
            durability,
            local,
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
}

fn store_error(what: &str, path: &str, error: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Store(format!("{what} {path}: {error}"))
}

impl Objects for StoreObjects {
    fn create(&self, path: String, bytes: Vec<u8>) -> BoxFuture<'_, Result<Created>> {
        Box::pin(async move {
            let location = Path::from(path.as_str());
            let created = match &self.local {
                Some(local) => match local.create(&location, &bytes) {
                    Ok(()) => Created::Yes,
                    Err(CreateError::Exists) => Created::Exists,
                    Err(CreateError::Io(error)) => return Err(RuntimeError::Store(error)),
                },
                None => match self
                    .store
                    .put_opts(
                        &location,
                        PutPayload::from(bytes),
                        PutOptions::from(PutMode::Create),
                    )
                    .await
                {
                    Ok(_) => Created::Yes,
                    Err(object_store::Error::AlreadyExists { .. }) => Created::Exists,
                    Err(error) => return Err(store_error("create", &path, error)),
                },
            };
            if created == Created::Yes {
                self.durability.sync().await.map_err(|error| {
                    RuntimeError::Store(format!("{path} was written but not flushed: {error}"))
                })?;
            }
            Ok(created)
        })
    }

    fn get(&self, path: String) -> BoxFuture<'_, Result<Option<Bytes>>> {
        Box::pin(async move {
            let location = Path::from(path.as_str());
            if let Some(local) = &self.local {
                match local.read_small(&location) {
                    Ok(Some(bytes)) => return Ok(bytes.map(Bytes::from)),
                    Ok(None) => {}
                    Err(error) => return Err(RuntimeError::Store(error)),
                }
            }
            match self.store.get(&location).await {
                Ok(result) => result
                    .bytes()
                    .await
                    .map(Some)
                    .map_err(|error| store_error("read", &path, error)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(store_error("read", &path, error)),
            }
        })
    }

    fn exists(&self, path: String) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            match self.store.head(&Path::from(path.as_str())).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(error) => Err(store_error("head", &path, error)),
            }
        })
    }

    fn list(&self, prefix: String, offset: Option<String>) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let location = Path::from(prefix.as_str());
            let stream = match &offset {
                Some(offset) => self
                    .store
                    .list_with_offset(Some(&location), &Path::from(offset.as_str())),
                None => self.store.list(Some(&location)),
            };
            let mut names: Vec<String> = stream
                .map_ok(|meta| meta.location.to_string())
                .try_collect()
                .await
                .map_err(|error| store_error("list", &prefix, error))?;
            names.sort_unstable();
            Ok(names)
        })
    }

    fn delete(&self, path: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if let Some(local) = &self.local {
                return local
                    .delete(&Path::from(path.as_str()))
                    .await
                    .map_err(RuntimeError::Store);
            }
            match self.store.delete(&Path::from(path.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(error) => Err(store_error("delete", &path, error)),
            }
        })
    }
}

/// Proves that `objects` refuses a second create of the same name. Some S3-compatible servers
/// ignore `If-None-Match`; on such a store two owners could both write "their" epoch of a
/// partition and acknowledged messages would be lost, so a node must not start on one.
pub async fn check_create_only(objects: &dyn Objects, node: &str) -> Result<()> {
    let probe = format!("meta/create-only-probe/{node}-{:016x}", fastrand::u64(..));
    let first = objects.create(probe.clone(), b"first".to_vec()).await?;
    let second = objects.create(probe.clone(), b"second".to_vec()).await?;
    let kept = objects.get(probe.clone()).await?;
    let _ = objects.delete(probe).await;
    match (first, second, kept.as_deref()) {
        (Created::Yes, Created::Exists, Some(b"first")) => Ok(()),
        _ => Err(RuntimeError::Config(
            "the object store does not refuse a second create of the same name (it ignores `If-None-Match: *`); the journal's fencing needs create-only writes: use a store that supports conditional writes (AWS S3, MinIO, recent moto, a local directory)".into(),
        )),
    }
}

/// An [`ObjectStore`] that waits `latency` before every request: S3's first-byte latency on a
/// local store, for benchmarks and tests of re-hosting time. For tests it can also pretend to
/// be a store that ignores create-only writes (some S3-compatible servers do).
#[derive(Debug)]
pub struct LatencyStore {
    inner: Arc<dyn ObjectStore>,
    latency: Duration,
    ignore_create_only: bool,
}

impl LatencyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, latency: Duration) -> Self {
        Self {
            inner,
            latency,
            ignore_create_only: false,
        }
    }

    /// Turns every create-only put into a plain overwrite, as a broken server would.
    pub fn ignoring_create_only(mut self) -> Self {
        self.ignore_create_only = true;
        self
    }

    async fn wait(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

impl std::fmt::Display for LatencyStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "LatencyStore({:?}, {})",
            self.latency, self.inner
        )
    }
}

#[async_trait::async_trait]
impl ObjectStore for LatencyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.wait().await;
        if self.ignore_create_only && opts.mode == PutMode::Create {
            opts.mode = PutMode::Overwrite;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.wait().await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.wait().await;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures_util::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<Path>> {
        delayed(self.latency, self.inner.delete_stream(locations))
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
    {
        delayed(self.latency, self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
    {
        delayed(self.latency, self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.wait().await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.wait().await;
        self.inner.copy_opts(from, to, options).await
    }
}

/// `inner`, after `latency`.
fn delayed<T: Send + 'static>(
    latency: Duration,
    inner: futures_util::stream::BoxStream<'static, T>,
) -> futures_util::stream::BoxStream<'static, T> {
    Box::pin(
        futures_util::stream::once(async move {
            tokio::time::sleep(latency).await;
            inner
        })
        .flatten(),
    )
}
