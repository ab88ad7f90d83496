//! The one closed vocabulary of error codes: every `{"error":{"code"}}` body, every stream `error`
//! event, every start-up error line, every drop-folder file's `reason`, and what the CLI decides
//! on. A code is part of the public API; its message is for people and may change.
//!
//! One list defines the variants, their wire names and [`ErrorCode::ALL`], so a code cannot exist
//! in one place and be missing in another (`tests/it/tidy.rs` checks README's error table against
//! `ALL`). Where a code is used decides its HTTP status (`server/error.rs`); here are only its
//! name and the two questions callers ask of it: is it a skip, is it worth retrying.

use std::fmt;

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// A stable, machine-readable error code (serialized in snake_case).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }
        }
    };
}

error_codes! {
    // --- requests (400, 401, 403, 404, 405, 409, 413, 415, 422)
    InvalidJson = "invalid_json",
    InvalidUtf8 = "invalid_utf8",
    EmptyBody = "empty_body",
    BadBody = "bad_body",
    InvalidId = "invalid_id",
    BadContentLength = "bad_content_length",
    BadMultipart = "bad_multipart",
    /// A JSON body field the endpoint does not know (a misspelling is never silently ignored).
    UnknownField = "unknown_field",
    Unauthorized = "unauthorized",
    BadHost = "bad_host",
    OriginNotAllowed = "origin_not_allowed",
    /// An endpoint that only the local socket serves (`POST /api/v1/shutdown`).
    LocalOnly = "local_only",
    NoRoute = "no_route",
    NotFound = "not_found",
    UserNotFound = "user_not_found",
    ChatNotFound = "chat_not_found",
    DocumentNotFound = "document_not_found",
    MemoryNotFound = "memory_not_found",
    MethodNotAllowed = "method_not_allowed",
    GenerationInProgress = "generation_in_progress",
    ManagedByWatch = "managed_by_watch",
    BodyTooLarge = "body_too_large",
    /// A request body that did not arrive in time (JSON) or at the minimum rate (uploads): 408.
    BodyTimeout = "body_timeout",
    MessageTooLong = "message_too_long",
    UnsupportedMediaType = "unsupported_media_type",
    InvalidRequest = "invalid_request",
    /// A file added as a model is not a usable GGUF (no magic, a hostile or truncated header).
    InvalidModel = "invalid_model",
    /// A model name that one of the models hearth ships already has.
    ModelExists = "model_exists",
    /// A pinned model file whose bytes changed since it was added: refused, never parsed.
    ModelChanged = "model_changed",
    // --- the daemon's state (500, 503)
    Internal = "internal",
    ModelLoading = "model_loading",
    QueueFull = "queue_full",
    ModelUnavailable = "model_unavailable",
    /// Every loaded model is generating and no more may be loaded (`max_loaded_models`).
    ModelBusy = "model_busy",
    EmbedderUnavailable = "embedder_unavailable",
    StoreUnavailable = "store_unavailable",
    ShuttingDown = "shutting_down",
    // --- inside a stream
    InferenceFailed = "inference_failed",
    // --- documents (upload `error` events, drop-folder file reasons)
    UnsupportedFormat = "unsupported_format",
    EmptyDocument = "empty_document",
    CorruptDocument = "corrupt_document",
    FileTooLarge = "file_too_large",
    ExtractionTimeout = "extraction_timeout",
    /// The extraction worker hit its memory or CPU limit on this file.
    ExtractResourceLimit = "extract_resource_limit",
    /// The extraction worker died (or its parser panicked) on this file; retried later.
    ExtractCrashed = "extract_crashed",
    EmbeddingFailed = "embedding_failed",
    // --- drop-folder files only
    Symlink = "symlink",
    /// A watched file with more than one hard link (its content may live outside the folder).
    Hardlink = "hardlink",
    /// A watched folder nested deeper than the scan goes (`library::access::MAX_DEPTH`).
    TooDeep = "too_deep",
    /// A watched folder was deleted (`GET /library` `watcher_error.code`; files kept).
    RootMissing = "root_missing",
    /// A watched folder was moved away from its path (not read at its new place).
    RootMoved = "root_moved",
    /// Another folder is at a watched path now (re-opened and rescanned).
    RootReplaced = "root_replaced",
    NotRegularFile = "not_regular_file",
    OutsideRoot = "outside_root",
    /// Over `watch_max_file_bytes`: skipped without being read.
    TooLarge = "too_large",
    EmptyFile = "empty_file",
    ReadError = "read_error",
    // --- start-up (the sidecar's error line, `hearth serve`'s exit)
    InvalidConfig = "invalid_config",
    RuntimeFailed = "runtime_failed",
    DataDir = "data_dir",
    AlreadyRunning = "already_running",
    UnknownModel = "unknown_model",
    ModelMissing = "model_missing",
    WatchFailed = "watch_failed",
    BindFailed = "bind_failed",
    TcpToken = "tcp_token",
    StdoutClosed = "stdout_closed",
    ShutdownFailed = "shutdown_failed",
}

impl ErrorCode {
    /// The code of a wire name; `None` for a name that is not ours.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        // Stored before the codes were one vocabulary (drop-folder records in old stores).
        if text == "store_failed" {
            return Some(ErrorCode::StoreUnavailable);
        }
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == text)
    }

    /// "Not a document" rather than a failure: the input is what it is, retrying changes
    /// nothing, and a batch (`hearth ingest`, the drop folder) counts it as skipped.
    pub fn is_skip(self) -> bool {
        matches!(
            self,
            ErrorCode::UnsupportedFormat
                | ErrorCode::EmptyDocument
                | ErrorCode::FileTooLarge
                | ErrorCode::BodyTooLarge
                | ErrorCode::Symlink
                | ErrorCode::Hardlink
                | ErrorCode::TooDeep
                | ErrorCode::NotRegularFile
                | ErrorCode::OutsideRoot
                | ErrorCode::TooLarge
                | ErrorCode::EmptyFile
        )
    }

    /// The cause was not the input: the same request may succeed later (the drop folder retries
    /// these files at its next scan).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::ModelLoading
                | ErrorCode::ModelBusy
                | ErrorCode::QueueFull
                | ErrorCode::EmbedderUnavailable
                | ErrorCode::EmbeddingFailed
                | ErrorCode::StoreUnavailable
                | ErrorCode::ShuttingDown
                | ErrorCode::ReadError
                | ErrorCode::ExtractionTimeout
                | ErrorCode::ExtractCrashed
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ErrorCode::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_snake_case_unique_and_round_trips_through_serde() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(
                text.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{text}"
            );
            assert!(seen.insert(text), "{text} twice");
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), *code);
        }
        assert!(serde_json::from_str::<ErrorCode>("\"nope\"").is_err());
        // Records written before the vocabulary was closed still read.
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"store_failed\"").unwrap(),
            ErrorCode::StoreUnavailable
        );
    }

    #[test]
    fn a_skip_is_never_transient() {
        for code in ErrorCode::ALL {
            assert!(!(code.is_skip() && code.is_transient()), "{code}");
        }
        assert!(ErrorCode::BodyTooLarge.is_skip());
        assert!(ErrorCode::StoreUnavailable.is_transient());
    }
}
