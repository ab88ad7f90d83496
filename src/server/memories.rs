//! Handlers for long-term memories: list/search, add (explicit or inferred by the model), edit,
//! delete, forget-all, and the change history.
//!
//! Isolation: lists and searches start from a user id and never return another user's memories;
//! the `/memories/{mid}` endpoints take an optional `user_id` query parameter and answer 404 when
//! the memory belongs to someone else.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::ApiError;
use super::respond::{json_response, ok, ResBody};
use super::users::require_user;
use super::{body, App};
use crate::embed::Urgency;
use crate::error_code::ErrorCode;
use crate::memory::Change;
use crate::store::{BgJobKind, HistoryEntry, Memory, MemoryId, MemoryOrigin, UserId};

/// Memories one list answer holds at most.
const MAX_LIMIT: usize = 500;
const DEFAULT_LIMIT: usize = 100;
/// Lowest similarity a search hit needs: below it the hit is noise (MiniLM cosine).
const SEARCH_MIN_SCORE: f32 = 0.2;

/// A memory as the API shows it.
#[derive(Serialize)]
struct MemoryOut<'a> {
    id: MemoryId,
    user_id: UserId,
    text: &'a str,
    origin: MemoryOrigin,
    source_message_id: Option<crate::store::MessageId>,
    created_at: u64,
    updated_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f32>,
}

impl<'a> MemoryOut<'a> {
    fn new(m: &'a Memory, score: Option<f32>) -> Self {
        MemoryOut {
            id: m.id,
            user_id: m.user_id,
            text: &m.text,
            origin: m.origin,
            source_message_id: m.source_message_id,
            created_at: m.created_at,
            updated_at: m.updated_at,
            score,
        }
    }
}

pub fn memory_id(text: &str) -> Result<MemoryId, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(
            ErrorCode::InvalidId,
            format!("'{text}' is not a valid memory id"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    query: Option<String>,
    limit: Option<usize>,
}

/// `GET /users/{id}/memories[?query=&limit=]`: all memories (newest first), or the ones most
/// similar to `query` (best first, with `score`).
pub async fn list(
    app: &App,
    user: UserId,
    query: Option<&str>,
) -> Result<Response<ResBody>, ApiError> {
    let q: ListQuery = body::query(query)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::invalid(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        )));
    }
    require_user(app, user)?;
    match q.query.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(text) => {
            let hits = app
                .memories
                .search(user, text, limit, SEARCH_MIN_SCORE)
                .await?;
            let out: Vec<_> = hits
                .iter()
                .map(|(m, score)| MemoryOut::new(m, Some(*score)))
                .collect();
            ok(&json!({ "memories": out }))
        }
        None => {
            let all = app.store.memories_of(user)?;
            let out: Vec<_> = all
                .iter()
                .rev()
                .take(limit)
                .map(|m| MemoryOut::new(m, None))
                .collect();
            ok(&json!({ "memories": out, "total": all.len() }))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMemory {
    text: String,
    /// `false`: store the text as given. `true` (default): let the model extract facts from it
    /// in the background (answer 202; the result arrives as `event: memory_extracted`).
    #[serde(default = "yes")]
    infer: bool,
}

fn yes() -> bool {
    true
}

/// `POST /users/{id}/memories`.
pub async fn add(
    app: &App,
    user: UserId,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let body: AddMemory = body::json(req, &app.config).await?;
    let text = crate::memory::clean(&body.text)?;
    require_user(app, user)?;
    if body.infer {
        // Extraction runs on the model this user chats with.
        let model = app.store.settings(user)?.model;
        app.jobs.enqueue(
            BgJobKind::Memory {
                user_id: user,
                chat_id: None,
                message_id: None,
                message: text,
                recalled: Vec::new(),
            },
            model.as_deref(),
        )?;
        app.store.durable().await?;
        return Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({"queued": true}),
        ));
    }
    let remembered = app
        .memories
        .remember(
            user,
            &text,
            MemoryOrigin::Explicit,
            None,
            Urgency::Query,
            None,
        )
        .await?;
    app.store.durable().await?;
    let (change, memory) = (remembered.change, remembered.memory);
    let status = if change == Change::Added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(
        status,
        // Always a memory: only inferred facts (with a `learned_at`) can be discarded. `similar`:
        // memories this explicit text did not replace, for the client to offer a merge.
        &json!({
            "change": change.as_str(),
            "memory": memory.as_ref().map(|m| MemoryOut::new(m, None)),
            "similar": remembered
                .similar
                .iter()
                .map(|(m, score)| MemoryOut::new(m, Some(*score)))
                .collect::<Vec<_>>(),
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerQuery {
    user_id: Option<UserId>,
}

/// The memory, if it exists and (when the query names a user) belongs to that user.
fn owned(app: &App, id: MemoryId, query: Option<&str>) -> Result<Memory, ApiError> {
    let q: OwnerQuery = body::query(query)?;
    match app.store.memory(id)? {
        Some(m) if q.user_id.is_none_or(|u| u == m.user_id) => Ok(m),
        _ => Err(ApiError::not_found(
            ErrorCode::MemoryNotFound,
            format!("no memory {id}"),
        )),
    }
}

/// `GET /memories/{mid}`.
pub fn get(app: &App, id: MemoryId, query: Option<&str>) -> Result<Response<ResBody>, ApiError> {
    let memory = owned(app, id, query)?;
    ok(&MemoryOut::new(&memory, None))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditMemory {
    text: String,
}

/// `PATCH /memories/{mid}` `{"text"}`.
pub async fn edit(
    app: &App,
    id: MemoryId,
    query: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let body: EditMemory = body::json(req, &app.config).await?;
    owned(app, id, query)?;
    let memory = app.memories.edit(id, &body.text).await?;
    app.store.durable().await?;
    ok(&MemoryOut::new(&memory, None))
}

/// `DELETE /memories/{mid}`.
pub async fn delete(
    app: &App,
    id: MemoryId,
    query: Option<&str>,
) -> Result<Response<ResBody>, ApiError> {
    owned(app, id, query)?;
    let memory = app.store.delete_memory(id).map_err(|err| match err {
        crate::store::StoreError::NotFound(_) => {
            ApiError::not_found(ErrorCode::MemoryNotFound, format!("no memory {id}"))
        }
        other => other.into(),
    })?;
    app.store.durable().await?;
    ok(&json!({"deleted": memory.id}))
}

/// `DELETE /users/{id}/memories`: forget everything (one `forget_all` history entry).
pub async fn forget(app: &App, user: UserId) -> Result<Response<ResBody>, ApiError> {
    require_user(app, user)?;
    let n = app.store.forget_memories(user)?;
    app.store.durable().await?;
    ok(&json!({"deleted": n}))
}

/// A history entry as the API shows it.
fn entry_out(e: &HistoryEntry) -> serde_json::Value {
    json!({
        "id": e.id,
        "memory_id": e.memory_id,
        "event": e.event,
        "old_text": e.old_text,
        "new_text": e.new_text,
        "source_message_id": e.source_message_id,
        "at": e.at,
        "detail": e.detail,
    })
}

/// `GET /memories/{mid}/history`: oldest first; kept after the memory was deleted.
pub fn history(
    app: &App,
    id: MemoryId,
    query: Option<&str>,
) -> Result<Response<ResBody>, ApiError> {
    let q: OwnerQuery = body::query(query)?;
    let entries = app.store.memory_history(id)?;
    if entries.is_empty() || q.user_id.is_some_and(|u| entries[0].user_id != u) {
        return Err(ApiError::not_found(
            ErrorCode::MemoryNotFound,
            format!("no memory {id}"),
        ));
    }
    let out: Vec<_> = entries.iter().map(entry_out).collect();
    ok(&json!({ "history": out }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// `GET /users/{id}/memories/history[?limit=]`: every change of the user's memories and every
/// extraction failure, newest first.
pub fn user_history(
    app: &App,
    user: UserId,
    query: Option<&str>,
) -> Result<Response<ResBody>, ApiError> {
    let q: HistoryQuery = body::query(query)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::invalid(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        )));
    }
    require_user(app, user)?;
    let entries = app.store.user_memory_history(user, limit)?;
    let out: Vec<_> = entries.iter().map(entry_out).collect();
    ok(&json!({ "history": out }))
}
