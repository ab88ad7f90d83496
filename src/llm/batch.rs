//! Chat generations decoded together (continuous batching): up to `parallel` interactive
//! generations each own a KV sequence (a [`Slot`]) of the one context, and every decode step
//! carries the next token of every decoding stream plus a bounded chunk of the prompts of newly
//! admitted ones. A request queued while others run joins at the next step; a finished,
//! cancelled or stalled one leaves at once.
//!
//! Why one batch instead of one generation at a time: on a CPU a one-token decode step is bound
//! by reading the weights, and a step of four tokens reads them once too, so four streams cost
//! little more per step than one. Why slots keep their tokens after a generation: a chat's next
//! turn shares its whole history with the previous prompt; the slot whose cached tokens share the
//! longest prefix with a new prompt takes it (as llama-server picks slots by similarity), so up
//! to `parallel` conversations keep their prefix cached at once.
//!
//! KV cells are shared (a unified cache of `n_ctx` cells). A generation is admitted when its
//! prompt's new tokens plus a reply reserve ([`REPLY_RESERVE`]) fit next to the cells in use:
//! idle slots' caches and the background sequence are evicted first (least recently used), and a
//! job that still does not fit waits at the head of the queue until a stream ends. If the cells
//! run out mid-reply anyway (replies longer than the reserve), the most recently admitted stream
//! ends with `length` so the others go on.
//!
//! Per-stream state stays per stream: its sampler chain (grammar, seed, penalties), its UTF-8
//! assembly, its output channel. A client that stops reading does not stall the batch: its
//! stream skips steps (its token waits) until the channel has room, and ends as cancelled after
//! the stall timeout.

use std::time::{Duration, Instant};

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;

use super::utf8::Utf8Stream;
use super::worker::{
    common_prefix, count, finished, forget_all, pos_i32, sampler, send, Engine, KvCache,
};
use super::{Finish, GenEvent, Generation, Outcome, Shared};
use crate::metrics::{GaugeGuard, METRICS};

/// Reply tokens a generation is assumed to need when it is admitted: most replies are shorter,
/// and reserving every stream's `max_tokens` (1024 by default) would keep a 4k context to two
/// streams. A reply that outgrows it takes free cells; only when none are left does a stream
/// end early.
const REPLY_RESERVE: usize = 256;
/// Most tokens of a step that carries more than one stream's tokens. Two reasons:
/// - running streams keep flowing: their next tokens wait for at most this much prompt work of
///   a newly admitted stream (on 2 cores ~0.05 s for a 135M model, ~1 s for a 1.5B one);
/// - a stream's numbers do not depend on who shares its step. llama.cpp's CPU flash attention
///   walks each query's own cells one by one (skipping other sequences' masked cells) below 64
///   queries per step, and switches to a tiled kernel from 64 on, whose sums depend on where
///   cells sit; under the limit a greedy reply is the same alone and batched.
///
/// A step with one stream's tokens only (a prompt evaluated while nothing decodes) takes up to
/// `n_batch`, as a generation alone always did.
const MIXED_STEP_TOKENS: usize = 63;

/// Tokens at the end of a slot's last prompt a continuing prompt may differ in: the template's
/// opening of the assistant turn followed by the stored reply can tokenize differently at the
/// seam than the reply did when it was generated.
const CONTINUE_SLACK: usize = 8;

/// A KV sequence for chat generations and the tokens cached in it.
pub(super) struct Slot {
    pub(super) seq: i32,
    pub(super) kv: KvCache,
    /// Prompt tokens of the last generation admitted to it: a new prompt that starts with all
    /// of them continues that conversation.
    prompt_len: usize,
    /// When a generation last finished on it (least recently used goes first).
    used: Instant,
    busy: bool,
    /// The conversation of the last generation admitted to it (its KV snapshot's owner).
    pub(super) conversation: Option<String>,
}

impl Slot {
    /// When a generation last finished on it.
    pub(super) fn used(&self) -> Instant {
        self.used
    }

    pub(super) fn new(seq: i32) -> Slot {
        Slot {
            seq,
            kv: KvCache::default(),
            prompt_len: 0,
            used: Instant::now(),
            busy: false,
            conversation: None,
        }
    }
}

/// One chat generation in the batch.
struct Stream {
    slot: usize,
    job: Generation,
    queued_at: Instant,
    /// Admission order (the newest ends first when cells run out).
    order: u64,
    outcome: Outcome,
    sampler: LlamaSampler,
    text: Utf8Stream,
    /// Prompt tokens from here on are not evaluated yet.
    next: usize,
    /// The sampled token to feed on the next step (the stream is decoding).
    pending: Option<LlamaToken>,
    /// Text the client's channel had no room for yet.
    backlog: Option<String>,
    /// Since when the client has not taken the backlog.
    stalled_since: Option<Instant>,
    /// This stream's logits in the last decoded batch.
    logits: Option<i32>,
    admitted: Instant,
    decode_started: Option<Instant>,
    _active: GaugeGuard<'static>,
}

/// The last events of streams that ended while their consumer's channel was full: delivered
/// between steps (a slow consumer never blocks the batch), given up after the stall timeout.
#[derive(Default)]
struct Outbox(Vec<Undelivered>);

struct Undelivered {
    tx: mpsc::Sender<GenEvent>,
    events: std::collections::VecDeque<GenEvent>,
    deadline: Instant,
}

impl Undelivered {
    /// Sends what the channel takes now; true when nothing is left to deliver.
    fn flush(&mut self) -> bool {
        while let Some(event) = self.events.pop_front() {
            match self.tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => self.events.clear(),
                Err(mpsc::error::TrySendError::Full(event)) => {
                    if Instant::now() >= self.deadline {
                        tracing::debug!("consumer stalled; dropping a generation's last events");
                        self.events.clear();
                    } else {
                        self.events.push_front(event);
                    }
                    break;
                }
            }
        }
        self.events.is_empty()
    }
}

impl Outbox {
    fn push(&mut self, tx: mpsc::Sender<GenEvent>, events: Vec<GenEvent>, stall: Duration) {
        let mut undelivered = Undelivered {
            tx,
            events: events.into(),
            deadline: Instant::now() + stall,
        };
        if !undelivered.flush() {
            self.0.push(undelivered);
        }
    }

    fn flush(&mut self) {
        self.0.retain_mut(|u| !u.flush());
    }

    /// Before the worker leaves the batch: what is left is sent waiting (no stream runs now).
    fn drain(self) {
        for u in self.0 {
            let wait = u.deadline.saturating_duration_since(Instant::now());
            for event in u.events {
                if !send(&u.tx, event, wait) {
                    break;
                }
            }
        }
    }
}

/// How a stream left.
enum Leave {
    Stay,
    Finish(Finish),
}

/// Serves interactive generations, starting with `first`, until none is running or queued.
pub(super) fn serve(
    eng: &mut Engine<'_>,
    slots: &mut [Slot],
    bg_kv: &mut KvCache,
    first: (Instant, Generation),
    shared: &Shared,
) {
    let stall = shared.config.stall_timeout;
    let n_ctx = eng.ctx.n_ctx() as usize;
    let n_batch = (eng.ctx.n_batch() as usize).max(1);
    let mut batch = LlamaBatch::new(n_batch, 1);
    let mut streams: Vec<Stream> = Vec::new();
    let mut waiting = Some(first);
    let mut admitted: u64 = 0;
    let mut retune = None;
    let mut outbox = Outbox::default();
    loop {
        outbox.flush();
        // Join: queued chat generations take free slots while their prompts fit.
        while streams.len() < slots.len() {
            let Some((queued_at, job)) = waiting.take().or_else(|| shared.queue.try_pop_chat())
            else {
                break;
            };
            match admit(eng, slots, bg_kv, &streams, queued_at, job, stall) {
                Admission::Started(mut stream) => {
                    admitted += 1;
                    stream.order = admitted;
                    streams.push(*stream);
                }
                Admission::Ended => {}
                Admission::NoRoom(queued_at, job) => {
                    shared.queue.push_front(queued_at, job);
                    break;
                }
            }
        }
        if streams.is_empty() {
            outbox.drain();
            return;
        }

        // Leave: cancelled and stalled streams; a backlog the client now takes.
        let mut i = 0;
        while i < streams.len() {
            let leave = check(&mut streams[i], stall);
            if let Leave::Finish(finish) = leave {
                let stream = streams.swap_remove(i);
                end(stream, finish, slots, &mut outbox, stall);
            } else {
                i += 1;
            }
        }
        if streams.is_empty() {
            continue;
        }

        // Make sure the decoding streams' tokens have cells; the newest gives way if not.
        let decoding = streams
            .iter()
            .filter(|s| s.pending.is_some() && s.backlog.is_none())
            .count();
        if free_cells(n_ctx, slots, bg_kv) < decoding {
            evict(eng, slots, bg_kv, None, decoding, n_ctx);
        }
        while decoding > 0 && free_cells(n_ctx, slots, bg_kv) < streams_decoding(&streams) {
            let newest = (0..streams.len())
                .filter(|&i| streams[i].pending.is_some())
                .max_by_key(|&i| streams[i].order);
            let Some(newest) = newest else { break };
            let stream = streams.swap_remove(newest);
            tracing::warn!(
                streams = streams.len() + 1,
                n_ctx,
                "the context is full: the newest stream ends with length"
            );
            end(stream, Finish::Length, slots, &mut outbox, stall);
        }

        // The batch: every decoding stream's next token, then prompt chunks in admission order.
        batch.clear();
        let mut failed = None;
        for s in streams.iter_mut() {
            s.logits = None;
            let Some(token) = s.pending.filter(|_| s.backlog.is_none()) else {
                continue;
            };
            let slot = &slots[s.slot];
            if let Err(err) = batch.add(token, pos_i32(slot.kv.tokens.len()), &[slot.seq], true) {
                failed = Some(err.to_string());
                break;
            }
            s.logits = Some(batch.n_tokens() - 1);
        }
        let decoding = batch.n_tokens() as usize;
        // Nothing decoding: the oldest prompt alone, in full micro-batches. Else prompt chunks
        // fill the step up to the mixed-step limit, oldest first.
        let (mut budget, prompts) = if decoding > 0 {
            (MIXED_STEP_TOKENS.saturating_sub(decoding), usize::MAX)
        } else {
            (n_batch, 1)
        };
        budget = budget.min(free_cells(n_ctx, slots, bg_kv).saturating_sub(decoding));
        let mut chunks: Vec<(usize, usize)> = Vec::new();
        streams.sort_by_key(|s| s.order);
        for (i, s) in streams.iter_mut().enumerate() {
            let prompt = &s.job.prompt.tokens;
            if s.pending.is_some()
                || s.next >= prompt.len()
                || budget == 0
                || chunks.len() >= prompts
                || failed.is_some()
            {
                continue;
            }
            let take = budget.min(prompt.len() - s.next);
            let seq = slots[s.slot].seq;
            for pos in s.next..s.next + take {
                let last = pos + 1 == prompt.len();
                if let Err(err) = batch.add(prompt[pos], pos_i32(pos), &[seq], last) {
                    failed = Some(err.to_string());
                    break;
                }
                if last {
                    s.logits = Some(batch.n_tokens() - 1);
                }
            }
            budget -= take;
            chunks.push((i, take));
        }
        if let Some(err) = failed {
            fail_all(eng, slots, bg_kv, streams, &err, &mut outbox, stall);
            outbox.drain();
            return;
        }
        if batch.n_tokens() == 0 {
            let starved = streams.iter().any(|s| {
                s.pending.is_none() && s.next < s.job.prompt.tokens.len() && s.backlog.is_none()
            });
            if starved && free_cells(n_ctx, slots, bg_kv) == 0 {
                // A prompt has no cell left (replies outgrew their reserves): idle caches go,
                // and if none is left the newest stream gives way, so the others go on.
                evict(eng, slots, bg_kv, None, 1, n_ctx);
                if free_cells(n_ctx, slots, bg_kv) == 0 {
                    if let Some(newest) = (0..streams.len()).max_by_key(|&i| streams[i].order) {
                        let stream = streams.swap_remove(newest);
                        tracing::warn!(n_ctx, "the context is full: the newest stream ends");
                        end(stream, Finish::Length, slots, &mut outbox, stall);
                    }
                }
            } else {
                // Every stream waits on its client: give them a moment.
                std::thread::sleep(Duration::from_millis(5));
            }
            continue;
        }

        if let Some(change) = retune.take() {
            eng.retune(change);
        }
        let step = Instant::now();
        if let Err(err) = eng.ctx.decode(&mut batch) {
            fail_all(
                eng,
                slots,
                bg_kv,
                streams,
                &format!("decode failed: {err}"),
                &mut outbox,
                stall,
            );
            outbox.drain();
            return;
        }
        let took = step.elapsed();
        tracing::trace!(
            tokens = batch.n_tokens(),
            decoding,
            streams = streams.len(),
            us = took.as_micros() as u64,
            "batched step"
        );
        // The thread policy compares one-token steps; a batched step is another workload.
        if batch.n_tokens() == 1 {
            retune = eng.observe(took);
        }
        // The cache now holds what was decoded.
        for s in streams.iter_mut() {
            if let (Some(token), Some(_)) = (s.pending, s.logits) {
                if s.next >= s.job.prompt.tokens.len() {
                    slots[s.slot].kv.tokens.push(token);
                    s.pending = None;
                }
            }
        }
        for &(i, take) in &chunks {
            let s = &mut streams[i];
            let tokens = &s.job.prompt.tokens[s.next..s.next + take];
            slots[s.slot].kv.tokens.extend_from_slice(tokens);
            s.next += take;
        }

        // Sample every stream that has logits; the finished leave.
        let mut i = 0;
        while i < streams.len() {
            let leave = sample(eng, &mut streams[i], slots, n_ctx, took);
            if let Leave::Finish(finish) = leave {
                let stream = streams.swap_remove(i);
                end(stream, finish, slots, &mut outbox, stall);
            } else {
                i += 1;
            }
        }
    }
}

fn streams_decoding(streams: &[Stream]) -> usize {
    streams
        .iter()
        .filter(|s| s.pending.is_some() && s.backlog.is_none())
        .count()
}

/// What admitting a job came to.
enum Admission {
    Started(Box<Stream>),
    /// It ended at once (refused, cancelled, or its client is gone); its `Finished` was sent.
    Ended,
    /// Its prompt does not fit next to the running streams: back to the head of the queue.
    NoRoom(Instant, Generation),
}

/// Admits `job` into the idle slot whose cache shares the longest prefix with its prompt,
/// making room by evicting idle caches.
fn admit(
    eng: &mut Engine<'_>,
    slots: &mut [Slot],
    bg_kv: &mut KvCache,
    streams: &[Stream],
    queued_at: Instant,
    job: Generation,
    stall: Duration,
) -> Admission {
    let n_ctx = eng.ctx.n_ctx() as usize;
    let prompt = &job.prompt.tokens;
    let mut outcome = Outcome::empty(prompt.len());
    if !send(&job.events, GenEvent::Started, stall) || job.cancel.is_cancelled() {
        finished(&job, outcome, stall);
        return Admission::Ended;
    }
    if prompt.is_empty() || prompt.len() >= n_ctx {
        outcome.finish = Finish::Error;
        outcome.error = Some(format!(
            "prompt of {} tokens does not fit the context of {n_ctx}",
            prompt.len()
        ));
        finished(&job, outcome, stall);
        return Admission::Ended;
    }
    let Some(slot) = pick_slot(slots, prompt) else {
        return Admission::NoRoom(queued_at, job);
    };
    // At least one prompt token is evaluated, for logits.
    let mut reuse = common_prefix(&slots[slot].kv.tokens, prompt).min(prompt.len() - 1);
    let outstanding: usize = streams.iter().map(|s| s.outstanding()).sum();
    let reply = REPLY_RESERVE.min(job.max_tokens as usize);
    // A saved conversation this prompt continues, when it covers more than the slot: restored
    // instead of evaluated, if its cells fit (all of the slot's go).
    let conversation = job.conversation.as_deref();
    let mut hit = eng.find_snapshot(conversation, prompt, CONTINUE_SLACK, reuse);
    if let Some(found) = &hit {
        let need = found.tokens.len().max(prompt.len() + reply) + outstanding;
        let have = slots[slot].kv.tokens.len();
        if free_cells(n_ctx, slots, bg_kv) + have < need {
            evict(eng, slots, bg_kv, Some(slot), need - have, n_ctx);
            if free_cells(n_ctx, slots, bg_kv) + have < need {
                hit = None;
            }
        }
    }
    let kept = hit.as_ref().map_or(reuse, |_| 0);
    // The slot's conversation loses its cells (another one takes the slot): saved first.
    if slots[slot].kv.tokens.len() > kept + CONTINUE_SLACK {
        eng.snapshot(&slots[slot]);
    }
    if let Some(hit) = hit {
        reuse = if eng.restore(&mut slots[slot], &hit) {
            hit.usable
        } else {
            0
        };
        slots[slot].prompt_len = reuse;
        slots[slot].conversation = job.conversation.clone();
    }
    let need = (prompt.len() - reuse) + reply + outstanding;
    // The chosen slot's tail beyond the shared prefix goes anyway.
    let tail = slots[slot].kv.tokens.len() - reuse.min(slots[slot].kv.tokens.len());
    if free_cells(n_ctx, slots, bg_kv) + tail < need {
        let short = need - tail;
        evict(eng, slots, bg_kv, Some(slot), short, n_ctx);
        if free_cells(n_ctx, slots, bg_kv) + tail < need && !streams.is_empty() {
            return Admission::NoRoom(queued_at, job);
        }
    }
    let s = &mut slots[slot];
    let mut reused = reuse;
    if reuse < s.kv.tokens.len() {
        let start = u32::try_from(reuse).unwrap_or(0);
        if eng.ctx.kv_cache_seq_rm(s.seq, Some(start), None).is_err() {
            // llama.cpp could not cut the sequence: start it over.
            let _ = eng.ctx.kv_cache_seq_rm(s.seq, None, None);
            s.kv.tokens.clear();
            reused = 0;
        } else {
            s.kv.tokens.truncate(reuse);
        }
    }
    outcome.prompt_reused = u32::try_from(reused).unwrap_or(u32::MAX);
    let chain = match sampler(eng.model, &job.sampling, job.grammar.as_deref()) {
        Ok(chain) => chain,
        Err(msg) => {
            outcome.finish = Finish::Error;
            outcome.error = Some(msg);
            finished(&job, outcome, stall);
            return Admission::Ended;
        }
    };
    s.busy = true;
    s.prompt_len = prompt.len();
    s.conversation = job.conversation.clone();
    Admission::Started(Box::new(Stream {
        slot,
        job,
        queued_at,
        order: 0,
        outcome,
        sampler: chain,
        text: Utf8Stream::default(),
        next: reused,
        pending: None,
        backlog: None,
        stalled_since: None,
        logits: None,
        admitted: Instant::now(),
        decode_started: None,
        _active: METRICS.streams_active.track(),
    }))
}

impl Stream {
    /// Cells this stream may still take: its prompt's unevaluated tokens and what is left of
    /// its reply reserve.
    fn outstanding(&self) -> usize {
        let prompt = self.job.prompt.tokens.len() - self.next.min(self.job.prompt.tokens.len());
        let done = self.outcome.completion_tokens as usize;
        let reply = REPLY_RESERVE
            .min(self.job.max_tokens as usize)
            .saturating_sub(done);
        prompt + reply
    }
}

/// The idle slot for `prompt`: one whose cached conversation the prompt continues (it starts
/// with that slot's whole last prompt, as a chat's next turn does, give or take
/// [`CONTINUE_SLACK`] tokens; the longest shared prefix wins), else an empty slot, else the
/// least recently used one. A prefix shared only by accident (the same system prompt) does not
/// cost another conversation its cache while an empty slot is free. `None` when all are busy.
fn pick_slot(slots: &[Slot], prompt: &[LlamaToken]) -> Option<usize> {
    let idle = || slots.iter().enumerate().filter(|(_, s)| !s.busy);
    let continued = idle()
        .filter(|(_, s)| !s.kv.tokens.is_empty())
        .map(|(i, s)| (i, common_prefix(&s.kv.tokens, prompt), s.prompt_len))
        .filter(|&(_, shared, last_prompt)| {
            shared > CONTINUE_SLACK && shared + CONTINUE_SLACK >= last_prompt
        })
        .max_by_key(|&(_, shared, _)| shared)
        .map(|(i, _, _)| i);
    continued
        .or_else(|| idle().find(|(_, s)| s.kv.tokens.is_empty()).map(|(i, _)| i))
        .or_else(|| idle().min_by_key(|(_, s)| s.used).map(|(i, _)| i))
}

/// Cells not holding any sequence's tokens.
fn free_cells(n_ctx: usize, slots: &[Slot], bg_kv: &KvCache) -> usize {
    let used: usize = slots.iter().map(|s| s.kv.tokens.len()).sum::<usize>() + bg_kv.tokens.len();
    n_ctx.saturating_sub(used)
}

/// Frees at least `need` cells if it can: the background sequence first, then idle slots'
/// caches, least recently used first (never `keep`, never a busy slot).
fn evict(
    eng: &mut Engine<'_>,
    slots: &mut [Slot],
    bg_kv: &mut KvCache,
    keep: Option<usize>,
    need: usize,
    n_ctx: usize,
) {
    if free_cells(n_ctx, slots, bg_kv) >= need {
        return;
    }
    if !bg_kv.tokens.is_empty() {
        eng.drop_seq(eng.background_seq());
        bg_kv.tokens.clear();
    }
    while free_cells(n_ctx, slots, bg_kv) < need {
        let victim = slots
            .iter()
            .enumerate()
            .filter(|(i, s)| !s.busy && Some(*i) != keep && !s.kv.tokens.is_empty())
            .min_by_key(|(_, s)| s.used)
            .map(|(i, _)| i);
        let Some(victim) = victim else { return };
        eng.snapshot(&slots[victim]);
        eng.drop_seq(slots[victim].seq);
        slots[victim].kv.tokens.clear();
    }
}

/// Before a step: a cancelled stream leaves; a backlog goes to a client with room again; a
/// client stalled past the timeout loses its stream.
fn check(s: &mut Stream, stall: Duration) -> Leave {
    if s.job.cancel.is_cancelled() {
        return Leave::Finish(Finish::Cancelled);
    }
    if let Some(text) = s.backlog.take() {
        match s.job.events.try_send(GenEvent::Token(text)) {
            Ok(()) => s.stalled_since = None,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                s.job.cancel.cancel();
                return Leave::Finish(Finish::Cancelled);
            }
            Err(mpsc::error::TrySendError::Full(GenEvent::Token(text))) => {
                let since = *s.stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= stall {
                    tracing::debug!("client stalled; cancelling generation");
                    s.job.cancel.cancel();
                    return Leave::Finish(Finish::Cancelled);
                }
                s.backlog = Some(text);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {}
        }
    }
    Leave::Stay
}

/// After a step: samples the stream's next token if the step gave it logits, and sends the
/// text it completes.
fn sample(eng: &Engine<'_>, s: &mut Stream, slots: &[Slot], n_ctx: usize, step: Duration) -> Leave {
    let Some(index) = s.logits.take() else {
        return Leave::Stay;
    };
    if s.decode_started.is_none() {
        s.outcome.prefill = s.admitted.elapsed();
        s.outcome.prompt_evaluated =
            u32::try_from(s.job.prompt.tokens.len() - s.outcome.prompt_reused as usize)
                .unwrap_or(u32::MAX);
        s.decode_started = Some(Instant::now());
    } else {
        METRICS.token_latency.observe_duration(step);
    }
    // `sample` also accepts the token into the sampler state (penalties, grammar).
    let token = s.sampler.sample(&eng.ctx, index);
    let vocab = eng.model.vocab();
    if vocab.is_eog(token) {
        return Leave::Finish(Finish::Stop);
    }
    s.outcome.completion_tokens += 1;
    if s.outcome.completion_tokens == 1 {
        METRICS.ttft.observe_duration(s.queued_at.elapsed());
    }
    let mut piece = Vec::with_capacity(32);
    vocab.token_to_piece_into(token, &mut piece, false, None);
    let chunk = s.text.push(&piece);
    if !chunk.is_empty() {
        match s.job.events.try_send(GenEvent::Token(chunk)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The consumer is gone: nobody will read more.
                s.job.cancel.cancel();
                return Leave::Finish(Finish::Cancelled);
            }
            Err(mpsc::error::TrySendError::Full(GenEvent::Token(text))) => {
                s.backlog = Some(text);
                s.stalled_since = Some(Instant::now());
            }
            Err(mpsc::error::TrySendError::Full(_)) => {}
        }
    }
    let pos = slots[s.slot].kv.tokens.len();
    if s.outcome.completion_tokens >= s.job.max_tokens || pos + 1 >= n_ctx {
        return Leave::Finish(Finish::Length);
    }
    s.pending = Some(token);
    Leave::Stay
}

/// A stream leaves: its remaining text and its outcome go to the client, its slot keeps the
/// tokens as a cache.
fn end(mut s: Stream, finish: Finish, slots: &mut [Slot], outbox: &mut Outbox, stall: Duration) {
    if s.decode_started.is_none() {
        // Left during its prompt: what was evaluated so far.
        s.outcome.prompt_evaluated =
            u32::try_from(s.next.saturating_sub(s.outcome.prompt_reused as usize))
                .unwrap_or(u32::MAX);
        s.outcome.prefill = s.admitted.elapsed();
        if finish == Finish::Cancelled {
            tracing::info!(
                evaluated = s.outcome.prompt_evaluated,
                prompt_tokens = s.outcome.prompt_tokens,
                reused = s.outcome.prompt_reused,
                ms = s.outcome.prefill.as_millis() as u64,
                "prompt evaluation cancelled part-way"
            );
        }
    }
    if let Some(started) = s.decode_started {
        s.outcome.decode = started.elapsed();
    }
    let mut events = Vec::with_capacity(2);
    if finish != Finish::Cancelled {
        let mut rest = s.backlog.take().unwrap_or_default();
        rest.push_str(&s.text.finish());
        if !rest.is_empty() {
            events.push(GenEvent::Token(rest));
        }
    }
    s.outcome.finish = finish;
    let slot = &mut slots[s.slot];
    slot.busy = false;
    slot.used = Instant::now();
    let outcome = std::mem::replace(&mut s.outcome, Outcome::empty(0));
    count(&outcome);
    events.push(GenEvent::Finished(outcome));
    outbox.push(s.job.events.clone(), events, stall);
}

/// A failed decode may have cleared the whole cache: every stream ends with the error and every
/// sequence is forgotten.
fn fail_all(
    eng: &mut Engine<'_>,
    slots: &mut [Slot],
    bg_kv: &mut KvCache,
    streams: Vec<Stream>,
    err: &str,
    outbox: &mut Outbox,
    stall: Duration,
) {
    tracing::error!(
        error = err,
        streams = streams.len(),
        "batched decode failed"
    );
    forget_all(eng, slots, bg_kv);
    for mut s in streams {
        s.outcome.error = Some(err.to_string());
        end(s, Finish::Error, slots, outbox, stall);
    }
}
