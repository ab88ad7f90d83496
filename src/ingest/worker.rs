//! The daemon's side of extraction in a separate process: a small pool of `hearth
//! extract-worker` processes ([`super::sandbox`]), started on demand, reused across files, and
//! killed when a job must stop.
//!
//! Why: parsing is the one place where attacker-controlled bytes meet third-party parsers.
//! In a worker, a file that exhausts memory or CPU hits the worker's kernel limits and fails
//! with `extract_resource_limit`; a worker that dies fails its file with `extract_crashed`
//! and is replaced; a job whose caller stops waiting (file deleted or changed, upload aborted,
//! shutdown, timeout) is ended by killing its worker, since dropping the job future drops the
//! child handle, which kills the process (`kill_on_drop`). The daemon's memory never sees more
//! than the extracted text.
//!
//! Protocol, on the worker's stdin/stdout: frames of an 8-byte little-endian length and JSON.
//! The worker first sends [`Hello`]; then per file the daemon sends a [`Job`] frame followed by
//! exactly `Job::len` raw bytes, and the worker answers one [`Reply`] frame.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::extract::{self, ExtractError, Extracted};
use super::sandbox::Confinement;
use super::IngestError;

/// Largest hello or job frame (a file name and limits).
pub(super) const MAX_HEADER_BYTES: u64 = 64 * 1024;
/// How long a new worker may take to say hello (it is this binary, started without models).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a worker's stderr kept for the error of a crash (the tail is what explains it).
const STDERR_TAIL: usize = 4096;
/// The worker's answer is the extracted text as JSON: every byte may be escaped (`\u0001` is
/// six bytes), plus the section structure.
fn max_reply_bytes(limits: &extract::Limits) -> u64 {
    (limits.max_text_bytes as u64).saturating_mul(6) + 1024 * 1024
}

/// The first frame of a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Hello {
    pub confinement: Confinement,
    pub pid: u32,
}

/// One file to extract; its bytes follow the frame.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Job {
    pub name: String,
    pub len: u64,
    pub limits: extract::Limits,
    /// CPU seconds this job may use.
    pub cpu_secs: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Reply {
    Extracted(Extracted),
    Failed(ExtractError),
    /// The parser panicked (caught; the worker lives on).
    Crashed(String),
}

/// Writes one frame.
pub(super) fn write_frame(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    let json = serde_json::to_vec(value)?;
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    out.flush()
}

/// Reads one frame; `None` at a clean end of input.
pub(super) fn read_frame<T: DeserializeOwned>(
    input: &mut impl Read,
    max: u64,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 8];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = u64::from_le_bytes(len);
    if len > max {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut json = vec![0u8; len as usize];
    input.read_exact(&mut json)?;
    serde_json::from_slice(&json)
        .map(Some)
        .map_err(std::io::Error::other)
}

async fn read_frame_async<T: DeserializeOwned>(
    input: &mut ChildStdout,
    max: u64,
) -> std::io::Result<T> {
    let len = input.read_u64_le().await?;
    if len > max {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut json = vec![0u8; len as usize];
    input.read_exact(&mut json).await?;
    serde_json::from_slice(&json).map_err(std::io::Error::other)
}

pub use crate::sys::this_program;

/// Where extraction runs.
#[derive(Clone)]
pub enum Extractor {
    /// On the daemon's blocking threads (unit tests, and the bench's comparison).
    InProcess,
    /// In sandboxed worker processes.
    Workers(Arc<WorkerPool>),
}

impl Extractor {
    /// Extracts `bytes`, bounded by `timeout` (wall clock, and as CPU time in a worker).
    pub async fn extract(
        &self,
        name: &str,
        bytes: Arc<Vec<u8>>,
        limits: extract::Limits,
        timeout: Duration,
    ) -> Result<Extracted, IngestError> {
        match self {
            Extractor::InProcess => {
                let name = name.to_string();
                // The thread cannot be stopped: on timeout it is abandoned and ends when the
                // parser does (the reason extraction runs in a worker in the daemon).
                tokio::time::timeout(
                    timeout,
                    tokio::task::spawn_blocking(move || extract::extract(&name, &bytes, &limits)),
                )
                .await
                .map_err(|_| IngestError::Timeout(timeout))?
                .map_err(|err| IngestError::Crashed(err.to_string()))?
                .map_err(IngestError::from)
            }
            Extractor::Workers(pool) => pool.extract(name, &bytes, limits, timeout).await,
        }
    }

    /// The pool's state, for health (`None` in process).
    pub fn status(&self) -> Option<PoolStatus> {
        match self {
            Extractor::InProcess => None,
            Extractor::Workers(pool) => Some(pool.status()),
        }
    }
}

/// Settings of the worker pool.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The `hearth` binary to start (`/proc/self/exe` on Linux: still this build after an
    /// upgrade replaced the file).
    pub program: PathBuf,
    /// `RLIMIT_AS` of a worker.
    pub memory_mib: u64,
    /// Workers at most (jobs beyond wait for one).
    pub max_workers: usize,
}

/// The pool's state for health.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub idle: usize,
    pub busy: usize,
    pub started: u64,
    pub crashed: u64,
    pub resource_limits: u64,
    pub killed: u64,
    pub memory_mib: u64,
    /// What the last worker to start reported (`None` before the first).
    pub confinement: Option<Confinement>,
}

pub struct WorkerPool {
    settings: WorkerSettings,
    idle: Mutex<Vec<Worker>>,
    slots: tokio::sync::Semaphore,
    started: AtomicU64,
    crashed: AtomicU64,
    resource_limits: AtomicU64,
    killed: AtomicU64,
    confinement: Mutex<Option<Confinement>>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// Counts a job's worker as killed if the job is dropped before it ends (the child handle's
/// drop kills the process).
struct InFlight<'a> {
    pool: &'a WorkerPool,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.pool.killed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("extraction stopped: its worker is killed");
        }
    }
}

impl WorkerPool {
    pub fn new(settings: WorkerSettings) -> WorkerPool {
        let slots = tokio::sync::Semaphore::new(settings.max_workers.max(1));
        WorkerPool {
            settings,
            idle: Mutex::new(Vec::new()),
            slots,
            started: AtomicU64::new(0),
            crashed: AtomicU64::new(0),
            resource_limits: AtomicU64::new(0),
            killed: AtomicU64::new(0),
            confinement: Mutex::new(None),
        }
    }

    pub fn status(&self) -> PoolStatus {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).len();
        let busy = self.settings.max_workers.max(1) - self.slots.available_permits();
        PoolStatus {
            idle,
            busy,
            started: self.started.load(Ordering::Relaxed),
            crashed: self.crashed.load(Ordering::Relaxed),
            resource_limits: self.resource_limits.load(Ordering::Relaxed),
            killed: self.killed.load(Ordering::Relaxed),
            memory_mib: self.settings.memory_mib,
            confinement: self
                .confinement
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Starts a worker and stops it again: how long a start takes (the bench).
    pub async fn measure_start(&self) -> Result<Duration, IngestError> {
        Ok(self.start_worker().await?.1)
    }

    /// Starts one worker and waits for its hello.
    async fn start_worker(&self) -> Result<(Worker, Duration), IngestError> {
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&self.settings.program)
            .arg("extract-worker")
            .arg("--memory-mib")
            .arg(self.settings.memory_mib.to_string())
            // Nothing of the daemon's environment (tokens, paths) reaches the parser, but what
            // the system itself needs to start a process (`SystemRoot` on Windows).
            .env_clear()
            .envs(crate::sys::process_essentials())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| {
                IngestError::Crashed(format!("cannot start the extraction worker: {err}"))
            })?;
        let (Some(stdin), Some(mut stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(IngestError::Crashed("worker pipes missing".into()));
        };
        // Drain stderr so the worker never blocks on it; keep its tail for crash reports.
        let tail = Arc::new(Mutex::new(Vec::new()));
        let sink = tail.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut t = sink.lock().unwrap_or_else(|e| e.into_inner());
                t.extend_from_slice(&buf[..n]);
                let excess = t.len().saturating_sub(STDERR_TAIL);
                t.drain(..excess);
            }
        });
        let hello: Hello = tokio::time::timeout(
            START_TIMEOUT,
            read_frame_async(&mut stdout, MAX_HEADER_BYTES),
        )
        .await
        .map_err(|_| IngestError::Crashed("the extraction worker did not start".into()))?
        .map_err(|err| {
            IngestError::Crashed(format!("the extraction worker did not start: {err}"))
        })?;
        self.started.fetch_add(1, Ordering::Relaxed);
        let mut last = self.confinement.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() != Some(&hello.confinement) {
            if hello.confinement.missing.is_empty() {
                tracing::info!(pid = hello.pid, confinement = ?hello.confinement, "extraction worker confined");
            } else {
                tracing::warn!(pid = hello.pid, missing = ?hello.confinement.missing, "extraction worker only partly confined");
            }
        }
        *last = Some(hello.confinement);
        drop(last);
        Ok((
            Worker {
                child,
                stdin,
                stdout,
                stderr: tail,
            },
            started.elapsed(),
        ))
    }

    async fn extract(
        &self,
        name: &str,
        bytes: &[u8],
        limits: extract::Limits,
        timeout: Duration,
    ) -> Result<Extracted, IngestError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| IngestError::Crashed("the worker pool is closed".into()))?;
        let mut worker = match self.take_idle() {
            Some(worker) => worker,
            None => self.start_worker().await?.0,
        };
        let job = Job {
            name: name.to_string(),
            len: bytes.len() as u64,
            limits,
            cpu_secs: timeout.as_secs().max(1),
        };
        let mut flight = InFlight {
            pool: self,
            done: false,
        };
        let outcome = tokio::time::timeout(timeout, worker.run(&job, bytes, &limits)).await;
        flight.done = true;
        match outcome {
            Ok(Ok(Reply::Extracted(extracted))) => {
                self.put_idle(worker);
                Ok(extracted)
            }
            Ok(Ok(Reply::Failed(err))) => {
                self.put_idle(worker);
                Err(err.into())
            }
            Ok(Ok(Reply::Crashed(message))) => {
                // The panic was caught, but the parser's state is suspect: a fresh worker.
                self.crashed.fetch_add(1, Ordering::Relaxed);
                Err(IngestError::Crashed(format!(
                    "the parser panicked: {message}"
                )))
            }
            Ok(Err(io)) => Err(self.died(worker, io).await),
            Err(_) => {
                self.killed.fetch_add(1, Ordering::Relaxed);
                Err(IngestError::Timeout(timeout))
            }
        }
    }

    /// An idle worker that is still alive (one killed or crashed while idle is dropped).
    fn take_idle(&self) -> Option<Worker> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut worker) = idle.pop() {
            if matches!(worker.child.try_wait(), Ok(None)) {
                return Some(worker);
            }
        }
        None
    }

    fn put_idle(&self, worker: Worker) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(worker);
    }

    /// The worker stopped answering: why (its exit status and the tail of its stderr).
    async fn died(&self, mut worker: Worker, io: std::io::Error) -> IngestError {
        let status = tokio::time::timeout(Duration::from_secs(5), worker.child.wait()).await;
        let tail =
            String::from_utf8_lossy(&worker.stderr.lock().unwrap_or_else(|e| e.into_inner()))
                .trim()
                .to_string();
        let status = match status {
            Ok(Ok(status)) => status,
            _ => {
                self.crashed.fetch_add(1, Ordering::Relaxed);
                return IngestError::Crashed(format!(
                    "the extraction worker stopped answering: {io}"
                ));
            }
        };
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if status.signal() == Some(nix::sys::signal::Signal::SIGXCPU as i32) {
                self.resource_limits.fetch_add(1, Ordering::Relaxed);
                return IngestError::ResourceLimit("the extraction used its CPU time".into());
            }
        }
        // Rust's allocator reports a failed allocation this way before aborting: the worker's
        // address-space limit.
        if tail.contains("memory allocation of") || tail.contains("capacity overflow") {
            self.resource_limits.fetch_add(1, Ordering::Relaxed);
            return IngestError::ResourceLimit(format!(
                "the extraction needed more than {} MiB of memory",
                self.settings.memory_mib
            ));
        }
        self.crashed.fetch_add(1, Ordering::Relaxed);
        let last = tail.lines().last().unwrap_or("").to_string();
        IngestError::Crashed(if last.is_empty() {
            format!("the extraction worker ended ({status})")
        } else {
            format!("the extraction worker ended ({status}): {last}")
        })
    }
}

impl Worker {
    async fn run(
        &mut self,
        job: &Job,
        bytes: &[u8],
        limits: &extract::Limits,
    ) -> std::io::Result<Reply> {
        let mut header = Vec::new();
        write_frame(&mut header, job)?;
        self.stdin.write_all(&header).await?;
        self.stdin.write_all(bytes).await?;
        self.stdin.flush().await?;
        read_frame_async(&mut self.stdout, max_reply_bytes(limits)).await
    }
}
