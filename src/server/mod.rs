//! The HTTP/SSE server on a Unix socket: the only module that knows HTTP.
//!
//! Security rests on the socket, not on tokens: the socket lives in a directory only the user can
//! enter (0700), the socket itself is 0600 from the moment it exists (umask around `bind`), and
//! every accepted peer's uid is checked with `SO_PEERCRED`/`getpeereid`, which also covers
//! platforms that ignore socket file permissions. On Windows the local transport is a named pipe
//! with an owner-only DACL (`pipe.rs`); both reach the same HTTP handling through `accept_local`.

pub mod body;
mod chats;
mod compat;
pub mod docs;
pub mod error;
pub mod library;
pub mod memories;
mod metrics;
pub mod models;
mod openai;
pub mod pipe;
mod respond;
pub mod routes;
pub mod sse;
mod status;
pub mod tcp;
mod users;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
#[cfg(unix)]
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::chat::ChatService;
use crate::config::ServerConfig;
use crate::store::Store;

/// Largest request head (request line + headers). Larger gets 431 from hyper.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Connection slots no single peer may take (a quarter of `max_connections` when that is
/// smaller): a client that opens connections and idles in them (an adversarial run held all 16
/// with half-sent bodies) leaves these for the CLI, health checks and the app itself.
const RESERVED_CONNECTIONS: usize = 4;

/// What handlers share.
pub struct App {
    pub store: Store,
    /// The chat models: loaded on demand, unloaded when idle.
    pub pool: crate::pool::Pool,
    /// Model files being added (hashing), for the list.
    pub adding: models::Adding,
    pub chat: ChatService,
    pub ingestor: crate::ingest::Ingestor,
    pub embedder: crate::embed::Embedder,
    pub index: crate::index::Index,
    pub events: crate::events::Events,
    pub library: crate::library::Library,
    pub memories: crate::memory::Memories,
    pub jobs: crate::jobs::Jobs,
    pub config: ServerConfig,
    pub rag: crate::config::RagConfig,
    /// Where model files live (the model list stats and verifies them).
    pub models_dir: std::path::PathBuf,
    pub started: Instant,
    /// Set when the loopback TCP listener is on.
    pub tcp: Option<tcp::TcpPolicy>,
    /// Set when the compat listener is on (with the address it bound).
    pub compat: Option<crate::config::CompatConfig>,
    /// The model the compat listener's app last switched to (its model list shows it as
    /// current; each user's choice is also stored in their settings).
    pub compat_model: std::sync::Mutex<Option<String>>,
    /// The daemon's one shutdown path; `POST /api/v1/shutdown` fires it (`hearth stop`).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Every task a request starts (uploads, event subscribers); shutdown waits for them.
    pub tasks: tokio_util::task::TaskTracker,
    /// Saved conversations' KV state: a deleted chat's go with it; `/metrics` reports them.
    pub snapshots: crate::llm::KvSnapshots,
}

/// Which listener a connection came from; TCP requests get the token/Host/Origin checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The Unix socket (or, on Windows, the named pipe): only the owner can connect.
    Local,
    Tcp,
    /// The compat listener (`compat/`): another backend's API for its unchanged clients.
    Compat,
}

/// The owner-only local listener: a Unix socket, or a named pipe on Windows (`pipe.rs`).
#[cfg(unix)]
pub type LocalListener = UnixListener;
#[cfg(windows)]
pub type LocalListener = pipe::PipeListener;

/// The listening sockets of one daemon.
pub struct Listeners {
    pub local: LocalListener,
    pub tcp: Option<TcpListener>,
    pub compat: Option<TcpListener>,
}

/// The local listener, its path (socket file or pipe name), and whether this daemon owns a socket
/// file to remove at exit: a socket handed over by systemd is used as is (it owns the file),
/// otherwise our own is bound.
#[cfg(unix)]
pub fn bind_local(socket: &Path) -> anyhow::Result<(LocalListener, PathBuf, bool)> {
    Ok(match activated_listener()? {
        Some(listener) => {
            let path = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                .unwrap_or_else(|| socket.to_path_buf());
            (listener, path, false)
        }
        None => (bind(socket)?, socket.to_path_buf(), true),
    })
}

/// The named pipe (see `pipe.rs`): no file to remove, the name goes with the last handle.
#[cfg(windows)]
pub fn bind_local(socket: &Path) -> anyhow::Result<(LocalListener, PathBuf, bool)> {
    let name = socket
        .to_str()
        .context("the pipe name is not valid Unicode")?;
    pipe::check_pipe_name(name).map_err(anyhow::Error::msg)?;
    let listener = pipe::PipeListener::bind(name)
        .with_context(|| format!("{name}: cannot create the pipe"))?;
    Ok((listener, socket.to_path_buf(), false))
}

/// Takes a listening Unix socket handed over by the service manager (systemd socket activation:
/// `LISTEN_PID`/`LISTEN_FDS`), if there is one.
#[cfg(unix)]
fn activated_listener() -> anyhow::Result<Option<UnixListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let Some(listener) = fds
        .take_unix_listener(0)
        .context("LISTEN_FDS: the first passed descriptor is not a Unix stream socket")?
    else {
        return Ok(None);
    };
    listener.set_nonblocking(true)?;
    Ok(Some(UnixListener::from_std(listener)?))
}

/// Binds the Unix socket safely (see the module doc). A leftover socket file is replaced only when
/// nothing answers on it; a live one is an error.
#[cfg(unix)]
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let dir = path
        .parent()
        .context("socket path has no parent directory")?;
    crate::sys::ensure_private_dir(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                anyhow::bail!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                );
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "another daemon is answering on {}; stop it or pick another --socket",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("{}: cannot remove stale socket", path.display()))?;
            tracing::info!(socket = %path.display(), "replaced a stale socket");
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| path.display().to_string()),
    }
    // The socket is created with mode 0777 & !umask: with umask 0177 it is 0600 from birth, so
    // there is no window in which another user could connect.
    use nix::sys::stat::{umask, Mode};
    use std::os::unix::fs::PermissionsExt;
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound.with_context(|| format!("{}: cannot bind", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves connections until `shutdown` fires, then waits up to the grace period for open
/// connections (and the streams in them) to finish.
pub async fn serve(mut listeners: Listeners, app: Arc<App>, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Slots::new(app.config.max_connections));
    let grace = app.config.shutdown_grace;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = accept_local(&mut listeners.local) => {
                let (stream, peer) = match accepted {
                    Ok(Some(accepted)) => accepted,
                    Ok(None) => continue,
                    Err(err) => {
                        backoff(&err).await;
                        continue;
                    }
                };
                let Some(permit) = permit(&permits, peer) else { continue };
                spawn_connection(stream, Transport::Local, permit, &app, &graceful);
            }
            accepted = accept_tcp(listeners.tcp.as_ref()) => {
                let stream = match accepted {
                    Ok((stream, peer)) if peer.ip().is_loopback() => stream,
                    Ok((_, peer)) => {
                        tracing::warn!(%peer, "refused a non-loopback TCP peer");
                        continue;
                    }
                    Err(err) => {
                        backoff(&err).await;
                        continue;
                    }
                };
                let Some(permit) = permit(&permits, Peer::Tcp) else { continue };
                spawn_connection(stream, Transport::Tcp, permit, &app, &graceful);
            }
            accepted = accept_tcp(listeners.compat.as_ref()) => {
                let stream = match accepted {
                    Ok((stream, peer)) if compat::peer_allowed(&stream, peer) => stream,
                    Ok(_) => continue,
                    Err(err) => {
                        backoff(&err).await;
                        continue;
                    }
                };
                let Some(permit) = permit(&permits, Peer::Compat) else { continue };
                spawn_connection(stream, Transport::Compat, permit, &app, &graceful);
            }
        }
    }
    drop(listeners);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_secs = grace.as_secs(), "connections still open after the grace period; closing them");
        }
    }
}

/// Accepts the next local client, with the process it comes from; `None` for one refused
/// (another user). Cancel safe.
#[cfg(unix)]
async fn accept_local(
    listener: &mut UnixListener,
) -> std::io::Result<Option<(tokio::net::UnixStream, Peer)>> {
    let (stream, _) = listener.accept().await?;
    let me = nix::unistd::geteuid().as_raw();
    // Defence in depth behind the 0700 directory and the 0600 socket (see the module doc).
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == me => {
            let peer = cred.pid().map_or(Peer::Local, Peer::Process);
            Ok(Some((stream, peer)))
        }
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a connection from another user");
            Ok(None)
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read peer credentials; refusing connection");
            Ok(None)
        }
    }
}

/// Accepts the next pipe client. The owner-only DACL and `PIPE_REJECT_REMOTE_CLIENTS` already
/// kept everybody else from opening the pipe (see `pipe.rs`). Cancel safe.
#[cfg(windows)]
async fn accept_local(
    listener: &mut pipe::PipeListener,
) -> std::io::Result<Option<(tokio::net::windows::named_pipe::NamedPipeServer, Peer)>> {
    let pipe = listener.accept().await?;
    let peer = pipe::client_process_id(&pipe)
        .and_then(|pid| i32::try_from(pid).ok())
        .map_or(Peer::Local, Peer::Process);
    Ok(Some((pipe, peer)))
}

async fn accept_tcp(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// EMFILE and friends: back off instead of spinning.
async fn backoff(err: &std::io::Error) {
    tracing::warn!(error = %err, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn permit(slots: &Arc<Slots>, peer: Peer) -> Option<Slot> {
    let slot = Slots::acquire(slots, peer);
    if slot.is_none() {
        tracing::warn!(
            limit = slots.max,
            per_peer = slots.per_peer,
            ?peer,
            "connection limit reached; refusing connection"
        );
    }
    slot
}

/// Who holds a connection, for the per-peer share of the slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Peer {
    /// A local-socket client process.
    Process(i32),
    /// A local client whose process is unknown (all such count as one).
    Local,
    /// The token-guarded TCP listener's clients (loopback; one peer).
    Tcp,
    /// The compatibility listener's clients (one app; one peer).
    Compat,
}

/// Connection slots: at most `max` connections, and at most `per_peer` of them held by one
/// [`Peer`] (`max` less [`RESERVED_CONNECTIONS`]).
struct Slots {
    max: usize,
    per_peer: usize,
    held: Mutex<SlotsHeld>,
}

#[derive(Default)]
struct SlotsHeld {
    total: usize,
    by_peer: HashMap<Peer, usize>,
}

impl Slots {
    fn new(max: usize) -> Slots {
        let reserved = RESERVED_CONNECTIONS.min(max / 4);
        Slots {
            max,
            per_peer: max - reserved,
            held: Mutex::new(SlotsHeld::default()),
        }
    }

    fn acquire(slots: &Arc<Slots>, peer: Peer) -> Option<Slot> {
        let mut held = slots.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = held.by_peer.get(&peer).copied().unwrap_or(0);
        if held.total >= slots.max || mine >= slots.per_peer {
            return None;
        }
        held.total += 1;
        held.by_peer.insert(peer, mine + 1);
        Some(Slot {
            slots: slots.clone(),
            peer,
        })
    }
}

/// One held connection slot, given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    peer: Peer,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.by_peer.remove(&self.peer);
            }
        }
    }
}

fn spawn_connection<I>(
    io: I,
    transport: Transport,
    permit: Slot,
    app: &Arc<App>,
    graceful: &GracefulShutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = app.clone();
    let header_timeout = app.config.header_timeout;
    let service = service_fn(move |req| routes::handle(app.clone(), transport, req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES * 4)
        .serve_connection(TokioIo::new(io), service);
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            // Clients hanging up mid-response are normal.
            tracing::debug!(error = %err, "connection ended with an error");
        }
        drop(permit);
    });
}
