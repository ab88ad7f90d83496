//! The inference thread: loads the verified model, owns the one `LlamaContext`, and serves the
//! queue: chat generations batched together (`batch.rs`: one KV sequence per stream, up to
//! `parallel`), background generations one at a time when no chat generation runs or waits.
//!
//! The KV cache is kept between generations: a follow-up turn in a chat shares its whole history
//! with the previous prompt, so only the new tokens are evaluated (the longest common token prefix
//! stays in the slot's sequence). That turns a multi-turn prompt's prefill from O(history) into
//! O(new turn), for up to `parallel` conversations at once.
//!
//! Background generations (titles, memory extraction) run in a sequence of their own (the last
//! one), with its own prefix reuse, so they do not evict the chats' cached prefixes. When they
//! do not fit together, a chat generation drops the background sequence first, and a background
//! generation drops idle chat caches, least recently used first (those chats' next turns then
//! evaluate their whole prompts again). Background work also gives way to a queued interactive
//! generation between tokens and prompt micro-batches ([`Finish::Preempted`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::LlamaStateSeqFlags;
use tokio::sync::mpsc;

use super::batch::{self, Slot};
use super::snapshots::{self, Hit, KvSnapshots};
use super::threads::{Change, Reason, ThreadPolicy};
use super::utf8::Utf8Stream;
use super::{
    backend, Finish, GenEvent, Generation, LoadStage, LoadState, Loaded, Outcome, Refusal,
    Sampling, Shared,
};
use crate::config::LlmConfig;
use crate::metrics::METRICS;
use crate::models::{ModelError, VerifiedModel};
use crate::priority::CpuLoad;

/// Tokens considered by the repeat penalty (llama.cpp's default window).
const PENALTY_LAST_N: i32 = 64;
/// Prompt micro-batch of background generations: smaller than chat's, because a queued chat
/// waits for at most one of them (preemption is checked between micro-batches).
const BACKGROUND_BATCH: usize = 64;

pub(super) fn run<V>(shared: &Arc<Shared>, verify: V)
where
    V: FnOnce(&dyn Fn(f32)) -> Result<VerifiedModel, ModelError>,
{
    serve(shared, verify);
    shared.set_stopped();
}

fn serve<V>(shared: &Arc<Shared>, verify: V)
where
    V: FnOnce(&dyn Fn(f32)) -> Result<VerifiedModel, ModelError>,
{
    let started = Instant::now();
    let fail = |msg: String| {
        tracing::error!(model = %shared.name, "{msg}");
        shared.set_state(LoadState::Failed(msg));
    };
    let verified = match verify(&|done| shared.set_progress(LoadStage::Verifying, done)) {
        Ok(verified) => verified,
        Err(err) => {
            let refusal = match err {
                ModelError::Missing { .. } | ModelError::Gone { .. } => Some(Refusal::Missing),
                // A user's pinned file that changed; a shipped file with the wrong bytes stays
                // "unavailable" (re-fetching fixes it).
                ModelError::Changed { .. } => Some(Refusal::Changed),
                _ => None,
            };
            *shared
                .refusal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = refusal;
            return fail(err.to_string());
        }
    };
    let hashed_in = started.elapsed();
    let backend = match backend() {
        Ok(backend) => backend,
        Err(err) => return fail(err.to_string()),
    };
    shared.set_progress(LoadStage::Loading, 0.0);
    let progress = shared.clone();
    let params = LlamaModelParams::default()
        .with_use_mmap(true)
        .with_progress_callback(move |done| {
            progress.set_progress(LoadStage::Loading, done);
            true // never abort the load
        });
    let model = match LlamaModel::load_from_file(backend, &verified.load_path, &params) {
        Ok(model) => Arc::new(model),
        Err(err) => {
            return fail(format!(
                "llama.cpp cannot load {}: {err} (run with HEARTH_LOG=llama-cpp-2=info for its reasons)",
                verified.path.display()
            ))
        }
    };
    // The template comes from the GGUF metadata; models without one get ChatML, the most common
    // instruct format.
    let template = match model.chat_template(None) {
        Ok(template) => template,
        Err(err) => {
            tracing::warn!(model = %shared.name, reason = %err, "the model file has no chat template; using ChatML (a base model may answer poorly)");
            match LlamaChatTemplate::new("chatml") {
                Ok(template) => template,
                Err(err) => return fail(err.to_string()),
            }
        }
    };
    let config = &shared.config;
    let threads = config.threads;
    let policy = ThreadPolicy::new(threads, config.adaptive_threads);
    let ctx = match model.new_context(backend, context_params(config, policy.current())) {
        Ok(ctx) => ctx,
        Err(err) => return fail(format!("cannot create a llama.cpp context: {err}")),
    };
    shared.set_state(LoadState::Ready(Arc::new(Loaded {
        model: model.clone(),
        template,
        n_ctx: ctx.n_ctx(),
        // Weights (mmap'd, resident once read) plus the KV cache of the context.
        bytes: model.size() + kv_bytes(&model, ctx.n_ctx()),
    })));
    tracing::info!(
        model = %shared.name,
        verify_ms = hashed_in.as_millis(),
        hashed = verified.hashed,
        load_ms = started.elapsed().as_millis(),
        n_ctx = ctx.n_ctx(),
        threads,
        "chat model ready"
    );

    let parallel = i32::try_from(config.parallel).unwrap_or(1).max(1);
    let mut eng = Engine {
        model_key: snapshots::model_key(&verified.sha256, true),
        state_per_token: kv_bytes(&model, 1),
        ctx,
        model: &model,
        backend,
        shared,
        policy,
        load: CpuLoad::default(),
        n_seq: parallel + 1,
        snapshots: shared.snapshots.clone(),
    };
    let mut slots: Vec<Slot> = (0..parallel).map(Slot::new).collect();
    let mut bg_kv = KvCache::default();
    while let Some((queued_at, job)) = shared.queue.pop() {
        if job.priority == super::Priority::Interactive {
            batch::serve(&mut eng, &mut slots, &mut bg_kv, (queued_at, job), shared);
            continue;
        }
        let preempt = || shared.queue.interactive_waiting();
        let outcome = background(
            &mut eng,
            &mut slots,
            &mut bg_kv,
            &job,
            config.stall_timeout,
            &preempt,
        );
        if outcome.finish == Finish::Error {
            forget_all(&mut eng, &mut slots, &mut bg_kv);
        }
        finished(&job, outcome, config.stall_timeout);
    }
    // Unloaded (or shutting down): the conversations still cached are saved, then the context
    // goes (it borrows the model), then the state's reference to the model, so the weights'
    // memory is returned now, not at exit.
    for slot in &slots {
        eng.snapshot(slot);
    }
    drop(eng);
    drop(model);
    shared.set_state(LoadState::Unloaded);
    drop(verified);
    tracing::info!(model = %shared.name, "chat model unloaded");
}

/// A failed decode may have cleared the whole cache: every sequence is forgotten.
pub(super) fn forget_all(eng: &mut Engine<'_>, slots: &mut [Slot], bg_kv: &mut KvCache) {
    eng.ctx.clear_kv_cache();
    for slot in slots.iter_mut() {
        slot.kv.tokens.clear();
    }
    bg_kv.tokens.clear();
}

/// Reports a generation's end to its caller, and counts it.
pub(super) fn finished(job: &Generation, outcome: Outcome, stall: Duration) {
    count(&outcome);
    send(&job.events, GenEvent::Finished(outcome), stall);
}

/// Adds a finished generation to the metrics (and the debug log).
pub(super) fn count(outcome: &Outcome) {
    tracing::debug!(
        finish = ?outcome.finish,
        prompt_tokens = outcome.prompt_tokens,
        evaluated = outcome.prompt_evaluated,
        completion_tokens = outcome.completion_tokens,
        "generation finished"
    );
    METRICS
        .prompt_evaluated
        .add(u64::from(outcome.prompt_evaluated));
    METRICS.prompt_reused.add(u64::from(outcome.prompt_reused));
    METRICS.generated.add(u64::from(outcome.completion_tokens));
    let finish = match outcome.finish {
        Finish::Stop => 0,
        Finish::Length => 1,
        Finish::Cancelled => 2,
        Finish::Preempted => 3,
        Finish::Error => 4,
    };
    METRICS.generations[finish].inc();
}

/// The KV cache's size: one key and one value per layer, token and embedding dimension, in f16
/// (llama.cpp's default cache type). Grouped-query models store fewer heads; the GGUF's head
/// counts give the ratio.
fn kv_bytes(model: &LlamaModel, n_ctx: u32) -> u64 {
    let layers = u64::from(model.n_layer());
    let embd = u64::try_from(model.n_embd()).unwrap_or(0);
    let heads = u64::from(model.n_head()).max(1);
    let kv_heads = u64::from(model.n_head_kv()).max(1);
    2 * layers * u64::from(n_ctx) * embd * kv_heads / heads * 2
}

/// The llama.cpp context's parameters; `decode_threads` for one-token steps, the configured
/// threads for prompt evaluation.
fn context_params(config: &LlmConfig, decode_threads: u32) -> LlamaContextParams {
    LlamaContextParams::default()
        .with_n_ctx(Some(config.n_ctx))
        .with_n_batch(config.n_batch)
        .with_n_ubatch(config.n_batch)
        .with_n_threads(i32::try_from(decode_threads).unwrap_or(1))
        .with_n_threads_batch(i32::try_from(config.threads).unwrap_or(1))
        // One sequence per batched chat stream plus one for background work, in one unified
        // cache: each may use the whole context, together they share its cells.
        .with_n_seq_max(config.parallel + 1)
        .with_kv_unified(true)
        // Flash attention walks a sequence's cells one by one and skips other sequences'
        // masked cells, so a stream's attention sums do not depend on where its cells sit in
        // the shared cache: a greedy reply is the same alone and batched.
        .with_flash_attention_policy(FLASH_ATTENTION_ENABLED)
        .with_no_perf(true)
}

/// llama.cpp's `LLAMA_FLASH_ATTN_TYPE_ENABLED` (llama-cpp-2 takes the raw enum value).
const FLASH_ATTENTION_ENABLED: i32 = 1;

/// The context, and what it takes to make it again. llama.cpp fixes a context's decode thread
/// count when it is created (llama-cpp-2 0.1.160 wraps no `llama_set_n_threads` and keeps the
/// context pointer private), so a thread policy change creates a new context and moves both
/// sequences' cached tokens into it ([`Engine::retune`]).
pub(super) struct Engine<'m> {
    pub(super) ctx: LlamaContext<'m>,
    pub(super) model: &'m LlamaModel,
    backend: &'static LlamaBackend,
    shared: &'m Shared,
    policy: ThreadPolicy,
    load: CpuLoad,
    /// Sequences of the context: the chat slots, then the background sequence.
    n_seq: i32,
    snapshots: KvSnapshots,
    /// What this model's snapshots are keyed by (its sha256 and the KV layout).
    model_key: String,
    /// KV bytes per cached token (estimates a snapshot's size before copying it).
    state_per_token: u64,
}

impl Engine<'_> {
    /// The background generations' sequence (the last one).
    pub(super) fn background_seq(&self) -> i32 {
        self.n_seq - 1
    }

    /// Removes a sequence's cells; if llama.cpp cannot, the whole cache goes (the caller's
    /// bookkeeping of other sequences is then stale, so this is only a fallback that logs).
    pub(super) fn drop_seq(&mut self, seq: i32) {
        if self.ctx.kv_cache_seq_rm(seq, None, None).is_err() {
            tracing::warn!(seq, "cannot remove a KV sequence; clearing the cache");
            self.ctx.clear_kv_cache();
        }
    }

    /// Saves `slot`'s cached conversation as a KV snapshot before its cells are reused (when it
    /// is long enough and not saved already). The copy out of the context happens here; hashing
    /// and writing happen on the snapshot writer's thread.
    pub(super) fn snapshot(&self, slot: &Slot) {
        let tokens = &slot.kv.tokens;
        let estimate = usize::try_from(self.state_per_token * tokens.len() as u64).unwrap_or(0);
        let conversation = slot.conversation.as_deref();
        if !self
            .snapshots
            .wants(&self.model_key, conversation, tokens, estimate)
        {
            return;
        }
        let started = Instant::now();
        match snapshots::ffi::get(&self.ctx, slot.seq) {
            Some(bytes) => {
                tracing::debug!(
                    tokens = tokens.len(),
                    bytes = bytes.len(),
                    us = started.elapsed().as_micros() as u64,
                    "KV state copied for a snapshot"
                );
                self.snapshots
                    .save(&self.model_key, conversation, tokens, bytes);
            }
            None => tracing::warn!(seq = slot.seq, "llama.cpp could not copy a KV sequence"),
        }
    }

    /// The saved conversation `prompt` continues furthest, when it is worth restoring: it
    /// covers at least [`snapshots::MIN_GAIN`] tokens more than `have`.
    pub(super) fn find_snapshot(
        &self,
        conversation: Option<&str>,
        prompt: &[LlamaToken],
        slack: usize,
        have: usize,
    ) -> Option<Hit> {
        self.snapshots
            .find(&self.model_key, conversation, prompt, slack)
            .filter(|hit| hit.usable >= have + snapshots::MIN_GAIN)
    }

    /// Loads `hit` into `slot` (emptied first) and keeps its first `hit.usable` tokens. False
    /// when the file or llama.cpp refused it: the slot is then empty and the snapshot deleted.
    pub(super) fn restore(&mut self, slot: &mut Slot, hit: &Hit) -> bool {
        let started = Instant::now();
        self.drop_seq(slot.seq);
        slot.kv.tokens.clear();
        let bytes = match self.snapshots.load(hit, &self.model_key) {
            Ok(bytes) => bytes,
            Err(_) => return false,
        };
        let read = started.elapsed();
        let expected = i32::try_from(hit.tokens.len()).unwrap_or(i32::MAX) - 1;
        if !snapshots::ffi::set(&mut self.ctx, slot.seq, &bytes)
            || self.ctx.kv_cache_seq_pos_max(slot.seq) != expected
        {
            self.drop_seq(slot.seq);
            self.snapshots
                .discard(&hit.file, &"llama.cpp refused the state");
            return false;
        }
        slot.kv.tokens = hit.tokens.iter().map(|t| LlamaToken::new(*t)).collect();
        if hit.usable < slot.kv.tokens.len() {
            let start = u32::try_from(hit.usable).unwrap_or(0);
            if self
                .ctx
                .kv_cache_seq_rm(slot.seq, Some(start), None)
                .is_err()
            {
                self.drop_seq(slot.seq);
                slot.kv.tokens.clear();
                return false;
            }
            slot.kv.tokens.truncate(hit.usable);
        }
        METRICS.kv_restored.inc();
        METRICS.kv_restored_tokens.add(hit.usable as u64);
        tracing::debug!(
            tokens = hit.usable,
            bytes = bytes.len(),
            read_ms = read.as_millis() as u64,
            ms = started.elapsed().as_millis() as u64,
            "KV snapshot restored"
        );
        true
    }

    /// Records a one-token decode step's time; a thread change to make before the next one.
    pub(super) fn observe(&mut self, step: Duration) -> Option<Change> {
        let threads = f64::from(self.policy.current());
        let load = &mut self.load;
        self.policy.observe(step, || {
            // Cores neither other programs nor our decode threads kept busy.
            let others = load.others_busy()?;
            let online = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            Some(online - others - threads)
        })
    }

    /// Moves decoding to `change.threads` threads: a new context takes over both sequences'
    /// cached tokens, then replaces the old one. For a moment both contexts' KV caches exist
    /// (the old one is the fallback: any failure keeps it, and the policy stops adapting).
    pub(super) fn retune(&mut self, change: Change) {
        let from = self
            .shared
            .decode_threads
            .load(std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        match self.rebuild(change.threads) {
            Ok(moved) => {
                self.shared
                    .decode_threads
                    .store(change.threads, std::sync::atomic::Ordering::Relaxed);
                self.shared
                    .thread_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if change.reason == Reason::Contention {
                    self.shared
                        .thread_drops
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                // The next spare-core reading covers the time since this change.
                self.load.others_busy();
                tracing::debug!(
                    from,
                    to = change.threads,
                    reason = ?change.reason,
                    ms = started.elapsed().as_millis() as u64,
                    kv_bytes = moved,
                    "decode threads changed"
                );
            }
            Err(err) => {
                self.policy.freeze(from);
                tracing::warn!(error = %err, threads = from, "cannot change decode threads; keeping them");
            }
        }
    }

    /// A context with `threads` decode threads holding this one's sequences; the bytes moved.
    fn rebuild(&mut self, threads: u32) -> Result<usize, String> {
        let flags = LlamaStateSeqFlags::empty();
        let states = (0..self.n_seq)
            .map(|seq| {
                self.ctx
                    .state_seq_get(seq, flags)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut ctx = self
            .model
            .new_context(self.backend, context_params(&self.shared.config, threads))
            .map_err(|e| format!("cannot create a llama.cpp context: {e}"))?;
        let mut moved = 0;
        for (seq, state) in (0..self.n_seq).zip(&states) {
            ctx.state_seq_set(state, seq).map_err(|e| e.to_string())?;
            moved += state.byte_len();
        }
        self.ctx = ctx;
        Ok(moved)
    }
}

/// The tokens whose keys/values are in a sequence, position by position.
#[derive(Default)]
pub(super) struct KvCache {
    pub(super) tokens: Vec<LlamaToken>,
}

/// Runs a background generation in its own sequence, next to the chat's cached tokens. The
/// background sequence keeps its tokens too: extraction prompts share a long fixed prefix (the
/// instructions and examples), which is then evaluated once, not per job.
fn background(
    eng: &mut Engine<'_>,
    slots: &mut [Slot],
    bg_kv: &mut KvCache,
    job: &Generation,
    stall: Duration,
    preempt: &dyn Fn() -> bool,
) -> Outcome {
    let n_ctx = eng.ctx.n_ctx() as usize;
    let needs = job.prompt.len() + job.max_tokens as usize;
    // Chats' cached prefixes that leave no room go, least recently used first (their next
    // turns re-evaluate their prompts). No chat generation runs now: every slot is idle.
    let cached = |slots: &[Slot]| slots.iter().map(|s| s.kv.tokens.len()).sum::<usize>();
    while cached(slots) + needs > n_ctx {
        let Some(victim) = slots
            .iter_mut()
            .filter(|s| !s.kv.tokens.is_empty())
            .min_by_key(|s| s.used())
        else {
            break;
        };
        eng.snapshot(victim);
        let seq = victim.seq;
        victim.kv.tokens.clear();
        eng.drop_seq(seq);
    }
    let seq = eng.background_seq();
    run_seq(eng, bg_kv, seq, job, stall, preempt)
}

/// Runs one background generation in `seq`, giving way (`Preempted`) when `preempt` says so.
fn run_seq(
    eng: &mut Engine<'_>,
    kv: &mut KvCache,
    seq: i32,
    job: &Generation,
    stall: Duration,
    preempt: &dyn Fn() -> bool,
) -> Outcome {
    let prompt = &job.prompt.tokens;
    let mut outcome = Outcome::empty(prompt.len());
    let fail = |mut outcome: Outcome, msg: String| {
        outcome.finish = Finish::Error;
        outcome.error = Some(msg);
        outcome
    };
    if !send(&job.events, GenEvent::Started, stall) || job.cancel.is_cancelled() {
        return outcome;
    }
    let n_ctx = eng.ctx.n_ctx() as usize;
    if prompt.is_empty() || prompt.len() >= n_ctx {
        return fail(
            outcome,
            format!(
                "prompt of {} tokens does not fit the context of {n_ctx}",
                prompt.len()
            ),
        );
    }

    // Reuse the cached prefix; at least one token must be evaluated to get logits.
    let mut reuse = common_prefix(&kv.tokens, prompt).min(prompt.len() - 1);
    if reuse < kv.tokens.len() {
        let start = u32::try_from(reuse).unwrap_or(0);
        if eng.ctx.kv_cache_seq_rm(seq, Some(start), None).is_err() {
            eng.ctx.clear_kv_cache();
            reuse = 0;
        }
        kv.tokens.truncate(reuse);
    }
    outcome.prompt_reused = u32::try_from(reuse).unwrap_or(u32::MAX);

    let prefill_started = Instant::now();
    let n_batch = (eng.ctx.n_batch() as usize).min(BACKGROUND_BATCH);
    let mut batch = LlamaBatch::new(n_batch.max(1), 1);
    let mut chunk_start = reuse;
    while chunk_start < prompt.len() {
        // Checked between micro-batches so a long prompt can be abandoned part-way.
        if job.cancel.is_cancelled() {
            outcome.prompt_evaluated = u32::try_from(chunk_start - reuse).unwrap_or(u32::MAX);
            outcome.prefill = prefill_started.elapsed();
            tracing::info!(
                evaluated = outcome.prompt_evaluated,
                prompt_tokens = outcome.prompt_tokens,
                reused = outcome.prompt_reused,
                ms = outcome.prefill.as_millis() as u64,
                "prompt evaluation cancelled part-way"
            );
            return outcome;
        }
        if preempt() {
            outcome.finish = Finish::Preempted;
            return outcome;
        }
        let end = (chunk_start + n_batch).min(prompt.len());
        batch.clear();
        for (pos, token) in prompt.iter().enumerate().take(end).skip(chunk_start) {
            let last = pos + 1 == prompt.len();
            if let Err(err) = batch.add(*token, pos_i32(pos), &[seq], last) {
                return fail(outcome, err.to_string());
            }
        }
        if let Err(err) = eng.ctx.decode(&mut batch) {
            eng.ctx.clear_kv_cache();
            kv.tokens.clear();
            return fail(outcome, format!("prompt evaluation failed: {err}"));
        }
        kv.tokens.extend_from_slice(&prompt[chunk_start..end]);
        chunk_start = end;
    }
    outcome.prompt_evaluated = u32::try_from(prompt.len() - reuse).unwrap_or(u32::MAX);
    outcome.prefill = prefill_started.elapsed();

    let decode_started = Instant::now();
    let model = eng.model;
    let vocab = model.vocab();
    let mut sampler = match sampler(model, &job.sampling, job.grammar.as_deref()) {
        Ok(sampler) => sampler,
        Err(msg) => return fail(outcome, msg),
    };
    let mut logits_index = batch.n_tokens() - 1;
    let mut text = Utf8Stream::default();
    let mut piece = Vec::with_capacity(32);
    let mut pos = prompt.len();
    // A thread policy change, made before the next one-token step (the context's logits of the
    // last step are sampled first).
    let mut retune: Option<Change> = None;
    let finish = loop {
        if job.cancel.is_cancelled() {
            break Finish::Cancelled;
        }
        if preempt() {
            break Finish::Preempted;
        }
        // `sample` also accepts the token into the sampler state (penalties, grammar).
        let token = sampler.sample(&eng.ctx, logits_index);
        if vocab.is_eog(token) {
            break Finish::Stop;
        }
        outcome.completion_tokens += 1;
        piece.clear();
        vocab.token_to_piece_into(token, &mut piece, false, None);
        let chunk = text.push(&piece);
        if !chunk.is_empty() && !send(&job.events, GenEvent::Token(chunk), stall) {
            // The consumer is gone or stalled: nobody will read more.
            job.cancel.cancel();
            break Finish::Cancelled;
        }
        if outcome.completion_tokens >= job.max_tokens || pos + 1 >= n_ctx {
            break Finish::Length;
        }
        batch.clear();
        if let Err(err) = batch.add(token, pos_i32(pos), &[seq], true) {
            return fail(outcome, err.to_string());
        }
        if let Some(change) = retune.take() {
            eng.retune(change);
        }
        let step = Instant::now();
        if let Err(err) = eng.ctx.decode(&mut batch) {
            eng.ctx.clear_kv_cache();
            kv.tokens.clear();
            outcome.decode = decode_started.elapsed();
            return fail(outcome, format!("decode failed: {err}"));
        }
        retune = eng.observe(step.elapsed());
        kv.tokens.push(token);
        pos += 1;
        logits_index = 0;
    };
    let tail = text.finish();
    if !tail.is_empty() && !matches!(finish, Finish::Cancelled | Finish::Preempted) {
        send(&job.events, GenEvent::Token(tail), stall);
    }
    outcome.finish = finish;
    outcome.decode = decode_started.elapsed();
    outcome
}

pub(super) fn sampler(
    model: &LlamaModel,
    s: &Sampling,
    grammar: Option<&str>,
) -> Result<LlamaSampler, String> {
    let mut chain = Vec::with_capacity(7);
    if let Some(grammar) = grammar {
        // First in the chain: the other samplers only ever see tokens the grammar allows.
        chain.push(
            LlamaSampler::grammar(model, grammar, "root")
                .map_err(|err| format!("invalid grammar: {err}"))?,
        );
    }
    if (s.repeat_penalty - 1.0).abs() > f32::EPSILON
        || s.frequency_penalty != 0.0
        || s.presence_penalty != 0.0
    {
        chain.push(LlamaSampler::penalties(
            model.n_vocab(),
            PENALTY_LAST_N,
            s.repeat_penalty,
            s.frequency_penalty,
            s.presence_penalty,
        ));
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if s.top_k > 0 {
            chain.push(LlamaSampler::top_k(
                i32::try_from(s.top_k).unwrap_or(i32::MAX),
            ));
        }
        if s.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(s.top_p, 1));
        }
        if s.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(s.min_p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        chain.push(LlamaSampler::dist(s.seed.unwrap_or_else(random_seed)));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

fn random_seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

pub(super) fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

pub(super) fn pos_i32(pos: usize) -> i32 {
    // Positions are below n_ctx, which fits an i32 by construction (config caps it).
    i32::try_from(pos).unwrap_or(i32::MAX)
}

/// Sends an event, waiting up to `stall` for room. False when the receiver is gone or stalled.
///
/// A blocking thread cannot await, so it polls `try_send` with a short back-off; the wait only
/// happens when the client is slower than generation.
pub(super) fn send(tx: &mpsc::Sender<GenEvent>, event: GenEvent, stall: Duration) -> bool {
    let deadline = Instant::now() + stall;
    let mut event = event;
    let mut backoff = Duration::from_micros(200);
    loop {
        match tx.try_send(event) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(back)) => {
                if Instant::now() >= deadline {
                    tracing::debug!("client stalled; cancelling generation");
                    return false;
                }
                event = back;
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(20));
            }
        }
    }
}
