//! Daemon-wide notifications for UIs: what background work did (a watched file was queued,
//! indexed, failed or removed; a chat got a title). Served as `GET /api/v1/events` (SSE).
//!
//! Why a broadcast channel and not a log: events are hints that tell a UI to refresh; the state
//! itself is always readable from the API (`/library/files`, `/chats/{id}`). A subscriber that
//! falls more than [`CAPACITY`] events behind is told how many it missed (`lagged`) instead of
//! slowing the producers down: background work never waits for a UI.

use tokio::sync::broadcast;

use crate::store::{ChatId, DocumentId, MessageId, Millis, UserId};

/// Events buffered per subscriber before it counts as lagging.
pub const CAPACITY: usize = 1024;

/// One notification. `name()` is the SSE event name; `server` writes its data (the wire shape
/// lives there, with the other JSON shapes).
#[derive(Clone, Debug)]
pub enum Event {
    /// A watched file changed and waits for ingestion.
    FileQueued { path: String, size: u64 },
    /// A watched file is searchable (or its new version is).
    FileIndexed {
        path: String,
        document_id: DocumentId,
        chunks: u32,
        /// True when no embedding was computed: the same content was already indexed (a rename,
        /// a move, or a copy).
        reused: bool,
        indexed_at: Millis,
    },
    /// A watched file could not be ingested (`state` is `failed`) or is not ingested on purpose
    /// (`skipped`); `reason` is a stable code, `message` the detail.
    FileFailed {
        path: String,
        state: &'static str,
        reason: crate::error_code::ErrorCode,
        message: String,
    },
    /// A watched file is gone from the folder, and from search.
    FileRemoved { path: String },
    /// A watched folder changed identity (`code`: `root_missing`, `root_moved`,
    /// `root_replaced`) or is back as it was (`code` absent).
    WatchRoot {
        root: String,
        code: Option<crate::error_code::ErrorCode>,
        message: String,
    },
    /// A chat's title was set by the title job.
    Title { chat_id: ChatId, title: String },
    /// A memory extraction job finished (also when it stored nothing or failed).
    MemoryExtracted(ExtractReport),
}

/// What a finished extraction did; sent as `event: memory_extracted`.
#[derive(Clone, Debug)]
pub struct ExtractReport {
    pub user_id: UserId,
    pub chat_id: Option<ChatId>,
    pub message_id: Option<MessageId>,
    /// `ok`, `skipped` (nothing about the user in the message, or the user forgot all memories
    /// after sending it; the model was not asked) or `failed` (recorded in the memory history
    /// with the reason).
    pub status: &'static str,
    pub facts: Vec<String>,
    pub added: u32,
    pub updated: u32,
    pub unchanged: u32,
    /// Facts dropped because the user forgot all memories while the job ran.
    pub discarded: u32,
    /// Facts dropped because they only repeat a memory that was recalled into the turn's prompt
    /// (a recalled fact must not be learned again from the conversation it was recalled into).
    pub known: u32,
    pub error: Option<String>,
    pub queued_at: Millis,
    pub started_at: Millis,
    pub finished_at: Millis,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::FileQueued { .. } => "file_queued",
            Event::FileIndexed { .. } => "file_indexed",
            Event::FileFailed { .. } => "file_failed",
            Event::FileRemoved { .. } => "file_removed",
            Event::WatchRoot { .. } => "watch_root",
            Event::Title { .. } => "title",
            Event::MemoryExtracted(_) => "memory_extracted",
        }
    }
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    pub fn new() -> Events {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }

    /// Publishes to every current subscriber; with none, the event is dropped.
    pub fn emit(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_events_and_hear_when_they_lagged() {
        let events = Events::new();
        let mut rx = events.subscribe();
        events.emit(Event::FileRemoved {
            path: "a.md".into(),
        });
        let got = rx.recv().await.unwrap();
        assert_eq!(got.name(), "file_removed");
        // The wire shape is `server`'s (and tested through the API).
        assert!(matches!(&got, Event::FileRemoved { path } if path == "a.md"));
        for i in 0..CAPACITY + 5 {
            events.emit(Event::FileRemoved {
                path: format!("{i}"),
            });
        }
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 5),
            other => panic!("expected lagged, got {other:?}"),
        }
    }
}
