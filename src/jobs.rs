//! The background scheduler: one task that runs persisted jobs (chat titles, memory extraction)
//! one at a time on the shared inference worker, below chat.
//!
//! - **Persistent.** A job is written to the store (`bg_jobs`) when a turn ends and removed when
//!   its result is written, so a crash or a shutdown loses nothing: pending jobs resume at the
//!   next start. A job that was started [`MAX_ATTEMPTS`] times without finishing is dropped, and
//!   the drop is recorded (memory history for extraction, the log for titles).
//! - **Below chat.** Titles run at `Priority::Normal`, extraction at `Priority::Low`; both give
//!   way to a queued chat generation between tokens (`Finish::Preempted`) and are submitted
//!   again, so a chat request never waits for more than one token of background work. Only one
//!   background generation is ever queued, so background work never fills the queue.
//! - **After the reply.** Jobs are enqueued by the chat turn after its `done` event was sent,
//!   never before: background work cannot delay a reply.
//! - **Shutdown.** The running generation is cancelled at once; its job stays in the store
//!   (attempt counted) and resumes at the next start.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::embed::Urgency;
use crate::events::{Event, Events, ExtractReport};
use crate::llm::{CancelFlag, Finish, GenEvent, Generation, LlmError, Priority, Sampling};
use crate::memory::{extract, title, Change, Memories};
use crate::pool::{Pool, PoolError};
use crate::store::{
    now_millis, BgJob, BgJobKind, ChatId, HistoryEntry, HistoryEvent, MemoryOrigin, MessageId,
    Store, StoreError, UserId, DEFAULT_CHAT_TITLE,
};

/// Starts of one job before it is dropped: a job that keeps failing (or keeps being interrupted
/// by crashes) must not block the queue forever.
pub const MAX_ATTEMPTS: u32 = 3;
/// Pause before asking again while the model loads or the queue is full.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Events buffered between the worker and a job; background output is short.
const GEN_CHANNEL_CAPACITY: usize = 64;

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error("interrupted by shutdown")]
    Shutdown,
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the scheduler is doing, for health.
#[derive(Clone, Copy, Debug)]
pub struct JobsStatus {
    /// Jobs in the store, the running one included.
    pub pending: usize,
    /// The running job's kind (`title`, `memory`).
    pub running: Option<&'static str>,
    /// A background generation is queued or running on the inference worker.
    pub generating: bool,
    /// Jobs finished since start.
    pub finished: u64,
    /// Generations a chat preempted since start.
    pub preempted: u64,
}

/// Handle on the scheduler; cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    pool: Pool,
    memories: Memories,
    events: Events,
    wake: Notify,
    /// Kind of the running job, for health.
    running: Mutex<Option<&'static str>>,
    /// True while a background generation is queued or running on the inference worker.
    generating: AtomicBool,
    done: AtomicU64,
    /// Background generations that gave way to a chat.
    preempted: AtomicU64,
}

impl Jobs {
    pub fn new(store: Store, pool: Pool, memories: Memories, events: Events) -> Jobs {
        Jobs {
            inner: Arc::new(Inner {
                store,
                pool,
                memories,
                events,
                wake: Notify::new(),
                running: Mutex::new(None),
                generating: AtomicBool::new(false),
                done: AtomicU64::new(0),
                preempted: AtomicU64::new(0),
            }),
        }
    }

    /// Persists a job and wakes the scheduler. Not flushed here: the job is a consequence of a
    /// turn that is already durable, and the background flush writes it within half a second.
    /// `model` is the chat model the work came from (it runs there unless `background_model`
    /// is configured).
    pub fn enqueue(&self, kind: BgJobKind, model: Option<&str>) -> Result<(), StoreError> {
        self.inner.store.put_bg_job(&BgJob {
            id: uuid::Uuid::now_v7(),
            kind,
            attempts: 0,
            queued_at: now_millis(),
            model: model.map(str::to_string),
        })?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// For health: pending jobs (including the running one), the running job's kind, whether it
    /// is on the inference worker now, and counts since start.
    pub fn status(&self) -> JobsStatus {
        JobsStatus {
            pending: self.inner.store.bg_jobs().map(|j| j.len()).unwrap_or(0),
            running: *self
                .inner
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            generating: self.inner.generating.load(Ordering::Relaxed),
            finished: self.inner.done.load(Ordering::Relaxed),
            preempted: self.inner.preempted.load(Ordering::Relaxed),
        }
    }

    /// Runs jobs until `shutdown`; resumes jobs left by an earlier run first.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = &*self.inner;
        match inner.store.bg_jobs() {
            Ok(jobs) if !jobs.is_empty() => {
                tracing::info!(jobs = jobs.len(), "resuming background jobs");
            }
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "cannot read background jobs"),
        }
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let next = match inner.store.bg_jobs() {
                // Titles first: a user is looking at the chat list; extraction can wait.
                Ok(jobs) => jobs
                    .iter()
                    .find(|j| matches!(j.kind, BgJobKind::Title { .. }))
                    .or_else(|| jobs.first())
                    .cloned(),
                Err(err) => {
                    tracing::error!(error = %err, "cannot read background jobs");
                    None
                }
            };
            let Some(mut job) = next else {
                tokio::select! {
                    () = inner.wake.notified() => continue,
                    () = shutdown.cancelled() => return,
                }
            };
            if job.attempts >= MAX_ATTEMPTS {
                self.drop_job(&job, &format!("dropped after {} attempts", job.attempts));
                continue;
            }
            job.attempts += 1;
            if let Err(err) = inner.store.put_bg_job(&job) {
                tracing::error!(error = %err, "cannot update a background job");
            }
            *inner.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(kind_name(&job));
            let result = self.run_job(&job, &shutdown).await;
            *inner.running.lock().unwrap_or_else(PoisonError::into_inner) = None;
            match result {
                Ok(()) => {
                    if let Err(err) = inner.store.remove_bg_job(job.id) {
                        tracing::error!(error = %err, "cannot remove a finished job");
                    }
                    inner.done.fetch_add(1, Ordering::Relaxed);
                }
                Err(JobError::Shutdown) => {
                    tracing::info!(
                        job = %job.id,
                        kind = kind_name(&job),
                        attempts = job.attempts,
                        "background job interrupted by shutdown; it resumes at the next start"
                    );
                    return;
                }
                Err(err) => {
                    self.drop_job(&job, &err.to_string());
                }
            }
        }
    }

    /// Removes a job that cannot finish, recording why.
    fn drop_job(&self, job: &BgJob, reason: &str) {
        let inner = &*self.inner;
        tracing::warn!(job = %job.id, kind = kind_name(job), reason, "background job dropped");
        if let BgJobKind::Memory {
            user_id,
            message_id,
            ..
        } = &job.kind
        {
            let mut entry = HistoryEntry::new(*user_id, HistoryEvent::ExtractFailed);
            entry.source_message_id = *message_id;
            entry.detail = Some(reason.to_string());
            if let Err(err) = inner.store.record_memory_event(&entry) {
                tracing::error!(error = %err, "cannot record a memory failure");
            }
        }
        if let Err(err) = inner.store.remove_bg_job(job.id) {
            tracing::error!(error = %err, "cannot remove a dropped job");
        }
    }

    async fn run_job(&self, job: &BgJob, shutdown: &CancellationToken) -> Result<(), JobError> {
        match &job.kind {
            BgJobKind::Title { chat_id, message } => {
                self.title(job, *chat_id, message, shutdown).await
            }
            BgJobKind::Memory {
                user_id,
                chat_id,
                message_id,
                message,
                recalled,
            } => {
                let source = ExtractSource {
                    user_id: *user_id,
                    chat_id: *chat_id,
                    message_id: *message_id,
                    message,
                    recalled,
                };
                self.extract(job, source, shutdown).await
            }
        }
    }

    async fn title(
        &self,
        job: &BgJob,
        chat_id: ChatId,
        message: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), JobError> {
        let inner = &*self.inner;
        match inner.store.chat(chat_id)? {
            Some(chat) if !chat.title_by_user && chat.title == DEFAULT_CHAT_TITLE => {}
            // Gone, or titled meanwhile: nothing to do.
            _ => return Ok(()),
        }
        let raw = self
            .generate(
                job,
                &title::messages(message),
                Constrained {
                    grammar: title::grammar(),
                    max_tokens: title::MAX_TOKENS,
                    repeat_penalty: title::REPEAT_PENALTY,
                },
                Priority::Normal,
                shutdown,
            )
            .await;
        let raw = match raw {
            Ok((text, _)) => text,
            Err(JobError::Failed(err)) => {
                tracing::warn!(chat = %chat_id, error = %err, "title generation failed; using the message");
                String::new()
            }
            Err(err) => return Err(err),
        };
        let title = title::clean(&raw, message);
        // Conditional inside the store's transaction: a user's rename always wins.
        if let Some(chat) = inner.store.set_auto_title(chat_id, &title)? {
            inner.store.durable().await?;
            inner.events.emit(Event::Title {
                chat_id,
                title: chat.title,
            });
        }
        Ok(())
    }

    async fn extract(
        &self,
        job: &BgJob,
        source: ExtractSource<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), JobError> {
        let inner = &*self.inner;
        let ExtractSource {
            user_id,
            chat_id,
            message_id,
            message,
            recalled,
        } = source;
        // The recalled memories as they are now (one deleted since is simply not known).
        let mut known = Vec::with_capacity(recalled.len());
        for id in recalled {
            if let Some(memory) = inner.store.memory(*id)? {
                if memory.user_id == user_id {
                    known.push(memory.text);
                }
            }
        }
        let mut report = ExtractReport {
            user_id,
            chat_id,
            message_id,
            status: "skipped",
            facts: Vec::new(),
            added: 0,
            updated: 0,
            unchanged: 0,
            discarded: 0,
            known: 0,
            error: None,
            queued_at: job.queued_at,
            started_at: now_millis(),
            finished_at: 0,
        };
        // A "forget all" after the message was sent covers it: do not even ask the model. The
        // message id (UUIDv7) says when it was sent; a posted text has only the job's time.
        let learned_at = message_id
            .and_then(|id| id.created_millis())
            .map_or(job.queued_at, |sent| sent.min(job.queued_at));
        let forgotten = inner
            .store
            .memories_forgotten_at(user_id)?
            .is_some_and(|at| at >= learned_at);
        if !forgotten && extract::worth_extracting(message) {
            let output = self
                .generate(
                    job,
                    &extract::messages(message, &known),
                    Constrained {
                        grammar: extract::grammar(),
                        max_tokens: extract::MAX_TOKENS,
                        // JSON repeats quotes and braces by nature: no penalty.
                        repeat_penalty: 1.0,
                    },
                    Priority::Low,
                    shutdown,
                )
                .await;
            let parsed = match output {
                Ok((text, Finish::Length)) => Err(format!(
                    "extraction output cut at {} tokens: {text:?}",
                    extract::MAX_TOKENS
                )),
                Ok((text, _)) => extract::parse(&text),
                Err(JobError::Failed(err)) => Err(err),
                Err(err) => return Err(err),
            };
            match parsed {
                Ok(facts) => {
                    report.status = "ok";
                    report.facts = extract::grounded(facts, message);
                    let before = report.facts.len();
                    report
                        .facts
                        .retain(|fact| !known.iter().any(|k| extract::repeats(fact, k)));
                    report.known = u32::try_from(before - report.facts.len()).unwrap_or(u32::MAX);
                }
                Err(err) => {
                    report.status = "failed";
                    report.error = Some(err);
                }
            }
        }
        for fact in &report.facts {
            let stored = inner
                .memories
                .remember(
                    user_id,
                    fact,
                    MemoryOrigin::Inferred,
                    message_id,
                    Urgency::Ingest,
                    Some(learned_at),
                )
                .await;
            match stored {
                Ok(r) => match r.change {
                    Change::Added => report.added += 1,
                    Change::Updated => report.updated += 1,
                    Change::Unchanged => report.unchanged += 1,
                    Change::Discarded => report.discarded += 1,
                },
                Err(err) => {
                    report.status = "failed";
                    report.error = Some(format!("cannot store {fact:?}: {err}"));
                }
            }
        }
        if let Some(error) = &report.error {
            let mut entry = HistoryEntry::new(user_id, HistoryEvent::ExtractFailed);
            entry.source_message_id = message_id;
            entry.detail = Some(error.clone());
            inner.store.record_memory_event(&entry)?;
        }
        inner.store.durable().await?;
        report.finished_at = now_millis();
        tracing::info!(
            user = %user_id,
            status = report.status,
            facts = report.facts.len(),
            added = report.added,
            updated = report.updated,
            ms = report.finished_at.saturating_sub(report.started_at),
            "memory extraction finished"
        );
        inner.events.emit(Event::MemoryExtracted(report));
        Ok(())
    }

    /// Runs one grammar-constrained, greedy generation at `priority`, submitting it again each
    /// time a chat preempts it. Returns the text and how it ended.
    async fn generate(
        &self,
        job: &BgJob,
        messages: &[crate::llm::ChatMessage],
        constrained: Constrained,
        priority: Priority,
        shutdown: &CancellationToken,
    ) -> Result<(String, Finish), JobError> {
        // The job's model, loaded if it is not (the lease keeps it loaded until the end).
        let model = self.inner.pool.background_model(job.model.as_deref());
        let lease = tokio::select! {
            lease = self.inner.pool.get(model, None) => lease,
            () = shutdown.cancelled() => return Err(JobError::Shutdown),
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(PoolError::ShuttingDown) => return Err(JobError::Shutdown),
            Err(err) => return Err(JobError::Failed(err.to_string())),
        };
        // Rendering the template and tokenizing are CPU work: off the runtime.
        let llm = (*lease).clone();
        let owned = messages.to_vec();
        let prompt = tokio::task::spawn_blocking(move || llm.chat_prompt(&owned))
            .await
            .map_err(|err| JobError::Failed(err.to_string()))?
            .map_err(|err| JobError::Failed(err.to_string()))?;
        self.inner.generating.store(true, Ordering::Relaxed);
        let result = self
            .generate_prompt(&lease, prompt, constrained, priority, shutdown)
            .await;
        self.inner.generating.store(false, Ordering::Relaxed);
        result
    }

    async fn generate_prompt(
        &self,
        llm: &crate::llm::Llm,
        prompt: crate::llm::Prompt,
        constrained: Constrained,
        priority: Priority,
        shutdown: &CancellationToken,
    ) -> Result<(String, Finish), JobError> {
        let Constrained {
            grammar,
            max_tokens,
            repeat_penalty,
        } = constrained;
        loop {
            let (tx, mut rx) = mpsc::channel(GEN_CHANNEL_CAPACITY);
            let cancel = CancelFlag::default();
            let submitted = llm.submit(Generation {
                prompt: prompt.clone(),
                sampling: Sampling {
                    temperature: 0.0,
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.0,
                    repeat_penalty,
                    frequency_penalty: 0.0,
                    presence_penalty: 0.0,
                    seed: None,
                },
                max_tokens,
                priority,
                cancel: cancel.clone(),
                events: tx,
                grammar: Some(grammar.clone()),
                conversation: None,
            });
            match submitted {
                Ok(()) => {}
                Err(LlmError::QueueFull(_) | LlmError::Loading) => {
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_PAUSE) => continue,
                        () = shutdown.cancelled() => return Err(JobError::Shutdown),
                    }
                }
                Err(LlmError::ShuttingDown) => return Err(JobError::Shutdown),
                Err(err) => return Err(JobError::Failed(err.to_string())),
            }
            let mut text = String::new();
            let mut stopping = false;
            let outcome = loop {
                tokio::select! {
                    event = rx.recv() => match event {
                        Some(GenEvent::Token(piece)) => text.push_str(&piece),
                        Some(GenEvent::Started) => {}
                        Some(GenEvent::Finished(outcome)) => break Some(outcome),
                        None => break None,
                    },
                    () = shutdown.cancelled(), if !stopping => {
                        stopping = true;
                        cancel.cancel();
                    }
                }
            };
            if stopping || shutdown.is_cancelled() {
                return Err(JobError::Shutdown);
            }
            let Some(outcome) = outcome else {
                return Err(JobError::Failed("the inference worker stopped".into()));
            };
            match outcome.finish {
                Finish::Stop | Finish::Length => return Ok((text, outcome.finish)),
                Finish::Preempted => {
                    self.inner.preempted.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("background generation preempted by a chat; retrying");
                    continue;
                }
                Finish::Cancelled => return Err(JobError::Shutdown),
                Finish::Error => {
                    return Err(JobError::Failed(
                        outcome.error.unwrap_or_else(|| "inference failed".into()),
                    ))
                }
            }
        }
    }
}

/// What a background generation may produce: greedy, under `grammar`, at most `max_tokens`,
/// with `repeat_penalty` over the recent tokens (titles need it: greedy decoding of a small
/// model loops on fragments like "iling,iling,").
/// What one extraction learns from: a user's message and the memories recalled into its turn.
struct ExtractSource<'a> {
    user_id: UserId,
    chat_id: Option<ChatId>,
    message_id: Option<MessageId>,
    message: &'a str,
    recalled: &'a [crate::store::MemoryId],
}

struct Constrained {
    grammar: String,
    max_tokens: u32,
    repeat_penalty: f32,
}

/// The job kind's name in logs and health.
fn kind_name(job: &BgJob) -> &'static str {
    match job.kind {
        BgJobKind::Title { .. } => "title",
        BgJobKind::Memory { .. } => "memory",
    }
}
