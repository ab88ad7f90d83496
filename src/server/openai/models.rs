//! `GET /v1/models` and `GET /v1/models/{id}`: hearth's model list (`GET /api/v1/models`) in
//! OpenAI's shape — the chat models that can be loaded and the embedding model.

use http::Response;
use serde_json::{json, Value};

use super::super::error::ApiError;
use super::super::respond::{ok, ResBody};
use super::super::App;
use crate::error_code::ErrorCode;
use crate::models::{FileCheck, Listing, Role};

/// The models a `/v1` request may name: verified chat models (shipped or added) and the
/// embedder; test models, missing, changed and unpinned files are left out.
async fn usable(app: &App) -> Result<Vec<Value>, ApiError> {
    let listings = crate::server::models::listings(app).await?;
    Ok(listings
        .iter()
        .filter(|l| {
            l.file == FileCheck::Verified && matches!(l.entry.role, Role::Chat | Role::Embed)
        })
        .map(out)
        .collect())
}

fn out(listing: &Listing) -> Value {
    let entry = &listing.entry;
    json!({
        "id": entry.name,
        "object": "model",
        // The file's pin date is not known for shipped models; 0 as llama-server does.
        "created": 0,
        "owned_by": if entry.user { "user" } else { "hearth" },
    })
}

pub(super) async fn list(app: &App) -> Result<Response<ResBody>, ApiError> {
    ok(&json!({"object": "list", "data": usable(app).await?}))
}

pub(super) async fn get(app: &App, id: &str) -> Result<Response<ResBody>, ApiError> {
    usable(app)
        .await?
        .into_iter()
        .find(|m| m["id"] == id)
        .map_or_else(
            || {
                Err(ApiError::not_found(
                    ErrorCode::UnknownModel,
                    format!("The model '{id}' does not exist or is not usable here (`hearth models` lists them)"),
                ))
            },
            |m| ok(&m),
        )
}
