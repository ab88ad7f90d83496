//! Users and their settings: create (or find by name), read, and the partial settings update
//! with its range checks.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Deserializer, Serialize};

use super::body::{self, clean_text};
use super::error::ApiError;
use super::respond::{json_response, ok, ResBody};
use super::App;
use crate::error_code::ErrorCode;
use crate::store::{Settings, User, UserId};

/// Longest username / chat title, in characters.
pub(super) const MAX_NAME_CHARS: usize = 64;

#[derive(Serialize)]
pub(super) struct UserOut<'a> {
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
pub(super) struct SettingsOut<'a> {
    temperature: f32,
    top_p: f32,
    top_k: u32,
    min_p: f32,
    repeat_penalty: f32,
    max_tokens: u32,
    seed: Option<u32>,
    system_prompt: &'a str,
    use_memory: bool,
    model: Option<&'a str>,
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
            model: s.model.as_deref(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    username: String,
}

pub(super) async fn create_user(
    app: &App,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let body: CreateUser = body::json(req, &app.config).await?;
    let created = ensure_user(app, &body.username).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &UserOut::from(&created.user)))
}

/// The user named `username` (checked and trimmed), created if new; durable when it returns.
/// The compat listener's user creation is this too.
pub(super) async fn ensure_user(
    app: &App,
    username: &str,
) -> Result<crate::store::CreatedUser, ApiError> {
    let username = clean_text("username", username, MAX_NAME_CHARS)?;
    let created = app.store.create_user(&username)?;
    if created.created {
        app.store.durable().await?;
    }
    Ok(created)
}

pub(super) fn require_user(app: &App, id: UserId) -> Result<User, ApiError> {
    app.store
        .user(id)?
        .ok_or_else(|| ApiError::not_found(ErrorCode::UserNotFound, format!("no user {id}")))
}

/// What [`remove_user`] deleted.
pub(super) struct RemovedUser {
    pub chats: usize,
    pub messages: u64,
    pub documents: usize,
}

/// Deletes a user and everything that is theirs: chats (stopping running replies) with their
/// messages and documents, settings, memories and memory history. Durable when it returns.
pub(super) async fn remove_user(app: &App, id: UserId) -> Result<RemovedUser, ApiError> {
    require_user(app, id)?;
    let mut removed = RemovedUser {
        chats: 0,
        messages: 0,
        documents: 0,
    };
    loop {
        let page = app.store.list_chats(id, super::chats::MAX_PAGE, None)?;
        if page.chats.is_empty() {
            break;
        }
        for chat in page.chats {
            match super::chats::remove_chat(app, chat.id).await {
                Ok(deleted) => {
                    removed.chats += 1;
                    removed.messages += deleted.messages;
                    removed.documents += deleted.documents.len();
                }
                // Deleted meanwhile by another request.
                Err(err) if err.status == StatusCode::NOT_FOUND => {}
                Err(err) => return Err(err),
            }
        }
    }
    app.store.delete_user(id)?;
    app.store.durable().await?;
    Ok(removed)
}

/// `DELETE /api/v1/users/{id}`
pub(super) async fn delete_user(app: &App, id: UserId) -> Result<Response<ResBody>, ApiError> {
    let removed = remove_user(app, id).await?;
    ok(&serde_json::json!({
        "deleted": id,
        "chats_deleted": removed.chats,
        "messages_deleted": removed.messages,
        "documents_deleted": removed.documents,
    }))
}

pub(super) fn get_user(app: &App, id: UserId) -> Result<Response<ResBody>, ApiError> {
    let user = require_user(app, id)?;
    ok(&UserOut::from(&user))
}

pub(super) fn get_settings(app: &App, id: UserId) -> Result<Response<ResBody>, ApiError> {
    require_user(app, id)?;
    let settings = app.store.settings(id)?;
    ok(&SettingsOut::from(&settings))
}

/// A partial settings update; `seed: null` clears the seed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SettingsPatch {
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
    /// `null` goes back to the daemon's default model.
    #[serde(default, deserialize_with = "present")]
    model: Option<Option<String>>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub(super) async fn put_settings(
    app: &App,
    id: UserId,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let patch: SettingsPatch = body::json(req, &app.config).await?;
    let next = update_settings(app, id, |s| {
        *s = Settings {
            temperature: patch.temperature.unwrap_or(s.temperature),
            top_p: patch.top_p.unwrap_or(s.top_p),
            top_k: patch.top_k.unwrap_or(s.top_k),
            min_p: patch.min_p.unwrap_or(s.min_p),
            repeat_penalty: patch.repeat_penalty.unwrap_or(s.repeat_penalty),
            max_tokens: patch.max_tokens.unwrap_or(s.max_tokens),
            seed: patch.seed.unwrap_or(s.seed),
            system_prompt: patch
                .system_prompt
                .clone()
                .unwrap_or_else(|| s.system_prompt.clone()),
            use_memory: patch.use_memory.unwrap_or(s.use_memory),
            model: patch.model.clone().unwrap_or_else(|| s.model.clone()),
            updated_at: s.updated_at,
        };
    })
    .await?;
    ok(&SettingsOut::from(&next))
}

/// Changes a user's settings with `edit`, validates the result (a model nobody can load is
/// refused now, not at the next message) and stores it; durable when it returns.
pub(super) async fn update_settings(
    app: &App,
    id: UserId,
    edit: impl FnOnce(&mut Settings),
) -> Result<Settings, ApiError> {
    require_user(app, id)?;
    let mut next = app.store.settings(id)?;
    edit(&mut next);
    next.updated_at = crate::store::now_millis();
    next.validate()
        .map_err(|(field, reason)| ApiError::invalid(format!("{field}: {reason}")))?;
    if let Some(model) = &next.model {
        app.pool.resolve(model)?;
    }
    app.store.put_settings(id, &next)?;
    app.store.durable().await?;
    Ok(next)
}
