//! A small client for hearth's API over its Unix socket: JSON requests and SSE streams. Used by
//! the CLI (`hearth chat`, `hearth status`, ...), the benchmark and the integration tests. It also
//! speaks loopback TCP with a bearer token, which the benchmark uses to measure hearth's TCP
//! listener side by side with another OpenAI-compatible server.
//!
//! Failures a caller acts on are typed ([`ClientError`]: no daemon, an API error with its code, a
//! timeout) so the CLI can turn them into its documented exit codes; the rest are plain `anyhow`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Why a request to the daemon failed, where callers branch on the kind.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing accepts connections on the socket (absent, stale, or not ours).
    #[error("no hearth daemon at {} ({reason})", socket.display())]
    NoDaemon { socket: PathBuf, reason: String },
    /// The daemon answered with an error status and its `{"error":{"code","message"}}` body.
    /// `status` is `None` for an `error` event inside a stream that had begun with 200.
    #[error("{message} ({code})")]
    Api {
        status: Option<StatusCode>,
        code: String,
        message: String,
    },
    /// Waited longer than the caller allowed.
    #[error("{0}")]
    TimedOut(String),
}

impl ClientError {
    /// The `error` event of a stream: `{"code","message"}`.
    pub fn event(data: &Value) -> ClientError {
        ClientError::Api {
            status: None,
            code: data["code"].as_str().unwrap_or("unknown").to_string(),
            message: data["message"].as_str().unwrap_or("no message").to_string(),
        }
    }

    /// The API error of a non-2xx answer.
    pub fn api(status: StatusCode, body: &Value) -> ClientError {
        match (
            body["error"]["code"].as_str(),
            body["error"]["message"].as_str(),
        ) {
            (Some(code), Some(message)) => ClientError::Api {
                status: Some(status),
                code: code.to_string(),
                message: message.to_string(),
            },
            _ => ClientError::Api {
                status: Some(status),
                code: format!("http_{}", status.as_u16()),
                message: format!("{status}: {body}"),
            },
        }
    }
}

/// What a daemon being waited for is doing, for a progress line.
#[derive(Clone, Debug, PartialEq)]
pub enum Waiting {
    /// Nothing accepts connections on the socket yet.
    Socket,
    /// The chat model is loading: `stage` (`verifying`, `loading`) and the share of it done.
    Model {
        name: String,
        stage: String,
        progress: Option<f64>,
    },
}

/// Talks to one daemon socket; each request uses a fresh connection (cheap on a Unix socket).
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    /// Set: connect to this TCP address instead of the socket, sending the token (if any) as
    /// `Authorization: Bearer`.
    tcp: Option<(std::net::SocketAddr, Option<String>)>,
}

/// One SSE event as received.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event: String,
    pub data: Value,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
            tcp: None,
        }
    }

    /// A client for an HTTP server on `addr` (hearth's TCP listener or another server).
    pub fn tcp(addr: std::net::SocketAddr, token: Option<String>) -> Client {
        Client {
            socket: PathBuf::new(),
            tcp: Some((addr, token)),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()?
            .unwrap_or_default();
        let content_type = body.map(|_| "application/json".to_string());
        self.send_raw(method, path, content_type, Bytes::from(bytes), None)
            .await
    }

    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<String>,
        body: Bytes,
        accept: Option<&str>,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let mut req = Request::builder().method(method).uri(path);
        let mut sender = match &self.tcp {
            None => {
                let stream =
                    connect_local(&self.socket)
                        .await
                        .map_err(|err| ClientError::NoDaemon {
                            socket: self.socket.clone(),
                            reason: format!("{err}; start one with `hearth start`"),
                        })?;
                req = req.header("host", "hearth");
                handshake(stream).await?
            }
            Some((addr, token)) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("cannot connect to {addr}"))?;
                // Tokens stream one per write; Nagle would hold them back.
                stream.set_nodelay(true)?;
                req = req.header("host", addr.to_string());
                if let Some(token) = token {
                    req = req.header("authorization", format!("Bearer {token}"));
                }
                handshake(stream).await?
            }
        };
        if let Some(content_type) = content_type {
            req = req.header("content-type", content_type);
        }
        if let Some(accept) = accept {
            req = req.header("accept", accept);
        }
        let req = req.body(Full::new(body))?;
        Ok(sender.send_request(req).await?)
    }

    /// Sends a request and reads a JSON answer (any status).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).context("daemon sent invalid JSON")?
        };
        Ok((status, value))
    }

    /// GETs a text answer (`/metrics`); a non-2xx status is an error carrying the API's message.
    pub async fn text(&self, path: &str) -> anyhow::Result<String> {
        let response = self.send(Method::GET, path, None).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(ClientError::api(status, &body).into());
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Like [`Client::request`], but a non-2xx status is an error carrying the API's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.request(method, path, body).await?;
        if !status.is_success() {
            return Err(ClientError::api(status, &value).into());
        }
        Ok(value)
    }

    /// Starts an SSE request. A non-2xx answer is an error.
    pub async fn stream(&self, path: &str, body: &Value) -> anyhow::Result<EventStream> {
        event_stream(self.send(Method::POST, path, Some(body)).await?).await
    }

    /// Uploads a file as multipart/form-data (field `file`) and reads the JSON answer (any
    /// status).
    pub async fn upload(
        &self,
        path: &str,
        filename: &str,
        bytes: &[u8],
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.upload_named(path, filename, None, bytes).await
    }

    /// [`Client::upload`] with the form's `name` field: the document's name when it is not the
    /// file name (`hearth ingest` sends the file's absolute path).
    pub async fn upload_named(
        &self,
        path: &str,
        filename: &str,
        name: Option<&str>,
        bytes: &[u8],
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (content_type, body) = multipart(filename, name, bytes);
        let response = self
            .send_raw(
                Method::POST,
                path,
                Some(content_type),
                body,
                Some("application/json"),
            )
            .await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// Uploads a file and reads the answer as SSE (`progress` events, then `ready` or `error`).
    /// A non-2xx answer (e.g. 413 before the body is read) is an error.
    pub async fn upload_stream(
        &self,
        path: &str,
        filename: &str,
        bytes: &[u8],
    ) -> anyhow::Result<EventStream> {
        event_stream(
            self.send_file(path, filename, bytes, "text/event-stream")
                .await?,
        )
        .await
    }

    /// POSTs a file as multipart/form-data (field `file`), asking for `accept`.
    async fn send_file(
        &self,
        path: &str,
        filename: &str,
        bytes: &[u8],
        accept: &str,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let (content_type, body) = multipart(filename, None, bytes);
        self.send_raw(Method::POST, path, Some(content_type), body, Some(accept))
            .await
    }

    /// Opens an SSE stream with GET (e.g. `/api/v1/events`). A non-2xx answer is an error.
    pub async fn subscribe(&self, path: &str) -> anyhow::Result<EventStream> {
        event_stream(self.send(Method::GET, path, None).await?).await
    }

    /// The id of the user `username`, created if new.
    pub async fn user_id(&self, username: &str) -> anyhow::Result<String> {
        let body = serde_json::json!({ "username": username });
        let user = self
            .call(Method::POST, "/api/v1/users", Some(&body))
            .await?;
        user["id"]
            .as_str()
            .map(str::to_string)
            .context("daemon returned a user without id")
    }

    /// Creates (or reuses) the user `username` and a new chat for them; returns the chat id.
    pub async fn create_chat(&self, username: &str) -> anyhow::Result<String> {
        let user_id = self.user_id(username).await?;
        let body = serde_json::json!({ "user_id": user_id });
        let chat = self
            .call(Method::POST, "/api/v1/chats", Some(&body))
            .await?;
        chat["id"]
            .as_str()
            .map(str::to_string)
            .context("daemon returned a chat without id")
    }

    /// Polls `/api/v1/health` until the chat model is ready or `timeout` passes, also while
    /// nothing accepts connections yet (a daemon starting, or restarting over a stale socket).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_for(timeout, true, &mut |_| {}).await
    }

    /// Waits until the chat model is ready: for the socket to accept connections too when
    /// `for_socket` (a daemon that is starting), else a missing daemon fails at once. `waiting` is
    /// told what is awaited each time it is polled (every 50 ms). A model that failed to load
    /// fails at once; so does a daemon that went away after it had answered.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        for_socket: bool,
        waiting: &mut dyn FnMut(&Waiting),
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut answered = false;
        loop {
            let last = match self.request(Method::GET, "/api/v1/health", None).await {
                Ok((StatusCode::OK, health)) => return Ok(health),
                Ok((_, health)) if health["models"]["chat"]["state"] == "failed" => {
                    bail!(
                        "the chat model failed to load: {}",
                        health["models"]["chat"]["error"]
                            .as_str()
                            .unwrap_or("no reason given")
                    )
                }
                Ok((status, health)) => {
                    answered = true;
                    let chat = &health["models"]["chat"];
                    waiting(&Waiting::Model {
                        name: chat["name"].as_str().unwrap_or("?").to_string(),
                        stage: chat["loading"]["stage"]
                            .as_str()
                            .unwrap_or("loading")
                            .to_string(),
                        progress: chat["loading"]["progress"].as_f64(),
                    });
                    format!("{status} {}", health["status"].as_str().unwrap_or("?"))
                }
                Err(err) => match err.downcast_ref::<ClientError>() {
                    Some(ClientError::NoDaemon { .. }) if for_socket && !answered => {
                        waiting(&Waiting::Socket);
                        err.to_string()
                    }
                    _ => return Err(err),
                },
            };
            if Instant::now() >= deadline {
                let what = if answered {
                    "the chat model was not ready"
                } else {
                    "hearth did not start"
                };
                return Err(ClientError::TimedOut(format!(
                    "{what} within {} s (last: {last})",
                    timeout.as_secs()
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A multipart/form-data body with one field `file`; returns the content type and the body.
fn multipart(filename: &str, document_name: Option<&str>, bytes: &[u8]) -> (String, Bytes) {
    let boundary = format!("hearth-{:016x}", rand_u64());
    // Quotes and line breaks would end the header early; the server only uses the name
    // for display and format detection.
    let name: String = filename
        .chars()
        .map(|c| if c == '"' || c.is_control() { '_' } else { c })
        .collect();
    let mut body = Vec::with_capacity(bytes.len() + 256);
    if let Some(document_name) = document_name {
        // A text field's value is the part's body: only the boundary could end it, and the
        // boundary is random.
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{document_name}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={boundary}"),
        Bytes::from(body),
    )
}

/// An SSE response as an event reader; a non-2xx answer is an error carrying the API's message.
async fn event_stream(response: hyper::Response<Incoming>) -> anyhow::Result<EventStream> {
    let status = response.status();
    if !status.is_success() {
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        return Err(ClientError::api(status, &value).into());
    }
    Ok(EventStream {
        body: response.into_body(),
        buf: Vec::new(),
    })
}

/// A boundary that no file contains by accident (not for secrets).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

/// An HTTP/1 connection over `stream`, driven by its own task.
async fn handshake<S>(
    stream: S,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

pub(crate) fn error_text(value: &Value) -> String {
    match value["error"]["message"].as_str() {
        Some(msg) => format!(
            "{} ({})",
            msg,
            value["error"]["code"].as_str().unwrap_or("?")
        ),
        None => value.to_string(),
    }
}

/// An SSE response being read event by event.
pub struct EventStream {
    body: Incoming,
    buf: Vec<u8>,
}

impl EventStream {
    /// The next event; `None` at the end of the stream. Comments (keep-alives) are skipped.
    pub async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(event) = parse_block(&block)? {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                None => return Ok(None),
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_block(block: &[u8]) -> anyhow::Result<Option<Event>> {
    let text = std::str::from_utf8(block).context("SSE event is not UTF-8")?;
    let mut event = String::from("message");
    let mut data = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if data.is_empty() {
        return Ok(None);
    }
    if data == "[DONE]" {
        // The end marker of OpenAI-style streams (`/v1`).
        return Ok(Some(Event {
            event: "[DONE]".into(),
            data: Value::Null,
        }));
    }
    Ok(Some(Event {
        event,
        data: serde_json::from_str(&data).context("SSE data is not JSON")?,
    }))
}

/// Connects to the daemon's Unix socket.
#[cfg(unix)]
async fn connect_local(socket: &Path) -> std::io::Result<tokio::net::UnixStream> {
    tokio::net::UnixStream::connect(socket).await
}

/// Connects to the daemon's named pipe. All instances busy (`ERROR_PIPE_BUSY`): the daemon
/// creates the next one right after each accept, so a short wait is enough.
#[cfg(windows)]
async fn connect_local(
    socket: &Path,
) -> std::io::Result<tokio::net::windows::named_pipe::NamedPipeClient> {
    use tokio::net::windows::named_pipe::ClientOptions;
    /// `ERROR_PIPE_BUSY`.
    const PIPE_BUSY: i32 = 231;
    /// How long to wait for a free pipe instance.
    const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    let deadline = std::time::Instant::now() + BUSY_WAIT;
    loop {
        match ClientOptions::new().open(socket) {
            Err(err)
                if err.raw_os_error() == Some(PIPE_BUSY)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}
