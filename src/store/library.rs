//! The drop-folder library: one record per watched file, the persistent ingest job queue, and
//! which files share which document.
//!
//! ```text
//! files            root ‖ 0 ‖ relative path bytes → FileRecord
//! library_jobs     seq BE → LibraryJob
//! doc_files        doc_id → [file key, ...]   (who refers to a library document)
//! library_orphans  doc_id → Millis BE          (no file refers to it any more, since ...)
//! ```
//!
//! Invariants, each kept by a single sled transaction:
//! - A file's job is written together with its `queued` state, and removed in the same
//!   transaction that writes its result (document, chunks, vectors, file state). A `kill -9`
//!   leaves either the job (redone at start) or the result, never both and never half.
//! - A document is shared by every file with the same bytes (`doc_files`); when the last file
//!   lets go, the document becomes an orphan and is removed from search, but its vectors stay
//!   for a grace period: a rename processed as "delete old path" before "add new path" finds the
//!   content again and re-links it without embedding. [`Store::collect_orphans`] deletes orphans
//!   whose grace has passed, chunks and vectors with them, in one transaction.
//! - Paths are raw bytes (Unix file names need not be UTF-8); display strings are lossy copies.

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use super::codec::{decode, encode, get, tx_get, unwrap_tx, vector_bytes};
use super::counts::{self, Counted};
use super::documents::{chunk_key, scoped};
use super::types::{ChunkRecord, Document, DocumentId, Millis, Scope};
use super::{Store, StoreError, TxResult};
use crate::error_code::ErrorCode;

/// A watched file's key: its root (as configured, canonical) and its path below the root.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey(Vec<u8>);

/// Stands for "uploaded into the library" in `doc_files`: pins a document that no watched file
/// may take away. No real key is empty after the root.
const UPLOAD_REF: &[u8] = b"\0upload";

impl FileKey {
    pub fn new(root: &str, relative: &[u8]) -> FileKey {
        let mut key = Vec::with_capacity(root.len() + 1 + relative.len());
        key.extend_from_slice(root.as_bytes());
        key.push(0);
        key.extend_from_slice(relative);
        FileKey(key)
    }

    /// Every key of files under `root` (and below `relative_dir`, when not empty).
    pub fn prefix(root: &str, relative_dir: &[u8]) -> Vec<u8> {
        let mut key = FileKey::new(root, relative_dir).0;
        if !relative_dir.is_empty() {
            key.push(b'/');
        }
        key
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Option<FileKey> {
        bytes.contains(&0).then_some(FileKey(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn root(&self) -> &str {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        std::str::from_utf8(&self.0[..end]).unwrap_or("")
    }

    pub fn relative(&self) -> &[u8] {
        match self.0.iter().position(|&b| b == 0) {
            Some(i) => &self.0[i + 1..],
            None => &[],
        }
    }

    /// `root/relative` (on Windows `root\relative`: keys always use `/`, paths shown to people
    /// use the platform's separator), lossily decoded for display and for the API.
    pub fn display(&self) -> String {
        let sep = std::path::MAIN_SEPARATOR;
        let relative = String::from_utf8_lossy(self.relative());
        let relative = if sep == '/' {
            relative.into_owned()
        } else {
            relative.replace('/', &sep.to_string())
        };
        format!("{}{sep}{relative}", self.root().trim_end_matches(sep))
    }
}

/// Where a watched file stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    Queued,
    /// Only ever reported, never stored: the worker holds the file right now.
    Indexing,
    Indexed,
    Failed,
    Skipped,
    /// Only ever reported, never stored: the file's watched folder is missing or moved away;
    /// its record is kept as it was, and its document is not searchable until the folder is
    /// back.
    Unavailable,
}

impl FileState {
    pub const ALL: [FileState; 6] = [
        FileState::Queued,
        FileState::Indexing,
        FileState::Indexed,
        FileState::Failed,
        FileState::Skipped,
        FileState::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Queued => "queued",
            FileState::Indexing => "indexing",
            FileState::Indexed => "indexed",
            FileState::Failed => "failed",
            FileState::Skipped => "skipped",
            FileState::Unavailable => "unavailable",
        }
    }

    pub fn parse(text: &str) -> Option<FileState> {
        FileState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// What the store knows about one watched file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub size: u64,
    pub mtime_ns: i128,
    pub state: FileState,
    /// Stable code for `failed`/`skipped` (e.g. `symlink`, `too_large`, `corrupt_document`).
    pub reason: Option<ErrorCode>,
    pub message: Option<String>,
    pub content_hash: Option<String>,
    pub document_id: Option<DocumentId>,
    pub chunks: u32,
    pub indexed_at: Option<Millis>,
    pub updated_at: Millis,
    /// The queued job for this file, if any.
    pub job: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Read the file and make its current content searchable.
    Upsert,
    /// The file is gone: drop it from the library.
    Remove,
}

/// One persistent unit of library work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LibraryJob {
    pub seq: u64,
    pub kind: JobKind,
    pub file: Vec<u8>,
    /// The size and mtime the file had when it was found stable; the worker re-checks them at
    /// open time.
    pub size: u64,
    pub mtime_ns: i128,
}

impl LibraryJob {
    pub fn key(&self) -> Option<FileKey> {
        FileKey::from_bytes(self.file.clone())
    }
}

/// The result of working on one file.
pub enum FileOutcome<'a> {
    /// Its content is searchable: either an existing library document with `hash` (no vectors
    /// needed) or a new one.
    Indexed {
        record: FileRecord,
        hash: &'a str,
        new: Option<NewDocument<'a>>,
    },
    /// Failed or skipped (the record says which and why); any previous content is dropped.
    NotIndexed(FileRecord),
    /// The file is gone.
    Removed,
}

pub struct NewDocument<'a> {
    pub document: &'a Document,
    pub chunks: &'a [ChunkRecord],
    pub vectors: &'a [Vec<f32>],
}

/// What [`Store::settle_file`] changed, for the caller to mirror in the index.
#[derive(Debug, Default)]
pub struct Settled {
    /// False when a newer job for the file replaced this one: nothing was written.
    pub applied: bool,
    /// The document the file now refers to.
    pub document: Option<Document>,
    /// The document became searchable (new, or re-linked from an orphan): add it to the index.
    pub became_visible: bool,
    /// This document lost its last file: take it out of the index.
    pub orphaned: Option<DocumentId>,
}

/// Everything a library transaction touches, in one place.
pub(super) struct Trees<'a> {
    documents: &'a TransactionalTree,
    by_scope: &'a TransactionalTree,
    by_hash: &'a TransactionalTree,
    chunks: &'a TransactionalTree,
    vectors: &'a TransactionalTree,
    files: &'a TransactionalTree,
    doc_files: &'a TransactionalTree,
    jobs: &'a TransactionalTree,
    orphans: &'a TransactionalTree,
    counts: &'a TransactionalTree,
}

fn abort(err: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(err)
}

impl Trees<'_> {
    /// Writes a file's record (`None`: removes it); `old` is the record the transaction read.
    /// Keeps the per-state file counters exact.
    fn put_file(
        &self,
        key: &[u8],
        old: Option<&FileRecord>,
        new: Option<&FileRecord>,
    ) -> TxResult<()> {
        match new {
            Some(record) => {
                self.files.insert(key, encode(record))?;
            }
            None => {
                self.files.remove(key)?;
            }
        }
        counts::file_changed(self.counts, old.map(|r| r.state), new.map(|r| r.state))
    }

    /// Queues a job (its `seq` is new), counted.
    fn put_job(&self, job: &LibraryJob) -> TxResult<()> {
        let previous = self.jobs.insert(&job.seq.to_be_bytes()[..], encode(job))?;
        counts::jobs_changed(self.counts, counts::added(&previous))
    }

    /// Removes a job if it is still there, counted.
    fn remove_job(&self, seq: u64) -> TxResult<()> {
        let previous = self.jobs.remove(&seq.to_be_bytes()[..])?;
        counts::jobs_changed(self.counts, counts::removed(&previous))
    }

    fn refs(&self, doc: DocumentId) -> TxResult<Vec<Vec<u8>>> {
        Ok(tx_get::<Vec<Vec<u8>>>(self.doc_files, doc.as_bytes())?.unwrap_or_default())
    }

    /// Adds `key` to the document's referrers; true when it was an orphan (now visible again).
    fn link(&self, doc: DocumentId, key: &[u8]) -> TxResult<bool> {
        let mut refs = self.refs(doc)?;
        if !refs.iter().any(|r| r == key) {
            refs.push(key.to_vec());
            self.doc_files.insert(&doc.as_bytes()[..], encode(&refs))?;
        }
        Ok(self.orphans.remove(&doc.as_bytes()[..])?.is_some())
    }

    /// Removes `key` from the document's referrers; true when none is left (now an orphan).
    fn unlink(&self, doc: DocumentId, key: &[u8], now: Millis) -> TxResult<bool> {
        let mut refs = self.refs(doc)?;
        refs.retain(|r| r != key);
        if refs.is_empty() {
            self.doc_files.remove(&doc.as_bytes()[..])?;
            self.orphans
                .insert(&doc.as_bytes()[..], &now.to_be_bytes()[..])?;
            Ok(true)
        } else {
            self.doc_files.insert(&doc.as_bytes()[..], encode(&refs))?;
            // A move seen as "new path added" before "old path gone": the document still bears
            // the old name; it is named after a file that has it now.
            let gone = FileKey::from_bytes(key.to_vec()).map(|k| k.display());
            if let Some(mut document) = tx_get::<Document>(self.documents, doc.as_bytes())? {
                let remaining = refs.first().cloned().and_then(FileKey::from_bytes);
                if let (Some(gone), Some(remaining)) = (gone, remaining) {
                    if document.filename == gone {
                        document.filename = remaining.display();
                        self.documents
                            .insert(&doc.as_bytes()[..], encode(&document))?;
                    }
                }
            }
            Ok(false)
        }
    }

    /// The document with these bytes in `scope`, if any.
    pub(super) fn doc_by_hash(&self, scope: &Scope, hash: &str) -> TxResult<Option<Document>> {
        match self.by_hash.get(scoped(scope, hash.as_bytes()))? {
            Some(id) => {
                let id = DocumentId::from_slice(&id)
                    .ok_or_else(|| abort(StoreError::Corrupt("doc_by_hash".into())))?;
                tx_get(self.documents, id.as_bytes())
            }
            None => Ok(None),
        }
    }

    pub(super) fn insert_document(&self, new: &NewDocument<'_>) -> TxResult<()> {
        let doc = new.document;
        let mut chunks = 0;
        for (n, (chunk, vector)) in new.chunks.iter().zip(new.vectors).enumerate() {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            chunks += counts::added(&self.chunks.insert(chunk_key(doc.id, n), encode(chunk))?);
            self.vectors
                .insert(chunk_key(doc.id, n), vector_bytes(vector))?;
        }
        counts::add(self.counts, Counted::Chunks, chunks)?;
        let previous = self.documents.insert(&doc.id.as_bytes()[..], encode(doc))?;
        counts::add(self.counts, Counted::Documents, counts::added(&previous))?;
        self.by_scope
            .insert(scoped(&doc.scope, doc.id.as_bytes()), &[][..])?;
        self.by_hash.insert(
            scoped(&doc.scope, doc.content_hash.as_bytes()),
            &doc.id.as_bytes()[..],
        )?;
        Ok(())
    }

    pub(super) fn remove_document(&self, doc: &Document) -> TxResult<()> {
        let mut chunks = 0;
        for n in 0..doc.chunk_count {
            chunks += counts::removed(&self.chunks.remove(chunk_key(doc.id, n))?);
            self.vectors.remove(chunk_key(doc.id, n))?;
        }
        counts::add(self.counts, Counted::Chunks, chunks)?;
        let previous = self.documents.remove(&doc.id.as_bytes()[..])?;
        counts::add(self.counts, Counted::Documents, counts::removed(&previous))?;
        self.by_scope
            .remove(scoped(&doc.scope, doc.id.as_bytes()))?;
        self.by_hash
            .remove(scoped(&doc.scope, doc.content_hash.as_bytes()))?;
        self.doc_files.remove(&doc.id.as_bytes()[..])?;
        self.orphans.remove(&doc.id.as_bytes()[..])?;
        Ok(())
    }
}

impl Store {
    /// Runs `f` in one transaction over every tree the library touches.
    pub(super) fn library_tx<T>(
        &self,
        f: impl Fn(&Trees<'_>) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        let i = &*self.inner;
        let res = (
            &i.documents,
            &i.docs_by_scope,
            &i.doc_by_hash,
            &i.chunks,
            &i.vectors,
            &i.files,
            &i.doc_files,
            &i.library_jobs,
            &i.library_orphans,
            &i.counts,
        )
            .transaction(
                |(
                    documents,
                    by_scope,
                    by_hash,
                    chunks,
                    vectors,
                    files,
                    doc_files,
                    jobs,
                    orphans,
                    counts,
                )| {
                    f(&Trees {
                        documents,
                        by_scope,
                        by_hash,
                        chunks,
                        vectors,
                        files,
                        doc_files,
                        jobs,
                        orphans,
                        counts,
                    })
                },
            );
        unwrap_tx(res)
    }

    pub fn file(&self, key: &FileKey) -> Result<Option<FileRecord>, StoreError> {
        get(&self.inner.files, key.as_bytes())
    }

    /// Files whose key starts with `prefix` (see [`FileKey::prefix`]), in key order.
    pub fn files_with_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<(FileKey, FileRecord)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.files.scan_prefix(prefix) {
            let (key, value) = entry?;
            let key = FileKey::from_bytes(key.to_vec())
                .ok_or_else(|| StoreError::Corrupt("file key".into()))?;
            out.push((key, decode(&value)?));
        }
        Ok(out)
    }

    /// Up to `limit` files after `after` (exclusive) in key order, optionally of one state
    /// (`Indexing` is not stored; the caller overlays it).
    pub fn files_page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        state: Option<FileState>,
    ) -> Result<Vec<(FileKey, FileRecord)>, StoreError> {
        let range = match after {
            Some(after) => self
                .inner
                .files
                .range::<&[u8], _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => self.inner.files.iter(),
        };
        let mut out = Vec::new();
        for entry in range {
            let (key, value) = entry?;
            let record: FileRecord = decode(&value)?;
            if state.is_some_and(|s| s != record.state) {
                continue;
            }
            let key = FileKey::from_bytes(key.to_vec())
                .ok_or_else(|| StoreError::Corrupt("file key".into()))?;
            out.push((key, record));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Number of files in each stored state.
    pub fn file_counts(&self) -> Result<Vec<(FileState, usize)>, StoreError> {
        counts::read_files(&self.inner.counts)
    }

    /// Queues work on a file: writes the job and the file's new state in one transaction,
    /// replacing any job queued for it before. Returns the job (`None`: removing a file the
    /// store does not know is nothing to do).
    pub fn queue_file(
        &self,
        key: &FileKey,
        kind: JobKind,
        size: u64,
        mtime_ns: i128,
        now: Millis,
    ) -> Result<Option<LibraryJob>, StoreError> {
        let seq = self.inner.db.generate_id()?;
        let job = LibraryJob {
            seq,
            kind,
            file: key.as_bytes().to_vec(),
            size,
            mtime_ns,
        };
        self.library_tx(|t| {
            let old: Option<FileRecord> = tx_get(t.files, key.as_bytes())?;
            if let Some(previous) = old.as_ref().and_then(|r| r.job) {
                t.remove_job(previous)?;
            }
            let record = match (kind, old.clone()) {
                (JobKind::Upsert, old) => FileRecord {
                    size,
                    mtime_ns,
                    state: FileState::Queued,
                    reason: None,
                    message: None,
                    updated_at: now,
                    job: Some(seq),
                    ..old.unwrap_or(FileRecord {
                        size,
                        mtime_ns,
                        state: FileState::Queued,
                        reason: None,
                        message: None,
                        content_hash: None,
                        document_id: None,
                        chunks: 0,
                        indexed_at: None,
                        updated_at: now,
                        job: None,
                    })
                },
                // A removal keeps showing the last known state until it is done.
                (JobKind::Remove, Some(old)) => FileRecord {
                    job: Some(seq),
                    ..old
                },
                (JobKind::Remove, None) => return Ok(None),
            };
            t.put_file(key.as_bytes(), old.as_ref(), Some(&record))?;
            t.put_job(&job)?;
            Ok(Some(job.clone()))
        })
    }

    /// Queued jobs in order, oldest first.
    pub fn library_jobs(&self, limit: usize) -> Result<Vec<LibraryJob>, StoreError> {
        self.inner
            .library_jobs
            .iter()
            .take(limit)
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// Queued jobs: one counter read (see `counts.rs`).
    pub fn library_job_count(&self) -> usize {
        counts::read_jobs(&self.inner.counts).unwrap_or(0)
    }

    /// Writes a file's outcome, and removes its job (`job`), in one transaction. A job that a
    /// newer one replaced writes nothing (`applied: false`).
    pub fn settle_file(
        &self,
        key: &FileKey,
        job: Option<u64>,
        outcome: &FileOutcome<'_>,
        now: Millis,
    ) -> Result<Settled, StoreError> {
        self.library_tx(|t| {
            let old: Option<FileRecord> = tx_get(t.files, key.as_bytes())?;
            if let Some(seq) = job {
                let current = old.as_ref().and_then(|r| r.job);
                if current != Some(seq) {
                    t.remove_job(seq)?;
                    return Ok(Settled::default());
                }
                t.remove_job(seq)?;
            }
            let old_doc = old.as_ref().and_then(|r| r.document_id);
            let mut settled = Settled {
                applied: true,
                ..Settled::default()
            };
            let new_doc = match outcome {
                FileOutcome::Indexed { record, hash, new } => {
                    let doc = match t.doc_by_hash(&Scope::Library, hash)? {
                        Some(doc) => doc,
                        None => {
                            let new = new.as_ref().ok_or_else(|| {
                                abort(StoreError::NotFound("library document to re-link"))
                            })?;
                            t.insert_document(new)?;
                            settled.became_visible = true;
                            new.document.clone()
                        }
                    };
                    let record = FileRecord {
                        document_id: Some(doc.id),
                        content_hash: Some(hash.to_string()),
                        chunks: doc.chunk_count,
                        state: FileState::Indexed,
                        reason: None,
                        message: None,
                        indexed_at: Some(now),
                        updated_at: now,
                        job: None,
                        ..record.clone()
                    };
                    t.put_file(key.as_bytes(), old.as_ref(), Some(&record))?;
                    if t.link(doc.id, key.as_bytes())? {
                        settled.became_visible = true;
                        // A re-linked orphan: name it after the file that has it now.
                        let mut renamed = doc.clone();
                        renamed.filename = key.display();
                        t.documents
                            .insert(&doc.id.as_bytes()[..], encode(&renamed))?;
                    }
                    settled.document = Some(doc.clone());
                    Some(doc.id)
                }
                FileOutcome::NotIndexed(record) => {
                    let record = FileRecord {
                        document_id: None,
                        chunks: 0,
                        indexed_at: None,
                        updated_at: now,
                        job: None,
                        ..record.clone()
                    };
                    t.put_file(key.as_bytes(), old.as_ref(), Some(&record))?;
                    None
                }
                FileOutcome::Removed => {
                    t.put_file(key.as_bytes(), old.as_ref(), None)?;
                    None
                }
            };
            if let Some(old_doc) = old_doc.filter(|d| Some(*d) != new_doc) {
                if t.unlink(old_doc, key.as_bytes(), now)? {
                    settled.orphaned = Some(old_doc);
                }
            }
            Ok(settled)
        })
    }

    /// Drops a job whose file changed after it was queued; the file keeps its last state and is
    /// queued again once it is stable (or by the next scan, which sees a queued file with no job).
    pub fn drop_library_job(&self, key: &FileKey, seq: u64) -> Result<(), StoreError> {
        self.library_tx(|t| {
            t.remove_job(seq)?;
            if let Some(old) = tx_get::<FileRecord>(t.files, key.as_bytes())? {
                if old.job == Some(seq) {
                    let record = FileRecord {
                        job: None,
                        ..old.clone()
                    };
                    t.put_file(key.as_bytes(), Some(&old), Some(&record))?;
                }
            }
            Ok(())
        })
    }

    /// Pins a library document created by an upload, so that no watched file can orphan it.
    pub(super) fn pin_upload(t: &Trees<'_>, doc: DocumentId) -> TxResult<()> {
        let mut refs = t.refs(doc)?;
        if !refs.iter().any(|r| r == UPLOAD_REF) {
            refs.push(UPLOAD_REF.to_vec());
            t.doc_files.insert(&doc.as_bytes()[..], encode(&refs))?;
        }
        Ok(())
    }

    /// Whether a library document was uploaded (pinned: no watched file takes it away).
    pub fn document_uploaded(&self, doc: DocumentId) -> Result<bool, StoreError> {
        let refs: Vec<Vec<u8>> = get(&self.inner.doc_files, doc.as_bytes())?.unwrap_or_default();
        Ok(refs.iter().any(|r| r == UPLOAD_REF))
    }

    /// The watched files that refer to a library document (uploads not included).
    pub fn document_files(&self, doc: DocumentId) -> Result<Vec<FileKey>, StoreError> {
        let refs: Vec<Vec<u8>> = get(&self.inner.doc_files, doc.as_bytes())?.unwrap_or_default();
        Ok(refs
            .into_iter()
            .filter(|r| r != UPLOAD_REF)
            .filter_map(FileKey::from_bytes)
            .collect())
    }

    /// Deletes orphaned library documents whose grace period started before `cutoff`, each in
    /// one transaction with its chunks and vectors. Returns the deleted ids.
    pub fn collect_orphans(&self, cutoff: Millis) -> Result<Vec<DocumentId>, StoreError> {
        let mut due = Vec::new();
        for entry in self.inner.library_orphans.iter() {
            let (key, value) = entry?;
            let since = value
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("library_orphans".into()))?;
            if since < cutoff {
                if let Some(id) = DocumentId::from_slice(&key) {
                    due.push(id);
                }
            }
        }
        let mut deleted = Vec::new();
        for id in due {
            let gone = self.library_tx(|t| {
                if t.orphans.get(&id.as_bytes()[..])?.is_none() || !t.refs(id)?.is_empty() {
                    return Ok(false); // re-linked meanwhile
                }
                match tx_get::<Document>(t.documents, id.as_bytes())? {
                    Some(doc) => t.remove_document(&doc)?,
                    None => {
                        t.orphans.remove(&id.as_bytes()[..])?;
                    }
                }
                Ok(true)
            })?;
            if gone {
                deleted.push(id);
            }
        }
        Ok(deleted)
    }

    /// Orphaned documents waiting for collection.
    pub fn orphan_count(&self) -> usize {
        self.inner.library_orphans.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::now_millis;

    fn doc(hash: &str, chunks: u32) -> Document {
        Document {
            id: DocumentId::new(),
            scope: Scope::Library,
            filename: "x".into(),
            format: "text".into(),
            size: 1,
            content_hash: hash.into(),
            chunk_count: chunks,
            pages: None,
            model_id: "m".into(),
            created_at: 0,
        }
    }

    fn chunk() -> ChunkRecord {
        ChunkRecord {
            text: "t".into(),
            page: None,
            heading_path: Vec::new(),
            start: 0,
            end: 1,
        }
    }

    fn indexed(store: &Store, key: &FileKey, d: &Document, new: bool) -> Settled {
        let job = store
            .queue_file(key, JobKind::Upsert, 1, 1, now_millis())
            .unwrap()
            .unwrap();
        let chunks = vec![chunk(); d.chunk_count as usize];
        let vectors = vec![vec![0.5f32; 4]; d.chunk_count as usize];
        let outcome = FileOutcome::Indexed {
            record: FileRecord {
                size: 1,
                mtime_ns: 1,
                state: FileState::Queued,
                reason: None,
                message: None,
                content_hash: None,
                document_id: None,
                chunks: 0,
                indexed_at: None,
                updated_at: 0,
                job: None,
            },
            hash: &d.content_hash,
            new: new.then_some(NewDocument {
                document: d,
                chunks: &chunks,
                vectors: &vectors,
            }),
        };
        store
            .settle_file(key, Some(job.seq), &outcome, now_millis())
            .unwrap()
    }

    #[test]
    fn a_move_seen_as_add_then_remove_renames_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let old = FileKey::new("/root", b"trade.md");
        let new = FileKey::new("/root", b"a/b/trade.md");
        let mut d = doc("h2", 1);
        d.filename = old.display();
        indexed(&store, &old, &d, true);
        // The new path is seen first: the same document, still named after the old path.
        indexed(&store, &new, &doc("h2", 1), false);
        let job = store
            .queue_file(&old, JobKind::Remove, 0, 0, 0)
            .unwrap()
            .unwrap();
        store
            .settle_file(&old, Some(job.seq), &FileOutcome::Removed, now_millis())
            .unwrap();
        assert_eq!(
            store.document(d.id).unwrap().unwrap().filename,
            new.display()
        );
    }

    #[test]
    fn shared_documents_orphans_and_collection() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let a = FileKey::new("/root", b"a.txt");
        let b = FileKey::new("/root", b"sub/b.txt");
        let d = doc("h1", 3);

        let s = indexed(&store, &a, &d, true);
        assert!(s.applied && s.became_visible && s.orphaned.is_none());
        assert_eq!(store.library_job_count(), 0, "the job goes with its result");
        // Same bytes under a second path: the same document, nothing new stored.
        let s = indexed(&store, &b, &doc("h1", 3), false);
        assert_eq!(s.document.as_ref().unwrap().id, d.id);
        assert!(!s.became_visible);
        assert_eq!(
            store.document_files(d.id).unwrap(),
            vec![a.clone(), b.clone()]
        );

        // One path goes: still referenced. The other goes: an orphan, still stored.
        store.queue_file(&a, JobKind::Remove, 0, 0, 0).unwrap();
        let job = store.library_jobs(10).unwrap().remove(0);
        let s = store
            .settle_file(&a, Some(job.seq), &FileOutcome::Removed, now_millis())
            .unwrap();
        assert!(s.orphaned.is_none());
        let job = store
            .queue_file(&b, JobKind::Remove, 0, 0, 0)
            .unwrap()
            .unwrap();
        let s = store
            .settle_file(&b, Some(job.seq), &FileOutcome::Removed, now_millis())
            .unwrap();
        assert_eq!(s.orphaned, Some(d.id));
        assert_eq!(store.orphan_count(), 1);
        // A rename seen late re-links the orphan without new vectors.
        let s = indexed(&store, &b, &doc("h1", 3), false);
        assert!(s.became_visible);
        assert_eq!(store.orphan_count(), 0);

        // Orphaned again and collected: document, chunks and vectors all gone.
        let job = store
            .queue_file(&b, JobKind::Remove, 0, 0, 0)
            .unwrap()
            .unwrap();
        store
            .settle_file(&b, Some(job.seq), &FileOutcome::Removed, now_millis())
            .unwrap();
        assert!(
            store.collect_orphans(0).unwrap().is_empty(),
            "grace not over"
        );
        assert_eq!(store.collect_orphans(u64::MAX).unwrap(), vec![d.id]);
        assert!(store.document(d.id).unwrap().is_none());
        assert_eq!(store.document_counts(), (0, 0));
        assert!(store.document_vectors(d.id).unwrap().is_empty());
        assert!(store.files_with_prefix(b"/root\0").unwrap().is_empty());
    }

    #[test]
    fn a_replaced_job_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let key = FileKey::new("/root", b"\xffodd name.txt");
        let old = store
            .queue_file(&key, JobKind::Upsert, 1, 1, 0)
            .unwrap()
            .unwrap();
        let new = store
            .queue_file(&key, JobKind::Upsert, 2, 2, 0)
            .unwrap()
            .unwrap();
        assert_eq!(store.library_job_count(), 1);
        let s = store
            .settle_file(&key, Some(old.seq), &FileOutcome::Removed, 0)
            .unwrap();
        assert!(!s.applied);
        assert_eq!(store.file(&key).unwrap().unwrap().job, Some(new.seq));
        assert_eq!(key.relative(), b"\xffodd name.txt");
        assert_eq!(key.root(), "/root");
        assert_eq!(key.display(), "/root/\u{fffd}odd name.txt");
        // Removing a file the store never knew is nothing to do.
        let unknown = FileKey::new("/root", b"never.txt");
        assert!(store
            .queue_file(&unknown, JobKind::Remove, 0, 0, 0)
            .unwrap()
            .is_none());
    }

    #[test]
    fn file_state_counters_follow_every_write_and_are_rebuilt_for_an_older_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let exact = |store: &Store| {
            assert_eq!(
                store.file_counts().unwrap(),
                store.scanned_file_counts(),
                "counters differ from the records"
            );
        };
        {
            let store = Store::open(&path, 8 << 20).unwrap();
            let a = FileKey::new("/root", b"a.txt");
            let b = FileKey::new("/root", b"b.txt");
            let c = FileKey::new("/root", b"c.txt");
            indexed(&store, &a, &doc("h1", 1), true);
            exact(&store);
            // Queued, then failed; re-queued (replacing its job); dropped job.
            let job = store
                .queue_file(&b, JobKind::Upsert, 1, 1, 0)
                .unwrap()
                .unwrap();
            exact(&store);
            let failed = FileRecord {
                size: 1,
                mtime_ns: 1,
                state: FileState::Failed,
                reason: None,
                message: None,
                content_hash: None,
                document_id: None,
                chunks: 0,
                indexed_at: None,
                updated_at: 0,
                job: None,
            };
            store
                .settle_file(&b, Some(job.seq), &FileOutcome::NotIndexed(failed), 0)
                .unwrap();
            exact(&store);
            let job = store
                .queue_file(&c, JobKind::Upsert, 1, 1, 0)
                .unwrap()
                .unwrap();
            store
                .queue_file(&c, JobKind::Upsert, 2, 2, 0)
                .unwrap()
                .unwrap();
            store.drop_library_job(&c, job.seq).unwrap();
            exact(&store);
            // A removal: queued (state kept), then settled.
            let job = store
                .queue_file(&a, JobKind::Remove, 0, 0, 0)
                .unwrap()
                .unwrap();
            exact(&store);
            store
                .settle_file(&a, Some(job.seq), &FileOutcome::Removed, 0)
                .unwrap();
            exact(&store);
            let counts: Vec<usize> = store.file_counts().unwrap().iter().map(|c| c.1).collect();
            assert_eq!(counts, vec![1, 0, 1, 0], "queued, indexed, failed, skipped");
            // As a store written before the file counters: no marker, no counters.
            assert_eq!(store.library_job_count(), store.inner.library_jobs.len());
            assert_eq!(store.library_job_count(), 1, "c's second job");
            for key in [
                "complete.files",
                "files.queued",
                "files.failed",
                "library_jobs",
            ] {
                store.inner.counts.remove(key).unwrap();
            }
            store.flush_now().unwrap();
        }
        let store = Store::open(&path, 8 << 20).unwrap();
        exact(&store);
        assert_eq!(store.file_counts().unwrap()[0].1, 1);
        assert_eq!(store.library_job_count(), 1);
    }
}
