//! Long-term memories of a user and their change history.
//!
//! ```text
//! memories                  memory_id → Memory
//! memories_by_user          user_id ‖ memory_id → ()
//! memory_hash               user_id ‖ normalized-text hash → memory_id
//! memory_vectors            memory_id → 384 × f32 little-endian
//! memory_history            user_id ‖ entry_id → HistoryEntry   (every change, chronological)
//! memory_history_by_memory  memory_id ‖ entry_id → user_id      (one memory's entries)
//! memory_forgets            user_id → Millis BE                  (the user's last "forget all")
//! ```
//!
//! A fact inferred from something the user said before their last "forget all" is discarded,
//! checked inside the write's transaction: an extraction that was queued or already running when
//! the user asked to forget everything cannot bring a fact back afterwards.
//!
//! Every change to a memory and its history entry are one transaction: the history never misses a
//! change and never shows one that did not happen. History outlives the memory (a deleted
//! memory's history stays readable), which is what makes the memory auditable.

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;
use uuid::Uuid;

use super::codec::{decode, encode, get, tx_get, unwrap_tx, vector_bytes, vector_from};
use super::types::{MessageId, Millis, UserId};
use super::{now_millis, Store, StoreError, TxResult};

/// A memory's id (UUIDv7, as every id in the store).
pub type MemoryId = Uuid;

/// How a memory came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryOrigin {
    /// Stored as given through the API (`infer: false`).
    Explicit,
    /// Extracted by the model from a chat exchange.
    Inferred,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub id: MemoryId,
    pub user_id: UserId,
    pub text: String,
    /// Hash of the normalized text (hex): the first, exact dedup key.
    pub hash: String,
    pub origin: MemoryOrigin,
    /// The user message it was learned from (inferred memories).
    pub source_message_id: Option<MessageId>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// What happened, in a history entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryEvent {
    Add,
    Update,
    Delete,
    /// Every memory of the user was deleted at once.
    ForgetAll,
    /// An extraction job failed (or was dropped); `detail` says why.
    ExtractFailed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: Uuid,
    pub user_id: UserId,
    pub memory_id: Option<MemoryId>,
    pub event: HistoryEvent,
    pub old_text: Option<String>,
    pub new_text: Option<String>,
    pub source_message_id: Option<MessageId>,
    pub at: Millis,
    pub detail: Option<String>,
}

impl HistoryEntry {
    pub fn new(user_id: UserId, event: HistoryEvent) -> HistoryEntry {
        HistoryEntry {
            id: Uuid::now_v7(),
            user_id,
            memory_id: None,
            event,
            old_text: None,
            new_text: None,
            source_message_id: None,
            at: now_millis(),
            detail: None,
        }
    }
}

/// What [`Store::add_memory`] did.
pub enum Added {
    Created(Memory),
    /// A memory with the same normalized text exists already (returned unchanged).
    Exists(Memory),
    /// Nothing: the user forgot all memories after the fact was learned.
    Forgotten,
}

/// The memory trees, opened with the store.
pub(super) struct Trees {
    memories: sled::Tree,
    by_user: sled::Tree,
    hash: sled::Tree,
    vectors: sled::Tree,
    history: sled::Tree,
    history_by_memory: sled::Tree,
    forgets: sled::Tree,
}

impl Trees {
    pub(super) fn open(db: &sled::Db) -> Result<Trees, StoreError> {
        Ok(Trees {
            memories: db.open_tree("memories")?,
            by_user: db.open_tree("memories_by_user")?,
            hash: db.open_tree("memory_hash")?,
            vectors: db.open_tree("memory_vectors")?,
            history: db.open_tree("memory_history")?,
            history_by_memory: db.open_tree("memory_history_by_memory")?,
            forgets: db.open_tree("memory_forgets")?,
        })
    }
}

fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    [a, b].concat()
}

type Tx<'a> = &'a sled::transaction::TransactionalTree;

/// True when a fact learned at `learned_at` must be dropped: the user forgot all memories at or
/// after that time. `None` (an explicit add or edit, made now) is never dropped.
fn tx_forgotten(forgets: Tx<'_>, user: UserId, learned_at: Option<Millis>) -> TxResult<bool> {
    let Some(learned_at) = learned_at else {
        return Ok(false);
    };
    Ok(match forgets.get(user.as_bytes())? {
        Some(bytes) => {
            let forgot = bytes
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            forgot >= learned_at
        }
        None => false,
    })
}

/// Writes a history entry inside a transaction.
fn tx_history(history: Tx<'_>, by_memory: Tx<'_>, entry: &HistoryEntry) -> TxResult<()> {
    history.insert(
        cat(entry.user_id.as_bytes(), entry.id.as_bytes()),
        encode(entry),
    )?;
    if let Some(mid) = entry.memory_id {
        by_memory.insert(
            cat(mid.as_bytes(), entry.id.as_bytes()),
            &entry.user_id.as_bytes()[..],
        )?;
    }
    Ok(())
}

impl Store {
    fn mem(&self) -> &Trees {
        &self.inner.mem
    }

    pub fn memory(&self, id: MemoryId) -> Result<Option<Memory>, StoreError> {
        get(&self.mem().memories, id.as_bytes())
    }

    /// A user's memories, oldest first.
    pub fn memories_of(&self, user: UserId) -> Result<Vec<Memory>, StoreError> {
        let t = self.mem();
        let mut out = Vec::new();
        for entry in t.by_user.scan_prefix(user.as_bytes()) {
            let (key, _) = entry?;
            let id = Uuid::from_slice(&key[16..])
                .map_err(|_| StoreError::Corrupt("memories_by_user: bad key".into()))?;
            if let Some(memory) = self.memory(id)? {
                out.push(memory);
            }
        }
        Ok(out)
    }

    /// True when the user has at least one memory (cheap: one key read).
    pub fn has_memories(&self, user: UserId) -> Result<bool, StoreError> {
        Ok(self
            .mem()
            .by_user
            .scan_prefix(user.as_bytes())
            .next()
            .transpose()?
            .is_some())
    }

    /// A user's memories with their vectors, for an exact similarity scan.
    pub fn memories_with_vectors(
        &self,
        user: UserId,
    ) -> Result<Vec<(Memory, Vec<f32>)>, StoreError> {
        let mut out = Vec::new();
        for memory in self.memories_of(user)? {
            if let Some(bytes) = self.mem().vectors.get(memory.id.as_bytes())? {
                out.push((memory, vector_from(&bytes)?));
            }
        }
        Ok(out)
    }

    /// Stores a new memory and its `add` history entry, unless the user already has one with the
    /// same normalized text (checked inside the transaction, so two racing adds make one), or the
    /// fact was learned at `learned_at` and the user has forgotten all memories since.
    pub fn add_memory(
        &self,
        memory: &Memory,
        vector: &[f32],
        learned_at: Option<Millis>,
    ) -> Result<Added, StoreError> {
        let t = self.mem();
        let hash_key = cat(memory.user_id.as_bytes(), memory.hash.as_bytes());
        let vbytes = vector_bytes(vector);
        let res = (
            &t.memories,
            &t.by_user,
            &t.hash,
            &t.vectors,
            &t.history,
            &t.history_by_memory,
            &t.forgets,
        )
            .transaction(
                |(memories, by_user, hash, vectors, history, by_memory, forgets)| {
                    if tx_forgotten(forgets, memory.user_id, learned_at)? {
                        return Ok(Added::Forgotten);
                    }
                    if let Some(existing) = hash.get(&hash_key)? {
                        let found: Option<Memory> = tx_get(memories, &existing)?;
                        if let Some(found) = found {
                            return Ok(Added::Exists(found));
                        }
                    }
                    memories.insert(&memory.id.as_bytes()[..], encode(memory))?;
                    by_user.insert(
                        cat(memory.user_id.as_bytes(), memory.id.as_bytes()),
                        &[][..],
                    )?;
                    hash.insert(hash_key.clone(), &memory.id.as_bytes()[..])?;
                    vectors.insert(&memory.id.as_bytes()[..], vbytes.clone())?;
                    let mut entry = HistoryEntry::new(memory.user_id, HistoryEvent::Add);
                    entry.memory_id = Some(memory.id);
                    entry.new_text = Some(memory.text.clone());
                    entry.source_message_id = memory.source_message_id;
                    entry.at = memory.created_at;
                    tx_history(history, by_memory, &entry)?;
                    Ok(Added::Created(memory.clone()))
                },
            );
        unwrap_tx(res)
    }

    /// Replaces a memory's text (and vector), with an `update` entry holding old and new text.
    /// `None` when the new text was learned at `learned_at` and the user has forgotten all
    /// memories since (nothing changed).
    pub fn update_memory(
        &self,
        id: MemoryId,
        text: &str,
        text_hash: &str,
        vector: &[f32],
        source: Option<MessageId>,
        learned_at: Option<Millis>,
    ) -> Result<Option<Memory>, StoreError> {
        let t = self.mem();
        let vbytes = vector_bytes(vector);
        let res = (
            &t.memories,
            &t.hash,
            &t.vectors,
            &t.history,
            &t.history_by_memory,
            &t.forgets,
        )
            .transaction(|(memories, hash, vectors, history, by_memory, forgets)| {
                let mut memory: Memory = tx_get(memories, id.as_bytes())?.ok_or(
                    ConflictableTransactionError::Abort(StoreError::NotFound("memory")),
                )?;
                if tx_forgotten(forgets, memory.user_id, learned_at)? {
                    return Ok(None);
                }
                let old_key = cat(memory.user_id.as_bytes(), memory.hash.as_bytes());
                if hash.get(&old_key)?.as_deref() == Some(&id.as_bytes()[..]) {
                    hash.remove(old_key)?;
                }
                let old_text = std::mem::replace(&mut memory.text, text.to_string());
                memory.hash = text_hash.to_string();
                memory.updated_at = now_millis();
                if source.is_some() {
                    memory.source_message_id = source;
                }
                memories.insert(&id.as_bytes()[..], encode(&memory))?;
                hash.insert(
                    cat(memory.user_id.as_bytes(), memory.hash.as_bytes()),
                    &id.as_bytes()[..],
                )?;
                vectors.insert(&id.as_bytes()[..], vbytes.clone())?;
                let mut entry = HistoryEntry::new(memory.user_id, HistoryEvent::Update);
                entry.memory_id = Some(id);
                entry.old_text = Some(old_text);
                entry.new_text = Some(memory.text.clone());
                entry.source_message_id = source;
                tx_history(history, by_memory, &entry)?;
                Ok(Some(memory))
            });
        unwrap_tx(res)
    }

    /// Deletes a memory, with a `delete` entry holding its last text.
    pub fn delete_memory(&self, id: MemoryId) -> Result<Memory, StoreError> {
        let t = self.mem();
        let res = (
            &t.memories,
            &t.by_user,
            &t.hash,
            &t.vectors,
            &t.history,
            &t.history_by_memory,
        )
            .transaction(|(memories, by_user, hash, vectors, history, by_memory)| {
                let memory: Memory = tx_get(memories, id.as_bytes())?.ok_or(
                    ConflictableTransactionError::Abort(StoreError::NotFound("memory")),
                )?;
                remove_in_tx(memories, by_user, hash, vectors, &memory)?;
                let mut entry = HistoryEntry::new(memory.user_id, HistoryEvent::Delete);
                entry.memory_id = Some(id);
                entry.old_text = Some(memory.text.clone());
                tx_history(history, by_memory, &entry)?;
                Ok(memory)
            });
        unwrap_tx(res)
    }

    /// Deletes every memory of a user, with one `forget_all` entry saying how many, and records
    /// the time so that facts learned before it are not added back later (see the module doc).
    /// Returns the count.
    pub fn forget_memories(&self, user: UserId) -> Result<usize, StoreError> {
        let t = self.mem();
        let ids: Vec<MemoryId> = self.memories_of(user)?.iter().map(|m| m.id).collect();
        let now = now_millis();
        let res = (
            &t.memories,
            &t.by_user,
            &t.hash,
            &t.vectors,
            &t.history,
            &t.history_by_memory,
            &t.forgets,
        )
            .transaction(
                |(memories, by_user, hash, vectors, history, by_memory, forgets)| {
                    forgets.insert(&user.as_bytes()[..], &now.to_be_bytes()[..])?;
                    let mut n = 0usize;
                    for id in &ids {
                        let found: Option<Memory> = tx_get(memories, id.as_bytes())?;
                        if let Some(memory) = found {
                            remove_in_tx(memories, by_user, hash, vectors, &memory)?;
                            n += 1;
                        }
                    }
                    let mut entry = HistoryEntry::new(user, HistoryEvent::ForgetAll);
                    entry.detail = Some(format!("{n} memories deleted"));
                    tx_history(history, by_memory, &entry)?;
                    Ok(n)
                },
            );
        unwrap_tx(res)
    }

    /// Deletes every memory of a user and their whole history (for deleting the user). The
    /// "forgot all" time is set to now and kept, so an extraction still running for the user
    /// cannot add a fact back.
    pub fn purge_memories(&self, user: UserId) -> Result<(), StoreError> {
        self.forget_memories(user)?;
        let t = self.mem();
        let entries: Vec<HistoryEntry> = t
            .history
            .scan_prefix(user.as_bytes())
            .map(|entry| decode(&entry?.1))
            .collect::<Result<_, _>>()?;
        let res = (&t.history, &t.history_by_memory).transaction(|(history, by_memory)| {
            for e in &entries {
                history.remove(cat(user.as_bytes(), e.id.as_bytes()))?;
                if let Some(mid) = e.memory_id {
                    by_memory.remove(cat(mid.as_bytes(), e.id.as_bytes()))?;
                }
            }
            Ok(())
        });
        unwrap_tx(res)
    }

    /// When the user last forgot all memories, if ever.
    pub fn memories_forgotten_at(&self, user: UserId) -> Result<Option<Millis>, StoreError> {
        Ok(self
            .mem()
            .forgets
            .get(user.as_bytes())?
            .and_then(|bytes| bytes.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Records an entry that changes no memory (an extraction failure).
    pub fn record_memory_event(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        let t = self.mem();
        let res = (&t.history, &t.history_by_memory)
            .transaction(|(history, by_memory)| tx_history(history, by_memory, entry));
        unwrap_tx(res)
    }

    /// One memory's history, oldest first (also after the memory was deleted). Empty when the
    /// memory never existed.
    pub fn memory_history(&self, id: MemoryId) -> Result<Vec<HistoryEntry>, StoreError> {
        let t = self.mem();
        let mut out = Vec::new();
        for entry in t.history_by_memory.scan_prefix(id.as_bytes()) {
            let (key, user) = entry?;
            let full = cat(&user, &key[16..]);
            if let Some(e) = get(&t.history, &full)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// A user's whole memory history, newest first, at most `limit` entries.
    pub fn user_memory_history(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        self.mem()
            .history
            .scan_prefix(user.as_bytes())
            .rev()
            .take(limit)
            .map(|entry| decode(&entry?.1))
            .collect()
    }
}

fn remove_in_tx(
    memories: Tx<'_>,
    by_user: Tx<'_>,
    hash: Tx<'_>,
    vectors: Tx<'_>,
    memory: &Memory,
) -> TxResult<()> {
    let id = memory.id.as_bytes();
    memories.remove(&id[..])?;
    by_user.remove(cat(memory.user_id.as_bytes(), id))?;
    let hash_key = cat(memory.user_id.as_bytes(), memory.hash.as_bytes());
    if hash.get(&hash_key)?.as_deref() == Some(&id[..]) {
        hash.remove(hash_key)?;
    }
    vectors.remove(&id[..])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(user: UserId, text: &str) -> Memory {
        Memory {
            id: Uuid::now_v7(),
            user_id: user,
            text: text.into(),
            hash: text.to_lowercase(),
            origin: MemoryOrigin::Explicit,
            source_message_id: None,
            created_at: now_millis(),
            updated_at: now_millis(),
        }
    }

    #[test]
    fn facts_learned_before_a_forget_all_are_not_added_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let ada = store.create_user("ada").unwrap().user.id;
        let bob = store.create_user("bob").unwrap().user.id;
        let kept = memory(ada, "likes tea");
        store.add_memory(&kept, &[1.0, 0.0], None).unwrap();
        // An extraction job queued now...
        let learned = now_millis();
        assert_eq!(store.memories_forgotten_at(ada).unwrap(), None);
        // ...while the user forgets everything...
        assert_eq!(store.forget_memories(ada).unwrap(), 1);
        let forgot = store.memories_forgotten_at(ada).unwrap().unwrap();
        assert!(forgot >= learned);
        // ...finishes afterwards: its fact is dropped, as an add and as an update.
        assert!(matches!(
            store
                .add_memory(&memory(ada, "has a dog"), &[1.0, 0.0], Some(learned))
                .unwrap(),
            Added::Forgotten
        ));
        let later = memory(ada, "likes coffee");
        store.add_memory(&later, &[0.0, 1.0], None).unwrap();
        assert_eq!(
            store
                .update_memory(
                    later.id,
                    "likes tea",
                    "likes tea",
                    &[1.0, 0.0],
                    None,
                    Some(learned)
                )
                .unwrap(),
            None
        );
        assert_eq!(
            store.memory(later.id).unwrap().unwrap().text,
            "likes coffee"
        );
        // Facts learned after the forget, explicit ones, and other users are not affected.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(matches!(
            store
                .add_memory(&memory(ada, "has a cat"), &[1.0, 0.0], Some(now_millis()))
                .unwrap(),
            Added::Created(_)
        ));
        assert!(matches!(
            store
                .add_memory(&memory(bob, "has a dog"), &[1.0, 0.0], Some(learned))
                .unwrap(),
            Added::Created(_)
        ));
        let texts: Vec<_> = store
            .memories_of(ada)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["likes coffee", "has a cat"]);
    }

    #[test]
    fn add_dedups_by_hash_and_history_survives_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 8 << 20).unwrap();
        let ada = store.create_user("ada").unwrap().user.id;
        let bob = store.create_user("bob").unwrap().user.id;
        let a = memory(ada, "Likes tea");
        assert!(matches!(
            store.add_memory(&a, &[1.0, 0.0], None).unwrap(),
            Added::Created(_)
        ));
        let again = memory(ada, "LIKES TEA");
        match store.add_memory(&again, &[1.0, 0.0], None).unwrap() {
            Added::Exists(found) => assert_eq!(found.id, a.id),
            _ => panic!("duplicate stored"),
        }
        // Another user's identical text is theirs alone.
        assert!(matches!(
            store
                .add_memory(&memory(bob, "likes tea"), &[1.0, 0.0], None)
                .unwrap(),
            Added::Created(_)
        ));
        store
            .update_memory(
                a.id,
                "Likes green tea",
                "likes green tea",
                &[0.0, 1.0],
                None,
                None,
            )
            .unwrap()
            .unwrap();
        let with = store.memories_with_vectors(ada).unwrap();
        assert_eq!(with.len(), 1);
        assert_eq!(with[0].1, vec![0.0, 1.0]);
        store.delete_memory(a.id).unwrap();
        assert!(!store.has_memories(ada).unwrap());
        assert!(store.has_memories(bob).unwrap());
        let events: Vec<_> = store
            .memory_history(a.id)
            .unwrap()
            .iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(
            events,
            [
                HistoryEvent::Add,
                HistoryEvent::Update,
                HistoryEvent::Delete
            ]
        );
        assert_eq!(store.forget_memories(bob).unwrap(), 1);
        assert_eq!(
            store.user_memory_history(bob, 10).unwrap()[0].event,
            HistoryEvent::ForgetAll
        );
    }

    #[test]
    fn sources_keep_the_document_shape_and_add_a_memory_kind() {
        use super::super::types::{DocumentId, Source, SourceOrigin};
        let doc = Source {
            n: 1,
            origin: SourceOrigin::Document {
                document_id: DocumentId::new(),
                filename: "a.pdf".into(),
                page: None,
                start: 0,
                end: 5,
            },
            score: 0.5,
            text: "hello".into(),
            below_threshold: false,
        };
        let json = serde_json::to_value(&doc).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "document_id",
                "end",
                "filename",
                "n",
                "page",
                "score",
                "start",
                "text",
                "type"
            ]
        );
        assert_eq!(json["type"], "document");
        assert_eq!(serde_json::from_value::<Source>(json).unwrap(), doc);
        let memory = Source {
            n: 2,
            origin: SourceOrigin::Memory { id: Uuid::now_v7() },
            score: 0.7,
            text: "User likes tea".into(),
            below_threshold: false,
        };
        let json = serde_json::to_value(&memory).unwrap();
        assert_eq!(json["type"], "memory");
        assert_eq!(json.as_object().unwrap().len(), 5, "{json}");
        assert_eq!(serde_json::from_value::<Source>(json).unwrap(), memory);
    }
}
