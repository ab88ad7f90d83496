//! The command line. `hearth serve` runs the daemon (`start` runs it in the background, `stop`
//! ends it); every other command is a client of a running daemon over its socket (`bench` starts
//! its own). Parsing, the exit codes, error lines and logging set-up live here so `main.rs` stays
//! a one-line driver; each group of commands has its own file:
//!
//! - `lifecycle.rs`: `start`, `serve --detach`, `stop`, waiting for a daemon, the no-argument guide;
//! - `chat.rs`: `chat`/`run`, one answer or the interactive REPL;
//! - `chats.rs`, `docs.rs` (with `search`, `embed`), `memories.rs` (with `settings`): what the
//!   daemon holds, shown as a short table or, with `--json`, as the API's JSON;
//! - `status.rs`: `ps`, `models`, `events`;
//! - `ingest.rs`: `ingest` and `library` (the drop folder).
//!
//! Errors are one line on stderr, `hearth: <what went wrong> (<api code>)`, and an exit code from
//! [`Exit`], so scripts can tell "no daemon" from "the daemon said no" from "timed out".

mod chat;
mod chats;
mod docs;
mod ingest;
mod lifecycle;
mod memories;
mod models;
mod status;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::json;

use crate::client::{Client, ClientError};
use crate::config::{self, RawConfig};
use crate::daemon::StartError;
use crate::error_code::ErrorCode;

/// The exit codes, as `--help` documents them.
const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    the daemon refused the request (the message ends with the API's error code), or a local error
  2    bad command line
  3    no daemon is running (or reachable) at the socket
  4    timed out: waiting for the daemon to start, its model to load, or it to stop
  130  interrupted (Ctrl-C)";

/// How `hearth` exits; see [`EXIT_CODES_HELP`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Failed = 1,
    Usage = 2,
    NoDaemon = 3,
    TimedOut = 4,
}

impl Exit {
    /// The exit code for an error: the first typed cause in its chain decides.
    fn of(err: &anyhow::Error) -> Exit {
        for cause in err.chain() {
            if let Some(err) = cause.downcast_ref::<ClientError>() {
                return match err {
                    ClientError::NoDaemon { .. } => Exit::NoDaemon,
                    ClientError::TimedOut(_) => Exit::TimedOut,
                    ClientError::Api { .. } => Exit::Failed,
                };
            }
            if let Some(exit) = cause.downcast_ref::<CliExit>() {
                return exit.exit;
            }
        }
        Exit::Failed
    }
}

/// An error that carries its own exit code (a usage mistake found after parsing, an interrupt).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct CliExit {
    pub(crate) exit: Exit,
    pub(crate) message: String,
}

impl CliExit {
    pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
        CliExit {
            exit: Exit::Usage,
            message: message.into(),
        }
        .into()
    }
}

#[derive(Parser)]
#[command(
    name = "hearth",
    version,
    about = "An offline local AI daemon: chat with a local model, search your documents, remember facts",
    after_help = EXIT_CODES_HELP,
)]
struct Cli {
    /// Config file [default: $HEARTH_CONFIG, else hearth.toml in the platform config dir].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (`--detach`: in the background, as `hearth start`).
    Serve(Box<ServeArgs>),
    /// Start the daemon in the background and wait until it accepts connections.
    Start(Box<ServeArgs>),
    /// Stop a running daemon gracefully and wait for it to exit.
    Stop(lifecycle::StopArgs),
    /// Chat with the model: an interactive session, or one answer to a message given as arguments
    /// or on stdin (`echo question | hearth chat`).
    Chat(chat::ChatArgs),
    /// Open an interactive chat (as `ollama run`), with MODEL if given (loaded now if it is not).
    Run(chat::RunArgs),
    /// Show a running daemon's health (all of it, as JSON).
    Status(ClientArgs),
    /// Show what the running daemon has loaded and what it is doing.
    Ps(status::PsArgs),
    /// List models; add your own GGUF files, remove, load or unload them.
    Models(models::ModelsArgs),
    /// List, show, rename or delete chats.
    Chats(chats::ChatsArgs),
    /// List, upload or delete documents (of a chat, or the library every chat can search).
    Docs(docs::DocsArgs),
    /// Search documents: the library or one chat's documents, best excerpts first.
    Search(docs::SearchArgs),
    /// Embed texts with the daemon's embedding model.
    Embed(docs::EmbedArgs),
    /// List, search, add, edit or forget long-term memories, and their history.
    Memories(memories::MemoriesArgs),
    /// Show or change a user's generation settings (`hearth settings temperature=0.2`).
    Settings(memories::SettingsArgs),
    /// Print background events (titles, memory extraction, drop-folder files) as they happen.
    Events(status::EventsArgs),
    /// Print the daemon's metrics (requests, tokens, latencies, queues) in the Prometheus text
    /// format, as `GET /metrics` serves them.
    Metrics(status::MetricsArgs),
    /// Add files or folders to a running daemon's library (searchable from every chat), once.
    Ingest(ingest::IngestArgs),
    /// Show the drop folder: watched folders, file state counts and failures.
    Library(ingest::LibraryArgs),
    /// Measure the daemon (socket + SSE) against an in-process decode loop, start-up and memory.
    #[cfg(feature = "bench")]
    Bench(crate::bench::BenchArgs),
    /// Benchmarks (this build has none: build with `cargo build --release --features bench`).
    #[cfg(not(feature = "bench"))]
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
    /// Print a shell completion script (`hearth completions bash > /etc/bash_completion.d/hearth`).
    Completions(CompletionsArgs),
    /// Print the man page (`hearth man > hearth.1`), or write one per command with `--dir`.
    Man(ManArgs),
    /// The daemon's sandboxed file parser (started by the daemon, fed over stdin).
    #[command(hide = true)]
    ExtractWorker(ExtractWorkerArgs),
}

#[derive(clap::Args)]
pub(crate) struct ExtractWorkerArgs {
    /// Address space limit in MiB.
    #[arg(long, default_value_t = 1024)]
    memory_mib: u64,
    /// Confine, try what must be refused, print the results as JSON and exit.
    #[arg(long)]
    probe: bool,
}

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    config: RawConfig,
    /// Run as an app's sidecar: print one JSON ready (or error) line on stdout, exit when stdin
    /// closes or the parent process dies.
    #[arg(long, conflicts_with = "detach")]
    sidecar: bool,
    /// Exit when this process exits [default in sidecar mode: the parent process].
    #[arg(long, value_name = "PID")]
    parent_pid: Option<u32>,
    /// Start in the background (its own session, logs in DATA_DIR/logs) and return once the
    /// socket accepts connections; `hearth stop` ends it.
    #[arg(long)]
    detach: bool,
    /// Seconds `--detach`/`start` waits for the socket.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    start_timeout: u64,
    /// Set by `--detach` on the process it starts: leave the terminal's session, log only to files.
    #[arg(long, hide = true)]
    detached_child: bool,
}

/// Where to find a running daemon.
#[derive(clap::Args, Clone)]
pub(crate) struct ClientArgs {
    /// Socket of the daemon [default: as `hearth serve` would choose].
    #[arg(long, global = true, env = "HEARTH_SOCKET", value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// Data dir of the daemon (used to find its default socket).
    #[arg(long, global = true, env = "HEARTH_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

/// Whose chats, memories and settings a command works on.
#[derive(clap::Args, Clone)]
pub(crate) struct UserArgs {
    /// User name (created on first use) [default: $USER].
    #[arg(long, global = true, value_name = "NAME")]
    user: Option<String>,
}

impl UserArgs {
    pub(crate) fn name(&self) -> String {
        self.user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "local".into())
    }
}

#[derive(clap::Args)]
struct CompletionsArgs {
    shell: clap_complete::Shell,
}

#[derive(clap::Args)]
struct ManArgs {
    /// Write `hearth.1` and one `hearth-COMMAND.1` per command into this directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Runs the command line; `started` is the process start time.
pub fn main(started: Instant) -> ExitCode {
    let cli = Cli::parse();
    // The worker confines itself before anything else starts a thread (no runtime, no log).
    if let Some(Command::ExtractWorker(args)) = &cli.command {
        return crate::daemon::extract_worker(args.memory_mib, args.probe);
    }
    let config_file = cli.config.or_else(config::default_config_file);
    let config_file = config_file.as_deref();
    let result = match cli.command {
        None => in_runtime(lifecycle::guide(config_file)),
        Some(Command::Serve(args)) if args.detach => lifecycle::start(config_file, *args),
        Some(Command::Serve(args)) => serve(config_file, *args, started),
        Some(Command::Start(args)) => lifecycle::start(config_file, *args),
        Some(Command::Stop(args)) => in_runtime(lifecycle::stop(config_file, args)),
        Some(Command::Chat(args)) => chat::chat(config_file, args),
        Some(Command::Run(args)) => chat::run(config_file, args),
        Some(Command::Status(args)) => in_runtime(status(config_file, args)),
        Some(Command::Ps(args)) => in_runtime(status::ps(config_file, args)),
        Some(Command::Models(args)) => in_runtime(models::models(config_file, args)),
        Some(Command::Chats(args)) => in_runtime(chats::chats(config_file, args)),
        Some(Command::Docs(args)) => in_runtime(docs::docs(config_file, args)),
        Some(Command::Search(args)) => in_runtime(docs::search(config_file, args)),
        Some(Command::Embed(args)) => in_runtime(docs::embed(config_file, args)),
        Some(Command::Memories(args)) => in_runtime(memories::memories(config_file, args)),
        Some(Command::Settings(args)) => in_runtime(memories::settings(config_file, args)),
        Some(Command::Events(args)) => in_runtime(status::events(config_file, args)),
        Some(Command::Metrics(args)) => in_runtime(status::metrics(config_file, args)),
        Some(Command::Ingest(args)) => in_runtime(ingest::ingest(config_file, args)),
        Some(Command::Library(args)) => in_runtime(ingest::library(config_file, args)),
        #[cfg(feature = "bench")]
        Some(Command::Bench(args)) => runtime().and_then(|rt| crate::bench::run(config_file, args, &rt)),
        #[cfg(not(feature = "bench"))]
        Some(Command::Bench { .. }) => Err(CliExit::usage(
            "this hearth was built without benchmarks: build it with `cargo build --release --features bench`",
        )),
        Some(Command::Completions(args)) => completions(args.shell),
        Some(Command::Man(args)) => man(args.dir.as_deref()),
        Some(Command::ExtractWorker(_)) => unreachable!("handled before"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let exit = Exit::of(&err);
            // A closed stdout (`hearth chats | head -1`) is not worth a message.
            if !is_broken_pipe(&err) {
                let _ = writeln!(std::io::stderr(), "hearth: {err:#}");
            }
            ExitCode::from(exit as u8)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers: the daemon's async side only parses requests and moves small events; the
    // heavy lifting is on the inference thread.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs a client command on a fresh runtime.
fn in_runtime(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    runtime()?.block_on(work)
}

fn serve(config_file: Option<&Path>, args: ServeArgs, started: Instant) -> anyhow::Result<()> {
    let life = crate::daemon::Lifecycle {
        sidecar: args.sidecar,
        parent_pid: args.parent_pid,
    };
    if args.detached_child {
        lifecycle::leave_terminal_session();
    }
    let result = config::load(config_file, args.config)
        .map_err(|error| StartError {
            code: ErrorCode::InvalidConfig,
            error,
        })
        .and_then(|config| {
            // Detached, stderr is a file that only start-up failures should reach: the log file
            // has the rest.
            let _guard = init_logging(
                &config.log_filter,
                Some(&config.data_dir.join("logs")),
                !args.detached_child,
            );
            let rt = runtime().map_err(|error| StartError {
                code: ErrorCode::RuntimeFailed,
                error,
            })?;
            let result = rt.block_on(crate::daemon::run(config, life, started));
            // Do not wait for stray blocking work (e.g. a stdin read) at exit.
            rt.shutdown_timeout(Duration::from_secs(1));
            result
        });
    match result {
        Ok(()) => Ok(()),
        Err(err) if life.sidecar => {
            // The parent app reads stdout: one machine-readable line, then a non-zero exit.
            let line = json!({"event": "error", "code": err.code, "message": err.to_string()});
            let _ = writeln!(std::io::stdout(), "{line}");
            Err(err.error)
        }
        Err(err) => Err(err.error),
    }
}

/// Where a client finds its daemon: the socket, and the data dir (lock file, history file).
pub(crate) struct Target {
    pub(crate) socket: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) models_dir: PathBuf,
}

/// Resolves the socket and data dir a client should use, the same way the daemon chooses them.
pub(crate) fn target(config_file: Option<&Path>, args: &ClientArgs) -> anyhow::Result<Target> {
    let raw = RawConfig {
        socket: args.socket.clone(),
        data_dir: args.data_dir.clone(),
        ..RawConfig::default()
    };
    let config = config::load(config_file, raw)?;
    Ok(Target {
        socket: config.socket,
        data_dir: config.data_dir,
        models_dir: config.models_dir,
    })
}

/// A client for the daemon `args` name.
pub(crate) fn connect(config_file: Option<&Path>, args: &ClientArgs) -> anyhow::Result<Client> {
    Ok(Client::new(&target(config_file, args)?.socket))
}

async fn status(config_file: Option<&Path>, args: ClientArgs) -> anyhow::Result<()> {
    let client = connect(config_file, &args)?;
    let (status, health) = client
        .request(http::Method::GET, "/api/v1/health", None)
        .await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "socket: {}", client.socket().display())?;
    writeln!(
        out,
        "status: {} (HTTP {})",
        health["status"].as_str().unwrap_or("?"),
        status.as_u16()
    )?;
    writeln!(out, "{}", serde_json::to_string_pretty(&health)?)?;
    Ok(())
}

fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    // Rendered into memory first: the generator panics on a write error (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "hearth", &mut script);
    std::io::stdout().lock().write_all(&script)?;
    Ok(())
}

fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir).with_context(|| format!("{}", dir.display()))?;
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            std::io::stdout().lock().write_all(&page)?;
        }
    }
    Ok(())
}

/// Logs to stderr (when `to_stderr`) and, for the daemon, to a daily-rotated file in `log_dir`
/// (7 kept). The returned guard flushes the file writer when dropped.
pub(crate) fn init_logging(
    filter: &str,
    log_dir: Option<&Path>,
    to_stderr: bool,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter};

    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn,hearth=info"));
    // Colours only on a terminal: a sidecar's or service's stderr goes to a log (the host app,
    // the journal), where escape codes are noise.
    let stderr = to_stderr.then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let (file_layer, guard) = match log_dir.and_then(|dir| {
        crate::sys::ensure_private_dir(dir).ok()?;
        tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("hearth")
            .filename_suffix("log")
            .max_log_files(7)
            .build(dir)
            .ok()
    }) {
        Some(appender) => {
            let (writer, guard) = tracing_appender::non_blocking(appender);
            (
                Some(fmt::layer().with_writer(writer).with_ansi(false)),
                Some(guard),
            )
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file_layer)
        .try_init();
    guard
}

/// Calls the API; with `--json` prints its answer and returns `None` (nothing left to show),
/// else returns the answer for a table.
pub(crate) async fn fetch(
    client: &Client,
    method: http::Method,
    path: &str,
    body: Option<&serde_json::Value>,
    out: JsonArg,
) -> anyhow::Result<Option<serde_json::Value>> {
    let answer = client.call(method, path, body).await?;
    if out.json {
        print_json(&answer)?;
        return Ok(None);
    }
    Ok(Some(answer))
}

/// Prints `value` as pretty JSON on stdout (`--json`).
pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// How long ago a millisecond timestamp was, for lists ("3m ago").
pub(crate) fn age(millis: &serde_json::Value) -> String {
    let Some(then) = millis.as_u64() else {
        return "?".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let secs = now.saturating_sub(then) / 1000;
    match secs {
        0..=59 => "just now".into(),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `text` cut to `max` characters on one line, with an ellipsis when cut.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `--json`: the API's JSON instead of a table.
#[derive(clap::Args, Clone, Copy)]
pub(crate) struct JsonArg {
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// Runs `delete` for each id; prints the line it returns per id, or with `--json` one object
/// `{"deleted": [...]}` of the values it returns. Stops at the first failure.
pub(crate) async fn delete_each(
    ids: Vec<String>,
    as_json: bool,
    mut delete: impl AsyncFnMut(String) -> anyhow::Result<(String, serde_json::Value)>,
) -> anyhow::Result<()> {
    let mut deleted = Vec::new();
    for id in ids {
        let (line, value) = delete(id).await?;
        if !as_json {
            writeln!(std::io::stdout().lock(), "{line}")?;
        }
        deleted.push(value);
    }
    if as_json {
        print_json(&json!({ "deleted": deleted }))?;
    }
    Ok(())
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
