//! The loaded chat models: which model serves a request, loading it on demand (one load per
//! file, however many requests wait for it), unloading idle models after their TTL, and keeping
//! at most `max_loaded_models` in memory by unloading the least recently used idle one.
//!
//! Each loaded model is an [`Llm`]: its own inference thread, context and queue. A request holds
//! a [`Lease`] on its model from the moment it asks for it until its generation has finished; a
//! leased model is never unloaded by the TTL or by eviction, so no generation loses its model
//! mid-reply. Policy lives here; `llm` only loads, generates and frees.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{LlmConfig, PoolConfig};
use crate::llm::{Llm, ModelState, Refusal};
use crate::models::{self, Entry, ModelError};
use crate::store::{now_millis, Millis, Store};

/// How often a request waiting for a load, or for a model to become idle so another can take its
/// place, looks again. Loads take seconds; 20 ms costs nothing and adds no visible latency.
const WAIT_POLL: Duration = Duration::from_millis(20);
/// Longest a request waits for room when every loaded model is busy generating (then 503): a
/// long reply on another model takes minutes at most on a CPU.
const ROOM_WAIT: Duration = Duration::from_secs(300);
/// Longest a request waits for a load (hashing a multi-GB file on a slow disk included).
const LOAD_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Unknown(ModelError),
    /// The file's bytes are not the pinned ones: the load was refused before parsing.
    #[error("{0}")]
    Changed(String),
    /// The model's file is not there.
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    LoadFailed(String),
    #[error("every loaded model is busy and at most {0} may be loaded (max_loaded_models); try again shortly")]
    Busy(usize),
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// Handle on the pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    config: PoolConfig,
    llm: LlmConfig,
    default: String,
    models_dir: PathBuf,
    store: Store,
    slots: Mutex<HashMap<String, Slot>>,
    /// Loads started since the daemon started (health; tests prove single-flight with it).
    loads: AtomicU64,
    unloads: AtomicU64,
    /// Models unloaded whose worker has not ended yet (name, loaded_at), for health.
    unloading: Mutex<Vec<(Llm, Millis)>>,
    /// Wakes the reaper when an expiry may have moved (a lease ended, a model was loaded).
    expiry_changed: tokio::sync::Notify,
    shutdown: CancellationToken,
    /// Where every model's workers save and restore conversations' KV state.
    snapshots: crate::llm::KvSnapshots,
}

struct Slot {
    llm: Llm,
    /// Requests holding this model (waiting for it, or generating on it).
    leases: usize,
    last_used: Instant,
    /// When it is unloaded if still idle; `None` while leased or when TTLs are off.
    expires: Option<Instant>,
    /// The idle time the last release asked for (`keep_alive`), else the configured TTL.
    keep_alive: Option<Duration>,
    loaded_at: Millis,
}

/// A model in use. Derefs to its [`Llm`]; dropping it marks the model idle (its TTL starts).
pub struct Lease {
    llm: Llm,
    pool: Arc<Inner>,
}

impl std::ops::Deref for Lease {
    type Target = Llm;
    fn deref(&self) -> &Llm {
        &self.llm
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut slots = self.pool.lock();
        if let Some(slot) = slots.get_mut(self.llm.name()) {
            if slot.llm.same(&self.llm) {
                slot.leases = slot.leases.saturating_sub(1);
                slot.last_used = Instant::now();
                if slot.leases == 0 {
                    slot.expires = slot.keep_alive.map(|ttl| Instant::now() + ttl);
                    self.pool.expiry_changed.notify_one();
                }
            }
        }
    }
}

/// A loaded (or loading) model as health and `hearth ps` show it.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    pub name: String,
    pub state: ModelState,
    pub loaded_at: Millis,
    /// Milliseconds since the epoch when it will be unloaded if it stays idle.
    pub expires_at: Option<Millis>,
    pub active: usize,
    pub memory_bytes: u64,
    pub n_ctx: u32,
    pub threads: crate::llm::Threads,
    pub queued: usize,
    pub queue_capacity: usize,
    /// Unloaded, but its worker is still finishing a generation or freeing the model: its
    /// memory (and its file's mapping) is not yet released.
    pub unloading: bool,
}

impl Pool {
    /// A pool whose default model is `default`; nothing is loaded until [`Pool::preload`] or a
    /// request.
    pub fn new(
        config: PoolConfig,
        llm: LlmConfig,
        default: String,
        models_dir: PathBuf,
        store: Store,
        shutdown: CancellationToken,
        snapshots: crate::llm::KvSnapshots,
    ) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                config,
                llm,
                default,
                models_dir,
                store,
                slots: Mutex::new(HashMap::new()),
                loads: AtomicU64::new(0),
                unloads: AtomicU64::new(0),
                unloading: Mutex::new(Vec::new()),
                expiry_changed: tokio::sync::Notify::new(),
                shutdown,
                snapshots,
            }),
        }
    }

    pub fn default_model(&self) -> &str {
        &self.inner.default
    }

    /// The model background jobs use for work that came from a chat on `chat_model`.
    pub fn background_model<'a>(&'a self, chat_model: Option<&'a str>) -> &'a str {
        self.inner
            .config
            .background_model
            .as_deref()
            .or(chat_model)
            .unwrap_or(&self.inner.default)
    }

    /// Starts loading `entry` at daemon start (the default model), without waiting.
    pub fn preload(&self, entry: Entry) {
        let mut slots = self.inner.lock();
        if !slots.contains_key(&entry.name) {
            let slot = self.inner.start(entry);
            slots.insert(slot.llm.name().to_string(), slot);
        }
    }

    /// Loads `name` if needed (waiting for a running load of it rather than starting another),
    /// and holds it until the lease is dropped. `keep_alive` sets how long it stays loaded once
    /// idle (default: the configured TTL).
    pub async fn get(&self, name: &str, keep_alive: Option<Duration>) -> Result<Lease, PoolError> {
        let lease = self.claim(name, keep_alive).await?;
        let deadline = Instant::now() + LOAD_WAIT;
        loop {
            match lease.llm.state() {
                ModelState::Ready => return Ok(lease),
                ModelState::Failed(err) => {
                    return Err(match lease.llm.refusal() {
                        Some(Refusal::Changed) => PoolError::Changed(err),
                        Some(Refusal::Missing) => PoolError::Missing(err),
                        None => PoolError::LoadFailed(err),
                    });
                }
                ModelState::Unloaded => {
                    return Err(PoolError::LoadFailed(format!(
                        "model '{name}' was unloaded"
                    )))
                }
                ModelState::Loading { .. } if Instant::now() > deadline => {
                    return Err(PoolError::LoadFailed(format!(
                        "model '{name}' did not finish loading within {} s",
                        LOAD_WAIT.as_secs()
                    )))
                }
                ModelState::Loading { .. } => {
                    tokio::select! {
                        () = tokio::time::sleep(WAIT_POLL) => {}
                        () = self.inner.shutdown.cancelled() => return Err(PoolError::ShuttingDown),
                    }
                }
            }
        }
    }

    /// Takes a lease on `name`'s slot, starting its load when it has none and making room for
    /// it first.
    async fn claim(&self, name: &str, keep_alive: Option<Duration>) -> Result<Lease, PoolError> {
        let mut entry = None;
        let deadline = Instant::now() + ROOM_WAIT;
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Err(PoolError::ShuttingDown);
            }
            {
                let mut slots = self.inner.lock();
                // A failed load is tried again by the next request (the file may have been
                // fixed or re-added); until then health shows the failure.
                if slots.get(name).is_some_and(|s| {
                    s.leases == 0 && matches!(s.llm.state(), ModelState::Failed(_))
                }) {
                    slots.remove(name);
                }
                if let Some(slot) = slots.get_mut(name) {
                    slot.leases += 1;
                    slot.expires = None;
                    slot.last_used = Instant::now();
                    slot.keep_alive = keep_alive.or(self.inner.config.ttl);
                    return Ok(Lease {
                        llm: slot.llm.clone(),
                        pool: self.inner.clone(),
                    });
                }
                if let Some(resolved) = entry.take() {
                    if slots.len() < self.inner.config.max_loaded
                        || self.inner.evict_one(&mut slots)
                    {
                        let mut slot = self.inner.start(resolved);
                        slot.leases = 1;
                        slot.keep_alive = keep_alive.or(self.inner.config.ttl);
                        let llm = slot.llm.clone();
                        slots.insert(name.to_string(), slot);
                        return Ok(Lease {
                            llm,
                            pool: self.inner.clone(),
                        });
                    }
                    if Instant::now() > deadline {
                        return Err(PoolError::Busy(self.inner.config.max_loaded));
                    }
                    entry = Some(resolved);
                }
            }
            if entry.is_none() {
                // Resolving reads the store (pins): a blocking call, but a short one.
                entry = Some(self.resolve(name)?);
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(WAIT_POLL * 5) => {}
                () = self.inner.shutdown.cancelled() => return Err(PoolError::ShuttingDown),
            }
        }
    }

    /// The entry (manifest or pinned) called `name`.
    pub fn resolve(&self, name: &str) -> Result<Entry, PoolError> {
        models::resolve(&self.inner.store, name).map_err(PoolError::Unknown)
    }

    /// Loads `name` and waits until it is ready (`POST /models/{name}/load`); it then stays
    /// loaded for its TTL like any model used by a request.
    pub async fn load(&self, name: &str, keep_alive: Option<Duration>) -> Result<(), PoolError> {
        self.get(name, keep_alive).await.map(drop)
    }

    /// Unloads `name` now: the worker finishes its running generation (queued ones end as
    /// cancelled) and frees the model. False when it was not loaded.
    pub fn unload(&self, name: &str) -> bool {
        let removed = self.inner.lock().remove(name);
        match removed {
            Some(slot) => {
                self.inner.unloaded(&slot, "requested");
                true
            }
            None => false,
        }
    }

    /// Unloads every idle model whose TTL has passed; returns when the next one expires.
    fn reap_once(&self) -> Option<Instant> {
        let now = Instant::now();
        let expired: Vec<Slot> = {
            let mut slots = self.inner.lock();
            let names: Vec<String> = slots
                .iter()
                .filter(|(_, s)| s.leases == 0 && s.expires.is_some_and(|at| at <= now))
                .map(|(name, _)| name.clone())
                .collect();
            names.iter().filter_map(|n| slots.remove(n)).collect()
        };
        for slot in expired {
            self.inner.unloaded(&slot, "idle TTL");
        }
        self.inner
            .lock()
            .values()
            .filter(|s| s.leases == 0)
            .filter_map(|s| s.expires)
            .min()
    }

    /// The reaper task: unloads idle models past their TTL until shutdown. It sleeps until the
    /// next expiry or until one changes (an idle daemon does not poll).
    pub async fn reap(self) {
        loop {
            let next = self.reap_once();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = self.inner.expiry_changed.notified() => {}
                () = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    /// The loaded and loading models, by name.
    pub fn loaded(&self) -> Vec<LoadedModel> {
        let now = Instant::now();
        let now_ms = now_millis();
        let mut out: Vec<LoadedModel> = self
            .inner
            .lock()
            .iter()
            .map(|(name, slot)| LoadedModel {
                name: name.clone(),
                state: slot.llm.state(),
                loaded_at: slot.loaded_at,
                expires_at: slot.expires.map(|at| {
                    let left = u64::try_from(at.saturating_duration_since(now).as_millis())
                        .unwrap_or(u64::MAX);
                    now_ms.saturating_add(left)
                }),
                active: slot.leases,
                memory_bytes: slot.llm.memory_bytes(),
                threads: slot.llm.threads(),
                n_ctx: slot.llm.n_ctx(),
                queued: slot.llm.queued(),
                queue_capacity: slot.llm.queue_capacity(),
                unloading: false,
            })
            .collect();
        let mut unloading = self
            .inner
            .unloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        unloading.retain(|(llm, _)| {
            !matches!(llm.state(), ModelState::Unloaded | ModelState::Failed(_))
        });
        out.extend(unloading.iter().map(|(llm, loaded_at)| LoadedModel {
            name: llm.name().to_string(),
            state: llm.state(),
            loaded_at: *loaded_at,
            expires_at: None,
            active: 0,
            memory_bytes: llm.memory_bytes(),
            threads: llm.threads(),
            n_ctx: llm.n_ctx(),
            queued: llm.queued(),
            queue_capacity: llm.queue_capacity(),
            unloading: true,
        }));
        out.sort_by(|a, b| (&a.name, a.unloading).cmp(&(&b.name, b.unloading)));
        out
    }

    /// The loaded (or loading, or failed) model called `name`, if any.
    pub fn loaded_model(&self, name: &str) -> Option<LoadedModel> {
        self.loaded()
            .into_iter()
            .find(|m| m.name == name && !m.unloading)
    }

    /// Loads started and models unloaded since the daemon started.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.inner.loads.load(Ordering::Relaxed),
            self.inner.unloads.load(Ordering::Relaxed),
        )
    }

    /// The configured context size (what a model not loaded yet will get; a loaded model reports
    /// its real one).
    pub fn configured_ctx(&self) -> u32 {
        self.inner.llm.n_ctx.get()
    }

    /// Generations one model's queue holds.
    pub fn queue_capacity(&self) -> usize {
        self.inner.llm.queue_depth
    }

    /// Stops every model's worker (daemon shutdown): running generations finish, queued ones
    /// end, cached conversations are saved as KV snapshots. Waits up to `wait` for the workers
    /// (those unloading already too) and then for the snapshots' writes; blocking.
    pub fn shutdown(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        let slots: Vec<Slot> = self.inner.lock().drain().map(|(_, s)| s).collect();
        let mut stopping: Vec<Llm> = slots.into_iter().map(|s| s.llm).collect();
        for llm in &stopping {
            llm.shutdown();
        }
        stopping.extend(
            self.inner
                .unloading
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(llm, _)| llm.clone()),
        );
        for llm in &stopping {
            if !llm.wait_stopped(deadline.saturating_duration_since(Instant::now())) {
                tracing::warn!(model = %llm.name(), "the model's worker is still busy at exit");
            }
        }
        self.inner
            .snapshots
            .flush(deadline.saturating_duration_since(Instant::now()));
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts loading `entry` on a new inference thread (verification first, on that thread).
    fn start(&self, entry: Entry) -> Slot {
        self.loads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(model = %entry.name, user = entry.user, "loading chat model");
        let models_dir = self.models_dir.clone();
        let store = self.store.clone();
        let name = entry.name.clone();
        let llm = Llm::start(
            &name,
            self.llm.clone(),
            self.snapshots.clone(),
            move |progress| models::verify_with_progress(&models_dir, &entry, &store, progress),
        );
        self.expiry_changed.notify_one();
        Slot {
            llm,
            leases: 0,
            last_used: Instant::now(),
            expires: self.config.ttl.map(|ttl| Instant::now() + ttl),
            keep_alive: self.config.ttl,
            loaded_at: now_millis(),
        }
    }

    fn unloaded(&self, slot: &Slot, why: &str) {
        slot.llm.shutdown();
        self.unloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((slot.llm.clone(), slot.loaded_at));
        self.unloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(model = %slot.llm.name(), reason = why, "unloading chat model");
    }

    /// Unloads the least recently used model nobody holds; false when every one is held.
    fn evict_one(&self, slots: &mut HashMap<String, Slot>) -> bool {
        let victim = slots
            .iter()
            .filter(|(_, slot)| slot.leases == 0)
            // A failed load holds nothing but its place: it goes first.
            .min_by_key(|(_, slot)| {
                (
                    !matches!(slot.llm.state(), ModelState::Failed(_)),
                    slot.last_used,
                )
            })
            .map(|(name, _)| name.clone());
        match victim.and_then(|name| slots.remove(&name)) {
            Some(slot) => {
                self.unloaded(&slot, "least recently used, to make room");
                true
            }
            None => false,
        }
    }
}
