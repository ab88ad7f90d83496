//! The models endpoints: the list (`GET /models`: the manifest's chat and test models, the
//! user's pinned files and the embedder, each with its file's state, the header of a verified
//! GGUF file, and what is loaded), adding and removing a user's file (local socket only), and
//! loading / unloading a chat model.

use std::path::PathBuf;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body;
use super::error::{scrub_paths, ApiError};
use super::respond::{json_response, ok, ResBody};
use super::{App, Transport};
use crate::embed::EmbedState;
use crate::error_code::ErrorCode;
use crate::llm::ModelState;
use crate::models::gguf::GgufInfo;
use crate::models::{FileCheck, Listing, Role};
use crate::pool::LoadedModel;

/// Every model with its file's state ([`crate::models::list`]), off the runtime: it stats every
/// file and hashes the ones not verified before (once). Shared by every listing of models:
/// this API's, `/v1/models` and the compat listener's.
pub(super) async fn listings(app: &App) -> Result<Vec<crate::models::Listing>, ApiError> {
    let store = app.store.clone();
    let dir = app.models_dir.clone();
    tokio::task::spawn_blocking(move || crate::models::list(&dir, &store))
        .await
        .map_err(ApiError::internal)
}

pub(super) async fn list(app: &App) -> Result<Response<ResBody>, ApiError> {
    let listings = listings(app).await?;
    let loaded = app.pool.loaded();
    let models: Vec<Value> = listings
        .iter()
        .map(|l| model_out(app, l, &loaded))
        .collect();
    let adding: Vec<Value> = app
        .adding
        .snapshot()
        .into_iter()
        .map(|(name, progress)| json!({"name": name, "progress": progress}))
        .collect();
    let (loads, unloads) = app.pool.counters();
    ok(&json!({
        "models": models,
        "adding": adding,
        "default": app.pool.default_model(),
        "loads": loads,
        "unloads": unloads,
    }))
}

/// One model as the list shows it.
fn model_out(app: &App, listing: &Listing, loaded: &[LoadedModel]) -> Value {
    let entry = &listing.entry;
    let running = loaded
        .iter()
        .find(|m| m.name == entry.name && !m.unloading)
        .or_else(|| loaded.iter().find(|m| m.name == entry.name));
    let (state, error) = match (&listing.file, entry.role) {
        (FileCheck::Missing, _) => ("missing", None),
        (FileCheck::Changed(why), _) => ("changed", Some(scrub_paths(why))),
        (FileCheck::Unpinned, _) => ("unpinned", None),
        (FileCheck::Verified, Role::Embed) => match app.embedder.state() {
            EmbedState::Idle => ("available", None),
            EmbedState::Loading => ("loading", None),
            EmbedState::Ready => ("loaded", None),
            EmbedState::Failed(err) => ("failed", Some(scrub_paths(&err))),
        },
        (FileCheck::Verified, _) if running.is_some_and(|m| m.unloading) => ("unloading", None),
        (FileCheck::Verified, _) => match running.map(|m| &m.state) {
            Some(ModelState::Loading { .. }) => ("loading", None),
            Some(ModelState::Ready) => ("loaded", None),
            Some(ModelState::Failed(err)) => ("failed", Some(scrub_paths(err))),
            Some(ModelState::Unloaded) | None => ("available", None),
        },
    };
    let metadata = listing.info.as_ref().map(metadata_out);
    let file = if entry.user {
        // The user's own path, shown only as its file name (no paths in API bodies).
        scrub_paths(&entry.file)
    } else {
        entry.file.clone()
    };
    json!({
        "name": entry.name,
        "source": match (&listing.file, entry.user) {
            (FileCheck::Unpinned, _) => "unpinned",
            (_, true) => "user",
            (_, false) => "manifest",
        },
        "role": entry.role.as_str(),
        "file": file,
        "size": entry.size,
        "sha256": entry.sha256,
        "group": entry.group,
        "default": entry.name == app.pool.default_model(),
        "state": state,
        "error": error,
        "metadata": metadata,
        "metadata_error": listing.info_error.as_deref().map(scrub_paths),
        "loaded_at": running.map(|m| m.loaded_at),
        "expires_at": running.and_then(|m| m.expires_at),
        "ram_bytes": running.map(|m| m.memory_bytes),
        "active": running.map(|m| m.active),
        "fetch": (listing.file == FileCheck::Missing && !entry.user)
            .then(|| entry.group.as_ref().map(|g| format!("./models/fetch {g}"))),
        "add": (listing.file == FileCheck::Unpinned)
            .then(|| format!("hearth models add {}", entry.file)),
    })
}

/// What the list shows of a GGUF header.
fn metadata_out(info: &GgufInfo) -> Value {
    json!({
        "architecture": info.architecture,
        "name": info.name,
        "parameters": info.parameters,
        "quantization": info.quantization,
        "context_length": info.context_length,
        "chat_template": info.has_chat_template,
        "template_family": info.template_family(),
        "license": info.license,
    })
}

/// A loaded model as health and `hearth ps` show it.
pub(super) fn loaded_out(model: &LoadedModel) -> Value {
    let (state, error) = match &model.state {
        _ if model.unloading => ("unloading", None),
        ModelState::Loading { .. } => ("loading", None),
        ModelState::Ready => ("loaded", None),
        ModelState::Failed(err) => ("failed", Some(scrub_paths(err))),
        ModelState::Unloaded => ("unloaded", None),
    };
    let loading = match &model.state {
        ModelState::Loading { stage, progress } => {
            Some(json!({"stage": stage.as_str(), "progress": progress}))
        }
        _ => None,
    };
    json!({
        "name": model.name,
        "state": state,
        "error": error,
        "loading": loading,
        "loaded_at": model.loaded_at,
        "expires_at": model.expires_at,
        "active": model.active,
        "ram_bytes": model.memory_bytes,
        "n_ctx": model.n_ctx,
        "threads": {
            "decode": model.threads.decode,
            "batch": model.threads.batch,
            "adaptive": model.threads.adaptive,
            "changes": model.threads.changes,
            "contention": model.threads.contention,
        },
        "queue": {"waiting": model.queued, "capacity": model.queue_capacity},
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddModel {
    path: String,
    name: Option<String>,
}

/// `POST /models {"path","name?"}`: pins a GGUF file of the user's. Local socket only: a
/// TCP client (possibly a web page) must not make the daemon read arbitrary files.
pub(super) async fn add(
    app: &App,
    transport: Transport,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    local_only(transport, "adding a model")?;
    let body: AddModel = body::json(req, &app.config).await?;
    let path = PathBuf::from(&body.path);
    let store = app.store.clone();
    let progress = app.adding.start(
        body.name
            .clone()
            .unwrap_or_else(|| crate::models::user::default_name(&path)),
    );
    let name = body.name.clone();
    // Hashing a multi-GB file takes seconds to minutes: off the runtime, with progress for the
    // list (`hearth models add` shows it).
    let added = tokio::task::spawn_blocking(move || {
        crate::models::user::add(&path, name.as_deref(), &store, &|done| progress.set(done))
    })
    .await
    .map_err(ApiError::internal)??;
    app.store.durable().await?;
    tracing::info!(model = %added.model.name, size = added.model.size, replaced = added.replaced, "model added");
    let status = if added.replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(
        status,
        &json!({
            "name": added.model.name,
            "source": "user",
            "file": scrub_paths(&added.model.path),
            "size": added.model.size,
            "sha256": added.model.sha256,
            "replaced": added.replaced,
            "metadata": metadata_out(&added.info),
        }),
    ))
}

/// `DELETE /models/{name}`: unpins a user's model (unloading it first); the file stays.
pub(super) async fn remove(
    app: &App,
    transport: Transport,
    name: &str,
) -> Result<Response<ResBody>, ApiError> {
    local_only(transport, "removing a model")?;
    if app.store.user_model(name)?.is_none() {
        let message = if crate::models::Manifest::builtin().entry(name).is_ok() {
            format!("'{name}' ships with hearth and cannot be removed")
        } else {
            format!("no model '{name}' was added")
        };
        return Err(ApiError::not_found(ErrorCode::UnknownModel, message));
    }
    let unloaded = app.pool.unload(name);
    app.store.remove_user_model(name)?;
    app.store.durable().await?;
    ok(&json!({"name": name, "removed": true, "unloaded": unloaded}))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LoadModel {
    /// Seconds to stay loaded once idle (default: `model_ttl_secs`).
    keep_alive: Option<u64>,
}

/// `POST /models/{name}/load`: loads the model (waits until it is ready).
pub(super) async fn load(
    app: &App,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let has_body = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|len| len != "0");
    let body: LoadModel = if has_body {
        body::json(req, &app.config).await?
    } else {
        LoadModel::default()
    };
    if body
        .keep_alive
        .is_some_and(|k| k > crate::chat::MAX_KEEP_ALIVE_SECS)
    {
        return Err(ApiError::invalid(format!(
            "keep_alive: must be at most {} seconds",
            crate::chat::MAX_KEEP_ALIVE_SECS
        )));
    }
    let started = std::time::Instant::now();
    app.pool
        .load(name, body.keep_alive.map(Duration::from_secs))
        .await?;
    let model = app.pool.loaded_model(name);
    ok(&json!({
        "name": name,
        "state": "loaded",
        "load_ms": started.elapsed().as_millis() as u64,
        "model": model.as_ref().map(loaded_out),
    }))
}

/// `POST /models/{name}/unload`.
pub(super) fn unload(app: &App, name: &str) -> Result<Response<ResBody>, ApiError> {
    app.pool.resolve(name)?;
    let unloaded = app.pool.unload(name);
    ok(&json!({"name": name, "unloaded": unloaded}))
}

fn local_only(transport: Transport, what: &str) -> Result<(), ApiError> {
    if transport == Transport::Local {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::LocalOnly,
        format!("{what} is only accepted on the local socket"),
    ))
}

/// Adds in progress (name → share hashed), for the list while `hearth models add` waits.
#[derive(Default)]
pub struct Adding {
    state: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u64, (String, f32)>>>,
    next: std::sync::atomic::AtomicU64,
}

/// One add's progress entry; removed from the list when dropped.
pub(super) struct AddProgress {
    id: u64,
    state: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u64, (String, f32)>>>,
}

impl Adding {
    fn start(&self, name: String) -> AddProgress {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id, (name, 0.0));
        AddProgress {
            id,
            state: self.state.clone(),
        }
    }

    fn snapshot(&self) -> Vec<(String, f32)> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, (String, f32)>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl AddProgress {
    fn set(&self, done: f32) {
        if let Some(entry) = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(&self.id)
        {
            entry.1 = done;
        }
    }
}

impl Drop for AddProgress {
    fn drop(&mut self) {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}
