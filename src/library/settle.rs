//! Waiting for stability: an observed file waits until its size and mtime stayed the same for
//! the `stable` interval, then is queued as a persistent job (or recorded as skipped).

use std::time::Instant;

use super::access::{Kind, MAX_DEPTH};
use super::*;
use crate::error_code::ErrorCode;
use crate::events::Event;
use crate::store::{now_millis, FileKey, FileOutcome, FileState, JobKind};

impl Library {
    /// A file that changed: start (or restart) its stability wait. `from_scan` files whose mtime
    /// is already older than the interval count as stable at once (nothing wrote them lately).
    pub(super) async fn observe(&self, key: FileKey, kind: Kind, now: Instant, from_scan: bool) {
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
            Kind::Hardlink => {
                self.skip(
                    &key,
                    0,
                    0,
                    ErrorCode::Hardlink,
                    "a file with more than one hard link may live outside the folder; set watch_follow_hardlinks to read it",
                )
                .await
            }
            Kind::TooDeep => {
                self.skip(
                    &key,
                    0,
                    0,
                    ErrorCode::TooDeep,
                    &format!("folders nested deeper than {MAX_DEPTH} levels are not scanned"),
                )
                .await
            }
            Kind::Dir => {}
        }
    }

    /// Files whose wait is over: still unchanged → queue; changed → wait again; gone → remove.
    pub(super) async fn check_waiting(&self) {
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
    pub(super) fn queue(&self, key: &FileKey, kind: JobKind, size: u64, mtime_ns: i128) {
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
}
