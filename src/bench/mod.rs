//! `hearth bench` (in builds with `--features bench`): measurements that print one table each,
//! every figure next to its reference measured in the same run (never a timed assertion in a
//! test). One file per bench; this file has the arguments, the dispatch, and the harness they
//! share (a daemon process on a scratch dir, RSS, medians and percentiles).
//!
//! - `decode.rs` (default): socket + SSE decode vs a direct llama.cpp loop, start-up, RSS, sidecar;
//! - `rag.rs` (`--rag`): embeddings vs Python onnxruntime, ingestion, exact vs HNSW search;
//! - `library.rs` (`--library`): the drop folder's ingest rate vs the raw embedder, write →
//!   searchable, reconcile scan, RSS, chat decode during ingestion;
//! - `memory.rs` (`--memory`): extraction job latency, recall, TTFT with and without memory;
//! - `health.rs` (`--health`): health on a large store, counters vs scanning;
//! - `models.rs` (`--models`): model load vs a direct load, switching, RSS with one and two
//!   models and after the idle TTL unloaded one;
//! - `openai.rs` (`--openai-peer DIR`): `/v1/chat/completions` vs llama-cpp-python's server;
//! - `batch.rs` (`--batch`): four streams at once vs one, TTFT while three decode, and the
//!   same against llama-cpp-python's server with `--openai-peer DIR`;
//! - `kv.rs` (`--kv`): continuing a long chat after another chat took its KV cells, restored
//!   from its snapshot vs evaluated again, and after a restart;
//! - `contention.rs` (`--contention`): decode with a core kept busy by another process, for
//!   the adaptive thread policy, fixed counts and llama-cpp-python;
//! - `corpus.rs`: the synthetic texts they ingest.

mod batch;
mod contention;
mod corpus;
mod decode;
mod extract;
mod health;
mod kv;
mod library;
mod memory;
mod models;
mod openai;
mod rag;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

use crate::config::{self, RawConfig};
use crate::models::Manifest;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Models dir [default: as `hearth serve` would choose].
    #[arg(long, env = "HEARTH_MODELS_DIR", value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// Chat model name [default: the manifest's default].
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// Inference threads, for both sides.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Tokens to generate per run.
    #[arg(long, default_value_t = 128)]
    tokens: u32,
    /// Measured runs per side.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Daemon start-ups to time.
    #[arg(long, default_value_t = 5)]
    starts: usize,
    /// Sidecar spawns to time (spawn → ready line).
    #[arg(long, default_value_t = 20)]
    sidecar_starts: usize,
    /// Measure the document side instead: embeddings vs Python onnxruntime, ingestion, search.
    #[arg(long)]
    rag: bool,
    /// Measure the drop folder instead: ingest rate vs the raw embedder, write → searchable
    /// latency, reconcile scan time, RSS during a large ingest.
    #[arg(long)]
    library: bool,
    /// Mixed files ingested by `--library`.
    #[arg(long, default_value_t = 1000)]
    library_files: usize,
    /// Unchanged files the `--library` reconcile scan walks.
    #[arg(long, default_value_t = 10000)]
    scan_files: usize,
    /// Measure long-term memory instead: extraction job latency, recall latency, and chat
    /// time-to-first-token with and without memory recall.
    #[arg(long)]
    memory: bool,
    /// Measure `GET /api/v1/health` on a store of `--health-chunks` chunks instead: the record
    /// counters against counting by scanning, and the request over the socket.
    #[arg(long)]
    health: bool,
    /// Measure chat models instead: load time over the API vs a direct load of the same file,
    /// switching between `--model` and `--second-model`, RSS with one and two loaded and after
    /// the idle TTL unloads one.
    #[arg(long)]
    models: bool,
    /// The other model of `--models` [default: the assistant model].
    #[arg(
        long,
        value_name = "NAME",
        default_value = "qwen2.5-coder-1.5b-instruct"
    )]
    second_model: String,
    /// Measure `/v1/chat/completions` instead, against llama-cpp-python's OpenAI-compatible
    /// server on the same model file (both over loopback TCP); DIR holds the `llama_cpp`
    /// package (`scripts/bench-peer` installs it).
    #[arg(long, value_name = "DIR")]
    openai_peer: Option<PathBuf>,
    /// Measure continuous batching instead: four concurrent streams against one, the TTFT of a
    /// stream admitted while three decode, and (with `--openai-peer DIR`) the same four
    /// requests against llama-cpp-python's server.
    #[arg(long)]
    batch: bool,
    /// Measure per-chat KV snapshots instead: the time to first token of a chat with a long
    /// history continued after another chat took its cells, restored from its snapshot vs
    /// evaluated in full, and after a daemon restart.
    #[arg(long)]
    kv: bool,
    /// History tokens of `--kv`'s long chat (about).
    #[arg(long, default_value_t = 3000)]
    kv_history: usize,
    /// Measure decode while another process keeps a core busy instead: the adaptive thread
    /// policy against fixed thread counts (and llama-cpp-python with `--openai-peer DIR`), each
    /// idle and under a CPU burner.
    #[arg(long)]
    contention: bool,
    /// Measure extraction instead: PDFs/s through the sandboxed worker processes vs in process,
    /// worker start time, and this process's memory while a worker refuses a PDF bomb.
    #[arg(long)]
    extract: bool,
    /// Internal: print `--rag`'s embedding rates of this embedding model as JSON (ONNX Runtime
    /// allows one environment per process, so each model is measured in a process of its own).
    #[arg(long, hide = true, value_name = "MODEL")]
    embed_rates: Option<String>,
    /// Internal: be `--contention`'s CPU burner for this many seconds.
    #[arg(long, hide = true, value_name = "SECS")]
    burn_secs: Option<u64>,
    /// Chunks in the `--health` store.
    #[arg(long, default_value_t = 100_000)]
    health_chunks: usize,
    /// Vector counts for the search part of `--rag`.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    rag_sizes: Vec<usize>,
}

/// Context size of the daemons and direct loops the benches start.
const N_CTX: u32 = 2048;

/// Runs the bench `args` selects on `rt` and prints its table.
pub fn run(
    config_file: Option<&Path>,
    args: BenchArgs,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    if let Some(secs) = args.burn_secs {
        return contention::burn(secs);
    }
    let config = config::load(
        config_file,
        RawConfig {
            models_dir: args.models_dir.clone(),
            ..RawConfig::default()
        },
    )?;
    let manifest = Manifest::builtin();
    let entry = manifest.chat_model(args.model.as_deref())?;
    let models_dir = &config.models_dir;
    let table = if let Some(model) = &args.embed_rates {
        let threads = usize::try_from(args.threads).unwrap_or(1);
        rag::rates_json(models_dir, model, threads, rt)?
    } else if args.extract {
        extract::run(rt)?
    } else if args.library {
        library::run(
            models_dir,
            &entry.name,
            args.threads,
            args.library_files,
            args.scan_files,
            rt,
        )?
    } else if args.rag {
        let threads = usize::try_from(args.threads).unwrap_or(1);
        rag::run(models_dir, threads, &args.rag_sizes, rt)?
    } else if args.health {
        health::run(rt, models_dir, &entry.name, args.health_chunks)?
    } else if args.models {
        let second = manifest.chat_model(Some(&args.second_model))?;
        models::run(rt, models_dir, entry, second, args.threads)?
    } else if args.batch {
        batch::run(
            rt,
            models_dir,
            entry,
            args.openai_peer.as_deref(),
            args.threads,
            args.tokens,
            args.runs,
        )?
    } else if args.kv {
        kv::run(rt, models_dir, &entry.name, args.threads, args.kv_history)?
    } else if args.contention {
        contention::run(
            rt,
            models_dir,
            entry,
            args.openai_peer.as_deref(),
            args.tokens,
            args.runs,
        )?
    } else if let Some(peer) = &args.openai_peer {
        openai::run(
            rt,
            models_dir,
            entry,
            peer,
            args.threads,
            args.tokens,
            args.runs,
        )?
    } else if args.memory {
        memory::run(rt, models_dir, &entry.name, args.threads, args.runs)?
    } else {
        decode::run(&args, models_dir, entry, rt)?
    };
    std::io::stdout().write_all(table.as_bytes())?;
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct BenchDaemon {
    child: Child,
}

impl BenchDaemon {
    fn signal_term(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)),
            nix::sys::signal::Signal::SIGTERM,
        );
    }

    fn stop(&mut self) {
        self.signal_term();
        let _ = self.child.wait();
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, models_dir: &Path, model: &str, threads: u32) -> anyhow::Result<BenchDaemon> {
    let child = command(dir, models_dir, model, threads)?
        .stdout(Stdio::null())
        .spawn()
        .context("cannot spawn hearth serve")?;
    Ok(BenchDaemon { child })
}

fn command(dir: &Path, models_dir: &Path, model: &str, threads: u32) -> anyhow::Result<Command> {
    command_with(dir, models_dir, model, Some(threads))
}

/// [`command`], with the daemon's default (adaptive) threads when `threads` is None.
fn command_with(
    dir: &Path,
    models_dir: &Path,
    model: &str,
    threads: Option<u32>,
) -> anyhow::Result<Command> {
    command_sized(dir, models_dir, model, threads, N_CTX)
}

/// [`command_with`], with a context of `ctx` tokens.
fn command_sized(
    dir: &Path,
    models_dir: &Path,
    model: &str,
    threads: Option<u32>,
    ctx: u32,
) -> anyhow::Result<Command> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(dir.join("hearth.sock"))
        .arg("--models-dir")
        .arg(models_dir)
        .arg("--model")
        .arg(model)
        .arg("--ctx")
        .arg(ctx.to_string())
        .env("HEARTH_CONFIG", dir.join("none.toml"))
        .env("HEARTH_LOG", "error")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    match threads {
        Some(threads) => cmd.arg("--threads").arg(threads.to_string()),
        None => cmd.env_remove("HEARTH_THREADS"),
    };
    Ok(cmd)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `p`th percentile (nearest rank below) of `values`.
fn pct(values: &mut [f64], p: usize) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) * p) / 100]
}

/// Waits until the daemon has no background job pending or running (titles and memory
/// extraction follow every `/api/v1` turn), so the next measured run starts on an idle daemon.
async fn idle(client: &crate::client::Client) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let (_, health) = client
            .request(http::Method::GET, "/api/v1/health", None)
            .await?;
        let background = &health["background"];
        if background["pending"] == 0 && background["running"].is_null() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("background jobs did not finish within 300 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
