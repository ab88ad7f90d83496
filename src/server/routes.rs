//! The HTTP API under `/api/v1`: routing, request/response shapes, and the handlers that call
//! into `store` and `chat`. Every handler returns `Result<Response, ApiError>`; `error.rs` owns
//! the mapping to status codes.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ALLOW,
    CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, VARY,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::body;
use super::docs;
use super::error::{scrub_paths, ApiError};
use super::library;
use super::memories;
use super::sse::{SseBody, SseEvent};
use super::tcp::Verdict;
use super::{App, Transport};
use crate::chat::{ChatEvent, Options, SearchMode, SendRequest};
use crate::error_code::ErrorCode;
use crate::llm::ModelState;
use crate::store::{Chat, ChatId, Message, Scope, Settings, User, UserId};

pub type ResBody = UnsyncBoxBody<Bytes, Infallible>;

/// Path prefix of every endpoint.
pub const API_PREFIX: &str = "/api/v1";
/// Longest username / chat title, in characters.
const MAX_NAME_CHARS: usize = 64;
const MAX_TITLE_CHARS: usize = 200;
/// Page size bounds for chat lists.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// Entry point for every request: transport checks, routing, error mapping, `x-request-id`.
pub async fn handle(
    app: Arc<App>,
    transport: Transport,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let request_id = format!("{:08x}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let span = tracing::debug_span!("request", id = %request_id, method = %req.method(), path = %req.uri().path());
    let received = Instant::now();
    // TCP requests pass the token/Host/Origin policy first; Unix peers were checked at accept.
    let (early, cors_origin) = match (transport, &app.tcp) {
        (Transport::Local, _) => (None, None),
        (Transport::Tcp, None) => (
            Some(error_response(&ApiError::internal(
                "TCP connection without a policy",
            ))),
            None,
        ),
        (Transport::Tcp, Some(policy)) => match policy.check(req.method(), req.headers()) {
            Err(err) => (Some(error_response(&err)), None),
            Ok(Verdict::Preflight { origin }) => (Some(preflight(origin)), None),
            Ok(Verdict::Allow { cors_origin }) => (None, cors_origin),
        },
    };
    let mut response = match early {
        Some(response) => response,
        None => match route(&app, transport, req, received)
            .instrument(span.clone())
            .await
        {
            Ok(response) => response,
            Err(err) => error_response(&err),
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
            Method::GET => health(app),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["shutdown"] => match method {
            Method::POST => shutdown(app, transport),
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["users"] => match method {
            Method::POST => create_user(app, req).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["users", id] => match method {
            Method::GET => get_user(app, user_id(id)?),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["users", id, "settings"] => match method {
            Method::GET => get_settings(app, user_id(id)?),
            Method::PUT => put_settings(app, user_id(id)?, req).await,
            _ => Err(ApiError::method_not_allowed("GET, PUT")),
        },
        ["users", id, "chats"] => match method {
            Method::GET => list_chats(app, user_id(id)?, req.uri().query()),
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
            Method::POST => create_chat(app, req).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["chats", id] => match method {
            Method::GET => get_chat(app, chat_id(id)?),
            Method::PATCH => patch_chat(app, chat_id(id)?, req).await,
            Method::DELETE => delete_chat(app, chat_id(id)?).await,
            _ => Err(ApiError::method_not_allowed("GET, PATCH, DELETE")),
        },
        ["chats", id, "messages"] => match method {
            Method::POST => post_message(app, chat_id(id)?, req, received).await,
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
            Method::GET => events(app, req.uri().query()),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["chats", id, "cancel"] => match method {
            Method::POST => cancel(app, chat_id(id)?),
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

// === responses ===

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

pub fn error_response(err: &ApiError) -> Response<ResBody> {
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

// === wire shapes ===

#[derive(Serialize)]
struct UserOut<'a> {
    id: UserId,
    username: &'a str,
    created_at: u64,
}

impl<'a> From<&'a User> for UserOut<'a> {
    fn from(u: &'a User) -> Self {
        UserOut {
            id: u.id,
            username: &u.username,
            created_at: u.created_at,
        }
    }
}

#[derive(Serialize)]
struct ChatOut<'a> {
    id: ChatId,
    user_id: UserId,
    title: &'a str,
    created_at: u64,
    updated_at: u64,
    message_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<MessageOut<'a>>>,
}

impl<'a> ChatOut<'a> {
    fn new(chat: &'a Chat) -> Self {
        ChatOut {
            id: chat.id,
            user_id: chat.user_id,
            title: &chat.title,
            created_at: chat.created_at,
            updated_at: chat.updated_at,
            message_count: chat.message_count,
            messages: None,
        }
    }
}

#[derive(Serialize)]
struct MessageOut<'a> {
    id: crate::store::MessageId,
    role: crate::store::Role,
    content: &'a str,
    created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<crate::store::Usage>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    sources: &'a [crate::store::Source],
}

impl<'a> From<&'a Message> for MessageOut<'a> {
    fn from(m: &'a Message) -> Self {
        MessageOut {
            id: m.id,
            role: m.role,
            content: &m.content,
            created_at: m.created_at,
            finish_reason: m.finish_reason.map(|f| f.as_str()),
            usage: m.usage,
            sources: &m.sources,
        }
    }
}

#[derive(Serialize)]
struct SettingsOut<'a> {
    temperature: f32,
    top_p: f32,
    top_k: u32,
    min_p: f32,
    repeat_penalty: f32,
    max_tokens: u32,
    seed: Option<u32>,
    system_prompt: &'a str,
    use_memory: bool,
}

impl<'a> From<&'a Settings> for SettingsOut<'a> {
    fn from(s: &'a Settings) -> Self {
        SettingsOut {
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            max_tokens: s.max_tokens,
            seed: s.seed,
            system_prompt: &s.system_prompt,
            use_memory: s.use_memory,
        }
    }
}

/// Validates a user-supplied name or title: trimmed, non-empty, bounded, no control characters.
fn clean_text(field: &str, text: &str, max_chars: usize) -> Result<String, ApiError> {
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

// === handlers ===

fn health(app: &App) -> Result<Response<ResBody>, ApiError> {
    let (state, error, loading) = match app.llm.state() {
        ModelState::Loading { stage, progress } => (
            "loading",
            None,
            Some(json!({"stage": stage.as_str(), "progress": progress})),
        ),
        ModelState::Ready => ("ready", None, None),
        ModelState::Failed(err) => ("failed", Some(scrub_paths(&err)), None),
    };
    let status = match state {
        "ready" => "ok",
        "loading" => "loading",
        _ => "unavailable",
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_ms": u64::try_from(app.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "models": {
            "chat": {
                "name": app.llm.name(),
                "state": state,
                "error": error,
                "loading": loading,
                "n_ctx": app.llm.n_ctx(),
            },
            "embed": embed_status(&app.embedder),
        },
        "queue": {"waiting": app.llm.queued(), "capacity": app.llm.queue_capacity(), "active_turns": app.chat.active_turns()},
        "background": app.jobs.status(),
        "store": app.store.counts().ok(),
    });
    let code = if state == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = json_response(code, &body);
    if state == "loading" {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// Starts the graceful shutdown (`hearth stop`) and answers at once; the client waits for the
/// process to exit. Only over the local socket: the TCP listener exists for clients that cannot
/// reach the socket, and stopping the daemon is not something they need.
fn shutdown(app: &App, transport: Transport) -> Result<Response<ResBody>, ApiError> {
    if transport != Transport::Local {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::LocalOnly,
            "shutdown is only accepted on the local socket",
        ));
    }
    tracing::info!("shutdown requested over the API");
    app.shutdown.cancel();
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"stopping": true, "pid": std::process::id()}),
    ))
}

/// The embedder's state: it loads on first use, so `idle` is normal.
fn embed_status(embedder: &crate::embed::Embedder) -> serde_json::Value {
    use crate::embed::EmbedState;
    let (state, error) = match embedder.state() {
        EmbedState::Idle => ("idle", None),
        EmbedState::Loading => ("loading", None),
        EmbedState::Ready => ("ready", None),
        EmbedState::Failed(err) => ("failed", Some(scrub_paths(&err))),
    };
    json!({"name": embedder.model_id(), "state": state, "error": error})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    username: String,
}

async fn create_user(app: &App, req: Request<Incoming>) -> Result<Response<ResBody>, ApiError> {
    let body: CreateUser = body::json(req, app.config.max_body_bytes).await?;
    let username = clean_text("username", &body.username, MAX_NAME_CHARS)?;
    let created = app.store.create_user(&username)?;
    if created.created {
        app.store.durable().await?;
    }
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &UserOut::from(&created.user)))
}

fn require_user(app: &App, id: UserId) -> Result<User, ApiError> {
    app.store
        .user(id)?
        .ok_or_else(|| ApiError::not_found(ErrorCode::UserNotFound, format!("no user {id}")))
}

pub(super) fn require_chat(app: &App, id: ChatId) -> Result<Chat, ApiError> {
    app.store
        .chat(id)?
        .ok_or_else(|| ApiError::not_found(ErrorCode::ChatNotFound, format!("no chat {id}")))
}

fn get_user(app: &App, id: UserId) -> Result<Response<ResBody>, ApiError> {
    let user = require_user(app, id)?;
    ok(&UserOut::from(&user))
}

fn get_settings(app: &App, id: UserId) -> Result<Response<ResBody>, ApiError> {
    require_user(app, id)?;
    let settings = app.store.settings(id)?;
    ok(&SettingsOut::from(&settings))
}

/// A partial settings update; `seed: null` clears the seed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsPatch {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    max_tokens: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    seed: Option<Option<u32>>,
    system_prompt: Option<String>,
    use_memory: Option<bool>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

async fn put_settings(
    app: &App,
    id: UserId,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let patch: SettingsPatch = body::json(req, app.config.max_body_bytes).await?;
    require_user(app, id)?;
    let current = app.store.settings(id)?;
    let next = Settings {
        temperature: patch.temperature.unwrap_or(current.temperature),
        top_p: patch.top_p.unwrap_or(current.top_p),
        top_k: patch.top_k.unwrap_or(current.top_k),
        min_p: patch.min_p.unwrap_or(current.min_p),
        repeat_penalty: patch.repeat_penalty.unwrap_or(current.repeat_penalty),
        max_tokens: patch.max_tokens.unwrap_or(current.max_tokens),
        seed: patch.seed.unwrap_or(current.seed),
        system_prompt: patch.system_prompt.unwrap_or(current.system_prompt),
        use_memory: patch.use_memory.unwrap_or(current.use_memory),
        updated_at: crate::store::now_millis(),
    };
    next.validate()
        .map_err(|(field, reason)| ApiError::invalid(format!("{field}: {reason}")))?;
    app.store.put_settings(id, &next)?;
    app.store.durable().await?;
    ok(&SettingsOut::from(&next))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateChat {
    user_id: UserId,
    title: Option<String>,
}

async fn create_chat(app: &App, req: Request<Incoming>) -> Result<Response<ResBody>, ApiError> {
    let body: CreateChat = body::json(req, app.config.max_body_bytes).await?;
    let title = body
        .title
        .as_deref()
        .map(|t| clean_text("title", t, MAX_TITLE_CHARS))
        .transpose()?;
    require_user(app, body.user_id)?;
    let chat = app.store.create_chat(body.user_id, title.as_deref())?;
    app.store.durable().await?;
    Ok(json_response(StatusCode::CREATED, &ChatOut::new(&chat)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<usize>,
    before: Option<String>,
}

fn list_chats(app: &App, id: UserId, query: Option<&str>) -> Result<Response<ResBody>, ApiError> {
    let page: PageQuery = body::query(query)?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid(format!(
            "limit: must be between 1 and {MAX_PAGE}"
        )));
    }
    require_user(app, id)?;
    let result = app
        .store
        .list_chats(id, limit, page.before.as_deref())
        .map_err(|err| match err {
            crate::store::StoreError::NotFound("cursor") => {
                ApiError::invalid("before: not a cursor returned by this endpoint")
            }
            other => other.into(),
        })?;
    let chats: Vec<_> = result.chats.iter().map(ChatOut::new).collect();
    ok(&json!({"chats": chats, "next_before": result.next_before}))
}

fn get_chat(app: &App, id: ChatId) -> Result<Response<ResBody>, ApiError> {
    let chat = require_chat(app, id)?;
    let messages = app.store.messages(id)?;
    let mut out = ChatOut::new(&chat);
    out.messages = Some(messages.iter().map(MessageOut::from).collect());
    ok(&out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchChat {
    title: String,
}

async fn patch_chat(
    app: &App,
    id: ChatId,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let patch: PatchChat = body::json(req, app.config.max_body_bytes).await?;
    let title = clean_text("title", &patch.title, MAX_TITLE_CHARS)?;
    let chat = app
        .store
        .rename_chat(id, &title, true)
        .map_err(|err| match err {
            crate::store::StoreError::NotFound(_) => {
                ApiError::not_found(ErrorCode::ChatNotFound, format!("no chat {id}"))
            }
            other => other.into(),
        })?;
    app.store.durable().await?;
    ok(&ChatOut::new(&chat))
}

async fn delete_chat(app: &App, id: ChatId) -> Result<Response<ResBody>, ApiError> {
    require_chat(app, id)?;
    // A reply still being written would re-create messages of a deleted chat; stop it first.
    app.chat.cancel(id);
    let deleted = app.store.delete_chat(id).map_err(|err| match err {
        crate::store::StoreError::NotFound(_) => {
            ApiError::not_found(ErrorCode::ChatNotFound, format!("no chat {id}"))
        }
        other => other.into(),
    })?;
    app.store.durable().await?;
    app.index.drop_scope(&crate::store::Scope::Chat(id));
    ok(&json!({
        "deleted": id,
        "messages_deleted": deleted.messages,
        "documents_deleted": deleted.documents.len(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    content: String,
    #[serde(default)]
    options: Options,
    #[serde(default)]
    search_mode: SearchMode,
}

async fn post_message(
    app: &App,
    id: ChatId,
    req: Request<Incoming>,
    received: Instant,
) -> Result<Response<ResBody>, ApiError> {
    let body: PostMessage = body::json(req, app.config.max_body_bytes).await?;
    let events = app
        .chat
        .send(SendRequest {
            chat_id: id,
            content: body.content,
            options: body.options,
            search_mode: body.search_mode,
            received,
        })
        .await?;
    Ok(sse_response(events))
}

impl From<ChatEvent> for SseEvent {
    fn from(event: ChatEvent) -> SseEvent {
        match event {
            ChatEvent::Start {
                message_id,
                reply_id,
            } => SseEvent::json(
                "start",
                &json!({"message_id": message_id, "reply_id": reply_id}),
            ),
            ChatEvent::Sources(sources) => {
                SseEvent::json("sources", &json!({ "sources": sources }))
            }
            ChatEvent::Token(text) => SseEvent::json("token", &json!({ "text": text })),
            ChatEvent::Done(done) => SseEvent::json("done", &done),
            ChatEvent::Error { code, message } => SseEvent::json(
                "error",
                &json!({"code": code, "message": scrub_paths(&message)}),
            ),
        }
    }
}

fn cancel(app: &App, id: ChatId) -> Result<Response<ResBody>, ApiError> {
    require_chat(app, id)?;
    let cancelled = app.chat.cancel(id);
    ok(&json!({"cancelled": cancelled}))
}

/// Subscriber buffer between the broadcast and the socket.
const EVENTS_BUFFER: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Comma-separated event names to receive; all when absent.
    types: Option<String>,
}

/// `GET /events[?types=a,b]`: an SSE stream of background-work notifications. A subscriber that
/// fell behind gets `event: lagged {"missed": n}` and should re-read the state it shows.
fn events(app: &App, query: Option<&str>) -> Result<Response<ResBody>, ApiError> {
    let q: EventsQuery = body::query(query)?;
    let wanted: Option<Vec<String>> = q.types.map(|types| {
        types
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    });
    let mut sub = app.events.subscribe();
    let (tx, rx) = mpsc::channel::<SseEvent>(EVENTS_BUFFER);
    let shutdown = app.shutdown.clone();
    app.tasks.spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let event = tokio::select! {
                () = tx.closed() => return,
                // The stream ends at shutdown, so a subscribed UI does not hold the
                // connection (and the daemon's exit) for the whole grace period.
                () = shutdown.cancelled() => return,
                event = sub.recv() => event,
            };
            let sse = match event {
                Ok(event) => {
                    if wanted
                        .as_ref()
                        .is_some_and(|w| !w.iter().any(|t| t == event.name()))
                    {
                        continue;
                    }
                    SseEvent::json(event.name(), &event)
                }
                Err(RecvError::Lagged(missed)) => {
                    SseEvent::json("lagged", &json!({"missed": missed}))
                }
                Err(RecvError::Closed) => return,
            };
            if tx.send(sse).await.is_err() {
                return;
            }
        }
    });
    Ok(sse_response(rx))
}
