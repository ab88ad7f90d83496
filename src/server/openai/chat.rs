//! `POST /v1/chat/completions` and `POST /v1/completions`: OpenAI requests onto
//! `ChatService::complete`, answers as `chat.completion` / `text_completion` objects or as
//! `data:` chunks ending with `data: [DONE]`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::super::body;
use super::super::error::ApiError;
use super::super::respond::{ok, sse_response, ResBody};
use super::super::sse::SseEvent;
use super::super::App;
use crate::chat::complete::{CompleteEvent, CompleteRequest, Completed, Input, Started};
use crate::chat::MAX_KEEP_ALIVE_SECS;
use crate::error_code::ErrorCode;
use crate::llm::{ChatMessage, ChatRole, Sampling};
use crate::store::{FinishReason, Settings};

/// Chunks buffered towards a streaming client (small: tokens are small, and a slow client
/// should slow generation, not grow memory).
const CHUNK_CHANNEL_CAPACITY: usize = 64;

/// The request fields both endpoints share (OpenAI's sampling parameters, plus llama.cpp's
/// `top_k`, `min_p`, `repeat_penalty` and hearth's `keep_alive` as extensions).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Common {
    model: Option<String>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<u32>,
    stop: Option<Stop>,
    seed: Option<i64>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    n: Option<u32>,
    /// Accepted and ignored (OpenAI uses it for abuse monitoring).
    #[allow(dead_code)]
    user: Option<String>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    keep_alive: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InMessage {
    role: String,
    content: Option<Content>,
    /// Accepted and ignored (a participant's name).
    #[allow(dead_code)]
    name: Option<String>,
    tool_calls: Option<Value>,
    /// Accepted on `tool` messages: in the Hermes format results follow their calls in order.
    #[allow(dead_code)]
    tool_call_id: Option<String>,
    /// Accepted on assistant messages a client echoes back.
    #[allow(dead_code)]
    refusal: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<Value>),
}

pub(super) async fn chat_completions(
    app: &App,
    req: Request<Incoming>,
    _received: std::time::Instant,
) -> Result<Response<ResBody>, ApiError> {
    let mut fields = object(body::json(req, &app.config).await?)?;
    let input: Vec<InMessage> =
        take(&mut fields, "messages")?.ok_or_else(|| missing("messages"))?;
    let max_completion_tokens: Option<u32> = take(&mut fields, "max_completion_tokens")?;
    let grammar = match take::<Value>(&mut fields, "response_format")? {
        None => None,
        Some(format) => response_grammar(&format)?,
    };
    let offered: Option<Vec<super::tools::Tool>> = take(&mut fields, "tools")?;
    let choice: Option<Value> = take(&mut fields, "tool_choice")?;
    // Accepted: an auto reply may hold several calls; a forced one is one call.
    let _parallel: Option<bool> = take(&mut fields, "parallel_tool_calls")?;
    let tools = super::tools::mode(offered, choice)?;
    let mut messages = messages(input)?;
    let mut grammar = grammar;
    if let Some((mode, block)) = &tools {
        messages = super::tools::with_tools(messages, block);
        if let Some(forced) = mode.grammar() {
            if grammar.is_some() {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidRequest,
                    "response_format: cannot be combined with a forced tool_choice",
                ));
            }
            grammar = Some(forced);
        }
    }
    let mut common = common(fields)?;
    if max_completion_tokens.is_some() {
        common.max_tokens = max_completion_tokens;
    }
    let (mut request, stream) = complete_request(common, Input::Messages(messages))?;
    request.grammar = grammar;
    let started = app.chat.complete(request).await?;
    let shape = Shape {
        id: format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
        created: unix_now(),
        model: started.model.clone(),
        chat: true,
    };
    let tools = tools.map(|(mode, _)| mode);
    match stream {
        Some(include_usage) => Ok(stream_response(app, shape, started, include_usage, tools)),
        None => {
            let (text, done) = collect(started).await?;
            match &tools {
                Some(mode) => {
                    let (text, calls) = super::tools::parse(&text, mode);
                    ok(&shape.whole_with_calls(&text, &calls, &done))
                }
                None => ok(&shape.whole(&text, &done)),
            }
        }
    }
}

pub(super) async fn completions(
    app: &App,
    req: Request<Incoming>,
    _received: std::time::Instant,
) -> Result<Response<ResBody>, ApiError> {
    let mut fields = object(body::json(req, &app.config).await?)?;
    let prompt: Prompt = take(&mut fields, "prompt")?.ok_or_else(|| missing("prompt"))?;
    let common = common(fields)?;
    let prompt =
        match prompt {
            Prompt::One(text) => text,
            Prompt::Many(items) => match items.as_slice() {
                [Value::String(text)] => text.clone(),
                _ => return Err(ApiError::bad_request(
                    ErrorCode::InvalidRequest,
                    "prompt: one string is supported (not a batch of prompts, nor token arrays)",
                )),
            },
        };
    if prompt.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "prompt: must not be empty",
        ));
    }
    let (request, stream) = complete_request(common, Input::Raw(prompt))?;
    let started = app.chat.complete(request).await?;
    let shape = Shape {
        id: format!("cmpl-{}", uuid::Uuid::now_v7().simple()),
        created: unix_now(),
        model: started.model.clone(),
        chat: false,
    };
    match stream {
        Some(include_usage) => Ok(stream_response(app, shape, started, include_usage, None)),
        None => {
            let (text, done) = collect(started).await?;
            ok(&shape.whole(&text, &done))
        }
    }
}

/// The body as a JSON object (its endpoint-specific fields are taken out, the rest is
/// [`Common`], where an unknown field is refused by name).
fn object(body: Value) -> Result<serde_json::Map<String, Value>, ApiError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request(
            ErrorCode::BadBody,
            "the body must be a JSON object",
        )),
    }
}

/// Removes `key` and parses it; absent and `null` are `None`.
fn take<T: serde::de::DeserializeOwned>(
    fields: &mut serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<T>, ApiError> {
    match fields.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value).map(Some).map_err(|err| {
            ApiError::bad_request(ErrorCode::InvalidRequest, format!("{key}: {err}"))
        }),
    }
}

fn missing(key: &str) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidRequest, format!("{key}: is required"))
}

/// The shared fields; anything left that [`Common`] does not know is a 400 naming it.
fn common(fields: serde_json::Map<String, Value>) -> Result<Common, ApiError> {
    let bytes = serde_json::to_vec(&Value::Object(fields)).map_err(ApiError::internal)?;
    body::parse(&bytes)
}

/// The grammar a `response_format` asks for: none for `text`, any JSON object for
/// `json_object`, the schema's language for `json_schema` (unsupported keywords → 400 naming
/// them).
fn response_grammar(format: &Value) -> Result<Option<String>, ApiError> {
    let bad = |message: String| ApiError::bad_request(ErrorCode::InvalidRequest, message);
    match format["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(crate::chat::schema::json_object_grammar())),
        Some("json_schema") => {
            let spec = &format["json_schema"];
            if spec["name"].as_str().is_none_or(str::is_empty) {
                return Err(bad("response_format.json_schema.name: is required".into()));
            }
            let schema = spec
                .get("schema")
                .ok_or_else(|| bad("response_format.json_schema.schema: is required".into()))?;
            crate::chat::schema::grammar_for(schema)
                .map(Some)
                .map_err(|err| bad(format!("response_format.json_schema.{err}")))
        }
        _ => Err(bad(
            "response_format.type: must be text, json_object or json_schema".into(),
        )),
    }
}

/// OpenAI messages as the template sees them. Text only: other content part types are refused
/// by name.
fn messages(input: Vec<InMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    if input.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "messages: must not be empty",
        ));
    }
    let bad = |message: String| ApiError::bad_request(ErrorCode::InvalidRequest, message);
    let mut out = Vec::with_capacity(input.len());
    for (i, m) in input.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => ChatRole::System,
            "user" => ChatRole::User,
            "assistant" => ChatRole::Assistant,
            "tool" => ChatRole::User,
            "function" => {
                return Err(bad(format!(
                    "messages[{i}].role: 'function' is the deprecated form; use tools and 'tool' messages"
                )))
            }
            other => {
                return Err(bad(format!(
                    "messages[{i}].role: '{other}' is not one of system, developer, user, assistant, tool"
                )))
            }
        };
        if m.tool_calls.is_some() && m.role != "assistant" {
            return Err(bad(format!(
                "messages[{i}].tool_calls: only assistant messages carry tool calls"
            )));
        }
        let is_tool = m.role == "tool";
        let calls = m.tool_calls;
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    match (part["type"].as_str(), part["text"].as_str()) {
                        (Some("text"), Some(piece)) => text.push_str(piece),
                        (Some(kind), _) => {
                            return Err(bad(format!(
                                "messages[{i}].content[{j}]: part type '{kind}' is not supported (text only)"
                            )))
                        }
                        (None, _) => {
                            return Err(bad(format!(
                                "messages[{i}].content[{j}]: a part needs a type"
                            )))
                        }
                    }
                }
                text
            }
        };
        if content.contains('\0') {
            return Err(bad(format!(
                "messages[{i}].content: must not contain NUL characters"
            )));
        }
        let content = match (&calls, is_tool) {
            (Some(calls), _) => super::tools::assistant_calls(&content, calls, i)?,
            (None, true) => super::tools::tool_result(&content),
            (None, false) => content,
        };
        out.push(ChatMessage { role, content });
    }
    Ok(out)
}

/// The engine request of the shared fields, and how to stream: `None` for one JSON answer,
/// `Some(include_usage)` for chunks.
fn complete_request(c: Common, input: Input) -> Result<(CompleteRequest, Option<bool>), ApiError> {
    let bad = |message: String| ApiError::bad_request(ErrorCode::InvalidRequest, message);
    if c.n.is_some_and(|n| n != 1) {
        return Err(bad("n: only 1 choice per request is supported".into()));
    }
    let defaults = Settings::default();
    let sampling = Sampling {
        temperature: c.temperature.unwrap_or(defaults.temperature),
        top_p: c.top_p.unwrap_or(defaults.top_p),
        top_k: c.top_k.unwrap_or(defaults.top_k),
        min_p: c.min_p.unwrap_or(defaults.min_p),
        // OpenAI has no repeat penalty (its frequency/presence penalties are the analogue).
        repeat_penalty: c.repeat_penalty.unwrap_or(1.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        // Any integer seeds: reduced to the sampler's 32 bits.
        seed: c.seed.map(|s| (s as u64 & 0xffff_ffff) as u32),
    };
    let in_range = |name: &str, v: f32, lo: f32, hi: f32| {
        if v.is_finite() && (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(bad(format!("{name}: must be between {lo} and {hi}")))
        }
    };
    in_range("temperature", sampling.temperature, 0.0, 2.0)?;
    in_range("top_p", sampling.top_p, 0.0, 1.0)?;
    in_range("min_p", sampling.min_p, 0.0, 1.0)?;
    in_range("repeat_penalty", sampling.repeat_penalty, 0.5, 2.0)?;
    in_range("frequency_penalty", sampling.frequency_penalty, -2.0, 2.0)?;
    in_range("presence_penalty", sampling.presence_penalty, -2.0, 2.0)?;
    if c.max_tokens == Some(0) {
        return Err(bad("max_tokens: must be at least 1".into()));
    }
    if c.keep_alive.is_some_and(|k| k > MAX_KEEP_ALIVE_SECS) {
        return Err(bad(format!(
            "keep_alive: must be at most {MAX_KEEP_ALIVE_SECS} seconds"
        )));
    }
    let stop = match c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    let include_usage = c.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if c.stream_options.is_some() && !c.stream {
        return Err(bad("stream_options: only with stream: true".into()));
    }
    Ok((
        CompleteRequest {
            input,
            model: c.model,
            sampling,
            max_tokens: c.max_tokens,
            stop,
            grammar: None,
            keep_alive: c.keep_alive.map(Duration::from_secs),
        },
        c.stream.then_some(include_usage),
    ))
}

/// Waits for the whole completion (non-streaming answers).
async fn collect(mut started: Started) -> Result<(String, Completed), ApiError> {
    let mut text = String::new();
    while let Some(event) = started.events.recv().await {
        match event {
            CompleteEvent::Token(piece) => text.push_str(&piece),
            CompleteEvent::Done(done) => return Ok((text, done)),
            CompleteEvent::Error { code, message } => return Err(stream_error(code, message)),
        }
    }
    Err(ApiError::internal("the completion ended without a result"))
}

fn stream_error(code: ErrorCode, message: String) -> ApiError {
    match code {
        ErrorCode::ShuttingDown => ApiError::unavailable(code, message, 5),
        _ => ApiError::new(http::StatusCode::INTERNAL_SERVER_ERROR, code, message),
    }
}

/// What every object of one answer shares.
struct Shape {
    id: String,
    created: u64,
    model: String,
    /// `chat.completion` (messages) or `text_completion` (prompt).
    chat: bool,
}

impl Shape {
    fn whole(&self, text: &str, done: &Completed) -> Value {
        let choice = if self.chat {
            json!({
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": finish(done.finish_reason),
            })
        } else {
            json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish(done.finish_reason),
            })
        };
        json!({
            "id": self.id,
            "object": if self.chat { "chat.completion" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(done),
            "system_fingerprint": fingerprint(),
        })
    }

    /// A chat answer that may hold tool calls (`finish_reason: tool_calls` when it does).
    fn whole_with_calls(&self, text: &str, calls: &[Value], done: &Completed) -> Value {
        let mut out = self.whole(text, done);
        if !calls.is_empty() {
            let choice = &mut out["choices"][0];
            choice["message"]["tool_calls"] = json!(calls);
            if text.is_empty() {
                choice["message"]["content"] = Value::Null;
            }
            choice["finish_reason"] = json!("tool_calls");
        }
        out
    }

    /// A streamed chunk with one choice.
    fn chunk(&self, delta: Value, finish_reason: Option<FinishReason>) -> SseEvent {
        self.chunk_as(delta, finish_reason.map(finish))
    }

    fn chunk_as(&self, delta: Value, finish_reason: Option<&str>) -> SseEvent {
        let choice = if self.chat {
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason})
        } else {
            json!({"index": 0, "text": delta["content"].as_str().unwrap_or(""), "logprobs": null, "finish_reason": finish_reason})
        };
        self.event(json!([choice]), None)
    }

    fn event(&self, choices: Value, usage: Option<Value>) -> SseEvent {
        let mut chunk = json!({
            "id": self.id,
            "object": if self.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": fingerprint(),
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        data(&chunk)
    }
}

/// A `data:`-only SSE frame (OpenAI's streams have no `event:` names).
fn data(value: &Value) -> SseEvent {
    SseEvent::json("", value)
}

/// The streaming answer: a task turns the engine's events into chunks; a client that goes away
/// drops the channel, which ends the task and cancels the generation.
fn stream_response(
    app: &App,
    shape: Shape,
    mut started: Started,
    include_usage: bool,
    tools: Option<super::tools::Mode>,
) -> Response<ResBody> {
    let (tx, rx) = mpsc::channel::<SseEvent>(CHUNK_CHANNEL_CAPACITY);
    let mut gate = tools.as_ref().map(|mode| {
        super::tools::StreamGate::new(matches!(mode, super::tools::Mode::Required { .. }))
    });
    app.tasks.spawn(async move {
        let role = if shape.chat {
            json!({"role": "assistant", "content": ""})
        } else {
            json!({"content": ""})
        };
        if tx.send(shape.chunk(role, None)).await.is_err() {
            return;
        }
        loop {
            let event = tokio::select! {
                event = started.events.recv() => event,
                () = tx.closed() => return,
            };
            let sent = match event {
                Some(CompleteEvent::Token(piece)) => {
                    let piece = match gate.as_mut() {
                        Some(gate) => gate.push(&piece),
                        None => piece,
                    };
                    if piece.is_empty() {
                        Ok(())
                    } else {
                        tx.send(shape.chunk(json!({ "content": piece }), None))
                            .await
                    }
                }
                Some(CompleteEvent::Done(done)) => {
                    // A reply held back as a possible tool call: its calls (or its text) now.
                    let mut finish_as = None;
                    if let (Some(gate), Some(mode)) = (gate.take(), tools.as_ref()) {
                        let (held, may_call) = gate.finish();
                        let (text, calls) = if may_call {
                            super::tools::parse(&held, mode)
                        } else {
                            (held, Vec::new())
                        };
                        if !text.is_empty()
                            && tx
                                .send(shape.chunk(json!({ "content": text }), None))
                                .await
                                .is_err()
                        {
                            return;
                        }
                        if !calls.is_empty() {
                            let deltas: Vec<Value> = calls
                                .iter()
                                .enumerate()
                                .map(|(index, call)| {
                                    let mut call = call.clone();
                                    call["index"] = json!(index);
                                    call
                                })
                                .collect();
                            if tx
                                .send(shape.chunk(json!({ "tool_calls": deltas }), None))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            finish_as = Some("tool_calls");
                        }
                    }
                    let mut sent = tx
                        .send(shape.chunk_as(
                            json!({}),
                            Some(finish_as.unwrap_or(finish(done.finish_reason))),
                        ))
                        .await;
                    if sent.is_ok() && include_usage {
                        sent = tx.send(shape.event(json!([]), Some(usage(&done)))).await;
                    }
                    if sent.is_ok() {
                        let _ = tx
                            .send(SseEvent {
                                event: "",
                                data: "[DONE]".into(),
                            })
                            .await;
                    }
                    return;
                }
                Some(CompleteEvent::Error { code, message }) => {
                    let err = stream_error(code, message);
                    let _ = tx
                        .send(data(&json!({"error": {
                            "message": err.message,
                            "type": "server_error",
                            "param": null,
                            "code": err.code.as_str(),
                        }})))
                        .await;
                    return;
                }
                None => return,
            };
            if sent.is_err() {
                return;
            }
        }
    });
    sse_response(rx)
}

fn finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

fn usage(done: &Completed) -> Value {
    json!({
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    })
}

fn fingerprint() -> String {
    format!("hearth-{}", env!("CARGO_PKG_VERSION"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
