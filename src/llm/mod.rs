//! Local inference with llama.cpp (through `llama-cpp-2`): the only module that touches FFI.
//!
//! One dedicated OS thread owns the model's context (a `LlamaContext` borrows the model, is not
//! `Sync`, and `decode` blocks) and takes [`Generation`]s from a bounded priority queue. Tokens
//! leave through a bounded tokio channel, so a slow client slows generation instead of growing
//! memory, and a gone client (closed channel) cancels it. A cancel flag is checked between every
//! decoded token and between prompt micro-batches.
//!
//! Rendering the chat template and tokenizing happen on the caller's thread: the vocabulary is
//! read-only and llama.cpp's tokenizer is safe to call concurrently with decoding.

mod batch;
#[cfg(feature = "bench")]
pub mod direct;
mod snapshots;
mod threads;
mod utf8;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;

use crate::config::LlmConfig;
use crate::models::{ModelError, VerifiedModel};
pub use snapshots::KvSnapshots;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("the chat model is still loading")]
    Loading,
    #[error("the chat model is unavailable: {0}")]
    Unavailable(String),
    #[error("the generation queue is full ({0} waiting)")]
    QueueFull(usize),
    #[error("the inference worker is shutting down")]
    ShuttingDown,
    #[error("cannot render the chat template: {0}")]
    Template(String),
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Who is asking; the worker serves higher priorities first, and a running generation below
/// `Interactive` stops with [`Finish::Preempted`] (checked per token and per prompt micro-batch)
/// as soon as an interactive one is queued: a chat request always goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Background jobs (memory extraction).
    Low = 0,
    /// Background jobs a user will soon see (titles).
    Normal = 1,
    /// A person is waiting for the reply.
    Interactive = 2,
}

/// One message of a conversation, as the chat template sees it.
#[derive(Clone, Debug)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

impl ChatRole {
    fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

/// A tokenized prompt, ready for the worker.
#[derive(Clone, Debug)]
pub struct Prompt {
    tokens: Vec<LlamaToken>,
}

impl Prompt {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Sampling settings for one generation. `temperature == 0` means greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    /// OpenAI's penalties (0 = off): subtracted from a token's logit per earlier occurrence
    /// (frequency) or once if it occurred (presence), over the last 64 tokens.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub seed: Option<u32>,
}

/// Shared cancel flag for one generation.
#[derive(Clone, Debug, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Work for the inference thread.
pub struct Generation {
    pub prompt: Prompt,
    pub sampling: Sampling,
    pub max_tokens: u32,
    pub priority: Priority,
    pub cancel: CancelFlag,
    /// Bounded: the worker blocks (up to the stall timeout) when the consumer is slow.
    pub events: mpsc::Sender<GenEvent>,
    /// A GBNF grammar (root rule `root`) the output must follow; `None` for free text.
    pub grammar: Option<String>,
    /// The conversation this continues (a chat id): its KV snapshots are found and deleted by
    /// it. `None` for requests that name none (OpenAI's API): their snapshots match by tokens.
    pub conversation: Option<String>,
}

/// What the worker reports about a generation, in order: `Started`, `Token`*, `Finished`.
#[derive(Debug)]
pub enum GenEvent {
    /// The worker picked the job up.
    Started,
    /// A piece of text: whole UTF-8 characters, never empty.
    Token(String),
    Finished(Outcome),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    Cancelled,
    /// A background generation gave way to an interactive one waiting in the queue; the caller
    /// submits it again (it never happens to `Interactive` work).
    Preempted,
    Error,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub finish: Finish,
    /// Set when `finish` is `Error`.
    pub error: Option<String>,
    pub prompt_tokens: u32,
    /// Prompt tokens taken from the KV cache of the previous turn instead of being evaluated.
    pub prompt_reused: u32,
    /// Prompt tokens evaluated (fewer than `prompt_tokens - prompt_reused` when the prompt
    /// evaluation was cancelled part-way).
    pub prompt_evaluated: u32,
    pub completion_tokens: u32,
    pub prefill: Duration,
    pub decode: Duration,
}

impl Outcome {
    /// Nothing done yet (cancelled unless it goes on) for a prompt of `prompt_len` tokens.
    fn empty(prompt_len: usize) -> Outcome {
        Outcome {
            finish: Finish::Cancelled,
            error: None,
            prompt_tokens: u32::try_from(prompt_len).unwrap_or(u32::MAX),
            prompt_reused: 0,
            prompt_evaluated: 0,
            completion_tokens: 0,
            prefill: Duration::ZERO,
            decode: Duration::ZERO,
        }
    }
}

/// The model's state as health reports it.
#[derive(Clone, Debug)]
pub enum ModelState {
    /// `progress` is the share of the current stage done, `0.0..=1.0`.
    Loading {
        stage: LoadStage,
        progress: f32,
    },
    Ready,
    Failed(String),
    /// Unloaded (by the pool: idle TTL, eviction or a request); the worker has ended.
    Unloaded,
}

/// Why verification refused a model file (the load never reached llama.cpp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The file is not there.
    Missing,
    /// The file's bytes are not the pinned ones.
    Changed,
}

/// What a loading model is doing: hashing the file (skipped when the verification is cached),
/// then llama.cpp reading it. Clients show it while they wait (`hearth chat --wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadStage {
    Verifying,
    Loading,
}

impl LoadStage {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadStage::Verifying => "verifying",
            LoadStage::Loading => "loading",
        }
    }
}

/// Cheap-to-clone handle on the inference worker.
#[derive(Clone)]
pub struct Llm {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    config: LlmConfig,
    state: RwLock<LoadState>,
    /// Set when verification refused the file.
    refusal: Mutex<Option<Refusal>>,
    queue: Queue,
    /// Threads the worker decodes with now (the thread policy's choice).
    decode_threads: AtomicU32,
    /// Times the thread policy changed them.
    thread_changes: AtomicU64,
    /// Of those, the steps down because decode collapsed under other programs' load.
    thread_drops: AtomicU64,
    /// Where evicted conversations' KV states go and come back from.
    snapshots: KvSnapshots,
    /// Set when the worker has saved its sequences and freed the model.
    stopped: (Mutex<bool>, Condvar),
}

/// The inference threads of a loaded model, for health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    /// Threads of one-token decode steps now.
    pub decode: u32,
    /// Threads of prompt evaluation (and the most decode may use).
    pub batch: u32,
    /// Whether decode follows contention (false: `threads` was configured).
    pub adaptive: bool,
    /// How often the decode count changed since the model loaded.
    pub changes: u64,
    /// How many of those changes were steps down for contention (the rest are probes and
    /// their undoing), so a reader can tell load from calibration.
    pub contention: u64,
}

enum LoadState {
    Loading { stage: LoadStage, progress: f32 },
    Ready(Arc<Loaded>),
    Failed(String),
    Unloaded,
}

/// The loaded model and what callers need to build prompts for it.
struct Loaded {
    model: Arc<LlamaModel>,
    template: LlamaChatTemplate,
    n_ctx: u32,
    /// Memory the model holds: weights plus KV cache.
    bytes: u64,
}

/// llama.cpp's backend may be initialised once per process.
fn backend() -> Result<&'static LlamaBackend, LlmError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs ~1,500 lines per model load; route them into `tracing` (target
            // `llama-cpp-2`) where the default filter keeps them quiet. Must precede init.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|err| err.to_string())
        })
        .as_ref()
        .map_err(|err| LlmError::Unavailable(err.clone()))
}

impl Llm {
    /// Starts the inference thread. It first runs `verify` (hashing the file; it reports the
    /// share hashed through its argument), then loads the model; until then the state is
    /// `Loading`. Returns at once.
    pub fn start<V>(name: &str, config: LlmConfig, snapshots: KvSnapshots, verify: V) -> Llm
    where
        V: FnOnce(&dyn Fn(f32)) -> Result<VerifiedModel, ModelError> + Send + 'static,
    {
        let threads = config.threads;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            queue: Queue::new(config.queue_depth),
            config,
            state: RwLock::new(LoadState::Loading {
                stage: LoadStage::Verifying,
                progress: 0.0,
            }),
            refusal: Mutex::new(None),
            decode_threads: AtomicU32::new(threads),
            thread_changes: AtomicU64::new(0),
            thread_drops: AtomicU64::new(0),
            snapshots,
            stopped: (Mutex::new(false), Condvar::new()),
        });
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("hearth-llm".into())
            .spawn(move || worker::run(&thread_shared, verify));
        if let Err(err) = spawned {
            shared.set_state(LoadState::Failed(format!(
                "cannot start the inference thread: {err}"
            )));
            shared.set_stopped();
        }
        Llm { shared }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// True when both handles are on the same worker (a name can be unloaded and loaded again).
    pub fn same(&self, other: &Llm) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Why the file was refused, when the load failed in verification.
    pub fn refusal(&self) -> Option<Refusal> {
        *self
            .shared
            .refusal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn state(&self) -> ModelState {
        match &*self
            .shared
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
        {
            LoadState::Loading { stage, progress } => ModelState::Loading {
                stage: *stage,
                progress: *progress,
            },
            LoadState::Ready(_) => ModelState::Ready,
            LoadState::Failed(err) => ModelState::Failed(err.clone()),
            LoadState::Unloaded => ModelState::Unloaded,
        }
    }

    /// The inference threads (what the decode thread policy chose, and how often it changed).
    pub fn threads(&self) -> Threads {
        let config = &self.shared.config;
        Threads {
            decode: self.shared.decode_threads.load(Ordering::Relaxed),
            batch: config.threads,
            adaptive: config.adaptive_threads && config.threads > 1,
            changes: self.shared.thread_changes.load(Ordering::Relaxed),
            contention: self.shared.thread_drops.load(Ordering::Relaxed),
        }
    }

    /// Memory the loaded model holds (weights + KV cache), 0 while not loaded.
    pub fn memory_bytes(&self) -> u64 {
        self.loaded().map(|l| l.bytes).unwrap_or(0)
    }

    /// The context size in tokens (prompt + reply must fit): the context's real size once
    /// loaded, the configured one before.
    pub fn n_ctx(&self) -> u32 {
        match self.loaded() {
            Ok(loaded) => loaded.n_ctx,
            Err(_) => self.shared.config.n_ctx.get(),
        }
    }

    /// Generations waiting behind the running one.
    pub fn queued(&self) -> usize {
        self.shared.queue.len()
    }

    pub fn queue_capacity(&self) -> usize {
        self.shared.queue.capacity
    }

    /// Ok when the model is loaded and generations can be submitted.
    pub fn ready(&self) -> Result<(), LlmError> {
        self.loaded().map(drop)
    }

    fn loaded(&self) -> Result<Arc<Loaded>, LlmError> {
        match &*self
            .shared
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
        {
            LoadState::Loading { .. } => Err(LlmError::Loading),
            LoadState::Ready(loaded) => Ok(loaded.clone()),
            LoadState::Failed(err) => Err(LlmError::Unavailable(err.clone())),
            LoadState::Unloaded => Err(LlmError::Unavailable(format!(
                "model '{}' was unloaded",
                self.shared.name
            ))),
        }
    }

    /// Renders `messages` with the model's chat template (ending with the assistant's turn
    /// opened) and tokenizes the result.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Prompt, LlmError> {
        let loaded = self.loaded()?;
        Ok(Prompt {
            tokens: render(&loaded.model, &loaded.template, messages)?,
        })
    }

    /// Tokenizes a prompt given as text, with no template (`/v1/completions`): BOS as the model
    /// wants it, special tokens in the text parsed.
    pub fn raw_prompt(&self, text: &str) -> Result<Prompt, LlmError> {
        let loaded = self.loaded()?;
        Ok(Prompt {
            tokens: tokenize(&loaded.model, text),
        })
    }

    /// Tokenizes raw text (no template), e.g. for counting.
    pub fn count_tokens(&self, text: &str) -> Result<usize, LlmError> {
        let loaded = self.loaded()?;
        Ok(loaded
            .model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .len())
    }

    /// Queues a generation. Fails at once when the model is not ready or the queue is full.
    pub fn submit(&self, job: Generation) -> Result<(), LlmError> {
        self.loaded()?;
        self.shared.queue.push(job)
    }

    /// Stops taking work; the worker exits after the running generation (queued ones end as
    /// cancelled) and frees the model.
    pub fn shutdown(&self) {
        self.shared.queue.close();
    }

    /// Waits (at most `wait`) until the worker has saved its conversations' KV snapshots and
    /// freed the model, after [`Llm::shutdown`]. False on timeout.
    pub fn wait_stopped(&self, wait: Duration) -> bool {
        let (lock, cvar) = &self.shared.stopped;
        let stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let (stopped, _) = cvar
            .wait_timeout_while(stopped, wait, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *stopped
    }
}

impl Shared {
    fn set_stopped(&self) {
        let (lock, cvar) = &self.stopped;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cvar.notify_all();
    }

    fn set_state(&self, state: LoadState) {
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = state;
    }

    /// Records load progress; ignored once the state has left `Loading`.
    fn set_progress(&self, stage: LoadStage, progress: f32) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if matches!(*state, LoadState::Loading { .. }) {
            *state = LoadState::Loading {
                stage,
                progress: progress.clamp(0.0, 1.0),
            };
        }
    }
}

/// Renders `messages` with `template`, ending with the assistant's turn opened, and tokenizes
/// the text (the daemon's worker and the benchmark's direct loop share this).
fn render(
    model: &LlamaModel,
    template: &LlamaChatTemplate,
    messages: &[ChatMessage],
) -> Result<Vec<LlamaToken>, LlmError> {
    let chat = messages
        .iter()
        .map(|m| {
            LlamaChatMessage::new(
                m.role.as_str().to_string(),
                utf8::renderable(&m.content).into_owned(),
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| LlmError::Template(err.to_string()))?;
    let text = model
        .apply_chat_template(template, &chat, true)
        .map_err(|err| LlmError::Template(err.to_string()))?;
    Ok(tokenize(model, &text))
}

/// Tokenizes a rendered prompt: special tokens in the template text are parsed, BOS is added when
/// the model wants one, and a BOS the template already wrote is not doubled.
fn tokenize(model: &LlamaModel, text: &str) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    let mut tokens = vocab.tokenize(text.as_bytes(), true, true);
    let bos = vocab.bos();
    if tokens.len() >= 2 && tokens[0] == bos && tokens[1] == bos {
        tokens.remove(0);
    }
    tokens
}

/// The bounded priority queue between callers and the worker.
struct Queue {
    capacity: usize,
    state: Mutex<QueueState>,
    ready: Condvar,
}

struct QueueState {
    /// One FIFO lane per priority, highest last.
    /// Each job with when it was queued (time to first token counts from there).
    lanes: [std::collections::VecDeque<(Instant, Generation)>; 3],
    closed: bool,
}

impl Queue {
    fn new(capacity: usize) -> Queue {
        Queue {
            capacity,
            state: Mutex::new(QueueState {
                lanes: Default::default(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().lanes.iter().map(|l| l.len()).sum()
    }

    fn push(&self, job: Generation) -> Result<(), LlmError> {
        let mut state = self.lock();
        if state.closed {
            return Err(LlmError::ShuttingDown);
        }
        let waiting: usize = state.lanes.iter().map(|l| l.len()).sum();
        if waiting >= self.capacity {
            return Err(LlmError::QueueFull(waiting));
        }
        state.lanes[job.priority as usize].push_back((Instant::now(), job));
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The oldest waiting chat generation, if any (the batch admits it between steps).
    fn try_pop_chat(&self) -> Option<(Instant, Generation)> {
        self.lock().lanes[Priority::Interactive as usize].pop_front()
    }

    /// Puts a chat generation that found no room back at the head of its lane (it keeps its
    /// place and its queue time; the capacity check passed when it was first queued).
    fn push_front(&self, queued_at: Instant, job: Generation) {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            let _ = job
                .events
                .try_send(GenEvent::Finished(Outcome::empty(job.prompt.len())));
            return;
        }
        state.lanes[job.priority as usize].push_front((queued_at, job));
    }

    /// True when an interactive generation is waiting: background work gives way to it.
    fn interactive_waiting(&self) -> bool {
        !self.lock().lanes[Priority::Interactive as usize].is_empty()
    }

    /// Blocks until a job is available (highest priority first) or the queue is closed; the
    /// job and when it was queued.
    fn pop(&self) -> Option<(Instant, Generation)> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(job) = state
                .lanes
                .iter_mut()
                .rev()
                .find_map(|lane| lane.pop_front())
            {
                return Some(job);
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn close(&self) {
        let jobs: Vec<Generation> = {
            let mut state = self.lock();
            state.closed = true;
            state
                .lanes
                .iter_mut()
                .flat_map(|l| l.drain(..).map(|(_, job)| job))
                .collect()
        };
        // Jobs that never started end as cancelled, so their callers finish cleanly.
        for job in jobs {
            let _ = job
                .events
                .try_send(GenEvent::Finished(Outcome::empty(job.prompt.len())));
        }
        self.ready.notify_all();
    }
}
