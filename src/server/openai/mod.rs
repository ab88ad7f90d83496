//! The OpenAI-compatible surface under `/v1`, on the same listeners as `/api/v1` (Unix socket,
//! named pipe, token-guarded loopback TCP), stateless: nothing a `/v1` call sends is stored.
//!
//! Requests are parsed strictly (an unknown field is a 400 naming it, as OpenAI does) into the
//! engine's own types (`chat::complete`, the embedder, the model list), and answers are written
//! in OpenAI's shapes, errors included: `{"error":{"message","type","param","code"}}`.

mod chat;
mod embeddings;
mod models;
mod tools;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::error::ApiError;
use super::respond::{json_response, ResBody};
use super::App;
use crate::error_code::ErrorCode;

/// The path prefix of the OpenAI surface.
pub(super) const PREFIX: &str = "/v1/";

/// Every `/v1` request.
pub(super) async fn route(
    app: &App,
    req: Request<Incoming>,
    received: std::time::Instant,
) -> Result<Response<ResBody>, ApiError> {
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').collect();
    let method = req.method().clone();
    match segments.as_slice() {
        ["chat", "completions"] => match method {
            Method::POST => chat::chat_completions(app, req, received).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["completions"] => match method {
            Method::POST => chat::completions(app, req, received).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["embeddings"] => match method {
            Method::POST => embeddings::embeddings(app, req).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["models"] => match method {
            Method::GET => models::list(app).await,
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["models", id] => match method {
            Method::GET => models::get(app, id).await,
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        _ => Err(ApiError::not_found(
            ErrorCode::NoRoute,
            format!("no OpenAI-compatible route {path}"),
        )),
    }
}

/// An error in OpenAI's shape. `type` follows OpenAI's classes; `code` is hearth's code, except
/// that an unknown model is OpenAI's `model_not_found`; `param` names the field when one is at
/// fault.
pub(super) fn error_response(err: &ApiError) -> Response<ResBody> {
    let kind = match err.status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::NOT_FOUND => "invalid_request_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        s if s.is_client_error() => "invalid_request_error",
        _ => "server_error",
    };
    let code = match err.code {
        ErrorCode::UnknownModel => "model_not_found",
        ErrorCode::MessageTooLong => "context_length_exceeded",
        other => other.as_str(),
    };
    // A wrong-shape body (422 on /api/v1) is a 400 for OpenAI clients.
    let status = if err.status == StatusCode::UNPROCESSABLE_ENTITY
        || err.status == StatusCode::PAYLOAD_TOO_LARGE && err.code == ErrorCode::MessageTooLong
    {
        StatusCode::BAD_REQUEST
    } else {
        err.status
    };
    let body = err.body();
    let message = body["error"]["message"].clone();
    let mut response = json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param_of(&message), "code": code}}),
    );
    if let Some(secs) = err.retry_after {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    if let Some(allow) = err.allow {
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    }
    response
}

/// The field an error message is about: `unknown field `x`…` and `x: …` messages name it.
fn param_of(message: &serde_json::Value) -> serde_json::Value {
    let Some(text) = message.as_str() else {
        return serde_json::Value::Null;
    };
    if let Some(rest) = text.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            return json!(&rest[..end]);
        }
    }
    match text.split_once(": ") {
        Some((field, _))
            if !field.is_empty()
                && field
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']')) =>
        {
            json!(field)
        }
        _ => serde_json::Value::Null,
    }
}
