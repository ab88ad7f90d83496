//! The one mapping from errors to HTTP responses: status, stable `code`, message, and the
//! headers some statuses need (`Retry-After`, `Allow`).
//!
//! Body shape: `{"error":{"code":"...","message":"..."}}`. Codes are part of the public API;
//! messages are for people and may change. Filesystem paths and internal errors are never echoed
//! beyond a generic message (the log has the detail).

use http::StatusCode;
use serde_json::json;

use crate::chat::ChatError;
use crate::error_code::ErrorCode;
use crate::llm::LlmError;
use crate::memory::MemoryError;
use crate::models::user::AddError;
use crate::pool::PoolError;
use crate::store::StoreError;

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds, for 503s the client should retry.
    pub retry_after: Option<u32>,
    /// Allowed methods, for 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
            message,
        )
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                format!("this path allows {allow}"),
            )
        }
    }

    pub fn unavailable(code: ErrorCode, message: impl Into<String>, retry: u32) -> ApiError {
        ApiError {
            retry_after: Some(retry),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %message, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error; see the daemon log",
        )
    }

    /// The JSON body. File system paths in the message are cut to their last component.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": scrub_paths(&self.message)}})
    }
}

/// `text` with every absolute path (`/…`, `~/…`) cut to its last component: error text that
/// reaches a client (possibly a web page on the TCP listener) does not show where the user's
/// files live. The daemon's log keeps the whole message.
pub fn scrub_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for piece in text.split_inclusive(char::is_whitespace) {
        let word = piece.trim_end_matches(char::is_whitespace);
        let space = &piece[word.len()..];
        out.push_str(&scrub_word(word));
        out.push_str(space);
    }
    out
}

/// One whitespace-free word: a path starts at its beginning or after `=`, a quote, a backtick,
/// `(` or `:`, and ends before a closing quote, backtick, `)`, `,` or `;` (or a final `.`/`:`).
fn scrub_word(word: &str) -> String {
    const OPENERS: &[char] = &['=', '`', '\'', '"', '(', ':'];
    const CLOSERS: &[char] = &['`', '\'', '"', ')', ',', ';'];
    let starts_path = |rest: &str| rest.starts_with('/') || rest.starts_with("~/");
    let start = word.char_indices().find_map(|(i, _)| {
        let before = word[..i].chars().next_back();
        (starts_path(&word[i..]) && before.is_none_or(|c| OPENERS.contains(&c))).then_some(i)
    });
    let Some(start) = start else {
        return word.to_string();
    };
    let mut end = word[start..]
        .find(|c| CLOSERS.contains(&c))
        .map_or(word.len(), |i| start + i);
    while end > start + 1 && word[..end].ends_with(['.', ':']) {
        end -= 1;
    }
    let path = &word[start..end];
    let last = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|name| !name.is_empty() && *name != "~")
        .unwrap_or("…");
    format!("{}{last}{}", &word[..start], scrub_word(&word[end..]))
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::NotFound(what) => {
                ApiError::not_found(ErrorCode::NotFound, format!("{what} not found"))
            }
            StoreError::InUse(message) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::ManagedByWatch, message)
            }
            StoreError::Flush(_) | StoreError::Sled(_) => {
                tracing::error!(error = %err, "store failure");
                ApiError::unavailable(
                    ErrorCode::StoreUnavailable,
                    "the store cannot write right now",
                    5,
                )
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<LlmError> for ApiError {
    fn from(err: LlmError) -> ApiError {
        match err {
            LlmError::Loading => ApiError::unavailable(ErrorCode::ModelLoading, err.to_string(), 1),
            LlmError::QueueFull(_) => {
                ApiError::unavailable(ErrorCode::QueueFull, err.to_string(), 2)
            }
            LlmError::ShuttingDown => {
                ApiError::unavailable(ErrorCode::ShuttingDown, err.to_string(), 5)
            }
            LlmError::Unavailable(_) => {
                ApiError::unavailable(ErrorCode::ModelUnavailable, err.to_string(), 30)
            }
            // Client text is validated before it gets here and stored text is made renderable,
            // so a template that cannot render is the model's (or ours): never the client's 4xx.
            LlmError::Template(_) => ApiError::internal(err),
            LlmError::Inference(_) => ApiError::internal(err),
        }
    }
}

impl From<PoolError> for ApiError {
    fn from(err: PoolError) -> ApiError {
        let message = err.to_string();
        match err {
            PoolError::Unknown(_) => ApiError::not_found(ErrorCode::UnknownModel, message),
            PoolError::Changed(_) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::ModelChanged, message)
            }
            PoolError::Missing(_) => ApiError::unavailable(ErrorCode::ModelMissing, message, 30),
            PoolError::LoadFailed(_) => {
                ApiError::unavailable(ErrorCode::ModelUnavailable, message, 30)
            }
            PoolError::Busy(_) => ApiError::unavailable(ErrorCode::ModelBusy, message, 5),
            PoolError::ShuttingDown => ApiError::unavailable(ErrorCode::ShuttingDown, message, 5),
        }
    }
}

impl From<AddError> for ApiError {
    fn from(err: AddError) -> ApiError {
        let message = err.to_string();
        match err {
            AddError::BadName(_) | AddError::BadPath(_) => ApiError::invalid(message),
            AddError::NameTaken(_) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::ModelExists, message)
            }
            AddError::NotAModel { .. } => ApiError::bad_request(ErrorCode::InvalidModel, message),
            AddError::Io { err: io, .. } if io.kind() == std::io::ErrorKind::NotFound => {
                ApiError::not_found(ErrorCode::NotFound, message)
            }
            AddError::Io { .. } => ApiError::invalid(message),
            AddError::Store(err) => err.into(),
        }
    }
}

impl From<ChatError> for ApiError {
    fn from(err: ChatError) -> ApiError {
        match err {
            ChatError::ChatNotFound => {
                ApiError::not_found(ErrorCode::ChatNotFound, "chat not found")
            }
            ChatError::Invalid(msg) => ApiError::invalid(msg),
            ChatError::Busy => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::GenerationInProgress,
                "a reply is already being generated in this chat; cancel it or wait",
            ),
            ChatError::TooLong { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::MessageTooLong,
                err.to_string(),
            ),
            ChatError::Llm(err) => err.into(),
            ChatError::Model(err) => err.into(),
            ChatError::Store(err) => err.into(),
            ChatError::Retrieve(crate::chat::retrieve::RetrieveError::Store(err)) => err.into(),
            ChatError::Retrieve(err) => {
                ApiError::unavailable(ErrorCode::EmbedderUnavailable, err.to_string(), 5)
            }
        }
    }
}

impl From<MemoryError> for ApiError {
    fn from(err: MemoryError) -> ApiError {
        match err {
            MemoryError::Invalid(msg) => ApiError::invalid(msg),
            MemoryError::NotFound => {
                ApiError::not_found(ErrorCode::MemoryNotFound, "memory not found")
            }
            MemoryError::Store(err) => err.into(),
            MemoryError::Embed(err) => {
                ApiError::unavailable(ErrorCode::EmbedderUnavailable, err.to_string(), 5)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::scrub_paths;

    #[test]
    fn paths_are_cut_to_their_file_name() {
        assert_eq!(
            scrub_paths("model file /root/w/models/a.gguf is missing; fetch it with `HEARTH_MODELS_DIR=/root/w/models ./models/fetch chat`"),
            "model file a.gguf is missing; fetch it with `HEARTH_MODELS_DIR=models ./models/fetch chat`"
        );
        assert_eq!(
            scrub_paths("/tmp/x/y.pdf: cannot open (see '/var/log/z.log')."),
            "y.pdf: cannot open (see 'z.log')."
        );
        assert_eq!(
            scrub_paths("the watched file ~/notes/a.md; remove it"),
            "the watched file a.md; remove it"
        );
        // Not paths: relative paths, fractions, URLs' paths stay.
        assert_eq!(
            scrub_paths("1/2 of ./models/fetch"),
            "1/2 of ./models/fetch"
        );
        assert_eq!(scrub_paths("see /"), "see …");
        assert_eq!(scrub_paths("no paths here"), "no paths here");
    }
}
