//! Sentence embeddings in-process: all-MiniLM-L6-v2 (ONNX) through fastembed and ONNX Runtime,
//! on one dedicated thread, loaded on first use.
//!
//! Why a thread of its own: `TextEmbedding::embed` takes `&mut self` and blocks for tens of
//! milliseconds per batch; keeping it off the async runtime keeps the API responsive. Why lazy:
//! the runtime library and session cost ~100–250 MB of RSS, which a daemon that only chats should
//! not pay.
//!
//! Every file (the runtime library, the ONNX model, its four tokenizer files) is checked against
//! the manifest's sha256 before it is loaded, like the chat model. ONNX Runtime is loaded
//! explicitly from the models dir with `ort::init_from`, so a missing or too-old library is an
//! error, not a panic.
//!
//! Work is queued in two lanes: queries (a person waits) before ingest batches. Texts are grouped
//! by length before batching (fastembed pads a batch to its longest text) and batches are capped
//! at [`MAX_BATCH`] so the ONNX arena, and with it RSS, stays bounded.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::METRICS;
use crate::models::{self, Manifest, Role, VerifiedModel};
use crate::store::Store;

/// Vector dimension of all-MiniLM-L6-v2.
pub const DIM: usize = 384;
/// The model's window in tokens, special tokens included; longer texts are truncated by the
/// tokenizer, so chunks are cut to fit it.
pub const MAX_TOKENS: usize = 256;
/// Largest batch handed to ONNX Runtime: beyond 32 the arena (and RSS) grows with no speed gain.
pub const MAX_BATCH: usize = 32;
/// Padded characters per batch (~4 characters a token): eight full 256-token windows. Attention
/// memory grows with batch × length², and ONNX Runtime's arena keeps its peak: 32 full windows
/// in one batch took RSS from 0.3 to 1.6 GB, eight keep it a few hundred MB, at the same
/// speed per text (long texts are compute-bound, not batch-bound).
const BATCH_CHARS: usize = 8 * 1024;
/// Padded characters per batch of ingest work (one full window): ingestion yields to a reply
/// only between batches, and the batch in flight when a reply starts runs on through it (at
/// background priority, but still taking a share of the cores). 8K characters took ~1 s on 2
/// cores and still ran 0.2 s into replies at 2K; at 1K the in-flight batch is short, at the same
/// speed per text (long texts are compute-bound).
const INGEST_BATCH_CHARS: usize = 1024;

/// Manifest names of the files the embedder needs besides the model (which is a setting:
/// `embed_model`, fp32 or int8; both take the same tokenizer files).
#[cfg(not(windows))]
const RUNTIME: &str = "onnxruntime";
/// Windows loads the same release's DLL (`models/fetch windows`).
#[cfg(windows)]
const RUNTIME: &str = "onnxruntime-windows";
const TOKENIZER: &str = "all-minilm-l6-v2-tokenizer";
const CONFIG: &str = "all-minilm-l6-v2-config";
const SPECIAL_TOKENS: &str = "all-minilm-l6-v2-special-tokens-map";
const TOKENIZER_CONFIG: &str = "all-minilm-l6-v2-tokenizer-config";

#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error("the embedding model is unavailable: {0}")]
    Unavailable(String),
    #[error("embedding failed: {0}")]
    Failed(String),
    #[error("the embedder is shutting down")]
    ShuttingDown,
}

/// Who is waiting for the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A search or a chat turn: served first.
    Query,
    /// Document ingestion: served between queries.
    Ingest,
}

/// The embedder's state, for health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedState {
    /// Not loaded yet (it loads on first use).
    Idle,
    Loading,
    Ready,
    Failed(String),
}

/// Cheap-to-clone handle.
#[derive(Clone)]
pub struct Embedder {
    shared: Arc<Shared>,
}

struct Shared {
    models_dir: PathBuf,
    threads: usize,
    store: Store,
    /// The model's manifest name (what `/v1/embeddings` takes as `model`).
    model: String,
    model_id: String,
    state: Mutex<EmbedState>,
    queue: Mutex<Lanes>,
    wake: Condvar,
    /// True while ingestion should wait (a chat reply is being generated).
    pause: Mutex<Option<PauseFn>>,
}

/// Asked between ingest batches: should ingestion wait?
pub type PauseFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// Longest one ingest batch waits for chat replies to finish: a daemon that chats without
/// pause must still make ingest progress.
const MAX_YIELD: std::time::Duration = std::time::Duration::from_secs(30);
/// How often a paused ingest checks whether it may go on.
const YIELD_POLL: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Default)]
struct Lanes {
    query: VecDeque<Job>,
    ingest: VecDeque<Job>,
    closed: bool,
    started: bool,
}

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
    /// Receives the number of texts embedded so far, after every batch.
    progress: Option<mpsc::UnboundedSender<usize>>,
    /// Ingest work yields to chat generation (see [`Embedder::set_pause`]).
    ingest: bool,
}

impl Embedder {
    /// A handle for the manifest's embedding model `model`; nothing is loaded until the first
    /// request. A name that is not an embedding model of the manifest is an error.
    pub fn new(
        models_dir: &Path,
        model: &str,
        threads: usize,
        store: Store,
    ) -> Result<Embedder, EmbedError> {
        let manifest = Manifest::builtin();
        let entry = manifest
            .entries
            .iter()
            .find(|e| e.name == model && e.role == Role::Embed)
            .ok_or_else(|| {
                let known: Vec<&str> = manifest
                    .entries
                    .iter()
                    .filter(|e| e.role == Role::Embed)
                    .map(|e| e.name.as_str())
                    .collect();
                EmbedError::Unavailable(format!(
                    "'{model}' is not an embedding model; known: {}",
                    known.join(", ")
                ))
            })?;
        Ok(Embedder {
            shared: Arc::new(Shared {
                models_dir: models_dir.to_path_buf(),
                threads: threads.max(1),
                store,
                model: model.to_string(),
                model_id: format!("{model}@{}", &entry.sha256[..12]),
                state: Mutex::new(EmbedState::Idle),
                queue: Mutex::new(Lanes::default()),
                wake: Condvar::new(),
                pause: Mutex::new(None),
            }),
        })
    }

    /// The model's manifest name.
    pub fn model_name(&self) -> &str {
        &self.shared.model
    }

    /// Identifies the model (name and hash prefix); stored with every vector so vectors of
    /// another model are never compared with these.
    pub fn model_id(&self) -> &str {
        &self.shared.model_id
    }

    pub fn state(&self) -> EmbedState {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The paths of the tokenizer file (verified), for token-aware chunking.
    pub fn tokenizer_path(&self) -> Result<PathBuf, EmbedError> {
        let manifest = Manifest::builtin();
        let entry = manifest
            .entry(TOKENIZER)
            .map_err(|err| EmbedError::Unavailable(err.to_string()))?;
        let verified = models::verify(&self.shared.models_dir, entry, &self.shared.store)
            .map_err(|err| EmbedError::Unavailable(err.to_string()))?;
        Ok(verified.path)
    }

    /// Embeds `texts` (L2-normalised vectors, in order).
    pub async fn embed(
        &self,
        texts: Vec<String>,
        urgency: Urgency,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_with_progress(texts, urgency, None).await
    }

    /// Like [`Embedder::embed`], reporting the count done after each batch.
    pub async fn embed_with_progress(
        &self,
        texts: Vec<String>,
        urgency: Urgency,
        progress: Option<mpsc::UnboundedSender<usize>>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        {
            let mut lanes = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if lanes.closed {
                return Err(EmbedError::ShuttingDown);
            }
            if !lanes.started {
                lanes.started = true;
                let shared = self.shared.clone();
                std::thread::Builder::new()
                    .name("hearth-embed".into())
                    .spawn(move || run(&shared))
                    .map_err(|err| {
                        EmbedError::Unavailable(format!("cannot start the embedding thread: {err}"))
                    })?;
            }
            let job = Job {
                texts,
                reply,
                progress,
                ingest: urgency == Urgency::Ingest,
            };
            match urgency {
                Urgency::Query => lanes.query.push_back(job),
                Urgency::Ingest => lanes.ingest.push_back(job),
            }
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| EmbedError::ShuttingDown)?
    }

    /// Makes ingest batches wait while `pause` returns true (for at most [`MAX_YIELD`] per
    /// batch): embedding and token generation share the same few cores, and a person waiting
    /// for a reply goes first. Queries are still served while ingestion waits.
    pub fn set_pause(&self, pause: PauseFn) {
        *self
            .shared
            .pause
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(pause);
    }

    /// True while ingestion should wait (see [`Embedder::set_pause`]).
    pub fn paused(&self) -> bool {
        let pause = self
            .shared
            .pause
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        pause.is_some_and(|p| p())
    }

    /// Stops the thread after the running batch; waiting jobs fail with `ShuttingDown`.
    pub fn shutdown(&self) {
        let jobs: Vec<Job> = {
            let mut lanes = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            lanes.closed = true;
            let mut jobs: Vec<Job> = lanes.query.drain(..).collect();
            jobs.extend(lanes.ingest.drain(..));
            jobs
        };
        for job in jobs {
            let _ = job.reply.send(Err(EmbedError::ShuttingDown));
        }
        self.shared.wake.notify_all();
    }
}

impl Shared {
    fn set_state(&self, state: EmbedState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    /// The next job, queries first; `None` once closed.
    fn next_job(&self) -> Option<Job> {
        let mut lanes = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if lanes.closed {
                return None;
            }
            if let Some(job) = lanes.query.pop_front().or_else(|| lanes.ingest.pop_front()) {
                return Some(job);
            }
            lanes = self
                .wake
                .wait(lanes)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits while a chat reply is generated (bounded), serving queries meanwhile.
    fn yield_to_chat(&self, model: &mut TextEmbedding) {
        let pause = self
            .pause
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(pause) = pause else {
            return;
        };
        let started = std::time::Instant::now();
        while pause() && started.elapsed() < MAX_YIELD {
            if self
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .closed
            {
                return;
            }
            while let Some(query) = self.take_query() {
                let result = embed_batch(model, &query.texts);
                let _ = query.reply.send(result);
            }
            std::thread::sleep(YIELD_POLL);
        }
    }

    /// A query job waiting, taken out of the queue (to run between an ingest job's batches).
    fn take_query(&self) -> Option<Job> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .query
            .pop_front()
    }
}

fn run(shared: &Shared) {
    // Before the session exists: ONNX Runtime's pool threads, made with it, inherit this.
    crate::priority::lower_this_thread();
    shared.set_state(EmbedState::Loading);
    let started = std::time::Instant::now();
    let mut model = match load(shared) {
        Ok(model) => model,
        Err(err) => {
            tracing::error!(error = %err, "embedding model failed to load");
            shared.set_state(EmbedState::Failed(err.clone()));
            // Answer everything with the load error, now and later.
            while let Some(job) = shared.next_job() {
                let _ = job.reply.send(Err(EmbedError::Unavailable(err.clone())));
            }
            return;
        }
    };
    shared.set_state(EmbedState::Ready);
    tracing::info!(model = %shared.model_id, load_ms = started.elapsed().as_millis(), "embedding model ready");
    while let Some(job) = shared.next_job() {
        let result = embed_job(shared, &mut model, &job);
        let _ = job.reply.send(result);
    }
}

/// Embeds one job in length-grouped batches; queries that arrive meanwhile run between batches.
fn embed_job(
    shared: &Shared,
    model: &mut TextEmbedding,
    job: &Job,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let mut order: Vec<usize> = (0..job.texts.len()).collect();
    order.sort_by_key(|&i| job.texts[i].len());
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); job.texts.len()];
    let mut done = 0;
    let chars = if job.ingest {
        INGEST_BATCH_CHARS
    } else {
        BATCH_CHARS
    };
    for batch in batches(&order, |i| job.texts[i].len(), chars) {
        if job.ingest {
            shared.yield_to_chat(model);
        }
        while let Some(query) = shared.take_query() {
            let result = embed_batch(model, &query.texts);
            let _ = query.reply.send(result);
        }
        let texts: Vec<&str> = batch.iter().map(|&i| job.texts[i].as_str()).collect();
        let vectors = embed_batch(model, &texts)?;
        for (&i, vector) in batch.iter().zip(vectors) {
            out[i] = vector;
        }
        done += batch.len();
        if let Some(progress) = &job.progress {
            let _ = progress.send(done);
        }
    }
    Ok(out)
}

/// Cuts length-sorted text indices into batches of at most [`MAX_BATCH`] texts and about
/// `chars` padded characters (a batch is padded to its longest text).
fn batches(order: &[usize], len: impl Fn(usize) -> usize, chars: usize) -> Vec<&[usize]> {
    let mut out = Vec::new();
    let mut start = 0;
    for end in 1..=order.len() {
        let longest = len(order[end - 1]).max(1);
        let count = end - start;
        if count > 1 && (count > MAX_BATCH || count * longest > chars) {
            out.push(&order[start..end - 1]);
            start = end - 1;
        }
    }
    if start < order.len() {
        out.push(&order[start..]);
    }
    out
}

fn embed_batch<S: AsRef<str> + Send + Sync>(
    model: &mut TextEmbedding,
    texts: &[S],
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].as_ref().len());
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
    for batch in batches(&order, |i| texts[i].as_ref().len(), BATCH_CHARS) {
        let group: Vec<&str> = batch.iter().map(|&i| texts[i].as_ref()).collect();
        METRICS.embedded.add(group.len() as u64);
        METRICS.embed_batch.observe(group.len() as f64);
        let vectors = model
            .embed(group, Some(MAX_BATCH))
            .map_err(|err| EmbedError::Failed(err.to_string()))?;
        for (&i, vector) in batch.iter().zip(vectors) {
            out[i] = vector;
        }
    }
    Ok(out)
}

fn load(shared: &Shared) -> Result<TextEmbedding, String> {
    let manifest = Manifest::builtin();
    let verify = |name: &str| -> Result<VerifiedModel, String> {
        let entry = manifest.entry(name).map_err(|err| err.to_string())?;
        models::verify(&shared.models_dir, entry, &shared.store).map_err(|err| err.to_string())
    };
    let read = |v: &VerifiedModel| {
        std::fs::read(&v.load_path).map_err(|err| format!("{}: {err}", v.path.display()))
    };
    let runtime = verify(RUNTIME)?;
    let environment = ort::init_from(&runtime.load_path)
        .map_err(|err| {
            format!(
                "cannot load ONNX Runtime from {}: {err}",
                runtime.path.display()
            )
        })?
        .with_name("hearth")
        .build()
        .map_err(|err| format!("cannot start ONNX Runtime: {err}"))?;
    let onnx = read(&verify(&shared.model)?)?;
    let files = TokenizerFiles {
        tokenizer_file: read(&verify(TOKENIZER)?)?,
        config_file: read(&verify(CONFIG)?)?,
        special_tokens_map_file: read(&verify(SPECIAL_TOKENS)?)?,
        tokenizer_config_file: read(&verify(TOKENIZER_CONFIG)?)?,
    };
    let model = UserDefinedEmbeddingModel::new(onnx, files).with_pooling(Pooling::Mean);
    let options = InitOptionsUserDefined::new()
        .with_max_length(MAX_TOKENS)
        .with_intra_threads(shared.threads)
        // ONNX Runtime's pool threads spin between and after operators by default: CPU a
        // reply's decode threads need (measured: a third of the embedder's time during a reply
        // was spinning). Blocking costs ingestion a little latency per operator.
        .with_session_config("session.intra_op.allow_spinning", "0")
        .with_session_config("session.inter_op.allow_spinning", "0")
        .with_environment(environment);
    TextEmbedding::try_new_from_user_defined(model, options)
        .map_err(|err| format!("cannot create the embedding session: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_count_and_padded_size() {
        let lens: Vec<usize> = (0..100).map(|i| if i < 70 { 50 } else { 1000 }).collect();
        let order: Vec<usize> = (0..100).collect();
        let cut = batches(&order, |i| lens[i], BATCH_CHARS);
        assert_eq!(cut.iter().map(|b| b.len()).sum::<usize>(), 100);
        assert!(cut.iter().all(|b| b.len() <= MAX_BATCH));
        for b in &cut {
            let longest = b.iter().map(|&i| lens[i]).max().unwrap();
            assert!(b.len() == 1 || b.len() * longest <= BATCH_CHARS, "{b:?}");
        }
        assert_eq!(cut[0].len(), 32);
        assert_eq!(cut.len(), 7, "32 + 32 + (6 short + 2 long) + 8 + 8 + 8 + 4");
        assert!(batches(&[], |_| 1, BATCH_CHARS).is_empty());
        assert_eq!(batches(&[0], |_| 1_000_000, BATCH_CHARS), vec![&[0][..]]);
        // Ingest work: one full window per batch.
        let ingest = batches(&order, |i| lens[i], INGEST_BATCH_CHARS);
        assert_eq!(ingest.iter().map(|b| b.len()).sum::<usize>(), 100);
        assert!(ingest.iter().all(|b| b.len() <= 20), "{ingest:?}");
        assert_eq!(ingest[ingest.len() - 1].len(), 1, "{ingest:?}");
    }
}
