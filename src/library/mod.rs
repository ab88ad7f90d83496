//! The drop folder: watched folders whose supported files are searchable from every chat (the
//! `library` scope), kept equal to the folders across edits, renames, deletions and restarts.
//!
//! Three parts, one direction each, one file each (`watch.rs`, `settle.rs`, `worker.rs`; this file
//! holds the shared state and the status):
//! - **Finding changes.** The reconcile scan ([`scan`]) is the source of truth: it compares every
//!   file's size and mtime with the store and reports what differs. It runs at start, after a
//!   watcher error or overflow, and every `rescan` interval. The `notify` watcher is only an
//!   optimisation that points the same logic at the paths that just changed.
//! - **Waiting for stability.** A changed file is ingested only after its size and mtime stayed
//!   the same for the `stable` interval (half-copied files are never indexed), and is queued as
//!   a persistent job (`store::library`), so queued work survives `kill -9`.
//! - **Doing the work.** One worker takes jobs in order, in batches: reads each file through
//!   [`access`] (never outside the root), hashes it, reuses the document when the same bytes are
//!   already in the library (renames, moves and copies embed nothing), else extracts and chunks
//!   it; the batch's new chunks are embedded together (the embedder pauses while a chat
//!   generates), and each file's result is written in one transaction with its job removed.
//!
//! A bad file is recorded (`failed`/`skipped` with a reason) and never stops the others.

pub mod access;
pub mod rules;
mod scan;
mod settle;
mod watch;
mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::LibraryConfig;
use crate::error_code::ErrorCode;
use crate::events::Events;
use crate::ingest::Ingestor;
use crate::store::{now_millis, FileKey, FileRecord, FileState, LibraryJob, Store, StoreError};
use access::Root;
use rules::Rules;

/// What `GET /api/v1/library` reports (`server/library.rs` writes it).
#[derive(Debug, Clone)]
pub struct Status {
    pub roots: Vec<String>,
    pub watching: bool,
    /// Why the watcher is off: a watched folder that is gone or moved (its `root` named), or
    /// the watcher itself failed (the periodic scan still keeps the library right).
    pub watcher_error: Option<WatcherError>,
    pub counts: HashMap<&'static str, usize>,
    pub jobs: usize,
    /// Files seen changing, waiting to be stable.
    pub waiting: usize,
    pub orphans: usize,
    pub scans: u64,
    pub last_scan_ms: Option<u64>,
    pub last_scan_files: Option<usize>,
}

/// Why a root (or the whole watcher) is not being watched.
#[derive(Debug, Clone)]
pub struct WatcherError {
    /// `root_missing`, `root_moved`, or `watch_failed` (the watcher could not start or add a
    /// folder, e.g. inotify's watch limit).
    pub code: ErrorCode,
    pub root: Option<String>,
    pub message: String,
}

/// A file seen changing: when, and how it looked.
#[derive(Debug, Clone, Copy)]
struct Observation {
    size: u64,
    mtime_ns: i128,
    since: Instant,
}

#[derive(Default)]
struct Runtime {
    /// Files waiting to be stable.
    waiting: HashMap<FileKey, Observation>,
    /// Paths (root index, path below it) the watcher saw go, and when: removed only once gone
    /// for the `stable` interval with their root still in place. Deleting a watched folder
    /// reports each file gone before the folder itself, and acting at once would drop the
    /// records a missing folder keeps.
    gone: HashMap<(usize, Vec<u8>), Instant>,
    /// Files the worker holds right now (reported as `indexing`).
    in_flight: HashSet<FileKey>,
    /// Files being parsed by an extraction worker now: cancelling one kills that worker's job
    /// (the watcher does when the file changes or goes).
    extracting: HashMap<FileKey, Extracting>,
    watcher_error: Option<String>,
    watching: bool,
    /// Roots (by index) that are missing or moved; their files are neither read nor removed.
    root_problems: HashMap<usize, access::RootProblem>,
    /// The stored states of a missing or moved root's files, counted once when `status` first
    /// needs them (its files cannot change while it is away): a status call or a `/metrics`
    /// scrape does not walk the root's records every time. Dropped when the problem changes.
    unavailable: HashMap<usize, Vec<(&'static str, usize)>>,
    scans: u64,
    last_scan: Option<(Duration, usize)>,
}

/// A file in an extraction worker: what was read, and how to stop it.
struct Extracting {
    size: u64,
    mtime_ns: i128,
    cancel: tokio_util::sync::CancellationToken,
}

/// The drop-folder service; cheap to clone.
#[derive(Clone)]
pub struct Library {
    inner: Arc<Inner>,
}

struct Inner {
    roots: Vec<Root>,
    rules: Rules,
    config: LibraryConfig,
    ingestor: Ingestor,
    store: Store,
    events: Events,
    runtime: Mutex<Runtime>,
    /// Wakes the worker when a job is queued.
    work: Notify,
    /// Asks the scanner for a full reconcile.
    rescan: Notify,
    /// The daemon's tasks (scanner, worker, batch writes): shutdown waits for them.
    tasks: TaskTracker,
}

/// Messages from the watcher thread.
enum Watched {
    Paths(Vec<PathBuf>),
    /// Events were lost (queue overflow) or the watcher failed: only a scan can tell.
    Rescan(String),
}

impl Library {
    /// Opens the configured roots (before the daemon reports ready: an unusable root is a start
    /// error, the user named it explicitly). The same folder named twice is watched once.
    pub fn open_roots(config: &LibraryConfig) -> Result<Vec<Root>, String> {
        let mut roots: Vec<Root> = Vec::new();
        for path in &config.roots {
            let root = Root::open(path, config.follow_hardlinks)?;
            if let Some(other) = roots
                .iter()
                .find(|r| r.path.starts_with(&root.path) || root.path.starts_with(&r.path))
            {
                if other.path != root.path {
                    return Err(format!(
                        "watch folders {} and {} contain one another; watch only the outer one",
                        other.name, root.name
                    ));
                }
                continue;
            }
            roots.push(root);
        }
        Ok(roots)
    }

    /// Starts the watcher, the scanner and the worker.
    pub fn start(
        config: LibraryConfig,
        roots: Vec<Root>,
        ingestor: Ingestor,
        events: Events,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Library, String> {
        let rules = Rules::new(&config.ignore)?;
        let library = Library {
            inner: Arc::new(Inner {
                roots,
                rules,
                store: ingestor.store().clone(),
                ingestor,
                events,
                config,
                runtime: Mutex::default(),
                work: Notify::new(),
                rescan: Notify::new(),
                tasks,
            }),
        };
        let tasks = &library.inner.tasks;
        if library.inner.roots.is_empty() {
            // Nothing to watch; uploads into the library still work, and jobs left from an
            // earlier configuration are finished (or fail as gone) by the worker.
            tasks.spawn(library.clone().worker(shutdown));
            return Ok(library);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = library.start_watcher(tx);
        tasks.spawn(library.clone().scanner(rx, watcher, shutdown.clone()));
        tasks.spawn(library.clone().worker(shutdown));
        Ok(library)
    }

    fn runtime(&self) -> std::sync::MutexGuard<'_, Runtime> {
        self.inner
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn roots(&self) -> Vec<String> {
        self.inner.roots.iter().map(|r| r.name.clone()).collect()
    }

    /// Asks for a full reconcile scan now.
    pub fn rescan(&self) {
        self.inner.rescan.notify_one();
    }

    pub fn status(&self) -> Result<Status, StoreError> {
        let mut counts: HashMap<&'static str, usize> = self
            .inner
            .store
            .file_counts()?
            .into_iter()
            .map(|(s, n)| (s.as_str(), n))
            .collect();
        let mut rt = self.runtime();
        let indexing = rt.in_flight.len();
        counts.insert("indexing", indexing);
        if let Some(queued) = counts.get_mut("queued") {
            *queued = queued.saturating_sub(indexing);
        }
        // The files of a missing or moved folder count as unavailable, whatever they were.
        let mut unavailable = 0;
        let missing: Vec<usize> = rt.root_problems.keys().copied().collect();
        for i in missing {
            if let std::collections::hash_map::Entry::Vacant(slot) = rt.unavailable.entry(i) {
                let prefix = FileKey::prefix(&self.inner.roots[i].name, b"");
                let mut by_state: HashMap<&'static str, usize> = HashMap::new();
                for (_, record) in self.inner.store.files_with_prefix(&prefix)? {
                    *by_state.entry(record.state.as_str()).or_insert(0) += 1;
                }
                slot.insert(by_state.into_iter().collect());
            }
            for &(state, n) in rt.unavailable.get(&i).into_iter().flatten() {
                if let Some(count) = counts.get_mut(state) {
                    *count = count.saturating_sub(n);
                }
                unavailable += n;
            }
        }
        counts.insert("unavailable", unavailable);
        Ok(Status {
            roots: self.roots(),
            watching: rt.watching && rt.root_problems.is_empty(),
            watcher_error: rt
                .root_problems
                .iter()
                .min_by_key(|(i, _)| **i)
                .map(|(&i, problem)| WatcherError {
                    code: problem.code(),
                    root: Some(self.inner.roots[i].name.clone()),
                    message: problem.message().to_string(),
                })
                .or_else(|| {
                    rt.watcher_error.as_ref().map(|message| WatcherError {
                        code: ErrorCode::WatchFailed,
                        root: None,
                        message: message.clone(),
                    })
                }),
            counts,
            jobs: self.inner.store.library_job_count(),
            waiting: rt.waiting.len(),
            orphans: self.inner.store.orphan_count(),
            scans: rt.scans,
            last_scan_ms: rt
                .last_scan
                .map(|(d, _)| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            last_scan_files: rt.last_scan.map(|(_, n)| n),
        })
    }

    /// The state to report for a stored record (`indexing` is known only at runtime).
    pub fn reported_state(&self, key: &FileKey, record: &FileRecord) -> FileState {
        let rt = self.runtime();
        if rt
            .root_problems
            .keys()
            .any(|&i| self.inner.roots[i].name == key.root())
        {
            FileState::Unavailable
        } else if record.state == FileState::Queued && rt.in_flight.contains(key) {
            FileState::Indexing
        } else {
            record.state
        }
    }
}

fn job_record(job: &LibraryJob) -> FileRecord {
    FileRecord {
        reason: None,
        message: None,
        ..not_indexed(
            FileState::Queued,
            job.size,
            job.mtime_ns,
            ErrorCode::Internal,
            "",
        )
    }
}

fn not_indexed(
    state: FileState,
    size: u64,
    mtime_ns: i128,
    reason: ErrorCode,
    message: &str,
) -> FileRecord {
    FileRecord {
        size,
        mtime_ns,
        state,
        reason: Some(reason),
        message: (!message.is_empty()).then(|| message.to_string()),
        content_hash: None,
        document_id: None,
        chunks: 0,
        indexed_at: None,
        updated_at: now_millis(),
        job: None,
    }
}

/// True when a stored record must be worked on even though size and mtime match: queued work
/// whose job was lost, and failures whose cause was not the file.
fn needs_work(record: &FileRecord) -> bool {
    match record.state {
        FileState::Queued | FileState::Indexing => record.job.is_none(),
        FileState::Failed => record.reason.is_some_and(ErrorCode::is_transient),
        // (Never stored.)
        FileState::Indexed | FileState::Skipped | FileState::Unavailable => false,
    }
}

/// How long ago `mtime_ns` was (zero for times in the future).
fn age(mtime_ns: i128) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    Duration::from_nanos(u64::try_from(now - mtime_ns).unwrap_or(0))
}
