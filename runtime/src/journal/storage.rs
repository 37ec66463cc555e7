//! The shared object store (journals, snapshots, uploaded files), built from `[storage]`.
//!
//! Everything another node may need lives here, never only in a node's sled.
//!
//! Durability on a local directory is a node-wide group commit: writes go to the page cache,
//! and whoever needs them on disk before answering (a journal append before its ack) awaits
//! [`Durability::sync`]. One flusher thread per store runs `syncfs(2)` for every caller that
//! arrived since its last round, so N appends cost one device flush instead of 2N (a file and
//! a directory fsync each). `syncfs` covers the whole filesystem, so it also covers files
//! another process wrote before it started (an upload on one node, journaled on another).
//! Writes that must survive a power loss are therefore either journal appends or followed by
//! one (a job's input and output, then its journaled state) or by a sync of their own
//! (snapshots, before older ones are deleted). A directory shared by nodes on different
//! machines (a network filesystem) is not covered: use S3-compatible storage for that.

use std::sync::{Arc, Condvar, Mutex};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;

use crate::config::StorageSection;
use crate::error::{Result, RuntimeError};

/// The shared store and how to make what was written to it durable.
#[derive(Clone)]
pub struct Storage {
    pub objects: Arc<dyn ObjectStore>,
    pub durability: Durability,
    /// Set when the store is a local directory: journal appends write to it directly.
    pub local: Option<LocalWrites>,
}

impl Storage {
    /// The store as the journal uses it: create-only writes durable when they return.
    pub fn journal_objects(&self) -> crate::journal::objects::StoreObjects {
        crate::journal::objects::StoreObjects::new(
            Arc::clone(&self.objects),
            self.durability.clone(),
            self.local.clone(),
        )
    }
}

/// Opens the store that `[storage].url` names: a local directory (created if missing) or S3;
/// with `storage.latency_ms`, behind a [`LatencyStore`](crate::journal::objects::LatencyStore).
pub fn open(section: &StorageSection) -> Result<Storage> {
    let storage = open_store(section)?;
    if section.latency_ms == 0 {
        return Ok(storage);
    }
    let latency = std::time::Duration::from_millis(section.latency_ms);
    Ok(Storage {
        objects: Arc::new(crate::journal::objects::LatencyStore::new(
            storage.objects,
            latency,
        )),
        durability: storage.durability,
        // Every write goes through the delayed store.
        local: None,
    })
}

impl Storage {
    /// A store given by the caller (tests, benchmarks): writes are durable when they return.
    pub fn from_store(objects: Arc<dyn ObjectStore>) -> Self {
        Self {
            objects,
            durability: Durability::on_put(),
            local: None,
        }
    }
}

fn open_store(section: &StorageSection) -> Result<Storage> {
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
            .with_automatic_cleanup(true);
        // Appends write in place unless only object_store's own fsync can make them durable.
        let (store, durability, write_in_place) = if !section.fsync {
            (store, Durability::on_put(), true)
        } else if cfg!(target_os = "linux") {
            let durability = Durability::syncfs(std::path::Path::new(directory))?;
            (store, durability, true)
        } else {
            // No syncfs: object_store fsyncs every file and its directory itself.
            (store.with_fsync(true), Durability::on_put(), false)
        };
        let store = Arc::new(store);
        let local = match write_in_place {
            true => Some(LocalWrites::new(Arc::clone(&store), directory)?),
            false => None,
        };
        return Ok(Storage {
            objects: store as Arc<dyn ObjectStore>,
            durability,
            local,
        });
    }
    if let Some(bucket) = section.url.strip_prefix("s3://") {
        let mut builder = AmazonS3Builder::new().with_bucket_name(bucket.trim_end_matches('/'));
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
        // A successful S3 put is durable.
        return Ok(Storage {
            objects: Arc::new(store),
            durability: Durability::on_put(),
            local: None,
        });
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

/// Create-only writes straight into a local directory store, on the caller's thread.
///
/// `LocalFileSystem::put_opts` runs every put on tokio's blocking pool and publishes with a hard
/// link and an unlink. A journal append is a few hundred bytes into the page cache (the flush, if
/// any, is [`Durability::sync`]'s), so the append writes it itself, and publishes it atomically
/// and create-only (the name appears with all its bytes, or not at all if it exists):
/// - on Linux, an unnamed file (`O_TMPFILE`) in the object's directory, then one
///   `linkat(AT_EMPTY_PATH)` that names it: one directory entry added, none removed, nothing
///   left behind by a crash. `linkat` on a descriptor needs `CAP_DAC_READ_SEARCH` before
///   Linux 6.10, and some filesystems have no `O_TMPFILE`: if a probe at open fails, then
/// - a staging file named the way `LocalFileSystem` names its own (`<object>#<n>`, which
///   listings skip), then one `renameat2(RENAME_NOREPLACE)`.
///
/// Reads, listings and every other write still go through `object_store`, which sees the same
/// files.
///
/// Deletes run on [`Background`], a low-priority thread (see [`LocalWrites::delete`]).
#[derive(Clone)]
pub struct LocalWrites {
    store: Arc<LocalFileSystem>,
    /// Whether this system links unnamed files in the store's directory (probed at open).
    unnamed: bool,
    background: Background,
}

/// Why [`LocalWrites::create`] wrote nothing.
#[derive(Debug)]
pub enum CreateError {
    /// The object exists already (another writer created it first).
    Exists,
    Io(String),
}

/// Staging names tried for one object before giving up (each is taken only by a concurrent or
/// crashed writer of the same object).
const STAGING_ATTEMPTS_MAX: u32 = 64;

impl LocalWrites {
    fn new(store: Arc<LocalFileSystem>, directory: &str) -> Result<Self> {
        let root = std::fs::canonicalize(directory)
            .map_err(|error| RuntimeError::Store(format!("cannot open {directory}: {error}")))?;
        let probe = root.join(UNNAMED_PROBE);
        let unnamed = match create_unnamed(&probe, b"") {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
                true
            }
            // Another node sharing the store probed at the same moment, or a crashed one left
            // its probe: the kernel checks whether the file may be linked before whether the
            // name is free, so EEXIST means linking works here too.
            Err(Unnamed::Exists) => {
                let _ = std::fs::remove_file(&probe);
                true
            }
            Err(Unnamed::Refused(error)) => {
                tracing::info!(%error, "unnamed files cannot be linked in the object store's directory; appends go through a staging file and a rename");
                false
            }
            // Not a verdict on unnamed files: a create that is refused one falls back anyway.
            Err(Unnamed::Io(error)) => {
                tracing::warn!(%error, "could not write a probe file in the object store's directory; check its permissions and free space");
                true
            }
        };
        Ok(Self {
            store,
            unnamed,
            background: Background::start()?,
        })
    }

    /// Deletes `location` (a missing object is not an error) on the store's [`Background`]
    /// thread. Its directory stays, even when empty.
    ///
    /// Compaction deletes about one log object per flush of the round, ~1,000 at a time under
    /// load. Through `object_store` each was a task on tokio's blocking pool, up to 16 at once:
    /// on a node with one core they took the core from the worker in a burst every round, and
    /// that burst was the p99 of a busy chat (15-18 ms at 50 rooms x 20 clients x 2 msg/s, 5-7
    /// ms with compaction pushed out of the run). On one thread that the kernel runs only when
    /// nothing else wants the core, the deletes wait instead of the posts.
    ///
    /// Directories stay because the journal writes into them again: a node's log directory gets
    /// the next flush, an entity's segment directory the next compaction. Removing one when it
    /// was left empty raced with that create; done by a thread at the idle priority, the race
    /// could last as long as the thread was kept off the core mid-removal (its name still
    /// resolving, its inode already unlinked: ext4 refuses the create with EPERM), which CI
    /// saw. The journal never deletes a whole entity, so the only directories left empty for
    /// good are those of dead nodes' logs, one per incarnation.
    pub async fn delete(
        &self,
        location: &object_store::path::Path,
    ) -> std::result::Result<(), String> {
        let path = self
            .store
            .path_to_filesystem(location)
            .map_err(|error| error.to_string())?;
        let shown = location.to_string();
        self.background
            .run(move || match std::fs::remove_file(&path) {
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
                removed => removed,
            })
            .await
            .map_err(|error| format!("cannot delete {shown}: {error}"))
    }

    /// Creates `location` with `bytes`, atomically, unless it exists.
    pub fn create(
        &self,
        location: &object_store::path::Path,
        bytes: &[u8],
    ) -> std::result::Result<(), CreateError> {
        use std::io::Write;
        let destination = self
            .store
            .path_to_filesystem(location)
            .map_err(|error| CreateError::Io(error.to_string()))?;
        if self.unnamed {
            match create_unnamed(&destination, bytes) {
                Ok(()) => return Ok(()),
                Err(Unnamed::Exists) => return Err(CreateError::Exists),
                Err(Unnamed::Io(error)) => {
                    return Err(CreateError::Io(format!("cannot write {location}: {error}")));
                }
                // This directory (another mount under the store, say) refuses what the
                // store's root allowed: a staging file and a rename for this object.
                Err(Unnamed::Refused(error)) => {
                    tracing::debug!(%location, %error, "no unnamed file here; staging instead");
                }
            }
        }
        let (mut file, staging) = open_staging(&destination)
            .map_err(|error| CreateError::Io(format!("cannot stage {location}: {error}")))?;
        let published = file
            .write_all(bytes)
            .and_then(|()| publish_no_replace(&staging, &destination));
        drop(file);
        match published {
            Ok(()) => Ok(()),
            Err(error) => {
                let _ = std::fs::remove_file(&staging);
                if error.kind() == std::io::ErrorKind::AlreadyExists {
                    Err(CreateError::Exists)
                } else {
                    Err(CreateError::Io(format!("cannot write {location}: {error}")))
                }
            }
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// One thread for a local store's bulk file work, at the lowest priority the kernel has
/// (`SCHED_IDLE` on Linux: it runs when no other thread of the machine wants the core, and a
/// waking thread preempts it at once). It exits when the last [`LocalWrites`] clone is dropped.
///
/// A node at 100 % CPU would starve it (it gets ~0.3 % of a busy core), and compaction, which
/// awaits its deletes before its next round, would fall ever further behind while the tail
/// it keeps in memory grows. So once queued work has made no progress for
/// [`STARVED_AFTER`], new jobs run on tokio's blocking pool at normal priority instead, as
/// they did before this thread existed, until the thread catches up.
#[derive(Clone)]
struct Background {
    jobs: std::sync::mpsc::Sender<Job>,
    progress: Arc<Progress>,
}

/// How long queued background work may wait without progress before new work bypasses it.
const STARVED_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

struct Progress {
    since: std::time::Instant,
    /// Jobs sent to the thread and not yet finished.
    pending: std::sync::atomic::AtomicUsize,
    /// When (ms after `since`) the thread last finished a job, or work was queued while none
    /// was pending.
    last_ms: std::sync::atomic::AtomicU64,
    starved_after: std::time::Duration,
}

impl Progress {
    fn now_ms(&self) -> u64 {
        self.since.elapsed().as_millis() as u64
    }

    fn starved(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.pending.load(Ordering::Acquire) > 0
            && self
                .now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Acquire))
                >= self.starved_after.as_millis() as u64
    }
}

impl Background {
    fn start() -> Result<Self> {
        Self::start_with(STARVED_AFTER)
    }

    fn start_with(starved_after: std::time::Duration) -> Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let progress = Arc::new(Progress {
            since: std::time::Instant::now(),
            pending: 0.into(),
            last_ms: 0.into(),
            starved_after,
        });
        std::thread::Builder::new()
            .name("store-background".into())
            .spawn(move || {
                lower_own_priority();
                while let Ok(job) = queue.recv() {
                    job();
                }
            })
            .map_err(|error| {
                RuntimeError::Store(format!(
                    "cannot start the store's background thread: {error}"
                ))
            })?;
        Ok(Self { jobs, progress })
    }

    /// Runs `job` on the thread and returns what it returned. While the thread is starved,
    /// `job` runs on tokio's blocking pool instead; so does a job that waited in the queue for
    /// [`STARVED_AFTER`] (compaction queues its deletes 16 at a time and then waits for them:
    /// without this, a saturated node would leave them there).
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        use std::sync::atomic::Ordering;
        if self.progress.starved() {
            return bypass(job).await;
        }
        // Whoever takes the job out of the slot runs it: the thread, or this caller after the
        // wait; the thread skips a job already taken back.
        let slot = Arc::new(Mutex::new(Some(job)));
        let (reply, answer) = tokio::sync::oneshot::channel();
        let progress = Arc::clone(&self.progress);
        let queued = Arc::clone(&slot);
        let wrapped: Job = Box::new(move || {
            let job = queued
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let result = job.map(|job| job());
            // Before the reply: whoever it wakes sees the progress.
            progress.last_ms.store(progress.now_ms(), Ordering::Release);
            progress.pending.fetch_sub(1, Ordering::AcqRel);
            if let Some(result) = result {
                let _ = reply.send(result);
            }
        });
        // Stored before the count, so no caller sees a pending job with an old time.
        if self.progress.pending.load(Ordering::Acquire) == 0 {
            // Waiting starts now, not at the last job, which may be long ago.
            self.progress
                .last_ms
                .store(self.progress.now_ms(), Ordering::Release);
        }
        self.progress.pending.fetch_add(1, Ordering::AcqRel);
        if self.jobs.send(wrapped).is_err() {
            self.progress.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(std::io::Error::other(
                "the store's background thread is gone",
            ));
        }
        let mut answer = std::pin::pin!(answer);
        if let Ok(answered) =
            tokio::time::timeout(self.progress.starved_after, answer.as_mut()).await
        {
            return answered.unwrap_or_else(|_| Err(thread_stopped()));
        }
        let taken_back = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match taken_back {
            Some(job) => bypass(job).await,
            // The thread has it: its answer comes.
            None => answer.await.unwrap_or_else(|_| Err(thread_stopped())),
        }
    }
}

fn thread_stopped() -> std::io::Error {
    std::io::Error::other("the store's background thread stopped")
}

/// Runs `job` on tokio's blocking pool, at normal priority: the background thread is starved.
async fn bypass<T: Send + 'static>(
    job: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    metrics::counter!(crate::metrics::STORE_BACKGROUND_BYPASSED_TOTAL).increment(1);
    tokio::task::spawn_blocking(job)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("a store operation panicked")))
}

/// Makes the calling thread `SCHED_IDLE` (Linux), or else as nice as it can be (19); if the
/// system refuses both, the thread keeps its priority, which only makes it slower for others.
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    if set_idle_policy() {
        return;
    }
    // On Linux, `PRIO_PROCESS` with pid 0 is the calling thread alone.
    #[cfg(unix)]
    let _ = rustix::process::setpriority_process(None, 19);
}

/// `sched_setscheduler(0, SCHED_IDLE)`: rustix has no safe wrapper for it.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_idle_policy() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised sched_param that outlives the call, and pid 0
    // names the calling thread; the call reads `param` and changes only this thread's policy.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
}

/// Objects at most this large are read on the caller's thread by [`LocalWrites::read_small`].
pub const SMALL_READ_BYTES_MAX: u64 = 64 * 1024;

impl LocalWrites {
    /// Reads `location` on the caller's thread if it is missing or at most
    /// [`SMALL_READ_BYTES_MAX`] bytes (a fence, a log object): `Ok(Some(None))` = missing,
    /// `Ok(None)` = larger, read it through the store (tokio's blocking pool) instead.
    ///
    /// A fence check after every flush is a read of a fence slot that is almost always
    /// missing; through the store it costs a hop to the blocking pool and back (two thread
    /// wake-ups), here one failed `open`.
    pub fn read_small(
        &self,
        location: &object_store::path::Path,
    ) -> std::result::Result<Option<Option<Vec<u8>>>, String> {
        use std::io::Read;
        let path = self
            .store
            .path_to_filesystem(location)
            .map_err(|error| error.to_string())?;
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Some(None)),
            Err(error) => return Err(format!("cannot read {location}: {error}")),
        };
        let metadata = file
            .metadata()
            .map_err(|error| format!("cannot read {location}: {error}"))?;
        let length = metadata.len();
        // A directory (a prefix, not an object): the store says what that is.
        if metadata.is_dir() || length > SMALL_READ_BYTES_MAX {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(length as usize);
        file.read_to_end(&mut bytes)
            .map_err(|error| format!("cannot read {location}: {error}"))?;
        Ok(Some(Some(bytes)))
    }
}

/// Why [`create_unnamed`] did not publish.
enum Unnamed {
    Exists,
    /// This kernel, filesystem or process cannot: use a staging file instead.
    Refused(std::io::Error),
    Io(std::io::Error),
}

#[cfg(target_os = "linux")]
fn create_unnamed(destination: &std::path::Path, bytes: &[u8]) -> std::result::Result<(), Unnamed> {
    use rustix::fs::{AtFlags, CWD, linkat};
    use rustix::io::Errno;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let parent = destination.parent().unwrap_or(std::path::Path::new("."));
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_TMPFILE)
            .open(parent)
    };
    // What this kernel, filesystem or process does not allow, as opposed to a failed write.
    let classify = |error: std::io::Error| match error.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::EPERM | libc::EXDEV) => {
            Unnamed::Refused(error)
        }
        _ => Unnamed::Io(error),
    };
    // Another process may remove a directory it left empty (`object_store`'s own deletes with
    // automatic clean-up, as an older build of a node sharing this store did): one that
    // vanishes before the open or the link is made again. A removed directory says ENOENT, or
    // EPERM to an unnamed open on ext4 (between the removal of its inode's links and of its
    // name, the path still finds it). That this system allows unnamed files at all was
    // settled at open (`LocalWrites::new`).
    let mut pause = std::time::Duration::from_micros(100);
    let mut last = None;
    for _ in 0..DIRECTORY_ATTEMPTS_MAX {
        let mut file = match open() {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                make_directory(parent).map_err(Unnamed::Io)?;
                last = Some(error);
                continue;
            }
            // The directory is being removed (no links left, its name not gone yet): that ends
            // once the remover gets the core again, which a sleep of this thread lets it do.
            Err(error) if error.raw_os_error() == Some(libc::EPERM) && being_removed(parent) => {
                last = Some(error);
                std::thread::sleep(pause);
                pause = (pause * 2).min(PAUSE_MAX);
                continue;
            }
            Err(error) => return Err(classify(error)),
        };
        file.write_all(bytes).map_err(Unnamed::Io)?;
        // Names the open file (`AT_EMPTY_PATH`: the descriptor itself is the source).
        return match linkat(&file, "", CWD, destination, AtFlags::EMPTY_PATH) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => Err(Unnamed::Exists),
            Err(Errno::NOENT) => {
                last = Some(Errno::NOENT.into());
                continue;
            }
            Err(errno) => Err(classify(errno.into())),
        };
    }
    // Without CAP_DAC_READ_SEARCH (before Linux 6.10) linkat always says ENOENT for the
    // descriptor: the probe at open ends here.
    Err(Unnamed::Refused(last.unwrap_or_else(|| {
        std::io::Error::other("the directory kept vanishing")
    })))
}

/// The longest pause of a create waiting for a removal of its directory to end: with
/// [`DIRECTORY_ATTEMPTS_MAX`], about 60 ms at worst, on the caller's thread.
const PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(2);

/// Whether `directory` is a directory whose links are all gone while its name still resolves
/// (between the two steps of its removal).
#[cfg(target_os = "linux")]
fn being_removed(directory: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(directory).is_ok_and(|metadata| metadata.is_dir() && metadata.nlink() == 0)
}

/// `create_dir_all`, again if a concurrent delete removed a directory on the way (which it
/// reports as not found, or as existing when it went between its `mkdir` and its check).
fn make_directory(directory: &std::path::Path) -> std::io::Result<()> {
    let mut attempts = 1;
    loop {
        match std::fs::create_dir_all(directory) {
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::AlreadyExists
                ) && attempts < DIRECTORY_ATTEMPTS_MAX =>
            {
                attempts += 1;
            }
            done => return done,
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn create_unnamed(
    _destination: &std::path::Path,
    _bytes: &[u8],
) -> std::result::Result<(), Unnamed> {
    Err(Unnamed::Refused(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "unnamed files are a Linux feature",
    )))
}

/// The name of the object store's probe for unnamed files, in its root (listings skip `#`).
const UNNAMED_PROBE: &str = "unnamed-files-probe#0";

/// Times a create makes its directory again, or waits for its removal to end, before giving
/// up (each time, another process removed it as empty meanwhile).
const DIRECTORY_ATTEMPTS_MAX: u32 = 32;

fn open_staging(
    destination: &std::path::Path,
) -> std::io::Result<(std::fs::File, std::path::PathBuf)> {
    let mut parents_created = 0;
    let mut suffix = 1;
    while suffix <= STAGING_ATTEMPTS_MAX {
        let mut staging = destination.as_os_str().to_owned();
        staging.push(format!("#{suffix}"));
        let staging = std::path::PathBuf::from(staging);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(file) => return Ok((file, staging)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => suffix += 1,
            // First object of its directory (a new entity): create it, try the same name.
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound
                    && parents_created < DIRECTORY_ATTEMPTS_MAX =>
            {
                let parent = staging.parent().unwrap_or(std::path::Path::new("."));
                make_directory(parent)?;
                parents_created += 1;
            }
            Err(error) => return Err(error),
        }
    }
    Err(std::io::Error::other(format!(
        "{STAGING_ATTEMPTS_MAX} staging names of {} are taken; remove stale `#<n>` files",
        destination.display()
    )))
}

/// Renames `from` to `to` unless `to` exists (`AlreadyExists` then).
#[cfg(target_os = "linux")]
fn publish_no_replace(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // The filesystem cannot rename without replacing: publish as object_store does.
        Err(Errno::INVAL | Errno::NOSYS) => link_then_unlink(from, to),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn publish_no_replace(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    link_then_unlink(from, to)
}

fn link_then_unlink(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::hard_link(from, to)?;
    let _ = std::fs::remove_file(from);
    Ok(())
}

/// How writes to the store become durable (cheap to clone).
#[derive(Clone, Default)]
pub struct Durability {
    flusher: Option<Arc<Flusher>>,
}

impl Durability {
    /// A put is as durable as it will be when it returns (S3, memory, or `fsync = false`).
    pub fn on_put() -> Self {
        Self::default()
    }

    /// Group commit with `syncfs(2)` on the filesystem that holds `directory`.
    pub fn syncfs(directory: &std::path::Path) -> Result<Self> {
        let root = std::fs::File::open(directory).map_err(|error| {
            RuntimeError::Store(format!(
                "cannot open {} to flush it: {error}",
                directory.display()
            ))
        })?;
        let shared = Arc::new(FlushShared::default());
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("actorhub-flush".to_string())
            .spawn(move || flush_loop(&root, &thread_shared))
            .map_err(|error| RuntimeError::Store(format!("cannot start the flusher: {error}")))?;
        Ok(Self {
            flusher: Some(Arc::new(Flusher { shared })),
        })
    }

    /// Whether writes need a flush after they return (a local directory with `fsync = true`).
    pub fn flushes(&self) -> bool {
        self.flusher.is_some()
    }

    /// Returns once everything written to the store before this call is on disk.
    pub async fn sync(&self) -> Result<()> {
        if !self.flushes() {
            return Ok(());
        }
        let (reply, done) = tokio::sync::oneshot::channel();
        self.then_synced(move |result| {
            let _ = reply.send(result);
        });
        done.await.unwrap_or_else(|_| {
            Err(RuntimeError::Store(
                "the store's flusher stopped; the write may not be on disk".to_string(),
            ))
        })
    }

    /// Calls `done` once everything written to the store before this call is on disk: at
    /// once when writes need no flush, otherwise from the flusher thread after its next
    /// `syncfs` (so `done` must be quick: it delays the other callers of that round).
    pub fn then_synced(&self, done: impl FnOnce(Result<()>) + Send + 'static) {
        let Some(flusher) = &self.flusher else {
            return done(Ok(()));
        };
        flusher.shared.lock().waiting.push(Box::new(done));
        flusher.shared.wake.notify_one();
    }
}

type FlushReply = Box<dyn FnOnce(Result<()>) + Send>;

/// Owner of the flusher thread: stops it when the last `Durability` clone goes.
struct Flusher {
    shared: Arc<FlushShared>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_one();
    }
}

#[derive(Default)]
struct FlushShared {
    state: Mutex<FlushState>,
    wake: Condvar,
}

#[derive(Default)]
struct FlushState {
    waiting: Vec<FlushReply>,
    stopping: bool,
    /// syncfs calls made so far.
    rounds: u64,
}

impl FlushShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlushState> {
        // The state stays consistent whatever panicked while holding it (a Vec and a flag).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn flush_loop(root: &std::fs::File, shared: &FlushShared) {
    loop {
        // At most one waiter per entity with an append in flight.
        let round: Vec<FlushReply> = {
            let mut state = shared.lock();
            while state.waiting.is_empty() && !state.stopping {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if state.waiting.is_empty() {
                return;
            }
            state.rounds += 1;
            std::mem::take(&mut state.waiting)
        };
        // Every caller in `round` had finished its writes before it queued, so before this.
        let started = std::time::Instant::now();
        let result = syncfs(root).map_err(|error| {
            tracing::error!(%error, "syncfs of the object store failed: recent writes may not be on disk");
            format!("cannot flush the object store to disk (syncfs): {error}; check the disk")
        });
        metrics::histogram!(crate::metrics::STORE_FLUSH_SECONDS)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(crate::metrics::STORE_FLUSH_WAITERS).record(round.len() as f64);
        for reply in round {
            reply(result.clone().map_err(RuntimeError::Store));
        }
    }
}

#[cfg(target_os = "linux")]
fn syncfs(root: &std::fs::File) -> std::io::Result<()> {
    rustix::fs::syncfs(root).map_err(std::io::Error::from)
}

/// Only Linux has syncfs; [`open`] lets object_store fsync each write elsewhere.
#[cfg(not(target_os = "linux"))]
fn syncfs(_root: &std::fs::File) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "syncfs exists only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_read_answers_missing_and_small_objects_and_leaves_the_rest_to_the_store() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let writes = local_writes(&directory);
        let path = |name: &str| object_store::path::Path::from(name);
        assert_eq!(writes.read_small(&path("fences/n1/0")), Ok(Some(None)));
        writes
            .create(&path("fences/n1/0"), b"a fence")
            .expect("created");
        assert_eq!(
            writes.read_small(&path("fences/n1/0")),
            Ok(Some(Some(b"a fence".to_vec())))
        );
        let large = vec![7u8; SMALL_READ_BYTES_MAX as usize + 1];
        writes
            .create(&path("segments/large"), &large)
            .expect("created");
        assert_eq!(writes.read_small(&path("segments/large")), Ok(None));
        assert_eq!(
            writes.read_small(&path("fences/n1")),
            Ok(None),
            "a directory"
        );
    }

    fn local_writes(directory: &tempfile::TempDir) -> LocalWrites {
        let store = Arc::new(LocalFileSystem::new_with_prefix(directory.path()).expect("store"));
        LocalWrites::new(store, directory.path().to_str().expect("utf-8")).expect("local writes")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn creates_survive_another_process_removing_their_directory_and_deletes_keep_it() {
        if links_unnamed_files() {
            let directory = tempfile::tempdir().expect("temporary directory");
            let writes = local_writes(&directory);
            assert!(writes.unnamed, "this kernel links unnamed files");
            race_creates_with_removals(directory, writes).await;
        }
        let directory = tempfile::tempdir().expect("temporary directory");
        let mut writes = local_writes(&directory);
        writes.unnamed = false;
        race_creates_with_removals(directory, writes).await;
    }

    /// Creates and deletes objects in one directory from two tasks while another store's
    /// deletes remove that directory whenever it is left empty.
    async fn race_creates_with_removals(directory: tempfile::TempDir, writes: LocalWrites) {
        // Another node deleting with object_store's automatic clean-up (as older builds did):
        // each delete of the last object removes the directories it left empty.
        let cleaning = Arc::new(
            LocalFileSystem::new_with_prefix(directory.path())
                .expect("store")
                .with_automatic_cleanup(true),
        );
        let writers: Vec<_> = (0..2)
            .map(|writer| {
                let writes = writes.clone();
                let cleaning = Arc::clone(&cleaning);
                tokio::spawn(async move {
                    use object_store::ObjectStoreExt;
                    for round in 0..400 {
                        let object = object_store::path::Path::from(format!(
                            "segments/room/a/{writer}-{round}"
                        ));
                        writes.create(&object, b"one event").expect("created");
                        cleaning.delete(&object).await.expect("deleted");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer");
        }
        assert!(
            !directory.path().join("segments").exists(),
            "the other node's last delete removed the directories"
        );
        let object = object_store::path::Path::from("segments/room/b/1");
        writes.create(&object, b"one event").expect("created");
        assert_eq!(writes.delete(&object).await, Ok(()));
        assert!(!directory.path().join("segments/room/b/1").exists());
        assert!(
            directory.path().join("segments/room/b").is_dir(),
            "a delete keeps the directory"
        );
        assert_eq!(writes.delete(&object).await, Ok(()), "a missing object");
    }

    #[tokio::test]
    async fn work_queued_behind_a_stuck_background_thread_is_taken_back_and_new_work_bypasses_it() {
        let starved_after = std::time::Duration::from_millis(50);
        let background = Background::start_with(starved_after).expect("thread");
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let stuck = {
            let background = background.clone();
            tokio::spawn(async move {
                background
                    .run(move || {
                        let _ = started.send(std::thread::current().id());
                        blocked.recv().map_err(std::io::Error::other)
                    })
                    .await
            })
        };
        let thread = running.await.expect("the thread took the first job");
        // Queued behind the stuck job: taken back after the wait, not before.
        let queued_at = std::time::Instant::now();
        let ran_on = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            background.run(move || Ok(std::thread::current().id())),
        )
        .await
        .expect("not left behind the stuck job")
        .expect("ran");
        assert_ne!(ran_on, thread, "not on the stuck thread");
        assert!(
            queued_at.elapsed() >= starved_after,
            "it waited its turn first"
        );
        // Meanwhile the thread is starved: new work goes straight to the blocking pool.
        assert!(background.progress.starved());
        let ran_on = background
            .run(move || Ok(std::thread::current().id()))
            .await
            .expect("ran");
        assert_ne!(ran_on, thread);
        release.send(()).expect("release");
        stuck.await.expect("task").expect("the stuck job ends");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn deletes_run_on_a_thread_at_the_idle_policy() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let writes = local_writes(&directory);
        let stat = writes
            .background
            .run(|| std::fs::read_to_string("/proc/thread-self/stat"))
            .await
            .expect("its own stat");
        // Field 41 (`policy`), counted after the parenthesised command name (fields 1-2).
        let after_name = &stat[stat.rfind(')').expect("a command name") + 1..];
        let policy: i32 = after_name
            .split_whitespace()
            .nth(41 - 3)
            .expect("a policy field")
            .parse()
            .expect("a number");
        assert_eq!(policy, libc::SCHED_IDLE);
    }

    #[tokio::test]
    async fn concurrent_writers_all_return_flushed() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let durability = Durability::syncfs(directory.path()).expect("flusher starts");
        let callers: Vec<_> = (0..64)
            .map(|index| {
                let durability = durability.clone();
                let path = directory.path().join(format!("file-{index}"));
                tokio::spawn(async move {
                    std::fs::write(&path, b"written before the sync").expect("write");
                    durability.sync().await
                })
            })
            .collect();
        for caller in callers {
            caller.await.expect("caller task").expect("sync succeeds");
        }
    }

    #[tokio::test]
    async fn one_syncfs_serves_every_caller_queued_before_it() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let durability = Durability::syncfs(directory.path()).expect("flusher starts");
        let shared = Arc::clone(&durability.flusher.as_ref().expect("a flusher").shared);
        let (replies, done): (Vec<_>, Vec<_>) =
            (0..10).map(|_| tokio::sync::oneshot::channel()).unzip();
        shared
            .lock()
            .waiting
            .extend(replies.into_iter().map(|reply| -> FlushReply {
                Box::new(move |result| {
                    let _ = reply.send(result);
                })
            }));
        shared.wake.notify_one();
        for caller in done {
            caller.await.expect("answered").expect("flushed");
        }
        assert_eq!(shared.lock().rounds, 1, "ten queued callers, one syncfs");
    }

    #[tokio::test]
    async fn dropping_the_last_handle_tells_the_flusher_to_stop() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let durability = Durability::syncfs(directory.path()).expect("flusher starts");
        durability.sync().await.expect("sync succeeds");
        let shared = Arc::clone(&durability.flusher.as_ref().expect("a flusher").shared);
        drop(durability);
        assert!(
            shared.lock().stopping,
            "dropping the last handle stops the thread"
        );
    }

    #[tokio::test]
    async fn a_local_create_is_create_only_and_object_store_reads_it() {
        for unnamed in [true, false] {
            local_create_is_create_only(unnamed).await;
        }
    }

    /// With `unnamed`, as this machine allows (an unnamed file linked in place, if it can);
    /// without, through a staging file and a rename.
    async fn local_create_is_create_only(unnamed: bool) {
        use object_store::ObjectStoreExt;
        let directory = tempfile::tempdir().expect("temporary directory");
        let section = StorageSection {
            url: format!("file://{}", directory.path().display()),
            fsync: false,
            ..StorageSection::default()
        };
        let storage = open(&section).expect("store opens");
        let mut local = storage.local.clone().expect("a local directory store");
        if !unnamed {
            local.unnamed = false;
        }
        let location = object_store::path::Path::from("journal/room/a b%c/e/00000000000000000001");
        local.create(&location, b"first").expect("created");
        assert!(matches!(
            local.create(&location, b"second"),
            Err(CreateError::Exists)
        ));
        let read = storage
            .objects
            .get(&location)
            .await
            .expect("object_store finds it")
            .bytes()
            .await
            .expect("read");
        assert_eq!(&read[..], b"first", "the loser wrote nothing");
        if unnamed && links_unnamed_files() {
            assert!(
                local.unnamed,
                "Linux 6.10 and later link unnamed files: the staging path was not needed"
            );
        }
        // What a writer that crashed between staging and publishing leaves behind.
        let mut stray = local
            .store
            .path_to_filesystem(&location)
            .expect("a file path")
            .into_os_string();
        stray.push("#3");
        std::fs::write(&stray, b"half").expect("stray staging file");
        let listed: Vec<_> = futures_util::TryStreamExt::try_collect::<Vec<_>>(
            storage
                .objects
                .list(Some(&object_store::path::Path::from("journal"))),
        )
        .await
        .expect("listing");
        assert_eq!(listed.len(), 1, "staging files are not objects: {listed:?}");
    }

    /// Linux 6.10 and later let any process link a file it opened with `O_TMPFILE` (on a
    /// filesystem with `O_TMPFILE`: the temporary directory's, here).
    fn links_unnamed_files() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|part| part.parse::<u32>().unwrap_or(0));
        let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        version >= (6, 10)
    }

    #[tokio::test]
    async fn on_put_needs_no_flush() {
        Durability::on_put()
            .sync()
            .await
            .expect("nothing to wait for");
    }
}
