//! The drop folder: watched folders whose supported files are searchable from every chat (the
//! `library` scope), kept equal to the folders across edits, renames, deletions and restarts.
//!
//! Three parts, one direction each:
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

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error_code::ErrorCode;
use crate::events::{Event, Events};
use crate::ingest::{IngestError, Ingestor, Prepared};
use crate::store::{
    now_millis, FileKey, FileOutcome, FileRecord, FileState, JobKind, LibraryJob, NewDocument,
    Scope, Store, StoreError,
};
use access::{AccessError, Kind, Root};
use rules::Rules;

/// Files taken from the queue per batch: enough that their chunks fill embedder batches, few
/// enough that a batch's memory (file bytes + chunks) stays small.
const BATCH_FILES: usize = 16;
/// Files read and extracted at the same time within a batch.
const PREPARE_CONCURRENCY: usize = 2;
/// How often waiting files are checked for stability.
const STABILITY_TICK: Duration = Duration::from_millis(100);
/// Longest the worker waits for chat replies between two batches (a daemon that chats
/// without pause still makes ingest progress).
const MAX_YIELD: Duration = Duration::from_secs(30);
/// How often a waiting worker checks whether the reply is done.
const YIELD_POLL: Duration = Duration::from_millis(20);
/// How often an idle worker looks for orphans whose grace period ended (only while there are
/// any; new jobs wake it at once).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Drop-folder settings (see `config`).
#[derive(Debug, Clone)]
pub struct LibraryConfig {
    pub roots: Vec<PathBuf>,
    /// A file must keep its size and mtime this long before it is ingested.
    pub stable: Duration,
    /// Full reconcile scan interval.
    pub rescan: Duration,
    /// Larger files are skipped (`too_large`) without being read.
    pub max_file_bytes: u64,
    /// User ignore globs, on top of the built-in rules.
    pub ignore: Vec<String>,
    /// How long a document no file refers to any more is kept for a rename to re-link it.
    pub orphan_grace: Duration,
}

/// What `GET /api/v1/library` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub roots: Vec<String>,
    pub watching: bool,
    /// Why the watcher is off (the periodic scan still keeps the library right).
    pub watcher_error: Option<String>,
    pub counts: HashMap<&'static str, usize>,
    pub jobs: usize,
    /// Files seen changing, waiting to be stable.
    pub waiting: usize,
    pub orphans: usize,
    pub scans: u64,
    pub last_scan_ms: Option<u64>,
    pub last_scan_files: Option<usize>,
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
    /// Files the worker holds right now (reported as `indexing`).
    in_flight: HashSet<FileKey>,
    watcher_error: Option<String>,
    watching: bool,
    scans: u64,
    last_scan: Option<(Duration, usize)>,
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
            let root = Root::open(path)?;
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
        let rt = self.runtime();
        let indexing = rt.in_flight.len();
        counts.insert("indexing", indexing);
        if let Some(queued) = counts.get_mut("queued") {
            *queued = queued.saturating_sub(indexing);
        }
        Ok(Status {
            roots: self.roots(),
            watching: rt.watching,
            watcher_error: rt.watcher_error.clone(),
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
        if record.state == FileState::Queued && self.runtime().in_flight.contains(key) {
            FileState::Indexing
        } else {
            record.state
        }
    }

    // === watching and scanning ===

    fn start_watcher(
        &self,
        tx: mpsc::UnboundedSender<Watched>,
    ) -> Option<notify::RecommendedWatcher> {
        use notify::{RecursiveMode, Watcher};
        let sender = tx.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let msg = match res {
                Ok(event) if event.need_rescan() => Watched::Rescan("event queue overflow".into()),
                // Opens, reads and closes-without-writing change nothing; our own scans and
                // reads cause them, so reacting would loop.
                Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => return,
                Ok(event) => Watched::Paths(event.paths),
                Err(err) => Watched::Rescan(err.to_string()),
            };
            let _ = sender.send(msg);
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(err) => {
                self.watcher_failed(format!("cannot start the file watcher: {err}"));
                return None;
            }
        };
        for root in &self.inner.roots {
            if let Err(err) = watcher.watch(&root.path, RecursiveMode::Recursive) {
                // Typically inotify's watch limit: the periodic scan still catches everything.
                self.watcher_failed(format!("cannot watch {}: {err}", root.name));
                return None;
            }
        }
        self.runtime().watching = true;
        Some(watcher)
    }

    fn watcher_failed(&self, message: String) {
        tracing::warn!(error = %message, "file watcher unavailable; relying on periodic scans");
        let mut rt = self.runtime();
        rt.watching = false;
        rt.watcher_error = Some(message);
    }

    async fn scanner(
        self,
        mut rx: mpsc::UnboundedReceiver<Watched>,
        _watcher: Option<notify::RecommendedWatcher>,
        shutdown: CancellationToken,
    ) {
        self.full_scan().await;
        let mut tick = tokio::time::interval(STABILITY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_scan = tokio::time::Instant::now() + self.inner.config.rescan;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                msg = rx.recv() => match msg {
                    Some(Watched::Paths(paths)) => {
                        for path in paths {
                            self.path_changed(&path).await;
                        }
                    }
                    Some(Watched::Rescan(why)) => {
                        tracing::info!(reason = %why, "watcher asked for a rescan");
                        self.full_scan().await;
                    }
                    None => {}
                },
                // Ticks only while files wait to become stable: an idle daemon sleeps.
                _ = tick.tick(), if !self.runtime().waiting.is_empty() => self.check_waiting().await,
                () = tokio::time::sleep_until(next_scan) => {
                    self.full_scan().await;
                    next_scan = tokio::time::Instant::now() + self.inner.config.rescan;
                }
                () = self.inner.rescan.notified() => self.full_scan().await,
            }
        }
    }

    async fn full_scan(&self) {
        let started = Instant::now();
        let mut files = 0;
        for index in 0..self.inner.roots.len() {
            files += self.scan(index, Vec::new()).await;
        }
        let mut rt = self.runtime();
        rt.scans += 1;
        rt.last_scan = Some((started.elapsed(), files));
        tracing::debug!(files, ms = started.elapsed().as_millis(), "reconcile scan");
    }

    /// Reconciles one directory tree with the store; returns the files seen.
    async fn scan(&self, root: usize, dir: Vec<u8>) -> usize {
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || {
            scan::reconcile(&inner.roots[root], &inner.rules, &inner.store, &dir)
        })
        .await;
        let report = match result {
            Ok(Ok(report)) => report,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "reconcile scan failed");
                return 0;
            }
            Err(err) => {
                tracing::error!(error = %err, "reconcile scan panicked");
                return 0;
            }
        };
        let seen = report.files;
        let now = Instant::now();
        for (key, kind) in report.changed {
            self.observe(key, kind, now, true).await;
        }
        for key in report.gone {
            self.queue(&key, JobKind::Remove, 0, 0);
        }
        seen
    }

    /// A path the watcher reported: look at it now.
    async fn path_changed(&self, path: &Path) {
        let Some((root, relative)) = self.locate(path) else {
            return;
        };
        tracing::trace!(path = %path.display(), "watcher event");
        if relative.is_empty() {
            self.scan(root, Vec::new()).await;
            return;
        }
        match self.inner.roots[root].stat(&relative) {
            Ok(Kind::Dir) => {
                if !self.inner.rules.ignored_path(&relative, true) {
                    self.scan(root, relative).await;
                }
            }
            Ok(kind) => {
                if !self.inner.rules.ignored_path(&relative, false) {
                    let key = FileKey::new(&self.inner.roots[root].name, &relative);
                    self.observe(key, kind, Instant::now(), false).await;
                }
            }
            Err(_) => {
                // Gone (or no longer reachable without a link): it and everything below it.
                let name = &self.inner.roots[root].name;
                let mut gone = vec![FileKey::new(name, &relative)];
                match self
                    .inner
                    .store
                    .files_with_prefix(&FileKey::prefix(name, &relative))
                {
                    Ok(below) => gone.extend(below.into_iter().map(|(k, _)| k)),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot list files below a removed path")
                    }
                }
                for key in gone {
                    self.runtime().waiting.remove(&key);
                    self.queue(&key, JobKind::Remove, 0, 0);
                }
            }
        }
    }

    /// The root a watcher path belongs to and the path below it.
    fn locate(&self, path: &Path) -> Option<(usize, Vec<u8>)> {
        self.inner.roots.iter().enumerate().find_map(|(i, root)| {
            let relative = path.strip_prefix(&root.path).ok()?;
            Some((i, relative.as_os_str().as_bytes().to_vec()))
        })
    }

    /// A file that changed: start (or restart) its stability wait. `from_scan` files whose mtime
    /// is already older than the interval count as stable at once (nothing wrote them lately).
    async fn observe(&self, key: FileKey, kind: Kind, now: Instant, from_scan: bool) {
        match kind {
            Kind::File { size, mtime_ns } => {
                if from_scan && age(mtime_ns) >= self.inner.config.stable {
                    self.runtime().waiting.remove(&key);
                    self.stable(&key, size, mtime_ns).await;
                    return;
                }
                let mut rt = self.runtime();
                let entry = rt.waiting.entry(key).or_insert(Observation {
                    size,
                    mtime_ns,
                    since: now,
                });
                if entry.size != size || entry.mtime_ns != mtime_ns {
                    *entry = Observation {
                        size,
                        mtime_ns,
                        since: now,
                    };
                }
            }
            Kind::Symlink => {
                self.skip(
                    &key,
                    0,
                    0,
                    ErrorCode::Symlink,
                    "symbolic links are not followed",
                )
                .await
            }
            Kind::Special => {
                self.skip(
                    &key,
                    0,
                    0,
                    ErrorCode::NotRegularFile,
                    "FIFOs, sockets and devices are not read",
                )
                .await
            }
            Kind::Dir => {}
        }
    }

    /// Files whose wait is over: still unchanged → queue; changed → wait again; gone → remove.
    async fn check_waiting(&self) {
        let stable = self.inner.config.stable;
        let due: Vec<(FileKey, Observation)> = {
            let rt = self.runtime();
            rt.waiting
                .iter()
                .filter(|(_, o)| o.since.elapsed() >= stable)
                .map(|(k, o)| (k.clone(), *o))
                .collect()
        };
        for (key, seen) in due {
            let Some(root) = self.inner.roots.iter().find(|r| r.name == key.root()) else {
                self.runtime().waiting.remove(&key);
                continue;
            };
            match root.stat(key.relative()) {
                Ok(Kind::File { size, mtime_ns })
                    if size == seen.size && mtime_ns == seen.mtime_ns =>
                {
                    self.runtime().waiting.remove(&key);
                    self.stable(&key, size, mtime_ns).await;
                }
                Ok(Kind::File { size, mtime_ns }) => {
                    // Still being written.
                    self.runtime().waiting.insert(
                        key,
                        Observation {
                            size,
                            mtime_ns,
                            since: Instant::now(),
                        },
                    );
                }
                Ok(other) => {
                    self.runtime().waiting.remove(&key);
                    Box::pin(self.observe(key, other, Instant::now(), false)).await;
                }
                Err(_) => {
                    self.runtime().waiting.remove(&key);
                    self.queue(&key, JobKind::Remove, 0, 0);
                }
            }
        }
    }

    /// A file that stopped changing: queue it unless the store already has this version.
    async fn stable(&self, key: &FileKey, size: u64, mtime_ns: i128) {
        let known = match self.inner.store.file(key) {
            Ok(known) => known,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read a file record");
                None
            }
        };
        if let Some(known) = &known {
            if known.size == size && known.mtime_ns == mtime_ns && !needs_work(known) {
                return;
            }
        }
        if size > self.inner.config.max_file_bytes {
            let message = format!(
                "larger than the limit of {} bytes",
                self.inner.config.max_file_bytes
            );
            return self
                .skip(key, size, mtime_ns, ErrorCode::TooLarge, &message)
                .await;
        }
        if size == 0 {
            return self
                .skip(
                    key,
                    size,
                    mtime_ns,
                    ErrorCode::EmptyFile,
                    "the file is empty",
                )
                .await;
        }
        self.queue(key, JobKind::Upsert, size, mtime_ns);
    }

    /// Writes a job; the worker is woken.
    fn queue(&self, key: &FileKey, kind: JobKind, size: u64, mtime_ns: i128) {
        match self
            .inner
            .store
            .queue_file(key, kind, size, mtime_ns, now_millis())
        {
            Ok(Some(job)) => {
                tracing::debug!(path = %key.display(), kind = ?kind, seq = job.seq, "queued");
                if kind == JobKind::Upsert {
                    self.inner.events.emit(Event::FileQueued {
                        path: key.display(),
                        size,
                    });
                }
                self.inner.work.notify_one();
            }
            Ok(None) => {}
            Err(err) => tracing::error!(error = %err, path = %key.display(), "cannot queue a file"),
        }
    }

    /// Records a file that is not ingested on purpose (no job needed; any earlier content of
    /// the file leaves the library).
    async fn skip(
        &self,
        key: &FileKey,
        size: u64,
        mtime_ns: i128,
        reason: ErrorCode,
        message: &str,
    ) {
        if let Ok(Some(known)) = self.inner.store.file(key) {
            if known.state == FileState::Skipped
                && known.reason == Some(reason)
                && known.size == size
                && known.mtime_ns == mtime_ns
                && known.job.is_none()
            {
                return;
            }
        }
        let record = not_indexed(FileState::Skipped, size, mtime_ns, reason, message);
        self.settle(key, None, FileOutcome::NotIndexed(record))
            .await;
    }

    // === the worker ===

    async fn worker(self, shutdown: CancellationToken) {
        tokio::select! {
            // Stopping mid-batch is safe: unfinished jobs stay queued and run at next start.
            () = shutdown.cancelled() => {}
            () = self.work_loop() => {}
        }
    }

    /// Takes batches off the queue as a three-stage pipeline: while batch N is embedded, batch
    /// N+1 is read and extracted and batch N−1 is written and flushed, so the embedder (the
    /// bottleneck) never waits for parsing or fsync.
    async fn work_loop(&self) {
        let mut next: Option<Vec<(LibraryJob, Step)>> = None;
        let mut writing: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            // Reading, extracting and writing also take CPU from a reply being generated: the
            // whole pipeline waits between batches, not only the embedder.
            self.yield_to_chat().await;
            let current = match next.take() {
                Some(prepared) => prepared,
                None => {
                    let jobs = self.take_jobs();
                    if jobs.is_empty() {
                        if let Some(task) = writing.take() {
                            let _ = task.await;
                            continue;
                        }
                        self.collect_orphans();
                        // New jobs wake the worker (`queue_file` callers notify); it polls only
                        // while orphans wait for their grace period to end.
                        let orphans = self.inner.store.orphan_count() > 0;
                        tokio::select! {
                            () = self.inner.work.notified() => {}
                            () = tokio::time::sleep(IDLE_POLL), if orphans => {}
                        }
                        continue;
                    }
                    self.prepare_batch(jobs).await
                }
            };
            let following = self.take_jobs();
            let (vectors, prepared) =
                tokio::join!(self.embed_batch(&current), self.prepare_batch(following));
            if !prepared.is_empty() {
                next = Some(prepared);
            }
            // Results are written in queue order: the previous batch first.
            if let Some(task) = writing.take() {
                let _ = task.await;
            }
            writing = Some(
                self.inner
                    .tasks
                    .spawn(self.clone().settle_batch(current, vectors)),
            );
        }
    }

    /// Waits (bounded) while a chat reply is generated.
    async fn yield_to_chat(&self) {
        let embedder = self.inner.ingestor.embedder();
        let started = Instant::now();
        while embedder.paused() && started.elapsed() < MAX_YIELD {
            tokio::time::sleep(YIELD_POLL).await;
        }
    }

    /// The next jobs in queue order whose files the worker does not hold already (marked as
    /// held).
    fn take_jobs(&self) -> Vec<LibraryJob> {
        let jobs = match self.inner.store.library_jobs(BATCH_FILES * 3) {
            Ok(jobs) => jobs,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the library job queue");
                return Vec::new();
            }
        };
        let mut rt = self.runtime();
        let mut taken = Vec::new();
        for job in jobs {
            let Some(key) = job.key() else { continue };
            if rt.in_flight.contains(&key) {
                continue;
            }
            rt.in_flight.insert(key);
            taken.push(job);
            if taken.len() == BATCH_FILES {
                break;
            }
        }
        taken
    }

    fn collect_orphans(&self) {
        if self.inner.store.orphan_count() == 0 || !self.runtime().waiting.is_empty() {
            return;
        }
        let grace = u64::try_from(self.inner.config.orphan_grace.as_millis()).unwrap_or(u64::MAX);
        match self
            .inner
            .store
            .collect_orphans(now_millis().saturating_sub(grace))
        {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::debug!(
                    documents = deleted.len(),
                    "collected orphaned library documents"
                )
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot collect orphaned documents"),
        }
    }

    /// Reads, hashes and extracts a batch's files, a few at a time.
    async fn prepare_batch(&self, jobs: Vec<LibraryJob>) -> Vec<(LibraryJob, Step)> {
        use futures_util::StreamExt;
        futures_util::stream::iter(jobs)
            .map(|job| async move {
                let step = self.prepare(&job).await;
                (job, step)
            })
            .buffered(PREPARE_CONCURRENCY)
            .collect()
            .await
    }

    /// Embeds a prepared batch's new chunks in one call and writes each file's result.
    async fn embed_batch(
        &self,
        prepared: &[(LibraryJob, Step)],
    ) -> Result<Vec<Vec<f32>>, IngestError> {
        // One embedding call for every new chunk of the batch.
        let texts: Vec<String> = prepared
            .iter()
            .filter_map(|(_, step)| match step {
                Step::Embed { prepared, .. } => {
                    Some(prepared.chunks.iter().map(|c| c.text.clone()))
                }
                _ => None,
            })
            .flatten()
            .collect();
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.inner
            .ingestor
            .embedder()
            .embed(texts, crate::embed::Urgency::Ingest)
            .await
            .map_err(IngestError::from)
    }

    /// Writes each file's result of an embedded batch, then makes the batch durable and
    /// announces it.
    async fn settle_batch(
        self,
        prepared: Vec<(LibraryJob, Step)>,
        mut vectors: Result<Vec<Vec<f32>>, IngestError>,
    ) {
        let mut done = Vec::new();
        for (job, step) in prepared {
            let Some(key) = job.key() else {
                continue;
            };
            let outcome_record = job_record(&job);
            let reused = matches!(step, Step::Reuse { .. });
            let settled = match step {
                Step::Gone => self.settle(&key, Some(job.seq), FileOutcome::Removed).await,
                Step::Changed(kind) => {
                    // Modified after it was queued: drop the job and wait for it to settle.
                    if let Err(err) = self.inner.store.drop_library_job(&key, job.seq) {
                        tracing::warn!(error = %err, "cannot drop a stale job");
                    }
                    self.runtime().in_flight.remove(&key);
                    self.observe(key, kind, Instant::now(), false).await;
                    continue;
                }
                Step::NotIndexed(record) => {
                    self.settle(&key, Some(job.seq), FileOutcome::NotIndexed(record))
                        .await
                }
                Step::Reuse {
                    hash,
                    size,
                    mtime_ns,
                } => {
                    let record = FileRecord {
                        size,
                        mtime_ns,
                        ..outcome_record
                    };
                    self.settle(
                        &key,
                        Some(job.seq),
                        FileOutcome::Indexed {
                            record,
                            hash: &hash,
                            new: None,
                        },
                    )
                    .await
                }
                Step::Embed {
                    hash,
                    size,
                    mtime_ns,
                    prepared,
                } => {
                    let n = prepared.chunks.len();
                    let record = FileRecord {
                        size,
                        mtime_ns,
                        ..outcome_record
                    };
                    match &mut vectors {
                        Ok(all) => {
                            let mine: Vec<Vec<f32>> = all.drain(..n.min(all.len())).collect();
                            let document = self.inner.ingestor.new_document(
                                Scope::Library,
                                &key.display(),
                                size,
                                hash.clone(),
                                &prepared,
                            );
                            let new = NewDocument {
                                document: &document,
                                chunks: &prepared.chunks,
                                vectors: &mine,
                            };
                            let outcome = FileOutcome::Indexed {
                                record,
                                hash: &hash,
                                new: Some(new),
                            };
                            let settled = self.settle(&key, Some(job.seq), outcome).await;
                            if settled.as_ref().is_some_and(|s| {
                                s.became_visible
                                    && s.document.as_ref().map(|d| d.id) == Some(document.id)
                            }) {
                                self.inner.ingestor.index().add(
                                    &Scope::Library,
                                    document.id,
                                    &mine,
                                );
                            }
                            settled
                        }
                        Err(err) => {
                            let record = not_indexed(
                                FileState::Failed,
                                size,
                                mtime_ns,
                                err.code(),
                                &err.to_string(),
                            );
                            self.settle(&key, Some(job.seq), FileOutcome::NotIndexed(record))
                                .await
                        }
                    }
                }
            };
            done.push((key, settled, reused));
        }
        // Everything above is durable before anyone hears about it.
        if let Err(err) = self.inner.store.durable().await {
            tracing::error!(error = %err, "library batch not flushed");
        }
        let mut rt_keys = Vec::new();
        for (key, settled, reused) in done {
            rt_keys.push(key.clone());
            if settled.is_some_and(|s| s.applied) {
                self.announce(&key, reused);
            }
        }
        let mut rt = self.runtime();
        for key in rt_keys {
            rt.in_flight.remove(&key);
        }
    }

    /// Reads one job's file and decides what it needs.
    async fn prepare(&self, job: &LibraryJob) -> Step {
        let Some(key) = job.key() else {
            return Step::Gone;
        };
        if job.kind == JobKind::Remove {
            return Step::Gone;
        }
        let Some(root) = self.inner.roots.iter().find(|r| r.name == key.root()) else {
            // The root is no longer configured: its files leave the library.
            return Step::Gone;
        };
        let limit = self.inner.config.max_file_bytes;
        let relative = key.relative().to_vec();
        let inner = self.inner.clone();
        let root_name = root.name.clone();
        let read = tokio::task::spawn_blocking(move || {
            let root = inner.roots.iter().find(|r| r.name == root_name);
            root.map(|r| r.read(&relative, limit))
        })
        .await;
        let (bytes, kind) = match read {
            Ok(Some(Ok(read))) => read,
            Ok(Some(Err(AccessError::NotFound))) | Ok(None) => return Step::Gone,
            Ok(Some(Err(err))) => {
                let state = match err {
                    AccessError::Io(_) => FileState::Failed,
                    _ => FileState::Skipped,
                };
                return Step::NotIndexed(not_indexed(
                    state,
                    job.size,
                    job.mtime_ns,
                    err.code(),
                    &err.to_string(),
                ));
            }
            Err(err) => {
                return Step::NotIndexed(not_indexed(
                    FileState::Failed,
                    job.size,
                    job.mtime_ns,
                    ErrorCode::ReadError,
                    &err.to_string(),
                ));
            }
        };
        let Kind::File { size, mtime_ns } = kind else {
            return Step::Gone;
        };
        if size != job.size || mtime_ns != job.mtime_ns {
            return Step::Changed(kind);
        }
        if bytes.is_empty() {
            return Step::NotIndexed(not_indexed(
                FileState::Skipped,
                size,
                mtime_ns,
                ErrorCode::EmptyFile,
                "the file is empty",
            ));
        }
        let bytes = Arc::new(bytes);
        let hashed = bytes.clone();
        let hash =
            match tokio::task::spawn_blocking(move || blake3::hash(&hashed).to_hex().to_string())
                .await
            {
                Ok(hash) => hash,
                Err(err) => {
                    return Step::NotIndexed(not_indexed(
                        FileState::Failed,
                        size,
                        mtime_ns,
                        ErrorCode::ReadError,
                        &err.to_string(),
                    ))
                }
            };
        match self.inner.store.document_by_hash(&Scope::Library, &hash) {
            Ok(Some(_)) => {
                return Step::Reuse {
                    hash,
                    size,
                    mtime_ns,
                }
            }
            Ok(None) => {}
            Err(err) => {
                return Step::NotIndexed(not_indexed(
                    FileState::Failed,
                    size,
                    mtime_ns,
                    ErrorCode::StoreUnavailable,
                    &err.to_string(),
                ))
            }
        }
        match self.inner.ingestor.prepare(&key.display(), bytes).await {
            Ok(prepared) => Step::Embed {
                hash,
                size,
                mtime_ns,
                prepared,
            },
            Err(err) => {
                let state = match err.code() {
                    code if code.is_skip() => FileState::Skipped,
                    _ => FileState::Failed,
                };
                Step::NotIndexed(not_indexed(
                    state,
                    size,
                    mtime_ns,
                    err.code(),
                    &err.to_string(),
                ))
            }
        }
    }

    /// Writes one file's outcome and mirrors it in the index. `None` when the store failed
    /// (the job stays queued and is retried).
    async fn settle(
        &self,
        key: &FileKey,
        job: Option<u64>,
        outcome: FileOutcome<'_>,
    ) -> Option<crate::store::Settled> {
        let result = self
            .inner
            .store
            .settle_file(key, job, &outcome, now_millis());
        let settled = match result {
            Ok(settled) => settled,
            Err(err) => {
                tracing::error!(error = %err, path = %key.display(), "cannot record a file's result");
                return None;
            }
        };
        tracing::debug!(path = %key.display(), applied = settled.applied, visible = settled.became_visible, orphaned = ?settled.orphaned, "settled");
        let index = self.inner.ingestor.index();
        if let Some(orphan) = settled.orphaned {
            index.remove(&Scope::Library, orphan);
        }
        // A re-linked document (rename, copy) goes back into the index from its stored vectors.
        let reused = matches!(outcome, FileOutcome::Indexed { new: None, .. })
            || matches!(&outcome, FileOutcome::Indexed { new: Some(n), .. } if settled.document.as_ref().map(|d| d.id) != Some(n.document.id));
        if settled.became_visible && reused {
            if let Some(doc) = &settled.document {
                match self.inner.store.document_vectors(doc.id) {
                    Ok(vectors) => index.add(&Scope::Library, doc.id, &vectors),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot re-index a re-linked document")
                    }
                }
            }
        }
        if job.is_none() && settled.applied {
            // Not part of a worker batch: make it durable and announce it here.
            if let Err(err) = self.inner.store.durable().await {
                tracing::error!(error = %err, "file state not flushed");
            }
            self.announce(key, false);
        }
        Some(settled)
    }

    /// Emits the event for a file's stored state.
    fn announce(&self, key: &FileKey, reused: bool) {
        let path = key.display();
        let event = match self.inner.store.file(key) {
            Ok(None) => Event::FileRemoved { path },
            Ok(Some(record)) => match record.state {
                FileState::Indexed => Event::FileIndexed {
                    path,
                    document_id: match record.document_id {
                        Some(id) => id,
                        None => return,
                    },
                    chunks: record.chunks,
                    reused,
                    indexed_at: record.indexed_at.unwrap_or_default(),
                },
                FileState::Failed | FileState::Skipped => Event::FileFailed {
                    path,
                    state: record.state.as_str(),
                    reason: record.reason.unwrap_or(ErrorCode::Internal),
                    message: record.message.unwrap_or_default(),
                },
                FileState::Queued | FileState::Indexing => return,
            },
            Err(_) => return,
        };
        self.inner.events.emit(event);
    }
}

/// What a queued file needs, decided after reading it.
enum Step {
    Gone,
    /// Changed since it was queued.
    Changed(Kind),
    NotIndexed(FileRecord),
    /// The same bytes are already a library document.
    Reuse {
        hash: String,
        size: u64,
        mtime_ns: i128,
    },
    Embed {
        hash: String,
        size: u64,
        mtime_ns: i128,
        prepared: Prepared,
    },
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
        FileState::Indexed | FileState::Skipped => false,
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
