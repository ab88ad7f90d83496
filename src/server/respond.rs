//! Response helpers every handler uses: JSON bodies, the error body (with `Retry-After` and
//! `Allow` where the error has them), and SSE responses.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::sse::{SseBody, SseEvent};

pub(super) type ResBody = UnsyncBoxBody<Bytes, Infallible>;

pub(super) fn json_response(status: StatusCode, value: &impl Serialize) -> Response<ResBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(super) fn ok(value: &impl Serialize) -> Result<Response<ResBody>, ApiError> {
    Ok(json_response(StatusCode::OK, value))
}

pub(super) fn error_response(err: &ApiError) -> Response<ResBody> {
    let mut response = json_response(err.status, &err.body());
    if let Some(secs) = err.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(allow) = err.allow {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}

pub(super) fn sse_response<T: Into<SseEvent> + Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> Response<ResBody> {
    let mut response = Response::new(SseBody::new(rx).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
