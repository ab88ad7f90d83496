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

pub(super) fn require_user(app: &App, id: UserId) -> Result<User, ApiError> {
    app.store
        .user(id)?
        .ok_or_else(|| ApiError::not_found(ErrorCode::UserNotFound, format!("no user {id}")))
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
        model: patch.model.unwrap_or(current.model),
        updated_at: crate::store::now_millis(),
    };
    next.validate()
        .map_err(|(field, reason)| ApiError::invalid(format!("{field}: {reason}")))?;
    if let Some(model) = &next.model {
        // A model nobody can load is refused now, not at the next message.
        app.pool.resolve(model)?;
    }
    app.store.put_settings(id, &next)?;
    app.store.durable().await?;
    ok(&SettingsOut::from(&next))
}
