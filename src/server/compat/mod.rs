//! The compatibility listener (`hearth serve --compat electronaichat`): the original
//! ElectronAIChat backend's `/api` routes, with its request and response shapes, on a second,
//! loopback-only TCP listener (127.0.0.1:8000 by default), so the unchanged Electron app runs on
//! hearth. The contract is `original-backend-api.md` (§11 is the surface served here).
//!
//! A thin adapter: every handler translates shapes and calls the same services `/api/v1` uses
//! (store, chat turns, ingestion, pool). The original's ids become hearth's: a chat or user id
//! that is a UUID is used as it is; any other id the client invented (its legacy `local-…`
//! chats) maps to a UUID derived from it, so the same string always names the same record.
//!
//! The app sends no token, so this listener guards itself differently from `/api/v1`'s TCP
//! listener (`tcp.rs`):
//! - the peer's socket must belong to our uid (Linux: looked up in `/proc/net/tcp{,6}`, see
//!   `peer.rs`), the same guarantee as the Unix socket's peer-uid check;
//! - `Host` must be `127.0.0.1:PORT`, `localhost:PORT` or `[::1]:PORT` (DNS rebinding);
//! - `Origin` must be absent, `null` (the packaged app's `file://` page) or allowed (the dev
//!   servers by default); CORS answers go to those origins only.
//!
//! Errors use the original's shape, `{"detail": "..."}`, on this listener only.

mod chats;
mod peer;
mod system;
mod upload;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ORIGIN, VARY,
};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;

use super::error::ApiError;
use super::respond::{json_response, ResBody};
use super::App;
use crate::config::CompatConfig;
use crate::error_code::ErrorCode;
use crate::store::{ChatId, UserId};

pub(super) use peer::peer_allowed;

/// Longest id the client may send for a chat or user (its own ids are UUIDs or `local-<ms>`).
const MAX_FOREIGN_ID_BYTES: usize = 128;

/// Serves one request on the compat listener.
pub(super) async fn handle(app: &App, req: Request<Incoming>) -> Response<ResBody> {
    let Some(config) = &app.compat else {
        return detail(&ApiError::internal("compat connection without a config"));
    };
    let cors = match check(config, req.uri(), req.headers()) {
        Ok(cors) => cors,
        Err(err) => return detail(&err),
    };
    if req.method() == Method::OPTIONS {
        return preflight(cors.as_ref(), req.headers());
    }
    let mut response = match route(app, req).await {
        Ok(response) => response,
        Err(err) => detail(&err),
    };
    if let Some(origin) = cors {
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// Checks `Host` and `Origin`; returns the origin to answer CORS to (none for requests without
/// an `Origin`).
fn check(
    config: &CompatConfig,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, ApiError> {
    let forbidden = |code, msg: &str| ApiError::new(StatusCode::FORBIDDEN, code, msg);
    super::tcp::check_host(config.addr, uri, headers)?;
    match headers.get(ORIGIN) {
        None => Ok(None),
        Some(origin) => {
            let text = origin.to_str().unwrap_or("");
            // `null` is what Chromium sends from the packaged app's file:// page.
            if text == "null" || config.origins.iter().any(|o| o == text) {
                Ok(Some(origin.clone()))
            } else {
                Err(forbidden(
                    ErrorCode::OriginNotAllowed,
                    "this Origin is not allowed",
                ))
            }
        }
    }
}

/// The answer to a CORS preflight: allowed origins get the methods and headers the app uses
/// (JSON bodies make its PUT/POST non-simple; DELETE and PUT preflight by method alone).
fn preflight(origin: Option<&HeaderValue>, headers: &HeaderMap) -> Response<ResBody> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    let Some(origin) = origin else {
        // Not a CORS preflight (no Origin): nothing to allow.
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static(METHODS));
        return response;
    };
    *response.status_mut() = StatusCode::OK;
    let out = response.headers_mut();
    out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    out.insert(
        ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    out.insert(VARY, HeaderValue::from_static("origin"));
    out.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(METHODS),
    );
    // The original allowed every header; echo what the browser asks for.
    let asked = headers
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("content-type"));
    out.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked);
    out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}

const METHODS: &str = "GET, POST, PUT, DELETE, OPTIONS";

async fn route(app: &App, req: Request<Incoming>) -> Result<Response<ResBody>, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let wrong = |allow: &'static str| Err(ApiError::method_not_allowed(allow));
    match segments.as_slice() {
        ["api", "health"] => match method {
            Method::GET => system::health(app),
            _ => wrong("GET"),
        },
        ["api", "status"] => match method {
            Method::GET => Ok(json_response(
                StatusCode::OK,
                &json!({"status": "Backend is running"}),
            )),
            _ => wrong("GET"),
        },
        ["api", "capabilities"] => match method {
            Method::GET => system::capabilities(app).await,
            _ => wrong("GET"),
        },
        ["api", "models"] => match method {
            Method::GET => system::models(app).await,
            _ => wrong("GET"),
        },
        ["api", "models", "switch"] => match method {
            Method::POST => system::switch(app, req).await,
            _ => wrong("POST"),
        },
        ["api", "admin", "reset"] => match method {
            Method::POST => system::reset(app).await,
            _ => wrong("POST"),
        },
        ["api", "users", "create"] => match method {
            Method::POST => chats::create_user(app, req).await,
            _ => wrong("POST"),
        },
        ["api", "users", id, "settings"] => match method {
            Method::GET => chats::get_settings(app, id),
            Method::PUT => chats::put_settings(app, id, req).await,
            _ => wrong("GET, PUT"),
        },
        ["api", "chats", "create"] => match method {
            Method::POST => chats::create_chat(app, req).await,
            _ => wrong("POST"),
        },
        ["api", "chats", "detail", id] => match method {
            Method::GET => chats::detail(app, id),
            _ => wrong("GET"),
        },
        ["api", "chats", id] => match method {
            Method::GET => chats::list(app, id),
            Method::PUT => chats::update(app, id, req.uri().query()).await,
            Method::DELETE => chats::delete(app, id).await,
            _ => wrong("GET, PUT, DELETE"),
        },
        ["api", "chat", "stream"] => match method {
            Method::POST => chats::stream(app, req).await,
            _ => wrong("POST"),
        },
        ["documents", "upload", "stream"] => match method {
            Method::POST => upload::stream(app, req).await,
            _ => wrong("POST"),
        },
        _ => Err(ApiError::not_found(ErrorCode::NoRoute, "Not Found")),
    }
}

/// An error in the original's shape: `{"detail": "..."}` with its status.
fn detail(err: &ApiError) -> Response<ResBody> {
    let mut response = json_response(err.status, &json!({ "detail": err.message }));
    if let Some(secs) = err.retry_after {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(allow) = err.allow {
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}

/// A client-sent id that is not too long and has no control characters.
fn foreign_id<'a>(what: &str, text: &'a str) -> Result<&'a str, ApiError> {
    if text.is_empty() || text.len() > MAX_FOREIGN_ID_BYTES || text.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{what}: expected an id of 1 to {MAX_FOREIGN_ID_BYTES} bytes"
        )));
    }
    Ok(text)
}

/// The UUID a client-sent id names: itself when it is one, else one derived from it (stable,
/// and in a different domain for chats and users).
fn derived_uuid(domain: &str, text: &str) -> uuid::Uuid {
    if let Ok(uuid) = uuid::Uuid::try_parse(text) {
        return uuid;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"hearth compat id\0");
    hasher.update(domain.as_bytes());
    hasher.update(b"\0");
    hasher.update(text.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    // Version 8 ("custom") and the RFC variant, so it is a well-formed UUID.
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn chat_id(text: &str) -> Result<ChatId, ApiError> {
    Ok(ChatId(derived_uuid("chat", foreign_id("chat id", text)?)))
}

fn user_id(text: &str) -> Result<UserId, ApiError> {
    Ok(UserId(derived_uuid("user", foreign_id("user id", text)?)))
}

/// The original's timestamps: ISO-8601 UTC without an offset, microseconds
/// (`2025-01-02T03:04:05.123000`), as it read them back from SQLite.
fn iso(millis: u64) -> String {
    let secs = millis / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_naive_utc_iso() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000000");
        assert_eq!(iso(1_735_787_045_123), "2025-01-02T03:04:05.123000");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000000");
    }

    #[test]
    fn foreign_ids_map_to_stable_uuids() {
        let uuid = "0190b5a2-7c1e-7d3a-9f00-123456789abc";
        assert_eq!(chat_id(uuid).unwrap().to_string(), uuid);
        let local = chat_id("local-1712345678901").unwrap();
        assert_eq!(local, chat_id("local-1712345678901").unwrap());
        assert_ne!(local, chat_id("local-1712345678902").unwrap());
        assert_ne!(local.0, user_id("local-1712345678901").unwrap().0);
        assert!(chat_id("").is_err());
        assert!(chat_id(&"x".repeat(200)).is_err());
        assert!(chat_id("a\nb").is_err());
    }

    fn config() -> CompatConfig {
        CompatConfig {
            api: crate::config::CompatApi::ElectronAiChat,
            addr: "127.0.0.1:8000".parse().unwrap(),
            origins: vec!["http://localhost:5173".into()],
        }
    }

    fn path() -> Uri {
        "/api/health".parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn host_and_origin_are_checked() {
        let c = config();
        assert!(check(&c, &path(), &headers(&[("host", "127.0.0.1:8000")])).is_ok());
        assert!(check(&c, &path(), &headers(&[("host", "localhost:8000")])).is_ok());
        assert!(check(&c, &path(), &headers(&[("host", "evil.example:8000")])).is_err());
        assert!(check(&c, &path(), &headers(&[("host", "localhost:8001")])).is_err());
        assert!(check(&c, &path(), &headers(&[])).is_err());
        let null = check(
            &c,
            &path(),
            &headers(&[("host", "localhost:8000"), ("origin", "null")]),
        );
        assert_eq!(null.unwrap().unwrap(), "null");
        let dev = [
            ("host", "localhost:8000"),
            ("origin", "http://localhost:5173"),
        ];
        assert!(check(&c, &path(), &headers(&dev)).unwrap().is_some());
        let foreign = [
            ("host", "localhost:8000"),
            ("origin", "https://evil.example"),
        ];
        assert_eq!(
            check(&c, &path(), &headers(&foreign)).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }
}
