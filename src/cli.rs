//! The command line: `hearth serve` runs the daemon; `chat`, `status`, `ingest`, `library` and
//! `bench` are clients of a running one (or, for `bench`, of its own). Parsing, logging set-up and exit codes live here so
//! `main.rs` stays a one-line driver.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use http::Method;
use serde_json::json;

use crate::client::Client;
use crate::config::{self, RawConfig};
use crate::daemon::StartError;

#[derive(Parser)]
#[command(
    name = "hearth",
    version,
    about = "An offline local AI daemon: chat with a local model over a Unix socket"
)]
struct Cli {
    /// Config file [default: $HEARTH_CONFIG, else hearth.toml in the platform config dir].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Serve(Box<ServeArgs>),
    /// Ask a running daemon something and stream the answer.
    Chat(ChatArgs),
    /// Show a running daemon's health.
    Status(ClientArgs),
    /// Measure the daemon (socket + SSE) against an in-process decode loop, start-up and memory.
    Bench(crate::bench::BenchArgs),
    /// Add files or folders to a running daemon's library (searchable from every chat), once.
    Ingest(IngestArgs),
    /// Show the drop folder: watched folders, file state counts and failures.
    Library(LibraryArgs),
}

#[derive(clap::Args)]
struct IngestArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Extra ignore globs (as `watch_ignore`), on top of the built-in rules.
    #[arg(long, value_name = "GLOB")]
    ignore: Vec<String>,
    /// Files and folders (folders are walked; links inside them are not followed).
    #[arg(required = true, num_args = 1..)]
    paths: Vec<PathBuf>,
}

#[derive(clap::Args)]
struct LibraryArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Most failed/skipped files to list.
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: usize,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    config: RawConfig,
    /// Run as an app's sidecar: print one JSON ready (or error) line on stdout, exit when stdin
    /// closes or the parent process dies.
    #[arg(long)]
    sidecar: bool,
    /// Exit when this process exits [default in sidecar mode: the parent process].
    #[arg(long, value_name = "PID")]
    parent_pid: Option<u32>,
}

/// Where to find a running daemon.
#[derive(clap::Args, Clone)]
pub(crate) struct ClientArgs {
    /// Socket of the daemon [default: as `hearth serve` would choose].
    #[arg(long, env = "HEARTH_SOCKET", value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// Data dir of the daemon (used to find its default socket).
    #[arg(long, env = "HEARTH_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ChatArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Continue this chat instead of starting a new one.
    #[arg(long, value_name = "ID")]
    chat: Option<String>,
    /// User to chat as (created if new) [default: $USER].
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Sampling temperature for this message (0 = greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Most tokens to generate.
    #[arg(long, value_name = "N")]
    max_tokens: Option<u32>,
    /// Seconds to wait for the daemon and its model to be ready.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    wait: u64,
    /// The message.
    #[arg(required = true, num_args = 1..)]
    message: Vec<String>,
}

/// Runs the command line; `started` is the process start time.
pub fn main(started: Instant) -> ExitCode {
    let cli = Cli::parse();
    let config_file = cli.config.or_else(config::default_config_file);
    let result = match cli.command {
        Command::Serve(args) => serve(config_file.as_deref(), *args, started),
        Command::Chat(args) => {
            runtime().and_then(|rt| rt.block_on(chat(config_file.as_deref(), args)))
        }
        Command::Status(args) => {
            runtime().and_then(|rt| rt.block_on(status(config_file.as_deref(), args)))
        }
        Command::Bench(args) => crate::bench::run(config_file.as_deref(), args),
        Command::Ingest(args) => {
            runtime().and_then(|rt| rt.block_on(ingest(config_file.as_deref(), args)))
        }
        Command::Library(args) => {
            runtime().and_then(|rt| rt.block_on(library(config_file.as_deref(), args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "hearth: {err:#}");
            ExitCode::FAILURE
        }
    }
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

fn serve(config_file: Option<&Path>, args: ServeArgs, started: Instant) -> anyhow::Result<()> {
    let life = crate::daemon::Lifecycle {
        sidecar: args.sidecar,
        parent_pid: args.parent_pid,
    };
    let result = config::load(config_file, args.config)
        .map_err(|error| StartError {
            code: "invalid_config",
            error,
        })
        .and_then(|config| {
            let _guard = init_logging(&config.log_filter, Some(&config.data_dir.join("logs")));
            let rt = runtime().map_err(|error| StartError {
                code: "runtime",
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

/// Resolves the socket a client should use, the same way the daemon chooses it.
pub(crate) fn client_socket(
    config_file: Option<&Path>,
    args: &ClientArgs,
) -> anyhow::Result<PathBuf> {
    let raw = RawConfig {
        socket: args.socket.clone(),
        data_dir: args.data_dir.clone(),
        ..RawConfig::default()
    };
    Ok(config::load(config_file, raw)?.socket)
}

async fn chat(config_file: Option<&Path>, args: ChatArgs) -> anyhow::Result<()> {
    let client = Client::new(&client_socket(config_file, &args.client)?);
    // Fail at once when no daemon listens; otherwise give its model time to load.
    client.request(Method::GET, "/api/v1/health", None).await?;
    client.wait_ready(Duration::from_secs(args.wait)).await?;

    let chat_id = match args.chat {
        Some(id) => id,
        None => {
            let username = args
                .user
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "local".into());
            client.create_chat(&username).await?
        }
    };
    let mut options = serde_json::Map::new();
    if let Some(t) = args.temperature {
        options.insert("temperature".into(), json!(t));
    }
    if let Some(n) = args.max_tokens {
        options.insert("max_tokens".into(), json!(n));
    }
    let body = json!({ "content": args.message.join(" "), "options": options });
    let mut events = client
        .stream(&format!("/api/v1/chats/{chat_id}/messages"), &body)
        .await?;
    let mut out = std::io::stdout().lock();
    while let Some(event) = events.next().await? {
        match event.event.as_str() {
            "token" => {
                out.write_all(event.data["text"].as_str().unwrap_or("").as_bytes())?;
                out.flush()?;
            }
            "done" => {
                writeln!(out)?;
                let d = &event.data;
                writeln!(
                    std::io::stderr(),
                    "[chat {chat_id} · {} tokens · {} tok/s · finish: {}; continue with --chat {chat_id}]",
                    d["usage"]["completion_tokens"],
                    d["timings"]["completion_tokens_per_s"],
                    d["finish_reason"].as_str().unwrap_or("?"),
                )?;
                return Ok(());
            }
            "error" => {
                writeln!(out)?;
                anyhow::bail!(
                    "{} ({})",
                    event.data["message"].as_str().unwrap_or(""),
                    event.data["code"].as_str().unwrap_or("?")
                );
            }
            _ => {}
        }
    }
    anyhow::bail!("the stream ended without a final event")
}

async fn status(config_file: Option<&Path>, args: ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(&client_socket(config_file, &args)?);
    let (status, health) = client.request(Method::GET, "/api/v1/health", None).await?;
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

/// One file `hearth ingest` found, or why it is left out.
enum Found {
    File { path: PathBuf, size: u64 },
    Skipped { path: PathBuf, reason: String },
}

/// Walks the command line's paths with the drop folder's rules: named files are taken as they
/// are (also through a link: the user named them); inside folders, links and special files are
/// skipped and ignored names left out.
fn collect(paths: &[PathBuf], rules: &crate::library::rules::Rules) -> Vec<Found> {
    use crate::library::access::{Kind, Root};
    use std::os::unix::ffi::OsStrExt;
    let mut found = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => found.push(Found::File {
                path: path.clone(),
                size: meta.len(),
            }),
            Ok(meta) if meta.is_dir() => {
                let root = match Root::open(path) {
                    Ok(root) => root,
                    Err(reason) => {
                        found.push(Found::Skipped {
                            path: path.clone(),
                            reason,
                        });
                        continue;
                    }
                };
                let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
                while let Some(dir) = stack.pop() {
                    let entries = match root.list(&dir) {
                        Ok(entries) => entries,
                        Err(err) => {
                            found.push(Found::Skipped {
                                path: root.path.join(std::ffi::OsStr::from_bytes(&dir)),
                                reason: err.to_string(),
                            });
                            continue;
                        }
                    };
                    for (name, kind) in entries {
                        let mut relative = dir.clone();
                        if !relative.is_empty() {
                            relative.push(b'/');
                        }
                        relative.extend_from_slice(&name);
                        if rules.ignored(&relative, &name, kind == Kind::Dir) {
                            continue;
                        }
                        let full = root.path.join(std::ffi::OsStr::from_bytes(&relative));
                        match kind {
                            Kind::Dir => stack.push(relative),
                            Kind::File { size, .. } => found.push(Found::File { path: full, size }),
                            Kind::Symlink => found.push(Found::Skipped {
                                path: full,
                                reason: "symbolic link (not followed)".into(),
                            }),
                            Kind::Special => found.push(Found::Skipped {
                                path: full,
                                reason: "not a regular file".into(),
                            }),
                        }
                    }
                }
            }
            Ok(_) => found.push(Found::Skipped {
                path: path.clone(),
                reason: "not a regular file".into(),
            }),
            Err(err) => found.push(Found::Skipped {
                path: path.clone(),
                reason: err.to_string(),
            }),
        }
    }
    found
}

/// Error codes of uploads that are "not a document" rather than a failure.
const SKIP_CODES: &[&str] = &[
    "unsupported_format",
    "empty_document",
    "file_too_large",
    "payload_too_large",
];

async fn ingest(config_file: Option<&Path>, args: IngestArgs) -> anyhow::Result<()> {
    let client = Client::new(&client_socket(config_file, &args.client)?);
    client.request(Method::GET, "/api/v1/health", None).await?;
    let rules = crate::library::rules::Rules::new(&args.ignore).map_err(anyhow::Error::msg)?;
    let found = collect(&args.paths, &rules);
    let total: u64 = found
        .iter()
        .map(|f| match f {
            Found::File { size, .. } => *size,
            Found::Skipped { .. } => 0,
        })
        .sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut indexed, mut skipped, mut failed) = (0usize, Vec::new(), Vec::new());
    for item in found {
        let (path, size) = match item {
            Found::File { path, size } => (path, size),
            Found::Skipped { path, reason } => {
                skipped.push((path, reason));
                continue;
            }
        };
        let name = path.to_string_lossy().into_owned();
        bar.set_message(name.clone());
        let result = match std::fs::read(&path) {
            Ok(bytes) => {
                client
                    .upload("/api/v1/library/documents", &name, &bytes)
                    .await
            }
            Err(err) => Err(anyhow::Error::from(err)),
        };
        bar.inc(size);
        match result {
            Ok((status, _)) if status.is_success() => indexed += 1,
            Ok((_, body)) => {
                let code = body["error"]["code"].as_str().unwrap_or("?").to_string();
                let text = crate::client::error_text(&body);
                if SKIP_CODES.contains(&code.as_str()) {
                    skipped.push((path, text));
                } else {
                    failed.push((path, text));
                }
            }
            Err(err) => failed.push((path, format!("{err:#}"))),
        }
    }
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "indexed {indexed}, skipped {}, failed {}",
        skipped.len(),
        failed.len()
    )?;
    for (path, reason) in &skipped {
        writeln!(out, "  skipped {}: {reason}", path.display())?;
    }
    for (path, reason) in &failed {
        writeln!(out, "  failed  {}: {reason}", path.display())?;
    }
    if !failed.is_empty() {
        anyhow::bail!("{} file(s) failed", failed.len());
    }
    Ok(())
}

async fn library(config_file: Option<&Path>, args: LibraryArgs) -> anyhow::Result<()> {
    let client = Client::new(&client_socket(config_file, &args.client)?);
    let status = client.call(Method::GET, "/api/v1/library", None).await?;
    let mut out = std::io::stdout().lock();
    let roots = status["roots"].as_array().cloned().unwrap_or_default();
    if roots.is_empty() {
        writeln!(out, "no watched folders (add `watch = [\"~/Documents/notes\"]` to hearth.toml or pass --watch DIR)")?;
    }
    for root in &roots {
        writeln!(out, "watching {}", root.as_str().unwrap_or("?"))?;
    }
    if let Some(err) = status["watcher_error"].as_str() {
        writeln!(
            out,
            "watcher off ({err}); periodic scans keep the library in sync"
        )?;
    }
    let counts = &status["counts"];
    writeln!(
        out,
        "indexed {} · queued {} · indexing {} · failed {} · skipped {} · waiting to settle {}",
        counts["indexed"],
        counts["queued"],
        counts["indexing"],
        counts["failed"],
        counts["skipped"],
        status["waiting"]
    )?;
    for state in ["failed", "skipped"] {
        let page = client
            .call(
                Method::GET,
                &format!(
                    "/api/v1/library/files?state={state}&limit={}",
                    args.limit.clamp(1, 1000)
                ),
                None,
            )
            .await?;
        for file in page["files"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  {state} {}: {} ({})",
                file["path"].as_str().unwrap_or("?"),
                file["message"].as_str().unwrap_or(""),
                file["reason"].as_str().unwrap_or("?"),
            )?;
        }
    }
    Ok(())
}

/// Logs to stderr and, for the daemon, to a daily-rotated file in `log_dir` (7 kept). The
/// returned guard flushes the file writer when dropped.
pub(crate) fn init_logging(
    filter: &str,
    log_dir: Option<&Path>,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter};

    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn,hearth=info"));
    // Colours only on a terminal: a sidecar's or service's stderr goes to a log (the host app,
    // the journal), where escape codes are noise.
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let (file_layer, guard) = match log_dir.and_then(|dir| {
        crate::server::ensure_private_dir(dir).ok()?;
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
