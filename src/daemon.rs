//! `hearth serve`: wires config, instance lock, store, model, chat and server together, and runs
//! the one shutdown path.
//!
//! Start order matters: the lock first (a second daemon must fail before touching anything), then
//! the cheap model pre-check (a missing file is a one-line error), the store, the socket, and only
//! then the model load in the background: clients can connect and see `loading` at once.
//!
//! Shutdown (SIGINT/SIGTERM): stop accepting, cancel running turns (they store their partial reply
//! and end with `shutting_down`), wait for connections up to the grace period, stop the inference
//! worker, flush sled, remove the socket and the lock file.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use tokio_util::sync::CancellationToken;

use crate::chat::ChatService;
use crate::config::Config;
use crate::llm::Llm;
use crate::models::{self, Manifest};
use crate::server::{self, App};
use crate::store::Store;

/// Name of the lock file in the data dir.
const LOCK_FILE: &str = "hearth.lock";

/// Runs the daemon until a shutdown signal. `started` is the process start, for the log line that
/// says how long it took to accept connections.
pub async fn run(config: Config, started: Instant) -> anyhow::Result<()> {
    server::ensure_private_dir(&config.data_dir)?;
    let lock = InstanceLock::acquire(&config.data_dir, &config.socket)?;

    let manifest = Manifest::builtin();
    let entry = manifest.chat_model(config.model.as_deref())?.clone();
    models::precheck(&config.models_dir, &entry)?;

    let store = Store::open(&config.data_dir.join("db"), config.cache_bytes)
        .with_context(|| format!("{}: cannot open the store", config.data_dir.display()))?;
    let listener = server::bind(&config.socket)?;
    tracing::info!(
        socket = %config.socket.display(),
        pid = std::process::id(),
        startup_ms = started.elapsed().as_millis(),
        "accepting connections"
    );

    let models_dir = config.models_dir.clone();
    let verify_store = store.clone();
    let name = entry.name.clone();
    let llm = Llm::start(&name, config.llm.clone(), move || {
        models::verify(&models_dir, &entry, &verify_store)
    });
    let shutdown = CancellationToken::new();
    let chat = ChatService::new(store.clone(), llm.clone(), shutdown.clone());
    let app = Arc::new(App {
        store: store.clone(),
        llm: llm.clone(),
        chat,
        config: config.server.clone(),
        started,
    });

    tokio::spawn(signals(shutdown.clone()));
    server::serve(listener, app, shutdown.clone()).await;

    llm.shutdown();
    store.flush_now().context("final store flush failed")?;
    if let Err(err) = std::fs::remove_file(&config.socket) {
        tracing::warn!(error = %err, "cannot remove the socket file");
    }
    lock.release();
    tracing::info!("stopped");
    Ok(())
}

/// Fires `shutdown` on SIGINT or SIGTERM.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

/// An exclusive `flock` on `DATA_DIR/hearth.lock`, holding the owner's pid and socket so a second
/// daemon can say which instance is running.
pub struct InstanceLock {
    path: PathBuf,
    lock: Flock<File>,
}

impl InstanceLock {
    pub fn acquire(data_dir: &Path, socket: &Path) -> anyhow::Result<InstanceLock> {
        let path = data_dir.join(LOCK_FILE);
        // The file may be unlinked by a stopping daemon between our open and our lock; then we
        // hold a lock on a dead inode. Re-check that the path still names what we locked.
        for _ in 0..10 {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("{}: cannot open", path.display()))?;
            let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((mut file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                    let mut owner = String::new();
                    let _ = file.read_to_string(&mut owner);
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
                Err((_, errno)) => bail!("{}: cannot lock: {errno}", path.display()),
            };
            let same = match (std::fs::metadata(&path), lock.metadata()) {
                (Ok(on_disk), Ok(held)) => {
                    on_disk.ino() == held.ino() && on_disk.dev() == held.dev()
                }
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

    /// Removes the lock file, then unlocks (in that order, so nobody can lock the old inode and
    /// believe they own the data dir while a new file appears).
    pub fn release(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.lock);
    }
}
