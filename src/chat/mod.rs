//! Chat turns: from a user's message to a stored reply.
//!
//! [`ChatService::send`] validates the request, assembles the prompt within the token budget
//! (`prompt`), queues the generation on the inference worker, and hands back a stream of
//! [`ChatEvent`]s. A task per turn forwards tokens, notices a client that went away (its receiver
//! closed) and cancels the generation, then stores the user message and the reply together and
//! waits for durability before sending `Done`: a turn that got its `Done` survives `kill -9`.
//!
//! This module knows nothing of HTTP; `server` turns the events into SSE.

pub mod complete;
pub mod prompt;
pub mod retrieve;
pub mod schema;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error_code::ErrorCode;
use crate::jobs::Jobs;
use crate::llm::{CancelFlag, Finish, GenEvent, Generation, LlmError, Outcome, Priority, Sampling};
use crate::memory::Memories;
use crate::pool::{Lease, Pool, PoolError};
use crate::store::{
    now_millis, BgJobKind, ChatId, FinishReason, Message, MessageId, Role, Settings, Source, Store,
    StoreError, Usage,
};
use retrieve::{RetrieveError, Retriever};

/// Events between the worker and this module's forwarding task; small, since tokens are small.
const GEN_CHANNEL_CAPACITY: usize = 64;
/// Events towards the client. A client that falls this far behind slows generation down.
const CLIENT_CHANNEL_CAPACITY: usize = 64;
/// Largest user message in bytes (the body limit is the outer bound; this one is about prompts).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat not found")]
    ChatNotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("a reply is already being generated in this chat")]
    Busy,
    #[error("the message needs {tokens} prompt tokens but only {budget} fit the context")]
    TooLong { tokens: usize, budget: usize },
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Model(#[from] PoolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("retrieval failed: {0}")]
    Retrieve(#[from] RetrieveError),
}

pub use crate::store::SearchMode;

/// Per-request overrides of the user's settings; every field optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub max_tokens: Option<u32>,
    pub seed: Option<u32>,
    pub system_prompt: Option<String>,
    /// Learn from and recall long-term memories for this message (default: the user's setting).
    pub use_memory: Option<bool>,
    /// The chat model for this message (default: the user's setting, then the daemon's).
    pub model: Option<String>,
    /// Seconds the model stays loaded once idle after this request (default: `model_ttl_secs`;
    /// 0 unloads it as soon as it is idle).
    pub keep_alive: Option<u64>,
}

/// Longest `keep_alive` a request may ask for: a week (longer is "forever" in practice, which is
/// the config's `model_ttl_secs = 0`).
pub const MAX_KEEP_ALIVE_SECS: u64 = 7 * 24 * 3600;

impl Options {
    /// `base` with these overrides applied (not yet validated).
    pub fn apply(&self, base: &Settings) -> Settings {
        Settings {
            temperature: self.temperature.unwrap_or(base.temperature),
            top_p: self.top_p.unwrap_or(base.top_p),
            top_k: self.top_k.unwrap_or(base.top_k),
            min_p: self.min_p.unwrap_or(base.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(base.repeat_penalty),
            max_tokens: self.max_tokens.unwrap_or(base.max_tokens),
            seed: self.seed.or(base.seed),
            system_prompt: self
                .system_prompt
                .clone()
                .unwrap_or_else(|| base.system_prompt.clone()),
            use_memory: self.use_memory.unwrap_or(base.use_memory),
            model: self.model.clone().or_else(|| base.model.clone()),
            updated_at: base.updated_at,
        }
    }
}

/// What the client sees of a turn, in order: `Start`, `Token`*, then one of `Done` / `Error`.
#[derive(Debug, Clone)]
pub enum ChatEvent {
    Start {
        message_id: MessageId,
        reply_id: MessageId,
        /// The model answering.
        model: String,
    },
    /// Context passages, before the first token: sent when there are any, and when documents
    /// were searched and none was found (then with `empty_reason`).
    Sources {
        sources: Vec<Source>,
        empty_reason: Option<retrieve::EmptyReason>,
    },
    Token(String),
    Done(Done),
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// The end of a turn (`server/chats.rs` writes it as `event: done`).
#[derive(Debug, Clone)]
pub struct Done {
    pub reply_id: MessageId,
    /// The model that answered.
    pub model: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
    /// True when older history was left out to fit the context.
    pub truncated: bool,
    pub context: ContextInfo,
}

#[derive(Debug, Clone)]
pub struct Timings {
    /// Request received → first token handed to the client.
    pub ttft_ms: Option<f64>,
    pub prompt_tokens_per_s: Option<f64>,
    pub completion_tokens_per_s: Option<f64>,
    /// Time the request waited for the inference worker.
    pub queued_ms: f64,
    /// Prompt evaluation (the part of it not served from the KV cache).
    pub prefill_ms: f64,
    /// First sampled token to the last.
    pub decode_ms: f64,
}

/// How the prompt was fitted into the context.
#[derive(Debug, Clone)]
pub struct ContextInfo {
    pub n_ctx: u32,
    pub prompt_budget: u32,
    pub prompt_tokens: u32,
    /// Prompt tokens served from the KV cache of the previous turn.
    pub cached_tokens: u32,
    pub history_messages: u32,
    pub history_dropped: u32,
}

/// A request to add a message to a chat and generate the reply.
pub struct SendRequest {
    pub chat_id: ChatId,
    pub content: String,
    pub options: Options,
    /// `None`: the chat's own mode.
    pub search_mode: Option<SearchMode>,
    /// When the server received the request (for time-to-first-token).
    pub received: Instant,
}

/// Runs chat turns; cheap to clone.
#[derive(Clone)]
pub struct ChatService {
    store: Store,
    pool: Pool,
    retriever: Retriever,
    memories: Memories,
    /// Background work scheduled after a turn (titles, memory extraction).
    jobs: Jobs,
    /// The cancel flag of each chat's running turn; at most one turn per chat.
    active: Arc<Mutex<HashMap<ChatId, CancelFlag>>>,
    /// Fired at daemon shutdown: running turns end with `shutting_down`.
    shutdown: CancellationToken,
    /// The daemon's tasks: shutdown waits for every turn task to store its reply.
    tasks: TaskTracker,
}

impl ChatService {
    pub fn new(
        store: Store,
        pool: Pool,
        retriever: Retriever,
        memories: Memories,
        jobs: Jobs,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> ChatService {
        ChatService {
            store,
            pool,
            retriever,
            memories,
            jobs,
            active: Arc::default(),
            shutdown,
            tasks,
        }
    }

    /// Starts a turn. Errors here happen before anything is streamed or stored.
    pub async fn send(&self, req: SendRequest) -> Result<mpsc::Receiver<ChatEvent>, ChatError> {
        if req.content.trim().is_empty() {
            return Err(ChatError::Invalid("content: must not be empty".into()));
        }
        if req.content.len() > MAX_MESSAGE_BYTES {
            return Err(ChatError::Invalid(format!(
                "content: must be at most {MAX_MESSAGE_BYTES} bytes"
            )));
        }
        if req.content.contains('\0') {
            return Err(ChatError::Invalid(
                "content: must not contain NUL characters".into(),
            ));
        }
        let chat = self
            .store
            .chat(req.chat_id)?
            .ok_or(ChatError::ChatNotFound)?;
        let settings = req.options.apply(&self.store.settings(chat.user_id)?);
        settings
            .validate()
            .map_err(|(field, reason)| ChatError::Invalid(format!("options.{field}: {reason}")))?;
        let keep_alive = match req.options.keep_alive {
            Some(secs) if secs > MAX_KEEP_ALIVE_SECS => {
                return Err(ChatError::Invalid(format!(
                    "options.keep_alive: must be at most {MAX_KEEP_ALIVE_SECS} seconds"
                )))
            }
            other => other.map(Duration::from_secs),
        };
        // The model, loaded now if it is not (requests for a model that is loading wait for
        // that one load). Held until the reply is stored: it is never unloaded mid-reply.
        let model = settings
            .model
            .clone()
            .unwrap_or_else(|| self.pool.default_model().to_string());
        let llm = self.pool.get(&model, keep_alive).await?;

        let cancel = CancelFlag::default();
        let slot = ActiveSlot::claim(&self.active, req.chat_id, cancel.clone())?;

        let search_mode = req.search_mode.unwrap_or(chat.search_mode);
        let searched = search_mode != SearchMode::Normal;
        let retrieval = if searched {
            self.retriever
                .retrieve_for_chat(req.chat_id, &req.content)
                .await?
        } else {
            retrieve::Retrieval::default()
        };
        let empty_reason = retrieval.empty_reason;
        let mut sources = retrieval.sources;
        if settings.use_memory && search_mode != SearchMode::Docs {
            let first = u32::try_from(sources.len() + 1).unwrap_or(u32::MAX);
            // Memories come after documents: when the prompt is too long, they go first. A
            // recall failure (embedder unavailable) costs the reply its memories, not the reply.
            match self
                .memories
                .recall(chat.user_id, &req.content, first)
                .await
            {
                Ok(memories) => sources.extend(memories),
                Err(err) => {
                    tracing::warn!(chat = %req.chat_id, error = %err, "memory recall failed; replying without memories");
                }
            }
        }
        let history = prompt::history(&self.store.messages(req.chat_id)?);
        let n_ctx = llm.n_ctx();
        // Reserve room for the reply, but never more than half the context: a huge max_tokens
        // must not starve the prompt. Generation stops with `length` when the context is full.
        let reserve = settings.max_tokens.min(n_ctx / 2);
        let budget = (n_ctx - reserve) as usize;
        let render = (*llm).clone();
        let system = settings.system_prompt.clone();
        let content = req.content.clone();
        let plan = tokio::task::spawn_blocking(move || {
            // Context goes in the system prompt; when even the bare question does not fit with
            // it, the weakest passages are dropped first.
            let mut sources = sources;
            loop {
                let system = retrieve::with_context(&system, &sources, searched);
                match prompt::plan(&system, &history, &content, budget, |m| {
                    render.chat_prompt(m)
                }) {
                    Err(prompt::PlanError::TooLong { .. }) if !sources.is_empty() => {
                        sources.pop();
                    }
                    result => return result.map(|plan| (plan, sources)),
                }
            }
        })
        .await
        .map_err(|err| ChatError::Invalid(format!("prompt assembly failed: {err}")))?
        .map_err(|err| match err {
            prompt::PlanError::TooLong { tokens, budget } => ChatError::TooLong { tokens, budget },
            prompt::PlanError::Llm(err) => ChatError::Llm(err),
        })?;
        let (plan, sources) = plan;

        let (gen_tx, gen_rx) = mpsc::channel(GEN_CHANNEL_CAPACITY);
        let prompt_tokens = u32::try_from(plan.prompt.len()).unwrap_or(u32::MAX);
        llm.submit(Generation {
            prompt: plan.prompt,
            sampling: Sampling {
                temperature: settings.temperature,
                top_k: settings.top_k,
                top_p: settings.top_p,
                min_p: settings.min_p,
                repeat_penalty: settings.repeat_penalty,
                frequency_penalty: 0.0,
                presence_penalty: 0.0,
                seed: settings.seed,
            },
            max_tokens: settings.max_tokens,
            priority: Priority::Interactive,
            cancel: cancel.clone(),
            events: gen_tx,
            grammar: None,
            conversation: Some(req.chat_id.to_string()),
        })?;

        let (out_tx, out_rx) = mpsc::channel(CLIENT_CHANNEL_CAPACITY);
        let turn = Turn {
            model,
            _lease: llm,
            store: self.store.clone(),
            jobs: self.jobs.clone(),
            user_id: chat.user_id,
            use_memory: settings.use_memory,
            first_exchange: chat.message_count == 0
                && !chat.title_by_user
                && chat.title == crate::store::DEFAULT_CHAT_TITLE,
            shutdown: self.shutdown.clone(),
            chat_id: req.chat_id,
            user_message: req.content,
            message_id: MessageId::new(),
            reply_id: MessageId::new(),
            received: req.received,
            cancel,
            sources,
            searched,
            empty_reason,
            context: ContextInfo {
                n_ctx,
                prompt_budget: u32::try_from(budget).unwrap_or(u32::MAX),
                prompt_tokens,
                cached_tokens: 0,
                history_messages: u32::try_from(plan.history_kept).unwrap_or(u32::MAX),
                history_dropped: u32::try_from(plan.history_dropped).unwrap_or(u32::MAX),
            },
        };
        self.tasks.spawn(turn.run(gen_rx, out_tx, slot));
        Ok(out_rx)
    }

    /// Cancels the chat's running turn. False when none is running.
    pub fn cancel(&self, chat_id: ChatId) -> bool {
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        match active.get(&chat_id) {
            Some(flag) => {
                flag.cancel();
                true
            }
            None => false,
        }
    }

    /// Number of turns running or queued.
    pub fn active_turns(&self) -> usize {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Holds a chat's "turn running" slot; releasing happens on drop, whatever ends the turn.
struct ActiveSlot {
    active: Arc<Mutex<HashMap<ChatId, CancelFlag>>>,
    chat_id: ChatId,
}

impl ActiveSlot {
    fn claim(
        active: &Arc<Mutex<HashMap<ChatId, CancelFlag>>>,
        chat_id: ChatId,
        flag: CancelFlag,
    ) -> Result<ActiveSlot, ChatError> {
        let mut map = active.lock().unwrap_or_else(PoisonError::into_inner);
        if map.contains_key(&chat_id) {
            return Err(ChatError::Busy);
        }
        map.insert(chat_id, flag);
        Ok(ActiveSlot {
            active: active.clone(),
            chat_id,
        })
    }
}

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.chat_id);
    }
}

/// One running turn: forwards tokens, stores the result.
struct Turn {
    /// The model's name (background jobs of this turn run on it) and the lease that keeps it
    /// loaded until the turn ends.
    model: String,
    _lease: Lease,
    store: Store,
    jobs: Jobs,
    user_id: crate::store::UserId,
    /// Extract memories from this message once the reply is done.
    use_memory: bool,
    /// Title the chat once the reply is done.
    first_exchange: bool,
    shutdown: CancellationToken,
    chat_id: ChatId,
    user_message: String,
    message_id: MessageId,
    reply_id: MessageId,
    received: Instant,
    cancel: CancelFlag,
    sources: Vec<Source>,
    /// Documents were searched for this message (its `sources` event is sent even if empty).
    searched: bool,
    empty_reason: Option<retrieve::EmptyReason>,
    context: ContextInfo,
}

impl Turn {
    /// Runs the turn; `slot` (the chat's "reply running" mark) is released as soon as the reply
    /// is stored, before the final event goes out.
    async fn run(
        self,
        mut gen_rx: mpsc::Receiver<GenEvent>,
        out: mpsc::Sender<ChatEvent>,
        slot: ActiveSlot,
    ) {
        let mut client_gone = out
            .send(ChatEvent::Start {
                message_id: self.message_id,
                reply_id: self.reply_id,
                model: self.model.clone(),
            })
            .await
            .is_err();
        if (self.searched || !self.sources.is_empty()) && !client_gone {
            let has_documents = self
                .sources
                .iter()
                .any(|s| matches!(s.origin, crate::store::SourceOrigin::Document { .. }));
            // The reason describes the document search: with memories but no excerpt (after
            // a too-long prompt dropped them, too) it still says why no excerpt came.
            let empty_reason = match (self.searched, has_documents) {
                (true, false) => Some(self.empty_reason.unwrap_or(retrieve::EmptyReason::NoMatch)),
                _ => None,
            };
            client_gone = out
                .send(ChatEvent::Sources {
                    sources: self.sources.clone(),
                    empty_reason,
                })
                .await
                .is_err();
        }
        let mut reply = String::new();
        let mut first_token: Option<Instant> = None;
        let mut picked_up: Option<Instant> = None;
        let mut shutting_down = false;
        let outcome = loop {
            tokio::select! {
                event = gen_rx.recv() => match event {
                    Some(GenEvent::Started) => picked_up = Some(Instant::now()),
                    Some(GenEvent::Token(text)) => {
                        reply.push_str(&text);
                        first_token.get_or_insert_with(Instant::now);
                        if !client_gone && out.send(ChatEvent::Token(text)).await.is_err() {
                            client_gone = true;
                            self.cancel.cancel();
                        }
                    }
                    Some(GenEvent::Finished(outcome)) => break outcome,
                    None => break worker_vanished(),
                },
                // A client that disconnects cancels its generation, also during prefill when
                // no token write would reveal it.
                () = out.closed(), if !client_gone => {
                    client_gone = true;
                    self.cancel.cancel();
                }
                () = self.shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    self.cancel.cancel();
                }
            }
        };
        if client_gone {
            tracing::debug!(chat = %self.chat_id, "client went away; generation cancelled");
        }

        let finish_reason = match outcome.finish {
            Finish::Stop => FinishReason::Stop,
            Finish::Length => FinishReason::Length,
            // Interactive work is never preempted; the arm is for completeness.
            Finish::Cancelled | Finish::Preempted => FinishReason::Cancelled,
            Finish::Error => FinishReason::Error,
        };
        let usage = Usage {
            prompt_tokens: outcome.prompt_tokens,
            completion_tokens: outcome.completion_tokens,
        };
        let now = now_millis();
        let mut messages = [
            Message {
                id: self.message_id,
                chat_id: self.chat_id,
                seq: 0,
                role: Role::User,
                content: self.user_message.clone(),
                created_at: now,
                finish_reason: None,
                usage: None,
                sources: Vec::new(),
            },
            Message {
                id: self.reply_id,
                chat_id: self.chat_id,
                seq: 0,
                role: Role::Assistant,
                content: reply,
                created_at: now,
                finish_reason: Some(finish_reason),
                usage: Some(usage),
                sources: self.sources.clone(),
            },
        ];
        let appended = self.store.append_messages(self.chat_id, &mut messages);
        // Readers see the reply from here on, so the turn is over for them: whoever reads it may
        // send the next message at once (waiting for the flush left a window in which they got
        // `generation_in_progress`). Durability keeps its order: the next turn's own flush
        // covers this reply too, and the final event below still waits for it.
        drop(slot);
        let stored = match appended {
            Ok(_) => self.store.durable().await,
            Err(err) => Err(err),
        };
        let event = if let Err(err) = stored {
            tracing::error!(chat = %self.chat_id, error = %err, "cannot store the reply");
            ChatEvent::Error {
                code: ErrorCode::StoreUnavailable,
                message: format!("the reply could not be saved: {err}"),
            }
        } else if shutting_down {
            ChatEvent::Error {
                code: ErrorCode::ShuttingDown,
                message: "the daemon is shutting down; the partial reply was saved".into(),
            }
        } else if outcome.finish == Finish::Error {
            ChatEvent::Error {
                code: ErrorCode::InferenceFailed,
                message: outcome.error.clone().unwrap_or_default(),
            }
        } else {
            let queued = picked_up.map_or(Duration::ZERO, |t| t.duration_since(self.received));
            ChatEvent::Done(Done {
                reply_id: self.reply_id,
                model: self.model.clone(),
                finish_reason,
                usage,
                timings: timings(&outcome, self.received, first_token, queued),
                truncated: self.context.history_dropped > 0,
                context: ContextInfo {
                    cached_tokens: outcome.prompt_reused,
                    ..self.context
                },
            })
        };
        // A complete exchange: a cancelled reply teaches nothing and is no basis for a title.
        let done =
            matches!(&event, ChatEvent::Done(d) if d.finish_reason != FinishReason::Cancelled);
        if !client_gone {
            let _ = out.send(event).await;
        }
        // Background work starts only now, after `done` went out: it can never delay a reply.
        if done {
            self.schedule_background();
        }
    }

    fn schedule_background(&self) {
        let mut jobs = Vec::with_capacity(2);
        if self.first_exchange {
            jobs.push(BgJobKind::Title {
                chat_id: self.chat_id,
                message: self.user_message.clone(),
            });
        }
        if self.use_memory {
            jobs.push(BgJobKind::Memory {
                user_id: self.user_id,
                chat_id: Some(self.chat_id),
                message_id: Some(self.message_id),
                message: self.user_message.clone(),
                recalled: self
                    .sources
                    .iter()
                    .filter_map(|s| match s.origin {
                        crate::store::SourceOrigin::Memory { id } => Some(id),
                        _ => None,
                    })
                    .collect(),
            });
        }
        for job in jobs {
            if let Err(err) = self.jobs.enqueue(job, Some(&self.model)) {
                tracing::error!(chat = %self.chat_id, error = %err, "cannot schedule background work");
            }
        }
    }
}

fn timings(
    outcome: &Outcome,
    received: Instant,
    first: Option<Instant>,
    queued: Duration,
) -> Timings {
    let rate = |n: u32, d: Duration| {
        let secs = d.as_secs_f64();
        (n > 0 && secs > 0.0).then(|| round2(f64::from(n) / secs))
    };
    Timings {
        ttft_ms: first.map(|t| round2(t.duration_since(received).as_secs_f64() * 1000.0)),
        prompt_tokens_per_s: rate(outcome.prompt_evaluated, outcome.prefill),
        completion_tokens_per_s: rate(outcome.completion_tokens, outcome.decode),
        queued_ms: round2(queued.as_secs_f64() * 1000.0),
        prefill_ms: round2(outcome.prefill.as_secs_f64() * 1000.0),
        decode_ms: round2(outcome.decode.as_secs_f64() * 1000.0),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn worker_vanished() -> Outcome {
    Outcome {
        finish: Finish::Error,
        error: Some("the inference worker stopped".into()),
        prompt_tokens: 0,
        prompt_reused: 0,
        prompt_evaluated: 0,
        completion_tokens: 0,
        prefill: Duration::ZERO,
        decode: Duration::ZERO,
    }
}
