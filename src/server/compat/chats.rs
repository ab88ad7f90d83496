//! The original's users, settings and chats routes, and its chat stream.
//!
//! The stream speaks the original's SSE: `data: {"token","done":false}` per token, and one final
//! `data: {"token":"","done":true[,"sources"][,"error"]}`. That final event is the only `done`
//! one and always the last: the client finalises the message on every `done` event, and a later
//! one without `sources` would wipe the sources from the screen. Each event is one frame (see
//! `sse.rs`), since the client splits every network read on newlines without buffering across
//! reads.

use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::super::body::{self, clean_text};
use super::super::chats::{remove_chat, require_chat, update_chat, MAX_TITLE_CHARS};
use super::super::error::{scrub_paths, ApiError};
use super::super::respond::{ok, sse_response, ResBody};
use super::super::sse::SseEvent;
use super::super::users::{ensure_user, require_user, update_settings};
use super::super::App;
use super::{chat_id, iso, user_id};
use crate::chat::{ChatEvent, Options, SendRequest};
use crate::error_code::ErrorCode;
use crate::store::{
    Chat, ChatId, Role, Scope, SearchMode, Settings, SourceOrigin, User, UserId, DEFAULT_CHAT_TITLE,
};

/// The chat list's length: the client sends no paging and the original answered 50.
const LIST_LIMIT: usize = 50;
/// Room for tokens between the turn and a slow client.
const STREAM_BUFFER: usize = 64;
/// The filename the original gave memory sources.
const MEMORY_SOURCE: &str = "Long-term Memory";

/// The original's `search_mode` names, as stored on a chat.
fn mode_name(mode: SearchMode) -> &'static str {
    match mode {
        SearchMode::Normal => "normal",
        SearchMode::Docs => "embeddings",
        SearchMode::All => "all",
    }
}

fn parse_mode(text: &str) -> Result<SearchMode, ApiError> {
    match text {
        "normal" => Ok(SearchMode::Normal),
        "embeddings" => Ok(SearchMode::Docs),
        "all" => Ok(SearchMode::All),
        _ => Err(ApiError::invalid(
            "search_mode must be: normal, embeddings, or all",
        )),
    }
}

fn user_out(user: &User) -> Value {
    json!({
        "id": user.id,
        "username": user.username,
        "email": Value::Null,
        "created_at": iso(user.created_at),
        "total_chats": 0,
    })
}

#[derive(Deserialize)]
pub(super) struct CreateUser {
    username: String,
}

/// `POST /api/users/create`: idempotent by username.
pub(super) async fn create_user(
    app: &App,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let body: CreateUser = body::json(req, &app.config).await?;
    let created = ensure_user(app, &body.username).await?;
    ok(&user_out(&created.user))
}

/// The user a path or body names; 404 in the original's words when unknown.
fn known_user(app: &App, text: &str) -> Result<User, ApiError> {
    let id = user_id(text)?;
    require_user(app, id)
        .map_err(|_| ApiError::not_found(ErrorCode::UserNotFound, "User not found"))
}

fn settings_out(app: &App, user: UserId, s: &Settings) -> Value {
    json!({
        "id": user,
        "user_id": user,
        "provider": "llamacpp",
        "default_model": s.model.clone().unwrap_or_else(|| app.pool.default_model().to_string()),
        "temperature": s.temperature,
        "max_tokens": s.max_tokens,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "system_prompt": s.system_prompt,
        "theme": "light",
        "use_memory": s.use_memory,
        "use_mcp": false,
        "updated_at": iso(s.updated_at),
    })
}

/// `GET /api/users/{user_id}/settings`
pub(super) fn get_settings(app: &App, id: &str) -> Result<Response<ResBody>, ApiError> {
    let user = known_user(app, id)?;
    let settings = app.store.settings(user.id)?;
    ok(&settings_out(app, user.id, &settings))
}

/// The settings fields the client sends; the rest of the original's row is ignored.
#[derive(Deserialize)]
pub(super) struct SettingsPut {
    default_model: Option<String>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    system_prompt: Option<String>,
    use_memory: Option<bool>,
}

/// `PUT /api/users/{user_id}/settings`: a partial update, validated like hearth's own. A
/// `default_model` hearth has no file for (the app's own default is `llama2:latest`) leaves the
/// model as it is rather than breaking every later message.
pub(super) async fn put_settings(
    app: &App,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let put: SettingsPut = body::json(req, &app.config).await?;
    let user = known_user(app, id)?;
    let model = match put.default_model {
        Some(name) if app.pool.resolve(&name).is_ok() => Some(name),
        Some(name) => {
            tracing::info!(model = %name, "compat: settings name a model hearth does not have; kept the current one");
            None
        }
        None => None,
    };
    let next = update_settings(app, user.id, |s| {
        s.temperature = put.temperature.unwrap_or(s.temperature);
        s.max_tokens = put.max_tokens.unwrap_or(s.max_tokens);
        s.top_p = put.top_p.unwrap_or(s.top_p);
        s.top_k = put.top_k.unwrap_or(s.top_k);
        if let Some(prompt) = put.system_prompt {
            s.system_prompt = prompt;
        }
        s.use_memory = put.use_memory.unwrap_or(s.use_memory);
        if model.is_some() {
            s.model = model;
        }
    })
    .await?;
    ok(&settings_out(app, user.id, &next))
}

fn chat_out(app: &App, chat: &Chat) -> Result<Value, ApiError> {
    Ok(json!({
        "id": chat.id,
        "title": chat.title,
        "search_mode": mode_name(chat.search_mode),
        "message_count": chat.message_count,
        "document_count": app.store.documents_in(&Scope::Chat(chat.id))?.len(),
        "created_at": iso(chat.created_at),
        "updated_at": iso(chat.updated_at),
        "last_message": Value::Null,
    }))
}

#[derive(Deserialize)]
pub(super) struct CreateChat {
    user_id: String,
    title: Option<String>,
}

/// `POST /api/chats/create`
pub(super) async fn create_chat(
    app: &App,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let body: CreateChat = body::json(req, &app.config).await?;
    let user = known_user(app, &body.user_id)?;
    let title = body
        .title
        .as_deref()
        .map(|t| clean_text("title", t, MAX_TITLE_CHARS))
        .transpose()?
        // The original stores "New Chat" as any other title; here it stays open to an
        // automatic title.
        .filter(|t| t != DEFAULT_CHAT_TITLE);
    let chat = app.store.create_chat_with_id(
        ChatId::new(),
        user.id,
        title.as_deref(),
        SearchMode::Normal,
    )?;
    app.store.durable().await?;
    ok(&chat_out(app, &chat)?)
}

/// `GET /api/chats/{user_id}`: the 50 most recently updated; an unknown user has none.
pub(super) fn list(app: &App, id: &str) -> Result<Response<ResBody>, ApiError> {
    let id = user_id(id)?;
    if app.store.user(id)?.is_none() {
        return ok(&json!([]));
    }
    let page = app.store.list_chats(id, LIST_LIMIT, None)?;
    let chats = page
        .chats
        .iter()
        .map(|c| chat_out(app, c))
        .collect::<Result<Vec<_>, _>>()?;
    ok(&chats)
}

fn known_chat(app: &App, id: &str) -> Result<Chat, ApiError> {
    require_chat(app, chat_id(id)?)
        .map_err(|_| ApiError::not_found(ErrorCode::ChatNotFound, "Chat not found"))
}

/// `GET /api/chats/detail/{chat_id}`: the client polls it for the automatic title.
pub(super) fn detail(app: &App, id: &str) -> Result<Response<ResBody>, ApiError> {
    let chat = known_chat(app, id)?;
    let mode = mode_name(chat.search_mode);
    let messages: Vec<Value> = app
        .store
        .messages(chat.id)?
        .iter()
        .map(|m| {
            let sources = (m.role == Role::Assistant && !m.sources.is_empty())
                .then(|| sources_out(chat.id, m.sources.iter().map(|s| &s.origin)));
            json!({
                "id": m.id,
                "chat_id": chat.id,
                "role": m.role,
                "content": m.content,
                "search_mode": Value::Null,
                "model_used": Value::Null,
                "tokens_used": m.usage.map(|u| u.completion_tokens),
                "response_time": Value::Null,
                "created_at": iso(m.created_at),
                "sources": sources,
            })
        })
        .collect();
    let documents: Vec<Value> = app
        .store
        .documents_in(&Scope::Chat(chat.id))?
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "chat_id": chat.id,
                "name": d.filename,
                "file_path": Value::Null,
                "source": "upload",
                "content_type": Value::Null,
                "size": d.size,
                "source_metadata": Value::Null,
                "chunks_count": d.chunk_count,
                "uploaded_at": iso(d.created_at),
            })
        })
        .collect();
    ok(&json!({
        "id": chat.id,
        "title": chat.title,
        "search_mode": mode,
        "created_at": iso(chat.created_at),
        "updated_at": iso(chat.updated_at),
        "messages": messages,
        "documents": documents,
    }))
}

#[derive(Deserialize)]
struct UpdateQuery {
    title: Option<String>,
    search_mode: Option<String>,
}

/// `PUT /api/chats/{chat_id}?title=&search_mode=` (query string; empty values are ignored).
pub(super) async fn update(
    app: &App,
    id: &str,
    query: Option<&str>,
) -> Result<Response<ResBody>, ApiError> {
    let q: UpdateQuery = body::query(query)?;
    let chat = known_chat(app, id)?;
    let title = q
        .title
        .filter(|t| !t.is_empty())
        .map(|t| clean_text("title", &t, MAX_TITLE_CHARS))
        .transpose()?;
    let mode = q
        .search_mode
        .filter(|m| !m.is_empty())
        .map(|m| parse_mode(&m))
        .transpose()?;
    let mut fields = Vec::new();
    if title.is_some() {
        fields.push("title");
    }
    if mode.is_some() {
        fields.push("search_mode");
    }
    if fields.is_empty() {
        return Err(ApiError::invalid("No fields provided for update"));
    }
    // The client syncs a chat's title back as it shows it; the untouched "New Chat" must stay
    // open to the automatic title.
    let title = title.filter(|t| t != DEFAULT_CHAT_TITLE || chat.title_by_user);
    update_chat(app, chat.id, title.as_deref(), mode)?;
    app.store.durable().await?;
    ok(&json!({"success": true, "chat_id": chat.id, "updated_fields": fields}))
}

/// `DELETE /api/chats/{chat_id}`
pub(super) async fn delete(app: &App, id: &str) -> Result<Response<ResBody>, ApiError> {
    let chat = known_chat(app, id)?;
    let deleted = remove_chat(app, chat.id).await?;
    ok(&json!({
        "success": true,
        "deleted": chat.id,
        "messages_deleted": deleted.messages,
        "documents_deleted": deleted.documents.len(),
    }))
}

/// The chat a stream or upload names, created when the client's id is unknown (the original
/// did the same: the app may hold ids the server never saw). `owner` is used only then.
pub(super) async fn ensure_chat(
    app: &App,
    id: &str,
    owner: impl FnOnce() -> Result<UserId, ApiError>,
    title: Option<&str>,
    mode: SearchMode,
) -> Result<Chat, ApiError> {
    let id = chat_id(id)?;
    if let Some(chat) = app.store.chat(id)? {
        return Ok(chat);
    }
    let chat = app.store.create_chat_with_id(id, owner()?, title, mode)?;
    app.store.durable().await?;
    Ok(chat)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StreamRequest {
    chat_id: String,
    user_id: String,
    message: String,
    #[serde(default = "normal")]
    search_mode: String,
    #[serde(default = "yes")]
    use_memory: bool,
}

fn normal() -> String {
    "normal".into()
}

fn yes() -> bool {
    true
}

/// `POST /api/chat/stream`: a chat turn (the user's stored settings, the request's search mode
/// and memory switch) streamed in the original's SSE.
pub(super) async fn stream(
    app: &App,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let received = Instant::now();
    let body: StreamRequest = body::json(req, &app.config).await?;
    let mode = parse_mode(&body.search_mode)?;
    let user_text = body.user_id.clone();
    let chat = ensure_chat(
        app,
        &body.chat_id,
        || {
            // The original looked the user up by id and created `User(id, username = id)`.
            let id = user_id(&user_text)?;
            Ok(app.store.create_user_with_id(id, &user_text)?.user.id)
        },
        None,
        mode,
    )
    .await?;
    let events = app
        .chat
        .send(SendRequest {
            chat_id: chat.id,
            content: body.message,
            options: Options {
                use_memory: Some(body.use_memory),
                ..Options::default()
            },
            // The original's "embeddings" and "all" behaved alike: documents, plus memories
            // when the request's switch is on.
            search_mode: Some(match mode {
                SearchMode::Normal => SearchMode::Normal,
                SearchMode::Docs | SearchMode::All => SearchMode::All,
            }),
            received,
        })
        .await?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    app.tasks.spawn(forward(chat.id, events, tx));
    Ok(sse_response(rx))
}

/// Turns hearth's chat events into the original's: tokens as they come, sources held back for
/// the one final `done` event.
async fn forward(chat: ChatId, mut events: mpsc::Receiver<ChatEvent>, out: mpsc::Sender<SseEvent>) {
    let mut sources = Vec::new();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            // The client went away (also before the first token): returning drops `events`,
            // which cancels the turn.
            () = out.closed() => return,
        };
        let Some(event) = event else { return };
        let last = match event {
            ChatEvent::Start { .. } => continue,
            ChatEvent::Sources { sources: found, .. } => {
                sources = found;
                continue;
            }
            ChatEvent::Token(text) => {
                if out
                    .send(data(&json!({"token": text, "done": false})))
                    .await
                    .is_err()
                {
                    // The client went away: dropping `events` cancels the turn.
                    return;
                }
                continue;
            }
            ChatEvent::Done(_) => json!({"token": "", "done": true}),
            ChatEvent::Error { message, .. } => {
                json!({"token": "", "done": true, "error": scrub_paths(&message)})
            }
        };
        let mut last = last;
        if !sources.is_empty() {
            last["sources"] = sources_out(chat, sources.iter().map(|s| &s.origin));
        }
        let _ = out.send(data(&last)).await;
        return;
    }
}

fn data(value: &Value) -> SseEvent {
    SseEvent::json("", value)
}

/// The original's sources: one per document filename, then one for memory if any was used.
fn sources_out<'a>(chat: ChatId, origins: impl Iterator<Item = &'a SourceOrigin>) -> Value {
    let mut out: Vec<Value> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    let mut memory = false;
    for origin in origins {
        match origin {
            SourceOrigin::Document { filename, .. } => {
                if !names.contains(&filename.as_str()) {
                    names.push(filename);
                    out.push(json!({"filename": filename, "chatId": chat, "type": "document"}));
                }
            }
            SourceOrigin::Memory { .. } => memory = true,
        }
    }
    if memory {
        out.push(json!({"filename": MEMORY_SOURCE, "chatId": chat, "type": "memory"}));
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn search_modes_round_trip_in_the_originals_names() {
        for name in ["normal", "embeddings", "all"] {
            assert_eq!(mode_name(parse_mode(name).unwrap()), name);
        }
        assert_eq!(
            parse_mode("docs").unwrap_err().status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
