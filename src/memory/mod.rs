//! Long-term memory: facts about a user, kept across chats, deduplicated, searchable, and audited.
//!
//! - [`Memories::remember`] stores a fact after two dedup steps: the same normalized text (a hash,
//!   checked again inside the store's transaction) is the same memory; an *inferred* fact whose
//!   embedding is at least [`SUPERSEDE_SCORE`] similar to an existing one supersedes it (an
//!   `update` with old and new text in the history), so "lives in Lisbon" followed by "lives in
//!   Porto" is one memory, not a contradiction. An *explicit* fact (the user or app said to store
//!   exactly this) never replaces another one by similarity alone: similarity cannot tell a
//!   rephrasing from a different fact about the same thing (an adversarial run saw 10 of 2,084
//!   explicit adds replace a different fact), so it is added, and the similar memories are
//!   returned for the client to offer a merge.
//! - [`Memories::recall`] finds the memories most similar to a new message: an exact dot-product
//!   scan over the user's vectors (a person has hundreds of memories, not millions).
//! - `extract` turns a chat message into facts with grammar-constrained output; `title` makes
//!   chat titles. Both run as background jobs (`crate::jobs`).
//!
//! Memories are strictly per user: every lookup starts from a user id, and no query crosses users.

pub mod extract;
pub mod title;

use crate::embed::{EmbedError, Embedder, Urgency};
use crate::store::{
    now_millis, Added, Memory, MemoryId, MemoryOrigin, MessageId, Millis, Source, SourceOrigin,
    Store, StoreError, UserId,
};

/// Cosine similarity above which a new fact replaces an existing one instead of being added.
/// all-MiniLM-L6-v2 puts rephrasings of one fact ("User lives in Lisbon" / "The user lives in
/// Lisbon.") at ~0.9+, a changed value of the same attribute ("... in Porto") at ~0.8, and
/// different facts about the same user below ~0.6.
pub const SUPERSEDE_SCORE: f32 = 0.8;
/// Memories recalled per message at most: they share the prompt with history and documents.
pub const RECALL_K: usize = 5;
/// Cosine similarity a memory needs to be recalled for a message (MiniLM: related ~0.4+).
pub const RECALL_MIN_SCORE: f32 = 0.3;
/// Similar memories listed with an explicit add at most (most similar first).
pub const MAX_SIMILAR_LISTED: usize = 5;
/// Longest memory text, in characters: a fact is a sentence, not a document.
pub const MAX_MEMORY_CHARS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("{0}")]
    Invalid(String),
    #[error("memory not found")]
    NotFound,
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Memories::remember`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    /// An existing similar memory now has the new text.
    Updated,
    /// The same fact was already known.
    Unchanged,
    /// Dropped: the user forgot all memories after the fact was learned.
    Discarded,
}

/// What [`Memories::remember`] did, with the memory it concerns (`None` when discarded).
#[derive(Debug, Clone)]
pub struct Remembered {
    pub change: Change,
    pub memory: Option<Memory>,
    /// For an explicit add: other memories at least [`SUPERSEDE_SCORE`] similar to it, with their
    /// scores, most similar first (at most [`MAX_SIMILAR_LISTED`]). Empty otherwise.
    pub similar: Vec<(Memory, f32)>,
}

impl Remembered {
    fn of(change: Change, memory: Option<Memory>) -> Remembered {
        Remembered {
            change,
            memory,
            similar: Vec::new(),
        }
    }
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
            Change::Discarded => "discarded",
        }
    }
}

/// The memory service; cheap to clone.
#[derive(Clone)]
pub struct Memories {
    store: Store,
    embedder: Embedder,
}

/// Lowercased words of `text` joined by single spaces: punctuation, case and spacing do not
/// make a different fact.
pub fn normalize(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The exact-dedup key of a text.
pub fn text_hash(text: &str) -> String {
    blake3::hash(normalize(text).as_bytes())
        .to_hex()
        .to_string()
}

/// Validates a memory text: trimmed, non-empty, bounded, no control characters.
pub fn clean(text: &str) -> Result<String, MemoryError> {
    let text = text.trim();
    if normalize(text).is_empty() {
        return Err(MemoryError::Invalid(
            "text: must contain a word".to_string(),
        ));
    }
    if text.chars().count() > MAX_MEMORY_CHARS {
        return Err(MemoryError::Invalid(format!(
            "text: must be at most {MAX_MEMORY_CHARS} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(MemoryError::Invalid(
            "text: must not contain control characters".to_string(),
        ));
    }
    Ok(text.to_string())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Memories {
    pub fn new(store: Store, embedder: Embedder) -> Memories {
        Memories { store, embedder }
    }

    async fn embed_one(&self, text: &str, urgency: Urgency) -> Result<Vec<f32>, MemoryError> {
        self.embedder
            .embed(vec![text.to_string()], urgency)
            .await?
            .pop()
            .ok_or_else(|| MemoryError::Invalid("the embedder returned nothing".into()))
    }

    /// Stores a fact for `user` with dedup (see the module docs). `urgency` is `Query` for a
    /// request someone waits on, `Ingest` for background extraction. `learned_at` is when the
    /// user said what the fact was inferred from (`None` for a fact given now): if they have
    /// forgotten all memories since, the fact is [`Change::Discarded`] and `None` returned.
    pub async fn remember(
        &self,
        user: UserId,
        text: &str,
        origin: MemoryOrigin,
        source: Option<MessageId>,
        urgency: Urgency,
        learned_at: Option<Millis>,
    ) -> Result<Remembered, MemoryError> {
        let text = clean(text)?;
        let hash = text_hash(&text);
        let existing = self.store.memories_with_vectors(user)?;
        if let Some((same, _)) = existing.iter().find(|(m, _)| m.hash == hash) {
            return Ok(Remembered::of(Change::Unchanged, Some(same.clone())));
        }
        let vector = self.embed_one(&text, urgency).await?;
        let mut similar: Vec<(&Memory, f32)> = existing
            .iter()
            .map(|(m, v)| (m, dot(v, &vector)))
            .filter(|(_, score)| *score >= SUPERSEDE_SCORE)
            .collect();
        similar.sort_by(|a, b| b.1.total_cmp(&a.1));
        let inferred = matches!(origin, MemoryOrigin::Inferred);
        if let (true, Some((old, _))) = (inferred, similar.first()) {
            return Ok(
                match self
                    .store
                    .update_memory(old.id, &text, &hash, &vector, source, learned_at)?
                {
                    Some(updated) => Remembered::of(Change::Updated, Some(updated)),
                    None => Remembered::of(Change::Discarded, None),
                },
            );
        }
        let similar: Vec<(Memory, f32)> = similar
            .into_iter()
            .take(MAX_SIMILAR_LISTED)
            .map(|(m, score)| (m.clone(), score))
            .collect();
        let now = now_millis();
        let memory = Memory {
            id: uuid::Uuid::now_v7(),
            user_id: user,
            text,
            hash,
            origin,
            source_message_id: source,
            created_at: now,
            updated_at: now,
        };
        let (change, memory) = match self.store.add_memory(&memory, &vector, learned_at)? {
            Added::Created(m) => (Change::Added, Some(m)),
            Added::Exists(m) => (Change::Unchanged, Some(m)),
            Added::Forgotten => (Change::Discarded, None),
        };
        Ok(Remembered {
            change,
            memory,
            similar,
        })
    }

    /// Replaces a memory's text as the user edited it (no dedup: the user said so).
    pub async fn edit(&self, id: MemoryId, text: &str) -> Result<Memory, MemoryError> {
        let text = clean(text)?;
        if self.store.memory(id)?.is_none() {
            return Err(MemoryError::NotFound);
        }
        let vector = self.embed_one(&text, Urgency::Query).await?;
        match self
            .store
            .update_memory(id, &text, &text_hash(&text), &vector, None, None)
        {
            Ok(Some(memory)) => Ok(memory),
            // Not reachable without `learned_at`, but never a panic.
            Ok(None) | Err(StoreError::NotFound(_)) => Err(MemoryError::NotFound),
            Err(other) => Err(other.into()),
        }
    }

    /// The user's memories most similar to `query`, best first, with their scores.
    pub async fn search(
        &self,
        user: UserId,
        query: &str,
        k: usize,
        min_score: f32,
    ) -> Result<Vec<(Memory, f32)>, MemoryError> {
        if !self.store.has_memories(user)? {
            return Ok(Vec::new());
        }
        let vector = self.embed_one(query, Urgency::Query).await?;
        // Reading every memory of the user and scoring it is blocking work: off the runtime.
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut hits: Vec<(Memory, f32)> = store
                .memories_with_vectors(user)?
                .into_iter()
                .map(|(m, v)| {
                    let score = dot(&v, &vector);
                    (m, score)
                })
                .filter(|(_, score)| *score >= min_score)
                .collect();
            hits.sort_by(|a, b| b.1.total_cmp(&a.1));
            hits.truncate(k);
            Ok(hits)
        })
        .await
        .map_err(|err| {
            MemoryError::Store(crate::store::StoreError::Corrupt(format!(
                "memory search task failed: {err}"
            )))
        })?
    }

    /// Memories for a chat turn as sources, numbered from `first_n`. A user without memories
    /// costs one key read (no embedding).
    pub async fn recall(
        &self,
        user: UserId,
        query: &str,
        first_n: u32,
    ) -> Result<Vec<Source>, MemoryError> {
        let hits = self.search(user, query, RECALL_K, RECALL_MIN_SCORE).await?;
        Ok(hits
            .into_iter()
            .zip(first_n..)
            .map(|((memory, score), n)| Source {
                n,
                origin: SourceOrigin::Memory { id: memory.id },
                score,
                text: memory.text,
                below_threshold: false,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_ignores_case_punctuation_and_spacing() {
        assert_eq!(
            normalize("  User LIVES in   Lisbon. "),
            "user lives in lisbon"
        );
        assert_eq!(
            text_hash("User lives in Lisbon"),
            text_hash("user lives in lisbon!")
        );
        assert_ne!(
            text_hash("User lives in Lisbon"),
            text_hash("User lives in Porto")
        );
        assert!(clean(" ... ").is_err());
        assert!(clean("a\u{7}b").is_err());
        assert_eq!(clean("  Likes tea ").unwrap(), "Likes tea");
    }
}
