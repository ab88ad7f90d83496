//! Test support: a real `hearth` daemon process on a temp data dir and socket, with the real model
//! files from `models/` (fetched by `./models/fetch`), plus raw-HTTP helpers.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearth::client::Client;
use http::Method;
use serde_json::Value;

/// The default chat model (real weights).
pub const REAL_MODEL: &str = "smollm2-135m-instruct-q4_1";
/// Random weights, for fast mechanical tests.
pub const TINY_MODEL: &str = "tiny-random";
/// The real assistant model (Qwen2.5-Coder-1.5B-Instruct, 1.1 GB), for answer quality.
pub const ASSISTANT_MODEL: &str = "qwen2.5-coder-1.5b-instruct";
/// A real base model without a chat template (Gemma 3 270M).
pub const BASE_MODEL: &str = "gemma-3-270m-base";

pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("HEARTH_TEST_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    for (file, group) in [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "chat"),
        ("tiny-random.gguf", "test"),
        ("Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf", "assistant"),
        ("gemma-3-270m-q4_k_m.gguf", "base"),
    ] {
        assert!(
            dir.join(file).exists(),
            "{} is missing: run ./models/fetch {group}",
            dir.join(file).display()
        );
    }
    dir
}

/// A daemon on the real model with its loopback TCP listener on a free port: (daemon, address,
/// bearer token).
pub async fn with_tcp(opts: Opts) -> (Daemon, String, String) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut opts = opts;
    opts.extra.extend(["--tcp".to_string(), addr.clone()]);
    let d = Daemon::start(opts).await;
    let token = std::fs::read_to_string(d.data_dir().join("tcp-token")).unwrap();
    (d, addr, token.trim().to_string())
}

/// A daemon on the random-weight model, for mechanical tests.
pub fn tiny() -> Opts {
    Opts {
        model: TINY_MODEL,
        ..Opts::default()
    }
}

/// How to start a daemon.
#[derive(Clone)]
pub struct Opts {
    pub model: &'static str,
    pub ctx: u32,
    pub queue_depth: u32,
    pub models_dir: Option<PathBuf>,
    /// `--threads`; None leaves the daemon's adaptive default.
    pub threads: Option<u32>,
    pub extra: Vec<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            model: REAL_MODEL,
            ctx: 2048,
            queue_depth: 8,
            models_dir: None,
            // One thread per context: tests run in parallel on 2 cores.
            threads: Some(1),
            extra: Vec::new(),
        }
    }
}

/// A daemon process; killed when dropped.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub opts: Opts,
    pub child: Option<Child>,
    pub client: Client,
}

impl Daemon {
    /// Starts a daemon and waits until its model is ready.
    pub async fn start(opts: Opts) -> Daemon {
        let mut daemon = Daemon::spawn_only(opts);
        daemon.wait_ready().await;
        daemon
    }

    /// Starts a daemon without waiting for anything.
    pub fn spawn_only(opts: Opts) -> Daemon {
        let mut daemon = Daemon::stopped(opts);
        daemon.child = Some(daemon.command().spawn().expect("spawn hearth"));
        daemon
    }

    /// A daemon's dirs and options, with no process yet.
    pub fn stopped(opts: Opts) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("hearth-it")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("run").join("hearth.sock");
        Daemon {
            client: Client::new(&socket),
            dir,
            socket,
            opts,
            child: None,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn command(&self) -> Command {
        self.command_for(&self.socket)
    }

    /// The `hearth serve` command line for this daemon's data dir, on `socket`.
    pub fn command_for(&self, socket: &Path) -> Command {
        let models = self.opts.models_dir.clone().unwrap_or_else(models_dir);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--socket")
            .arg(socket)
            .arg("--models-dir")
            .arg(models)
            .arg("--model")
            .arg(self.opts.model)
            .arg("--ctx")
            .arg(self.opts.ctx.to_string())
            .arg("--queue-depth")
            .arg(self.opts.queue_depth.to_string())
            .args(&self.opts.extra)
            .env("HEARTH_CONFIG", self.dir.path().join("none.toml"))
            .env_remove("HEARTH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match self.opts.threads {
            Some(threads) => cmd.arg("--threads").arg(threads.to_string()),
            None => cmd.env_remove("HEARTH_THREADS"),
        };
        cmd
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.socket.exists() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early with {status}: {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "socket never appeared");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.client
            .wait_ready(Duration::from_secs(60))
            .await
            .unwrap_or_else(|err| panic!("daemon not ready: {err:#}"));
    }

    /// Collects stderr of an exited daemon.
    pub fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(child) = self.child.as_mut() {
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut text);
            }
        }
        text
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().unwrap().id()).unwrap()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, wait for the exit, return its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = Some(child);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the daemon to exit by itself (after a signal sent elsewhere).
    pub fn wait_stopped(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again on the same data dir and socket.
    pub async fn restart(&mut self) {
        self.kill9();
        self.child = Some(self.command().spawn().expect("spawn hearth"));
        self.wait_ready().await;
    }

    /// A user and a chat, ready for messages.
    pub async fn new_chat(&self, username: &str) -> String {
        self.client.create_chat(username).await.unwrap()
    }

    /// Sends a message and collects the whole stream: (concatenated text, all events).
    pub async fn ask(&self, chat: &str, body: Value) -> (String, Vec<hearth::client::Event>) {
        let mut stream = self
            .client
            .stream(&format!("/api/v1/chats/{chat}/messages"), &body)
            .await
            .unwrap();
        let mut text = String::new();
        let mut events = Vec::new();
        while let Some(event) = stream.next().await.unwrap() {
            if event.event == "token" {
                text.push_str(event.data["text"].as_str().unwrap());
            }
            events.push(event);
        }
        (text, events)
    }
}

/// The id of user `name` (created if new).
pub async fn user(d: &Daemon, name: &str) -> String {
    d.client.user_id(name).await.unwrap()
}

/// A new chat of `user` (an id); returns its id.
pub async fn chat_for(d: &Daemon, user: &str) -> String {
    let chat = d
        .client
        .call(
            Method::POST,
            "/api/v1/chats",
            Some(&serde_json::json!({ "user_id": user })),
        )
        .await
        .unwrap();
    chat["id"].as_str().unwrap().to_string()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends raw bytes as one HTTP/1.1 request on the socket and returns (status, body).
pub fn raw(socket: &Path, request: &[u8]) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server may answer (e.g. 413) and close before reading everything; ignore EPIPE.
    // Requests say `Connection: close`, so the server closes after answering.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A request with a body and the usual headers.
pub fn request(method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: hearth\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}
