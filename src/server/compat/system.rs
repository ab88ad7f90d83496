//! The original's system routes: the health gate the Electron main process polls, capabilities,
//! the model list and switch, and the admin reset.

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::body;
use super::super::error::{scrub_paths, ApiError};
use super::super::respond::{json_response, ok, ResBody};
use super::super::users::{remove_user, update_settings};
use super::super::App;
use crate::embed::EmbedState;
use crate::llm::ModelState;
use crate::models::{FileCheck, Listing, Role};

/// The only provider hearth is: models run in-process with llama.cpp.
const PROVIDER: &str = "llamacpp";
/// Providers the original knew; the other two are answered with a warning.
const PROVIDERS: [&str; 3] = ["ollama", "openai", "llamacpp"];
/// Below this many billion parameters the original advised against memory extraction.
const SMALL_MODEL_BILLIONS: f64 = 1.5;

/// `GET /api/health`: 200 with `startup_validation` once the chat model is loaded (or has
/// failed: the app then shows the warnings); 503 while it loads, which the app's start-up gate
/// simply polls again.
pub(super) fn health(app: &App) -> Result<Response<ResBody>, ApiError> {
    let default = app.pool.default_model().to_string();
    let loaded = app.pool.loaded();
    let chat = loaded.iter().find(|m| m.name == default && !m.unloading);
    let mut warnings = Vec::new();
    match chat.map(|m| &m.state) {
        Some(ModelState::Loading { .. }) => {
            let mut response = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"detail": format!("loading the chat model {default}")}),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(response);
        }
        Some(ModelState::Failed(err)) => warnings.push(json!({
            "component": "llamacpp_chat_model",
            "message": format!("the chat model {default} cannot be loaded: {}", scrub_paths(err)),
            "suggestion": "fetch it (./models/fetch chat) or choose another model; `hearth models` lists them",
        })),
        _ => {}
    }
    let embed_ok = match app.embedder.state() {
        EmbedState::Failed(err) => {
            warnings.push(json!({
                "component": "llamacpp_embed_model",
                "message": format!("the embedding model cannot be loaded: {}", scrub_paths(&err)),
                "suggestion": "fetch it with ./models/fetch embed; documents cannot be searched until then",
            }));
            false
        }
        _ => true,
    };
    let counts = app.store.counts().ok();
    let validation = if warnings.is_empty() {
        json!({"passed": true})
    } else {
        json!({"passed": false, "warnings": warnings})
    };
    ok(&json!({
        "status": if warnings.is_empty() && counts.is_some() { "healthy" } else { "degraded" },
        "provider": PROVIDER,
        "components": {
            "database": counts.is_some(),
            "database_stats": counts.map(|c| json!({
                "users": c.users,
                "chats": c.chats,
                "messages": c.messages,
                "documents": c.documents,
                "settings": c.users,
            })),
            "langchain_embeddings": embed_ok,
            "mem0_memory": true,
            "vectorstore": true,
            "startup_validation": validation,
        },
    }))
}

/// The chat models that can be loaded (verified files), with their size in billions of
/// parameters from the GGUF header (0 when unknown).
async fn chat_models(app: &App) -> Result<Vec<(String, f64)>, ApiError> {
    let listings = crate::server::models::listings(app).await?;
    Ok(listings
        .iter()
        .filter(|l| l.entry.role == Role::Chat && l.file == FileCheck::Verified)
        .map(|l: &Listing| {
            let billions = l.info.as_ref().map_or(0.0, |i| i.parameters as f64 / 1e9);
            (l.entry.name.clone(), billions)
        })
        .collect())
}

/// The model the app shows as current: the last one switched to, else the daemon's default.
fn current_model(app: &App) -> String {
    app.compat_model
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or_else(|| app.pool.default_model().to_string())
}

/// `GET /api/capabilities`
pub(super) async fn capabilities(app: &App) -> Result<Response<ResBody>, ApiError> {
    let current = current_model(app);
    let billions = chat_models(app)
        .await?
        .into_iter()
        .find(|(name, _)| *name == current)
        .map_or(0.0, |(_, b)| b);
    let large = billions == 0.0 || billions > SMALL_MODEL_BILLIONS;
    ok(&json!({
        "llm_providers": [PROVIDER],
        "current_provider": PROVIDER,
        "gpu_info": {"available": false, "cuda_enabled": false},
        "model_info": {
            "name": current,
            "provider": PROVIDER,
            "estimated_params_billions": (billions * 100.0).round() / 100.0,
            "is_large_enough_for_memory": large,
            "memory_recommendation": if large { "enabled" } else { "disabled" },
        },
    }))
}

/// `GET /api/models`
pub(super) async fn models(app: &App) -> Result<Response<ResBody>, ApiError> {
    let names: Vec<String> = chat_models(app)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    ok(&json!({
        "provider": PROVIDER,
        "current_model": current_model(app),
        "models": names,
    }))
}

#[derive(Deserialize)]
pub(super) struct Switch {
    provider: String,
    model: Option<String>,
    user_id: Option<String>,
}

/// `POST /api/models/switch`: picks the asked model (or the user's saved one, or the smallest),
/// loads it, and makes it the user's model (their settings) and the app's current one.
pub(super) async fn switch(
    app: &App,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let body: Switch = body::json(req, &app.config).await?;
    let provider = body.provider.trim().to_ascii_lowercase();
    let refused = |warning: String| {
        ok(&json!({
            "success": false, "provider": provider, "model": Value::Null, "models": [],
            "changed": false, "warning": warning,
        }))
    };
    if !PROVIDERS.contains(&provider.as_str()) {
        return Err(ApiError::bad_request(
            crate::error_code::ErrorCode::InvalidRequest,
            format!("Unknown provider '{provider}'. Supported: llamacpp, ollama, openai."),
        ));
    }
    if provider != PROVIDER {
        return refused(format!(
            "hearth runs its models in-process with llama.cpp; the provider '{provider}' is not \
             available. Choose llamacpp."
        ));
    }
    let available = chat_models(app).await?;
    if available.is_empty() {
        return refused(
            "No models found for provider 'llamacpp'. Fetch one with ./models/fetch chat or add \
             your own with `hearth models add`."
                .into(),
        );
    }
    let user = match body.user_id.as_deref() {
        Some(text) => {
            let id = super::user_id(text)?;
            app.store.user(id)?.map(|u| u.id)
        }
        None => None,
    };
    let saved = match user {
        Some(id) => app.store.settings(id)?.model,
        None => None,
    };
    let preferred = body.model.clone().or(saved);
    let selected = match preferred.filter(|p| available.iter().any(|(n, _)| n == p)) {
        Some(name) => name,
        None => smallest(&available),
    };
    let before = current_model(app);
    app.pool.load(&selected, None).await.map_err(|err| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            crate::error_code::ErrorCode::ModelUnavailable,
            format!("Model switch failed: {}", scrub_paths(&err.to_string())),
        )
    })?;
    if let Some(id) = user {
        let model = selected.clone();
        update_settings(app, id, |s| s.model = Some(model)).await?;
    }
    *app.compat_model
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(selected.clone());
    ok(&json!({
        "success": true,
        "provider": PROVIDER,
        "model": selected,
        "models": available.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "changed": selected != before,
        "warning": Value::Null,
    }))
}

/// The original's fallback: the smallest model; unknown sizes last, ties by name.
fn smallest(models: &[(String, f64)]) -> String {
    let mut sorted: Vec<&(String, f64)> = models.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |m: &(String, f64)| if m.1 > 0.0 { m.1 } else { f64::INFINITY };
        key(a).total_cmp(&key(b)).then_with(|| a.0.cmp(&b.0))
    });
    sorted.first().map(|m| m.0.clone()).unwrap_or_default()
}

/// `POST /api/admin/reset`: deletes every user with everything that is theirs (chats,
/// messages, chat documents, settings, memories). The library (the watched folders' index) is
/// left alone: it mirrors the user's own files, which a reset does not touch.
pub(super) async fn reset(app: &App) -> Result<Response<ResBody>, ApiError> {
    let mut users = 0;
    for user in app.store.users()? {
        match remove_user(app, user.id).await {
            Ok(_) => users += 1,
            Err(err) if err.status == StatusCode::NOT_FOUND => {}
            Err(err) => return Err(err),
        }
    }
    *app.compat_model
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    ok(&json!({
        "success": true,
        "message": format!("Reset complete: {users} users and all their chats, documents and memories deleted"),
        "deleted": [],
        "cleared": "All database tables",
        "recreated": [],
    }))
}

#[cfg(test)]
mod tests {
    use super::smallest;

    #[test]
    fn the_fallback_is_the_smallest_known_model() {
        let models = [
            ("b".to_string(), 0.0),
            ("qwen".to_string(), 1.78),
            ("smol".to_string(), 0.135),
        ];
        assert_eq!(smallest(&models), "smol");
        assert_eq!(smallest(&[("z".into(), 0.0), ("a".into(), 0.0)]), "a");
    }
}
