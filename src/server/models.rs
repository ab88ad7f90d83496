//! `GET /api/v1/models`: every model the daemon knows (the manifest's chat and test models and the
//! embedder), its file's state, the header of a verified GGUF file, and what is loaded.

use http::Response;
use serde_json::{json, Value};

use super::error::{scrub_paths, ApiError};
use super::respond::{ok, ResBody};
use super::App;
use crate::embed::EmbedState;
use crate::llm::ModelState;
use crate::models::{FileCheck, Listing, Role};

pub(super) async fn list(app: &App) -> Result<Response<ResBody>, ApiError> {
    let store = app.store.clone();
    let dir = app.models_dir.clone();
    // Stats every file and hashes the ones not verified before (once): off the runtime.
    let listings = tokio::task::spawn_blocking(move || crate::models::list(&dir, &store))
        .await
        .map_err(ApiError::internal)?;
    let models: Vec<Value> = listings.iter().map(|l| model_out(app, l)).collect();
    ok(&json!({ "models": models }))
}

/// One model as the list shows it.
fn model_out(app: &App, listing: &Listing) -> Value {
    let entry = &listing.entry;
    let (state, error) = match (&listing.file, entry.role) {
        (FileCheck::Missing, _) => ("missing", None),
        (FileCheck::Changed(why), _) => ("changed", Some(scrub_paths(why))),
        (FileCheck::Verified, Role::Embed) => match app.embedder.state() {
            EmbedState::Idle => ("available", None),
            EmbedState::Loading => ("loading", None),
            EmbedState::Ready => ("loaded", None),
            EmbedState::Failed(err) => ("failed", Some(scrub_paths(&err))),
        },
        (FileCheck::Verified, _) if entry.name == app.llm.name() => match app.llm.state() {
            ModelState::Loading { .. } => ("loading", None),
            ModelState::Ready => ("loaded", None),
            ModelState::Failed(err) => ("failed", Some(scrub_paths(&err))),
        },
        (FileCheck::Verified, _) => ("available", None),
    };
    let metadata = listing.info.as_ref().map(|info| {
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
    });
    json!({
        "name": entry.name,
        "source": "manifest",
        "role": entry.role.as_str(),
        "file": entry.file,
        "size": entry.size,
        "sha256": entry.sha256,
        "group": entry.group,
        "default": entry.default,
        "state": state,
        "error": error,
        "metadata": metadata,
        "metadata_error": listing.info_error.as_deref().map(scrub_paths),
        "fetch": (listing.file == FileCheck::Missing)
            .then(|| entry.group.as_ref().map(|g| format!("./models/fetch {g}"))),
    })
}
