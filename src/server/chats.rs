//! Chats and their messages: create, list (newest first, paged), read, rename, delete, cancel a
//! running reply, and the chat stream (`POST /chats/{id}/messages`).

use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::body::{self, clean_text};
use super::error::{scrub_paths, ApiError};
use super::respond::{json_response, ok, sse_response, ResBody};
use super::sse::SseEvent;
use super::users::require_user;
use super::App;
use crate::chat::{ChatEvent, Options, SearchMode, SendRequest};
use crate::error_code::ErrorCode;
use crate::store::{Chat, ChatId, Message, UserId};

pub(super) const MAX_TITLE_CHARS: usize = 200;

/// Page size bounds for chat lists.
pub(super) const DEFAULT_PAGE: usize = 50;

pub(super) const MAX_PAGE: usize = 500;

#[derive(Serialize)]
pub(super) struct ChatOut<'a> {
    id: ChatId,
    user_id: UserId,
    title: &'a str,
    created_at: u64,
    updated_at: u64,
    message_count: u64,
    search_mode: &'static str,
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
            search_mode: chat.search_mode.as_str(),
            messages: None,
        }
    }
}

#[derive(Serialize)]
pub(super) struct MessageOut<'a> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateChat {
    user_id: UserId,
    title: Option<String>,
    #[serde(default)]
    search_mode: SearchMode,
}

pub(super) async fn create_chat(
    app: &App,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let body: CreateChat = body::json(req, &app.config).await?;
    let title = body
        .title
        .as_deref()
        .map(|t| clean_text("title", t, MAX_TITLE_CHARS))
        .transpose()?;
    require_user(app, body.user_id)?;
    let chat = app.store.create_chat_with_id(
        ChatId::new(),
        body.user_id,
        title.as_deref(),
        body.search_mode,
    )?;
    app.store.durable().await?;
    Ok(json_response(StatusCode::CREATED, &ChatOut::new(&chat)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    limit: Option<usize>,
    before: Option<String>,
}

pub(super) fn list_chats(
    app: &App,
    id: UserId,
    query: Option<&str>,
) -> Result<Response<ResBody>, ApiError> {
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

pub(super) fn get_chat(app: &App, id: ChatId) -> Result<Response<ResBody>, ApiError> {
    let chat = require_chat(app, id)?;
    let messages = app.store.messages(id)?;
    let mut out = ChatOut::new(&chat);
    out.messages = Some(messages.iter().map(MessageOut::from).collect());
    ok(&out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchChat {
    title: Option<String>,
    search_mode: Option<SearchMode>,
}

pub(super) async fn patch_chat(
    app: &App,
    id: ChatId,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let patch: PatchChat = body::json(req, &app.config).await?;
    let title = patch
        .title
        .as_deref()
        .map(|t| clean_text("title", t, MAX_TITLE_CHARS))
        .transpose()?;
    if title.is_none() && patch.search_mode.is_none() {
        return Err(ApiError::invalid("give title, search_mode or both"));
    }
    let chat = update_chat(app, id, title.as_deref(), patch.search_mode)?;
    app.store.durable().await?;
    ok(&ChatOut::new(&chat))
}

/// Renames a chat (as the user's choice) and/or sets its search mode; not yet durable.
pub(super) fn update_chat(
    app: &App,
    id: ChatId,
    title: Option<&str>,
    search_mode: Option<SearchMode>,
) -> Result<Chat, ApiError> {
    let not_found = |err| match err {
        crate::store::StoreError::NotFound(_) => {
            ApiError::not_found(ErrorCode::ChatNotFound, format!("no chat {id}"))
        }
        other => other.into(),
    };
    let mut chat = require_chat(app, id)?;
    if let Some(title) = title {
        chat = app.store.rename_chat(id, title, true).map_err(not_found)?;
    }
    if let Some(mode) = search_mode {
        chat = app.store.set_search_mode(id, mode).map_err(not_found)?;
    }
    Ok(chat)
}

/// Deletes a chat, stopping its running reply first; durable when it returns.
pub(super) async fn remove_chat(
    app: &App,
    id: ChatId,
) -> Result<crate::store::DeletedChat, ApiError> {
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
    // Its saved KV state holds the conversation too.
    let snapshots = app.snapshots.clone();
    let conversation = id.to_string();
    if let Err(err) = tokio::task::spawn_blocking(move || snapshots.forget(&conversation)).await {
        tracing::warn!(chat = %id, error = %err, "cannot delete the chat's KV snapshots");
    }
    Ok(deleted)
}

pub(super) async fn delete_chat(app: &App, id: ChatId) -> Result<Response<ResBody>, ApiError> {
    require_chat(app, id)?;
    let deleted = remove_chat(app, id).await?;
    ok(&json!({
        "deleted": id,
        "messages_deleted": deleted.messages,
        "documents_deleted": deleted.documents.len(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PostMessage {
    content: String,
    #[serde(default)]
    options: Options,
    /// Absent: the chat's mode.
    #[serde(default)]
    search_mode: Option<SearchMode>,
}

pub(super) async fn post_message(
    app: &App,
    id: ChatId,
    req: Request<Incoming>,
    received: Instant,
) -> Result<Response<ResBody>, ApiError> {
    let body: PostMessage = body::json(req, &app.config).await?;
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
                model,
            } => SseEvent::json(
                "start",
                &json!({"message_id": message_id, "reply_id": reply_id, "model": model}),
            ),
            ChatEvent::Sources {
                sources,
                empty_reason,
            } => {
                let mut data = json!({ "sources": sources });
                if let Some(reason) = empty_reason {
                    data["reason"] = json!(reason.as_str());
                }
                SseEvent::json("sources", &data)
            }
            ChatEvent::Token(text) => SseEvent::json("token", &json!({ "text": text })),
            ChatEvent::Done(done) => SseEvent::json("done", &done_data(&done)),
            ChatEvent::Error { code, message } => SseEvent::json(
                "error",
                &json!({"code": code, "message": scrub_paths(&message)}),
            ),
        }
    }
}

pub(super) fn cancel(app: &App, id: ChatId) -> Result<Response<ResBody>, ApiError> {
    require_chat(app, id)?;
    let cancelled = app.chat.cancel(id);
    ok(&json!({"cancelled": cancelled}))
}

pub(super) fn require_chat(app: &App, id: ChatId) -> Result<Chat, ApiError> {
    app.store
        .chat(id)?
        .ok_or_else(|| ApiError::not_found(ErrorCode::ChatNotFound, format!("no chat {id}")))
}

/// `event: done`'s data.
fn done_data(d: &crate::chat::Done) -> serde_json::Value {
    let t = &d.timings;
    let c = &d.context;
    json!({
        "reply_id": d.reply_id,
        "model": d.model,
        "finish_reason": d.finish_reason.as_str(),
        "usage": d.usage,
        "timings": {
            "ttft_ms": t.ttft_ms,
            "prompt_tokens_per_s": t.prompt_tokens_per_s,
            "completion_tokens_per_s": t.completion_tokens_per_s,
            "queued_ms": t.queued_ms,
            "prefill_ms": t.prefill_ms,
            "decode_ms": t.decode_ms,
        },
        "truncated": d.truncated,
        "context": {
            "n_ctx": c.n_ctx,
            "prompt_budget": c.prompt_budget,
            "prompt_tokens": c.prompt_tokens,
            "cached_tokens": c.cached_tokens,
            "history_messages": c.history_messages,
            "history_dropped": c.history_dropped,
        },
    })
}
