//! The store: every persistent record of hearth, behind typed operations. Only this module knows
//! sled.
//!
//! Layout (one sled tree each; keys big-endian so byte order is meaningful order):
//!
//! ```text
//! meta           "schema_version" → u32 BE
//! users          user_id → User                 users_by_name  username → user_id
//! settings       user_id → Settings
//! chats          chat_id → Chat                 chats_by_user  user_id ‖ updated_at BE ‖ chat_id → ()
//! messages       chat_id ‖ seq BE → Message
//! model_verify   file path → VerifiedFile (sha256 cache keyed by size + mtime)
//! documents, docs_by_scope, doc_by_hash, chunks, vectors: see `documents.rs`
//! files, library_jobs, doc_files, library_orphans: see `library.rs` (the drop folder)
//! memories, memory_hash, memory_vectors, memory_history, bg_jobs, ...: see `memories.rs`
//! ```
//!
//! Values are JSON (serde): small, debuggable, and tolerant of added fields.
//!
//! Durability: writes are applied with sled transactions (atomic across trees) and made durable
//! with [`Store::durable`], which groups the flushes of concurrent writers into one fsync. Callers
//! answer 2xx only after `durable` returned; that is the invariant the API rests on.

mod counts;
mod documents;
mod flush;
mod library;
mod memories;
pub mod types;

pub use documents::{Inserted, StoredVector};
pub use library::{
    FileKey, FileOutcome, FileRecord, FileState, JobKind, LibraryJob, NewDocument, Settled,
};
pub use memories::{
    Added, BgJob, BgJobKind, HistoryEntry, HistoryEvent, JobId, Memory, MemoryId, MemoryOrigin,
};

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

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
    documents: sled::Tree,
    docs_by_scope: sled::Tree,
    doc_by_hash: sled::Tree,
    chunks: sled::Tree,
    vectors: sled::Tree,
    files: sled::Tree,
    library_jobs: sled::Tree,
    doc_files: sled::Tree,
    library_orphans: sled::Tree,
    /// Record counts, changed in the transactions that change the records (`counts.rs`).
    counts: sled::Tree,
    mem: memories::Trees,
    flusher: flush::GroupFlush,
}

/// What [`Store::create_user`] did.
pub struct CreatedUser {
    pub user: User,
    /// False when the name already existed and its user was returned.
    pub created: bool,
}

/// A page of a user's chats, newest first.
pub struct ChatPage {
    pub chats: Vec<Chat>,
    /// Pass as `before` to get the next page; `None` on the last page.
    pub next_before: Option<String>,
}

/// Counts of what [`Store::delete_chat`] removed.
pub struct DeletedChat {
    pub messages: u64,
    /// The chat's documents, removed with it (the caller drops them from the index).
    pub documents: Vec<DocumentId>,
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
            documents: tree("documents")?,
            docs_by_scope: tree("docs_by_scope")?,
            doc_by_hash: tree("doc_by_hash")?,
            chunks: tree("chunks")?,
            vectors: tree("vectors")?,
            files: tree("files")?,
            library_jobs: tree("library_jobs")?,
            doc_files: tree("doc_files")?,
            library_orphans: tree("library_orphans")?,
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
        Ok(Store {
            inner: Arc::new(inner),
        })
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

    // === users ===

    /// Creates a user, or returns the existing user of that name.
    pub fn create_user(&self, username: &str) -> Result<CreatedUser, StoreError> {
        let i = &*self.inner;
        let candidate = User {
            id: UserId::new(),
            username: username.to_string(),
            created_at: now_millis(),
        };
        let res = (&i.users, &i.users_by_name, &i.counts).transaction(
            |(users, by_name, counts)| -> TxResult<_> {
                if let Some(existing) = by_name.get(username.as_bytes())? {
                    let id =
                        UserId::from_slice(&existing).ok_or_else(|| corrupt("users_by_name"))?;
                    let user = users.get(id.as_bytes())?.ok_or_else(|| corrupt("users"))?;
                    return Ok(CreatedUser {
                        user: decode(&user).map_err(ConflictableTransactionError::Abort)?,
                        created: false,
                    });
                }
                let previous = users.insert(&candidate.id.as_bytes()[..], encode(&candidate))?;
                counts::add(counts, Counted::Users, counts::added(&previous))?;
                by_name.insert(username.as_bytes(), &candidate.id.as_bytes()[..])?;
                Ok(CreatedUser {
                    user: candidate.clone(),
                    created: true,
                })
            },
        );
        unwrap_tx(res)
    }

    pub fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        get(&self.inner.users, id.as_bytes())
    }

    /// The user's settings, defaults if never written.
    pub fn settings(&self, id: UserId) -> Result<Settings, StoreError> {
        Ok(get(&self.inner.settings, id.as_bytes())?.unwrap_or_default())
    }

    pub fn put_settings(&self, id: UserId, settings: &Settings) -> Result<(), StoreError> {
        self.inner
            .settings
            .insert(id.as_bytes(), encode(settings))?;
        Ok(())
    }

    // === chats ===

    pub fn create_chat(&self, user_id: UserId, title: Option<&str>) -> Result<Chat, StoreError> {
        let i = &*self.inner;
        let now = now_millis();
        let chat = Chat {
            id: ChatId::new(),
            user_id,
            title: title.unwrap_or(DEFAULT_CHAT_TITLE).to_string(),
            title_by_user: title.is_some(),
            created_at: now,
            updated_at: now,
            message_count: 0,
            next_seq: 0,
        };
        let res = (&i.users, &i.chats, &i.chats_by_user, &i.counts).transaction(
            |(users, chats, by_user, counts)| -> TxResult<_> {
                if users.get(user_id.as_bytes())?.is_none() {
                    return Err(ConflictableTransactionError::Abort(StoreError::NotFound(
                        "user",
                    )));
                }
                let previous = chats.insert(&chat.id.as_bytes()[..], encode(&chat))?;
                counts::add(counts, Counted::Chats, counts::added(&previous))?;
                by_user.insert(chat_index_key(&chat), &[][..])?;
                Ok(())
            },
        );
        unwrap_tx(res)?;
        Ok(chat)
    }

    pub fn chat(&self, id: ChatId) -> Result<Option<Chat>, StoreError> {
        get(&self.inner.chats, id.as_bytes())
    }

    /// A user's chats, most recently updated first. `before` is a cursor from a previous page.
    pub fn list_chats(
        &self,
        user_id: UserId,
        limit: usize,
        before: Option<&str>,
    ) -> Result<ChatPage, StoreError> {
        let i = &*self.inner;
        let prefix = user_id.as_bytes().to_vec();
        let upper = match before.map(decode_cursor) {
            Some(Some(cursor)) => [prefix.as_slice(), &cursor].concat(),
            Some(None) => return Err(StoreError::NotFound("cursor")),
            None => {
                let mut end = prefix.clone();
                end.extend_from_slice(&[0xff; 24]);
                end
            }
        };
        let mut chats = Vec::new();
        let mut more = false;
        for entry in i.chats_by_user.range(prefix.clone()..upper).rev() {
            let (key, _) = entry?;
            if chats.len() == limit {
                more = true;
                break;
            }
            let id = ChatId::from_slice(&key[24..])
                .ok_or_else(|| StoreError::Corrupt("chats_by_user: bad key".into()))?;
            if let Some(chat) = self.chat(id)? {
                chats.push(chat);
            }
        }
        let next_before = match (more, chats.last()) {
            (true, Some(last)) => Some(encode_cursor(&chat_index_key(last)[16..])),
            _ => None,
        };
        Ok(ChatPage { chats, next_before })
    }

    /// Sets a chat's title. `by_user` marks it as chosen by the user (never auto-replaced).
    pub fn rename_chat(&self, id: ChatId, title: &str, by_user: bool) -> Result<Chat, StoreError> {
        let i = &*self.inner;
        let res = (&i.chats, &i.chats_by_user).transaction(|(chats, by_idx)| -> TxResult<_> {
            let mut chat: Chat = tx_get(chats, id.as_bytes())?.ok_or(
                ConflictableTransactionError::Abort(StoreError::NotFound("chat")),
            )?;
            by_idx.remove(chat_index_key(&chat))?;
            chat.title = title.to_string();
            chat.title_by_user |= by_user;
            chat.updated_at = now_millis().max(chat.updated_at);
            chats.insert(&id.as_bytes()[..], encode(&chat))?;
            by_idx.insert(chat_index_key(&chat), &[][..])?;
            Ok(chat)
        });
        unwrap_tx(res)
    }

    /// Deletes a chat and all its messages.
    pub fn delete_chat(&self, id: ChatId) -> Result<DeletedChat, StoreError> {
        let i = &*self.inner;
        let chat = self.chat(id)?.ok_or(StoreError::NotFound("chat"))?;
        // The chat, its index entry and its messages go in one transaction (with the counts).
        let keys = i
            .messages
            .scan_prefix(id.as_bytes())
            .keys()
            .collect::<Result<Vec<_>, _>>()?;
        let res = (&i.chats, &i.chats_by_user, &i.messages, &i.counts).transaction(
            |(chats, by_idx, messages, counts)| -> TxResult<_> {
                let mut removed = 0;
                for key in &keys {
                    removed -= counts::removed(&messages.remove(key)?);
                }
                counts::add(counts, Counted::Messages, -removed)?;
                let previous = chats.remove(&id.as_bytes()[..])?;
                counts::add(counts, Counted::Chats, counts::removed(&previous))?;
                by_idx.remove(chat_index_key(&chat))?;
                Ok(u64::try_from(removed).unwrap_or(0))
            },
        );
        let messages = unwrap_tx(res)?;
        let mut documents = Vec::new();
        for doc in self.documents_in(&Scope::Chat(id))? {
            self.delete_document(doc.id)?;
            documents.push(doc.id);
        }
        Ok(DeletedChat {
            messages,
            documents,
        })
    }

    // === messages ===

    /// All messages of a chat, oldest first.
    pub fn messages(&self, chat_id: ChatId) -> Result<Vec<Message>, StoreError> {
        self.inner
            .messages
            .scan_prefix(chat_id.as_bytes())
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// Appends messages to a chat atomically (a user message and its reply are written together,
    /// so history never holds a question without its answer). Sequence numbers are assigned here.
    pub fn append_messages(
        &self,
        chat_id: ChatId,
        new: &mut [Message],
    ) -> Result<Chat, StoreError> {
        let i = &*self.inner;
        let res = (&i.chats, &i.chats_by_user, &i.messages, &i.counts).transaction(
            |(chats, by_idx, messages, counts)| -> TxResult<_> {
                let mut chat: Chat = tx_get(chats, chat_id.as_bytes())?.ok_or(
                    ConflictableTransactionError::Abort(StoreError::NotFound("chat")),
                )?;
                by_idx.remove(chat_index_key(&chat))?;
                // The closure may be retried on conflict, so it numbers copies, not `new`.
                let mut numbered = new.to_vec();
                for message in &mut numbered {
                    message.seq = chat.next_seq;
                    message.chat_id = chat_id;
                    chat.next_seq += 1;
                    chat.message_count += 1;
                    let previous =
                        messages.insert(message_key(chat_id, message.seq), encode(&*message))?;
                    counts::add(counts, Counted::Messages, counts::added(&previous))?;
                }
                chat.updated_at = now_millis().max(chat.updated_at);
                chats.insert(&chat_id.as_bytes()[..], encode(&chat))?;
                by_idx.insert(chat_index_key(&chat), &[][..])?;
                Ok((chat, numbered))
            },
        );
        let (chat, numbered) = unwrap_tx(res)?;
        new.clone_from_slice(&numbered);
        Ok(chat)
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

// === keys and encoding ===

fn chat_index_key(chat: &Chat) -> Vec<u8> {
    let mut key = Vec::with_capacity(40);
    key.extend_from_slice(chat.user_id.as_bytes());
    key.extend_from_slice(&chat.updated_at.to_be_bytes());
    key.extend_from_slice(chat.id.as_bytes());
    key
}

fn message_key(chat_id: ChatId, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(chat_id.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// A page cursor is the (updated_at ‖ chat_id) part of an index key, hex-encoded: opaque to
/// clients, stable across writes.
fn encode_cursor(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(text: &str) -> Option<Vec<u8>> {
    if text.len() != 48 || !text.is_ascii() {
        return None;
    }
    (0..24)
        .map(|n| u8::from_str_radix(&text[2 * n..2 * n + 2], 16).ok())
        .collect()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt(err.to_string()))
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    tree.get(key)?.map(|v| decode(&v)).transpose()
}

fn tx_get<T: DeserializeOwned>(
    tree: &sled::transaction::TransactionalTree,
    key: &[u8],
) -> TxResult<Option<T>> {
    match tree.get(key)? {
        Some(bytes) => decode(&bytes)
            .map(Some)
            .map_err(ConflictableTransactionError::Abort),
        None => Ok(None),
    }
}

fn corrupt(what: &str) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(StoreError::Corrupt(format!("{what}: bad record")))
}

fn unwrap_tx<T>(res: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    match res {
        Ok(v) => Ok(v),
        Err(TransactionError::Abort(err)) => Err(err),
        Err(TransactionError::Storage(err)) => Err(StoreError::Sled(err)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn users_are_unique_by_name() {
        let (_dir, store) = open();
        let a = store.create_user("ada").unwrap();
        let b = store.create_user("ada").unwrap();
        assert!(a.created && !b.created);
        assert_eq!(a.user, b.user);
        store.durable().await.unwrap();
    }

    #[tokio::test]
    async fn chats_page_newest_first_and_messages_keep_order() {
        let (_dir, store) = open();
        let user = store.create_user("u").unwrap().user;
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(
                store
                    .create_chat(user.id, Some(&format!("c{n}")))
                    .unwrap()
                    .id,
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // Touching the oldest chat moves it to the front.
        let mut msgs = vec![message(Role::User, "q"), message(Role::Assistant, "a")];
        store.append_messages(ids[0], &mut msgs).unwrap();
        let page = store.list_chats(user.id, 2, None).unwrap();
        let titles: Vec<_> = page.chats.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["c0", "c4"]);
        let next = store
            .list_chats(user.id, 10, page.next_before.as_deref())
            .unwrap();
        let titles: Vec<_> = next.chats.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["c3", "c2", "c1"]);
        assert!(next.next_before.is_none());

        let stored = store.messages(ids[0]).unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!((stored[0].seq, stored[1].seq), (0, 1));
        assert_eq!(stored[1].content, "a");
        let deleted = store.delete_chat(ids[0]).unwrap();
        assert_eq!(deleted.messages, 2);
        assert!(store.messages(ids[0]).unwrap().is_empty());
        assert_eq!(store.list_chats(user.id, 10, None).unwrap().chats.len(), 4);
    }

    #[test]
    fn bad_cursor_is_an_error() {
        let (_dir, store) = open();
        let user = store.create_user("u").unwrap().user;
        assert!(store.list_chats(user.id, 10, Some("zz")).is_err());
    }

    fn message(role: Role, content: &str) -> Message {
        Message {
            id: MessageId::new(),
            chat_id: ChatId::new(),
            seq: 0,
            role,
            content: content.into(),
            created_at: now_millis(),
            finish_reason: None,
            usage: None,
            sources: Vec::new(),
        }
    }
}
