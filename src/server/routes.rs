//! The HTTP API under `/api/v1`: the entry point of every request (the TCP policy, CORS,
//! `x-request-id`) and the routing table. The handlers live by domain in sibling files (`users.rs`,
//! `chats.rs`, `status.rs`, `docs.rs`, `memories.rs`, `library.rs`); every handler returns
//! `Result<Response, ApiError>`, and `error.rs` owns the mapping to status codes.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, VARY,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tracing::Instrument;

use super::error::ApiError;
use super::respond::{error_response, ResBody};
use super::tcp::Verdict;
use super::{chats, docs, library, memories, models, status, users, App, Transport};
use crate::error_code::ErrorCode;
use crate::metrics::METRICS;
use crate::store::{ChatId, Scope, UserId};

/// Path prefix of every endpoint.
pub const API_PREFIX: &str = "/api/v1";

/// Entry point for every request: transport checks, routing, error mapping, `x-request-id`.
pub async fn handle(
    app: Arc<App>,
    transport: Transport,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    if transport == Transport::Compat {
        // Another backend's API, with its own checks and error shape.
        let response = super::compat::handle(&app, req).await;
        METRICS.request("compat", response.status().as_u16());
        return Ok(response);
    }
    let route_pattern = super::metrics::route_pattern(req.uri().path());
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let request_id = format!("{:08x}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let span = tracing::debug_span!("request", id = %request_id, method = %req.method(), path = %req.uri().path());
    let received = Instant::now();
    // `/v1` answers errors in OpenAI's shape, everything else in hearth's.
    let render: fn(&ApiError) -> Response<ResBody> =
        if req.uri().path().starts_with(super::openai::PREFIX) {
            super::openai::error_response
        } else {
            error_response
        };
    // TCP requests pass the token/Host/Origin policy first; Unix peers were checked at accept.
    let (early, cors_origin) = match (transport, &app.tcp) {
        (Transport::Local | Transport::Compat, _) => (None, None),
        (Transport::Tcp, None) => (
            Some(render(&ApiError::internal(
                "TCP connection without a policy",
            ))),
            None,
        ),
        (Transport::Tcp, Some(policy)) => {
            match policy.check(req.method(), req.uri(), req.headers()) {
                Err(err) => (Some(render(&err)), None),
                Ok(Verdict::Preflight { origin }) => (Some(preflight(origin)), None),
                Ok(Verdict::Allow { cors_origin }) => (None, cors_origin),
            }
        }
    };
    let mut response = match early {
        Some(response) => response,
        None => match route(&app, transport, req, received)
            .instrument(span.clone())
            .await
        {
            Ok(response) => response,
            Err(err) => render(&err),
        },
    };
    if let Some(origin) = cors_origin {
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(VARY, HeaderValue::from_static("origin"));
        headers.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id"),
        );
    }
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_us = received.elapsed().as_micros(),
            "response"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    METRICS.request(route_pattern, response.status().as_u16());
    Ok(response)
}

/// The answer to a CORS preflight from an allowed origin.
fn preflight(origin: HeaderValue) -> Response<ResBody> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(VARY, HeaderValue::from_static("origin"));
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}

async fn route(
    app: &App,
    transport: Transport,
    req: Request<Incoming>,
    received: Instant,
) -> Result<Response<ResBody>, ApiError> {
    let path = req.uri().path().to_string();
    if path == super::metrics::PATH {
        return match *req.method() {
            Method::GET => super::metrics::metrics(app),
            _ => Err(ApiError::method_not_allowed("GET")),
        };
    }
    if path.starts_with(super::openai::PREFIX) {
        return super::openai::route(app, req, received).await;
    }
    let Some(rest) = path
        .strip_prefix(API_PREFIX)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return Err(no_route(&path));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let method = req.method().clone();
    match segments.as_slice() {
        ["health"] => match method {
            Method::GET => status::health(app),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["models"] => match method {
            Method::GET => models::list(app).await,
            Method::POST => models::add(app, transport, req).await,
            _ => Err(ApiError::method_not_allowed("GET, POST")),
        },
        ["models", name] => match method {
            Method::DELETE => models::remove(app, transport, name).await,
            _ => Err(ApiError::method_not_allowed("DELETE")),
        },
        ["models", name, "load"] => match method {
            Method::POST => models::load(app, name, req).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["models", name, "unload"] => match method {
            Method::POST => models::unload(app, name),
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["shutdown"] => match method {
            Method::POST => status::shutdown(app, transport),
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["users"] => match method {
            Method::POST => users::create_user(app, req).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["users", id] => match method {
            Method::GET => users::get_user(app, user_id(id)?),
            Method::DELETE => users::delete_user(app, user_id(id)?).await,
            _ => Err(ApiError::method_not_allowed("GET, DELETE")),
        },
        ["users", id, "settings"] => match method {
            Method::GET => users::get_settings(app, user_id(id)?),
            Method::PUT => users::put_settings(app, user_id(id)?, req).await,
            _ => Err(ApiError::method_not_allowed("GET, PUT")),
        },
        ["users", id, "chats"] => match method {
            Method::GET => chats::list_chats(app, user_id(id)?, req.uri().query()),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["users", id, "memories"] => match method {
            Method::GET => memories::list(app, user_id(id)?, req.uri().query()).await,
            Method::POST => memories::add(app, user_id(id)?, req).await,
            Method::DELETE => memories::forget(app, user_id(id)?).await,
            _ => Err(ApiError::method_not_allowed("GET, POST, DELETE")),
        },
        ["users", id, "memories", "history"] => match method {
            Method::GET => memories::user_history(app, user_id(id)?, req.uri().query()),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["memories", id] => match method {
            Method::GET => memories::get(app, memories::memory_id(id)?, req.uri().query()),
            Method::PATCH => {
                let query = req.uri().query().map(str::to_string);
                memories::edit(app, memories::memory_id(id)?, query.as_deref(), req).await
            }
            Method::DELETE => {
                memories::delete(app, memories::memory_id(id)?, req.uri().query()).await
            }
            _ => Err(ApiError::method_not_allowed("GET, PATCH, DELETE")),
        },
        ["memories", id, "history"] => match method {
            Method::GET => memories::history(app, memories::memory_id(id)?, req.uri().query()),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["chats"] => match method {
            Method::POST => chats::create_chat(app, req).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["chats", id] => match method {
            Method::GET => chats::get_chat(app, chat_id(id)?),
            Method::PATCH => chats::patch_chat(app, chat_id(id)?, req).await,
            Method::DELETE => chats::delete_chat(app, chat_id(id)?).await,
            _ => Err(ApiError::method_not_allowed("GET, PATCH, DELETE")),
        },
        ["chats", id, "messages"] => match method {
            Method::POST => chats::post_message(app, chat_id(id)?, req, received).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["chats", id, "documents"] => match method {
            Method::GET => docs::list(app, Scope::Chat(chat_id(id)?)),
            Method::POST => docs::upload(app, Scope::Chat(chat_id(id)?), req).await,
            _ => Err(ApiError::method_not_allowed("GET, POST")),
        },
        ["documents", id] => match method {
            Method::GET => docs::get(app, id),
            Method::DELETE => docs::delete(app, id).await,
            _ => Err(ApiError::method_not_allowed("GET, DELETE")),
        },
        ["search"] => match method {
            Method::POST => docs::search(app, req).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["embeddings"] => match method {
            Method::POST => docs::embeddings(app, req).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["library"] => match method {
            Method::GET => library::status(app),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["library", "files"] => match method {
            Method::GET => library::files(app, req.uri().query()),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["library", "rescan"] => match method {
            Method::POST => library::rescan(app),
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["library", "documents"] => match method {
            Method::GET => docs::list(app, Scope::Library),
            Method::POST => docs::upload(app, Scope::Library, req).await,
            _ => Err(ApiError::method_not_allowed("GET, POST")),
        },
        ["events"] => match method {
            Method::GET => status::events(app, req.uri().query()),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["chats", id, "cancel"] => match method {
            Method::POST => chats::cancel(app, chat_id(id)?),
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        _ => Err(no_route(&path)),
    }
}

fn no_route(path: &str) -> ApiError {
    ApiError::not_found(
        ErrorCode::NoRoute,
        format!("no endpoint at {path}; the API lives under {API_PREFIX}"),
    )
}

fn user_id(text: &str) -> Result<UserId, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(
            ErrorCode::InvalidId,
            format!("'{text}' is not a valid user id"),
        )
    })
}

fn chat_id(text: &str) -> Result<ChatId, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(
            ErrorCode::InvalidId,
            format!("'{text}' is not a valid chat id"),
        )
    })
}
