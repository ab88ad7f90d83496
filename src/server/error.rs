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

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
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
            LlmError::Template(_) => ApiError::invalid(err.to_string()),
            LlmError::Inference(_) => ApiError::internal(err),
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
