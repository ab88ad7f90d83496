//! Background jobs (titles, memory extraction), persisted until done so a restart resumes them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::codec::{decode, encode};
use super::types::{ChatId, MessageId, Millis, UserId};
use super::{Store, StoreError};

/// A background job's id (UUIDv7: the queue runs oldest first).
pub type JobId = Uuid;

/// One unit of background work, persisted until done so a restart resumes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BgJob {
    pub id: JobId,
    pub kind: BgJobKind,
    /// Runs started and not finished (interrupted by shutdown or a crash, or failed).
    pub attempts: u32,
    pub queued_at: Millis,
    /// The chat model the work came from (absent in jobs stored before models could differ:
    /// they run on the background or default model).
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BgJobKind {
    /// Title a chat after its first exchange, from the user's first message.
    Title { chat_id: ChatId, message: String },
    /// Extract durable facts about the user from one of their messages (or from a text posted
    /// to the memories endpoint with `infer: true`, which has no chat).
    Memory {
        user_id: UserId,
        chat_id: Option<ChatId>,
        message_id: Option<MessageId>,
        message: String,
        /// The memories recalled into the prompt of that message's turn: the extractor is told
        /// they are known, and a fact that only repeats one is not learned again (absent in
        /// jobs stored before this existed).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        recalled: Vec<crate::store::MemoryId>,
    },
}

impl Store {
    pub fn put_bg_job(&self, job: &BgJob) -> Result<(), StoreError> {
        self.inner.bg_jobs.insert(job.id.as_bytes(), encode(job))?;
        Ok(())
    }

    pub fn remove_bg_job(&self, id: JobId) -> Result<(), StoreError> {
        self.inner.bg_jobs.remove(id.as_bytes())?;
        Ok(())
    }

    /// Pending jobs, oldest first.
    pub fn bg_jobs(&self) -> Result<Vec<BgJob>, StoreError> {
        self.inner
            .bg_jobs
            .iter()
            .map(|entry| decode(&entry?.1))
            .collect()
    }
}
