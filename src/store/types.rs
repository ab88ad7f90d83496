//! Records kept in the store and their typed ids.
//!
//! Ids are UUIDv7: sortable by creation time, generated without coordination, and parsed from
//! request strings into these newtypes at the edge so nothing unvalidated reaches a key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The 16 key bytes (big-endian, so keys sort by creation time).
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// When the id was made (UUIDv7 carries its creation time in milliseconds).
            pub fn created_millis(&self) -> Option<Millis> {
                let (secs, nanos) = self.0.get_timestamp()?.to_unix();
                Some(secs * 1000 + u64::from(nanos / 1_000_000))
            }

            /// Parses key bytes back into an id.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                Uuid::from_slice(bytes).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

id_type!(
    /// A user.
    UserId
);
id_type!(
    /// A chat.
    ChatId
);
id_type!(
    /// A message in a chat.
    MessageId
);

/// Milliseconds since the Unix epoch (what every timestamp in the store is).
pub type Millis = u64;

/// Now, in [`Millis`].
pub fn now_millis() -> Millis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub created_at: Millis,
}

/// Per-user generation settings. Ranges are checked by [`Settings::validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    /// 0 disables min-p.
    pub min_p: f32,
    /// 1.0 disables the penalty.
    pub repeat_penalty: f32,
    pub max_tokens: u32,
    /// `None` picks a random seed per request.
    pub seed: Option<u32>,
    pub system_prompt: String,
    /// Long-term memory: learn facts from this user's messages and recall them in replies.
    /// Off until the user turns it on (absent in settings stored before it existed).
    #[serde(default)]
    pub use_memory: bool,
    /// The chat model this user's replies use; `None` is the daemon's default model.
    #[serde(default)]
    pub model: Option<String>,
    pub updated_at: Millis,
}

/// Upper bound of `max_tokens`: far beyond what the default context holds; the context size is
/// the real limit and generation stops with `length` when it is reached.
pub const MAX_TOKENS_LIMIT: u32 = 32768;
/// Upper bound of a model name in settings (names are at most 64 characters; see
/// `models::user::MAX_NAME_CHARS`).
pub const MAX_MODEL_NAME_BYTES: usize = 256;
/// Upper bound of the system prompt in bytes; it is sent with every request.
pub const MAX_SYSTEM_PROMPT_BYTES: usize = 16 * 1024;
/// The largest chunk in bytes, whatever its token count. Tokens alone do not bound text: the
/// embedder's WordPiece tokenizer turns any run longer than 100 characters without a break into a
/// single `[UNK]`, so 100 KB (or 20 MB) with no whitespace counted as 3 tokens and became one
/// chunk, one search hit and one prompt excerpt of that size. 4 KiB is ~3× what 256 tokens of
/// English take (~1.2 KB) and ~5× for CJK (3 bytes per token), so ordinary text is still cut by
/// tokens; only break-less runs meet this cap, and are cut at it (on a character boundary).
/// `ingest` cuts chunks to it; `index` cuts the hits of chunks stored before the cap existed.
pub const MAX_CHUNK_BYTES: usize = 4096;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            min_p: 0.05,
            repeat_penalty: 1.1,
            max_tokens: 1024,
            seed: None,
            system_prompt: "You are a helpful assistant.".to_string(),
            use_memory: false,
            model: None,
            updated_at: 0,
        }
    }
}

impl Settings {
    /// Returns the first out-of-range field as `(field, reason)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        fn range(
            name: &'static str,
            v: f32,
            lo: f32,
            hi: f32,
        ) -> Result<(), (&'static str, String)> {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err((name, format!("must be between {lo} and {hi}")))
            }
        }
        range("temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", self.top_p, 0.0, 1.0)?;
        range("min_p", self.min_p, 0.0, 1.0)?;
        range("repeat_penalty", self.repeat_penalty, 0.5, 2.0)?;
        if self.top_k > 1000 {
            return Err(("top_k", "must be between 0 and 1000".into()));
        }
        if self.max_tokens == 0 || self.max_tokens > MAX_TOKENS_LIMIT {
            return Err((
                "max_tokens",
                format!("must be between 1 and {MAX_TOKENS_LIMIT}"),
            ));
        }
        if self.system_prompt.len() > MAX_SYSTEM_PROMPT_BYTES {
            return Err((
                "system_prompt",
                format!("must be at most {MAX_SYSTEM_PROMPT_BYTES} bytes"),
            ));
        }
        if self.system_prompt.contains('\0') {
            return Err(("system_prompt", "must not contain NUL characters".into()));
        }
        if let Some(model) = &self.model {
            if model.is_empty() || model.len() > MAX_MODEL_NAME_BYTES {
                return Err((
                    "model",
                    format!("must be 1 to {MAX_MODEL_NAME_BYTES} bytes"),
                ));
            }
        }
        Ok(())
    }
}

/// The title a chat gets when none is given; later, background titling replaces only this.
pub const DEFAULT_CHAT_TITLE: &str = "New Chat";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chat {
    pub id: ChatId,
    pub user_id: UserId,
    pub title: String,
    /// True once a user set the title; automatic titles never overwrite it.
    pub title_by_user: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub message_count: u64,
    /// Sequence number for the next message key (messages are keyed chat ‖ seq).
    pub next_seq: u64,
    /// Where the chat's messages look for context when a message names no mode (absent in
    /// chats stored before it existed: `normal`).
    #[serde(default)]
    pub search_mode: SearchMode,
}

/// Where a turn looks for context.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// No document retrieval; long-term memories when memory is on.
    #[default]
    Normal,
    /// The chat's documents and the library only.
    Docs,
    /// Documents and long-term memories.
    All,
}

impl SearchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Normal => "normal",
            SearchMode::Docs => "docs",
            SearchMode::All => "all",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The model ended its turn.
    Stop,
    /// `max_tokens` or the context size was reached.
    Length,
    /// A cancel request, a client disconnect or shutdown stopped it.
    Cancelled,
    /// Inference failed part-way; the text is what was produced before.
    Error,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub chat_id: ChatId,
    pub seq: u64,
    pub role: Role,
    pub content: String,
    pub created_at: Millis,
    /// Assistant replies only.
    pub finish_reason: Option<FinishReason>,
    /// Assistant replies only.
    pub usage: Option<Usage>,
    /// Assistant replies only: the passages given to the model as context.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Source>,
}

id_type!(
    /// A document (an uploaded or watched file's extracted content).
    DocumentId
);

/// Where a document is searchable: one chat, or the shared library.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    Chat(ChatId),
    Library,
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "library" {
            return Ok(Scope::Library);
        }
        match s.strip_prefix("chat:").map(str::parse::<ChatId>) {
            Some(Ok(id)) => Ok(Scope::Chat(id)),
            _ => Err(format!(
                "'{s}' is not a scope (\"chat:<chat id>\" or \"library\")"
            )),
        }
    }
}

impl TryFrom<String> for Scope {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Scope> for String {
    fn from(scope: Scope) -> String {
        scope.to_string()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Chat(id) => write!(f, "chat:{id}"),
            Scope::Library => f.write_str("library"),
        }
    }
}

impl Scope {
    /// Key prefix: the scope's text and a 0 byte (no scope text contains one).
    pub fn key_prefix(&self) -> Vec<u8> {
        let mut key = self.to_string().into_bytes();
        key.push(0);
        key
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: DocumentId,
    pub scope: Scope,
    pub filename: String,
    /// Detected format (`pdf`, `docx`, `markdown`, ...).
    pub format: String,
    pub size: u64,
    /// blake3 of the bytes, hex: the same bytes in the same scope are one document.
    pub content_hash: String,
    pub chunk_count: u32,
    /// Pages, for paged formats.
    pub pages: Option<u32>,
    /// The embedding model the vectors were made with.
    pub model_id: String,
    pub created_at: Millis,
}

/// One chunk of a document's text, as retrieved and cited.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub text: String,
    pub page: Option<u32>,
    pub heading_path: Vec<String>,
    /// Byte offsets into the document's extracted text.
    pub start: u64,
    pub end: u64,
}

/// A retrieved passage used as context for a reply, as the client sees it and as stored with the
/// reply: a document excerpt or a long-term memory (`"type"` tells which).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The number the prompt cites it by (`[n]`).
    pub n: u32,
    #[serde(flatten)]
    pub origin: SourceOrigin,
    pub score: f32,
    pub text: String,
    /// Scored under the relevance cut-off, and given anyway because the chat's few documents
    /// had nothing better for a question about them (absent when false; older records lack it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub below_threshold: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceOrigin {
    Document {
        document_id: DocumentId,
        filename: String,
        page: Option<u32>,
        start: u64,
        end: u64,
    },
    Memory {
        id: uuid::Uuid,
    },
}
