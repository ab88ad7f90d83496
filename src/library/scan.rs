//! The reconcile scan: walks a watched tree and compares it with the store by path, size and
//! mtime. Only differences are reported; nothing is read or hashed here, so a scan of an
//! unchanged folder costs one `readdir` + `lstat` per entry and one ordered store read.
//!
//! A folder that cannot be listed (permissions, a race) is reported as unknown, never as empty:
//! its files are not removed because a scan could not see them.

use std::collections::HashMap;

use super::access::{AccessError, Kind, Root, MAX_DEPTH};
use super::needs_work;
use super::rules::Rules;
use crate::error_code::ErrorCode;
use crate::store::{FileKey, FileRecord, FileState, Store};

/// What differs between a tree and the store.
#[derive(Debug, Default)]
pub(super) struct Report {
    /// Regular files seen.
    pub files: usize,
    /// Entries that are new or differ from their record (files, links, special files).
    pub changed: Vec<(FileKey, Kind)>,
    /// Records with no entry any more.
    pub gone: Vec<FileKey>,
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
    path.extend_from_slice(dir);
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

/// Is the record an up-to-date account of this entry?
fn unchanged(record: &FileRecord, kind: &Kind) -> bool {
    match kind {
        Kind::File { size, mtime_ns } => {
            record.size == *size && record.mtime_ns == *mtime_ns && !needs_work(record)
        }
        Kind::Symlink => {
            record.state == FileState::Skipped && record.reason == Some(ErrorCode::Symlink)
        }
        Kind::Special => {
            record.state == FileState::Skipped && record.reason == Some(ErrorCode::NotRegularFile)
        }
        Kind::Hardlink => {
            record.state == FileState::Skipped && record.reason == Some(ErrorCode::Hardlink)
        }
        Kind::TooDeep => {
            record.state == FileState::Skipped && record.reason == Some(ErrorCode::TooDeep)
        }
        Kind::Dir => false,
    }
}

/// Reconciles the tree below `dir` (empty: the whole root).
pub(super) fn reconcile(
    root: &Root,
    rules: &Rules,
    store: &Store,
    dir: &[u8],
) -> Result<Report, String> {
    let mut known: HashMap<Vec<u8>, FileRecord> = store
        .files_with_prefix(&FileKey::prefix(&root.name, dir))
        .map_err(|err| err.to_string())?
        .into_iter()
        .map(|(key, record)| (key.relative().to_vec(), record))
        .collect();
    let mut report = Report::default();
    let mut unknown: Vec<Vec<u8>> = Vec::new();
    // A folder the watcher names is walked from its own depth, so the limit holds for paths.
    let start_depth = if dir.is_empty() {
        0
    } else {
        dir.split(|&b| b == b'/').count()
    };
    if start_depth >= MAX_DEPTH {
        return Ok(Report::default());
    }
    let mut stack = vec![(dir.to_vec(), start_depth)];
    while let Some((current, depth)) = stack.pop() {
        let entries = match root.list(&current) {
            Ok(entries) => entries,
            Err(AccessError::NotFound) => continue,
            Err(err) => {
                tracing::warn!(root = %root.name, dir = %String::from_utf8_lossy(&current), error = %err, "cannot list a folder; its files are kept as they are");
                unknown.push(current);
                continue;
            }
        };
        for (name, kind) in entries {
            let relative = join(&current, &name);
            if rules.ignored(&relative, &name, kind == Kind::Dir) {
                continue;
            }
            match kind {
                Kind::Dir if depth + 1 < MAX_DEPTH => stack.push((relative, depth + 1)),
                Kind::Dir => {
                    // Listed (skipped, `too_deep`) so the user sees it; what is below keeps its
                    // records (unknown, never empty).
                    let record = known.remove(&relative);
                    if !record.is_some_and(|r| unchanged(&r, &Kind::TooDeep)) {
                        report
                            .changed
                            .push((FileKey::new(&root.name, &relative), Kind::TooDeep));
                    }
                    unknown.push(relative);
                }
                kind => {
                    if matches!(kind, Kind::File { .. }) {
                        report.files += 1;
                    }
                    let record = known.remove(&relative);
                    if !record.is_some_and(|r| unchanged(&r, &kind)) {
                        report
                            .changed
                            .push((FileKey::new(&root.name, &relative), kind));
                    }
                }
            }
        }
    }
    for relative in known.into_keys() {
        let hidden = unknown.iter().any(|u| {
            relative.starts_with(u) && (relative.len() == u.len() || relative[u.len()] == b'/')
        });
        if !hidden {
            report.gone.push(FileKey::new(&root.name, &relative));
        }
    }
    Ok(report)
}
