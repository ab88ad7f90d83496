//! Record counts (users, chats, messages, documents, chunks) kept in the `counts` tree and changed
//! inside the very transactions that add or remove the records, so they are exact and survive a
//! crash with the records.
//!
//! Why not `Tree::len()`: in sled 0.34 it walks the whole tree. `/api/v1/health` reported five of
//! them on every call, and clients poll health while they wait (every 50 ms): at 100k chunks
//! that is a full scan of every chunk, on the async runtime, twenty times a second. Reading five
//! keys costs microseconds.
//!
//! The drop folder's files are counted per stored state the same way (`files.<state>`): the
//! library's status and `GET /metrics` read four keys instead of walking every file's record.
//!
//! A store written before the counters existed gets them once, when it is opened: each tree is
//! counted then (the only scan), and a marker says the counters are complete (one marker for the
//! record counts, one for the file states, which came later).

use sled::transaction::TransactionalTree;
use sled::Tree;

use super::library::{FileRecord, FileState};
use super::{codec, StoreCounts, StoreError, TxResult};

/// A counted kind of record: its key in the `counts` tree.
#[derive(Clone, Copy, Debug)]
pub(super) enum Counted {
    Users,
    Chats,
    Messages,
    Documents,
    Chunks,
}

impl Counted {
    const ALL: [Counted; 5] = [
        Counted::Users,
        Counted::Chats,
        Counted::Messages,
        Counted::Documents,
        Counted::Chunks,
    ];

    fn key(self) -> &'static [u8] {
        match self {
            Counted::Users => b"users",
            Counted::Chats => b"chats",
            Counted::Messages => b"messages",
            Counted::Documents => b"documents",
            Counted::Chunks => b"chunks",
        }
    }
}

/// Present once every counter is complete (written last by [`ensure`]).
const COMPLETE: &[u8] = b"complete";
/// Present once the file-state counters are complete (written last by [`ensure_files`]).
const FILES_COMPLETE: &[u8] = b"complete.files";

/// The states a file's record is stored with (the others are only reported).
pub(super) const STORED_FILE_STATES: [FileState; 4] = [
    FileState::Queued,
    FileState::Indexed,
    FileState::Failed,
    FileState::Skipped,
];

fn file_key(state: FileState) -> Vec<u8> {
    format!("files.{}", state.as_str()).into_bytes()
}

fn decode(bytes: Option<sled::IVec>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Adds `delta` (negative: removes) to a counter inside a transaction. A counter never goes
/// below zero.
pub(super) fn add(counts: &TransactionalTree, what: Counted, delta: i64) -> TxResult<()> {
    add_key(counts, what.key(), delta)
}

fn add_key(counts: &TransactionalTree, key: &[u8], delta: i64) -> TxResult<()> {
    if delta == 0 {
        return Ok(());
    }
    let current = decode(counts.get(key)?);
    let next = if delta >= 0 {
        current.saturating_add(delta.unsigned_abs())
    } else {
        current.saturating_sub(delta.unsigned_abs())
    };
    counts.insert(key, &next.to_be_bytes()[..])?;
    Ok(())
}

/// Moves one file between state counters inside the transaction that changes its record
/// (`None`: no record before, or none after).
pub(super) fn file_changed(
    counts: &TransactionalTree,
    old: Option<FileState>,
    new: Option<FileState>,
) -> TxResult<()> {
    if old == new {
        return Ok(());
    }
    if let Some(old) = old {
        add_key(counts, &file_key(old), -1)?;
    }
    if let Some(new) = new {
        add_key(counts, &file_key(new), 1)?;
    }
    Ok(())
}

/// Key of the drop folder's queued-job counter.
const JOBS: &[u8] = b"library_jobs";

/// Adds `delta` to the drop folder's queued-job counter inside a transaction.
pub(super) fn jobs_changed(counts: &TransactionalTree, delta: i64) -> TxResult<()> {
    add_key(counts, JOBS, delta)
}

/// Queued drop-folder jobs: one read.
pub(super) fn read_jobs(counts: &Tree) -> Result<usize, StoreError> {
    Ok(usize::try_from(decode(counts.get(JOBS)?)).unwrap_or(usize::MAX))
}

/// Files per stored state: four reads.
pub(super) fn read_files(counts: &Tree) -> Result<Vec<(FileState, usize)>, StoreError> {
    STORED_FILE_STATES
        .into_iter()
        .map(|state| {
            let n = decode(counts.get(file_key(state))?);
            Ok((state, usize::try_from(n).unwrap_or(usize::MAX)))
        })
        .collect()
}

/// Makes the file-state and job counters complete: a store from before them is counted once,
/// at open.
pub(super) fn ensure_files(counts: &Tree, files: &Tree, jobs: &Tree) -> Result<(), StoreError> {
    if counts.contains_key(FILES_COMPLETE)? {
        return Ok(());
    }
    let queued = u64::try_from(jobs.len()).unwrap_or(u64::MAX);
    counts.insert(JOBS, &queued.to_be_bytes()[..])?;
    let mut per_state = [0u64; STORED_FILE_STATES.len()];
    for entry in files.iter() {
        let record: FileRecord = codec::decode(&entry?.1)?;
        if let Some(i) = STORED_FILE_STATES.iter().position(|s| *s == record.state) {
            per_state[i] += 1;
        }
    }
    for (state, n) in STORED_FILE_STATES.into_iter().zip(per_state) {
        counts.insert(file_key(state), &n.to_be_bytes()[..])?;
    }
    counts.insert(FILES_COMPLETE, &[][..])?;
    Ok(())
}

/// The current counts: five reads.
pub(super) fn read(counts: &Tree) -> Result<StoreCounts, StoreError> {
    let get = |what: Counted| -> Result<usize, StoreError> {
        Ok(usize::try_from(decode(counts.get(what.key())?)).unwrap_or(usize::MAX))
    };
    Ok(StoreCounts {
        users: get(Counted::Users)?,
        chats: get(Counted::Chats)?,
        messages: get(Counted::Messages)?,
        documents: get(Counted::Documents)?,
        chunks: get(Counted::Chunks)?,
    })
}

/// Makes the counters complete: a store from before they existed is counted once. Runs at open,
/// before anything else can write.
pub(super) fn ensure(counts: &Tree, tree_of: impl Fn(Counted) -> Tree) -> Result<(), StoreError> {
    if counts.contains_key(COMPLETE)? {
        return Ok(());
    }
    for what in Counted::ALL {
        let n = u64::try_from(tree_of(what).len()).unwrap_or(u64::MAX);
        counts.insert(what.key(), &n.to_be_bytes()[..])?;
    }
    counts.insert(COMPLETE, &[][..])?;
    Ok(())
}

/// +1 when `insert` added a key, 0 when it replaced one.
pub(super) fn added(previous: &Option<sled::IVec>) -> i64 {
    i64::from(previous.is_none())
}

/// -1 when `remove` removed a key, 0 when there was none.
pub(super) fn removed(previous: &Option<sled::IVec>) -> i64 {
    -i64::from(previous.is_some())
}

#[cfg(test)]
mod tests {
    use crate::store::types::{ChunkRecord, Document, DocumentId, Message, MessageId, Role, Scope};
    use crate::store::{ChatId, Store};

    fn assert_exact(store: &Store) {
        let counted = store.counts().unwrap();
        let rows = store.scanned_counts();
        assert_eq!(format!("{counted:?}"), format!("{rows:?}"));
    }

    fn document(scope: Scope, hash: &str, chunks: u32) -> Document {
        Document {
            id: DocumentId::new(),
            scope,
            filename: "f.txt".into(),
            format: "text".into(),
            size: 1,
            content_hash: hash.into(),
            chunk_count: chunks,
            pages: None,
            model_id: "m".into(),
            created_at: 0,
        }
    }

    fn message(role: Role) -> Message {
        Message {
            id: MessageId::new(),
            chat_id: ChatId::new(),
            seq: 0,
            role,
            content: "x".into(),
            created_at: 0,
            finish_reason: None,
            usage: None,
            sources: Vec::new(),
        }
    }

    #[test]
    fn counts_follow_every_write_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path, 8 << 20).unwrap();
        assert_exact(&store);
        let user = store.create_user("ada").unwrap().user;
        store.create_user("ada").unwrap(); // the same user: no new row
        let chat = store.create_chat(user.id, None).unwrap();
        let other = store.create_chat(user.id, None).unwrap();
        let mut turn = [message(Role::User), message(Role::Assistant)];
        store.append_messages(chat.id, &mut turn).unwrap();
        store.append_messages(other.id, &mut turn).unwrap();
        let chunk = ChunkRecord {
            text: "t".into(),
            page: None,
            heading_path: Vec::new(),
            start: 0,
            end: 1,
        };
        let a = document(Scope::Chat(chat.id), "a", 3);
        store
            .insert_document(
                &a,
                &[chunk.clone(), chunk.clone(), chunk.clone()],
                &vec![vec![0.0]; 3],
            )
            .unwrap();
        let b = document(Scope::Library, "b", 2);
        store
            .insert_document(&b, &[chunk.clone(), chunk], &vec![vec![0.0]; 2])
            .unwrap();
        assert_exact(&store);
        let counted = store.counts().unwrap();
        assert_eq!(
            (
                counted.users,
                counted.chats,
                counted.messages,
                counted.documents,
                counted.chunks
            ),
            (1, 2, 4, 2, 5)
        );
        store.delete_document(b.id).unwrap();
        // Deleting a chat takes its messages and its documents.
        store.delete_chat(chat.id).unwrap();
        assert_exact(&store);
        let counted = store.counts().unwrap();
        assert_eq!(
            (
                counted.chats,
                counted.messages,
                counted.documents,
                counted.chunks
            ),
            (1, 2, 0, 0)
        );
        drop(store);
        // sled's own threads may hold the file lock a moment after the drop.
        let store =
            Store::open_waiting(&path, 8 << 20, std::time::Duration::from_secs(10)).unwrap();
        assert_exact(&store);
    }

    #[test]
    fn a_store_from_before_the_counters_is_counted_once_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path, 8 << 20).unwrap();
        let user = store.create_user("ada").unwrap().user;
        let chat = store.create_chat(user.id, None).unwrap();
        store
            .append_messages(
                chat.id,
                &mut [message(Role::User), message(Role::Assistant)],
            )
            .unwrap();
        // What an older store looks like: records, no counters.
        store.inner.counts.clear().unwrap();
        store.flush_now().unwrap();
        drop(store);
        // sled's own threads may hold the file lock a moment after the drop.
        let store =
            Store::open_waiting(&path, 8 << 20, std::time::Duration::from_secs(10)).unwrap();
        assert_exact(&store);
        assert_eq!(store.counts().unwrap().messages, 2);
    }
}
