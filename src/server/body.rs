//! Reading request bodies and query strings into typed values, with the size limit enforced
//! while reading and every failure turned into a precise 4xx.
//!
//! Time is bounded too: a JSON body must arrive within `body_timeout`, and an upload must keep
//! an average rate ([`Pace`]); otherwise 408 `body_timeout`, and hyper closes the connection (its
//! body was not read to the end), which frees the connection slot a slow client was holding.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::config::ServerConfig;
use crate::error_code::ErrorCode;

/// The 408 of a body that did not arrive in time.
pub(super) fn body_timeout(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::BodyTimeout,
        format!("the request body did not arrive in time ({what})"),
    )
}

/// The deadline of a streamed upload: it may take `grace + received / rate` in all, so it must
/// average `rate` bytes per second once the grace is used up, and a stall ends it.
pub(super) struct Pace {
    started: tokio::time::Instant,
    grace: std::time::Duration,
    bytes_per_sec: u64,
    received: u64,
}

impl Pace {
    pub(super) fn new(config: &ServerConfig) -> Pace {
        Pace {
            started: tokio::time::Instant::now(),
            grace: config.body_timeout,
            bytes_per_sec: config.min_upload_bytes_per_sec.max(1),
            received: 0,
        }
    }

    /// When the next piece must have arrived by.
    pub(super) fn deadline(&self) -> tokio::time::Instant {
        let earned =
            std::time::Duration::from_secs_f64(self.received as f64 / self.bytes_per_sec as f64);
        self.started + self.grace + earned
    }

    pub(super) fn received(&mut self, bytes: usize) {
        self.received += bytes as u64;
    }
}

/// The error a paced stream ends with; `multer` hands it back inside its own error.
#[derive(Debug, thiserror::Error)]
#[error("the upload was slower than the minimum rate")]
pub(super) struct TooSlow;

/// Reads a JSON body of at most `limit` bytes into `T`.
///
/// - a `Content-Type` other than JSON → 415 (a missing one is accepted: curl users forget it);
/// - a declared or actual size above `limit` → 413, without buffering more than `limit`;
/// - bytes that are not UTF-8 → 400 `invalid_utf8`; bad JSON syntax → 400 `invalid_json`;
/// - valid JSON of the wrong shape (missing field, wrong type, unknown field) → 422;
/// - a body not complete within `body_timeout` → 408 `body_timeout`.
pub async fn json<T: DeserializeOwned>(
    req: Request<Incoming>,
    config: &ServerConfig,
) -> Result<T, ApiError> {
    let limit = config.max_body_bytes;
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if essence != "application/json" {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "expected Content-Type: application/json",
            ));
        }
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BodyTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    };
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        let len = len
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request(ErrorCode::BadContentLength, "invalid Content-Length")
            })?;
        if len > limit {
            return Err(too_large());
        }
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let read = Limited::new(req.into_body(), limit_usize).collect();
    let Ok(read) = tokio::time::timeout(config.body_timeout, read).await else {
        return Err(body_timeout(&format!(
            "{} s for a JSON body",
            config.body_timeout.as_secs()
        )));
    };
    let bytes = match read {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(err) => {
            return Err(ApiError::bad_request(
                ErrorCode::BadBody,
                format!("cannot read the request body: {err}"),
            ))
        }
    };
    parse(&bytes)
}

/// Parses JSON bytes into `T` with the error mapping described on [`json`].
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::EmptyBody,
            "expected a JSON body",
        ));
    }
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidUtf8,
            "request body is not valid UTF-8",
        ));
    }
    serde_json::from_slice(bytes).map_err(|err| match err.classify() {
        // serde's `deny_unknown_fields` message: "unknown field `x`, expected one of ...".
        serde_json::error::Category::Data if err.to_string().starts_with("unknown field `") => {
            ApiError::bad_request(ErrorCode::UnknownField, err.to_string())
        }
        serde_json::error::Category::Data => ApiError::invalid(err.to_string()),
        _ => ApiError::bad_request(ErrorCode::InvalidJson, format!("malformed JSON: {err}")),
    })
}

/// Parses a query string into `T` (e.g. `limit=10&before=...`).
pub fn query<T: DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    let pairs: serde_json::Map<String, serde_json::Value> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let value = match v.parse::<u64>() {
                Ok(n) => serde_json::Value::from(n),
                Err(_) => serde_json::Value::from(percent_decode(v)),
            };
            (percent_decode(k), value)
        })
        .collect();
    serde_json::from_value(serde_json::Value::Object(pairs))
        .map_err(|err| ApiError::invalid(format!("query: {err}")))
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi * 16 + lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Validates a user-supplied name or title: trimmed, non-empty, bounded, no control characters.
pub(super) fn clean_text(field: &str, text: &str, max_chars: usize) -> Result<String, ApiError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ApiError::invalid(format!("{field}: must not be empty")));
    }
    if trimmed.chars().count() > max_chars {
        return Err(ApiError::invalid(format!(
            "{field}: must be at most {max_chars} characters"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field}: must not contain control characters"
        )));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[allow(dead_code)]
        name: String,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Page {
        limit: Option<u32>,
        before: Option<String>,
    }

    #[test]
    fn errors_map_to_precise_codes() {
        let code = |b: &[u8]| parse::<Body>(b).unwrap_err().code.as_str();
        assert_eq!(code(b""), "empty_body");
        assert_eq!(code(b"{\"name\":\xff}"), "invalid_utf8");
        assert_eq!(code(b"{\"name\":"), "invalid_json");
        assert_eq!(code(b"{\"name\":1}"), "invalid_request");
        assert_eq!(code(b"{}"), "invalid_request");
        let unknown = parse::<Body>(b"{\"name\":\"a\",\"x\":1}").unwrap_err();
        assert_eq!(unknown.code.as_str(), "unknown_field");
        assert_eq!(unknown.status, http::StatusCode::BAD_REQUEST);
        assert!(unknown.message.contains("`x`"), "{}", unknown.message);
        assert!(parse::<Body>(b"{\"name\":\"a\"}").is_ok());
    }

    #[test]
    fn query_strings_decode() {
        let page: Page = query(Some("limit=5&before=a%20b+c")).unwrap();
        assert_eq!(page.limit, Some(5));
        assert_eq!(page.before.as_deref(), Some("a b c"));
        assert!(query::<Page>(Some("limit=x")).is_err());
        let empty: Page = query(None).unwrap();
        assert!(empty.limit.is_none());
    }
}
