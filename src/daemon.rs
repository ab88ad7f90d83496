//! `hearth serve`: wires config, instance lock, store, model, chat and server together, and runs
//! the one shutdown path.
//!
//! Start order matters: the lock first (a second daemon must fail before touching anything), then
//! the cheap model pre-check (a missing file is a one-line error), the store, the socket, and only
//! then the model load in the background: clients can connect and see `loading` at once.
//!
//! Shutdown (SIGINT/SIGTERM; for a sidecar also stdin EOF and parent death): stop accepting, cancel running turns (they store their partial reply
//! and end with `shutting_down`), wait for connections up to the grace period, stop the inference
//! worker, flush sled, remove the socket and the lock file.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::retrieve::Retriever;
use crate::chat::ChatService;
use crate::config::Config;
use crate::embed::Embedder;
use crate::error_code::ErrorCode;
use crate::index::{Index, IndexOptions};
use crate::ingest::{IngestLimits, Ingestor};
use crate::models::{self, Manifest};
use crate::pool::Pool;
use crate::server::tcp::TcpPolicy;
use crate::server::{self, App};
use crate::store::Store;

/// How long a start waits for a just-stopped daemon's process to release the store's files.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the model workers to end their generations and save their
/// conversations' KV state, and for those files to be written (a few 100 MB on a slow disk).
const MODEL_STOP_WAIT: Duration = Duration::from_secs(30);
/// Name of the lock file in the data dir.
const LOCK_FILE: &str = "hearth.lock";
/// How often a sidecar checks that its parent is alive. With the check itself this keeps the
/// exit within ~0.5 s of the parent's death.
const PARENT_POLL: Duration = Duration::from_millis(250);

/// How the process is run, beyond the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lifecycle {
    /// Spawned by an app: print the ready line, exit when stdin closes or the parent dies.
    pub sidecar: bool,
    /// Exit when this process dies (defaults to the parent in sidecar mode).
    pub parent_pid: Option<u32>,
}

/// A start-up failure with a stable code (the sidecar error line carries it).
#[derive(Debug)]
pub struct StartError {
    pub code: ErrorCode,
    pub error: anyhow::Error,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

trait Code<T> {
    fn code(self, code: ErrorCode) -> Result<T, StartError>;
}

impl<T, E: Into<anyhow::Error>> Code<T> for Result<T, E> {
    fn code(self, code: ErrorCode) -> Result<T, StartError> {
        self.map_err(|err| StartError {
            code,
            error: err.into(),
        })
    }
}

/// Runs the daemon until a shutdown signal (or, for a sidecar, stdin EOF or parent death).
/// `started` is the process start, for the log line that says how long accepting took.
pub async fn run(config: Config, life: Lifecycle, started: Instant) -> Result<(), StartError> {
    crate::sys::ensure_private_dir(&config.data_dir).code(ErrorCode::DataDir)?;
    let lock =
        InstanceLock::acquire(&config.data_dir, &config.socket).code(ErrorCode::AlreadyRunning)?;
    // A manifest model is checked before the store opens (a missing file is a one-line error
    // at once); a name the manifest does not know may be one the user added (pinned in the store).
    let shipped = Manifest::builtin()
        .chat_model(config.model.as_deref())
        .ok()
        .cloned();
    if let Some(entry) = &shipped {
        models::precheck(&config.models_dir, entry).code(ErrorCode::ModelMissing)?;
    }
    // Before any background thread exists (the embedder and index builds start later).
    crate::priority::set_background_nice(config.background_nice);
    let store = Store::open_waiting(
        &config.data_dir.join("db"),
        config.cache_bytes,
        STORE_LOCK_WAIT,
    )
    .with_context(|| format!("{}: cannot open the store", config.data_dir.display()))
    .code(ErrorCode::StoreUnavailable)?;
    let entry = match shipped {
        Some(entry) => entry,
        None => {
            let name = config.model.as_deref().unwrap_or_default();
            let entry = models::resolve(&store, name).code(ErrorCode::UnknownModel)?;
            models::precheck(&config.models_dir, &entry).code(ErrorCode::ModelMissing)?;
            entry
        }
    };
    if let Some(name) = &config.pool.background_model {
        models::resolve(&store, name)
            .context("background_model")
            .code(ErrorCode::UnknownModel)?;
    }
    // Nothing loads yet (the embedder loads on first use); an unknown name fails here.
    let embedder = Embedder::new(
        &config.models_dir,
        &config.rag.embed_model,
        config.rag.embed_threads,
        store.clone(),
    )
    .context("embed_model")
    .code(ErrorCode::UnknownModel)?;
    // Conversations' KV state saved by an earlier run: indexed (damaged files deleted) now.
    let snapshots =
        crate::llm::KvSnapshots::open(&config.data_dir.join("kv"), config.llm.kv_cache_bytes)
            .with_context(|| {
                format!(
                    "{}: cannot open the KV snapshot directory",
                    config.data_dir.display()
                )
            })
            .code(ErrorCode::DataDir)?;
    let roots = crate::library::Library::open_roots(&config.library)
        .map_err(anyhow::Error::msg)
        .code(ErrorCode::WatchFailed)?;
    let bound = bind(&config).await?;
    tracing::info!(
        socket = %bound.socket_path.display(),
        tcp = ?bound.tcp_policy.as_ref().map(|p| p.addr),
        compat = ?bound.compat.as_ref().map(|c| c.addr),
        pid = std::process::id(),
        startup_ms = started.elapsed().as_millis(),
        "accepting connections"
    );
    if life.sidecar {
        ready_line(&bound).code(ErrorCode::StdoutClosed)?;
    }
    // systemd Type=notify; a no-op when NOTIFY_SOCKET is unset.
    #[cfg(unix)]
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let shutdown = CancellationToken::new();
    // Every task the daemon starts, so shutdown can wait for them before the last flush.
    let tasks = TaskTracker::new();
    let app = build_app(
        &config,
        entry,
        Wiring {
            store: store.clone(),
            embedder,
            snapshots,
            roots,
            tcp: bound.tcp_policy,
            compat: bound.compat,
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            started,
        },
    )?;
    let pool = app.pool.clone();
    watch_for_shutdown(life, &shutdown);
    server::serve(bound.listeners, app, shutdown.clone()).await;

    #[cfg(unix)]
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    drain(&tasks, config.server.shutdown_grace).await;
    // The workers save the conversations they hold (KV snapshots) before the process ends.
    let stopping = pool.clone();
    if let Err(err) = tokio::task::spawn_blocking(move || stopping.shutdown(MODEL_STOP_WAIT)).await
    {
        tracing::warn!(error = %err, "stopping the models failed");
    }
    store
        .flush_now()
        .context("final store flush failed")
        .code(ErrorCode::ShutdownFailed)?;
    if bound.owns_socket {
        if let Err(err) = std::fs::remove_file(&bound.socket_path) {
            tracing::warn!(error = %err, "cannot remove the socket file");
        }
    }
    lock.release();
    tracing::info!(uptime_ms = started.elapsed().as_millis(), "stopped");
    Ok(())
}

/// The listeners, bound before any model work starts so clients can connect at once.
struct Bound {
    listeners: server::Listeners,
    socket_path: PathBuf,
    /// False for a socket systemd handed over (it owns the file).
    owns_socket: bool,
    tcp_policy: Option<TcpPolicy>,
    /// The compat listener's settings, with the address it really bound.
    compat: Option<crate::config::CompatConfig>,
}

async fn bind(config: &Config) -> Result<Bound, StartError> {
    let (local, socket_path, owns_socket) =
        server::bind_local(&config.socket).code(ErrorCode::BindFailed)?;
    let (tcp, tcp_policy) = match config.tcp {
        None => (None, None),
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("tcp: cannot bind {addr}"))
                .code(ErrorCode::BindFailed)?;
            let bound = listener.local_addr().code(ErrorCode::BindFailed)?;
            let policy = TcpPolicy::load(bound, &config.data_dir, config.allowed_origins.clone())
                .code(ErrorCode::TcpToken)?;
            (Some(listener), Some(policy))
        }
    };
    let (compat, compat_config) = match &config.compat {
        None => (None, None),
        Some(compat) => {
            let listener = tokio::net::TcpListener::bind(compat.addr)
                .await
                .with_context(|| format!("compat_listen: cannot bind {}", compat.addr))
                .code(ErrorCode::BindFailed)?;
            let addr = listener.local_addr().code(ErrorCode::BindFailed)?;
            (
                Some(listener),
                Some(crate::config::CompatConfig {
                    addr,
                    ..compat.clone()
                }),
            )
        }
    };
    Ok(Bound {
        listeners: server::Listeners { local, tcp, compat },
        socket_path,
        owns_socket,
        tcp_policy,
        compat: compat_config,
    })
}

/// What `build_app` wires the services to.
struct Wiring {
    store: Store,
    /// Checked before binding (an unknown `embed_model` is a start error); loads on first use.
    embedder: Embedder,
    snapshots: crate::llm::KvSnapshots,
    roots: Vec<crate::library::access::Root>,
    tcp: Option<TcpPolicy>,
    compat: Option<crate::config::CompatConfig>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    started: Instant,
}

/// Starts the services (model load, embedder, index, ingestion, memory, background jobs, chat,
/// the drop folder) and puts them together as the server's [`App`].
fn build_app(
    config: &Config,
    entry: crate::models::Entry,
    wiring: Wiring,
) -> Result<Arc<App>, StartError> {
    let Wiring {
        store,
        embedder,
        snapshots,
        roots,
        tcp,
        compat,
        shutdown,
        tasks,
        started,
    } = wiring;
    let pool = Pool::new(
        config.pool.clone(),
        config.llm.clone(),
        entry.name.clone(),
        config.models_dir.clone(),
        store.clone(),
        shutdown.clone(),
        snapshots.clone(),
    );
    // The default model loads at start, so the first chat does not wait for it.
    pool.preload(entry);
    tasks.spawn(pool.clone().reap());
    let index = Index::new(
        store.clone(),
        embedder.model_id(),
        crate::embed::DIM,
        IndexOptions {
            dir: Some(config.data_dir.join("index")),
            hnsw_min_rows: config.rag.hnsw_min_vectors,
            ef_search: crate::index::EF_SEARCH,
        },
    );
    let ingestor = Ingestor::new(
        store.clone(),
        embedder.clone(),
        index.clone(),
        IngestLimits {
            extract: crate::ingest::extract::Limits {
                max_bytes: config.rag.max_upload_bytes,
                ..crate::ingest::extract::Limits::default()
            },
            extract_timeout: config.rag.extract_timeout,
        },
        crate::ingest::worker::Extractor::Workers(std::sync::Arc::new(
            crate::ingest::worker::WorkerPool::new(crate::ingest::worker::WorkerSettings {
                program: crate::ingest::worker::this_program(),
                memory_mib: config.rag.extract_memory_mib,
                max_workers: config.rag.extract_workers,
            }),
        )),
    );
    // Documents embedded by an older model file are re-embedded in the background.
    let maintenance = ingestor.clone();
    tasks.spawn(async move {
        match maintenance.reembed_stale().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                documents = n,
                "re-embedded documents made with another embedding model"
            ),
            Err(err) => tracing::warn!(error = %err, "re-embedding stale documents failed"),
        }
    });
    let retriever = Retriever {
        store: store.clone(),
        embedder: embedder.clone(),
        index: index.clone(),
        k: config.rag.retrieval_k,
        min_score: config.rag.retrieval_min_score,
    };
    let events = crate::events::Events::new();
    let memories = crate::memory::Memories::new(store.clone(), embedder.clone());
    let jobs = crate::jobs::Jobs::new(
        store.clone(),
        pool.clone(),
        memories.clone(),
        events.clone(),
    );
    let chat = ChatService::new(
        store.clone(),
        pool.clone(),
        retriever,
        memories.clone(),
        jobs.clone(),
        shutdown.clone(),
        tasks.clone(),
    );
    // Pending jobs of an earlier run resume here; at shutdown the running one is cancelled and
    // stays queued for the next start.
    tasks.spawn(jobs.clone().run(shutdown.clone()));
    // Ingestion (uploads and the drop folder) waits while a reply is generated.
    let generating = chat.clone();
    embedder.set_pause(Arc::new(move || generating.active_turns() > 0));
    let library = crate::library::Library::start(
        config.library.clone(),
        roots,
        ingestor.clone(),
        events.clone(),
        shutdown.clone(),
        tasks.clone(),
    )
    .map_err(anyhow::Error::msg)
    .code(ErrorCode::WatchFailed)?;
    Ok(Arc::new(App {
        store,
        pool,
        adding: crate::server::models::Adding::default(),
        chat,
        ingestor,
        embedder,
        index,
        events,
        library,
        memories,
        jobs,
        config: config.server.clone(),
        rag: config.rag.clone(),
        models_dir: config.models_dir.clone(),
        started,
        tcp,
        compat,
        compat_model: std::sync::Mutex::default(),
        shutdown,
        tasks,
        snapshots,
    }))
}

/// What ends the daemon besides `POST /api/v1/shutdown`: SIGINT/SIGTERM, and for a sidecar
/// stdin EOF and its parent's death.
fn watch_for_shutdown(life: Lifecycle, shutdown: &CancellationToken) {
    tokio::spawn(signals(shutdown.clone()));
    if life.sidecar {
        watch_stdin(shutdown.clone());
    }
    let parent = life
        .parent_pid
        .or_else(|| life.sidecar.then(crate::sys::parent_pid).flatten());
    if let Some(parent) = parent {
        watch_parent(parent, shutdown.clone());
    }
}

/// Waits (at most `grace`) for every task: turns store their partial replies, the scheduler
/// records its cancelled job, uploads and library batches finish their transaction. The worker
/// stops and the store is flushed only after this.
async fn drain(tasks: &TaskTracker, grace: Duration) {
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            running = tasks.len(),
            "tasks still running after the grace period"
        );
    }
}

/// The one line on stdout that tells a parent app the daemon is reachable.
fn ready_line(bound: &Bound) -> std::io::Result<()> {
    let mut line = serde_json::json!({
        "event": "ready",
        "socket": bound.socket_path,
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "api": crate::server::routes::API_PREFIX,
    });
    if let Some(policy) = &bound.tcp_policy {
        line["tcp"] = serde_json::json!(policy.addr.to_string());
        line["token_file"] = serde_json::json!(policy.token_file);
    }
    if let Some(compat) = &bound.compat {
        line["compat"] = serde_json::json!(compat.addr.to_string());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// A sidecar exits when its stdin reaches EOF: the app closed it, or the app is gone. A plain
/// thread, not a tokio task: a blocking read must not hold up the runtime's shutdown.
fn watch_stdin(shutdown: CancellationToken) {
    let spawned = std::thread::Builder::new()
        .name("hearth-stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 512];
            let mut stdin = std::io::stdin().lock();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            tracing::info!("stdin closed: shutting down");
            shutdown.cancel();
        });
    if let Err(err) = spawned {
        tracing::error!(error = %err, "cannot watch stdin");
    }
}

/// Exits when `parent` dies. Polls a held reference to it (`sys::Watched`: on Linux plus
/// `PR_SET_PDEATHSIG` as the backstop when `parent` is our real parent; on Windows a process
/// handle, which pid reuse cannot fool). A parent that cannot be watched at all is gone already.
fn watch_parent(parent: u32, shutdown: CancellationToken) {
    let watched = crate::sys::Watched::new(parent);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PARENT_POLL);
        loop {
            tick.tick().await;
            if watched.as_ref().is_none_or(crate::sys::Watched::gone) {
                tracing::info!(parent, "parent process exited: shutting down");
                shutdown.cancel();
                return;
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    });
}

/// Fires `shutdown` when the system asks (SIGINT/SIGTERM; on Windows Ctrl-C, Ctrl-Break, the
/// console closing, log-off, shutdown).
async fn signals(shutdown: CancellationToken) {
    match crate::sys::shutdown_requested().await {
        Ok(what) => tracing::info!("{what}: shutting down"),
        Err(err) => {
            tracing::error!(error = %err, "cannot install signal handlers");
            return;
        }
    }
    shutdown.cancel();
}

/// The pid of the daemon holding `data_dir`'s instance lock, if one does (`hearth stop` when the
/// socket does not answer). Probes with a shared non-blocking lock, released at once: a daemon
/// starting in that instant would see the lock taken, which is why this is only a fallback.
pub fn running_instance(data_dir: &Path) -> Option<u32> {
    let mut file = File::open(data_dir.join(LOCK_FILE)).ok()?;
    let mut owner = String::new();
    file.read_to_string(&mut owner).ok()?;
    match crate::sys::try_lock(&file, false) {
        // Nobody holds it: a stale file of a killed daemon (the probe's lock ends with `file`).
        Ok(true) => None,
        Ok(false) => owner
            .split_whitespace()
            .find_map(|field| field.strip_prefix("pid="))
            .and_then(|pid| pid.parse().ok()),
        Err(_) => None,
    }
}

/// An exclusive lock on `DATA_DIR/hearth.lock` (`flock`; on Windows `LockFileEx` on a byte far
/// past the content), holding the owner's pid and socket so a second daemon can say which
/// instance is running.
pub struct InstanceLock {
    path: PathBuf,
    lock: File,
}

impl InstanceLock {
    pub fn acquire(data_dir: &Path, socket: &Path) -> anyhow::Result<InstanceLock> {
        let path = data_dir.join(LOCK_FILE);
        // The file may be unlinked by a stopping daemon between our open and our lock; then we
        // hold a lock on a dead file. Re-check that the path still names what we locked.
        for _ in 0..10 {
            let mut lock = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("{}: cannot open", path.display()))?;
            match crate::sys::try_lock(&lock, true) {
                Ok(true) => {}
                Ok(false) => {
                    let mut owner = String::new();
                    let _ = lock.read_to_string(&mut owner);
                    let owner = owner.split_whitespace().collect::<Vec<_>>().join(", ");
                    bail!(
                        "another hearth is running on data dir {} ({})",
                        data_dir.display(),
                        if owner.is_empty() {
                            "owner unknown".into()
                        } else {
                            owner
                        }
                    );
                }
                Err(err) => bail!("{}: cannot lock: {err}", path.display()),
            }
            let same = match (
                crate::sys::file_id_of_path(&path),
                crate::sys::file_id(&lock),
            ) {
                (Ok(on_disk), Ok(held)) => on_disk == held,
                _ => false,
            };
            if !same {
                continue;
            }
            lock.set_len(0)?;
            write!(
                lock,
                "pid={} socket={}",
                std::process::id(),
                socket.display()
            )?;
            lock.sync_all()?;
            return Ok(InstanceLock { path, lock });
        }
        bail!(
            "{}: lock file keeps changing; is another daemon starting?",
            path.display()
        )
    }

    /// Removes the lock file, then unlocks (in that order, so nobody can lock the old file and
    /// believe they own the data dir while a new file appears). Windows deletes an open file
    /// once its last handle closes, which keeps the same order.
    pub fn release(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.lock);
    }
}

/// The daemon's extraction worker process (`hearth extract-worker`, which the daemon starts for
/// every file it parses): see `ingest::sandbox`.
pub fn extract_worker(memory_mib: u64, probe: bool) -> std::process::ExitCode {
    crate::ingest::sandbox::worker_main(memory_mib, probe)
}
