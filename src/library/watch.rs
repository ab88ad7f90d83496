//! Finding changes: the `notify` watcher, the reconcile scan (at start, after a watcher error or
//! overflow, every `rescan` interval) and the mapping of a changed path to its root and key.

use std::path::Path;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::access::{Kind, RootProblem, MAX_DEPTH};
use super::*;
use crate::store::{FileKey, JobKind};

/// How often waiting files are checked for stability.
const STABILITY_TICK: Duration = Duration::from_millis(100);

impl Library {
    pub(super) fn start_watcher(
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
        // Each root's parent, not recursively: a root deleted and made again (or moved back)
        // is seen at once, not at the next periodic scan. Not when the parent lies inside a
        // root, whose recursive watch already covers it (watching it again would replace it).
        for root in &self.inner.roots {
            let Some(parent) = root.path.parent() else {
                continue;
            };
            if self.inner.roots.iter().any(|r| parent.starts_with(&r.path)) {
                continue;
            }
            if let Err(err) = watcher.watch(parent, RecursiveMode::NonRecursive) {
                tracing::debug!(root = %root.name, error = %err, "cannot watch the folder's parent; a recreated folder is found by the periodic scan");
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

    pub(super) async fn scanner(
        self,
        mut rx: mpsc::UnboundedReceiver<Watched>,
        mut watcher: Option<notify::RecommendedWatcher>,
        shutdown: CancellationToken,
    ) {
        self.full_scan(&mut watcher).await;
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
                        self.full_scan(&mut watcher).await;
                    }
                    None => {}
                },
                // Ticks only while files wait to become stable or gone: an idle daemon sleeps.
                _ = tick.tick(), if self.ticking() => {
                    self.check_waiting().await;
                    self.check_gone();
                }
                () = tokio::time::sleep_until(next_scan) => {
                    self.full_scan(&mut watcher).await;
                    next_scan = tokio::time::Instant::now() + self.inner.config.rescan;
                }
                () = self.inner.rescan.notified() => self.full_scan(&mut watcher).await,
            }
        }
    }

    async fn full_scan(&self, watcher: &mut Option<notify::RecommendedWatcher>) {
        let started = Instant::now();
        let mut files = 0;
        for index in 0..self.inner.roots.len() {
            if self.check_root(index, watcher) {
                files += self.scan(index, Vec::new()).await;
            }
        }
        let mut rt = self.runtime();
        rt.scans += 1;
        rt.last_scan = Some((started.elapsed(), files));
        tracing::debug!(files, ms = started.elapsed().as_millis(), "reconcile scan");
    }

    /// Whether root `index` is the folder at its path, so it may be scanned. A missing or moved
    /// root is recorded (reported by `status` and as a `watch_root` event) and not scanned: its
    /// files keep their records. A replaced one is re-opened and watched anew.
    fn check_root(&self, index: usize, watcher: &mut Option<notify::RecommendedWatcher>) -> bool {
        let root = &self.inner.roots[index];
        let problem = match root.verify() {
            Ok(()) => None,
            Err(RootProblem::Replaced) => match root.reopen() {
                Ok(()) => Some(RootProblem::Replaced),
                // Gone again between the two looks: the next scan sees what it is.
                Err(_) => return false,
            },
            Err(problem) => Some(problem),
        };
        let before = {
            let mut rt = self.runtime();
            let before = match problem {
                Some(p @ (RootProblem::Missing | RootProblem::Moved)) => {
                    rt.root_problems.insert(index, p)
                }
                _ => rt.root_problems.remove(&index),
            };
            if before != rt.root_problems.get(&index).copied() {
                rt.unavailable.remove(&index);
            }
            before
        };
        let event = |code: Option<crate::error_code::ErrorCode>, message: &str| {
            self.inner.events.emit(crate::events::Event::WatchRoot {
                root: root.name.clone(),
                code,
                message: message.to_string(),
            });
        };
        match problem {
            Some(p @ (RootProblem::Missing | RootProblem::Moved)) => {
                if before != Some(p) {
                    tracing::warn!(root = %root.name, code = %p.code(), "{}", p.message());
                    self.hide_documents(index);
                    event(Some(p.code()), p.message());
                }
                false
            }
            Some(RootProblem::Replaced) => {
                tracing::warn!(root = %root.name, "{}", RootProblem::Replaced.message());
                // Its files are read again from the new folder: what was kept is searchable
                // again (the scan right after this removes what the new folder lacks).
                self.inner.ingestor.index().unhide(&root.name);
                event(
                    Some(RootProblem::Replaced.code()),
                    RootProblem::Replaced.message(),
                );
                self.rewatch(index, watcher);
                true
            }
            None => {
                if before.is_some() {
                    tracing::info!(root = %root.name, "the watched folder is back");
                    self.inner.ingestor.index().unhide(&root.name);
                    event(None, "the watched folder is back at its path");
                    self.rewatch(index, watcher);
                }
                true
            }
        }
    }

    /// Leaves the documents of a missing or moved root's files out of search (their records and
    /// documents are kept for when the folder is back). A document another folder's file or an
    /// upload also refers to stays searchable.
    fn hide_documents(&self, index: usize) {
        let store = &self.inner.store;
        let unavailable: std::collections::HashSet<String> = self
            .runtime()
            .root_problems
            .keys()
            .map(|&i| self.inner.roots[i].name.clone())
            .collect();
        let name = &self.inner.roots[index].name;
        let hidden = (|| -> Result<std::collections::HashSet<_>, crate::store::StoreError> {
            let mut hidden = std::collections::HashSet::new();
            for (_, record) in store.files_with_prefix(&FileKey::prefix(name, b""))? {
                let Some(doc) = record.document_id else {
                    continue;
                };
                if hidden.contains(&doc) || store.document_uploaded(doc)? {
                    continue;
                }
                if store
                    .document_files(doc)?
                    .iter()
                    .all(|k| unavailable.contains(k.root()))
                {
                    hidden.insert(doc);
                }
            }
            Ok(hidden)
        })();
        match hidden {
            Ok(hidden) => {
                tracing::info!(root = %name, documents = hidden.len(), "documents of an unavailable folder left out of search");
                self.inner.ingestor.index().hide(name, hidden);
            }
            Err(err) => {
                tracing::warn!(root = %name, error = %err, "cannot list the documents of an unavailable folder")
            }
        }
    }

    /// Watches root `index` again (its folder was replaced or is back).
    fn rewatch(&self, index: usize, watcher: &mut Option<notify::RecommendedWatcher>) {
        use notify::{RecursiveMode, Watcher};
        let Some(watcher) = watcher else {
            return;
        };
        let root = &self.inner.roots[index];
        // The old watch may be gone with its folder; removing it is best effort.
        let _ = watcher.unwatch(&root.path);
        if let Err(err) = watcher.watch(&root.path, RecursiveMode::Recursive) {
            self.watcher_failed(format!("cannot watch {}: {err}", root.name));
        }
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
    /// Ends the parsing of the file at `relative`, or of files below it when it is no longer a
    /// folder (the watcher saw them change or go): their worker jobs are killed and the worker
    /// re-reads what is there now. A folder that is still there (an event about the folder
    /// itself) stops nothing, or a burst of new files would keep restarting the ones in it.
    fn stop_extracting(&self, root: usize, relative: &[u8]) {
        if relative.is_empty() || self.runtime().extracting.is_empty() {
            return;
        }
        let now = self.inner.roots[root].stat(relative);
        let folder_gone = !matches!(now, Ok(Kind::Dir));
        let name = &self.inner.roots[root].name;
        let rt = self.runtime();
        for (key, job) in &rt.extracting {
            let r = key.relative();
            // The same file with the same size and time: an event that changed nothing read.
            let same = matches!(now, Ok(Kind::File { size, mtime_ns })
                if size == job.size && mtime_ns == job.mtime_ns);
            let below = (r == relative && !same)
                || (folder_gone && r.starts_with(relative) && r.get(relative.len()) == Some(&b'/'));
            if key.root() == name.as_str() && below {
                tracing::debug!(file = %key.display(), "file changed while parsed: job stopped");
                job.cancel.cancel();
            }
        }
    }

    async fn path_changed(&self, path: &Path) {
        let Some((root, relative)) = self.locate(path) else {
            return;
        };
        tracing::trace!(path = %path.display(), "watcher event");
        self.stop_extracting(root, &relative);
        // Events of a folder that is gone, moved or replaced are not acted on (deleting a
        // folder reports each file deleted, a moved one reports its new contents under the old
        // path); the full scan sorts out what the root is now.
        if self.inner.roots[root].verify().is_err() {
            self.inner.rescan.notify_one();
            return;
        }
        if relative.is_empty() {
            self.scan(root, Vec::new()).await;
            return;
        }
        // Below the scan's depth limit: the folder at the limit is listed as `too_deep`.
        if relative.split(|&b| b == b'/').count() > MAX_DEPTH {
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
                // Gone (or no longer reachable without a link): removed once it stays gone.
                self.runtime()
                    .gone
                    .entry((root, relative))
                    .or_insert_with(Instant::now);
            }
        }
    }

    fn ticking(&self) -> bool {
        let rt = self.runtime();
        !rt.waiting.is_empty() || !rt.gone.is_empty()
    }

    /// Removes what stayed gone for the stable interval, if its root is still the folder at
    /// its path (otherwise the root check keeps every record, and a rescan sorts it out).
    fn check_gone(&self) {
        let stable = self.inner.config.stable;
        let due: Vec<(usize, Vec<u8>)> = {
            let mut rt = self.runtime();
            let due: Vec<_> = rt
                .gone
                .iter()
                .filter(|(_, since)| since.elapsed() >= stable)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &due {
                rt.gone.remove(k);
            }
            due
        };
        for (root, relative) in due {
            if self.inner.roots[root].verify().is_err() {
                self.inner.rescan.notify_one();
                continue;
            }
            if self.inner.roots[root].stat(&relative).is_err() {
                self.remove_below(root, &relative);
            }
            // Back again: its own watcher event already observed it.
        }
    }

    /// Queues the removal of the file at `relative` and of every file below it.
    fn remove_below(&self, root: usize, relative: &[u8]) {
        let name = &self.inner.roots[root].name;
        let mut gone = vec![FileKey::new(name, relative)];
        match self
            .inner
            .store
            .files_with_prefix(&FileKey::prefix(name, relative))
        {
            Ok(below) => gone.extend(below.into_iter().map(|(k, _)| k)),
            Err(err) => tracing::warn!(error = %err, "cannot list files below a removed path"),
        }
        for key in gone {
            self.runtime().waiting.remove(&key);
            self.queue(&key, JobKind::Remove, 0, 0);
        }
    }

    /// The root a watcher path belongs to and the path below it.
    fn locate(&self, path: &Path) -> Option<(usize, Vec<u8>)> {
        self.inner.roots.iter().enumerate().find_map(|(i, root)| {
            let relative = path.strip_prefix(&root.path).ok()?;
            Some((i, super::access::key_of(relative)?))
        })
    }
}
