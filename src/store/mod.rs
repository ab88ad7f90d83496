//! The store: every persistent record of hearth, behind typed operations. Only this module knows
//! sled.
//!
//! Layout (one sled tree each; keys big-endian so byte order is meaningful order):
//!
//! ```text
//! meta           "schema_version" → u32 BE
//! users          user_id → User                 users_by_name  username → user_id    (users.rs)
//! settings       user_id → Settings                                                   (users.rs)
//! chats          chat_id → Chat                 chats_by_user  user_id ‖ updated_at BE ‖ chat_id → ()
//! messages       chat_id ‖ seq BE → Message                                           (chats.rs)
//! model_verify   file path → VerifiedFile (sha256 cache keyed by size + mtime)
//! user_models    name → UserModel (the user's own pinned GGUF files; models.rs)
//! counts         record kind → u64 BE (counts.rs)
//! bg_jobs        job_id → BgJob (jobs.rs)
//! documents, docs_by_scope, doc_by_hash, chunks, vectors: see `documents.rs`
//! files, library_jobs, doc_files, library_orphans: see `library.rs` (the drop folder)
//! memories, memory_hash, memory_vectors, memory_history, ...: see `memories.rs`
//! ```
//!
//! Values are JSON (serde): small, debuggable, and tolerant of added fields; vectors are
//! little-endian f32 (`codec.rs`).
//!
//! Durability: writes are applied with sled transactions (atomic across trees) and made durable
//! with [`Store::durable`], which groups the flushes of concurrent writers into one fsync. Callers
//! answer 2xx only after `durable` returned; that is the invariant the API rests on.

mod chats;
mod codec;
mod counts;
mod documents;
mod flush;
mod jobs;
mod library;
mod memories;
mod models;
pub mod types;
mod users;

pub use chats::{ChatPage, DeletedChat};
pub use documents::{Inserted, StoredVector};
pub use jobs::{BgJob, BgJobKind, JobId};
pub use library::{
    FileKey, FileOutcome, FileRecord, FileState, JobKind, LibraryJob, NewDocument, Settled,
};
pub use memories::{Added, HistoryEntry, HistoryEvent, Memory, MemoryId, MemoryOrigin};
pub use models::UserModel;
pub use users::CreatedUser;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;

use codec::{encode, get};
use counts::Counted;

pub use types::*;

/// The schema this build writes. Older stores are migrated on open by [`migrate`].
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store i/o error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is unreadable: {0}")]
    Corrupt(String),
    #[error("store was written by a newer hearth (schema {found}, this build knows {known})")]
    TooNew { found: u32, known: u32 },
    #[error("flush failed: {0}")]
    Flush(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    InUse(String),
}

/// Cheap-to-clone handle on the open store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    users: sled::Tree,
    users_by_name: sled::Tree,
    settings: sled::Tree,
    chats: sled::Tree,
    chats_by_user: sled::Tree,
    messages: sled::Tree,
    model_verify: sled::Tree,
    /// The user's pinned model files (`models.rs`).
    user_models: sled::Tree,
    documents: sled::Tree,
    docs_by_scope: sled::Tree,
    doc_by_hash: sled::Tree,
    chunks: sled::Tree,
    vectors: sled::Tree,
    files: sled::Tree,
    library_jobs: sled::Tree,
    doc_files: sled::Tree,
    library_orphans: sled::Tree,
    /// Pending background jobs (`jobs.rs`).
    bg_jobs: sled::Tree,
    /// Record counts, changed in the transactions that change the records (`counts.rs`).
    counts: sled::Tree,
    mem: memories::Trees,
    flusher: flush::GroupFlush,
}

/// A cached verification of a model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifiedFile {
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
    pub sha256: String,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

impl Store {
    /// Opens (or creates) the store in `dir` and migrates it to [`SCHEMA_VERSION`].
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Background fsync stays on as a second line of defence; acknowledged writes never
            // rely on it (they wait for `durable`).
            .flush_every_ms(Some(500))
            .open()?;
        let tree = |name: &str| db.open_tree(name);
        let inner = Inner {
            users: tree("users")?,
            users_by_name: tree("users_by_name")?,
            settings: tree("settings")?,
            chats: tree("chats")?,
            chats_by_user: tree("chats_by_user")?,
            messages: tree("messages")?,
            model_verify: tree("model_verify")?,
            user_models: tree("user_models")?,
            documents: tree("documents")?,
            docs_by_scope: tree("docs_by_scope")?,
            doc_by_hash: tree("doc_by_hash")?,
            chunks: tree("chunks")?,
            vectors: tree("vectors")?,
            files: tree("files")?,
            library_jobs: tree("library_jobs")?,
            doc_files: tree("doc_files")?,
            library_orphans: tree("library_orphans")?,
            bg_jobs: tree("bg_jobs")?,
            counts: tree("counts")?,
            mem: memories::Trees::open(&db)?,
            flusher: flush::GroupFlush::start(db.clone()),
            db,
        };
        migrate(&inner.db)?;
        counts::ensure(&inner.counts, |what| match what {
            Counted::Users => inner.users.clone(),
            Counted::Chats => inner.chats.clone(),
            Counted::Messages => inner.messages.clone(),
            Counted::Documents => inner.documents.clone(),
            Counted::Chunks => inner.chunks.clone(),
        })?;
        counts::ensure_files(&inner.counts, &inner.files, &inner.library_jobs)?;
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// [`Store::open`], waiting up to `wait` while another process holds the store's file lock.
    /// The caller holds the instance lock already, so that process is a daemon on its way out: a
    /// stopped daemon's I/O threads may still be finishing (and holding the files) when the next
    /// one starts (`hearth stop && hearth start`, a service restart).
    pub fn open_waiting(dir: &Path, cache_bytes: u64, wait: Duration) -> Result<Store, StoreError> {
        let deadline = Instant::now() + wait;
        loop {
            match Store::open(dir, cache_bytes) {
                // sled 0.34 reports a held lock as `Other` with this text (its config.rs).
                Err(StoreError::Sled(sled::Error::Io(err)))
                    if err.to_string().starts_with("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Waits until every write applied before this call is on disk (fsync). Concurrent callers
    /// share one flush.
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.inner.flusher.durable().await
    }

    /// Flushes synchronously; for shutdown and tests.
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    // === model verification cache ===

    pub fn verified_file(&self, path: &Path) -> Result<Option<VerifiedFile>, StoreError> {
        get(
            &self.inner.model_verify,
            path.as_os_str().as_encoded_bytes(),
        )
    }

    pub fn put_verified_file(&self, path: &Path, v: &VerifiedFile) -> Result<(), StoreError> {
        self.inner
            .model_verify
            .insert(path.as_os_str().as_encoded_bytes(), encode(v))?;
        Ok(())
    }

    /// Record counts, for health and status: five key reads (see `counts.rs`).
    pub fn counts(&self) -> Result<StoreCounts, StoreError> {
        counts::read(&self.inner.counts)
    }

    /// Files per stored state by walking the `files` tree (what the counters must equal).
    #[doc(hidden)]
    pub fn scanned_file_counts(&self) -> Vec<(FileState, usize)> {
        let mut out: Vec<(FileState, usize)> = counts::STORED_FILE_STATES
            .into_iter()
            .map(|s| (s, 0))
            .collect();
        for entry in self.inner.files.iter().flatten() {
            if let Ok(record) = codec::decode::<FileRecord>(&entry.1) {
                if let Some(slot) = out.iter_mut().find(|(s, _)| *s == record.state) {
                    slot.1 += 1;
                }
            }
        }
        out
    }

    /// The same counts by scanning the five trees, as health did before the counters: for the
    /// benchmark that compares the two, and for tests of the counters.
    pub fn scanned_counts(&self) -> StoreCounts {
        let i = &self.inner;
        StoreCounts {
            users: i.users.len(),
            chats: i.chats.len(),
            messages: i.messages.len(),
            documents: i.documents.len(),
            chunks: i.chunks.len(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct StoreCounts {
    pub users: usize,
    pub chats: usize,
    pub messages: usize,
    pub documents: usize,
    pub chunks: usize,
}

/// Brings an older store up to [`SCHEMA_VERSION`]. Each step is one function, run in order; a
/// store from a newer build is refused rather than guessed at.
fn migrate(db: &sled::Db) -> Result<(), StoreError> {
    let meta = db.open_tree("meta")?;
    let found = match meta.get("schema_version")? {
        Some(bytes) => u32::from_be_bytes(
            bytes
                .as_ref()
                .try_into()
                .map_err(|_| StoreError::Corrupt("schema_version".into()))?,
        ),
        None => 0,
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    // Version 0 is an empty, new store; nothing to convert yet. Future steps go here:
    // `if found < 2 { migrate_1_to_2(db)?; }`.
    if found < SCHEMA_VERSION {
        meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
        db.flush()?;
    }
    Ok(())
}
