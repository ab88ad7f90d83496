//! The daemon itself: `/health` (models, load progress, queue, store counts), `/shutdown`, and
//! the `/events` stream of background work.

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::body;
use super::error::{scrub_paths, ApiError};
use super::respond::{json_response, sse_response, ResBody};
use super::sse::SseEvent;
use super::{App, Transport};
use crate::error_code::ErrorCode;
use crate::events::Event;
use crate::llm::ModelState;

pub(super) fn health(app: &App) -> Result<Response<ResBody>, ApiError> {
    let loaded = app.pool.loaded();
    let default = app.pool.default_model();
    // The default model decides the status: `loading` while it loads (at start), `ok` once it is
    // loaded or when it was unloaded for idleness (the next request loads it again). Another
    // model loading never turns health unavailable.
    let chat = loaded.iter().find(|m| m.name == default && !m.unloading);
    let (state, error, loading) = match chat.map(|m| &m.state) {
        Some(ModelState::Loading { stage, progress }) => (
            "loading",
            None,
            Some(json!({"stage": stage.as_str(), "progress": progress})),
        ),
        Some(ModelState::Ready) => ("ready", None, None),
        Some(ModelState::Failed(err)) => ("failed", Some(scrub_paths(err)), None),
        Some(ModelState::Unloaded) | None => ("unloaded", None, None),
    };
    let status = match state {
        "ready" | "unloaded" => "ok",
        "loading" => "loading",
        _ => "unavailable",
    };
    let (loads, unloads) = app.pool.counters();
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_ms": u64::try_from(app.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "models": {
            "chat": {
                "name": default,
                "state": state,
                "error": error,
                "loading": loading,
                "n_ctx": chat.map_or(app.pool.configured_ctx(), |m| m.n_ctx),
            },
            "embed": embed_status(&app.embedder),
            "loaded": loaded.iter().map(super::models::loaded_out).collect::<Vec<_>>(),
            "loads": loads,
            "unloads": unloads,
        },
        "queue": {
            "waiting": loaded.iter().map(|m| m.queued).sum::<usize>(),
            "capacity": app.pool.queue_capacity(),
            "active_turns": app.chat.active_turns(),
        },
        "background": background(app.jobs.status()),
        // The sandboxed extraction workers: how many run, how they were confined, and how
        // many files hit a limit or crashed one.
        "extraction": app.ingestor.extractor().status(),
        "store": app.store.counts().ok(),
    });
    let code = if status == "ok" {
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
pub(super) fn shutdown(app: &App, transport: Transport) -> Result<Response<ResBody>, ApiError> {
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
pub(super) fn embed_status(embedder: &crate::embed::Embedder) -> serde_json::Value {
    use crate::embed::EmbedState;
    let (state, error) = match embedder.state() {
        EmbedState::Idle => ("idle", None),
        EmbedState::Loading => ("loading", None),
        EmbedState::Ready => ("ready", None),
        EmbedState::Failed(err) => ("failed", Some(scrub_paths(&err))),
    };
    json!({"name": embedder.model_id(), "state": state, "error": error})
}

/// Subscriber buffer between the broadcast and the socket.
pub(super) const EVENTS_BUFFER: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Comma-separated event names to receive; all when absent.
    types: Option<String>,
}

/// `GET /events[?types=a,b]`: an SSE stream of background-work notifications. A subscriber that
/// fell behind gets `event: lagged {"missed": n}` and should re-read the state it shows.
pub(super) fn events(app: &App, query: Option<&str>) -> Result<Response<ResBody>, ApiError> {
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
                    SseEvent::json(event.name(), &event_data(&event))
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

/// The scheduler's state, as health shows it.
fn background(s: crate::jobs::JobsStatus) -> serde_json::Value {
    json!({
        "pending": s.pending,
        "running": s.running,
        "generating": s.generating,
        "finished": s.finished,
        "preempted": s.preempted,
    })
}

/// An event's data, as `/events` sends it.
fn event_data(event: &Event) -> serde_json::Value {
    match event {
        Event::FileQueued { path, size } => json!({"path": path, "size": size}),
        Event::FileIndexed {
            path,
            document_id,
            chunks,
            reused,
            indexed_at,
        } => json!({
            "path": path,
            "document_id": document_id,
            "chunks": chunks,
            "reused": reused,
            "indexed_at": indexed_at,
        }),
        Event::FileFailed {
            path,
            state,
            reason,
            message,
        } => json!({
            "path": path,
            "state": state,
            "reason": reason,
            "message": scrub_paths(message),
        }),
        Event::FileRemoved { path } => json!({ "path": path }),
        Event::WatchRoot {
            root,
            code,
            message,
        } => json!({"root": root, "code": code.map(|c| c.as_str()), "message": message}),
        Event::Title { chat_id, title } => json!({"chat_id": chat_id, "title": title}),
        Event::MemoryExtracted(r) => json!({
            "user_id": r.user_id,
            "chat_id": r.chat_id,
            "message_id": r.message_id,
            "status": r.status,
            "facts": r.facts,
            "added": r.added,
            "updated": r.updated,
            "unchanged": r.unchanged,
            "discarded": r.discarded,
            "known": r.known,
            "error": r.error,
            "queued_at": r.queued_at,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
        }),
    }
}
