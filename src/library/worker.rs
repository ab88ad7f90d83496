//! Doing the work: the worker takes queued jobs in batches (read + hash + reuse or extract,
//! one embedding call per batch, one transaction per file), yields to chat replies, and collects
//! orphaned documents after their grace period.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::access::{AccessError, Kind};
use super::*;
use crate::error_code::ErrorCode;
use crate::events::Event;
use crate::ingest::{IngestError, Prepared};
use crate::store::{
    now_millis, FileKey, FileOutcome, FileRecord, FileState, JobKind, LibraryJob, NewDocument,
    Scope,
};

/// Files taken from the queue per batch: enough that their chunks fill embedder batches, few
/// enough that a batch's memory (file bytes + chunks) stays small.
const BATCH_FILES: usize = 16;
/// Files read and extracted at the same time within a batch.
const PREPARE_CONCURRENCY: usize = 2;
/// Longest the worker waits for chat replies between two batches (a daemon that chats
/// without pause still makes ingest progress).
const MAX_YIELD: Duration = Duration::from_secs(30);
/// How often a waiting worker checks whether the reply is done.
const YIELD_POLL: Duration = Duration::from_millis(20);
/// How often an idle worker looks for orphans whose grace period ended (only while there are
/// any; new jobs wake it at once).
const IDLE_POLL: Duration = Duration::from_secs(1);

impl Library {
    pub(super) async fn worker(self, shutdown: CancellationToken) {
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
                // Reading and extracting run next to the embedder's batch: they wait for a
                // reply too, file by file (it is nice-0 CPU on the runtime's threads).
                self.yield_to_chat().await;
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
                Step::RootUnavailable => {
                    if let Err(err) = self.inner.store.drop_library_job(&key, job.seq) {
                        tracing::warn!(error = %err, "cannot drop a job of an unavailable root");
                    }
                    self.runtime().in_flight.remove(&key);
                    continue;
                }
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
        let Some(root) = self.inner.roots.iter().find(|r| r.name == key.root()) else {
            // The root is no longer configured: its files leave the library.
            return Step::Gone;
        };
        // Neither read through a stale descriptor nor removed because a deleted or moved
        // folder shows nothing.
        if root.verify().is_err() {
            self.inner.rescan.notify_one();
            return Step::RootUnavailable;
        }
        if job.kind == JobKind::Remove {
            return Step::Gone;
        }
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
        let cancel = CancellationToken::new();
        self.runtime().extracting.insert(
            key.clone(),
            Extracting {
                size,
                mtime_ns,
                cancel: cancel.clone(),
            },
        );
        let display = key.display().to_string();
        let prepared = tokio::select! {
            prepared = self.inner.ingestor.prepare(&display, bytes) => Some(prepared),
            // Dropping `prepare` kills the worker's job at once.
            () = cancel.cancelled() => None,
        };
        self.runtime().extracting.remove(&key);
        let Some(prepared) = prepared else {
            // The file changed or went while it was parsed: a changed file waits to be stable
            // again; a gone one keeps its record until the watcher's removal (which first
            // makes sure its whole folder is not what went).
            return match root.stat(key.relative()) {
                Ok(kind @ Kind::File { .. }) => Step::Changed(kind),
                _ => Step::RootUnavailable,
            };
        };
        match prepared {
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
    pub(super) async fn settle(
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
                FileState::Queued | FileState::Indexing | FileState::Unavailable => return,
            },
            Err(_) => return,
        };
        self.inner.events.emit(event);
    }
}

/// What a queued file needs, decided after reading it.
enum Step {
    Gone,
    /// Its root is not the folder at the root's path (deleted, moved, replaced), or the file
    /// went while it was parsed: the job is dropped and the record kept as it is; the scan
    /// that sorts the root out, or the watcher's removal, queues again.
    RootUnavailable,
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
