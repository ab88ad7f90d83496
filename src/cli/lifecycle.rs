//! Starting, stopping and waiting for a daemon from the command line: `hearth start` (= `serve
//! --detach`), `hearth stop`, the progress line of `--wait`, and `hearth` with no arguments.
//!
//! `start` runs the same binary as `hearth serve … --detached-child` in its own session (no
//! controlling terminal, so closing the terminal does not end it), with stdin and stdout on
//! /dev/null and stderr in `DATA_DIR/logs/start.err` (only start-up failures reach it; the daemon's
//! log goes to its daily log file). It returns once the socket answers, or shows why the daemon
//! exited.
//!
//! `stop` asks the daemon to shut down over its socket (`POST /api/v1/shutdown`); if the socket
//! does not answer but the instance lock is held, it sends SIGTERM to the pid in the lock file.
//! Either way it then waits for that process to exit: the daemon's graceful path (streams end,
//! the store is flushed, socket and lock removed) has run when it has.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use http::{Method, StatusCode};
use serde_json::Value;

use super::{target, ClientArgs, ServeArgs};
use crate::client::{Client, ClientError, Waiting};
use crate::config;

/// File in `DATA_DIR/logs` that receives a detached daemon's stderr.
const START_ERR_FILE: &str = "start.err";
/// Lines of it shown when a detached daemon exits during start-up.
const START_ERR_LINES: usize = 20;
/// How often start/stop look at the process and the socket.
const POLL: Duration = Duration::from_millis(50);

#[derive(clap::Args)]
pub(super) struct StopArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Seconds to wait for the daemon to exit (its graceful shutdown takes up to
    /// shutdown_grace_secs, 10 s by default, when replies are streaming).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    /// Kill the daemon (SIGKILL) if it has not exited by the timeout. Nothing it acknowledged is
    /// lost; a reply being generated is.
    #[arg(long)]
    force: bool,
}

/// The argument list of the detached daemon: ours, with `start` (or `serve --detach`) turned
/// into `serve --detached-child`.
fn detached_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut subcommand_seen = false;
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
            out.push(arg);
            continue;
        }
        if arg == "--detach" {
            continue;
        }
        if !subcommand_seen {
            // Only the global `--config FILE` may come before the subcommand.
            if arg == "--config" {
                skip_value = true;
            } else if !arg.to_string_lossy().starts_with('-') {
                subcommand_seen = true;
                out.push(OsString::from("serve"));
                out.push(OsString::from("--detached-child"));
                continue;
            }
        }
        out.push(arg);
    }
    out
}

/// Called first thing in the detached daemon: a session of its own, so the terminal's hang-up
/// and Ctrl-C never reach it.
pub(super) fn leave_terminal_session() {
    if let Err(err) = crate::sys::leave_terminal_session() {
        tracing::warn!(error = %err, "cannot start a new session");
    }
}

/// `hearth start` / `hearth serve --detach`.
pub(super) fn start(config_file: Option<&Path>, args: ServeArgs) -> anyhow::Result<()> {
    if args.sidecar {
        return Err(super::CliExit::usage(
            "a sidecar runs in the foreground of its app: drop --sidecar or --detach",
        ));
    }
    // The configuration is checked here, in the foreground, where its errors can be read.
    let config = config::load(config_file, args.config.clone())?;
    let rt = super::runtime()?;
    let client = Client::new(&config.socket);
    if let Ok((_, health)) = rt.block_on(client.request(Method::GET, "/api/v1/health", None)) {
        writeln!(
            std::io::stdout().lock(),
            "hearth is already running (pid {}) on {}",
            health["pid"],
            config.socket.display()
        )?;
        return Ok(());
    }
    let logs = config.data_dir.join("logs");
    crate::sys::ensure_private_dir(&config.data_dir)
        .and_then(|()| crate::sys::ensure_private_dir(&logs))
        .with_context(|| format!("{}: cannot create", logs.display()))?;
    let err_path = logs.join(START_ERR_FILE);
    let err_file = std::fs::File::create(&err_path)
        .with_context(|| format!("{}: cannot create", err_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the hearth executable")?;
    let mut command = Command::new(exe);
    crate::sys::detach(&mut command);
    let mut child = command
        .args(detached_args(std::env::args_os().skip(1)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .context("cannot start hearth serve")?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(args.start_timeout);
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&err_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(START_ERR_LINES)..].join("\n");
            anyhow::bail!("hearth exited during start-up ({status}):\n{tail}");
        }
        if rt
            .block_on(client.request(Method::GET, "/api/v1/health", None))
            .is_ok()
        {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ClientError::TimedOut(format!(
                "hearth (pid {pid}) did not accept connections on {} within {} s; see {}",
                config.socket.display(),
                args.start_timeout,
                logs.display()
            ))
            .into());
        }
        std::thread::sleep(POLL);
    }
    writeln!(
        std::io::stdout().lock(),
        "hearth started (pid {pid}) on {}\n  logs: {}\n  stop it with: hearth stop",
        config.socket.display(),
        logs.display()
    )?;
    Ok(())
}

/// `hearth stop`.
pub(super) async fn stop(config_file: Option<&Path>, args: StopArgs) -> anyhow::Result<()> {
    let target = target(config_file, &args.client)?;
    let client = Client::new(&target.socket);
    let started = Instant::now();
    let pid = match client.request(Method::POST, "/api/v1/shutdown", None).await {
        Ok((StatusCode::ACCEPTED, body)) => body["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .context("the daemon did not say its pid")?,
        Ok((status, body)) => return Err(ClientError::api(status, &body).into()),
        Err(err) => match err.downcast_ref::<ClientError>() {
            Some(ClientError::NoDaemon { .. }) => {
                match crate::daemon::running_instance(&target.data_dir) {
                    Some(pid) => {
                        // Running, but not answering on this socket: the signal path.
                        terminate(pid)?;
                        pid
                    }
                    None => {
                        return Err(ClientError::NoDaemon {
                            socket: target.socket.clone(),
                            reason: format!(
                                "nothing listens there and no instance holds {}",
                                target.data_dir.display()
                            ),
                        }
                        .into())
                    }
                }
            }
            _ => return Err(err),
        },
    };
    let deadline = started + Duration::from_secs(args.timeout);
    while !process_gone(pid) {
        if Instant::now() >= deadline {
            if args.force {
                kill(pid)?;
                writeln!(
                    std::io::stdout().lock(),
                    "hearth (pid {pid}) did not stop within {} s: killed",
                    args.timeout
                )?;
                return Ok(());
            }
            return Err(ClientError::TimedOut(format!(
                "hearth (pid {pid}) is still running after {} s; `hearth stop --force` kills it",
                args.timeout
            ))
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
    writeln!(
        std::io::stdout().lock(),
        "hearth stopped (pid {pid}, {} ms)",
        started.elapsed().as_millis()
    )?;
    Ok(())
}

fn terminate(pid: u32) -> anyhow::Result<()> {
    crate::sys::terminate(pid).with_context(|| format!("cannot signal hearth (pid {pid})"))
}

fn kill(pid: u32) -> anyhow::Result<()> {
    crate::sys::kill(pid).with_context(|| format!("cannot kill hearth (pid {pid})"))
}

use crate::sys::process_gone;

/// Waits for the daemon behind `client` to be ready, showing one progress line on stderr while
/// it waits (see [`Client::wait_for`] for `for_socket`). Returns the health body.
pub(super) async fn wait_until_ready(
    client: &Client,
    timeout: Duration,
    for_socket: bool,
) -> anyhow::Result<Value> {
    let mut line = ProgressLine::new();
    let result = client
        .wait_for(timeout, for_socket, &mut |w| line.show(w))
        .await;
    line.finish();
    result
}

/// One status line on stderr, rewritten in place on a terminal; elsewhere (a log, a pipe) a line
/// is printed only when the stage changes, not for every percent.
struct ProgressLine {
    tty: bool,
    /// The last text shown without its percentage, to print stage changes once.
    last_stage: String,
    shown: bool,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        ProgressLine {
            tty: std::io::stderr().is_terminal(),
            last_stage: String::new(),
            shown: false,
        }
    }

    fn show(&mut self, waiting: &Waiting) {
        let (stage, percent) = match waiting {
            Waiting::Socket => ("waiting for hearth to start…".to_string(), None),
            Waiting::Model {
                name,
                stage,
                progress,
            } => (
                format!("{stage} model {name}…"),
                progress.map(|p| format!(" {:.0}%", (p * 100.0).clamp(0.0, 100.0))),
            ),
        };
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{stage}{}", percent.unwrap_or_default());
            let _ = err.flush();
        } else if stage != self.last_stage {
            let _ = writeln!(err, "{stage}");
        }
        self.last_stage = stage;
        self.shown = true;
    }

    /// Clears the line (on a terminal) so the answer starts on a clean line.
    fn finish(&mut self) {
        if self.tty && self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

/// `hearth` with no arguments: is a daemon running, where, and what to do next.
pub(super) async fn guide(config_file: Option<&Path>) -> anyhow::Result<()> {
    let args = ClientArgs {
        socket: std::env::var_os("HEARTH_SOCKET").map(Into::into),
        data_dir: std::env::var_os("HEARTH_DATA_DIR").map(Into::into),
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "hearth {}: an offline local AI daemon\n",
        env!("CARGO_PKG_VERSION")
    )?;
    let target = match target(config_file, &args) {
        Ok(target) => target,
        Err(err) => {
            writeln!(out, "config: {err:#}\n\nMore: hearth --help")?;
            return Ok(());
        }
    };
    let client = Client::new(&target.socket);
    let running = match client.request(Method::GET, "/api/v1/health", None).await {
        Ok((_, health)) => {
            let chat = &health["models"]["chat"];
            writeln!(
                out,
                "daemon:  running (pid {}), model {} {}",
                health["pid"],
                chat["name"].as_str().unwrap_or("?"),
                chat["state"].as_str().unwrap_or("?")
            )?;
            true
        }
        Err(_) => {
            writeln!(out, "daemon:  not running")?;
            false
        }
    };
    writeln!(out, "socket:  {}", target.socket.display())?;
    writeln!(out, "data:    {}", target.data_dir.display())?;
    writeln!(out, "models:  {}\n\nNext:", target.models_dir.display())?;
    let steps: &[(&str, &str)] = if running {
        &[
            (
                "hearth chat",
                "talk with the model (/help inside; Ctrl-D ends)",
            ),
            (
                "hearth docs upload FILE",
                "make a document searchable from every chat (then /docs on)",
            ),
            ("hearth stop", "stop the daemon"),
        ]
    } else {
        &[
            (
                "hearth start",
                "start the daemon in the background (`hearth serve`: in the foreground)",
            ),
            (
                "hearth chat --wait 60",
                "then talk with the model (waits for it to load)",
            ),
            (
                "hearth models",
                "the model files and whether they are present",
            ),
        ]
    };
    for (command, what) in steps {
        writeln!(out, "  {command:<26} {what}")?;
    }
    writeln!(out, "\nMore: hearth --help")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn detached_args_turn_start_and_detach_into_a_detached_serve() {
        assert_eq!(
            detached_args(args(&["start", "--models-dir", "m"]).into_iter()),
            args(&["serve", "--detached-child", "--models-dir", "m"])
        );
        assert_eq!(
            detached_args(
                args(&["--config", "start", "serve", "--detach", "--ctx", "512"]).into_iter()
            ),
            args(&[
                "--config",
                "start",
                "serve",
                "--detached-child",
                "--ctx",
                "512"
            ])
        );
    }

    #[test]
    fn a_process_that_is_gone_is_seen_as_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not reaped: a zombie counts as gone.
        std::thread::sleep(Duration::from_millis(200));
        assert!(process_gone(pid));
        child.wait().unwrap();
        assert!(process_gone(pid));
        assert!(!process_gone(std::process::id()));
    }
}
